"""Graph matching and editing for the quantization rewrites.

The counterpart of contrib.quantize's `common.py` and the parts of
`graph_editor` it used: following tensors through pass-through ops, finding
the ops a pattern needs, rerouting consumers and copying an op onto new
inputs. This is the one module that touches TensorFlow's private graph APIs
(`Operation._update_input`, `Graph._create_op_internal`), so that a change
there is fixed in one place.
"""

import tensorflow as tf

_VARIABLE_TYPES = frozenset(['VarHandleOp', 'VariableV2', 'Variable'])

# The convolutions, and the layers the rewrites quantize: those and MatMul.
CONV_TYPES = frozenset(['Conv2D', 'DepthwiseConv2dNative'])
LAYER_TYPES = CONV_TYPES | {'MatMul'}
# The two forms of an addition (a bias or a residual connection).
ADD_TYPES = frozenset(['Add', 'AddV2'])
# The activations a layer's output range is taken after.
ACTIVATION_TYPES = frozenset(['Relu', 'Relu6'])
# batch_norm_relu6's training op: a fused batch norm whose output is already
# through ReLU6.
BATCH_NORM_RELU6_TYPE = 'FusedBatchNormRelu6'

FAKE_QUANT_TYPES = frozenset([
    'FakeQuantWithMinMaxArgs', 'FakeQuantWithMinMaxVars',
    'FakeQuantWithMinMaxVarsPerChannel'
])


def reroute(old, new, consumers):
  """Makes each op in `consumers` read `new` wherever it read `old`.

  Args:
    old: the tensor the consumers read now.
    new: the tensor they read instead.
    consumers: the ops to change.
  """
  for op in consumers:
    for index, tensor in enumerate(op.inputs):
      if tensor.name == old.name:
        update_input(op, index, new)


def update_input(op, index, tensor):
  """Makes input `index` of `op` read `tensor`."""
  op._update_input(index, tensor)  # pylint: disable=protected-access


def clone_op(op, inputs):
  """Copies `op` (type and attributes) onto new inputs, in the current scope.

  The copy is named after the original with a `_Fold` suffix, as
  contrib.quantize named its folded convolutions (`Conv2D_Fold`).

  Args:
    op: the op to copy.
    inputs: the copy's inputs.

  Returns:
    The new op.
  """
  attrs = {key: value for key, value in op.node_def.attr.items()
           if not key.startswith('_')}
  with op.graph.device(op.device):
    return op.graph._create_op_internal(  # pylint: disable=protected-access
        op.type, inputs, dtypes=[t.dtype for t in op.outputs],
        name=op.name.rpartition('/')[2] + '_Fold', attrs=attrs)


def bfloat16_copy_source(tensor):
  """The float32 tensor that `tensor` is a bfloat16 cast of, or None.

  Mixed bfloat16 training (training/mixed_precision) hands each layer a
  bfloat16 cast of its float32 variable; the rewrites quantize and fold the
  float32 values behind such a copy.
  """
  op = tensor.op
  if (op.type == 'Cast' and tensor.dtype == tf.bfloat16 and
      op.inputs[0].dtype == tf.float32):
    return op.inputs[0]
  return None


def float32_value(tensor):
  """`tensor` in float32, for the float32 arithmetic of the rewrites.

  Args:
    tensor: a float32 or bfloat16 tensor.

  Returns:
    `tensor` itself if float32; the float32 tensor a bfloat16 copy was cast
    from (bfloat16_copy_source), so that nothing is lost to its rounding;
    else `tensor` cast to float32 (exact: float32 holds every bfloat16).
  """
  if tensor.dtype == tf.float32:
    return tensor
  source = bfloat16_copy_source(tensor)
  return tf.cast(tensor, tf.float32) if source is None else source


def in_float32(tensor, function):
  """Computes `function` of `tensor` in float32, in `tensor`'s dtype.

  The one path by which the rewrites treat a bfloat16 tensor (mixed
  bfloat16 training): fake quants, their ranges and batch norm folding's
  arithmetic run in float32 on `float32_value(tensor)`, and their result
  is cast back for the layers, which compute in bfloat16. The gradient
  passes back through the casts, to the float32 variable for a copy of
  one. A float32 tensor goes to `function` as it is.

  Args:
    tensor: a float32 or bfloat16 tensor.
    function: float32 tensor -> float32 tensor.

  Returns:
    function(float32_value(tensor)), cast to `tensor`'s dtype.
  """
  result = function(float32_value(tensor))
  if tensor.dtype == tf.float32:
    return result
  return tf.cast(result, tensor.dtype)


def variable_of(tensor):
  """The variable op whose value `tensor` is, or None.

  Looks through Identity ops and mixed precision's bfloat16 copy.
  """
  source = bfloat16_copy_source(tensor)
  op = (tensor if source is None else source).op
  while op.type == 'Identity':
    op = op.inputs[0].op
  if op.type == 'ReadVariableOp':
    op = op.inputs[0].op
  return op if op.type in _VARIABLE_TYPES else None


