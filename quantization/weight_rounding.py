"""Rounds a fine-tuned model's per-tensor weights for the least output error.

Quantization-aware fine-tuning with one weight range per tensor leaves each
layer's weights between grid points, and inference rounds them to the
nearest. Over channels whose folded weights differ by an order of magnitude
the small ones keep a few levels, and rounding each weight on its own
leaves errors that add up along the layer's output. After training, this
module picks every weight's grid point so that the layer's output moves as
little as possible over real inputs, and corrects the batch norm means for
the shift that remains:

* Rounding: for a layer with weights w (one output channel's row) and
  inputs x of covariance H, the output error of rounded weights q is
  (q - w)^T H (q - w). Rounding the inputs one at a time, largest variance
  first, and spreading each rounding error over the inputs not yet rounded
  through H's inverse (Frantar et al. 2022, GPTQ, after Hassibi and Stork's
  optimal brain surgeon) shrinks that error. A row keeps nearest rounding
  where that is better. The weights then lie on their grid, where the eval
  graph's fake quantization leaves them as they are.
* Means: the rounded layer's output mean differs from the float layer's by
  (q - w) . E[x] per channel. Divided by the batch norm's multiplier and
  added to its moving mean (subtracted from the bias of a layer without
  batch norm), it leaves each channel's mean the float layer's, given the
  float model's inputs (Nagel et al. 2019's bias correction).

The statistics come from the eval graph with float weights (its
activations quantized), the model fine-tuning aimed at, over training
images in eval preprocessing. This applies where the moving means describe
the float layers, as they do after a per-tensor fine-tune that keeps the
checkpoint's averages (decay `batch_norm_decay.KEEP`; they are those of the
float checkpoint's weights, which the fine-tune moves only a little).
"""

import os

import numpy as np

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from training import batch_norm_decay
from model import checkpoint_utils
from quantization import graph_editing
from data import records
from model import inference_model
from quantization import quantize

tf1 = tf.compat.v1

# The checkpoint variable that says its weights were rounded here.
ROUNDED_VARIABLE = 'quantize/weights_rounded'
# Added to the covariance's diagonal, as a fraction of its mean, so that its
# inverse exists where inputs are constant or collinear (GPTQ's dampening).
DAMPING = 0.01


class Grid(object):
  """The values an 8-bit narrow-range FakeQuantWithMinMaxVars outputs.

  TensorFlow nudges [min, max] so that zero is a grid point, then rounds
  clamp(x) to the nearest of the 255 levels (1 to 255).
  """

  def __init__(self, minimum, maximum, num_bits=8):
    quant_min, quant_max = 1.0, 2.0 ** num_bits - 1
    self.scale = (float(maximum) - float(minimum)) / (quant_max - quant_min)
    zero_point = quant_min - float(minimum) / self.scale
    zero_point = min(max(zero_point, quant_min), quant_max)
    zero_point = np.floor(zero_point + 0.5)  # std::round of a non-negative
    self.low = (quant_min - zero_point) * self.scale
    self.high = (quant_max - zero_point) * self.scale

  def nearest(self, values):
    """Each value rounded to its nearest grid point (the fake quant)."""
    clamped = np.clip(values, self.low, self.high)
    return np.floor((clamped - self.low) / self.scale + 0.5) * self.scale + (
        self.low)


def output_error(rounded, weights, covariance):
  """Each row's output error variance (q - w)^T H (q - w).

  Args:
    rounded: [groups, rows, inputs] weights on the grid.
    weights: the same shape, unrounded.
    covariance: [groups, inputs, inputs], the inputs' covariance per group.

  Returns:
    [groups, rows].
  """
  error = rounded - weights
  return np.sum(np.matmul(error, covariance) * error, axis=2)


