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

Collectives (:meth:`Links.all_gather`, :meth:`Links.gather_to`, :meth:`Links.broadcast`) are built from
pairwise messages posted as non-blocking sends/receives (``n - 1`` messages per process; for 2-3 parties
this costs no extra round). Nothing is ever serialized with a general object serializer: only raw tensor
bytes whose dtype and shape the receiver already knows.

Without a roster (:func:`handshake` with ``roster=None``, the one-machine spawn case) every process makes
a fresh identity and the roster is built from the exchanged public keys: the traffic is still encrypted
and authenticated against a passive observer or a late intruder on the store, but nothing pins who the
processes are. Give a roster and identities whenever the processes run on different hosts.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import PartyConfigError, PartyProcessError, SmpcError

__all__ = [
    "Identity", "Roster", "Links", "LinkError", "LinkAuthError", "LinkIntegrityError", "handshake",
    "generate_identity", "load_identity",
]

PROTOCOL = b"lightning_smpc/link/v1"
TAG_BYTES = 16
HEADER_BYTES = 8  # the message counter, in clear (also bound into every segment's nonce and AAD)
SEGMENT_BYTES = 1 << 30  # AES-GCM in `cryptography` takes at most 2**31 - 1 bytes per call
MAX_NAME_BYTES = 64
_HAS_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")  # newer cryptography; else allocate


class LinkError(SmpcError, RuntimeError):
    """A secure link could not be set up or used."""


class LinkAuthError(LinkError):
    """A process did not prove the identity the roster assigns to its rank (wrong or missing key)."""


class LinkIntegrityError(LinkError):
    """A received message failed authentication: tampered, replayed, reordered, dropped or mislabelled."""


class PeerLostError(PartyProcessError, LinkError):
    """Another role's process closed its connection (it failed or stopped) or did not answer within the timeout:
    raised in every surviving role, naming that role and what this process was exchanging with it."""


def _first_line(error: BaseException) -> str:
    """The first line of a gloo error (the rest is a C++ stack trace that names no role)."""
    text = str(error).strip()
    line = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0]) if text else type(error).__name__  # [pair.cc:561]
    return line.split(". ")[0][:200]


def lost_peer(name: str, peer: str, rank: int, doing: str, error: BaseException,
              notes: dict[str, str] | None = None) -> PeerLostError:
    """The error of a surviving role: which peer it lost, what it was doing, and the first cause, from the notes of
    the roles that stopped (their own errors before their peers' losses)."""
    first = _first_line(error)
    if "timed out" in first.lower() or "timeout" in first.lower():
        what = "did not answer within the timeout (it hung, or is still busy elsewhere)"
    else:
        what = "closed its connection: it failed or stopped"
    text = f"{peer} (rank {rank}) {what}, while {name} was {doing}."
    own = {who: why for who, why in (notes or {}).items() if not why.startswith(_LOST)}
    if own:
        text += " First cause: " + "; ".join(f"{who} stopped with {why}" for who, why in own.items())
    elif notes:
        text += " " + "; ".join(f"{who} stopped with {why}" for who, why in notes.items())
    return PeerLostError(f"{text} [gloo: {first}]")


_LOST = "PeerLostError"


def _check_name(name) -> str:
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"Expected a non-empty party name of at most {MAX_NAME_BYTES} bytes, got {name!r}.")
    return name


def _raw_public(pk: Ed25519PublicKey) -> bytes:
    return pk.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ---------------------------------------------------------------------------------------------- identities
@dataclass
class Identity:
    """One process's long-term signing key (Ed25519) and the name it plays in the roster."""

    name: str
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> "Identity":
        return cls(_check_name(name), Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key (what goes into the roster)."""
        return _raw_public(self.private_key.public_key())

    def to_pem(self, password: bytes | None = None) -> bytes:
        """The private key as PKCS#8 PEM (encrypted with ``password`` if given)."""
        enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)

    @classmethod
    def from_pem(cls, name: str, pem: bytes, password: bytes | None = None) -> "Identity":
        key = serialization.load_pem_private_key(pem, password=password)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"Expected an Ed25519 private key for {name!r}, got {type(key).__name__}.")
        return cls(_check_name(name), key)

    def save(self, path: str | os.PathLike, password: bytes | None = None) -> None:
        """Write the private key (PEM, file mode 0600, also when the file existed with another mode: ``os.open``'s
        mode applies only to a file it creates)."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # before any key byte is written
        except AttributeError:  # pragma: no cover - no fchmod (Windows)
            os.chmod(path, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_pem(password))

    @classmethod
    def load(cls, name: str, path: str | os.PathLike, password: bytes | None = None) -> "Identity":
        """The identity in a PEM file; refused (naming the file and the role) when others may read it or it cannot be
        read or parsed."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            if os.name == "posix" and mode & 0o077:
                raise PermissionError(
                    f"The private key file {str(path)!r} of {name!r} is readable by other users (mode "
                    f"{oct(mode & 0o777)}); make it private: chmod 600 {path}")
            pem = path.read_bytes()
        except PermissionError:
            raise
        except OSError as e:
            raise FileNotFoundError(f"Cannot read the private key file {str(path)!r} of {name!r}: {e.strerror or e}.") from None
        try:
            return cls.from_pem(name, pem, password)
        except (ValueError, TypeError) as e:
            raise ValueError(f"The private key file {str(path)!r} of {name!r} is not a usable Ed25519 PEM key ({e}).") from None

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


