"""Fixed-point encoding of real numbers into the ring Z_2^64 (int64 with wrap-around arithmetic).

A real ``x`` is encoded as ``round(x * 2**precision_bits)`` (round half to even, computed in float64) and
stored in an int64 tensor; ring arithmetic wraps modulo 2^64 as int64 overflow does. Decoding divides by
``2**frac_bits`` in float64.

Range. The accepted magnitude is the same at every ``frac_bits`` (integers included). A comparison of a value ``y`` (ReLU, ``y >= 0``) is exact for ``|y * 2**precision_bits| <
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
        if compare_bits % 4 or not precision_bits < compare_bits <= 56 or compare_bits + precision_bits > 62:
            raise ValueError(
                f"Expected `compare_bits` a multiple of 4 in ({precision_bits}, 56] with compare_bits + "
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
            TypeError: ``x`` is complex (only real values can be encoded).
            NonFiniteInputError: ``x`` holds NaN or infinity (the message gives the counts).
            EncodingRangeError: ``|round(x * 2**frac_bits)|`` reaches ``2**(compare_bits - 1)`` (``|x|`` about
                :attr:`max_magnitude` at ``frac_bits = precision_bits``).
        """
        frac = self.precision_bits if frac_bits is None else frac_bits
        t = torch.as_tensor(x)
        if t.is_complex():
            raise TypeError(
                f"Expected a real tensor to encode, but got dtype {t.dtype}: secret shares hold real fixed-point "
                "values only, and dropping the imaginary part would silently change the value. Pass `x.real` (or "
                "split real and imaginary parts into two tensors) explicitly."
            )
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
        # The check is on the rounded integers that are actually encoded: a value just below the limit can
        # round up onto it (32768 - 2**-17 encodes to 2**31 at 16 bits).
        # The value range is the same at every frac_bits (integers included): a value encoded with fewer bits is
        # lifted to precision_bits when it meets a fixed-point value, and must still be comparable then.
        scaled = torch.round(t * float(1 << frac))
        bits = self.compare_bits - 1 - self.precision_bits
        limit = 2.0 ** (bits + frac)
        if t.numel() and float(scaled.abs().max()) >= limit:
            n_bad = int((scaled.abs() >= limit).sum())
            raise EncodingRangeError(
                f"Expected |x| < {2.0 ** bits:g} (2^{bits}: the fixed-point range for precision_bits="
                f"{self.precision_bits}, compare_bits={self.compare_bits}, checked after rounding to {frac} "
                f"fractional bits), but {n_bad} value(s) reach {float(t.abs().max()):g}. Rescale the input or raise "
                "`compare_bits`."
            )
        return scaled.to(torch.int64)

    def decode(self, v: torch.Tensor, frac_bits: int | None = None) -> torch.Tensor:
        """Decode int64 ring elements carrying ``frac_bits`` fractional bits to float64."""
        frac = self.precision_bits if frac_bits is None else frac_bits
        return v.to(torch.float64) / float(1 << frac)
