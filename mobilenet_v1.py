"""MobileNet V1, as a tf-slim model definition.

MobileNets [1] factor each standard convolution into a depthwise convolution
(one 3x3 filter per input channel) and a 1x1 pointwise convolution, cutting
computation by roughly 8-9x at a small cost in accuracy. Two hyper-parameters
trade accuracy for speed and size: the width multiplier `depth_multiplier`
(0.25, 0.5, 0.75, 1.0) thins every layer, and the input resolution (128, 160,
192, 224) shrinks every feature map.

Variable names follow Google's released checkpoints exactly
(`MobilenetV1/Conv2d_0/weights`, `MobilenetV1/Conv2d_1_depthwise/
depthwise_weights`, `MobilenetV1/Conv2d_1_pointwise/BatchNorm/gamma`, ...), so
`mobilenet_v1_1.0_224.ckpt` and its 31 siblings restore with a plain Saver.

Usage:

  with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(is_training=False)):
    logits, end_points = mobilenet_v1.mobilenet_v1(images, num_classes=1001,
                                                   is_training=False)

[1] Andrew G. Howard et al., "MobileNets: Efficient Convolutional Neural
    Networks for Mobile Vision Applications", arXiv:1704.04861, 2017.
"""

import collections
import functools

from runtime.slim_compat import slim
import tensorflow as tf

tf1 = tf.compat.v1

# A layer of the network body: a standard 3x3 convolution, or a
# depthwise-separable convolution (3x3 depthwise then 1x1 pointwise).
Conv = collections.namedtuple('Conv', ['kernel', 'stride', 'depth'])
DepthSepConv = collections.namedtuple('DepthSepConv',
                                      ['kernel', 'stride', 'depth'])

# The body of Table 1 of the paper. Layer i is named `Conv2d_i`.
MOBILENETV1_CONV_DEFS = (
    Conv(kernel=[3, 3], stride=2, depth=32),
    DepthSepConv(kernel=[3, 3], stride=1, depth=64),
    DepthSepConv(kernel=[3, 3], stride=2, depth=128),
    DepthSepConv(kernel=[3, 3], stride=1, depth=128),
    DepthSepConv(kernel=[3, 3], stride=2, depth=256),
    DepthSepConv(kernel=[3, 3], stride=1, depth=256),
    DepthSepConv(kernel=[3, 3], stride=2, depth=512),
    DepthSepConv(kernel=[3, 3], stride=1, depth=512),
    DepthSepConv(kernel=[3, 3], stride=1, depth=512),
    DepthSepConv(kernel=[3, 3], stride=1, depth=512),
    DepthSepConv(kernel=[3, 3], stride=1, depth=512),
    DepthSepConv(kernel=[3, 3], stride=1, depth=512),
    DepthSepConv(kernel=[3, 3], stride=2, depth=1024),
    DepthSepConv(kernel=[3, 3], stride=1, depth=1024),
)

VALID_OUTPUT_STRIDES = (8, 16, 32)


def endpoint_names(conv_defs=MOBILENETV1_CONV_DEFS):
  """Returns the body's end-point names in network order.

  Args:
    conv_defs: the layer table of the body.

  Returns:
    A list such as ['Conv2d_0', 'Conv2d_1_depthwise', 'Conv2d_1_pointwise',
    ...].
  """
  names = []
  for i, conv_def in enumerate(conv_defs):
    if isinstance(conv_def, DepthSepConv):
      names += ['Conv2d_%d_depthwise' % i, 'Conv2d_%d_pointwise' % i]
    else:
      names.append('Conv2d_%d' % i)
  return names


