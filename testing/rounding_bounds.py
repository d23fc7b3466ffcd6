"""Rounding error bounds that tests compare computed values against."""

# Unit roundoffs (round to nearest): float32 keeps 24 significant bits,
# bfloat16 8.
FLOAT32_U = 2.0**-24
BFLOAT16_U = 2.0**-8


def gamma(n, u=FLOAT32_U):
  """Higham's gamma_n: |error| of an n-term sum / sum of |terms|.

  Args:
    n: the additions (or products and additions), each rounded with unit
      roundoff u.
    u: float32's by default.

  Returns:
    n u / (1 - n u).
  """
  return n * u / (1 - n * u)
