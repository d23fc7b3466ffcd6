r"""Training speed of our trainer against its peers, side by side in one run.

Every peer trains MobileNet V1 on the same synthetic in-memory batch (so the
input pipeline is not what is measured) in its own subprocess, so that no
peer inherits another's TensorFlow state (thread pools, oneDNN caches, XLA
clusters):

  ours      the graph mobilenet_v1_train builds (`build_train_op`) run with
            its `session_config()`: what `mobilenet_v1_train` trains with.
  slim      the same slim model, plain GradientDescent `minimize`, default
            ConfigProto.
  slim_xla  as `slim`, with XLA auto-clustering (global_jit_level ON_1 and
            TF_XLA_FLAGS=--tf_xla_cpu_global_jit, without which CPU ops are
            not clustered).
  tf_keras  `tf_keras.applications.MobileNet` compiled with SGD, `fit`.
  keras3    Keras 3 `keras.applications.MobileNet` compiled with SGD, `fit`.

A float32 matmul measures what the two cores can do at best; the table shows
each peer's effective training GFLOP/s against it (training costs about three
forward passes: 3 x 2 x forward MACs per image).

  .venv/bin/python bench/train_bench.py
  .venv/bin/python bench/train_bench.py --depth_multiplier=0.25 \
      --image_size=128 --steps=60

The machine is shared by whatever else runs on it: the table prints the load
average seen around each peer, and per-step medians next to means, because a
busy neighbour shows up as a gap between the two.
"""

import os
import sys
import time

from absl import app
from absl import flags

# Our modules live in the repository root, one level up.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import peer_process
import slim_compat  # pylint: disable=unused-import
import mobilenet_v1_table
# Importing the trainer defines its flags here too: --depth_multiplier,
# --image_size, --batch_size, --num_classes, --optimizer,
# --bfloat16_convolutions and --fuse_batch_norm_relu6 mean the same in this
# bench as in training.
import mobilenet_v1_train
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

# Flags of the trainer that shape the benchmarked step; passed on to peers
# (the last two only change `ours`: compare with e.g.
# --nofuse_batch_norm_relu6).
_TRAINER_FLAGS = ('depth_multiplier', 'image_size', 'batch_size',
                  'num_classes', 'optimizer', 'bfloat16_convolutions',
                  'fuse_batch_norm_relu6')

flags.DEFINE_integer('steps', 40, 'Timed training steps per peer.',
                     lower_bound=2)
flags.DEFINE_integer('warmup', 5, 'Untimed steps first (graph optimization, '
                     'XLA compilation, oneDNN primitive creation).',
                     lower_bound=1)
flags.DEFINE_list('peers', ['ours', 'slim', 'slim_xla', 'tf_keras', 'keras3'],
                  'Peers to run, in order; the first is the reference of the '
                  'ratio column. Known: ours, slim, slim_xla, tf_keras, '
                  'keras3.')
flags.DEFINE_integer('matmul_size', 4096, 'Size of the square float32 '
                     'matmul that measures the ceiling; 0 skips it.',
                     lower_bound=0)
flags.DEFINE_integer('peer_timeout', 600, 'Seconds before a peer\'s '
                     'subprocess is killed and reported as failed.',
                     lower_bound=10)
flags.DEFINE_string('child', '', 'Internal: run one peer (or "matmul") in '
                    'this process and print its result as JSON.')


def _synthetic_batch():
  """One fixed batch: images uniform in [-1, 1] and random labels."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  size = FLAGS.image_size
  images = rng.uniform(-1, 1, [FLAGS.batch_size, size, size, 3]).astype(
      np.float32)
  labels = rng.randint(0, FLAGS.num_classes, [FLAGS.batch_size]).astype(
      np.int64)
  return images, labels


def _step_stats(step_seconds):
  """Images/s over all timed steps, and from the median step."""
  ordered = sorted(step_seconds)
  median = ordered[len(ordered) // 2]
  return {
      'images_per_sec': FLAGS.batch_size * len(step_seconds) /
                        sum(step_seconds),
      'median_images_per_sec': FLAGS.batch_size / median,
  }


def _time_session(session, train_op):
  """Runs warm-up steps, then times each of --steps steps."""
  start = time.perf_counter()
  for _ in range(FLAGS.warmup):
    session.run(train_op)
  warmup_seconds = time.perf_counter() - start
  step_seconds = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    session.run(train_op)
    step_seconds.append(time.perf_counter() - start)
  result = _step_stats(step_seconds)
  result['warmup_seconds'] = warmup_seconds
  return result


def _synthetic_input(tf):
  """(images, labels) from an in-memory dataset, as the trainer reads them."""
  images, labels = _synthetic_batch()
  dataset = tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(2)
  return tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()


def _run_ours():
  """Our trainer's graph and session options."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    global_step = tf1.train.get_or_create_global_step()
    images, labels = _synthetic_input(tf)
    train_op, _, _ = mobilenet_v1_train.build_train_op(
        images, labels, global_step,
        mobilenet_v1_train.IMAGENET_TRAIN_EXAMPLES, quant_delay=0)
    config = mobilenet_v1_train.session_config()
    with tf1.Session(config=config) as session:
      session.run(tf1.global_variables_initializer())
      return _time_session(session, train_op)


