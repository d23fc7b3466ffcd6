"""Runs one benchmark peer in a fresh interpreter and reads back its result.

Each bench script measures its peers in subprocesses of itself (so that no
peer inherits another's TensorFlow thread pools, oneDNN caches or XLA
clusters): the child prints one line `RESULT <json>`, the parent parses it.
"""

import json
import os
import subprocess
import sys

_RESULT_PREFIX = 'BENCH_RESULT '


def report(result):
  """In the child: hands `result` (JSON-serializable) to the parent."""
  print(_RESULT_PREFIX + json.dumps(result), flush=True)


def run(script, child_flags, env, cwd, timeout):
  """In the parent: runs `script --child_flags...`, returns its result.

  Args:
    script: the bench script to run again, as a child.
    child_flags: its command-line flags.
    env: its environment.
    cwd: its working directory.
    timeout: seconds before it is killed.

  Returns:
    (the child's result or None, '' or what went wrong in one line).
  """
  try:
    done = subprocess.run([sys.executable, os.path.abspath(script)] +
                          child_flags, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return None, 'timed out after %ds' % timeout
  for line in done.stdout.splitlines():
    if line.startswith(_RESULT_PREFIX):
      return json.loads(line[len(_RESULT_PREFIX):]), ''
  tail = (done.stderr.strip().splitlines() or ['no output'])[-1]
  return None, 'exit %d: %s' % (done.returncode, tail[:200])


def load_average():
  """The 1-minute load average, to show how busy the machine was."""
  with open('/proc/loadavg') as loadavg:
    return float(loadavg.read().split()[0])
