"""Test support for the quantization rewrites' tests: models, data, training.

Small MobileNets (0.25 at 64x64) and hand-built layers with random but
non-trivial variables, the data they are fed, and a short quantization-aware
training run that leaves a checkpoint.
"""

import numpy as np

from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

import mobilenet_v1
from quantization import quant_ops
from quantization import quantize
from quantization import tflite_emulation

tf1 = tf.compat.v1

FAKE_QUANT = 'FakeQuantWithMinMaxVars'
BATCH = 8
IMAGE_SIZE = 64
NUM_CLASSES = 11
_WEIGHTS_QUANT_SCOPE = '/%s/' % quant_ops.WEIGHTS_QUANT


def build_mobilenet(is_training, batch_size=BATCH, batch_norm_decay=0.9997,
                     quantized_input=False):
  """Builds MobileNet V1 0.25 at 64x64 in the default graph.

  Dropout keeps everything so training-mode outputs are deterministic.

  Args:
    is_training: build the training or the inference graph.
    batch_size: the static batch size, or None.
    batch_norm_decay: decay of batch norm's moving averages.
    quantized_input: put `tflite_emulation.quantize_input` before the model.

  Returns:
    (images placeholder, logits).
  """
  images = tf1.placeholder(
      tf.float32, [batch_size, IMAGE_SIZE, IMAGE_SIZE, 3], name='input')
  model_input = (tflite_emulation.quantize_input(images) if quantized_input
                 else images)
  with slim.arg_scope(mobilenet_v1.mobilenet_v1_arg_scope(
      is_training=is_training, batch_norm_decay=batch_norm_decay)):
    logits, _ = mobilenet_v1.mobilenet_v1(
        model_input, num_classes=NUM_CLASSES, is_training=is_training,
        depth_multiplier=0.25, dropout_keep_prob=1.0)
  return images, logits


def model_values(graph, seed=0):
  """Random values for the model's variables, keyed by name.

  Batch norm statistics and scales are made non-trivial so that folding
  mistakes show.
  """
  rng = np.random.RandomState(seed)
  ranges = {v.op.name for v in quantize.range_variables(graph)}
  values = {}
  for variable in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES):
    name = variable.op.name
    shape = variable.shape.as_list()
    if name in ranges or not shape:  # Scalars: ranges and the global step.
      continue
    if name.endswith(('gamma', 'moving_variance')):
      values[name] = rng.uniform(0.5, 1.5, shape)
    elif name.endswith(('beta', 'moving_mean', 'biases')):
      values[name] = rng.normal(0.0, 0.2, shape)
    else:
      # The model's own initializer scale: much larger weights make the
      # deep network's gradients ill-conditioned, so that float rounding
      # alone changes them by percents.
      values[name] = rng.normal(0.0, 0.09, shape)
  return values


def load(sess, values):
  """Initializes all variables, then loads `values` (name -> array)."""
  sess.run(tf1.global_variables_initializer())
  for variable in sess.graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES):
    if variable.op.name in values:
      variable.load(values[variable.op.name].astype(np.float32), sess)


def ancestors(tensor):
  """All ops `tensor` depends on through data inputs, itself included."""
  seen = {}
  stack = [tensor.op]
  while stack:
    op = stack.pop()
    if op.name not in seen:
      seen[op.name] = op
      stack.extend(t.op for t in op.inputs)
  return list(seen.values())


def count_fake_quants(graph):
  """How many fake quant ops with range variables `graph` has."""
  return sum(op.type in (FAKE_QUANT, FAKE_QUANT + 'PerChannel')
             for op in graph.get_operations())


def range_values(sess):
  """The range variables' values (name -> value)."""
  return {v.op.name: sess.run(v) for v in quantize.range_variables(sess.graph)}


