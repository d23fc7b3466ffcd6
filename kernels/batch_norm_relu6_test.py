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
# Unit roundoff of bfloat16's 8-bit significand (7 bits stored): rounding to
# nearest moves a value by at most half a step, 2^-8 of the binade's lowest
# value, so by at most this much of its own magnitude.
BFLOAT16_ROUNDOFF = 2.0**-8
# bfloat16 rounds z in [6 - 2^-6, 6) (6 - 2^-6 is halfway between 6 and the
# next value below, and ties go to 6, the even one) to y = 6, where ReLU6's
# gradient stops.
BFLOAT16_MASK_TOP = 6 - 2.0**-6


def reference(x, scale, offset, dy, mask_top=6.0):
  """Float64 batch norm (training) + ReLU6, forward and backward.

  The gradient passes where 0 < z < mask_top: 6, or BFLOAT16_MASK_TOP where
  y is stored in bfloat16.
  """
  channels = x.shape[-1]
  x = x.astype(np.float64).reshape(-1, channels)
  dy = dy.astype(np.float64).reshape(-1, channels)
  mean, variance = x.mean(0), x.var(0)
  x_hat = (x - mean) / np.sqrt(variance + EPSILON)
  z = scale * x_hat + offset
  g = np.where((z > 0) & (z < mask_top), dy, 0)
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


def to_bfloat16(array):
  """A float32 array's nearest bfloat16 values, as TensorFlow's Cast rounds."""
  return tf.cast(array, tf.bfloat16)


def bits(tensor):
  """A float32 or bfloat16 tensor's bit patterns, to compare exactly."""
  unsigned = tf.uint32 if tensor.dtype == tf.float32 else tf.uint16
  return tf.bitcast(tensor, unsigned).numpy()


