r"""Converts image folders into ImageNet-format sharded TFRecords.

Writes `train-00000-of-0000N`, ..., `validation-00000-of-0000M`, ... and
`labels.txt` into --output_dir, in the format `data/records.py` reads (and the
TF-slim ImageNet tools write). Sources:

  # A folder with one sub-folder of JPEG/PNG images per class; 10% of each
  # class is held out for validation (or give --validation_dir with the same
  # class sub-folders).
  build_imagenet_tfrecords --image_dir=photos/ --output_dir=data/

  # The official ImageNet layout: train/ has synset folders (n01440764/...),
  # val/ has flat JPEGs; the labels file maps them to synsets, either one
  # synset per line in sorted-filename order, or "filename synset" per line.
  build_imagenet_tfrecords --image_dir=train/ --validation_dir=val/ \
      --imagenet_validation_labels=val_labels.txt --output_dir=data/

  # A small sample dataset: scikit-learn's 1797 handwritten digits, coloured.
  build_imagenet_tfrecords --sample_digits --output_dir=/tmp/sample_digits

Classes are numbered 1..N in sorted folder-name order; 0 is left for the
background class, so models are built with num_classes = N + 1.

Images that are not RGB JPEGs (PNG, GIF, BMP, greyscale or CMYK JPEG) are
re-encoded as RGB JPEG. Unreadable images are skipped: each is reported with
its path and the total is printed at the end.

A finished conversion leaves `conversion_complete.json`, which lists the
shards with their example counts (the trainer reads its epoch size there);
re-running with the same inputs (paths, labels, file sizes and modification
times) and flags finds it and exits at once. Anything else rebuilds, without
deleting first: the new dataset is written into the hidden staging directory
`--output_dir/.build_imagenet_tfrecords-staging` and only when it is complete
are the old files moved out and the new ones moved in. Until then the previous
dataset stays as it was, whatever stops the run (Ctrl-C, SIGTERM, SIGKILL, a
full disk); the next run discards an unfinished staging directory, or finishes
a move that was under way. Shards and labels.txt that no marker of ours lists
(another tool's conversion) are only replaced with --overwrite.
"""

import os
import signal
import sys

from absl import flags
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from data import convert
from data import sample_digits
from data import staging
from runtime import cli
from runtime import errors

FLAGS = flags.FLAGS

flags.DEFINE_string(
    'image_dir', None,
    'Folder with one sub-folder of images per class (for ImageNet, the train '
    'folder of synset sub-folders).')
flags.DEFINE_string(
    'validation_dir', None,
    'Validation images: a folder with the same class sub-folders as '
    '--image_dir, or with --imagenet_validation_labels a flat folder of '
    'images. Without it, --validation_fraction of --image_dir is held out.')
flags.DEFINE_string(
    'imagenet_validation_labels', None,
    'Labels of the flat --validation_dir images: one synset per line in '
    'sorted-filename order (as in ILSVRC2012 devkit-derived lists), or '
    '"filename synset" (space or comma separated) per line.')
flags.DEFINE_string(
    'imagenet_metadata', None,
    'Optional "synset<TAB>human readable name" file; its names go into '
    'labels.txt and image/class/text instead of the bare synsets.')
flags.DEFINE_string('output_dir', None,
                    'Where the TFRecord shards and labels.txt are written.')
flags.DEFINE_integer(
    'train_shards', 0,
    'Number of train shards; 0 picks about one shard per 1024 images (at '
    'most 1024 shards).')
flags.DEFINE_integer(
    'validation_shards', 0,
    'Number of validation shards; 0 picks about one shard per 1024 images.')
flags.DEFINE_float(
    'validation_fraction', 0.1,
    'Fraction of each class held out for validation when there is no '
    '--validation_dir (0.2 with --sample_digits).')
flags.DEFINE_integer('num_workers', os.cpu_count() or 1,
                     'Images decoded and re-encoded in parallel.')
