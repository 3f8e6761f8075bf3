"""+, -, * (shared or public operands), their in-place forms, and division by public values."""
from __future__ import annotations

import torch

from .. import protocols as P
from .. import transforms
from ..errors import ShapeMismatchError, UnsupportedOpError
from ..tensor import ShareTensor, check_same_session, implements
from ._common import Tensor, _fixed, _is_int_public, _lift, _public, _shape_of, _wrap

def _add(x, y, sign: int = 1):
    if isinstance(x, ShareTensor) and isinstance(y, ShareTensor):
        sess = check_same_session(x, y)
        frac = max(x._frac, y._frac)
        nd = max(x.dim(), y.dim())
        a, b = transforms.align_party(_lift(x, frac), nd), transforms.align_party(_lift(y, frac), nd)
        return ShareTensor(a + b if sign == 1 else a - b, sess, frac)
    if isinstance(x, ShareTensor):
        frac = x._frac
        if not _is_int_public(y) and torch.as_tensor(y).is_floating_point():
            frac = max(frac, x._session.precision_bits)  # an integer value (frac_bits=0) + a float: lift
        pub = _public(x._session, y, frac)
        shape = torch.broadcast_shapes(_shape_of(x), tuple(pub.shape))
        out = transforms.align_party(_lift(x, frac), len(shape)).expand((x._shares.shape[0],) + shape).clone()
        if x._session.holds_first:
            out[0] += sign * pub
        return _wrap(x, out, frac)
    # public +/- shared
    return _add(_neg(y) if sign == -1 else y, x)


_LOCAL = "Local, with a shared or public operand."


@implements(Tensor.__add__, Tensor.__radd__, Tensor.add, torch.add, family="arithmetic", note=_LOCAL)
def _h_add(x, y, *, alpha=1):
    return _add(x, _scaled(y, alpha))


@implements(Tensor.__sub__, Tensor.sub, torch.sub, family="arithmetic", note=_LOCAL)
def _h_sub(x, y, *, alpha=1):
    return _add(x, _scaled(y, alpha), -1)


def _scaled(y, alpha):
    """``alpha * y`` for the ``alpha=`` argument of add/sub; ``y`` shared or public."""
    if alpha == 1:
        return y
    return _h_mul(y, alpha) if isinstance(y, ShareTensor) else torch.as_tensor(y) * alpha


@implements(Tensor.__rsub__, family="arithmetic", note=_LOCAL)
def _h_rsub(x, y):
    return _add(y, x, -1) if isinstance(y, ShareTensor) else _add(_neg(x), y)


@implements(Tensor.__neg__, Tensor.neg, torch.neg, family="arithmetic", note="Local.")
def _neg(x):
    return _wrap(x, -x._shares, x._frac, None)


@implements(Tensor.__mul__, Tensor.__rmul__, Tensor.mul, torch.mul, family="arithmetic", limit="product",
            note="Two shared operands: a Beaver product (at most 1 round); a public operand: local; an operand still "
            "holding a product is truncated first (1 round each), except before a public integer.")
def _h_mul(x, y):
    if not isinstance(x, ShareTensor):
        x, y = y, x
    if isinstance(y, ShareTensor):
        sess = check_same_session(x, y)
        try:  # before any truncation round: a wrong shape must not cost (or reveal) anything
            torch.broadcast_shapes(_shape_of(x), _shape_of(y))
        except RuntimeError:
            raise ShapeMismatchError(
                f"Expected shapes that broadcast for *, but got {_shape_of(x)} and {_shape_of(y)}. Reshape or "
                "unsqueeze an operand so that trailing dims match or are 1."
            ) from None
        x, y = _fixed(x), _fixed(y)
        return ShareTensor(P.beaver(sess, "mul", x, y), sess, x._frac + y._frac)
    if _is_int_public(y):  # exact, no truncation; checked like any public operand (``x * 2**50`` would wrap)
        k = _public(x._session, y, x._session.precision_bits) >> x._session.precision_bits  # checked as a value
        return _wrap(x, x._shares * k, x._frac, None)
    x = _fixed(x)
    f = x._session.precision_bits
    return _wrap(x, x._shares * _public(x._session, y, f), x._frac + f, None)


def _in_place(handler):
    """``x += y`` / ``x.add_(y)`` (ResNet style): the result replaces ``x``'s shares in the same object, as torch
    updates a tensor in place (views taken of ``x`` before are not updated)."""

    def op(x, y, **kwargs):
        if not isinstance(x, ShareTensor):
            raise UnsupportedOpError("An in-place op on a public tensor with a shared operand: compute out of place.")
        out = handler(x, y, **kwargs)
        if _shape_of(out) != _shape_of(x):
            raise RuntimeError(f"output with shape {list(_shape_of(x))} doesn't match the broadcast shape {list(_shape_of(out))}")
        x._shares, x._frac, x.mask, x._cache = out._shares, out._frac, None, {}
        return x

    return op


