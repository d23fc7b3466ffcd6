"""A training run's configuration, and the one place its defaults are chosen.

`TrainConfig` holds what the user chose: one field per flag of
mobilenet_v1_train, None where the flag's default depends on the run.
`resolve` applies the rules that choose those defaults and returns a `Plan`;
`equalizes_ranges` and `rounds_weights` decide the two steps that depend on
a checkpoint's contents, which their caller reads. The rules, where no flag
overrides them:

                     from scratch      fine-tuning (--fine_tune_checkpoint)
                     float    QAT      float    QAT per-channel  QAT per-tensor
  learning rate      0.045    0.045    1e-4     1e-4             1e-4
  quant delay        -        250000   -        0                0
  distillation       0        0        0        0                1 (a)
  batch norm decay   (b)      (b)      (c)      (c)              1 (d)
  equalisation       no       no       no       no               yes (e)
  weight rounding    no       no       no       no               yes (f)
  precision          (g)      float32  (g)      float32          float32

  (a) The float checkpoint teaches: each target is its softmax. Not when
      --checkpoint_exclude_scopes leaves part of the model out (new classes
      the checkpoint cannot teach): 0, the labels alone.
  (b) batch_norm_decay.for_steps(--number_of_steps): memory of a tenth of
      the run, at most slim's 0.9997.
  (c) batch_norm_decay.for_steps(--number_of_steps, fine_tuning=True):
      memory of the whole run, at most 0.9997.
  (d) batch_norm_decay.KEEP, the checkpoint's averages kept, when the run
      has a --number_of_steps, restores every batch norm from the checkpoint
      and does not freeze them (--freeze_bn_delay unset); else (c).
  (e) With --equalize_ranges (on by default), from a float checkpoint (one
      without quantization ranges).
  (f) After the last step, when --freeze_bn_delay is unset and the last
      checkpoint needs it (weight_rounding.needs_rounding: its training
      graph kept the checkpoint's averages, (d), its weights are quantized
      per tensor and it is not rounded yet).
  (g) mixed_bfloat16 where the CPU multiplies bfloat16 natively
      (precision.native_bfloat16_units: AVX512-BF16, AMX or Arm's BF16),
      float32 elsewhere, where emulated bfloat16 is slower than float32.
      Quantization-aware training defaults to float32;
      --precision=mixed_bfloat16 trains it in bfloat16 (its fake quants
      and their ranges stay float32).

  --quantize --freeze_bn_delay=0 builds the model in inference mode: its
  batch norms use the checkpoint's moving statistics from the first step.
  --num_train_examples defaults to the size of the dataset's train split.
"""

import dataclasses
from typing import Optional, Tuple

from quantization import quantize as quantize_lib
from runtime import errors
from training import batch_norm_decay
from training import precision as precision_lib

SCRATCH_LEARNING_RATE = 0.045
FINE_TUNE_LEARNING_RATE = 1e-4
SCRATCH_QUANT_DELAY = 250000
# The train split of ImageNet (ILSVRC-2012).
IMAGENET_TRAIN_EXAMPLES = 1281167


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """What the user chose; see mobilenet_v1_train's flags for each field."""

  dataset_dir: str = ''
  checkpoint_dir: str = ''
  # The model.
  num_classes: int = 1001
  image_size: int = 224
  depth_multiplier: float = 1.0
  # Where training starts from.
  fine_tune_checkpoint: str = ''
  checkpoint_exclude_scopes: Tuple[str, ...] = ()
  trainable_scopes: Tuple[str, ...] = ()
  # The optimization.
  batch_size: int = 64
  number_of_steps: Optional[int] = None
  learning_rate: Optional[float] = None
  optimizer: str = 'sgd'
  learning_rate_decay_factor: float = 0.94
  num_epochs_per_decay: float = 2.5
  num_train_examples: Optional[int] = None
  weight_decay: float = 0.00004
  label_smoothing: float = 0.0
  batch_norm_decay: Optional[float] = None
  distillation_weight: Optional[float] = None
  random_seed: Optional[int] = None
  # Quantization-aware training.
  quantize: bool = False
  quant_delay: Optional[int] = None
  weight_quantization: str = quantize_lib.PER_CHANNEL
  equalize_ranges: bool = True
  freeze_bn_delay: Optional[int] = None
  rounding_examples: int = 500
  # How the step runs.
  precision: Optional[str] = None
  fuse_batch_norm_relu6: bool = True
  skip_corrupt_records: bool = False
  # Output.
  log_every_n_steps: int = 100
  save_summaries_secs: int = 100
  save_interval_secs: int = 100
  max_checkpoints_to_keep: int = 5
  # The cluster: one process, or parameter-server training.
  master: str = ''
  task: int = 0
  ps_tasks: int = 0
  ps_hosts: Tuple[str, ...] = ()
  worker_hosts: Tuple[str, ...] = ()
  job_name: str = 'worker'

  @property
  def fine_tuning(self):
    """Whether the run starts from --fine_tune_checkpoint."""
    return bool(self.fine_tune_checkpoint)

  @property
  def per_tensor_weights(self):
    """Whether weights would be quantized with one range per tensor."""
    return self.weight_quantization != quantize_lib.PER_CHANNEL


