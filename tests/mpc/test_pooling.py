"""Pooling and padding on shares against torch: max/avg pooling with padding, stride, dilation and ceil_mode,
``count_include_pad`` both ways and ``divisor_override``, adaptive average/max pooling (uneven and global windows),
``F.pad`` in every mode; 2 and 3 parties, both max-pooling protocols.

Defects guarded: padding winning a max (inputs are drawn negative as well, down to the bottom of the value range);
the wrong divisor for padded or ceil_mode windows; windows shifted by the padding or the dilation; a party axis
reached by the gather; a round count that grows with the window ("pairs" must stay at the argmax's 5 rounds).
Max pooling and padding are exact on the encoded values; average pooling is within the public division's bound.
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lightning_smpc.mpc import UnsupportedOpError, ops

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FB = 16
LSB = 2.0**-FB
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_PARTIES = pytest.mark.parametrize("n", [2, 3], ids=["2pc", "3pc"])
METHODS = pytest.mark.parametrize("method", ["pairs", "tree"])
seeds = st.integers(0, 2**31 - 1)


@contextlib.contextmanager
def maxpool_method(method: str):
    """Every window size uses ``method`` inside the block (the table is restored after)."""
    saved = ops.pooling.MAXPOOL_DEFAULT, dict(ops.MAXPOOL_METHOD)
    ops.pooling.MAXPOOL_DEFAULT = method
    ops.MAXPOOL_METHOD.clear()
    try:
        yield
    finally:
        ops.pooling.MAXPOOL_DEFAULT = saved[0]
        ops.MAXPOOL_METHOD.clear()
        ops.MAXPOOL_METHOD.update(saved[1])


def grid(seed: int, shape, scale: float, offset: float = 0.0) -> torch.Tensor:
    """float64 values on the 2^-16 grid (encoding is exact), some repeated (ties)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset
    x.view(-1)[-1] = x.view(-1)[0]
    return torch.round(x.clamp(-(2.0**15) + LSB, 2.0**15 - LSB) * 2**FB) / 2**FB  # share() accepts |x| < 2^15


def torch_or_none(fn, x):
    try:
        return fn(x)
    except RuntimeError:
        return None


@st.composite
def pool2d_args(draw, dilation: bool):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.sampled_from([None, 1, 2, 3, (1, 2), (2, 1)]))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 2))) if dilation else (1, 1)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    if draw(st.booleans()):
        shape = shape[1:]  # unbatched (C, H, W)
    return shape, k, stride, p, d, draw(st.booleans())


def value_offsets():
    # around 0, all negative (zero padding would win), at the bottom of the range (|x| < 2^15 is accepted)
    return st.sampled_from([0.0, -8.0, -32760.0])


@N_PARTIES
@METHODS
@given(args=pool2d_args(dilation=True), seed=seeds, sess_seed=seeds, offset=value_offsets())
@SETTINGS
def test_max_pool2d_matches_torch_and_padding_never_wins(make_session, n, method, args, seed, sess_seed, offset):
    with maxpool_method(method):
        shape, k, stride, p, d, ceil = args
        x = grid(seed, shape, 3.0, offset)
        fn = lambda t: F.max_pool2d(t, k, stride, p, d, ceil)  # noqa: E731
        want = torch_or_none(fn, x)
        assume(want is not None and bool(torch.isfinite(want).all()))  # torch refuses it, or a window is all padding
        s = make_session(n, seed=sess_seed)
        got = fn(s.share(x))
        assert got.shares.shape == (n,) + tuple(want.shape)
        assert torch.equal(got.reveal(), want)


