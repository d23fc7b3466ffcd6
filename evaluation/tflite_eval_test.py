"""Tests tflite_eval's config checks, its top-k counting and input mapping."""

import dataclasses

from absl.testing import absltest
import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from evaluation import tflite_eval
from runtime import errors


def valid_config(**changes):
  """A TFLiteEvalConfig that passes its checks, with `changes` applied."""
  config = tflite_eval.TFLiteEvalConfig(
      tflite_path='/m.tflite', dataset_dir='/data', split='validation',
      num_threads=None, latency_runs=0, warmup_runs=5)
  return dataclasses.replace(config, **changes)


class TFLiteEvalConfigTest(absltest.TestCase):

  def test_requires_a_model(self):
    with self.assertRaisesRegex(errors.UserError,
                                '^--tflite_path is required'):
      valid_config(tflite_path='')

  def test_requires_something_to_measure(self):
    with self.assertRaisesRegex(errors.UserError, '^nothing to do'):
      valid_config(dataset_dir='')
    self.assertEqual(valid_config(dataset_dir='', latency_runs=3)
                     .latency_runs, 3)


class InTopKTest(absltest.TestCase):

  def test_counts_as_tensorflow_does_ties_included(self):
    # Scores drawn from few values tie often, at every boundary.
    rng = np.random.RandomState(0)
    scores = rng.randint(0, 4, [200, 7]).astype(np.float32)
    labels = rng.randint(0, 7, 200)
    for k in (1, 5):
      expected = tf.math.in_top_k(labels, scores, k).numpy()
      ours = [tflite_eval.in_top_k(s, label, k)
              for s, label in zip(scores, labels)]
      self.assertEqual(list(ours), list(expected), k)


class QuantizeInputTest(absltest.TestCase):

  def test_uint8_input_is_the_released_models_pixel(self):
    # The released quantized models: scale 1/128, zero point 128.
    details = {'dtype': np.uint8, 'quantization': (1 / 128, 128)}
    images = np.array([-1, -0.5, 0, 127 / 128, 1], np.float32)
    codes = tflite_eval.quantize_input(images, details)
    self.assertEqual(codes.dtype, np.uint8)
    # 1 would be 256: clipped to the type's range.
    self.assertEqual(codes.tolist(), [0, 64, 128, 255, 255])

  def test_float_input_is_unchanged(self):
    images = np.array([-1, 0.25, 1], np.float32)
    converted = tflite_eval.quantize_input(images, {'dtype': np.float32})
    self.assertEqual(converted.dtype, np.float32)
    self.assertEqual(converted.tolist(), images.tolist())


if __name__ == '__main__':
  absltest.main()
