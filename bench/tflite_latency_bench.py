r"""Single-image TFLite latency of our exported models against Keras's, in one run.

Six models of the same architecture (MobileNet V1, --depth_multiplier at
--image_size, default 1.0@224, --num_classes outputs):

  ours_float   mobilenet_v1_export's float conversion of our graph.
  ours_uint8   mobilenet_v1_export's uint8 conversion of our quantized eval
               graph (the QAT path: folded batch norms, fake quantization).
  ours_int8    the same model made int8 inside by tflite_int8 (uint8 input
               and output, as mobilenet_v1_export writes NAME_int8.tflite).
  keras_float  tf_keras.applications.MobileNet(weights=None), converted with
               TF2's converter.
  keras_int8   the same, post-training full-integer int8 (int8 input and
               output), calibrated on random images.
  keras_int8_u8io  the same with uint8 input and output (QUANTIZE ops at both
               ends, as TFLite's converter adds them): the interface our
               quantized models have, so the peer they are compared with.

Accuracy does not matter for latency, so the weights are freshly initialized.
Our uint8 model gets its ranges from range_calibration.calibrate_ranges on random
images (symmetric weight ranges, as quantization-aware training sets them by
default), so that its requantization scales are those of a real model. Each
model is timed by mobilenet_v1_tflite_eval --latency_runs in its own
subprocess (one thread, then every core), so the figures are those that
binary reports.

  .venv/bin/python bench/tflite_latency_bench.py
  .venv/bin/python bench/tflite_latency_bench.py --runs=200 --image_size=128

Goals reported against: our quantized models at least 1.5x faster than
float, and ours no slower than Keras's model at the same precision. The
machine may be shared: the load average is printed next to the table.
"""

import collections
import os
import re
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import numpy as np

# Our modules live in the repository root, one level up.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import model_flags
import peer_process
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf
from export import convert
from export import freeze
from quantization import quantize
from export import tflite_int8
from testing import range_calibration
# pylint: enable=g-import-not-at-top,wrong-import-position

tf1 = tf.compat.v1

FLAGS = flags.FLAGS

model_flags.define_architecture_flags()
flags.adopt_module_key_flags(model_flags)
flags.DEFINE_integer('runs', 100, 'Timed invocations per model and thread '
                     'setting.', lower_bound=2)
flags.DEFINE_integer('warmup_runs', 10, 'Untimed invocations first.',
                     lower_bound=0)
flags.DEFINE_integer('rounds', 3, 'Rounds over all models, taken in turn; '
                     'each model\'s fastest round is reported.',
                     lower_bound=1)
flags.DEFINE_integer('calibration_images', 8,
                     'Random images the ranges of our uint8 model and '
                     'Keras\'s int8 model are calibrated on.', lower_bound=1)
flags.DEFINE_string('work_dir', '', 'Where the .tflite files go; a temporary '
                    'directory (removed afterwards) when empty.')

TFLITE_EVAL = os.path.join(_ROOT, 'mobilenet_v1_tflite_eval.py')
MODELS = ('ours_float', 'ours_uint8', 'ours_int8', 'keras_float', 'keras_int8',
          'keras_int8_u8io')
QUANTIZED = ('ours_uint8', 'ours_int8')
# Each of ours against Keras's model of the same precision.
PEERS = {'ours_float': 'keras_float', 'ours_uint8': 'keras_int8_u8io',
         'ours_int8': 'keras_int8_u8io'}
_LATENCY_RE = re.compile(r'latency with (\d+) threads?: median ([0-9.]+) ms  '
                         r'p90 ([0-9.]+) ms')


def _random_images(count):
  shape = [1, FLAGS.image_size, FLAGS.image_size, 3]
  rng = np.random.RandomState(0)
  return [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(count)]


def _ours(quantized):
  """Our exported TFLite model, float or uint8, from fresh variables."""
  graph, images_in, _ = freeze.build_inference_graph(
      FLAGS.depth_multiplier, FLAGS.image_size, FLAGS.num_classes, quantized,
      {'weights': quantize.ASYMMETRIC})
  with tf1.Session(graph=graph) as session:
    session.run(tf1.variables_initializer(
        graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)))
    if quantized:
      range_calibration.calibrate_ranges(session, [
          {images_in: image}
          for image in _random_images(FLAGS.calibration_images)])
    frozen = freeze.freeze(session, graph)
  return convert.convert(frozen, quantized)


