"""TFLite conversion of a frozen inference graph.

A float graph becomes a float32 model; a quantized one (fake quantization
with trained ranges) a full-integer model: uint8 throughout for per-tensor
weights, as contrib.quantize's models are, int8 inside for per-channel
weights. A float graph can also be quantized after training: dynamic (8-bit
weights), float16, or int8 calibrated on representative images.
"""

from absl import logging
from runtime import slim_compat
import tensorflow as tf

from data import records
from export import freeze
from export import tflite_int8
from quantization import tflite_emulation

tf1 = tf.compat.v1

UINT8 = 'uint8'
INT8 = 'int8'
POST_TRAINING_KINDS = ('dynamic', 'float16', 'int8')


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
        session, [graph.get_tensor_by_name(freeze.INPUT_NAME + ':0')],
        [graph.get_tensor_by_name(freeze.OUTPUT_NAME + ':0')])


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
    frozen_graph_def: what `freeze.freeze` returned.
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
    frozen_graph_def = tflite_emulation.without_pool_tie_breaks(
        frozen_graph_def)
  converter = _converter(frozen_graph_def)
  if not quantized:
    return _run_converter(converter)
  converter.quantized_input_stats = {
      freeze.INPUT_NAME: (tflite_emulation.INPUT_MEAN,
                          tflite_emulation.INPUT_STD)}
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


def calibration_images(dataset_dir, split, image_size, count):
  """Images to calibrate int8 post-training quantization on.

  The images go through the evaluation preprocessing, as at inference time.

  Args:
    dataset_dir: directory of TFRecords.
    split: the split the images come from.
    image_size: input resolution.
    count: how many images.

  Returns:
    A callable returning an iterable of `count` float32 [1, size, size, 3]
    images, as `convert_post_training` takes it.
  """
  def images():
    dataset = records.build_dataset(
        dataset_dir, split, 1, image_size, is_training=False)
    for image, _ in dataset.take(count):
      yield image.numpy()
  return images
