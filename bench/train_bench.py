r"""Training speed of our trainer against its peers, side by side in one run.

Every peer trains MobileNet V1 on the same synthetic in-memory batch (so the
input pipeline is not what is measured) in its own subprocess, so that no
peer inherits another's TensorFlow state (thread pools, oneDNN caches, XLA
clusters):

  ours      the graph mobilenet_v1_train builds
            (`training.train_graph.build_train_op`, from a TrainConfig of
            this bench's flags) run with its `session_config()`: what
            `mobilenet_v1_train` trains with.
  slim      the same slim model, plain GradientDescent `minimize`, default
            ConfigProto.
  tf_keras  `tf_keras.applications.MobileNet` compiled with SGD, `fit`.
  keras3    Keras 3 `keras.applications.MobileNet` compiled with SGD, `fit`.
  slim_xla  (on request) as `slim`, with XLA auto-clustering (global_jit_level
            ON_1 and TF_XLA_FLAGS=--tf_xla_cpu_global_jit, without which CPU
            ops are not clustered).

Peers are compared at the same precision: one table with every peer in
oneDNN's float32 math mode ($ONEDNN_DEFAULT_FPMATH_MODE=STRICT, what the
trainer runs with --nobfloat16_convolutions), and, where that mode changes
what oneDNN computes (CPUs with AMX; see
training/math_mode.bfloat16_math_takes_effect), one with every peer in
oneDNN's bfloat16 math mode (BF16, as with --bfloat16_convolutions).
Matmuls measure what the cores can do at best in each precision; the tables
show each peer's effective training GFLOP/s against the float32 one
(training costs about three forward passes: 3 x 2 x forward MACs per
image).

  .venv/bin/python bench/train_bench.py
  .venv/bin/python bench/train_bench.py --depth_multiplier=0.25 \
      --image_size=128 --steps=60 --rounds=3
  .venv/bin/python bench/train_bench.py --peers=ours,slim --profile_steps=3

With --profile_steps, ours and slim each trace a few steps after the timed
ones, and each table is followed by their time per op type side by side:
where a step goes, and which kernels both spend alike.

The machine is shared by whatever else runs on it: the tables print the load
average seen around each peer and per-step medians next to means, because a
busy neighbour shows up as a gap between the two; --rounds runs the peers
round-robin several times and keeps each one's best round.
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
import model_flags
import peer_process
from runtime import slim_compat  # pylint: disable=unused-import
from model import costs
from training import math_mode
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

# The flags that shape the benchmarked step, passed on to the peers; they
# mean what mobilenet_v1_train's flags of the same names do (the math mode
# of its --bfloat16_convolutions is set per table instead).
_STEP_FLAGS = ('depth_multiplier', 'image_size', 'batch_size',
               'num_classes', 'optimizer', 'fuse_batch_norm_relu6')
# The oneDNN math modes a table can run its peers in.
_PRECISIONS = ('float32', 'bfloat16')

model_flags.define_architecture_flags()
flags.adopt_module_key_flags(model_flags)
flags.DEFINE_integer('batch_size', 32, 'Images per training step (the '
                     'team\'s yardstick; the trainer\'s own default is 64).',
                     lower_bound=1)
flags.DEFINE_enum('optimizer', 'sgd', ['sgd', 'momentum', 'rmsprop'],
                  'Optimizer of our step, as mobilenet_v1_train\'s '
                  '--optimizer; the other peers use SGD.')
flags.DEFINE_bool('fuse_batch_norm_relu6', True, 'Our step with the fused '
                  'batch norm + ReLU6 kernels, as mobilenet_v1_train\'s '
                  'flag; compare with --nofuse_batch_norm_relu6.')

flags.DEFINE_integer('steps', 40, 'Timed training steps per peer.',
                     lower_bound=2)
flags.DEFINE_integer('warmup', 5, 'Untimed steps first (graph optimization, '
                     'XLA compilation, oneDNN primitive creation).',
                     lower_bound=1)
flags.DEFINE_list('peers', ['ours', 'slim', 'tf_keras', 'keras3'],
                  'Peers to run, in order; the first is the reference of the '
                  'ratio column. Known: ours, slim, slim_xla, tf_keras, '
                  'keras3.')
flags.DEFINE_list('precisions', list(_PRECISIONS),
                  'Tables to print: float32 (oneDNN math mode STRICT) and '
                  'bfloat16 (math mode BF16; only on CPUs with AMX, where '
                  'the mode changes what oneDNN computes; skipped with a '
                  'note elsewhere).')
flags.DEFINE_integer('rounds', 1, 'Times each table\'s peers run, '
                     'round-robin; each peer\'s best round is shown.',
                     lower_bound=1)
flags.DEFINE_integer('matmul_size', 4096, 'Size of the square matmuls that '
                     'measure the ceilings; 0 skips them.', lower_bound=0)
flags.DEFINE_integer('peer_timeout', 600, 'Seconds before a peer\'s '
                     'subprocess is killed and reported as failed.',
                     lower_bound=10)
flags.DEFINE_integer('profile_steps', 0, 'Traced steps after the timed ones '
                     'in the session peers (ours, slim): each table is '
                     'followed by their time per op type side by side. 0: '
                     'no profile.', lower_bound=0)
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
  if FLAGS.profile_steps:
    result['op_milliseconds'] = _op_milliseconds(session, train_op)
  return result


def _op_milliseconds(session, train_op):
  """Milliseconds per step of each op type, over --profile_steps traced steps.

  Each kernel counts its own wall time; ops that run at the same time on
  different cores each count in full, so the sum can exceed a step.
  """
  import collections  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf1 = tf.compat.v1
  micros = collections.Counter()
  for _ in range(FLAGS.profile_steps):
    metadata = tf1.RunMetadata()
    session.run(train_op, options=tf1.RunOptions(
        trace_level=tf1.RunOptions.FULL_TRACE), run_metadata=metadata)
    for device in metadata.step_stats.dev_stats:
      for node in device.node_stats:
        # The label reads "name = Type(inputs)".
        op_type = node.timeline_label.partition(' = ')[2].partition('(')[0]
        micros[op_type or node.node_name] += node.all_end_rel_micros
  return {op_type: total / 1000 / FLAGS.profile_steps
          for op_type, total in micros.items()}


def _print_profiles(results, rows=16):
  """The op types taking most time in any profiled peer, side by side."""
  names = [n for n in FLAGS.peers if 'op_milliseconds' in results.get(n, {})]
  if not names:
    return
  profiles = {n: results[n]['op_milliseconds'] for n in names}
  totals = {n: sum(profiles[n].values()) for n in names}
  top = sorted({t for n in names for t in profiles[n]},
               key=lambda t: -max(profiles[n].get(t, 0) for n in names))
  print('\nTime per step by op type (%d traced steps; ms and share of the '
        'summed op time):' % FLAGS.profile_steps)
  print('%-48s' % 'op type' + ''.join('%20s' % n for n in names))
  for op_type in top[:rows] + ['(all)']:
    cells = []
    for n in names:
      ms = totals[n] if op_type == '(all)' else profiles[n].get(op_type, 0)
      cells.append('%10.1f ms %5.1f%%' % (ms, 100 * ms / totals[n]))
    print('%-48s' % op_type[:48] + ''.join('%20s' % c for c in cells))


def _synthetic_input(tf):
  """(images, labels) from an in-memory dataset, as the trainer reads them."""
  images, labels = _synthetic_batch()
  dataset = tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(2)
  return tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()


def _run_ours():
  """Our trainer's graph and session options."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from training import config as config_lib
  from training import train_graph
  # pylint: enable=g-import-not-at-top
  tf1 = tf.compat.v1
  # Training from scratch on ImageNet, open-ended, with the trainer's
  # defaults but for the flags above; nothing to count, nothing restored.
  plan = config_lib.resolve(
      config_lib.TrainConfig(
          depth_multiplier=FLAGS.depth_multiplier,
          image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
          num_classes=FLAGS.num_classes, optimizer=FLAGS.optimizer,
          fuse_batch_norm_relu6=FLAGS.fuse_batch_norm_relu6,
          num_train_examples=config_lib.IMAGENET_TRAIN_EXAMPLES),
      count_train_examples=None, batch_norms_restored=True)
  graph = tf.Graph()
  with graph.as_default():
    global_step = tf1.train.get_or_create_global_step()
    images, labels = _synthetic_input(tf)
    step = train_graph.build_train_op(images, labels, global_step, plan)
    with tf1.Session(config=train_graph.session_config()) as session:
      session.run(tf1.global_variables_initializer())
      return _time_session(session, step.train_op)


