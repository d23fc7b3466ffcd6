"""Image folders for the converter's tests, and plain readers of its output.

The written records are read back with plain tf.train.Example parsing, not
with data/records.py, so that the converter is checked against the format.
"""

import os

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from testing import test_data

# The keys every record of the slim ImageNet format has.
REQUIRED_KEYS = (
    'image/encoded', 'image/format', 'image/class/label', 'image/class/text',
    'image/height', 'image/width', 'image/object/bbox/xmin',
    'image/object/bbox/ymin', 'image/object/bbox/xmax',
    'image/object/bbox/ymax', 'image/object/class/label')


def random_image(height, width, channels, seed):
  """A uint8 [height, width, channels] array of uniform noise."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)


def save(path, data):
  """Writes bytes to path, creating its directory."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as data_file:
    data_file.write(data)


def write_mixed_class_folders(image_dir):
  """Writes classes cat, dog and zebra of three images each, mixed formats.

  JPEGs and PNGs with 1, 3 or 4 channels, and a text file among the dogs
  that the converter must ignore.

  Args:
    image_dir: the folder of class sub-folders.

  Returns:
    Dict image file name -> (height, width).
  """
  sizes = {}
  layout = {
      'cat': [('c1.jpg', 'jpeg', 3), ('c2.JPEG', 'jpeg', 3),
              ('c3.png', 'png', 3)],
      'dog': [('d1.jpg', 'jpeg', 1), ('d2.png', 'png', 4),
              ('d3.jpeg', 'jpeg', 3)],
      'zebra': [('z1.png', 'png', 1), ('z2.jpg', 'jpeg', 3),
                ('z3.jpg', 'jpeg', 3)],
  }
  for class_index, (class_name, images) in enumerate(sorted(layout.items())):
    for image_index, (name, image_format, channels) in enumerate(images):
      height, width = 20 + 3 * image_index, 30 + 5 * class_index
      image = random_image(height, width, channels,
                           seed=10 * class_index + image_index)
      encode = (test_data.encode_jpeg if image_format == 'jpeg' else
                test_data.encode_png)
      save(os.path.join(image_dir, class_name, name), encode(image))
      sizes[name] = (height, width)
  save(os.path.join(image_dir, 'dog', 'notes.txt'), b'not an image')
  return sizes


def write_animal_folders(image_dir):
  """Writes classes ant, bee and cow of five 12x16 JPEGs each."""
  for class_index, class_name in enumerate(['ant', 'bee', 'cow']):
    for image_index in range(5):
      save(os.path.join(image_dir, class_name,
                        '%s%d.jpg' % (class_name, image_index)),
           test_data.encode_jpeg(random_image(
               12, 16, 3, seed=class_index * 10 + image_index)))


def read_split(output_dir, split):
  """Returns the parsed Examples of a split, reading every shard in order."""
  examples = []
  for path in sorted(tf.io.gfile.glob(
      os.path.join(output_dir, '%s-*-of-*' % split))):
    for record in tf.compat.v1.io.tf_record_iterator(path):
      examples.append(tf.train.Example.FromString(record))
  return examples


def feature(example, key):
  """The values of one feature of a tf.train.Example, as a list."""
  values = example.features.feature[key]
  return (list(values.bytes_list.value) or list(values.int64_list.value) or
          list(values.float_list.value))


def shard_names(output_dir):
  """The sorted names of the shards in output_dir."""
  return sorted(name for name in os.listdir(output_dir)
                if '-of-' in name and not name.startswith('.'))


def top_level_files(directory):
  """Name -> bytes of the files directly in directory (not its sub-folders)."""
  files = {}
  for name in os.listdir(directory):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      with open(path, 'rb') as data:
        files[name] = data.read()
  return files


def count_records(output_dir, split):
  """The number of records in a split's shards."""
  return sum(1 for path in tf.io.gfile.glob(
      os.path.join(output_dir, '%s-*-of-*' % split))
             for _ in tf.compat.v1.io.tf_record_iterator(path))


def labels_by_filename(output_dir, split):
  """Dict image/filename -> image/class/label of a split's records."""
  return {feature(example, 'image/filename')[0]:
              feature(example, 'image/class/label')[0]
          for example in read_split(output_dir, split)}