def _run_slim(xla):
  """The slim model with a plain optimizer and a default session."""
  from slim_compat import slim  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import mobilenet_v1  # pylint: disable=g-import-not-at-top
  tf1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    global_step = tf1.train.get_or_create_global_step()
    images, labels = _synthetic_input(tf)
    with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(is_training=True)):
      logits, _ = mobilenet_v1.mobilenet_v1(
          images, num_classes=FLAGS.num_classes,
          depth_multiplier=FLAGS.depth_multiplier)
    tf1.losses.softmax_cross_entropy(tf.one_hot(labels, FLAGS.num_classes),
                                     logits)
    loss = tf1.losses.get_total_loss()
    # Batch norm's moving averages are part of a training step.
    with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
      train_op = tf1.train.GradientDescentOptimizer(0.045).minimize(
          loss, global_step=global_step)
    config = tf1.ConfigProto()
    if xla:
      config.graph_options.optimizer_options.global_jit_level = (
          tf1.OptimizerOptions.ON_1)
    with tf1.Session(config=config) as session:
      session.run(tf1.global_variables_initializer())
      return _time_session(session, train_op)


def _run_keras(keras):
  """keras.applications.MobileNet trained with fit on the synthetic batch."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  images, labels = _synthetic_batch()
  one_hot = np.eye(FLAGS.num_classes, dtype=np.float32)[labels]
  size = FLAGS.image_size
  model = keras.applications.MobileNet(
      input_shape=(size, size, 3), alpha=FLAGS.depth_multiplier,
      weights=None, classes=FLAGS.num_classes)
  model.compile(optimizer=keras.optimizers.SGD(0.045),
                loss='categorical_crossentropy')
  dataset = tf.data.Dataset.from_tensors((images, one_hot)).repeat()

  class StepTimer(keras.callbacks.Callback):
    """Records the wall time at the end of every batch."""

    def __init__(self):
      super().__init__()
      self.times = []

    def on_train_batch_end(self, batch, logs=None):
      self.times.append(time.perf_counter())

  timer = StepTimer()
  start = time.perf_counter()
  model.fit(dataset, epochs=1, steps_per_epoch=FLAGS.warmup + FLAGS.steps,
            callbacks=[timer], verbose=0)
  marks = timer.times[FLAGS.warmup - 1:]
  result = _step_stats([b - a for a, b in zip(marks, marks[1:])])
  result['warmup_seconds'] = marks[0] - start
  return result


def _run_matmul():
  """Best float32 (and bfloat16, for reference) square matmul GFLOP/s."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  n = FLAGS.matmul_size
  result = {}
  for dtype in (tf.float32, tf.bfloat16):
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    matmul = tf.function(tf.linalg.matmul)
    matmul(a, b).numpy()
    best = float('inf')
    for _ in range(5):
      start = time.perf_counter()
      matmul(a, b).numpy()
      best = min(best, time.perf_counter() - start)
    result[dtype.name] = 2.0 * n ** 3 / best / 1e9
  return result


_DESCRIPTIONS = {
    'ours': 'our trainer (build_train_op + session_config)',
    'slim': 'plain tf-slim graph, default ConfigProto',
    'slim_xla': 'plain tf-slim graph, XLA auto-clustering',
    'tf_keras': 'tf_keras.applications.MobileNet fit',
    'keras3': 'Keras 3 keras.applications.MobileNet fit',
}


def _run_child(name):
  """Runs one peer in this process; returns its result dict."""
  if name == 'matmul':
    return _run_matmul()
  if name == 'ours':
    return _run_ours()
  if name in ('slim', 'slim_xla'):
    return _run_slim(xla=name == 'slim_xla')
  if name == 'tf_keras':
    import tf_keras  # pylint: disable=g-import-not-at-top
    return _run_keras(tf_keras)
  if name == 'keras3':
    import keras  # pylint: disable=g-import-not-at-top
    return _run_keras(keras)
  raise ValueError('unknown peer %r' % name)