def _fixed_padding(inputs, kernel_size, rate=1):
  """Pads `inputs` so a VALID convolution matches TF-Lite's SAME alignment.

  SAME padding in TensorFlow pads more on the bottom/right for even inputs;
  padding explicitly (and symmetrically) gives results that do not depend on
  the input size being even or odd.

  Args:
    inputs: a [batch, height, width, channels] tensor.
    kernel_size: [kernel_height, kernel_width] of the following convolution.
    rate: its dilation rate.

  Returns:
    The padded tensor.
  """
  effective = [kernel_size[0] + (kernel_size[0] - 1) * (rate - 1),
               kernel_size[1] + (kernel_size[1] - 1) * (rate - 1)]
  pad_total = [effective[0] - 1, effective[1] - 1]
  pad_begin = [pad_total[0] // 2, pad_total[1] // 2]
  pad_end = [pad_total[0] - pad_begin[0], pad_total[1] - pad_begin[1]]
  return tf.pad(inputs, [[0, 0], [pad_begin[0], pad_end[0]],
                         [pad_begin[1], pad_end[1]], [0, 0]])


def mobilenet_v1_base(inputs,
                      final_endpoint=None,
                      min_depth=8,
                      depth_multiplier=1.0,
                      conv_defs=None,
                      output_stride=None,
                      use_explicit_padding=False,
                      scope=None):
  """Builds the MobileNet V1 body, from the input to `final_endpoint`.

  Args:
    inputs: a float tensor of shape [batch, height, width, channels].
    final_endpoint: the end point to stop at, one of
      `endpoint_names(conv_defs)`; None for the last layer of the body
      ('Conv2d_13_pointwise' for the standard one).
    min_depth: no layer is thinner than this, whatever the multiplier.
    depth_multiplier: the width multiplier: every layer has
      `max(int(depth * depth_multiplier), min_depth)` channels.
    conv_defs: a sequence of `Conv` / `DepthSepConv` tuples; defaults to
      `MOBILENETV1_CONV_DEFS`.
    output_stride: the ratio of input to output resolution (8, 16 or 32).
      Past it, layers keep their resolution and use atrous convolution
      instead, for dense prediction. None means 32 (no atrous layers).
    use_explicit_padding: pad explicitly and convolve with VALID padding, so
      that results do not depend on the alignment of SAME padding.
    scope: the variable scope; 'MobilenetV1' by default.

  Returns:
    net: the tensor at `final_endpoint`.
    end_points: a dict from end-point name to tensor.

  Raises:
    ValueError: if depth_multiplier <= 0, final_endpoint is unknown,
      output_stride is not 8, 16 or 32, a conv_def is of an unknown type, or
      the input is not of rank 4.
  """
  if depth_multiplier <= 0:
    raise ValueError('depth_multiplier must be greater than zero, got %r.' %
                     (depth_multiplier,))
  if output_stride is not None and output_stride not in VALID_OUTPUT_STRIDES:
    raise ValueError('output_stride must be one of %s or None, got %r.' %
                     (VALID_OUTPUT_STRIDES, output_stride))
  conv_defs = MOBILENETV1_CONV_DEFS if conv_defs is None else conv_defs
  for conv_def in conv_defs:
    if not isinstance(conv_def, (Conv, DepthSepConv)):
      raise ValueError('Unknown conv_def %r: use Conv or DepthSepConv.' %
                       (conv_def,))
  names = endpoint_names(conv_defs)
  final_endpoint = final_endpoint or names[-1]
  if final_endpoint not in names:
    raise ValueError('Unknown final_endpoint %r; valid end points are %s.' %
                     (final_endpoint, ', '.join(names)))
  if inputs.shape.rank != 4:
    raise ValueError('Expected inputs of rank 4 [batch, height, width, '
                     'channels], got shape %s.' % (inputs.shape,))

  def depth(d):
    return max(int(d * depth_multiplier), min_depth)

  padding = 'VALID' if use_explicit_padding else 'SAME'
  end_points = {}
  with tf1.variable_scope(scope, 'MobilenetV1', [inputs]):
    with slim.arg_scope([slim.conv2d, slim.separable_conv2d], padding=padding):
      # current_stride is the input-to-output ratio so far; once it reaches
      # output_stride, later strides turn into dilation (atrous) instead.
      current_stride = 1
      rate = 1
      net = inputs
      for i, conv_def in enumerate(conv_defs):
        if output_stride is not None and current_stride == output_stride:
          layer_stride = 1
          layer_rate = rate
          rate *= conv_def.stride
        else:
          layer_stride = conv_def.stride
          layer_rate = 1
          current_stride *= conv_def.stride

        if isinstance(conv_def, Conv):
          name = 'Conv2d_%d' % i
          if use_explicit_padding:
            net = _fixed_padding(net, conv_def.kernel)
          net = slim.conv2d(net, depth(conv_def.depth), conv_def.kernel,
                            stride=layer_stride, scope=name)
          end_points[name] = net
          if name == final_endpoint:
            return net, end_points
          continue

        name = 'Conv2d_%d_depthwise' % i
        if use_explicit_padding:
          net = _fixed_padding(net, conv_def.kernel, layer_rate)
        net = slim.separable_conv2d(net, None, conv_def.kernel,
                                    depth_multiplier=1, stride=layer_stride,
                                    rate=layer_rate, scope=name)
        end_points[name] = net
        if name == final_endpoint:
          return net, end_points

        name = 'Conv2d_%d_pointwise' % i
        net = slim.conv2d(net, depth(conv_def.depth), [1, 1], stride=1,
                          scope=name)
        end_points[name] = net
        if name == final_endpoint:
          return net, end_points
  raise AssertionError('unreachable: final_endpoint was validated above')


def _reduced_kernel_size_for_small_input(input_tensor, kernel_size):
  """Shrinks the pooling kernel to the feature map when the map is smaller.

  Args:
    input_tensor: a [batch, height, width, channels] tensor.
    kernel_size: the desired [height, width] of the kernel.

  Returns:
    The kernel size to use; the desired one when the map's size is unknown.
  """
  height, width = input_tensor.shape[1], input_tensor.shape[2]
  if height is None or width is None:
    return kernel_size
  return [min(height, kernel_size[0]), min(width, kernel_size[1])]


def mobilenet_v1(inputs,
                 num_classes=1000,
                 dropout_keep_prob=0.999,
                 is_training=True,
                 min_depth=8,
                 depth_multiplier=1.0,
                 conv_defs=None,
                 prediction_fn=slim.softmax,
                 spatial_squeeze=True,
                 reuse=None,
                 scope='MobilenetV1',
                 global_pool=False):
  """Builds MobileNet V1 for classification: body, pooling, logits.

  Args:
    inputs: a float tensor of shape [batch, height, width, 3], in [-1, 1].
    num_classes: number of predicted classes (1001 for the released ImageNet
      models: class 0 is background). 0 or None skips the logits layer and
      returns the pooled features.
    dropout_keep_prob: the probability of keeping an activation before the
      logits layer, during training.
    is_training: whether dropout is active and batch norms use batch
      statistics (this overrides `mobilenet_v1_arg_scope`'s is_training, as
      in slim's original).
    min_depth: see `mobilenet_v1_base`.
    depth_multiplier: see `mobilenet_v1_base`.
    conv_defs: see `mobilenet_v1_base`.
    prediction_fn: turns logits into predictions.
    spatial_squeeze: squeeze the logits' 1x1 spatial dimensions.
    reuse: whether to reuse the variables of an earlier call.
    scope: the variable scope.
    global_pool: average over the whole final feature map, whatever its size
      (for inputs of any size). Otherwise a fixed 7x7 average pool (shrunk
      for smaller maps) as in the released models.

  Returns:
    net: the logits [batch, num_classes] (with spatial_squeeze), or the
      pooled features [batch, 1, 1, depth] when num_classes is 0 or None.
    end_points: a dict from end-point name to tensor.

  Raises:
    ValueError: if the input is not of rank 4, or for the reasons listed in
      `mobilenet_v1_base`.
  """
  if inputs.shape.rank != 4:
    raise ValueError('Expected inputs of rank 4 [batch, height, width, '
                     'channels], got shape %s.' % (inputs.shape,))
  with tf1.variable_scope(scope, 'MobilenetV1', [inputs],
                          reuse=reuse) as scope:
    with slim.arg_scope([slim.batch_norm, slim.dropout],
                        is_training=is_training):
      net, end_points = mobilenet_v1_base(
          inputs, scope=scope, min_depth=min_depth,
          depth_multiplier=depth_multiplier, conv_defs=conv_defs)
      with tf1.variable_scope('Logits'):
        if global_pool:
          net = tf.reduce_mean(net, [1, 2], keepdims=True, name='global_pool')
          end_points['global_pool'] = net
        else:
          kernel_size = _reduced_kernel_size_for_small_input(net, [7, 7])
          net = slim.avg_pool2d(net, kernel_size, padding='VALID',
                                scope='AvgPool_1a')
          end_points['AvgPool_1a'] = net
        if not num_classes:
          return net, end_points
        net = slim.dropout(net, keep_prob=dropout_keep_prob, scope='Dropout_1b')
        logits = slim.conv2d(net, num_classes, [1, 1], activation_fn=None,
                             normalizer_fn=None, scope='Conv2d_1c_1x1')
        if spatial_squeeze:
          logits = tf.squeeze(logits, [1, 2], name='SpatialSqueeze')
      end_points['Logits'] = logits
      if prediction_fn:
        end_points['Predictions'] = prediction_fn(logits, scope='Predictions')
  return logits, end_points


mobilenet_v1.default_image_size = 224


def wrapped_partial(func, *args, **kwargs):
  """`functools.partial` that keeps the wrapped function's name and doc."""
  partial = functools.partial(func, *args, **kwargs)
  functools.update_wrapper(partial, func)
  return partial


mobilenet_v1_075 = wrapped_partial(mobilenet_v1, depth_multiplier=0.75)
mobilenet_v1_050 = wrapped_partial(mobilenet_v1, depth_multiplier=0.50)
mobilenet_v1_025 = wrapped_partial(mobilenet_v1, depth_multiplier=0.25)


BATCH_NORM_EPSILON = 0.001


def _float32_l2_regularizer(scale):
  """slim.l2_regularizer of the float32 weights, whatever the layer reads.

  Mixed-precision training (training/precision.py) hands each layer a
  bfloat16 copy of its float32 weights; weight decay is taken from the
  float32 weights behind the copy, so that it sums and trains exactly as in
  float32.

  Args:
    scale: the L2 regularization strength.

  Returns:
    A function of the weights a layer reads, as slim.l2_regularizer's.
  """
  l2 = slim.l2_regularizer(scale)

  def regularizer(weights):
    if (weights.dtype != tf.float32 and weights.op.type == 'Cast' and
        weights.op.inputs[0].dtype == tf.float32):
      weights = weights.op.inputs[0]
    return l2(weights)

  return regularizer


def mobilenet_v1_arg_scope(is_training=True,
                           weight_decay=0.00004,
                           stddev=0.09,
                           regularize_depthwise=False,
                           batch_norm_decay=0.9997,
                           batch_norm_epsilon=BATCH_NORM_EPSILON,
                           batch_norm_updates_collections=(
                               tf1.GraphKeys.UPDATE_OPS),
                           normalizer_fn=slim.batch_norm):
  """Default layer arguments of MobileNet V1.

  Args:
    is_training: whether batch norm uses batch statistics and updates its
      moving averages. None leaves batch norm's own default in place, for
      callers that set it in an enclosing arg_scope.
    weight_decay: L2 regularization strength of the convolution weights.
    stddev: standard deviation of the truncated-normal weight initializer.
    regularize_depthwise: also apply L2 regularization to depthwise weights.
    batch_norm_decay: decay of batch norm's moving averages.
    batch_norm_epsilon: added to the variance before its square root.
    batch_norm_updates_collections: where batch norm puts its moving-average
      update ops.
    normalizer_fn: the normalization after each body convolution.

  Returns:
    An arg_scope to build `mobilenet_v1` in.
  """
  batch_norm_params = {
      'center': True,
      'scale': True,
      'decay': batch_norm_decay,
      'epsilon': batch_norm_epsilon,
      'updates_collections': batch_norm_updates_collections,
  }
  if is_training is not None:
    batch_norm_params['is_training'] = is_training

  weights_init = tf1.truncated_normal_initializer(stddev=stddev)
  regularizer = _float32_l2_regularizer(weight_decay)
  depthwise_regularizer = regularizer if regularize_depthwise else None
  with slim.arg_scope([slim.conv2d, slim.separable_conv2d],
                      weights_initializer=weights_init,
                      activation_fn=tf.nn.relu6, normalizer_fn=normalizer_fn):
    with slim.arg_scope([slim.batch_norm], **batch_norm_params):
      with slim.arg_scope([slim.conv2d], weights_regularizer=regularizer):
        with slim.arg_scope([slim.separable_conv2d],
                            weights_regularizer=depthwise_regularizer) as sc:
          return sc
