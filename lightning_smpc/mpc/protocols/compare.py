"""Comparisons: sign bit, ReLU, argmax/max — dealer-assisted, constant rounds.

Setting. A value ``y`` with ``|y| < 2^j`` (``j = compare_bits``) is known to the parties in *opened
form* ``y = pub + off (mod 2^(j+1))``: ``pub`` public, ``off`` known only to the dealer (for a mask-open,
``pub = y + r`` and ``off = -r``; fused with truncation, ``pub`` comes from the truncation's opening and
``off = -(r mod 2^63 >> m)``). ``y >= 0`` iff bit ``j`` of ``Q + off`` is 1 with ``Q = pub + 2^j``, which is
``Q_j xor off_j xor carry`` where ``carry`` is the carry out of adding the low ``j`` bits.

Carry. Split the low bits into ``d``-bit digits ``q_i`` (public) and ``s_i`` (dealer); ``d =
compare_digit_bits``, 4 (default) or 8. The dealer sends XOR-shares of the ``2^d``-bit table ``G_i[u] = [u >
t_i]`` with ``t_i = 2^d - 1 - s_i``; locally, ``g_i = G_i[q_i]`` (digit sum >= 2^d: generate) and ``p_i =
G_i[q_i + 1] xor G_i[q_i] = [q_i == t_i]`` (digit sum is 2^d - 1: propagate), with ``G_i[2^d] = 1``. A
carry-lookahead tree combines ``(g, p)`` pairs with XOR-shared Beaver ANDs: one round per level,
``L = ceil(log2(j/d))`` levels (3 for the default ``j = 32, d = 4``; 2 with ``d = 8``).

Digit size, the trade-off (``j = 32``, per compared element): ``d = 8``: a 256-bit table per digit, 4
digits, 4 ANDs in 2 levels; the first party receives 128 bytes of tables. ``d = 4``: a 16-bit table per
digit, 8 digits, 11 ANDs in 3 levels; 16 bytes of tables (8x fewer), one more round and 14 more bits sent
online per element (ReLU: 87 instead of 73 bits to each other party).

Costs (online, ``N`` compared elements, ``L`` tree levels, ``n`` parties; bytes sent per party):
``compare_bit``/``relu``: ``2 + L`` rounds (mask-open or truncation-open, L tree levels, one daBit
opening that turns the bit arithmetic *and* multiplies it into ``y`` locally); ``argmax`` over ``C``
classes: ``3 + L`` rounds (the pairwise comparisons run in parallel, then one one-time-table lookup).

Security (semi-honest, dealer not colluding with any party): every opened value is masked by fresh
uniform dealer randomness (``y + r``; ``e xor a``; ``s xor rho``; ``(count + sigma) mod M``), so each
party's view is independent of the data.

Correctness: exact for ``|y| < 2^j``; ties in argmax go to the first index (as ``torch.argmax``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import itertools

import torch

from ..kinds import Cmp
from ..material import DIGIT_BITS
from ._cost import nbytes, protocol, tree_pairs
from .truncation import HALF, trunc_from_opened

if TYPE_CHECKING:
    from ..runtime import PartyContext


# ---------------------------------------------------------------------------------------------- helpers
def _gen_prop(table: torch.Tensor, q: torch.Tensor, first: bool, digit_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """XOR shares of ``g = G[q]`` and ``p = G[q + 1] xor G[q]`` from each party's table share (``G[2^d] = 1`` is
    public). 8-bit digits: 256-bit tables as 4 int64 words; one gather: ``G[q + 1]`` sits in the same word
    unless ``q mod 64 = 63``, and those few elements are fetched separately. 4-bit digits: one 16-bit word per
    party, widened to 32 bits with the public ``G[16] = 1`` as bit 16 of the first party's word, so one shift reads
    both bits."""
    if digit_bits == 4:
        word = table.to(torch.int32) & 0xFFFF  # int16 storage: drop the sign extension
        if first:
            word[0] |= 1 << 16
        two = ((word >> q.to(torch.int32)) & 3).to(torch.uint8)
        gen = two & 1
        return gen, (two >> 1) ^ gen
    top = (q == (1 << digit_bits) - 1).to(torch.uint8)
    if digit_bits == 8:
        word_idx, bit = q >> 6, q & 63
        word = torch.gather(table, -1, word_idx.unsqueeze(-1).expand(table.shape[:-1] + (1,))).squeeze(-1)
    else:
        word, bit = table.to(torch.int64), q
    two = ((word >> bit) & 3).to(torch.uint8)  # bits q and q + 1 of the word in one pass
    gen, nxt = two & 1, two >> 1
    if digit_bits == 8:
        edge = (bit == 63) & (q != 255)  # bit q + 1 is bit 0 of the next word
        if bool(edge.any()):
            idx = edge.nonzero(as_tuple=True)
            nxt[(slice(None),) + idx] = (table[(slice(None),) + idx + (word_idx[idx] + 1,)] & 1).to(torch.uint8)
    nxt = nxt * (1 - top)  # bit 2^d of the word is not the table's: G[2^d] = 1, added by the first party
    if first:
        nxt[0] |= top
    return gen, nxt ^ gen


def _and(sess: PartyContext, x: torch.Tensor, y: torch.Tensor, triple, tag: str) -> torch.Tensor:
    """XOR-shared AND with a dealer bit triple (one round, 2 bits per AND to each other party)."""
    a, b, c = triple
    e, f = sess.comm.open([(x ^ a, "xor", 1), (y ^ b, "xor", 1)], tag=tag)
    z = c ^ (e & b) ^ (f & a)
    if sess.holds_first:
        z[0] ^= e & f
    return z


def _b2a(sess: PartyContext, bit: torch.Tensor, mat, tag: str) -> torch.Tensor:
    """Open ``e = bit xor rho`` (1 bit); return e (public int64). Arithmetic bit = e + rho - 2 e rho."""
    (e,) = sess.comm.open([(bit ^ mat.rho_x, "xor", 1)], tag=tag)
    return e.to(torch.int64)


def _open_value(sess: PartyContext, shares: torch.Tensor, mat, m: int | None, tag: str):
    """First round: open the masked value. Returns (y shares, pub, coef) with y = pub + dealer offset."""
    if m:
        masked = shares + mat.r
        if sess.holds_first:
            masked[0] += HALF
        (c,) = sess.comm.open([(masked, "arith", 64)], tag=tag)
        return trunc_from_opened(c, mat, m, sess.holds_first)
    (c,) = sess.comm.open([(shares + mat.r, "arith", 64)], tag=tag)
    return shares, c, None


def sign_bits(sess: PartyContext, q: torch.Tensor, mat, tag: str, per_element: bool = False) -> torch.Tensor:
    """XOR-shares of bit ``j`` of ``q + off`` (``q = pub + 2^j`` public, ``off`` as the dealer prepared).
    ``per_element``: ``q`` has one more (last) dim than the offsets (thresholds): the tables are read for each."""
    j, d = sess.compare_bits, sess.compare_digit_bits
    n_digits = j // d
    shifts = torch.arange(n_digits, device=q.device) * d
    digits = (q.unsqueeze(-1) >> shifts) & ((1 << d) - 1)  # [*, D]
    table, rj = mat.gt_table, mat.rj
    if per_element:
        extra = 0 if d == 4 else 1  # 8-bit tables carry a trailing dim of words
        table = table.unsqueeze(-2 - extra)
        table = table.expand(table.shape[:-2 - extra] + (q.shape[-1],) + table.shape[-1 - extra:])
        rj = rj.unsqueeze(-1)
    gen, prop = _gen_prop(table, digits, sess.holds_first, d)
    level = 0
    while gen.shape[-1] > 1:
        width = gen.shape[-1]
        k = width // 2
        g_lo, g_hi = gen[..., 0 : 2 * k : 2], gen[..., 1 : 2 * k : 2]
        p_lo, p_hi = prop[..., 0 : 2 * k : 2], prop[..., 1 : 2 * k : 2]
        # G of every pair; P of every pair but the lowest (nothing below digit 0 ever asks for its P)
        z = _and(sess, torch.cat([p_hi, p_hi[..., 1:]], -1), torch.cat([g_lo, p_lo[..., 1:]], -1), mat[f"and{level}"], tag)
        new_g, new_p = g_hi ^ z[..., :k], torch.cat([torch.zeros_like(z[..., :1]), z[..., k:]], -1)
        if width % 2:
            new_g = torch.cat([new_g, gen[..., -1:]], -1)
            new_p = torch.cat([new_p, prop[..., -1:]], -1)
        gen, prop, level = new_g, new_p, level + 1
    s = gen[..., 0] ^ rj
    if sess.holds_first:
        s[0] ^= ((q >> j) & 1).to(torch.uint8)
    return s


def _tree_bytes(numel: int, j: int, d: int) -> int:
    """Bytes of the carry tree's openings for ``numel`` comparisons: 2 bits per AND, ``2k - 1`` ANDs per level
    that combines ``k`` pairs of digits."""
    return sum(2 * nbytes(numel * (2 * k - 1), 1) for k in tree_pairs(j // d))


def _cmp_rounds(n: int, j: int = 32, d: int = DIGIT_BITS, **sizes) -> int:
    """Opening, one round per carry-tree level (``ceil(log2(j / d))``), the daBit opening."""
    return 2 + len(tree_pairs(j // d))


def _cmp_bytes_sent(n: int, numel: int, j: int = 32, d: int = DIGIT_BITS, **sizes) -> int:
    """Bytes each party sends for one comparison of ``numel`` values (compare_bit and relu alike): the opening
    (64 bits), the carry tree, the daBit (1 bit)."""
    return (n - 1) * (nbytes(numel, 64) + _tree_bytes(numel, j, d) + nbytes(numel, 1))


def _arith_bit(sess: PartyContext, e: torch.Tensor, mat) -> torch.Tensor:
    """Arithmetic shares of ``e xor rho`` from the opened ``e`` and the daBit: ``e + rho - 2 e rho``."""
    out = (1 - 2 * e) * mat.rho_a
    if sess.holds_first:
        out[0] += e
    return out


# ---------------------------------------------------------------------------------------------- protocols
@protocol(
    "compare_bit",
    rounds=_cmp_rounds,
    bytes_sent=_cmp_bytes_sent,
    offline="[r] (or truncation material), XOR greater-than digit tables, AND triples, daBit",
)
def compare_bit(sess: PartyContext, shares: torch.Tensor, m: int | None = None) -> torch.Tensor:
    """Arithmetic shares of ``[y >= 0]`` (scale 0), ``y`` the value or its truncation by ``m`` bits.

    Protocol and cost as :func:`relu` without the final product: 4 rounds, 73 bits per element to each
    other party at the default 32-bit range and 8-bit digits (5 rounds, 87 bits with 4-bit digits).
    """
    mat = sess.dealer.request(Cmp.request(tuple(shares.shape[1:]), "trunc" if m else "mask", m or 0, None, "bit"))
    _, pub, _ = _open_value(sess, shares, mat, m, "compare_bit")
    s = sign_bits(sess, pub + (1 << sess.compare_bits), mat, "compare_bit")
    return _arith_bit(sess, _b2a(sess, s, mat, "compare_bit"), mat)


def _thresholds_bytes_sent(n: int, numel: int, m: int, j: int = 32, d: int = DIGIT_BITS, **sizes) -> int:
    """One opening per element (64 bits), then a carry tree and a daBit per comparison (``m`` per element)."""
    return (n - 1) * (nbytes(numel, 64) + _tree_bytes(numel * m, j, d) + nbytes(numel * m, 1))


@protocol(
    "compare_thresholds",
    rounds=_cmp_rounds,
    bytes_sent=_thresholds_bytes_sent,
    offline="[r] and the digit tables once per element; AND triples and a daBit per comparison",
)
def compare_thresholds(sess: PartyContext, shares: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Arithmetic shares (scale 0) ``[P, *S, M]`` of ``[y >= t_i]`` for every element ``y`` and the ``M`` public raw
    (encoded) ``thresholds``: the breaks of a piecewise function or the powers of two of a normalisation.

    Protocol: as :func:`compare_bit`, but ``y + r`` is opened ONCE per element and each ``y - t_i = (pub - t_i) +
    off`` is compared with the same dealer offset, so the digit tables too are per element; each comparison has
    its own carry tree (fresh AND triples) and daBit. Cost: ``2 + L`` rounds (as one comparison); per element, to
    each other party, 64 bits plus ``M`` times the tree's bits and 1 bit (``M = 5`` at 4-bit digits: 64 + 5 * 23
    bits instead of 5 * 87). Security: the parties see ``y + r`` (uniform) and, per comparison, values masked by
    fresh AND triples and a fresh daBit; the ``M`` public queries into one table reveal nothing (the lookups are
    local).
    Correctness: exact when every ``|y - t_i| < 2^j``.
    """
    m = int(thresholds.numel())
    mat = sess.dealer.request(Cmp.request(tuple(shares.shape[1:]), "mask", 0, m, "thresholds"))
    (c,) = sess.comm.open([(shares + mat.r, "arith", 64)], tag="compare_thresholds")
    q = c.unsqueeze(-1) - thresholds.to(c.device) + (1 << sess.compare_bits)
    s = sign_bits(sess, q, mat, "compare_thresholds", per_element=True)
    return _arith_bit(sess, _b2a(sess, s, mat, "compare_thresholds"), mat)


