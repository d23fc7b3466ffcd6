"""Re-encodes images and writes them as TFRecord shards in slim's format.

Each record is a `tf.train.Example` with the keys of the TF-slim ImageNet
tools (`image/encoded`, `image/class/label`, ...). Images that are not RGB
JPEGs (PNG, GIF, BMP, greyscale or CMYK JPEG) are re-encoded as RGB JPEG;
unreadable images are skipped and reported.
"""

import math
import os
import re

from absl import logging
import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

# Roughly 100 MB shards for ImageNet-sized JPEGs.
IMAGES_PER_AUTO_SHARD = 1024
MAX_AUTO_SHARDS = 1024
REENCODE_JPEG_QUALITY = 95
# Unreadable images reported one by one before only the count is kept.
MAX_REPORTED_SKIPS = 20


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

  Yields:
    (int index, bytes, int height, int width).
  """
  paths = tf.data.Dataset.from_tensor_slices([s.path for s in sources])
  encoded = paths.enumerate().map(
      lambda index, path: (index,) + _read_as_rgb_jpeg(path),
      num_parallel_calls=num_workers, deterministic=True).ignore_errors()
  for index, jpeg_bytes, height, width in encoded.prefetch(2 * num_workers):
    yield int(index), jpeg_bytes.numpy(), int(height), int(width)


class _ShardWriter(object):
  """Writes the shards of one split, each complete before it gets its name."""

  def __init__(self, directory, split, sources, num_shards, on_event):
    self._directory = directory
    self._split = split
    self._num_shards = num_shards
    self._on_event = on_event
    bounds = np.linspace(0, len(sources), num_shards + 1).astype(int)
    # Shard index of every source.
    self._shard_of = np.repeat(np.arange(num_shards), np.diff(bounds))
    self._writer = None
    self._shard = -1
    self.shard_names = []

  def _temp_path(self, shard):
    # The leading dot keeps partial files out of `{split}-*-of-*` globs.
    return os.path.join(
        self._directory,
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
                       os.path.join(self._directory, name), overwrite=True)
    self.shard_names.append(name)
    self._on_event('staged')


def write_split(directory, split, sources, num_shards, num_workers, skipped,
                on_image_done, on_event):
  """Writes the shards of one split.

  Args:
    directory: destination directory.
    split: split name.
    sources: ImageSources in the order they go into the shards.
    num_shards: number of shards.
    num_workers: images processed in parallel.
    skipped: list to which (path, reason) of unreadable images is appended.
    on_image_done: called after every image, written or skipped.
    on_event: called with 'staged' after every shard that is complete under
      its final name.

  Returns:
    (shard file names, number of examples written).
  """
  writer = _ShardWriter(directory, split, sources, num_shards, on_event)
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
  if len(skipped) <= MAX_REPORTED_SKIPS:
    logging.warning('Skipping unreadable image %s: %s', path, reason)


def auto_num_shards(num_images):
  """The number of shards for a split of num_images images.

  Args:
    num_images: the split's images.

  Returns:
    About one shard per IMAGES_PER_AUTO_SHARD images, 1..MAX_AUTO_SHARDS.
  """
  return max(1, min(MAX_AUTO_SHARDS,
                    int(math.ceil(num_images / IMAGES_PER_AUTO_SHARD))))