def bfloat16_inputs(shape, seed=0):
  """random_inputs with x and dy bfloat16, z off the edges bfloat16 has.

  Returns:
    x and dy as bfloat16 tensors, their exact values as float32 arrays, and
    scale and offset. No normalized value is within 1e-3 of 0, 6 or
    BFLOAT16_MASK_TOP, where float32 rounding could flip the mask.
  """
  x, scale, offset, dy = random_inputs(shape, seed)
  channels = shape[-1]
  flat = to_bfloat16(x).numpy().astype(np.float64).reshape(-1, channels)
  while True:
    z = scale * (flat - flat.mean(0)) / np.sqrt(flat.var(0) + EPSILON) + offset
    near_edge = ((np.abs(z) < 1e-3) | (np.abs(z - 6) < 1e-3) |
                 (np.abs(z - BFLOAT16_MASK_TOP) < 1e-3))
    if not near_edge.any():
      break
    # The next bfloat16 value away from zero: one more in the upper half.
    moved = flat[near_edge].astype(np.float32).view(np.uint32) + 0x10000
    flat[near_edge] = moved.view(np.float32)
  x = to_bfloat16(flat.astype(np.float32).reshape(shape))
  dy = to_bfloat16(dy)
  return (x, tf.cast(x, tf.float32).numpy(), dy,
          tf.cast(dy, tf.float32).numpy(), scale, offset)


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

  def test_bfloat16_matches_float64_reference(self):
    ops = batch_norm_relu6.load_ops()
    for shape in [(4, 9, 7, 13), (8, 32, 32, 64), (2, 3, 3, 1024)]:
      x, x_values, dy, dy_values, scale, offset = bfloat16_inputs(shape)
      y, mean, variance, inverse_std = ops.fused_batch_norm_relu6(
          x, scale, offset, epsilon=EPSILON)
      dx, dscale, doffset = ops.fused_batch_norm_relu6_grad(
          dy, x, scale, offset, mean, inverse_std)
      self.assertEqual((y.dtype, dx.dtype, mean.dtype, dscale.dtype),
                       (tf.bfloat16, tf.bfloat16, tf.float32, tf.float32))
      expected = reference(x_values, scale, offset, dy_values,
                           mask_top=BFLOAT16_MASK_TOP)
      got = (y, mean, variance, dx, dscale, doffset)
      names = ('y', 'mean', 'variance', 'dx', 'dscale', 'doffset')
      for name, value, want in zip(names, got, expected):
        value = tf.cast(value, tf.float64).numpy().reshape(want.shape)
        scale_of = max(np.abs(want).max(), 1.0)
        # The kernel computes in float as for float32 x (within 2e-5 of
        # scale_of, the float test's bound) and rounds y and dx to bfloat16,
        # which moves each by at most BFLOAT16_ROUNDOFF of itself:
        # |got - want| <= u |v| + 2e-5 s <= u |want| + (1 + u) 2e-5 s, where
        # v is the float result.
        # The statistics and parameter gradients are float32, not rounded.
        rounding = BFLOAT16_ROUNDOFF if name in ('y', 'dx') else 0.0
        bound = rounding * np.abs(want) + (1 + rounding) * 2e-5 * scale_of
        self.assertTrue(np.all(np.abs(value - want) <= bound),
                        '%s of %s: %g over' % (
                            name, shape, np.max(np.abs(value - want) - bound)))
      y_values = tf.cast(y, tf.float32).numpy()
      self.assertTrue(np.any(y_values == 0) and np.any(y_values == 6),
                      'the data should reach both clipping edges')

  def test_bfloat16_is_the_float_kernel_rounded(self):
    # One loop body serves both types, so on the same values the bfloat16
    # kernels do the float kernels' arithmetic: the same statistics and
    # scale and offset gradients, bit for bit, and y and dx are the float
    # ones rounded as TensorFlow's Cast rounds them. The float gradient is
    # given y_backprop zeroed where the bfloat16 y is 6, the one place the
    # masks differ (BFLOAT16_MASK_TOP).
    ops = batch_norm_relu6.load_ops()
    ties = 0
    for shape in [(4, 9, 7, 13), (8, 32, 32, 64), (2, 3, 3, 1024)]:
      x, scale, offset, dy = random_inputs(shape)  # Edges don't matter here.
      x, dy = to_bfloat16(x), to_bfloat16(dy)
      x_values, dy_values = tf.cast(x, tf.float32), tf.cast(dy, tf.float32)
      forward = ops.fused_batch_norm_relu6(x, scale, offset, epsilon=EPSILON)
      float_forward = ops.fused_batch_norm_relu6(x_values, scale, offset,
                                                 epsilon=EPSILON)
      for want, got in zip(float_forward[1:], forward[1:]):
        self.assertAllEqual(bits(want), bits(got))
      self.assertAllEqual(bits(to_bfloat16(float_forward[0])),
                          bits(forward[0]))
      stored_below_6 = tf.cast(forward[0], tf.float32) < 6
      gradient = ops.fused_batch_norm_relu6_grad(dy, x, scale, offset,
                                                 forward[1], forward[3])
      float_gradient = ops.fused_batch_norm_relu6_grad(
          tf.where(stored_below_6, dy_values, 0.0), x_values, scale, offset,
          forward[1], forward[3])
      self.assertAllEqual(bits(to_bfloat16(float_gradient[0])),
                          bits(gradient[0]))
      for want, got in zip(float_gradient[1:], gradient[1:]):
        self.assertAllEqual(bits(want), bits(got))
      for value in (float_forward[0], float_gradient[0]):
        ties += np.sum(bits(value) & 0xffff == 0x8000)
    # Values exactly halfway between two bfloat16s, which go to the even one.
    self.assertGreater(ties, 0, 'the data should include rounding ties')

  def test_bfloat16_nan_stays_nan(self):
    # A NaN in y_backprop, where the gradient passes, makes its channel's
    # sums and so its whole x_backprop NaN; stored as bfloat16 it must stay
    # a (quiet) NaN, not become the infinity its truncated bits would be.
    ops = batch_norm_relu6.load_ops()
    for shape in [(4, 9, 7, 13), (8, 32, 32, 64)]:
      x, _, dy, dy_values, scale, offset = bfloat16_inputs(shape)
      y, mean, _, inverse_std = ops.fused_batch_norm_relu6(
          x, scale, offset, epsilon=EPSILON)
      passing = np.argwhere((tf.cast(y, tf.float32).numpy() > 0) &
                            (tf.cast(y, tf.float32).numpy() < 6))[0]
      dy_values[tuple(passing)] = np.nan
      dx = ops.fused_batch_norm_relu6_grad(to_bfloat16(dy_values), x, scale,
                                           offset, mean, inverse_std)[0]
      channel = bits(dx)[..., passing[-1]]
      self.assertTrue(np.all(channel & 0x7fff == 0x7fc0), shape)
      others = np.delete(tf.cast(dx, tf.float32).numpy(), passing[-1], -1)
      self.assertTrue(np.all(np.isfinite(others)), shape)

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