@protocol(
    "relu",
    rounds=_cmp_rounds,
    bytes_sent=_cmp_bytes_sent,
    offline="as compare_bit, plus [off * rho] products for the local final multiplication",
)
def relu(sess: PartyContext, shares: torch.Tensor, m: int | None = None) -> torch.Tensor:
    """Shares of ``max(y, 0)``; with ``m``, ``y`` is the truncation of the input by ``m`` bits (fused).

    Protocol: 1. open ``y + r`` (or the truncation's ``z + 2^62 + r``); 2. carry tree for the sign bit
    ``s`` (L rounds); 3. open ``e = s xor rho`` and compute ``y * s = e y + (1 - 2e)(y rho)`` locally, where
    ``y rho = pub rho + off rho`` uses the dealer's product ``[off * rho]``.
    Cost: ``2 + L`` rounds (4 at the default 32-bit range); per element, to each other party, 64 bits
    (opening) + 8 bits (carry tree: 3 ANDs then 1 AND, 2 opened bits each) + 1 bit (daBit) = 73 bits.
    With 4-bit digits: 5 rounds, and the tree takes 7 + 3 + 1 ANDs (22 bits): 87 bits.
    """
    mode = "trunc" if m else "mask"
    mat = sess.dealer.request(Cmp.request(tuple(shares.shape[1:]), mode, m or 0, None, "relu"))
    y, pub, coef = _open_value(sess, shares, mat, m, "relu")
    s = sign_bits(sess, pub + (1 << sess.compare_bits), mat, "relu")
    e = _b2a(sess, s, mat, "relu")
    if m:
        y_rho = pub * mat.rho_a - mat.u_rho + coef * mat.r63_rho
    else:
        y_rho = pub * mat.rho_a - mat.r_rho
    return e * y + (1 - 2 * e) * y_rho


