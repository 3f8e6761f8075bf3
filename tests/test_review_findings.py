"""Findings of the security review and of a new user's first runs (issue 16), one test each; each failed on the
main branch before its fix. Covered here: 4 (batch header keys are data), 6 (a private key file keeps a
pre-existing file's mode), 10 (SecureAccuracy labels out of range or not integers), 12 (messages that do not name
the file, the role or the duplicate)."""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_smpc import SecureAccuracy, SecurePredictStrategy
from lightning_smpc.batches import ClientLoader, PlaceholderLoader, batch_header
from lightning_smpc.mpc.links import Identity, Roster, generate_identity, load_identity

pytestmark = [pytest.mark.filterwarnings("ignore:SeededTestPRG:UserWarning"), pytest.mark.usefixtures("torch_single_thread")]

SECRET_KEY = "note_for_patient_P-00417_HIV+"


class _Linear(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class _Records(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.randn(4), "y": torch.tensor(i % 3), SECRET_KEY: torch.tensor(1.0)}


def _predict(strategy, model, loader):
    return Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False).predict(model, loader)


# ---------------------------------------------------------------------------------------------- 4. header keys
def test_batch_headers_carry_only_the_input_and_target_keys() -> None:
    batch = next(iter(DataLoader(_Records(), batch_size=2)))
    header = json.dumps(batch_header(batch, None, None))
    assert SECRET_KEY not in header and "P-00417" not in header
    several = json.dumps(batch_header(batch, ("x",), "y"))
    assert SECRET_KEY not in several


def test_the_other_parties_see_the_inputs_and_targets_only() -> None:
    """What a non-client party's loader yields (from the headers the client's loader announces)."""
    sent: list[bytes] = []
    client = ClientLoader(DataLoader(_Records(), batch_size=2), sent.append, None, None)
    batches = list(client)
    replay = iter(sent)
    placeholders = list(PlaceholderLoader(lambda: next(replay)))
    assert len(placeholders) == len(batches) == 2
    assert not any(SECRET_KEY.encode() in m or b"P-00417" in m for m in sent)
    _, _, rebuild = placeholders[0].split()
    assert set(rebuild("x-shares", "y-shares")) == {"x", "y"}


def test_a_dict_batch_with_private_keys_runs_with_parties_as_processes() -> None:
    torch.manual_seed(0)
    model = _Linear().eval()
    strategy = SecurePredictStrategy(reveal="labels", runtime="distributed")
    labels = _predict(strategy, model, DataLoader(_Records(), batch_size=2))
    assert len(torch.cat([torch.as_tensor(v) for v in labels])) == 4


