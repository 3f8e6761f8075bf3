"""Comparison protocols (sign bit, ReLU, argmax/max) are exact at the edges: 0, +-1 and +-2 LSB, ties, and the
range limits +-(2^compare_bits - 1) LSB; argmax ties go to the first index, as torch.argmax. Every test runs
with both comparison digit sizes (8-bit digits: 256-bit tables; 4-bit digits: 16-bit tables, one more carry
level)."""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_smpc.mpc.protocols import compare_bit

pytestmark = pytest.mark.usefixtures("torch_single_thread")

N_PARTIES = pytest.mark.parametrize("n", [2, 3], ids=["2pc", "3pc"])
DIGITS = pytest.mark.parametrize("d", [8, 4], ids=["digits8", "digits4"])
FB = 16


def edge_lsbs(cb: int) -> list[int]:
    """Edge values in LSB units for a comparison range of ``cb`` bits."""
    top = (1 << cb) - 1
    vals = [0, 1, -1, 2, -2, 3, -3, 255, 256, -256, 257, 65535, 65536, -65536, 1 << (cb - 1), -(1 << (cb - 1)),
            top, -top, top - 1, -(top - 1), top - 255, -(top - 256)]
    return sorted(set(vals))


def as_real(lsbs, fb: int = FB) -> torch.Tensor:
    return torch.as_tensor(lsbs).to(torch.float64) / 2**fb  # exact: |k| < 2^53


