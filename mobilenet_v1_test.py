"""Tests for mobilenet_v1, against figures computed independently of it."""

import os

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

import mobilenet_v1
from model import variants
from testing import test_data

test_data.use_float32_math()

tf1 = tf.compat.v1

# (layer, stride, depth at width 1.0) of the paper's Table 1, written out
# here rather than read from mobilenet_v1.MOBILENETV1_CONV_DEFS.
PAPER_BODY = [('Conv2d_0', 2, 32)] + [
    ('Conv2d_%d' % (i + 1), stride, depth) for i, (stride, depth) in
    enumerate([(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
               (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024),
               (1, 1024)])]


def expected_endpoint_shapes(width, resolution, batch=2):
  """End-point shapes of the body derived from the paper's table."""
  shapes = {}
  size = resolution
  channels = 32
  for name, stride, depth in PAPER_BODY:
    out_size = -(-size // stride)  # SAME padding: ceil(size / stride)
    out_depth = max(int(depth * width), 8)
    if name == 'Conv2d_0':
      shapes[name] = [batch, out_size, out_size, out_depth]
    else:
      shapes[name + '_depthwise'] = [batch, out_size, out_size, channels]
      shapes[name + '_pointwise'] = [batch, out_size, out_size, out_depth]
    size, channels = out_size, out_depth
  return shapes


def build(inputs_shape=(2, 224, 224, 3), is_training=False, **kwargs):
  """Builds mobilenet_v1 in the default graph under its arg_scope."""
  inputs = tf1.placeholder(tf.float32, inputs_shape)
  with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(
      is_training=is_training)):
    logits, end_points = mobilenet_v1.mobilenet_v1(
        inputs, is_training=is_training, **kwargs)
  return inputs, logits, end_points


class VariablesTest(tf.test.TestCase):

  def test_released_checkpoint_variables(self):
    with tf.Graph().as_default():
      build(num_classes=1001)
      variables = {v.op.name: v.shape.as_list()
                   for v in tf1.global_variables()}
    self.assertLen(variables, 137)
    self.assertEqual(sum(np.prod(s) for s in variables.values()), 4254889)
    expected = {'MobilenetV1/Conv2d_0/weights': [3, 3, 3, 32],
                'MobilenetV1/Logits/Conv2d_1c_1x1/weights': [1, 1, 1024, 1001],
                'MobilenetV1/Logits/Conv2d_1c_1x1/biases': [1001]}
    channels = 32
    for name, _, depth in PAPER_BODY:
      batch_norms = [name]
      if name != 'Conv2d_0':
        expected['MobilenetV1/%s_depthwise/depthwise_weights' % name] = [
            3, 3, channels, 1]
        expected['MobilenetV1/%s_pointwise/weights' % name] = [
            1, 1, channels, depth]
        batch_norms = [name + '_depthwise', name + '_pointwise']
      for layer, size in zip(batch_norms, [channels, depth][-len(batch_norms):]):
        for part in ('beta', 'gamma', 'moving_mean', 'moving_variance'):
          expected['MobilenetV1/%s/BatchNorm/%s' % (layer, part)] = [size]
      channels = depth
    self.assertDictEqual(variables, expected)

  def test_width_partials_and_default_size(self):
    self.assertEqual(mobilenet_v1.mobilenet_v1.default_image_size, 224)
    for partial, width in ((mobilenet_v1.mobilenet_v1_075, 0.75),
                           (mobilenet_v1.mobilenet_v1_050, 0.5),
                           (mobilenet_v1.mobilenet_v1_025, 0.25)):
      with tf.Graph().as_default():
        inputs = tf1.placeholder(tf.float32, [1, 128, 128, 3])
        _, end_points = partial(inputs, num_classes=10)
        self.assertEqual(end_points['Conv2d_13_pointwise'].shape[-1],
                         int(1024 * width))
      self.assertEqual(partial.__name__, 'mobilenet_v1')

  def test_regularization_losses(self):
    with tf.Graph().as_default():
      build(num_classes=1001)
      # 14 body convs plus logits; depthwise weights are not regularized.
      losses = tf1.losses.get_regularization_losses()
      self.assertLen(losses, 15)
      self.assertFalse([l for l in losses if 'depthwise' in l.name])
    with tf.Graph().as_default():
      inputs = tf1.placeholder(tf.float32, [1, 128, 128, 3])
      with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(
          regularize_depthwise=True, weight_decay=0.5)):
        mobilenet_v1.mobilenet_v1(inputs, num_classes=5)
      losses = tf1.losses.get_regularization_losses()
      self.assertLen(losses, 28)
      with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        weights, = sess.run([v for v in tf1.global_variables()
                            if v.op.name == 'MobilenetV1/Conv2d_0/weights'])
        loss = sess.run(tf1.get_default_graph().get_tensor_by_name(
            losses[0].name))
      self.assertAllClose(loss, 0.5 * 0.5 * np.sum(weights ** 2), rtol=1e-5)


