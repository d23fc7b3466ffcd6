r"""Input pipeline speed against the training step it has to feed.

Measures, in one run and each in its own subprocess (clean TensorFlow state):

  input      records.build_dataset's training pipeline alone (read,
             decode, random crop, flip, colour distortion, batch), drained
             as fast as it goes, in a graph-mode session as the trainer
             reads it.
  synthetic  our trainer's step (training.train_graph's build_train_op +
             session_config) on one in-memory batch: the training rate
             when input costs nothing.
  real       the same step fed by the real pipeline, as
             mobilenet_v1_train runs it: both share the same cores.

The pipeline should deliver at least --goal times the synthetic training rate
(it runs on the same cores as training, so it needs headroom); `real` against
`synthetic` shows what the input costs training in practice.

Without --dataset_dir the bench writes a small temporary train split of
realistic JPEGs (sample_records: 500x375, smooth natural-looking content,
ImageNet-like file sizes) as slim-format TFRecords, and deletes it
afterwards.

  .venv/bin/python bench/input_bench.py
  .venv/bin/python bench/input_bench.py --dataset_dir=/data/imagenet
"""

import os
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags

# Our modules live in the repository root, one level up.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import peer_process
from runtime import slim_compat  # pylint: disable=unused-import
import sample_records
import numpy as np
import tensorflow as tf
from data import records
from kernels import batch_norm_relu6
from training import config as config_lib
from training import train_graph
# pylint: enable=g-import-not-at-top,wrong-import-position

tf1 = tf.compat.v1

FLAGS = flags.FLAGS

# The flags that shape the input and the step, passed on to the
# measurements; they mean what mobilenet_v1_train's flags of the same names
# do.
_STEP_FLAGS = ('depth_multiplier', 'image_size', 'batch_size',
               'num_classes', 'optimizer', 'dataset_dir')

flags.DEFINE_string('dataset_dir', '', 'Directory with train-*-of-* '
                    'TFRecords (see build_imagenet_tfrecords); empty: a '
                    'generated one (--num_images, --num_shards).')
flags.DEFINE_float('depth_multiplier', 1.0, 'Width multiplier of the '
                   'trained model.', lower_bound=0.01)
flags.DEFINE_integer('image_size', 224, 'Input resolution (square).',
                     lower_bound=32)
flags.DEFINE_integer('batch_size', 32, 'Images per batch and training step '
                     '(the team\'s yardstick; the trainer\'s own default '
                     'is 64).', lower_bound=1)
flags.DEFINE_integer('num_classes', 1001, 'Classes of the logits layer.',
                     lower_bound=2)
flags.DEFINE_enum('optimizer', 'sgd', ['sgd', 'momentum', 'rmsprop'],
                  'Optimizer of the training step, as mobilenet_v1_train\'s '
                  '--optimizer.')

flags.DEFINE_integer('input_batches', 60, 'Timed batches of the pipeline '
                     'alone.', lower_bound=2)
flags.DEFINE_integer('steps', 30, 'Timed training steps (synthetic and real '
                     'input).', lower_bound=2)
flags.DEFINE_integer('warmup', 5, 'Untimed steps or batches first (graph '
                     'optimization, shuffle buffer filling).', lower_bound=1)
flags.DEFINE_integer('num_images', 200, 'Images in the generated data set '
                     '(without --dataset_dir).', lower_bound=1)
flags.DEFINE_integer('num_shards', 4, 'TFRecord files of the generated data '
                     'set.', lower_bound=1)
flags.DEFINE_float('goal', 2.0, 'Wanted ratio of pipeline to synthetic '
                   'training images/s.', lower_bound=0.0)
flags.DEFINE_integer('peer_timeout', 600, 'Seconds before a measurement\'s '
                     'subprocess is killed and reported as failed.',
                     lower_bound=10)
flags.DEFINE_string('child', '', 'Internal: run one measurement (input, '
                    'synthetic or real) here and print its result as JSON.')

def _time_runs(session, fetch, count):
  """Runs `fetch` --warmup times, then `count` timed times; images/s."""
  for _ in range(FLAGS.warmup):
    session.run(fetch)
  start = time.perf_counter()
  for _ in range(count):
    session.run(fetch)
  return FLAGS.batch_size * count / (time.perf_counter() - start)


def _train_dataset():
  return records.build_dataset(
      FLAGS.dataset_dir, 'train', FLAGS.batch_size, FLAGS.image_size,
      is_training=True)


def _run_input():
  """The training pipeline alone."""
  graph = tf.Graph()
  with graph.as_default():
    images, labels = tf1.data.make_one_shot_iterator(
        _train_dataset()).get_next()
    # Fetch a scalar that depends on the whole batch, so nothing is pruned
    # and no 19 MB copy to numpy is timed.
    fetch = tf.group(tf.reduce_sum(images), labels)
    with tf1.Session(config=train_graph.session_config()) as session:
      return {'images_per_sec': _time_runs(session, fetch,
                                           FLAGS.input_batches)}


