r"""Converts image folders into ImageNet-format sharded TFRecords.

Writes `train-00000-of-0000N`, ..., `validation-00000-of-0000M`, ... and
`labels.txt` into --output_dir, in the format `imagenet_input` reads (and the
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
its path and the total is printed at the end. Every shard is written under a
temporary name and renamed when complete, and a finished conversion leaves
`conversion_complete.json`; re-running with the same inputs and flags finds it
and exits at once, anything else rebuilds the output from scratch.
"""

import collections
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

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
    'sample_digits', False,
    'Build a small sample dataset from scikit-learn\'s handwritten digits '
    '(1797 images, 10 classes, 64x64 RGB) instead of converting --image_dir.')

TRAIN_SPLIT = 'train'
VALIDATION_SPLIT = 'validation'
LABELS_FILENAME = 'labels.txt'
COMPLETION_FILENAME = 'conversion_complete.json'
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

  def __init__(self, output_dir, split, sources, num_shards):
    self._output_dir = output_dir
    self._split = split
    self._num_shards = num_shards
    bounds = np.linspace(0, len(sources), num_shards + 1).astype(int)
    # Shard index of every source.
    self._shard_of = np.repeat(np.arange(num_shards), np.diff(bounds))
    self._writer = None
    self._shard = -1
    self.shard_files = []

  def _temp_path(self, shard):
    # The leading dot keeps partial files out of `{split}-*-of-*` globs.
    return _join(self._output_dir,
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
    final_path = _join(self._output_dir,
                       _shard_name(self._split, self._shard, self._num_shards))
    tf.io.gfile.rename(self._temp_path(self._shard), final_path,
                       overwrite=True)
    self.shard_files.append(final_path)


def _write_split(output_dir, split, sources, num_shards, num_workers, skipped,
                 on_image_done):
  """Writes the shards of one split.

  Args:
    output_dir: destination directory.
    split: split name.
    sources: ImageSources in the order they go into the shards.
    num_shards: number of shards.
    num_workers: images processed in parallel.
    skipped: list to which (path, reason) of unreadable images is appended.
    on_image_done: called after every image, written or skipped.

  Returns:
    (shard paths, number of examples written).
  """
  writer = _ShardWriter(output_dir, split, sources, num_shards)
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
  return writer.shard_files, len(sources) - (len(skipped) - skipped_before)


def _skip(path, skipped):
  """Records an unreadable image in `skipped`, logging the first few."""
  reason = _failure_reason(path)
  skipped.append((path, reason))
  if len(skipped) <= _MAX_REPORTED_SKIPS:
    logging.warning('Skipping unreadable image %s: %s', path, reason)


def _auto_num_shards(num_images):
  return max(1, min(MAX_AUTO_SHARDS,
                    int(math.ceil(num_images / IMAGES_PER_AUTO_SHARD))))


def _remove_previous_output(output_dir):
  """Deletes a previous conversion's marker and shards (incl. partial ones)."""
  completion_path = _join(output_dir, COMPLETION_FILENAME)
  if tf.io.gfile.exists(completion_path):
    tf.io.gfile.remove(completion_path)
  for split in (TRAIN_SPLIT, VALIDATION_SPLIT):
    for pattern in ('%s-*-of-*', '.tmp-%s-*-of-*'):
      for path in tf.io.gfile.glob(_join(output_dir, pattern % split)):
        tf.io.gfile.remove(path)


def _write_text_atomically(path, text):
  temp_path = _join(os.path.dirname(path), '.tmp-' + os.path.basename(path))
  with tf.io.gfile.GFile(temp_path, 'w') as text_file:
    text_file.write(text)
  tf.io.gfile.rename(temp_path, path, overwrite=True)


def _find_complete_conversion(output_dir, config):
  """Returns the ConversionResult of an identical finished run, or None."""
  completion_path = _join(output_dir, COMPLETION_FILENAME)
  if not tf.io.gfile.exists(completion_path):
    return None
  try:
    with tf.io.gfile.GFile(completion_path, 'r') as completion_file:
      previous = json.load(completion_file)
  except ValueError:
    return None
  if previous.get('config') != config:
    return None
  shard_files = previous['shard_files']
  expected_files = [path for paths in shard_files.values() for path in paths]
  expected_files.append(_join(output_dir, LABELS_FILENAME))
  if not all(tf.io.gfile.exists(path) for path in expected_files):
    return None
  return ConversionResult(
      output_dir=output_dir,
      class_names=previous['class_names'],
      split_counts=previous['split_counts'],
      shard_files=shard_files,
      skipped=[tuple(skip) for skip in previous['skipped']],
      already_complete=True)


def _input_fingerprint(splits):
  """A digest of which images go where, so changed inputs force a rebuild."""
  digest = hashlib.sha256()
  for split in sorted(splits):
    for source in splits[split]:
      digest.update(('%s\t%s\t%d\n' % (split, source.path,
                                        source.label)).encode())
  return digest.hexdigest()


def _write_dataset(output_dir, splits, class_names, shards, num_workers, seed,
                   config, show_progress):
  """Writes shards, labels.txt and the completion marker.

  Args:
    output_dir: destination directory (created if needed).
    splits: dict split name -> list of ImageSource.
    class_names: sorted class names; class_names[i] has label i + 1.
    shards: dict split name -> requested number of shards (0 for automatic).
    num_workers: images decoded and re-encoded in parallel.
    seed: seed for the order of the examples in the shards.
    config: JSON-serializable description of the conversion, stored in the
      completion marker to recognise an identical re-run.
    show_progress: draw a progress bar on stderr.

  Returns:
    ConversionResult.
  """
  tf.io.gfile.makedirs(output_dir)
  _remove_previous_output(output_dir)
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
    shard_files[split], split_counts[split] = _write_split(
        output_dir, split, sources, num_shards, num_workers, skipped,
        on_image_done)
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
      _join(output_dir, LABELS_FILENAME),
      ''.join('%d:%s\n' % (label, name)
              for label, name in enumerate(class_names, start=1)))
  result = ConversionResult(
      output_dir=output_dir,
      class_names=list(class_names),
      split_counts=split_counts,
      shard_files=shard_files,
      skipped=skipped,
      already_complete=False)
  # Written last: its presence means every file above is complete.
  _write_text_atomically(
      _join(output_dir, COMPLETION_FILENAME),
      json.dumps({
          'config': config,
          'class_names': result.class_names,
          'split_counts': split_counts,
          'shard_files': shard_files,
          'skipped': skipped,
      }, indent=1, sort_keys=True))
  return result


