"""Batch norm folding for the quantization rewrites.

The counterpart of contrib.quantize's `fold_batch_norms.py`: a batch norm
after a layer is replaced by the layer with folded weights and an offset,
the form TFLite runs. With multiplier m = gamma / sqrt(var + eps) and offset
b = beta - mean * m (both per output channel; a depthwise weight
[h, w, in, k] takes m reshaped to [in, k]) the batch norm output
BN(conv(x, W)) equals conv(x, W * m) + b.

Each batch norm is folded according to its own mode:

* Inference batch norms (moving statistics): m and b from moving_mean and
  moving_variance, as above. This is exactly what TFLite runs.
* Training batch norms (batch statistics), contrib.quantize's variant
  without batch-norm freezing: the batch mean mu_B and biased variance var_B
  are computed from the unfolded convolution's output (which the original
  batch norm op still consumes, so its moving-average updates in UPDATE_OPS
  keep working). With sigma_B = sqrt(var_B + eps),
  sigma_mv = sqrt(moving_variance + eps) and the correction
  c = sigma_B / sigma_mv, the layer becomes

      y = conv(x, quant(W * gamma / sigma_mv)) * (1 / c)
          + (beta - mu_B * gamma / sigma_B)

  The quantized weights W * gamma / sigma_mv are the folded weights that
  inference will use, while y (without quantization) equals the batch norm's
  training output, gradients through the batch statistics included.

In mixed bfloat16 training (bfloat16 layers on float32 variables) folding
computes in float32, as the batch norm does: the folded weights are the
float32 weights times m, cast to bfloat16 for the layer, and the output
scale and offset apply to the layer's output in float32, cast back to
bfloat16 (graph_editing.in_float32).

Optionally, a channel whose moving variance is below the noise that rounding
the layer's (quantized) input adds to it is folded as the constant it
outputs (`_signal_mask`).
"""

import collections

import tensorflow as tf

from quantization import graph_editing

tf1 = tf.compat.v1

# Graph collection of the layer ops that folding created.
FOLDED_LAYERS = 'quantize_folded_layers'

_FUSED_BATCH_NORM_TYPES = frozenset(
    ['FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3'])

# Moving-average updates of batch norm statistics, and how many ops away from
# the batch statistic they may be.
_RESOURCE_ASSIGN_TYPES = frozenset(
    ['AssignSubVariableOp', 'AssignAddVariableOp', 'AssignVariableOp'])
_REF_ASSIGN_TYPES = frozenset(['AssignSub', 'AssignAdd', 'Assign'])
_MAX_UPDATE_DISTANCE = 4

# A batch norm following a layer, in the form folding needs.
#   output: the batch norm's output tensor, replaced by the folded layer.
#   multiplier, offset: per-channel m and b (see the module docstring), from
#     batch statistics when `moving_variance` is set, else moving ones.
#   reciprocal_sigma: 1 / sqrt(variance + eps) for the variance in multiplier.
#   epsilon: the batch norm's epsilon (a Python float or a scalar tensor).
#   moving_variance: the moving variance's value for a training batch norm,
#     None for an inference one.
#   inference_variance: the moving variance, in either mode.
#   beta: the batch norm's offset parameter, or None where the match does not
#     expose it (unfused batch norms).
#   moving_mean: the moving mean's value for a training batch norm whose beta
#     is at hand, else None.
_BatchNorm = collections.namedtuple('_BatchNorm', [
    'output', 'multiplier', 'offset', 'reciprocal_sigma', 'epsilon',
    'moving_variance', 'inference_variance', 'beta', 'moving_mean'
])