class ShapesTest(tf.test.TestCase):

  def test_endpoints_of_all_16_variants(self):
    self.assertLen(variants.VARIANTS, 16)
    for variant in variants.VARIANTS:
      width, resolution = variant.depth_multiplier, variant.resolution
      with self.subTest(variant=variant.name):
        with tf.Graph().as_default():
          _, logits, end_points = build(
              (2, resolution, resolution, 3), num_classes=1001,
              depth_multiplier=width)
        expected = expected_endpoint_shapes(width, resolution)
        for name, shape in expected.items():
          self.assertEqual(end_points[name].shape.as_list(), shape, name)
        self.assertEqual(end_points['AvgPool_1a'].shape.as_list(),
                         [2, 1, 1, max(int(1024 * width), 8)])
        self.assertEqual(logits.shape.as_list(), [2, 1001])
        self.assertEqual(end_points['Predictions'].shape.as_list(),
                         [2, 1001])
        self.assertCountEqual(
            end_points,
            list(expected) + ['AvgPool_1a', 'Logits', 'Predictions'])

  def test_base_final_endpoint_and_min_depth(self):
    with tf.Graph().as_default():
      inputs = tf1.placeholder(tf.float32, [1, 224, 224, 3])
      net, end_points = mobilenet_v1.mobilenet_v1_base(
          inputs, final_endpoint='Conv2d_5_depthwise', depth_multiplier=0.1,
          min_depth=16)
      self.assertEqual(net.shape.as_list(), [1, 28, 28, 25])
      self.assertEqual(list(end_points)[-1], 'Conv2d_5_depthwise')
      self.assertLen(end_points, 10)
      self.assertEqual(end_points['Conv2d_0'].shape[-1], 16)  # 3.2 -> 16

  def test_output_stride(self):
    for output_stride, size in ((8, 28), (16, 14), (32, 7)):
      with self.subTest(output_stride=output_stride):
        with tf.Graph().as_default():
          inputs = tf1.placeholder(tf.float32, [1, 224, 224, 3])
          net, _ = mobilenet_v1.mobilenet_v1_base(
              inputs, output_stride=output_stride)
          self.assertEqual(net.shape.as_list(), [1, size, size, 1024])
          # Atrous depthwise convolutions run as SpaceToBatchND, conv,
          # BatchToSpaceND: one per layer after the first one whose stride
          # is replaced (that one keeps rate 1, the next ones dilate).
          atrous = [op for op in tf1.get_default_graph().get_operations()
                    if op.type == 'SpaceToBatchND']
          self.assertLen(atrous, {8: 7, 16: 1, 32: 0}[output_stride])

  def test_explicit_padding_gives_same_shapes_and_valid_convs(self):
    with tf.Graph().as_default():
      inputs = tf1.placeholder(tf.float32, [1, 224, 224, 3])
      net, _ = mobilenet_v1.mobilenet_v1_base(inputs,
                                              use_explicit_padding=True)
      self.assertEqual(net.shape.as_list(), [1, 7, 7, 1024])
      paddings = {op.get_attr('padding').decode()
                  for op in tf1.get_default_graph().get_operations()
                  if op.type in ('Conv2D', 'DepthwiseConv2dNative')}
      self.assertEqual(paddings, {'VALID'})

  def test_non_square_input_with_global_pool(self):
    with tf.Graph().as_default():
      inputs = tf1.placeholder(tf.float32, [2, None, None, 3])
      with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(False)):
        logits, end_points = mobilenet_v1.mobilenet_v1(
            inputs, num_classes=7, global_pool=True, is_training=False,
            depth_multiplier=0.25)
      self.assertEqual(end_points['global_pool'].shape.as_list(),
                       [2, 1, 1, 256])
      with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        features = sess.run(end_points['Conv2d_13_pointwise'],
                            {inputs: np.zeros([2, 100, 260, 3])})
        output = sess.run(logits, {inputs: np.zeros([2, 100, 260, 3])})
      self.assertEqual(features.shape, (2, 4, 9, 256))
      self.assertEqual(output.shape, (2, 7))

  def test_small_input_shrinks_pool_kernel(self):
    with tf.Graph().as_default():
      _, logits, end_points = build((1, 64, 96, 3), num_classes=3,
                                    depth_multiplier=0.25)
      self.assertEqual(end_points['AvgPool_1a'].shape.as_list(),
                       [1, 1, 1, 256])
      self.assertEqual(logits.shape.as_list(), [1, 3])

  def test_features_only_when_no_classes(self):
    for num_classes in (0, None):
      with tf.Graph().as_default():
        _, net, end_points = build((1, 128, 128, 3), num_classes=num_classes,
                                   depth_multiplier=0.5)
        self.assertEqual(net.shape.as_list(), [1, 1, 1, 512])
        self.assertNotIn('Logits', end_points)
        self.assertFalse([v for v in tf1.global_variables()
                          if 'Logits' in v.op.name])

  def test_no_spatial_squeeze_and_custom_conv_defs(self):
    conv_defs = [mobilenet_v1.Conv(kernel=[3, 3], stride=2, depth=16),
                 mobilenet_v1.DepthSepConv(kernel=[3, 3], stride=2, depth=24)]
    with tf.Graph().as_default():
      _, logits, end_points = build((1, 28, 28, 3), num_classes=4,
                                    conv_defs=conv_defs, spatial_squeeze=False,
                                    prediction_fn=None)
      self.assertEqual(logits.shape.as_list(), [1, 1, 1, 4])
      self.assertEqual(end_points['Conv2d_1_pointwise'].shape.as_list(),
                       [1, 7, 7, 24])
      self.assertNotIn('Predictions', end_points)


