"""Tests the fused batch norm + ReLU6 kernels against NumPy and TensorFlow."""

import os
from unittest import mock

# The whole-graph comparison is against TensorFlow's reference (Eigen)
# kernels: oneDNN's batch-norm gradient sums less exactly (measured on this
# test's model: early-layer gradients 2-4% away from both Eigen's and the
# fused kernel's, which agree to 1e-5 and match float64 NumPy).
os.environ['TF_ENABLE_ONEDNN_OPTS'] = '0'

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

from kernels import batch_norm_relu6
import mobilenet_v1
from quantization import quantize
# pylint: enable=g-import-not-at-top,wrong-import-position

tf1 = tf.compat.v1
EPSILON = 0.001


def reference(x, scale, offset, dy):
  """Float64 batch norm (training) + ReLU6, forward and backward."""
  channels = x.shape[-1]
  x = x.astype(np.float64).reshape(-1, channels)
  dy = dy.astype(np.float64).reshape(-1, channels)
  mean, variance = x.mean(0), x.var(0)
  x_hat = (x - mean) / np.sqrt(variance + EPSILON)
  z = scale * x_hat + offset
  g = np.where((z > 0) & (z < 6), dy, 0)
  dx = (scale / np.sqrt(variance + EPSILON) *
        (g - g.mean(0) - x_hat * (g * x_hat).mean(0)))
  unbiased = variance * len(x) / (len(x) - 1)
  return (np.clip(z, 0, 6), mean, unbiased, dx, (g * x_hat).sum(0),
          g.sum(0))


def random_inputs(shape, seed=0, mean=0.5, stddev=2.0):
  """x, scale, offset, dy with no normalized value within 1e-3 of 0 or 6.

  The ReLU6 mask of a value that close could round either way in float32.
  """
  rng = np.random.RandomState(seed)
  channels = shape[-1]
  x = rng.normal(mean, stddev, shape).astype(np.float32)
  scale = rng.uniform(0.5, 3.0, channels).astype(np.float32)
  offset = rng.uniform(-1.0, 4.0, channels).astype(np.float32)
  flat = x.reshape(-1, channels).astype(np.float64)
  while True:
    z = scale * (flat - flat.mean(0)) / np.sqrt(flat.var(0) + EPSILON) + offset
    near_edge = (np.abs(z) < 1e-3) | (np.abs(z - 6) < 1e-3)
    if not near_edge.any():
      break
    flat[near_edge] += 0.01
  x = flat.astype(np.float32).reshape(shape)
  dy = rng.normal(size=shape).astype(np.float32)
  return x, scale, offset, dy


