"""Writes the export bundle of a checkpoint, as the released tarballs have it.

With NAME as in the seed's table (`mobilenet_v1_1.0_224`,
`mobilenet_v1_0.25_128_quant`, ...), the bundle is NAME.ckpt.*, NAME_eval.pbtxt,
NAME_frozen.pb, NAME.tflite (and NAME_int8.tflite, NAME_ptq_*.tflite for some
models) and NAME_info.txt; mobilenet_v1_export's docstring says what each
holds. The files are written into a staging directory and moved in together,
so the bundle appears whole or not at all.
"""

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
from typing import Tuple

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from ai_edge_litert.interpreter import Interpreter
from data import records
from export import convert
from export import freeze
from export import tflite_int8
from model import checkpoint_utils
from model import inference_model
from model import variants
from quantization import quantize
from quantization import tflite_emulation
from quantization import weight_rounding
from runtime import errors

tf1 = tf.compat.v1

# A float model's input is pixel / 127.5 - 1 (evaluation's preprocessing):
# TFLite's (pixel - mean) / std. Quantized models take
# tflite_emulation.INPUT_MEAN and INPUT_STD.
FLOAT_INPUT_MEAN = 127.5
FLOAT_INPUT_STD = 127.5


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """What to export, and into which files.

  Attributes:
    checkpoint_dir: directory of training checkpoints; the latest is
      exported.
    checkpoint_path: a specific checkpoint to export instead.
    output_dir: directory to write the bundle into (created if needed; files
      of the same name are overwritten).
    model_name: base name of the files; empty for `variants.release_name(...)` of the
      model.
    num_classes: classes of the logits layer.
    image_size: input resolution (square).
    depth_multiplier: width multiplier.
    quantize: the checkpoint was trained quantization-aware: export the
      quantized eval graph and an integer TFLite model.
    post_training: post-training quantized variants of a float model to
      write as well, a tuple of `convert.POST_TRAINING_KINDS`.
    quantized_io_type: input and output type of the int8 TFLite model of a
      checkpoint trained with per-channel weights, convert.UINT8 or
      convert.INT8.
    dataset_dir: directory of TFRecords to calibrate post-training int8 on.
    calibration_split: the split of `dataset_dir` the calibration images
      come from.
    calibration_examples: images post-training int8 calibrates on.
  """
  checkpoint_dir: str
  checkpoint_path: str
  output_dir: str
  model_name: str
  num_classes: int
  image_size: int
  depth_multiplier: float
  quantize: bool
  post_training: Tuple[str, ...]
  quantized_io_type: str
  dataset_dir: str
  calibration_split: str
  calibration_examples: int

  def __post_init__(self):
    """Checks that the settings can work together.

    Raises:
      errors.UserError: no checkpoint or output directory, an unknown
        post-training kind, post-training of a quantized model, or int8
        calibration without a dataset.
    """
    if not (self.checkpoint_dir or self.checkpoint_path):
      raise errors.UserError('give --checkpoint_dir (exports the latest '
                             'checkpoint) or --checkpoint_path')
    if not self.output_dir:
      raise errors.UserError('--output_dir is required: where the bundle '
                             'goes')
    unknown = [kind for kind in self.post_training
               if kind not in convert.POST_TRAINING_KINDS]
    if unknown:
      raise errors.UserError('--post_training: unknown %s; choose from %s' % (
          ', '.join(unknown), ','.join(convert.POST_TRAINING_KINDS)))
    if self.post_training and self.quantize:
      raise errors.UserError('--post_training quantizes float models; a '
                             '--quantize model is already quantized (its '
                             'NAME.tflite is uint8)')
    if 'int8' in self.post_training and not self.dataset_dir:
      raise errors.UserError('--post_training=int8 calibrates on images: give '
                             '--dataset_dir')


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


def _make_output_dir(path):
  """Creates the bundle's directory if needed.

  Raises:
    errors.UserError: it cannot be created or is not writable.
  """
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.UserError('cannot create --output_dir %s: %s' %
                           (path, e.strerror or e)) from e
  if not os.access(path, os.W_OK):
    raise errors.UserError('--output_dir %s is not writable' % path)


def _write(path, content):
  """Writes str or bytes `content` to `path`.

  Raises:
    errors.UserError: the file cannot be written.
  """
  mode = 'w' if isinstance(content, str) else 'wb'
  try:
    with open(path, mode) as f:
      f.write(content)
  except OSError as e:
    raise errors.UserError('cannot write %s: %s' %
                           (path, e.strerror or e)) from e


