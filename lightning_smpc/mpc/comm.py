"""The communicator: the only place where shares cross between parties.

Every opening goes through :class:`Communicator`, which (a) is the only code allowed to combine the
parties' shares (:func:`reconstruct` refuses to run anywhere else, so a protocol that reconstructs a
secret "just to compute" raises :class:`~.errors.ProtocolViolation`), (b) counts per party the rounds,
messages and bytes sent/received, online and offline, also per protocol tag, and (c) can record each
party's view (everything it learned) for the honesty tests.

This class is the simulated transport: all compute parties live in this process, and shares carry a
leading party axis. A ``torch.distributed`` transport implements the same three methods
(:meth:`open`, :meth:`reveal_to`, :meth:`broadcast_input`) with one party per process; the protocols
do not change.
"""
from __future__ import annotations

import contextvars
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch

from .errors import ProtocolViolation

__all__ = ["Communicator", "PartyStats", "OpenRecord", "reconstruct"]

_OPENING = contextvars.ContextVar("lightning_smpc_opening", default=False)


def reconstruct(shares: torch.Tensor, kind: str = "arith", bits: int = 64) -> torch.Tensor:
    """Combine all parties' shares (leading axis). Only legal inside :meth:`Communicator.open`."""
    if not _OPENING.get():
        raise ProtocolViolation(
            "reconstruct() called outside the communicator: a protocol tried to combine shares locally. "
            "Open masked values with Communicator.open() instead."
        )
    if kind == "xor":
        out = shares[0].clone()
        for s in shares[1:]:
            out ^= s
        return out
    out = shares.sum(0)
    return out if bits >= 64 else out & ((1 << bits) - 1)


@dataclass
class PartyStats:
    """Traffic of one party."""

    rounds: int = 0
    messages: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def add(self, other: "PartyStats") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class OpenRecord:
    """One opening: ``kind`` is "masked" (a uniformly masked value, learns nothing) or "reveal"."""

    tag: str
    shapes: tuple
    kind: str
    to: tuple


def _nbytes(t: torch.Tensor, bits: int) -> int:
    return math.ceil(t.numel() * bits / 8)


@dataclass
class _Ledger:
    online: dict = field(default_factory=lambda: defaultdict(PartyStats))
    offline: dict = field(default_factory=lambda: defaultdict(PartyStats))
    by_tag: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(PartyStats)))
    rounds_by_tag: dict = field(default_factory=lambda: defaultdict(int))
    # the cost profile: (scope, protocol step) -> {party: traffic}, and -> seconds of this process
    by_scope: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(PartyStats)))
    seconds: dict = field(default_factory=lambda: defaultdict(float))


LOCAL_STEP = "(local)"  # a scope's time after its last round: local work only


