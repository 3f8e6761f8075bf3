"""``cmp``: comparison material (see :mod:`..protocols.compare`): the mask (or truncation) material, XOR-shared
greater-than tables of the digits (``digit_bits`` = 8: 256-bit tables; 4: 16-bit tables) of the comparison
offset, XOR-shared AND triples for the carry tree, a daBit (a random bit shared both XOR and arithmetically) and,
for ReLU/argmax, the products of the dealer-known offsets with that bit / with one-time equality tables.
``use="thresholds"``: one value against ``pairs`` public thresholds (the tables once per element)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ..errors import WireError
from ..material import Material, gt_table_spec
from ._schema import check_choice, check_int, check_numel, check_shape, check_tuple
from .base import MaterialKind, register
from .trunc import declare_trunc, trunc_parts

CMP_MODES = ("mask", "trunc")
CMP_USES = ("bit", "relu", "argmax", "thresholds")
MAX_THRESHOLDS = 4096  # comparisons of one value against public thresholds in one request


@dataclass(frozen=True)
class CmpParams:
    shape: tuple
    mode: str  # "mask": compare a masked value; "trunc": fused with a truncation of ``bits`` bits
    bits: int
    pairs: Optional[Any]  # argmax/relu: ((i, j), ...) pairs of the last dim; thresholds: their count; else None
    use: str


_GT_ROWS: dict = {}


def gt_rows(device, digit_bits: int) -> torch.Tensor:
    """Row ``t`` is the table ``G[u] = [u > t]`` (``u, t < 2^d``): for ``d = 8`` ``[256, 4]`` int64 (four 64-bit
    words), for ``d = 4`` ``[16]`` int16 (bit ``u`` of the word)."""
    key = (str(device), digit_bits)
    if key not in _GT_ROWS:
        if digit_bits == 8:
            t = torch.arange(256).unsqueeze(-1)
            lanes = torch.arange(4)
            above = -(torch.full_like(t, 2) << (t & 63))  # bits strictly above t within its word
            rows = torch.where(lanes == (t >> 6), above, -(lanes > (t >> 6)).to(torch.int64))
        else:
            t = torch.arange(1 << digit_bits)
            bits = (0xFFFF << (t + 1)) & 0xFFFF  # bits t+1..15
            rows = torch.where(bits >= 1 << 15, bits - (1 << 16), bits).to(torch.int16)
        _GT_ROWS[key] = rows.to(device)
    return _GT_ROWS[key]


def _shapes(p) -> tuple[tuple, tuple]:
    """(the shape of the tables: one per opened offset, the shape of the comparisons)."""
    shape = tuple(p.shape)
    if p.use == "thresholds":
        return shape, shape + (p.pairs,)
    cmp_shape = shape if p.pairs is None else shape[:-1] + (len(p.pairs),)
    return cmp_shape, cmp_shape


@register
class Cmp(MaterialKind):
    name = "cmp"
    Params = CmpParams

    @classmethod
    def validate(cls, p, refs, parties):
        shape, pairs = p.shape, p.pairs
        check_shape(shape, "cmp shape")
        check_choice(p.mode, CMP_MODES, "cmp mode")
        check_int(p.bits, "cmp bits", 1 if p.mode == "trunc" else 0, 62 if p.mode == "trunc" else 0)
        check_choice(p.use, CMP_USES, "cmp use")
        if p.use == "thresholds":  # ``pairs`` holds the number of thresholds each element is compared with
            if p.mode != "mask":
                raise WireError("cmp thresholds: only the mask mode (no fused truncation) is supported.")
            check_int(pairs, "cmp thresholds", 1, MAX_THRESHOLDS)
            check_numel(tuple(shape) + (pairs,), "cmp thresholds")
        elif (pairs is not None or p.use == "argmax") and not shape:
            raise WireError(f"cmp {p.use}: a scalar has no last dim to compare within.")
        elif pairs is not None:
            check_tuple(pairs, "cmp pairs")
            check_numel(tuple(shape[:-1]) + (len(pairs),), "cmp pairs")
            last = shape[-1]
            for i, pair in enumerate(pairs):
                a, b = check_tuple(pair, f"cmp pairs[{i}]", 2)
                check_int(a, f"cmp pairs[{i}]", 0, last - 1)
                check_int(b, f"cmp pairs[{i}]", 0, last - 1)

    @classmethod
    def layout(cls, p, fresh, b):
        shape, u8 = tuple(p.shape), torch.uint8
        if p.mode == "trunc":
            declare_trunc(b, shape, p.bits)
        else:
            b.share("r", shape, uniform=True)
        # the tables follow the opened offsets (one per element; per pair for argmax); the carry tree's AND triples
        # and the daBits follow the comparisons (several per element against thresholds)
        table_shape, cmp_shape = _shapes(p)
        n_digits = b.ring.compare_bits // b.ring.digit_bits
        words, table_dtype = gt_table_spec(b.ring.digit_bits)
        b.share("gt_table", table_shape + (n_digits,) + words, table_dtype)
        b.share("rj", table_shape, u8)
        width, level = n_digits, 0
        while width > 1:
            npairs = width // 2
            for k in range(3):
                b.share(f"and{level}", cmp_shape + (2 * npairs - 1,), u8, k, uniform=k < 2)
            width, level = width - npairs, level + 1
        b.share("rho_x", cmp_shape, u8, uniform=True)
        b.share("rho_a", cmp_shape)
        if p.use == "relu":
            try:
                out = tuple(torch.broadcast_shapes(shape, cmp_shape))
            except RuntimeError as e:
                raise WireError(f"cmp relu: shapes {shape} and {cmp_shape} do not combine ({e}).") from None
            if p.mode == "trunc":
                b.share("u_rho", out)
                b.share("r63_rho", out, mod_bits=p.bits + 1)
            else:
                b.share("r_rho", out)
        elif p.use == "argmax":
            mod = 1 << max(1, (shape[-1] - 1).bit_length())
            b.share("sigma", shape, mod_bits=mod.bit_length() - 1)  # opened modulo M only
            b.share("T", shape + (mod,))
            if p.mode == "trunc":
                b.share("uT", shape + (mod,))
                b.share("r63T", shape + (mod,), mod_bits=p.bits + 1)
            else:
                b.share("rT", shape + (mod,))
        return b.build()

    @classmethod
    def generate(cls, dealer, p, refs, sh):
        j, d = dealer.ring.compare_bits, dealer.ring.digit_bits
        data: dict[str, Any] = {}
        if p.mode == "trunc":
            r, u, r63 = trunc_parts(sh, data, p.bits)
            offset = -u  # value = public + offset (mod 2^(j+1))
        else:
            data["r"], r = sh.uniform("r")
            u = r63 = None
            offset = -r
        if p.pairs is None or p.use == "thresholds":  # thresholds share the element's offset (and so its tables)
            cmp_off = offset
        else:
            cmp_off = offset[..., [a for a, _ in p.pairs]] - offset[..., [b for _, b in p.pairs]]
        # "greater-than" table of t_i = 2^d - 1 - digit_i(offset mod 2^j): bit u of G_i is [u > t_i]
        # (2^d bits per digit); generate = G[q], propagate = G[q + 1] xor G[q]
        n_digits = j // d
        shifts = torch.arange(n_digits, device=dealer.device) * d
        top = (1 << d) - 1
        t = top - ((cmp_off.unsqueeze(-1) >> shifts) & top)  # [*, D]
        data["gt_table"] = sh.xor("gt_table", gt_rows(dealer.device, d)[t])
        data["rj"] = sh.xor("rj", ((cmp_off >> j) & 1).to(torch.uint8))
        # AND triples of the carry tree, one per level: a, b uniform (seeded), c = a & b
        width, level = n_digits, 0
        while width > 1:
            key = f"and{level}"
            (a_sh, a), (b_sh, b) = sh.uniform(key, 0, xor=True), sh.uniform(key, 1, xor=True)
            data[key] = (a_sh, b_sh, sh.xor(key, a & b, 2))
            width, level = width - width // 2, level + 1
        # daBit for the B2A step: rho is the XOR of the seeded rho_x shares
        data["rho_x"], rho = sh.uniform("rho_x", xor=True)
        rho64 = rho.to(torch.int64)
        data["rho_a"] = sh.arith("rho_a", rho64)
        if p.use == "relu":
            if p.mode == "trunc":
                data["u_rho"] = sh.arith("u_rho", u * rho64)
                data["r63_rho"] = sh.arith("r63_rho", r63 * rho64)
            else:
                data["r_rho"] = sh.arith("r_rho", r * rho64)
        elif p.use == "argmax":
            _argmax_tables(dealer, sh, data, p, r, u, r63)
        return Material(data), {}

    @classmethod
    def example(cls, parties: Sequence[str]):
        return cls.request((3, 5), "trunc", 16, None, "relu")


def _argmax_tables(dealer, sh, data, p, r, u, r63) -> None:
    """One-time equality tables T[v] = [(v - sigma) mod M == C - 1] and their products with the offsets."""
    shape = tuple(p.shape)
    n_cls = shape[-1]
    mod = 1 << max(1, (n_cls - 1).bit_length())
    sigma = dealer.prg.uniform_mod(shape, mod.bit_length() - 1, dealer.device)
    v = torch.arange(mod, device=dealer.device)
    table = (((v - sigma.unsqueeze(-1)) % mod) == n_cls - 1).to(torch.int64)
    data["sigma"] = sh.arith("sigma", sigma)
    data["T"] = sh.arith("T", table)
    if p.mode == "trunc":
        data["uT"] = sh.arith("uT", u.unsqueeze(-1) * table)
        data["r63T"] = sh.arith("r63T", r63.unsqueeze(-1) * table)
    else:
        data["rT"] = sh.arith("rT", r.unsqueeze(-1) * table)
