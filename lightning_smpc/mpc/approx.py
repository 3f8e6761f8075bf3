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

Costs are declared next to the code (:data:`SMOOTH_COSTS`, built from the declared costs of the parts) and a test
checks them against measured traffic. Each spec states its domain and the error bound measured at fit time
(``max_error``, float arithmetic); the fixed-point error adds about ``(1 + sum_k k |a_k| h^(k-1)) * 2^-f``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import protocols as P
from .protocols import COSTS

if TYPE_CHECKING:
    from .runtime import PartyContext

__all__ = ["PiecewisePoly", "SPECS", "SMOOTH_COSTS", "piecewise", "relu_minus", "normalized_power", "exp",
           "piecewise_cost", "relu_minus_cost", "power_cost", "exp_cost", "fit_piecewise"]

# Products of a power with a public coefficient carry ``coef_bits(spec, f)`` extra fractional bits (truncated once):
# as many as keep every term below 2^59 in the ring, so a small high-order coefficient keeps its precision.
RING_HEADROOM_BITS = 59


@dataclass(frozen=True)
class PiecewisePoly:
    """``f(x)`` as ``left(x)`` below ``breaks[0]``, a polynomial in ``x - centers[i]`` on
    ``[breaks[i], breaks[i+1])``, ``right(x)`` from ``breaks[-1]`` on. Tails are ``(a, b)``: ``a + b x``.

    ``coeffs[i][k]`` multiplies ``(x - centers[i])^k``. A tail of ``None``: the outer piece extends that way (no
    comparison with its break; e.g. ``exp`` after a max subtraction never sees ``x > 0``). ``max_error`` is measured
    in float at fit time over the pieces (the tails' own error, e.g. GELU's ``0`` below -5, is included).
    """

    name: str
    breaks: tuple[float, ...]
    centers: tuple[float, ...]
    coeffs: tuple[tuple[float, ...], ...]
    left: tuple[float, float] | None
    right: tuple[float, float] | None
    max_error: float = 0.0
    domain: str = "all reals in the share range"

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The breaks compared with: all but an open side's outer one."""
        return self.breaks[(self.left is None): len(self.breaks) - (self.right is None)]

    @property
    def tails(self) -> tuple[tuple[float, float], ...]:
        return tuple(t for t in (self.left, self.right) if t is not None)

    @property
    def degree(self) -> int:
        return max(len(c) for c in self.coeffs) - 1

    def expanded(self, shared: bool) -> tuple[tuple[float, ...], ...]:
        """Each piece's coefficients in powers of ``x`` itself (``shared``: the pieces share one set of powers), or
        of its own centred variable ``x - c_i`` (a single piece)."""
        if not shared:
            return self.coeffs
        out = []
        for a, c in zip(self.coeffs, self.centers):
            b = np.zeros(len(a))
            for k, ak in enumerate(a):  # (x - c)^k by the binomial theorem
                b[: k + 1] += ak * np.array([math.comb(k, j) * (-c) ** (k - j) for j in range(k + 1)])
            out.append(tuple(float(v) for v in b))
        return tuple(out)

    def coef_bits(self, precision_bits: int, shared: bool) -> int:
        """Fractional bits of the public coefficients at this precision: as many as keep every term of every
        piece, over the piece's interval, below ``2^RING_HEADROOM_BITS`` in the ring."""
        bound = 1.0
        for b, lo, hi, c in zip(self.expanded(shared), self.breaks[:-1], self.breaks[1:], self.centers):
            reach = max(abs(lo), abs(hi)) if shared else (hi - lo) / 2
            bound = max(bound, sum(abs(v) * reach**k for k, v in enumerate(b)))
        return RING_HEADROOM_BITS - precision_bits - math.ceil(math.log2(bound))


