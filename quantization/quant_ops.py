"""Fake quantization ops and the range variables they read and update.

The counterpart of contrib.quantize's `quant_ops.py`: each function builds
an 8-bit fake quant of one tensor under a name scope, with its `min` and
`max` range variables, and, in training graphs, the ops that update the
range from each batch. Where the fake quant goes in the graph is
`quantizer`'s business; these functions only build it.

Range variables are `<scope>/min` and `<scope>/max`, global and model
variables, non-trainable, so that a Saver saves them and an eval graph built
the same way restores them. The scopes end in `WEIGHTS_QUANT`, `ACT_QUANT`,
`CONV_QUANT` (before a residual Add) or `ADD_QUANT` (after one).
"""

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from tensorflow.python.training import moving_averages
from quantization import graph_editing

tf1 = tf.compat.v1

NUM_BITS = 8
# contrib.quantize's decay of the activation ranges' moving averages.
EMA_DECAY = 0.999

WEIGHTS_QUANT = 'weights_quant'
ACT_QUANT = 'act_quant'
CONV_QUANT = 'conv_quant'
ADD_QUANT = 'add_quant'

# Initial ranges. Weight ranges are overwritten by every training step; an
# activation range starts at [0, 6] after a ReLU (it never goes below 0, and
# an EMA starting at -6 would take thousands of steps to get there) and at
# contrib.quantize's [-6, 6] elsewhere.
INIT_RANGE = (-6.0, 6.0)
INIT_RELU_RANGE = (0.0, 6.0)

# How a training graph updates a range from each batch (see `fake_quant`).
MOVING_AVERAGE = 'moving_average'
LAST_VALUE = 'last_value'
EXTREMES = 'extremes'

# The smallest per-channel weight bound: a channel of zero weights would
# otherwise get a zero scale, which TFLite refuses. Any larger weight keeps
# its own bound.
_MIN_WEIGHT_BOUND = 1e-5

# Ops whose output is never negative: ReLUs and batch_norm_relu6's fused op.
_NONNEGATIVE_TYPES = graph_editing.ACTIVATION_TYPES | {
    graph_editing.BATCH_NORM_RELU6_TYPE}


def range_variables(scope, init_range, shape=()):
  """Creates the `<scope>/min` and `<scope>/max` range variables.

  Args:
    scope: the absolute name scope of the fake quant.
    init_range: (min, max) initial values.
    shape: the variables' shape: () per tensor, [channels] per channel.

  Returns:
    [min variable, max variable].
  """
  # A VariableScope object is entered as an absolute scope, whatever
  # variable scope the caller is in, so names match across graphs.
  with tf1.variable_scope(tf1.VariableScope(reuse=False, name=scope),
                          auxiliary_name_scope=False):
    return [
        tf1.get_variable(
            name, shape=list(shape), dtype=tf.float32,
            initializer=tf1.constant_initializer(value), trainable=False,
            collections=[tf1.GraphKeys.GLOBAL_VARIABLES,
                         tf1.GraphKeys.MODEL_VARIABLES])
        for name, value in zip(['min', 'max'], init_range)
    ]


