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
  torch     (on request) PyTorch: timm's `mobilenetv1_100` (at other
            widths, its builder with --depth_multiplier), channels_last,
            SGD, one intra-op thread per visible core. Installed on first
            use into a venv of its own (--torch_venv, pinned releases), not
            into the project's; its child runs with that venv's python.
  slim_xla  (on request) as `slim`, with XLA auto-clustering (global_jit_level
            ON_1 and TF_XLA_FLAGS=--tf_xla_cpu_global_jit, without which CPU
            ops are not clustered); float32 only.

Peers are compared at the same precision, each as its own users would set
it up, one table per precision (--precisions):

  float32   every peer in plain float32.
  bfloat16  mixed bfloat16: bfloat16 activations and multiplies, float32
            variables and loss. Ours trains with --precision=mixed_bfloat16;
            slim builds the same model on `training.mixed_precision`'s
            bfloat16 casts of float32 variables, logits cast to float32
            for the loss; the Keras peers under the global policy
            'mixed_bfloat16', their final softmax in float32 (as the Keras
            mixed-precision guide says); torch under
            `torch.autocast('cpu', dtype=torch.bfloat16)`.

Without native bfloat16 arithmetic (AVX512-BF16, AMX or Arm's BF16; see
training/precision.native_bfloat16_units) oneDNN emulates bfloat16 through
float32, so the bfloat16 table runs there, slower than the float32 one, and
says so. Square matmuls in explicit float32 and bfloat16 measure what the
cores can do at best in each precision; each table shows its peers'
effective training GFLOP/s against its own precision's ceiling (training
costs about three forward passes: 3 x 2 x forward MACs per image).

  .venv/bin/python bench/train_bench.py
  .venv/bin/python bench/train_bench.py --depth_multiplier=0.25 \
      --image_size=128 --steps=60 --rounds=3
  .venv/bin/python bench/train_bench.py --peers=ours,slim,tf_keras,torch \
      --precisions=float32 --rounds=2
  .venv/bin/python bench/train_bench.py --peers=ours,slim --profile_steps=3
  .venv/bin/python bench/train_bench.py --quantize --profile_steps=3

--quantize times quantization-aware training steps instead, in float32:
ours as a quantization-aware fine-tune of mobilenet_v1_train runs it
(--quantize, quantized from the first step, per-channel weights, batch
norms kept and fused) against tf_keras's MobileNet quantized by tfmot as
bench/qat_bench.py's peer is (bench/tfmot_peer.py, whose accuracy that
bench checks).

With --profile_steps, every peer traces a few steps after the timed ones,
and each table is followed by their time per op type side by side: where a
step goes, and which kernels the peers spend alike. TensorFlow peers count
kernel time from TensorFlow's profiler (bench/op_profile.py); torch counts
each aten op's own CPU time, so its op names are aten's.

