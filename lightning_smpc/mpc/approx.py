"""Smooth functions on secret shares: piecewise polynomials (GELU, sigmoid, tanh, SiLU, erf, exp) and
normalised powers (reciprocal, rsqrt, sqrt, log), built only from the core protocols (comparison, Beaver product,
truncation). Pure torch; no new dealer material kind.

Why these protocols (see ``notes/transformers.md``; read, not copied):

* **Piecewise polynomials, one comparison call for all breakpoints** (PUMA's GELU, generalised). Every
  breakpoint ``t_i`` is compared at once (``[x >= t_i]`` for all ``i`` in ONE :func:`~.protocols.compare_bit`
  call: one comparison's rounds, whatever the number of pieces); each interior piece is a degree-``D``
  polynomial in its own centred variable ``x - c_i`` (so the coefficients stay small and the fixed-point error
  of the powers is not amplified: the fits below keep ``sum_k k |a_k| h^(k-1) <= 7``); the tails are constant or
  linear (GELU/SiLU: 0 and ``x``; sigmoid: 0 and 1; erf/tanh: -1 and 1; exp: 0). The pieces' values are
  selected by ONE Beaver product with the pieces' indicator bits. A piece evaluated far from its interval may
  wrap around the ring (its powers overflow): it is multiplied by an indicator that is exactly 0, so the
  result is exact in the ring whatever that garbage is. Constant rounds: ``cmp + 2 ceil(log2 D) + 2``
  (13 at the defaults, ``D = 6``), independent of the input's magnitude, unlike CrypTen's Taylor/Newton
  iterations (whose ``erf`` diverges beyond ``|x| ~ 2`` and needs its defaults changed for this model).
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

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import protocols as P
from .protocols import COSTS

__all__ = ["PiecewisePoly", "SPECS", "SMOOTH_COSTS", "piecewise", "normalized_power", "piecewise_cost",
           "power_cost", "fit_piecewise"]

# Products of a power with a public coefficient carry ``coef_bits(spec, f)`` extra fractional bits (truncated once):
# as many as keep every term below 2^59 in the ring, so a small high-order coefficient keeps its precision.
RING_HEADROOM_BITS = 59


@dataclass(frozen=True)
class PiecewisePoly:
    """``f(x)`` as ``left(x)`` below ``breaks[0]``, a polynomial in ``x - centers[i]`` on
    ``[breaks[i], breaks[i+1])``, ``right(x)`` from ``breaks[-1]`` on. Tails are ``(a, b)``: ``a + b x``.

    ``coeffs[i][k]`` multiplies ``(x - centers[i])^k``. ``max_error`` is measured in float at fit time over the
    pieces (the tails' own error, e.g. GELU's ``0`` below -5, is included).
    """

    name: str
    breaks: tuple[float, ...]
    centers: tuple[float, ...]
    coeffs: tuple[tuple[float, ...], ...]
    left: tuple[float, float]
    right: tuple[float, float]
    max_error: float = 0.0
    domain: str = "all reals in the share range"

    @property
    def degree(self) -> int:
        return max(len(c) for c in self.coeffs) - 1

    @property
    def term_bound(self) -> float:
        """The largest ``sum_k |a_k| h^k`` over the pieces (``h``: the piece's half-width): bounds every term."""
        return max(sum(abs(a) * ((hi - lo) / 2) ** k for k, a in enumerate(c))
                   for c, lo, hi in zip(self.coeffs, self.breaks[:-1], self.breaks[1:]))

    def coef_bits(self, precision_bits: int) -> int:
        """Fractional bits of the public coefficients at this precision (see ``RING_HEADROOM_BITS``)."""
        return RING_HEADROOM_BITS - precision_bits - max(0, math.ceil(math.log2(self.term_bound)))


def fit_piecewise(name: str, fn: Callable[[np.ndarray], np.ndarray], breaks: tuple[float, ...], degree: int,
                  left: tuple[float, float], right: tuple[float, float], domain: str = "all reals in the share range",
                  check_range: tuple[float, float] | None = None) -> PiecewisePoly:
    """Least-squares fit at Chebyshev nodes of each piece (near-minimax), centred on the piece. The tails' slopes
    are integers (they multiply shares locally, exactly)."""
    if any(float(b) != int(b) for _, b in (left, right)):
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
    out = np.where(x < spec.breaks[0], spec.left[0] + spec.left[1] * x, spec.right[0] + spec.right[1] * x)
    for lo, hi, c, a in zip(spec.breaks[:-1], spec.breaks[1:], spec.centers, spec.coeffs):
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
        fit_piecewise("gelu", _gelu, (-5, -2.5, 0, 2.5, 5), _DEG, (0.0, 0.0), (0.0, 1.0)),
        fit_piecewise("gelu_tanh", _gelu_tanh, (-5, -2.5, 0, 2.5, 5), _DEG, (0.0, 0.0), (0.0, 1.0)),
        fit_piecewise("sigmoid", _sigmoid, (-14, -8, -4, -1.5, 1.5, 4, 8, 14), _DEG, (0.0, 0.0), (1.0, 0.0)),
        fit_piecewise("tanh", np.tanh, (-7, -4, -2, -0.75, 0.75, 2, 4, 7), _DEG, (-1.0, 0.0), (1.0, 0.0)),
        fit_piecewise("silu", lambda x: x * _sigmoid(x), (-18, -8, -3, 0, 3, 8, 18), _DEG, (0.0, 0.0), (0.0, 1.0)),
        fit_piecewise("erf", _erf, (-4, -2, -0.8, 0.8, 2, 4), _DEG, (-1.0, 0.0), (1.0, 0.0)),
        # exp after a max subtraction (softmax): inputs <= 0; exp(-12) = 6e-6 < 1/2 LSB at 16 bits
        fit_piecewise("exp_nonpositive", np.exp, (-12, -6, -3, -1, 0), _DEG, (0.0, 0.0), (1.0, 0.0),
                      domain="x <= 0 (0 for x < -12)", check_range=(-20, 0)),
        # torch.exp: up to e^10.3 ~ 30 000 (the share range ends at 32 768)
        fit_piecewise("exp", np.exp, (-12, -6, -3, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.3), _DEG, (0.0, 0.0),
                      (math.exp(10.3), 0.0), domain="x <= 10.3 (larger values leave the share range; "
                      "they give e^10.3)", check_range=(-20, 10.3)),
    )
}


