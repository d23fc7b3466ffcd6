"""Shows which CPU allocator a process of ours gets, and that the user decides.

Each case runs in a fresh interpreter: TensorFlow picks its CPU allocator
once, at the process's first CPU allocation.
"""

import os
import subprocess
import sys
import textwrap

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


def _allocator_in_child(setting):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  env.pop('TF_CPU_ALLOCATOR_USE_BFC', None)
  if setting is not None:
    env['TF_CPU_ALLOCATOR_USE_BFC'] = setting
  result = subprocess.run([sys.executable, '-c', _CHILD], env=env,
                          capture_output=True, text=True, check=False)
  if result.returncode:
    raise AssertionError(result.stderr)
  return result.stdout.split()[-1]


class CpuAllocatorTest(tf.test.TestCase):

  def test_our_processes_use_the_bfc_allocator(self):
    self.assertEqual(_allocator_in_child(None), 'bfc')

  def test_the_users_setting_wins(self):
    self.assertEqual(_allocator_in_child('false'), 'default')


if __name__ == '__main__':
  tf.test.main()
