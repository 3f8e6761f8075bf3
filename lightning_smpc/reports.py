"""What each process of a secure predict run may tell the user, and how the user's process puts it together.

With parties as processes spawned by ``predict`` (:class:`~lightning_smpc.launcher.PartyLauncher`), every role's
process sends back a small report: its own party's traffic and timings, what was revealed to it (the model owner:
the metrics; the client: the labels or logits), its link statistics. Nothing in a report holds a share.
"""
from __future__ import annotations

from typing import Any, Optional

from .mpc.session import RevealRecord

__all__ = ["DEALER_COUNTS", "link_stats", "party_report", "RunReports"]

DEALER_COUNTS = ("requests_inline", "requests_from_store", "store_discards", "taken_ahead", "folded_ahead")


def link_stats(world) -> dict:
    """AEAD seconds, transfer seconds and bytes of this process's encrypted links (distributed runtime)."""
    if world is None:
        return {}
    return dict(world.links.stats)  # Links.stats: a property (a dict of the link costs)


def party_report(run, role: str) -> dict:
    """A compute party's own report (``run`` is its :class:`~lightning_smpc.secure_run.SecureRun`)."""
    session = run.session
    return {
        "links": link_stats(run.world),
        "role": role,
        "ledger": [(r.name, r.shape, r.to) for r in session.ledger],
        "online": session.comm.stats(),
        "offline": session.comm.stats(offline=True),
        "dealer_requests": {k: getattr(session.dealer.times, k) for k in DEALER_COUNTS},
        "batch_seconds": list(run.batch_seconds),
        "op_seconds": dict(session.op_seconds),  # per protocol, this party's wall time
        "by_protocol": session.comm.stats_by_tag(),
        "cost_profile": session.comm.cost_profile(),  # per layer and protocol step: this party's traffic and time
    }


class RunReports:
    """In the user's process: the report of every role's process, by rank (rank ``len(parties)`` is the crypto
    provider), and the results each of them holds."""

    def __init__(self, reports: dict[int, dict], parties: tuple, model_owner_party: str, client_party: str) -> None:
        self.by_rank, self.parties = dict(reports), tuple(parties)
        self._owner = reports[self.parties.index(model_owner_party)]
        self._client = reports[self.parties.index(client_party)]

    @property
    def revealed_metrics(self) -> dict:
        return self._owner["revealed_metrics"]

    @property
    def revealed_counts(self) -> dict:
        return self._owner["revealed_counts"]

    @property
    def predictions(self) -> Optional[Any]:
        return self._client.get("predictions")

    @property
    def timings(self) -> dict[str, float]:
        return {f"{r['role']}.{k}": v for r in self.by_rank.values() for k, v in r["timings"].items() if "role" in r}

    @property
    def ledger(self) -> list[RevealRecord]:
        return [RevealRecord(*entry) for entry in self.by_rank[0]["ledger"]]

    def cost_profiles(self) -> dict[str, list[dict]]:
        """Each party's own cost profile (see :mod:`lightning_smpc.costs`)."""
        return {p: self.by_rank[i].get("cost_profile", []) for i, p in enumerate(self.parties)}

    def comm_stats(self, offline: bool = False) -> dict[str, dict[str, int]]:
        """Each party's own count of its traffic (offline: the crypto provider's count of what it sent)."""
        if offline:
            stats = self.by_rank[len(self.parties)].get("dealer", {})
            return {p: stats[p] for p in self.parties if p in stats}
        return {p: self.by_rank[i]["online"][p] for i, p in enumerate(self.parties)}
