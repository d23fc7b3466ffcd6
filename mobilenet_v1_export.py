r"""Exports a MobileNet V1 checkpoint as the released tarballs bundled it.

  ./bazel-bin/mobilenet_v1_export --checkpoint_dir DIR --output_dir OUT \
      [--depth_multiplier=1.0 --image_size=224 --num_classes=1001] \
      [--quantize=True] [--post_training=dynamic,float16,int8 --dataset_dir D]

writes into --output_dir, with NAME as in the seed's table
(`mobilenet_v1_1.0_224`, `mobilenet_v1_0.25_128_quant`, ...):

  NAME.ckpt.*          the model's variables (quantization ranges included)
                       and the global step if the checkpoint has one, without
                       optimizer slots. The step tells which training step
                       the bundle comes from; fine-tuning from it resets the
                       step anyway.
  NAME_eval.pbtxt      the inference graph (the quantized eval graph with
                       --quantize) as a text GraphDef, variables unfrozen.
  NAME_frozen.pb       the same graph with variables folded into constants,
                       cut down to what the output needs: no variables, no
                       assign or initializer ops.
  NAME_info.txt        input and output names, shapes and types, and the
                       TFLite model's quantization parameters.
  NAME.tflite          the model to deploy. float32 for a float model. For a
                       --quantize model trained with per-channel weights
                       (mobilenet_v1_train's default): full-integer int8
                       inside (TFLite's int8 scheme, per-axis weight scales;
                       XNNPACK runs it), with uint8 input and output as the
                       released _quant models have (int8 with
                       --quantized_io_type=int8). For one trained with
                       per-tensor weights: uint8 throughout, as
                       contrib.quantize's models are.
  NAME_int8.tflite     per-tensor --quantize models with symmetric weight
                       ranges (--weight_quantization=symmetric): the uint8
                       model made int8 inside (tflite_int8), with the same
                       uint8 input and output. It computes the same numbers,
                       and XNNPACK runs int8, not uint8.

Both graphs take `input`, float32 [1, size, size, 3] with pixels mapped to
[-1, 1], and produce `MobilenetV1/Predictions/Reshape_1`, the softmax
[1, num_classes]: the names and the batch of 1 of the released frozen
graphs, which is what TFLite runs on a device. Float models take
(pixel - 127.5) / 127.5, as evaluation preprocesses images. Quantized models
have the input convention of Google's released quantized models, mean 128
and std 128: the uint8 TFLite input is the pixel itself, standing for
(pixel - 128) / 128 in [-1, 127/128], which is what the eval graph rounds
its float input to (tflite_emulation.quantize_input).

--post_training (float models only) also writes post-training quantized
variants of the float TFLite model: NAME_ptq_dynamic.tflite (8-bit weights,
float activations), NAME_ptq_float16.tflite (float16 weights) and
NAME_ptq_int8.tflite (fully integer, int8 input and output, calibrated on
--calibration_examples images of --dataset_dir's --calibration_split with the
evaluation preprocessing).

Export builds the same graph that mobilenet_v1_eval measures
(inference_model.py), from the same model flags.
"""

import contextlib
import os
import shutil
import sys
import tempfile

from absl import flags
from absl import logging
import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from ai_edge_litert.interpreter import Interpreter
from model import checkpoint_utils
from runtime import cli
from runtime import errors
from data import records
from model import inference_model
from quantization import tflite_emulation
from export import tflite_int8
from quantization import weight_rounding

tf1 = tf.compat.v1

FLAGS = flags.FLAGS

UINT8 = 'uint8'
INT8 = 'int8'

inference_model.define_flags(
    'The checkpoint was trained with --quantize: export the '
    'quantized eval graph and a fully uint8 TFLite model.')
flags.DEFINE_string('dataset_dir', '',
                    'TFRecords to calibrate --post_training=int8 on.')

flags.DEFINE_string('output_dir', '',
                    'Directory to write the bundle into (created if needed; '
                    'files of the same name are overwritten).')
flags.DEFINE_string('model_name', '',
                    'Base name of the files; default mobilenet_v1_<depth '
                    'multiplier>_<image size>[_quant], as the released '
                    'models are named.')
