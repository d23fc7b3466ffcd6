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

The graph matching and editing helpers are in `graph_editing`.

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

from tensorflow.python.training import moving_averages
from quantization import fold_batch_norms
from quantization import graph_editing
from quantization import tflite_emulation

tf1 = tf.compat.v1

NUM_BITS = 8
EMA_DECAY = 0.999

WEIGHTS_QUANT = 'weights_quant'
ACT_QUANT = 'act_quant'
CONV_QUANT = 'conv_quant'
ADD_QUANT = 'add_quant'

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

# The smallest per-channel weight bound: a channel of zero weights would
# otherwise get a zero scale, which TFLite refuses. Any larger weight keeps
# its own bound.
_MIN_WEIGHT_BOUND = 1e-5

_RANGE_VARIABLE_RE = re.compile(r'/(%s|%s|%s|%s)/(min|max)$' % (
    WEIGHTS_QUANT, ACT_QUANT, CONV_QUANT, ADD_QUANT))

_ACTIVATION_TYPES = frozenset(['Relu', 'Relu6'])
# Ops whose output is never negative: ReLUs and batch_norm_relu6's fused op.
_NONNEGATIVE_TYPES = _ACTIVATION_TYPES | {'FusedBatchNormRelu6'}
_ADD_TYPES = frozenset(['Add', 'AddV2'])

# Initial ranges. Weight ranges are overwritten by every training step; an
# activation range starts at [0, 6] after a ReLU (it never goes below 0, and
# an EMA starting at -6 would take thousands of steps to get there) and at
# contrib.quantize's [-6, 6] elsewhere.
_INIT_RANGE = (-6.0, 6.0)
_INIT_RELU_RANGE = (0.0, 6.0)

# How a training graph updates a range from each batch (see _insert).
_MOVING_AVERAGE = 'moving_average'
_LAST_VALUE = 'last_value'
_EXTREMES = 'extremes'


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


def create_eval_graph(input_graph=None, per_channel_weights=True,
                      mask_drowned_channels=False):
  """Rewrites a float inference graph in place to simulate 8-bit inference.

  Folds batch norms (of a graph built with is_training=False, so with their
  moving statistics) and adds fake quantization that reads its ranges from
  the range variables (restore them from a checkpoint of the training
  graph). The result freezes and converts to an integer TFLite model. Build
  it as the checkpoint was trained: `eval_options(checkpoint)` says how.

  Args:
    input_graph: the tf.Graph to rewrite; the default graph when None.
    per_channel_weights: weight ranges per output channel (vectors) rather
      than per tensor (scalars).
    mask_drowned_channels: mask drowned channels, as training did.

  Raises:
    ValueError: if drowned channels are to be masked with per-channel
      weights, the graph is already quantized or folded, already has
      gradients, or has no layer to quantize.
  """
  _rewrite(input_graph, is_training=False, quant_delay=0,
           weights=PER_CHANNEL if per_channel_weights else ASYMMETRIC,
           freeze_bn_delay=None, mask_drowned_channels=mask_drowned_channels)


