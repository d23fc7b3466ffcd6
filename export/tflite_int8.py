"""The int8 twin of a uint8 TFLite model whose weights are symmetric.

The TF1 converter turns a quantization-aware eval graph into a uint8 model,
which today's TFLite runs on its builtin kernels only: XNNPACK, the CPU
delegate the interpreter applies by default, runs signed int8 but not uint8.

A uint8 tensor with scale s and zero point z that stores q stands for
s * (q - z); an int8 tensor with scale s and zero point z - 128 that stores
q - 128 stands for the same value. Shifting every uint8 tensor this way
leaves every difference q - z, and so the arithmetic of every integer kernel,
as it was: the int32 biases (scale s_in * s_w, zero point 0) stay unchanged,
and the softmax output (scale 1/256, zero point 0) lands on the zero point
-128 that TFLite's int8 softmax requires. The one condition is on the
weights: int8 convolutions need weights with zero point 0, so the uint8
weights must have zero point 128, which weights quantized over a range
symmetric about zero have (quantize.create_training_graph's default).

A global average pool (a window the size of its input) becomes, by
default, a MEAN over height and width, what TFLite's converter writes for
Keras's global pool: XNNPACK runs an int8 MEAN but not an int8
AVERAGE_POOL_2D, which splits the model into delegated parts around it
(4% of the 1.0@224 latency with 2 threads). Under XNNPACK the two give the
same outputs; TFLite's own int8 MEAN kernel, though, rounds about a tenth of
its outputs one step up from the nearest (measured), where the pool rounds
to the nearest.

The int8 model keeps the uint8 model's interface: a QUANTIZE op turns the
uint8 input into int8 and another turns the int8 output back into uint8, so
it is fed and read exactly like the uint8 model, under the same tensor
names.

The kernels are not all bit-identical, though: TFLite's uint8 convolutions
multiply the input and weight scales in float32 before deriving a layer's
requantization multiplier, its int8 ones in float64, so a value within about
1e-7 of a rounding boundary (a few in a million) can round the other way;
the int8 average pool rounds a mean half way between two steps away from
zero where the uint8 one rounds it up (only windows of even size have such
means); and XNNPACK requantizes in float32. Each such value is one step
off, and the layers after it carry the difference on, so outputs can differ
by a step or two; tflite_int8_test shows the rewrite itself is exact.
"""

import copy

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

_OP = schema.BuiltinOperator

# The operators this rewrite knows to have int8 kernels with the uint8 ones'
# semantics, and the versions TF 2.21's converter gives their int8 form.
INT8_OPERATOR_VERSIONS = {
    _OP.CONV_2D: 3,
    _OP.DEPTHWISE_CONV_2D: 3,
    _OP.AVERAGE_POOL_2D: 2,
    _OP.MEAN: 2,
    _OP.RESHAPE: 1,
    _OP.SOFTMAX: 2,
    _OP.QUANTIZE: 1,
}
# Operators whose second input is the weights.
_WEIGHTED_OPERATORS = frozenset([_OP.CONV_2D, _OP.DEPTHWISE_CONV_2D])
# The first TFLite release with the int8 kernels above.
_MIN_RUNTIME_VERSION = b'1.14.0'
_MIN_RUNTIME_VERSION_KEY = b'min_runtime_version'
_SHIFT = 128


def _operator_name(code):
  return next(name for name, value in vars(_OP).items() if value == code)


def _append(items, item):
  """Appends `item` to a flatbuffer table's list; returns its index."""
  items.append(item)
  return len(items) - 1


def _builtin_code(operator_code):
  # Codes below 127 are stored in both fields, newer ones only in builtinCode.
  return max(operator_code.builtinCode, operator_code.deprecatedBuiltinCode)


