"""``Session``: the functional entry point of the MPC core (parties, dealer, communicator, encoder)."""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from . import protocols as P
from . import ops as _ops
from . import transforms
from .config import RingConfig
from .runtime import DealerHandle, Runtime, SimulatedRuntime, Transport
from .encoding import FixedPointEncoder
from .errors import PartyConfigError, RevealNotAllowedError, SessionMismatchError
from .kinds import Beaver
from .mask import Mask, MaskHandle
from .prg import make_prg
from .tensor import ShareTensor

__all__ = ["Session", "RevealRecord"]


@dataclass(frozen=True)
class RevealRecord:
    """One release of a value beyond uniformly masked openings."""

    name: str
    shape: tuple
    to: tuple

    def __str__(self) -> str:
        what = "scalar" if not self.shape else "shape " + "x".join(map(str, self.shape))
        return f"{self.name} ({what}) to {', '.join(self.to)}"


def ring_config(ring: RingConfig | None, precision_bits: int | None = None, compare_bits: int | None = None,
                digit_bits: int | None = None) -> RingConfig:
    """``ring``, or one built from the flat settings given (the others at :class:`RingConfig`'s defaults); both at
    once must agree."""
    flat = {k: v for k, v in (("precision_bits", precision_bits), ("compare_bits", compare_bits),
                              ("digit_bits", digit_bits)) if v is not None}
    if ring is None:
        return RingConfig(**flat)
    if not isinstance(ring, RingConfig):
        raise TypeError(f"Expected `ring` to be a RingConfig, but got {type(ring).__name__}.")
    differ = {k: v for k, v in flat.items() if getattr(ring, k) != v}
    if differ:
        raise ValueError(f"Pass the settings either in `ring` or flat, not both differently: {differ} against {ring}.")
    return ring


