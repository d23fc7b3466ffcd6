"""Quantization-aware training rewrites for TF-slim graphs.

This rebuilds what `tf.contrib.quantize` did for TensorFlow 1.x: it rewrites
a float inference or training graph in place so that it simulates 8-bit
inference, the way the TFLite converter will later run it.

Usage (graph mode, models built in their slim arg_scope):

    logits, _ = mobilenet_v1.mobilenet_v1(images, is_training=True)
    ...build the loss...
    quantize.create_training_graph(quant_delay=250000)
    ...then build the optimizer and train op...

    logits, _ = mobilenet_v1.mobilenet_v1(images, is_training=False)
    quantize.create_eval_graph()
    ...restore a checkpoint of the training graph, evaluate or export...

The rewrite must run after the forward graph is built and before gradients
are taken, so that the optimizer differentiates the quantized graph. It
reroutes consumers: a Python reference to a rewritten tensor (say a Relu6
kept in `end_points`) still evaluates to the unquantized value, while its
consumers (the next layer, the logits' squeeze and softmax) read the
quantized one. Fetch outputs downstream of the last fake quant.

What the rewrite does, per layer. A layer is a Conv2D, DepthwiseConv2dNative
or MatMul whose second input reads a variable, followed optionally by a batch
norm (fused `FusedBatchNorm*`, or unfused as `tf.nn.batch_normalization`
builds it) or a bias (`BiasAdd`, or `Add` of a rank-1 tensor), then
optionally by a residual `Add` of a same-shaped tensor, then optionally by a
`Relu`/`Relu6` (Identity ops in between are looked through).

1. Batch norm folding. With multiplier m = gamma / sqrt(var + eps) and offset
   b = beta - mean * m (both per output channel; a depthwise weight
   [h, w, in, k] takes m reshaped to [in, k]) the batch norm output
   BN(conv(x, W)) equals conv(x, W * m) + b. The batch norm is replaced by
   that expression; its output's consumers are rerouted to it.

   A channel whose moving variance is below the noise that rounding the
   layer's (quantized) input adds to it carries no signal in the quantized
   model; folding would scale its weights by gamma / sigma with a tiny
   sigma, and one such channel can blow up the layer's per-tensor weight
   range. It is folded as the constant it outputs: zero weights, offset
   beta (fused batch norms, whose beta is at hand).

   Each batch norm is folded according to its own mode, whichever rewrite
   runs:

   * Inference batch norms (moving statistics): m and b from moving_mean and
     moving_variance, as above. This is exactly what TFLite runs.
   * Training batch norms (batch statistics), contrib.quantize's default
     variant without batch-norm freezing: the batch mean mu_B and biased
     variance var_B are computed from the unfolded convolution's output
     (which the original batch norm op still consumes, so its moving-average
     updates in UPDATE_OPS keep working). With sigma_B = sqrt(var_B + eps),
     sigma_mv = sqrt(moving_variance + eps) and the correction
     c = sigma_B / sigma_mv, the layer becomes

         y = conv(x, quant(W * gamma / sigma_mv)) * (1 / c)
             + (beta - mu_B * gamma / sigma_B)

     The quantized weights W * gamma / sigma_mv are the folded weights that
     inference will use, while y (without quantization) equals the batch
     norm's training output, gradients through the batch statistics
     included. Batch norm never switches to moving statistics in training.

2. Weight quantization: an 8-bit fake quant of the (folded) weights, range
   from the last value (`LastValueQuantize`), narrow range [1, 255]. By
   default the training rewrite makes the range symmetric about zero,
   [-max|W|, max|W|], so the uint8 weights have zero point 128 and the model
   converts exactly to int8 (whose convolutions need zero-point-0 weights,
   and which XNNPACK runs much faster than uint8). contrib.quantize's
   default, the weights' own [min, max], is `symmetric_weights=False`. The
   eval rewrite reads whatever range training saved.

3. Activation quantization: an 8-bit fake quant with moving-average ranges
   (`MovingAvgQuantize`, EMA decay 0.999, shortened to (1+step)/(10+step) in
   the first steps so ranges start from the data) after the Relu/Relu6, or after the
   bias add / folded batch norm when there is no activation. A residual Add
   before the activation also gets a fake quant on its layer input; an Add of
   two quantized tensors whose output is not otherwise quantized gets one on
   its output.

   In the training graph the ranges are updated by assign ops inside the
   graph (tensorflow-model-optimization's quant ops with is_training=True),
   on every run that evaluates the layer, not through UPDATE_OPS. The eval
   graph only reads them, which is what lets it convert to TFLite.

4. Quantization delay (training only): until the global step reaches
   `quant_delay`, the graph passes weights and activations unquantized (the
   ranges keep being updated meanwhile, so they are warm when quantization
   starts).

Range variables are `<layer scope>/weights_quant/{min,max}` and
`<layer scope>/act_quant/{min,max}` (plus `conv_quant` before a residual Add
and `<add op>/add_quant` after one), where the layer scope is the name scope
of the layer's op, as contrib.quantize named them: for MobileNet V1, whose
body ops live under `MobilenetV1/MobilenetV1/`, that is
`MobilenetV1/MobilenetV1/Conv2d_0/act_quant/min` and
`MobilenetV1/Logits/Conv2d_1c_1x1/weights_quant/max`. They are global and
model variables, non-trainable, so a Saver saves them and an eval graph built
the same way restores them. Activation ranges start at [0, 6] after a ReLU
and at [-6, 6] elsewhere; weight ranges are set by the first training step.
"""

