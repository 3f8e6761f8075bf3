"""Exactness of the float64-limb ring products against torch's int64 kernels (which wrap mod 2^64 on CPU)."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_smpc.mpc import ring
from lightning_smpc.mpc.ring import (
    CHUNK,
    LimbOperand,
    join_limbs,
    ring_conv2d,
    ring_matmul,
    split_limbs,
    wrap_add,
)

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
EXTREMES = [I64_MIN, I64_MAX, 0, -1, 1, I64_MIN + 1, I64_MAX - 1]


def s64(v: int) -> int:
    """Python int -> the int64 with the same value mod 2^64."""
    v %= 2**64
    return v - 2**64 if v >= 2**63 else v


def limb_value(a0: int, a1: int, a2: int) -> int:
    return s64(a0 + a1 * 2**22 + a2 * 2**42)


# values whose limbs sit at (or next to: odd products round first) the ends of their ranges; they reach
# every bound in the module docstring
LIMB_EXTREMES = [
    limb_value(a0, a1, a2)
    for a0 in (-(2**21), -(2**21) + 1, 2**21 - 1)
    for a1 in (-(2**19), -(2**19) + 1, 2**19 - 1)
    for a2 in (-(2**21), -(2**21) + 1, 2**21 - 1, 0)
]


def rand_ring(*shape, gen: torch.Generator, extremes: float = 0.1) -> torch.Tensor:
    """Uniform int64 values with a fraction of the entries replaced by edge values."""
    t = torch.randint(I64_MIN, I64_MAX, shape, generator=gen, dtype=torch.int64)
    if t.numel() and extremes > 0:
        pool = torch.tensor(EXTREMES + LIMB_EXTREMES, dtype=torch.int64)
        mask = torch.rand(shape, generator=gen) < extremes
        picks = pool[torch.randint(len(pool), shape, generator=gen)]
        t = torch.where(mask, picks, t)
    return t


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ----------------------------------------------------------------------------------------------- limbs
def test_split_join_roundtrip_and_ranges(gen):
    t = torch.cat([rand_ring(5000, gen=gen), torch.tensor(EXTREMES + LIMB_EXTREMES)])
    a0, a1, a2 = split_limbs(t)
    for limb in (a0, a1, a2):
        assert limb.dtype == torch.float64 and limb.shape == t.shape
        assert torch.equal(limb, limb.round())
    assert a0.min() >= -(2**21) and a0.max() < 2**21
    assert a1.min() >= -(2**19) and a1.max() < 2**19
    assert a2.abs().max() <= 2**21
    assert torch.equal(join_limbs((a0, a1, a2)), t)


def test_split_known_values():
    t = torch.tensor([0, -1, 1, I64_MIN, I64_MAX, 2**22 + 5, -(2**42)])
    a0, a1, a2 = split_limbs(t)
    assert a0.tolist() == [0, -1, 1, 0, -1, 5, 0]
    assert a1.tolist() == [0, 0, 0, 0, 0, 1, 0]
    assert [s64(int(v) * 2**42) for v in a2] == [0, 0, 0, I64_MIN, I64_MIN, 0, -(2**42)]  # MAX = -1 + 2^63


def test_split_noncontiguous(gen):
    t = rand_ring(6, 7, gen=gen).mT
    assert torch.equal(join_limbs(split_limbs(t)), t)


def test_wrap_add():
    a = torch.tensor([I64_MAX, I64_MIN, 5])
    assert wrap_add(a, torch.tensor([1, -1, 1])).tolist() == [I64_MIN, I64_MAX, 6]
    assert wrap_add(a, a, a).tolist() == [s64(3 * v) for v in a.tolist()]
    assert torch.equal(wrap_add(a), a)


# ---------------------------------------------------------------------------------------------- matmul
@pytest.mark.parametrize(
    "sa, sb",
    [
        ((5,), (5,)),  # 1-D @ 1-D -> scalar
        ((5,), (5, 3)),
        ((4, 5), (5,)),
        ((4, 5), (5, 3)),
        ((1, 1), (1, 1)),
        ((3, 4, 5), (5, 2)),  # batched @ 2-D
        ((4, 5), (3, 5, 2)),  # 2-D @ batched
        ((2, 1, 4, 5), (3, 5, 2)),  # broadcast batch dims
        ((3, 4, 5), (3, 5, 2)),
        ((3, 4, 5), (5,)),
        ((5,), (2, 3, 5, 4)),
        ((4, 0), (0, 3)),  # empty inner dim -> zeros
        ((0, 5), (5, 3)),
    ],
)
def test_matmul_shapes(gen, sa, sb):
    a, b = rand_ring(*sa, gen=gen), rand_ring(*sb, gen=gen)
    out = ring_matmul(a, b)
    ref = torch.matmul(a, b)
    assert out.dtype == torch.int64 and out.shape == ref.shape
    assert torch.equal(out, ref)


@pytest.mark.parametrize("k", [1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 5000])
def test_matmul_inner_dims(gen, k):
    a, b = rand_ring(6, k, gen=gen), rand_ring(k, 5, gen=gen)
    assert torch.equal(ring_matmul(a, b), a @ b)


@pytest.mark.parametrize("k", [CHUNK - 1, CHUNK, 2 * CHUNK + 3])
def test_matmul_constant_extremes(k):
    """out[i, j] = k * v[i] * v[j] for every pair of edge values, with all terms of a chunk equal: partial sums
    reach the exactness bounds (up to 2^53 per chunk)."""
    v = torch.tensor(EXTREMES + LIMB_EXTREMES, dtype=torch.int64)
    a = v[:, None].expand(len(v), k)
    b = v[None, :].expand(k, len(v))
    assert torch.equal(ring_matmul(a, b), a @ b)
    assert torch.equal(ring_matmul(a.neg(), b), a.neg() @ b)


def test_matmul_worst_case_limbs():
    """Chunks full of the limb patterns that maximise |P0|, |P2| and |T| (and their signs mixed)."""
    a = torch.tensor(LIMB_EXTREMES, dtype=torch.int64).repeat(CHUNK // len(LIMB_EXTREMES) + 1)[:CHUNK]
    a = torch.stack([a, a.flip(0), torch.full_like(a, LIMB_EXTREMES[0]), torch.full_like(a, LIMB_EXTREMES[-1])])
    b = torch.cat([a, a]).mT.contiguous()  # [CHUNK, 8]
    a = torch.cat([a, a], 1)  # inner dim 2 * CHUNK
    b = torch.cat([b, b], 0)
    assert torch.equal(ring_matmul(a, b), a @ b)


def test_matmul_noncontiguous(gen):
    a = rand_ring(9, 40, gen=gen)[::2, 3:30]
    b = rand_ring(12, 27, gen=gen).mT
    assert torch.equal(ring_matmul(a, b), a @ b)
    big = rand_ring(3000, 8, gen=gen).mT  # chunked inner dim on a transposed view
    assert torch.equal(ring_matmul(big, big.mT), big @ big.mT)


def test_matmul_mnist_layer_shape(gen):
    a, b = rand_ring(100, 784, gen=gen), rand_ring(784, 500, gen=gen)
    assert torch.equal(ring_matmul(a, b), a @ b)


def test_matmul_errors(gen):
    a = rand_ring(3, 4, gen=gen)
    with pytest.raises(TypeError):
        ring_matmul(a.double(), a.mT)
    with pytest.raises(TypeError):
        ring_matmul(a, a.mT.int())
    with pytest.raises(TypeError):
        LimbOperand(a.float())
    with pytest.raises(RuntimeError):
        ring_matmul(a, a)
    with pytest.raises(RuntimeError):
        ring_matmul(torch.tensor(3), a)


# ------------------------------------------------------------------------------------------ LimbOperand
def test_limb_operand_reuse(gen):
    w = rand_ring(64, 30, gen=gen)
    wl = LimbOperand(w)
    assert wl.shape == w.shape and wl.dim() == 2 and wl.device == w.device and wl.dtype == torch.int64
    assert torch.equal(wl.to_int64(), w)
    assert torch.equal(join_limbs(wl.limbs), w)
    for m in (1, 5, 17):
        x = rand_ring(m, 64, gen=gen)
        assert torch.equal(ring_matmul(x, wl), x @ w)  # right operand
        y = rand_ring(30, m, gen=gen)
        assert torch.equal(ring_matmul(wl, y), w @ y)  # left operand
    assert torch.equal(ring_matmul(wl.mT, wl), w.mT @ w)  # both pre-split, transposed view
    assert torch.equal(ring_matmul(LimbOperand(wl), w.mT), w @ w.mT)
    xb = rand_ring(2, 3, 64, gen=gen)
    assert torch.equal(ring_matmul(xb, wl), xb @ w)  # batched @ pre-split
    v = rand_ring(30, gen=gen)
    assert torch.equal(ring_matmul(wl, LimbOperand(v)), w @ v)
    assert torch.equal(LimbOperand(v).to(w.device).to_int64(), v)


def test_limb_operand_chunked_and_batched(gen):
    w = rand_ring(2, 1, 2500, 7, gen=gen)
    wl = LimbOperand(w)
    for _ in range(2):
        x = rand_ring(3, 4, 2500, gen=gen)
        assert torch.equal(ring_matmul(x, wl), x @ w)
    assert torch.equal(ring_matmul(wl.mT, LimbOperand(x.mT)), w.mT @ x.mT)


# ---------------------------------------------------------------------------------------------- conv2d
CONV_CASES = [
    # (N, C, H, W), (O, C/g, kh, kw), kwargs
    ((2, 3, 8, 8), (4, 3, 3, 3), {}),
    ((2, 3, 8, 8), (4, 3, 3, 3), dict(stride=2, padding=1)),
    ((1, 4, 9, 7), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2)),
    ((2, 6, 7, 7), (6, 1, 3, 3), dict(padding=1, groups=6)),  # depthwise
    ((3, 5, 6, 6), (2, 5, 1, 1), {}),  # 1x1
    ((2, 4, 9, 9), (3, 4, 4, 2), dict(padding="same")),  # even kernel: asymmetric padding
    ((2, 4, 9, 9), (3, 4, 3, 3), dict(padding="same", dilation=2)),
    ((2, 4, 9, 9), (4, 2, 3, 3), dict(padding="valid", groups=2, stride=3)),
    ((1, 2, 5, 5), (2, 2, 5, 5), {}),  # kernel covers the input
    ((2, 130, 5, 5), (3, 130, 3, 3), dict(padding=1)),  # inner dim 1170 > CHUNK: chunked
    ((1, 240, 4, 4), (4, 120, 3, 3), dict(padding=1, groups=2)),  # chunked with groups
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("xs, ws, kw", CONV_CASES)
def test_conv2d(gen, xs, ws, kw):
    x, w = rand_ring(*xs, gen=gen), rand_ring(*ws, gen=gen)
    ref = F.conv2d(x, w, **kw)
    out = ring_conv2d(x, w, **kw)
    assert out.dtype == torch.int64 and out.shape == ref.shape
    assert torch.equal(out, ref)
    assert torch.equal(ring_conv2d(x, LimbOperand(w), **kw), ref)
    assert torch.equal(ring_conv2d(LimbOperand(x), w, **kw), ref)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("chunk", [1, 5, 8, 13])
def test_conv2d_tiny_chunks(gen, monkeypatch, chunk):
    """With a tiny CHUNK the inner dimension is cut into channel and kernel-row pieces (and matmuls into
    many chunks); results must not change."""
    monkeypatch.setattr(ring, "CHUNK", chunk)
    x = rand_ring(2, 4, 7, 8, gen=gen)
    for w, kw in [
        (rand_ring(3, 4, 3, 3, gen=gen), dict(padding=1)),
        (rand_ring(4, 2, 3, 2, gen=gen), dict(padding=(2, 1), stride=(2, 1), dilation=(2, 1), groups=2)),
        (rand_ring(3, 4, 4, 3, gen=gen), dict(padding="same")),
        (rand_ring(2, 4, 5, 1, gen=gen), dict(stride=2)),
    ]:
        if w.shape[-1] > chunk:
            with pytest.raises(NotImplementedError):
                ring_conv2d(x, w, **kw)
            continue
        assert torch.equal(ring_conv2d(x, w, **kw), F.conv2d(x, w, **kw))
    a, b = rand_ring(3, 20, gen=gen), rand_ring(20, 2, gen=gen)
    assert torch.equal(ring_matmul(a, b), a @ b)


def test_conv2d_large_kernel(gen):
    """kh*kw > CHUNK: kernel rows are chunked."""
    x, w = rand_ring(1, 1, 36, 34, gen=gen), rand_ring(2, 1, 33, 33, gen=gen)
    assert torch.equal(ring_conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))


def test_conv2d_noncontiguous(gen):
    x = rand_ring(2, 3, 12, 7, gen=gen)[:, :, ::2, :]
    w = rand_ring(3, 4, 3, 3, gen=gen).transpose(0, 1)[:, :3]
    assert torch.equal(ring_conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))


def test_conv2d_extremes():
    x = torch.full((2, 128, 4, 4), I64_MIN, dtype=torch.int64)
    x[1] = LIMB_EXTREMES[0]
    w = torch.full((3, 128, 3, 3), LIMB_EXTREMES[0], dtype=torch.int64)
    w[1] = I64_MAX
    w[2] = -1
    assert torch.equal(ring_conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))


def test_conv2d_errors(gen):
    x, w = rand_ring(1, 4, 5, 5, gen=gen), rand_ring(2, 3, 3, 3, gen=gen)
    with pytest.raises(RuntimeError):
        ring_conv2d(x, w)  # channel mismatch
    with pytest.raises(RuntimeError):
        ring_conv2d(x, rand_ring(3, 2, 3, 3, gen=gen), groups=2)  # O not divisible by groups
    with pytest.raises(RuntimeError):
        ring_conv2d(x, rand_ring(2, 4, 7, 7, gen=gen))  # kernel larger than the input
    with pytest.raises(TypeError):
        ring_conv2d(x.double(), w)
    with pytest.raises(ValueError):
        ring_conv2d(x, rand_ring(2, 4, 3, 3, gen=gen), padding="full")


# ------------------------------------------------------------------------------------------ properties
@settings(max_examples=60, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), max_size=2),
    m=st.integers(1, 6),
    k=st.integers(0, 9),
    n=st.integers(1, 6),
    vec=st.sampled_from(["", "a", "b", "ab"]),
    pre=st.sampled_from(["", "a", "b", "ab"]),
    seed=st.integers(0, 2**31 - 1),
    extremes=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_matmul_property(batch, m, k, n, vec, pre, seed, extremes):
    g = torch.Generator().manual_seed(seed)
    sa = (k,) if "a" in vec else tuple(batch) + (m, k)
    sb = (k,) if "b" in vec else (k, n)
    a, b = rand_ring(*sa, gen=g, extremes=extremes), rand_ring(*sb, gen=g, extremes=extremes)
    ref = torch.matmul(a, b)
    out = ring_matmul(LimbOperand(a) if "a" in pre else a, LimbOperand(b) if "b" in pre else b)
    assert torch.equal(out, ref)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_matmul_property_explicit_values(data):
    """Entries drawn by hypothesis itself, so it can shrink to (and find) edge values."""
    m, k, n = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    ints = st.integers(I64_MIN, I64_MAX) | st.sampled_from(EXTREMES + LIMB_EXTREMES)
    a = torch.tensor(data.draw(st.lists(ints, min_size=m * k, max_size=m * k)), dtype=torch.int64).view(m, k)
    b = torch.tensor(data.draw(st.lists(ints, min_size=k * n, max_size=k * n)), dtype=torch.int64).view(k, n)
    assert torch.equal(ring_matmul(a, b), a @ b)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 2),
    cg=st.integers(1, 3),
    groups=st.integers(1, 2),
    og=st.integers(1, 2),
    hw=st.tuples(st.integers(3, 7), st.integers(3, 7)),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    seed=st.integers(0, 2**31 - 1),
)
def test_conv2d_property(n, cg, groups, og, hw, k, stride, padding, dilation, seed):
    if any(hw[i] + 2 * padding[i] < dilation[i] * (k[i] - 1) + 1 for i in range(2)):
        return  # kernel larger than the padded input
    g = torch.Generator().manual_seed(seed)
    x = rand_ring(n, cg * groups, *hw, gen=g)
    w = rand_ring(og * groups, cg, *k, gen=g)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    assert torch.equal(ring_conv2d(x, w, **kw), F.conv2d(x, w, **kw))


# -------------------------------------------------------------------------------------------------- cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(gen):
    a, b = rand_ring(33, 2100, gen=gen), rand_ring(2100, 17, gen=gen)
    out = ring_matmul(a.cuda(), b.cuda())
    assert out.is_cuda and torch.equal(out.cpu(), a @ b)
    assert torch.equal(ring_matmul(a.cuda(), LimbOperand(b.cuda())).cpu(), a @ b)
    for xs, ws, kw in CONV_CASES + [((2, 4, 9, 9), (3, 4, 1, 5), dict(padding=(0, 2)))]:  # 1xk: FFT-prone
        x, w = rand_ring(*xs, gen=gen), rand_ring(*ws, gen=gen)
        out = ring_conv2d(x.cuda(), w.cuda(), **kw)
        assert out.is_cuda and torch.equal(out.cpu(), F.conv2d(x, w, **kw))


def _bench(m=1000, k=784, n=500, reps=5):  # pragma: no cover - manual timing, `python tests/mpc/test_ring.py`
    g = torch.Generator().manual_seed(0)
    a, b = rand_ring(m, k, gen=g), rand_ring(k, n, gen=g)

    def median(f):
        f()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2]

    bl = LimbOperand(b)
    print(f"[{m},{k}]@[{k},{n}] on {torch.get_num_threads()} threads, median of {reps}:")
    print(f"  ring_matmul             {median(lambda: ring_matmul(a, b)) * 1e3:8.1f} ms")
    print(f"  ring_matmul(LimbOperand){median(lambda: ring_matmul(a, bl)) * 1e3:8.1f} ms")
    print(f"  torch int64 matmul      {median(lambda: a @ b) * 1e3:8.1f} ms")


if __name__ == "__main__":  # pragma: no cover
    _bench()