@N_PARTIES
@METHODS
@given(args=pool2d_args(dilation=False), seed=seeds, sess_seed=seeds)
@SETTINGS
def test_max_pool2d_of_a_product_fuses_the_truncation(make_session, n, method, args, seed, sess_seed):
    with maxpool_method(method):
        shape, k, stride, p, _, ceil = args
        x, y = grid(seed, shape, 2.0, -1.0), grid(seed + 1, shape, 1.0)
        fn = lambda t: F.max_pool2d(t, k, stride, p, 1, ceil)  # noqa: E731
        want = torch_or_none(fn, x * y)
        assume(want is not None)
        s = make_session(n, seed=sess_seed)
        X, Y = s.share(x), s.share(y)
        got = fn(X * Y).reveal()
        # the product is exact at 32 fractional bits; each truncation adds an error in [0, 1] LSB: "pairs" truncates
        # once (fused into the comparison); "tree" truncates each level's difference and keeps the maximum at 32
        # fractional bits (one more truncation when it is revealed)
        truncations = 1 if method == "pairs" else math.ceil(math.log2(k[0] * k[1])) + 1
        assert (got - want).abs().max() <= truncations * LSB


@N_PARTIES
@given(args=pool2d_args(dilation=False), seed=seeds, sess_seed=seeds, cip=st.booleans(),
       override=st.sampled_from([None, None, 1, 3, 7]), offset=value_offsets())
@SETTINGS
def test_avg_pool2d_padding_and_divisors_match_torch(make_session, n, args, seed, sess_seed, cip, override, offset):
    shape, k, stride, p, _, ceil = args
    x = grid(seed, shape, 3.0, offset / 8)
    fn = lambda t: F.avg_pool2d(t, k, stride, p, ceil, cip, override)  # noqa: E731
    want = torch_or_none(fn, x)
    assume(want is not None)
    s = make_session(n, seed=sess_seed)
    got = fn(s.share(x))
    assert got.shares.shape == (n,) + tuple(want.shape)
    # public division: |err| <= 2 + |q| 2^(16 - 29) LSB (README), the window sum being exact
    bound = LSB * (2 + want.abs() * 2.0**-13) + 1e-12
    assert bool(((got.reveal() - want).abs() <= bound).all()), (got.reveal() - want).abs().max()


@N_PARTIES
@METHODS
@given(seed=seeds, sess_seed=seeds, h=st.integers(1, 9), w=st.integers(1, 9),
       out=st.tuples(st.sampled_from([None, 1, 2, 3, 4, 5]), st.sampled_from([None, 1, 2, 3, 4, 5])),
       offset=value_offsets())
@SETTINGS
def test_adaptive_pooling_matches_torch(make_session, n, method, seed, sess_seed, h, w, out, offset):
    with maxpool_method(method):
        x = grid(seed, (2, 2, h, w), 3.0, offset)
        s = make_session(n, seed=sess_seed)
        X = s.share(x)
        want_max = F.adaptive_max_pool2d(x, out)
        assert torch.equal(F.adaptive_max_pool2d(X, out).reveal(), want_max)
        xa = x / 8
        want_avg = F.adaptive_avg_pool2d(xa, out)
        got_avg = F.adaptive_avg_pool2d(s.share(xa), out).reveal()
        assert got_avg.shape == want_avg.shape
        assert bool(((got_avg - want_avg).abs() <= LSB * (2 + want_avg.abs() * 2.0**-13) + 1e-12).all())


def test_global_pooling_equals_mean(make_session):
    s = make_session(2, seed=3)
    x = grid(1, (2, 3, 5, 7), 2.0)
    X = s.share(x)
    for got in (F.adaptive_avg_pool2d(X, 1), X.mean((2, 3), keepdim=True), F.avg_pool2d(X, (5, 7))):
        assert (got.reveal() - x.mean((2, 3), keepdim=True)).abs().max() <= 3 * LSB


@N_PARTIES
@given(seed=seeds, sess_seed=seeds, nd=st.integers(2, 5), mode=st.sampled_from(["constant", "reflect", "replicate", "circular"]),
       data_=st.data())
@SETTINGS
def test_pad_matches_torch(make_session, n, seed, sess_seed, nd, mode, data_):
    shape = tuple(data_.draw(st.integers(2, 4)) for _ in range(nd))
    k = data_.draw(st.integers(1, min(3, nd - 1) if mode != "constant" else nd))
    lo = -1 if mode == "constant" else 0
    pad = tuple(data_.draw(st.integers(lo, 2 if mode != "reflect" else 1)) for _ in range(2 * k))
    value = data_.draw(st.sampled_from([None, 0.0, 1.5, -2])) if mode == "constant" else None
    x = grid(seed, shape, 2.0)
    want = torch_or_none(lambda t: F.pad(t, pad, mode=mode, value=value), x)
    assume(want is not None)
    s = make_session(n, seed=sess_seed)
    got = F.pad(s.share(x), pad, mode=mode, value=value)
    assert got.shares.shape == (n,) + tuple(want.shape)
    assert torch.equal(got.reveal(), want)


