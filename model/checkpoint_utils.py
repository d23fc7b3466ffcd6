"""Finds checkpoints and matches their variables against a built graph.

Shared by training (fine-tuning), evaluation and export, so that every
binary reports a wrong or unreadable checkpoint the same way: one line that
names the problem and the fix.
"""

import collections
import os
import re
import time

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from runtime import errors

tf1 = tf.compat.v1


class CheckpointError(errors.UserError):
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
    latest = latest_checkpoint(path)
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
    raise CheckpointError('cannot read checkpoint %s: %s' %
                          (path, errors.first_line(e))) from e


def saved_variable_shapes(path):
  """{variable name: shape} of what the checkpoint at `path` holds.

  Raises:
    CheckpointError: the checkpoint cannot be read.
  """
  return _reader(path).get_variable_to_shape_map()


def match(path, variables, scope=''):
  """Compares `variables` with what the checkpoint at `path` holds.

  Args:
    path: a checkpoint prefix.
    variables: graph variables to look up, by their op names.
    scope: a scope the graph holds the variables under and the checkpoint
      does not (their names in it lack the leading `scope/`).

  Returns:
    Match of: restorable, {name in the checkpoint: variable} present with
    the same shape; missing, names the checkpoint lacks; mismatched,
    descriptions 'name [model shape] vs checkpoint [shape]' of the others.

  Raises:
    CheckpointError: the checkpoint cannot be read.
  """
  saved_shapes = saved_variable_shapes(path)
  prefix = scope + '/' if scope else ''
  restorable, missing, mismatched = {}, [], []
  for variable in variables:
    name = variable.op.name[len(prefix):]
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


# TensorFlow's name for the state file that lists a directory's checkpoints.
STATE_FILE = 'checkpoint'


def _exists(prefix):
  return tf.io.gfile.exists(prefix + '.index')


def _step_of(prefix):
  found = re.search(r'-(\d+)$', prefix)
  return int(found.group(1)) if found else -1


def checkpoints_in(directory):
  """Lists the checkpoints of a directory, oldest first.

  The state file's paths are taken as the directory's own files: a path
  recorded relative is beside the state file, and so is an absolute one
  (written by an older run or TensorFlow's default Saver) whose file name
  is there, as in a directory moved or copied from elsewhere. An absolute
  path is used as it is only when nothing of its name is beside the state
  file. Without a readable state file, the directory's checkpoints are
  listed by their global step suffix.

  Args:
    directory: a checkpoint directory.

  Returns:
    Checkpoint prefixes that exist, oldest first; the last is the latest.
  """
  state = None
  if tf.io.gfile.exists(os.path.join(directory, STATE_FILE)):
    try:
      state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError):
      state = None  # unreadable: fall back to the files themselves
  if state and state.model_checkpoint_path:
    recorded = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path not in recorded:
      recorded.append(state.model_checkpoint_path)
    prefixes = []
    for path in recorded:
      beside = os.path.join(directory, os.path.basename(path))
      if _exists(beside):
        prefixes.append(beside)
      elif _exists(path):
        prefixes.append(path)
    # The state file lists them oldest first, the latest last.
    return list(dict.fromkeys(prefixes))
  indexes = tf.io.gfile.glob(os.path.join(directory, '*.index'))
  return sorted((p[:-len('.index')] for p in indexes), key=_step_of)


def latest_checkpoint(directory):
  """The latest checkpoint of a directory (see checkpoints_in), or None."""
  prefixes = checkpoints_in(directory)
  return prefixes[-1] if prefixes else None


def damage(prefix):
  """Reads back every tensor of a checkpoint; says what is wrong, if anything.

  The reader checks each tensor's length and checksum, so this finds files
  truncated (a full disk, an interrupted copy) or corrupted.

  Args:
    prefix: a checkpoint prefix.

  Returns:
    None for a checkpoint that reads back whole, else a description naming
    the damaged file.
  """
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    return 'its index %s.index is unreadable (%s)' % (prefix, errors.first_line(e))
  try:
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except (tf.errors.OpError, IndexError, ValueError) as e:
    data_files = sorted(tf.io.gfile.glob(prefix + '.data-*'))
    if len(data_files) == 1:
      where = 'its data file %s' % data_files[0]
    elif data_files:
      where = 'one of its data files %s.data-*' % prefix
    else:
      where = 'its data file (missing)'
    return '%s is damaged: %s' % (where, errors.first_line(e))
  return None


def write_state(directory, prefixes):
  """Writes the directory's state file naming `prefixes`, with relative paths.

  Args:
    directory: the checkpoint directory.
    prefixes: checkpoint prefixes in `directory`, oldest first; the last
      becomes the latest.
  """
  names = [os.path.basename(p) for p in prefixes]
  tf1.train.update_checkpoint_state(directory, names[-1], names)


def prepare_resume(directory):
  """Makes the newest checkpoint that reads back whole the one to resume from.

  Checkpoints newer than it that do not read back are left where they are,
  out of the state file, which is rewritten with relative paths (so that
  TensorFlow's restore finds the directory's own files wherever it is).

  Args:
    directory: the checkpoint directory.

  Returns:
    (checkpoint prefix or None when the directory holds none, [(skipped
    prefix, why)] newest first).

  Raises:
    CheckpointError: the directory holds checkpoints but none reads back.
  """
  prefixes = checkpoints_in(directory)
  skipped = []
  while prefixes:
    why = damage(prefixes[-1])
    if why is None:
      break
    skipped.append((prefixes.pop(), why))
  if skipped and not prefixes:
    raise CheckpointError(
        'no checkpoint in %s reads back whole (%s); move them elsewhere to '
        'train from scratch' % (directory, '; '.join(
            '%s: %s' % (os.path.basename(p), why) for p, why in skipped)))
  if prefixes:
    write_state(directory, prefixes)
  return (prefixes[-1] if prefixes else None), skipped


def checkpoints_iterator(directory, timeout, poll_secs=1):
  """Yields each new latest checkpoint of a directory as it appears.

  Like tf.train.checkpoints_iterator, with checkpoints_in's reading of the
  state file.

  Args:
    directory: the checkpoint directory.
    timeout: stop after this many seconds without a new checkpoint.
    poll_secs: seconds between looks.

  Yields:
    Checkpoint prefixes.
  """
  last = None
  waited_since = time.time()
  while True:
    latest = latest_checkpoint(directory)
    if latest and latest != last:
      last = latest
      yield latest
      waited_since = time.time()
    elif time.time() - waited_since > timeout:
      return
    else:
      time.sleep(poll_secs)
