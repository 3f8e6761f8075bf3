"""Batches: where inputs and targets sit in a batch, and — with parties as processes — what the other parties
learn of the client's batches (their structure and shapes, never their values).

The client's process iterates the user's dataloader; before each batch it announces a small JSON header (batch
structure, input shape, whether targets are present) to the other compute parties, which iterate a placeholder
loader that yields :class:`PlaceholderBatch` objects built from those headers. An ``{"end": true}`` header ends
the run on every party, however the client's loop stopped (exhausted, ``limit_predict_batches``).
"""
from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import torch

__all__ = ["split_batch", "several_inputs", "is_integer_input", "ClientLoader", "PlaceholderLoader", "PlaceholderBatch",
           "PlaceholderInput", "batch_header"]

Key = Union[int, str]
_NONE = object()
_INPUT_KEYS = ("x", "input", "inputs", "image", "images")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")


def _keys(batch: Any, input_key: Optional[Key], target_key: Optional[Key]) -> tuple[str, Any, Any]:
    """(structure kind, input position, target position or None)."""
    from .mpc import ShareTensor

    if isinstance(batch, (torch.Tensor, ShareTensor)):
        return "tensor", None, None
    if isinstance(batch, Mapping):
        ik = input_key if input_key is not None else next((k for k in _INPUT_KEYS if k in batch), None)
        tk = target_key if target_key is not None else next((k for k in _TARGET_KEYS if k in batch), None)
        if ik is None or ik not in batch:
            raise KeyError(f"Cannot find the inputs in batch keys {list(batch)}; pass SecurePredictStrategy(input_key=...).")
        return "dict", ik, (tk if tk is not None and tk in batch else None)
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        ik = 0 if input_key is None else int(input_key)
        tk = (1 if len(batch) > 1 else None) if target_key is None else int(target_key)
        return ("tuple" if isinstance(batch, tuple) else "list"), ik, tk
    raise TypeError(f"Unsupported batch type {type(batch).__name__}: expected a tensor, a tuple/list or a dict.")


def several_inputs(input_key: Any) -> Optional[tuple]:
    """The input keys when a batch holds several inputs (``input_key`` a tuple or list of keys), else None."""
    if isinstance(input_key, (tuple, list)):
        if not input_key or len(set(input_key)) != len(input_key):
            raise ValueError(f"Expected distinct input keys, but got {input_key!r}.")
        return tuple(input_key)
    return None


def _several_target(batch: Any, keys: tuple, target_key: Optional[Key]) -> Optional[Key]:
    """Where a batch of several inputs holds its targets (None: no targets); a tuple/list batch's target defaults to
    the first position that is not an input."""
    if isinstance(batch, Mapping):
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"Cannot find the inputs {missing} in batch keys {list(batch)}; check `input_key`.")
        tk = target_key if target_key is not None else next((k for k in _TARGET_KEYS if k in batch), None)
        tk = tk if tk is not None and tk in batch else None
    elif isinstance(batch, Sequence) and not isinstance(batch, str):
        if not all(isinstance(k, int) and -len(batch) <= k < len(batch) for k in keys):
            raise KeyError(f"Expected input positions within a batch of {len(batch)}, but got {keys!r}.")
        tk = target_key if target_key is not None else next((i for i in range(len(batch)) if i not in keys), None)
    else:
        raise TypeError(f"Several inputs {keys!r} need a dict or tuple/list batch, but got {type(batch).__name__}.")
    return tk


def _split_several(batch: Any, keys: tuple, target_key: Optional[Key]):
    """Several inputs: ``({key: value}, targets or None, rebuild)``."""
    tk = _several_target(batch, keys, target_key)

    def rebuild(xs, y):
        items = dict(batch) if isinstance(batch, Mapping) else list(batch)
        for k in keys:
            items[k] = xs[k]
        if tk is not None:
            items[tk] = y if y is not None else batch[tk]
        return tuple(items) if isinstance(batch, tuple) else items

    return {k: batch[k] for k in keys}, (batch[tk] if tk is not None else None), rebuild


