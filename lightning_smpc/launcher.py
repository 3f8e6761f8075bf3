"""Starts one process per role (compute parties + crypto provider) for ``SecurePredictStrategy(runtime="distributed")``.

Lightning's ``_MultiProcessingLauncher`` returns the results of process 0 only and forbids returning predictions;
the roles here differ (the client's process holds the revealed labels, the model owner's the revealed metrics),
so this launcher collects a small report from EVERY process (as ``torch.save`` bytes, which Lightning also uses
"to avoid issues with memory sharing") and hands it to the strategy in the main process. A process that fails
ends the run: the others are terminated (no orphans) and the error names the role that failed.
"""
from __future__ import annotations

import copy
import os
import time
import traceback
from typing import Any, Callable

import torch
import torch.multiprocessing as mp
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies.launchers.launcher import _Launcher
from lightning.pytorch.strategies.launchers.multiprocessing import _GlobalStateSnapshot
from lightning.pytorch.trainer.states import TrainerStatus
from torch import nn

from .mpc.errors import PartyProcessError
from .mpc.process.supervisor import (SPAWN_HINT, _abort, _drain, _stop, _to_bytes, is_peer_failure, resolve_start_method,
                                     user_error)
from .validate import validate_module

__all__ = ["PartyLauncher", "PartyProcessError", "resolve_start_method"]

# The crypto provider's process runs at this lower CPU priority when it shares the machine with the parties: its
# work is offline (the next batch's material), and should take the cores only when the parties wait.
DEALER_NICENESS = 10

class PartyLauncher(_Launcher):
    """Starts ``strategy.num_processes`` processes, one per role, on this machine (``strategy.start_method``)."""

    def __init__(self, strategy) -> None:
        self._strategy = strategy
        self.procs: list = []

    @property
    def is_interactive_compatible(self) -> bool:
        """In a notebook the roles are forked (as Lightning's ``ddp_notebook``), where forking is possible."""
        return resolve_start_method(self._strategy.start_method, self._strategy.num_processes) == "fork"

    def launch(self, function: Callable, *args: Any, trainer=None, **kwargs: Any) -> Any:
        strategy = self._strategy
        if getattr(mp.current_process(), "_inheriting", False):  # a spawned role re-importing a script without guard
            raise RuntimeError(f"A role's process is re-running the script that started it. {SPAWN_HINT}")
        model = next((a for a in args if isinstance(a, nn.Module)), None)
        if model is not None:  # once, here, before any process starts (each role checks again at its setup)
            validate_module(model)
            if strategy.preflight is not None:  # your process holds the model and the data: before any role starts
                checked, first = _preflight_inputs(model, args, want_batch=strategy.preflight is True)
                strategy.run_preflight(checked, first)
        os.environ["MASTER_PORT"] = str(strategy.cluster_environment.main_port)
        world = strategy.num_processes
        method = self._method = resolve_start_method(strategy.start_method, world)
        ctx = mp.get_context(method)
        results = ctx.SimpleQueue()
        state = _GlobalStateSnapshot.capture()
        self.procs = [
            ctx.Process(target=_entry, args=(rank, world, trainer, function, args, kwargs, results, state, method),
                        daemon=False)
            for rank in range(world)
        ]
        for p in self.procs:
            p.start()
        try:
            reports = self._collect(results, world, strategy.timeout + 30)
        except BaseException:
            _stop(self.procs)  # a failed run: the others were given their settling time in _collect
            raise
        for p in self.procs:  # every role reported; each exits right after
            p.join(timeout=5)
        _stop(self.procs)
        strategy._receive_reports(reports)
        if trainer is not None:
            strategy.log_results(trainer.logger)
        if trainer is not None:
            trainer.state.status = TrainerStatus.FINISHED
        return strategy._predictions_from(reports)

    def _collect(self, results, world: int, deadline_s: float) -> dict[int, dict]:
        reports: dict[int, dict] = {}
        errors: dict[int, str] = {}
        self._kinds: dict[int, tuple] = {}
        last_news = time.monotonic()
        while len(reports) < world:
            if _drain(results, reports, errors, self._kinds):
                last_news = time.monotonic()
            silent = [r for r, p in enumerate(self.procs) if p.exitcode is not None and r not in reports and r not in errors]
            if errors or silent:
                self._settle(results, reports, errors)
                failure = PartyProcessError(self._failure(reports, errors))
                user_error = self._user_error(errors)
                if user_error is not None:
                    raise user_error from failure
                raise failure
            if time.monotonic() - last_news > deadline_s:
                missing = sorted(set(range(world)) - set(reports))
                raise PartyProcessError(f"No result from {[self._strategy.role_name(r) for r in missing]} within {deadline_s:.0f} s.")
            time.sleep(0.02)
        return reports

    def _user_error(self, errors: dict) -> BaseException | None:
        """The failing role's own error again, with its type (``except UnsupportedOpError`` works as with the
        simulated runtime) and the role named, when it is one of this package's errors or a plain value/type/key
        error; None for anything else (a crash, a peer's failure), which stays a :class:`PartyProcessError`."""
        own = [r for r, e in errors.items() if not is_peer_failure(e) and r in self._kinds]
        if not own:
            return None
        r = own[0]
        module, qualname, message = self._kinds[r]
        return user_error(module, qualname, message, f"{self._strategy.role_name(r)} (rank {r})")

    def _settle(self, results, reports: dict, errors: dict, wait_s: float = 3.0) -> None:
        """After a first failure, give the other processes a moment to exit or report theirs (to find the cause)."""
        t_end = time.monotonic() + wait_s
        while time.monotonic() < t_end and any(p.exitcode is None for p in self.procs):
            _drain(results, {}, errors, self._kinds)  # only the errors matter now
            time.sleep(0.05)
        _drain(results, {}, errors, self._kinds)

    def _failure(self, reports: dict, errors: dict) -> str:
        """Name the role that caused the failure: one that died without a word first, else one whose error was
        not a peer's broken connection or timeout (those follow from the first failure), else the first error."""
        name = self._strategy.role_name
        died = [r for r, p in enumerate(self.procs) if p.exitcode not in (None, 0) and r not in errors and r not in reports]
        own = [r for r, e in errors.items() if not is_peer_failure(e)]
        hung = [r for r, p in enumerate(self.procs) if p.exitcode is None and r not in errors and r not in reports]
        if died:
            r = died[0]
            head = f"{name(r)} (rank {r}) died (exit code {self.procs[r].exitcode}) during the run"
            if getattr(self, "_method", None) == "spawn":
                head += f" without a report. {SPAWN_HINT}"
        elif hung and not own:
            r = hung[0]
            head = (f"{name(r)} (rank {r}) stopped answering: the others timed out waiting for it "
                    f"(timeout {self._strategy.timeout:g} s), and it was still running")
        else:
            own = [r for r, e in errors.items() if not is_peer_failure(e)]
            r = (own or sorted(errors))[0]
            head = f"{name(r)} (rank {r}) failed:\n{errors[r]}"
        others = [f"  {name(k)} (rank {k}): {e.strip().splitlines()[-1]}" for k, e in sorted(errors.items()) if k != r]
        tail = ("\nthen, as a consequence:\n" + "\n".join(others)) if others else ""
        return head + tail + "\nThe other processes were stopped."

    def __getstate__(self) -> dict:  # the trainer (with this launcher) is pickled into every child process
        state = self.__dict__.copy()
        state["procs"] = []
        return state

    def kill(self, signum) -> None:
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)


