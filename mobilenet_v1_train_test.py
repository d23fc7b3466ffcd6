"""Tests mobilenet_v1_train as users run it: as a program, in subprocesses."""

import copy
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time

from absl import flags
import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

from kernels import batch_norm_relu6
from data import records
import mobilenet_v1
import mobilenet_v1_train
from quantization import quantize
from testing import test_data
from quantization import weight_rounding
from training import config as config_lib
from training import precision

test_data.use_float32_math()

tf1 = tf.compat.v1

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(HERE, 'mobilenet_v1_train.py')
EVAL = os.path.join(HERE, 'mobilenet_v1_eval.py')
# A small, fast variant; the data are 48x48 coloured images of 2 classes.
SMALL_MODEL = ['--depth_multiplier=0.25', '--image_size=64',
               '--batch_size=8', '--num_classes=3',
               *test_data.REPRODUCIBLE_TRAINING]
# The smallest variant, seeded, on 32x32 coloured images of 4 classes.
TINY_CLASSES = 4
TINY_MODEL = ['--depth_multiplier=0.25', '--image_size=32',
              '--num_classes=%d' % (TINY_CLASSES + 1)]
TINY_TRAIN = TINY_MODEL + ['--batch_size=16', '--random_seed=15']


def train_command(dataset_dir, checkpoint_dir, *flags):
  return [sys.executable, TRAIN, '--dataset_dir=' + dataset_dir,
          '--checkpoint_dir=' + checkpoint_dir] + SMALL_MODEL + list(flags)


def without_precision(command):
  """A trainer command that leaves --precision to the CPU's default."""
  return [arg for arg in command if not arg.startswith('--precision')]


def run(command, timeout=600):
  return subprocess.run(command, capture_output=True, text=True,
                        timeout=timeout, check=False)


def tiny_command(dataset_dir, checkpoint_dir, *flags):
  return [sys.executable, TRAIN, '--dataset_dir=' + dataset_dir,
          '--checkpoint_dir=' + checkpoint_dir] + TINY_TRAIN + list(flags)


def printed_steps(stdout):
  return [int(line.split()[1]) for line in stdout.splitlines()
          if line.startswith('step ')]


def read_file(path):
  with open(path) as f:
    return f.read()


