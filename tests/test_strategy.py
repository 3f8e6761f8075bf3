"""SecurePredictStrategy in a real Trainer: agreement with plaintext on MNIST, reveal modes and their audit,
registry names, ``ckpt_path``, three parties, refusal of fit/validate/test, pre-flight errors, batch
split rules and the offline/online (preprocessing) split.

Real-data tests use the first 2,000 MNIST test images (batch 500) and the seed MLP trained for one epoch
on 3,000 training images; the rest use a tiny MLP on random data so that the file stays fast.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import StrategyRegistry
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate
from torchmetrics.classification import MulticlassAccuracy

from lightning_smpc import SecureAccuracy, SecurePredictStrategy, ShareTensor, StrategyUsageError, UnsupportedModuleError
from lightning_smpc.cli import build_cli, format_secure_report
from lightning_smpc.mnist import MNIST_FILES, MNISTClassifier, MNISTDataModule
from lightning_smpc.mpc import NonFiniteInputError, UnsupportedOpError

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("SMPC_DATA_DIR", str(REPO.parent / "shared" / "data"))
HAVE_DATA = all((Path(DATA_DIR) / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES)
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"MNIST IDX files not found under {DATA_DIR}/MNIST/raw")

pytestmark = pytest.mark.filterwarnings("ignore:SeededTestPRG:UserWarning")  # seed=0: reproducible, insecure PRG

N_TEST, BATCH = 2000, 500
NEAR_TIE = 1e-3  # a secure argmax may differ from plaintext only where the top-2 plaintext logits are this close


# ---------------------------------------------------------------------------------------------- helpers
def _trainer(strategy, **kwargs) -> Trainer:
    return Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, **kwargs)


def _secure(strategy: SecurePredictStrategy, model: LightningModule, loader, **kwargs) -> list:
    return _trainer(strategy).predict(model, loader, **kwargs)


def _accuracy(num_classes: int = 10) -> dict:
    return {"accuracy": SecureAccuracy(num_classes=num_classes)}


def _assert_agrees(secure_labels: torch.Tensor, plain_logits: torch.Tensor, min_rate: float = 0.999) -> None:
    """>= ``min_rate`` agreement with the plaintext argmax; every disagreement is a near-tie."""
    plain = plain_logits.argmax(-1)
    assert secure_labels.shape == plain.shape and secure_labels.dtype == torch.int64
    agree = secure_labels == plain
    assert agree.float().mean().item() >= min_rate, f"agreement {agree.float().mean().item():.4f} < {min_rate}"
    top2 = plain_logits.topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]
    for i in (~agree).nonzero().flatten().tolist():
        assert gap[i].item() < NEAR_TIE, f"sample {i}: secure {secure_labels[i]} vs plain {plain[i]}, gap {gap[i]:.2e}"


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _assert_plain_and_equal(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    assert params.keys() == expected.keys()
    for name, p in params.items():
        assert type(p) is nn.Parameter, f"{name} is {type(p).__name__} after secure predict"
        assert torch.equal(p.detach(), expected[name]), f"{name} changed"


class TinyNet(LightningModule):
    """A small MLP for the fast tests: 8 -> 16 -> ReLU -> 4 classes."""

    def __init__(self, in_features: int = 8, hidden: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class UnpackingNet(TinyNet):
    """A user-written ``predict_step`` that unpacks ``(x, y)`` itself."""

    def predict_step(self, batch, batch_idx):
        x, y = batch
        return self(x)


class DictDataset(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, input_key: str = "image", target_key: str = "label") -> None:
        self.x, self.y, self.input_key, self.target_key = x, y, input_key, target_key

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {self.input_key: self.x[i], self.target_key: self.y[i], "index": i}


def _tuple_collate(items):
    return tuple(default_collate(items))


@pytest.fixture(scope="module")
def tiny():
    """(model, x, y, plaintext logits): TinyNet at a fixed init on 64 random samples."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    with torch.no_grad():
        logits = model(x)
    return model, x, y, logits


