"""Torch callables -> protocols. Handlers only normalise arguments (public vs shared, scales, shapes)
and then call the protocols, so every byte sent is attributable to a protocol."""
from __future__ import annotations

import math
import operator
import warnings
from collections import namedtuple

import torch
import torch.nn.functional as F

from . import protocols as P
from . import transforms
from .errors import ShapeMismatchError, UnsupportedOpError
from .ring import ring_conv2d, ring_matmul
from .tensor import FAMILIES, ShareTensor, SkippedSoftmax, check_same_session, implements, op_names

Tensor = torch.Tensor
MaxResult = namedtuple("MaxResult", ["values", "indices"])

# ------------------------------------------------------------------------------------------ helpers


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
    return sess.encoder.encode(torch.as_tensor(v), f).to(sess.device) * (1 << (frac - f))


def _is_int_public(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, Tensor) and not isinstance(v, ShareTensor) and not v.is_floating_point()


# ------------------------------------------------------------------------------------------ metadata
_META = [
    Tensor.size, Tensor.dim, Tensor.numel, Tensor.nelement, Tensor.__len__, Tensor.is_floating_point,
    Tensor.is_complex, Tensor.element_size, Tensor.ndimension, Tensor.data_ptr, Tensor.__hash__,
]
for _name in ("shape", "ndim", "dtype", "device", "requires_grad", "is_cuda", "layout", "is_sparse", "is_quantized",
              "is_meta", "is_nested", "grad", "names", "is_mkldnn", "_base", "output_nr", "_version", "is_leaf", "grad_fn"):
    _attr = getattr(Tensor, _name, None)
    if _attr is not None and hasattr(_attr, "__get__"):
        _META.append(_attr.__get__)


def _bind_meta():  # each metadata func needs to know which func it is: register closures
    for f in _META:
        def handler(*args, _f=f, **kwargs):
            with torch._C.DisableTorchFunctionSubclass():
                return _f(*args, **kwargs)
        implements(f, family="metadata", softmax_safe=True)(handler)


_bind_meta()

# ------------------------------------------------------------------------------------------ shape ops


def _shape_of(x: ShareTensor) -> tuple:
    return tuple(x._shares.shape[1:])


def _step(x: ShareTensor, step: tuple) -> ShareTensor:
    shares = transforms.apply(x._shares, (step,), party_axis=True)
    mask = x.mask.then(step) if x.mask is not None else None
    return _wrap(x, shares, x._frac, mask)


def _reshape_to(x: ShareTensor, out_shape) -> ShareTensor:
    out_shape = tuple(out_shape)
    return x if out_shape == _shape_of(x) else _step(x, ("reshape", out_shape))


def _meta_shape(x: ShareTensor, fn, *args, **kwargs) -> tuple:
    return tuple(fn(torch.empty(_shape_of(x), device="meta"), *args, **kwargs).shape)


@implements(Tensor.view, Tensor.reshape, torch.reshape, family="shape")
def _view(x, *shape, **kw):
    shape = kw.get("shape", shape)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    if any(isinstance(s, torch.dtype) for s in shape):
        raise UnsupportedOpError("view(dtype) would reinterpret share words; it is not supported on shares.")
    return _reshape_to(x, _meta_shape(x, torch.reshape, tuple(int(s) for s in shape)))


@implements(Tensor.flatten, torch.flatten, family="shape")
def _flatten(x, start_dim=0, end_dim=-1):
    return _reshape_to(x, _meta_shape(x, torch.flatten, start_dim, end_dim))


@implements(Tensor.unsqueeze, torch.unsqueeze, family="shape")
def _unsqueeze(x, dim):
    return _reshape_to(x, _meta_shape(x, torch.unsqueeze, dim))


@implements(Tensor.squeeze, torch.squeeze, family="shape")
def _squeeze(x, dim=None):
    return _reshape_to(x, _meta_shape(x, torch.squeeze) if dim is None else _meta_shape(x, torch.squeeze, dim))


@implements(Tensor.view_as, Tensor.reshape_as, family="shape")
def _view_as(x, other):
    return _reshape_to(x, tuple(other.shape))


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


