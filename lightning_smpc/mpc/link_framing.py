"""The format of one message on the secure links: its constants, segment plan, nonce and AAD, and its cost counters.

The format is described with the protocol in :mod:`.links` ("Messages"). These are pure functions of their
arguments (no keys, no counters, no gloo), split out of :mod:`.links` so that the format reads in one place. The
AES-GCM calls, the counters and the checks stay in :class:`~.links.Links`, with the segment size and the
``encrypt_into`` switch that it passes in (``links.SEGMENT_BYTES``, ``links._HAS_INTO``).
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

__all__ = ["PROTOCOL", "TAG_BYTES", "HEADER_BYTES", "LinkStats", "spec_bytes", "segments", "wire_size",
           "byte_view", "nonce", "segment_aad"]

PROTOCOL = b"lightning_smpc/link/v1"
TAG_BYTES = 16
HEADER_BYTES = 8  # the message counter, in clear (also bound into every segment's nonce and AAD)


def spec_bytes(shape, dtype: torch.dtype) -> int:
    """Bytes of a tensor of this shape and dtype."""
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def segments(nbytes: int, segment_bytes: int) -> list[tuple[int, int]]:
    """(offset, length) of the AEAD segments of one tensor's bytes (at least one, possibly empty)."""
    if nbytes <= segment_bytes:  # the common case, without building a range (this runs for every tensor of a round)
        return [(0, nbytes)]
    return [(o, min(segment_bytes, nbytes - o)) for o in range(0, nbytes, segment_bytes)]


def wire_size(specs, segment_bytes: int) -> int:
    """Bytes on the wire of one message of tensors with these ``(shape, dtype)``: header, ciphertexts and tags."""
    return HEADER_BYTES + sum(sum(n + TAG_BYTES for _, n in segments(spec_bytes(s, d), segment_bytes))
                              for s, d in specs)


def byte_view(t: torch.Tensor):
    """A writable numpy uint8 view of a contiguous CPU tensor's memory."""
    return t.reshape(-1).view(torch.uint8).numpy()


def nonce(ctr: int) -> bytes:
    """The AES-GCM nonce of the segment with this counter: 4 zero bytes || the counter (never repeated)."""
    return b"\0\0\0\0" + struct.pack(">Q", ctr)


def segment_aad(session_id: bytes, src: int, dst: int, ctr: int, tag: str, dtype: torch.dtype, shape,
                seg: tuple[int, int, int]) -> bytes:
    """The data one segment's tag authenticates besides its bytes: protocol, session, source, destination, counter,
    operation tag, dtype, shape and ``seg`` = (tensor index, segment index, byte offset)."""
    tb, db = tag.encode(), str(dtype).encode()
    return (PROTOCOL + session_id + struct.pack(">HHQ", src, dst, ctr) + struct.pack(">H", len(tb)) + tb
            + struct.pack(">B", len(db)) + db + struct.pack(">B", len(shape)) + struct.pack(f">{len(shape)}Q", *shape)
            + struct.pack(">IIQ", *seg))


@dataclass
class LinkStats:
    """Cost of the secure links in this process (not part of the protocol's counted traffic)."""

    aead_seconds: float = 0.0  # encrypting + decrypting
    transfer_seconds: float = 0.0  # waiting on gloo send/recv
    messages_sent: int = 0
    messages_received: int = 0
    plain_bytes_sent: int = 0
    wire_bytes_sent: int = 0  # plaintext + counter header + GCM tags
    plain_bytes_received: int = 0
    wire_bytes_received: int = 0

    @property
    def overhead_bytes_sent(self) -> int:
        return self.wire_bytes_sent - self.plain_bytes_sent

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["overhead_bytes_sent"] = self.overhead_bytes_sent
        return d
