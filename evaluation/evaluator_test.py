"""Tests EvalConfig: the checks on its settings and where summaries go."""

import dataclasses

from absl.testing import absltest

from evaluation import evaluator
from runtime import errors


def valid_config(**changes):
  """An EvalConfig that passes its checks, with `changes` applied."""
  config = evaluator.EvalConfig(
      dataset_dir='/data', checkpoint_dir='/train', checkpoint_path='',
      eval_dir='', batch_size=250, num_classes=1001, image_size=224,
      depth_multiplier=1.0, quantize=False, master='', continuous=False,
      timeout_secs=3600, skip_corrupt_records=False)
  return dataclasses.replace(config, **changes)


class EvalConfigTest(absltest.TestCase):

  def test_requires_a_dataset(self):
    with self.assertRaisesRegex(errors.UserError,
                                '^--dataset_dir is required'):
      valid_config(dataset_dir='')

  def test_requires_a_checkpoint(self):
    with self.assertRaisesRegex(errors.UserError,
                                '^give --checkpoint_dir .* or '
                                '--checkpoint_path$'):
      valid_config(checkpoint_dir='')
    self.assertEqual(
        valid_config(checkpoint_dir='', checkpoint_path='/a/model.ckpt-3')
        .checkpoint_path, '/a/model.ckpt-3')

  def test_summaries_go_beside_the_checkpoints_unless_told(self):
    self.assertEqual(valid_config().summary_dir, '/train/eval')
    self.assertEqual(
        valid_config(checkpoint_dir='',
                     checkpoint_path='/runs/a/model.ckpt-3').summary_dir,
        '/runs/a/eval')
    self.assertEqual(valid_config(eval_dir='/elsewhere').summary_dir,
                     '/elsewhere')

  def test_is_frozen(self):
    with self.assertRaises(dataclasses.FrozenInstanceError):
      valid_config().batch_size = 1


if __name__ == '__main__':
  absltest.main()
