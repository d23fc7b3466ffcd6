"""Tests of distillation.py on a small MobileNet and a checkpoint of it."""

import os

import numpy as np
from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

from model import checkpoint_utils
from training import distillation
import mobilenet_v1
from testing import quantize_test_util
from testing import test_data

tf1 = tf.compat.v1
test_data.use_float32_math()

_CLASSES = 5
_SIZE = 32
_BATCH = 4


def _build_model(images, is_training, classes=_CLASSES):
  scope = mobilenet_v1.mobilenet_v1_arg_scope(is_training=is_training,
                                              weight_decay=0.00004)
  with slim.arg_scope(scope):
    logits, _ = mobilenet_v1.mobilenet_v1(
        images, num_classes=classes, depth_multiplier=0.25,
        is_training=is_training)
  return logits


def _images(seed=0):
  return np.random.RandomState(seed).uniform(
      -1, 1, [_BATCH, _SIZE, _SIZE, 3]).astype(np.float32)


class DistillationTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    """A checkpoint of a model whose batch norms are not the identity."""
    super().setUpClass()
    cls.checkpoint = os.path.join(tf1.test.get_temp_dir(), 'teacher', 'model')
    with tf.Graph().as_default():
      tf1.set_random_seed(0)
      logits = _build_model(tf1.placeholder(tf.float32, [None, _SIZE, _SIZE,
                                                         3]), False)
      del logits  # only the variables are wanted
      rng = np.random.RandomState(1)
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        for variable in tf1.global_variables():
          name = variable.op.name
          if name.endswith(('moving_mean', 'beta')):
            value = rng.normal(0, 0.5, variable.shape.as_list())
          elif name.endswith(('moving_variance', 'gamma')):
            value = rng.uniform(0.5, 2.0, variable.shape.as_list())
          else:
            continue
          variable.load(value.astype(np.float32), session)
        tf1.train.Saver().save(session, cls.checkpoint)

  def _float_model_logits(self, images):
    """The checkpoint's model in inference mode, as evaluation builds it."""
    with tf.Graph().as_default():
      logits = _build_model(tf.constant(images), False)
      with tf1.Session() as session:
        tf1.train.Saver().restore(session, self.checkpoint)
        return session.run(logits)

  def test_teacher_computes_the_checkpoint_model(self):
    images = _images()
    with tf.Graph().as_default():
      input_images = tf.constant(images)
      _build_model(input_images, True)  # the student, in training mode
      teacher = distillation.Teacher(_build_model, input_images,
                                     self.checkpoint)
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        teacher.restore(session)
        got = session.run(teacher.logits)
      # Its batch norms are folded into its layers: none on the way to the
      # logits.
      path_types = {op.type for op in
                    quantize_test_util.ancestors(teacher.logits)}
    self.assertIn('DepthwiseConv2dNative', path_types)
    self.assertEmpty({t for t in path_types if 'BatchNorm' in t})
    self.assertAllClose(got, self._float_model_logits(images), rtol=1e-5,
                        atol=1e-5)

  def test_teacher_is_in_no_collection(self):
    with tf.Graph().as_default() as graph:
      images = tf1.placeholder(tf.float32, [None, _SIZE, _SIZE, 3])
      _build_model(images, True)
      before = {key: list(graph.get_collection(key))
                for key in graph.get_all_collection_keys()}
      teacher = distillation.Teacher(_build_model, images, self.checkpoint)
      after = {key: list(graph.get_collection(key))
               for key in graph.get_all_collection_keys()}
      self.assertEqual(after, before)
      self.assertLen(teacher.variables, len(before['variables']))
      # A checkpoint of the training run does not carry the teacher.
      with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        path = tf1.train.Saver().save(
            session, os.path.join(self.get_temp_dir(), 'student'))
    saved = [name for name, _ in tf.train.list_variables(path)]
    self.assertNotEmpty(saved)
    self.assertFalse([n for n in saved if n.startswith('Teacher')])

  def test_soft_targets_mix_the_teacher_softmax_and_the_labels(self):
    rng = np.random.RandomState(2)
    teacher_logits = rng.normal(0, 3, [_BATCH, _CLASSES]).astype(np.float32)
    labels = np.eye(_CLASSES, dtype=np.float32)[rng.randint(0, _CLASSES,
                                                            _BATCH)]
    exp = np.exp(teacher_logits.astype(np.float64) -
                 teacher_logits.max(axis=1, keepdims=True))
    softmax = exp / exp.sum(axis=1, keepdims=True)
    for weight in (0.0, 0.3, 1.0):
      got = distillation.soft_targets(tf.constant(teacher_logits),
                                      tf.constant(labels), weight).numpy()
      self.assertAllClose(got, weight * softmax + (1 - weight) * labels,
                          rtol=1e-6, atol=1e-7)
      self.assertAllClose(got.sum(axis=1), np.ones(_BATCH), atol=1e-6)

  def test_a_student_that_is_the_teacher_has_nothing_to_learn(self):
    # Cross-entropy against the teacher's softmax has the gradient
    # softmax(student) - softmax(teacher) in the logits: zero exactly where
    # the student computes what the teacher does, however far both are from
    # the labels.
    images = _images(3)
    with tf.Graph().as_default():
      input_images = tf.constant(images)
      student = _build_model(input_images, False)
      teacher = distillation.Teacher(_build_model, input_images,
                                     self.checkpoint)
      labels = tf.one_hot(tf.range(_BATCH) % _CLASSES, _CLASSES)
      distilled = tf1.losses.softmax_cross_entropy(
          distillation.soft_targets(teacher.logits, labels, 1.0), student)
      from_labels = tf1.losses.softmax_cross_entropy(labels, student)
      weights = tf1.trainable_variables()
      with tf1.Session() as session:
        tf1.train.Saver().restore(session, self.checkpoint)
        teacher.restore(session)
        distilled_grads, label_grads = session.run(
            [tf.gradients(distilled, weights), tf.gradients(from_labels,
                                                            weights)])
    largest_label_grad = max(np.abs(g).max() for g in label_grads)
    self.assertGreater(largest_label_grad, 1e-3)
    for grad in distilled_grads:
      self.assertLess(np.abs(grad).max(), 1e-5 * largest_label_grad)

  def test_a_checkpoint_of_other_classes_is_refused(self):
    with tf.Graph().as_default():
      images = tf1.placeholder(tf.float32, [None, _SIZE, _SIZE, 3])
      with self.assertRaisesRegex(checkpoint_utils.CheckpointError,
                                  r'Logits/Conv2d_1c_1x1/weights \[1, 1, 256, '
                                  r'7\] vs checkpoint \[1, 1, 256, 5\]'):
        distillation.Teacher(
            lambda x, is_training: _build_model(x, is_training, classes=7),
            images, self.checkpoint)

  def test_the_hook_restores_the_teacher_on_every_session(self):
    images = _images(4)
    want = self._float_model_logits(images)
    checkpoint_dir = os.path.join(self.get_temp_dir(), 'run')
    for _ in range(2):  # a fresh run, then one resumed from its checkpoint
      with tf.Graph().as_default():
        global_step = tf1.train.get_or_create_global_step()
        input_images = tf.constant(images)
        _build_model(input_images, True)
        teacher = distillation.Teacher(_build_model, input_images,
                                       self.checkpoint)
        step = tf1.assign_add(global_step, 1)
        with tf1.train.MonitoredTrainingSession(
            checkpoint_dir=checkpoint_dir, hooks=[teacher.restore_hook()],
            save_summaries_steps=None, save_summaries_secs=None,
            log_step_count_steps=0) as session:
          session.run(step)
          got = session.run(teacher.logits)
      self.assertAllClose(got, want, rtol=1e-5, atol=1e-5)
    checkpoint = tf.train.latest_checkpoint(checkpoint_dir)
    self.assertEqual(
        tf.train.load_checkpoint(checkpoint).get_tensor('global_step'), 2)


if __name__ == '__main__':
  tf.test.main()
