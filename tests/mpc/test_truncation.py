"""Probabilistic truncation (Escudero et al. 2020, dealer-assisted), called directly on raw shares.

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


def test_via_share_tensor_product(make_session):
    """The lazy truncation of a product (ShareTensor API) agrees: reveal(trunc(x*y)) - floor(x~ y~ 2^16) in {0, 1}."""
    s = make_session(3, seed=11)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(5000, generator=g, dtype=torch.float64) * 50, torch.randn(5000, generator=g, dtype=torch.float64)
    prod = s.share(x) * s.share(y)  # 32 fractional bits, not yet truncated
    z = prod.shares.sum(0)  # test oracle only: the ring value of the product (never done by protocols)
    out = truncate(s, prod.shares, 16)
    err = reveal(s, out, s.parties) - (z >> 16)
    assert int(err.min()) >= 0 and int(err.max()) <= 1
