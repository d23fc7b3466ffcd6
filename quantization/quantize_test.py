"""Tests for quantize: batch norm folding, fake quantization, TFLite export."""

import os

import numpy as np

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from quantization import fold_batch_norms
from quantization import graph_editing
from quantization import quantize
from testing import quantize_test_util as util
from testing import test_data

test_data.use_float32_math()

tf1 = tf.compat.v1

_LOGITS_BIAS_ADD = 'MobilenetV1/Logits/Conv2d_1c_1x1/BiasAdd'


def _convolutions(ops):
  """The Conv2D and DepthwiseConv2dNative ops among `ops`."""
  return [op for op in ops if op.type in ('Conv2D', 'DepthwiseConv2dNative')]


def _folded_layers_by_scope(graph):
  """The eval graph's folded layer ops, by their layer's scope plus '/'."""
  return {op.name.rpartition('/')[0] + '/': op
          for op in graph.get_collection(fold_batch_norms.FOLDED_LAYERS)}


def _folding_reference(values, layer):
  """A MobileNet layer's inference multiplier and weights, in NumPy.

  Args:
    values: the model's variable values (util.model_values).
    layer: a layer name like 'Conv2d_1_depthwise'.

  Returns:
    (multiplier, weights): gamma / sqrt(moving_variance + 1e-3), float32,
    one per output channel, and the weights as float32 [-1, channels]
    (output channels last, a depthwise [h, w, in, k]'s in * k).
  """
  variables = 'MobilenetV1/%s/' % layer
  multiplier = (values[variables + 'BatchNorm/gamma'] / np.sqrt(
      values[variables + 'BatchNorm/moving_variance'] + 1e-3)).astype(
          np.float32)
  weights = values[variables + ('depthwise_weights' if 'depthwise' in layer
                                else 'weights')].astype(np.float32)
  return multiplier, weights.reshape(-1, multiplier.size)