# ---------------------------------------------------------------------------------------------- share helpers
class _Fresh:
    """A Beaver factor without an opened mask: what :func:`~.protocols.beaver` needs of an operand."""

    __slots__ = ("shares", "mask")

    def __init__(self, shares: torch.Tensor) -> None:
        self.shares, self.mask = shares, None


def _mul(sess, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Ring product of two same-shape share tensors (one Beaver product, both operands fresh)."""
    return P.beaver(sess, "mul", _Fresh(x), _Fresh(y))


def _plus_public(sess, shares: torch.Tensor, pub: torch.Tensor) -> torch.Tensor:
    """``shares + pub`` (int64, broadcasting over the logical dims): the first party adds it."""
    out = shares.expand(torch.broadcast_shapes(shares.shape, (1,) + tuple(pub.shape))).clone()
    if sess.holds_first:
        out[0] += pub.to(out.device)
    return out


def _encode(v, bits: int, device) -> torch.Tensor:
    return torch.round(torch.as_tensor(v, dtype=torch.float64) * 2.0**bits).to(torch.int64).to(device)


def _indicators(sess, x: torch.Tensor, thresholds: list[float], f: int) -> torch.Tensor:
    """Arithmetic shares (scale 0) of the interval indicators ``[P, *S, M + 1]`` of ``x`` (frac ``f``) for the sorted
    ``thresholds`` ``t_1 < ... < t_M``: interval 0 is ``x < t_1``, interval ``i`` is ``t_i <= x < t_(i+1)``, the
    last ``x >= t_M``. One comparison call for all thresholds."""
    diff = _plus_public(sess, x.unsqueeze(-1), -_encode(thresholds, f, x.device))
    bits = P.compare_bit(sess, diff, None)  # [x >= t_i]
    below = -bits[..., :1]
    if sess.holds_first:
        below[0] += 1
    return torch.cat([below, bits[..., :-1] - bits[..., 1:], bits[..., -1:]], -1)


def _powers(sess, u: torch.Tensor, degree: int, f: int) -> dict[int, torch.Tensor]:
    """``{k: u^k}`` for ``k = 1..degree`` at frac ``f``: ``ceil(log2 degree)`` levels of one Beaver product and one
    truncation each (the new powers of a level are stacked into one product)."""
    pw = {1: u}
    have = 1
    while have < degree:
        ks = list(range(have + 1, min(2 * have, degree) + 1))
        lhs = torch.stack([pw[have]] * len(ks), -1)
        rhs = torch.stack([pw[k - have] for k in ks], -1)
        prod = P.truncate(sess, _mul(sess, lhs, rhs), f)
        for i, k in enumerate(ks):
            pw[k] = prod[..., i]
        have = ks[-1]
    return pw


def _polynomial(sess, pw: dict[int, torch.Tensor], coeffs: list[list[float]], f: int, bits: int) -> torch.Tensor:
    """``sum_k a_k u^k`` at frac ``f + bits`` (not truncated); ``coeffs[i]`` along the last axis of the powers."""
    deg = max(len(c) for c in coeffs) - 1
    a = np.zeros((len(coeffs), deg + 1))
    for i, c in enumerate(coeffs):
        a[i, : len(c)] = c
    device = pw[1].device
    out = None
    for k in range(1, deg + 1):
        term = pw[k] * _encode(a[:, k], bits, device)
        out = term if out is None else out + term
    return _plus_public(sess, out, _encode(a[:, 0], f + bits, device))


# ---------------------------------------------------------------------------------------------- protocols
def piecewise(sess, x: torch.Tensor, spec: PiecewisePoly) -> torch.Tensor:
    """Shares (frac ``f = precision_bits``) of ``spec(x)`` for shares ``x`` at frac ``f``.

    Protocol: 1. the indicators of the ``len(breaks) + 1`` intervals (one comparison call); 2. the powers of
    the centred variables ``x - c_i``, all pieces stacked (``ceil(log2 D)`` levels); 3. each piece's polynomial
    locally, its coefficients at ``spec.coef_bits(f)`` extra bits, truncated once; the tails (integer slopes) locally; 4. one Beaver product with the indicators,
    summed over the pieces. Cost: :func:`piecewise_cost`.
    """
    f = sess.precision_bits
    ind = _indicators(sess, x, list(spec.breaks), f)  # [P, *S, n_pieces + 2]
    u = _plus_public(sess, x.unsqueeze(-1), -_encode(spec.centers, f, x.device))  # [P, *S, n_pieces]
    bits = spec.coef_bits(f)
    inner = P.truncate(sess, _polynomial(sess, _powers(sess, u, spec.degree, f), [list(c) for c in spec.coeffs], f, bits),
                       bits)
    left, right = (_plus_public(sess, x * int(b), _encode(a, f, x.device)).unsqueeze(-1) for a, b in (spec.left, spec.right))
    return _mul(sess, ind, torch.cat([left, inner, right], -1)).sum(-1)


# m^p (or ln m) on [1, 2), centred at 1.5, degree 6: errors 7.5e-6 (1/m), 1.8e-6 (1/sqrt m), 1e-6 (sqrt m)
_NORM_FNS = {-1.0: lambda m: 1 / m, -0.5: lambda m: 1 / np.sqrt(m), 0.5: np.sqrt, "log": np.log}
NORM_SPECS: dict = {p: fit_piecewise(f"pow{p}", fn, (1.0, 2.0), _DEG, (0.0, 0.0), (0.0, 0.0), check_range=(1.0, 1.999))
                    for p, fn in _NORM_FNS.items()}


def _intervals(lo: int, hi: int, signed: bool) -> tuple[list[float], list[tuple[int, int]]]:
    """Thresholds and, per interval, ``(sign, j)`` with ``2^j <= |x| < 2^(j+1)`` (the lowest interval also holds
    everything below ``2^(lo+1)``, the highest everything from ``2^hi`` up)."""
    pos = [2.0**k for k in range(lo + 1, hi + 1)]
    if not signed:
        return pos, [(1, j) for j in range(lo, hi + 1)]
    neg = [-t for t in reversed(pos)]
    return neg + [0.0] + pos, [(-1, j) for j in range(hi, lo - 1, -1)] + [(1, j) for j in range(lo, hi + 1)]


def normalized_power(sess, x: torch.Tensor, p, lo: int, hi: int, signed: bool = False) -> torch.Tensor:
    """Shares (frac ``f``) of ``x^p`` (``p`` in -1, -0.5, 0.5) or of ``ln x`` (``p="log"``), ``x`` at frac ``f``.

    ``lo``/``hi``: the exponents ``j`` of the intervals ``2^j <= |x| < 2^(j+1)`` told apart (``x`` below ``2^(lo+1)``
    is treated as in ``[2^lo, 2^(lo+1))``, above ``2^hi`` as in ``[2^hi, 2^(hi+1))``); ``signed``: negative ``x``
    too (reciprocal only). Protocol: 1. interval indicators (one comparison call, ``hi - lo`` thresholds, twice
    that plus one when signed); 2. ``m = x * c`` with the local ``c = sum_j ind_j sign_j 2^-j``, so ``m`` is in
    ``[1, 2)`` (a Beaver product and a truncation); 3. ``m^p`` by a degree-6 polynomial in ``m - 1.5`` (3 levels of
    powers, one truncation); 4. times the local ``d = sum_j ind_j sign_j 2^(p j)`` (a Beaver product and a
    truncation), or plus ``sum_j ind_j j ln 2`` for the log (local). Cost: :func:`power_cost`.
    """
    f = sess.precision_bits
    thresholds, intervals = _intervals(lo, hi, signed)
    ind = _indicators(sess, x, thresholds, f)
    scale_bits = max(hi, 0)
    c = (ind * torch.tensor([s << (scale_bits - j) for s, j in intervals], dtype=torch.int64, device=x.device)).sum(-1)
    m = P.truncate(sess, _mul(sess, x, c), scale_bits)
    spec = NORM_SPECS[p]
    u = _plus_public(sess, m.unsqueeze(-1), -_encode(spec.centers, f, x.device))
    bits = spec.coef_bits(f)
    g = P.truncate(sess, _polynomial(sess, _powers(sess, u, spec.degree, f), [list(spec.coeffs[0])], f, bits), bits)
    g = g.squeeze(-1)
    if p == "log":
        return g + (ind * _encode([j * math.log(2) for _, j in intervals], f, x.device)).sum(-1)
    top = max(p * j for _, j in intervals)
    d_bits = 59 - f - max(0, math.ceil(top))  # |g| < 2, so |g * d| stays below 2^61 at f + d_bits bits
    d = (ind * torch.tensor([s * round(2.0 ** (d_bits + p * j)) for s, j in intervals], dtype=torch.int64,
                            device=x.device)).sum(-1)
    return P.truncate(sess, _mul(sess, g, d), d_bits)


# ---------------------------------------------------------------------------------------------- declared costs
@dataclass
class _Tally:
    """Rounds and bytes each compute party sends, summed over a sequence of protocol calls (declared costs)."""

    n: int
    j: int
    d: int
    rounds: int = 0
    bytes_sent: int = 0
    parts: list = field(default_factory=list)

    def compare(self, numel: int) -> None:
        self._add("compare_bit", numel=numel, j=self.j, d=self.d)

    def mul(self, numel: int) -> None:
        self._add("beaver_mul", shape_x=(numel,), shape_y=(numel,), fresh_x=True, fresh_y=True)

    def trunc(self, numel: int) -> None:
        self._add("trunc", numel=numel)

    def powers(self, numel: int, degree: int) -> None:
        have = 1
        while have < degree:
            k = min(2 * have, degree) - have
            self.mul(numel * k)
            self.trunc(numel * k)
            have += k

    def _add(self, name: str, **sizes) -> None:
        cost = COSTS[name]
        self.rounds += cost.rounds(self.n, **sizes)
        self.bytes_sent += cost.bytes_sent(self.n, **sizes)
        self.parts.append(name)


def piecewise_cost(n_parties: int, numel: int, spec: PiecewisePoly, compare_bits: int = 32,
                   digit_bits: int = 4) -> dict[str, int]:
    """Declared online cost of :func:`piecewise` on ``numel`` elements: ``{"rounds", "bytes_sent"}`` per party."""
    t = _Tally(n_parties, compare_bits, digit_bits)
    pieces = len(spec.breaks) - 1
    t.compare(numel * len(spec.breaks))
    t.powers(numel * pieces, spec.degree)
    t.trunc(numel * pieces)
    t.mul(numel * (pieces + 2))
    return {"rounds": t.rounds, "bytes_sent": t.bytes_sent}


def power_cost(n_parties: int, numel: int, p, lo: int, hi: int, signed: bool = False, compare_bits: int = 32,
               digit_bits: int = 4) -> dict[str, int]:
    """Declared online cost of :func:`normalized_power`: ``{"rounds", "bytes_sent"}`` per party."""
    t = _Tally(n_parties, compare_bits, digit_bits)
    t.compare(numel * len(_intervals(lo, hi, signed)[0]))
    t.mul(numel)
    t.trunc(numel)
    t.powers(numel, NORM_SPECS[p].degree)
    t.trunc(numel)
    if p != "log":
        t.mul(numel)
        t.trunc(numel)
    return {"rounds": t.rounds, "bytes_sent": t.bytes_sent}


SMOOTH_COSTS: dict[str, Callable[..., dict[str, int]]] = {
    **{name: (lambda n, numel, _s=spec, **kw: piecewise_cost(n, numel, _s, **kw)) for name, spec in SPECS.items()},
    "reciprocal": lambda n, numel, lo, hi, **kw: power_cost(n, numel, -1.0, lo, hi, signed=True, **kw),
    "rsqrt": lambda n, numel, lo, hi, **kw: power_cost(n, numel, -0.5, lo, hi, **kw),
    "sqrt": lambda n, numel, lo, hi, **kw: power_cost(n, numel, 0.5, lo, hi, **kw),
    "log": lambda n, numel, lo, hi, **kw: power_cost(n, numel, "log", lo, hi, **kw),
}
