"""Smooth functions on shares: GELU, sigmoid, tanh, SiLU, erf, exp, reciprocal, rsqrt, sqrt, log, division by a
secret, softmax inside a network, and the one-hot of secret ids.

The protocols live in :mod:`..approx` (piecewise polynomials and normalised powers over the core protocols); the
handlers here only fix the scale (``precision_bits``), choose each function's interval range and wrap results. The
transformer layers built on them (layer_norm, masking, attention, einsum, embeddings) are in :mod:`.transformer`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import approx as A
from ..errors import UnsupportedOpError
from ..tensor import MATERIALIZE, ShareTensor, implements
from ._common import Tensor, _fixed, _lift, _norm, _shape_of, _wrap
from .arithmetic import _add, _divide_public, _h_mul
from .nonlinear import _move_last
from .pooling import _window_max
from .shape import _permute


def _at_precision(x: ShareTensor) -> ShareTensor:
    """``x`` at exactly ``precision_bits`` fractional bits (a pending product truncated, an integer lifted)."""
    x = _fixed(x)
    f = x._session.precision_bits
    return x if x._frac == f else _wrap(x, _lift(x, f), f, None)


def _piecewise(x: ShareTensor, name: str) -> ShareTensor:
    x = _at_precision(x)
    protocol = A.relu_minus if name in A.RELU_MINUS else A.piecewise
    return _wrap(x, protocol(x._session, x._shares, A.SPECS[name]), x._session.precision_bits, None)


def _range_exponents(sess) -> tuple[int, int]:
    """Interval exponents ``j`` told apart for a normalised power over the whole share range:
    ``2^-precision_bits`` (1 LSB) up to ``2^(compare_bits - precision_bits - 1)``."""
    return -sess.precision_bits, sess.compare_bits - sess.precision_bits - 1


def _power(x: ShareTensor, p, lo: int | None = None, hi: int | None = None, signed: bool = False,
           fine=None, wide: int = 0) -> ShareTensor:
    x = _at_precision(x)
    sess = x._session
    dlo, dhi = _range_exponents(sess)
    lo, hi = max(dlo, dlo if lo is None else lo), min(dhi, dhi if hi is None else hi)
    return _wrap(x, A.normalized_power(sess, x._shares, p, lo, hi, signed, fine, wide), sess.precision_bits, None)


def _note(name: str, what: str) -> str:
    """The op table's one sentence: protocol, declared cost at the defaults (2 parties), error (details: approx)."""
    spec = A.SPECS[name]
    cost = A.SMOOTH_COSTS[name](2, 1)
    how = (f"relu(x) - h(|x|), h in {len(spec.coeffs)} pieces" if name in A.RELU_MINUS
           else f"{len(spec.coeffs) + len(spec.tails)} pieces")
    return (f"{what}: {how} of degree {spec.degree}, one comparison call; {cost['rounds']} rounds, "
            f"{cost['bytes_sent']} B/element; error {spec.max_error:.0e} + fixed point (<= 8e-5).")


# ---------------------------------------------------------------------------------------------- activations
@implements(F.gelu, family="smooth", limit="compare", note=_note("gelu", "Piecewise polynomial (`tanh` form: its own fit)"))
def _h_gelu(x, approximate: str = "none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Expected approximate='none' or 'tanh', but got {approximate!r}.")
    return _piecewise(x, "gelu" if approximate == "none" else "gelu_tanh")


@implements(torch.sigmoid, Tensor.sigmoid, F.sigmoid, family="smooth", limit="compare", note=_note("sigmoid", "Piecewise polynomial"))
def _h_sigmoid(x):
    return _piecewise(x, "sigmoid")


@implements(torch.tanh, Tensor.tanh, F.tanh, family="smooth", limit="compare", note=_note("tanh", "Piecewise polynomial"))
def _h_tanh(x):
    return _piecewise(x, "tanh")


@implements(F.silu, family="smooth", limit="compare", note=_note("silu", "Piecewise polynomial"))
def _h_silu(x, inplace: bool = False):
    return _piecewise(x, "silu")


@implements(torch.erf, Tensor.erf, torch.special.erf, family="smooth", limit="compare", note=_note("erf", "Piecewise polynomial"))
def _h_erf(x):
    return _piecewise(x, "erf")


@implements(torch.exp, Tensor.exp, family="smooth", limit="exp",
            note="x = j ln2 + r: j by one comparison call, e^r a degree-6 polynomial, times 2^j; 16 rounds; relative "
            "error ~1e-5; 0 below -11.8, and x < 10.4 (the share range).")
def _h_exp(x):
    x = _at_precision(x)
    sess = x._session
    f = sess.precision_bits
    return _wrap(x, A.exp(sess, x._shares, -(f + 2), sess.compare_bits - f - 1), f, None)


_POWER_NOTE = ("One comparison call finds 2^j <= x < 2^(j+1); x 2^-j in [1, 2) by a degree-6 polynomial, times a local "
               "factor: {rounds} rounds; relative error ~1e-5 + 2^-f/x; {domain}.")


@implements(torch.rsqrt, Tensor.rsqrt, family="smooth", limit="power",
            note=_POWER_NOTE.format(rounds=16, domain="x >= 2^-f"))