class KernelTest(tf.test.TestCase):

  def test_matches_float64_reference(self):
    ops = batch_norm_relu6.load_ops()
    # Odd sizes: channel counts that are not a multiple of the vector width,
    # rows that do not split evenly among threads and sum chunks.
    for shape in [(4, 9, 7, 13), (8, 32, 32, 64), (2, 3, 3, 1024)]:
      x, scale, offset, dy = random_inputs(shape)
      y, mean, variance, inverse_std = ops.fused_batch_norm_relu6(
          x, scale, offset, epsilon=EPSILON)
      dx, dscale, doffset = ops.fused_batch_norm_relu6_grad(
          dy, x, scale, offset, mean, inverse_std)
      expected = reference(x, scale, offset, dy)
      got = (y, mean, variance, dx, dscale, doffset)
      names = ('y', 'mean', 'variance', 'dx', 'dscale', 'doffset')
      for name, value, want in zip(names, got, expected):
        value = np.asarray(value).reshape(want.shape)
        scale_of = max(np.abs(want).max(), 1.0)
        self.assertLess(np.abs(value - want).max() / scale_of, 2e-5,
                        '%s of %s' % (name, shape))
      self.assertTrue(np.any(np.asarray(y) == 0) and np.any(np.asarray(y) == 6),
                      'the data should reach both clipping edges')

  def test_mean_far_from_zero(self):
    # A one-pass variance, E[x^2] - E[x]^2 in float, would lose every digit
    # here (mean^2 / variance = 1e8).
    x, scale, offset, _ = random_inputs((8, 16, 16, 32), mean=1000.0,
                                        stddev=0.1)
    y, mean, variance, _ = batch_norm_relu6.load_ops().fused_batch_norm_relu6(
        x, scale, offset, epsilon=EPSILON)
    want_y, want_mean, want_variance = reference(x, scale, offset, x)[:3]
    self.assertAllClose(mean, want_mean, rtol=1e-7)
    self.assertAllClose(variance, want_variance, rtol=1e-4)
    self.assertLess(np.abs(np.asarray(y).reshape(want_y.shape) - want_y).max(),
                    1e-3)

  def test_fake_quant_matches_tensorflows_op_bit_for_bit(self):
    # BatchNormRelu6FakeQuant against FakeQuantWithMinMaxVars on the fused
    # op's y, and its gradient against FusedBatchNormRelu6Grad of the fake
    # quant's gradient: the same float operations, so the same bits.
    ops = batch_norm_relu6.load_ops()
    rng = np.random.RandomState(1)
    # Ranges: ReLU6's usual [0, max] below and at 6, a negative minimum
    # (nudged onto the grid), one beyond 6, and TensorFlow's all-zero case.
    ranges = [(0.0, 4.0), (0.0, 6.0), (-0.3, 2.5), (0.1, 7.0), (0.0, 0.0)]
    for shape, scale_range, narrow_range in [((4, 9, 7, 13), (-1, 3), False),
                                             ((8, 32, 32, 64), (0.5, 3), True),
                                             ((2, 3, 3, 1024), (0.1, 0.4),
                                              False)]:
      x, _, offset, dy = random_inputs(shape)
      scale = rng.uniform(*scale_range, shape[-1]).astype(np.float32)
      y, mean, variance, inverse_std = ops.fused_batch_norm_relu6(
          x, scale, offset, epsilon=EPSILON)
      moments = ops.batch_norm_relu6_moments(x, scale, offset,
                                             epsilon=EPSILON)
      for want, got in zip((mean, variance, inverse_std, np.max(y)), moments):
        self.assertAllEqual(want, got)
      for low, high in ranges:
        quantized = ops.batch_norm_relu6_fake_quant(
            x, scale, offset, mean, inverse_std, low, high,
            narrow_range=narrow_range)
        self.assertAllEqual(
            quantized, tf.quantization.fake_quant_with_min_max_vars(
                y, low, high, narrow_range=narrow_range))
        y_backprop = tf.raw_ops.FakeQuantWithMinMaxVarsGradient(
            gradients=dy, inputs=y, min=low, max=high,
            narrow_range=narrow_range)[0]
        want = ops.fused_batch_norm_relu6_grad(y_backprop, x, scale, offset,
                                               mean, inverse_std)
        got = ops.batch_norm_relu6_fake_quant_grad(
            dy, x, scale, offset, mean, inverse_std, low, high,
            narrow_range=narrow_range)
        for want_part, got_part in zip(want, got):
          self.assertAllEqual(want_part, got_part)
    # The last shape's small scales keep y below 6: its maximum is not a
    # clipping edge.
    self.assertLess(np.max(y), 6.0)

  def test_bad_shapes_are_errors(self):
    ops = batch_norm_relu6.load_ops()
    x = np.ones([2, 2, 2, 4], np.float32)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r'\[4\]'):
      ops.fused_batch_norm_relu6(x, np.ones(3, np.float32),
                                 np.zeros(4, np.float32))
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, 'same shape'):
      ops.fused_batch_norm_relu6_grad(x[:1], x, *[np.ones(4, np.float32)] * 4)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r'\[4\]'):
      ops.batch_norm_relu6_moments(x, np.ones(4, np.float32),
                                   np.zeros(5, np.float32))
    vectors = [np.ones(4, np.float32)] * 4
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, 'channels'):
      ops.batch_norm_relu6_fake_quant(x, *vectors[:3], np.ones(3, np.float32),
                                      0.0, 6.0)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, 'scalars'):
      ops.batch_norm_relu6_fake_quant(x, *vectors, [0.0], 6.0)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, 'same shape'):
      ops.batch_norm_relu6_fake_quant_grad(x[:1], x, *vectors, 0.0, 6.0)
    # A scalar x is refused when the graph is built, not read past its end.
    for op in (ops.fused_batch_norm_relu6, ops.batch_norm_relu6_moments):
      with tf.Graph().as_default():
        with self.assertRaisesRegex(ValueError, 'rank'):
          op(tf1.placeholder(tf.float32, []), vectors[0], vectors[1])


