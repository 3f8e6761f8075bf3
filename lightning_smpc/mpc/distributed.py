"""Multi-process runtime over ``torch.distributed`` (gloo): one process per compute party, one for the dealer.

The protocols are the same code as in the simulated runtime; only the transport changes. Each party's
process holds its own row of every share tensor (a party axis of length 1), public constants are added by
the first party only (``Session.holds_first``), and the three transport hooks of
:class:`~.comm.Communicator` become encrypted, authenticated messages over :class:`~.links.Links`:

* ``_exchange`` (opening a masked value): all-gather of each party's share; 1-bit XOR shares are
  packed 8 per byte, and a value opened modulo ``2**bits`` is reduced modulo ``2**bits`` before it leaves
  the process (the full share would leak the unreduced sum) and sent in the smallest integer type that
  holds it (the communicator counts ``bits`` per element);
* ``_exchange_to`` (revealing to some parties): gather to each receiver only — the others never see
  the shares;
* ``_broadcast`` (an input owner's masked input): from the owner to every other party.

The counted traffic (``Session.stats()``) is the protocol's and identical to the simulated runtime's; the
cost of the encryption itself is in ``links.stats`` (seconds of AEAD, ciphertext overhead).

The crypto provider runs in its own process: the first party forwards each request as canonical JSON
(:mod:`.wire`: shapes, ops and mask ids only — no data), and the dealer sends every party its own message,
point to point, in a layout each party derives from the request itself: parties 1..n-1 get a fresh 16-byte
seed they expand into their shares, the first party a seed and the corrections of the correlated values.
Nothing crossing between processes is ever deserialized into arbitrary objects: only validated JSON and raw
tensor bytes.

**Seam for launchers** (e.g. a Lightning strategy whose ranks are the parties + the dealer; the process
group may already exist): :func:`establish_links` after the group starts (every rank), then
:func:`party_session` on a compute party's rank or :func:`serve_dealer` on the dealer's rank, and
:func:`finish` on the first party when it is done. :func:`run_parties` does all of it on 127.0.0.1.
Example (each party's function gets its Session; only the owner passes the value)::

    def job(sess):
        x = sess.share(torch.randn(4, 3) if sess.local_party == "alice" else None, owner="alice", shape=(4, 3))
        return x.relu().reveal(to="bob")          # tensor in bob's process, None in alice's

    results = run_parties(job, parties=("alice", "bob"))   # [{"result": None, ...}, {"result": tensor(...), ...}, dealer]

**Faults.** Every operation has the process group's timeout (``run_parties(timeout=60)``). A process that
fails tears its process group down at once, so its peers fail within milliseconds instead of waiting for
the timeout; :func:`run_parties` then raises :class:`PartyProcessError` naming the party that failed (or
died) and what it was doing, after stopping every process it started.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib
import inspect
import io
import os
import socket
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import wire
from .comm import Communicator
from .dealer import DealerStoreError, TrustedDealer, _DealerTimes, _PlanEntry
from .material import DIGIT_BITS, Material
from .errors import PartyProcessError, SmpcError
from .links import Identity, LinkError, LinkIntegrityError, Links, Roster, handshake, roll_call
from .prg import make_prg

__all__ = [
    "run_parties", "establish_links", "party_session", "serve_dealer", "finish", "DistributedCommunicator",
    "RemoteDealer", "PartyProcessError", "DEFAULT_TIMEOUT", "START_METHODS", "check_start_method", "resolve_start_method",
]

DEFAULT_TIMEOUT = 60.0  # seconds per operation (gloo's own default under Lightning/torch is 1800 s)
_FAILURE_GRACE = 3.0  # after one process failed, seconds the others get to report before they are stopped


def _opening_wire(mine: torch.Tensor, kind: str, bits: int) -> torch.Tensor:
    """This party's share of an opened value as it goes on the wire: 1-bit XOR shares packed 8 per byte, a share
    needed modulo ``2^bits`` only reduced to that (all the others may see) in a narrow type."""
    if kind == "xor" and bits == 1:
        return wire.pack_bits(mine.cpu())
    if kind == "arith" and bits < 64:
        dtype = torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int32 if bits <= 31 else torch.int64
        return (mine & ((1 << bits) - 1)).to(dtype)
    return mine.contiguous()


def _opening_share(t: torch.Tensor, kind: str, bits: int, shape: tuple) -> torch.Tensor:
    """A party's share back from its wire form (:func:`_opening_wire`)."""
    if kind == "xor" and bits == 1:
        return wire.unpack_bits(t, shape)
    if kind == "arith" and bits < 64:
        return t.to(torch.int64) & ((1 << bits) - 1)
    return t


