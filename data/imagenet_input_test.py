"""Tests for imagenet_input, on small TFRecords written here from scratch.

The records are built directly from tf.train.Example protos (not with
build_imagenet_tfrecords) so that the reader is checked against the format
itself rather than against our own writer.
"""

import contextlib
import io
import json
import os
from unittest import mock

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import imagenet_input


def _jpeg(image):
  return tf.io.encode_jpeg(tf.constant(image, tf.uint8), quality=95).numpy()


def _png(image):
  return tf.io.encode_png(tf.constant(image, tf.uint8)).numpy()


def _gradient_image(height, width):
  """An RGB image whose channels vary smoothly (and differently) in y and x."""
  y, x = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  return np.stack([
      255.0 * y / (height - 1),
      255.0 * x / (width - 1),
      255.0 * (y + x) / (height + width - 2),
  ], axis=-1).round().astype(np.uint8)


def _example(image_bytes=None, label=None, bbox=None):
  """Serializes a slim-format tf.train.Example; None leaves a key out."""
  feature = {}
  if image_bytes is not None:
    feature['image/encoded'] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[image_bytes]))
    feature['image/format'] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[b'JPEG']))
  if label is not None:
    feature['image/class/label'] = tf.train.Feature(
        int64_list=tf.train.Int64List(value=[label]))
  boxes = [bbox] if bbox else []
  for index, side in enumerate(('ymin', 'xmin', 'ymax', 'xmax')):
    feature['image/object/bbox/' + side] = tf.train.Feature(
        float_list=tf.train.FloatList(value=[box[index] for box in boxes]))
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def _write_records(path, records):
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)


def _numpy_bilinear_resize(image, height, width):
  """Reference for TF1's resize_bilinear(align_corners=False), slim's resize.

  Output pixel i samples input coordinate i * in_size / out_size: no
  half-pixel centres (TF2's tf.image.resize samples (i + 0.5) * in / out -
  0.5), no antialiasing.
  """

  def sample_points(in_size, out_size):
    position = np.arange(out_size) * in_size / out_size
    lower = np.floor(position)
    fraction = position - lower
    lower_index = np.clip(lower, 0, in_size - 1).astype(int)
    upper_index = np.clip(lower + 1, 0, in_size - 1).astype(int)
    return lower_index, upper_index, fraction

  top, bottom, y_fraction = sample_points(image.shape[0], height)
  left, right, x_fraction = sample_points(image.shape[1], width)
  y_fraction = y_fraction[:, None, None]
  x_fraction = x_fraction[None, :, None]
  upper_row = (image[top][:, left] * (1 - x_fraction) +
               image[top][:, right] * x_fraction)
  lower_row = (image[bottom][:, left] * (1 - x_fraction) +
               image[bottom][:, right] * x_fraction)
  return upper_row * (1 - y_fraction) + lower_row * y_fraction


def _numpy_eval_reference(image, image_size, central_fraction=0.875):
  """Central crop as tf.image.central_crop does it, resize, map to [-1, 1]."""
  height, width = image.shape[:2]
  offset_y = int((height - height * central_fraction) / 2)
  offset_x = int((width - width * central_fraction) / 2)
  crop = image[offset_y:height - offset_y, offset_x:width - offset_x]
  resized = _numpy_bilinear_resize(crop.astype(np.float64) / 255.0,
                                   image_size, image_size)
  return (resized - 0.5) * 2.0


