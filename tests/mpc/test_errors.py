"""Error paths: every misuse raises a specific, documented error with an actionable message."""
from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from lightning_smpc.mpc import (
    EncodingRangeError,
    NonFiniteInputError,
    PartyConfigError,
    RevealNotAllowedError,
    Session,
    SessionMismatchError,
    ShapeMismatchError,
    SmpcError,
    UnsupportedOpError,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


# ---------------------------------------------------------------------------------------------- inputs
def test_nan_and_inf_rejected_before_anything_is_sent(session):
    x = torch.tensor([[1.0, math.nan], [math.inf, math.nan]])
    with pytest.raises(ValueError) as ei:
        session.share(x)
    assert isinstance(ei.value, NonFiniteInputError) and isinstance(ei.value, SmpcError)
    msg = str(ei.value)
    assert "2 NaN" in msg and "1 inf" in msg and "out of 4" in msg
    assert session.comm.rounds == 0 and session.comm.records == []
    with pytest.raises(NonFiniteInputError, match="0 NaN and 1 inf"):
        session.share(torch.tensor([-math.inf]))


def test_overflow_rejected_with_limit_in_message(session):
    with pytest.raises(ValueError) as ei:
        session.share(torch.tensor([1.0, 70000.0, -32768.0, 3.0]))
    assert isinstance(ei.value, EncodingRangeError)
    msg = str(ei.value)
    assert "32768" in msg and "2 value(s)" in msg and "70000" in msg
    assert session.comm.rounds == 0
    # integer inputs (frac_bits=0) have the range 2^31
    with pytest.raises(EncodingRangeError, match="2.14748e"):
        session.share(torch.tensor([2.0**31], dtype=torch.float64), frac_bits=0)
    session.share(torch.tensor([32767.0]))  # just inside


def test_bad_public_operands(session):
    X = session.share(torch.ones(3))
    with pytest.raises(NonFiniteInputError):
        X + math.nan
    with pytest.raises(NonFiniteInputError):
        X * torch.tensor([1.0, math.inf, 2.0])
    with pytest.raises(EncodingRangeError):
        X + 1e6


# ---------------------------------------------------------------------------------------------- shapes
def test_shape_mismatch(session):
    X, W = session.share(torch.ones(4, 5)), session.share(torch.ones(4, 3))
    # results of ops carry no opened mask: a Beaver product of them would open both before computing
    Xf, Wf, v, L = X * 1, W * 1, session.share(torch.ones(3)) * 1, session.share(torch.ones(2, 3)) * 1
    rounds, n_records = session.comm.rounds, len(session.comm.records)
    with pytest.raises(ShapeMismatchError, match=r"Expected matching inner dims for matmul, but got \(4, 5\) @ \(4, 3\)"):
        X @ W
    with pytest.raises(ShapeMismatchError, match=r"\(4, 5\) @ \(4, 3\)"):
        Xf @ Wf
    with pytest.raises(ShapeMismatchError, match=r"\(4, 5\) @ \(4, 3\)"):
        X @ torch.ones(4, 3)
    with pytest.raises(ShapeMismatchError, match=r"\(4, 5\) @ \(4, 3\)"):
        torch.matmul(Xf, Wf)
    with pytest.raises(ShapeMismatchError, match=r"\(4, 5\) and \(3,\)"):
        Xf * v
    with pytest.raises(ShapeMismatchError, match=r"Expected input features 3 for linear, but got shape \(4, 5\)"):
        F.linear(Xf, L)
    # refused by the op before any protocol ran: nothing was opened, no dealer material was used
    assert session.comm.rounds == rounds and len(session.comm.records) == n_records


# ---------------------------------------------------------------------------------------------- sessions
def test_mixing_sessions(make_session):
    s1, s2 = make_session(2, seed=1), make_session(2, seed=2)
    # results of ops (no opened mask): a product would open them in ONE session's communicator if not refused
    a, b = s1.share(torch.ones(2, 2)) * 1, s2.share(torch.ones(2, 2)) * 1
    before = [(s.comm.rounds, len(s.comm.records)) for s in (s1, s2)]
    for fn in (lambda: a + b, lambda: a - b, lambda: a * b, lambda: a @ b, lambda: torch.cat([a, b]),
               lambda: a >= b, lambda: F.linear(a, b), lambda: b * a):
        with pytest.raises(SessionMismatchError, match="2 different sessions. Share every input with one Session"):
            fn()
    with pytest.raises(SessionMismatchError, match="of this session"):
        s2.reveal(a)
    with pytest.raises(SessionMismatchError, match="already shared"):
        s1.share(a)
    # refused before anything was opened, revealed or shared, in either session
    assert [(s.comm.rounds, len(s.comm.records)) for s in (s1, s2)] == before
    assert s1.ledger == [] and s2.ledger == []


# ---------------------------------------------------------------------------------------------- ops
@pytest.mark.parametrize("fn,name", [
    (torch.sin, "sin"), (torch.cos, "cos"), (torch.floor, "floor"), (torch.log1p, "log1p"),
    (torch.atan, "atan"), (F.softplus, "softplus"), (lambda x: x.pow(3), "pow"), (lambda x: x.round(), "round"),
    (lambda x: torch.maximum(x, x), "maximum"), (lambda x: x.abs(), "abs"),
])
def test_unsupported_ops_name_the_op(session, fn, name):
    X = session.share(torch.ones(2, 3))
    with pytest.raises(UnsupportedOpError) as ei:
        fn(X)
    assert isinstance(ei.value, NotImplementedError)
    assert name in str(ei.value)


def test_other_unsupported_uses(session):
    X = session.share(torch.ones(1, 1, 4, 4))
    with pytest.raises(UnsupportedOpError, match="rounding_mode"):
        torch.div(X, session.share(torch.ones(1)), rounding_mode="floor")
    with pytest.raises(UnsupportedOpError, match="max_pool2d_with_indices"):
        F.max_pool2d(X, 2, padding=1, return_indices=True)
    with pytest.raises(UnsupportedOpError, match="eval"):
        F.dropout(X, 0.5, training=True)
    assert F.dropout(X, 0.5, training=False) is X
    with pytest.raises(UnsupportedOpError):
        X.to(torch.int64)
    with pytest.raises(UnsupportedOpError):
        X.view(torch.int32)
    with pytest.raises(UnsupportedOpError):
        torch.cat([X, torch.ones(1, 1, 4, 4)])


def test_shares_are_not_printed_or_pickled(session):
    X = session.share(torch.tensor([123.456]))
    assert "HIDDEN" in repr(X) and "123" not in repr(X)
    with pytest.raises(TypeError):
        pickle.dumps(X)


# ---------------------------------------------------------------------------------------------- parties
@pytest.mark.parametrize("parties,dealer", [
    (("alice",), "crypto_provider"),
    ((), "crypto_provider"),
    (("alice", "alice"), "crypto_provider"),
    (("alice", "bob", "alice"), "crypto_provider"),
    (("alice", "bob"), "bob"),
    (("alice", ""), "crypto_provider"),
])
def test_bad_party_configuration(parties, dealer):
    with pytest.raises(PartyConfigError) as ei:
        Session(parties=parties, crypto_provider=dealer, seed=0)
    assert isinstance(ei.value, ValueError)
    assert "Expected" in str(ei.value)


def test_bad_owner_and_receiver(session):
    with pytest.raises(PartyConfigError, match="crypto provider"):
        session.share(torch.ones(2), owner=session.crypto_provider)
    X = session.share(torch.ones(2))
    with pytest.raises(PartyConfigError, match="mallory"):
        X.reveal(to="mallory")
    with pytest.raises(PartyConfigError):
        session.reveal(X, to=("alice", "crypto_provider"))


# ---------------------------------------------------------------------------------------------- reveal policy
@pytest.mark.parametrize("fn", [
    lambda x: F.softmax(x, dim=-1), lambda x: F.log_softmax(x, -1), lambda x: x.softmax(-1),
    lambda x: torch.log_softmax(x, dim=1), lambda x: F.softmax(x, -1).contiguous(),
])
def test_softmax_output_cannot_be_revealed(session, fn):
    x = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.25]])
    P = fn(session.share(x))
    n_records = len(session.comm.records)
    with pytest.raises(RevealNotAllowedError, match="argmax"):
        P.reveal()
    assert len(session.comm.records) == n_records and session.ledger == []  # nothing was opened


@pytest.mark.parametrize("fn", [
    lambda p: p * 2 + 1, lambda p: p @ p.t(), lambda p: p.relu(), lambda p: torch.cat([p, p]), lambda p: p.sum(),
])
def test_arithmetic_on_a_skipped_softmax_computes_the_real_one(session, fn):
    """The skipped softmax's values are the logits: an op that needs its values gets the real softmax (computing on
    the logits would give silently wrong values)."""
    x = torch.tensor([[1.0, 3.0, 2.0]])
    got, want = fn(F.softmax(session.share(x), dim=-1)).reveal(), fn(F.softmax(x.double(), dim=-1))
    assert torch.allclose(got, want, atol=3e-4)


def test_softmax_argmax_is_allowed(session):
    x = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.25]])
    P = F.softmax(session.share(x), dim=-1)
    assert torch.equal(P.argmax(-1).reveal(), torch.tensor([1.0, 0.0], dtype=torch.float64))
