"""Reads ImageNet-format TFRecords as the TF-slim tools write them.

A dataset directory holds sharded files `train-00000-of-01024`, ... and
`validation-00000-of-00128`, ...; each record is a `tf.train.Example` with
`image/encoded` (JPEG, sometimes PNG), `image/class/label` (1..N, 0 is the
background class) and optional bounding boxes `image/object/bbox/*`.
`build_imagenet_tfrecords.py` writes such directories from image folders.

`build_dataset` reads a split into batches of preprocessed images (see
`preprocessing`). Bad records never hang the pipeline. By default the first
one stops it with an `InvalidArgumentError` whose message names the TFRecord
file, the record's index in it and what is wrong. With `skip_corrupt=True`
bad records are dropped, logged and counted in the caller's
`SkippedRecordCounter`, which the caller reports.

Everything here builds ordinary tf.data graphs, so it works both eagerly and in
graph mode (`tf.compat.v1.data.make_one_shot_iterator` in a Session).
"""

import json
import re
import threading
import time

from absl import logging
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import preprocessing
from runtime import errors

TRAIN_SPLIT = 'train'
VALIDATION_SPLIT = 'validation'
LABELS_FILENAME = 'labels.txt'
# build_imagenet_tfrecords writes it last; it lists the shards it wrote and
# their example counts.
COMPLETION_FILENAME = 'conversion_complete.json'

DEFAULT_SHUFFLE_BUFFER = 10000
# Records read at once from different shards; more files than cores keeps
# reads from stalling on one file's I/O.
_READ_CYCLE_LENGTH = 16
_READ_BUFFER_BYTES = 8 * 1024 * 1024
# Bad records logged individually before only the count is kept.
_MAX_LOGGED_SKIPS = 20
# Seconds between progress lines while counting records.
_COUNT_PROGRESS_INTERVAL = 10.0

_CONVERTER_HINT = ('build them with build_imagenet_tfrecords --image_dir '
                   'IMAGE_FOLDER --output_dir {dataset_dir}')


class DatasetError(errors.UserError, ValueError):
  """A dataset directory cannot be used; the message says how to fix it."""


