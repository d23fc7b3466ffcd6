r"""Exports a MobileNet V1 checkpoint as the released tarballs bundled it.

  ./bazel-bin/mobilenet_v1_export --checkpoint_dir DIR --output_dir OUT \
      [--depth_multiplier=1.0 --image_size=224 --num_classes=1001] \
      [--quantize=True] [--post_training=dynamic,float16,int8 --dataset_dir D]

writes into --output_dir, with NAME as in the seed's table
(`mobilenet_v1_1.0_224`, `mobilenet_v1_0.25_128_quant`, ...):

  NAME.ckpt.*          the model's variables (quantization ranges included)
                       and the global step if the checkpoint has one, without
                       optimizer slots. The step tells which training step
                       the bundle comes from; fine-tuning from it resets the
                       step anyway.
  NAME_eval.pbtxt      the inference graph (the quantized eval graph with
                       --quantize) as a text GraphDef, variables unfrozen.
  NAME_frozen.pb       the same graph with variables folded into constants,
                       cut down to what the output needs: no variables, no
                       assign or initializer ops.
  NAME_info.txt        input and output names, shapes and types, and the
                       TFLite model's quantization parameters.
  NAME.tflite          the model to deploy. float32 for a float model. For a
                       --quantize model trained with per-channel weights
                       (mobilenet_v1_train's default): full-integer int8
                       inside (TFLite's int8 scheme, per-axis weight scales;
                       XNNPACK runs it), with uint8 input and output as the
                       released _quant models have (int8 with
                       --quantized_io_type=int8). For one trained with
                       per-tensor weights: uint8 throughout, as
                       contrib.quantize's models are.
  NAME_int8.tflite     per-tensor --quantize models with symmetric weight
                       ranges (--weight_quantization=symmetric): the uint8
                       model made int8 inside (tflite_int8), with the same
                       uint8 input and output. It computes the same numbers,
                       and XNNPACK runs int8, not uint8.

Both graphs take `input`, float32 [1, size, size, 3] with pixels mapped to
[-1, 1], and produce `MobilenetV1/Predictions/Reshape_1`, the softmax
[1, num_classes]: the names and the batch of 1 of the released frozen
graphs, which is what TFLite runs on a device. Float models take
(pixel - 127.5) / 127.5, as evaluation preprocesses images. Quantized models
have the input convention of Google's released quantized models, mean 128
and std 128: the uint8 TFLite input is the pixel itself, standing for
(pixel - 128) / 128 in [-1, 127/128], which is what the eval graph rounds
its float input to (tflite_emulation.quantize_input).

--post_training (float models only) also writes post-training quantized
variants of the float TFLite model: NAME_ptq_dynamic.tflite (8-bit weights,
float activations), NAME_ptq_float16.tflite (float16 weights) and
NAME_ptq_int8.tflite (fully integer, int8 input and output, calibrated on
--calibration_examples images of --dataset_dir's --calibration_split with the
evaluation preprocessing).

Export builds the same graph that mobilenet_v1_eval measures
(model/inference_model.py), from the same model flags (model_flags.py); the
library is in export/.
"""

from absl import flags
from runtime import slim_compat  # pylint: disable=unused-import

from data import records
from export import bundle
from export import convert
import model_flags
from runtime import cli

FLAGS = flags.FLAGS

model_flags.define_checkpoint_flags()
model_flags.define_model_flags(
    'The checkpoint was trained with --quantize: export the '
    'quantized eval graph and a fully uint8 TFLite model.')
flags.adopt_module_key_flags(model_flags)
flags.DEFINE_string('dataset_dir', '',
                    'TFRecords to calibrate --post_training=int8 on.')

flags.DEFINE_string('output_dir', '',
                    'Directory to write the bundle into (created if needed; '
                    'files of the same name are overwritten).')
flags.DEFINE_string('model_name', '',
                    'Base name of the files; default mobilenet_v1_<depth '
                    'multiplier>_<image size>[_quant], as the released '
                    'models are named.')
flags.DEFINE_list('post_training', [],
                  'Comma-separated post-training quantized variants of a '
                  'float model to write as well: dynamic (8-bit weights), '
                  'float16 (16-bit weights), int8 (fully integer; needs '
                  '--dataset_dir for calibration).')
flags.DEFINE_enum('quantized_io_type', convert.UINT8,
                  [convert.UINT8, convert.INT8],
                  'Input and output type of the int8 .tflite of a model '
                  'trained with per-channel weights (--weight_quantization='
                  'per_channel, the default): uint8 takes pixel values as '
                  'Google\'s released _quant models do; int8 takes them '
                  'minus 128.')
flags.DEFINE_integer('calibration_examples', 200,
                     'Images the int8 post-training quantization measures '
                     'activation ranges on.', lower_bound=1)
flags.DEFINE_string('calibration_split', records.TRAIN_SPLIT,
                    'Split of --dataset_dir the int8 calibration images come '
                    'from.')


def config_from_flags():
  """The ExportConfig the flags describe.

  Raises:
    errors.UserError: flags that cannot work together.
  """
  return bundle.ExportConfig(
      checkpoint_dir=FLAGS.checkpoint_dir,
      checkpoint_path=FLAGS.checkpoint_path,
      output_dir=FLAGS.output_dir,
      model_name=FLAGS.model_name,
      num_classes=FLAGS.num_classes,
      image_size=FLAGS.image_size,
      depth_multiplier=FLAGS.depth_multiplier,
      quantize=FLAGS.quantize,
      post_training=tuple(FLAGS.post_training),
      quantized_io_type=FLAGS.quantized_io_type,
      dataset_dir=FLAGS.dataset_dir,
      calibration_split=FLAGS.calibration_split,
      calibration_examples=FLAGS.calibration_examples)


def main(argv):
  del argv  # unused
  bundle.export(config_from_flags())


if __name__ == '__main__':
  cli.run(main)
