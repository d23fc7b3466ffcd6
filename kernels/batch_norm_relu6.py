"""Batch norm and ReLU6 as one op in training graphs, on CPU.

Every MobileNet V1 body layer trains through FusedBatchNormV3 then Relu6, and
back through Relu6Grad then FusedBatchNormGradV3: four memory-bound passes
over the activations where two fused kernels (batch_norm_relu6_ops.cc) stream
them fewer times. `fuse_batch_norm_relu6` swaps the pairs in a built graph
for the fused op, before its gradients are taken. The variables, their
moving-average updates and checkpoints are untouched, so a model trained this
way evaluates, exports and fine-tunes exactly as one trained without.
Activations may be float32 or, in mixed-precision training, bfloat16 (scale,
offset and the statistics stay float32 either way, as in FusedBatchNormV3).
Quantization-aware training also quantizes each fused op's output, with a
range that follows the batch's maximum; `fuse_fake_quant` folds that fake
quant and maximum into the kernels too, bit for bit, in float32 layers (in
mixed bfloat16 the fake quant stays a float32 op on a cast of the output).

  logits = build_model(images, is_training=True)
  if batch_norm_relu6.unavailable_reason() is None:
    graph = tf.compat.v1.get_default_graph()
    batch_norm_relu6.fuse_batch_norm_relu6(graph)
    # With quantization-aware training, after the quantization rewrite:
    batch_norm_relu6.fuse_fake_quant(graph)
  ... loss, optimizer.minimize(loss) ...

The kernels are AVX2 + FMA code, built only for x86-64 (BUILD): on other
CPUs, or where the library was left out, `unavailable_reason` says why and
the graph keeps TensorFlow's ops.
"""

import os
import platform

import numpy as np
import tensorflow as tf

from quantization import graph_editing
from runtime import tf_environment

_LIBRARY = 'batch_norm_relu6_ops.so'
_HERE = os.path.dirname(os.path.abspath(__file__))
# Under Bazel the library sits beside this file in the runfiles; in a source
# checkout (benchmarks) it is in bazel-bin after `bazel build`.
_SEARCH_PATH = (os.path.join(_HERE, _LIBRARY),
                os.path.join(os.path.dirname(_HERE), 'bazel-bin', 'kernels',
                             _LIBRARY))

# What the library is compiled for (BUILD's copts), as Linux names them in
# /proc/cpuinfo's flags.
REQUIRED_CPU_FEATURES = ('avx', 'avx2', 'fma')
# If set, the CPU feature flags to assume (space-separated) instead of the
# CPU's own: lets tests show what happens on a CPU without AVX2.
CPU_FEATURES_ENV = 'BATCH_NORM_RELU6_CPU_FEATURES'

_ops = None


class LibraryNotFoundError(RuntimeError):
  """The compiled kernels are missing; the message says how to build them."""


class UnsupportedCpuError(RuntimeError):
  """This CPU cannot run the compiled kernels."""


def cpu_features():
  """The CPU's feature flags, as Linux lists them in /proc/cpuinfo.

  Returns:
    A set of lower-case names ('avx2', 'fma', ...): x86's `flags` line or
    Arm's `Features`, or the words of $BATCH_NORM_RELU6_CPU_FEATURES if it is
    set; empty where /proc/cpuinfo is missing.
  """
  override = os.environ.get(CPU_FEATURES_ENV)
  if override is not None:
    return set(override.lower().split())
  try:
    with open('/proc/cpuinfo') as cpuinfo:
      for line in cpuinfo:
        name, _, value = line.partition(':')
        if name.strip() in ('flags', 'Features'):
          return set(value.lower().split())
  except OSError:
    pass
  return set()


def _library_path():
  for path in _SEARCH_PATH:
    if os.path.exists(path):
      return path
  return None


def _cpu_problem():
  """What keeps this CPU from running the kernels, or None."""
  if not tf_environment.is_x86_64():
    return ('they are x86-64 code and this CPU is %s' %
            platform.machine().lower())
  missing = [f for f in REQUIRED_CPU_FEATURES if f not in cpu_features()]
  if missing:
    return 'this CPU lacks %s' % ' and '.join(f.upper() for f in missing)
  return None


