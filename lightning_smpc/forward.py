"""Running the user's own ``forward``/``predict_step`` on shares: which tensors are shared, how the shared
parameters replace the module's for one call, and layer names in errors."""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import Metric

from .batches import split_batch
from .mpc import ShareTensor, UnsupportedOpError

__all__ = ["shared_weights", "run_forward", "forward_arguments", "layer_names"]

Key = Union[int, str]


class _PredictStepCaller(nn.Module):
    """Calls ``inner.predict_step`` so that ``functional_call`` can swap the inner module's parameters."""

    def __init__(self, inner: LightningModule) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.predict_step(*args, **kwargs)


def shared_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The parameters and floating-point buffers that are shared (metric states excluded), in a fixed order."""
    named = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    return [(name, t) for name, t in named if not _inside_metric(model, name)]


def forward_arguments(inputs: Any) -> tuple[tuple, dict]:
    """``forward``'s ``(args, kwargs)`` for a batch's inputs: one input as is; several by name (dict batches) or in
    order (tuple batches)."""
    if isinstance(inputs, dict):
        named = all(isinstance(k, str) for k in inputs)
        return ((), inputs) if named else (tuple(inputs.values()), {})
    return (inputs,), {}


def run_forward(model: LightningModule, params: dict[str, ShareTensor], args: tuple, kwargs: dict,
                input_key: Optional[Key], target_key: Optional[Key], comm=None) -> ShareTensor:
    """The user's ``predict_step`` (or ``forward`` on the batch's inputs) with ``params`` in place of the
    module's own, for this call only; the module's parameters are untouched."""
    batch = kwargs.get("batch", args[0] if args else None)
    with layer_names(model, comm):
        if type(model).predict_step is LightningModule.predict_step:
            call_args, call_kwargs = forward_arguments(split_batch(batch, input_key, target_key)[0])
            out = torch.func.functional_call(model, params, call_args, call_kwargs, strict=False)
        else:
            inner = {f"inner.{k}": v for k, v in params.items()}
            out = torch.func.functional_call(_PredictStepCaller(model), inner, args, kwargs, strict=False)
    if not isinstance(out, ShareTensor):
        raise TypeError(f"Expected the model output to be one secret-shared tensor, but got {type(out).__name__}.")
    return out


def _inside_metric(model: nn.Module, name: str) -> bool:
    mod = model
    for part in name.split(".")[:-1]:
        mod = getattr(mod, part)
        if isinstance(mod, Metric):
            return True
    return False


class layer_names:
    """Adds the layer path to an UnsupportedOpError raised inside a submodule's forward, and (with ``comm``) counts
    the traffic and time of each layer under its path (the cost profile, see ``Communicator.enter_scope``).

    Two global module hooks for the call (not two per submodule: registering hundreds of hooks per batch costs
    more than the batch's local work on a small model); they track the modules of ``model`` only."""

    TOP = "(forward)"  # ops of the model's own forward, outside its submodules

    def __init__(self, model: nn.Module, comm=None) -> None:
        self.model, self.comm = model, comm
        self.stack: list[str] = []
        self.handles: list = []
        self.names: dict[int, str] = {}

    def __enter__(self):
        self.names = {id(mod): name for name, mod in self.model.named_modules() if name and not isinstance(mod, Metric)}
        hooks = nn.modules.module
        self.handles = [hooks.register_module_forward_pre_hook(self._enter_layer),
                        hooks.register_module_forward_hook(self._leave_layer)]
        if self.comm is not None:
            self._outer = self.comm.enter_scope(self.TOP)
        return self

    def _enter_layer(self, module, args) -> None:
        name = self.names.get(id(module))
        if name is not None:
            self.stack.append(name)
            if self.comm is not None:
                self.comm.enter_scope(name)

    def _leave_layer(self, module, args, output) -> None:  # must return None: a value would replace the output
        if id(module) in self.names and self.stack:
            self.stack.pop()
            if self.comm is not None:
                self.comm.enter_scope(self.stack[-1] if self.stack else self.TOP)

    def __exit__(self, exc_type, exc, tb):
        for h in self.handles:
            h.remove()
        if self.comm is not None:
            self.comm.enter_scope(self._outer)
        if exc_type is not None and issubclass(exc_type, UnsupportedOpError) and self.stack:
            layer = self.stack[-1]
            kind = type(self.model.get_submodule(layer)).__name__
            raise UnsupportedOpError(f"{exc} (in layer `{layer}` ({kind}))") from exc
        return False
