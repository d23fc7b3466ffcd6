"""Pointwise convolutions' gradients as matrix products.

A 1x1 convolution with stride 1 is a matrix product: its [batch, height,
width, in] input, as a [batch * height * width, in] matrix, times its
[1, 1, in, out] weights, as an [in, out] matrix. So are its gradients:

  input gradient   dy [b*h*w, out] . W^T [out, in]
  weight gradient  x^T [in, b*h*w] . dy [b*h*w, out]

TensorFlow's CPU Conv2DBackpropInput and Conv2DBackpropFilter do not take
that route for 1x1 kernels, and are slower than MatMul on the same shapes,
most of all where the spatial size is small and the channels many (the
last layers of MobileNet, where most of its multiplies are). The training
graph therefore computes the gradients of its pointwise convolutions with
MatMul; the forward convolution, the variables and everything a checkpoint
holds stay as they are.

  model = build_model(...)
  pointwise_gradients.use_matmul_gradients(graph)  # before tf.gradients
"""

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2

_GRADIENT = 'PointwiseConv2DAsMatMul'


@tf.RegisterGradient(_GRADIENT)
def _pointwise_conv2d_grad(op, output_grad):
  """Conv2D's input and weight gradients, for a 1x1, stride 1 Conv2D."""
  inputs, weights = op.inputs
  channels_in, channels_out = weights.shape.as_list()[2:]
  matrix = tf.reshape(weights, [channels_in, channels_out])
  output_rows = tf.reshape(output_grad, [-1, channels_out])
  input_grad = tf.matmul(output_rows, matrix, transpose_b=True)
  weights_grad = tf.matmul(tf.reshape(inputs, [-1, channels_in]),
                           output_rows, transpose_a=True)
  return (tf.reshape(input_grad, tf.shape(inputs)),
          tf.reshape(weights_grad, tf.shape(weights)))


def is_pointwise(op):
  """Whether `op` is a Conv2D that is a matrix product of its channels.

  Args:
    op: a tf.Operation.

  Returns:
    True for a Conv2D with a static 1x1 kernel, NHWC data, stride 1 and
    dilation 1 (any padding but explicit pads, which 1x1 kernels never need).
  """
  if op.type != 'Conv2D':
    return False
  return (op.inputs[1].shape.rank == 4 and
          op.inputs[1].shape.as_list()[:2] == [1, 1] and
          None not in op.inputs[1].shape.as_list()[2:] and
          op.get_attr('data_format') == b'NHWC' and
          list(op.get_attr('strides')) == [1, 1, 1, 1] and
          list(op.get_attr('dilations')) == [1, 1, 1, 1] and
          op.get_attr('padding') != b'EXPLICIT')


def use_matmul_gradients(graph):
  """Makes tf.gradients differentiate every pointwise Conv2D by MatMuls.

  Call it after the graph's last rewrite of the forward model (quantization,
  fusions) and before its gradients are built.

  Args:
    graph: the tf.Graph holding the model.

  Returns:
    How many convolutions were marked.
  """
  marked = 0
  for op in graph.get_operations():
    if is_pointwise(op):
      # What tf.Graph.gradient_override_map records on an op it creates.
      # pylint: disable-next=protected-access
      op._set_attr('_gradient_op_type',
                   attr_value_pb2.AttrValue(s=_GRADIENT.encode()))
      marked += 1
  return marked