@dataclasses.dataclass(frozen=True)
class Plan:
  """A TrainConfig with every default resolved (see the module docstring).

  Attributes:
    config: the TrainConfig it was resolved from.
    num_train_examples: examples in the train split.
    learning_rate: the initial learning rate.
    learning_rate_decay_steps: steps between the learning rate's decays.
    quant_delay: steps before quantization starts; None without --quantize.
    distillation_weight: share of each target from the teacher's softmax.
    keeps_checkpoint_averages: batch norm keeps the checkpoint's moving
      averages (decay KEEP), to round the weights after the last step.
    batch_norm_decay: the decay of batch norm's moving averages.
    batch_norms_frozen_from_start: the model is built in inference mode.
    freeze_bn_delay: the step from which the quantization rewrite freezes
      batch norms; None when it never does (or they are frozen from start).
    precision: precision.FLOAT32 or precision.MIXED_BFLOAT16.
    precision_reason: why, for the run's start-up line.
  """

  config: TrainConfig
  num_train_examples: int
  learning_rate: float
  learning_rate_decay_steps: int
  quant_delay: Optional[int]
  distillation_weight: float
  keeps_checkpoint_averages: bool
  batch_norm_decay: float
  batch_norms_frozen_from_start: bool
  freeze_bn_delay: Optional[int]
  precision: str
  precision_reason: str


def check(config):
  """Checks what the rules cannot default.

  Args:
    config: a TrainConfig.

  Raises:
    errors.UserError: a required flag is missing or a value is unusable,
      with the fix.
  """
  if not config.dataset_dir:
    raise errors.UserError('--dataset_dir is required: a directory of '
                           'train-*-of-* TFRecords (see '
                           'build_imagenet_tfrecords)')
  if not config.checkpoint_dir:
    raise errors.UserError('--checkpoint_dir is required: where checkpoints '
                           'go and training resumes from')
  if config.num_classes < 2:
    raise errors.UserError('--num_classes must be at least 2, got %d' %
                           config.num_classes)
  if config.precision not in (None,) + precision_lib.PRECISIONS:
    raise errors.UserError('--precision=%s is not one of %s' % (
        config.precision, ', '.join(precision_lib.PRECISIONS)))
  if config.distillation_weight and not config.fine_tuning:
    raise errors.UserError('--distillation_weight needs a teacher: give the '
                           'float model as --fine_tune_checkpoint')


