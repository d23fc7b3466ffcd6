"""A small sample dataset: scikit-learn's handwritten digits, coloured.

The 1797 8x8 greyscale digits become 64x64 RGB JPEGs in classes `digit_0`
.. `digit_9` (labels 1..10), written like any converted folder.
"""

import os
import shutil
import tempfile

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import convert
from data import records
from data import sources

IMAGE_SIZE = 64
VALIDATION_FRACTION = 0.2


def _colourize_digits(digit_images, seed):
  """Turns 8x8 greyscale digits (0..16) into 64x64 RGB images.

  Each image gets its own paper and ink colours (light paper and dark ink or
  the reverse) and a little sensor noise, so that colour distortion and
  normalization during training have something real to work on.

  Args:
    digit_images: float array [N, 8, 8] with values 0..16.
    seed: seed for the colours and noise.

  Returns:
    uint8 array [N, IMAGE_SIZE, IMAGE_SIZE, 3].
  """
  rng = np.random.default_rng(seed)
  ink_amount = tf.image.resize(
      digit_images[..., None].astype(np.float32) / 16.0,
      [IMAGE_SIZE, IMAGE_SIZE],
      method=tf.image.ResizeMethod.BICUBIC).numpy().clip(0, 1)
  count = len(digit_images)
  light = rng.uniform(170, 255, size=(count, 1, 1, 3))
  dark = rng.uniform(0, 90, size=(count, 1, 1, 3))
  dark_on_light = rng.random(count)[:, None, None, None] < 0.7
  paper = np.where(dark_on_light, light, dark)
  ink = np.where(dark_on_light, dark, light)
  images = paper * (1 - ink_amount) + ink * ink_amount
  images += rng.normal(0, 4, size=images.shape)
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def write_sample_digits(options, on_event=convert.ignore_event):
  """Builds the sample dataset from scikit-learn's bundled handwritten digits.

  VALIDATION_FRACTION of every class is held out for validation.

  Args:
    options: convert.ConversionOptions; its seed also picks the colours.
    on_event: as for convert.convert_folder.

  Returns:
    convert.ConversionResult.

  Raises:
    ConversionError: another tool's dataset in the output directory without
      overwrite.
    Interrupted: SIGINT or SIGTERM (once main has installed the handlers).
  """
  config = {
      'source': 'sklearn_digits',
      'image_size': IMAGE_SIZE,
      'validation_fraction': VALIDATION_FRACTION,
      'train_shards': options.train_shards,
      'validation_shards': options.validation_shards,
      'seed': options.seed,
  }
  previous = convert.find_earlier_conversion(options.output_dir, config,
                                             on_event)
  if previous:
    return previous
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = _colourize_digits(digits.images, options.seed)
  class_names = ['digit_%d' % digit for digit in range(10)]
  image_dir = tempfile.mkdtemp(prefix='sample_digits_')
  try:
    images_by_class = {name: [] for name in class_names}
    for index, (image, digit) in enumerate(zip(images, digits.target)):
      class_name = class_names[digit]
      path = os.path.join(image_dir, '%s_%04d.jpg' % (class_name, index))
      with open(path, 'wb') as image_file:
        image_file.write(tf.io.encode_jpeg(image, quality=90).numpy())
      images_by_class[class_name].append(path)
    train, validation = sources.split_by_class(
        images_by_class, class_names, VALIDATION_FRACTION, options.seed)
    return convert.write_dataset(
        {records.TRAIN_SPLIT: train, records.VALIDATION_SPLIT: validation},
        class_names, config, options, on_event)
  finally:
    shutil.rmtree(image_dir, ignore_errors=True)
