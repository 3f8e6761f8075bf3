"""Smooth functions on secret shares: piecewise polynomials (GELU, sigmoid, tanh, SiLU, erf, exp) and
normalised powers (reciprocal, rsqrt, sqrt, log), built only from the core protocols (comparison, Beaver product,
truncation). Pure torch; no new dealer material kind.

Why these protocols (see ``notes/transformers.md``; read, not copied):

* **Piecewise polynomials, one comparison call for all breakpoints** (PUMA's GELU, generalised). Every
  breakpoint ``t_i`` is compared at once (``[x >= t_i]`` for all ``i`` in ONE :func:`~.protocols.compare_bit`
  call: one comparison's rounds, whatever the number of pieces); the powers ``x^2 .. x^D`` are computed once and
  shared by every piece (each piece is fitted centred on its interval and expanded in powers of ``x``; simulated
  with the truncations' errors, this costs at most 2e-5 beyond the fit); the tails are constant or linear
  (GELU/SiLU: 0 and ``x``; sigmoid: 0 and 1; erf/tanh: -1 and 1; exp: 0). The pieces' values are selected by ONE
  Beaver product of the comparison bits with the steps between consecutive pieces' values. A piece evaluated far from its interval may wrap around the
  ring (its powers overflow): the selection telescopes (``V_0 + sum_i [x >= t_i] (V_i - V_(i-1))``), so that garbage
  cancels exactly in the ring. Constant rounds: ``cmp + 2 ceil(log2 D) + 2`` (13 at the defaults, ``D = 6``),
  independent of the input's magnitude, unlike CrypTen's Taylor/Newton iterations (whose ``erf`` diverges beyond
  ``|x| ~ 2`` and needs its defaults changed for this model).
* **Powers with reused masks.** ``x`` is opened (masked) once and every later product with ``x`` reuses that
  opening, as the model's weights do; ``x^2`` likewise: ``x^3 = x^2 x`` opens only ``x^2``, and ``x^4 = x^2 x^2``
  opens nothing (the dealer's ``[c]`` is ``[a^2]``). Degree 6 opens ``x`` (twice: the first product's two
  operands), ``x^2`` and ``x^4``: 4 openings and 3 truncations per element instead of 10 and 5.
* **exp by range reduction** (``torch.exp`` on the whole share range): ``x = j ln 2 + r`` with ``j`` from one
  comparison call against the multiples of ``ln 2``, ``r`` in ``[0, ln 2)`` (local), ``e^r`` by one polynomial and
  ``2^j`` a local factor; the lowest interval's factor is 0 (``e^x`` is below half an LSB there). The softmax uses
  the cheaper piecewise ``exp`` on ``x <= 0`` instead (4 pieces, no range reduction).
* **Normalised powers** ``x^p`` (``p`` = -1, -1/2, 1/2) and ``log x``: ONE comparison call against the powers
  of two ``2^k`` (the interval ``2^j <= x < 2^(j+1)`` as indicator bits, a "bit length" without bit
  decomposition), then everything that depends on ``j`` alone is a public constant per interval times an
  indicator bit, i.e. local: the scale ``2^-j`` that brings ``m = x 2^-j`` into ``[1, 2)`` and the factor
  ``2^(p j)`` (or the term ``j ln 2``) that undoes it. ``m^p`` / ``ln m`` on ``[1, 2)`` is one degree-6
  polynomial (error < 1e-5). Rounds: ``cmp + 8`` (powers), ``cmp + 6`` (log); no Newton iteration whose
  convergence depends on an initial guess and the input's range (CrypTen needs 8 inv-sqrt iterations, not its
  default 3, on this project's tiny ViT).

Costs are declared in :mod:`.approx_costs` (:data:`SMOOTH_COSTS`, built from the declared costs of the parts) and
a test checks them against measured traffic. The fits live in :mod:`.approx_specs`: each spec states its domain and
the error bound measured at fit time (``max_error``, float arithmetic); the fixed-point error adds about
``(1 + sum_k k |a_k| h^(k-1)) * 2^-f``. This module holds the protocols on shares (and re-exports both).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import protocols as P
from .approx_costs import SMOOTH_COSTS, exp_cost, piecewise_cost, power_cost, relu_minus_cost
from .approx_specs import (EXP_REDUCED, NORM_SPECS, RELU_MINUS, RING_HEADROOM_BITS, SPECS, PiecewisePoly,
                           _intervals, _power_plan, evaluate_plain, fit_piecewise)

if TYPE_CHECKING:
    from .runtime import PartyContext

__all__ = ["PiecewisePoly", "SPECS", "SMOOTH_COSTS", "piecewise", "relu_minus", "normalized_power", "exp",
           "piecewise_cost", "relu_minus_cost", "power_cost", "exp_cost", "fit_piecewise",
           # re-exported from .approx_specs too (their home), as before the split
           "RELU_MINUS", "NORM_SPECS", "EXP_REDUCED", "RING_HEADROOM_BITS", "evaluate_plain"]


# ---------------------------------------------------------------------------------------------- share helpers
class _Operand:
    """A Beaver factor: its shares and, once a product opened it, its mask (reused by every later product)."""

    __slots__ = ("shares", "mask")

    def __init__(self, shares: torch.Tensor) -> None:
        self.shares, self.mask = shares, None


def _mul(sess: PartyContext, x, y) -> torch.Tensor:
    """Ring product of two share tensors or :class:`_Operand` (one Beaver product; opened masks are reused)."""
    wrap = lambda v: v if isinstance(v, _Operand) else _Operand(v)  # noqa: E731
    return P.beaver(sess, "mul", wrap(x), wrap(y))


def _plus_public(sess: PartyContext, shares: torch.Tensor, pub: torch.Tensor) -> torch.Tensor:
    """``shares + pub`` (int64, broadcasting over the logical dims): the first party adds it."""
    out = shares.expand(torch.broadcast_shapes(shares.shape, (1,) + tuple(pub.shape))).clone()
    if sess.holds_first:
        out[0] += pub.to(out.device)
    return out


def _encode(v, bits: int, device) -> torch.Tensor:
    return torch.round(torch.as_tensor(v, dtype=torch.float64) * 2.0**bits).to(torch.int64).to(device)


def _indicators(sess: PartyContext, x: torch.Tensor, thresholds: list[float], f: int) -> torch.Tensor:
    """Arithmetic shares (scale 0) of the interval indicators ``[P, *S, M + 1]`` of ``x`` (frac ``f``) for the sorted
    ``thresholds`` ``t_1 < ... < t_M``: interval 0 is ``x < t_1``, interval ``i`` is ``t_i <= x < t_(i+1)``, the
    last ``x >= t_M``. One comparison call for all thresholds."""
    return _intervals_of(sess, P.compare_thresholds(sess, x, _encode(thresholds, f, x.device)))  # [x >= t_i]


def _intervals_of(sess: PartyContext, above: torch.Tensor) -> torch.Tensor:
    """Interval indicators ``[P, *S, M + 1]`` from the bits ``[x >= t_i]`` of increasing thresholds (local)."""
    below = -above[..., :1]
    if sess.holds_first:
        below[0] += 1
    return torch.cat([below, above[..., :-1] - above[..., 1:], above[..., -1:]], -1)


def _powers(sess: PartyContext, u: torch.Tensor, degree: int, f: int) -> dict[int, torch.Tensor]:
    """``{k: u^k}`` for ``k = 1..degree`` at frac ``f``: per level of :func:`~.approx_specs._power_plan`, its
    products (each factor is opened by its first product and reused after) and one truncation of the level's powers,
    stacked."""
    operands = {1: _Operand(u)}
    pw = {1: u}
    for level in _power_plan(degree):
        prods = torch.stack([_mul(sess, operands[top], operands[other]) for top, other in level], -1)
        prods = P.truncate(sess, prods, f)
        for i, (top, other) in enumerate(level):
            pw[top + other] = prods[..., i]
            operands[top + other] = _Operand(pw[top + other])
    return pw


def _polynomial(sess: PartyContext, pw: dict[int, torch.Tensor], coeffs, f: int, bits: int) -> torch.Tensor:
    """``sum_k a_k u^k`` at frac ``f + bits`` (not truncated); piece ``i``'s coefficients ``coeffs[i]`` along a new
    last axis (the powers are shared by the pieces)."""
    deg = max(len(c) for c in coeffs) - 1
    a = np.zeros((len(coeffs), deg + 1))
    for i, c in enumerate(coeffs):
        a[i, : len(c)] = c
    device = pw[1].device
    out = None
    for k in range(1, deg + 1):
        term = pw[k].unsqueeze(-1) * _encode(a[:, k], bits, device)
        out = term if out is None else out + term
    return _plus_public(sess, out, _encode(a[:, 0], f + bits, device))


def _single_poly(sess: PartyContext, u: torch.Tensor, spec: PiecewisePoly, f: int) -> torch.Tensor:
    """A one-piece spec's polynomial in ``u - center`` at frac ``f`` (powers, one truncation)."""
    v = _plus_public(sess, u, -_encode(spec.centers[0], f, u.device))
    bits = spec.coef_bits(f, shared=False)
    return P.truncate(sess, _polynomial(sess, _powers(sess, v, spec.degree, f), spec.coeffs, f, bits), bits)[..., 0]


