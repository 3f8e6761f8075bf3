"""Measured online traffic equals the declared ``COSTS`` (rounds, and bytes sent by each compute party).

One test, parametrized over EVERY entry of :data:`lightning_smpc.mpc.COSTS` and over 2 and 3 parties: each
declared protocol needs a measured scenario in :data:`SCENARIOS` (a newly declared protocol without one fails
here). A scenario runs the protocol through its real entry points (torch ops on ``ShareTensor`` where there is
one) and, for each call, compares the traffic measured by the communicator (``s.comm.snapshot()`` deltas: only
the protocol's tag moved, its rounds, and the bytes every compute party sent) with the declaration evaluated at
that call's sizes. Where the module table below gives a hand-computed number, the declaration is also pinned to
it (``literal``), so that a declaration and an implementation cannot drift together unnoticed.

Numbers at the shapes used here (default ``precision_bits=16``, ``compare_bits=32``, so the carry tree has
L = 2 levels); bytes are sent by EACH compute party (the 3-party numbers are twice the 2-party ones: every
opening goes to n - 1 = 2 others):

=====================================================  ======  =============  =============
protocol (shape)                                       rounds  bytes 2 pc     bytes 3 pc
=====================================================  ======  =============  =============
matmul/linear, fresh operands [16,64] x [64,10]        1       13 312         26 624        (8 B x (1024 + 640))
matmul/linear, both operands' masks already opened     0       0              0
mul, fresh [5,7] * [5,7]                               1       560            1 120
conv2d, fresh [2,3,6,6] * [4,3,3,3]                    1       2 592          5 184         (8 B x (216 + 108))
ReLU, 1024 elements                                    4       9 344          18 688        (73 bits/element)
compare_bit, 1024 elements                             4       9 344          18 688
argmax over 10 classes, 16 rows                        5       2 170          4 340
--- with 4-bit comparison digits (compare_digit_bits=4: 8 digits, L = 3 levels, 7 + 3 + 1 ANDs) ---
ReLU, 1024 elements                                    5       11 136         22 272        (87 bits/element)
compare_bit, 1024 elements                             5       11 136         22 272
argmax over 10 classes, 16 rows                        6       3 430          6 860         (1715 bits/row)
truncation, 1024 elements                              1       8 192          16 384
share, 32 elements (outside owner)                     1       0              0             (owner: n x 256)
remask (kept shares), 40 elements                      1       320            640
reveal, 32 elements, to one other receiver             1       256            256
=====================================================  ======  =============  =============
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from lightning_smpc.mpc import COSTS, ops
from lightning_smpc.mpc.protocols import compare_bit, compare_thresholds, truncate

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


def check(s, delta, total_rounds, tag, rounds, bytes_sent: dict):
    """Only ``tag`` moved; it took ``rounds`` rounds and compute party ``p`` sent ``bytes_sent[p]``."""
    assert set(delta) == ({tag} if rounds else set()), delta
    if not rounds:
        assert total_rounds == 0
        assert all(b == 0 for b in bytes_sent.values()), f"declared bytes {bytes_sent} for a call of 0 rounds"
        return
    got_rounds, sent, prounds = delta[tag]
    assert total_rounds == got_rounds == rounds, (total_rounds, got_rounds, rounds)
    for p in s.parties:
        assert sent.get(p, 0) == bytes_sent[p], (p, sent.get(p, 0), bytes_sent[p])
        assert prounds[p] == rounds, (p, prounds[p], rounds)


# ---------------------------------------------------------------------------------------------- scenarios
# ``scenario(make, n, expect)``: ``make(**session_kwargs)`` gives a fresh n-party session; ``expect(s, fn,
# literal=None, per_party=None, **sizes)`` runs ``fn`` once, checks the traffic against the declaration at
# ``sizes`` (``per_party(p)`` may override sizes per compute party, e.g. reveal's receivers), and pins the
# declaration to ``literal = (rounds, bytes)`` when given: ``bytes`` is what every compute party sends, or
# ``{party: bytes}``, at this n (hand-computed, see the table above). It returns (result, delta) for extra checks.


def _beaver_bilinear(op: str):
    def scenario(make, n, expect):
        s = make(seed=1)
        apply = {"matmul": lambda a, b: a @ b, "linear": F.linear}[op]
        right = (64, 10) if op == "matmul" else (10, 64)  # linear takes the weight as [out, in]
        x, w = s.share(torch.randn(16, 64)) * 1, s.share(torch.randn(*right)) * 1  # results of ops: no opened mask
        assert x.mask is None and w.mask is None
        sizes = dict(shape_x=(16, 64), shape_y=right)
        expect(s, lambda: apply(x, w), literal=(1, (n - 1) * 13_312), **sizes)
        # the same operands again: their opened masks are cached on them, nothing is sent
        expect(s, lambda: apply(x, w), literal=(0, 0), fresh_x=False, fresh_y=False, **sizes)
        # a client input (masked when shared) times a fresh operand: only the fresh one is opened
        xi, wf = s.share(torch.randn(8, 32)), s.share(torch.randn(*((32, 4) if op == "matmul" else (4, 32)))) + 0.0
        expect(s, lambda: apply(xi, wf), literal=(1, (n - 1) * 8 * 32 * 4), shape_x=(8, 32), shape_y=tuple(wf.shape),
               fresh_x=False, fresh_y=True)
        # two client inputs: both masks were opened by the sharing, 0 rounds
        xi2, wi = s.share(torch.randn(16, 64)), s.share(torch.randn(*right))
        expect(s, lambda: apply(xi2, wi), literal=(0, 0), fresh_x=False, fresh_y=False, **sizes)

    return scenario


def _beaver_mul(make, n, expect):
    s = make(seed=3)
    a, b = s.share(torch.randn(5, 7)) * 1, s.share(torch.randn(5, 7)) * 1
    expect(s, lambda: a * b, literal=(1, (n - 1) * 560), shape_x=(5, 7), shape_y=(5, 7))
    expect(s, lambda: a * b, literal=(0, 0), shape_x=(5, 7), shape_y=(5, 7), fresh_x=False, fresh_y=False)
    # broadcasting: each operand is opened at its own shape
    c, d = s.share(torch.randn(6, 9)) * 1, s.share(torch.randn(9)) * 1
    expect(s, lambda: c * d, literal=(1, (n - 1) * 8 * (54 + 9)), shape_x=(6, 9), shape_y=(9,))


def _beaver_conv2d(make, n, expect):
    s = make(seed=3)
    x, k = s.share(torch.randn(2, 3, 6, 6)) * 1, s.share(torch.randn(4, 3, 3, 3)) * 1
    sizes = dict(shape_x=(2, 3, 6, 6), shape_y=(4, 3, 3, 3))
    expect(s, lambda: F.conv2d(x, k), literal=(1, (n - 1) * 2_592), **sizes)
    expect(s, lambda: F.conv2d(x, k, padding=1), literal=(0, 0), fresh_x=False, fresh_y=False, **sizes)


def _share(make, n, expect):
    s = make(seed=9)
    _, delta = expect(s, lambda: s.share(torch.randn(4, 8)), literal=(1, 0), numel=32)
    _, sent, _ = delta["share"]
    assert sent["client"] == n * 8 * 32  # the input owner sends one masked copy to each party


def _remask(make, n, expect):
    s = make(seed=9)
    kept = [s.share(torch.randn(4, 8)).shares, s.share(torch.randn(8)).shares]  # as if read from share files
    expect(s, lambda: s.adopt_shares(kept, s.precision_bits), literal=(1, (n - 1) * 8 * 40), numel=40)


def _reveal(make, n, expect):
    s = make(seed=9)
    X = s.share(torch.randn(4, 8))
    # to one party: it sends nothing, every other party sends its share to it
    expect(s, lambda: X.reveal(to="alice"), literal=(1, {p: 0 if p == "alice" else 256 for p in s.parties}),
           numel=32, per_party=lambda p: dict(receivers=0 if p == "alice" else 1))
    # to all parties: each sends to the n - 1 others
    expect(s, lambda: X.reveal(), literal=(1, (n - 1) * 256), numel=32, receivers=n - 1)
    # to an outside receiver only: every party sends to it
    expect(s, lambda: s.reveal(X, to=(), outside="client"), literal=(1, 256), numel=32, receivers=1)


def _trunc(make, n, expect):
    s = make(seed=8)
    p = s.share(torch.randn(16, 64)) * 0.5
    assert p.frac_bits == 32
    expect(s, lambda: truncate(s, p.shares, 16), literal=(1, (n - 1) * 8_192), numel=1024)
    # the lazy path: a pending product brought to precision_bits (as before a product or a reveal)
    out, _ = expect(s, lambda: ops.to_precision(p), literal=(1, (n - 1) * 8_192), numel=1024)
    assert out.frac_bits == 16


CMP_1024 = {8: (4, 9_344), 4: (5, 11_136)}  # digit bits -> (rounds, bytes to each other party), 1024 elements
ARGMAX_16x10 = {8: (5, 2_170), 4: (6, 3_430)}


def _compare_bit(make, n, expect):
    for d, (rounds, sent) in CMP_1024.items():
        s = make(seed=5, compare_digit_bits=d)
        h = s.share(torch.randn(16, 64))
        expect(s, lambda: compare_bit(s, h.shares), literal=(rounds, (n - 1) * sent), numel=1024, d=d)
        # the operators use the same protocol, also with the truncation of a product fused into the opening
        expect(s, lambda: h >= 0.25, literal=(rounds, (n - 1) * sent), numel=1024, d=d)
        expect(s, lambda: (h * 0.5) < 0.1, literal=(rounds, (n - 1) * sent), numel=1024, d=d)


# compare_thresholds, 100 elements against 5 thresholds: one 64-bit opening per element (800 B), then per comparison
# the carry tree and a daBit: 4-bit digits 7 + 3 + 1 ANDs (2 x (438 + 188 + 63) = 1378 B for 500 comparisons) + 63 B;
# 8-bit digits 3 + 1 ANDs (2 x (188 + 63) = 502 B) + 63 B
THRESHOLDS_100x5 = {4: (5, 800 + 1378 + 63), 8: (4, 800 + 502 + 63)}


def _compare_thresholds(make, n, expect):
    for d, (rounds, sent) in THRESHOLDS_100x5.items():
        s = make(seed=6, compare_digit_bits=d)
        h = s.share(torch.randn(4, 25) * 3)
        t = torch.tensor([-2.0, -0.5, 0.0, 1.0, 2.5])
        bits, _ = expect(s, lambda: compare_thresholds(s, h.shares, (t * 2**16).long()), literal=(rounds, (n - 1) * sent),
                         numel=100, m=5, d=d)
        want = (h.reveal().unsqueeze(-1) >= t.double()).double()
        assert torch.equal(s.from_shares(bits, 0).reveal(), want)


def _relu(make, n, expect):
    for d, (rounds, sent) in CMP_1024.items():
        s = make(seed=4, compare_digit_bits=d)
        h = s.share(torch.randn(16, 64))
        expect(s, lambda: h.relu(), literal=(rounds, (n - 1) * sent), numel=1024, d=d)
        p = h * 0.5  # 2f fractional bits: the truncation is fused into the ReLU's first opening (no extra round)
        assert p.frac_bits == 32
        expect(s, lambda: p.relu(), literal=(rounds, (n - 1) * sent), numel=1024, d=d)
    # rounds grow with log2 of the number of digits (one carry-tree level per doubling)
    for d, cb, levels in [(8, 16, 1), (8, 24, 2), (8, 40, 3), (8, 48, 3),
                          (4, 16, 2), (4, 20, 3), (4, 24, 3), (4, 40, 4), (4, 48, 4)]:
        s = make(seed=cb, compare_bits=cb, precision_bits=8, compare_digit_bits=d)
        h = s.share(torch.randn(3, 5))
        _, delta = expect(s, lambda: h.relu(), numel=15, j=cb, d=d)
        assert delta["relu"][0] == 2 + levels


def _argmax(make, n, expect):
    for d, (rounds, sent) in ARGMAX_16x10.items():
        s = make(seed=6, compare_digit_bits=d)
        for n_cls in (2, 3, 10, 17):
            logits = s.share(torch.randn(16, n_cls))
            literal = (rounds, (n - 1) * sent) if n_cls == 10 else None
            _, delta = expect(s, lambda: logits.argmax(-1), literal=literal, numel=16 * n_cls, n_cls=n_cls, d=d)
            assert delta["argmax"][0] == rounds  # constant in the number of classes
        x, w = s.share(torch.randn(16, 20)), s.share(torch.randn(20, 10))
        logits = x @ w  # client inputs: 0 rounds; 2f fractional bits, truncation fused into the argmax opening
        expect(s, lambda: logits.argmax(-1), literal=(rounds, (n - 1) * sent), numel=160, n_cls=10, d=d)


SCENARIOS: dict[str, Callable] = {
    "beaver_mul": _beaver_mul,
    "beaver_matmul": _beaver_bilinear("matmul"),
    "beaver_linear": _beaver_bilinear("linear"),
    "beaver_conv2d": _beaver_conv2d,
    "share": _share,
    "remask": _remask,
    "reveal": _reveal,
    "trunc": _trunc,
    "compare_bit": _compare_bit,
    "compare_thresholds": _compare_thresholds,
    "relu": _relu,
    "argmax": _argmax,
}


# ---------------------------------------------------------------------------------------------- the test
@N_PARTIES
@pytest.mark.parametrize("name", sorted(COSTS))
def test_declared_cost_matches_measured(make_session, n, name):
    assert name in SCENARIOS, (
        f"protocol {name!r} declares a cost in COSTS but has no measured scenario: add one to SCENARIOS in "
        "tests/mpc/test_costs.py"
    )
    cost = COSTS[name]
    calls = []

    def expect(s, fn, literal=None, per_party=None, **sizes):
        declared_rounds = cost.rounds(n, **sizes)
        declared = {p: cost.bytes_sent(n, **{**sizes, **(per_party(p) if per_party else {})}) for p in s.parties}
        if literal is not None:
            rounds, nbytes = literal
            nbytes = nbytes if isinstance(nbytes, dict) else {p: nbytes for p in s.parties}
            assert (declared_rounds, declared) == (rounds, nbytes), f"{name}: declaration at {sizes} vs hand-computed"
        out, total, delta = measure(s, fn)
        check(s, delta, total, name, declared_rounds, declared)
        calls.append(total)
        return out, delta

    SCENARIOS[name](lambda **kw: make_session(n, **kw), n, expect)
    assert any(calls), f"the scenario of {name} never measured a call that sends anything"


def test_every_scenario_is_a_declared_protocol():
    """A scenario for a protocol that no longer declares a cost is stale (its checks would never run)."""
    assert sorted(set(SCENARIOS) - set(COSTS)) == []