def generate_identity(name: str, path: str | os.PathLike | None = None, password: bytes | None = None) -> Identity:
    """A fresh identity for ``name``; saved to ``path`` (PEM, mode 0600) when given."""
    ident = Identity.generate(name)
    if path is not None:
        ident.save(path, password)
    return ident


def load_identity(name: str, path: str | os.PathLike, password: bytes | None = None) -> Identity:
    """The identity of ``name`` from a PEM file written by :func:`generate_identity`."""
    return Identity.load(name, path, password)


@dataclass(frozen=True)
class Roster:
    """Names and Ed25519 public keys of all processes of a run, in rank order (parties, then the dealer).

    Text form (:meth:`to_text`)::

        {"lightning_smpc_roster": 1, "members": [{"name": "alice", "ed25519": "<base64 of 32 bytes>"}, ...]}
    """

    names: tuple[str, ...]
    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        names, keys = tuple(self.names), tuple(bytes(k) for k in self.keys)
        for n in names:
            _check_name(n)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"The roster names {', '.join(map(repr, duplicates))} more than once: every role must appear "
                             f"once (got {names!r}).")
        if len(names) != len(keys) or len(names) < 2:
            raise ValueError(f"Expected at least two distinct names with one key each, got {names!r} and {len(keys)} keys.")
        for n, k in zip(names, keys):
            if len(k) != 32:
                raise ValueError(f"Expected a 32-byte Ed25519 public key for {n!r}, got {len(k)} bytes.")
            Ed25519PublicKey.from_public_bytes(k)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "keys", keys)

    @classmethod
    def from_identities(cls, identities: Sequence[Identity]) -> "Roster":
        return cls(tuple(i.name for i in identities), tuple(i.public_key for i in identities))

    def key_of(self, name: str) -> bytes:
        return self.keys[self.names.index(name)]

    def to_text(self) -> str:
        members = [{"name": n, "ed25519": base64.b64encode(k).decode()} for n, k in zip(self.names, self.keys)]
        return json.dumps({"lightning_smpc_roster": 1, "members": members}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_text(cls, text: str | bytes) -> "Roster":
        try:
            doc = json.loads(text)
            if doc.get("lightning_smpc_roster") != 1:
                raise ValueError("missing 'lightning_smpc_roster': 1")
            members = doc["members"]
            names = tuple(m["name"] for m in members)
            keys = tuple(base64.b64decode(m["ed25519"], validate=True) for m in members)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"Not a lightning_smpc roster ({e}). Expected the text written by Roster.to_text().") from None
        return cls(names, keys)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_text())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Roster":
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise FileNotFoundError(f"Cannot read the roster file {str(path)!r}: {e.strerror or e}.") from None
        try:
            return cls.from_text(text)
        except ValueError as e:
            raise ValueError(f"The roster file {str(path)!r}: {e}") from None

    def digest(self) -> bytes:
        """SHA-256 of the canonical roster (names and keys in rank order)."""
        h = hashlib.sha256(b"lightning_smpc/roster/v1")
        for n, k in zip(self.names, self.keys):
            nb = n.encode()
            h.update(struct.pack(">H", len(nb)) + nb + k)
        return h.digest()


# ---------------------------------------------------------------------------------------------- roll call
_ROLL_BYTES = 512
_AGREE_BYTES = 256


def _field(data: bytes, size: int) -> bytes:
    return struct.pack(">H", len(data)) + data + bytes(size - len(data))


