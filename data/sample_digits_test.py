"""Tests for sample_digits."""

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import convert
from data import sample_digits
from testing import conversion_checks as checks


class SampleDigitsTest(tf.test.TestCase):

  def test_sample_digits(self):
    output_dir = self.create_tempdir().full_path
    result = sample_digits.write_sample_digits(convert.ConversionOptions(
        output_dir, seed=3, num_workers=2, show_progress=False))
    self.assertEqual(1797, sum(result.split_counts.values()))
    self.assertBetween(result.split_counts['validation'], 340, 380)
    self.assertEqual(['digit_%d' % digit for digit in range(10)],
                     result.class_names)
    self.assertEqual(11, result.num_classes)
    for split in ('train', 'validation'):
      examples = checks.read_split(output_dir, split)
      self.assertLen(examples, result.split_counts[split])
      self.assertCountEqual(
          range(1, 11),
          {checks.feature(example, 'image/class/label')[0]
           for example in examples})
    image = tf.io.decode_jpeg(checks.feature(examples[0], 'image/encoded')[0])
    self.assertEqual((64, 64, 3), image.shape)
    # Coloured, not grey: the channels differ.
    channels = tf.cast(image, tf.int32)
    self.assertGreater(
        float(tf.reduce_max(tf.abs(channels[..., 0] - channels[..., 2]))), 20)
    self.assertTrue(sample_digits.write_sample_digits(convert.ConversionOptions(
        output_dir, seed=3, show_progress=False)).already_complete)


if __name__ == '__main__':
  tf.test.main()