def fold_batch_norms(input_graph=None):
  """Folds every batch norm that follows a layer into the layer, in place.

  This is the folding step of the rewrites without any quantization: the
  graph computes the same function as before (up to float rounding). A batch
  norm that is already folded no longer has consumers and is left alone, so
  folding twice is a no-op. The rewrites fold by themselves and refuse a
  graph folded by this function. Each new layer op is added to the
  `FOLDED_LAYERS` graph collection.

  Args:
    input_graph: the tf.Graph to rewrite; the default graph when None.

  Returns:
    The number of batch norms folded.

  Raises:
    ValueError: if the graph already has gradients, or a training batch
      norm's moving variance cannot be found.
  """
  graph = input_graph or tf1.get_default_graph()
  graph_editing.check_no_gradients(graph)
  folded = 0
  with graph.as_default():
    for layer_op, context in graph_editing.find_layers(graph):
      if fold_batch_norm(layer_op, context) is not None:
        folded += 1
  return folded


def fold_batch_norm(layer_op, context, input_scale=None, freeze=None):
  """Folds the batch norm after `layer_op` into a new layer op.

  See the module docstring for the formulas. The new ops live in the
  layer's name scope (`.../mul_fold`, `.../Conv2D_Fold`, `.../add_fold`).

  Args:
    layer_op: a Conv2D, DepthwiseConv2dNative or MatMul op.
    context: the layer's name scope.
    input_scale: the quantization step of the layer's input, or None. When
      given, channels drowned by the input's quantization noise are folded
      to the constant they output (see `_signal_mask`).
    freeze: for a training batch norm, a boolean tensor: while true, fold
      with the moving statistics instead of the batch's, as inference does
      (contrib.quantize's batch norm freezing); None never freezes. Only
      fused batch norms, whose beta is at hand, are frozen.

  Returns:
    (new layer op, folded output tensor), or None if no batch norm follows
    `layer_op`. The new layer op's second input is the folded weights.
  """
  graph = layer_op.graph
  conv_output = graph_editing.skip_batch_to_space(layer_op.outputs[0])
  with graph.name_scope(context + '/BatchNorm_Fold/'):
    batch_norm = _match_batch_norm(conv_output)
    if batch_norm is None:
      return None
    multiplier = batch_norm.multiplier
    # With batch statistics the weights are folded with gamma / sigma_mv,
    # what inference uses, and the output is rescaled by sigma_mv / sigma_B.
    output_scale = None
    if batch_norm.moving_variance is not None:
      correction = tf.divide(
          tf.math.rsqrt(batch_norm.moving_variance + batch_norm.epsilon),
          batch_norm.reciprocal_sigma, name='correction')
      multiplier = tf.multiply(multiplier, correction,
                               name='moving_multiplier')
      output_scale = tf.math.reciprocal(correction, name='output_scale')
  offset = batch_norm.offset
  if (freeze is not None and batch_norm.moving_variance is not None and
      batch_norm.beta is not None):
    with graph.name_scope(context + '/BatchNorm_Fold/'):
      output_scale = tf.where(freeze, tf.ones_like(output_scale),
                              output_scale, name='frozen_output_scale')
      offset = tf.where(
          freeze, batch_norm.beta - batch_norm.moving_mean * multiplier,
          offset, name='frozen_offset')

  weights = layer_op.inputs[1]
  with graph.name_scope(context + '/'):
    multiplier = shaped_for_weights(layer_op, multiplier)
    if input_scale is not None and batch_norm.beta is not None:
      mask = _signal_mask(layer_op, batch_norm.inference_variance,
                          input_scale)
      multiplier = multiplier * tf.reshape(mask, multiplier.shape)
      offset = tf.where(mask > 0, offset, batch_norm.beta, name='offset_fold')
    folded_weights = graph_editing.in_float32(
        weights, lambda w: tf.multiply(w, multiplier, name='mul_fold'))
    new_layer_op = graph_editing.clone_op(
        layer_op, [layer_op.inputs[0], folded_weights])
    output = new_layer_op.outputs[0]
    batch_to_space = graph_editing.sole_consumer(layer_op.outputs[0],
                                                 ['BatchToSpaceND'])
    if batch_to_space is not None:
      output = graph_editing.clone_op(
          batch_to_space,
          [output] + list(batch_to_space.inputs[1:])).outputs[0]
    data_format = graph_editing.data_format(layer_op)

    def scale_and_offset(output):
      if output_scale is not None:
        output = tf.multiply(
            output,
            graph_editing.per_channel(output_scale, data_format,
                                      output.shape.rank),
            name='post_conv_mul')
      return tf.nn.bias_add(output, offset, data_format=data_format,
                            name='add_fold')

    # Like the batch norm it replaces, it reads and writes the layer's dtype
    # and computes in float32.
    output = graph_editing.in_float32(output, scale_and_offset)
  graph_editing.reroute(batch_norm.output, output,
                        batch_norm.output.consumers())
  graph.add_to_collection(FOLDED_LAYERS, new_layer_op)
  return new_layer_op, output


