r"""Evaluates MobileNet V1 checkpoints: top-1 and top-5 on the validation split.

  ./bazel-bin/mobilenet_v1_eval --dataset_dir DIR --checkpoint_dir DIR \
      [--quantize=True] [--continuous]

Counts every validation example exactly once (the final partial batch
included), prints `Accuracy` (top-1) and `Recall_5` (top-5), and writes them
as TensorBoard summaries to --eval_dir. One-shot over the latest checkpoint
by default; with --continuous, evaluates each new checkpoint as training
writes it.
"""

import os
import sys
import time

from absl import flags
import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from training import batch_norm_decay
from model import checkpoint_utils
from runtime import cli
from runtime import errors
from data import records
from model import inference_model
from quantization import weight_rounding

tf1 = tf.compat.v1

FLAGS = flags.FLAGS

flags.DEFINE_string('master', '', 'Session target; empty for this process.')
flags.DEFINE_integer('batch_size', 250, 'Images per evaluation batch.',
                     lower_bound=1)
inference_model.define_flags(
    'Evaluate the quantized graph (batch norms folded, 8-bit '
    'fake quantization with the trained ranges).')
flags.DEFINE_string('eval_dir', '',
                    'Where TensorBoard summaries go; default '
                    '<checkpoint_dir>/eval.')
flags.DEFINE_string('dataset_dir', '',
                    'Directory with validation-*-of-* TFRecords.')
flags.DEFINE_bool('continuous', False,
                  'Keep evaluating each new checkpoint in --checkpoint_dir '
                  'until --timeout_secs pass without one.')
flags.DEFINE_integer('timeout_secs', 3600,
                     'With --continuous: stop after this long without a new '
                     'checkpoint.', lower_bound=1)
flags.DEFINE_bool('skip_corrupt_records', False,
                  'Skip (and count) undecodable records instead of stopping '
                  'with an error.')


class Evaluator(object):
  """The eval graph, built once and run over the split per checkpoint."""

  def __init__(self, quantize_options=None):
    """Builds the graph.

    Args:
      quantize_options: with --quantize, how the checkpoints to evaluate
        were quantized (`inference_model.quantize_options`).
    """
    # The records --skip_corrupt_records dropped; reset for every pass.
    self.skipped_records = records.SkippedRecordCounter()
    self.graph = tf.Graph()
    with self.graph.as_default():
      dataset = records.build_dataset(
          FLAGS.dataset_dir, 'validation', FLAGS.batch_size, FLAGS.image_size,
          is_training=False, skip_corrupt=FLAGS.skip_corrupt_records,
          skip_counter=self.skipped_records)
      self._iterator = tf1.data.make_initializable_iterator(dataset)
      images, labels = self._iterator.get_next()
      logits = inference_model.build(images, FLAGS.num_classes,
                                     FLAGS.depth_multiplier, FLAGS.quantize,
                                     quantize_options)
      self._correct = {
          'Accuracy': tf.math.in_top_k(labels, logits, 1),
          'Recall_5': tf.math.in_top_k(labels, logits, 5),
      }
      self._variables = tf1.global_variables()
      self._saver = tf1.train.Saver(self._variables)
    self.graph.finalize()

  def evaluate(self, checkpoint):
    """Returns ({metric: value}, examples, global step) for a checkpoint.

    The global step is None for a checkpoint without one (a release).
    """
    inference_model.verify_checkpoint(
        checkpoint, self.graph, self._variables, FLAGS.num_classes,
        FLAGS.depth_multiplier, FLAGS.quantize)
    with tf1.Session(FLAGS.master, graph=self.graph) as session:
      _restore(self._saver, session, checkpoint)
      session.run(self._iterator.initializer)
      totals = {name: 0 for name in self._correct}
      examples = 0
      while True:
        try:
          batch = session.run(self._correct)
        except tf.errors.OutOfRangeError:
          break
        for name, correct in batch.items():
          totals[name] += int(np.sum(correct))
        examples += len(batch['Accuracy'])
    if not examples:
      raise errors.UserError('the validation split of %s has no examples' %
                          FLAGS.dataset_dir)
    return ({n: t / examples for n, t in totals.items()}, examples,
            checkpoint_utils.saved_global_step(checkpoint))


