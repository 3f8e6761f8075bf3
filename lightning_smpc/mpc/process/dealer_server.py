"""The crypto provider's process: answers the first party's requests, records plans and streams their material
ahead (:func:`serve_dealer`)."""
from __future__ import annotations

import time
from collections import deque
from typing import Sequence

import torch

from .. import wire
from ..config import RingConfig
from ..comm import Communicator
from ..dealer import TrustedDealer, _PlanEntry
from ..links import LinkError, Links
from ..prg import make_prg
from .outside import send_owner_keys
from .transport import outside_roles
from .remote_dealer import (_ALIVE, _CTRL_TAG, _END, _FORGET, _FORGET_TAG, _MATERIAL, _RECORD, _REQ_TAG, _STOP,
                            _STREAM, _STREAM_DEPTH, _material_tag)

__all__ = ["serve_dealer"]


class _DealerProcess:
    """The crypto provider's side of :class:`RemoteDealer`: answers inline requests, records plans, streams."""

    def __init__(self, links: Links, parties: tuple, dealer: TrustedDealer,
                 max_material_bytes: int = wire.MAX_MATERIAL_BYTES) -> None:
        self.links, self.parties, self.dealer, self.ring = links, parties, dealer, dealer.ring
        self.max_material_bytes = max_material_bytes
        self.first = links.index(parties[0])
        self.peers = [links.index(p) for p in parties]
        self.recording: list[_PlanEntry] | None = None
        self.plan: list[_PlanEntry] = []
        self.posted: deque[list] = deque()  # per streamed repeat: the waits of its messages
        self.pinned: set[int] = set()  # masks made before the plan that its requests use: kept while it is streamed
        self.dropped: set[int] = set()  # pinned masks the first party dropped: forgotten when the plan changes

    def serve(self) -> None:
        while True:
            code, a, b = (int(v) for v in self.links.recv(self.first, (3,), torch.int64, _CTRL_TAG, channel="control"))
            if code == _END:
                self._settle(0)
                return
            if code == _ALIVE:
                continue
            if code == _RECORD:
                self.recording = []
                self.dealer.replays = 0  # as the parties count (an outside owner's inputs move on per repeat)
            elif code == _STOP:
                self.plan, self.recording = self.recording or [], None
                self._pin_plan()
            elif code == _FORGET and 0 < a <= 1 << 24:
                self._forget(self.links.recv(self.first, (a,), torch.int64, _FORGET_TAG, channel="control").tolist())
            elif code == _STREAM:
                self._stream(a, b)
            elif 0 < code <= wire.MAX_REQUEST_BYTES:
                data = self.links.recv(self.first, (code,), torch.uint8, _REQ_TAG, channel="control")
                req = wire.decode_request(data, self.parties)
                wire.check_material_size(req, self.parties, self.ring, self.max_material_bytes)
                t0 = time.perf_counter()
                mat = self.dealer._generate(req)
                self.dealer.times.inline_seconds += time.perf_counter() - t0
                self.dealer.times.requests_inline += 1
                if self.recording is not None:
                    self.recording.append(_PlanEntry(req, mat.created))
                for wait in self._post(req, mat, data.numpy().tobytes()):
                    wait()
            else:
                raise wire.WireError(f"Rejected dealer control message {[code, a, b]}: unknown code or a request "
                                     f"length outside (0, {wire.MAX_REQUEST_BYTES}].")

    def _stream(self, plan_len: int, repeats: int) -> None:
        if plan_len != len(self.plan) or not 0 < repeats <= 1 << 20:
            raise wire.WireError(f"Rejected a stream of {repeats} repeats of a {plan_len}-request plan: the dealer "
                                 f"recorded {len(self.plan)} requests.")
        t0 = time.perf_counter()
        waits: list = []
        for i, req, mat in self.dealer.replay(self.plan, repeats):
            if i == 0:
                self._settle(_STREAM_DEPTH - 1)  # bounded: wait for the parties to take older repeats
                waits = []
                self.posted.append(waits)
            waits += self._post(req, mat, wire.encode_request(req, self.parties))
        self.dealer.times.preprocess_seconds += time.perf_counter() - t0

    def _pin_plan(self) -> None:
        """Keep the masks made before the plan that its requests use (the weights', or an activation a model
        keeps across batches) for as long as it is streamed, even if the first party dropped them meanwhile."""
        created = {mid for entry in self.plan for mid in entry.created}
        self.pinned = {r for entry in self.plan for r in entry.request.refs if r is not None and r not in created}
        self._forget(list(self.dropped))

    def _forget(self, mask_ids: list[int]) -> None:
        """Drop the masks the first party no longer uses (its last handle is gone), so that the dealer's memory
        stays bounded however long the run; pinned ones wait until the plan changes."""
        self.dropped = {mid for mid in mask_ids if mid in self.pinned} | (self.dropped & self.pinned)
        for mid in mask_ids:
            if mid not in self.pinned:
                self.dealer.forget(mid)

    def _post(self, req, mat, data: bytes) -> list:
        tag = _material_tag(wire.request_digest(data), self.ring)
        n = len(self.parties)
        return [self.links.post_many(peer, wire.material_tensors(
                    mat, wire.material_layout(req, i, self.parties, self.ring), i, n), tag,
                    channel=_MATERIAL)
                for i, peer in enumerate(self.peers)]

    def _settle(self, keep: int) -> None:
        while len(self.posted) > keep:
            for wait in self.posted.popleft():
                wait()


def serve_dealer(
    links: Links, parties: Sequence[str], crypto_provider: str, ring: RingConfig | None = None, seed: int | None = None,
    max_material_bytes: int = wire.MAX_MATERIAL_BYTES,
) -> dict:
    """Run the crypto provider on this rank: answer requests until the first party sends the end marker.

    Args:
        links: this process's links (its name must be ``crypto_provider``).
        parties: the compute parties, in share-row order (the first one forwards the requests).
        ring: the parties' :class:`~..config.RingConfig` (their ``session.ring``; ``None``: the defaults).
        seed: ``None`` for the cryptographically secure generator (an int only for tests).
        max_material_bytes: the most material one request may ask for, per party (see
            :data:`~.wire.MAX_MATERIAL_BYTES`); a larger request is refused before anything is generated.

    Returns the dealer's offline traffic accounting ``{party: {"rounds", "messages", "bytes_sent",
    "bytes_received"}}`` (as ``Session.stats()["offline"]`` in the simulated runtime): the bytes of the messages
    actually sent (parties 1..n-1 get their seed and the created mask ids; the first party also the corrections),
    and ``"masks_held"``: the masks the dealer still kept at the end (bounded: see ``_DealerProcess._stream``).
    Raises :class:`~.wire.WireError` for a malformed request, :class:`~.links.LinkError` on a link failure.
    """
    parties = tuple(parties)
    if links.name != crypto_provider:
        raise LinkError(f"serve_dealer runs on the crypto provider's rank ({crypto_provider!r}), not on {links.name!r}.")
    accounting = Communicator(parties)
    dealer = TrustedDealer(crypto_provider, parties, make_prg(seed), accounting, ring or RingConfig(), "cpu")
    dealer.known_owners = outside_roles(links, parties)  # masks for this run's outside roles only
    send_owner_keys(links, dealer)  # each outside input owner's key, once (its masks derive from it)
    _DealerProcess(links, parties, dealer, max_material_bytes).serve()
    return {**accounting.stats(offline=True), "masks_held": dealer.masks_held}
