"""Google's released MobileNet V1 1.0/224 weights load into our model.

The only copy of the release reachable from the package registries is inside
the PyPI package nudity==0.2.3: `nudity/files/retrained_graph.pb` is a graph
that TensorFlow's retrain.py made from Google's mobilenet_v1_1.0_224 frozen
graph, keeping all of it (batch norms unfolded, the 1001-class logits) and
adding a 2-class head on top. Its constants are the released variables, under
the released names.

The test turns them into a checkpoint of exactly the model's 137 variables
(no global step, as a trimmed release), restores it into `mobilenet_v1` with
a plain Saver (no missing or extra variables) and checks that our model gives
the released graph's own logits on real photos, and that mobilenet_v1_eval
and mobilenet_v1_export take that checkpoint and give its top-1.

It needs the network (BUILD tags it requires-network); without it, it skips
with one line saying so.
"""

import os
import sys

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

from ai_edge_litert.interpreter import Interpreter
import mobilenet_v1
from released import released_models
from testing import test_data

test_data.use_float32_math()

tf1 = tf.compat.v1

# The repository root, where the binaries and third_party/ are.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL = os.path.join(_ROOT, 'mobilenet_v1_eval.py')
EXPORT = os.path.join(_ROOT, 'mobilenet_v1_export.py')

RELEASED_LOGITS = 'MobilenetV1/Predictions/Reshape:0'


def build_model():
  images = tf1.placeholder(tf.float32, [None, 224, 224, 3])
  with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(is_training=False)):
    logits, _ = mobilenet_v1.mobilenet_v1(images, num_classes=1001,
                                          is_training=False)
  return images, logits


class ReleasedModelTest(tf.test.TestCase):

  def test_release_restores_and_gives_released_logits(self):
    try:
      graph_def = released_models.fetch_float_graph(self.get_temp_dir())
    except released_models.RegistryUnreachable as e:
      # The runner shows skip reasons only when verbose: say it once here.
      reason = 'needs the network: %s' % e
      print('released_model_test skipped: ' + reason, file=sys.stderr)
      self.skipTest(reason)
    encoded = []
    for path in released_models.photo_paths():
      with open(path, 'rb') as f:
        encoded.append(f.read())
    images = released_models.eval_images(encoded, 224)

    # The release, run as Google froze it (batch 1 input named 'input').
    with tf.Graph().as_default() as graph:
      tf1.import_graph_def(graph_def, name='')
      with tf1.Session(graph=graph) as session:
        released_logits = np.concatenate([
            session.run(RELEASED_LOGITS, {'input:0': image[None]})
            for image in images])

    # The released variables as a checkpoint, as the tarballs ship them.
    checkpoint = os.path.join(self.get_temp_dir(), 'mobilenet_v1_1.0_224.ckpt')
    released = released_models.write_float_checkpoint(graph_def, checkpoint)

    with tf.Graph().as_default():
      inputs, logits = build_model()
      saved = set(tf.train.load_checkpoint(checkpoint)
                  .get_variable_to_shape_map())
      ours = {v.op.name for v in tf1.global_variables()}
      self.assertEqual(saved, ours)
      self.assertLen(ours, 137)
      self.assertEqual(
          sum(released[name].size for name in ours), 4254889)
      with tf1.Session() as session:
        tf1.train.Saver().restore(session, checkpoint)
        our_logits = session.run(logits, {inputs: images})

    self.assertAllClose(our_logits, released_logits, atol=1e-3, rtol=1e-4)
    self.assertAllEqual(our_logits.argmax(-1), released_logits.argmax(-1))
    # Real photos get confident predictions, not noise.
    probabilities = tf.nn.softmax(our_logits).numpy()
    self.assertGreater(probabilities.max(-1).min(), 0.2)

    # The binaries take the release as it is, without a global step.
    top1 = released_logits.argmax(-1)
    dataset_dir = os.path.join(self.get_temp_dir(), 'photos')
    test_data.write_encoded_split(dataset_dir, 'validation', encoded, top1)
    stdout = test_data.run_binary(EVAL, '--dataset_dir=' + dataset_dir,
                                  '--checkpoint_path=' + checkpoint,
                                  '--batch_size=3')
    self.assertIn('(step unknown): Accuracy 1.0000', stdout)
    output_dir = os.path.join(self.get_temp_dir(), 'export')
    stdout = test_data.run_binary(EXPORT, '--checkpoint_path=' + checkpoint,
                                  '--output_dir=' + output_dir)
    self.assertIn('(step unknown)', stdout)
    interpreter = Interpreter(os.path.join(output_dir,
                                           'mobilenet_v1_1.0_224.tflite'))
    interpreter.allocate_tensors()
    for image, expected in zip(images, top1):
      interpreter.set_tensor(interpreter.get_input_details()[0]['index'],
                             image[None])
      interpreter.invoke()
      self.assertEqual(interpreter.get_tensor(
          interpreter.get_output_details()[0]['index'])[0].argmax(), expected)


if __name__ == '__main__':
  tf.test.main()
