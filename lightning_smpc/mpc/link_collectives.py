"""Collectives over the secure links, built from pairwise messages: all-gather, gather to one member, broadcast.

Each is a set of non-blocking sends/receives posted at once (``n - 1`` messages per process; for 2-3 parties this
costs no extra round), every message sealed as any other. Split out of :mod:`.links` as the mixin
:class:`Collectives` of :class:`~.links.Links`: they use only its public addressing (``index``, ``rank``, ``names``)
and its one exchange primitive ``_exchange``, and nothing of the encryption.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .errors import LinkError

__all__ = ["Collectives"]


class Collectives:
    """The collectives of :class:`~.links.Links` (a mixin: ``Links`` provides ``index``, ``rank``, ``name``,
    ``names``, ``world_size`` and ``_exchange(sends, recvs, tag, channel)``)."""

    def _members(self, ranks) -> list[int]:
        members = list(range(self.world_size)) if ranks is None else [self.index(r) for r in ranks]
        if self.rank not in members:
            raise LinkError(f"{self.name!r} is not among the members {[self.names[m] for m in members]} of this collective.")
        return members

    def all_gather(self, tensor: torch.Tensor, tag: str, ranks: Sequence[int | str] | None = None) -> list[torch.Tensor]:
        """Every member's tensor (same shape and dtype everywhere), in ``ranks`` order (default: all)."""
        return [row[0] for row in self.all_gather_many([tensor], tag, ranks)]

    def all_gather_many(self, tensors: Sequence[torch.Tensor], tag: str,
                        ranks: Sequence[int | str] | None = None) -> list[list[torch.Tensor]]:
        """Every member's tensors (same shapes and dtypes everywhere) as ONE message per pair, in ``ranks``
        order (default: all)."""
        members = self._members(ranks)
        others = [m for m in members if m != self.rank]
        tensors = list(tensors)
        specs = [(tuple(t.shape), t.dtype) for t in tensors]
        got = self._exchange({m: tensors for m in others}, {m: specs for m in others}, tag)
        return [tensors if m == self.rank else got[m] for m in members]

    def gather_to(self, dst: int | str, tensor: torch.Tensor, tag: str, ranks: Sequence[int | str] | None = None):
        """Every member's tensor at ``dst`` (in ``ranks`` order); None at the other members."""
        members, dst = self._members(ranks), self.index(dst)
        if self.rank != dst:
            self._exchange({dst: [tensor]}, {}, tag)
            return None
        others = [m for m in members if m != dst]
        got = self._exchange({}, {m: [(tuple(tensor.shape), tensor.dtype)] for m in others}, tag)
        return [tensor if m == dst else got[m][0] for m in members]

    def broadcast(self, tensor: torch.Tensor, src: int | str, tag: str, ranks: Sequence[int | str] | None = None,
                  channel: str = "main") -> torch.Tensor:
        """``src``'s tensor at every member (the others pass a tensor of the right shape and dtype)."""
        members, src = self._members(ranks), self.index(src)
        if self.rank == src:
            self._exchange({m: [tensor] for m in members if m != src}, {}, tag, channel)
            return tensor
        return self._exchange({}, {src: [(tuple(tensor.shape), tensor.dtype)]}, tag, channel)[src][0]
