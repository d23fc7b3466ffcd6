"""Quantization-aware training rewrites for TF-slim graphs.

This rebuilds what `tf.contrib.quantize` did for TensorFlow 1.x: it rewrites
a float inference or training graph in place so that it simulates 8-bit
inference, the way the TFLite converter will later run it.

Usage (graph mode, models built in their slim arg_scope):

    logits, _ = mobilenet_v1.mobilenet_v1(images, is_training=True)
    ...build the loss...
    quantize.create_training_graph(quant_delay=250000)
    ...then build the optimizer and train op...

    logits, _ = mobilenet_v1.mobilenet_v1(images, is_training=False)
    quantize.create_eval_graph()
    ...restore a checkpoint of the training graph, evaluate or export...

The rewrite must run after the forward graph is built and before gradients
are taken, so that the optimizer differentiates the quantized graph. It
reroutes consumers: a Python reference to a rewritten tensor (say a Relu6
kept in `end_points`) still evaluates to the unquantized value, while its
consumers (the next layer, the logits' squeeze and softmax) read the
quantized one. Fetch outputs downstream of the last fake quant.

What the rewrite does, per layer. A layer is a Conv2D, DepthwiseConv2dNative
or MatMul whose second input reads a variable, followed optionally by a batch
norm (fused `FusedBatchNorm*`, or unfused as `tf.nn.batch_normalization`
builds it) or a bias (`BiasAdd`, or `Add` of a rank-1 tensor), then
optionally by a residual `Add` of a same-shaped tensor, then optionally by a
`Relu`/`Relu6` (Identity ops in between are looked through).

1. Batch norm folding (`fold_batch_norms`): each batch norm after a layer is
   folded into the layer's weights and an offset, by its own mode (moving
   statistics in inference graphs, batch statistics with contrib's
   correction in training graphs). A channel whose moving variance is below
   the noise that rounding the layer's (quantized) input adds to it carries
   no signal in the quantized model; folding would scale its weights by
   gamma / sigma with a tiny sigma, and one such channel can blow up the
   layer's per-tensor weight range. It is folded as the constant it
   outputs: zero weights, offset beta (fused batch norms, whose beta is at
   hand). Training graphs whose batch norms are never frozen mid-run keep
   them instead (`keeps_batch_norms`): each layer's weights are quantized
   as the folded ones will be and scaled back by the batch norm's
   multiplier m, quant(W * m) / m, so that the batch norm after the
   quantized layer computes what the folded layer would, with one
   convolution instead of two (per-channel ranges scale with their
   channels, so there the weights are quantized directly,
   quant(W * m) / m = quant(W)). The batch norm's statistics are then
   those of the quantized layer's output, mean shift from rounding the
   weights included, and inference folds them in. Drowned channels get a
   zero multiplier, so zero weights, and their batch norm outputs beta.
   The saved weight ranges are the folded weights'.

2. Weight quantization: an 8-bit fake quant of the (folded) weights, range
   from the last value, narrow range. `weights` picks the scheme
   (WEIGHT_SCHEMES): per_channel (the default) gives each output channel
   its own range symmetric about zero, TFLite's int8 scheme (int8 weights
   with zero point 0 and per-axis scales); symmetric one range per tensor,
   [-max|W|, max|W|], so the uint8 weights have zero point 128 and the
   uint8 model converts exactly to int8; asymmetric the weights' own
   [min, max], contrib.quantize's default. The eval rewrite reads whatever
   ranges training saved (`eval_options` says which scheme a checkpoint
   has).

3. Activation quantization: an 8-bit fake quant with moving-average ranges
   (contrib's zero-debiased average, EMA decay 0.999, so ranges start from
   the data; its `biased` and `local_step` slots are saved, so fine-tuning
   from a quantized checkpoint carries the averages on) after the
   Relu/Relu6, or after the bias add / folded batch norm when there is no
   activation. A residual Add before the activation also gets a fake quant
   on its layer input; an Add of two quantized tensors whose output is not
   otherwise quantized gets one on its output. The model's output (the
   last layer's, when no activation bounds it: a classifier's logits) keeps
   the extremes seen instead, as post-training calibration takes them.

   In the training graph the ranges are updated by assign ops inside the
   graph, on every run that evaluates the layer, not through UPDATE_OPS.
   The eval graph only reads them, which is what lets it convert to TFLite.

4. Quantization delay (training only): until the global step reaches
   `quant_delay`, the graph passes weights and activations unquantized (the
   ranges keep being updated meanwhile, so they are warm when quantization
   starts).

5. TFLite emulation (`tflite_emulation`, eval graph only): biases rounded to
   their int32 grid, average pools rounded to their input's grid, so that
   the frozen eval graph computes what the integer model does.

Mixed bfloat16 training graphs (training/mixed_precision: bfloat16 layers
reading bfloat16 casts of float32 variables) are rewritten the same way,
the rewrite's own arithmetic in float32 (graph_editing.in_float32): each
layer's weights are folded and quantized from the float32 variable, and the
result cast to bfloat16 for the layer; bfloat16 activations are cast to
float32, fake-quantized over float32 ranges and cast back. The variables,
range variables included, are those of a float32 training graph.

The modules, as contrib.quantize split them: this one is the public API
(the rewrites and what callers ask of a rewritten graph or its checkpoint);
`quantizer` puts the fake quants in place, layer by layer; `quant_ops`
builds each fake quant and its range variables; `fold_batch_norms` folds;
`graph_editing` matches and edits the graph.

Range variables are `<layer scope>/weights_quant/{min,max}` and
`<layer scope>/act_quant/{min,max}` (plus `conv_quant` before a residual Add
and `<add op>/add_quant` after one), where the layer scope is the name scope
of the layer's op, as contrib.quantize named them: for MobileNet V1, whose
body ops live under `MobilenetV1/MobilenetV1/`, that is
`MobilenetV1/MobilenetV1/Conv2d_0/act_quant/min` and
`MobilenetV1/Logits/Conv2d_1c_1x1/weights_quant/max`. They are global and
model variables, non-trainable, so a Saver saves them and an eval graph built
the same way restores them. Activation ranges start at [0, 6] after a ReLU,
at [0, 0] at the model's output (its extremes start from the data) and at
[-6, 6] elsewhere; weight ranges are set by the first training step.
"""