# ---------------------------------------------------------------------------------------------- 6. key file mode
@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_a_private_key_written_onto_an_existing_file_is_0600(tmp_path) -> None:
    path = tmp_path / "alice.pem"
    path.write_text("old")
    os.chmod(path, 0o644)
    generate_identity("alice", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity("alice", path).name == "alice"


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_a_readable_private_key_is_refused(tmp_path) -> None:
    path = tmp_path / "bob.pem"
    generate_identity("bob", path)
    os.chmod(path, 0o640)
    with pytest.raises(PermissionError, match=r"bob\.pem.*'bob'.*chmod 600"):
        load_identity("bob", path)


# ---------------------------------------------------------------------------------------------- 10. labels
@pytest.mark.parametrize("labels,error,match", [
    (torch.tensor([0, 1, 3, 2]), ValueError, r"SecureAccuracy 'accuracy' has num_classes=3, but 1 label"),
    (torch.tensor([0, -1, 1, 2]), ValueError, "outside"),
    (torch.tensor([0.0, 1.5, 1.0, 2.0]), TypeError, "non-integer"),
])
def test_labels_are_checked_before_the_batch_is_shared(labels, error, match) -> None:
    torch.manual_seed(0)
    strategy = SecurePredictStrategy(metrics={"accuracy": SecureAccuracy(num_classes=3)}, seed=0)
    loader = DataLoader(TensorDataset(torch.randn(4, 4), labels), batch_size=4)
    with pytest.raises(error, match=match):
        _predict(strategy, _Linear().eval(), loader)


def test_integral_float_labels_are_accepted() -> None:
    torch.manual_seed(0)
    strategy = SecurePredictStrategy(metrics={"accuracy": SecureAccuracy(num_classes=3)}, seed=0)
    _predict(strategy, _Linear().eval(), DataLoader(TensorDataset(torch.randn(4, 4), torch.tensor([0.0, 1, 2, 1])), batch_size=4))
    assert strategy.revealed_counts["accuracy"][1] == 4


# ---------------------------------------------------------------------------------------------- 12. messages
def test_a_duplicate_roster_name_is_named() -> None:
    ids = [Identity.generate(n) for n in ("alice", "bob", "alice")]
    with pytest.raises(ValueError, match="'alice' more than once"):
        Roster.from_identities(ids)


def test_an_unreadable_or_broken_key_file_names_the_file_and_the_role(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pem.*'carol'"):
        load_identity("carol", tmp_path / "missing.pem")
    broken = tmp_path / "broken.pem"
    broken.write_text("not a key")
    os.chmod(broken, 0o600)
    with pytest.raises(ValueError, match=r"broken\.pem.*'carol'"):
        load_identity("carol", broken)
    with pytest.raises(FileNotFoundError, match=r"roster\.json"):
        Roster.load(tmp_path / "roster.json")


# ---------------------------------------------------------------------------------------------- 9. error types
class _WithLSTM(_Linear):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, 2)


def test_module_checks_run_before_any_role_process_starts(monkeypatch) -> None:
    """An unsupported layer is refused in the user's process, as with the simulated runtime: no role is started."""
    import lightning_smpc.launcher as launcher

    started = []
    monkeypatch.setattr(launcher, "_entry", lambda *a, **k: started.append(a))
    from lightning_smpc import UnsupportedModuleError

    with pytest.raises(UnsupportedModuleError, match="`rnn` \\(LSTM\\)"):
        _predict(SecurePredictStrategy(runtime="distributed"), _WithLSTM().eval(),
                 DataLoader(TensorDataset(torch.randn(2, 4)), batch_size=2))
    assert started == []


def test_a_roles_user_error_keeps_its_type_and_names_the_role() -> None:
    from lightning_smpc.mpc.distributed import PartyProcessError
    from lightning_smpc.mpc.errors import EncodingRangeError

    loader = DataLoader(TensorDataset(torch.randn(4, 4) * 1e6), batch_size=2)
    with pytest.raises(EncodingRangeError, match=r"^bob \(rank 1\): Expected \|x\| <") as info:
        _predict(SecurePredictStrategy(runtime="distributed"), _Linear().eval(), loader)
    assert isinstance(info.value.__cause__, PartyProcessError)  # the run's failure report stays attached
    labels = DataLoader(TensorDataset(torch.randn(4, 4), torch.tensor([0, 1, 5, 1])), batch_size=2)
    with pytest.raises(ValueError, match=r"^bob \(rank 1\): SecureAccuracy 'accuracy'"):
        _predict(SecurePredictStrategy(runtime="distributed", metrics={"accuracy": SecureAccuracy(num_classes=3)}),
                 _Linear().eval(), labels)


# ---------------------------------------------------------------------------------------------- 5. header bounds
@pytest.mark.parametrize("raw", [
    json.dumps({"kind": "list", "len": 10**12, "input": 0, "target": None, "x_shape": [2]}),
    json.dumps({"kind": "tuple", "len": 2, "input": 0, "target": 7, "x_shape": [2]}),
    json.dumps({"kind": "tensor", "input": None, "target": None, "x_shape": [2**20, 2**20]}),
    json.dumps({"kind": "tensor", "input": None, "target": None, "x_shape": [1] * 40}),
    "[" * 2000 + "]" * 2000,
    json.dumps({"kind": "dict", "input": "x", "target": "y", "x_shape": [2], "len": 3}),
])
def test_malformed_or_huge_batch_headers_are_refused(raw) -> None:
    from lightning_smpc.batches import _decode

    with pytest.raises(ValueError, match="malformed batch header"):
        _decode(raw.encode())


def test_a_dealer_request_larger_than_its_limit_is_refused_before_generation() -> None:
    """The reviewer's 53-byte request asked the dealer for ~96 GiB; now its size is computed from the request and
    refused before anything is allocated (here an 8 GiB mask of a valid request, against the 4 GiB default)."""
    from lightning_smpc.mpc import RingConfig, wire
    from lightning_smpc.mpc.material import Request

    huge = Request("input_mask", ((1 << 15, 1 << 15), "alice"))
    assert len(wire.encode_request(huge, ("alice", "bob"))) < 100
    with pytest.raises(wire.WireError, match="8.00 GiB per party.*max_material_bytes"):
        wire.check_material_size(huge, ("alice", "bob"), RingConfig())
    wire.check_material_size(Request("input_mask", ((1000, 784), "alice")), ("alice", "bob"), RingConfig())


def test_the_crypto_providers_limit_ends_a_run_by_name() -> None:
    from lightning_smpc.mpc.wire import WireError

    strategy = SecurePredictStrategy(runtime="distributed", reveal="labels", preprocess=False,
                                     max_material_bytes=64)  # bytes: the first weight mask (3x4 int64) is larger
    with pytest.raises(WireError, match="crypto_provider.*Refused.*max_material_bytes"):
        _predict(strategy, _Linear(), DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=4))