class _RecordsTestCase(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dataset_dir = self.create_tempdir().full_path
    self.image = _jpeg(np.full([24, 32, 3], 128, np.uint8))

  def write_split(self, split, records_per_file):
    """Writes one shard per list of records; returns the shard paths."""
    paths = []
    for index, records in enumerate(records_per_file):
      path = os.path.join(self.dataset_dir, '%s-%05d-of-%05d' %
                          (split, index, len(records_per_file)))
      _write_records(path, records)
      paths.append(path)
    return paths

  def read_all(self, dataset):
    images, labels = [], []
    for image_batch, label_batch in dataset:
      images.append(image_batch.numpy())
      labels.append(label_batch.numpy())
    return images, labels


class ListSplitFilesTest(_RecordsTestCase):

  def test_lists_sorted_shards(self):
    paths = self.write_split('validation', [[], [], []])
    self.write_split('train', [[]])
    self.assertEqual(
        paths, imagenet_input.list_split_files(self.dataset_dir, 'validation'))

  def test_missing_directory(self):
    missing = os.path.join(self.dataset_dir, 'nope')
    with self.assertRaisesRegex(imagenet_input.DatasetError,
                                'nope does not exist.*build_imagenet'):
      imagenet_input.list_split_files(missing, 'train')

  def test_file_instead_of_directory(self):
    path = os.path.join(self.dataset_dir, 'a_file')
    with open(path, 'w') as stray_file:
      stray_file.write('x')
    with self.assertRaisesRegex(imagenet_input.DatasetError, 'not a directory'):
      imagenet_input.list_split_files(path, 'train')

  def test_empty_directory(self):
    with self.assertRaisesRegex(imagenet_input.DatasetError,
                                'is empty; build them with'):
      imagenet_input.list_split_files(self.dataset_dir, 'train')

  def test_no_files_for_split(self):
    self.write_split('train', [[]])
    with self.assertRaisesRegex(
        imagenet_input.DatasetError,
        'no validation-\\*-of-\\* files in .*--output_dir'):
      imagenet_input.list_split_files(self.dataset_dir, 'validation')

  def test_missing_shard(self):
    paths = self.write_split('train', [[], [], []])
    os.remove(paths[1])
    with self.assertRaisesRegex(imagenet_input.DatasetError,
                                'found 2 of 3 train shards'):
      imagenet_input.list_split_files(self.dataset_dir, 'train')

  def test_no_dataset_dir(self):
    with self.assertRaisesRegex(imagenet_input.DatasetError, '--dataset_dir'):
      imagenet_input.list_split_files('', 'train')


class HelpersTest(_RecordsTestCase):

  def test_count_records(self):
    paths = self.write_split('train', [[b'a'] * 4, [b'b'] * 3])
    self.assertEqual(7, imagenet_input.count_records(paths))

  def write_marker(self, text):
    with open(os.path.join(self.dataset_dir,
                           imagenet_input.COMPLETION_FILENAME), 'w') as marker:
      marker.write(text)

  def test_num_examples_reads_the_converters_count(self):
    paths = self.write_split('train', [[b'a'] * 4, [b'b'] * 3])
    # Full paths from another machine, as older markers hold: the names
    # still match.
    self.write_marker(json.dumps({
        'shard_files': {'train': ['/elsewhere/' + os.path.basename(path)
                                  for path in paths]},
        'split_counts': {'train': 7}}))
    with mock.patch.object(imagenet_input, 'count_records',
                           side_effect=AssertionError('counted')):
      self.assertEqual(7, imagenet_input.num_examples(self.dataset_dir,
                                                      'train'))

  def test_num_examples_counts_without_a_matching_marker(self):
    paths = self.write_split('train', [[b'a'] * 4, [b'b'] * 3])
    names = [os.path.basename(path) for path in paths]
    # No marker, a truncated one, one for other shards, one for another split.
    for marker_text in (None, '{"shard_files": {"train', json.dumps({
        'shard_files': {'train': names[:1]}, 'split_counts': {'train': 4}
    }), json.dumps({
        'shard_files': {'validation': names},
        'split_counts': {'validation': 7}})):
      if marker_text is not None:
        self.write_marker(marker_text)
      output = io.StringIO()
      with contextlib.redirect_stdout(output):
        self.assertEqual(7, imagenet_input.num_examples(self.dataset_dir,
                                                        'train'))
      self.assertIn('Counting the train records of %s (2 shards; no '
                    'conversion_complete.json' % self.dataset_dir,
                    output.getvalue())
      self.assertIn('Counted 7 train records.', output.getvalue())

  def test_read_labels_file(self):
    with open(os.path.join(self.dataset_dir, 'labels.txt'), 'w') as labels:
      labels.write('1:cat\n2:dog: the big one\n\n')
    self.assertEqual({1: 'cat', 2: 'dog: the big one'},
                     imagenet_input.read_labels_file(self.dataset_dir))

  def test_missing_labels_file(self):
    with self.assertRaisesRegex(imagenet_input.DatasetError, 'no labels.txt'):
      imagenet_input.read_labels_file(self.dataset_dir)


class PreprocessingTest(tf.test.TestCase):

  def test_eval_matches_numpy_reference(self):
    image = _gradient_image(50, 40)
    actual = imagenet_input.preprocess_for_eval(_png(image), 32).numpy()
    self.assertEqual((32, 32, 3), actual.shape)
    self.assertAllClose(_numpy_eval_reference(image, 32), actual, atol=1e-5)
    # TF2's half-pixel resize samples this gradient 0.19 and 0.06 pixels
    # away: far outside the tolerance above, so the reference tells the two
    # apart.
    crop = image[3:47, 2:38].astype(np.float32) / 255.0
    half_pixel = (tf.image.resize(crop, [32, 32]).numpy() - 0.5) * 2.0
    self.assertGreater(np.abs(half_pixel - actual).max(), 100 * 1e-5)

  def test_eval_jpeg_close_to_reference(self):
    image = _gradient_image(60, 80)
    actual = imagenet_input.preprocess_for_eval(_jpeg(image), 24).numpy()
    # JPEG is lossy: a few grey levels of error, never a shifted crop.
    self.assertAllClose(_numpy_eval_reference(image, 24), actual, atol=0.06)

  def test_eval_constant_image(self):
    image = np.full([30, 45, 3], 191, np.uint8)
    actual = imagenet_input.preprocess_for_eval(_jpeg(image), 16).numpy()
    self.assertAllClose(np.full([16, 16, 3], (191 / 255 - 0.5) * 2), actual,
                        atol=0.02)

  def test_train_shape_and_range(self):
    for encode in (_jpeg, _png):
      for bboxes in (None, tf.constant([[0.1, 0.2, 0.6, 0.9]])):
        image = _gradient_image(40, 56)
        output = imagenet_input.preprocess_for_train(
            encode(image), bboxes, 48, fast_mode=False).numpy()
        self.assertEqual((48, 48, 3), output.shape)
        self.assertEqual(np.float32, output.dtype)
        self.assertBetween(output.min(), -1.0, 1.0)
        self.assertBetween(output.max(), -1.0, 1.0)

  def test_train_crops_vary(self):
    image_bytes = _jpeg(_gradient_image(64, 64))
    outputs = [imagenet_input.preprocess_for_train(image_bytes, None,
                                                   16).numpy()
               for _ in range(4)]
    self.assertGreater(np.abs(outputs[0] - outputs[1]).max(), 0.01)

  def test_train_crops_cover_the_box(self):
    # A red object in the top-left corner of a blue image: each crop must
    # keep at least 10% of the box, so some red survives every time.
    image = np.zeros([100, 100, 3], np.uint8)
    image[..., 2] = 255
    image[:30, :30] = [255, 0, 0]
    image_bytes = _png(image)
    box = tf.constant([[0.0, 0.0, 0.3, 0.3]])
    tf.random.set_seed(1)
    for _ in range(30):
      output = imagenet_input.preprocess_for_train(image_bytes, box, 32)
      red_minus_blue = output[..., 0] - output[..., 2]
      self.assertGreater(float(tf.reduce_max(red_minus_blue)), 0.5)
    # Without the box the whole image is the object, and crops (at least 5%
    # of the area) often miss the corner entirely.
    misses = 0
    for _ in range(30):
      output = imagenet_input.preprocess_for_train(image_bytes, None, 32)
      misses += float(tf.reduce_max(output[..., 0] - output[..., 2])) < 0.5
    self.assertGreater(misses, 0)


class BuildDatasetTest(_RecordsTestCase):

  def test_eval_counts_every_example_once(self):
    labels = [1, 2, 3, 4, 5, 6, 7]
    self.write_split('validation', [
        [_example(self.image, label) for label in labels[:4]],
        [_example(_png(np.zeros([9, 9, 3], np.uint8)), label)
         for label in labels[4:]],
    ])
    dataset = imagenet_input.build_dataset(
        self.dataset_dir, 'validation', batch_size=3, image_size=20,
        is_training=False)
    images, label_batches = self.read_all(dataset)
    self.assertEqual([3, 3, 1], [len(batch) for batch in label_batches])
    self.assertCountEqual(labels, np.concatenate(label_batches))
    for batch in images:
      self.assertEqual((20, 20, 3), batch.shape[1:])
    # The order is fixed from one pass to the next.
    _, again = self.read_all(dataset)
    self.assertAllEqual(np.concatenate(label_batches), np.concatenate(again))

  def test_train_batches(self):
    self.write_split('train', [
        [_example(self.image, 1, bbox=[0.1, 0.1, 0.9, 0.9])] * 3,
        [_example(self.image, 2)] * 2,
    ])
    dataset = imagenet_input.build_dataset(
        self.dataset_dir, 'train', batch_size=4, image_size=24,
        is_training=True, shuffle_buffer=8)
    self.assertEqual([4, 24, 24, 3], dataset.element_spec[0].shape.as_list())
    self.assertEqual(tf.int64, dataset.element_spec[1].dtype)
    label_counts = {1: 0, 2: 0}
    # Repeats forever; 10 batches are 40 examples from 5 records.
    for images, labels in dataset.take(10):
      self.assertBetween(float(tf.reduce_min(images)), -1.0, 1.0)
      self.assertBetween(float(tf.reduce_max(images)), -1.0, 1.0)
      for label in labels.numpy():
        label_counts[label] += 1
    self.assertEqual(40, sum(label_counts.values()))
    self.assertGreater(label_counts[1], label_counts[2])

  def test_train_with_num_epochs_ends(self):
    self.write_split('train', [[_example(self.image, 1)] * 5])
    dataset = imagenet_input.build_dataset(
        self.dataset_dir, 'train', batch_size=2, image_size=8,
        is_training=True, num_epochs=2)
    _, label_batches = self.read_all(dataset)
    # 10 examples in batches of 2, the partial batch dropped by default.
    self.assertEqual([2] * 5, [len(batch) for batch in label_batches])

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'batch_size must be positive'):
      imagenet_input.build_dataset(self.dataset_dir, 'train', 0, 8, True)

  def _write_with_bad_record(self, bad_record):
    good = [_example(self.image, label) for label in (1, 2, 3)]
    return self.write_split('validation',
                            [good[:1], good[1:] + [bad_record]])[1]

  def assert_error_names_record(self, bad_record, problem):
    bad_file = self._write_with_bad_record(bad_record)
    dataset = imagenet_input.build_dataset(
        self.dataset_dir, 'validation', batch_size=2, image_size=8,
        is_training=False)
    with self.assertRaises(tf.errors.InvalidArgumentError) as raised:
      self.read_all(dataset)
    self.assertIn('%s record 2: %s' % (bad_file, problem),
                  raised.exception.message)

  def test_missing_label_names_file(self):
    self.assert_error_names_record(_example(self.image, label=None),
                                   'missing image/class/label')

  def test_missing_image_names_file(self):
    self.assert_error_names_record(_example(None, label=3),
                                   'missing image/encoded')

  def test_corrupt_jpeg_names_file(self):
    truncated = self.image[:len(self.image) // 3]
    self.assert_error_names_record(_example(truncated, 3),
                                   'image/encoded is not a decodable JPEG')

  def test_garbage_bytes_name_file(self):
    self.assert_error_names_record(_example(b'not an image', 3),
                                   'image/encoded is not a decodable JPEG')

  def test_not_an_example_names_file(self):
    self.assert_error_names_record(b'\xff\xfe definitely not a proto',
                                   'not a tf.train.Example')

  def test_training_error_names_file(self):
    bad_file = self._write_with_bad_record(_example(b'junk', 1))
    os.rename(bad_file, bad_file.replace('validation', 'train'))
    os.rename(bad_file.replace('00001', '00000'),
              bad_file.replace('00001', '00000').replace('validation',
                                                         'train'))
    dataset = imagenet_input.build_dataset(
        self.dataset_dir, 'train', batch_size=2, image_size=8,
        is_training=True)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                'train-00001-of-00002 record 2'):
      for _ in dataset.take(10):
        pass

  def test_skip_corrupt_skips_and_counts(self):
    bad_records = [_example(self.image, None), _example(b'junk', 4),
                   _example(None, 5), b'\x00\x01 not a proto']
    good_records = [_example(self.image, label) for label in (1, 2, 3)]
    self.write_split('validation',
                     [good_records[:2] + bad_records[:2],
                      bad_records[2:] + good_records[2:]])
    counter = imagenet_input.SkippedRecordCounter()
    dataset = imagenet_input.build_dataset(
        self.dataset_dir, 'validation', batch_size=2, image_size=8,
        is_training=False, skip_corrupt=True, skip_counter=counter)
    _, label_batches = self.read_all(dataset)
    self.assertCountEqual([1, 2, 3], np.concatenate(label_batches))
    self.assertEqual(4, counter.count)
    counter.reset()
    self.assertEqual(0, counter.count)

  def test_dataset_errors_raised_when_building(self):
    with self.assertRaises(imagenet_input.DatasetError):
      imagenet_input.build_dataset(self.dataset_dir, 'train', 2, 8, True)


