"""Tests for the build_imagenet_tfrecords binary, run as users run it.

The conversion itself is tested in data/*_test.py. Interruptions are tested
here, on the binary's main: a small driver runs it with an `on_event` hook
that makes the process signal itself at an exact point (after the N-th
staged shard, at the commit, after the N-th file moved into place), which a
signal from outside could only hit by chance.
"""

import json
import os
import signal
import subprocess
import sys

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

import build_imagenet_tfrecords
from data import convert
from data import records
from data import staging
from testing import conversion_checks as checks

BINARY = build_imagenet_tfrecords.__file__
# Runs the binary's main as `python build_imagenet_tfrecords.py FLAGS` does,
# except that its first argument, NAME:EVENT:N, makes the process send itself
# SIGNAME when the conversion reports EVENT for the N-th time.
_SIGNALLING_DRIVER = """
import functools
import signal
import sys

import build_imagenet_tfrecords
from runtime import cli

signal_name, wanted_event, count = sys.argv.pop(1).split(':')
seen = []


def signal_at(event):
  seen.append(event)
  if event == wanted_event and seen.count(event) == int(count):
    # Delivered to this thread before raise_signal returns.
    signal.raise_signal(signal.Signals['SIG' + signal_name])


cli.run(functools.partial(build_imagenet_tfrecords.main, on_event=signal_at))
"""


class CommandLineTest(tf.test.TestCase):

  def test_command_line_error_is_one_line(self):
    output_dir = os.path.join(self.create_tempdir().full_path, 'records')
    process = subprocess.run(
        [sys.executable, BINARY, '--image_dir=/no/such/dir',
         '--output_dir=' + output_dir],
        capture_output=True, text=True, check=False)
    self.assertEqual(1, process.returncode)
    self.assertEqual(
        'build_imagenet_tfrecords: error: --image_dir /no/such/dir does not '
        'exist', process.stderr.strip())


class _BinaryTestCase(tf.test.TestCase):
  """Builds an image folder and runs the converter binary on it."""

  def setUp(self):
    super().setUp()
    self.image_dir = self.create_tempdir('images').full_path
    self.output_dir = os.path.join(self.create_tempdir().full_path, 'records')
    checks.write_animal_folders(self.image_dir)
    # 4 train and 2 validation shards, with the same names in both
    # conversions: the hard case for replacing one by the other.
    self.flags = ['--image_dir=' + self.image_dir,
                  '--output_dir=' + self.output_dir, '--train_shards=4',
                  '--validation_shards=2', '--validation_fraction=0.2',
                  '--num_workers=2']

  def convert_in_process(self, seed):
    return convert.convert_folder(
        convert.FolderSource(self.image_dir, validation_fraction=0.2),
        convert.ConversionOptions(self.output_dir, train_shards=4,
                                  validation_shards=2, num_workers=2,
                                  seed=seed, show_progress=False))

  def run_binary(self, *extra_flags, signal_at=None):
    """Runs the converter; signal_at is NAME:EVENT:N for the driver."""
    if signal_at:
      command = [sys.executable, '-c', _SIGNALLING_DRIVER, signal_at]
    else:
      command = [sys.executable, BINARY]
    # The driver imports the binary from the root, as the binary does its
    # packages.
    return subprocess.run(
        command + self.flags + list(extra_flags), capture_output=True,
        text=True, check=False, cwd=os.path.dirname(os.path.abspath(BINARY)))

  def assert_readable_as(self, expected_files, expected_counts,
                         expected_labels):
    """The output holds exactly these files, and they read as expected."""
    self.assertEqual(expected_files, checks.top_level_files(self.output_dir))
    for split, count in expected_counts.items():
      self.assertEqual(count, checks.count_records(self.output_dir, split))
      self.assertEqual(count, records.num_examples(self.output_dir, split))
      self.assertEqual(expected_labels[split],
                       checks.labels_by_filename(self.output_dir, split))

  @property
  def staging_dir(self):
    return os.path.join(self.output_dir, staging.STAGING_DIRNAME)


class InterruptedRebuildTest(_BinaryTestCase):

  def test_sigkill_anywhere_keeps_a_readable_dataset_and_rerun_completes(self):
    old = self.convert_in_process(seed=0)
    old_files = checks.top_level_files(self.output_dir)
    old_labels = {split: checks.labels_by_filename(self.output_dir, split)
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
    new_files = checks.top_level_files(self.staging_dir)
    new_counts = json.loads(
        new_files[records.COMPLETION_FILENAME])['split_counts']
    new_labels = {split: checks.labels_by_filename(self.staging_dir, split)
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
      present = checks.top_level_files(self.output_dir)
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
    old_files = checks.top_level_files(self.output_dir)
    process = self.run_binary('--seed=1', signal_at='INT:staged:3')
    self.assertEqual(128 + signal.SIGINT, process.returncode)
    self.assertEqual(
        'build_imagenet_tfrecords: interrupted (SIGINT); %s is as it was '
        'before this run' % self.output_dir, process.stderr.strip())
    self.assertEqual(old_files, checks.top_level_files(self.output_dir))
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
    checks.save(os.path.join(self.output_dir, 'labels.txt'), b'1:theirs\n')
    self.foreign_files = checks.top_level_files(self.output_dir)

  def test_refused_in_one_line_and_replaced_with_overwrite(self):
    process = self.run_binary()
    self.assertEqual(1, process.returncode)
    self.assertEqual(
        'build_imagenet_tfrecords: error: %s holds 3 dataset files that '
        'build_imagenet_tfrecords did not write (e.g. train-00000-of-00001; '
        'no conversion_complete.json lists them); pass --overwrite to '
        'replace them or choose another --output_dir' % self.output_dir,
        process.stderr.strip())
    self.assertEqual(self.foreign_files,
                     checks.top_level_files(self.output_dir))

    process = self.run_binary('--overwrite')
    self.assertEqual(0, process.returncode, process.stderr)
    self.assertEqual(
        ['conversion_complete.json', 'labels.txt'] +
        ['train-0000%d-of-00004' % shard for shard in range(4)] +
        ['validation-00000-of-00002', 'validation-00001-of-00002'],
        sorted(checks.top_level_files(self.output_dir)))
    self.assertEqual({'train': 12, 'validation': 3},
                     {split: checks.count_records(self.output_dir, split)
                      for split in ('train', 'validation')})
    # The closing summary tells the model's --num_classes.
    self.assertIn('Wrote %s.' % self.output_dir, process.stdout)
    self.assertIn('3 classes, labels 1..3 in labels.txt (0 is the background '
                  'class): train and evaluate with --num_classes=4',
                  process.stdout)


if __name__ == '__main__':
  tf.test.main()
