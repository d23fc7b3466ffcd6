"""The whole path on the sample data, as the binaries run it.

Handwritten digits to TFRecords, float training from scratch, evaluation,
quantization-aware fine-tuning with the default flags (per-channel weights),
quantized evaluation, export of the release bundle and evaluation of its
int8 TFLite model (uint8 input and output).
"""

import os
import re
import subprocess
import sys

from ai_edge_litert import interpreter as litert
import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from kernels import batch_norm_relu6
from data import records
from evaluation import tflite_eval
from testing import test_data

test_data.use_float32_math()

tf1 = tf.compat.v1

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = ['--depth_multiplier=0.25', '--image_size=64', '--num_classes=11']
TRAIN = ['--batch_size=32', '--optimizer=momentum', '--batch_norm_decay=0.99',
         '--log_every_n_steps=500', *test_data.REPRODUCIBLE_TRAINING]
CHANCE = 0.1  # 10 balanced classes


def run(program, *flags):
  result = subprocess.run(
      [sys.executable, os.path.join(HERE, program + '.py')] + list(flags),
      capture_output=True, text=True, timeout=1200, check=False)
  if result.returncode:
    raise AssertionError('%s failed:\n%s' % (program, result.stderr))
  return result.stdout


def validation_images(dataset_dir):
  """The validation images after eval preprocessing, float32 in [-1, 1]."""
  return np.concatenate([batch.numpy() for batch, _ in
                         records.build_dataset(
                             dataset_dir, 'validation', 100, 64,
                             is_training=False)])


def tflite_and_fake_quant_logits(bundle, name, images):
  """Quantized logits of the integer TFLite model and of the TF graph.

  The images (after eval preprocessing) go through the model's own input
  quantization; the TF fake-quant graph (the frozen eval graph) gets the
  float values that the uint8 input stands for. TFLite runs its reference
  kernels, whose arithmetic tflite_emulation_test bounds layer by layer.

  Returns:
    (TFLite logits, TF logits, the logits' quantization step), [N, classes].
  """
  model = litert.Interpreter(
      model_path=os.path.join(bundle, name + '.tflite'),
      experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF,
      experimental_preserve_all_tensors=True)
  model.allocate_tensors()
  model_input = model.get_input_details()[0]
  scale, zero_point = model_input['quantization']
  # The squeezed logits feeding the softmax, as TFLite names them.
  logits, = [t for t in model.get_tensor_details()
             if t['name'].startswith('MobilenetV1/Logits/SpatialSqueeze') and
             t['dtype'] in (np.uint8, np.int8)]
  logits_scale, logits_zero_point = logits['quantization']
  uint8_images = tflite_eval.quantize_input(images, model_input)
  tflite_logits = []
  for image in uint8_images:
    model.set_tensor(model_input['index'], image[None])
    model.invoke()
    tflite_logits.append(
        (model.get_tensor(logits['index'])[0].astype(np.float32) -
         logits_zero_point) * logits_scale)

  graph_def = tf1.GraphDef()
  with open(os.path.join(bundle, name + '_frozen.pb'), 'rb') as f:
    graph_def.ParseFromString(f.read())
  with tf.Graph().as_default() as graph:
    tf1.import_graph_def(graph_def, name='')
    fake_quant_logits = graph.get_tensor_by_name(
        'MobilenetV1/Logits/Conv2d_1c_1x1/act_quant/FakeQuantWithMinMaxVars:0')
    with tf1.Session(graph=graph) as session:
      tf_logits = [session.run(fake_quant_logits, {
          'input:0': (image[None].astype(np.float32) - zero_point) * scale
      }).reshape(-1) for image in uint8_images]
  return np.array(tflite_logits), np.array(tf_logits), logits_scale


def accuracy(output):
  return float(re.search(r'Accuracy ([0-9.]+)', output).group(1))


