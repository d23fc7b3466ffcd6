"""What mixed bfloat16 training promises, against float32 and NumPy."""

import os

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

from kernels import batch_norm_relu6
from quantization import graph_editing
from quantization import quantize
from testing import rounding_bounds
from testing import test_data
from training import config as config_lib
from training import mixed_precision
from training import precision
from training import train_graph

test_data.use_float32_math()

tf1 = tf.compat.v1

_FLOAT32_U = rounding_bounds.FLOAT32_U
_BFLOAT16_U = rounding_bounds.BFLOAT16_U
# The ops whose arithmetic mixed precision moves to bfloat16 (pointwise
# convolutions' gradients are MatMuls: training.pointwise_gradients).
_CONVOLUTION_TYPES = ('Conv2D', 'Conv2DBackpropInput', 'Conv2DBackpropFilter',
                      'DepthwiseConv2dNative',
                      'DepthwiseConv2dNativeBackpropInput',
                      'DepthwiseConv2dNativeBackpropFilter', 'MatMul')


def _bfloat16_values(array):
  """float32 `array` rounded to the nearest bfloat16, as float64.

  In NumPy, on float32's bits (bfloat16 is their upper half): round to
  nearest, ties to even.
  """
  bits = np.asarray(array, np.float32).view(np.uint32).astype(np.uint64)
  bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
  return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def _bfloat16_layer_bound(xb, wb):
  """A bfloat16 layer's exact output on bfloat16 inputs, and its error bound.

  The product of two bfloat16 values is exact in float32; their float32 sum
  over K terms, in any order, adds gamma_{K-1} of the terms' magnitude
  (Higham, Accuracy and Stability, 3.1); the sum is then rounded to
  bfloat16, u of its size.

  Args:
    xb: the layer's input, [pixels, K] bfloat16 values as float64.
    wb: its weights, [K, channels] bfloat16 values as float64.

  Returns:
    (exact output, bound on |output - exact output|), both
    [pixels, channels].
  """
  exact = xb @ wb
  summed = rounding_bounds.gamma(xb.shape[1] - 1) * (np.abs(xb) @ np.abs(wb))
  return exact, summed * (1 + _BFLOAT16_U) + _BFLOAT16_U * np.abs(exact)


def _fake_quant(values, low, high, narrow_range):
  """TensorFlow's 8-bit fake quant of float32 `values`, in NumPy.

  The range is nudged in float32 as TensorFlow's kernels do (Nudge in
  fake_quant_ops_functor.h): scale = (high - low) / (255 - quant_min), with
  quant_min 1 for a narrow range, else 0; zero point quant_min - low / scale
  rounded half up into [quant_min, 255]; nudged range (quant_min - zero
  point) * scale to (255 - zero point) * scale. Each value, clamped to the
  nudged range, goes to its nearest step k * scale, with k found in float64
  and k * scale (exact in float64: k has 8 bits, scale 24) rounded once to
  float32, as the kernel's one product is.

  Args:
    values: a float32 array.
    low: the float32 range's low end: a scalar, or one per channel (the
      last axis of `values`).
    high: its high end, likewise.
    narrow_range: quantize to [1, 255] instead of [0, 255].

  Returns:
    (the quantized float32 values, the nudged low end, the nudged high end).
  """
  low, high = np.float32(low), np.float32(high)
  quant_min, quant_max = np.float32(1 if narrow_range else 0), np.float32(255)
  scale = (high - low) / (quant_max - quant_min)
  zero_point = np.clip(np.floor(np.float64(quant_min - low / scale) + 0.5),
                       quant_min, quant_max).astype(np.float32)
  nudged_low = (quant_min - zero_point) * scale
  nudged_high = (quant_max - zero_point) * scale
  clamped = np.clip(values, nudged_low, nudged_high).astype(np.float64)
  steps = (np.floor((clamped - nudged_low) / np.float64(scale) + 0.5) -
           (zero_point - quant_min))
  return ((steps * np.float64(scale)).astype(np.float32), nudged_low,
          nudged_high)


