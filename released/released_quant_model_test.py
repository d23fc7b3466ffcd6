"""Google's released quantized MobileNet V1 0.5/160 through eval and export.

The release (third_party/released: a TOCO conversion of the quantized frozen
graph Google published, trained with tf.contrib.quantize) is turned back
into the checkpoint contrib.quantize saved: float weights, batch norms,
weight and activation ranges, the zero-debias slots of the activation
averages, `global_step` and `fake_quantization_step`
(released_models.contrib_variables). Then, on real photos:

* each layer of the quantized eval graph (what mobilenet_v1_eval --quantize
  measures), fed the released model's own input to that layer, gives the
  released output codes within one code (TFLite rounds twice, the eval graph
  once), and mobilenet_v1_eval --quantize reports what that graph predicts;
* the uint8 .tflite that mobilenet_v1_export writes has, tensor by tensor,
  the released scale, zero point and codes (the input's too: the released
  convention, mean 128 and std 128, which the eval graph's input rounding
  follows), and gives the released outputs on every image; both models run
  on TFLite's reference kernels;
* fine-tuning with --quantize restores the checkpoint, its extra variables
  notwithstanding.
"""

import os
import re

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from evaluation import tflite_eval
from model import inference_model
from released import released_models
from testing import test_data
from quantization import tflite_emulation

test_data.use_float32_math()

tf1 = tf.compat.v1

# The repository root, where the binaries and third_party/ are.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL = os.path.join(_ROOT, 'mobilenet_v1_eval.py')
EXPORT = os.path.join(_ROOT, 'mobilenet_v1_export.py')
TRAIN = os.path.join(_ROOT, 'mobilenet_v1_train.py')

DEPTH_MULTIPLIER = 0.5
IMAGE_SIZE = 160
NUM_CLASSES = 1001
MODEL_FLAGS = ['--depth_multiplier=%g' % DEPTH_MULTIPLIER,
               '--image_size=%d' % IMAGE_SIZE,
               '--num_classes=%d' % NUM_CLASSES]
STEP = 1234
QUANT_NAME = 'mobilenet_v1_0.5_160_quant'
OUTPUT = 'MobilenetV1/Predictions/Reshape_1:0'


class ReleasedQuantizedModelTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tf1.test.get_temp_dir()
    cls.released = released_models.read_verified(
        released_models.QUANT_0_5_160, released_models.QUANT_0_5_160_SHA256)
    cls.variables = released_models.contrib_variables(cls.released, STEP)
    cls.checkpoint = released_models.write_checkpoint(
        cls.variables, os.path.join(root, 'contrib', 'model.ckpt'))
    cls.views = released_models.photo_views()
    cls.images = released_models.eval_images(cls.views, IMAGE_SIZE)
    interpreter = released_models.reference_interpreter(cls.released)
    cls.input_details = interpreter.get_input_details()[0]
    # What the uint8 models see: the eval images on the released input grid.
    cls.codes = tflite_eval.quantize_input(cls.images, cls.input_details)
    cls.released_outputs = released_models.run_uint8(cls.released, cls.codes)
    cls.released_top1 = cls.released_outputs.argmax(-1)

    cls.export_dir = os.path.join(root, 'export')
    cls.export_stdout = test_data.run_binary(
        EXPORT, '--checkpoint_path=' + cls.checkpoint,
        '--output_dir=' + cls.export_dir, '--quantize', *MODEL_FLAGS)
    with open(os.path.join(cls.export_dir, QUANT_NAME + '.tflite'), 'rb') as f:
      cls.exported = f.read()
    cls.exported_input_details = released_models.reference_interpreter(
        cls.exported).get_input_details()[0]

  def test_checkpoint_has_contrib_layout(self):
    names = set(self.variables)
    ranges = [n for n in names if re.search(r'_quant/(min|max)$', n)]
    self.assertLen(ranges, 112)  # 28 layers x {weights, act} x {min, max}
    slots = [n for n in names if n.endswith(('/biased', '/local_step'))]
    self.assertLen(slots, 28 * 2 * 2)
    self.assertIn('MobilenetV1/MobilenetV1/Conv2d_0/act_quant/MobilenetV1/'
                  'MobilenetV1/Conv2d_0/act_quant/min/biased', names)
    self.assertLen(names - set(ranges) - set(slots), 137 + 2)
    # Every Relu6 range ends where a 0.999 average of 6 settles in float32.
    self.assertAllClose(
        self.variables['MobilenetV1/MobilenetV1/Conv2d_5_pointwise/act_quant/'
                       'max'], 5.9997616, rtol=1e-7)

  def build_eval_graph(self):
    """The quantized eval graph, restored: (graph, session, images input)."""
    graph = tf.Graph()
    with graph.as_default():
      images = tf1.placeholder(tf.float32, [None, IMAGE_SIZE, IMAGE_SIZE, 3])
      inference_model.build(
          images, NUM_CLASSES, DEPTH_MULTIPLIER, quantized=True,
          quantize_options=inference_model.quantize_options(self.checkpoint))
      variables = tf1.global_variables()
      inference_model.verify_checkpoint(self.checkpoint, graph, variables,
                                        NUM_CLASSES, DEPTH_MULTIPLIER, True)
      session = tf1.Session(graph=graph)
      self.addCleanup(session.close)
      tf1.train.Saver(variables).restore(session, self.checkpoint)
    return graph, session, images

  def test_eval_graph_computes_every_released_layer(self):
    # Each layer of the eval graph is fed what the same layer of the
    # released model received (TFLite's own activations) and must give the
    # codes it gave. Fed layer by layer, TFLite's rounding differences do
    # not compound (end to end they do: see README, "Released models").
    graph, session, images = self.build_eval_graph()
    interpreter = released_models.reference_interpreter(
        self.released, preserve_all_tensors=True)
    tensors = {d['name']: d for d in interpreter.get_tensor_details()}
    # Each layer op of the eval graph reads its weights through a fake quant
    # named as TOCO named the released weight tensor.
    layers = {op.inputs[1].op.name: op for op in graph.get_operations()
              if op.type in ('Conv2D', 'DepthwiseConv2dNative') and
              op.inputs[1].op.name in tensors}
    self.assertLen(layers, 28)
    released_ops = [(name, inputs) for name, inputs in
                    released_models.operators(self.released)
                    if name in ('CONV_2D', 'DEPTHWISE_CONV_2D')]
    feeds, fetches = {}, {}
    for _, (layer_input, weights, _, output) in released_ops:
      layer_op = layers[weights['name']]
      # What the eval graph quantizes to the released output tensor.
      act_quant = graph.get_operation_by_name(
          output['name'].rpartition('/')[0] +
          '/act_quant/FakeQuantWithMinMaxVars')
      feeds[layer_op.inputs[0]] = layer_input
      fetches[output['name']] = (act_quant.inputs[0], output)
    for index, image in enumerate(self.codes):
      interpreter.set_tensor(self.input_details['index'], image[None])
      interpreter.invoke()

      def dequantized(details):
        scale, zero_point = details['scale'][0], details['zero_point'][0]
        codes = interpreter.get_tensor(tensors[details['name']]['index'])
        return (scale * (codes.astype(np.float64) - zero_point)).astype(
            np.float32)

      values = session.run(
          {name: tensor for name, (tensor, _) in fetches.items()},
          {tensor: dequantized(details) for tensor, details in feeds.items()})
      for name, (_, details) in fetches.items():
        scale, zero_point = details['scale'][0], details['zero_point'][0]
        ours = np.clip(np.floor(values[name] / scale + zero_point + 0.5),
                       0, 255)
        theirs = interpreter.get_tensor(tensors[name]['index'])
        # TFLite requantizes in two roundings (a rounding fixed-point
        # multiply, then a rounding shift); the eval graph rounds the exact
        # value once. They differ only where the value lies within the first
        # rounding's error of a half: by one code at most.
        self.assertLessEqual(
            np.abs(ours - theirs.astype(np.int64)).max(), 1,
            'image %d, %s' % (index, name))

  def test_eval_binary_measures_the_eval_graph(self):
    graph, session, images = self.build_eval_graph()
    predictions = session.run(graph.get_tensor_by_name(OUTPUT),
                              {images: self.images})
    # Not all: TFLite rounds each layer twice, the eval graph once, and a
    # code's difference grows through the layers (see README, "Released
    # models").
    same_top1 = np.sum(predictions.argmax(-1) == self.released_top1)
    print('eval graph: top-1 as released on %d of %d images' %
          (same_top1, len(self.images)))
    self.assertGreaterEqual(same_top1, 0.8 * len(self.images))
    dataset_dir = os.path.join(self.get_temp_dir(), 'photos')
    test_data.write_encoded_split(dataset_dir, 'validation', self.views,
                                  predictions.argmax(-1))
    stdout = test_data.run_binary(
        EVAL, '--dataset_dir=' + dataset_dir,
        '--checkpoint_path=' + self.checkpoint, '--quantize', '--batch_size=8',
        *MODEL_FLAGS)
    self.assertIn('(step %d): Accuracy 1.0000' % STEP, stdout)
    self.assertIn('on %d examples' % len(self.views), stdout)

  def test_input_has_released_convention(self):
    # Mean 128, std 128: scale exactly 1/128, zero point 128, in both models.
    self.assertEqual(self.input_details['quantization'], (1 / 128, 128))
    self.assertEqual(self.exported_input_details['quantization'],
                     self.input_details['quantization'])
    # The eval graph rounds its float input to the codes both models get.
    with tf.Graph().as_default(), tf1.Session() as session:
      rounded = session.run(
          tflite_emulation.quantize_input(tf.constant(self.images)))
    np.testing.assert_array_equal(rounded * 128 + 128, self.codes)

  def test_exported_tflite_gives_released_outputs(self):
    # Each model is fed as mobilenet_v1_tflite_eval feeds it, from its own
    # input scale and zero point.
    ours = released_models.run_uint8(
        self.exported, tflite_eval.quantize_input(
            self.images, self.exported_input_details))
    same_top1 = np.sum(ours.argmax(-1) == self.released_top1)
    print('our .tflite: top-1 as released on %d of %d images, outputs '
          'identical on %d' % (same_top1, len(ours),
                               np.all(ours == self.released_outputs, -1).sum()))
    np.testing.assert_array_equal(ours, self.released_outputs)

  def test_exported_tensors_have_released_quantization(self):
    records = released_models.compare_operators(self.released, self.exported)
    self.assertLen(records, 89)
    self.assertEqual(records[0]['kind'], 'input')
    identical = 0
    for record in records:
      where = '%s (%s)' % (record['name'], record['kind'])
      self.assertTrue(record['same_type_and_shape'], where)
      self.assertTrue(record['zero_point_equal'], where)
      # Weights are folded (times gamma / sqrt(variance + epsilon), 1 up to
      # the float32 rsqrt's rounding) before they are quantized, but they
      # lie on the released grid, far from a rounding boundary; a bias's
      # |code| x 2 ulps of scale is far below half a code.
      self.assertIn(record['code_diff'], (0, None), where)
      if record['kind'] == 'bias':
        # A bias scale is the product of two float32 scales, which
        # converters round to float32 in their own ways: at most 2 ulps
        # (an ulp is at most 2^-23 of the value).
        self.assertLessEqual(record['scale_relative_diff'], 2 * 2.0**-23,
                             where)
      else:
        # Every other scale follows from a float32 range the checkpoint
        # holds, or is fixed: the input's 1/128, the softmax's 1/256.
        self.assertTrue(record['scale_equal'], where)
      identical += record['scale_equal']
    print('tensors of our .tflite identical to the release\'s: %d of %d '
          '(the others: bias scales 1-2 ulps apart, same codes)' %
          (identical, len(records)))

  def test_info_file_states_released_input_convention(self):
    with open(os.path.join(self.export_dir, QUANT_NAME + '_info.txt')) as f:
      info = f.read()
    scale, zero_point = self.input_details['quantization']
    self.assertIn('TFLite input: uint8 [1, 160, 160, 3] scale=%.9g '
                  'zero_point=%d' % (scale, zero_point), info)
    self.assertIn('Input mean: 128\nInput std: 128\n', info)
    self.assertIn('Input values: (pixel - 128) / 128, in [-1, 0.9921875]; '
                  'the uint8 TFLite input is the pixel itself\n', info)
    self.assertIn('(step %d)' % STEP, self.export_stdout)

  def test_fine_tuning_restores_the_contrib_checkpoint(self):
    dataset_dir = os.path.join(self.get_temp_dir(), 'train_photos')
    test_data.write_encoded_split(dataset_dir, 'train', self.views,
                                  self.released_top1)
    train_dir = os.path.join(self.get_temp_dir(), 'fine_tuned')
    test_data.run_binary(
        TRAIN, '--dataset_dir=' + dataset_dir, '--checkpoint_dir=' + train_dir,
        '--fine_tune_checkpoint=' + self.checkpoint, '--quantize',
        '--number_of_steps=1', '--batch_size=2', '--learning_rate=0',
        '--log_every_n_steps=1000', *MODEL_FLAGS)
    tuned = tf.train.load_checkpoint(tf.train.latest_checkpoint(train_dir))
    # Restored, not initialized: a step at learning rate 0 leaves them.
    for name in ('MobilenetV1/Conv2d_0/weights',
                 'MobilenetV1/Conv2d_13_pointwise/weights',
                 'MobilenetV1/Logits/Conv2d_1c_1x1/biases'):
      self.assertAllEqual(tuned.get_tensor(name), self.variables[name],
                          msg=name)
    self.assertEqual(tuned.get_tensor('global_step'), 1)
    # The activation ranges' averages carry on from the checkpoint's slots,
    # as contrib's did: one more zero-debiased update, not a restart.
    scope = 'MobilenetV1/MobilenetV1/Conv2d_3_pointwise/act_quant'
    for bound in ('min', 'max'):
      slot = '%s/%s/%s/' % (scope, scope, bound)
      steps = tuned.get_tensor(slot + 'local_step')
      self.assertEqual(steps, self.variables[slot + 'local_step'] + 1)
      self.assertAllClose(
          tuned.get_tensor('%s/%s' % (scope, bound)),
          tuned.get_tensor(slot + 'biased') / (1 - 0.999**steps), rtol=1e-5)
      # One update moves the average by 0.1% of the batch's distance.
      self.assertAllClose(tuned.get_tensor('%s/%s' % (scope, bound)),
                          self.variables['%s/%s' % (scope, bound)],
                          rtol=0.02, atol=0.02)


if __name__ == '__main__':
  tf.test.main()
