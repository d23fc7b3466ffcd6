"""Rounding error bounds that tests compare computed values against."""

# Unit roundoff of float32 (round to nearest, 24-bit significand).
FLOAT32_U = 2.0**-24


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
