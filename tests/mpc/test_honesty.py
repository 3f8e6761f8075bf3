"""Honesty (semi-honest security) checks on what each party actually sees.

(a) a party's shares of a secret look uniform; (b) each party's recorded view of a whole inference
(share -> linear -> relu -> linear -> argmax) has the same distribution for two very different secret inputs;
(c) only the final argmax is ever revealed (the communicator's reveal records are exactly the session's ledger),
and every other value a party learns looks uniform on its own (bit frequencies, top-byte chi-square); (d) cheating
protocols are caught: a local ``reconstruct`` raises ProtocolViolation, and an unmasked or weakly masked opening is
flagged by both the view comparison of (b) and the uniformity check of (c).

All randomness is seeded (inputs: torch generators; shares and dealer material: the seeded test PRG), so the
statistical checks are deterministic; their thresholds are generous (5-6 sigma), so they are not flaky either.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_smpc.mpc import ProtocolViolation
from lightning_smpc.mpc.comm import reconstruct

pytestmark = pytest.mark.usefixtures("torch_single_thread")

N_PARTIES = pytest.mark.parametrize("n", [2, 3], ids=["2pc", "3pc"])
Z_FLAG = 6.0  # two-proportion z-score above which a bit's frequency differs between the two runs


# ---------------------------------------------------------------------------------------------- helpers
def bit_balance(words: torch.Tensor) -> torch.Tensor:
    """Frequency of ones at each of the 64 bit positions of int64 ``words``."""
    w = words.reshape(-1)
    return torch.stack([((w >> k) & 1).sum() for k in range(64)]).double() / w.numel()


def byte_chi2(words: torch.Tensor) -> float:
    counts = np.bincount(words.reshape(-1).numpy().view(np.uint8), minlength=256)
    expected = counts.sum() / 256
    return float(((counts - expected) ** 2 / expected).sum())


def bit_counts(view: list[tuple[str, torch.Tensor]]) -> list[tuple[str, tuple, torch.Tensor, int]]:
    """Per recorded value: (tag, shape, ones per bit position (64), number of elements)."""
    shifts = torch.arange(64)
    out = []
    for tag, v in view:
        flat = v.reshape(-1).to(torch.int64)
        ones = ((flat.unsqueeze(1) >> shifts) & 1).sum(0)
        out.append((tag, tuple(v.shape), ones, flat.numel()))
    return out


def view_differences(view_a, view_b, exclude=("reveal",)) -> list[tuple[str, int, int, float]]:
    """Compare two views of the same party from two runs on different secrets.

    The transcript structure (tags and shapes, in order) must be identical; then for every recorded value and
    every bit position, a two-proportion z-test on the frequency of ones. Returns the flagged
    ``(tag, index in view, bit, z)``; an honest protocol (every opening uniformly masked) gives none.
    """
    ca = [c for c in bit_counts(view_a) if c[0] not in exclude]
    cb = [c for c in bit_counts(view_b) if c[0] not in exclude]
    assert [(t, s) for t, s, _, _ in ca] == [(t, s) for t, s, _, _ in cb], "transcript structure depends on the data"
    flagged = []
    for i, ((tag, _, o1, n1), (_, _, o2, n2)) in enumerate(zip(ca, cb)):
        p1, p2 = o1.double() / n1, o2.double() / n2
        pooled = (o1 + o2).double() / (n1 + n2)
        se = torch.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        z = torch.where(se > 0, (p1 - p2).abs() / se.clamp_min(1e-300), torch.where(p1 == p2, 0.0, math.inf))
        for bit in torch.nonzero(z > Z_FLAG).flatten().tolist():
            flagged.append((tag, i, bit, float(z[bit])))
    return flagged


def view_layout(s, party: str) -> list[tuple[str, str, tuple]]:
    """(tag, record kind, shape) of each value ``party`` learned, in order, as the communicator recorded it."""
    return [(r.tag, r.kind, shape) for r in s.comm.records if party in r.to for shape in r.shapes]


def split_view(s, party: str) -> tuple[list, list]:
    """``party``'s view split into (masked openings, reveals), after checking it matches the records."""
    view, layout = s.comm.views[party], view_layout(s, party)
    assert [(t, tuple(v.shape)) for t, v in view] == [(t, shape) for t, _, shape in layout]
    masked = [(t, v) for (t, v), (_, kind, _) in zip(view, layout) if kind == "masked"]
    revealed = [(t, v) for (t, v), (_, kind, _) in zip(view, layout) if kind == "reveal"]
    return masked, revealed