def _weight_range(weights, scheme):
  """The range a training step gives float32 `weights` under `scheme`.

  Args:
    weights: [1, 1, in, out] float32 convolution weights.
    scheme: one of quantize.WEIGHT_SCHEMES.

  Returns:
    [low, high]: per output channel, symmetric (per_channel); symmetric
    (symmetric); the weights' own with 0 inside (asymmetric).
  """
  if scheme == quantize.ASYMMETRIC:
    return [min(weights.min(), 0), max(weights.max(), 0)]
  bound = np.abs(weights).max(
      axis=(0, 1, 2) if scheme == quantize.PER_CHANNEL else None)
  return [-bound, bound]


def _plan(precision_name, **changes):
  """The trainer's plan for a small model from scratch in a precision.

  Args:
    precision_name: precision.FLOAT32 or precision.MIXED_BFLOAT16.
    **changes: other TrainConfig fields.
  """
  return config_lib.resolve(
      config_lib.TrainConfig(
          dataset_dir='/data', checkpoint_dir='/run', num_classes=5,
          image_size=32, depth_multiplier=0.25, batch_size=4,
          num_train_examples=100, random_seed=0, precision=precision_name,
          **changes),
      count_train_examples=None, batch_norms_restored=True, cpu_features=())


def _training_graph(precision_name, **changes):
  """The training step of `_plan`, built on a fixed batch in a new graph."""
  rng = np.random.RandomState(0)
  graph = tf.Graph()
  with graph.as_default():
    tf1.set_random_seed(0)
    images = tf.constant(rng.uniform(-1, 1, [4, 32, 32, 3]), tf.float32)
    labels = tf.constant(rng.randint(0, 5, [4]), tf.int64)
    global_step = tf1.train.get_or_create_global_step()
    step = train_graph.build_train_op(images, labels, global_step,
                                      _plan(precision_name, **changes))
  return graph, step


def _variables(graph):
  """{name: (dtype, shape)} of a graph's global variables."""
  return {v.op.name: (v.dtype.base_dtype, v.shape.as_list())
          for v in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)}


def _checkpoint_entries(path):
  """{name: (dtype, shape)} of a checkpoint's entries."""
  reader = tf1.train.NewCheckpointReader(path)
  shapes = reader.get_variable_to_shape_map()
  return {name: (dtype, shapes[name])
          for name, dtype in reader.get_variable_to_dtype_map().items()}


def _bfloat16_1x1_layer(images, w):
  """A 1x1 convolution of float32 `images` in mixed bfloat16, weights `w`.

  Returns:
    Its bfloat16 output; its float32 variable `Conv/weights` is in the graph.
  """
  with mixed_precision.float32_variables(precision.MIXED_BFLOAT16):
    return slim.conv2d(
        mixed_precision.cast_images(images, precision.MIXED_BFLOAT16),
        w.shape[-1], [1, 1], activation_fn=None, normalizer_fn=None,
        biases_initializer=None, scope='Conv',
        weights_initializer=tf1.constant_initializer(w))