class CheckpointTest(tf.test.TestCase):

  def test_save_restore_round_trip(self):
    images = np.random.RandomState(0).uniform(
        -1, 1, [2, 128, 128, 3]).astype(np.float32)
    path = os.path.join(self.get_temp_dir(), 'model.ckpt')
    with tf.Graph().as_default():
      inputs, logits, _ = build((2, 128, 128, 3), num_classes=11,
                                depth_multiplier=0.25)
      with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        # Non-trivial moving statistics, so that restoring them matters.
        for v in tf1.global_variables():
          if 'moving_mean' in v.op.name:
            sess.run(v.assign(np.random.uniform(-0.1, 0.1, v.shape)))
          elif 'moving_variance' in v.op.name:
            sess.run(v.assign(np.random.uniform(0.5, 1.5, v.shape)))
        before = sess.run(logits, {inputs: images})
        tf1.train.Saver().save(sess, path)
    with tf.Graph().as_default():
      inputs, logits, _ = build((2, 128, 128, 3), num_classes=11,
                                depth_multiplier=0.25)
      with tf1.Session() as sess:
        tf1.train.Saver().restore(sess, path)
        after = sess.run(logits, {inputs: images})
    self.assertAllEqual(before, after)
    self.assertGreater(np.std(before), 0)

  def test_training_mode_updates_moving_statistics(self):
    with tf.Graph().as_default():
      inputs, logits, _ = build((4, 64, 64, 3), is_training=True,
                                num_classes=3, depth_multiplier=0.25)
      update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
      self.assertLen(update_ops, 2 * 27)  # mean and variance per batch norm
      mean, = [v for v in tf1.global_variables()
               if v.op.name == 'MobilenetV1/Conv2d_0/BatchNorm/moving_mean']
      with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        sess.run([logits, update_ops],
                 {inputs: np.ones([4, 64, 64, 3], np.float32)})
        self.assertGreater(np.abs(sess.run(mean)).max(), 0)


class ErrorsTest(tf.test.TestCase):

  def _inputs(self, shape=(1, 128, 128, 3)):
    return tf1.placeholder(tf.float32, shape)

  def test_bad_arguments_raise_value_error(self):
    cases = [
        (dict(depth_multiplier=0), 'depth_multiplier'),
        (dict(depth_multiplier=-0.5), 'depth_multiplier'),
        (dict(final_endpoint='Conv2d_99'), 'final_endpoint'),
        (dict(output_stride=4), 'output_stride'),
        (dict(conv_defs=[('conv', 3)]), 'conv_def'),
    ]
    for kwargs, message in cases:
      with self.subTest(**{k: str(v) for k, v in kwargs.items()}):
        with tf.Graph().as_default():
          with self.assertRaisesRegex(ValueError, message):
            mobilenet_v1.mobilenet_v1_base(self._inputs(), **kwargs)

  def test_input_rank_must_be_4(self):
    with tf.Graph().as_default():
      with self.assertRaisesRegex(ValueError, 'rank 4'):
        mobilenet_v1.mobilenet_v1(self._inputs((128, 128, 3)))
      with self.assertRaisesRegex(ValueError, 'rank 4'):
        mobilenet_v1.mobilenet_v1_base(self._inputs((1, 1, 128, 128, 3)))


if __name__ == '__main__':
  tf.test.main()
