"""What crosses between processes, without a general object serializer.

**Dealer requests** (party 0 -> dealer) are canonical JSON bytes (sorted keys, no spaces, ASCII) of
``{"kind", "params", "refs"}``: ``kind`` from an allow-list, ``params`` checked against a per-kind schema
(nested ints, strings, null; shapes with dims >= 0 and bounded numel; Beaver ops and conv2d keyword
arguments allow-listed; shape transforms limited to reshape/permute/basic indexing), ``refs`` ints or null.
Decoding rejects anything else (floats, booleans, unknown keys, duplicate keys, non-canonical text, ...)
with a :class:`WireError`; JSON arrays come back as tuples, so a decoded request equals the original.

**Material** (dealer -> each party) carries no header to trust: every party derives its
:func:`material_layout` — the ids of the masks the request creates (a small int64 tensor), its seed, then
``(key, dtype, shape)`` of each of its shares in a canonical order and whether it comes from the seed or on
the wire — from the request itself (a pure function of the request, the party's index, the comparison range
and digit size). The dealer draws a fresh 16-byte seed per request and party; parties ``1..n-1`` expand
all their shares from it (AES-CTR, :func:`expand_seeded`), so their message is the ids and the seed; the
first party expands the uniform shares and receives the correction of every correlated one (bits packed,
shares needed only modulo ``2**k`` in a narrow type). The input owner gets every party's seed of its input
mask (``owner_seeds``, 16 bytes per party instead of the mask's 8 bytes per element) and expands the mask
itself (``owner_mask`` in its material): it learns how the mask is split between the parties, as an owner that
secret-shares its input itself does; every later value's shares involve dealer randomness it does not hold.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .material import DIGIT_BITS, DIGIT_CHOICES, Material, Request, gt_table_spec
from .errors import SmpcError
from .prg import SEED_BYTES, CSPRNG

__all__ = [
    "WireError", "encode_request", "decode_request", "validate_request", "request_digest", "Slot", "Layout",
    "material_layout", "material_tensors", "material_from", "expand_seeded", "MAX_NUMEL", "MAX_REQUEST_BYTES", "MAX_MATERIAL_BYTES", "check_material_size",
]

MAX_DIMS = 16
MAX_NUMEL = 1 << 31  # elements of any one tensor a request may make the dealer generate
MAX_REQUEST_BYTES = 1 << 24
# The most bytes of material (one party's, seeded shares expanded: about what the dealer allocates per party) that
# one request may ask for: a bound on the dealer's memory against a malformed or hostile request (a valid 53-byte
# request could otherwise ask for ~96 GiB). LeNet-5 on a batch of 1000 asks for at most 0.47 GB (its first ReLU).
MAX_MATERIAL_BYTES = 4 << 30
MAX_TRANSFORM_STEPS = 64
MAX_INT = (1 << 62) - 1
KINDS = ("input_mask", "beaver", "trunc", "cmp")
OWNER_SEEDS = "owner_seeds"
BEAVER_OPS = ("mul", "matmul", "linear", "conv2d")
CONV_KWARGS = {"dilation": 1, "groups": 1, "padding": 0, "stride": 1}  # name -> minimum value
CMP_MODES = ("mask", "trunc")
CMP_USES = ("bit", "relu", "argmax", "thresholds")
MAX_THRESHOLDS = 4096  # comparisons of one value against public thresholds in one request
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
        if use == "thresholds":  # ``pairs`` holds the number of thresholds each element is compared with
            if mode != "mask":
                raise WireError("cmp thresholds: only the mask mode (no fused truncation) is supported.")
            _int(pairs, "cmp thresholds", 1, MAX_THRESHOLDS)
            _numel(tuple(shape) + (pairs,), "cmp thresholds")
        elif (pairs is not None or use == "argmax") and not shape:
            raise WireError(f"cmp {use}: a scalar has no last dim to compare within.")
        elif pairs is not None:
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
def _narrow_dtype(bits: int) -> torch.dtype | None:
    """The smallest integer type that carries a share needed modulo ``2**bits`` only (None: all 64 bits)."""
    return torch.int16 if bits <= 16 else torch.int32 if bits <= 32 else None


def narrow(v: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``v`` reduced to the signed range of ``dtype`` (congruent modulo its width), still int64; ``v`` for None."""
    if dtype is None:
        return v
    half = 1 << (8 * torch.empty((), dtype=dtype).element_size() - 1)
    return ((v + half) & (2 * half - 1)) - half


