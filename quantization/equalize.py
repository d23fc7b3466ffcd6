"""Cross-layer range equalisation: per-tensor weight ranges that fit.

With one weight range per tensor, a layer whose folded output channels
differ by orders of magnitude (MobileNet's depthwise layers above all)
rounds its small channels to a few levels. Cross-layer equalisation (Nagel
et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", 2019) moves scale between a layer and the next: dividing
output channel c of layer A by s_c and multiplying input channel c of the
next layer B by s_c leaves the model's function as it was wherever A's
activation is linear, and s_c = sqrt(r_A[c] / r_B[c]) gives both channels
the same range sqrt(r_A[c] * r_B[c]) (r: the largest |folded weight| of the
channel). Layers are visited in pairs along the network, a few sweeps.

In a batch-normalised layer the division is that of the batch norm's gamma
and beta, and the weights the per-tensor range covers are the folded ones
(W * gamma / sqrt(variance + epsilon)); the moving statistics do not move.

ReLU6 is linear only below its clip: relu6(z / s) * s clips z at 6 s, not
at 6. Equalisation stays (nearly) exact where the batch norm says a
channel's pre-activation z stays below the clip: z has mean beta and
standard deviation |gamma| over the data the statistics came from, so a
channel with beta + 4 |gamma| >= 6 is left as it is (the clip acts on it),
and any other channel is scaled by no less than (beta + 4 |gamma|) / 6, so
that its values up to four standard deviations above the mean stay below
the new clip (a Gaussian exceeds that with probability 3e-5).
"""

import numpy as np

import mobilenet_v1

RELU6_CLIP = 6.0
# Standard deviations above the mean a pre-activation may reach.
SIGMAS = 4.0
SWEEPS = 3
_PREFIX = 'MobilenetV1/'
_LOGITS = 'Logits/Conv2d_1c_1x1'


def _weights_name(layer):
  if layer.endswith('_depthwise'):
    return _PREFIX + layer + '/depthwise_weights'
  return _PREFIX + layer + '/weights'


def _batch_norm(layer):
  return _PREFIX + layer + '/BatchNorm/'


class _Model(object):
  """The float values of the layers equalisation touches, by name."""

  def __init__(self, values, epsilon):
    self.values = values
    self._epsilon = epsilon

  def multiplier(self, layer):
    """Per output channel: what folding multiplies the weights by."""
    bn = _batch_norm(layer)
    return self.values[bn + 'gamma'] / np.sqrt(
        self.values[bn + 'moving_variance'] + self._epsilon)

  def folded(self, layer):
    """The folded weights: [kh, kw, in, out], depthwise [kh, kw, channels, 1]."""
    weights = self.values[_weights_name(layer)]
    if layer == _LOGITS:
      return weights
    if layer.endswith('_depthwise'):
      return weights * self.multiplier(layer)[:, None]
    return weights * self.multiplier(layer)

  def output_ranges(self, layer):
    return np.abs(self.folded(layer)).max(
        axis=(0, 1, 3) if layer.endswith('_depthwise') else (0, 1, 2))

  def input_ranges(self, layer):
    # Depthwise and dense weights alike hold their input channels on axis 2.
    return np.abs(self.folded(layer)).max(axis=(0, 1, 3))

  def scale(self, first, second, scales):
    """Moves `scales` from `first`'s output channels to `second`'s inputs."""
    bn = _batch_norm(first)
    self.values[bn + 'gamma'] = self.values[bn + 'gamma'] / scales
    self.values[bn + 'beta'] = self.values[bn + 'beta'] / scales
    name = _weights_name(second)
    self.values[name] = self.values[name] * scales[None, None, :, None]


def variable_names(conv_defs=mobilenet_v1.MOBILENETV1_CONV_DEFS):
  """The variables `equalize` reads (all) and writes (gammas, betas, weights)."""
  layers = mobilenet_v1.endpoint_names(conv_defs)
  names = [_weights_name(layer) for layer in layers + [_LOGITS]]
  for layer in layers:
    names += [_batch_norm(layer) + key
              for key in ('gamma', 'beta', 'moving_variance')]
  return names


def _scales(model, first, second):
  ranges_first = model.output_ranges(first)
  ranges_second = model.input_ranges(second)
  live = (ranges_first > 0) & (ranges_second > 0)
  scales = np.where(live, np.sqrt(ranges_first / np.where(live, ranges_second,
                                                          1.0)), 1.0)
  bn = _batch_norm(first)
  highest = (model.values[bn + 'beta'] +
             SIGMAS * np.abs(model.values[bn + 'gamma']))
  return np.where(highest >= RELU6_CLIP, 1.0,
                  np.maximum(scales, highest / RELU6_CLIP))


def equalize(values, epsilon, conv_defs=mobilenet_v1.MOBILENETV1_CONV_DEFS,
             sweeps=SWEEPS):
  """Equalises the ranges of a float MobileNet V1's folded weights.

  Args:
    values: {variable name: np.ndarray} with at least `variable_names()`.
    epsilon: the batch norms' epsilon.
    conv_defs: the layer table of the body.
    sweeps: passes over the network's pairs of layers.

  Returns:
    {variable name: np.ndarray}: the values that changed (gammas, betas
    and weights), float32.
  """
  model = _Model({name: np.asarray(values[name], np.float64)
                  for name in variable_names(conv_defs)}, epsilon)
  layers = mobilenet_v1.endpoint_names(conv_defs) + [_LOGITS]
  for _ in range(sweeps):
    for first, second in zip(layers[:-1], layers[1:]):
      model.scale(first, second, _scales(model, first, second))
  return {name: value.astype(np.float32)
          for name, value in model.values.items()
          if not name.endswith('moving_variance')}


def channel_spread(values, layer, epsilon):
  """Largest over median output-channel range of `layer`'s folded weights."""
  model = _Model(values, epsilon)
  ranges = model.output_ranges(layer)
  return float(ranges.max() / np.median(ranges))
