"""Wire format between processes: dealer requests as canonical JSON (round trip, strict rejection) and material
whose layout every party derives from the request alone (checked against what the dealer really generates)."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_smpc.mpc.comm import Communicator
from lightning_smpc.mpc.dealer import Request, TrustedDealer
from lightning_smpc.mpc.prg import make_prg
from lightning_smpc.mpc.wire import (
    MAX_NUMEL, WireError, decode_request, encode_request, material_from, material_layout, material_tensors,
)

PARTIES = ("alice", "bob", "carol")
dims = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
nonempty = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


@st.composite
def transforms(draw):
    steps = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["reshape", "permute", "getitem"]))
        if kind == "reshape":
            steps.append(("reshape", draw(dims)))
        elif kind == "permute":
            steps.append(("permute", tuple(draw(st.permutations(range(draw(st.integers(0, 4))))))))
        else:
            item = st.one_of(
                st.tuples(st.just("i"), st.integers(-5, 5)),
                st.tuples(st.just("s"), st.none() | st.integers(-5, 5), st.none() | st.integers(-5, 5), st.none() | st.integers(1, 3)),
                st.just(("n",)), st.just(("e",)),
            )
            steps.append(("getitem", tuple(draw(st.lists(item, max_size=3)))))
    return tuple(steps)


@st.composite
def beaver_requests(draw):
    op = draw(st.sampled_from(["mul", "matmul", "linear", "conv2d"]))
    kwargs = ()
    if op == "mul":
        sx = draw(dims)
        sy = tuple(draw(st.sampled_from([d, 1])) for d in sx)
    elif op == "matmul":
        n, k, m = draw(st.integers(0, 4)), draw(st.integers(0, 4)), draw(st.integers(0, 4))
        sx, sy = (n, k), (k, m)
    elif op == "linear":
        n, k, m = draw(st.integers(0, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
        sx, sy = (draw(st.integers(1, 2)), n, k), (m, k)
    else:
        groups = draw(st.sampled_from([1, 2]))
        c, o, kh = 2 * draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2)), draw(st.integers(1, 3))
        stride, pad, dil = draw(st.integers(1, 2)), draw(st.integers(0, 1)), draw(st.integers(1, 2))
        sx, sy = (draw(st.integers(1, 2)), c, 6, 6), (o, c // groups, kh, kh)
        kwargs = (("dilation", (dil, dil)), ("groups", groups), ("padding", (pad, pad)), ("stride", (stride, stride)))
    refs = (draw(st.none() | st.integers(0, 2**40)), draw(st.none() | st.integers(0, 2**40)))
    tfs = tuple(() if r is None else draw(transforms()) for r in refs)
    return Request("beaver", (op, kwargs, sx, sy) + tfs, refs)


@st.composite
def cmp_requests(draw):
    use = draw(st.sampled_from(["bit", "relu", "argmax"]))
    mode = draw(st.sampled_from(["mask", "trunc"]))
    m = draw(st.integers(1, 62)) if mode == "trunc" else 0
    shape = draw(nonempty) if use == "argmax" else draw(dims)
    pairs = tuple(itertools.combinations(range(shape[-1]), 2)) if use == "argmax" else None
    return Request("cmp", (shape, mode, m, pairs, use))


requests = st.one_of(
    st.builds(lambda s, o: Request("input_mask", (s, o)), dims, st.sampled_from(PARTIES)),
    st.builds(lambda s, m: Request("trunc", (s, m)), dims, st.integers(0, 62)),
    beaver_requests(),
    cmp_requests(),
)


@settings(max_examples=150, deadline=None)
@given(requests)
def test_request_round_trip(req):
    data = encode_request(req, PARTIES)
    assert decode_request(data, PARTIES) == req
    assert decode_request(torch.frombuffer(bytearray(data), dtype=torch.uint8), PARTIES) == req
    assert encode_request(decode_request(data, PARTIES), PARTIES) == data  # canonical: one encoding per request


def _dealer(n=3, compare_bits=16):
    parties = PARTIES[:n]
    return TrustedDealer("dealer", parties, make_prg(0), Communicator(parties), compare_bits, "cpu"), parties


FIXED = [  # every kind, op, mode and use at least once (hypothesis adds random ones below)
    Request("input_mask", ((3, 2), "bob")),
    Request("trunc", ((4,), 16)),
    Request("beaver", ("mul", (), (2, 3), (1, 3), (), ()), (None, None)),
    Request("beaver", ("matmul", (), (2, 3), (3, 4), (), ()), (None, None)),
    Request("beaver", ("linear", (), (2, 5, 3), (4, 3), (), ()), (None, None)),
    Request("beaver", ("conv2d", (("dilation", (1, 1)), ("groups", 2), ("padding", (1, 1)), ("stride", (2, 2))),
                       (1, 4, 5, 5), (2, 2, 3, 3), (), ()), (None, None)),
] + [Request("cmp", ((2, 5), mode, 12 if mode == "trunc" else 0,
                     tuple(itertools.combinations(range(5), 2)) if use == "argmax" else None, use))
     for mode in ("mask", "trunc") for use in ("bit", "relu", "argmax")]


def _check_layout(req, n):
    """Each party's derived layout is exactly its slice of what the dealer generates."""
    dealer, parties = _dealer(n, compare_bits=16)
    if req.kind == "input_mask" and req.params[1] not in parties:
        req = Request("input_mask", (req.params[0], parties[-1]))
    mat = dealer._generate(req)
    for i, party in enumerate(parties):
        layout = material_layout(req, i, parties, 16)
        tensors = material_tensors(mat, layout, i, n)  # raises on any mismatch with the generated material
        got = material_from(layout, [t.clone() for t in tensors])
        assert got.created == mat.created and got.mask_keys == mat.mask_keys
        assert ("owner_mask" in got.data) == (req.kind == "input_mask" and req.params[1] == party)  # only the owner
        for key, value in mat.data.items():
            if key == "owner_mask":
                if key in got.data:
                    assert torch.equal(got[key], value)
            elif isinstance(value, tuple):
                assert all(torch.equal(g, v[i : i + 1]) for g, v in zip(got[key], value))
            else:
                assert torch.equal(got[key], value[i : i + 1])
        assert set(got.data) == set(mat.data) - ({"owner_mask"} if "owner_mask" not in got.data else set())


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("req", FIXED, ids=lambda r: f"{r.kind}-{r.params[0] if r.kind == 'beaver' else r.params[-1]}")
def test_layout_matches_the_dealers_material(req, n):
    _check_layout(req, n)