def eval_options(variable_shapes):
  """How to build the eval graph of a quantized checkpoint.

  Args:
    variable_shapes: the checkpoint's variable name -> shape map
      (`tf.train.load_checkpoint(path).get_variable_to_shape_map()`).

  Returns:
    The keyword arguments of `create_eval_graph` (per_channel_weights,
    mask_drowned_channels) that rebuild the function the checkpoint was
    trained as: per-channel weights where its weight ranges are vectors,
    the drowned-channel mask only where it records training with it.
  """
  weight_ranges = [shape for name, shape in variable_shapes.items()
                   if name.endswith('/%s/min' % WEIGHTS_QUANT)]
  return {
      'per_channel_weights': any(len(shape) == 1 for shape in weight_ranges),
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
    quantizer = _Quantizer(graph, is_training, quant_delay, weights)
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
          quantizer.quantize_layer(layer_op, output, context,
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
      quantizer.quantize_layer(layer_op, output, context,
                               is_model_output=is_model_output)
    quantizer.quantize_residual_adds()
    quantizer.quantize_average_pools()
    if not is_training:
      tflite_emulation.round_biases(graph, quantizer.biases)


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


class _Quantizer(object):
  """Inserts fake quantization ops into one graph."""

  def __init__(self, graph, is_training, quant_delay, weights):
    """Creates a quantizer.

    Args:
      graph: the tf.Graph to rewrite; must be the default graph while used.
      is_training: update ranges from the data (training) or only read them
        (eval).
      quant_delay: global step before which quantization is bypassed.
      weights: one of WEIGHT_SCHEMES.
    """
    self._graph = graph
    self._weights = weights
    self._is_training = is_training
    # Name of each tensor quantized so far -> its quantized replacement.
    self._quantized = {}
    # Names of the replacements, to recognize inputs already quantized.
    self._replacements = set()
    # (layer op, its bias add, layer scope) of each layer with a bias.
    self._biases = []
    self._use_quant = None
    if quant_delay > 0:
      global_step = tf1.train.get_or_create_global_step(graph)
      with graph.name_scope('quant_delay/'):
        self._use_quant = tf.greater_equal(
            global_step, tf.cast(quant_delay, global_step.dtype.base_dtype),
            name='use_quant')

  def quantize_layer(self, layer_op, output, context, folded_multiplier=None,
                     output_is_activation=False, is_model_output=False):
    """Quantizes a layer's weights and its output activation.

    Args:
      layer_op: the (possibly folded) layer op; its second input is the
        weights.
      output: the layer's output before any bias, residual Add or activation
        (after folding, the folded batch norm's output; for a layer whose
        batch norm is kept, the batch norm's output).
      context: the layer's name scope.
      folded_multiplier: for a layer whose batch norm is kept, the
        per-channel multiplier inference will fold into its weights: the
        saved ranges are those of the folded weights.
      output_is_activation: `output` is already through the activation
        (the fused batch norm + ReLU6 op).
      is_model_output: the layer is the model's last; without an activation
        its output range keeps the extremes seen (see _insert).
    """
    self._quantize_weights(layer_op, context + '/' + WEIGHTS_QUANT,
                           folded_multiplier)
    if output_is_activation:
      self._insert(output, context + '/' + ACT_QUANT, _MOVING_AVERAGE,
                   narrow_range=False, init_range=_INIT_RELU_RANGE)
      return

    output = graph_editing.skip_identities(output)
    if output.op.type == 'BiasAdd':  # a folded batch norm's offset
      bias_add = output.op
    else:
      bias_add = graph_editing.sole_consumer(output,
                                             ['BiasAdd'] + list(_ADD_TYPES))
      if bias_add is not None and (bias_add.type == 'BiasAdd' or any(
          t.shape.rank == 1 for t in bias_add.inputs)):
        output = graph_editing.skip_identities(bias_add.outputs[0])
      else:
        bias_add = None
    if bias_add is not None:
      self._biases.append((layer_op, bias_add, context))

    bypass = graph_editing.sole_consumer(output, _ADD_TYPES)
    if bypass is not None and all(
        t.shape.rank == output.shape.rank for t in bypass.inputs):
      self._insert(output, context + '/' + CONV_QUANT, _MOVING_AVERAGE,
                   narrow_range=False, init_range=_INIT_RANGE)
      output = graph_editing.skip_identities(bypass.outputs[0])

    activation = graph_editing.sole_consumer(output, _ACTIVATION_TYPES)
    updates = _MOVING_AVERAGE
    if activation is None:
      init_range = _INIT_RANGE
      if is_model_output:
        # Every batch's range holds 0, so the extremes start from the data.
        updates, init_range = _EXTREMES, (0.0, 0.0)
    else:
      output = activation.outputs[0]
      init_range = _INIT_RELU_RANGE
    self._insert(output, context + '/' + ACT_QUANT, updates,
                 narrow_range=False, init_range=init_range)

  def quantize_residual_adds(self):
    """Quantizes the output of each Add of two quantized tensors.

    An Add whose output is already quantized, or feeds a quantized
    activation, is left alone.
    """
    for op in self._graph.get_operations():
      if op.type not in _ADD_TYPES or not all(
          t.name in self._replacements for t in op.inputs):
        continue
      output = graph_editing.skip_identities(op.outputs[0])
      activation = graph_editing.sole_consumer(output, _ACTIVATION_TYPES)
      if (output.name in self._quantized or
          (activation is not None and
           activation.outputs[0].name in self._quantized)):
        continue
      self._insert(output, op.name + '/' + ADD_QUANT, _MOVING_AVERAGE,
                   narrow_range=False, init_range=_INIT_RANGE)

  @property
  def biases(self):
    """(layer op, its bias add, layer scope) of each layer with a bias."""
    return self._biases

  def quantize_average_pools(self):
    """Rounds each average pool of a quantized tensor to its input's grid."""
    # Per-channel models convert to int8, whose pool rounds ties apart from
    # the uint8 one's.
    replacements = tflite_emulation.quantize_average_pools(
        self._graph, self._replacements, self._use_quant,
        int8=self._weights == PER_CHANNEL)
    self._quantized.update(replacements)
    self._replacements.update(t.name for t in replacements.values())

  def _quantize_weights(self, layer_op, scope, folded_multiplier=None):
    """Fake-quantizes a layer's weights with last-value ranges.

    Per-channel ranges cover each output channel's weights: a Conv2D's last
    axis, a depthwise weight [h, w, in, k] reshaped to [h, w, 1, in * k] (its
    output channels, in the order the op outputs them), a MatMul's output
    axis.

    Args:
      layer_op: the (possibly folded) layer op; its second input is the
        weights.
      scope: the name scope of the new ops and range variables.
      folded_multiplier: None, or (training with kept batch norms) the
        per-channel multiplier m that inference folds into these weights.
        Per-channel weights are quantized with their own ranges, and the
        range variables hold those of W * m, |m| times theirs; per-tensor
        ones become quant(W * m) / m (_quantize_folded_weights).
    """
    weights = layer_op.inputs[1]
    if weights.name in self._quantized:
      return
    if self._weights != PER_CHANNEL:
      if folded_multiplier is None:
        self._insert(weights, scope, _LAST_VALUE, narrow_range=True,
                     init_range=_INIT_RANGE, consumers=[layer_op])
        return
      self._quantize_folded_weights(layer_op, scope, folded_multiplier)
      return
    with self._graph.name_scope(scope + '/'):
      transpose = (layer_op.type == 'MatMul' and
                   layer_op.get_attr('transpose_b'))
      channels_last = weights
      if layer_op.type == 'DepthwiseConv2dNative':
        height, width, inputs, multiplier = weights.shape.as_list()
        channels_last = tf.reshape(
            weights, [height, width, 1, inputs * multiplier],
            name='channels_last')
      elif transpose:
        channels_last = tf.transpose(weights, name='channels_last')
      channels = channels_last.shape[-1]
    min_var, max_var = self._range_variables(
        scope, _INIT_RANGE, shape=[channels])
    with self._graph.name_scope(scope + '/'):
      if self._is_training:
        # The range is a statistic of the weights, not a path for their
        # gradients: the straight-through estimator passes gradients to the
        # weights inside their range.
        bound = tf.maximum(tf.stop_gradient(tf.reduce_max(
            tf.abs(channels_last),
            axis=list(range(channels_last.shape.rank - 1)))),
                           _MIN_WEIGHT_BOUND, name='bound')
        saved_bound = bound
        if folded_multiplier is not None:
          saved_bound = tf.maximum(
              bound * tf.stop_gradient(tf.abs(folded_multiplier)),
              _MIN_WEIGHT_BOUND, name='folded_bound')
        with tf.control_dependencies([
            tf1.assign(min_var, -saved_bound, name='AssignMin'),
            tf1.assign(max_var, saved_bound, name='AssignMax')]):
          low, high = tf.negative(bound), tf.identity(bound)
      else:
        low, high = min_var.value(), max_var.value()
      quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(
          channels_last, low, high, num_bits=NUM_BITS, narrow_range=True)
      if self._is_training:
        # Every weight lies inside its channel's range [-max|W|, max|W|],
        # where the fake quant's straight-through gradient is the identity:
        # this says so without its gradient kernel. The forward value is
        # the fake quant's exactly (w and its rounding are within a factor
        # of two, or the rounding is 0, so both float32 operations are
        # exact).
        quantized = tf.add(channels_last,
                           tf.stop_gradient(quantized - channels_last),
                           name='straight_through')
      if layer_op.type == 'DepthwiseConv2dNative':
        quantized = tf.reshape(quantized, weights.shape, name='quantized')
      elif transpose:
        quantized = tf.transpose(quantized, name='quantized')
      if self._use_quant is not None:
        quantized = tf.where(self._use_quant, quantized, weights,
                             name='delayed_quant')
    graph_editing.reroute(weights, quantized, [layer_op])
    self._quantized[weights.name] = quantized
    self._replacements.add(quantized.name)

  def _quantize_folded_weights(self, layer_op, scope, multiplier):
    """Per-tensor fake quant of a layer's weights as inference folds them.

    The layer keeps its batch norm: its weights become quant(W * m) / m,
    so that the batch norm's multiplier m (the inference one, which folding
    will use) turns them back into the quantized folded weights. The range
    is that of the folded weights W * m, as the eval graph quantizes them.
    The straight-through gradient reaches W unscaled; a channel whose
    multiplier is 0 (masked) gets zero weights.

    Args:
      layer_op: the layer op; its second input is the weights.
      scope: the name scope of the new ops and range variables.
      multiplier: the per-output-channel multiplier m.
    """
    weights = layer_op.inputs[1]
    with self._graph.name_scope(scope + '/'):
      multiplier = fold_batch_norms.shaped_for_weights(
          layer_op, tf.stop_gradient(multiplier))
      folded = tf.multiply(weights, multiplier, name='mul_fold')
    self._insert(folded, scope, _LAST_VALUE, narrow_range=True,
                 init_range=_INIT_RANGE, consumers=[])
    with self._graph.name_scope(scope + '/'):
      unfolded = tf.math.divide_no_nan(self._quantized[folded.name],
                                       multiplier, name='unfold')
    graph_editing.reroute(weights, unfolded, [layer_op])
    self._quantized[weights.name] = unfolded
    self._replacements.add(unfolded.name)

  def _insert(self, tensor, scope, updates, narrow_range, init_range,
              consumers=None):
    """Puts a per-tensor fake quant op between `tensor` and its consumers.

    Training graphs update the ranges as contrib.quantize did: weights take
    their last value (_LAST_VALUE: the weights' [min, max] with 0 inside, or
    [-max|W|, max|W|] for symmetric weights), activations an exponential
    moving average of each batch's [min, max] (_MOVING_AVERAGE, with 0
    inside), zero-debiased so that it starts from the data, with its slots
    (`<scope>/<scope>/{min,max}/{biased,local_step}`) saved alongside the
    ranges, so that fine-tuning from a quantized checkpoint carries its
    averages on.

    The model's output (a classifier's logits, which no activation bounds)
    keeps the extremes seen since quantization started (_EXTREMES), as
    post-training calibration takes them: its ranking lives at the top of
    its range, where clipping ties the best classes, and the training
    distortions keep most batches below the logits of undistorted images,
    so an average of batch maxima clips those.

    Args:
      tensor: the float tensor to quantize.
      scope: the name scope of the new ops and range variables.
      updates: how training updates the range: _MOVING_AVERAGE,
        _LAST_VALUE or _EXTREMES.
      narrow_range: quantize to [1, 255] instead of [0, 255].
      init_range: (min, max) initial values of the range variables.
      consumers: the ops to reroute; all consumers of `tensor` when None.
    """
    if tensor.name in self._quantized:
      return
    if consumers is None:
      consumers = tensor.consumers()
    min_var, max_var = self._range_variables(scope, init_range)
    with self._graph.name_scope(scope + '/'):
      if not self._is_training:
        low, high = min_var.value(), max_var.value()
      else:
        if tensor.op.type in _NONNEGATIVE_TYPES:
          # Its minimum is at least 0, so the range's lower end is 0.
          batch_min = tf.constant(0.0, name='BatchMin')
        else:
          batch_min = tf.minimum(tf.reduce_min(tensor), 0.0, name='BatchMin')
        batch_max = tf.maximum(tf.reduce_max(tensor), 0.0, name='BatchMax')
        if updates == _MOVING_AVERAGE:
          with tf1.variable_scope(tf1.VariableScope(reuse=False, name=scope),
                                  auxiliary_name_scope=False):
            low = moving_averages.assign_moving_average(
                min_var, batch_min, EMA_DECAY, zero_debias=True,
                name='AssignMinEma')
            high = moving_averages.assign_moving_average(
                max_var, batch_max, EMA_DECAY, zero_debias=True,
                name='AssignMaxEma')
        elif updates == _EXTREMES:
          low, high = tf.minimum(min_var, batch_min), tf.maximum(
              max_var, batch_max)
          if self._use_quant is not None:
            # Before quantization starts the range follows the data, so the
            # extremes of early training are not kept.
            low = tf.where(self._use_quant, low, batch_min)
            high = tf.where(self._use_quant, high, batch_max)
          low = tf1.assign(min_var, tf.stop_gradient(low),
                           name='AssignMinExtreme')
          high = tf1.assign(max_var, tf.stop_gradient(high),
                            name='AssignMaxExtreme')
        else:
          if self._weights == SYMMETRIC:
            batch_max = tf.maximum(-batch_min, batch_max)
            batch_min = -batch_max
          low = tf1.assign(min_var, tf.stop_gradient(batch_min),
                           name='AssignMinLast')
          high = tf1.assign(max_var, tf.stop_gradient(batch_max),
                            name='AssignMaxLast')
      quantized = tf.quantization.fake_quant_with_min_max_vars(
          tensor, low, high, num_bits=NUM_BITS, narrow_range=narrow_range)
      if self._use_quant is not None:
        quantized = tf.where(self._use_quant, quantized, tensor,
                             name='delayed_quant')
    graph_editing.reroute(tensor, quantized, consumers)
    self._quantized[tensor.name] = quantized
    self._replacements.add(quantized.name)

  def _range_variables(self, scope, init_range, shape=()):
    """Creates the `<scope>/min` and `<scope>/max` range variables."""
    # A VariableScope object is entered as an absolute scope, whatever
    # variable scope the caller is in, so names match across graphs.
    with tf1.variable_scope(tf1.VariableScope(reuse=False, name=scope),
                            auxiliary_name_scope=False):
      return [
          tf1.get_variable(
              name, shape=list(shape), dtype=tf.float32,
              initializer=tf1.constant_initializer(value), trainable=False,
              collections=[tf1.GraphKeys.GLOBAL_VARIABLES,
                           tf1.GraphKeys.MODEL_VARIABLES])
          for name, value in zip(['min', 'max'], init_range)
      ]


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
