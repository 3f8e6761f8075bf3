"""What one party receives for one request: its :class:`Layout` (the created mask ids, its seed, then its share
slots in a canonical order), and :class:`LayoutBuilder`, with which each kind declares its slots."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import RingConfig
from ..prg import SEED_BYTES, CSPRNG
from ._schema import check_numel

OWNER_SEEDS = "owner_seeds"


def narrow_dtype(bits: int) -> torch.dtype | None:
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

    The message on the wire is the created ids, the party's :data:`~..prg.SEED_BYTES`-byte seed and the
    slots that are not ``seeded`` (see :meth:`specs`); the party expands the seeded slots from the seed,
    drawing them in slot order (``wire.expand_seeded``), exactly as the dealer did.
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


class LayoutBuilder:
    """Collects one party's slots as a kind declares them (see ``MaterialKind.layout``).

    Shares keep a party axis of length 1. Parties ``1..n-1`` expand every share from their seed; the first party
    expands the *uniform* ones (their value is defined as the sum of the seeded shares) and receives the correction
    of every correlated one, narrowed to ``mod_bits`` when it is needed modulo ``2**mod_bits`` only. ``ring``: the
    parties' :class:`~..config.RingConfig` (what a kind's slots may depend on besides its request)."""

    def __init__(self, kind: str, party: int, parties: tuple, ring: RingConfig) -> None:
        self.kind, self.party, self.parties, self.ring = kind, party, parties, ring
        self.first = party == 0
        self.slots: list[Slot] = []

    def share(self, key: str, shape, dtype: torch.dtype = torch.int64, index: int | None = None,
              uniform: bool = False, mod_bits: int | None = None) -> None:
        shape = tuple(shape)
        check_numel(shape, f"{self.kind} material {key}")
        seeded = uniform or not self.first
        wire_dtype = None if seeded or mod_bits is None else narrow_dtype(mod_bits)
        self.slots.append(Slot(key, index, (1,) + shape, dtype, seeded, wire_dtype))

    def raw(self, slot: Slot) -> None:
        self.slots.append(slot)

    def build(self, n_created: int = 0, mask_keys: tuple = ()) -> Layout:
        return Layout(n_created, tuple(mask_keys), tuple(self.slots))


def expand_seeded(layout: Layout, seed: bytes) -> dict[tuple, torch.Tensor]:
    """``{(key, index): tensor}`` of the layout's seeded slots, drawn from ``seed`` in slot order.

    The one expansion both sides run: the dealer (to make this party's shares before it computes the first
    party's corrections) and the party (to rebuild its material from the seed it received).
    """
    prg = CSPRNG.from_seed(seed)
    return {(s.key, s.index): prg.draw(s.shape, s.dtype) for s in layout.slots if s.seeded}