def _preflight_inputs(model: nn.Module, args: tuple, want_batch: bool) -> tuple:
    """``(model with the weights the run will use, first predict batch)`` from ``Trainer.predict``'s arguments
    ``(model, dataloaders, datamodule, return_predictions, ckpt_path, ...)``, in your process (it holds both)."""
    from lightning.pytorch import LightningDataModule

    loader, datamodule = (list(args) + [None] * 5)[1:3]
    ckpt_path = args[4] if len(args) > 4 else None
    if isinstance(loader, LightningDataModule):
        loader, datamodule = None, loader
    if ckpt_path:  # the roles restore it later; the check must see those weights (on a copy: yours stay as they are)
        model = copy.deepcopy(model)
        model.load_state_dict(torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"])
    if not want_batch:
        return model, None
    if datamodule is not None:
        datamodule.prepare_data()
        datamodule.setup("predict")
        loader = datamodule.predict_dataloader()
    return model, (next(iter(loader), None) if loader is not None else None)


def _entry(rank: int, world: int, trainer, function, args, kwargs, results, state, method: str) -> None:
    """One role's process: run the predict loop, send back this role's report (or its error)."""
    state.restore()
    os.environ["LOCAL_RANK"] = str(rank)
    if rank == world - 1 and hasattr(os, "nice"):  # the crypto provider: offline work, yields to the parties'
        os.nice(DEALER_NICENESS)
    if method == "fork":  # see resolve_start_method: no OpenMP thread pool in a forked child
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    else:
        _set_num_threads_if_needed(num_processes=world)
    try:
        predictions = function(*args, **kwargs)
        strategy = trainer.strategy
        payload = _to_bytes(strategy._report(predictions))
        results.put((rank, payload, None))
    except BaseException as e:  # noqa: BLE001 - every failure must reach the launcher, then this process exits
        kind = (type(e).__module__, type(e).__qualname__, str(e))  # names and text only: nothing is unpickled
        results.put((rank, None, (traceback.format_exc(limit=20),) + kind))
        _abort()
        os._exit(1)
    _abort()
