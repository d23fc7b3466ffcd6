r"""Converts image folders into ImageNet-format sharded TFRecords.

Writes `train-00000-of-0000N`, ..., `validation-00000-of-0000M`, ... and
`labels.txt` into --output_dir, in the format `data/records.py` reads (and the
TF-slim ImageNet tools write). Sources:

  # A folder with one sub-folder of JPEG/PNG images per class; 10% of each
  # class is held out for validation (or give --validation_dir with the same
  # class sub-folders).
  build_imagenet_tfrecords --image_dir=photos/ --output_dir=data/

  # The official ImageNet layout: train/ has synset folders (n01440764/...),
  # val/ has flat JPEGs; the labels file maps them to synsets, either one
  # synset per line in sorted-filename order, or "filename synset" per line.
  build_imagenet_tfrecords --image_dir=train/ --validation_dir=val/ \
      --imagenet_validation_labels=val_labels.txt --output_dir=data/

  # A small sample dataset: scikit-learn's 1797 handwritten digits, coloured.
  build_imagenet_tfrecords --sample_digits --output_dir=/tmp/sample_digits

Classes are numbered 1..N in sorted folder-name order; 0 is left for the
background class, so models are built with num_classes = N + 1.

Images that are not RGB JPEGs (PNG, GIF, BMP, greyscale or CMYK JPEG) are
re-encoded as RGB JPEG. Unreadable images are skipped: each is reported with
its path and the total is printed at the end.

A finished conversion leaves `conversion_complete.json`, which lists the
shards with their example counts (the trainer reads its epoch size there);
re-running with the same inputs (paths, labels, file sizes and modification
times) and flags finds it and exits at once. Anything else rebuilds, without
deleting first: the new dataset is written into the hidden staging directory
`--output_dir/.build_imagenet_tfrecords-staging` and only when it is complete
are the old files moved out and the new ones moved in. Until then the previous
dataset stays as it was, whatever stops the run (Ctrl-C, SIGTERM, SIGKILL, a
full disk); the next run discards an unfinished staging directory, or finishes
a move that was under way. Shards and labels.txt that no marker of ours lists
(another tool's conversion) are only replaced with --overwrite.

For tests, BUILD_IMAGENET_TFRECORDS_TEST_SIGNAL=NAME:EVENT:N makes the process
send itself signal SIGNAME when EVENT happens for the N-th time: `staged` (a
shard is complete in the staging directory), `committed` (the staged marker is
written) or `moved` (one file renamed while the new dataset is moved in).
"""

import collections
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import records

FLAGS = flags.FLAGS

flags.DEFINE_string(
    'image_dir', None,
    'Folder with one sub-folder of images per class (for ImageNet, the train '
    'folder of synset sub-folders).')
flags.DEFINE_string(
    'validation_dir', None,
    'Validation images: a folder with the same class sub-folders as '
    '--image_dir, or with --imagenet_validation_labels a flat folder of '
    'images. Without it, --validation_fraction of --image_dir is held out.')
flags.DEFINE_string(
    'imagenet_validation_labels', None,
    'Labels of the flat --validation_dir images: one synset per line in '
    'sorted-filename order (as in ILSVRC2012 devkit-derived lists), or '
    '"filename synset" (space or comma separated) per line.')
flags.DEFINE_string(
    'imagenet_metadata', None,
    'Optional "synset<TAB>human readable name" file; its names go into '
    'labels.txt and image/class/text instead of the bare synsets.')
flags.DEFINE_string('output_dir', None,
                    'Where the TFRecord shards and labels.txt are written.')
flags.DEFINE_integer(
    'train_shards', 0,
    'Number of train shards; 0 picks about one shard per 1024 images (at '
    'most 1024 shards).')
flags.DEFINE_integer(
    'validation_shards', 0,
    'Number of validation shards; 0 picks about one shard per 1024 images.')
flags.DEFINE_float(
    'validation_fraction', 0.1,
    'Fraction of each class held out for validation when there is no '
    '--validation_dir (0.2 with --sample_digits).')
flags.DEFINE_integer('num_workers', os.cpu_count() or 1,
                     'Images decoded and re-encoded in parallel.')
flags.DEFINE_integer('seed', 0,
                     'Seed for the train/validation split, the order of '
                     'examples in the shards and the sample digits colours.')
flags.DEFINE_bool(
    'overwrite', False,
    'Replace train-*/validation-* shards and labels.txt in --output_dir that '
    'this converter did not write (e.g. an existing TF-slim conversion). '
    'Without it such files are left alone and the run stops. Either way the '
    'old files stay until the new dataset is complete.')
flags.DEFINE_bool(
    'sample_digits', False,
    'Build a small sample dataset from scikit-learn\'s handwritten digits '
    '(1797 images, 10 classes, 64x64 RGB) instead of converting --image_dir.')

