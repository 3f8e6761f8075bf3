"""The results side of :class:`~lightning_smpc.strategy.SecurePredictStrategy` (a mixin).

What a run left to read, in whichever process holds it: this process's MPC session, or (parties as processes,
spawned by ``predict``) the reports each role's process sent to your process (:mod:`lightning_smpc.reports`);
the reveal ledger, the per-layer cost report (:mod:`lightning_smpc.costs`), the traffic counts, and logging them
through a Lightning logger. ``_report`` is what a spawned role hands back; ``_receive_reports`` and
``_predictions_from`` are what :class:`~lightning_smpc.launcher.PartyLauncher` calls in your process.

``ResultsMixin`` overrides no Lightning method; it reads the strategy's state (``secure_run``, ``_reports``,
``revealed_metrics``, ``timings``, ...) set in ``SecurePredictStrategy.__init__`` and its hooks.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from .costs import CostReport
from .mpc import Session
from .reports import ProcessReport, RunReports, dealer_report

__all__ = ["ResultsMixin"]


class ResultsMixin:
    """Results of :class:`~lightning_smpc.strategy.SecurePredictStrategy`'s last run (see the module docstring)."""

    @property
    def session(self) -> Optional[Session]:
        """This process's MPC session (None before setup, in the crypto provider's process, and in the user's
        process when the parties ran as processes: their results then come from :attr:`process_reports`)."""
        return self.secure_run.session if self.secure_run is not None else None

    def _report(self, predictions: Any) -> ProcessReport:
        """This process's report to the launcher in the user's process (distributed runtime, spawned locally)."""
        if self.is_dealer:
            return dealer_report(self.role, self.global_rank, self.timings, getattr(self, "_dealer_stats", {}),
                                 getattr(self, "_dealer_links", {}))
        if self.role == self.client_party:
            return self._own.with_predictions(predictions)
        return self._own

    def _receive_reports(self, reports: dict[int, ProcessReport]) -> None:
        """In the user's process: fill the results from the report of the process that holds each of them."""
        self._reports = RunReports(reports, self.parties, self.model_owner_party, self.client_party)
        self.revealed_metrics, self.revealed_counts = self._reports.revealed_metrics, self._reports.revealed_counts
        self.timings = self._reports.timings

    def _predictions_from(self, reports: dict[int, ProcessReport]) -> Any:
        return self._reports.predictions

    @property
    def process_reports(self) -> dict[int, ProcessReport]:
        """Distributed runtime spawned here: each process's report by rank, a :class:`~.reports.PartyReport` per
        compute party (role, timings, traffic, link stats, ...) and the crypto provider's
        :class:`~.reports.DealerReport` last (``report.to_dict()`` or ``report["key"]``: the dicts they were)."""
        return dict(self._reports.by_rank) if self._reports is not None else {}

    @property
    def reveal_ledger(self) -> list:
        """Everything released beyond uniformly masked openings: name, shape, receivers (in an outside role's own
        process: what was revealed to it)."""
        if self.is_outside and self.secure_run is not None:
            return list(self.secure_run.role.learned)
        if self.session is not None:
            return list(self.session.ledger)
        return self._reports.ledger if self._reports is not None else []

    def cost_report(self) -> Optional[CostReport]:
        """Seconds, rounds and bytes per party for every layer (module path) and protocol step of the last run
        (its rows sum to :meth:`comm_stats`); ``print`` shows the layers by time. None before a run, and in the
        crypto provider's process. With parties as processes each party's traffic is its own count and each
        step's time the slowest party's."""
        if self.session is not None:
            return CostReport.from_profiles({self.session.local_party or "all": self.session.comm.cost_profile()})
        if self._reports is not None:
            return CostReport.from_profiles(self._reports.cost_profiles())
        return None

    def log_results(self, logger: Any) -> None:
        """Log the revealed metrics (``secure_<name>``, where this process learnt them) and the per-layer cost
        profile (``cost/<layer>/...``) through a Lightning logger; done at the end of ``predict`` (when ``predict``
        spawned the roles: in your process, once, with every party's profile)."""
        if logger is None:
            return
        metrics = {f"secure_{k}": float(v.mean()) for k, v in self.revealed_metrics.items()}
        report = self.cost_report()
        if report is not None:
            metrics.update(report.metrics())
        if metrics:
            logger.log_metrics(metrics, step=0)
            logger.save()

    def comm_stats(self, offline: bool = False) -> dict[str, dict[str, int]]:
        """Per compute party: rounds, messages, bytes sent/received (online, or offline from the dealer). In the
        crypto provider's own process (one launch per role): its offline traffic to each party."""
        if self.is_dealer:  # the crypto provider's process: what it sent each party (offline), nothing online
            stats = getattr(self, "_dealer_stats", {}) if offline else {}
            return {p: stats[p] for p in self.parties if p in stats}
        if self.is_outside and self.secure_run is not None:  # an outside role's own process: its own traffic
            return {self.role: dataclasses.asdict(self.secure_run.role.stats)}
        if self.session is None:  # each party's own process counted its own traffic
            return self._reports.comm_stats(offline) if self._reports is not None else {}
        stats = self.session.comm.stats(offline=offline)
        return {p: stats[p] for p in self.parties if p in stats}