class EndToEndTest(tf.test.TestCase):

  def test_sample_data_train_quantize_export(self):
    work = self.get_temp_dir()
    data = os.path.join(work, 'digits')
    run('build_imagenet_tfrecords', '--sample_digits', '--output_dir=' + data)

    float_dir = os.path.join(work, 'float')
    run('mobilenet_v1_train', '--dataset_dir=' + data,
        '--checkpoint_dir=' + float_dir, '--learning_rate=0.05',
        '--number_of_steps=1500', *MODEL, *TRAIN)
    float_top1 = accuracy(run(
        'mobilenet_v1_eval', '--dataset_dir=' + data,
        '--checkpoint_dir=' + float_dir, *MODEL))
    self.assertGreater(float_top1, 6 * CHANCE)

    quant_dir = os.path.join(work, 'quant')
    run('mobilenet_v1_train', '--dataset_dir=' + data,
        '--checkpoint_dir=' + quant_dir, '--quantize=True',
        '--fine_tune_checkpoint=' + float_dir, '--learning_rate=0.001',
        '--number_of_steps=500', *MODEL, *TRAIN)
    quant_top1 = accuracy(run(
        'mobilenet_v1_eval', '--dataset_dir=' + data,
        '--checkpoint_dir=' + quant_dir, '--quantize=True', *MODEL))
    # Quantization-aware fine-tuning keeps the float model's accuracy.
    self.assertGreaterEqual(quant_top1, float_top1 - 0.02)
    # With per-channel weights it keeps the batch norms, fused with their
    # ReLU6 as in float training where the kernels run, and with the fake
    # quant of their output: one convolution per layer (14 of them dense,
    # and the logits). By default it trains on the labels, without the
    # float model as teacher.
    quant_checkpoint = tf.train.latest_checkpoint(quant_dir)
    op_types = test_data.graph_op_types(quant_checkpoint, 'MobilenetV1/')
    self.assertFalse(test_data.graph_op_types(quant_checkpoint, 'Teacher/'))
    fused = 27 if batch_norm_relu6.unavailable_reason() is None else 0
    self.assertEqual(op_types.count('FusedBatchNormRelu6'), fused)
    self.assertEqual(op_types.count('BatchNormRelu6FakeQuant'), fused)
    self.assertEqual(op_types.count('Conv2D'), 15)

    bundle = os.path.join(work, 'bundle')
    for checkpoint_dir, quantized in ((float_dir, []), (quant_dir, ['--quantize'])):
      run('mobilenet_v1_export', '--checkpoint_dir=' + checkpoint_dir,
          '--output_dir=' + bundle, *MODEL, *quantized)
    float_name, quant_name = 'mobilenet_v1_0.25_64', 'mobilenet_v1_0.25_64_quant'
    # 359 validation images: one image is 0.0028. The float TFLite model
    # computes what TF does (to 1e-4); the uint8 one may differ on the few
    # images it disagrees on (see the agreement check below).
    for name, tf_top1, delta in ((float_name, float_top1, 0.003),
                                 (quant_name, quant_top1, 0.03)):
      tflite_top1 = accuracy(run(
          'mobilenet_v1_tflite_eval', '--dataset_dir=' + data,
          '--tflite_path=' + os.path.join(bundle, name + '.tflite')))
      self.assertAlmostEqual(tflite_top1, tf_top1, delta=delta, msg=name)
    # Smaller: each weight one byte where the float model has four (the
    # per-tensor uint8 file's size is mobilenet_v1_export_test's), plus a
    # scale and zero point per output channel.
    self.assertLess(
        os.path.getsize(os.path.join(bundle, quant_name + '.tflite')),
        0.5 * os.path.getsize(os.path.join(bundle, float_name + '.tflite')))

    # The default is the int8 model TFLite's int8 scheme describes: int8
    # inside, per-axis weight scales, with the released models' uint8
    # interface; no separate int8 twin.
    self.assertFalse(os.path.exists(os.path.join(bundle,
                                                 quant_name + '_int8.tflite')))
    interpreter = litert.Interpreter(
        model_path=os.path.join(bundle, quant_name + '.tflite'))
    self.assertEqual(interpreter.get_input_details()[0]['dtype'], np.uint8)
    tensors = interpreter.get_tensor_details()
    layers = [op for op in interpreter._get_ops_details()  # pylint: disable=protected-access
              if op['op_name'] in ('CONV_2D', 'DEPTHWISE_CONV_2D')]
    self.assertLen(layers, 28)
    for op in layers:
      weights = tensors[op['inputs'][1]]
      self.assertEqual(weights['dtype'], np.int8, weights['name'])
      self.assertLen(weights['quantization_parameters']['scales'],
                     tensors[op['outputs'][0]]['shape'][-1])

    # The integer model follows the fake-quant graph it was converted from.
    images = validation_images(data)
    tflite_logits, tf_logits, step = tflite_and_fake_quant_logits(
        bundle, quant_name, images)
    agreement = np.mean(tflite_logits.argmax(1) == tf_logits.argmax(1))
    steps = np.abs(tflite_logits - tf_logits) / step
    print('float top-1 %.4f, quantized %.4f; int8 TFLite top-1 agrees on '
          '%.4f of images; logits within 2 steps: %.4f, max %.1f steps' % (
              float_top1, quant_top1, agreement, np.mean(steps <= 2),
              steps.max()))
    # The eval graph rounds the input, biases and pool means as the integer
    # model does; what is left is float32 accumulation landing on the other
    # side of a rounding boundary now and then, one code in a rare value of
    # a layer (tflite_emulation_test bounds that per layer). The layers
    # after it carry such a code on, by amounts that depend on their
    # weights, so no bound on the largest logit difference follows (a model
    # trained here had one logit 3 steps off); what does is that most
    # logits see no flip that reaches them, and that the top class only
    # changes where the two best logits are that close.
    self.assertGreaterEqual(agreement, 0.99)
    self.assertLessEqual(np.median(steps), 1.0 + 1e-3)


if __name__ == '__main__':
  tf.test.main()
