"""Finds the images a conversion reads and labels them.

Two layouts: a folder with one sub-folder of images per class, and the
official ImageNet layout (train/ has synset folders, val/ has flat JPEGs that
a labels file maps to synsets). Classes are numbered 1..N in sorted
folder-name order; 0 is left for the background class.
"""

import collections
import os
import random

from absl import logging
from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

from runtime import errors

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')


class ConversionError(errors.UserError):
  """The inputs cannot be converted; the message says what to fix."""


ImageSource = collections.namedtuple('ImageSource',
                                     ['path', 'label', 'class_name'])


def _is_image_file(name):
  return (not name.startswith('.') and
          name.lower().endswith(IMAGE_EXTENSIONS))


def _require_dir(path, what):
  if not tf.io.gfile.exists(path):
    raise ConversionError('%s %s does not exist' % (what, path))
  if not tf.io.gfile.isdir(path):
    raise ConversionError('%s %s is a file, not a directory' % (what, path))


def find_class_images(image_dir):
  """Lists the images of a folder with one sub-folder per class.

  Args:
    image_dir: the folder.

  Returns:
    (class_names, images_by_class): sorted class names and a dict class name
    -> sorted list of image paths.

  Raises:
    ConversionError: the folder is missing, has no class sub-folders or no
      images in them.
  """
  _require_dir(image_dir, '--image_dir')
  entries = sorted(tf.io.gfile.listdir(image_dir))
  class_names = [
      entry.rstrip('/') for entry in entries
      if not entry.startswith('.') and
      tf.io.gfile.isdir(os.path.join(image_dir, entry))
  ]
  if not class_names:
    raise ConversionError(
        'no class sub-folders in %s; put the images of each class in their '
        'own sub-folder, e.g. %s' % (image_dir,
                                     os.path.join(image_dir, 'cat/1.jpg')))
  loose_images = [entry for entry in entries if _is_image_file(entry)]
  if loose_images:
    logging.warning('Ignoring %d images directly in %s (e.g. %s); only images '
                    'in class sub-folders are used.', len(loose_images),
                    image_dir, loose_images[0])
  images_by_class = {}
  for class_name in class_names:
    class_dir = os.path.join(image_dir, class_name)
    images_by_class[class_name] = sorted(
        os.path.join(class_dir, name)
        for name in tf.io.gfile.listdir(class_dir)
        if _is_image_file(name))
    if not images_by_class[class_name]:
      logging.warning('Class folder %s has no images; its label is kept.',
                      class_dir)
  if not any(images_by_class.values()):
    raise ConversionError(
        'no images (%s) in the class sub-folders of %s' %
        ('/'.join(IMAGE_EXTENSIONS), image_dir))
  return class_names, images_by_class


def split_by_class(images_by_class, class_names, validation_fraction, seed):
  """Holds out the same fraction of every class for validation.

  Args:
    images_by_class: dict class name -> list of image paths.
    class_names: sorted class names; the label of class_names[i] is i + 1.
    validation_fraction: fraction of each class (rounded) for validation.
    seed: random seed for which images are held out.

  Returns:
    (train, validation) lists of ImageSource.
  """
  rng = random.Random(seed)
  train, validation = [], []
  for label, class_name in enumerate(class_names, start=1):
    paths = list(images_by_class[class_name])
    rng.shuffle(paths)
    num_validation = int(round(len(paths) * validation_fraction))
    validation.extend(ImageSource(path, label, class_name)
                      for path in paths[:num_validation])
    train.extend(ImageSource(path, label, class_name)
                 for path in paths[num_validation:])
  return train, validation


def labelled_sources(images_by_class, class_names):
  """Labels every image of every class.

  Args:
    images_by_class: dict class name -> list of image paths.
    class_names: sorted class names; the label of class_names[i] is i + 1.

  Returns:
    List of ImageSource, class by class.
  """
  return [ImageSource(path, label, class_name)
          for label, class_name in enumerate(class_names, start=1)
          for path in images_by_class[class_name]]


