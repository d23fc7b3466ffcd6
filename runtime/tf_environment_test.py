"""Shows which CPU allocator and kernels a process of ours gets, and that the
user decides.

Each case runs in a fresh interpreter: TensorFlow picks its CPU allocator
and its limit once, at the process's first CPU allocation, and whether to
run oneDNN's kernels once, when it loads.
"""

import os
import subprocess
import sys
import tempfile
import textwrap

from runtime import tf_environment
import tensorflow as tf

# Imports our modules the way every binary does (slim_compat before
# TensorFlow), allocates, and prints which allocator served it: only the BFC
# allocator keeps the statistics that get_memory_info reports.
_CHILD = textwrap.dedent("""
    from runtime import slim_compat  # pylint: disable=unused-import
    import tensorflow as tf

    tf.zeros([1024, 1024]).numpy()
    try:
      tf.config.experimental.get_memory_info('CPU:0')
      print('bfc')
    except ValueError:
      print('default')
    """)


# Allocates 256 MiB under the environment's limit and prints what happened.
_OVER_LIMIT_CHILD = textwrap.dedent("""
    from runtime import slim_compat  # pylint: disable=unused-import
    import tensorflow as tf

    try:
      tf.zeros([64, 1024, 1024]).numpy()
      print('allocated')
    except tf.errors.ResourceExhaustedError as error:
      print('oom' if 'OOM when allocating' in error.message else error.message)
    """)

_LIMIT_CHILD = textwrap.dedent("""
    import os
    from runtime import slim_compat  # pylint: disable=unused-import
    print(os.environ.get('TF_CPU_BFC_MEM_LIMIT_IN_MB', 'unset'))
    """)

# Prints whether TensorFlow's graph rewrite puts oneDNN's kernels in.
_ONEDNN_CHILD = textwrap.dedent("""
    from runtime import slim_compat  # pylint: disable=unused-import
    from tensorflow.python.framework import test_util

    print('onednn' if test_util.IsMklEnabled() else 'tensorflow')
    """)

_VARIABLES = ('TF_CPU_ALLOCATOR_USE_BFC', 'TF_CPU_BFC_MEM_LIMIT_IN_MB',
              'TF_ENABLE_ONEDNN_OPTS')


def _run_child(code, **settings):
  """Runs `code` with the user's settings of _VARIABLES; its last word."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  for name in _VARIABLES:
    env.pop(name, None)
  env.update(settings)
  result = subprocess.run([sys.executable, '-c', code], env=env,
                          capture_output=True, text=True, check=False)
  if result.returncode:
    raise AssertionError(result.stderr)
  return result.stdout.split()[-1]


class CpuAllocatorTest(tf.test.TestCase):

  def test_our_processes_use_the_bfc_allocator(self):
    self.assertEqual(_run_child(_CHILD), 'bfc')

  def test_the_users_setting_wins(self):
    # TensorFlow's own choice then, as on a CPU where it leaves oneDNN off:
    # with oneDNN on, it would pick oneDNN's allocator, which pools too.
    self.assertEqual(
        _run_child(_CHILD, TF_CPU_ALLOCATOR_USE_BFC='false',
                   TF_ENABLE_ONEDNN_OPTS='0'), 'default')


class OneDnnTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    if not tf_environment.is_x86_64():
      self.skipTest('the oneDNN default is set on x86-64 only')

  def test_our_processes_run_onednn_kernels_on_every_x86_cpu(self):
    # Without the setting, TensorFlow would choose by CPU: its own kernels
    # on AVX2 CPUs, oneDNN's on CPUs with AVX512-VNNI, AVX512-BF16 or AMX.
    self.assertEqual(_run_child(_ONEDNN_CHILD), 'onednn')

  def test_the_users_setting_wins(self):
    self.assertEqual(_run_child(_ONEDNN_CHILD, TF_ENABLE_ONEDNN_OPTS='0'),
                     'tensorflow')


class MemoryLimitTest(tf.test.TestCase):

  def test_default_limit_is_below_the_machines_memory(self):
    # Past the machine's memory the kernel's OOM killer ends the process
    # before the allocator's limit could raise an error.
    physical_mb = (os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
                   // 2**20)
    limit_mb = int(_run_child(_LIMIT_CHILD))
    self.assertGreater(limit_mb, 0)
    self.assertLess(limit_mb, physical_mb)

  def test_no_limit_is_set_for_the_default_allocator(self):
    self.assertEqual(
        _run_child(_LIMIT_CHILD, TF_CPU_ALLOCATOR_USE_BFC='false'), 'unset')

  def test_allocating_past_the_limit_is_tensorflows_error(self):
    self.assertEqual(
        _run_child(_OVER_LIMIT_CHILD, TF_CPU_BFC_MEM_LIMIT_IN_MB='64'), 'oom')
    self.assertEqual(
        _run_child(_OVER_LIMIT_CHILD, TF_CPU_BFC_MEM_LIMIT_IN_MB='1024'),
        'allocated')

  def test_available_memory_is_read_in_mib(self):
    with tempfile.NamedTemporaryFile('w', suffix='meminfo') as meminfo:
      meminfo.write('MemTotal:       24000000 kB\n'
                    'MemAvailable:    2097152 kB\n')
      meminfo.flush()
      self.assertEqual(tf_environment.available_memory_mb(meminfo.name), 2048)

  def test_available_memory_is_none_without_the_line(self):
    with tempfile.NamedTemporaryFile('w', suffix='meminfo') as meminfo:
      meminfo.write('MemTotal:       24000000 kB\n')
      meminfo.flush()
      self.assertIsNone(tf_environment.available_memory_mb(meminfo.name))
    self.assertIsNone(tf_environment.available_memory_mb('/nonexistent'))


if __name__ == '__main__':
  tf.test.main()
