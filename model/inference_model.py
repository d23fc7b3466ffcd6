"""The inference graph that evaluation and export share, and its checkpoint.

`build_logits` builds the float model for training too.

Evaluation measures exactly the graph that export freezes and converts: the
model in inference mode and, for quantized models, the quantization eval
rewrite (folded batch norms, fake quantization reading the trained ranges).
"""

from runtime.slim_compat import slim

from model import checkpoint_utils
import mobilenet_v1
from quantization import quantize
from quantization import tflite_emulation


def build(images, num_classes, depth_multiplier, quantized,
          quantize_options=None):
  """Builds the inference graph in the default graph.

  Args:
    images: float32 [batch, size, size, 3] in [-1, 1].
    num_classes: classes of the logits layer.
    depth_multiplier: width multiplier.
    quantized: rewrite into the quantized eval graph.
    quantize_options: keyword arguments of `quantize.create_eval_graph`, as
      `quantize_options(checkpoint)` reads them from the checkpoint to
      restore; None for its defaults.

  Returns:
    The logits, [batch, num_classes].
  """
  if quantized:
    images = tflite_emulation.quantize_input(images)
  logits = build_logits(images, num_classes, depth_multiplier)
  if quantized:
    quantize.create_eval_graph(**(quantize_options or {}))
  return logits


def build_logits(images, num_classes, depth_multiplier, is_training=False,
                 **arg_scope_options):
  """Builds the float model in the default graph, for training or inference.

  The one builder of the classifier: `build` (evaluation and export), the
  trainer and its distillation teacher all call it.

  Args:
    images: float32 [batch, size, size, 3] in [-1, 1].
    num_classes: classes of the logits layer.
    depth_multiplier: width multiplier.
    is_training: batch norm normalizes with each batch's statistics and
      updates its moving averages, and dropout is on; else the model
      computes as evaluated and exported.
    **arg_scope_options: other arguments of
      `mobilenet_v1.mobilenet_v1_arg_scope` (weight_decay, batch_norm_decay).

  Returns:
    The logits, [batch, num_classes].
  """
  scope = mobilenet_v1.mobilenet_v1_arg_scope(is_training=is_training,
                                              **arg_scope_options)
  with slim.arg_scope(scope):
    logits, _ = mobilenet_v1.mobilenet_v1(
        images, num_classes=num_classes, is_training=is_training,
        depth_multiplier=depth_multiplier)
  return logits


def quantize_options(checkpoint):
  """How the quantized eval graph of `checkpoint` is built.

  Args:
    checkpoint: a checkpoint prefix.

  Returns:
    The keyword arguments of `quantize.create_eval_graph` that rebuild the
    function the checkpoint was trained as (`quantize.eval_options`); its
    defaults for a checkpoint that does not read (restoring it reports the
    problem).
  """
  try:
    shapes = checkpoint_utils.saved_variable_shapes(checkpoint)
  except checkpoint_utils.CheckpointError:
    return {}
  return quantize.eval_options(shapes)


def verify_checkpoint(checkpoint, graph, variables, num_classes,
                      depth_multiplier, quantized):
  """Checks that `checkpoint` holds every variable of the built graph.

  Args:
    checkpoint: a checkpoint prefix.
    graph: the graph `build` made.
    variables: the variables that will be restored.
    num_classes: as given to `build`, for the message.
    depth_multiplier: as given to `build`, for the message.
    quantized: as given to `build`.

  Raises:
    checkpoint_utils.CheckpointError: a float checkpoint for a quantized
      graph, one lacking some of its ranges (named), or variables missing or
      of other shapes, with the fix.
  """
  found = checkpoint_utils.match(checkpoint, variables)
  range_names = {v.op.name for v in quantize.range_variables(graph)}
  missing_ranges = [name for name in found.missing if name in range_names]
  if quantized and missing_ranges and len(missing_ranges) == len(found.missing):
    if len(missing_ranges) == len(range_names):
      raise checkpoint_utils.CheckpointError(
          'checkpoint %s has no quantization ranges (it is a float model); '
          'drop --quantize, or train with --quantize=True '
          '--fine_tune_checkpoint=%s first' % (checkpoint, checkpoint))
    raise checkpoint_utils.CheckpointError(
        'checkpoint %s lacks %d of the %d quantization ranges of this model '
        '(%s); was it trained with --quantize for this configuration?' %
        (checkpoint, len(missing_ranges), len(range_names),
         checkpoint_utils.first_few(missing_ranges)))
  checkpoint_utils.verify_fits(
      checkpoint, variables, '--num_classes=%d --depth_multiplier=%g%s' % (
          num_classes, depth_multiplier, ' --quantize' if quantized else ''))


def has_quantization_ranges(checkpoint):
  """Whether a checkpoint holds quantization ranges (was trained quantized).

  Args:
    checkpoint: a checkpoint prefix.

  Returns:
    True when some variable is named as quantize's range variables are.
  """
  try:
    names = checkpoint_utils.saved_variable_shapes(checkpoint)
  except checkpoint_utils.CheckpointError:
    return False  # restoring it reports the problem
  return any(quantize.is_range_variable_name(name) for name in names)
