"""Helpers every op family uses: wrapping results, fixed-point scales, public operands, logical dims."""
from __future__ import annotations

import operator

import torch

from .. import protocols as P
from .. import transforms
from ..tensor import ShareTensor

Tensor = torch.Tensor

_KEEP = object()


def _wrap(like: ShareTensor, shares: Tensor, frac: int, mask=None, skipped=_KEEP) -> ShareTensor:
    """A new value of ``like``'s session; it keeps ``like``'s skipped-softmax mark unless told otherwise."""
    return ShareTensor(shares, like._session, frac, mask, like._skipped if skipped is _KEEP else skipped)


def _fixed(x: ShareTensor) -> ShareTensor:
    """``x`` with at most ``precision_bits`` fractional bits (truncates a pending product)."""
    f = x._session.precision_bits
    if x._frac <= f:
        return x
    return _wrap(x, P.truncate(x._session, x._shares, x._frac - f), f)


def _lift(x: ShareTensor, frac: int) -> Tensor:
    return x._shares * (1 << (frac - x._frac)) if frac > x._frac else x._shares


def _public(sess, v, frac: int) -> Tensor:
    """Encode a public operand at ``frac`` fractional bits, with the same range/NaN/dtype checks as an input
    (integers too: ``x + 2**50`` would wrap around the ring silently)."""
    # A value with more fractional bits than precision_bits (a pending product) still takes public
    # operands in the normal range: encode at precision_bits, then shift (exact).
    f = min(frac, sess.precision_bits)
    encoded = sess.encoder.encode(torch.as_tensor(v), f)
    sess.comm.note_public("public operand", encoded)  # every party must use the same (see note_public)
    return encoded.to(sess.device) * (1 << (frac - f))


def _is_int_public(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, Tensor) and not isinstance(v, ShareTensor) and not v.is_floating_point()


def _shape_of(x: ShareTensor) -> tuple:
    return tuple(x._shares.shape[1:])


def _step(x: ShareTensor, step: tuple) -> ShareTensor:
    x._session.comm.note_public("shape step", detail=step)  # a permutation, an index, a shape: public, the same for all
    shares = transforms.apply(x._shares, (step,), party_axis=True)
    mask = x.mask.then(step) if x.mask is not None else None
    return _wrap(x, shares, x._frac, mask)


def _reshape_to(x: ShareTensor, out_shape) -> ShareTensor:
    out_shape = tuple(out_shape)
    return x if out_shape == _shape_of(x) else _step(x, ("reshape", out_shape))


def _meta_shape(x: ShareTensor, fn, *args, **kwargs) -> tuple:
    return tuple(fn(torch.empty(_shape_of(x), device="meta"), *args, **kwargs).shape)


def _norm(d: int, nd: int) -> int:
    """A logical dim in ``[0, nd)`` (a 0-d value accepts 0 and -1, as torch does). Every op that takes a
    dim goes through here (or :func:`_dims`), so no dim can ever reach the leading party axis."""
    lim = max(nd, 1)
    try:
        d = operator.index(d)
    except TypeError:
        raise TypeError(f"Expected an integer dim, but got {type(d).__name__}.") from None
    if not -lim <= d < lim:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-lim}, {lim - 1}], but got {d})")
    return d % lim


def _dims(x: ShareTensor, dim) -> tuple[int, ...]:
    """The logical dims a reduction over ``dim`` covers: ``None`` and an empty list mean every dim (torch's
    rule); a 0-d value has none. Callers add 1 to reach share dims, so the party axis is never reduced."""
    nd = len(_shape_of(x))
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(nd))
    dims = tuple(_norm(d, nd) for d in ((dim,) if not isinstance(dim, (tuple, list)) else dim))
    if len(set(dims)) != len(dims):
        raise RuntimeError(f"dim {dims} has repeated entries: each dim may appear once.")
    return dims if nd else ()


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _fused_m(x: ShareTensor) -> tuple[Tensor, int | None, int]:
    """(shares, truncation bits to fuse or None, frac of the result)."""
    f = x._session.precision_bits
    if x._frac > f:
        return x._shares, x._frac - f, f
    return x._shares, None, x._frac


def to_precision(x: ShareTensor) -> ShareTensor:
    """``x`` truncated to ``precision_bits`` fractional bits if it carries more (one round)."""
    return _fixed(x)
