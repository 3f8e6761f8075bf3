"""Wire format between processes: dealer requests as canonical JSON (round trip, strict rejection) and material
whose layout every party derives from the request alone (checked against what the dealer really generates):
parties 1..n-1 receive the mask ids and a 16-byte seed only and expand exactly the dealer's tensors from it; the
first party expands the uniform shares and receives the corrections."""
from __future__ import annotations

import functools
import itertools
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_smpc.mpc import RingConfig
from lightning_smpc.mpc.comm import Communicator
from lightning_smpc.mpc.dealer import Request, TrustedDealer
from lightning_smpc.mpc.prg import make_prg
from lightning_smpc.mpc.kinds import KINDS
from lightning_smpc.mpc.wire import (
    MAX_NUMEL, WIRE_VERSION, WireError, decode_request, encode_request, material_from, material_layout, material_tensors,
)

DIGITS = pytest.mark.parametrize("cb, d", [(16, 8), (20, 4)], ids=["digits8", "digits4"])
UNIFORM = {("a", None), ("b", None), ("r", None), ("rho_x", None)} | {(f"and{k}", i) for k in range(4) for i in (0, 1)}

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
    use = draw(st.sampled_from(["bit", "relu", "argmax", "thresholds"]))
    if use == "thresholds":  # one opening per element against several thresholds (mask mode only)
        return Request("cmp", (draw(dims), "mask", 0, draw(st.integers(1, 40)), use))
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


def _ring(compare_bits=16, digit_bits=8):
    """The dealer's material does not depend on precision_bits (8 here, so that compare_bits=16 is valid)."""
    return RingConfig(precision_bits=8, compare_bits=compare_bits, digit_bits=digit_bits)


def _dealer(n=3, compare_bits=16, digit_bits=8):
    parties = PARTIES[:n]
    return TrustedDealer("dealer", parties, make_prg(0), Communicator(parties), _ring(compare_bits, digit_bits),
                         "cpu"), parties


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
     for mode in ("mask", "trunc") for use in ("bit", "relu", "argmax")] + [
    Request("cmp", ((2, 5), "mask", 0, 7, "thresholds")), Request("cmp", ((), "mask", 0, 1, "thresholds"))]


def _check_layout(req, n, cb=16, d=8):
    """Each party's derived layout is exactly its slice of what the dealer generates, and the material a party
    rebuilds from its message (expanding its seed) equals the dealer's, tensor for tensor."""
    dealer, parties = _dealer(n, compare_bits=cb, digit_bits=d)
    if req.kind == "input_mask" and req.params[1] not in parties:
        req = Request("input_mask", (req.params[0], parties[-1]))
    mat = dealer._generate(req)
    assert len(set(mat.seeds)) == n and all(len(x) == 16 for x in mat.seeds)
    for i, party in enumerate(parties):
        layout = material_layout(req, i, parties, _ring(cb, d))
        tensors = material_tensors(mat, layout, i, n)  # raises on any mismatch with the generated material
        assert [(tuple(t.shape), t.dtype) for t in tensors] == layout.specs()
        assert sum(t.numel() * t.element_size() for t in tensors) == layout.nbytes
        assert bytes(tensors[1].tolist()) == mat.seeds[i]
        owner = req.kind == "input_mask" and req.params[1] == party
        if i > 0:  # the mask ids, the seed (and the owner's copy of every party's seed of its mask): nothing else
            assert len(tensors) == 2 + owner and layout.nbytes == 8 * len(mat.created) + 16 * (1 + owner * n)
        else:  # the first party expands the uniform shares and receives every correlated one
            assert {(s.key, s.index) for s in layout.slots if s.seeded} == {(s.key, s.index) for s in layout.slots} & UNIFORM
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


@DIGITS
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("req", FIXED, ids=lambda r: f"{r.kind}-{r.params[0] if r.kind == 'beaver' else r.params[-1]}")
def test_layout_matches_the_dealers_material(req, n, cb, d):
    _check_layout(req, n, cb, d)


@settings(max_examples=40, deadline=None)
@given(st.one_of(
    st.builds(lambda s, o: Request("input_mask", (s, o)), dims, st.sampled_from(PARTIES)),
    st.builds(lambda s, m: Request("trunc", (s, m)), dims, st.integers(0, 62)),
    beaver_requests().map(lambda r: Request("beaver", r.params[:4] + ((), ()), (None, None))),
    cmp_requests(),
), st.sampled_from([2, 3]), st.sampled_from([(16, 8), (20, 4)]))
def test_layout_matches_the_dealers_material_random(req, n, cbd):
    _check_layout(req, n, *cbd)