def from_uint8(model_content, global_pool_as_mean=True):
  """Converts a uint8 TFLite model with symmetric weights to int8 exactly.

  Args:
    model_content: a uint8 TFLite flatbuffer, as export.convert.convert
      writes for a quantized model.
    global_pool_as_mean: write average pools over their whole input as MEAN
      ops, which XNNPACK runs (see the module docstring).

  Returns:
    The int8 model (uint8 input and output), a TFLite flatbuffer as bytes.

  Raises:
    ValueError: the model has an operator without a known int8 kernel here,
      is not a single-graph uint8 model, or has weights whose zero point is
      not 128 (quantized over an asymmetric range).
  """
  model, subgraph = _single_graph_model(model_content)
  codes = [_builtin_code(c) for c in model.operatorCodes]
  unknown = sorted({_operator_name(c) for c in codes
                    if c not in INT8_OPERATOR_VERSIONS})
  if unknown:
    raise ValueError('no int8 rewrite for operator(s) %s' % ', '.join(unknown))
  if subgraph.tensors[subgraph.inputs[0]].type != schema.TensorType.UINT8:
    raise ValueError('the model input is not uint8: not a uint8 model')
  _check_weights(subgraph, codes)

  _shift_tensors(model, subgraph)
  for operator_code, code in zip(model.operatorCodes, codes):
    operator_code.version = INT8_OPERATOR_VERSIONS[code]
  if global_pool_as_mean:
    _global_pools_to_means(model, subgraph, codes)
    _drop_unused_operator_codes(model, subgraph)
  _add_uint8_interface(model, subgraph)
  _set_min_runtime_version(model)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def with_uint8_interface(model_content):
  """A full-integer int8 model fed and read in uint8.

  The values stay those of the int8 model: the uint8 input and output have
  its scales and zero points plus 128 (see the module docstring).

  Args:
    model_content: an int8 TFLite flatbuffer with int8 input and output, as
      the converter writes for a per-channel quantized eval graph.

  Returns:
    The model with uint8 input and output, a TFLite flatbuffer as bytes.

  Raises:
    ValueError: the model is not a single-graph model with int8 input.
  """
  model, subgraph = _single_graph_model(model_content)
  if subgraph.tensors[subgraph.inputs[0]].type != schema.TensorType.INT8:
    raise ValueError('the model input is not int8: not an int8 model')
  _add_uint8_interface(model, subgraph)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _single_graph_model(model_content):
  """(model object, its one subgraph) of a TFLite flatbuffer.

  Raises:
    ValueError: the model has more than one subgraph.
  """
  model = flatbuffer_utils.convert_bytearray_to_object(model_content)
  if len(model.subgraphs) != 1:
    raise ValueError('expected one subgraph, the model has %d' %
                     len(model.subgraphs))
  return model, model.subgraphs[0]


def _check_weights(subgraph, codes):
  """Raises ValueError unless every weight tensor has zero point 128."""
  for operator in subgraph.operators:
    if codes[operator.opcodeIndex] not in _WEIGHTED_OPERATORS:
      continue
    weights = subgraph.tensors[operator.inputs[1]]
    zero_points = set(int(z) for z in weights.quantization.zeroPoint)
    if zero_points != {_SHIFT}:
      raise ValueError(
          'weights %s have zero point %s, not %d: they were quantized over an '
          'asymmetric range; int8 needs symmetric weights (train with '
          '--weight_quantization=symmetric)' % (weights.name.decode(),
                                    sorted(zero_points)[0], _SHIFT))


def _shift_tensors(model, subgraph):
  """Retypes every uint8 tensor as int8, shifting its zero point and data."""
  other_buffers = {t.buffer for t in subgraph.tensors
                   if t.type != schema.TensorType.UINT8}
  shifted = {}  # uint8 buffer index -> its int8 buffer index
  for tensor in subgraph.tensors:
    if tensor.type != schema.TensorType.UINT8:
      continue
    tensor.type = schema.TensorType.INT8
    tensor.quantization.zeroPoint = (
        np.asarray(tensor.quantization.zeroPoint, np.int64) - _SHIFT)
    data = model.buffers[tensor.buffer].data
    if data is None or not len(data):  # pylint: disable=g-explicit-length-test
      continue
    if tensor.buffer not in shifted:
      # q - 128 in two's complement is q with its top bit flipped.
      int8_data = np.asarray(data, np.uint8) ^ np.uint8(0x80)
      if tensor.buffer in other_buffers:  # shared with a non-uint8 tensor
        shifted[tensor.buffer] = _append(model.buffers, schema.BufferT())
      else:
        shifted[tensor.buffer] = tensor.buffer
      model.buffers[shifted[tensor.buffer]].data = int8_data
    tensor.buffer = shifted[tensor.buffer]


def _add_operator_code(model, code):
  """Appends an operator code with its int8 version; returns its index."""
  operator_code = schema.OperatorCodeT()
  operator_code.builtinCode = code
  operator_code.deprecatedBuiltinCode = code
  operator_code.version = INT8_OPERATOR_VERSIONS[code]
  return _append(model.operatorCodes, operator_code)


