"""The trusted dealer's preprocessing: record the plan of one batch, generate material for more batches ahead of
time, then run them with no inline dealer work; a request that does not match the store is refused. And its
material on the real wire: parties after the first receive a seed per request, and expand the same shares."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from lightning_smpc.mpc import DealerStoreError, Session
from lightning_smpc.mpc.dealer import Request
from lightning_smpc.mpc.distributed import run_parties

pytestmark = pytest.mark.usefixtures("torch_single_thread")

N_PARTIES = pytest.mark.parametrize("n", [2, 3], ids=["2pc", "3pc"])
BATCH, D_IN, D_HID, N_CLS = 8, 20, 16, 10


def mlp_weights(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(D_HID, D_IN, generator=g, dtype=torch.float64) / D_IN**0.5,
            torch.randn(D_HID, generator=g, dtype=torch.float64) * 0.1,
            torch.randn(N_CLS, D_HID, generator=g, dtype=torch.float64) / D_HID**0.5,
            torch.randn(N_CLS, generator=g, dtype=torch.float64) * 0.1]


def forward(x, w1, b1, w2, b2):
    return F.linear(F.linear(x, w1, b1).relu(), w2, b2)


def secure_batch(s, params, x):
    """One batch as the strategy runs it: share the input, forward, argmax revealed; returns (logits, labels)."""
    X = s.share(x)
    logits = forward(X, *params)
    return logits, logits.argmax(-1).reveal().long()


def check_batch(logits, labels, x, plain_params):
    want = forward(x, *plain_params)
    # two layers of products: a loose sanity tolerance (the per-op bounds are asserted in test_protocols.py;
    # here they add up to ~1e-3 at most)
    assert (logits.reveal() - want).abs().max().item() < 1e-2
    top2 = want.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-2  # argmax is exact up to the truncation error; skip near-ties
    assert torch.equal(labels[clear], want.argmax(-1)[clear])


@pytest.mark.parametrize("d", [8, 4], ids=["digits8", "digits4"])
@N_PARTIES
def test_preprocessed_batches_need_no_inline_dealer_work(make_session, n, d):
    s = make_session(n, seed=21, compare_digit_bits=d)
    plain = mlp_weights()
    params = [s.share(t, owner="alice") for t in plain]  # the model owner's weights, shared once
    g = torch.Generator().manual_seed(1)

    s.record_plan()
    x = torch.randn(BATCH, D_IN, generator=g, dtype=torch.float64)
    check_batch(*secure_batch(s, params, x), x, plain)
    plan = s.dealer.stop_recording()
    kinds = [e.request.kind for e in plan]
    assert kinds[0] == "outside_input_mask" and "beaver" in kinds and "cmp" in kinds  # the client: outside

    s.preprocess(plan, 3)
    assert s.dealer.store_size == 3 * len(plan)
    before = s.stats()["dealer"]
    assert before["preprocess_seconds"] > 0
    for _ in range(3):
        x = torch.randn(BATCH, D_IN, generator=g, dtype=torch.float64)
        check_batch(*secure_batch(s, params, x), x, plain)
        assert s.stats()["dealer"]["requests_inline"] == before["requests_inline"]
    after = s.stats()["dealer"]
    assert after["requests_from_store"] - before["requests_from_store"] == 3 * len(plan)
    assert s.dealer.store_size == 0
    # store exhausted: the next batch falls back to inline generation, still correct
    x = torch.randn(BATCH, D_IN, generator=g, dtype=torch.float64)
    check_batch(*secure_batch(s, params, x), x, plain)
    assert s.stats()["dealer"]["requests_inline"] == before["requests_inline"] + len(plan)


def test_a_discarded_store_does_not_leave_an_outside_owners_repeats_ahead(make_session):
    """Review (issue 18.1): after a batch of another shape drops the store, the next preprocessing continues from the
    outside client's inputs actually shared (its masks' indices), so that the store serves again."""
    s = make_session(2, seed=21)
    plain = mlp_weights()
    params = [s.share(t, owner="alice") for t in plain]
    g = torch.Generator().manual_seed(1)
    s.record_plan()
    secure_batch(s, params, torch.randn(BATCH, D_IN, generator=g, dtype=torch.float64))
    plan = s.dealer.stop_recording()
    s.dealer.fallback_inline = True
    s.preprocess(plan, 3)
    secure_batch(s, params, torch.randn(BATCH, D_IN, generator=g, dtype=torch.float64))  # from the store
    secure_batch(s, params, torch.randn(BATCH - 1, D_IN, generator=g, dtype=torch.float64))  # drops 2 repeats
    s.preprocess(plan, 1)
    before = s.stats()["dealer"]["requests_from_store"]
    x = torch.randn(BATCH, D_IN, generator=g, dtype=torch.float64)
    check_batch(*secure_batch(s, params, x), x, plain)
    assert s.stats()["dealer"]["requests_from_store"] - before == len(plan)


def test_the_crypto_provider_makes_keys_for_its_runs_outside_roles_only():
    from lightning_smpc.mpc.errors import WireError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = Session(("alice", "bob"), seed=0)
    s.dealer.known_owners = ("server", "client")
    assert len(s.dealer.owner_key("client")) == 32 and s.dealer.owner_key("client") == s.dealer.owner_key("client")
    with pytest.raises(WireError, match="'eve' is not a role of this run"):
        s.dealer.owner_key("eve")


def test_a_malformed_note_to_an_outside_role_is_a_wire_error():
    from lightning_smpc.mpc.errors import WireError
    from lightning_smpc.mpc.process.transport import outside_header, read_outside_header

    good = {"name": "labels", "frac_bits": 16, "shape": [3], "tag": "reveal", "public": "ab"}
    assert read_outside_header(outside_header(good)) == good
    assert read_outside_header(outside_header({"end": True, "examples": 5}))["examples"] == 5
    for bad in ({**good, "shape": [1 << 40, 1 << 40]}, {**good, "shape": [2.5]}, {**good, "frac_bits": 99},
                {**good, "extra": 1}, {"end": True, "examples": "7"}, [1, 2]):
        with pytest.raises(WireError, match="Malformed note"):
            read_outside_header(outside_header(bad))


@N_PARTIES
def test_preprocessed_traffic_equals_inline_traffic(make_session, n):
    """Preprocessing moves dealer work offline; the online protocol (rounds, bytes) is unchanged."""
    s = make_session(n, seed=22)
    plain = mlp_weights(1)
    params = [s.share(t, owner="alice") for t in plain]
    x = torch.randn(BATCH, D_IN, dtype=torch.float64)
    s.record_plan()
    r0, bytes0 = s.comm.rounds, s.comm.stats()["alice"]["bytes_sent"]
    secure_batch(s, params, x)
    inline = (s.comm.rounds - r0, s.comm.stats()["alice"]["bytes_sent"] - bytes0)
    s.preprocess(s.dealer.stop_recording(), 1)
    r0, bytes0 = s.comm.rounds, s.comm.stats()["alice"]["bytes_sent"]
    secure_batch(s, params, x)
    assert (s.comm.rounds - r0, s.comm.stats()["alice"]["bytes_sent"] - bytes0) == inline


@N_PARTIES
def test_mismatched_request_raises(make_session, n):
    s = make_session(n, seed=23)
    plain = mlp_weights(2)
    params = [s.share(t, owner="alice") for t in plain]
    s.record_plan()
    secure_batch(s, params, torch.randn(BATCH, D_IN, dtype=torch.float64))
    s.preprocess(s.dealer.stop_recording(), 1)
    with pytest.raises(DealerStoreError, match="preprocessed store"):
        secure_batch(s, params, torch.randn(BATCH + 1, D_IN, dtype=torch.float64))  # another batch shape
    s.dealer.clear_store()
    x = torch.randn(BATCH + 1, D_IN, dtype=torch.float64)
    check_batch(*secure_batch(s, params, x), x, plain)  # inline again after clearing


def test_mismatched_protocol_order_raises(make_session):
    s = make_session(2, seed=24)
    X = s.share(torch.randn(4, 5))
    s.record_plan()
    X.relu()
    s.preprocess(s.dealer.stop_recording(), 1)
    with pytest.raises(DealerStoreError):
        X.argmax(-1)  # the store holds ReLU material for this shape, not argmax material


# ---------------------------------------------------------------------------------------------- seeds on the wire
SHAPE = (300, 40)


def material_then_compute(sess):
    """Material requests alone first (nothing else crosses the links), then a small ReLU -> argmax computation."""
    warnings.simplefilter("ignore")
    tri = sess.dealer.request(Request("beaver", ("mul", (), SHAPE, SHAPE, (), ()), (None, None)))
    cmp = sess.dealer.request(Request("cmp", (SHAPE, "trunc", 16, None, "relu")))
    links_after_material = dict(sess.comm.links.stats) if sess.local_party is not None else None
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(8, 20, generator=g, dtype=torch.float64), torch.randn(10, 20, generator=g, dtype=torch.float64)
    mine = lambda owner, v: v if sess.local_party in (None, owner) else None  # noqa: E731
    X = sess.share(mine("bob", x), owner="bob", shape=tuple(x.shape))
    W = sess.share(mine("alice", w), owner="alice", shape=tuple(w.shape))
    h = F.linear(X, W).relu()
    return {"a": tri["a"], "b": tri["b"], "c": tri["c"], "r": cmp["r"], "u": cmp["u"], "rho_a": cmp["rho_a"],
            "rho_x": cmp["rho_x"], "links": links_after_material, "h": h.reveal(), "argmax": h.argmax(-1).reveal()}


@pytest.mark.parametrize("d", [4])
def test_distributed_parties_after_the_first_receive_only_seeds(d):
    """In separate processes: bob's material comes from a 16-byte seed per request (the bytes on his links are the
    ids and seeds only), alice's from her seed plus the corrections; the two reconstruct the dealer's
    correlations; the dealer's accounting is exactly what crossed the links; results equal the simulated runtime's."""
    parties = ("alice", "bob")
    alice, bob, dealer = run_parties(material_then_compute, parties=parties, timeout=60, compare_digit_bits=d)
    A, B = alice.result, bob.result
    both = lambda k: A[k] + B[k]  # noqa: E731  (each process holds its own row)
    assert torch.equal(both("a") * both("b"), both("c"))
    assert torch.equal(both("u"), (both("r") & ((1 << 63) - 1)) >> 16)
    assert torch.equal(both("rho_a"), (A["rho_x"] ^ B["rho_x"]).to(torch.int64))
    # what actually crossed the links during the material requests (plaintext bytes, before encryption)
    two = 2 * 16 + 2 * 8  # two seeds, the ids of the triple's two fresh masks
    assert B["links"]["plain_bytes_received"] == two
    assert B["links"]["wire_bytes_received"] <= two + 2 * 3 * 24  # + counter and GCM tag per tensor
    assert A["links"]["plain_bytes_received"] > 300 * 40 * (8 + 8 + 4 + 8)  # c, u, r63 (narrow), rho_a, ...
    # the whole run: the dealer counted exactly what it sent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = Session(parties=parties, seed=0, compare_digit_bits=d)
        want = material_then_compute(sim)
    assert dealer["bob"]["bytes_received"] == sim.comm.stats(offline=True)["bob"]["bytes_received"] < 1024
    assert dealer["alice"]["bytes_received"] == sim.comm.stats(offline=True)["alice"]["bytes_received"]
    for run in (alice, bob):
        assert run.rounds == sim.comm.rounds
        assert (run.result["h"] - want["h"]).abs().max() < 1e-3
        assert torch.equal(run.result["argmax"], want["argmax"])