def reads_variable(tensor):
  """Whether `tensor` is a variable's value (through Identity ops)."""
  return variable_of(tensor) is not None


def sole_consumer(tensor, types):
  """Returns the only consumer of `tensor` if its type is in `types`."""
  consumers = tensor.consumers()
  if len(consumers) == 1 and consumers[0].type in types:
    return consumers[0]
  return None


def skip_identities(tensor):
  """Follows a chain of sole-consumer Identity ops (e.g. control deps)."""
  identity = sole_consumer(tensor, ['Identity'])
  while identity is not None:
    tensor = identity.outputs[0]
    identity = sole_consumer(tensor, ['Identity'])
  return tensor


def skip_batch_to_space(tensor):
  """Returns the output of a BatchToSpaceND after `tensor`, or `tensor`.

  Atrous depthwise convolutions run as SpaceToBatchND, the convolution, then
  BatchToSpaceND; the batch norm or bias follows the last.
  """
  batch_to_space = sole_consumer(tensor, ['BatchToSpaceND'])
  return tensor if batch_to_space is None else batch_to_space.outputs[0]


def fake_quant_of(tensor):
  """The fake quant op that produces `tensor`, or None.

  Looks back through ops that keep values on their grid (Identity, e.g.
  inference-mode dropout; the Reshape or Transpose around per-channel weight
  quantization), through the bfloat16 cast of a float32 fake quant's output
  (in_float32) and through the quant_delay switch to its quantized branch.
  """
  while True:
    source = bfloat16_copy_source(tensor)
    if source is None and tensor.op.type in ('Identity', 'Reshape',
                                             'Transpose'):
      source = tensor.op.inputs[0]
    if source is None:
      break
    tensor = source
  op = tensor.op
  if op.type == 'SelectV2':  # the quant_delay switch
    op = op.inputs[1].op
  return op if op.type in FAKE_QUANT_TYPES else None


def fake_quant_scale(fake_quant):
  """The quantization step of a per-tensor FakeQuantWithMinMax{Args,Vars} op.

  Multiplies by 1 / levels rather than dividing by levels: grappler turns a
  division by a constant into that multiplication in a graph of variables
  but not in a frozen one, and the last-bit difference would tip rounding
  in the layers that use the step.

  Args:
    fake_quant: the fake quant op.

  Returns:
    The step, a Python float (fixed ranges) or a scalar tensor; a vector of
    steps for a per-channel fake quant.
  """
  levels = 2**fake_quant.get_attr('num_bits') - 1
  if fake_quant.get_attr('narrow_range'):
    levels -= 1
  if fake_quant.type == 'FakeQuantWithMinMaxArgs':
    return (fake_quant.get_attr('max') - fake_quant.get_attr('min')) / levels
  return (fake_quant.inputs[2] - fake_quant.inputs[1]) * (1.0 / levels)


def data_format(op):
  """The data format of a layer op: NHWC unless it says otherwise."""
  try:
    value = op.get_attr('data_format')
  except ValueError:  # MatMul has none; its channels are last.
    return 'NHWC'
  return value.decode() if isinstance(value, bytes) else value


def per_channel(vector, layer_data_format, rank):
  """Reshapes a per-channel vector to broadcast against a layer's output."""
  if layer_data_format.startswith('NC') and rank > 2:
    return tf.reshape(vector, [-1] + [1] * (rank - 2))
  return vector


# Ops that only appear once gradients exist; rewriting after them would leave
# the optimizer differentiating the float graph.
_GRADIENT_TYPES = frozenset([
    'Conv2DBackpropFilter', 'DepthwiseConv2dNativeBackpropFilter',
    'FusedBatchNormGrad', 'FusedBatchNormGradV2', 'FusedBatchNormGradV3'
])


def find_layers(graph):
  """Returns [(op, context)] for each quantizable layer, in graph order.

  A layer is a Conv2D, DepthwiseConv2dNative or MatMul whose second input
  reads a variable (or mixed precision's bfloat16 copy of one). The context
  is the layer's name scope (`MobilenetV1/Conv2d_0` for
  `MobilenetV1/Conv2d_0/Conv2D`), which names the range variables. A layer
  whose scope is empty or taken by an earlier layer uses its own op name.

  Args:
    graph: the tf.Graph to search.

  Returns:
    The layers, as (op, context) pairs.
  """
  layers = []
  used_contexts = set()
  for op in graph.get_operations():
    if (op.type not in LAYER_TYPES or not reads_variable(op.inputs[1]) or
        not op.outputs[0].consumers()):
      continue
    context = op.name.rpartition('/')[0]
    if not context or context in used_contexts:
      context = op.name
    used_contexts.add(context)
    layers.append((op, context))
  return layers


def check_no_gradients(graph):
  """Raises ValueError if the graph already has gradient ops."""
  for op in graph.get_operations():
    if op.type in _GRADIENT_TYPES:
      raise ValueError(
          'The graph already has gradients (%s); rewrite it before building '
          'the optimizer.' % op.name)
