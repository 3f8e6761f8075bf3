"""The request schema's building blocks: bounded ints, shapes, choices, shape transforms and conv2d keyword
arguments, each raising :class:`~..errors.WireError` with what was expected. Used by every kind's ``validate``."""
from __future__ import annotations

import math

from ..errors import WireError

MAX_DIMS = 16
MAX_NUMEL = 1 << 31  # elements of any one tensor a request may make the dealer generate
MAX_TRANSFORM_STEPS = 64
MAX_INT = (1 << 62) - 1
TRANSFORMS = ("reshape", "permute", "getitem")
CONV_KWARGS = {"dilation": 1, "groups": 1, "padding": 0, "stride": 1}  # name -> minimum value


def check_int(x, what: str, lo: int = -MAX_INT, hi: int = MAX_INT) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
        raise WireError(f"{what}: expected an integer in [{lo}, {hi}], got {x!r}.")
    return x


def check_tuple(x, what: str, n: int | None = None) -> tuple:
    if not isinstance(x, tuple) or (n is not None and len(x) != n):
        raise WireError(f"{what}: expected a list{'' if n is None else f' of {n}'}, got {x!r}.")
    return x


def check_numel(shape, what: str) -> int:
    n = math.prod(shape)
    if n > MAX_NUMEL:
        raise WireError(f"{what}: {tuple(shape)} has {n} elements, more than the limit {MAX_NUMEL}.")
    return n


def check_shape(x, what: str) -> tuple:
    check_tuple(x, what)
    if len(x) > MAX_DIMS:
        raise WireError(f"{what}: at most {MAX_DIMS} dims, got {len(x)}.")
    for i, d in enumerate(x):
        check_int(d, f"{what}[{i}]", 0, MAX_NUMEL)
    check_numel(x, what)
    return x


def check_choice(x, options, what: str) -> str:
    if not isinstance(x, str) or x not in options:
        raise WireError(f"{what}: expected one of {tuple(options)}, got {x!r}.")
    return x


def check_refs(refs, n: int) -> tuple:
    check_tuple(refs, "refs", n)
    for r in refs:
        if r is not None:
            check_int(r, "refs", 0, MAX_INT)
    return refs


def check_transform(tf, what: str) -> None:
    """A recorded shape transform of a reused mask: reshape, permute and basic indexing only."""
    check_tuple(tf, what)
    if len(tf) > MAX_TRANSFORM_STEPS:
        raise WireError(f"{what}: at most {MAX_TRANSFORM_STEPS} steps, got {len(tf)}.")
    for i, step in enumerate(tf):
        w = f"{what}[{i}]"
        name, arg = check_tuple(step, w, 2)
        check_choice(name, TRANSFORMS, f"{w} name")
        if name == "reshape":
            check_shape(arg, f"{w} shape")
        elif name == "permute":
            check_tuple(arg, f"{w} dims")
            if sorted(check_int(d, f"{w} dim", 0, MAX_DIMS) for d in arg) != list(range(len(arg))):
                raise WireError(f"{w}: {arg!r} is not a permutation.")
        else:
            _check_index(arg, w)


def _check_index(arg, w: str) -> None:
    check_tuple(arg, f"{w} index")
    if len(arg) > MAX_DIMS + 1:
        raise WireError(f"{w}: index with more than {MAX_DIMS + 1} items.")
    for j, item in enumerate(arg):
        iw = f"{w} index[{j}]"
        check_tuple(item, iw)
        tag = check_choice(item[0] if item else None, ("i", "s", "n", "e"), iw)
        if tag == "i":
            check_tuple(item, iw, 2)
            check_int(item[1], iw)
        elif tag == "s":
            check_tuple(item, iw, 4)
            for v in item[1:]:
                if v is not None:
                    check_int(v, iw)
            if item[3] is not None and item[3] < 1:
                raise WireError(f"{iw}: slice step must be positive, got {item[3]}.")
        elif len(item) != 1:
            raise WireError(f"{iw}: expected [{tag!r}], got {item!r}.")


def check_conv_kwargs(kwargs, what: str) -> dict:
    check_tuple(kwargs, what)
    names = []
    out = {}
    for i, kv in enumerate(kwargs):
        name, value = check_tuple(kv, f"{what}[{i}]", 2)
        check_choice(name, CONV_KWARGS, f"{what}[{i}] name")
        lo = CONV_KWARGS[name]
        if name == "groups":
            check_int(value, f"{what} groups", lo, 1 << 20)
        else:
            for v in check_tuple(value, f"{what} {name}", 2):
                check_int(v, f"{what} {name}", lo, 1 << 20)
        names.append(name)
        out[name] = value
    if names != sorted(set(names)):
        raise WireError(f"{what}: keyword arguments must be unique and sorted, got {names}.")
    return out