import collections
import re

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from quantization import fold_batch_norms
from quantization import graph_editing
from quantization import quant_ops
from quantization import quantizer
from quantization import tflite_emulation

tf1 = tf.compat.v1

# How weights are quantized:
#   per_channel: one range per output channel, symmetric about zero (TFLite's
#     int8 scheme: zero point 0, int8 codes in [-127, 127]); converts to a
#     full-integer int8 model.
#   symmetric: one range per tensor, symmetric about zero (uint8 zero point
#     128): the uint8 model, and its int8 twin.
#   asymmetric: one range per tensor, the weights' own [min, max], as
#     contrib.quantize did: uint8 only.
PER_CHANNEL = 'per_channel'
SYMMETRIC = 'symmetric'
ASYMMETRIC = 'asymmetric'
WEIGHT_SCHEMES = (PER_CHANNEL, SYMMETRIC, ASYMMETRIC)

# A scalar variable that records, in the checkpoint, that the model was
# trained with drowned channels masked (see fold_batch_norms._signal_mask),
# so that its eval graph masks them too.
MASK_VARIABLE = 'quantize/drowned_channel_mask'

_RANGE_VARIABLE_RE = re.compile(r'/(%s|%s|%s|%s)/(min|max)$' % (
    quant_ops.WEIGHTS_QUANT, quant_ops.ACT_QUANT, quant_ops.CONV_QUANT,
    quant_ops.ADD_QUANT))


def create_training_graph(input_graph=None, quant_delay=0,
                          weights=PER_CHANNEL, freeze_bn_delay=None,
                          mask_drowned_channels=False):
  """Rewrites a float training graph in place for quantization-aware training.

  Keeps batch norms after the quantized layers (`keeps_batch_norms`), or,
  with freezing scheduled, folds them with batch statistics and the
  correction described in fold_batch_norms, and adds fake quantization that
  updates its ranges on every run.

  Args:
    input_graph: the tf.Graph to rewrite; the default graph when None.
    quant_delay: global step from which weights and activations are
      quantized; before it they pass through unchanged. 0 quantizes from the
      start. A positive delay uses (and creates if needed) the global step.
    weights: one of WEIGHT_SCHEMES.
    freeze_bn_delay: global step from which batch norms are folded with
      their moving statistics rather than the batch's (contrib.quantize's
      freeze_bn_delay), so that training computes the function inference
      will; None never freezes them.
    mask_drowned_channels: fold channels drowned by their input's rounding
      noise to constants (fold_batch_norms._signal_mask), and record that in
      the MASK_VARIABLE variable so the eval graph does the same.

  Raises:
    ValueError: if `quant_delay` or `freeze_bn_delay` is negative, `weights`
      is unknown, drowned channels are to be masked with per-channel
      weights, the graph is already quantized or folded, already has
      gradients, or has no layer to quantize.
  """
  if quant_delay is None or quant_delay < 0:
    raise ValueError('quant_delay must be a non-negative step, got %r.' %
                     (quant_delay,))
  if freeze_bn_delay is not None and freeze_bn_delay < 0:
    raise ValueError('freeze_bn_delay must be a non-negative step or None, '
                     'got %r.' % (freeze_bn_delay,))
  _rewrite(input_graph, is_training=True, quant_delay=quant_delay,
           weights=weights, freeze_bn_delay=freeze_bn_delay,
           mask_drowned_channels=mask_drowned_channels)


