"""Makes tf-slim 1.1.0 work on TensorFlow 2.21 and quiets known noise.

Import this module before `tf_slim` (the usual pattern is
`from slim_compat import slim`). tf-slim's last release predates two changes:

1. `tf.compat.v1.layers` batch normalization lazily imports
   `tf_keras.legacy_tf_layers.normalization`, which tf-keras 2.21 ships as
   `tf_keras.src.legacy_tf_layers.normalization`. We register the `src`
   modules under the names TensorFlow asks for.
2. tf-slim tests `isinstance(x, tensorflow.python.framework.ops.Tensor)`;
   TF 2.21 no longer defines `ops.Tensor` (it is `tf.Tensor`).

Both fixes are idempotent and exposed as functions so tests can show that
each is needed.
"""

import contextlib
import faulthandler
import importlib
import logging
import os
import subprocess
import sys
import warnings

from runtime import debug
from runtime import tf_environment  # pylint: disable=unused-import

# A native crash (segfault, abort, illegal instruction) prints the Python
# stack it happened in instead of dying without a word.
faulthandler.enable()

# Holds what the parent writes to its stdin; writes it to its stderr only if
# the stdin closes while the holder still runs, which happens when the parent
# dies (native_stderr_silenced kills the holder when its block ends).
_HOLDER = (
    'import os\n'
    'held = []\n'
    'while True:\n'
    '  chunk = os.read(0, 65536)\n'
    '  if not chunk:\n'
    '    break\n'
    '  held.append(chunk)\n'
    'os.write(2, b"".join(held))\n')


@contextlib.contextmanager
def native_stderr_silenced():
  """Holds back what is written to file descriptor 2 during the block.

  TensorFlow's C++ runtime logs start-up banners (oneDNN, missing CUDA
  drivers, cuInit failures) before `TF_CPP_MIN_LOG_LEVEL` takes effect, so the
  only way to hide them is at the descriptor level. The output goes to a
  child process that drops it when the block ends, by returning or raising
  (a Python exception carries its own message), and writes it out if the
  process dies inside the block: a native crash's message and faulthandler's
  stack stay visible. With MOBILENET_V1_DEBUG=1 nothing is held back.
  """
  if debug.ENABLED:
    yield
    return
  sys.stderr.flush()
  read_end, write_end = os.pipe()
  # Its own session: a Ctrl-C at the terminal is not its business.
  holder = subprocess.Popen([sys.executable, '-S', '-c', _HOLDER],
                            stdin=read_end, stdout=subprocess.DEVNULL,
                            start_new_session=True)
  os.close(read_end)
  saved = os.dup(2)
  os.dup2(write_end, 2)
  os.close(write_end)
  try:
    yield
  finally:
    # Killed while this process still holds the pipe's write end, the
    # holder cannot have seen its end and writes nothing.
    holder.kill()
    holder.wait()
    os.dup2(saved, 2)
    os.close(saved)


with native_stderr_silenced():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # Device discovery happens once per process; doing it here keeps its
  # driver probing out of the user's terminal.
  tf.config.list_physical_devices()
from tensorflow.python.framework import ops  # pylint: disable=g-import-not-at-top,g-bad-import-order

LEGACY_LAYERS_ALIASES = {
    'tf_keras.legacy_tf_layers': 'tf_keras.src.legacy_tf_layers',
    'tf_keras.legacy_tf_layers.base': 'tf_keras.src.legacy_tf_layers.base',
    'tf_keras.legacy_tf_layers.normalization':
        'tf_keras.src.legacy_tf_layers.normalization',
}


def alias_legacy_tf_layers():
  """Makes `tf_keras.legacy_tf_layers.*` importable (fix 1)."""
  for alias, real in LEGACY_LAYERS_ALIASES.items():
    if alias not in sys.modules:
      sys.modules[alias] = importlib.import_module(real)


def restore_ops_tensor():
  """Defines `ops.Tensor` as `tf.Tensor` where TensorFlow dropped it (fix 2)."""
  if not hasattr(ops, 'Tensor'):
    ops.Tensor = tf.Tensor


def silence_known_noise():
  """Hides TensorFlow/tf-slim deprecation chatter that users cannot act on."""
  if debug.ENABLED:
    return
  warnings.filterwarnings('ignore', category=DeprecationWarning)
  warnings.filterwarnings('ignore', category=FutureWarning)
  warnings.filterwarnings('ignore', category=UserWarning,
                          module=r'(tf_slim|tensorflow|tf_keras)\b.*')
  tf.get_logger().setLevel(logging.ERROR)
  # pylint: disable=protected-access
  from tensorflow.python.util import deprecation  # pylint: disable=g-import-not-at-top
  deprecation._PRINT_DEPRECATION_WARNINGS = False
  # pylint: enable=protected-access


alias_legacy_tf_layers()
restore_ops_tensor()
silence_known_noise()

import tf_slim as slim  # pylint: disable=g-import-not-at-top,unused-import,wrong-import-position
