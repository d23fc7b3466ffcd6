"""Tests mobilenet_v1_export and mobilenet_v1_tflite_eval as users run them.

Two small models (0.25@64, 3 colour classes) are trained with the train
binary: a float one and a quantization-aware one. Their exported bundles are
then checked against the checkpoints they came from. Quantized predictions of
an untrained network are noise, so both models are trained until the classes
are well separated before anything is compared.
"""

import os
import re
import subprocess
import sys
import time

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from data import records
from evaluation import tflite_eval
import mobilenet_v1
from quantization import quantize
from quantization import tflite_emulation
from testing import test_data

test_data.use_float32_math()

tf1 = tf.compat.v1

_HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(_HERE, 'mobilenet_v1_train.py')
EVAL = os.path.join(_HERE, 'mobilenet_v1_eval.py')
EXPORT = os.path.join(_HERE, 'mobilenet_v1_export.py')
TFLITE_EVAL = os.path.join(_HERE, 'mobilenet_v1_tflite_eval.py')

NUM_CLASSES = 4  # 3 colours, and the background class 0
IMAGE_SIZE = 64
MODEL_FLAGS = ['--depth_multiplier=0.25', '--image_size=%d' % IMAGE_SIZE,
               '--num_classes=%d' % NUM_CLASSES]
# At 0.05 the float model's first layers can train a batch norm gamma of
# ~1e3 (depending on the CPU's rounding): one channel whose folded weights
# set the layer's per-tensor range and round its other channels to zero,
# which the per-tensor fine-tune does not recover from. 0.02 learns the task
# in the same steps with gammas of a few units.
TRAIN_FLAGS = ['--batch_size=8', '--optimizer=momentum', '--learning_rate=0.02',
               '--batch_norm_decay=0.9', '--log_every_n_steps=1000',
               *test_data.REPRODUCIBLE_TRAINING]
FLOAT_NAME = 'mobilenet_v1_0.25_64'
QUANT_NAME = 'mobilenet_v1_0.25_64_quant'
OUTPUT = 'MobilenetV1/Predictions/Reshape_1:0'
VARIABLE_OPS = frozenset(['VarHandleOp', 'VariableV2', 'Variable',
                          'ReadVariableOp', 'Assign', 'AssignVariableOp',
                          'AssignAdd', 'AssignSub', 'AssignAddVariableOp',
                          'AssignSubVariableOp', 'VarIsInitializedOp'])


def python(script, *flags):
  """Starts one of the binaries; returns the Popen."""
  return subprocess.Popen([sys.executable, script] + list(flags),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def finish(processes, timeout=600):
  """Waits for processes started by `python`; returns their stdouts.

  Raises:
    AssertionError: a process failed; the message has its stderr.
  """
  outputs = []
  for process in processes:
    stdout, stderr = process.communicate(timeout=timeout)
    if process.returncode:
      raise AssertionError('%s exited with %d:\n%s' % (
          os.path.basename(process.args[1]), process.returncode, stderr))
    outputs.append(stdout)
  return outputs


# mobilenet_v1_export with its second TFLite conversion failing, as a
# converter error would (after the checkpoint, graphs and NAME.tflite).
_FAILING_EXPORT = """
import sys
from export import convert
import mobilenet_v1_export

run_converter = convert._run_converter
calls = []


def fail_second(converter):
  calls.append(converter)
  if len(calls) == 2:
    raise RuntimeError('injected converter failure')
  return run_converter(converter)


convert._run_converter = fail_second
sys.argv[0] = 'mobilenet_v1_export'
mobilenet_v1_export.cli.run(mobilenet_v1_export.main)
"""


def validation_images(dataset_dir):
  """The validation split as the eval pipeline gives it: (images, labels)."""
  dataset = records.build_dataset(dataset_dir, 'validation', 1000,
                                         IMAGE_SIZE, is_training=False)
  images, labels = next(dataset.as_numpy_iterator())
  return images, labels


def load_frozen(path):
  graph_def = tf1.GraphDef()
  with open(path, 'rb') as f:
    graph_def.ParseFromString(f.read())
  return graph_def


def run_frozen(path, images, input_name='input:0', output_name=OUTPUT):
  """Runs a frozen graph on each image (its batch is 1); returns outputs."""
  with tf.Graph().as_default() as graph:
    tf.graph_util.import_graph_def(load_frozen(path), name='')
    with tf1.Session(graph=graph) as session:
      return np.concatenate([session.run(output_name, {input_name: image[None]})
                             for image in images])


def run_checkpoint(checkpoint, images, quantized):
  """The eval graph restored from a training checkpoint, image by image.

  Built here from the model and the quantization rewrite, independently of
  the export's code.
  """
  with tf.Graph().as_default() as graph:
    images_in = tf1.placeholder(tf.float32, [1, IMAGE_SIZE, IMAGE_SIZE, 3])
    model_input = tflite_emulation.quantize_input(images_in) if quantized else images_in
    with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(False)):
      _, end_points = mobilenet_v1.mobilenet_v1(
          model_input, num_classes=NUM_CLASSES, depth_multiplier=0.25,
          is_training=False)
    if quantized:
      # Trained with per-tensor symmetric weights, so with the channels their
      # input's rounding drowns folded to constants, as every per-tensor
      # training graph folds them.
      quantize.create_eval_graph(weights=quantize.ASYMMETRIC,
                                 mask_drowned_channels=True)
    predictions = end_points['Predictions']
    with tf1.Session(graph=graph) as session:
      tf1.train.Saver().restore(session, checkpoint)
      return np.concatenate([session.run(predictions, {images_in: image[None]})
                             for image in images])