def _keras(int8, io_type=tf.int8):
  """tf_keras's MobileNet converted to TFLite, float or post-training int8.

  Args:
    int8: post-training full-integer quantization rather than float.
    io_type: with `int8`, the type of the input and output.

  Returns:
    The TFLite flatbuffer.
  """
  import tf_keras  # pylint: disable=g-import-not-at-top
  size = FLAGS.image_size
  model = tf_keras.applications.MobileNet(
      input_shape=(size, size, 3), alpha=FLAGS.depth_multiplier,
      weights=None, classes=FLAGS.num_classes)
  # A batch of one, as our models have.
  function = tf.function(lambda images: model(images, training=False))
  concrete = function.get_concrete_function(
      tf.TensorSpec([1, size, size, 3], tf.float32))
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete],
                                                              model)
  if int8:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [image] for image in _random_images(FLAGS.calibration_images))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = io_type
    converter.inference_output_type = io_type
  with slim_compat.native_stderr_silenced():
    return converter.convert()


def _latency(path):
  """{threads: (median ms, p90 ms)} as mobilenet_v1_tflite_eval reports."""
  result = subprocess.run(
      [sys.executable, TFLITE_EVAL, '--tflite_path=' + path,
       '--latency_runs=%d' % FLAGS.runs,
       '--warmup_runs=%d' % FLAGS.warmup_runs],
      capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError('%s failed: %s' % (TFLITE_EVAL, result.stderr))
  notes = [line for line in result.stdout.splitlines() if 'XNNPACK' in line]
  for note in notes:
    print('  note: ' + note)
  return {int(threads): (float(median), float(p90)) for threads, median, p90
          in _LATENCY_RE.findall(result.stdout)}


def _print_table(sizes, latencies):
  """The table, with speed ratios, and the goals' verdicts."""
  threads = sorted(latencies[MODELS[0]])
  header = '%-16s %9s' % ('model', 'size MB')
  for count in threads:
    header += '  %2dT median   p90' % count
  header += '  vs ours_float  vs keras same precision'
  print(header)
  for model in MODELS:
    line = '%-16s %9.2f' % (model, sizes[model] / 1e6)
    for count in threads:
      line += '  %9.2f %6.2f' % latencies[model][count]
    # Speed-up: how many times faster, from the medians (one thread, then all).
    line += '  ' + '/'.join(
        '%.2fx' % (latencies['ours_float'][c][0] / latencies[model][c][0])
        for c in threads).ljust(13)
    if model in PEERS:
      line += '  ' + '/'.join(
          '%.2fx' % (latencies[PEERS[model]][c][0] / latencies[model][c][0])
          for c in threads)
    print(line)
  print('(ms per image; ratios are speed-ups from medians, 1 thread / %d '
        'threads; load average %s)' % (threads[-1],
                                        peer_process.load_average()))
  for count in threads:
    for quantized in QUANTIZED:
      speedup = (latencies['ours_float'][count][0] /
                 latencies[quantized][count][0])
      print('goal %s >= 1.5x ours_float, %d thread(s): %.2fx  %s' % (
          quantized, count, speedup, 'met' if speedup >= 1.5 else 'NOT met'))
    for ours, keras in PEERS.items():
      ratio = latencies[keras][count][0] / latencies[ours][count][0]
      print('goal %s no slower than %s, %d thread(s): %.2fx  %s' % (
          ours, keras, count, ratio, 'met' if ratio >= 1.0 else 'NOT met'))


def _bench(work_dir):
  builders = {
      'ours_float': lambda: _ours(False),
      'ours_uint8': lambda: _ours(True),
      'ours_int8': lambda: tflite_int8.from_uint8(contents['ours_uint8']),
      'keras_float': lambda: _keras(False),
      'keras_int8': lambda: _keras(True),
      'keras_int8_u8io': lambda: _keras(True, tf.uint8),
  }
  contents, paths = {}, {}
  for model in MODELS:
    paths[model] = os.path.join(work_dir, model + '.tflite')
    contents[model] = builders[model]()
    with open(paths[model], 'wb') as f:
      f.write(contents[model])
  # Round robin, so that a change in the machine's load between models
  # shows up in every model's rounds rather than in one model's figures;
  # each model keeps its fastest round.
  rounds = collections.defaultdict(list)
  for round_index in range(FLAGS.rounds):
    print('round %d of %d...' % (round_index + 1, FLAGS.rounds), flush=True)
    for model in MODELS:
      rounds[model].append(_latency(paths[model]))
  latencies = {model: {threads: min(r[threads] for r in results)
                       for threads in results[0]}
               for model, results in rounds.items()}
  print()
  print('MobileNet V1 %s@%d, %d classes, batch 1, best of %d rounds of %d '
        'runs after %d warm-up' % (
            float(FLAGS.depth_multiplier), FLAGS.image_size, FLAGS.num_classes,
            FLAGS.rounds, FLAGS.runs, FLAGS.warmup_runs))
  _print_table({m: len(c) for m, c in contents.items()}, latencies)


def main(argv):
  del argv  # unused
  if FLAGS.work_dir:
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    _bench(FLAGS.work_dir)
  else:
    with tempfile.TemporaryDirectory() as work_dir:
      _bench(work_dir)


if __name__ == '__main__':
  app.run(main)