def _run_slim(xla):
  """The slim model with a plain optimizer and a default session."""
  from runtime.slim_compat import slim  # pylint: disable=g-import-not-at-top
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

  timer = peer_process.step_timer(keras)
  start = time.perf_counter()
  model.fit(dataset, epochs=1, steps_per_epoch=FLAGS.warmup + FLAGS.steps,
            callbacks=[timer], verbose=0)
  marks = timer.times[FLAGS.warmup - 1:]
  result = _step_stats([b - a for a, b in zip(marks, marks[1:])])
  result['warmup_seconds'] = marks[0] - start
  return result


def _run_matmul():
  """Best float32 and bfloat16 square matmul GFLOP/s in this math mode."""
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


def _spawn(name, precision):
  """Runs one peer in a fresh interpreter; returns (result or None, error).

  Args:
    name: the peer, or 'matmul'.
    precision: 'float32' or 'bfloat16': oneDNN's math mode for the child,
      in its environment before TensorFlow loads, exactly as
      mobilenet_v1_train sets it for --[no]bfloat16_convolutions.
  """
  bfloat16 = precision == 'bfloat16'
  env_updates = {
      math_mode.ONEDNN_MATH_MODE_ENV: math_mode.onednn_math_mode(bfloat16),
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
      __file__, name,
      _STEP_FLAGS + ('steps', 'warmup', 'matmul_size', 'profile_steps'),
      _ROOT, FLAGS.peer_timeout, env_updates)


