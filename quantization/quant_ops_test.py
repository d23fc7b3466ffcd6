"""Tests how the fake quants' ranges are set: moving averages, last values,
extremes, per channel or per tensor (quant_ops, through the rewrites)."""

import numpy as np

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from quantization import quant_ops
from quantization import quantize
from testing import quantize_test_util as util
from testing import test_data

test_data.use_float32_math()

tf1 = tf.compat.v1

_LOGITS_BIAS_ADD = 'MobilenetV1/Logits/Conv2d_1c_1x1/BiasAdd'


class RangeUpdatesTest(tf.test.TestCase):
  """What a training step leaves in the range variables."""

  def test_activation_ranges_are_a_zero_debiased_moving_average(self):
    with tf.Graph().as_default():
      images, output = util.build_generic_layers(is_training=True)
      quantize.create_training_graph(quant_delay=0)
      activation = tf1.get_default_graph().get_tensor_by_name('fc/Relu:0')
      act_max, = [v for v in quantize.range_variables()
                  if v.op.name == 'fc/act_quant/max']
      rng = np.random.RandomState(3)
      batches = [rng.uniform(-1, 1, [4, 8, 8, 3]) * (1 + i) for i in range(3)]
      with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        maxima, ranges = [], []
        for batch in batches:
          # The range update runs with the forward pass; read it afterwards.
          maxima.append(sess.run([activation, output],
                                 {images: batch})[0].max())
          ranges.append(sess.run(act_max))
    # contrib.quantize's average: biased_k = d biased_{k-1} + (1 - d) x_k
    # from 0, divided by 1 - d^k, so the initial 6.0 plays no part and the
    # first value is the first batch's.
    biased = 0.0
    for k, (batch_max, value) in enumerate(zip(maxima, ranges), start=1):
      biased = (quant_ops.EMA_DECAY * biased +
                (1 - quant_ops.EMA_DECAY) * batch_max)
      self.assertAllClose(value, biased / (1 - quant_ops.EMA_DECAY**k),
                          rtol=1e-4)
    # float32's 1 - 0.999 is 1.3e-5 off, so the first is that close.
    self.assertAllClose(ranges[0], maxima[0], rtol=2e-5)

  def test_training_sets_weight_ranges_per_scheme(self):
    for scheme in quantize.WEIGHT_SCHEMES:
      with tf.Graph().as_default():
        images, output = util.build_generic_layers(is_training=True)
        quantize.create_training_graph(weights=scheme)
        weights, = [v for v in tf1.global_variables()
                    if v.op.name == 'fc/weights']
        ranges = {v.op.name: v for v in quantize.range_variables()}
        with tf1.Session() as sess:
          sess.run(tf1.global_variables_initializer())
          # Lopsided weights; fc's are not folded, so the range is theirs.
          weights.load(np.random.RandomState(0).uniform(
              -0.1, 0.3, weights.shape), sess)
          values = sess.run(weights)
          sess.run(output, {images: np.zeros([4, 8, 8, 3])})
          low, high = sess.run([ranges['fc/weights_quant/min'],
                                ranges['fc/weights_quant/max']])
      with self.subTest(scheme=scheme):
        if scheme == quantize.PER_CHANNEL:
          # One range per output channel (MatMul weights are [in, out]).
          bound = np.abs(values).max(axis=0)
          self.assertAllEqual(high, bound)
          self.assertAllEqual(low, -bound)
        elif scheme == quantize.SYMMETRIC:
          bound = np.abs(values).max()
          self.assertEqual((low, high), (-bound, bound))
        else:
          self.assertEqual((low, high), (values.min(), values.max()))

  def test_depthwise_ranges_are_per_output_channel(self):
    with tf.Graph().as_default():
      images = tf1.placeholder(tf.float32, [2, 6, 6, 3])
      with tf1.variable_scope('dw'):
        depthwise = tf1.get_variable('depthwise_weights', [3, 3, 3, 2])
        output = tf.nn.relu6(tf.nn.depthwise_conv2d(
            images, depthwise, [1, 1, 1, 1], 'SAME'))
      quantize.create_training_graph(weights=quantize.PER_CHANNEL)
      high, = [v for v in quantize.range_variables()
               if v.op.name == 'dw/weights_quant/max']
      with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        values = np.random.RandomState(1).normal(size=[3, 3, 3, 2]) * [
            [[[1.0, 10.0]]]]
        depthwise.load(values, sess)
        sess.run(output, {images: np.ones([2, 6, 6, 3])})
        bound = sess.run(high)
    # Output channel c * 2 + k of a depthwise convolution comes from input
    # channel c and multiplier k: one range each, in that order.
    self.assertAllClose(bound, np.abs(values).max(axis=(0, 1)).reshape(-1))

  def test_logits_range_keeps_the_extremes_seen(self):
    # The range holds the extremes of all batches so far, where an average
    # or the last value would fall back after a batch of smaller logits.
    with tf.Graph().as_default():
      images, output = util.build_mobilenet(is_training=True)
      quantize.create_training_graph(quant_delay=0)
      graph = tf1.get_default_graph()
      logits = graph.get_tensor_by_name(_LOGITS_BIAS_ADD + ':0')
      ranges = {v.op.name: v for v in quantize.range_variables()}
      logits_range = [ranges['MobilenetV1/Logits/Conv2d_1c_1x1/act_quant/%s'
                             % end] for end in ('min', 'max')]
      rng = np.random.RandomState(4)
      with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        seen = []
        for _ in range(4):
          batch = rng.uniform(-1, 1, images.shape.as_list())
          # The range update runs with the forward pass; read it afterwards.
          values, _ = sess.run([logits, output], {images: batch})
          seen.append((min(values.min(), 0), max(values.max(), 0)))
          low, high = sess.run(logits_range)
          self.assertAllClose([low, high],
                              [min(s[0] for s in seen),
                               max(s[1] for s in seen)], rtol=1e-6)
    # Some batch is not a new extreme, so the range is not the last batch's.
    self.assertTrue(any(
        s[0] > min(t[0] for t in seen[:k]) or s[1] < max(t[1] for t in seen[:k])
        for k, s in enumerate(seen) if k))


