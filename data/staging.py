"""Replaces a dataset directory's contents only once the new ones are complete.

A conversion is written into the hidden staging directory
`OUTPUT_DIR/.build_imagenet_tfrecords-staging`, its completion marker
(`conversion_complete.json`, listing the shards and their example counts)
last. Only then are the old files moved out and the new ones moved in, the
marker last. Until then the previous dataset stays as it was, whatever stops
the run; the next run discards an unfinished staging directory, or finishes a
move that was under way. The marker also records the conversion's
configuration and a fingerprint of its inputs, so that an identical re-run
finds it and writes nothing.
"""

import hashlib
import json
import os
import signal

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import records
from data import sources

# Inside the output directory, so that moving files in and out is a rename on
# one filesystem; the leading dot keeps it out of `{split}-*-of-*` globs.
STAGING_DIRNAME = '.build_imagenet_tfrecords-staging'
# In the staging directory: where the replaced files wait until the new
# dataset is in place.
PREVIOUS_DIRNAME = 'previous'


class Interrupted(Exception):
  """SIGINT or SIGTERM arrived.

  Attributes:
    signal_number: the signal.
    while_moving: the new dataset was complete and being moved into place.
  """

  def __init__(self, signal_number):
    super().__init__(signal.Signals(signal_number).name)
    self.signal_number = signal_number
    self.while_moving = False


def write_text_atomically(path, text):
  """Writes a text file under a temporary name, then renames it.

  Args:
    path: the file.
    text: its contents.
  """
  temp_path = os.path.join(os.path.dirname(path),
                           '.tmp-' + os.path.basename(path))
  with tf.io.gfile.GFile(temp_path, 'w') as text_file:
    text_file.write(text)
  tf.io.gfile.rename(temp_path, path, overwrite=True)


def _read_marker(directory):
  """Reads the completion marker of a directory.

  Args:
    directory: a dataset or staging directory.

  Returns:
    The marker as a dict, or None when there is none or it is unreadable.
  """
  path = os.path.join(directory, records.COMPLETION_FILENAME)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, 'r') as completion_file:
      marker = json.load(completion_file)
  except ValueError:
    return None
  if not isinstance(marker, dict) or not isinstance(
      marker.get('shard_files'), dict):
    return None
  return marker


def _marker_shard_names(marker):
  """Returns the shard file names a marker lists, train split first."""
  # Markers written before the staging directory held full paths.
  return [path.rsplit('/', 1)[-1]
          for split in sorted(marker['shard_files'])
          for path in marker['shard_files'][split]]


def _dataset_files(directory):
  """Names of the shards and labels file present in directory."""
  names = []
  for split in (records.TRAIN_SPLIT, records.VALIDATION_SPLIT):
    names.extend(sorted(
        path.rsplit('/', 1)[-1]
        for path in tf.io.gfile.glob(os.path.join(directory,
                                                  '%s-*-of-*' % split))))
  if tf.io.gfile.exists(os.path.join(directory, records.LABELS_FILENAME)):
    names.append(records.LABELS_FILENAME)
  return names


def _check_files_are_ours(output_dir, overwrite):
  """Refuses to replace dataset files that no marker of ours lists.

  Args:
    output_dir: the conversion's destination.
    overwrite: replace such files all the same.

  Raises:
    ConversionError: output_dir holds such files and overwrite is False.
  """
  marker = _read_marker(output_dir)
  ours = (set(_marker_shard_names(marker) + [records.LABELS_FILENAME])
          if marker else ())
  foreign = [name for name in _dataset_files(output_dir) if name not in ours]
  if foreign and not overwrite:
    raise sources.ConversionError(
        '%s holds %d dataset files that build_imagenet_tfrecords did not '
        'write (e.g. %s; no %s lists them); pass --overwrite to replace them '
        'or choose another --output_dir' %
        (output_dir, len(foreign), foreign[0], records.COMPLETION_FILENAME))


def _move_into_place(output_dir, on_event):
  """Replaces the dataset in output_dir with the staged, complete one.

  Every old file moves out (into the staging directory) before any new one
  moves in, and the marker comes last. So the shards of a split never mix
  two conversions: in between, readers find an incomplete shard set and
  refuse it. A run stopped in here is finished by the next one.

  Args:
    output_dir: the conversion's destination; its staging directory holds a
      complete conversion with its marker.
    on_event: called with 'moved' after every file renamed.

  Raises:
    Interrupted: with while_moving set.
  """
  staging_dir = os.path.join(output_dir, STAGING_DIRNAME)
  previous_dir = os.path.join(staging_dir, PREVIOUS_DIRNAME)

  def move(source_dir, target_dir, name):
    tf.io.gfile.rename(os.path.join(source_dir, name),
                       os.path.join(target_dir, name))
    on_event('moved')

  new_names = (_marker_shard_names(_read_marker(staging_dir)) +
               [records.LABELS_FILENAME])
  waiting = [name for name in new_names
             if tf.io.gfile.exists(os.path.join(staging_dir, name))]
  try:
    if len(waiting) == len(new_names):
      # Nothing has moved in yet, so every dataset file here is an old one.
      tf.io.gfile.makedirs(previous_dir)
      old_names = _dataset_files(output_dir)
      if tf.io.gfile.exists(os.path.join(output_dir,
                                         records.COMPLETION_FILENAME)):
        old_names.insert(0, records.COMPLETION_FILENAME)
      for name in old_names:
        move(output_dir, previous_dir, name)
    for name in waiting:
      move(staging_dir, output_dir, name)
    move(staging_dir, output_dir, records.COMPLETION_FILENAME)
    tf.io.gfile.rmtree(staging_dir)
  except Interrupted as interruption:
    interruption.while_moving = True
    raise


