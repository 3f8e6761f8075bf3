"""A softmax/log_softmax is skipped on shares only where its argmax over its own dim is all that is used (issue 8.3),
and computed where anything else uses it (issue 17: a softmax inside a network, e.g. attention).

Before issue 8.3 the skip ignored ``dim``, so ``argmax(softmax(x, dim=0), dim=1)`` returned the logits' argmax
(wrong), and ``softmax(x, 1).max(1).values`` returned (and revealed) the logits' maximum. Now an argmax over the
softmax's own dim (or the indices of a max over it) uses the logits, free; every other use computes the real
softmax first; the values of a max over a skipped softmax are refused, and nothing reveals a skipped softmax.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_smpc.mpc import RevealNotAllowedError, UnsupportedOpError

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# argmax over dim 1 of softmax over dim 0 differs from argmax over dim 1 of the logits here
X = torch.tensor([[5.0, 0.0, 1.0], [6.0, 3.0, -1.0]])


@pytest.mark.parametrize("fn", [
    lambda x: F.softmax(x, dim=1).argmax(1), lambda x: F.log_softmax(x, -1).argmax(-1, keepdim=True),
    lambda x: torch.softmax(x, 0).argmax(0), lambda x: x.softmax(1).max(1).indices, lambda x: torch.max(x.softmax(-1), 1)[1],
    lambda x: F.softmax(x, 1).contiguous().detach().argmax(dim=1), lambda x: F.softmax(F.softmax(x, 1), 1).argmax(1),
    lambda x: F.softmax(x[:1], 1).argmax(),  # flattened argmax: fine, every other dim has size 1
])
def test_argmax_over_the_softmax_dim_equals_plaintext(session, fn) -> None:
    assert torch.equal(fn(session.share(X)).reveal(), fn(X).double())


@pytest.mark.parametrize("fn", [
    lambda x: F.softmax(x, dim=0).argmax(1), lambda x: F.softmax(x, 0).argmax(-1), lambda x: F.log_softmax(x, 1).argmax(0),
    lambda x: F.softmax(x, 1).argmax(), lambda x: F.softmax(x, 1).max(0).values, lambda x: F.softmax(x, 1).max(0).indices,
    lambda x: F.softmax(F.softmax(x, 0), 1) * 1, lambda x: F.softmax(x, 1).reshape(3, 2).argmax(1),
    lambda x: F.softmax(x, 1).t().argmax(0), lambda x: F.softmax(x, 1)[0].argmax(), lambda x: F.softmax(x, 1) * 2,
    lambda x: F.log_softmax(x, 0) - 1,
])
def test_anything_else_computes_the_real_softmax(session, fn) -> None:
    got, want = fn(session.share(X)).reveal(), fn(X).double()
    assert torch.allclose(got, want, atol=3e-4), (got, want)


def test_the_argmax_of_a_skipped_softmax_costs_nothing_more(session) -> None:
    x = session.share(X)
    rounds = session.comm.rounds
    F.softmax(x, 1).argmax(1)
    argmax_only = session.comm.rounds - rounds
    F.softmax(x * 1, 1).argmax(1)
    assert session.comm.rounds - rounds - argmax_only == argmax_only  # the softmax added no round


@pytest.mark.parametrize("fn", [
    lambda x: torch.softmax(x, 1).max(1).values * 2, lambda x: torch.softmax(x, 1).max(1).values.argmax(0),
    lambda x: F.softmax(x, 1).amax(1) + 1,
])
def test_using_the_max_values_of_a_skipped_softmax_is_refused(session, fn) -> None:
    with pytest.raises(UnsupportedOpError, match="softmax"):
        fn(session.share(X))


@pytest.mark.parametrize("fn", [lambda x: F.softmax(x, 1).max(1).values, lambda x: F.softmax(x, 1).amax(1), lambda x: F.softmax(x[:1], -1).max()])
def test_max_values_of_a_skipped_softmax_are_never_revealed(session, fn) -> None:
    values = fn(session.share(X))  # computing the max is fine (its indices are valid) ...
    with pytest.raises(RevealNotAllowedError):  # ... but the values are the logits' maximum, not a probability
        values.reveal()


def test_softmax_without_dim_uses_torchs_legacy_choice(session) -> None:
    x3 = torch.tensor([[[1.0, 2.0], [3.0, -1.0]], [[0.5, 4.0], [2.0, 2.5]]])  # 3-D: torch picks dim 0
    with pytest.warns(UserWarning):
        expected = F.softmax(x3).argmax(0)
    with pytest.warns(UserWarning):
        got = F.softmax(session.share(x3)).argmax(0).reveal()
    assert torch.equal(got, expected.double())


@pytest.mark.parametrize("fn", [lambda x: F.softmax(x, -1), lambda x: F.softmax(x, -1).max(-1).values])
def test_no_reveal_path_bypasses_the_mark(session, fn) -> None:
    """Session.reveal (used by the strategy and metrics) refuses too, not only ShareTensor.reveal."""
    y = fn(session.share(X))
    n_records = len(session.comm.records)
    for reveal in (lambda: session.reveal(y), lambda: session.reveal(y, to="alice"), lambda: session.reveal(y, to=(), outside="client")):
        with pytest.raises(RevealNotAllowedError):
            reveal()
    assert len(session.comm.records) == n_records and session.ledger == []