def _run_training(real_input):
  """Our trainer's step, fed by the real pipeline or by one fixed batch."""
  graph = tf.Graph()
  with graph.as_default():
    global_step = tf1.train.get_or_create_global_step()
    if real_input:
      dataset = _train_dataset()
    else:
      rng = np.random.RandomState(0)
      size = FLAGS.image_size
      dataset = tf.data.Dataset.from_tensors((
          rng.uniform(-1, 1, [FLAGS.batch_size, size, size, 3]).astype(
              np.float32),
          rng.randint(1, FLAGS.num_classes, [FLAGS.batch_size]).astype(
              np.int64))).repeat().prefetch(2)
    images, labels = tf1.data.make_one_shot_iterator(dataset).get_next()
    step = train_graph.build_train_op(images, labels, global_step,
                                      _training_plan())
    with tf1.Session(config=train_graph.session_config()) as session:
      session.run(tf1.global_variables_initializer())
      return {'images_per_sec': _time_runs(session, step.train_op,
                                           FLAGS.steps)}


def _training_plan():
  """The trainer's plan for this bench's flags.

  Training from scratch on ImageNet, open-ended, with the trainer's defaults
  but for the flags above; nothing to count, nothing restored.
  """
  return config_lib.resolve(
      config_lib.TrainConfig(
          dataset_dir=FLAGS.dataset_dir,
          depth_multiplier=FLAGS.depth_multiplier,
          image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
          num_classes=FLAGS.num_classes, optimizer=FLAGS.optimizer,
          num_train_examples=config_lib.IMAGENET_TRAIN_EXAMPLES),
      count_train_examples=None, batch_norms_restored=True,
      cpu_features=batch_norm_relu6.cpu_features())


def _spawn(name):
  """Runs one measurement in a fresh interpreter; (result or None, error)."""
  return peer_process.run(
      __file__, name, _STEP_FLAGS + ('input_batches', 'steps', 'warmup'),
      _ROOT, FLAGS.peer_timeout)


def _measure_all():
  """Runs the three measurements and prints the table."""
  results = {}
  loads = []
  for name in ('input', 'synthetic', 'real'):
    loads.append(peer_process.load_average())
    result, error = _spawn(name)
    loads.append(peer_process.load_average())
    if result:
      results[name] = result['images_per_sec']
      print('  %-10s %7.1f images/s' % (name, results[name]), flush=True)
    else:
      print('  %-10s failed: %s' % (name, error), flush=True)

  print()
  rows = (
      ('input', 'input pipeline alone (train preprocessing)'),
      ('synthetic', 'trainer step, synthetic in-memory batch'),
      ('real', 'trainer step fed by the input pipeline'),
  )
  synthetic = results.get('synthetic')
  header = '%-10s %-44s %9s %14s' % ('run', 'what', 'images/s',
                                     'vs synthetic')
  print(header)
  print('-' * len(header))
  for name, what in rows:
    if name not in results:
      print('%-10s %-44s %9s' % (name, what, 'failed'))
      continue
    ratio = '%.2fx' % (results[name] / synthetic) if synthetic else '-'
    print('%-10s %-44s %9.1f %14s' % (name, what, results[name], ratio))
  print()
  if 'input' in results and synthetic:
    ratio = results['input'] / synthetic
    print('input / training: %.2fx (goal %.1fx): %s.' %
          (ratio, FLAGS.goal, 'met' if ratio >= FLAGS.goal else 'NOT met'))
  if 'real' in results and synthetic:
    loss = 1 - results['real'] / synthetic
    print('Feeding real input costs training %.0f%% of its synthetic rate%s.' %
          (100 * loss, '; the input pipeline is a bottleneck'
           if loss > 0.1 else ''))
  if max(loads) > 1.5:
    print('Note: other processes were running (load average up to %.1f on '
          '%d cores); rates are lower than on an idle machine.' %
          (max(loads), os.cpu_count()))


def main(argv):
  del argv  # unused
  if FLAGS.child:
    if FLAGS.child == 'input':
      result = _run_input()
    else:
      result = _run_training(real_input=FLAGS.child == 'real')
    peer_process.report(result)
    return

  print('MobileNet V1 %g@%d, batch %d, %d cores; load average %.2f at start.' %
        (FLAGS.depth_multiplier, FLAGS.image_size, FLAGS.batch_size,
         os.cpu_count(), peer_process.load_average()), flush=True)
  generated = None
  if not FLAGS.dataset_dir:
    generated = tempfile.mkdtemp(prefix='input_bench_')
    start = time.perf_counter()
    mean_bytes = sample_records.write_dataset(
        generated, 'train', FLAGS.num_images, FLAGS.num_shards)
    print('Wrote %d generated %dx%d JPEGs (mean %.0f KB) in %d shards to %s '
          '(%.0fs).' % (FLAGS.num_images, sample_records.WIDTH,
                        sample_records.HEIGHT, mean_bytes / 1024,
                        FLAGS.num_shards, generated,
                        time.perf_counter() - start), flush=True)
    FLAGS.dataset_dir = generated
  try:
    _measure_all()
  finally:
    if generated:
      shutil.rmtree(generated, ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
