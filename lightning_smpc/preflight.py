"""Pre-flight fidelity report: will this model's numbers be right on shares, with these settings?

Fixed-point MPC does not fail when a value leaves its range: it returns a wrong number (a ReLU of an activation of
1e5 at the default 16 fractional bits and 32 comparison bits is garbage, and nothing warns). :func:`preflight`
runs the model in plaintext on a few calibration batches and, for every op that has a range limit (declared with
the op, see :mod:`lightning_smpc.mpc.limits`), records the largest magnitude it sees, per layer; it also measures
the fixed-point rounding error of the output (a second pass with every value rounded to ``2^-precision_bits``).
The report says, per layer and op, the headroom in bits, overall ``ok``, and settings with which every limit holds.

Only the party that may see the calibration data should run it: the model owner on data of its own (or the
client on its data with the model's architecture, when the owner agrees to the plaintext pass).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_smpc import preflight
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> report = preflight(model, torch.randn(16, 4))
    >>> report.ok, report.suggested_precision_bits, report.suggested_compare_bits
    (True, 16, 32)
    >>> with torch.no_grad():
    ...     _ = model[0].weight.mul_(1e6)  # hidden activations of ~1e6: beyond the comparison range
    >>> report = preflight(model, torch.randn(16, 4))
    >>> report.ok, report.worst.layer, report.suggested_compare_bits
    (False, '1', 40)
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

from .batches import split_batch
from .forward import forward_arguments, layer_names
from .mpc.config import RingConfig
from .mpc.errors import SmpcError
from .mpc.limits import LIMITS
from .mpc.tensor import OP_LIMIT

__all__ = ["preflight", "PreflightReport", "PreflightRow", "PreflightError"]

HEADROOM_BITS = 1.0  # a limit is met with at least this many bits to spare (a calibration batch is not every input)
_DIVISIONS = {torch.Tensor.__truediv__, torch.Tensor.div, torch.div}


class PreflightError(SmpcError, ValueError):
    """The pre-flight check found values outside the range the secure computation is exact in."""


@dataclass
class PreflightRow:
    """One op with a range limit, in one layer: the largest magnitude seen and its headroom in bits."""

    layer: str
    op: str
    limit: str
    max_abs: float
    bound: float
    headroom_bits: float
    ok: bool
    min_abs: Optional[float] = None  # positive domains (reciprocal, rsqrt, ...): the smallest magnitude seen
    source: str = ""  # the layer whose output this op's input came from (when another one)


@dataclass
class PreflightReport:
    """What :func:`preflight` found. ``print(report)`` shows a table; :meth:`to_dict` is for programs."""

    precision_bits: int
    compare_bits: int
    rows: list[PreflightRow]
    output_error: float  # max |secure-rounding output - plaintext output| on the calibration data
    label_agreement: Optional[float]  # argmax agreement of the rounded pass with plaintext (classifier outputs)
    suggested_precision_bits: Optional[int]
    suggested_compare_bits: Optional[int]
    batches: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def worst(self) -> Optional[PreflightRow]:
        """The row with the least headroom."""
        return min(self.rows, key=lambda r: r.headroom_bits, default=None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def problems(self) -> list[str]:
        out = []
        for r in self.rows:
            if r.ok:
                continue
            where = f"`{r.layer}`" + (f" (input from `{r.source}`)" if r.source else "")
            if r.max_abs >= r.bound:
                out.append(f"{r.op} in {where} sees |x| up to {r.max_abs:.4g}, beyond its bound {r.bound:.4g} "
                           f"({LIMITS[r.limit].rule})")
            else:
                out.append(f"{r.op} in {where} sees values as small as {r.min_abs:.3g}: below 2^(4 - precision_bits), "
                           "where its result keeps few significant bits")
        return out

    def message(self) -> str:
        lines = [f"Pre-flight at precision_bits={self.precision_bits}, compare_bits={self.compare_bits}: "
                 f"{len(self.problems())} op(s) out of range on the calibration data:"]
        lines += [f"  - {p}" for p in self.problems()]
        if self.suggested_precision_bits is not None:
            lines.append(f"Settings with which every limit holds (>= {HEADROOM_BITS:g} bit to spare): "
                         f"precision_bits={self.suggested_precision_bits}, compare_bits={self.suggested_compare_bits}.")
        else:
            lines.append("No setting of precision_bits and compare_bits holds every limit: scale the inputs or the "
                         "layer down (e.g. normalize the inputs, or add a normalization layer before it).")
        return "\n".join(lines)

    def raise_if_not_ok(self) -> None:
        if not self.ok:
            raise PreflightError(self.message())

    def __str__(self) -> str:
        head = ("layer", "op", "limit", "max |x|", "bound", "headroom", "")
        body = [(r.layer + (f" <- {r.source}" if r.source else ""), r.op, r.limit, f"{r.max_abs:.3g}", f"{r.bound:.3g}",
                 f"{r.headroom_bits:+.1f} bits", "ok" if r.ok else "OUT OF RANGE") for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [f"pre-flight: precision_bits={self.precision_bits}, compare_bits={self.compare_bits}, "
                 f"{self.batches} calibration batch(es): {'ok' if self.ok else 'NOT OK'}",
                 fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row) for row in body]
        agreement = "" if self.label_agreement is None else f", argmax agreement {self.label_agreement:.4f}"
        lines.append(f"fixed-point rounding error of the output: {self.output_error:.2e}{agreement}")
        if not self.ok:
            lines.append(self.message())
        lines += self.notes
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the plaintext passes
class _Layers(layer_names):
    """The current layer path (the secure forward's :class:`~lightning_smpc.forward.layer_names`), and which layer
    produced each module output (to name where an op's input came from)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(tensor) -> (layer, tensor kept alive)

    def _leave_layer(self, module, args, output) -> None:
        if id(module) in self.names and self.stack and isinstance(output, torch.Tensor):
            self.produced[id(output)] = (self.stack[-1], output)
        super()._leave_layer(module, args, output)

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else self.TOP


def _first_tensor(args: tuple) -> Optional[torch.Tensor]:
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def _limited_value(func, args: tuple, kwargs: dict, out: Any, applies_to: str) -> Optional[torch.Tensor]:
    if applies_to == "output":
        return out if isinstance(out, torch.Tensor) else _first_tensor(out if isinstance(out, tuple) else ())
    if func in _DIVISIONS:  # a division's limit is its denominator's (a public number has none)
        d = args[1] if len(args) > 1 else kwargs.get("other")
        return d if isinstance(d, torch.Tensor) and d.dim() > 0 else None
    if func is torch.nn.functional.scaled_dot_product_attention:  # its softmax compares the attention scores
        q, k = args[0], args[1]
        scale = kwargs.get("scale")
        return (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    return _first_tensor(args)


class _Recorder(TorchFunctionMode):
    """Records, per (layer, op), the magnitudes the limited ops see."""

    def __init__(self, layers: _Layers) -> None:
        super().__init__()
        self.layers = layers
        self.seen: dict[tuple, list] = {}  # (layer, op, limit) -> [max_abs, min_abs, source]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        limit = OP_LIMIT.get(func)
        if limit is not None:
            x = _limited_value(func, args, kwargs, out, LIMITS[limit].applies_to)
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel():
                self._note(func, limit, x.detach(), args)
        return out

    def _note(self, func, limit: str, x: torch.Tensor, args: tuple) -> None:
        mag = x.abs()
        key = (self.layers.current, _op_name(func), limit)
        entry = self.seen.setdefault(key, [0.0, math.inf, ""])
        entry[0] = max(entry[0], float(mag.max()))
        if LIMITS[limit].lower is not None:
            entry[1] = min(entry[1], float(mag.min()))
        first = _first_tensor(args)
        source = self.layers.produced.get(id(first)) if first is not None else None
        if source is not None and source[0] != key[0]:
            entry[2] = source[0]


class _Rounding(TorchFunctionMode):
    """Every floating-point result rounded down to ``2^-precision_bits``, as the fixed-point encoding does."""

    def __init__(self, precision_bits: int) -> None:
        super().__init__()
        self.scale = 2.0 ** precision_bits

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.is_floating_point() and not isinstance(out, nn.Parameter):
            with torch._C.DisableTorchFunction():
                return torch.floor(out * self.scale) / self.scale
        return out


def _op_name(func) -> str:
    name = resolve_name(func) or getattr(func, "__name__", repr(func))
    return name.replace("torch.nn.functional.", "F.").replace("torch.Tensor.", "Tensor.")


def _batches(data: Any, max_batches: int) -> list:
    """A batch (a tensor, a tuple/dict, or a list of tensors), a dataloader (its first batches) or a datamodule."""
    if isinstance(data, (torch.Tensor, dict, tuple)) or (isinstance(data, list) and data and
                                                         all(isinstance(t, torch.Tensor) for t in data)):
        return [data]
    if hasattr(data, "predict_dataloader") and hasattr(data, "setup"):  # a LightningDataModule
        data.setup("predict")
        data = data.predict_dataloader()
    if isinstance(data, Iterable):
        return list(itertools.islice(iter(data), max_batches))
    raise TypeError(f"Expected a batch, a dataloader or a datamodule as calibration data, but got {type(data).__name__}.")


def _call(model: nn.Module, batch: Any, input_key, target_key) -> torch.Tensor:
    from lightning.pytorch import LightningModule

    if isinstance(model, LightningModule) and type(model).predict_step is not LightningModule.predict_step:
        return model.predict_step(batch, 0)
    args, kwargs = forward_arguments(split_batch(batch, input_key, target_key)[0])  # as the secure run calls it
    return model(*args, **kwargs)


def _encoding_rows(model: nn.Module, batches: list, input_key, target_key, f: int, c: int) -> list[PreflightRow]:
    rows = []
    weights = [p.detach().abs().max() for p in model.parameters() if p.numel()]
    inputs = []
    for b in batches:
        x = split_batch(b, input_key, target_key)[0]
        xs = x.values() if isinstance(x, dict) else [x]
        inputs += [t.detach().abs().max() for t in xs if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    for layer, values in (("(inputs)", inputs), ("(weights)", weights)):
        if values:
            rows.append(_row(layer, "share", "encoding", float(max(values)), None, "", f, c))
    return rows


def _row(layer: str, op: str, limit: str, max_abs: float, min_abs: Optional[float], source: str, f: int, c: int) -> PreflightRow:
    spec = LIMITS[limit]
    bound = spec.upper(f, c)
    headroom = math.log2(bound / max_abs) if max_abs > 0 else math.inf
    ok = headroom >= HEADROOM_BITS
    if spec.lower is not None and min_abs is not None and min_abs < spec.lower(f, c):
        ok = False
    return PreflightRow(layer, op, limit, max_abs, bound, round(headroom, 2), ok,
                        min_abs if spec.lower is not None else None, source)


def _valid_settings(f: int, c: int) -> bool:
    try:
        RingConfig(f, c)
    except ValueError:
        return False
    return True


def _suggest(rows: list[PreflightRow], f0: int, c0: int) -> tuple[Optional[int], Optional[int]]:
    """The valid (precision_bits, compare_bits) closest to the requested ones with which every row is ok."""
    best = None
    for f in range(8, 31):  # RingConfig: precision_bits in [1, 30]
        for c in range(4, 57, 4):
            if not _valid_settings(f, c):
                continue
            if all(_row(r.layer, r.op, r.limit, r.max_abs, r.min_abs, r.source, f, c).ok for r in rows):
                cost = (abs(f - f0) * 4 + abs(c - c0), -f)  # keep the precision if possible, then the fewest changes
                if best is None or cost < best[0]:
                    best = (cost, f, c)
    return (best[1], best[2]) if best else (None, None)


def preflight(model: nn.Module, data: Any, precision_bits: int = 16, compare_bits: int = 32,
              input_key: Any = None, target_key: Any = None, max_batches: int = 4) -> PreflightReport:
    """Check, in plaintext on calibration data, that every value the secure run computes stays in its range.

    Args:
        model: the model (a LightningModule or any ``nn.Module``), in eval mode for the pass.
        data: a batch (tensor, tuple or dict), a dataloader (its first ``max_batches`` batches) or a datamodule
            (its predict dataloader). Plaintext: only a party that may see it should run this.
        precision_bits / compare_bits: the settings to check (as ``SecurePredictStrategy``'s).
        input_key / target_key: where inputs sit in a batch (as ``SecurePredictStrategy``'s).

    Returns a :class:`PreflightReport`: per layer and limited op, the largest magnitude seen and its headroom in
    bits; the output's fixed-point rounding error; ``ok``; and ``suggested_precision_bits`` /
    ``suggested_compare_bits``, the closest valid settings with which every limit holds with a bit to spare.
    """
    batches = _batches(data, max_batches)
    if not batches:
        raise ValueError("The calibration data is empty: pass a batch, or a dataloader with at least one batch.")
    training = model.training
    model.eval()
    layers = _Layers(model)
    recorder = _Recorder(layers)
    errors, agree, total = [], 0, 0
    rounded_params = _rounded_params(model, precision_bits)  # the weights as the secure run encodes them, once
    try:
        with torch.no_grad():
            for batch in batches:
                with layers, recorder:
                    plain = _call(model, batch, input_key, target_key)
                layers.produced.clear()
                rounded = _rounded_pass(model, batch, input_key, target_key, rounded_params, precision_bits)
                if isinstance(plain, torch.Tensor) and isinstance(rounded, torch.Tensor):
                    errors.append(float((rounded.double() - plain.double()).abs().max()))
                    if plain.dim() >= 1 and plain.shape[-1] > 1:
                        agree += int((rounded.argmax(-1) == plain.argmax(-1)).sum())
                        total += plain.argmax(-1).numel()
    finally:
        model.train(training)
    f, c = precision_bits, compare_bits
    rows = _encoding_rows(model, batches, input_key, target_key, f, c)
    rows += [_row(layer, op, limit, mx, None if mn == math.inf else mn, src, f, c)
             for (layer, op, limit), (mx, mn, src) in recorder.seen.items()]
    sf, sc = _suggest(rows, f, c)
    notes = ["(the bounds are the protocols'; an approximated function adds its own error, stated in its op note)"]
    return PreflightReport(f, c, rows, max(errors) if errors else 0.0, agree / total if total else None, sf, sc,
                           len(batches), notes)


def _rounded_params(model: nn.Module, f: int) -> dict[str, torch.Tensor]:
    scale = 2.0 ** f
    return {n: torch.floor(t * scale) / scale for n, t in itertools.chain(model.named_parameters(), model.named_buffers())
            if t.is_floating_point()}


def _rounded_pass(model: nn.Module, batch: Any, input_key, target_key, params: dict, f: int) -> Any:
    with _Rounding(f):
        return torch.func.functional_call(_Caller(model, input_key, target_key), {f"m.{k}": v for k, v in params.items()},
                                          (batch,), strict=False)


class _Caller(nn.Module):
    def __init__(self, model: nn.Module, input_key, target_key) -> None:
        super().__init__()
        self.m, self.keys = model, (input_key, target_key)

    def forward(self, batch):
        return _call(self.m, batch, *self.keys)
