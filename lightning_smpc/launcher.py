"""Spawns one process per role (compute parties + crypto provider) for ``SecurePredictStrategy(runtime="distributed")``.

Lightning's ``_MultiProcessingLauncher`` returns the results of process 0 only and forbids returning predictions;
the roles here differ (the client's process holds the revealed labels, the model owner's the revealed metrics),
so this launcher collects a small report from EVERY process (as ``torch.save`` bytes, which Lightning also uses
"to avoid issues with memory sharing") and hands it to the strategy in the main process. A process that fails
ends the run: the others are terminated (no orphans) and the error names the role that failed.
"""
from __future__ import annotations

import io
import os
import queue as queue_mod
import time
import traceback
from typing import Any, Callable

import torch
import torch.multiprocessing as mp
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies.launchers.launcher import _Launcher
from lightning.pytorch.strategies.launchers.multiprocessing import _GlobalStateSnapshot
from lightning.pytorch.trainer.states import TrainerStatus

from .mpc.errors import SmpcError

__all__ = ["PartyLauncher", "PartyFailedError"]


class PartyFailedError(SmpcError, RuntimeError):
    """A party's (or the crypto provider's) process failed or stopped answering; the run was ended."""


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(data: bytes) -> Any:
    # Our own child processes on this machine produced these bytes (not a peer party: nothing here crosses a link)
    return torch.load(io.BytesIO(data), weights_only=False)


class PartyLauncher(_Launcher):
    """Starts ``strategy.num_processes`` processes with the ``spawn`` method, one per role, on this machine."""

    def __init__(self, strategy) -> None:
        self._strategy = strategy
        self.procs: list = []

    @property
    def is_interactive_compatible(self) -> bool:
        return False

    def launch(self, function: Callable, *args: Any, trainer=None, **kwargs: Any) -> Any:
        strategy = self._strategy
        os.environ["MASTER_PORT"] = str(strategy.cluster_environment.main_port)
        ctx = mp.get_context("spawn")
        results = ctx.SimpleQueue()
        state = _GlobalStateSnapshot.capture()
        world = strategy.num_processes
        self.procs = [
            ctx.Process(target=_entry, args=(rank, world, trainer, function, args, kwargs, results, state), daemon=False)
            for rank in range(world)
        ]
        for p in self.procs:
            p.start()
        try:
            reports = self._collect(results, world, strategy.timeout + 30)
        finally:
            self._stop_all()
        strategy._receive_reports(reports)
        if trainer is not None:
            trainer.state.status = TrainerStatus.FINISHED
        return strategy._predictions_from(reports)

    def _collect(self, results, world: int, deadline_s: float) -> dict[int, dict]:
        reports: dict[int, dict] = {}
        last_news = time.monotonic()
        while len(reports) < world:
            if not results.empty():
                rank, payload, error = results.get()
                if error is not None:
                    raise PartyFailedError(f"{self._strategy.role_name(rank)} (rank {rank}) failed:\n{error}")
                reports[rank] = _from_bytes(payload)
                last_news = time.monotonic()
                continue
            dead = [r for r, p in enumerate(self.procs) if r not in reports and p.exitcode is not None]
            if dead:
                time.sleep(0.5)  # its error report may still be in flight
                if not results.empty():
                    continue
                r = dead[0]
                raise PartyFailedError(
                    f"{self._strategy.role_name(r)} (rank {r}) exited with code {self.procs[r].exitcode} without a "
                    "result; the other processes were stopped."
                )
            if time.monotonic() - last_news > deadline_s:
                raise PartyFailedError(f"No result from ranks {sorted(set(range(world)) - set(reports))} within {deadline_s:.0f} s.")
            time.sleep(0.02)
        return reports

    def _stop_all(self) -> None:
        for p in self.procs:
            p.join(timeout=5)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()

    def __getstate__(self) -> dict:  # the trainer (with this launcher) is pickled into every child process
        state = self.__dict__.copy()
        state["procs"] = []
        return state

    def kill(self, signum) -> None:
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)


def _entry(rank: int, world: int, trainer, function, args, kwargs, results, state) -> None:
    """One role's process: run the predict loop, send back this role's report (or its error)."""
    state.restore()
    os.environ["LOCAL_RANK"] = str(rank)
    _set_num_threads_if_needed(num_processes=world)
    try:
        predictions = function(*args, **kwargs)
        strategy = trainer.strategy
        payload = _to_bytes(strategy._report(predictions))
        results.put((rank, payload, None))
    except BaseException:  # noqa: BLE001 - every failure must reach the launcher, then this process exits
        results.put((rank, None, traceback.format_exc(limit=20)))
        _abort_process_group()
        os._exit(1)
    _abort_process_group()


def _abort_process_group() -> None:
    import torch.distributed as dist

    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - the peers see the closed sockets and fail fast
        pass