flags.DEFINE_list('post_training', [],
                  'Comma-separated post-training quantized variants of a '
                  'float model to write as well: dynamic (8-bit weights), '
                  'float16 (16-bit weights), int8 (fully integer; needs '
                  '--dataset_dir for calibration).')
flags.DEFINE_enum('quantized_io_type', UINT8, [UINT8, INT8],
                  'Input and output type of the int8 .tflite of a model '
                  'trained with per-channel weights (--weight_quantization='
                  'per_channel, the default): uint8 takes pixel values as '
                  'Google\'s released _quant models do; int8 takes them '
                  'minus 128.')
flags.DEFINE_integer('calibration_examples', 200,
                     'Images the int8 post-training quantization measures '
                     'activation ranges on.', lower_bound=1)
flags.DEFINE_string('calibration_split', records.TRAIN_SPLIT,
                    'Split of --dataset_dir the int8 calibration images come '
                    'from.')

INPUT_NAME = 'input'
OUTPUT_NAME = 'MobilenetV1/Predictions/Reshape_1'
# A float model's input is pixel / 127.5 - 1 (evaluation's preprocessing):
# TFLite's (pixel - mean) / std. Quantized models take
# tflite_emulation.INPUT_MEAN and INPUT_STD.
FLOAT_INPUT_MEAN = 127.5
FLOAT_INPUT_STD = 127.5
POST_TRAINING_KINDS = ('dynamic', 'float16', 'int8')


def model_name(depth_multiplier, image_size, quantized):
  """The released models' name: mobilenet_v1_1.0_224, ..._0.25_128_quant.

  Args:
    depth_multiplier: width multiplier; printed as Python prints floats, so
      1 -> 1.0 and 0.50 -> 0.5, as the released file names have it.
    image_size: input resolution.
    quantized: whether the model is quantized.

  Returns:
    The name, without extension.
  """
  return 'mobilenet_v1_%s_%d%s' % (float(depth_multiplier), image_size,
                                   '_quant' if quantized else '')


def build_inference_graph(depth_multiplier, image_size, num_classes,
                          quantized, quantize_options=None):
  """Builds the exported graph: `input` placeholder to softmax predictions.

  Args:
    depth_multiplier: width multiplier.
    image_size: input resolution.
    num_classes: classes of the logits layer.
    quantized: build the quantized eval graph (folded batch norms, fake
      quantization reading the range variables).
    quantize_options: how the checkpoint was quantized
      (`inference_model.quantize_options`); None for the defaults.

  Returns:
    (graph, input tensor, output tensor).
  """
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [1, image_size, image_size, 3],
                             name=INPUT_NAME)
    inference_model.build(images, num_classes, depth_multiplier, quantized,
                          quantize_options)
    tf1.train.get_or_create_global_step()
  return graph, images, graph.get_tensor_by_name(OUTPUT_NAME + ':0')


def freeze(session, graph):
  """Folds the variables of `graph` into constants, keeping what feeds the output.

  Args:
    session: a session of `graph` with its variables restored.
    graph: the graph build_inference_graph built.

  Returns:
    The frozen GraphDef.
  """
  return tf1.graph_util.convert_variables_to_constants(
      session, graph.as_graph_def(), [OUTPUT_NAME])


def _converter(frozen_graph_def):
  """A TFLite converter of a frozen graph, from `input` to the softmax.

  The converter is run on a session of the imported frozen GraphDef, so the
  TFLite model is converted from exactly what NAME_frozen.pb holds.
  """
  graph = tf.Graph()
  with graph.as_default():
    tf.graph_util.import_graph_def(frozen_graph_def, name='')
  with tf1.Session(graph=graph) as session:
    return tf1.lite.TFLiteConverter.from_session(
        session, [graph.get_tensor_by_name(INPUT_NAME + ':0')],
        [graph.get_tensor_by_name(OUTPUT_NAME + ':0')])


def _run_converter(converter):
  """converter.convert() without the converter's progress chatter.

  The converter logs its steps through absl and its quantizer prints to the
  process's stderr; failures still raise with their message.
  """
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  try:
    with slim_compat.native_stderr_silenced():
      return converter.convert()
  finally:
    logging.set_verbosity(verbosity)


