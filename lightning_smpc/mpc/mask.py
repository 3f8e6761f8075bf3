"""Opened masks cached on shared values (``x - A`` is opened once, then reused by every product with ``x``)."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from . import transforms


class MaskHandle:
    """Names a mask the dealer keeps; tells the dealer to drop it when no shared value uses it any more."""

    def __init__(self, dealer, mask_id: int) -> None:
        self.id = mask_id
        weakref.finalize(self, dealer.forget, mask_id)


@dataclass
class Mask:
    """``eps = x - A`` (public to the parties), the parties' shares of ``A``, and how ``A`` was reshaped."""

    eps: torch.Tensor
    a: torch.Tensor
    handle: MaskHandle
    transform: tuple = ()
    cache: dict = field(default_factory=dict)

    def then(self, step: tuple) -> "Mask":
        """The same mask after one more shape transform."""
        return Mask(
            transforms.apply(self.eps, (step,), party_axis=False),
            transforms.apply(self.a, (step,), party_axis=True),
            self.handle,
            self.transform + (step,),
        )
