"""The plaintext side of the smooth functions: the fitted piecewise polynomials (the specs) and the public plans
that both their protocols (:mod:`.approx`) and their declared costs (:mod:`.approx_costs`) follow.

* :class:`PiecewisePoly`, :func:`fit_piecewise` (least squares at Chebyshev nodes, error measured at fit time) and
  :func:`evaluate_plain` (the spec in float);
* the fitted specs: :data:`SPECS` (GELU, sigmoid, tanh, SiLU, erf, exp on ``x <= 0``; :data:`RELU_MINUS` names those
  fitted as ``h`` in ``relu(x) - h(|x|)``), :data:`NORM_SPECS` (``m^p`` and ``ln m`` on ``[1, 2)``) and
  :data:`EXP_REDUCED` (``e^r`` on ``[0, ln 2)``), fitted once at import;
* the plans: which powers are multiplied in which level (:func:`_power_plan`) and which thresholds a normalised
  power compares with (:func:`_intervals`).

Numpy only, no shares and no session: split out of :mod:`.approx` so that the protocols read apart from the fits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["PiecewisePoly", "fit_piecewise", "evaluate_plain", "SPECS", "RELU_MINUS", "NORM_SPECS", "EXP_REDUCED",
           "RING_HEADROOM_BITS"]

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

RELU_MINUS = ("gelu", "gelu_tanh", "silu")  # specs of h in relu(x) - h(|x|)

# m^p (or ln m) on [1, 2) and e^r on [0, ln 2), centred, degree 6: errors 7.5e-6 (1/m), 1.8e-6 (1/sqrt m), 1e-6
# (sqrt m), 1e-6 (ln m), 1e-9 (e^r)
_NORM_FNS = {-1.0: lambda m: 1 / m, -0.5: lambda m: 1 / np.sqrt(m), 0.5: np.sqrt, "log": np.log}
NORM_SPECS: dict = {p: fit_piecewise(f"pow{p}", fn, (1.0, 2.0), _DEG, (0.0, 0.0), (0.0, 0.0), check_range=(1.0, 1.999))
                    for p, fn in _NORM_FNS.items()}
EXP_REDUCED = fit_piecewise("exp_reduced", np.exp, (0.0, math.log(2)), _DEG, (0.0, 0.0), (0.0, 0.0),
                            check_range=(0.0, 0.693))


# ---------------------------------------------------------------------------------------------- public plans
def _power_plan(degree: int) -> list[list[tuple[int, int]]]:
    """Levels of products ``x^k = x^top * x^(k - top)`` (``top`` the level's power of two) for ``k = 2..degree``."""
    levels, top = [], 1
    while top < degree:
        levels.append([(top, k - top) for k in range(top + 1, min(2 * top, degree) + 1)])
        top *= 2
    return levels


def _intervals(lo: int, hi: int, signed: bool) -> tuple[list[float], list[tuple[int, int]]]:
    """Thresholds and, per interval, ``(sign, j)`` with ``2^j <= |x| < 2^(j+1)`` (the lowest interval also holds
    everything below ``2^(lo+1)``, the highest everything from ``2^hi`` up)."""
    pos = [2.0**k for k in range(lo + 1, hi + 1)]
    if not signed:
        return pos, [(1, j) for j in range(lo, hi + 1)]
    neg = [-t for t in reversed(pos)]
    return neg + [0.0] + pos, [(-1, j) for j in range(hi, lo - 1, -1)] + [(1, j) for j in range(lo, hi + 1)]
