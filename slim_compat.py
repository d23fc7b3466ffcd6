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
import importlib
import logging
import os
import sys
import warnings

# Must be set before TensorFlow loads its C++ runtime.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


@contextlib.contextmanager
def native_stderr_silenced():
  """Sends file descriptor 2 to /dev/null for the duration of the block.

  TensorFlow's C++ runtime logs start-up banners (oneDNN, missing CUDA
  drivers, cuInit failures) before `TF_CPP_MIN_LOG_LEVEL` takes effect, so the
  only way to hide them is at the descriptor level.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


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
