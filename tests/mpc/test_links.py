"""Secure links, crypto layer: AES-GCM per direction with counter nonces; tampering, replay, reordering,
reflection and mislabelled messages are refused; identities and rosters round-trip through their text forms.
(The handshake between real processes is exercised in test_distributed.py.)"""
from __future__ import annotations

import os

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lightning_smpc.mpc import handshake as H
from lightning_smpc.mpc import links as L
from lightning_smpc.mpc.links import Identity, LinkIntegrityError, Links, Roster, generate_identity, load_identity

NAMES = ("alice", "bob")


def _pair():
    """alice's and bob's Links with fresh per-direction keys (what the handshake derives)."""
    k_ab, k_ba, sid = os.urandom(32), os.urandom(32), os.urandom(32)
    roster = Roster.from_identities([Identity.generate(n) for n in NAMES])
    alice = Links(0, NAMES, roster, sid, {1: k_ab}, {1: k_ba})
    bob = Links(1, NAMES, roster, sid, {0: k_ba}, {0: k_ab})
    return alice, bob


TENSORS = [
    torch.arange(12, dtype=torch.int64).reshape(3, 4) * (1 << 40),
    torch.tensor(7, dtype=torch.int64),
    torch.zeros(0, 5, dtype=torch.int64),
    torch.tensor([1, 0, 1], dtype=torch.uint8),
    torch.tensor([-3, 2], dtype=torch.int16),
    torch.randn(2, 3, dtype=torch.float64),
]


def _specs(ts):
    return [(tuple(t.shape), t.dtype) for t in ts]


@pytest.mark.parametrize("into", [True, False], ids=["encrypt_into", "allocating"])
@pytest.mark.parametrize("segment", [L.SEGMENT_BYTES, 7], ids=["one-segment", "7-byte-segments"])
def test_round_trip(monkeypatch, into, segment):
    monkeypatch.setattr(L, "SEGMENT_BYTES", segment)
    alice, bob = _pair()
    monkeypatch.setattr(L, "_HAS_INTO", into)
    wire = alice._seal(1, TENSORS, "open:beaver_matmul")
    monkeypatch.setattr(L, "_HAS_INTO", not into)  # both code paths speak the same format
    got = bob._open(0, wire, _specs(TENSORS), "open:beaver_matmul")
    assert all(torch.equal(g, t) and g.dtype == t.dtype for g, t in zip(got, TENSORS))
    plain = sum(t.numel() * t.element_size() for t in TENSORS)
    assert wire.numel() == bob._wire_size(_specs(TENSORS)) > plain  # counter header + one GCM tag per segment
    assert alice.stats["plain_bytes_sent"] == plain and alice.stats["aead_seconds"] > 0
    assert not torch.equal(wire[8 : 8 + 8], TENSORS[0].reshape(-1).view(torch.uint8)[:8])  # not plaintext on the wire


def test_counter_nonces_never_repeat():
    alice, bob = _pair()
    t = torch.arange(6, dtype=torch.int64)
    w1, w2 = alice._seal(1, [t], "x"), alice._seal(1, [t], "x")
    assert bytes(w1[:8].numpy()) == (0).to_bytes(8, "big") and bytes(w2[:8].numpy()) == (1).to_bytes(8, "big")
    body = slice(8, 8 + 6 * 8)  # the ciphertext without its tag: a repeated nonce would repeat it exactly
    assert not torch.equal(w1[body], w2[body])  # same plaintext, new nonce
    bob._open(0, w1, _specs([t]), "x")
    bob._open(0, w2, _specs([t]), "x")


def _flip(wire: torch.Tensor, pos: int) -> torch.Tensor:
    bad = wire.clone()
    bad[pos] ^= 1
    return bad


@pytest.mark.parametrize("pos", [8, -1, -17], ids=["ciphertext", "gcm-tag", "last-plaintext-byte"])
def test_tampered_message_is_refused(pos):
    alice, bob = _pair()
    t = [torch.arange(5, dtype=torch.int64)]
    wire = alice._seal(1, t, "reveal:x")
    with pytest.raises(LinkIntegrityError, match="'reveal:x' from 'alice' to 'bob'.*failed authentication"):
        bob._open(0, _flip(wire, pos), _specs(t), "reveal:x")


def test_replayed_and_reordered_messages_are_refused():
    alice, bob = _pair()
    t = [torch.arange(5, dtype=torch.int64)]
    w0, w1 = alice._seal(1, t, "m"), alice._seal(1, t, "m")
    with pytest.raises(LinkIntegrityError, match="counter 1, expected 0: a replayed, reordered or dropped"):
        bob._open(0, w1, _specs(t), "m")  # reordered (or w0 dropped)
    bob._open(0, w0, _specs(t), "m")
    with pytest.raises(LinkIntegrityError, match="counter 0, expected 1"):
        bob._open(0, w0, _specs(t), "m")  # replayed
    forged = w0.clone()
    forged[:8] = w1[:8]  # an old ciphertext relabelled with the expected counter
    with pytest.raises(LinkIntegrityError, match="failed authentication"):
        bob._open(0, forged, _specs(t), "m")
    bob._open(0, w1, _specs(t), "m")