@implements(Tensor.permute, torch.permute, family="shape")
def _permute(x, *dims, **kw):
    dims = kw.get("dims", dims)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list, torch.Size)):
        dims = tuple(dims[0])
    nd = len(_shape_of(x))
    perm = tuple(_norm(d, nd) for d in dims)
    if sorted(perm) != list(range(nd)):
        raise RuntimeError(f"permute: expected a permutation of {nd} dims, but got {tuple(dims)}.")
    return _step(x, ("permute", perm))


@implements(Tensor.transpose, torch.transpose, family="shape")
def _transpose(x, dim0, dim1):
    nd = len(_shape_of(x))
    perm = list(range(nd))
    a, b = _norm(dim0, nd), _norm(dim1, nd)
    perm[a], perm[b] = perm[b], perm[a]
    return _step(x, ("permute", tuple(perm)))


@implements(Tensor.t, torch.t, family="shape")
def _t(x):
    nd = len(_shape_of(x))
    if nd > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {nd}D")
    return x if nd < 2 else _transpose(x, 0, 1)


@implements(Tensor.T.__get__, family="shape")
def _T(x):  # torch: all dims reversed (deprecated for nd != 2, but that is what it computes)
    nd = len(_shape_of(x))
    return x if nd < 2 else _permute(x, tuple(reversed(range(nd))))


@implements(Tensor.__getitem__, family="shape")
def _getitem(x, idx):
    h = transforms.hashable_index(idx)
    if h is not None:
        return _step(x, ("getitem", h))
    if isinstance(idx, ShareTensor):
        raise UnsupportedOpError("Indexing with a secret-shared index is not supported.")
    # Advanced indexing: index each party's row on its own. (Indexing the stacked shares with the party axis
    # in front would let torch move separated index dims in front of the party axis and mix the parties.)
    rows = [row[idx] for row in x._shares]
    return _wrap(x, torch.stack(rows), x._frac)


@implements(Tensor.contiguous, Tensor.clone, Tensor.detach, Tensor.requires_grad_, family="metadata", softmax_safe=True)
def _identity(x, *args, **kwargs):
    return x


@implements(Tensor.to, Tensor.cpu, Tensor.cuda, Tensor.float, Tensor.type_as, family="metadata", softmax_safe=True)
def _to(x, *args, **kwargs):
    device = kwargs.get("device")
    for a in args:
        if isinstance(a, (torch.device, str)):
            device = a
        elif isinstance(a, torch.dtype) and not a.is_floating_point:
            raise UnsupportedOpError(f"Casting shares to {a} is not supported; reveal first.")
    if device is None:
        return x
    return _wrap(x, x._shares.to(device), x._frac)


def _join(kind):
    def handler(tensors, dim=0, *, axis=None, out=None):
        if out is not None:
            raise UnsupportedOpError(f"torch.{kind}(out=...) on shares is not supported.")
        dim = axis if axis is not None else dim
        sess = check_same_session(*tensors)
        if not all(isinstance(t, ShareTensor) for t in tensors):
            raise UnsupportedOpError(f"torch.{kind} of shared and public tensors: share the public ones first.")
        frac = max(t._frac for t in tensors)
        nd = len(_shape_of(tensors[0])) + (1 if kind == "stack" else 0)
        d = _norm(dim, nd) + 1
        parts = [_lift(t, frac) for t in tensors]
        out = torch.stack(parts, d) if kind == "stack" else torch.cat(parts, d)
        return ShareTensor(out, sess, frac)

    return handler


implements(torch.cat, torch.concat, family="shape")(_join("cat"))
implements(torch.stack, family="shape")(_join("stack"))

# ------------------------------------------------------------------------------------------ arithmetic


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


@implements(Tensor.__add__, Tensor.__radd__, Tensor.add, torch.add, family="arithmetic")
def _h_add(x, y, *, alpha=1):
    return _add(x, _scaled(y, alpha))


@implements(Tensor.__sub__, Tensor.sub, torch.sub, family="arithmetic")
def _h_sub(x, y, *, alpha=1):
    return _add(x, _scaled(y, alpha), -1)


def _scaled(y, alpha):
    """``alpha * y`` for the ``alpha=`` argument of add/sub; ``y`` shared or public."""
    if alpha == 1:
        return y
    return _h_mul(y, alpha) if isinstance(y, ShareTensor) else torch.as_tensor(y) * alpha


