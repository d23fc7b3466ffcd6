r"""Quantization-aware fine-tuning of the released 1.0_224, against a peer.

On real ImageNet images, in one run on one machine: Google's released
MobileNet_v1_1.0_224 float checkpoint, fine-tuned quantization-aware by our
trainer and by tensorflow-model-optimization, with top-1 of every model a
user could ship and training images/s of both QAT runs:

  float          the released checkpoint (mobilenet_v1_eval).
  ptq_int8       mobilenet_v1_export --post_training=int8, calibrated on
                 --calibration_examples training images.
  ours_int8      mobilenet_v1_train --quantize=True with default flags
                 (per-channel weights, trained on the labels), then
                 mobilenet_v1_export: the full-integer int8 .tflite.
  ours_int8_distilled  the same with --distillation_weight=1: distilled
                 from the float model.
  ours_uint8     --weight_quantization=asymmetric (per-tensor ranges,
                 contrib.quantize's scheme; the trainer equalises the float
                 model's channel ranges first, distils by default and
                 rounds the weights after the last step): the uint8
                 .tflite.
  ours_uint8_labels  the same with --distillation_weight=0.
  peer_int8      the released weights in tf_keras.applications.MobileNet
                 (the same network; its 1000 logits are ours without the
                 background class), quantized by tfmot with its defaults
                 except the logits layer, whose output range is that of
                 all values seen (AllValuesQuantizer, tfmot's per-layer
                 QuantizeConfig route; see bench/tfmot_peer.py),
                 fit with SGD at the same learning rate, batch and steps on
                 the same images and preprocessing, converted to int8.

Every top-1 is that of a .tflite (except float's, whose .tflite computes the
same) on the validation split, run by TFLite's interpreter. An 8-bit output
can tie several classes at the top; a tie counts as the share of it the
true class would win under a random tie-break (a model whose outputs are
flat cannot score by ties). peer_float checks the weight transfer: the
released weights in tf_keras, before QAT.

Data: the 1,000 ImageNet images of github.com/EliSchwartz/imagenet-sample-
images (one per class, named by synset), split by class into the classes at
even and at odd positions in sorted order: one half trains, the other
validates, so no class is in both and every validation image is one the
models never saw. By default the bench runs both ways (--held_out=odd,even)
and adds a table over all 1,000 held-out images, the mean of the two
halves, whose top-1 differences have 1/sqrt(2) of the standard error of
one half's. Give a checkout of that repository with --sample_images; each
split and its TFRecords are made once in --work_dir. The released weights
come from PyPI (released_models.fetch_float_graph), also once.

  .venv/bin/python bench/qat_bench.py --sample_images=imagenet-sample-images

Every step writes into --work_dir and is skipped when its result is there,
so an interrupted run resumes; delete a step's directory to redo it.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import peer_process
import tfmot_peer
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

flags.DEFINE_string('sample_images', '', 'A checkout of '
                    'github.com/EliSchwartz/imagenet-sample-images (needed '
                    'once, to make the TFRecords).')
flags.DEFINE_string('work_dir', '/tmp/qat_bench', 'Where the data, the '
                    'released checkpoint and every run are kept.')
flags.DEFINE_integer('steps', 300, 'Fine-tuning steps of every QAT run.',
                     lower_bound=1)
flags.DEFINE_integer('batch_size', 16, 'Batch of every QAT run.',
                     lower_bound=1)
flags.DEFINE_float('learning_rate', 1e-4, 'SGD learning rate of every QAT '
                   'run (mobilenet_v1_train\'s fine-tuning default).',
                   lower_bound=0.0)
flags.DEFINE_integer('seed', 0, 'Seed of every QAT run (our --random_seed; '
                     'the peer\'s tf_keras seed and input order), so that a '
                     'run repeats.')
flags.DEFINE_list('train_flags', [], 'Flags added to each of our QAT '
                  'training runs, comma-separated (e.g. '
                  '--batch_norm_decay=0.999), to measure a variant.')
flags.DEFINE_integer('calibration_examples', 200, 'Training images the '
                     'post-training int8 model is calibrated on.',
                     lower_bound=1)
flags.DEFINE_list('runs', ['float', 'ptq_int8', 'peer_float', 'peer_int8',
                           'ours_int8', 'ours_int8_distilled', 'ours_uint8',
                           'ours_uint8_labels'],
                  'Rows to measure, in order.')
flags.DEFINE_list('held_out', ['odd', 'even'], 'The halves of the classes '
                  'that validate, in turn (odd: the classes at odd positions '
                  'in sorted order; the other half trains); with both, a '
                  'table over all 1,000 images follows.')
flags.DEFINE_string('child', '', 'Internal: run a peer step in this process '
                    '(peer_float or peer_int8, then :odd or :even, the '
                    'held-out half).')

_IMAGE_SIZE = 224
_NUM_CLASSES = 1001
_LOG_EVERY = 20


def _path(*parts):
  return os.path.join(FLAGS.work_dir, *parts)


def _split_path(held_out, *parts):
  """Where the data and runs of the split that validates on `held_out` go."""
  return _path('held_out_' + held_out, *parts)


def _run(binary, *args):
  """Runs one of our binaries as a user would; returns its stdout.

  Raises:
    RuntimeError: it failed (with its last lines of output).
  """
  argv = [sys.executable, os.path.join(_ROOT, binary + '.py')] + list(args)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  done = subprocess.run(argv, cwd=_ROOT, env=env, capture_output=True,
                        text=True, check=False)
  if done.returncode:
    raise RuntimeError('%s failed:\n%s' % (
        binary, '\n'.join((done.stdout + done.stderr).splitlines()[-15:])))
  return done.stdout


def _make_data(held_out):
  """The class-split TFRecords of the sample images, made once per split."""
  data = _split_path(held_out, 'data')
  if os.path.exists(os.path.join(data, 'conversion_complete.json')):
    return data
  if not FLAGS.sample_images:
    raise app.UsageError('give --sample_images (a checkout of '
                         'github.com/EliSchwartz/imagenet-sample-images)')
  images = sorted(name for name in os.listdir(FLAGS.sample_images)
                  if name.startswith('n') and name.endswith('.JPEG'))
  if len(images) != 1000:
    raise app.UsageError('%s has %d synset-named JPEGs, expected 1000' %
                         (FLAGS.sample_images, len(images)))
  for index, name in enumerate(images):
    synset = name.split('_')[0]
    for split in ('train', 'val'):
      # Every class folder in both, so that both splits share labels.txt.
      os.makedirs(_split_path(held_out, 'images', split, synset),
                  exist_ok=True)
    position = 'even' if index % 2 == 0 else 'odd'
    split = 'val' if position == held_out else 'train'
    shutil.copy(os.path.join(FLAGS.sample_images, name),
                _split_path(held_out, 'images', split, synset, name))
  _run('build_imagenet_tfrecords',
       '--image_dir=' + _split_path(held_out, 'images', 'train'),
       '--validation_dir=' + _split_path(held_out, 'images', 'val'),
       '--output_dir=' + data)
  return data


def _released_checkpoint():
  """The released float 1.0_224 as Google's tarball holds it, made once."""
  prefix = _path('released', 'mobilenet_v1_1.0_224.ckpt')
  if not os.path.exists(prefix + '.index'):
    from released import released_models  # pylint: disable=g-import-not-at-top
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    graph_def = released_models.fetch_float_graph(_path('released'))
    released_models.write_float_checkpoint(graph_def, prefix)
  return prefix


