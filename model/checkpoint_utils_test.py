"""Tests finding, checking and locking checkpoint directories."""

import os
import shutil
import time

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from model import checkpoint_utils
from testing import test_data

tf1 = tf.compat.v1


def save_checkpoints(directory, steps, value=1.0):
  """Saves a checkpoint of one variable `v` = value at each step.

  TensorFlow's default Saver records absolute paths in the state file, as
  older runs of the trainer did.
  """
  with tf.Graph().as_default():
    variable = tf1.get_variable('v', [1000])
    global_step = tf1.train.get_or_create_global_step()
    saver = tf1.train.Saver()
    with tf1.Session() as session:
      session.run(tf1.global_variables_initializer())
      session.run(variable.assign(tf.fill([1000], value)))
      for step in steps:
        session.run(global_step.assign(step))
        saver.save(session, os.path.join(directory, 'model.ckpt'),
                   global_step=step)


def step_of(prefix):
  return int(prefix.rsplit('-', 1)[1])


class FindTest(tf.test.TestCase):

  def test_moved_directory_resolves_to_its_own_files(self):
    original = os.path.join(self.get_temp_dir(), 'original')
    save_checkpoints(original, [1, 2])
    with open(os.path.join(original, 'checkpoint')) as f:
      self.assertIn(original, f.read())  # absolute paths
    moved = os.path.join(self.get_temp_dir(), 'moved')
    os.rename(original, moved)
    # TensorFlow's own lookup finds nothing: the recorded paths are gone.
    self.assertIsNone(tf.train.latest_checkpoint(moved))
    self.assertEqual(checkpoint_utils.checkpoints_in(moved),
                     [os.path.join(moved, 'model.ckpt-1'),
                      os.path.join(moved, 'model.ckpt-2')])
    self.assertEqual(checkpoint_utils.resolve(moved),
                     os.path.join(moved, 'model.ckpt-2'))

  def test_copied_directory_prefers_its_own_files(self):
    original = os.path.join(self.get_temp_dir(), 'source')
    save_checkpoints(original, [5], value=1.0)
    copy = os.path.join(self.get_temp_dir(), 'copy')
    shutil.copytree(original, copy)
    save_checkpoints(original, [5], value=2.0)  # the source moves on
    latest = checkpoint_utils.latest_checkpoint(copy)
    self.assertEqual(latest, os.path.join(copy, 'model.ckpt-5'))
    self.assertAllEqual(tf.train.load_checkpoint(latest).get_tensor('v'),
                        np.ones(1000))

  def test_without_state_file_lists_by_step(self):
    directory = os.path.join(self.get_temp_dir(), 'stateless')
    save_checkpoints(directory, [3, 20, 100])
    os.remove(os.path.join(directory, 'checkpoint'))
    self.assertEqual([step_of(p) for p in
                      checkpoint_utils.checkpoints_in(directory)],
                     [3, 20, 100])

  def test_empty_directory(self):
    self.assertIsNone(checkpoint_utils.latest_checkpoint(self.get_temp_dir()))
    with self.assertRaisesRegex(checkpoint_utils.CheckpointError,
                                'no checkpoint'):
      checkpoint_utils.resolve(self.get_temp_dir())


class DamageTest(tf.test.TestCase):

  def test_truncated_data_is_named(self):
    directory = os.path.join(self.get_temp_dir(), 'truncated')
    save_checkpoints(directory, [1])
    prefix = os.path.join(directory, 'model.ckpt-1')
    self.assertIsNone(checkpoint_utils.damage(prefix))
    data = test_data.truncate_checkpoint_data(prefix)
    self.assertIn(data, checkpoint_utils.damage(prefix))

  def test_corrupted_data_is_named(self):
    directory = os.path.join(self.get_temp_dir(), 'corrupted')
    save_checkpoints(directory, [1])
    prefix = os.path.join(directory, 'model.ckpt-1')
    data = prefix + '.data-00000-of-00001'
    with open(data, 'r+b') as f:  # same length, other bytes
      f.seek(100)
      f.write(b'\xff' * 16)
    self.assertIn(data, checkpoint_utils.damage(prefix))

  def test_resume_skips_damaged_latest_and_rewrites_state(self):
    directory = os.path.join(self.get_temp_dir(), 'resume')
    save_checkpoints(directory, [10, 20, 30])
    data = test_data.truncate_checkpoint_data(
        os.path.join(directory, 'model.ckpt-30'))
    resume, skipped = checkpoint_utils.prepare_resume(directory)
    self.assertEqual(resume, os.path.join(directory, 'model.ckpt-20'))
    (skipped_prefix, why), = skipped
    self.assertEqual(skipped_prefix, os.path.join(directory, 'model.ckpt-30'))
    self.assertIn(data, why)
    self.assertTrue(os.path.exists(data))  # left for the user
    # TensorFlow's own restore now finds the intact one, by relative path.
    self.assertEqual(tf.train.latest_checkpoint(directory), resume)
    with open(os.path.join(directory, 'checkpoint')) as f:
      state = f.read()
    self.assertNotIn(directory, state)
    self.assertIn('"model.ckpt-10"', state)

  def test_resume_refuses_when_nothing_reads_back(self):
    directory = os.path.join(self.get_temp_dir(), 'hopeless')
    save_checkpoints(directory, [1])
    test_data.truncate_checkpoint_data(
        os.path.join(directory, 'model.ckpt-1'))
    with self.assertRaisesRegex(checkpoint_utils.CheckpointError,
                                'model.ckpt-1: its data file'):
      checkpoint_utils.prepare_resume(directory)

  def test_resume_of_empty_directory(self):
    self.assertEqual(checkpoint_utils.prepare_resume(self.get_temp_dir()),
                     (None, []))


class IteratorTest(tf.test.TestCase):

  def test_yields_each_new_checkpoint_then_times_out(self):
    directory = os.path.join(self.get_temp_dir(), 'watched')
    save_checkpoints(directory, [1])
    iterator = checkpoint_utils.checkpoints_iterator(directory, timeout=2,
                                                     poll_secs=0.1)
    self.assertEqual(step_of(next(iterator)), 1)
    save_checkpoints(directory, [2])
    self.assertEqual(step_of(next(iterator)), 2)
    start = time.time()
    self.assertEqual(list(iterator), [])
    self.assertGreaterEqual(time.time() - start, 2)


if __name__ == '__main__':
  tf.test.main()
