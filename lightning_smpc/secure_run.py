"""One process's part of a secure predict run: what :class:`~lightning_smpc.SecurePredictStrategy`'s hooks delegate to.

In the simulated runtime the one process plays every party; with parties as processes it plays one compute party
(the crypto provider's process only serves the dealer, see :mod:`lightning_smpc.party_runtime`). A run shares the
model owner's weights once (BatchNorms folded first), then for each batch: the client's inputs and one-hot targets
are shared, the user's forward runs on the shares, the metrics are updated on shares, and only what ``reveal``
names is released. At the end, each metric is revealed to the model owner.
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

import torch
from lightning.pytorch import LightningModule
from torchmetrics import Metric

from . import folding, party_runtime
from .batches import ClientLoader, PlaceholderBatch, PlaceholderInput, PlaceholderLoader, is_integer_input, split_batch
from .forward import run_forward, shared_weights
from .model_shares import load_model_shares
from .mpc import Session, ShareTensor
from .mpc.session import RevealRecord
from .preprocessing import PreprocessSchedule, StreamSchedule

__all__ = ["SecureRun", "num_classes", "check_targets", "check_inputs", "onehot_targets", "wire_metrics"]


class SecureRun:
    """This process's session, shared weights, batches, metrics and releases for one ``predict`` call.

    ``config`` is the strategy (its arguments: parties, precision, reveal, metrics, ...); ``world`` this process's
    handle on the distributed runtime (None: simulated); ``device`` where the simulated shares live.
    """

    def __init__(self, config, model: LightningModule, world: Optional[party_runtime.World], device: torch.device,
                 t_start: Optional[float] = None) -> None:
        t_start = time.perf_counter() if t_start is None else t_start  # when the strategy's setup began
        self.config, self.world, self.device = config, world, device
        self.distributed = world is not None
        self.private = getattr(config, "private", "both")
        if self.distributed:
            self.session = party_runtime.party_session(
                world, config.crypto_provider, ring=config.ring)
            self.schedule = StreamSchedule(self.session, config.preprocess, config.dealer_overlaps)
        else:
            self.session = Session(config.parties, config.crypto_provider, seed=config.seed, device=device,
                                   ring=config.ring)
            self.schedule = PreprocessSchedule(self.session, config.preprocess, config.preprocess_ahead)
        # who owns the weights and the data: a compute party with parties as processes, else an outside name
        self.owner = config.model_owner_party if self.distributed else config.model_owner
        self.client = config.client_party if self.distributed else config.client
        self.metrics: dict[str, Metric] = config.metrics
        wire_metrics(self.metrics, self.owner, device)
        self.loader: Optional[Union[ClientLoader, PlaceholderLoader]] = None
        self.targets: Optional[ShareTensor] = None
        self.batch_seconds: list[float] = []  # the online phase of each batch
        self.examples = 0  # shared so far (public: the batch headers say it)
        t0 = time.perf_counter()
        self.session.comm.enter_scope("(share weights)")  # the cost profile's clock starts here
        with torch.no_grad():  # BatchNorms folded on the owner's plaintext weights, before sharing
            params, self.batchnorm_view = folding.secure_view(model, shared_weights(model))
            if getattr(config, "model_shares", None) is not None:  # kept shares: the model gives names and shapes
                self.shared_params = self._kept_weights(model, params)
            elif self.private == "data":  # the model is public to the compute parties: products with it are local
                self.shared_params = self._public_weights(params)
            else:
                self.shared_params = {name: self._share_weight(t) for name, t in params}
        self.timings = {"share_weights_seconds": time.perf_counter() - t0}
        if self.distributed:
            self.timings["start_seconds"] = t0 - t_start

    @property
    def is_client(self) -> bool:
        return not self.distributed or self.session.local_party == self.client

    def _share_weight(self, t: torch.Tensor) -> ShareTensor:
        if not self.distributed:
            return self.session.share(t.detach(), owner=self.owner)
        mine = self.session.local_party == self.owner  # only the model owner's process reads weights
        return self.session.share(t.detach() if mine else None, owner=self.owner, shape=tuple(t.shape))

    def _kept_weights(self, model: LightningModule, params: list) -> dict[str, ShareTensor]:
        """``model_shares``: this process's stored shares (all parties' rows when simulated), checked against the run,
        each given a fresh opened mask; the model's own weights are not used."""
        cfg, sess = self.config, self.session
        roster, identity = cfg.share_file_keys(sess.local_party)
        header, rows = load_model_shares(cfg.model_shares, cfg.parties, model, cfg.ring, local_party=sess.local_party,
                                         owner=cfg.model_owner_party, roster=roster, identity=identity,
                                         allow_test_seed=cfg.seed is not None,
                                         sharing_id=getattr(cfg, "model_shares_id", None), folded=params)
        # bound into the next messages: parties whose files come from different sharings fail at the masked opening
        # (before anything is revealed), naming the sharing
        sess.comm.note_public("model shares of sharing", detail=header.sharing_id)
        return dict(zip(rows, sess.adopt_shares(list(rows.values()), header.frac_bits)))

    def _public_weights(self, params: list) -> dict[str, torch.Tensor]:
        """``private="data"``: the model owner's (folded) weights in clear at every compute party (sent by the owner's
        process over the authenticated links with parties as processes); recorded in the ledger."""
        sess = self.session
        if self.distributed:
            owner = self.world.links.index(self.owner)
            tensors = [t.detach().contiguous() for _, t in params]
            received = party_runtime.publish_weights(self.world, owner, tensors)
            weights = {name: t for (name, _), t in zip(params, received)}
        else:
            weights = {name: t.detach().to(self.device) for name, t in params}
        count = sum(t.numel() for t in weights.values())
        sess.comm.account_clear(self.owner, sum(t.numel() * t.element_size() for t in weights.values()), "public_weights")
        sess.ledger.append(RevealRecord("model weights (private='data': public to the compute parties)", (count,),
                                        tuple(sess.parties)))
        return weights

    # ------------------------------------------------------------------ batches
    def wrap_loader(self, dataloader: Any) -> Any:
        """Parties as processes: the client's process reads the data and announces each batch's shapes; the
        others iterate placeholders of those shapes."""
        if not self.distributed:
            return dataloader
        cfg = self.config
        if self.is_client:
            self.loader = ClientLoader(dataloader, lambda data: party_runtime.announce(self.world, data),
                                       cfg.input_key, cfg.target_key, read_ahead=cfg.preprocess,
                                       public=cfg.public_inputs,
                                       send_public=lambda t: party_runtime.announce_tensor(self.world, t),
                                       inputs_public=self.private == "model")
        else:
            client_rank = self.world.links.index(self.client)
            self.loader = PlaceholderLoader(
                lambda: party_runtime.receive(self.world, client_rank),
                lambda shape, dtype: party_runtime.receive_tensor(self.world, client_rank, shape, dtype))
        return self.loader

    def share_batch(self, batch: Any) -> Any:
        """The batch with its inputs (and one-hot targets, when there are metrics) replaced by shares."""
        self._batch_t0 = time.perf_counter()
        self.session.comm.enter_scope("(share inputs)")
        inputs, targets, rebuild = split_batch(batch, self.config.input_key, self.config.target_key)
        if targets is not None and self.metrics and not isinstance(targets, PlaceholderBatch):
            check_targets(targets, self.metrics)  # before anything of this batch is shared
        if self.private != "model":  # every secret input checked before the first is shared (the client's values)
            check_inputs(inputs, self.config.public_inputs, self.session.encoder)
        if self.distributed:  # every party learns from the client's header whether the next batch looks alike
            self.schedule.before_batch(batch.next_same if isinstance(batch, PlaceholderBatch) else self.loader.take_next_same())
        else:
            self.schedule.before_batch()
        if self.private == "model":  # the inputs are public: every compute party has them in clear
            shared_inputs = first = self._public_inputs(inputs)
            if isinstance(first, dict):
                first = next(iter(first.values()))
        elif isinstance(inputs, dict):  # several inputs: the public ones stay plain tensors (every party has them)
            shared_inputs = {k: v if k in self.config.public_inputs else self._share_input(v) for k, v in inputs.items()}
            first = next(v for v in shared_inputs.values() if isinstance(v, ShareTensor))
        else:
            shared_inputs = first = self._share_input(inputs)
        self.examples += first.shape[0]
        self.targets = None
        if targets is not None and self.metrics:
            onehot = targets if isinstance(targets, PlaceholderBatch) else onehot_targets(targets, self.metrics)
            self.targets = self._share_input(onehot, frac_bits=0, shape=(first.shape[0], num_classes(self.metrics)))
        return rebuild(shared_inputs, self.targets)

    def _public_inputs(self, inputs: Any) -> Any:
        """``private="model"``: the client's inputs in clear (sent after the batch header with parties as processes);
        recorded in the ledger."""
        values = inputs if isinstance(inputs, dict) else {"x": inputs}
        for v in values.values():
            if isinstance(v, (PlaceholderBatch, PlaceholderInput)):
                raise RuntimeError("private='model': the client's header announced no public input values.")
        plain = {k: torch.as_tensor(v).to(self.device) for k, v in values.items()}
        shape = tuple(next(iter(plain.values())).shape)
        self.session.comm.account_clear(self.client, sum(t.numel() * t.element_size() for t in plain.values()),
                                        "public_input")
        self.session.ledger.append(RevealRecord("inputs (private='model': public to the compute parties)", shape,
                                                tuple(self.session.parties)))
        return plain if isinstance(inputs, dict) else plain["x"]

    def _share_input(self, value: Any, frac_bits: Optional[int] = None, shape: Optional[tuple] = None) -> ShareTensor:
        """Secret-share a client input: integers (token ids, ...) as they are (``frac_bits=0``), floats in fixed point."""
        if frac_bits is None and is_integer_input(value):
            frac_bits = 0
        if isinstance(value, (PlaceholderBatch, PlaceholderInput)):  # another party's process: shapes only
            return self.session.share(None, owner=self.client, frac_bits=frac_bits, shape=shape or value.input_shape)
        return self.session.share(value, owner=self.client, frac_bits=frac_bits)

    def step(self, model: LightningModule, args: tuple, kwargs: dict) -> Any:
        """The user's forward on shares, the metrics' update, and what is released for this batch."""
        cfg = self.config
        comm = self.session.comm
        with self.batchnorm_view:
            out = run_forward(model, self.shared_params, args, kwargs, cfg.input_key, cfg.target_key, comm)
        if self.targets is not None:
            comm.enter_scope("(metrics)")
            for metric in self.metrics.values():
                metric.update(out, self.targets)
        comm.enter_scope("(release)")
        result = self._released(out)
        self.batch_seconds.append(time.perf_counter() - self._batch_t0)
        comm.enter_scope("(between batches)")  # the dealer's material for the next batch, Lightning's loop
        self.schedule.after_batch(model.trainer, out.shape[0])  # offline: the next batch's material
        if self.schedule.seconds:
            self.timings["preprocess_seconds"] = self.schedule.seconds
        return result

    def _released(self, out: ShareTensor) -> Any:
        reveal = self.config.reveal
        if reveal == "labels":
            labels = self.session.reveal_for(out.argmax(dim=-1), self.client, "predicted labels")
            return None if labels is None else labels.round().to(torch.int64)
        if reveal == "logits":
            logits = self.session.reveal_for(out, self.client, "logits")
            return None if logits is None else logits.to(torch.float32)
        return None if self.distributed else out  # a process's own share is never handed out

    # ------------------------------------------------------------------ the end
    def finish(self) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
        """Reveal each metric to the model owner; returns what this process learnt: (values, (correct, total))."""
        self.session.comm.enter_scope("(final metrics)")
        if self.loader is not None:
            self.loader.end()  # the loop may stop before the end marker (limit_predict_batches): agree on it
        values, counts = {}, {}
        for name, metric in self.metrics.items():
            if metric.update_count == 0:  # no batch carried targets: nothing to reveal (compute() would say 0.0)
                continue
            value = metric.compute()
            if value is None:  # another party's process: the metric was revealed to the model owner only
                continue
            values[name] = value
            if getattr(metric, "correct", None) is not None:
                counts[name] = (int(metric.correct), int(metric.total))
        if self.distributed:
            # the first party releases the crypto provider and ends the outside roles (the example count is public)
            party_runtime.finish(self.world, self.session, {"examples": self.examples})
        self.session.comm.stop_clock()
        return values, counts

    def close(self) -> None:
        self.shared_params = {}
        self.targets = None