@implements(Tensor.__rsub__, family="arithmetic")
def _h_rsub(x, y):
    return _add(y, x, -1) if isinstance(y, ShareTensor) else _add(_neg(x), y)


@implements(Tensor.__neg__, Tensor.neg, torch.neg, family="arithmetic")
def _neg(x):
    return _wrap(x, -x._shares, x._frac, None)


@implements(Tensor.__mul__, Tensor.__rmul__, Tensor.mul, torch.mul, family="arithmetic")
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


implements(Tensor.__iadd__, Tensor.add_, family="arithmetic")(_in_place(lambda x, y, alpha=1: _h_add(x, y, alpha=alpha)))
implements(Tensor.__isub__, Tensor.sub_, family="arithmetic")(_in_place(lambda x, y, alpha=1: _h_sub(x, y, alpha=alpha)))
implements(Tensor.__imul__, Tensor.mul_, family="arithmetic")(_in_place(_h_mul))


@implements(Tensor.__truediv__, Tensor.div, torch.div, family="arithmetic")
def _h_div(x, y, *, rounding_mode=None):
    if isinstance(y, ShareTensor):
        raise UnsupportedOpError("Division by a secret-shared value is not supported (only by public values).")
    if rounding_mode is not None:
        raise UnsupportedOpError(f"div(rounding_mode={rounding_mode!r}) on shares is not supported; divide, then reveal.")
    return _divide_public(x, y)


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
    Cost: 1 or 2 truncations (1 or 2 rounds, ``8 (n-1)`` bytes per element each); no dealer material beyond
    their masks. Error bound (``q = x / d`` in LSB units ``2^-precision_bits``): ``|q_hat - q| <= 2 +
    |q| * 2^(precision_bits - s)`` LSB (below 6 LSB for ``|q| < 2^(compare_bits - 1 - precision_bits)``), plus
    the input's own encoding error divided by ``|d|``.
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


def _bilinear(op: str, x, w, **kwargs):
    if not isinstance(x, ShareTensor) or not isinstance(w, ShareTensor):
        # public operand: share-free local product
        sh, pub, left = (x, w, True) if isinstance(x, ShareTensor) else (w, x, False)
        sh = _fixed(sh)
        f = sh._session.precision_bits
        enc = _public(sh._session, pub, f)
        if op == "conv2d":
            out = torch.stack([ring_conv2d(s, enc, **kwargs) for s in sh._shares]) if left else torch.stack([ring_conv2d(enc, s, **kwargs) for s in sh._shares])
        elif op == "linear":
            out = ring_matmul(sh._shares, enc.t()) if left else torch.stack([ring_matmul(enc, s.t()) for s in sh._shares])
        else:
            # align the party axis away from the public operand's batch dims ([P, M, K] @ [B, K, N])
            out = ring_matmul(transforms.align_party(sh._shares, enc.dim()), enc) if left else torch.stack([ring_matmul(enc, s) for s in sh._shares])
        return ShareTensor(out, sh._session, sh._frac + f)
    sess = check_same_session(x, w)
    x, w = _fixed(x), _fixed(w)
    return ShareTensor(P.beaver(sess, op, x, w, **kwargs), sess, x._frac + w._frac)


@implements(Tensor.__matmul__, Tensor.matmul, torch.matmul, Tensor.mm, torch.mm, family="bilinear")
def _h_matmul(x, y):
    xs = x.shape if isinstance(x, ShareTensor) else torch.as_tensor(x).shape
    ys = y.shape if isinstance(y, ShareTensor) else torch.as_tensor(y).shape
    if len(xs) == 1 or len(ys) == 1:
        x2 = x.unsqueeze(0) if len(xs) == 1 else x
        y2 = y.unsqueeze(-1) if len(ys) == 1 else y
        out = _h_matmul(x2, y2)
        if len(xs) == 1:
            out = out.squeeze(-2)
        if len(ys) == 1:
            out = out.squeeze(-1)
        return out
    if xs[-1] != ys[-2]:
        raise ShapeMismatchError(f"Expected matching inner dims for matmul, but got {tuple(xs)} @ {tuple(ys)}. "
                                 "Transpose or reshape an operand so that x.shape[-1] == y.shape[-2].")
    return _bilinear("matmul", x, y)


