"""``beaver``: a multiplication triple for ``mul``/``matmul``/``linear``/``conv2d``: ``c = op(a, b)`` where ``a`` and
``b`` are fresh masks or masks issued earlier (by id, with a recorded shape transform: a reused weight mask)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import WireError
from ..material import Material
from ..ring import LimbOperand, ring_conv2d, ring_matmul
from ._schema import check_choice, check_conv_kwargs, check_numel, check_shape, check_transform, check_tuple
from .base import MaterialKind, register

BEAVER_OPS = ("mul", "matmul", "linear", "conv2d")


@dataclass(frozen=True)
class BeaverParams:
    op: str
    kwargs: tuple  # conv2d's ((name, value), ...), sorted; () for the others
    shape_x: tuple
    shape_y: tuple
    transform_x: tuple  # the recorded shape transform of a reused mask (() for a fresh one)
    transform_y: tuple


def _meta(shape) -> torch.Tensor:
    return torch.empty(tuple(shape), device="meta")


def out_shape(op: str, kwargs, sx, sy) -> tuple:
    """The product's shape (a WireError when the operands do not combine)."""
    try:
        if op == "mul":
            out = tuple(torch.broadcast_shapes(tuple(sx), tuple(sy)))
        elif op == "matmul":
            out = tuple(torch.matmul(_meta(sx), _meta(sy)).shape)
        elif op == "linear":
            out = tuple(torch.matmul(_meta(sx), _meta(sy).transpose(-1, -2)).shape)
        else:
            out = tuple(F.conv2d(_meta(sx), _meta(sy), **dict(kwargs)).shape)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise WireError(f"beaver {op}: operand shapes {tuple(sx)} and {tuple(sy)} do not combine ({e}).") from None
    check_numel(out, f"beaver {op} product")
    return out


@register
class Beaver(MaterialKind):
    name = "beaver"
    Params = BeaverParams
    n_refs = 2

    @classmethod
    def validate(cls, p, refs, parties):
        check_choice(p.op, BEAVER_OPS, "beaver op")
        if p.op == "conv2d":
            check_conv_kwargs(p.kwargs, "beaver conv2d kwargs")
        elif check_tuple(p.kwargs, "beaver kwargs"):
            raise WireError(f"beaver {p.op}: takes no keyword arguments, got {p.kwargs!r}.")
        check_shape(p.shape_x, "beaver shape_x")
        check_shape(p.shape_y, "beaver shape_y")
        check_transform(p.transform_x, "beaver transform_x")
        check_transform(p.transform_y, "beaver transform_y")
        for ref, tf, side in zip(refs, (p.transform_x, p.transform_y), "xy"):
            if ref is None and tf:
                raise WireError(f"beaver: a fresh mask for {side} cannot carry a transform ({tf!r}).")
        out_shape(p.op, p.kwargs, p.shape_x, p.shape_y)

    @classmethod
    def layout(cls, p, fresh, b):
        keys = []
        for key, shape, is_fresh in (("a", p.shape_x, fresh[0]), ("b", p.shape_y, fresh[1])):
            if is_fresh:
                b.share(key, shape, uniform=True)
                keys.append(key)
        b.share("c", out_shape(p.op, p.kwargs, p.shape_x, p.shape_y))
        return b.build(len(keys), tuple(keys))

    @classmethod
    def generate(cls, dealer, p, refs, sh):
        ref_x, ref_y = refs
        created, keys = [], []
        data: dict[str, Any] = {}
        plains = []
        for key, ref, tf in (("a", ref_x, p.transform_x), ("b", ref_y, p.transform_y)):
            if ref is None:
                data[key], m = sh.uniform(key)
                created.append(dealer.new_mask(m))
                keys.append(key)
            else:
                m = dealer.mask(ref, tf)
            plains.append(m)
        a, b = plains
        if p.op in ("matmul", "linear") and ref_y is not None:  # a reused weight mask: split into limbs once
            b = dealer.limb_operand(ref_y, p.transform_y, b)
        if p.op == "mul":
            c = a * b
        elif p.op == "matmul":
            c = ring_matmul(a, b)
        elif p.op == "linear":
            c = ring_matmul(a, b.mT if isinstance(b, LimbOperand) else b.transpose(-1, -2))
        else:
            c = ring_conv2d(a, b, **dict(p.kwargs))
        data["c"] = sh.arith("c", c)
        return Material(data, tuple(created), tuple(keys)), {}

    @classmethod
    def example(cls, parties: Sequence[str]):
        return cls.request("matmul", (), (4, 6), (6, 3), (), (), refs=(None, None))
