"""Google's released MobileNet V1 models, as tests and benches read them.

Two kinds of release are reachable offline or from a package registry:

* Float: the 1.0_224 frozen graph, inside the PyPI package nudity==0.2.3
  (see released_model_test); `fetch_float_graph` downloads it.
* Quantized: TOCO conversions of Google's released `_quant` frozen graphs
  (trained with tf.contrib.quantize), whose tensors keep the released folded
  weights, biases and FakeQuant ranges. One is vendored under
  third_party/released (see its README for provenance).

`write_contrib_checkpoint` rebuilds from such a .tflite the checkpoint
contrib.quantize would have saved, in its exact layout, so that evaluation,
export and fine-tuning can be checked against the release. `photos` and
`eval_images` give real photos that need no download, preprocessed as
evaluation does.
"""

import glob
import hashlib
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf
from tensorflow.python.framework import tensor_util

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.interpreter import OpResolverType
from data import preprocessing
import mobilenet_v1
from model import variants

tf1 = tf.compat.v1

# The repository root, where the binaries and third_party/ are.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLOAT_PACKAGE = 'nudity==0.2.3'
FLOAT_GRAPH_IN_PACKAGE = 'nudity-0.2.3/nudity/files/retrained_graph.pb'
FLOAT_GRAPH_SHA256 = (
    '3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735')
# What pip reports when it cannot connect to the registry (no network, no
# name resolution, a dead proxy), as opposed to a registry that answers.
_UNREACHABLE = re.compile(
    r'NewConnectionError|ConnectTimeoutError|ProxyError|ReadTimeoutError|'
    r'Network is unreachable|Temporary failure in name resolution|'
    r'Name or service not known')

QUANT_0_5_160 = os.path.join(
    _ROOT, 'third_party', 'released',
    variants.by_name('0.5_160').release_name(quantized=True) + '.tflite')
QUANT_0_5_160_SHA256 = (
    '21e022f6603d1edbb554138bd2b06b651e258b0169a06163fb6b555c8400e1ec')

BATCH_NORM_EPSILON = 0.001
# contrib.quantize's activation moving averages.
EMA_DECAY = 0.999
NUM_LAYERS = 14


class RegistryUnreachable(Exception):
  """The package registry cannot be reached (no network)."""


def fetch_float_graph(directory):
  """Downloads the float 1.0_224 release (a GraphDef) from PyPI.

  Args:
    directory: where pip puts the package's source archive.

  Returns:
    The GraphDef.

  Raises:
    RegistryUnreachable: pip cannot connect to the registry.
    AssertionError: pip failed otherwise, or the graph is not the expected
      file.
  """
  download = subprocess.run(
      [sys.executable, '-m', 'pip', 'download', '--quiet', '--retries', '1',
       '--timeout', '30', '--no-deps', '--no-binary', ':all:', '--dest',
       directory, FLOAT_PACKAGE], capture_output=True, text=True, check=False)
  if download.returncode:
    unreachable = _UNREACHABLE.search(download.stderr)
    if unreachable:
      raise RegistryUnreachable(
          'pip cannot reach the package registry for %s (%s)' %
          (FLOAT_PACKAGE, unreachable.group(0)))
    raise AssertionError('pip download %s failed:\n%s' %
                         (FLOAT_PACKAGE, download.stderr))
  archive, = glob.glob(os.path.join(directory, 'nudity-0.2.3.tar.gz'))
  with tarfile.open(archive) as tar:
    data = tar.extractfile(FLOAT_GRAPH_IN_PACKAGE).read()
  if hashlib.sha256(data).hexdigest() != FLOAT_GRAPH_SHA256:
    raise AssertionError('%s in %s is not the expected file' %
                         (FLOAT_GRAPH_IN_PACKAGE, FLOAT_PACKAGE))
  graph_def = tf1.GraphDef()
  graph_def.ParseFromString(data)
  return graph_def


def write_float_checkpoint(graph_def, prefix):
  """Writes the float release's variables as the release tarballs hold them.

  Args:
    graph_def: the released graph, from `fetch_float_graph`.
    prefix: the checkpoint prefix to write.

  Returns:
    {variable name: value} of the 137 model variables written (no global
    step, as in Google's tarballs).
  """
  released = {node.name: tensor_util.MakeNdarray(node.attr['value'].tensor)
              for node in graph_def.node if node.op == 'Const'}
  with tf.Graph().as_default():
    images = tf1.placeholder(tf.float32, [None, 224, 224, 3])
    with slim.arg_scope(
        mobilenet_v1.mobilenet_v1_arg_scope(is_training=False)):
      mobilenet_v1.mobilenet_v1(images, num_classes=1001, is_training=False)
    variables = tf1.global_variables()
    with tf1.Session() as session:
      for variable in variables:
        variable.load(released[variable.op.name], session)
      tf1.train.Saver().save(session, prefix, write_meta_graph=False,
                             write_state=False)
  return {v.op.name: released[v.op.name] for v in variables}


