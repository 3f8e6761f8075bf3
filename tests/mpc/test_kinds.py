"""Issue 15.1: dealer material kinds as modules, one registry. Every kind declares its parameters, schema,
layout, generation and an example; the three agree with each other on the example, and the offline bytes the
dealer accounts are the layout's. Adding a kind is one class: ``SquarePair`` below is the whole of it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from lightning_smpc.mpc import RingConfig
from lightning_smpc.mpc.comm import Communicator
from lightning_smpc.mpc.dealer import TrustedDealer
from lightning_smpc.mpc.kinds import KINDS, MaterialKind, register
from lightning_smpc.mpc.kinds._schema import check_shape
from lightning_smpc.mpc.material import Material
from lightning_smpc.mpc.prg import make_prg
from lightning_smpc.mpc.wire import (WireError, decode_request, encode_request, material_from, material_layout,
                                     material_tensors)

PARTIES = {2: ("alice", "bob"), 3: ("alice", "bob", "carol")}


# ---------------------------------------------------------------------------------------------- a new kind, whole
@dataclass(frozen=True)
class SquarePairParams:
    shape: tuple


class SquarePair(MaterialKind):
    """A uniform ``r`` and shares of ``r * r`` (what a squaring protocol would open ``x - r`` against)."""

    name = "square_pair"
    Params = SquarePairParams

    @classmethod
    def validate(cls, p, refs, parties):
        check_shape(p.shape, "square_pair shape")

    @classmethod
    def layout(cls, p, fresh, b):
        b.share("r", p.shape, uniform=True)
        b.share("r2", p.shape)
        return b.build()

    @classmethod
    def generate(cls, dealer, p, refs, sh):
        r_shares, r = sh.uniform("r")
        return Material({"r": r_shares, "r2": sh.arith("r2", r * r)}), {}

    @classmethod
    def example(cls, parties):
        return cls.request((3, 2))


@pytest.fixture
def square_pair():
    register(SquarePair)
    yield SquarePair
    del KINDS[SquarePair.name]


# ---------------------------------------------------------------------------------------------- every kind
def _check_kind(kind, n: int) -> None:
    parties = PARTIES[n]
    req = kind.example(parties)
    assert decode_request(encode_request(req, parties), parties) == req  # the wire: by field name, versioned
    comm = Communicator(parties)
    dealer = TrustedDealer("cp", parties, make_prg(0), comm, RingConfig(), "cpu")
    mat = dealer._generate(req)
    offline = comm.stats(offline=True)
    for i, party in enumerate(parties):
        layout = material_layout(req, i, parties, RingConfig())
        assert offline[party]["bytes_received"] == layout.nbytes  # the cost: exactly the layout's bytes
        got = material_from(layout, material_tensors(mat, layout, i, n))  # the layout carries the material
        for slot in layout.slots:
            if slot.is_share:
                mine = got.data[slot.key] if slot.index is None else got.data[slot.key][slot.index]
                dealt = mat.data[slot.key] if slot.index is None else mat.data[slot.key][slot.index]
                assert torch.equal(mine, dealt[i : i + 1])


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_agrees_with_its_layout_and_declared_bytes(name: str, n: int) -> None:
    kind = KINDS[name]
    assert dataclasses.is_dataclass(kind.Params) and kind.Params.__dataclass_params__.frozen
    _check_kind(kind, n)


def test_a_new_kind_is_one_class(square_pair) -> None:
    _check_kind(square_pair, 3)
    parties = PARTIES[2]
    dealer = TrustedDealer("cp", parties, make_prg(0), Communicator(parties), RingConfig(), "cpu")
    mat = dealer._generate(square_pair.example(parties))
    r, r2 = mat.r.sum(0), mat.r2.sum(0)  # the typed view: mat.r2, not mat["r2"]
    assert torch.equal(r2, r * r)
    with pytest.raises(WireError, match="square_pair shape"):
        encode_request(square_pair.request((-1,)), parties)


def test_a_kind_that_lacks_a_part_is_refused_at_registration() -> None:
    class NoGeneration(MaterialKind):
        name = "incomplete"
        Params = SquarePairParams
        validate, layout, example = SquarePair.validate, SquarePair.layout, SquarePair.example

    with pytest.raises(TypeError, match="lacks \\['generate'\\]"):
        register(NoGeneration)
    assert "incomplete" not in KINDS


def test_an_unknown_kind_or_misnamed_field_is_refused_on_the_wire() -> None:
    with pytest.raises(WireError, match="kind: expected one of"):
        decode_request(b'{"kind":"exec","params":{},"refs":[],"v":2}', PARTIES[2])
    with pytest.raises(WireError, match="expected the fields \\('shape', 'bits'\\)"):
        decode_request(b'{"kind":"trunc","params":{"bit":16,"shape":[2]},"refs":[],"v":2}', PARTIES[2])


def test_one_ring_configuration_travels_whole() -> None:
    """Issue 15.2: the settings every party and the dealer agree on are one validated value; a session takes it
    whole, or builds it from its flat arguments (the same value), and refuses the two when they differ."""
    from lightning_smpc.mpc import Session

    ring = RingConfig(precision_bits=12, compare_bits=36, digit_bits=4)
    s = Session(ring=ring)
    assert s.ring is ring and (s.precision_bits, s.compare_bits, s.compare_digit_bits) == (12, 36, 4)
    assert s.dealer.ring is ring  # the dealer side takes it whole too (no loose compare_bits / digit_bits)
    with pytest.raises(TypeError, match="Expected `ring` to be a RingConfig"):
        TrustedDealer("cp", PARTIES[2], make_prg(0), Communicator(PARTIES[2]), 32, "cpu")  # the old flat keyword
    assert Session(precision_bits=12, compare_bits=36).ring == ring
    assert Session().ring == RingConfig()  # the defaults live in RingConfig only
    with pytest.raises(ValueError, match="either in `ring` or flat"):
        Session(ring=ring, precision_bits=16)
    with pytest.raises(ValueError, match="digit size"):
        RingConfig(compare_bits=36, digit_bits=8)