class DistributedCommunicator(Communicator):
    """The communicator of one party's process: the transport hooks go over the encrypted links.

    Args:
        parties: compute party names (in share-row order); each must be a name in ``links.names``.
        links: this process's :class:`~.links.Links` (from :func:`establish_links`).
    """

    def __init__(self, parties: tuple[str, ...], links: Links, record_views: bool = False) -> None:
        super().__init__(parties, record_views)
        self.links = links
        self.rank = self.parties.index(links.name)
        self._peers = [links.index(p) for p in self.parties]  # party index -> link index
        self._tag = ""
        self._public = hashlib.sha256(b"lightning_smpc/public/v1")
        self._public_log: list[str] = []  # the public values used since the last message, for the error
        self.heartbeat = None  # called before every exchange (the first party's keep-alive to the dealer)

    # Public values (constants, indices, masks: anything an op uses in clear) are hashed into every later message's
    # authenticated data: parties that disagree on one (a scale factor, a permutation, a module attribute that only
    # the model owner's process loaded) fail authentication at the next opening, before anything computed from it
    # is revealed, instead of silently combining shares of different computations.
    def note_public(self, what: str, value=None, detail=None) -> None:
        if detail is not None:  # formatted here only: the simulated runtime's no-op pays nothing for it
            what = f"{what} {detail!r}"
        self._public.update(what.encode())
        if value is not None:
            t = torch.as_tensor(value).detach().cpu().contiguous()
            self._public.update(f"{t.dtype}{tuple(t.shape)}".encode())
            self._public.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            if len(self._public_log) < 8:
                preview = t.reshape(-1)[:4].tolist()
                self._public_log.append(f"{what} {tuple(t.shape)} {preview}{'...' if t.numel() > 4 else ''}")
        elif len(self._public_log) < 8:
            self._public_log.append(what)

    def _bound(self, tag: str) -> str:
        return f"{tag}|public:{self._public.hexdigest()[:16]}"

    def _authenticated(self, move):
        """Run one message exchange; a failed authentication names the public values used just before it."""
        if self.heartbeat is not None:
            self.heartbeat()
        try:
            return move()
        except LinkIntegrityError as e:
            if self._public_log:
                raise LinkIntegrityError(
                    f"{e} If the parties disagree on a public value used since the previous message, it is one of "
                    f"these (this process's values): {'; '.join(self._public_log)}."
                ) from None
            raise
        finally:
            self._public_log = []

    # the protocol tag goes into every message's authenticated data
    def open(self, items, tag):
        self._tag = tag
        return super().open(items, tag)

    def reveal_to(self, shares, to, tag, outside=None):
        self._tag = tag
        return super().reveal_to(shares, to, tag, outside)

    def broadcast_input(self, sender, value, tag, bits=64):
        self._tag = tag
        return super().broadcast_input(sender, value, tag, bits)

    def _exchange_many(self, items) -> list[torch.Tensor]:
        payload = [_opening_wire(shares[0], kind, bits) for shares, kind, bits in items]
        # bound into the message: each value's kind, width and shape (a packed bit string hides its length)
        what = ",".join(f"{kind}{bits}{list(shares.shape[1:])}" for shares, kind, bits in items)
        rows = self._authenticated(
            lambda: self.links.all_gather_many(payload, self._bound(f"open/{what}:{self._tag}"), ranks=self._peers))
        return [torch.stack([_opening_share(row[i], kind, bits, tuple(shares.shape[1:])) for row in rows])
                for i, (shares, kind, bits) in enumerate(items)]

    def _exchange_to(self, shares: torch.Tensor, receivers: list[str]):
        outside = [r for r in receivers if r not in self.parties]
        if outside:
            raise ValueError(f"The multi-process runtime reveals to compute parties only, not to {outside}.")
        mine, out = shares[0].contiguous(), None
        for r in receivers:
            parts = self._authenticated(lambda r=r: self.links.gather_to(
                self._peers[self.parties.index(r)], mine, self._bound(f"reveal:{self._tag}"), ranks=self._peers))
            if parts is not None:
                out = torch.stack(parts)
        return out

    def _broadcast(self, value: torch.Tensor, sender: str) -> torch.Tensor:
        src = self._peers[self.parties.index(sender)]
        return self._authenticated(
            lambda: self.links.broadcast(value.contiguous(), src, self._bound(f"input:{self._tag}"), ranks=self._peers))


