"""Command-line entry point ``lightning-smpc`` (a :class:`~lightning.pytorch.cli.LightningCLI`).

Train in plaintext, then run private inference with the secure strategy on the checkpoint::

    lightning-smpc fit --config configs/mnist_mlp.yaml --data.data_dir ../shared/data
    lightning-smpc predict --config configs/mnist_mlp.yaml --config configs/secure_predict.yaml \\
        --data.data_dir ../shared/data --ckpt_path lightning_logs/version_0/checkpoints/<name>.ckpt

The subcommands are LightningCLI's ``fit``, ``validate``, ``test`` and ``predict``. ``fit`` (and the other
non-predict subcommands) need an ordinary strategy; ``SecurePredictStrategy`` refuses anything but
``predict``. After ``predict`` with a secure strategy, :func:`format_secure_report` is printed: what was
revealed to whom, the revealed metrics and each party's communication.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

# Imported before any Trainer is built so that `strategy: secure_predict` and the short class names
# resolve (docs: shared notes, "CLI pitfalls" 1); the package registers its strategies on import.
import lightning_smpc  # noqa: F401
from lightning_smpc.mnist import MNISTClassifier, MNISTDataModule

__all__ = ["SmpcCLI", "build_cli", "format_secure_report", "main"]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _fmt_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.item():.4f}" if value.numel() == 1 else str(value.tolist())
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_secure_report(strategy: Any) -> str:
    """Render what a secure strategy revealed and what it cost, one item per line.

    Reads, when present: ``strategy.reveal_ledger`` (items printed with ``str``),
    ``strategy.revealed_metrics`` (``{name: Tensor}``), ``strategy.revealed_counts``
    (``{name: (correct, total)}``) and ``strategy.comm_stats()``
    (``{party: {"rounds", "messages", "bytes_sent", "bytes_received"}}``).

    Example::

        >>> from types import SimpleNamespace
        >>> s = SimpleNamespace(reveal_ledger=["accuracy (scalar) to model owner"],
        ...     revealed_metrics={"accuracy": torch.tensor(0.9781)}, revealed_counts={"accuracy": (9781, 10000)},
        ...     comm_stats=lambda: {"alice": {"rounds": 12, "messages": 24, "bytes_sent": 2048,
        ...                                   "bytes_received": 2048}})
        >>> print(format_secure_report(s))
        revealed:
          accuracy (scalar) to model owner
        accuracy: 0.9781 (9781/10000 correct)
        communication:
          alice: 12 rounds, 24 messages, 2.00 KiB sent, 2.00 KiB received
    """
    lines: list[str] = []
    ledger = list(getattr(strategy, "reveal_ledger", None) or [])
    lines.append("revealed:" if ledger else "revealed: nothing")
    lines += [f"  {item}" for item in ledger]
    counts: dict[str, Any] = dict(getattr(strategy, "revealed_counts", None) or {})
    for name, value in dict(getattr(strategy, "revealed_metrics", None) or {}).items():
        line = f"{name}: {_fmt_value(value)}"
        if name in counts:
            correct, total = counts[name]
            line += f" ({int(correct)}/{int(total)} correct)"
        lines.append(line)
    comm_stats = getattr(strategy, "comm_stats", None)
    stats: dict[str, dict[str, int]] = comm_stats() if callable(comm_stats) else {}
    if stats:
        lines.append("communication:")
        for party, s in stats.items():
            lines.append(
                f"  {party}: {s.get('rounds', 0)} rounds, {s.get('messages', 0)} messages, "
                f"{_fmt_bytes(s.get('bytes_sent', 0))} sent, {_fmt_bytes(s.get('bytes_received', 0))} received"
            )
    return "\n".join(lines)


class SmpcCLI(LightningCLI):
    """LightningCLI whose ``predict`` prints the secure strategy's report afterwards.

    Any LightningModule / LightningDataModule can be given with ``class_path``; the MNIST pair of
    :mod:`lightning_smpc.mnist` is the default.
    """

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Default ``model``/``data`` to the MNIST classifier and data module (overridable by class_path)."""
        parser.set_defaults(
            {
                "model": {"class_path": f"{MNISTClassifier.__module__}.{MNISTClassifier.__qualname__}"},
                "data": {"class_path": f"{MNISTDataModule.__module__}.{MNISTDataModule.__qualname__}"},
            }
        )

    def after_fit(self) -> None:
        """Say where the trained model was saved: the checkpoint to pass to ``predict --ckpt_path`` (or to the roles
        recipe's ``--ckpt``)."""
        callback = getattr(self.trainer, "checkpoint_callback", None)
        path = getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "")
        if path:
            print(f"trained model saved to {path}\n  secure predict: lightning-smpc predict --config <model/data config> "
                  f"--config configs/secure_predict.yaml --ckpt_path {path}")
        else:
            print("no checkpoint was saved (checkpointing is off): pass --trainer.enable_checkpointing true")

    def after_predict(self) -> None:
        """Print :func:`format_secure_report` when the trainer ran a secure strategy (duck-typed)."""
        strategy = self.trainer.strategy
        if hasattr(strategy, "revealed_metrics"):
            print(format_secure_report(strategy))
            report = strategy.cost_report() if hasattr(strategy, "cost_report") else None
            if report is not None and report.rows:
                print("cost by layer (top 8):\n" + report.table(top=8))


def build_cli(args: Optional[Union[list[str], dict[str, Any]]] = None, run: bool = True) -> SmpcCLI:
    """Build (and with ``run=True`` run) the :class:`SmpcCLI`; ``args=None`` reads ``sys.argv``.

    Example::

        >>> cli = build_cli(["fit", "--config", "configs/mnist_mlp.yaml", "--trainer.max_steps", "5"])  # doctest: +SKIP
        >>> cli.trainer.global_step                                                                    # doctest: +SKIP
        5
    """
    return SmpcCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: Optional[Union[list[str], dict[str, Any]]] = None) -> None:
    """Console-script entry ``lightning-smpc``: run the CLI, return ``None`` on success (no ``sys.exit``).

    Example::

        >>> main(["predict", "--config", "configs/mnist_mlp.yaml", "--config", "configs/secure_predict.yaml",
        ...       "--ckpt_path", "model.ckpt"])  # doctest: +SKIP
    """
    build_cli(args)
