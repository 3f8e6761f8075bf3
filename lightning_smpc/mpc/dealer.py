"""The crypto provider (trusted dealer): correlated randomness for the compute parties, never data.

The dealer is a separate party (never one of the compute parties). It answers *requests* — one per
correlation a protocol needs — with :class:`Material` holding every party's share of it. It sees only
shapes and the masks it generated itself. The request kinds (input masks, Beaver triples, truncation and
comparison material) live in :mod:`.kinds`, one module each with its schema, layout and generation; this
module holds what they share: the seeds, the dealer's masks, the store and the plans.

**Seed compression** (real, in both runtimes): for every request the dealer draws a fresh 16-byte seed per
party from its CSPRNG; each party's shares are the expansion of its seed (AES-CTR,
:func:`.kinds._layout.expand_seeded`, in the canonical order of :func:`.wire.material_layout`), except the first
party's shares of *correlated* values, which the dealer computes as corrections (value minus the others'
shares). A uniform value (a mask, a Beaver operand, the AND triples' inputs, the daBit's XOR side) is
*defined* as the sum of seeded shares, so it costs no correction at all. Parties ``1..n-1`` receive their
seed only; the offline traffic counted is exactly the bytes of each party's message (before encryption).

**Preprocessing.** :meth:`TrustedDealer.record` captures the request sequence of one batch (its *plan*);
:meth:`TrustedDealer.preprocess` generates the material for ``repeats`` more batches ahead of time into a
FIFO store. The online phase then pops material and does no dealer work; a request that does not match
the store front raises :class:`~.errors.DealerStoreError`.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from . import transforms
from .config import RingConfig
from .errors import DealerStoreError, WireError
from .kinds import KINDS
from .kinds._shares import DealtShares
from .kinds.outside_input import OWNER_KEY_BYTES, OutsideInputMask, advance, outside_counts
from .material import DIGIT_BITS, DIGIT_CHOICES, Material, Request, gt_table_spec
from .prg import CSPRNG
from .ring import LimbOperand
from .wire import material_layout

__all__ = ["Request", "Material", "TrustedDealer", "DIGIT_BITS", "DIGIT_CHOICES", "gt_table_spec"]

@dataclass
class _PlanEntry:
    request: Request
    created: tuple


@dataclass
class _DealerTimes:
    inline_seconds: float = 0.0
    preprocess_seconds: float = 0.0
    requests_inline: int = 0
    requests_from_store: int = 0
    store_discards: int = 0
    taken_ahead: int = 0  # parties as processes: streamed material taken between batches (RemoteDealer.take_ahead)
    folded_ahead: int = 0  # ... of which had a data-independent product folded in then


_LIMB_OPERANDS_KEPT = 32  # reused right operands kept split (a model's weight masks; 4x their int64 size)


class TrustedDealer:
    """Crypto provider for ``n`` compute parties.

    Args:
        name: the dealer's party name (for traffic accounting).
        parties: compute party names.
        prg: the cryptographically secure generator for masks and shares.
        comm: communicator used only for offline traffic accounting.
        ring: the parties' :class:`~.config.RingConfig` (the comparison material follows its ``compare_bits`` and
            ``digit_bits``).
        device: where the material is placed.
    """

    def __init__(self, name: str, parties: tuple[str, ...], prg: CSPRNG, comm, ring: RingConfig, device) -> None:
        if not isinstance(ring, RingConfig):
            raise TypeError(f"Expected `ring` to be a RingConfig, but got {type(ring).__name__}.")
        self.ring = ring
        self.name = name
        self.parties = tuple(parties)
        self.n = len(self.parties)
        self.prg = prg
        self.comm = comm
        self.device = torch.device(device)
        self._masks: dict[int, torch.Tensor] = {}
        # a reused mask's operand of matmul/linear triples split into limbs once (the weights' masks: every batch)
        self._limb_operands: dict[tuple, LimbOperand] = {}
        self._next_id = 0
        self._owner_keys: dict[str, bytes] = {}  # per outside input owner: the key its masks derive from
        self.replays = 0  # repeats of the current plan replayed so far (reset when a plan is recorded)
        self.known_owners: tuple | None = None  # the outside input owners allowed (None: any, one process)
        self._store: deque[tuple[Request, Material]] = deque()
        self._recording: list[_PlanEntry] | None = None
        self.fallback_inline = False  # on a store mismatch: raise (False) or drop the store and go inline
        self.times = _DealerTimes()

    # ------------------------------------------------------------------ public API
    def request(self, req: Request) -> Material:
        """Material for ``req``: from the preprocessed store if it holds any, else generated now.

        A request that does not match the store front raises :class:`DealerStoreError`, or, with
        :attr:`fallback_inline` set, drops the whole store (its masks are never used: nothing leaks) and
        generates the material inline; ``times.store_discards`` counts such drops.
        """
        mat = None
        if self._store:
            want, front = self._store[0]
            if want == req:
                self._store.popleft()
                self.times.requests_from_store += 1
                mat = front
            elif self.fallback_inline:
                self.times.store_discards += 1
                self.clear_store()
            else:
                raise DealerStoreError(
                    f"Expected the online phase to ask for {want.kind}{want.params[:2]} (next in the "
                    f"preprocessed store), but it asked for {req.kind}{req.params[:2]}. Preprocess with the plan "
                    "recorded for this batch shape, or clear the store with dealer.clear_store()."
                )
        if mat is None:
            t0 = time.perf_counter()
            mat = self._generate(req)
            self.times.inline_seconds += time.perf_counter() - t0
            self.times.requests_inline += 1
        if self._recording is not None:
            self._recording.append(_PlanEntry(req, mat.created))
        return mat

    def record(self) -> None:
        """Start recording the request sequence (the plan) of the next computation."""
        self._recording = []
        self.replays = 0

    def owner_key(self, owner: str) -> bytes:
        """The key an outside input owner's masks derive from (drawn once per run; handed to that owner only).
        With :attr:`known_owners` set (the crypto provider's process: the run's outside roles), any other name is
        refused."""
        if self.known_owners is not None and owner not in self.known_owners:
            raise WireError(f"outside_input_mask owner: {owner!r} is not a role of this run {self.known_owners}.")
        if owner not in self._owner_keys:
            self._owner_keys[owner] = self.prg.random_bytes(OWNER_KEY_BYTES).tobytes()
        return self._owner_keys[owner]

    def stop_recording(self) -> list[_PlanEntry]:
        plan, self._recording = self._recording or [], None
        return plan

    def preprocess(self, plan: list[_PlanEntry], repeats: int, party_precompute=None,
                   next_inputs: dict | None = None) -> None:
        """Generate the material of ``plan`` ``repeats`` times into the store (ids remapped per repeat).

        ``party_precompute(request, material, created)`` lets the parties fold data-independent work
        into their material right away (``created`` maps mask ids of this repeat to their material).
        ``next_inputs``: the session's count of each outside owner's inputs so far: the repeats continue from it
        (after a discarded store the count of repeats would run ahead of the inputs actually shared).
        """
        if next_inputs is not None:
            self._rebase(plan, next_inputs)
        t0 = time.perf_counter()
        created: dict[int, Material] = {}
        for i, req, mat in self.replay(plan, repeats):
            if i == 0:
                created = {}
            created.update((cid, mat) for cid in mat.created)
            if party_precompute is not None:
                party_precompute(req, mat, created)
            self._store.append((req, mat))
        self.times.preprocess_seconds += time.perf_counter() - t0

    def replay(self, plan: list[_PlanEntry], repeats: int):
        """Generate the material of ``plan`` ``repeats`` times, yielding ``(index in plan, request, material)``
        one request at a time: each repeat's requests refer to the masks that repeat created (ids remapped),
        masks created before the plan keep their ids."""
        counts = outside_counts([entry.request for entry in plan])
        for _ in range(repeats):
            idmap: dict[int, int] = {}
            self.replays += 1  # the k-th repeat since the plan: an outside owner's inputs move on (see advance)
            for i, entry in enumerate(plan):
                req = advance(entry.request.remap(idmap), self.replays, counts)
                mat = self._generate(req)
                idmap.update(zip(entry.created, mat.created))
                yield i, req, mat

    def _rebase(self, plan: list[_PlanEntry], next_inputs: dict) -> None:
        counts = outside_counts([entry.request for entry in plan])
        first: dict[str, int] = {}
        for entry in plan:
            if entry.request.kind == OutsideInputMask.name:
                p = OutsideInputMask.params(entry.request)
                first.setdefault(p.owner, p.index)
        pending = len(self._store) // max(len(plan), 1)  # repeats already in the store
        steps = {divmod(next_inputs.get(o, 0) + pending * counts[o] - first[o], counts[o]) for o in counts}
        if len(steps) == 1:
            (k, rest), = steps
            if rest == 0 and k >= 1:
                self.replays = k - 1  # replay counts the next repeat as k

    @property
    def store_size(self) -> int:
        return len(self._store)

    def clear_store(self) -> None:
        """Drop the preprocessed material (and the dealer's copies of the masks it issued)."""
        for _, mat in self._store:
            for mid in mat.created:
                self.forget(mid)
        self._store.clear()

    @property
    def masks_held(self) -> int:
        """Masks the dealer still keeps (to make later products with them)."""
        return len(self._masks)

    def take_ahead(self) -> None:
        """Nothing to take: the prepared material is in this process's store already (see ``DealerHandle``)."""

    def forget(self, mask_id: int) -> None:
        """Drop a stored mask (its last user is gone)."""
        self._masks.pop(mask_id, None)
        for key in [k for k in self._limb_operands if k[0] == mask_id]:
            del self._limb_operands[key]

    # ------------------------------------------------------------------ helpers
    def new_mask(self, plain: torch.Tensor) -> int:
        """Keep a mask the material issues (later products may reuse it by id); returns its id."""
        mid = self._next_id
        self._next_id += 1
        self._masks[mid] = plain
        return mid

    def mask(self, mask_id: int, transform: tuple) -> torch.Tensor:
        """A mask issued earlier, with the shape transform recorded since (a reused operand)."""
        try:
            plain = self._masks[mask_id]
        except KeyError:
            raise DealerStoreError(f"mask {mask_id} is unknown to the dealer (already released?)") from None
        return transforms.apply(plain, transform, party_axis=False)

    # ------------------------------------------------------------------ generators
    def _generate(self, req: Request) -> Material:
        """Draw each party's seed, expand the seeded shares, run the kind's generator, account the messages."""

        layouts = [material_layout(req, p, self.parties, self.ring, check=False)
                   for p in range(self.n)]
        kind = KINDS[req.kind]
        params = kind.Params(*req.params)
        seeds = kind.seeds(self, params) or tuple(self.prg.seed() for _ in range(self.n))
        mat, extra = kind.generate(self, params, req.refs, DealtShares(self, layouts, seeds))
        mat.seeds = seeds
        sizes = {p: layouts[i].nbytes for i, p in enumerate(self.parties)}
        for k, v in extra.items():
            sizes[k] = sizes.get(k, 0) + v
        self.comm.dealer_send(sizes, req.kind, self.name)
        return mat

    def limb_operand(self, mask_id: int, transform: tuple, plain: torch.Tensor) -> LimbOperand:
        """The reused mask ``mask_id`` (transformed) as a :class:`LimbOperand`, split once per run (one split serves
        matmul and linear: linear takes its ``.mT`` view)."""
        key = (mask_id, transform)
        if key not in self._limb_operands:
            if len(self._limb_operands) >= _LIMB_OPERANDS_KEPT:  # bounded: the oldest goes first
                del self._limb_operands[next(iter(self._limb_operands))]
            self._limb_operands[key] = LimbOperand(plain)
        return self._limb_operands[key]