def fake_quant(tensor, scope, updates, narrow_range, init_range, is_training,
               symmetric=False, use_quant=None):
  """A per-tensor 8-bit fake quant of `tensor`, with its range variables.

  Training graphs update the ranges as contrib.quantize did: weights take
  their last value (LAST_VALUE: the weights' [min, max] with 0 inside, or
  [-max|W|, max|W|] for symmetric weights), activations an exponential
  moving average of each batch's [min, max] (MOVING_AVERAGE, with 0
  inside), zero-debiased so that it starts from the data, with its slots
  (`<scope>/<scope>/{min,max}/{biased,local_step}`) saved alongside the
  ranges, so that fine-tuning from a quantized checkpoint carries its
  averages on.

  The model's output (a classifier's logits, which no activation bounds)
  keeps the extremes seen since quantization started (EXTREMES), as
  post-training calibration takes them: its ranking lives at the top of its
  range, where clipping ties the best classes, and the training distortions
  keep most batches below the logits of undistorted images, so an average
  of batch maxima clips those.

  Eval graphs only read the ranges.

  A bfloat16 tensor (mixed bfloat16 training) is quantized in float32, its
  ranges updated in float32, and the result cast back to bfloat16
  (graph_editing.in_float32); a bfloat16 copy of float32 weights is
  quantized from the float32 weights themselves.

  Args:
    tensor: the float32 or bfloat16 tensor to quantize.
    scope: the absolute name scope of the new ops and range variables.
    updates: how training updates the range: MOVING_AVERAGE, LAST_VALUE or
      EXTREMES.
    narrow_range: quantize to [1, 255] instead of [0, 255].
    init_range: (min, max) initial values of the range variables.
    is_training: update the range from the data rather than only read it.
    symmetric: LAST_VALUE ranges symmetric about zero.
    use_quant: None, or a boolean tensor: False passes `tensor` through
      unquantized (the quantization delay).

  Returns:
    The quantized tensor, in `tensor`'s dtype.
  """
  # Its minimum is at least 0, so the range's lower end is 0. Read from
  # `tensor`: what `quantize` gets may be a float32 cast of it.
  nonnegative = tensor.op.type in _NONNEGATIVE_TYPES
  min_var, max_var = range_variables(scope, init_range)

  def quantize(float_tensor):
    if not is_training:
      low, high = min_var.value(), max_var.value()
    else:
      if nonnegative:
        batch_min = tf.constant(0.0, name='BatchMin')
      else:
        batch_min = tf.minimum(tf.reduce_min(float_tensor), 0.0,
                               name='BatchMin')
      batch_max = tf.maximum(tf.reduce_max(float_tensor), 0.0,
                             name='BatchMax')
      if updates == MOVING_AVERAGE:
        with tf1.variable_scope(tf1.VariableScope(reuse=False, name=scope),
                                auxiliary_name_scope=False):
          low = moving_averages.assign_moving_average(
              min_var, batch_min, EMA_DECAY, zero_debias=True,
              name='AssignMinEma')
          high = moving_averages.assign_moving_average(
              max_var, batch_max, EMA_DECAY, zero_debias=True,
              name='AssignMaxEma')
      elif updates == EXTREMES:
        low, high = tf.minimum(min_var, batch_min), tf.maximum(
            max_var, batch_max)
        if use_quant is not None:
          # Before quantization starts the range follows the data, so the
          # extremes of early training are not kept.
          low = tf.where(use_quant, low, batch_min)
          high = tf.where(use_quant, high, batch_max)
        low = tf1.assign(min_var, tf.stop_gradient(low),
                         name='AssignMinExtreme')
        high = tf1.assign(max_var, tf.stop_gradient(high),
                          name='AssignMaxExtreme')
      else:
        if symmetric:
          batch_max = tf.maximum(-batch_min, batch_max)
          batch_min = -batch_max
        low = tf1.assign(min_var, tf.stop_gradient(batch_min),
                         name='AssignMinLast')
        high = tf1.assign(max_var, tf.stop_gradient(batch_max),
                          name='AssignMaxLast')
    quantized = tf.quantization.fake_quant_with_min_max_vars(
        float_tensor, low, high, num_bits=NUM_BITS, narrow_range=narrow_range)
    if use_quant is not None:
      quantized = tf.where(use_quant, quantized, float_tensor,
                           name='delayed_quant')
    return quantized

  with tensor.graph.name_scope(scope + '/'):
    return graph_editing.in_float32(tensor, quantize)