import collections
import re

import numpy as np
import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

tf1 = tf.compat.v1

NUM_BITS = 8
EMA_DECAY = 0.999

WEIGHTS_QUANT = 'weights_quant'
ACT_QUANT = 'act_quant'
CONV_QUANT = 'conv_quant'
ADD_QUANT = 'add_quant'

# Name of the add that makes average-pool halves round up.
_HALF_UP = 'half_up'

# Graph collection of the layer ops that folding created.
FOLDED_LAYERS = 'quantize_folded_layers'

_RANGE_VARIABLE_RE = re.compile(r'/(%s|%s|%s|%s)/(min|max)$' % (
    WEIGHTS_QUANT, ACT_QUANT, CONV_QUANT, ADD_QUANT))

_LAYER_TYPES = frozenset(['Conv2D', 'DepthwiseConv2dNative', 'MatMul'])
_ACTIVATION_TYPES = frozenset(['Relu', 'Relu6'])
_ADD_TYPES = frozenset(['Add', 'AddV2'])
_FUSED_BATCH_NORM_TYPES = frozenset(
    ['FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3'])
_FAKE_QUANT_TYPES = frozenset([
    'FakeQuantWithMinMaxArgs', 'FakeQuantWithMinMaxVars',
    'FakeQuantWithMinMaxVarsPerChannel'
])
# Ops that only appear once gradients exist; rewriting after them would leave
# the optimizer differentiating the float graph.
_GRADIENT_TYPES = frozenset([
    'Conv2DBackpropFilter', 'DepthwiseConv2dNativeBackpropFilter',
    'FusedBatchNormGrad', 'FusedBatchNormGradV2', 'FusedBatchNormGradV3'
])
_VARIABLE_TYPES = frozenset(['VarHandleOp', 'VariableV2', 'Variable'])
# Moving-average updates of batch norm statistics, and how many ops away from
# the batch statistic they may be.
_RESOURCE_ASSIGN_TYPES = frozenset(
    ['AssignSubVariableOp', 'AssignAddVariableOp', 'AssignVariableOp'])
_REF_ASSIGN_TYPES = frozenset(['AssignSub', 'AssignAdd', 'Assign'])
_MAX_UPDATE_DISTANCE = 4

# Initial ranges. Weight ranges are overwritten by every training step; an
# activation range starts at [0, 6] after a ReLU (it never goes below 0, and
# an EMA starting at -6 would take thousands of steps to get there) and at
# contrib.quantize's [-6, 6] elsewhere.
_INIT_RANGE = (-6.0, 6.0)
_INIT_RELU_RANGE = (0.0, 6.0)

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
_BatchNorm = collections.namedtuple('_BatchNorm', [
    'output', 'multiplier', 'offset', 'reciprocal_sigma', 'epsilon',
    'moving_variance', 'inference_variance', 'beta'
])


def create_training_graph(input_graph=None, quant_delay=0,
                          symmetric_weights=True):
  """Rewrites a float training graph in place for quantization-aware training.

  Folds batch norms with batch statistics and the correction described in the
  module docstring, and adds fake quantization that updates its ranges on
  every run.

  Args:
    input_graph: the tf.Graph to rewrite; the default graph when None.
    quant_delay: global step from which weights and activations are
      quantized; before it they pass through unchanged. 0 quantizes from the
      start. A positive delay uses (and creates if needed) the global step.
    symmetric_weights: quantize weights over a range symmetric about zero
      (uint8 zero point 128, exactly convertible to int8); False takes the
      weights' own min and max, as contrib.quantize did by default.

  Raises:
    ValueError: if `quant_delay` is negative, the graph is already quantized
      or folded, already has gradients, or has no layer to quantize.
  """
  if quant_delay is None or quant_delay < 0:
    raise ValueError('quant_delay must be a non-negative step, got %r.' %
                     (quant_delay,))
  _rewrite(input_graph, is_training=True, quant_delay=quant_delay,
           symmetric_weights=symmetric_weights)