def _spawn(name):
  """Runs one peer in a fresh interpreter; returns (result or None, error)."""
  env_updates = {
      # Keras 3 must not be swapped for tf_keras by a leftover setting.
      'TF_USE_LEGACY_KERAS': None,
      'KERAS_BACKEND': os.environ.get('KERAS_BACKEND', 'tensorflow'),
  }
  if name == 'slim_xla':
    # On CPU, global_jit_level clusters nothing unless this flag is set
    # before TensorFlow starts (the XLA CPU device only auto-clusters with
    # it); without it the peer would be plain slim.
    env_updates['TF_XLA_FLAGS'] = (os.environ.get('TF_XLA_FLAGS', '') +
                                   ' --tf_xla_cpu_global_jit').strip()
  return peer_process.run(
      __file__, name, _TRAINER_FLAGS + ('steps', 'warmup', 'matmul_size'),
      _ROOT, FLAGS.peer_timeout, env_updates)


def _training_gflop_per_image():
  """3 x 2 x forward MACs per image (forward, input and weight gradients)."""
  macs = sum(cost.macs for cost in mobilenet_v1_table.layer_costs(
      FLAGS.depth_multiplier, FLAGS.image_size, FLAGS.num_classes))
  return macs, 3 * 2 * macs / 1e9


def main(argv):
  del argv  # unused
  if FLAGS.child:
    result = _run_child(FLAGS.child)
    peer_process.report(result)
    return

  macs, gflop_per_image = _training_gflop_per_image()
  print('MobileNet V1 %g@%d, %d classes, batch %d: %.1fM forward MACs, '
        '%.2f GFLOP per trained image; %d warm-up + %d timed steps per peer.' %
        (FLAGS.depth_multiplier, FLAGS.image_size, FLAGS.num_classes,
         FLAGS.batch_size, macs / 1e6, gflop_per_image, FLAGS.warmup,
         FLAGS.steps))
  print('CPU: %d cores visible; load average %.2f at start.' %
        (os.cpu_count(), peer_process.load_average()), flush=True)

  ceiling = None
  if FLAGS.matmul_size:
    matmul, error = _spawn('matmul')
    if matmul:
      ceiling = matmul['float32']
      print('Ceiling: %d^3 matmul %.0f GFLOP/s float32 (%.0f bfloat16).' %
            (FLAGS.matmul_size, matmul['float32'], matmul['bfloat16']),
            flush=True)
    else:
      print('Ceiling: matmul failed: %s' % error)

  results = []
  for name in FLAGS.peers:
    load_before = peer_process.load_average()
    start = time.perf_counter()
    result, error = _spawn(name)
    wall = time.perf_counter() - start
    load = max(load_before, peer_process.load_average())
    results.append((name, result, error, wall, load))
    if result:
      print('  %-14s %7.1f images/s  (%.0fs, load %.1f)' %
            (name, result['images_per_sec'], wall, load), flush=True)
    else:
      print('  %-14s failed: %s' % (name, error), flush=True)

  reference = results[0][1] if results and results[0][1] else None
  print()
  header = ('%-14s %-46s %9s %9s %8s %8s %7s %6s' %
            ('peer', 'what', 'images/s', 'median/s', 'vs %s' % results[0][0],
             'GFLOP/s', '%ceil', 'load'))
  print(header)
  print('-' * len(header))
  for name, result, error, wall, load in results:
    if not result:
      print('%-14s %-46s failed: %s' % (name, _DESCRIPTIONS.get(name, ''),
                                        error))
      continue
    rate = result['images_per_sec']
    gflops = rate * gflop_per_image
    ratio = '%.2fx' % (rate / reference['images_per_sec']) if reference else '-'
    share = '%.0f%%' % (100 * gflops / ceiling) if ceiling else '-'
    print('%-14s %-46s %9.1f %9.1f %8s %8.0f %7s %6.1f' %
          (name, _DESCRIPTIONS.get(name, ''), rate,
           result['median_images_per_sec'], ratio, gflops, share, load))
  peers = [r for n, r, _, _, _ in results[1:] if r]
  if reference and peers:
    best = max(peers, key=lambda r: r['images_per_sec'])
    print('\n%s / best peer: %.2fx (goal 1.30x).' %
          (results[0][0], reference['images_per_sec'] / best['images_per_sec']))
  if max(load for _, _, _, _, load in results) > 0.5 + 1:
    print('Note: other processes were running (load average above 1.5 on '
          '%d cores); rates are lower than on an idle machine and their '
          'ratios noisier.' % os.cpu_count())


if __name__ == '__main__':
  # The team's yardstick is batch 32; the trainer's own default is 64.
  FLAGS.set_default('batch_size', 32)
  app.run(main)