def split_batch(batch: Any, input_key: Optional[Key], target_key: Optional[Key]):
    """(inputs, targets or None, rebuild(inputs, targets) -> batch of the same structure). With several input keys,
    the inputs are a dict ``{key: value}`` in the keys' order."""
    if isinstance(batch, PlaceholderBatch):
        return batch.split()
    keys = several_inputs(input_key)
    if keys is not None:
        return _split_several(batch, keys, target_key)
    kind, ik, tk = _keys(batch, input_key, target_key)
    if kind == "tensor":
        return batch, None, lambda x, y: x

    def rebuild(x, y):
        items = dict(batch) if kind == "dict" else list(batch)
        items[ik] = x
        if tk is not None:
            items[tk] = y if y is not None else batch[tk]
        return items if kind in ("dict", "list") else tuple(items)

    return batch[ik], (batch[tk] if tk is not None else None), rebuild


_PUBLIC_DTYPES = {str(d): d for d in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                                       torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def is_integer_input(x: Any) -> bool:
    """A secret input shared as integers (``frac_bits=0``, no fixed-point scaling): token ids, counts, flags."""
    if isinstance(x, (PlaceholderInput, PlaceholderBatch)):  # another party's view: the client's header says
        return x.integer
    return not torch.as_tensor(x).is_floating_point()


def batch_header(batch: Any, input_key: Optional[Key], target_key: Optional[Key], public: Sequence = (),
                 inputs_public: bool = False) -> dict:
    """What the other parties may learn of a client batch: its structure, its secret inputs' shapes and whether they
    are integers, and the shapes and dtypes of its public inputs (their values follow the header). With
    ``inputs_public`` (``private="model"``) every input is public."""
    keys = several_inputs(input_key)
    if keys is not None:
        inputs, _, _ = _split_several(batch, keys, target_key)
        kind = "dict" if isinstance(batch, Mapping) else "tuple" if isinstance(batch, tuple) else "list"
        tk = _several_target(batch, keys, target_key)
        specs = []
        for k, v in inputs.items():
            t = torch.as_tensor(v)
            specs.append({"key": k, "shape": list(t.shape), "int": not t.is_floating_point(),
                          "public": str(t.dtype) if k in public or inputs_public else None})
        secret = next((sp for sp in specs if sp["public"] is None), specs[0])
        header = {"kind": kind, "input": None, "target": tk, "x_shape": secret["shape"], "inputs": specs}
        if kind != "dict":  # a dict's other keys are the client's data (names included): they are not announced
            header["len"] = len(batch)
        return header
    kind, ik, tk = _keys(batch, input_key, target_key)
    x = batch if kind == "tensor" else batch[ik]
    t = torch.as_tensor(x)
    header = {"kind": kind, "input": ik, "target": tk, "x_shape": list(t.shape), "x_int": not t.is_floating_point()}
    if inputs_public:  # its values follow the header
        header["x_public"] = str(t.dtype)
    if kind not in ("dict", "tensor"):  # a dict's other keys are the client's data (names included): not announced
        header["len"] = len(batch)
    return header


class PlaceholderInput:
    """One secret input of a client batch as the other parties see it: its shape, and whether it holds integers."""

    def __init__(self, shape, integer: bool) -> None:
        self.input_shape, self.integer = tuple(shape), bool(integer)


class PlaceholderBatch:
    """A client batch as the other parties see it: structure and shapes; the values stay with the client (public
    inputs, received after the header, are in ``public``)."""

    def __init__(self, header: dict, public: Optional[dict] = None) -> None:
        self.header = header
        self.public = public or {}
        self.integer = bool(header.get("x_int", False))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.header["x_shape"])

    @property
    def has_target(self) -> bool:
        return self.header["target"] is not None

    @property
    def next_same(self) -> bool:
        """The client announced that the next batch has this batch's structure and shapes."""
        return bool(self.header.get("next_same", False))

    def split(self):
        h = self.header
        x = self.public.get(PUBLIC_INPUT, self)  # a public input (private="model") arrived after the header
        if h["kind"] == "tensor":
            return x, None, lambda x, y: x
        if h.get("inputs"):
            inputs = {sp["key"]: (self.public[sp["key"]] if sp["public"] else PlaceholderInput(sp["shape"], sp["int"]))
                      for sp in h["inputs"]}

            def rebuild_several(xs, y):
                items: Any = {} if h["kind"] == "dict" else [None] * h["len"]
                for k, v in xs.items():
                    items[k] = v
                if h["target"] is not None:
                    items[h["target"]] = y
                return tuple(items) if h["kind"] == "tuple" else items

            return inputs, (self if self.has_target else None), rebuild_several

        def rebuild(x, y):  # another party's batch: the inputs and targets only (a dict's other keys stay with the client)
            items: Any = {} if h["kind"] == "dict" else [None] * h["len"]
            items[h["input"]] = x
            if h["target"] is not None:
                items[h["target"]] = y
            return tuple(items) if h["kind"] == "tuple" else items

        return x, (self if self.has_target else None), rebuild


