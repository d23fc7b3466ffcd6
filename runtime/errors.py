"""The one base class of errors in the command's input, and their one line.

Every layer's error for something the user fixes (a flag, a dataset, a
checkpoint, a directory in use) derives from `UserError`, so the binaries'
one-line error handling (`cli.run`) catches them all without knowing the
layers. `first_line` shortens the TensorFlow errors that such messages quote.
"""

import re


class UserError(Exception):
  """A problem with the command's input that the user can fix.

  Its message is one line that names the problem and the fix.
  """


def first_line(error):
  """The informative part of an error's message, on one line.

  Graph-mode TensorFlow errors wrap the message in 'Graph execution error:'
  and our own assertions' text in 'assertion failed: [...]'; the op trace
  after it means nothing to users.

  Args:
    error: the exception.

  Returns:
    The assertion's text or the message's first line; the exception's type
    name when it has no message.
  """
  message = getattr(error, 'message', None) or str(error)
  message = message.replace('Graph execution error:', '').strip()
  assertion = re.match(r'assertion failed: \[(.*?)\]', message)
  if assertion:
    return assertion.group(1)
  return re.split(r'\n|\s+\[\[', message)[0] or type(error).__name__
