"""``input_mask`` (SPDZ input): a uniform mask ``A`` shared to the parties; the input owner gets every party's
seed of it, so ``A`` in clear, and broadcasts ``x - A``. The dealer keeps ``A`` (by id) so later products with
that operand reuse the opened ``x - A`` ("the masked model is opened once")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import WireError
from ..material import Material
from ..prg import SEED_BYTES
from ._layout import OWNER_SEEDS, Slot
from ._schema import check_shape
from .base import MaterialKind, register


@dataclass(frozen=True)
class InputMaskParams:
    shape: tuple
    owner: str


@register
class InputMask(MaterialKind):
    name = "input_mask"
    Params = InputMaskParams

    @classmethod
    def validate(cls, p, refs, parties):
        check_shape(p.shape, "input_mask shape")
        if not isinstance(p.owner, str) or (parties is not None and p.owner not in parties):
            raise WireError(f"input_mask owner: expected a compute party {tuple(parties or ())}, got {p.owner!r}.")

    @classmethod
    def layout(cls, p, fresh, b):
        b.share("a", p.shape, uniform=True)
        if b.parties[b.party] == p.owner:  # every party's seed of the mask: the owner expands the mask itself
            b.raw(Slot(OWNER_SEEDS, None, (len(b.parties) * SEED_BYTES,), torch.uint8))
        return b.build(1, ("a",))

    @classmethod
    def generate(cls, dealer, p, refs, sh):
        shares, a = sh.uniform("a")
        mid = dealer.new_mask(a)
        # the owner gets every party's seed of the mask and expands it: in its message if it is a party (counted
        # there), else separately
        extra = {} if p.owner in dealer.parties else {p.owner: dealer.n * SEED_BYTES}
        return Material({"a": shares, "owner_mask": a}, (mid,), ("a",)), extra

    @classmethod
    def example(cls, parties: Sequence[str]):
        return cls.request((4, 3), parties[0])