def fit_piecewise(name: str, fn: Callable[[np.ndarray], np.ndarray], breaks: tuple[float, ...], degree: int,
                  left: tuple[float, float] | None, right: tuple[float, float] | None, domain: str = "all reals in the share range",
                  check_range: tuple[float, float] | None = None) -> PiecewisePoly:
    """Least-squares fit at Chebyshev nodes of each piece (near-minimax), centred on the piece. The tails' slopes
    are integers (they multiply shares locally, exactly)."""
    if any(float(b) != int(b) for _, b in (t for t in (left, right) if t is not None)):
        raise ValueError(f"{name}: tail slopes must be integers, got {left[1]} and {right[1]}.")
    centers, coeffs = [], []
    nodes = np.cos(np.pi * (np.arange(256) + 0.5) / 256)
    for lo, hi in zip(breaks[:-1], breaks[1:]):
        c, h = (lo + hi) / 2, (hi - lo) / 2
        x = c + h * nodes
        a, *_ = np.linalg.lstsq(np.vander(x - c, degree + 1, increasing=True), fn(x), rcond=None)
        centers.append(float(c))
        coeffs.append(tuple(float(v) for v in a))
    spec = PiecewisePoly(name, tuple(float(b) for b in breaks), tuple(centers), tuple(coeffs), left, right, 0.0, domain)
    lo, hi = check_range or (breaks[0] - 4 * (breaks[1] - breaks[0]), breaks[-1] + 4 * (breaks[-1] - breaks[-2]))
    xs = np.linspace(lo, hi, 20001)
    err = float(np.abs(evaluate_plain(spec, xs) - fn(xs)).max())
    return PiecewisePoly(spec.name, spec.breaks, spec.centers, spec.coeffs, left, right, err, domain)


def evaluate_plain(spec: PiecewisePoly, x: np.ndarray) -> np.ndarray:
    """The spec in float (what the shares compute, without fixed-point rounding)."""
    left, right = spec.left or (math.nan, 0.0), spec.right or (math.nan, 0.0)
    out = np.where(x < spec.breaks[0], left[0] + left[1] * x, right[0] + right[1] * x)
    n = len(spec.coeffs)
    for i, (lo, hi, c, a) in enumerate(zip(spec.breaks[:-1], spec.breaks[1:], spec.centers, spec.coeffs)):
        lo = -np.inf if (i == 0 and spec.left is None) else lo
        hi = np.inf if (i == n - 1 and spec.right is None) else hi
        inside = (x >= lo) & (x < hi)
        out = np.where(inside, np.polynomial.polynomial.polyval(x - c, a), out)
    return out


def _erf(x):
    return np.vectorize(math.erf)(x)


