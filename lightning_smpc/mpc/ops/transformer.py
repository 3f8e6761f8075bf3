"""The transformer layers on shares, built on the smooth functions of :mod:`.smooth`: layer_norm, masked_fill,
scaled_dot_product_attention, nn.MultiheadAttention, einsum and bmm, and embeddings (public or secret ids).

The handlers only normalise arguments (masks are public, shapes are checked) and compose the ops of the other
families (matmul, the softmax, the reciprocal square root): every byte they send is a protocol's. Split out of
:mod:`.smooth`, which the layers import (never the other way); importing :mod:`lightning_smpc.mpc.ops` registers
them after the smooth functions, in the same order as before.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import approx as A
from .. import protocols as P
from ..errors import ShapeMismatchError, UnsupportedOpError
from ..tensor import ShareTensor, implements
from ._common import Tensor, _lift, _shape_of, _wrap
from .arithmetic import _add, _divide_public, _h_mul
from .bilinear import _h_matmul
from .reduction import _h_mean, _h_sum
from .shape import _transpose
from .smooth import _at_precision, _power, _range_exponents, one_hot_secret, softmax


# ---------------------------------------------------------------------------------------------- layers
@implements(F.layer_norm, family="smooth", limit="variance",
            note="Mean and variance by local sums, public divisions and one square; `rsqrt(var + eps)` from the sum of "
            "squares kept at f + 8 bits; two products (affine: shared or public).")
def _h_layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    normalized_shape = tuple([normalized_shape] if isinstance(normalized_shape, int) else normalized_shape)
    if _shape_of(x)[len(_shape_of(x)) - len(normalized_shape):] != normalized_shape:
        raise ShapeMismatchError(f"layer_norm: expected an input ending in {normalized_shape}, but got {_shape_of(x)}.")
    dims = tuple(range(-len(normalized_shape), 0))
    centred = _at_precision(_add(x, _h_mean(x, dims, keepdim=True), -1))
    squares = _h_sum(_h_mul(centred, centred), dims, keepdim=True)  # frac 2f, exact in the ring
    sess, f = x._session, x._session.precision_bits
    var = _add(_divide_public(squares, math.prod(normalized_shape)), eps)  # picks the interval of the rsqrt
    # the rsqrt's normalised input from the sum of squares kept at f + 8 bits: a small variance keeps its precision
    fine_frac = f + 8
    fine = P.truncate(sess, _lift(squares, 2 * f), 2 * f - fine_frac)
    fine = A._plus_public(sess, fine, A._encode(eps * math.prod(normalized_shape), fine_frac, fine.device))
    lo = math.floor(math.log2(eps)) if eps > 0 else -f  # var + eps >= eps: no interval below it is needed
    # the variance of values up to 2^15 reaches 2^30, past the comparisons' (and the public division's) range: its
    # intervals above 2^15 are told apart on var / 2^15, from the sum of squares read at 15 more fractional bits (exact)
    w = _range_exponents(sess)[1]
    coarse = _divide_public(_wrap(squares, squares._shares, squares._frac + w, None), math.prod(normalized_shape))
    y = _h_mul(centred, _power(var, -0.5, lo=lo, fine=(fine, fine_frac, math.prod(normalized_shape)),
                               wide=(w, _at_precision(coarse)._shares)))
    if weight is not None:
        y = _h_mul(y, weight)
    return y if bias is None else _add(y, bias)


def _public_mask(mask, shape, device) -> Tensor:
    """A public mask broadcast to ``shape`` (it is bound into the openings where it is used: ``_fill_where_not``, or
    as a public operand)."""
    if isinstance(mask, ShareTensor):
        raise UnsupportedOpError("A secret-shared mask is not supported; masks must be public.")
    m = torch.as_tensor(mask).to(device)
    return m.expand(torch.broadcast_shapes(tuple(m.shape), shape))


def _fill_where_not(x: ShareTensor, keep: Tensor, value: float) -> ShareTensor:
    """``x`` where the public boolean ``keep``, else the public ``value`` (local: keep is public)."""
    x = _at_precision(x)
    x._session.comm.note_public("mask", keep)
    keep = keep.to(torch.int64)
    shares = x._shares * keep
    out = _wrap(x, shares, x._frac, None)
    fill = (1 - keep).to(torch.float64) * value
    return _add(out, fill)


@implements(Tensor.masked_fill, torch.masked_fill, family="smooth",
            note="A public mask and value: local (a secret mask is refused); -inf becomes the most negative value a "
            "later softmax can compare.")
def _h_masked_fill(x, mask, value):
    if isinstance(value, ShareTensor):
        raise UnsupportedOpError("masked_fill with a secret-shared value is not supported; the value must be public.")
    keep = ~_public_mask(mask, _shape_of(x), x._shares.device).to(torch.bool)
    return _fill_where_not(x, keep, _finite_fill(x, float(value)))


def _finite_fill(x: ShareTensor, value: float) -> float:
    """-inf/+inf (a masked attention score) as the largest magnitude a max-subtraction can still compare."""
    if math.isinf(value):
        big = 2.0 ** (x._session.compare_bits - x._session.precision_bits - 2)
        return -big if value < 0 else big
    return value


@implements(F.scaled_dot_product_attention, family="smooth", limit="pairwise",
            note="softmax(q @ k^T * scale + mask) @ v: two secret products and a softmax; public bool/float masks, "
            "`is_causal`; dropout and `enable_gqa` refused.")
def _h_sdpa(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False, scale=None,
            enable_gqa: bool = False):
    if dropout_p:
        raise UnsupportedOpError("scaled_dot_product_attention with dropout_p > 0 is training-only; call model.eval().")
    if enable_gqa:
        raise UnsupportedOpError("scaled_dot_product_attention(enable_gqa=True) is not supported on shares.")
    n_q, n_k, width = query.shape[-2], key.shape[-2], query.shape[-1]
    scale = 1 / math.sqrt(width) if scale is None else scale
    scores = _h_mul(_h_matmul(query, _transpose(key, -2, -1)), scale)
    shape = _shape_of(scores) if isinstance(scores, ShareTensor) else tuple(scores.shape)
    if is_causal:
        causal = torch.ones(n_q, n_k, dtype=torch.bool).tril()
        scores = _fill_where_not(scores, _public_mask(causal, shape, scores._shares.device), _finite_fill(scores, -math.inf))
    if attn_mask is not None:
        m = _public_mask(attn_mask, shape, scores._shares.device)
        if m.dtype == torch.bool:
            scores = _fill_where_not(scores, m, _finite_fill(scores, -math.inf))
        else:  # a float mask is added as a public operand (bound there)
            scores = _add(scores, torch.clamp(m.to(torch.float64), min=_finite_fill(scores, -math.inf)))
    return _h_matmul(softmax(scores, -1), value)


# ---------------------------------------------------------------------------------------------- einsum
@implements(torch.einsum, family="bilinear", limit="product",
            note="Two operands, no '...': permuted and reshaped into one batched matmul (its cost is matmul's); labels "
            "of one operand only are summed first.")
def _h_einsum(equation: str, *operands):
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if len(operands) != 2 or "..." in equation:
        raise UnsupportedOpError("einsum on shares takes exactly two operands and no '...'; write it with matmul.")
    ins, out = equation.replace(" ", "").split("->") if "->" in equation else (equation.replace(" ", ""), None)
    la, lb = ins.split(",")
    if out is None:
        out = "".join(sorted(c for c in set(la + lb) if (la + lb).count(c) == 1))
    a, b = operands
    a, la = _sum_labels(a, la, lb + out)
    b, lb = _sum_labels(b, lb, la + out)
    batch = [c for c in la if c in lb and c in out]
    contract = [c for c in la if c in lb and c not in out]
    left = [c for c in la if c not in lb]
    right = [c for c in lb if c not in la]
    size = {c: n for c, n in zip(la, a.shape)} | {c: n for c, n in zip(lb, b.shape)}
    prod = lambda cs: math.prod(size[c] for c in cs)  # noqa: E731
    a3 = _reorder(a, la, batch + left + contract).reshape(prod(batch), prod(left), prod(contract))
    b3 = _reorder(b, lb, batch + contract + right).reshape(prod(batch), prod(contract), prod(right))
    res = _h_matmul(a3, b3).reshape(*[size[c] for c in batch + left + right])
    return _reorder(res, batch + left + right, list(out))


def _sum_labels(t, labels: str, others: str):
    own = [i for i, c in enumerate(labels) if c not in others]
    if own:
        t = t.sum(dim=tuple(own))
        labels = "".join(c for c in labels if c not in [labels[i] for i in own])
    return t, labels


def _reorder(t, labels, order):
    labels = list(labels)
    perm = [labels.index(c) for c in order]
    return t if perm == list(range(len(perm))) else t.permute(*perm)


@implements(torch.bmm, Tensor.bmm, family="bilinear", limit="product", note="As matmul on 3-D operands (a Beaver product of two secrets).")
def _h_bmm(x, y):
    if len(x.shape) != 3 or len(y.shape) != 3:
        raise ShapeMismatchError(f"bmm expects 3-D operands, but got {tuple(x.shape)} and {tuple(y.shape)}.")
    return _h_matmul(x, y)


# ---------------------------------------------------------------------------------------------- embeddings
@implements(F.embedding, family="layers",
            note="Public ids: local row gathers. Secret ids (shared as integers): a one-hot from one comparison call "
            "against 1..V-1, then a product with the table: 5 rounds + 1, about 8 V + 3 V bytes per id.")
def _h_embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False):
    if max_norm is not None:
        raise UnsupportedOpError("embedding(max_norm=...) renormalises the table in place; not supported on shares.")
    if not isinstance(input, ShareTensor):  # public ids into a shared (or public) table: each party gathers its rows
        ids = torch.as_tensor(input)
        if ids.is_floating_point():
            raise TypeError(f"Expected integer token ids for embedding, but got {ids.dtype}.")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= weight.shape[0]):
            raise IndexError(f"index out of range in self: embedding ids must lie in [0, {weight.shape[0]}), got "
                             f"[{int(ids.min())}, {int(ids.max())}].")
        weight._session.comm.note_public("embedding ids", ids)
        return _wrap(weight, weight._shares[:, ids.to(weight._shares.device)], weight._frac, None)
    if input._frac != 0:
        raise UnsupportedOpError(
            "embedding of secret ids needs them shared as integers (frac_bits=0): share integer tensors as they are "
            "(the strategy does so for integer inputs), not as fixed-point values."
        )
    return _h_matmul(one_hot_secret(input, weight.shape[0]), weight)



# ---------------------------------------------------------------------------------------------- nn.MultiheadAttention
@implements(F.multi_head_attention_forward, family="smooth",
            note="nn.MultiheadAttention in eval: projections, softmax(q k^T / sqrt(d) + masks) v, output projection; "
            "public masks; bias_k/bias_v, add_zero_attn and static k/v are refused.")
def _h_multi_head_attention(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k,
                            bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True,
                            key_padding_mask=None, need_weights=True, attn_mask=None, use_separate_proj_weight=False,
                            q_proj_weight=None, k_proj_weight=None, v_proj_weight=None, static_k=None, static_v=None,
                            average_attn_weights=True, is_causal=False):
    if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None or static_v is not None:
        raise UnsupportedOpError("MultiheadAttention with bias_k/bias_v, add_zero_attn or static k/v is not supported.")
    if training and dropout_p:
        raise UnsupportedOpError("MultiheadAttention dropout is training-only; call model.eval().")
    unbatched = len(query.shape) == 2
    if unbatched:  # (L, E) -> (L, 1, E)
        query, key, value = (t.unsqueeze(1) for t in (query, key, value))
        key_padding_mask = None if key_padding_mask is None else torch.as_tensor(key_padding_mask).unsqueeze(0)
    n_q, batch, width = query.shape
    n_k = key.shape[0]
    head = width // num_heads
    if use_separate_proj_weight:
        weights = (q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        weights = in_proj_weight.chunk(3) if isinstance(in_proj_weight, ShareTensor) else torch.as_tensor(in_proj_weight).chunk(3)
    biases = (None,) * 3 if in_proj_bias is None else (
        in_proj_bias.chunk(3) if isinstance(in_proj_bias, ShareTensor) else torch.as_tensor(in_proj_bias).chunk(3))
    q, k, v = (F.linear(t, w, b) for t, w, b in zip((query, key, value), weights, biases))
    # (L, N, E) -> (N, H, L, d)
    q, k, v = (t.reshape(t.shape[0], batch, num_heads, head).permute(1, 2, 0, 3) for t in (q, k, v))
    scores = _h_mul(_h_matmul(q, _transpose(k, -2, -1)), head ** -0.5)
    blocked = _mha_blocked(attn_mask, key_padding_mask, batch, num_heads, n_q, n_k, is_causal)
    if blocked is not None:
        keep, bias = blocked
        if keep is not None:
            scores = _fill_where_not(scores, keep.to(scores._shares.device), _finite_fill(scores, -math.inf))
        if bias is not None:
            scores = _add(scores, torch.clamp(bias.to(torch.float64), min=_finite_fill(scores, -math.inf)))
    attn = softmax(scores, -1)  # (N, H, L, S)
    out = _h_matmul(attn, v).permute(2, 0, 1, 3).reshape(n_q, batch, width)
    out = F.linear(out, out_proj_weight, out_proj_bias)
    weights_out = None
    if need_weights:
        weights_out = attn.mean(1) if average_attn_weights else attn
        if unbatched:
            weights_out = weights_out.squeeze(0)
    return (out.squeeze(1) if unbatched else out), weights_out


def _mha_blocked(attn_mask, key_padding_mask, batch, heads, n_q, n_k, is_causal):
    """nn.MultiheadAttention's masks (bool: True = blocked; float: added) as ``(keep, bias)`` of shape
    ``(N, H, L, S)``, public."""
    keep, bias = None, None
    masks = []
    if attn_mask is not None:
        m = torch.as_tensor(attn_mask)
        m = m.reshape(batch, heads, n_q, n_k) if m.dim() == 3 else m
        masks.append(m)
    elif is_causal:
        masks.append(torch.ones(n_q, n_k, dtype=torch.bool).triu(1))
    if key_padding_mask is not None:
        masks.append(torch.as_tensor(key_padding_mask).reshape(batch, 1, 1, n_k))
    for m in masks:
        if isinstance(m, ShareTensor):
            raise UnsupportedOpError("A secret-shared attention mask is not supported; masks must be public.")
        if m.dtype == torch.bool:
            keep = ~m if keep is None else keep & ~m
        else:
            bias = m.double() if bias is None else bias + m.double()
    shape = (batch, heads, n_q, n_k)
    return (None if keep is None else keep.expand(shape), None if bias is None else bias.expand(shape)) if masks else None


if hasattr(torch, "_nested_tensor_from_mask_left_aligned"):
    @implements(torch._nested_tensor_from_mask_left_aligned, family="layers",
                note="Answers False: nn.TransformerEncoder's nested-tensor fast path is never taken on shares (local).")
    def _h_no_nested_fast_path(*args, **kwargs):
        return False
