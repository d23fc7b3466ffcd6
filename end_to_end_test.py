"""The whole path on the sample data, as the binaries run it.

Handwritten digits to TFRecords, float training from scratch, evaluation,
quantization-aware fine-tuning, quantized evaluation, export of the release
bundle and evaluation of the uint8 TFLite model.
"""

import os
import re
import subprocess
import sys

import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = ['--depth_multiplier=0.25', '--image_size=64', '--num_classes=11']
TRAIN = ['--batch_size=32', '--optimizer=momentum', '--batch_norm_decay=0.99',
         '--log_every_n_steps=500']
CHANCE = 0.1  # 10 balanced classes


def run(program, *flags):
  result = subprocess.run(
      [sys.executable, os.path.join(HERE, program + '.py')] + list(flags),
      capture_output=True, text=True, timeout=1200, check=False)
  if result.returncode:
    raise AssertionError('%s failed:\n%s' % (program, result.stderr))
  return result.stdout


def accuracy(output):
  top1, top5 = re.search(r'Accuracy ([0-9.]+)\s+Recall_5 ([0-9.]+)',
                         output).groups()
  return float(top1), float(top5)


class EndToEndTest(tf.test.TestCase):

  def test_sample_data_train_quantize_export(self):
    work = self.get_temp_dir()
    data = os.path.join(work, 'digits')
    run('build_imagenet_tfrecords', '--sample_digits', '--output_dir=' + data)

    float_dir = os.path.join(work, 'float')
    run('mobilenet_v1_train', '--dataset_dir=' + data,
        '--checkpoint_dir=' + float_dir, '--learning_rate=0.05',
        '--number_of_steps=1500', *MODEL, *TRAIN)
    float_top1, float_top5 = accuracy(run(
        'mobilenet_v1_eval', '--dataset_dir=' + data,
        '--checkpoint_dir=' + float_dir, *MODEL))
    self.assertGreater(float_top1, 6 * CHANCE)
    self.assertGreater(float_top5, float_top1)

    quant_dir = os.path.join(work, 'quant')
    run('mobilenet_v1_train', '--dataset_dir=' + data,
        '--checkpoint_dir=' + quant_dir, '--quantize=True',
        '--fine_tune_checkpoint=' + float_dir, '--learning_rate=0.005',
        '--number_of_steps=200', *MODEL, *TRAIN)
    quant_top1, _ = accuracy(run(
        'mobilenet_v1_eval', '--dataset_dir=' + data,
        '--checkpoint_dir=' + quant_dir, '--quantize=True', *MODEL))
    # Quantization-aware fine-tuning keeps the float model's accuracy.
    self.assertGreater(quant_top1, float_top1 - 0.02)


if __name__ == '__main__':
  tf.test.main()
