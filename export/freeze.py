"""The exported inference graph and its freezing into constants.

The graph takes `input`, float32 [1, size, size, 3] with pixels mapped to
[-1, 1], and produces `MobilenetV1/Predictions/Reshape_1`, the softmax
[1, num_classes]: the names and the batch of 1 of the released frozen
graphs, which is what TFLite runs on a device. It is the graph evaluation
measures (inference_model.build).
"""

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from model import inference_model

tf1 = tf.compat.v1

INPUT_NAME = 'input'
OUTPUT_NAME = 'MobilenetV1/Predictions/Reshape_1'


def build_inference_graph(depth_multiplier, image_size, num_classes,
                          quantized, quantize_options=None):
  """Builds the exported graph: `input` placeholder to softmax predictions.

  Args:
    depth_multiplier: width multiplier.
    image_size: input resolution.
    num_classes: classes of the logits layer.
    quantized: build the quantized eval graph (folded batch norms, fake
      quantization reading the range variables).
    quantize_options: how the checkpoint was quantized
      (`inference_model.quantize_options`); None for the defaults.

  Returns:
    (graph, input tensor, output tensor).
  """
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.placeholder(tf.float32, [1, image_size, image_size, 3],
                             name=INPUT_NAME)
    inference_model.build(images, num_classes, depth_multiplier, quantized,
                          quantize_options)
    tf1.train.get_or_create_global_step()
  return graph, images, graph.get_tensor_by_name(OUTPUT_NAME + ':0')


def freeze(session, graph):
  """Folds the variables of `graph` into constants, keeping what feeds the output.

  Args:
    session: a session of `graph` with its variables restored.
    graph: the graph build_inference_graph built.

  Returns:
    The frozen GraphDef.
  """
  return tf1.graph_util.convert_variables_to_constants(
      session, graph.as_graph_def(), [OUTPUT_NAME])
