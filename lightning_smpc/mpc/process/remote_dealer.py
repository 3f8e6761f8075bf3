"""The compute parties' handle on the crypto provider's process (:class:`RemoteDealer`): the first party forwards
requests (canonical JSON, :mod:`..wire`), every party receives its material in the layout it derives from the
request; streamed plans, keep-alives and the end of the run."""
from __future__ import annotations

import time
from collections import deque

import torch

from .. import wire
from ..config import RingConfig
from ..dealer import DealerStoreError, _DealerTimes, _PlanEntry
from ..kinds.outside_input import advance, outside_counts
from ..links import LinkError, Links
from ..material import Material

__all__ = ["RemoteDealer", "finish"]


_CTRL_TAG, _REQ_TAG, _FORGET_TAG = "dealer/control", "dealer/request", "dealer/forget"
# The first party's control message to the dealer process: int64 [code, a, b]
_END, _RECORD, _STREAM, _STOP, _FORGET, _ALIVE = 0, -1, -2, -3, -4, -5  # code > 0: a request of `code` bytes follows
_FORGET_AT = 4096  # the first party tells the dealer which masks it dropped at each stream request, or this many
_MATERIAL = "stream"  # the dealer's material, inline or streamed: one-way messages, often posted ahead
_STREAM_DEPTH = 2  # repeats of streamed material the dealer keeps posted before it waits for the parties


def _control(code: int, a: int = 0, b: int = 0) -> torch.Tensor:
    return torch.tensor([code, a, b], dtype=torch.int64)


