"""Authenticated, encrypted point-to-point links between the processes of one run (parties and dealer).

gloo has no TLS in the PyTorch wheels and its rendezvous store has no authentication, so everything that
crosses between processes is protected here, at the application layer, on top of plain gloo send/recv:

* **Identities.** Every process (compute parties AND the crypto provider) holds an Ed25519 signing key
  (:class:`Identity`); the :class:`Roster` (names -> public keys, in rank order) is configuration that
  every host holds a copy of (:meth:`Roster.to_text` / :meth:`Roster.from_text`, a small JSON document).
* **Handshake** (:func:`handshake`, right after the process group starts): each process draws an
  ephemeral X25519 key and 32 random bytes and all-gathers them as a fixed-size ``uint8`` record; the
  session id is the hash of the roster and all records. Then each process all-gathers an Ed25519
  signature over ``session id || name || ephemeral public key || roster hash``. Every process checks
  every signature against the roster; a process whose key is wrong or missing is refused on EVERY rank
  with a :class:`LinkAuthError` that names it.
* **Keys.** Per ordered pair ``i -> j``: ``HKDF-SHA256(X25519(eph_i, eph_j), salt=session id,
  info="lightning_smpc/link/v1" || i || j)`` -> an AES-256-GCM key for that direction only.
* **Messages.** A message is ``counter (8 bytes, clear) || segments``, each segment ``ciphertext || tag``
  of one tensor (or one GiB of it). Nonce = 4 zero bytes || 64-bit counter: counters start at 0 per
  direction and never repeat (no random nonces). The AAD binds the session id, source, destination,
  counter, operation tag, dtype, shape and segment position. The receiver checks the counter before
  decrypting: a replayed, reordered or dropped message raises :class:`LinkIntegrityError`, and so does
  any flipped bit (the GCM tag) or a disagreement about the operation, dtype or shape.

Collectives (:meth:`Links.all_gather`, :meth:`Links.gather_to`, :meth:`Links.broadcast`, in
:mod:`.link_collectives`) are built from pairwise messages posted as non-blocking sends/receives (``n - 1``
messages per process; for 2-3 parties this costs no extra round). Nothing is ever serialized with a general
object serializer: only raw tensor bytes whose dtype and shape the receiver already knows.

Without a roster (:func:`handshake` with ``roster=None``, the one-machine spawn case) every process makes
a fresh identity and the roster is built from the exchanged public keys: the traffic is still encrypted
and authenticated against a passive observer or a late intruder on the store, but nothing pins who the
processes are. Give a roster and identities whenever the processes run on different hosts.

This module holds :class:`Links` (keys, counters, sealing and opening, waiting on transfers); by job, the message
format is in :mod:`.link_framing`, the channels in :mod:`.link_channels`, the goodbye notes and the lost-peer error
in :mod:`.link_notices`, the collectives in :mod:`.link_collectives`.
"""
from __future__ import annotations

import struct
import time
from typing import Callable, Sequence

import numpy as np
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import LinkAuthError, LinkError, LinkIntegrityError, PeerLostError  # noqa: F401 (re-exported)
from .link_channels import CHANNELS, post
from .link_collectives import Collectives
from .link_framing import HEADER_BYTES, TAG_BYTES, LinkStats, byte_view, nonce, segment_aad, segments, wire_size
from .link_notices import NOTE_BYTES, NOTE_TAG, lost_peer, pack_note, unpack_note

__all__ = ["Links", "LinkError", "LinkAuthError", "LinkIntegrityError", "PeerLostError", "CHANNELS"]
# (Identity, Roster, generate_identity, load_identity: .identities; handshake, roll_call: .handshake; the format's
# and the channels' constants: .link_framing, .link_channels; all importable from here too, see __getattr__ at the end)

# Module globals read at each call (the tests switch them): the size of one AEAD segment and the AES-GCM call used.
SEGMENT_BYTES = 1 << 30  # AES-GCM in `cryptography` takes at most 2**31 - 1 bytes per call
_HAS_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")  # newer cryptography; else allocate


