"""Exact matrix products and convolutions in the ring Z_2^64, computed with float64 GEMMs.

Secret shares are int64 tensors read as elements of Z_2^64 (int64 add/mul/shift wrap around).  torch's
int64 matmul is slow on CPU (no BLAS, ~1 GOPS) and missing on CUDA, so :func:`ring_matmul` and
:func:`ring_conv2d` compute the same result with float64 GEMMs on small limbs.

Scheme
------
Every int64 ``a`` is split into three *balanced* (signed) limbs of 22, 20 and 22 bits::

    a = a0 + a1 * 2^22 + a2 * 2^42   (mod 2^64),   a0 in [-2^21, 2^21),  a1 in [-2^19, 2^19),  a2 in [-2^21, 2^21]

(``a0`` is the sign-extended low 22 bits of ``a``, ``a1`` the sign-extended low 20 bits of
``r = (a - a0) >> 22`` and ``a2 = (r - a1) >> 20``; ``a2`` is only ever needed mod 2^22).  Modulo 2^64 only
the limb pairs of weight below 2^64 survive (22 + 42 = 64, so ``a1b2``, ``a2b1``, ``a2b2`` vanish; with three
equal 21-bit limbs the pairs of weight 2^63 would still count)::

    a @ b = a0b0 + 2^22 (a0b1 + a1b0) + 2^42 (a0b2 + a2b0) + 2^44 a1b1    (mod 2^64)

The middle term uses Karatsuba, ``a0b1 + a1b0 = (a0+a1)(b0+b1) - a0b0 - a1b1``, and ``a1b1`` is needed anyway,
so one product costs **5 float64 GEMMs** of the original shape (the schoolbook split needs 6)::

    P0 = a0 @ b0,  P1 = a1 @ b1,  P2 = (a0+a1) @ (b0+b1),  T = a0 @ b2 + a2 @ b0
    a @ b = P0 + 2^22 (P2 - P0 - P1) + 2^42 T + 2^44 P1    (mod 2^64, int64 wrap-around)

Splitting an operand costs a few elementwise int64 ops; a :class:`LimbOperand` splits a fixed operand
(model weights, cached masks) once, keeping ``a0, a1, a2, a0+a1`` (4x its memory) for reuse.

Exactness
---------
float64 represents every integer of magnitude <= 2^53 exactly, and a GEMM's result is exact, whatever the
summation order, blocking or FMA use of the BLAS, when every partial sum is such an integer, which holds when
the sum of the absolute values of the terms is <= 2^53.  One term is at most 2^42 in P0 (``|a0 b0|``), 2^38 in
P1, ``(2^21 + 2^19)^2 = 1.5625 * 2^42`` in P2 and 2^42 in each half of T.  The inner dimension is therefore
cut into chunks of at most ``CHUNK = 1024`` terms, giving ``|P0| <= 2^52``, ``|P1| <= 2^48``,
``|P2| <= 1.5625 * 2^52`` and ``|T| <= 2^52 + 2^52 = 2^53``; the float64 difference ``P2 - P0 - P1`` (true
values ``a0b1 + a1b0 + a1b1 <= 2.25 * 2^50``, then ``a0b1 + a1b0 <= 2^51``) is exact as well.  Each chunk's
four float64 results are converted to int64 (exact), shifted and added with int64 wrap-around; chunks add
mod 2^64.  The bound is tight: at ``CHUNK = 1040`` the edge-value tests fail.

Cost: 5 GEMMs (``M*N*K`` multiply-adds each) per product, plus O(M*K + K*N + M*N) elementwise work
(splitting, four float64 -> int64 conversions, shifts and adds).  On the 2-core CPU this was written on,
``[1000,784] @ [784,500]`` takes ~0.1 s against ~1 s for torch's int64 matmul.  Convolutions run the same 5
products as 4 float64 ``F.conv2d`` calls (``x0`` meets ``w0`` and ``w2`` stacked along the output channels, so
its im2col is shared).

Only exact kernels touch the limbs: ``torch.matmul`` and float64 convolutions, which on CPU are direct or
im2col + GEMM; on CUDA cuDNN is switched off for them because it may pick an FFT algorithm for float64, so
torch's im2col + cuBLAS path runs.  Everything stays on the inputs' device (CPU or CUDA, same code).
Outside the guarantee: an opt-in *emulated* FP64 GEMM mode (e.g. cuBLAS FP64 emulation on some GPUs);
autocast never touches float64.
"""
from __future__ import annotations

import functools
import operator
from typing import Sequence, Union

import torch
import torch.nn.functional as F

__all__ = [
    "CHUNK",
    "LIMB_SHIFTS",
    "LimbOperand",
    "join_limbs",
    "ring_conv2d",
    "ring_matmul",
    "split_limbs",
    "wrap_add",
]

