"""The crypto provider (trusted dealer): correlated randomness for the compute parties, never data.

The dealer is a separate party (never one of the compute parties). It answers *requests* — one per
correlation a protocol needs — with :class:`Material` holding every party's share of it. It sees only
shapes and the masks it generated itself. Each request kind documents what it returns:

``input_mask``  (SPDZ input): a uniform mask ``A``, sent in clear to the input owner and as shares to
    the parties; the owner then broadcasts ``x - A``. The dealer keeps ``A`` (by id) so later products
    with that operand reuse the opened ``x - A`` ("the masked model is opened once").
``beaver``     a multiplication triple for ``mul``/``matmul``/``conv2d``: ``c = op(a, b)`` where ``a``/``b``
    are fresh or previously issued masks (by id, with a recorded shape transform).
``trunc``      probabilistic truncation material (Escudero et al. 2020, §5.1): uniform ``r``, ``u =
    (r mod 2^63) >> m`` and the bit ``r_63``, all arithmetic shares.
``cmp``        comparison material (see :mod:`.protocols.compare`): the mask (or truncation) material,
    XOR-shared greater-than tables of the 8-bit digits of the comparison offset, XOR-shared AND triples for the
    carry tree, a daBit (a random bit shared both XOR and arithmetically) and, for ReLU/argmax, the
    products of the dealer-known offsets with that bit / with the one-time equality tables.

Offline traffic is accounted as with seed compression: parties 1..n-1 expand their shares from a 16-byte
seed the dealer gave them, so only party 0 receives a full correction tensor.

**Preprocessing.** :meth:`TrustedDealer.record` captures the request sequence of one batch (its *plan*);
:meth:`TrustedDealer.preprocess` generates the material for ``repeats`` more batches ahead of time into a
FIFO store. The online phase then pops material and does no dealer work; a request that does not match
the store front raises :class:`~.errors.DealerStoreError`.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from . import transforms
from .errors import DealerStoreError
from .prg import CSPRNG
from .ring import ring_conv2d, ring_matmul

__all__ = ["Request", "Material", "TrustedDealer", "DIGIT_BITS"]

DIGIT_BITS = 8  # comparison digits: tables of 2^8 bits = 4 int64 words


@dataclass(frozen=True)
class Request:
    """A dealer request: ``kind``, hashable ``params`` and the mask ids it refers to (``refs``)."""

    kind: str
    params: tuple
    refs: tuple = ()

    def remap(self, idmap: dict[int, int]) -> "Request":
        return Request(self.kind, self.params, tuple(idmap.get(r, r) if r is not None else None for r in self.refs))


@dataclass
class Material:
    """Shares (leading party axis) of one correlation.

    ``created`` lists the mask ids it issued and ``mask_keys`` (same order) the entry of ``data`` that holds
    each one's shares: a Beaver triple issues its ``"a"`` and/or ``"b"`` operand mask, an input mask ``"a"``.
    A later product that reuses a mask must take exactly that entry (never assume ``"a"``).
    """

    data: dict[str, Any]
    created: tuple = ()
    mask_keys: tuple = ()

    def mask_shares(self, mask_id: int) -> torch.Tensor:
        """The parties' shares of the mask ``mask_id`` that this material issued."""
        return self.data[self.mask_keys[self.created.index(mask_id)]]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default=None) -> Any:
        return self.data.get(key, default)


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


def _bits_of(t: torch.Tensor) -> int:
    return 1 if t.dtype in (torch.uint8, torch.bool) else 8 * t.element_size()


_GT_ROWS: dict = {}


def _gt_rows(device) -> torch.Tensor:
    """``[256, 4]`` int64: row ``t`` is the 256-bit table ``G[u] = [u > t]`` as four 64-bit words."""
    key = str(device)
    if key not in _GT_ROWS:
        t = torch.arange(256).unsqueeze(-1)
        lanes = torch.arange(4)
        above = -(torch.full_like(t, 2) << (t & 63))  # bits strictly above t within its word
        rows = torch.where(lanes == (t >> 6), above, -(lanes > (t >> 6)).to(torch.int64))
        _GT_ROWS[key] = rows.to(device)
    return _GT_ROWS[key]


