"""ImageNet-like TFRecords for the benches: generated JPEGs, slim's format.

500x375 images (half landscape, half portrait), smooth natural-looking
content at ImageNet-like file sizes, labels 1..1000.
"""

import os

import numpy as np
import tensorflow as tf

WIDTH, HEIGHT = 500, 375


def _natural_image(rng, height, width):
  """A smooth, textured uint8 image that compresses like a photograph.

  Pure noise would make JPEGs several times larger (and slower to decode)
  than photographs; a sum of upsampled noise octaves has their mix of broad
  areas and fine detail.
  """
  image = np.zeros([height, width, 3], np.float32)
  for cells, weight in ((4, 1.0), (16, 0.6), (64, 0.4), (250, 0.3)):
    coarse = rng.uniform(-1, 1, [cells * height // width + 1, cells, 3])
    image += weight * tf.image.resize(
        coarse[np.newaxis], [height, width], method='bicubic')[0].numpy()
  # Grain: brings the JPEG size (~75 KB at quality 90) near ImageNet's.
  image += rng.normal(0, 0.2, image.shape)
  image = (image - image.min()) / (image.max() - image.min() + 1e-6)
  return (image * 255).astype(np.uint8)


def _feature(values, kind):
  if kind == 'bytes':
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
  if kind == 'int64':
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def write_dataset(directory, split, num_images, num_shards):
  """Writes {split}-*-of-* TFRecords of generated JPEGs, as the slim tools do.

  Args:
    directory: where the shards go.
    split: the file name prefix: train or validation.
    num_images: how many images.
    num_shards: how many files.

  Returns:
    Mean JPEG size in bytes.
  """
  rng = np.random.RandomState(0)
  writers = [tf.io.TFRecordWriter(os.path.join(
      directory, '%s-%05d-of-%05d' % (split, i, num_shards)))
             for i in range(num_shards)]
  total_bytes = 0
  for index in range(num_images):
    # Half landscape, half portrait, as in ImageNet.
    height, width = HEIGHT, WIDTH
    if index % 2:
      height, width = width, height
    encoded = tf.io.encode_jpeg(_natural_image(rng, height, width),
                                quality=90).numpy()
    total_bytes += len(encoded)
    example = tf.train.Example(features=tf.train.Features(feature={
        'image/encoded': _feature([encoded], 'bytes'),
        'image/format': _feature([b'JPEG'], 'bytes'),
        'image/class/label': _feature([1 + index % 1000], 'int64'),
        'image/height': _feature([height], 'int64'),
        'image/width': _feature([width], 'int64'),
        'image/object/bbox/xmin': _feature([], 'float'),
        'image/object/bbox/ymin': _feature([], 'float'),
        'image/object/bbox/xmax': _feature([], 'float'),
        'image/object/bbox/ymax': _feature([], 'float'),
        'image/object/class/label': _feature([], 'int64'),
    }))
    writers[index % num_shards].write(example.SerializeToString())
  for writer in writers:
    writer.close()
  return total_bytes / num_images