def round_weights(weights, covariance, grid):
  """Rounds weights to the grid for the least output error, row by row.

  Args:
    weights: [groups, rows, inputs] float64; each row is one output
      channel's weights over its inputs, and the rows of a group share them.
    covariance: [groups, inputs, inputs], the covariance of each group's
      inputs.
    grid: the Grid to round to.

  Returns:
    The rounded weights, of weights' shape, on the grid. No row's output
    error exceeds that of nearest rounding.
  """
  groups, _, inputs = weights.shape
  # Largest variance first: later inputs absorb the earlier ones' errors.
  order = np.argsort(-np.diagonal(covariance, axis1=1, axis2=2), axis=1,
                     kind='stable')
  group_index = np.arange(groups)[:, None, None]
  work = np.take_along_axis(weights, order[:, None, :], axis=2).copy()
  hessian = covariance[group_index, order[:, :, None], order[:, None, :]]
  diagonal = np.diagonal(hessian, axis1=1, axis2=2)
  damping = DAMPING * np.mean(diagonal, axis=1)
  # A constant input (zero variance) takes no error: give it unit variance.
  hessian = hessian + np.eye(inputs) * (
      damping[:, None] + (diagonal <= 0))[:, None, :]
  # Upper Cholesky factor U of the inverse, inverse = U^T U.
  upper = np.swapaxes(np.linalg.cholesky(np.linalg.inv(hessian)), 1, 2)
  rounded = np.empty_like(work)
  for i in range(inputs):
    column = work[:, :, i]
    rounded[:, :, i] = grid.nearest(column)
    error = (column - rounded[:, :, i]) / upper[:, i, i][:, None]
    work[:, :, i + 1:] -= error[:, :, None] * upper[:, None, i, i + 1:]
  result = np.empty_like(rounded)
  np.put_along_axis(result, order[:, None, :], rounded, axis=2)
  nearest = grid.nearest(weights)
  worse = (output_error(result, weights, covariance) >
           output_error(nearest, weights, covariance))
  result[worse] = nearest[worse]
  return result


def _positive_semidefinite(covariance):
  """Covariances [G, K, K] with negative eigenvalues raised to 0.

  Where an input is nearly constant (a channel ReLU6 saturates), E[x x^T] -
  E[x] E[x]^T cancels to the float32 sums' rounding, which can leave
  eigenvalues slightly below zero.
  """
  eigenvalues, eigenvectors = np.linalg.eigh(covariance)
  return np.matmul(eigenvectors * np.maximum(eigenvalues, 0.0)[:, None, :],
                   np.swapaxes(eigenvectors, 1, 2))


class _Layer(object):
  """A layer of the eval graph whose weights one range quantizes."""

  def __init__(self, layer_op):
    self.op = layer_op
    fake_quant = layer_op.inputs[1].op
    self.float_weights = fake_quant.inputs[0]  # folded
    self.minimum, self.maximum = fake_quant.inputs[1], fake_quant.inputs[2]
    folding = self.float_weights.op
    self.multiplier = folding.inputs[1] if folding.type == 'Mul' else None
    weights = folding.inputs[0] if self.multiplier is not None else (
        self.float_weights)
    self.weights_name = graph_editing.variable_of(weights).name
    scope = self.weights_name.rpartition('/')[0]
    self.mean_name = (scope + '/BatchNorm/moving_mean'
                      if self.multiplier is not None else None)
    self.bias_name = scope + '/biases' if self.multiplier is None else None
    self.depthwise = layer_op.type == 'DepthwiseConv2dNative'

  def statistics(self):
    """Tensors of a batch: (input count, sums [G, K], products [G, K, K]).

    K runs over the inputs of one output channel in the weights' order
    (kernel row, column, then input channel); a depthwise layer has a group
    per input channel, a convolution one group.
    """
    inputs = self.op.inputs[0]
    height, width = self.op.inputs[1].shape.as_list()[:2]
    patches = tf1.extract_image_patches(
        inputs, [1, height, width, 1], self.op.get_attr('strides'),
        [1] + list(self.op.get_attr('dilations'))[1:3] + [1],
        self.op.get_attr('padding').decode())
    channels = inputs.shape[-1]
    if self.depthwise:
      patches = tf.reshape(patches, [-1, height * width, channels])
      sums = tf.transpose(tf.reduce_sum(patches, 0))
      products = tf.einsum('nic,njc->cij', patches, patches)
    else:
      patches = tf.reshape(patches, [-1, height * width * channels])
      sums = tf.reduce_sum(patches, 0)[tf.newaxis]
      products = tf.matmul(patches, patches, transpose_a=True)[tf.newaxis]
    return tf.shape(patches, out_type=tf.int64)[0], sums, products

  def grouped(self, weights):
    """Weights [h, w, in, k] as [groups, rows, inputs] (see statistics)."""
    height, width, channels, multiplier = weights.shape
    if self.depthwise:
      return np.transpose(weights.reshape(height * width, channels,
                                          multiplier), (1, 2, 0))
    return weights.reshape(height * width * channels, multiplier).T[
        np.newaxis]

  def ungrouped(self, grouped, shape):
    """The inverse of `grouped`."""
    if self.depthwise:
      return np.transpose(grouped, (2, 0, 1)).reshape(shape)
    return grouped[0].T.reshape(shape)


def is_rounded(checkpoint):
  """Whether `round_checkpoint` wrote this checkpoint."""
  try:
    return ROUNDED_VARIABLE in checkpoint_utils.saved_variable_shapes(
        checkpoint)
  except checkpoint_utils.CheckpointError:
    return False