def _read(part: bytes, at: int, size: int) -> tuple[str, int]:
    n = min(struct.unpack(">H", part[at : at + 2])[0], size)
    text = part[at + 2 : at + 2 + n].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text), at + 2 + size


def roll_call(rank: int, names: Sequence[str], problem: BaseException | None = None, group=None,
              agree: str = "") -> None:
    """Every process says whether it could start (its keys read, its configuration valid) before the handshake,
    and what it must agree on with the others (``agree``: the ring configuration's text).

    A role that failed before connecting would otherwise leave the others waiting for it, unnamed; here it still
    joins the group and tells them. Raises, on every rank when any failed: the failing rank's own ``problem``;
    on the others a :class:`PeerLostError` naming each failed role and its error (unauthenticated text, shown
    only: it decides nothing but that the run ends). When the roles' ``agree`` texts differ, every rank raises
    :class:`~.errors.PartyConfigError` listing each role's."""
    note = b"" if problem is None else f"{type(problem).__name__}: {problem}".encode("utf-8", "replace")[:_ROLL_BYTES]
    mine = agree.encode("utf-8", "replace")[:_AGREE_BYTES]
    notes, agreed = [], []
    for k, part in enumerate(_all_gather_bytes(_field(note, _ROLL_BYTES) + _field(mine, _AGREE_BYTES), len(names), group)):
        text, at = _read(part, 0, _ROLL_BYTES)
        if text:
            notes.append(f"{names[k]} (rank {k}) could not start: {text}")
        agreed.append(_read(part, at, _AGREE_BYTES)[0])
    if problem is not None:
        raise problem
    if notes:
        raise PeerLostError("; ".join(notes) + f". Nothing was exchanged; {names[rank]} stops too.")
    if len(set(agreed)) > 1:
        listing = "; ".join(f"{names[k]}: {a or '(none)'}" for k, a in enumerate(agreed))
        raise PartyConfigError(f"The roles' ring configurations differ, so their shares would not add up: {listing}. "
                               "Give every role the same precision_bits, compare_bits and compare_digit_bits.")


# ---------------------------------------------------------------------------------------------- handshake
_MAGIC = b"LSMPClk1"
_RECORD = struct.Struct(">8sI32s32s32s32s")  # magic, index, sha256(name), identity pk, ephemeral pk, contribution
_SIG_BYTES = 64


def _all_gather_bytes(data: bytes, world: int, group) -> list[bytes]:
    local = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local, group=group)
    return [bytes(p.numpy().tobytes()) for p in parts]


def _sig_message(session_id: bytes, name: str, eph: bytes, roster_digest: bytes) -> bytes:
    nb = name.encode()
    return b"lightning_smpc/handshake/v1" + session_id + struct.pack(">H", len(nb)) + nb + eph + roster_digest


def _hkdf(secret: bytes, salt: bytes, src: int, dst: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=PROTOCOL + struct.pack(">HH", src, dst)).derive(secret)


