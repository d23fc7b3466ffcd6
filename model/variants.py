"""The 16 MobileNet V1 variants Google released, with their published figures.

One row per width multiplier and input resolution: the Million MACs, Million
Parameters and top-1/top-5 accuracies of the seed README's table (the
2018_08_02 release; the quantized accuracies were measured on the TFLite
models), and the names of the release files. The published MACs are what the
release says, not what the architecture gives: `costs` counts those, and
`mobilenet_v1_table` shows where they differ.
"""

import dataclasses

# Where the 2018_08_02 tarballs were published.
RELEASE_URL = 'http://download.tensorflow.org/models/mobilenet_v1_2018_08_02/'


def release_name(depth_multiplier, resolution, quantized):
  """The release files' base name: mobilenet_v1_1.0_224, ..._0.25_128_quant.

  Also names models of other widths and resolutions the same way.

  Args:
    depth_multiplier: width multiplier; printed as Python prints floats, so
      1 -> 1.0 and 0.50 -> 0.5, as the released file names have it.
    resolution: input resolution (square).
    quantized: whether the model is quantized.

  Returns:
    The name, without extension.
  """
  return 'mobilenet_v1_%s_%d%s' % (float(depth_multiplier), resolution,
                                   '_quant' if quantized else '')


@dataclasses.dataclass(frozen=True)
class Variant(object):
  """One released variant and its published figures.

  Attributes:
    depth_multiplier: the width multiplier.
    resolution: the input resolution (square).
    million_macs: published Million multiply-accumulates, logits included.
    million_params: published Million Parameters.
    top1: published float top-1 accuracy, percent.
    top5: published float top-5 accuracy, percent.
    quant_top1: published 8-bit top-1 accuracy, percent.
    quant_top5: published 8-bit top-5 accuracy, percent.
  """
  depth_multiplier: float
  resolution: int
  million_macs: int
  million_params: float
  top1: float
  top5: float
  quant_top1: float
  quant_top5: float

  @property
  def name(self):
    """The short name, width and resolution: '1.0_224', '0.5_160'."""
    return '%s_%d' % (float(self.depth_multiplier), self.resolution)

  @property
  def label(self):
    """The name in the seed table: 'MobileNet_v1_1.0_224', '..._0.50_160'."""
    return 'MobileNet_v1_%s_%d' % (
        '%.2f' % self.depth_multiplier if self.depth_multiplier < 1 else
        '1.0', self.resolution)

  def release_name(self, quantized):
    """The release files' base name (see the module's `release_name`)."""
    return release_name(self.depth_multiplier, self.resolution, quantized)

  def release_url(self, quantized):
    """The URL of the release tarball (checkpoint, frozen graph, .tflite)."""
    return RELEASE_URL + self.release_name(quantized) + '.tgz'


# Width, resolution, then the published MACs, parameters, float top-1 and
# top-5, quantized top-1 and top-5, in the seed table's order.
VARIANTS = tuple(Variant(*row) for row in [
    (1.0, 224, 569, 4.24, 70.9, 89.9, 70.1, 88.9),
    (1.0, 192, 418, 4.24, 70.0, 89.2, 69.2, 88.3),
    (1.0, 160, 291, 4.24, 68.0, 87.7, 67.2, 86.7),
    (1.0, 128, 186, 4.24, 65.2, 85.8, 63.4, 84.2),
    (0.75, 224, 317, 2.59, 68.4, 88.2, 66.8, 87.0),
    (0.75, 192, 233, 2.59, 67.2, 87.3, 66.1, 86.4),
    (0.75, 160, 162, 2.59, 65.3, 86.0, 62.3, 83.8),
    (0.75, 128, 104, 2.59, 62.1, 83.9, 55.8, 78.8),
    (0.5, 224, 150, 1.34, 63.3, 84.9, 60.7, 83.2),
    (0.5, 192, 110, 1.34, 61.7, 83.6, 60.0, 82.2),
    (0.5, 160, 77, 1.34, 59.1, 81.9, 57.7, 80.4),
    (0.5, 128, 49, 1.34, 56.3, 79.4, 54.5, 77.7),
    (0.25, 224, 41, 0.47, 49.8, 74.2, 48.0, 72.8),
    (0.25, 192, 34, 0.47, 47.7, 72.3, 46.0, 71.2),
    (0.25, 160, 21, 0.47, 45.5, 70.3, 43.4, 68.5),
    (0.25, 128, 14, 0.47, 41.5, 66.3, 39.5, 64.4),
])

# The released widths and resolutions, largest first.
WIDTHS = tuple(sorted({v.depth_multiplier for v in VARIANTS}, reverse=True))
RESOLUTIONS = tuple(sorted({v.resolution for v in VARIANTS}, reverse=True))

_BY_NAME = {v.name: v for v in VARIANTS}
_BY_SHAPE = {(v.depth_multiplier, v.resolution): v for v in VARIANTS}


def by_name(name):
  """The variant of a short name such as '1.0_224'.

  Args:
    name: the variant's `name`.

  Returns:
    The Variant.

  Raises:
    KeyError: no released variant has that name.
  """
  if name not in _BY_NAME:
    raise KeyError('no released MobileNet V1 is named %r; the variants are '
                   '%s' % (name, ', '.join(_BY_NAME)))
  return _BY_NAME[name]


def find(depth_multiplier, resolution):
  """The released variant of a width and resolution, or None.

  Args:
    depth_multiplier: the width multiplier (0.5 and 0.50 alike).
    resolution: the input resolution.

  Returns:
    The Variant, or None where Google released no such model.
  """
  return _BY_SHAPE.get((float(depth_multiplier), int(resolution)))
