"""Declared protocol costs (SPU style): online rounds and bytes sent per party, as code."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

__all__ = ["Cost", "COSTS", "protocol", "nbytes", "tree_pairs"]


@dataclass(frozen=True)
class Cost:
    """Online cost of one call. Both callables take ``(n_parties, **sizes)``."""

    rounds: Callable[..., int]
    bytes_sent: Callable[..., int]
    offline: str  # what the dealer sends (prose)


COSTS: dict[str, Cost] = {}


def protocol(name: str, rounds: Callable[..., int], bytes_sent: Callable[..., int], offline: str):
    """Register ``name``'s declared cost and return the function unchanged."""

    def deco(fn):
        COSTS[name] = Cost(rounds, bytes_sent, offline)
        fn.cost = COSTS[name]
        return fn

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
