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
there). Parameter-server training: start one process per task with the same
--ps_hosts/--worker_hosts and its own --job_name/--task (see README.md).

This module defines the flags; training/ does the training (trainer.train,
given a config.TrainConfig of the flags' values). It imports TensorFlow only
once main has taken the directory's lock.
"""

import dataclasses
import shlex
import sys

from absl import flags

import model_flags
from runtime import cli
from runtime import directory_lock
from training import precision

FLAGS = flags.FLAGS

flags.DEFINE_enum('precision', None, list(precision.PRECISIONS),
                  'Arithmetic of the training step. mixed_bfloat16: '
                  'convolutions and activations in bfloat16 (8 significant '
                  'bits; products summed in float32), while variables, '
                  'optimizer slots, batch norm statistics, weight decay and '
                  'the loss stay float32, so checkpoints are float32 as '
                  'always. float32: everything in float32. Unset: '
                  'mixed_bfloat16 where the CPU multiplies bfloat16 '
                  'natively (AVX512-BF16, AMX or Arm BF16) and float32 '
                  'elsewhere, and float32 with --quantize.')

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
flags.DEFINE_integer('number_of_steps', None,
                     'Global step at which training stops; unset trains '
                     'until killed.', lower_bound=1)
model_flags.define_model_flags(
    'Quantization-aware training: fold batch norms and add 8-bit fake '
    'quantization after --quant_delay steps.')
flags.adopt_module_key_flags(model_flags)
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
flags.DEFINE_enum('weight_quantization', 'per_channel',
                  ['per_channel', 'symmetric', 'asymmetric'],
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
                     'model will (contrib.quantize\'s freeze_bn_delay). '
                     'Unset: never, as contrib\'s default. 0 builds the '
                     'model in inference mode: its batch norms normalize '
                     'with the checkpoint\'s moving statistics from the '
                     'first step.', lower_bound=0)
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
                   '--checkpoint_exclude_scopes); 0, the labels alone, '
                   'otherwise.',
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


def train_config(flag_values):
  """The TrainConfig of parsed flags: each field is the flag of its name.

  Args:
    flag_values: the parsed absl FlagValues.

  Returns:
    The config.TrainConfig; list flags become tuples.
  """
  # Imported here: it loads TensorFlow, which waits for main's set-up.
  from training import config as config_lib  # pylint: disable=g-import-not-at-top
  values = {}
  for field in dataclasses.fields(config_lib.TrainConfig):
    value = flag_values[field.name].value
    values[field.name] = tuple(value) if isinstance(value, list) else value
  return config_lib.TrainConfig(**values)


def main(argv):
  del argv  # unused
  # A second run on a --checkpoint_dir in use is refused before TensorFlow
  # takes its seconds to load. The lock's descriptor stays open, and the
  # lock held, until the process ends.
  directory_lock.lock_if_chief(FLAGS.checkpoint_dir, FLAGS.job_name,
                               FLAGS.task)
  # pylint: disable=g-import-not-at-top
  from model import checkpoint_utils
  from training import trainer
  # pylint: enable=g-import-not-at-top
  resume_command = ' '.join(['mobilenet_v1_train'] +
                            [shlex.quote(arg) for arg in sys.argv[1:]])
  try:
    interrupted = trainer.train(train_config(FLAGS), resume_command)
  except KeyboardInterrupt:
    latest = checkpoint_utils.latest_checkpoint(FLAGS.checkpoint_dir)
    sys.exit('mobilenet_v1_train: interrupted; rerun the same command to '
             'resume from %s' % (latest or 'the start'))
  if interrupted:
    sys.exit(128 + interrupted)


if __name__ == '__main__':
  cli.run(main)
