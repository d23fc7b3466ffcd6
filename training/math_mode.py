"""oneDNN's math mode for training: float32, or bfloat16 convolutions.

oneDNN reads its math mode from $ONEDNN_DEFAULT_FPMATH_MODE once, when
TensorFlow creates its first oneDNN primitive, for the whole process. The
trainer's main sets it from --bfloat16_convolutions before it imports
TensorFlow; the benches set it in the environment of their children.
This module does not import TensorFlow.
"""

import os

ONEDNN_MATH_MODE_ENV = 'ONEDNN_DEFAULT_FPMATH_MODE'


def onednn_math_mode(bfloat16_convolutions):
  """The $ONEDNN_DEFAULT_FPMATH_MODE that --bfloat16_convolutions asks for.

  Args:
    bfloat16_convolutions: whether convolutions may round their inputs to
      bfloat16.

  Returns:
    'BF16' or 'STRICT' (float32).
  """
  return 'BF16' if bfloat16_convolutions else 'STRICT'


def bfloat16_math_takes_effect(cpu_features):
  """Whether oneDNN's bfloat16 math mode changes what training computes.

  oneDNN 3.7 (TensorFlow 2.21) runs float32 convolutions and matmuls on
  bfloat16 units for that mode only on CPUs with AMX. With AVX512-BF16 alone
  it picks the float32 kernels STRICT mode runs, so the results are the same
  bit for bit; with TF_ENABLE_ONEDNN_OPTS=0 TensorFlow's own kernels compute
  in float32.

  Args:
    cpu_features: the CPU's feature flags, as `batch_norm_relu6.cpu_features`
      reads them.

  Returns:
    True where --bfloat16_convolutions rounds convolution inputs to bfloat16.
  """
  onednn = os.environ.get('TF_ENABLE_ONEDNN_OPTS', '1').lower() not in (
      '0', 'false')
  return onednn and 'amx_bf16' in cpu_features
