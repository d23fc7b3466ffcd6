r"""Prints the MobileNet V1 variants' costs and accuracies, and charts them.

For each of the 16 width/resolution variants, shows the released models'
published figures (Million MACs, Million Parameters, top-1/top-5, float and
8-bit) beside the MACs and parameters counted from the graph our
`mobilenet_v1` builds, flags where the published figure differs, and with
--chart writes an accuracy-vs-MACs chart like the seed's mobilenet_v1.png.

  bazel run //:mobilenet_v1_table -- --chart=/tmp/mobilenet_v1.png
"""

import collections
import os

from absl import app
from absl import flags
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

import mobilenet_v1

tf1 = tf.compat.v1

FLAGS = flags.FLAGS
flags.DEFINE_string('chart', '',
                    'Where to write the accuracy-vs-MACs chart (PNG), e.g. '
                    '/tmp/mobilenet_v1.png; empty (the default) writes none. '
                    'Relative paths are under the directory the command was '
                    'started in.')

# Published figures of the released checkpoints (2018_08_02 tarballs):
# million MACs, million parameters, float top-1/top-5, quantized top-1/top-5
# (the latter measured on the TFLite model itself).
Published = collections.namedtuple(
    'Published', ['macs', 'params', 'top1', 'top5', 'quant_top1',
                  'quant_top5'])
PUBLISHED = {
    (1.0, 224): Published(569, 4.24, 70.9, 89.9, 70.1, 88.9),
    (1.0, 192): Published(418, 4.24, 70.0, 89.2, 69.2, 88.3),
    (1.0, 160): Published(291, 4.24, 68.0, 87.7, 67.2, 86.7),
    (1.0, 128): Published(186, 4.24, 65.2, 85.8, 63.4, 84.2),
    (0.75, 224): Published(317, 2.59, 68.4, 88.2, 66.8, 87.0),
    (0.75, 192): Published(233, 2.59, 67.2, 87.3, 66.1, 86.4),
    (0.75, 160): Published(162, 2.59, 65.3, 86.0, 62.3, 83.8),
    (0.75, 128): Published(104, 2.59, 62.1, 83.9, 55.8, 78.8),
    (0.5, 224): Published(150, 1.34, 63.3, 84.9, 60.7, 83.2),
    (0.5, 192): Published(110, 1.34, 61.7, 83.6, 60.0, 82.2),
    (0.5, 160): Published(77, 1.34, 59.1, 81.9, 57.7, 80.4),
    (0.5, 128): Published(49, 1.34, 56.3, 79.4, 54.5, 77.7),
    (0.25, 224): Published(41, 0.47, 49.8, 74.2, 48.0, 72.8),
    (0.25, 192): Published(34, 0.47, 47.7, 72.3, 46.0, 71.2),
    (0.25, 160): Published(21, 0.47, 45.5, 70.3, 43.4, 68.5),
    (0.25, 128): Published(14, 0.47, 41.5, 66.3, 39.5, 64.4),
}
WIDTHS = (1.0, 0.75, 0.5, 0.25)
RESOLUTIONS = (224, 192, 160, 128)

# The multiply-accumulates of one output value, per convolution op type.
_CONV_OPS = ('Conv2D', 'DepthwiseConv2dNative')

LayerCost = collections.namedtuple('LayerCost', ['name', 'weights', 'macs'])


def layer_costs(depth_multiplier, image_size, num_classes=1001):
  """Counts each convolution's weights and MACs in a freshly built graph.

  Counts come from the TensorFlow ops and shapes of the graph, not from the
  layer table, so they check the model definition.

  Args:
    depth_multiplier: the width multiplier.
    image_size: the input resolution (square).
    num_classes: classes of the logits layer; 0 for the body alone.

  Returns:
    A list of LayerCost in network order, one per convolution, named after
    its scope under 'MobilenetV1/' (e.g. 'Conv2d_1_depthwise',
    'Logits/Conv2d_1c_1x1'). Weights count the kernel only (no batch norm
    or biases); MACs are output values times kernel volume per output.
  """
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [1, image_size, image_size, 3])
    with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(False)):
      mobilenet_v1.mobilenet_v1(images, num_classes=num_classes,
                                depth_multiplier=depth_multiplier,
                                is_training=False)
  costs = []
  for op in graph.get_operations():
    if op.type not in _CONV_OPS:
      continue
    kernel_shape = op.inputs[1].shape.as_list()
    output_shape = op.outputs[0].shape.as_list()
    kernel_height, kernel_width, in_channels, per_channel = kernel_shape
    weights = kernel_height * kernel_width * in_channels * per_channel
    if op.type == 'Conv2D':
      macs_per_output = kernel_height * kernel_width * in_channels
    else:  # each depthwise output value sees one input channel
      macs_per_output = kernel_height * kernel_width
    output_values = output_shape[1] * output_shape[2] * output_shape[3]
    # Op names repeat the model scope ('MobilenetV1/MobilenetV1/Conv2d_0/
    # Conv2D', as in the released frozen graphs) and separable_conv2d nests
    # its depthwise op one scope deeper.
    scopes = [s for s in op.name.split('/')[:-1]
              if s not in ('MobilenetV1', 'depthwise')]
    name = '/'.join(scopes)
    costs.append(LayerCost(name, weights, output_values * macs_per_output))
  return costs


