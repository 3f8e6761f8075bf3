"""The runtime seam: what a protocol may use of the runtime it runs on, whichever that is.

A :class:`~.session.Session` is built on a :class:`Runtime`: :class:`SimulatedRuntime` (every party and the
dealer in this process) or the per-process runtime of :mod:`.distributed` (this process is one compute party;
the dealer is another process). Protocols reach the runtime only through the session's :class:`Transport`
(``sess.comm``), its :class:`DealerHandle` (``sess.dealer``) and ``sess.holds_first``; they cannot tell which
runtime they run on. ``tests/mpc/test_runtime_seam.py`` checks that both runtimes implement every member.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, runtime_checkable

import torch

from .config import RingConfig
from .material import Material, Request

__all__ = ["Transport", "DealerHandle", "PartyContext", "Runtime", "SimulatedRuntime"]


@runtime_checkable
class Transport(Protocol):
    """Moves shares between the parties and counts the protocol's traffic (``sess.comm``).

    Each call is one round; local share tensors carry a leading party axis (all parties in the simulated
    runtime, this process's one party otherwise).
    """

    rounds: int

    def open(self, items: list[tuple[torch.Tensor, str, int]], tag: str) -> list[torch.Tensor]:
        """Open masked values to every party: ``(shares, "arith" | "xor", bits)`` each; one round for all."""

    def reveal_to(self, shares: torch.Tensor, to: tuple[str, ...], tag: str, outside: Optional[str] = None) -> torch.Tensor:
        """Reveal to the named receivers only (the others get nothing)."""

    def broadcast_input(self, sender: str, value: torch.Tensor, tag: str, bits: int = 64) -> torch.Tensor:
        """An input owner's masked value, from the owner to every party."""

    def stats(self, offline: bool = False) -> dict[str, dict[str, int]]:
        """Per party: rounds, messages, bytes sent and received (online, or the dealer's offline traffic)."""

    def note_public(self, what: str, value: Any = None, detail: Any = None) -> None:
        """A public value an op used (a constant, an index, a mask): parties as processes bind it into their next
        messages, so parties that disagree on it fail authentication instead of computing garbage."""

    def note_reveal(self, name: str, frac_bits: int) -> None:
        """What the next reveal to an outside receiver is (public; the process runtime announces it)."""

    def bind_input(self, binding: str) -> None:
        """The next outside input's index and shape (public; the process runtime binds them into its message)."""


@runtime_checkable
class DealerHandle(Protocol):
    """The parties' access to the crypto provider's correlated randomness (``sess.dealer``)."""

    fallback_inline: bool
    times: Any

    def request(self, req: Request) -> Material:
        """This process's material for ``req`` (from what was prepared ahead if it matches, else generated now)."""

    def record(self) -> None:
        """Start recording the requests of the next computation (its plan)."""

    def stop_recording(self) -> list:
        """Stop recording; returns the plan."""

    def preprocess(self, plan: list, repeats: int, party_precompute: Optional[Callable] = None,
                   next_inputs: Optional[dict] = None) -> None:
        """Prepare the material of ``repeats`` more runs of ``plan`` ahead of the requests (``next_inputs``: the
        session's count of each outside owner's inputs, which the repeats continue from)."""

    @property
    def store_size(self) -> int:
        """Prepared requests not taken yet."""

    def clear_store(self) -> None:
        """Drop what was prepared and not taken (its masks are never used)."""

    def forget(self, mask_id: int) -> None:
        """The parties no longer need the mask ``mask_id``."""

    def take_ahead(self) -> None:
        """Take the material prepared for the next run now (offline, between batches), folding its data-independent
        products in then; a no-op where the prepared material is already in this process (the simulated dealer)."""


@runtime_checkable
class PartyContext(Protocol):
    """What a protocol (``sess``) or an op (``x._session``) may use of its session: the seam's transport and dealer,
    the ring's settings, where shares live and whether this process holds the first party's row. ``Session``
    implements it; a test checks that protocols and ops use nothing else of it."""

    comm: Transport
    dealer: DealerHandle
    parties: tuple
    precision_bits: int
    compare_bits: int
    compare_digit_bits: int
    device: Any
    holds_first: bool  # this process holds row 0 (the first party's): it alone adds public constants
    encoder: Any
    op_seconds: dict  # wall time per protocol (the session's own accounting)

    def from_shares(self, shares: Any, frac_bits: int) -> Any:
        """Wrap shares (leading party axis) as a ShareTensor of this session."""

    def input_index(self, owner: str) -> int:
        """The next input index of an owner outside the parties (its masks derive from it)."""

    def reveal(self, x: Any, to: Any = None, name: Optional[str] = None, outside: Optional[str] = None) -> Any:
        """Reveal ``x`` to the parties in ``to`` (recorded in the ledger)."""


@runtime_checkable
class Runtime(Protocol):
    """Where a session runs: which party this process plays (``rank``; ``None``: all of them, simulated),
    its transport and its dealer."""

    @property
    def rank(self) -> Optional[int]:
        """This process's party index, or ``None`` when this process holds every party's share."""

    def communicator(self, parties: tuple[str, ...], record_views: bool) -> Transport: ...

    def dealer(self, comm: Transport) -> DealerHandle: ...


class SimulatedRuntime:
    """Every party and the dealer in this process (a demonstration with exact traffic accounting)."""

    rank = None

    def __init__(self, parties: tuple[str, ...], crypto_provider: str, prg, ring: RingConfig, device) -> None:
        self.parties, self.crypto_provider, self.prg = tuple(parties), crypto_provider, prg
        self.ring, self.device = ring, device

    def communicator(self, parties: tuple[str, ...], record_views: bool) -> Transport:
        from .comm import Communicator

        return Communicator(parties, record_views=record_views)

    def dealer(self, comm: Transport) -> DealerHandle:
        from .dealer import TrustedDealer

        return TrustedDealer(self.crypto_provider, self.parties, self.prg, comm, self.ring, self.device)