@pytest.mark.parametrize("tag, shape, dtype", [
    ("other-op", (5,), torch.int64), ("m", (1, 5), torch.int64), ("m", (5,), torch.float64),
], ids=["op-tag", "shape", "dtype"])
def test_receiver_disagreeing_on_tag_shape_or_dtype_is_refused(tag, shape, dtype):
    alice, bob = _pair()
    wire = alice._seal(1, [torch.arange(5, dtype=torch.int64)], "m")
    with pytest.raises(LinkIntegrityError, match="failed authentication"):
        bob._open(0, wire, [(shape, dtype)], tag)


@pytest.mark.parametrize("same_key", [False, True], ids=["per-direction-keys", "even-with-one-key"])
def test_a_message_cannot_be_reflected_to_its_sender(same_key):
    """A message alice sent to bob cannot be played back to alice as if bob had sent it: the keys differ per
    direction (as the handshake derives them), and source/destination are in the AAD besides."""
    alice, _ = _pair()
    if same_key:
        alice._recv_aead[1] = alice._send_aead[1]
    wire = alice._seal(1, [torch.arange(3)], "m")
    with pytest.raises(LinkIntegrityError, match="failed authentication"):
        alice._open(1, wire, [((3,), torch.int64)], "m")


def test_handshake_derives_one_key_per_direction():
    secret, salt = os.urandom(32), os.urandom(32)
    keys = {(s, d): H._hkdf(secret, salt, s, d) for s, d in [(0, 1), (1, 0), (0, 2), (2, 0)]}
    assert len(set(keys.values())) == 4 and keys[(0, 1)] == H._hkdf(secret, salt, 0, 1)


def test_a_message_of_another_session_is_refused():
    alice, bob = _pair()
    wire = alice._seal(1, [torch.arange(3)], "m")
    bob.session_id = os.urandom(32)  # same keys, another session id: the AAD no longer matches
    with pytest.raises(LinkIntegrityError, match="failed authentication"):
        bob._open(0, wire, [((3,), torch.int64)], "m")


def test_identity_and_roster_text_round_trip(tmp_path):
    ids = [generate_identity(n, tmp_path / f"{n}.pem") for n in ("alice", "bob", "crypto_provider")]
    assert oct((tmp_path / "alice.pem").stat().st_mode & 0o777) == "0o600"
    roster = Roster.from_identities(ids)
    roster.save(tmp_path / "roster.json")
    back = Roster.load(tmp_path / "roster.json")
    assert back == roster and back.digest() == roster.digest()
    assert load_identity("bob", tmp_path / "bob.pem").public_key == roster.key_of("bob")
    ids[0].save(tmp_path / "locked.pem", password=b"pw")
    assert load_identity("alice", tmp_path / "locked.pem", password=b"pw").public_key == ids[0].public_key
    other = Roster(roster.names, (roster.keys[0], roster.keys[2], roster.keys[1]))
    assert other.digest() != roster.digest()
    Ed25519PublicKey.from_public_bytes(back.key_of("bob")).verify(ids[1].sign(b"hello"), b"hello")


@pytest.mark.parametrize("text, match", [
    ("not json", "Not a lightning_smpc roster"),
    ('{"members": []}', "lightning_smpc_roster"),
    ('{"lightning_smpc_roster": 1, "members": [{"name": "a", "ed25519": "AAAA"}, {"name": "b", "ed25519": "AAAA"}]}',
     "32-byte"),
    ('{"lightning_smpc_roster": 1, "members": [{"name": "a", "ed25519": "%s"}]}' % ("A" * 43 + "="), "at least two"),
])
def test_bad_roster_text_is_refused(text, match):
    with pytest.raises(ValueError, match=match):
        Roster.from_text(text)


class _CountingLinks:
    """A party's links where every member sends the same rows: enough to count the messages of one round."""

    name, names = "alice", NAMES

    def __init__(self) -> None:
        self.messages: list[str] = []

    def index(self, who):
        return self.names.index(who) if isinstance(who, str) else who

    def all_gather_many(self, tensors, tag, ranks=None):
        self.messages.append(tag)
        return [list(tensors), list(tensors)]


def test_one_round_of_openings_is_one_message():
    """All the values one round opens (an AND's two bits, a comparison's masked value...) travel as ONE
    message per peer, each on its own wire type: one round trip per round, as the cost declarations count."""
    from lightning_smpc.mpc.distributed import DistributedCommunicator

    links = _CountingLinks()
    comm = DistributedCommunicator(NAMES, links)
    g = torch.Generator().manual_seed(0)
    value = torch.randint(-2**62, 2**62, (1, 3, 5), generator=g)
    bits = torch.randint(0, 2, (1, 11), generator=g, dtype=torch.uint8)
    small = torch.randint(0, 2**40, (1, 4), generator=g)
    got = comm.open([(value, "arith", 64), (bits, "xor", 1), (small, "arith", 4)], tag="relu")
    # one message, whose authenticated tag names each value's kind, width and shape (11 packed bits fill 2 bytes,
    # as 16 would: the shape tells them apart) and the digest of the public values used so far (none here)
    (message,) = links.messages
    assert message.startswith("open/arith64[3, 5],xor1[11],arith4[4]:relu|public:") and comm.rounds == 1
    comm.note_public("public operand", torch.tensor([2.0]))
    comm.open([(value, "arith", 64)], tag="relu")
    assert links.messages[1].split("|public:")[1] != message.split("|public:")[1]  # a public value moves the digest
    assert torch.equal(got[0], 2 * value[0]) and torch.equal(got[1], torch.zeros(11, dtype=torch.uint8))
    assert torch.equal(got[2], (2 * small[0]) & 15)