The machine is shared by whatever else runs on it: the tables print the load
average seen around each peer, per-step medians next to means, and the
spread of each peer's rate over rounds, because a busy neighbour shows up as
a gap between them; --rounds runs the peers round-robin several times and
keeps each one's best round. --results_csv appends each table's rows to
bench/results/train_speed.csv's format, --profile_csv the profiles to
bench/results/train_profile.csv's.
"""

import datetime
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

# Our modules live in the repository root, one level up.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# Nothing imported here may import TensorFlow: the torch peer's child runs
# this file in a venv without it. The TensorFlow peers import what they need.
# pylint: disable=g-import-not-at-top,wrong-import-position
import model_flags
import peer_process
from training import precision as precision_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

# The flags that shape the benchmarked step, passed on to the peers; they
# mean what mobilenet_v1_train's flags of the same names do.
_STEP_FLAGS = ('depth_multiplier', 'image_size', 'batch_size',
               'num_classes', 'optimizer', 'fuse_batch_norm_relu6',
               'quantize')
# The tables, by the precision of their peers, and the TrainConfig
# precision ours runs at in each.
_PRECISIONS = ('float32', 'bfloat16')
_OUR_PRECISION = {'float32': precision_lib.FLOAT32,
                  'bfloat16': precision_lib.MIXED_BFLOAT16}
_PEERS = ('ours', 'slim', 'slim_xla', 'tf_keras', 'keras3', 'torch')
# Peers without a bfloat16 set-up of their own.
_FLOAT32_ONLY = ('slim_xla',)
# Peers with a quantization-aware set-up (--quantize): tf_keras's is tfmot.
_QUANTIZED = ('ours', 'tf_keras')

# The torch peer's venv: pinned releases, so that its rows compare across
# runs. PyPI's torch for x86-64 Linux is the CUDA build (several GB with its
# nvidia packages); this machine kind keeps the CPU build of 2.13.0 on disk,
# where pip finds it first. torchvision (which timm imports) and timm go in
# without their dependencies, so that they cannot pull in another torch.
_TORCH_REQUIREMENTS = ('torch==2.13.0', 'pillow==13.0.0', 'PyYAML==6.0.4',
                       'huggingface_hub==2.4.0', 'safetensors==0.8.0')
_TORCH_NO_DEPS = ('torchvision==0.28.0', 'timm==1.0.31')
# This file's own imports in the torch child, at the project's versions.
_PROJECT_PACKAGES = ('absl-py', 'numpy')

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
                  'ratio column. Known: %s (torch installs itself into '
                  '--torch_venv on first use).' % ', '.join(_PEERS))
flags.DEFINE_list('precisions', list(_PRECISIONS),
                  'Tables to print: float32 (every peer in float32) and '
                  'bfloat16 (every peer in its own mixed bfloat16; emulated, '
                  'so slower, on CPUs without bfloat16 arithmetic).')
flags.DEFINE_integer('rounds', 1, 'Times each table\'s peers run, '
                     'round-robin; each peer\'s best round is shown.',
                     lower_bound=1)
flags.DEFINE_integer('matmul_size', 4096, 'Size of the square matmuls that '
                     'measure the ceilings; 0 skips them.', lower_bound=0)
flags.DEFINE_integer('peer_timeout', 600, 'Seconds before a peer\'s '
                     'subprocess is killed and reported as failed.',
                     lower_bound=10)
flags.DEFINE_integer('profile_steps', 0, 'Traced steps after the timed ones '
                     'in every peer: each table is followed by their time '
                     'per op type side by side. 0: no profile.',
                     lower_bound=0)
flags.DEFINE_bool('quantize', False, 'Time quantization-aware training '
                  'steps instead: ours with --quantize as a fine-tune runs '
                  'it (quantized from the first step, per-channel weights, '
                  'batch norms kept) against tf_keras quantized by tfmot as '
                  'bench/qat_bench.py sets it up; float32 only.')
flags.DEFINE_string('torch_venv',
                    os.path.join(os.path.expanduser('~'), '.cache',
                                 'mobilenet_v1_bench', 'torch-venv'),
                    'The torch peer\'s venv, made with this python and '
                    'filled from PyPI on first use (pinned torch, '
                    'torchvision, timm).')
flags.DEFINE_string('results_csv', '', 'If set, each table\'s rows are '
                    'appended to this CSV (bench/results/train_speed.csv\'s '
                    'columns).')
flags.DEFINE_string('profile_csv', '', 'If set (with --profile_steps), each '
                    'profiled peer\'s time per op type is appended to this '
                    'CSV (bench/results/train_profile.csv\'s columns).')
flags.DEFINE_string('child', '', 'Internal: run one peer (or "matmul") in '
                    'this process and print its result as JSON.')
flags.DEFINE_enum('child_precision', 'float32', list(_PRECISIONS),
                  'Internal: the table the child runs in.')


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


def _time_steps(run_step):
  """Runs warm-up steps, then times each of --steps steps."""
  start = time.perf_counter()
  for _ in range(FLAGS.warmup):
    run_step()
  warmup_seconds = time.perf_counter() - start
  step_seconds = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    run_step()
    step_seconds.append(time.perf_counter() - start)
  result = _step_stats(step_seconds)
  result['warmup_seconds'] = warmup_seconds
  return result


def _time_session(session, train_op):
  """Times a session's steps; then traces --profile_steps more."""
  result = _time_steps(lambda: session.run(train_op))
  if FLAGS.profile_steps:
    import op_profile  # pylint: disable=g-import-not-at-top
    result['op_milliseconds'] = op_profile.op_milliseconds(
        lambda: [session.run(train_op) for _ in range(FLAGS.profile_steps)],
        FLAGS.profile_steps)
  return result


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


