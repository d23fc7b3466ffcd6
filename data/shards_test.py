"""Tests for shards: write_split's shard boundaries, events and skips."""

import os

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import shards
from data import sources
from testing import conversion_checks as checks
from testing import test_data


class WriteSplitTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    image_dir = self.create_tempdir('images').full_path
    self.directory = self.create_tempdir('shards').full_path
    self.sources = []
    for index in range(5):
      path = os.path.join(image_dir, 'image%d.png' % index)
      checks.save(path, test_data.encode_png(
          checks.random_image(6, 8, 3, seed=index)))
      self.sources.append(sources.ImageSource(path, index % 2 + 1, 'class'))
    self.broken = self.sources[2].path
    checks.save(self.broken, b'not an image')

  def test_sources_fill_the_shards_in_order_and_unreadable_ones_are_skipped(
      self):
    skipped, events, images_done = [], [], []
    names, written = shards.write_split(
        self.directory, 'train', self.sources, 3, 2, skipped,
        lambda: images_done.append(1), events.append)
    expected_names = ['train-%05d-of-00003' % shard for shard in range(3)]
    self.assertEqual(expected_names, names)
    self.assertEqual(['staged'] * 3, events)
    self.assertLen(images_done, 5)
    self.assertEqual(4, written)
    self.assertEqual([self.broken], [path for path, _ in skipped])
    self.assertTrue(skipped[0][1])
    # np.linspace bounds: source 0, sources 1-2 (2 unreadable), sources
    # 3-4; nothing else (no temporary file) is left.
    self.assertCountEqual(expected_names, os.listdir(self.directory))
    self.assertEqual(
        [[b'image0.png'], [b'image1.png'], [b'image3.png', b'image4.png']],
        [[checks.feature(tf.train.Example.FromString(record),
                         'image/filename')[0]
          for record in tf.compat.v1.io.tf_record_iterator(
              os.path.join(self.directory, name))]
         for name in names])

  def test_auto_num_shards(self):
    self.assertEqual(1, shards.auto_num_shards(1))
    self.assertEqual(1, shards.auto_num_shards(shards.IMAGES_PER_AUTO_SHARD))
    self.assertEqual(2,
                     shards.auto_num_shards(shards.IMAGES_PER_AUTO_SHARD + 1))
    self.assertEqual(shards.MAX_AUTO_SHARDS, shards.auto_num_shards(10**9))


if __name__ == '__main__':
  tf.test.main()