def _accuracy(stdout):
  return float(re.findall(r'Accuracy (\d\.\d+)', stdout)[-1])


def _validation(data):
  """The validation split after eval preprocessing: (images, labels)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from runtime import slim_compat  # pylint: disable=g-import-not-at-top,unused-import
  from data import records  # pylint: disable=g-import-not-at-top
  batches = list(records.build_dataset(
      data, 'validation', 50, _IMAGE_SIZE, is_training=False)
                 .as_numpy_iterator())
  return (np.concatenate([images for images, _ in batches]),
          np.concatenate([labels for _, labels in batches]))


def _top1(scores, labels):
  """Top-1 with ties at the top shared: 1/k when the label is among k tied."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  scores = np.asarray(scores, np.float64)
  best = scores.max(axis=1, keepdims=True)
  tied = np.sum(scores == best, axis=1)
  wins = scores[np.arange(len(labels)), labels] == best[:, 0]
  return float(np.mean(wins / tied))


def _tflite_top1(path, data, first_class=0):
  """Top-1 of a .tflite on the validation split (see `_top1`).

  Args:
    path: the model.
    data: the dataset directory.
    first_class: the label of the model's first output (1 for a model
      without the background class).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from evaluation import tflite_eval  # pylint: disable=g-import-not-at-top
  images, labels = _validation(data)
  interpreter, _ = tflite_eval.load_interpreter(path, tflite_eval.all_cores())
  input_details = interpreter.get_input_details()[0]
  output_index = interpreter.get_output_details()[0]['index']
  scores = []
  for image in tflite_eval.quantize_input(images, input_details):
    interpreter.set_tensor(input_details['index'], image[np.newaxis])
    interpreter.invoke()
    scores.append(interpreter.get_tensor(output_index)[0].copy())
  return _top1(scores, labels - first_class)


def _train_speed(log):
  """Median of the trainer's images/s reports (each over _LOG_EVERY steps)."""
  rates = sorted(float(r) for r in re.findall(r'([\d.]+) images/s', log))
  return rates[len(rates) // 2] if rates else None


def _ours(name, held_out, checkpoint, extra_flags):
  """Fine-tunes, exports and evaluates one of our QAT models."""
  data = _split_path(held_out, 'data')
  run_dir = _split_path(held_out, name)
  log_path = os.path.join(run_dir, 'train_log.txt')
  cached = os.path.exists(log_path)
  if not cached:
    train_dir = os.path.join(run_dir, 'train')
    shutil.rmtree(train_dir, ignore_errors=True)
    log = _run('mobilenet_v1_train', '--dataset_dir=' + data,
               '--checkpoint_dir=' + train_dir, '--quantize=True',
               '--fine_tune_checkpoint=' + checkpoint,
               '--num_classes=%d' % _NUM_CLASSES,
               '--batch_size=%d' % FLAGS.batch_size,
               '--learning_rate=%g' % FLAGS.learning_rate,
               '--number_of_steps=%d' % FLAGS.steps,
               '--random_seed=%d' % FLAGS.seed,
               '--log_every_n_steps=%d' % _LOG_EVERY, *extra_flags,
               *FLAGS.train_flags)
    bundle = os.path.join(run_dir, 'bundle')
    _run('mobilenet_v1_export', '--checkpoint_dir=' + train_dir,
         '--output_dir=' + bundle, '--quantize=True')
    with open(log_path, 'w') as f:
      f.write(log)
  with open(log_path) as f:
    log = f.read()
  # The trainer's own line when its fused kernels could not run (not built,
  # or not for this CPU): the speed is then not the trainer's usual one.
  for line in log.splitlines():
    if 'not fused' in line:
      print('  %s: %s' % (name, line), flush=True)
  tflite = os.path.join(run_dir, 'bundle', 'mobilenet_v1_1.0_224_quant.tflite')
  return {'top1': _tflite_top1(tflite, data),
          'images_per_second': _train_speed(log), 'cached': cached}


def _float(held_out, checkpoint):
  return {'top1': _accuracy(_run(
      'mobilenet_v1_eval', '--dataset_dir=' + _split_path(held_out, 'data'),
      '--checkpoint_path=' + checkpoint,
      '--eval_dir=' + _split_path(held_out, 'float_eval')))}


def _ptq_int8(held_out, checkpoint):
  data = _split_path(held_out, 'data')
  bundle = _split_path(held_out, 'ptq_int8')
  tflite = os.path.join(bundle, 'mobilenet_v1_1.0_224_ptq_int8.tflite')
  if not os.path.exists(tflite):
    _run('mobilenet_v1_export', '--checkpoint_path=' + checkpoint,
         '--output_dir=' + bundle, '--post_training=int8',
         '--dataset_dir=' + data,
         '--calibration_examples=%d' % FLAGS.calibration_examples)
  return {'top1': _tflite_top1(tflite, data)}


def _keras_mobilenet(tf_keras, checkpoint):
  """tf_keras's MobileNet with the released weights (1000 classes)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(checkpoint)
  model = tf_keras.applications.MobileNet(
      input_shape=(_IMAGE_SIZE, _IMAGE_SIZE, 3), weights=None,
      classes=_NUM_CLASSES - 1)

  def released(name):
    return reader.get_tensor('MobilenetV1/' + name)

  def batch_norm(scope):
    return [released(scope + '/BatchNorm/' + v) for v in
            ('gamma', 'beta', 'moving_mean', 'moving_variance')]

  model.get_layer('conv1').set_weights([released('Conv2d_0/weights')])
  model.get_layer('conv1_bn').set_weights(batch_norm('Conv2d_0'))
  for block in range(1, 14):
    depthwise = 'Conv2d_%d_depthwise' % block
    pointwise = 'Conv2d_%d_pointwise' % block
    model.get_layer('conv_dw_%d' % block).set_weights(
        [released(depthwise + '/depthwise_weights')])
    model.get_layer('conv_dw_%d_bn' % block).set_weights(
        batch_norm(depthwise))
    model.get_layer('conv_pw_%d' % block).set_weights(
        [released(pointwise + '/weights')])
    model.get_layer('conv_pw_%d_bn' % block).set_weights(
        batch_norm(pointwise))
  # Class 0 of ours is the background class, which Keras's logits lack.
  model.get_layer('conv_preds').set_weights([
      released('Logits/Conv2d_1c_1x1/weights')[..., 1:],
      released('Logits/Conv2d_1c_1x1/biases')[1:]])
  return model


def _run_peer_float(held_out):
  """The released weights in tf_keras, float, on the validation split."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  images, labels = _validation(_split_path(held_out, 'data'))
  model = _keras_mobilenet(tf_keras, _path('released',
                                           'mobilenet_v1_1.0_224.ckpt'))
  return {'top1': _top1(model.predict(images, batch_size=50, verbose=0),
                        labels - 1)}


def _run_peer_qat(held_out):
  """tfmot QAT of the released weights in tf_keras: images/s, .tflite."""
  from runtime import slim_compat  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from data import records  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(FLAGS.seed)
  model = tfmot_peer.quantize(tfmot, tf_keras, _keras_mobilenet(
      tf_keras, _path('released', 'mobilenet_v1_1.0_224.ckpt')))
  model.compile(optimizer=tf_keras.optimizers.SGD(FLAGS.learning_rate),
                loss='sparse_categorical_crossentropy')
  train = records.build_dataset(
      _split_path(held_out, 'data'), 'train', FLAGS.batch_size, _IMAGE_SIZE,
      is_training=True, seed=FLAGS.seed).map(
          lambda images, labels: (images, labels - 1))

  timer = peer_process.step_timer(tf_keras)
  model.fit(train, epochs=1, steps_per_epoch=FLAGS.steps, callbacks=[timer],
            verbose=0)
  # As the trainer reports it: steps after the first (graph building,
  # kernel set-up) over their wall time.
  marks = timer.times
  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.inference_input_type = tf.int8
  converter.inference_output_type = tf.int8
  with open(_split_path(held_out, 'peer_int8', 'model.tflite'), 'wb') as f:
    f.write(converter.convert())
  return {'images_per_second': FLAGS.batch_size * (len(marks) - 1) /
                               (marks[-1] - marks[0])}


def _peer_int8(held_out):
  """The peer's QAT (in a child process, once), then its .tflite's top-1."""
  result_path = _split_path(held_out, 'peer_int8', 'result.json')
  cached = os.path.exists(result_path)
  if not cached:
    os.makedirs(_split_path(held_out, 'peer_int8'), exist_ok=True)
    result, error = _spawn('peer_int8', held_out)
    if result is None:
      raise RuntimeError('the peer failed: ' + error)
    with open(result_path, 'w') as f:
      json.dump(result, f)
  with open(result_path) as f:
    result = json.load(f)
  result['top1'] = _tflite_top1(
      _split_path(held_out, 'peer_int8', 'model.tflite'),
      _split_path(held_out, 'data'), first_class=1)
  result['cached'] = cached
  return result


def _spawn(peer, held_out):
  return peer_process.run(
      __file__, peer + ':' + held_out,
      ('work_dir', 'steps', 'batch_size', 'learning_rate', 'seed'), _ROOT,
      6 * 3600, peer_process.tensorflow_defaults())


_DESCRIPTIONS = {
    'float': 'released float checkpoint',
    'ptq_int8': 'post-training int8 (per-channel), export --post_training',
    'ours_int8': 'our QAT, default flags (per-channel int8, labels alone)',
    'ours_int8_distilled': 'the same, --distillation_weight=1 (distilled)',
    'ours_uint8': 'our QAT, --weight_quantization=asymmetric (uint8; ranges '
                  'equalised first, distilled, weights rounded after the '
                  'last step: the defaults)',
    'ours_uint8_labels': 'the same, --distillation_weight=0 (labels alone)',
    'peer_float': 'the released weights in tf_keras, float',
    'peer_int8': 'tfmot QAT of tf_keras MobileNet, logits\' range from all '
                 'values seen (int8)',
}


# Our rows: the trainer's flags beyond the bench's shared ones.
_OURS_FLAGS = {
    'ours_int8': [],
    'ours_int8_distilled': ['--distillation_weight=1'],
    'ours_uint8': ['--weight_quantization=asymmetric'],
    'ours_uint8_labels': ['--weight_quantization=asymmetric',
                          '--distillation_weight=0'],
}


def _measure(name, held_out, checkpoint):
  """One row on one split: {'top1': ..., maybe 'images_per_second': ...}.

  Raises:
    RuntimeError: a peer's child process failed (what went wrong).
  """
  if name == 'float':
    return _float(held_out, checkpoint)
  if name == 'ptq_int8':
    return _ptq_int8(held_out, checkpoint)
  if name in _OURS_FLAGS:
    return _ours(name, held_out, checkpoint, _OURS_FLAGS[name])
  if name == 'peer_float':
    result, error = _spawn(name, held_out)
    if result is None:
      raise RuntimeError(error)
    return result
  return _peer_int8(held_out)


def _print_row(name, result, note):
  print('%-19s top-1 %5.1f%%%s  (%s%s)' % (
      name, 100 * result['top1'],
      '  %5.2f train images/s' % result['images_per_second']
      if result.get('images_per_second') else '', note,
      '; trained by an earlier invocation in this --work_dir'
      if result.get('cached') else ''), flush=True)


def _print_speed_ratio(results):
  ours, peer = results.get('ours_int8'), results.get('peer_int8')
  if ours and peer:
    print('QAT training speed, ours / peer: %.2fx%s' % (
        ours['images_per_second'] / peer['images_per_second'],
        ' (trained in an earlier invocation, possibly under other load; a '
        'fresh --work_dir trains both in one run)'
        if ours.get('cached') or peer.get('cached') else ''), flush=True)


def _combined(per_split):
  """Rows measured on every split: top-1 over all their images, mean speed."""
  combined = {}
  for name in FLAGS.runs:
    results = [split[name] for split in per_split.values() if name in split]
    if len(results) < len(per_split):
      continue
    combined[name] = {'top1': sum(r['top1'] for r in results) / len(results),
                      'cached': any(r.get('cached') for r in results)}
    if all(r.get('images_per_second') for r in results):
      combined[name]['images_per_second'] = sum(
          r['images_per_second'] for r in results) / len(results)
  return combined


def main(argv):
  del argv  # unused
  for held_out in FLAGS.held_out:
    if held_out not in ('odd', 'even'):
      raise app.UsageError('--held_out takes odd and even, not %r' % held_out)
  if FLAGS.child:
    peer, held_out = FLAGS.child.split(':')
    peer_process.report(_run_peer_float(held_out) if peer == 'peer_float'
                        else _run_peer_qat(held_out))
    return
  for held_out in FLAGS.held_out:
    _make_data(held_out)
  checkpoint = _released_checkpoint()
  print('QAT of the released MobileNet_v1_1.0_224: %d steps, batch %d, SGD '
        'learning rate %g, seed %d; CPU %s, %d cores' % (
            FLAGS.steps, FLAGS.batch_size, FLAGS.learning_rate, FLAGS.seed,
            peer_process.cpu()[0], os.cpu_count()), flush=True)
  if FLAGS.train_flags:
    print('Our runs add: %s' % ' '.join(FLAGS.train_flags), flush=True)
  for name in FLAGS.runs:
    if name not in _DESCRIPTIONS:
      raise app.UsageError('unknown run %r (--runs takes %s)' % (
          name, ', '.join(_DESCRIPTIONS)))
  per_split = {}
  for held_out in FLAGS.held_out:
    print('\nValidating on the 500 classes at %s positions, fine-tuning on '
          'the others:' % held_out, flush=True)
    results = per_split[held_out] = {}
    for name in FLAGS.runs:
      start = time.time()
      try:
        results[name] = _measure(name, held_out, checkpoint)
      except RuntimeError as error:
        print('%-19s failed: %s' % (name, error), flush=True)
        continue
      _print_row(name, results[name], '%s; %.0f s, load %.1f' % (
          _DESCRIPTIONS[name], time.time() - start,
          peer_process.load_average()))
    _print_speed_ratio(results)
  if len(per_split) > 1:
    print('\nAll %d held-out images (each split\'s 500, the mean of its '
          'figures):' % (500 * len(per_split)), flush=True)
    combined = _combined(per_split)
    for name, result in combined.items():
      _print_row(name, result, _DESCRIPTIONS[name])
    _print_speed_ratio(combined)
    per_split['all'] = combined
  with open(_path('results.json'), 'w') as f:
    json.dump(per_split, f, indent=1)


if __name__ == '__main__':
  app.run(main)
