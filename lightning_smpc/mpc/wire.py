"""What crosses between processes, without a general object serializer.

**Dealer requests** (party 0 -> dealer) are canonical JSON bytes (sorted keys, no spaces, ASCII) of
``{"kind", "params", "refs"}``: ``kind`` from an allow-list, ``params`` checked against a per-kind schema
(nested ints, strings, null; shapes with dims >= 0 and bounded numel; Beaver ops and conv2d keyword
arguments allow-listed; shape transforms limited to reshape/permute/basic indexing), ``refs`` ints or null.
Decoding rejects anything else (floats, booleans, unknown keys, duplicate keys, non-canonical text, ...)
with a :class:`WireError`; JSON arrays come back as tuples, so a decoded request equals the original.

**Material** (dealer -> each party) carries no header to trust: every party derives its
:func:`material_layout` — the ids of the masks the request creates (a small int64 tensor), then
``(key, dtype, shape)`` of each of its shares in a canonical order — from the request itself (a pure
function of the request, the party's index and the comparison range). The dealer sends exactly those
tensors, which the party decrypts into preallocated buffers. The input owner's clear mask
(``owner_mask``) is in the owner's layout only.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .dealer import DIGIT_BITS, Material, Request
from .errors import SmpcError

__all__ = [
    "WireError", "encode_request", "decode_request", "validate_request", "request_digest", "Slot", "Layout",
    "material_layout", "material_tensors", "material_from", "MAX_NUMEL", "MAX_REQUEST_BYTES",
]

MAX_DIMS = 16
MAX_NUMEL = 1 << 31  # elements of any one tensor a request may make the dealer generate
MAX_REQUEST_BYTES = 1 << 24
MAX_TRANSFORM_STEPS = 64
MAX_INT = (1 << 62) - 1
KINDS = ("input_mask", "beaver", "trunc", "cmp")
BEAVER_OPS = ("mul", "matmul", "linear", "conv2d")
CONV_KWARGS = {"dilation": 1, "groups": 1, "padding": 0, "stride": 1}  # name -> minimum value
CMP_MODES = ("mask", "trunc")
CMP_USES = ("bit", "relu", "argmax")
TRANSFORMS = ("reshape", "permute", "getitem")


class WireError(SmpcError, ValueError):
    """A message between processes is malformed or outside what the protocol allows."""


# ---------------------------------------------------------------------------------------------- JSON
def _to_json(x, path: str):
    if isinstance(x, (tuple, list)):
        return [_to_json(v, f"{path}[{i}]") for i, v in enumerate(x)]
    if x is None or isinstance(x, str) or (isinstance(x, int) and not isinstance(x, bool)):
        return x
    raise WireError(f"{path}: {type(x).__name__} {x!r} cannot go on the wire (ints, strings, null and lists only).")


def _from_json(x):
    return tuple(_from_json(v) for v in x) if isinstance(x, list) else x


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _reject_float(s):
    raise WireError(f"number {s!r}: floats are not allowed in a request")


def _reject_constant(s):
    raise WireError(f"{s!r} is not allowed in a request")


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise WireError(f"duplicate keys in {keys}")
    return dict(pairs)


# ---------------------------------------------------------------------------------------------- validation
def _int(x, what: str, lo: int = -MAX_INT, hi: int = MAX_INT) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
        raise WireError(f"{what}: expected an integer in [{lo}, {hi}], got {x!r}.")
    return x


def _tuple(x, what: str, n: int | None = None) -> tuple:
    if not isinstance(x, tuple) or (n is not None and len(x) != n):
        raise WireError(f"{what}: expected a list{'' if n is None else f' of {n}'}, got {x!r}.")
    return x


def _shape(x, what: str) -> tuple:
    _tuple(x, what)
    if len(x) > MAX_DIMS:
        raise WireError(f"{what}: at most {MAX_DIMS} dims, got {len(x)}.")
    for i, d in enumerate(x):
        _int(d, f"{what}[{i}]", 0, MAX_NUMEL)
    _numel(x, what)
    return x


def _numel(shape, what: str) -> int:
    n = math.prod(shape)
    if n > MAX_NUMEL:
        raise WireError(f"{what}: {tuple(shape)} has {n} elements, more than the limit {MAX_NUMEL}.")
    return n


def _choice(x, options, what: str) -> str:
    if not isinstance(x, str) or x not in options:
        raise WireError(f"{what}: expected one of {tuple(options)}, got {x!r}.")
    return x


def _transform(tf, what: str) -> None:
    _tuple(tf, what)
    if len(tf) > MAX_TRANSFORM_STEPS:
        raise WireError(f"{what}: at most {MAX_TRANSFORM_STEPS} steps, got {len(tf)}.")
    for i, step in enumerate(tf):
        w = f"{what}[{i}]"
        name, arg = _tuple(step, w, 2)
        _choice(name, TRANSFORMS, f"{w} name")
        if name == "reshape":
            _shape(arg, f"{w} shape")
        elif name == "permute":
            _tuple(arg, f"{w} dims")
            if sorted(_int(d, f"{w} dim", 0, MAX_DIMS) for d in arg) != list(range(len(arg))):
                raise WireError(f"{w}: {arg!r} is not a permutation.")
        else:
            _tuple(arg, f"{w} index")
            if len(arg) > MAX_DIMS + 1:
                raise WireError(f"{w}: index with more than {MAX_DIMS + 1} items.")
            for j, item in enumerate(arg):
                iw = f"{w} index[{j}]"
                _tuple(item, iw)
                tag = _choice(item[0] if item else None, ("i", "s", "n", "e"), iw)
                if tag == "i":
                    _tuple(item, iw, 2)
                    _int(item[1], iw)
                elif tag == "s":
                    _tuple(item, iw, 4)
                    for v in item[1:]:
                        if v is not None:
                            _int(v, iw)
                    if item[3] is not None and item[3] < 1:
                        raise WireError(f"{iw}: slice step must be positive, got {item[3]}.")
                elif len(item) != 1:
                    raise WireError(f"{iw}: expected [{tag!r}], got {item!r}.")


def _conv_kwargs(kwargs, what: str) -> dict:
    _tuple(kwargs, what)
    names = []
    out = {}
    for i, kv in enumerate(kwargs):
        name, value = _tuple(kv, f"{what}[{i}]", 2)
        _choice(name, CONV_KWARGS, f"{what}[{i}] name")
        lo = CONV_KWARGS[name]
        if name == "groups":
            _int(value, f"{what} groups", lo, 1 << 20)
        else:
            for v in _tuple(value, f"{what} {name}", 2):
                _int(v, f"{what} {name}", lo, 1 << 20)
        names.append(name)
        out[name] = value
    if names != sorted(set(names)):
        raise WireError(f"{what}: keyword arguments must be unique and sorted, got {names}.")
    return out


def _refs(refs, n: int) -> tuple:
    _tuple(refs, "refs", n)
    for r in refs:
        if r is not None:
            _int(r, "refs", 0, MAX_INT)
    return refs


def validate_request(req: Request, parties: Sequence[str] | None = None) -> None:
    """Raise :class:`WireError` unless ``req`` fits the schema of its kind (see the module docstring)."""
    if not isinstance(req, Request):
        raise WireError(f"Expected a Request, got {type(req).__name__}.")
    kind = _choice(req.kind, KINDS, "kind")
    p = req.params
    if kind == "input_mask":
        shape, owner = _tuple(p, "input_mask params", 2)
        _shape(shape, "input_mask shape")
        if not isinstance(owner, str) or (parties is not None and owner not in parties):
            raise WireError(f"input_mask owner: expected a compute party {tuple(parties or ())}, got {owner!r}.")
        _refs(req.refs, 0)
    elif kind == "beaver":
        op, kwargs, sx, sy, tfx, tfy = _tuple(p, "beaver params", 6)
        _choice(op, BEAVER_OPS, "beaver op")
        if op == "conv2d":
            _conv_kwargs(kwargs, "beaver conv2d kwargs")
        elif _tuple(kwargs, "beaver kwargs"):
            raise WireError(f"beaver {op}: takes no keyword arguments, got {kwargs!r}.")
        _shape(sx, "beaver shape_x")
        _shape(sy, "beaver shape_y")
        _transform(tfx, "beaver transform_x")
        _transform(tfy, "beaver transform_y")
        for ref, tf, side in zip(_refs(req.refs, 2), (tfx, tfy), "xy"):
            if ref is None and tf:
                raise WireError(f"beaver: a fresh mask for {side} cannot carry a transform ({tf!r}).")
        _beaver_out_shape(op, kwargs, sx, sy)
    elif kind == "trunc":
        shape, m = _tuple(p, "trunc params", 2)
        _shape(shape, "trunc shape")
        _int(m, "trunc bits", 0, 62)
        _refs(req.refs, 0)
    else:
        shape, mode, m, pairs, use = _tuple(p, "cmp params", 5)
        _shape(shape, "cmp shape")
        _choice(mode, CMP_MODES, "cmp mode")
        _int(m, "cmp bits", 1 if mode == "trunc" else 0, 62 if mode == "trunc" else 0)
        _choice(use, CMP_USES, "cmp use")
        if (pairs is not None or use == "argmax") and not shape:
            raise WireError(f"cmp {use}: a scalar has no last dim to compare within.")
        if pairs is not None:
            _tuple(pairs, "cmp pairs")
            _numel(tuple(shape[:-1]) + (len(pairs),), "cmp pairs")
            last = shape[-1]
            for i, pair in enumerate(pairs):
                a, b = _tuple(pair, f"cmp pairs[{i}]", 2)
                _int(a, f"cmp pairs[{i}]", 0, last - 1)
                _int(b, f"cmp pairs[{i}]", 0, last - 1)
        _refs(req.refs, 0)


def _meta(shape) -> torch.Tensor:
    return torch.empty(tuple(shape), device="meta")


def _beaver_out_shape(op: str, kwargs, sx, sy) -> tuple:
    try:
        if op == "mul":
            out = tuple(torch.broadcast_shapes(tuple(sx), tuple(sy)))
        elif op == "matmul":
            out = tuple(torch.matmul(_meta(sx), _meta(sy)).shape)
        elif op == "linear":
            out = tuple(torch.matmul(_meta(sx), _meta(sy).transpose(-1, -2)).shape)
        else:
            out = tuple(F.conv2d(_meta(sx), _meta(sy), **dict(kwargs)).shape)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise WireError(f"beaver {op}: operand shapes {tuple(sx)} and {tuple(sy)} do not combine ({e}).") from None
    _numel(out, f"beaver {op} product")
    return out


# ---------------------------------------------------------------------------------------------- requests
def encode_request(req: Request, parties: Sequence[str] | None = None) -> bytes:
    """Canonical JSON bytes of a validated request."""
    validate_request(req, parties)
    data = _canonical({"kind": req.kind, "params": _to_json(req.params, "params"), "refs": _to_json(req.refs, "refs")})
    if len(data) > MAX_REQUEST_BYTES:
        raise WireError(f"request of {len(data)} bytes is larger than the limit {MAX_REQUEST_BYTES}.")
    return data


def decode_request(data: bytes | bytearray | memoryview | torch.Tensor, parties: Sequence[str] | None = None) -> Request:
    """The request in ``data`` (bytes or a uint8 tensor) or :class:`WireError`: only canonical, valid requests pass."""
    if isinstance(data, torch.Tensor):
        if data.dtype != torch.uint8 or data.dim() != 1:
            raise WireError(f"Expected a 1-D uint8 tensor, got {data.dtype} {tuple(data.shape)}.")
        data = data.numpy().tobytes()
    data = bytes(data)
    if len(data) > MAX_REQUEST_BYTES:
        raise WireError(f"request of {len(data)} bytes is larger than the limit {MAX_REQUEST_BYTES}.")
    try:
        obj = json.loads(data.decode("ascii"), parse_float=_reject_float, parse_constant=_reject_constant,
                         object_pairs_hook=_unique_keys)
    except WireError as e:
        raise WireError(f"Rejected dealer request: {e}.") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WireError(f"Rejected dealer request: not canonical JSON ({type(e).__name__}: {e}).") from None
    if not isinstance(obj, dict) or set(obj) != {"kind", "params", "refs"}:
        raise WireError(f"Rejected dealer request: expected exactly the keys kind, params, refs; got {obj!r:.200}.")
    if _canonical(obj) != data:
        raise WireError("Rejected dealer request: not in canonical form (sorted keys, no whitespace, ASCII).")
    if not isinstance(obj["params"], list) or not isinstance(obj["refs"], list):
        raise WireError("Rejected dealer request: params and refs must be lists.")
    req = Request(obj["kind"], _from_json(obj["params"]), _from_json(obj["refs"]))
    try:
        validate_request(req, parties)
    except WireError as e:
        raise WireError(f"Rejected dealer request: {e}") from None
    return req


def request_digest(data: bytes) -> str:
    """A short hex digest of an encoded request (bound into the material messages' authentication tag)."""
    return hashlib.sha256(data).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------- material
@dataclass(frozen=True)
class Slot:
    """One tensor of a party's material: ``data[key]`` (or ``data[key][index]`` for a tuple entry)."""

    key: str
    index: int | None
    shape: tuple
    dtype: torch.dtype


@dataclass(frozen=True)
class Layout:
    """What one party receives for one request: ``n_created`` mask ids, then ``slots`` in this order."""

    n_created: int
    mask_keys: tuple
    slots: tuple

    def specs(self) -> list[tuple[tuple, torch.dtype]]:
        """``(shape, dtype)`` of every tensor of the message: the created ids first, then the slots."""
        return [((self.n_created,), torch.int64)] + [(s.shape, s.dtype) for s in self.slots]

    @property
    def nbytes(self) -> int:
        return 8 * self.n_created + sum(math.prod(s.shape) * torch.empty((), dtype=s.dtype).element_size() for s in self.slots)


def material_layout(req: Request, party: int, parties: Sequence[str], compare_bits: int) -> Layout:
    """The material party ``party`` (index into ``parties``) receives for ``req`` — a pure function.

    Shares keep a party axis of length 1 (``[1, *shape]``); the input owner's clear mask has none.
    """
    validate_request(req, parties)
    i64, u8 = torch.int64, torch.uint8
    slots: list[Slot] = []

    def share(key, shape, dtype=i64, index=None):
        shape = tuple(shape)
        _numel(shape, f"{req.kind} material {key}")
        slots.append(Slot(key, index, (1,) + shape, dtype))

    p = req.params
    if req.kind == "input_mask":
        shape, owner = p
        share("a", shape)
        if parties[party] == owner:
            slots.append(Slot("owner_mask", None, tuple(shape), i64))
        return Layout(1, ("a",), tuple(slots))
    if req.kind == "beaver":
        op, kwargs, sx, sy, _, _ = p
        keys = []
        for key, shape, ref in (("a", sx, req.refs[0]), ("b", sy, req.refs[1])):
            if ref is None:
                share(key, shape)
                keys.append(key)
        share("c", _beaver_out_shape(op, kwargs, sx, sy))
        return Layout(len(keys), tuple(keys), tuple(slots))
    if req.kind == "trunc":
        shape, _ = p
        for key in ("r", "u", "r63"):
            share(key, shape)
        return Layout(0, (), tuple(slots))
    shape, mode, _, pairs, use = p
    shape = tuple(shape)
    if compare_bits % DIGIT_BITS or compare_bits <= 0:
        raise WireError(f"compare_bits must be a positive multiple of {DIGIT_BITS}, got {compare_bits}.")
    for key in (("r", "u", "r63") if mode == "trunc" else ("r",)):
        share(key, shape)
    cmp_shape = shape if pairs is None else shape[:-1] + (len(pairs),)
    n_digits = compare_bits // DIGIT_BITS
    share("gt_table", cmp_shape + (n_digits, 4))
    share("rj", cmp_shape, u8)
    width, level = n_digits, 0
    while width > 1:
        npairs = width // 2
        for k in range(3):
            share(f"and{level}", cmp_shape + (2 * npairs - 1,), u8, k)
        width, level = width - npairs, level + 1
    share("rho_x", cmp_shape, u8)
    share("rho_a", cmp_shape)
    if use == "relu":
        try:
            out = tuple(torch.broadcast_shapes(shape, cmp_shape))
        except RuntimeError as e:
            raise WireError(f"cmp relu: shapes {shape} and {cmp_shape} do not combine ({e}).") from None
        for key in (("u_rho", "r63_rho") if mode == "trunc" else ("r_rho",)):
            share(key, out)
    elif use == "argmax":
        mod = 1 << max(1, (shape[-1] - 1).bit_length())
        share("sigma", shape)
        for key in ("T",) + (("uT", "r63T") if mode == "trunc" else ("rT",)):
            share(key, shape + (mod,))
    return Layout(0, (), tuple(slots))


def material_tensors(mat: Material, layout: Layout, party: int, n: int) -> list[torch.Tensor]:
    """Dealer side: party ``party``'s tensors of ``mat`` in ``layout`` order (created ids first); raises if
    the generated material does not match the layout (a dealer/layout mismatch, i.e. a bug)."""
    if len(mat.created) != layout.n_created or tuple(mat.mask_keys) != layout.mask_keys:
        raise RuntimeError(f"dealer material created {mat.mask_keys} but the layout expects {layout.mask_keys}")
    expected = {s.key for s in layout.slots} | {"owner_mask"}
    extra = set(mat.data) - expected
    if extra:
        raise RuntimeError(f"dealer material has entries {sorted(extra)} that the wire layout does not know")
    out = [torch.tensor(list(mat.created), dtype=torch.int64)]
    for s in layout.slots:
        v = mat.data[s.key]
        if s.index is not None:
            v = v[s.index]
        if s.key != "owner_mask":
            if v.dim() == 0 or v.shape[0] != n:
                raise RuntimeError(f"dealer material {s.key} has no party axis of {n}: {tuple(v.shape)}")
            v = v[party : party + 1]
        if tuple(v.shape) != s.shape or v.dtype != s.dtype:
            raise RuntimeError(f"dealer material {s.key}: {v.dtype} {tuple(v.shape)}, layout says {s.dtype} {s.shape}")
        out.append(v)
    return out


def material_from(layout: Layout, tensors: Sequence[torch.Tensor]) -> Material:
    """Party side: the :class:`Material` made of the received tensors (created ids first)."""
    created = tuple(int(v) for v in tensors[0].tolist())
    data: dict[str, Any] = {}
    tuples: dict[str, dict[int, torch.Tensor]] = {}
    for s, t in zip(layout.slots, tensors[1:]):
        if s.index is None:
            data[s.key] = t
        else:
            tuples.setdefault(s.key, {})[s.index] = t
            data[s.key] = None  # keeps the canonical key order
    for k, parts in tuples.items():
        data[k] = tuple(parts[i] for i in range(len(parts)))
    return Material(data, created, layout.mask_keys)