def build_training_graph(fuse, quantize_weights=None, quant_delay=0,
                         fold_fake_quant=False):
  """A small MobileNet V1 training graph; returns (graph, tensors, fused).

  With quantize_weights (one of quantize.WEIGHT_SCHEMES), quantization-aware
  from `quant_delay`; tensors['folded'] counts the fake quants
  fold_fake_quant folded into the fused kernels.
  """
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(0)
    rng = np.random.RandomState(0)
    images = tf.constant(rng.uniform(-1, 1, [4, 64, 64, 3]), tf.float32)
    labels = tf.constant(rng.randint(0, 5, [4]))
    with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(
        is_training=True, batch_norm_decay=0.5)):
      logits, _ = mobilenet_v1.mobilenet_v1(images, num_classes=5,
                                            depth_multiplier=0.25)
    fused = batch_norm_relu6.fuse_batch_norm_relu6(graph) if fuse else 0
    if quantize_weights:
      quantize.create_training_graph(quant_delay=quant_delay,
                                     weights=quantize_weights)
    folded = (batch_norm_relu6.fuse_fake_quant(graph) if fold_fake_quant
              else 0)
    loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
    variables = tf1.trainable_variables()
    tensors = {
        'loss': loss,
        'gradients': tf.gradients(loss, variables),
        'updates': tf1.get_collection(tf1.GraphKeys.UPDATE_OPS),
        'moving': [v for v in tf1.global_variables() if 'moving_' in v.name],
        'variables': tf1.global_variables(),
        'trainable_names': [v.name for v in variables],
        'folded': folded,
    }
  return graph, tensors, fused


