"""``run_parties``: a function run in one process per compute party (plus the crypto provider's) on 127.0.0.1."""
from __future__ import annotations

import datetime
import os
import sys
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..errors import PartyProcessError
from ..links import Identity, Roster, roll_call
from .dealer_server import serve_dealer
from ..session import ring_config
from .parties import DEFAULT_TIMEOUT, establish_links, party_session
from .remote_dealer import finish
from .supervisor import (_abort, _drain, _free_port, _set_progress, _stop, _to_bytes, is_peer_failure,
                         resolve_start_method, user_error)

__all__ = ["run_parties"]

_FAILURE_GRACE = 3.0  # after one process failed, seconds the others get to report before they are stopped


def _worker(rank, world, port, names, parties, crypto_provider, seed, timeout, roster_text, identity_pem,
            session_kwargs, fn, results, progress) -> None:
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
            result = serve_dealer(links, parties, crypto_provider, ring.compare_bits, seed, ring.digit_bits)
        else:
            sess = party_session(links, parties, crypto_provider, **session_kwargs)
            _set_progress(progress, "the job function")
            out = fn(sess)
            finish(sess)
            result = {"result": out, "stats": sess.stats()["online"], "rounds": sess.comm.rounds, "links": links.stats}
        _set_progress(progress, "done")
        results.put((rank, _to_bytes(result), None))
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - report, tell the peers why, tear the group down, exit
        if "links" in locals():
            links.say_goodbye(f"{type(e).__name__}: {e}")
        where = progress.value.decode("utf-8", "replace")
        results.put((rank, None, (type(e).__name__, str(e), where, traceback.format_exc(limit=12), type(e).__module__,
                                  type(e).__qualname__)))
        _abort()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def run_parties(
    fn: Callable, parties: tuple[str, ...] = ("alice", "bob"), crypto_provider: str = "crypto_provider",
    seed: int | None = None, timeout: float = DEFAULT_TIMEOUT, roster: Roster | str | None = None,
    identities: dict[str, Identity] | None = None, start_method: str | None = None, **session_kwargs,
) -> list:
    """Run ``fn(session)`` in one process per party (plus the dealer's) over gloo on 127.0.0.1.

    ``fn`` must be importable (a module-level function). All traffic between the processes goes over
    authenticated, encrypted links (:mod:`.links`); with ``roster`` and ``identities`` (name ->
    :class:`~.links.Identity`) the processes prove those identities (``identities`` alone: the roster is
    made from them); without either, fresh identities and their roster are made here, so the run is pinned
    all the same (a process that only reaches the port cannot take a role).
    ``timeout`` (seconds) bounds every single operation. ``start_method``: see :func:`resolve_start_method`
    (``None``: ``fork`` where each process would get one core anyway, else ``spawn``).

    Returns, per party, ``{"result": fn's return value, "stats": online traffic per party as counted in that
    process, "rounds": int, "links": the links' cost (AEAD seconds, bytes)}``; the dealer's offline
    accounting is appended last.

    Raises :class:`PartyProcessError` naming the party that failed (or died) and what it was doing; no
    process of the run is left running. A party's own error of this package or a plain value/type/key error is
    raised with its own type instead (the party named in its message; the failure report is its ``__cause__``).
    """
    parties = tuple(parties)
    names = parties + (crypto_provider,)
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
    method = resolve_start_method(start_method, world)
    ctx = mp.get_context(method)
    results = ctx.SimpleQueue()  # a synchronous put: a report is out before its process exits
    progress = [ctx.Array("c", 256, lock=False) for _ in range(world)]
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, name=f"lightning_smpc-{n}", args=(
            r, world, port, names, parties, crypto_provider, seed, timeout, roster, pems.get(n), session_kwargs, fn,
            results, progress[r]))
        for r, n in enumerate(names)
    ]
    got: dict[int, Any] = {}
    errors: dict[int, tuple] = {}
    try:
        for p in procs:
            p.start()
        failed_at, grace = None, min(timeout, _FAILURE_GRACE)
        while len(got) < world:
            if _drain(results, got, errors):
                continue
            now = time.monotonic()
            if failed_at is None:
                if errors or any(p.exitcode not in (None, 0) for p in procs) or all(p.exitcode is not None for p in procs):
                    failed_at = now
            elif (all(p.exitcode is not None for p in procs) and now - failed_at > 0.5) or now - failed_at > grace:
                break  # the others fail within ms once a group is torn down; one that does not is stopped
            time.sleep(0.02)
        if len(got) < world:
            codes = [p.exitcode for p in procs]
            _stop(procs)
            _drain(results, {}, errors)  # errors that arrived while stopping
            failure = PartyProcessError(_failure_message(names, codes, errors, progress, got))
            own = [r for r in errors if not is_peer_failure(f"{errors[r][0]}: {errors[r][1]}")]
            error = user_error(errors[own[0]][4], errors[own[0]][5], errors[own[0]][1],
                               f"{names[own[0]]} (rank {own[0]})") if own else None
            if error is not None:
                raise error from failure
            raise failure
    finally:
        _stop(procs)
        results.close()
    return [got[r] for r in range(world)]


def _failure_message(names, codes, errors, progress, got) -> str:
    def where(r):
        return progress[r].value.decode("utf-8", "replace") or "start-up"

    dead = [r for r, c in enumerate(codes) if r not in errors and r not in got and c not in (None, 0)]
    primary = [r for r in errors if not is_peer_failure(f"{errors[r][0]}: {errors[r][1]}")]
    lines = []
    if dead:
        r = dead[0]
        code = codes[r]
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        lines.append(f"Party process {names[r]!r} (rank {r}) {how} without reporting, during {where(r)}.")
    elif primary or errors:
        r = (primary or list(errors))[0]
        kind, msg, at, tb = errors[r][:4]
        lines.append(f"Party process {names[r]!r} (rank {r}) failed during {at}: {kind}: {msg}\n{tb}")
    else:
        r = None
        lines.append("The run stopped without results: " + ", ".join(
            f"{names[k]!r} (rank {k}) at {where(k)}" for k in range(len(names)) if k not in got))
    others = [k for k in range(len(names)) if k != r and k not in got]
    for k in others:
        if k in errors:
            kind, msg, at, _ = errors[k][:4]
            lines.append(f"  then {names[k]!r} (rank {k}) failed during {at}: {kind}: {msg.splitlines()[0] if msg else ''}")
        else:
            lines.append(f"  {names[k]!r} (rank {k}) was stopped during {where(k)}.")
    lines.append("Every process of the run was stopped.")
    return "\n".join(lines)
