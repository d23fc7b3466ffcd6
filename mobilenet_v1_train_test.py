"""Tests mobilenet_v1_train as users run it: as a program, in subprocesses."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

from absl.testing import flagsaver
import numpy as np
import slim_compat  # pylint: disable=unused-import
from slim_compat import slim
import tensorflow as tf

import imagenet_input
import mobilenet_v1
import mobilenet_v1_train
import test_data

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


def truncate_data(checkpoint):
  data = checkpoint + '.data-00000-of-00001'
  with open(data, 'r+b') as f:
    f.truncate(os.path.getsize(data) // 2)
  return data


def batch_statistics_accuracy(checkpoint, dataset_dir, split):
  """Top-1 of `checkpoint` on a whole split, batch norm on batch statistics.

  What the trained weights classify when each layer is normalized with the
  statistics of the batch, as in training (one batch of the whole split,
  with eval's preprocessing and no dropout), independent of the moving
  averages.
  """
  examples = imagenet_input.count_records(
      imagenet_input.list_split_files(dataset_dir, split))
  with tf.Graph().as_default():
    dataset = imagenet_input.build_dataset(dataset_dir, split, examples, 32,
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


def graph_op_types(checkpoint):
  """The op types of the training graph saved beside `checkpoint`."""
  meta_graph = tf.compat.v1.MetaGraphDef()
  with open(checkpoint + '.meta', 'rb') as f:
    meta_graph.ParseFromString(f.read())
  return [node.op for node in meta_graph.graph_def.node]


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
    data = truncate_data(damaged)
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

    # Float training runs batch norm + ReLU6 as one op in all 27 layers.
    op_types = graph_op_types(tf.train.latest_checkpoint(checkpoint_dir))
    self.assertEqual(op_types.count('FusedBatchNormRelu6'), 27)
    self.assertEqual(op_types.count('FusedBatchNormRelu6Grad'), 27)

    # Re-running a finished command changes nothing.
    again = run(train_command(self.dataset_dir, checkpoint_dir, slow,
                              '--number_of_steps=%d' % (killed_at + 5)))
    self.assertEqual(again.returncode, 0, again.stderr)
    self.assertIn('Already trained to step %d' % (killed_at + 5), again.stdout)
    self.assertEqual(checkpoint_step(checkpoint_dir), killed_at + 5)

  def test_fine_tune_onto_new_classes_excluding_logits(self):
    source_dir = os.path.join(self.get_temp_dir(), 'source')
    result = run(train_command(self.dataset_dir, source_dir,
                               '--number_of_steps=3'))
    self.assertEqual(result.returncode, 0, result.stderr)
    source = tf.train.latest_checkpoint(source_dir)

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
    ]
    for command, message in cases:
      with self.subTest(message=message):
        result = run(command)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNotIn('Traceback', result.stderr)
        self.assertLen(result.stderr.strip().splitlines(), 1, result.stderr)
        self.assertIn(message, result.stderr)
        self.assertStartsWith(result.stderr, 'mobilenet_v1_train: error:')


class SessionConfigTest(tf.test.TestCase):

  def test_bfloat16_convolutions_sets_onednn_math_mode(self):
    for value, mode in ((True, 'BF16'), (False, 'STRICT')):
      with flagsaver.flagsaver(bfloat16_convolutions=value):
        mobilenet_v1_train.session_config()
      self.assertEqual(os.environ['ONEDNN_DEFAULT_FPMATH_MODE'], mode)


if __name__ == '__main__':
  tf.test.main()
