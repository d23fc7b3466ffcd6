r"""Google's released MobileNet V1 models against ours, with figures.

Float (--float): the released 1.0_224 frozen graph (from PyPI, as
released_model_test fetches it, or --float_graph) on the sample photos and
on the validation split of build_imagenet_tfrecords --sample_digits, with
slim's eval preprocessing (TF1 bilinear resize, no half-pixel centres; what
data/preprocessing does) and with TF2's half-pixel resize (what it did before):
how many top-1 answers the resize changes. The digits are not ImageNet
classes, so the figure is how many predictions move, not an accuracy.

Quantized (--quant_tflite, repeatable): each released uint8 .tflite
(TOCO conversions of Google's `_quant` frozen graphs, e.g. google-coral/
edgetpu's test_data/mobilenet_v1_{0.5_160,0.75_192}_quant.tflite) is
rebuilt as the checkpoint contrib.quantize saved, exported with
mobilenet_v1_export --quantize, and compared with the release: per-tensor
scales, zero points and codes, and per-image outputs of our eval graph and
our .tflite on the photo views (TFLite's reference kernels on both sides).

  .venv/bin/python bench/released_models_bench.py --float \
      --quant_tflite=third_party/released/mobilenet_v1_0.5_160_quant.tflite
"""

import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf
from data import convert
from data import preprocessing
from data import records
from data import sample_digits
from evaluation import tflite_eval
from model import inference_model
from model import variants
from released import released_models
# pylint: enable=g-import-not-at-top,wrong-import-position

tf1 = tf.compat.v1

FLAGS = flags.FLAGS

flags.DEFINE_bool('float', False, 'Measure the float 1.0_224 release.')
flags.DEFINE_string('float_graph', '', 'The released float frozen graph; '
                    'downloaded from PyPI when empty.')
flags.DEFINE_multi_string('quant_tflite', [],
                          'Released uint8 .tflite files to compare with.')
flags.DEFINE_string('work_dir', '', 'Where checkpoints and exports go; a '
                    'temporary directory when empty.')

FLOAT_INPUT = 'input:0'
# The released graph's logits (its softmax is the retrained head's).
FLOAT_LOGITS = 'MobilenetV1/Predictions/Reshape:0'
OUTPUT = 'MobilenetV1/Predictions/Reshape_1:0'


def _half_pixel_eval(image_bytes, image_size):
  """The eval preprocessing with TF2's half-pixel resize (the old one)."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image = tf.image.central_crop(
      tf.image.convert_image_dtype(image, tf.float32),
      preprocessing.EVAL_CENTRAL_FRACTION)
  image = tf.image.resize(image, [image_size, image_size])
  return ((image - 0.5) * 2.0).numpy()


def _run_float(graph_def, images):
  """The float release's class probabilities for each image."""
  with tf.Graph().as_default() as graph:
    tf1.import_graph_def(graph_def, name='')
    with tf1.Session(graph=graph) as session:
      logits = np.concatenate([
          session.run(FLOAT_LOGITS, {FLOAT_INPUT: image[None]})
          for image in images])
  return tf.nn.softmax(logits).numpy()


def _digits(work_dir):
  """The encoded validation images of the sample digits."""
  output_dir = os.path.join(work_dir, 'sample_digits')
  sample_digits.write_sample_digits(
      convert.ConversionOptions(output_dir, show_progress=False))
  files = records.list_split_files(output_dir, 'validation')
  encoded = []
  for record in tf.data.TFRecordDataset(files):
    example = tf.train.Example.FromString(record.numpy())
    encoded.append(example.features.feature['image/encoded'].bytes_list
                   .value[0])
  return encoded


def measure_float(work_dir):
  """Prints how the resize changes the float release's answers."""
  if FLAGS.float_graph:
    graph_def = tf1.GraphDef()
    with open(FLAGS.float_graph, 'rb') as f:
      graph_def.ParseFromString(f.read())
  else:
    graph_def = released_models.fetch_float_graph(work_dir)
  photos = []
  for path in released_models.photo_paths():
    with open(path, 'rb') as f:
      photos.append(f.read())
  sets = [('photos', photos),
          ('photo views', released_models.photo_views()),
          ('digits', _digits(work_dir))]
  print('Float 1.0_224 release: slim resize (now) vs half-pixel (before)')
  for name, encoded in sets:
    slim = _run_float(graph_def, released_models.eval_images(encoded, 224))
    half = _run_float(graph_def, np.stack([_half_pixel_eval(e, 224)
                                           for e in encoded]))
    moved = slim.argmax(-1) != half.argmax(-1)
    print('  %-12s %4d images: top-1 changes on %d (%.1f%%); top-1 '
          'probability moves by %.4f on average, %.4f at most' % (
              name, len(encoded), moved.sum(), 100 * moved.mean(),
              np.abs(slim.max(-1) - half.max(-1)).mean(),
              np.abs(slim.max(-1) - half.max(-1)).max()))
    if name == 'photos':
      for index in range(len(encoded)):
        print('    photo %d: class %d p=%.3f (slim), class %d p=%.3f '
              '(half-pixel)' % (index, slim[index].argmax(), slim[index].max(),
                                half[index].argmax(), half[index].max()))