def create_eval_graph(input_graph=None):
  """Rewrites a float inference graph in place to simulate 8-bit inference.

  Folds batch norms (of a graph built with is_training=False, so with their
  moving statistics) and adds fake quantization that reads its ranges from
  the range variables (restore them from a checkpoint of the training
  graph). The result freezes and converts to a uint8 TFLite model.

  Args:
    input_graph: the tf.Graph to rewrite; the default graph when None.

  Raises:
    ValueError: if the graph is already quantized or folded, already has
      gradients, or has no layer to quantize.
  """
  _rewrite(input_graph, is_training=False, quant_delay=0,
           symmetric_weights=False)


def quantize_input(images, input_range=(-1.0, 1.0)):
  """Fake-quantizes a model input to the uint8 grid TFLite will feed it.

  The converter quantizes the model input from its mean and std statistics:
  for images in [-1, 1], mean = std = 127.5, which TFLite stores as zero
  point 128 and scale 1 / 127.5, the grid a fake quant over [-1, 1] nudges
  to. Applied before the model is built and rewritten, it lets the eval
  graph see the input values the uint8 model sees, and round the first
  layer's bias like every other layer's (see `create_eval_graph`).

  Args:
    images: the float model input.
    input_range: (min, max) of the input values.

  Returns:
    `images` rounded to the 8-bit grid over `input_range`.
  """
  return tf.quantization.fake_quant_with_min_max_args(
      images, min=input_range[0], max=input_range[1], num_bits=NUM_BITS,
      narrow_range=False, name='input_quant')


def without_pool_tie_breaks(graph_def):
  """A copy of a frozen eval GraphDef for the TFLite converter.

  The eval graph adds a fraction of a step to each quantized average pool's
  mean so that float TF rounds halves up, as TFLite's integer pool does by
  itself (see `create_eval_graph`). The converter would keep that add as an
  ADD op of its own; this copy reads the pool directly.

  Args:
    graph_def: a GraphDef of a graph rewritten by `create_eval_graph`.

  Returns:
    The GraphDef without the tie-break adds (a copy).
  """
  suffix = '/%s/%s' % (ACT_QUANT, _HALF_UP)
  pools = {node.name: node.input[0] for node in graph_def.node
           if node.name.endswith(suffix)}
  stripped = tf1.GraphDef()
  stripped.CopyFrom(graph_def)
  del stripped.node[:]
  for node in graph_def.node:
    if node.name in pools:
      continue
    copy = stripped.node.add()
    copy.CopyFrom(node)
    copy.input[:] = [pools.get(name, name) for name in node.input]
  return stripped


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
  _check_no_gradients(graph)
  folded = 0
  with graph.as_default():
    for layer_op, context in _find_layers(graph):
      if _fold_batch_norm(layer_op, context) is not None:
        folded += 1
  return folded


def range_variables(graph=None):
  """Lists the quantization range variables of a rewritten graph.

  Args:
    graph: the tf.Graph to search; the default graph when None.

  Returns:
    The `min`/`max` variables created by the rewrites, in creation order
    (names like `MobilenetV1/MobilenetV1/Conv2d_0/act_quant/min`). Export
    code reads them; fine-tuning from a float checkpoint leaves them out of
    the restore.
  """
  graph = graph or tf1.get_default_graph()
  return [v for v in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)
          if _RANGE_VARIABLE_RE.search(v.op.name)]


def range_variables_by_scope(graph=None):
  """The range variables of a rewritten graph, grouped by fake quant.

  Args:
    graph: the tf.Graph to search; the default graph when None.

  Returns:
    An OrderedDict, in creation order (which is graph order), from each
    range scope (like `MobilenetV1/MobilenetV1/Conv2d_0/act_quant`) to
    {'min': variable, 'max': variable}.
  """
  by_scope = collections.OrderedDict()
  for variable in range_variables(graph):
    scope, _, bound = variable.op.name.rpartition('/')
    by_scope.setdefault(scope, {})[bound] = variable
  return by_scope