@implements(F.linear, family="bilinear")
def _h_linear(x, weight, bias=None):
    if isinstance(x, ShareTensor) and x.shape[-1] != weight.shape[-1]:
        raise ShapeMismatchError(f"Expected input features {weight.shape[-1]} for linear, but got shape {tuple(x.shape)}.")
    if len(x.shape) == 1:  # a single feature vector: as a batch of one (keeps the party axis out of the product)
        out = _h_linear(x.unsqueeze(0), weight).squeeze(0)
        return out if bias is None else _add(out, bias)
    out = _bilinear("linear", x, weight)
    return out if bias is None else _add(out, bias)


@implements(F.conv2d, family="bilinear")
def _h_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if isinstance(padding, str):
        raise UnsupportedOpError("conv2d with string padding is not supported on shares; pass integers.")
    kw = dict(stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation), groups=groups)
    out = _bilinear("conv2d", x, weight, **kw)
    if bias is not None:
        out = _add(out, bias.reshape(-1, 1, 1) if isinstance(bias, ShareTensor) else torch.as_tensor(bias).reshape(-1, 1, 1))
    return out


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@implements(Tensor.sum, torch.sum, family="reduction")
def _h_sum(x, dim=None, keepdim=False, dtype=None):
    _no_dtype(dtype, "sum")
    dims = _dims(x, dim)
    if not dims:  # a 0-d value: nothing to reduce (``shares.sum(())`` would sum over the party axis)
        return _wrap(x, x._shares.clone(), x._frac, None)
    return _wrap(x, x._shares.sum(tuple(d + 1 for d in dims), keepdim=keepdim), x._frac, None)


@implements(Tensor.mean, torch.mean, family="reduction")
def _h_mean(x, dim=None, keepdim=False, dtype=None):
    total = _h_sum(x, dim, keepdim, dtype)
    count = math.prod(_shape_of(x)[d] for d in _dims(x, dim))
    return _divide_public(total, count)


def _no_dtype(dtype, name: str) -> None:
    if dtype is not None and not dtype.is_floating_point:
        raise UnsupportedOpError(f"{name}(dtype={dtype}) on shares: integer result dtypes are not supported.")


# ------------------------------------------------------------------------------------------ nonlinear


def _fused_m(x: ShareTensor) -> tuple[Tensor, int | None, int]:
    """(shares, truncation bits to fuse or None, frac of the result)."""
    f = x._session.precision_bits
    if x._frac > f:
        return x._shares, x._frac - f, f
    return x._shares, None, x._frac


@implements(F.relu, torch.relu, Tensor.relu, family="nonlinear")
def _h_relu(x, inplace=False):
    shares, m, frac = _fused_m(x)
    return _wrap(x, P.relu(x._session, shares, m), frac, None)


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


@implements(Tensor.__ge__, Tensor.ge, torch.ge, family="nonlinear")
def _h_ge(x, y):
    return _cmp(x, y, strict=False)


@implements(Tensor.__gt__, Tensor.gt, torch.gt, family="nonlinear")
def _h_gt(x, y):
    return _cmp(x, y, strict=True)


@implements(Tensor.__le__, Tensor.le, torch.le, family="nonlinear")
def _h_le(x, y):
    return _cmp(y, x, strict=False)


@implements(Tensor.__lt__, Tensor.lt, torch.lt, family="nonlinear")
def _h_lt(x, y):
    return _cmp(y, x, strict=True)


def _move_last(x: ShareTensor, dim: int) -> ShareTensor:
    nd = len(_shape_of(x))
    d = _norm(dim, nd)
    # move ``d`` to the end keeping the other dims in order (a transpose would reorder them for nd >= 3)
    return x if d == nd - 1 else _permute(x, tuple(i for i in range(nd) if i != d) + (d,))


def _argmax_parts(x: ShareTensor, dim, keepdim: bool, want_max: bool):
    _check_skipped_argmax(x, dim)
    if dim is None:
        x, dim = _reshape_to(x, (1, x.numel())), -1
    nd = len(_shape_of(x))
    d = _norm(dim, nd)
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


@implements(Tensor.argmax, torch.argmax, family="nonlinear", softmax_safe=True)
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