@contextlib.contextmanager
def _staged(output_dir, name):
  """Yields a staging directory in `output_dir`; moves its files in on success.

  The bundle appears whole or not at all: a failing conversion, an error or
  Ctrl-C removes the staging directory and leaves `output_dir` as it was.
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


def write_bundle(config):
  """Writes the bundle `config` describes into `config.output_dir`.

  Args:
    config: an ExportConfig.

  Returns:
    (the checkpoint exported, its global step or None, the paths written).

  Raises:
    checkpoint_utils.CheckpointError: no checkpoint, or one that does not
      fit the model.
    errors.UserError: the calibration data or the output directory is
      unusable.
  """
  checkpoint = checkpoint_utils.resolve(config.checkpoint_path or
                                        config.checkpoint_dir)
  # Data problems should stop the export before any file is written.
  if 'int8' in config.post_training:
    records.list_split_files(config.dataset_dir,
                                    config.calibration_split)
  _make_output_dir(config.output_dir)
  name = config.model_name or variants.release_name(
      config.depth_multiplier, config.image_size, config.quantize)
  with _staged(config.output_dir, name) as staging:
    step, written = _write_files(config, checkpoint, name,
                                 os.path.join(staging, name))
  return checkpoint, step, [
      os.path.join(config.output_dir, os.path.basename(path))
      for path in written]


def _write_files(config, checkpoint, name, prefix):
  """Writes the bundle's files, named `prefix`*, from `checkpoint`.

  Args:
    config: an ExportConfig.
    checkpoint: the checkpoint prefix to export.
    name: the model name, for NAME_info.txt.
    prefix: the path of the files without their suffixes.

  Returns:
    (the checkpoint's global step or None, the paths written).
  """
  options = (inference_model.quantize_options(checkpoint) if config.quantize
             else {})
  per_channel = options.get('weights') == quantize.PER_CHANNEL
  graph, images, predictions = freeze.build_inference_graph(
      config.depth_multiplier, config.image_size, config.num_classes,
      config.quantize, options)
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
        checkpoint, graph, variables, config.num_classes,
        config.depth_multiplier, config.quantize)
    saver.restore(session, checkpoint)
    frozen = freeze.freeze(session, graph)
    # write_state=False: the bundle has no `checkpoint` index file that would
    # make the output directory look like a training directory.
    saver.save(session, prefix + '.ckpt', write_state=False)

  written = tf.io.gfile.glob(prefix + '.ckpt.*')
  outputs = [
      (prefix + '_eval.pbtxt', str(eval_graph_def)),
      (prefix + '_frozen.pb', frozen.SerializeToString()),
      (prefix + '.tflite', convert.convert(frozen, config.quantize,
                                           per_channel,
                                           config.quantized_io_type)),
  ]
  if config.quantize and not per_channel:
    try:
      outputs.append((prefix + '_int8.tflite',
                      tflite_int8.from_uint8(outputs[-1][1])))
    except ValueError as e:
      print('No %s_int8.tflite: %s.' % (name, e))
  representative = convert.calibration_images(
      config.dataset_dir, config.calibration_split, config.image_size,
      config.calibration_examples)
  for kind in config.post_training:
    outputs.append(('%s_ptq_%s.tflite' % (prefix, kind),
                    convert.convert_post_training(frozen, kind,
                                                  representative)))
  tflite_models = [(os.path.basename(path), content)
                   for path, content in outputs if path.endswith('.tflite')]
  outputs.append((prefix + '_info.txt', '\n'.join(
      info_lines(name, images, predictions, config.quantize,
                 tflite_models)) + '\n'))
  for path, content in outputs:
    _write(path, content)
  return step, sorted(written) + [path for path, _ in outputs]


def export(config):
  """Writes the bundle and prints what was written, with file sizes.

  Args:
    config: an ExportConfig.

  Raises:
    checkpoint_utils.CheckpointError: no checkpoint, or one that does not
      fit the model.
    errors.UserError: the calibration data or the output directory is
      unusable.
  """
  checkpoint, step, paths = write_bundle(config)
  warning = config.quantize and weight_rounding.unrounded_warning(checkpoint)
  if warning:
    print('mobilenet_v1_export: warning: %s' % warning, file=sys.stderr,
          flush=True)
  print('Exported %s (%s) to %s:' % (checkpoint,
                                     checkpoint_utils.describe_step(step),
                                     config.output_dir))
  for path in paths:
    print('  %-48s %10d bytes' % (os.path.basename(path),
                                  os.path.getsize(path)))
