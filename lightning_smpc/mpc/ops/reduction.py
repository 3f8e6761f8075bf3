"""sum (local) and mean (a sum divided by the public count)."""
from __future__ import annotations

import math

import torch

from ..errors import UnsupportedOpError
from ..tensor import implements
from ._common import Tensor, _dims, _shape_of, _wrap
from .arithmetic import _divide_public

@implements(Tensor.sum, torch.sum, family="reduction", note="Local; an integer dtype is refused.")
def _h_sum(x, dim=None, keepdim=False, dtype=None):
    _no_dtype(dtype, "sum")
    dims = _dims(x, dim)
    x._session.comm.note_public("sum over", detail=(dims, keepdim))  # a dim is a public choice too
    if not dims:  # a 0-d value: nothing to reduce (``shares.sum(())`` would sum over the party axis)
        return _wrap(x, x._shares.clone(), x._frac, None)
    return _wrap(x, x._shares.sum(tuple(d + 1 for d in dims), keepdim=keepdim), x._frac, None)


@implements(Tensor.mean, torch.mean, family="reduction",
            note="A local sum, then a public division by the count (1 or 2 truncation rounds, as `/`).")
def _h_mean(x, dim=None, keepdim=False, dtype=None):
    total = _h_sum(x, dim, keepdim, dtype)
    count = math.prod(_shape_of(x)[d] for d in _dims(x, dim))
    return _divide_public(total, count)


def _no_dtype(dtype, name: str) -> None:
    if dtype is not None and not dtype.is_floating_point:
        raise UnsupportedOpError(f"{name}(dtype={dtype}) on shares: integer result dtypes are not supported.")
