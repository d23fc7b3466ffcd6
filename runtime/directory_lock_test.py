"""Tests the checkpoint directory lock, across processes as runs use it."""

import os
import signal
import subprocess
import sys
import tempfile
import unittest

from runtime import directory_lock

# Takes the lock of argv[1], says so, and waits to be killed.
_HOLDER = """
import sys, time
from runtime import directory_lock
directory_lock.lock(sys.argv[1])
print('locked', flush=True)
time.sleep(600)
"""

# A program that takes the lock as the trainer's main does, through cli.run,
# with the flags that follow.
_CHECKER = """
import sys
from absl import flags
from runtime import cli
from runtime import directory_lock

flags.DEFINE_string('checkpoint_dir', '', 'The directory to lock.')
flags.DEFINE_string('job_name', 'worker', 'The job of this process.')
flags.DEFINE_integer('task', 0, 'The task index of this process.')


def main(argv):
  del argv  # unused
  directory_lock.lock_if_chief(flags.FLAGS.checkpoint_dir,
                               flags.FLAGS.job_name, flags.FLAGS.task)
  print('free')


sys.argv[0] = 'mobilenet_v1_train'
cli.run(main)
"""


def python(code, *args, **kwargs):
  return subprocess.Popen(
      [sys.executable, '-c', code] + list(args), text=True,
      env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), **kwargs)


class LockTest(unittest.TestCase):

  def setUp(self):
    super().setUp()
    self.directory = tempfile.mkdtemp(dir=os.environ.get('TEST_TMPDIR'))

  def start_holder(self):
    holder = python(_HOLDER, self.directory, stdout=subprocess.PIPE)
    self.addCleanup(holder.wait)
    self.addCleanup(holder.kill)
    self.assertEqual(holder.stdout.readline(), 'locked\n')
    return holder

  def check(self, *flags):
    checker = python(_CHECKER, *flags, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    stdout, stderr = checker.communicate(timeout=60)
    return checker.returncode, stdout, stderr

  def test_second_locker_is_refused_with_first_pid(self):
    holder = self.start_holder()
    with self.assertRaisesRegex(directory_lock.DirectoryLockedError,
                                r'in use by another training run \(PID %d '
                                % holder.pid):
      directory_lock.lock(self.directory)

  def test_lock_of_killed_process_does_not_block(self):
    holder = self.start_holder()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    self.assertTrue(os.path.exists(
        os.path.join(self.directory, directory_lock.LOCK_FILE)))
    os.close(directory_lock.lock(self.directory))

  def test_only_a_chief_is_refused(self):
    holder = self.start_holder()
    for flags in (['--checkpoint_dir=' + self.directory],
                  ['--checkpoint_dir', self.directory, '--task=0',
                   '--job_name=worker']):
      returncode, stdout, stderr = self.check(*flags)
      self.assertEqual(returncode, 1)
      self.assertEqual(stdout, '')
      self.assertRegex(stderr, r'^mobilenet_v1_train: error: %s is in use by '
                       r'another training run \(PID %d on ' %
                       (self.directory, holder.pid))
      self.assertEqual(len(stderr.splitlines()), 1)
    # Parameter servers and other workers share the chief's directory.
    for flags in (['--checkpoint_dir=' + self.directory, '--job_name=ps'],
                  ['--checkpoint_dir=' + self.directory, '--task=1']):
      self.assertEqual(self.check(*flags), (0, 'free\n', ''))

  def test_chief_takes_free_and_missing_directories(self):
    self.assertEqual(self.check('--checkpoint_dir=' + self.directory),
                     (0, 'free\n', ''))
    # A missing directory is created, as the run trains into it.
    missing = os.path.join(self.directory, 'missing')
    self.assertEqual(self.check('--checkpoint_dir=' + missing),
                     (0, 'free\n', ''))
    self.assertTrue(os.path.exists(
        os.path.join(missing, directory_lock.LOCK_FILE)))

  def test_no_lock_without_a_directory_or_off_the_chief(self):
    for job_name, task in (('worker', 1), ('ps', 0)):
      self.assertIsNone(directory_lock.lock_if_chief(self.directory,
                                                     job_name, task))
    self.assertIsNone(directory_lock.lock_if_chief('', 'worker', 0))
    self.assertIsNone(directory_lock.lock_if_chief('gs://bucket/run',
                                                   'worker', 0))
    self.assertFalse(os.listdir(self.directory))


if __name__ == '__main__':
  unittest.main()
