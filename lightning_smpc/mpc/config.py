"""One typed configuration of the ring: what every compute party and the crypto provider must agree on.

A :class:`RingConfig` travels whole: to sessions (``Session(ring=...)``), to the dealer process and into the
roll call before the handshake (parties as processes), where every role compares it with the others' and a role
configured differently is refused by name before anything runs. The defaults live here only; the strategy's flat
keyword arguments (``precision_bits``, ``compare_bits``, ``compare_digit_bits``, Lightning/LightningCLI style)
build it.

Example:
    >>> from lightning_smpc.mpc import RingConfig
    >>> RingConfig()
    RingConfig(precision_bits=16, compare_bits=32, digit_bits=4)
    >>> RingConfig(compare_bits=36).comparison_range   # |x| below this compares exactly
    1048576.0
    >>> RingConfig(precision_bits=16, compare_bits=52)
    Traceback (most recent call last):
    ...
    ValueError: Expected compare_bits + precision_bits <= 62 (a product must fit the ring), but got 52 + 16.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .material import DIGIT_BITS, DIGIT_CHOICES

__all__ = ["RingConfig"]


@dataclass(frozen=True)
class RingConfig:
    """The fixed-point and comparison settings of one run (validated on construction).

    Args:
        precision_bits: fractional bits of the fixed-point encoding.
        compare_bits: a comparison of ``x`` is exact for ``|x| < 2**(compare_bits - precision_bits)``.
        digit_bits: the comparison's digit size, 4 (default) or 8 (fewer rounds, more dealer bytes).
    """

    precision_bits: int = 16
    compare_bits: int = 32
    digit_bits: int = DIGIT_BITS

    def __post_init__(self) -> None:
        f, c, d = self.precision_bits, self.compare_bits, self.digit_bits
        for name, v in (("precision_bits", f), ("compare_bits", c), ("digit_bits", d)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"Expected an integer `{name}`, but got {v!r}.")
        if not 1 <= f <= 30:
            raise ValueError(f"Expected `precision_bits` in [1, 30], but got {f}.")
        if c % 4 or not f < c <= 56:
            raise ValueError(f"Expected `compare_bits` a multiple of 4 in ({f}, 56] (above precision_bits), but got {c}.")
        if c + f > 62:
            raise ValueError(f"Expected compare_bits + precision_bits <= 62 (a product must fit the ring), but got "
                             f"{c} + {f}.")
        if d not in DIGIT_CHOICES or c % d:
            raise ValueError(f"Expected the comparison digit size in {DIGIT_CHOICES} dividing compare_bits={c}, but got {d}.")

    @property
    def comparison_range(self) -> float:
        return 2.0 ** (self.compare_bits - self.precision_bits)

    def to_text(self) -> str:
        """Canonical JSON (what the roles compare in the roll call, and bind into their messages)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
