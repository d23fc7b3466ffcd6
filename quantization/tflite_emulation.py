"""What the eval graph adds so that float TensorFlow computes TFLite's integers.

contrib.quantize's eval graph left these to the converter; ours makes the
frozen eval graph agree with the integer model it converts to, op for op:

* the model input rounded to the grid the converter quantizes it on
  (`quantize_input`);
* each layer's bias rounded to the int32 grid of input scale times weight
  scale (`round_biases`);
* each quantized average pool's mean rounded back to its input's grid, with
  halves rounded up as TFLite's integer pool does (`quantize_average_pools`),
  and the tie-break taken out again for the converter
  (`without_pool_tie_breaks`).
"""

import functools

import numpy as np
import tensorflow as tf

from quantization import graph_editing
from quantization import quant_ops

tf1 = tf.compat.v1

# The quantized models' input convention, Google's released quantized
# MobileNets' and the converter's documented one (its quantized_input_stats):
# uint8 code q stands for (q - INPUT_MEAN) / INPUT_STD, so a uint8 input is
# the pixel itself and the float input (pixel - 128) / 128. Mean = std =
# 127.5, the float models' preprocessing, would give scale 1 / 127.5 but
# zero point 128 (zero points are integers): code p would stand for pixel
# p - 0.5, and the model would answer differently from the released ones.
INPUT_MEAN = 128
INPUT_STD = 128

# Name scope of the add that makes the average pool's halves round up, under
# the pool's own act_quant scope (an activation range's name, as the pool's
# output is an activation TFLite quantizes).
_HALF_UP = 'half_up'


def quantize_input(images):
  """Fake-quantizes a model input to the uint8 grid TFLite will feed it.

  The converter quantizes the model input from its mean and std statistics
  (`INPUT_MEAN`, `INPUT_STD`): scale 1 / 128, zero point 128, the grid of a
  fake quant over [-1, 127/128], which needs no nudging. Applied before the
  model is built and rewritten, it lets the eval graph (and training) see
  the input values the uint8 model sees, and round the first layer's bias
  like every other layer's (see `round_biases`). Of images in [-1, 1] only
  the values above 127/128 change by more than half a step: they become
  127/128.

  Args:
    images: the float model input, in [-1, 1].

  Returns:
    `images` rounded to the uint8 input grid.
  """
  low, high = input_range()
  return tf.quantization.fake_quant_with_min_max_args(
      images, min=low, max=high, num_bits=quant_ops.NUM_BITS,
      narrow_range=False, name='input_quant')


def input_range():
  """(min, max) of the uint8 model input's real values: [-1, 127/128]."""
  return (-INPUT_MEAN / INPUT_STD,
          (2**quant_ops.NUM_BITS - 1 - INPUT_MEAN) / INPUT_STD)


def round_biases(graph, biases):
  """Rounds each layer's bias to the int32 grid TFLite stores it on.

  A quantized TFLite layer adds its bias as int32 in units of input scale
  times weight scale. Left in float, the bias differs from that by up to
  half a unit, enough to tip an activation near a rounding boundary to
  the next 8-bit step; the flips then spread through the layers that
  follow. With the bias rounded the same way the eval graph computes what
  the integer model does. A layer whose input is not quantized (a model
  input without `quantize_input`) keeps its float bias. Run after every
  fake quant is in place.

  Args:
    graph: the rewritten tf.Graph, the default graph.
    biases: (layer op, its bias add op, layer scope) for each layer.
  """
  for layer_op, bias_add, context in biases:
    input_quant = graph_editing.fake_quant_of(layer_op.inputs[0])
    weights_quant = graph_editing.fake_quant_of(layer_op.inputs[1])
    if input_quant is None or weights_quant is None:
      continue
    index, bias = [(i, t) for i, t in enumerate(bias_add.inputs)
                   if t.shape.rank == 1][-1]
    with graph.name_scope(context + '/bias_quant/'):
      scale = tf.multiply(graph_editing.fake_quant_scale(input_quant),
                          graph_editing.fake_quant_scale(weights_quant),
                          name='scale')
      rounded = tf.multiply(tf.round(bias / scale), scale, name='rounded')
    graph_editing.update_input(bias_add, index, rounded)


