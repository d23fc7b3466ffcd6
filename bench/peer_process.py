"""Runs one benchmark peer in a fresh interpreter and reads back its result.

Each bench script measures its peers in subprocesses of itself (so that no
peer inherits another's TensorFlow thread pools, oneDNN caches or XLA
clusters): the child prints one line `RESULT <json>`, the parent parses it.
"""

import json
import os
import subprocess
import sys
import time

from absl import flags

_RESULT_PREFIX = 'BENCH_RESULT '

_ONEDNN_DEFAULT_CHILD = ('from tensorflow.python.framework import test_util; '
                         'print(int(test_util.IsMklEnabled()))')
_tensorflow_defaults = None


def tensorflow_defaults():
  """TensorFlow's own settings where our processes change them.

  runtime/tf_environment.py sets them in our processes; a peer runs as its
  users run it, with TensorFlow's choices. Each is given explicitly, because
  the slim peer imports runtime.slim_compat (tf_slim needs it on TF 2.21),
  which would otherwise set ours.

  Returns:
    {variable: value}: TensorFlow's default CPU allocator, and oneDNN's
    kernels on or off as TensorFlow itself decides on this CPU (asked of a
    fresh interpreter without the variable).
  """
  global _tensorflow_defaults
  if _tensorflow_defaults is None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    env.pop('TF_ENABLE_ONEDNN_OPTS', None)
    done = subprocess.run([sys.executable, '-c', _ONEDNN_DEFAULT_CHILD],
                          env=env, capture_output=True, text=True,
                          check=True)
    _tensorflow_defaults = {
        'TF_CPU_ALLOCATOR_USE_BFC': 'false',
        'TF_ENABLE_ONEDNN_OPTS': done.stdout.split()[-1],
    }
  return _tensorflow_defaults


def report(result):
  """In the child: hands `result` (JSON-serializable) to the parent."""
  print(_RESULT_PREFIX + json.dumps(result), flush=True)


def run(script, child, flag_names, cwd, timeout, env_updates=None,
        python=None):
  """In the parent: runs `script --child=<child>`, returns its result.

  Args:
    script: the bench script to run again, as a child.
    child: the value of the child's --child flag (which peer to run).
    flag_names: the parent's absl flags to pass on with their values.
    cwd: the child's working directory.
    timeout: seconds before it is killed.
    env_updates: environment variables to set for the child; None as a
      value removes the variable.
    python: the child's interpreter (a peer with packages of its own, in
      its own venv); None: this one's.

  Returns:
    (the child's result or None, '' or what went wrong in one line).
  """
  argv = [python or sys.executable, os.path.abspath(script),
          '--child=%s' % child]
  argv += ['--%s=%s' % (name, getattr(flags.FLAGS, name))
           for name in flag_names]
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  for name, value in (env_updates or {}).items():
    if value is None:
      env.pop(name, None)
    else:
      env[name] = value
  try:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return None, 'timed out after %ds' % timeout
  for line in done.stdout.splitlines():
    if line.startswith(_RESULT_PREFIX):
      return json.loads(line[len(_RESULT_PREFIX):]), ''
  tail = (done.stderr.strip().splitlines() or ['no output'])[-1]
  return None, 'exit %d: %s' % (done.returncode, tail[:200])


def cpu():
  """(model name, feature flags) from /proc/cpuinfo."""
  model, features = 'unknown CPU', set()
  with open('/proc/cpuinfo') as cpuinfo:
    for line in cpuinfo:
      key, _, value = line.partition(':')
      if key.strip() == 'model name' and model == 'unknown CPU':
        model = value.strip()
      elif key.strip() == 'flags' and not features:
        features = set(value.split())
  return model, features


def step_timer(keras):
  """A Keras callback whose `times` holds the wall time after every batch.

  Args:
    keras: the Keras module of the model (tf_keras or Keras 3).
  """

  class StepTimer(keras.callbacks.Callback):
    """Records the wall time at the end of every batch."""

    def __init__(self):
      super().__init__()
      self.times = []

    def on_train_batch_end(self, batch, logs=None):
      self.times.append(time.perf_counter())

  return StepTimer()


def load_average():
  """The 1-minute load average, to show how busy the machine was."""
  with open('/proc/loadavg') as loadavg:
    return float(loadavg.read().split()[0])