class ConvolutionTest(tf.test.TestCase):
  """One layer as mixed precision builds it, against float64 NumPy."""

  def test_convolution_rounds_its_inputs_and_outputs_to_bfloat16(self):
    rng = np.random.RandomState(0)
    x = rng.normal(size=[2, 4, 4, 32]).astype(np.float32)
    w = rng.normal(size=[1, 1, 32, 48]).astype(np.float32)
    dy = rng.normal(size=[2, 4, 4, 48]).astype(np.float32)
    with tf.Graph().as_default():
      images = tf1.placeholder(tf.float32, x.shape)
      y = _bfloat16_1x1_layer(images, w)
      self.assertEqual(y.dtype, tf.bfloat16)
      weights, = tf1.global_variables()
      self.assertEqual(weights.dtype.base_dtype, tf.float32)
      y = tf.cast(y, tf.float32)
      dx, dw = tf.gradients(y, [images, weights], grad_ys=dy)
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        got = session.run([y, dx, dw], {images: x})

    # Each layer input is rounded to the nearest bfloat16 first: a(1 + d),
    # |d| <= u. The gradient reaching the layer (dy) is rounded too, by the
    # cast between the float32 loss and the bfloat16 layer.
    xb, wb = (_bfloat16_values(a).reshape(-1, a.shape[-1]) for a in (x, w[0, 0]))
    x64, w64, dy64 = (a.astype(np.float64).reshape(-1, a.shape[-1])
                      for a in (x, w[0, 0], dy))
    # y sums over the 32 input channels, dx over the 48 output channels, dw
    # over the 2*4*4 pixels (few: a bfloat16 sum's bound grows with them). The forward convolution sums in float32 on
    # every CPU. oneDNN's bfloat16 gradient kernels do too, but where oneDNN
    # has none (CPUs without bfloat16 arithmetic) TensorFlow's own round
    # partial sums to bfloat16, which only a bfloat16 sum's bound covers.
    for name, value, exact, magnitude, terms, sum_u in (
        ('y', got[0], x64 @ w64, np.abs(x64) @ np.abs(w64), 32, _FLOAT32_U),
        ('dx', got[1], dy64 @ w64.T, np.abs(dy64) @ np.abs(w64.T), 48,
         _BFLOAT16_U),
        ('dw', got[2], x64.T @ dy64, np.abs(x64.T) @ np.abs(dy64),
         2 * 4 * 4, _BFLOAT16_U)):
      value = value.reshape(exact.shape)
      # Rounding both factors of each product moves it by a factor
      # (1 + d1)(1 + d2): at most 2u + u^2 of its magnitude. The product of
      # two bfloat16 values is exact in float32, and their sum in any order
      # adds gamma_{K-1} (of the sum's own unit roundoff) times the rounded
      # terms' magnitude (Higham, Accuracy and Stability, 3.1), at most
      # (1 + u)^2 times the exact terms'. The sum is then rounded to
      # bfloat16: u of its size.
      summed = ((2 * _BFLOAT16_U + _BFLOAT16_U**2) +
                rounding_bounds.gamma(terms - 1, sum_u) *
                (1 + _BFLOAT16_U)**2) * magnitude
      bound = summed + _BFLOAT16_U * (np.abs(exact) + summed)
      self.assertTrue(np.all(np.abs(value - exact) <= bound), name)
      # Really bfloat16: float32 arithmetic on the inputs as given would be
      # within gamma_{K-1} of the magnitude everywhere.
      self.assertTrue(
          np.any(np.abs(value - exact) >
                 rounding_bounds.gamma(terms - 1) * magnitude), name)
    # The rounded inputs explain the forward result to float32 accuracy, bar
    # the output's rounding: the layer multiplied the bfloat16 values.
    y_exact, y_bound = _bfloat16_layer_bound(xb, wb)
    self.assertTrue(np.all(np.abs(got[0].reshape(y_exact.shape) - y_exact) <=
                           y_bound))