def needs_rounding(checkpoint):
  """Whether `checkpoint` is a per-tensor fine-tune's, not yet rounded.

  Args:
    checkpoint: a checkpoint prefix.

  Returns:
    True when its training graph kept the fine-tuned checkpoint's batch norm
    averages, its weight ranges are per tensor and it is not rounded.
  """
  return (batch_norm_decay.kept_checkpoint_averages(checkpoint) and
          not is_rounded(checkpoint) and
          inference_model.quantize_options(checkpoint).get(
              'weights', quantize.PER_CHANNEL) != quantize.PER_CHANNEL)


def unrounded_warning(checkpoint):
  """A one-line warning for a per-tensor fine-tune's checkpoint not yet rounded.

  Its moving means are still the float layers' (the fine-tune kept the
  checkpoint's averages), so the quantized model lacks the rounding's shift
  and scores well below what the finished run's last checkpoint will.

  Args:
    checkpoint: a checkpoint prefix.

  Returns:
    The warning text, or None for any other checkpoint.
  """
  if not needs_rounding(checkpoint):
    return None
  return ('%s is from a per-tensor quantization-aware fine-tune before its '
          'weights were rounded: its batch norm means lack the rounding\'s '
          'shift, so the quantized model is less accurate than the finished '
          'run\'s; mobilenet_v1_train rounds the checkpoint of its last step '
          '(rerun it to finish an interrupted run)' %
          os.path.basename(checkpoint))


def rounded_values(checkpoint, make_images, num_classes, depth_multiplier):
  """Rounds a per-tensor checkpoint's weights; returns the changed values.

  Args:
    checkpoint: a checkpoint of quantization-aware training with per-tensor
      weight ranges, whose moving means describe the float layers.
    make_images: returns a tf.data.Dataset of float32 [batch, size, size, 3]
      image batches in [-1, 1], built in the graph it is called in.
    num_classes: classes of the logits layer.
    depth_multiplier: width multiplier.

  Returns:
    ({variable name: new value} for each layer's weights and moving mean
    (bias where no batch norm follows), {'nearest': summed output error
    variance of nearest rounding over the layers, 'rounded': the same of
    the rounding chosen, 'layers': how many, 'examples': images seen}).

  Raises:
    ValueError: the checkpoint has per-channel weight ranges, or there are
      no images.
  """
  options = inference_model.quantize_options(checkpoint)
  if options.get('weights', quantize.PER_CHANNEL) == quantize.PER_CHANNEL:
    raise ValueError('%s has per-channel weight ranges; rounding applies to '
                     'per-tensor ones' % checkpoint)
  graph = tf.Graph()
  with graph.as_default():
    images = tf1.data.make_one_shot_iterator(make_images()).get_next()
    inference_model.build(images, num_classes, depth_multiplier, True,
                          options)
    layers = [_Layer(op) for op in graph.get_operations()
              if op.type in graph_editing.CONV_TYPES and
              op.inputs[1].op.type == 'FakeQuantWithMinMaxVars']
    statistics = [layer.statistics() for layer in layers]
    batch_size = tf.shape(images)[0]
    saver = tf1.train.Saver(tf1.global_variables())
  graph.finalize()
  with tf1.Session(graph=graph) as session:
    saver.restore(session, checkpoint)
    fetched = session.run({
        'float': [layer.float_weights for layer in layers],
        'min': [layer.minimum for layer in layers],
        'max': [layer.maximum for layer in layers],
        'multiplier': [layer.multiplier if layer.multiplier is not None
                       else layer.float_weights for layer in layers]})
    # The model fine-tuning aimed at: float weights, quantized activations.
    float_feed = {layer.op.inputs[1]: value
                  for layer, value in zip(layers, fetched['float'])}
    totals = [[0, 0.0, 0.0] for _ in layers]
    examples = 0
    while True:
      try:
        batch, batch_statistics = session.run(
            [batch_size, statistics], float_feed)
      except tf.errors.OutOfRangeError:
        break
      examples += int(batch)
      for total, (count, sums, products) in zip(totals, batch_statistics):
        total[0] += count
        total[1] = total[1] + sums.astype(np.float64)
        total[2] = total[2] + products.astype(np.float64)
  if not examples:
    raise ValueError('no images to round the weights of %s with' %
                     checkpoint)
  reader = tf.train.load_checkpoint(checkpoint)
  values = {}
  summary = {'nearest': 0.0, 'rounded': 0.0, 'layers': len(layers),
             'examples': examples}
  for index, layer in enumerate(layers):
    count, sums, products = totals[index]
    mean = sums / count
    covariance = _positive_semidefinite(
        products / count - mean[:, :, None] * mean[:, None, :])
    folded = fetched['float'][index].astype(np.float64)
    grid = Grid(fetched['min'][index], fetched['max'][index])
    weights = layer.grouped(folded)
    rounded = round_weights(weights, covariance, grid)
    summary['nearest'] += float(np.sum(output_error(
        grid.nearest(weights), weights, covariance)))
    summary['rounded'] += float(np.sum(output_error(
        rounded, weights, covariance)))
    # Each output channel's mean shift, in the layer's output order.
    shift = np.einsum('gri,gi->gr', rounded - weights, mean).reshape(-1)
    rounded = layer.ungrouped(rounded, folded.shape)
    if layer.multiplier is None:
      values[layer.weights_name] = rounded.astype(np.float32)
      values[layer.bias_name] = (reader.get_tensor(layer.bias_name) -
                                 shift).astype(np.float32)
      continue
    multiplier = np.broadcast_to(
        fetched['multiplier'][index].astype(np.float64), folded.shape)
    # A channel the mask drowned (multiplier 0) outputs its beta: unchanged.
    live = multiplier != 0
    old_weights = reader.get_tensor(layer.weights_name)
    values[layer.weights_name] = np.where(
        live, rounded / np.where(live, multiplier, 1.0),
        old_weights).astype(np.float32)
    channel_multiplier = layer.grouped(multiplier)[..., 0].reshape(-1)
    live_channel = channel_multiplier != 0
    values[layer.mean_name] = (reader.get_tensor(layer.mean_name) + np.where(
        live_channel, shift / np.where(live_channel, channel_multiplier, 1.0),
        0.0)).astype(np.float32)
  return values, summary


