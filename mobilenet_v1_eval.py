r"""Evaluates MobileNet V1 checkpoints: top-1 and top-5 on the validation split.

  ./bazel-bin/mobilenet_v1_eval --dataset_dir DIR --checkpoint_dir DIR \
      [--quantize=True] [--continuous]

Counts every validation example exactly once (the final partial batch
included), prints `Accuracy` (top-1) and `Recall_5` (top-5), and writes them
as TensorBoard summaries to --eval_dir. One-shot over the latest checkpoint
by default; with --continuous, evaluates each new checkpoint as training
writes it.
"""

from absl import flags
from runtime import slim_compat  # pylint: disable=unused-import

from evaluation import evaluator
import model_flags
from runtime import cli

FLAGS = flags.FLAGS

flags.DEFINE_string('master', '', 'Session target; empty for this process.')
flags.DEFINE_integer('batch_size', 250, 'Images per evaluation batch.',
                     lower_bound=1)
model_flags.define_checkpoint_flags()
model_flags.define_model_flags(
    'Evaluate the quantized graph (batch norms folded, 8-bit '
    'fake quantization with the trained ranges).')
flags.adopt_module_key_flags(model_flags)
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


def config_from_flags():
  """The EvalConfig the flags describe.

  Raises:
    errors.UserError: no dataset or no checkpoint given.
  """
  return evaluator.EvalConfig(
      dataset_dir=FLAGS.dataset_dir,
      checkpoint_dir=FLAGS.checkpoint_dir,
      checkpoint_path=FLAGS.checkpoint_path,
      eval_dir=FLAGS.eval_dir,
      batch_size=FLAGS.batch_size,
      num_classes=FLAGS.num_classes,
      image_size=FLAGS.image_size,
      depth_multiplier=FLAGS.depth_multiplier,
      quantize=FLAGS.quantize,
      master=FLAGS.master,
      continuous=FLAGS.continuous,
      timeout_secs=FLAGS.timeout_secs,
      skip_corrupt_records=FLAGS.skip_corrupt_records)


def main(argv):
  del argv  # unused
  evaluator.evaluate_checkpoints(config_from_flags())


if __name__ == '__main__':
  cli.run(main)