def _run_ours(precision):
  """Our trainer's graph and session options, at the table's precision."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from training import config as config_lib
  from training import train_graph
  # pylint: enable=g-import-not-at-top
  tf1 = tf.compat.v1
  # Training from scratch on ImageNet, open-ended, with the trainer's
  # defaults but for the flags above; nothing to count, nothing restored.
  # The explicit precision overrides the CPU's rule, so cpu_features does
  # not matter here.
  plan = config_lib.resolve(
      config_lib.TrainConfig(
          depth_multiplier=FLAGS.depth_multiplier,
          image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
          num_classes=FLAGS.num_classes, optimizer=FLAGS.optimizer,
          fuse_batch_norm_relu6=FLAGS.fuse_batch_norm_relu6,
          precision=_OUR_PRECISION[precision],
          num_train_examples=config_lib.IMAGENET_TRAIN_EXAMPLES,
          # A quantization-aware fine-tune's step: quantized from the
          # first step (its default quant delay there).
          quantize=FLAGS.quantize, quant_delay=0 if FLAGS.quantize else None),
      count_train_examples=None, batch_norms_restored=True,
      cpu_features=set())
  graph = tf.Graph()
  with graph.as_default():
    global_step = tf1.train.get_or_create_global_step()
    images, labels = _synthetic_input(tf)
    step = train_graph.build_train_op(images, labels, global_step, plan)
    with tf1.Session(config=train_graph.session_config()) as session:
      session.run(tf1.global_variables_initializer())
      result = _time_session(session, step.train_op)
  if FLAGS.fuse_batch_norm_relu6:
    result['unfused_because'] = _unfused_because(graph)
  return result


def _unfused_because(graph):
  """Why ours runs batch norm + ReLU6 as TensorFlow's ops, or None."""
  # pylint: disable=g-import-not-at-top
  from kernels import batch_norm_relu6
  from quantization import graph_editing
  # pylint: enable=g-import-not-at-top
  if any(op.type == graph_editing.BATCH_NORM_RELU6_TYPE
         for op in graph.get_operations()):
    return None
  return (batch_norm_relu6.unavailable_reason() or
          'the trainer does not fuse this configuration')


def _run_slim(precision, xla):
  """The slim model with a plain optimizer and a default session.

  In bfloat16, the model takes the mixed-precision casts ours takes (float32
  variables read as bfloat16, bfloat16 images), and the loss float32 logits:
  the same model either way, so that the table compares the training steps.
  """
  from runtime.slim_compat import slim  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import mobilenet_v1  # pylint: disable=g-import-not-at-top
  from training import mixed_precision  # pylint: disable=g-import-not-at-top
  tf1 = tf.compat.v1
  model_precision = _OUR_PRECISION[precision]
  graph = tf.Graph()
  with graph.as_default():
    global_step = tf1.train.get_or_create_global_step()
    images, labels = _synthetic_input(tf)
    with mixed_precision.float32_variables(model_precision):
      with slim.arg_scope(
          mobilenet_v1.mobilenet_v1_arg_scope(is_training=True)):
        logits, _ = mobilenet_v1.mobilenet_v1(
            mixed_precision.cast_images(images, model_precision),
            num_classes=FLAGS.num_classes,
            depth_multiplier=FLAGS.depth_multiplier)
    logits = tf.cast(logits, tf.float32)
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