# ---------------------------------------------------------------------------------------------- dealer transport
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

    def __init__(self, links: Links, parties: tuple[str, ...], dealer: str, compare_bits: int,
                 digit_bits: int = DIGIT_BITS) -> None:
        self.links, self.parties, self.compare_bits, self.digit_bits = links, tuple(parties), compare_bits, digit_bits
        self.party = self.parties.index(links.name)
        self.dealer_rank = links.index(dealer)
        self.times = _DealerTimes()
        self.finished = False
        self.fallback_inline = False
        self._recording: list[_PlanEntry] | None = None
        self._streamed: deque[tuple[int, list[_PlanEntry]]] = deque()  # (repeat's next index, plan) per repeat
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
        return wire.material_layout(req, self.party, self.parties, self.compare_bits, self.digit_bits)

    def _tag(self, data: bytes) -> str:
        return _material_tag(wire.request_digest(data), self.compare_bits, self.digit_bits)

    def _receive(self, req, data: bytes) -> Material:
        layout = self._layout(req)
        return wire.material_from(layout, self.links.recv_many(self.dealer_rank, layout.specs(), self._tag(data), channel=_MATERIAL))

    def _predicted(self):
        index, plan = self._streamed[0]
        return plan[index].request.remap(self._idmap)

    def _take_streamed(self, req, data: bytes) -> Material:
        index, plan = self._streamed[0]
        mat = wire.material_from(self._layout(req), self.links.take(self._posted.popleft(), self._tag(data)))
        self._idmap.update(zip(plan[index].created, mat.created))
        if index + 1 < len(plan):
            self._streamed[0] = (index + 1, plan)
        else:  # this repeat is complete: the next one remaps from scratch
            self._streamed.popleft()
            self._idmap = {}
        return mat

    # -------------------------------------------------------------------------- plan and streaming
    def record(self) -> None:
        """Start recording the plan (the dealer process records the same requests)."""
        self._tell(_control(_RECORD), _CTRL_TAG)
        self._recording = []

    def stop_recording(self) -> list[_PlanEntry]:
        """Stop recording (the dealer process stops at the same request); returns the plan."""
        self._tell(_control(_STOP), _CTRL_TAG)
        plan, self._recording = self._recording or [], None
        return plan

    def preprocess(self, plan: list[_PlanEntry], repeats: int, party_precompute=None) -> None:
        """Have the dealer process stream the material of ``repeats`` more runs of ``plan`` (the plan recorded
        last). The online phase takes each message when it asks for it, or :meth:`take_ahead` takes a whole
        repeat first and folds the data-independent products into it (``party_precompute``, as in
        :meth:`~.dealer.TrustedDealer.preprocess`)."""
        if repeats <= 0 or not plan:
            return
        self._precompute = party_precompute
        self._tell_dropped()
        self._tell(_control(_STREAM, len(plan), repeats), _CTRL_TAG)
        self._streamed.extend((0, plan) for _ in range(repeats))
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
            index, plan = self._streamed[0]
            req = self._predicted()
            mat = self._take_streamed(req, wire.encode_request(req, self.parties))
            created.update((cid, mat) for cid in mat.created)
            if self._precompute is not None:
                self._precompute(req, mat, created)
            self.times.taken_ahead += 1
            self.times.folded_ahead += bool(mat.get("a_delta_done"))
            self._ready.append((req, mat))
            if index + 1 == len(plan):
                return

    @property
    def store_size(self) -> int:
        """Streamed messages not used yet (taken ahead or still on their way)."""
        return len(self._ready) + sum(len(plan) - index for index, plan in self._streamed)

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