class SkippedRecordCounter(object):
  """Thread-safe tally of the records a `skip_corrupt=True` pipeline dropped.

  tf.data calls `add` from its worker threads (through `tf.py_function`), so
  the count is exact even with parallel preprocessing.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._count = 0

  @property
  def count(self):
    """Number of records skipped since creation or the last `reset`."""
    with self._lock:
      return self._count

  def add(self, description):
    """Counts one skipped record and logs the first few.

    Args:
      description: what was skipped and why, e.g. "FILE record 3: missing
        image/class/label".
    """
    with self._lock:
      self._count += 1
      count = self._count
    if count <= _MAX_LOGGED_SKIPS:
      logging.warning('Skipping corrupt record: %s', description)
    elif count == _MAX_LOGGED_SKIPS + 1:
      logging.warning('More corrupt records skipped; only the count is kept.')

  def reset(self):
    """Sets the count back to zero."""
    with self._lock:
      self._count = 0


def list_split_files(dataset_dir, split):
  """Lists the TFRecord shards of one split.

  Args:
    dataset_dir: directory holding `{split}-*-of-*` files (local or any
      filesystem `tf.io.gfile` knows, such as gs://).
    split: split name, usually 'train' or 'validation'.

  Returns:
    Sorted list of file paths.

  Raises:
    DatasetError: the directory is missing, not a directory, empty, has no
      files for the split, or lacks some shards of a `-of-N` set.
  """
  if not dataset_dir:
    raise DatasetError(
        'no dataset directory given; pass --dataset_dir pointing at the folder '
        'with train-*-of-* and validation-*-of-* TFRecords')
  hint = _CONVERTER_HINT.format(dataset_dir=dataset_dir)
  if not tf.io.gfile.exists(dataset_dir):
    raise DatasetError('dataset directory %s does not exist; check '
                       '--dataset_dir or %s' % (dataset_dir, hint))
  if not tf.io.gfile.isdir(dataset_dir):
    raise DatasetError('dataset directory %s is a file, not a directory; point '
                       '--dataset_dir at the folder holding the TFRecords' %
                       dataset_dir)
  if not tf.io.gfile.listdir(dataset_dir):
    raise DatasetError('dataset directory %s is empty; %s' %
                       (dataset_dir, hint))
  pattern = '%s-*-of-*' % split
  files = sorted(tf.io.gfile.glob(_join(dataset_dir, pattern)))
  if not files:
    raise DatasetError('no %s files in %s; %s' % (pattern, dataset_dir, hint))
  _check_shard_set_complete(files, dataset_dir, split)
  return files


def _join(directory, name):
  return directory.rstrip('/') + '/' + name


def _check_shard_set_complete(files, dataset_dir, split):
  """Catches half-copied or interrupted conversions (e.g. 3 of 4 shards)."""
  shard_name = re.compile(r'^%s-(\d+)-of-(\d+)$' % re.escape(split))
  totals = set()
  for path in files:
    match = shard_name.match(path.rsplit('/', 1)[-1])
    if not match:
      return  # Not the standard naming: nothing to check against.
    totals.add(int(match.group(2)))
  if len(totals) > 1:
    raise DatasetError(
        '%s has %s shards from different conversions (-of-%s); delete the '
        'stale ones or rebuild with build_imagenet_tfrecords' %
        (dataset_dir, split, ', -of-'.join(str(t) for t in sorted(totals))))
  expected = totals.pop()
  if len(files) != expected:
    raise DatasetError(
        'found %d of %d %s shards in %s; the conversion or copy was '
        'interrupted, re-run build_imagenet_tfrecords or copy the missing '
        'shards' % (len(files), expected, split, dataset_dir))


def count_records(files):
  """Counts the records in TFRecord files (reads them through).

  Works with eager execution on or off.

  Args:
    files: iterable of TFRecord paths.

  Returns:
    Total number of records.
  """
  return sum(1 for path in files
             for _ in tf.compat.v1.io.tf_record_iterator(path))


def num_examples(dataset_dir, split):
  """Returns the number of examples in a split.

  build_imagenet_tfrecords records the count in its completion marker; it is
  used when the marker lists exactly the split's shard files. Otherwise (a
  dataset written by other tools, such as TF-slim's) the records are read
  through and counted, with progress lines on stdout.

  Args:
    dataset_dir: directory holding the split's shards.
    split: split name, usually 'train' or 'validation'.

  Returns:
    Number of examples.

  Raises:
    DatasetError: as list_split_files.
  """
  files = list_split_files(dataset_dir, split)
  recorded = _recorded_num_examples(dataset_dir, split, files)
  if recorded is not None:
    return recorded
  print('Counting the %s records of %s (%d shards; no %s from '
        'build_imagenet_tfrecords records their number).' %
        (split, dataset_dir, len(files), COMPLETION_FILENAME), flush=True)
  count, last_report = 0, time.time()
  for done, path in enumerate(files, start=1):
    count += count_records([path])
    if time.time() - last_report >= _COUNT_PROGRESS_INTERVAL:
      last_report = time.time()
      print('  %d records in %d of %d shards' % (count, done, len(files)),
            flush=True)
  print('Counted %d %s records.' % (count, split), flush=True)
  return count


def _recorded_num_examples(dataset_dir, split, files):
  """The converter's count for exactly these shard files, or None."""
  try:
    with tf.io.gfile.GFile(_join(dataset_dir, COMPLETION_FILENAME)) as marker:
      conversion = json.load(marker)
    # Older markers hold full paths, which go stale when a dataset moves.
    recorded_names = sorted(path.rsplit('/', 1)[-1]
                            for path in conversion['shard_files'][split])
    if recorded_names != [path.rsplit('/', 1)[-1] for path in files]:
      return None
    return int(conversion['split_counts'][split])
  except (tf.errors.NotFoundError, ValueError, KeyError, TypeError):
    return None


def read_labels_file(dataset_dir, filename=LABELS_FILENAME):
  """Reads the `label:class name` lines written beside the TFRecords.

  Args:
    dataset_dir: directory holding the labels file.
    filename: name of the labels file.

  Returns:
    Dict from integer label to class name.

  Raises:
    DatasetError: the file is missing or has a malformed line.
  """
  path = _join(dataset_dir, filename)
  if not tf.io.gfile.exists(path):
    raise DatasetError('no %s in %s; build_imagenet_tfrecords writes it, or '
                       'create it with one "label:class name" line per class' %
                       (filename, dataset_dir))
  labels = {}
  with tf.io.gfile.GFile(path, 'r') as labels_file:
    for line_number, line in enumerate(labels_file, start=1):
      line = line.rstrip('\n')
      if not line.strip():
        continue
      label, separator, name = line.partition(':')
      if not separator or not label.strip().isdigit():
        raise DatasetError('%s line %d is %r, expected "label:class name"' %
                           (path, line_number, line))
      labels[int(label)] = name
  return labels

_FEATURES = {
    # Defaults that no real record has, so missing keys are detectable.
    'image/encoded': tf.io.FixedLenFeature([], tf.string, default_value=''),
    'image/class/label': tf.io.FixedLenFeature([], tf.int64,
                                               default_value=-1),
    'image/object/bbox/ymin': tf.io.VarLenFeature(tf.float32),
    'image/object/bbox/xmin': tf.io.VarLenFeature(tf.float32),
    'image/object/bbox/ymax': tf.io.VarLenFeature(tf.float32),
    'image/object/bbox/xmax': tf.io.VarLenFeature(tf.float32),
}

# Outcome codes of `_parse_and_decode`, and what they mean for the user.
_OK, _NO_IMAGE, _NO_LABEL, _UNDECODABLE, _UNPARSEABLE = range(5)
_PROBLEMS = [
    '',
    'missing image/encoded',
    'missing image/class/label',
    'image/encoded is not a decodable JPEG/PNG/GIF/BMP image',
    'not a tf.train.Example with the expected feature types',
]


def _parse(serialized):
  """Parses a record into (image bytes, label, [N, 4] bboxes)."""
  features = tf.io.parse_single_example(serialized, _FEATURES)
  bboxes = tf.stack([
      tf.sparse.to_dense(features['image/object/bbox/' + side])
      for side in ('ymin', 'xmin', 'ymax', 'xmax')
  ], axis=1)
  return (features['image/encoded'], features['image/class/label'], bboxes)


def _attempt(function, inputs, fallback):
  """Runs `function(*inputs)`, returning `fallback` if any op in it fails.

  TensorFlow has no try/except inside a graph; a one-element dataset with
  `ignore_errors` is the graph-level equivalent and works inside tf.data
  functions, eagerly and in a v1 Session alike.

  Args:
    function: maps the `inputs` tensors to a tuple of tensors.
    inputs: tuple of tensors.
    fallback: tuple of tensors with the structure `function` returns.

  Returns:
    `function`'s results, or `fallback`.
  """
  attempt = tf.data.Dataset.from_tensors(inputs).map(function).ignore_errors()
  return attempt.concatenate(
      tf.data.Dataset.from_tensors(fallback)).take(1).get_single_element()


def _parse_and_decode(serialized, decode_crop_fn):
  """Parses a record and decodes its image crop, reporting what went wrong.

  Args:
    serialized: scalar string tensor, a serialized tf.train.Example.
    decode_crop_fn: maps (image bytes, [N, 4] bboxes) to a uint8 [h, w, 3]
      crop.

  Returns:
    (crop, label, outcome) where outcome is one of the `_OK`... codes; on any
    outcome but `_OK` the crop is a 1x1 placeholder.
  """
  placeholder_crop = tf.zeros([1, 1, 3], tf.uint8)

  def parse_and_decode(record):
    image_bytes, label, bboxes = _parse(record)

    def decode():
      return decode_crop_fn(image_bytes, bboxes), tf.constant(_OK)

    outcome = tf.where(tf.equal(image_bytes, ''), _NO_IMAGE,
                       tf.where(label < 0, _NO_LABEL, _OK))
    crop, outcome = tf.cond(tf.equal(outcome, _OK), decode,
                            lambda: (placeholder_crop, outcome))
    return crop, label, outcome

  failed = (placeholder_crop, tf.constant(-1, tf.int64),
            tf.constant(_UNDECODABLE))
  crop, label, outcome = _attempt(parse_and_decode, (serialized,), failed)

  def diagnose_failure():
    # Runs for bad records only: tells a malformed proto from a bad image.
    # The parse results are returned so that the parse cannot be pruned.
    parsed = _attempt(
        lambda record: (tf.constant(True),) + _parse(record), (serialized,),
        (tf.constant(False), tf.constant(''), tf.constant(-1, tf.int64),
         tf.zeros([0, 4])))[0]
    return tf.where(parsed, _UNDECODABLE, _UNPARSEABLE)

  outcome = tf.cond(tf.equal(outcome, _UNDECODABLE), diagnose_failure,
                    lambda: outcome)
  return crop, label, outcome


def _read_records(files, is_training, seed):
  """Reads all records of `files` as (serialized, file path, index in file).

  Every record carries its file and position so that errors can name them.

  Args:
    files: list of TFRecord paths.
    is_training: read files in a random, reshuffled-every-epoch order and,
      unless `seed` is set, let whichever file is ready first deliver (faster,
      not reproducible).
    seed: Python int seed of the file order, or None.

  Returns:
    A tf.data.Dataset of (string, string, int64) scalars.
  """
  file_paths = tf.data.Dataset.from_tensor_slices(files)
  if is_training:
    file_paths = file_paths.shuffle(len(files), seed=seed,
                                    reshuffle_each_iteration=True)

  def read_file(path):
    records = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES)
    return records.enumerate().map(lambda index, record: (record, path, index))

  return file_paths.interleave(
      read_file,
      cycle_length=min(len(files), _READ_CYCLE_LENGTH),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=not is_training or seed is not None)


