"""The multi-process runtime (one gloo process per party + one for the dealer) runs the same protocols as the
simulated runtime: same results, same counted traffic, and each party only learns what was revealed to it."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from lightning_smpc.mpc import Session
from lightning_smpc.mpc.distributed import run_parties


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 20, generator=g), torch.randn(5, 20, generator=g) * 0.3, torch.randn(5, generator=g) * 0.1


def job(sess):
    """alice owns the input, bob the model; bob learns the argmax, alice the sum of squares, all see h."""
    warnings.simplefilter("ignore")
    X, W, b = _data()
    mine = lambda owner, v: v if sess.local_party in (None, owner) else None  # noqa: E731
    x = sess.share(mine("alice", X), owner="alice", shape=tuple(X.shape))
    w = sess.share(mine("bob", W), owner="bob", shape=tuple(W.shape))
    bb = sess.share(mine("bob", b), owner="bob", shape=tuple(b.shape))
    h = F.relu(F.linear(x, w, bb))
    return {"h": h.reveal(), "sumsq": (h * h).sum(1).reveal(to="alice"), "argmax": h.argmax(dim=1).reveal(to="bob")}


@pytest.mark.parametrize("parties", [("alice", "bob"), ("alice", "bob", "carol")])
def test_gloo_runtime_matches_plaintext_and_simulated_traffic(parties):
    X, W, b = _data()
    H = F.relu(F.linear(X, W, b)).double()
    runs = run_parties(job, parties=parties, timeout=240)
    by_party = dict(zip(parties, runs[: len(parties)]))
    for p, run in by_party.items():
        assert (run["result"]["h"] - H).abs().max() < 1e-3
        assert (run["result"]["sumsq"] is not None) == (p == "alice")  # only the receiver learns it
        assert (run["result"]["argmax"] is not None) == (p == "bob")
    assert torch.allclose(by_party["alice"]["result"]["sumsq"], (H * H).sum(1), atol=1e-2)
    assert torch.equal(by_party["bob"]["result"]["argmax"], H.argmax(1).double())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = Session(parties=parties, seed=0)
    job(sim)
    for p, run in by_party.items():  # the same protocol sends the same bytes in the same rounds
        assert run["rounds"] == sim.comm.rounds
        assert run["stats"][p] == sim.comm.stats()[p]
    assert runs[-1][parties[0]]["bytes_received"] > 0  # the dealer process sent material