def _chi2_z(counts: torch.Tensor) -> float:
    """Wilson-Hilferty z-score of the chi-square statistic of ``counts`` against the uniform distribution."""
    k = counts.numel() - 1
    expected = counts.sum().item() / counts.numel()
    x = float(((counts.double() - expected) ** 2 / expected).sum())
    return ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))


def non_uniform_openings(values: list[tuple[str, torch.Tensor]]) -> list[tuple[str, int, str, float]]:
    """Masked openings that do not look uniform on their own: ``(tag, index, test, z)`` with z > Z_FLAG.

    An opening of ``w`` bits (64 for an arithmetic one, which then has negative words; otherwise the width of
    its largest value: 1 for a XOR-shared bit, log2(M) for argmax's count) must have each of its w bits set with
    frequency 1/2, and its top min(8, w) bits must be uniform over their 2^min(8, w) values (chi-square, when
    every value is expected at least 5 times). A hidden activation opened without its mask fails: its high
    bits are copies of the sign bit (top byte 0x00 or 0xFF), or one bit is constant (``z + 2^62``).
    """
    flagged = []
    for i, (tag, v) in enumerate(values):
        flat = v.reshape(-1).to(torch.int64)
        n = flat.numel()
        width = 64 if bool((flat < 0).any()) else max(1, int(flat.max()).bit_length())
        ones = ((flat.unsqueeze(1) >> torch.arange(width)) & 1).sum(0).double()
        z_bits = ((ones - n / 2).abs() / (math.sqrt(n) / 2)).max().item()
        if z_bits > Z_FLAG:
            flagged.append((tag, i, "bits", z_bits))
        top = min(8, width)
        if n >= 5 * (1 << top):
            counts = torch.bincount((flat >> (width - top)) & ((1 << top) - 1), minlength=1 << top)
            z_top = _chi2_z(counts)
            if z_top > Z_FLAG:
                flagged.append((tag, i, "top bits", z_top))
    return flagged


def mlp_params(s):
    g = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(16, 32, generator=g) / 6, torch.randn(16, generator=g)
    w2, b2 = torch.randn(10, 16, generator=g) / 4, torch.randn(10, generator=g)
    return [s.share(t, owner="alice") for t in (w1, b1, w2, b2)]


def inference(make_session, n, x, seed, cheat=None, reveal=False):
    """share -> linear -> relu -> linear -> argmax with views recorded; ``cheat(s, hidden)`` may add openings."""
    s = make_session(n, seed=seed, record_views=True)
    w1, b1, w2, b2 = mlp_params(s)
    X = s.share(x)
    h = F.linear(X, w1, b1)
    if cheat is not None:
        cheat(s, h)
    out = F.linear(h.relu(), w2, b2).argmax(-1)
    if reveal:
        out.reveal(to="alice")
    return s


X_ZERO = torch.zeros(128, 32)
X_WILD = torch.randn(128, 32, generator=torch.Generator().manual_seed(1)) * 100


# ---------------------------------------------------------------------------------------------- (a)
@N_PARTIES
def test_shares_of_one_secret_look_uniform(make_session, n):
    """2^16 copies of one secret (1.5) shared: each party's share words have every bit at frequency 1/2 +- 5 sigma,
    and their bytes pass a chi-square test (255 dof, mean 255, sd 22.6; 400 is ~6.4 sd)."""
    s = make_session(n, seed=31)
    N = 1 << 16
    shares = s.share(torch.full((N,), 1.5)).shares
    sigma = 0.5 / math.sqrt(N)
    for p in range(n):
        assert (bit_balance(shares[p]) - 0.5).abs().max().item() < 5 * sigma, f"party {p}"
        assert byte_chi2(shares[p]) < 400, f"party {p}"
    # any n - 1 parties together also learn nothing: the sum of their shares is uniform too
    partial = shares[1:].sum(0)
    assert (bit_balance(partial) - 0.5).abs().max().item() < 5 * sigma
    # two sharings of the same secret are unrelated
    again = s.share(torch.full((N,), 1.5)).shares
    assert not bool((again[0] == shares[0]).any())


@N_PARTIES
def test_share_distribution_does_not_depend_on_the_secret(make_session, n):
    s = make_session(n, seed=32)
    N = 1 << 15
    for secret in (torch.zeros(N), torch.full((N,), -32767.0), torch.randn(N) * 1000):
        sh = s.share(secret).shares
        for p in range(n):
            assert (bit_balance(sh[p]) - 0.5).abs().max().item() < 5 * 0.5 / math.sqrt(N)