def _run_keras(keras, precision):
  """keras.applications.MobileNet trained with fit on the synthetic batch.

  With --quantize (tf_keras only), quantized by tfmot first, as
  bench/qat_bench.py's peer is.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  images, labels = _synthetic_batch()
  one_hot = np.eye(FLAGS.num_classes, dtype=np.float32)[labels]
  size = FLAGS.image_size
  bfloat16 = precision == 'bfloat16'
  if bfloat16:
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
  model = keras.applications.MobileNet(
      input_shape=(size, size, 3), alpha=FLAGS.depth_multiplier,
      weights=None, classes=FLAGS.num_classes,
      classifier_activation=None if bfloat16 else 'softmax')
  if FLAGS.quantize:
    import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top
    import tfmot_peer  # pylint: disable=g-import-not-at-top
    model = tfmot_peer.quantize(tfmot, keras, model)
  if bfloat16:
    # The guide's set-up: the last layer's softmax in float32, so that the
    # loss reads float32 probabilities.
    outputs = keras.layers.Activation('softmax', dtype='float32')(
        model.output)
    model = keras.Model(model.inputs, outputs)
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
  if FLAGS.profile_steps:
    import op_profile  # pylint: disable=g-import-not-at-top
    result['op_milliseconds'] = op_profile.op_milliseconds(
        lambda: model.fit(dataset, epochs=1,
                          steps_per_epoch=FLAGS.profile_steps, verbose=0),
        FLAGS.profile_steps)
  return result


def _import_timm(torch):
  """Imports timm beside the CPU build of torch.

  timm imports torchvision, whose PyPI wheels are built against the CUDA
  build of torch: beside the CPU build its compiled ops do not load, and its
  import then stops registering fake kernels for two of them. Declaring
  their schemas first lets it through; nothing here calls them.
  """
  if torch.version.cuda is None:
    for op in ('nms', 'qnms'):
      torch.library.define(
          'torchvision::' + op,
          '(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
  import timm  # pylint: disable=g-import-not-at-top
  return timm


def _run_torch(precision):
  """timm's MobileNet V1 trained with SGD in eager PyTorch, channels_last."""
  import torch  # pylint: disable=g-import-not-at-top
  timm = _import_timm(torch)
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  images, labels = _synthetic_batch()
  # The same batch, NCHW as torch's convolutions take it, in the
  # channels_last memory layout oneDNN runs fastest.
  inputs = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(
      memory_format=torch.channels_last)
  targets = torch.from_numpy(labels)
  if FLAGS.depth_multiplier == 1:
    model = timm.create_model('mobilenetv1_100',
                              num_classes=FLAGS.num_classes)
  else:
    # mobilenetv1_100 fixes its width at 1.0; the function that builds it
    # takes any (timm registers only a few widths under names of their own).
    from timm.models import efficientnet  # pylint: disable=g-import-not-at-top
    model = efficientnet._gen_mobilenet_v1(  # pylint: disable=protected-access
        'mobilenetv1_100', FLAGS.depth_multiplier,
        num_classes=FLAGS.num_classes)
  model = model.to(memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.045)
  bfloat16 = precision == 'bfloat16'

  def step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bfloat16):
      logits = model(inputs)
    loss = torch.nn.functional.cross_entropy(logits.float(), targets)
    loss.backward()
    optimizer.step()

  result = _time_steps(step)
  result['versions'] = 'torch %s, timm %s' % (torch.__version__,
                                               timm.__version__)
  if FLAGS.profile_steps:
    result['op_milliseconds'] = _torch_op_milliseconds(torch, step)
  return result


def _torch_op_milliseconds(torch, step):
  """Milliseconds per step of each aten op, over --profile_steps steps.

  An op's own time, without the ops it calls (aten::conv2d's is mostly that
  of the oneDNN convolution below it), so that nothing counts twice.
  """
  with torch.profiler.profile(
      activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
    for _ in range(FLAGS.profile_steps):
      step()
  return {event.key: event.self_cpu_time_total / 1000 / FLAGS.profile_steps
          for event in profile.key_averages()
          if event.self_cpu_time_total > 0}


def _torch_python():
  """The torch peer's python, its venv made and filled first if needed.

  Returns:
    (path of the venv's python or None, what went wrong in one line).
  """
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  venv = FLAGS.torch_venv
  python = os.path.join(venv, 'bin', 'python')
  pins = list(_TORCH_REQUIREMENTS) + [
      '%s==%s' % (name, importlib.metadata.version(name))
      for name in _PROJECT_PACKAGES]
  wanted = '\n'.join(pins + ['--no-deps'] + list(_TORCH_NO_DEPS)) + '\n'
  stamp = os.path.join(venv, 'bench-requirements.txt')
  if os.path.exists(stamp):
    with open(stamp) as f:
      if f.read() == wanted:
        return python, ''
  print('Installing the torch peer into %s (%s; once)...' % (
      venv, ', '.join(pins + list(_TORCH_NO_DEPS))), flush=True)
  for argv in ([sys.executable, '-m', 'venv', venv],
               [python, '-m', 'pip', 'install', '-q'] + pins,
               [python, '-m', 'pip', 'install', '-q', '--no-deps'] +
               list(_TORCH_NO_DEPS)):
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
      errors = [line for line in done.stderr.splitlines()
                if 'ERROR' in line] or done.stderr.splitlines() or ['?']
      return None, '%s failed: %s' % (' '.join(argv[:4]), errors[-1][:200])
  with open(stamp, 'w') as f:
    f.write(wanted)
  return python, ''


def _run_matmul():
  """Best explicit float32 and bfloat16 square matmul GFLOP/s."""
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
    'torch': 'PyTorch, timm mobilenetv1_100, channels_last',
}


