"""``SecurePredictStrategy``: run a trained LightningModule's own forward on secret shares.

Threat model: semi-honest, non-colluding compute parties (default "alice", "bob"); a crypto provider
(trusted dealer) that only hands out correlated randomness; the model owner secret-shares the weights
once per predict run; the client secret-shares each batch (inputs and one-hot targets). Only what
``reveal`` names is ever released: the final metric values to the model owner (``"metrics"``), or
the predicted labels / logits to the client. Every release is listed in :attr:`reveal_ledger`.
"""
from __future__ import annotations

import time
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torch import nn
from torchmetrics import Metric

from .mpc import Session, ShareTensor, UnsupportedOpError
from .mpc.errors import SmpcError
from .validate import validate_module

__all__ = ["SecurePredictStrategy", "StrategyUsageError"]

Key = Union[int, str]


class StrategyUsageError(SmpcError, RuntimeError):
    """The secure strategy was used for something other than ``predict``."""


class _PredictStepCaller(nn.Module):
    """Calls ``inner.predict_step`` so that ``functional_call`` can swap the inner module's parameters."""

    def __init__(self, inner: LightningModule) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.predict_step(*args, **kwargs)


class SecurePredictStrategy(SingleDeviceStrategy):
    """Secure inference: weights and batches become additive shares; the user's forward runs on them.

    Args:
        parties: compute party names (n >= 2).
        crypto_provider: the trusted dealer's name.
        precision_bits: fixed-point fractional bits.
        compare_bits: range of values entering comparisons, ``|x| < 2**(compare_bits - precision_bits)``.
        reveal: ``"metrics"`` (default: predictions stay secret, ``predict`` returns :class:`ShareTensor`
            objects; only the metrics are revealed, to the model owner), ``"labels"`` (argmax class indices
            revealed to the client) or ``"logits"`` (the model output revealed to the client).
        metrics: ``{name: metric}`` of secure metrics, e.g. ``{"accuracy": SecureAccuracy(num_classes=10)}``.
        input_key / target_key: where inputs and targets sit in a batch: an index for tuples/lists
            (default 0 and 1), a key for dicts (default "x"/"input"/"image" and "y"/"target"/"label").
            A bare tensor batch has no targets.
        preprocess: generate the dealer material for all full batches ahead of the online phase, from the
            plan recorded on the first batch (offline/online split). ``False`` generates it inline.
        preprocess_ahead: how many batches of dealer material the store holds at most (~120 MB per party
            per 1000 MNIST images); it is refilled between batches, so memory stays bounded.
        seed: ``None`` (cryptographically secure) or an int for the deterministic *insecure* test PRG.
        model_owner / client: names used in the reveal ledger.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning_smpc import SecurePredictStrategy, SecureAccuracy
        >>> strategy = SecurePredictStrategy(metrics={"accuracy": SecureAccuracy(num_classes=10)})
        >>> trainer = Trainer(strategy=strategy, logger=False)  # then: trainer.predict(model, datamodule=dm)
    """

    strategy_name = "secure_predict"

    def __init__(
        self,
        parties: Sequence[str] = ("alice", "bob"),
        crypto_provider: str = "crypto_provider",
        precision_bits: int = 16,
        compare_bits: int = 32,
        reveal: Literal["metrics", "labels", "logits"] = "metrics",
        metrics: Optional[dict[str, Metric]] = None,
        input_key: Optional[Key] = None,
        target_key: Optional[Key] = None,
        preprocess: bool = True,
        preprocess_ahead: int = 16,
        seed: Optional[int] = None,
        model_owner: str = "model owner",
        client: str = "client",
    ) -> None:
        super().__init__(device="cpu")
        if reveal not in ("metrics", "labels", "logits"):
            raise ValueError(f"Expected `reveal` to be one of 'metrics', 'labels', 'logits', but got {reveal!r}.")
        Session(tuple(parties), crypto_provider, precision_bits, compare_bits)  # validates the configuration now
        self.parties = tuple(parties)
        self.crypto_provider = crypto_provider
        self.precision_bits = precision_bits
        self.compare_bits = compare_bits
        self.reveal = reveal
        self.metrics: dict[str, Metric] = dict(metrics or {})
        self.input_key, self.target_key = input_key, target_key
        self.preprocess = preprocess
        if preprocess_ahead < 1:
            raise ValueError(f"Expected `preprocess_ahead` to be a positive integer, but got {preprocess_ahead}.")
        self.preprocess_ahead = preprocess_ahead
        self.seed = seed
        self.model_owner, self.client = model_owner, client
        self.session: Optional[Session] = None
        self._shared_params: dict[str, ShareTensor] = {}
        self._targets: Optional[ShareTensor] = None
        self.revealed_metrics: dict[str, torch.Tensor] = {}
        self.revealed_counts: dict[str, tuple[int, int]] = {}
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ device handling
    @property
    def root_device(self) -> torch.device:
        acc = getattr(self, "_accelerator", None)
        if acc is not None and type(acc).__name__ == "CUDAAccelerator" and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ------------------------------------------------------------------ lifecycle
    def connect(self, model: LightningModule) -> None:
        trainer = getattr(model, "_trainer", None)
        fn = trainer.state.fn if trainer is not None else None
        if fn is not None and fn != TrainerFn.PREDICTING:
            raise StrategyUsageError(
                f"SecurePredictStrategy only runs `Trainer.predict`, but `{fn.value}` was called. Train (and "
                "validate/test) with a normal strategy first, e.g. `Trainer().fit(model, dm)`, then run "
                "`Trainer(strategy=SecurePredictStrategy(...)).predict(model, datamodule=dm)`."
            )
        if is_param_in_hook_signature(model.predict_step, "dataloader_iter", explicit=True):
            raise StrategyUsageError(
                "predict_step(dataloader_iter) is not supported by SecurePredictStrategy: batches must pass "
                "through the strategy to be secret-shared. Take `batch` as the first argument instead."
            )
        super().connect(model)

    def setup(self, trainer) -> None:
        super().setup(trainer)
        model = self.lightning_module
        model.eval()
        validate_module(model)
        self.session = Session(self.parties, self.crypto_provider, self.precision_bits, self.compare_bits, self.seed, self.root_device)
        for name, metric in self.metrics.items():
            metric.to(self.root_device)
            metric.reset()
            if hasattr(metric, "name"):
                metric.name = name
            if hasattr(metric, "reveal_to"):
                metric.reveal_to = self.model_owner
        self.revealed_metrics, self.revealed_counts = {}, {}
        self._batches_seen, self._recording = 0, False
        self._plan, self._full_batches_left = None, 0
        t0 = time.perf_counter()
        with torch.no_grad():
            self._shared_params = {
                name: self.session.share(t.detach(), owner=self.model_owner)
                for name, t in list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
                if not _inside_metric(model, name)
            }
        self.timings = {"share_weights_seconds": time.perf_counter() - t0}

    def batch_to_device(self, batch: Any, device: Optional[torch.device] = None, dataloader_idx: int = 0) -> Any:
        batch = super().batch_to_device(batch, device, dataloader_idx)
        inputs, targets, rebuild = _split_batch(batch, self.input_key, self.target_key)
        self._recording = self.preprocess and self._batches_seen == 0
        if self._recording:  # the plan of one batch starts with sharing it
            self.session.record_plan()
        elif self._plan and self.session.dealer.store_size == 0 and self._full_batches_left > 0:
            self._refill_store()  # offline work between batches: the store holds at most preprocess_ahead
        self._batches_seen += 1
        shared_inputs = self.session.share(inputs, owner=self.client)
        self._targets = None
        if targets is not None and self.metrics:
            n_cls = _num_classes(self.metrics)
            onehot = torch.nn.functional.one_hot(targets.to(torch.int64), n_cls).to(torch.float32)
            self._targets = self.session.share(onehot, owner=self.client, frac_bits=0)
        return rebuild(shared_inputs, self._targets)

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        model = self.lightning_module
        batch = kwargs.get("batch", args[0] if args else None)
        batch_idx = kwargs.get("batch_idx", args[1] if len(args) > 1 else 0)
        with _layer_names(model):
            if type(model).predict_step is LightningModule.predict_step:
                inputs, _, _ = _split_batch(batch, self.input_key, self.target_key)
                out = torch.func.functional_call(model, self._shared_params, (inputs,), strict=False)
            else:
                params = {f"inner.{k}": v for k, v in self._shared_params.items()}
                out = torch.func.functional_call(_PredictStepCaller(model), params, args, kwargs, strict=False)
        if not isinstance(out, ShareTensor):
            raise TypeError(f"Expected the model output to be one secret-shared tensor, but got {type(out).__name__}.")
        if self._targets is not None:
            for metric in self.metrics.values():
                metric.update(out, self._targets)
        result = self._released(out)
        if self._recording:
            self._recording = False
            self._preprocess_rest(out.shape[0])
        return result

    def _released(self, out: ShareTensor) -> Any:
        if self.reveal == "labels":
            return self.session.reveal(out.argmax(dim=-1), to=(), outside=self.client, name="predicted labels").round().to(torch.int64)
        if self.reveal == "logits":
            return self.session.reveal(out, to=(), outside=self.client, name="logits").to(torch.float32)
        return out

    def _preprocess_rest(self, batch_size: int) -> None:
        """Keep the plan of this batch and preprocess the next full batches (at most ``preprocess_ahead``).

        How many batches follow comes from what the predict loop will run (``trainer.num_predict_batches``,
        which honours samplers and ``limit_predict_batches``), not from the dataset's length. A batch that
        does not match the plan anyway (a short last batch) finds the store mismatched: the dealer then drops
        the store and works inline for it instead of failing.
        """
        plan = self.session.dealer.stop_recording()
        self.session.dealer.fallback_inline = True
        self._plan, self._full_batches_left = plan, _full_batches_after_first(self.lightning_module.trainer, batch_size)
        self._refill_store()

    def _refill_store(self) -> None:
        repeats = min(self.preprocess_ahead, self._full_batches_left)
        if repeats <= 0:
            return
        t0 = time.perf_counter()
        self.session.preprocess(self._plan, repeats)
        self._full_batches_left -= repeats
        self.timings["preprocess_seconds"] = self.timings.get("preprocess_seconds", 0.0) + time.perf_counter() - t0

    def on_predict_end(self) -> None:
        for name, metric in self.metrics.items():
            if metric.update_count == 0:  # no batch carried targets: nothing to reveal (compute() would say 0.0)
                continue
            value = metric.compute()
            self.revealed_metrics[name] = value
            if hasattr(metric, "correct"):
                self.revealed_counts[name] = (int(metric.correct), int(metric.total))
        trainer = self.lightning_module.trainer
        if self.revealed_metrics and trainer.logger is not None:
            trainer.logger.log_metrics({f"secure_{k}": float(v.mean()) for k, v in self.revealed_metrics.items()}, step=0)
        super().on_predict_end()

    def teardown(self) -> None:
        self._shared_params = {}
        self._targets = None
        super().teardown()

    # ------------------------------------------------------------------ reporting
    @property
    def reveal_ledger(self) -> list:
        """Everything released beyond uniformly masked openings: name, shape, receivers."""
        return list(self.session.ledger) if self.session is not None else []

    def comm_stats(self, offline: bool = False) -> dict[str, dict[str, int]]:
        """Per compute party: rounds, messages, bytes sent/received (online, or offline from the dealer)."""
        if self.session is None:
            return {}
        stats = self.session.comm.stats(offline=offline)
        return {p: stats[p] for p in self.parties if p in stats}

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description=cls.__name__)
        strategy_registry.register(
            "secure_predict_3pc", cls, description="SecurePredictStrategy with three compute parties",
            parties=("alice", "bob", "carol"),
        )


