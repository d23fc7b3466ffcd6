"""Tests of equalize.py on a small MobileNet with spread channel ranges."""

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

from quantization import equalize
import mobilenet_v1
from testing import test_data

tf1 = tf.compat.v1
test_data.use_float32_math()

_CLASSES = 5
_SIZE = 32
_DEPTH = 0.25
_EPSILON = mobilenet_v1.BATCH_NORM_EPSILON
_CONV_DEFS = mobilenet_v1.MOBILENETV1_CONV_DEFS
# A channel whose batch norm puts its pre-activation at the clip.
_CLIPPED_LAYER = 'Conv2d_3_depthwise'
_CLIPPED_CHANNEL = 5


def _build(images):
  with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(is_training=False)):
    logits, _ = mobilenet_v1.mobilenet_v1(
        images, num_classes=_CLASSES, depth_multiplier=_DEPTH,
        is_training=False)
  return logits


def _relu6_inputs(graph):
  return [op.inputs[0] for op in graph.get_operations() if op.type == 'Relu6']


def _run(values, images):
  """(logits, the largest input of any ReLU6) of the model with `values`."""
  with tf.Graph().as_default() as graph:
    logits = _build(tf.constant(images))
    with tf1.Session() as session:
      for variable in tf1.global_variables():
        variable.load(values[variable.op.name], session)
      got, pre_activations = session.run([logits, _relu6_inputs(graph)])
  return got, max(float(p.max()) for p in pre_activations)


class EqualizeTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    """A model whose folded channels span three orders of magnitude.

    The gammas are drawn over 1e-3..0.2 (log-uniform), so that the folded
    weights' channels differ by up to 200x; betas and gammas are small, so that no activation reaches ReLU6's clip (checked by the
    tests), except one channel whose beta puts it there.
    """
    super().setUpClass()
    rng = np.random.RandomState(0)
    with tf.Graph().as_default():
      tf1.set_random_seed(0)
      _build(tf1.placeholder(tf.float32, [None, _SIZE, _SIZE, 3]))
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        values = {v.op.name: session.run(v) for v in tf1.global_variables()}
    for name, value in values.items():
      shape = value.shape
      if name.endswith('moving_variance'):
        values[name] = rng.uniform(0.5, 1.5, shape)
      elif name.endswith('moving_mean'):
        values[name] = rng.normal(0, 0.01, shape)
      elif name.endswith('gamma'):
        values[name] = 10.0 ** rng.uniform(-3, -0.7, shape)
      elif name.endswith('beta'):
        values[name] = rng.uniform(0.0, 0.1, shape)
    values['MobilenetV1/%s/BatchNorm/beta' % _CLIPPED_LAYER][
        _CLIPPED_CHANNEL] = 6.5
    cls.values = {k: np.asarray(v, np.float32) for k, v in values.items()}
    cls.images = rng.uniform(-1, 1, [4, _SIZE, _SIZE, 3]).astype(np.float32)

  def _equalized(self, sweeps=equalize.SWEEPS):
    values = dict(self.values)
    values.update(equalize.equalize(self.values, _EPSILON, _CONV_DEFS,
                                    sweeps))
    return values

  def test_the_model_computes_the_same(self):
    values = {name: value.copy() for name, value in self.values.items()}
    # Without the clipped channel, every ReLU6 is linear on these images.
    values['MobilenetV1/%s/BatchNorm/beta' % _CLIPPED_LAYER][
        _CLIPPED_CHANNEL] = 0.05
    before, highest_before = _run(values, self.images)
    equalized = dict(values)
    equalized.update(equalize.equalize(values, _EPSILON, _CONV_DEFS))
    after, highest_after = _run(equalized, self.images)
    self.assertLess(highest_before, equalize.RELU6_CLIP)
    self.assertLess(highest_after, equalize.RELU6_CLIP)
    # float32 rounding of the rescaled weights and of each layer's sums.
    self.assertAllClose(after, before, rtol=1e-4,
                        atol=1e-4 * np.abs(before).max())

  def test_every_depthwise_layers_ranges_narrow(self):
    equalized = self._equalized()
    for layer in mobilenet_v1.endpoint_names(_CONV_DEFS):
      if not layer.endswith('_depthwise'):
        continue
      with self.subTest(layer=layer):
        before = equalize.channel_spread(self.values, layer, _EPSILON)
        after = equalize.channel_spread(equalized, layer, _EPSILON)
        self.assertLess(after, before)

  def test_the_last_pair_shares_each_channels_range(self):
    # After its pair's step, a channel's range at the output of one layer
    # and at the input of the next is the geometric mean of the two; the
    # last pair (the last pointwise layer and the logits) is moved by no
    # later step.
    equalized = self._equalized(sweeps=1)
    last = mobilenet_v1.endpoint_names(_CONV_DEFS)[-1]
    bn = 'MobilenetV1/%s/BatchNorm/' % last
    multiplier = equalized[bn + 'gamma'] / np.sqrt(
        equalized[bn + 'moving_variance'] + _EPSILON)
    outputs = np.abs(equalized['MobilenetV1/%s/weights' % last] *
                     multiplier).max(axis=(0, 1, 2))
    inputs = np.abs(equalized['MobilenetV1/Logits/Conv2d_1c_1x1/weights']
                   ).max(axis=(0, 1, 3))
    self.assertAllClose(outputs, inputs, rtol=1e-5)

  def test_a_channel_at_the_clip_keeps_its_scale(self):
    equalized = self._equalized()
    bn = 'MobilenetV1/%s/BatchNorm/' % _CLIPPED_LAYER
    for key in ('gamma', 'beta'):
      with self.subTest(key=key):
        self.assertEqual(equalized[bn + key][_CLIPPED_CHANNEL],
                         self.values[bn + key][_CLIPPED_CHANNEL])
        others = np.arange(len(self.values[bn + key])) != _CLIPPED_CHANNEL
        self.assertFalse(np.allclose(equalized[bn + key][others],
                                     self.values[bn + key][others]))

  def test_moving_statistics_do_not_move(self):
    changed = equalize.equalize(self.values, _EPSILON, _CONV_DEFS)
    self.assertFalse([n for n in changed if 'moving_' in n])


if __name__ == '__main__':
  tf.test.main()