def share_wide(s, lsbs, fb: int = FB):
    """Shares of values up to the comparison range (2^cb LSB), beyond what `share` accepts for one input
    (2^(cb-1) LSB): the sum of three in-range inputs, computed on shares (exact, local)."""
    k = torch.as_tensor(lsbs, dtype=torch.int64)
    parts = (k // 3, k // 3, k - 2 * (k // 3))
    total = s.share(as_real(parts[0], fb))
    for p in parts[1:]:
        total = total + s.share(as_real(p, fb))
    return total


@DIGITS
@N_PARTIES
@pytest.mark.parametrize("cb", [32, 24, 40, 20, 36])
def test_sign_relu_and_public_comparisons(make_session, n, cb, d):
    if cb % d:
        pytest.skip("the comparison range is a multiple of the digit size")
    s = make_session(n, seed=cb, compare_bits=cb, compare_digit_bits=d)
    k = torch.tensor(edge_lsbs(cb), dtype=torch.int64)
    x = as_real(k)
    X = share_wide(s, k)
    assert torch.equal(X.reveal(), x)
    # compare_bit directly on shares (mask-open mode) and through the operators
    bit = s.from_shares(compare_bit(s, X.shares), 0).reveal()
    assert torch.equal(bit, (k >= 0).double())
    assert torch.equal((X >= 0).reveal(), (x >= 0).double())
    assert torch.equal((X > 0).reveal(), (x > 0).double())
    assert torch.equal((X <= 0).reveal(), (x <= 0).double())
    assert torch.equal((X < 0).reveal(), (x < 0).double())
    assert torch.equal(X.relu().reveal(), x.relu())
    # truncation-fused mode: X * 1.0 carries 2f fractional bits (k * 2^32, an exact multiple of 2^16, so the
    # probabilistic truncation is exact here) and the comparison opens the truncation's value
    Y = X * 1.0
    assert Y.frac_bits == 2 * FB
    assert torch.equal((Y >= 0).reveal(), (x >= 0).double())
    assert torch.equal(Y.relu().reveal(), x.relu())
    assert torch.equal(s.from_shares(compare_bit(s, Y.shares, FB), 0).reveal(), (k >= 0).double())


@DIGITS
@N_PARTIES
def test_pairwise_comparisons_and_ties(make_session, n, d):
    """x >= y for every pair of edge values whose difference is in range (|x - y| < 2^32 LSB), ties included."""
    s = make_session(n, seed=5, compare_digit_bits=d)
    vals = edge_lsbs(32)
    pairs = [(a, b) for a, b in itertools.product(vals, vals) if abs(a - b) < (1 << 32)]
    a = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    assert bool((a == b).any())  # ties present
    A, B = share_wide(s, a), share_wide(s, b)
    assert torch.equal((A >= B).reveal(), (a >= b).double())
    assert torch.equal((A > B).reveal(), (a > b).double())
    assert torch.equal((A <= B).reveal(), (a <= b).double())
    assert torch.equal((A < B).reveal(), (a < b).double())
    # against public values (encoded on the same grid; public operands obey the input range 2^31 LSB)
    small = b.abs() < (1 << 31)
    A_small, b_small, a_small = A[small], b[small], a[small]
    assert torch.equal((A_small >= as_real(b_small)).reveal(), (a_small >= b_small).double())
    assert torch.equal((A_small < as_real(b_small)).reveal(), (a_small < b_small).double())


@DIGITS
@N_PARTIES
def test_one_lsb_apart(make_session, n, d):
    """Neighbouring grid values are distinguished everywhere in the range (random bases, +-1 and +-2 LSB)."""
    s = make_session(n, seed=17, compare_digit_bits=d)
    g = torch.Generator().manual_seed(3)
    base = torch.randint(-(1 << 31), 1 << 31, (2000,), generator=g)
    for d in (1, -1, 2, -2, 0):
        X, Y = share_wide(s, base + d), share_wide(s, base)
        assert torch.equal((X >= Y).reveal(), torch.full((2000,), float(d >= 0), dtype=torch.float64))
        assert torch.equal((X > Y).reveal(), torch.full((2000,), float(d > 0), dtype=torch.float64))


ARGMAX_ROWS = [
    [0, 0, 0],
    [5, 5],
    [1, 2, 2],
    [2, 1, 2],
    [-1, -1, -2],
    [-2, -1, -1, -1],
    [0, 1, 0, 1],
    [-1, 0, 1, -1, 1],
    [(1 << 32) - 1, 0, (1 << 32) - 1],
    [-((1 << 32) - 1), -((1 << 32) - 1), 0],
    [(1 << 32) - 1, (1 << 32) - 2, (1 << 32) - 1, 3],
    [-((1 << 32) - 1), -((1 << 32) - 2), -((1 << 32) - 2)],
    [7, 7, 7, 7, 7, 7, 7, 7, 7, 7],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    [1, 0, 0, 0, 0, 0, 0, 0, 0, 1],
]


@DIGITS
@N_PARTIES
@pytest.mark.parametrize("row", ARGMAX_ROWS, ids=lambda r: f"C{len(r)}")
def test_argmax_ties_first_index(make_session, n, row, d):
    """Within a row every pairwise difference is < 2^32 LSB (the comparison range)."""
    s = make_session(n, seed=len(row), compare_digit_bits=d)
    k = torch.tensor([row, [-v for v in row]], dtype=torch.int64)
    x = as_real(k)
    X = share_wide(s, k)
    assert torch.equal(X.argmax(-1).reveal(), x.argmax(-1).double())
    values, idx = X.max(-1)
    assert torch.equal(values.reveal(), x.max(-1).values)
    assert torch.equal(idx.reveal(), x.argmax(-1).double())
    # the same along dim 0 (moved to the last axis internally)
    assert torch.equal(X.t().argmax(0).reveal(), x.t().argmax(0).double())
    # fused-truncation mode (2f fractional bits, exact multiples of 2^16)
    assert torch.equal((X * 1.0).argmax(-1).reveal(), x.argmax(-1).double())


# values concentrated where digit carries and borrows happen: the range limits, digit boundaries (every
# multiple of 2^4 and 2^8 +- a few LSB), powers of two, and uniform values
_TOP = (1 << 32) - 1
_near = st.builds(lambda base, k, e: max(-_TOP, min(_TOP, base * (1 << k) + e)),
                  st.integers(-(1 << 28), 1 << 28), st.sampled_from([0, 4, 8, 12, 16, 24]), st.integers(-3, 3))
_lsbs = st.one_of(st.integers(-_TOP, _TOP), _near, st.sampled_from([0, 1, -1, _TOP, -_TOP, _TOP - 1, -_TOP + 1]))


@settings(max_examples=25, deadline=None)
@given(st.lists(_lsbs, min_size=1, max_size=40), st.lists(st.lists(_lsbs, min_size=3, max_size=3), min_size=1, max_size=6),
       st.sampled_from([8, 4]), st.sampled_from([2, 3]), st.integers(0, 2**16))
def test_random_values_exact_for_both_digit_sizes(make_session, lsbs, rows, d, n, seed):
    """Sign, ReLU (plain and truncation-fused) and argmax/max are exact on random values up to the range limit
    +-(2^32 - 1) LSB; argmax rows keep every pairwise difference in range."""
    s = make_session(n, seed=seed, compare_digit_bits=d)
    k = torch.tensor(lsbs, dtype=torch.int64)
    x = as_real(k)
    X = share_wide(s, k)
    assert torch.equal(s.from_shares(compare_bit(s, X.shares), 0).reveal(), (k >= 0).double())
    assert torch.equal(X.relu().reveal(), x.relu())
    assert torch.equal((X * 1.0).relu().reveal(), x.relu())
    r = torch.tensor(rows, dtype=torch.int64)
    r = torch.where((r.max(-1, keepdim=True).values - r.min(-1, keepdim=True).values) > _TOP, r // 2, r)
    assert int((r.max(-1).values - r.min(-1).values).max()) <= _TOP
    R = share_wide(s, r)
    want = as_real(r)
    values, idx = R.max(-1)
    assert torch.equal(idx.reveal(), want.argmax(-1).double())
    assert torch.equal(values.reveal(), want.max(-1).values)
    assert torch.equal((R * 1.0).argmax(-1).reveal(), want.argmax(-1).double())