def _run_child(name):
  """Runs one peer in this process; returns its result dict."""
  precision = FLAGS.child_precision
  if name == 'torch':
    return _run_torch(precision)
  # The TensorFlow peers: tf-slim's fixes before TensorFlow starts.
  # pylint: disable-next=g-import-not-at-top,unused-import
  from runtime import slim_compat
  if name == 'matmul':
    return _run_matmul()
  if name == 'ours':
    return _run_ours(precision)
  if name in ('slim', 'slim_xla'):
    return _run_slim(precision, xla=name == 'slim_xla')
  if name == 'tf_keras':
    import tf_keras  # pylint: disable=g-import-not-at-top
    return _run_keras(tf_keras, precision)
  if name == 'keras3':
    import keras  # pylint: disable=g-import-not-at-top
    return _run_keras(keras, precision)
  raise ValueError('unknown peer %r' % name)


def _spawn(name, precision):
  """Runs one peer in a fresh interpreter; returns (result or None, error).

  Args:
    name: the peer, or 'matmul'.
    precision: the table, 'float32' or 'bfloat16'.
  """
  env_updates = {
      # A leftover oneDNN math mode would turn float32 convolutions into
      # bfloat16 ones (on CPUs with AMX) behind the table's back.
      'ONEDNN_DEFAULT_FPMATH_MODE': None,
      # Keras 3 must not be swapped for tf_keras by a leftover setting.
      'TF_USE_LEGACY_KERAS': None,
      'KERAS_BACKEND': os.environ.get('KERAS_BACKEND', 'tensorflow'),
  }
  if name not in ('ours', 'matmul'):
    env_updates.update(peer_process.tensorflow_defaults())
  python = None
  if name == 'slim_xla':
    # On CPU, global_jit_level clusters nothing unless this flag is set
    # before TensorFlow starts (the XLA CPU device only auto-clusters with
    # it); without it the peer would be plain slim.
    env_updates['TF_XLA_FLAGS'] = (os.environ.get('TF_XLA_FLAGS', '') +
                                   ' --tf_xla_cpu_global_jit').strip()
  if name == 'torch':
    python, error = _torch_python()
    if not python:
      return None, error
  flag_names = _STEP_FLAGS + ('steps', 'warmup', 'matmul_size',
                              'profile_steps', 'child_precision')
  FLAGS.child_precision = precision
  return peer_process.run(__file__, name, flag_names, _ROOT,
                          FLAGS.peer_timeout, env_updates, python=python)


def _training_gflop_per_image():
  """3 x 2 x forward MACs per image (forward, input and weight gradients)."""
  from model import costs  # pylint: disable=g-import-not-at-top
  macs = sum(cost.macs for cost in costs.layer_costs(
      FLAGS.depth_multiplier, FLAGS.image_size, FLAGS.num_classes))
  return macs, 3 * 2 * macs / 1e9


_TABLE_TITLES = {
    'float32': 'float32: every peer in float32.',
    'bfloat16': ('bfloat16: every peer in its mixed bfloat16 (bfloat16 '
                 'activations, float32 variables and loss).'),
}
_QUANTIZED_TITLE = ('float32, quantization-aware: ours with --quantize, '
                    'tf_keras quantized by tfmot.')


