"""Model shares kept by the compute parties: one file per party, holding that party's shares only.

A file is ``MAGIC || header length (4 bytes, big-endian) || header (canonical JSON) || body || seal``:

* **header**: the format version, the party the file is for, every party of the sharing, the ring it was encoded
  for (:class:`~.config.RingConfig`), the fractional bits, a random sharing id (the files of one sharing carry the
  same id: shares of two sharings do not add up to the weights), a fingerprint of the architecture (parameter names
  and shapes), a fingerprint of the weights keyed by a secret only the model owner keeps (the parties cannot test a
  guessed model against it), each tensor's name and shape, who sealed the file and how.
* **body**: the party's int64 shares (little-endian, in the header's order). With a recipient key it is encrypted
  to that party: an ephemeral X25519 key agreed with the party's key (its Ed25519 identity's birational X25519
  form, as libsodium and age do), HKDF-SHA256 bound to the header, AES-256-GCM with the header as associated data.
* **seal**: with a signer, the owner's Ed25519 signature over everything before it (files may travel over any
  channel: a party checks it against the roster); without, a SHA-256 digest (it finds a damaged file, not a forged
  one: say so, and use a roster when the files leave the owner's hands).

Nothing here is unpickled: the header is JSON and the body raw integers whose dtype and shapes the header gives.

    >>> import torch, tempfile, os
    >>> header = ShareFileHeader.new("alice", ("alice", "bob"), {"precision_bits": 16}, 16, "a" * 64, "b" * 64,
    ...                              [("w", (2, 3))])
    >>> path = os.path.join(tempfile.mkdtemp(), "alice.shares")
    >>> write_share_file(path, header, {"w": torch.arange(6).reshape(2, 3)})
    >>> got_header, tensors = read_share_file(path, "alice")
    >>> got_header.sharing_id == header.sharing_id, tensors["w"].tolist()
    (True, [[0, 1, 2], [3, 4, 5]])
    >>> read_share_file(path, "bob")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_smpc.mpc.share_files.ModelSharesError: ... holds alice's shares, not bob's: each party reads its own file ...
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import struct
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import PartyConfigError

__all__ = ["FORMAT", "ModelSharesError", "ShareFileHeader", "write_share_file", "read_share_file", "file_name",
           "x25519_public_of"]

FORMAT = "lightning_smpc/model-shares/v1"
MAGIC = b"LSMPC model shares\n"
MAX_HEADER_BYTES = 1 << 24
MAX_DIM = 1 << 40
_SIG_BYTES, _DIGEST_BYTES, _EPH_BYTES, _TAG_BYTES = 64, 32, 32, 16
_P = 2**255 - 19


class ModelSharesError(PartyConfigError):
    """Model share files that do not fit this run (or were damaged, swapped, mixed or forged): refused before
    anything runs."""


def file_name(party: str) -> str:
    """A party's file in a share directory."""
    return f"{party}.shares"


