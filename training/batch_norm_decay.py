"""Batch norm's moving-average decay: one that fits the run, and a check.

Batch norm in inference mode normalizes with moving averages of the batch
statistics, updated every step as avg = decay * avg + (1 - decay) * batch.
After n steps the values the averages started from (mean 0, variance 1 for
a model trained from scratch) still weigh decay^n. slim's ImageNet default,
0.9997, remembers about 1 / (1 - decay) = 3,333 steps: right for runs of
hundreds of thousands of steps, but after 600 steps the averages are still
0.9997^600 = 84% their initial values, and the model evaluates at chance
however well it trained.

The rules used when --batch_norm_decay is not given:
- From scratch, the averages' memory is at most a tenth of the run,
  decay = 1 - 10 / number_of_steps, capped at 0.9997. The initial values
  then weigh at most (1 - 10/n)^n < e^-10 = 4.5e-5 at the end, and the
  averages describe the last tenth of training, when the weights have
  settled. Runs of 33,334 steps or more, and runs without
  --number_of_steps, keep 0.9997.
- Fine-tuning starts from a checkpoint's converged averages, estimated
  from far more images than a short fine-tune sees; forgetting them within
  a tenth of the run swaps them for an estimate from a few hundred
  augmented images, whose noise alone cost the released 1.0_224 a point of
  top-1 (README). So a fine-tune's memory is the whole run,
  decay = 1 - 1 / number_of_steps (capped at 0.9997): the checkpoint's
  values weigh (1 - 1/n)^n ~ e^-1 = 37% at the end, and the run's batches
  the rest, which takes in what the fine-tune changes.
- Quantization-aware fine-tunes with per-tensor weights keep the
  checkpoint's averages as they are (decay 1, `KEEP`). Their weights'
  rounding moves the layers' output means far more than that noise, but
  by an amount the weights and their inputs' means give exactly: after the
  last step `weight_rounding` adds it to the means, and the averages stay
  those of the full dataset.

The decay a model trained with, and whether it was fine-tuned, are recorded
in its training graph (the `.meta` file beside each checkpoint), so that
evaluation can tell when a checkpoint's averages cannot have converged.
"""

import os

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

tf1 = tf.compat.v1

IMAGENET_DECAY = 0.9997
# The decay that keeps a checkpoint's averages as they are.
KEEP = 1.0
# The averages' memory 1 / (1 - decay) as a fraction of the run, from
# scratch and fine-tuning.
MEMORY_FRACTION = 0.1
FINE_TUNING_MEMORY_FRACTION = 1.0
# Evaluation warns when the initial values still weigh more than this in the
# averages, i.e. after fewer than ln(20) = 3 memory lengths of training.
UNCONVERGED_WEIGHT = 0.05
# The graph constants that record the decay and whether the run fine-tuned.
RECORD_NAME = 'batch_norm_decay'
FINE_TUNED_RECORD_NAME = 'batch_norm_fine_tuned'


def for_steps(number_of_steps, fine_tuning=False):
  """The decay for a run of `number_of_steps` steps (see the module doc).

  Args:
    number_of_steps: steps the run takes, or None for an open-ended run.
    fine_tuning: whether the run starts from a checkpoint's averages.

  Returns:
    The decay, in [0, IMAGENET_DECAY].
  """
  if not number_of_steps:
    return IMAGENET_DECAY
  fraction = FINE_TUNING_MEMORY_FRACTION if fine_tuning else MEMORY_FRACTION
  return min(IMAGENET_DECAY,
             max(0.0, 1.0 - 1.0 / (fraction * number_of_steps)))


def record(decay, fine_tuned=False):
  """Records the decay in the default graph, where a checkpoint's .meta keeps it.

  Args:
    decay: the decay the graph's batch norms use.
    fine_tuned: whether the averages started from a checkpoint's.

  Returns:
    The constant tensor holding the decay.
  """
  tf.constant(fine_tuned, tf.bool, name=FINE_TUNED_RECORD_NAME)
  return tf.constant(decay, tf.float32, name=RECORD_NAME)


def _recorded_constants(checkpoint):
  """{name: value} of the graph constants saved beside `checkpoint`."""
  path = checkpoint + '.meta'
  if not os.path.exists(path):
    return {}
  meta_graph = tf1.MetaGraphDef()
  try:
    with open(path, 'rb') as f:
      meta_graph.ParseFromString(f.read())
  except Exception:  # pylint: disable=broad-except
    # A damaged .meta says nothing about the averages; restoring the
    # checkpoint reports damage to what matters.
    return {}
  return {node.name: tf.make_ndarray(node.attr['value'].tensor).item()
          for node in meta_graph.graph_def.node
          if node.name in (RECORD_NAME, FINE_TUNED_RECORD_NAME) and
          node.op == 'Const'}


def recorded(checkpoint):
  """The decay recorded in the training graph saved beside `checkpoint`.

  Args:
    checkpoint: a checkpoint prefix.

  Returns:
    The decay, or None when there is no .meta file or it records none
    (exported bundles, other tools' checkpoints).
  """
  return _recorded_constants(checkpoint).get(RECORD_NAME)


def kept_checkpoint_averages(checkpoint):
  """Whether `checkpoint`'s training graph kept a checkpoint's averages.

  Args:
    checkpoint: a checkpoint prefix.

  Returns:
    True when its .meta records a fine-tune with decay KEEP.
  """
  constants = _recorded_constants(checkpoint)
  return bool(constants.get(RECORD_NAME) == KEEP and
              constants.get(FINE_TUNED_RECORD_NAME))


def unconverged_warning(checkpoint, step):
  """A one-line warning when `checkpoint`'s moving averages cannot have converged.

  Args:
    checkpoint: a checkpoint prefix.
    step: its global step.

  Returns:
    The warning text, or None when the averages have had time to converge,
    started from a checkpoint's (a fine-tune), or the decay is not
    recorded.
  """
  constants = _recorded_constants(checkpoint)
  decay = constants.get(RECORD_NAME)
  if decay is None or step is None or constants.get(FINE_TUNED_RECORD_NAME):
    return None
  weight = decay ** step if step > 0 else 1.0
  if weight <= UNCONVERGED_WEIGHT:
    return None
  return ('batch norm\'s moving averages in %s cannot have converged: after '
          '%d steps with decay %g they still hold %.0f%% of their initial '
          'values, so accuracy may be far below training\'s; train longer, '
          'or leave --batch_norm_decay unset (it would be %.4g for %d steps)'
          % (os.path.basename(checkpoint), step, decay, 100 * weight,
             for_steps(max(step, 1)), step))

