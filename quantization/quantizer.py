"""Inserts fake quantization into a graph, layer by layer.

The counterpart of contrib.quantize's `quantize.py`: given a layer (found
and, where it has a batch norm, folded by the `quantize` rewrite), it finds
what follows it (a bias add, a residual Add, a ReLU) and puts a fake quant
(`quant_ops`) on its weights and on its output activation, rerouting the
consumers to read the quantized tensors. Adds of two quantized tensors and
average pools of a quantized tensor are quantized after all layers.
"""

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from quantization import fold_batch_norms
from quantization import graph_editing
from quantization import quant_ops
from quantization import tflite_emulation

tf1 = tf.compat.v1


class Quantizer(object):
  """Inserts fake quantization ops into one graph."""

  def __init__(self, graph, is_training, quant_delay, per_channel_weights,
               symmetric_weights):
    """Creates a quantizer.

    Args:
      graph: the tf.Graph to rewrite; must be the default graph while used.
      is_training: update ranges from the data (training) or only read them
        (eval).
      quant_delay: global step before which quantization is bypassed.
      per_channel_weights: one weight range per output channel, symmetric
        about zero; otherwise one per tensor.
      symmetric_weights: per-tensor weight ranges symmetric about zero rather
        than the weights' own [min, max].
    """
    self._graph = graph
    self._per_channel_weights = per_channel_weights
    self._symmetric_weights = symmetric_weights
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
        its output range keeps the extremes seen (see
        quant_ops.fake_quant).
    """
    self._quantize_weights(layer_op, context + '/' + quant_ops.WEIGHTS_QUANT,
                           folded_multiplier)
    if output_is_activation:
      self._insert(output, context + '/' + quant_ops.ACT_QUANT,
                   quant_ops.MOVING_AVERAGE, narrow_range=False,
                   init_range=quant_ops.INIT_RELU_RANGE)
      return

    output = graph_editing.skip_identities(output)
    if output.op.type == 'BiasAdd':  # a folded batch norm's offset
      bias_add = output.op
    else:
      bias_add = graph_editing.sole_consumer(
          output, ['BiasAdd'] + list(graph_editing.ADD_TYPES))
      if bias_add is not None and (bias_add.type == 'BiasAdd' or any(
          t.shape.rank == 1 for t in bias_add.inputs)):
        output = graph_editing.skip_identities(bias_add.outputs[0])
      else:
        bias_add = None
    if bias_add is not None:
      self._biases.append((layer_op, bias_add, context))

    bypass = graph_editing.sole_consumer(output, graph_editing.ADD_TYPES)
    if bypass is not None and all(
        t.shape.rank == output.shape.rank for t in bypass.inputs):
      self._insert(output, context + '/' + quant_ops.CONV_QUANT,
                   quant_ops.MOVING_AVERAGE, narrow_range=False,
                   init_range=quant_ops.INIT_RANGE)
      output = graph_editing.skip_identities(bypass.outputs[0])

    activation = graph_editing.sole_consumer(output,
                                             graph_editing.ACTIVATION_TYPES)
    updates = quant_ops.MOVING_AVERAGE
    if activation is None:
      init_range = quant_ops.INIT_RANGE
      if is_model_output:
        # Every batch's range holds 0, so the extremes start from the data.
        updates, init_range = quant_ops.EXTREMES, (0.0, 0.0)
    else:
      output = activation.outputs[0]
      init_range = quant_ops.INIT_RELU_RANGE
    self._insert(output, context + '/' + quant_ops.ACT_QUANT, updates,
                 narrow_range=False, init_range=init_range)

  def quantize_residual_adds(self):
    """Quantizes the output of each Add of two quantized tensors.

    An Add whose output is already quantized, or feeds a quantized
    activation, is left alone.
    """
    for op in self._graph.get_operations():
      if op.type not in graph_editing.ADD_TYPES or not all(
          t.name in self._replacements for t in op.inputs):
        continue
      output = graph_editing.skip_identities(op.outputs[0])
      activation = graph_editing.sole_consumer(output,
                                             graph_editing.ACTIVATION_TYPES)
      if (output.name in self._quantized or
          (activation is not None and
           activation.outputs[0].name in self._quantized)):
        continue
      self._insert(output, op.name + '/' + quant_ops.ADD_QUANT,
                   quant_ops.MOVING_AVERAGE, narrow_range=False,
                   init_range=quant_ops.INIT_RANGE)

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
        int8=self._per_channel_weights)
    self._quantized.update(replacements)
    self._replacements.update(t.name for t in replacements.values())

  def _quantize_weights(self, layer_op, scope, folded_multiplier=None):
    """Fake-quantizes a layer's weights with last-value ranges.

    Args:
      layer_op: the (possibly folded) layer op; its second input is the
        weights.
      scope: the name scope of the new ops and range variables.
      folded_multiplier: None, or (training with kept batch norms) the
        per-channel multiplier m that inference folds into these weights.
        Per-channel weights are quantized with their own ranges, and the
        range variables hold those of W * m
        (quant_ops.per_channel_weight_fake_quant); per-tensor ones become
        quant(W * m) / m (_quantize_folded_weights).
    """
    weights = layer_op.inputs[1]
    if weights.name in self._quantized:
      return
    if self._per_channel_weights:
      quantized = quant_ops.per_channel_weight_fake_quant(
          layer_op, scope, self._is_training, folded_multiplier,
          self._use_quant)
      self._record(weights, quantized, [layer_op])
    elif folded_multiplier is None:
      self._insert(weights, scope, quant_ops.LAST_VALUE, narrow_range=True,
                   init_range=quant_ops.INIT_RANGE, consumers=[layer_op])
    else:
      self._quantize_folded_weights(layer_op, scope, folded_multiplier)

  def _quantize_folded_weights(self, layer_op, scope, multiplier):
    """Per-tensor fake quant of a layer's weights as inference folds them.

    The layer keeps its batch norm: its weights become quant(W * m) / m,
    so that the batch norm's multiplier m (the inference one, which folding
    will use) turns them back into the quantized folded weights. The range
    is that of the folded weights W * m, as the eval graph quantizes them.
    The straight-through gradient reaches W unscaled; a channel whose
    multiplier is 0 (masked) gets zero weights.

    A bfloat16 copy of float32 weights (mixed bfloat16 training) is folded,
    quantized and unfolded in float32, from the float32 weights and the
    float32 multiplier, then cast to bfloat16 (graph_editing.in_float32).

    Args:
      layer_op: the layer op; its second input is the weights.
      scope: the name scope of the new ops and range variables.
      multiplier: the per-output-channel multiplier m.
    """
    with self._graph.name_scope(scope + '/'):
      multiplier = fold_batch_norms.shaped_for_weights(
          layer_op, tf.stop_gradient(multiplier))

    def quantize(weights):
      with self._graph.name_scope(scope + '/'):
        folded = tf.multiply(weights, multiplier, name='mul_fold')
      self._insert(folded, scope, quant_ops.LAST_VALUE, narrow_range=True,
                   init_range=quant_ops.INIT_RANGE, consumers=[])
      with self._graph.name_scope(scope + '/'):
        return tf.math.divide_no_nan(self._quantized[folded.name],
                                     multiplier, name='unfold')

    weights = layer_op.inputs[1]
    self._record(weights, graph_editing.in_float32(weights, quantize),
                 [layer_op])

  def _insert(self, tensor, scope, updates, narrow_range, init_range,
              consumers=None):
    """Puts a per-tensor fake quant op between `tensor` and its consumers.

    Args:
      tensor: the float tensor to quantize; nothing changes if it is
        quantized already.
      scope: the name scope of the new ops and range variables.
      updates: how training updates the range (quant_ops.fake_quant).
      narrow_range: quantize to [1, 255] instead of [0, 255].
      init_range: (min, max) initial values of the range variables.
      consumers: the ops to reroute; all consumers of `tensor` when None.
    """
    if tensor.name in self._quantized:
      return
    if consumers is None:
      consumers = tensor.consumers()
    quantized = quant_ops.fake_quant(
        tensor, scope, updates, narrow_range, init_range, self._is_training,
        symmetric=self._symmetric_weights, use_quant=self._use_quant)
    self._record(tensor, quantized, consumers)

  def _record(self, tensor, quantized, consumers):
    """Makes `consumers` read `quantized` instead of `tensor`, and notes it."""
    graph_editing.reroute(tensor, quantized, consumers)
    self._quantized[tensor.name] = quantized
    self._replacements.add(quantized.name)
