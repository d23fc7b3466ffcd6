"""Tests mobilenet_v1_train as users run it: as a program, in subprocesses."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

import batch_norm_relu6
import mobilenet_v1_train
import test_data

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                     'mobilenet_v1_train.py')
# A small, fast variant; the data are 48x48 coloured images of 2 classes.
SMALL_MODEL = ['--depth_multiplier=0.25', '--image_size=64',
               '--batch_size=8', '--num_classes=3']


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


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


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

    # Float training runs batch norm + ReLU6 as one op in all 27 layers,
    # where the fused kernels can run (test_fallback_... covers the rest).
    fused = 27 if batch_norm_relu6.unavailable_reason() is None else 0
    op_types = graph_op_types(tf.train.latest_checkpoint(checkpoint_dir))
    self.assertEqual(op_types.count('FusedBatchNormRelu6'), fused)
    self.assertEqual(op_types.count('FusedBatchNormRelu6Grad'), fused)

    # Re-running a finished command changes nothing.
    again = run(train_command(self.dataset_dir, checkpoint_dir, slow,
                              '--number_of_steps=%d' % (killed_at + 5)))
    self.assertEqual(again.returncode, 0, again.stderr)
    self.assertIn('Already trained to step %d' % (killed_at + 5), again.stdout)
    self.assertEqual(checkpoint_step(checkpoint_dir), killed_at + 5)

  def test_without_avx2_trains_with_tensorflows_ops(self):
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'no_avx2')
    # An x86 CPU from before AVX2 (Sandy Bridge): AVX, no AVX2 or FMA.
    env = dict(os.environ)
    env[batch_norm_relu6.CPU_FEATURES_ENV] = 'fpu sse sse2 ssse3 sse4_2 avx'
    result = subprocess.run(
        train_command(self.dataset_dir, checkpoint_dir, '--number_of_steps=3',
                      '--log_every_n_steps=1'),
        capture_output=True, text=True, env=env, timeout=600, check=False)
    self.assertEqual(result.returncode, 0, result.stderr)
    notes = [line for line in result.stdout.splitlines()
             if 'not fused' in line]
    self.assertEqual(notes, ['Batch norm + ReLU6 run as TensorFlow\'s ops, '
                             'not fused: this CPU lacks AVX2 and FMA.'])
    self.assertIn('step 3 ', result.stdout)
    self.assertEqual(checkpoint_step(checkpoint_dir), 3)
    op_types = graph_op_types(tf.train.latest_checkpoint(checkpoint_dir))
    self.assertNotIn('FusedBatchNormRelu6', op_types)
    self.assertEqual(op_types.count('FusedBatchNormV3'), 27)
    self.assertEqual(op_types.count('FusedBatchNormGradV3'), 27)

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
    ps_hosts = 'localhost:%d' % free_port()
    worker_hosts = 'localhost:%d,localhost:%d' % (free_port(), free_port())
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
    try:
      chief = start('worker', 0)
      # A worker that finds the model uninitialized waits 30 s (TF's
      # SessionManager) before looking again: start it once the chief runs.
      chief_lines = []
      for line in chief.stdout:
        chief_lines.append(line)
        if line.startswith('step '):
          break
      worker = start('worker', 1)
      worker_out, worker_err = worker.communicate(timeout=600)
      chief_out, chief_err = chief.communicate(timeout=600)
    finally:
      ps.kill()
      ps.wait()
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


# Runs the trainer as a program until it first imports TensorFlow, and
# prints oneDNN's math mode as the environment holds it at that moment.
_MATH_MODE_AT_TENSORFLOW_IMPORT = """
import os, runpy, sys

class StopAtTensorFlow:
  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow':
      print('mode:', os.environ.get('ONEDNN_DEFAULT_FPMATH_MODE'))
      sys.exit(0)

sys.meta_path.insert(0, StopAtTensorFlow())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""

# In a process whose oneDNN math mode the parent set: 1x1 convolutions
# forward and back on the arrays in argv[1], results saved to argv[2].
_CONVOLUTIONS = """
import sys
import numpy as np
import tensorflow as tf

arrays = np.load(sys.argv[1])

@tf.function
def convolutions(x, w, dy):
  with tf.GradientTape() as tape:
    tape.watch([x, w])
    y = tf.nn.conv2d(x, w, 1, 'VALID')
  dx, dw = tape.gradient(y, [x, w], output_gradients=dy)
  return y, dx, dw

np.savez(sys.argv[2], *[t.numpy() for t in convolutions(
    arrays['x'], arrays['w'], arrays['dy'])])
"""

# Unit roundoffs: float32 keeps 24 significant bits, bfloat16 8.
_FLOAT32_U = 2.0**-24
_BFLOAT16_U = 2.0**-8


def _gamma(n):
  """Higham's gamma_n for float32: |error| of an n-term sum / sum of |terms|."""
  return n * _FLOAT32_U / (1 - n * _FLOAT32_U)


def _cpu_has_bfloat16():
  with open('/proc/cpuinfo') as cpuinfo:
    words = cpuinfo.read().split()
  return 'avx512_bf16' in words or 'amx_bf16' in words


