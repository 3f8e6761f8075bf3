"""Beaver-triple products: elementwise mul, matmul, linear (x @ W^T) and conv2d, for n parties."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..kinds import Beaver
from ..mask import Mask, MaskHandle
from ..transforms import align_party
from ..ring import LimbOperand, ring_conv2d, ring_matmul
from ._cost import COSTS, Cost, nbytes, protocol

if TYPE_CHECKING:
    from ..runtime import PartyContext


def _apply(op: str, x, y, kwargs: dict):
    if op == "mul":
        return x * y
    if op == "matmul":
        return ring_matmul(x, y)
    if op == "linear":  # the right operand arrives transposed already (see _right_operands)
        return ring_matmul(x, y)
    if op == "conv2d":
        return _party_conv(x, y, kwargs)
    raise ValueError(op)


def _party_conv(x, w, kwargs):
    """conv2d where either operand may carry a leading party axis."""
    if x.dim() == 5:  # [P, N, C, H, W] -> fold parties into the batch
        p = x.shape[0]
        out = ring_conv2d(x.reshape((-1,) + tuple(x.shape[2:])), w, **kwargs)
        return out.reshape((p, -1) + tuple(out.shape[1:]))
    if w.dim() == 5:  # [P, O, C, kh, kw] -> one conv per party
        return torch.stack([ring_conv2d(x, wp, **kwargs) for wp in w])
    return ring_conv2d(x, w, **kwargs)


def _unopened(n, shape_x, shape_y, fresh_x=True, fresh_y=True, **s):
    numel = (fresh_x and _numel(shape_x)) + (fresh_y and _numel(shape_y))
    return (n - 1) * nbytes(numel, 64) if numel else 0


def _numel(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _rounds(n, fresh_x=True, fresh_y=True, **s):
    return 1 if (fresh_x or fresh_y) else 0


for _op, _offline in (("mul", "[a], [b], [a*b]"), ("matmul", "[A], [B], [A@B]"), ("linear", "[A], [B], [A@B^T]")):
    COSTS[f"beaver_{_op}"] = Cost(_rounds, _unopened, _offline + " (fresh masks only; reused masks need only [c])")


@protocol("beaver_conv2d", rounds=_rounds, bytes_sent=_unopened, offline="[A], [K], [conv(A,K)] (fresh masks only)")
def beaver(sess: PartyContext, op: str, x, y, **kwargs) -> torch.Tensor:
    """Shares of ``op(x, y)`` for a bilinear ``op`` with a dealer triple ``c = op(a, b)``.

    Protocol: 1. operands that carry no opened mask open ``x - a`` / ``y - b`` (one round for both);
    the opened masks are cached on the operands; 2. each party computes
    ``op(eps, [b]) + op([a], delta) + [c]``, party 0 adds ``op(eps, delta)``.

    ``x`` and ``y`` are shared values with ``.shares`` and ``.mask`` (a :class:`~..mask.Mask` or None).
    Cost: 1 round and ``8 * numel`` bytes per unopened operand to each other party; 0 rounds when both
    operands are already opened (e.g. a client input times model weights).
    Security: every opened value is masked by a fresh uniform dealer mask used for this operand only.
    """
    masks = [x.mask, y.mask]
    shapes = (tuple(x.shares.shape[1:]), tuple(y.shares.shape[1:]))
    req = Beaver.request(op, tuple(sorted(kwargs.items())), shapes[0], shapes[1],
                         *(m.transform if m else () for m in masks), refs=tuple(m.handle.id if m else None for m in masks))
    mat = sess.dealer.request(req)
    created = iter(mat.created)
    fresh = []
    for i, (v, key) in enumerate(((x, "a"), (y, "b"))):
        if masks[i] is None:
            fresh.append((i, v, mat[key], next(created)))
    if fresh:
        opened = sess.comm.open([(v.shares - a, "arith", 64) for _, v, a, _ in fresh], tag=f"beaver_{op}")
        for (i, v, a, mid), eps in zip(fresh, opened):
            masks[i] = Mask(eps, a, MaskHandle(sess.dealer, mid))
            v.mask = masks[i]
    mx, my = masks
    if _flat_weights(op, my):  # activations @ 2-D weights: one GEMM for all parties
        z = _eps_times_weights(op, mx.eps, my, sess.holds_first)
        if not mat.a_delta_folded:
            z = z + a_times_delta(op, mx.a, my)
        return z + mat.c
    rhs_b, rhs_delta = _right_operands(op, mx, my, sess.holds_first)
    z = _apply(op, mx.eps, rhs_b, kwargs)
    return z + _apply(op, align_party(mx.a, my.eps.dim()), rhs_delta, kwargs) + mat.c


def _flat_weights(op: str, my: Mask) -> bool:
    return op in ("matmul", "linear") and my.eps.dim() == 2


def _eps_times_weights(op: str, eps: torch.Tensor, my: Mask, first: bool = True) -> torch.Tensor:
    """``eps @ ([b] + delta on party 0)`` for all parties as ONE GEMM: the parties' weight shares are laid
    side by side as columns (``[k, P*n]``), split into limbs once per run and cached on the mask."""
    key = ("eps_rhs", op)
    if key not in my.cache:
        b0 = my.a.clone()
        if first:
            b0[0] += my.eps
        if op == "linear":
            b0 = b0.transpose(-1, -2)
        p, k, n = b0.shape
        my.cache[key] = LimbOperand(b0.permute(1, 0, 2).reshape(k, p * n))
    rhs = my.cache[key]
    p, n = my.a.shape[0], rhs.shape[-1] // my.a.shape[0]
    out = ring_matmul(eps.reshape(-1, eps.shape[-1]), rhs).reshape(-1, p, n).transpose(0, 1)
    return out.reshape((p,) + tuple(eps.shape[:-1]) + (n,))


def a_times_delta(op: str, a: torch.Tensor, my: Mask) -> torch.Tensor:
    """``[a] @ delta`` for all parties as ONE GEMM (rows of all parties stacked). Data-independent: when
    the dealer material is preprocessed, the parties compute it offline (see Session.preprocess)."""
    key = ("delta", op)
    if key not in my.cache:
        my.cache[key] = LimbOperand(my.eps.transpose(-1, -2) if op == "linear" else my.eps)
    rhs = my.cache[key]
    out = ring_matmul(a.reshape(-1, a.shape[-1]), rhs)
    return out.reshape(tuple(a.shape[:-1]) + (rhs.shape[-1],))


def _right_operands(op: str, mx: Mask, my: Mask, first: bool = True):
    """``([b] with delta added to party 0's row, delta)``; for (mat)mul/linear pre-split into limbs and
    cached on ``my`` (model weights are split once per run, not once per batch)."""
    key = ("rhs", op, mx.eps.dim())
    if key not in my.cache:
        b0 = my.a.clone()
        if first:
            b0[0] += my.eps
        delta = my.eps
        if op == "linear":
            b0, delta = b0.transpose(-1, -2), delta.transpose(-1, -2)
        if op != "conv2d":
            b0 = align_party(b0, mx.eps.dim())
        if op in ("matmul", "linear"):
            my.cache[key] = (LimbOperand(b0), LimbOperand(delta))
        else:
            my.cache[key] = (b0, delta)
    return my.cache[key]
