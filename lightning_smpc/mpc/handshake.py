"""How the processes of a run start talking: the roll call (who could start, configured alike) and the signed X25519
handshake that derives every pair's link keys and opens the :class:`~.links.Links`. See :mod:`.links`."""
from __future__ import annotations

import datetime
import hashlib
import os
import struct
from typing import Sequence

import torch
import torch.distributed as dist
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import PartyConfigError
from .identities import Identity, Roster, _check_name
from .links import PROTOCOL, LinkAuthError, LinkError, Links, PeerLostError, pair_channels

__all__ = ["roll_call", "handshake"]


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
    on the others a :class:`PeerLostError` naming each failed role and its error's class (unauthenticated, shown
    only: it decides nothing but that the run ends; the message stays with the role, it may name its files). When the roles' ``agree`` texts differ, every rank raises
    :class:`~.errors.PartyConfigError` listing each role's."""
    note = b"" if problem is None else type(problem).__name__.encode("utf-8", "replace")[:_ROLL_BYTES]  # not its text
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
    channels = pair_channels(world, group, timeout)
    links = Links(rank, names, roster, session_id, send_keys, recv_keys, group, channels)
    links.pinned = pinned
    links.timeout_s = timeout.total_seconds()
    links.post_notices()
    return links