class Communicator:
    """Simulated transport between named compute parties, with traffic accounting and view recording.

    Args:
        parties: compute party names; share tensors carry one row per party in this order.
        record_views: keep, per party, every value it learned (for honesty tests; costs memory).
    """

    def __init__(self, parties: tuple[str, ...], record_views: bool = False) -> None:
        self.parties = tuple(parties)
        self.n = len(self.parties)
        self.record_views = record_views
        self.reset()

    def reset(self) -> None:
        """Forget all counters, views and records."""
        self._ledger = _Ledger()
        self.rounds = 0
        self.scope = "(outside the model)"  # where traffic and time are counted (a layer path, a phase of the run)
        self._clock: float | None = None  # when the profile's clock last moved (None: stopped)
        self.views: dict[str, list[tuple[str, torch.Tensor]]] = {p: [] for p in self.parties}
        self.records: list[OpenRecord] = []

    # ------------------------------------------------------------------ public values
    def note_public(self, what: str, value=None, detail=None) -> None:
        """A public value an op used (a constant, an index, a mask): every party must use the same. One process
        holds every party here, so nothing can disagree; the process runtime binds them into its messages."""

    def bind_input(self, binding: str) -> None:
        """The next outside input's index and shape (public): the process runtime binds them into its message."""

    def note_reveal(self, name: str, frac_bits: int) -> None:
        """What the next reveal to an outside receiver is (public): one process holds every role here; the process
        runtime announces it to the receiver's process."""

    # ------------------------------------------------------------------ transport
    def open(self, items: list[tuple[torch.Tensor, str, int]], tag: str) -> list[torch.Tensor]:
        """Open masked values to all parties in ONE round.

        Args:
            items: ``(shares, kind, bits)`` with shares ``[n_parties, ...]``, kind "arith" (sum mod
                2**bits) or "xor", and the bits each element takes on the wire.
            tag: protocol name, for the per-protocol statistics.
        """
        token = _OPENING.set(True)
        try:
            exchanged = self._exchange_many(items)
            values = [reconstruct(x, kind, bits) for x, (_, kind, bits) in zip(exchanged, items)]
        finally:
            _OPENING.reset(token)
        per_msg = sum(_nbytes(s[0], bits) for s, _, bits in items)
        self._round(tag, {p: (self.n - 1, per_msg * (self.n - 1), per_msg * (self.n - 1)) for p in self.parties})
        self.records.append(OpenRecord(tag, tuple(tuple(v.shape) for v in values), "masked", self.parties))
        if self.record_views:
            for p in self.parties:
                self.views[p].extend((tag, v) for v in values)
        return values

    def reveal_to(self, shares: torch.Tensor, to: tuple[str, ...], tag: str, outside: str | None = None) -> torch.Tensor:
        """Reveal a secret to the parties in ``to`` (and/or an ``outside`` receiver such as the client)."""
        receivers = list(to) + ([outside] if outside else [])
        gathered = self._exchange_to(shares, receivers)
        value = None
        if gathered is not None:
            token = _OPENING.set(True)
            try:
                value = reconstruct(gathered)
            finally:
                _OPENING.reset(token)
        nbytes = _nbytes(shares[0], 64)
        traffic = {}
        for p in self.parties:
            others = [r for r in receivers if r != p]
            traffic[p] = (len(others), nbytes * len(others), 0)
        for r in receivers:
            senders = [p for p in self.parties if p != r]
            s, m, _ = traffic.get(r, (0, 0, 0))
            traffic[r] = (s, m, nbytes * len(senders))
        self._round(tag, traffic)
        self.records.append(OpenRecord(tag, (tuple(shares.shape[1:]),), "reveal", tuple(receivers)))
        if self.record_views and value is not None:
            for r in to:
                if r in self.views:
                    self.views[r].append((tag, value))
        return value

    def broadcast_input(self, sender: str, value: torch.Tensor, tag: str, bits: int = 64) -> torch.Tensor:
        """``sender`` (a party or an outside input owner) sends a masked input to every compute party."""
        value = self._broadcast(value, sender)
        nbytes = _nbytes(value, bits)
        receivers = [p for p in self.parties if p != sender]
        traffic = {sender: (len(receivers), nbytes * len(receivers), 0)}
        for p in receivers:
            traffic[p] = (0, 0, nbytes)
        self._round(tag, traffic)
        self.records.append(OpenRecord(tag, (tuple(value.shape),), "masked", tuple(receivers)))
        if self.record_views:
            for p in receivers:
                self.views[p].append((tag, value))
        return value

    def account_clear(self, sender: str, nbytes: int, tag: str) -> None:
        """Count a value ``sender`` sends in clear to every compute party (a public input, public weights): the
        transport moves it itself (the process runtime over the links), this only keeps the traffic honest."""
        receivers = [p for p in self.parties if p != sender]
        traffic = {sender: (len(receivers), nbytes * len(receivers), 0)}
        for p in receivers:
            traffic[p] = (0, 0, nbytes)
        self._round(tag, traffic)

    # ------------------------------------------------------------------ transport hooks
    # The simulated transport holds every party's row already; a per-process transport overrides these
    # three methods (see distributed.py) and nothing else changes.
    def _exchange_many(self, items: list[tuple[torch.Tensor, str, int]]) -> list[torch.Tensor]:
        """All parties' shares of each opened value (each party sends its own rows to the others, in one
        message per peer: one round trip for the whole round)."""
        return [shares for shares, _, _ in items]

    def _exchange_to(self, shares: torch.Tensor, receivers: list[str]) -> torch.Tensor | None:
        """All shares at the receivers; None in a process that is not a receiver."""
        return shares

    def _broadcast(self, value: torch.Tensor, sender: str) -> torch.Tensor:
        """``value`` as sent by ``sender`` (already here in the simulated runtime)."""
        return value

    def dealer_send(self, sizes: dict[str, int], tag: str, dealer: str) -> None:
        """Account offline traffic from the dealer: ``sizes`` maps receiver -> bytes."""
        led = self._ledger
        for p, nbytes in sizes.items():
            led.offline[p].bytes_received += nbytes
            led.offline[p].messages += 1
            led.offline[dealer].bytes_sent += nbytes
            led.offline[dealer].messages += 1

    def _round(self, tag: str, traffic: dict[str, tuple[int, int, int]]) -> None:
        led = self._ledger
        self.rounds += 1
        led.rounds_by_tag[tag] += 1
        scoped = led.by_scope[(self.scope, tag)]
        for p, (msgs, sent, received) in traffic.items():
            st = PartyStats(rounds=1 if (sent or received) else 0, messages=msgs, bytes_sent=sent, bytes_received=received)
            led.online[p].add(st)
            led.by_tag[tag][p].add(st)
            scoped[p].add(st)
        self._tick((self.scope, tag))  # the local work leading to this round and the round itself

    # ------------------------------------------------------------------ cost profile
    def _tick(self, key: tuple[str, str]) -> None:
        if self._clock is not None:
            now = time.perf_counter()
            self._ledger.seconds[key] += now - self._clock
            self._clock = now

    def enter_scope(self, scope: str) -> str:
        """Count what follows under ``scope`` (a layer path, or a phase such as "(share inputs)"); returns the
        previous scope. Each round's time is the local work since the previous event plus the round itself; a
        scope's time after its last round is its ``(local)`` step. The clock starts at the first scope."""
        if self._clock is None:
            self._clock = time.perf_counter()
        else:
            self._tick((self.scope, LOCAL_STEP))
        previous, self.scope = self.scope, scope
        return previous

    def stop_clock(self) -> None:
        """Count the time since the last event, then stop (nothing after this is timed)."""
        self._tick((self.scope, LOCAL_STEP))
        self._clock = None

    def cost_profile(self) -> list[dict]:
        """Rows ``{"layer", "step", "seconds", "parties": {party: traffic}}``, one per (scope, protocol step): the
        traffic of every round (they sum to :meth:`stats`), and this process's time (it sums to the time clocked
        between the first :meth:`enter_scope` and :meth:`stop_clock`)."""
        led = self._ledger
        keys = list(dict.fromkeys(list(led.by_scope) + list(led.seconds)))
        return [{"layer": scope, "step": step, "seconds": led.seconds.get((scope, step), 0.0),
                 "parties": {p: asdict(st) for p, st in led.by_scope.get((scope, step), {}).items()}}
                for scope, step in keys]

    # ------------------------------------------------------------------ statistics
    def stats(self, offline: bool = False) -> dict[str, dict[str, int]]:
        """``{party: {"rounds", "messages", "bytes_sent", "bytes_received"}}`` online (or offline)."""
        src = self._ledger.offline if offline else self._ledger.online
        return {p: asdict(s) for p, s in src.items()}

    def stats_by_tag(self) -> dict[str, dict]:
        """Online traffic per protocol tag: ``{tag: {"rounds": int, "parties": {party: {...}}}}``."""
        led = self._ledger
        return {
            tag: {"rounds": led.rounds_by_tag[tag], "parties": {p: asdict(s) for p, s in per.items()}}
            for tag, per in led.by_tag.items()
        }

    def snapshot(self) -> tuple[int, dict]:
        """(global rounds, by-tag stats): take two and subtract to measure one call."""
        return self.rounds, self.stats_by_tag()