def _rounds(s, fn) -> int:
    before = s.comm.stats()["alice"]["rounds"]
    fn()
    return s.comm.stats()["alice"]["rounds"] - before


@N_PARTIES
@pytest.mark.parametrize("k", [(1, 2), (2, 2), (3, 3), (4, 4)])
def test_max_pool_rounds(make_session, n, k) -> None:
    """"pairs": one argmax (constant rounds, whatever the window); "tree": one ReLU per halving level."""
    x = grid(0, (1, 2, 8, 8), 2.0)
    s = make_session(n, seed=1)
    X = s.share(x)
    argmax_rounds, relu_rounds = _rounds(s, lambda: X.argmax(-1)), _rounds(s, lambda: X.relu())
    levels = math.ceil(math.log2(k[0] * k[1]))
    for method, rounds in (("pairs", argmax_rounds), ("tree", levels * relu_rounds)):
        with maxpool_method(method):
            assert _rounds(s, lambda: F.max_pool2d(X, k, padding=(k[0] // 2, k[1] // 2))) == rounds, method


def test_default_method_per_window_size() -> None:
    assert ops.maxpool_method(4) in ("pairs", "tree")
    assert {ops.maxpool_method(k) for k in range(1, 26)} <= {"pairs", "tree"}


def test_padding_fill_is_below_every_accepted_value(make_session) -> None:
    s = make_session(2, seed=0)
    bottom = -(2.0 ** 15) + LSB  # the smallest value share() accepts
    X = s.share(torch.full((1, 1, 2, 2), bottom, dtype=torch.float64))
    assert ops.maxpool_fill(s, FB) == -(2**31 - 1) and ops.maxpool_fill(s, FB) <= round(bottom * 2**FB)
    for method in ("pairs", "tree"):
        ops.MAXPOOL_METHOD[4] = method
        try:
            assert torch.equal(F.max_pool2d(X, 2, 1, 1).reveal(), torch.full((1, 1, 3, 3), bottom, dtype=torch.float64))
        finally:
            ops.MAXPOOL_METHOD.pop(4)


def test_unsupported_and_invalid_pooling_raise_before_anything_is_opened(make_session) -> None:
    s = make_session(2, seed=0)
    X, V = s.share(torch.ones(1, 1, 4, 4)), s.share(torch.tensor(1.0))
    n_records = len(s.comm.records)
    with pytest.raises(UnsupportedOpError, match="max_pool2d_with_indices"):  # torch dispatches it to another op
        F.max_pool2d(X, 2, return_indices=True)
    with pytest.raises(UnsupportedOpError, match="adaptive_max_pool2d_with_indices"):
        F.adaptive_max_pool2d(X, 2, return_indices=True)
    with pytest.raises(UnsupportedOpError, match="entirely in the padding"):
        F.max_pool2d(X[:, :, :2, :2], 2, 1, 1, 3)  # taps -1 and 2 of a size-2 axis: torch gives -inf
    with pytest.raises(RuntimeError, match="pad should be"):
        F.max_pool2d(X, 2, 2, 2)
    with pytest.raises(RuntimeError, match="divisor must be not zero"):
        F.avg_pool2d(X, 2, divisor_override=0)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        F.avg_pool2d(X, 5)
    with pytest.raises(RuntimeError, match="Padding length"):
        F.pad(X, (1,) * 10)
    with pytest.raises(NotImplementedError):  # torch: reflect padding of 1 dim needs a 2-D or 3-D input
        F.pad(X, (1, 1), mode="reflect")
    with pytest.raises(UnsupportedOpError, match="secret-shared"):
        F.pad(X, (1, 1), value=V)
    assert len(s.comm.records) == n_records