def settle_interrupted_run(output_dir, on_event):
  """Finishes or discards what an interrupted run left in the staging dir.

  Args:
    output_dir: the conversion's destination.
    on_event: as for replace_dataset.

  Raises:
    Interrupted: with while_moving set, while finishing a move.
  """
  staging_dir = os.path.join(output_dir, STAGING_DIRNAME)
  if not tf.io.gfile.exists(staging_dir):
    return
  if tf.io.gfile.exists(os.path.join(staging_dir,
                                     records.COMPLETION_FILENAME)):
    print('Finishing the move of the conversion an interrupted run completed '
          'into %s.' % output_dir, flush=True)
    _move_into_place(output_dir, on_event)
  else:
    print('Removing what an interrupted run left in %s.' % staging_dir,
          flush=True)
    tf.io.gfile.rmtree(staging_dir)


def find_complete_marker(output_dir, config):
  """Finds an identical conversion that finished earlier.

  Args:
    output_dir: the conversion's destination.
    config: the conversion's configuration (see replace_dataset).

  Returns:
    Its completion marker, as a dict, when output_dir holds it with every
    file it lists; otherwise None.
  """
  previous = _read_marker(output_dir)
  if not previous or previous.get('config') != config:
    return None
  expected_names = _marker_shard_names(previous) + [records.LABELS_FILENAME]
  if not all(tf.io.gfile.exists(os.path.join(output_dir, name))
             for name in expected_names):
    return None
  return previous


def _file_signature(path):
  """Returns (size in bytes, modification time in ns) of a file."""
  if '://' in path:
    stat = tf.io.gfile.stat(path)
    return stat.length, stat.mtime_nsec
  # tf.io.gfile.stat truncates local modification times to whole seconds.
  stat = os.stat(path)
  return stat.st_size, stat.st_mtime_ns


def input_fingerprint(splits):
  """A digest of which images go where and of their sizes and times.

  Added, removed, relabelled or edited images (even edited in place: a new
  size or modification time) change it, and so force a rebuild.

  Args:
    splits: dict split name -> list of ImageSource.

  Returns:
    Hex digest.

  Raises:
    ConversionError: an image cannot be read.
  """
  digest = hashlib.sha256()
  for split in sorted(splits):
    for source in splits[split]:
      try:
        size, mtime = _file_signature(source.path)
      except (OSError, tf.errors.OpError) as error:
        raise sources.ConversionError('cannot read image %s: %s' % (
            source.path, getattr(error, 'strerror', None) or error))
      digest.update(('%s\t%s\t%d\t%d\t%d\n' % (
          split, source.path, source.label, size, mtime)).encode())
  return digest.hexdigest()


def replace_dataset(output_dir, write_staged, overwrite, on_event):
  """Writes a dataset into the staging directory, then swaps it in.

  The files in output_dir are replaced only once the new dataset is
  complete; whatever stops the run before, they stay as they were.

  Args:
    output_dir: destination directory (created if needed).
    write_staged: writes the shards and labels file into the (empty)
      directory it is given and returns the completion marker, a
      JSON-serializable dict with 'shard_files' (split -> shard names),
      'split_counts' and 'config', the description by which
      find_complete_marker recognises an identical re-run.
    overwrite: replace dataset files in output_dir that we did not write.
    on_event: called with 'committed' once the staged marker is written and
      with 'moved' after every file renamed while the new dataset moves in
      (write_staged calls it too); tests use it to interrupt the conversion
      at an exact point.

  Returns:
    The completion marker, as a dict.

  Raises:
    ConversionError: output_dir holds another tool's dataset files and
      overwrite is False.
    Interrupted: from the signal handlers the caller installs.
  """
  _check_files_are_ours(output_dir, overwrite)
  staging_dir = os.path.join(output_dir, STAGING_DIRNAME)
  tf.io.gfile.makedirs(staging_dir)
  try:
    marker = write_staged(staging_dir)
    # Written last: its presence means every file it lists is complete.
    write_text_atomically(
        os.path.join(staging_dir, records.COMPLETION_FILENAME),
        json.dumps(marker, indent=1, sort_keys=True))
  except BaseException:
    # Whatever stopped the run, the previous dataset is still in place.
    tf.io.gfile.rmtree(staging_dir)
    raise
  on_event('committed')
  _move_into_place(output_dir, on_event)
  return marker
