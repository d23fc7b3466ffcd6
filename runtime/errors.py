"""The one base class of errors in the command's input.

Every layer's error for something the user fixes (a flag, a dataset, a
checkpoint, a directory in use) derives from `UserError`, so the binaries'
one-line error handling (`cli.run`) catches them all without knowing the
layers.
"""


class UserError(Exception):
  """A problem with the command's input that the user can fix.

  Its message is one line that names the problem and the fix.
  """
