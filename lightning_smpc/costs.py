"""Per-layer cost profile of a secure predict run: seconds, rounds and bytes per party for every layer (module
path) and protocol step, in the simulated and the process runtime alike.

Each party's communicator counts every round under the current scope (a layer path while the model's forward
runs, or a phase of the run: sharing the weights, sharing inputs, metrics, releases, between batches) and the
time of its own process (see ``Communicator.enter_scope``); the rows therefore sum to the run's traffic, and
their seconds to the clocked part of the run. ``SecurePredictStrategy.cost_report()`` returns a
:class:`CostReport`; at the end of ``predict`` its per-layer totals are logged through the trainer's logger.

Example:
    >>> from lightning_smpc.costs import CostReport
    >>> profile = [{"layer": "fc1", "step": "relu", "seconds": 0.25,
    ...             "parties": {"alice": {"rounds": 3, "messages": 3, "bytes_sent": 4096, "bytes_received": 4096}}}]
    >>> report = CostReport.from_profiles({"alice": profile})
    >>> report.by_layer()[0]["rounds"], report.totals()["alice"]["bytes_sent"]
    (3, 4096)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["CostRow", "CostReport"]

_TRAFFIC = ("rounds", "messages", "bytes_sent", "bytes_received")


@dataclass
class CostRow:
    """One protocol step in one layer: this step's time (the slowest party's process) and each party's traffic."""

    layer: str
    step: str
    seconds: float
    parties: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return max((t["rounds"] for t in self.parties.values()), default=0)


class CostReport:
    """The cost profile of one run: :attr:`rows` per (layer, protocol step), in the order they first ran."""

    def __init__(self, rows: list[CostRow]) -> None:
        self.rows = rows

    @classmethod
    def from_profiles(cls, profiles: dict[str, list[dict]]) -> "CostReport":
        """Merge the profiles of the parties' processes (``{party: Communicator.cost_profile()}``; the simulated
        runtime: one profile holding every party): each party's traffic from its own count, the time of the
        slowest process."""
        merged: dict[tuple, CostRow] = {}
        for party, profile in profiles.items():
            for entry in profile:
                key = (entry["layer"], entry["step"])
                row = merged.setdefault(key, CostRow(entry["layer"], entry["step"], 0.0))
                row.seconds = max(row.seconds, float(entry["seconds"]))
                own = {p: t for p, t in entry["parties"].items() if len(profiles) == 1 or p == party}
                row.parties.update(own)
        return cls(list(merged.values()))

    def totals(self) -> dict[str, dict[str, int]]:
        """Per party: the sum of the rows' traffic (equal to the run's ``comm_stats()``)."""
        out: dict[str, dict[str, int]] = {}
        for row in self.rows:
            for p, t in row.parties.items():
                acc = out.setdefault(p, dict.fromkeys(_TRAFFIC, 0))
                for k in _TRAFFIC:
                    acc[k] += t.get(k, 0)
        return out

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.rows)

    def by_layer(self) -> list[dict[str, Any]]:
        """One row per layer (or phase), its steps summed: ``layer, seconds, rounds, bytes_sent, bytes_received``
        (``rounds``: the most any party took; bytes: summed over the parties)."""
        layers: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            acc = layers.setdefault(r.layer, {"layer": r.layer, "seconds": 0.0, "rounds": 0, "bytes_sent": 0,
                                              "bytes_received": 0, "by_party": {}})
            acc["seconds"] += r.seconds
            acc["rounds"] += r.rounds
            for p, t in r.parties.items():
                acc["bytes_sent"] += t["bytes_sent"]
                acc["bytes_received"] += t["bytes_received"]
                mine = acc["by_party"].setdefault(p, {"rounds": 0, "bytes_sent": 0, "bytes_received": 0})
                for k in mine:
                    mine[k] += t[k]
        return list(layers.values())

    def metrics(self) -> dict[str, float]:
        """Flat ``{"cost/<layer>/<quantity>": value}`` for a Lightning logger (per party: bytes sent and rounds)."""
        out: dict[str, float] = {}
        for row in self.by_layer():
            base = f"cost/{row['layer']}"
            out[f"{base}/seconds"] = row["seconds"]
            for p, t in row["by_party"].items():
                out[f"{base}/{p}/rounds"] = t["rounds"]
                out[f"{base}/{p}/bytes_sent"] = t["bytes_sent"]
        return out

    def table(self, top: Optional[int] = None) -> str:
        """Layers by time, with rounds and MB sent per party (``top``: the costliest ones only)."""
        rows = sorted(self.by_layer(), key=lambda r: -r["seconds"])
        shown = rows[:top] if top else rows
        parties = sorted({p for r in rows for p in r["by_party"]})
        head = ["layer", "seconds", "share", "rounds"] + [f"MB sent {p}" for p in parties]
        total = self.seconds or 1.0
        body = [[r["layer"], f"{r['seconds']:.3f}", f"{100 * r['seconds'] / total:.0f}%", str(r["rounds"])]
                + [f"{r['by_party'].get(p, {}).get('bytes_sent', 0) / 1e6:.2f}" for p in parties] for r in shown]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body]
        if top and len(rows) > top:
            lines.append(f"... {len(rows) - top} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def save_chart(self, path: str, top: int = 15) -> None:
        """A horizontal bar chart of the costliest layers' seconds (needs matplotlib: ``pip install matplotlib``)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:  # an optional extra
            raise ImportError("CostReport.save_chart needs matplotlib: pip install matplotlib") from e
        rows = sorted(self.by_layer(), key=lambda r: -r["seconds"])[:top][::-1]
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1))
        ax.barh([r["layer"] for r in rows], [r["seconds"] for r in rows])
        ax.set_xlabel("seconds (slowest party)")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
