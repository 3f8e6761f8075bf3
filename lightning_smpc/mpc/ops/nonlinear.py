"""ReLU, comparisons, argmax/max/amax: the comparison protocols (a pending product's truncation fused in)."""
from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn.functional as F

from .. import protocols as P
from ..errors import UnsupportedOpError
from ..tensor import ShareTensor, SkippedSoftmax, implements
from ._common import Tensor, _dims, _fused_m, _norm, _reshape_to, _shape_of, _wrap
from .arithmetic import _add
from .layers import _check_skipped_argmax
from .shape import _permute

MaxResult = namedtuple("MaxResult", ["values", "indices"])

@implements(F.relu, torch.relu, Tensor.relu, family="nonlinear", limit="compare",
            note="One comparison: 2 + ceil(log2(compare_bits / compare_digit_bits)) rounds (at 32 compare bits, 4 "
            "with 8-bit digits, 5 with 4-bit); a pending product's truncation is fused in.")
def _h_relu(x, inplace=False):
    shares, m, frac = _fused_m(x)
    return _wrap(x, P.relu(x._session, shares, m), frac, None)


_CMP_NOTE = "One comparison of the difference (rounds as relu); the result is a shared 0/1."


def _cmp(x, y, strict: bool):
    """Shares of ``[x >= y]`` (``[x > y] = 1 - [y >= x]`` when strict); either operand may be public."""
    d = _add(y, x, -1) if strict else _add(x, y, -1)
    shares, m, _ = _fused_m(d)
    bit = P.compare_bit(d._session, shares, m)
    if strict:
        bit = -bit
        if d._session.holds_first:
            bit[0] += 1
    return ShareTensor(bit, d._session, 0)


@implements(Tensor.__ge__, Tensor.ge, torch.ge, family="nonlinear", limit="pairwise", note=_CMP_NOTE)
def _h_ge(x, y):
    return _cmp(x, y, strict=False)


@implements(Tensor.__gt__, Tensor.gt, torch.gt, family="nonlinear", limit="pairwise", note=_CMP_NOTE)
def _h_gt(x, y):
    return _cmp(x, y, strict=True)


@implements(Tensor.__le__, Tensor.le, torch.le, family="nonlinear", limit="pairwise", note=_CMP_NOTE)
def _h_le(x, y):
    return _cmp(y, x, strict=False)


@implements(Tensor.__lt__, Tensor.lt, torch.lt, family="nonlinear", limit="pairwise", note=_CMP_NOTE)
def _h_lt(x, y):
    return _cmp(y, x, strict=True)


def _move_last(x: ShareTensor, dim: int) -> ShareTensor:
    nd = len(_shape_of(x))
    d = _norm(dim, nd)
    # move ``d`` to the end keeping the other dims in order (a transpose would reorder them for nd >= 3)
    return x if d == nd - 1 else _permute(x, tuple(i for i in range(nd) if i != d) + (d,))


def _argmax_parts(x: ShareTensor, dim, keepdim: bool, want_max: bool):
    x = _check_skipped_argmax(x, dim)
    if dim is None:
        x, dim = _reshape_to(x, (1, x.numel())), -1
    nd = len(_shape_of(x))
    d = _norm(dim, nd)
    x._session.comm.note_public("argmax over", detail=d)
    cached = x._cache.get(("argmax", d, True)) or (None if want_max else x._cache.get(("argmax", d, False)))
    if cached is None:  # one secure argmax per value and dim (e.g. a metric and reveal="labels" share it)
        y = _move_last(x, d)
        shares, m, frac = _fused_m(y)
        onehot, mx = P.argmax_onehot(x._session, shares, m, want_max)
        x._cache[("argmax", d, want_max)] = cached = (onehot, mx, frac)
    onehot, mx, frac = cached
    n_cls = onehot.shape[-1]
    index = (onehot * torch.arange(n_cls, device=onehot.device)).sum(-1)
    if keepdim:
        index = index.unsqueeze(d + 1)
        mx = mx.unsqueeze(d + 1) if mx is not None else None
    return onehot, index, mx, frac


@implements(Tensor.argmax, torch.argmax, family="nonlinear", limit="pairwise", softmax_safe=True,
            note="All C(C-1)/2 pairwise comparisons of the C entries at once: one round more than a comparison, for "
            "any C; computed once per value and dim.")
def _h_argmax(x, dim=None, keepdim=False):
    _, index, _, _ = _argmax_parts(x, dim, keepdim, False)
    out = ShareTensor(index, x._session, 0)
    if dim is None:
        out = _reshape_to(out, (1,) * len(_shape_of(x)) if keepdim else ())
    return out


def argmax_onehot(x: ShareTensor, dim: int = -1) -> ShareTensor:
    """One-hot (scale 0) of the argmax along ``dim``, moved to the last axis. Ties: first index."""
    onehot, _, _, _ = _argmax_parts(x, dim, False, False)
    return ShareTensor(onehot, x._session, 0)


@implements(Tensor.amax, torch.amax, family="nonlinear", limit="pairwise", softmax_safe=True,
            note="As max over one dim, or over all dims without `keepdim`; several (not all) dims are refused.")
def _h_amax(x, dim=(), keepdim=False):
    dims = _dims(x, dim)
    if len(dims) == 1:
        return _h_max(x, dims[0], keepdim).values
    if len(dims) == len(_shape_of(x)) and not keepdim:
        return _h_max(x)
    raise UnsupportedOpError("amax over several (but not all) dims is not supported on shares; reshape first.")


@implements(Tensor.max, torch.max, family="nonlinear", limit="pairwise", softmax_safe=True,
            note="The argmax protocol, with the maximum too; elementwise `max(x, y)` is refused.")
def _h_max(x, dim=None, keepdim=False):
    if isinstance(dim, ShareTensor) or (dim is not None and not isinstance(dim, int)):
        raise UnsupportedOpError("max(x, y) elementwise is not supported; use torch.maximum-free code or relu(x-y)+y.")
    x = _check_skipped_argmax(x, dim)  # the real softmax where the skipped one's dim is not this max's
    _, index, mx, frac = _argmax_parts(x, dim, keepdim, True)
    # the max of a skipped softmax is the logits' maximum, not a probability: mark it unusable
    values = ShareTensor(mx, x._session, frac, None, None if x._skipped is None else SkippedSoftmax(None))
    if dim is None:
        return _reshape_to(values, ())
    return MaxResult(values, ShareTensor(index, x._session, 0))