class Session:
    """Simulated MPC runtime: ``n >= 2`` compute parties plus a crypto provider, in this process.

    Args:
        parties: names of the compute parties (at least two, distinct).
        crypto_provider: name of the trusted dealer (not a compute party).
        precision_bits: fractional bits of the fixed-point encoding (default 16).
        compare_bits: (default 32) a comparison of ``x`` is exact for ``|x| < 2**(compare_bits - precision_bits)`` and of
            ``x >= y`` for ``|x - y|`` below that; ``share`` accepts ``|x| < 2**(compare_bits - 1 -
            precision_bits)`` (32768 with the defaults). A multiple of ``compare_digit_bits``; each doubling costs
            one round.
        compare_digit_bits: digit size of the comparison protocol, 4 (default) or 8. 8 makes the dealer's
            comparison tables 16x larger (256 instead of 16 bits per digit: about 2.8x more dealer bytes for a
            ReLU network) for one round less per comparison/ReLU/argmax and 14 fewer bits sent online per
            compared element (see :mod:`.protocols.compare`); all parties and the dealer must use the same value.
        seed: ``None`` for the cryptographically secure generator; an int for the deterministic
            (insecure) test generator.
        device: where shares live (``"cpu"`` or a CUDA device).
        record_views: keep every value each party learned (honesty tests).
        runtime: a :class:`~.runtime.Runtime`; ``None``: :class:`~.runtime.SimulatedRuntime` (every party here).
        ring: the three settings above as one :class:`~.config.RingConfig` (its defaults: 16, 32, 4); the flat
            arguments build one when it is not given.
            :func:`~.distributed.party_session` passes the per-process one.

    Example:
        >>> import torch
        >>> from lightning_smpc.mpc import Session
        >>> s = Session(parties=("alice", "bob"), crypto_provider="crypto_provider", precision_bits=16, seed=0)
        >>> x = s.share(torch.tensor([[1.0, -2.0, 3.0]]))
        >>> w = s.share(torch.tensor([[1.0], [1.0], [2.0]]))
        >>> (x @ w).relu().reveal()
        tensor([[5.]], dtype=torch.float64)
        >>> x.argmax(dim=1).reveal(to="alice")
        tensor([2.], dtype=torch.float64)
        >>> s.stats()["online"]["alice"]["rounds"]  # 2 inputs, ReLU 5, argmax 6, 2 reveals; x @ w needs none
        15
    """

    def __init__(
        self,
        parties: tuple[str, ...] = ("alice", "bob"),
        crypto_provider: str = "crypto_provider",
        precision_bits: int | None = None,
        compare_bits: int | None = None,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        record_views: bool = False,
        runtime=None,
        compare_digit_bits: int | None = None,
        ring: RingConfig | None = None,
    ) -> None:
        parties = tuple(parties)
        if len(parties) < 2 or len(set(parties)) != len(parties) or not all(isinstance(p, str) and p for p in parties):
            raise PartyConfigError(
                f"Expected at least two distinct, non-empty party names, but got {parties!r}. "
                "Example: parties=('alice', 'bob')."
            )
        if crypto_provider in parties:
            raise PartyConfigError(
                f"Expected the crypto provider {crypto_provider!r} to be a separate party, but it is also a compute "
                "party: a dealer that holds shares sees every mask. Pick another name."
            )
        self.parties = parties
        self.crypto_provider = crypto_provider
        self.ring = ring_config(ring, precision_bits, compare_bits, compare_digit_bits)
        precision_bits, compare_bits, compare_digit_bits = (self.ring.precision_bits, self.ring.compare_bits,
                                                            self.ring.digit_bits)
        self.encoder = FixedPointEncoder(precision_bits, compare_bits)
        self.precision_bits = precision_bits
        self.compare_bits = compare_bits
        self.compare_digit_bits = compare_digit_bits
        self.device = torch.device(device)
        self.prg = make_prg(seed)
        if runtime is None:  # all parties (and the dealer) in this process
            runtime = SimulatedRuntime(parties, crypto_provider, self.prg, self.ring, self.device)
        self.runtime: Runtime = runtime  # the seam (lightning_smpc.mpc.runtime): protocols cannot tell which
        self.comm: Transport = runtime.communicator(parties, record_views)
        self.dealer: DealerHandle = runtime.dealer(self.comm)
        self.local_party = None if runtime.rank is None else parties[runtime.rank]
        self.ledger: list[RevealRecord] = []
        # Row 0 of every local share tensor belongs to the first party, which alone adds public constants.
        # In the simulated runtime all rows are here; in a per-process runtime only that party's process says True.
        self.holds_first = runtime.rank in (None, 0)
        self.op_seconds: dict[str, float] = {}
        self._outside_inputs: dict[str, int] = {}  # inputs shared so far per owner outside the parties
        self._opened_masks: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id -> Mask (parties' view)  # wall time per protocol (dealer work included when inline)

    @property
    def n_parties(self) -> int:
        return len(self.parties)

    # ------------------------------------------------------------------ sharing
    def share(self, value: torch.Tensor | float | None, owner: str = "client", frac_bits: int | None = None,
              shape: tuple[int, ...] | None = None) -> ShareTensor:
        """Secret-share a plaintext held by ``owner`` (an outside client by default, or a party name).

        Floats are encoded with ``precision_bits`` fractional bits (``frac_bits=0`` for integers such as
        labels). Raises ``ValueError`` for NaN/inf or out-of-range values before anything is sent. In the
        multi-process runtime only the owner's process passes ``value``; the others pass ``shape``.
        """
        if isinstance(value, ShareTensor):
            raise SessionMismatchError("The value is already shared; shares cannot be shared again.")
        if owner == self.crypto_provider:
            raise PartyConfigError("The crypto provider never holds data; share from a client or a party.")
        frac = self.precision_bits if frac_bits is None else frac_bits
        if value is None:
            if self.local_party is None or self.local_party == owner or shape is None:
                raise ValueError("Expected the owner's value (or `shape` in a non-owner party's process).")
            encoded = torch.zeros(tuple(shape), dtype=torch.int64)
        else:
            encoded = self.encoder.encode(torch.as_tensor(value).detach().cpu(), frac)
        return self._with_opened_mask(*P.share(self, encoded, owner), frac)

    def _with_opened_mask(self, shares, eps, a, mask_id: int, frac_bits: int) -> ShareTensor:
        """A shared value with its opened mask ``(eps, [a])`` (later products with it reuse the opening)."""
        mask = Mask(eps, a, MaskHandle(self.dealer, mask_id))
        self._opened_masks[mask_id] = mask
        return ShareTensor(shares, self, frac_bits, mask)

    def input_index(self, owner: str) -> int:
        """The next input of ``owner`` (outside the parties): its count so far in this session, public (the parties and
        the owner count the same shares), which its mask derives from."""
        index = self._outside_inputs.get(owner, 0)
        self._outside_inputs[owner] = index + 1
        return index

    def reveal(
        self, x: ShareTensor, to: str | tuple[str, ...] | None = None, name: str | None = None, outside: str | None = None
    ) -> torch.Tensor:
        """Decode ``x`` for ``to`` (a party, several, or all when None) or for an ``outside`` receiver.

        A value that still carries a product's ``2 * precision_bits`` fractional bits is truncated first
        (one round): the receiver learns it at the encoding's precision, not the exact product. Each call
        is recorded in :attr:`ledger` (name, shape, receivers). Returns None in a party's process that is
        not a receiver (multi-process runtime).
        """
        if not isinstance(x, ShareTensor) or x.session is not self:
            raise SessionMismatchError(
                "Expected a ShareTensor of this session, but got one shared by another Session (or a plain tensor). "
                "Reveal it with the session that shared it."
            )
        if x._skipped is not None:  # every reveal path comes through here (ShareTensor.reveal, the strategy, metrics)
            raise RevealNotAllowedError(
                "This value went through a softmax/log_softmax that was skipped on shares (it is monotone, so only "
                "its argmax over the softmax dim is meaningful; the tensor holds the logits, or their maximum). "
                "Reveal `.argmax(dim)` instead, or remove the softmax from forward() to reveal logits."
            )
        receivers = self.parties if to is None and outside is None else ((to,) if isinstance(to, str) else tuple(to or ()))
        unknown = [r for r in receivers if r not in self.parties]
        if unknown:
            raise PartyConfigError(f"Unknown party {unknown[0]!r}; expected one of {self.parties}.")
        if not receivers and not outside:
            raise ValueError("Expected at least one receiver: a party in `to` or an `outside` receiver.")
        if x.frac_bits > self.precision_bits:
            x = _ops.to_precision(x)
        if outside:
            self.comm.note_reveal(name or "value", x.frac_bits)
        plain = P.reveal(self, x.shares, receivers, outside)
        shown = receivers + ((outside,) if outside else ())
        self.ledger.append(RevealRecord(name or "value", tuple(x.shape), shown))
        return None if plain is None else self.encoder.decode(plain, x.frac_bits)

    def reveal_for(self, x: ShareTensor, receiver: str, name: str) -> torch.Tensor | None:
        """Reveal ``x`` to one receiver named by role: a compute party (its own process learns it; parties as
        processes) or an outside receiver such as the model owner or the client (simulated runtime)."""
        if receiver in self.parties:
            return self.reveal(x, to=receiver, name=name)
        return self.reveal(x, to=(), outside=receiver, name=name)

    def reveal_raw(self, shares: torch.Tensor, frac_bits: int, name: str, to: str | tuple[str, ...] | None = None,
                   outside: str | None = None) -> torch.Tensor:
        """Reveal raw shares (e.g. a metric state kept as ``[n_parties, ...]`` int64); recorded in the ledger."""
        return self.reveal(ShareTensor(shares, self, frac_bits), to=to, name=name, outside=outside)

    def from_shares(self, shares: torch.Tensor, frac_bits: int) -> ShareTensor:
        """Wrap existing shares (leading party axis) as a ShareTensor of this session."""
        if shares.dtype != torch.int64 or shares.shape[0] != self.n_parties:
            raise ValueError(f"Expected int64 shares with leading axis {self.n_parties}, got {shares.dtype} {tuple(shares.shape)}.")
        return ShareTensor(shares, self, frac_bits)

    def adopt_shares(self, values: list[torch.Tensor], frac_bits: int) -> list[ShareTensor]:
        """Shares the parties kept from an earlier sharing (model shares saved to files), as ShareTensors of this
        session: each gets a fresh opened mask, ``W - B`` opened once for all (:func:`~.protocols.sharing.remask`),
        so later products with them cost what products with freshly shared weights cost. ``values``: int64
        shares with the leading party axis (this process's rows: all parties simulated, its own as a process)."""
        rows = 1 if self.local_party is not None else self.n_parties
        for v in values:
            if v.dtype != torch.int64 or v.dim() < 1 or v.shape[0] != rows:
                raise ValueError(f"Expected int64 shares with leading axis {rows}, got {v.dtype} {tuple(v.shape)}.")
        return [self._with_opened_mask(*opened, frac_bits)
                for opened in P.remask(self, [v.to(self.device) for v in values])]

    # ------------------------------------------------------------------ preprocessing
    def record_plan(self) -> None:
        """Start recording the dealer requests of the next computation (its plan)."""
        self.dealer.record()

    def preprocess(self, plan, repeats: int) -> None:
        """Generate the dealer material for ``repeats`` more runs of ``plan`` ahead of the online phase.

        The parties also do their data-independent work then: for a product of an activation with
        weights whose masked value ``delta = W - B`` was opened before, ``[a] @ delta`` depends only on
        dealer randomness and ``delta``, so it is folded into ``[c]`` offline.
        """
        self.dealer.preprocess(plan, repeats, self._party_precompute, next_inputs=dict(self._outside_inputs))

    def _party_precompute(self, req, mat, created) -> None:
        if req.kind != "beaver":
            return
        p = Beaver.params(req)
        op, tf_x, tf_y = p.op, p.transform_x, p.transform_y
        my = self._opened_masks.get(req.refs[1])
        if my is None or tf_y or not P.beaver_module._flat_weights(op, my):
            return
        if req.refs[0] is None:  # a fresh left mask: this triple's own "a"
            a = mat.a
        elif req.refs[0] in created:  # a mask issued earlier in this batch: as "a" OR "b" of that material
            a = transforms.apply(created[req.refs[0]].mask_shares(req.refs[0]), tf_x, party_axis=True)
        else:
            return
        mat.data["c"] = mat.c + P.beaver_module.a_times_delta(op, a, my)
        mat.a_delta_folded = True

    # ------------------------------------------------------------------ statistics
    def stats(self) -> dict:
        """Traffic and timings: ``{"online": {party: {...}}, "offline": {...}, "rounds": int, "dealer": {...}}``."""
        t = self.dealer.times
        return {
            "online": self.comm.stats(),
            "offline": self.comm.stats(offline=True),
            "rounds": self.comm.rounds,
            "by_protocol": self.comm.stats_by_tag(),
            "dealer": {
                "inline_seconds": t.inline_seconds,
                "preprocess_seconds": t.preprocess_seconds,
                "requests_inline": t.requests_inline,
                "requests_from_store": t.requests_from_store,
                "store_discards": getattr(t, "store_discards", 0),
            },
            "prg_bytes": self.prg.bytes_generated,
        }
