"""Inception-style preprocessing of encoded ImageNet images.

Training takes a random crop that covers at least 10% of a bounding box,
resizes it, flips it and distorts its colours; evaluation crops the central
87.5% and resizes. Both resize as slim did, with TF1's bilinear resize (no
half-pixel centres), and map pixels to [-1, 1].

Each preprocessing has two stages: decoding the crop (`decode_train_crop`,
`decode_eval_crop`), the stage that fails on a bad image, and finishing it
(`finish_train_image`, `finish_eval_image`). The input pipeline (`records`)
runs them apart so that it can report undecodable records;
`preprocess_for_train` and `preprocess_for_eval` run both on one image.
"""

from runtime import slim_compat  # pylint: disable=unused-import
import tensorflow as tf

tf1 = tf.compat.v1

# Inception's crop sampling parameters.
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (3. / 4., 4. / 3.)
AREA_RANGE = (0.05, 1.0)
MAX_CROP_ATTEMPTS = 100
EVAL_CENTRAL_FRACTION = 0.875

# The resize methods slim's training picks from when not in fast mode, in
# its order.
_TRAIN_RESIZE_METHODS = (tf1.image.ResizeMethod.BILINEAR,
                         tf1.image.ResizeMethod.NEAREST_NEIGHBOR,
                         tf1.image.ResizeMethod.BICUBIC,
                         tf1.image.ResizeMethod.AREA)


def _to_unit_range(image):
  """Maps a float image in [0, 1] to [-1, 1] (same as (x/255 - 0.5) * 2)."""
  return (image - 0.5) * 2.0


def _decode_crop(image_bytes, crop_window_fn):
  """Decodes an image to RGB uint8, keeping only a window of it.

  JPEGs go through the fused `decode_and_crop_jpeg`, which skips decoding most
  of what the crop throws away; other formats (PNG, GIF, BMP) are decoded
  whole and then cropped.

  Args:
    image_bytes: scalar string tensor with an encoded image.
    crop_window_fn: maps the image's [height, width, channels] int32 shape to
      an int32 [offset_y, offset_x, height, width] window.

  Returns:
    uint8 tensor [crop_height, crop_width, 3].
  """

  def decode_jpeg():
    window = crop_window_fn(tf.image.extract_jpeg_shape(image_bytes))
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def decode_other():
    image = tf.io.decode_image(image_bytes, channels=3,
                               expand_animations=False)
    window = crop_window_fn(tf.shape(image))
    return tf.slice(image, [window[0], window[1], 0],
                    [window[2], window[3], 3])

  return tf.cond(tf.io.is_jpeg(image_bytes), decode_jpeg, decode_other)


def _central_crop_window(shape, central_fraction):
  """The window `tf.image.central_crop` would keep, as [y, x, h, w]."""
  height, width = shape[0], shape[1]
  offset_y = tf.cast(
      (tf.cast(height, tf.float64) * (1 - central_fraction)) / 2, tf.int32)
  offset_x = tf.cast(
      (tf.cast(width, tf.float64) * (1 - central_fraction)) / 2, tf.int32)
  return tf.stack(
      [offset_y, offset_x, height - 2 * offset_y, width - 2 * offset_x])


def _distorted_crop_window_fn(bboxes, seed):
  """Returns a crop_window_fn sampling an Inception-style random crop.

  The sampling is stateless (driven by `seed`) so that it gives fresh crops
  even where tf.data re-instantiates the function for every record.

  Args:
    bboxes: float [N, 4] boxes (ymin, xmin, ymax, xmax) in [0, 1]; N may be 0,
      in which case the whole image is the object.
    seed: int32 [2] seed for the crop sampling.

  Returns:
    A crop_window_fn for `_decode_crop`.
  """

  def crop_window(shape):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.reshape(bboxes, [1, -1, 4]),
        seed=seed,
        min_object_covered=MIN_OBJECT_COVERED,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=AREA_RANGE,
        max_attempts=MAX_CROP_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])

  return crop_window


def _distort_color(image, fast_mode, seed):
  """Randomly distorts the colours of a float image in [0, 1], Inception-style.

  The order of the adjustments matters (they do not commute), so one of a few
  orderings is picked at random for every image.

  Args:
    image: float32 [height, width, 3] in [0, 1].
    fast_mode: only brightness and saturation (two orderings) when True; also
      hue and contrast (four orderings) when False.
    seed: int32 [2] seed of the image's distortions.

  Returns:
    The distorted image, clipped to [0, 1].
  """
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=5))

  def brightness(x):
    return tf.image.stateless_random_brightness(x, 32. / 255., seeds[0])

  def saturation(x):
    return tf.image.stateless_random_saturation(x, 0.5, 1.5, seeds[1])

  def hue(x):
    return tf.image.stateless_random_hue(x, 0.2, seeds[2])

  def contrast(x):
    return tf.image.stateless_random_contrast(x, 0.5, 1.5, seeds[3])

  if fast_mode:
    orderings = [(brightness, saturation), (saturation, brightness)]
  else:
    orderings = [(brightness, saturation, hue, contrast),
                 (saturation, brightness, contrast, hue),
                 (contrast, hue, brightness, saturation),
                 (hue, saturation, contrast, brightness)]

  def apply_ordering(ordering):
    def apply():
      distorted = image
      for adjust in ordering:
        distorted = adjust(distorted)
      return distorted
    return apply

  choice = tf.random.stateless_uniform([], seeds[4], maxval=len(orderings),
                                       dtype=tf.int32)
  distorted = tf.switch_case(choice, [apply_ordering(o) for o in orderings])
  return tf.clip_by_value(distorted, 0.0, 1.0)


