"""Starting a run from --fine_tune_checkpoint: what is restored, and how.

The model's variables come from the checkpoint, except those of
--checkpoint_exclude_scopes and the global step; a quantization-aware
fine-tune with per-tensor weights first equalises the float model's channel
ranges (equalize.py).
"""

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from model import checkpoint_utils
from model import inference_model
import mobilenet_v1
from quantization import equalize
from quantization import quant_ops
from training import config as config_lib

tf1 = tf.compat.v1


def in_scopes(variable_name, scopes):
  """Whether a variable's name lies in one of `scopes` (or is one).

  Args:
    variable_name: e.g. 'MobilenetV1/Logits/Conv2d_1c_1x1/weights'.
    scopes: variable scopes, e.g. ['MobilenetV1/Logits'].

  Returns:
    True when the name is a scope or starts with one and '/'.
  """
  return any(variable_name == s or variable_name.startswith(s + '/')
             for s in scopes)


def batch_norms_restored(config):
  """Whether the checkpoint gives every batch norm its moving averages.

  Args:
    config: a TrainConfig.

  Returns:
    False when --checkpoint_exclude_scopes leaves out some batch norm.
  """
  moving_means = ['MobilenetV1/%s/BatchNorm/moving_mean' % layer
                  for layer in mobilenet_v1.endpoint_names(
                      mobilenet_v1.MOBILENETV1_CONV_DEFS)]
  return not any(in_scopes(name, config.checkpoint_exclude_scopes)
                 for name in moving_means)


def init_fn(config):
  """Returns the scaffold's init function restoring --fine_tune_checkpoint.

  Restores every model variable the checkpoint has, except excluded scopes
  and the global step; variables it lacks (quantization ranges of a float
  checkpoint, new layers) keep their initial values. Call it once the
  training graph is built.

  Args:
    config: a TrainConfig.

  Returns:
    Function (scaffold, session) that restores, then equalises channel
    ranges where `config.equalizes_ranges` says so.

  Raises:
    checkpoint_utils.CheckpointError: the checkpoint is missing or
      unreadable, or has variables of a different shape than the model's.
  """
  path = checkpoint_utils.resolve(config.fine_tune_checkpoint)
  candidates = [v for v in tf1.global_variables()
                if v.op.name != 'global_step' and
                not in_scopes(v.op.name, config.checkpoint_exclude_scopes)]
  found = checkpoint_utils.match(path, candidates)
  # Weight ranges are statistics of the weights, set anew at every step: a
  # per-tensor quantized checkpoint (Google's _quant releases) fine-tunes
  # into per-channel ranges, or back.
  weight_ranges = [m for m in found.mismatched
                   if '/%s/' % quant_ops.WEIGHTS_QUANT in m.split(' ')[0]]
  if weight_ranges:
    print('--fine_tune_checkpoint has weight ranges of another scheme than '
          '--weight_quantization=%s; they are computed from the weights '
          'instead.' % config.weight_quantization, flush=True)
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
  equalizing = config_lib.equalizes_ranges(
      config, inference_model.has_quantization_ranges(path))

  def restore(scaffold, session):
    del scaffold  # unused
    saver.restore(session, path)
    if equalizing:
      _equalize_ranges(session)

  return restore


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
  """The largest channel spread of any depthwise layer in `values`."""
  return max(equalize.channel_spread(values, layer,
                                     mobilenet_v1.BATCH_NORM_EPSILON)
             for layer in mobilenet_v1.endpoint_names()
             if layer.endswith('_depthwise'))
