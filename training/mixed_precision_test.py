"""What mixed bfloat16 training promises, against float32 and NumPy."""

import os

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

from kernels import batch_norm_relu6
from testing import test_data
from training import config as config_lib
from training import mixed_precision
from training import precision
from training import train_graph

test_data.use_float32_math()

tf1 = tf.compat.v1

# Unit roundoffs (round to nearest): float32 keeps 24 significant bits,
# bfloat16 8.
_FLOAT32_U = 2.0**-24
_BFLOAT16_U = 2.0**-8
# The ops whose arithmetic mixed precision moves to bfloat16 (pointwise
# convolutions' gradients are MatMuls: training.pointwise_gradients).
_CONVOLUTION_TYPES = ('Conv2D', 'Conv2DBackpropInput', 'Conv2DBackpropFilter',
                      'DepthwiseConv2dNative',
                      'DepthwiseConv2dNativeBackpropInput',
                      'DepthwiseConv2dNativeBackpropFilter', 'MatMul')


def _gamma(n, u=_FLOAT32_U):
  """Higham's gamma_n: |error| of an n-term sum / sum of |terms|.

  Args:
    n: the additions, each rounded with unit roundoff u.
    u: float32's by default.
  """
  return n * u / (1 - n * u)


def _bfloat16_values(array):
  """`array` rounded to the nearest bfloat16, as float64."""
  return tf.cast(tf.cast(array, tf.bfloat16), tf.float64).numpy()


def _plan(precision_name):
  """The trainer's plan for a small model from scratch in a precision."""
  return config_lib.resolve(
      config_lib.TrainConfig(
          dataset_dir='/data', checkpoint_dir='/run', num_classes=5,
          image_size=32, depth_multiplier=0.25, batch_size=4,
          num_train_examples=100, random_seed=0, precision=precision_name),
      count_train_examples=None, batch_norms_restored=True, cpu_features=())


def _training_graph(precision_name):
  """The training step of `_plan`, built on a fixed batch in a new graph."""
  rng = np.random.RandomState(0)
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(0)
    images = tf.constant(rng.uniform(-1, 1, [4, 32, 32, 3]), tf.float32)
    labels = tf.constant(rng.randint(0, 5, [4]), tf.int64)
    global_step = tf1.train.get_or_create_global_step()
    step = train_graph.build_train_op(images, labels, global_step,
                                      _plan(precision_name))
  return graph, step


class ConvolutionTest(tf.test.TestCase):
  """One layer as mixed precision builds it, against float64 NumPy."""

  def test_convolution_rounds_its_inputs_and_outputs_to_bfloat16(self):
    rng = np.random.RandomState(0)
    x = rng.normal(size=[2, 4, 4, 32]).astype(np.float32)
    w = rng.normal(size=[1, 1, 32, 48]).astype(np.float32)
    dy = rng.normal(size=[2, 4, 4, 48]).astype(np.float32)
    with tf.Graph().as_default():
      images = tf1.placeholder(tf.float32, x.shape)
      with mixed_precision.float32_variables(precision.MIXED_BFLOAT16):
        y = slim.conv2d(
            mixed_precision.cast_images(images, precision.MIXED_BFLOAT16),
            48, [1, 1], activation_fn=None, normalizer_fn=None,
            biases_initializer=None, scope='Conv',
            weights_initializer=tf1.constant_initializer(w))
      self.assertEqual(y.dtype, tf.bfloat16)
      weights, = tf1.global_variables()
      self.assertEqual(weights.dtype.base_dtype, tf.float32)
      y = tf.cast(y, tf.float32)
      dx, dw = tf.gradients(y, [images, weights], grad_ys=dy)
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        got = session.run([y, dx, dw], {images: x})

    # Each layer input is rounded to the nearest bfloat16 first: a(1 + d),
    # |d| <= u. The gradient reaching the layer (dy) is rounded too, by the
    # cast between the float32 loss and the bfloat16 layer.
    xb, wb = (_bfloat16_values(a).reshape(-1, a.shape[-1]) for a in (x, w[0, 0]))
    x64, w64, dy64 = (a.astype(np.float64).reshape(-1, a.shape[-1])
                      for a in (x, w[0, 0], dy))
    # y sums over the 32 input channels, dx over the 48 output channels, dw
    # over the 2*4*4 pixels (few: a bfloat16 sum's bound grows with them). The forward convolution sums in float32 on
    # every CPU. oneDNN's bfloat16 gradient kernels do too, but where oneDNN
    # has none (CPUs without bfloat16 arithmetic) TensorFlow's own round
    # partial sums to bfloat16, which only a bfloat16 sum's bound covers.
    for name, value, exact, magnitude, terms, sum_u in (
        ('y', got[0], x64 @ w64, np.abs(x64) @ np.abs(w64), 32, _FLOAT32_U),
        ('dx', got[1], dy64 @ w64.T, np.abs(dy64) @ np.abs(w64.T), 48,
         _BFLOAT16_U),
        ('dw', got[2], x64.T @ dy64, np.abs(x64.T) @ np.abs(dy64),
         2 * 4 * 4, _BFLOAT16_U)):
      value = value.reshape(exact.shape)
      # Rounding both factors of each product moves it by a factor
      # (1 + d1)(1 + d2): at most 2u + u^2 of its magnitude. The product of
      # two bfloat16 values is exact in float32, and their sum in any order
      # adds gamma_{K-1} (of the sum's own unit roundoff) times the rounded
      # terms' magnitude (Higham, Accuracy and Stability, 3.1), at most
      # (1 + u)^2 times the exact terms'. The sum is then rounded to
      # bfloat16: u of its size.
      summed = ((2 * _BFLOAT16_U + _BFLOAT16_U**2) +
                _gamma(terms - 1, sum_u) * (1 + _BFLOAT16_U)**2) * magnitude
      bound = summed + _BFLOAT16_U * (np.abs(exact) + summed)
      self.assertTrue(np.all(np.abs(value - exact) <= bound), name)
      # Really bfloat16: float32 arithmetic on the inputs as given would be
      # within gamma_{K-1} of the magnitude everywhere.
      self.assertTrue(
          np.any(np.abs(value - exact) > _gamma(terms - 1) * magnitude), name)
    # The rounded inputs explain the forward result to float32 accuracy, bar
    # the output's rounding: the layer multiplied the bfloat16 values.
    y_exact = xb @ wb
    y_bound = (_gamma(31) * (np.abs(xb) @ np.abs(wb)) * (1 + _BFLOAT16_U) +
               _BFLOAT16_U * np.abs(y_exact))
    self.assertTrue(np.all(np.abs(got[0].reshape(y_exact.shape) - y_exact) <=
                           y_bound))


