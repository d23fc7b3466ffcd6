"""The precisions a training step can run in, and which this CPU favours.

float32, or mixed bfloat16 (mixed_precision.py builds the model in it):
bfloat16 activations and convolutions, float32 variables and loss. A CPU
multiplies bfloat16 natively with AVX512-BF16 or AMX (x86) or the BF16
extension (Arm); elsewhere oneDNN converts to float32 and back, which is
slower than float32 alone, so `native_bfloat16_units` decides the default
(training/config.py). This module does not import TensorFlow: the trainer's
flags read it before TensorFlow loads.
"""

FLOAT32 = 'float32'
MIXED_BFLOAT16 = 'mixed_bfloat16'
PRECISIONS = (FLOAT32, MIXED_BFLOAT16)

# CPU feature flags (as /proc/cpuinfo names them) of bfloat16 arithmetic.
_NATIVE_BFLOAT16_FLAGS = (
    'avx512_bf16',  # x86: bfloat16 dot products (Cooper Lake, Zen 4 on)
    'amx_bf16',     # x86: bfloat16 tile multiplies (Sapphire Rapids on)
    'bf16',         # Arm: the BF16 extension (Neoverse V1, Graviton 3 on)
)


def native_bfloat16_units(cpu_features):
  """The CPU's bfloat16 arithmetic, by its feature flags.

  Args:
    cpu_features: the CPU's feature flags, as
      `batch_norm_relu6.cpu_features` reads them.

  Returns:
    The sorted flags among avx512_bf16, amx_bf16 and bf16 the CPU has;
    empty where bfloat16 arithmetic would be emulated.
  """
  return sorted(set(cpu_features) & set(_NATIVE_BFLOAT16_FLAGS))