@implements(Tensor.amax, torch.amax, family="nonlinear", softmax_safe=True)
def _h_amax(x, dim=(), keepdim=False):
    dims = _dims(x, dim)
    if len(dims) == 1:
        return _h_max(x, dims[0], keepdim).values
    if len(dims) == len(_shape_of(x)) and not keepdim:
        return _h_max(x)
    raise UnsupportedOpError("amax over several (but not all) dims is not supported on shares; reshape first.")


@implements(Tensor.max, torch.max, family="nonlinear", softmax_safe=True)
def _h_max(x, dim=None, keepdim=False):
    if isinstance(dim, ShareTensor) or (dim is not None and not isinstance(dim, int)):
        raise UnsupportedOpError("max(x, y) elementwise is not supported; use torch.maximum-free code or relu(x-y)+y.")
    _, index, mx, frac = _argmax_parts(x, dim, keepdim, True)
    # the max of a skipped softmax is the logits' maximum, not a probability: mark it unusable
    values = ShareTensor(mx, x._session, frac, None, None if x._skipped is None else SkippedSoftmax(None))
    if dim is None:
        return _reshape_to(values, ())
    return MaxResult(values, ShareTensor(index, x._session, 0))


# ------------------------------------------------------------------------------------------ pooling and padding
# Pooling gathers each window from every party's own share row (local, no communication). Taps outside the input
# (padding, the ``ceil_mode`` overhang, the short windows of adaptive pooling) hold a public fill that the first
# party adds: 0 for average pooling (torch's zero padding), and for max pooling the smallest value of the comparison
# range, ``-(2^(compare_bits - 1) - 1)`` LSB (:func:`maxpool_fill`). Every value a pairwise comparison is exact for
# lies in ``(-2^(compare_bits - 1), 2^(compare_bits - 1))`` LSB (``share`` refuses larger inputs), so it is >= the
# fill and its difference with the fill stays in the comparison range: padding never wins a max (a tie with a value
# at the very bottom of the range yields that same value). A window made of padding only is refused up front.
#
# Max over a window of k taps, two protocols (``MAXPOOL_METHOD`` maps k to one; see ``maxpool_method``):
#   "pairs": the argmax protocol: all k(k-1)/2 comparisons in parallel, one argmax's rounds (5 by default) whatever k;
#   "tree":  max(a, b) = b + relu(a - b) on halves: ceil(log2 k) levels of one ReLU each (4 rounds by default),
#            k - 1 comparisons in all (a sequential chain would need k - 1 levels; the tree is never slower).
# Measured with benchmarks/bench_mnist.py --model lenet --threads 1 (2 parties, 2 cores shared with other jobs; LeNet-5
# with the peers' weights, 1,000 MNIST images at batch 100, both pools 2x2): simulated runtime, median of 3, pairs
# 11.4 s, tree 6.7 s (the two pools: 3.1 s vs 1.4 s); distributed runtime (a process per party and the dealer,
# localhost), in-party seconds in two sittings, pairs 18.8 and 24.1 s, tree 16.7 and 16.8 s; online 391 vs 451
# rounds, 137 vs 117 MB sent per party, 2.8 vs 1.8 GB from the dealer to the first party. Single pooling calls
# (batch 100, one core, online + dealer): 2x2 on conv1's output pairs 0.55 s, tree 0.11 s; 3x3 stride 2 padding 1
# (a ResNet stem) 2.8 s vs 0.24 s; 4x4 2.0 s vs 0.10 s; 5x5 4.7 s vs 0.12 s. The tree is faster for every window
# size measured (fewer comparisons, less dealer material); "pairs" wins only where a round trip costs more than the
# compute it saves (about 50-70 ms per extra round for LeNet at batch 100): set MAXPOOL_METHOD[k] = "pairs" there. Every party must use the same protocol: processes spawned by the distributed
# runtime import this module afresh, so set the default with the environment variable LIGHTNING_SMPC_MAXPOOL
# ("pairs" or "tree"), which they inherit, rather than by assigning MAXPOOL_DEFAULT in one process.
MAXPOOL_METHOD: dict[int, str] = {}
MAXPOOL_DEFAULT = __import__("os").environ.get("LIGHTNING_SMPC_MAXPOOL", "tree")
if MAXPOOL_DEFAULT not in ("pairs", "tree"):
    raise ValueError(f"Expected LIGHTNING_SMPC_MAXPOOL to be 'pairs' or 'tree', but got {MAXPOOL_DEFAULT!r}.")


