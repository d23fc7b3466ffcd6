"""Tests which failures cli.run reports in one line and which it leaves whole."""

import io
import os
import subprocess
import sys
from unittest import mock

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from model import checkpoint_utils
from runtime import cli
from runtime import errors

# A program whose main raises what argv[1] names, run through cli.run.
_PROGRAM = """
import sys
from runtime import slim_compat
from runtime import cli
from runtime import errors
import tensorflow as tf

FAILURES = {
    'user': lambda: errors.UserError('--dataset_dir is required'),
    'internal': lambda: tf.errors.InternalError(
        None, None, 'cuDNN launch failure'),
}


def main(argv):
  del argv
  raise FAILURES[FAILURE]()


FAILURE = sys.argv.pop(1)
cli.run(main)
"""


def run_program(failure, debug=False):
  """Runs _PROGRAM as its own process, as users run the binaries."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  env.pop('MOBILENET_V1_DEBUG', None)
  if debug:
    env['MOBILENET_V1_DEBUG'] = '1'
  return subprocess.run([sys.executable, '-c', _PROGRAM, failure],
                        capture_output=True, text=True, env=env, timeout=300,
                        check=False)


def run_raising(error):
  """cli.run of a main that raises `error`, in this process."""
  def main(argv):
    del argv  # unused
    raise error
  with mock.patch.object(sys, 'argv', ['mobilenet_v1_program']):
    cli.run(main)


class RunTest(tf.test.TestCase):

  def test_bad_input_gets_one_line(self):
    for error, message in (
        (errors.UserError('--dataset_dir is required'),
         '--dataset_dir is required'),
        (checkpoint_utils.CheckpointError('no checkpoint in /x'),
         'no checkpoint in /x'),
        (tf.errors.NotFoundError(None, None, 'train-0; No such file'),
         'train-0; No such file'),
        (tf.errors.DataLossError(None, None, 'corrupted record at 12'),
         'corrupted record at 12'),
        (tf.errors.InvalidArgumentError(
            None, None, 'Graph execution error:\n\nassertion failed: '
            '[a label is >= --num_classes=3] [Condition x < y]'),
         'a label is >= --num_classes=3')):
      with self.subTest(error=type(error).__name__):
        with self.assertRaises(SystemExit) as exit_:
          run_raising(error)
        self.assertEqual(exit_.exception.code,
                         'mobilenet_v1_program: error: ' + message)

  def test_real_failures_propagate(self):
    for error in (tf.errors.InternalError(None, None, 'cuDNN failure'),
                  tf.errors.ResourceExhaustedError(None, None, 'OOM'),
                  tf.errors.UnavailableError(None, None, 'Socket closed'),
                  tf.errors.UnknownError(None, None, 'py_func failed'),
                  KeyError('MobilenetV1/Conv2d_0')):
      with self.subTest(error=type(error).__name__):
        with self.assertRaises(type(error)):
          run_raising(error)

  def test_interrupt_gets_one_line(self):
    # The second form is what pybind11 raises when Ctrl-C arrives while a
    # TensorFlow binding raises its own error (seen in tf.io.gfile.exists).
    for error in (KeyboardInterrupt(), RuntimeError(
        'pybind11::error_already_set: MISMATCH of original and normalized '
        'active exception types: ORIGINAL NotFoundError REPLACED BY '
        'KeyboardInterrupt: <EMPTY MESSAGE>')):
      with self.subTest(error=type(error).__name__):
        stderr = io.StringIO()
        with mock.patch.object(sys, 'stderr', stderr):
          with self.assertRaises(SystemExit) as exit_:
            run_raising(error)
        self.assertEqual(exit_.exception.code, 130)
        self.assertEqual(stderr.getvalue(),
                         'mobilenet_v1_program: interrupted\n')

  def test_other_runtime_errors_propagate(self):
    with self.assertRaises(RuntimeError):
      run_raising(RuntimeError('pybind11::error_already_set: MISMATCH of '
                               'original and normalized active exception '
                               'types: ORIGINAL NotFoundError REPLACED BY '
                               'MemoryError'))

  def test_injected_internal_error_keeps_its_traceback(self):
    result = run_program('internal')
    self.assertEqual(result.returncode, 1)
    self.assertIn('Traceback (most recent call last)', result.stderr)
    self.assertIn('InternalError: cuDNN launch failure', result.stderr)
    self.assertNotIn(': error: ', result.stderr)

  def test_does_not_load_tensorflow(self):
    # The trainer takes its directory lock before TensorFlow loads, inside
    # cli.run.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, '-c', 'import sys\nfrom runtime import cli\n'
         'print(sorted(m for m in sys.modules if m.startswith("tensorflow")))'],
        capture_output=True, text=True, env=env, timeout=60, check=True)
    self.assertEqual(result.stdout, '[]\n')

  def test_debug_shows_traceback_of_bad_input(self):
    result = run_program('user')
    self.assertEqual(result.stderr.strip(),
                     '-c: error: --dataset_dir is required')
    result = run_program('user', debug=True)
    self.assertEqual(result.returncode, 1)
    self.assertIn('Traceback (most recent call last)', result.stderr)
    self.assertIn('UserError: --dataset_dir is required', result.stderr)


if __name__ == '__main__':
  tf.test.main()
