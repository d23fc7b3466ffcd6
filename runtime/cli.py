"""Runs the project's binaries so that user errors read as one line.

A wrong flag value, a missing or corrupt dataset or an unusable checkpoint
is something the user fixes, not a bug: it gets `program: error: <what and
how to fix>` on stderr and exit status 1, without a traceback. So does
Ctrl-C (`program: interrupted`, status 130). Anything else (out of memory,
internal and unavailable errors, bugs) raises with its message and
traceback. MOBILENET_V1_DEBUG=1 turns the one-line forms off too, for bug
reports.
"""

import os
import sys

from absl import app

from runtime import debug
from runtime import errors


def _input_op_errors():
  """TensorFlow's errors that come from the command's input.

  A missing file (NotFound, PermissionDenied), corrupt data (DataLoss; an
  undecodable image or a failed input assertion is InvalidArgument).
  Resource exhaustion, internal, unavailable and the other codes are not the
  user's input. This module does not import TensorFlow, so that a binary can
  act before it loads; a process that has not loaded it raises none.

  Returns:
    The exception classes, or () before TensorFlow is loaded.
  """
  tf = sys.modules.get('tensorflow')
  if tf is None:
    return ()
  return (tf.errors.NotFoundError, tf.errors.DataLossError,
          tf.errors.PermissionDeniedError, tf.errors.InvalidArgumentError)


def _is_interrupt(error):
  """Whether `error` is Ctrl-C, also where it cut into TensorFlow's C++.

  A KeyboardInterrupt that arrives while a TensorFlow binding is raising its
  own error (tf.io.gfile.exists raises NotFound for a missing file, every
  second while evaluation waits for checkpoints) comes out as pybind11's
  RuntimeError naming both.
  """
  return isinstance(error, KeyboardInterrupt) or (
      isinstance(error, RuntimeError) and
      'REPLACED BY KeyboardInterrupt' in str(error))


def run(main):
  """Like absl's app.run(main), reporting user errors in one line."""
  program = os.path.basename(sys.argv[0]).replace('.py', '')

  def guarded_main(argv):
    if len(argv) > 1:
      raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))
    if debug.ENABLED:
      return main(argv)
    try:
      return main(argv)
    except errors.UserError as e:
      sys.exit('%s: error: %s' % (program, e))
    except _input_op_errors() as e:
      sys.exit('%s: error: %s' % (program, errors.first_line(e)))
    except (KeyboardInterrupt, RuntimeError) as e:
      if not _is_interrupt(e):
        raise
      print('%s: interrupted' % program, file=sys.stderr)
      sys.exit(130)

  app.run(guarded_main)
