"""``trunc``: probabilistic truncation material (Escudero et al. 2020, §5.1): uniform ``r``, ``u = (r mod 2^63)
>> m`` and the bit ``r_63``, all arithmetic shares (``[r_63]`` is used only as ``2^(63-m) [r_63]``, so its shares
are correct modulo ``2^(m+1)``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..material import Material
from ._schema import check_int, check_shape
from .base import MaterialKind, register


@dataclass(frozen=True)
class TruncParams:
    shape: tuple
    bits: int  # m: the bits truncated


def declare_trunc(b, shape, m: int) -> None:
    """The truncation slots (also the first part of a comparison fused with a truncation)."""
    b.share("r", shape, uniform=True)
    b.share("u", shape)
    b.share("r63", shape, mod_bits=m + 1)  # used as 2^(63-m) [r_63] only


def trunc_parts(sh, data: dict, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniform ``r`` (seeded), ``u = (r mod 2^63) >> m`` and ``r_63`` (corrections) into ``data``."""
    data["r"], r = sh.uniform("r")
    u, r63 = (r & ((1 << 63) - 1)) >> m, (r >> 63) & 1
    data["u"], data["r63"] = sh.arith("u", u), sh.arith("r63", r63)
    return r, u, r63


@register
class Trunc(MaterialKind):
    name = "trunc"
    Params = TruncParams

    @classmethod
    def validate(cls, p, refs, parties):
        check_shape(p.shape, "trunc shape")
        check_int(p.bits, "trunc bits", 0, 62)

    @classmethod
    def layout(cls, p, fresh, b):
        declare_trunc(b, p.shape, p.bits)
        return b.build()

    @classmethod
    def generate(cls, dealer, p, refs, sh):
        data: dict = {}
        trunc_parts(sh, data, p.bits)
        return Material(data), {}

    @classmethod
    def example(cls, parties: Sequence[str]):
        return cls.request((5, 7), 16)