def _training_gflop_per_image():
  """3 x 2 x forward MACs per image (forward, input and weight gradients)."""
  macs = sum(cost.macs for cost in costs.layer_costs(
      FLAGS.depth_multiplier, FLAGS.image_size, FLAGS.num_classes))
  return macs, 3 * 2 * macs / 1e9


def _run_table(precision, gflop_per_image, ceiling):
  """Runs the peers in one math mode; prints their table and ratio.

  Returns:
    ours / best peer images/s, or None if a side failed.
  """
  print('\n%s: every peer in oneDNN math mode %s.' % (
      precision, math_mode.onednn_math_mode(precision == 'bfloat16')),
        flush=True)
  best = {}  # name -> (result, wall, load) of its fastest round
  errors = {}
  for round_index in range(FLAGS.rounds):
    for name in FLAGS.peers:
      load_before = peer_process.load_average()
      start = time.perf_counter()
      result, error = _spawn(name, precision)
      wall = time.perf_counter() - start
      load = max(load_before, peer_process.load_average())
      if result:
        print('  round %d  %-10s %7.1f images/s  (%.0fs, load %.1f)' %
              (round_index + 1, name, result['images_per_sec'], wall, load),
              flush=True)
        if (name not in best or result['images_per_sec'] >
            best[name][0]['images_per_sec']):
          best[name] = (result, wall, load)
      else:
        print('  round %d  %-10s failed: %s' % (round_index + 1, name, error),
              flush=True)
        errors[name] = error

  reference_name = FLAGS.peers[0]
  reference = best.get(reference_name, (None,))[0]
  header = ('%-10s %-46s %9s %9s %8s %8s %7s %6s' %
            ('peer', 'what', 'images/s', 'median/s', 'vs ' + reference_name,
             'GFLOP/s', '%ceil', 'load'))
  print()
  print(header)
  print('-' * len(header))
  for name in FLAGS.peers:
    if name not in best:
      print('%-10s %-46s failed: %s' % (name, _DESCRIPTIONS.get(name, ''),
                                        errors.get(name)))
      continue
    result, _, load = best[name]
    rate = result['images_per_sec']
    gflops = rate * gflop_per_image
    ratio = '%.2fx' % (rate / reference['images_per_sec']) if reference else '-'
    share = '%.0f%%' % (100 * gflops / ceiling) if ceiling else '-'
    print('%-10s %-46s %9.1f %9.1f %8s %8.0f %7s %6.1f' %
          (name, _DESCRIPTIONS.get(name, ''), rate,
           result['median_images_per_sec'], ratio, gflops, share, load))
  _print_profiles({n: best[n][0] for n in best})
  peers = [best[n][0]['images_per_sec'] for n in FLAGS.peers[1:] if n in best]
  if not (reference and peers):
    return None
  ratio = reference['images_per_sec'] / max(peers)
  print('%s: %s / best peer %.2fx (goal 1.30x).' % (precision, reference_name,
                                                    ratio))
  return ratio