def _material_tag(digest: str, compare_bits: int, digit_bits: int) -> str:
    """Bound into each material message's associated data: a party configured with another comparison range or
    digit size fails authentication at once (with seeds only, its layout would otherwise go unchecked)."""
    return f"material:{digest}:cb{compare_bits}:d{digit_bits}"


class _DealerProcess:
    """The crypto provider's side of :class:`RemoteDealer`: answers inline requests, records plans, streams."""

    def __init__(self, links: Links, parties: tuple, dealer: TrustedDealer, compare_bits: int, digit_bits: int,
                 max_material_bytes: int = wire.MAX_MATERIAL_BYTES) -> None:
        self.links, self.parties, self.dealer = links, parties, dealer
        self.max_material_bytes = max_material_bytes
        self.compare_bits, self.digit_bits = compare_bits, digit_bits
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
                wire.check_material_size(req, self.parties, self.compare_bits, self.digit_bits, self.max_material_bytes)
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
        tag = _material_tag(wire.request_digest(data), self.compare_bits, self.digit_bits)
        n = len(self.parties)
        return [self.links.post_many(peer, wire.material_tensors(
                    mat, wire.material_layout(req, i, self.parties, self.compare_bits, self.digit_bits), i, n), tag,
                    channel=_MATERIAL)
                for i, peer in enumerate(self.peers)]

    def _settle(self, keep: int) -> None:
        while len(self.posted) > keep:
            for wait in self.posted.popleft():
                wait()