class GraphModeTest(_RecordsTestCase):
  """The training and eval binaries run tf-slim in a tf.compat.v1 Session."""

  def test_one_shot_iterator_in_session(self):
    self.write_split('validation',
                     [[_example(self.image, label) for label in (1, 2, 3)]])
    with tf.Graph().as_default():
      dataset = imagenet_input.build_dataset(
          self.dataset_dir, 'validation', batch_size=2, image_size=8,
          is_training=False)
      images, labels = tf.compat.v1.data.make_one_shot_iterator(
          dataset).get_next()
      with tf.compat.v1.Session() as session:
        batches = [session.run([images, labels]) for _ in range(2)]
        with self.assertRaises(tf.errors.OutOfRangeError):
          session.run(labels)
    self.assertEqual([1, 2, 3],
                     [label for _, batch in batches for label in batch])
    self.assertEqual((2, 8, 8, 3), batches[0][0].shape)

  def test_initializable_iterator_training_and_errors(self):
    self.write_split('train', [[_example(self.image, 1)] * 3 +
                               [_example(b'junk', 2)]])
    for skip_corrupt in (True, False):
      counter = imagenet_input.SkippedRecordCounter()
      with tf.Graph().as_default():
        dataset = imagenet_input.build_dataset(
            self.dataset_dir, 'train', batch_size=2, image_size=8,
            is_training=True, skip_corrupt=skip_corrupt, skip_counter=counter)
        iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
        labels = iterator.get_next()[1]
        with tf.compat.v1.Session() as session:
          session.run(iterator.initializer)
          if skip_corrupt:
            for _ in range(6):
              self.assertAllEqual([1, 1], session.run(labels))
            self.assertGreater(counter.count, 0)
          else:
            with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                        'train-00000-of-00001 record 3'):
              for _ in range(6):
                session.run(labels)


if __name__ == '__main__':
  tf.test.main()
