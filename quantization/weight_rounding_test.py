"""Tests for weight_rounding: the grid, the rounding, a rounded checkpoint."""

import itertools
import os

import numpy as np

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from training import batch_norm_decay
from model import inference_model
from quantization import quantize
from testing import quantize_test_util as qtu
from testing import test_data
from quantization import weight_rounding

test_data.use_float32_math()
tf1 = tf.compat.v1


def rounding_errors(weights, covariance, grid):
  """Output errors of every floor/ceil choice of each row: [G, R, 2^K]."""
  low = np.floor((weights - grid.low) / grid.scale) * grid.scale + grid.low
  choices = np.array(list(itertools.product([0, 1], repeat=weights.shape[2])))
  candidates = np.clip(low[:, :, None, :] + choices * grid.scale, grid.low,
                       grid.high)
  error = candidates - weights[:, :, None, :]
  return np.einsum('grci,gij,grcj->grc', error, covariance, error)


class GridTest(tf.test.TestCase):

  def test_nearest_is_tensorflows_fake_quant(self):
    rng = np.random.RandomState(0)
    for minimum, maximum in ((-1.0, 1.0), (-0.3, 2.7), (-5.0, 0.01),
                             (0.0, 3.0), (-0.123, 0.456)):
      values = rng.uniform(1.2 * minimum - 0.1, 1.2 * maximum + 0.1,
                           size=1000).astype(np.float32)
      want = tf.quantization.fake_quant_with_min_max_vars(
          values, minimum, maximum, num_bits=8, narrow_range=True).numpy()
      grid = weight_rounding.Grid(np.float32(minimum), np.float32(maximum))
      # float64 here, float32 there: the same level, to float32's precision.
      self.assertAllClose(grid.nearest(values.astype(np.float64)), want,
                          rtol=0, atol=2 * np.spacing(np.float32(
                              max(-grid.low, grid.high))))
      self.assertEqual(np.sum(np.abs(grid.nearest(values) - want) >
                              grid.scale / 2), 0)


class RoundWeightsTest(tf.test.TestCase):

  def test_uncorrelated_inputs_round_to_nearest(self):
    # With a diagonal covariance each weight's error counts alone, so the
    # best rounding is the nearest one.
    rng = np.random.RandomState(1)
    weights = rng.normal(size=[3, 4, 6])
    covariance = np.stack([np.diag(rng.uniform(0.1, 3, 6)) for _ in range(3)])
    grid = weight_rounding.Grid(-3.0, 3.0)
    self.assertAllEqual(
        weight_rounding.round_weights(weights, covariance, grid),
        grid.nearest(weights))

  def test_correlated_inputs_share_the_error(self):
    # Two identical inputs: weights 0.4 and 0.4 on a grid of step 1 round to
    # 0 and 0 (output error (0.8 x)^2); rounding one up leaves (0.2 x)^2.
    grid = weight_rounding.Grid(-127.0, 127.0)
    self.assertAlmostEqual(grid.scale, 1.0)
    weights = np.array([[[0.4, 0.4]]])
    covariance = np.ones([1, 2, 2])
    rounded = weight_rounding.round_weights(weights, covariance, grid)
    self.assertAllClose(np.sort(rounded[0, 0]), [0.0, 1.0])
    self.assertAllClose(
        weight_rounding.output_error(rounded, weights, covariance),
        [[0.04]])

  def test_never_worse_than_nearest_and_close_to_the_best(self):
    rng = np.random.RandomState(2)
    groups, rows, inputs = 4, 8, 6
    # Correlated inputs of unequal scales, as a layer's channels are.
    mixing = rng.normal(size=[groups, inputs, inputs]) * rng.uniform(
        0.1, 3, size=[groups, 1, inputs])
    covariance = np.einsum('gik,gjk->gij', mixing, mixing)
    weights = rng.normal(scale=0.02, size=[groups, rows, inputs])
    grid = weight_rounding.Grid(-1.0, 1.0)  # a few levels per weight
    rounded = weight_rounding.round_weights(weights, covariance, grid)
    self.assertAllEqual(grid.nearest(rounded), rounded)  # on the grid
    error = weight_rounding.output_error(rounded, weights, covariance)
    nearest = weight_rounding.output_error(grid.nearest(weights), weights,
                                           covariance)
    best = rounding_errors(weights, covariance, grid).min(axis=2)
    self.assertTrue(np.all(error <= nearest * (1 + 1e-12)))
    # Over all rows it recovers most of what nearest rounding gives away to
    # the best floor/ceil choice.
    self.assertLess(np.sum(error - best), 0.5 * np.sum(nearest - best))


class RoundedCheckpointTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.checkpoint = os.path.join(
        tf.compat.v1.test.get_temp_dir(), 'per_tensor', 'model.ckpt')

  def layer_outputs(self, checkpoint, images, layer_inputs=None):
    """Each layer's input and output (bias added) in the eval graph.

    With `layer_inputs` ({layer name: input value}) each layer computes from
    the given input; otherwise from the model's images with its weights
    left float (the network `weight_rounding` measures).
    """
    with tf.Graph().as_default() as graph:
      image_input = tf1.placeholder(tf.float32, images.shape)
      inference_model.build(image_input, qtu.NUM_CLASSES, 0.25, True,
                            inference_model.quantize_options(checkpoint))
      layers = [op for op in graph.get_operations()
                if op.type in ('Conv2D', 'DepthwiseConv2dNative') and
                op.inputs[1].op.type == qtu.FAKE_QUANT]
      outputs = {op.name: op.outputs[0].consumers()[0].outputs[0]
                 for op in layers}
      for output in outputs.values():
        self.assertEqual(output.op.type, 'BiasAdd')
      with tf1.Session() as session:
        tf1.train.Saver().restore(session, checkpoint)
        feed = {image_input: images}
        if layer_inputs is None:
          feed.update({op.inputs[1]: session.run(op.inputs[1].op.inputs[0])
                       for op in layers})
        else:
          feed.update({op.inputs[0]: layer_inputs[op.name] for op in layers})
        inputs, output_values, weights = session.run(
            ({op.name: op.inputs[0] for op in layers}, outputs,
             {op.name: (op.inputs[1], op.inputs[1].op.inputs[0])
              for op in layers}), feed)
        # The precision of the difference of two output channel biases:
        # each is rounded to TFLite's int32 grid (tflite_emulation.
        # round_biases), whose step is input scale times weight scale, from
        # a float32 moving mean that the multiplier scales.
        reader = tf.train.load_checkpoint(checkpoint)
        bias_precision = {}
        for op in layers:
          bias = outputs[op.name].op.inputs[1]
          self.assertEqual(bias.op.name.rpartition('/')[0].rpartition('/')[2],
                           'bias_quant')
          precision = session.run(bias.op.inputs[1]) + 2 * np.spacing(
              np.abs(session.run(bias)))
          folding = op.inputs[1].op.inputs[0].op
          if folding.type == 'Mul':
            scope = folding.inputs[0].op.inputs[0].op.name.rpartition('/')[0]
            mean = reader.get_tensor(scope + '/BatchNorm/moving_mean')
            precision = precision + 2 * np.abs(np.reshape(
                session.run(folding.inputs[1]), [-1])) * np.spacing(
                    np.abs(mean))
          bias_precision[op.name] = precision
        return inputs, output_values, weights, bias_precision

  def test_rounded_layers_keep_the_float_means_with_less_error(self):
    qtu.train_and_save(self, self.checkpoint, steps=30,
                       weights=quantize.ASYMMETRIC)
    images = qtu.to_float(qtu.colour_task(32, seed=7)[0])
    inputs, float_outputs, _, _ = self.layer_outputs(self.checkpoint,
                                                     images)
    _, nearest_outputs, _, _ = self.layer_outputs(self.checkpoint, images,
                                                  inputs)

    values, summary = weight_rounding.rounded_values(
        self.checkpoint,
        lambda: tf.data.Dataset.from_tensor_slices(images).batch(8),
        qtu.NUM_CLASSES, 0.25)
    self.assertEqual(summary['layers'], 28)
    self.assertEqual(summary['examples'], 32)
    # Its training graph records the checkpoint's averages kept: until it is
    # rounded, evaluation and export warn.
    def record(decay):
      with tf.Graph().as_default():
        batch_norm_decay.record(decay, fine_tuned=True)
        tf1.train.export_meta_graph(self.checkpoint + '.meta')

    record(0.99)  # averages that track the quantized layers: not to round
    self.assertFalse(weight_rounding.needs_rounding(self.checkpoint))
    self.assertIsNone(weight_rounding.unrounded_warning(self.checkpoint))
    record(batch_norm_decay.KEEP)
    self.assertTrue(weight_rounding.needs_rounding(self.checkpoint))
    self.assertIn('before its weights were rounded',
                  weight_rounding.unrounded_warning(self.checkpoint))
    weight_rounding.write_rounded(self.checkpoint, values)
    self.assertTrue(weight_rounding.is_rounded(self.checkpoint))
    self.assertFalse(weight_rounding.needs_rounding(self.checkpoint))
    self.assertIsNone(weight_rounding.unrounded_warning(self.checkpoint))
    _, rounded_outputs, weights, bias_precision = self.layer_outputs(
        self.checkpoint, images, inputs)

    total_nearest = total_rounded = 0.0
    largest_nearest_shift = 0.0
    for name, float_output in float_outputs.items():
      with self.subTest(name):
        quantized, unquantized = weights[name]
        # On the grid: the fake quant leaves the (refolded) weights be.
        self.assertAllClose(quantized, unquantized, rtol=1e-5, atol=1e-6)
        axes = tuple(range(float_output.ndim - 1))
        rounded_shift = np.mean(rounded_outputs[name] - float_output, axes)
        nearest_shift = np.mean(nearest_outputs[name] - float_output, axes)
        scale = np.std(float_output, axes) + 1e-3
        # The means are the float layer's, to the precision of the biases
        # and of float32 sums over the outputs ...
        precision = bias_precision[name] + 1e-6 * np.max(
            np.abs(float_output), axes)
        self.assertAllLessEqual(np.abs(rounded_shift) - precision, 0.0)
        largest_nearest_shift = max(largest_nearest_shift,
                                    np.max(np.abs(nearest_shift / scale)))
        centred = lambda x: x - np.mean(x, axes)
        rounded_error = np.sum(centred(rounded_outputs[name] -
                                       float_output) ** 2)
        nearest_error = np.sum(centred(nearest_outputs[name] -
                                       float_output) ** 2)
        # Never worse than nearest rounding, row by row hence in sum.
        self.assertLessEqual(rounded_error, nearest_error * (1 + 1e-4))
        total_nearest += nearest_error
        total_rounded += rounded_error
    # ... where nearest rounding shifts them.
    self.assertGreater(largest_nearest_shift, 1e-2)
    # Better than nearest rounding wherever a row's nearest is not its best.
    self.assertLess(total_rounded, total_nearest * (1 - 1e-3))


if __name__ == '__main__':
  tf.test.main()
