r"""Top-1 of float32 against mixed bfloat16 training, seed by seed.

Trains the quick start's model (0.25@64 from scratch on the sample digits,
tools/demo.sh's float run) once per seed in each precision with
mobilenet_v1_train, evaluates each checkpoint on the held-out validation
split with mobilenet_v1_eval, and prints the top-1 side by side with each
precision's mean and spread over the seeds. Float training from scratch is
not bit-reproducible across runs (threads sum in varying order), so the
spread of float32 alone is the yardstick that mixed bfloat16 is held to.

  .venv/bin/python bench/precision_bench.py --work_dir=/tmp/precision \
      --seeds=0,1,2

Both binaries run from this checkout (the fused kernels from bazel-bin:
`bazel build -c opt //kernels:batch_norm_relu6_ops.so` first).

With --fine_tune_checkpoint (a released float checkpoint, e.g. 1.0_224) and
--dataset_dir, it fine-tunes that checkpoint instead, with the given model
flags, and evaluates on --dataset_dir's validation split.
"""

import os
import re
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import peer_process
from training import precision
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

flags.DEFINE_string('work_dir', '', 'Where the data, checkpoints and logs go.')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Random seeds (--random_seed) '
                  'to train each precision with.')
flags.DEFINE_list('precisions', list(precision.PRECISIONS),
                  'Precisions to train in (mobilenet_v1_train --precision).')
flags.DEFINE_string('dataset_dir', '', 'TFRecords to train and evaluate on; '
                    'empty builds the sample digits in --work_dir.')
flags.DEFINE_string('fine_tune_checkpoint', '', 'Fine-tune this checkpoint '
                    'instead of training from scratch.')
flags.DEFINE_list('model_flags', ['--depth_multiplier=0.25',
                                  '--image_size=64', '--num_classes=11'],
                  'Model flags given to both binaries.')
flags.DEFINE_list('train_flags', ['--batch_size=32', '--optimizer=momentum',
                                  '--batch_norm_decay=0.99',
                                  '--learning_rate=0.05',
                                  '--number_of_steps=2000',
                                  '--log_every_n_steps=500'],
                  'Training flags (the quick start\'s float run).')


def _run(argv, log_path):
  """Runs a binary, its output to `log_path`; returns its stdout."""
  with open(log_path, 'w') as log:
    done = subprocess.run(argv, cwd=_ROOT, stdout=subprocess.PIPE,
                          stderr=log, text=True, check=False)
    log.write(done.stdout)
  if done.returncode:
    raise RuntimeError('%s failed (exit %d); see %s' % (
        os.path.basename(argv[1]), done.returncode, log_path))
  return done.stdout


def _dataset_dir():
  if FLAGS.dataset_dir:
    return FLAGS.dataset_dir
  data = os.path.join(FLAGS.work_dir, 'sample_digits')
  if not os.path.exists(os.path.join(data, 'labels.txt')):
    _run([sys.executable, 'build_imagenet_tfrecords.py', '--sample_digits',
          '--output_dir=' + data], os.path.join(FLAGS.work_dir, 'data.log'))
  return data


def _train_and_evaluate(data, precision_name, seed):
  """(top-1, training seconds) of one run."""
  name = '%s_seed%s' % (precision_name, seed)
  checkpoint_dir = os.path.join(FLAGS.work_dir, name)
  argv = [sys.executable, 'mobilenet_v1_train.py', '--dataset_dir=' + data,
          '--checkpoint_dir=' + checkpoint_dir, '--random_seed=' + seed,
          '--precision=' + precision_name] + FLAGS.model_flags + FLAGS.train_flags
  if FLAGS.fine_tune_checkpoint:
    argv.append('--fine_tune_checkpoint=' + FLAGS.fine_tune_checkpoint)
  start = time.time()
  _run(argv, os.path.join(FLAGS.work_dir, name + '_train.log'))
  seconds = time.time() - start
  printed = _run([sys.executable, 'mobilenet_v1_eval.py',
                  '--dataset_dir=' + data, '--checkpoint_dir=' + checkpoint_dir]
                 + FLAGS.model_flags,
                 os.path.join(FLAGS.work_dir, name + '_eval.log'))
  top1 = float(re.findall(r'Accuracy ([0-9.]+)', printed)[-1])
  return top1, seconds


def main(argv):
  del argv  # unused
  if not FLAGS.work_dir:
    raise app.UsageError('--work_dir is required')
  os.makedirs(FLAGS.work_dir, exist_ok=True)
  cpu_model, cpu_features = peer_process.cpu()
  print('CPU: %s (native bfloat16: %s); %s' % (
      cpu_model, ', '.join(precision.native_bfloat16_units(cpu_features)) or
      'none', ' '.join(FLAGS.model_flags)), flush=True)
  data = _dataset_dir()
  results = {p: [] for p in FLAGS.precisions}
  print('%-6s %s' % ('seed', ''.join('%-28s' % p for p in FLAGS.precisions)))
  # Seeds outermost: a drift in the machine's load touches both precisions.
  for seed in FLAGS.seeds:
    cells = []
    for precision_name in FLAGS.precisions:
      top1, seconds = _train_and_evaluate(data, precision_name, seed)
      results[precision_name].append(top1)
      cells.append('%-28s' % ('top-1 %.2f%%  (%.0f s)' % (100 * top1,
                                                           seconds)))
    print('%-6s %s' % (seed, ''.join(cells)), flush=True)
  for precision_name, top1s in results.items():
    print('%-15s mean %.2f%%  min %.2f%%  max %.2f%%  over %d seeds' % (
        precision_name, 100 * statistics.mean(top1s), 100 * min(top1s),
        100 * max(top1s), len(top1s)))


if __name__ == '__main__':
  app.run(main)