def _model_flags(content):
  """--depth_multiplier and --image_size of a released .tflite."""
  interpreter = released_models.reference_interpreter(content)
  size = int(interpreter.get_input_details()[0]['shape'][1])
  first = [d for d in interpreter.get_tensor_details() if d['name'].endswith(
      'Conv2d_0/weights_quant/FakeQuantWithMinMaxVars')][0]
  return float(first['shape'][0]) / 32, size


def measure_quantized(path, work_dir):
  """Prints the per-tensor and per-image comparison with one release."""
  with open(path, 'rb') as f:
    released = f.read()
  depth_multiplier, size = _model_flags(released)
  name = variants.release_name(depth_multiplier, size, quantized=True)
  directory = os.path.join(work_dir, name)
  checkpoint = released_models.write_checkpoint(
      released_models.contrib_variables(released, 1),
      os.path.join(directory, 'contrib', 'model.ckpt'))
  subprocess.run(
      [sys.executable, os.path.join(_ROOT, 'mobilenet_v1_export.py'),
       '--checkpoint_path=' + checkpoint, '--output_dir=' + directory,
       '--quantize', '--depth_multiplier=%g' % depth_multiplier,
       '--image_size=%d' % size], check=True, capture_output=True)
  with open(os.path.join(directory, name + '.tflite'), 'rb') as f:
    ours = f.read()

  print('%s (%s):' % (name, path))
  records = released_models.compare_operators(released, ours)
  for kind in ('input', 'weights', 'bias', 'activation', 'constant'):
    chosen = [r for r in records if r['kind'] == kind]
    if not chosen:
      continue
    constants = [r['code_diff'] for r in chosen if r['code_diff'] is not None]
    print('  %-10s %2d tensors: scale bit-equal %d (max rel. diff %.1e), '
          'zero point equal %d%s' % (
              kind, len(chosen), sum(r['scale_equal'] for r in chosen),
              max(r['scale_relative_diff'] for r in chosen),
              sum(r['zero_point_equal'] for r in chosen),
              ', codes equal %d (max diff %d)' % (
                  constants.count(0), max(constants)) if constants else ''))
  exact = [r for r in records if r['scale_equal'] and r['zero_point_equal']
           and not r['code_diff']]
  print('  all: %d of %d tensors identical' % (len(exact), len(records)))

  images = released_models.eval_images(released_models.photo_views(), size)
  codes = tflite_eval.quantize_input(
      images, released_models.reference_interpreter(released)
      .get_input_details()[0])
  released_out = released_models.run_uint8(released, codes).astype(np.int64)
  our_out = released_models.run_uint8(ours, codes).astype(np.int64)
  with tf.Graph().as_default() as graph:
    inputs = tf1.placeholder(tf.float32, [None, size, size, 3])
    inference_model.build(
        inputs, 1001, depth_multiplier, quantized=True,
        quantize_options=inference_model.quantize_options(checkpoint))
    with tf1.Session() as session:
      tf1.train.Saver().restore(session, checkpoint)
      eval_out = session.run(graph.get_tensor_by_name(OUTPUT),
                             {inputs: images})
  top1 = released_out.argmax(-1)
  print('  %d photo views: top-1 as released: eval graph %d, our .tflite %d'
        % (len(images), (eval_out.argmax(-1) == top1).sum(),
           (our_out.argmax(-1) == top1).sum()))
  print('  outputs (steps of 1/256): our .tflite equal on %d of %d images, '
        'max diff %d; eval graph max diff %.2f steps' % (
            (our_out == released_out).all(-1).sum(), len(images),
            np.abs(our_out - released_out).max(),
            np.abs(eval_out * 256 - released_out).max()))


def main(argv):
  del argv  # unused
  with tempfile.TemporaryDirectory() as temp:
    work_dir = FLAGS.work_dir or temp
    print(subprocess.run(['uptime'], capture_output=True, text=True)
          .stdout.strip())
    if FLAGS.float:
      measure_float(work_dir)
    for path in FLAGS.quant_tflite:
      measure_quantized(path, work_dir)


if __name__ == '__main__':
  app.run(main)
