"""Tests for build_imagenet_tfrecords.

The written records are read back with plain tf.train.Example parsing, not
with data/records.py, so that the converter is checked against the format.
Interruptions are tested on the binary as users run it; the converter's
BUILD_IMAGENET_TFRECORDS_TEST_SIGNAL hook makes it signal itself at an exact
point (after the N-th staged shard, at the commit, after the N-th file moved
into place), which a signal from outside could only hit by chance.
"""

import io
import json
import os
import signal
import subprocess
import sys

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

import build_imagenet_tfrecords as converter
from data import records

try:
  from PIL import Image  # pylint: disable=g-import-not-at-top
except ImportError:
  Image = None

_REQUIRED_KEYS = (
    'image/encoded', 'image/format', 'image/class/label', 'image/class/text',
    'image/height', 'image/width', 'image/object/bbox/xmin',
    'image/object/bbox/ymin', 'image/object/bbox/xmax',
    'image/object/bbox/ymax', 'image/object/class/label')


def _random_image(height, width, channels, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


def _save(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as image_file:
    image_file.write(data)


def _jpeg(image):
  return tf.io.encode_jpeg(image).numpy()


def _png(image):
  return tf.io.encode_png(image).numpy()


def _read_split(output_dir, split):
  """Returns the parsed Examples of a split, reading every shard in order."""
  examples = []
  for path in sorted(tf.io.gfile.glob(
      os.path.join(output_dir, '%s-*-of-*' % split))):
    for record in tf.compat.v1.io.tf_record_iterator(path):
      examples.append(tf.train.Example.FromString(record))
  return examples


def _feature(example, key):
  feature = example.features.feature[key]
  return (list(feature.bytes_list.value) or list(feature.int64_list.value) or
          list(feature.float_list.value))


def _shard_names(output_dir):
  return sorted(name for name in os.listdir(output_dir)
                if '-of-' in name and not name.startswith('.'))


class ConvertFolderTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.image_dir = self.create_tempdir('images').full_path
    self.output_dir = os.path.join(self.create_tempdir().full_path, 'records')
    # Image name -> (height, width); three of each class, mixed formats.
    self.sizes = {}
    layout = {
        'cat': [('c1.jpg', 'jpeg', 3), ('c2.JPEG', 'jpeg', 3),
                ('c3.png', 'png', 3)],
        'dog': [('d1.jpg', 'jpeg', 1), ('d2.png', 'png', 4),
                ('d3.jpeg', 'jpeg', 3)],
        'zebra': [('z1.png', 'png', 1), ('z2.jpg', 'jpeg', 3),
                  ('z3.jpg', 'jpeg', 3)],
    }
    for class_index, (class_name, images) in enumerate(sorted(layout.items())):
      for image_index, (name, image_format, channels) in enumerate(images):
        height, width = 20 + 3 * image_index, 30 + 5 * class_index
        image = _random_image(height, width, channels,
                              seed=10 * class_index + image_index)
        encode = _jpeg if image_format == 'jpeg' else _png
        _save(os.path.join(self.image_dir, class_name, name), encode(image))
        self.sizes[name] = (height, width)
    _save(os.path.join(self.image_dir, 'dog', 'notes.txt'), b'not an image')

  def convert(self, **kwargs):
    options = dict(validation_fraction=0.34, train_shards=2,
                   validation_shards=1, num_workers=2, show_progress=False)
    options.update(kwargs)
    return converter.convert_folder(self.image_dir, self.output_dir,
                                    **options)

  def test_records_have_the_slim_format(self):
    result = self.convert()
    self.assertFalse(result.already_complete)
    self.assertEqual(['cat', 'dog', 'zebra'], result.class_names)
    self.assertEqual(4, result.num_classes)
    self.assertEqual({'train': 6, 'validation': 3}, result.split_counts)
    self.assertEqual(
        ['train-00000-of-00002', 'train-00001-of-00002',
         'validation-00000-of-00001'], _shard_names(self.output_dir))
    with open(os.path.join(self.output_dir, 'labels.txt')) as labels_file:
      self.assertEqual('1:cat\n2:dog\n3:zebra\n', labels_file.read())

    seen = []
    for split in ('train', 'validation'):
      examples = _read_split(self.output_dir, split)
      self.assertLen(examples, result.split_counts[split])
      for example in examples:
        for key in _REQUIRED_KEYS:
          self.assertIn(key, example.features.feature)
        name = _feature(example, 'image/filename')[0].decode()
        class_name = _feature(example, 'image/class/text')[0].decode()
        label = _feature(example, 'image/class/label')[0]
        self.assertEqual(['cat', 'dog', 'zebra'].index(class_name) + 1, label)
        self.assertEqual(class_name[0], name[0])
        self.assertEqual([b'JPEG'], _feature(example, 'image/format'))
        self.assertEqual([], _feature(example, 'image/object/bbox/xmin'))
        encoded = _feature(example, 'image/encoded')[0]
        self.assertTrue(tf.io.is_jpeg(encoded))
        self.assertAllEqual(list(self.sizes[name]) + [3],
                            tf.image.extract_jpeg_shape(encoded))
        self.assertEqual(list(self.sizes[name]),
                         _feature(example, 'image/height') +
                         _feature(example, 'image/width'))
        seen.append(name)
    self.assertCountEqual(self.sizes, seen)

  def test_validation_holds_out_every_class(self):
    self.convert()
    classes = [_feature(example, 'image/class/text')[0]
               for example in _read_split(self.output_dir, 'validation')]
    self.assertCountEqual([b'cat', b'dog', b'zebra'], classes)

  def test_rgb_jpegs_are_kept_byte_for_byte(self):
    self.convert()
    with open(os.path.join(self.image_dir, 'cat', 'c1.jpg'), 'rb') as source:
      original = source.read()
    encoded = [_feature(example, 'image/encoded')[0]
               for split in ('train', 'validation')
               for example in _read_split(self.output_dir, split)]
    self.assertIn(original, encoded)

  def test_cmyk_jpeg_becomes_rgb(self):
    if Image is None:
      self.skipTest('Pillow is needed to write a CMYK JPEG')
    buffer = io.BytesIO()
    Image.fromarray(_random_image(16, 24, 3, seed=7)).convert('CMYK').save(
        buffer, 'JPEG')
    _save(os.path.join(self.image_dir, 'cat', 'cmyk.jpg'), buffer.getvalue())
    self.convert(validation_fraction=0.0)
    for example in _read_split(self.output_dir, 'train'):
      if _feature(example, 'image/filename') == [b'cmyk.jpg']:
        encoded = _feature(example, 'image/encoded')[0]
        self.assertAllEqual([16, 24, 3], tf.image.extract_jpeg_shape(encoded))
        return
    self.fail('cmyk.jpg was not converted')

  def test_unreadable_image_is_skipped_and_reported(self):
    broken = os.path.join(self.image_dir, 'dog', 'broken.jpg')
    _save(broken, b'\xff\xd8\xff garbage')
    result = self.convert(validation_fraction=0.0)
    self.assertEqual([broken], [path for path, _ in result.skipped])
    self.assertEqual(9, result.split_counts['train'])
    self.assertIn('skipped 1 unreadable images', converter._summary(result))

  def test_separate_validation_dir(self):
    validation_dir = self.create_tempdir('validation').full_path
    _save(os.path.join(validation_dir, 'zebra', 'v1.png'),
          _png(_random_image(8, 8, 3, seed=1)))
    result = self.convert(validation_dir=validation_dir)
    self.assertEqual({'train': 9, 'validation': 1}, result.split_counts)
    validation = _read_split(self.output_dir, 'validation')
    self.assertEqual([3], _feature(validation[0], 'image/class/label'))

  def test_validation_dir_with_unknown_class(self):
    validation_dir = self.create_tempdir('validation').full_path
    _save(os.path.join(validation_dir, 'horse', 'v1.png'),
          _png(_random_image(8, 8, 3, seed=1)))
    with self.assertRaisesRegex(converter.ConversionError, 'e.g. horse'):
      self.convert(validation_dir=validation_dir)

  def test_rerun_is_a_no_op_and_changes_rebuild(self):
    self.convert()
    shard = os.path.join(self.output_dir, 'train-00000-of-00002')
    modified = os.path.getmtime(shard)
    again = self.convert()
    self.assertTrue(again.already_complete)
    self.assertEqual({'train': 6, 'validation': 3}, again.split_counts)
    self.assertEqual(modified, os.path.getmtime(shard))
    # Different shard counts: the old shards must not linger beside the new.
    rebuilt = self.convert(train_shards=3)
    self.assertFalse(rebuilt.already_complete)
    self.assertEqual(
        ['train-00000-of-00003', 'train-00001-of-00003',
         'train-00002-of-00003', 'validation-00000-of-00001'],
        _shard_names(self.output_dir))
    # New images also force a rebuild.
    _save(os.path.join(self.image_dir, 'cat', 'c4.png'),
          _png(_random_image(8, 8, 3, seed=2)))
    self.assertFalse(self.convert(train_shards=3).already_complete)

  def test_interrupted_run_is_redone(self):
    self.convert()
    os.remove(os.path.join(self.output_dir, 'train-00001-of-00002'))
    result = self.convert()
    self.assertFalse(result.already_complete)
    self.assertIn('train-00001-of-00002', _shard_names(self.output_dir))

  def test_input_errors(self):
    missing = os.path.join(self.image_dir, 'missing')
    with self.assertRaisesRegex(converter.ConversionError,
                                'missing does not exist'):
      converter.convert_folder(missing, self.output_dir)
    empty = self.create_tempdir('empty').full_path
    with self.assertRaisesRegex(converter.ConversionError,
                                'no class sub-folders'):
      converter.convert_folder(empty, self.output_dir)
    os.mkdir(os.path.join(empty, 'cat'))
    with self.assertRaisesRegex(converter.ConversionError, 'no images'):
      converter.convert_folder(empty, self.output_dir)

  def test_command_line_error_is_one_line(self):
    process = subprocess.run(
        [sys.executable, converter.__file__, '--image_dir=/no/such/dir',
         '--output_dir=' + self.output_dir],
        capture_output=True, text=True, check=False)
    self.assertEqual(1, process.returncode)
    self.assertEqual(
        'build_imagenet_tfrecords: error: --image_dir /no/such/dir does not '
        'exist', process.stderr.strip())


def _top_level_files(directory):
  """Name -> bytes of the files directly in directory (not its sub-folders)."""
  files = {}
  for name in os.listdir(directory):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      with open(path, 'rb') as data:
        files[name] = data.read()
  return files


def _count_records(output_dir, split):
  return sum(1 for path in tf.io.gfile.glob(
      os.path.join(output_dir, '%s-*-of-*' % split))
             for _ in tf.compat.v1.io.tf_record_iterator(path))


def _labels_by_filename(output_dir, split):
  return {_feature(example, 'image/filename')[0]:
              _feature(example, 'image/class/label')[0]
          for example in _read_split(output_dir, split)}


class _BinaryTestCase(tf.test.TestCase):
  """Builds an image folder and runs the converter binary on it."""

  def setUp(self):
    super().setUp()
    self.image_dir = self.create_tempdir('images').full_path
    self.output_dir = os.path.join(self.create_tempdir().full_path, 'records')
    for class_index, class_name in enumerate(['ant', 'bee', 'cow']):
      for image_index in range(5):
        _save(os.path.join(self.image_dir, class_name, '%s%d.jpg' %
                           (class_name, image_index)),
              _jpeg(_random_image(12, 16, 3, seed=class_index * 10 +
                                  image_index)))
    # 4 train and 2 validation shards, with the same names in both
    # conversions: the hard case for replacing one by the other.
    self.flags = ['--image_dir=' + self.image_dir,
                  '--output_dir=' + self.output_dir, '--train_shards=4',
                  '--validation_shards=2', '--validation_fraction=0.2',
                  '--num_workers=2']

  def convert_in_process(self, seed):
    return converter.convert_folder(
        self.image_dir, self.output_dir, validation_fraction=0.2,
        train_shards=4, validation_shards=2, num_workers=2, seed=seed,
        show_progress=False)

  def run_binary(self, *extra_flags, signal_at=None):
    """Runs the converter; signal_at is NAME:EVENT:N for the test hook."""
    environment = dict(os.environ)
    environment.pop(converter.TEST_SIGNAL_ENV, None)
    if signal_at:
      environment[converter.TEST_SIGNAL_ENV] = signal_at
    return subprocess.run(
        [sys.executable, converter.__file__] + self.flags + list(extra_flags),
        capture_output=True, text=True, check=False, env=environment)

  def assert_readable_as(self, expected_files, expected_counts,
                         expected_labels):
    """The output holds exactly these files, and they read as expected."""
    self.assertEqual(expected_files, _top_level_files(self.output_dir))
    for split, count in expected_counts.items():
      self.assertEqual(count, _count_records(self.output_dir, split))
      self.assertEqual(count,
                       records.num_examples(self.output_dir, split))
      self.assertEqual(expected_labels[split],
                       _labels_by_filename(self.output_dir, split))

  @property
  def staging_dir(self):
    return os.path.join(self.output_dir, converter.STAGING_DIRNAME)


class InterruptedRebuildTest(_BinaryTestCase):

  def test_sigkill_anywhere_keeps_a_readable_dataset_and_rerun_completes(self):
    old = self.convert_in_process(seed=0)
    old_files = _top_level_files(self.output_dir)
    old_labels = {split: _labels_by_filename(self.output_dir, split)
                  for split in old.split_counts}
    # Another seed is another conversion: a different split and order.
    # Killed with the 4 train and 1 of the 2 validation shards staged, then
    # (the rerun first discarding that) with all of it staged and committed.
    for point in ('KILL:staged:5', 'KILL:committed:1'):
      process = self.run_binary('--seed=1', signal_at=point)
      self.assertEqual(-signal.SIGKILL, process.returncode, process.stderr)
      self.assert_readable_as(old_files, old.split_counts, old_labels)
    self.assertIn('Removing what an interrupted run left', process.stdout)
    # Killed after the commit: the staging directory holds the new dataset.
    new_files = _top_level_files(self.staging_dir)
    new_counts = json.loads(
        new_files[converter.COMPLETION_FILENAME])['split_counts']
    new_labels = {split: _labels_by_filename(self.staging_dir, split)
                  for split in new_counts}

    # Stopped while the files move: old marker, shards and labels out, then
    # the new ones in, the marker last. Each rerun finishes the move it finds
    # and counts its moves from 1. A split is then one conversion's complete
    # shard set or refused as incomplete, never a silent mix of two.
    def shards_of(files, split):
      return {name: data for name, data in files.items()
              if name.startswith(split + '-')}

    self.assertEqual(set(shards_of(old_files, 'train')),
                     set(shards_of(new_files, 'train')))
    for split in ('train', 'validation'):
      self.assertNotEqual(shards_of(old_files, split),
                          shards_of(new_files, split))
    for point, expected_train, expected_validation, expected_present in (
        # The old marker and 2 of the old train shards moved out.
        ('TERM:moved:3', 'refused', 'old',
         ['train-00002-of-00004', 'train-00003-of-00004',
          'validation-00000-of-00002', 'validation-00001-of-00002',
          'labels.txt']),
        # Then the other 5 old files out and the 4 new train shards in.
        ('KILL:moved:9', 'new', 'refused',
         ['train-0000%d-of-00004' % shard for shard in range(4)])):
      process = self.run_binary('--seed=1', signal_at=point)
      if point.startswith('KILL'):
        self.assertEqual(-signal.SIGKILL, process.returncode, process.stderr)
      else:
        self.assertEqual(128 + signal.SIGTERM, process.returncode)
        self.assertEqual(
            'build_imagenet_tfrecords: interrupted (SIGTERM) while moving '
            'the finished conversion into %s; rerun the same command to '
            'finish the move' % self.output_dir, process.stderr.strip())
      present = _top_level_files(self.output_dir)
      self.assertCountEqual(expected_present, present)
      for split, expected in (('train', expected_train),
                              ('validation', expected_validation)):
        if expected == 'refused':
          with self.assertRaises(records.DatasetError):
            records.list_split_files(self.output_dir, split)
        else:
          self.assertEqual(
              shards_of(old_files if expected == 'old' else new_files, split),
              shards_of(present, split))
          self.assertEqual(
              (old.split_counts if expected == 'old' else new_counts)[split],
              records.num_examples(self.output_dir, split))

    process = self.run_binary('--seed=1')
    self.assertEqual(0, process.returncode, process.stderr)
    self.assertIn('Finishing the move', process.stdout)
    self.assertIn('already holds this conversion', process.stdout)
    self.assertFalse(os.path.exists(self.staging_dir))
    new = self.convert_in_process(seed=1)
    self.assertTrue(new.already_complete)
    self.assertEqual(new_counts, new.split_counts)
    self.assert_readable_as(new_files, new_counts, new_labels)

  def test_sigint_says_one_line_and_leaves_nothing_behind(self):
    self.convert_in_process(seed=0)
    old_files = _top_level_files(self.output_dir)
    process = self.run_binary('--seed=1', signal_at='INT:staged:3')
    self.assertEqual(128 + signal.SIGINT, process.returncode)
    self.assertEqual(
        'build_imagenet_tfrecords: interrupted (SIGINT); %s is as it was '
        'before this run' % self.output_dir, process.stderr.strip())
    self.assertEqual(old_files, _top_level_files(self.output_dir))
    self.assertFalse(os.path.exists(self.staging_dir))


class ForeignDatasetTest(_BinaryTestCase):

  def setUp(self):
    super().setUp()
    # A dataset another tool wrote: shards and labels, no marker of ours.
    os.makedirs(self.output_dir)
    for split in ('train', 'validation'):
      with tf.io.TFRecordWriter(os.path.join(
          self.output_dir, '%s-00000-of-00001' % split)) as writer:
        writer.write(b'not ours')
    _save(os.path.join(self.output_dir, 'labels.txt'), b'1:theirs\n')
    self.foreign_files = _top_level_files(self.output_dir)

  def test_refused_in_one_line_and_replaced_with_overwrite(self):
    process = self.run_binary()
    self.assertEqual(1, process.returncode)
    self.assertEqual(
        'build_imagenet_tfrecords: error: %s holds 3 dataset files that '
        'build_imagenet_tfrecords did not write (e.g. train-00000-of-00001; '
        'no conversion_complete.json lists them); pass --overwrite to '
        'replace them or choose another --output_dir' % self.output_dir,
        process.stderr.strip())
    self.assertEqual(self.foreign_files, _top_level_files(self.output_dir))

    process = self.run_binary('--overwrite')
    self.assertEqual(0, process.returncode, process.stderr)
    self.assertEqual(
        ['conversion_complete.json', 'labels.txt'] +
        ['train-0000%d-of-00004' % shard for shard in range(4)] +
        ['validation-00000-of-00002', 'validation-00001-of-00002'],
        sorted(_top_level_files(self.output_dir)))
    self.assertEqual({'train': 12, 'validation': 3},
                     {split: _count_records(self.output_dir, split)
                      for split in ('train', 'validation')})

  def test_a_foreign_shard_among_ours_is_refused(self):
    for name in self.foreign_files:
      os.remove(os.path.join(self.output_dir, name))
    self.convert_in_process(seed=0)
    stray = os.path.join(self.output_dir, 'train-00000-of-00001')
    _save(stray, b'not ours')
    with self.assertRaisesRegex(converter.ConversionError,
                                'e.g. train-00000-of-00001'):
      self.convert_in_process(seed=1)
    self.assertTrue(os.path.exists(stray))

  def test_older_marker_with_full_paths_counts_as_ours(self):
    for name in self.foreign_files:
      os.remove(os.path.join(self.output_dir, name))
    self.convert_in_process(seed=0)
    marker_path = os.path.join(self.output_dir, 'conversion_complete.json')
    with open(marker_path) as marker_file:
      marker = json.load(marker_file)
    marker['shard_files'] = {
        split: [os.path.join('/elsewhere', name) for name in names]
        for split, names in marker['shard_files'].items()}
    del marker['config']['inputs']
    with open(marker_path, 'w') as marker_file:
      json.dump(marker, marker_file)
    self.assertFalse(self.convert_in_process(seed=0).already_complete)


class ChangedInputsTest(_BinaryTestCase):

  def test_images_edited_in_place_force_a_rebuild(self):
    self.convert_in_process(seed=0)
    path = os.path.join(self.image_dir, 'bee', 'bee2.jpg')
    status = os.stat(path)
    # Same content, newer modification time (e.g. touched or copied over).
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    self.assertFalse(self.convert_in_process(seed=0).already_complete)
    self.assertTrue(self.convert_in_process(seed=0).already_complete)
    # New content of another size, the modification time put back.
    status = os.stat(path)
    edited = _jpeg(_random_image(20, 30, 3, seed=99))
    _save(path, edited)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    self.assertFalse(self.convert_in_process(seed=0).already_complete)
    encoded = [_feature(example, 'image/encoded')[0]
               for split in ('train', 'validation')
               for example in _read_split(self.output_dir, split)]
    self.assertIn(edited, encoded)

  def test_marker_counts_are_the_records_written(self):
    _save(os.path.join(self.image_dir, 'cow', 'broken.jpg'), b'\xff\xd8 bad')
    result = self.convert_in_process(seed=0)
    self.assertLen(result.skipped, 1)
    with open(os.path.join(self.output_dir,
                           'conversion_complete.json')) as marker_file:
      recorded = json.load(marker_file)['split_counts']
    written = {split: _count_records(self.output_dir, split)
               for split in ('train', 'validation')}
    # 16 files, 20% of each class held out, one unreadable.
    self.assertEqual(15, sum(written.values()))
    self.assertEqual(written, recorded)
    self.assertEqual(written['train'],
                     records.num_examples(self.output_dir, 'train'))


class ImageNetLayoutTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.train_dir = self.create_tempdir('train').full_path
    self.validation_dir = self.create_tempdir('val').full_path
    self.output_dir = self.create_tempdir('records').full_path
    self.synsets = ['n01440764', 'n01443537', 'n01484850']
    for index, synset in enumerate(self.synsets):
      for image_index in range(2):
        _save(os.path.join(self.train_dir, synset,
                           '%s_%d.JPEG' % (synset, image_index)),
              _jpeg(_random_image(10, 12, 3, seed=index * 2 + image_index)))
    # Validation images are flat; the labels list them in sorted order.
    self.validation_synsets = ['n01484850', 'n01440764', 'n01484850',
                               'n01443537']
    for index in range(len(self.validation_synsets)):
      _save(os.path.join(self.validation_dir,
                         'ILSVRC2012_val_%08d.JPEG' % (index + 1)),
            _jpeg(_random_image(9, 9, 3, seed=100 + index)))

  def write_labels(self, lines):
    path = os.path.join(self.create_tempdir().full_path, 'val_labels.txt')
    with open(path, 'w') as labels_file:
      labels_file.write('\n'.join(lines) + '\n')
    return path

  def check_validation_labels(self, labels_path, metadata_path=None):
    result = converter.convert_folder(
        self.train_dir, self.output_dir, validation_dir=self.validation_dir,
        imagenet_validation_labels=labels_path,
        imagenet_metadata=metadata_path, num_workers=2, show_progress=False)
    self.assertEqual({'train': 6, 'validation': 4}, result.split_counts)
    labels_by_name = {
        _feature(example, 'image/filename')[0].decode():
            _feature(example, 'image/class/label')[0]
        for example in _read_split(self.output_dir, 'validation')
    }
    expected = {
        'ILSVRC2012_val_%08d.JPEG' % (index + 1):
            self.synsets.index(synset) + 1
        for index, synset in enumerate(self.validation_synsets)
    }
    self.assertEqual(expected, labels_by_name)
    for example in _read_split(self.output_dir, 'train'):
      synset = _feature(example, 'image/filename')[0].decode()[:9]
      self.assertEqual([self.synsets.index(synset) + 1],
                       _feature(example, 'image/class/label'))
    with open(os.path.join(self.output_dir, 'labels.txt')) as labels_file:
      return labels_file.read()

  def test_one_synset_per_line(self):
    labels_text = self.check_validation_labels(
        self.write_labels(self.validation_synsets))
    self.assertEqual('1:n01440764\n2:n01443537\n3:n01484850\n', labels_text)

  def test_filename_synset_pairs_with_header(self):
    lines = ['ImageId,PredictionString'] + [
        'ILSVRC2012_val_%08d,%s 1 2 3 4' % (index + 1, synset)
        for index, synset in reversed(list(enumerate(self.validation_synsets)))
    ]
    self.check_validation_labels(self.write_labels(lines))

  def test_metadata_gives_readable_names(self):
    metadata = self.write_labels(['n01440764\ttench, Tinca tinca',
                                  'n01443537\tgoldfish',
                                  'n01484850\tgreat white shark'])
    labels_text = self.check_validation_labels(
        self.write_labels(self.validation_synsets), metadata)
    self.assertEqual('1:tench, Tinca tinca\n2:goldfish\n3:great white shark\n',
                     labels_text)

  def test_label_count_mismatch(self):
    with self.assertRaisesRegex(converter.ConversionError,
                                'has 3 synsets but the validation folder has '
                                '4 images'):
      converter.convert_folder(
          self.train_dir, self.output_dir, validation_dir=self.validation_dir,
          imagenet_validation_labels=self.write_labels(
              self.validation_synsets[:3]),
          show_progress=False)


class SampleDigitsTest(tf.test.TestCase):

  def test_sample_digits(self):
    output_dir = self.create_tempdir().full_path
    result = converter.write_sample_digits(output_dir, seed=3, num_workers=2,
                                           show_progress=False)
    self.assertEqual(1797, sum(result.split_counts.values()))
    self.assertBetween(result.split_counts['validation'], 340, 380)
    self.assertEqual(['digit_%d' % digit for digit in range(10)],
                     result.class_names)
    self.assertEqual(11, result.num_classes)
    for split in ('train', 'validation'):
      examples = _read_split(output_dir, split)
      self.assertLen(examples, result.split_counts[split])
      self.assertCountEqual(
          range(1, 11),
          {_feature(example, 'image/class/label')[0] for example in examples})
    image = tf.io.decode_jpeg(_feature(examples[0], 'image/encoded')[0])
    self.assertEqual((64, 64, 3), image.shape)
    # Coloured, not grey: the channels differ.
    channels = tf.cast(image, tf.int32)
    self.assertGreater(
        float(tf.reduce_max(tf.abs(channels[..., 0] - channels[..., 2]))), 20)
    self.assertTrue(converter.write_sample_digits(
        output_dir, seed=3, show_progress=False).already_complete)


if __name__ == '__main__':
  tf.test.main()
