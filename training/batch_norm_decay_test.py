"""Tests the batch norm decay rule and the record evaluation reads."""

import os

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from training import batch_norm_decay

tf1 = tf.compat.v1


def save_checkpoint(directory, step, decay=None, fine_tuned=False):
  """Saves a one-variable checkpoint whose graph records `decay`, if given."""
  with tf.Graph().as_default():
    tf1.get_variable('v', [2])
    global_step = tf1.train.get_or_create_global_step()
    if decay is not None:
      batch_norm_decay.record(decay, fine_tuned=fine_tuned)
    with tf1.Session() as session:
      session.run(tf1.global_variables_initializer())
      session.run(global_step.assign(step))
      return tf1.train.Saver().save(
          session, os.path.join(directory, 'model.ckpt'), global_step=step)


class ForStepsTest(tf.test.TestCase):

  def test_long_and_open_ended_runs_keep_imagenet_decay(self):
    for steps in (None, 33334, 10**6):
      self.assertEqual(batch_norm_decay.for_steps(steps), 0.9997)

  def test_short_runs_leave_negligible_initial_weight(self):
    for steps in (20, 150, 600, 5000, 33333):
      decay = batch_norm_decay.for_steps(steps)
      self.assertLess(decay, 0.9997)
      # The memory is a tenth of the run: the initial values weigh
      # (1 - 10/n)^n < e^-10 at its end.
      self.assertAlmostEqual(1 / (1 - decay), steps / 10, places=6)
      self.assertLess(decay ** steps, 4.6e-5)
    # slim's 0.9997 would leave 84% after the 600 steps.
    self.assertGreater(0.9997 ** 600, 0.83)

  def test_very_short_runs_use_batch_statistics(self):
    self.assertEqual(batch_norm_decay.for_steps(5), 0.0)

  def test_fine_tunes_remember_the_whole_run(self):
    for steps in (20, 300, 3333):
      decay = batch_norm_decay.for_steps(steps, fine_tuning=True)
      self.assertAlmostEqual(1 / (1 - decay), steps, places=4)
      # The checkpoint's averages weigh (1 - 1/n)^n at the end, which
      # rises towards e^-1 with n: 0.358 for 20 steps.
      self.assertBetween(decay ** steps, 0.358, np.exp(-1))
    for steps in (None, 3334, 10**6):
      self.assertEqual(batch_norm_decay.for_steps(steps, fine_tuning=True),
                       0.9997)

  def test_warns_only_when_averages_cannot_have_converged(self):
    directory = self.get_temp_dir()
    short = save_checkpoint(directory, 600, decay=0.9997)
    warning = batch_norm_decay.unconverged_warning(short, 600)
    self.assertIn('0.9997', warning)
    self.assertIn('84%', warning)
    self.assertIn('0.9833', warning)  # 1 - 10/600
    self.assertNotIn('\n', warning)

    fitted = save_checkpoint(directory, 601, decay=0.98)
    self.assertIsNone(batch_norm_decay.unconverged_warning(fitted, 601))

    # A fine-tune keeps part of its checkpoint's converged averages by
    # design: 37% after 300 steps is no sign of trouble there.
    fine_tune_decay = batch_norm_decay.for_steps(300, fine_tuning=True)
    fine_tuned = save_checkpoint(directory, 300, decay=fine_tune_decay,
                                 fine_tuned=True)
    self.assertIsNone(batch_norm_decay.unconverged_warning(fine_tuned, 300))
    from_scratch = save_checkpoint(directory, 300, decay=fine_tune_decay)
    self.assertIn('37%',
                  batch_norm_decay.unconverged_warning(from_scratch, 300))

  def test_no_record_no_warning(self):
    checkpoint = save_checkpoint(self.get_temp_dir(), 3)
    self.assertIsNone(batch_norm_decay.recorded(checkpoint))
    self.assertIsNone(batch_norm_decay.unconverged_warning(checkpoint, 3))
    os.remove(checkpoint + '.meta')
    self.assertIsNone(batch_norm_decay.recorded(checkpoint))

  def test_recorded_value_round_trips(self):
    checkpoint = save_checkpoint(self.get_temp_dir(), 1, decay=0.95)
    self.assertAlmostEqual(batch_norm_decay.recorded(checkpoint), 0.95,
                           places=6)


if __name__ == '__main__':
  tf.test.main()
