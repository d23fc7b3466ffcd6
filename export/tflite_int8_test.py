"""Tests tflite_int8: the int8 twin of a uint8 model computes the same numbers.

The uint8 models come from our own export path (0.25@96, 10 classes), with
He-initialized weights, which keep activations at unit scale through the
batch norms' initial statistics (mean 0, variance 1) so that every layer
carries signal, and ranges calibrated on random images. At 96 pixels the
final average pool has an odd window (3x3), so no mean lies half way between
two steps, where TFLite's int8 pool rounds differently from its uint8 one.
"""

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.interpreter import OpResolverType
from export import convert
from export import freeze
from export import tflite_int8
from quantization import quant_ops
from quantization import quantize
from testing import range_calibration

tf1 = tf.compat.v1

IMAGE_SIZE = 96
NUM_CLASSES = 10
_OP = schema.BuiltinOperator


def round_scales_to_powers_of_two(session, graph):
  """Widens each calibrated range so that its scale is a power of two.

  TFLite's uint8 convolutions multiply input and weight scales in float32
  before computing a layer's requantization multiplier, its int8 ones in
  float64. The multipliers then differ in their last bits, and a value
  within about 1e-7 of a rounding boundary (a few in a million) rounds the
  other way. With power-of-two scales the products are exact, the
  multipliers equal, and the two models must agree bit for bit.
  """
  for scope, variables in quantize.range_variables_by_scope(graph).items():
    low, high = session.run([variables['min'], variables['max']])
    if scope.endswith(quant_ops.WEIGHTS_QUANT):  # symmetric, narrow range
      scale = 2.0 ** np.ceil(np.log2(high / 127))
      low, high = -127 * scale, 127 * scale
    else:
      scale = 2.0 ** np.ceil(np.log2((high - low) / 255))
      zero_point = np.round(-low / scale)
      low, high = -zero_point * scale, (255 - zero_point) * scale
    variables['min'].load(low, session)
    variables['max'].load(high, session)


def uint8_model(symmetric_weights, power_of_two_scales=False):
  """Our uint8 TFLite model of a fresh 0.25@96 network, ranges calibrated."""
  graph, images_in, _ = freeze.build_inference_graph(
      0.25, IMAGE_SIZE, NUM_CLASSES, quantized=True,
      quantize_options={'weights': (quantize.SYMMETRIC if symmetric_weights
                                    else quantize.ASYMMETRIC)})
  rng = np.random.RandomState(0)
  with tf1.Session(graph=graph) as session:
    session.run(tf1.variables_initializer(
        graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)))
    for variable in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES):
      if variable.op.name.endswith('weights'):
        height, width, channels, _ = variable.shape
        fan_in = height * width * (1 if 'depthwise' in variable.op.name
                                   else channels)
        variable.load(rng.normal(0, np.sqrt(2 / fan_in), variable.shape),
                      session)
    range_calibration.calibrate_ranges(session, [
        {images_in: rng.uniform(-1, 1, images_in.shape).astype(np.float32)}
        for _ in range(4)], symmetric_weights=symmetric_weights)
    if power_of_two_scales:
      round_scales_to_powers_of_two(session, graph)
    frozen = freeze.freeze(session, graph)
  return convert.convert(frozen, quantized=True)


def run_all_tensors(model_content, images, delegate):
  """Runs a model on each image; returns [{tensor name: value}] per image.

  Args:
    model_content: a TFLite flatbuffer.
    images: uint8 input arrays.
    delegate: use the default XNNPACK delegate (which keeps only the
      outputs) rather than TFLite's reference kernels (which keep every
      tensor).
  """
  if delegate:
    interpreter = Interpreter(model_content=model_content)
  else:
    interpreter = Interpreter(
        model_content=model_content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
        experimental_preserve_all_tensors=True)
  interpreter.allocate_tensors()
  input_index = interpreter.get_input_details()[0]['index']
  output_index = interpreter.get_output_details()[0]['index']
  results = []
  for image in images:
    interpreter.set_tensor(input_index, image)
    interpreter.invoke()
    if delegate:
      results.append({'output': interpreter.get_tensor(output_index).copy()})
      continue
    values = {}
    for details in interpreter.get_tensor_details():
      if details['dtype'] in (np.uint8, np.int8):
        values[details['name']] = interpreter.get_tensor(
            details['index']).copy()
    values['output'] = interpreter.get_tensor(output_index).copy()
    results.append(values)
  return results