def float32_variables(getter, name, *args, dtype=None, **kwargs):
  """A custom getter for mixed precision: every variable is float32.

  Layers that ask for bfloat16 weights get a bfloat16 copy; batch norm's
  parameters and moving statistics stay float32, as FusedBatchNormV3 takes
  them with bfloat16 x.
  """
  variable = getter(name, *args, dtype=tf.float32, **kwargs)
  if dtype == tf.bfloat16 and not name.endswith(
      ('gamma', 'beta', 'moving_mean', 'moving_variance')):
    return tf.cast(variable, tf.bfloat16)
  return variable


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

  def test_bfloat16_layer_matches_tensorflow_ops(self):
    # Mixed precision: slim conv2d, batch norm and ReLU6 on bfloat16
    # activations with float32 variables. gamma = 2 and beta = 1 put some of
    # z past 6, and a fixed readout makes y's gradient the same bfloat16
    # values in both graphs.
    rng = np.random.RandomState(1)
    images = rng.uniform(-1, 1, [8, 32, 32, 3]).astype(np.float32)
    weights_value = rng.normal(0, 0.3, [3, 3, 3, 32]).astype(np.float32)
    readout = rng.normal(size=[8, 16, 16, 32]).astype(np.float32)
    results = {}
    for fuse in (False, True):
      graph = tf.Graph()
      with graph.as_default():
        inputs = tf.cast(images, tf.bfloat16)
        initializers = {'gamma': tf1.constant_initializer(2.0),
                        'beta': tf1.constant_initializer(1.0)}
        with tf1.variable_scope('', custom_getter=float32_variables):
          x = slim.conv2d(
              inputs, 32, [3, 3], stride=2, activation_fn=None,
              weights_initializer=tf1.constant_initializer(weights_value),
              biases_initializer=None)
          y = tf.cast(tf.nn.relu6(slim.batch_norm(
              x, decay=0.5, scale=True, is_training=True, fused=True,
              param_initializers=initializers)), tf.float32)
        fused = batch_norm_relu6.fuse_batch_norm_relu6(graph) if fuse else 0
        loss = tf.reduce_sum(y * readout)
        weights, gamma, beta = tf1.trainable_variables()
        gradients = tf.gradients(loss, [x, weights, gamma, beta])
        # TensorFlow's own bfloat16 filter gradient of this graph's dx.
        filter_gradient = tf.cast(tf.raw_ops.Conv2DBackpropFilter(
            input=inputs, filter_sizes=weights.shape, out_backprop=gradients[0],
            strides=[1, 2, 2, 1], padding='SAME'), tf.float32)
        updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        moving = [v for v in tf1.global_variables() if 'moving_' in v.name]
        with tf1.Session() as session:
          session.run(tf1.global_variables_initializer())
          values = session.run([x, y, gradients, filter_gradient])
          session.run(updates)
          results[fuse] = values + [session.run(moving), fused]
        if fuse:
          fused_types = {op.get_attr('T') for op in graph.get_operations()
                         if op.type.startswith('FusedBatchNormRelu6')}
          self.assertEqual(fused_types, {tf.bfloat16})
    plain, fused = results[False], results[True]
    self.assertEqual(fused[5], 1)
    self.assertAllEqual(bits(tf.constant(plain[0])),
                        bits(tf.constant(fused[0])))  # The same x.
    # Both graphs compute z in float32, to within 1e-5 of each other (the
    # float test's bound), so they agree on ReLU6's mask wherever z is
    # further than that from its edges: 0 and, as y is bfloat16,
    # BFLOAT16_MASK_TOP.
    flat = plain[0].astype(np.float64).reshape(-1, 32)
    z = 2 * (flat - flat.mean(0)) / np.sqrt(flat.var(0) + EPSILON) + 1
    self.assertFalse(np.any((np.abs(z) < 1e-5) |
                            (np.abs(z - BFLOAT16_MASK_TOP) < 1e-5)))
    self.assertTrue(np.any(plain[1] == 0) and np.any(plain[1] == 6))
    # y and dx (the gradient at x) are float32 values v within 1e-5 of
    # their largest of each other, each rounded to bfloat16 by at most
    # BFLOAT16_ROUNDOFF of itself: |got - want| <= u (|got| + |want|) +
    # 1e-5 max |want|.
    for name, want, got in (('y', plain[1], fused[1]),
                            ('dx', plain[2][0], fused[2][0])):
      want, got = want.astype(np.float64), got.astype(np.float64)
      bound = (BFLOAT16_ROUNDOFF * (np.abs(got) + np.abs(want)) +
               1e-5 * np.abs(want).max())
      self.assertTrue(np.all(np.abs(got - want) <= bound), name)
    # The parameters' gradients and the moving statistics are float32 sums
    # of the same values in both, as in the float tests.
    for want, got in zip(plain[2][2:], fused[2][2:]):
      self.assertLess(np.abs(got - want).max(), 1e-5 * np.abs(want).max())
    for want, got in zip(plain[4], fused[4]):
      self.assertLess(np.abs(got - want).max(),
                      2e-5 * max(np.abs(want).max(), 1e-3))
    # The weights' gradient is TensorFlow's bfloat16 filter gradient of dx,
    # in both graphs. That kernel rounds its partial sums to bfloat16
    # (measured: 3% of its largest value from the float64 result), so no
    # bound carries over from dx; what the fused op owns is that its dx
    # reaches the weights through it unchanged.
    for results_of in (plain, fused):
      self.assertAllEqual(bits(tf.constant(results_of[2][1])),
                          bits(tf.constant(results_of[3])))

  def test_bfloat16_model_is_fused(self):
    # Every pair of a mixed-precision MobileNet, in bfloat16.
    graph = tf.Graph()
    with graph.as_default():
      images = tf.zeros([2, 64, 64, 3], tf.bfloat16)
      with tf1.variable_scope('', custom_getter=float32_variables):
        with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(
            is_training=True)):
          mobilenet_v1.mobilenet_v1(images, num_classes=5,
                                    depth_multiplier=0.25)
    self.assertEqual(batch_norm_relu6.fuse_batch_norm_relu6(graph), 27)
    self.assertEqual({op.get_attr('T') for op in graph.get_operations()
                      if op.type == 'FusedBatchNormRelu6'},
                     {tf.bfloat16})

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