def calibrate_ranges(session, feeds, symmetric_weights=True, graph=None):
  """Sets an eval graph's range variables from its weights and sample inputs.

  What training would set them to, without training: the weight ranges are
  the (folded) weights' min and max, made symmetric about zero as
  `create_training_graph` does by default, and then the activation ranges
  are the min and max of what reaches each activation's fake quant over
  `feeds`, with the weights quantized. Accuracy is that of post-training
  quantization; benchmarks and tests use it to give a freshly initialized
  model the ranges, and so the requantization scales, of a real one.

  Args:
    session: a session of the eval graph, its other variables initialized or
      restored.
    feeds: feed dicts, one per sample batch.
    symmetric_weights: make weight ranges symmetric about zero.
    graph: the eval graph; `session.graph` when None.
  """
  graph = graph or session.graph
  by_scope = range_variables_by_scope(graph)
  fake_quants = {op.name.rpartition('/')[0]: op for op in graph.get_operations()
                 if op.type == 'FakeQuantWithMinMaxVars'}

  def calibrate(scopes, symmetric):
    values = [session.run([fake_quants[s].inputs[0] for s in scopes], feed)
              for feed in feeds]
    for index, scope in enumerate(scopes):
      # TFLite needs 0 inside every range, and a range that is not empty.
      low = min(0.0, min(float(v[index].min()) for v in values))
      high = max(1e-3, max(float(v[index].max()) for v in values))
      if symmetric:
        high = max(high, -low)
        low = -high
      by_scope[scope]['min'].load(low, session)
      by_scope[scope]['max'].load(high, session)

  weights = [s for s in by_scope if s.endswith('/' + WEIGHTS_QUANT)]
  calibrate(weights, symmetric_weights)
  # One activation at a time, so that each is measured downstream of ranges
  # already calibrated: through initial ones, small activations would all
  # round to zero.
  for scope in by_scope:
    if scope not in weights:
      calibrate([scope], symmetric=False)


def _rewrite(input_graph, is_training, quant_delay, symmetric_weights):
  """Folds batch norms and inserts fake quantization; see the docstring."""
  graph = input_graph or tf1.get_default_graph()
  # A fixed-range fake quant (quantize_input's) is an input, not a rewrite.
  existing = [op.name for op in graph.get_operations()
              if op.type in _FAKE_QUANT_TYPES and
              op.type != 'FakeQuantWithMinMaxArgs']
  if existing:
    raise ValueError(
        'The graph is already quantized (it has fake quantization ops such '
        'as %s); rewrite a float graph, once.' % existing[0])
  # Folded layers read computed weights, which the rewrite would not
  # recognize as layers, so it would quantize the dead unfolded ones.
  if graph.get_collection(FOLDED_LAYERS):
    raise ValueError(
        'The graph already has folded batch norms; the quantization rewrites '
        'fold them themselves: rewrite the float graph.')
  _check_no_gradients(graph)
  layers = _find_layers(graph)
  if not layers:
    raise ValueError('The graph has no layer to quantize (Conv2D, '
                     'DepthwiseConv2dNative or MatMul of a variable).')
  with graph.as_default():
    quantizer = _Quantizer(graph, is_training, quant_delay, symmetric_weights)
    for layer_op, context in layers:
      folded = _fold_batch_norm(layer_op, context,
                                _input_scale(layer_op))
      if folded is None:
        output = _skip_batch_to_space(layer_op.outputs[0])
      else:
        layer_op, output = folded
      quantizer.quantize_layer(layer_op, output, context)
    quantizer.quantize_residual_adds()
    quantizer.quantize_average_pools()
    if not is_training:
      quantizer.round_biases()


def _check_no_gradients(graph):
  """Raises ValueError if the graph already has gradient ops."""
  for op in graph.get_operations():
    if op.type in _GRADIENT_TYPES:
      raise ValueError(
          'The graph already has gradients (%s); rewrite it before building '
          'the optimizer.' % op.name)


def _find_layers(graph):
  """Returns [(op, context)] for each quantizable layer, in graph order.

  The context is the layer's name scope (`MobilenetV1/Conv2d_0` for
  `MobilenetV1/Conv2d_0/Conv2D`), which names the range variables. A layer
  whose scope is empty or taken by an earlier layer uses its own op name.
  """
  layers = []
  used_contexts = set()
  for op in graph.get_operations():
    if (op.type not in _LAYER_TYPES or not _reads_variable(op.inputs[1]) or
        not op.outputs[0].consumers()):
      continue
    context = op.name.rpartition('/')[0]
    if not context or context in used_contexts:
      context = op.name
    used_contexts.add(context)
    layers.append((op, context))
  return layers


def _reads_variable(tensor):
  """Whether `tensor` is a variable's value (through Identity ops)."""
  op = tensor.op
  while op.type == 'Identity':
    op = op.inputs[0].op
  if op.type == 'ReadVariableOp':
    op = op.inputs[0].op
  return op.type in _VARIABLE_TYPES


def _sole_consumer(tensor, types):
  """Returns the only consumer of `tensor` if its type is in `types`."""
  consumers = tensor.consumers()
  if len(consumers) == 1 and consumers[0].type in types:
    return consumers[0]
  return None


def _skip_identities(tensor):
  """Follows a chain of sole-consumer Identity ops (e.g. control deps)."""
  identity = _sole_consumer(tensor, ['Identity'])
  while identity is not None:
    tensor = identity.outputs[0]
    identity = _sole_consumer(tensor, ['Identity'])
  return tensor


