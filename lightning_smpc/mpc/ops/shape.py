"""Metadata (answered from the facade) and shape ops (the same step on every party's share row, local)."""
from __future__ import annotations

import torch

from .. import transforms
from ..errors import UnsupportedOpError
from ..tensor import ShareTensor, check_same_session, implements
from ._common import Tensor, _lift, _meta_shape, _norm, _reshape_to, _shape_of, _step, _wrap

# Shape ops are not declared softmax_safe: they move the softmax dim (the mark would have to follow it).

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
        implements(f, family="metadata", softmax_safe=True,
                   note="Answered from the public facade (shape, dtype, device, ...); local.")(handler)


_bind_meta()


@implements(Tensor.view, Tensor.reshape, torch.reshape, family="shape",
            note="Local on each share row; `view(dtype)` is refused.")
def _view(x, *shape, **kw):
    shape = kw.get("shape", shape)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    if any(isinstance(s, torch.dtype) for s in shape):
        raise UnsupportedOpError("view(dtype) would reinterpret share words; it is not supported on shares.")
    return _reshape_to(x, _meta_shape(x, torch.reshape, tuple(int(s) for s in shape)))


@implements(Tensor.flatten, torch.flatten, family="shape", note="Local on each share row.")
def _flatten(x, start_dim=0, end_dim=-1):
    return _reshape_to(x, _meta_shape(x, torch.flatten, start_dim, end_dim))


@implements(Tensor.unsqueeze, torch.unsqueeze, family="shape", note="Local on each share row.")
def _unsqueeze(x, dim):
    return _reshape_to(x, _meta_shape(x, torch.unsqueeze, dim))


@implements(Tensor.squeeze, torch.squeeze, family="shape", note="Local on each share row.")
def _squeeze(x, dim=None):
    return _reshape_to(x, _meta_shape(x, torch.squeeze) if dim is None else _meta_shape(x, torch.squeeze, dim))


@implements(Tensor.view_as, Tensor.reshape_as, family="shape", note="Local on each share row.")
def _view_as(x, other):
    return _reshape_to(x, tuple(other.shape))


@implements(Tensor.permute, torch.permute, family="shape", note="Local on each share row.")
def _permute(x, *dims, **kw):
    dims = kw.get("dims", dims)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list, torch.Size)):
        dims = tuple(dims[0])
    nd = len(_shape_of(x))
    perm = tuple(_norm(d, nd) for d in dims)
    if sorted(perm) != list(range(nd)):
        raise RuntimeError(f"permute: expected a permutation of {nd} dims, but got {tuple(dims)}.")
    return _step(x, ("permute", perm))


@implements(Tensor.transpose, torch.transpose, family="shape", note="Local on each share row.")
def _transpose(x, dim0, dim1):
    nd = len(_shape_of(x))
    perm = list(range(nd))
    a, b = _norm(dim0, nd), _norm(dim1, nd)
    perm[a], perm[b] = perm[b], perm[a]
    return _step(x, ("permute", tuple(perm)))


@implements(Tensor.t, torch.t, family="shape", note="Local on each share row.")
def _t(x):
    nd = len(_shape_of(x))
    if nd > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {nd}D")
    return x if nd < 2 else _transpose(x, 0, 1)


@implements(Tensor.T.__get__, family="shape", note="Local on each share row.")
def _T(x):  # torch: all dims reversed (deprecated for nd != 2, but that is what it computes)
    nd = len(_shape_of(x))
    return x if nd < 2 else _permute(x, tuple(reversed(range(nd))))


@implements(Tensor.__getitem__, family="shape", note="Local on each share row (advanced indexing too); a secret-shared index is refused.")
def _getitem(x, idx):
    h = transforms.hashable_index(idx)
    if h is not None:
        return _step(x, ("getitem", h))
    if isinstance(idx, ShareTensor):
        raise UnsupportedOpError("Indexing with a secret-shared index is not supported.")
    # Advanced indexing: index each party's row on its own. (Indexing the stacked shares with the party axis
    # in front would let torch move separated index dims in front of the party axis and mix the parties.)
    for part in (idx if isinstance(idx, tuple) else (idx,)):
        if isinstance(part, (Tensor, list)):
            x._session.comm.note_public("index", torch.as_tensor(part))
        else:
            x._session.comm.note_public("index", detail=part)
    rows = [row[idx] for row in x._shares]
    return _wrap(x, torch.stack(rows), x._frac)