LIMB_SHIFTS = (0, 22, 42)  # weights of the limbs a0, a1, a2: a = a0 + a1 * 2^22 + a2 * 2^42 (mod 2^64)
CHUNK = 1024  # max inner-dimension terms per float64 GEMM (see "Exactness" in the module docstring)

# int64 -> float64 for |v| < 2^51 without the int64 -> float64 conversion (scalar, slow on AVX2 CPUs):
# the float64 with bit pattern MAGIC_BITS + v is exactly MAGIC + v.
_MAGIC = 6755399441055744.0  # 1.5 * 2^52
_MAGIC_BITS = 0x4338000000000000


def _check_int64(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or LimbOperand, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be an int64 ring tensor, got {t.dtype}")


def _split4(t: torch.Tensor) -> torch.Tensor:
    """float64 ``[4, *t.shape]`` buffer holding the limbs ``a0, a1, a2`` and the Karatsuba sum ``a0 + a1``."""
    buf = torch.empty((4,) + tuple(t.shape), dtype=torch.float64, device=t.device)
    bits = buf.view(torch.int64)  # compute the integer limbs in place, then reinterpret them as floats
    l0, l1, l2 = bits[0], bits[1], bits[2]
    torch.bitwise_left_shift(t, 42, out=l0).bitwise_right_shift_(42)  # a0: sign-extended low 22 bits
    torch.sub(t, l0, out=l2).bitwise_right_shift_(22)  # r = (a - a0) >> 22; wraps, but only r mod 2^42 matters
    torch.bitwise_left_shift(l2, 44, out=l1).bitwise_right_shift_(44)  # a1: sign-extended low 20 bits of r
    l2.sub_(l1).bitwise_right_shift_(20)  # a2 = (r - a1) >> 20, in [-2^21, 2^21]
    bits[:3].add_(_MAGIC_BITS)
    buf[:3].sub_(_MAGIC)
    torch.add(buf[0], buf[1], out=buf[3])
    return buf


def split_limbs(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 limbs ``(a0, a1, a2)`` with ``t == a0 + a1 * 2^22 + a2 * 2^42 (mod 2^64)``.

    Integers with ``a0`` in ``[-2^21, 2^21)``, ``a1`` in ``[-2^19, 2^19)``, ``a2`` in ``[-2^21, 2^21]``; same shape
    and device as ``t``.
    Inverse: :func:`join_limbs`.
    """
    _check_int64(t, "t")
    buf = _split4(t)
    return buf[0], buf[1], buf[2]


def _to_int(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.int64)


def join_limbs(limbs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`split_limbs`: ``a0 + a1 * 2^22 + a2 * 2^42 mod 2^64`` as int64 (limbs must be
    integer-valued floats of magnitude at most 2^53)."""
    if len(limbs) > len(LIMB_SHIFTS):
        raise ValueError(f"join_limbs takes at most {len(LIMB_SHIFTS)} limbs")
    out = None
    for shift, limb in zip(LIMB_SHIFTS, limbs):
        v = _to_int(limb)
        if shift:
            v.bitwise_left_shift_(shift)
        out = v if out is None else out.add_(v)
    if out is None:
        raise ValueError("join_limbs needs at least one limb")
    return out


def wrap_add(*ts: torch.Tensor) -> torch.Tensor:
    """Sum of int64 ring tensors mod 2^64 (broadcasting like ``+``); int64 addition wraps around."""
    if not ts:
        raise ValueError("wrap_add needs at least one tensor")
    return functools.reduce(operator.add, ts)


class LimbOperand:
    """An int64 ring operand split into float64 limbs once, for reuse in many products.

    ``LimbOperand(t)`` keeps the limbs (4x the memory of ``t`` in float64: ``a0, a1, a2, a0+a1``), not ``t``.
    Pass it to :func:`ring_matmul` (either side) or as ``x`` / ``w`` of :func:`ring_conv2d`; it is never
    re-split.  ``.mT`` is the matrix transpose (a view, no re-split); :meth:`to_int64` rebuilds ``t``.
    """

    __slots__ = ("_buf",)

    def __init__(self, t: Union[torch.Tensor, "LimbOperand"]):
        if isinstance(t, LimbOperand):
            self._buf = t._buf
            return
        _check_int64(t, "LimbOperand input")
        self._buf = _split4(t)

    @classmethod
    def _from_buf(cls, buf: torch.Tensor) -> "LimbOperand":
        obj = cls.__new__(cls)
        obj._buf = buf
        return obj

    @property
    def limbs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float64 limbs ``(a0, a1, a2)`` as returned by :func:`split_limbs`."""
        return self._buf[0], self._buf[1], self._buf[2]

    @property
    def shape(self) -> torch.Size:
        return self._buf.shape[1:]

    @property
    def device(self) -> torch.device:
        return self._buf.device

    @property
    def dtype(self) -> torch.dtype:
        """The ring dtype this operand stands for (int64)."""
        return torch.int64

    def dim(self) -> int:
        return self._buf.dim() - 1

    @property
    def mT(self) -> "LimbOperand":
        if self.dim() < 2:
            raise RuntimeError("mT needs an operand with at least 2 dimensions")
        return LimbOperand._from_buf(self._buf.transpose(-1, -2))

    def to(self, device) -> "LimbOperand":
        return LimbOperand._from_buf(self._buf.to(device))

    def to_int64(self) -> torch.Tensor:
        return join_limbs(self.limbs)

    def __repr__(self) -> str:
        return f"LimbOperand(shape={tuple(self.shape)}, device={self.device})"


def _buf_of(x, name: str) -> torch.Tensor:
    if isinstance(x, LimbOperand):
        return x._buf
    _check_int64(x, name)
    return _split4(x)


def _combine(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """int64 ``P0 + 2^22 (P2 - P0 - P1) + 2^42 T + 2^44 P1`` mod 2^64 from one chunk's exact float64
    products.  Overwrites ``p2``."""
    p2.sub_(p0).sub_(p1)  # a0b1 + a1b0, exact (see module docstring)
    out = _to_int(p0)
    out.add_(_to_int(p2).bitwise_left_shift_(22))
    out.add_(_to_int(top).bitwise_left_shift_(42))
    out.add_(_to_int(p1).bitwise_left_shift_(44))
    return out


def _limb_products(mm, A: Sequence[torch.Tensor], B: Sequence[torch.Tensor]) -> torch.Tensor:
    """Karatsuba limb products for one chunk; ``A``/``B`` are ``(a0, a1, a2, a0+a1)``; ``mm`` is bilinear."""
    a0, a1, a2, a01 = A
    b0, b1, b2, b01 = B
    top = mm(a0, b2)
    top.add_(mm(a2, b0))
    return _combine(mm(a0, b0), mm(a1, b1), mm(a01, b01), top)


def ring_matmul(a: Union[torch.Tensor, LimbOperand], b: Union[torch.Tensor, LimbOperand]) -> torch.Tensor:
    """Exact ``a @ b mod 2^64`` for int64 tensors; same broadcasting/shape rules as ``torch.matmul``
    (1-D, 2-D, batched).  Either operand may be a :class:`LimbOperand`.  Result is int64 on the inputs' device."""
    A = _buf_of(a, "a")
    B = _buf_of(b, "b")
    if A.dim() < 2 or B.dim() < 2:
        raise RuntimeError("ring_matmul: both arguments need at least 1 dimension")
    k = A.shape[-1]
    b_vec = B.dim() == 2  # b is 1-D
    kb = B.shape[1] if b_vec else B.shape[-2]
    if k != kb:
        raise RuntimeError(
            f"ring_matmul: inner dimensions differ: a {tuple(A.shape[1:])} and b {tuple(B.shape[1:])}"
        )
    out = None
    for k0 in range(0, max(k, 1), CHUNK):
        k1 = min(k0 + CHUNK, k)
        As = A[..., k0:k1] if k > CHUNK else A
        Bs = (B[:, k0:k1] if b_vec else B[..., k0:k1, :]) if k > CHUNK else B
        part = _limb_products(torch.matmul, tuple(As.unbind(0)), tuple(Bs.unbind(0)))
        out = part if out is None else out.add_(part)
    return out


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) == 1:
        return (int(v[0]), int(v[0]))
    if len(v) != 2:
        raise ValueError(f"ring_conv2d: {name} must be an int or a pair, got {v}")
    return (int(v[0]), int(v[1]))


def _float_conv(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups: int) -> torch.Tensor:
    """float64 ``F.conv2d`` restricted to exact (direct / im2col + GEMM) algorithms.

    On CPU float64 convolutions are direct or im2col + GEMM.  cuDNN may pick an FFT algorithm for float64
    (e.g. 1xk filters), which rounds, so it is switched off for the call (torch then uses im2col + cuBLAS GEMM)."""
    if x.device.type == "cuda":
        with torch.backends.cudnn.flags(enabled=False):
            return F.conv2d(x, w, None, stride, padding, dilation, groups)
    return F.conv2d(x, w, None, stride, padding, dilation, groups)


def ring_conv2d(
    x: Union[torch.Tensor, LimbOperand],
    w: Union[torch.Tensor, LimbOperand],
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> torch.Tensor:
    """Exact ``F.conv2d(x, w) mod 2^64`` for int64 ``x [N,C,H,W]`` and ``w [O,C/groups,kh,kw]`` (no bias).

    ``stride``, ``padding`` (int, pair, ``'valid'`` or ``'same'``), ``dilation`` and ``groups`` as in
    ``F.conv2d``; either operand may be a :class:`LimbOperand`.  Runs the 5 Karatsuba limb products as float64
    convolutions; when the inner dimension ``C/groups*kh*kw`` exceeds ``CHUNK`` it is cut into chunks of input
    channels (and of kernel rows when ``kh*kw > CHUNK``), each convolved separately and added mod 2^64.
    """
    X = _buf_of(x, "x")
    W = _buf_of(w, "w")
    if X.dim() != 5 or W.dim() != 5:
        raise RuntimeError(
            "ring_conv2d expects x [N,C,H,W] and w [O,C/groups,kh,kw], "
            f"got {tuple(X.shape[1:])} and {tuple(W.shape[1:])}"
        )
    n, c, h, wd = X.shape[1:]
    o, cg, kh, kw = W.shape[1:]
    if groups < 1 or c != cg * groups or o % groups:
        raise RuntimeError(
            f"ring_conv2d: x with {c} channels and w {tuple(W.shape[1:])} do not match groups={groups} "
            f"(need C == {cg} * groups and O divisible by groups)"
        )
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError("ring_conv2d: padding='same' is not supported for strided convolutions")
            th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
            pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)  # like torch: the odd pixel goes right/bottom
        else:
            raise ValueError(f"ring_conv2d: unknown padding {padding!r}")
    else:
        ph, pw = _pair(padding, "padding")
        pads = (pw, pw, ph, ph)  # F.pad order: left, right, top, bottom
    ho = (h + pads[2] + pads[3] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + pads[0] + pads[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if ho <= 0 or wo <= 0:
        raise RuntimeError(f"ring_conv2d: kernel {kh}x{kw} (dilation {dilation}) is larger than the padded input")
    if kw > CHUNK:
        raise NotImplementedError(f"ring_conv2d: kernel width {kw} > CHUNK={CHUNK}")
    # chunks of the inner dimension: (input channels per group) x (kernel rows), at most CHUNK terms each
    rows = min(kh, CHUNK // kw)
    chans = max(1, min(cg, CHUNK // (rows * kw)))
    conv_pad = (pads[2], pads[0])
    if pads[0] != pads[1] or pads[2] != pads[3] or (rows < kh and any(pads)):
        # zero limbs are the limbs of zero: pad once, then convolve without padding
        X = F.pad(X.reshape(4 * n, c, h, wd), pads).reshape(4, n, c, h + pads[2] + pads[3], wd + pads[0] + pads[1])
        conv_pad = (0, 0)

    def conv(xl: torch.Tensor, wl: torch.Tensor) -> torch.Tensor:
        return _float_conv(xl, wl, stride, conv_pad, dilation, groups)[..., :ho, :wo]

    out = None
    for c0 in range(0, cg, chans):
        c1 = min(c0 + chans, cg)
        Xc = X
        if c1 - c0 < cg:  # channels c0:c1 of every group
            hp, wp = X.shape[-2:]
            Xc = X.reshape(4, n, groups, cg, hp, wp)[:, :, :, c0:c1].reshape(4, n, groups * (c1 - c0), hp, wp)
        for r0 in range(0, kh, rows):
            Wc = W[:, :, c0:c1, r0:r0 + rows]
            Xr = Xc[..., r0 * dilation[0]:, :] if r0 else Xc  # kernel row r0 reads input rows from r0 * dilation
            part = _conv_limb_products(conv, tuple(Xr.unbind(0)), tuple(Wc.unbind(0)), groups)
            out = part if out is None else out.add_(part)
    return out


def _conv_limb_products(conv, X: Sequence[torch.Tensor], W: Sequence[torch.Tensor], groups: int) -> torch.Tensor:
    """:func:`_limb_products` for convolutions with one float64 convolution per input limb (4 instead of 5):
    ``x0`` is convolved with ``w0`` and ``w2`` stacked along the output channels, sharing one im2col."""
    x0, x1, x2, xs = X
    w0, w1, w2, ws = W
    o = w0.shape[0]
    k = w0.shape[1:]
    og = o // groups
    w02 = torch.stack((w0.reshape(groups, og, *k), w2.reshape(groups, og, *k)), 1).reshape(2 * o, *k)
    y = conv(x0, w02)  # output channels ordered (group, [w0, w2], og) to keep each group's channels together
    n, hw = y.shape[0], tuple(y.shape[2:])
    y = y.reshape(n, groups, 2, og, *hw)
    p0, top = y[:, :, 0], y[:, :, 1]
    split = (n, groups, og) + hw
    top.add_(conv(x2, w0).reshape(split))
    out = _combine(p0, conv(x1, w1).reshape(split), conv(xs, ws).reshape(split), top)
    return out.reshape(n, o, *hw)