@settings(max_examples=40, deadline=None)
@given(st.one_of(
    st.builds(lambda s, o: Request("input_mask", (s, o)), dims, st.sampled_from(PARTIES)),
    st.builds(lambda s, m: Request("trunc", (s, m)), dims, st.integers(0, 62)),
    beaver_requests().map(lambda r: Request("beaver", r.params[:4] + ((), ()), (None, None))),
    cmp_requests(),
), st.sampled_from([2, 3]))
def test_layout_matches_the_dealers_material_random(req, n):
    _check_layout(req, n)


def test_layout_of_a_product_with_a_reused_mask():
    dealer, parties = _dealer(2)
    mid = dealer._generate(Request("input_mask", ((4, 3), "bob"))).created[0]
    req = Request("beaver", ("linear", (), (5, 3), (4, 3), (), ()), (None, mid))
    mat = dealer._generate(req)
    layout = material_layout(req, 0, parties, 16)
    assert [s.key for s in layout.slots] == ["a", "c"] and layout.mask_keys == ("a",)
    assert material_from(layout, material_tensors(mat, layout, 0, 2)).created == mat.created


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


GOOD = {"kind": "trunc", "params": [[2, 3], 16], "refs": []}


@pytest.mark.parametrize("data, match", [
    (b"\xff\xfe", "not canonical JSON"),
    (b"[1,2]", "expected exactly the keys"),
    (_json({**GOOD, "extra": 1}), "expected exactly the keys"),
    (b'{"kind":"trunc","kind":"trunc","params":[[2,3],16],"refs":[]}', "duplicate keys"),
    (b'{"kind": "trunc", "params": [[2, 3], 16], "refs": []}', "canonical form"),
    (b'{"params":[[2,3],16],"kind":"trunc","refs":[]}', "canonical form"),
    (_json({**GOOD, "kind": "exec"}), "kind"),
    (_json({**GOOD, "kind": "__import__"}), "kind"),
    (_json({**GOOD, "params": [[2, 3], 16.0]}), "floats"),
    (b'{"kind":"trunc","params":[[2,3],NaN],"refs":[]}', "not allowed"),
    (_json({**GOOD, "params": [[2, 3], True]}), "trunc bits"),
    (_json({**GOOD, "params": [[2, -3], 16]}), "trunc shape"),
    (_json({**GOOD, "params": [[2, 3], 63]}), "trunc bits"),
    (_json({**GOOD, "params": [[1 << 20, 1 << 20], 16]}), "more than the limit"),
    (_json({**GOOD, "params": [[1] * 17, 16]}), "at most 16 dims"),
    (_json({**GOOD, "params": [{"a": 1}, 16]}), "expected a list"),
    (_json({**GOOD, "refs": [1]}), "refs"),
    (_json({**GOOD, "params": "x"}), "params and refs must be lists"),
    (_json({"kind": "input_mask", "params": [[2], "mallory"], "refs": []}), "owner"),
    (_json({"kind": "beaver", "params": ["pow", [], [2], [2], [], []], "refs": [None, None]}), "beaver op"),
    (_json({"kind": "beaver", "params": ["mul", [["x", 1]], [2], [2], [], []], "refs": [None, None]}), "no keyword"),
    (_json({"kind": "beaver", "params": ["conv2d", [["bias", [1, 1]]], [1, 1, 3, 3], [1, 1, 1, 1], [], []],
            "refs": [None, None]}), "name"),
    (_json({"kind": "beaver", "params": ["conv2d", [["stride", [0, 1]]], [1, 1, 3, 3], [1, 1, 1, 1], [], []],
            "refs": [None, None]}), "stride"),
    (_json({"kind": "beaver", "params": ["matmul", [], [2, 3], [4, 5], [], []], "refs": [None, None]}), "do not combine"),
    (_json({"kind": "beaver", "params": ["mul", [], [2], [2], [["reshape", [2]]], []], "refs": [None, None]}),
     "cannot carry a transform"),
    (_json({"kind": "beaver", "params": ["mul", [], [2], [2], [["eval", [2]]], []], "refs": [0, None]}), "name"),
    (_json({"kind": "beaver", "params": ["mul", [], [2], [2], [["permute", [0, 0]]], []], "refs": [0, None]}),
     "not a permutation"),
    (_json({"kind": "beaver", "params": ["mul", [], [2], [2], [], []], "refs": [-1, None]}), "refs"),
    (_json({"kind": "cmp", "params": [[2, 3], "mask", 0, [[0, 3]], "argmax"], "refs": []}), "pairs"),
    (_json({"kind": "cmp", "params": [[2, 3], "trunc", 0, None, "relu"], "refs": []}), "cmp bits"),
    (_json({"kind": "cmp", "params": [[], "mask", 0, None, "argmax"], "refs": []}), "scalar"),
    (_json({"kind": "cmp", "params": [[3], "mask", 0, None, "sort"], "refs": []}), "cmp use"),
])
def test_malformed_requests_are_rejected(data, match):
    with pytest.raises(WireError, match=match):
        decode_request(data, PARTIES)


def test_encoding_refuses_what_json_cannot_carry_exactly():
    with pytest.raises(WireError, match="cannot go on the wire|trunc bits"):
        encode_request(Request("trunc", ((2,), 1.5)))
    with pytest.raises(WireError, match="more than the limit"):
        encode_request(Request("input_mask", ((MAX_NUMEL, 2), "alice")))
    with pytest.raises(WireError, match="do not combine"):
        material_layout(Request("beaver", ("linear", (), (2, 3), (2, 4), (), ()), (None, None)), 0, PARTIES, 32)