def _encode(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


MAX_BATCH_ENTRIES = 256  # entries of a tuple/list batch a header may announce
MAX_HEADER_INPUTS = 64
MAX_HEADER_NUMEL = 1 << 31  # elements of one announced tensor (the dealer's per-tensor limit, wire.MAX_NUMEL)


def _loads(data: bytes) -> Any:
    """JSON from another party, refused as a ValueError when malformed or nested too deep (no RecursionError)."""
    try:
        return json.loads(data.decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"malformed batch header ({type(e).__name__})") from None


def _decode(data: bytes) -> dict:
    """A batch header from the client's process, checked: its kind, keys, counts and shapes stay within bounds."""
    header = _loads(data)
    if not isinstance(header, dict):
        raise ValueError("malformed batch header")
    if header.get("end"):
        return header
    kind, length = header.get("kind"), header.get("len")
    ok = kind in ("tensor", "tuple", "list", "dict") and _is_shape(header.get("x_shape")) and isinstance(
        header.get("next_same", False), bool) and isinstance(header.get("x_int", False), bool) and (
        header.get("x_public") is None or header.get("x_public") in _PUBLIC_DTYPES)
    if kind in ("tuple", "list"):
        ok = ok and _is_int(length, 1, MAX_BATCH_ENTRIES) and all(
            v is None or _is_int(v, 0, length - 1) for v in (header.get("input"), header.get("target")))
    elif kind == "dict":
        ok = ok and length is None and all(v is None or _is_key(v) for v in (header.get("input"), header.get("target")))
    inputs = header.get("inputs")
    if inputs is not None:
        ok = ok and isinstance(inputs, list) and 0 < len(inputs) <= MAX_HEADER_INPUTS
    if not ok:
        raise ValueError(f"malformed batch header {str(header)[:300]}")
    for sp in inputs or ():
        if not isinstance(sp, dict) or not _is_shape(sp.get("shape")) or not isinstance(sp.get("int"), bool) or (
            sp.get("public") is not None and sp.get("public") not in _PUBLIC_DTYPES
        ) or not (_is_key(sp.get("key")) or (kind in ("tuple", "list") and _is_int(sp.get("key"), 0, length - 1))):
            raise ValueError(f"malformed input in batch header {str(sp)[:300]}")
    return header


def _is_int(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _is_key(v) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 128 or _is_int(v, -MAX_BATCH_ENTRIES, MAX_BATCH_ENTRIES)


def _is_shape(shape) -> bool:
    if not (isinstance(shape, list) and len(shape) <= 16 and all(_is_int(d, 0, MAX_HEADER_NUMEL) for d in shape)):
        return False
    numel = 1
    for d in shape:
        numel *= d
    return numel <= MAX_HEADER_NUMEL


PUBLIC_INPUT = "<the input>"  # the key of a single public input (private="model") in PlaceholderBatch.public


def public_specs(header: dict) -> list[tuple[Any, tuple, torch.dtype]]:
    """(key, shape, dtype) of the public inputs that follow a batch header, in order."""
    if header.get("x_public"):
        return [(PUBLIC_INPUT, tuple(header["x_shape"]), _PUBLIC_DTYPES[header["x_public"]])]
    return [(sp["key"], tuple(sp["shape"]), _PUBLIC_DTYPES[sp["public"]]) for sp in header.get("inputs") or ()
            if sp["public"]]


class ClientLoader:
    """The client's dataloader, announcing each batch's header to the other parties before yielding it.

    Its length (or -1 when unknown) is announced first, so that every party's loop has the same length and
    prefetches alike (Lightning fetches one batch ahead when the length is unknown).
    """

    def __init__(self, loader, announce: Callable[[bytes], None], input_key, target_key, read_ahead: bool = True,
                 public: Sequence = (), send_public: Optional[Callable[[torch.Tensor], None]] = None,
                 inputs_public: bool = False) -> None:
        self.loader, self.announce, self.read_ahead = loader, announce, read_ahead
        self.input_key, self.target_key = input_key, target_key
        self.public, self.send_public, self.inputs_public = tuple(public), send_public, inputs_public
        self.ended = False
        self._next_same: deque[bool] = deque()  # per yielded batch not yet taken (Lightning may prefetch one)
        try:
            self.length = len(loader)
        except TypeError:
            self.length = -1
        self.announce(_encode({"len": self.length}))

    def __len__(self) -> int:
        if self.length < 0:
            raise TypeError("the client's dataloader has no length")
        return self.length

    def __iter__(self) -> Iterator:
        """With ``read_ahead``, one batch ahead: each header also says whether the next batch has the same
        structure and shapes (``next_same``), so that the dealer can prepare the next batch's material while this
        one runs (the other parties learn that bit one batch earlier; without it, ``next_same`` is False)."""
        self.ended = False
        batches = iter(self.loader)
        batch = next(batches, _NONE)
        while batch is not _NONE:
            following = next(batches, _NONE) if self.read_ahead else _NONE
            header = batch_header(batch, self.input_key, self.target_key, self.public, self.inputs_public)
            header["next_same"] = following is not _NONE and batch_header(
                following, self.input_key, self.target_key, self.public, self.inputs_public) == header
            self._next_same.append(header["next_same"])
            self.announce(_encode(header))
            specs = public_specs(header)
            if specs:  # the public inputs' values follow, on the same authenticated channel
                inputs, _, _ = split_batch(batch, self.input_key, self.target_key)
                for key, _, _ in specs:
                    self.send_public(torch.as_tensor(inputs if key == PUBLIC_INPUT else inputs[key]).contiguous())
            yield batch
            batch = following if self.read_ahead else next(batches, _NONE)
        self.end()

    def take_next_same(self) -> bool:
        """``next_same`` of the oldest yielded batch not taken yet: the batch now being processed (Lightning's
        fetcher may already have read the one after it, when the loader has no length)."""
        return self._next_same.popleft()

    def end(self) -> None:
        """Tell the other parties that no batch follows (idempotent; also after an early stop)."""
        if not self.ended:
            self.ended = True
            self.announce(_encode({"end": True}))


class PlaceholderLoader:
    """A party's stand-in for the client's dataloader: one :class:`PlaceholderBatch` per announced header."""

    def __init__(self, receive: Callable[[], bytes],
                 receive_public: Optional[Callable[[tuple, torch.dtype], torch.Tensor]] = None) -> None:
        self.receive, self.receive_public = receive, receive_public
        first = _loads(receive())
        if not isinstance(first, dict) or not _is_int(first.get("len"), -1, 1 << 40):
            raise ValueError(f"Expected the client's dataloader length first, but got {first!r}.")
        self.length = first["len"]
        self.ended = False

    def __len__(self) -> int:
        if self.length < 0:
            raise TypeError("the client's dataloader has no length")
        return self.length

    def __iter__(self) -> Iterator[PlaceholderBatch]:
        self.ended = False
        while True:
            header = _decode(self.receive())
            if header.get("end"):
                self.ended = True
                return
            public = {key: self.receive_public(shape, dtype) for key, shape, dtype in public_specs(header)}
            yield PlaceholderBatch(header, public)

    def end(self) -> None:
        """Consume the remaining headers up to the client's end marker (the loop may stop before it)."""
        while not self.ended:
            header = _decode(self.receive())
            if header.get("end"):
                self.ended = True
            for _, shape, dtype in public_specs(header):
                self.receive_public(shape, dtype)
