"""Shape transforms recorded on cached masks, so the dealer can replay them on the plain mask.

Only three primitives: ``("reshape", shape)``, ``("permute", dims)`` and ``("getitem", index)``; every
view-like op (view, flatten, unsqueeze, squeeze, transpose, t, ...) is expressed with them. Indices are
stored in a hashable form so that dealer requests can be compared and replayed.
"""
from __future__ import annotations

import torch

Transform = tuple  # tuple of (name, arg) steps


def hashable_index(idx) -> tuple | None:
    """A hashable encoding of a basic index (ints, slices, None, Ellipsis), or None if it is advanced."""
    items = idx if isinstance(idx, tuple) else (idx,)
    out = []
    for it in items:
        if isinstance(it, bool):
            return None
        if isinstance(it, int):
            out.append(("i", it))
        elif isinstance(it, slice):
            if not all(v is None or isinstance(v, int) for v in (it.start, it.stop, it.step)):
                return None
            out.append(("s", it.start, it.stop, it.step))
        elif it is None:
            out.append(("n",))
        elif it is Ellipsis:
            out.append(("e",))
        else:
            return None
    return tuple(out)


def _index_from(h: tuple) -> tuple:
    conv = {"i": lambda x: x[1], "s": lambda x: slice(x[1], x[2], x[3]), "n": lambda x: None, "e": lambda x: Ellipsis}
    return tuple(conv[x[0]](x) for x in h)


def apply(t: torch.Tensor, transform: Transform, party_axis: bool) -> torch.Tensor:
    """Apply ``transform`` to a plain tensor, or to shares when ``party_axis`` (leading axis kept)."""
    for name, arg in transform:
        if name == "reshape":
            t = t.reshape(((t.shape[0],) if party_axis else ()) + tuple(arg))
        elif name == "permute":
            t = t.permute(((0,) + tuple(d + 1 for d in arg)) if party_axis else tuple(arg))
        elif name == "getitem":
            idx = _index_from(arg)
            t = t[((slice(None),) + idx) if party_axis else idx]
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown transform {name}")
    return t


def align_party(shares: torch.Tensor, nd: int) -> torch.Tensor:
    """Shares with singleton dims inserted after the party axis up to ``nd`` logical dims, so that
    broadcasting against an operand without a party axis never pairs the party axis with a data dim."""
    missing = nd - (shares.dim() - 1)
    return shares if missing <= 0 else shares.reshape((shares.shape[0],) + (1,) * missing + tuple(shares.shape[1:]))
