"""Evaluates a TFLite MobileNet V1 model: top-1/top-5, and latency.

Accuracy: every example of a split once, through the same preprocessing as
the checkpoint evaluation (central crop, resize, [-1, 1]). A model with an
integer input gets the image quantized with the model's own input scale and
zero point; the model's input shape gives the image size. `Accuracy` (top-1)
and `Recall_5` (top-5) are counted as the checkpoint evaluation counts them:
a class tied with the label's score at the top-k boundary counts as in the
top k.

Latency: median and 90th percentile milliseconds per image over a number of
invocations on one image, with one thread and with every core.
"""

import dataclasses
import os
import time
from typing import Optional

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import

from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.interpreter import OpResolverType
from data import records
from runtime import errors

# Images read from the input pipeline per step; the interpreter still runs
# one image at a time.
_READ_BATCH = 64


@dataclasses.dataclass(frozen=True)
class TFLiteEvalConfig:
  """What to measure of a TFLite model.

  Attributes:
    tflite_path: the .tflite model.
    dataset_dir: directory of TFRecords to measure accuracy on; empty skips
      the accuracy run.
    split: the split of `dataset_dir` to evaluate on.
    num_threads: interpreter threads for the accuracy run; None for every
      core this process may use.
    latency_runs: timed single-image invocations per thread setting; 0
      skips the latency measurement.
    warmup_runs: untimed invocations before the timed ones.
  """
  tflite_path: str
  dataset_dir: str
  split: str
  num_threads: Optional[int]
  latency_runs: int
  warmup_runs: int

  def __post_init__(self):
    """Checks that there is a model and something to measure.

    Raises:
      errors.UserError: no model, or neither accuracy nor latency asked for.
    """
    if not self.tflite_path:
      raise errors.UserError('--tflite_path is required: the .tflite model')
    if not (self.dataset_dir or self.latency_runs):
      raise errors.UserError('nothing to do: give --dataset_dir for accuracy '
                             'and/or --latency_runs=N for latency')


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
  """The square input resolution of a [1, size, size, 3] model.

  Args:
    interpreter: the model's Interpreter.

  Returns:
    The size, an int.

  Raises:
    errors.UserError: the input is not of that shape.
  """
  shape = interpreter.get_input_details()[0]['shape']
  if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
    raise errors.UserError('expected a model input of shape [1, size, size, '
                           '3], got %s' % list(shape))
  return int(shape[1])


def in_top_k(scores, label, k):
  """Whether `label` is among the top `k` of `scores`, as tf.math.in_top_k.

  Classes tied with the label's score count in the label's favour, so that
  quantized outputs (often tied) are scored as TensorFlow's eval scores
  them.

  Args:
    scores: the model's output, [classes].
    label: the true class.
    k: how many top classes count.

  Returns:
    A bool.
  """
  return np.sum(scores > scores[label]) < k


def evaluate(interpreter, dataset_dir, split):
  """Runs the model over a split.

  Args:
    interpreter: the model's Interpreter, as `load_interpreter` returns it.
    dataset_dir: directory of TFRecords.
    split: the split to run over.

  Returns:
    ({'Accuracy': top-1, 'Recall_5': top-5}, the number of examples).

  Raises:
    errors.UserError: a label does not fit the model's classes, or the split
      is empty.
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
        raise errors.UserError('label %d does not fit the model\'s %d '
                               'classes; is this the dataset it was trained '
                               'on?' % (label, len(scores)))
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
  """(median, 90th percentile) of durations, as floats."""
  return float(np.median(durations)), float(np.percentile(durations, 90))


def measure(config):
  """Measures what `config` asks for, printing each result on a line.

  Args:
    config: a TFLiteEvalConfig.

  Raises:
    errors.UserError: the model does not load, or the dataset does not fit it.
  """
  threads = config.num_threads or all_cores()
  interpreter, xnnpack = load_interpreter(config.tflite_path, threads)
  name = os.path.basename(config.tflite_path)
  if not xnnpack:
    print('%s: XNNPACK cannot prepare this model; running it on TFLite\'s '
          'built-in kernels.' % name, flush=True)
  if config.latency_runs and _is_uint8(interpreter):
    print('%s: uint8 runs on TFLite\'s own kernels (XNNPACK runs int8, not '
          'uint8); mobilenet_v1_export also writes its int8 twin, '
          'NAME_int8.tflite, which XNNPACK runs.' % name, flush=True)
  if config.dataset_dir:
    start = time.time()
    metrics, examples = evaluate(interpreter, config.dataset_dir, config.split)
    print('%s: Accuracy %.4f  Recall_5 %.4f  on %d examples (%.1f s)' % (
        name, metrics['Accuracy'], metrics['Recall_5'], examples,
        time.time() - start), flush=True)
  if config.latency_runs:
    for num_threads in sorted({1, all_cores()}):
      median, p90 = summarize_latency(latency_ms(
          config.tflite_path, num_threads, config.latency_runs,
          config.warmup_runs))
      print('%s: latency with %d thread%s: median %.2f ms  p90 %.2f ms  '
            'over %d runs' % (name, num_threads, '' if num_threads == 1
                              else 's', median, p90, config.latency_runs),
            flush=True)