def _fake_quant_of(tensor):
  """The fake quant op that produces `tensor`, or None.

  Looks back through Identity ops (e.g. inference-mode dropout) and through
  the quant_delay switch to its quantized branch.
  """
  while tensor.op.type == 'Identity':
    tensor = tensor.op.inputs[0]
  op = tensor.op
  if op.type == 'SelectV2':  # the quant_delay switch
    op = op.inputs[1].op
  return op if op.type in _FAKE_QUANT_TYPES else None


def _input_scale(layer_op):
  """The quantization step of a layer's input, or None if not quantized.

  Layers are rewritten in graph order, so a layer's input from an earlier
  layer is quantized by the time the layer is folded.
  """
  fake_quant = _fake_quant_of(layer_op.inputs[0])
  return None if fake_quant is None else _fake_quant_scale(fake_quant)


def _skip_batch_to_space(tensor):
  """Returns the output of a BatchToSpaceND after `tensor`, or `tensor`.

  Atrous depthwise convolutions run as SpaceToBatchND, the convolution, then
  BatchToSpaceND; the batch norm or bias follows the last.
  """
  batch_to_space = _sole_consumer(tensor, ['BatchToSpaceND'])
  return tensor if batch_to_space is None else batch_to_space.outputs[0]


def reroute(old, new, consumers):
  """Makes each op in `consumers` read `new` wherever it read `old`."""
  for op in consumers:
    for index, tensor in enumerate(op.inputs):
      if tensor.name == old.name:
        op._update_input(index, new)  # pylint: disable=protected-access


def _clone_op(op, inputs):
  """Copies `op` (type and attributes) onto new inputs, in the current scope.

  The copy is named after the original with a `_Fold` suffix, as
  contrib.quantize named its folded convolutions (`Conv2D_Fold`).
  """
  attrs = {key: value for key, value in op.node_def.attr.items()
           if not key.startswith('_')}
  with op.graph.device(op.device):
    return op.graph._create_op_internal(  # pylint: disable=protected-access
        op.type, inputs, dtypes=[t.dtype for t in op.outputs],
        name=op.name.rpartition('/')[2] + '_Fold', attrs=attrs)


def _data_format(op):
  """The data format of a layer op: NHWC unless it says otherwise."""
  try:
    data_format = op.get_attr('data_format')
  except ValueError:  # MatMul has none; its channels are last.
    return 'NHWC'
  return data_format.decode() if isinstance(data_format, bytes) else data_format


def _per_channel(vector, data_format, rank):
  """Reshapes a per-channel vector to broadcast against a layer's output."""
  if data_format.startswith('NC') and rank > 2:
    return tf.reshape(vector, [-1] + [1] * (rank - 2))
  return vector


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
    mean, variance = tf.nn.moments(bn_op.inputs[0], axes, name='batch_moments')
    moving_variance = _moving_variance(bn_op.outputs[2])
    inference_variance = moving_variance
  reciprocal_sigma = tf.math.rsqrt(variance + epsilon)
  multiplier = tf.multiply(gamma, reciprocal_sigma, name='multiplier')
  offset = tf.subtract(beta, mean * multiplier, name='offset')
  return _BatchNorm(bn_op.outputs[0], multiplier, offset, reciprocal_sigma,
                    epsilon, moving_variance, inference_variance, beta)


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
  add_op = _sole_consumer(mul_op.outputs[0], _ADD_TYPES)
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
  if variance_plus_eps.type not in _ADD_TYPES:
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
  moving_variance = (None if _reads_variable(variance) else
                     _moving_variance(variance))
  return _BatchNorm(add_op.outputs[0], multiplier, offset[0],
                    rsqrt_op.outputs[0], epsilon, moving_variance,
                    moving_variance if moving_variance is not None else
                    variance, None)


def _moving_variance(batch_variance):
  """Reads the moving variance that `batch_variance` updates.

  A training batch norm's data path does not read its moving variance; the
  variable is the target of the assign op nearest to the batch variance
  among its consumers (the moving-average update, three ops away for
  `assign_moving_average`).

  Args:
    batch_variance: the batch variance tensor a batch norm computes.

  Returns:
    A tensor with the moving variance's value.

  Raises:
    ValueError: if no assign op within a few ops updates a variable.
  """
  frontier = batch_variance.consumers()
  seen = set()
  for _ in range(_MAX_UPDATE_DISTANCE):
    for op in frontier:
      if op.type in _RESOURCE_ASSIGN_TYPES:
        return tf.raw_ops.ReadVariableOp(resource=op.inputs[0],
                                         dtype=op.get_attr('dtype'),
                                         name='moving_variance')
      if op.type in _REF_ASSIGN_TYPES:
        return tf.identity(op.inputs[0], name='moving_variance')
    seen.update(op.name for op in frontier)
    frontier = [consumer for op in frontier for output in op.outputs
                for consumer in output.consumers()
                if consumer.name not in seen]
  raise ValueError('Cannot find the moving variance updated from %s.' %
                   batch_variance.name)