def _global_pools_to_means(model, subgraph, codes):
  """Turns each average pool over its whole input into a MEAN over H and W."""
  mean_index = axes_index = None
  for operator in subgraph.operators:
    if codes[operator.opcodeIndex] != _OP.AVERAGE_POOL_2D:
      continue
    options = operator.builtinOptions
    height, width = subgraph.tensors[operator.inputs[0]].shape[1:3]
    if ((options.filterHeight, options.filterWidth) != (height, width) or
        options.fusedActivationFunction != schema.ActivationFunctionType.NONE):
      continue
    if mean_index is None:
      mean_index = _add_operator_code(model, _OP.MEAN)
      axes = schema.BufferT()
      axes.data = np.frombuffer(np.array([1, 2], np.int32).tobytes(),
                                np.uint8)
      tensor = schema.TensorT()
      tensor.name = b'mean_axes'
      tensor.type = schema.TensorType.INT32
      tensor.shape = np.array([2], np.int32)
      tensor.buffer = _append(model.buffers, axes)
      axes_index = _append(subgraph.tensors, tensor)
    operator.opcodeIndex = mean_index
    operator.inputs = np.array([operator.inputs[0], axes_index], np.int32)
    operator.builtinOptionsType = schema.BuiltinOptions.ReducerOptions
    operator.builtinOptions = schema.ReducerOptionsT()
    operator.builtinOptions.keepDims = True


def _drop_unused_operator_codes(model, subgraph):
  """Removes operator codes no operator uses (the runtime resolves them all)."""
  used = sorted({operator.opcodeIndex for operator in subgraph.operators})
  new_index = {old: new for new, old in enumerate(used)}
  model.operatorCodes = [model.operatorCodes[i] for i in used]
  for operator in subgraph.operators:
    operator.opcodeIndex = new_index[operator.opcodeIndex]


def _add_uint8_interface(model, subgraph):
  """Puts uint8 <-> int8 QUANTIZE ops at the subgraph's inputs and outputs.

  The uint8 tensors take the original names; the int8 ones they feed or
  come from get an `_int8` suffix.
  """
  quantize_index = _add_operator_code(model, _OP.QUANTIZE)

  def uint8_twin(index):
    int8_tensor = subgraph.tensors[index]
    tensor = copy.deepcopy(int8_tensor)
    tensor.type = schema.TensorType.UINT8
    tensor.quantization.zeroPoint = (
        np.asarray(int8_tensor.quantization.zeroPoint, np.int64) + _SHIFT)
    tensor.buffer = _append(model.buffers, schema.BufferT())
    int8_tensor.name += b'_int8'
    return _append(subgraph.tensors, tensor)

  def quantize_op(source, target):
    operator = schema.OperatorT()
    operator.opcodeIndex = quantize_index
    operator.inputs = [source]
    operator.outputs = [target]
    return operator

  renames = {}
  inputs = [uint8_twin(i) for i in subgraph.inputs]
  subgraph.operators[:0] = [quantize_op(u, i)
                            for u, i in zip(inputs, subgraph.inputs)]
  renames.update(zip(subgraph.inputs, inputs))
  outputs = [uint8_twin(i) for i in subgraph.outputs]
  subgraph.operators.extend(quantize_op(i, u)
                            for i, u in zip(subgraph.outputs, outputs))
  renames.update(zip(subgraph.outputs, outputs))
  subgraph.inputs = np.asarray(inputs, np.int32)
  subgraph.outputs = np.asarray(outputs, np.int32)
  for signature in model.signatureDefs or []:
    for tensor_map in (signature.inputs or []) + (signature.outputs or []):
      tensor_map.tensorIndex = renames.get(tensor_map.tensorIndex,
                                           tensor_map.tensorIndex)


def _set_min_runtime_version(model):
  """Raises the model's recorded minimum TFLite version to int8's."""
  for metadata in model.metadata or []:
    if metadata.name == _MIN_RUNTIME_VERSION_KEY:
      buffer = model.buffers[metadata.buffer]
      # The runtime reads a NUL-terminated string from a 16-byte buffer.
      size = max(16, len(_MIN_RUNTIME_VERSION) + 1)
      buffer.data = np.frombuffer(_MIN_RUNTIME_VERSION.ljust(size, b'\0'),
                                  np.uint8)