# ---------------------------------------------------------------------------------------------- MNIST fixtures
@pytest.fixture(scope="module")
def mnist():
    """(trained seed MLP, x, y, plaintext logits) on the first 2,000 test images."""
    if not HAVE_DATA:
        pytest.skip(f"MNIST IDX files not found under {DATA_DIR}/MNIST/raw")
    seed_everything(0)
    dm = MNISTDataModule(DATA_DIR, batch_size=64, test_batch_size=BATCH, train_subset=3000, test_subset=N_TEST,
                         download=False)
    model = MNISTClassifier(lr=0.1)
    Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0).fit(model, datamodule=dm)
    dm.setup("predict")
    xs, ys = zip(*dm.predict_dataloader())
    x, y = torch.cat(xs), torch.cat(ys)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert (logits.argmax(-1) == y).float().mean() > 0.8  # actually trained
    return model, x, y, logits


def _loader(x: torch.Tensor, y: torch.Tensor, n: int = N_TEST) -> DataLoader:
    return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=BATCH)


@pytest.fixture(scope="module")
def labels_run(mnist):
    """reveal="labels" (with the accuracy metric) on 2,000 images: (strategy, secure labels, params before)."""
    model, x, y, _ = mnist
    before = _params(model)
    strategy = SecurePredictStrategy(reveal="labels", seed=0, metrics=_accuracy())
    out = _secure(strategy, model, _loader(x, y))
    return strategy, torch.cat(out), before


@pytest.fixture(scope="module")
def metrics_run(mnist):
    """reveal="metrics" on the first 1,000 images; the audit trail is snapshot right after the run."""
    model, x, y, _ = mnist
    strategy = SecurePredictStrategy(reveal="metrics", seed=0, metrics=_accuracy())
    out = _secure(strategy, model, _loader(x, y, 1000))
    records = list(strategy.session.comm.records)
    ledger = [str(r) for r in strategy.reveal_ledger]
    return strategy, out, records, ledger


