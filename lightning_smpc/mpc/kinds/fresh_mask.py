"""``fresh_mask``: a uniform mask ``B`` shared to the compute parties, with no input owner (nobody gets it in clear).

It serves values the parties already hold as shares but whose masked opening they need, e.g. model weights
kept as shares between runs (:func:`..protocols.sharing.remask`): the parties open ``W - B`` once per run, and
later products with ``W`` reuse that opening like the opening of a freshly shared input. The dealer keeps ``B``
(by id) for those products, as it does an input mask."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..material import Material
from ._schema import check_shape
from .base import MaterialKind, register


@dataclass(frozen=True)
class FreshMaskParams:
    shape: tuple


@register
class FreshMask(MaterialKind):
    name = "fresh_mask"
    Params = FreshMaskParams

    @classmethod
    def validate(cls, p, refs, parties):
        check_shape(p.shape, "fresh_mask shape")

    @classmethod
    def layout(cls, p, fresh, b):
        b.share("a", p.shape, uniform=True)  # every party's share is its seed's expansion: 24 bytes with the id
        return b.build(1, ("a",))

    @classmethod
    def generate(cls, dealer, p, refs, sh):
        shares, b = sh.uniform("a")
        return Material({"a": shares}, (dealer.new_mask(b),), ("a",)), {}

    @classmethod
    def example(cls, parties: Sequence[str]):
        return cls.request((4, 3))