def unavailable_reason():
  """Why the fused kernels cannot run in this process, or None if they can.

  Returns:
    None, or a phrase naming what is missing: an x86-64 CPU, one of
    REQUIRED_CPU_FEATURES, or the built library.
  """
  problem = _cpu_problem()
  if problem is None and _library_path() is None:
    problem = '%s is not built (bazel build //kernels:%s)' % (_LIBRARY, _LIBRARY)
  return problem


def load_ops():
  """Loads the fused kernels once and returns their Python wrappers.

  Returns:
    The module tf.load_op_library gives: fused_batch_norm_relu6,
    fused_batch_norm_relu6_grad, batch_norm_relu6_moments,
    batch_norm_relu6_fake_quant and batch_norm_relu6_fake_quant_grad.

  Raises:
    UnsupportedCpuError: if this CPU cannot run them.
    LibraryNotFoundError: if the library was not built.
  """
  global _ops
  if _ops is None:
    problem = _cpu_problem()
    if problem is not None:
      raise UnsupportedCpuError('the fused batch norm + ReLU6 kernels cannot '
                                'run here: %s' % problem)
    path = _library_path()
    if path is None:
      raise LibraryNotFoundError(
          '%s is not built; run `bazel build //kernels:%s`' % (_LIBRARY, _LIBRARY))
    _ops = tf.load_op_library(path)
  return _ops


@tf.RegisterGradient(graph_editing.BATCH_NORM_RELU6_TYPE)
def _fused_batch_norm_relu6_grad(op, y_backprop, *unused_statistics_grads):
  # The batch statistics only feed the moving averages, which have no
  # gradient, so their incoming gradients are None or zero.
  x, scale, offset = op.inputs
  return load_ops().fused_batch_norm_relu6_grad(
      y_backprop, x, scale, offset, batch_mean=op.outputs[1],
      inverse_std=op.outputs[3])


@tf.RegisterGradient('BatchNormRelu6FakeQuant')
def _batch_norm_relu6_fake_quant_grad(op, y_backprop):
  # The kernel differentiates through the batch statistics itself (they are
  # x's, from BatchNormRelu6Moments), so they get no gradient of their own;
  # nor does the range, which nothing trains.
  x, scale, offset, batch_mean, inverse_std, low, high = op.inputs
  return list(load_ops().batch_norm_relu6_fake_quant_grad(
      y_backprop, x, scale, offset, batch_mean, inverse_std, low, high,
      num_bits=op.get_attr('num_bits'),
      narrow_range=op.get_attr('narrow_range'))) + [None] * 4


tf.no_gradient('BatchNormRelu6Moments')


def _fusable_batch_norm(relu6):
  """The training-mode FusedBatchNormV3 only `relu6` reads, or None."""
  batch_norm = relu6.inputs[0].op
  if batch_norm.type != 'FusedBatchNormV3':
    return None
  if not (batch_norm.get_attr('is_training') and
          batch_norm.get_attr('data_format') == b'NHWC' and
          batch_norm.get_attr('exponential_avg_factor') == 1.0 and
          batch_norm.inputs[0].dtype in (tf.float32, tf.bfloat16) and
          batch_norm.inputs[1].dtype == tf.float32 and
          len(batch_norm.outputs[0].consumers()) == 1):
    return None
  return batch_norm


def fuse_batch_norm_relu6(graph):
  """Replaces training batch norms followed by ReLU6 with the fused op.

  Call it after building the model and before taking gradients. Consumers of
  the ReLU6 output and of the batch mean and variance (the moving-average
  updates) are rerouted to the fused op; the replaced ops are left without
  consumers, so they never run.

  Args:
    graph: a tf.Graph holding the model.

  Returns:
    How many batch norm + ReLU6 pairs were fused.

  Raises:
    UnsupportedCpuError: if this CPU cannot run the fused kernels.
    LibraryNotFoundError: if they were not built.
  """
  ops = load_ops()
  fused = 0
  for relu6 in [op for op in graph.get_operations() if op.type == 'Relu6']:
    batch_norm = _fusable_batch_norm(relu6)
    if batch_norm is None:
      continue
    x, scale, offset = batch_norm.inputs[:3]
    with graph.as_default(), graph.name_scope(batch_norm.name + '_Relu6/'):
      # The op's T follows x: float32, or bfloat16 in mixed precision.
      y, mean, variance, _ = ops.fused_batch_norm_relu6(
          x, scale, offset, epsilon=batch_norm.get_attr('epsilon'))
    for old, new in ((relu6.outputs[0], y), (batch_norm.outputs[1], mean),
                     (batch_norm.outputs[2], variance)):
      graph_editing.reroute(old, new, old.consumers())
    fused += 1
  return fused


