"""Cryptographically secure randomness for shares and dealer material.

:class:`CSPRNG` is AES-256 in counter mode (the ``cryptography`` package, OpenSSL underneath) keyed from
``os.urandom``; it writes keystream straight into a numpy buffer (``update_into``), ~4-5 GB/s on one
core here, so sampling never dominates a protocol's run time. torch's and numpy's generators are *not*
used for anything secret.

:class:`SeededTestPRG` is the same generator keyed from a SHA-256 of a public seed: deterministic, for tests
and reproducible benchmarks only, and it warns that it is not secure.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["CSPRNG", "SeededTestPRG", "make_prg", "SEED_BYTES"]

SEED_BYTES = 16  # a material seed: the dealer gives each party one per request instead of its shares
_SEED_DOMAIN = b"lightning_smpc/material-seed/v1\x00"


class CSPRNG:
    """AES-256-CTR keystream generator; ``key`` defaults to 32 bytes from ``os.urandom``."""

    secure = True

    def __init__(self, key: bytes | None = None) -> None:
        key = os.urandom(32) if key is None else key
        self._enc = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()
        self._zeros = np.zeros(0, dtype=np.uint8)
        self.bytes_generated = 0

    @classmethod
    def from_seed(cls, seed: bytes) -> "CSPRNG":
        """The generator a material seed expands into: AES-256-CTR keyed by ``SHA-256(domain || seed)``.

        The dealer and the party that holds ``seed`` (:data:`SEED_BYTES` bytes drawn from the dealer's CSPRNG,
        fresh for every request and party) expand the same stream; nobody else can.
        """
        if len(seed) != SEED_BYTES:
            raise ValueError(f"Expected a {SEED_BYTES}-byte seed, got {len(seed)} bytes.")
        return CSPRNG(hashlib.sha256(_SEED_DOMAIN + bytes(seed)).digest())

    def seed(self) -> bytes:
        """A fresh :data:`SEED_BYTES`-byte seed from this generator's stream (never repeats: the stream goes on)."""
        return self.random_bytes(SEED_BYTES).tobytes()

    def random_bytes(self, n: int) -> np.ndarray:
        """``n`` uniformly random bytes as a fresh uint8 numpy array."""
        if self._zeros.size < n:
            self._zeros = np.zeros(max(n, 1 << 20), dtype=np.uint8)
        out = np.empty(n + 15, dtype=np.uint8)  # update_into wants block_size - 1 spare bytes
        self._enc.update_into(memoryview(self._zeros[:n]), out)
        self.bytes_generated += n
        return out[:n]

    def int64(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform elements of Z_2^64 (int64) of the given shape."""
        n = math.prod(shape)  # math.prod: np.prod costs microseconds per call, and draws are many
        t = torch.from_numpy(self.random_bytes(8 * n).view(np.int64)).reshape(shape)
        return t.to(device) if str(device) != "cpu" else t

    def int16(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform int16 elements (16 random bits each) of the given shape."""
        n = math.prod(shape)  # math.prod: np.prod costs microseconds per call, and draws are many
        t = torch.from_numpy(self.random_bytes(2 * n).view(np.int16)).reshape(shape)
        return t.to(device) if str(device) != "cpu" else t

    def draw(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform shares of one dtype: int64/int16 words, or bits for uint8 (0/1 values)."""
        if dtype == torch.int64:
            return self.int64(shape, device)
        if dtype == torch.int16:
            return self.int16(shape, device)
        if dtype == torch.uint8:
            return self.bits(shape, device)
        raise TypeError(f"no uniform draw for {dtype}")

    def bits(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform bits (uint8 tensor of 0/1)."""
        n = math.prod(shape)  # math.prod: np.prod costs microseconds per call, and draws are many
        raw = np.unpackbits(self.random_bytes((n + 7) // 8))[:n]
        t = torch.from_numpy(raw).reshape(shape)
        return t.to(device) if str(device) != "cpu" else t

    def uniform_mod(self, shape: tuple[int, ...], bits: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform values in [0, 2**bits) as int64 (bits <= 63)."""
        return self.int64(shape, device) & ((1 << bits) - 1)


class SeededTestPRG(CSPRNG):
    """Deterministic AES-CTR stream keyed by a public seed. NOT SECURE: for tests and benchmarks only."""

    secure = False

    def __init__(self, seed: int) -> None:
        warnings.warn(
            f"SeededTestPRG(seed={seed}) makes shares and dealer material predictable: use it for tests "
            "and reproducible benchmarks only, never with real data (pass seed=None).",
            stacklevel=3,
        )
        super().__init__(hashlib.sha256(f"lightning_smpc-test-seed:{seed}".encode()).digest())


def make_prg(seed: int | None) -> CSPRNG:
    """The secure generator for ``seed=None``, the seeded test generator otherwise."""
    return CSPRNG() if seed is None else SeededTestPRG(seed)