def _fake_quant_scale(fake_quant):
  """The quantization step of a FakeQuantWithMinMax{Args,Vars} op.

  Multiplies by 1 / levels rather than dividing by levels: grappler turns a
  division by a constant into that multiplication in a graph of variables
  but not in a frozen one, and the last-bit difference would tip rounding
  in the layers that use the step.
  """
  levels = 2**fake_quant.get_attr('num_bits') - 1
  if fake_quant.get_attr('narrow_range'):
    levels -= 1
  if fake_quant.type == 'FakeQuantWithMinMaxArgs':
    return (fake_quant.get_attr('max') - fake_quant.get_attr('min')) / levels
  return (fake_quant.inputs[2] - fake_quant.inputs[1]) * (1.0 / levels)


def _fold_batch_norm(layer_op, context, input_scale=None):
  """Folds the batch norm after `layer_op` into a new layer op.

  See the module docstring for the formulas. The new ops live in the
  layer's name scope (`.../mul_fold`, `.../Conv2D_Fold`, `.../add_fold`).

  Args:
    layer_op: a Conv2D, DepthwiseConv2dNative or MatMul op.
    context: the layer's name scope.
    input_scale: the quantization step of the layer's input, or None. When
      given, channels drowned by the input's quantization noise are folded
      to the constant they output (see `_signal_mask`).

  Returns:
    (new layer op, folded output tensor), or None if no batch norm follows
    `layer_op`. The new layer op's second input is the folded weights.
  """
  graph = layer_op.graph
  conv_output = _skip_batch_to_space(layer_op.outputs[0])
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

  weights = layer_op.inputs[1]
  with graph.name_scope(context + '/'):
    if layer_op.type == 'DepthwiseConv2dNative':
      multiplier = tf.reshape(multiplier, weights.shape[2:],
                              name='scale_reshape')
    elif layer_op.type == 'MatMul' and layer_op.get_attr('transpose_b'):
      multiplier = tf.reshape(multiplier, [-1, 1], name='scale_reshape')
    offset = batch_norm.offset
    if input_scale is not None and batch_norm.beta is not None:
      mask = _signal_mask(layer_op, batch_norm, input_scale)
      multiplier = multiplier * tf.reshape(mask, multiplier.shape)
      offset = tf.where(mask > 0, offset, batch_norm.beta, name='offset_fold')
    folded_weights = tf.multiply(weights, multiplier, name='mul_fold')
    new_layer_op = _clone_op(layer_op, [layer_op.inputs[0], folded_weights])
    output = new_layer_op.outputs[0]
    batch_to_space = _sole_consumer(layer_op.outputs[0], ['BatchToSpaceND'])
    if batch_to_space is not None:
      output = _clone_op(batch_to_space,
                         [output] + list(batch_to_space.inputs[1:])).outputs[0]
    data_format = _data_format(layer_op)
    if output_scale is not None:
      output = tf.multiply(
          output, _per_channel(output_scale, data_format, output.shape.rank),
          name='post_conv_mul')
    output = tf.nn.bias_add(output, offset, data_format=data_format,
                            name='add_fold')
  reroute(batch_norm.output, output, batch_norm.output.consumers())
  graph.add_to_collection(FOLDED_LAYERS, new_layer_op)
  return new_layer_op, output