def wait_for(condition, timeout, what):
  """Polls `condition` every 10 ms until it returns a true value."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    value = condition()
    if value:
      return value
    time.sleep(0.01)
  raise AssertionError('timed out after %d s waiting for %s' % (timeout,
                                                               what))


def reads_back_whole(checkpoint):
  """Whether every tensor of `checkpoint` reads back (lengths, checksums)."""
  reader = tf.train.load_checkpoint(checkpoint)
  try:
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except (tf.errors.OpError, IndexError):
    return False
  return True


def batch_statistics_accuracy(checkpoint, dataset_dir, split):
  """Top-1 of `checkpoint` on a whole split, batch norm on batch statistics.

  What the trained weights classify when each layer is normalized with the
  statistics of the batch, as in training (one batch of the whole split,
  with eval's preprocessing and no dropout), independent of the moving
  averages.
  """
  examples = records.count_records(
      records.list_split_files(dataset_dir, split))
  with tf.Graph().as_default():
    dataset = records.build_dataset(dataset_dir, split, examples, 32,
                                    is_training=False)
    images, labels = tf1.data.make_one_shot_iterator(dataset).get_next()
    with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(is_training=True)):
      logits, _ = mobilenet_v1.mobilenet_v1(
          images, num_classes=TINY_CLASSES + 1, depth_multiplier=0.25,
          is_training=True, dropout_keep_prob=1.0)
    saver = tf1.train.Saver(tf1.global_variables())
    with tf1.Session() as session:
      saver.restore(session, checkpoint)
      predicted, labels = session.run([tf.argmax(logits, 1), labels])
  return float(np.mean(predicted == labels))


def eval_accuracy(stdout):
  return float(re.search(r'Accuracy (\d\.\d+)', stdout).group(1))


def checkpoint_step(checkpoint_dir):
  latest = tf.train.latest_checkpoint(checkpoint_dir)
  return int(latest.rsplit('-', 1)[1]) if latest else 0


def read_variable(checkpoint, name):
  return tf.train.load_checkpoint(checkpoint).get_tensor(name)


def free_ports(count):
  """`count` distinct ports that nothing listens on, for a local cluster.

  TensorFlow's gRPC server cannot share a port (it turns SO_REUSEPORT off),
  so a port cannot be held for it. The ports are drawn at random from below
  the kernel's ephemeral range, which the kernel never hands out by itself:
  between this check and the server's bind, only another process binding
  that very port explicitly could take it.
  """
  with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
    ephemeral_low = int(f.read().split()[0])
  rng = np.random.RandomState()  # Unseeded: parallel runs draw apart.
  ports = []
  while len(ports) < count:
    port = int(rng.randint(10000, ephemeral_low))
    with socket.socket() as s:
      try:
        s.bind(('localhost', port))
      except OSError:
        continue
    if port not in ports:
      ports.append(port)
  return ports


def read_until(process, prefix, lines):
  """Reads `process`'s stdout into `lines` up to a line starting `prefix`."""
  for line in process.stdout:
    lines.append(line)
    if line.startswith(prefix):
      return
  raise AssertionError('no %r line in:\n%s' % (prefix, ''.join(lines)))


class TrainTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dataset_dir = os.path.join(tf.compat.v1.test.get_temp_dir(), 'data')
    test_data.write_color_dataset(cls.dataset_dir, num_classes=2)
    cls.tiny_dir = os.path.join(tf.compat.v1.test.get_temp_dir(), 'tiny')
    test_data.write_color_dataset(cls.tiny_dir, num_classes=TINY_CLASSES,
                                  train_per_class=32, validation_per_class=16,
                                  size=32)

  def test_short_run_from_scratch_evaluates_as_it_trained(self):
    # 150 steps, everything else at its default (SGD at 0.045): slim's
    # decay 0.9997 would leave the moving averages 0.9997^150 = 96% their
    # initial values.
    runs = {}
    for name, flags in (('default', []),
                        ('imagenet_decay', ['--batch_norm_decay=0.9997'])):
      checkpoint_dir = os.path.join(self.get_temp_dir(), 'short_' + name)
      trained = run(tiny_command(self.tiny_dir, checkpoint_dir,
                                 '--number_of_steps=150',
                                 '--log_every_n_steps=150', *flags))
      self.assertEqual(trained.returncode, 0, trained.stderr)
      evaluated = run([sys.executable, EVAL, '--dataset_dir=' + self.tiny_dir,
                       '--checkpoint_dir=' + checkpoint_dir] + TINY_MODEL)
      self.assertEqual(evaluated.returncode, 0, evaluated.stderr)
      runs[name] = (trained, evaluated, batch_statistics_accuracy(
          tf.train.latest_checkpoint(checkpoint_dir), self.tiny_dir, 'train'))

    trained, evaluated, train_accuracy = runs['default']
    self.assertIn('Batch norm decay 0.933333 for 150 steps', trained.stdout)
    # The model learned the colours: with batch statistics it classifies
    # the training images (chance is 25%).
    self.assertGreaterEqual(train_accuracy, 0.9)
    # With moving averages that converged, eval on the validation images
    # (the same colours, other noise) is as good: within 5 points, i.e. 3
    # of the 64 validation images.
    self.assertGreaterEqual(eval_accuracy(evaluated.stdout),
                            train_accuracy - 0.05, evaluated.stdout)
    self.assertNotIn('warning', evaluated.stderr)

    # The same run with slim's ImageNet decay learns as well but evaluates
    # near chance, and eval says why, in one line.
    trained, evaluated, train_accuracy = runs['imagenet_decay']
    self.assertNotIn('Batch norm decay', trained.stdout)
    self.assertGreaterEqual(train_accuracy, 0.9)
    self.assertLess(eval_accuracy(evaluated.stdout), 0.5, evaluated.stdout)
    self.assertLen(evaluated.stderr.strip().splitlines(), 1, evaluated.stderr)
    self.assertIn('cannot have converged', evaluated.stderr)
    self.assertIn('96%', evaluated.stderr)

  def test_interrupted_run_saves_its_step_and_resumes(self):
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'interrupted')
    log_path = os.path.join(self.get_temp_dir(), 'interrupted.log')
    # No periodic checkpoint after the first: the one at the signal is new.
    endless = ['--number_of_steps=1000000', '--save_interval_secs=100000',
               '--log_every_n_steps=1']
    with open(log_path, 'w') as log:
      first = subprocess.Popen(
          tiny_command(self.tiny_dir, checkpoint_dir, *endless), stdout=log,
          stderr=subprocess.PIPE, text=True)
    try:
      wait_for(lambda: 20 in printed_steps(read_file(log_path)), 300,
               'step 20')

      # A second run on the same directory is refused, naming the first.
      start = time.time()
      second = run(tiny_command(self.tiny_dir, checkpoint_dir, *endless))
      refused_after = time.time() - start
      self.assertEqual(second.returncode, 1, second.stderr)
      self.assertLen(second.stderr.strip().splitlines(), 1, second.stderr)
      self.assertIn('in use by another training run (PID %d' % first.pid,
                    second.stderr)
      self.assertLess(refused_after, 10)

      first.send_signal(signal.SIGTERM)
      _, first_stderr = first.communicate(timeout=300)
    finally:
      if first.poll() is None:
        first.kill()
        first.wait()
    stdout = read_file(log_path)
    self.assertEqual(first.returncode, 128 + signal.SIGTERM, first_stderr)
    self.assertNotIn('Traceback', first_stderr)
    # The checkpoint is at the last step run, not at the last periodic save.
    last_step = printed_steps(stdout)[-1]
    self.assertGreaterEqual(last_step, 20)
    self.assertEqual(checkpoint_step(checkpoint_dir), last_step)
    self.assertIn('Stopping on SIGTERM', stdout)
    self.assertIn('To resume, run the same command again', stdout)

    resumed = run(tiny_command(self.tiny_dir, checkpoint_dir,
                               '--number_of_steps=%d' % (last_step + 3),
                               '--log_every_n_steps=1'))
    self.assertEqual(resumed.returncode, 0, resumed.stderr)
    self.assertIn('Resuming from %s/model.ckpt-%d.' %
                  (checkpoint_dir, last_step), resumed.stdout)
    self.assertEqual(printed_steps(resumed.stdout)[0], last_step + 1)
    self.assertEqual(checkpoint_step(checkpoint_dir), last_step + 3)

    # The latest checkpoint's data truncated (a full disk, a broken copy):
    # the next run says so and resumes from the newest that reads back.
    damaged = tf.train.latest_checkpoint(checkpoint_dir)
    data = test_data.truncate_checkpoint_data(damaged)
    again = run(tiny_command(self.tiny_dir, checkpoint_dir,
                             '--number_of_steps=%d' % (last_step + 5),
                             '--log_every_n_steps=1'))
    self.assertEqual(again.returncode, 0, again.stderr)
    self.assertIn('Skipping checkpoint %s: its data file %s is damaged' %
                  (damaged, data), again.stdout)
    self.assertIn('Resuming from %s/model.ckpt-%d.' %
                  (checkpoint_dir, last_step), again.stdout)
    self.assertEqual(printed_steps(again.stdout)[0], last_step + 1)
    self.assertEqual(checkpoint_step(checkpoint_dir), last_step + 5)

  def test_random_kills_never_stop_a_resume(self):
    # Ten SIGKILLs, at random moments of training or while a checkpoint is
    # being written; each rerun must resume from the latest checkpoint.
    rng = np.random.RandomState(15)
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'chaos')
    command = tiny_command(self.tiny_dir, checkpoint_dir,
                           '--number_of_steps=1000000',
                           '--save_interval_secs=1', '--log_every_n_steps=1',
                           '--max_checkpoints_to_keep=3')
    killed_writing = 0
    for attempt in range(10):
      with self.subTest(attempt=attempt):
        latest = tf.train.latest_checkpoint(checkpoint_dir)
        log_path = os.path.join(self.get_temp_dir(), 'chaos%d.log' % attempt)
        with open(log_path, 'w') as log, open(log_path + '.err', 'w') as err:
          process = subprocess.Popen(command, stdout=log, stderr=err)
        try:
          wait_for(lambda: printed_steps(read_file(log_path)) or
                   process.poll() is not None, 300, 'training to start')
          if attempt % 2:
            # Saver and TensorFlow's atomic writes name their files being
            # written *.tempstate* and *.tmp*.
            wait_for(lambda: any('.tempstate' in f or '.tmp' in f
                                 for f in os.listdir(checkpoint_dir)) or
                     process.poll() is not None, 60, 'a checkpoint write')
            killed_writing += process.poll() is None
          else:
            time.sleep(rng.uniform(0, 2))
        finally:
          process.kill()
          process.wait()
        stdout = read_file(log_path)
        stderr = read_file(log_path + '.err')
        self.assertNotIn('Traceback', stderr)
        self.assertNotIn('mobilenet_v1_train: error', stderr)
        self.assertTrue(printed_steps(stdout), stdout + stderr)
        if latest:
          self.assertIn('Resuming from %s.' % latest, stdout)
          self.assertEqual(printed_steps(stdout)[0],
                           int(latest.rsplit('-', 1)[1]) + 1)
    self.assertEqual(killed_writing, 5)

    latest = tf.train.latest_checkpoint(checkpoint_dir)
    target = int(latest.rsplit('-', 1)[1]) + 5
    final = run(tiny_command(self.tiny_dir, checkpoint_dir,
                             '--number_of_steps=%d' % target))
    self.assertEqual(final.returncode, 0, final.stderr)
    self.assertIn('Resuming from %s.' % latest, final.stdout)
    self.assertEqual(checkpoint_step(checkpoint_dir), target)
    self.assertTrue(reads_back_whole(tf.train.latest_checkpoint(
        checkpoint_dir)))

  def test_killed_run_resumes_from_last_checkpoint(self):
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'resume')
    # At the default rate (0.045) the first step scales Conv2d_0's weights up
    # 7-25x (batch norm divides its gradients by small channel deviations) and
    # five later steps moved them by 26% of their largest in one CI run, so
    # "moved, but not far" could not tell resuming from restarting. At 1e-5
    # five steps move them by about 1%; fresh weights differ by their size.
    slow = '--learning_rate=0.00001'
    command = train_command(self.dataset_dir, checkpoint_dir, slow,
                            '--number_of_steps=100000',
                            '--save_interval_secs=1', '--log_every_n_steps=5')
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
      deadline = time.time() + 300
      while checkpoint_step(checkpoint_dir) < 10 and time.time() < deadline:
        time.sleep(0.5)
    finally:
      process.send_signal(signal.SIGKILL)
      process.wait()
    killed_at = checkpoint_step(checkpoint_dir)
    self.assertGreaterEqual(killed_at, 10)
    weights = read_variable(tf.train.latest_checkpoint(checkpoint_dir),
                            'MobilenetV1/Conv2d_0/weights')

    resumed = run(train_command(self.dataset_dir, checkpoint_dir, slow,
                                '--number_of_steps=%d' % (killed_at + 5),
                                '--log_every_n_steps=1'))
    self.assertEqual(resumed.returncode, 0, resumed.stderr)
    self.assertIn('Resuming from', resumed.stdout)
    self.assertEqual(checkpoint_step(checkpoint_dir), killed_at + 5)
    # The step count went on from the checkpoint, not from zero.
    self.assertNotIn('step 1 ', resumed.stdout)
    self.assertIn('step %d ' % (killed_at + 1), resumed.stdout)
    self.assertIn('step %d ' % (killed_at + 5), resumed.stdout)
    # Training went on from the saved weights: they moved, but not far.
    resumed_weights = read_variable(tf.train.latest_checkpoint(checkpoint_dir),
                                    'MobilenetV1/Conv2d_0/weights')
    change = np.abs(resumed_weights - weights).max()
    self.assertGreater(change, 0)
    self.assertLess(change, 0.1 * np.abs(weights).max())

    # Float training runs batch norm + ReLU6 as one op in all 27 layers,
    # where the fused kernels can run (test_fallback_... covers the rest).
    fused = 27 if batch_norm_relu6.unavailable_reason() is None else 0
    op_types = test_data.graph_op_types(
        tf.train.latest_checkpoint(checkpoint_dir))
    self.assertEqual(op_types.count('FusedBatchNormRelu6'), fused)
    self.assertEqual(op_types.count('FusedBatchNormRelu6Grad'), fused)

    # Re-running a finished command changes nothing.
    again = run(train_command(self.dataset_dir, checkpoint_dir, slow,
                              '--number_of_steps=%d' % (killed_at + 5)))
    self.assertEqual(again.returncode, 0, again.stderr)
    self.assertIn('Already trained to step %d' % (killed_at + 5), again.stdout)
    self.assertEqual(checkpoint_step(checkpoint_dir), killed_at + 5)

  def _train_three_steps_as(self, checkpoint_dir, cpu_features):
    """Trains 3 steps as if on a CPU with `cpu_features`, --precision unset."""
    env = dict(os.environ)
    env[batch_norm_relu6.CPU_FEATURES_ENV] = cpu_features
    result = subprocess.run(
        without_precision(train_command(
            self.dataset_dir, checkpoint_dir, '--number_of_steps=3',
            '--log_every_n_steps=1')),
        capture_output=True, text=True, env=env, timeout=600, check=False)
    self.assertEqual(result.returncode, 0, result.stderr)
    return result

  def test_without_avx2_trains_with_tensorflows_ops(self):
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'no_avx2')
    # An x86 CPU from before AVX2 (Sandy Bridge): AVX, no AVX2 or FMA.
    result = self._train_three_steps_as(checkpoint_dir,
                                        'fpu sse sse2 ssse3 sse4_2 avx')
    notes = [line for line in result.stdout.splitlines()
             if 'not fused' in line or line.startswith('Precision')]
    self.assertEqual(notes, [
        'Batch norm + ReLU6 run as TensorFlow\'s ops, not fused: this CPU '
        'lacks AVX2 and FMA.',
        'Precision: float32: this CPU has no bfloat16 arithmetic '
        '(AVX512-BF16, AMX or BF16), where emulating it is slower.'])
    self.assertIn('step 3 ', result.stdout)
    self.assertEqual(checkpoint_step(checkpoint_dir), 3)
    op_types = test_data.graph_op_types(
        tf.train.latest_checkpoint(checkpoint_dir))
    self.assertNotIn('FusedBatchNormRelu6', op_types)
    self.assertEqual(op_types.count('FusedBatchNormV3'), 27)
    self.assertEqual(op_types.count('FusedBatchNormGradV3'), 27)

  def test_bfloat16_cpu_trains_mixed_into_float32_checkpoints(self):
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'bfloat16_cpu')
    # A CPU with AVX512-BF16 (Zen 4, Cooper Lake): mixed bfloat16 by default.
    result = self._train_three_steps_as(checkpoint_dir,
                                        'avx avx2 fma avx512f avx512_bf16')
    self.assertIn(
        'Precision: mixed bfloat16 (convolutions and activations in '
        'bfloat16; variables, batch norm statistics and the loss in '
        'float32): this CPU multiplies bfloat16 natively (AVX512_BF16); '
        '--precision=float32 trains in float32.', result.stdout)
    self.assertEqual(checkpoint_step(checkpoint_dir), 3)
    checkpoint = tf.train.latest_checkpoint(checkpoint_dir)
    dtypes = tf1.train.NewCheckpointReader(
        checkpoint).get_variable_to_dtype_map()
    self.assertEqual({name for name, dtype in dtypes.items()
                      if dtype != tf.float32}, {'global_step'})
    # The checkpoint evaluates as any float32 one does.
    evaluated = run([sys.executable, EVAL, '--dataset_dir=' + self.dataset_dir,
                     '--checkpoint_dir=' + checkpoint_dir,
                     '--depth_multiplier=0.25', '--image_size=64',
                     '--num_classes=3', '--batch_size=8'])
    self.assertEqual(evaluated.returncode, 0, evaluated.stderr)
    self.assertIn('Accuracy', evaluated.stdout)
  def float_source(self):
    """A 3-step float checkpoint to fine-tune from, trained once per class."""
    source_dir = os.path.join(tf1.test.get_temp_dir(), 'float_source')
    if not tf.train.latest_checkpoint(source_dir):
      result = run(train_command(self.dataset_dir, source_dir,
                                 '--number_of_steps=3'))
      self.assertEqual(result.returncode, 0, result.stderr)
    return tf.train.latest_checkpoint(source_dir)

  def test_fine_tune_onto_new_classes_excluding_logits(self):
    source = self.float_source()

    # 5 classes do not fit the 3-class logits: a one-line error naming them
    # and the flag that fixes it.
    target_dir = os.path.join(self.get_temp_dir(), 'target')
    new_classes = ['--num_classes=5', '--number_of_steps=1',
                   '--fine_tune_checkpoint=' + source]
    result = run(train_command(self.dataset_dir, target_dir, *new_classes))
    self.assertEqual(result.returncode, 1)
    self.assertNotIn('Traceback', result.stderr)
    self.assertIn('MobilenetV1/Logits/Conv2d_1c_1x1/weights', result.stderr)
    self.assertIn('--checkpoint_exclude_scopes=MobilenetV1/Logits',
                  result.stderr)
    self.assertLen(result.stderr.strip().splitlines(), 1)

    result = run(train_command(
        self.dataset_dir, target_dir, *new_classes,
        '--checkpoint_exclude_scopes=MobilenetV1/Logits',
        '--learning_rate=0'))
    self.assertEqual(result.returncode, 0, result.stderr)
    tuned = tf.train.latest_checkpoint(target_dir)
    # Global step reset: one step taken since the fine-tune start.
    self.assertEqual(read_variable(tuned, 'global_step'), 1)
    # With learning rate 0 the body is exactly the source's; the batch-norm
    # moving averages moved (one training step), so compare weights.
    for name in ('MobilenetV1/Conv2d_0/weights',
                 'MobilenetV1/Conv2d_13_pointwise/weights',
                 'MobilenetV1/Conv2d_5_depthwise/BatchNorm/gamma'):
      self.assertAllEqual(read_variable(tuned, name),
                          read_variable(source, name))
    self.assertEqual(
        read_variable(tuned, 'MobilenetV1/Logits/Conv2d_1c_1x1/biases').shape,
        (5,))

  def test_quantization_aware_fine_tune_distills_per_tensor_by_default(self):
    source = self.float_source()

    def fine_tune(name, *flags):
      """(stdout, whether the saved graph holds the teacher) of one step."""
      target_dir = os.path.join(self.get_temp_dir(), name)
      result = run(train_command(
          self.dataset_dir, target_dir, '--number_of_steps=1',
          '--fine_tune_checkpoint=' + source, *flags))
      self.assertEqual(result.returncode, 0, result.stderr)
      return result.stdout, bool(test_data.graph_op_types(
          tf.train.latest_checkpoint(target_dir), 'Teacher/'))

    per_tensor = ['--quantize', '--weight_quantization=asymmetric']
    # Per-tensor weights: the float checkpoint teaches, and a line says so.
    stdout, has_teacher = fine_tune('per_tensor', *per_tensor)
    self.assertTrue(has_teacher)
    self.assertIn('Distilling from the float model %s: each target is 1 of '
                  'its softmax and 0 of the label (the default' % source,
                  stdout)
    # Its batch norm averages are the checkpoint's, and after the last step
    # its weights are rounded, in the checkpoint that says so.
    self.assertIn('Batch norm moving averages: the checkpoint\'s, kept',
                  stdout)
    self.assertIn('Rounded 28 layers over 32 images', stdout)
    rounded = tf.train.latest_checkpoint(
        os.path.join(self.get_temp_dir(), 'per_tensor'))
    self.assertTrue(weight_rounding.is_rounded(rounded))
    self.assertAllEqual(
        read_variable(rounded, 'MobilenetV1/Conv2d_3_pointwise/BatchNorm/'
                      'moving_variance'),
        read_variable(source, 'MobilenetV1/Conv2d_3_pointwise/BatchNorm/'
                      'moving_variance'))
    # Run again, it is done and stays as it was.
    result = run(train_command(
        self.dataset_dir, os.path.join(self.get_temp_dir(), 'per_tensor'),
        '--number_of_steps=1', '--fine_tune_checkpoint=' + source,
        *per_tensor))
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn('Already trained to step 1', result.stdout)
    self.assertNotIn('Rounded', result.stdout)
    # --quantize alone (per-channel weights), labels alone asked for, or
    # without --quantize: no teacher, no line; a fine-tune's batch norm
    # averages remember the whole run (here one step: decay 0).
    for name, flags in (('default', ['--quantize']),
                        ('labels', per_tensor + ['--distillation_weight=0']),
                        ('float', [])):
      with self.subTest(name):
        stdout, has_teacher = fine_tune(name, *flags)
        self.assertFalse(has_teacher)
        self.assertNotIn('Distilling', stdout)
        if name != 'labels':
          self.assertIn('Batch norm decay 0 for 1 steps of fine-tuning',
                        stdout)
          self.assertNotIn('Rounded', stdout)
    # A batch norm not restored from the checkpoint: no averages to keep,
    # nothing rounded.
    stdout, _ = fine_tune('fresh_batch_norm', *per_tensor,
                          '--checkpoint_exclude_scopes='
                          'MobilenetV1/Conv2d_13_pointwise')
    self.assertIn('Batch norm decay 0 for 1 steps of fine-tuning', stdout)
    self.assertNotIn('Rounded', stdout)
    # Asked for with per-channel weights, the teacher is there.
    self.assertTrue(fine_tune('distilled', '--quantize',
                              '--distillation_weight=1')[1])
    # Onto new classes the checkpoint cannot teach: labels alone, unasked.
    stdout, has_teacher = fine_tune(
        'new_classes', *per_tensor, '--num_classes=5',
        '--checkpoint_exclude_scopes=MobilenetV1/Logits')
    self.assertFalse(has_teacher)
    # New classes without the exclusion: one line naming both ways out.
    result = run(train_command(
        self.dataset_dir, os.path.join(self.get_temp_dir(), 'unfit'),
        *per_tensor, '--num_classes=5', '--number_of_steps=1',
        '--fine_tune_checkpoint=' + source))
    self.assertEqual(result.returncode, 1)
    self.assertLen(result.stderr.strip().splitlines(), 1, result.stderr)
    self.assertIn('--checkpoint_exclude_scopes=MobilenetV1/Logits',
                  result.stderr)
    self.assertIn('--distillation_weight=0', result.stderr)

  def test_parameter_server_training(self):
    ps_port, chief_port, worker_port = free_ports(3)
    ps_hosts = 'localhost:%d' % ps_port
    worker_hosts = 'localhost:%d,localhost:%d' % (chief_port, worker_port)
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'distributed')
    cluster = ['--ps_hosts=' + ps_hosts, '--worker_hosts=' + worker_hosts,
               '--number_of_steps=300', '--log_every_n_steps=1',
               '--save_interval_secs=2']

    def start(job, task):
      return subprocess.Popen(
          train_command(self.dataset_dir, checkpoint_dir, *cluster,
                        '--job_name=' + job, '--task=%d' % task),
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    ps = start('ps', 0)
    chief = worker = None
    try:
      chief = start('worker', 0)
      # A worker that finds the model uninitialized waits 30 s (TF's
      # SessionManager) before looking again: start it once the chief has
      # initialized and stepped. The chief then waits, stopped, until the
      # worker has run a step, so that it cannot reach step 300 alone
      # however slowly the worker starts.
      chief_lines, worker_lines = [], []
      read_until(chief, 'step ', chief_lines)
      chief.send_signal(signal.SIGSTOP)
      worker = start('worker', 1)
      try:
        read_until(worker, 'step ', worker_lines)
      finally:
        chief.send_signal(signal.SIGCONT)
      worker_out, worker_err = worker.communicate(timeout=600)
      chief_out, chief_err = chief.communicate(timeout=600)
    finally:
      for process in (worker, chief, ps):
        if process is not None and process.poll() is None:
          process.kill()
          process.wait()
    worker_out = ''.join(worker_lines) + worker_out
    chief_out = ''.join(chief_lines) + chief_out
    self.assertEqual(chief.returncode, 0, chief_err)
    self.assertEqual(worker.returncode, 0, worker_err)
    steps = [[int(line.split()[1]) for line in out.splitlines()
              if line.startswith('step ')] for out in (chief_out, worker_out)]
    # Both workers ran steps of one shared global step: the second worker's
    # first step continued the chief's count, and together they ran the 300
    # steps (each ran fewer).
    self.assertTrue(steps[0] and steps[1], (chief_out, worker_out))
    self.assertGreater(steps[1][0], 1)
    self.assertLess(len(steps[0]), 300)
    self.assertGreaterEqual(len(steps[0]) + len(steps[1]), 300)
    self.assertGreaterEqual(max(steps[0] + steps[1]), 300)
    # The chief wrote the checkpoints.
    self.assertGreaterEqual(checkpoint_step(checkpoint_dir), 300)
    self.assertIn('Done; checkpoint', chief_out)
    self.assertNotIn('Done; checkpoint', worker_out)

  def test_bad_input_gets_one_line_errors(self):
    empty_dir = os.path.join(self.get_temp_dir(), 'empty')
    os.makedirs(empty_dir, exist_ok=True)
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'errors')
    cases = [
        (train_command(os.path.join(self.get_temp_dir(), 'missing'),
                       checkpoint_dir), 'does not exist'),
        (train_command(empty_dir, checkpoint_dir), 'empty'),
        (train_command(self.dataset_dir, checkpoint_dir,
                       '--fine_tune_checkpoint=' + empty_dir),
         'no checkpoint'),
        (train_command(self.dataset_dir, checkpoint_dir,
                       '--num_classes=2', '--number_of_steps=1'),
         'num_classes'),
        (train_command(self.dataset_dir, ''), '--checkpoint_dir'),
        (train_command(self.dataset_dir, checkpoint_dir,
                       '--distillation_weight=1'), '--fine_tune_checkpoint'),
    ]
    for command, message in cases:
      with self.subTest(message=message):
        result = run(command)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNotIn('Traceback', result.stderr)
        self.assertLen(result.stderr.strip().splitlines(), 1, result.stderr)
        self.assertIn(message, result.stderr)
        self.assertStartsWith(result.stderr, 'mobilenet_v1_train: error:')