# ---------------------------------------------------------------------------------------------- MNIST: reveal modes
@needs_data
def test_labels_agree_with_plaintext_argmax(mnist, labels_run) -> None:
    model, _, y, logits = mnist
    strategy, labels, before = labels_run
    assert labels.shape == (N_TEST,)
    _assert_agrees(labels, logits)
    # the metric on shares equals torchmetrics on the revealed labels
    expected = MulticlassAccuracy(num_classes=10, average="micro")(labels, y)
    assert torch.equal(strategy.revealed_metrics["accuracy"], expected)
    assert strategy.revealed_counts["accuracy"] == (int((labels == y).sum()), N_TEST)
    assert [str(r) for r in strategy.reveal_ledger] == (
        ["predicted labels (shape 500) to client"] * (N_TEST // BATCH) + ["accuracy (scalar) to model owner"]
    )
    _assert_plain_and_equal(model, before)  # the user's module still holds its plain weights


@needs_data
def test_logits_close_to_plaintext(mnist) -> None:
    model, x, y, logits = mnist
    strategy = SecurePredictStrategy(reveal="logits", seed=0)
    out = _secure(strategy, model, _loader(x, y, BATCH))
    (revealed,) = out
    assert revealed.dtype == torch.float32 and not isinstance(revealed, ShareTensor)
    assert (revealed - logits[:BATCH]).abs().max().item() < 1e-2
    assert [str(r) for r in strategy.reveal_ledger] == ["logits (shape 500x10) to client"]


@needs_data
def test_metrics_mode_returns_shares_and_reveals_only_accuracy(mnist, labels_run, metrics_run) -> None:
    _, _, y, logits = mnist
    _, secure_labels, _ = labels_run
    strategy, out, _, _ = metrics_run
    assert len(out) == 2 and all(isinstance(p, ShareTensor) for p in out)
    p = out[0]
    assert p.shape == (BATCH, 10) and "HIDDEN" in repr(p)
    for read in (p.tolist, p.numpy, lambda: float(p[0, 0]), lambda: torch.equal(p, p)):
        with pytest.raises(UnsupportedOpError):
            read()
    expected = MulticlassAccuracy(num_classes=10, average="micro")(secure_labels[:1000], y[:1000])
    assert torch.equal(strategy.revealed_metrics["accuracy"], expected)
    correct = int((secure_labels[:1000] == y[:1000]).sum())
    assert strategy.revealed_counts["accuracy"] == (correct, 1000)
    report = format_secure_report(strategy).splitlines()
    assert report[:3] == ["revealed:", "  accuracy (scalar) to model owner",
                          f"accuracy: {expected.item():.4f} ({correct}/1000 correct)"]
    # the predictions are readable only through an explicit (ledgered) reveal
    assert (p.reveal().float() - logits[:BATCH]).abs().max().item() < 1e-2


@needs_data
def test_metrics_mode_communicator_audit(metrics_run) -> None:
    from lightning_smpc.mpc import COSTS

    strategy, _, records, ledger = metrics_run
    # the communicator revealed exactly what the ledger lists: the accuracy (a scalar) to the model owner
    assert ledger == ["accuracy (scalar) to model owner"]
    assert [(r.tag, r.shapes, r.to) for r in records if r.kind == "reveal"] == [("reveal", ((),), ("model owner",))]
    # every other record is an opening among the compute parties by a protocol with a declared cost: no one
    # outside (client, model owner) received anything else, and no traffic escapes the cost accounting
    masked = [r for r in records if r.kind != "reveal"]
    assert {r.to for r in masked} == {strategy.parties}
    tags = {r.tag for r in masked}
    assert tags <= set(COSTS) - {"reveal"}, tags - set(COSTS)
    assert {"share", "beaver_linear", "relu", "argmax"} <= tags  # the MLP's protocols (linear -> relu -> linear)


@needs_data
def test_three_parties(mnist) -> None:
    model, x, y, logits = mnist
    strategy = SecurePredictStrategy(parties=("alice", "bob", "carol"), reveal="labels", seed=0, metrics=_accuracy())
    labels = torch.cat(_secure(strategy, model, _loader(x, y, 1000)))
    assert strategy.session.parties == ("alice", "bob", "carol")
    assert set(strategy.comm_stats()) == {"alice", "bob", "carol"}
    _assert_agrees(labels, logits[:1000])
    assert torch.equal(strategy.revealed_metrics["accuracy"],
                       MulticlassAccuracy(num_classes=10, average="micro")(labels, y[:1000]))


@needs_data
def test_ckpt_path_with_fresh_model(tmp_path: Path) -> None:
    seed_everything(0)
    dm = MNISTDataModule(DATA_DIR, batch_size=64, test_batch_size=250, train_subset=1000, test_subset=500,
                         download=False)
    model = MNISTClassifier(lr=0.1, hidden=64)
    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[checkpoint], enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path).fit(model, datamodule=dm)
    ckpt = checkpoint.best_model_path
    assert ckpt and Path(ckpt).is_file()

    trained = MNISTClassifier.load_from_checkpoint(ckpt).eval()
    dm.setup("predict")
    xs, ys = zip(*dm.predict_dataloader())
    with torch.no_grad():
        plain_acc = MulticlassAccuracy(num_classes=10, average="micro")(trained(torch.cat(xs)), torch.cat(ys))

    fresh = MNISTClassifier(hidden=64)  # untrained: the weights must come from the checkpoint
    assert not torch.equal(fresh.fc1.weight, trained.fc1.weight)
    strategy = SecurePredictStrategy(seed=0, metrics=_accuracy())
    out = _trainer(strategy).predict(fresh, datamodule=dm, ckpt_path=ckpt)
    assert all(isinstance(p, ShareTensor) for p in out)
    assert torch.equal(strategy.revealed_metrics["accuracy"], plain_acc)
    assert plain_acc > 0.5
    # afterwards the module holds plain Parameters equal to the checkpoint's weights (nothing shared left)
    _assert_plain_and_equal(fresh, _params(trained))


