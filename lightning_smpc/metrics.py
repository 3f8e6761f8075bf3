"""``SecureAccuracy``: multiclass accuracy computed on secret shares, revealed once in ``compute()``."""
from __future__ import annotations

import importlib
from typing import Any, Literal, Optional

import torch
from torchmetrics import Metric

from .mpc import ShareTensor, argmax_onehot
from .mpc.division import divide

__all__ = ["SecureAccuracy", "secure_accuracy"]

_acc = importlib.import_module("torchmetrics.functional.classification.accuracy")


def _check_args(num_classes: int, average: str, reveal_per_class: bool = False) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"Expected argument `num_classes` to be an integer larger than 1, but got {num_classes}.")
    if average not in ("micro", "macro"):
        raise ValueError(f"Expected argument `average` to be one of ('micro', 'macro'), but got {average!r}.")
    if not isinstance(reveal_per_class, bool):
        raise ValueError(f"Expected argument `reveal_per_class` to be a bool, but got {reveal_per_class!r}.")
    if reveal_per_class and average != "macro":
        raise ValueError(
            "`reveal_per_class=True` applies to average='macro' only (micro reveals just the correct count)."
        )


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


def _macro_on_shares(session, tp: torch.Tensor, pred_count: torch.Tensor, target_count: torch.Tensor) -> ShareTensor:
    r"""Shares of torchmetrics' macro accuracy, rounded down to ``precision_bits`` (``f``) fractional bits.

    torchmetrics (``_accuracy_reduce`` / ``_adjust_weights_safe_divide``): recall ``tp_c / tc_c`` per class
    (0 when ``tc_c = 0``), averaged over the classes with ``tp + fp + fn = tc_c + pc_c - tp_c > 0``, i.e.
    ``tc_c + pc_c >= 1``: a class absent from the targets but predicted counts, with recall 0.

    On shares: one comparison of ``2C`` elements gives ``present_c = [tc_c >= 1]`` and
    ``included_c = [tc_c + pc_c >= 1]``; ``q_c = floor(tp_c 2^f / d_c)`` with ``d_c = tc_c + 1 - present_c``
    (``tc_c``, or 1 for an absent class, whose ``tp_c = 0``), ``f + 1`` bits (``tp_c <= tc_c``); then
    ``floor(S / K)`` with ``S = sum_c q_c``, ``K = sum_c included_c`` (``S <= K 2^f``: ``f + 1`` bits), read
    at ``f`` fractional bits. Error: with ``M`` the exact value, ``S > K M 2^f - K``, so the result is
    ``floor(M 2^f) / 2^f`` or one step ``2^-f`` below it: ``0 <= M - result < 2^(1 - f)``.
    """
    f = session.precision_bits
    n_cls = tp.shape[-1]
    tp_s, pc_s, tc_s = (session.from_shares(v, 0) for v in (tp, pred_count, target_count))
    flags = torch.cat([tc_s, tc_s + pc_s]) >= 1
    present, included = flags[:n_cls], flags[n_cls:]
    recall = divide(tp_s, tc_s + 1 - present, bits=f + 1, frac_bits=f)  # [C], integers q_c at f fractional bits
    total_recall = session.from_shares(recall.shares, 0).sum()
    mean = divide(total_recall, included.sum(), bits=f + 1)
    return session.from_shares(mean.shares, f)


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
    party axis) and are revealed only by ``compute()``, to ``reveal_to``, and named in the session's ledger:

    * micro: only the number of correct predictions (the total is public), as ``"accuracy"``; the count is
      kept in ``correct``.
    * macro (default): only the scalar, as ``"accuracy"``. The per-class recalls and their mean over the
      classes torchmetrics averages over (those with ``tp + fp + fn > 0``) are computed on shares with
      restoring long division (:func:`lightning_smpc.mpc.division.divide`), so the client's label histogram
      stays hidden. The result is the exact macro accuracy ``M`` rounded down to a multiple of ``2**-f``
      (``f`` = the session's ``precision_bits``), or one step below: ``0 <= M - result < 2**(1 - f)``
      (``3.1e-5`` at ``f = 16``). Cost for ``C`` classes: one comparison of ``2C`` elements, a 17-bit
      division of ``C`` elements and a 17-bit division of one element (``f = 16``): 5 + 101 + 101 = 207 rounds
      plus the reveal; for ``C = 10``, 3 876 bytes sent by each party with 2 parties, 7 752 with 3 (plus 8
      each for the reveal). With ``compare_digit_bits=8``: 172 rounds, 3 500 / 7 000 bytes.
      Needs ``N < 2**compare_bits`` and ``C * 2**f < 2**compare_bits`` (``C < 65536`` with the defaults).
    * macro with ``reveal_per_class=True``: the per-class true positives, predicted counts and target
      counts (``"accuracy.true_positives"``, ``"accuracy.predicted_per_class"``,
      ``"accuracy.targets_per_class"``), and the value is torchmetrics' float32 reduction of them, exactly;
      ``correct`` is set. This reveals the label histogram: opt in only where that is acceptable.

    ``forward`` never returns a per-batch value.

    Args:
        num_classes: number of classes (> 1).
        average: ``"micro"`` (default) or ``"macro"``.
        reveal_to: who learns the result: an outside receiver (default the model owner) or, with parties as
            processes, a compute party's name (SecurePredictStrategy sets its ``model_owner_party``).
        reveal_per_class: macro only: reveal the per-class counts instead of computing the mean on shares.

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
        >>> macro = SecureAccuracy(num_classes=3, average="macro")
        >>> macro.update(logits, target)
        >>> macro.compute()  # mean of the recalls 1, 1/2 (class 2: predicted, never a target, recall 0)
        tensor(0.5000)
        >>> [str(r) for r in s.ledger]
        ['accuracy (scalar) to model owner', 'accuracy (scalar) to model owner']
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, average: Literal["micro", "macro"] = "micro", reveal_to: str = "model owner",
                 reveal_per_class: bool = False, **kwargs: Any) -> None:
        if kwargs.get("dist_sync_on_step"):
            raise ValueError("SecureAccuracy states are secret shares: torchmetrics' distributed sync would hand one "
                             "party's shares to the others. Leave dist_sync_on_step off.")
        # Parties as processes: each process holds only its own party's share; torchmetrics must never gather them
        # (its default sync_on_compute=True is overridden, and sync() below is a no-op).
        kwargs["sync_on_compute"] = False
        super().__init__(**kwargs)
        _check_args(num_classes, average, reveal_per_class)
        self.num_classes = num_classes
        self.average = average
        self.reveal_to = reveal_to
        self.reveal_per_class = reveal_per_class
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

    def sync(self, *args: Any, **kwargs: Any) -> None:  # never gather shares across processes (see __init__)
        return None

    def forward(self, *args, **kwargs) -> None:  # no per-batch value is ever revealed
        self.update(*args, **kwargs)

    def _reveal(self, shares: torch.Tensor, frac_bits: int, name: str) -> Optional[torch.Tensor]:
        """Reveal to ``reveal_to`` (None in a party's process that is not the receiver)."""
        return self.session.reveal_for(ShareTensor(shares, self.session, frac_bits), self.reveal_to, name)

    def compute(self) -> Optional[torch.Tensor]:
        """The accuracy, revealed to ``reveal_to`` (None in a party's process that is not the receiver)."""
        if self.session is None:
            return torch.tensor(0.0)
        reveal = self._reveal
        total = int(self.total)
        if self.average == "micro":
            correct = reveal(self.tp.sum(1), 0, self.name)
            if correct is None:
                return None
            correct = correct.round().to(torch.int64)
            self.correct = int(correct)
            return _reduce(correct.reshape(1), correct.reshape(1), torch.full((1,), total), total, "micro")
        if not self.reveal_per_class:
            if total == 0:  # public: torchmetrics' safe division gives 0
                return torch.tensor(0.0)
            sess, f = self.session, self.session.precision_bits
            if total >= 1 << sess.compare_bits or self.num_classes << f >= 1 << sess.compare_bits:
                raise ValueError(
                    f"Macro accuracy on shares needs N < 2**compare_bits and num_classes * 2**precision_bits < "
                    f"2**compare_bits, but got N={total}, num_classes={self.num_classes}, precision_bits={f}, "
                    f"compare_bits={sess.compare_bits}. Use a Session with larger compare_bits."
                )
            mean = _macro_on_shares(sess, self.tp, self.pred_count, self.target_count)
            value = reveal(mean.shares, f, self.name)
            return None if value is None else value.to(torch.float32)
        tp = reveal(self.tp, 0, f"{self.name}.true_positives")
        pc = reveal(self.pred_count, 0, f"{self.name}.predicted_per_class")
        tc = reveal(self.target_count, 0, f"{self.name}.targets_per_class")
        if tp is None:
            return None
        tp, pc, tc = (v.round().to(torch.int64) for v in (tp, pc, tc))
        self.correct = int(tp.sum())
        return _reduce(tp, pc, tc, total, "macro")


