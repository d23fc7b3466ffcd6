"""Distillation from a frozen float teacher: fine-tuning that keeps a model.

A quantization-aware fine-tune should end where the float model was, with
its rounding learned around. Trained on labels alone, a fine-tune on a few
hundred images also moves the model toward those images' classes, and
forgets some of the others (on the real 1.0_224, the float fine-tune alone
loses top-1 on held-out classes; see the README). With the float
checkpoint as teacher, the loss's targets mix in the teacher's softmax
(Hinton et al., 2015, at temperature 1): on every class, seen in training
or not, the student is pulled toward what the float model predicts.

The teacher is the checkpoint's model in inference mode, built beside the
student under `Teacher/`, after the quantization rewrite (so it stays
float) and without joining any variable collection: nothing trains it,
checkpoints do not save it, and weight decay does not see it. Its variables
are restored from the checkpoint every time a session is created, a fresh
run's or a resumed one's.
"""

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from model import checkpoint_utils
from quantization import fold_batch_norms
from quantization import graph_editing

tf1 = tf.compat.v1

TEACHER_SCOPE = 'Teacher'


class Teacher(object):
  """The frozen float model whose predictions the student learns.

  Attributes:
    logits: [batch, classes] float32, the teacher's logits (no gradient).
    variables: the teacher's variables, in no collection.
  """

  def __init__(self, build_model, images, checkpoint_path):
    """Builds the teacher on `images`.

    Args:
      build_model: function (images, is_training) -> logits that builds the
        model the checkpoint holds, in its own `MobilenetV1` scope.
      images: float32 [batch, size, size, 3], the float model's input.
      checkpoint_path: the checkpoint the teacher's variables come from.

    Raises:
      CheckpointError: the checkpoint is unreadable or lacks a variable of
        the model, or has it in another shape.
    """
    self.variables = []
    self._checkpoint_path = checkpoint_path

    def recording_getter(getter, name, *args, **kwargs):
      variable = getter(name, *args, **kwargs)
      self.variables.append(variable)
      return variable

    graph = images.graph
    collections = {key: list(graph.get_collection(key))
                   for key in graph.get_all_collection_keys()}
    with tf1.variable_scope(TEACHER_SCOPE, custom_getter=recording_getter):
      self.logits = tf.stop_gradient(build_model(images, is_training=False))
    # Folded, each layer is a convolution, a bias and a ReLU6, which
    # TensorFlow's CPU kernels run as one op.
    for layer_op, context in graph_editing.find_layers(graph):
      if context.startswith(TEACHER_SCOPE + '/'):
        fold_batch_norms.fold_batch_norm(layer_op, context)
    # Out of every collection (variables, trainable ones, weight decay's
    # losses, the folded layers the quantization rewrites track, ...), the
    # teacher is left alone by savers, optimizers, initializers and
    # rewrites.
    for key in graph.get_all_collection_keys():
      if key in collections:
        graph.get_collection_ref(key)[:] = collections[key]
      else:
        graph.clear_collection(key)
    found = checkpoint_utils.match(checkpoint_path, self.variables,
                                   scope=TEACHER_SCOPE)
    unfit = sorted(found.mismatched +
                   ['%s missing' % name for name in found.missing])
    if unfit:
      raise checkpoint_utils.CheckpointError(
          'the teacher %s is not the model being trained (%s): distillation '
          'needs the same variant and classes' % (checkpoint_path,
                                                  '; '.join(unfit)))
    self._saver = tf1.train.Saver(found.restorable, name='teacher_saver')

  def restore(self, session):
    """Reads the teacher's variables from its checkpoint into `session`."""
    self._saver.restore(session, self._checkpoint_path)

  def restore_hook(self):
    """A hook restoring the teacher in every session it is created for."""
    return _RestoreHook(self)


class _RestoreHook(tf1.train.SessionRunHook):

  def __init__(self, teacher):
    self._teacher = teacher

  def after_create_session(self, session, coord):
    del coord  # unused
    self._teacher.restore(session)


def soft_targets(teacher_logits, onehot_labels, teacher_weight):
  """The training targets: the teacher's softmax mixed with the labels.

  Args:
    teacher_logits: [batch, classes] logits of the teacher.
    onehot_labels: [batch, classes] one-hot labels.
    teacher_weight: in [0, 1], the teacher's share of every target.

  Returns:
    [batch, classes] float32 targets, each row a distribution.
  """
  return (teacher_weight * tf.nn.softmax(teacher_logits) +
          (1.0 - teacher_weight) * onehot_labels)
