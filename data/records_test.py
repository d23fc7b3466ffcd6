"""Tests for records, on small TFRecords written here from scratch.

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

from data import records
from testing import test_data


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


def _write_records(path, serialized_records):
  with tf.io.TFRecordWriter(path) as writer:
    for record in serialized_records:
      writer.write(record)


class _RecordsTestCase(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dataset_dir = self.create_tempdir().full_path
    self.image = test_data.encode_jpeg(np.full([24, 32, 3], 128, np.uint8))

  def write_split(self, split, records_per_file):
    """Writes one shard per list of records; returns the shard paths."""
    paths = []
    for index, shard_records in enumerate(records_per_file):
      path = os.path.join(self.dataset_dir, '%s-%05d-of-%05d' %
                          (split, index, len(records_per_file)))
      _write_records(path, shard_records)
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
        paths, records.list_split_files(self.dataset_dir, 'validation'))

  def test_missing_directory(self):
    missing = os.path.join(self.dataset_dir, 'nope')
    with self.assertRaisesRegex(records.DatasetError,
                                'nope does not exist.*build_imagenet'):
      records.list_split_files(missing, 'train')

  def test_file_instead_of_directory(self):
    path = os.path.join(self.dataset_dir, 'a_file')
    with open(path, 'w') as stray_file:
      stray_file.write('x')
    with self.assertRaisesRegex(records.DatasetError, 'not a directory'):
      records.list_split_files(path, 'train')

  def test_empty_directory(self):
    with self.assertRaisesRegex(records.DatasetError,
                                'is empty; build them with'):
      records.list_split_files(self.dataset_dir, 'train')

  def test_no_files_for_split(self):
    self.write_split('train', [[]])
    with self.assertRaisesRegex(
        records.DatasetError,
        'no validation-\\*-of-\\* files in .*--output_dir'):
      records.list_split_files(self.dataset_dir, 'validation')

  def test_missing_shard(self):
    paths = self.write_split('train', [[], [], []])
    os.remove(paths[1])
    with self.assertRaisesRegex(records.DatasetError,
                                'found 2 of 3 train shards'):
      records.list_split_files(self.dataset_dir, 'train')

  def test_no_dataset_dir(self):
    with self.assertRaisesRegex(records.DatasetError, '--dataset_dir'):
      records.list_split_files('', 'train')


class HelpersTest(_RecordsTestCase):

  def test_count_records(self):
    paths = self.write_split('train', [[b'a'] * 4, [b'b'] * 3])
    self.assertEqual(7, records.count_records(paths))

  def write_marker(self, text):
    with open(os.path.join(self.dataset_dir,
                           records.COMPLETION_FILENAME), 'w') as marker:
      marker.write(text)

  def test_num_examples_reads_the_converters_count(self):
    paths = self.write_split('train', [[b'a'] * 4, [b'b'] * 3])
    # Full paths from another machine, as older markers hold: the names
    # still match.
    self.write_marker(json.dumps({
        'shard_files': {'train': ['/elsewhere/' + os.path.basename(path)
                                  for path in paths]},
        'split_counts': {'train': 7}}))
    with mock.patch.object(records, 'count_records',
                           side_effect=AssertionError('counted')):
      self.assertEqual(7, records.num_examples(self.dataset_dir,
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
        self.assertEqual(7, records.num_examples(self.dataset_dir,
                                                        'train'))
      self.assertIn('Counting the train records of %s (2 shards; no '
                    'conversion_complete.json' % self.dataset_dir,
                    output.getvalue())
      self.assertIn('Counted 7 train records.', output.getvalue())

  def test_read_labels_file(self):
    with open(os.path.join(self.dataset_dir, 'labels.txt'), 'w') as labels:
      labels.write('1:cat\n2:dog: the big one\n\n')
    self.assertEqual({1: 'cat', 2: 'dog: the big one'},
                     records.read_labels_file(self.dataset_dir))

  def test_missing_labels_file(self):
    with self.assertRaisesRegex(records.DatasetError, 'no labels.txt'):
      records.read_labels_file(self.dataset_dir)


class BuildDatasetTest(_RecordsTestCase):

  def test_eval_counts_every_example_once(self):
    labels = [1, 2, 3, 4, 5, 6, 7]
    self.write_split('validation', [
        [_example(self.image, label) for label in labels[:4]],
        [_example(test_data.encode_png(np.zeros([9, 9, 3], np.uint8)), label)
         for label in labels[4:]],
    ])
    dataset = records.build_dataset(
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
    dataset = records.build_dataset(
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
    dataset = records.build_dataset(
        self.dataset_dir, 'train', batch_size=2, image_size=8,
        is_training=True, num_epochs=2)
    _, label_batches = self.read_all(dataset)
    # 10 examples in batches of 2, the partial batch dropped by default.
    self.assertEqual([2] * 5, [len(batch) for batch in label_batches])

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, 'batch_size must be positive'):
      records.build_dataset(self.dataset_dir, 'train', 0, 8, True)
    with self.assertRaisesRegex(ValueError,
                                'skip_corrupt needs a skip_counter'):
      records.build_dataset(self.dataset_dir, 'train', 2, 8, True,
                            skip_corrupt=True)

  def _write_with_bad_record(self, bad_record):
    good = [_example(self.image, label) for label in (1, 2, 3)]
    return self.write_split('validation',
                            [good[:1], good[1:] + [bad_record]])[1]

  def assert_error_names_record(self, bad_record, problem):
    bad_file = self._write_with_bad_record(bad_record)
    dataset = records.build_dataset(
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
    dataset = records.build_dataset(
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
    counter = records.SkippedRecordCounter()
    dataset = records.build_dataset(
        self.dataset_dir, 'validation', batch_size=2, image_size=8,
        is_training=False, skip_corrupt=True, skip_counter=counter)
    _, label_batches = self.read_all(dataset)
    self.assertCountEqual([1, 2, 3], np.concatenate(label_batches))
    self.assertEqual(4, counter.count)
    counter.reset()
    self.assertEqual(0, counter.count)

  def test_dataset_errors_raised_when_building(self):
    with self.assertRaises(records.DatasetError):
      records.build_dataset(self.dataset_dir, 'train', 2, 8, True)


class GraphModeTest(_RecordsTestCase):
  """The training and eval binaries run tf-slim in a tf.compat.v1 Session."""

  def test_one_shot_iterator_in_session(self):
    self.write_split('validation',
                     [[_example(self.image, label) for label in (1, 2, 3)]])
    with tf.Graph().as_default():
      dataset = records.build_dataset(
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
      counter = records.SkippedRecordCounter()
      with tf.Graph().as_default():
        dataset = records.build_dataset(
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
