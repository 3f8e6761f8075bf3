"""A compute party's session in its own process: the links (:func:`establish_links`) and the :class:`~..session.Session`
whose transport and dealer are the process ones (:func:`party_session`)."""
from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from typing import Any, Sequence

import torch.distributed as dist

from ..config import RingConfig
from ..handshake import handshake
from ..identities import Identity, Roster
from ..links import LinkError, Links
from .remote_dealer import RemoteDealer
from .transport import DistributedCommunicator

__all__ = ["establish_links", "party_session", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 60.0  # seconds per operation (gloo's own default under Lightning/torch is 1800 s)


@dataclass
class _Runtime:
    links: Links
    parties: tuple
    crypto_provider: str
    ring: RingConfig
    group: Any = None

    @property
    def rank(self) -> int:
        return self.parties.index(self.links.name)

    def communicator(self, parties, record_views):
        return DistributedCommunicator(parties, self.links, record_views)

    def dealer(self, comm=None):
        dealer = RemoteDealer(self.links, self.parties, self.crypto_provider, self.ring)
        if isinstance(comm, DistributedCommunicator):
            comm.heartbeat = dealer.heartbeat  # the dealer's wait for the next request stays within the timeout
        return dealer


# ---------------------------------------------------------------------------------------------- public seam
def establish_links(
    rank: int, world_size: int, names: Sequence[str], roster: Roster | str | None = None,
    identity: Identity | None = None, group=None, timeout: float = DEFAULT_TIMEOUT,
) -> Links:
    """Authenticate every process and set up the encrypted pairwise links (call on every rank).

    The process group must be initialized (``torch.distributed.init_process_group("gloo", ...)``, by you
    or by Lightning); its timeout bounds every later operation.

    Args:
        rank: this process's index in ``names`` (= its rank in ``group``).
        world_size: ``len(names)`` (checked against the group).
        names: every process's role name in rank order, e.g. ``("alice", "bob", "crypto_provider")``.
        roster: the :class:`~.links.Roster` (or its text) listing each name's Ed25519 public key; ``None``
            makes fresh identities and exchanges them (one machine: encrypted, but identities unpinned).
        identity: this process's :class:`~.links.Identity` (its private key) when a roster is given.
        group: the process group of all these processes (default: the world).

    Raises :class:`~.links.LinkAuthError` on every rank, naming each process whose identity is refused.
    """
    if not dist.is_initialized():
        raise LinkError("Initialize the process group (gloo) before establish_links().")
    names = tuple(names)
    if len(names) != world_size:
        raise LinkError(f"Expected world_size == len(names), got {world_size} and {names}.")
    if isinstance(roster, (str, bytes)):
        roster = Roster.from_text(roster)
    return handshake(rank, names, roster, identity, group, datetime.timedelta(seconds=timeout))


def party_session(links: Links, parties: Sequence[str], crypto_provider: str, group=None, **session_kwargs):
    """The :class:`~.session.Session` of the compute party this rank plays (``links.name``).

    ``group`` (the parties' process group, optional) is kept on the runtime for the caller's own use; all
    protocol data goes over ``links``. ``session_kwargs`` as in ``Session`` (``ring`` or its flat settings,
    ``device``, ``record_views``); the ring the same on every party and the dealer. The first party calls :func:`finish` when done.
    """
    from ..session import Session, ring_config

    parties = tuple(parties)
    if links.name not in parties:
        raise LinkError(f"{links.name!r} is not a compute party {parties}; the dealer's rank runs serve_dealer().")
    session_kwargs.pop("seed", None)  # parties draw nothing from a seed; only the dealer's generator matters
    ring = ring_config(session_kwargs.pop("ring", None), session_kwargs.pop("precision_bits", None),
                       session_kwargs.pop("compare_bits", None), session_kwargs.pop("compare_digit_bits", None))
    runtime = _Runtime(links, parties, crypto_provider, ring, group)
    session = Session(parties, crypto_provider, seed=None, runtime=runtime, ring=ring, **session_kwargs)
    # Bound into every later message between the parties: parties configured differently (each role launched with
    # its own settings) fail at their first exchange, naming the configuration, instead of computing garbage.
    session.comm.note_public("configuration", detail={"parties": parties, "crypto_provider": crypto_provider,
                                                       **dataclasses.asdict(ring)})
    return session
