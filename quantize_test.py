"""Tests for quantize: batch norm folding, fake quantization, TFLite export."""

import os

import numpy as np

import slim_compat  # pylint: disable=unused-import
from slim_compat import slim
import tensorflow as tf

from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.interpreter import OpResolverType
import mobilenet_v1
import quantize

tf1 = tf.compat.v1

_FAKE_QUANT = 'FakeQuantWithMinMaxVars'
_BATCH = 8
_IMAGE_SIZE = 64
_NUM_CLASSES = 11
_LOGITS_BIAS_ADD = 'MobilenetV1/Logits/Conv2d_1c_1x1/BiasAdd'
_WEIGHTS_QUANT_SCOPE = '/%s/' % quantize.WEIGHTS_QUANT


def _build_mobilenet(is_training, batch_size=_BATCH, batch_norm_decay=0.9997,
                     quantized_input=False):
  """Builds MobileNet V1 0.25 at 64x64 in the default graph.

  Dropout keeps everything so training-mode outputs are deterministic.

  Args:
    is_training: build the training or the inference graph.
    batch_size: the static batch size, or None.
    batch_norm_decay: decay of batch norm's moving averages.
    quantized_input: put `quantize.quantize_input` before the model.

  Returns:
    (images placeholder, logits).
  """
  images = tf1.placeholder(
      tf.float32, [batch_size, _IMAGE_SIZE, _IMAGE_SIZE, 3], name='input')
  model_input = quantize.quantize_input(images) if quantized_input else images
  with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(
      is_training=is_training, batch_norm_decay=batch_norm_decay)):
    logits, _ = mobilenet_v1.mobilenet_v1(
        model_input, num_classes=_NUM_CLASSES, is_training=is_training,
        depth_multiplier=0.25, dropout_keep_prob=1.0)
  return images, logits


def _model_values(graph, seed=0):
  """Random values for the model's variables, keyed by name.

  Batch norm statistics and scales are made non-trivial so that folding
  mistakes show.
  """
  rng = np.random.RandomState(seed)
  ranges = {v.op.name for v in quantize.range_variables(graph)}
  values = {}
  for variable in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES):
    name = variable.op.name
    shape = variable.shape.as_list()
    if name in ranges or not shape:  # Scalars: ranges and the global step.
      continue
    if name.endswith(('gamma', 'moving_variance')):
      values[name] = rng.uniform(0.5, 1.5, shape)
    elif name.endswith(('beta', 'moving_mean', 'biases')):
      values[name] = rng.normal(0.0, 0.2, shape)
    else:
      # The model's own initializer scale: much larger weights make the
      # deep network's gradients ill-conditioned, so that float rounding
      # alone changes them by percents.
      values[name] = rng.normal(0.0, 0.09, shape)
  return values


def _load(sess, values):
  """Initializes all variables, then loads `values` (name -> array)."""
  sess.run(tf1.global_variables_initializer())
  for variable in sess.graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES):
    if variable.op.name in values:
      variable.load(values[variable.op.name].astype(np.float32), sess)


def _ancestors(tensor):
  """All ops `tensor` depends on through data inputs, itself included."""
  seen = {}
  stack = [tensor.op]
  while stack:
    op = stack.pop()
    if op.name not in seen:
      seen[op.name] = op
      stack.extend(t.op for t in op.inputs)
  return list(seen.values())


def _count_fake_quants(graph):
  return sum(op.type == _FAKE_QUANT for op in graph.get_operations())


def _range_values(sess):
  return {v.op.name: sess.run(v) for v in quantize.range_variables(sess.graph)}


