"""One training run per checkpoint directory: a lock the kernel releases.

A run holds an flock on LOCK_FILE in its --checkpoint_dir, which also names
the holder's PID and host for the message of a run that finds it taken. The
kernel drops an flock when its process ends, however it ends (SIGKILL, a
crash), so a killed run leaves no stale lock to clean up.

This module does not import TensorFlow, so that the trainer can refuse a
second run before spending seconds loading it.
"""

import fcntl
import os
import socket
import sys

from absl import flags

from runtime import errors

LOCK_FILE = '.mobilenet_v1_train.lock'


class DirectoryLockedError(errors.UserError):
  """Another process trains into the directory."""


def lock(directory):
  """Takes the lock of a local checkpoint directory, creating the directory.

  Args:
    directory: the checkpoint directory.

  Returns:
    The open lock file descriptor; the lock lasts while it is open. None for
    a remote directory (gs://...), which cannot be locked this way.

  Raises:
    DirectoryLockedError: another process holds the lock.
  """
  if '://' in directory:
    return None
  os.makedirs(directory, exist_ok=True)
  fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT,
               0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    owner = os.read(fd, 256).decode(errors='replace').strip()
    os.close(fd)
    raise DirectoryLockedError(
        '%s is in use by another training run (%s); wait for it or stop it, '
        'or give another --checkpoint_dir' %
        (directory, owner or 'starting up')) from None
  os.ftruncate(fd, 0)
  os.write(fd, ('PID %d on %s' % (os.getpid(), socket.gethostname())).encode())
  return fd


def exit_if_in_use(argv, program):
  """Exits with one line if argv's --checkpoint_dir is locked by a live run.

  Only for a run that would take the lock (not a parameter server, not a
  non-chief worker); it takes the lock for a moment and lets it go: the run
  locks for good once its flags are parsed. A command line it cannot read is
  left to the real flag parsing to report.

  Args:
    argv: the command line, program name first; --flagfile is read.
    program: the program's name, for the message.
  """
  early = flags.FlagValues()
  flags.DEFINE_string('checkpoint_dir', '', 'The directory to lock.',
                      flag_values=early)
  flags.DEFINE_string('job_name', 'worker', 'ps tasks do not lock.',
                      flag_values=early)
  flags.DEFINE_integer('task', 0, 'Only task 0 (the chief) locks.',
                       flag_values=early)
  try:
    early(argv, known_only=True)
  except flags.Error:
    return
  if (not early.checkpoint_dir or early.job_name == 'ps' or early.task or
      not os.path.isdir(early.checkpoint_dir)):
    return
  try:
    fd = lock(early.checkpoint_dir)
  except DirectoryLockedError as e:
    sys.exit('%s: error: %s' % (program, e))
  except OSError:
    return  # unwritable and the like: the real run reports it
  if fd is not None:
    os.close(fd)
