"""BatchNorm on secret shares: folded on the model owner's plaintext weights, before anything is shared.

An eval-mode ``BatchNorm1d``/``BatchNorm2d`` is the per-channel affine map ``y = x * scale + shift`` with
``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``. :func:`secure_view`
computes both from the owner's plaintext module and returns the parameter set to share instead of the module's
own, plus a :class:`BatchNormView` (a context manager) under which each BatchNorm module computes what the
shared set expects:

* **folded** when the BatchNorm directly follows a ``Conv2d`` (``BatchNorm2d``) or ``Linear`` (``BatchNorm1d``)
  that feeds nothing else: the layer's weight becomes ``W * scale`` (per output channel) and its bias
  ``b * scale + shift`` (created when the layer has none); the BatchNorm acts as the identity. No cost on shares.
* otherwise an **affine map** with the shared per-channel ``scale`` and ``shift`` (``<bn>.smpc_scale`` and
  ``<bn>.smpc_shift`` in the shared set): one Beaver product and a local addition.

"Directly follows" is read from a ``torch.fx`` trace of ``forward`` (a BatchNorm called once, whose input is the
output of a conv/linear called once, used by nothing else, with parameters tied to no other module); a model that
does not trace gets the affine map for every BatchNorm. Which BatchNorm is folded depends on the architecture only,
so every party's process makes the same choice. The running statistics, ``weight`` and ``bias`` of a BatchNorm are
never shared. The user's module and its tensors are not modified: the folded tensors are new, and the view only
replaces the BatchNorm modules' ``forward`` while it is active (restored on exit).

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> params, view = secure_view(model)
    >>> sorted(name for name, _ in params), view.folded
    (['0.bias', '0.weight'], {'1': '0'})
    >>> x = torch.randn(2, 1, 5, 5)
    >>> with view:
    ...     y = torch.func.functional_call(model, dict(params), (x,), strict=False)
    >>> bool(torch.allclose(y, model(x), atol=1e-5))
    True
"""
from __future__ import annotations

import types
from collections import Counter
from typing import Optional, Sequence

import torch
from torch import nn

from .mpc.errors import UnsupportedOpError

__all__ = ["BatchNormView", "BatchNormFoldingError", "secure_view", "SCALE", "SHIFT", "BATCHNORMS"]

SCALE, SHIFT = "smpc_scale", "smpc_shift"  # names (under the BatchNorm's path) of an unfolded BatchNorm's map
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_FOLDS_INTO = {nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm1d: nn.Linear}
_MISSING = object()


class BatchNormFoldingError(UnsupportedOpError):
    """A folded BatchNorm was reached by a value other than its layer's output (or with a shape folding cannot
    serve): the shared weights already carry its scale, so the result would be wrong."""


class BatchNormView:
    """While active, every BatchNorm the shared parameter set was made for computes the folded map.

    ``folded``: ``{batchnorm path: conv/linear path}``; ``affine``: BatchNorm paths applied as a shared affine map.
    Re-entrant use is refused; the user's module is restored on exit (also after an error).
    """

    def __init__(self, model: nn.Module, folded: dict[str, str], affine: Sequence[str]) -> None:
        self.model = model
        self.folded = dict(folded)
        self.affine = list(affine)
        self._saved: list = []
        self._hooks: list = []
        self._last: dict[str, object] = {}

    def __enter__(self) -> "BatchNormView":
        if self._saved or self._hooks:
            raise RuntimeError("BatchNormView is already active.")
        for bn_name, layer_name in self.folded.items():
            self._patch(bn_name, self._folded_forward(bn_name, layer_name))
            layer = self.model.get_submodule(layer_name)
            self._hooks.append(layer.register_forward_hook(self._remember(layer_name)))
        for bn_name in self.affine:
            self._patch(bn_name, _affine_forward)
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._hooks:
            h.remove()
        for mod, old in reversed(self._saved):
            if old is _MISSING:
                del mod.__dict__["forward"]
            else:
                mod.__dict__["forward"] = old
        self._saved, self._hooks, self._last = [], [], {}
        return False

    def _patch(self, name: str, fn) -> None:
        mod = self.model.get_submodule(name)
        self._saved.append((mod, mod.__dict__.get("forward", _MISSING)))
        mod.__dict__["forward"] = types.MethodType(fn, mod)

    def _remember(self, layer_name: str):
        def hook(module, args, output) -> None:
            self._last[layer_name] = output

        return hook

    def _folded_forward(self, bn_name: str, layer_name: str):
        view = self

        def forward(bn, x):
            bn._check_input_dim(x)
            if x is not view._last.get(layer_name):
                raise BatchNormFoldingError(
                    f"BatchNorm `{bn_name}` was folded into `{layer_name}` (it directly follows it in forward()), but "
                    "it received another value here; the shared weights of the layer already include its scale. Call "
                    "the BatchNorm only on that layer's output (predict_step and forward must agree)."
                )
            if isinstance(bn, nn.BatchNorm1d) and x.dim() != 2:
                raise BatchNormFoldingError(
                    f"BatchNorm1d `{bn_name}` was folded into Linear `{layer_name}` for 2-D values (N, C), but got a "
                    f"{x.dim()}-D value: the Linear's features are its last dim, the BatchNorm's channels dim 1."
                )
            return x

        return forward