def convert(frozen_graph_def, quantized, per_channel=False, io_type=UINT8):
  """Converts a frozen graph to TFLite.

  Args:
    frozen_graph_def: what `freeze` returned.
    quantized: the graph has fake quantization: convert it to a full-integer
      model.
    per_channel: the quantized graph has per-channel weight ranges: the
      model is int8 inside (TFLite's int8 scheme, per-axis weight scales);
      otherwise it is uint8 throughout, as contrib.quantize's models are.
    io_type: the per-channel model's input and output type, UINT8 (pixel
      values in, as the released quantized models take) or INT8.

  Returns:
    The TFLite flatbuffer, bytes.
  """
  if quantized:
    frozen_graph_def = tflite_emulation.without_pool_tie_breaks(frozen_graph_def)
  converter = _converter(frozen_graph_def)
  if not quantized:
    return _run_converter(converter)
  converter.quantized_input_stats = {
      INPUT_NAME: (tflite_emulation.INPUT_MEAN, tflite_emulation.INPUT_STD)}
  if not per_channel:
    converter.inference_type = tf.uint8
    return _run_converter(converter)
  # The TF1 converter writes an int8 model's input and output in int8; the
  # uint8 interface is added after it.
  converter.inference_type = tf.int8
  content = _run_converter(converter)
  return tflite_int8.with_uint8_interface(content) if io_type == UINT8 else (
      content)


def convert_post_training(frozen_graph_def, kind, representative_images=None):
  """Converts a float frozen graph with post-training quantization.

  Args:
    frozen_graph_def: a float model's frozen graph.
    kind: 'dynamic' (8-bit weights, activations float), 'float16' (16-bit
      weights) or 'int8' (integer weights, activations, input and output).
    representative_images: for 'int8', a callable returning an iterable of
      float32 [1, size, size, 3] images in [-1, 1] to calibrate ranges on.

  Returns:
    The TFLite flatbuffer, bytes.

  Raises:
    ValueError: `kind` is unknown, or 'int8' lacks representative images.
  """
  if kind not in POST_TRAINING_KINDS:
    raise ValueError('unknown post-training kind %r; one of %s' %
                     (kind, ', '.join(POST_TRAINING_KINDS)))
  converter = _converter(frozen_graph_def)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if kind == 'float16':
    converter.target_spec.supported_types = [tf.float16]
  elif kind == 'int8':
    if representative_images is None:
      raise ValueError('int8 post-training quantization needs '
                       'representative_images')
    converter.representative_dataset = lambda: (
        [image] for image in representative_images())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
  return _run_converter(converter)


def tflite_io(model_content):
  """The input and output details of a TFLite model (the first of each).

  Args:
    model_content: a TFLite flatbuffer.

  Returns:
    (input details, output details) as the interpreter gives them: dicts
    with 'name', 'shape', 'dtype' and 'quantization' (scale, zero point).
  """
  interpreter = Interpreter(model_content=model_content)
  return interpreter.get_input_details()[0], interpreter.get_output_details()[0]


def _describe_tensor(details):
  """'uint8 [1, 224, 224, 3] scale=... zero_point=...' for info lines."""
  text = '%s %s' % (np.dtype(details['dtype']).name,
                    [int(d) for d in details['shape']])
  scale, zero_point = details['quantization']
  if scale:
    text += ' scale=%.9g zero_point=%d' % (scale, zero_point)
  return text


