r"""Evaluation speed of mobilenet_v1_eval against tf_keras, on the same records.

Each peer makes one pass over the same validation TFRecords, through the
same pipeline (records.build_dataset's evaluation preprocessing:
decode, central crop, resize), in its own subprocess:

  ours        `mobilenet_v1_eval` itself, the program users run, on a float
              checkpoint: images / the seconds it reports for the pass
              (session, restore and every batch).
  ours_quant  the same with --quantize: batch norms folded and 8-bit fake
              quantization, the graph the export freezes.
  tf_keras    `tf_keras.applications.MobileNet` compiled with top-1 and
              top-5 metrics, one `evaluate` call (tracing included, as
              ours includes graph optimization).

Every peer runs in oneDNN's float32 math mode, as evaluation always does.
The checkpoints are freshly initialized models (weights do not change the
speed); without --dataset_dir the bench writes --num_images generated JPEGs
(sample_records) and deletes them afterwards.

  .venv/bin/python bench/eval_bench.py
  .venv/bin/python bench/eval_bench.py --depth_multiplier=0.25 \
      --image_size=128 --num_images=2000
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

# Our modules live in the repository root, one level up.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import model_flags
import peer_process
from runtime import slim_compat  # pylint: disable=unused-import
import sample_records
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

model_flags.define_architecture_flags()
flags.adopt_module_key_flags(model_flags)
flags.DEFINE_integer('batch_size', 100, 'Images per evaluation batch, for '
                     'every peer.', lower_bound=1)
flags.DEFINE_string('dataset_dir', '', 'Directory with validation-*-of-* '
                    'TFRecords; empty writes generated ones.')
flags.DEFINE_integer('num_images', 1000, 'Images in the generated '
                     'validation split.', lower_bound=1)
flags.DEFINE_list('peers', ['ours', 'ours_quant', 'tf_keras'],
                  'Peers to run, in order; the first is the reference of the '
                  'ratio column.')
flags.DEFINE_integer('rounds', 1, 'Times the peers run, round-robin; each '
                     'peer\'s best round is shown.', lower_bound=1)
flags.DEFINE_integer('peer_timeout', 900, 'Seconds before a peer\'s '
                     'subprocess is killed and reported as failed.',
                     lower_bound=10)
flags.DEFINE_string('work_dir', '', 'Internal: where the checkpoints are.')
flags.DEFINE_string('child', '', 'Internal: run one step here (checkpoints '
                    'or tf_keras) and print its result as JSON.')

_CHILD_FLAGS = ('depth_multiplier', 'image_size', 'num_classes', 'batch_size',
                'dataset_dir', 'work_dir')
# Evaluation computes in float32; so does every peer here.
_FLOAT32_ENV = {'ONEDNN_DEFAULT_FPMATH_MODE': 'STRICT'}
_EVAL_LINE = re.compile(r'on (\d+) examples \(([\d.]+) s\)')


def _write_checkpoints():
  """Saves freshly initialized float and quantized eval checkpoints."""
  from runtime import slim_compat  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from model import inference_model  # pylint: disable=g-import-not-at-top
  tf1 = tf.compat.v1
  for name, quantized in (('float', False), ('quant', True)):
    graph = tf.Graph()
    with graph.as_default():
      images = tf1.placeholder(
          tf.float32, [None, FLAGS.image_size, FLAGS.image_size, 3])
      inference_model.build(images, FLAGS.num_classes, FLAGS.depth_multiplier,
                            quantized)
      tf1.train.get_or_create_global_step()
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        tf1.train.Saver().save(
            session, os.path.join(FLAGS.work_dir, name, 'model.ckpt'))
  return {}


def _run_tf_keras():
  """One tf_keras `evaluate` pass over the validation split."""
  from runtime import slim_compat  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from data import records  # pylint: disable=g-import-not-at-top
  size = FLAGS.image_size
  model = tf_keras.applications.MobileNet(
      input_shape=(size, size, 3), alpha=FLAGS.depth_multiplier,
      weights=None, classes=FLAGS.num_classes)
  model.compile(loss='sparse_categorical_crossentropy', metrics=[
      tf_keras.metrics.SparseCategoricalAccuracy(),
      tf_keras.metrics.SparseTopKCategoricalAccuracy(k=5)])
  dataset = records.build_dataset(
      FLAGS.dataset_dir, 'validation', FLAGS.batch_size, size,
      is_training=False)
  examples = int(sum(int(tf.shape(labels)[0]) for _, labels in dataset))
  start = time.perf_counter()
  model.evaluate(dataset, verbose=0)
  return {'examples': examples, 'seconds': time.perf_counter() - start}


def _run_ours(quantized):
  """mobilenet_v1_eval as a program; (result or None, error)."""
  checkpoint_dir = os.path.join(FLAGS.work_dir, 'quant' if quantized
                                else 'float')
  argv = [sys.executable, os.path.join(_ROOT, 'mobilenet_v1_eval.py'),
          '--dataset_dir=' + FLAGS.dataset_dir,
          '--checkpoint_dir=' + checkpoint_dir,
          '--eval_dir=' + os.path.join(checkpoint_dir, 'eval'),
          '--batch_size=%d' % FLAGS.batch_size,
          '--image_size=%d' % FLAGS.image_size,
          '--depth_multiplier=%g' % FLAGS.depth_multiplier,
          '--num_classes=%d' % FLAGS.num_classes,
          '--quantize=%s' % quantized]
  env = dict(os.environ, **_FLOAT32_ENV)
  try:
    done = subprocess.run(argv, cwd=_ROOT, env=env, capture_output=True,
                          text=True, timeout=FLAGS.peer_timeout, check=False)
  except subprocess.TimeoutExpired:
    return None, 'timed out after %ds' % FLAGS.peer_timeout
  found = _EVAL_LINE.search(done.stdout)
  if done.returncode or not found:
    tail = (done.stderr.strip().splitlines() or ['no output'])[-1]
    return None, 'exit %d: %s' % (done.returncode, tail[:200])
  return {'examples': int(found.group(1)),
          'seconds': float(found.group(2))}, ''


def _run_peer(name):
  if name in ('ours', 'ours_quant'):
    return _run_ours(quantized=name == 'ours_quant')
  return peer_process.run(
      __file__, name, _CHILD_FLAGS, _ROOT, FLAGS.peer_timeout,
      dict(_FLOAT32_ENV, **peer_process.tensorflow_defaults()))


_DESCRIPTIONS = {
    'ours': 'mobilenet_v1_eval, float',
    'ours_quant': 'mobilenet_v1_eval --quantize',
    'tf_keras': 'tf_keras.applications.MobileNet evaluate',
}


def _measure_all():
  """Runs the peers round-robin and prints the table."""
  _, error = peer_process.run(__file__, 'checkpoints', _CHILD_FLAGS, _ROOT,
                              FLAGS.peer_timeout, _FLOAT32_ENV)
  if error:
    raise app.Error('writing the checkpoints failed: %s' % error)
  best, errors = {}, {}
  for round_index in range(FLAGS.rounds):
    for name in FLAGS.peers:
      load_before = peer_process.load_average()
      result, error = _run_peer(name)
      load = max(load_before, peer_process.load_average())
      if not result:
        errors[name] = error
        print('  round %d  %-10s failed: %s' % (round_index + 1, name, error),
              flush=True)
        continue
      rate = result['examples'] / result['seconds']
      print('  round %d  %-10s %7.1f images/s  (%d images, load %.1f)' %
            (round_index + 1, name, rate, result['examples'], load),
            flush=True)
      if name not in best or rate > best[name][0]:
        best[name] = (rate, load)

  reference = best.get(FLAGS.peers[0], (None,))[0]
  header = '%-10s %-42s %9s %8s %6s' % ('peer', 'what', 'images/s',
                                        'vs ' + FLAGS.peers[0], 'load')
  print()
  print(header)
  print('-' * len(header))
  for name in FLAGS.peers:
    if name not in best:
      print('%-10s %-42s failed: %s' % (name, _DESCRIPTIONS.get(name, ''),
                                        errors.get(name)))
      continue
    rate, load = best[name]
    ratio = '%.2fx' % (rate / reference) if reference else '-'
    print('%-10s %-42s %9.1f %8s %6.1f' % (name, _DESCRIPTIONS.get(name, ''),
                                           rate, ratio, load))


def main(argv):
  del argv  # unused
  if FLAGS.child == 'checkpoints':
    peer_process.report(_write_checkpoints())
    return
  if FLAGS.child == 'tf_keras':
    peer_process.report(_run_tf_keras())
    return
  if FLAGS.child:
    raise app.UsageError('unknown --child=%s' % FLAGS.child)

  with open('/proc/cpuinfo') as cpuinfo:
    model = next((line.split(':', 1)[1].strip() for line in cpuinfo
                  if line.startswith('model name')), 'unknown CPU')
  print('MobileNet V1 %g@%d, %d classes, batch %d; CPU: %s, %d cores; load '
        'average %.2f at start.' % (FLAGS.depth_multiplier, FLAGS.image_size,
                                    FLAGS.num_classes, FLAGS.batch_size,
                                    model, os.cpu_count(),
                                    peer_process.load_average()), flush=True)
  work_dir = tempfile.mkdtemp(prefix='eval_bench_')
  try:
    FLAGS.work_dir = work_dir
    if not FLAGS.dataset_dir:
      FLAGS.dataset_dir = os.path.join(work_dir, 'data')
      os.makedirs(FLAGS.dataset_dir)
      start = time.perf_counter()
      mean_bytes = sample_records.write_dataset(
          FLAGS.dataset_dir, 'validation', FLAGS.num_images, 1)
      print('Wrote %d generated %dx%d JPEGs (mean %.0f KB) to %s (%.0fs).' %
            (FLAGS.num_images, sample_records.WIDTH, sample_records.HEIGHT,
             mean_bytes / 1024, FLAGS.dataset_dir,
             time.perf_counter() - start), flush=True)
    _measure_all()
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