def serve_dealer(
    links: Links, parties: Sequence[str], crypto_provider: str, compare_bits: int = 32, seed: int | None = None,
    compare_digit_bits: int = DIGIT_BITS, max_material_bytes: int = wire.MAX_MATERIAL_BYTES,
) -> dict:
    """Run the crypto provider on this rank: answer requests until the first party sends the end marker.

    Args:
        links: this process's links (its name must be ``crypto_provider``).
        parties: the compute parties, in share-row order (the first one forwards the requests).
        compare_bits: the parties' ``Session(compare_bits=...)``.
        compare_digit_bits: the parties' ``Session(compare_digit_bits=...)``.
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
    dealer = TrustedDealer(crypto_provider, parties, make_prg(seed), accounting, compare_bits, "cpu",
                           compare_digit_bits)
    _DealerProcess(links, parties, dealer, compare_bits, compare_digit_bits, max_material_bytes).serve()
    return {**accounting.stats(offline=True), "masks_held": dealer.masks_held}


def finish(session) -> None:
    """End the run for the dealer: the first party sends the end marker (a no-op on the other parties)."""
    dealer = session.dealer
    if not isinstance(dealer, RemoteDealer):
        raise TypeError("finish() is for sessions made by party_session().")
    dealer.finish()


@dataclass
class _Runtime:
    links: Links
    parties: tuple
    crypto_provider: str
    compare_bits: int
    group: Any = None
    digit_bits: int = DIGIT_BITS

    @property
    def rank(self) -> int:
        return self.parties.index(self.links.name)

    def communicator(self, parties, record_views):
        return DistributedCommunicator(parties, self.links, record_views)

    def dealer(self, comm=None):
        dealer = RemoteDealer(self.links, self.parties, self.crypto_provider, self.compare_bits, self.digit_bits)
        if isinstance(comm, DistributedCommunicator):
            comm.heartbeat = dealer.heartbeat  # the dealer's wait for the next request stays within the timeout
        return dealer


def _session_default(name: str):
    from .session import Session

    return inspect.signature(Session).parameters[name].default


# ---------------------------------------------------------------------------------------------- public seam
def establish_links(
    rank: int, world_size: int, names: Sequence[str], roster: Roster | str | None = None,
    identity: Identity | None = None, group=None, timeout: float = DEFAULT_TIMEOUT,
) -> Links:
    """Authenticate every process and set up the encrypted pairwise links (call on every rank).

    The process group must be initialized (``torch.distributed.init_process_group("gloo", ...)``, by you
    or by Lightning); its timeout bounds every later operation.

    Args:
        rank: this process's index in ``names`` (= its rank in ``group``).
        world_size: ``len(names)`` (checked against the group).
        names: every process's role name in rank order, e.g. ``("alice", "bob", "crypto_provider")``.
        roster: the :class:`~.links.Roster` (or its text) listing each name's Ed25519 public key; ``None``
            makes fresh identities and exchanges them (one machine: encrypted, but identities unpinned).
        identity: this process's :class:`~.links.Identity` (its private key) when a roster is given.
        group: the process group of all these processes (default: the world).

    Raises :class:`~.links.LinkAuthError` on every rank, naming each process whose identity is refused.
    """
    if not dist.is_initialized():
        raise LinkError("Initialize the process group (gloo) before establish_links().")
    names = tuple(names)
    if len(names) != world_size:
        raise LinkError(f"Expected world_size == len(names), got {world_size} and {names}.")
    if isinstance(roster, (str, bytes)):
        roster = Roster.from_text(roster)
    return handshake(rank, names, roster, identity, group, datetime.timedelta(seconds=timeout))


def party_session(links: Links, parties: Sequence[str], crypto_provider: str, group=None, **session_kwargs):
    """The :class:`~.session.Session` of the compute party this rank plays (``links.name``).

    ``group`` (the parties' process group, optional) is kept on the runtime for the caller's own use; all
    protocol data goes over ``links``. ``session_kwargs`` as in ``Session`` (``precision_bits``,
    ``compare_bits``, ``compare_digit_bits``, ``device``, ``record_views``); the same on every party and the
    dealer's ``compare_bits`` and ``compare_digit_bits``. The first party calls :func:`finish` when done.
    """
    from .session import Session

    parties = tuple(parties)
    if links.name not in parties:
        raise LinkError(f"{links.name!r} is not a compute party {parties}; the dealer's rank runs serve_dealer().")
    session_kwargs.pop("seed", None)  # parties draw nothing from a seed; only the dealer's generator matters
    compare_bits = session_kwargs.get("compare_bits", _session_default("compare_bits"))
    digit_bits = session_kwargs.get("compare_digit_bits", _session_default("compare_digit_bits"))
    runtime = _Runtime(links, parties, crypto_provider, compare_bits, group, digit_bits)
    session = Session(parties, crypto_provider, seed=None, runtime=runtime, **session_kwargs)
    # Bound into every later message between the parties: parties configured differently (each role launched with
    # its own settings) fail at their first exchange, naming the configuration, instead of computing garbage.
    session.comm.note_public("configuration", detail={
        "parties": parties, "crypto_provider": crypto_provider, "precision_bits": session.precision_bits,
        "compare_bits": compare_bits, "compare_digit_bits": digit_bits})
    return session


# ---------------------------------------------------------------------------------------------- run_parties
def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(data: bytes) -> Any:
    # produced by our own child process on this machine (results go to the launcher, never to another party)
    return torch.load(io.BytesIO(data), weights_only=False)


def _drain(results, reports: dict, errors: dict, kinds: dict | None = None) -> bool:
    """Move every ``(rank, payload, error)`` waiting in ``results`` into ``reports`` (decoded) or ``errors``;
    True when anything arrived. With ``kinds`` (the strategy's launcher), an error comes as ``(traceback, module,
    class name, message)``: the text goes to ``errors``, the rest to ``kinds``."""
    arrived = False
    while not results.empty():
        rank, payload, error = results.get()
        if kinds is not None and isinstance(error, tuple):  # the strategy's launcher (run_parties keeps its tuples)
            error, kinds[rank] = error[0], error[1:]
        if error is not None:
            errors[rank] = error
        else:
            reports[rank] = _from_bytes(payload)
        arrived = True
    return arrived


def _set_progress(arr, text: str) -> None:
    raw = text.encode("utf-8", "replace")[: len(arr) - 1]
    arr.value = raw


def _abort() -> None:
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - the peers see the closed sockets and fail fast either way
        pass


def _worker(rank, world, port, names, parties, crypto_provider, seed, timeout, roster_text, identity_pem,
            session_kwargs, fn, results, progress) -> None:
    torch.set_num_threads(1)  # also what a forked child needs (see resolve_start_method)
    name = names[rank]
    _set_progress(progress, "starting the process group")
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}",
                                timeout=datetime.timedelta(seconds=timeout))
        _set_progress(progress, "the identity handshake")
        identity = problem = None
        try:
            identity = Identity.from_pem(name, identity_pem) if identity_pem is not None else None
        except Exception as e:  # noqa: BLE001 - told to the others (roll_call), then raised here
            problem = e
        roll_call(rank, names, problem)
        links = establish_links(rank, world, names, roster_text, identity, timeout=timeout)
        links.on_op = lambda what: _set_progress(progress, what)
        if name == crypto_provider:
            result = serve_dealer(links, parties, crypto_provider, session_kwargs.get("compare_bits",
                                  _session_default("compare_bits")), seed,
                                  session_kwargs.get("compare_digit_bits", _session_default("compare_digit_bits")))
        else:
            sess = party_session(links, parties, crypto_provider, **session_kwargs)
            _set_progress(progress, "the job function")
            out = fn(sess)
            finish(sess)
            result = {"result": out, "stats": sess.stats()["online"], "rounds": sess.comm.rounds, "links": links.stats}
        _set_progress(progress, "done")
        results.put((rank, _to_bytes(result), None))
        dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - report, tell the peers why, tear the group down, exit
        if "links" in locals():
            links.say_goodbye(f"{type(e).__name__}: {e}")
        where = progress.value.decode("utf-8", "replace")
        results.put((rank, None, (type(e).__name__, str(e), where, traceback.format_exc(limit=12), type(e).__module__,
                                  type(e).__qualname__)))
        _abort()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


START_METHODS = ("fork", "spawn", "forkserver")


def check_start_method(requested: str | None) -> None:
    if requested is not None and requested not in START_METHODS:
        raise ValueError(f"Expected `start_method` to be one of {START_METHODS} or None, but got {requested!r}.")


def resolve_start_method(requested: str | None, num_processes: int) -> str:
    """The ``multiprocessing`` start method for the role processes.

    ``fork`` starts a role in milliseconds (``spawn`` re-imports torch and Lightning in every process: about
    2 s each, 6-7 s for three processes on a 2-core machine, measured), but a forked child must not start
    OpenMP threads once the parent has used them (libgomp hangs: measured with torch's pip wheel), so forked
    roles run one intra-op thread each. ``None`` picks ``fork`` where that costs nothing: on Linux, CUDA not
    initialized in this process, and at most one core per role anyway; also where a spawned process could not
    re-import the caller's code (a notebook, stdin, ``python -c``; Lightning's ``ddp_notebook`` forks too);
    otherwise ``spawn``.
    """
    check_start_method(requested)
    cuda_ready = torch.cuda.is_available() and torch.cuda.is_initialized()
    if requested == "fork" and cuda_ready:
        raise RuntimeError("Cannot fork the role processes: CUDA is already initialized in this process. "
                           "Use SecurePredictStrategy(start_method='spawn').")
    if requested is not None:
        return requested
    if not cuda_ready and hasattr(os, "fork") and not main_is_a_file():
        return "fork"  # a notebook, stdin or `python -c`: a spawned process could not re-import the caller's code
    one_core_each = (os.cpu_count() or 1) // max(num_processes, 1) <= 1
    if sys.platform.startswith("linux") and not cuda_ready and one_core_each:
        return "fork"
    return "spawn"


def main_is_a_file() -> bool:
    """Whether ``__main__`` is a script file that a spawned process can re-import (not a notebook, stdin, -c)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return bool(path) and os.path.isfile(path)


SPAWN_HINT = ("With start_method='spawn' each role's process re-imports your script: code that is not under "
              "`if __name__ == \"__main__\":` (training, the predict call) runs again in every role. Put it under that "
              "guard, or pass SecurePredictStrategy(start_method='fork') (Linux, CUDA not initialized).")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def run_parties(
    fn: Callable, parties: tuple[str, ...] = ("alice", "bob"), crypto_provider: str = "crypto_provider",
    seed: int | None = None, timeout: float = DEFAULT_TIMEOUT, roster: Roster | str | None = None,
    identities: dict[str, Identity] | None = None, start_method: str | None = None, **session_kwargs,
) -> list:
    """Run ``fn(session)`` in one process per party (plus the dealer's) over gloo on 127.0.0.1.

    ``fn`` must be importable (a module-level function). All traffic between the processes goes over
    authenticated, encrypted links (:mod:`.links`); with ``roster`` and ``identities`` (name ->
    :class:`~.links.Identity`) the processes prove those identities (``identities`` alone: the roster is
    made from them); without either, fresh identities and their roster are made here, so the run is pinned
    all the same (a process that only reaches the port cannot take a role).
    ``timeout`` (seconds) bounds every single operation. ``start_method``: see :func:`resolve_start_method`
    (``None``: ``fork`` where each process would get one core anyway, else ``spawn``).

    Returns, per party, ``{"result": fn's return value, "stats": online traffic per party as counted in that
    process, "rounds": int, "links": the links' cost (AEAD seconds, bytes)}``; the dealer's offline
    accounting is appended last.

    Raises :class:`PartyProcessError` naming the party that failed (or died) and what it was doing; no
    process of the run is left running. A party's own error of this package or a plain value/type/key error is
    raised with its own type instead (the party named in its message; the failure report is its ``__cause__``).
    """
    parties = tuple(parties)
    names = parties + (crypto_provider,)
    world = len(names)
    if roster is None and not identities:  # pinned all the same: fresh keys made here, each process gets its own
        identities = {n: Identity.generate(n) for n in names}
    if roster is None and identities:
        if set(identities) != set(names):
            raise ValueError(f"Expected identities for every process {names} (or a roster), got {sorted(identities)}.")
        roster = Roster.from_identities([identities[n] for n in names])  # pinned to the keys given here
    if isinstance(roster, Roster):
        roster = roster.to_text()
    pems = {n: identities[n].to_pem() for n in names if n in identities} if identities else {}
    method = resolve_start_method(start_method, world)
    ctx = mp.get_context(method)
    results = ctx.SimpleQueue()  # a synchronous put: a report is out before its process exits
    progress = [ctx.Array("c", 256, lock=False) for _ in range(world)]
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, name=f"lightning_smpc-{n}", args=(
            r, world, port, names, parties, crypto_provider, seed, timeout, roster, pems.get(n), session_kwargs, fn,
            results, progress[r]))
        for r, n in enumerate(names)
    ]
    got: dict[int, Any] = {}
    errors: dict[int, tuple] = {}
    try:
        for p in procs:
            p.start()
        failed_at, grace = None, min(timeout, _FAILURE_GRACE)
        while len(got) < world:
            if _drain(results, got, errors):
                continue
            now = time.monotonic()
            if failed_at is None:
                if errors or any(p.exitcode not in (None, 0) for p in procs) or all(p.exitcode is not None for p in procs):
                    failed_at = now
            elif (all(p.exitcode is not None for p in procs) and now - failed_at > 0.5) or now - failed_at > grace:
                break  # the others fail within ms once a group is torn down; one that does not is stopped
            time.sleep(0.02)
        if len(got) < world:
            codes = [p.exitcode for p in procs]
            _stop(procs)
            _drain(results, {}, errors)  # errors that arrived while stopping
            failure = PartyProcessError(_failure_message(names, codes, errors, progress, got))
            own = [r for r in errors if not is_peer_failure(f"{errors[r][0]}: {errors[r][1]}")]
            error = user_error(errors[own[0]][4], errors[own[0]][5], errors[own[0]][1],
                               f"{names[own[0]]} (rank {own[0]})") if own else None
            if error is not None:
                raise error from failure
            raise failure
    finally:
        _stop(procs)
        results.close()
    return [got[r] for r in range(world)]


