"""Tests for preprocessing, against NumPy references of slim's pixels."""

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import preprocessing
from testing import test_data


def _gradient_image(height, width):
  """An RGB image whose channels vary smoothly (and differently) in y and x."""
  y, x = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  return np.stack([
      255.0 * y / (height - 1),
      255.0 * x / (width - 1),
      255.0 * (y + x) / (height + width - 2),
  ], axis=-1).round().astype(np.uint8)


def _numpy_bilinear_resize(image, height, width):
  """Reference for TF1's resize_bilinear(align_corners=False), slim's resize.

  Output pixel i samples input coordinate i * in_size / out_size: no
  half-pixel centres (TF2's tf.image.resize samples (i + 0.5) * in / out -
  0.5), no antialiasing.
  """

  def sample_points(in_size, out_size):
    position = np.arange(out_size) * in_size / out_size
    lower = np.floor(position)
    fraction = position - lower
    lower_index = np.clip(lower, 0, in_size - 1).astype(int)
    upper_index = np.clip(lower + 1, 0, in_size - 1).astype(int)
    return lower_index, upper_index, fraction

  top, bottom, y_fraction = sample_points(image.shape[0], height)
  left, right, x_fraction = sample_points(image.shape[1], width)
  y_fraction = y_fraction[:, None, None]
  x_fraction = x_fraction[None, :, None]
  upper_row = (image[top][:, left] * (1 - x_fraction) +
               image[top][:, right] * x_fraction)
  lower_row = (image[bottom][:, left] * (1 - x_fraction) +
               image[bottom][:, right] * x_fraction)
  return upper_row * (1 - y_fraction) + lower_row * y_fraction


def _numpy_eval_reference(image, image_size, central_fraction=0.875):
  """Central crop as tf.image.central_crop does it, resize, map to [-1, 1]."""
  height, width = image.shape[:2]
  offset_y = int((height - height * central_fraction) / 2)
  offset_x = int((width - width * central_fraction) / 2)
  crop = image[offset_y:height - offset_y, offset_x:width - offset_x]
  resized = _numpy_bilinear_resize(crop.astype(np.float64) / 255.0,
                                   image_size, image_size)
  return (resized - 0.5) * 2.0


class PreprocessingTest(tf.test.TestCase):

  def test_eval_matches_numpy_reference(self):
    image = _gradient_image(50, 40)
    actual = preprocessing.preprocess_for_eval(test_data.encode_png(image),
                                               32).numpy()
    self.assertEqual((32, 32, 3), actual.shape)
    self.assertAllClose(_numpy_eval_reference(image, 32), actual, atol=1e-5)
    # TF2's half-pixel resize samples this gradient 0.19 and 0.06 pixels
    # away: far outside the tolerance above, so the reference tells the two
    # apart.
    crop = image[3:47, 2:38].astype(np.float32) / 255.0
    half_pixel = (tf.image.resize(crop, [32, 32]).numpy() - 0.5) * 2.0
    self.assertGreater(np.abs(half_pixel - actual).max(), 100 * 1e-5)

  def test_eval_jpeg_close_to_reference(self):
    image = _gradient_image(60, 80)
    actual = preprocessing.preprocess_for_eval(test_data.encode_jpeg(image),
                                               24).numpy()
    # JPEG is lossy: a few grey levels of error, never a shifted crop.
    self.assertAllClose(_numpy_eval_reference(image, 24), actual, atol=0.06)

  def test_eval_constant_image(self):
    image = np.full([30, 45, 3], 191, np.uint8)
    actual = preprocessing.preprocess_for_eval(test_data.encode_jpeg(image),
                                               16).numpy()
    self.assertAllClose(np.full([16, 16, 3], (191 / 255 - 0.5) * 2), actual,
                        atol=0.02)

  def test_train_shape_and_range(self):
    for encode in (test_data.encode_jpeg, test_data.encode_png):
      for bboxes in (None, tf.constant([[0.1, 0.2, 0.6, 0.9]])):
        image = _gradient_image(40, 56)
        output = preprocessing.preprocess_for_train(
            encode(image), bboxes, 48, fast_mode=False).numpy()
        self.assertEqual((48, 48, 3), output.shape)
        self.assertEqual(np.float32, output.dtype)
        self.assertBetween(output.min(), -1.0, 1.0)
        self.assertBetween(output.max(), -1.0, 1.0)

  def test_train_crops_vary(self):
    image_bytes = test_data.encode_jpeg(_gradient_image(64, 64))
    outputs = [preprocessing.preprocess_for_train(image_bytes, None,
                                                  16).numpy()
               for _ in range(4)]
    self.assertGreater(np.abs(outputs[0] - outputs[1]).max(), 0.01)

  def test_train_crops_cover_the_box(self):
    # A red object in the top-left corner of a blue image: each crop must
    # keep at least 10% of the box, so some red survives every time.
    image = np.zeros([100, 100, 3], np.uint8)
    image[..., 2] = 255
    image[:30, :30] = [255, 0, 0]
    image_bytes = test_data.encode_png(image)
    box = tf.constant([[0.0, 0.0, 0.3, 0.3]])
    tf.random.set_seed(1)
    for _ in range(30):
      output = preprocessing.preprocess_for_train(image_bytes, box, 32)
      red_minus_blue = output[..., 0] - output[..., 2]
      self.assertGreater(float(tf.reduce_max(red_minus_blue)), 0.5)
    # Without the box the whole image is the object, and crops (at least 5%
    # of the area) often miss the corner entirely.
    misses = 0
    for _ in range(30):
      output = preprocessing.preprocess_for_train(image_bytes, None, 32)
      misses += float(tf.reduce_max(output[..., 0] - output[..., 2])) < 0.5
    self.assertGreater(misses, 0)


if __name__ == '__main__':
  tf.test.main()