def shaped_for_weights(layer_op, multiplier):
  """A per-output-channel multiplier shaped to scale the layer's weights.

  Args:
    layer_op: a Conv2D, DepthwiseConv2dNative or MatMul op.
    multiplier: a vector, one value per output channel (a depthwise
      [h, w, in, k]'s in * k, in that order).

  Returns:
    `multiplier` as it broadcasts over the weights (`layer_op.inputs[1]`)
    along their output channels.
  """
  if layer_op.type == 'DepthwiseConv2dNative':
    return tf.reshape(multiplier, layer_op.inputs[1].shape[2:],
                      name='scale_reshape')
  if layer_op.type == 'MatMul' and layer_op.get_attr('transpose_b'):
    return tf.reshape(multiplier, [-1, 1], name='scale_reshape')
  return multiplier


def inference_multiplier(layer_op, context, input_scale=None):
  """The multiplier inference will fold into a layer, leaving the graph as is.

  A training graph can keep a layer's batch norm after its quantized
  weights instead of folding it, as long as the weights are quantized as
  the folded ones will be: quantizing W * m and dividing by the multiplier
  m again (per output channel) gives weights whose convolution, through the
  batch norm, computes what the folded layer does, up to the batch norm's
  statistics, which are then those of the quantized layer's output. With
  weights quantized per output channel the division is exact and needs no
  multiplication, quant(W * m) = m * quant(W), since a channel's range
  scales with it. The multiplier gives the folded weights and their ranges,
  which the eval graph reads.

  Args:
    layer_op: a Conv2D, DepthwiseConv2dNative or MatMul op.
    context: the layer's name scope; new ops go under its `BatchNorm_Fold`.
    input_scale: the quantization step of the layer's input, or None. When
      given, the multiplier of each channel drowned by the input's
      quantization noise is 0 (see `_signal_mask`): the layer outputs
      beta there, as the folded layer does.

  Returns:
    (multiplier, output, output_is_activation), or None if no fused batch
    norm (FusedBatchNorm* or batch_norm_relu6's fused op) follows the
    layer. multiplier is gamma / sqrt(moving_variance + eps), one per
    output channel; output the batch norm's output tensor, which for the
    fused batch norm + ReLU6 op is already the activation.

  Raises:
    ValueError: if a training batch norm's moving variance cannot be found.
  """
  graph = layer_op.graph
  conv_output = graph_editing.skip_batch_to_space(layer_op.outputs[0])
  batch_norms = [
      op for op in conv_output.consumers()
      if (op.type in _FUSED_BATCH_NORM_TYPES or
          op.type == graph_editing.BATCH_NORM_RELU6_TYPE) and
      op.inputs[0].name == conv_output.name and op.outputs[0].consumers()]
  if not batch_norms:
    return None
  # After batch_norm_relu6's fusion the replaced batch norm still feeds the
  # replaced ReLU6, which nothing reads.
  bn_op = max(batch_norms,
              key=lambda op: op.type == graph_editing.BATCH_NORM_RELU6_TYPE)
  is_training = (bn_op.type == graph_editing.BATCH_NORM_RELU6_TYPE or
                 bn_op.get_attr('is_training'))
  with graph.name_scope(context + '/BatchNorm_Fold/'):
    moving_variance = (_moving_statistic(bn_op.outputs[2], 'moving_variance')
                       if is_training else bn_op.inputs[4])
    multiplier = tf.multiply(
        bn_op.inputs[1],
        tf.math.rsqrt(moving_variance + bn_op.get_attr('epsilon')),
        name='inference_multiplier')
    if input_scale is not None:
      multiplier = tf.multiply(
          multiplier, _signal_mask(layer_op, moving_variance, input_scale),
          name='masked_multiplier')
  return (multiplier, bn_op.outputs[0],
          bn_op.type == graph_editing.BATCH_NORM_RELU6_TYPE)


