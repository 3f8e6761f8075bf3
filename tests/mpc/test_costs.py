"""Measured online traffic equals the declared ``COSTS`` (rounds, and bytes sent by each compute party).

Measured with ``s.comm.snapshot()`` deltas around one call. Numbers at the shapes used here (default
``precision_bits=16``, ``compare_bits=32``, so the carry tree has L = 2 levels); bytes are sent by EACH compute
party (the 3-party numbers are twice the 2-party ones: every opening goes to n - 1 = 2 others):

=====================================================  ======  =============  =============
protocol (shape)                                       rounds  bytes 2 pc     bytes 3 pc
=====================================================  ======  =============  =============
matmul, fresh operands [16,64] @ [64,10]               1       13 312         26 624        (8 B x (1024 + 640))
matmul, both operands client inputs (masks cached)     0       0              0
ReLU, 1024 elements                                    4       9 344          18 688        (73 bits/element)
compare_bit, 1024 elements                             4       9 344          18 688
argmax over 10 classes, 16 rows                        5       2 170          4 340
truncation, 1024 elements                              1       8 192          16 384
=====================================================  ======  =============  =============
"""
from __future__ import annotations

import pytest
import torch

from lightning_smpc.mpc import COSTS
from lightning_smpc.mpc.protocols import compare_bit, truncate

pytestmark = pytest.mark.usefixtures("torch_single_thread")

N_PARTIES = pytest.mark.parametrize("n", [2, 3], ids=["2pc", "3pc"])


def measure(s, fn):
    """Run ``fn()``; return (result, global rounds, {tag: (rounds, {party: bytes_sent}, {party: rounds})})."""
    r0, before = s.comm.snapshot()
    out = fn()
    r1, after = s.comm.snapshot()
    delta = {}
    for tag, st in after.items():
        old = before.get(tag, {"rounds": 0, "parties": {}})
        rounds = st["rounds"] - old["rounds"]
        sent = {p: v["bytes_sent"] - old["parties"].get(p, {}).get("bytes_sent", 0) for p, v in st["parties"].items()}
        prounds = {p: v["rounds"] - old["parties"].get(p, {}).get("rounds", 0) for p, v in st["parties"].items()}
        if rounds or any(sent.values()):
            delta[tag] = (rounds, sent, prounds)
    return out, r1 - r0, delta


def check(s, delta, total_rounds, tag, rounds, bytes_sent):
    """Only ``tag`` moved; it took ``rounds`` rounds and every compute party sent ``bytes_sent``."""
    assert set(delta) == ({tag} if rounds else set()), delta
    if not rounds:
        assert total_rounds == 0
        return
    got_rounds, sent, prounds = delta[tag]
    assert total_rounds == got_rounds == rounds
    for p in s.parties:
        assert sent[p] == bytes_sent, (p, sent[p], bytes_sent)
        assert prounds[p] == rounds


@N_PARTIES
def test_matmul_fresh_operands(make_session, n):
    s = make_session(n, seed=1)
    x, w = s.share(torch.randn(16, 64)) * 1, s.share(torch.randn(64, 10)) * 1  # results of ops: no cached mask
    assert x.mask is None and w.mask is None
    _, total, delta = measure(s, lambda: x @ w)
    c = COSTS["beaver_matmul"]
    sizes = dict(shape_x=(16, 64), shape_y=(64, 10))
    check(s, delta, total, "beaver_matmul", c.rounds(n, **sizes), c.bytes_sent(n, **sizes))
    assert c.rounds(n, **sizes) == 1 and c.bytes_sent(n, **sizes) == (n - 1) * 13_312
    # the same operands again: the opened masks are cached, nothing is sent
    _, total, delta = measure(s, lambda: x @ w)
    assert c.rounds(n, fresh_x=False, fresh_y=False, **sizes) == 0
    check(s, delta, total, "beaver_matmul", 0, 0)


@N_PARTIES
def test_matmul_one_fresh_operand(make_session, n):
    s = make_session(n, seed=2)
    x, w = s.share(torch.randn(8, 32)), s.share(torch.randn(32, 4)) + 0.0  # x: client input, w: fresh
    c = COSTS["beaver_matmul"]
    sizes = dict(shape_x=(8, 32), shape_y=(32, 4), fresh_x=False, fresh_y=True)
    _, total, delta = measure(s, lambda: x @ w)
    check(s, delta, total, "beaver_matmul", c.rounds(n, **sizes), c.bytes_sent(n, **sizes))
    assert c.bytes_sent(n, **sizes) == (n - 1) * 8 * 32 * 4


@N_PARTIES
def test_elementwise_mul_and_conv(make_session, n):
    s = make_session(n, seed=3)
    a, b = s.share(torch.randn(5, 7)) * 1, s.share(torch.randn(5, 7)) * 1
    c = COSTS["beaver_mul"]
    sizes = dict(shape_x=(5, 7), shape_y=(5, 7))
    _, total, delta = measure(s, lambda: a * b)
    check(s, delta, total, "beaver_mul", c.rounds(n, **sizes), c.bytes_sent(n, **sizes))
    x, k = s.share(torch.randn(2, 3, 6, 6)) * 1, s.share(torch.randn(4, 3, 3, 3)) * 1
    c = COSTS["beaver_conv2d"]
    sizes = dict(shape_x=(2, 3, 6, 6), shape_y=(4, 3, 3, 3))
    _, total, delta = measure(s, lambda: torch.nn.functional.conv2d(x, k))
    check(s, delta, total, "beaver_conv2d", c.rounds(n, **sizes), c.bytes_sent(n, **sizes))


