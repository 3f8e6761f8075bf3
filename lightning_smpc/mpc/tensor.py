"""``ShareTensor``: a torch.Tensor facade over secret shares, so that unmodified torch code runs on shares.

The facade has the logical shape, dtype float32 and no data; the shares (int64, leading party axis) live
in ``_shares``. ``__torch_function__`` looks every torch callable up in :data:`OP_TABLE` (keyed by the
callable object, as torch's MaskedTensor does) and raises :class:`UnsupportedOpError` for anything else
— it never falls back to computing on raw share words. ``__torch_dispatch__`` always raises.

Fixed-point bookkeeping: each value carries ``frac_bits``. A product leaves ``2 * precision_bits``
fractional bits and is truncated lazily — fused into the next ReLU/argmax/comparison (no extra round),
or by the truncation protocol before the next product. Reveal decodes at whatever scale the value has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .limits import check_limit_name
from .errors import SessionMismatchError, UnsupportedOpError

__all__ = ["ShareTensor", "OP_TABLE", "implements"]

OP_TABLE: dict[Callable, Callable] = {}
# Ops allowed on the output of a skipped softmax (its values are the logits): metadata and ops that keep the
# value and its layout unchanged. argmax/max are allowed too and check the dim themselves (see
# ops.nonlinear._argmax_parts).
ARGMAX_SAFE: set[Callable] = set()


@dataclass(frozen=True)
class SkippedSoftmax:
    """Marks a value whose softmax/log_softmax was skipped on shares (it holds the logits).

    ``dim`` is the (non-negative) dim the softmax normalised over: only an argmax over that dim equals the
    argmax of the real softmax. ``dim=None`` marks the *values* of a max over such a tensor (the logits'
    maximum, not the maximal probability): nothing may use them.
    """

    dim: int | None
    log: bool = False


# The real softmax of a skipped one, computed when an op other than an argmax over its dim uses it (a softmax
# inside a network, e.g. attention): set by ``ops.smooth`` (the core's dispatch cannot import the ops).
MATERIALIZE: list[Callable] = []


# One declaration per op is the single source of dispatch (OP_TABLE), of the ops a skipped softmax allows
# (ARGMAX_SAFE), of supported_ops() / the error text, and of the README's op table (ops.ops_table_markdown()),
# which shows each op's note (its cost or restriction, OP_NOTE).
FAMILIES = ("metadata", "shape", "arithmetic", "bilinear", "reduction", "nonlinear", "smooth", "pooling", "layers")
OP_FAMILY: dict[Callable, str] = {}
OP_NOTE: dict[Callable, str] = {}


OP_LIMIT: dict[Callable, str] = {}


def implements(*funcs: Callable, family: str, softmax_safe: bool = False, note: str = "", limit: str | None = None):
    """Register a handler for the given torch callables.

    Args:
        family: one of :data:`FAMILIES` (documentation and error text).
        softmax_safe: the op may take the output of a skipped softmax (it keeps the value and its layout, or it
            is an argmax/max that checks the softmax's dim itself).
        note: one short sentence, the op's cost or restriction on shares (the README's op table shows it, and an
            :class:`UnsupportedOpError` the handler raises carries it; a test requires one for every op).
        limit: the range its input (or output) must stay in, one of :data:`~.limits.LIMITS` (a comparison, a
            product, a power's domain, ...); :func:`lightning_smpc.preflight` checks it on calibration data.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown op family {family!r}; expected one of {FAMILIES}")
    check_limit_name(limit)

    def deco(handler):
        for f in funcs:
            OP_TABLE[f] = handler
            OP_FAMILY[f] = family
            OP_NOTE[f] = note
            if limit is not None:
                OP_LIMIT[f] = limit
            if softmax_safe:
                ARGMAX_SAFE.add(f)
        return handler

    return deco


def op_names(family: str | None = None) -> list[str]:
    """Sorted names of the registered torch callables (of one family)."""
    return sorted({_name(f) for f, fam in OP_FAMILY.items() if family in (None, fam)})


def _short(name: str) -> str:
    return name.replace("torch.nn.functional.", "F.").replace("torch.Tensor.", "Tensor.")


def _name(f: Callable) -> str:
    return torch.overrides.resolve_name(f) or getattr(f, "__name__", repr(f))


class ShareTensor(torch.Tensor):
    """Secret-shared tensor. Create with :meth:`Session.share`; read with :meth:`reveal`.

    Example:
        >>> from lightning_smpc.mpc import Session
        >>> s = Session(seed=0)
        >>> x = s.share(torch.tensor([[1.0, -2.0]]))
        >>> x
        ShareTensor(shape=(1, 2), parties=('alice', 'bob'), frac_bits=16, values=HIDDEN)
        >>> (x * 3).relu().reveal()
        tensor([[3., 0.]], dtype=torch.float64)
    """

    _shares: torch.Tensor
    _session: Any
    _frac: int

    @staticmethod
    def __new__(cls, shares: torch.Tensor, session, frac_bits: int, mask=None, skipped: SkippedSoftmax | None = None):
        r = torch.Tensor._make_wrapper_subclass(cls, tuple(shares.shape[1:]), dtype=torch.float32, device=shares.device)
        r._shares = shares
        r._session = session
        r._frac = frac_bits
        r.mask = mask
        r._skipped = skipped
        r._cache = {}  # results of secure ops on this (immutable) value, e.g. its argmax
        return r

    # ------------------------------------------------------------------ plain attributes
    @property
    def shares(self) -> torch.Tensor:
        """The int64 shares, ``[n_parties, *shape]`` (each row belongs to one party)."""
        return self._shares

    @property
    def session(self):
        return self._session

    @property
    def frac_bits(self) -> int:
        return self._frac

    def reveal(self, to: str | tuple[str, ...] | None = None, name: str | None = None) -> torch.Tensor:
        """Decode the value for ``to`` (a party name, several, or all parties when None); float64.

        Raises :class:`RevealNotAllowedError` for the output of a skipped softmax (see :meth:`Session.reveal`)."""
        return self._session.reveal(self, to=to, name=name)

    def __repr__(self, *, tensor_contents=None) -> str:  # values never printed
        return (
            f"ShareTensor(shape={tuple(self._shares.shape[1:])}, parties={self._session.parties}, "
            f"frac_bits={self._frac}, values=HIDDEN)"
        )

    def __reduce_ex__(self, proto):
        raise TypeError("ShareTensor cannot be pickled: shares belong to separate parties.")

    # ------------------------------------------------------------------ dispatch
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in ARGMAX_SAFE and _any_skipped(args, kwargs):
            args, kwargs = _materialized(func, args, kwargs)
        handler = OP_TABLE.get(func)
        if handler is None:
            name = torch.overrides.resolve_name(func) or getattr(func, "__name__", repr(func))
            raise UnsupportedOpError(
                f"`{name}` has no secure implementation on secret shares. Supported: "
                + "; ".join(f"{fam}: {', '.join(_short(n) for n in op_names(fam))}" for fam in FAMILIES if fam != "metadata")
                + " (lightning_smpc.mpc.supported_ops() lists them; the README's op table gives each one's cost "
                "and restrictions)."
            )
        try:
            return handler(*args, **kwargs)
        except UnsupportedOpError as e:  # a restriction of a supported op: say what the op does support
            _add_op_note(e, func)
            raise

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise UnsupportedOpError(f"`{func}` reached the dispatcher on secret shares; it has no secure implementation.")


def _add_op_note(e: UnsupportedOpError, func: Callable) -> None:
    """Attach ``func``'s note to ``e`` (shown under the traceback; Python >= 3.11). Only the innermost op that the
    error passes through adds one (a handler may dispatch further ops)."""
    note = OP_NOTE.get(func)
    if note and hasattr(e, "add_note") and not getattr(e, "__notes__", None):
        e.add_note(f"`{_short(_name(func))}` on shares: {note}")


def _materialized(func, args, kwargs):
    """``args``/``kwargs`` with every skipped softmax replaced by the real one (computed once per value). The
    values of a max over a skipped softmax (the logits' maximum) cannot be: they are refused."""

    def real(a):
        if isinstance(a, ShareTensor) and a._skipped is not None:
            if a._skipped.dim is None or not MATERIALIZE:
                name = torch.overrides.resolve_name(func) or getattr(func, "__name__", repr(func))
                raise UnsupportedOpError(
                    f"`{name}` was applied to the values of a max over a softmax/log_softmax that is skipped on "
                    "shares (they are the logits' maximum, not probabilities); use the indices of the max, or "
                    "compute the max of the softmax's values with the softmax inside the network."
                )
            return MATERIALIZE[0](a)
        if isinstance(a, (list, tuple)) and any(isinstance(t, ShareTensor) for t in a):
            return type(a)(real(t) for t in a)
        return a

    return tuple(real(a) for a in args), {k: real(v) for k, v in kwargs.items()}


def _any_skipped(args, kwargs) -> bool:
    for a in list(args) + list(kwargs.values()):
        items = a if isinstance(a, (list, tuple)) else (a,)
        if any(isinstance(t, ShareTensor) and t._skipped is not None for t in items):
            return True
    return False


def check_same_session(*values) -> Any:
    sessions = {id(v._session): v._session for v in values if isinstance(v, ShareTensor)}
    if len(sessions) > 1:
        raise SessionMismatchError(
            "Expected all shared operands to come from the same Session, but got values from "
            f"{len(sessions)} different sessions. Share every input with one Session."
        )
    return next(iter(sessions.values()))