def accuracy_from_revealed(metric: SecureAccuracy, revealed: dict[str, torch.Tensor],
                           total: int) -> Optional[torch.Tensor]:
    """What :meth:`SecureAccuracy.compute` returns, in the process of a receiver outside the compute parties (the
    model owner's server): from the values revealed to it under the metric's name and the number of examples
    (public). None when nothing was revealed (no batch carried targets)."""
    name = metric.name
    if metric.average == "micro" or metric.reveal_per_class:
        if metric.average == "micro":
            if name not in revealed:
                return None
            correct = revealed[name].round().to(torch.int64)
            metric.correct = int(correct)
            return _reduce(correct.reshape(1), correct.reshape(1), torch.full((1,), total), total, "micro")
        keys = [f"{name}.true_positives", f"{name}.predicted_per_class", f"{name}.targets_per_class"]
        if not all(k in revealed for k in keys):
            return None
        tp, pc, tc = (revealed[k].round().to(torch.int64) for k in keys)
        metric.correct = int(tp.sum())
        return _reduce(tp, pc, tc, total, "macro")
    return revealed[name].to(torch.float32) if name in revealed else None


def secure_accuracy(preds: ShareTensor, target: ShareTensor, num_classes: int, average: Literal["micro", "macro"] = "micro",
                    reveal_to: str = "model owner", reveal_per_class: bool = False) -> torch.Tensor:
    """Functional form of :class:`SecureAccuracy` (one batch, revealed at once; the same arguments)."""
    metric = SecureAccuracy(num_classes, average, reveal_to, reveal_per_class)
    metric.update(preds, target)
    return metric.compute()