@dataclass(frozen=True)
class Slot:
    """One tensor of a party's material: ``data[key]`` (or ``data[key][index]`` for a tuple entry).

    ``seeded``: the party expands it from its seed (nothing on the wire). Otherwise it is on the wire: bit
    shares (``uint8`` 0/1) packed 8 per byte, and a share needed only modulo ``2**k`` (``wire_dtype`` set) as
    that narrow type, sign-extended back to int64 by the receiver. ``owner_seeds`` (the input owner's copy of
    every party's seed of its mask) is not a share: raw bytes.
    """

    key: str
    index: int | None
    shape: tuple
    dtype: torch.dtype
    seeded: bool = False
    wire_dtype: torch.dtype | None = None

    @property
    def is_share(self) -> bool:
        return self.key != OWNER_SEEDS

    def wire_spec(self) -> tuple[tuple, torch.dtype]:
        if self.dtype == torch.uint8 and self.is_share:  # bits
            return ((math.prod(self.shape) + 7) // 8,), torch.uint8
        return self.shape, self.wire_dtype or self.dtype


@dataclass(frozen=True)
class Layout:
    """What one party gets for one request: ``n_created`` mask ids, a seed, then ``slots`` in this order.

    The message on the wire is the created ids, the party's :data:`~.prg.SEED_BYTES`-byte seed and the
    slots that are not ``seeded`` (see :meth:`specs`); the party expands the seeded slots from the seed,
    drawing them in slot order (:func:`expand_seeded`), exactly as the dealer did.
    """

    n_created: int
    mask_keys: tuple
    slots: tuple

    def wire_slots(self) -> list[Slot]:
        return [s for s in self.slots if not s.seeded]

    def specs(self) -> list[tuple[tuple, torch.dtype]]:
        """``(shape, dtype)`` of every tensor of the message: the created ids, the seed, the wire slots."""
        return [((self.n_created,), torch.int64), ((SEED_BYTES,), torch.uint8)] + [s.wire_spec() for s in self.wire_slots()]

    @property
    def nbytes(self) -> int:
        """Bytes of the message (before encryption)."""
        return sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size() for shape, dtype in self.specs())


def material_layout(req: Request, party: int, parties: Sequence[str], compare_bits: int, digit_bits: int = DIGIT_BITS,
                    check: bool = True) -> Layout:
    """The material party ``party`` (index into ``parties``) receives for ``req`` — a pure function.

    Shares keep a party axis of length 1 (``[1, *shape]``); the input owner's clear mask has none.
    Parties ``1..n-1`` expand every share from their seed. The first party expands the *uniform* shares
    (masks, Beaver operands, the AND triples' inputs, the daBit's XOR side: their value is defined as the sum
    of the parties' seeded shares) and receives the correction of every correlated one. ``check=False``
    skips the request validation (the in-process dealer, whose input owner may be outside the parties).
    """
    if check:
        validate_request(req, parties)
    fresh = tuple(r is None for r in req.refs)  # the only thing of the mask ids a layout depends on
    return _layout(req.kind, req.params, fresh, party, tuple(parties), compare_bits, digit_bits)


def check_material_size(req: Request, parties: Sequence[str], compare_bits: int, digit_bits: int = DIGIT_BITS,
                        limit: int = MAX_MATERIAL_BYTES) -> None:
    """Refuse (before anything is generated) a request whose material exceeds ``limit`` bytes per party."""
    layout = material_layout(req, 0, parties, compare_bits, digit_bits)
    size = sum(math.prod(s.shape) * torch.empty((), dtype=s.dtype).element_size() for s in layout.slots)
    if size > limit:
        raise WireError(
            f"Refused a {req.kind!r} request: its material is {size / 2**30:.2f} GiB per party, more than the dealer's "
            f"limit of {limit / 2**30:.2f} GiB (max_material_bytes). Smaller batches need proportionally less; raise "
            "the limit on the crypto provider only if it has that memory to spare.")