def _resize(image, image_size, method=tf1.image.ResizeMethod.BILINEAR):
  """Resizes a float image to a square as slim did, with TF1's resize.

  TF1's resize (`align_corners=False`) maps output pixel i to input
  coordinate i * in / out, without TF2's half-pixel centres: published
  accuracies were measured with these pixels.

  Args:
    image: float32 [height, width, 3].
    image_size: output height and width.
    method: a tf.compat.v1.image.ResizeMethod.

  Returns:
    float32 [image_size, image_size, 3].
  """
  return tf1.image.resize(image, [image_size, image_size], method=method,
                          align_corners=False)


def decode_train_crop(image_bytes, bboxes, crop_seed):
  """Decodes an Inception-style random crop of an encoded image.

  Args:
    image_bytes: scalar string tensor, an encoded JPEG (or PNG, GIF, BMP).
    bboxes: float [N, 4] boxes (ymin, xmin, ymax, xmax) in [0, 1] around the
      object; N may be 0, in which case the whole image is the object.
    crop_seed: int32 [2] seed of the crop (see `image_seeds`).

  Returns:
    uint8 tensor [crop_height, crop_width, 3].
  """
  return _decode_crop(image_bytes,
                      _distorted_crop_window_fn(bboxes, crop_seed))


def decode_eval_crop(image_bytes, central_fraction=EVAL_CENTRAL_FRACTION):
  """Decodes the central crop of an encoded image.

  Args:
    image_bytes: scalar string tensor, an encoded JPEG (or PNG, GIF, BMP).
    central_fraction: fraction of each side kept.

  Returns:
    uint8 tensor [crop_height, crop_width, 3].
  """
  return _decode_crop(
      image_bytes, lambda shape: _central_crop_window(shape, central_fraction))


def finish_train_image(crop, image_size, fast_mode, seed):
  """Resizes, flips and colour-distorts a decoded uint8 crop.

  Like slim, the fast mode resizes bilinearly; otherwise each image gets one
  of TF1's four resize methods at random.

  Args:
    crop: uint8 [height, width, 3].
    image_size: output height and width.
    fast_mode: see `_distort_color`.
    seed: int32 [2] seed of the resize method, the flip and the colour
      distortions.

  Returns:
    float32 [image_size, image_size, 3] in [-1, 1].
  """
  resize_seed, flip_seed, color_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=3))
  image = tf.image.convert_image_dtype(crop, tf.float32)
  if fast_mode:
    image = _resize(image, image_size)
  else:
    choice = tf.random.stateless_uniform(
        [], resize_seed, maxval=len(_TRAIN_RESIZE_METHODS), dtype=tf.int32)
    image = tf.switch_case(choice, [
        lambda method=method: _resize(image, image_size, method)
        for method in _TRAIN_RESIZE_METHODS])
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image = _distort_color(image, fast_mode, color_seed)
  return _to_unit_range(image)


def finish_eval_image(crop, image_size):
  """Resizes a decoded uint8 crop and maps it to [-1, 1].

  Args:
    crop: uint8 [height, width, 3].
    image_size: output height and width.

  Returns:
    float32 [image_size, image_size, 3] in [-1, 1].
  """
  image = tf.image.convert_image_dtype(crop, tf.float32)
  return _to_unit_range(_resize(image, image_size))


def image_seeds(seed=None, index=None):
  """The (crop, distortion) seeds of one training image, int32 [2] each.

  Every random choice of the training preprocessing is a stateless op driven
  by these seeds: drawn afresh for each image when `seed` is None, and a
  function of (`seed`, `index`) otherwise, so that a seeded pipeline gives
  the same images however tf.data schedules its parallel calls.

  Args:
    seed: the pipeline's Python int seed, or None.
    index: the image's int64 position in the pipeline (with `seed`).

  Returns:
    (crop seed, distortion seed).
  """
  if seed is None:
    image_seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
  else:
    image_seed = tf.stack([tf.constant(seed, tf.int64),
                           tf.cast(index, tf.int64)])
  return tf.unstack(tf.random.experimental.stateless_split(image_seed, num=2))


def preprocess_for_train(image_bytes, bboxes, image_size, fast_mode=True):
  """Inception-style training preprocessing of one encoded image.

  Args:
    image_bytes: scalar string tensor, an encoded JPEG (or PNG, GIF, BMP).
    bboxes: float tensor [N, 4] of (ymin, xmin, ymax, xmax) boxes in [0, 1]
      around the object; N may be 0, or None, to use the whole image.
    image_size: output height and width.
    fast_mode: distort only brightness and saturation (as slim's MobileNet
      training did) instead of also hue and contrast.

  Returns:
    float32 tensor [image_size, image_size, 3] with values in [-1, 1].
  """
  if bboxes is None:
    bboxes = tf.zeros([0, 4], tf.float32)
  crop_seed, distortion_seed = image_seeds()
  crop = decode_train_crop(image_bytes, bboxes, crop_seed)
  return finish_train_image(crop, image_size, fast_mode, distortion_seed)


def preprocess_for_eval(image_bytes, image_size,
                        central_fraction=EVAL_CENTRAL_FRACTION):
  """Inception-style evaluation preprocessing of one encoded image.

  Args:
    image_bytes: scalar string tensor, an encoded JPEG (or PNG, GIF, BMP).
    image_size: output height and width.
    central_fraction: fraction of each side kept by the central crop.

  Returns:
    float32 tensor [image_size, image_size, 3] with values in [-1, 1].
  """
  return finish_eval_image(decode_eval_crop(image_bytes, central_fraction),
                           image_size)

