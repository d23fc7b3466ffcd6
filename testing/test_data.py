"""Small ImageNet-format TFRecord datasets for tests, written directly.

The records are built here from tf.train.Example protos, independently of
build_imagenet_tfrecords, so tests of the reader do not trust the writer.
"""

import os
import subprocess
import sys

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

# Trainer flags for every test that trains: the same model on every run on
# a machine, and float32 math, whatever the trainer's defaults (the bfloat16
# path has its own test).
REPRODUCIBLE_TRAINING = ['--random_seed=0', '--precision=float32']


def use_float32_math():
  """Makes this process and the binaries it starts compute in float32.

  oneDNN's math mode is process-wide and read from the environment when
  TensorFlow creates its first oneDNN primitive, so a test module calls this
  before it runs anything: its tolerances are float32's whatever the
  environment asks for (ONEDNN_DEFAULT_FPMATH_MODE=BF16 would round every
  convolution's inputs to bfloat16). Tests of mixed-precision training
  build bfloat16 graphs explicitly (--precision=mixed_bfloat16).
  """
  os.environ['ONEDNN_DEFAULT_FPMATH_MODE'] = 'STRICT'


# A distinct, saturated colour per class: easy to learn in a few steps.
CLASS_COLORS = np.array([[220, 40, 40], [40, 200, 40], [40, 60, 220],
                         [230, 210, 30], [200, 40, 210], [30, 200, 210]],
                        np.uint8)


def image_example(jpeg_bytes, label, height, width, label_text=None):
  """A tf.train.Example with the keys of the slim ImageNet format."""
  feature = {
      'image/encoded': tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[jpeg_bytes])),
      'image/format': tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[b'JPEG'])),
      'image/class/label': tf.train.Feature(
          int64_list=tf.train.Int64List(value=[label])),
      'image/height': tf.train.Feature(
          int64_list=tf.train.Int64List(value=[height])),
      'image/width': tf.train.Feature(
          int64_list=tf.train.Int64List(value=[width])),
  }
  for key in ('xmin', 'ymin', 'xmax', 'ymax'):
    feature['image/object/bbox/' + key] = tf.train.Feature(
        float_list=tf.train.FloatList(value=[]))
  if label_text is not None:
    feature['image/class/text'] = tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[label_text.encode()]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def encode_jpeg(image):
  """Encodes a uint8 [height, width, channels] array as a quality-95 JPEG."""
  return tf.io.encode_jpeg(tf.constant(image, tf.uint8), quality=95).numpy()


def encode_png(image):
  """Encodes a uint8 [height, width, channels] array as a PNG."""
  return tf.io.encode_png(tf.constant(image, tf.uint8)).numpy()


def color_image(label, size, rng):
  """A noisy image of the class's colour, uint8 [size, size, 3]."""
  noise = rng.normal(0, 25, [size, size, 3])
  return np.clip(CLASS_COLORS[label - 1] + noise, 0, 255).astype(np.uint8)


def write_color_dataset(output_dir, num_classes=2, train_per_class=16,
                        validation_per_class=4, size=48, seed=0,
                        train_shards=2):
  """Writes train-/validation- shards of coloured images, labels 1..N.

  Args:
    output_dir: created if needed.
    num_classes: classes, at most len(CLASS_COLORS).
    train_per_class: training images per class.
    validation_per_class: validation images per class.
    size: image height and width.
    seed: the random seed.
    train_shards: number of train-*-of-* files.

  Returns:
    {split: list of labels in file order}.
  """
  rng = np.random.RandomState(seed)
  os.makedirs(output_dir, exist_ok=True)
  labels = {}
  for split, per_class, shards in (('train', train_per_class, train_shards),
                                   ('validation', validation_per_class, 1)):
    split_labels = [label for _ in range(per_class)
                    for label in range(1, num_classes + 1)]
    labels[split] = []
    for shard in range(shards):
      path = os.path.join(output_dir, '%s-%05d-of-%05d' % (split, shard,
                                                           shards))
      with tf.io.TFRecordWriter(path) as writer:
        for label in split_labels[shard::shards]:
          jpeg = tf.io.encode_jpeg(color_image(label, size, rng)).numpy()
          writer.write(image_example(jpeg, label, size, size)
                       .SerializeToString())
          labels[split].append(label)
  return labels


def write_encoded_split(dataset_dir, split, encoded_images, labels):
  """Writes one `<split>-00000-of-00001` shard of given images and labels.

  Args:
    dataset_dir: created if needed.
    split: 'train' or 'validation'.
    encoded_images: JPEG or PNG bytes, one per example.
    labels: the examples' labels.
  """
  os.makedirs(dataset_dir, exist_ok=True)
  path = os.path.join(dataset_dir, '%s-00000-of-00001' % split)
  with tf.io.TFRecordWriter(path) as writer:
    for image, label in zip(encoded_images, labels):
      height, width = tf.io.decode_image(image, channels=3).shape[:2]
      writer.write(image_example(image, int(label), height, width)
                   .SerializeToString())


def run_binary(script, *flags, timeout=900):
  """Runs one of the project's Python binaries, as users do.

  Returns:
    Its stdout.

  Raises:
    AssertionError: it failed; the message has its stderr.
  """
  process = subprocess.run([sys.executable, script] + list(flags),
                           capture_output=True, text=True, timeout=timeout,
                           check=False)
  if process.returncode:
    raise AssertionError('%s exited with %d:\n%s' % (
        os.path.basename(script), process.returncode, process.stderr))
  return process.stdout


def truncate_checkpoint_data(prefix):
  """Cuts a checkpoint's data file to half its size, as a full disk would.

  Returns:
    The data file's path.
  """
  data = prefix + '.data-00000-of-00001'
  with open(data, 'r+b') as f:
    f.truncate(os.path.getsize(data) // 2)
  return data


def graph_op_types(checkpoint, scope=''):
  """The op types of the training graph saved beside `checkpoint`.

  Args:
    checkpoint: the checkpoint path.
    scope: only ops whose names start with this ('MobilenetV1/': the model,
      without a distillation teacher's ops).

  Returns:
    A list with the type of each op.
  """
  meta_graph = tf.compat.v1.MetaGraphDef()
  with open(checkpoint + '.meta', 'rb') as f:
    meta_graph.ParseFromString(f.read())
  return [node.op for node in meta_graph.graph_def.node
          if node.name.startswith(scope)]
