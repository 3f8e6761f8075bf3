"""The PRGs: AES-256-CTR keystream, seeded test generator, output formats, no use of torch/numpy global RNGs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from lightning_smpc.mpc.prg import CSPRNG, SeededTestPRG, make_prg

pytestmark = pytest.mark.usefixtures("torch_single_thread")

KEY = bytes(range(32))


def test_keystream_is_aes256_ctr_with_zero_iv():
    """The first blocks equal AES-256_k(counter) for counter = 0, 1, 2, ... (big-endian 128-bit)."""
    ecb = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()
    counters = b"".join(i.to_bytes(16, "big") for i in range(4))
    expected = ecb.update(counters) + ecb.finalize()
    assert CSPRNG(KEY).random_bytes(64).tobytes() == expected


def test_stream_continues_across_calls():
    a, b = CSPRNG(KEY), CSPRNG(KEY)
    parts = np.concatenate([a.random_bytes(n) for n in (1, 7, 16, 33, 1000)])
    assert parts.tobytes() == b.random_bytes(1057).tobytes()
    assert a.bytes_generated == 1057


def test_fresh_keys_differ_and_are_secure():
    a, b = make_prg(None), make_prg(None)
    assert a.secure and isinstance(a, CSPRNG) and not isinstance(a, SeededTestPRG)
    assert a.random_bytes(32).tobytes() != b.random_bytes(32).tobytes()


def test_seeded_prg_is_deterministic_and_warns():
    with pytest.warns(UserWarning, match="SeededTestPRG"):
        a = SeededTestPRG(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b, c = make_prg(7), make_prg(8)
    assert not a.secure and isinstance(b, SeededTestPRG)
    ra, rb, rc = a.int64((100,)), b.int64((100,)), c.int64((100,))
    assert torch.equal(ra, rb)
    assert not torch.equal(ra, rc)


def test_output_formats():
    g = CSPRNG(KEY)
    t = g.int64((3, 5))
    assert t.dtype == torch.int64 and t.shape == (3, 5)
    bits = g.bits((1001,))
    assert bits.dtype == torch.uint8 and bits.shape == (1001,) and set(bits.unique().tolist()) <= {0, 1}
    u = g.uniform_mod((10_000,), 5)
    assert u.min().item() >= 0 and u.max().item() < 32
    assert len(u.unique()) == 32
    assert g.int64((0,)).shape == (0,)
    assert g.int64(()).shape == ()


def test_int64_bits_are_balanced():
    """Every bit position of 2^16 int64 samples is 1 with frequency 1/2 +- 5 sigma (sigma = 1/(2 sqrt(N)))."""
    n = 1 << 16
    t = CSPRNG(KEY).int64((n,))
    ones = torch.stack([((t >> k) & 1).sum() for k in range(64)]).double() / n
    assert (ones - 0.5).abs().max().item() < 5 * 0.5 / n**0.5


def test_byte_histogram_chi_square():
    """Chi-square of 2^20 bytes over 256 bins (255 dof: mean 255, sd 22.6); 400 is ~6.5 sd above the mean."""
    counts = np.bincount(CSPRNG(KEY).random_bytes(1 << 20), minlength=256)
    expected = (1 << 20) / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400


def test_global_rngs_untouched(make_session):
    """Secrets never come from torch's or numpy's global generators (their states do not move)."""
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    s = make_session(2, seed=None)
    x = s.share(torch.ones(4, 3))
    w = s.share(torch.ones(3, 2))
    ((x @ w).relu().argmax(1)).reveal()
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])


def test_secure_sessions_share_differently(make_session):
    x = torch.arange(6.0)
    s1, s2 = make_session(2, seed=None), make_session(2, seed=None)
    assert not torch.equal(s1.share(x).shares, s2.share(x).shares)
    t1, t2 = make_session(2, seed=3), make_session(2, seed=3)
    assert torch.equal(t1.share(x).shares, t2.share(x).shares)


# ---------------------------------------------------------------------------------------------- material seeds
def test_material_seed_expands_to_aes256_ctr_under_a_hashed_key():
    """A seed's stream is AES-256-CTR keyed by SHA-256(domain || seed): the dealer and the seed's holder draw the
    same bytes, and a seed of the wrong length is refused."""
    import hashlib

    seed = bytes(range(16))
    key = hashlib.sha256(b"lightning_smpc/material-seed/v1\x00" + seed).digest()
    assert CSPRNG.from_seed(seed).random_bytes(100).tobytes() == CSPRNG(key).random_bytes(100).tobytes()
    a, b = CSPRNG.from_seed(seed), CSPRNG.from_seed(seed)
    assert torch.equal(a.draw((3, 4), torch.int64), b.draw((3, 4), torch.int64))
    assert not torch.equal(CSPRNG.from_seed(bytes(16)).int64((8,)), CSPRNG.from_seed(seed).int64((8,)))
    for bad in (b"", bytes(15), bytes(32)):
        with pytest.raises(ValueError, match="16-byte seed"):
            CSPRNG.from_seed(bad)


def test_seeds_are_fresh_from_the_stream():
    """Seeds come from the generator's stream (secure: keyed from os.urandom), so they never repeat."""
    g = make_prg(None)
    seeds = [g.seed() for _ in range(20_000)]
    assert all(len(s) == 16 for s in seeds) and len(set(seeds)) == len(seeds)
    assert make_prg(None).seed() != make_prg(None).seed()


def test_draw_formats():
    g = CSPRNG(KEY)
    assert g.draw((2, 3), torch.int64).dtype == torch.int64
    t = g.draw((4096,), torch.int16)
    assert t.dtype == torch.int16 and t.shape == (4096,)
    assert int(t.min()) < -16000 and int(t.max()) > 16000  # all 16 bits random (sign included)
    bits = g.draw((5, 7), torch.uint8)
    assert bits.shape == (5, 7) and set(bits.unique().tolist()) <= {0, 1}
    with pytest.raises(TypeError):
        g.draw((2,), torch.float32)