def _run_table(precision, gflop_per_image, ceiling):
  """Runs the peers at one precision; prints their table and ratio.

  Returns:
    {peer: (best round's result, load, [images/s of every round])}.
  """
  print('\n' + (_QUANTIZED_TITLE if FLAGS.quantize
                 else _TABLE_TITLES[precision]), flush=True)
  peers = _table_peers(precision)
  best = {}  # name -> (result, load, rates) of its fastest round
  errors = {}
  for round_index in range(FLAGS.rounds):
    for name in peers:
      load_before = peer_process.load_average()
      start = time.perf_counter()
      result, error = _spawn(name, precision)
      wall = time.perf_counter() - start
      load = max(load_before, peer_process.load_average())
      if result:
        print('  round %d  %-10s %7.1f images/s  (%.0fs, load %.1f)' %
              (round_index + 1, name, result['images_per_sec'], wall, load),
              flush=True)
        rates = best.get(name, (None, None, []))[2] + [
            result['images_per_sec']]
        if (name not in best or result['images_per_sec'] >
            best[name][0]['images_per_sec']):
          best[name] = (result, load, rates)
        else:
          best[name] = best[name][:2] + (rates,)
      else:
        print('  round %d  %-10s failed: %s' % (round_index + 1, name, error),
              flush=True)
        errors[name] = error

  reference_name = peers[0]
  reference = best.get(reference_name, (None,))[0]
  header = ('%-10s %-46s %9s %9s %13s %8s %8s %6s %6s' %
            ('peer', 'what', 'images/s', 'median/s', 'spread',
             'vs ' + reference_name, 'GFLOP/s', '%ceil', 'load'))
  print()
  print(header)
  print('-' * len(header))
  for name in peers:
    if name not in best:
      print('%-10s %-46s failed: %s' % (name, _DESCRIPTIONS.get(name, ''),
                                        errors.get(name)))
      continue
    result, load, rates = best[name]
    rate = result['images_per_sec']
    gflops = rate * gflop_per_image
    ratio = '%.2fx' % (rate / reference['images_per_sec']) if reference else '-'
    share = '%.0f%%' % (100 * gflops / ceiling) if ceiling else '-'
    print('%-10s %-46s %9.1f %9.1f %13s %8s %8.0f %6s %6.1f' %
          (name, _DESCRIPTIONS.get(name, ''), rate,
           result['median_images_per_sec'],
           '%.1f-%.1f' % (min(rates), max(rates)), ratio, gflops, share,
           load))
  if best.get('ours', ({},))[0].get('unfused_because'):
    print('(ours: batch norm + ReLU6 ran as TensorFlow\'s ops, not fused: '
          '%s; its figures are not the trainer\'s.)' %
          best['ours'][0]['unfused_because'])
  if 'torch' in best:
    print('(torch: %s.)' % best['torch'][0]['versions'])
  if FLAGS.quantize and 'tf_keras' in best:
    print('(tf_keras: quantized by tfmot, bench/tfmot_peer.py.)')
  _print_profiles({n: best[n][0] for n in best})
  ratio = _ours_over_best_peer(best, peers)
  if ratio:
    print('%s: %s / best peer %.2fx (goal 1.30x).' % (precision,
                                                      reference_name, ratio))
  return best


def _table_peers(precision):
  """The peers of --peers that run in a table, in their order."""
  if FLAGS.quantize:
    return [n for n in FLAGS.peers if n in _QUANTIZED]
  return [n for n in FLAGS.peers
          if precision == 'float32' or n not in _FLOAT32_ONLY]


def _ours_over_best_peer(best, peers):
  """The reference's images/s over the fastest other peer's, or None."""
  reference = best.get(peers[0])
  others = [best[n][0]['images_per_sec'] for n in peers[1:] if n in best]
  if not (reference and others):
    return None
  return reference[0]['images_per_sec'] / max(others)


def _vector_units(features):
  """The CPU's widest x86 vector extension, as the CSV notes name it."""
  if 'avx512f' in features:
    return 'AVX-512'
  if 'avx2' in features:
    return 'AVX2, no AVX-512'
  return 'no AVX2'


def _row_context(cpu_model):
  """The columns every results row of this run shares, but its precision."""
  commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=_ROOT,
                          capture_output=True, text=True,
                          check=False).stdout.strip()
  command = ' '.join(['.venv/bin/python bench/train_bench.py'] + [
      arg for arg in sys.argv[1:]
      if not arg.startswith(('--results_csv', '--profile_csv'))])
  return {
      'date': datetime.date.today().isoformat(),
      'commit': commit,
      'cpu_model': cpu_model,
      'cores': len(os.sched_getaffinity(0)),
      'task': ('QAT step (synthetic batch)' if FLAGS.quantize
               else 'float training'),
      'model': '%s@%d' % (FLAGS.depth_multiplier, FLAGS.image_size),
      'batch_size': FLAGS.batch_size,
      'command': command,
  }