def _reduces_whole(op, tensor):
  """Whether `op` is a reduce_max of all of `tensor` to a scalar."""
  if (op.type != 'Max' or op.inputs[0] is not tensor or
      op.get_attr('keep_dims')):
    return False
  axes = tf.get_static_value(op.inputs[1])
  rank = tensor.shape.rank
  return (axes is not None and rank is not None and
          sorted(np.reshape(axes, [-1]) % rank) == list(range(rank)))


def fuse_fake_quant(graph):
  """Folds the fake quant after each fused batch norm + ReLU6 into it.

  Quantization-aware training's rewrite (quantize.py) quantizes the output y
  of every FusedBatchNormRelu6 with FakeQuantWithMinMaxVars, over a range
  that moves with the batch's maximum of y. Where y feeds only that fake
  quant and whole-tensor maxima, the pair becomes BatchNormRelu6Moments
  (the statistics, and y's maximum from each channel's extremes) and
  BatchNormRelu6FakeQuant (the quantized y, straight from x): the same
  values, bit for bit, without storing y or reading it back. The kernels
  are float32: bfloat16 layers (mixed precision), whose fake quant reads a
  float32 cast of y, are left as they are. Call it after the quantization
  rewrite and before taking gradients.

  Args:
    graph: a tf.Graph after fuse_batch_norm_relu6 and the quantization
      rewrite.

  Returns:
    How many fake quants were folded.

  Raises:
    UnsupportedCpuError: if this CPU cannot run the fused kernels.
    LibraryNotFoundError: if they were not built.
  """
  ops = load_ops()
  fused = 0
  for batch_norm in [op for op in graph.get_operations()
                     if op.type == graph_editing.BATCH_NORM_RELU6_TYPE]:
    # The fake quant kernels are float32; in mixed bfloat16 the fake quant
    # reads a float32 cast of the bfloat16 y, and stays as it is.
    if batch_norm.inputs[0].dtype != tf.float32:
      continue
    y = batch_norm.outputs[0]
    fake_quants = [op for op in y.consumers()
                   if op.type == 'FakeQuantWithMinMaxVars' and
                   op.inputs[0] is y]
    maxima = [op for op in y.consumers() if _reduces_whole(op, y)]
    if (len(fake_quants) != 1 or
        len(y.consumers()) != len(fake_quants) + len(maxima)):
      continue
    fake_quant = fake_quants[0]
    x, scale, offset = batch_norm.inputs
    with graph.as_default(), graph.name_scope(batch_norm.name +
                                              '_FakeQuant/'):
      batch_mean, batch_variance, inverse_std, y_max = (
          ops.batch_norm_relu6_moments(
              x, scale, offset, epsilon=batch_norm.get_attr('epsilon')))
      for maximum in maxima:
        graph_editing.reroute(maximum.outputs[0], y_max,
                              maximum.outputs[0].consumers())
      quantized = ops.batch_norm_relu6_fake_quant(
          x, scale, offset, batch_mean, inverse_std, fake_quant.inputs[1],
          fake_quant.inputs[2], num_bits=fake_quant.get_attr('num_bits'),
          narrow_range=fake_quant.get_attr('narrow_range'))
    for old, new in ((fake_quant.outputs[0], quantized),
                     (batch_norm.outputs[1], batch_mean),
                     (batch_norm.outputs[2], batch_variance)):
      graph_editing.reroute(old, new, old.consumers())
    fused += 1
  return fused