def _affine_forward(bn, x):
    """``x * scale + shift`` per channel (dim 1), with the shared map swapped in under ``SCALE``/``SHIFT``."""
    bn._check_input_dim(x)
    scale, shift = getattr(bn, SCALE, None), getattr(bn, SHIFT, None)
    if scale is None or shift is None:
        raise BatchNormFoldingError("The BatchNorm's folded scale/shift were not supplied: run the module with the "
                                    "parameter set from secure_view (torch.func.functional_call).")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * scale.reshape(shape) + shift.reshape(shape)


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` in float64 of an eval-mode BatchNorm with running statistics."""
    if bn.training:
        raise ValueError(f"Expected an eval-mode BatchNorm, but `{type(bn).__name__}` is in training mode: call model.eval().")
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError(f"`{type(bn).__name__}` has no running statistics (track_running_stats=False): it normalises "
                         "with batch statistics, which cannot be folded.")
    scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.detach().double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def fold_targets(model: nn.Module) -> dict[str, str]:
    """``{batchnorm path: conv/linear path}`` of the BatchNorms that directly follow a layer they can fold into."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # not traceable (data-dependent control flow, ...): no folding, affine maps only
        return {}
    nodes = list(graph.nodes)
    calls = Counter(n.target for n in nodes if n.op == "call_module")
    attrs = {str(n.target).rsplit(".", 1)[0] for n in nodes if n.op == "get_attr"}
    owners = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    targets = {}
    for node in nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        bn = model.get_submodule(node.target)
        want = _FOLDS_INTO.get(type(bn))
        prev = node.args[0] if node.args else None
        if want is None or not isinstance(prev, torch.fx.Node) or prev.op != "call_module":
            continue
        layer = model.get_submodule(prev.target)
        features = layer.out_channels if isinstance(layer, nn.Conv2d) else getattr(layer, "out_features", None)
        if (type(layer) is want and calls[prev.target] == 1 and len(prev.users) == 1 and prev.target not in attrs
                and features == bn.num_features and all(owners[id(p)] == 1 for p in layer.parameters())
                and bn.running_mean is not None):
            targets[node.target] = prev.target
    return targets


def secure_view(model: nn.Module, named: Optional[Sequence[tuple[str, torch.Tensor]]] = None
                ) -> tuple[list[tuple[str, torch.Tensor]], BatchNormView]:
    """The parameter set to share for ``model`` (BatchNorms folded) and the view to run the model under.

    Args:
        model: the model owner's plaintext module, in eval mode.
        named: ``(name, tensor)`` pairs that would be shared without folding (default: all parameters and
            floating-point buffers).

    Returns ``(params, view)``: ``params`` lists ``named`` with every eval-mode BatchNorm's own tensors removed, the
    folded layers' weight/bias replaced by new tensors, and ``<bn>.smpc_scale``/``<bn>.smpc_shift`` added for the
    BatchNorms that are not folded. Nothing in ``model`` is modified.
    """
    if named is None:
        named = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    bns = {name: m for name, m in model.named_modules() if type(m) in BATCHNORMS}
    if not bns:
        return list(named), BatchNormView(model, {}, [])
    folded = fold_targets(model)
    affine = [name for name in bns if name not in folded]
    replace: dict[str, torch.Tensor] = {}
    extra: dict[str, list[tuple[str, torch.Tensor]]] = {}  # entries inserted right after an existing name
    for bn_name, layer_name in folded.items():
        scale, shift = batchnorm_affine(bns[bn_name])
        layer = model.get_submodule(layer_name)
        w = layer.weight.detach()
        replace[f"{layer_name}.weight"] = (w.double() * scale.reshape((-1,) + (1,) * (w.dim() - 1))).to(w.dtype)
        b = shift if layer.bias is None else layer.bias.detach().double() * scale + shift
        if layer.bias is None:
            extra.setdefault(f"{layer_name}.weight", []).append((f"{layer_name}.bias", b.to(w.dtype)))
        else:
            replace[f"{layer_name}.bias"] = b.to(layer.bias.dtype)
    for bn_name in affine:
        scale, shift = batchnorm_affine(bns[bn_name])
        dtype = bns[bn_name].running_var.dtype
        extra.setdefault(_last_name(named, bn_name), []).extend(
            [(f"{bn_name}.{SCALE}", scale.to(dtype)), (f"{bn_name}.{SHIFT}", shift.to(dtype))])
    own = {f"{bn}.{t}" for bn in bns for t in ("weight", "bias", "running_mean", "running_var")}
    params = []
    for name, t in named:
        if name not in own:
            params.append((name, replace.get(name, t)))
        params.extend(extra.pop(name, []))
    for entries in extra.values():  # a BatchNorm none of whose own tensors were listed
        params.extend(entries)
    return params, BatchNormView(model, folded, affine)


def _last_name(named, prefix: str) -> str:
    """The last listed tensor of module ``prefix`` (the folded map is shared where its tensors were)."""
    last = None
    for name, _ in named:
        if name.rsplit(".", 1)[0] == prefix:
            last = name
    return last if last is not None else f"{prefix}.<none>"