# What a process reports when a PEER failed (the one list for run_parties and the strategy's launcher): its link
# to that peer closed or timed out. Such errors follow from the first failure; the cause is another process's.
PEER_FAILURES = ("PeerLostError", "Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out",
                 "timed out", "Connection refused", "Application timeout caused pair closure")


def is_peer_failure(text: str) -> bool:
    return any(marker in text for marker in PEER_FAILURES)


# Plain errors of a role that are the user's (a bad value, type or key), re-raised in the caller's process as such
USER_BUILTINS = ("ValueError", "TypeError", "KeyError", "IndexError", "FileNotFoundError", "PermissionError")


def user_error(module: str, qualname: str, message: str, role: str) -> BaseException | None:
    """A role's own error again in the caller's process, with its type (``except UnsupportedOpError`` works as with
    the simulated runtime) and the role named, when it is one of this package's errors or a plain value/type/key
    error; None for anything else (a crash, a peer's failure), which stays a :class:`PartyProcessError`. Only
    the class's module and name cross the process boundary (no object is deserialized)."""
    if not (module.startswith("lightning_smpc") or (module == "builtins" and qualname in USER_BUILTINS)):
        return None
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, Exception)) or issubclass(cls, PartyProcessError):
        return None  # a peer's loss follows from another failure: the run's report says which
    error = cls.__new__(cls)
    Exception.__init__(error, f"{role}: {message}")
    return error


