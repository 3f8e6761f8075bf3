"""What each process of a secure predict run may tell the user, and how the user's process puts it together.

With parties as processes spawned by ``predict`` (:class:`~lightning_smpc.launcher.PartyLauncher`), every role's
process sends back a small report: a compute party's :class:`PartyReport` (its own party's traffic and timings,
what was revealed to it (the model owner: the metrics; the client: the labels or logits), its link statistics) or
the crypto provider's :class:`DealerReport`. Nothing in a report holds a share. A report travels from the role's
process to yours (on this machine, the user's own processes) as the launcher's ``torch.save`` bytes, never
between parties.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Optional, Union

from .mpc.session import RevealRecord

__all__ = ["DEALER_COUNTS", "link_stats", "party_report", "dealer_report", "PartyReport", "DealerReport",
           "OutsideReport", "outside_report", "ProcessReport", "RunReports"]

DEALER_COUNTS = ("requests_inline", "requests_from_store", "store_discards", "taken_ahead", "folded_ahead")


def link_stats(world) -> dict:
    """AEAD seconds, transfer seconds and bytes of this process's encrypted links (distributed runtime)."""
    if world is None:
        return {}
    return dict(world.links.stats)  # Links.stats: a property (a dict of the link costs)


class _KeyAccess:
    """The dict a report was before it was typed: ``report["timings"]``, ``report.get(...)``, ``"key" in report``
    and :meth:`to_dict` read it (kept for code written against the dicts; new code reads the attributes)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()


@dataclass(frozen=True)
class PartyReport(_KeyAccess):
    """A compute party's process's report (its own count: ``online``/``offline`` hold what this party counted)."""

    role: str  # the process's role name (the party's)
    rank: int
    timings: dict[str, float]  # share_weights_seconds, in_party_seconds, ...
    revealed_metrics: dict[str, Any]  # what was revealed to this party (the model owner's: the metrics)
    revealed_counts: dict[str, tuple[int, int]]
    online: dict[str, dict[str, int]]  # Communicator.stats(): per party rounds, messages, bytes sent/received
    offline: dict[str, dict[str, int]]
    dealer_requests: dict[str, int]  # the DEALER_COUNTS of this party's dealer
    batch_seconds: tuple[float, ...]  # this party's online seconds per batch
    op_seconds: dict[str, float]  # per protocol, this party's wall time
    by_protocol: dict[str, dict]  # Communicator.stats_by_tag()
    cost_profile: list[dict]  # per layer and protocol step: this party's traffic and time (see costs.py)
    ledger: tuple[RevealRecord, ...]  # what was released beyond masked openings
    links: dict[str, Any] = field(default_factory=dict)  # link_stats: AEAD seconds, wire bytes, ...
    predictions: Optional[Any] = None  # the client's: the revealed labels/logits (None in the other parties')

    def with_predictions(self, predictions: Any) -> "PartyReport":
        """This report with the client's predictions (known once ``predict`` returned them)."""
        return replace(self, predictions=predictions)

    def to_dict(self) -> dict[str, Any]:
        """The report as the dict it was (``ledger`` as ``(name, shape, to)`` tuples, ``predictions`` only in the
        client's)."""
        out = super().to_dict()
        out["ledger"] = [(r.name, r.shape, r.to) for r in self.ledger]
        out["batch_seconds"] = list(self.batch_seconds)
        if self.predictions is None:
            del out["predictions"]
        return out