TRAIN_SPLIT = records.TRAIN_SPLIT
VALIDATION_SPLIT = records.VALIDATION_SPLIT
LABELS_FILENAME = records.LABELS_FILENAME
COMPLETION_FILENAME = records.COMPLETION_FILENAME
# Inside --output_dir, so that moving files in and out is a rename on one
# filesystem; the leading dot keeps it out of `{split}-*-of-*` globs.
STAGING_DIRNAME = '.build_imagenet_tfrecords-staging'
# In the staging directory: where the replaced files wait until the new
# dataset is in place.
PREVIOUS_DIRNAME = 'previous'
TEST_SIGNAL_ENV = 'BUILD_IMAGENET_TFRECORDS_TEST_SIGNAL'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')
# Roughly 100 MB shards for ImageNet-sized JPEGs.
IMAGES_PER_AUTO_SHARD = 1024
MAX_AUTO_SHARDS = 1024
REENCODE_JPEG_QUALITY = 95
DIGITS_IMAGE_SIZE = 64
DIGITS_VALIDATION_FRACTION = 0.2
# Unreadable images reported one by one before only the count is kept.
_MAX_REPORTED_SKIPS = 20


class ConversionError(Exception):
  """The inputs cannot be converted; the message says what to fix."""


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


def _raise_interrupted(signal_number, unused_frame):
  raise Interrupted(signal_number)


_events_seen = collections.Counter()


def _reached(event):
  """Marks a point of the conversion; see TEST_SIGNAL_ENV in the docstring."""
  _events_seen[event] += 1
  spec = os.environ.get(TEST_SIGNAL_ENV)
  if spec:
    signal_name, wanted_event, count = spec.split(':')
    if wanted_event == event and int(count) == _events_seen[event]:
      # Delivered to this thread before raise_signal returns.
      signal.raise_signal(signal.Signals['SIG' + signal_name])


ImageSource = collections.namedtuple('ImageSource',
                                     ['path', 'label', 'class_name'])


class ConversionResult(
    collections.namedtuple('ConversionResult', [
        'output_dir', 'class_names', 'split_counts', 'shard_files',
        'skipped', 'already_complete'
    ])):
  """What a conversion produced.

  Attributes:
    output_dir: directory holding the shards and labels.txt.
    class_names: class names; class_names[i] has label i + 1.
    split_counts: dict split name -> number of examples written.
    shard_files: dict split name -> list of shard paths.
    skipped: list of (image path, reason) for images that could not be read.
    already_complete: True when an identical earlier conversion was found and
      nothing was written.
  """

  @property
  def num_classes(self):
    """The model's num_classes: one per class plus the background class 0."""
    return len(self.class_names) + 1


def _is_image_file(name):
  return (not name.startswith('.') and
          name.lower().endswith(IMAGE_EXTENSIONS))


def _join(directory, name):
  return os.path.join(directory, name)


def _require_dir(path, what):
  if not tf.io.gfile.exists(path):
    raise ConversionError('%s %s does not exist' % (what, path))
  if not tf.io.gfile.isdir(path):
    raise ConversionError('%s %s is a file, not a directory' % (what, path))


def find_class_images(image_dir):
  """Lists the images of a folder with one sub-folder per class.

  Args:
    image_dir: the folder.

  Returns:
    (class_names, images_by_class): sorted class names and a dict class name
    -> sorted list of image paths.

  Raises:
    ConversionError: the folder is missing, has no class sub-folders or no
      images in them.
  """
  _require_dir(image_dir, '--image_dir')
  entries = sorted(tf.io.gfile.listdir(image_dir))
  class_names = [
      entry.rstrip('/') for entry in entries
      if not entry.startswith('.') and
      tf.io.gfile.isdir(_join(image_dir, entry))
  ]
  if not class_names:
    raise ConversionError(
        'no class sub-folders in %s; put the images of each class in their '
        'own sub-folder, e.g. %s' % (image_dir, _join(image_dir, 'cat/1.jpg')))
  loose_images = [entry for entry in entries if _is_image_file(entry)]
  if loose_images:
    logging.warning('Ignoring %d images directly in %s (e.g. %s); only images '
                    'in class sub-folders are used.', len(loose_images),
                    image_dir, loose_images[0])
  images_by_class = {}
  for class_name in class_names:
    class_dir = _join(image_dir, class_name)
    images_by_class[class_name] = sorted(
        _join(class_dir, name)
        for name in tf.io.gfile.listdir(class_dir)
        if _is_image_file(name))
    if not images_by_class[class_name]:
      logging.warning('Class folder %s has no images; its label is kept.',
                      class_dir)
  if not any(images_by_class.values()):
    raise ConversionError(
        'no images (%s) in the class sub-folders of %s' %
        ('/'.join(IMAGE_EXTENSIONS), image_dir))
  return class_names, images_by_class


def split_by_class(images_by_class, class_names, validation_fraction, seed):
  """Holds out the same fraction of every class for validation.

  Args:
    images_by_class: dict class name -> list of image paths.
    class_names: sorted class names; the label of class_names[i] is i + 1.
    validation_fraction: fraction of each class (rounded) for validation.
    seed: random seed for which images are held out.

  Returns:
    (train, validation) lists of ImageSource.
  """
  rng = random.Random(seed)
  train, validation = [], []
  for label, class_name in enumerate(class_names, start=1):
    paths = list(images_by_class[class_name])
    rng.shuffle(paths)
    num_validation = int(round(len(paths) * validation_fraction))
    validation.extend(ImageSource(path, label, class_name)
                      for path in paths[:num_validation])
    train.extend(ImageSource(path, label, class_name)
                 for path in paths[num_validation:])
  return train, validation


def _labelled(images_by_class, class_names):
  return [ImageSource(path, label, class_name)
          for label, class_name in enumerate(class_names, start=1)
          for path in images_by_class[class_name]]