def _gelu(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


_DEG = 6
SPECS: dict[str, PiecewisePoly] = {
    s.name: s
    for s in (
        # GELU and SiLU are relu(x) - h(|x|) with h(a) = a Phi(-a) (a sigmoid(-a) for SiLU), smooth on a >= 0 and
        # vanishing fast: the ReLU's one comparison gives |x| = 2 relu(x) - x, and h needs 2 (3) breaks instead of
        # the 5 (7) of a direct fit over both signs (see relu_minus).
        fit_piecewise("gelu", lambda a: np.maximum(a, 0) - _gelu(a), (0, 2, 4.5), _DEG, None, (0.0, 0.0),
                      check_range=(0, 12)),
        fit_piecewise("gelu_tanh", lambda a: np.maximum(a, 0) - _gelu_tanh(a), (0, 2, 4.5), _DEG, None, (0.0, 0.0),
                      check_range=(0, 12)),
        fit_piecewise("sigmoid", _sigmoid, (-11, -5, -1.5, 1.5, 5, 11), _DEG, (0.0, 0.0), (1.0, 0.0)),
        fit_piecewise("tanh", np.tanh, (-7, -4, -2, -0.75, 0.75, 2, 4, 7), _DEG, (-1.0, 0.0), (1.0, 0.0)),
        fit_piecewise("silu", lambda a: np.maximum(a, 0) - a * _sigmoid(a), (0, 3, 8, 18), _DEG, None, (0.0, 0.0),
                      check_range=(0, 30)),
        fit_piecewise("erf", _erf, (-4, -2, -0.8, 0.8, 2, 4), _DEG, (-1.0, 0.0), (1.0, 0.0)),
        # exp after a max subtraction (softmax): inputs <= 0; exp(-12) = 6e-6 < 1/2 LSB at 16 bits
        fit_piecewise("exp_nonpositive", np.exp, (-12, -5, -1.5, 0), _DEG, (0.0, 0.0), None,
                      domain="x <= 0 (0 for x < -12)", check_range=(-20, 0)),
    )
}


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


def _power_plan(degree: int) -> list[list[tuple[int, int]]]:
    """Levels of products ``x^k = x^top * x^(k - top)`` (``top`` the level's power of two) for ``k = 2..degree``."""
    levels, top = [], 1
    while top < degree:
        levels.append([(top, k - top) for k in range(top + 1, min(2 * top, degree) + 1)])
        top *= 2
    return levels


def _powers(sess: PartyContext, u: torch.Tensor, degree: int, f: int) -> dict[int, torch.Tensor]:
    """``{k: u^k}`` for ``k = 1..degree`` at frac ``f``: per level of :func:`_power_plan`, its products (each factor
    is opened by its first product and reused after) and one truncation of the level's powers, stacked."""
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


RELU_MINUS = ("gelu", "gelu_tanh", "silu")  # specs of h in relu(x) - h(|x|)


def relu_minus(sess: PartyContext, x: torch.Tensor, spec: PiecewisePoly) -> torch.Tensor:
    """Shares of ``relu(x) - h(|x|)`` (GELU, SiLU) for ``x`` at frac ``f``: one ReLU, ``|x| = 2 relu(x) - x`` (local),
    then ``h`` as :func:`piecewise` on ``|x|``. Cost: :func:`relu_minus_cost`."""
    r = P.relu(sess, x, None)
    return r - piecewise(sess, 2 * r - x, spec)


# m^p (or ln m) on [1, 2) and e^r on [0, ln 2), centred, degree 6: errors 7.5e-6 (1/m), 1.8e-6 (1/sqrt m), 1e-6
# (sqrt m), 1e-6 (ln m), 1e-9 (e^r)
_NORM_FNS = {-1.0: lambda m: 1 / m, -0.5: lambda m: 1 / np.sqrt(m), 0.5: np.sqrt, "log": np.log}
NORM_SPECS: dict = {p: fit_piecewise(f"pow{p}", fn, (1.0, 2.0), _DEG, (0.0, 0.0), (0.0, 0.0), check_range=(1.0, 1.999))
                    for p, fn in _NORM_FNS.items()}
EXP_REDUCED = fit_piecewise("exp_reduced", np.exp, (0.0, math.log(2)), _DEG, (0.0, 0.0), (0.0, 0.0),
                            check_range=(0.0, 0.693))


def _intervals(lo: int, hi: int, signed: bool) -> tuple[list[float], list[tuple[int, int]]]:
    """Thresholds and, per interval, ``(sign, j)`` with ``2^j <= |x| < 2^(j+1)`` (the lowest interval also holds
    everything below ``2^(lo+1)``, the highest everything from ``2^hi`` up)."""
    pos = [2.0**k for k in range(lo + 1, hi + 1)]
    if not signed:
        return pos, [(1, j) for j in range(lo, hi + 1)]
    neg = [-t for t in reversed(pos)]
    return neg + [0.0] + pos, [(-1, j) for j in range(hi, lo - 1, -1)] + [(1, j) for j in range(lo, hi + 1)]


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


# ---------------------------------------------------------------------------------------------- declared costs
@dataclass
class _Tally:
    """Rounds and bytes each compute party sends, summed over a sequence of protocol calls (declared costs)."""

    n: int
    j: int
    d: int
    rounds: int = 0
    bytes_sent: int = 0

    def compare(self, numel: int, thresholds: int) -> None:
        self._add("compare_thresholds", numel=numel, m=thresholds, j=self.j, d=self.d)

    def mul(self, numel: int, fresh_x: bool = True, fresh_y: bool = True) -> None:
        self._add("beaver_mul", shape_x=(numel,), shape_y=(numel,), fresh_x=fresh_x, fresh_y=fresh_y)

    def trunc(self, numel: int) -> None:
        self._add("trunc", numel=numel)

    def powers(self, numel: int, degree: int) -> None:
        """As :func:`_powers`: a factor is opened by its first product only."""
        opened: set[int] = set()
        for level in _power_plan(degree):
            for top, other in level:
                self.mul(numel, top not in opened, other not in opened)
                opened |= {top, other}
            self.trunc(numel * len(level))

    def single_poly(self, numel: int, degree: int) -> None:
        self.powers(numel, degree)
        self.trunc(numel)

    def _add(self, name: str, **sizes) -> None:
        cost = COSTS[name]
        self.rounds += cost.rounds(self.n, **sizes)
        self.bytes_sent += cost.bytes_sent(self.n, **sizes)

    def result(self) -> dict[str, int]:
        return {"rounds": self.rounds, "bytes_sent": self.bytes_sent}


def piecewise_cost(n_parties: int, numel: int, spec: PiecewisePoly, compare_bits: int = 32,
                   digit_bits: int = 4) -> dict[str, int]:
    """Declared online cost of :func:`piecewise` on ``numel`` elements: ``{"rounds", "bytes_sent"}`` per party."""
    t = _Tally(n_parties, compare_bits, digit_bits)
    pieces = len(spec.breaks) - 1
    t.compare(numel, len(spec.thresholds))
    t.powers(numel, spec.degree)
    t.trunc(numel * pieces)
    t.mul(numel * len(spec.thresholds))
    return t.result()


def relu_minus_cost(n_parties: int, numel: int, spec: PiecewisePoly, compare_bits: int = 32,
                    digit_bits: int = 4) -> dict[str, int]:
    """Declared online cost of :func:`relu_minus`: one ReLU, then :func:`piecewise_cost`."""
    relu = COSTS["relu"]
    pw = piecewise_cost(n_parties, numel, spec, compare_bits, digit_bits)
    return {"rounds": relu.rounds(n_parties, j=compare_bits, d=digit_bits) + pw["rounds"],
            "bytes_sent": relu.bytes_sent(n_parties, numel=numel, j=compare_bits, d=digit_bits) + pw["bytes_sent"]}


def power_cost(n_parties: int, numel: int, p, lo: int, hi: int, signed: bool = False, compare_bits: int = 32,
               digit_bits: int = 4) -> dict[str, int]:
    """Declared online cost of :func:`normalized_power`: ``{"rounds", "bytes_sent"}`` per party."""
    t = _Tally(n_parties, compare_bits, digit_bits)
    t.compare(numel, len(_intervals(lo, hi, signed)[0]))
    t.mul(numel)
    t.trunc(numel)
    t.single_poly(numel, NORM_SPECS[p].degree)
    if p != "log":
        t.mul(numel)
        t.trunc(numel)
    return t.result()


def exp_cost(n_parties: int, numel: int, lo: int, hi: int, compare_bits: int = 32, digit_bits: int = 4) -> dict[str, int]:
    """Declared online cost of :func:`exp`: ``{"rounds", "bytes_sent"}`` per party."""
    t = _Tally(n_parties, compare_bits, digit_bits)
    t.compare(numel, hi - lo)
    t.single_poly(numel, EXP_REDUCED.degree)
    t.mul(numel)
    t.trunc(numel)
    return t.result()


SMOOTH_COSTS: dict[str, Callable[..., dict[str, int]]] = {
    **{name: (lambda n, numel, _s=spec, **kw: (relu_minus_cost if _s.name in RELU_MINUS else piecewise_cost)(n, numel, _s, **kw))
       for name, spec in SPECS.items()},
    "exp": exp_cost,
    "reciprocal": lambda n, numel, lo, hi, **kw: power_cost(n, numel, -1.0, lo, hi, signed=True, **kw),
    "rsqrt": lambda n, numel, lo, hi, **kw: power_cost(n, numel, -0.5, lo, hi, **kw),
    "sqrt": lambda n, numel, lo, hi, **kw: power_cost(n, numel, 0.5, lo, hi, **kw),
    "log": lambda n, numel, lo, hi, **kw: power_cost(n, numel, "log", lo, hi, **kw),
}