class RemoteDealer:
    """The parties' handle on the dealer process: the first party forwards requests, all receive material.

    Every party encodes its own request (all parties run the same program) to derive its material layout;
    the material message is authenticated together with the request's digest, so a party whose request
    differs from the first party's fails with a :class:`~.links.LinkIntegrityError` instead of misreading.

    **Streaming** (the same interface as :class:`~.dealer.TrustedDealer`'s preprocessing): :meth:`record`
    and :meth:`stop_recording` capture one batch's requests (its plan, recorded by the dealer process too);
    :meth:`preprocess` asks the dealer process to generate the plan's material ``repeats`` more times and
    post it at once, without waiting for requests, while the parties compute. A request then takes the next
    streamed message if it is the request the plan predicts (mask ids remapped to that repeat's), with no
    round trip to the dealer. A request that differs (a batch of another shape) drops what was streamed: the
    parties receive and discard the rest of it (all of them know its layout), then go inline
    (``times.store_discards``), or raise :class:`~.dealer.DealerStoreError` unless :attr:`fallback_inline`.
    """

    def __init__(self, links: Links, parties: tuple[str, ...], dealer: str, ring: RingConfig) -> None:
        if not isinstance(ring, RingConfig):
            raise TypeError(f"Expected `ring` to be a RingConfig, but got {type(ring).__name__}.")
        self.links, self.parties, self.ring = links, tuple(parties), ring
        self.party = self.parties.index(links.name)
        self.dealer_rank = links.index(dealer)
        self.times = _DealerTimes()
        self.finished = False
        self.fallback_inline = False
        self._recording: list[_PlanEntry] | None = None
        # per streamed repeat: (its next index, the plan, (which repeat of the plan, outside owners' inputs in it))
        self._streamed: deque[tuple[int, list[_PlanEntry], tuple]] = deque()
        self.replays = 0  # repeats of the current plan streamed so far (the crypto provider counts the same)
        self._posted: deque = deque()  # the receives of the streamed messages, posted when they were asked for
        self._idmap: dict[int, int] = {}  # plan's mask ids -> the current repeat's
        self._ready: deque = deque()  # (request, material) of a repeat taken ahead (take_ahead)
        self._precompute = None  # the session's data-independent folding (see Session.preprocess)
        self._told: list = []  # waits of the first party's posted messages to the dealer
        self._dropped: list[int] = []  # masks the first party no longer uses, not yet told to the dealer
        self._last_told = time.monotonic()
        self._alive_every = links.timeout_s / 3  # see heartbeat

    # -------------------------------------------------------------------------- requests
    def request(self, req) -> Material:
        if self.finished:
            raise LinkError("The dealer was already told that this run is finished.")
        if self._ready:  # taken ahead (and authenticated then, against the request the plan predicted)
            if self._ready[0][0] == req:
                self.times.requests_from_store += 1
                return self._ready.popleft()[1]
            self._leave_plan(req)
        data = wire.encode_request(req, self.parties)
        if len(self._dropped) >= _FORGET_AT and self._recording is None:  # (a plan pins its masks when it ends)
            self._tell_dropped()
        if self._streamed:
            if self._predicted() == req:
                self.times.requests_from_store += 1
                return self._take_streamed(req, data)
            self._leave_plan(req)
        self._tell(_control(len(data)), _CTRL_TAG)
        self._tell(torch.frombuffer(bytearray(data), dtype=torch.uint8), _REQ_TAG)
        mat = self._receive(req, data)
        self.times.requests_inline += 1
        if self._recording is not None:
            self._recording.append(_PlanEntry(req, mat.created))
        return mat

    def _leave_plan(self, req) -> None:
        """A request the streamed plan does not predict: drop what was streamed (or refuse, see fallback_inline)."""
        predicted = self._ready[0][0] if self._ready else self._predicted()
        if not self.fallback_inline:
            raise DealerStoreError(
                f"Expected the online phase to ask for {predicted.kind} (next in the streamed plan), "
                f"but it asked for {req.kind}{req.params[:2]}.")
        self.times.store_discards += 1
        self.clear_store()

    def _layout(self, req):
        return wire.material_layout(req, self.party, self.parties, self.ring)

    def _tag(self, data: bytes) -> str:
        return _material_tag(wire.request_digest(data), self.ring)

    def _receive(self, req, data: bytes) -> Material:
        layout = self._layout(req)
        return wire.material_from(layout, self.links.recv_many(self.dealer_rank, layout.specs(), self._tag(data), channel=_MATERIAL))

    def _predicted(self):
        index, plan, step = self._streamed[0]
        return advance(plan[index].request.remap(self._idmap), *step)

    def _take_streamed(self, req, data: bytes) -> Material:
        index, plan, step = self._streamed[0]
        mat = wire.material_from(self._layout(req), self.links.take(self._posted.popleft(), self._tag(data)))
        self._idmap.update(zip(plan[index].created, mat.created))
        if index + 1 < len(plan):
            self._streamed[0] = (index + 1, plan, step)
        else:  # this repeat is complete: the next one remaps from scratch
            self._streamed.popleft()
            self._idmap = {}
        return mat

    # -------------------------------------------------------------------------- plan and streaming
    def record(self) -> None:
        """Start recording the plan (the dealer process records the same requests)."""
        self._tell(_control(_RECORD), _CTRL_TAG)
        self._recording = []
        self.replays = 0

    def stop_recording(self) -> list[_PlanEntry]:
        """Stop recording (the dealer process stops at the same request); returns the plan."""
        self._tell(_control(_STOP), _CTRL_TAG)
        plan, self._recording = self._recording or [], None
        return plan

    def preprocess(self, plan: list[_PlanEntry], repeats: int, party_precompute=None, next_inputs=None) -> None:
        """Have the dealer process stream the material of ``repeats`` more runs of ``plan`` (the plan recorded
        last). The online phase takes each message when it asks for it, or :meth:`take_ahead` takes a whole
        repeat first and folds the data-independent products into it (``party_precompute``, as in
        :meth:`~.dealer.TrustedDealer.preprocess`). ``next_inputs`` is not needed here: the parties record a new
        plan after leaving one, so the count of streamed repeats never runs ahead of the outside owners' inputs."""
        if repeats <= 0 or not plan:
            return
        self._precompute = party_precompute
        self._tell_dropped()
        self._tell(_control(_STREAM, len(plan), repeats), _CTRL_TAG)
        counts = outside_counts([entry.request for entry in plan])
        for _ in range(repeats):
            self.replays += 1
            self._streamed.append((0, plan, (self.replays, counts)))
        # the receives are posted now (message sizes follow from the plan's shapes): the dealer's sends complete
        # as soon as it generated them, and no send waits for the parties' compute
        specs = [self._layout(entry.request).specs() for entry in plan]
        for _ in range(repeats):
            self._posted.extend(self.links.post_recv_many(self.dealer_rank, s, channel=_MATERIAL) for s in specs)

    def take_ahead(self) -> None:
        """Offline, between batches: wait for the next streamed repeat and fold its data-independent products
        (``[a] @ delta`` of a product with weights), so that the next batch's online phase only reads it."""
        if self._ready or not self._streamed or self._streamed[0][0] != 0:
            return
        created: dict = {}
        while True:
            index, plan, _ = self._streamed[0]
            req = self._predicted()
            mat = self._take_streamed(req, wire.encode_request(req, self.parties))
            created.update((cid, mat) for cid in mat.created)
            if self._precompute is not None:
                self._precompute(req, mat, created)
            self.times.taken_ahead += 1
            self.times.folded_ahead += mat.a_delta_folded
            self._ready.append((req, mat))
            if index + 1 == len(plan):
                return

    @property
    def store_size(self) -> int:
        """Streamed messages not used yet (taken ahead or still on their way)."""
        return len(self._ready) + sum(len(plan) - index for index, plan, _ in self._streamed)

    def clear_store(self) -> None:
        """Receive and discard everything streamed and not used (its masks are never used: nothing leaks)."""
        for _, mat in self._ready:
            self._dropped.extend(mat.created)
        self._ready.clear()
        while self._streamed:
            predicted = self._predicted()
            self._dropped.extend(self._take_streamed(predicted, wire.encode_request(predicted, self.parties)).created)

    def finish(self) -> None:
        """Tell the dealer process that no more requests come (it returns its stats); the first party sends it."""
        if self.finished:
            return
        self.clear_store()
        self._tell(_control(_END), _CTRL_TAG)
        for wait in self._told:
            wait()
        self._told.clear()
        self.finished = True

    def heartbeat(self) -> None:
        """Called at every exchange between the parties: the dealer process waits for the first party's next
        control message with the same timeout as every other wait, while the parties may compute a whole streamed
        batch without a request, so the first party says it is alive when a third of the timeout passed. (A hung
        first party stops saying it: the dealer's wait then ends within the timeout, as the other parties' do.)"""
        if self.party == 0 and not self.finished and time.monotonic() - self._last_told > self._alive_every:
            self._tell(_control(_ALIVE), _CTRL_TAG)

    def _tell(self, message: torch.Tensor, tag: str) -> None:
        """The first party's message to the dealer process, posted without waiting: the dealer may be busy
        streaming (and waiting for the parties to take it), the first party must not block on it meanwhile."""
        if self.party != 0:
            return
        self._last_told = time.monotonic()
        self._told.append(self.links.post_many(self.dealer_rank, [message], tag, channel="control"))
        while len(self._told) > 64:  # long taken: the dealer reads them in order
            self._told.pop(0)()

    def forget(self, mask_id: int) -> None:
        """A mask's last handle is gone (the same in every party: they run the same program): the first party
        tells the dealer process, which then drops it (see :meth:`_tell_dropped`)."""
        if self.party == 0 and not self.finished:
            self._dropped.append(mask_id)

    def _tell_dropped(self) -> None:
        if self.party != 0 or not self._dropped:
            return
        dropped, self._dropped = self._dropped, []  # (a finalizer may add more meanwhile: told next time)
        self._tell(_control(_FORGET, len(dropped)), _CTRL_TAG)
        self._tell(torch.tensor(dropped, dtype=torch.int64), _FORGET_TAG)


def _material_tag(digest: str, ring: RingConfig) -> str:
    """Bound into each material message's associated data: a party configured with another comparison range or
    digit size fails authentication at once (with seeds only, its layout would otherwise go unchecked)."""
    return f"material:{digest}:cb{ring.compare_bits}:d{ring.digit_bits}"


def finish(session, public: dict | None = None) -> None:
    """End the run for the dealer and the outside roles: the first party sends the end markers (a no-op on the other
    parties); ``public``: facts every outside role may learn at the end (the number of examples, ...)."""
    dealer = session.dealer
    if not isinstance(dealer, RemoteDealer):
        raise TypeError("finish() is for sessions made by party_session().")
    session.comm.end_outside(public or {})
    dealer.finish()
