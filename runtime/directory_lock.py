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


def lock_if_chief(directory, job_name, task):
  """Takes the lock of `directory` for a run that writes checkpoints there.

  Only the chief does: task 0 of the workers. Parameter servers and the
  other workers of its cluster share its directory.

  Args:
    directory: the checkpoint directory; '' takes no lock.
    job_name: the process's job, 'worker' or 'ps'.
    task: the process's task index within its job.

  Returns:
    The open lock file descriptor, to keep open while the run lasts; None
    when this process takes no lock (or the directory is remote).

  Raises:
    DirectoryLockedError: another process holds the lock.
  """
  if not directory or job_name == 'ps' or task:
    return None
  return lock(directory)
