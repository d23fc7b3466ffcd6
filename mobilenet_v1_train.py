r"""Trains MobileNet V1 on ImageNet-format TFRecords, float or quantized.

From scratch:

  ./bazel-bin/mobilenet_v1_train --dataset_dir DIR --checkpoint_dir DIR

Quantization-aware, from a float checkpoint:

  ./bazel-bin/mobilenet_v1_train --dataset_dir DIR --checkpoint_dir DIR \
      --quantize=True --fine_tune_checkpoint=float/checkpoint/path

Killed at any moment, the same command resumes from the last checkpoint in
--checkpoint_dir that reads back whole, with its global step. SIGINT (Ctrl-C)
or SIGTERM saves a checkpoint at the current step first; a second signal
exits at once. One run at a time trains into a --checkpoint_dir (a lock file
there). Parameter-server training: start one
process per task with the same --ps_hosts/--worker_hosts and its own
--job_name/--task (see README.md).
"""

import copy
import math
import os
import shlex
import signal
import sys
import time

from absl import flags
from runtime import directory_lock

# A second run on a --checkpoint_dir in use is refused at once, before
# TensorFlow takes its seconds to load.
if __name__ == '__main__':
  directory_lock.exit_if_in_use(sys.argv, 'mobilenet_v1_train')

FLAGS = flags.FLAGS

# oneDNN reads its math mode from the environment once, when TensorFlow
# creates its first oneDNN primitive. Run as a program, the trainer sets it
# from its own command line below, before it imports TensorFlow; importing
# this module (tests, benchmarks) leaves the process's mode alone.
ONEDNN_MATH_MODE_ENV = 'ONEDNN_DEFAULT_FPMATH_MODE'
flags.DEFINE_bool('bfloat16_convolutions', True,
                  'Train with oneDNN\'s bfloat16 math mode (sets '
                  '$ONEDNN_DEFAULT_FPMATH_MODE to BF16, else STRICT): on CPUs '
                  'with AMX the convolutions round their inputs '
                  '(activations, weights, gradients) to bfloat16, 8 '
                  'significant bits, before multiplying, and accumulate in '
                  'float32; variables, batch norm, the loss and the '
                  'optimizer stay float32. Faster there; no effect on other '
                  'CPUs, AVX512-BF16 ones without AMX included (TensorFlow '
                  '2.21\'s oneDNN keeps its float32 kernels there). '
                  'Evaluation and export do not set the mode: float32 '
                  'unless $ONEDNN_DEFAULT_FPMATH_MODE says otherwise.')


def onednn_math_mode(bfloat16_convolutions):
  """The $ONEDNN_DEFAULT_FPMATH_MODE that --bfloat16_convolutions asks for."""
  return 'BF16' if bfloat16_convolutions else 'STRICT'


def bfloat16_math_takes_effect(cpu_features):
  """Whether oneDNN's bfloat16 math mode changes what training computes.

  oneDNN 3.7 (TensorFlow 2.21) runs float32 convolutions and matmuls on
  bfloat16 units for that mode only on CPUs with AMX. With AVX512-BF16 alone
  it picks the float32 kernels STRICT mode runs, so the results are the same
  bit for bit; with TF_ENABLE_ONEDNN_OPTS=0 TensorFlow's own kernels compute
  in float32.

  Args:
    cpu_features: the CPU's feature flags, as `batch_norm_relu6.cpu_features`
      reads them.

  Returns:
    True where --bfloat16_convolutions rounds convolution inputs to bfloat16.
  """
  onednn = os.environ.get('TF_ENABLE_ONEDNN_OPTS', '1').lower() not in (
      '0', 'false')
  return onednn and 'amx_bf16' in cpu_features


def bfloat16_convolutions_in(argv):
  """--bfloat16_convolutions as absl will parse it from `argv`.

  Args:
    argv: the command line, program name first; --flagfile is read.

  Returns:
    The flag's value (its default if argv does not set it).
  """
  early = flags.FlagValues()
  flags.DEFINE_flag(copy.deepcopy(FLAGS['bfloat16_convolutions']),
                    flag_values=early)
  early(argv, known_only=True)
  return early['bfloat16_convolutions'].value


if __name__ == '__main__':
  os.environ[ONEDNN_MATH_MODE_ENV] = onednn_math_mode(
      bfloat16_convolutions_in(sys.argv))

# pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

from training import batch_norm_decay
from kernels import batch_norm_relu6
from model import checkpoint_utils
from runtime import cli
from runtime import errors
from training import distillation
from quantization import equalize
from data import records
from model import inference_model
import mobilenet_v1
from quantization import quantize
from quantization import tflite_emulation
from quantization import weight_rounding
# pylint: enable=g-import-not-at-top,wrong-import-position,g-bad-import-order

tf1 = tf.compat.v1

# The original script's flags.
flags.DEFINE_string('master', '',
                    'Session target: a TensorFlow server address (grpc://...) '
                    'to train on, or empty for this process. With '
                    '--worker_hosts it is set for you.')
flags.DEFINE_integer('task', 0, 'Task index of this process within its job; '
                     'task 0 of the workers is the chief, which initializes, '
                     'saves checkpoints and writes summaries.')
