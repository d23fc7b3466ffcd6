"""Tests for staging: re-runs, changed inputs and datasets we did not write.

Interruptions at exact points are tested on the binary as users run it, in
build_imagenet_tfrecords_test.
"""

import json
import os

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import convert
from data import records
from data import sources
from data import staging
from testing import conversion_checks as checks
from testing import test_data


class RerunTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.image_dir = self.create_tempdir('images').full_path
    self.output_dir = os.path.join(self.create_tempdir().full_path, 'records')
    checks.write_mixed_class_folders(self.image_dir)

  def convert(self, train_shards=2):
    return convert.convert_folder(
        convert.FolderSource(self.image_dir, validation_fraction=0.34),
        convert.ConversionOptions(self.output_dir, train_shards=train_shards,
                                  validation_shards=1, num_workers=2,
                                  show_progress=False))

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
        checks.shard_names(self.output_dir))
    # New images also force a rebuild.
    checks.save(os.path.join(self.image_dir, 'cat', 'c4.png'),
                test_data.encode_png(checks.random_image(8, 8, 3, seed=2)))
    self.assertFalse(self.convert(train_shards=3).already_complete)

  def test_interrupted_run_is_redone(self):
    self.convert()
    os.remove(os.path.join(self.output_dir, 'train-00001-of-00002'))
    result = self.convert()
    self.assertFalse(result.already_complete)
    self.assertIn('train-00001-of-00002', checks.shard_names(self.output_dir))

  def test_failure_while_staging_leaves_the_dataset_as_it_was(self):
    self.convert()
    old_files = checks.top_level_files(self.output_dir)

    def fail_at_second_shard(event):
      events.append(event)
      if events == ['staged', 'staged']:
        raise staging.Interrupted(2)

    events = []
    with self.assertRaises(staging.Interrupted) as raised:
      convert.convert_folder(
          convert.FolderSource(self.image_dir, validation_fraction=0.34),
          convert.ConversionOptions(self.output_dir, train_shards=3,
                                    num_workers=2, show_progress=False),
          on_event=fail_at_second_shard)
    self.assertFalse(raised.exception.while_moving)
    self.assertEqual(old_files, checks.top_level_files(self.output_dir))
    self.assertFalse(os.path.exists(
        os.path.join(self.output_dir, staging.STAGING_DIRNAME)))


class _AnimalFoldersTestCase(tf.test.TestCase):
  """Converts three classes of five images with a given seed."""

  def setUp(self):
    super().setUp()
    self.image_dir = self.create_tempdir('images').full_path
    self.output_dir = os.path.join(self.create_tempdir().full_path, 'records')
    checks.write_animal_folders(self.image_dir)

  def convert(self, seed):
    return convert.convert_folder(
        convert.FolderSource(self.image_dir, validation_fraction=0.2),
        convert.ConversionOptions(self.output_dir, train_shards=4,
                                  validation_shards=2, num_workers=2,
                                  seed=seed, show_progress=False))


class ForeignDatasetTest(_AnimalFoldersTestCase):

  def test_a_foreign_shard_among_ours_is_refused(self):
    self.convert(seed=0)
    stray = os.path.join(self.output_dir, 'train-00000-of-00001')
    checks.save(stray, b'not ours')
    with self.assertRaisesRegex(sources.ConversionError,
                                'e.g. train-00000-of-00001'):
      self.convert(seed=1)
    self.assertTrue(os.path.exists(stray))

  def test_older_marker_with_full_paths_counts_as_ours(self):
    self.convert(seed=0)
    marker_path = os.path.join(self.output_dir, 'conversion_complete.json')
    with open(marker_path) as marker_file:
      marker = json.load(marker_file)
    marker['shard_files'] = {
        split: [os.path.join('/elsewhere', name) for name in names]
        for split, names in marker['shard_files'].items()}
    del marker['config']['inputs']
    with open(marker_path, 'w') as marker_file:
      json.dump(marker, marker_file)
    self.assertFalse(self.convert(seed=0).already_complete)


class ChangedInputsTest(_AnimalFoldersTestCase):

  def test_images_edited_in_place_force_a_rebuild(self):
    self.convert(seed=0)
    path = os.path.join(self.image_dir, 'bee', 'bee2.jpg')
    status = os.stat(path)
    # Same content, newer modification time (e.g. touched or copied over).
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    self.assertFalse(self.convert(seed=0).already_complete)
    self.assertTrue(self.convert(seed=0).already_complete)
    # New content of another size, the modification time put back.
    status = os.stat(path)
    edited = test_data.encode_jpeg(checks.random_image(20, 30, 3, seed=99))
    checks.save(path, edited)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    self.assertFalse(self.convert(seed=0).already_complete)
    encoded = [checks.feature(example, 'image/encoded')[0]
               for split in ('train', 'validation')
               for example in checks.read_split(self.output_dir, split)]
    self.assertIn(edited, encoded)

  def test_marker_counts_are_the_records_written(self):
    checks.save(os.path.join(self.image_dir, 'cow', 'broken.jpg'),
                b'\xff\xd8 bad')
    result = self.convert(seed=0)
    self.assertLen(result.skipped, 1)
    with open(os.path.join(self.output_dir,
                           'conversion_complete.json')) as marker_file:
      recorded = json.load(marker_file)['split_counts']
    written = {split: checks.count_records(self.output_dir, split)
               for split in ('train', 'validation')}
    # 16 files, 20% of each class held out, one unreadable.
    self.assertEqual(15, sum(written.values()))
    self.assertEqual(written, recorded)
    self.assertEqual(written['train'],
                     records.num_examples(self.output_dir, 'train'))


if __name__ == '__main__':
  tf.test.main()