def maxpool_method(k: int) -> str:
    """The max-pooling protocol used for a window of ``k`` taps: ``"pairs"`` or ``"tree"``."""
    return MAXPOOL_METHOD.get(k, MAXPOOL_DEFAULT)


def maxpool_fill(sess, frac: int) -> int:
    """Raw fill (at ``frac`` fractional bits) of max-pooling taps outside the input: the smallest in-range value."""
    return -((1 << (sess.compare_bits - 1)) - 1) << max(frac - sess.precision_bits, 0)


def _pooling_input(x: ShareTensor, name: str) -> None:
    """2-D pooling works on the last two dims of a 3-D or 4-D value (as torch); never reach the party axis."""
    nd = len(_shape_of(x))
    if nd not in (3, 4):
        raise IndexError(f"{name}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, but got {nd}-D.")


def _stride(stride, kernel_size):
    return _pair(kernel_size if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else stride)


def _pool_axis(n: int, k: int, s: int, p: int, d: int, n_out: int) -> tuple[Tensor, Tensor]:
    """Input index of every tap ``[n_out, k]`` of a strided (padded, dilated) pooling axis, and whether it is inside."""
    idx = (torch.arange(n_out) * s - p)[:, None] + torch.arange(k)[None, :] * d
    return idx, (idx >= 0) & (idx < n)