def read_imagenet_validation_labels(labels_path, image_names):
  """Maps flat validation image names to synsets.

  Args:
    labels_path: file with either one synset per line, in the order of the
      sorted image names, or "filename synset" per line (space, tab or comma
      separated; a header line without a synset-like second field is
      ignored).
    image_names: the image file names in the validation folder.

  Returns:
    Dict image name -> synset.

  Raises:
    ConversionError: the file is missing or does not match the images.
  """
  if not tf.io.gfile.exists(labels_path):
    raise ConversionError('--imagenet_validation_labels file %s does not '
                          'exist' % labels_path)
  with tf.io.gfile.GFile(labels_path, 'r') as labels_file:
    rows = [line.replace(',', ' ').split() for line in labels_file]
  rows = [row for row in rows if row]
  sorted_names = sorted(image_names)
  if all(len(row) == 1 for row in rows):
    if len(rows) != len(sorted_names):
      raise ConversionError(
          '%s has %d synsets but the validation folder has %d images; a '
          'one-synset-per-line file must list every image in sorted order' %
          (labels_path, len(rows), len(sorted_names)))
    return {name: row[0] for name, row in zip(sorted_names, rows)}
  synset_by_stem = {}
  for row in rows:
    if len(row) >= 2 and row[1].startswith('n') and row[1][1:].isdigit():
      synset_by_stem[os.path.splitext(row[0])[0]] = row[1]
  labels = {}
  for name in sorted_names:
    stem = os.path.splitext(name)[0]
    if stem not in synset_by_stem:
      raise ConversionError('%s has no synset for validation image %s' %
                            (labels_path, name))
    labels[name] = synset_by_stem[stem]
  return labels


def read_imagenet_metadata(metadata_path):
  """Reads the human-readable names of synsets.

  Args:
    metadata_path: file of "synset<TAB>human readable name" lines.

  Returns:
    Dict synset -> name.

  Raises:
    ConversionError: the file does not exist.
  """
  if not tf.io.gfile.exists(metadata_path):
    raise ConversionError('--imagenet_metadata file %s does not exist' %
                          metadata_path)
  names = {}
  with tf.io.gfile.GFile(metadata_path, 'r') as metadata_file:
    for line in metadata_file:
      synset, _, name = line.rstrip('\n').partition('\t')
      if synset and name:
        names[synset] = name
  return names


def validation_sources(validation_dir, class_names, imagenet_labels_path):
  """Labels the images of --validation_dir (class folders or flat ImageNet).

  Args:
    validation_dir: class sub-folders like --image_dir's or, with
      imagenet_labels_path, a flat folder of images.
    class_names: the sorted class (folder) names of --image_dir; the label
      of class_names[i] is i + 1.
    imagenet_labels_path: file mapping the flat images to synsets (see
      read_imagenet_validation_labels), or None for class sub-folders.

  Returns:
    List of ImageSource.

  Raises:
    ConversionError: the folder is missing or empty, or names classes that
      --image_dir lacks.
  """
  _require_dir(validation_dir, '--validation_dir')
  label_of = {name: label for label, name in enumerate(class_names, start=1)}
  if imagenet_labels_path:
    image_names = [name for name in tf.io.gfile.listdir(validation_dir)
                   if _is_image_file(name)]
    if not image_names:
      raise ConversionError('no images in --validation_dir %s' %
                            validation_dir)
    synsets = read_imagenet_validation_labels(imagenet_labels_path,
                                              image_names)
    unknown = sorted(set(synsets.values()) - set(label_of))
    if unknown:
      raise ConversionError(
          '%s names synsets with no folder in --image_dir (e.g. %s)' %
          (imagenet_labels_path, unknown[0]))
    return [ImageSource(os.path.join(validation_dir, name), label_of[synset],
                        synset)
            for name, synset in sorted(synsets.items())]
  validation_names, images_by_class = find_class_images(validation_dir)
  unknown = sorted(set(validation_names) - set(label_of))
  if unknown:
    raise ConversionError(
        '--validation_dir %s has class folders that --image_dir lacks (e.g. '
        '%s); both need the same class sub-folders' % (validation_dir,
                                                       unknown[0]))
  return [ImageSource(path, label_of[name], name)
          for name in validation_names for path in images_by_class[name]]
