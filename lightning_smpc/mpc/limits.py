"""The range each op needs on shares: its fixed-point and comparison limits, named once and declared by each op's
registration (``implements(..., limit=...)``).

Fixed-point numbers are exact only within ranges set by ``precision_bits`` (``f``) and ``compare_bits`` (``c``);
outside them a protocol does not fail, it gives a wrong number (a ReLU of ``x >= 2^(c - f)`` may come out as
garbage). :func:`lightning_smpc.preflight` measures, on calibration data in plaintext, the values each limited op
sees and reports the headroom of each against these bounds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional

__all__ = ["RangeLimit", "LIMITS", "check_limit_name"]


@dataclass(frozen=True)
class RangeLimit:
    """A range an op's input (or output) must stay in, as a function of ``(precision_bits, compare_bits)``."""

    name: str
    applies_to: Literal["input", "output"]
    upper: Callable[[int, int], float]  # magnitudes must stay strictly below this
    rule: str  # the bound in words, for reports and errors
    lower: Optional[Callable[[int, int], float]] = None  # positive domains: values below this lose precision


LIMITS: dict[str, RangeLimit] = {
    "compare": RangeLimit(
        "compare", "input", lambda f, c: 2.0 ** (c - f),
        "a comparison (ReLU, x >= 0, a piece of GELU/sigmoid/tanh) is exact for |x| < 2^(compare_bits - precision_bits)"),
    "pairwise": RangeLimit(
        "pairwise", "input", lambda f, c: 2.0 ** (c - 1 - f),
        "max/argmax/max-pooling/softmax compare differences: |x| < 2^(compare_bits - 1 - precision_bits)"),
    "product": RangeLimit(
        "product", "output", lambda f, c: 2.0 ** (62 - 2 * f),
        "a product keeps 2*precision_bits fractional bits until truncated: |x| < 2^(62 - 2*precision_bits)"),
    "power": RangeLimit(
        "power", "input", lambda f, c: 2.0 ** (c - f - 1),
        "reciprocal/rsqrt/sqrt/log/division by a secret tell apart 2^-precision_bits <= x < "
        "2^(compare_bits - precision_bits - 1)", lower=lambda f, c: 2.0 ** (4 - f)),
    "exp": RangeLimit(
        "exp", "output", lambda f, c: 2.0 ** (c - 1 - f),
        "exp's result must stay in the share range: exp(x) < 2^(compare_bits - 1 - precision_bits)"),
    "variance": RangeLimit(
        "variance", "input", lambda f, c: 2.0 ** 15,
        "layer_norm's variance is told apart up to 2^30: |x| < 2^15"),
    "encoding": RangeLimit(
        "encoding", "input", lambda f, c: 2.0 ** (c - 1 - f),
        "a shared input or weight: |x| < 2^(compare_bits - 1 - precision_bits) (share refuses larger ones)"),
}


def check_limit_name(name: Optional[str]) -> Optional[str]:
    if name is not None and name not in LIMITS:
        raise ValueError(f"unknown range limit {name!r}; expected one of {tuple(LIMITS)}")
    return name
