"""Pointwise convolutions' MatMul gradients, against float64 NumPy."""

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from testing import rounding_bounds
from testing import test_data
from training import config as config_lib
from training import pointwise_gradients
from training import train_graph

test_data.use_float32_math()

tf1 = tf.compat.v1


class GradientTest(tf.test.TestCase):

  def test_gradients_are_the_matrix_products(self):
    rng = np.random.RandomState(0)
    x = rng.normal(size=[3, 5, 4, 24]).astype(np.float32)
    w = rng.normal(size=[1, 1, 24, 40]).astype(np.float32)
    dy = rng.normal(size=[3, 5, 4, 40]).astype(np.float32)
    with tf.Graph().as_default() as graph:
      images = tf1.placeholder(tf.float32, [None, 5, 4, 24])
      weights = tf.constant(w)
      y = tf.nn.conv2d(images, weights, 1, 'SAME')
      self.assertEqual(pointwise_gradients.use_matmul_gradients(graph), 1)
      dx, dw = tf.gradients(y, [images, weights], grad_ys=dy)
      gradient_types = {op.type for op in graph.get_operations()
                        if op.name.startswith('gradients/')}
      with self.session(graph=graph) as session:
        dx, dw = session.run([dx, dw], {images: x})
    self.assertIn('MatMul', gradient_types)
    self.assertNoCommonElements(
        gradient_types, {'Conv2DBackpropInput', 'Conv2DBackpropFilter'})
    # Both are dot products of float32 values: the input gradient over the
    # 40 output channels, the weight gradient over the 3*5*4 pixels.
    x64, w64, dy64 = (a.astype(np.float64).reshape(-1, a.shape[-1])
                      for a in (x, w[0, 0], dy))
    for got, exact, magnitude, terms in (
        (dx.reshape(-1, 24), dy64 @ w64.T, np.abs(dy64) @ np.abs(w64.T), 40),
        (dw[0, 0], x64.T @ dy64, np.abs(x64.T) @ np.abs(dy64), 60)):
      self.assertAllLessEqual(
          np.abs(got - exact) - rounding_bounds.gamma(terms) * magnitude, 0.0)
    self.assertEqual(dx.shape, x.shape)
    self.assertEqual(dw.shape, w.shape)

  def test_only_pointwise_convolutions_qualify(self):
    with tf.Graph().as_default():
      images = tf.zeros([2, 8, 8, 4])
      kernel_1x1, kernel_3x3 = tf.zeros([1, 1, 4, 6]), tf.zeros([3, 3, 4, 6])
      pointwise = tf.nn.conv2d(images, kernel_1x1, 1, 'VALID')
      not_pointwise = [
          tf.nn.conv2d(images, kernel_3x3, 1, 'SAME'),
          tf.nn.conv2d(images, kernel_1x1, 2, 'SAME'),
          tf.nn.conv2d(images, kernel_1x1, 1, 'SAME', dilations=2),
          tf.nn.depthwise_conv2d(images, tf.zeros([1, 1, 4, 1]),
                                 [1, 1, 1, 1], 'SAME')]
    self.assertTrue(pointwise_gradients.is_pointwise(pointwise.op))
    for tensor in not_pointwise:
      self.assertFalse(pointwise_gradients.is_pointwise(tensor.op),
                       tensor.op.name)

  def test_training_step_differentiates_every_pointwise_layer_by_matmul(self):
    plan = config_lib.resolve(
        config_lib.TrainConfig(
            dataset_dir='/data', checkpoint_dir='/run', num_classes=5,
            image_size=32, depth_multiplier=0.25, batch_size=2,
            num_train_examples=100, precision='float32'),
        count_train_examples=None, batch_norms_restored=True,
        cpu_features=())
    with tf.Graph().as_default() as graph:
      train_graph.build_train_op(
          tf.zeros([2, 32, 32, 3]), tf.zeros([2], tf.int64),
          tf1.train.get_or_create_global_step(), plan)
    marked = [op.name for op in graph.get_operations()
              if op.type == 'Conv2D' and
              '_gradient_op_type' in op.node_def.attr]
    # The 13 pointwise layers and the logits; not the first layer's 3x3.
    self.assertLen(marked, 14)
    self.assertNotIn('MobilenetV1/MobilenetV1/Conv2d_0/Conv2D', marked)
    backprops = {op.name.split('/')[3] for op in graph.get_operations()
                 if op.type in ('Conv2DBackpropInput', 'Conv2DBackpropFilter')}
    self.assertEqual(backprops, {'Conv2d_0'})


if __name__ == '__main__':
  tf.test.main()
