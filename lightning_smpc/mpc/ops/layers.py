"""Layers without a protocol: eval-mode dropout, and the skipped softmax with its checks."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..errors import UnsupportedOpError
from ..tensor import ShareTensor, SkippedSoftmax, implements
from ._common import Tensor, _norm, _shape_of, _wrap

@implements(F.dropout, torch.dropout, family="layers", softmax_safe=True,
            note="The identity in eval mode (local); training mode is refused.")
def _h_dropout(x, p=0.5, training=True, inplace=False):
    if training:
        raise UnsupportedOpError("dropout in training mode on shares: call model.eval() (predict does).")
    return x


@implements(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, Tensor.softmax, Tensor.log_softmax, family="layers", softmax_safe=True,
            note="Skipped (free): the result holds the logits, and only an argmax (or a max's indices) over the same "
            "dim may use it.")
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
