"""Tests mobilenet_v1_train as users run it: as a program, in subprocesses."""

import os
import signal
import socket
import subprocess
import sys
import time

from absl.testing import flagsaver
import numpy as np
import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

import mobilenet_v1_train
import test_data

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                     'mobilenet_v1_train.py')
# A small, fast variant; the data are 48x48 coloured images of 2 classes.
SMALL_MODEL = ['--depth_multiplier=0.25', '--image_size=64',
               '--batch_size=8', '--num_classes=3',
               *test_data.REPRODUCIBLE_TRAINING]


def train_command(dataset_dir, checkpoint_dir, *flags):
  return [sys.executable, TRAIN, '--dataset_dir=' + dataset_dir,
          '--checkpoint_dir=' + checkpoint_dir] + SMALL_MODEL + list(flags)


def run(command, timeout=600):
  return subprocess.run(command, capture_output=True, text=True,
                        timeout=timeout, check=False)


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