# ---------------------------------------------------------------------------------------------- (b)
@N_PARTIES
def test_views_do_not_depend_on_the_input(make_session, n):
    runs = [inference(make_session, n, x, seed) for x, seed in ((X_ZERO, 101), (X_WILD, 202))]
    for party in runs[0].parties:
        va, vb = runs[0].comm.views[party], runs[1].comm.views[party]
        assert len(va) > 10  # share, Beaver, relu (mask open, 2 AND levels, daBit), argmax, ...
        assert sum(v.numel() for _, v in va) > 5000
        assert view_differences(va, vb) == [], party


# ---------------------------------------------------------------------------------------------- (c)
@N_PARTIES
def test_only_the_final_argmax_is_revealed(make_session, n):
    s = inference(make_session, n, X_WILD, 7, reveal=True)
    assert [(r.name, r.shape, r.to) for r in s.ledger] == [("value", (128,), ("alice",))]
    # every reveal the communicator performed is a ledgered one (same shape and receivers), and nothing else
    reveals = [(r.tag, r.shapes, r.to) for r in s.comm.records if r.kind == "reveal"]
    assert reveals == [("reveal", (r.shape,), r.to) for r in s.ledger]
    # the other openings come from the protocols of this computation, and nothing else
    assert {r.tag for r in s.comm.records if r.kind == "masked"} == {"share", "beaver_linear", "relu", "argmax"}
    for party in s.parties:
        masked, revealed = split_view(s, party)
        assert len(masked) > 10  # share, Beaver, relu (opening, 2 AND levels, daBit), argmax, ...
        # every value a party learned other than the ledgered reveal is uniformly masked
        assert non_uniform_openings(masked) == [], party
        # the revealed argmax is in alice's view only
        assert [(t, tuple(v.shape)) for t, v in revealed] == ([("reveal", (128,))] if party == "alice" else [])


# ---------------------------------------------------------------------------------------------- (d)
def test_local_reconstruct_is_a_protocol_violation(make_session):
    s = make_session(2, seed=8)
    x = s.share(torch.randn(3, 4))

    def cheating_relu(sess, shares):  # "just compute it in the clear"
        plain = reconstruct(shares)
        return sess.share(sess.encoder.decode(plain).relu())

    with pytest.raises(ProtocolViolation, match="outside the communicator"):
        cheating_relu(s, x.shares)
    with pytest.raises(ProtocolViolation):
        reconstruct(x.shares, kind="xor")
    with pytest.raises(ProtocolViolation):
        reconstruct((x * x).shares)
    # the communicator itself may combine shares (inside open), and then the guard is back on
    (opened,) = s.comm.open([(x.shares + 1, "arith", 64)], tag="ok")
    with pytest.raises(ProtocolViolation):
        reconstruct(x.shares)


@N_PARTIES
def test_unmasked_opening_is_detected_by_the_view_check(make_session, n):
    def cheat(sess, hidden):  # opens the hidden activation itself, not a masked value
        sess.comm.open([(hidden.shares, "arith", 64)], tag="cheat")

    runs = [inference(make_session, n, x, seed, cheat=cheat) for x, seed in ((X_ZERO, 101), (X_WILD, 202))]
    for party in runs[0].parties:
        flagged = view_differences(runs[0].comm.views[party], runs[1].comm.views[party])
        assert flagged, party
        assert {tag for tag, _, _, _ in flagged} == {"cheat"}
        # the uniformity check of (c) flags it too, in a single run, for either input
        for s in runs:
            masked, _ = split_view(s, party)
            assert {tag for tag, _, _, _ in non_uniform_openings(masked)} == {"cheat"}, party


@N_PARTIES
def test_weakly_masked_opening_is_detected(make_session, n):
    """Masking with too little randomness (a 20-bit mask on a 2f-bit product) leaks the high bits."""
    def cheat(sess, hidden):
        g = torch.Generator().manual_seed(0)
        mask = torch.randint(0, 1 << 20, hidden.shares.shape[1:], generator=g)
        sh = hidden.shares.clone()
        sh[0] += mask
        sess.comm.open([(sh, "arith", 64)], tag="weak")

    runs = [inference(make_session, n, x, seed, cheat=cheat) for x, seed in ((X_ZERO, 101), (X_WILD, 202))]
    flagged = view_differences(runs[0].comm.views["bob"], runs[1].comm.views["bob"])
    assert {tag for tag, _, _, _ in flagged} == {"weak"}
    for s in runs:
        masked, _ = split_view(s, "bob")
        assert {tag for tag, _, _, _ in non_uniform_openings(masked)} == {"weak"}