def read_verified(path, sha256):
  """The bytes of a vendored file, checked against its recorded sha256."""
  with open(path, 'rb') as f:
    content = f.read()
  if hashlib.sha256(content).hexdigest() != sha256:
    raise AssertionError('%s is not the vendored file (sha256 differs)' % path)
  return content


def photo_paths():
  """Real photos installed with the venv's packages (no download).

  scikit-learn's two sample images (china.jpg, flower.jpg) and matplotlib's
  grace_hopper.jpg.
  """
  import matplotlib.cbook  # pylint: disable=g-import-not-at-top
  import sklearn.datasets  # pylint: disable=g-import-not-at-top
  images = os.path.join(os.path.dirname(sklearn.datasets.__file__), 'images')
  return [os.path.join(images, 'china.jpg'),
          os.path.join(images, 'flower.jpg'),
          str(matplotlib.cbook.get_sample_data('grace_hopper.jpg',
                                               asfileobj=False))]


def photo_views(paths=None, fraction=0.7):
  """Encoded images: each photo whole, its four corners and their mirrors.

  The corner crops keep `fraction` of each side: different content from the
  same photos, so that agreement is measured on more than a few inputs.
  Crops are PNGs, so that decoding them gives their pixels exactly.

  Args:
    paths: JPEG files; photo_paths() when None.
    fraction: side of each corner crop, relative to the photo's.

  Returns:
    A list of encoded images (bytes), 10 per photo.
  """
  views = []
  for path in paths or photo_paths():
    with open(path, 'rb') as f:
      jpeg = f.read()
    photo = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    height, width = photo.shape[:2]
    crop_height, crop_width = int(height * fraction), int(width * fraction)
    crops = [photo] + [
        photo[top:top + crop_height, left:left + crop_width]
        for top in (0, height - crop_height)
        for left in (0, width - crop_width)]
    for crop in crops:
      for image in (crop, crop[:, ::-1]):
        views.append(tf.io.encode_png(np.ascontiguousarray(image)).numpy())
  return views


def eval_images(encoded_images, image_size):
  """The images as evaluation feeds them: float32 [N, size, size, 3]."""
  return np.stack([preprocessing.preprocess_for_eval(image, image_size)
                   .numpy() for image in encoded_images])


def reference_interpreter(model_content, preserve_all_tensors=False):
  """A TFLite interpreter running TFLite's reference kernels."""
  interpreter = Interpreter(
      model_content=model_content,
      experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
      experimental_preserve_all_tensors=preserve_all_tensors)
  interpreter.allocate_tensors()
  return interpreter


def run_uint8(model_content, codes):
  """Runs a uint8 model image by image with the reference kernels.

  Args:
    model_content: a TFLite flatbuffer with a uint8 [1, ...] input.
    codes: uint8 inputs, [N, ...].

  Returns:
    The uint8 outputs, [N, num_classes].
  """
  interpreter = reference_interpreter(model_content)
  input_index = interpreter.get_input_details()[0]['index']
  output_index = interpreter.get_output_details()[0]['index']
  outputs = []
  for image in codes:
    interpreter.set_tensor(input_index, image[None])
    interpreter.invoke()
    outputs.append(interpreter.get_tensor(output_index)[0])
  return np.stack(outputs)


def layer_names():
  """The released layers in order: Conv2d_0, Conv2d_1_depthwise, ..."""
  names = ['Conv2d_0']
  for index in range(1, NUM_LAYERS):
    names += ['Conv2d_%d_depthwise' % index, 'Conv2d_%d_pointwise' % index]
  return names


def _range_of(details, narrow_range):
  """The float (min, max) whose fake quant has these scale and zero point."""
  scale, zero_point = details['quantization']
  low = 1 if narrow_range else 0
  return (np.float32(scale * (low - zero_point)),
          np.float32(scale * (255 - zero_point)))