@needs_data
def test_secure_predict_config(mnist, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """configs/secure_predict.yaml composes with mnist_mlp.yaml; jsonargparse builds the metric objects."""
    model, x, y, _ = mnist
    cli = build_cli(["--config", str(REPO / "configs" / "mnist_mlp.yaml"),
                     "--config", str(REPO / "configs" / "secure_predict.yaml"),
                     "--trainer.enable_progress_bar", "false", "--trainer.strategy.init_args.seed", "0",
                     "--trainer.default_root_dir", str(tmp_path)], run=False)
    strategy = cli.trainer.strategy
    assert isinstance(strategy, SecurePredictStrategy) and cli.trainer.logger is None
    assert (strategy.parties, strategy.crypto_provider, strategy.precision_bits, strategy.reveal) == (
        ("alice", "bob"), "crypto_provider", 16, "metrics")
    assert list(strategy.metrics) == ["accuracy"] and isinstance(strategy.metrics["accuracy"], SecureAccuracy)
    assert strategy.metrics["accuracy"].num_classes == 10
    cli.trainer.predict(model, _loader(x, y, BATCH))
    cli.after_predict()
    out = capsys.readouterr().out.splitlines()
    correct, total = strategy.revealed_counts["accuracy"]
    assert total == BATCH
    assert out[:3] == ["revealed:", "  accuracy (scalar) to model owner",
                       f"accuracy: {strategy.revealed_metrics['accuracy'].item():.4f} ({correct}/{BATCH} correct)"]
    assert out[3] == "communication:" and out[4].startswith("  alice: ") and "rounds" in out[4]


# ---------------------------------------------------------------------------------------------- registry
def test_registry_names() -> None:
    assert "secure_predict" in StrategyRegistry and "secure_predict_3pc" in StrategyRegistry
    trainer = Trainer(strategy="secure_predict", logger=False)
    assert isinstance(trainer.strategy, SecurePredictStrategy)
    assert trainer.strategy.parties == ("alice", "bob")
    three = Trainer(strategy="secure_predict_3pc", logger=False).strategy
    assert isinstance(three, SecurePredictStrategy) and three.parties == ("alice", "bob", "carol")
    assert StrategyRegistry.get("secure_predict_3pc").parties == ("alice", "bob", "carol")


# ---------------------------------------------------------------------------------------------- misuse
@pytest.mark.parametrize("fn", ["fit", "validate", "test"])
def test_non_predict_entry_points_refused(tiny, fn: str) -> None:
    model, x, y, _ = tiny
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    strategy = SecurePredictStrategy(seed=0)
    trainer = _trainer(strategy, max_epochs=1)
    with pytest.raises(StrategyUsageError) as info:
        getattr(trainer, fn)(model, loader)
    assert isinstance(info.value, RuntimeError)
    msg = str(info.value)
    assert f"`{fn}`" in msg and "normal strategy first" in msg
    assert strategy.session is None  # refused before anything was shared


class BadLayersNet(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.GroupNorm(4, 16), nn.ReLU(), nn.Linear(16, 4), nn.Softplus())

    def forward(self, x):
        return self.body(x)


def test_unsupported_layers_listed_before_sharing(tiny) -> None:
    _, x, y, _ = tiny
    strategy = SecurePredictStrategy(seed=0)
    with pytest.raises(UnsupportedModuleError) as info:
        _secure(strategy, BadLayersNet(), DataLoader(TensorDataset(x, y), batch_size=32))
    msg = str(info.value)
    assert isinstance(info.value, NotImplementedError)
    assert "`body.1` (GroupNorm)" in msg and "`body.4` (Softplus)" in msg
    assert "LayerNorm is" in msg
    assert strategy.session is None  # nothing was shared


class SinLayer(nn.Module):
    def forward(self, x):
        return torch.sin(x)


class SinNet(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.squash = SinLayer()

    def forward(self, x):
        return self.fc2(self.squash(self.fc1(x)))


def test_unsupported_op_names_op_and_layer(tiny) -> None:
    _, x, y, _ = tiny
    with pytest.raises(UnsupportedOpError) as info:
        _secure(SecurePredictStrategy(seed=0), SinNet(), DataLoader(TensorDataset(x, y), batch_size=32))
    msg = str(info.value)
    assert isinstance(info.value, NotImplementedError)
    assert "sin" in msg and "`squash` (SinLayer)" in msg


def test_nan_input_rejected(tiny) -> None:
    model, x, y, _ = tiny
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN") as info:
        _secure(SecurePredictStrategy(seed=0), model, DataLoader(TensorDataset(bad, y), batch_size=32))
    assert isinstance(info.value, NonFiniteInputError)


def test_every_secret_input_is_checked_before_the_first_is_shared() -> None:
    """A batch with two secret inputs whose second holds a NaN: nothing of it is shared (only the weights were)."""

    class TwoInputs(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, a, b):
            return self.fc(a + b)

    b = torch.randn(8, 4)
    b[2, 1] = float("nan")
    batch = {"a": torch.randn(8, 4), "b": b, "y": torch.randint(0, 3, (8,))}
    strategy = SecurePredictStrategy(seed=0, input_key=("a", "b"), target_key="y")
    with pytest.raises(NonFiniteInputError):
        _secure(strategy, TwoInputs(), DataLoader([batch], batch_size=None))
    assert strategy.secure_run.session.comm.stats_by_tag()["share"]["rounds"] == 2  # fc.weight and fc.bias only


def test_dataloader_iter_predict_step_refused(tiny) -> None:
    _, x, y, _ = tiny

    class IterNet(TinyNet):
        def predict_step(self, dataloader_iter):
            batch, _, _ = next(dataloader_iter)
            return self(batch[0])

    with pytest.raises(StrategyUsageError, match="dataloader_iter"):
        _secure(SecurePredictStrategy(seed=0), IterNet(), DataLoader(TensorDataset(x, y), batch_size=32))


# ---------------------------------------------------------------------------------------------- batch split rules
def _batches(kind: str, x: torch.Tensor, y: torch.Tensor) -> tuple[DataLoader, dict]:
    """A loader yielding batches of the given structure, and the strategy kwargs that locate x / y."""
    if kind == "tuple":
        return DataLoader(list(zip(x, y)), batch_size=32, collate_fn=_tuple_collate), {}
    if kind == "list":  # default_collate turns TensorDataset items into [x, y]
        return DataLoader(TensorDataset(x, y), batch_size=32), {}
    if kind == "dict":
        return DataLoader(DictDataset(x, y), batch_size=32), {}
    if kind == "dict_keys":
        return DataLoader(DictDataset(x, y, "pixels", "digit"), batch_size=32), {"input_key": "pixels", "target_key": "digit"}
    if kind == "tuple_keys":  # (y, x) order
        return DataLoader(list(zip(y, x)), batch_size=32, collate_fn=_tuple_collate), {"input_key": 1, "target_key": 0}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["tuple", "list", "dict", "dict_keys", "tuple_keys"])
def test_batch_split_rules(tiny, kind: str) -> None:
    model, x, y, logits = tiny
    loader, keys = _batches(kind, x, y)
    strategy = SecurePredictStrategy(reveal="labels", seed=0, metrics=_accuracy(4), **keys)
    labels = torch.cat(_secure(strategy, model, loader))
    _assert_agrees(labels, logits, min_rate=1.0 - 2 / len(x))
    assert strategy.revealed_counts["accuracy"] == (int((labels == y).sum()), len(x))
    assert torch.equal(strategy.revealed_metrics["accuracy"], MulticlassAccuracy(num_classes=4, average="micro")(labels, y))


def test_bare_tensor_batches_have_no_targets(tiny) -> None:
    model, x, _, logits = tiny
    strategy = SecurePredictStrategy(reveal="labels", seed=0, metrics=_accuracy(4))
    labels = torch.cat(_secure(strategy, model, DataLoader(x, batch_size=32)))
    _assert_agrees(labels, logits, min_rate=1.0 - 2 / len(x))
    assert strategy.metrics["accuracy"].update_count == 0  # no targets: no metric updated ...
    assert strategy.revealed_metrics == {} and strategy.revealed_counts == {}  # ... and nothing reported
    assert [str(r) for r in strategy.reveal_ledger] == ["predicted labels (shape 32) to client"] * 2


def test_custom_predict_step_runs_on_shares(tiny) -> None:
    model, x, y, logits = tiny
    custom = UnpackingNet()
    custom.load_state_dict(model.state_dict())
    before = _params(custom)
    strategy = SecurePredictStrategy(reveal="logits", seed=0, metrics=_accuracy(4))
    out = torch.cat(_secure(strategy, custom, DataLoader(TensorDataset(x, y), batch_size=32)))
    assert (out - logits).abs().max().item() < 1e-2
    assert strategy.revealed_counts["accuracy"][1] == len(x)
    _assert_plain_and_equal(custom, before)


# ---------------------------------------------------------------------------------------------- preprocessing
def test_preprocess_generates_all_but_first_batch_offline(tiny) -> None:
    model, x, y, _ = tiny
    loader = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16)  # 4 equal batches
    one_batch = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=16)

    def run(preprocess: bool, data: DataLoader):
        strategy = SecurePredictStrategy(reveal="logits", seed=0, preprocess=preprocess, metrics=_accuracy(4))
        out = torch.cat(_secure(strategy, model, data))
        return strategy, out

    pre, out_pre = run(True, loader)
    inline, out_inline = run(False, loader)
    first, _ = run(False, one_batch)
    dealer_pre = pre.session.stats()["dealer"]
    per_run_first = first.session.stats()["dealer"]["requests_inline"]  # weights + one batch
    total_inline = inline.session.stats()["dealer"]["requests_inline"]  # weights + four batches
    assert dealer_pre["requests_inline"] == per_run_first
    assert dealer_pre["requests_from_store"] == total_inline - per_run_first > 0
    assert dealer_pre["preprocess_seconds"] > 0 and "preprocess_seconds" in pre.timings
    assert torch.equal(out_pre, out_inline)
    assert torch.equal(pre.revealed_metrics["accuracy"], inline.revealed_metrics["accuracy"])