class TrainingStepTest(tf.test.TestCase):
  """The trainer's whole step in mixed bfloat16 against float32."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.mixed_graph, cls.mixed_step = _training_graph(
        precision.MIXED_BFLOAT16)
    cls.float_graph, _ = _training_graph(precision.FLOAT32)

  def test_convolutions_and_batch_norms_take_bfloat16(self):
    ops = [op for op in self.mixed_graph.get_operations()
           if op.name.startswith('MobilenetV1/') or
           op.name.startswith('gradients/MobilenetV1/')]
    convolutions = [op for op in ops if op.type in _CONVOLUTION_TYPES]
    # 15 convolutions (the first, 13 pointwise, the logits) and 13
    # depthwise ones, forward, and their two gradients (the graph holds the
    # first layer's input gradient too; nothing runs it), the pointwise
    # ones' as MatMuls.
    self.assertEqual(len(convolutions), 28 * 3)
    for op in convolutions:
      self.assertEqual(op.outputs[0].dtype, tf.bfloat16, op.name)
    # Where the fused kernels run, the batch norm + ReLU6 pairs are fused in
    # bfloat16 too (the replaced ops stay in the graph, unread).
    fused = [op for op in ops if op.type == 'FusedBatchNormRelu6']
    self.assertEqual(bool(fused), batch_norm_relu6.unavailable_reason() is None)
    batch_norms = fused or [op for op in ops if op.type == 'FusedBatchNormV3']
    self.assertLen(batch_norms, 27)
    for op in batch_norms:
      self.assertEqual(op.inputs[0].dtype, tf.bfloat16, op.name)
      self.assertEqual(op.outputs[0].dtype, tf.bfloat16, op.name)
      # Scale, offset and the batch statistics stay float32.
      self.assertEqual(op.inputs[1].dtype, tf.float32, op.name)
      self.assertEqual(op.outputs[1].dtype, tf.float32, op.name)
    self.assertEqual(self.mixed_step.total_loss.dtype, tf.float32)

  def test_float32_graphs_have_no_bfloat16(self):
    self.assertEqual(
        [op.name for op in self.float_graph.get_operations()
         if any(t.dtype == tf.bfloat16 for t in op.outputs)], [])

  def test_variables_are_those_of_float32(self):
    def variables(graph):
      return {v.op.name: (v.dtype.base_dtype, v.shape.as_list())
              for v in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)}

    mixed = variables(self.mixed_graph)
    self.assertEqual(mixed, variables(self.float_graph))
    self.assertEqual({name for name, (dtype, _) in mixed.items()
                      if dtype != tf.float32}, {'global_step'})

  def test_weight_decay_sums_the_float32_weights(self):
    with self.mixed_graph.as_default():
      regularization = tf1.losses.get_regularization_losses()
      # The first layer, 13 pointwise layers and the logits.
      self.assertLen(regularization, 15)
      for loss in regularization:
        self.assertEqual(loss.dtype, tf.float32)
      weights = [v for v in tf1.trainable_variables()
                 if v.op.name.endswith('/weights') and
                 'depthwise' not in v.op.name]
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        got, values = session.run([tf.add_n(regularization), weights])
    # slim's l2_regularizer: scale * sum(w^2) / 2, scale = weight decay.
    want = 0.00004 * sum(np.sum(np.square(v.astype(np.float64))) / 2
                         for v in values)
    terms = sum(v.size for v in values)
    # Each float32 square is off by u, the sums by gamma_n of the total.
    self.assertLessEqual(abs(got - want), (_gamma(terms) + 2 * _FLOAT32_U) *
                         want)

  def test_step_trains_and_saves_float32_checkpoints(self):
    path = os.path.join(self.get_temp_dir(), 'model.ckpt')
    with self.mixed_graph.as_default():
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        losses = [session.run(self.mixed_step.train_op) for _ in range(20)]
        tf1.train.Saver().save(session, path)
    self.assertTrue(np.all(np.isfinite(losses)))
    # A fixed batch of four images: twenty steps fit it.
    self.assertLess(losses[-1], losses[0])
    dtypes = tf1.train.NewCheckpointReader(path).get_variable_to_dtype_map()
    self.assertEqual({name for name, dtype in dtypes.items()
                      if dtype != tf.float32}, {'global_step'})


if __name__ == '__main__':
  tf.test.main()
