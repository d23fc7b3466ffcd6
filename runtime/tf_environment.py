"""TensorFlow's process-wide settings that it reads from the environment.

TensorFlow reads these once: the log level when its C++ runtime loads, the
CPU allocator at the process's first CPU allocation. Importing this module
sets each one the user has not set, so it must come before both;
runtime.slim_compat, which our modules import before TensorFlow, imports it
first. A user's own setting (for example TF_CPU_ALLOCATOR_USE_BFC=false)
always wins.
"""

import os

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