def run_tflite(path, images):
  """Runs a TFLite model image by image, as mobilenet_v1_tflite_eval does.

  Returns:
    (dequantized outputs, the float images the model actually saw, output
    scale or 0 for a float output).
  """
  interpreter, _ = tflite_eval.load_interpreter(path, 1)
  input_details = interpreter.get_input_details()[0]
  output_details = interpreter.get_output_details()[0]
  in_scale, in_zero = input_details['quantization']
  out_scale, out_zero = output_details['quantization']
  seen, outputs = [], []
  for image in images:
    quantized = tflite_eval.quantize_input(image, input_details)
    if in_scale:
      # What the integer input stands for: `image` rounded to the input's
      # grid (1/128 for the quantized models, as the eval graph rounds it).
      image = (quantized.astype(np.float32) - in_zero) * in_scale
    seen.append(image)
    interpreter.set_tensor(input_details['index'], quantized[None])
    interpreter.invoke()
    output = interpreter.get_tensor(output_details['index'])[0]
    if out_scale:
      output = (output.astype(np.float32) - out_zero) * out_scale
    outputs.append(output)
  return np.array(outputs), np.array(seen, np.float32), out_scale


def tensor_dtypes(path):
  interpreter = Interpreter(model_path=path)
  return {np.dtype(t['dtype']).name for t in interpreter.get_tensor_details()}


