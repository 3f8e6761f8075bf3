"""The MPC core: fixed-point additive secret sharing in Z_2^64 with a trusted dealer (pure torch).

Layers: :mod:`.encoding` -> :mod:`.prg`, :mod:`.comm`, :mod:`.dealer` -> :mod:`.protocols` ->
:mod:`.tensor`/:mod:`.ops` (torch ops on shares) -> :class:`Session` (functional API). Never imports
Lightning.
"""
from . import ops as _ops  # noqa: F401  (registers the op table)
from .comm import Communicator, PartyStats
from .config import RingConfig
from .dealer import TrustedDealer
from .encoding import FixedPointEncoder
from .errors import (
    DealerStoreError,
    EncodingRangeError,
    NonFiniteInputError,
    PartyConfigError,
    ProtocolViolation,
    RevealNotAllowedError,
    SessionMismatchError,
    ShapeMismatchError,
    SmpcError,
    UnsupportedOpError,
)
from .ops import argmax_onehot, supported_ops
from .protocols import COSTS
from .session import RevealRecord, Session
from .tensor import ShareTensor

__all__ = [
    "COSTS", "Communicator", "DealerStoreError", "EncodingRangeError", "FixedPointEncoder", "NonFiniteInputError",
    "PartyConfigError", "PartyStats", "ProtocolViolation", "RingConfig", "RevealNotAllowedError", "RevealRecord", "Session",
    "SessionMismatchError", "ShapeMismatchError", "ShareTensor", "SmpcError", "TrustedDealer", "UnsupportedOpError",
    "argmax_onehot", "supported_ops",
]
