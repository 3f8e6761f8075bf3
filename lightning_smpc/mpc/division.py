"""Division of secret-shared integers by secret-shared integers: comparison-based restoring long division.

``divide(num, den, bits=b, frac_bits=k)`` returns shares of ``q = floor(num * 2**k / den)`` elementwise, for
shared integers (``frac_bits=0``) ``num >= 0`` and ``den >= 1`` whose quotient fits in ``b`` bits
(``q < 2**b``). The result carries ``k`` fractional bits, so it decodes to ``num / den`` rounded down to a
multiple of ``2**-k``: the error is in ``[0, 2**-k)`` and the result is exact whenever ``num * 2**k`` is a
multiple of ``den``.

Protocol (the quotient bits from the top, one per step; every element of the tensor in parallel):

* integer bits ``2**e`` of ``num / den`` (``e = b - k - 1, ..., 0``): ``t = [r >= den * 2**e]`` (a secure
  comparison; each party scales its own share of ``den``), ``r -= t * den * 2**e`` (one Beaver product
  ``t * den``, then a local scaling);
* fractional bits: ``r = 2 r`` (local), ``t = [r >= den]``, ``r -= t * den``;
* ``q = sum(t * 2**weight)`` (local). The last step needs no product (its remainder is not used).

Only ShareTensor ops run: comparisons (``x >= y``) and Beaver products (``x * y``); nothing is opened except
the uniformly masked values inside those protocols, so the parties learn nothing. The opened mask of ``den``
is cached on it by its first product, so later products open only the fresh bit.

Cost (online; ``n`` parties, ``N`` elements, ``b`` bits, ``L`` carry-tree levels of a comparison, 2 at the
default ``compare_bits=32``): ``b`` comparisons (``2 + L`` rounds each) and ``b - 1`` products (1 round each):
``(3 + L) * b - 1`` rounds, 84 for ``b = 17``. Bytes each party sends: ``b`` comparisons of ``N`` elements
(73 bits per element at ``L = 2``, to each other party), plus ``8 N`` bytes per product for the bit and
``8 N`` once for ``den`` (if it has no opened mask yet), to each other party: see :func:`divide_cost`.

Range (not checkable on shares, so the caller's contract): every compared difference must stay below
``2**compare_bits`` in magnitude, which holds when ``den * 2**max(b - k - 1, 0) < 2**compare_bits``.

Example:
    >>> import torch, warnings
    >>> from lightning_smpc.mpc import Session
    >>> warnings.simplefilter("ignore")
    >>> s = Session(seed=0)
    >>> num = s.share(torch.tensor([3.0, 7.0, 0.0, 10.0]), frac_bits=0)
    >>> den = s.share(torch.tensor([4.0, 7.0, 5.0, 3.0]), frac_bits=0)
    >>> divide(num, den, bits=6, frac_bits=2).reveal()  # floor(num / den) to quarters
    tensor([0.7500, 1.0000, 0.0000, 3.2500], dtype=torch.float64)
    >>> divide_cost(2, numel=4, bits=6, den_opened=True)  # den was shared by its owner: its mask is open
    {'rounds': 35, 'bytes_sent': 442}
"""
from __future__ import annotations

from .errors import ShapeMismatchError
from .protocols import COSTS
from .tensor import ShareTensor, check_same_session

__all__ = ["divide", "divide_cost"]


def divide(num: ShareTensor, den: ShareTensor, *, bits: int, frac_bits: int = 0) -> ShareTensor:
    """Shares of ``floor(num * 2**frac_bits / den)``, carrying ``frac_bits`` fractional bits.

    Args:
        num: shared non-negative integers (``frac_bits=0``).
        den: shared positive integers (``frac_bits=0``), the same shape as ``num``.
        bits: number of quotient bits: the caller guarantees ``num * 2**frac_bits < den * 2**bits``.
        frac_bits: fractional bits of the quotient.

    Preconditions on the secret values (``num >= 0``, ``den >= 1``, the quotient below ``2**bits``, and the
    range in the module docstring) cannot be checked on shares; outside them the result is garbage, but
    still nothing is revealed.
    """
    if not isinstance(num, ShareTensor) or not isinstance(den, ShareTensor):
        raise TypeError(f"Expected ShareTensors, but got {type(num).__name__} and {type(den).__name__}.")
    sess = check_same_session(num, den)
    if num.frac_bits != 0 or den.frac_bits != 0:
        raise ValueError(
            f"Expected shared integers (frac_bits=0), but got frac_bits {num.frac_bits} and {den.frac_bits}."
        )
    if tuple(num.shape) != tuple(den.shape):
        raise ShapeMismatchError(
            f"Expected num and den of the same shape, but got {tuple(num.shape)} and {tuple(den.shape)}."
        )
    if not isinstance(bits, int) or bits < 1 or not isinstance(frac_bits, int) or frac_bits < 0:
        raise ValueError(f"Expected bits >= 1 and frac_bits >= 0, but got bits={bits!r}, frac_bits={frac_bits!r}.")
    int_steps = bits - frac_bits
    r = num
    if int_steps < 0:  # the top -int_steps fractional bits are zero: start the doubling further down
        r = _shift(r, -int_steps)
        int_steps = 0
    steps = [(e, True) for e in range(int_steps - 1, -1, -1)]  # (exponent, integer phase?)
    steps += [(j, False) for j in range(min(frac_bits, bits) - 1, -1, -1)]
    q = None
    for i, (e, integer) in enumerate(steps):
        last = i == len(steps) - 1
        if integer:
            t = r >= _shift(den, e)
            if not last:
                r = r - _shift(t * den, e)
            weight = e + frac_bits
        else:
            r = _shift(r, 1)
            t = r >= den
            if not last:
                r = r - t * den
            weight = e
        q = _shift(t, weight) if q is None else q + _shift(t, weight)
    return sess.from_shares(q.shares, frac_bits)


def _shift(x: ShareTensor, e: int) -> ShareTensor:
    """``x * 2**e`` for a shared integer: each party scales its own share (local, exact in the ring)."""
    return x if e == 0 else x.session.from_shares(x.shares * (1 << e), x.frac_bits)


def divide_cost(n_parties: int, numel: int, bits: int, compare_bits: int = 32,
                den_opened: bool = False) -> dict[str, int]:
    """Declared online cost of :func:`divide` on ``numel`` elements: ``{"rounds", "bytes_sent"}`` (per party).

    Built from the declared costs of its parts (:data:`~lightning_smpc.mpc.COSTS`): ``bits`` comparisons and
    ``bits - 1`` Beaver products whose left operand (the bit) is fresh; ``den``'s mask is opened by the first
    product unless ``den_opened``.
    """
    cmp, mul = COSTS["compare_bit"], COSTS["beaver_mul"]
    shape = (numel,)
    products = bits - 1
    rounds = bits * cmp.rounds(n_parties, j=compare_bits) + products * mul.rounds(n_parties)
    sent = bits * cmp.bytes_sent(n_parties, numel=numel, j=compare_bits)
    if products:
        sent += mul.bytes_sent(n_parties, shape, shape, fresh_x=True, fresh_y=not den_opened)
        sent += (products - 1) * mul.bytes_sent(n_parties, shape, shape, fresh_x=True, fresh_y=False)
    return {"rounds": rounds, "bytes_sent": sent}
