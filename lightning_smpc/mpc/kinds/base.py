"""What every kind of dealer material declares, and the registry that dispatches on it.

A kind is one class (see the modules beside this one): its frozen ``Params`` dataclass (a request's ``params``
are its fields in order, so requests stay hashable and comparable), ``validate`` (the wire schema), ``layout``
(what each party receives, a pure function of the request), ``generate`` (the dealer's side) and ``example``
(a request the tests use to check the three against each other and the offline bytes against the layout).
Register it with :func:`register`; wire validation, layouts and the dealer's generation then find it by name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

from ..errors import WireError
from ..material import Material, Request
from ._layout import Layout, LayoutBuilder
from ._schema import check_refs

__all__ = ["MaterialKind", "KINDS", "register", "kind_of"]


class MaterialKind:
    """One kind of dealer material (subclass it, then :func:`register`)."""

    name: ClassVar[str]
    Params: ClassVar[type]  # a frozen dataclass
    n_refs: ClassVar[int] = 0  # masks of earlier requests it may refer to (a Beaver triple reuses operand masks)

    @classmethod
    def request(cls, *args: Any, refs: Sequence = (), **kwargs: Any) -> Request:
        """A request of this kind from its parameters (by position or name)."""
        p = cls.Params(*args, **kwargs)
        return Request(cls.name, tuple(getattr(p, f.name) for f in dataclasses.fields(p)), tuple(refs))

    @classmethod
    def params(cls, req: Request):
        """The request's parameters, typed (``params(req).shape``, not ``req.params[0]``)."""
        try:
            return cls.Params(*req.params)
        except TypeError:
            raise WireError(f"{cls.name} params: expected the fields {cls.field_names()}, got {req.params!r}.") from None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls.Params))

    @classmethod
    def check(cls, req: Request, parties: Sequence[str] | None) -> None:
        if not isinstance(req.params, tuple) or len(req.params) != len(cls.field_names()):
            raise WireError(f"{cls.name} params: expected a list of {len(cls.field_names())}, got {req.params!r}.")
        check_refs(req.refs, cls.n_refs)
        cls.validate(cls.params(req), req.refs, parties)

    # ---------------------------------------------------------------------- what a kind must declare
    @classmethod
    def validate(cls, p, refs: tuple, parties: Sequence[str] | None) -> None:
        """Raise :class:`~..errors.WireError` unless ``p`` fits the schema."""
        raise NotImplementedError

    @classmethod
    def layout(cls, p, fresh: tuple, b: LayoutBuilder) -> Layout:
        """Declare one party's slots on ``b`` (``fresh[i]``: ref ``i`` is a new mask) and return ``b.build(...)``."""
        raise NotImplementedError

    @classmethod
    def generate(cls, dealer, p, refs: tuple, sh) -> tuple[Material, dict]:
        """The dealer's side: fill ``sh`` (a :class:`~._shares.DealtShares`: the parties' seeded shares); returns the material
        and the bytes sent to receivers outside the parties (``{name: bytes}``)."""
        raise NotImplementedError

    @classmethod
    def seeds(cls, dealer, p) -> tuple[bytes, ...] | None:
        """Each party's seed of this request, where the kind derives them (an outside owner's mask); ``None``: fresh
        seeds from the crypto provider's generator (every other kind)."""
        return None

    @classmethod
    def example(cls, parties: Sequence[str]) -> Request:
        """A typical request (the tests' scenario for this kind)."""
        raise NotImplementedError


KINDS: dict[str, type[MaterialKind]] = {}
_REQUIRED = ("validate", "layout", "generate", "example")


def register(kind: type[MaterialKind]) -> type[MaterialKind]:
    """Add a kind to :data:`KINDS` (refused when it does not declare everything a kind needs)."""
    missing = [m for m in _REQUIRED if getattr(kind, m).__func__ is getattr(MaterialKind, m).__func__]
    if not dataclasses.is_dataclass(getattr(kind, "Params", None)) or missing:
        raise TypeError(f"material kind {getattr(kind, 'name', kind)!r} lacks {missing or ['a Params dataclass']}")
    KINDS[kind.name] = kind
    return kind


def kind_of(req_or_name) -> type[MaterialKind]:
    name = req_or_name.kind if isinstance(req_or_name, Request) else req_or_name
    if not isinstance(name, str) or name not in KINDS:
        raise WireError(f"kind: expected one of {tuple(KINDS)}, got {name!r}.")
    return KINDS[name]