def _dequantize(interpreter, details):
  scale, zero_point = details['quantization']
  codes = interpreter.get_tensor(details['index']).astype(np.float64)
  return (scale * (codes - zero_point)).astype(np.float32)


def contrib_variables(model_content, global_step):
  """The variables contrib.quantize's checkpoint of a released model held.

  Each layer's folded weights and bias become the layer's weights and a
  batch norm that is an identity but for its offset (gamma 1, mean 0,
  variance 1 - epsilon, so that gamma / sqrt(variance + epsilon) is exactly
  1 in float32, and beta the bias), so folding gives back the released
  weights and bias. Weight ranges are the narrow-range [1, 255] ranges of the
  released weight scales and zero points, activation ranges the ranges of
  the released activations'. Zero-debias slots are those of a moving
  average updated on every one of `global_step` steps.

  Args:
    model_content: a released uint8 MobileNet V1 .tflite (as TOCO named its
      tensors after the frozen graph's).
    global_step: the step to record.

  Returns:
    {variable name: numpy value}, in the checkpoint's layout.
  """
  interpreter = reference_interpreter(model_content)
  tensors = {d['name']: d for d in interpreter.get_tensor_details()}
  variables = {}

  def add_ranges(scope, weights, activation):
    for kind, details, narrow in (('weights_quant', weights, True),
                                  ('act_quant', activation, False)):
      low, high = _range_of(details, narrow)
      variables['%s/%s/min' % (scope, kind)] = low
      variables['%s/%s/max' % (scope, kind)] = high
    # assign_moving_average(zero_debias=True) keeps the biased average and
    # its step count in slots named after the variable, under its scope.
    debias = np.float32(1 - EMA_DECAY**global_step)
    for bound in ('min', 'max'):
      variable = '%s/act_quant/%s' % (scope, bound)
      slot = '%s/act_quant/%s' % (scope, variable)
      variables[slot + '/biased'] = np.float32(variables[variable] * debias)
      variables[slot + '/local_step'] = np.float32(global_step)

  for layer in layer_names():
    scope = 'MobilenetV1/MobilenetV1/' + layer
    weights = tensors[scope + '/weights_quant/FakeQuantWithMinMaxVars']
    depthwise = layer.endswith('_depthwise')
    bias = tensors[scope + ('/depthwise_Fold_bias' if depthwise else
                            '/Conv2D_Fold_bias')]
    value = _dequantize(interpreter, weights)
    if depthwise:  # TFLite [1, h, w, channels]; TF [h, w, channels, 1].
      variables['MobilenetV1/%s/depthwise_weights' % layer] = (
          value[0][..., None])
    else:  # TFLite [out, h, w, in]; TF [h, w, in, out].
      variables['MobilenetV1/%s/weights' % layer] = value.transpose(1, 2, 3, 0)
    channels = value.shape[0 if not depthwise else 3]
    batch_norm = 'MobilenetV1/%s/BatchNorm/' % layer
    variables[batch_norm + 'gamma'] = np.ones(channels, np.float32)
    variables[batch_norm + 'beta'] = _dequantize(interpreter, bias)
    variables[batch_norm + 'moving_mean'] = np.zeros(channels, np.float32)
    variables[batch_norm + 'moving_variance'] = np.full(
        channels, np.float32(1) - np.float32(BATCH_NORM_EPSILON))
    add_ranges(scope, weights, tensors[scope + '/Relu6'])

  scope = 'MobilenetV1/Logits/Conv2d_1c_1x1'
  weights = tensors[scope + '/weights_quant/FakeQuantWithMinMaxVars']
  variables[scope + '/weights'] = _dequantize(
      interpreter, weights).transpose(1, 2, 3, 0)
  variables[scope + '/biases'] = _dequantize(interpreter,
                                             tensors[scope + '/Conv2D_bias'])
  add_ranges(scope, weights, tensors[scope + '/BiasAdd'])
  variables['global_step'] = np.int64(global_step)
  # Later contrib versions count the steps the fake quants have run.
  variables['fake_quantization_step'] = np.int64(global_step)
  return variables


def write_checkpoint(variables, prefix):
  """Saves {name: numpy value} as a checkpoint at `prefix`; returns it."""
  os.makedirs(os.path.dirname(prefix), exist_ok=True)
  with tf.Graph().as_default():
    saved = [tf1.Variable(value, name=name, trainable=False)
             for name, value in variables.items()]
    with tf1.Session() as session:
      session.run(tf1.global_variables_initializer())
      return tf1.train.Saver(saved).save(session, prefix,
                                         write_meta_graph=False)


