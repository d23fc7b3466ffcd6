"""Input pipeline for ImageNet-format TFRecords as the TF-slim tools write them.

A dataset directory holds sharded files `train-00000-of-01024`, ... and
`validation-00000-of-00128`, ...; each record is a `tf.train.Example` with
`image/encoded` (JPEG, sometimes PNG), `image/class/label` (1..N, 0 is the
background class) and optional bounding boxes `image/object/bbox/*`.
`build_imagenet_tfrecords.py` writes such directories from image folders.

Preprocessing follows Inception: training takes a random crop that covers at
least 10% of a bounding box, resizes it, flips it and distorts its colours;
evaluation crops the central 87.5% and resizes. Both resize as slim did,
with TF1's bilinear resize (no half-pixel centres), and map pixels to
[-1, 1].

Bad records never hang the pipeline. By default the first one stops it with an
`InvalidArgumentError` whose message names the TFRecord file, the record's
index in it and what is wrong. With `skip_corrupt=True` bad records are
dropped, logged and counted in a `SkippedRecordCounter` (by default the
module's `skipped_records`) that the caller can report.

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

from runtime import errors

tf1 = tf.compat.v1

TRAIN_SPLIT = 'train'
VALIDATION_SPLIT = 'validation'
LABELS_FILENAME = 'labels.txt'
# build_imagenet_tfrecords writes it last; it lists the shards it wrote and
# their example counts.
COMPLETION_FILENAME = 'conversion_complete.json'

# Inception's crop sampling parameters.
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (3. / 4., 4. / 3.)
AREA_RANGE = (0.05, 1.0)
MAX_CROP_ATTEMPTS = 100
EVAL_CENTRAL_FRACTION = 0.875

# The resize methods slim's training picks from when not in fast mode, in
# its order.
_TRAIN_RESIZE_METHODS = (tf1.image.ResizeMethod.BILINEAR,
                         tf1.image.ResizeMethod.NEAREST_NEIGHBOR,
                         tf1.image.ResizeMethod.BICUBIC,
                         tf1.image.ResizeMethod.AREA)

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


skipped_records = SkippedRecordCounter()


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


def _to_unit_range(image):
  """Maps a float image in [0, 1] to [-1, 1] (same as (x/255 - 0.5) * 2)."""
  return (image - 0.5) * 2.0


def _decode_crop(image_bytes, crop_window_fn):
  """Decodes an image to RGB uint8, keeping only a window of it.

  JPEGs go through the fused `decode_and_crop_jpeg`, which skips decoding most
  of what the crop throws away; other formats (PNG, GIF, BMP) are decoded
  whole and then cropped.

  Args:
    image_bytes: scalar string tensor with an encoded image.
    crop_window_fn: maps the image's [height, width, channels] int32 shape to
      an int32 [offset_y, offset_x, height, width] window.

  Returns:
    uint8 tensor [crop_height, crop_width, 3].
  """

  def decode_jpeg():
    window = crop_window_fn(tf.image.extract_jpeg_shape(image_bytes))
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def decode_other():
    image = tf.io.decode_image(image_bytes, channels=3,
                               expand_animations=False)
    window = crop_window_fn(tf.shape(image))
    return tf.slice(image, [window[0], window[1], 0],
                    [window[2], window[3], 3])

  return tf.cond(tf.io.is_jpeg(image_bytes), decode_jpeg, decode_other)


def _central_crop_window(shape, central_fraction):
  """The window `tf.image.central_crop` would keep, as [y, x, h, w]."""
  height, width = shape[0], shape[1]
  offset_y = tf.cast(
      (tf.cast(height, tf.float64) * (1 - central_fraction)) / 2, tf.int32)
  offset_x = tf.cast(
      (tf.cast(width, tf.float64) * (1 - central_fraction)) / 2, tf.int32)
  return tf.stack(
      [offset_y, offset_x, height - 2 * offset_y, width - 2 * offset_x])


def _distorted_crop_window_fn(bboxes, seed):
  """Returns a crop_window_fn sampling an Inception-style random crop.

  The sampling is stateless (driven by `seed`) so that it gives fresh crops
  even where tf.data re-instantiates the function for every record.

  Args:
    bboxes: float [N, 4] boxes (ymin, xmin, ymax, xmax) in [0, 1]; N may be 0,
      in which case the whole image is the object.
    seed: int32 [2] seed for the crop sampling.
  """

  def crop_window(shape):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.reshape(bboxes, [1, -1, 4]),
        seed=seed,
        min_object_covered=MIN_OBJECT_COVERED,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=AREA_RANGE,
        max_attempts=MAX_CROP_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])

  return crop_window


def _distort_color(image, fast_mode, seed):
  """Randomly distorts the colours of a float image in [0, 1], Inception-style.

  The order of the adjustments matters (they do not commute), so one of a few
  orderings is picked at random for every image.

  Args:
    image: float32 [height, width, 3] in [0, 1].
    fast_mode: only brightness and saturation (two orderings) when True; also
      hue and contrast (four orderings) when False.
    seed: int32 [2] seed of the image's distortions.

  Returns:
    The distorted image, clipped to [0, 1].
  """
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=5))

  def brightness(x):
    return tf.image.stateless_random_brightness(x, 32. / 255., seeds[0])

  def saturation(x):
    return tf.image.stateless_random_saturation(x, 0.5, 1.5, seeds[1])

  def hue(x):
    return tf.image.stateless_random_hue(x, 0.2, seeds[2])

  def contrast(x):
    return tf.image.stateless_random_contrast(x, 0.5, 1.5, seeds[3])

  if fast_mode:
    orderings = [(brightness, saturation), (saturation, brightness)]
  else:
    orderings = [(brightness, saturation, hue, contrast),
                 (saturation, brightness, contrast, hue),
                 (contrast, hue, brightness, saturation),
                 (hue, saturation, contrast, brightness)]

  def apply_ordering(ordering):
    def apply():
      distorted = image
      for adjust in ordering:
        distorted = adjust(distorted)
      return distorted
    return apply

  choice = tf.random.stateless_uniform([], seeds[4], maxval=len(orderings),
                                       dtype=tf.int32)
  distorted = tf.switch_case(choice, [apply_ordering(o) for o in orderings])
  return tf.clip_by_value(distorted, 0.0, 1.0)


def _resize(image, image_size, method=tf1.image.ResizeMethod.BILINEAR):
  """Resizes a float image to a square as slim did, with TF1's resize.

  TF1's resize (`align_corners=False`) maps output pixel i to input
  coordinate i * in / out, without TF2's half-pixel centres: published
  accuracies were measured with these pixels.

  Args:
    image: float32 [height, width, 3].
    image_size: output height and width.
    method: a tf.compat.v1.image.ResizeMethod.

  Returns:
    float32 [image_size, image_size, 3].
  """
  return tf1.image.resize(image, [image_size, image_size], method=method,
                          align_corners=False)


def _finish_train_image(crop, image_size, fast_mode, seed):
  """Resizes, flips and colour-distorts a decoded uint8 crop.

  Like slim, the fast mode resizes bilinearly; otherwise each image gets one
  of TF1's four resize methods at random.

  Args:
    crop: uint8 [height, width, 3].
    image_size: output height and width.
    fast_mode: see `_distort_color`.
    seed: int32 [2] seed of the resize method, the flip and the colour
      distortions.
  """
  resize_seed, flip_seed, color_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=3))
  image = tf.image.convert_image_dtype(crop, tf.float32)
  if fast_mode:
    image = _resize(image, image_size)
  else:
    choice = tf.random.stateless_uniform(
        [], resize_seed, maxval=len(_TRAIN_RESIZE_METHODS), dtype=tf.int32)
    image = tf.switch_case(choice, [
        lambda method=method: _resize(image, image_size, method)
        for method in _TRAIN_RESIZE_METHODS])
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image = _distort_color(image, fast_mode, color_seed)
  return _to_unit_range(image)


def _finish_eval_image(crop, image_size):
  """Resizes a decoded uint8 crop and maps it to [-1, 1]."""
  image = tf.image.convert_image_dtype(crop, tf.float32)
  return _to_unit_range(_resize(image, image_size))


def _image_seeds(seed=None, index=None):
  """The (crop, distortion) seeds of one training image, int32 [2] each.

  Every random choice of the training preprocessing is a stateless op driven
  by these seeds: drawn afresh for each image when `seed` is None, and a
  function of (`seed`, `index`) otherwise, so that a seeded pipeline gives
  the same images however tf.data schedules its parallel calls.

  Args:
    seed: the pipeline's Python int seed, or None.
    index: the image's int64 position in the pipeline (with `seed`).
  """
  if seed is None:
    image_seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
  else:
    image_seed = tf.stack([tf.constant(seed, tf.int64),
                           tf.cast(index, tf.int64)])
  return tf.unstack(tf.random.experimental.stateless_split(image_seed, num=2))


def preprocess_for_train(image_bytes, bboxes, image_size, fast_mode=True):
  """Inception-style training preprocessing of one encoded image.

  Args:
    image_bytes: scalar string tensor, an encoded JPEG (or PNG, GIF, BMP).
    bboxes: float tensor [N, 4] of (ymin, xmin, ymax, xmax) boxes in [0, 1]
      around the object; N may be 0, or None, to use the whole image.
    image_size: output height and width.
    fast_mode: distort only brightness and saturation (as slim's MobileNet
      training did) instead of also hue and contrast.

  Returns:
    float32 tensor [image_size, image_size, 3] with values in [-1, 1].
  """
  if bboxes is None:
    bboxes = tf.zeros([0, 4], tf.float32)
  crop_seed, distortion_seed = _image_seeds()
  crop = _decode_crop(image_bytes,
                      _distorted_crop_window_fn(bboxes, crop_seed))
  return _finish_train_image(crop, image_size, fast_mode, distortion_seed)


def preprocess_for_eval(image_bytes, image_size,
                        central_fraction=EVAL_CENTRAL_FRACTION):
  """Inception-style evaluation preprocessing of one encoded image.

  Args:
    image_bytes: scalar string tensor, an encoded JPEG (or PNG, GIF, BMP).
    image_size: output height and width.
    central_fraction: fraction of each side kept by the central crop.

  Returns:
    float32 tensor [image_size, image_size, 3] with values in [-1, 1].
  """
  crop = _decode_crop(
      image_bytes, lambda shape: _central_crop_window(shape, central_fraction))
  return _finish_eval_image(crop, image_size)


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
  """

  def load(position, record, path, index):
    if is_training:
      crop_seed, distortion_seed = _image_seeds(seed, position)

      def decode_crop(image_bytes, bboxes):
        return _decode_crop(image_bytes,
                            _distorted_crop_window_fn(bboxes, crop_seed))
    else:

      def decode_crop(image_bytes, unused_bboxes):
        return _decode_crop(
            image_bytes,
            lambda shape: _central_crop_window(shape, EVAL_CENTRAL_FRACTION))

    crop, label, outcome = _parse_and_decode(record, decode_crop)
    if is_training:
      image = _finish_train_image(crop, image_size, True, distortion_seed)
    else:
      image = _finish_eval_image(crop, image_size)

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
    skip_counter: SkippedRecordCounter for skipped records; defaults to the
      module's `skipped_records`.
    seed: a Python int makes the training pipeline reproducible: the same
      file and record order and the same distortions on every run (at some
      cost in speed); None draws them afresh.

  Returns:
    tf.data.Dataset of (float32 images [B, image_size, image_size, 3] in
    [-1, 1], int64 labels [B]).

  Raises:
    DatasetError: the dataset directory or split files are missing.
    ValueError: batch_size, image_size or num_epochs is not positive.
  """
  for name, value in (('batch_size', batch_size), ('image_size', image_size)):
    if value <= 0:
      raise ValueError('%s must be positive, got %r' % (name, value))
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError('num_epochs must be positive or None, got %r' %
                     num_epochs)
  files = list_split_files(dataset_dir, split)
  if num_epochs is None and not is_training:
    num_epochs = 1
  if drop_remainder is None:
    drop_remainder = is_training
  if skip_counter is None:
    skip_counter = skipped_records

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
