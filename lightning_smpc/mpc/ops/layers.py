"""Layers without a protocol: eval-mode dropout, and the skipped softmax with its checks."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..errors import UnsupportedOpError
from ..tensor import MATERIALIZE, ShareTensor, SkippedSoftmax, implements
from ._common import Tensor, _norm, _shape_of, _wrap

@implements(F.dropout, torch.dropout, family="layers", softmax_safe=True,
            note="The identity in eval mode (local); training mode is refused.")
def _h_dropout(x, p=0.5, training=True, inplace=False):
    if training:
        raise UnsupportedOpError("dropout in training mode on shares: call model.eval() (predict does).")
    return x


_SOFTMAX_NOTE = ("Skipped (free) when only an argmax (or a max's indices) over its dim uses it; computed where anything "
                 "else does (attention): max, exp, reciprocal, about 40 rounds.")


def _skip_softmax(x, dim, log: bool):
    """Skipped: monotone along ``dim``, so an argmax over ``dim`` is unchanged. The result is marked with that dim
    (and whether it is a log_softmax); an op that needs its values computes the real softmax then (the mark's
    materialisation), so only an argmax over ``dim`` is free. Nothing reveals a skipped softmax."""
    nd = len(_shape_of(x))
    if dim is None:
        warnings.warn("Implicit dimension choice for softmax has been deprecated. Change the call to include dim=X "
                      "as an argument.", UserWarning, stacklevel=4)
    d = _norm(_legacy_softmax_dim(nd) if dim is None else dim, nd)
    if x._skipped is not None:  # a softmax of a softmax: the inner one's values are needed
        x = MATERIALIZE[0](x)
    return _wrap(x, x._shares, x._frac, x.mask, skipped=SkippedSoftmax(d, log))


@implements(F.softmax, torch.softmax, Tensor.softmax, family="layers", softmax_safe=True, limit="pairwise", note=_SOFTMAX_NOTE)
def _h_softmax(x, dim=None, *args, **kwargs):
    return _skip_softmax(x, dim, log=False)


@implements(F.log_softmax, torch.log_softmax, Tensor.log_softmax, family="layers", softmax_safe=True, limit="pairwise", note=_SOFTMAX_NOTE)
def _h_log_softmax(x, dim=None, *args, **kwargs):
    return _skip_softmax(x, dim, log=True)


def _legacy_softmax_dim(nd: int) -> int:
    """torch's choice when softmax is called without ``dim`` (deprecated there, kept for equal results)."""
    return 0 if nd in (0, 1, 3) else 1


def _skip_matches(x: ShareTensor, dim) -> bool:
    """An argmax over ``dim`` of the skipped softmax ``x`` equals the argmax of its logits (``x`` marked with a dim)."""
    mark, shape = x._skipped, _shape_of(x)
    if dim is None:  # over the flattened value: fine only when every other dim has size 1
        return all(n == 1 for i, n in enumerate(shape) if i != mark.dim)
    return _norm(dim, len(shape)) == mark.dim


def _check_skipped_argmax(x: ShareTensor, dim) -> ShareTensor:
    """``x``, or its real softmax where an argmax over ``dim`` of the logits would differ from the softmax's."""
    mark = x._skipped
    if mark is None:
        return x
    if mark.dim is None:
        raise UnsupportedOpError(
            "argmax/max of the values of a max over a skipped softmax: those values are the logits' maximum, "
            "not probabilities. Use the indices of the max, or remove the softmax from forward()."
        )
    return x if _skip_matches(x, dim) else MATERIALIZE[0](x)
