"""Runs the project's binaries so that user errors read as one line.

A wrong flag value, a missing dataset or an unusable checkpoint is something
the user fixes, not a bug: it gets `program: error: <what and how to fix>`
on stderr and exit status 1, without a traceback. Anything else still raises
with its traceback.
"""

import os
import re
import sys

from absl import app
import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

import checkpoint_utils
import imagenet_input


class UserError(Exception):
  """A problem with the command's input that the user can fix."""


USER_ERRORS = (UserError, checkpoint_utils.CheckpointError,
               imagenet_input.DatasetError)


def first_line(error):
  """The informative part of a TensorFlow error message, on one line.

  Graph-mode errors wrap the message in 'Graph execution error:' and our
  own assertions' text in 'assertion failed: [...]'; the op trace after it
  means nothing to users.
  """
  message = getattr(error, 'message', None) or str(error)
  message = message.replace('Graph execution error:', '').strip()
  assertion = re.match(r'assertion failed: \[(.*?)\]', message)
  if assertion:
    return assertion.group(1)
  return re.split(r'\n|\s+\[\[', message)[0]


def run(main):
  """Like absl's app.run(main), reporting user errors in one line."""
  program = os.path.basename(sys.argv[0]).replace('.py', '')

  def guarded_main(argv):
    if len(argv) > 1:
      raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))
    try:
      return main(argv)
    except USER_ERRORS as e:
      sys.exit('%s: error: %s' % (program, e))
    except tf.errors.OpError as e:
      sys.exit('%s: error: %s' % (program, first_line(e)))

  app.run(guarded_main)
