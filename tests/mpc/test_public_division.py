"""Division by public values (``x / d``, ``mean``, ``avg_pool2d``) against float64, with the stated error bound.

Defect guarded (issue 8.4): the reciprocal was encoded with ``precision_bits`` bits, so ``1000 / 200000`` gave 0,
``1000 / 50000`` gave 0.0153 and the mean of 1000 sevens 7.0496. ``ops._divide_public`` states the bound
``|q_hat - q| <= (2 + |q| * 2^(precision_bits - s)) * 2^-precision_bits`` with ``s = 61 - compare_bits``; the
input's own encoding (half an LSB, divided by ``d``) comes on top.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def bound(q: torch.Tensor, d, f: int = 16, compare_bits: int = 32) -> torch.Tensor:
    """The stated bound plus the input's own encoding error (half an LSB, scaled by 1/|d|)."""
    s = 61 - compare_bits
    encoding = 0.5 / torch.as_tensor(d, dtype=torch.float64).abs()
    return (2 + encoding + q.abs() * 2.0 ** (f - s)) / 2.0**f


divisors = st.one_of(st.integers(1, 10**6), st.integers(-(10**6), -1), st.floats(1e-3, 1e6))


@settings(max_examples=60, deadline=None)
@given(x=st.lists(st.floats(-32767, 32767), min_size=1, max_size=6), d=divisors)
def test_division_by_a_public_number_matches_float64(make_session, x, d) -> None:
    s = make_session(2, seed=0)
    plain = torch.tensor(x, dtype=torch.float64)
    q = plain / d
    if bool((q.abs() >= 2**15).any()):  # the quotient must be in the comparison range (documented)
        return
    got = (s.share(plain) / d).reveal()
    assert bool(((got - q).abs() <= bound(q, d)).all()), f"{got} vs {q} for d={d}"


@settings(max_examples=20, deadline=None)
@given(n=st.sampled_from([2, 3]), d=st.lists(st.integers(1, 10**6), min_size=3, max_size=3))
def test_division_by_a_public_tensor_and_after_a_product(make_session, n, d) -> None:
    s = make_session(n, seed=1)
    x = torch.tensor([[1000.0, -7.5, 0.001], [3.25, 32000.0, -2.0]], dtype=torch.float64)
    dv = torch.tensor(d, dtype=torch.float64)
    got = (s.share(x) / dv).reveal()
    assert bool(((got - x / dv).abs() <= bound(x / dv, dv)).all())
    sx = s.share(x / 200)
    prod = sx * sx  # a pending product (2 * precision_bits fractional bits) divided directly
    q = (x / 200) ** 2 / dv
    assert bool(((( prod / dv).reveal() - q).abs() <= bound(q, dv) + 2**-15).all())


def test_reported_cases(make_session) -> None:
    s = make_session(2, seed=0)
    x = s.share(torch.tensor([1000.0]))
    assert abs(float((x / 200000).reveal()) - 0.005) < 2**-15
    assert abs(float((x / 50000).reveal()) - 0.02) < 2**-15
    assert abs(float(s.share(torch.full((1000,), 7.0)).mean().reveal()) - 7.0) < 2**-15
    counts = s.share(torch.tensor([3.0, 32_767.0]), frac_bits=0)  # integer values: divided at full precision
    assert torch.allclose(counts.div(1_000_000).reveal(), torch.tensor([3e-6, 0.032767], dtype=torch.float64), atol=2**-15)


def test_mean_and_avg_pool_use_the_precise_division(make_session) -> None:
    s = make_session(3, seed=2)
    img = torch.linspace(-3, 3, 2 * 3 * 7 * 7, dtype=torch.float64).reshape(2, 3, 7, 7)
    simg = s.share(img)
    assert torch.allclose(F.avg_pool2d(simg, 3).reveal(), F.avg_pool2d(img, 3), atol=4 * 2**-16)
    assert torch.allclose(simg.mean((2, 3)).reveal(), img.mean((2, 3)), atol=4 * 2**-16)


def test_bad_divisors_are_refused(make_session) -> None:
    s = make_session(2, seed=0)
    x = s.share(torch.ones(3))
    with pytest.raises(ZeroDivisionError):
        x / 0
    with pytest.raises(ZeroDivisionError):
        x / torch.tensor([1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        x / float("nan")
    with pytest.raises(Exception, match="rounding_mode"):
        torch.div(x, 2, rounding_mode="floor")


@settings(max_examples=30, deadline=None)
@given(x=st.lists(st.floats(-20000, 20000), min_size=2, max_size=2), d=st.lists(divisors, min_size=2, max_size=2))
@example(x=[3000.0, 20000.0], d=[1, 178927.149])
def test_mixed_magnitude_tensor_divisors_keep_the_bound(make_session, x, d) -> None:
    """Every element keeps the bound, whatever the other elements' divisors (the review found 5492 LSB for
    [1, 178927] when the shift came from the smallest divisor only)."""
    s = make_session(2, seed=0)
    plain, dv = torch.tensor(x, dtype=torch.float64), torch.tensor(d, dtype=torch.float64)
    q = plain / dv
    if bool((q.abs() >= 2**15).any()):
        return
    got = (s.share(plain) / dv).reveal()
    assert bool(((got - q).abs() <= bound(q, dv)).all()), f"{got} vs {q} for d={d}"


def test_mixed_divisors_after_a_product(make_session) -> None:
    s = make_session(3, seed=0)
    a = s.share(torch.tensor([1.0, 23170.0]))
    q = torch.tensor([1.0, 23170.0 ** 2 / 30000], dtype=torch.float64)
    assert bool((((a * a) / torch.tensor([1.0, 30000.0])).reveal() - q).abs().le(bound(q, 1.0) + 2**-15).all())


def test_divisors_outside_the_precision_are_refused(make_session) -> None:
    x = make_session(2, seed=0).share(torch.ones(2))
    for d in (1e-13, 2**63, 2.0**41):
        with pytest.raises(ValueError, match="Divisor"):
            x / d
    with pytest.raises(TypeError, match="real"):
        x.div(torch.tensor([2 + 5j, 1 + 0j]))
