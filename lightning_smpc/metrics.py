"""``SecureAccuracy``: multiclass accuracy computed on secret shares, revealed once in ``compute()``."""
from __future__ import annotations

import importlib
from typing import Literal, Optional

import torch
from torchmetrics import Metric

from .mpc import ShareTensor, argmax_onehot

__all__ = ["SecureAccuracy", "secure_accuracy"]

_acc = importlib.import_module("torchmetrics.functional.classification.accuracy")


def _check_args(num_classes: int, average: str) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"Expected argument `num_classes` to be an integer larger than 1, but got {num_classes}.")
    if average not in ("micro", "macro"):
        raise ValueError(f"Expected argument `average` to be one of ('micro', 'macro'), but got {average!r}.")


def _check_inputs(preds, target, num_classes: int) -> None:
    if not isinstance(preds, ShareTensor) or not isinstance(target, ShareTensor):
        raise TypeError(
            "Expected `preds` and `target` to be ShareTensors (secret-shared), but got "
            f"{type(preds).__name__} and {type(target).__name__}. Use torchmetrics.Accuracy for plaintext."
        )
    if preds.dim() != 2 or preds.shape[-1] != num_classes:
        raise ValueError(f"Expected `preds` of shape (N, {num_classes}) (logits), but got {tuple(preds.shape)}.")
    if tuple(target.shape) != tuple(preds.shape):
        raise ValueError(
            f"Expected `target` one-hot of shape {tuple(preds.shape)} (the client one-hot encodes its labels "
            f"before sharing; SecurePredictStrategy does this), but got {tuple(target.shape)}."
        )


def _update_stats(preds: ShareTensor, target: ShareTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shares of per-class (true positives, predicted count, target count); nothing is revealed."""
    pred_onehot = argmax_onehot(preds, dim=-1)
    hits = pred_onehot * target  # Beaver product of two one-hot (0/1) values: scale 0
    return hits.shares.sum(1), pred_onehot.shares.sum(1), target.shares.sum(1)


def _reduce(tp: torch.Tensor, pred_count: torch.Tensor, target_count: torch.Tensor, total: int, average: str) -> torch.Tensor:
    """Exactly torchmetrics' reduction (float32, same helper) on revealed integer statistics."""
    fp, fn = pred_count - tp, target_count - tp
    tn = total - tp - fp - fn
    return _acc._accuracy_reduce(tp, fp, tn, fn, average=average, multidim_average="global")


class SecureAccuracy(Metric):
    r"""Multiclass accuracy over secret-shared logits and one-hot targets (micro or macro).

    Mirrors ``torchmetrics.Accuracy(task="multiclass", num_classes=C, average=...)``:
    :math:`\text{micro} = \frac{1}{N}\sum_i 1[\arg\max_c p_{ic} = y_i]`, macro = mean over present
    classes of per-class recall. Ties in the logits go to the first index, as in torchmetrics.

    As input to ``update``: ``preds`` (ShareTensor ``[N, C]``, logits; a skipped softmax is fine) and
    ``target`` (ShareTensor ``[N, C]``, one-hot, ``frac_bits=0``). States are shares (int64, leading
    party axis) and are revealed only by ``compute()``, to ``reveal_to``: for micro only the number of
    correct predictions (the total is public), for macro the per-class counts. ``forward`` never returns
    a per-batch value.

    Args:
        num_classes: number of classes (> 1).
        average: ``"micro"`` (default) or ``"macro"``.
        reveal_to: who learns the result (an outside receiver; default the model owner).

    Example:
        >>> import torch, warnings
        >>> from lightning_smpc.mpc import Session
        >>> warnings.simplefilter("ignore")
        >>> s = Session(seed=0)
        >>> logits = s.share(torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 4.0]]))
        >>> target = s.share(torch.eye(3)[[0, 1, 1]], frac_bits=0)
        >>> metric = SecureAccuracy(num_classes=3)
        >>> metric.update(logits, target)
        >>> metric.compute()
        tensor(0.6667)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, average: Literal["micro", "macro"] = "micro", reveal_to: str = "model owner", **kwargs) -> None:
        super().__init__(**kwargs)
        _check_args(num_classes, average)
        self.num_classes = num_classes
        self.average = average
        self.reveal_to = reveal_to
        self.name = "accuracy"
        self.session = None
        for state in ("tp", "pred_count", "target_count"):
            self.add_state(state, default=torch.zeros(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: ShareTensor, target: ShareTensor) -> None:  # type: ignore[override]
        _check_inputs(preds, target, self.num_classes)
        if self.session is not None and preds.session is not self.session:
            raise ValueError("SecureAccuracy was updated with values of two different sessions; call reset() between runs.")
        self.session = preds.session
        tp, pc, tc = _update_stats(preds, target)
        if self.tp.numel() == 0:
            zeros = torch.zeros_like(tp)
            self.tp, self.pred_count, self.target_count = zeros.clone(), zeros.clone(), zeros.clone()
        self.tp += tp
        if self.average == "macro":
            self.pred_count += pc
            self.target_count += tc
        self.total += preds.shape[0]

    def reset(self) -> None:
        super().reset()
        self.session = None

    def forward(self, *args, **kwargs) -> None:  # no per-batch value is ever revealed
        self.update(*args, **kwargs)

    def compute(self) -> torch.Tensor:
        if self.session is None:
            return torch.tensor(0.0)
        reveal = self.session.reveal_raw
        total = int(self.total)
        if self.average == "micro":
            correct = reveal(self.tp.sum(1), 0, self.name, to=(), outside=self.reveal_to).round().to(torch.int64)
            self.correct = int(correct)
            return _reduce(correct.reshape(1), correct.reshape(1), torch.full((1,), total), total, "micro")
        tp = reveal(self.tp, 0, f"{self.name}.true_positives", to=(), outside=self.reveal_to).round().to(torch.int64)
        pc = reveal(self.pred_count, 0, f"{self.name}.predicted_per_class", to=(), outside=self.reveal_to).round().to(torch.int64)
        tc = reveal(self.target_count, 0, f"{self.name}.targets_per_class", to=(), outside=self.reveal_to).round().to(torch.int64)
        self.correct = int(tp.sum())
        return _reduce(tp, pc, tc, total, "macro")


def secure_accuracy(preds: ShareTensor, target: ShareTensor, num_classes: int, average: Literal["micro", "macro"] = "micro",
                    reveal_to: str = "model owner") -> torch.Tensor:
    """Functional form of :class:`SecureAccuracy` (one batch, revealed at once)."""
    metric = SecureAccuracy(num_classes, average, reveal_to)
    metric.update(preds, target)
    return metric.compute()