def _pairs(n_cls: int) -> tuple[tuple[int, int], ...]:
    return tuple(itertools.combinations(range(n_cls), 2))


@protocol(
    "argmax",
    rounds=lambda n, j=32, d=DIGIT_BITS, **s: 1 + _cmp_rounds(n, j, d),
    bytes_sent=lambda n, numel, n_cls, j=32, d=DIGIT_BITS, **s: (n - 1)
    * (
        nbytes(numel, 64)
        + _tree_bytes(numel // n_cls * (n_cls * (n_cls - 1) // 2), j, d)
        + nbytes(numel // n_cls * (n_cls * (n_cls - 1) // 2), 1)
        + nbytes(numel, max(1, (n_cls - 1).bit_length()))
    ),
    offline="as compare_bit for the C(C-1)/2 pairs, plus one-time equality tables (M entries per class)",
)
def argmax_onehot(sess: PartyContext, shares: torch.Tensor, m: int | None = None, want_max: bool = False):
    """One-hot shares (scale 0) of the argmax over the last dim, and optionally shares of the max.

    Protocol: 1. open every element masked (or truncation-opened); 2. all ``C(C-1)/2`` pairwise
    ``[y_a >= y_b]`` in parallel (L rounds) and their daBit conversion (1 round); 3. ``count_a`` = number of
    wins of class ``a``; the first maximum wins all ``C - 1``; open ``(count + sigma) mod M`` (``M`` = next
    power of two >= C) and look up the dealer's one-time table ``T[v] = [v - sigma == C - 1]``; the max is
    ``sum_a T_a[v_a] y_a``, local with the dealer's ``[off * T]`` tables.
    Cost: ``3 + L`` rounds (5 at the default range) for any C; per row, to each other party,
    ``64 C + 9 C(C-1)/2 + C log2(M)`` bits (1085 bits = 136 bytes for C = 10); with 4-bit digits 6 rounds and
    ``23`` bits per pair instead of 9 (1715 bits for C = 10).
    """
    shape = tuple(shares.shape[1:])
    n_cls = shape[-1]
    pairs = _pairs(n_cls)
    mode = "trunc" if m else "mask"
    mat = sess.dealer.request(Cmp.request(shape, mode, m or 0, pairs, "argmax"))
    y, pub, coef = _open_value(sess, shares, mat, m, "argmax")
    idx_a = torch.tensor([a for a, _ in pairs], dtype=torch.long, device=pub.device)
    idx_b = torch.tensor([b for _, b in pairs], dtype=torch.long, device=pub.device)
    q = pub[..., idx_a] - pub[..., idx_b] + (1 << sess.compare_bits)
    s = sign_bits(sess, q, mat, "argmax")
    wins = _arith_bit(sess, _b2a(sess, s, mat, "argmax"), mat)  # arithmetic [y_a >= y_b]
    losses = -wins
    if sess.holds_first:
        losses[0] += 1
    count = torch.zeros(shares.shape, dtype=torch.int64, device=shares.device)
    count.index_add_(-1, idx_a, wins)
    count.index_add_(-1, idx_b, losses)
    mod_bits = max(1, (n_cls - 1).bit_length())
    (v,) = sess.comm.open([(count + mat.sigma, "arith", mod_bits)], tag="argmax")
    gather_idx = v.unsqueeze(-1).unsqueeze(0).expand((shares.shape[0],) + v.shape + (1,))
    onehot = torch.gather(mat.T, -1, gather_idx).squeeze(-1)
    if not want_max:
        return onehot, None
    if m:
        prod = pub * onehot - torch.gather(mat.uT, -1, gather_idx).squeeze(-1) + coef * torch.gather(mat.r63T, -1, gather_idx).squeeze(-1)
    else:
        prod = pub * onehot - torch.gather(mat.rT, -1, gather_idx).squeeze(-1)
    return onehot, prod.sum(-1)
