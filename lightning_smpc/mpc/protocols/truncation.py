"""Dealer-assisted probabilistic truncation (Escudero, Ghosh, Keller, Rachuri, Scholl 2020, §5.1)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..kinds import Trunc
from ._cost import nbytes, protocol

if TYPE_CHECKING:
    from ..runtime import PartyContext

HALF = 1 << 62


def trunc_public_part(c: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From the opened ``c = z + 2^62 + r``: the public part of ``z >> m`` and the coefficient of ``[r_63]``."""
    c63 = (c >> 63) & 1
    pub = ((c & ((1 << 63) - 1)) >> m) - (1 << (62 - m)) + (c63 << (63 - m))
    coef = (1 - 2 * c63) << (63 - m)
    return pub, coef


def trunc_from_opened(c: torch.Tensor, mat, m: int, first: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shares of the truncated value, plus its public part and r_63 coefficient (for fused protocols)."""
    pub, coef = trunc_public_part(c, m)
    y = coef * mat.r63 - mat.u
    if first:
        y[0] += pub
    return y, pub, coef


@protocol(
    "trunc",
    rounds=lambda n, **s: 1,
    bytes_sent=lambda n, numel, **s: (n - 1) * nbytes(numel, 64),
    offline="[r], [(r mod 2^63) >> m], [r_63] (arithmetic)",
)
def truncate(sess: PartyContext, shares: torch.Tensor, m: int) -> torch.Tensor:
    """Shares of ``floor(z / 2^m)`` or that plus one, for any number of parties.

    Protocol: 1. open ``c = z + 2^62 + r`` (uniform); 2. with ``b = c_63 xor r_63`` (the wrap of the low
    63 bits, exact because ``z + 2^62`` is in ``[0, 2^63)``) compute
    ``(c mod 2^63) >> m - [u] + 2^(63-m) [b] - 2^(62-m)`` locally.

    Correctness: error in {0, +1} LSB, never a wrap-around error, for ``|z| < 2^62``.
    Cost: 1 round, ``8 * numel`` bytes to each other party. Offline: ``[r], [u], [r_63]``.
    """
    mat = sess.dealer.request(Trunc.request(tuple(shares.shape[1:]), m))
    masked = shares + mat.r
    if sess.holds_first:
        masked[0] += HALF
    (c,) = sess.comm.open([(masked, "arith", 64)], tag="trunc")
    y, _, _ = trunc_from_opened(c, mat, m, sess.holds_first)
    return y
