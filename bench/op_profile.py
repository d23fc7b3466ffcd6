"""Where a training step's time goes, per op type, for any TensorFlow peer.

TensorFlow's profiler traces every kernel the runtime executes, whether a
tf.compat.v1 Session or a tf.function (Keras `fit`) runs it; RunMetadata's
step stats cover only the former. `op_milliseconds` traces a few steps and
sums each op type's kernel time from the trace (an XSpace protobuf).
"""

import collections
import glob
import os
import re
import shutil
import tempfile

# A kernel's trace event is named "<op name>:<op type>"; the runtime's own
# events ("ExecutorState::Process", "EagerLocalExecute: f") are not. Op
# types the oneDNN rewrite gives begin with an underscore
# ("_MklNativeConv2D").
_KERNEL_EVENT = re.compile(r'^[^:\s]+:(_?[A-Z][A-Za-z0-9_]*)$')


def op_milliseconds(run_steps, steps):
  """Milliseconds per step of each op type, over `steps` traced steps.

  Each kernel counts its own wall time; kernels that run at the same time
  on different cores each count in full, so the sum can exceed a step.

  Args:
    run_steps: function () -> None that runs `steps` training steps.
    steps: how many steps run_steps runs.

  Returns:
    {op type: milliseconds per step}.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  log_dir = tempfile.mkdtemp(prefix='op_profile_')
  try:
    tf.profiler.experimental.start(log_dir)
    try:
      run_steps()
    finally:
      tf.profiler.experimental.stop()
    picoseconds = _kernel_picoseconds(log_dir)
  finally:
    shutil.rmtree(log_dir, ignore_errors=True)
  return {op_type: total / 1e9 / steps
          for op_type, total in picoseconds.items()}


def _kernel_picoseconds(log_dir):
  """{op type: summed kernel picoseconds} of the host plane of a trace."""
  # pylint: disable-next=g-import-not-at-top
  from tensorflow.tsl.profiler.protobuf import xplane_pb2
  paths = glob.glob(os.path.join(log_dir, '**', '*.xplane.pb'),
                    recursive=True)
  if not paths:
    raise RuntimeError('the profiler wrote no trace into %s' % log_dir)
  space = xplane_pb2.XSpace()
  with open(paths[0], 'rb') as f:
    space.ParseFromString(f.read())
  totals = collections.Counter()
  for plane in space.planes:
    if not plane.name.startswith('/host:CPU'):
      continue
    op_types = {}
    for metadata_id, metadata in plane.event_metadata.items():
      match = _KERNEL_EVENT.match(metadata.name)
      if match:
        op_types[metadata_id] = match.group(1)
    for line in plane.lines:
      for event in line.events:
        op_type = op_types.get(event.metadata_id)
        if op_type:
          totals[op_type] += event.duration_ps
  return totals
