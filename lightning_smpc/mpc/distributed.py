"""Multi-process runtime over ``torch.distributed`` (gloo): one process per compute party, one for the dealer.

The protocols are the same code as in the simulated runtime; only the transport changes. Each party's
process holds its own row of every share tensor (a party axis of length 1), public constants are added by
the first party only (``Session.holds_first``), and the three transport hooks of
:class:`~.comm.Communicator` become collectives over the parties' process group:

* ``_exchange`` (opening a masked value): ``all_gather`` of each party's share; 1-bit XOR shares are
  packed 8 per byte, and a value opened modulo ``2**bits`` is reduced modulo ``2**bits`` before it leaves
  the process (the full share would leak the unreduced sum) and sent in the smallest integer type that
  holds it (the communicator counts ``bits`` per element);
* ``_exchange_to`` (revealing to some parties): ``gather`` to each receiver only — the others never see
  the shares;
* ``_broadcast`` (an input owner's masked input): ``broadcast`` from the owner's rank.

The crypto provider runs in its own process (rank ``n``): the first party forwards each request (shapes
and mask ids only — no data), and the dealer sends every party its own share of the material, point to
point. Example (each party's function gets its Session; only the owner passes the value)::

    def job(sess):
        x = sess.share(torch.randn(4, 3) if sess.local_party == "alice" else None, owner="alice", shape=(4, 3))
        return x.relu().reveal(to="bob")          # tensor in bob's process, None in alice's

    results = run_parties(job, parties=("alice", "bob"))   # [None, tensor(...)]
"""
from __future__ import annotations

import socket
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .comm import Communicator
from .dealer import Material, TrustedDealer, _DealerTimes
from .prg import make_prg

