"""The dealer's side of one request's material, as every kind's ``generate`` fills it: each party's seeded shares
expanded at once, the uniform values read as their sums, the first party's corrections set."""
from __future__ import annotations

import torch

from ._layout import expand_seeded, narrow

__all__ = ["DealtShares"]


class DealtShares:
    """The share tensors ``[n, ...]`` of one request's material, keyed ``(key, index)`` as the layout's slots.

    Built from the parties' layouts and seeds: every row a party expands from its seed is filled at once (each
    party's stream in its own slot order); the generator then reads the uniform values (sums of seeded
    shares) and sets the first party's row of each correlated value (its correction).
    """

    def __init__(self, dealer, layouts, seeds) -> None:

        n, device = dealer.n, dealer.device
        self.n = n
        if any(s.is_share and not s.seeded for layout in layouts[1:] for s in layout.slots):
            raise RuntimeError("only the first party receives corrections; the others' shares all come from seeds")
        self.slots = {(s.key, s.index): s for s in layouts[0].slots if s.is_share}
        self.t = {k: torch.empty((n,) + s.shape[1:], dtype=s.dtype, device=device) for k, s in self.slots.items()}
        for p in range(n):
            for k, v in expand_seeded(layouts[p], seeds[p]).items():
                self.t[k][p : p + 1] = v

    def _slot(self, key, index, uniform: bool):
        slot = self.slots[(key, index)]
        if slot.seeded != uniform:  # the generator and the wire layout disagree: a bug
            raise RuntimeError(f"material {key}[{index}]: layout says seeded={slot.seeded} for the first party")
        return slot, self.t[(key, index)]

    def uniform(self, key: str, index: int | None = None, xor: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(shares, value) of a uniform value: every party's row is seeded; the value is their sum (XOR)."""
        _, t = self._slot(key, index, True)
        if not xor:
            return t, t.sum(0)
        v = t[0].clone()
        for k in range(1, self.n):
            v ^= t[k]
        return t, v

    def arith(self, key: str, v: torch.Tensor, index: int | None = None) -> torch.Tensor:
        """Additive shares of ``v``: the first party's row is the correction (reduced to its wire type if narrow)."""

        slot, t = self._slot(key, index, False)
        row0 = v - (t[1:].sum(0) if self.n > 2 else t[1])
        t[0] = narrow(row0, slot.wire_dtype)
        return t

    def xor(self, key: str, v: torch.Tensor, index: int | None = None) -> torch.Tensor:
        """XOR shares of ``v`` (bits as uint8 0/1, or words): the first party's row is the correction."""
        _, t = self._slot(key, index, False)
        torch.bitwise_xor(v.to(t.dtype), t[1], out=t[0])
        for k in range(2, self.n):
            t[0] ^= t[k]
        return t