def convert_folder(image_dir, output_dir, validation_dir=None,
                   validation_fraction=0.1, imagenet_validation_labels=None,
                   imagenet_metadata=None, train_shards=0,
                   validation_shards=0, num_workers=None, seed=0,
                   show_progress=True):
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
    show_progress: draw a progress bar on stderr.

  Returns:
    ConversionResult.

  Raises:
    ConversionError: missing folders, no images, inconsistent arguments.
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
  previous = _find_complete_conversion(output_dir, config)
  if previous:
    return previous
  return _write_dataset(
      output_dir, splits, class_names,
      {TRAIN_SPLIT: train_shards, VALIDATION_SPLIT: validation_shards},
      num_workers or os.cpu_count() or 1, seed, config, show_progress)


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
                        show_progress=True):
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
    show_progress: draw a progress bar on stderr.

  Returns:
    ConversionResult.
  """
  config = {
      'source': 'sklearn_digits',
      'image_size': DIGITS_IMAGE_SIZE,
      'validation_fraction': DIGITS_VALIDATION_FRACTION,
      'train_shards': train_shards,
      'validation_shards': validation_shards,
      'seed': seed,
  }
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
        num_workers or os.cpu_count() or 1, seed, config, show_progress)
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
        num_workers=FLAGS.num_workers)
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
      num_workers=FLAGS.num_workers, seed=FLAGS.seed)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))
  try:
    result = _run_from_flags()
  except ConversionError as error:
    sys.exit('build_imagenet_tfrecords: error: %s' % error)
  except (OSError, tf.errors.OpError) as error:
    # Writing failed (disk full, no permission): the shards on disk are
    # incomplete and without a completion marker, so a re-run starts over.
    message = getattr(error, 'message', None) or str(error)
    sys.exit('build_imagenet_tfrecords: error writing %s: %s' %
             (FLAGS.output_dir, message))
  print(_summary(result))


if __name__ == '__main__':
  app.run(main)
