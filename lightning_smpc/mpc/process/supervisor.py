"""Supervising role processes on one machine, for :func:`~.launch.run_parties` and the Lightning strategy's
launcher alike: start methods, reports and errors through a queue (tensors' bytes and names only), one list of
failure rules (which role failed first, which only lost a peer), the user's own errors re-raised with their type."""
from __future__ import annotations

import importlib
import io
import os
import socket
import sys
import time
import traceback
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..errors import PartyProcessError

__all__ = ["Supervisor", "START_METHODS", "check_start_method", "resolve_start_method", "main_is_a_file", "SPAWN_HINT",
           "PEER_FAILURES", "is_peer_failure", "USER_BUILTINS", "user_error", "error_report"]


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(data: bytes) -> Any:
    # produced by our own child process on this machine (results go to the launcher, never to another party)
    return torch.load(io.BytesIO(data), weights_only=False)


def _drain(results, reports: dict, errors: dict) -> bool:
    """Move every ``(rank, payload, error)`` waiting in ``results`` into ``reports`` (decoded) or ``errors`` (an
    :func:`error_report`); True when anything arrived."""
    arrived = False
    while not results.empty():
        rank, payload, error = results.get()
        if error is not None:
            errors[rank] = error
        else:
            reports[rank] = _from_bytes(payload)
        arrived = True
    return arrived


def error_report(e: BaseException, where: str) -> tuple:
    """What a failing role sends its supervisor: names and text only (nothing is unpickled in the supervisor):
    ``(class name, message, what it was doing, traceback, module, qualified name)``."""
    return (type(e).__name__, str(e), where, traceback.format_exc(limit=20), type(e).__module__, type(e).__qualname__)


def _set_progress(arr, text: str) -> None:
    raw = text.encode("utf-8", "replace")[: len(arr) - 1]
    arr.value = raw


def _abort() -> None:
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - the peers see the closed sockets and fail fast either way
        pass


START_METHODS = ("fork", "spawn", "forkserver")


def check_start_method(requested: str | None) -> None:
    if requested is not None and requested not in START_METHODS:
        raise ValueError(f"Expected `start_method` to be one of {START_METHODS} or None, but got {requested!r}.")


def resolve_start_method(requested: str | None, num_processes: int) -> str:
    """The ``multiprocessing`` start method for the role processes.

    ``fork`` starts a role in milliseconds (``spawn`` re-imports torch and Lightning in every process: about
    2 s each, 6-7 s for three processes on a 2-core machine, measured), but a forked child must not start
    OpenMP threads once the parent has used them (libgomp hangs: measured with torch's pip wheel), so forked
    roles run one intra-op thread each. ``None`` picks ``fork`` where that costs nothing: on Linux, CUDA not
    initialized in this process, and at most one core per role anyway; also where a spawned process could not
    re-import the caller's code (a notebook, stdin, ``python -c``; Lightning's ``ddp_notebook`` forks too);
    otherwise ``spawn``.
    """
    check_start_method(requested)
    cuda_ready = torch.cuda.is_available() and torch.cuda.is_initialized()
    if requested == "fork" and cuda_ready:
        raise RuntimeError("Cannot fork the role processes: CUDA is already initialized in this process. "
                           "Use SecurePredictStrategy(start_method='spawn').")
    if requested is not None:
        return requested
    if not cuda_ready and hasattr(os, "fork") and not main_is_a_file():
        return "fork"  # a notebook, stdin or `python -c`: a spawned process could not re-import the caller's code
    one_core_each = (os.cpu_count() or 1) // max(num_processes, 1) <= 1
    if sys.platform.startswith("linux") and not cuda_ready and one_core_each:
        return "fork"
    return "spawn"


def main_is_a_file() -> bool:
    """Whether ``__main__`` is a script file that a spawned process can re-import (not a notebook, stdin, -c)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return bool(path) and os.path.isfile(path)


SPAWN_HINT = ("With start_method='spawn' each role's process re-imports your script: code that is not under "
              "`if __name__ == \"__main__\":` (training, the predict call) runs again in every role. Put it under that "
              "guard, or pass SecurePredictStrategy(start_method='fork') (Linux, CUDA not initialized).")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


# What a process reports when a PEER failed (the one list for run_parties and the strategy's launcher): its link
# to that peer closed or timed out. Such errors follow from the first failure; the cause is another process's.
PEER_FAILURES = ("PeerLostError", "Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out",
                 "timed out", "Connection refused", "Application timeout caused pair closure")


def is_peer_failure(text: str) -> bool:
    return any(marker in text for marker in PEER_FAILURES)


# Plain errors of a role that are the user's (a bad value, type or key), re-raised in the caller's process as such
USER_BUILTINS = ("ValueError", "TypeError", "KeyError", "IndexError", "FileNotFoundError", "PermissionError")


def user_error(module: str, qualname: str, message: str, role: str) -> BaseException | None:
    """A role's own error again in the caller's process, with its type (``except UnsupportedOpError`` works as with
    the simulated runtime) and the role named, when it is one of this package's errors or a plain value/type/key
    error; None for anything else (a crash, a peer's failure), which stays a :class:`PartyProcessError`. Only
    the class's module and name cross the process boundary (no object is deserialized)."""
    if not (module.startswith("lightning_smpc") or (module == "builtins" and qualname in USER_BUILTINS)):
        return None
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, Exception)) or issubclass(cls, PartyProcessError):
        return None  # a peer's loss follows from another failure: the run's report says which
    error = cls.__new__(cls)
    Exception.__init__(error, f"{role}: {message}")
    return error