@functools.lru_cache(maxsize=4096)  # every batch of a run asks for the same requests (a pure function)
def _layout(kind: str, params: tuple, fresh: tuple, party: int, parties: tuple, compare_bits: int,
            digit_bits: int) -> Layout:
    req = Request(kind, params, tuple(None if f else 0 for f in fresh))
    i64, u8 = torch.int64, torch.uint8
    first = party == 0
    slots: list[Slot] = []

    def share(key, shape, dtype=i64, index=None, uniform=False, mod_bits=None):
        shape = tuple(shape)
        _numel(shape, f"{req.kind} material {key}")
        seeded = uniform or not first
        wire_dtype = None if seeded or mod_bits is None else _narrow_dtype(mod_bits)
        slots.append(Slot(key, index, (1,) + shape, dtype, seeded, wire_dtype))

    p = req.params
    if req.kind == "input_mask":
        shape, owner = p
        share("a", shape, uniform=True)
        if parties[party] == owner:  # every party's seed of the mask: the owner expands the mask itself
            slots.append(Slot(OWNER_SEEDS, None, (len(parties) * SEED_BYTES,), u8))
        return Layout(1, ("a",), tuple(slots))
    if req.kind == "beaver":
        op, kwargs, sx, sy, _, _ = p
        keys = []
        for key, shape, ref in (("a", sx, req.refs[0]), ("b", sy, req.refs[1])):
            if ref is None:
                share(key, shape, uniform=True)
                keys.append(key)
        share("c", _beaver_out_shape(op, kwargs, sx, sy))
        return Layout(len(keys), tuple(keys), tuple(slots))
    if req.kind == "trunc":
        shape, m = p
        share("r", shape, uniform=True)
        share("u", shape)
        share("r63", shape, mod_bits=m + 1)  # used as 2^(63-m) [r_63] only
        return Layout(0, (), tuple(slots))
    shape, mode, m, pairs, use = p
    shape = tuple(shape)
    if digit_bits not in DIGIT_CHOICES or compare_bits <= 0 or compare_bits % digit_bits:
        raise WireError(f"compare_bits must be a positive multiple of the digit size {digit_bits} (one of "
                        f"{DIGIT_CHOICES}), got compare_bits={compare_bits}.")
    share("r", shape, uniform=True)
    if mode == "trunc":
        share("u", shape)
        share("r63", shape, mod_bits=m + 1)
    # the tables follow the opened offsets (one per element; per pair for argmax); the carry tree's AND triples and
    # the daBits follow the comparisons (several per element against thresholds)
    if use == "thresholds":
        table_shape, cmp_shape = shape, shape + (pairs,)
    else:
        table_shape = cmp_shape = shape if pairs is None else shape[:-1] + (len(pairs),)
    n_digits = compare_bits // digit_bits
    words, table_dtype = gt_table_spec(digit_bits)
    share("gt_table", table_shape + (n_digits,) + words, table_dtype)
    share("rj", table_shape, u8)
    width, level = n_digits, 0
    while width > 1:
        npairs = width // 2
        for k in range(3):
            share(f"and{level}", cmp_shape + (2 * npairs - 1,), u8, k, uniform=k < 2)
        width, level = width - npairs, level + 1
    share("rho_x", cmp_shape, u8, uniform=True)
    share("rho_a", cmp_shape)
    if use == "relu":
        try:
            out = tuple(torch.broadcast_shapes(shape, cmp_shape))
        except RuntimeError as e:
            raise WireError(f"cmp relu: shapes {shape} and {cmp_shape} do not combine ({e}).") from None
        if mode == "trunc":
            share("u_rho", out)
            share("r63_rho", out, mod_bits=m + 1)
        else:
            share("r_rho", out)
    elif use == "argmax":
        mod = 1 << max(1, (shape[-1] - 1).bit_length())
        share("sigma", shape, mod_bits=mod.bit_length() - 1)  # opened modulo M only
        share("T", shape + (mod,))
        if mode == "trunc":
            share("uT", shape + (mod,))
            share("r63T", shape + (mod,), mod_bits=m + 1)
        else:
            share("rT", shape + (mod,))
    return Layout(0, (), tuple(slots))


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """0/1 uint8 values packed 8 per byte (little-endian within a byte)."""
    return torch.from_numpy(np.packbits(bits.reshape(-1).numpy(), bitorder="little"))


def unpack_bits(packed: torch.Tensor, shape: tuple) -> torch.Tensor:
    n = math.prod(shape)
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=n, bitorder="little")).reshape(shape)