def create_eval_graph(input_graph=None, weights=PER_CHANNEL,
                      mask_drowned_channels=False):
  """Rewrites a float inference graph in place to simulate 8-bit inference.

  Folds batch norms (of a graph built with is_training=False, so with their
  moving statistics) and adds fake quantization that reads its ranges from
  the range variables (restore them from a checkpoint of the training
  graph). The result freezes and converts to an integer TFLite model. Build
  it as the checkpoint was trained: `eval_options(checkpoint)` says how.

  Args:
    input_graph: the tf.Graph to rewrite; the default graph when None.
    weights: one of WEIGHT_SCHEMES, as training had it: per_channel reads
      weight ranges per output channel (vectors), the others per tensor
      (scalars). The eval graph only reads the ranges, so symmetric and
      asymmetric build the same graph.
    mask_drowned_channels: mask drowned channels, as training did.

  Raises:
    ValueError: if `weights` is unknown, drowned channels are to be masked
      with per-channel weights, the graph is already quantized or folded,
      already has gradients, or has no layer to quantize.
  """
  _rewrite(input_graph, is_training=False, quant_delay=0, weights=weights,
           freeze_bn_delay=None, mask_drowned_channels=mask_drowned_channels)


def eval_options(variable_shapes):
  """How to build the eval graph of a quantized checkpoint.

  Args:
    variable_shapes: the checkpoint's variable name -> shape map
      (`tf.train.load_checkpoint(path).get_variable_to_shape_map()`).

  Returns:
    The keyword arguments of `create_eval_graph` (weights,
    mask_drowned_channels) that rebuild the function the checkpoint was
    trained as: PER_CHANNEL weights where its weight ranges are vectors,
    ASYMMETRIC (per tensor) where they are scalars, the drowned-channel mask
    only where it records training with it.
  """
  weight_ranges = [shape for name, shape in variable_shapes.items()
                   if name.endswith('/%s/min' % quant_ops.WEIGHTS_QUANT)]
  per_channel = any(len(shape) == 1 for shape in weight_ranges)
  return {
      'weights': PER_CHANNEL if per_channel else ASYMMETRIC,
      'mask_drowned_channels': MASK_VARIABLE in variable_shapes,
  }


def range_variables(graph=None):
  """Lists the quantization range variables of a rewritten graph.

  Args:
    graph: the tf.Graph to search; the default graph when None.

  Returns:
    The `min`/`max` variables created by the rewrites, in creation order
    (names like `MobilenetV1/MobilenetV1/Conv2d_0/act_quant/min`). Export
    code reads them; fine-tuning from a float checkpoint leaves them out of
    the restore.
  """
  graph = graph or tf1.get_default_graph()
  return [v for v in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)
          if _RANGE_VARIABLE_RE.search(v.op.name)]


def range_variables_by_scope(graph=None):
  """The range variables of a rewritten graph, grouped by fake quant.

  Args:
    graph: the tf.Graph to search; the default graph when None.

  Returns:
    An OrderedDict, in creation order (which is graph order), from each
    range scope (like `MobilenetV1/MobilenetV1/Conv2d_0/act_quant`) to
    {'min': variable, 'max': variable}.
  """
  by_scope = collections.OrderedDict()
  for variable in range_variables(graph):
    scope, _, bound = variable.op.name.rpartition('/')
    by_scope.setdefault(scope, {})[bound] = variable
  return by_scope