def info_lines(name, input_tensor, output_tensor, quantized, tflite_models):
  """The lines of NAME_info.txt, each 'Key: value'.

  The first three lines are those of the released info files.

  Args:
    name: the model name.
    input_tensor: the graphs' input tensor.
    output_tensor: the graphs' output tensor.
    quantized: the model is quantized (its input convention is the released
      quantized models', not the float models').
    tflite_models: [(file name, flatbuffer)], NAME.tflite first.

  Returns:
    A list of strings.
  """
  if quantized:
    mean, std = tflite_emulation.INPUT_MEAN, tflite_emulation.INPUT_STD
    low, high = tflite_emulation.input_range()
    values = ('(pixel - %g) / %g, in [%.8g, %.8g]; the uint8 TFLite input is '
              'the pixel itself' % (mean, std, low, high))
  else:
    mean, std = FLOAT_INPUT_MEAN, FLOAT_INPUT_STD
    values = '(pixel - %g) / %g, in [-1, 1]' % (mean, std)
  lines = [
      'Model: %s' % name,
      'Input: %s' % input_tensor.op.name,
      'Output: %s' % output_tensor.op.name,
      'Input shape: %s' % input_tensor.shape.as_list(),
      'Input dtype: %s' % input_tensor.dtype.name,
      'Input values: %s' % values,
      'Input mean: %g' % mean,
      'Input std: %g' % std,
      'Output shape: %s' % output_tensor.shape.as_list(),
      'Output dtype: %s' % output_tensor.dtype.name,
      'Output values: softmax probabilities of the classes',
  ]
  for index, (file_name, content) in enumerate(tflite_models):
    input_details, output_details = tflite_io(content)
    prefix = 'TFLite' if index == 0 else 'TFLite %s' % file_name
    if index == 0:
      lines.append('TFLite model: %s' % file_name)
    lines.append('%s input: %s' % (prefix, _describe_tensor(input_details)))
    lines.append('%s output: %s' % (prefix, _describe_tensor(output_details)))
  return lines


def _representative_images(dataset_dir, split, image_size, count):
  """Returns a callable yielding `count` preprocessed images for calibration.

  The images go through the evaluation preprocessing, as at inference time.
  """
  def images():
    dataset = records.build_dataset(
        dataset_dir, split, 1, image_size, is_training=False)
    for image, _ in dataset.take(count):
      yield image.numpy()
  return images


def _check_flags():
  """Raises errors.UserError for flags that cannot work together."""
  if not (FLAGS.checkpoint_dir or FLAGS.checkpoint_path):
    raise errors.UserError('give --checkpoint_dir (exports the latest '
                        'checkpoint) or --checkpoint_path')
  if not FLAGS.output_dir:
    raise errors.UserError('--output_dir is required: where the bundle goes')
  unknown = [k for k in FLAGS.post_training if k not in POST_TRAINING_KINDS]
  if unknown:
    raise errors.UserError('--post_training: unknown %s; choose from %s' %
                        (', '.join(unknown), ','.join(POST_TRAINING_KINDS)))
  if FLAGS.post_training and FLAGS.quantize:
    raise errors.UserError('--post_training quantizes float models; a --quantize '
                        'model is already quantized (its NAME.tflite is uint8)')
  if 'int8' in FLAGS.post_training and not FLAGS.dataset_dir:
    raise errors.UserError('--post_training=int8 calibrates on images: give '
                        '--dataset_dir')


def _make_output_dir(path):
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.UserError('cannot create --output_dir %s: %s' %
                        (path, e.strerror or e)) from e
  if not os.access(path, os.W_OK):
    raise errors.UserError('--output_dir %s is not writable' % path)


def _write(path, content):
  mode = 'w' if isinstance(content, str) else 'wb'
  try:
    with open(path, mode) as f:
      f.write(content)
  except OSError as e:
    raise errors.UserError('cannot write %s: %s' % (path, e.strerror or e)) from e


@contextlib.contextmanager
def _staged(output_dir, name):
  """Yields a staging directory in `output_dir`; moves its files in on success.

  The bundle appears whole or not at all: a failing conversion, an error or
  Ctrl-C removes the staging directory and leaves --output_dir as it was.
  Each file is moved in by a rename within the directory's file system.

  Args:
    output_dir: the bundle's directory (it exists).
    name: the bundle's base name, for the staging directory's name.

  Yields:
    The staging directory's path.
  """
  staging = tempfile.mkdtemp(prefix='.%s.staging-' % name, dir=output_dir)
  try:
    yield staging
    for file_name in sorted(os.listdir(staging)):
      os.replace(os.path.join(staging, file_name),
                 os.path.join(output_dir, file_name))
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def export():
  """Writes the bundle the flags describe.

  Returns:
    (the checkpoint exported, its global step or None, the paths written).
  """
  _check_flags()
  checkpoint = checkpoint_utils.resolve(FLAGS.checkpoint_path or
                                        FLAGS.checkpoint_dir)
  # Data problems should stop the export before any file is written.
  if 'int8' in FLAGS.post_training:
    records.list_split_files(FLAGS.dataset_dir, FLAGS.calibration_split)
  _make_output_dir(FLAGS.output_dir)
  name = FLAGS.model_name or model_name(FLAGS.depth_multiplier,
                                        FLAGS.image_size, FLAGS.quantize)
  with _staged(FLAGS.output_dir, name) as staging:
    checkpoint, step, written = _write_bundle(checkpoint, name,
                                              os.path.join(staging, name))
  return checkpoint, step, [
      os.path.join(FLAGS.output_dir, os.path.basename(path))
      for path in written]


