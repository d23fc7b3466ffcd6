"""Builds a model in mixed bfloat16: bfloat16 compute, float32 state.

The model takes bfloat16 activations: the convolutions, the depthwise
convolutions and the logits layer multiply bfloat16 values (oneDNN
accumulates their products in float32), and batch norm + ReLU6 read and
write bfloat16. Everything that accumulates over steps or over the batch
stays float32: the variables (each layer reads a bfloat16 copy), the
optimizer's slots, batch norm's statistics and moving averages, weight
decay (mobilenet_v1_arg_scope takes it from the float32 weights), the
logits' softmax and the loss. Checkpoints are therefore the float32
checkpoints a float32 run writes. Quantization-aware training's rewrite
sees through the bfloat16 copies: it quantizes the float32 variables, and
the bfloat16 activations, in float32 (quantization/graph_editing.in_float32).

  with mixed_precision.float32_variables(plan.precision):
    logits = build_model(mixed_precision.cast_images(images, plan.precision))
  logits = tf.cast(logits, tf.float32)
"""

import contextlib

import tensorflow as tf

from training import precision

tf1 = tf.compat.v1

# Batch norm's variables: fused batch norm takes them in float32 whatever
# the activations' type.
_BATCH_NORM_VARIABLES = ('gamma', 'beta', 'moving_mean', 'moving_variance')


def compute_dtype(precision_name):
  """The dtype of the model's activations in a precision of precision.py."""
  return (tf.bfloat16 if precision_name == precision.MIXED_BFLOAT16
          else tf.float32)


def cast_images(images, precision_name):
  """The model's input in a precision: images cast to its compute dtype."""
  return tf.cast(images, compute_dtype(precision_name))


def _float32_variable_getter(getter, name, *args, dtype=None, **kwargs):
  """Creates every variable in float32; layers asking for bfloat16 get a copy.

  A custom getter of tf.compat.v1.variable_scope: the variable (and so its
  checkpoint entry, its optimizer slots and its updates) is float32, and the
  layer that asked for a bfloat16 variable reads it through a cast.
  """
  if dtype != tf.bfloat16:
    return getter(name, *args, dtype=dtype, **kwargs)
  variable = getter(name, *args, dtype=tf.float32, **kwargs)
  if name.endswith(_BATCH_NORM_VARIABLES):
    return variable
  return tf.cast(variable, tf.bfloat16)


@contextlib.contextmanager
def float32_variables(precision_name):
  """A scope whose layers read float32 variables in their own dtype.

  Build the model in it from `cast_images`: in mixed bfloat16 its layers
  ask for bfloat16 variables and get bfloat16 copies of float32 ones, named
  as in float32. In float32 the scope changes nothing.

  Args:
    precision_name: precision.FLOAT32 or precision.MIXED_BFLOAT16.

  Yields:
    Nothing; the model is built inside.
  """
  if precision_name != precision.MIXED_BFLOAT16:
    yield
    return
  # Entering the root scope again keeps every name as it was.
  with tf1.variable_scope(tf1.get_variable_scope(),
                          custom_getter=_float32_variable_getter):
    yield
