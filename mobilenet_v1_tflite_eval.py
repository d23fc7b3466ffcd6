r"""Evaluates a TFLite MobileNet V1 model: top-1/top-5, and latency.

  ./bazel-bin/mobilenet_v1_tflite_eval --tflite_path M.tflite --dataset_dir DIR
  ./bazel-bin/mobilenet_v1_tflite_eval --tflite_path M.tflite --latency_runs=100

Accuracy: every example of the validation split once, through the same
preprocessing as mobilenet_v1_eval (central crop, resize, [-1, 1]). A model
with an integer input gets the image quantized with the model's own input
scale and zero point; the model's input shape gives the image size. Prints
`Accuracy` (top-1) and `Recall_5` (top-5) counted as mobilenet_v1_eval counts
them: a class tied with the label's score at the top-k boundary counts as in
the top k.

Latency: median and 90th percentile milliseconds per image over
--latency_runs invocations on one image, with one thread and with every core.
"""

import os
import time

from absl import flags
import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import

from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.interpreter import OpResolverType
from runtime import cli
from runtime import errors
from data import records

FLAGS = flags.FLAGS

flags.DEFINE_string('tflite_path', '', 'The .tflite model to evaluate.')
flags.DEFINE_string('dataset_dir', '',
                    'Directory with validation-*-of-* TFRecords; accuracy is '
                    'measured when given.')
flags.DEFINE_string('split', records.VALIDATION_SPLIT,
                    'Split of --dataset_dir to evaluate on.')
flags.DEFINE_integer('num_threads', None,
                     'Interpreter threads for the accuracy run; default every '
                     'core this process may use.', lower_bound=1)
flags.DEFINE_integer('latency_runs', 0,
                     'Timed single-image invocations per thread setting; 0 '
                     'skips the latency measurement.', lower_bound=0)
flags.DEFINE_integer('warmup_runs', 5,
                     'Untimed invocations before the timed ones (memory '
                     'planning, weight packing, caches).', lower_bound=0)

# Images read from the input pipeline per step; the interpreter still runs
# one image at a time.
_READ_BATCH = 64


def all_cores():
  """The number of cores this process may run on."""
  return len(os.sched_getaffinity(0))


def _interpreter(kwargs, num_threads, resolver):
  """An Interpreter of `kwargs`' model, batch 1, tensors allocated."""
  # The runtime announces its XNNPACK delegate on the process's stderr.
  with slim_compat.native_stderr_silenced():
    interpreter = Interpreter(num_threads=num_threads,
                              experimental_op_resolver_type=resolver, **kwargs)
    # Models converted with a free batch dimension run one image at a time
    # too.
    details = interpreter.get_input_details()[0]
    if details['shape_signature'][0] != 1:
      interpreter.resize_tensor_input(details['index'],
                                      [1] + list(details['shape'][1:]))
    interpreter.allocate_tensors()
  return interpreter


def load_interpreter(model, num_threads):
  """Loads a TFLite model with the batch dimension set to 1.

  The default XNNPACK delegate refuses some quantized layers when preparing
  them (requantization scales out of its range) instead of leaving them to
  TFLite's own kernels; such models run on TFLite's built-in kernels alone.

  Args:
    model: a .tflite path or the flatbuffer's bytes.
    num_threads: interpreter threads.

  Returns:
    (the Interpreter, tensors allocated; whether XNNPACK runs it).

  Raises:
    errors.UserError: the file is missing or is not a TFLite model.
  """
  kwargs = ({'model_content': model} if isinstance(model, bytes)
            else {'model_path': model})
  if 'model_path' in kwargs and not os.path.isfile(model):
    raise errors.UserError('no TFLite model at %s' % model)
  try:
    return _interpreter(kwargs, num_threads, OpResolverType.AUTO), True
  except ValueError as e:
    raise errors.UserError('cannot load %s as a TFLite model: %s' % (
        model if 'model_path' in kwargs else 'the model',
        str(e).strip().splitlines()[0])) from e
  except RuntimeError:
    return _interpreter(kwargs, num_threads,
                        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES), False


def _is_uint8(interpreter):
  """Whether a model computes in uint8 (the TF1 converter's quantized form)."""
  dtypes = {d['dtype'] for d in interpreter.get_tensor_details()}
  return np.uint8 in dtypes and np.int8 not in dtypes


def quantize_input(images, details):
  """Maps float images in [-1, 1] to what the model's input expects.

  Args:
    images: float32 array.
    details: the interpreter's input details.

  Returns:
    `images` unchanged for a float input; for an integer input,
    x / scale + zero_point rounded half up, as the eval graph's input fake
    quant rounds (tflite_emulation.quantize_input), and clipped to the
    type's range. With the quantized models' scale of 1 / 128 the float32
    arithmetic is the fake quant's, so both see the same input codes.
  """
  dtype = np.dtype(details['dtype'])
  if dtype.kind == 'f':
    return images.astype(dtype)
  scale, zero_point = details['quantization']
  limits = np.iinfo(dtype)
  return np.clip(np.floor(images / np.float32(scale) + zero_point + 0.5),
                 limits.min, limits.max).astype(dtype)