def _builtin_name(operator_code):
  # Old flatbuffers (TOCO's) have only the deprecated int8 code field.
  code = max(operator_code.builtinCode, operator_code.deprecatedBuiltinCode)
  return {value: name for name, value in vars(schema.BuiltinOperator).items()
          if not name.startswith('_')}[code]


_NUMPY_TYPES = {schema.TensorType.UINT8: np.uint8,
                schema.TensorType.INT8: np.int8,
                schema.TensorType.INT32: np.int32,
                schema.TensorType.FLOAT32: np.float32}


def operators(model_content):
  """The operators of a TFLite model in execution order, with their tensors.

  Args:
    model_content: a TFLite flatbuffer.

  Returns:
    A list of (operator name, [tensor]), the operator's inputs then outputs,
    each tensor a dict with 'name', 'type' (numpy), 'shape', 'scale' and
    'zero_point' (numpy arrays, empty if not quantized) and 'data' (the
    constant's values, or None).
  """
  model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model_content, 0))
  subgraph = model.subgraphs[0]

  def describe(index):
    tensor = subgraph.tensors[index]
    dtype = _NUMPY_TYPES[tensor.type]
    buffer = model.buffers[tensor.buffer].data
    quantization = tensor.quantization
    return {
        'name': tensor.name.decode(),
        'type': dtype,
        'shape': list(tensor.shape),
        'scale': np.asarray(
            quantization.scale if quantization and quantization.scale is
            not None else [], np.float32),
        'zero_point': np.asarray(
            quantization.zeroPoint if quantization and
            quantization.zeroPoint is not None else [], np.int64),
        'data': (None if buffer is None or not len(buffer) else
                 np.frombuffer(bytes(buffer), dtype).reshape(tensor.shape)),
    }

  return [(_builtin_name(model.operatorCodes[op.opcodeIndex]),
           [describe(i) for i in list(op.inputs) + list(op.outputs)])
          for op in subgraph.operators]


def compare_operators(released_content, our_content):
  """Compares two TFLite models of the same graph, tensor by tensor.

  Tensors are paired by position: operator by operator, input by input.

  Args:
    released_content: the released .tflite.
    our_content: ours.

  Returns:
    One dict per tensor of the released model, in operator order: 'name'
    (the released one), 'kind' ('input', 'weights', 'bias', 'constant' or
    'activation'), 'same_type_and_shape', 'scale_equal' (bit for bit),
    'scale_relative_diff', 'zero_point_equal' and 'code_diff' (the largest
    difference of a constant's values, None for other tensors).

  Raises:
    ValueError: the models do not have the same operators.
  """
  released, ours = operators(released_content), operators(our_content)
  if ([op for op, _ in released] != [op for op, _ in ours] or
      [len(t) for _, t in released] != [len(t) for _, t in ours]):
    raise ValueError('the models have different operators: %s vs %s' %
                     ([op for op, _ in released], [op for op, _ in ours]))
  records, seen = [], set()
  for (_, released_tensors), (_, our_tensors) in zip(released, ours):
    for expected, actual in zip(released_tensors, our_tensors):
      if expected['name'] in seen:
        continue
      seen.add(expected['name'])
      if not records:
        kind = 'input'
      elif expected['data'] is None:
        kind = 'activation'
      elif expected['type'] == np.uint8:
        kind = 'weights'
      elif len(expected['scale']):
        kind = 'bias'
      else:
        kind = 'constant'
      same = (actual['type'] == expected['type'] and
              actual['shape'] == expected['shape'])
      if actual['scale'].shape != expected['scale'].shape:
        scale_equal, relative = False, float('inf')
      else:
        scale_equal = np.array_equal(actual['scale'].view(np.uint32),
                                     expected['scale'].view(np.uint32))
        relative = float(np.max(np.abs(
            actual['scale'].astype(np.float64) / expected['scale'] - 1),
                                initial=0.0))
      code_diff = None
      if expected['data'] is not None and same:
        code_diff = int(np.max(np.abs(actual['data'].astype(np.int64) -
                                      expected['data'])))
      records.append({
          'name': expected['name'],
          'kind': kind,
          'same_type_and_shape': same,
          'scale_equal': scale_equal,
          'scale_relative_diff': relative,
          'zero_point_equal': np.array_equal(actual['zero_point'],
                                             expected['zero_point']),
          'code_diff': code_diff,
      })
  return records
