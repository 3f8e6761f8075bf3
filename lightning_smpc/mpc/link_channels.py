"""The channels of the secure links: one two-process gloo group per pair of processes and channel, and how each
channel moves a message (point-to-point or a broadcast in the pair's group).

Split out of :mod:`.links` because it is the transport's own choice, independent of the encryption:
:class:`~.links.Links` seals a message and hands its bytes to :func:`post`; :func:`~.handshake.handshake` makes the
groups with :func:`pair_channels`.
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from .errors import LinkError

__all__ = ["CHANNELS", "CONTROL_TIMEOUT_FACTOR", "pair_channels", "post"]

# How each channel moves a message. Measured on a 2-core machine (gloo, torch 2.14, three processes), one
# encrypted exchange between two parties: 0.4-0.7 ms point-to-point, 0.65-1.1 ms as two broadcasts (noisy VM).
# * "main": exchanges between compute parties; both ends post at once: point-to-point send/recv.
# * "stream": one-way messages posted long before their receive (the dealer's material, the client's batch
#   headers): a broadcast from the sender in the pair's group, which does not hold the sender until the
#   receiver is ready (the dealer streaming over point-to-point sends took 12.3 s instead of 7.4 s).
# * "control": the first party's messages to the dealer, a broadcast too. The dealer waits on it while the
#   parties compute a whole streamed batch, which may last longer than the timeout: the first party sends a
#   keep-alive before an exchange when a third of the timeout passed (RemoteDealer.heartbeat). Its longest
#   silence is then that third plus one wait (each bounded by the timeout), so the dealer waits at most twice the
#   timeout (CONTROL_TIMEOUT_FACTOR; it was 10x, without keep-alives) before it names the first party as hung.
# * "notice": one last message per pair, a role's note on why it stops (see Links.say_goodbye): its receive is
#   posted when the links are made, so that the note lands even while the receiver waits on another channel.
CHANNELS = {"main": "p2p", "stream": "broadcast", "control": "broadcast", "notice": "p2p"}
CONTROL_TIMEOUT_FACTOR = 2


def pair_channels(world: int, group, timeout: datetime.timedelta) -> dict:
    """One two-process gloo group per pair of processes and channel (see :data:`CHANNELS`). Every rank creates
    every group, in the same order (torch's rule for new_group)."""
    ranks = [dist.get_global_rank(group, k) if group is not None else k for k in range(world)]
    channels = {}
    for channel in CHANNELS:
        for i in range(world):
            for j in range(i + 1, world):
                wait = timeout * (CONTROL_TIMEOUT_FACTOR if channel == "control" else 1)
                channels[(channel, i, j)] = dist.new_group([ranks[i], ranks[j]], timeout=wait, backend="gloo")
    return {"ranks": ranks, "groups": channels}


def post(channels: dict | None, group, rank: int, src: int, dst: int, buf: torch.Tensor, channel: str = "main"):
    """Start moving ``buf`` from ``src`` to ``dst`` (one of them is ``rank``, this process); returns the work.
    ``channels`` from :func:`pair_channels`, or None: plain point-to-point send/recv on ``group``."""
    if channels is None:
        if src == rank:
            return dist.isend(buf, group=group, group_dst=dst)
        return dist.irecv(buf, group=group, group_src=src)
    if channel not in CHANNELS:
        raise LinkError(f"Unknown channel {channel!r}; expected one of {tuple(CHANNELS)}.")
    pair = channels["groups"][(channel, min(src, dst), max(src, dst))]
    if CHANNELS[channel] == "p2p":  # in the pair's group, the lower rank is 0
        if src == rank:
            return dist.isend(buf, group=pair, group_dst=int(dst > src))
        return dist.irecv(buf, group=pair, group_src=int(src > dst))
    return dist.broadcast(buf, src=channels["ranks"][src], group=pair, async_op=True)
