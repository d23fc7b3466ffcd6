"""Tests for tflite_emulation: the eval graph computes the uint8 model."""

import os

import numpy as np

import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from ai_edge_litert import interpreter as tflite
import quantize
import quantize_test_util as util
import tflite_emulation

tf1 = tf.compat.v1


class TfliteEmulationTest(tf.test.TestCase):

  def test_input_is_rounded_to_the_uint8_grid(self):
    values = np.linspace(-1.0, 1.0, 1001, dtype=np.float32)
    quantized = tflite_emulation.quantize_input(tf.constant(values)).numpy()
    # TFLite's uint8 input for [-1, 1]: scale 2 / 255, zero point 128 (the
    # nudged grid), codes 0..255.
    codes = quantized / (2.0 / 255) + 128
    self.assertAllClose(codes, np.round(codes), atol=1e-3)
    self.assertLessEqual(np.abs(quantized - values).max(), 1.0 / 255 + 1e-6)

  def test_pool_tie_breaks_are_removed_for_the_converter(self):
    with tf.Graph().as_default() as graph:
      util.build_mobilenet(is_training=False, quantized_input=True)
      quantize.create_eval_graph()
      graph_def = graph.as_graph_def()
    stripped = tflite_emulation.without_pool_tie_breaks(graph_def)
    pool, = [n.name for n in graph_def.node if n.op == 'AvgPool']
    # The eval graph rounds the pool through the tie-break add; the copy
    # has the pool's fake quant read the pool itself, and nothing else.
    self.assertEqual([n.op for n in graph_def.node if pool in n.input],
                     ['AddV2'])
    self.assertEqual([n.op for n in stripped.node if pool in n.input],
                     ['FakeQuantWithMinMaxVars'])
    self.assertLen(stripped.node, len(graph_def.node) - 1)

  def test_uint8_tflite_model_agrees_with_fake_quant_graph(self):
    checkpoint = os.path.join(self.get_temp_dir(), 'model.ckpt')
    util.train_and_save(self, checkpoint, steps=100)
    batch_size = 128
    quantized_images, labels = util.colour_task(batch_size, seed=3)

    with tf.Graph().as_default() as graph:
      images_in, logits = util.build_mobilenet(is_training=False,
                                           batch_size=None,
                                           quantized_input=True)
      quantize.create_eval_graph()
      with self.session(graph=graph) as sess:
        tf1.train.Saver().restore(sess, checkpoint)
        self._assert_biases_on_the_integer_grid(sess, logits)
        frozen = tf1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), [logits.op.name])
    with tf.Graph().as_default() as graph:
      tf.import_graph_def(frozen, name='')
      images_in = graph.get_tensor_by_name(images_in.name)
      logits = graph.get_tensor_by_name(logits.name)
      with self.session(graph=graph) as sess:
        converter = tf1.lite.TFLiteConverter.from_session(
            sess, [images_in], [logits])
        converter.inference_type = tf.uint8
        converter.inference_input_type = tf.uint8
        converter.quantized_input_stats = {
            images_in.op.name: (127.5, 127.5)}
        model = converter.convert()

        # TFLite's reference kernels: the definition of the integer model.
        interpreter = tflite.Interpreter(
            model_content=model,
            experimental_op_resolver_type=(
                tflite.OpResolverType.BUILTIN_REF))
        input_detail = interpreter.get_input_details()[0]
        output_detail = interpreter.get_output_details()[0]
        self.assertEqual(input_detail['dtype'], np.uint8)
        self.assertEqual(output_detail['dtype'], np.uint8)
        # TFLite rounds the zero point 127.5 to 128: give TF the values the
        # uint8 inputs stand for in TFLite.
        input_scale, input_zero_point = input_detail['quantization']
        tf_logits = sess.run(logits, {images_in: input_scale * (
            quantized_images.astype(np.float32) - input_zero_point)})

    interpreter.resize_tensor_input(input_detail['index'],
                                    [batch_size, util.IMAGE_SIZE, util.IMAGE_SIZE, 3])
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail['index'], quantized_images)
    interpreter.invoke()
    output_scale, output_zero_point = output_detail['quantization']
    tflite_logits = output_scale * (
        interpreter.get_tensor(output_detail['index']).astype(np.float32) -
        output_zero_point)
    # The task was learned, so predictions are not noise.
    self.assertGreater(np.mean(np.argmax(tf_logits, 1) == labels), 0.9)
    agreement = np.mean(
        np.argmax(tflite_logits, 1) == np.argmax(tf_logits, 1))
    self.assertGreaterEqual(agreement, 0.99)
    # With biases and pool means rounded as TFLite rounds them, what is left
    # is float32 accumulation landing on the other side of a rounding
    # boundary now and then (about 1e-5 of a layer's values), which the
    # layers after it carry on.
    differences = np.abs(tflite_logits - tf_logits) / output_scale
    self.assertLessEqual(differences.max(), 2.0 + 1e-3)
    self.assertGreaterEqual(np.mean(differences < 0.5), 0.95)

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
      weights_min, weights_max = util.fake_quant_range(sess, layer.inputs[1].op)
      unit = (input_max - input_min) / 255 * (weights_max - weights_min) / 254
      units = sess.run(bias_add.inputs[1]) / unit
      self.assertGreater(np.abs(units).max(), 10, layer.name)
      # float32 holds a unit count to about 1e-7 of itself.
      self.assertAllClose(units, np.round(units), atol=1e-3, rtol=1e-6,
                          msg=layer.name)


if __name__ == '__main__':
  tf.test.main()
