"""Errors raised by the MPC core. Every message says what was expected, what was found, and how to fix it."""
from __future__ import annotations


class SmpcError(Exception):
    """Base class of all lightning_smpc errors."""


class EncodingRangeError(SmpcError, ValueError):
    """A plaintext value is outside the fixed-point range in which every protocol is exact."""


class NonFiniteInputError(SmpcError, ValueError):
    """A plaintext value is NaN or infinite and cannot be encoded."""


class UnsupportedOpError(SmpcError, NotImplementedError):
    """A torch operation has no secure implementation (it would have to compute on raw share words)."""


class SessionMismatchError(SmpcError, ValueError):
    """Two shared values from different sessions were combined."""


class ShapeMismatchError(SmpcError, ValueError):
    """Operands have shapes that the operation cannot combine."""


class PartyConfigError(SmpcError, ValueError):
    """The party names are invalid (too few, duplicated, dealer among the compute parties, ...)."""


class DealerStoreError(SmpcError, RuntimeError):
    """The preprocessed dealer store does not hold the material that the online phase asked for."""


class ProtocolViolation(SmpcError, RuntimeError):
    """Code tried to reconstruct a secret outside the communicator (a protocol that cheats)."""


class RevealNotAllowedError(SmpcError, RuntimeError):
    """A value may not be revealed in its current form (e.g. a skipped softmax whose only valid use is argmax)."""


class PartyProcessError(SmpcError, RuntimeError):
    """A party's (or the dealer's) process failed, died or stopped answering; the run ended (every launch form)."""


class WireError(SmpcError, ValueError):
    """A message between processes is malformed or outside what the protocol allows."""


class LinkError(SmpcError, RuntimeError):
    """A secure link could not be set up or used."""


class LinkAuthError(LinkError):
    """A process did not prove the identity the roster assigns to its rank (wrong or missing key)."""


class LinkIntegrityError(LinkError):
    """A received message failed authentication: tampered, replayed, reordered, dropped or mislabelled."""


class PeerLostError(PartyProcessError, LinkError):
    """Another role's process closed its connection (it failed or stopped) or did not answer within the timeout:
    raised in every surviving role, naming that role and what this process was exchanging with it."""