# ---------------------------------------------------------------------------------------------- protocols
def piecewise(sess: PartyContext, x: torch.Tensor, spec: PiecewisePoly) -> torch.Tensor:
    """Shares (frac ``f = precision_bits``) of ``spec(x)`` for shares ``x`` at frac ``f``.

    Protocol: 1. ``[x >= t_i]`` for the ``M`` thresholds (one comparison call); 2. the powers of ``x``
    (``ceil(log2 D)`` levels, masks reused); 3. every piece's polynomial locally (coefficients expanded in powers of
    ``x``, at ``spec.coef_bits(f)`` extra bits), truncated once; the tails (integer slopes) locally; 4. one Beaver
    product of the ``M`` bits with the steps between consecutive intervals' values (telescoping). Cost:
    :func:`piecewise_cost`.
    """
    f = sess.precision_bits
    above = P.compare_thresholds(sess, x, _encode(list(spec.thresholds), f, x.device))  # [P, *S, M]: [x >= t_i]
    bits = spec.coef_bits(f, shared=True)
    inner = _polynomial(sess, _powers(sess, x, spec.degree, f), spec.expanded(shared=True), f, bits)
    values = [P.truncate(sess, inner, bits)]
    if spec.left is not None:
        values.insert(0, _plus_public(sess, x * int(spec.left[1]), _encode(spec.left[0], f, x.device)).unsqueeze(-1))
    if spec.right is not None:
        values.append(_plus_public(sess, x * int(spec.right[1]), _encode(spec.right[0], f, x.device)).unsqueeze(-1))
    values = torch.cat(values, -1)  # [P, *S, M + 1]: the value of every interval
    # telescoping: V_0 + sum_i [x >= t_i] (V_i - V_(i-1)) is V_k in interval k (M products, not M + 1); the other
    # intervals' values, garbage or not, cancel exactly in the ring
    steps = values[..., 1:] - values[..., :-1]
    return values[..., 0] + _mul(sess, above, steps).sum(-1)


