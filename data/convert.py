"""Converts image folders into ImageNet-format sharded TFRecords.

Writes `train-00000-of-0000N`, ..., `validation-00000-of-0000M`, ... and
`labels.txt` into the output directory, in the format `records` reads (and
the TF-slim ImageNet tools write), through the staging directory (see
`staging`): a finished conversion that is re-run with the same inputs and
options is found and nothing is written.
"""

import dataclasses
import os
import random
from typing import Optional

from absl import logging

from data import progress
from data import records
from data import shards
from data import sources
from data import staging


def ignore_event(unused_event):
  """The default on_event: conversions run through without interruption."""


@dataclasses.dataclass(frozen=True)
class ConversionOptions:
  """How a conversion writes its dataset.

  Attributes:
    output_dir: where shards, labels.txt and the completion marker go.
    train_shards: number of train shards; 0 for automatic.
    validation_shards: number of validation shards; 0 for automatic.
    num_workers: images decoded and re-encoded in parallel; None for one per
      CPU.
    seed: seed for the train/validation split, the order of examples in the
      shards and the sample digits' colours.
    overwrite: replace shards and labels.txt in output_dir that no marker of
      ours lists.
    show_progress: draw a progress bar on stderr.
  """
  output_dir: str
  train_shards: int = 0
  validation_shards: int = 0
  num_workers: Optional[int] = None
  seed: int = 0
  overwrite: bool = False
  show_progress: bool = True


@dataclasses.dataclass(frozen=True)
class FolderSource:
  """The image folders a conversion reads.

  Attributes:
    image_dir: folder with one sub-folder of images per class.
    validation_dir: validation images, in class sub-folders like image_dir,
      or flat when imagenet_validation_labels is given. None holds out
      validation_fraction of image_dir instead.
    validation_fraction: fraction of each class held out when there is no
      validation_dir.
    imagenet_validation_labels: file mapping the flat validation_dir images
      to synsets (see sources.read_imagenet_validation_labels).
    imagenet_metadata: optional "synset<TAB>name" file for readable names.
  """
  image_dir: str
  validation_dir: Optional[str] = None
  validation_fraction: float = 0.1
  imagenet_validation_labels: Optional[str] = None
  imagenet_metadata: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ConversionResult:
  """What a conversion produced.

  Attributes:
    output_dir: directory holding the shards and labels.txt.
    class_names: class names; class_names[i] has label i + 1.
    split_counts: dict split name -> number of examples written.
    shard_files: dict split name -> list of shard paths.
    skipped: list of (image path, reason) for images that could not be read.
    already_complete: True when an identical earlier conversion was found and
      nothing was written.
  """
  output_dir: str
  class_names: list
  split_counts: dict
  shard_files: dict
  skipped: list
  already_complete: bool

  @property
  def num_classes(self):
    """The model's num_classes: one per class plus the background class 0."""
    return len(self.class_names) + 1

  def summary(self):
    """The closing message of a conversion, for the terminal."""
    if self.already_complete:
      lines = ['%s already holds this conversion (%s); nothing to do.' %
               (self.output_dir, records.COMPLETION_FILENAME)]
    else:
      lines = ['Wrote %s.' % self.output_dir]
    for split in (records.TRAIN_SPLIT, records.VALIDATION_SPLIT):
      if self.split_counts.get(split):
        lines.append('  %s: %d images in %d shards' %
                     (split, self.split_counts[split],
                      len(self.shard_files[split])))
    if self.skipped:
      lines.append('  skipped %d unreadable images (e.g. %s)' %
                   (len(self.skipped), self.skipped[0][0]))
    lines.append('  %d classes, labels 1..%d in %s (0 is the background '
                 'class): train and evaluate with --num_classes=%d' %
                 (len(self.class_names), len(self.class_names),
                  records.LABELS_FILENAME, self.num_classes))
    return '\n'.join(lines)


def _result_from_marker(output_dir, marker, already_complete):
  return ConversionResult(
      output_dir=output_dir,
      class_names=marker['class_names'],
      split_counts=marker['split_counts'],
      shard_files={
          split: [os.path.join(output_dir, path.rsplit('/', 1)[-1])
                  for path in paths]
          for split, paths in marker['shard_files'].items()},
      skipped=[tuple(skip) for skip in marker['skipped']],
      already_complete=already_complete)


def find_earlier_conversion(output_dir, config, on_event=ignore_event):
  """Settles an interrupted run, then looks for an identical finished one.

  Args:
    output_dir: the conversion's destination.
    config: JSON-serializable description of the conversion, as given to
      write_dataset.
    on_event: as for convert_folder.

  Returns:
    The earlier conversion's ConversionResult (already_complete set), or
    None.

  Raises:
    Interrupted: while finishing an interrupted run's move.
  """
  staging.settle_interrupted_run(output_dir, on_event)
  previous = staging.find_complete_marker(output_dir, config)
  if previous:
    return _result_from_marker(output_dir, previous, already_complete=True)
  return None


def write_dataset(splits, class_names, config, options,
                  on_event=ignore_event):
  """Writes shards, labels.txt and the completion marker, then swaps them in.

  Args:
    splits: dict split name -> list of ImageSource.
    class_names: sorted class names; class_names[i] has label i + 1.
    config: JSON-serializable description of the conversion, stored in the
      completion marker to recognise an identical re-run.
    options: ConversionOptions.
    on_event: as for convert_folder.

  Returns:
    ConversionResult.

  Raises:
    ConversionError: none of the images could be read, or the output
      directory holds another tool's dataset files and options.overwrite is
      False.
    Interrupted: SIGINT or SIGTERM (once main has installed the handlers).
  """
  num_workers = options.num_workers or os.cpu_count() or 1
  shard_counts = {records.TRAIN_SPLIT: options.train_shards,
                  records.VALIDATION_SPLIT: options.validation_shards}

  def write_staged(staging_dir):
    return _write_staged(staging_dir, splits, class_names, shard_counts,
                         num_workers, options.seed, config,
                         options.show_progress, on_event)

  marker = staging.replace_dataset(options.output_dir, write_staged,
                                   options.overwrite, on_event)
  return _result_from_marker(options.output_dir, marker,
                             already_complete=False)