def parameter_count(depth_multiplier, num_classes=1001):
  """Counts trainable parameters: conv weights, batch-norm scales and shifts,
  and logits biases (what the published "Million Parameters" counts)."""
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [1, 224, 224, 3])
    with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(True)):
      mobilenet_v1.mobilenet_v1(images, num_classes=num_classes,
                                depth_multiplier=depth_multiplier)
    return sum(v.shape.num_elements() for v in tf1.trainable_variables())


def variant_name(depth_multiplier, image_size):
  return 'MobileNet_v1_%s_%d' % (
      {1.0: '1.0', 0.75: '0.75', 0.5: '0.50', 0.25: '0.25'}[depth_multiplier],
      image_size)


def computed_table():
  """Returns {(width, resolution): (million MACs, million params)} computed
  from our graphs (MACs including the 1001-class logits)."""
  table = {}
  for width in WIDTHS:
    params = parameter_count(width) / 1e6
    for resolution in RESOLUTIONS:
      macs = sum(c.macs for c in layer_costs(width, resolution)) / 1e6
      table[(width, resolution)] = (macs, params)
  return table


def format_table(computed):
  """Formats published and computed figures side by side, flagging
  published figures the architecture does not give."""
  header = ('%-22s %9s %9s %8s %8s %6s %6s %6s %6s' %
            ('Model', 'MACs(M)', 'ours', 'Params', 'ours', 'top1', 'top5',
             'q-top1', 'q-top5'))
  lines = [header, '-' * len(header)]
  flagged = []
  for key in sorted(PUBLISHED, key=lambda k: (-k[0], -k[1])):
    published = PUBLISHED[key]
    macs, params = computed[key]
    mac_flag = '' if abs(macs - published.macs) < 1 else ' *'
    if mac_flag:
      flagged.append('%s: published %d million MACs, the architecture gives '
                     '%.1f' % (variant_name(*key), published.macs, macs))
    lines.append('%-22s %9d %7.1f%-2s %8.2f %8.2f %6.1f %6.1f %6.1f %6.1f' %
                 (variant_name(*key), published.macs, macs, mac_flag,
                  published.params, params, published.top1, published.top5,
                  published.quant_top1, published.quant_top5))
  lines.append('')
  lines.append('MACs include the 1001-class logits layer; parameters count '
               'conv weights, batch-norm scale/shift and logits biases.')
  if flagged:
    lines.append('* published figure differs from the architecture:')
    lines.extend('  ' + f for f in flagged)
  return '\n'.join(lines)


def write_chart(computed, path):
  """Plots top-1 accuracy against MACs (log scale), one line per width."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  figure, axes = pyplot.subplots(figsize=(8, 5.5))
  for width in WIDTHS:
    keys = [(width, r) for r in sorted(RESOLUTIONS)]
    macs = [computed[k][0] for k in keys]
    axes.plot(macs, [PUBLISHED[k].top1 for k in keys], 'o-',
              label='width %s, float' % width)
    axes.plot(macs, [PUBLISHED[k].quant_top1 for k in keys], 'x--',
              color=axes.lines[-1].get_color(), alpha=0.6,
              label='width %s, 8-bit' % width)
    for key, mac in zip(keys, macs):
      axes.annotate(str(key[1]), (mac, PUBLISHED[key].top1),
                    textcoords='offset points', xytext=(4, -10), fontsize=7)
  axes.set_xscale('log')
  axes.set_xticks([10, 20, 50, 100, 200, 500])
  axes.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  axes.set_xlabel('Million multiply-accumulates (log scale)')
  axes.set_ylabel('ImageNet top-1 accuracy (%)')
  axes.set_title('MobileNet V1: accuracy vs. computation '
                 '(labels: input resolution)')
  axes.grid(True, which='both', alpha=0.3)
  axes.legend(fontsize=8, ncol=2, loc='lower right')
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  pyplot.close(figure)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('Unexpected arguments: %s' % ' '.join(argv[1:]))
  computed = computed_table()
  print(format_table(computed))
  if FLAGS.chart:
    # `bazel run` starts us in the runfiles tree; write where the user is.
    path = os.path.join(os.environ.get('BUILD_WORKING_DIRECTORY', ''),
                        FLAGS.chart)
    write_chart(computed, path)
    print('\nChart written to %s' % os.path.abspath(path))
  else:
    print('\n--chart=PATH.png also draws accuracy against MACs.')


if __name__ == '__main__':
  app.run(main)
