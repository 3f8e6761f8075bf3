"""Property tests: every op on shares against float64 plaintext, for 2 and 3 compute parties.

Error model (real units, ``f = precision_bits = 16``, ``LSB = 2^-f``):

* encoding rounds to nearest: a shared or public float ``x`` is held as ``x~`` with ``|x~ - x| <= LSB/2``;
  integers (public ``int`` factors, ``frac_bits=0`` shares) are exact;
* additions, subtractions, sums, integer scalings, shape ops, ReLU, comparisons, argmax and max act exactly on
  the encoded values (ring arithmetic, exact comparison protocols for ``|value| < 2^32`` LSB);
* a bilinear op ``B`` (elementwise mul, matmul, linear, conv2d) computes ``B(x~, w~)`` exactly at ``2f``
  fractional bits; the probabilistic truncation back to ``f`` bits (done lazily: before the next product, or
  fused into the next ReLU/comparison/argmax) adds an error in ``(-LSB, LSB)`` (floor, or floor + 1 LSB).
  By the triangle inequality, elementwise

      |B(x~, w~) - B(x, w)| <= LSB/2 * B(|x|, 1) + LSB/2 * B(1, |w|) + LSB^2/4 * B(1, 1)

  (for a matmul, ``B(|x|, 1)_ij = sum_k |x_ik|`` and ``B(1, 1)_ij = K``, the inner dimension), so we assert

      |err| <= 2^-f * (1 + 1/2 * (B(|x|, 1) + B(1, |w|)) + 2^-(f+2) * B(1, 1))      (*)

  which is tight (each term can be attained) but safe; the leading ``1`` is the truncation (allowed even where
  the implementation reveals the 2f-bit value untruncated).
* max-pooling a product with the "tree" method fuses one truncation into each level's ReLU while the other
  operand stays at ``2f`` bits: one more ``(-LSB, LSB)`` per level (``ceil(log2 taps)`` levels);
* a public float factor ``c`` in a mean / avg-pool (``1/count``) is encoded too:
  ``|S~ c~ - S c| <= |S~ - S| c + |S~| |c~ - c| <= LSB/2 * (1 + |S~|)`` for a sum ``S`` of ``count`` terms,
  plus the truncation allowance: ``|err| <= 2^-f * (1 + (1 + |S~|) / 2)``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_smpc.mpc.ops.pooling import maxpool_method

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FB = 16
LSB = 2.0**-FB
HALF = LSB / 2

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_PARTIES = pytest.mark.parametrize("n", [2, 3], ids=["2pc", "3pc"])

seeds = st.integers(0, 2**31 - 1)
scales = st.sampled_from([0.01, 1.0, 6.0])
dim = st.integers(1, 6)
shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


# ---------------------------------------------------------------------------------------------- helpers
def data(seed: int, shape, scale: float = 4.0) -> torch.Tensor:
    """float64 test data: gaussian * scale, with some exact zeros and repeated values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if x.numel() > 2:
        flat = x.view(-1)
        flat[torch.randint(0, flat.numel(), (max(1, flat.numel() // 8),), generator=g)] = 0.0
        flat[-1] = flat[0]
    return x


def grid(seed: int, shape, scale: float = 4.0, levels: int | None = None) -> torch.Tensor:
    """Values on the fixed-point grid (encoding is exact). ``levels``: draw from few values, to force ties."""
    if levels is not None:
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(-levels, levels + 1, shape, generator=g).double() * scale / levels).mul(2**FB).round() / 2**FB
    return q(data(seed, shape, scale))


def q(x: torch.Tensor) -> torch.Tensor:
    """The encoded value the parties hold (round to nearest on the 2^-f grid)."""
    return torch.round(x * 2**FB) / 2**FB


def bilinear_bound(op, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Bound (*) of the module docstring for ``op(x, w)``."""
    ox, ow = torch.ones_like(x), torch.ones_like(w)
    return LSB * (1 + 0.5 * (op(x.abs(), ow) + op(ox, w.abs())) + 2.0 ** -(FB + 2) * op(ox, ow))


def assert_within(got: torch.Tensor, want: torch.Tensor, bound) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    err = (got - want).abs()
    bad = err > bound
    assert not bool(bad.any()), f"max err {err.max().item():.3g}; {int(bad.sum())} element(s) exceed the bound"


def assert_exact(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.equal(got.double(), want.double()), (got, want)


# ---------------------------------------------------------------------------------------------- add / sub / mul
@N_PARTIES
@given(seed=seeds, shape=shapes, scale=scales, sess_seed=seeds)
@SETTINGS
def test_add_sub_neg(make_session, n, seed, shape, scale, sess_seed):
    s = make_session(n, seed=sess_seed)
    x, y = data(seed, shape, scale), data(seed + 1, shape, scale)
    X, Y = s.share(x), s.share(y)
    # exact on the encoded values; vs float64 the two encodings give |err| <= 2 * LSB/2
    assert_exact((X + Y).reveal(), q(x) + q(y))
    assert_exact((X - Y).reveal(), q(x) - q(y))
    assert_exact((-X).reveal(), -q(x))
    assert_within((X - Y).reveal(), x - y, LSB)
    # public operands: float (encoded), int (exact), broadcast tensor, on either side
    c = data(seed + 2, shape[-1:], scale)
    assert_exact((X + c).reveal(), q(x) + q(c))
    assert_exact((c - X).reveal(), q(c) - q(x))
    assert_exact((X - 3).reveal(), q(x) - 3)
    assert_exact((2.5 + X).reveal(), q(x) + 2.5)
    assert_exact(torch.add(X, Y, alpha=2).reveal(), q(x) + 2 * q(y))


@N_PARTIES
@given(seed=seeds, shape=shapes, scale=scales, sess_seed=seeds, bcast=st.booleans())
@SETTINGS
def test_mul_shared_shared(make_session, n, seed, shape, scale, sess_seed, bcast):
    s = make_session(n, seed=sess_seed)
    x = data(seed, shape, scale)
    y = data(seed + 1, shape[-1:] if bcast else shape, scale)
    X, Y = s.share(x), s.share(y)
    mul = torch.mul
    assert_within((X * Y).reveal(), x * y, bilinear_bound(mul, x, y))
    assert_within((Y * X).reveal(), y * x, bilinear_bound(mul, y, x))
    assert_within((X * X).reveal(), x * x, bilinear_bound(mul, x, x))
    # fresh operands (no cached input mask): a Beaver opening round
    Xf, Yf = X + 0.0, Y * 1
    assert Xf.mask is None and Yf.mask is None
    assert_within((Xf * Yf).reveal(), x * y, bilinear_bound(mul, x, y))
    # truncation then a second product: err(a*z) <= err(a) * (|z| + LSB/2) + |a| * LSB/2 + trunc
    a, z = x * y, data(seed + 2, shape, 1.0)
    ea = bilinear_bound(mul, x, y)
    bound = ea * (z.abs() + HALF) + (a.abs()) * HALF + LSB
    assert_within(((X * Y) * s.share(z)).reveal(), a * z, bound)


@N_PARTIES
@given(seed=seeds, shape=shapes, scale=scales, sess_seed=seeds, k=st.integers(-50, 50), c=st.floats(-20, 20))
@SETTINGS
def test_mul_shared_public(make_session, n, seed, shape, scale, sess_seed, k, c):
    s = make_session(n, seed=sess_seed)
    x = data(seed, shape, scale)
    X = s.share(x)
    # public int: exact scaling of the encoding, |err| <= |k| * LSB/2
    assert_exact((X * k).reveal(), q(x) * k)
    assert_exact((k * X).reveal(), q(x) * k)
    assert_within((X * k).reveal(), x * k, abs(k) * HALF)
    # public float (scalar and tensor): bound (*) with K = 1
    ct = torch.tensor(c, dtype=torch.float64)
    assert_within((X * c).reveal(), x * c, bilinear_bound(torch.mul, x, ct))
    assert_within((c * X).reveal(), x * c, bilinear_bound(torch.mul, x, ct))
    w = data(seed + 3, shape[-1:], 2.0)
    assert_within((X * w).reveal(), x * w, bilinear_bound(torch.mul, x, w))
    assert_within((X / 4.0).reveal(), x / 4, bilinear_bound(torch.mul, x, torch.tensor(0.25)))


# ---------------------------------------------------------------------------------------------- products
@st.composite
def matmul_shapes(draw):
    m, k, nn = draw(dim), draw(st.integers(1, 40)), draw(dim)
    kind = draw(st.sampled_from(["2d", "batched", "bcast_left", "bcast_right", "vec_left", "vec_right"]))
    b = draw(st.integers(1, 3))
    return {
        "2d": ((m, k), (k, nn)),
        "batched": ((b, m, k), (b, k, nn)),
        "bcast_left": ((b, m, k), (k, nn)),
        "bcast_right": ((m, k), (b, k, nn)),
        "vec_left": ((k,), (k, nn)),
        "vec_right": ((b, m, k), (k,)),
    }[kind]


@N_PARTIES
@given(shp=matmul_shapes(), seed=seeds, scale=scales, sess_seed=seeds, which=st.sampled_from(["ss", "sp", "ps", "fresh"]))
@SETTINGS
def test_matmul(make_session, n, shp, seed, scale, sess_seed, which):
    s = make_session(n, seed=sess_seed)
    x, w = data(seed, shp[0], scale), data(seed + 1, shp[1], 1.0)
    X, W = s.share(x), s.share(w)
    if which == "sp":
        X, W = X, w
    elif which == "ps":
        X, W = x, W
    elif which == "fresh":
        X, W = X * 1, W * 1  # no cached mask: the product opens x - a and w - b
    got = torch.matmul(X, W).reveal()
    assert_within(got, x @ w, bilinear_bound(torch.matmul, x, w))
    # fused truncation: relu of the product, bound (*) (ReLU is 1-Lipschitz and exact on the truncated value)
    if which != "ps":
        r = (X @ W).relu().reveal()
        assert_within(r, (x @ w).relu(), bilinear_bound(torch.matmul, x, w))


@N_PARTIES
@given(seed=seeds, scale=scales, sess_seed=seeds, batch=st.lists(dim, max_size=2).map(tuple), fin=st.integers(1, 30),
       fout=dim, bias=st.sampled_from(["none", "shared", "public"]), w_public=st.booleans())
@SETTINGS
def test_linear(make_session, n, seed, scale, sess_seed, batch, fin, fout, bias, w_public):
    s = make_session(n, seed=sess_seed)
    x, w, b = data(seed, batch + (fin,), scale), data(seed + 1, (fout, fin), 1.0), data(seed + 2, (fout,), 3.0)
    X = s.share(x)
    W = w if w_public else s.share(w)
    B = {"none": None, "shared": s.share(b), "public": b}[bias]
    got = F.linear(X, W, B).reveal()
    want = F.linear(x, w, None if bias == "none" else b)
    bound = bilinear_bound(lambda u, v: F.linear(u, v), x, w) + (0 if bias == "none" else HALF)
    assert_within(got, want, bound)
    # ReLU with the truncation fused (the MLP pattern): same bound, ReLU being 1-Lipschitz
    h = F.linear(X, W, B).relu()
    assert_within(h.reveal(), want.relu(), bound)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    og = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 8))
    w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 8))
    nb = draw(st.integers(1, 2))
    return dict(x=(nb, cg * groups, h, w), w=(og * groups, cg, kh, kw),
                kw=dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


@N_PARTIES
@given(case=conv_cases(), seed=seeds, scale=scales, sess_seed=seeds, which=st.sampled_from(["ss", "sp", "fresh"]),
       bias=st.sampled_from(["none", "shared", "public"]))
@SETTINGS
def test_conv2d(make_session, n, case, seed, scale, sess_seed, which, bias):
    s = make_session(n, seed=sess_seed)
    x, w, b = data(seed, case["x"], scale), data(seed + 1, case["w"], 1.0), data(seed + 2, case["w"][:1], 2.0)
    X, W = s.share(x), s.share(w)
    if which == "sp":
        W = w
    elif which == "fresh":
        X, W = X * 1, W * 1
    B = {"none": None, "shared": s.share(b), "public": b}[bias]
    kw = case["kw"]
    got = F.conv2d(X, W, B, **kw).reveal()
    want = F.conv2d(x, w, None if bias == "none" else b, **kw)
    bound = bilinear_bound(lambda u, v: F.conv2d(u, v, **kw), x, w) + (0 if bias == "none" else HALF)
    assert_within(got, want, bound)


# ---------------------------------------------------------------------------------------------- reductions
@N_PARTIES
@given(seed=seeds, shape=shapes, scale=scales, sess_seed=seeds, data_=st.data())
@SETTINGS
def test_sum_mean(make_session, n, seed, shape, scale, sess_seed, data_):
    s = make_session(n, seed=sess_seed)
    x = data(seed, shape, scale)
    X = s.share(x)
    d = data_.draw(st.integers(-len(shape), len(shape) - 1))
    keep = data_.draw(st.booleans())
    # sums are exact on the encodings (|err| <= count * LSB/2 vs float64)
    assert_exact(X.sum().reveal(), q(x).sum())
    assert_exact(X.sum(d, keepdim=keep).reveal(), q(x).sum(d, keepdim=keep))
    if len(shape) >= 2:
        assert_exact(torch.sum(X, dim=(0, -1)).reveal(), q(x).sum(dim=(0, -1)))
    # mean = public division of the sum (ops._divide_public): |err| <= 2 + |mean| * 2^(f - s) LSB (s = 61 -
    # compare_bits), plus half an LSB of input encoding
    M = x.mean(d, keepdim=keep)
    assert_within(X.mean(d, keepdim=keep).reveal(), M, LSB * (2.5 + M.abs() * 2.0 ** (16 - 29)))
    assert_within(X.mean().reveal(), x.mean(), LSB * (2.5 + x.mean().abs() * 2.0 ** (16 - 29)))


# ---------------------------------------------------------------------------------------------- nonlinear
@N_PARTIES
@given(seed=seeds, shape=shapes, scale=scales, sess_seed=seeds)
@SETTINGS
def test_relu(make_session, n, seed, shape, scale, sess_seed):
    s = make_session(n, seed=sess_seed)
    x = data(seed, shape, scale)
    X = s.share(x)
    assert_exact(X.relu().reveal(), q(x).relu())
    assert_exact(F.relu(X).reveal(), q(x).relu())
    assert_exact(torch.relu(X - 1).reveal(), (q(x) - 1).relu())
    # fused with the truncation of a product: bound (*), K = 1
    y = data(seed + 1, shape, 2.0)
    assert_within((X * s.share(y)).relu().reveal(), (x * y).relu(), bilinear_bound(torch.mul, x, y))


@N_PARTIES
@given(seed=seeds, shape=shapes, sess_seed=seeds, levels=st.sampled_from([None, 2, 3]))
@SETTINGS
def test_comparisons_exact(make_session, n, seed, shape, sess_seed, levels):
    s = make_session(n, seed=sess_seed)
    x, y = grid(seed, shape, 5.0, levels), grid(seed + 1, shape, 5.0, levels)  # grid values: encoding exact
    X, Y = s.share(x), s.share(y)
    for got, want in [
        (X >= Y, x >= y), (X > Y, x > y), (X <= Y, x <= y), (X < Y, x < y),
        (X >= 0, x >= 0), (X > 0, x > 0), (X < 0.5, x < 0.5), (X <= -1.25, x <= -1.25),
        (torch.ge(X, y), x >= y), (torch.gt(X, 2), x > 2), (torch.lt(X, y), x < y), (torch.le(X, Y), x <= y),
        (X >= X, x >= x), (X > X, x > x),
    ]:
        assert_exact(got.reveal(), want)


@N_PARTIES
@given(seed=seeds, shape=shapes, sess_seed=seeds, scale=scales)
@SETTINGS
def test_compare_after_product(make_session, n, seed, shape, sess_seed, scale):
    """[x*y >= 0] with the truncation fused: exact except where the encoded product lies in [-LSB, 0), where
    floor + 1 can round a negative value up to 0."""
    s = make_session(n, seed=sess_seed)
    x, y = data(seed, shape, scale), data(seed + 1, shape, scale)
    got = (s.share(x) * s.share(y) >= 0).reveal()
    p = q(x) * q(y)
    sure = (p >= 0) | (p < -LSB)
    assert_exact(got[sure], (p >= 0)[sure])


@st.composite
def reduce_cases(draw):
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple))
    d = draw(st.integers(-len(shape), len(shape) - 1))
    return shape, d, draw(st.booleans())


@N_PARTIES
@given(case=reduce_cases(), seed=seeds, sess_seed=seeds, levels=st.sampled_from([None, 1, 3]))
@SETTINGS
def test_argmax_max(make_session, n, case, seed, sess_seed, levels):
    """argmax/max are exact on the encodings; ties go to the first index, as in torch.argmax."""
    shape, d, keep = case
    s = make_session(n, seed=sess_seed)
    x = grid(seed, shape, 7.0, levels)
    X = s.share(x)
    assert_exact(X.argmax(d, keepdim=keep).reveal(), x.argmax(d, keepdim=keep))
    assert_exact(torch.argmax(X, dim=d).reveal(), x.argmax(dim=d))
    assert_exact(X.argmax().reveal(), x.argmax())
    v, i = X.max(d, keepdim=keep)
    tv, ti = x.max(d, keepdim=keep)
    assert_exact(v.reveal(), tv)
    assert_exact(i.reveal(), ti)
    assert_exact(X.max().reveal(), x.max())
    # skipped softmax: monotone, so its argmax is the logits' argmax
    assert_exact(F.softmax(X, dim=d).argmax(d).reveal(), x.argmax(d))


@N_PARTIES
@given(seed=seeds, sess_seed=seeds, m=dim, k=st.integers(1, 20), c=st.integers(2, 10))
@SETTINGS
def test_argmax_after_product(make_session, n, seed, sess_seed, m, k, c):
    """Fused truncation: the chosen class is within 2 * bound (*) of the true maximum (exact when the gap is larger)."""
    s = make_session(n, seed=sess_seed)
    x, w = data(seed, (m, k), 1.0), data(seed + 1, (k, c), 1.0)
    logits = x @ w
    idx = (s.share(x) @ s.share(w)).argmax(-1).reveal().long()
    bound = bilinear_bound(torch.matmul, x, w)
    chosen = logits.gather(1, idx[:, None])[:, 0]
    assert bool((chosen >= logits.max(1).values - 2 * bound.max(1).values).all())


@st.composite
def pool_cases(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = draw(st.sampled_from([None, 1, 2, (1, 2)]))
    h, w = draw(st.integers(k[0], 8)), draw(st.integers(k[1], 8))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), k, stride


@N_PARTIES
@given(case=pool_cases(), seed=seeds, sess_seed=seeds, levels=st.sampled_from([None, 2]))
@SETTINGS
def test_pooling(make_session, n, case, seed, sess_seed, levels):
    shape, k, stride = case
    s = make_session(n, seed=sess_seed)
    x = grid(seed, shape, 6.0, levels)
    X = s.share(x)
    assert_exact(F.max_pool2d(X, k, stride).reveal(), F.max_pool2d(x, k, stride))
    # avg = window sum * encoded(1/(kh*kw)): |err| <= 2^-f * (1 + (1 + |S|) / 2), S the window sum
    S = F.avg_pool2d(x, k, stride) * (k[0] * k[1])
    assert_within(F.avg_pool2d(X, k, stride).reveal(), F.avg_pool2d(x, k, stride), LSB * (1 + (1 + S.abs()) / 2))
    # max-pool of a product (fused truncation): within bound (*) with K = 1, plus one LSB per level of the "tree"
    # method: each max(a, b) = b + 2^f relu(trunc(a - b)) keeps b at 2f bits and adds a truncation error in
    # (-LSB, LSB) (the "pairs" method truncates each tap once: no extra error)
    y = data(seed + 1, shape, 1.0)
    xy = x * y
    taps = k[0] * k[1]
    levels = (taps - 1).bit_length() if maxpool_method(taps) == "tree" else 0
    assert_within(F.max_pool2d(X * s.share(y), k, stride).reveal(), F.max_pool2d(xy, k, stride),
                  bilinear_bound(torch.mul, x, y).max() + levels * LSB)


# ---------------------------------------------------------------------------------------------- shape ops
@N_PARTIES
@given(seed=seeds, sess_seed=seeds, shape=st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple), data_=st.data())
@SETTINGS
def test_shape_ops(make_session, n, seed, sess_seed, shape, data_):
    s = make_session(n, seed=sess_seed)
    x = grid(seed, shape)
    X = s.share(x)
    nd = len(shape)
    perm = tuple(data_.draw(st.permutations(range(nd))))
    d0, d1 = data_.draw(st.integers(-nd, nd - 1)), data_.draw(st.integers(-nd, nd - 1))
    cases = [
        (X.view(-1), x.view(-1)), (X.reshape(shape[0], -1), x.reshape(shape[0], -1)),
        (torch.reshape(X, (-1,) + shape[-1:]), x.reshape((-1,) + shape[-1:])),
        (X.flatten(), x.flatten()), (X.flatten(1), x.flatten(1)), (torch.flatten(X, 0, -2), x.flatten(0, -2)),
        (X.transpose(d0, d1), x.transpose(d0, d1)), (X.permute(*perm), x.permute(*perm)),
        (X.permute(perm), x.permute(perm)), (X.unsqueeze(d0), x.unsqueeze(d0)), (X.unsqueeze(-1).squeeze(-1), x),
        (X.unsqueeze(1).squeeze(), x.unsqueeze(1).squeeze()), (X[0], x[0]), (X[..., -1], x[..., -1]),
        (X[:, ::2], x[:, ::2]), (X[None, 1:], x[None, 1:]), (X[torch.tensor([0, 0])], x[torch.tensor([0, 0])]),
        (X[x > 0], x[x > 0]),
    ]
    if nd == 2:
        cases += [(X.t(), x.t()), (X.T, x.T)]
    for got, want in cases:
        assert_exact(got.reveal(), want)
    # joins (also of a product with 2f fractional bits and a fresh value)
    y = grid(seed + 1, shape)
    Y = s.share(y)
    assert_exact(torch.cat([X, Y], d0).reveal(), torch.cat([x, y], d0))
    assert_exact(torch.stack([X, Y, X], d0).reveal(), torch.stack([x, y, x], d0))
    # a product carries 2f fractional bits; reveal truncates it to f bits first: floor + {0, 1} LSB
    err = torch.cat([X * Y, Y], 0).reveal() - torch.cat([x * y, y], 0).double()
    assert bool((err > -(2.0**-FB)).all()) and bool((err <= 2.0**-FB).all())


@N_PARTIES
@given(seed=seeds, sess_seed=seeds, b=dim, m=dim, k=dim)
@SETTINGS
def test_products_after_shape_ops(make_session, n, seed, sess_seed, b, m, k):
    """Shape ops keep the cached input mask (the dealer replays the transform): products stay correct."""
    s = make_session(n, seed=sess_seed)
    x, w = data(seed, (b, m, k), 2.0), data(seed + 1, (k, m), 1.0)
    X, W = s.share(x), s.share(w)
    mm = torch.matmul
    cases = [
        (X.transpose(1, 2) @ W.t(), x.transpose(1, 2) @ w.t(), bilinear_bound(mm, x.transpose(1, 2), w.t())),
        (X[0] @ W, x[0] @ w, bilinear_bound(mm, x[0], w)),
        (X.reshape(b * m, k) @ W, x.reshape(b * m, k) @ w, bilinear_bound(mm, x.reshape(b * m, k), w)),
        (X.permute(2, 0, 1).flatten(1).t() @ W[:, :1], x.permute(2, 0, 1).flatten(1).t() @ w[:, :1],
         bilinear_bound(mm, x.permute(2, 0, 1).flatten(1).t(), w[:, :1])),
        (X[:, :, :1] * W.t()[:, :1], x[:, :, :1] * w.t()[:, :1], bilinear_bound(torch.mul, x[:, :, :1], w.t()[:, :1])),
        (X.unsqueeze(0).squeeze(0) @ W, x @ w, bilinear_bound(mm, x, w)),
        (X @ W, x @ w, bilinear_bound(mm, x, w)),  # the unmodified operands, after the masks were reused above
    ]
    for got, want, bound in cases:
        assert_within(got.reveal(), want, bound)
    # the same shared value as both operands, after different views
    xx = x[0]
    assert_within((X[0] @ X[0].t()).reveal(), xx @ xx.t(), bilinear_bound(mm, xx, xx.t()))
