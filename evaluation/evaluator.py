"""Evaluates MobileNet V1 checkpoints: top-1 and top-5 on the validation split.

Counts every validation example exactly once (the final partial batch
included), prints `Accuracy` (top-1) and `Recall_5` (top-5), and writes them
as TensorBoard summaries. One-shot over a single checkpoint, or continuous:
each new checkpoint of a directory as training writes it.
"""

import dataclasses
import os
import sys
import time

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import records
from model import checkpoint_utils
from model import inference_model
from quantization import weight_rounding
from runtime import errors
from training import batch_norm_decay

tf1 = tf.compat.v1


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate, on what, and how.

  Attributes:
    dataset_dir: directory with validation-*-of-* TFRecords.
    checkpoint_dir: directory of training checkpoints; its latest one (or,
      with `continuous`, each new one) is evaluated.
    checkpoint_path: a specific checkpoint to evaluate instead.
    eval_dir: where TensorBoard summaries go; empty for
      <checkpoint directory>/eval.
    batch_size: images per evaluation batch.
    num_classes: classes of the logits layer.
    image_size: input resolution (square).
    depth_multiplier: width multiplier.
    quantize: evaluate the quantized eval graph (folded batch norms, 8-bit
      fake quantization with the trained ranges).
    master: session target; empty for this process.
    continuous: keep evaluating each new checkpoint in `checkpoint_dir`
      until `timeout_secs` pass without one.
    timeout_secs: with `continuous`, how long to wait for a new checkpoint.
    skip_corrupt_records: skip (and count) undecodable records instead of
      stopping with an error.
  """
  dataset_dir: str
  checkpoint_dir: str
  checkpoint_path: str
  eval_dir: str
  batch_size: int
  num_classes: int
  image_size: int
  depth_multiplier: float
  quantize: bool
  master: str
  continuous: bool
  timeout_secs: int
  skip_corrupt_records: bool

  def __post_init__(self):
    """Checks that there is data and a checkpoint to evaluate.

    Raises:
      errors.UserError: either is missing.
    """
    if not self.dataset_dir:
      raise errors.UserError('--dataset_dir is required: a directory of '
                             'validation-*-of-* TFRecords')
    if not (self.checkpoint_dir or self.checkpoint_path):
      raise errors.UserError('give --checkpoint_dir (evaluates the latest '
                             'checkpoint) or --checkpoint_path')

  @property
  def summary_dir(self):
    """Where the TensorBoard summaries go: `eval_dir` or its default."""
    return self.eval_dir or os.path.join(
        self.checkpoint_dir or os.path.dirname(self.checkpoint_path), 'eval')


class Evaluator(object):
  """The eval graph, built once and run over the split per checkpoint."""

  def __init__(self, config, quantize_options=None):
    """Builds the graph.

    Args:
      config: an EvalConfig.
      quantize_options: with `config.quantize`, how the checkpoints to
        evaluate were quantized (`inference_model.quantize_options`).
    """
    self._config = config
    # The records --skip_corrupt_records dropped; reset for every pass.
    self.skipped_records = records.SkippedRecordCounter()
    self.graph = tf.Graph()
    with self.graph.as_default():
      dataset = records.build_dataset(
          config.dataset_dir, 'validation', config.batch_size,
          config.image_size, is_training=False,
          skip_corrupt=config.skip_corrupt_records,
          skip_counter=self.skipped_records)
      self._iterator = tf1.data.make_initializable_iterator(dataset)
      images, labels = self._iterator.get_next()
      logits = inference_model.build(images, config.num_classes,
                                     config.depth_multiplier, config.quantize,
                                     quantize_options)
      self._correct = {
          'Accuracy': tf.math.in_top_k(labels, logits, 1),
          'Recall_5': tf.math.in_top_k(labels, logits, 5),
      }
      self._variables = tf1.global_variables()
      self._saver = tf1.train.Saver(self._variables)
    self.graph.finalize()

  def evaluate(self, checkpoint):
    """Runs the graph restored from `checkpoint` over the validation split.

    Args:
      checkpoint: a checkpoint prefix.

    Returns:
      ({metric: value}, examples, global step); the global step is None for
      a checkpoint without one (a release).

    Raises:
      checkpoint_utils.CheckpointError: the checkpoint does not fit the
        graph or cannot be restored.
      errors.UserError: the split has no examples.
    """
    config = self._config
    inference_model.verify_checkpoint(
        checkpoint, self.graph, self._variables, config.num_classes,
        config.depth_multiplier, config.quantize)
    with tf1.Session(config.master, graph=self.graph) as session:
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
                             config.dataset_dir)
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
  """Writes `metrics` as TensorBoard scalars eval/<name> at `step`.

  Args:
    eval_dir: the summaries' directory.
    metrics: {name: value}.
    step: the global step, or None.
  """
  # The v1 writer needs no TensorBoard package (TF 2.21 does not pull it in).
  with tf.Graph().as_default():
    writer = tf1.summary.FileWriter(eval_dir)
    writer.add_summary(tf1.Summary(value=[
        tf1.Summary.Value(tag='eval/%s' % name, simple_value=value)
        for name, value in metrics.items()]), step)
    writer.close()


def _checkpoints(config):
  """Yields the checkpoints to evaluate, as `config` asks."""
  if config.checkpoint_path:
    yield checkpoint_utils.resolve(config.checkpoint_path)
    return
  if not config.continuous:
    yield checkpoint_utils.resolve(config.checkpoint_dir)
    return
  print('Waiting for checkpoints in %s (up to %d s between them).' %
        (config.checkpoint_dir, config.timeout_secs), flush=True)
  for checkpoint in checkpoint_utils.checkpoints_iterator(
      config.checkpoint_dir, timeout=config.timeout_secs):
    yield checkpoint


def evaluate_checkpoints(config):
  """Evaluates the checkpoints `config` names, printing a line for each.

  Writes each checkpoint's metrics as summaries to `config.summary_dir`.
  In continuous mode, a checkpoint that does not read is skipped with a
  warning (a training run may have written a bad one).

  Args:
    config: an EvalConfig.

  Raises:
    checkpoint_utils.CheckpointError: outside continuous mode, the
      checkpoint does not fit the model or cannot be restored.
    errors.UserError: no checkpoint, or a problem with the dataset.
  """
  # One graph per way of quantizing: a watched directory keeps one.
  evaluators = {}
  for checkpoint in _checkpoints(config):
    start = time.time()
    if not config.quantize and inference_model.has_quantization_ranges(
        checkpoint):
      _warn('%s was trained with --quantize; evaluating it as a float model '
            '(add --quantize=True to measure the quantized model)' %
            os.path.basename(checkpoint))
    options = (inference_model.quantize_options(checkpoint)
               if config.quantize else {})
    key = tuple(sorted(options.items()))
    if key not in evaluators:
      evaluators[key] = Evaluator(config, options)
    evaluators[key].skipped_records.reset()
    try:
      metrics, examples, step = evaluators[key].evaluate(checkpoint)
    except checkpoint_utils.CheckpointError as e:
      # A training run may have written a bad checkpoint; watching goes on.
      if not config.continuous:
        raise
      _warn('skipping %s' % e)
      continue
    for warning in (batch_norm_decay.unconverged_warning(checkpoint, step),
                    config.quantize and
                    weight_rounding.unrounded_warning(checkpoint)):
      if warning:
        _warn(warning)
    write_summaries(config.summary_dir, metrics, step)
    skipped = evaluators[key].skipped_records.count
    print('%s (%s): Accuracy %.4f  Recall_5 %.4f  on %d examples '
          '(%.1f s)%s' % (os.path.basename(checkpoint),
                          checkpoint_utils.describe_step(step),
                          metrics['Accuracy'], metrics['Recall_5'], examples,
                          time.time() - start,
                          ', %d corrupt records skipped' % skipped
                          if skipped else ''), flush=True)