class Links(Collectives):
    """This process's encrypted links to every other process of the run (made by :func:`handshake`).

    Peers are addressed by index in :attr:`names` or by name. Every call must be matched by the peer's
    corresponding call with the same ``tag``, dtype and shape, in the same order (as with gloo itself).
    """

    pinned: bool = False  # set by handshake(): True when every identity was checked against a roster given to it

    timeout_s = 60.0  # of every transfer (set by the handshake)

    def __init__(self, rank, names, roster, session_id, send_keys, recv_keys, group=None, channels=None) -> None:
        self.rank, self.names, self.roster, self.session_id, self.group = rank, tuple(names), roster, session_id, group
        self._channels = channels  # None: plain point-to-point send/recv on ``group`` (see pair_channels)
        self.name = self.names[rank]
        self._send_aead = {k: AESGCM(v) for k, v in send_keys.items()}
        self._recv_aead = {k: AESGCM(v) for k, v in recv_keys.items()}
        self._send_ctr = {k: 0 for k in send_keys}
        self._recv_ctr = {k: 0 for k in recv_keys}
        self._stats = LinkStats()
        self.on_op: Callable[[str], None] | None = None  # progress hook: called with a description before each operation
        self._notices: dict[int, tuple] = {}  # peer -> (buffer, work) of its goodbye note, posted ahead

    # ---------------------------------------------------------------------------------- why a role stops
    def post_notices(self) -> None:
        """Post the receive of each peer's goodbye note (pair channels only)."""
        if self._channels is None:
            return
        size = self._wire_size([((NOTE_BYTES,), torch.uint8)])
        for peer in range(self.world_size):
            if peer != self.rank:
                buf = torch.zeros(size, dtype=torch.uint8)
                self._notices[peer] = (buf, self._post(peer, self.rank, buf, "notice"))

    def say_goodbye(self, why: str) -> None:
        """Tell every peer why this process stops (best effort: a peer that is gone is skipped); callers send the
        error's class only (a message may hold data). A surviving role
        then names the first cause, not only the peer whose connection closed last."""
        if self._channels is None:
            return
        note = pack_note(why)
        for peer in self._notices:
            try:
                self._post(self.rank, peer, self._seal(peer, [note], NOTE_TAG), "notice").wait()
            except RuntimeError:
                pass

    def goodbye_notes(self) -> dict[str, str]:
        """The notes that peers sent before they stopped: role name -> why (authenticated; others ignored)."""
        notes = {}
        for peer, (buf, _) in self._notices.items():
            if not bool(buf[:HEADER_BYTES].any()) and not bool(buf[HEADER_BYTES:].any()):
                continue  # nothing arrived (gloo writes into the posted buffer; its work is not marked complete)
            got = struct.unpack(">Q", buf[:HEADER_BYTES].numpy().tobytes())[0]
            if got < self._recv_ctr[peer]:
                continue  # an old counter: a replay
            try:  # its counter may be ahead of ours (messages lost in the failure): accepted for this note only
                aad = self._aad(peer, self.rank, got, NOTE_TAG, torch.uint8, (NOTE_BYTES,), (0, 0, 0))
                plain = self._recv_aead[peer].decrypt(nonce(got), bytes(buf[HEADER_BYTES:].numpy()), aad)
            except InvalidTag:
                continue
            notes[self.names[peer]] = unpack_note(plain)
        return notes

    @property
    def world_size(self) -> int:
        return len(self.names)

    @property
    def stats(self) -> dict:
        """``aead_seconds``, ``transfer_seconds``, messages and plaintext/wire bytes sent and received."""
        return self._stats.as_dict()

    def index(self, who: int | str) -> int:
        if isinstance(who, str):
            try:
                return self.names.index(who)
            except ValueError:
                raise LinkError(f"Unknown process {who!r}; the run has {self.names}.") from None
        if not 0 <= who < len(self.names):
            raise LinkError(f"Unknown process index {who}; the run has {len(self.names)} processes.")
        return int(who)

    # ---------------------------------------------------------------------------------- crypto
    def _aad(self, src: int, dst: int, ctr: int, tag: str, dtype: torch.dtype, shape, seg: tuple[int, int, int]) -> bytes:
        return segment_aad(self.session_id, src, dst, ctr, tag, dtype, shape, seg)

    def _seal(self, dst: int, tensors: Sequence[torch.Tensor], tag: str) -> torch.Tensor:
        aead = self._send_aead[dst]
        ctr0 = ctr = self._send_ctr[dst]
        plans = []
        total = HEADER_BYTES
        for t in tensors:
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous()
            segs = segments(t.numel() * t.element_size(), SEGMENT_BYTES)
            plans.append((t, segs))
            total += sum(n + TAG_BYTES for _, n in segs)
        out = torch.empty(total, dtype=torch.uint8)
        out_np = out.numpy()
        out_np[:HEADER_BYTES] = np.frombuffer(struct.pack(">Q", ctr0), dtype=np.uint8)
        pos, plain = HEADER_BYTES, 0
        t0 = time.perf_counter()
        for ti, (t, segs) in enumerate(plans):
            src = byte_view(t) if t.numel() else None
            for si, (off, n) in enumerate(segs):
                aad = self._aad(self.rank, dst, ctr, tag, t.dtype, tuple(t.shape), (ti, si, off))
                data = src[off:off + n] if src is not None else b""
                if _HAS_INTO:
                    aead.encrypt_into(nonce(ctr), data, aad, out_np[pos:pos + n + TAG_BYTES])
                else:
                    ct = aead.encrypt(nonce(ctr), bytes(data), aad)
                    out_np[pos:pos + n + TAG_BYTES] = np.frombuffer(ct, dtype=np.uint8)
                pos += n + TAG_BYTES
                plain += n
                ctr += 1
        self._stats.aead_seconds += time.perf_counter() - t0
        if ctr >= 1 << 63:  # pragma: no cover - 2**63 messages
            raise LinkError("Message counter exhausted; start a new session.")
        self._send_ctr[dst] = ctr
        self._stats.messages_sent += 1
        self._stats.plain_bytes_sent += plain
        self._stats.wire_bytes_sent += total
        return out

    def _wire_size(self, specs) -> int:
        return wire_size(specs, SEGMENT_BYTES)

    def _open(self, src: int, buf: torch.Tensor, specs, tag: str) -> list[torch.Tensor]:
        aead = self._recv_aead[src]
        want = self._recv_ctr[src]
        buf_np = buf.numpy()
        got = struct.unpack(">Q", buf_np[:HEADER_BYTES].tobytes())[0]
        if got != want:
            raise LinkIntegrityError(
                f"Message {tag!r} from {self.names[src]!r} to {self.name!r} carries counter {got}, expected {want}: a replayed, "
                "reordered or dropped message. The link is no longer trustworthy; the run stops."
            )
        outs, pos, ctr, plain = [], HEADER_BYTES, want, 0
        t0 = time.perf_counter()
        for ti, (shape, dtype) in enumerate(specs):
            shape = tuple(int(d) for d in shape)
            out = torch.empty(shape, dtype=dtype)
            dst_np = byte_view(out) if out.numel() else None
            for si, (off, n) in enumerate(segments(out.numel() * out.element_size(), SEGMENT_BYTES)):
                aad = self._aad(src, self.rank, ctr, tag, dtype, shape, (ti, si, off))
                ct = buf_np[pos:pos + n + TAG_BYTES]
                try:
                    if _HAS_INTO:
                        aead.decrypt_into(nonce(ctr), ct, aad, dst_np[off:off + n] if dst_np is not None else bytearray())
                    else:
                        pt = aead.decrypt(nonce(ctr), bytes(ct), aad)
                        if n:
                            dst_np[off:off + n] = np.frombuffer(pt, dtype=np.uint8)
                except InvalidTag:
                    raise LinkIntegrityError(
                        f"Message {tag!r} from {self.names[src]!r} to {self.name!r} (counter {ctr}, tensor {ti}, "
                        f"{dtype} {shape}) failed authentication: it was tampered with, or the sender and receiver "
                        "disagree on the operation, dtype or shape (a protocol desynchronisation). The run stops."
                    ) from None
                pos += n + TAG_BYTES
                plain += n
                ctr += 1
            outs.append(out)
        self._stats.aead_seconds += time.perf_counter() - t0
        self._recv_ctr[src] = ctr
        self._stats.messages_received += 1
        self._stats.plain_bytes_received += plain
        self._stats.wire_bytes_received += buf.numel()
        return outs

    # ---------------------------------------------------------------------------------- transport
    def _progress(self, what: str) -> None:
        if self.on_op is not None:
            self.on_op(what)

    def _post(self, src: int, dst: int, buf: torch.Tensor, channel: str = "main"):
        """Start moving ``buf`` from ``src`` to ``dst`` (one of them is this process); returns the work."""
        return post(self._channels, self.group, self.rank, src, dst, buf, channel)

    def _transfer(self, sends: list[tuple[int, torch.Tensor]], recvs: list[tuple[int, torch.Tensor]], tag: str,
                  channel: str = "main") -> None:
        """Post all receives and sends at once, then wait for all of them. Both ends of a pair post their two
        directions in the same order (the lower rank's message first), as a pair's group requires."""
        peers = sorted({self.names[p] for p, _ in sends + recvs})
        self._progress(f"sending/receiving {tag!r} with {', '.join(peers)}")
        t0 = time.perf_counter()
        moves = sorted([(p, self.rank, p, b) for p, b in sends] + [(p, p, self.rank, b) for p, b in recvs],
                       key=lambda m: (m[0], m[1]))
        works = [(p, self._post(src, dst, b, channel)) for p, src, dst, b in moves]
        for p, w in works:
            self._await(w, p, tag)
        self._stats.transfer_seconds += time.perf_counter() - t0
        self._progress(f"local work after {tag!r} with {', '.join(peers)}")

    def _exchange(self, sends: dict[int, list[torch.Tensor]], recvs: dict[int, list[tuple]], tag: str,
                  channel: str = "main") -> dict:
        for p in list(sends) + list(recvs):
            if p == self.rank:
                raise LinkError(f"{self.name!r} cannot send to or receive from itself.")
        sealed = [(p, self._seal(p, ts, tag)) for p, ts in sends.items()]
        bufs = {p: torch.empty(self._wire_size(specs), dtype=torch.uint8) for p, specs in recvs.items()}
        self._transfer(sealed, list(bufs.items()), tag, channel)
        return {p: self._open(p, bufs[p], recvs[p], tag) for p in recvs}

    def send_many(self, dst: int | str, tensors: Sequence[torch.Tensor], tag: str, channel: str = "main") -> None:
        """Send several tensors as ONE encrypted message (one segment each) to ``dst``."""
        self._exchange({self.index(dst): list(tensors)}, {}, tag, channel)

    def post_many(self, dst: int | str, tensors: Sequence[torch.Tensor], tag: str, channel: str = "main") -> Callable[[], None]:
        """Seal ONE message as :meth:`send_many` and post it without waiting for ``dst`` to take it (a stream of
        such messages is delivered in order); returns the function that waits until it was taken."""
        dst = self.index(dst)
        if dst == self.rank:
            raise LinkError(f"{self.name!r} cannot send to itself.")
        sealed = self._seal(dst, list(tensors), tag)
        work = self._post(self.rank, dst, sealed, channel)

        def wait(buf=sealed) -> None:  # keeps the ciphertext alive until gloo has sent it
            self._wait(work, tag, dst)

        return wait

    def _wait(self, work, tag: str, peer: int) -> None:
        self._progress(f"sending/receiving {tag!r} with {self.names[peer]}")
        t0 = time.perf_counter()
        self._await(work, peer, tag)
        self._stats.transfer_seconds += time.perf_counter() - t0

    def _await(self, work, peer: int, tag: str) -> None:
        """Wait for one posted transfer; a peer that failed or hung ends the run with its name (not gloo's trace)."""
        if work is None:
            return
        try:
            work.wait()
        except RuntimeError as e:  # torch's DistBackendError: the pair's socket closed, or its timeout passed
            time.sleep(0.2)  # the notes of the roles that stopped first (they are sent before their sockets close)
            raise lost_peer(self.name, self.names[peer], peer, f"exchanging {tag!r} with it", e,
                            self.goodbye_notes()) from None

    def post_recv_many(self, src: int | str, specs: Sequence[tuple[tuple, torch.dtype]], channel: str = "main"):
        """Post the receive of one :meth:`send_many` / :meth:`post_many` message now (so the sender is not kept
        waiting); :meth:`take` waits for it and authenticates it. Messages from ``src`` are taken in order."""
        src = self.index(src)
        buf = torch.empty(self._wire_size(list(specs)), dtype=torch.uint8)
        return src, buf, list(specs), self._post(src, self.rank, buf, channel)

    def take(self, posted, tag: str) -> list[torch.Tensor]:
        """The tensors of a message posted by :meth:`post_recv_many` (its ``tag`` is checked only now)."""
        src, buf, specs, work = posted
        self._wait(work, tag, src)
        return self._open(src, buf, specs, tag)

    def recv_many(self, src: int | str, specs: Sequence[tuple[tuple, torch.dtype]], tag: str,
                  channel: str = "main") -> list[torch.Tensor]:
        """Receive the tensors of one :meth:`send_many` message; ``specs`` = their ``(shape, dtype)``."""
        src = self.index(src)
        return self._exchange({}, {src: list(specs)}, tag, channel)[src]

    def send(self, dst: int | str, tensor: torch.Tensor, tag: str, channel: str = "main") -> None:
        self.send_many(dst, [tensor], tag, channel)

    def recv(self, src: int | str, shape: tuple, dtype: torch.dtype, tag: str, channel: str = "main") -> torch.Tensor:
        return self.recv_many(src, [(tuple(shape), dtype)], tag, channel)[0]


# names that live in the modules links.py was split into (or that import it), still importable from here
_MOVED = {"Identity": "identities", "Roster": "identities", "generate_identity": "identities",
          "load_identity": "identities", "MAX_NAME_BYTES": "identities", "handshake": "handshake",
          "roll_call": "handshake", "PROTOCOL": "link_framing", "pair_channels": "link_channels",
          "CONTROL_TIMEOUT_FACTOR": "link_channels"}


def __getattr__(name: str):
    """``from lightning_smpc.mpc.links import Roster, handshake`` still works: they live in :mod:`.identities` and
    :mod:`.handshake` (which import this module, so they are looked up on first use), and so do the names that
    moved to :mod:`.link_framing` and :mod:`.link_channels`."""
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