@dataclass(frozen=True)
class ShareFileHeader:
    """What a share file says about itself (all public: no share values)."""

    format: str
    party: str
    parties: tuple
    ring: dict
    frac_bits: int
    sharing_id: str  # random, one per sharing: the files of one sharing carry the same
    architecture: str  # SHA-256 of the parameter names and shapes
    weights: str  # HMAC-SHA256 of the encoded weights under a key only the owner keeps (its receipt)
    tensors: tuple  # ((name, shape), ...)
    sealed_by: Optional[str] = None  # the signer's roster name; None: a digest only
    encrypted: bool = False
    model_class: str = ""
    test_seed: bool = False  # shares drawn from the deterministic test generator: insecure, refused outside tests

    @classmethod
    def new(cls, party: str, parties: Sequence[str], ring: dict, frac_bits: int, architecture: str, weights: str,
            tensors: Sequence, sharing_id: Optional[str] = None, sealed_by: Optional[str] = None,
            encrypted: bool = False, model_class: str = "", test_seed: bool = False) -> "ShareFileHeader":
        return cls(FORMAT, party, tuple(parties), dict(ring), frac_bits, sharing_id or secrets.token_hex(16),
                   architecture, weights, tuple((n, tuple(s)) for n, s in tensors), sealed_by, encrypted, model_class,
                   test_seed)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "ShareFileHeader":
        """Parse and validate a header (anyone can write one when there is no roster): every field's type, shapes of
        non-negative bounded integers, distinct names; any defect is a :class:`ModelSharesError`."""
        try:
            raw = json.loads(data.decode())
            if not isinstance(raw, dict) or raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format') if isinstance(raw, dict) else None!r}, this version reads "
                                 f"{FORMAT!r}")
            header = cls(**{**raw, "parties": tuple(raw["parties"]),
                            "tensors": tuple((n, tuple(s)) for n, s in raw["tensors"])})
            header._validate()
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
            raise ModelSharesError(f"{where}: not a valid model-shares header ({e}).") from None
        return header

    def _validate(self) -> None:
        for name in ("party", "sharing_id", "architecture", "weights", "model_class"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string")
        if not all(isinstance(p, str) and p for p in self.parties) or self.party not in self.parties:
            raise ValueError("parties must be names, among them the file's party")
        if not isinstance(self.ring, dict) or not all(_is_int(v) for v in self.ring.values()):
            raise TypeError("ring must map settings to integers")
        if not _is_int(self.frac_bits) or self.frac_bits != self.ring.get("precision_bits"):
            raise ValueError("frac_bits must be the ring's precision_bits")
        if self.sealed_by is not None and not isinstance(self.sealed_by, str):
            raise TypeError("sealed_by must be a name or null")
        if not isinstance(self.encrypted, bool) or not isinstance(self.test_seed, bool):
            raise TypeError("encrypted and test_seed must be booleans")
        names = [n for n, _ in self.tensors]
        if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
            raise ValueError("tensor names must be distinct strings")
        for _, shape in self.tensors:
            if len(shape) > 8 or not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape):
                raise ValueError(f"shape {shape!r}: at most 8 dimensions of integers in [0, {MAX_DIM}]")

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for _, s in self.tensors)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------- keys
def x25519_public_of(ed25519_public: bytes) -> bytes:
    """The X25519 form of an Ed25519 public key (``u = (1 + y) / (1 - y)`` mod ``2^255 - 19``)."""
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    return ((1 + y) * pow((1 - y) % _P, _P - 2, _P) % _P).to_bytes(32, "little")


def _x25519_private_of(identity) -> X25519PrivateKey:
    """The X25519 form of an identity's Ed25519 key (the clamped half of SHA-512 of its seed; X25519 clamps)."""
    seed = identity.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption())
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


def _file_key(shared: bytes, eph_public: bytes, recipient: bytes, header: bytes) -> bytes:
    info = FORMAT.encode() + b"/body" + hashlib.sha256(header).digest()
    return HKDF(hashes.SHA256(), 32, salt=eph_public + recipient, info=info).derive(shared)


