r"""Evaluates a TFLite MobileNet V1 model: top-1/top-5, and latency.

  ./bazel-bin/mobilenet_v1_tflite_eval --tflite_path M.tflite --dataset_dir DIR
  ./bazel-bin/mobilenet_v1_tflite_eval --tflite_path M.tflite --latency_runs=100

Accuracy: every example of the validation split once, through the same
preprocessing as mobilenet_v1_eval (central crop, resize, [-1, 1]). A model
with an integer input gets the image quantized with the model's own input
scale and zero point; the model's input shape gives the image size. Prints
`Accuracy` (top-1) and `Recall_5` (top-5) counted as mobilenet_v1_eval counts
them: a class tied with the label's score at the top-k boundary counts as in
the top k.

Latency: median and 90th percentile milliseconds per image over
--latency_runs invocations on one image, with one thread and with every core.
"""

from absl import flags
from runtime import slim_compat  # pylint: disable=unused-import

from data import records
from evaluation import tflite_eval
from runtime import cli

FLAGS = flags.FLAGS

flags.DEFINE_string('tflite_path', '', 'The .tflite model to evaluate.')
flags.DEFINE_string('dataset_dir', '',
                    'Directory with validation-*-of-* TFRecords; accuracy is '
                    'measured when given.')
flags.DEFINE_string('split', records.VALIDATION_SPLIT,
                    'Split of --dataset_dir to evaluate on.')
flags.DEFINE_integer('num_threads', None,
                     'Interpreter threads for the accuracy run; default every '
                     'core this process may use.', lower_bound=1)
flags.DEFINE_integer('latency_runs', 0,
                     'Timed single-image invocations per thread setting; 0 '
                     'skips the latency measurement.', lower_bound=0)
flags.DEFINE_integer('warmup_runs', 5,
                     'Untimed invocations before the timed ones (memory '
                     'planning, weight packing, caches).', lower_bound=0)


def config_from_flags():
  """The TFLiteEvalConfig the flags describe.

  Raises:
    errors.UserError: no model, or nothing to measure.
  """
  return tflite_eval.TFLiteEvalConfig(
      tflite_path=FLAGS.tflite_path,
      dataset_dir=FLAGS.dataset_dir,
      split=FLAGS.split,
      num_threads=FLAGS.num_threads,
      latency_runs=FLAGS.latency_runs,
      warmup_runs=FLAGS.warmup_runs)


def main(argv):
  del argv  # unused
  tflite_eval.measure(config_from_flags())


if __name__ == '__main__':
  cli.run(main)
