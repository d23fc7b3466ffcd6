"""The training step's graph: model, loss, learning rate and optimizer.

`build_train_op` builds what a Plan describes into the default graph: the
model in training mode (or inference mode, batch norms frozen from the
start) in the plan's precision, fused batch norm + ReLU6 kernels where they
run, the quantization rewrite, pointwise convolutions differentiated by
matrix products, the distillation teacher, the loss and one optimizer step.
"""

import collections
import functools

from runtime import slim_compat  # pylint: disable=unused-import
from runtime.slim_compat import slim
import tensorflow as tf

from kernels import batch_norm_relu6
from model import checkpoint_utils
from model import inference_model
from quantization import quantize
from quantization import tflite_emulation
from runtime import errors
from training import distillation
from training import fine_tune
from training import mixed_precision
from training import pointwise_gradients

tf1 = tf.compat.v1

TrainOp = collections.namedtuple(
    'TrainOp', ['train_op', 'total_loss', 'learning_rate', 'hooks'])
TrainOp.__doc__ = """The training step and what the loop reports.

Attributes:
  train_op: running it makes one step (global step included) and returns
    the total loss.
  total_loss: the loss with weight decay.
  learning_rate: the learning rate tensor.
  hooks: session hooks the step needs (the teacher's restore).
"""


def session_config():
  """The session options training runs with.

  Returns:
    The tf.compat.v1.ConfigProto.
  """
  # The rest stays at TensorFlow's defaults: bfloat16 auto mixed precision,
  # NCHW, XLA auto-clustering and fewer inter-op threads were all slower
  # (README, "Speed").
  return tf1.ConfigProto(allow_soft_placement=True)


def build_train_op(images, labels, global_step, plan):
  """Builds the model, loss and optimizer step a Plan describes.

  Args:
    images: float32 [batch, size, size, 3] in [-1, 1].
    labels: int64 [batch] class ids.
    global_step: the global step variable.
    plan: a config.Plan.

  Returns:
    The TrainOp.

  Raises:
    checkpoint_utils.CheckpointError: the distillation teacher's checkpoint
      does not fit the model.
    errors.UserError: --trainable_scopes matches no variable.
  """
  config = plan.config
  # tf.one_hot would silently turn an out-of-range label into all zeros.
  check_labels = tf.debugging.assert_less(
      labels, tf.constant(config.num_classes, labels.dtype),
      message='a label is >= --num_classes=%d; use the value '
      'build_imagenet_tfrecords printed (classes + 1)' % config.num_classes)
  with tf.control_dependencies([check_labels]):
    labels = tf.identity(labels)
  float_images = images
  if config.quantize:
    # Before mixed precision's cast: the input grid's values k / 128
    # (|k| <= 128) are bfloat16 numbers, so the model sees them exactly.
    images = tflite_emulation.quantize_input(images)
  build_model = functools.partial(
      inference_model.build_logits, num_classes=config.num_classes,
      depth_multiplier=config.depth_multiplier,
      weight_decay=config.weight_decay,
      batch_norm_decay=plan.batch_norm_decay)
  # Batch norms frozen from the first step need no batch statistics: the
  # model is built in inference mode. Gamma and beta still train; the moving
  # statistics stay as restored; dropout (keeping 99.9% by default) is off.
  with mixed_precision.float32_variables(plan.precision):
    logits = build_model(mixed_precision.cast_images(images, plan.precision),
                         is_training=not plan.batch_norms_frozen_from_start)
  # The softmax and the loss sum over classes and the batch: float32.
  logits = tf.cast(logits, tf.float32)
  fused = _fuse_batch_norm_relu6(logits.graph, plan)
  if config.quantize:
    quantize.create_training_graph(
        quant_delay=plan.quant_delay, weights=config.weight_quantization,
        freeze_bn_delay=plan.freeze_bn_delay,
        mask_drowned_channels=config.per_tensor_weights)
    if fused:
      batch_norm_relu6.fuse_fake_quant(logits.graph)
  pointwise_gradients.use_matmul_gradients(logits.graph)
  targets = tf.one_hot(labels, config.num_classes)
  hooks = []
  if plan.distillation_weight:
    # Built after the rewrites above, so that the teacher stays as it was.
    teacher = _teacher(build_model, float_images, config)
    targets = distillation.soft_targets(teacher.logits, targets,
                                        plan.distillation_weight)
    hooks.append(teacher.restore_hook())
  tf1.losses.softmax_cross_entropy(
      targets, logits, label_smoothing=config.label_smoothing)
  total_loss = tf1.losses.get_total_loss(name='total_loss')
  learning_rate = tf1.train.exponential_decay(
      plan.learning_rate, global_step, plan.learning_rate_decay_steps,
      config.learning_rate_decay_factor, staircase=True,
      name='learning_rate')
  train_op = slim.learning.create_train_op(
      total_loss, _optimizer(config.optimizer, learning_rate),
      global_step=None, variables_to_train=_variables_to_train(config))
  # The step counts up after the whole step, its batch norm updates
  # included; slim's increment waits only for the weight updates.
  with tf.control_dependencies([train_op]):
    increment = tf1.assign_add(global_step, 1)
  with tf.control_dependencies([increment]):
    train_op = tf.identity(train_op)
  tf1.summary.scalar('losses/total_loss', total_loss)
  tf1.summary.scalar('learning_rate', learning_rate)
  accuracy = tf.reduce_mean(tf.cast(
      tf.equal(tf.argmax(logits, 1), labels), tf.float32))
  tf1.summary.scalar('train_batch_accuracy', accuracy)
  return TrainOp(train_op, total_loss, learning_rate, hooks)