def read_imagenet_validation_labels(labels_path, image_names):
  """Maps flat validation image names to synsets.

  Args:
    labels_path: file with either one synset per line, in the order of the
      sorted image names, or "filename synset" per line (space, tab or comma
      separated; a header line without a synset-like second field is
      ignored).
    image_names: the image file names in the validation folder.

  Returns:
    Dict image name -> synset.

  Raises:
    ConversionError: the file is missing or does not match the images.
  """
  if not tf.io.gfile.exists(labels_path):
    raise ConversionError('--imagenet_validation_labels file %s does not '
                          'exist' % labels_path)
  with tf.io.gfile.GFile(labels_path, 'r') as labels_file:
    rows = [line.replace(',', ' ').split() for line in labels_file]
  rows = [row for row in rows if row]
  sorted_names = sorted(image_names)
  if all(len(row) == 1 for row in rows):
    if len(rows) != len(sorted_names):
      raise ConversionError(
          '%s has %d synsets but the validation folder has %d images; a '
          'one-synset-per-line file must list every image in sorted order' %
          (labels_path, len(rows), len(sorted_names)))
    return {name: row[0] for name, row in zip(sorted_names, rows)}
  synset_by_stem = {}
  for row in rows:
    if len(row) >= 2 and row[1].startswith('n') and row[1][1:].isdigit():
      synset_by_stem[os.path.splitext(row[0])[0]] = row[1]
  labels = {}
  for name in sorted_names:
    stem = os.path.splitext(name)[0]
    if stem not in synset_by_stem:
      raise ConversionError('%s has no synset for validation image %s' %
                            (labels_path, name))
    labels[name] = synset_by_stem[stem]
  return labels


def _read_imagenet_metadata(metadata_path):
  """Reads "synset<TAB>human name" lines into a dict."""
  if not tf.io.gfile.exists(metadata_path):
    raise ConversionError('--imagenet_metadata file %s does not exist' %
                          metadata_path)
  names = {}
  with tf.io.gfile.GFile(metadata_path, 'r') as metadata_file:
    for line in metadata_file:
      synset, _, name = line.rstrip('\n').partition('\t')
      if synset and name:
        names[synset] = name
  return names