def read_model(model_content):
  return schema.ModelT.InitFromObj(schema.Model.GetRootAs(model_content, 0))


class FromUint8Test(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.uint8 = uint8_model(symmetric_weights=True)
    cls.int8 = tflite_int8.from_uint8(cls.uint8)
    cls.exact_uint8 = uint8_model(symmetric_weights=True,
                                  power_of_two_scales=True)
    # TFLite's own int8 MEAN kernel rounds differently from the pool.
    cls.exact_int8 = tflite_int8.from_uint8(cls.exact_uint8,
                                            global_pool_as_mean=False)
    rng = np.random.RandomState(1)
    cls.images = [rng.randint(0, 256, [1, IMAGE_SIZE, IMAGE_SIZE, 3])
                  .astype(np.uint8) for _ in range(12)]

  def test_every_tensor_is_the_uint8_ones_shifted(self):
    uint8_runs = run_all_tensors(self.exact_uint8, self.images, delegate=False)
    int8_runs = run_all_tensors(self.exact_int8, self.images, delegate=False)
    compared = 0
    for name, value in uint8_runs[0].items():
      if name == 'output' or value.dtype != np.uint8:
        continue
      # Input and output keep their names; the int8 tensors inside them
      # have an _int8 suffix.
      int8_name = name + '_int8' if name + '_int8' in int8_runs[0] else name
      self.assertEqual(int8_runs[0][int8_name].dtype, np.int8, name)
      shifted = np.stack([run[int8_name] for run in int8_runs]
                        ).astype(np.int32) + 128
      self.assertAllEqual(shifted, np.stack([run[name] for run in uint8_runs]),
                          msg=name)
      compared += 1
    # Input, 27 layers, pool, logits, squeeze, softmax: every activation.
    self.assertGreaterEqual(compared, 31)
    outputs = [run['output'] for run in uint8_runs]
    self.assertAllEqual([run['output'] for run in int8_runs], outputs)
    # Not a trivial model: its outputs differ between images.
    self.assertGreater(len({o.tobytes() for o in outputs}), len(outputs) // 2)

  def test_calibrated_scales_give_the_uint8_models_outputs(self):
    # With arbitrary scales the int8 and uint8 requantization multipliers
    # differ in their last bits (see round_scales_to_powers_of_two); a few
    # values in a million round the other way and carry on through the
    # layers after them.
    uint8_outputs = np.concatenate([
        run['output'] for run in
        run_all_tensors(self.uint8, self.images, delegate=False)])
    int8_outputs = np.concatenate([
        run['output'] for run in
        run_all_tensors(self.int8, self.images, delegate=False)])
    self.assertLessEqual(
        np.max(np.abs(uint8_outputs.astype(int) - int8_outputs)), 2)

  def test_xnnpack_gives_the_uint8_models_outputs(self):
    # XNNPACK requantizes in float32 rather than in fixed point, so it
    # rounds a few more values the other way (measured: outputs at most one
    # step apart). This is the int8 model as users run it. Top-1 is not
    # compared: this untrained network's softmax outputs are near-ties that a
    # code either way may reorder.
    uint8_runs = run_all_tensors(self.uint8, self.images, delegate=False)
    int8_runs = run_all_tensors(self.int8, self.images, delegate=True)
    uint8_outputs = np.concatenate([r['output'] for r in uint8_runs])
    int8_outputs = np.concatenate([r['output'] for r in int8_runs])
    self.assertLessEqual(
        np.max(np.abs(uint8_outputs.astype(int) - int8_outputs)), 2)

  def test_global_pool_as_mean_changes_nothing_under_xnnpack(self):
    outputs = [
        np.concatenate([run['output'] for run in run_all_tensors(
            tflite_int8.from_uint8(self.exact_uint8, global_pool_as_mean=mean),
            self.images, delegate=True)])
        for mean in (False, True)]
    self.assertAllEqual(outputs[0], outputs[1])
    # Each the uint8 model's outputs, up to XNNPACK's float requantization.
    uint8_outputs = np.concatenate([
        run['output'] for run in
        run_all_tensors(self.exact_uint8, self.images, delegate=False)])
    self.assertLessEqual(
        np.max(np.abs(uint8_outputs.astype(int) - outputs[1])), 2)

  def test_interface_types_and_operators(self):
    uint8_io = [Interpreter(model_content=self.uint8).get_input_details()[0],
                Interpreter(model_content=self.uint8).get_output_details()[0]]
    interpreter = Interpreter(model_content=self.int8)
    int8_io = [interpreter.get_input_details()[0],
               interpreter.get_output_details()[0]]
    for expected, actual in zip(uint8_io, int8_io):
      for key in ('name', 'shape', 'dtype', 'quantization'):
        self.assertAllEqual(actual[key], expected[key], msg=key)

    model = read_model(self.int8)
    graph = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode)
             for c in model.operatorCodes]
    boundary = set(graph.inputs) | set(graph.outputs)
    for index, tensor in enumerate(graph.tensors):
      expected = (schema.TensorType.UINT8 if index in boundary else
                  (schema.TensorType.INT8, schema.TensorType.INT32))
      self.assertIn(tensor.type, np.atleast_1d(expected), tensor.name)
    operators = [codes[op.opcodeIndex] for op in graph.operators]
    # Every operator code is used: the runtime needs a kernel for each.
    self.assertCountEqual(set(operators), codes)
    self.assertEqual(operators[0], _OP.QUANTIZE)
    self.assertEqual(operators[-1], _OP.QUANTIZE)
    self.assertEqual(operators.count(_OP.QUANTIZE), 2)
    self.assertEqual(set(operators), {
        _OP.QUANTIZE, _OP.CONV_2D, _OP.DEPTHWISE_CONV_2D,
        _OP.MEAN, _OP.RESHAPE, _OP.SOFTMAX})
    for op in graph.operators:
      if codes[op.opcodeIndex] in (_OP.CONV_2D, _OP.DEPTHWISE_CONV_2D):
        weights = graph.tensors[op.inputs[1]]
        self.assertEqual(weights.type, schema.TensorType.INT8)
        self.assertAllEqual(weights.quantization.zeroPoint, [0])
        # Symmetric narrow range: the int8 weights stay within [-127, 127].
        data = np.frombuffer(bytes(model.buffers[weights.buffer].data),
                             np.int8)
        self.assertGreaterEqual(data.min(), -127)
    for operator_code, code in zip(model.operatorCodes, codes):
      self.assertEqual(operator_code.version,
                       tflite_int8.INT8_OPERATOR_VERSIONS[code])
    # The int8 model is as small as the uint8 one (a few new tensors).
    self.assertLess(abs(len(self.int8) - len(self.uint8)), 2048)

  def test_asymmetric_weights_raise(self):
    with self.assertRaisesRegex(ValueError, 'zero point .* not 128.*symmetric'):
      tflite_int8.from_uint8(uint8_model(symmetric_weights=False))

  def test_float_model_raises(self):
    graph, _, _ = freeze.build_inference_graph(
        0.25, IMAGE_SIZE, NUM_CLASSES, quantized=False)
    with tf1.Session(graph=graph) as session:
      session.run(tf1.global_variables_initializer())
      frozen = freeze.freeze(session, graph)
    with self.assertRaisesRegex(ValueError, 'not uint8'):
      tflite_int8.from_uint8(
          convert.convert(frozen, quantized=False))


if __name__ == '__main__':
  tf.test.main()