def _fuse_batch_norm_relu6(graph, plan):
  """Fuses each layer's batch norm + ReLU6 where the kernels can run.

  The fused kernels are CPU-only; on a GPU, cuDNN's batch norm is the fast
  path and a CPU op in the middle of the model would cost transfers.
  Folding batch norms (to freeze them mid-run) needs TensorFlow's separate
  ops.

  Args:
    graph: the graph holding the model.
    plan: a config.Plan.

  Returns:
    Whether the layers were fused.
  """
  config = plan.config
  if not (config.fuse_batch_norm_relu6 and
          (not config.quantize or
           quantize.keeps_batch_norms(plan.freeze_bn_delay)) and
          not tf.config.list_physical_devices('GPU')):
    return False
  unavailable = batch_norm_relu6.unavailable_reason()
  if unavailable:
    print('Batch norm + ReLU6 run as TensorFlow\'s ops, not fused: %s.' %
          unavailable, flush=True)
    return False
  batch_norm_relu6.fuse_batch_norm_relu6(graph)
  return True


def _teacher(build_model, images, config):
  """The frozen float model of --fine_tune_checkpoint, built on `images`.

  Raises:
    checkpoint_utils.CheckpointError: the checkpoint does not fit; when
      distillation is on by default, the message names the flags that
      fine-tune without it.
  """
  try:
    return distillation.Teacher(
        build_model, images,
        checkpoint_utils.resolve(config.fine_tune_checkpoint))
  except checkpoint_utils.CheckpointError as error:
    if config.distillation_weight is not None:
      raise
    raise checkpoint_utils.CheckpointError(
        '%s; distillation is on by default with --quantize: '
        '--checkpoint_exclude_scopes=MobilenetV1/Logits fine-tunes onto '
        'new classes without it, --distillation_weight=0 turns it off' %
        error) from None


def _optimizer(name, learning_rate):
  """The optimizer --optimizer names: sgd, momentum or rmsprop."""
  if name == 'momentum':
    return tf1.train.MomentumOptimizer(learning_rate, momentum=0.9)
  if name == 'rmsprop':
    return tf1.train.RMSPropOptimizer(learning_rate, decay=0.9, momentum=0.9,
                                      epsilon=1.0)
  return tf1.train.GradientDescentOptimizer(learning_rate)


def _variables_to_train(config):
  """The trainable variables in --trainable_scopes (all when it is empty)."""
  variables = tf1.trainable_variables()
  if not config.trainable_scopes:
    return variables
  chosen = [v for v in variables
            if fine_tune.in_scopes(v.op.name, config.trainable_scopes)]
  if not chosen:
    raise errors.UserError('--trainable_scopes=%s matches no trainable '
                           'variable (they start with MobilenetV1/)' %
                           ','.join(config.trainable_scopes))
  return chosen