def _csv_precision(precision):
  """A table's precision as the CSVs name it."""
  return 'float32' if precision == 'float32' else 'mixed bfloat16'


def _csv_writer(f, columns, new_file):
  """A DictWriter of LF rows, the header first in a new file."""
  import csv  # pylint: disable=g-import-not-at-top
  writer = csv.DictWriter(f, columns, lineterminator='\n')
  if new_file:
    writer.writeheader()
  return writer


def _append_profile_rows(path, tables, cpu_model, rows=16):
  """Appends each profiled peer's top op types as train_profile.csv rows."""
  columns = ('date', 'commit', 'cpu_model', 'cores', 'task', 'model',
             'batch_size', 'precision', 'peer', 'op_type', 'ms_per_step',
             'share', 'command', 'notes')
  context = _row_context(cpu_model)
  new_file = not os.path.exists(path)
  with open(path, 'a', newline='') as f:
    writer = _csv_writer(f, columns, new_file)
    for precision, best in tables.items():
      for name in FLAGS.peers:
        profile = best.get(name, ({},))[0].get('op_milliseconds')
        if not profile:
          continue
        total = sum(profile.values())
        top = sorted(profile, key=lambda t: -profile[t])[:rows]
        for op_type in top + ['all']:
          ms = total if op_type == 'all' else profile[op_type]
          writer.writerow(dict(
              context, precision=_csv_precision(precision), peer=name,
              op_type=op_type, ms_per_step='%.1f' % ms,
              share='%.1f' % (100 * ms / total),
              notes=('aten self CPU time per op' if name == 'torch' else
                     'kernel time per step summed over both cores') +
              '; %d traced steps; same run as train_speed.csv' %
              FLAGS.profile_steps))
  print('Appended the profile rows to %s.' % path)


def _append_rows(path, tables, gflop_per_image, ceilings, cpu_model,
                 cpu_features):
  """Appends each table's peers as rows of train_speed.csv's columns."""
  units = precision_lib.native_bfloat16_units(cpu_features)
  columns = ('date', 'commit', 'cpu_model', 'cores', 'task', 'model',
             'batch_size', 'precision', 'peer', 'images_per_s', 'vs_ours',
             'ours_over_best_peer', 'ours_over_peer', 'seconds', 'gflops',
             'matmul_ceiling_gflops', 'load_avg', 'command', 'notes')
  context = _row_context(cpu_model)
  new_file = not os.path.exists(path)
  with open(path, 'a', newline='') as f:
    writer = _csv_writer(f, columns, new_file)
    for precision, best in tables.items():
      peers = [n for n in FLAGS.peers if n in best]
      if not peers:
        continue
      reference = best[FLAGS.peers[0]][0] if FLAGS.peers[0] in best else None
      ratio = _ours_over_best_peer(best, [FLAGS.peers[0]] + [
          n for n in peers if n != FLAGS.peers[0]])
      loads = [best[n][1] for n in peers]
      # lscpu's model name alone ("AMD EPYC") does not tell the generation.
      notes = '%s; native bfloat16: %s; best of %d round(s) of %d steps' % (
          _vector_units(cpu_features), ', '.join(units) or 'none',
          FLAGS.rounds, FLAGS.steps)
      if precision == 'bfloat16' and not units:
        notes += '; bfloat16 emulated (no native bfloat16 arithmetic)'
      for name in peers:
        result, _, rates = best[name]
        rate = result['images_per_sec']
        row_notes = notes + '; median %.1f; spread %.1f-%.1f' % (
            result['median_images_per_sec'], min(rates), max(rates))
        if name == 'torch':
          row_notes += '; ' + result['versions']
        if result.get('unfused_because'):
          row_notes += ('; batch norm + ReLU6 not fused: ' +
                        result['unfused_because'])
        writer.writerow(dict(context, **{
            'precision': _csv_precision(precision),
            'peer': name,
            'images_per_s': '%.1f' % rate,
            'vs_ours': ('%.2f' % (rate / reference['images_per_sec'])
                        if reference else ''),
            'ours_over_best_peer': ('%.2f' % ratio
                                    if ratio and name == FLAGS.peers[0]
                                    else ''),
            'gflops': '%.0f' % (rate * gflop_per_image),
            'matmul_ceiling_gflops': ('%.0f' % ceilings[precision]
                                      if ceilings.get(precision) else ''),
            'load_avg': '%.1f-%.1f' % (min(loads), max(loads)),
            'notes': row_notes,
        }))
  print('Appended the rows to %s.' % path)


