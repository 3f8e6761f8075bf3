"""Data locality with parties as processes: only the model owner's process reads the weights, only the client's
reads the data.

Lightning runs the same steps in every process of a run: it restores ``ckpt_path`` in each (``Strategy.load_checkpoint``),
calls the datamodule's ``prepare_data`` (on local rank 0) and ``setup``, and requests the predict dataloader. With
one process per role that would let every compute party and the crypto provider open the owner's checkpoint and
the client's files. Here the other processes get a placeholder checkpoint (nothing is read; the model owner's
process shares the weights, the others learn their shapes only) and a placeholder dataloader (they learn each
batch's shapes from the client's header, see :class:`~lightning_smpc.batches.PlaceholderLoader`).
"""
from __future__ import annotations

import warnings
from typing import Any, Iterator

import lightning
from lightning.pytorch.utilities.model_helpers import is_overridden

__all__ = ["placeholder_checkpoint", "is_placeholder", "keep_data_with_client", "NotHere"]

_PLACEHOLDER = "lightning_smpc: the model owner's process holds this checkpoint"


def placeholder_checkpoint() -> dict:
    """What a process other than the model owner's "loads" for ``ckpt_path``: no weights, nothing read."""
    return {"pytorch-lightning_version": lightning.__version__, "state_dict": {}, _PLACEHOLDER: True}


def is_placeholder(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and checkpoint.get(_PLACEHOLDER) is True


class NotHere:
    """The dataloader of a process that does not hold the client's data: iterates nothing (the strategy replaces
    it with the batches announced by the client's process)."""

    def __iter__(self) -> Iterator:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "NotHere()  # the client's data is read in the client's process only"


def _skip(*args: Any, **kwargs: Any) -> None:
    return None


def keep_data_with_client(trainer: Any, is_client: bool) -> None:
    """Called once every process knows its role, before Lightning's ``prepare_data``/``setup``/dataloader steps.

    The client's process runs the datamodule's and the model's ``prepare_data`` itself (Lightning would run them on
    local rank 0 only, which is another role's process when ``predict`` spawns the roles); every other process
    skips them, the datamodule's ``setup`` and the predict dataloader (a datamodule's, the model's or a loader
    passed in). The model's own ``setup`` runs everywhere (it may build layers): a warning says so when the model
    is its own data source."""
    datamodule = getattr(trainer, "datamodule", None)
    module = getattr(trainer, "lightning_module", None)
    preparers = [m for m in (datamodule, module) if m is not None]  # prepare_data is for data (downloads) only
    if is_client:
        for m in preparers:
            m.prepare_data()
            m.prepare_data = _skip  # done: Lightning's own call (on local rank 0) must not repeat it
        return
    for m in preparers:
        m.prepare_data = _skip
    if datamodule is not None:
        datamodule.setup = _skip
    source = trainer.predict_loop._data_source
    if module is not None and source.instance is module and is_overridden("setup", module):
        warnings.warn(
            f"{type(module).__name__} defines its own predict_dataloader and setup: with parties as processes its "
            "setup runs in every role's process (it may build the model), so data read there is read by every role. "
            "Read the data in predict_dataloader, or in a LightningDataModule (run in the client's process only).",
            stacklevel=2)
    # Lightning's predict loop asks its data source (a datamodule, the model's hook or the loader passed in) for
    # the dataloader; a plain object as the source is returned as the dataloader itself.
    if source.instance is not None and source.is_defined():
        source.instance, source.name = NotHere(), "predict_dataloader"


def first_batch(trainer: Any) -> Any:
    """The predict loader's first batch, read in this process (the pre-flight of ``preflight=True``)."""
    source = trainer.predict_loop._data_source
    loader = source.dataloader() if source.instance is not None else None
    if loader is None:
        return None
    return next(iter(loader), None)
