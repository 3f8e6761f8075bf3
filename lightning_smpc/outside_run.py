"""The part of a secure predict run played by a role outside the compute parties, in a process of its own: the model
owner's server (``model_owner_party="server"``) or the client (``client_party="client"``) when they are not among
``parties``. What :class:`~lightning_smpc.SecurePredictStrategy`'s hooks delegate to there, beside
:class:`~lightning_smpc.secure_run.SecureRun` (a compute party's part).

It holds no share and runs none of the model: the model owner shares its (folded) weights once, in the order the
parties ask for them (each masked with a mask it derives itself: :mod:`lightning_smpc.mpc.process.outside`), then
receives the metrics at the end; the client reads its data (only it does), announces each batch's shapes, shares
its inputs and one-hot targets, and receives its labels or logits per batch. Both learn only what is revealed to
them.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule

from . import folding, party_runtime
from .batches import ClientLoader, is_integer_input, split_batch
from .forward import shared_weights
from .metrics import accuracy_from_revealed
from .mpc.process.outside import OutsideRole
from .secure_run import check_inputs, check_targets, onehot_targets, wire_metrics

__all__ = ["OutsideRun"]


class OutsideRun:
    """This outside role's part of one ``predict`` call (``config``: the strategy; ``world``: this process's place)."""

    def __init__(self, config, model: LightningModule, world: party_runtime.World, device: torch.device,
                 t_start: Optional[float] = None) -> None:
        t_start = time.perf_counter() if t_start is None else t_start
        self.config, self.world, self.device = config, world, device
        self.name = world.links.name
        self.role = OutsideRole(world.links, config.parties, config.crypto_provider, config.ring)
        self.is_owner, self.is_client = self.name == config.model_owner_party, self.name == config.client_party
        self.metrics = config.metrics
        wire_metrics(self.metrics, config.model_owner_party, device)  # as the parties wire them
        self.loader: Optional[ClientLoader] = None
        self.shared_params: dict = {}  # an outside role holds no share
        self.batch_seconds: list[float] = []
        self.session = None
        t0 = time.perf_counter()
        self.private = getattr(config, "private", "both")
        if self.is_owner and getattr(config, "model_shares", None) is None:  # the parties kept shares: nothing to send
            with torch.no_grad():  # BatchNorms folded on the owner's plaintext weights, in the parties' order
                params, _ = folding.secure_view(model, shared_weights(model))
                if self.private == "data":  # the model is public to the compute parties: sent in clear
                    party_runtime.publish_weights(world, world.rank, [t.detach().contiguous() for _, t in params])
                else:
                    for _, t in params:
                        self.role.share(t.detach())
        self.timings = {"start_seconds": t0 - t_start, "share_weights_seconds": time.perf_counter() - t0}

    def wrap_loader(self, dataloader: Any) -> Any:
        """The client reads its data and announces each batch's shapes to the parties; the model owner iterates
        nothing (it learns no batch)."""
        if not self.is_client:
            return []
        cfg = self.config
        self.loader = ClientLoader(dataloader, lambda data: party_runtime.announce(self.world, data), cfg.input_key,
                                   cfg.target_key, read_ahead=cfg.preprocess, public=cfg.public_inputs,
                                   send_public=lambda t: party_runtime.announce_tensor(self.world, t),
                                   inputs_public=self.private == "model")
        return self.loader

    def share_batch(self, batch: Any) -> Any:
        """The client's inputs and one-hot targets, shared in the order the parties ask for them; the batch stays."""
        self._batch_t0 = time.perf_counter()
        cfg = self.config
        inputs, targets, _ = split_batch(batch, cfg.input_key, cfg.target_key)
        if targets is not None and self.metrics:
            check_targets(targets, self.metrics)  # before anything of this batch is shared
        if self.private != "model":
            check_inputs(inputs, cfg.public_inputs, self.role.encoder)
        self.loader.take_next_same()
        values = inputs.items() if isinstance(inputs, dict) else [(None, inputs)]
        for key, value in values:  # public ones (all of them with private="model") went in clear after the header
            if key not in cfg.public_inputs and self.private != "model":
                self.role.share(value, frac_bits=0 if is_integer_input(value) else None)
        if targets is not None and self.metrics:
            self.role.share(onehot_targets(targets, self.metrics), frac_bits=0)
        return batch

    def step(self, model: LightningModule, args: tuple, kwargs: dict) -> Any:
        """The client's release for this batch (the parties compute it)."""
        reveal, out = self.config.reveal, None
        if reveal in ("labels", "logits"):
            _, value = self.role.receive()
            out = value.round().to(torch.int64) if reveal == "labels" else value.to(torch.float32)
        self.batch_seconds.append(time.perf_counter() - self._batch_t0)
        return out

    def finish(self) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
        """What was revealed to this role at the end (the model owner: each metric), once the parties end the run."""
        if self.loader is not None:
            self.loader.end()
        revealed = self.role.receive_all()
        examples = int((self.role.end_note or {}).get("examples", 0))
        values, counts = {}, {}
        for name, metric in self.metrics.items():
            if not self.is_owner:
                continue
            value = accuracy_from_revealed(metric, revealed, examples)
            if value is None:
                continue
            values[name] = value
            if getattr(metric, "correct", None) is not None:
                counts[name] = (int(metric.correct), examples)
        return values, counts

    def close(self) -> None:
        self.loader = None