# ---------------------------------------------------------------------------------------------- helpers
_INPUT_KEYS = ("x", "input", "inputs", "image", "images")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")


def _split_batch(batch: Any, input_key: Optional[Key], target_key: Optional[Key]):
    """(inputs, targets or None, rebuild(inputs, targets) -> batch of the same structure)."""
    if isinstance(batch, (torch.Tensor, ShareTensor)):
        return batch, None, lambda x, y: x
    if isinstance(batch, Mapping):
        ik = input_key if input_key is not None else next((k for k in _INPUT_KEYS if k in batch), None)
        tk = target_key if target_key is not None else next((k for k in _TARGET_KEYS if k in batch), None)
        if ik is None or ik not in batch:
            raise KeyError(f"Cannot find the inputs in batch keys {list(batch)}; pass SecurePredictStrategy(input_key=...).")

        def rebuild(x, y):
            out = dict(batch)
            out[ik] = x
            if tk is not None:
                out[tk] = y if y is not None else batch[tk]
            return out

        return batch[ik], (batch[tk] if tk is not None and tk in batch else None), rebuild
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        ik = 0 if input_key is None else int(input_key)
        tk = (1 if len(batch) > 1 else None) if target_key is None else int(target_key)

        def rebuild_seq(x, y):
            items = list(batch)
            items[ik] = x
            if tk is not None:
                items[tk] = y if y is not None else batch[tk]
            return type(batch)(items) if isinstance(batch, tuple) else items

        return batch[ik], (batch[tk] if tk is not None else None), rebuild_seq
    raise TypeError(f"Unsupported batch type {type(batch).__name__}: expected a tensor, a tuple/list or a dict.")