def _raw(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ---------------------------------------------------------------------------------------------- write / read
def write_share_file(path: str | os.PathLike, header: ShareFileHeader, tensors: dict[str, torch.Tensor],
                     signer=None, recipient_key: Optional[bytes] = None) -> None:
    """Write one party's file: ``tensors`` (int64, the header's names and shapes); sealed by ``signer`` (an
    :class:`~.identities.Identity`) or a digest; encrypted to ``recipient_key`` (the party's Ed25519 public key)."""
    body = b"".join(tensors[name].to(torch.int64).contiguous().cpu().reshape(-1).numpy().astype("<i8").tobytes()
                    for name, _ in header.tensors)
    if len(body) != 8 * header.numel:
        raise ValueError("The tensors do not match the header's shapes.")
    header_bytes = header.to_bytes()
    prefix = MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes
    if header.encrypted:
        if recipient_key is None:
            raise ValueError("An encrypted file needs the recipient's public key.")
        if len(body) >= 1 << 31:  # one AES-GCM call (the `cryptography` package) takes less than 2 GiB
            raise ValueError(f"An encrypted file holds less than 2 GiB of shares (about 268M parameters); this model "
                             f"needs {len(body)} bytes. Save it without a roster (a digest only) and move the files "
                             "over channels you trust.")
        eph = X25519PrivateKey.generate()
        eph_public, recipient = _raw(eph.public_key()), x25519_public_of(recipient_key)
        key = _file_key(eph.exchange(X25519PublicKey.from_public_bytes(recipient)), eph_public, recipient, header_bytes)
        body = eph_public + AESGCM(key).encrypt(bytes(12), body, prefix)  # one key per file: a zero nonce is unique
    content = prefix + body
    seal = signer.sign(content) if header.sealed_by is not None else hashlib.sha256(content).digest()
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # a party's shares: its owner's only, from birth
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content + seal)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # whole or not at all
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_share_file(path: str | os.PathLike, party: str, roster=None, identity=None,
                    owner: Optional[str] = None) -> tuple[ShareFileHeader, dict[str, torch.Tensor]]:
    """One party's file, checked: it is ``party``'s, intact, sealed by ``owner`` (its roster key) when a roster is
    given, and decrypted with ``identity`` (the party's own key) when encrypted. Raises :class:`ModelSharesError`."""
    where = f"The model shares file {str(path)!r}"
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ModelSharesError(f"{where} of {party!r} is missing: every compute party needs its own file "
                               f"({file_name(party)} in the directory save_model_shares wrote).") from None
    with f:
        start = len(MAGIC) + 4
        head = f.read(start)
        if len(head) < start or not head.startswith(MAGIC):
            raise ModelSharesError(f"{where} is not a model shares file.")
        (n,) = struct.unpack(">I", head[len(MAGIC):])
        size = os.fstat(f.fileno()).st_size
        if n > MAX_HEADER_BYTES or start + n > size:
            raise ModelSharesError(f"{where} is truncated or damaged (header length {n}).")
        header = ShareFileHeader.from_bytes(f.read(n), where)
        if header.party != party:
            raise ModelSharesError(f"{where} holds {header.party}'s shares, not {party}'s: each party reads its own "
                                   "file (were the files swapped or renamed?).")
        seal_bytes = _SIG_BYTES if header.sealed_by is not None else _DIGEST_BYTES
        expected = start + n + 8 * header.numel + (_EPH_BYTES + _TAG_BYTES if header.encrypted else 0) + seal_bytes
        if size != expected:  # before the body is read: a header cannot make this process allocate what is not there
            raise ModelSharesError(f"{where} has {size} bytes, its header says {expected} (truncated or damaged).")
        f.seek(0)
        data = memoryview(f.read())
    content, seal = data[:-seal_bytes], bytes(data[-seal_bytes:])
    _check_seal(header, content, seal, roster, owner, where)
    body = content[start + n:]
    if header.encrypted:
        body = memoryview(_decrypt(header, content[:start + n], body, identity, where))
    tensors, offset = {}, 0
    for name, shape in header.tensors:
        k = math.prod(shape)
        tensors[name] = torch.frombuffer(bytearray(body[offset:offset + 8 * k]), dtype=torch.int64).reshape(shape) \
            if k else torch.zeros(shape, dtype=torch.int64)
        offset += 8 * k
    return header, tensors


def _check_seal(header, content: bytes, seal: bytes, roster, owner, where: str) -> None:
    if header.sealed_by is None:
        if roster is not None:
            raise ModelSharesError(f"{where} is not signed, but this run has a roster: save the shares with the "
                                   "roster and the model owner's identity (save_model_shares(roster=..., identity=...)).")
        if not secrets.compare_digest(hashlib.sha256(content).digest(), seal):
            raise ModelSharesError(f"{where} is damaged: its digest does not match (a file without a roster is "
                                   "protected against damage only, not against forgery).")
        return
    if roster is None:
        raise ModelSharesError(f"{where} is signed by {header.sealed_by!r}: pass the roster to check it.")
    if owner is not None and header.sealed_by != owner:
        raise ModelSharesError(f"{where} is signed by {header.sealed_by!r}, but the model owner is {owner!r}.")
    try:
        Ed25519PublicKey.from_public_bytes(roster.key_of(header.sealed_by)).verify(seal, content)
    except (InvalidSignature, KeyError, ValueError):
        raise ModelSharesError(f"{where}: the signature of {header.sealed_by!r} does not verify against the roster "
                               "(tampered, or signed with another key).") from None


def _decrypt(header, prefix: bytes, body: bytes, identity, where: str) -> bytes:
    if identity is None:
        raise ModelSharesError(f"{where} is encrypted to {header.party!r}: pass that party's identity (its key).")
    if len(body) < _EPH_BYTES + _TAG_BYTES:
        raise ModelSharesError(f"{where} is truncated.")
    private = _x25519_private_of(identity)
    eph_public, recipient = bytes(body[:_EPH_BYTES]), _raw(private.public_key())
    key = _file_key(private.exchange(X25519PublicKey.from_public_bytes(eph_public)), eph_public, recipient,
                    bytes(prefix[len(MAGIC) + 4:]))
    try:
        return AESGCM(key).decrypt(bytes(12), body[_EPH_BYTES:], bytes(prefix))
    except InvalidTag:
        raise ModelSharesError(f"{where} does not decrypt with {identity.name!r}'s key (encrypted to another key, "
                               "or damaged).") from None