def _adaptive_axis(n: int, n_out: int) -> tuple[Tensor, Tensor]:
    """Adaptive pooling's windows (torch: ``[floor(i n / o), ceil((i + 1) n / o))``), padded to the widest one."""
    start = torch.arange(n_out) * n // n_out
    end = -((-(torch.arange(1, n_out + 1) * n)) // n_out)
    idx = start[:, None] + torch.arange(int((end - start).max()))[None, :]
    return idx, idx < end[:, None]


def _windows(x: ShareTensor, rows, cols, fill: int) -> Tensor:
    """Shares ``[P, ..., oh, ow, kh * kw]`` of every window; taps outside the input hold the public ``fill``."""
    (ih, vh), (iw, vw) = rows, cols
    sh = x._shares
    h, w = sh.shape[-2:]
    dev = sh.device
    g = sh.index_select(-2, ih.clamp(0, h - 1).flatten().to(dev))
    g = g.reshape(g.shape[:-2] + tuple(ih.shape) + (w,))  # [P, ..., oh, kh, W]
    g = g.index_select(-1, iw.clamp(0, w - 1).flatten().to(dev))
    g = g.reshape(g.shape[:-1] + tuple(iw.shape)).transpose(-3, -2)  # [P, ..., oh, ow, kh, kw]
    valid = vh[:, None, :, None] & vw[None, :, None, :]
    if not bool(valid.all()):
        g = g * valid.to(dev)
        if fill and x._session.holds_first:
            g[0] += (~valid).to(dev).to(torch.int64) * fill
    return g.reshape(g.shape[:-2] + (g.shape[-2] * g.shape[-1],))


def _window_max(x: ShareTensor, win: Tensor) -> ShareTensor:
    """Shares of the max over the last dim of ``win`` (windows of ``x``), with ``maxpool_method``'s protocol."""
    sess = x._session
    if maxpool_method(win.shape[-1]) == "pairs":
        shares, m, frac = _fused_m(_wrap(x, win, x._frac, None))
        _, mx = P.argmax_onehot(sess, shares, m, True)
        return ShareTensor(mx, sess, frac)
    f, frac = sess.precision_bits, x._frac
    while win.shape[-1] > 1:  # pair the first half with the second: max(a, b) = b + relu(a - b)
        h = win.shape[-1] // 2
        a, b = win[..., :h], win[..., h:2 * h]
        m = frac - f if frac > f else None  # a pending product's truncation is fused into the ReLU
        r = P.relu(sess, a - b, m)
        if m:
            r = r * (1 << m)  # back to b's scale (exact)
        win = torch.cat([b + r, win[..., 2 * h:]], -1)
    return ShareTensor(win[..., 0], sess, frac)


def _no_empty_window(name: str, rows, cols) -> None:
    if not (bool(rows[1].any(-1).all()) and bool(cols[1].any(-1).all())):
        raise UnsupportedOpError(f"{name}: a window lies entirely in the padding (torch returns -inf there); use less "
                                 "padding or dilation.")


@implements(F.max_pool2d, getattr(F, "_max_pool2d", F.max_pool2d), Tensor.max_pool2d if hasattr(Tensor, "max_pool2d") else F.max_pool2d, family="pooling")
def _h_max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling with any padding, stride, dilation and ``ceil_mode``: padded taps hold :func:`maxpool_fill`."""
    _pooling_input(x, "max_pool2d")
    if return_indices:
        raise UnsupportedOpError("max_pool2d(return_indices=True) on shares is not supported (the indices are secret).")
    oh, ow = _meta_shape(x, F.max_pool2d, kernel_size, stride, padding, dilation, ceil_mode)[-2:]  # torch's checks
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(kernel_size), _stride(stride, kernel_size), _pair(padding), _pair(dilation)
    h, w = _shape_of(x)[-2:]
    rows, cols = _pool_axis(h, kh, sh, ph, dh, oh), _pool_axis(w, kw, sw, pw, dw, ow)
    _no_empty_window("max_pool2d", rows, cols)
    return _window_max(x, _windows(x, rows, cols, maxpool_fill(x._session, x._frac)))


@implements(F.avg_pool2d, torch._C._nn.avg_pool2d, family="pooling")
def _h_avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Window sums (local) divided by torch's public divisor per window (padding counted or not, or the override)."""
    _pooling_input(x, "avg_pool2d")
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    oh, ow = _meta_shape(x, F.avg_pool2d, *args)[-2:]  # torch's checks (kernel, padding, divisor 0)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _stride(stride, kernel_size), _pair(padding)
    h, w = _shape_of(x)[-2:]
    win = _windows(x, _pool_axis(h, kh, sh, ph, 1, oh), _pool_axis(w, kw, sw, pw, 1, ow), 0).sum(-1)
    if divisor_override is not None:
        divisor = divisor_override
    else:  # torch's own divisor per window: (its sum of ones) / (its average of ones)
        ones = torch.ones((1, 1, h, w), dtype=torch.float64)
        count = F.avg_pool2d(ones, *args[:4], divisor_override=1)
        divisor = (count / F.avg_pool2d(ones, *args[:5])).round()[0, 0]
    return _divide_public(_wrap(x, win, x._frac, None), _scalar_if_uniform(divisor))


def _scalar_if_uniform(d):
    return float(d.flatten()[0]) if isinstance(d, Tensor) and bool((d == d.flatten()[0]).all()) else d


@implements(F.adaptive_avg_pool2d, family="pooling")
def _h_adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling: the windows follow from the (public) input size; global pooling included."""
    _pooling_input(x, "adaptive_avg_pool2d")
    oh, ow = _meta_shape(x, F.adaptive_avg_pool2d, output_size)[-2:]
    h, w = _shape_of(x)[-2:]
    rows, cols = _adaptive_axis(h, oh), _adaptive_axis(w, ow)
    win = _windows(x, rows, cols, 0).sum(-1)
    divisor = rows[1].sum(-1)[:, None].double() * cols[1].sum(-1)[None, :].double()
    return _divide_public(_wrap(x, win, x._frac, None), _scalar_if_uniform(divisor))


@implements(F.adaptive_max_pool2d, family="pooling")
def _h_adaptive_max_pool2d(x, output_size, return_indices=False):
    """Adaptive max pooling; the narrower windows are filled like padding (:func:`maxpool_fill`)."""
    _pooling_input(x, "adaptive_max_pool2d")
    if return_indices:
        raise UnsupportedOpError("adaptive_max_pool2d(return_indices=True) on shares is not supported (the indices are secret).")
    oh, ow = _meta_shape(x, F.adaptive_max_pool2d, output_size)[-2:]
    h, w = _shape_of(x)[-2:]
    return _window_max(x, _windows(x, _adaptive_axis(h, oh), _adaptive_axis(w, ow), maxpool_fill(x._session, x._frac)))


@implements(F.pad, family="pooling")
def _h_pad(x, pad, mode="constant", value=None):
    """``F.pad`` on shares, local: ``constant`` pads each share with 0 and the first party adds a nonzero public
    ``value``; ``reflect``/``replicate``/``circular`` copy input elements, so each party pads its own share row."""
    if isinstance(pad, ShareTensor) or isinstance(value, ShareTensor):
        raise UnsupportedOpError("F.pad with a secret-shared pad or value is not supported; pass public numbers.")
    _meta_shape(x, F.pad, pad, mode, value)  # torch's checks: pad length, mode, dims
    pad = tuple(int(p) for p in pad)
    sh = x._shares
    if mode == "constant":
        out = _wrap(x, F.pad(sh, pad), x._frac, None)
        if value:
            out = _add(out, F.pad(torch.zeros(_shape_of(x), dtype=torch.float64), pad, value=float(value)))
        return out
    k = len(pad) // 2  # the padded trailing dims; the leading ones (party axis included) are merged into a batch
    merged = sh.reshape((-1,) + tuple(sh.shape[sh.dim() - k:]))
    out = F.pad(merged, pad, mode=mode)
    return _wrap(x, out.reshape(tuple(sh.shape[:sh.dim() - k]) + tuple(out.shape[1:])), x._frac, None)


@implements(F.dropout, torch.dropout, family="layers", softmax_safe=True)
def _h_dropout(x, p=0.5, training=True, inplace=False):
    if training:
        raise UnsupportedOpError("dropout in training mode on shares: call model.eval() (predict does).")
    return x


@implements(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, Tensor.softmax, Tensor.log_softmax, family="layers", softmax_safe=True)
def _h_softmax(x, dim=None, *args, **kwargs):
    """Skipped: monotone along ``dim``, so an argmax over ``dim`` is unchanged. The result is marked with
    that dim: only an argmax over it (or the indices of a max over it) may use it; nothing reveals it."""
    nd = len(_shape_of(x))
    if dim is None:
        warnings.warn("Implicit dimension choice for softmax has been deprecated. Change the call to include dim=X "
                      "as an argument.", UserWarning, stacklevel=3)
    d = _norm(_legacy_softmax_dim(nd) if dim is None else dim, nd)
    if x._skipped is not None and x._skipped.dim != d:
        raise UnsupportedOpError(
            f"softmax over dim {d} of a value whose softmax over dim {x._skipped.dim} was skipped on shares: "
            "only one skipped softmax (or several over the same dim) can be followed by an argmax."
        )
    return _wrap(x, x._shares, x._frac, x.mask, skipped=SkippedSoftmax(d))


def _legacy_softmax_dim(nd: int) -> int:
    """torch's choice when softmax is called without ``dim`` (deprecated there, kept for equal results)."""
    return 0 if nd in (0, 1, 3) else 1


def _check_skipped_argmax(x: ShareTensor, dim) -> None:
    """An argmax of a skipped softmax equals the real one only over the softmax's own dim."""
    mark = x._skipped
    if mark is None:
        return
    shape = _shape_of(x)
    if mark.dim is None:
        raise UnsupportedOpError(
            "argmax/max of the values of a max over a skipped softmax: those values are the logits' maximum, "
            "not probabilities. Use the indices of the max, or remove the softmax from forward()."
        )
    if dim is None:  # over the flattened value: fine only when every other dim has size 1
        ok = all(n == 1 for i, n in enumerate(shape) if i != mark.dim)
    else:
        ok = _norm(dim, len(shape)) == mark.dim
    if not ok:
        raise UnsupportedOpError(
            f"argmax/max over dim {dim} of a softmax over dim {mark.dim}: the softmax is skipped on shares, "
            "and only an argmax over its own dim equals the real one. Use the same dim, or remove the softmax "
            "from forward()."
        )


# Shape ops are not declared softmax_safe: they move the softmax dim (the mark would have to follow it).


def to_precision(x: ShareTensor) -> ShareTensor:
    """``x`` truncated to ``precision_bits`` fractional bits if it carries more (one round)."""
    return _fixed(x)


def supported_ops() -> list[str]:
    """Names of the torch callables that run on shares."""
    return op_names()


def ops_table_markdown() -> str:
    """The README's table of supported ops, generated from the op declarations (a test keeps it current)."""
    rows = ["| family | torch callables |", "|---|---|"]
    for fam in FAMILIES:
        names = [n.replace("torch.nn.functional.", "F.") for n in op_names(fam)]
        rows.append(f"| {fam} | {', '.join(f'`{n}`' for n in names)} |")
    return "\n".join(rows)