# ---------------------------------------------------------------------------------------------- 1. pinned roles
def _links_are_pinned(session) -> bool:
    return session.comm.links.pinned


def test_run_parties_without_a_roster_is_pinned_all_the_same() -> None:
    from lightning_smpc.mpc.distributed import run_parties

    assert [r.result for r in run_parties(_links_are_pinned)[:2]] == [True, True]


def test_predict_hands_every_spawned_role_the_roster_it_made(monkeypatch) -> None:
    """The roles use the keys made in the user's process: a roster that does not match them fails the run."""
    import lightning_smpc.party_runtime as pr
    from lightning_smpc.mpc.links import LinkAuthError

    made = pr.fresh_keys

    def mismatched(names):
        roster, pems = made(names)
        _, other = made(names)
        return roster, {**pems, names[-1]: other[names[-1]]}  # the crypto provider's key is not the roster's

    monkeypatch.setattr(pr, "fresh_keys", mismatched)
    with pytest.raises(LinkAuthError, match="Refused 'crypto_provider'"):  # the role's own error, its type kept
        _predict(SecurePredictStrategy(runtime="distributed", timeout=20), _Linear().eval(),
                 DataLoader(TensorDataset(torch.randn(2, 4)), batch_size=2))


def test_a_run_launched_outside_predict_without_a_roster_is_refused(monkeypatch) -> None:
    from lightning_smpc.mpc.errors import PartyConfigError

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531", "NODE_RANK": "0", "WORLD_SIZE": "3",
                       "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    trainer = Trainer(strategy=SecurePredictStrategy(runtime="distributed"), num_nodes=3, devices=1, logger=False,
                      enable_progress_bar=False)
    with pytest.raises(PartyConfigError, match="needs a roster.*make-keys"):
        trainer.predict(_Linear().eval(), DataLoader(TensorDataset(torch.randn(2, 4)), batch_size=2))


# ---------------------------------------------------------------------------------------------- 3. public values
def _scale_by_party(session):
    """The reviewer's script: alice scales by 2.0, bob by 2.5 (a module attribute only the owner loaded, ...)."""
    x = session.share(torch.tensor([1.0, 2.0, 3.0]) if session.local_party == "alice" else None, owner="alice",
                      shape=(3,))
    y = x * (2.0 if session.local_party == "alice" else 2.5)
    return y.reveal()


def _permute_by_party(session):
    x = session.share(torch.tensor([1.0, 2.0, 3.0]) if session.local_party == "alice" else None, owner="alice",
                      shape=(3,))
    perm = [0, 1, 2] if session.local_party == "alice" else [2, 1, 0]
    return x[perm].reveal()


def _same_public_values(session):
    x = session.share(torch.tensor([1.0, 2.0, 3.0]) if session.local_party == "alice" else None, owner="alice",
                      shape=(3,))
    return (x[[2, 1, 0]] * 2.0).reveal()


@pytest.mark.parametrize("fn,named", [(_scale_by_party, "public operand"), (_permute_by_party, "index")])
def test_parties_that_disagree_on_a_public_value_fail_before_revealing(fn, named) -> None:
    from lightning_smpc.mpc.distributed import run_parties
    from lightning_smpc.mpc.links import LinkIntegrityError

    with pytest.raises(LinkIntegrityError, match=f"failed authentication.*disagree on a public value.*{named}"):
        run_parties(fn, timeout=20)


def test_parties_that_agree_on_public_values_run() -> None:
    from lightning_smpc.mpc.distributed import run_parties

    out = run_parties(_same_public_values)
    assert torch.allclose(out[0].result, torch.tensor([6.0, 4.0, 2.0], dtype=torch.float64))
