"""What the crypto provider deals and what it is asked for: requests, material, comparison-table layouts.

Shared by the dealer (which generates material), the wire format (which derives each party's material layout
from a request) and the protocols (which read material), so that none of them imports another in a circle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Request", "Material", "DIGIT_BITS", "DIGIT_CHOICES", "gt_table_spec"]

# Default comparison digit size: 4-bit digits, tables of 16 bits (one int16) per digit. 8: tables of 2^8 bits
# (4 int64 words) per digit, half the digits, one carry level less (fewer rounds, 2.8x more dealer bytes).
DIGIT_BITS = 4
DIGIT_CHOICES = (4, 8)


def gt_table_spec(digit_bits: int) -> tuple[tuple, torch.dtype]:
    """(trailing dims per digit, dtype) of a digit's greater-than table: ``((4,), int64)`` for 8-bit digits
    (256 bits), ``((), int16)`` for 4-bit digits (16 bits)."""
    if digit_bits == 8:
        return (4,), torch.int64
    if digit_bits == 4:
        return (), torch.int16
    raise ValueError(f"Expected a comparison digit size in {DIGIT_CHOICES}, got {digit_bits}.")


@dataclass(frozen=True)
class Request:
    """A dealer request: ``kind``, hashable ``params`` and the mask ids it refers to (``refs``)."""

    kind: str
    params: tuple
    refs: tuple = ()

    def remap(self, idmap: dict[int, int]) -> "Request":
        return Request(self.kind, self.params, tuple(idmap.get(r, r) if r is not None else None for r in self.refs))


@dataclass
class Material:
    """Shares (leading party axis) of one correlation.

    ``created`` lists the mask ids it issued and ``mask_keys`` (same order) the entry of ``data`` that holds
    each one's shares: a Beaver triple issues its ``"a"`` and/or ``"b"`` operand mask, an input mask ``"a"``.
    A later product that reuses a mask must take exactly that entry (never assume ``"a"``).
    """

    data: dict[str, Any]
    created: tuple = ()
    mask_keys: tuple = ()
    seeds: tuple | None = None  # dealer side: each party's seed (what parties 1..n-1 receive instead of shares)
    # a Beaver triple whose ``[a] @ delta`` the parties folded into ``c`` offline (the weights' opened mask was known)
    a_delta_folded: bool = False

    def mask_shares(self, mask_id: int) -> torch.Tensor:
        """The parties' shares of the mask ``mask_id`` that this material issued."""
        return self.data[self.mask_keys[self.created.index(mask_id)]]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __getattr__(self, key: str) -> Any:
        """The entries by name (``mat.r63_rho``): the slots its kind declares (see :mod:`.kinds`)."""
        data = self.__dict__.get("data")
        if data is not None and key in data:
            return data[key]
        raise AttributeError(f"this material has no entry {key!r} (it holds {sorted(data or ())})")

    def get(self, key: str, default=None) -> Any:
        return self.data.get(key, default)
