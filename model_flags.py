"""The model and checkpoint flags that the binaries share.

Training, evaluation and export must agree on the model they build, so the
flags that describe it are defined here once, with one set of bounds and one
help text. A binary's main module calls the definers it needs and then
`flags.adopt_module_key_flags(model_flags)`, so that its --help lists them.
"""

from absl import flags


def define_model_flags(quantize_help):
  """Defines --num_classes, --image_size, --depth_multiplier and --quantize.

  Args:
    quantize_help: the help text of --quantize, which means "train
      quantization-aware" to training and "the checkpoint was trained so" to
      evaluation and export.
  """
  define_architecture_flags()
  flags.DEFINE_bool('quantize', False, quantize_help)


def define_architecture_flags():
  """Defines --num_classes, --image_size and --depth_multiplier.

  The benches build the model from these too, with the binaries' bounds.
  """
  flags.DEFINE_integer('num_classes', 1001,
                       'Classes of the logits layer: 1001 for ImageNet (class '
                       '0 is background), N+1 for a dataset of N classes. '
                       'Evaluation and export take the value training used.',
                       lower_bound=2)
  flags.DEFINE_integer('image_size', 224, 'Input resolution (square).',
                       lower_bound=32)
  flags.DEFINE_float('depth_multiplier', 1.0,
                     'Width multiplier: 1.0, 0.75, 0.5 or 0.25 for the '
                     'released models (any positive value works). Evaluation '
                     'and export take the value training used.',
                     lower_bound=0.01)


def define_checkpoint_flags():
  """Defines --checkpoint_dir and --checkpoint_path, for binaries reading one.

  A binary that writes checkpoints (training) defines its own
  --checkpoint_dir: there it is where checkpoints go.
  """
  flags.DEFINE_string('checkpoint_dir', '',
                      'Directory of training checkpoints; the latest one is '
                      'used.')
  flags.DEFINE_string('checkpoint_path', '',
                      'A specific checkpoint to use instead of the latest in '
                      '--checkpoint_dir.')
