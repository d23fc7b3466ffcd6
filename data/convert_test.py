"""Tests for convert: class folders in, slim-format records out.

The written records are read back with plain tf.train.Example parsing, not
with records, so that the converter is checked against the format.
"""

import io
import os

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import convert
from data import sources
from testing import conversion_checks as checks
from testing import test_data

try:
  from PIL import Image  # pylint: disable=g-import-not-at-top
except ImportError:
  Image = None


class ConvertFolderTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.image_dir = self.create_tempdir('images').full_path
    self.output_dir = os.path.join(self.create_tempdir().full_path, 'records')
    # Image name -> (height, width).
    self.sizes = checks.write_mixed_class_folders(self.image_dir)

  def convert(self, validation_fraction=0.34, validation_dir=None):
    return convert.convert_folder(
        convert.FolderSource(self.image_dir, validation_dir=validation_dir,
                             validation_fraction=validation_fraction),
        convert.ConversionOptions(self.output_dir, train_shards=2,
                                  validation_shards=1, num_workers=2,
                                  show_progress=False))

  def test_records_have_the_slim_format(self):
    result = self.convert()
    self.assertFalse(result.already_complete)
    self.assertEqual(['cat', 'dog', 'zebra'], result.class_names)
    self.assertEqual(4, result.num_classes)
    self.assertEqual({'train': 6, 'validation': 3}, result.split_counts)
    self.assertEqual(
        ['train-00000-of-00002', 'train-00001-of-00002',
         'validation-00000-of-00001'], checks.shard_names(self.output_dir))
    with open(os.path.join(self.output_dir, 'labels.txt')) as labels_file:
      self.assertEqual('1:cat\n2:dog\n3:zebra\n', labels_file.read())

    seen = []
    for split in ('train', 'validation'):
      examples = checks.read_split(self.output_dir, split)
      self.assertLen(examples, result.split_counts[split])
      for example in examples:
        for key in checks.REQUIRED_KEYS:
          self.assertIn(key, example.features.feature)
        name = checks.feature(example, 'image/filename')[0].decode()
        class_name = checks.feature(example, 'image/class/text')[0].decode()
        label = checks.feature(example, 'image/class/label')[0]
        self.assertEqual(['cat', 'dog', 'zebra'].index(class_name) + 1, label)
        self.assertEqual(class_name[0], name[0])
        self.assertEqual([b'JPEG'], checks.feature(example, 'image/format'))
        self.assertEqual([], checks.feature(example, 'image/object/bbox/xmin'))
        encoded = checks.feature(example, 'image/encoded')[0]
        self.assertTrue(tf.io.is_jpeg(encoded))
        self.assertAllEqual(list(self.sizes[name]) + [3],
                            tf.image.extract_jpeg_shape(encoded))
        self.assertEqual(list(self.sizes[name]),
                         checks.feature(example, 'image/height') +
                         checks.feature(example, 'image/width'))
        seen.append(name)
    self.assertCountEqual(self.sizes, seen)

  def test_validation_holds_out_every_class(self):
    self.convert()
    classes = [checks.feature(example, 'image/class/text')[0]
               for example in checks.read_split(self.output_dir,
                                                'validation')]
    self.assertCountEqual([b'cat', b'dog', b'zebra'], classes)

  def test_rgb_jpegs_are_kept_byte_for_byte(self):
    self.convert()
    with open(os.path.join(self.image_dir, 'cat', 'c1.jpg'), 'rb') as source:
      original = source.read()
    encoded = [checks.feature(example, 'image/encoded')[0]
               for split in ('train', 'validation')
               for example in checks.read_split(self.output_dir, split)]
    self.assertIn(original, encoded)

  def test_cmyk_jpeg_becomes_rgb(self):
    if Image is None:
      self.skipTest('Pillow is needed to write a CMYK JPEG')
    buffer = io.BytesIO()
    Image.fromarray(checks.random_image(16, 24, 3, seed=7)).convert(
        'CMYK').save(buffer, 'JPEG')
    checks.save(os.path.join(self.image_dir, 'cat', 'cmyk.jpg'),
                buffer.getvalue())
    self.convert(validation_fraction=0.0)
    for example in checks.read_split(self.output_dir, 'train'):
      if checks.feature(example, 'image/filename') == [b'cmyk.jpg']:
        encoded = checks.feature(example, 'image/encoded')[0]
        self.assertAllEqual([16, 24, 3], tf.image.extract_jpeg_shape(encoded))
        return
    self.fail('cmyk.jpg was not converted')

  def test_unreadable_image_is_skipped_and_reported(self):
    broken = os.path.join(self.image_dir, 'dog', 'broken.jpg')
    checks.save(broken, b'\xff\xd8\xff garbage')
    result = self.convert(validation_fraction=0.0)
    self.assertEqual([broken], [path for path, _ in result.skipped])
    self.assertEqual(9, result.split_counts['train'])
    self.assertIn('skipped 1 unreadable images', result.summary())

  def test_separate_validation_dir(self):
    validation_dir = self.create_tempdir('validation').full_path
    checks.save(os.path.join(validation_dir, 'zebra', 'v1.png'),
                test_data.encode_png(checks.random_image(8, 8, 3, seed=1)))
    result = self.convert(validation_dir=validation_dir)
    self.assertEqual({'train': 9, 'validation': 1}, result.split_counts)
    validation = checks.read_split(self.output_dir, 'validation')
    self.assertEqual([3], checks.feature(validation[0], 'image/class/label'))

  def test_validation_dir_with_unknown_class(self):
    validation_dir = self.create_tempdir('validation').full_path
    checks.save(os.path.join(validation_dir, 'horse', 'v1.png'),
                test_data.encode_png(checks.random_image(8, 8, 3, seed=1)))
    with self.assertRaisesRegex(sources.ConversionError, 'e.g. horse'):
      self.convert(validation_dir=validation_dir)

  def test_input_errors(self):
    options = convert.ConversionOptions(self.output_dir)
    missing = os.path.join(self.image_dir, 'missing')
    with self.assertRaisesRegex(sources.ConversionError,
                                'missing does not exist'):
      convert.convert_folder(convert.FolderSource(missing), options)
    empty = self.create_tempdir('empty').full_path
    with self.assertRaisesRegex(sources.ConversionError,
                                'no class sub-folders'):
      convert.convert_folder(convert.FolderSource(empty), options)
    os.mkdir(os.path.join(empty, 'cat'))
    with self.assertRaisesRegex(sources.ConversionError, 'no images'):
      convert.convert_folder(convert.FolderSource(empty), options)


if __name__ == '__main__':
  tf.test.main()