class QuantizedLayerTest(tf.test.TestCase):
  """One quantization-aware layer in mixed bfloat16, against NumPy."""

  def test_weights_are_quantized_in_float32_then_rounded_to_bfloat16(self):
    rng = np.random.RandomState(1)
    x = rng.normal(size=[2, 4, 4, 32]).astype(np.float32)
    # Output channels of different sizes, so that their ranges differ.
    w = (rng.normal(size=[1, 1, 32, 48]) *
         rng.uniform(0.1, 1.0, size=48)).astype(np.float32)
    dy = rng.normal(size=[2, 4, 4, 48]).astype(np.float32)
    for scheme in quantize.WEIGHT_SCHEMES:
      with self.subTest(scheme):
        self._check_quantized_layer(scheme, x, w, dy)

  def _check_quantized_layer(self, scheme, x, w, dy):
    """Checks a 1x1 convolution of x, weights w quantized by `scheme`."""
    with tf.Graph().as_default():
      images = tf1.placeholder(tf.float32, x.shape)
      y = _bfloat16_1x1_layer(images, w)
      # The model's output, as build_train_op casts its logits.
      tf.cast(y, tf.float32)
      quantize.create_training_graph(weights=scheme)
      weights, = tf1.trainable_variables()
      weight_range = quantize.range_variables_by_scope()['Conv/weights_quant']
      # The layer reads a bfloat16 cast of the float32 quantized weights,
      # not the variable's own bfloat16 copy.
      self.assertEqual(y.op.type, 'Conv2D')
      layer_weights = y.op.inputs[1]
      quantized = graph_editing.bfloat16_copy_source(layer_weights)
      self.assertIsNotNone(quantized)
      self.assertIsNone(graph_editing.variable_of(layer_weights))
      dw, dlayer = tf.gradients(tf.cast(y, tf.float32),
                                [weights, layer_weights], grad_ys=dy)
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        got = session.run([y, layer_weights, quantized, dw, dlayer],
                          {images: x})
        low, high = session.run([weight_range['min'], weight_range['max']])

    # The range is the float32 weights' (quant_ops.fake_quant and
    # per_channel_weight_fake_quant), not their bfloat16 copy's.
    self.assertAllEqual([low, high], _weight_range(w, scheme))
    want, nudged_low, nudged_high = _fake_quant(w, low, high,
                                                narrow_range=True)
    self.assertAllEqual(got[2], want)
    # Rounded to bfloat16 once, from the float32 quantized weights.
    want_bfloat16 = _bfloat16_values(want)
    self.assertAllEqual(got[1].astype(np.float64), want_bfloat16)
    self.assertTrue(np.any(want_bfloat16 != want))
    # Which the other order, quantizing the bfloat16 copy, would not give.
    copy = _bfloat16_values(w).astype(np.float32)
    self.assertTrue(np.any(_bfloat16_values(_fake_quant(
        copy, *_weight_range(copy, scheme), narrow_range=True)[0]) !=
                           want_bfloat16))
    # The layer multiplied the bfloat16 input and weights.
    y_exact, y_bound = _bfloat16_layer_bound(
        _bfloat16_values(x).reshape(-1, 32), want_bfloat16.reshape(32, 48))
    self.assertTrue(np.all(
        np.abs(got[0].astype(np.float64).reshape(y_exact.shape) - y_exact)
        <= y_bound))
    # The straight-through gradient reaches the float32 variable: the
    # layer's weight gradient, where the fake quant passes it (inside the
    # nudged range; everywhere per channel, whose range holds every weight).
    passes = (np.ones(w.shape, bool) if scheme == quantize.PER_CHANNEL else
              (w >= nudged_low) & (w <= nudged_high))
    self.assertTrue(np.all(got[4] != 0))
    self.assertAllEqual(got[3], got[4].astype(np.float32) * passes)


