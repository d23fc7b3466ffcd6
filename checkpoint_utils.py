"""Finds checkpoints and matches their variables against a built graph.

Shared by training (fine-tuning), evaluation and export, so that every
binary reports a wrong or unreadable checkpoint the same way: one line that
names the problem and the fix.
"""

import collections

import slim_compat  # pylint: disable=unused-import
import tensorflow as tf


class CheckpointError(Exception):
  """A checkpoint that is missing, unreadable or does not fit the model."""


GLOBAL_STEP = 'global_step'

Match = collections.namedtuple('Match', ['restorable', 'missing',
                                         'mismatched'])


def resolve(path):
  """Returns the checkpoint prefix for a checkpoint path or directory.

  Args:
    path: a checkpoint prefix (`.../model.ckpt-100`) or a directory holding
      checkpoints (the latest is taken).

  Returns:
    The checkpoint prefix.

  Raises:
    CheckpointError: nothing is there.
  """
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if not latest:
      raise CheckpointError('no checkpoint in %s' % path)
    return latest
  if not tf.io.gfile.glob(path + '*'):
    raise CheckpointError('no checkpoint at %s' % path)
  return path


def _reader(path):
  """tf.train.load_checkpoint(path), raising CheckpointError if unreadable."""
  try:
    return tf.train.load_checkpoint(path)
  except (tf.errors.OpError, ValueError) as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise CheckpointError('cannot read checkpoint %s: %s' %
                          (path, first_line)) from e


def match(path, variables):
  """Compares `variables` with what the checkpoint at `path` holds.

  Args:
    path: a checkpoint prefix.
    variables: graph variables to look up, by their op names.

  Returns:
    Match of: restorable, {name: variable} present with the same shape;
    missing, names the checkpoint lacks; mismatched, descriptions
    'name [model shape] vs checkpoint [shape]' of the others.

  Raises:
    CheckpointError: the checkpoint cannot be read.
  """
  saved_shapes = _reader(path).get_variable_to_shape_map()
  restorable, missing, mismatched = {}, [], []
  for variable in variables:
    name = variable.op.name
    shape = variable.shape.as_list()
    if name not in saved_shapes:
      missing.append(name)
    elif saved_shapes[name] != shape:
      mismatched.append('%s %s vs checkpoint %s' %
                        (name, shape, saved_shapes[name]))
    else:
      restorable[name] = variable
  return Match(restorable, missing, mismatched)


def saved_global_step(path):
  """The global step a checkpoint was saved at, or None if it has none.

  The step is training's bookkeeping, not part of the model: checkpoints
  trimmed for release, or rebuilt from a frozen graph, hold only the model's
  variables.

  Args:
    path: a checkpoint prefix.

  Returns:
    The step as an int, or None.

  Raises:
    CheckpointError: the checkpoint cannot be read.
  """
  reader = _reader(path)
  if not reader.has_tensor(GLOBAL_STEP):
    return None
  return int(reader.get_tensor(GLOBAL_STEP))


def first_few(items, separator=', ', count=3):
  """The first `count` items joined, and how many more there are."""
  return separator.join(items[:count]) + (
      ' and %d more' % (len(items) - count) if len(items) > count else '')


def describe_step(step):
  """'step 7', or 'step unknown' for saved_global_step's None."""
  return 'step unknown' if step is None else 'step %d' % step


def verify_fits(path, variables, flags_hint):
  """Checks that the checkpoint at `path` holds all `variables`, same shapes.

  Args:
    path: a checkpoint prefix.
    variables: the variables that will be restored.
    flags_hint: which flags decide the model's shapes, for the message.

  Raises:
    CheckpointError: variables are missing or of another shape.
  """
  found = match(path, variables)
  if found.mismatched:
    raise CheckpointError(
        'checkpoint %s does not fit this model (%s): %s' %
        (path, flags_hint, first_few(found.mismatched, '; ')))
  if found.missing:
    raise CheckpointError(
        'checkpoint %s lacks %d of the model\'s variables (first: %s); is it '
        'a MobileNet V1 checkpoint of this configuration (%s)?' %
        (path, len(found.missing), found.missing[0], flags_hint))