def _make_load_fn(image_size, is_training, skip_corrupt, skip_counter, seed):
  """Returns the tf.data map function turning a record into (image, label).

  The function takes (position in the pipeline, record, file path, index in
  the file).

  Args:
    image_size: output height and width.
    is_training: training or evaluation preprocessing.
    skip_corrupt: return a third element, False for bad records (which are
      counted in `skip_counter`), instead of failing on them.
    skip_counter: SkippedRecordCounter for bad records.
    seed: Python int seed of the training distortions, or None.

  Returns:
    The map function, returning (image, label), or (image, label, keep) with
    skip_corrupt.
  """

  def load(position, record, path, index):
    if is_training:
      crop_seed, distortion_seed = preprocessing.image_seeds(seed, position)

      def decode_crop(image_bytes, bboxes):
        return preprocessing.decode_train_crop(image_bytes, bboxes, crop_seed)
    else:

      def decode_crop(image_bytes, unused_bboxes):
        return preprocessing.decode_eval_crop(image_bytes)

    crop, label, outcome = _parse_and_decode(record, decode_crop)
    if is_training:
      image = preprocessing.finish_train_image(crop, image_size, True,
                                               distortion_seed)
    else:
      image = preprocessing.finish_eval_image(crop, image_size)

    is_ok = tf.equal(outcome, _OK)
    description = tf.cond(
        is_ok, lambda: tf.constant(''),
        lambda: tf.strings.join([
            path, ' record ', tf.strings.as_string(index), ': ',
            tf.gather(_PROBLEMS, outcome)]))
    if skip_corrupt:

      def count_skip(description_tensor):
        skip_counter.add(description_tensor.numpy().decode('utf-8', 'replace'))
        return False

      keep = tf.cond(
          is_ok, lambda: tf.constant(True),
          lambda: tf.py_function(count_skip, [description], Tout=tf.bool))
      return image, label, keep

    check = tf.debugging.Assert(is_ok, [tf.strings.join([
        description, ' (rebuild this file, or skip bad records with '
        '--skip_corrupt_records, i.e. skip_corrupt=True)'])])
    with tf.control_dependencies([check]):
      return tf.identity(image), tf.identity(label)

  return load