def _signal_mask(layer_op, inference_variance, input_scale):
  """1 for each output channel that carries signal, 0 for the drowned ones.

  A channel whose output (before batch norm) varies less than the noise the
  input's 8-bit rounding puts into it carries no information in the
  quantized model. Its batch norm still scales it up by gamma / sigma: with
  a near-constant input (a channel of the layer before that is dead or
  saturated, variance ~1e-5 where others have ~1) the folded weights become
  hundreds of times the layer's others, and one per-tensor weight range then
  rounds every other channel's weights to zero. Such a channel outputs the
  constant beta instead (what its batch norm outputs for a constant input),
  with zero weights.

  The noise of rounding the input to steps of s, through weights w, has
  variance s^2 / 12 * sum(w^2); it is compared with the channel's moving
  variance, so training and eval graphs mask the same channels.

  Args:
    layer_op: the unfolded layer op.
    inference_variance: the moving variance of the batch norm after it.
    input_scale: the quantization step of the layer's input.

  Returns:
    A float32 vector of 0s and 1s, one per output channel.
  """
  weights = graph_editing.float32_value(layer_op.inputs[1])
  if layer_op.type == 'MatMul' and layer_op.get_attr('transpose_b'):
    weights = tf.transpose(weights)
  # Depthwise [h, w, in, k] has in * k output channels, in that order.
  weights = tf.reshape(weights, [-1, inference_variance.shape[0]])
  noise_variance = tf.square(input_scale) / 12.0 * tf.reduce_sum(
      tf.square(weights), axis=0)
  signal = tf.greater(inference_variance, noise_variance)
  return tf.stop_gradient(tf.cast(signal, tf.float32), name='signal_mask')


def _match_batch_norm(tensor):
  """Finds a batch norm reading `tensor`; returns a _BatchNorm or None.

  Ops that the match needs (multipliers, batch moments) are created in the
  current name scope.
  """
  for consumer in tensor.consumers():
    if (consumer.type in _FUSED_BATCH_NORM_TYPES and
        consumer.inputs[0].name == tensor.name and
        consumer.outputs[0].consumers()):
      return _match_fused_batch_norm(consumer)
  for consumer in tensor.consumers():
    if consumer.type == 'Mul':
      batch_norm = _match_unfused_batch_norm(tensor, consumer)
      if batch_norm is not None:
        return batch_norm
  return None


def _match_fused_batch_norm(bn_op):
  """Describes a FusedBatchNorm* op as a _BatchNorm."""
  epsilon = bn_op.get_attr('epsilon')
  gamma, beta = bn_op.inputs[1], bn_op.inputs[2]
  if not bn_op.get_attr('is_training'):
    mean, variance = bn_op.inputs[3], bn_op.inputs[4]
    moving_variance = None
    moving_mean = None
    inference_variance = variance
  else:
    if bn_op.get_attr('exponential_avg_factor') != 1.0:
      raise ValueError(
          'Batch norm %s updates its moving averages inside the op, so its '
          'outputs are not the batch statistics; cannot fold it.' % bn_op.name)
    # The op's own batch variance output carries Bessel's correction and
    # has no gradient; moments of its input give the biased variance it
    # normalizes with, differentiably.
    data_format = bn_op.get_attr('data_format').decode()
    rank = bn_op.inputs[0].shape.rank
    axes = [0] + list(range(2, rank)) if data_format.startswith(
        'NC') else list(range(rank - 1))
    # In float32 whatever the layer's dtype, as the batch norm computes them.
    mean, variance = tf.nn.moments(graph_editing.float32_value(bn_op.inputs[0]),
                                   axes, name='batch_moments')
    moving_variance = _moving_statistic(bn_op.outputs[2], 'moving_variance')
    moving_mean = _moving_statistic(bn_op.outputs[1], 'moving_mean')
    inference_variance = moving_variance
  reciprocal_sigma = tf.math.rsqrt(variance + epsilon)
  multiplier = tf.multiply(gamma, reciprocal_sigma, name='multiplier')
  offset = tf.subtract(beta, mean * multiplier, name='offset')
  return _BatchNorm(bn_op.outputs[0], multiplier, offset, reciprocal_sigma,
                    epsilon, moving_variance, inference_variance, beta,
                    moving_mean)


