"""Probabilistic truncation (Escudero et al. 2020, dealer-assisted): the protocol called directly on raw shares,
and the lazy truncation of products through the ShareTensor ops (at the end of the file).

Claim under test (protocols/truncation.py): for ``|z| < 2^62`` the result is ``floor(z / 2^m)`` or that plus one
(never a wrap-around error), for any number of parties; and the +1 happens with probability
``(z mod 2^m) / 2^m`` (r is uniform), so the result is an unbiased stochastic rounding of ``z / 2^m``.
"""
from __future__ import annotations

import pytest
import torch

from lightning_smpc.mpc.protocols import reveal, truncate

pytestmark = pytest.mark.usefixtures("torch_single_thread")

LIMIT = 1 << 62


def shares_of(z: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Additive shares of the int64 ring elements ``z`` (parties 1..n-1 uniform in Z_2^64)."""
    others = torch.randint(-(2**63), 2**63 - 1, (n - 1,) + tuple(z.shape), generator=gen, dtype=torch.int64)
    return torch.cat([(z - others.sum(0)).unsqueeze(0), others])


def edge_and_uniform_values(gen: torch.Generator, n_uniform: int, m: int) -> torch.Tensor:
    """Uniform values in (-2^62, 2^62), plus the edges: +-(2^62 - k), tiny values, multiples of 2^m and +-1."""
    uni = torch.randint(-LIMIT + 1, LIMIT, (n_uniform,), generator=gen, dtype=torch.int64)
    k = torch.arange(0, 4096, dtype=torch.int64)
    near_top, near_bottom = LIMIT - 1 - k, -LIMIT + 1 + k
    small = torch.arange(-4096, 4096, dtype=torch.int64)
    mult = torch.randint(-(LIMIT >> m) + 1, LIMIT >> m, (4096,), generator=gen, dtype=torch.int64) << m
    mult = mult.clamp(-LIMIT + 2, LIMIT - 2)
    return torch.cat([uni, near_top, near_bottom, small, mult, mult + 1, mult - 1,
                      torch.tensor([0, 1, -1, LIMIT - 1, -LIMIT + 1])])




def run(session, z: torch.Tensor, m: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(99)
    out = truncate(session, shares_of(z, session.n_parties, gen), m)
    return reveal(session, out, session.parties)


@pytest.mark.parametrize("n", [2, 3])
def test_million_values_error_in_0_1(make_session, n):
    """>= 2^20 values at m = 16 (the default precision): error vs floor in {0, 1} LSB, no catastrophic error;
    the mean error vs the exact z / 2^m is 0 (unbiased)."""
    s = make_session(n, seed=2024 + n)
    gen = torch.Generator().manual_seed(n)
    m = 16
    z = edge_and_uniform_values(gen, 1 << 20, m)
    assert z.numel() >= 10**6
    assert int(z.abs().max()) < LIMIT
    got = run(s, z, m)
    err = got - (z >> m)  # arithmetic shift = floor
    assert int(err.min()) >= 0 and int(err.max()) <= 1, "catastrophic truncation error"
    # +1 with probability frac = (z mod 2^m) / 2^m: the mean of err - frac is 0 (sd of the mean <= 0.5/sqrt(N))
    frac = (z & ((1 << m) - 1)).double() / 2**m
    bias = (err.double() - frac).mean().item()
    assert abs(bias) < 5 * 0.5 / z.numel() ** 0.5
    # exact multiples of 2^m are never rounded up
    exact = (z & ((1 << m) - 1)) == 0
    assert int(err[exact].max()) == 0
    # one round, 8 bytes per element to each other party
    st = s.comm.stats_by_tag()["trunc"]
    assert st["rounds"] == 1
    assert st["parties"][s.parties[0]]["bytes_sent"] == (n - 1) * 8 * z.numel()


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("m", [1, 8, 13, 32, 40, 61])
def test_other_shift_amounts(make_session, n, m):
    s = make_session(n, seed=m)
    gen = torch.Generator().manual_seed(1000 + m)
    z = edge_and_uniform_values(gen, 1 << 15, m)
    err = run(s, z, m) - (z >> m)
    assert int(err.min()) >= 0 and int(err.max()) <= 1


@pytest.mark.parametrize("n", [2, 3])
def test_probability_of_rounding_up(make_session, n):
    """z = k * 2^m + 2^m / 4: rounded up with probability 1/4 (binomial, 5 sigma)."""
    s = make_session(n, seed=7)
    m, N = 16, 1 << 16
    gen = torch.Generator().manual_seed(5)
    z = (torch.randint(-(1 << 40), 1 << 40, (N,), generator=gen) << m) + (1 << (m - 2))
    up = (run(s, z, m) - (z >> m)).double().mean().item()
    assert abs(up - 0.25) < 5 * (0.25 * 0.75 / N) ** 0.5


def test_out_of_range_inputs_do_break(make_session):
    """The |z| < 2^62 precondition is real: values in [2^62, 2^63) are sometimes truncated catastrophically."""
    s = make_session(2, seed=3)
    gen = torch.Generator().manual_seed(8)
    z = torch.randint(LIMIT, 2**63 - 1, (1 << 12,), generator=gen, dtype=torch.int64)
    err = run(s, z, 16) - (z >> 16)
    assert bool(((err < 0) | (err > 1)).any())


# ---------------------------------------------------------------------------------------------- the lazy path
# A product of two shared values carries 2 * precision_bits fractional bits and is NOT truncated where it is
# formed: the truncation protocol runs when the value is revealed or enters another product (``ops._fixed``),
# or is fused into the first opening of a ReLU/argmax/comparison. These tests go through the ShareTensor ops
# only; the plaintext oracle is the exact ring product of the encoded inputs (z = enc(x) * enc(y)).


def lazy_inputs(s, n_values: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_values, generator=g, dtype=torch.float64) * 50
    y = torch.randn(n_values, generator=g, dtype=torch.float64)
    z = s.encoder.encode(x) * s.encoder.encode(y)  # exact: |z| < 2^42
    return s.share(x), s.share(y), z


def trunc_rounds(s) -> int:
    return s.comm.stats_by_tag().get("trunc", {"rounds": 0})["rounds"]


def lsb(revealed: torch.Tensor) -> torch.Tensor:
    """A revealed value (float64, precision_bits = 16) as an integer number of LSBs; it must be one exactly."""
    scaled = revealed * 2**16
    assert torch.equal(scaled, scaled.round()), "the revealed value is not on the 2^-16 grid (not truncated)"
    return scaled.to(torch.int64)


def assert_stochastic_rounding(err: torch.Tensor, z: torch.Tensor, m: int = 16) -> None:
    """err = result - floor(z / 2^m) is in {0, 1}, both occur, and is +1 with probability frac(z / 2^m)."""
    assert set(err.unique().tolist()) == {0, 1}, err.unique()
    frac = (z & ((1 << m) - 1)).double() / 2**m
    assert abs((err.double() - frac).mean().item()) < 5 * 0.5 / err.numel() ** 0.5


@pytest.mark.parametrize("n", [2, 3])
def test_product_is_truncated_lazily_at_reveal(make_session, n):
    s = make_session(n, seed=11)
    X, Y, z = lazy_inputs(s, 1 << 14, seed=4)
    prod = X * Y
    assert prod.frac_bits == 32  # the product carries 2f fractional bits ...
    assert trunc_rounds(s) == 0 and "trunc" not in s.op_seconds  # ... and was not truncated yet
    got = lsb(prod.reveal())
    assert trunc_rounds(s) == 1 and "trunc" in s.op_seconds  # the reveal ran the truncation protocol once
    assert_stochastic_rounding(got - (z >> 16), z)


@pytest.mark.parametrize("n", [2, 3])
def test_product_of_a_product_truncates_first(make_session, n):
    """(x * y) * k: the pending product is truncated (one "trunc" round) before the Beaver opening, so the
    result carries 2f fractional bits, not 3f. With integer k (encoded exactly as k * 2^16) the final reveal
    of t * k * 2^16 is exact, so it shows the truncated t itself: t - floor(z / 2^16) in {0, 1}."""
    s = make_session(n, seed=12)
    X, Y, z = lazy_inputs(s, 1 << 14, seed=5)
    g = torch.Generator().manual_seed(6)
    k = torch.randint(1, 4, z.shape, generator=g) * (torch.randint(0, 2, z.shape, generator=g) * 2 - 1)
    K = s.share(k.double())
    prod = X * Y
    tags_before = {t: v["rounds"] for t, v in s.comm.stats_by_tag().items()}
    prod2 = prod * K
    moved = {t: v["rounds"] - tags_before.get(t, 0) for t, v in s.comm.stats_by_tag().items()}
    assert {t: r for t, r in moved.items() if r} == {"trunc": 1, "beaver_mul": 1}
    assert prod2.frac_bits == 32
    got = lsb(prod2.reveal())
    assert bool((got % k == 0).all())
    assert_stochastic_rounding(got // k - (z >> 16), z)


@pytest.mark.parametrize("n", [2, 3])
def test_relu_fuses_the_truncation(make_session, n):
    """relu(x * y): no separate "trunc" round (fused into the ReLU's opening), the result has precision_bits
    fractional bits and equals relu(t) for a t with t - floor(z / 2^16) in {0, 1}."""
    s = make_session(n, seed=13)
    X, Y, z = lazy_inputs(s, 1 << 14, seed=7)
    r0 = s.comm.rounds
    out = (X * Y).relu()
    assert out.frac_bits == 16
    assert trunc_rounds(s) == 0 and s.comm.rounds - r0 == 5  # the ReLU's 5 rounds (4-bit digits), nothing else
    got = lsb(out.reveal())
    floor = z >> 16
    err = got - floor.clamp_min(0)
    assert set(err.unique().tolist()) == {0, 1}
    assert bool((got[floor < -1] == 0).all())  # t <= floor + 1 < 0 there


@pytest.mark.parametrize("n", [2, 3])
def test_argmax_fuses_the_truncation(make_session, n):
    """argmax of a pending product: no "trunc" round; agrees with the argmax of floor(z / 2^16) wherever the
    top two differ by more than the 1 LSB that the truncation may add."""
    s = make_session(n, seed=14)
    X, Y, z = lazy_inputs(s, 4000, seed=8)
    logits = (X * Y).reshape(400, 10)
    got = logits.argmax(-1).reveal()
    assert trunc_rounds(s) == 0
    floor = (z >> 16).reshape(400, 10)
    top2 = floor.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1
    assert int(clear.sum()) > 350
    assert torch.equal(got.to(torch.int64)[clear], floor.argmax(-1)[clear])