# ---------------------------------------------------------------------------------------------- the supervisor
FAILURE_GRACE = 3.0  # after one process failed, seconds the others get to report before they are stopped


class Supervisor:
    """Runs one process per role on this machine and collects each one's report, or ends a failed run with one
    error: used by :func:`~.launch.run_parties` and the Lightning strategy's launcher alike.

    ``target(rank, results, progress, *args)`` runs in each process; it puts ``(rank, payload bytes, None)`` or
    ``(rank, None, error_report(...))`` on ``results`` and may write what it is doing into ``progress`` (see
    :func:`_set_progress`). A failed run raises the failing role's own error with its type when it is the user's
    (see :func:`user_error`), else :class:`PartyProcessError`; the run's failure report names the role that failed
    first, what it was doing, and what followed in the others, and every process is stopped."""

    def __init__(self, names: Sequence[str], method: str, target: Callable, args_of: Callable[[int], tuple],
                 timeout: float, process_name: str = "lightning_smpc") -> None:
        self.names, self.method, self.timeout = tuple(names), method, timeout
        ctx = mp.get_context(method)
        self.results = ctx.SimpleQueue()  # a synchronous put: a report is out before its process exits
        self.progress = [ctx.Array("c", 256, lock=False) for _ in self.names]
        self.procs = [ctx.Process(target=target, name=f"{process_name}-{n}", daemon=False,
                                  args=(r, self.results, self.progress[r]) + tuple(args_of(r)))
                      for r, n in enumerate(self.names)]

    def run(self) -> dict[int, Any]:
        """Start every process, wait for every report; returns them by rank (each process exits right after)."""
        try:
            for p in self.procs:
                p.start()
            reports = self._collect()
            for p in self.procs:
                p.join(timeout=5)
            return reports
        finally:
            _stop(self.procs)
            self.results.close()

    def _collect(self) -> dict[int, Any]:
        got: dict[int, Any] = {}
        errors: dict[int, tuple] = {}
        failed_at, grace = None, min(self.timeout, FAILURE_GRACE)
        while len(got) < len(self.procs):  # a hang ends in the roles themselves: every wait there has a timeout
            if _drain(self.results, got, errors):
                continue
            now = time.monotonic()
            if failed_at is None:
                if errors or any(p.exitcode not in (None, 0) for p in self.procs) or all(
                        p.exitcode is not None for p in self.procs):
                    failed_at = now
            elif (all(p.exitcode is not None for p in self.procs) and now - failed_at > 0.5) or now - failed_at > grace:
                break  # the others fail within ms once a group is torn down; one that does not is stopped
            time.sleep(0.02)
        if len(got) == len(self.procs):
            return got
        codes = [p.exitcode for p in self.procs]
        _stop(self.procs)
        late: dict[int, tuple] = {}
        _drain(self.results, {}, late)  # errors that arrived while stopping: those of roles that had already exited
        errors.update({r: e for r, e in late.items() if codes[r] is not None and r not in errors})  # (not the stop's)
        failure = PartyProcessError(self.failure_message(codes, errors, got))
        own = [r for r in errors if not is_peer_failure(f"{errors[r][0]}: {errors[r][1]}")]
        error = user_error(errors[own[0]][4], errors[own[0]][5], errors[own[0]][1], self._who(own[0])) if own else None
        if error is not None:
            raise error from failure
        raise failure

    def _who(self, r: int) -> str:
        return f"{self.names[r]} (rank {r})"

    def _where(self, r: int) -> str:
        return self.progress[r].value.decode("utf-8", "replace") or "the run"

    def failure_message(self, codes: list, errors: dict, got: dict) -> str:
        """The one rule set: the role that died without a word first; else one whose error is its own (not a
        lost peer); else one still running while the others timed out on it (hung); else the first error."""
        n = len(self.names)
        died = [r for r in range(n) if codes[r] not in (None, 0) and r not in errors and r not in got]
        own = [r for r in sorted(errors) if not is_peer_failure(f"{errors[r][0]}: {errors[r][1]}")]
        hung = [r for r in range(n) if codes[r] is None and r not in errors and r not in got]
        if died:
            r = died[0]
            code = codes[r]
            how = f"was killed by signal {-code}" if code < 0 else f"died (exit code {code})"
            head = f"{self._who(r)} {how} without a report, during {self._where(r)}."
            if self.method == "spawn":
                head += f" {SPAWN_HINT}"
        elif own or (errors and not hung):
            r = (own or sorted(errors))[0]
            kind, msg, at, tb = errors[r][:4]
            head = f"{self._who(r)} failed during {at or 'the run'}: {kind}: {msg}\n{tb}"
        elif hung:
            r = hung[0]
            head = (f"{self._who(r)} stopped answering: the others timed out waiting for it (timeout {self.timeout:g} s), "
                    f"and it was still running, during {self._where(r)}.")
        else:
            r = None
            head = "The run stopped without results: " + ", ".join(
                f"{self._who(k)} during {self._where(k)}" for k in range(n) if k not in got)
        lines = [head]
        for k in range(n):
            if k == r or k in got:
                continue
            if k in errors:
                kind, msg, at, _ = errors[k][:4]
                lines.append(f"  then {self._who(k)} failed during {at or 'the run'}: {kind}: "
                             f"{msg.splitlines()[0] if msg else ''}")
            else:
                lines.append(f"  {self._who(k)} was stopped during {self._where(k)}.")
        lines.append("Every process of the run was stopped.")
        return "\n".join(lines)
