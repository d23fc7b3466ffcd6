"""Tests for range_calibration: ranges from the weights and sample inputs."""

import numpy as np

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from quantization import quantize
from testing import range_calibration
from testing import test_data

test_data.use_float32_math()

tf1 = tf.compat.v1


class RangeCalibrationTest(tf.test.TestCase):

  def test_ranges_are_the_weights_and_activations_extremes(self):
    for scheme in (quantize.SYMMETRIC, quantize.PER_CHANNEL):
      with self.subTest(scheme=scheme):
        values = self._calibrated_ranges(scheme)
        # Symmetric about zero, narrow range. Per tensor: a step of
        # 1.27 / 127 = 0.01, on which every weight lies. Per channel: the
        # first output channel's range is that one, the second's its own.
        self.assertAllClose(values['fc/weights_quant'],
                            [[-1.27, -0.4], [1.27, 0.4]]
                            if scheme == quantize.PER_CHANNEL
                            else [-1.27, 1.27])
        # ReLU(x W) is [1.47, 0.15] for the first batch and [2.24, 0] for the
        # second (the first channel's weights are on either grid, so
        # quantizing them changes nothing): the range spans both, and holds
        # 0 as TFLite needs.
        self.assertAllClose(values['fc/act_quant'], [0.0, 2.24], atol=1e-5)

  def _calibrated_ranges(self, scheme):
    """{scope: [min, max]} calibrated on a one-layer graph."""
    with tf.Graph().as_default() as graph:
      inputs = tf1.placeholder(tf.float32, [None, 3])
      with tf1.variable_scope('fc'):
        weights = tf1.get_variable('weights', initializer=np.array(
            [[1.27, -0.25], [0.1, 0.2], [-0.3, 0.4]], np.float32))
        tf.identity(tf.nn.relu(tf.matmul(inputs, weights)))
      quantize.create_eval_graph(weights=scheme)
      ranges = quantize.range_variables_by_scope(graph)
      batches = [np.array([[1.0, 2.0, 0.0]], np.float32),
                 np.array([[2.0, 0.0, 1.0]], np.float32)]
      with self.session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        range_calibration.calibrate_ranges(
            sess, [{inputs: batch} for batch in batches])
        values = {scope: sess.run([v['min'], v['max']])
                  for scope, v in ranges.items()}
    return values


if __name__ == '__main__':
  tf.test.main()