def test_preprocess_store_is_bounded_and_refilled(tiny) -> None:
    """With preprocess_ahead=1 the store never holds more than one batch of material, and every batch after
    the first still gets its material from the store (refilled between batches)."""
    model, x, y, _ = tiny
    loader = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16)  # 4 equal batches

    def run(**kwargs):
        sizes = []

        class StoreProbe(SecurePredictStrategy):
            def predict_step(self, *args, **kw):
                sizes.append(self.session.dealer.store_size)
                return super().predict_step(*args, **kw)

        strategy = StoreProbe(reveal="logits", seed=0, metrics=_accuracy(4), **kwargs)
        return strategy, torch.cat(_secure(strategy, model, loader)), sizes

    bounded, out_bounded, sizes_b = run(preprocess_ahead=1)
    unbounded, out_unbounded, sizes_u = run()
    assert sizes_b[0] == sizes_u[0] == 0  # the first batch records the plan
    assert max(sizes_b[1:]) == sizes_b[1] < sizes_u[1]  # at most one batch held at a time
    st_b, st_u = bounded.session.stats()["dealer"], unbounded.session.stats()["dealer"]
    assert st_b["requests_inline"] == st_u["requests_inline"]
    assert st_b["requests_from_store"] == st_u["requests_from_store"] > 0
    assert torch.equal(out_bounded, out_unbounded)
    with pytest.raises(ValueError, match="preprocess_ahead"):
        SecurePredictStrategy(preprocess_ahead=0)
