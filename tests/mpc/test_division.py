"""``divide``: restoring long division of shared integers, against exact integer division; its declared cost."""
from __future__ import annotations

import doctest
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_smpc.mpc import ShapeMismatchError
from lightning_smpc.mpc import division
from lightning_smpc.mpc.division import divide, divide_cost

pytestmark = pytest.mark.usefixtures("torch_single_thread")

N_PARTIES = pytest.mark.parametrize("n", [2, 3], ids=["2pc", "3pc"])


def share_ints(s, values) -> object:
    return s.share(torch.tensor(values, dtype=torch.float64), frac_bits=0)


def quotients(q) -> list[int]:
    """The integer quotients behind a result with ``q.frac_bits`` fractional bits."""
    return [int(v) for v in (q.reveal() * 2 ** q.frac_bits).round().to(torch.int64)]


@st.composite
def division_cases(draw):
    """(bits, frac_bits, [(num, den)]) with every quotient below 2**bits and the range of the module docstring."""
    frac_bits = draw(st.integers(0, 16))
    bits = draw(st.integers(1, 20))
    int_steps = max(bits - frac_bits - 1, 0)
    limit = (1 << 15) - 1  # shared inputs: |x| < 2**(compare_bits - 1 - precision_bits) at every frac_bits
    max_den = min(limit, ((1 << 30) >> int_steps) - 1)  # den * 2**(int_steps + 1) < 2**31 (divide's range)
    pairs = []
    for _ in range(draw(st.integers(1, 6))):
        den = draw(st.one_of(st.integers(1, 8), st.integers(1, max_den)))
        max_num = min(limit, ((den << bits) - 1) >> frac_bits)  # num * 2**frac_bits < den * 2**bits
        num = draw(st.one_of(st.integers(0, min(max_num, 8)), st.integers(0, max_num), st.just(max_num)))
        pairs.append((num, den))
    return bits, frac_bits, pairs


@pytest.mark.parametrize("n", [2, 3], ids=["2pc", "3pc"])
@settings(max_examples=25, deadline=None)
@given(case=division_cases())
def test_matches_exact_integer_division(make_session, n: int, case) -> None:
    bits, frac_bits, pairs = case
    s = make_session(n, seed=len(pairs))
    num, den = share_ints(s, [p[0] for p in pairs]), share_ints(s, [p[1] for p in pairs])
    q = divide(num, den, bits=bits, frac_bits=frac_bits)
    assert q.frac_bits == frac_bits and tuple(q.shape) == (len(pairs),)
    assert quotients(q) == [(a << frac_bits) // b for a, b in pairs]


@N_PARTIES
def test_edges_exact_multiples_and_scalars(make_session, n: int) -> None:
    s = make_session(n, seed=3)
    # tp <= tc: the recall form used by SecureAccuracy (f + 1 bits, f fractional), including 0/1, c/c, 1/N
    num, den = [0, 5, 1, 7, 32766, 1], [1, 5, 3, 8, 32767, 32767]
    q = divide(share_ints(s, num), share_ints(s, den), bits=17, frac_bits=16)
    assert quotients(q) == [(a << 16) // b for a, b in zip(num, den)]
    assert q.reveal().tolist()[:2] == [0.0, 1.0]
    # a 0-d value, all bits integer (frac_bits=0), quotient at the top of its range
    total, count = 10 * ((1 << 15) - 1), 10
    q = divide(share_ints(s, 10) * ((1 << 15) - 1), share_ints(s, count), bits=17)  # a computed (not shared) total
    assert tuple(q.shape) == () and quotients(q.reshape(1)) == [total // count]


@N_PARTIES
def test_measured_cost_matches_divide_cost(make_session, n: int) -> None:
    s = make_session(n, seed=0)
    num, den = share_ints(s, [3, 9, 1]), share_ints(s, [4, 9, 7])
    for den_opened, d in ((True, den), (False, den + 0)):  # a shared input's mask is open; ``den + 0`` has none
        r0, b0 = s.comm.rounds, {p: v["bytes_sent"] for p, v in s.comm.stats().items()}
        divide(num, d, bits=17, frac_bits=16)
        r1, b1 = s.comm.rounds, {p: v["bytes_sent"] for p, v in s.comm.stats().items()}
        cost = divide_cost(n, numel=3, bits=17, den_opened=den_opened)
        assert r1 - r0 == cost["rounds"] == 17 * 5 + 16  # 17 comparisons (5 rounds each) + 16 products
        assert all(b1[p] - b0.get(p, 0) == cost["bytes_sent"] for p in s.parties), (b0, b1, cost)
    assert [r for r in s.comm.records if r.kind == "reveal"] == []  # only masked openings


@N_PARTIES
def test_transcript_does_not_depend_on_the_values(make_session, n: int) -> None:
    """What is opened (tags and shapes, in order) is the same for very different secrets (the values themselves
    are uniformly masked inside the comparison and product protocols)."""
    transcripts = []
    for num, den in (([0, 0, 0], [1, 1, 1]), ([9, 1000, 32766], [9, 4000, 32767])):
        s = make_session(n, seed=0)
        divide(share_ints(s, num), share_ints(s, den), bits=17, frac_bits=16)
        transcripts.append([(r.tag, r.shapes, r.kind) for r in s.comm.records])
    assert transcripts[0] == transcripts[1]
    assert all(kind != "reveal" for _, _, kind in transcripts[0])


def test_bad_arguments(make_session) -> None:
    s = make_session(2, seed=0)
    a, b = share_ints(s, [1, 2]), share_ints(s, [3, 4])
    with pytest.raises(ValueError, match="frac_bits=0"):
        divide(s.share(torch.tensor([1.0, 2.0])), b, bits=4)
    with pytest.raises(ShapeMismatchError):
        divide(a, share_ints(s, [3, 4, 5]), bits=4)
    with pytest.raises(ValueError, match="bits >= 1"):
        divide(a, b, bits=0)
    with pytest.raises(TypeError, match="ShareTensors"):
        divide(a, torch.tensor([3, 4]), bits=4)


def test_docstring_example() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(division)
    assert result.attempted > 0 and result.failed == 0
