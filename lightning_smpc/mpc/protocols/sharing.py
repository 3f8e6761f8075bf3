"""Input sharing (SPDZ-style masked input) and revealing."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..kinds import FreshMask, InputMask, OutsideInputMask
from ..kinds.outside_input import input_binding
from ._cost import nbytes, protocol

if TYPE_CHECKING:
    from ..runtime import PartyContext


@protocol(
    "share",
    rounds=lambda n, **s: 1,
    bytes_sent=lambda n, numel, **s: 0,  # compute parties send nothing; the owner sends n * 8 * numel
    offline="input_mask: A in clear to the owner, shares of A to the parties (an outside owner derives A from its key)",
)
def share(sess: PartyContext, encoded: torch.Tensor, owner: str):
    """Share an encoded input held by ``owner`` (a compute party or an outside input owner).

    Protocol: 1. the dealer gives the owner a uniform mask ``A`` and the parties shares ``[A]``;
    2. the owner broadcasts ``eps = x - A`` (uniform: it reveals nothing); 3. party 0 adds ``eps`` to its
    share of ``A``. The parties keep ``(eps, [A])`` as the operand's opened mask: a later Beaver product
    with it needs no further opening (the mask masks this one value only).

    Cost: 1 round; the owner sends ``8 * numel`` bytes to each party; the parties send nothing.
    Returns ``(shares, eps, a_shares, mask_id)``.
    """
    if owner in sess.parties:
        req = InputMask.request(tuple(encoded.shape), owner)
    else:  # an owner outside the parties derives its mask from its key: its inputs are counted (public)
        index = sess.input_index(owner)
        req = OutsideInputMask.request(tuple(encoded.shape), owner, index)
        sess.comm.bind_input(input_binding(owner, index, tuple(encoded.shape)))
    mat = sess.dealer.request(req)
    if "owner_mask" in mat.data:  # only the owner's process holds the mask and the value
        eps = encoded.to(sess.device) - mat.owner_mask
    else:
        eps = torch.empty(tuple(encoded.shape), dtype=torch.int64, device=sess.device)
    eps = sess.comm.broadcast_input(owner, eps, tag="share")
    a = mat.a
    shares = a.clone()
    if sess.holds_first:
        shares[0] += eps
    return shares, eps, a, mat.created[0]


@protocol(
    "remask",
    rounds=lambda n, **s: 1,
    bytes_sent=lambda n, numel, **s: (n - 1) * nbytes(numel, 64),
    offline="fresh_mask: shares of a uniform B per value (no owner sees it)",
)
def remask(sess: PartyContext, values: list[torch.Tensor]) -> list[tuple]:
    """Give values the parties already hold as shares (model weights kept between runs) a fresh opened mask.

    Protocol: 1. the dealer gives the parties shares ``[B]`` of a uniform mask per value (nobody gets ``B``);
    2. the parties open ``eps = W - B`` for all values at once. The parties keep ``(eps, [B])`` as the operand's
    opened mask, exactly what :func:`share` leaves: later products with it need no further opening. ``eps`` is
    uniform, so it reveals nothing; the stored shares themselves are never opened, and a new run opens them
    under a new ``B``.

    Cost: 1 round for all values; each party sends ``8 * numel`` bytes to every other party.
    Returns ``(shares, eps, b_shares, mask_id)`` per value.
    """
    mats = [sess.dealer.request(FreshMask.request(tuple(w.shape[1:]))) for w in values]
    opened = sess.comm.open([(w - m.a, "arith", 64) for w, m in zip(values, mats)], tag="remask")
    return [(w, eps, m.a, m.created[0]) for w, eps, m in zip(values, opened, mats)]


@protocol(
    "reveal",
    rounds=lambda n, **s: 1,
    bytes_sent=lambda n, numel, receivers=1, **s: nbytes(numel, 64) * receivers,
    offline="none",
)
def reveal(sess: PartyContext, shares: torch.Tensor, to: tuple[str, ...], outside: str | None = None, tag: str = "reveal") -> torch.Tensor:
    """Reveal to the parties in ``to`` (and/or an outside receiver): every other party sends its share.

    Cost: 1 round; each party sends ``8 * numel`` bytes to each receiver other than itself.
    """
    return sess.comm.reveal_to(shares, to, tag=tag, outside=outside)