def image_size(interpreter):
  """The square input resolution of a [1, size, size, 3] model."""
  shape = interpreter.get_input_details()[0]['shape']
  if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
    raise errors.UserError('expected a model input of shape [1, size, size, 3], '
                        'got %s' % list(shape))
  return int(shape[1])


def in_top_k(scores, label, k):
  """Whether `label` is among the top `k` of `scores`, as tf.math.in_top_k.

  Classes tied with the label's score count in the label's favour, so that
  quantized outputs (often tied) are scored as TensorFlow's eval scores
  them.
  """
  return np.sum(scores > scores[label]) < k


def evaluate(interpreter, dataset_dir, split):
  """Runs the model over a split; returns ({metric: value}, examples).

  Raises:
    errors.UserError: a label does not fit the model's classes, or the split is
      empty.
  """
  input_details = interpreter.get_input_details()[0]
  output_index = interpreter.get_output_details()[0]['index']
  dataset = records.build_dataset(
      dataset_dir, split, _READ_BATCH, image_size(interpreter),
      is_training=False)
  top1 = top5 = examples = 0
  for images, labels in dataset.as_numpy_iterator():
    for image, label in zip(quantize_input(images, input_details), labels):
      interpreter.set_tensor(input_details['index'], image[np.newaxis])
      interpreter.invoke()
      scores = interpreter.get_tensor(output_index)[0]
      if label >= len(scores):
        raise errors.UserError('label %d does not fit the model\'s %d classes; '
                            'is this the dataset it was trained on?' %
                            (label, len(scores)))
      top1 += in_top_k(scores, label, 1)
      top5 += in_top_k(scores, label, 5)
      examples += 1
  if not examples:
    raise errors.UserError('the %s split of %s has no examples' %
                        (split, dataset_dir))
  return {'Accuracy': top1 / examples, 'Recall_5': top5 / examples}, examples


def latency_ms(model, num_threads, runs, warmup_runs):
  """Times single-image invocations of a model.

  Args:
    model: a .tflite path or the flatbuffer's bytes.
    num_threads: interpreter threads.
    runs: timed invocations.
    warmup_runs: untimed invocations first.

  Returns:
    float64 array of `runs` durations in milliseconds.
  """
  interpreter, _ = load_interpreter(model, num_threads)
  details = interpreter.get_input_details()[0]
  # Timing does not depend on the pixels; any valid image will do.
  image = np.random.RandomState(0).uniform(-1, 1, details['shape']).astype(
      np.float32)
  interpreter.set_tensor(details['index'], quantize_input(image, details))
  for _ in range(warmup_runs):
    interpreter.invoke()
  durations = np.empty(runs)
  for run in range(runs):
    start = time.perf_counter()
    interpreter.invoke()
    durations[run] = (time.perf_counter() - start) * 1000
  return durations


def summarize_latency(durations):
  """(median, 90th percentile) of durations."""
  return float(np.median(durations)), float(np.percentile(durations, 90))


def main(argv):
  del argv  # unused
  if not FLAGS.tflite_path:
    raise errors.UserError('--tflite_path is required: the .tflite model')
  if not (FLAGS.dataset_dir or FLAGS.latency_runs):
    raise errors.UserError('nothing to do: give --dataset_dir for accuracy '
                        'and/or --latency_runs=N for latency')
  threads = FLAGS.num_threads or all_cores()
  interpreter, xnnpack = load_interpreter(FLAGS.tflite_path, threads)
  name = os.path.basename(FLAGS.tflite_path)
  if not xnnpack:
    print('%s: XNNPACK cannot prepare this model; running it on TFLite\'s '
          'built-in kernels.' % name, flush=True)
  if FLAGS.latency_runs and _is_uint8(interpreter):
    print('%s: uint8 runs on TFLite\'s own kernels (XNNPACK runs int8, not '
          'uint8); mobilenet_v1_export also writes its int8 twin, '
          'NAME_int8.tflite, which XNNPACK runs.' % name, flush=True)
  if FLAGS.dataset_dir:
    start = time.time()
    metrics, examples = evaluate(interpreter, FLAGS.dataset_dir, FLAGS.split)
    print('%s: Accuracy %.4f  Recall_5 %.4f  on %d examples (%.1f s)' % (
        name, metrics['Accuracy'], metrics['Recall_5'], examples,
        time.time() - start), flush=True)
  if FLAGS.latency_runs:
    for num_threads in sorted({1, all_cores()}):
      median, p90 = summarize_latency(latency_ms(
          FLAGS.tflite_path, num_threads, FLAGS.latency_runs,
          FLAGS.warmup_runs))
      print('%s: latency with %d thread%s: median %.2f ms  p90 %.2f ms  '
            'over %d runs' % (name, num_threads, '' if num_threads == 1
                              else 's', median, p90, FLAGS.latency_runs),
            flush=True)


if __name__ == '__main__':
  cli.run(main)
