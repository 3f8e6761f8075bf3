"""Who the processes of a run are: each role's Ed25519 signing key (:class:`Identity`, a PEM file readable by its
owner only) and the :class:`Roster` every host holds (names -> public keys, in rank order). See :mod:`.links`."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["Identity", "Roster", "generate_identity", "load_identity", "MAX_NAME_BYTES"]

MAX_NAME_BYTES = 64


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
