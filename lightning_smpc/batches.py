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

__all__ = ["split_batch", "ClientLoader", "PlaceholderLoader", "PlaceholderBatch", "batch_header"]

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


def split_batch(batch: Any, input_key: Optional[Key], target_key: Optional[Key]):
    """(inputs, targets or None, rebuild(inputs, targets) -> batch of the same structure)."""
    if isinstance(batch, PlaceholderBatch):
        return batch.split()
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


def batch_header(batch: Any, input_key: Optional[Key], target_key: Optional[Key]) -> dict:
    """What the other parties may learn of a client batch: its structure and input shape."""
    kind, ik, tk = _keys(batch, input_key, target_key)
    x = batch if kind == "tensor" else batch[ik]
    header = {"kind": kind, "input": ik, "target": tk, "x_shape": list(torch.as_tensor(x).shape)}
    if kind == "dict":
        header["keys"] = [str(k) for k in batch]
    elif kind != "tensor":
        header["len"] = len(batch)
    return header


class PlaceholderBatch:
    """A client batch as the other parties see it: structure and shapes; the values stay with the client."""

    def __init__(self, header: dict) -> None:
        self.header = header

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
        if h["kind"] == "tensor":
            return self, None, lambda x, y: x

        def rebuild(x, y):
            if h["kind"] == "dict":
                items: Any = {k: None for k in h["keys"]}
            else:
                items = [None] * h["len"]
            items[h["input"]] = x
            if h["target"] is not None:
                items[h["target"]] = y
            return tuple(items) if h["kind"] == "tuple" else items

        return self, (self if self.has_target else None), rebuild


def _encode(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _decode(data: bytes) -> dict:
    header = json.loads(data.decode())
    if not isinstance(header, dict):
        raise ValueError("malformed batch header")
    if header.get("end"):
        return header
    shape = header.get("x_shape")
    if header.get("kind") not in ("tensor", "tuple", "list", "dict") or not isinstance(shape, list) or not all(
        isinstance(d, int) and d >= 0 for d in shape
    ) or not isinstance(header.get("next_same", False), bool):
        raise ValueError(f"malformed batch header {header!r}")
    return header


class ClientLoader:
    """The client's dataloader, announcing each batch's header to the other parties before yielding it.

    Its length (or -1 when unknown) is announced first, so that every party's loop has the same length and
    prefetches alike (Lightning fetches one batch ahead when the length is unknown).
    """

    def __init__(self, loader, announce: Callable[[bytes], None], input_key, target_key, read_ahead: bool = True) -> None:
        self.loader, self.announce, self.read_ahead = loader, announce, read_ahead
        self.input_key, self.target_key = input_key, target_key
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
            header = batch_header(batch, self.input_key, self.target_key)
            header["next_same"] = following is not _NONE and batch_header(following, self.input_key, self.target_key) == header
            self._next_same.append(header["next_same"])
            self.announce(_encode(header))
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

    def __init__(self, receive: Callable[[], bytes]) -> None:
        self.receive = receive
        first = json.loads(receive().decode())
        if not isinstance(first, dict) or not isinstance(first.get("len"), int):
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
            yield PlaceholderBatch(header)

    def end(self) -> None:
        """Consume the remaining headers up to the client's end marker (the loop may stop before it)."""
        while not self.ended:
            if _decode(self.receive()).get("end"):
                self.ended = True