def _write_staged(staging_dir, splits, class_names, shard_counts, num_workers,
                  seed, config, show_progress, on_event):
  """Writes the shards and labels.txt of a conversion into staging_dir.

  Args:
    staging_dir: an empty directory.
    splits: dict split name -> list of ImageSource.
    class_names: sorted class names; class_names[i] has label i + 1.
    shard_counts: dict split name -> requested number of shards (0 for
      automatic).
    num_workers: images decoded and re-encoded in parallel.
    seed: seed for the order of the examples in the shards.
    config: the conversion's description, for the marker.
    show_progress: draw a progress bar on stderr.
    on_event: as for convert_folder.

  Returns:
    The completion marker, as a dict.

  Raises:
    ConversionError: none of the images could be read.
  """
  rng = random.Random(seed)
  total_images = sum(len(split_sources) for split_sources in splits.values())
  progress_bar = progress.ProgressBar(total_images, 'Writing TFRecords')
  images_done = [0]

  def on_image_done():
    images_done[0] += 1
    if show_progress:
      progress_bar.update(images_done[0])

  split_counts, shard_files, skipped = {}, {}, []
  for split, split_sources in sorted(splits.items()):
    split_counts[split], shard_files[split] = 0, []
    if not split_sources:
      continue
    # Classes must be mixed within and across shards for training.
    split_sources = list(split_sources)
    rng.shuffle(split_sources)
    num_shards = min(
        shard_counts[split] or shards.auto_num_shards(len(split_sources)),
        len(split_sources))
    try:
      shard_files[split], split_counts[split] = shards.write_split(
          staging_dir, split, split_sources, num_shards, num_workers, skipped,
          on_image_done, on_event)
    except BaseException:
      if show_progress:
        progress_bar.end_line()
      raise
  if show_progress:
    progress_bar.close(images_done[0])
  if len(skipped) > shards.MAX_REPORTED_SKIPS:
    logging.warning('%d unreadable images skipped in all (the first %d are '
                    'listed above).', len(skipped), shards.MAX_REPORTED_SKIPS)
  if not any(split_counts.values()):
    raise sources.ConversionError(
        'none of the %d images could be read (e.g. %s: %s)' %
        (total_images, skipped[0][0], skipped[0][1]))

  staging.write_text_atomically(
      os.path.join(staging_dir, records.LABELS_FILENAME),
      ''.join('%d:%s\n' % (label, name)
              for label, name in enumerate(class_names, start=1)))
  return {
      'config': config,
      'class_names': list(class_names),
      'split_counts': split_counts,
      'shard_files': shard_files,
      'skipped': skipped,
  }


def convert_folder(source, options, on_event=ignore_event):
  """Converts class-folder images (or the ImageNet layout) into TFRecords.

  Args:
    source: FolderSource, the images.
    options: ConversionOptions, how to write them.
    on_event: called with 'staged' when a shard is complete in the staging
      directory, 'committed' when the staged marker is written and 'moved'
      after every file renamed while the new dataset moves in; tests use it
      to interrupt the conversion at an exact point.

  Returns:
    ConversionResult.

  Raises:
    ConversionError: missing folders, no images, inconsistent arguments,
      another tool's dataset in the output directory without overwrite.
    Interrupted: SIGINT or SIGTERM (once main has installed the handlers).
  """
  validation_fraction = source.validation_fraction
  if not 0.0 <= validation_fraction < 1.0:
    raise sources.ConversionError(
        '--validation_fraction must be in [0, 1), got %g' %
        validation_fraction)
  if source.imagenet_validation_labels and not source.validation_dir:
    raise sources.ConversionError(
        '--imagenet_validation_labels needs --validation_dir (the folder of '
        'validation images it labels)')
  folder_names, images_by_class = sources.find_class_images(source.image_dir)
  readable_names = (sources.read_imagenet_metadata(source.imagenet_metadata)
                    if source.imagenet_metadata else {})
  if source.validation_dir is None:
    train, validation = sources.split_by_class(
        images_by_class, folder_names, validation_fraction, options.seed)
  else:
    train = sources.labelled_sources(images_by_class, folder_names)
    validation = sources.validation_sources(
        source.validation_dir, folder_names,
        source.imagenet_validation_labels)
    validation_fraction = None
  if readable_names:
    train, validation = [[
        image._replace(class_name=readable_names.get(image.class_name,
                                                     image.class_name))
        for image in split_sources] for split_sources in (train, validation)]
  class_names = [readable_names.get(name, name) for name in folder_names]
  splits = {records.TRAIN_SPLIT: train, records.VALIDATION_SPLIT: validation}
  config = {
      'source': 'folder',
      'image_dir': os.path.abspath(source.image_dir),
      'validation_dir': (source.validation_dir and
                         os.path.abspath(source.validation_dir)),
      'validation_fraction': validation_fraction,
      'class_names': class_names,
      'train_shards': options.train_shards,
      'validation_shards': options.validation_shards,
      'seed': options.seed,
      'inputs': staging.input_fingerprint(splits),
  }
  previous = find_earlier_conversion(options.output_dir, config, on_event)
  if previous:
    return previous
  return write_dataset(splits, class_names, config, options, on_event)