class TrustedDealer:
    """Crypto provider for ``n`` compute parties.

    Args:
        name: the dealer's party name (for traffic accounting).
        parties: compute party names.
        prg: the cryptographically secure generator for masks and shares.
        comm: communicator used only for offline traffic accounting.
        compare_bits: comparison range in bits (multiple of :data:`DIGIT_BITS`).
        device: where the material is placed.
    """

    def __init__(self, name: str, parties: tuple[str, ...], prg: CSPRNG, comm, compare_bits: int, device) -> None:
        self.name = name
        self.parties = tuple(parties)
        self.n = len(self.parties)
        self.prg = prg
        self.comm = comm
        self.compare_bits = compare_bits
        self.device = torch.device(device)
        self._masks: dict[int, torch.Tensor] = {}
        self._next_id = 0
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

    def stop_recording(self) -> list[_PlanEntry]:
        plan, self._recording = self._recording or [], None
        return plan

    def preprocess(self, plan: list[_PlanEntry], repeats: int, party_precompute=None) -> None:
        """Generate the material of ``plan`` ``repeats`` times into the store (ids remapped per repeat).

        ``party_precompute(request, material, created)`` lets the parties fold data-independent work
        into their material right away (``created`` maps mask ids of this repeat to their material).
        """
        t0 = time.perf_counter()
        for _ in range(repeats):
            idmap: dict[int, int] = {}
            created: dict[int, Material] = {}
            for entry in plan:
                req = entry.request.remap(idmap)
                mat = self._generate(req)
                idmap.update(zip(entry.created, mat.created))
                created.update((cid, mat) for cid in mat.created)
                if party_precompute is not None:
                    party_precompute(req, mat, created)
                self._store.append((req, mat))
        self.times.preprocess_seconds += time.perf_counter() - t0

    @property
    def store_size(self) -> int:
        return len(self._store)

    def clear_store(self) -> None:
        """Drop the preprocessed material (and the dealer's copies of the masks it issued)."""
        for _, mat in self._store:
            for mid in mat.created:
                self.forget(mid)
        self._store.clear()

    def forget(self, mask_id: int) -> None:
        """Drop a stored mask (its last user is gone)."""
        self._masks.pop(mask_id, None)

    # ------------------------------------------------------------------ sharing helpers
    def _arith(self, v: torch.Tensor) -> torch.Tensor:
        """Additive shares of ``v``: parties 1..n-1 uniform, party 0 the correction."""
        out = torch.empty((self.n,) + tuple(v.shape), dtype=torch.int64, device=self.device)
        out[1:] = self.prg.int64((self.n - 1,) + tuple(v.shape), self.device)
        torch.sub(v, out[1:].sum(0) if self.n > 2 else out[1], out=out[0])
        return out

    def _xor(self, v: torch.Tensor) -> torch.Tensor:
        """XOR shares of ``v`` (bits as uint8 0/1, or int64 words)."""
        out = torch.empty((self.n,) + tuple(v.shape), dtype=v.dtype, device=self.device)
        shape = (self.n - 1,) + tuple(v.shape)
        out[1:] = self.prg.bits(shape, self.device) if v.dtype == torch.uint8 else self.prg.int64(shape, self.device)
        torch.bitwise_xor(v, out[1], out=out[0])
        for k in range(2, self.n):
            out[0] ^= out[k]
        return out

    def _new_mask(self, plain: torch.Tensor) -> int:
        mid = self._next_id
        self._next_id += 1
        self._masks[mid] = plain
        return mid

    def _mask(self, mask_id: int, transform: tuple) -> torch.Tensor:
        try:
            plain = self._masks[mask_id]
        except KeyError:
            raise DealerStoreError(f"mask {mask_id} is unknown to the dealer (already released?)") from None
        return transforms.apply(plain, transform, party_axis=False)

    def _account(self, data: dict[str, Any], tag: str, extra: dict[str, int] | None = None) -> None:
        size0 = sum(
            (t[0].numel() * _bits_of(t) + 7) // 8 for t in data.values() if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == self.n
        )
        sizes = {self.parties[0]: size0, **{p: 16 for p in self.parties[1:]}}
        for k, v in (extra or {}).items():
            sizes[k] = sizes.get(k, 0) + v
        self.comm.dealer_send(sizes, tag, self.name)

    # ------------------------------------------------------------------ generators
    def _generate(self, req: Request) -> Material:
        return getattr(self, f"_gen_{req.kind}")(req)

    def _rand(self, shape) -> torch.Tensor:
        return self.prg.int64(tuple(shape), self.device)

    def _gen_input_mask(self, req: Request) -> Material:
        (shape, owner) = req.params
        a = self._rand(shape)
        mid = self._new_mask(a)
        data = {"a": self._arith(a)}
        self._account(data, "input_mask", {owner: a.numel() * 8})
        data["owner_mask"] = a
        return Material(data, (mid,), ("a",))

    def _gen_beaver(self, req: Request) -> Material:
        op, kwargs, shape_x, shape_y, tf_x, tf_y = req.params
        ref_x, ref_y = req.refs
        created, keys = [], []
        data: dict[str, Any] = {}
        plains = []
        for key, shape, ref, tf in (("a", shape_x, ref_x, tf_x), ("b", shape_y, ref_y, tf_y)):
            if ref is None:
                m = self._rand(shape)
                created.append(self._new_mask(m))
                keys.append(key)
                data[key] = self._arith(m)
            else:
                m = self._mask(ref, tf)
            plains.append(m)
        a, b = plains
        if op == "mul":
            c = a * b
        elif op == "matmul":
            c = ring_matmul(a, b)
        elif op == "linear":
            c = ring_matmul(a, b.transpose(-1, -2))
        elif op == "conv2d":
            c = ring_conv2d(a, b, **dict(kwargs))
        else:  # pragma: no cover
            raise ValueError(op)
        data["c"] = self._arith(c)
        self._account(data, f"beaver_{op}")
        return Material(data, tuple(created), tuple(keys))

    def _trunc_parts(self, shape, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self._rand(shape)
        low = r & ((1 << 63) - 1)
        return r, low >> m, ((r >> 63) & 1)

    def _gen_trunc(self, req: Request) -> Material:
        shape, m = req.params
        r, u, r63 = self._trunc_parts(shape, m)
        data = {"r": self._arith(r), "u": self._arith(u), "r63": self._arith(r63)}
        self._account(data, "trunc")
        return Material(data)

    def _gen_cmp(self, req: Request) -> Material:
        """See module docstring and :mod:`.protocols.compare` for the meaning of each entry."""
        shape, mode, m, pairs, use = req.params
        j = self.compare_bits
        data: dict[str, Any] = {}
        if mode == "trunc":
            r, u, r63 = self._trunc_parts(shape, m)
            data.update(r=self._arith(r), u=self._arith(u), r63=self._arith(r63))
            offset = -u  # value = public + offset (mod 2^(j+1))
        else:
            r = self._rand(shape)
            data["r"] = self._arith(r)
            offset = -r
        cmp_off = offset if pairs is None else offset[..., [a for a, _ in pairs]] - offset[..., [b for _, b in pairs]]
        cmp_shape = tuple(cmp_off.shape)
        # "greater-than" table of t_i = 255 - digit_i(offset mod 2^j): bit u of G_i is [u > t_i]
        # (256 bits = 4 int64 words per digit); generate = G[q], propagate = G[q + 1] xor G[q]
        n_digits = j // DIGIT_BITS
        shifts = torch.arange(n_digits, device=self.device) * DIGIT_BITS
        t = 255 - ((cmp_off.unsqueeze(-1) >> shifts) & 0xFF)  # [*, D]
        data["gt_table"] = self._xor(_gt_rows(self.device)[t])
        data["rj"] = self._xor(((cmp_off >> j) & 1).to(torch.uint8))
        # AND triples of the carry tree, one per level
        width, level = n_digits, 0
        while width > 1:
            npairs = width // 2
            a = self.prg.bits(cmp_shape + (2 * npairs - 1,), self.device)  # G of each pair, P of all but the lowest
            b = self.prg.bits(cmp_shape + (2 * npairs - 1,), self.device)
            data[f"and{level}"] = (self._xor(a), self._xor(b), self._xor(a & b))
            width, level = width - npairs, level + 1
        # daBit for the B2A step
        rho = self.prg.bits(cmp_shape, self.device)
        data["rho_x"] = self._xor(rho)
        data["rho_a"] = self._arith(rho.to(torch.int64))
        if use == "relu":
            rho64 = rho.to(torch.int64)
            if mode == "trunc":
                data["u_rho"] = self._arith(u * rho64)
                data["r63_rho"] = self._arith(r63 * rho64)
            else:
                data["r_rho"] = self._arith(r * rho64)
        elif use == "argmax":
            self._argmax_tables(data, shape, mode, r, u if mode == "trunc" else None, r63 if mode == "trunc" else None)
        tables = {k: v for k, v in data.items() if not isinstance(v, tuple)}
        for k, v in data.items():
            if isinstance(v, tuple):
                tables.update({f"{k}_{i}": t for i, t in enumerate(v)})
        self._account(tables, f"cmp_{use}")
        return Material(data)

    def _argmax_tables(self, data, shape, mode, r, u, r63) -> None:
        """One-time equality tables T[v] = [(v - sigma) mod M == C - 1] and their products with the offsets."""
        n_cls = shape[-1]
        mod = 1 << max(1, (n_cls - 1).bit_length())
        sigma = self.prg.uniform_mod(tuple(shape), mod.bit_length() - 1, self.device)
        v = torch.arange(mod, device=self.device)
        table = (((v - sigma.unsqueeze(-1)) % mod) == n_cls - 1).to(torch.int64)
        data["sigma"] = self._arith(sigma)
        data["T"] = self._arith(table)
        if mode == "trunc":
            data["uT"] = self._arith(u.unsqueeze(-1) * table)
            data["r63T"] = self._arith(r63.unsqueeze(-1) * table)
        else:
            data["rT"] = self._arith(r.unsqueeze(-1) * table)