def handshake(
    rank: int, names: Sequence[str], roster: Roster | None = None, identity: Identity | None = None, group=None,
    timeout: datetime.timedelta | None = None,
) -> "Links":
    """Authenticate every process of ``group`` (default: the world) and derive the pairwise link keys.

    Args:
        rank: this process's index in ``names`` (and its rank in ``group``).
        names: every process's name, in rank order (compute parties, then the dealer, by convention).
        roster: the public keys of ``names`` (same order). ``None``: every process makes a fresh identity
            and the roster is built from the exchanged keys (encryption without pinned identities).
        identity: this process's signing key (required with a roster; ``None`` with a roster means this
            process has no key, and every process refuses it by name).
        timeout: of every later transfer (the pair channels' groups); default: 60 s.

    Raises:
        LinkAuthError: on every rank, naming each process whose signature does not verify against the
            roster, or whose record is malformed (wrong name, different roster).
    """
    names = tuple(_check_name(n) for n in names)
    world = len(names)
    if dist.get_world_size(group) != world:
        raise LinkError(f"Expected {world} processes ({names}) in the process group, found {dist.get_world_size(group)}.")
    if dist.get_rank(group) != rank:
        raise LinkError(f"This process has rank {dist.get_rank(group)} in the group but was given rank {rank} ({names[rank]!r}).")
    pinned = roster is not None  # the identities were known before the handshake (not just exchanged in it)
    if roster is not None and roster.names != names:
        raise LinkAuthError(f"The roster lists {roster.names}, but the processes of this run are {names} (same order expected).")
    local_problem = None
    if roster is None:
        identity = Identity.generate(names[rank])
    elif identity is None:
        local_problem = f"no identity key was given to {names[rank]!r}"
    elif identity.public_key != roster.key_of(names[rank]):
        local_problem = f"the identity key given to {names[rank]!r} is not the one the roster lists for it"
    eph = X25519PrivateKey.generate()
    eph_pk = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ident_pk = identity.public_key if identity is not None else bytes(32)
    record = _RECORD.pack(_MAGIC, rank, hashlib.sha256(names[rank].encode()).digest(), ident_pk, eph_pk, os.urandom(32))
    records = _all_gather_bytes(record, world, group)

    problems: dict[int, str] = {}
    fields = []
    for k, rec in enumerate(records):
        magic, idx, name_h, pk, epk, _ = _RECORD.unpack(rec)
        fields.append((pk, epk))
        if magic != _MAGIC or idx != k or name_h != hashlib.sha256(names[k].encode()).digest():
            problems[k] = "its handshake record is malformed or claims another name/rank"
    if roster is None:
        try:
            roster = Roster(names, tuple(pk for pk, _ in fields))
        except ValueError as e:
            raise LinkAuthError(f"Handshake failed: {e}") from None
    rdigest = roster.digest()
    session_id = hashlib.sha256(b"lightning_smpc/session/v1" + rdigest + b"".join(records)).digest()

    my_msg = _sig_message(session_id, names[rank], eph_pk, rdigest)
    sig = identity.sign(my_msg) if identity is not None else bytes(_SIG_BYTES)
    sigs = _all_gather_bytes(sig, world, group)
    for k in range(world):
        if k in problems:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(roster.keys[k]).verify(
                sigs[k], _sig_message(session_id, names[k], fields[k][1], rdigest))
        except InvalidSignature:
            presented = "no key" if fields[k][0] == bytes(32) else (
                "a key the roster does not list for it" if fields[k][0] != roster.keys[k] else "an invalid signature")
            problems[k] = f"its signature does not verify against the roster key ({presented})"
    if problems:
        who = "; ".join(f"{names[k]!r} (rank {k}): {why}" for k, why in sorted(problems.items()))
        hint = f" Locally: {local_problem}." if local_problem else ""
        raise LinkAuthError(
            f"Refused {', '.join(repr(names[k]) for k in sorted(problems))}: {who}.{hint} Every process must hold "
            "the private key whose public key the roster lists for its name (see lightning_smpc.mpc.links.generate_identity)."
        )

    send_keys, recv_keys = {}, {}
    for k in range(world):
        if k == rank:
            continue
        secret = eph.exchange(X25519PublicKey.from_public_bytes(fields[k][1]))
        send_keys[k] = _hkdf(secret, session_id, rank, k)
        recv_keys[k] = _hkdf(secret, session_id, k, rank)
    timeout = timeout or datetime.timedelta(seconds=60)
    channels = _pair_channels(world, group, timeout)
    links = Links(rank, names, roster, session_id, send_keys, recv_keys, group, channels)
    links.pinned = pinned
    links.timeout_s = timeout.total_seconds()
    links.post_notices()
    return links


# How each channel moves a message. Measured on a 2-core machine (gloo, torch 2.14, three processes), one
# encrypted exchange between two parties: 0.4-0.7 ms point-to-point, 0.65-1.1 ms as two broadcasts (noisy VM).
# * "main": exchanges between compute parties; both ends post at once: point-to-point send/recv.
# * "stream": one-way messages posted long before their receive (the dealer's material, the client's batch
#   headers): a broadcast from the sender in the pair's group, which does not hold the sender until the
#   receiver is ready (the dealer streaming over point-to-point sends took 12.3 s instead of 7.4 s).
# * "control": the first party's messages to the dealer, a broadcast too. The dealer waits on it while the
#   parties compute a whole streamed batch, which may last longer than the timeout: the first party then sends a
#   keep-alive (see RemoteDealer.heartbeat), so that this wait too is bounded by the timeout.
# * "notice": one last message per pair, a role's note on why it stops (see Links.say_goodbye): its receive is
#   posted when the links are made, so that the note lands even while the receiver waits on another channel.
CHANNELS = {"main": "p2p", "stream": "broadcast", "control": "broadcast", "notice": "p2p"}
NOTE_BYTES = 1024
_NOTE_TAG = "goodbye"