class FakeQuantTest(tf.test.TestCase):
  """One fake quant built on its own."""

  def test_eval_fake_quant_reads_its_range_variables(self):
    inputs = np.array([-1.0, 0.3, 2.0, 7.0], np.float32)
    with tf.Graph().as_default() as graph:
      quantized = quant_ops.fake_quant(
          tf.constant(inputs), 'layer/act_quant', quant_ops.MOVING_AVERAGE,
          narrow_range=False, init_range=quant_ops.INIT_RELU_RANGE,
          is_training=False)
      low, high = graph.get_collection(tf1.GraphKeys.MODEL_VARIABLES)
      self.assertEqual([low.op.name, high.op.name],
                       ['layer/act_quant/min', 'layer/act_quant/max'])
      self.assertEmpty(tf1.trainable_variables())
      self.assertEqual(quantized.op.type, 'FakeQuantWithMinMaxVars')
      with self.session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        outputs = sess.run(quantized)
        # The eval graph reads the range and never updates it.
        self.assertAllEqual(sess.run([low, high]), [0.0, 6.0])
    # [0, 6] in 255 steps: clipped at both ends, the rest to its step.
    step = 6.0 / 255
    self.assertAllClose(outputs / step, np.round(outputs / step), atol=1e-4)
    self.assertAllClose(outputs, np.clip(inputs, 0.0, 6.0), atol=step / 2)
    self.assertEqual((outputs[0], outputs[-1]), (0.0, 6.0))

  def test_bfloat16_tensor_is_quantized_in_float32(self):
    # Mixed bfloat16 training quantizes its bfloat16 activations: the result
    # must be float32's fake quant of the same values, rounded to bfloat16,
    # with float32's range updates and straight-through gradient.
    rng = np.random.RandomState(5)
    # bfloat16 numbers, so that the float32 fake quant sees the same values.
    values, backprop = (
        tf.cast(tf.cast(rng.normal(size=[4, 6, 6, 3]) * scale, tf.bfloat16),
                tf.float32).numpy() for scale in (3, 1))
    for updates in (quant_ops.MOVING_AVERAGE, quant_ops.LAST_VALUE,
                    quant_ops.EXTREMES):
      with self.subTest(updates), tf.Graph().as_default() as graph:
        results, gradients = {}, {}
        for dtype in (tf.bfloat16, tf.float32):
          tensor = tf.constant(values, dtype)
          results[dtype] = quant_ops.fake_quant(
              tensor, '%s/act_quant' % dtype.name, updates,
              narrow_range=False, init_range=quant_ops.INIT_RANGE,
              is_training=True)
          gradients[dtype], = tf.gradients(
              results[dtype], tensor,
              grad_ys=tf.constant(backprop, dtype))
        self.assertEqual(results[tf.bfloat16].dtype, tf.bfloat16)
        fake_quants = [op for op in graph.get_operations()
                       if op.type == 'FakeQuantWithMinMaxVars']
        self.assertLen(fake_quants, 2)
        for op in fake_quants:
          self.assertEqual([t.dtype for t in op.inputs], [tf.float32] * 3)
        ranges = graph.get_collection(tf1.GraphKeys.MODEL_VARIABLES)
        self.assertEqual([v.dtype.base_dtype for v in ranges],
                         [tf.float32] * 4)
        with self.session(graph=graph) as sess:
          sess.run(tf1.global_variables_initializer())
          got = sess.run([results, gradients])
          low16, high16, low32, high32 = sess.run(ranges)
      # Each range was updated from the same values, in float32.
      self.assertEqual((low16, high16), (low32, high32))
      self.assertLess(low32, 0)
      # Really quantized: few bfloat16 numbers are on the 8-bit grid.
      self.assertTrue(np.any(got[0][tf.float32] != values))
      for values_by_dtype in got:
        self.assertAllEqual(
            values_by_dtype[tf.bfloat16],
            tf.cast(values_by_dtype[tf.float32], tf.bfloat16).numpy())


  def test_per_channel_weights_pass_their_gradient_straight_through(self):
    rng = np.random.RandomState(2)
    values = (rng.normal(size=[5, 3]) * [0.01, 1.0, 30.0]).astype(np.float32)
    upstream = rng.normal(size=[5, 3]).astype(np.float32)
    with tf.Graph().as_default() as graph:
      weights = tf1.get_variable('fc/weights', initializer=values)
      layer = tf.matmul(tf.ones([2, 5]), weights)
      quantized = quant_ops.per_channel_weight_fake_quant(
          layer.op, 'fc/weights_quant', is_training=True)
      gradient, = tf.gradients(tf.reduce_sum(quantized * upstream), weights)
      with self.session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        outputs, gradient = sess.run([quantized, gradient])
    # Symmetric narrow range: 254 steps of 2 max|w| / 254 per channel, zero
    # on the grid, max|w| itself quantized to max|w|.
    bound = np.abs(values).max(axis=0)
    step = bound / 127
    self.assertAllClose(outputs, np.round(values / step) * step,
                        rtol=1e-6, atol=0)
    self.assertAllEqual(np.abs(outputs).max(axis=0), bound)
    # Every weight is inside its channel's range: the gradient is the
    # upstream one, unchanged.
    self.assertAllEqual(gradient, upstream)

if __name__ == '__main__':
  tf.test.main()
