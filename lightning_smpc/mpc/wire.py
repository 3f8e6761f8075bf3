"""What crosses between processes, without a general object serializer.

**Dealer requests** (party 0 -> dealer) are canonical JSON bytes (sorted keys, no spaces, ASCII) of
``{"v", "kind", "params", "refs"}``: the format version :data:`WIRE_VERSION`, ``kind`` one of the registered
material kinds (:data:`~.kinds.KINDS`), ``params`` an object of the kind's parameter fields by name, checked
against the kind's schema (nested ints, strings, null; shapes with dims >= 0 and bounded numel; Beaver ops and
conv2d keyword arguments allow-listed; shape transforms limited to reshape/permute/basic indexing), ``refs`` ints
or null. Decoding rejects anything else (another version, floats, booleans, unknown or missing keys, duplicate
keys, non-canonical text, ...) with a :class:`WireError`; JSON arrays come back as tuples, so a decoded request
equals the original.

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
from typing import Any, Sequence

import numpy as np
import torch

from .errors import WireError
from .kinds import KINDS, OWNER_SEEDS, Layout, LayoutBuilder, Slot, expand_seeded, kind_of, narrow
from .kinds._schema import MAX_NUMEL
from .config import RingConfig
from .material import Material, Request
from .prg import SEED_BYTES

__all__ = [
    "WireError", "encode_request", "decode_request", "validate_request", "request_digest", "Slot", "Layout",
    "material_layout", "material_tensors", "material_from", "expand_seeded", "MAX_NUMEL", "MAX_REQUEST_BYTES",
    "MAX_MATERIAL_BYTES", "check_material_size", "WIRE_VERSION", "narrow",
]

WIRE_VERSION = 2  # 1: params as a positional list; 2: params by field name, the version in every request
MAX_REQUEST_BYTES = 1 << 24
# The most bytes of material (one party's, seeded shares expanded: about what the dealer allocates per party) that
# one request may ask for: a bound on the dealer's memory against a malformed or hostile request (a valid 53-byte
# request could otherwise ask for ~96 GiB). LeNet-5 on a batch of 1000 asks for at most 0.47 GB (its first ReLU).
MAX_MATERIAL_BYTES = 4 << 30


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
def validate_request(req: Request, parties: Sequence[str] | None = None) -> None:
    """Raise :class:`WireError` unless ``req`` fits the schema of its kind (see :mod:`.kinds`)."""
    if not isinstance(req, Request):
        raise WireError(f"Expected a Request, got {type(req).__name__}.")
    kind_of(req).check(req, parties)


# ---------------------------------------------------------------------------------------------- requests
def encode_request(req: Request, parties: Sequence[str] | None = None) -> bytes:
    """Canonical JSON bytes of a validated request."""
    validate_request(req, parties)
    names = KINDS[req.kind].field_names()
    params = {name: _to_json(v, f"params.{name}") for name, v in zip(names, req.params)}
    data = _canonical({"v": WIRE_VERSION, "kind": req.kind, "params": params, "refs": _to_json(req.refs, "refs")})
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
    if not isinstance(obj, dict) or set(obj) != {"v", "kind", "params", "refs"}:
        raise WireError(f"Rejected dealer request: expected exactly the keys v, kind, params, refs; got {obj!r:.200}.")
    if obj["v"] != WIRE_VERSION:
        raise WireError(f"Rejected dealer request: wire format version {obj['v']!r}, this process speaks "
                        f"{WIRE_VERSION} (every role must run the same lightning_smpc version).")
    if _canonical(obj) != data:
        raise WireError("Rejected dealer request: not in canonical form (sorted keys, no whitespace, ASCII).")
    try:
        names = kind_of(obj["kind"]).field_names()
        if not isinstance(obj["params"], dict) or not isinstance(obj["refs"], list):
            raise WireError("params must be an object (fields by name) and refs a list.")
        if set(obj["params"]) != set(names):
            raise WireError(f"{obj['kind']} params: expected the fields {names}, got {sorted(obj['params'])}.")
        req = Request(obj["kind"], tuple(_from_json(obj["params"][n]) for n in names), _from_json(obj["refs"]))
        validate_request(req, parties)
    except WireError as e:
        raise WireError(f"Rejected dealer request: {e}") from None
    return req


def request_digest(data: bytes) -> str:
    """A short hex digest of an encoded request (bound into the material messages' authentication tag)."""
    return hashlib.sha256(data).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------- material
def material_layout(req: Request, party: int, parties: Sequence[str], ring: RingConfig, check: bool = True) -> Layout:
    """The material party ``party`` (index into ``parties``) receives for ``req`` — a pure function.

    Shares keep a party axis of length 1 (``[1, *shape]``); the input owner's clear mask has none.
    Parties ``1..n-1`` expand every share from their seed. The first party expands the *uniform* shares
    (masks, Beaver operands, the AND triples' inputs, the daBit's XOR side: their value is defined as the sum
    of the parties' seeded shares) and receives the correction of every correlated one. ``ring``: the parties'
    :class:`~.config.RingConfig` (the comparison material's digits follow it). ``check=False``
    skips the request validation (the in-process dealer, whose input owner may be outside the parties).
    """
    if check:
        validate_request(req, parties)
    fresh = tuple(r is None for r in req.refs)  # the only thing of the mask ids a layout depends on
    return _layout(req.kind, req.params, fresh, party, tuple(parties), ring)


def check_material_size(req: Request, parties: Sequence[str], ring: RingConfig,
                        limit: int = MAX_MATERIAL_BYTES) -> None:
    """Refuse (before anything is generated) a request whose material exceeds ``limit`` bytes per party."""
    layout = material_layout(req, 0, parties, ring)
    size = sum(math.prod(s.shape) * torch.empty((), dtype=s.dtype).element_size() for s in layout.slots)
    if size > limit:
        raise WireError(
            f"Refused a {req.kind!r} request: its material is {size / 2**30:.2f} GiB per party, more than the dealer's "
            f"limit of {limit / 2**30:.2f} GiB (max_material_bytes). Smaller batches need proportionally less; raise "
            "the limit on the crypto provider only if it has that memory to spare.")


@functools.lru_cache(maxsize=4096)  # every batch of a run asks for the same requests (a pure function)
def _layout(kind: str, params: tuple, fresh: tuple, party: int, parties: tuple, ring: RingConfig) -> Layout:
    k = KINDS[kind]
    return k.layout(k.Params(*params), fresh, LayoutBuilder(kind, party, parties, ring))


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """0/1 uint8 values packed 8 per byte (little-endian within a byte)."""
    return torch.from_numpy(np.packbits(bits.reshape(-1).numpy(), bitorder="little"))


def unpack_bits(packed: torch.Tensor, shape: tuple) -> torch.Tensor:
    n = math.prod(shape)
    return torch.from_numpy(np.unpackbits(packed.numpy(), count=n, bitorder="little")).reshape(shape)


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