class Bfloat16ConvolutionsTest(tf.test.TestCase):
  """What --bfloat16_convolutions promises, in fresh processes.

  oneDNN's math mode is process-wide, so it is only ever set in children:
  this process, and every other test, computes in float32.
  """

  def test_math_mode_is_set_before_tensorflow_is_imported(self):
    flagfile = os.path.join(self.get_temp_dir(), 'flags')
    with open(flagfile, 'w') as f:
      f.write('--nobfloat16_convolutions\n')
    cases = [
        ([], 'BF16'),
        (['--nobfloat16_convolutions'], 'STRICT'),
        (['--dataset_dir', 'data', '--bfloat16_convolutions=false'], 'STRICT'),
        (['--flagfile=' + flagfile], 'STRICT'),
        (['--flagfile=' + flagfile, '--bfloat16_convolutions'], 'BF16'),
    ]
    for flags, mode in cases:
      with self.subTest(flags=flags):
        # A mode already in the environment does not override the flag.
        env = dict(os.environ, ONEDNN_DEFAULT_FPMATH_MODE='ANY')
        result = subprocess.run(
            [sys.executable, '-c', _MATH_MODE_AT_TENSORFLOW_IMPORT, TRAIN] +
            flags, capture_output=True, text=True, env=env, check=False,
            timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), 'mode: ' + mode)

  def _convolutions(self, bfloat16, arrays_path):
    out = os.path.join(self.get_temp_dir(), 'conv_%s.npz' % bfloat16)
    env = dict(os.environ)
    env[mobilenet_v1_train.ONEDNN_MATH_MODE_ENV] = (
        mobilenet_v1_train.onednn_math_mode(bfloat16))
    result = subprocess.run(
        [sys.executable, '-c', _CONVOLUTIONS, arrays_path, out],
        capture_output=True, text=True, env=env, check=False, timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr)
    with np.load(out) as saved:
      return [saved['arr_%d' % i] for i in range(3)]

  def test_convolutions_round_only_their_inputs_to_bfloat16(self):
    rng = np.random.RandomState(0)
    x = rng.normal(size=[4, 12, 12, 32]).astype(np.float32)
    w = rng.normal(size=[1, 1, 32, 48]).astype(np.float32)
    dy = rng.normal(size=[4, 12, 12, 48]).astype(np.float32)
    arrays_path = os.path.join(self.get_temp_dir(), 'arrays.npz')
    np.savez(arrays_path, x=x, w=w, dy=dy)
    strict = self._convolutions(False, arrays_path)
    bfloat16 = self._convolutions(True, arrays_path)

    # Each output is a sum of K products: y over the 32 input channels, dx
    # over the 48 output channels, dw over the 4*12*12 pixels.
    x64, w64, dy64 = (a.astype(np.float64).reshape(-1, a.shape[-1])
                      for a in (x, w[0, 0], dy))
    exact = [x64 @ w64, dy64 @ w64.T, x64.T @ dy64]
    magnitude = [np.abs(x64) @ np.abs(w64), np.abs(dy64) @ np.abs(w64.T),
                 np.abs(x64.T) @ np.abs(dy64)]
    terms = [32, 48, 4 * 12 * 12]
    for name, got_strict, got_bfloat16, want, size, k in zip(
        ('y', 'dx', 'dw'), strict, bfloat16, exact, magnitude, terms):
      got_strict = got_strict.reshape(want.shape)
      got_bfloat16 = got_bfloat16.reshape(want.shape)
      # float32: a K-term sum in any order is off by at most
      # gamma_{K-1} * sum |terms| (Higham, Accuracy and Stability, 3.1).
      float32_bound = _gamma(k - 1) * size
      self.assertTrue(np.all(np.abs(got_strict - want) <= float32_bound), name)
      # bfloat16 math mode: each input is rounded to nearest bfloat16,
      # a(1 + d) with |d| <= 2^-8, so each product is off by a factor
      # (1 + d1)(1 + d2), at most 2u + u^2; the product of two bfloat16
      # values is exact in float32 and the float32 sum adds gamma_{K-1}
      # times the rounded terms' magnitude, (1 + u)^2 * sum |terms|.
      bfloat16_bound = ((2 * _BFLOAT16_U + _BFLOAT16_U**2) +
                        _gamma(k - 1) * (1 + _BFLOAT16_U)**2) * size
      self.assertTrue(np.all(np.abs(got_bfloat16 - want) <= bfloat16_bound),
                      name)
      if not _cpu_has_bfloat16():
        # No bfloat16 instructions: the mode changes nothing.
        self.assertAllEqual(got_bfloat16, got_strict, name)
    if _cpu_has_bfloat16():
      # The forward convolution really multiplied in bfloat16: with 32
      # terms its float32 error stays under 2e-6 of the terms' magnitude,
      # while rounding the inputs moves some outputs by far more.
      y_error = np.abs(bfloat16[0].reshape(exact[0].shape) - exact[0])
      self.assertTrue(np.any(y_error > _gamma(31) * magnitude[0]))


if __name__ == '__main__':
  tf.test.main()
