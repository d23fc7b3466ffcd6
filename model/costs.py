"""Weights, parameters and MACs of MobileNet V1, counted from built graphs.

The counts come from the TensorFlow ops and shapes of a graph that
`mobilenet_v1` builds, not from its layer table, so they check the model
definition; `mobilenet_v1_table` sets them beside the published figures of
`variants`.
"""

import collections

from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

import mobilenet_v1
from model import variants

tf1 = tf.compat.v1

# The op types that count as convolutions (their kernel is their second
# input).
_CONV_OPS = ('Conv2D', 'DepthwiseConv2dNative')

LayerCost = collections.namedtuple('LayerCost', ['name', 'weights', 'macs'])


def layer_costs(depth_multiplier, image_size, num_classes=1001):
  """Counts each convolution's weights and MACs in a freshly built graph.

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
  """Counts the trainable parameters of a model.

  What the published "Million Parameters" counts: conv weights, batch-norm
  scales and shifts, and the logits' biases.

  Args:
    depth_multiplier: the width multiplier.
    num_classes: classes of the logits layer.

  Returns:
    The number of trainable values.
  """
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [1, 224, 224, 3])
    with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(True)):
      mobilenet_v1.mobilenet_v1(images, num_classes=num_classes,
                                depth_multiplier=depth_multiplier)
    return sum(v.shape.num_elements() for v in tf1.trainable_variables())


def computed_table():
  """Counts the MACs and parameters of every released variant.

  Returns:
    {variant name: (million MACs, million parameters)}, for each of
    `variants.VARIANTS`, MACs including the 1001-class logits.
  """
  params = {width: parameter_count(width) / 1e6 for width in variants.WIDTHS}
  return {
      v.name: (sum(c.macs for c in layer_costs(v.depth_multiplier,
                                                v.resolution)) / 1e6,
               params[v.depth_multiplier])
      for v in variants.VARIANTS
  }