@dataclass(frozen=True)
class DealerReport(_KeyAccess):
    """The crypto provider's process's report: what it sent each party (offline), the masks it still held."""

    role: str
    rank: int
    timings: dict[str, float]  # dealer_seconds
    offline: dict[str, dict[str, int]]  # per party: rounds, messages, bytes sent/received (the material)
    masks_held: int  # the masks the dealer still kept at the end
    links: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as the dict it was (``"dealer"``: the offline accounting with ``"masks_held"``)."""
        return {"role": self.role, "rank": self.rank, "timings": self.timings, "revealed_metrics": {},
                "revealed_counts": {}, "dealer": {**self.offline, "masks_held": self.masks_held}, "links": self.links}


@dataclass(frozen=True)
class OutsideReport(_KeyAccess):
    """The report of a role outside the compute parties (the model owner's server, the client): its own traffic, what
    was revealed to it (the model owner: the metrics; the client: its predictions) and its link statistics."""

    role: str
    rank: int
    timings: dict[str, float]
    revealed_metrics: dict[str, Any]
    revealed_counts: dict[str, tuple[int, int]]
    traffic: dict[str, int]  # messages, bytes sent (its masked inputs) and received (its reveals)
    learned: tuple  # RevealRecord of each value revealed to it
    batch_seconds: tuple = ()
    links: dict[str, Any] = field(default_factory=dict)
    predictions: Optional[Any] = None

    def with_predictions(self, predictions: Any) -> "OutsideReport":
        return replace(self, predictions=predictions)


ProcessReport = Union[PartyReport, DealerReport, OutsideReport]


def party_report(run, role: str, rank: int, timings: dict, revealed_metrics: dict,
                 revealed_counts: dict) -> PartyReport:
    """A compute party's own report (``run`` is its :class:`~lightning_smpc.secure_run.SecureRun`), at the end of
    its predict loop; the client's gets its predictions later (:func:`dataclasses.replace`)."""
    session = run.session
    return PartyReport(
        role=role, rank=rank, timings=dict(timings),
        revealed_metrics=dict(revealed_metrics), revealed_counts=dict(revealed_counts),
        online=session.comm.stats(),
        offline=session.comm.stats(offline=True),
        dealer_requests={k: getattr(session.dealer.times, k) for k in DEALER_COUNTS},
        batch_seconds=tuple(run.batch_seconds),
        op_seconds=dict(session.op_seconds),
        by_protocol=session.comm.stats_by_tag(),
        cost_profile=session.comm.cost_profile(),
        ledger=tuple(session.ledger),  # RevealRecord: frozen
        links=link_stats(run.world),
    )


def outside_report(run, role: str, rank: int, timings: dict, revealed_metrics: dict,
                   revealed_counts: dict) -> OutsideReport:
    """An outside role's own report (``run`` is its :class:`~lightning_smpc.outside_run.OutsideRun`)."""
    return OutsideReport(role=role, rank=rank, timings=dict(timings), revealed_metrics=dict(revealed_metrics),
                         revealed_counts=dict(revealed_counts), traffic=asdict(run.role.stats),
                         learned=tuple(run.role.learned), batch_seconds=tuple(run.batch_seconds),
                         links=link_stats(run.world))


def dealer_report(role: str, rank: int, timings: dict, accounting: dict, links: dict) -> DealerReport:
    """The crypto provider's report from ``serve_dealer``'s accounting (``{party: stats, "masks_held": n}``)."""
    offline = {k: v for k, v in accounting.items() if k != "masks_held"}
    return DealerReport(role=role, rank=rank, timings=dict(timings), offline=offline,
                        masks_held=accounting.get("masks_held", 0), links=links)


class RunReports:
    """In the user's process: the report of every role's process, by rank (the compute parties' :class:`PartyReport`
    first, then any outside role's :class:`OutsideReport`, the crypto provider's :class:`DealerReport` last), and the
    results each of them holds."""

    def __init__(self, reports: dict[int, ProcessReport], parties: tuple, model_owner_party: str,
                 client_party: str) -> None:
        self.by_rank, self.parties = dict(reports), tuple(parties)
        by_role = {r.role: r for r in reports.values()}
        self._owner: Union[PartyReport, OutsideReport] = by_role[model_owner_party]
        self._client: Union[PartyReport, OutsideReport] = by_role[client_party]
        self.dealer: DealerReport = reports[max(reports)]

    @property
    def revealed_metrics(self) -> dict:
        return self._owner.revealed_metrics

    @property
    def revealed_counts(self) -> dict:
        return self._owner.revealed_counts

    @property
    def predictions(self) -> Optional[Any]:
        return self._client.predictions

    @property
    def timings(self) -> dict[str, float]:
        return {f"{r.role}.{k}": v for r in self.by_rank.values() for k, v in r.timings.items()}

    @property
    def ledger(self) -> list[RevealRecord]:
        return list(self.by_rank[0].ledger)

    def cost_profiles(self) -> dict[str, list[dict]]:
        """Each party's own cost profile (see :mod:`lightning_smpc.costs`)."""
        return {p: self.by_rank[i].cost_profile for i, p in enumerate(self.parties)}

    def comm_stats(self, offline: bool = False) -> dict[str, dict[str, int]]:
        """Each party's own count of its traffic (offline: the crypto provider's count of what it sent)."""
        if offline:
            stats = self.dealer.offline
            return {p: stats[p] for p in self.parties if p in stats}
        return {p: self.by_rank[i].online[p] for i, p in enumerate(self.parties)}
