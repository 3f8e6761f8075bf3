"""Issue 18.2: model shares kept by the compute parties. The owner shares once (``save_model_shares``); later runs
predict from the files with a model instance whose weights are never used, in both runtimes, with the labels of a
run that shares the trained model afresh; files that do not fit are refused before anything runs."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_smpc import ModelSharesError, SecureAccuracy, SecurePredictStrategy, save_model_shares
from lightning_smpc.mnist import MNISTClassifier
from lightning_smpc.model_shares import load_model_shares, model_fingerprints
from lightning_smpc.mpc import RingConfig
from lightning_smpc.mpc.identities import Identity, Roster
from lightning_smpc.mpc.share_files import read_share_file, x25519_public_of

pytestmark = pytest.mark.filterwarnings("ignore")
X = torch.randn(60, 1, 28, 28, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (60,), generator=torch.Generator().manual_seed(1))


def _trained() -> MNISTClassifier:
    torch.manual_seed(0)
    return MNISTClassifier().eval()


def _blank() -> MNISTClassifier:
    """The architecture only: every weight NaN, so a run that used them could not agree with anything."""
    model = MNISTClassifier()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return model


def _predict(model, runtime: str = "simulated", **kwargs):
    extra = {} if runtime == "distributed" else dict(seed=0, model_owner="alice", client="bob")
    strategy = SecurePredictStrategy(runtime=runtime, reveal="labels", **extra, **kwargs,
                                     metrics={"accuracy": SecureAccuracy(num_classes=10)})
    out = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False).predict(
        model, DataLoader(TensorDataset(X, Y), batch_size=30))
    return strategy, torch.cat(out)


@pytest.fixture(scope="module")
def share_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("shares")
    save_model_shares(_trained(), directory, parties=("alice", "bob"))
    return directory


@pytest.fixture(scope="module")
def fresh():
    return _predict(_trained())


def test_files_hold_one_partys_shares_of_about_8_bytes_per_parameter(share_dir: Path) -> None:
    n_params = sum(p.numel() for p in _trained().parameters())
    for party in ("alice", "bob"):
        path = share_dir / f"{party}.shares"
        assert 8 * n_params < path.stat().st_size < 8 * n_params + 4096
        assert os.stat(path).st_mode & 0o077 == 0  # a party's shares: its owner's only
    _, a = read_share_file(share_dir / "alice.shares", "alice")
    _, b = read_share_file(share_dir / "bob.shares", "bob")
    name = "fc1.weight"
    total = (a[name] + b[name]).to(torch.float64) / 2**16  # the owner's check: the shares add up to the weights
    assert torch.allclose(total, dict(_trained().named_parameters())[name].double(), atol=2**-15)
    assert not torch.allclose(a[name].double() / 2**16, total, atol=1e-2)  # one file alone is not the weights


@pytest.mark.parametrize("runtime", ["simulated", "distributed"])
def test_a_run_from_share_files_gives_the_labels_of_sharing_afresh(share_dir: Path, fresh, runtime: str) -> None:
    fresh_strategy, fresh_labels = fresh
    strategy, labels = _predict(_blank(), runtime, model_shares=str(share_dir))
    assert torch.equal(labels, fresh_labels)
    assert strategy.revealed_counts == fresh_strategy.revealed_counts
    if runtime == "simulated":  # the stored shares are masked afresh: one opening of the weights' size
        n_params = sum(p.numel() for p in _trained().parameters())
        by_tag = strategy.session.comm.stats_by_tag()
        assert by_tag["remask"]["parties"]["alice"]["bytes_sent"] == 8 * n_params and by_tag["remask"]["rounds"] == 1
        assert by_tag["share"]["parties"]["alice"]["bytes_received"] == 8 * 60 * (28 * 28 + 10)  # the inputs and targets only


def test_each_run_masks_the_stored_shares_afresh(share_dir: Path) -> None:
    from lightning_smpc.mpc import Session

    rows = load_model_shares(share_dir, ("alice", "bob"), _blank(), RingConfig())[1]
    opened = []
    for _ in range(2):
        s = Session(("alice", "bob"), record_views=True)
        s.adopt_shares([rows["fc2.weight"]], 16)
        opened.append(s.comm.views["alice"][-1][1])
    assert not torch.equal(opened[0], opened[1])  # W - B under a new B each run: nothing links two runs


def test_mismatches_are_refused_before_anything_runs(share_dir: Path, tmp_path: Path) -> None:
    def refused(match: str, model=None, source=share_dir, **kwargs):
        with pytest.raises(ModelSharesError, match=match):
            _predict(model or _blank(), model_shares=str(source), **kwargs)

    refused(r"architecture the shares were saved for .*fc1.weight \(300, 784\)", model=MNISTClassifier(hidden=300))
    refused("saved for the parties", parties=("alice", "bob", "carol"))
    refused("precision_bits=16", precision_bits=12, compare_bits=32)
    missing = tmp_path / "missing"
    shutil.copytree(share_dir, missing)
    (missing / "bob.shares").unlink()
    refused("of 'bob' is missing", source=missing)
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    shutil.copy(share_dir / "alice.shares", swapped / "bob.shares")
    shutil.copy(share_dir / "bob.shares", swapped / "alice.shares")
    refused("holds bob's shares, not alice's", source=swapped)
    tampered = tmp_path / "tampered"
    shutil.copytree(share_dir, tampered)
    data = bytearray((tampered / "bob.shares").read_bytes())
    data[-100] ^= 1
    (tampered / "bob.shares").write_bytes(bytes(data))
    refused("damaged", source=tampered)
    mixed = tmp_path / "mixed"
    save_model_shares(_trained(), mixed, parties=("alice", "bob"))
    shutil.copy(share_dir / "bob.shares", mixed / "bob.shares")
    refused("different sharings", source=mixed)
    current = json.loads((share_dir / "owner.receipt.json").read_text())["sharing_id"]
    refused("expects sharing", source=mixed, model_shares_id=current)  # older files, pinned out
    strategy, _ = _predict(_blank(), model_shares=str(share_dir), model_shares_id=current)
    assert strategy.revealed_counts


def test_parties_whose_files_come_from_different_sharings_fail_at_the_masked_opening(share_dir: Path,
                                                                                      tmp_path: Path) -> None:
    other = tmp_path / "other"
    save_model_shares(_trained(), other, parties=("alice", "bob"))
    mapping = {"alice": str(share_dir / "alice.shares"), "bob": str(other / "bob.shares")}
    with pytest.raises(Exception, match="model shares of sharing"):  # each process reads its own file only
        _predict(_blank(), "distributed", model_shares=mapping)


def test_the_weights_fingerprint_needs_the_owners_receipt(share_dir: Path, tmp_path: Path) -> None:
    """Review: an unkeyed hash of the weights would let a party test a guessed model (a public checkpoint)."""
    header, _ = read_share_file(share_dir / "alice.shares", "alice")
    receipt = share_dir / "owner.receipt.json"
    assert (header.architecture, header.weights) == model_fingerprints(_trained(), receipt)
    assert model_fingerprints(MNISTClassifier(), receipt)[1] != header.weights
    again = tmp_path / "again"
    save_model_shares(_trained(), again)  # the same model, shared again: a new key, nothing to link the two
    assert read_share_file(again / "alice.shares", "alice")[0].weights != header.weights
    assert os.stat(receipt).st_mode & 0o077 == 0


def test_malformed_headers_and_sizes_are_refused_before_reading_the_body(share_dir: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    import json
    import struct

    from lightning_smpc.mpc.share_files import MAGIC, ShareFileHeader, write_share_file

    good, _ = read_share_file(share_dir / "alice.shares", "alice")
    for bad in ({"tensors": [["w", [-2, -4]]]}, {"tensors": [["w", [2.7]]]}, {"tensors": [["w", [True]]]},
                {"tensors": [["w", [1e300]]]}, {"tensors": [["w", [1]], ["w", [1]]]}, {"frac_bits": 0},
                {"ring": 5}, {"tensors": [["w", [1 << 50, 1 << 50]]]}):
        raw = {**json.loads(good.to_bytes()), **bad}
        data = json.dumps(raw).encode()
        path = tmp_path / "alice.shares"
        path.write_bytes(MAGIC + struct.pack(">I", len(data)) + data + bytes(64))
        with pytest.raises(ModelSharesError, match="not a valid model-shares header|header says"):
            read_share_file(path, "alice")
    short = ShareFileHeader.new("alice", ("alice", "bob"), {"precision_bits": 16}, 16, "a", "b", [("w", (1 << 30,))])
    path = tmp_path / "short.shares"
    path.write_bytes(MAGIC + struct.pack(">I", len(short.to_bytes())) + short.to_bytes() + bytes(64))
    with pytest.raises(ModelSharesError, match="header says"):  # 8 GiB announced, nothing allocated
        read_share_file(path, "alice")
    header = ShareFileHeader.new("alice", ("alice", "bob"), {"precision_bits": 16}, 16, "a", "b", [("w", (2,))])

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):  # a failed write leaves nothing behind, not even a part
        write_share_file(tmp_path / "x.shares", header, {"w": torch.zeros(2, dtype=torch.int64)})
    assert not list(tmp_path.glob("x.shares*"))


def test_files_saved_with_a_test_seed_are_refused_outside_tests(tmp_path: Path) -> None:
    save_model_shares(_trained(), tmp_path, seed=0)
    with pytest.raises(ModelSharesError, match="test seed"):
        load_model_shares(tmp_path, ("alice", "bob"), _blank(), RingConfig())
    assert load_model_shares(tmp_path, ("alice", "bob"), _blank(), RingConfig(), allow_test_seed=True)


# ---------------------------------------------------------------------------------------------- signed and encrypted
@pytest.fixture(scope="module")
def keys():
    ids = {n: Identity.generate(n) for n in ("alice", "bob", "crypto_provider")}
    return ids, Roster.from_identities(list(ids.values()))


def test_the_x25519_form_of_an_identity_matches_its_public_key(keys) -> None:
    from lightning_smpc.mpc.share_files import _raw, _x25519_private_of

    ids, _ = keys
    for identity in ids.values():
        assert _raw(_x25519_private_of(identity).public_key()) == x25519_public_of(identity.public_key)


def test_signed_files_are_encrypted_to_their_party_and_checked_against_the_roster(keys, tmp_path: Path) -> None:
    ids, roster = keys
    paths = save_model_shares(_trained(), tmp_path, parties=("alice", "bob"), roster=roster, identity=ids["alice"])
    plain_dir = tmp_path / "plain"
    save_model_shares(_trained(), plain_dir, parties=("alice", "bob"), seed=0)
    header, mine = read_share_file(paths["bob"], "bob", roster=roster, identity=ids["bob"], owner="alice")
    assert header.encrypted and header.sealed_by == "alice"
    body = paths["bob"].read_bytes()
    for t in list(mine.values())[:2]:  # the shares are not in the file in clear
        assert t.numpy().astype("<i8").tobytes()[:64] not in body
    with pytest.raises(ModelSharesError, match="does not decrypt with 'alice'"):
        read_share_file(paths["bob"], "bob", roster=roster, identity=Identity("alice", ids["alice"].private_key))
    with pytest.raises(ModelSharesError, match="signed by 'alice', but the model owner is 'bob'"):
        read_share_file(paths["bob"], "bob", roster=roster, identity=ids["bob"], owner="bob")
    forged = bytearray(body)
    forged[200] ^= 1
    paths["bob"].write_bytes(bytes(forged))
    with pytest.raises(ModelSharesError, match="does not verify"):
        read_share_file(paths["bob"], "bob", roster=roster, identity=ids["bob"], owner="alice")
    with pytest.raises(ModelSharesError, match="not signed, but this run has a roster"):
        read_share_file(plain_dir / "bob.shares", "bob", roster=roster, identity=ids["bob"])
    with pytest.raises(ModelSharesError, match="pass the roster"):
        read_share_file(paths["alice"], "alice")


def test_share_settings_are_checked_where_they_are_given() -> None:
    with pytest.raises(ValueError, match="private='data'"):
        SecurePredictStrategy(model_shares="x", private="data")
    with pytest.raises(ValueError, match="pre-flight needs the plaintext model"):
        SecurePredictStrategy(model_shares="x", preflight=True)
    with pytest.raises(ValueError, match="NaN"):
        save_model_shares(_blank(), "/nonexistent/never-written")
    with pytest.raises(TypeError, match="model_class"):
        save_model_shares("model.ckpt", "/nonexistent/never-written")