def write_rounded(checkpoint, values):
  """Replaces `checkpoint` with itself updated by `values`, marked rounded.

  The new files are written beside it first and then moved over it, data
  before index, so that an interruption leaves the old checkpoint whole,
  the new one whole or (between the moves) one whose checksums fail: then
  resuming skips it, back to the run's checkpoint before, and retrains the
  steps since.

  Args:
    checkpoint: a checkpoint prefix.
    values: {variable name: new value}.
  """
  reader = tf.train.load_checkpoint(checkpoint)
  dtypes = reader.get_variable_to_dtype_map()
  directory, prefix = os.path.split(checkpoint)
  staging = os.path.join(directory, '.rounding')
  if tf.io.gfile.exists(staging):
    tf.io.gfile.rmtree(staging)
  with tf.Graph().as_default():
    variables = []
    for name in sorted(dtypes):
      value = values.get(name)
      if value is None:
        value = reader.get_tensor(name)
      variables.append(tf1.Variable(value, name=name, dtype=dtypes[name],
                                    trainable=False))
    variables.append(tf1.Variable(True, name=ROUNDED_VARIABLE,
                                  trainable=False))
    with tf1.Session() as session:
      session.run(tf1.variables_initializer(variables))
      tf1.train.Saver(variables).save(
          session, os.path.join(staging, prefix), write_meta_graph=False,
          write_state=False)
  data = sorted(name for name in tf.io.gfile.listdir(staging)
                if name.startswith(prefix + '.data'))
  for name in data + [prefix + '.index']:
    tf.io.gfile.rename(os.path.join(staging, name),
                       os.path.join(directory, name), overwrite=True)
  tf.io.gfile.rmtree(staging)
  # A sharded checkpoint (parameter-server training) becomes one shard.
  for name in tf.io.gfile.listdir(directory):
    if name.startswith(prefix + '.data') and name not in data:
      tf.io.gfile.remove(os.path.join(directory, name))


def round_checkpoint(checkpoint, dataset_dir, examples, image_size,
                     num_classes, depth_multiplier, batch_size=25,
                     skip_corrupt=False, skip_counter=None):
  """Rounds a per-tensor fine-tune's weights in place (see the module doc).

  Args:
    checkpoint: the checkpoint prefix to round.
    dataset_dir: directory with the `train-*` TFRecords.
    examples: how many training images (the first, in eval preprocessing)
      give the layers' statistics.
    image_size: input resolution.
    num_classes: classes of the logits layer.
    depth_multiplier: width multiplier.
    batch_size: images per statistics batch.
    skip_corrupt: skip undecodable records (records.build_dataset).
    skip_counter: the caller's records.SkippedRecordCounter, in which
      skip_corrupt counts the records it drops; required with skip_corrupt.

  Returns:
    The summary of `rounded_values`.
  """
  def make_images():
    dataset = records.build_dataset(
        dataset_dir, 'train', batch_size, image_size, is_training=False,
        num_epochs=1, skip_corrupt=skip_corrupt, skip_counter=skip_counter)
    return dataset.map(lambda images, labels: images).unbatch().take(
        examples).batch(batch_size)

  values, summary = rounded_values(checkpoint, make_images, num_classes,
                                   depth_multiplier)
  write_rounded(checkpoint, values)
  return summary
