"""Fixed-point encoding of real numbers into the ring Z_2^64 (int64 with wrap-around arithmetic).

A real ``x`` is encoded as ``round(x * 2**precision_bits)`` (round half to even, computed in float64) and
stored in an int64 tensor; ring arithmetic wraps modulo 2^64 as int64 overflow does. Decoding divides by
``2**frac_bits`` in float64.

Range. A comparison of a value ``y`` (ReLU, ``y >= 0``) is exact for ``|y * 2**precision_bits| <
2**compare_bits``; pairwise comparisons (``x >= y``, max, argmax) compare differences, so they are exact
when ``|x - y|`` is in that range. :meth:`FixedPointEncoder.encode` therefore accepts
``|x| < 2**(compare_bits - 1 - precision_bits)`` (32768 with the defaults 16 and 32): any two shared
inputs and their difference are in range. Intermediate values (sums, products) must stay in range too,
and a product of two encoded values must stay below ``2**(62 - 2 * precision_bits)`` before its
truncation (2**30 at 16 bits). Truncation's +1 LSB rounding may carry a value at the very top of the
range (``2**compare_bits - 1`` LSB) out of it.

Example:
    >>> enc = FixedPointEncoder(precision_bits=16)
    >>> enc.encode(torch.tensor([1.5, -0.25]))
    tensor([ 98304, -16384])
    >>> enc.decode(enc.encode(torch.tensor([1.5, -0.25])))
    tensor([ 1.5000, -0.2500], dtype=torch.float64)
"""
from __future__ import annotations

import torch

from .errors import EncodingRangeError, NonFiniteInputError

__all__ = ["FixedPointEncoder"]


class FixedPointEncoder:
    """Encode floats as fixed-point ring elements with ``precision_bits`` fractional bits.

    Args:
        precision_bits: number of fractional bits (1..30).
        compare_bits: bits of the magnitude range on which comparisons are exact (see module docstring).
    """

    def __init__(self, precision_bits: int = 16, compare_bits: int = 32) -> None:
        if not 1 <= precision_bits <= 30:
            raise ValueError(f"Expected `precision_bits` in [1, 30], but got {precision_bits}.")
        if compare_bits % 8 or not precision_bits < compare_bits <= 56 or compare_bits + precision_bits > 62:
            raise ValueError(
                f"Expected `compare_bits` a multiple of 8 in ({precision_bits}, 56] with compare_bits + "
                f"precision_bits <= 62, but got {compare_bits}."
            )
        self.precision_bits = precision_bits
        self.compare_bits = compare_bits
        self.scale = 1 << precision_bits

    @property
    def max_magnitude(self) -> float:
        """Largest magnitude (exclusive) that :meth:`encode` accepts."""
        return float(2 ** (self.compare_bits - 1 - self.precision_bits))

    def encode(self, x: torch.Tensor | float, frac_bits: int | None = None) -> torch.Tensor:
        """Encode ``x`` with ``frac_bits`` (default ``precision_bits``) fractional bits into int64.

        Raises:
            NonFiniteInputError: ``x`` holds NaN or infinity (the message gives the counts).
            EncodingRangeError: ``|x|`` reaches :attr:`max_magnitude`.
        """
        frac = self.precision_bits if frac_bits is None else frac_bits
        t = torch.as_tensor(x)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        t = t.to(torch.float64)
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(t).sum())
            n_inf = int(torch.isinf(t).sum())
            raise NonFiniteInputError(
                f"Expected finite values to encode, but got {n_nan} NaN and {n_inf} inf value(s) out of "
                f"{t.numel()}. Clean or clip the input before sharing it."
            )
        if not 0 <= frac <= self.precision_bits:
            raise ValueError(f"Expected `frac_bits` in [0, {self.precision_bits}] (precision_bits), but got {frac}.")
        limit = 2.0 ** (self.compare_bits - 1 - frac)
        if t.numel() and float(t.abs().max()) >= limit:
            n_bad = int((t.abs() >= limit).sum())
            raise EncodingRangeError(
                f"Expected |x| < {limit:g} (2^{self.compare_bits - 1 - frac}: the fixed-point range for "
                f"precision_bits={frac}, compare_bits={self.compare_bits}), but {n_bad} value(s) reach "
                f"{float(t.abs().max()):g}. Rescale the input or raise `compare_bits`."
            )
        return torch.round(t * float(1 << frac)).to(torch.int64)

    def decode(self, v: torch.Tensor, frac_bits: int | None = None) -> torch.Tensor:
        """Decode int64 ring elements carrying ``frac_bits`` fractional bits to float64."""
        frac = self.precision_bits if frac_bits is None else frac_bits
        return v.to(torch.float64) / float(1 << frac)