def _signal_mask(layer_op, batch_norm, input_scale):
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
    batch_norm: the _BatchNorm after it.
    input_scale: the quantization step of the layer's input.

  Returns:
    A float32 vector of 0s and 1s, one per output channel.
  """
  weights = layer_op.inputs[1]
  if layer_op.type == 'MatMul' and layer_op.get_attr('transpose_b'):
    weights = tf.transpose(weights)
  # Depthwise [h, w, in, k] has in * k output channels, in that order.
  weights = tf.reshape(weights, [-1, batch_norm.beta.shape[0]])
  noise_variance = tf.square(input_scale) / 12.0 * tf.reduce_sum(
      tf.square(weights), axis=0)
  signal = tf.greater(batch_norm.inference_variance, noise_variance)
  return tf.stop_gradient(tf.cast(signal, tf.float32), name='signal_mask')


class _Quantizer(object):
  """Inserts fake quantization ops into one graph."""

  def __init__(self, graph, is_training, quant_delay, symmetric_weights):
    """Creates a quantizer.

    Args:
      graph: the tf.Graph to rewrite; must be the default graph while used.
      is_training: update ranges from the data (training) or only read them
        (eval).
      quant_delay: global step before which quantization is bypassed.
      symmetric_weights: training sets weight ranges symmetric about zero.
    """
    self._graph = graph
    self._symmetric_weights = symmetric_weights
    self._is_training = is_training
    # Name of each tensor quantized so far -> its quantized replacement.
    self._quantized = {}
    # Names of the replacements, to recognize inputs already quantized.
    self._replacements = set()
    # (layer op, its bias add, layer scope) of each layer with a bias.
    self._biases = []
    self._use_quant = None
    self._ema_decay = EMA_DECAY
    if is_training:
      # Like tf.train.ExponentialMovingAverage's num_updates: a short memory
      # in the first steps, so ranges start from the data rather than from
      # their initial values (an EMA of 0.999 from [0, 6] needs thousands of
      # steps, which a fine-tune from a float model may not have).
      step = tf.cast(tf1.train.get_or_create_global_step(graph), tf.float32)
      with graph.name_scope('quant_ema_decay/'):
        self._ema_decay = tf.minimum(EMA_DECAY, (1.0 + step) / (10.0 + step),
                                     name='decay')
    if quant_delay > 0:
      global_step = tf1.train.get_or_create_global_step(graph)
      with graph.name_scope('quant_delay/'):
        self._use_quant = tf.greater_equal(
            global_step, tf.cast(quant_delay, global_step.dtype.base_dtype),
            name='use_quant')

  def quantize_layer(self, layer_op, output, context):
    """Quantizes a layer's weights and its output activation.

    Args:
      layer_op: the (possibly folded) layer op; its second input is the
        weights.
      output: the layer's output before any bias, residual Add or activation
        (after folding, the folded batch norm's output).
      context: the layer's name scope.
    """
    self._insert(layer_op.inputs[1], context + '/' + WEIGHTS_QUANT,
                 moving_average=False, narrow_range=True,
                 init_range=_INIT_RANGE, consumers=[layer_op])

    output = _skip_identities(output)
    if output.op.type == 'BiasAdd':  # a folded batch norm's offset
      bias_add = output.op
    else:
      bias_add = _sole_consumer(output, ['BiasAdd'] + list(_ADD_TYPES))
      if bias_add is not None and (bias_add.type == 'BiasAdd' or any(
          t.shape.rank == 1 for t in bias_add.inputs)):
        output = _skip_identities(bias_add.outputs[0])
      else:
        bias_add = None
    if bias_add is not None:
      self._biases.append((layer_op, bias_add, context))

    bypass = _sole_consumer(output, _ADD_TYPES)
    if bypass is not None and all(
        t.shape.rank == output.shape.rank for t in bypass.inputs):
      self._insert(output, context + '/' + CONV_QUANT, moving_average=True,
                   narrow_range=False, init_range=_INIT_RANGE)
      output = _skip_identities(bypass.outputs[0])

    activation = _sole_consumer(output, _ACTIVATION_TYPES)
    if activation is None:
      init_range = _INIT_RANGE
    else:
      output = activation.outputs[0]
      init_range = _INIT_RELU_RANGE
    self._insert(output, context + '/' + ACT_QUANT, moving_average=True,
                 narrow_range=False, init_range=init_range)

  def round_biases(self):
    """Rounds each layer's bias to the int32 grid TFLite stores it on.

    A uint8 TFLite layer adds its bias as int32 in units of input scale
    times weight scale. Left in float, the bias differs from that by up to
    half a unit, enough to tip an activation near a rounding boundary to
    the next uint8 step; the flips then spread through the layers that
    follow. With the bias rounded the same way the eval graph computes what
    the integer model does. A layer whose input is not quantized (a model
    input without `quantize_input`) keeps its float bias. Run after every
    fake quant is in place.
    """
    for layer_op, bias_add, context in self._biases:
      input_quant = _fake_quant_of(layer_op.inputs[0])
      weights_quant = _fake_quant_of(layer_op.inputs[1])
      if input_quant is None or weights_quant is None:
        continue
      index, bias = [(i, t) for i, t in enumerate(bias_add.inputs)
                     if t.shape.rank == 1][-1]
      with self._graph.name_scope(context + '/bias_quant/'):
        scale = tf.multiply(_fake_quant_scale(input_quant),
                            _fake_quant_scale(weights_quant), name='scale')
        rounded = tf.multiply(tf.round(bias / scale), scale, name='rounded')
      bias_add._update_input(index, rounded)  # pylint: disable=protected-access

  def quantize_residual_adds(self):
    """Quantizes the output of each Add of two quantized tensors.

    An Add whose output is already quantized, or feeds a quantized
    activation, is left alone.
    """
    for op in self._graph.get_operations():
      if op.type not in _ADD_TYPES or not all(
          t.name in self._replacements for t in op.inputs):
        continue
      output = _skip_identities(op.outputs[0])
      activation = _sole_consumer(output, _ACTIVATION_TYPES)
      if (output.name in self._quantized or
          (activation is not None and
           activation.outputs[0].name in self._quantized)):
        continue
      self._insert(output, op.name + '/' + ADD_QUANT, moving_average=True,
                   narrow_range=False, init_range=_INIT_RANGE)

  def quantize_average_pools(self):
    """Rounds each average pool of a quantized tensor to its input's grid.

    A quantized average pool (TFLite's uint8 AVERAGE_POOL_2D) must output on
    its input's scale and zero point, so the mean of values on that grid is
    rounded back to it. A fake quant with the input's own range, and no
    range variables of its own, makes the TF graph compute the same thing.

    TFLite rounds the mean of n grid values half up, in integers. Over an
    even window the mean often lies exactly half way between two steps,
    and in float it may come out a hair below and round down. A quarter of
    1/n of a step (the smallest distance of any other mean from a half) is
    added first, so that halves round up and nothing else moves.
    """
    for op in self._graph.get_operations():
      if op.type != 'AvgPool' or op.inputs[0].name not in self._replacements:
        continue
      fake_quant = _fake_quant_of(op.inputs[0])
      if fake_quant is None:
        continue
      output = op.outputs[0]
      consumers = output.consumers()
      window = np.prod(op.get_attr('ksize'))
      with self._graph.name_scope(op.name + '/' + ACT_QUANT + '/'):
        half_up = tf.add(output, _fake_quant_scale(fake_quant) / (4 * window),
                         name=_HALF_UP)
        quantized = tf.quantization.fake_quant_with_min_max_vars(
            half_up, fake_quant.inputs[1], fake_quant.inputs[2],
            num_bits=NUM_BITS, narrow_range=False)
        if self._use_quant is not None:
          quantized = tf.where(self._use_quant, quantized, output,
                               name='delayed_quant')
      reroute(output, quantized, consumers)
      self._quantized[output.name] = quantized
      self._replacements.add(quantized.name)

  def _insert(self, tensor, scope, moving_average, narrow_range, init_range,
              consumers=None):
    """Puts a fake quant op between `tensor` and its consumers.

    Args:
      tensor: the float tensor to quantize.
      scope: the name scope of the new ops and range variables.
      moving_average: EMA ranges (activations) rather than last-value ranges
        (weights).
      narrow_range: quantize to [1, 255] instead of [0, 255].
      init_range: (min, max) initial values of the range variables.
      consumers: the ops to reroute; all consumers of `tensor` when None.
    """
    if tensor.name in self._quantized:
      return
    if consumers is None:
      consumers = tensor.consumers()
    min_var, max_var = self._range_variables(scope, init_range)
    kwargs = dict(name_prefix=scope + '/', is_training=self._is_training,
                  num_bits=NUM_BITS, narrow_range=narrow_range)
    if moving_average:
      quantized = quant_ops.MovingAvgQuantize(
          tensor, min_var, max_var, ema_decay=self._ema_decay, **kwargs)
    else:
      quantized = quant_ops.LastValueQuantize(
          tensor, min_var, max_var, symmetric=self._symmetric_weights,
          **kwargs)
    if self._use_quant is not None:
      with self._graph.name_scope(scope + '/'):
        quantized = tf.where(self._use_quant, quantized, tensor,
                             name='delayed_quant')
    reroute(tensor, quantized, consumers)
    self._quantized[tensor.name] = quantized
    self._replacements.add(quantized.name)

  def _range_variables(self, scope, init_range):
    """Creates the `<scope>/min` and `<scope>/max` range variables."""
    # A VariableScope object is entered as an absolute scope, whatever
    # variable scope the caller is in, so names match across graphs.
    with tf1.variable_scope(tf1.VariableScope(reuse=False, name=scope),
                            auxiliary_name_scope=False):
      return [
          tf1.get_variable(
              name, shape=[], dtype=tf.float32,
              initializer=tf1.constant_initializer(value), trainable=False,
              collections=[tf1.GraphKeys.GLOBAL_VARIABLES,
                           tf1.GraphKeys.MODEL_VARIABLES])
          for name, value in zip(['min', 'max'], init_range)
      ]


def is_range_variable_name(name):
  """Whether `name` is that of a range variable the rewrites create.

  Args:
    name: a variable (or checkpoint entry) name.

  Returns:
    True for names like `MobilenetV1/MobilenetV1/Conv2d_0/act_quant/min`.
  """
  return bool(_RANGE_VARIABLE_RE.search(name))