__all__ = ["run_parties", "DistributedCommunicator", "RemoteDealer"]


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    flat = bits.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = (1 << torch.arange(8, dtype=torch.uint8))
    return (flat.reshape(-1, 8) * weights).sum(1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, shape: tuple) -> torch.Tensor:
    n = 1
    for d in shape:
        n *= d
    bits = (packed.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(-1)[:n].reshape(shape)


class DistributedCommunicator(Communicator):
    """The communicator of one party's process; collectives over the parties' gloo group."""

    def __init__(self, parties: tuple[str, ...], rank: int, group, record_views: bool = False) -> None:
        super().__init__(parties, record_views)
        self.rank, self.group = rank, group

    def _all_gather(self, local: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(local) for _ in range(self.n)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        return parts

    def _exchange(self, shares: torch.Tensor, kind: str, bits: int) -> torch.Tensor:
        mine = shares[0]
        if kind == "xor" and bits == 1:
            parts = [_unpack_bits(p, tuple(mine.shape)) for p in self._all_gather(_pack_bits(mine))]
        elif kind == "arith" and bits < 64:  # a share mod 2^bits is all the others may see
            dtype = torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int32 if bits <= 31 else torch.int64
            wire = (mine & ((1 << bits) - 1)).to(dtype)
            parts = [p.to(torch.int64) & ((1 << bits) - 1) for p in self._all_gather(wire)]
        else:
            parts = self._all_gather(mine)
        return torch.stack(parts)

    def _exchange_to(self, shares: torch.Tensor, receivers: list[str]):
        outside = [r for r in receivers if r not in self.parties]
        if outside:
            raise ValueError(f"The multi-process runtime reveals to compute parties only, not to {outside}.")
        mine, out = shares[0].contiguous(), None
        for r in receivers:
            dst = self.parties.index(r)
            parts = [torch.empty_like(mine) for _ in range(self.n)] if self.rank == dst else None
            dist.gather(mine, parts, dst=dst, group=self.group)
            if self.rank == dst:
                out = torch.stack(parts)
        return out

    def _broadcast(self, value: torch.Tensor, sender: str) -> torch.Tensor:
        value = value.contiguous()
        dist.broadcast(value, src=self.parties.index(sender), group=self.group)
        return value


class RemoteDealer:
    """The parties' handle on the dealer process: the first party forwards requests, all receive material."""

    def __init__(self, rank: int, dealer_rank: int) -> None:
        self.rank, self.dealer_rank = rank, dealer_rank
        self.times = _DealerTimes()
        self.store_size = 0

    def request(self, req) -> Material:
        if self.rank == 0:
            dist.send_object_list([req], dst=self.dealer_rank)
        box: list[Any] = [None]
        dist.recv_object_list(box, src=self.dealer_rank)
        data, created, keys = box[0]
        self.times.requests_inline += 1
        return Material(data, created, keys)

    def forget(self, mask_id: int) -> None:  # the dealer process keeps its masks for the run
        pass

    def record(self) -> None:
        raise NotImplementedError("Preprocessing into a store is available in the simulated runtime only.")

    stop_recording = preprocess = record


def _party_view(mat: Material, i: int, party: str, owner: str | None, n: int) -> dict:
    view: dict[str, Any] = {}
    for k, v in mat.data.items():
        if k == "owner_mask":
            if party == owner:
                view[k] = v
        elif isinstance(v, tuple):
            view[k] = tuple(t[i : i + 1].clone() for t in v)
        elif isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n:
            view[k] = v[i : i + 1].clone()
        else:
            view[k] = v
    return view


def _dealer_loop(parties: tuple[str, ...], crypto_provider: str, compare_bits: int, seed: int | None) -> dict:
    accounting = Communicator(parties)
    dealer = TrustedDealer(crypto_provider, parties, make_prg(seed), accounting, compare_bits, "cpu")
    n = len(parties)
    while True:
        box: list[Any] = [None]
        dist.recv_object_list(box, src=0)
        req = box[0]
        if req is None:
            return accounting.stats(offline=True)
        mat = dealer._generate(req)
        owner = req.params[1] if req.kind == "input_mask" else None
        for i, party in enumerate(parties):
            dist.send_object_list([(_party_view(mat, i, party, owner, n), mat.created, mat.mask_keys)], dst=i)


@dataclass
class _Runtime:
    rank: int
    group: Any
    dealer_rank: int

    def communicator(self, parties, record_views):
        return DistributedCommunicator(parties, self.rank, self.group, record_views)

    def dealer(self):
        return RemoteDealer(self.rank, self.dealer_rank)


def _worker(rank, world, port, parties, crypto_provider, seed, session_kwargs, fn, queue) -> None:
    from .session import Session

    torch.set_num_threads(1)
    n = len(parties)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
        group = dist.new_group(list(range(n)))
        if rank == n:
            result = _dealer_loop(tuple(parties), crypto_provider, session_kwargs.get("compare_bits", 32), seed)
        else:
            sess = Session(parties, crypto_provider, seed=None, runtime=_Runtime(rank, group, n), **session_kwargs)
            result = fn(sess)
            result = {"result": result, "stats": sess.stats()["online"], "rounds": sess.comm.rounds}
            if rank == 0:
                dist.send_object_list([None], dst=n)
        queue.put((rank, result, None))
        dist.destroy_process_group()
    except Exception:  # report to the launcher instead of hanging it
        queue.put((rank, None, traceback.format_exc()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_parties(
    fn: Callable, parties: tuple[str, ...] = ("alice", "bob"), crypto_provider: str = "crypto_provider",
    seed: int | None = None, timeout: float = 300.0, **session_kwargs,
) -> list[dict]:
    """Run ``fn(session)`` in one process per party (plus the dealer's) over gloo on 127.0.0.1.

    ``fn`` must be importable (a module-level function). Returns, per party, ``{"result": fn's return
    value, "stats": online traffic per party as counted in that process, "rounds": int}``; the dealer's
    offline accounting is appended last.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    world, port = len(parties) + 1, _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, tuple(parties), crypto_provider, seed, session_kwargs, fn, queue))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        for _ in range(world):
            rank, result, error = queue.get()
            if error:
                raise RuntimeError(f"party process {rank} failed:\n{error}")
            results[rank] = result
    finally:
        for p in procs:
            p.join(timeout)
            if p.is_alive():
                p.terminate()
    return [results[r] for r in range(world)]
