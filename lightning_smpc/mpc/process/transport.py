"""A compute party's transport in its own process: :class:`DistributedCommunicator` moves openings, reveals and
input broadcasts over the encrypted links (:mod:`..links`), with the public values bound into every message."""
from __future__ import annotations

import hashlib
import json
import math

import torch

from .. import wire
from ..errors import WireError
from ..comm import Communicator
from ..links import LinkIntegrityError, Links

__all__ = ["DistributedCommunicator", "outside_header", "read_outside_header", "outside_roles", "OUTSIDE_HEADER_TAG"]

OUTSIDE_HEADER_TAG = "outside/announce"
_OUTSIDE_HEADER_BYTES = 512


def outside_header(note: dict) -> torch.Tensor:
    """A reveal's (or the end's) public note to an outside role, as a fixed-size message."""
    data = json.dumps(note, sort_keys=True, separators=(",", ":")).encode()
    if len(data) > _OUTSIDE_HEADER_BYTES - 4:
        raise ValueError(f"An outside role's note of {len(data)} bytes is too long.")
    buf = torch.zeros(_OUTSIDE_HEADER_BYTES, dtype=torch.uint8)
    buf[:4] = torch.tensor(list(len(data).to_bytes(4, "big")), dtype=torch.uint8)
    buf[4:4 + len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return buf


def read_outside_header(buf: torch.Tensor) -> dict:
    """A note from the first party, checked: an end note ``{"end": true}`` (with ``"examples"``: int, in a Lightning
    run), or a reveal's
    ``{"name": str, "frac_bits": 0..62, "shape": [int, ...] (bounded), "tag": str, "public": hex}``."""
    raw = bytes(buf.tolist())
    n = int.from_bytes(raw[:4], "big")
    try:
        if n > _OUTSIDE_HEADER_BYTES - 4:
            raise ValueError(f"length {n}")
        note = json.loads(raw[4:4 + n].decode())
        if not isinstance(note, dict):
            raise ValueError("not an object")
        if note.get("end") is True:
            if not set(note) <= {"end", "examples"} or not _is_int(note.get("examples", 0)) or note.get("examples", 0) < 0:
                raise ValueError(f"end note {note!r}")
            return note
        if set(note) != {"name", "frac_bits", "shape", "tag", "public"}:
            raise ValueError(f"keys {sorted(note)}")
        shape = note["shape"]
        if (not isinstance(note["name"], str) or not isinstance(note["tag"], str) or not isinstance(note["public"], str)
                or not _is_int(note["frac_bits"]) or not 0 <= note["frac_bits"] <= 62 or not isinstance(shape, list)
                or len(shape) > 8 or not all(_is_int(d) and d >= 0 for d in shape)
                or math.prod(shape) > wire.MAX_NUMEL):
            raise ValueError(f"reveal note {note!r}")
        return note
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError(f"Malformed note to an outside role from the first party ({e}).") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def outside_roles(links: Links, parties) -> tuple[str, ...]:
    """Every role that is neither a compute party nor the crypto provider (the last rank): the outside roles."""
    return tuple(n for n in links.names[:-1] if n not in parties)


def _opening_wire(mine: torch.Tensor, kind: str, bits: int) -> torch.Tensor:
    """This party's share of an opened value as it goes on the wire: 1-bit XOR shares packed 8 per byte, a share
    needed modulo ``2^bits`` only reduced to that (all the others may see) in a narrow type."""
    if kind == "xor" and bits == 1:
        return wire.pack_bits(mine.cpu())
    if kind == "arith" and bits < 64:
        dtype = torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int32 if bits <= 31 else torch.int64
        return (mine & ((1 << bits) - 1)).to(dtype)
    return mine.contiguous()


def _opening_share(t: torch.Tensor, kind: str, bits: int, shape: tuple) -> torch.Tensor:
    """A party's share back from its wire form (:func:`_opening_wire`)."""
    if kind == "xor" and bits == 1:
        return wire.unpack_bits(t, shape)
    if kind == "arith" and bits < 64:
        return t.to(torch.int64) & ((1 << bits) - 1)
    return t


class DistributedCommunicator(Communicator):
    """The communicator of one party's process: the transport hooks go over the encrypted links.

    Args:
        parties: compute party names (in share-row order); each must be a name in ``links.names``.
        links: this process's :class:`~.links.Links` (from :func:`establish_links`).
    """

    def __init__(self, parties: tuple[str, ...], links: Links, record_views: bool = False) -> None:
        super().__init__(parties, record_views)
        self.links = links
        self.rank = self.parties.index(links.name)
        self._peers = [links.index(p) for p in self.parties]  # party index -> link index
        self._tag = ""
        self._public = hashlib.sha256(b"lightning_smpc/public/v1")
        self._public_log: list[str] = []  # the public values used since the last message, for the error
        self.heartbeat = None  # called before every exchange (the first party's keep-alive to the dealer)
        self._reveal_note: dict | None = None  # the next outside reveal's name and fixed-point bits (note_reveal)
        self._input_binding = ""  # the next outside input's owner, index and shape (bind_input)
        self.outside = outside_roles(links, self.parties)  # the roles in processes of their own

    # Public values (constants, indices, masks: anything an op uses in clear) are hashed into every later message's
    # authenticated data: parties that disagree on one (a scale factor, a permutation, a module attribute that only
    # the model owner's process loaded) fail authentication at the next opening, before anything computed from it
    # is revealed, instead of silently combining shares of different computations.
    def note_public(self, what: str, value=None, detail=None) -> None:
        if detail is not None:  # formatted here only: the simulated runtime's no-op pays nothing for it
            what = f"{what} {detail!r}"
        self._public.update(what.encode())
        if value is not None:
            t = torch.as_tensor(value).detach().cpu().contiguous()
            self._public.update(f"{t.dtype}{tuple(t.shape)}".encode())
            self._public.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            if len(self._public_log) < 8:
                preview = t.reshape(-1)[:4].tolist()
                self._public_log.append(f"{what} {tuple(t.shape)} {preview}{'...' if t.numel() > 4 else ''}")
        elif len(self._public_log) < 8:
            self._public_log.append(what)

    def _bound(self, tag: str) -> str:
        return f"{tag}|public:{self._public.hexdigest()[:16]}"

    def _authenticated(self, move):
        """Run one message exchange; a failed authentication names the public values used just before it."""
        if self.heartbeat is not None:
            self.heartbeat()
        try:
            return move()
        except LinkIntegrityError as e:
            if self._public_log:
                raise LinkIntegrityError(
                    f"{e} If the parties disagree on a public value used since the previous message, it is one of "
                    f"these (this process's values): {'; '.join(self._public_log)}."
                ) from None
            raise
        finally:
            self._public_log = []

    # the protocol tag goes into every message's authenticated data
    def open(self, items, tag):
        self._tag = tag
        return super().open(items, tag)

    def reveal_to(self, shares, to, tag, outside=None):
        self._tag = tag
        return super().reveal_to(shares, to, tag, outside)

    def broadcast_input(self, sender, value, tag, bits=64):
        self._tag = tag
        return super().broadcast_input(sender, value, tag, bits)

    def _exchange_many(self, items) -> list[torch.Tensor]:
        payload = [_opening_wire(shares[0], kind, bits) for shares, kind, bits in items]
        # bound into the message: each value's kind, width and shape (a packed bit string hides its length)
        what = ",".join(f"{kind}{bits}{list(shares.shape[1:])}" for shares, kind, bits in items)
        rows = self._authenticated(
            lambda: self.links.all_gather_many(payload, self._bound(f"open/{what}:{self._tag}"), ranks=self._peers))
        return [torch.stack([_opening_share(row[i], kind, bits, tuple(shares.shape[1:])) for row in rows])
                for i, (shares, kind, bits) in enumerate(items)]

    def _exchange_to(self, shares: torch.Tensor, receivers: list[str]):
        mine, out = shares[0].contiguous(), None
        for r in receivers:
            if r not in self.parties:  # a role in a process of its own (the client, the model owner's server)
                self._reveal_outside(r, mine)
                continue
            parts = self._authenticated(lambda r=r: self.links.gather_to(
                self._peers[self.parties.index(r)], mine, self._bound(f"reveal:{self._tag}"), ranks=self._peers))
            if parts is not None:
                out = torch.stack(parts)
        return out

    # An outside role knows none of the parties' public values: its messages carry the plain protocol tag (the
    # parties' own messages keep binding them). The first party announces each reveal (name, fixed-point bits,
    # shape: public) before every party sends its share, so the outside role needs no copy of the parties' program.
    def note_reveal(self, name: str, frac_bits: int) -> None:
        self._reveal_note = {"name": name, "frac_bits": frac_bits}

    def _reveal_outside(self, receiver: str, mine: torch.Tensor) -> None:
        dst = self.links.index(receiver)
        note = {**(self._reveal_note or {"name": "value", "frac_bits": 0}), "shape": list(mine.shape),
                "tag": self._tag, "public": self._public.hexdigest()[:16]}
        self._reveal_note = None
        self._authenticated(lambda: self._announce(receiver, note))
        self._authenticated(lambda: self.links.gather_to(dst, mine, self._bound(f"reveal:{self._tag}"),
                                                         ranks=self._peers + [dst]))

    def _announce(self, receiver: str, note: dict) -> None:
        if self.rank == 0:
            self.links.send(receiver, outside_header(note), OUTSIDE_HEADER_TAG)

    def end_outside(self, public: dict) -> None:
        """The end of the run for every outside role (sent by the first party), with public facts it may need (the
        number of examples, for a metric revealed as a count)."""
        for name in self.outside:
            self._announce(name, {"end": True, **public})

    def bind_input(self, binding: str) -> None:
        """The next outside input's index and shape (see :func:`input_binding`), bound into its message."""
        self._input_binding = binding

    def _broadcast(self, value: torch.Tensor, sender: str) -> torch.Tensor:
        if sender not in self.parties:  # an outside input owner's masked input
            src, binding, self._input_binding = self.links.index(sender), self._input_binding, ""
            return self._authenticated(lambda: self.links.broadcast(
                value.contiguous(), src, f"input:{self._tag}|{binding}", ranks=self._peers + [src]))
        src = self._peers[self.parties.index(sender)]
        return self._authenticated(
            lambda: self.links.broadcast(value.contiguous(), src, self._bound(f"input:{self._tag}"), ranks=self._peers))