def quantize_average_pools(graph, quantized_names, use_quant=None,
                           int8=False):
  """Rounds each average pool of a quantized tensor to its input's grid.

  A quantized average pool (TFLite's AVERAGE_POOL_2D, or the MEAN it becomes)
  must output on its input's scale and zero point, so the mean of values on
  that grid is rounded back to it. A fake quant with the input's own range,
  and no range variables of its own, makes the TF graph compute the same
  thing.

  TFLite's uint8 pool rounds the mean of n codes half up, in integers; its
  int8 pool rounds it half away from zero: up where the sum of the int8
  codes is positive, down elsewhere. Over an even window the mean often
  lies exactly half way between two steps, and in float it may come out a
  hair to either side. A quarter of 1/n of a step (the smallest distance of
  any other mean from a half) is added first, or for int8 taken away where
  the mean code is not positive, so that halves round as TFLite's do and
  nothing else moves.

  Args:
    graph: the rewritten tf.Graph, the default graph.
    quantized_names: names of the quantized tensors; a pool of one of them
      is rounded.
    use_quant: a boolean tensor switching quantization on (quant_delay), or
      None for always.
    int8: round ties as the int8 pool does, rather than the uint8 one.

  Returns:
    {pool output name: its rounded replacement}.
  """
  replacements = {}
  for op in graph.get_operations():
    if op.type != 'AvgPool' or op.inputs[0].name not in quantized_names:
      continue
    fake_quant = graph_editing.fake_quant_of(op.inputs[0])
    if fake_quant is None:
      continue
    output = op.outputs[0]
    consumers = output.consumers()
    with graph.name_scope(op.name + '/' + quant_ops.ACT_QUANT + '/'):
      # A bfloat16 pool (mixed bfloat16 training) is rounded in float32.
      quantized = graph_editing.in_float32(output, functools.partial(
          _rounded_mean, fake_quant=fake_quant,
          window=np.prod(op.get_attr('ksize')), use_quant=use_quant,
          int8=int8))
    graph_editing.reroute(output, quantized, consumers)
    replacements[output.name] = quantized
  return replacements


def _rounded_mean(mean, fake_quant, window, use_quant, int8):
  """An average pool's float32 mean rounded to its input's grid.

  Args:
    mean: the pool's output, float32.
    fake_quant: the fake quant op of the pool's input.
    window: how many values each mean averages.
    use_quant: as for quantize_average_pools.
    int8: as for quantize_average_pools.

  Returns:
    `mean` rounded as TFLite's integer pool rounds it.
  """
  scale = graph_editing.fake_quant_scale(fake_quant)
  tie_break = scale / (4 * window)
  if int8:
    # The int8 code of the mean: x / s plus the uint8 zero point (the fake
    # quant's, nudged onto the grid) minus 128.
    code = mean / scale + tf.round(-fake_quant.inputs[1] / scale) - 128
    tie_break = tf.where(code > 0, tie_break, -tie_break, name='tie_break')
  half_up = tf.add(mean, tie_break, name=_HALF_UP)
  quantized = tf.quantization.fake_quant_with_min_max_vars(
      half_up, fake_quant.inputs[1], fake_quant.inputs[2],
      num_bits=quant_ops.NUM_BITS, narrow_range=False)
  if use_quant is not None:
    quantized = tf.where(use_quant, quantized, mean, name='delayed_quant')
  return quantized


def without_pool_tie_breaks(graph_def):
  """A copy of a frozen eval GraphDef for the TFLite converter.

  The eval graph adds a fraction of a step to each quantized average pool's
  mean so that float TF rounds halves up, as TFLite's integer pool does by
  itself (see `quantize_average_pools`). The converter would keep that add as
  an ADD op of its own; this copy reads the pool directly.

  Args:
    graph_def: a GraphDef of a graph rewritten by `create_eval_graph`.

  Returns:
    The GraphDef without the tie-break adds (a copy).
  """
  suffix = '/%s/%s' % (quant_ops.ACT_QUANT, _HALF_UP)
  pools = {node.name: node.input[0] for node in graph_def.node
           if node.name.endswith(suffix)}
  stripped = tf1.GraphDef()
  stripped.CopyFrom(graph_def)
  del stripped.node[:]
  for node in graph_def.node:
    if node.name in pools:
      continue
    copy = stripped.node.add()
    copy.CopyFrom(node)
    copy.input[:] = [pools.get(name, name) for name in node.input]
  return stripped