@N_PARTIES
@pytest.mark.parametrize("fused", [False, True], ids=["fresh", "fused-trunc"])
def test_relu(make_session, n, fused):
    s = make_session(n, seed=4)
    h = s.share(torch.randn(16, 64))
    if fused:
        h = h * 0.5  # 2f fractional bits: the truncation is fused into the ReLU's first opening
        assert h.frac_bits == 32
    c = COSTS["relu"]
    _, total, delta = measure(s, lambda: h.relu())
    check(s, delta, total, "relu", c.rounds(n, numel=1024), c.bytes_sent(n, numel=1024))
    assert c.rounds(n, numel=1024) == 4 and c.bytes_sent(n, numel=1024) == (n - 1) * 9_344
    assert total <= 4


@N_PARTIES
@pytest.mark.parametrize("cb,levels", [(16, 1), (24, 2), (40, 3), (48, 3)])
def test_relu_rounds_grow_with_log_of_range(make_session, n, cb, levels):
    s = make_session(n, seed=cb, compare_bits=cb, precision_bits=8)
    h = s.share(torch.randn(3, 5))
    c = COSTS["relu"]
    _, total, delta = measure(s, lambda: h.relu())
    assert c.rounds(n, numel=15, j=cb) == 2 + levels
    check(s, delta, total, "relu", c.rounds(n, numel=15, j=cb), c.bytes_sent(n, numel=15, j=cb))


@N_PARTIES
def test_compare_bit(make_session, n):
    s = make_session(n, seed=5)
    h = s.share(torch.randn(16, 64))
    c = COSTS["compare_bit"]
    _, total, delta = measure(s, lambda: compare_bit(s, h.shares))
    check(s, delta, total, "compare_bit", c.rounds(n, numel=1024), c.bytes_sent(n, numel=1024))
    assert c.rounds(n, numel=1024) == 4 and c.bytes_sent(n, numel=1024) == (n - 1) * 9_344
    # the operators use the same protocol
    _, total, delta = measure(s, lambda: h >= 0.25)
    check(s, delta, total, "compare_bit", c.rounds(n, numel=1024), c.bytes_sent(n, numel=1024))


@N_PARTIES
@pytest.mark.parametrize("n_cls", [2, 3, 10, 17])
def test_argmax(make_session, n, n_cls):
    s = make_session(n, seed=6)
    logits = s.share(torch.randn(16, n_cls))
    c = COSTS["argmax"]
    sizes = dict(numel=16 * n_cls, n_cls=n_cls)
    _, total, delta = measure(s, lambda: logits.argmax(-1))
    check(s, delta, total, "argmax", c.rounds(n, **sizes), c.bytes_sent(n, **sizes))
    assert c.rounds(n, **sizes) == 5  # constant in the number of classes
    if n_cls == 10:
        assert c.bytes_sent(n, **sizes) == (n - 1) * 2_170
        assert total <= 10


@N_PARTIES
def test_argmax_fused_with_truncation(make_session, n):
    s = make_session(n, seed=7)
    x, w = s.share(torch.randn(16, 20)), s.share(torch.randn(20, 10))
    logits = x @ w  # client inputs: 0 rounds; 2f fractional bits
    c = COSTS["argmax"]
    _, total, delta = measure(s, lambda: logits.argmax(-1))
    check(s, delta, total, "argmax", c.rounds(n, numel=160, n_cls=10), c.bytes_sent(n, numel=160, n_cls=10))


@N_PARTIES
def test_truncation(make_session, n):
    s = make_session(n, seed=8)
    p = s.share(torch.randn(16, 64)) * 0.5
    c = COSTS["trunc"]
    _, total, delta = measure(s, lambda: truncate(s, p.shares, 16))
    check(s, delta, total, "trunc", c.rounds(n, numel=1024), c.bytes_sent(n, numel=1024))
    assert c.rounds(n, numel=1024) == 1 and c.bytes_sent(n, numel=1024) == (n - 1) * 8_192
    # a product followed by another product truncates first (one "trunc" round, then the Beaver opening)
    q = s.share(torch.randn(16, 64))
    _, total, delta = measure(s, lambda: p * q)
    assert delta["trunc"][0] == 1 and delta["beaver_mul"][0] == 1 and total == 2


@N_PARTIES
def test_share_and_reveal(make_session, n):
    s = make_session(n, seed=9)
    c = COSTS["share"]
    X, total, delta = measure(s, lambda: s.share(torch.randn(4, 8)))
    assert total == c.rounds(n, numel=32) == 1 and set(delta) == {"share"}
    _, sent, _ = delta["share"]
    assert sent["client"] == n * 8 * 32  # the input owner sends one masked copy to each party
    assert all(sent.get(p, 0) == c.bytes_sent(n, numel=32) == 0 for p in s.parties)
    c = COSTS["reveal"]
    _, total, delta = measure(s, lambda: X.reveal(to="alice"))
    _, sent, _ = delta["reveal"]
    assert total == c.rounds(n, numel=32) == 1
    assert sent["alice"] == 0
    assert all(sent[p] == c.bytes_sent(n, numel=32, receivers=1) for p in s.parties[1:])
    _, total, delta = measure(s, lambda: X.reveal())
    _, sent, _ = delta["reveal"]
    assert all(sent[p] == c.bytes_sent(n, numel=32, receivers=n - 1) for p in s.parties)
