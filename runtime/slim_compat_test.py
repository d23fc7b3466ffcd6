"""Shows that each tf-slim fix in slim_compat is needed, and that it works.

slim.batch_norm takes one of two code paths: with moving-average updates in
a collection (the default) it goes through TensorFlow's legacy layers (fix
1); with in-place updates (`updates_collections=None`) it runs tf-slim's own
fused kernel, which needs `ops.Tensor` (fix 2). Each case runs in a fresh
interpreter, because TensorFlow caches the module of fix 1 once loaded.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf
from testing import test_data

test_data.use_float32_math()

# Builds slim.batch_norm along one path in training or eval mode, runs it on
# a fixed input and writes the output to stdout, after optionally undoing one
# fix. Paths: layers_fused / layers_unfused (legacy layers, updates in
# UPDATE_OPS) and slim_fused (tf-slim's kernel, in-place updates).
_CHILD = textwrap.dedent("""
    import json
    import sys
    from runtime import slim_compat
    from runtime.slim_compat import slim
    import tensorflow as tf

    undo, path, is_training = sys.argv[1], sys.argv[2], sys.argv[3] == 'train'
    fused = path != 'layers_unfused'
    updates = None if path == 'slim_fused' else tf.compat.v1.GraphKeys.UPDATE_OPS
    if undo == 'alias':
      for alias in slim_compat.LEGACY_LAYERS_ALIASES:
        del sys.modules[alias]
    elif undo == 'ops_tensor':
      del slim_compat.ops.Tensor

    with tf.Graph().as_default():
      inputs = tf.reshape(tf.range(2 * 3 * 3 * 4, dtype=tf.float32), [2, 3, 3, 4])
      outputs = slim.batch_norm(inputs, fused=fused, is_training=is_training,
                                scale=True, epsilon=0.001,
                                updates_collections=updates)
      with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        print(json.dumps(sess.run(outputs).tolist()))
    """)

# Writes to file descriptor 2 inside native_stderr_silenced, then finishes
# or (argv[1] == 'crash') aborts there, as a native crash would.
_HOLD_CHILD = textwrap.dedent("""
    import os
    import sys
    from runtime import slim_compat

    with slim_compat.native_stderr_silenced():
      os.write(2, b'a native banner\\n')
      if sys.argv[1] == 'crash':
        os.abort()
    print('done')
    """)

_INPUTS = np.arange(2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 3, 3, 4)


def _numpy_batch_norm(inputs, is_training, epsilon=0.001):
  """Batch norm with gamma 1 and beta 0, as freshly initialized."""
  if is_training:
    mean, variance = inputs.mean(axis=(0, 1, 2)), inputs.var(axis=(0, 1, 2))
  else:  # fresh moving averages
    mean, variance = 0.0, 1.0
  return (inputs - mean) / np.sqrt(variance + epsilon)


def _run_child(undo, path, mode):
  return subprocess.run(
      [sys.executable, '-c', _CHILD, undo, path, mode],
      capture_output=True, check=False)


def _run_hold_child(mode, debug=False):
  env = dict(os.environ)
  env.pop('MOBILENET_V1_DEBUG', None)
  if debug:
    env['MOBILENET_V1_DEBUG'] = '1'
  return subprocess.run([sys.executable, '-c', _HOLD_CHILD, mode],
                        capture_output=True, env=env, check=False)


class NativeStderrTest(tf.test.TestCase):

  def test_quiet_when_all_goes_well(self):
    # TensorFlow's import banners and the block's output are dropped.
    result = _run_hold_child('finish')
    self.assertEqual(result.returncode, 0, result.stderr.decode())
    self.assertEqual(result.stdout, b'done\n')
    self.assertEqual(result.stderr, b'')

  def test_native_crash_inside_the_block_is_visible(self):
    result = _run_hold_child('crash')
    self.assertEqual(result.returncode, -signal.SIGABRT)
    stderr = result.stderr.decode()
    self.assertIn('a native banner', stderr)
    # faulthandler's report of where it died.
    self.assertIn('Fatal Python error: Aborted', stderr)
    self.assertIn('File "<string>", line 9', stderr)

  def test_debug_holds_nothing_back(self):
    result = _run_hold_child('finish', debug=True)
    self.assertEqual(result.returncode, 0, result.stderr.decode())
    self.assertIn(b'a native banner', result.stderr)


class SlimCompatTest(tf.test.TestCase):

  def test_batch_norm_works_with_both_fixes(self):
    for path in ('layers_fused', 'layers_unfused', 'slim_fused'):
      for mode in ('train', 'eval'):
        with self.subTest(path=path, mode=mode):
          result = _run_child('none', path, mode)
          self.assertEqual(result.returncode, 0, result.stderr.decode())
          outputs = np.array(json.loads(result.stdout), np.float32)
          self.assertAllClose(outputs,
                              _numpy_batch_norm(_INPUTS, mode == 'train'),
                              rtol=1e-4, atol=1e-4)

  def test_layers_batch_norm_needs_legacy_layers_alias(self):
    for path in ('layers_fused', 'layers_unfused'):
      with self.subTest(path=path):
        result = _run_child('alias', path, 'train')
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("No module named 'tf_keras.legacy_tf_layers'",
                      result.stderr.decode())

  def test_slim_fused_batch_norm_needs_ops_tensor(self):
    for mode in ('train', 'eval'):
      with self.subTest(mode=mode):
        result = _run_child('ops_tensor', 'slim_fused', mode)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("has no attribute 'Tensor'", result.stderr.decode())


if __name__ == '__main__':
  tf.test.main()
