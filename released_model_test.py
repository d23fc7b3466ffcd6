"""Google's released MobileNet V1 1.0/224 weights load into our model.

The only copy of the release reachable from the package registries is inside
the PyPI package nudity==0.2.3: `nudity/files/retrained_graph.pb` is a graph
that TensorFlow's retrain.py made from Google's mobilenet_v1_1.0_224 frozen
graph, keeping all of it (batch norms unfolded, the 1001-class logits) and
adding a 2-class head on top. Its constants are the released variables, under
the released names.

The test turns them into a checkpoint, restores it into `mobilenet_v1` with
a plain Saver (no missing or extra variables) and checks that our model gives
the released graph's own logits on real photos.
"""

import glob
import hashlib
import os
import subprocess
import sys
import tarfile

import numpy as np
import slim_compat  # pylint: disable=unused-import
from slim_compat import slim
import tensorflow as tf
from tensorflow.python.framework import tensor_util

import mobilenet_v1

tf1 = tf.compat.v1

PACKAGE = 'nudity==0.2.3'
GRAPH_IN_PACKAGE = 'nudity-0.2.3/nudity/files/retrained_graph.pb'
GRAPH_SHA256 = (
    '3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735')
RELEASED_LOGITS = 'MobilenetV1/Predictions/Reshape:0'


def fetch_released_graph(directory):
  """Downloads the package (source only, no dependencies), returns the graph.

  Raises:
    AssertionError: the graph is not the expected file.
  """
  subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet',
                  '--no-deps', '--no-binary', ':all:', '--dest', directory,
                  PACKAGE], check=True, capture_output=True)
  archive, = glob.glob(os.path.join(directory, 'nudity-0.2.3.tar.gz'))
  with tarfile.open(archive) as tar:
    data = tar.extractfile(GRAPH_IN_PACKAGE).read()
  if hashlib.sha256(data).hexdigest() != GRAPH_SHA256:
    raise AssertionError('%s in %s is not the expected file' %
                         (GRAPH_IN_PACKAGE, PACKAGE))
  graph_def = tf1.GraphDef()
  graph_def.ParseFromString(data)
  return graph_def


def photos(size=224):
  """scikit-learn's two bundled photos, center-cropped as for evaluation."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  images = []
  for photo in datasets.load_sample_images().images:
    height, width = photo.shape[:2]
    side = int(min(height, width) * 0.875)
    top, left = (height - side) // 2, (width - side) // 2
    crop = tf.image.resize(photo[top:top + side, left:left + side],
                           [size, size]).numpy()
    images.append(crop / 127.5 - 1.0)
  return np.stack(images).astype(np.float32)


def build_model():
  images = tf1.placeholder(tf.float32, [None, 224, 224, 3])
  with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(is_training=False)):
    logits, _ = mobilenet_v1.mobilenet_v1(images, num_classes=1001,
                                          is_training=False)
  return images, logits


class ReleasedModelTest(tf.test.TestCase):

  def test_release_restores_and_gives_released_logits(self):
    graph_def = fetch_released_graph(self.get_temp_dir())
    released = {node.name: tensor_util.MakeNdarray(node.attr['value'].tensor)
                for node in graph_def.node if node.op == 'Const'}
    images = photos()

    # The release, run as Google froze it (batch 1 input named 'input').
    with tf.Graph().as_default() as graph:
      tf1.import_graph_def(graph_def, name='')
      with tf1.Session(graph=graph) as session:
        released_logits = np.concatenate([
            session.run(RELEASED_LOGITS, {'input:0': image[None]})
            for image in images])

    # The released variables as a checkpoint, as the tarballs ship them.
    checkpoint = os.path.join(self.get_temp_dir(), 'mobilenet_v1_1.0_224.ckpt')
    with tf.Graph().as_default():
      build_model()
      with tf1.Session() as session:
        for variable in tf1.global_variables():
          variable.load(released[variable.op.name], session)
        tf1.train.Saver().save(session, checkpoint, write_meta_graph=False)

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


if __name__ == '__main__':
  tf.test.main()