def parsed_trainer_flags(*argv):
  """A copy of the trainer's flags, parsed from `argv`."""
  flag_values = flags.FlagValues()
  for flag in mobilenet_v1_train.FLAGS.get_key_flags_for_module(
      mobilenet_v1_train):
    flags.DEFINE_flag(copy.deepcopy(flag), flag_values=flag_values)
  flag_values(['mobilenet_v1_train'] + list(argv))
  return flag_values


class FlagsTest(tf.test.TestCase):
  """The flags as the main hands them to the library."""

  def test_every_flag_is_a_config_field_with_its_default(self):
    flag_values = parsed_trainer_flags()
    self.assertEqual(mobilenet_v1_train.train_config(flag_values),
                     config_lib.TrainConfig())
    fields = {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
    self.assertEqual(set(flag_values), fields)
    self.assertEqual(mobilenet_v1_train.FLAGS['precision'].parser.enum_values,
                     list(precision.PRECISIONS))

  def test_flags_become_the_config(self):
    flag_values = parsed_trainer_flags(
        '--dataset_dir=/data', '--quantize',
        '--checkpoint_exclude_scopes=MobilenetV1/Logits,Other',
        '--precision=mixed_bfloat16', '--number_of_steps=7')
    config = mobilenet_v1_train.train_config(flag_values)
    self.assertEqual(config.dataset_dir, '/data')
    self.assertTrue(config.quantize)
    self.assertEqual(config.checkpoint_exclude_scopes,
                     ('MobilenetV1/Logits', 'Other'))
    self.assertEqual(config.precision, precision.MIXED_BFLOAT16)
    self.assertEqual(config.number_of_steps, 7)

  def test_weight_schemes_are_quantizes(self):
    flag = mobilenet_v1_train.FLAGS['weight_quantization']
    self.assertEqual(flag.parser.enum_values, list(quantize.WEIGHT_SCHEMES))
    self.assertEqual(flag.default, quantize.PER_CHANNEL)

  def test_help_quotes_no_measurements(self):
    for name in ('freeze_bn_delay', 'distillation_weight'):
      self.assertNotIn('README', mobilenet_v1_train.FLAGS[name].help)


if __name__ == '__main__':
  tf.test.main()