def _write_bundle(checkpoint, name, prefix):
  """Writes the bundle's files, named `prefix`*, from `checkpoint`.

  Args:
    checkpoint: the checkpoint prefix to export.
    name: the model name, for NAME_info.txt.
    prefix: the path of the files without their suffixes.

  Returns:
    (the checkpoint exported, its global step or None, the paths written).
  """
  options = (inference_model.quantize_options(checkpoint) if FLAGS.quantize
             else {})
  per_channel = options.get('per_channel_weights', False)
  graph, images, predictions = build_inference_graph(
      FLAGS.depth_multiplier, FLAGS.image_size, FLAGS.num_classes,
      FLAGS.quantize, options)
  # Taken before the Saver adds its save/restore ops, which inference does
  # not need.
  eval_graph_def = graph.as_graph_def()
  step = checkpoint_utils.saved_global_step(checkpoint)
  with graph.as_default():
    # A checkpoint without a global step (a release) is exported without one.
    variables = [v for v in tf1.global_variables()
                 if step is not None or
                 v.op.name != checkpoint_utils.GLOBAL_STEP]
    saver = tf1.train.Saver(variables)
  with tf1.Session(graph=graph) as session:
    inference_model.verify_checkpoint(
        checkpoint, graph, variables, FLAGS.num_classes,
        FLAGS.depth_multiplier, FLAGS.quantize)
    saver.restore(session, checkpoint)
    frozen = freeze(session, graph)
    # write_state=False: the bundle has no `checkpoint` index file that would
    # make --output_dir look like a training directory.
    saver.save(session, prefix + '.ckpt', write_state=False)

  written = tf.io.gfile.glob(prefix + '.ckpt.*')
  outputs = [
      (prefix + '_eval.pbtxt', str(eval_graph_def)),
      (prefix + '_frozen.pb', frozen.SerializeToString()),
      (prefix + '.tflite', convert(frozen, FLAGS.quantize, per_channel,
                                   FLAGS.quantized_io_type)),
  ]
  if FLAGS.quantize and not per_channel:
    try:
      outputs.append((prefix + '_int8.tflite',
                      tflite_int8.from_uint8(outputs[-1][1])))
    except ValueError as e:
      print('No %s_int8.tflite: %s.' % (name, e))
  representative = _representative_images(
      FLAGS.dataset_dir, FLAGS.calibration_split, FLAGS.image_size,
      FLAGS.calibration_examples)
  for kind in FLAGS.post_training:
    outputs.append(('%s_ptq_%s.tflite' % (prefix, kind),
                    convert_post_training(frozen, kind, representative)))
  tflite_models = [(os.path.basename(path), content)
                   for path, content in outputs if path.endswith('.tflite')]
  outputs.append((prefix + '_info.txt', '\n'.join(
      info_lines(name, images, predictions, FLAGS.quantize,
                 tflite_models)) + '\n'))
  for path, content in outputs:
    _write(path, content)
  return checkpoint, step, sorted(written) + [path for path, _ in outputs]


def main(argv):
  del argv  # unused
  checkpoint, step, paths = export()
  warning = FLAGS.quantize and weight_rounding.unrounded_warning(checkpoint)
  if warning:
    print('mobilenet_v1_export: warning: %s' % warning, file=sys.stderr,
          flush=True)
  print('Exported %s (%s) to %s:' % (checkpoint,
                                     checkpoint_utils.describe_step(step),
                                     FLAGS.output_dir))
  for path in paths:
    print('  %-48s %10d bytes' % (os.path.basename(path),
                                  os.path.getsize(path)))


if __name__ == '__main__':
  cli.run(main)