def operator_names(path):
  """The builtin operators a .tflite file's graph runs, as a set of names."""
  with open(path, 'rb') as f:
    model = schema.Model.GetRootAs(f.read(), 0)
  names = {value: name for name, value in vars(schema.BuiltinOperator).items()
           if not name.startswith('_')}
  codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
  graph = model.Subgraphs(0)
  used = set()
  for i in range(graph.OperatorsLength()):
    code = codes[graph.Operators(i).OpcodeIndex()]
    # Older writers fill only the deprecated (int8) field of small codes.
    used.add(names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
  return used


def read_info(path):
  """NAME_info.txt as {key: value}."""
  with open(path) as f:
    return dict(line.rstrip('\n').split(': ', 1) for line in f if line.strip())


def block_image(label, size, rng):
  """Random 4x4 blocks, brightened in the channel of the label (1..3).

  Unlike flat colours, the blocks give every layer activations that vary,
  so quantization-aware training keeps its channels alive and learns the
  task in a few hundred steps.
  """
  blocks = rng.randint(0, 128, [4, 4, 3])
  image = np.kron(blocks, np.ones([size // 4, size // 4, 1]))
  image[:, :, label - 1] += 127
  return image.astype(np.uint8)


def write_block_split(dataset_dir, split, labels, seed, wrong_every=0,
                      size=48):
  """Writes one `split-00000-of-00001` file of block images.

  Args:
    dataset_dir: created if needed.
    split: the split name.
    labels: the image classes (1..3), in file order.
    seed: the random seed.
    wrong_every: if positive, every wrong_every-th record gets the next
      class's label instead of its own.
    size: image height and width.
  """
  rng = np.random.RandomState(seed)
  os.makedirs(dataset_dir, exist_ok=True)
  path = os.path.join(dataset_dir, '%s-00000-of-00001' % split)
  with tf.io.TFRecordWriter(path) as writer:
    for index, label in enumerate(labels):
      jpeg = tf.io.encode_jpeg(block_image(label, size, rng)).numpy()
      if wrong_every and index % wrong_every == 0:
        label = label % 3 + 1
      writer.write(test_data.image_example(jpeg, label, size, size)
                   .SerializeToString())


class ExportTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tf1.test.get_temp_dir()
    cls.dataset_dir = os.path.join(root, 'data')
    write_block_split(cls.dataset_dir, 'train', [1, 2, 3] * 32, seed=0)
    # 120 validation images: enough for a 99% agreement to mean something.
    write_block_split(cls.dataset_dir, 'validation', [1, 2, 3] * 40, seed=1)
    cls.float_dir = os.path.join(root, 'float')
    cls.quant_dir = os.path.join(root, 'quant')
    # The quantized model is fine-tuned quantization-aware from the float
    # one, as the seed does it, with per-tensor symmetric weights: the uint8
    # model and its int8 twin (the default per-channel int8 model is the
    # end-to-end test's).
    finish([python(TRAIN, '--dataset_dir=' + cls.dataset_dir,
                   '--checkpoint_dir=' + cls.float_dir, '--number_of_steps=250',
                   *(MODEL_FLAGS + TRAIN_FLAGS))])
    finish([python(TRAIN, '--dataset_dir=' + cls.dataset_dir,
                   '--checkpoint_dir=' + cls.quant_dir, '--number_of_steps=150',
                   '--quantize', '--fine_tune_checkpoint=' + cls.float_dir,
                   '--weight_quantization=symmetric',
                   *(MODEL_FLAGS + TRAIN_FLAGS + ['--learning_rate=0.005']))])
    cls.float_out = os.path.join(root, 'float_export')
    cls.quant_out = os.path.join(root, 'quant_export')
    cls.export_stdout = finish([
        python(EXPORT, '--checkpoint_dir=' + cls.float_dir,
               '--output_dir=' + cls.float_out,
               '--post_training=dynamic,float16,int8',
               '--dataset_dir=' + cls.dataset_dir, *MODEL_FLAGS),
        python(EXPORT, '--checkpoint_dir=' + cls.quant_dir,
               '--output_dir=' + cls.quant_out, '--quantize', *MODEL_FLAGS),
    ])
    cls.images, cls.labels = validation_images(cls.dataset_dir)

  def path(self, quantized, suffix):
    if quantized:
      return os.path.join(self.quant_out, QUANT_NAME + suffix)
    return os.path.join(self.float_out, FLOAT_NAME + suffix)

  def test_bundles_have_the_released_files_and_names(self):
    bundle = ['.ckpt.data-00000-of-00001', '.ckpt.index', '.ckpt.meta',
              '_eval.pbtxt', '_frozen.pb', '_info.txt', '.tflite']
    self.assertCountEqual(
        os.listdir(self.float_out),
        [FLOAT_NAME + s for s in bundle] +
        [FLOAT_NAME + '_ptq_%s.tflite' % k
         for k in ('dynamic', 'float16', 'int8')])
    self.assertCountEqual(os.listdir(self.quant_out),
                          [QUANT_NAME + s for s in bundle + ['_int8.tflite']])
    # The summary lists every file with its size.
    for stdout, directory in zip(self.export_stdout,
                                 (self.float_out, self.quant_out)):
      for name in os.listdir(directory):
        size = os.path.getsize(os.path.join(directory, name))
        self.assertRegex(stdout, r'%s\s+%d bytes' % (re.escape(name), size))

  def test_exported_checkpoint_holds_the_model_without_optimizer_slots(self):
    for quantized, source in ((False, self.float_dir), (True, self.quant_dir)):
      exported = tf.train.load_checkpoint(self.path(quantized, '.ckpt'))
      trained = tf.train.load_checkpoint(tf.train.latest_checkpoint(source))
      names = exported.get_variable_to_shape_map()
      self.assertFalse([n for n in names if 'Momentum' in n])
      self.assertEqual(any('act_quant/min' in n for n in names), quantized)
      for name in names:
        self.assertAllEqual(exported.get_tensor(name),
                            trained.get_tensor(name))

  def test_checkpoint_without_global_step_exports_the_same_model(self):
    # The float bundle's checkpoint trimmed as releases are: model only.
    bundle = tf.train.load_checkpoint(self.path(False, '.ckpt'))
    release = os.path.join(self.get_temp_dir(), 'release', 'model.ckpt')
    with tf.Graph().as_default():
      variables = [tf1.Variable(bundle.get_tensor(name), name=name)
                   for name in bundle.get_variable_to_shape_map()
                   if name != 'global_step']
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        tf1.train.Saver(variables).save(session, release,
                                        write_meta_graph=False)
    output_dir = os.path.join(self.get_temp_dir(), 'release_export')
    stdout, = finish([python(EXPORT, '--checkpoint_path=' + release,
                             '--output_dir=' + output_dir, *MODEL_FLAGS)])
    self.assertIn('(step unknown)', stdout)
    exported = tf.train.load_checkpoint(
        os.path.join(output_dir, FLOAT_NAME + '.ckpt'))
    self.assertCountEqual(exported.get_variable_to_shape_map(),
                          [v.op.name for v in variables])
    with open(os.path.join(output_dir, FLOAT_NAME + '.tflite'), 'rb') as f:
      trimmed_tflite = f.read()
    with open(self.path(False, '.tflite'), 'rb') as f:
      self.assertEqual(trimmed_tflite, f.read())

  def test_frozen_graphs_have_no_variables(self):
    for quantized in (False, True):
      op_types = {node.op for node in
                  load_frozen(self.path(quantized, '_frozen.pb')).node}
      self.assertFalse(op_types & VARIABLE_OPS, op_types)
      # A quantized frozen graph is still float, with fake quantization.
      self.assertEqual('FakeQuantWithMinMaxVars' in op_types, quantized)

  def test_frozen_graphs_compute_what_the_checkpoints_do(self):
    for quantized, source in ((False, self.float_dir), (True, self.quant_dir)):
      expected = run_checkpoint(tf.train.latest_checkpoint(source),
                                self.images, quantized)
      frozen = run_frozen(self.path(quantized, '_frozen.pb'), self.images)
      # Grappler folds the frozen graph's constants, so rounding differs a little.
      if not quantized:
        self.assertAllClose(frozen, expected, atol=1e-5, rtol=0)
      else:
        # A value that lands within that rounding of a fake-quant step
        # boundary moves one step (CI, one run in many: 2 of 480 outputs off
        # by 5e-4): nearly all outputs still agree to 1e-5, none by a step
        # of the exported uint8 output (1/256).
        difference = np.abs(frozen - expected)
        self.assertGreaterEqual(np.mean(difference <= 1e-5), 0.99)
        self.assertLess(difference.max(), 1 / 256)
      # The model learned the task (chance is 1/3): comparisons below are
      # not of noise.
      self.assertGreater(np.mean(np.argmax(frozen, 1) == self.labels), 0.6,
                         'quantized: %s' % quantized)

  def test_info_file_names_run_the_frozen_graph(self):
    for quantized in (False, True):
      info = read_info(self.path(quantized, '_info.txt'))
      self.assertEqual(info['Model'], QUANT_NAME if quantized else FLOAT_NAME)
      self.assertEqual(info['Input shape'], '[1, 64, 64, 3]')
      self.assertEqual(info['Input dtype'], 'float32')
      outputs = run_frozen(self.path(quantized, '_frozen.pb'), self.images[:2],
                           info['Input'] + ':0', info['Output'] + ':0')
      self.assertEqual(info['Output shape'], '[1, %d]' % NUM_CLASSES)
      self.assertEqual(outputs.shape, (2, NUM_CLASSES))
    float_info = read_info(self.path(False, '_info.txt'))
    self.assertEqual(float_info['TFLite input'], 'float32 [1, 64, 64, 3]')
    self.assertEqual(float_info['Input mean'], '127.5')
    self.assertEqual(float_info['Input std'], '127.5')
    self.assertEqual(float_info['Input values'],
                     '(pixel - 127.5) / 127.5, in [-1, 1]')
    # The released quantized models' convention: the uint8 input is the
    # pixel, standing for (pixel - 128) / 128.
    quant_info = read_info(self.path(True, '_info.txt'))
    self.assertEqual(quant_info['Input mean'], '128')
    self.assertEqual(quant_info['Input std'], '128')
    self.assertEqual(quant_info['Input values'],
                     '(pixel - 128) / 128, in [-1, 0.9921875]; the uint8 '
                     'TFLite input is the pixel itself')
    self.assertEqual(quant_info['TFLite input'],
                     'uint8 [1, 64, 64, 3] scale=0.0078125 zero_point=128')
    self.assertEqual(quant_info['TFLite output'],
                     'uint8 [1, 4] scale=0.00390625 zero_point=0')

  def test_float_tflite_matches_tensorflow(self):
    tf_outputs = run_frozen(self.path(False, '_frozen.pb'), self.images)
    tflite_outputs, _, _ = run_tflite(self.path(False, '.tflite'),
                                      self.images)
    self.assertAllClose(tflite_outputs, tf_outputs, atol=1e-4, rtol=0)

  def test_uint8_tflite_is_integer_small_and_learned_the_task(self):
    path = self.path(True, '.tflite')
    self.assertContainsSubset(tensor_dtypes(path), {'uint8', 'int32'})
    # Nothing but the network's own layers: no quantize/dequantize steps, and
    # no op left over from how the eval graph emulates integer rounding.
    self.assertEqual(operator_names(path), {
        'CONV_2D', 'DEPTHWISE_CONV_2D', 'AVERAGE_POOL_2D', 'RESHAPE',
        'SOFTMAX'})
    self.assertLessEqual(os.path.getsize(path),
                         0.3 * os.path.getsize(self.path(False, '.tflite')))
    tflite_outputs, seen, output_scale = run_tflite(path, self.images)
    self.assertEqual(output_scale, 1 / 256)
    tf_outputs = run_frozen(self.path(True, '_frozen.pb'), seen)
    # The model learned the task, so its predictions are not noise. How
    # closely the integer model follows the fake-quant graph is checked on
    # the sample digits by end_to_end_test: on these synthetic blocks the
    # trained network has near-dead depthwise channels whose folded weights
    # dwarf the rest, so its per-tensor weight ranges are a poor test case.
    self.assertGreater(np.mean(np.argmax(tf_outputs, 1) == self.labels), 0.6)
    self.assertGreater(np.mean(np.argmax(tflite_outputs, 1) == self.labels),
                       0.6)

  def test_int8_twin_is_int8_inside_and_predicts_what_uint8_does(self):
    path = self.path(True, '_int8.tflite')
    self.assertContainsSubset(tensor_dtypes(path), {'uint8', 'int8', 'int32'})
    self.assertEqual(operator_names(path), {
        'QUANTIZE', 'CONV_2D', 'DEPTHWISE_CONV_2D', 'MEAN',
        'RESHAPE', 'SOFTMAX'})
    self.assertLessEqual(os.path.getsize(path),
                         0.3 * os.path.getsize(self.path(False, '.tflite')))
    # Inside, the same input convention: int8, scale 1/128, zero point 0.
    int8_inputs = [
        d['quantization'] for d in Interpreter(
            model_path=path).get_tensor_details()
        if d['dtype'] == np.int8 and list(d['shape']) == [1, 64, 64, 3]]
    self.assertEqual(int8_inputs, [(1 / 128, 0)])
    uint8_outputs, seen, _ = run_tflite(self.path(True, '.tflite'),
                                        self.images)
    int8_outputs, _, output_scale = run_tflite(path, self.images)
    self.assertEqual(output_scale, 1 / 256)
    # Near-ties may go either way (the twin's kernels round some values a
    # step the other way), so only images whose prediction stands above the
    # quantization noise count: those where the fake-quant graph's margin
    # between its top two classes exceeds twice the uint8 model's largest
    # deviation from that graph. Both integer models must predict the
    # graph's class there.
    tf_outputs = run_frozen(self.path(True, '_frozen.pb'), seen)
    noise = np.abs(uint8_outputs - tf_outputs).max()
    top_two = np.sort(tf_outputs, 1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 2 * noise
    self.assertGreaterEqual(np.mean(clear), 0.5, noise)
    self.assertAllEqual(np.argmax(int8_outputs[clear], 1),
                        np.argmax(tf_outputs[clear], 1))
    info = read_info(self.path(True, '_info.txt'))
    self.assertEqual(info['TFLite %s_int8.tflite input' % QUANT_NAME],
                     info['TFLite input'])
    self.assertEqual(info['TFLite %s_int8.tflite output' % QUANT_NAME],
                     info['TFLite output'])

  def test_post_training_models(self):
    tf_outputs = run_frozen(self.path(False, '_frozen.pb'), self.images)
    for kind in ('dynamic', 'float16', 'int8'):
      with self.subTest(kind=kind):
        path = self.path(False, '_ptq_%s.tflite' % kind)
        outputs, _, _ = run_tflite(path, self.images)
        self.assertGreaterEqual(
            np.mean(np.argmax(outputs, 1) == np.argmax(tf_outputs, 1)), 0.95)
        if kind == 'int8':
          self.assertContainsSubset(tensor_dtypes(path), {'int8', 'int32'})
    info = read_info(self.path(False, '_info.txt'))
    self.assertRegex(info['TFLite %s_ptq_int8.tflite input' % FLOAT_NAME],
                     r'^int8 \[1, 64, 64, 3\] scale=')

  def test_tflite_eval_reports_what_eval_reports(self):
    # Wrong labels on a third of the images make accuracy neither 0 nor 1.
    mislabelled_dir = os.path.join(self.get_temp_dir(), 'mislabelled')
    examples = 45
    write_block_split(mislabelled_dir, 'validation', [1, 2, 3] * 15, seed=2,
                      wrong_every=3)
    tf_out, tflite_out = finish([
        python(EVAL, '--dataset_dir=' + mislabelled_dir,
               '--checkpoint_path=' + self.path(False, '.ckpt'),
               '--eval_dir=' + os.path.join(self.get_temp_dir(), 'eval'),
               *MODEL_FLAGS),
        python(TFLITE_EVAL, '--dataset_dir=' + mislabelled_dir,
               '--tflite_path=' + self.path(False, '.tflite')),
    ])
    pattern = r'Accuracy ([0-9.]+)  Recall_5 ([0-9.]+)  on (\d+) examples'
    tf_accuracy, tf_recall, tf_examples = re.search(pattern, tf_out).groups()
    accuracy, recall, tflite_examples = re.search(pattern,
                                                  tflite_out).groups()
    self.assertEqual(int(tflite_examples), examples)
    self.assertEqual(int(tf_examples), examples)
    self.assertLessEqual(abs(float(accuracy) - float(tf_accuracy)) * examples,
                         1.001)
    # Four classes: every label is among the top five, and both say so.
    self.assertEqual((recall, tf_recall), ('1.0000', '1.0000'))
    self.assertBetween(float(accuracy), 0.4, 0.8)

  def test_tflite_eval_latency_mode(self):
    runs = 20
    start = time.monotonic()
    stdout, = finish([python(TFLITE_EVAL, '--latency_runs=%d' % runs,
                             '--warmup_runs=1', '--tflite_path=' +
                             self.path(True, '.tflite'))])
    wall_ms = (time.monotonic() - start) * 1000
    lines = re.findall(r'latency with (\d+) threads?: median ([0-9.]+) ms  '
                       r'p90 ([0-9.]+) ms  over %d runs' % runs, stdout)
    self.assertEqual(lines[0][0], '1')
    self.assertLen(lines, len({1, len(os.sched_getaffinity(0))}))
    # The timed runs happened inside the process: at least half of them took
    # the median or longer, and a tenth the p90 or longer, so the figures
    # cannot add up to more than its wall time (a unit slip would).
    timed_ms = sum(max(float(median) * runs / 2, float(p90) * runs / 10)
                   for _, median, p90 in lines)
    self.assertLess(timed_ms, wall_ms)
    # A uint8 model's latency comes with a pointer to its faster twin.
    self.assertIn('NAME_int8.tflite', stdout)
    twin_stdout, = finish([python(TFLITE_EVAL, '--latency_runs=2',
                                  '--warmup_runs=0', '--tflite_path=' +
                                  self.path(True, '_int8.tflite'))])
    self.assertRegex(twin_stdout, r'latency with 1 thread: median')
    self.assertNotIn('NAME_int8.tflite', twin_stdout)

  def test_failing_conversion_leaves_no_bundle_files(self):
    output_dir = os.path.join(self.get_temp_dir(), 'failing')
    os.makedirs(output_dir)
    # What was there stays: the user's own file and an older bundle's.
    old_files = {'notes.txt': b'mine', FLOAT_NAME + '.tflite': b'older model'}
    for name, content in old_files.items():
      with open(os.path.join(output_dir, name), 'wb') as f:
        f.write(content)
    result = subprocess.run(
        [sys.executable, '-c', _FAILING_EXPORT,
         '--checkpoint_dir=' + self.float_dir, '--output_dir=' + output_dir,
         '--post_training=dynamic'] + MODEL_FLAGS,
        capture_output=True, text=True, timeout=600, check=False,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    self.assertEqual(result.returncode, 1, result.stderr)
    # Not bad input: the failure keeps its traceback.
    self.assertIn('Traceback', result.stderr)
    self.assertIn('RuntimeError: injected converter failure', result.stderr)
    self.assertCountEqual(os.listdir(output_dir), old_files)
    for name, content in old_files.items():
      with open(os.path.join(output_dir, name), 'rb') as f:
        self.assertEqual(f.read(), content)

  def test_bad_input_gets_one_line_errors(self):
    temp = self.get_temp_dir()
    a_file = self.path(False, '_info.txt')
    export = [EXPORT, '--output_dir=' + os.path.join(temp, 'out')]
    float_checkpoint = '--checkpoint_dir=' + self.float_dir
    cases = [
        (export + ['--checkpoint_dir=' + os.path.join(temp, 'none')],
         'no checkpoint'),
        (export + [float_checkpoint, '--depth_multiplier=0.5'],
         'does not fit this model'),
        (export + [float_checkpoint, '--quantize'], 'no quantization ranges'),
        ([EXPORT, float_checkpoint, '--output_dir=' + a_file + '/out'],
         'cannot create --output_dir'),
        (export + [float_checkpoint, '--quantize', '--post_training=int8'],
         'already quantized'),
        (export + [float_checkpoint, '--post_training=int4'], 'unknown int4'),
        ([TFLITE_EVAL, '--tflite_path=' + os.path.join(temp, 'none.tflite'),
          '--latency_runs=1'], 'no TFLite model'),
        ([TFLITE_EVAL, '--tflite_path=' + a_file, '--latency_runs=1'],
         'cannot load'),
        ([TFLITE_EVAL, '--tflite_path=' + self.path(False, '.tflite'),
          '--dataset_dir=' + os.path.join(temp, 'none')], 'does not exist'),
    ]
    processes = [python(*(args[:1] + (MODEL_FLAGS if args[0] == EXPORT else [])
                          + args[1:])) for args, _ in cases]
    for process, (args, message) in zip(processes, cases):
      _, stderr = process.communicate(timeout=300)
      with self.subTest(message=message):
        self.assertEqual(process.returncode, 1, stderr)
        self.assertNotIn('Traceback', stderr)
        self.assertLen(stderr.strip().splitlines(), 1, stderr)
        self.assertIn(message, stderr)
        self.assertStartsWith(
            stderr, os.path.basename(args[0]).replace('.py', '') + ': error:')


if __name__ == '__main__':
  tf.test.main()
