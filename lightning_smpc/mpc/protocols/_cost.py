"""Declared protocol costs (SPU style): online rounds and bytes sent per party, as code."""
from __future__ import annotations

from typing import TYPE_CHECKING

import functools
import math
import time
from dataclasses import dataclass
from typing import Callable

if TYPE_CHECKING:
    from ..runtime import PartyContext

__all__ = ["Cost", "COSTS", "protocol", "nbytes", "tree_pairs"]


@dataclass(frozen=True)
class Cost:
    """Online cost of one call. Both callables take ``(n_parties, **sizes)``."""

    rounds: Callable[..., int]
    bytes_sent: Callable[..., int]
    offline: str  # what the dealer sends (prose)


COSTS: dict[str, Cost] = {}


def protocol(name: str, rounds: Callable[..., int], bytes_sent: Callable[..., int], offline: str):
    """Register ``name``'s declared cost; the wrapped function also adds its wall time to
    ``sess.op_seconds[name]`` (the per-protocol breakdown of the benchmark)."""

    def deco(fn):
        COSTS[name] = Cost(rounds, bytes_sent, offline)

        @functools.wraps(fn)
        def timed(sess: PartyContext, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(sess, *args, **kwargs)
            finally:
                key = f"beaver_{args[0]}" if name.startswith("beaver") else name
                sess.op_seconds[key] = sess.op_seconds.get(key, 0.0) + time.perf_counter() - t0

        timed.cost = COSTS[name]
        return timed

    return deco


def nbytes(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


def tree_pairs(n_digits: int) -> list[int]:
    """Pairs combined at each level of the carry tree over ``n_digits`` digits."""
    out, width = [], n_digits
    while width > 1:
        out.append(width // 2)
        width -= width // 2
    return out