def resolve(config, count_train_examples, batch_norms_restored,
            cpu_features):
  """Chooses every default of a run (the module docstring's table).

  Args:
    config: a TrainConfig.
    count_train_examples: function () -> examples in the dataset's train
      split, called only when config.num_train_examples is None (None will
      do when it is set).
    batch_norms_restored: whether --fine_tune_checkpoint gives every batch
      norm of the model its moving averages (none is left out by
      --checkpoint_exclude_scopes).
    cpu_features: the CPU's feature flags, as
      `batch_norm_relu6.cpu_features` reads them.

  Returns:
    The Plan.
  """
  num_train_examples = config.num_train_examples or count_train_examples()
  keeps_averages = _keeps_checkpoint_averages(config, batch_norms_restored)
  frozen_from_start = config.quantize and config.freeze_bn_delay == 0
  precision, precision_reason = _precision(config, cpu_features)
  return Plan(
      config=config,
      num_train_examples=num_train_examples,
      learning_rate=_learning_rate(config),
      learning_rate_decay_steps=max(1, int(
          num_train_examples / config.batch_size *
          config.num_epochs_per_decay)),
      quant_delay=_quant_delay(config),
      distillation_weight=_distillation_weight(config),
      keeps_checkpoint_averages=keeps_averages,
      batch_norm_decay=_batch_norm_decay(config, keeps_averages),
      batch_norms_frozen_from_start=frozen_from_start,
      freeze_bn_delay=None if frozen_from_start else config.freeze_bn_delay,
      precision=precision,
      precision_reason=precision_reason)


def _precision(config, cpu_features):
  """The run's precision and why: (g) of the module docstring's table."""
  if config.precision is not None:
    return config.precision, '--precision=%s' % config.precision
  if config.quantize:
    return precision_lib.FLOAT32, (
        'quantization-aware training defaults to float32; '
        '--precision=mixed_bfloat16 trains it in bfloat16')
  units = precision_lib.native_bfloat16_units(cpu_features)
  if units:
    return precision_lib.MIXED_BFLOAT16, (
        'this CPU multiplies bfloat16 natively (%s); --precision=float32 '
        'trains in float32' % ', '.join(u.upper() for u in units))
  return precision_lib.FLOAT32, (
      'this CPU has no bfloat16 arithmetic (AVX512-BF16, AMX or BF16), '
      'where emulating it is slower')


def _learning_rate(config):
  if config.learning_rate is not None:
    return config.learning_rate
  return (FINE_TUNE_LEARNING_RATE if config.fine_tuning
          else SCRATCH_LEARNING_RATE)


def _quant_delay(config):
  if not config.quantize:
    return None
  if config.quant_delay is not None:
    return config.quant_delay
  return 0 if config.fine_tuning else SCRATCH_QUANT_DELAY


def _distillation_weight(config):
  if config.distillation_weight is not None:
    return config.distillation_weight
  if (config.quantize and config.fine_tuning and config.per_tensor_weights
      and not config.checkpoint_exclude_scopes):
    return 1.0
  return 0.0


def _keeps_checkpoint_averages(config, batch_norms_restored):
  return bool(config.quantize and config.fine_tuning and
              config.per_tensor_weights and config.batch_norm_decay is None
              and config.number_of_steps and config.freeze_bn_delay is None
              and batch_norms_restored)


def _batch_norm_decay(config, keeps_checkpoint_averages):
  if config.batch_norm_decay is not None:
    return config.batch_norm_decay
  if keeps_checkpoint_averages:
    return batch_norm_decay.KEEP
  return batch_norm_decay.for_steps(config.number_of_steps,
                                    fine_tuning=config.fine_tuning)


def equalizes_ranges(config, checkpoint_has_ranges):
  """Whether a fine-tune equalises the restored model's channel ranges.

  Args:
    config: a TrainConfig.
    checkpoint_has_ranges: whether --fine_tune_checkpoint holds
      quantization ranges (was trained quantized).

  Returns:
    True for (e) of the module docstring's table.
  """
  return bool(config.quantize and config.equalize_ranges and
              config.per_tensor_weights and not checkpoint_has_ranges)


def rounds_weights(config, checkpoint_needs_rounding):
  """Whether the run's last checkpoint is to have its weights rounded now.

  Its training graph must have kept the checkpoint's averages (so that its
  means describe the float layers), whatever this command's flags say, and
  its batch norms must never have frozen (frozen ones trained against the
  means as they are).

  Args:
    config: a TrainConfig.
    checkpoint_needs_rounding: `weight_rounding.needs_rounding` of the
      checkpoint: its graph kept the averages and it is not rounded yet.

  Returns:
    True for (f) of the module docstring's table.
  """
  return config.freeze_bn_delay is None and checkpoint_needs_rounding