_IN_PLACE = "As `{}`, written into the left operand's object; a public left operand is refused."
implements(Tensor.__iadd__, Tensor.add_, family="arithmetic", note=_IN_PLACE.format("+"))(
    _in_place(lambda x, y, alpha=1: _h_add(x, y, alpha=alpha)))
implements(Tensor.__isub__, Tensor.sub_, family="arithmetic", note=_IN_PLACE.format("-"))(
    _in_place(lambda x, y, alpha=1: _h_sub(x, y, alpha=alpha)))
implements(Tensor.__imul__, Tensor.mul_, family="arithmetic", note=_IN_PLACE.format("*"))(_in_place(_h_mul))


def _divide_public(x: ShareTensor, divisor) -> ShareTensor:
    """``x / d`` for a public ``d`` (a number or a tensor broadcasting against ``x``), at ``precision_bits``.

    Encoding ``1/d`` with ``precision_bits`` fractional bits would lose it for large ``d`` (1/200000 encodes
    to 0). Instead, with ``s = 61 - compare_bits`` (29 at defaults) and per element ``2^t <= |d| < 2^(t+1)``
    (``t >= 0``; ``T`` the largest ``t``):
    1. ``x * 2^(T - t)`` (local, exact) is truncated by ``T`` bits (plus any pending product bits; skipped
       when that is 0), so every element is ``x / 2^t`` whatever its divisor's magnitude;
    2. the local product with the public integer ``r = round(2^(s+t) / d)`` holds
       ``(x / d) * 2^(precision_bits + s)``, below ``2^61`` in magnitude for quotients in range; and
    3. it is truncated by ``s`` bits.
    Cost: 1 or 2 truncations (3 for a pending product divided by a tensor of mixed magnitudes; 1 round and
    ``8 (n-1)`` bytes per element each); no dealer material beyond their masks. Error bound (``q = x / d`` in
    LSB units ``2^-precision_bits``): ``|q_hat - q| <= 2 + |q| * 2^(precision_bits - s)`` LSB (below 6 LSB
    for ``|q| < 2^(compare_bits - 1 - precision_bits)``), plus the input's own encoding error divided by ``|d|``.
    Range: the quotient must lie in the comparison range ``|x / d| < 2^(compare_bits - precision_bits)``: it
    is secret, so this cannot be checked (a larger quotient wraps, as any out-of-range value does).
    Refused: zero, non-finite or complex divisors, ``|d| < 2^-(62 - s - ...)`` (use ``*``) and ``|d| >= 2^40``.
    """
    sess, f = x._session, x._session.precision_bits
    if isinstance(divisor, (int, float)) and not isinstance(divisor, bool):
        divisor = torch.tensor(float(divisor), dtype=torch.float64)  # exact for Python floats; ints beyond int64 too
    d = divisor.detach().cpu() if isinstance(divisor, Tensor) else torch.as_tensor(divisor)
    if d.is_complex():
        raise TypeError(f"Expected a real public divisor, but got dtype {d.dtype}.")
    d = d.to(torch.float64)
    sess.comm.note_public("public divisor", d)
    if not bool(torch.isfinite(d).all()):
        raise ValueError("Expected a finite, real public divisor.")
    if bool((d == 0).any()):
        raise ZeroDivisionError("Division of secret shares by zero.")
    s = 61 - sess.compare_bits
    mag = d.abs()
    if float(mag.max()) >= 2.0**40:
        raise ValueError(f"Divisor {float(mag.max()):g} >= 2^40: the quotient underflows the fixed-point precision.")
    t = torch.floor(torch.log2(mag)).clamp(min=0).to(torch.int64)
    r = torch.round(torch.ldexp(torch.ones_like(d), s + t) / d)
    if float(r.abs().max()) >= 2.0**(61 - sess.compare_bits + f):
        raise ValueError(f"Divisor {float(mag.min()):g} is too small to divide by; multiply by its reciprocal instead.")
    t_max = int(t.max()) if t.numel() else 0
    shares = _lift(x, f)  # integer values (frac_bits 0) are lifted to fixed point first: exact
    frac = max(x._frac, f)
    if bool((t != t_max).any()):  # mixed magnitudes: bring every element to the common shift first (exact)
        if frac > f:
            shares, frac = P.truncate(sess, shares, frac - f), f
        shape = torch.broadcast_shapes(_shape_of(x), tuple(t.shape))
        shares = transforms.align_party(shares, len(shape)) * (1 << (t_max - t)).to(sess.device)
    pre = frac - f + t_max
    if pre:
        shares = P.truncate(sess, shares, pre)
    shape = torch.broadcast_shapes(tuple(shares.shape[1:]), tuple(r.shape))
    prod = transforms.align_party(shares, len(shape)) * r.to(torch.int64).to(sess.device)
    return _wrap(x, P.truncate(sess, prod, s), f, None)