def _restore(saver, session, checkpoint):
  """saver.restore, naming the damaged file when the checkpoint is damaged.

  Raises:
    checkpoint_utils.CheckpointError: the checkpoint does not read back.
  """
  try:
    saver.restore(session, checkpoint)
  except tf.errors.OpError:
    why = checkpoint_utils.damage(checkpoint)
    if why is None:
      raise
    raise checkpoint_utils.CheckpointError(
        'checkpoint %s cannot be restored: %s' % (checkpoint, why)) from None


def _warn(text):
  print('mobilenet_v1_eval: warning: %s' % text, file=sys.stderr, flush=True)


def write_summaries(eval_dir, metrics, step):
  # The v1 writer needs no TensorBoard package (TF 2.21 does not pull it in).
  with tf.Graph().as_default():
    writer = tf1.summary.FileWriter(eval_dir)
    writer.add_summary(tf1.Summary(value=[
        tf1.Summary.Value(tag='eval/%s' % name, simple_value=value)
        for name, value in metrics.items()]), step)
    writer.close()


def _checkpoints():
  """Yields the checkpoints to evaluate, as the flags ask."""
  if FLAGS.checkpoint_path:
    yield checkpoint_utils.resolve(FLAGS.checkpoint_path)
    return
  if not FLAGS.continuous:
    yield checkpoint_utils.resolve(FLAGS.checkpoint_dir)
    return
  print('Waiting for checkpoints in %s (up to %d s between them).' %
        (FLAGS.checkpoint_dir, FLAGS.timeout_secs), flush=True)
  for checkpoint in checkpoint_utils.checkpoints_iterator(
      FLAGS.checkpoint_dir, timeout=FLAGS.timeout_secs):
    yield checkpoint


def main(argv):
  del argv  # unused
  if not FLAGS.dataset_dir:
    raise errors.UserError('--dataset_dir is required: a directory of '
                        'validation-*-of-* TFRecords')
  if not (FLAGS.checkpoint_dir or FLAGS.checkpoint_path):
    raise errors.UserError('give --checkpoint_dir (evaluates the latest '
                        'checkpoint) or --checkpoint_path')
  eval_dir = FLAGS.eval_dir or os.path.join(
      FLAGS.checkpoint_dir or os.path.dirname(FLAGS.checkpoint_path), 'eval')
  # One graph per way of quantizing: a watched directory keeps one.
  evaluators = {}
  for checkpoint in _checkpoints():
    start = time.time()
    if not FLAGS.quantize and inference_model.has_quantization_ranges(
        checkpoint):
      _warn('%s was trained with --quantize; evaluating it as a float model '
            '(add --quantize=True to measure the quantized model)' %
            os.path.basename(checkpoint))
    options = (inference_model.quantize_options(checkpoint)
               if FLAGS.quantize else {})
    key = tuple(sorted(options.items()))
    if key not in evaluators:
      evaluators[key] = Evaluator(options)
    evaluators[key].skipped_records.reset()
    try:
      metrics, examples, step = evaluators[key].evaluate(checkpoint)
    except checkpoint_utils.CheckpointError as e:
      # A training run may have written a bad checkpoint; watching goes on.
      if not FLAGS.continuous:
        raise
      _warn('skipping %s' % e)
      continue
    for warning in (batch_norm_decay.unconverged_warning(checkpoint, step),
                    FLAGS.quantize and
                    weight_rounding.unrounded_warning(checkpoint)):
      if warning:
        _warn(warning)
    write_summaries(eval_dir, metrics, step)
    skipped = evaluators[key].skipped_records.count
    print('%s (%s): Accuracy %.4f  Recall_5 %.4f  on %d examples '
          '(%.1f s)%s' % (os.path.basename(checkpoint),
                          checkpoint_utils.describe_step(step),
                          metrics['Accuracy'], metrics['Recall_5'], examples,
                          time.time() - start,
                          ', %d corrupt records skipped' % skipped
                          if skipped else ''), flush=True)


if __name__ == '__main__':
  cli.run(main)
