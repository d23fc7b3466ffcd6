"""Tests ExportConfig's checks and the bundle's model names."""

import dataclasses

from absl.testing import absltest

from export import bundle
from runtime import errors


def valid_config(**changes):
  """An ExportConfig that passes its checks, with `changes` applied."""
  config = bundle.ExportConfig(
      checkpoint_dir='/train', checkpoint_path='', output_dir='/out',
      model_name='', num_classes=1001, image_size=224, depth_multiplier=1.0,
      quantize=False, post_training=(), quantized_io_type='uint8',
      dataset_dir='', calibration_split='train', calibration_examples=200)
  return dataclasses.replace(config, **changes)


class ExportConfigTest(absltest.TestCase):

  def test_settings_that_cannot_work_are_refused_in_one_line(self):
    cases = [
        (dict(checkpoint_dir=''), r'^give --checkpoint_dir \(exports the '
         r'latest checkpoint\) or --checkpoint_path$'),
        (dict(output_dir=''), '^--output_dir is required'),
        (dict(post_training=('int4', 'dynamic', 'fp8')),
         '^--post_training: unknown int4, fp8; choose from '
         'dynamic,float16,int8$'),
        (dict(post_training=('dynamic',), quantize=True),
         'already quantized'),
        (dict(post_training=('int8',)),
         '^--post_training=int8 calibrates on images: give --dataset_dir$'),
    ]
    for changes, message in cases:
      with self.subTest(changes=changes):
        with self.assertRaisesRegex(errors.UserError, message):
          valid_config(**changes)

  def test_valid_settings(self):
    config = valid_config(checkpoint_dir='', checkpoint_path='/a/model.ckpt',
                          post_training=('dynamic', 'float16', 'int8'),
                          dataset_dir='/data')
    self.assertEqual(config.post_training, ('dynamic', 'float16', 'int8'))
    self.assertEqual(valid_config(quantize=True).quantize, True)


if __name__ == '__main__':
  absltest.main()