flags.DEFINE_integer('ps_tasks', 0,
                     'Number of parameter-server tasks; 0 trains in this '
                     'process alone. Variables are spread over the ps tasks.')
flags.DEFINE_integer('batch_size', 64, 'Images per training step (per worker).',
                     lower_bound=1)
flags.DEFINE_integer('num_classes', 1001,
                     'Classes of the logits layer; 1001 for ImageNet (class 0 '
                     'is background); N+1 for a dataset of N classes.')
flags.DEFINE_integer('number_of_steps', None,
                     'Global step at which training stops; unset trains '
                     'until killed.', lower_bound=1)
flags.DEFINE_integer('image_size', 224, 'Input resolution (square).',
                     lower_bound=32)
flags.DEFINE_float('depth_multiplier', 1.0,
                   'Width multiplier: 1.0, 0.75, 0.5 or 0.25 for the released '
                   'models (any positive value works).', lower_bound=0.01)
flags.DEFINE_bool('quantize', False,
                  'Quantization-aware training: fold batch norms and add 8-bit '
                  'fake quantization after --quant_delay steps.')
flags.DEFINE_string('fine_tune_checkpoint', '',
                    'Checkpoint (or directory) to start from when '
                    '--checkpoint_dir holds none: restores every variable it '
                    'has (see --checkpoint_exclude_scopes) and resets the '
                    'global step.')
flags.DEFINE_string('checkpoint_dir', '',
                    'Where checkpoints and TensorBoard summaries go; training '
                    'resumes from the latest checkpoint here.')
flags.DEFINE_string('dataset_dir', '',
                    'Directory with train-*-of-* TFRecords (see '
                    'build_imagenet_tfrecords).')
flags.DEFINE_integer('log_every_n_steps', 100,
                     'Print step, loss, learning rate, speed and ETA every N '
                     'steps.', lower_bound=1)
flags.DEFINE_integer('save_summaries_secs', 100,
                     'Seconds between TensorBoard summaries.', lower_bound=1)
flags.DEFINE_integer('save_interval_secs', 100,
                     'Seconds between checkpoints (one is also saved at the '
                     'end).', lower_bound=1)

# What users of this field expect beyond the original flags.
flags.DEFINE_float('learning_rate', None,
                   'Initial learning rate; default 0.045 from scratch and '
                   '1e-4 when fine-tuning.', lower_bound=0.0)
flags.DEFINE_enum('optimizer', 'sgd', ['sgd', 'momentum', 'rmsprop'],
                  'sgd (the original script), momentum (0.9), or rmsprop '
                  '(decay 0.9, momentum 0.9, epsilon 1.0, as in the paper).')
