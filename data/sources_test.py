"""Tests for sources: the official ImageNet layout and its label files."""

import os

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import convert
from data import sources
from testing import conversion_checks as checks
from testing import test_data


class ImageNetLayoutTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.train_dir = self.create_tempdir('train').full_path
    self.validation_dir = self.create_tempdir('val').full_path
    self.output_dir = self.create_tempdir('records').full_path
    self.synsets = ['n01440764', 'n01443537', 'n01484850']
    for index, synset in enumerate(self.synsets):
      for image_index in range(2):
        checks.save(os.path.join(self.train_dir, synset,
                                 '%s_%d.JPEG' % (synset, image_index)),
                    test_data.encode_jpeg(checks.random_image(
                        10, 12, 3, seed=index * 2 + image_index)))
    # Validation images are flat; the labels list them in sorted order.
    self.validation_synsets = ['n01484850', 'n01440764', 'n01484850',
                               'n01443537']
    for index in range(len(self.validation_synsets)):
      checks.save(os.path.join(self.validation_dir,
                               'ILSVRC2012_val_%08d.JPEG' % (index + 1)),
                  test_data.encode_jpeg(checks.random_image(
                      9, 9, 3, seed=100 + index)))

  def write_labels(self, lines):
    path = os.path.join(self.create_tempdir().full_path, 'val_labels.txt')
    with open(path, 'w') as labels_file:
      labels_file.write('\n'.join(lines) + '\n')
    return path

  def convert(self, labels_path, metadata_path=None):
    return convert.convert_folder(
        convert.FolderSource(self.train_dir,
                             validation_dir=self.validation_dir,
                             imagenet_validation_labels=labels_path,
                             imagenet_metadata=metadata_path),
        convert.ConversionOptions(self.output_dir, num_workers=2,
                                  show_progress=False))

  def check_validation_labels(self, labels_path, metadata_path=None):
    result = self.convert(labels_path, metadata_path)
    self.assertEqual({'train': 6, 'validation': 4}, result.split_counts)
    labels_by_name = {
        checks.feature(example, 'image/filename')[0].decode():
            checks.feature(example, 'image/class/label')[0]
        for example in checks.read_split(self.output_dir, 'validation')
    }
    expected = {
        'ILSVRC2012_val_%08d.JPEG' % (index + 1):
            self.synsets.index(synset) + 1
        for index, synset in enumerate(self.validation_synsets)
    }
    self.assertEqual(expected, labels_by_name)
    for example in checks.read_split(self.output_dir, 'train'):
      synset = checks.feature(example, 'image/filename')[0].decode()[:9]
      self.assertEqual([self.synsets.index(synset) + 1],
                       checks.feature(example, 'image/class/label'))
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
    with self.assertRaisesRegex(sources.ConversionError,
                                'has 3 synsets but the validation folder has '
                                '4 images'):
      self.convert(self.write_labels(self.validation_synsets[:3]))


if __name__ == '__main__':
  tf.test.main()
