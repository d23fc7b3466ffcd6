"""Tests for graph_editing: matching and rerouting ops in a graph."""

import numpy as np
import tensorflow as tf

from quantization import graph_editing
from testing import test_data

test_data.use_float32_math()

tf1 = tf.compat.v1


class GraphEditingTest(tf.test.TestCase):

  def _layer(self):
    """A Conv2D of a variable, with a ReLU after it, in scope 'layer'."""
    images = tf1.placeholder(tf.float32, [1, 4, 4, 2], name='images')
    with tf1.variable_scope('layer'):
      weights = tf1.get_variable(
          'weights', initializer=np.ones([1, 1, 2, 3], np.float32))
      conv = tf.nn.conv2d(images, weights, 1, 'SAME')
      output = tf.nn.relu(conv)
    return images, weights, conv, output

  def test_find_layers_names_each_layer_by_its_scope(self):
    with tf.Graph().as_default() as graph:
      _, _, conv, _ = self._layer()
      # A convolution of a computed tensor is not a layer.
      tf.nn.conv2d(conv, tf.ones([1, 1, 3, 1]), 1, 'SAME', name='other')
      self.assertEqual(graph_editing.find_layers(graph), [(conv.op, 'layer')])

  def test_reroute_and_clone_change_what_consumers_compute(self):
    with tf.Graph().as_default() as graph:
      images, weights, conv, output = self._layer()
      doubled = graph_editing.clone_op(conv.op, [images, weights * 2.0])
      self.assertEqual(doubled.name, 'Conv2D_Fold')
      graph_editing.reroute(conv, doubled.outputs[0], conv.consumers())
      self.assertEqual(output.op.inputs[0].name, doubled.outputs[0].name)
      self.assertEqual(graph_editing.sole_consumer(doubled.outputs[0],
                                                   ['Relu']), output.op)
      with self.session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        feed = {images: np.ones([1, 4, 4, 2])}
        self.assertAllEqual(sess.run(output, feed), np.full([1, 4, 4, 3], 4.))
        self.assertAllEqual(sess.run(conv, feed), np.full([1, 4, 4, 3], 2.))

  def test_fake_quant_of_looks_through_identities(self):
    with tf.Graph().as_default():
      value = tf1.placeholder(tf.float32, [4])
      quantized = tf.quantization.fake_quant_with_min_max_args(
          value, min=-1.0, max=1.0)
      self.assertIs(graph_editing.fake_quant_of(tf.identity(quantized)),
                    quantized.op)
      self.assertIsNone(graph_editing.fake_quant_of(value))
      self.assertAllClose(graph_editing.fake_quant_scale(quantized.op),
                          2.0 / 255)
      self.assertTrue(graph_editing.reads_variable(tf.identity(
          tf1.get_variable('v', [1]))))
      self.assertFalse(graph_editing.reads_variable(value))

  def test_bfloat16_copies_are_seen_through(self):
    with tf.Graph().as_default():
      variable = tf1.get_variable('v', [4])
      copy = tf.cast(variable, tf.bfloat16)
      self.assertIs(graph_editing.variable_of(copy),
                    graph_editing.variable_of(tf.identity(variable)))
      quantized = tf.quantization.fake_quant_with_min_max_args(
          tf1.placeholder(tf.float32, [4]), min=-1.0, max=1.0)
      self.assertIs(graph_editing.fake_quant_of(
          tf.cast(quantized, tf.bfloat16)), quantized.op)
      # in_float32 hands its function the float32 value a copy rounded, a
      # float32 cast of any other bfloat16 tensor, a float32 tensor itself.
      def argument(tensor):
        seen = []
        result = graph_editing.in_float32(
            tensor, lambda value: seen.append(value) or value * 2.0)
        self.assertEqual(result.dtype, tensor.dtype)
        return seen[0]

      self.assertIs(argument(copy), copy.op.inputs[0])
      activation = tf.nn.relu(copy)
      cast = argument(activation)
      self.assertEqual((cast.op.type, cast.dtype), ('Cast', tf.float32))
      self.assertIs(cast.op.inputs[0], activation)
      value = variable.value()
      self.assertIs(argument(value), value)

if __name__ == '__main__':
  tf.test.main()