def _pair_channels(world: int, group, timeout: datetime.timedelta) -> dict:
    """One two-process gloo group per pair of processes and channel (see :data:`CHANNELS`). Every rank creates
    every group, in the same order (torch's rule for new_group)."""
    ranks = [dist.get_global_rank(group, k) if group is not None else k for k in range(world)]
    channels = {}
    for channel in CHANNELS:
        for i in range(world):
            for j in range(i + 1, world):
                channels[(channel, i, j)] = dist.new_group([ranks[i], ranks[j]], timeout=timeout, backend="gloo")
    return {"ranks": ranks, "groups": channels}


# ---------------------------------------------------------------------------------------------- links
def _spec_bytes(shape, dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def _segments(nbytes: int) -> list[tuple[int, int]]:
    """(offset, length) of the AEAD segments of one tensor's bytes (at least one, possibly empty)."""
    if nbytes <= SEGMENT_BYTES:  # the common case, without building a range (this runs for every tensor of a round)
        return [(0, nbytes)]
    return [(o, min(SEGMENT_BYTES, nbytes - o)) for o in range(0, nbytes, SEGMENT_BYTES)]


def _byte_view(t: torch.Tensor):
    """A writable numpy uint8 view of a contiguous CPU tensor's memory."""
    return t.reshape(-1).view(torch.uint8).numpy()


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


class Links:
    """This process's encrypted links to every other process of the run (made by :func:`handshake`).

    Peers are addressed by index in :attr:`names` or by name. Every call must be matched by the peer's
    corresponding call with the same ``tag``, dtype and shape, in the same order (as with gloo itself).
    """

    pinned: bool = False  # set by handshake(): True when every identity was checked against a roster given to it

    timeout_s = 60.0  # of every transfer (set by the handshake)

    def __init__(self, rank, names, roster, session_id, send_keys, recv_keys, group=None, channels=None) -> None:
        self.rank, self.names, self.roster, self.session_id, self.group = rank, tuple(names), roster, session_id, group
        self._channels = channels  # None: plain point-to-point send/recv on ``group`` (see _pair_channels)
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
        """Tell every peer why this process stops (best effort: a peer that is gone is skipped). A surviving role
        then names the first cause, not only the peer whose connection closed last."""
        if self._channels is None:
            return
        note = torch.zeros(NOTE_BYTES, dtype=torch.uint8)
        data = why.encode("utf-8", "replace")[: NOTE_BYTES - 2]
        note[:2] = torch.tensor(list(struct.pack(">H", len(data))), dtype=torch.uint8)
        note[2 : 2 + len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else note[2:2]
        for peer in self._notices:
            try:
                self._post(self.rank, peer, self._seal(peer, [note], _NOTE_TAG), "notice").wait()
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
                aad = self._aad(peer, self.rank, got, _NOTE_TAG, torch.uint8, (NOTE_BYTES,), (0, 0, 0))
                plain = self._recv_aead[peer].decrypt(self._nonce(got), bytes(buf[HEADER_BYTES:].numpy()), aad)
            except InvalidTag:
                continue
            n = min(struct.unpack(">H", plain[:2])[0], NOTE_BYTES - 2)
            text = plain[2 : 2 + n].decode("utf-8", "replace")
            notes[self.names[peer]] = "".join(c if c.isprintable() else " " for c in text)
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
        tb, db = tag.encode(), str(dtype).encode()
        return (PROTOCOL + self.session_id + struct.pack(">HHQ", src, dst, ctr) + struct.pack(">H", len(tb)) + tb
                + struct.pack(">B", len(db)) + db + struct.pack(">B", len(shape)) + struct.pack(f">{len(shape)}Q", *shape)
                + struct.pack(">IIQ", *seg))

    @staticmethod
    def _nonce(ctr: int) -> bytes:
        return b"\0\0\0\0" + struct.pack(">Q", ctr)

    def _seal(self, dst: int, tensors: Sequence[torch.Tensor], tag: str) -> torch.Tensor:
        aead = self._send_aead[dst]
        ctr0 = ctr = self._send_ctr[dst]
        plans = []
        total = HEADER_BYTES
        for t in tensors:
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous()
            segs = _segments(t.numel() * t.element_size())
            plans.append((t, segs))
            total += sum(n + TAG_BYTES for _, n in segs)
        out = torch.empty(total, dtype=torch.uint8)
        out_np = out.numpy()
        out_np[:HEADER_BYTES] = np.frombuffer(struct.pack(">Q", ctr0), dtype=np.uint8)
        pos, plain = HEADER_BYTES, 0
        t0 = time.perf_counter()
        for ti, (t, segs) in enumerate(plans):
            src = _byte_view(t) if t.numel() else None
            for si, (off, n) in enumerate(segs):
                aad = self._aad(self.rank, dst, ctr, tag, t.dtype, tuple(t.shape), (ti, si, off))
                data = src[off:off + n] if src is not None else b""
                if _HAS_INTO:
                    aead.encrypt_into(self._nonce(ctr), data, aad, out_np[pos:pos + n + TAG_BYTES])
                else:
                    ct = aead.encrypt(self._nonce(ctr), bytes(data), aad)
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
        return HEADER_BYTES + sum(sum(n + TAG_BYTES for _, n in _segments(_spec_bytes(s, d))) for s, d in specs)

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
            dst_np = _byte_view(out) if out.numel() else None
            for si, (off, n) in enumerate(_segments(out.numel() * out.element_size())):
                aad = self._aad(src, self.rank, ctr, tag, dtype, shape, (ti, si, off))
                ct = buf_np[pos:pos + n + TAG_BYTES]
                try:
                    if _HAS_INTO:
                        aead.decrypt_into(self._nonce(ctr), ct, aad, dst_np[off:off + n] if dst_np is not None else bytearray())
                    else:
                        pt = aead.decrypt(self._nonce(ctr), bytes(ct), aad)
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
        if self._channels is None:
            if src == self.rank:
                return dist.isend(buf, group=self.group, group_dst=dst)
            return dist.irecv(buf, group=self.group, group_src=src)
        if channel not in CHANNELS:
            raise LinkError(f"Unknown channel {channel!r}; expected one of {tuple(CHANNELS)}.")
        group = self._channels["groups"][(channel, min(src, dst), max(src, dst))]
        if CHANNELS[channel] == "p2p":  # in the pair's group, the lower rank is 0
            if src == self.rank:
                return dist.isend(buf, group=group, group_dst=int(dst > src))
            return dist.irecv(buf, group=group, group_src=int(src > dst))
        return dist.broadcast(buf, src=self._channels["ranks"][src], group=group, async_op=True)

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

    def _members(self, ranks) -> list[int]:
        members = list(range(self.world_size)) if ranks is None else [self.index(r) for r in ranks]
        if self.rank not in members:
            raise LinkError(f"{self.name!r} is not among the members {[self.names[m] for m in members]} of this collective.")
        return members

    def all_gather(self, tensor: torch.Tensor, tag: str, ranks: Sequence[int | str] | None = None) -> list[torch.Tensor]:
        """Every member's tensor (same shape and dtype everywhere), in ``ranks`` order (default: all)."""
        return [row[0] for row in self.all_gather_many([tensor], tag, ranks)]

    def all_gather_many(self, tensors: Sequence[torch.Tensor], tag: str,
                        ranks: Sequence[int | str] | None = None) -> list[list[torch.Tensor]]:
        """Every member's tensors (same shapes and dtypes everywhere) as ONE message per pair, in ``ranks``
        order (default: all)."""
        members = self._members(ranks)
        others = [m for m in members if m != self.rank]
        tensors = list(tensors)
        specs = [(tuple(t.shape), t.dtype) for t in tensors]
        got = self._exchange({m: tensors for m in others}, {m: specs for m in others}, tag)
        return [tensors if m == self.rank else got[m] for m in members]

    def gather_to(self, dst: int | str, tensor: torch.Tensor, tag: str, ranks: Sequence[int | str] | None = None):
        """Every member's tensor at ``dst`` (in ``ranks`` order); None at the other members."""
        members, dst = self._members(ranks), self.index(dst)
        if self.rank != dst:
            self._exchange({dst: [tensor]}, {}, tag)
            return None
        others = [m for m in members if m != dst]
        got = self._exchange({}, {m: [(tuple(tensor.shape), tensor.dtype)] for m in others}, tag)
        return [tensor if m == dst else got[m][0] for m in members]

    def broadcast(self, tensor: torch.Tensor, src: int | str, tag: str, ranks: Sequence[int | str] | None = None,
                  channel: str = "main") -> torch.Tensor:
        """``src``'s tensor at every member (the others pass a tensor of the right shape and dtype)."""
        members, src = self._members(ranks), self.index(src)
        if self.rank == src:
            self._exchange({m: [tensor] for m in members if m != src}, {}, tag, channel)
            return tensor
        return self._exchange({}, {src: [(tuple(tensor.shape), tensor.dtype)]}, tag, channel)[src][0]
