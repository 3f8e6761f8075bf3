"""Pre-flight check of a module before any secret is shared (Opacus ModuleValidator style).

Every layer that cannot run on secret shares is listed in one :class:`UnsupportedModuleError`, each with its path,
type and what to do. Eval-mode ``BatchNorm1d``/``BatchNorm2d`` with running statistics are supported (folded on the
model owner's plaintext weights, see :mod:`lightning_smpc.folding`); so are ``Conv2d`` with integer padding in any
padding mode, ``MaxPool2d``/``AvgPool2d`` with padding, dilation and ``ceil_mode``, and the adaptive 2-D poolings.
"""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from .mpc.errors import SmpcError

__all__ = ["UnsupportedModuleError", "validate_module"]

_RELU = "replace it with ReLU and retrain"
_MONOTONE = "not supported; if it feeds an argmax, drop it (monotone)"
_HINTS: dict[type, str] = {
    nn.BatchNorm3d: "3-D BatchNorm is not supported (no 3-D convolution on shares); use 2-D layers",
    nn.SyncBatchNorm: "convert it to BatchNorm2d/1d for inference (nn.SyncBatchNorm is for distributed training)",
    nn.GroupNorm: "not implemented (LayerNorm is); normalise over the channel groups with a LayerNorm-style forward",
    nn.InstanceNorm1d: "not implemented (LayerNorm is)",
    nn.InstanceNorm2d: "not implemented (LayerNorm is)",
    nn.InstanceNorm3d: "not implemented (LayerNorm is)",
    nn.LocalResponseNorm: "needs a secure power function, which is not implemented",
    nn.LogSigmoid: _MONOTONE,
    nn.ELU: _RELU,
    nn.CELU: _RELU,
    nn.SELU: _RELU,
    nn.LeakyReLU: _RELU,
    nn.PReLU: _RELU,
    nn.ReLU6: _RELU,
    nn.Hardtanh: _RELU,
    nn.Hardswish: _RELU,
    nn.Hardsigmoid: _RELU,
    nn.Mish: _RELU,
    nn.Softplus: _RELU,
    nn.Softsign: _RELU,
    nn.EmbeddingBag: "not implemented (nn.Embedding is: a one-hot of secret ids); use nn.Embedding and a sum",
    nn.LSTM: "recurrent layers are not implemented",
    nn.GRU: "recurrent layers are not implemented",
    nn.RNN: "recurrent layers are not implemented",
    nn.LSTMCell: "recurrent layers are not implemented",
    nn.GRUCell: "recurrent layers are not implemented",
    nn.RNNCell: "recurrent layers are not implemented",
    nn.Conv1d: "only 2-D convolutions run on shares; reshape to Conv2d with a 1-pixel dim",
    nn.Conv3d: "only 2-D convolutions run on shares",
    nn.ConvTranspose1d: "transposed convolutions are not implemented",
    nn.ConvTranspose2d: "transposed convolutions are not implemented",
    nn.ConvTranspose3d: "transposed convolutions are not implemented",
    nn.MaxPool1d: "only 2-D pooling runs on shares; use MaxPool2d with a 1-pixel window dim",
    nn.MaxPool3d: "only 2-D pooling runs on shares",
    nn.AvgPool1d: "only 2-D pooling runs on shares; use AvgPool2d with a 1-pixel window dim",
    nn.AvgPool3d: "only 2-D pooling runs on shares",
    nn.AdaptiveMaxPool1d: "only 2-D pooling runs on shares",
    nn.AdaptiveMaxPool3d: "only 2-D pooling runs on shares",
    nn.AdaptiveAvgPool1d: "only 2-D pooling runs on shares",
    nn.AdaptiveAvgPool3d: "only 2-D pooling runs on shares",
    nn.LPPool1d: "needs a secure power function, which is not implemented",
    nn.LPPool2d: "needs a secure power function, which is not implemented",
    nn.FractionalMaxPool2d: "random pooling regions are not implemented; use MaxPool2d",
    nn.FractionalMaxPool3d: "random pooling regions are not implemented",
    nn.MaxUnpool2d: "needs the (secret) max indices, not implemented",
    nn.Upsample: "interpolation is not implemented on shares",
    nn.UpsamplingNearest2d: "interpolation is not implemented on shares",
    nn.UpsamplingBilinear2d: "interpolation is not implemented on shares",
}


def _batchnorm(mod: nn.Module) -> Optional[str]:
    if mod.running_mean is None or mod.running_var is None:
        return ("normalises with batch statistics in eval mode (track_running_stats=False), which needs a secure "
                "inverse square root; train it with track_running_stats=True (the running statistics are folded)")
    return None


def _conv2d(mod: nn.Module) -> Optional[str]:
    if isinstance(mod.padding, str):
        return f"padding={mod.padding!r} is not supported on shares; pass integer padding"
    return None


def _embedding(mod: nn.Module) -> Optional[str]:
    if mod.max_norm is not None:
        return "max_norm renormalises the table in place at lookup; not supported on shares (set max_norm=None)"
    return None


def _max_pool(mod: nn.Module) -> Optional[str]:
    if mod.return_indices:
        return "return_indices=True is not supported on shares (the indices are secret); use return_indices=False"
    return None


_CHECKS: dict[type, Callable[[nn.Module], Optional[str]]] = {
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.Conv2d: _conv2d,
    nn.Embedding: _embedding,
    nn.MaxPool2d: _max_pool,
    nn.AdaptiveMaxPool2d: _max_pool,
}


class UnsupportedModuleError(SmpcError, NotImplementedError):
    """The module holds layers that cannot run on secret shares; the message lists every one with a fix."""


def _problem(mod: nn.Module) -> Optional[str]:
    kind = type(mod)
    if kind in _HINTS:
        return _HINTS[kind]
    check = _CHECKS.get(kind)
    return check(mod) if check is not None else None


def validate_module(model: nn.Module) -> None:
    """Raise one :class:`UnsupportedModuleError` listing every unsupported layer (path, type, fix)."""
    problems = []
    for name, mod in model.named_modules():
        why = _problem(mod)
        if why is not None:
            problems.append(f"  - `{name}` ({type(mod).__name__}): {why}")
    if problems:
        raise UnsupportedModuleError(
            "The model has layers that cannot run on secret shares (nothing was shared):\n" + "\n".join(problems)
        )
