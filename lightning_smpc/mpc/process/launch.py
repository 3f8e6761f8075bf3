"""``run_parties``: a function run in one process per compute party (plus the crypto provider's) on 127.0.0.1."""
from __future__ import annotations

import datetime
import os
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..handshake import roll_call
from ..identities import Identity, Roster
from ..session import ring_config
from .dealer_server import serve_dealer
from .outside import OutsideRole
from .parties import DEFAULT_TIMEOUT, establish_links, party_session
from .remote_dealer import finish
from .supervisor import Supervisor, _abort, _free_port, _set_progress, _to_bytes, error_report, resolve_start_method

__all__ = ["run_parties", "PartyResult"]


@dataclass(frozen=True)
class PartyResult:
    """What a compute party's process of :func:`run_parties` sends back (to your process, on this machine)."""

    result: Any  # fn's return value in that party's process
    stats: dict[str, dict[str, int]]  # online traffic per party, as counted in that process
    rounds: int
    links: dict[str, Any]  # the links' cost: AEAD seconds, plain/wire bytes, ...

    def to_dict(self) -> dict[str, Any]:
        """The dict it was: ``{"result", "stats", "rounds", "links"}`` (``run["result"]`` reads it too)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]


def _worker(rank, results, progress, world, port, names, parties, crypto_provider, seed, timeout, roster_text,
            identity_pem, session_kwargs, fn) -> None:
    torch.set_num_threads(1)  # also what a forked child needs (see resolve_start_method)
    name = names[rank]
    _set_progress(progress, "starting the process group")
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}",
                                timeout=datetime.timedelta(seconds=timeout))
        _set_progress(progress, "the identity handshake")
        identity = problem = None
        try:
            identity = Identity.from_pem(name, identity_pem) if identity_pem is not None else None
        except Exception as e:  # noqa: BLE001 - told to the others (roll_call), then raised here
            problem = e
        ring = ring_config(session_kwargs.get("ring"), session_kwargs.get("precision_bits"),
                           session_kwargs.get("compare_bits"), session_kwargs.get("compare_digit_bits"))
        roll_call(rank, names, problem, agree=ring.to_text())
        links = establish_links(rank, world, names, roster_text, identity, timeout=timeout)
        links.on_op = lambda what: _set_progress(progress, what)
        if name == crypto_provider:
            result = serve_dealer(links, parties, crypto_provider, ring, seed)
        elif name not in parties:  # an outside input owner / receiver: fn gets its OutsideRole
            role = OutsideRole(links, parties, crypto_provider, ring)
            _set_progress(progress, "the job function")
            out = fn(role)
            result = PartyResult(out, {name: asdict(role.stats)}, 0, links.stats)
        else:
            sess = party_session(links, parties, crypto_provider, **session_kwargs)
            _set_progress(progress, "the job function")
            out = fn(sess)
            finish(sess)
            result = PartyResult(out, sess.stats()["online"], sess.comm.rounds, links.stats)
        _set_progress(progress, "done")
        results.put((rank, _to_bytes(result), None))
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - report, tell the peers why, tear the group down, exit
        if "links" in locals():
            links.say_goodbye(type(e).__name__)  # the class only: its text may hold data
        results.put((rank, None, error_report(e, progress.value.decode("utf-8", "replace"))))
        _abort()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def run_parties(
    fn: Callable, parties: tuple[str, ...] = ("alice", "bob"), crypto_provider: str = "crypto_provider",
    seed: int | None = None, timeout: float = DEFAULT_TIMEOUT, roster: Roster | str | None = None,
    identities: dict[str, Identity] | None = None, start_method: str | None = None, outside: tuple[str, ...] = (),
    **session_kwargs,
) -> list:
    """Run ``fn(session)`` in one process per party (plus the dealer's) over gloo on 127.0.0.1.

    ``outside``: roles outside the compute parties (an input owner such as the model owner's server or the client,
    a receiver of what is revealed to it), each in a process of its own, ranked after the parties: there ``fn`` gets
    that role's :class:`~.outside.OutsideRole` (``share(value)``, ``receive()``) instead of a session, and its result
    carries the role's own traffic (``rounds`` 0).

    ``fn`` must be importable (a module-level function). All traffic between the processes goes over
    authenticated, encrypted links (:mod:`.links`); with ``roster`` and ``identities`` (name ->
    :class:`~.links.Identity`) the processes prove those identities (``identities`` alone: the roster is
    made from them); without either, fresh identities and their roster are made here, so the run is pinned
    all the same (a process that only reaches the port cannot take a role).
    ``timeout`` (seconds) bounds every single operation. ``start_method``: see :func:`resolve_start_method`
    (``None``: ``fork`` where each process would get one core anyway, else ``spawn``).

    Returns, per party, a :class:`PartyResult` (``.result``: fn's return value, ``.stats``: online traffic per
    party as counted in that process, ``.rounds``, ``.links``: the links' cost (AEAD seconds, bytes)); the
    dealer's offline accounting (``serve_dealer``'s dict) is appended last.

    Raises :class:`PartyProcessError` naming the party that failed (or died) and what it was doing; no
    process of the run is left running. A party's own error of this package or a plain value/type/key error is
    raised with its own type instead (the party named in its message; the failure report is its ``__cause__``).
    """
    parties, outside = tuple(parties), tuple(outside)
    if set(outside) & (set(parties) | {crypto_provider}) or len(set(outside)) != len(outside):
        raise ValueError(f"Expected outside roles distinct from the parties and the crypto provider, got {outside}.")
    names = parties + outside + (crypto_provider,)
    world = len(names)
    if roster is None and not identities:  # pinned all the same: fresh keys made here, each process gets its own
        identities = {n: Identity.generate(n) for n in names}
    if roster is None and identities:
        if set(identities) != set(names):
            raise ValueError(f"Expected identities for every process {names} (or a roster), got {sorted(identities)}.")
        roster = Roster.from_identities([identities[n] for n in names])  # pinned to the keys given here
    if isinstance(roster, Roster):
        roster = roster.to_text()
    pems = {n: identities[n].to_pem() for n in names if n in identities} if identities else {}
    port = _free_port()
    supervisor = Supervisor(names, resolve_start_method(start_method, world), _worker, lambda r: (
        world, port, names, parties, crypto_provider, seed, timeout, roster, pems.get(names[r]), session_kwargs, fn),
        timeout=timeout)
    reports = supervisor.run()
    return [reports[r] for r in range(world)]
