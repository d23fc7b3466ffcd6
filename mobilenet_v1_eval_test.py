"""Tests mobilenet_v1_eval as users run it, on checkpoints with known answers.

The checkpoints have zero logits weights and chosen biases, so the model
predicts the same ranking for every image and the right Accuracy and
Recall_5 follow from the labels alone.
"""

import glob
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

import mobilenet_v1
from quantization import quantize
from testing import test_data

test_data.use_float32_math()

tf1 = tf.compat.v1

EVAL = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                    'mobilenet_v1_eval.py')
NUM_CLASSES = 7
MODEL_FLAGS = ['--depth_multiplier=0.25', '--image_size=64',
               '--num_classes=%d' % NUM_CLASSES]


def write_ranking_checkpoint(checkpoint_dir, ranking, step, quantized=False,
                             leave_out=(), extra_variables=()):
  """Saves a model whose logits rank the classes in `ranking` order.

  TensorFlow's default Saver records absolute paths in the state file.

  Args:
    checkpoint_dir: where the checkpoint goes.
    ranking: class indices, highest logit first.
    step: the global step to save, or None to save none (as releases do).
    quantized: also save the quantization ranges of the eval rewrite (at
      their initial values).
    leave_out: names of variables not to save.
    extra_variables: names of scalar variables saved as well.

  Returns:
    The checkpoint prefix.
  """
  biases = np.zeros(NUM_CLASSES, np.float32)
  biases[list(ranking)] = np.arange(len(ranking), 0, -1)
  with tf.Graph().as_default():
    images = tf1.placeholder(tf.float32, [1, 64, 64, 3])
    with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(False)):
      mobilenet_v1.mobilenet_v1(images, num_classes=NUM_CLASSES,
                                depth_multiplier=0.25, is_training=False)
    if quantized:
      quantize.create_eval_graph()
    if step is not None:
      tf1.train.get_or_create_global_step()
    for name in extra_variables:
      tf1.get_variable(name, [])
    variables = {v.op.name: v for v in tf1.global_variables()}
    with tf1.Session() as session:
      session.run(tf1.global_variables_initializer())
      logits_scope = 'MobilenetV1/Logits/Conv2d_1c_1x1/'
      weights = variables[logits_scope + 'weights']
      session.run(weights.assign(tf.zeros_like(weights)))
      session.run(variables[logits_scope + 'biases'].assign(biases))
      if step is not None:
        session.run(variables['global_step'].assign(step))
      saved = [v for name, v in variables.items() if name not in leave_out]
      return tf1.train.Saver(saved).save(
          session, os.path.join(checkpoint_dir, 'model.ckpt'),
          global_step=step)


def run_eval(*flags, timeout=300):
  return subprocess.run([sys.executable, EVAL] + MODEL_FLAGS + list(flags),
                        capture_output=True, text=True, timeout=timeout,
                        check=False)


def result_lines(stdout):
  return [line for line in stdout.splitlines() if 'Accuracy' in line]


class EvalTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dataset_dir = os.path.join(tf1.test.get_temp_dir(), 'data')
    # 10 validation images, labels 1..5 twice, in file order.
    cls.labels = test_data.write_color_dataset(
        cls.dataset_dir, num_classes=5, train_per_class=1,
        validation_per_class=2)['validation']
    # The same 10 images and one record that does not decode.
    cls.corrupt_dir = os.path.join(tf1.test.get_temp_dir(), 'corrupt')
    os.makedirs(cls.corrupt_dir)
    shutil.copy(os.path.join(cls.dataset_dir, 'validation-00000-of-00001'),
                os.path.join(cls.corrupt_dir, 'validation-00000-of-00002'))
    with tf.io.TFRecordWriter(os.path.join(
        cls.corrupt_dir, 'validation-00001-of-00002')) as writer:
      writer.write(test_data.image_example(b'not a JPEG', 1, 48, 48)
                   .SerializeToString())

  def test_counts_every_example_once_including_partial_batch(self):
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'ranking')
    ranking = [3, 6, 0, 1, 2]
    write_ranking_checkpoint(checkpoint_dir, ranking, step=7)
    labels = np.array(self.labels)
    expected_top1 = np.mean(labels == ranking[0])
    expected_top5 = np.mean(np.isin(labels, ranking))
    for batch_size in (4, 10, 250):  # 4+4+2; one full batch; one partial
      with self.subTest(batch_size=batch_size):
        result = run_eval('--dataset_dir=' + self.dataset_dir,
                          '--checkpoint_dir=' + checkpoint_dir,
                          '--batch_size=%d' % batch_size)
        self.assertEqual(result.returncode, 0, result.stderr)
        line, = result_lines(result.stdout)
        self.assertIn('on 10 examples', line)
        self.assertIn('(step 7)', line)
        self.assertIn('Accuracy %.4f' % expected_top1, line)
        self.assertIn('Recall_5 %.4f' % expected_top5, line)
    # The figures also went to TensorBoard, at the checkpoint's step.
    events = glob.glob(os.path.join(checkpoint_dir, 'eval', 'events.*'))
    self.assertTrue(events)
    values = {}
    for event in tf1.train.summary_iterator(events[-1]):
      for value in event.summary.value:
        values[value.tag] = (event.step, value.simple_value)
    self.assertEqual(values['eval/Accuracy'][0], 7)
    self.assertAlmostEqual(values['eval/Accuracy'][1], expected_top1, 6)
    self.assertAlmostEqual(values['eval/Recall_5'][1], expected_top5, 6)

  def test_checkpoint_without_global_step_evaluates_at_unknown_step(self):
    # A release holds the model's variables and nothing else.
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'release')
    ranking = [2, 1]
    checkpoint = write_ranking_checkpoint(checkpoint_dir, ranking, step=None)
    self.assertNotIn('global_step', tf.train.load_checkpoint(checkpoint)
                     .get_variable_to_shape_map())
    result = run_eval('--dataset_dir=' + self.dataset_dir,
                      '--checkpoint_path=' + checkpoint)
    self.assertEqual(result.returncode, 0, result.stderr)
    line, = result_lines(result.stdout)
    self.assertIn('(step unknown): Accuracy %.4f' %
                  np.mean(np.array(self.labels) == ranking[0]), line)

  def test_continuous_mode_evaluates_each_new_checkpoint(self):
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'continuous')
    write_ranking_checkpoint(checkpoint_dir, [1, 2, 3, 4, 5], step=1)
    # The second checkpoint is made beforehand and moved in later: under
    # load, building and saving it could outlast --timeout_secs.
    later_dir = os.path.join(self.get_temp_dir(), 'later')
    later = write_ranking_checkpoint(later_dir, [5, 6, 0, 1, 2], step=2)
    process = subprocess.Popen(
        [sys.executable, EVAL] + MODEL_FLAGS +
        ['--dataset_dir=' + self.corrupt_dir, '--skip_corrupt_records',
         '--checkpoint_dir=' + checkpoint_dir, '--continuous',
         '--timeout_secs=15'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
      lines.append(line)
      if 'Accuracy' in line:
        break
    for path in glob.glob(later + '.*'):
      shutil.copy(path, checkpoint_dir)
    tf1.train.update_checkpoint_state(
        checkpoint_dir, 'model.ckpt-2', ['model.ckpt-1', 'model.ckpt-2'])
    stdout, stderr = process.communicate(timeout=300)
    self.assertEqual(process.returncode, 0, stderr)
    results = result_lines(''.join(lines) + stdout)
    self.assertLen(results, 2)
    self.assertIn('(step 1): Accuracy 0.2000  Recall_5 1.0000', results[0])
    self.assertIn('(step 2): Accuracy 0.2000  Recall_5 0.6000', results[1])
    # Each checkpoint's line counts the records its own pass skipped.
    for line in results:
      self.assertIn('on 10 examples', line)
      self.assertRegex(line, r', 1 corrupt records skipped$')

  def test_damaged_checkpoint_is_named(self):
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'damaged')
    checkpoint = write_ranking_checkpoint(checkpoint_dir, [1], step=3)
    data = test_data.truncate_checkpoint_data(checkpoint)
    result = run_eval('--dataset_dir=' + self.dataset_dir,
                      '--checkpoint_dir=' + checkpoint_dir)
    self.assertEqual(result.returncode, 1, result.stderr)
    self.assertLen(result.stderr.strip().splitlines(), 1, result.stderr)
    self.assertIn('checkpoint %s cannot be restored: its data file %s is '
                  'damaged' % (checkpoint, data), result.stderr)

  def test_moved_directory_evaluates_its_own_checkpoints(self):
    source = os.path.join(self.get_temp_dir(), 'source')
    write_ranking_checkpoint(source, [1, 2, 3, 4, 5], step=4)
    copy = os.path.join(self.get_temp_dir(), 'copy')
    shutil.copytree(source, copy)
    # The source goes on to another model under the same name: the copy's
    # state file, whose absolute paths point there, must not follow it.
    write_ranking_checkpoint(source, [6, 0, 1, 2, 3], step=4)
    moved = os.path.join(self.get_temp_dir(), 'moved')
    shutil.copytree(copy, moved)
    shutil.rmtree(source)  # and the original location is gone
    for directory in (copy, moved):
      with self.subTest(directory=directory):
        result = run_eval('--dataset_dir=' + self.dataset_dir,
                          '--checkpoint_dir=' + directory)
        self.assertEqual(result.returncode, 0, result.stderr)
        line, = result_lines(result.stdout)
        self.assertIn('(step 4): Accuracy 0.2000  Recall_5 1.0000', line)

  def test_quantized_checkpoint_without_quantize_says_so(self):
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'quantized')
    write_ranking_checkpoint(
        checkpoint_dir, [1], step=1,
        extra_variables=['MobilenetV1/MobilenetV1/Conv2d_0/act_quant/min',
                         'MobilenetV1/MobilenetV1/Conv2d_0/act_quant/max'])
    result = run_eval('--dataset_dir=' + self.dataset_dir,
                      '--checkpoint_dir=' + checkpoint_dir)
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertLen(result_lines(result.stdout), 1)
    self.assertEqual(result.stderr.strip().splitlines(), [
        'mobilenet_v1_eval: warning: model.ckpt-1 was trained with '
        '--quantize; evaluating it as a float model (add --quantize=True to '
        'measure the quantized model)'])

  def test_ctrl_c_prints_one_line(self):
    process = subprocess.Popen(
        [sys.executable, EVAL] + MODEL_FLAGS +
        ['--dataset_dir=' + self.dataset_dir, '--continuous',
         '--checkpoint_dir=' + os.path.join(self.get_temp_dir(), 'never')],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.assertStartsWith(process.stdout.readline(), 'Waiting for checkpoints')
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    self.assertEqual(process.returncode, 130, stderr)
    self.assertEqual(stderr, 'mobilenet_v1_eval: interrupted\n')

  def test_bad_input_gets_one_line_errors(self):
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'float')
    write_ranking_checkpoint(checkpoint_dir, [1], step=1)
    data = '--dataset_dir=' + self.dataset_dir
    # A quantized checkpoint lacking two of its ranges is not a float one.
    partial_dir = os.path.join(self.get_temp_dir(), 'partial_ranges')
    write_ranking_checkpoint(
        partial_dir, [1], step=1, quantized=True, leave_out=(
            'MobilenetV1/MobilenetV1/Conv2d_3_depthwise/act_quant/max',
            'MobilenetV1/Logits/Conv2d_1c_1x1/weights_quant/min'))
    cases = [
        ((data, '--checkpoint_dir=' + checkpoint_dir, '--quantize'),
         'no quantization ranges'),
        ((data, '--checkpoint_dir=' + partial_dir, '--quantize'),
         'lacks 2 of the 112 quantization ranges of this model '
         '(MobilenetV1/MobilenetV1/Conv2d_3_depthwise/act_quant/max, '
         'MobilenetV1/Logits/Conv2d_1c_1x1/weights_quant/min)'),
        ((data, '--checkpoint_dir=' + checkpoint_dir,
          '--depth_multiplier=0.5'), 'does not fit this model'),
        ((data, '--checkpoint_dir=' + self.get_temp_dir() + '/none'),
         'no checkpoint'),
        (('--dataset_dir=' + self.get_temp_dir() + '/none',
          '--checkpoint_dir=' + checkpoint_dir), 'does not exist'),
        ((data,), '--checkpoint_dir'),
    ]
    for flags, message in cases:
      with self.subTest(message=message):
        result = run_eval(*flags)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNotIn('Traceback', result.stderr)
        self.assertLen(result.stderr.strip().splitlines(), 1, result.stderr)
        self.assertIn(message, result.stderr)


if __name__ == '__main__':
  tf.test.main()