def relu_minus(sess: PartyContext, x: torch.Tensor, spec: PiecewisePoly) -> torch.Tensor:
    """Shares of ``relu(x) - h(|x|)`` (GELU, SiLU) for ``x`` at frac ``f``: one ReLU, ``|x| = 2 relu(x) - x`` (local),
    then ``h`` as :func:`piecewise` on ``|x|``. Cost: :func:`relu_minus_cost`."""
    r = P.relu(sess, x, None)
    return r - piecewise(sess, 2 * r - x, spec)


def _scale(sess: PartyContext, g: torch.Tensor, ind: torch.Tensor, factors: list[float], f: int) -> torch.Tensor:
    """``g * sum_i ind_i factors_i`` at frac ``f`` (``|g| < 2``): the factor is local (public constants times the
    indicators) at as many fractional bits as keep the product below 2^61; one Beaver product, one truncation."""
    top = max(abs(v) for v in factors)
    bits = 59 - f - max(0, math.ceil(math.log2(top)))
    d = (ind * torch.tensor([round(v * 2.0**bits) for v in factors], dtype=torch.int64, device=g.device)).sum(-1)
    return P.truncate(sess, _mul(sess, g, d), bits)


def normalized_power(sess: PartyContext, x: torch.Tensor, p, lo: int, hi: int, signed: bool = False,
                     fine: tuple[torch.Tensor, int, int] | None = None,
                     wide: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Shares (frac ``f``) of ``x^p`` (``p`` in -1, -0.5, 0.5) or of ``ln x`` (``p="log"``), ``x`` at frac ``f``.

    ``lo``/``hi``: the exponents ``j`` of the intervals ``2^j <= |x| < 2^(j+1)`` told apart (``x`` below ``2^(lo+1)``
    is treated as in ``[2^lo, 2^(lo+1))``, above ``2^hi`` as in ``[2^hi, 2^(hi+1))``); ``signed``: negative ``x``
    too (reciprocal only). Protocol: 1. interval indicators (one comparison call, ``hi - lo`` thresholds, twice
    that plus one when signed); 2. ``m = x * c`` with the local ``c = sum_j ind_j sign_j 2^-j``, so ``m`` is in
    ``[1, 2)`` (a Beaver product and a truncation); 3. ``m^p`` by a degree-6 polynomial in ``m - 1.5`` (3 levels of
    powers, one truncation); 4. times the local ``d = sum_j ind_j sign_j 2^(p j)`` (a Beaver product and a
    truncation), or plus ``sum_j ind_j j ln 2`` for the log (local). Cost: :func:`power_cost`.

    ``fine = (shares, frac, divisor)``: the same value as ``x`` times ``divisor`` (a positive integer), at ``frac > f``
    fractional bits (a layer norm's sum of squares): ``m`` is taken from it, so a small ``x`` keeps the precision
    that truncating it to ``f`` bits would lose (``x`` still picks the interval); ``c`` then holds
    ``2^(G - j) / divisor`` at ``G`` bits (rounded: relative error below ``divisor 2^-(G - hi)``).

    ``wide = (w, coarse)``: ``x`` may be wrong beyond the comparison range (a layer norm's variance of values up to
    2^15 reaches 2^30); ``coarse`` holds ``x / 2^w`` computed so that it stays right (frac ``f``): the intervals go on up
    to ``2^(hi + w)``, told apart on ``coarse``, and the comparisons of ``x`` itself are overridden by
    ``[x >= 2^(hi+1)]`` (one Beaver product of bits).
    """
    f = sess.precision_bits
    if wide:
        ind, intervals = _wide_indicators(sess, x, lo, hi, wide, f)
        hi = hi + wide[0]
    else:
        thresholds, intervals = _intervals(lo, hi, signed)
        ind = _indicators(sess, x, thresholds, f)
    if fine is None:
        scale_bits, source, divisor = max(hi, 0), x, 1
    else:
        source, frac, divisor = fine
        scale_bits = 59 - frac  # |m| < 2: the product stays below 2^61
    scales = [s * round(2.0 ** (scale_bits - j) / divisor) for s, j in intervals]
    c = (ind * torch.tensor(scales, dtype=torch.int64, device=x.device)).sum(-1)
    m = P.truncate(sess, _mul(sess, source, c), scale_bits + (0 if fine is None else fine[1] - f))
    g = _single_poly(sess, m, NORM_SPECS[p], f)
    if p == "log":
        return g + (ind * _encode([j * math.log(2) for _, j in intervals], f, x.device)).sum(-1)
    return _scale(sess, g, ind, [s * 2.0 ** (p * j) for s, j in intervals], f)


def _wide_indicators(sess: PartyContext, x: torch.Tensor, lo: int, hi: int, wide_coarse: tuple, f: int):
    """Indicators of ``2^j <= x < 2^(j+1)`` for ``j = lo .. hi + wide`` (``x >= 0``), for ``x`` beyond the comparison
    range: ``x`` and ``coarse = x / 2^wide`` are compared with ``2^k`` (``k = lo+1 .. hi``) in one call; a bit of ``x``
    itself is right only while ``x < 2^(hi+1)``, so it is ORed with ``big = [coarse >= 2^(hi+1-wide)]``."""
    wide, coarse = wide_coarse
    pos = [2.0**k for k in range(lo + 1, hi + 1)]
    bits = P.compare_thresholds(sess, torch.stack([x, coarse], -1), _encode(pos, f, x.device))  # [P, *S, 2, M]
    low, high = bits[..., 0, :], bits[..., 1, :]  # [x >= 2^k], [x >= 2^(k + wide)]
    top = hi + 1 - wide  # the coarse bit for 2^(hi + 1)
    big = high[..., top - (lo + 1): top - lo]
    low = low + big - _mul(sess, low, big.expand(low.shape).contiguous())  # OR
    thermo = torch.cat([low, high[..., top - (lo + 1):]], -1)  # [x >= 2^k] for k = lo+1 .. hi + wide
    return _intervals_of(sess, thermo), [(1, j) for j in range(lo, hi + wide + 1)]


def exp(sess: PartyContext, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Shares (frac ``f``) of ``e^x`` for ``x`` at frac ``f``: ``x = j ln 2 + r`` with ``j`` in ``lo..hi`` (one
    comparison call against ``(lo + 1) ln 2 .. hi ln 2``), ``r = x - j ln 2`` local, ``e^r`` by one degree-6
    polynomial on ``[0, ln 2)``, times the local ``2^j`` (0 for the lowest interval: ``e^x < 2^(lo + 1)`` there).
    Cost: :func:`exp_cost`."""
    f = sess.precision_bits
    js = list(range(lo, hi + 1))
    ind = _indicators(sess, x, [j * math.log(2) for j in js[1:]], f)
    r = x - (ind * _encode([j * math.log(2) for j in js], f, x.device)).sum(-1)
    g = _single_poly(sess, r, EXP_REDUCED, f)
    return _scale(sess, g, ind, [0.0] + [2.0**j for j in js[1:]], f)