def expand_seeded(layout: Layout, seed: bytes) -> dict[tuple, torch.Tensor]:
    """``{(key, index): tensor}`` of the layout's seeded slots, drawn from ``seed`` in slot order.

    The one expansion both sides run: the dealer (to make this party's shares before it computes the first
    party's corrections) and the party (to rebuild its material from the seed it received).
    """
    prg = CSPRNG.from_seed(seed)
    return {(s.key, s.index): prg.draw(s.shape, s.dtype) for s in layout.slots if s.seeded}


def owner_mask(layout: Layout, seeds: bytes) -> torch.Tensor:
    """The input owner's clear mask ``A``: the sum of every party's expansion of its seed of ``"a"``."""
    (a,) = [s for s in layout.slots if s.key == "a"]
    one = Layout(1, ("a",), (Slot("a", None, a.shape, a.dtype, True),))
    parts = [expand_seeded(one, seeds[i : i + SEED_BYTES])[("a", None)] for i in range(0, len(seeds), SEED_BYTES)]
    return torch.stack(parts).sum(0)[0]


def material_tensors(mat: Material, layout: Layout, party: int, n: int) -> list[torch.Tensor]:
    """Dealer side: the message for party ``party`` in ``layout`` order (created ids, seed, wire slots); raises
    if the generated material does not match the layout (a dealer/layout mismatch, i.e. a bug)."""
    if len(mat.created) != layout.n_created or tuple(mat.mask_keys) != layout.mask_keys:
        raise RuntimeError(f"dealer material created {mat.mask_keys} but the layout expects {layout.mask_keys}")
    if mat.seeds is None or len(mat.seeds) != n:
        raise RuntimeError("dealer material without the parties' seeds")
    expected = {s.key for s in layout.slots} | {"owner_mask"}  # owner_mask: what the owner expands owner_seeds into
    extra = set(mat.data) - expected
    if extra:
        raise RuntimeError(f"dealer material has entries {sorted(extra)} that the wire layout does not know")
    out = [torch.tensor(list(mat.created), dtype=torch.int64), torch.frombuffer(bytearray(mat.seeds[party]), dtype=torch.uint8)]
    for s in layout.wire_slots():
        if s.key == OWNER_SEEDS:
            out.append(torch.frombuffer(bytearray(b"".join(mat.seeds)), dtype=torch.uint8))
            continue
        v = mat.data[s.key]
        if s.index is not None:
            v = v[s.index]
        if s.key != "owner_mask":
            if v.dim() == 0 or v.shape[0] != n:
                raise RuntimeError(f"dealer material {s.key} has no party axis of {n}: {tuple(v.shape)}")
            v = v[party : party + 1]
        if tuple(v.shape) != s.shape or v.dtype != s.dtype:
            raise RuntimeError(f"dealer material {s.key}: {v.dtype} {tuple(v.shape)}, layout says {s.dtype} {s.shape}")
        if s.dtype == torch.uint8:
            v = pack_bits(v)
        elif s.wire_dtype is not None:
            if not torch.equal(narrow(v, s.wire_dtype), v):
                raise RuntimeError(f"dealer material {s.key} is not reduced to {s.wire_dtype}")
            v = v.to(s.wire_dtype)
        out.append(v)
    return out


def material_from(layout: Layout, tensors: Sequence[torch.Tensor]) -> Material:
    """Party side: the :class:`Material` rebuilt from the message (created ids, seed, wire slots)."""
    created = tuple(int(v) for v in tensors[0].tolist())
    seed = tensors[1].numpy().tobytes()
    seeded = expand_seeded(layout, seed)
    received = iter(tensors[2:])
    data: dict[str, Any] = {}
    tuples: dict[str, dict[int, torch.Tensor]] = {}
    for s in layout.slots:
        if s.seeded:
            t = seeded[(s.key, s.index)]
        elif s.key == OWNER_SEEDS:
            data["owner_mask"] = owner_mask(layout, next(received).numpy().tobytes())
            continue
        else:
            t = next(received)
            if s.dtype == torch.uint8:
                t = unpack_bits(t, s.shape)
            elif s.wire_dtype is not None:
                t = t.to(torch.int64)
        if s.index is None:
            data[s.key] = t
        else:
            tuples.setdefault(s.key, {})[s.index] = t
            data[s.key] = None  # keeps the canonical key order
    for k, parts in tuples.items():
        data[k] = tuple(parts[i] for i in range(len(parts)))
    return Material(data, created, layout.mask_keys)