class _ProgressBar(object):
  """A one-line progress bar on stderr (a line every 10 s when not a tty)."""

  def __init__(self, total, description, stream=None):
    self._total = max(total, 1)
    self._description = description
    self._stream = stream or sys.stderr
    self._is_tty = self._stream.isatty()
    self._min_interval = 0.2 if self._is_tty else 10.0
    self._start = time.time()
    self._last_draw = self._start

  def update(self, done, force=False):
    """Redraws the bar for `done` finished items if enough time has passed."""
    now = time.time()
    if not force and now - self._last_draw < self._min_interval:
      return
    self._last_draw = now
    elapsed = max(now - self._start, 1e-6)
    rate = done / elapsed
    remaining = (self._total - done) / rate if rate > 0 else 0
    width = 30
    filled = int(width * done / self._total)
    line = '%s [%s%s] %d/%d %3d%% %.0f images/s ETA %ds' % (
        self._description, '#' * filled, '.' * (width - filled), done,
        self._total, 100 * done // self._total, rate, remaining)
    if self._is_tty:
      self._stream.write('\r' + line)
    else:
      self._stream.write(line + '\n')
    self._stream.flush()

  def close(self, done):
    """Draws the final state and ends the line."""
    self.update(done, force=True)
    self.end_line()

  def end_line(self):
    """Ends the bar's line on a tty, so that what follows starts its own."""
    if self._is_tty:
      self._stream.write('\n')
      self._stream.flush()


def _bytes_feature(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _int64_feature(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _float_feature(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _read_as_rgb_jpeg(path):
  """Reads and validates an image file, returning it as an RGB JPEG.

  RGB JPEGs are kept byte for byte; anything else is decoded and re-encoded.
  Decoding every image (not just checking headers) guarantees that training
  never meets an undecodable record. Works eagerly and inside tf.data.

  Args:
    path: scalar string tensor, the image file.

  Returns:
    (jpeg bytes, height, width) tensors.
  """
  image_bytes = tf.io.read_file(path)
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  is_rgb_jpeg = tf.cond(
      tf.io.is_jpeg(image_bytes),
      lambda: tf.equal(tf.image.extract_jpeg_shape(image_bytes)[2], 3),
      lambda: tf.constant(False))
  jpeg_bytes = tf.cond(
      is_rgb_jpeg, lambda: image_bytes,
      lambda: tf.io.encode_jpeg(image, format='rgb',
                                quality=REENCODE_JPEG_QUALITY))
  shape = tf.shape(image)
  return jpeg_bytes, shape[0], shape[1]


def _failure_reason(path):
  """Says why `_read_as_rgb_jpeg` fails on an image, in one line."""
  try:
    _read_as_rgb_jpeg(tf.constant(path))
  except tf.errors.OpError as error:
    # Eager op errors wrap the useful sentence in graph-function plumbing.
    reason = re.sub(r'\{\{[^}]*\}\}|\[Op:\w+\]( name: \S*)?', '',
                    error.message)
    return reason.strip().splitlines()[0] if reason.strip() else repr(error)
  return 'failed inside tf.data but not when read alone'


def _make_example(source, jpeg_bytes, height, width):
  """Builds the tf.train.Example of one image, in the slim ImageNet format."""
  feature = {
      'image/encoded': _bytes_feature([jpeg_bytes]),
      'image/format': _bytes_feature([b'JPEG']),
      'image/colorspace': _bytes_feature([b'RGB']),
      'image/channels': _int64_feature([3]),
      'image/height': _int64_feature([height]),
      'image/width': _int64_feature([width]),
      'image/filename': _bytes_feature(
          [os.path.basename(source.path).encode()]),
      'image/class/label': _int64_feature([source.label]),
      'image/class/text': _bytes_feature([source.class_name.encode()]),
      # No boxes: preprocessing then treats the whole image as the object.
      'image/object/bbox/xmin': _float_feature([]),
      'image/object/bbox/ymin': _float_feature([]),
      'image/object/bbox/xmax': _float_feature([]),
      'image/object/bbox/ymax': _float_feature([]),
      'image/object/class/label': _int64_feature([]),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature))


def _shard_name(split, index, num_shards):
  return '%s-%05d-of-%05d' % (split, index, num_shards)


def _encoded_images(sources, num_workers):
  """Yields (index into sources, jpeg bytes, height, width), in order.

  Decoding and re-encoding run in a parallel tf.data map (C++ threads, free
  of the GIL); images that fail are dropped, so a gap in the indices marks an
  unreadable image.

  Args:
    sources: list of ImageSource.
    num_workers: images processed in parallel.
  """
  paths = tf.data.Dataset.from_tensor_slices([s.path for s in sources])
  encoded = paths.enumerate().map(
      lambda index, path: (index,) + _read_as_rgb_jpeg(path),
      num_parallel_calls=num_workers, deterministic=True).ignore_errors()
  for index, jpeg_bytes, height, width in encoded.prefetch(2 * num_workers):
    yield int(index), jpeg_bytes.numpy(), int(height), int(width)


class _ShardWriter(object):
  """Writes the shards of one split, each complete before it gets its name."""

  def __init__(self, directory, split, sources, num_shards):
    self._directory = directory
    self._split = split
    self._num_shards = num_shards
    bounds = np.linspace(0, len(sources), num_shards + 1).astype(int)
    # Shard index of every source.
    self._shard_of = np.repeat(np.arange(num_shards), np.diff(bounds))
    self._writer = None
    self._shard = -1
    self.shard_names = []

  def _temp_path(self, shard):
    # The leading dot keeps partial files out of `{split}-*-of-*` globs.
    return _join(self._directory,
                 '.tmp-' + _shard_name(self._split, shard, self._num_shards))

  def write(self, source_index, example):
    """Appends an example to the shard its source belongs to."""
    self.advance_to(self._shard_of[source_index])
    self._writer.write(example.SerializeToString())

  def advance_to(self, shard):
    """Finishes shards before `shard` (even empty ones) and opens it."""
    while self._shard < shard:
      self._finish_current()
      self._shard += 1
      self._writer = tf.io.TFRecordWriter(self._temp_path(self._shard))

  def close(self):
    """Finishes all remaining shards."""
    self.advance_to(self._num_shards - 1)
    self._finish_current()

  def _finish_current(self):
    if self._writer is None:
      return
    self._writer.close()
    self._writer = None
    name = _shard_name(self._split, self._shard, self._num_shards)
    tf.io.gfile.rename(self._temp_path(self._shard),
                       _join(self._directory, name), overwrite=True)
    self.shard_names.append(name)
    _reached('staged')


def _write_split(directory, split, sources, num_shards, num_workers, skipped,
                 on_image_done):
  """Writes the shards of one split.

  Args:
    directory: destination directory.
    split: split name.
    sources: ImageSources in the order they go into the shards.
    num_shards: number of shards.
    num_workers: images processed in parallel.
    skipped: list to which (path, reason) of unreadable images is appended.
    on_image_done: called after every image, written or skipped.

  Returns:
    (shard file names, number of examples written).
  """
  writer = _ShardWriter(directory, split, sources, num_shards)
  skipped_before = len(skipped)
  expected_index = 0
  for index, jpeg_bytes, height, width in _encoded_images(sources,
                                                          num_workers):
    for missing in range(expected_index, index):
      _skip(sources[missing].path, skipped)
      on_image_done()
    expected_index = index + 1
    writer.write(index, _make_example(sources[index], jpeg_bytes, height,
                                      width))
    on_image_done()
  for missing in range(expected_index, len(sources)):
    _skip(sources[missing].path, skipped)
    on_image_done()
  writer.close()
  return writer.shard_names, len(sources) - (len(skipped) - skipped_before)


def _skip(path, skipped):
  """Records an unreadable image in `skipped`, logging the first few."""
  reason = _failure_reason(path)
  skipped.append((path, reason))
  if len(skipped) <= _MAX_REPORTED_SKIPS:
    logging.warning('Skipping unreadable image %s: %s', path, reason)


def _auto_num_shards(num_images):
  return max(1, min(MAX_AUTO_SHARDS,
                    int(math.ceil(num_images / IMAGES_PER_AUTO_SHARD))))


def _write_text_atomically(path, text):
  temp_path = _join(os.path.dirname(path), '.tmp-' + os.path.basename(path))
  with tf.io.gfile.GFile(temp_path, 'w') as text_file:
    text_file.write(text)
  tf.io.gfile.rename(temp_path, path, overwrite=True)


def _read_marker(directory):
  """Returns the completion marker in directory as a dict, or None."""
  path = _join(directory, COMPLETION_FILENAME)
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
  for split in (TRAIN_SPLIT, VALIDATION_SPLIT):
    names.extend(sorted(
        path.rsplit('/', 1)[-1]
        for path in tf.io.gfile.glob(_join(directory, '%s-*-of-*' % split))))
  if tf.io.gfile.exists(_join(directory, LABELS_FILENAME)):
    names.append(LABELS_FILENAME)
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
  ours = set(_marker_shard_names(marker) + [LABELS_FILENAME]) if marker else ()
  foreign = [name for name in _dataset_files(output_dir) if name not in ours]
  if foreign and not overwrite:
    raise ConversionError(
        '%s holds %d dataset files that build_imagenet_tfrecords did not '
        'write (e.g. %s; no %s lists them); pass --overwrite to replace them '
        'or choose another --output_dir' %
        (output_dir, len(foreign), foreign[0], COMPLETION_FILENAME))


def _move(source_dir, target_dir, name):
  tf.io.gfile.rename(_join(source_dir, name), _join(target_dir, name))
  _reached('moved')


def _move_into_place(output_dir):
  """Replaces the dataset in output_dir with the staged, complete one.

  Every old file moves out (into the staging directory) before any new one
  moves in, and the marker comes last. So the shards of a split never mix
  two conversions: in between, readers find an incomplete shard set and
  refuse it. A run stopped in here is finished by the next one.

  Args:
    output_dir: the conversion's destination; its staging directory holds a
      complete conversion with its marker.

  Raises:
    Interrupted: with while_moving set.
  """
  staging_dir = _join(output_dir, STAGING_DIRNAME)
  previous_dir = _join(staging_dir, PREVIOUS_DIRNAME)
  new_names = (_marker_shard_names(_read_marker(staging_dir)) +
               [LABELS_FILENAME])
  waiting = [name for name in new_names
             if tf.io.gfile.exists(_join(staging_dir, name))]
  try:
    if len(waiting) == len(new_names):
      # Nothing has moved in yet, so every dataset file here is an old one.
      tf.io.gfile.makedirs(previous_dir)
      old_names = _dataset_files(output_dir)
      if tf.io.gfile.exists(_join(output_dir, COMPLETION_FILENAME)):
        old_names.insert(0, COMPLETION_FILENAME)
      for name in old_names:
        _move(output_dir, previous_dir, name)
    for name in waiting:
      _move(staging_dir, output_dir, name)
    _move(staging_dir, output_dir, COMPLETION_FILENAME)
    tf.io.gfile.rmtree(staging_dir)
  except Interrupted as interruption:
    interruption.while_moving = True
    raise


def _settle_staging(output_dir):
  """Finishes or discards what an interrupted run left in the staging dir."""
  staging_dir = _join(output_dir, STAGING_DIRNAME)
  if not tf.io.gfile.exists(staging_dir):
    return
  if tf.io.gfile.exists(_join(staging_dir, COMPLETION_FILENAME)):
    print('Finishing the move of the conversion an interrupted run completed '
          'into %s.' % output_dir, flush=True)
    _move_into_place(output_dir)
  else:
    print('Removing what an interrupted run left in %s.' % staging_dir,
          flush=True)
    tf.io.gfile.rmtree(staging_dir)


def _result_from_marker(output_dir, marker, already_complete):
  return ConversionResult(
      output_dir=output_dir,
      class_names=marker['class_names'],
      split_counts=marker['split_counts'],
      shard_files={
          split: [_join(output_dir, path.rsplit('/', 1)[-1])
                  for path in paths]
          for split, paths in marker['shard_files'].items()},
      skipped=[tuple(skip) for skip in marker['skipped']],
      already_complete=already_complete)


def _find_complete_conversion(output_dir, config):
  """Returns the ConversionResult of an identical finished run, or None."""
  previous = _read_marker(output_dir)
  if not previous or previous.get('config') != config:
    return None
  expected_names = _marker_shard_names(previous) + [LABELS_FILENAME]
  if not all(tf.io.gfile.exists(_join(output_dir, name))
             for name in expected_names):
    return None
  return _result_from_marker(output_dir, previous, already_complete=True)


def _file_signature(path):
  """Returns (size in bytes, modification time in ns) of a file."""
  if '://' in path:
    stat = tf.io.gfile.stat(path)
    return stat.length, stat.mtime_nsec
  # tf.io.gfile.stat truncates local modification times to whole seconds.
  stat = os.stat(path)
  return stat.st_size, stat.st_mtime_ns


def _input_fingerprint(splits):
  """A digest of which images go where and of their sizes and modification
  times, so that added, removed, relabelled or edited images force a rebuild.
  """
  digest = hashlib.sha256()
  for split in sorted(splits):
    for source in splits[split]:
      try:
        size, mtime = _file_signature(source.path)
      except (OSError, tf.errors.OpError) as error:
        raise ConversionError('cannot read image %s: %s' % (
            source.path, getattr(error, 'strerror', None) or error))
      digest.update(('%s\t%s\t%d\t%d\t%d\n' % (
          split, source.path, source.label, size, mtime)).encode())
  return digest.hexdigest()


def _write_dataset(output_dir, splits, class_names, shards, num_workers, seed,
                   config, overwrite, show_progress):
  """Writes shards, labels.txt and the completion marker, then swaps them in.

  Everything is written into the staging directory first; the files in
  output_dir are replaced only once the new dataset is complete.

  Args:
    output_dir: destination directory (created if needed).
    splits: dict split name -> list of ImageSource.
    class_names: sorted class names; class_names[i] has label i + 1.
    shards: dict split name -> requested number of shards (0 for automatic).
    num_workers: images decoded and re-encoded in parallel.
    seed: seed for the order of the examples in the shards.
    config: JSON-serializable description of the conversion, stored in the
      completion marker to recognise an identical re-run.
    overwrite: replace dataset files in output_dir that we did not write.
    show_progress: draw a progress bar on stderr.

  Returns:
    ConversionResult.

  Raises:
    ConversionError: none of the images could be read, or output_dir holds
      another tool's dataset files and overwrite is False.
  """
  _check_files_are_ours(output_dir, overwrite)
  staging_dir = _join(output_dir, STAGING_DIRNAME)
  tf.io.gfile.makedirs(staging_dir)
  try:
    marker = _write_staged(staging_dir, splits, class_names, shards,
                           num_workers, seed, config, show_progress)
  except BaseException:
    # Whatever stopped the run, the previous dataset is still in place.
    tf.io.gfile.rmtree(staging_dir)
    raise
  _reached('committed')
  _move_into_place(output_dir)
  return _result_from_marker(output_dir, marker, already_complete=False)


def _write_staged(staging_dir, splits, class_names, shards, num_workers, seed,
                  config, show_progress):
  """Writes a whole conversion into staging_dir, its marker last.

  Args:
    staging_dir: an empty directory.
    splits, class_names, shards, num_workers, seed, config, show_progress: as
      for _write_dataset.

  Returns:
    The completion marker, as a dict.

  Raises:
    ConversionError: none of the images could be read.
  """
  rng = random.Random(seed)
  total_images = sum(len(sources) for sources in splits.values())
  progress = _ProgressBar(total_images, 'Writing TFRecords')
  images_done = [0]

  def on_image_done():
    images_done[0] += 1
    if show_progress:
      progress.update(images_done[0])

  split_counts, shard_files, skipped = {}, {}, []
  for split, sources in sorted(splits.items()):
    split_counts[split], shard_files[split] = 0, []
    if not sources:
      continue
    # Classes must be mixed within and across shards for training.
    sources = list(sources)
    rng.shuffle(sources)
    num_shards = min(shards[split] or _auto_num_shards(len(sources)),
                     len(sources))
    try:
      shard_files[split], split_counts[split] = _write_split(
          staging_dir, split, sources, num_shards, num_workers, skipped,
          on_image_done)
    except BaseException:
      if show_progress:
        progress.end_line()
      raise
  if show_progress:
    progress.close(images_done[0])
  if len(skipped) > _MAX_REPORTED_SKIPS:
    logging.warning('%d unreadable images skipped in all (the first %d are '
                    'listed above).', len(skipped), _MAX_REPORTED_SKIPS)
  if not any(split_counts.values()):
    raise ConversionError(
        'none of the %d images could be read (e.g. %s: %s)' %
        (total_images, skipped[0][0], skipped[0][1]))

  _write_text_atomically(
      _join(staging_dir, LABELS_FILENAME),
      ''.join('%d:%s\n' % (label, name)
              for label, name in enumerate(class_names, start=1)))
  marker = {
      'config': config,
      'class_names': list(class_names),
      'split_counts': split_counts,
      'shard_files': shard_files,
      'skipped': skipped,
  }
  # Written last: its presence means every file above is complete.
  _write_text_atomically(_join(staging_dir, COMPLETION_FILENAME),
                         json.dumps(marker, indent=1, sort_keys=True))
  return marker


def convert_folder(image_dir, output_dir, validation_dir=None,
                   validation_fraction=0.1, imagenet_validation_labels=None,
                   imagenet_metadata=None, train_shards=0,
                   validation_shards=0, num_workers=None, seed=0,
                   overwrite=False, show_progress=True):
  """Converts class-folder images (or the ImageNet layout) into TFRecords.

  Args:
    image_dir: folder with one sub-folder of images per class.
    output_dir: where shards, labels.txt and the completion marker go.
    validation_dir: validation images, in class sub-folders like image_dir,
      or flat when imagenet_validation_labels is given. None holds out
      validation_fraction of image_dir instead.
    validation_fraction: fraction of each class held out when there is no
      validation_dir.
    imagenet_validation_labels: file mapping the flat validation_dir images
      to synsets (see read_imagenet_validation_labels).
    imagenet_metadata: optional "synset<TAB>name" file for readable names.
    train_shards: number of train shards; 0 for automatic.
    validation_shards: number of validation shards; 0 for automatic.
    num_workers: images decoded in parallel; None for one per CPU.
    seed: seed for the split and the order of examples.
    overwrite: replace shards and labels.txt in output_dir that no marker of
      ours lists.
    show_progress: draw a progress bar on stderr.

  Returns:
    ConversionResult.

  Raises:
    ConversionError: missing folders, no images, inconsistent arguments,
      another tool's dataset in output_dir without overwrite.
    Interrupted: SIGINT or SIGTERM (once main has installed the handlers).
  """
  if not 0.0 <= validation_fraction < 1.0:
    raise ConversionError('--validation_fraction must be in [0, 1), got %g' %
                          validation_fraction)
  if imagenet_validation_labels and not validation_dir:
    raise ConversionError('--imagenet_validation_labels needs --validation_dir '
                          '(the folder of validation images it labels)')
  folder_names, images_by_class = find_class_images(image_dir)
  readable_names = (_read_imagenet_metadata(imagenet_metadata)
                    if imagenet_metadata else {})
  if validation_dir is None:
    train, validation = split_by_class(images_by_class, folder_names,
                                       validation_fraction, seed)
  else:
    train = _labelled(images_by_class, folder_names)
    validation = _validation_sources(validation_dir, folder_names,
                                     imagenet_validation_labels)
    validation_fraction = None
  if readable_names:
    train, validation = [[
        source._replace(class_name=readable_names.get(source.class_name,
                                                      source.class_name))
        for source in sources] for sources in (train, validation)]
  class_names = [readable_names.get(name, name) for name in folder_names]
  splits = {TRAIN_SPLIT: train, VALIDATION_SPLIT: validation}
  config = {
      'source': 'folder',
      'image_dir': os.path.abspath(image_dir),
      'validation_dir': validation_dir and os.path.abspath(validation_dir),
      'validation_fraction': validation_fraction,
      'class_names': class_names,
      'train_shards': train_shards,
      'validation_shards': validation_shards,
      'seed': seed,
      'inputs': _input_fingerprint(splits),
  }
  _settle_staging(output_dir)
  previous = _find_complete_conversion(output_dir, config)
  if previous:
    return previous
  return _write_dataset(
      output_dir, splits, class_names,
      {TRAIN_SPLIT: train_shards, VALIDATION_SPLIT: validation_shards},
      num_workers or os.cpu_count() or 1, seed, config, overwrite,
      show_progress)


def _validation_sources(validation_dir, class_names, imagenet_labels_path):
  """Labels the images of --validation_dir (class folders or flat ImageNet)."""
  _require_dir(validation_dir, '--validation_dir')
  label_of = {name: label for label, name in enumerate(class_names, start=1)}
  if imagenet_labels_path:
    image_names = [name for name in tf.io.gfile.listdir(validation_dir)
                   if _is_image_file(name)]
    if not image_names:
      raise ConversionError('no images in --validation_dir %s' %
                            validation_dir)
    synsets = read_imagenet_validation_labels(imagenet_labels_path,
                                              image_names)
    unknown = sorted(set(synsets.values()) - set(label_of))
    if unknown:
      raise ConversionError(
          '%s names synsets with no folder in --image_dir (e.g. %s)' %
          (imagenet_labels_path, unknown[0]))
    return [ImageSource(_join(validation_dir, name), label_of[synset], synset)
            for name, synset in sorted(synsets.items())]
  validation_names, images_by_class = find_class_images(validation_dir)
  unknown = sorted(set(validation_names) - set(label_of))
  if unknown:
    raise ConversionError(
        '--validation_dir %s has class folders that --image_dir lacks (e.g. '
        '%s); both need the same class sub-folders' % (validation_dir,
                                                       unknown[0]))
  return [ImageSource(path, label_of[name], name)
          for name in validation_names for path in images_by_class[name]]


def _colourize_digits(digit_images, seed):
  """Turns 8x8 greyscale digits (0..16) into 64x64 RGB images.

  Each image gets its own paper and ink colours (light paper and dark ink or
  the reverse) and a little sensor noise, so that colour distortion and
  normalization during training have something real to work on.

  Args:
    digit_images: float array [N, 8, 8] with values 0..16.
    seed: seed for the colours and noise.

  Returns:
    uint8 array [N, DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE, 3].
  """
  rng = np.random.default_rng(seed)
  ink_amount = tf.image.resize(
      digit_images[..., None].astype(np.float32) / 16.0,
      [DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE],
      method=tf.image.ResizeMethod.BICUBIC).numpy().clip(0, 1)
  count = len(digit_images)
  light = rng.uniform(170, 255, size=(count, 1, 1, 3))
  dark = rng.uniform(0, 90, size=(count, 1, 1, 3))
  dark_on_light = rng.random(count)[:, None, None, None] < 0.7
  paper = np.where(dark_on_light, light, dark)
  ink = np.where(dark_on_light, dark, light)
  images = paper * (1 - ink_amount) + ink * ink_amount
  images += rng.normal(0, 4, size=images.shape)
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def write_sample_digits(output_dir, seed=0, train_shards=0,
                        validation_shards=0, num_workers=None,
                        overwrite=False, show_progress=True):
  """Builds a sample dataset from scikit-learn's bundled handwritten digits.

  The 1797 digit images become 64x64 RGB JPEGs in classes `digit_0` ..
  `digit_9` (labels 1..10), with DIGITS_VALIDATION_FRACTION of every class
  held out for validation.

  Args:
    output_dir: where shards, labels.txt and the completion marker go.
    seed: seed for the colours, the split and the order of examples.
    train_shards: number of train shards; 0 for automatic.
    validation_shards: number of validation shards; 0 for automatic.
    num_workers: images decoded in parallel; None for one per CPU.
    overwrite: replace shards and labels.txt in output_dir that no marker of
      ours lists.
    show_progress: draw a progress bar on stderr.

  Returns:
    ConversionResult.

  Raises:
    ConversionError: another tool's dataset in output_dir without overwrite.
    Interrupted: SIGINT or SIGTERM (once main has installed the handlers).
  """
  config = {
      'source': 'sklearn_digits',
      'image_size': DIGITS_IMAGE_SIZE,
      'validation_fraction': DIGITS_VALIDATION_FRACTION,
      'train_shards': train_shards,
      'validation_shards': validation_shards,
      'seed': seed,
  }
  _settle_staging(output_dir)
  previous = _find_complete_conversion(output_dir, config)
  if previous:
    return previous
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = _colourize_digits(digits.images, seed)
  class_names = ['digit_%d' % digit for digit in range(10)]
  image_dir = tempfile.mkdtemp(prefix='sample_digits_')
  try:
    images_by_class = {name: [] for name in class_names}
    for index, (image, digit) in enumerate(zip(images, digits.target)):
      class_name = class_names[digit]
      path = _join(image_dir, '%s_%04d.jpg' % (class_name, index))
      with open(path, 'wb') as image_file:
        image_file.write(tf.io.encode_jpeg(image, quality=90).numpy())
      images_by_class[class_name].append(path)
    train, validation = split_by_class(images_by_class, class_names,
                                       DIGITS_VALIDATION_FRACTION, seed)
    return _write_dataset(
        output_dir, {TRAIN_SPLIT: train, VALIDATION_SPLIT: validation},
        class_names,
        {TRAIN_SPLIT: train_shards, VALIDATION_SPLIT: validation_shards},
        num_workers or os.cpu_count() or 1, seed, config, overwrite,
        show_progress)
  finally:
    shutil.rmtree(image_dir, ignore_errors=True)


def _summary(result):
  """The closing message of a conversion, for the terminal."""
  if result.already_complete:
    lines = ['%s already holds this conversion (%s); nothing to do.' %
             (result.output_dir, COMPLETION_FILENAME)]
  else:
    lines = ['Wrote %s.' % result.output_dir]
  for split in (TRAIN_SPLIT, VALIDATION_SPLIT):
    if result.split_counts.get(split):
      lines.append('  %s: %d images in %d shards' %
                   (split, result.split_counts[split],
                    len(result.shard_files[split])))
  if result.skipped:
    lines.append('  skipped %d unreadable images (e.g. %s)' %
                 (len(result.skipped), result.skipped[0][0]))
  lines.append('  %d classes, labels 1..%d in %s (0 is the background class): '
               'train and evaluate with --num_classes=%d' %
               (len(result.class_names), len(result.class_names),
                LABELS_FILENAME, result.num_classes))
  return '\n'.join(lines)


def _run_from_flags():
  """Validates the flag combination and runs the requested conversion."""
  if not FLAGS.output_dir:
    raise ConversionError('--output_dir is required')
  if FLAGS.num_workers < 1:
    raise ConversionError('--num_workers must be at least 1')
  if FLAGS.train_shards < 0 or FLAGS.validation_shards < 0:
    raise ConversionError('--train_shards and --validation_shards must be '
                          '0 (automatic) or more')
  if FLAGS.sample_digits:
    if FLAGS.image_dir or FLAGS.validation_dir:
      raise ConversionError('--sample_digits builds its own images; drop '
                            '--image_dir and --validation_dir')
    return write_sample_digits(
        FLAGS.output_dir, seed=FLAGS.seed, train_shards=FLAGS.train_shards,
        validation_shards=FLAGS.validation_shards,
        num_workers=FLAGS.num_workers, overwrite=FLAGS.overwrite)
  if not FLAGS.image_dir:
    raise ConversionError('give --image_dir (a folder of class sub-folders) '
                          'or --sample_digits')
  if FLAGS.validation_dir and FLAGS['validation_fraction'].present:
    raise ConversionError('give either --validation_dir or '
                          '--validation_fraction, not both')
  return convert_folder(
      FLAGS.image_dir, FLAGS.output_dir,
      validation_dir=FLAGS.validation_dir,
      validation_fraction=FLAGS.validation_fraction,
      imagenet_validation_labels=FLAGS.imagenet_validation_labels,
      imagenet_metadata=FLAGS.imagenet_metadata,
      train_shards=FLAGS.train_shards,
      validation_shards=FLAGS.validation_shards,
      num_workers=FLAGS.num_workers, seed=FLAGS.seed,
      overwrite=FLAGS.overwrite)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))
  for signal_number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signal_number, _raise_interrupted)
  try:
    result = _run_from_flags()
  except ConversionError as error:
    sys.exit('build_imagenet_tfrecords: error: %s' % error)
  except Interrupted as interruption:
    if interruption.while_moving:
      state = (' while moving the finished conversion into %s; rerun the '
               'same command to finish the move' % FLAGS.output_dir)
    else:
      state = '; %s is as it was before this run' % FLAGS.output_dir
    print('build_imagenet_tfrecords: interrupted (%s)%s' %
          (interruption, state), file=sys.stderr)
    sys.exit(128 + interruption.signal_number)
  except (OSError, tf.errors.OpError) as error:
    # Writing failed (disk full, no permission) before the new dataset was
    # complete, or while it was being moved into place (which a rerun
    # finishes).
    message = getattr(error, 'message', None) or str(error)
    sys.exit('build_imagenet_tfrecords: error writing %s: %s' %
             (FLAGS.output_dir, message))
  print(_summary(result))


if __name__ == '__main__':
  app.run(main)