@DIGITS
@pytest.mark.parametrize("n", [2, 3])
def test_material_reconstructs_the_dealers_correlations(n, cb, d):
    """The shares (seeded rows plus the first party's corrections) reconstruct what each protocol relies on:
    c = a * b; u = (r mod 2^63) >> m and r_63 (the latter modulo 2^(m+1): it is only used times 2^(63-m), and
    travels as a narrow type); the AND triples; the daBit's two sharings; the comparison tables of the offset."""
    dealer, parties = _dealer(n, cb, d)
    xor = lambda t: functools.reduce(torch.bitwise_xor, list(t))  # noqa: E731
    tri = dealer._generate(Request("beaver", ("mul", (), (6, 5), (6, 5), (), ()), (None, None)))
    assert torch.equal(tri["a"].sum(0) * tri["b"].sum(0), tri["c"].sum(0))
    m = 16
    mat = dealer._generate(Request("cmp", ((40, 7), "trunc", m, None, "relu")))
    r, u, r63 = mat["r"].sum(0), mat["u"].sum(0), mat["r63"].sum(0)
    assert torch.equal(u, (r & ((1 << 63) - 1)) >> m)
    assert torch.equal(r63 & ((1 << (m + 1)) - 1), (r >> 63) & 1)
    assert torch.equal((r63 << (63 - m)), ((r >> 63) & 1) << (63 - m))  # all the protocol uses
    w0 = material_layout(Request("cmp", ((40, 7), "trunc", m, None, "relu")), 0, parties, _ring(cb, d))
    assert {s.key: s.wire_spec()[1] for s in w0.wire_slots()}["r63"] == torch.int32
    for level in range(3 if d == 4 else 1):
        a, b, c = (xor(t) for t in mat[f"and{level}"])
        assert torch.equal(a & b, c)
    rho = xor(mat["rho_x"]).to(torch.int64)
    assert torch.equal(mat["rho_a"].sum(0), rho)
    assert torch.equal(mat["u_rho"].sum(0), u * rho)
    # digit i of the table row: bit q of G_i is [q > 2^d - 1 - digit_i(-u mod 2^j)]
    table = xor(mat["gt_table"])
    off = -u
    for i in range(cb // d):
        digit = (off >> (d * i)) & ((1 << d) - 1)
        for q in (0, (1 << d) - 1, 5):
            if d == 8:
                bit = (table[..., i, q >> 6] >> (q & 63)) & 1
            else:
                bit = (table[..., i].to(torch.int64) >> q) & 1
            assert torch.equal(bit, (q > (1 << d) - 1 - digit).to(torch.int64))


def test_seeds_are_fresh_per_request_and_party():
    dealer, parties = _dealer(3)
    seen = []
    for _ in range(50):
        seen += dealer._generate(Request("trunc", ((2,), 8))).seeds
    assert len(set(seen)) == len(seen) == 150


@DIGITS
def test_offline_accounting_is_the_bytes_of_the_messages(cb, d):
    """What the dealer counts per party is exactly the size of the message it would send it."""
    dealer, parties = _dealer(3, cb, d)
    reqs = FIXED + [Request("input_mask", ((4, 5), "alice"))]
    for req in reqs:
        dealer._generate(req)
    got = {p: v["bytes_received"] for p, v in dealer.comm.stats(offline=True).items() if p in parties}
    ring = _ring(cb, d)
    want = {p: sum(material_layout(req, i, parties, ring).nbytes for req in reqs) for i, p in enumerate(parties)}
    assert got == want
    assert got["bob"] == got["carol"] + 3 * 16  # bob owns an input: every party's seed of its mask
    assert got["carol"] < 32 * len(reqs) < got["alice"]


def test_digit_size_shrinks_the_first_partys_tables():
    """4-bit digits: 16-bit tables (one int16 per digit), twice the digits: 8x fewer table bytes."""
    req = Request("cmp", ((10, 100), "trunc", 16, None, "relu"))
    tables = {}
    for d in (8, 4):
        lay = material_layout(req, 0, PARTIES, RingConfig(digit_bits=d))
        (gt,) = [s for s in lay.slots if s.key == "gt_table"]
        tables[d] = gt
    assert tables[8].shape == (1, 10, 100, 4, 4) and tables[8].dtype == torch.int64
    assert tables[4].shape == (1, 10, 100, 8) and tables[4].dtype == torch.int16
    with pytest.raises(ValueError, match="digit size in \\(4, 8\\) dividing compare_bits=20"):
        RingConfig(compare_bits=20, digit_bits=8)  # the ring a layout takes is valid by construction
    with pytest.raises(ValueError, match="digit size"):
        RingConfig(digit_bits=2)


def test_layout_of_a_product_with_a_reused_mask():
    dealer, parties = _dealer(2)
    mid = dealer._generate(Request("input_mask", ((4, 3), "bob"))).created[0]
    req = Request("beaver", ("linear", (), (5, 3), (4, 3), (), ()), (None, mid))
    mat = dealer._generate(req)
    layout = material_layout(req, 0, parties, _ring())
    assert [s.key for s in layout.slots] == ["a", "c"] and layout.mask_keys == ("a",)
    assert material_from(layout, material_tensors(mat, layout, 0, 2)).created == mat.created


def _json(obj) -> bytes:
    """A request in the current wire format: a positional params list becomes the kind's fields by name."""
    obj = dict(obj)
    if obj.get("kind") in KINDS and isinstance(obj.get("params"), list):
        obj["params"] = dict(zip(KINDS[obj["kind"]].field_names(), obj["params"]))
    obj.setdefault("v", WIRE_VERSION)
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


GOOD = {"kind": "trunc", "params": [[2, 3], 16], "refs": []}


@pytest.mark.parametrize("data, match", [
    (b"\xff\xfe", "not canonical JSON"),
    (b"[1,2]", "expected exactly the keys"),
    (_json({**GOOD, "extra": 1}), "expected exactly the keys"),
    (b'{"kind":"trunc","kind":"trunc","params":{"bits":16,"shape":[2,3]},"refs":[],"v":2}', "duplicate keys"),
    (b'{"kind": "trunc", "params": {"bits": 16, "shape": [2, 3]}, "refs": [], "v": 2}', "canonical form"),
    (b'{"params":{"bits":16,"shape":[2,3]},"kind":"trunc","refs":[],"v":2}', "canonical form"),
    (json.dumps({**GOOD, "v": 1}, sort_keys=True, separators=(",", ":")).encode(), "wire format version 1"),
    (_json({**GOOD, "v": 3}), "wire format version 3"),
    (_json({**GOOD, "params": {"shape": [2, 3]}}), "expected the fields"),
    (_json({**GOOD, "params": {"shape": [2, 3], "bits": 16, "extra": 0}}), "expected the fields"),
    (_json({**GOOD, "kind": "exec"}), "kind"),
    (_json({**GOOD, "kind": "__import__"}), "kind"),
    (_json({**GOOD, "params": [[2, 3], 16.0]}), "floats"),
    (b'{"kind":"trunc","params":{"bits":NaN,"shape":[2,3]},"refs":[],"v":2}', "not allowed"),
    (_json({**GOOD, "params": [[2, 3], True]}), "trunc bits"),
    (_json({**GOOD, "params": [[2, -3], 16]}), "trunc shape"),
    (_json({**GOOD, "params": [[2, 3], 63]}), "trunc bits"),
    (_json({**GOOD, "params": [[1 << 20, 1 << 20], 16]}), "more than the limit"),
    (_json({**GOOD, "params": [[1] * 17, 16]}), "at most 16 dims"),
    (_json({**GOOD, "params": [{"a": 1}, 16]}), "expected a list"),
    (_json({**GOOD, "refs": [1]}), "refs"),
    (_json({**GOOD, "params": "x"}), "params must be an object"),
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
    (_json({"kind": "cmp", "params": [[3], "trunc", 4, 2, "thresholds"], "refs": []}), "mask mode"),
    (_json({"kind": "cmp", "params": [[3], "mask", 0, 0, "thresholds"], "refs": []}), "cmp thresholds"),
    (_json({"kind": "cmp", "params": [[3], "mask", 0, 5000, "thresholds"], "refs": []}), "cmp thresholds"),
    (_json({"kind": "cmp", "params": [[3], "mask", 0, [[0, 1]], "thresholds"], "refs": []}), "cmp thresholds"),
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
        material_layout(Request("beaver", ("linear", (), (2, 3), (2, 4), (), ()), (None, None)), 0, PARTIES, RingConfig())


def test_products_with_a_reused_mask_stay_correct_batch_after_batch():
    """The dealer splits a reused right operand (a weight's mask) into limbs once and keeps it: each later triple
    is still ``c = a @ b`` for the operand as THIS request transforms it (linear: transposed; matmul: as is)."""
    dealer, parties = _dealer(2)
    mid = dealer._generate(Request("input_mask", ((4, 3), "bob"))).created[0]
    b = dealer._masks[mid]
    flip = (("permute", (1, 0)),)
    for op, shape_x, shape_y, tf, expect in (
            ("linear", (5, 3), (4, 3), (), lambda a: a @ b.T), ("matmul", (5, 4), (4, 3), (), lambda a: a @ b),
            ("matmul", (5, 3), (3, 4), flip, lambda a: a @ b.T), ("linear", (2, 4), (3, 4), flip, lambda a: a @ b)):
        for _ in range(2):
            mat = dealer._generate(Request("beaver", (op, (), shape_x, shape_y, (), tf), (None, mid)))
            a, c = mat["a"].sum(0), mat["c"].sum(0)
            assert torch.equal(c, expect(a)), op