def wire_metrics(metrics: dict[str, Metric], owner: str, device: torch.device) -> None:
    """Each metric for a run: on ``device``, reset, named as in ``metrics``, revealed to the model owner ``owner``."""
    for name, metric in metrics.items():
        metric.to(device)
        metric.reset()
        if hasattr(metric, "name"):
            metric.name = name
        if hasattr(metric, "reveal_to"):
            metric.reveal_to = owner


def onehot_targets(targets: Any, metrics: dict[str, Metric]) -> torch.Tensor:
    """The client's class labels one-hot (float, ``num_classes`` of the metrics), as they are shared."""
    return torch.nn.functional.one_hot(torch.as_tensor(targets).to(torch.int64), num_classes(metrics)).to(torch.float32)


def check_inputs(inputs: Any, public: Sequence, encoder) -> None:
    """The client's secret inputs, checked in its own process before any of them is shared (NaN/inf, the range, real
    values): with several inputs a later one's error would otherwise come after an earlier one was sent. One input
    is checked by its own sharing, before anything of it is sent: it is not encoded twice on the way."""
    values = inputs.items() if isinstance(inputs, dict) else [(None, inputs)]
    secret = [v for k, v in values if k not in public and not isinstance(v, (PlaceholderBatch, PlaceholderInput))]
    for value in secret if len(secret) > 1 else ():
        encoder.encode(torch.as_tensor(value).detach().cpu(), 0 if is_integer_input(value) else None)


