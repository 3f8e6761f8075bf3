"""Fixed-point encoding: rounding, two's complement in int64, range limits, bad inputs."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_smpc.mpc import EncodingRangeError, FixedPointEncoder, NonFiniteInputError

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize("f", [8, 12, 16, 20])
def test_roundtrip_error_is_at_most_half_an_lsb(f):
    enc = FixedPointEncoder(precision_bits=f)
    g = torch.Generator().manual_seed(f)
    x = (torch.rand(100_000, generator=g, dtype=torch.float64) * 2 - 1) * (enc.max_magnitude * 0.999)
    v = enc.encode(x)
    assert v.dtype == torch.int64
    err = (enc.decode(v) - x).abs().max().item()
    # round-to-nearest: |decode(encode(x)) - x| <= 2^-(f+1) (plus float64 rounding of x * 2^f, << 1 ulp here)
    assert err <= 2.0 ** -(f + 1) * (1 + 1e-9)


@given(st.integers(min_value=-(2**31) + 1, max_value=2**31 - 1))
@settings(max_examples=50, deadline=None)
def test_grid_values_are_exact(k):
    enc = FixedPointEncoder(precision_bits=16)
    x = torch.tensor([k / 2**16], dtype=torch.float64)
    assert enc.encode(x).item() == k
    assert enc.decode(enc.encode(x)).item() == k / 2**16


def test_examples_and_twos_complement():
    enc = FixedPointEncoder(precision_bits=16)
    assert enc.encode(torch.tensor([1.5, -0.25])).tolist() == [98304, -16384]
    assert enc.decode(torch.tensor([98304, -16384])).tolist() == [1.5, -0.25]
    # negative values are plain int64 two's complement: adding the encodings of x and -x wraps to 0
    v = enc.encode(torch.tensor([3.25, -3.25]))
    assert v.sum().item() == 0
    # round half to even at the LSB
    half = 2.0**-17
    assert enc.encode(torch.tensor([half, 3 * half, -half, -3 * half])).tolist() == [0, 2, 0, -2]


def test_integer_inputs_and_frac_bits():
    enc = FixedPointEncoder(precision_bits=16)
    assert enc.encode(torch.tensor([3, -7])).tolist() == [3 * 2**16, -7 * 2**16]
    assert enc.encode(torch.tensor([3, -7]), frac_bits=0).tolist() == [3, -7]
    assert enc.encode(2.5).item() == 5 * 2**15
    assert enc.decode(torch.tensor([5]), frac_bits=0).item() == 5.0
    assert enc.decode(torch.tensor([2**32]), frac_bits=32).item() == 1.0


@pytest.mark.parametrize("f,cb", [(16, 32), (8, 32), (16, 40), (12, 24)])
def test_range_limit_is_exclusive(f, cb):
    enc = FixedPointEncoder(precision_bits=f, compare_bits=cb)
    limit = 2.0 ** (cb - 1 - f)  # differences of two inputs stay below 2^cb LSB (the comparison range)
    assert enc.max_magnitude == limit
    inside = torch.tensor([limit - 2.0**-f, -(limit - 2.0**-f)], dtype=torch.float64)
    assert enc.encode(inside).abs().max().item() == 2 ** (cb - 1) - 1
    for bad in (limit, -limit, limit * 4):
        with pytest.raises(EncodingRangeError) as ei:
            enc.encode(torch.tensor([0.0, bad], dtype=torch.float64))
        msg = str(ei.value)
        assert f"{limit:g}" in msg and "1 value(s)" in msg
        assert isinstance(ei.value, ValueError)


def test_range_limit_with_integer_frac_bits():
    enc = FixedPointEncoder(precision_bits=16, compare_bits=32)
    # the same value range at every frac_bits: integers meet fixed-point values (lifted to precision_bits)
    assert enc.encode(torch.tensor([2.0**15 - 1], dtype=torch.float64), frac_bits=0).item() == 2**15 - 1
    with pytest.raises(EncodingRangeError):
        enc.encode(torch.tensor([2.0**15]), frac_bits=0)
    with pytest.raises(ValueError, match="frac_bits"):
        enc.encode(torch.tensor([1.0]), frac_bits=17)


def test_non_finite_counts_in_message():
    enc = FixedPointEncoder()
    x = torch.tensor([1.0, math.nan, math.inf, -math.inf, math.nan, 0.0])
    with pytest.raises(NonFiniteInputError) as ei:
        enc.encode(x)
    msg = str(ei.value)
    assert "2 NaN" in msg and "2 inf" in msg and "out of 6" in msg
    assert isinstance(ei.value, ValueError)


def test_empty_tensor():
    enc = FixedPointEncoder()
    assert enc.encode(torch.zeros(0)).shape == (0,)


@pytest.mark.parametrize("kwargs", [
    dict(precision_bits=0), dict(precision_bits=31), dict(compare_bits=30), dict(compare_bits=64),
    dict(precision_bits=16, compare_bits=16), dict(precision_bits=30, compare_bits=40),
])
def test_invalid_configuration(kwargs):
    with pytest.raises(ValueError):
        FixedPointEncoder(**kwargs)


# ---------------------------------------------------------------------------------------------- issue 8.5, 8.6, 8.8
def test_range_is_checked_on_the_rounded_integers() -> None:
    """32768 - 2**-17 is below the float limit but rounds onto 2**31 (out of range): refused."""
    enc = FixedPointEncoder(16, 32)
    with pytest.raises(EncodingRangeError):
        enc.encode(torch.tensor([32768 - 2**-17], dtype=torch.float64))
    assert int(enc.encode(torch.tensor([32768 - 2**-16], dtype=torch.float64))) == 2**31 - 1  # the largest accepted


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_values_are_refused(make_session, dtype) -> None:
    s = make_session(2, seed=0)
    z = torch.tensor([1.0 + 2.0j], dtype=dtype)
    with pytest.raises(TypeError, match="real"):
        s.share(z)
    x = s.share(torch.ones(1))
    with pytest.raises(TypeError):  # torch refuses before dispatch, or the encoder does
        x + z
    with pytest.raises(TypeError):
        x * z
    assert s.ledger == [] and s.comm.stats()["alice"]["bytes_sent"] == 0


@pytest.mark.parametrize("op", [
    lambda x: x + 2**50, lambda x: 2**50 - x, lambda x: x * 2**50, lambda x: x >= 2**40,
    lambda x: x + torch.tensor([2**50]), lambda x: x * torch.tensor([2**40]), lambda x: x + 40000.0,
])
def test_public_operands_are_range_checked_like_inputs(make_session, op) -> None:
    """``x + 2**50`` and friends wrapped around the ring silently (the float versions raised)."""
    s = make_session(2, seed=0)
    with pytest.raises(EncodingRangeError):
        op(s.share(torch.tensor([1.0, -2.0])))


def test_public_integers_in_range_still_work(make_session) -> None:
    s = make_session(3, seed=0)
    x = s.share(torch.tensor([1.5, -2.0]))
    assert torch.equal((x + 3).reveal(), torch.tensor([4.5, 1.0], dtype=torch.float64))
    assert torch.equal((x * torch.tensor([2, -3])).reveal(), torch.tensor([3.0, 6.0], dtype=torch.float64))
    labels = s.share(torch.tensor([7.0]), frac_bits=0)
    assert torch.equal((labels + 32000).reveal(), torch.tensor([32007.0], dtype=torch.float64))
    with pytest.raises(EncodingRangeError):  # integers have the same value range (they meet fixed-point values)
        labels + 2**30
    with pytest.raises(EncodingRangeError):
        s.share(torch.tensor([2.0**30]), frac_bits=0)