class MobilenetQuantizeTest(tf.test.TestCase):

  def test_eval_graph_quantizes_every_weight_and_activation(self):
    with tf.Graph().as_default() as graph:
      _, logits = util.build_mobilenet(is_training=False)
      quantize.create_eval_graph()

    path = util.ancestors(logits)
    layers = _convolutions(path)
    relu6s = [op for op in path if op.type == 'Relu6']
    self.assertLen(layers, 28)  # 27 body convolutions and the logits.
    self.assertLen(relu6s, 27)
    for op in layers:
      weights_quant = graph_editing.fake_quant_of(op.inputs[1])
      # Per output channel by default: one range each.
      self.assertEqual(weights_quant.type, util.FAKE_QUANT + 'PerChannel',
                       op.name)
      self.assertTrue(weights_quant.get_attr('narrow_range'), op.name)
      channels = op.outputs[0].shape[-1]
      self.assertEqual(weights_quant.inputs[1].shape.as_list(), [channels])
    bias_add = graph.get_operation_by_name(_LOGITS_BIAS_ADD)
    for op in relu6s + [bias_add]:
      consumers = op.outputs[0].consumers()
      self.assertEqual([c.type for c in consumers], [util.FAKE_QUANT], op.name)
      self.assertFalse(consumers[0].get_attr('narrow_range'), op.name)
    self.assertEmpty([op.name for op in path if 'BatchNorm' in op.type])
    # The average pool is rounded to its input's grid, as TFLite's int8
    # pool does, with the input's range variables (no new ones), through a
    # tie-break add (whose sign the int8 code of the mean decides).
    pool, = [op for op in path if op.type == 'AvgPool']
    half_up, = [op for op in pool.outputs[0].consumers()
                if op.name.endswith('/half_up')]
    pool_quant, = half_up.outputs[0].consumers()
    self.assertEqual(pool_quant.type, util.FAKE_QUANT)
    self.assertEqual([t.name for t in pool_quant.inputs[1:]],
                     [t.name for t in pool.inputs[0].op.inputs[1:]])
    # 28 weights, 27 Relu6 outputs, the logits and the pool.
    self.assertEqual(util.count_fake_quants(graph), 57)

    names = {v.op.name for v in quantize.range_variables(graph)}
    self.assertLen(names, 112)
    for name in ('MobilenetV1/MobilenetV1/Conv2d_0/weights_quant/min',
                 'MobilenetV1/MobilenetV1/Conv2d_13_pointwise/act_quant/max',
                 'MobilenetV1/Logits/Conv2d_1c_1x1/act_quant/min'):
      self.assertIn(name, names)
    trainable = {v.op.name for v in graph.get_collection(
        tf1.GraphKeys.TRAINABLE_VARIABLES)}
    model = {v.op.name for v in graph.get_collection(
        tf1.GraphKeys.MODEL_VARIABLES)}
    self.assertEmpty(names & trainable)
    self.assertContainsSubset(names, model)

  def test_training_graph_matches_float_before_quant_delay(self):
    quant_delay = 1000
    images = util.images()
    labels = np.random.RandomState(2).randint(0, util.NUM_CLASSES, util.BATCH)
    results = []
    for rewrite in (False, True):
      with tf.Graph().as_default() as graph:
        images_in, logits = util.build_mobilenet(is_training=True)
        if rewrite:
          quantize.create_training_graph(quant_delay=quant_delay)
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
        variables = sorted(tf1.trainable_variables(), key=lambda v: v.op.name)
        gradients = tf1.gradients(loss, variables)
        moving_variances = sorted(
            [v for v in tf1.global_variables()
             if v.op.name.endswith('moving_variance')],
            key=lambda v: v.op.name)
        with self.session(graph=graph) as sess:
          util.load(sess, util.model_values(graph))
          fetched = sess.run(
              [logits, gradients, tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)],
              {images_in: images})
          results.append((fetched[0], fetched[1], sess.run(moving_variances)))
          if rewrite:
            tf1.train.get_global_step().load(quant_delay, sess)
            delayed_logits = sess.run(logits, {images_in: images})
    (float_logits, float_grads, float_stats), (quant_logits, quant_grads,
                                               quant_stats) = results
    scale = np.abs(float_logits).max()
    self.assertAllClose(float_logits, quant_logits, rtol=1e-4,
                        atol=1e-4 * scale)
    # Gradients go through the batch statistics in both graphs. Through 28
    # layers float rounding adds up: fused and unfused float batch norms
    # differ by about 0.1% here too.
    self.assertLen(quant_grads, len(float_grads))
    float_grads = np.concatenate([g.ravel() for g in float_grads])
    quant_grads = np.concatenate([g.ravel() for g in quant_grads])
    self.assertLess(np.linalg.norm(quant_grads - float_grads),
                    5e-3 * np.linalg.norm(float_grads))
    # Batch norm's moving averages are still updated, from the same batch.
    self.assertAllClose(float_stats, quant_stats, rtol=1e-5)
    # From the delay on, quantization changes the outputs.
    self.assertNotAllClose(float_logits, delayed_logits, rtol=1e-3,
                           atol=1e-3 * scale)

  def test_channels_drowned_by_input_rounding_fold_to_beta(self):
    # Channel 3 of Conv2d_1_depthwise reads a near-constant input: its
    # moving variance is tiny and (no weight decay on depthwise weights)
    # its weights large, so its folded weights would be ~1000x the others.
    # Training keeps the batch norm after weights quantized as the folded
    # ones (weights_quant/mul_fold); the eval graph folds it.
    layer = 'MobilenetV1/Conv2d_1_depthwise/'
    scope = 'MobilenetV1/MobilenetV1/Conv2d_1_depthwise/'
    dead = 3
    images = util.images()
    for is_training in (False, True):
      with self.subTest(is_training=is_training):
        with tf.Graph().as_default() as graph:
          images_in, _ = util.build_mobilenet(is_training, quantized_input=True)
          if is_training:
            quantize.create_training_graph(weights=quantize.ASYMMETRIC,
                                           mask_drowned_channels=True)
            fetches = [scope + 'weights_quant/mul_fold:0',
                       scope + 'BatchNorm/FusedBatchNormV3:0']
          else:
            quantize.create_eval_graph(weights=quantize.ASYMMETRIC,
                                       mask_drowned_channels=True)
            fetches = [scope + 'mul_fold:0', scope + 'add_fold:0']
          values = util.model_values(graph)
          values[layer + 'BatchNorm/moving_variance'][dead] = 1e-7
          values[layer + 'depthwise_weights'][:, :, dead, 0] *= 20
          with self.session(graph=graph) as sess:
            util.load(sess, values)
            folded, layer_output = sess.run(fetches, {images_in: images})
        folded = folded[:, :, :, 0]
        self.assertAllEqual(folded[:, :, dead], np.zeros([3, 3]))
        # The eval graph rounds the bias to its int32 grid, a few 1e-4 apart.
        beta = values[layer + 'BatchNorm/beta'][dead]
        self.assertAllClose(layer_output[..., dead],
                            np.full(layer_output.shape[:-1], beta), atol=1e-3)
        self.assertEqual(np.ptp(layer_output[..., dead]), 0)
        # Every other channel keeps its batch norm folded in.
        gamma = values[layer + 'BatchNorm/gamma']
        variance = values[layer + 'BatchNorm/moving_variance']
        expected = (values[layer + 'depthwise_weights'][:, :, :, 0] * gamma /
                    np.sqrt(variance + 1e-3))
        live = np.arange(folded.shape[-1]) != dead
        self.assertAllClose(folded[:, :, live], expected[:, :, live],
                            rtol=1e-5, atol=1e-6)

  def _train_keeping_batch_norms(self, weights, fetches=None):
    """One training step of MobileNet rewritten with `weights` ranges.

    Checks that the rewrite kept every batch norm and folded none.

    Args:
      weights: one of quantize.WEIGHT_SCHEMES.
      fetches: tensors to fetch after the step, or None.

    Returns:
      (the model's values, {range variable name: value} after the step, the
      fetched values).
    """
    with tf.Graph().as_default() as graph:
      images_in, logits = util.build_mobilenet(is_training=True)
      quantize.create_training_graph(weights=weights)
      path = util.ancestors(logits)
      self.assertLen(_convolutions(path), 28)
      self.assertLen([op for op in path if op.type == 'FusedBatchNormV3'],
                     27)
      self.assertEmpty(graph.get_collection(fold_batch_norms.FOLDED_LAYERS))
      values = util.model_values(graph)
      with self.session(graph=graph) as sess:
        util.load(sess, values)
        sess.run(logits, {images_in: util.images()})
        return (values, util.range_values(sess),
                None if fetches is None else sess.run(fetches))

  def test_per_channel_training_keeps_batch_norms_with_folded_ranges(self):
    # Per-channel ranges scale with their channels, so training quantizes
    # the unfolded weights and keeps each batch norm (one convolution per
    # layer, not folding's two) while saving the folded weights' ranges,
    # which the eval graph then quantizes the folded weights with.
    values, trained_ranges, _ = self._train_keeping_batch_norms(
        quantize.PER_CHANNEL)
    with tf.Graph().as_default() as graph:
      util.build_mobilenet(is_training=False)
      quantize.create_eval_graph()
      folded_layers = _folded_layers_by_scope(graph)
      with self.session(graph=graph) as sess:
        util.load(sess, dict(values, **trained_ranges))
        for layer in ('Conv2d_0', 'Conv2d_1_depthwise', 'Conv2d_13_pointwise'):
          with self.subTest(layer=layer):
            scope = 'MobilenetV1/MobilenetV1/%s/' % layer
            multiplier, weights = _folding_reference(values, layer)
            bound = np.abs(weights).max(axis=0)
            folded_bound = trained_ranges[scope + 'weights_quant/max']
            self.assertAllClose(folded_bound, bound * np.abs(multiplier),
                                rtol=1e-6)
            self.assertAllEqual(trained_ranges[scope + 'weights_quant/min'],
                                -folded_bound)
            # What training computes: m * quant(W) with W's own ranges.
            step = bound / 127
            expected = multiplier * (np.floor(
                (np.clip(weights, -bound, bound) + bound) / step + 0.5) *
                                     step - bound)
            folded_quant = graph_editing.fake_quant_of(
                folded_layers[scope].inputs[1])
            actual = sess.run(folded_quant.outputs[0]).reshape(weights.shape)
            # quant(W * m) rounds (W * m) / (|m| max|W| / 127), which is
            # W / (max|W| / 127) up to three float32 roundings (a relative
            # 2e-7, 4e-5 of a step at the largest code 127): a code can only
            # differ where W sits that close to a rounding tie, a fraction
            # ~1e-4 of smoothly distributed weights, and then by one step.
            differs = ~np.isclose(actual, expected, rtol=1e-5,
                                  atol=1e-6 * folded_bound.max())
            self.assertLess(differs.mean(), 1e-3)
            self.assertTrue(np.all(np.abs(actual - expected).max(axis=0) <=
                                   folded_bound / 127 * (1 + 1e-5)))

  def test_per_tensor_training_keeps_batch_norms_with_folded_ranges(self):
    # Per-tensor ranges do not scale with a channel, so training quantizes
    # the folded weights W * m with the folded weights' range and divides
    # by m again: through the kept batch norm, m turns them back into the
    # eval graph's quantized folded weights.
    layers = ('Conv2d_0', 'Conv2d_1_depthwise', 'Conv2d_13_pointwise')
    values, trained_ranges, trained_weights = (
        self._train_keeping_batch_norms(quantize.ASYMMETRIC, {
            layer: 'MobilenetV1/MobilenetV1/%s/weights_quant/unfold:0' % layer
            for layer in layers}))
    with tf.Graph().as_default() as graph:
      util.build_mobilenet(is_training=False)
      quantize.create_eval_graph(weights=quantize.ASYMMETRIC)
      folded_layers = _folded_layers_by_scope(graph)
      with self.session(graph=graph) as sess:
        util.load(sess, dict(values, **trained_ranges))
        for layer in layers:
          with self.subTest(layer=layer):
            scope = 'MobilenetV1/MobilenetV1/%s/' % layer
            multiplier, weights = _folding_reference(values, layer)
            folded = weights * multiplier
            self.assertAllClose(trained_ranges[scope + 'weights_quant/min'],
                                min(folded.min(), 0), rtol=1e-6)
            self.assertAllClose(trained_ranges[scope + 'weights_quant/max'],
                                max(folded.max(), 0), rtol=1e-6)
            folded_quant = graph_editing.fake_quant_of(
                folded_layers[scope].inputs[1])
            expected = sess.run(folded_quant.outputs[0]).reshape(
                weights.shape)
            # Training's weights times m are the eval graph's quantized
            # folded weights, up to the float32 rounding of the division
            # and the product (a relative 2.4e-7 at most).
            actual = trained_weights[layer].reshape(weights.shape) * multiplier
            self.assertAllClose(actual, expected, rtol=3e-7, atol=0)
            # And those lie on the 255-level grid of the saved range.
            step = (trained_ranges[scope + 'weights_quant/max'] -
                    trained_ranges[scope + 'weights_quant/min']) / 254
            codes = (expected - expected.min()) / step
            self.assertAllClose(codes, np.round(codes), atol=1e-3)

  def test_frozen_batch_norms_fold_with_moving_statistics(self):
    # Before --freeze_bn_delay a training layer normalizes with its batch's
    # statistics, from it on with the moving ones, as inference does.
    # Quantization is delayed past both steps, so each is compared with
    # the float batch norm in that mode.
    layer = 'MobilenetV1/MobilenetV1/Conv2d_1_depthwise/'
    images = util.images()
    folded = {}
    with tf.Graph().as_default() as graph:
      images_in, _ = util.build_mobilenet(is_training=True)
      quantize.create_training_graph(quant_delay=100, freeze_bn_delay=5)
      values = util.model_values(graph)
      global_step = tf1.train.get_global_step()
      with self.session(graph=graph) as sess:
        util.load(sess, values)
        for step in (0, 10):
          sess.run(global_step.assign(step))
          folded[step] = sess.run(layer + 'add_fold:0', {images_in: images})
    for is_training, step in ((True, 0), (False, 10)):
      with self.subTest(is_training=is_training):
        with tf.Graph().as_default() as graph:
          images_in, _ = util.build_mobilenet(is_training=is_training)
          with self.session(graph=graph) as sess:
            util.load(sess, values)
            expected = sess.run(layer + 'BatchNorm/FusedBatchNormV3:0',
                                {images_in: images})
        self.assertAllClose(folded[step], expected, rtol=1e-4, atol=1e-4)
    self.assertNotAllClose(folded[0], folded[10], rtol=1e-2, atol=1e-2)

  def test_ranges_train_save_and_restore_into_eval_graph(self):
    checkpoint = os.path.join(self.get_temp_dir(), 'model.ckpt')
    trained = util.train_and_save(self, checkpoint, steps=3)
    self.assertNotEmpty(trained)

    with tf.Graph().as_default() as graph:
      util.build_mobilenet(is_training=False)
      quantize.create_eval_graph()
      with self.session(graph=graph) as sess:
        tf1.train.Saver().restore(sess, checkpoint)
        restored = util.range_values(sess)
    self.assertEqual(sorted(restored), sorted(trained))
    for name, value in trained.items():
      self.assertAllEqual(restored[name], value, name)

  def test_rewriting_twice_raises(self):
    for rewrite in (quantize.create_eval_graph,
                    lambda: quantize.create_training_graph(quant_delay=0)):
      with tf.Graph().as_default() as graph:
        util.build_mobilenet(is_training=False)
        rewrite()
        count = util.count_fake_quants(graph)
        with self.assertRaisesRegex(ValueError, 'already quantized'):
          rewrite()
        with self.assertRaisesRegex(ValueError, 'already quantized'):
          quantize.create_eval_graph(graph)
        self.assertEqual(util.count_fake_quants(graph), count)

  def test_rewriting_a_folded_graph_raises(self):
    with tf.Graph().as_default() as graph:
      util.build_mobilenet(is_training=False)
      fold_batch_norms.fold_batch_norms()
      with self.assertRaisesRegex(ValueError, 'already has folded'):
        quantize.create_eval_graph()
      self.assertEqual(util.count_fake_quants(graph), 0)

  def test_graph_without_layers_raises(self):
    with tf.Graph().as_default():
      images = tf1.placeholder(tf.float32, [1, 4, 4, 3])
      tf.nn.relu6(images * 2.0)
      with self.assertRaisesRegex(ValueError, 'no layer to quantize'):
        quantize.create_eval_graph()
      with self.assertRaisesRegex(ValueError, 'non-negative'):
        quantize.create_training_graph(quant_delay=-1)

  def test_masking_drowned_channels_with_per_channel_weights_raises(self):
    # Per-channel training would not mask (its weights are quantized
    # unfolded) where the eval graph would.
    for rewrite in (
        lambda: quantize.create_eval_graph(mask_drowned_channels=True),
        lambda: quantize.create_training_graph(mask_drowned_channels=True)):
      with tf.Graph().as_default() as graph:
        util.build_mobilenet(is_training=False)
        with self.assertRaisesRegex(ValueError, 'per-channel ranges need no'):
          rewrite()
        self.assertEqual(util.count_fake_quants(graph), 0)

  def test_rewrite_after_gradients_raises(self):
    with tf.Graph().as_default():
      _, logits = util.build_mobilenet(is_training=True)
      tf1.gradients(tf.reduce_sum(logits), tf1.trainable_variables())
      with self.assertRaisesRegex(ValueError, 'before building the optimizer'):
        quantize.create_training_graph()