flags.DEFINE_integer('seed', 0,
                     'Seed for the train/validation split, the order of '
                     'examples in the shards and the sample digits colours.')
flags.DEFINE_bool(
    'overwrite', False,
    'Replace train-*/validation-* shards and labels.txt in --output_dir that '
    'this converter did not write (e.g. an existing TF-slim conversion). '
    'Without it such files are left alone and the run stops. Either way the '
    'old files stay until the new dataset is complete.')
flags.DEFINE_bool(
    'sample_digits', False,
    'Build a small sample dataset from scikit-learn\'s handwritten digits '
    '(1797 images, 10 classes, 64x64 RGB) instead of converting --image_dir.')


def _raise_interrupted(signal_number, unused_frame):
  raise staging.Interrupted(signal_number)


def _options_from_flags():
  """The ConversionOptions the flags ask for.

  Raises:
    UserError: a flag value cannot work.
  """
  if not FLAGS.output_dir:
    raise errors.UserError('--output_dir is required')
  if FLAGS.num_workers < 1:
    raise errors.UserError('--num_workers must be at least 1')
  if FLAGS.train_shards < 0 or FLAGS.validation_shards < 0:
    raise errors.UserError('--train_shards and --validation_shards must be '
                           '0 (automatic) or more')
  return convert.ConversionOptions(
      output_dir=FLAGS.output_dir, train_shards=FLAGS.train_shards,
      validation_shards=FLAGS.validation_shards,
      num_workers=FLAGS.num_workers, seed=FLAGS.seed,
      overwrite=FLAGS.overwrite)


def _convert(on_event):
  """Validates the flag combination and runs the requested conversion."""
  options = _options_from_flags()
  if FLAGS.sample_digits:
    if FLAGS.image_dir or FLAGS.validation_dir:
      raise errors.UserError('--sample_digits builds its own images; drop '
                             '--image_dir and --validation_dir')
    return sample_digits.write_sample_digits(options, on_event)
  if not FLAGS.image_dir:
    raise errors.UserError('give --image_dir (a folder of class sub-folders) '
                           'or --sample_digits')
  if FLAGS.validation_dir and FLAGS['validation_fraction'].present:
    raise errors.UserError('give either --validation_dir or '
                           '--validation_fraction, not both')
  source = convert.FolderSource(
      image_dir=FLAGS.image_dir, validation_dir=FLAGS.validation_dir,
      validation_fraction=FLAGS.validation_fraction,
      imagenet_validation_labels=FLAGS.imagenet_validation_labels,
      imagenet_metadata=FLAGS.imagenet_metadata)
  return convert.convert_folder(source, options, on_event)


def main(argv, on_event=convert.ignore_event):
  """Converts as the flags say and prints what was written.

  Args:
    argv: the command line, without flags; nothing is expected.
    on_event: as for convert.convert_folder; tests interrupt the run at an
      exact point with it.
  """
  del argv  # cli.run refuses extra arguments.
  for signal_number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signal_number, _raise_interrupted)
  try:
    result = _convert(on_event)
  except staging.Interrupted as interruption:
    if interruption.while_moving:
      state = (' while moving the finished conversion into %s; rerun the '
               'same command to finish the move' % FLAGS.output_dir)
    else:
      state = '; %s is as it was before this run' % FLAGS.output_dir
    print('build_imagenet_tfrecords: interrupted (%s)%s' %
          (interruption, state), file=sys.stderr)
    sys.exit(128 + interruption.signal_number)
  except (OSError, tf.errors.OpError) as error:
    # Writing failed (disk full, no permission) before the new dataset was
    # complete, or while it was being moved into place (which a rerun
    # finishes).
    message = getattr(error, 'message', None) or str(error)
    sys.exit('build_imagenet_tfrecords: error writing %s: %s' %
             (FLAGS.output_dir, message))
  print(result.summary())


if __name__ == '__main__':
  cli.run(main)