def _rewrite(input_graph, is_training, quant_delay, weights, freeze_bn_delay,
             mask_drowned_channels):
  """Folds batch norms and inserts fake quantization; see the docstring."""
  graph = input_graph or tf1.get_default_graph()
  # A fixed-range fake quant (quantize_input's) is an input, not a rewrite.
  existing = [op.name for op in graph.get_operations()
              if op.type in graph_editing.FAKE_QUANT_TYPES and
              op.type != 'FakeQuantWithMinMaxArgs']
  if existing:
    raise ValueError(
        'The graph is already quantized (it has fake quantization ops such '
        'as %s); rewrite a float graph, once.' % existing[0])
  # Folded layers read computed weights, which the rewrite would not
  # recognize as layers, so it would quantize the dead unfolded ones.
  if graph.get_collection(fold_batch_norms.FOLDED_LAYERS):
    raise ValueError(
        'The graph already has folded batch norms; the quantization rewrites '
        'fold them themselves: rewrite the float graph.')
  graph_editing.check_no_gradients(graph)
  layers = graph_editing.find_layers(graph)
  if not layers:
    raise ValueError('The graph has no layer to quantize (Conv2D, '
                     'DepthwiseConv2dNative or MatMul of a variable).')
  if weights not in WEIGHT_SCHEMES:
    raise ValueError('weights must be one of %s, got %r.' %
                     (', '.join(WEIGHT_SCHEMES), weights))
  if mask_drowned_channels and weights == PER_CHANNEL:
    raise ValueError('Drowned channels are masked for per-tensor weight '
                     'ranges, which one such channel would blow up; '
                     'per-channel ranges need no mask.')
  with graph.as_default():
    if mask_drowned_channels:
      _mask_variable()
    freeze_bn = None
    if freeze_bn_delay is not None:
      global_step = tf1.train.get_or_create_global_step(graph)
      with graph.name_scope('freeze_bn/'):
        freeze_bn = tf.greater_equal(
            global_step,
            tf.cast(freeze_bn_delay, global_step.dtype.base_dtype),
            name='use_moving_statistics')
    layer_quantizer = quantizer.Quantizer(
        graph, is_training, quant_delay,
        per_channel_weights=weights == PER_CHANNEL,
        symmetric_weights=weights == SYMMETRIC)
    keep_batch_norms = is_training and keeps_batch_norms(freeze_bn_delay)
    output_layer = layers[-1][0]
    for layer_op, context in layers:
      is_model_output = layer_op is output_layer
      if keep_batch_norms:
        unfolded = fold_batch_norms.inference_multiplier(
            layer_op, context,
            _input_scale(layer_op) if mask_drowned_channels else None)
        if unfolded is not None:
          multiplier, output, output_is_activation = unfolded
          layer_quantizer.quantize_layer(layer_op, output, context,
                                   folded_multiplier=multiplier,
                                   output_is_activation=output_is_activation,
                                   is_model_output=is_model_output)
          continue
      folded = fold_batch_norms.fold_batch_norm(
          layer_op, context,
          _input_scale(layer_op) if mask_drowned_channels else None,
          freeze=freeze_bn)
      if folded is None:
        output = graph_editing.skip_batch_to_space(layer_op.outputs[0])
      else:
        layer_op, output = folded
      layer_quantizer.quantize_layer(layer_op, output, context,
                               is_model_output=is_model_output)
    layer_quantizer.quantize_residual_adds()
    layer_quantizer.quantize_average_pools()
    if not is_training:
      tflite_emulation.round_biases(graph, layer_quantizer.biases)


def keeps_batch_norms(freeze_bn_delay):
  """Whether the training rewrite leaves a layer's fused batch norm in place.

  Batch norms that are never frozen mid-run (their mode, batch or moving
  statistics, is the one the model was built in) need no folding in
  training (fold_batch_norms.inference_multiplier says why): each layer's
  convolution runs once, rather than twice as folding with batch statistics
  needs, and its batch norm + ReLU6 may run fused (batch_norm_relu6). The
  saved ranges are those of the folded weights, so eval graphs and exports
  are built the same either way.

  Args:
    freeze_bn_delay: as for create_training_graph.

  Returns:
    True if create_training_graph with this freeze_bn_delay keeps the batch
    norms.
  """
  return freeze_bn_delay is None


def _mask_variable():
  """Creates the variable recording that drowned channels are masked."""
  with tf1.variable_scope(tf1.VariableScope(reuse=False, name=''),
                          auxiliary_name_scope=False):
    return tf1.get_variable(
        MASK_VARIABLE, shape=[], dtype=tf.bool,
        initializer=tf1.constant_initializer(True), trainable=False,
        collections=[tf1.GraphKeys.GLOBAL_VARIABLES,
                     tf1.GraphKeys.MODEL_VARIABLES])


def _input_scale(layer_op):
  """The quantization step of a layer's input, or None if not quantized.

  Layers are rewritten in graph order, so a layer's input from an earlier
  layer is quantized by the time the layer is folded.
  """
  fake_quant = graph_editing.fake_quant_of(layer_op.inputs[0])
  return (None if fake_quant is None else
          graph_editing.fake_quant_scale(fake_quant))


def is_range_variable_name(name):
  """Whether `name` is that of a range variable the rewrites create.

  Args:
    name: a variable (or checkpoint entry) name.

  Returns:
    True for names like `MobilenetV1/MobilenetV1/Conv2d_0/act_quant/min`.
  """
  return bool(_RANGE_VARIABLE_RE.search(name))
