"""``outside_input_mask``: the input mask of an owner that is not a compute party (the model owner's server, the
client, each in a process of its own): the parties get shares of a uniform ``A``, and the owner derives ``A`` itself.

Each party's seed of the ``index``-th input of ``owner`` is ``HMAC-SHA256(K_owner, "<index>/<shape>/<party>")``
truncated to a seed, with ``K_owner`` a 32-byte key the crypto provider draws once per run and hands that owner alone. So the owner
needs no message per input (the crypto provider and the owner never exchange anything after the key), and the
material the parties receive is what any seeded share costs. ``index`` counts the owner's inputs in the run (public:
every party and the owner count the same shares); a streamed plan's ``k``-th repeat advances it by ``k`` times the
plan's inputs of that owner (:func:`advance`), and a discarded stream's indices come back inline with the same
seeds, so no mask is ever opened twice."""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Sequence

from ..errors import WireError
from ..material import Material, Request
from ..prg import SEED_BYTES
from ._schema import check_int, check_shape
from .base import MaterialKind, register

__all__ = ["OutsideInputMask", "OutsideInputParams", "owner_seeds", "input_binding", "advance", "outside_counts",
           "OWNER_KEY_BYTES"]

OWNER_KEY_BYTES = 32


@dataclass(frozen=True)
class OutsideInputParams:
    shape: tuple
    owner: str
    index: int  # the owner's input count in this run (public)


def input_binding(owner: str, index: int, shape: tuple) -> str:
    """What an outside owner's input is known by, on both sides: its owner, its index and its shape (public). The
    seeds derive from it, and the process runtime binds it into the owner's masked input."""
    return f"{owner}/{index}/{'x'.join(map(str, shape))}"


def owner_seeds(key: bytes, index: int, shape: tuple, n_parties: int) -> tuple[bytes, ...]:
    """Every party's seed of the owner's ``index``-th input mask (the crypto provider and the owner compute them);
    the shape is in the label, so that two shapes at one index never share a stream (one of them is only ever a
    discarded request, but no later change should have to know that)."""
    label = f"outside_input_mask/{index}/{'x'.join(map(str, shape))}"
    return tuple(hmac.new(key, f"{label}/{i}".encode(), hashlib.sha256).digest()[:SEED_BYTES] for i in range(n_parties))


@register
class OutsideInputMask(MaterialKind):
    name = "outside_input_mask"
    Params = OutsideInputParams

    @classmethod
    def validate(cls, p, refs, parties):
        check_shape(p.shape, "outside_input_mask shape")
        check_int(p.index, "outside_input_mask index", 0, 1 << 62)
        if not isinstance(p.owner, str) or not p.owner or (parties is not None and p.owner in parties):
            raise WireError(f"outside_input_mask owner: expected a role outside the compute parties, got {p.owner!r}.")

    @classmethod
    def layout(cls, p, fresh, b):
        b.share("a", p.shape, uniform=True)
        return b.build(1, ("a",))

    @classmethod
    def seeds(cls, dealer, p):
        return owner_seeds(dealer.owner_key(p.owner), p.index, tuple(p.shape), dealer.n)

    @classmethod
    def generate(cls, dealer, p, refs, sh):
        shares, a = sh.uniform("a")
        # "owner_mask": the owner's A where the owner lives in this process (simulated); a process owner derives it
        return Material({"a": shares, "owner_mask": a}, (dealer.new_mask(a),), ("a",)), {}

    @classmethod
    def example(cls, parties: Sequence[str]):
        return cls.request((4, 3), "client", 0)


def outside_counts(requests: Sequence[Request]) -> dict[str, int]:
    """Inputs per outside owner among ``requests`` (one repeat of a plan)."""
    counts: dict[str, int] = {}
    for req in requests:
        if req.kind == OutsideInputMask.name:
            owner = OutsideInputMask.params(req).owner
            counts[owner] = counts.get(owner, 0) + 1
    return counts


def advance(req: Request, repeat: int, counts: dict[str, int]) -> Request:
    """``req`` as the ``repeat``-th replay of its plan asks for it: an outside input's index moves on by ``repeat``
    times that owner's inputs in the plan (other kinds as they are)."""
    if req.kind != OutsideInputMask.name or not repeat:
        return req
    p = OutsideInputMask.params(req)
    return OutsideInputMask.request(p.shape, p.owner, p.index + repeat * counts[p.owner], refs=req.refs)
