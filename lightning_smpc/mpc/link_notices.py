"""Why a role stopped: the goodbye note a stopping role sends each peer, and the error a surviving role raises.

A role that stops sends every peer one note (:meth:`~.links.Links.say_goodbye`, the error's class only: its text may
hold data) over the "notice" channel, whose receive was posted when the links were made. A surviving role whose
peer's connection closed (or timed out) raises :func:`lost_peer`'s :class:`~.errors.PeerLostError`: which peer it
lost, what it was doing, and the first cause from the notes, instead of gloo's stack trace.

Split out of :mod:`.links`: the note's layout and the error's text, no keys and no gloo (the sealing and the
transport of a note are the links' own).
"""
from __future__ import annotations

import re
import struct

import torch

from .errors import PeerLostError

__all__ = ["NOTE_BYTES", "NOTE_TAG", "pack_note", "unpack_note", "lost_peer"]

NOTE_BYTES = 1024
NOTE_TAG = "goodbye"  # the operation tag a note is sealed with
LOST = PeerLostError.__name__  # a note that only says its role lost a peer: not a first cause


def pack_note(why: str) -> torch.Tensor:
    """The note's plaintext: ``NOTE_BYTES`` bytes, the length of ``why`` in UTF-8 (2 bytes, big endian), then its
    bytes (cut to fit)."""
    note = torch.zeros(NOTE_BYTES, dtype=torch.uint8)
    data = why.encode("utf-8", "replace")[: NOTE_BYTES - 2]
    note[:2] = torch.tensor(list(struct.pack(">H", len(data))), dtype=torch.uint8)
    note[2 : 2 + len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else note[2:2]
    return note


def unpack_note(plain: bytes) -> str:
    """The text of an authenticated note's plaintext, its unprintable characters as spaces."""
    n = min(struct.unpack(">H", plain[:2])[0], NOTE_BYTES - 2)
    text = plain[2 : 2 + n].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text)


def first_line(error: BaseException) -> str:
    """The first line of a gloo error (the rest is a C++ stack trace that names no role)."""
    text = str(error).strip()
    line = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0]) if text else type(error).__name__  # [pair.cc:561]
    return line.split(". ")[0][:200]


def lost_peer(name: str, peer: str, rank: int, doing: str, error: BaseException,
              notes: dict[str, str] | None = None) -> PeerLostError:
    """The error of a surviving role: which peer it lost, what it was doing, and the first cause, from the notes of
    the roles that stopped (their own errors before their peers' losses)."""
    first = first_line(error)
    if "timed out" in first.lower() or "timeout" in first.lower():
        what = "did not answer within the timeout (it hung, or is still busy elsewhere)"
    else:
        what = "closed its connection: it failed or stopped"
    text = f"{peer} (rank {rank}) {what}, while {name} was {doing}."
    own = {who: why for who, why in (notes or {}).items() if not why.startswith(LOST)}
    if own:
        text += " First cause: " + "; ".join(f"{who} stopped with {why}" for who, why in own.items())
    elif notes:
        text += " " + "; ".join(f"{who} stopped with {why}" for who, why in notes.items())
    return PeerLostError(f"{text} [gloo: {first}]")