class TrainingStepTest(tf.test.TestCase):
  """The trainer's whole step in mixed bfloat16 against float32."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.mixed_graph, cls.mixed_step = _training_graph(
        precision.MIXED_BFLOAT16)
    cls.float_graph, _ = _training_graph(precision.FLOAT32)

  def test_convolutions_and_batch_norms_take_bfloat16(self):
    ops = [op for op in self.mixed_graph.get_operations()
           if op.name.startswith('MobilenetV1/') or
           op.name.startswith('gradients/MobilenetV1/')]
    convolutions = [op for op in ops if op.type in _CONVOLUTION_TYPES]
    # 15 convolutions (the first, 13 pointwise, the logits) and 13
    # depthwise ones, forward, and their two gradients (the graph holds the
    # first layer's input gradient too; nothing runs it), the pointwise
    # ones' as MatMuls.
    self.assertEqual(len(convolutions), 28 * 3)
    for op in convolutions:
      self.assertEqual(op.outputs[0].dtype, tf.bfloat16, op.name)
    # Where the fused kernels run, the batch norm + ReLU6 pairs are fused in
    # bfloat16 too (the replaced ops stay in the graph, unread).
    fused = [op for op in ops if op.type == 'FusedBatchNormRelu6']
    self.assertEqual(bool(fused), batch_norm_relu6.unavailable_reason() is None)
    batch_norms = fused or [op for op in ops if op.type == 'FusedBatchNormV3']
    self.assertLen(batch_norms, 27)
    for op in batch_norms:
      self.assertEqual(op.inputs[0].dtype, tf.bfloat16, op.name)
      self.assertEqual(op.outputs[0].dtype, tf.bfloat16, op.name)
      # Scale, offset and the batch statistics stay float32.
      self.assertEqual(op.inputs[1].dtype, tf.float32, op.name)
      self.assertEqual(op.outputs[1].dtype, tf.float32, op.name)
    self.assertEqual(self.mixed_step.total_loss.dtype, tf.float32)

  def test_float32_graphs_have_no_bfloat16(self):
    self.assertEqual(
        [op.name for op in self.float_graph.get_operations()
         if any(t.dtype == tf.bfloat16 for t in op.outputs)], [])

  def test_variables_are_those_of_float32(self):
    mixed = _variables(self.mixed_graph)
    self.assertEqual(mixed, _variables(self.float_graph))
    self.assertEqual({name for name, (dtype, _) in mixed.items()
                      if dtype != tf.float32}, {'global_step'})

  def test_weight_decay_sums_the_float32_weights(self):
    with self.mixed_graph.as_default():
      regularization = tf1.losses.get_regularization_losses()
      # The first layer, 13 pointwise layers and the logits.
      self.assertLen(regularization, 15)
      for loss in regularization:
        self.assertEqual(loss.dtype, tf.float32)
      weights = [v for v in tf1.trainable_variables()
                 if v.op.name.endswith('/weights') and
                 'depthwise' not in v.op.name]
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        got, values = session.run([tf.add_n(regularization), weights])
    # slim's l2_regularizer: scale * sum(w^2) / 2, scale = weight decay.
    want = 0.00004 * sum(np.sum(np.square(v.astype(np.float64))) / 2
                         for v in values)
    terms = sum(v.size for v in values)
    # Each float32 square is off by u, the sums by gamma_n of the total.
    self.assertLessEqual(
        abs(got - want),
        (rounding_bounds.gamma(terms) + 2 * _FLOAT32_U) * want)

  def test_step_trains_and_saves_float32_checkpoints(self):
    path = os.path.join(self.get_temp_dir(), 'model.ckpt')
    with self.mixed_graph.as_default():
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        losses = [session.run(self.mixed_step.train_op) for _ in range(20)]
        tf1.train.Saver().save(session, path)
    self.assertTrue(np.all(np.isfinite(losses)))
    # A fixed batch of four images: twenty steps fit it.
    self.assertLess(losses[-1], losses[0])
    dtypes = tf1.train.NewCheckpointReader(path).get_variable_to_dtype_map()
    self.assertEqual({name for name, dtype in dtypes.items()
                      if dtype != tf.float32}, {'global_step'})


# Quantization-aware training's routes, quantizing from the first step: the
# batch norms kept after the quantized layers (the default) with per-channel
# or per-tensor weights (quantized as inference folds them,
# quant(W * m) / m); folded into them, with batch statistics for the first
# step and frozen to the moving ones after; frozen from the start (the model
# in inference mode).
_QUANTIZED_ROUTES = {
    'kept': dict(quantize=True, quant_delay=0),
    'kept, per-tensor weights': dict(
        quantize=True, quant_delay=0, weight_quantization=quantize.SYMMETRIC),
    'folded': dict(quantize=True, quant_delay=0, freeze_bn_delay=1),
    'frozen from the start': dict(quantize=True, quant_delay=0,
                                  freeze_bn_delay=0),
}


class QuantizedTrainingStepTest(tf.test.TestCase):
  """Quantization-aware training's step in mixed bfloat16 against float32."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.steps = {
        (route, precision_name): _training_graph(precision_name, **changes)
        for route, changes in _QUANTIZED_ROUTES.items()
        for precision_name in precision.PRECISIONS}

  def test_layers_take_bfloat16_and_fake_quants_float32(self):
    for route in _QUANTIZED_ROUTES:
      with self.subTest(route):
        graph, step = self.steps[route, precision.MIXED_BFLOAT16]
        float_graph, _ = self.steps[route, precision.FLOAT32]
        forward = [op for op in graph.get_operations()
                   if not op.name.startswith('gradients/')]
        layers = [op for op in forward
                  if op.type in graph_editing.LAYER_TYPES]
        self.assertLen(layers, len([
            op for op in float_graph.get_operations()
            if op.type in graph_editing.LAYER_TYPES and
            not op.name.startswith('gradients/')]))
        for op in layers:
          self.assertEqual(op.outputs[0].dtype, tf.bfloat16, op.name)
        # 28 layers (15 convolutions, 13 depthwise) read quantized weights:
        # bfloat16 casts of float32 fake quants, not of the variables.
        quantized = [op for op in layers
                     if graph_editing.variable_of(op.inputs[1]) is None]
        self.assertLen(quantized, 28)
        for op in quantized:
          self.assertIsNotNone(
              graph_editing.bfloat16_copy_source(op.inputs[1]), op.name)
        # The fake quants of float32 training, each on float32 tensors.
        fake_quants = [op for op in forward if op.type in (
            'FakeQuantWithMinMaxVars', 'FakeQuantWithMinMaxVarsPerChannel')]
        self.assertEqual(
            sorted(op.name for op in fake_quants),
            sorted(op.name for op in float_graph.get_operations()
                   if op.type in ('FakeQuantWithMinMaxVars',
                                  'FakeQuantWithMinMaxVarsPerChannel')))
        # Weights, the activations after 27 batch norms, the pool, the
        # logits.
        self.assertLen(fake_quants, 28 + 27 + 2)
        for op in fake_quants:
          self.assertEqual({t.dtype for t in op.inputs}, {tf.float32},
                           op.name)
        # Batch norm + ReLU6 fuse as in float32, in bfloat16; the fused
        # fake quant kernel is float32's alone.
        fused = [op for op in forward if op.type == 'FusedBatchNormRelu6']
        self.assertLen(fused, len([
            op for op in float_graph.get_operations()
            if op.type == 'FusedBatchNormRelu6']))
        if route == 'kept':
          self.assertLen(fused, 0 if batch_norm_relu6.unavailable_reason()
                         else 27)
        for op in fused:
          self.assertEqual(op.inputs[0].dtype, tf.bfloat16, op.name)
        self.assertNotIn('BatchNormRelu6FakeQuant',
                         {op.type for op in forward})
        # The input is quantized in float32, then cast for the model.
        input_quant = graph.get_operation_by_name('input_quant')
        self.assertEqual(
            [(op.type, op.outputs[0].dtype)
             for op in input_quant.outputs[0].consumers()],
            [('Cast', tf.bfloat16)])
        self.assertEqual(step.total_loss.dtype, tf.float32)

  def test_variables_are_those_of_float32(self):
    for route in _QUANTIZED_ROUTES:
      with self.subTest(route):
        graph, _ = self.steps[route, precision.MIXED_BFLOAT16]
        float_graph, _ = self.steps[route, precision.FLOAT32]
        self.assertEqual(_variables(graph), _variables(float_graph))
        ranges = quantize.range_variables(graph)
        # A weight and an activation range per layer (the pool rounds to
        # its input's).
        self.assertLen(ranges, 2 * 2 * 28)
        for variable in ranges:
          self.assertEqual(variable.dtype.base_dtype, tf.float32)

  def test_steps_train_and_save_float32_checkpoints(self):
    for route in _QUANTIZED_ROUTES:
      with self.subTest(route):
        entries = {}
        directory = self.create_tempdir().full_path
        for precision_name in precision.PRECISIONS:
          graph, step = self.steps[route, precision_name]
          path = os.path.join(directory, precision_name + '.ckpt')
          with graph.as_default(), tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            if precision_name == precision.MIXED_BFLOAT16:
              losses = [session.run(step.train_op) for _ in range(20)]
            tf1.train.Saver().save(session, path)
          entries[precision_name] = _checkpoint_entries(path)
        self.assertTrue(np.all(np.isfinite(losses)))
        # A fixed batch of four images: the steps fit it. From the second
        # step, as folded batch norms freeze after the first.
        self.assertLess(losses[-1], losses[1])
        self.assertEqual(entries[precision.MIXED_BFLOAT16],
                         entries[precision.FLOAT32])


if __name__ == '__main__':
  tf.test.main()