@implements(Tensor.contiguous, Tensor.clone, Tensor.detach, Tensor.requires_grad_, family="metadata", softmax_safe=True,
            note="Returns the value itself (clone does not copy); local.")
def _identity(x, *args, **kwargs):
    return x


@implements(Tensor.to, Tensor.cpu, Tensor.cuda, Tensor.float, Tensor.type_as, family="metadata", softmax_safe=True,
            note="Moves the shares to another device, or returns the value; an integer dtype is refused; local.")
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


_JOIN_NOTE = "Local; every operand must be shared (share public ones first)."
implements(torch.cat, torch.concat, family="shape", note=_JOIN_NOTE)(_join("cat"))
implements(torch.stack, family="shape", note=_JOIN_NOTE)(_join("stack"))


# ---------------------------------------------------------------------------------------------- transformer shape ops
def _sizes(args, kw, key):
    sizes = kw.get(key, args)
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
        sizes = tuple(sizes[0])
    return tuple(int(s) for s in sizes)


@implements(Tensor.expand, family="shape", note="Local on each share row (a class token to the batch, ...).")
def _expand(x, *sizes, **kw):
    shape = _meta_shape(x, lambda t: t.expand(*_sizes(sizes, kw, "size")))
    if shape == _shape_of(x):
        return x
    return _wrap(x, transforms.align_party(x._shares, len(shape)).expand((x._shares.shape[0],) + shape), x._frac, None)


@implements(Tensor.expand_as, family="shape", note="Local on each share row.")
def _expand_as(x, other):
    return _expand(x, tuple(other.shape))


@implements(Tensor.repeat, family="shape", note="Local on each share row.")
def _repeat(x, *sizes, **kw):
    reps = _sizes(sizes, kw, "repeats")
    shares = transforms.align_party(x._shares, len(reps))
    return _wrap(x, shares.repeat((1,) + reps), x._frac, None)


@implements(Tensor.unflatten, torch.unflatten, family="shape", note="Local on each share row.")
def _unflatten(x, dim, sizes):
    return _reshape_to(x, _meta_shape(x, torch.unflatten, dim, tuple(sizes)))


def _slices(x, dim, bounds):
    nd = len(_shape_of(x))
    d = _norm(dim, nd)
    return tuple(_getitem(x, (slice(None),) * d + (slice(a, b),)) for a, b in bounds)


@implements(Tensor.split, torch.split, family="shape", note="Local on each share row (basic slices).")
def _split(x, split_size_or_sections, dim=0):
    n = _shape_of(x)[_norm(dim, len(_shape_of(x)))]
    if isinstance(split_size_or_sections, int):
        starts = list(range(0, n, split_size_or_sections))
        bounds = [(a, min(a + split_size_or_sections, n)) for a in starts]
    else:
        ends = list(torch.tensor(list(split_size_or_sections)).cumsum(0).tolist())
        bounds = list(zip([0] + ends[:-1], ends))
    return _slices(x, dim, bounds)


@implements(Tensor.chunk, torch.chunk, family="shape", note="Local on each share row (basic slices).")
def _chunk(x, chunks, dim=0):
    n = _shape_of(x)[_norm(dim, len(_shape_of(x)))]
    return _split(x, -(-n // chunks), dim)


@implements(Tensor.unbind, torch.unbind, family="shape", note="Local on each share row (basic indices).")
def _unbind(x, dim=0):
    nd = len(_shape_of(x))
    d = _norm(dim, nd)
    return tuple(_getitem(x, (slice(None),) * d + (i,)) for i in range(_shape_of(x)[d]))


@implements(Tensor.__iter__, family="shape", note="Local: the values along dim 0, as `unbind(0)`.")
def _iter(x):
    if not _shape_of(x):
        raise TypeError("iteration over a 0-d tensor")
    return iter(_unbind(x, 0))