def check_targets(targets: Any, metrics: dict[str, Metric]) -> None:
    """The client's class labels, checked in its own process before anything of the batch is shared: integers in
    ``[0, num_classes)``, one per example (a one-hot of a label out of range, or of a float label cast down, would
    count silently wrong)."""
    n_cls = num_classes(metrics)
    named = ", ".join(f"{type(m).__name__} {name!r}" for name, m in metrics.items() if getattr(m, "num_classes", None))
    t = torch.as_tensor(targets)
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{named} expects integer class labels, but got dtype {t.dtype}.")
    if t.is_floating_point():
        bad = ~torch.isfinite(t) | (t != torch.round(t))
        if bool(bad.any()):
            raise TypeError(f"{named} expects integer class labels, but got {int(bad.sum())} non-integer {t.dtype} "
                            "label(s); convert them with `.long()` in the dataset (nothing was shared).")
    if t.dim() != 1:
        raise ValueError(f"{named} expects one class label per example (a 1-D tensor), but got shape {tuple(t.shape)}.")
    out = (t < 0) | (t >= n_cls)
    if bool(out.any()):
        raise ValueError(f"{named} has num_classes={n_cls}, but {int(out.sum())} label(s) lie outside [0, {n_cls}) "
                         f"(min {t.min().item():g}, max {t.max().item():g}); nothing of this batch was shared.")


def num_classes(metrics: dict[str, Metric]) -> int:
    for m in metrics.values():
        n = getattr(m, "num_classes", None)
        if n:
            return int(n)
    raise ValueError("The secure metrics must expose `num_classes` (targets are one-hot encoded by the client).")
