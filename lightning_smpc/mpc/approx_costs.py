"""Declared online costs of the smooth functions on shares (:mod:`.approx`): rounds and bytes each compute party
sends, summed from the declared costs of the core protocols they call (:data:`~.protocols.COSTS`).

:data:`SMOOTH_COSTS` maps each function (the op table's name) to its cost; a test checks every one against measured
traffic. Each tally follows the same public plans as its protocol (:mod:`.approx_specs`: the power levels, the
intervals), so a change of plan changes both. Split out of :mod:`.approx`: no shares, no session.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .approx_specs import EXP_REDUCED, NORM_SPECS, RELU_MINUS, SPECS, PiecewisePoly, _intervals, _power_plan
from .protocols import COSTS

__all__ = ["SMOOTH_COSTS", "piecewise_cost", "relu_minus_cost", "power_cost", "exp_cost"]


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
        """As :func:`~.approx._powers`: a factor is opened by its first product only."""
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
    """Declared online cost of :func:`~.approx.piecewise` on ``numel`` elements: ``{"rounds", "bytes_sent"}`` per
    party."""
    t = _Tally(n_parties, compare_bits, digit_bits)
    pieces = len(spec.breaks) - 1
    t.compare(numel, len(spec.thresholds))
    t.powers(numel, spec.degree)
    t.trunc(numel * pieces)
    t.mul(numel * len(spec.thresholds))
    return t.result()


def relu_minus_cost(n_parties: int, numel: int, spec: PiecewisePoly, compare_bits: int = 32,
                    digit_bits: int = 4) -> dict[str, int]:
    """Declared online cost of :func:`~.approx.relu_minus`: one ReLU, then :func:`piecewise_cost`."""
    relu = COSTS["relu"]
    pw = piecewise_cost(n_parties, numel, spec, compare_bits, digit_bits)
    return {"rounds": relu.rounds(n_parties, j=compare_bits, d=digit_bits) + pw["rounds"],
            "bytes_sent": relu.bytes_sent(n_parties, numel=numel, j=compare_bits, d=digit_bits) + pw["bytes_sent"]}


def power_cost(n_parties: int, numel: int, p, lo: int, hi: int, signed: bool = False, compare_bits: int = 32,
               digit_bits: int = 4) -> dict[str, int]:
    """Declared online cost of :func:`~.approx.normalized_power`: ``{"rounds", "bytes_sent"}`` per party."""
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
    """Declared online cost of :func:`~.approx.exp`: ``{"rounds", "bytes_sent"}`` per party."""
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