def main(argv):
  del argv  # unused
  if FLAGS.child:
    result = _run_child(FLAGS.child)
    peer_process.report(result)
    return
  unknown = set(FLAGS.precisions) - set(_PRECISIONS)
  if unknown:
    raise app.UsageError('--precisions: unknown %s (known: %s)' %
                         (','.join(sorted(unknown)), ','.join(_PRECISIONS)))

  macs, gflop_per_image = _training_gflop_per_image()
  model, features = peer_process.cpu()
  bfloat16_units = sorted(features & {'avx512_bf16', 'amx_bf16'})
  print('MobileNet V1 %g@%d, %d classes, batch %d: %.1fM forward MACs, '
        '%.2f GFLOP per trained image; %d warm-up + %d timed steps per peer.' %
        (FLAGS.depth_multiplier, FLAGS.image_size, FLAGS.num_classes,
         FLAGS.batch_size, macs / 1e6, gflop_per_image, FLAGS.warmup,
         FLAGS.steps))
  print('CPU: %s, %d cores visible, bfloat16 instructions: %s; load average '
        '%.2f at start.' % (model, os.cpu_count(),
                            ', '.join(bfloat16_units) or 'none',
                            peer_process.load_average()), flush=True)

  precisions = [p for p in _PRECISIONS if p in FLAGS.precisions]
  if ('bfloat16' in precisions and
      not math_mode.bfloat16_math_takes_effect(features)):
    print('No bfloat16 table: oneDNN\'s bfloat16 math mode computes exactly '
          'as float32 on this CPU (it runs bfloat16 kernels for it only with '
          'AMX and oneDNN on).')
    precisions.remove('bfloat16')

  ceiling = None
  if FLAGS.matmul_size:
    matmul, error = _spawn('matmul', 'float32')
    if matmul:
      ceiling = matmul['float32']
      print('Ceilings: %d^3 matmul %.0f GFLOP/s float32, %.0f GFLOP/s '
            'bfloat16.' % (FLAGS.matmul_size, matmul['float32'],
                           matmul['bfloat16']), flush=True)
    else:
      print('Ceilings: matmul failed: %s' % error)

  ratios = {p: _run_table(p, gflop_per_image, ceiling) for p in precisions}
  print()
  for precision, ratio in ratios.items():
    print('%-8s %s / best peer: %s' % (
        precision, FLAGS.peers[0], '%.2fx' % ratio if ratio else 'failed'))
  if peer_process.load_average() > 0.5 + os.cpu_count() / 2:
    print('Note: other processes were running (load average %.1f on %d '
          'cores); rates are lower than on an idle machine and their ratios '
          'noisier.' % (peer_process.load_average(), os.cpu_count()))


if __name__ == '__main__':
  app.run(main)
