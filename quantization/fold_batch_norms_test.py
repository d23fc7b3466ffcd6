"""Tests for fold_batch_norms: folded graphs compute the float function."""

import numpy as np

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from quantization import fold_batch_norms
from testing import quantize_test_util as util
from testing import test_data

test_data.use_float32_math()


class FoldBatchNormsTest(tf.test.TestCase):

  def test_folded_eval_graph_matches_float(self):
    images = util.images()
    outputs = []
    for fold in (False, True):
      with tf.Graph().as_default() as graph:
        images_in, logits = util.build_mobilenet(is_training=False)
        if fold:
          self.assertEqual(fold_batch_norms.fold_batch_norms(), 27)
          self.assertEmpty([op.name for op in util.ancestors(logits)
                            if 'BatchNorm' in op.type])
          # Folded batch norms have no consumers: folding again is a no-op.
          self.assertEqual(fold_batch_norms.fold_batch_norms(), 0)
        with self.session(graph=graph) as sess:
          util.load(sess, util.model_values(graph))
          outputs.append(sess.run(logits, {images_in: images}))
    float_logits, folded_logits = outputs
    self.assertGreater(np.abs(float_logits).max(), 1.0)
    self.assertAllClose(float_logits, folded_logits, rtol=1e-4,
                        atol=1e-4 * np.abs(float_logits).max())

  def test_folded_generic_layers_match_float(self):
    util.assert_rewrite_keeps_function(
        self, is_training=False, rewrite=fold_batch_norms.fold_batch_norms)

  def test_folded_training_batch_norm_matches_float(self):
    util.assert_rewrite_keeps_function(
        self, is_training=True, rewrite=fold_batch_norms.fold_batch_norms)


if __name__ == '__main__':
  tf.test.main()