def build_dataset(dataset_dir, split, batch_size, image_size, is_training,
                  num_epochs=None, skip_corrupt=False, drop_remainder=None,
                  shuffle_buffer=DEFAULT_SHUFFLE_BUFFER,
                  skip_counter=None, seed=None):
  """Builds the (images, labels) input pipeline of one split.

  Training shuffles files and records, repeats, distorts and drops the last
  partial batch; evaluation reads in a fixed order, once, and keeps the last
  partial batch so that every example is counted exactly once.

  Args:
    dataset_dir: directory with `{split}-*-of-*` TFRecord files.
    split: 'train' or 'validation' (or any split name the files use).
    batch_size: examples per batch.
    image_size: output height and width.
    is_training: training (random crops, shuffling) or evaluation pipeline.
    num_epochs: passes over the data; None means forever when training and
      once when evaluating.
    skip_corrupt: drop records that lack the image or label or whose image
      does not decode, counting them in `skip_counter`, instead of failing
      with an error that names the file and record.
    drop_remainder: drop the final partial batch; None means True when
      training (static batch size) and False when evaluating.
    shuffle_buffer: records held for shuffling when training (each is an
      encoded image, around 110 KB for ImageNet).
    skip_counter: the caller's SkippedRecordCounter, in which skip_corrupt
      counts the records it drops; required with skip_corrupt.
    seed: a Python int makes the training pipeline reproducible: the same
      file and record order and the same distortions on every run (at some
      cost in speed); None draws them afresh.

  Returns:
    tf.data.Dataset of (float32 images [B, image_size, image_size, 3] in
    [-1, 1], int64 labels [B]).

  Raises:
    DatasetError: the dataset directory or split files are missing.
    ValueError: batch_size, image_size or num_epochs is not positive, or
      skip_corrupt has no skip_counter.
  """
  for name, value in (('batch_size', batch_size), ('image_size', image_size)):
    if value <= 0:
      raise ValueError('%s must be positive, got %r' % (name, value))
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError('num_epochs must be positive or None, got %r' %
                     num_epochs)
  if skip_corrupt and skip_counter is None:
    raise ValueError('skip_corrupt needs a skip_counter, the caller\'s count '
                     'of the records it drops')
  files = list_split_files(dataset_dir, split)
  if num_epochs is None and not is_training:
    num_epochs = 1
  if drop_remainder is None:
    drop_remainder = is_training

  records = _read_records(files, is_training, seed)
  if is_training:
    records = records.shuffle(shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
  records = records.repeat(num_epochs).enumerate()
  load = _make_load_fn(image_size, is_training, skip_corrupt, skip_counter,
                       seed)
  examples = records.map(
      lambda position, record: load(position, *record),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=not is_training or seed is not None)
  if skip_corrupt:
    examples = examples.filter(lambda image, label, keep: keep).map(
        lambda image, label, keep: (image, label))
  dataset = examples.batch(batch_size, drop_remainder=drop_remainder)
  return dataset.prefetch(tf.data.AUTOTUNE)
