"""matmul, linear and conv2d: Beaver products between shared operands, local products with public ones."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import protocols as P
from .. import transforms
from ..errors import ShapeMismatchError, UnsupportedOpError
from ..ring import ring_conv2d, ring_matmul
from ..tensor import ShareTensor, check_same_session, implements
from ._common import Tensor, _fixed, _pair, _public
from .arithmetic import _add

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


@implements(Tensor.__matmul__, Tensor.matmul, torch.matmul, Tensor.mm, torch.mm, family="bilinear", limit="product",
            note="Two shared operands: a Beaver product (at most 1 round; a shared operand's mask is opened once "
            "and reused); a public operand: local.")
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


@implements(F.linear, family="bilinear", limit="product", note="As matmul, with the weight transposed; the bias is added locally.")
def _h_linear(x, weight, bias=None):
    if isinstance(x, ShareTensor) and x.shape[-1] != weight.shape[-1]:
        raise ShapeMismatchError(f"Expected input features {weight.shape[-1]} for linear, but got shape {tuple(x.shape)}.")
    if len(x.shape) == 1:  # a single feature vector: as a batch of one (keeps the party axis out of the product)
        out = _h_linear(x.unsqueeze(0), weight).squeeze(0)
        return out if bias is None else _add(out, bias)
    out = _bilinear("linear", x, weight)
    return out if bias is None else _add(out, bias)


@implements(F.conv2d, family="bilinear", limit="product", note="As matmul (shared weights: their mask is opened once and reused), with "
            "any stride, padding, dilation and groups; string padding is refused.")
def _h_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if isinstance(padding, str):
        raise UnsupportedOpError("conv2d with string padding is not supported on shares; pass integers.")
    kw = dict(stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation), groups=groups)
    out = _bilinear("conv2d", x, weight, **kw)
    if bias is not None:
        out = _add(out, bias.reshape(-1, 1, 1) if isinstance(bias, ShareTensor) else torch.as_tensor(bias).reshape(-1, 1, 1))
    return out