def colour_task(batch_size=BATCH, seed=1):
  """A batch of an easy task: which colour channel is boosted.

  A randomly initialized MobileNet amplifies any perturbation, rounding
  included, so much that its predictions are noise; a few dozen steps on
  this task give it predictions with real margins.

  Args:
    batch_size: how many images.
    seed: the random seed.

  Returns:
    (uint8 images [batch_size, 64, 64, 3] of random 16x16 blocks plus 127 in
    the label's channel, labels in 0..2).
  """
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, 3, batch_size)
  blocks = rng.randint(0, 128, [batch_size, 4, 4, 3])
  images = np.kron(blocks, np.ones([1, IMAGE_SIZE // 4, IMAGE_SIZE // 4, 1]))
  images[np.arange(batch_size), :, :, labels] += 127
  return images.astype(np.uint8), labels


def to_float(uint8_images):
  """Maps uint8 images to [-1, 1] like the model's preprocessing."""
  return (uint8_images.astype(np.float32) - 127.5) / 127.5


def images(batch_size=BATCH, seed=1):
  """Uniform noise images in [-1, 1].

  Noise gives every channel a healthy batch variance, so that the float
  comparisons are not dominated by rounding amplified through 28 layers.
  """
  return np.random.RandomState(seed).uniform(
      -1, 1, [batch_size, IMAGE_SIZE, IMAGE_SIZE, 3]).astype(np.float32)


def fake_quant_range(sess, fake_quant):
  """(min, max) of a FakeQuantWithMinMax{Args,Vars,VarsPerChannel} op."""
  if fake_quant.type == 'FakeQuantWithMinMaxArgs':
    return fake_quant.get_attr('min'), fake_quant.get_attr('max')
  return sess.run(list(fake_quant.inputs[1:]))


def train_and_save(test, checkpoint, steps, weights=quantize.PER_CHANNEL):
  """Trains a quantized MobileNet from scratch on `colour_task`, saves it.

  Batch norm's moving averages decay fast (0.9), so that after a few dozen
  steps inference sees activations of the scale it was trained on.

  Args:
    test: the running test case (for assertions).
    checkpoint: the checkpoint path to save to.
    steps: how many training steps to run.
    weights: the weight quantization scheme (quantize.WEIGHT_SCHEMES).

  Returns:
    The range variables' values after training (name -> value).
  """
  with tf.Graph().as_default() as graph:
    tf1.set_random_seed(0)
    images_in, logits = build_mobilenet(is_training=True,
                                         batch_size=2 * BATCH,
                                         batch_norm_decay=0.9)
    labels_in = tf1.placeholder(tf.int64, [2 * BATCH])
    quantize.create_training_graph(quant_delay=0, weights=weights)
    loss = tf1.losses.sparse_softmax_cross_entropy(labels_in, logits)
    global_step = tf1.train.get_or_create_global_step()
    with tf.control_dependencies(tf1.get_collection(
        tf1.GraphKeys.UPDATE_OPS)):
      train_op = tf1.train.MomentumOptimizer(0.02, 0.9).minimize(
          loss, global_step=global_step)
    with test.session(graph=graph) as sess:
      sess.run(tf1.global_variables_initializer())
      initial = range_values(sess)
      for step in range(steps):
        images, labels = colour_task(2 * BATCH, seed=100 + step)
        sess.run(train_op, {images_in: to_float(images), labels_in: labels})
      trained = range_values(sess)
      tf1.train.Saver().save(sess, checkpoint)
  # Weight ranges follow the weights. Activation ranges move by EMA steps,
  # except bounds that the data keeps at their initial value: 0 as the
  # minimum after a ReLU, 6 as the maximum of a saturated ReLU6.
  moved = {name for name, value in trained.items()
           if np.any(value != initial[name])}
  weight_bounds = {name for name in trained if _WEIGHTS_QUANT_SCOPE in name}
  test.assertContainsSubset(weight_bounds, moved)
  test.assertNotEmpty(moved - weight_bounds)
  test.assertTrue(all(np.all(np.isfinite(v)) for v in trained.values()))
  return trained


def build_generic_layers(is_training):
  """Hand-built layers: unfused batch norm, MatMul, residual Adds.

  conv+BN(unfused)+ReLU, a residual Add before and after a ReLU, FC.

  Args:
    is_training: batch norm in training or inference mode.

  Returns:
    (images placeholder [4, 8, 8, 3], output).
  """
  images = tf1.placeholder(tf.float32, [4, 8, 8, 3], name='input')
  with slim.arg_scope([slim.conv2d], weights_initializer=(
      tf1.truncated_normal_initializer(stddev=0.3))):
    net = slim.conv2d(
        images, 8, [3, 3], activation_fn=tf.nn.relu,
        normalizer_fn=slim.batch_norm,
        normalizer_params={'fused': False, 'is_training': is_training},
        scope='conv_bn')
    branch = slim.conv2d(net, 8, [1, 1], activation_fn=None,
                         scope='pre_add')
    net = tf.nn.relu(net + branch, name='pre_add_relu')
    branch = slim.conv2d(net, 8, [1, 1], activation_fn=tf.nn.relu6,
                         scope='post')
    net = tf.add(net, branch, name='post_add')
  net = tf.reshape(net, [4, -1])
  with tf1.variable_scope('fc'):
    weights = tf1.get_variable('weights', [8 * 8 * 8, 5])
    biases = tf1.get_variable('biases', [5])
    net = tf.nn.relu(tf.matmul(net, weights) + biases)
  # Fetching a rewritten tensor itself would bypass its fake quant op,
  # which only its consumers read.
  return images, tf.identity(net, name='output')


def assert_rewrite_keeps_function(test, is_training, rewrite):
  """Asserts that `rewrite` keeps the generic layers' outputs and gradients.

  Args:
    test: the running test case.
    is_training: build the layers in training or inference mode.
    rewrite: a function rewriting the default graph.
  """
  feed = np.random.RandomState(0).normal(size=[4, 8, 8, 3])
  results = []
  for rewritten in (False, True):
    with tf.Graph().as_default() as graph:
      images_in, output = build_generic_layers(is_training)
      if rewritten:
        rewrite()
      variables = sorted(tf1.trainable_variables(), key=lambda v: v.op.name)
      gradients = tf1.gradients(tf.reduce_sum(output * output), variables)
      with test.session(graph=graph) as sess:
        load(sess, model_values(graph))
        results.append(sess.run([output] + gradients, {images_in: feed}))
  test.assertGreater(np.abs(results[0][0]).max(), 1.0)
  for expected, actual in zip(*results):
    test.assertAllClose(expected, actual, rtol=1e-4,
                        atol=1e-4 * np.abs(expected).max())
