"""Supervising role processes on one machine, for :func:`~.launch.run_parties` and the Lightning strategy's
launcher alike: start methods, reports and errors through a queue (tensors' bytes and names only), one list of
failure rules (which role failed first, which only lost a peer), the user's own errors re-raised with their type."""
from __future__ import annotations

import importlib
import io
import os
import socket
import sys
from typing import Any

import torch
import torch.distributed as dist

from ..errors import PartyProcessError

__all__ = ["START_METHODS", "check_start_method", "resolve_start_method", "main_is_a_file", "SPAWN_HINT",
           "PEER_FAILURES", "is_peer_failure", "USER_BUILTINS", "user_error"]


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(data: bytes) -> Any:
    # produced by our own child process on this machine (results go to the launcher, never to another party)
    return torch.load(io.BytesIO(data), weights_only=False)


def _drain(results, reports: dict, errors: dict, kinds: dict | None = None) -> bool:
    """Move every ``(rank, payload, error)`` waiting in ``results`` into ``reports`` (decoded) or ``errors``;
    True when anything arrived. With ``kinds`` (the strategy's launcher), an error comes as ``(traceback, module,
    class name, message)``: the text goes to ``errors``, the rest to ``kinds``."""
    arrived = False
    while not results.empty():
        rank, payload, error = results.get()
        if kinds is not None and isinstance(error, tuple):  # the strategy's launcher (run_parties keeps its tuples)
            error, kinds[rank] = error[0], error[1:]
        if error is not None:
            errors[rank] = error
        else:
            reports[rank] = _from_bytes(payload)
        arrived = True
    return arrived


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
