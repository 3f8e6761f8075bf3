"""Starts one process per role (compute parties + crypto provider) for ``SecurePredictStrategy(runtime="distributed")``.

Lightning's ``_MultiProcessingLauncher`` returns the results of process 0 only and forbids returning predictions;
the roles here differ (the client's process holds the revealed labels, the model owner's the revealed metrics),
so this launcher collects a small report from EVERY process (a :class:`~.reports.PartyReport`, the crypto
provider's a :class:`~.reports.DealerReport`; as ``torch.save`` bytes through a queue between your own processes on
this machine, which Lightning also uses "to avoid issues with memory sharing") and hands them to the strategy in
the main process. A process that fails
ends the run: the others are terminated (no orphans) and the error names the role that failed.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Callable

import torch
import torch.multiprocessing as mp
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies.launchers.launcher import _Launcher
from lightning.pytorch.strategies.launchers.multiprocessing import _GlobalStateSnapshot
from lightning.pytorch.trainer.states import TrainerStatus
from torch import nn

from . import party_runtime
from .mpc.errors import PartyProcessError
from .mpc.process.supervisor import SPAWN_HINT, Supervisor, _abort, _to_bytes, error_report, resolve_start_method
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
                checked, first = _preflight_inputs(model, args, want_batch=strategy.preflight is True,
                                                  checkpoint_io=strategy.checkpoint_io)
                strategy.run_preflight(checked, first)
        os.environ["MASTER_PORT"] = str(strategy.cluster_environment.main_port)
        world = strategy.num_processes
        method = resolve_start_method(strategy.start_method, world)
        state = _GlobalStateSnapshot.capture()
        supervisor = Supervisor([strategy.role_name(r) for r in range(world)], method, _entry,
                                lambda r: (world, trainer, function, args, kwargs, state, method), timeout=strategy.timeout)
        self.procs, self._pid = supervisor.procs, os.getpid()
        reports = supervisor.run()  # every role reported (or the run's error was raised, every process stopped)
        strategy._receive_reports(reports)
        if trainer is not None:
            strategy.log_results(trainer.logger)
            trainer.state.status = TrainerStatus.FINISHED
        return strategy._predictions_from(reports)

    def __getstate__(self) -> dict:  # the trainer (with this launcher) is pickled into every child process
        state = self.__dict__.copy()
        state["procs"] = []
        return state

    def kill(self, signum) -> None:
        if getattr(self, "_pid", None) != os.getpid():  # a role's process (a copy of this launcher): not its children
            return
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)


def _preflight_inputs(model: nn.Module, args: tuple, want_batch: bool, checkpoint_io) -> tuple:
    """``(model with the weights the run will use, first predict batch)`` from ``Trainer.predict``'s arguments
    ``(model, dataloaders, datamodule, return_predictions, ckpt_path, ...)``, in your process (it holds both)."""
    from lightning.pytorch import LightningDataModule

    loader, datamodule = (list(args) + [None] * 5)[1:3]
    ckpt_path = args[4] if len(args) > 4 else None
    if isinstance(loader, LightningDataModule):
        loader, datamodule = None, loader
    if ckpt_path:  # the roles restore it later; the check must see those weights (on a copy: yours stay as they are)
        model = copy.deepcopy(model)
        model.load_state_dict(checkpoint_io.load_checkpoint(ckpt_path)["state_dict"])  # as the owner's role reads it
    if not want_batch:
        return model, None
    if datamodule is not None:
        datamodule.prepare_data()
        datamodule.setup("predict")
        loader = datamodule.predict_dataloader()
    return model, (next(iter(loader), None) if loader is not None else None)


def _entry(rank: int, results, progress, world: int, trainer, function, args, kwargs, state, method: str) -> None:
    """One role's process: run the predict loop, send back this role's report (or its error)."""
    state.restore()
    os.environ["LOCAL_RANK"] = str(rank)
    party_runtime.PROGRESS = progress  # the links say what this role is doing (named in a failure report)
    if rank == world - 1 and hasattr(os, "nice"):  # the crypto provider: offline work, yields to the parties'
        os.nice(DEALER_NICENESS)
    if method == "fork":  # see resolve_start_method: no OpenMP thread pool in a forked child
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    else:
        _set_num_threads_if_needed(num_processes=world)
    try:
        predictions = function(*args, **kwargs)
        payload = _to_bytes(trainer.strategy._report(predictions))
        results.put((rank, payload, None))
    except BaseException as e:  # noqa: BLE001 - every failure must reach the launcher, then this process exits
        results.put((rank, None, error_report(e, progress.value.decode("utf-8", "replace"))))
        _abort()
        os._exit(1)
    _abort()