def _failure_message(names, codes, errors, progress, got) -> str:
    def where(r):
        return progress[r].value.decode("utf-8", "replace") or "start-up"

    dead = [r for r, c in enumerate(codes) if r not in errors and r not in got and c not in (None, 0)]
    primary = [r for r in errors if not is_peer_failure(f"{errors[r][0]}: {errors[r][1]}")]
    lines = []
    if dead:
        r = dead[0]
        code = codes[r]
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        lines.append(f"Party process {names[r]!r} (rank {r}) {how} without reporting, during {where(r)}.")
    elif primary or errors:
        r = (primary or list(errors))[0]
        kind, msg, at, tb = errors[r][:4]
        lines.append(f"Party process {names[r]!r} (rank {r}) failed during {at}: {kind}: {msg}\n{tb}")
    else:
        r = None
        lines.append("The run stopped without results: " + ", ".join(
            f"{names[k]!r} (rank {k}) at {where(k)}" for k in range(len(names)) if k not in got))
    others = [k for k in range(len(names)) if k != r and k not in got]
    for k in others:
        if k in errors:
            kind, msg, at, _ = errors[k][:4]
            lines.append(f"  then {names[k]!r} (rank {k}) failed during {at}: {kind}: {msg.splitlines()[0] if msg else ''}")
        else:
            lines.append(f"  {names[k]!r} (rank {k}) was stopped during {where(k)}.")
    lines.append("Every process of the run was stopped.")
    return "\n".join(lines)