class FuseGraphTest(tf.test.TestCase):

  def test_layer_matches_tensorflow_ops(self):
    # One slim batch norm + ReLU6 on data kept off the clipping edges, so
    # both graphs must agree closely everywhere.
    x, scale, offset, dy = random_inputs((8, 16, 16, 32))
    results = {}
    for fuse in (False, True):
      graph = tf.Graph()
      with graph.as_default():
        inputs = tf.constant(x)
        initializers = {'gamma': tf1.constant_initializer(scale),
                        'beta': tf1.constant_initializer(offset)}
        y = tf.nn.relu6(slim.batch_norm(
            inputs, decay=0.5, scale=True, is_training=True, fused=True,
            param_initializers=initializers))
        fused = batch_norm_relu6.fuse_batch_norm_relu6(graph) if fuse else 0
        gamma, beta = tf1.trainable_variables()
        gradients = tf.gradients(y, [inputs, gamma, beta], grad_ys=dy)
        updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        moving = [v for v in tf1.global_variables() if 'moving_' in v.name]
        with tf1.Session() as session:
          session.run(tf1.global_variables_initializer())
          values = session.run([y, gradients])
          session.run(updates)
          results[fuse] = values + [session.run(moving), fused]
    self.assertEqual(results[True][3], 1)
    clipped = results[False][0]
    self.assertTrue(np.any(clipped == 0) and np.any(clipped == 6))
    for want, got in zip(tf.nest.flatten(results[False][:3]),
                         tf.nest.flatten(results[True][:3])):
      self.assertLess(np.abs(got - want).max(), 1e-5 * np.abs(want).max())

  def test_whole_model_training_step(self):
    results = {}
    initial = None
    for fuse in (False, True):
      graph, tensors, fused = build_training_graph(fuse)
      with tf1.Session(graph=graph) as session:
        session.run(tf1.global_variables_initializer())
        if initial is None:
          initial = session.run(tensors['variables'])
        else:
          for variable, value in zip(tensors['variables'], initial):
            variable.load(value, session)
        loss, gradients = session.run([tensors['loss'],
                                       tensors['gradients']])
        session.run(tensors['updates'])
        moving = session.run(tensors['moving'])
      results[fuse] = (loss, gradients, moving, fused,
                       [v.name for v in tensors['variables']],
                       tensors['trainable_names'])
      if fuse:
        op_types = {op.type for op in graph.get_operations()}
        self.assertIn('FusedBatchNormRelu6Grad', op_types)

    plain, fused = results[False], results[True]
    # Conv2d_0 and 13 depthwise + pointwise pairs.
    self.assertEqual(fused[3], 27)
    self.assertEqual(plain[4], fused[4])  # Same variables, same names.
    self.assertAllClose(plain[0], fused[0], rtol=1e-5)
    # In a whole model a few of ~1.6M activations land within float rounding
    # of ReLU6's edges and clip one way here, the other in TensorFlow's ops
    # (measured: 0 or 1 per run); one moves every earlier layer's gradients
    # by up to ~3% of their largest, so this compares directions: a wiring
    # mistake (a wrong input, a gradient lost) turns them apart entirely.
    for name, want, got in zip(plain[5], plain[1], fused[1]):
      cosine = np.sum(want * got) / np.sqrt(np.sum(want**2) * np.sum(got**2))
      self.assertGreater(cosine, 0.999, name)
    # Moving statistics come before the clipping: the same to float32
    # rounding of the sums, which Eigen and the fused kernel order
    # differently; some layers' means are ~1e-5, so the bound has a floor.
    for want, got in zip(plain[2], fused[2]):
      self.assertLess(np.abs(got - want).max(),
                      2e-5 * max(np.abs(want).max(), 1e-3))

  def test_fake_quant_folds_bit_for_bit(self):
    # Quantization-aware training with the activations' fake quants folded
    # into the fused kernels computes what it did with them apart: the same
    # loss, gradients and updated ranges and statistics, bit for bit.
    def train_two_steps(weights, fold, quant_delay=0):
      graph, tensors, _ = build_training_graph(
          fuse=True, quantize_weights=weights, quant_delay=quant_delay,
          fold_fake_quant=fold)
      with tf1.Session(graph=graph) as session:
        session.run(tf1.global_variables_initializer())
        first = session.run([tensors['loss'], tensors['gradients']])
        session.run(tensors['updates'])
        second = session.run([tensors['loss'], tensors['gradients']])
        values = session.run(tensors['variables'])
      op_types = [op.type for op in graph.get_operations()]
      return (tf.nest.flatten([first, second, values]), tensors['folded'],
              op_types.count('BatchNormRelu6FakeQuantGrad'))

    for weights in (quantize.PER_CHANNEL, quantize.ASYMMETRIC):
      apart, _, _ = train_two_steps(weights, fold=False)
      folded, count, gradients = train_two_steps(weights, fold=True)
      self.assertEqual((count, gradients), (27, 27), weights)
      for want, got in zip(apart, folded):
        self.assertAllEqual(want, got, weights)
    # With a quantization delay y also feeds the delay's switch: not folded.
    self.assertEqual(
        train_two_steps(quantize.PER_CHANNEL, fold=True, quant_delay=1)[1:],
        (0, 0))

  def test_inference_graph_is_left_alone(self):
    graph = tf.Graph()
    with graph.as_default():
      images = tf1.placeholder(tf.float32, [1, 64, 64, 3])
      with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(
          is_training=False)):
        mobilenet_v1.mobilenet_v1(images, num_classes=5,
                                  depth_multiplier=0.25, is_training=False)
    self.assertEqual(batch_norm_relu6.fuse_batch_norm_relu6(graph), 0)

  def test_cpu_without_avx2_is_refused_before_loading(self):
    saved = batch_norm_relu6._ops
    try:
      batch_norm_relu6._ops = None
      with mock.patch.dict(os.environ, {
          batch_norm_relu6.CPU_FEATURES_ENV: 'fpu sse2 avx fma'}):
        self.assertEqual(batch_norm_relu6.unavailable_reason(),
                         'this CPU lacks AVX2')
        with self.assertRaisesRegex(batch_norm_relu6.UnsupportedCpuError,
                                    'lacks AVX2'):
          batch_norm_relu6.load_ops()
        self.assertIsNone(batch_norm_relu6._ops)
      # This machine's own flags, as /proc/cpuinfo lists them.
      with open('/proc/cpuinfo') as cpuinfo:
        flags = next(line for line in cpuinfo if line.startswith('flags'))
      want = set(flags.split(':', 1)[1].split())
      self.assertEqual(batch_norm_relu6.cpu_features(), want)
      self.assertEqual(batch_norm_relu6.unavailable_reason() is None,
                       {'avx', 'avx2', 'fma'} <= want)
    finally:
      batch_norm_relu6._ops = saved

  def test_missing_library_names_the_build_command(self):
    saved = batch_norm_relu6._ops, batch_norm_relu6._SEARCH_PATH
    try:
      batch_norm_relu6._ops = None
      batch_norm_relu6._SEARCH_PATH = ('/nonexistent/lib.so',)
      with self.assertRaisesRegex(batch_norm_relu6.LibraryNotFoundError,
                                  'bazel build //kernels:batch_norm_relu6_ops.so'):
        batch_norm_relu6.load_ops()
    finally:
      batch_norm_relu6._ops, batch_norm_relu6._SEARCH_PATH = saved


if __name__ == '__main__':
  tf.test.main()