def _match_unfused_batch_norm(tensor, mul_op):
  """Matches x * m + offset as tf.nn.batch_normalization builds it.

  m is rsqrt(variance + eps), optionally times gamma, and is per channel.

  Args:
    tensor: the layer output x.
    mul_op: a Mul op consuming x.

  Returns:
    A _BatchNorm, or None if the ops around `mul_op` are not a batch norm.
  """
  multiplier = [t for t in mul_op.inputs if t.name != tensor.name]
  add_op = graph_editing.sole_consumer(mul_op.outputs[0],
                                       graph_editing.ADD_TYPES)
  if len(multiplier) != 1 or add_op is None:
    return None
  multiplier = multiplier[0]
  if multiplier.shape.rank != 1:
    return None
  if multiplier.op.type == 'Rsqrt':
    rsqrt_op = multiplier.op
  else:
    rsqrt_ops = [t.op for t in multiplier.op.inputs if t.op.type == 'Rsqrt']
    if multiplier.op.type != 'Mul' or len(rsqrt_ops) != 1:
      return None
    rsqrt_op = rsqrt_ops[0]
  variance_plus_eps = rsqrt_op.inputs[0].op
  if variance_plus_eps.type not in graph_editing.ADD_TYPES:
    return None
  epsilon = None
  variance = None
  for operand in variance_plus_eps.inputs:
    if operand.op.type == 'Const':
      epsilon = operand
    else:
      variance = operand
  if epsilon is None or variance is None:
    return None
  offset = [t for t in add_op.inputs if t.name != mul_op.outputs[0].name]
  if (len(offset) != 1 or offset[0].shape.rank != 1 or
      not add_op.outputs[0].consumers()):
    return None
  moving_variance = (None if graph_editing.reads_variable(variance) else
                     _moving_statistic(variance, 'moving_variance'))
  return _BatchNorm(add_op.outputs[0], multiplier, offset[0],
                    rsqrt_op.outputs[0], epsilon, moving_variance,
                    moving_variance if moving_variance is not None else
                    variance, None, None)


def _moving_statistic(batch_statistic, name):
  """Reads the moving average that `batch_statistic` updates.

  A training batch norm's data path does not read its moving mean and
  variance; each variable is the target of the assign op nearest to the
  batch statistic among its consumers (the moving-average update, three ops
  away for `assign_moving_average`).

  Args:
    batch_statistic: the batch mean or variance tensor a batch norm computes.
    name: the name of the read op (`moving_mean`, `moving_variance`).

  Returns:
    A tensor with the moving average's value.

  Raises:
    ValueError: if no assign op within a few ops updates a variable.
  """
  frontier = batch_statistic.consumers()
  seen = set()
  for _ in range(_MAX_UPDATE_DISTANCE):
    for op in frontier:
      if op.type in _RESOURCE_ASSIGN_TYPES:
        return tf.raw_ops.ReadVariableOp(resource=op.inputs[0],
                                         dtype=op.get_attr('dtype'),
                                         name=name)
      if op.type in _REF_ASSIGN_TYPES:
        return tf.identity(op.inputs[0], name=name)
    seen.update(op.name for op in frontier)
    frontier = [consumer for op in frontier for output in op.outputs
                for consumer in output.consumers()
                if consumer.name not in seen]
  raise ValueError('Cannot find the %s updated from %s.' %
                   (name.replace('_', ' '), batch_statistic.name))
