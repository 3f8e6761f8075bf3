"""The Lightning strategy's handle on the multi-process MPC runtime (:mod:`lightning_smpc.mpc.distributed`).

One process per role: compute parties on ranks ``0..n-1``, the crypto provider on rank ``n``. The process group
is started with Lightning's cluster environment (spawned locally by :class:`~lightning_smpc.launcher.PartyLauncher`,
or launched by torchrun / SLURM / ``MASTER_ADDR``+``RANK`` env vars) with an explicit timeout, so that a dead or
hung peer ends the run instead of blocking it for torch's default 30 minutes; then every process authenticates
and all traffic between roles goes over the encrypted links (:mod:`lightning_smpc.mpc.links`).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Optional

import torch
import torch.distributed as dist
from lightning.fabric.utilities.distributed import _init_dist_connection

from .mpc import distributed as mpc_dist
from .mpc.handshake import roll_call
from .mpc.identities import Identity, Roster
from .mpc.links import Links
from .mpc.process.supervisor import _set_progress as set_progress
from .mpc.config import RingConfig
from .mpc.session import Session

__all__ = ["World", "join", "load_keys", "party_session", "serve_dealer", "finish", "announce", "receive", "leave"]

PROGRESS = None  # set in a role's process spawned by ``predict``: a shared array its supervisor reads on failure
_HEADER_BYTES = 4096  # a batch header (structure and shapes) fits easily; larger ones are refused
_HEADER_TAG = "batch_header"
_PUBLIC_TAG = "public_input"


@dataclass
class World:
    """This process's place in the run: its rank, the compute parties and its authenticated links (every role's: the
    parties first, then any outside role, the crypto provider last); ``client``: the role whose process reads the
    data."""

    rank: int
    parties: tuple
    links: Links
    client: Optional[str] = None

    @property
    def party_ranks(self) -> list[int]:
        return list(range(len(self.parties)))

    def with_rank(self, rank: int) -> list[int]:
        """The parties' ranks, and ``rank``'s when it is a role outside them (it sends to or receives from them)."""
        return self.party_ranks + ([rank] if rank not in self.party_ranks else [])

    @property
    def batch_ranks(self) -> list[int]:
        """Who the client's batch headers go to: the parties, and the client's own process when it is outside them."""
        return self.party_ranks if self.client is None else self.with_rank(self.links.index(self.client))


def join(cluster_environment, rank: int, parties: tuple[str, ...], crypto_provider: str, timeout: float,
         keys: Callable[[], tuple], start_timeout: Optional[float] = None, ring: Optional[RingConfig] = None,
         outside: tuple[str, ...] = (), client: Optional[str] = None) -> World:
    """Start (or join) the process group of one run and authenticate every role; every rank calls this once.

    ``keys()`` gives this role's ``(roster, identity)``; it runs once the process group is joined, so that a role
    whose keys cannot be read (or that is refused a start) is named to the others at once (see
    :func:`~lightning_smpc.mpc.links.roll_call`) instead of leaving them waiting for it. ``start_timeout`` bounds how
    long a role waits for the others to start (roles started by hand minutes apart); ``timeout`` bounds every
    operation after that (the links' own groups)."""
    names = tuple(parties) + tuple(outside) + (crypto_provider,)
    start = max(timeout, start_timeout or timeout)
    _init_dist_connection(cluster_environment, "gloo", rank, len(names), timeout=timedelta(seconds=start))
    roster = identity = problem = None
    try:
        roster, identity = keys()
    except Exception as e:  # noqa: BLE001 - told to the others, then raised here as it is
        problem = e
    roll_call(rank, names, problem, agree=(ring or RingConfig()).to_text())  # roles configured alike, or refused
    links = mpc_dist.establish_links(rank, len(names), names, roster=roster, identity=identity, timeout=timeout)
    if PROGRESS is not None:  # a role spawned by predict: what it is doing goes into its failure report
        links.on_op = lambda what: set_progress(PROGRESS, what)
    return World(rank, tuple(parties), links, client)


def fresh_keys(names: tuple[str, ...]) -> tuple[str, dict[str, bytes]]:
    """Keys for a run that ``predict`` spawns on this machine: a fresh identity per role and their roster (text, and
    each role's private key as PEM), made in the user's process and handed to the roles it starts."""
    identities = [Identity.generate(n) for n in names]
    return Roster.from_identities(identities).to_text(), {i.name: i.to_pem() for i in identities}


def spawn_identity(keys: tuple[str, dict[str, bytes]], name: str):
    """(Roster, this role's Identity) from :func:`fresh_keys`."""
    roster_text, pems = keys
    return Roster.from_text(roster_text), Identity.from_pem(name, pems[name])


def load_keys(roster_path: Optional[str], identity_path: Optional[str], name: str):
    """(Roster, Identity) from their files, or (None, None): fresh keys exchanged at start (one machine)."""
    if roster_path is None:
        return None, None
    return Roster.load(roster_path), Identity.load(name, identity_path)


def party_session(world: World, crypto_provider: str, **session_kwargs) -> Session:
    """The Session of the compute party on this rank (its own row of every share, material from the dealer)."""
    return mpc_dist.party_session(world.links, world.parties, crypto_provider, **session_kwargs)


def serve_dealer(world: World, crypto_provider: str, ring: RingConfig, seed: Optional[int] = None,
                 max_material_bytes: Optional[int] = None) -> dict:
    """Answer the parties' requests until the first party ends the run; returns the offline traffic per party."""
    limit = {} if max_material_bytes is None else {"max_material_bytes": max_material_bytes}
    return mpc_dist.serve_dealer(world.links, world.parties, crypto_provider, ring, seed, **limit)


def finish(world: World, session: Session, public: Optional[dict] = None) -> None:
    """Called by every party at the end of the run: the first one releases the crypto provider and ends the outside
    roles (``public``: what they may learn then, e.g. the number of examples)."""
    mpc_dist.finish(session, public)


def announce(world: World, data: bytes) -> None:
    """The client's process sends a batch header to the other compute parties (encrypted, authenticated)."""
    if len(data) > _HEADER_BYTES:
        raise ValueError(f"A batch header of {len(data)} bytes exceeds {_HEADER_BYTES}: too many batch entries.")
    buf = torch.zeros(_HEADER_BYTES + 8, dtype=torch.uint8)
    buf[:8] = torch.tensor([len(data)], dtype=torch.int64).view(torch.uint8)
    buf[8 : 8 + len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    world.links.broadcast(buf, world.rank, _HEADER_TAG, ranks=world.batch_ranks, channel="stream")


def receive(world: World, src: int) -> bytes:
    """Another compute party's process receives the client's (rank ``src``) next batch header."""
    buf = torch.empty(_HEADER_BYTES + 8, dtype=torch.uint8)
    buf = world.links.broadcast(buf, src, _HEADER_TAG, ranks=world.batch_ranks, channel="stream")
    n = int(buf[:8].view(torch.int64))
    if not 0 <= n <= _HEADER_BYTES:
        raise ValueError(f"Malformed batch header length {n} from rank {src}.")
    return bytes(buf[8 : 8 + n].tolist())


def announce_tensor(world: World, t: torch.Tensor) -> None:
    """The client's process sends a public input (announced in the batch header) to the other compute parties."""
    world.links.broadcast(t, world.rank, _PUBLIC_TAG, ranks=world.batch_ranks, channel="stream")


def receive_tensor(world: World, src: int, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """Another compute party's process receives a public input of the announced shape and dtype."""
    return world.links.broadcast(torch.empty(shape, dtype=dtype), src, _PUBLIC_TAG, ranks=world.batch_ranks,
                                 channel="stream")


_WEIGHTS_TAG = "public_weights"


def publish_weights(world: World, src: int, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``private="data"``: the model owner's process (rank ``src``: a party's, or a server's outside them) sends its
    weights in clear to the compute parties (encrypted, authenticated); the others pass tensors of the right shapes
    and get the owner's."""
    return [world.links.broadcast(t, src, _WEIGHTS_TAG, ranks=world.with_rank(src)) for t in tensors]


def leave(world: World) -> None:
    """End this process's part of the run (peers waiting on it fail fast instead of timing out)."""
    if dist.is_initialized():
        dist.destroy_process_group()
