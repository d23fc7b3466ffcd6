"""Tests for tflite_emulation: the eval graph computes the uint8 model."""

import os
import re

import numpy as np

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from ai_edge_litert import interpreter as tflite
from quantization import graph_editing
from quantization import quant_ops
from quantization import quantize
from testing import quantize_test_util as util
from quantization import tflite_emulation

tf1 = tf.compat.v1


class TfliteEmulationTest(tf.test.TestCase):

  def test_input_is_rounded_to_the_uint8_grid(self):
    values = np.linspace(-1.0, 1.0, 1001, dtype=np.float32)
    quantized = tflite_emulation.quantize_input(tf.constant(values)).numpy()
    # The released models' uint8 input, mean 128 and std 128: scale 1/128,
    # zero point 128, codes 0..255 standing for [-1, 127/128]. Every code is
    # exact in float32.
    codes = quantized * 128 + 128
    self.assertAllEqual(codes, np.round(codes))
    self.assertEqual(codes.min(), 0)
    self.assertEqual(codes.max(), 255)
    # Rounded half up to the nearest code, but for the values above 127/128.
    self.assertAllEqual(codes, np.clip(np.floor(values * 128 + 128.5), 0, 255))
    self.assertEqual(tflite_emulation.input_range(), (-1.0, 127 / 128))

  def test_pool_tie_breaks_are_removed_for_the_converter(self):
    # uint8 models' pools add a constant tie-break; int8 (per-channel)
    # models' one whose sign follows the mean's code, computed from it.
    for weights, tie_break_reads in ((quantize.ASYMMETRIC, []),
                                     (quantize.PER_CHANNEL, ['RealDiv'])):
      with self.subTest(weights=weights):
        with tf.Graph().as_default() as graph:
          util.build_mobilenet(is_training=False, quantized_input=True)
          quantize.create_eval_graph(weights=weights)
          graph_def = graph.as_graph_def()
        stripped = tflite_emulation.without_pool_tie_breaks(graph_def)
        pool, = [n.name for n in graph_def.node if n.op == 'AvgPool']
        # The eval graph rounds the pool through the tie-break add; the copy
        # has the pool's fake quant read the pool itself instead.
        self.assertCountEqual(
            [n.op for n in graph_def.node if pool in n.input],
            ['AddV2'] + tie_break_reads)
        self.assertCountEqual(
            [n.op for n in stripped.node if pool in n.input],
            ['FakeQuantWithMinMaxVars'] + tie_break_reads)
        self.assertLen(stripped.node, len(graph_def.node) - 1)

  def test_uint8_tflite_model_computes_what_the_fake_quant_graph_does(self):
    self._assert_tflite_model_computes_what_the_fake_quant_graph_does(
        quantize.SYMMETRIC, tf.uint8)

  def test_int8_tflite_model_computes_what_the_fake_quant_graph_does(self):
    self._assert_tflite_model_computes_what_the_fake_quant_graph_does(
        quantize.PER_CHANNEL, tf.int8)

  def _assert_tflite_model_computes_what_the_fake_quant_graph_does(
      self, weights, inference_type):
    """Trains with `weights`, converts to `inference_type`, compares.

    Args:
      weights: the weight quantization scheme of training.
      inference_type: tf.uint8 (per-tensor weights) or tf.int8 (per-channel
        weights, TFLite's int8 scheme).
    """
    checkpoint = os.path.join(self.get_temp_dir(), 'model.ckpt')
    util.train_and_save(self, checkpoint, steps=100, weights=weights)
    batch_size = 32
    quantized_images, labels = util.colour_task(batch_size, seed=3)
    if inference_type == tf.int8:
      quantized_images = (quantized_images.astype(np.int16) - 128).astype(
          np.int8)

    with tf.Graph().as_default() as graph:
      images_in, logits = util.build_mobilenet(is_training=False,
                                               batch_size=None,
                                               quantized_input=True)
      quantize.create_eval_graph(weights=weights)
      with self.session(graph=graph) as sess:
        tf1.train.Saver().restore(sess, checkpoint)
        self._assert_biases_on_the_integer_grid(sess, logits)
        weight_ranges = {
            scope: sess.run(variables['max'])
            for scope, variables in quantize.range_variables_by_scope(
                graph).items() if scope.endswith(quant_ops.WEIGHTS_QUANT)}
        frozen = tf1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), [logits.op.name])
    # Converted as the export converts it: without the eval graph's pool
    # tie-breaks, which TFLite's integer pool does not need.
    with tf.Graph().as_default() as graph:
      tf.import_graph_def(tflite_emulation.without_pool_tie_breaks(frozen), name='')
      with self.session(graph=graph) as sess:
        converter = tf1.lite.TFLiteConverter.from_session(
            sess, [graph.get_tensor_by_name(images_in.name)],
            [graph.get_tensor_by_name(logits.name)])
        converter.inference_type = inference_type
        converter.quantized_input_stats = {images_in.op.name: (
            tflite_emulation.INPUT_MEAN, tflite_emulation.INPUT_STD)}
        model = converter.convert()
    self._assert_weights_quantized_as(model, weights, weight_ranges)

    reference = _run_all_tensors(model, quantized_images,
                                 tflite.OpResolverType.BUILTIN_REF)
    # The converter's input grid is the one quantize_input rounds to (int8
    # codes are the uint8 ones minus 128).
    self.assertEqual(reference['input'][1],
                     (1 / 128, 128 if inference_type == tf.uint8 else 0))
    # TFLite's optimized integer kernels compute the same int32 sums as its
    # reference kernels (integer arithmetic is exact) and requantize them
    # with the same multiplier, but may round its fixed-point product
    # differently (ruy's single rounding against the reference's doubling
    # high multiply and rounding shift). Each result is within 0.5 +
    # M + 2^-31 |y / s| codes of the exact y / s + z (see
    # _assert_each_layer_computes_the_integer_result), under 1 in total, so
    # the two can differ by one code at most, and only where y / s lies that
    # close to a half-way point.
    optimized = _run_all_tensors(
        model, quantized_images,
        tflite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    self.assertCountEqual(optimized, reference)
    apart = 0
    for name, (codes, _) in reference.items():
      difference = np.abs(optimized[name][0].astype(np.int32) - codes)
      self.assertLessEqual(difference.max(), 1, msg=name)
      apart += np.count_nonzero(difference)
    print('optimized kernels one code from the reference ones: %d values' %
          apart)

    with tf.Graph().as_default() as graph:
      tf.import_graph_def(frozen, name='')
      with self.session(graph=graph) as sess:
        tf_logits = sess.run(
            logits.name, {images_in.name: _dequantize(*reference['input'])})
        # The task was learned, so predictions are not noise.
        self.assertGreater(np.mean(np.argmax(tf_logits, 1) == labels), 0.9)
        checked = self._assert_each_layer_computes_the_integer_result(
            sess, reference)
    # 27 body layers, the pool and the logits.
    self.assertEqual(checked, 29)

  def _assert_each_layer_computes_the_integer_result(self, sess, reference):
    """Compares each layer of the eval graph with TFLite's, on one input.

    Each layer of the TF graph is fed the codes the TFLite model's layer
    before it produced, so that every layer is compared on its own, not
    through the rounding differences of the layers before it.

    A convolution's codes are round(y / s + z) of its real output y. TFLite
    computes y exactly in integers and rescales the int32 sum by a fixed-
    point multiplier M = s_in * s_w / s_out, in error by at most M + 2^-31
    |y / s| codes (its rounding high multiply, then the shift by e, where
    M = m 2^-e with m in [0.5, 1), rounds to 2^-e <= 2 M codes). TF computes
    y in float32 from values that are themselves rounded to float32: over n
    products the error is at most (n + 6) u (sum |x w| + |b|), u = 2^-24,
    plus 2 u_in of the same where oneDNN rounds a convolution's inputs to
    bfloat16 (u_in = 2^-8 whenever the environment asks for its BF16 math
    mode, else 0: an upper bound on CPUs without AMX, where oneDNN keeps
    its float32 kernels in that mode); the fake quant's
    (y - min) / s adds 2 u 256 codes. So TF's y / s + z, clipped to the
    codes, is within 0.5 plus the sum of those bounds of TFLite's code: the
    two differ only near half-way points between codes, and by more than one
    code only where the bound exceeds one. Average pools give the same codes
    exactly: the mean of
    n values on the grid is a multiple of s / n from a half-way point or on
    it, where the eval graph's s / (4 n) tie-break pushes it up as TFLite's
    integer rounding does; float32 error is far below s / (4 n).

    Args:
      sess: a session of the frozen eval graph.
      reference: TFLite's tensors on TFLite's reference kernels, as
        `_run_all_tensors` returns them.

    Returns:
      The number of layers compared.
    """
    graph = sess.graph
    activation_quants = [
        op for op in graph.get_operations()
        if op.type == util.FAKE_QUANT and
        op.name.endswith('/%s/%s' % (quant_ops.ACT_QUANT, util.FAKE_QUANT))]
    checked = mismatches = worst = 0
    for fake_quant in activation_quants:
      output = fake_quant.inputs[0]
      is_pool = output.op.type in ('Add', 'AddV2')  # the pool's tie-break
      layer_output = output.op.inputs[0] if is_pool else output
      if layer_output.op.type == 'Relu6':
        layer_output = layer_output.op.inputs[0]
      layer = layer_output.op if is_pool else layer_output.op.inputs[0].op
      layer_input = layer.inputs[0]
      while layer_input.op.type == 'Identity':
        layer_input = layer_input.op.inputs[0]
      codes, (scale, zero_point) = reference[_tflite_name(output)]
      feed = {layer_input: _dequantize(*reference[_tflite_name(
          layer_input.op.inputs[0])])}
      real, quantized = sess.run([output, fake_quant.outputs[0]], feed)
      tf_codes = np.round(quantized / scale + zero_point)
      codes = codes.astype(np.float64)
      if is_pool:
        self.assertAllEqual(tf_codes, codes, msg=layer.name)
        checked += 1
        continue
      weights, bias = sess.run([layer.inputs[1], layer_output.op.inputs[1]])
      weights_quant = graph_editing.fake_quant_of(layer.inputs[1])
      weights_min, weights_max = sess.run(list(weights_quant.inputs[1:]))
      weights_scale = np.reshape((weights_max - weights_min) / 254, [-1])
      input_scale = reference[_tflite_name(layer_input.op.inputs[0])][1][0]
      # sum |x w| over each output's products, by the layer itself.
      magnitudes = sess.run(layer.outputs[0], {
          layer_input: np.abs(feed[layer_input]),
          layer.inputs[1]: np.abs(weights)})
      if layer.type == 'DepthwiseConv2dNative':
        products = weights.shape[0] * weights.shape[1]
      else:
        products = np.prod(weights.shape[:-1])
      u = 2.0**-24
      position = real / scale + zero_point
      bound = ((products + 6) * u + 2 * _convolution_input_rounding()) * (
          magnitudes + np.abs(bias)) / scale + 2 * u * 256 + (
              input_scale * weights_scale / scale + 2.0**-31 * np.abs(position))
      limits = np.iinfo(reference[_tflite_name(output)][0].dtype)
      excess = np.abs(np.clip(position, limits.min, limits.max) - codes) - 0.5
      self.assertLessEqual(np.max(excess - bound), 0.0, layer.name)
      worst = max(worst, np.max(excess / bound))
      mismatches += np.count_nonzero(tf_codes != codes)
      checked += 1
    print('layer values on the other code: %d; beyond the half-way point by '
          'at most %.2f of the bound' % (mismatches, worst))
    return checked

  def _assert_weights_quantized_as(self, model, weights, weight_ranges):
    """Checks every layer's weight tensor against the scheme `weights`.

    Per-channel: int8 with one scale per output channel (the axis TFLite
    quantizes on: 0 for a convolution's OHWI weights, 3 for a depthwise
    one's 1HWC), max_c / 127 of the channel's trained range, and zero points
    0. Per tensor: uint8, one scale, zero point 128 (symmetric).

    Args:
      model: the TFLite flatbuffer.
      weights: the weight quantization scheme it was trained with.
      weight_ranges: {weights_quant scope: its max variable's value}.
    """
    interpreter = tflite.Interpreter(model_content=model)
    tensors = interpreter.get_tensor_details()
    layers = [op for op in interpreter._get_ops_details()  # pylint: disable=protected-access
              if op['op_name'] in ('CONV_2D', 'DEPTHWISE_CONV_2D')]
    self.assertLen(layers, 28)
    for op in layers:
      tensor = tensors[op['inputs'][1]]
      parameters = tensor['quantization_parameters']
      scales, zero_points = parameters['scales'], parameters['zero_points']
      if weights == quantize.PER_CHANNEL:
        axis = 3 if op['op_name'] == 'DEPTHWISE_CONV_2D' else 0
        self.assertEqual(tensor['dtype'], np.int8, tensor['name'])
        self.assertEqual(parameters['quantized_dimension'], axis)
        self.assertLen(scales, tensor['shape'][axis])
        self.assertAllEqual(zero_points, np.zeros_like(zero_points))
        scope, = set(re.findall(r'([^;]*/%s)/' % quant_ops.WEIGHTS_QUANT,
                                tensor['name']))
        self.assertAllClose(scales, weight_ranges[scope] / 127, rtol=1e-6)
      else:
        self.assertEqual(tensor['dtype'], np.uint8, tensor['name'])
        self.assertLen(scales, 1)
        self.assertAllEqual(zero_points, [128])

  def _assert_biases_on_the_integer_grid(self, sess, logits):
    """Each bias is a whole number of input scale x weight scale units."""
    layers = [op for op in util.ancestors(logits)
              if op.type in ('Conv2D', 'DepthwiseConv2dNative')]
    self.assertLen(layers, 28)
    for layer in layers:
      bias_add, = layer.outputs[0].consumers()
      self.assertEqual(bias_add.type, 'BiasAdd', layer.name)
      layer_input = layer.inputs[0]
      while layer_input.op.type == 'Identity':  # inference-mode dropout
        layer_input = layer_input.op.inputs[0]
      input_min, input_max = util.fake_quant_range(sess, layer_input.op)
      weights_min, weights_max = util.fake_quant_range(
          sess, graph_editing.fake_quant_of(layer.inputs[1]))
      unit = (input_max - input_min) / 255 * (weights_max - weights_min) / 254
      units = sess.run(bias_add.inputs[1]) / unit
      self.assertGreater(np.abs(units).max(), 10, layer.name)
      # float32 holds a unit count to about 1e-7 of itself.
      self.assertAllClose(units, np.round(units), atol=1e-3, rtol=1e-6,
                          msg=layer.name)


def _run_all_tensors(model, images, resolver):
  """Runs an integer TFLite model on a batch, keeping every 8-bit tensor.

  Args:
    model: the flatbuffer.
    images: uint8 or int8 input batch, as the model takes.
    resolver: the OpResolverType of the kernels to run.

  Returns:
    {tensor name: (codes, (scale, zero point))}; a tensor the converter
    fused from several ops is named by the first of them.
  """
  interpreter = tflite.Interpreter(model_content=model,
                            experimental_op_resolver_type=resolver,
                            experimental_preserve_all_tensors=True)
  input_detail = interpreter.get_input_details()[0]
  interpreter.resize_tensor_input(input_detail['index'], images.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(input_detail['index'], images)
  interpreter.invoke()
  return {detail['name'].split(';')[0]: (
      interpreter.get_tensor(detail['index']).copy(), detail['quantization'])
          for detail in interpreter.get_tensor_details()
          if detail['dtype'] in (np.uint8, np.int8) and
          len(detail['shape']) > 1 and
          detail['name']}  # Unnamed: the optimized kernels' scratch.


def _tflite_name(tensor):
  """The TFLite tensor holding the quantized value of TF tensor `tensor`."""
  if tensor.op.type == 'Placeholder':
    return 'input'
  if tensor.op.type in ('Add', 'AddV2'):  # a pool's tie-break, TFLite lacks
    return tensor.op.inputs[0].op.name
  return tensor.op.name


def _convolution_input_rounding():
  """The unit roundoff of the inputs oneDNN's convolutions multiply here.

  oneDNN's BF16 (or ANY) math mode, set for the process by the environment,
  lets convolutions round their float32 inputs to bfloat16 (8 significant
  bits: round to nearest is off by at most 2^-8 of the value) and accumulate
  in float32; otherwise they multiply float32 values.
  """
  mode = os.environ.get('ONEDNN_DEFAULT_FPMATH_MODE', '').upper()
  return 2.0**-8 if mode in ('BF16', 'ANY') else 0.0


def _dequantize(codes, quantization):
  scale, zero_point = quantization
  return (codes.astype(np.float32) - zero_point) * np.float32(scale)


if __name__ == '__main__':
  tf.test.main()