flags.DEFINE_float('learning_rate_decay_factor', 0.94,
                   'Exponential learning-rate decay per decay period.',
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float('num_epochs_per_decay', 2.5,
                   'Epochs per learning-rate decay step (staircase).',
                   lower_bound=0.0)
flags.DEFINE_integer('num_train_examples', None,
                     'Examples in the train split, for epochs and decay; '
                     'when unset, read from build_imagenet_tfrecords\' '
                     'conversion_complete.json, or counted from the records '
                     'if it is missing (1281167 for ImageNet).',
                     lower_bound=1)
flags.DEFINE_integer('quant_delay', None,
                     'Steps before quantization starts (with --quantize); '
                     'default 250000 from scratch, 0 when fine-tuning.',
                     lower_bound=0)
flags.DEFINE_enum('weight_quantization', quantize.PER_CHANNEL,
                  list(quantize.WEIGHT_SCHEMES),
                  'With --quantize, how weights are quantized: per_channel '
                  '(one symmetric range per output channel, TFLite\'s int8 '
                  'scheme; the export writes a full-integer int8 model, the '
                  'most accurate), symmetric (one range per tensor, '
                  'symmetric about zero: a uint8 model and its int8 twin) '
                  'or asymmetric (one [min, max] per tensor, as '
                  'contrib.quantize: a uint8 model only).')
flags.DEFINE_bool('equalize_ranges', True,
                  'With --quantize and per-tensor weights (symmetric, '
                  'asymmetric), fine-tuning a float checkpoint: first move '
                  'scale between each layer\'s output channels and the next '
                  'layer\'s inputs so that every channel of a folded weight '
                  'tensor has a similar range (cross-layer equalisation, '
                  'equalize.py). The float model computes the same where '
                  'ReLU6 does not clip; per-tensor ranges then round small '
                  'channels to more levels.')
flags.DEFINE_integer('freeze_bn_delay', None,
                     'With --quantize: step from which batch norms are '
                     'folded with their moving statistics instead of each '
                     'batch\'s, so that training computes what the exported '
                     'model will (contrib.quantize\'s freeze_bn_delay); '
                     'unset: never, as contrib\'s default. 0 builds the '
                     'model in inference mode; fine-tuning the released '
                     '1.0_224 that way lost more accuracy on classes it was '
                     'not fine-tuned on (README).', lower_bound=0)
flags.DEFINE_bool('fuse_batch_norm_relu6', True,
                  'Train through one fused batch norm + ReLU6 kernel per '
                  'layer (batch_norm_relu6_ops.cc): the same math and '
                  'variables, fewer passes over memory; with --quantize '
                  'quantizing from the first step (as fine-tunes do) it '
                  'also computes the fake quant of its output. Used by '
                  'float training and by --quantize without '
                  '--freeze_bn_delay (which folds batch norms, with the '
                  'separate ops); '
                  'ignored when a GPU is visible.')
flags.DEFINE_integer('random_seed', None,
                     'Seed of the weight initialization, dropout, the order '
                     'of the training records and their distortions, so that '
                     'a run can be repeated (on the same machine: the '
                     'arithmetic of parallel kernels still differs between '
                     'CPU kinds). Unset: fresh randomness and the faster, '
                     'nondeterministic input order.')
flags.DEFINE_float('label_smoothing', 0.0,
                   'Label smoothing of the cross-entropy loss.',
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float('distillation_weight', None,
                   'Share of the targets taken from a frozen float teacher, '
                   'the --fine_tune_checkpoint model (same variant and '
                   'classes): each target is this much the teacher\'s '
                   'softmax and the rest the one-hot label (distillation.py), '
                   'so that a fine-tune keeps what the teacher predicts on '
                   'classes it does not train on. Every step also runs the '
                   'teacher\'s forward pass. Default: 1 with --quantize and '
                   'per-tensor weights (--weight_quantization=symmetric or '
                   'asymmetric) when fine-tuning the whole model (no '
                   '--checkpoint_exclude_scopes), where it kept more of the '
                   'released 1.0_224\'s top-1 than the labels alone '
                   '(README); 0, the labels alone, otherwise (per-channel '
                   'weights kept as much without it).',
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float('weight_decay', 0.00004, 'L2 weight decay of conv weights.',
                   lower_bound=0.0)
flags.DEFINE_float('batch_norm_decay', None,
                   'Decay of batch norm\'s moving averages. Default: 0.9997 '
                   '(slim\'s ImageNet value) for runs of 33,334 steps or more '
                   'or without --number_of_steps; for shorter runs from '
                   'scratch 1 - 10 / --number_of_steps, so that the averages '
                   'converge within the run; for fine-tunes shorter than '
                   '3,334 steps 1 - 1 / --number_of_steps, so that they keep '
                   'part of the '
                   'checkpoint\'s (see batch_norm_decay.py); 1 (the '
                   'checkpoint\'s kept) for quantization-aware fine-tunes '
                   'with per-tensor weights (--weight_quantization='
                   'symmetric or asymmetric) of a set --number_of_steps '
                   'whose batch norms all come from the checkpoint and do '
                   'not freeze, which then round their weights after the '
                   'last step (see --rounding_examples).',
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer('rounding_examples', 500,
                     'Training images (the first, in eval preprocessing) '
                     'over which a quantization-aware fine-tune with '
                     'per-tensor weights and the checkpoint\'s batch norm '
                     'averages kept rounds its weights for the least output '
                     'error after the last step, and adds the rounding\'s '
                     'shift to the batch norm means (see weight_rounding.py).',
                     lower_bound=1)
flags.DEFINE_list('checkpoint_exclude_scopes', [],
                  'Comma-separated variable scopes not restored from '
                  '--fine_tune_checkpoint, e.g. MobilenetV1/Logits to '
                  'fine-tune the 1001-class release onto N classes.')
flags.DEFINE_list('trainable_scopes', [],
                  'Comma-separated variable scopes to train; all when empty.')
flags.DEFINE_bool('skip_corrupt_records', False,
                  'Skip (and count) records whose image does not decode or '
                  'that lack keys, instead of stopping with an error.')
flags.DEFINE_integer('max_checkpoints_to_keep', 5,
                     'Most recent checkpoints kept in --checkpoint_dir.',
                     lower_bound=1)

# Parameter-server training on TensorFlow's own runtime.
flags.DEFINE_list('ps_hosts', [],
                  'host:port of each parameter server, comma-separated; the '
                  'same list for every task. Sets --ps_tasks.')
flags.DEFINE_list('worker_hosts', [],
                  'host:port of each worker, comma-separated; the same list '
                  'for every task. Worker 0 is the chief.')
flags.DEFINE_enum('job_name', 'worker', ['ps', 'worker'],
                  'This process\'s job in the cluster named by --ps_hosts and '
                  '--worker_hosts.')

IMAGENET_TRAIN_EXAMPLES = 1281167
SCRATCH_LEARNING_RATE = 0.045
FINE_TUNE_LEARNING_RATE = 1e-4
SCRATCH_QUANT_DELAY = 250000


def _is_fine_tuning():
  return bool(FLAGS.fine_tune_checkpoint)


def _num_train_examples():
  """Returns the size of the train split (see --num_train_examples)."""
  if FLAGS.num_train_examples:
    return FLAGS.num_train_examples
  return records.num_examples(FLAGS.dataset_dir, 'train')


def _distillation_weight():
  """--distillation_weight, or its default for this run (see its help)."""
  if FLAGS.distillation_weight is not None:
    return FLAGS.distillation_weight
  if (FLAGS.quantize and _is_fine_tuning() and
      FLAGS.weight_quantization != quantize.PER_CHANNEL and
      not FLAGS.checkpoint_exclude_scopes):
    return 1.0
  return 0.0


def _batch_norms_frozen_from_start():
  """Whether this run's batch norms use their moving statistics throughout."""
  return FLAGS.quantize and FLAGS.freeze_bn_delay == 0


def _in_scopes(variable_name, scopes):
  return any(variable_name == s or variable_name.startswith(s + '/')
             for s in scopes)


def _keeps_checkpoint_averages():
  """Whether this run's batch norms keep the checkpoint's averages (decay 1).

  A quantization-aware fine-tune with per-tensor weights of a set length
  does, unless --batch_norm_decay says otherwise, its batch norms freeze
  (then training adapts to the averages as they are) or the checkpoint does
  not give every batch norm its averages; its last checkpoint's weights are
  then rounded (weight_rounding.py).
  """
  batch_norms = ['MobilenetV1/%s/BatchNorm/moving_mean' % layer
                 for layer in mobilenet_v1.endpoint_names(
                     mobilenet_v1.MOBILENETV1_CONV_DEFS)]
  return (FLAGS.quantize and _is_fine_tuning() and
          FLAGS.weight_quantization != quantize.PER_CHANNEL and
          FLAGS.batch_norm_decay is None and FLAGS.number_of_steps and
          FLAGS.freeze_bn_delay is None and
          not any(_in_scopes(name, FLAGS.checkpoint_exclude_scopes)
                  for name in batch_norms))


def _batch_norm_decay():
  """--batch_norm_decay, or the decay that fits this run (see its help)."""
  if FLAGS.batch_norm_decay is not None:
    return FLAGS.batch_norm_decay
  if _keeps_checkpoint_averages():
    return batch_norm_decay.KEEP
  return batch_norm_decay.for_steps(FLAGS.number_of_steps,
                                    fine_tuning=_is_fine_tuning())


def _rounds_weights(checkpoint):
  """Whether `checkpoint`, the run's last, is to be rounded now.

  Its training graph must record the checkpoint's averages kept (so that
  its means describe the float layers), whatever this command's flags say,
  and batch norms that never froze (frozen ones trained against the means
  as they are).
  """
  return (FLAGS.freeze_bn_delay is None and
          weight_rounding.needs_rounding(checkpoint))


def _round_weights(checkpoint, skipped_records):
  """Rounds the weights of `checkpoint` in place, saying so.

  A signal during the rounding ends the process before the checkpoint is
  replaced (SIGINT as KeyboardInterrupt, whose message says to rerun).

  Args:
    checkpoint: the checkpoint prefix.
    skipped_records: records.SkippedRecordCounter in which
      --skip_corrupt_records counts the records it drops.
  """
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  print('Rounding the weights for the least output error over %d training '
        'images and adding the rounding\'s shift to the batch norm means '
        '(weight_rounding.py)...' % FLAGS.rounding_examples, flush=True)
  summary = weight_rounding.round_checkpoint(
      checkpoint, FLAGS.dataset_dir, FLAGS.rounding_examples,
      FLAGS.image_size, FLAGS.num_classes, FLAGS.depth_multiplier,
      skip_corrupt=FLAGS.skip_corrupt_records, skip_counter=skipped_records)
  print('Rounded %d layers over %d images: output error variance, summed '
        'over the layers, %.2fx that of nearest rounding.' % (
            summary['layers'], summary['examples'],
            summary['rounded'] / max(summary['nearest'], 1e-30)), flush=True)


def build_model(images, is_training):
  """Builds the classifier the flags describe, for training or inference.

  Args:
    images: float32 [batch, size, size, 3] in [-1, 1].
    is_training: batch norm in training mode and dropout on.

  Returns:
    The logits, [batch, num_classes].
  """
  scope = mobilenet_v1.mobilenet_v1_arg_scope(
      is_training=is_training, weight_decay=FLAGS.weight_decay,
      batch_norm_decay=_batch_norm_decay())
  with slim.arg_scope(scope):
    logits, _ = mobilenet_v1.mobilenet_v1(
        images, num_classes=FLAGS.num_classes, is_training=is_training,
        depth_multiplier=FLAGS.depth_multiplier)
  return logits


def _learning_rate(global_step, num_examples):
  """Staircase exponential decay, every --num_epochs_per_decay epochs."""
  initial = FLAGS.learning_rate
  if initial is None:
    initial = (FINE_TUNE_LEARNING_RATE if _is_fine_tuning()
               else SCRATCH_LEARNING_RATE)
  steps_per_decay = max(
      1, int(num_examples / FLAGS.batch_size * FLAGS.num_epochs_per_decay))
  return tf1.train.exponential_decay(
      initial, global_step, steps_per_decay, FLAGS.learning_rate_decay_factor,
      staircase=True, name='learning_rate')


def _optimizer(learning_rate):
  if FLAGS.optimizer == 'momentum':
    return tf1.train.MomentumOptimizer(learning_rate, momentum=0.9)
  if FLAGS.optimizer == 'rmsprop':
    return tf1.train.RMSPropOptimizer(learning_rate, decay=0.9, momentum=0.9,
                                      epsilon=1.0)
  return tf1.train.GradientDescentOptimizer(learning_rate)


def _variables_to_train():
  variables = tf1.trainable_variables()
  if not FLAGS.trainable_scopes:
    return variables
  chosen = [v for v in variables
            if _in_scopes(v.op.name, FLAGS.trainable_scopes)]
  if not chosen:
    raise errors.UserError('--trainable_scopes=%s matches no trainable variable '
                        '(they start with MobilenetV1/)' %
                        ','.join(FLAGS.trainable_scopes))
  return chosen


def _fine_tune_init_fn():
  """Returns an init function restoring --fine_tune_checkpoint.

  Restores every model variable the checkpoint has, except excluded scopes
  and the global step; variables it lacks (quantization ranges of a float
  checkpoint, new layers) keep their initial values.

  Raises:
    CheckpointError: the checkpoint is missing or unreadable, or has
      variables of a different shape than the model's.
  """
  path = checkpoint_utils.resolve(FLAGS.fine_tune_checkpoint)
  candidates = [v for v in tf1.global_variables()
                if v.op.name != 'global_step' and
                not _in_scopes(v.op.name, FLAGS.checkpoint_exclude_scopes)]
  found = checkpoint_utils.match(path, candidates)
  # Weight ranges are statistics of the weights, set anew at every step: a
  # per-tensor quantized checkpoint (Google's _quant releases) fine-tunes
  # into per-channel ranges, or back.
  weight_ranges = [m for m in found.mismatched
                   if '/%s/' % quantize.WEIGHTS_QUANT in m.split(' ')[0]]
  if weight_ranges:
    print('--fine_tune_checkpoint has weight ranges of another scheme than '
          '--weight_quantization=%s; they are computed from the weights '
          'instead.' % FLAGS.weight_quantization, flush=True)
    found = found._replace(mismatched=[m for m in found.mismatched
                                       if m not in weight_ranges])
  if found.mismatched:
    scopes = sorted({'/'.join(m.split('/')[:2]) for m in found.mismatched})
    raise checkpoint_utils.CheckpointError(
        '--fine_tune_checkpoint has variables of other shapes: %s; leave '
        'them out with --checkpoint_exclude_scopes=%s' %
        ('; '.join(found.mismatched), ','.join(scopes)))
  if not found.restorable:
    raise checkpoint_utils.CheckpointError(
        '--fine_tune_checkpoint=%s has none of the model\'s variables; is it '
        'a MobileNet V1 checkpoint?' % path)
  saver = tf1.train.Saver(found.restorable)
  print('Fine-tuning from %s: restoring %d variables; %d start fresh.' %
        (path, len(found.restorable),
         len(tf1.global_variables()) - len(found.restorable)), flush=True)
  equalizing = (FLAGS.quantize and FLAGS.equalize_ranges and
                FLAGS.weight_quantization != quantize.PER_CHANNEL and
                not inference_model.has_quantization_ranges(path))

  def init_fn(scaffold, session):
    del scaffold  # unused
    saver.restore(session, path)
    if equalizing:
      _equalize_ranges(session)

  return init_fn


def _equalize_ranges(session):
  """Equalises the restored model's channel ranges in `session`."""
  by_name = {v.op.name: v for v in tf1.global_variables()}
  values = session.run({name: by_name[name]
                        for name in equalize.variable_names()})
  equalized = equalize.equalize(values, mobilenet_v1.BATCH_NORM_EPSILON)
  before = _widest_depthwise_spread(values)
  values.update(equalized)
  for name, value in equalized.items():
    by_name[name].load(value, session)
  print('Equalised channel ranges across layers for per-tensor weights: the '
        'widest depthwise layer\'s largest channel range from %.0fx its '
        'median to %.0fx (--noequalize_ranges keeps them).' %
        (before, _widest_depthwise_spread(values)), flush=True)


def _widest_depthwise_spread(values):
  return max(equalize.channel_spread(values, layer,
                                     mobilenet_v1.BATCH_NORM_EPSILON)
             for layer in mobilenet_v1.endpoint_names()
             if layer.endswith('_depthwise'))


class ProgressHook(tf1.train.SessionRunHook):
  """Prints step, loss, learning rate, images/sec and ETA every N steps."""

  def __init__(self, loss, learning_rate, global_step, batch_size,
               every_n_steps, last_step, skipped_records):
    self._fetches = {'loss': loss, 'learning_rate': learning_rate,
                     'step': global_step}
    self._batch_size = batch_size
    self._every_n_steps = every_n_steps
    self._last_step = last_step
    self._skipped_records = skipped_records
    self._mark = None  # (time, step) at the last report

  def before_run(self, run_context):
    return tf1.train.SessionRunArgs(self._fetches)

  def after_run(self, run_context, run_values):
    results = run_values.results
    step = results['step'] + 1  # the step just run
    if not math.isfinite(results['loss']):
      raise errors.UserError('loss became %s at step %d; lower --learning_rate' %
                          (results['loss'], step))
    first = self._mark is None
    if not first and step % self._every_n_steps and step != self._last_step:
      return
    now = time.time()
    line = 'step %d  loss %.4f  lr %.3g' % (step, results['loss'],
                                            results['learning_rate'])
    line += _skipped_records_note(self._skipped_records)
    # The first step includes graph optimization: speed is measured after it.
    if not first:
      elapsed, steps = now - self._mark[0], step - self._mark[1]
      if steps > 0 and elapsed > 0:
        rate = steps / elapsed
        line += '  %.1f images/s' % (rate * self._batch_size)
        if self._last_step:
          line += '  ETA %s' % _format_duration(
              (self._last_step - step) / rate)
    self._mark = (now, step)
    print(line, flush=True)


def _skipped_records_note(skipped_records):
  """', N corrupt records skipped' once --skip_corrupt_records skipped some."""
  skipped = skipped_records.count
  return ', %d corrupt records skipped' % skipped if skipped else ''


class SignalStopHook(tf1.train.SessionRunHook):
  """Ends training at the next step boundary after SIGINT or SIGTERM.

  The first signal only sets `received`: the step under way completes, the
  loop stops and the session closes as at the last step, where the chief's
  checkpoint hook saves at the current step. It also restores the signals'
  default action, so that a second one ends the process at once.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.received = None

  def begin(self):
    for signum in self.SIGNALS:
      signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame  # unused
    self.received = signum
    for other in self.SIGNALS:
      signal.signal(other, signal.SIG_DFL)

  def after_run(self, run_context, run_values):
    if self.received:
      run_context.request_stop()


def _format_duration(seconds):
  seconds = int(max(seconds, 0))
  return '%d:%02d:%02d' % (seconds // 3600, seconds // 60 % 60, seconds % 60)


def build_train_op(images, labels, global_step, num_examples, quant_delay):
  """Builds the model, loss and optimizer step the flags describe.

  Args:
    images: float32 [batch, size, size, 3] in [-1, 1].
    labels: int64 [batch] class ids.
    global_step: the global step variable.
    num_examples: size of the train split, for the learning-rate schedule.
    quant_delay: with --quantize, steps before quantization starts.

  Returns:
    (train_op, total_loss, learning_rate, hooks); running train_op makes
    one step and returns the total loss; the session needs the hooks.
  """
  # tf.one_hot would silently turn an out-of-range label into all zeros.
  check_labels = tf.debugging.assert_less(
      labels, tf.constant(FLAGS.num_classes, labels.dtype),
      message='a label is >= --num_classes=%d; use the value '
      'build_imagenet_tfrecords printed (classes + 1)' % FLAGS.num_classes)
  with tf.control_dependencies([check_labels]):
    labels = tf.identity(labels)
  float_images = images
  if FLAGS.quantize:
    images = tflite_emulation.quantize_input(images)
  # Batch norms frozen from the first step need no batch statistics: the
  # model is built in inference mode. Gamma and beta still train; the moving
  # statistics stay as restored; dropout (keeping 99.9% by default) is off.
  frozen_from_start = _batch_norms_frozen_from_start()
  logits = build_model(images, is_training=not frozen_from_start)
  freeze_bn_delay = None if frozen_from_start else FLAGS.freeze_bn_delay
  mask_drowned_channels = FLAGS.weight_quantization != quantize.PER_CHANNEL
  # The fused kernels are CPU-only; on a GPU, cuDNN's batch norm is the fast
  # path and a CPU op in the middle of the model would cost transfers.
  # Folding batch norms (to freeze them mid-run) needs TensorFlow's separate
  # ops.
  fused = False
  if (FLAGS.fuse_batch_norm_relu6 and
      (not FLAGS.quantize or quantize.keeps_batch_norms(freeze_bn_delay)) and
      not tf.config.list_physical_devices('GPU')):
    unavailable = batch_norm_relu6.unavailable_reason()
    if unavailable:
      print('Batch norm + ReLU6 run as TensorFlow\'s ops, not fused: %s.' %
            unavailable, flush=True)
    else:
      batch_norm_relu6.fuse_batch_norm_relu6(logits.graph)
      fused = True
  if FLAGS.quantize:
    quantize.create_training_graph(
        quant_delay=quant_delay, weights=FLAGS.weight_quantization,
        freeze_bn_delay=freeze_bn_delay,
        mask_drowned_channels=mask_drowned_channels)
    if fused:
      batch_norm_relu6.fuse_fake_quant(logits.graph)
  targets = tf.one_hot(labels, FLAGS.num_classes)
  hooks = []
  teacher_weight = _distillation_weight()
  if teacher_weight:
    # Built after the rewrites above, so that the teacher stays as it was.
    try:
      teacher = distillation.Teacher(
          build_model, float_images,
          checkpoint_utils.resolve(FLAGS.fine_tune_checkpoint))
    except checkpoint_utils.CheckpointError as error:
      if FLAGS.distillation_weight is not None:
        raise
      raise checkpoint_utils.CheckpointError(
          '%s; distillation is on by default with --quantize: '
          '--checkpoint_exclude_scopes=MobilenetV1/Logits fine-tunes onto '
          'new classes without it, --distillation_weight=0 turns it off' %
          error) from None
    targets = distillation.soft_targets(teacher.logits, targets,
                                        teacher_weight)
    hooks.append(teacher.restore_hook())
  tf1.losses.softmax_cross_entropy(
      targets, logits, label_smoothing=FLAGS.label_smoothing)
  total_loss = tf1.losses.get_total_loss(name='total_loss')
  learning_rate = _learning_rate(global_step, num_examples)
  train_op = slim.learning.create_train_op(
      total_loss, _optimizer(learning_rate), global_step=None,
      variables_to_train=_variables_to_train())
  # The step counts up after the whole step, its batch norm updates
  # included; slim's increment waits only for the weight updates.
  with tf.control_dependencies([train_op]):
    increment = tf1.assign_add(global_step, 1)
  with tf.control_dependencies([increment]):
    train_op = tf.identity(train_op)
  tf1.summary.scalar('losses/total_loss', total_loss)
  tf1.summary.scalar('learning_rate', learning_rate)
  accuracy = tf.reduce_mean(tf.cast(
      tf.equal(tf.argmax(logits, 1), labels), tf.float32))
  tf1.summary.scalar('train_batch_accuracy', accuracy)
  return train_op, total_loss, learning_rate, hooks


def session_config():
  """The session options training runs with.

  oneDNN's math mode (--bfloat16_convolutions) is not among them: it is
  process-wide, set in the environment before TensorFlow is imported.

  Returns:
    The tf.compat.v1.ConfigProto.
  """
  # The rest stays at TensorFlow's defaults: bfloat16 auto mixed precision,
  # NCHW, XLA auto-clustering and fewer inter-op threads were all slower
  # (README, "Speed").
  return tf1.ConfigProto(allow_soft_placement=True)


def _cluster():
  """Returns the ClusterSpec of --ps_hosts/--worker_hosts, or None."""
  if not FLAGS.ps_hosts and not FLAGS.worker_hosts:
    return None
  if not FLAGS.ps_hosts or not FLAGS.worker_hosts:
    raise errors.UserError('give both --ps_hosts and --worker_hosts (host:port '
                        'lists) for parameter-server training')
  jobs = {'ps': FLAGS.ps_hosts, 'worker': FLAGS.worker_hosts}
  if FLAGS.task >= len(jobs[FLAGS.job_name]):
    raise errors.UserError('--task=%d but --%s_hosts lists only %d hosts' %
                        (FLAGS.task, FLAGS.job_name,
                         len(jobs[FLAGS.job_name])))
  return tf.train.ClusterSpec(jobs)


def _check_flags():
  if not FLAGS.dataset_dir:
    raise errors.UserError('--dataset_dir is required: a directory of '
                        'train-*-of-* TFRecords (see build_imagenet_tfrecords)')
  if not FLAGS.checkpoint_dir:
    raise errors.UserError('--checkpoint_dir is required: where checkpoints go '
                        'and training resumes from')
  if FLAGS.num_classes < 2:
    raise errors.UserError('--num_classes must be at least 2, got %d' %
                        FLAGS.num_classes)
  if FLAGS.distillation_weight and not FLAGS.fine_tune_checkpoint:
    raise errors.UserError('--distillation_weight needs a teacher: give the '
                        'float model as --fine_tune_checkpoint')


def train():
  """Builds the training graph and runs it until --number_of_steps."""
  _check_flags()
  cluster = _cluster()
  master = FLAGS.master
  ps_tasks = FLAGS.ps_tasks
  if cluster:
    server = tf.distribute.Server(cluster, job_name=FLAGS.job_name,
                                  task_index=FLAGS.task)
    if FLAGS.job_name == 'ps':
      print('Parameter server %d serving on %s.' %
            (FLAGS.task, FLAGS.ps_hosts[FLAGS.task]), flush=True)
      server.join()
      return
    master = server.target
    ps_tasks = len(FLAGS.ps_hosts)
  is_chief = FLAGS.task == 0
  if is_chief:
    # Held until the process ends; only the chief writes checkpoints, so the
    # other workers of its cluster share the directory.
    directory_lock.lock(FLAGS.checkpoint_dir)

  num_examples = _num_train_examples()
  quant_delay = FLAGS.quant_delay
  if quant_delay is None:
    quant_delay = 0 if _is_fine_tuning() else SCRATCH_QUANT_DELAY

  graph = tf.Graph()
  with graph.as_default():
    if FLAGS.random_seed is not None:
      tf1.set_random_seed(FLAGS.random_seed)
    device_fn = tf1.train.replica_device_setter(
        ps_tasks, worker_device='/job:worker/task:%d' % FLAGS.task,
        cluster=cluster) if ps_tasks else None
    with tf1.device(device_fn):
      global_step = tf1.train.get_or_create_global_step()
      skipped_records = records.SkippedRecordCounter()
      dataset = records.build_dataset(
          FLAGS.dataset_dir, 'train', FLAGS.batch_size, FLAGS.image_size,
          is_training=True, skip_corrupt=FLAGS.skip_corrupt_records,
          skip_counter=skipped_records, seed=FLAGS.random_seed)
      images, labels = tf1.data.make_one_shot_iterator(dataset).get_next()
      train_op, total_loss, learning_rate, teacher_hooks = build_train_op(
          images, labels, global_step, num_examples, quant_delay)
    batch_norm_decay.record(_batch_norm_decay(),
                            fine_tuned=_is_fine_tuning())
    run_length = ('%d steps' % FLAGS.number_of_steps if FLAGS.number_of_steps
                  else 'an open-ended run')
    if _batch_norms_frozen_from_start():
      print('Batch norms frozen: they normalize with the moving statistics '
            'of the checkpoint (--freeze_bn_delay sets a later step).',
            flush=True)
    elif _keeps_checkpoint_averages():
      print('Batch norm moving averages: the checkpoint\'s, kept; after the '
            'last step the weights are rounded for the least output error '
            'and the rounding\'s shift is added to the means '
            '(--batch_norm_decay below 1 skips both).', flush=True)
    elif FLAGS.batch_norm_decay is None:
      print('Batch norm decay %.6g for %s%s (--batch_norm_decay sets '
            'another).' % (_batch_norm_decay(), run_length,
                           ' of fine-tuning' if _is_fine_tuning() else ''),
            flush=True)

    if (FLAGS['bfloat16_convolutions'].present and
        FLAGS.bfloat16_convolutions and not bfloat16_math_takes_effect(
            batch_norm_relu6.cpu_features())):
      print('--bfloat16_convolutions has no effect on this CPU: oneDNN\'s '
            'bfloat16 math mode needs AMX (and oneDNN on); the convolutions '
            'compute in float32.', flush=True)

    teacher_weight = _distillation_weight()
    if teacher_weight:
      print('Distilling from the float model %s: each target is %g of its '
            'softmax and %g of the label (%s).' % (
                FLAGS.fine_tune_checkpoint, teacher_weight,
                1 - teacher_weight,
                '--distillation_weight' if FLAGS.distillation_weight
                is not None else 'the default with --quantize when '
                'fine-tuning; --distillation_weight=0 trains on the labels '
                'alone'), flush=True)

    init_fn = None
    if is_chief:
      resuming, skipped = checkpoint_utils.prepare_resume(FLAGS.checkpoint_dir)
      for damaged, why in skipped:
        print('Skipping checkpoint %s: %s.' % (damaged, why), flush=True)
    else:
      resuming = checkpoint_utils.latest_checkpoint(FLAGS.checkpoint_dir)
    if _is_fine_tuning() and not resuming:
      init_fn = _fine_tune_init_fn()
    if resuming:
      done_steps = tf.train.load_checkpoint(resuming).get_tensor('global_step')
      if FLAGS.number_of_steps and done_steps >= FLAGS.number_of_steps:
        # MonitoredTrainingSession would still run one more step.
        print('Already trained to step %d (--number_of_steps=%d): %s.' %
              (done_steps, FLAGS.number_of_steps, resuming), flush=True)
        if is_chief and _rounds_weights(resuming):
          _round_weights(resuming, skipped_records)
        return
      print('Resuming from %s.' % resuming, flush=True)
    scaffold = tf1.train.Scaffold(
        init_fn=init_fn,
        saver=tf1.train.Saver(max_to_keep=FLAGS.max_checkpoints_to_keep,
                              sharded=bool(ps_tasks),
                              save_relative_paths=True))
    stopper = SignalStopHook()
    hooks = [ProgressHook(total_loss, learning_rate, global_step,
                          FLAGS.batch_size, FLAGS.log_every_n_steps,
                          FLAGS.number_of_steps, skipped_records),
             stopper] + teacher_hooks
    if FLAGS.number_of_steps:
      hooks.append(tf1.train.StopAtStepHook(last_step=FLAGS.number_of_steps))
    print('Training MobileNet V1 %g@%d (%d classes%s) on %s: %d examples, '
          'batch %d.' % (FLAGS.depth_multiplier, FLAGS.image_size,
                         FLAGS.num_classes,
                         ', quantized after step %d' % quant_delay
                         if FLAGS.quantize else '',
                         FLAGS.dataset_dir, num_examples, FLAGS.batch_size),
          flush=True)
    config = session_config()
    if cluster:
      # A worker talks to the parameter servers and itself only, so it does
      # not wait on (or hang after) the other workers.
      config.device_filters.extend(
          ['/job:ps', '/job:worker/task:%d' % FLAGS.task])
    with tf1.train.MonitoredTrainingSession(
        master=master, is_chief=is_chief, checkpoint_dir=FLAGS.checkpoint_dir,
        scaffold=scaffold, hooks=hooks,
        save_checkpoint_secs=FLAGS.save_interval_secs,
        save_summaries_secs=FLAGS.save_summaries_secs,
        log_step_count_steps=0,
        config=config) as session:
      while not session.should_stop() and not stopper.received:
        session.run(train_op)
      if stopper.received:
        print('Stopping on %s%s (signal again to exit at once).' % (
            signal.Signals(stopper.received).name,
            ': saving a checkpoint at the current step' if is_chief else ''),
              flush=True)
  final = checkpoint_utils.latest_checkpoint(FLAGS.checkpoint_dir)
  if stopper.received:
    print('Interrupted%s. To resume, run the same command again: '
          'mobilenet_v1_train %s' % (
              '; checkpoint %s' % final if is_chief and final else '',
              ' '.join(shlex.quote(arg) for arg in sys.argv[1:])),
          flush=True)
    sys.exit(128 + stopper.received)
  if is_chief and final and _rounds_weights(final):
    _round_weights(final, skipped_records)
  if is_chief and final:
    print('Done; checkpoint %s%s.' % (final,
                                      _skipped_records_note(skipped_records)),
          flush=True)


def main(argv):
  del argv  # unused
  try:
    train()
  except KeyboardInterrupt:
    latest = checkpoint_utils.latest_checkpoint(FLAGS.checkpoint_dir)
    sys.exit('mobilenet_v1_train: interrupted; rerun the same command to '
             'resume from %s' % (latest or 'the start'))


if __name__ == '__main__':
  cli.run(main)