def _full_batches_after_first(trainer, batch_size: int) -> int:
    """Batches after the first that the predict loop will run at ``batch_size`` (a short last batch excluded)."""
    counts = getattr(trainer, "num_predict_batches", None) or [0]
    n_batches = counts[0]
    if not isinstance(n_batches, int) or n_batches <= 1:  # unknown (iterable loader, inf) or a single batch
        return 0
    loaders = trainer.predict_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    try:  # items the sampler yields: a short last batch exists when the loop reaches its end
        n_items = len(loader.batch_sampler.sampler) if loader.batch_sampler is not None else None
        drop_last = bool(getattr(loader.batch_sampler, "drop_last", False))
    except (AttributeError, TypeError):
        n_items, drop_last = None, False
    short_last = (n_items is not None and not drop_last and n_items % batch_size != 0
                  and n_batches >= -(-n_items // batch_size))
    return n_batches - 1 - int(short_last)


def _num_classes(metrics: dict[str, Metric]) -> int:
    for m in metrics.values():
        n = getattr(m, "num_classes", None)
        if n:
            return int(n)
    raise ValueError("The secure metrics must expose `num_classes` (targets are one-hot encoded by the client).")


def _inside_metric(model: nn.Module, name: str) -> bool:
    parts = name.split(".")[:-1]
    mod = model
    for p in parts:
        mod = getattr(mod, p)
        if isinstance(mod, Metric):
            return True
    return False


class _layer_names:
    """Adds the layer path to an UnsupportedOpError raised inside a submodule's forward."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: list[str] = []
        self.handles: list = []

    def __enter__(self):
        for name, mod in self.model.named_modules():
            if name and not isinstance(mod, Metric):
                self.handles.append(mod.register_forward_pre_hook(self._enter_layer(name)))
                self.handles.append(mod.register_forward_hook(self._leave_layer))
        return self

    def _enter_layer(self, name: str):
        def hook(module, args) -> None:
            self.stack.append(name)

        return hook

    def _leave_layer(self, module, args, output) -> None:  # must return None: a value would replace the output
        if self.stack:
            self.stack.pop()

    def __exit__(self, exc_type, exc, tb):
        for h in self.handles:
            h.remove()
        if exc_type is not None and issubclass(exc_type, UnsupportedOpError) and self.stack:
            layer = self.stack[-1]
            kind = type(self.model.get_submodule(layer)).__name__
            raise UnsupportedOpError(f"{exc} (in layer `{layer}` ({kind}))") from exc
        return False


if SecurePredictStrategy.strategy_name not in StrategyRegistry:
    SecurePredictStrategy.register_strategies(StrategyRegistry)