def per_channel_weight_fake_quant(layer_op, scope, is_training,
                                  folded_multiplier=None, use_quant=None):
  """An 8-bit fake quant of a layer's weights, one range per output channel.

  Each output channel gets its own range symmetric about zero (TFLite's int8
  scheme), narrow range, from the weights' last value. The channels are a
  Conv2D's last axis, a depthwise weight [h, w, in, k] reshaped to
  [h, w, 1, in * k] (its output channels, in the order the op outputs
  them), a MatMul's output axis.

  Args:
    layer_op: the (possibly folded) layer op; its second input is the
      weights.
    scope: the absolute name scope of the new ops and range variables.
    is_training: set the ranges from the weights rather than only read them.
    folded_multiplier: None, or (training with kept batch norms) the
      per-channel multiplier m that inference folds into these weights: the
      weights are quantized with their own ranges, and the range variables
      hold those of W * m, |m| times theirs.
    use_quant: None, or a boolean tensor: False passes the weights through
      unquantized (the quantization delay).

  Returns:
    The quantized weights, in the weights' shape and dtype: a bfloat16 copy
    of float32 weights (mixed bfloat16 training) is quantized from the
    float32 weights, ranges and all, and the result cast to bfloat16
    (graph_editing.in_float32).
  """
  weights = layer_op.inputs[1]
  graph = layer_op.graph
  transpose = layer_op.type == 'MatMul' and layer_op.get_attr('transpose_b')
  shape = weights.shape.as_list()
  if layer_op.type == 'DepthwiseConv2dNative':
    height, width, inputs, multiplier = shape
    channels_last_shape = [height, width, 1, inputs * multiplier]
  elif transpose:
    channels_last_shape = shape[::-1]
  else:
    channels_last_shape = shape
  min_var, max_var = range_variables(scope, INIT_RANGE,
                                     shape=channels_last_shape[-1:])

  def quantize(float_weights):
    channels_last = float_weights
    if layer_op.type == 'DepthwiseConv2dNative':
      channels_last = tf.reshape(float_weights, channels_last_shape,
                                 name='channels_last')
    elif transpose:
      channels_last = tf.transpose(float_weights, name='channels_last')
    if is_training:
      # The range is a statistic of the weights, not a path for their
      # gradients: the straight-through estimator passes gradients to the
      # weights inside their range.
      bound = tf.maximum(tf.stop_gradient(tf.reduce_max(
          tf.abs(channels_last),
          axis=list(range(channels_last.shape.rank - 1)))),
                         _MIN_WEIGHT_BOUND, name='bound')
      saved_bound = bound
      if folded_multiplier is not None:
        saved_bound = tf.maximum(
            bound * tf.stop_gradient(tf.abs(folded_multiplier)),
            _MIN_WEIGHT_BOUND, name='folded_bound')
      with tf.control_dependencies([
          tf1.assign(min_var, -saved_bound, name='AssignMin'),
          tf1.assign(max_var, saved_bound, name='AssignMax')]):
        low, high = tf.negative(bound), tf.identity(bound)
    else:
      low, high = min_var.value(), max_var.value()

    def fake_quant_per_channel(values):
      return tf.quantization.fake_quant_with_min_max_vars_per_channel(
          values, low, high, num_bits=NUM_BITS, narrow_range=True)

    if is_training:
      # Every weight lies inside its channel's range [-max|W|, max|W|],
      # where the fake quant's straight-through gradient is the identity:
      # pass the gradient through as such, without the fake quant's
      # gradient kernel or a subtraction and addition of the weights
      # (w + stop_gradient(q - w)) that would stream them twice more.
      quantized = tf.grad_pass_through(fake_quant_per_channel)(channels_last)
    else:
      quantized = fake_quant_per_channel(channels_last)
    if layer_op.type == 'DepthwiseConv2dNative':
      quantized = tf.reshape(quantized, shape, name='quantized')
    elif transpose:
      quantized = tf.transpose(quantized, name='quantized')
    if use_quant is not None:
      quantized = tf.where(use_quant, quantized, float_weights,
                           name='delayed_quant')
    return quantized

  with graph.name_scope(scope + '/'):
    return graph_editing.in_float32(weights, quantize)
