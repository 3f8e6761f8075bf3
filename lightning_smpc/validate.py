"""Pre-flight check of a module before any secret is shared (Opacus ModuleValidator style)."""
from __future__ import annotations

from torch import nn

from .mpc.errors import SmpcError

__all__ = ["UnsupportedModuleError", "validate_module"]

_HINTS: dict[type, str] = {
    nn.BatchNorm1d: "fold it into the preceding linear/conv layer before secure predict",
    nn.BatchNorm2d: "fold it into the preceding conv layer before secure predict",
    nn.LayerNorm: "needs a secure inverse square root, which is not implemented",
    nn.GroupNorm: "needs a secure inverse square root, which is not implemented",
    nn.Sigmoid: "not supported; if it feeds an argmax, drop it (monotone)",
    nn.Tanh: "not supported; if it feeds an argmax, drop it (monotone)",
    nn.GELU: "replace it with ReLU and retrain",
    nn.SiLU: "replace it with ReLU and retrain",
    nn.ELU: "replace it with ReLU and retrain",
    nn.LeakyReLU: "replace it with ReLU and retrain",
    nn.Embedding: "needs secret indexing, not implemented",
    nn.LSTM: "recurrent layers are not implemented",
    nn.GRU: "recurrent layers are not implemented",
    nn.RNN: "recurrent layers are not implemented",
    nn.MultiheadAttention: "needs a secure softmax, not implemented",
}


class UnsupportedModuleError(SmpcError, NotImplementedError):
    """The module holds layers that cannot run on secret shares; the message lists every one with a fix."""


def validate_module(model: nn.Module) -> None:
    """Raise one :class:`UnsupportedModuleError` listing every unsupported layer (path, type, fix)."""
    problems = [
        f"  - `{name}` ({type(mod).__name__}): {_HINTS[type(mod)]}"
        for name, mod in model.named_modules()
        if type(mod) in _HINTS
    ]
    if problems:
        raise UnsupportedModuleError(
            "The model has layers that cannot run on secret shares (nothing was shared):\n" + "\n".join(problems)
        )
