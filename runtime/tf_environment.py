"""TensorFlow's process-wide settings that it reads from the environment.

TensorFlow reads these once: the log level and the oneDNN switch when its
C++ runtime loads, the CPU allocator and its memory limit at the process's
first CPU allocation. Importing this module sets each one the user has not
set, so it must come before both; runtime.slim_compat, which our modules
import before TensorFlow, imports it first. A user's own setting (for
example TF_CPU_ALLOCATOR_USE_BFC=false, TF_CPU_BFC_MEM_LIMIT_IN_MB or
TF_ENABLE_ONEDNN_OPTS=0) always wins.
"""

import os
import platform

from runtime import debug

if not debug.ENABLED:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# TensorFlow's default CPU allocator passes each tensor to malloc, and glibc
# serves blocks above its mmap threshold (32 MiB at most) with fresh pages
# that it unmaps on free. Training's activations are that large (a batch of
# 32 at 112x112x64 is 103 MB), so every step would fault them in again and
# the kernels would wait on the page-zeroing. The BFC allocator keeps the
# memory it grows to and reuses it from step to step.
os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')


def is_x86_64():
  """Whether this machine is x86-64 (Linux's x86_64, Windows' AMD64)."""
  return platform.machine().lower() in ('x86_64', 'amd64')


# TensorFlow turns its oneDNN kernels on by default only on x86 CPUs with
# AVX512-VNNI, AVX512-BF16 or AMX. Elsewhere on x86 (AVX2 CPUs such as AMD's
# Zen 2 and Zen 3) it runs its own kernels, whose depthwise convolutions and
# their gradients are the slower ones on MobileNet's layers (docs/speed.md).
if is_x86_64():
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')

# The fraction of the memory available at start-up that the BFC allocator
# may hold; the rest is for what TensorFlow and Python allocate outside it.
BFC_SHARE_OF_AVAILABLE_MEMORY = 0.9


def available_memory_mb(meminfo_path='/proc/meminfo'):
  """The memory Linux says can be given to a new process, in MiB, or None.

  Args:
    meminfo_path: where to read MemAvailable from.

  Returns:
    MemAvailable in MiB, or None where the file or the line is missing.
  """
  try:
    with open(meminfo_path) as meminfo:
      for line in meminfo:
        name, _, value = line.partition(':')
        if name == 'MemAvailable':
          return int(value.split()[0]) // 1024
  except OSError:
    pass
  return None


# TensorFlow's own limit for the BFC allocator is 64 GiB, more memory than
# most machines have: a batch too large for the machine then ends in the
# kernel's OOM killer, and the process dies without a word. Under a limit it fails with TensorFlow's own
# error instead, naming the tensor it could not allocate.
if os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', '').lower() in ('true', '1'):
  _available = available_memory_mb()
  if _available:
    os.environ.setdefault(
        'TF_CPU_BFC_MEM_LIMIT_IN_MB',
        str(int(_available * BFC_SHARE_OF_AVAILABLE_MEMORY)))