class GenericPatternsTest(tf.test.TestCase):
  """Hand-built layers: unfused batch norm, MatMul, residual Adds."""

  def test_rewrite_names(self):
    with tf.Graph().as_default() as graph:
      util.build_generic_layers(is_training=False)
      quantize.create_eval_graph()
    names = {v.op.name.rpartition('/')[0]
             for v in quantize.range_variables(graph)}
    self.assertEqual(names, {
        'conv_bn/weights_quant', 'conv_bn/act_quant',
        'pre_add/weights_quant', 'pre_add/conv_quant', 'pre_add/act_quant',
        'post/weights_quant', 'post/act_quant', 'post_add/add_quant',
        'fc/weights_quant', 'fc/act_quant'})
    fc_relu = [op for op in graph.get_operations()
               if op.type == 'Relu' and op.inputs[0].op.type in ('Add',
                                                                 'AddV2')]
    for op in fc_relu:
      self.assertEqual([c.type for c in op.outputs[0].consumers()],
                       [util.FAKE_QUANT])
    self.assertEqual(util.count_fake_quants(graph), 10)

  def test_training_before_the_delay_matches_float(self):
    util.assert_rewrite_keeps_function(
        self, is_training=True,
        rewrite=lambda: quantize.create_training_graph(quant_delay=5))

  def test_eval_output_is_quantized(self):
    with tf.Graph().as_default() as graph:
      images_in, output = util.build_generic_layers(is_training=False)
      quantize.create_eval_graph()
      with self.session(graph=graph) as sess:
        util.load(sess, util.model_values(graph))
        values = sess.run(output, {images_in: np.random.RandomState(0).normal(
            size=[4, 8, 8, 3])})
    # The last ReLU's range is still its initial [0, 6]: outputs lie on its
    # 256-value grid.
    steps = values / (6.0 / 255)
    self.assertAllClose(steps, np.round(steps), atol=1e-3)
    self.assertLessEqual(values.max(), 6.0)
    self.assertGreater(len(np.unique(values)), 2)


if __name__ == '__main__':
  tf.test.main()