def _h_rsqrt(x):
    return _power(x, -0.5)


@implements(torch.sqrt, Tensor.sqrt, family="smooth", limit="power",
            note=_POWER_NOTE.format(rounds=16, domain="x >= 2^-f"))
def _h_sqrt(x):
    return _power(x, 0.5)


@implements(torch.reciprocal, Tensor.reciprocal, family="smooth", limit="power",
            note=_POWER_NOTE.format(rounds=16, domain="both signs, |x| >= 2^-15; 1/x to 2^-f"))
def _h_reciprocal(x):
    return _power(x, -1.0, lo=-(x._session.compare_bits - x._session.precision_bits - 1), signed=True)


@implements(torch.log, Tensor.log, family="smooth", limit="power",
            note=_POWER_NOTE.format(rounds=14, domain="x >= 2^-f; ln m + j ln 2"))
def _h_log(x):
    return _power(x, "log")


@implements(Tensor.__rtruediv__, family="smooth", limit="power", note="A public numerator over a shared denominator: the reciprocal "
            "(as `torch.reciprocal`), times the numerator.")
def _h_rdiv(x, y):
    return _h_mul(_h_reciprocal(x), y)


def divide_secret(x, y: ShareTensor) -> ShareTensor:
    """``x / y`` for a secret ``y``: ``x * reciprocal(y)``."""
    return _h_mul(x, _h_reciprocal(y))


# ``/`` lives here (not in .arithmetic, which the smooth functions build on): a secret divisor needs the reciprocal.
@implements(Tensor.__truediv__, Tensor.div, torch.div, family="arithmetic", limit="power",
            note="Secret divisor: times its reciprocal. Public (no `rounding_mode`): 1 to 3 truncation rounds, error "
            "<= 2 + |q| 2^(f - s) LSB (f = precision_bits, s = 61 - compare_bits; see `_divide_public`).")
def _h_div(x, y, *, rounding_mode=None):
    if rounding_mode is not None:
        raise UnsupportedOpError(f"div(rounding_mode={rounding_mode!r}) on shares is not supported; divide, then reveal.")
    if isinstance(y, ShareTensor):
        return divide_secret(x, y)
    return _divide_public(x, y)


# ---------------------------------------------------------------------------------------------- softmax
def softmax(x: ShareTensor, dim: int, log: bool = False) -> ShareTensor:
    """The real (log-)softmax over ``dim``: ``e = exp(x - max)`` (a tree of ReLU maxima, ``n - 1`` comparisons per
    row in ``ceil(log2 n)`` levels, rather than the argmax protocol's ``n(n-1)/2``; then a piecewise exp on
    non-positive inputs), ``e / sum(e)`` with the reciprocal of the sum in ``[1, n]`` (or ``x - max - ln(sum)``).
    Rounds at the defaults: 5 ceil(log2 n) (max) + 13 (exp) + 16 (reciprocal) + 1 (product)."""
    nd = len(_shape_of(x))
    d = _norm(dim, nd)
    x._session.comm.note_public("softmax over", detail=(d, log))
    logits = _wrap(x, x._shares, x._frac, x.mask, skipped=None)
    y = _move_last(logits, d)
    top = _window_max(y, y._shares, "tree").unsqueeze(-1)  # ceil(log2 n) ReLU levels: n - 1 comparisons per row
    shifted = _at_precision(_add(y, top, -1))  # <= 0 (the max itself: 0)
    n = _shape_of(y)[-1]
    hi = max(1, math.ceil(math.log2(n)))
    e = _piecewise(shifted, "exp_nonpositive")
    total = e.sum(-1, keepdim=True)  # in [1, n]: the max's term is exp(0) = 1
    if log:
        out = _add(shifted, _power(total, "log", lo=0, hi=hi), -1)
    else:
        out = _h_mul(e, _power(total, -1.0, lo=0, hi=hi))
    if d != nd - 1:  # move the softmax dim back
        out = _permute(out, tuple(range(d)) + (nd - 1,) + tuple(range(d, nd - 1)))
    return out


def _materialize(x: ShareTensor) -> ShareTensor:
    key = ("softmax", x._skipped.dim, x._skipped.log)
    if key not in x._cache:
        x._cache[key] = softmax(x, x._skipped.dim, x._skipped.log)
    return x._cache[key]


MATERIALIZE.append(_materialize)


# ---------------------------------------------------------------------------------------------- one-hot
def one_hot_secret(ids: ShareTensor, n: int) -> ShareTensor:
    """Shares (scale 0) of the one-hot ``[*ids.shape, n]`` of secret integer ids in ``[0, n)``: the indicators of the
    intervals of one comparison call against ``1 .. n-1`` (ids outside ``[0, n)`` count as 0 or ``n - 1``)."""
    sess = ids._session
    if n == 1:
        return _wrap(ids, A._plus_public(sess, torch.zeros_like(ids._shares).unsqueeze(-1), torch.tensor(1)), 0, None)
    onehot = A._indicators(sess, ids._shares, list(range(1, n)), 0)
    return ShareTensor(onehot, sess, 0)
