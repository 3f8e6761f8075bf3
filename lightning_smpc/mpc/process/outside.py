"""A role outside the compute parties, in a process of its own: an input owner (the model owner's server, the client)
and/or a receiver of what is revealed to it (:class:`OutsideRole`).

It never holds a share and runs none of the parties' program. As an input owner it masks each input with a mask it
derives itself (``HMAC(K, index)`` seeds, :mod:`..kinds.outside_input`, ``K`` from the crypto provider once per run)
and sends ``x - A`` to every party: one message per input and party, as a party that owns an input sends. As a
receiver it reads the first party's public note (the value's name, fixed-point bits and shape), then every party's
share, and adds them up: the only place outside the communicator where shares are combined, and only what was
revealed to it (each reveal is in the parties' ledgers and in :attr:`OutsideRole.learned`).
"""
from __future__ import annotations

import torch

from .. import wire
from ..comm import PartyStats
from ..config import RingConfig
from ..encoding import FixedPointEncoder
from ..kinds.outside_input import OWNER_KEY_BYTES, OutsideInputMask, input_binding, owner_seeds
from ..links import LinkError, Links
from ..session import RevealRecord
from .transport import OUTSIDE_HEADER_TAG, _OUTSIDE_HEADER_BYTES, outside_roles, read_outside_header

__all__ = ["OutsideRole", "OWNER_KEY_TAG", "send_owner_keys"]

OWNER_KEY_TAG = "dealer/owner_key"


def send_owner_keys(links: Links, dealer) -> None:
    """The crypto provider's process, at the start: every outside role's key (its masks derive from it)."""
    for name in outside_roles(links, dealer.parties):
        key = torch.frombuffer(bytearray(dealer.owner_key(name)), dtype=torch.uint8)
        links.send(name, key, OWNER_KEY_TAG)


class OutsideRole:
    """This process's role outside the compute parties (``links.name``): it shares its inputs and receives what is
    revealed to it.

    Args:
        links: this process's links (every role of the run, the crypto provider last).
        parties: the compute parties, in share-row order.
        crypto_provider: the crypto provider's name (it sends this role its key first).
        ring: the run's :class:`~..config.RingConfig` (the same as the parties').
    """

    def __init__(self, links: Links, parties, crypto_provider: str, ring: RingConfig) -> None:
        self.links, self.name, self.parties, self.ring = links, links.name, tuple(parties), ring
        if self.name in self.parties or self.name == crypto_provider:
            raise LinkError(f"{self.name!r} is a compute party or the crypto provider, not an outside role.")
        self.encoder = FixedPointEncoder(ring.precision_bits, ring.compare_bits)
        self.rank = links.rank
        self._peers = [links.index(p) for p in self.parties]
        key = links.recv(crypto_provider, (OWNER_KEY_BYTES,), torch.uint8, OWNER_KEY_TAG)
        self._key = bytes(key.tolist())
        self._inputs = 0
        self.stats = PartyStats()  # what this role sent and received (its inputs, its reveals)
        self.learned: list[RevealRecord] = []
        self.end_note: dict | None = None

    def share(self, value, frac_bits: int | None = None) -> None:
        """Share an input: encode it (range and NaN checks here, before anything is sent), mask it with its derived
        mask, send ``x - A`` to every party. The parties call ``share(None, owner=<this role>, shape=...)`` alike."""
        frac = self.ring.precision_bits if frac_bits is None else frac_bits
        encoded = self.encoder.encode(torch.as_tensor(value).detach().cpu(), frac)
        req = OutsideInputMask.request(tuple(encoded.shape), self.name, self._inputs)
        seeds = owner_seeds(self._key, self._inputs, tuple(encoded.shape), len(self.parties))
        mask = wire.owner_mask(wire.material_layout(req, 0, self.parties, self.ring), b"".join(seeds))
        eps = (encoded - mask).contiguous()
        # the input's index and shape are bound into the message: parties that count this owner's inputs otherwise
        # fail authentication instead of using another mask
        tag = f"input:share|{input_binding(self.name, self._inputs, tuple(encoded.shape))}"
        self._inputs += 1
        self.links.broadcast(eps, self.rank, tag, ranks=self._peers + [self.rank])
        self.stats.messages += len(self.parties)
        self.stats.bytes_sent += len(self.parties) * eps.numel() * 8

    def receive(self) -> tuple[str, torch.Tensor] | None:
        """The next value revealed to this role, decoded (``(name, value)``), or None at the end of the run (the
        first party's end note is then :attr:`end_note`)."""
        note = read_outside_header(self.links.recv(self.parties[0], (_OUTSIDE_HEADER_BYTES,), torch.uint8,
                                                   OUTSIDE_HEADER_TAG))
        if note.get("end"):
            self.end_note = note
            return None
        shape, frac = tuple(note["shape"]), note["frac_bits"]
        # each party's share comes under its own hash of the public values: one that disagrees with the first
        # party's (the note's) fails authentication here, instead of a silently wrong value
        parts = self.links.gather_to(self.rank, torch.empty(shape, dtype=torch.int64),
                                     f"reveal:{note['tag']}|public:{note['public']}", ranks=self._peers + [self.rank])
        total = torch.stack(parts[:-1]).sum(0)  # the parties' shares (the last entry is this role's placeholder)
        self.stats.messages += len(self.parties)
        self.stats.bytes_received += len(self.parties) * total.numel() * 8
        self.learned.append(RevealRecord(str(note["name"]), shape, (self.name,)))
        return str(note["name"]), self.encoder.decode(total, frac)

    def receive_all(self) -> dict[str, torch.Tensor]:
        """Every value revealed to this role until the end of the run, by name."""
        out = {}
        while (got := self.receive()) is not None:
            out[got[0]] = got[1]
        return out
