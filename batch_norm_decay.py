"""Batch norm's moving-average decay: one that fits the run, and a check.

Batch norm in inference mode normalizes with moving averages of the batch
statistics, updated every step as avg = decay * avg + (1 - decay) * batch.
After n steps the values the averages started from (mean 0, variance 1 for
a model trained from scratch) still weigh decay^n. slim's ImageNet default,
0.9997, remembers about 1 / (1 - decay) = 3,333 steps: right for runs of
hundreds of thousands of steps, but after 600 steps the averages are still
0.9997^600 = 84% their initial values, and the model evaluates at chance
however well it trained.

The rule used when --batch_norm_decay is not given: the averages' memory is
at most a tenth of the run, decay = 1 - 10 / number_of_steps, capped at
0.9997. The initial values then weigh at most
(1 - 10/n)^n < e^-10 = 4.5e-5 at the end, and the averages describe the
last tenth of training, when the weights have settled. Runs of 33,334 steps
or more, and runs without --number_of_steps, keep 0.9997.

The decay a model trained with is recorded in its training graph (the
`.meta` file beside each checkpoint), so that evaluation can tell when a
checkpoint's averages cannot have converged.
"""

import os

import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

tf1 = tf.compat.v1

IMAGENET_DECAY = 0.9997
# The averages' memory 1 / (1 - decay) as a fraction of the run.
MEMORY_FRACTION = 0.1
# Evaluation warns when the initial values still weigh more than this in the
# averages, i.e. after fewer than ln(20) = 3 memory lengths of training.
UNCONVERGED_WEIGHT = 0.05
# The graph constant that records the decay.
RECORD_NAME = 'batch_norm_decay'


def for_steps(number_of_steps):
  """The decay for a run of `number_of_steps` steps (see the module doc).

  Args:
    number_of_steps: steps the run takes, or None for an open-ended run.

  Returns:
    The decay, in [0, IMAGENET_DECAY].
  """
  if not number_of_steps:
    return IMAGENET_DECAY
  return min(IMAGENET_DECAY,
             max(0.0, 1.0 - 1.0 / (MEMORY_FRACTION * number_of_steps)))


def record(decay):
  """Records `decay` in the default graph, where a checkpoint's .meta keeps it.

  Args:
    decay: the decay the graph's batch norms use.

  Returns:
    The constant tensor.
  """
  return tf.constant(decay, tf.float32, name=RECORD_NAME)


def recorded(checkpoint):
  """The decay recorded in the training graph saved beside `checkpoint`.

  Args:
    checkpoint: a checkpoint prefix.

  Returns:
    The decay, or None when there is no .meta file or it records none
    (exported bundles, other tools' checkpoints).
  """
  path = checkpoint + '.meta'
  if not os.path.exists(path):
    return None
  meta_graph = tf1.MetaGraphDef()
  try:
    with open(path, 'rb') as f:
      meta_graph.ParseFromString(f.read())
  except Exception:  # pylint: disable=broad-except
    # A damaged .meta says nothing about the averages; restoring the
    # checkpoint reports damage to what matters.
    return None
  for node in meta_graph.graph_def.node:
    if node.name == RECORD_NAME and node.op == 'Const':
      return tf.make_ndarray(node.attr['value'].tensor).item()
  return None


def unconverged_warning(checkpoint, step):
  """A one-line warning when `checkpoint`'s moving averages cannot have converged.

  Args:
    checkpoint: a checkpoint prefix.
    step: its global step.

  Returns:
    The warning text, or None when the averages have had time to converge
    or the decay is not recorded.
  """
  decay = recorded(checkpoint)
  if decay is None or step is None:
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