def _colour_task(batch_size=_BATCH, seed=1):
  """A batch of an easy task: which colour channel is boosted.

  A randomly initialized MobileNet amplifies any perturbation, rounding
  included, so much that its predictions are noise; a few dozen steps on
  this task give it predictions with real margins.

  Args:
    batch_size: how many images.
    seed: the random seed.

  Returns:
    (uint8 images [batch_size, 64, 64, 3] of random 16x16 blocks plus 127 in
    the label's channel, labels in 0..2).
  """
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, 3, batch_size)
  blocks = rng.randint(0, 128, [batch_size, 4, 4, 3])
  images = np.kron(blocks, np.ones([1, _IMAGE_SIZE // 4, _IMAGE_SIZE // 4, 1]))
  images[np.arange(batch_size), :, :, labels] += 127
  return images.astype(np.uint8), labels


def _to_float(uint8_images):
  """Maps uint8 images to [-1, 1] like the model's preprocessing."""
  return (uint8_images.astype(np.float32) - 127.5) / 127.5


def _images(batch_size=_BATCH, seed=1):
  """Uniform noise images in [-1, 1].

  Noise gives every channel a healthy batch variance, so that the float
  comparisons are not dominated by rounding amplified through 28 layers.
  """
  return np.random.RandomState(seed).uniform(
      -1, 1, [batch_size, _IMAGE_SIZE, _IMAGE_SIZE, 3]).astype(np.float32)


class MobilenetQuantizeTest(tf.test.TestCase):

  def test_eval_graph_quantizes_every_weight_and_activation(self):
    with tf.Graph().as_default() as graph:
      _, logits = _build_mobilenet(is_training=False)
      quantize.create_eval_graph()

    path = _ancestors(logits)
    layers = [op for op in path
              if op.type in ('Conv2D', 'DepthwiseConv2dNative')]
    relu6s = [op for op in path if op.type == 'Relu6']
    self.assertLen(layers, 28)  # 27 body convolutions and the logits.
    self.assertLen(relu6s, 27)
    for op in layers:
      self.assertEqual(op.inputs[1].op.type, _FAKE_QUANT, op.name)
      self.assertTrue(op.inputs[1].op.get_attr('narrow_range'), op.name)
    bias_add = graph.get_operation_by_name(_LOGITS_BIAS_ADD)
    for op in relu6s + [bias_add]:
      consumers = op.outputs[0].consumers()
      self.assertEqual([c.type for c in consumers], [_FAKE_QUANT], op.name)
      self.assertFalse(consumers[0].get_attr('narrow_range'), op.name)
    self.assertEmpty([op.name for op in path if 'BatchNorm' in op.type])
    # The average pool is rounded to its input's grid, as TFLite's uint8
    # pool does, with the input's range variables (no new ones), halves up.
    pool, = [op for op in path if op.type == 'AvgPool']
    half_up, = pool.outputs[0].consumers()
    pool_quant, = half_up.outputs[0].consumers()
    self.assertEqual(pool_quant.type, _FAKE_QUANT)
    self.assertEqual([t.name for t in pool_quant.inputs[1:]],
                     [t.name for t in pool.inputs[0].op.inputs[1:]])
    # 28 weights, 27 Relu6 outputs, the logits and the pool.
    self.assertEqual(_count_fake_quants(graph), 57)

    names = {v.op.name for v in quantize.range_variables(graph)}
    self.assertLen(names, 112)
    for name in ('MobilenetV1/MobilenetV1/Conv2d_0/weights_quant/min',
                 'MobilenetV1/MobilenetV1/Conv2d_13_pointwise/act_quant/max',
                 'MobilenetV1/Logits/Conv2d_1c_1x1/act_quant/min'):
      self.assertIn(name, names)
    trainable = {v.op.name for v in graph.get_collection(
        tf1.GraphKeys.TRAINABLE_VARIABLES)}
    model = {v.op.name for v in graph.get_collection(
        tf1.GraphKeys.MODEL_VARIABLES)}
    self.assertEmpty(names & trainable)
    self.assertContainsSubset(names, model)

  def test_folded_eval_graph_matches_float(self):
    images = _images()
    outputs = []
    for fold in (False, True):
      with tf.Graph().as_default() as graph:
        images_in, logits = _build_mobilenet(is_training=False)
        if fold:
          self.assertEqual(quantize.fold_batch_norms(), 27)
          self.assertEmpty([op.name for op in _ancestors(logits)
                            if 'BatchNorm' in op.type])
          # Folded batch norms have no consumers: folding again is a no-op.
          self.assertEqual(quantize.fold_batch_norms(), 0)
        with self.session(graph=graph) as sess:
          _load(sess, _model_values(graph))
          outputs.append(sess.run(logits, {images_in: images}))
    float_logits, folded_logits = outputs
    self.assertGreater(np.abs(float_logits).max(), 1.0)
    self.assertAllClose(float_logits, folded_logits, rtol=1e-4,
                        atol=1e-4 * np.abs(float_logits).max())

  def test_training_graph_matches_float_before_quant_delay(self):
    quant_delay = 1000
    images = _images()
    labels = np.random.RandomState(2).randint(0, _NUM_CLASSES, _BATCH)
    results = []
    for rewrite in (False, True):
      with tf.Graph().as_default() as graph:
        images_in, logits = _build_mobilenet(is_training=True)
        if rewrite:
          quantize.create_training_graph(quant_delay=quant_delay)
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
        variables = sorted(tf1.trainable_variables(), key=lambda v: v.op.name)
        gradients = tf1.gradients(loss, variables)
        moving_variances = sorted(
            [v for v in tf1.global_variables()
             if v.op.name.endswith('moving_variance')],
            key=lambda v: v.op.name)
        with self.session(graph=graph) as sess:
          _load(sess, _model_values(graph))
          fetched = sess.run(
              [logits, gradients, tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)],
              {images_in: images})
          results.append((fetched[0], fetched[1], sess.run(moving_variances)))
          if rewrite:
            tf1.train.get_global_step().load(quant_delay, sess)
            delayed_logits = sess.run(logits, {images_in: images})
    (float_logits, float_grads, float_stats), (quant_logits, quant_grads,
                                               quant_stats) = results
    scale = np.abs(float_logits).max()
    self.assertAllClose(float_logits, quant_logits, rtol=1e-4,
                        atol=1e-4 * scale)
    # Gradients go through the batch statistics in both graphs. Through 28
    # layers float rounding adds up: fused and unfused float batch norms
    # differ by about 0.1% here too.
    self.assertLen(quant_grads, len(float_grads))
    float_grads = np.concatenate([g.ravel() for g in float_grads])
    quant_grads = np.concatenate([g.ravel() for g in quant_grads])
    self.assertLess(np.linalg.norm(quant_grads - float_grads),
                    5e-3 * np.linalg.norm(float_grads))
    # Batch norm's moving averages are still updated, from the same batch.
    self.assertAllClose(float_stats, quant_stats, rtol=1e-5)
    # From the delay on, quantization changes the outputs.
    self.assertNotAllClose(float_logits, delayed_logits, rtol=1e-3,
                           atol=1e-3 * scale)

  def test_channels_drowned_by_input_rounding_fold_to_beta(self):
    # Channel 3 of Conv2d_1_depthwise reads a near-constant input: its
    # moving variance is tiny and (no weight decay on depthwise weights)
    # its weights large, so its folded weights would be ~1000x the others.
    layer = 'MobilenetV1/Conv2d_1_depthwise/'
    scope = 'MobilenetV1/MobilenetV1/Conv2d_1_depthwise/'
    dead = 3
    images = _images()
    for is_training in (False, True):
      with self.subTest(is_training=is_training):
        with tf.Graph().as_default() as graph:
          images_in, _ = _build_mobilenet(is_training, quantized_input=True)
          if is_training:
            quantize.create_training_graph()
          else:
            quantize.create_eval_graph()
          values = _model_values(graph)
          values[layer + 'BatchNorm/moving_variance'][dead] = 1e-7
          values[layer + 'depthwise_weights'][:, :, dead, 0] *= 20
          with self.session(graph=graph) as sess:
            _load(sess, values)
            folded, layer_output = sess.run(
                [scope + 'mul_fold:0', scope + 'add_fold:0'],
                {images_in: images})
        folded = folded[:, :, :, 0]
        self.assertAllEqual(folded[:, :, dead], np.zeros([3, 3]))
        # The eval graph rounds the bias to its int32 grid, a few 1e-4 apart.
        beta = values[layer + 'BatchNorm/beta'][dead]
        self.assertAllClose(layer_output[..., dead],
                            np.full(layer_output.shape[:-1], beta), atol=1e-3)
        self.assertEqual(np.ptp(layer_output[..., dead]), 0)
        # Every other channel keeps its batch norm folded in.
        gamma = values[layer + 'BatchNorm/gamma']
        variance = values[layer + 'BatchNorm/moving_variance']
        expected = (values[layer + 'depthwise_weights'][:, :, :, 0] * gamma /
                    np.sqrt(variance + 1e-3))
        live = np.arange(folded.shape[-1]) != dead
        self.assertAllClose(folded[:, :, live], expected[:, :, live],
                            rtol=1e-5, atol=1e-6)

  def test_ranges_train_save_and_restore_into_eval_graph(self):
    checkpoint = os.path.join(self.get_temp_dir(), 'model.ckpt')
    trained = _train_and_save(self, checkpoint, steps=3)
    self.assertNotEmpty(trained)

    with tf.Graph().as_default() as graph:
      _build_mobilenet(is_training=False)
      quantize.create_eval_graph()
      with self.session(graph=graph) as sess:
        tf1.train.Saver().restore(sess, checkpoint)
        restored = _range_values(sess)
    self.assertEqual(sorted(restored), sorted(trained))
    for name, value in trained.items():
      self.assertEqual(restored[name], value, name)

  def test_rewriting_twice_raises(self):
    for rewrite in (quantize.create_eval_graph,
                    lambda: quantize.create_training_graph(quant_delay=0)):
      with tf.Graph().as_default() as graph:
        _build_mobilenet(is_training=False)
        rewrite()
        count = _count_fake_quants(graph)
        with self.assertRaisesRegex(ValueError, 'already quantized'):
          rewrite()
        with self.assertRaisesRegex(ValueError, 'already quantized'):
          quantize.create_eval_graph(graph)
        self.assertEqual(_count_fake_quants(graph), count)

  def test_rewriting_a_folded_graph_raises(self):
    with tf.Graph().as_default() as graph:
      _build_mobilenet(is_training=False)
      quantize.fold_batch_norms()
      with self.assertRaisesRegex(ValueError, 'already has folded'):
        quantize.create_eval_graph()
      self.assertEqual(_count_fake_quants(graph), 0)

  def test_graph_without_layers_raises(self):
    with tf.Graph().as_default():
      images = tf1.placeholder(tf.float32, [1, 4, 4, 3])
      tf.nn.relu6(images * 2.0)
      with self.assertRaisesRegex(ValueError, 'no layer to quantize'):
        quantize.create_eval_graph()
      with self.assertRaisesRegex(ValueError, 'non-negative'):
        quantize.create_training_graph(quant_delay=-1)

  def test_rewrite_after_gradients_raises(self):
    with tf.Graph().as_default():
      _, logits = _build_mobilenet(is_training=True)
      tf1.gradients(tf.reduce_sum(logits), tf1.trainable_variables())
      with self.assertRaisesRegex(ValueError, 'before building the optimizer'):
        quantize.create_training_graph()

  def test_uint8_tflite_model_computes_what_the_fake_quant_graph_does(self):
    checkpoint = os.path.join(self.get_temp_dir(), 'model.ckpt')
    _train_and_save(self, checkpoint, steps=100)
    batch_size = 32
    quantized_images, labels = _colour_task(batch_size, seed=3)

    with tf.Graph().as_default() as graph:
      images_in, logits = _build_mobilenet(is_training=False,
                                           batch_size=None,
                                           quantized_input=True)
      quantize.create_eval_graph()
      with self.session(graph=graph) as sess:
        tf1.train.Saver().restore(sess, checkpoint)
        self._assert_biases_on_the_integer_grid(sess, logits)
        frozen = tf1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), [logits.op.name])
    # Converted as the export converts it: without the eval graph's pool
    # tie-breaks, which TFLite's integer pool does not need.
    with tf.Graph().as_default() as graph:
      tf.import_graph_def(quantize.without_pool_tie_breaks(frozen), name='')
      with self.session(graph=graph) as sess:
        converter = tf1.lite.TFLiteConverter.from_session(
            sess, [graph.get_tensor_by_name(images_in.name)],
            [graph.get_tensor_by_name(logits.name)])
        converter.inference_type = tf.uint8
        converter.inference_input_type = tf.uint8
        converter.quantized_input_stats = {
            images_in.op.name: (127.5, 127.5)}
        model = converter.convert()

    reference = _run_all_tensors(model, quantized_images,
                                 OpResolverType.BUILTIN_REF)
    # TFLite's optimized uint8 kernels (ruy's integer matrix products, the
    # same fixed-point requantization) compute what its reference kernels
    # do, exactly, on any CPU.
    optimized = _run_all_tensors(
        model, quantized_images,
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    self.assertCountEqual(optimized, reference)
    for name, (codes, _) in reference.items():
      self.assertAllEqual(optimized[name][0], codes, msg=name)

    with tf.Graph().as_default() as graph:
      tf.import_graph_def(frozen, name='')
      with self.session(graph=graph) as sess:
        tf_logits = sess.run(
            logits.name, {images_in.name: _dequantize(*reference['input'])})
        # The task was learned, so predictions are not noise.
        self.assertGreater(np.mean(np.argmax(tf_logits, 1) == labels), 0.9)
        checked = self._assert_each_layer_computes_the_integer_result(
            sess, reference)
    # 27 body layers, the pool and the logits.
    self.assertEqual(checked, 29)

  def _assert_each_layer_computes_the_integer_result(self, sess, reference):
    """Compares each layer of the eval graph with TFLite's, on one input.

    Each layer of the TF graph is fed the codes the TFLite model's layer
    before it produced, so that every layer is compared on its own, not
    through the rounding differences of the layers before it.

    A convolution's codes are round(y / s + z) of its real output y. TFLite
    computes y exactly in integers and rescales the int32 sum by a fixed-
    point multiplier M = s_in * s_w / s_out, in error by at most M + 2^-31
    |y / s| codes (its rounding high multiply, then the shift by e, where
    M = m 2^-e with m in [0.5, 1), rounds to 2^-e <= 2 M codes). TF computes
    y in float32 from values that are themselves rounded to float32: over n
    products the error is at most (n + 6) u (sum |x w| + |b|), u = 2^-24,
    plus 2 u_in of the same where oneDNN rounds a convolution's inputs to
    bfloat16 (u_in = 2^-9 in its BF16 math mode, else 0); the fake quant's
    (y - min) / s adds 2 u 256 codes. So TF's y / s + z, clipped to the
    codes, is within 0.5 plus the sum of those bounds of TFLite's code: the
    two differ only near half-way points between codes, and by more than one
    code only where the bound exceeds one. Average pools give the same codes
    exactly: the mean of
    n values on the grid is a multiple of s / n from a half-way point or on
    it, where the eval graph's s / (4 n) tie-break pushes it up as TFLite's
    integer rounding does; float32 error is far below s / (4 n).

    Args:
      sess: a session of the frozen eval graph.
      reference: TFLite's tensors on TFLite's reference kernels, as
        `_run_all_tensors` returns them.

    Returns:
      The number of layers compared.
    """
    graph = sess.graph
    activation_quants = [
        op for op in graph.get_operations()
        if op.type == _FAKE_QUANT and
        op.name.endswith('/%s/%s' % (quantize.ACT_QUANT, _FAKE_QUANT))]
    checked = mismatches = worst = 0
    for fake_quant in activation_quants:
      output = fake_quant.inputs[0]
      is_pool = output.op.type in ('Add', 'AddV2')  # the pool's tie-break
      layer_output = output.op.inputs[0] if is_pool else output
      if layer_output.op.type == 'Relu6':
        layer_output = layer_output.op.inputs[0]
      layer = layer_output.op if is_pool else layer_output.op.inputs[0].op
      layer_input = layer.inputs[0]
      while layer_input.op.type == 'Identity':
        layer_input = layer_input.op.inputs[0]
      codes, (scale, zero_point) = reference[_tflite_name(output)]
      feed = {layer_input: _dequantize(*reference[_tflite_name(
          layer_input.op.inputs[0])])}
      real, quantized = sess.run([output, fake_quant.outputs[0]], feed)
      tf_codes = np.round(quantized / scale + zero_point)
      codes = codes.astype(np.float64)
      if is_pool:
        self.assertAllEqual(tf_codes, codes, msg=layer.name)
        checked += 1
        continue
      weights, bias = sess.run([layer.inputs[1], layer_output.op.inputs[1]])
      weights_quant = layer.inputs[1].op
      weights_min, weights_max = sess.run(list(weights_quant.inputs[1:]))
      weights_scale = np.reshape((weights_max - weights_min) / 254, [-1])
      input_scale = reference[_tflite_name(layer_input.op.inputs[0])][1][0]
      # sum |x w| over each output's products, by the layer itself.
      magnitudes = sess.run(layer.outputs[0], {
          layer_input: np.abs(feed[layer_input]),
          layer.inputs[1]: np.abs(weights)})
      if layer.type == 'DepthwiseConv2dNative':
        products = weights.shape[0] * weights.shape[1]
      else:
        products = np.prod(weights.shape[:-1])
      u = 2.0**-24
      position = real / scale + zero_point
      bound = ((products + 6) * u + 2 * _convolution_input_rounding()) * (
          magnitudes + np.abs(bias)) / scale + 2 * u * 256 + (
              input_scale * weights_scale / scale + 2.0**-31 * np.abs(position))
      levels = 2**fake_quant.get_attr('num_bits') - 1
      excess = np.abs(np.clip(position, 0, levels) - codes) - 0.5
      self.assertLessEqual(np.max(excess - bound), 0.0, layer.name)
      worst = max(worst, np.max(excess / bound))
      mismatches += np.count_nonzero(tf_codes != codes)
      checked += 1
    print('layer values on the other code: %d; beyond the half-way point by '
          'at most %.2f of the bound' % (mismatches, worst))
    return checked

  def _assert_biases_on_the_integer_grid(self, sess, logits):
    """Each bias is a whole number of input scale x weight scale units."""
    layers = [op for op in _ancestors(logits)
              if op.type in ('Conv2D', 'DepthwiseConv2dNative')]
    self.assertLen(layers, 28)
    for layer in layers:
      bias_add, = layer.outputs[0].consumers()
      self.assertEqual(bias_add.type, 'BiasAdd', layer.name)
      layer_input = layer.inputs[0]
      while layer_input.op.type == 'Identity':  # inference-mode dropout
        layer_input = layer_input.op.inputs[0]
      input_min, input_max = _fake_quant_range(sess, layer_input.op)
      weights_min, weights_max = _fake_quant_range(sess, layer.inputs[1].op)
      unit = (input_max - input_min) / 255 * (weights_max - weights_min) / 254
      units = sess.run(bias_add.inputs[1]) / unit
      self.assertGreater(np.abs(units).max(), 10, layer.name)
      # float32 holds a unit count to about 1e-7 of itself.
      self.assertAllClose(units, np.round(units), atol=1e-3, rtol=1e-6,
                          msg=layer.name)


def _fake_quant_range(sess, fake_quant):
  """(min, max) of a FakeQuantWithMinMax{Args,Vars} op."""
  if fake_quant.type == 'FakeQuantWithMinMaxArgs':
    return fake_quant.get_attr('min'), fake_quant.get_attr('max')
  return sess.run(list(fake_quant.inputs[1:]))


def _run_all_tensors(model, images, resolver):
  """Runs a uint8 TFLite model on a batch, keeping every uint8 tensor.

  Args:
    model: the flatbuffer.
    images: uint8 input batch.
    resolver: the OpResolverType of the kernels to run.

  Returns:
    {tensor name: (uint8 values, (scale, zero point))}; a tensor the
    converter fused from several ops is named by the first of them.
  """
  interpreter = Interpreter(model_content=model,
                            experimental_op_resolver_type=resolver,
                            experimental_preserve_all_tensors=True)
  input_detail = interpreter.get_input_details()[0]
  interpreter.resize_tensor_input(input_detail['index'], images.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(input_detail['index'], images)
  interpreter.invoke()
  return {detail['name'].split(';')[0]: (
      interpreter.get_tensor(detail['index']).copy(), detail['quantization'])
          for detail in interpreter.get_tensor_details()
          if detail['dtype'] == np.uint8 and len(detail['shape']) > 1 and
          detail['name']}  # Unnamed: the optimized kernels' scratch.


def _tflite_name(tensor):
  """The TFLite tensor holding the quantized value of TF tensor `tensor`."""
  if tensor.op.type == 'Placeholder':
    return 'input'
  if tensor.op.type in ('Add', 'AddV2'):  # a pool's tie-break, TFLite lacks
    return tensor.op.inputs[0].op.name
  return tensor.op.name


def _convolution_input_rounding():
  """The unit roundoff of the inputs oneDNN's convolutions multiply here.

  oneDNN's BF16 (or ANY) math mode, set for the process by the environment,
  lets convolutions round their float32 inputs to bfloat16 (8 significant
  bits) and accumulate in float32; otherwise they multiply float32 values.
  """
  mode = os.environ.get('ONEDNN_DEFAULT_FPMATH_MODE', '').upper()
  return 2.0**-9 if mode in ('BF16', 'ANY') else 0.0


def _dequantize(codes, quantization):
  scale, zero_point = quantization
  return (codes.astype(np.float32) - zero_point) * np.float32(scale)


def _train_and_save(test, checkpoint, steps):
  """Trains a quantized MobileNet from scratch on `_colour_task`, saves it.

  Batch norm's moving averages decay fast (0.9), so that after a few dozen
  steps inference sees activations of the scale it was trained on.

  Args:
    test: the running test case (for assertions).
    checkpoint: the checkpoint path to save to.
    steps: how many training steps to run.

  Returns:
    The range variables' values after training (name -> value).
  """
  with tf.Graph().as_default() as graph:
    tf1.set_random_seed(0)
    images_in, logits = _build_mobilenet(is_training=True,
                                         batch_size=2 * _BATCH,
                                         batch_norm_decay=0.9)
    labels_in = tf1.placeholder(tf.int64, [2 * _BATCH])
    quantize.create_training_graph(quant_delay=0)
    loss = tf1.losses.sparse_softmax_cross_entropy(labels_in, logits)
    global_step = tf1.train.get_or_create_global_step()
    with tf.control_dependencies(tf1.get_collection(
        tf1.GraphKeys.UPDATE_OPS)):
      train_op = tf1.train.MomentumOptimizer(0.02, 0.9).minimize(
          loss, global_step=global_step)
    with test.session(graph=graph) as sess:
      sess.run(tf1.global_variables_initializer())
      initial = _range_values(sess)
      for step in range(steps):
        images, labels = _colour_task(2 * _BATCH, seed=100 + step)
        sess.run(train_op, {images_in: _to_float(images), labels_in: labels})
      trained = _range_values(sess)
      tf1.train.Saver().save(sess, checkpoint)
  # Weight ranges follow the weights. Activation ranges move by EMA steps,
  # except bounds that the data keeps at their initial value: 0 as the
  # minimum after a ReLU, 6 as the maximum of a saturated ReLU6.
  moved = {name for name, value in trained.items() if value != initial[name]}
  weight_bounds = {name for name in trained if _WEIGHTS_QUANT_SCOPE in name}
  test.assertContainsSubset(weight_bounds, moved)
  test.assertNotEmpty(moved - weight_bounds)
  test.assertTrue(np.all(np.isfinite(list(trained.values()))))
  return trained


class GenericPatternsTest(tf.test.TestCase):
  """Hand-built layers: unfused batch norm, MatMul, residual Adds."""

  def _build(self, is_training):
    """conv+BN(unfused)+ReLU, a residual Add before and after a ReLU, FC."""
    images = tf1.placeholder(tf.float32, [4, 8, 8, 3], name='input')
    with slim.arg_scope([slim.conv2d], weights_initializer=(
        tf1.truncated_normal_initializer(stddev=0.3))):
      net = slim.conv2d(
          images, 8, [3, 3], activation_fn=tf.nn.relu,
          normalizer_fn=slim.batch_norm,
          normalizer_params={'fused': False, 'is_training': is_training},
          scope='conv_bn')
      branch = slim.conv2d(net, 8, [1, 1], activation_fn=None,
                           scope='pre_add')
      net = tf.nn.relu(net + branch, name='pre_add_relu')
      branch = slim.conv2d(net, 8, [1, 1], activation_fn=tf.nn.relu6,
                           scope='post')
      net = tf.add(net, branch, name='post_add')
    net = tf.reshape(net, [4, -1])
    with tf1.variable_scope('fc'):
      weights = tf1.get_variable('weights', [8 * 8 * 8, 5])
      biases = tf1.get_variable('biases', [5])
      net = tf.nn.relu(tf.matmul(net, weights) + biases)
    # Fetching a rewritten tensor itself would bypass its fake quant op,
    # which only its consumers read.
    return images, tf.identity(net, name='output')

  def test_first_training_steps_take_ranges_from_the_data(self):
    with tf.Graph().as_default():
      images, output = self._build(is_training=True)
      quantize.create_training_graph(quant_delay=0)
      global_step = tf1.train.get_global_step()
      activation = tf1.get_default_graph().get_tensor_by_name(
          'fc/Relu:0')
      act_max, = [v for v in quantize.range_variables()
                  if v.op.name == 'fc/act_quant/max']
      batch = np.random.RandomState(3).uniform(-1, 1, [4, 8, 8, 3])
      with tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        for step in (0, 5000):
          sess.run(global_step.assign(step))
          sess.run(act_max.assign(6.0))
          # The range update runs with the forward pass; read it afterwards.
          batch_max = sess.run([activation, output],
                               {images: batch})[0].max()
          new_max = sess.run(act_max)
          decay = min(0.999, (1.0 + step) / (10.0 + step))
          self.assertAllClose(new_max, decay * 6.0 + (1 - decay) * batch_max,
                              rtol=1e-5)

  def test_training_sets_weight_ranges_symmetric_or_own(self):
    for symmetric in (True, False):
      with tf.Graph().as_default():
        images, output = self._build(is_training=True)
        quantize.create_training_graph(symmetric_weights=symmetric)
        weights, = [v for v in tf1.global_variables()
                    if v.op.name == 'fc/weights']
        ranges = {v.op.name: v for v in quantize.range_variables()}
        with tf1.Session() as sess:
          sess.run(tf1.global_variables_initializer())
          # Lopsided weights; fc's are not folded, so the range is theirs.
          weights.load(np.random.RandomState(0).uniform(
              -0.1, 0.3, weights.shape), sess)
          values = sess.run(weights)
          sess.run(output, {images: np.zeros([4, 8, 8, 3])})
          low, high = sess.run([ranges['fc/weights_quant/min'],
                                ranges['fc/weights_quant/max']])
      with self.subTest(symmetric=symmetric):
        if symmetric:
          bound = np.abs(values).max()
          self.assertEqual((low, high), (-bound, bound))
        else:
          self.assertEqual((low, high), (values.min(), values.max()))

  def test_rewrite_names(self):
    with tf.Graph().as_default() as graph:
      self._build(is_training=False)
      quantize.create_eval_graph()
    names = {v.op.name.rpartition('/')[0]
             for v in quantize.range_variables(graph)}
    self.assertEqual(names, {
        'conv_bn/weights_quant', 'conv_bn/act_quant',
        'pre_add/weights_quant', 'pre_add/conv_quant', 'pre_add/act_quant',
        'post/weights_quant', 'post/act_quant', 'post_add/add_quant',
        'fc/weights_quant', 'fc/act_quant'})
    fc_relu = [op for op in graph.get_operations()
               if op.type == 'Relu' and op.inputs[0].op.type in ('Add',
                                                                 'AddV2')]
    for op in fc_relu:
      self.assertEqual([c.type for c in op.outputs[0].consumers()],
                       [_FAKE_QUANT])
    self.assertEqual(_count_fake_quants(graph), 10)

  def test_outputs_match_float(self):
    """Eval folding, and training before the delay, keep the function."""
    images = np.random.RandomState(0).normal(size=[4, 8, 8, 3])
    for is_training, rewrite in ((False, quantize.fold_batch_norms),
                                 (True, lambda: quantize.create_training_graph(
                                     quant_delay=5))):
      results = []
      for rewritten in (False, True):
        with tf.Graph().as_default() as graph:
          images_in, output = self._build(is_training)
          if rewritten:
            rewrite()
          variables = sorted(tf1.trainable_variables(),
                             key=lambda v: v.op.name)
          gradients = tf1.gradients(tf.reduce_sum(output * output),
                                    variables)
          with self.session(graph=graph) as sess:
            _load(sess, _model_values(graph))
            results.append(sess.run([output] + gradients,
                                    {images_in: images}))
      self.assertGreater(np.abs(results[0][0]).max(), 1.0)
      for expected, actual in zip(*results):
        self.assertAllClose(expected, actual, rtol=1e-4,
                            atol=1e-4 * np.abs(expected).max())

  def test_eval_output_is_quantized(self):
    with tf.Graph().as_default() as graph:
      images_in, output = self._build(is_training=False)
      quantize.create_eval_graph()
      with self.session(graph=graph) as sess:
        _load(sess, _model_values(graph))
        values = sess.run(output, {images_in: np.random.RandomState(0).normal(
            size=[4, 8, 8, 3])})
    # The last ReLU's range is still its initial [0, 6]: outputs lie on its
    # 256-value grid.
    steps = values / (6.0 / 255)
    self.assertAllClose(steps, np.round(steps), atol=1e-3)
    self.assertLessEqual(values.max(), 6.0)
    self.assertGreater(len(np.unique(values)), 2)


if __name__ == '__main__':
  tf.test.main()