def main(argv):
  del argv  # unused
  if FLAGS.child:
    result = _run_child(FLAGS.child)
    peer_process.report(result)
    return
  for flag, values, known in (('precisions', FLAGS.precisions, _PRECISIONS),
                              ('peers', FLAGS.peers, _PEERS)):
    unknown = set(values) - set(known)
    if unknown or not values:
      raise app.UsageError('--%s: unknown %s (known: %s)' %
                           (flag, ','.join(sorted(unknown)) or 'none given',
                            ','.join(known)))
  if FLAGS.quantize and (FLAGS.precisions != ['float32'] and
                         FLAGS['precisions'].present):
    raise app.UsageError('--quantize times float32 steps alone: drop '
                         '--precisions or make it float32')
  # TensorFlow loads here, in the parent only.
  # pylint: disable-next=g-import-not-at-top,unused-import
  from runtime import slim_compat

  macs, gflop_per_image = _training_gflop_per_image()
  model, cpu_features = peer_process.cpu()
  units = precision_lib.native_bfloat16_units(cpu_features)
  print('MobileNet V1 %g@%d, %d classes, batch %d: %.1fM forward MACs, '
        '%.2f GFLOP per trained image; %d warm-up + %d timed steps per peer.' %
        (FLAGS.depth_multiplier, FLAGS.image_size, FLAGS.num_classes,
         FLAGS.batch_size, macs / 1e6, gflop_per_image, FLAGS.warmup,
         FLAGS.steps))
  print('CPU: %s, %d cores visible, native bfloat16 units: %s; load average '
        '%.2f at start.' % (model, len(os.sched_getaffinity(0)),
                            ', '.join(units) or 'none',
                            peer_process.load_average()), flush=True)

  precisions = ['float32'] if FLAGS.quantize else [
      p for p in _PRECISIONS if p in FLAGS.precisions]
  if 'bfloat16' in precisions and not units:
    print('bfloat16 is emulated on this CPU (no AVX512-BF16, AMX or Arm '
          'BF16: oneDNN converts to float32 and back), so the bfloat16 '
          'table runs slower than the float32 one.')

  ceilings = {}
  if FLAGS.matmul_size:
    matmul, error = _spawn('matmul', 'float32')
    if matmul:
      ceilings = {'float32': matmul['float32'],
                  'bfloat16': matmul['bfloat16']}
      print('Ceilings: %d^3 matmul %.0f GFLOP/s float32, %.0f GFLOP/s '
            'bfloat16.' % (FLAGS.matmul_size, matmul['float32'],
                           matmul['bfloat16']), flush=True)
    else:
      print('Ceilings: matmul failed: %s' % error)

  tables = {p: _run_table(p, gflop_per_image, ceilings.get(p))
            for p in precisions}
  reference_name = FLAGS.peers[0]
  print()
  for precision, best in tables.items():
    peers = _table_peers(precision)
    if len(peers) < 2:
      continue  # no peer to compare with
    ratio = _ours_over_best_peer(best, peers)
    print('%-8s %s / best peer: %s' % (
        precision, reference_name, '%.2fx' % ratio if ratio else 'failed'))
  rates = {p: best[reference_name][0]['images_per_sec']
           for p, best in tables.items() if reference_name in best}
  if len(rates) == 2:
    print('%s bfloat16 / %s float32: %.2fx%s.' % (
        reference_name, reference_name, rates['bfloat16'] / rates['float32'],
        ' (bfloat16 emulated on this CPU)' if not units else ''))
  if peer_process.load_average() > 0.5 + os.cpu_count() / 2:
    print('Note: other processes were running (load average %.1f on %d '
          'cores); rates are lower than on an idle machine and their ratios '
          'noisier.' % (peer_process.load_average(), os.cpu_count()))
  if FLAGS.profile_csv:
    _append_profile_rows(FLAGS.profile_csv, tables, model)
  if FLAGS.results_csv:
    _append_rows(FLAGS.results_csv, tables, gflop_per_image, ceilings, model,
                 cpu_features)


if __name__ == '__main__':
  app.run(main)
