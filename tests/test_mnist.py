"""MNISTDataModule on the real IDX files, its offline error, and a short plaintext fit of MNISTClassifier."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_smpc.mnist import MNIST_FILES, MNISTClassifier, MNISTDataModule

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("SMPC_DATA_DIR", str(REPO.parent / "shared" / "data"))
HAVE_DATA = all((Path(DATA_DIR) / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES)
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"MNIST IDX files not found under {DATA_DIR}/MNIST/raw")


def _no_network(*args: object, **kwargs: object) -> None:
    raise RuntimeError("network access attempted")


@needs_data
def test_batches_shapes_dtypes_and_normalisation() -> None:
    dm = MNISTDataModule(DATA_DIR, batch_size=16, test_batch_size=50, train_subset=100, test_subset=120,
                         download=False)
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    assert len(dm.train_set) == 100 and len(dm.test_set) == 120
    # ToTensor + Normalize((0.1307,), (0.3081,)) applied to the raw uint8 pixels, in order for the test set
    xs, ys = zip(*dm.val_dataloader())
    assert [len(b) for b in ys] == [50, 50, 20]
    raw = dm.test_set.dataset
    expected = (raw.data[:120].float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(torch.cat(xs)[:, 0], expected)
    assert torch.equal(torch.cat(ys), raw.targets[:120])
    assert torch.equal(next(iter(dm.predict_dataloader()))[1], raw.targets[:50])


@needs_data
def test_full_sets_and_no_network_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "download", _no_network)
    dm = MNISTDataModule(DATA_DIR, download=True)
    dm.prepare_data()  # files present: must not touch the network even with download=True
    dm.setup("fit")
    assert len(dm.train_set) == 60_000 and len(dm.test_set) == 10_000


@pytest.mark.parametrize("download", [False, True])
def test_missing_files_error_names_the_four_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, download: bool
) -> None:
    from torchvision.datasets import MNIST

    monkeypatch.setattr(MNIST, "download", _no_network)  # simulate being offline
    dm = MNISTDataModule(str(tmp_path), download=download)
    with pytest.raises(FileNotFoundError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert all(f in msg for f in MNIST_FILES)
    with pytest.raises(FileNotFoundError):
        dm.setup("predict")


def test_classifier_forward() -> None:
    model = MNISTClassifier()
    assert model.fc1.in_features == 784 and model.fc1.out_features == 500 and model.fc2.out_features == 10
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(model(x), model.fc2(torch.relu(model.fc1(x.view(3, -1)))))
    assert torch.equal(model((x, torch.zeros(3, dtype=torch.long))), model(x))  # default predict_step input
    assert "predict_step" not in vars(MNISTClassifier)


@needs_data
def test_one_epoch_fit_reaches_80_percent(tmp_path: Path) -> None:
    seed_everything(0)
    dm = MNISTDataModule(DATA_DIR, batch_size=32, train_subset=2000, download=False)
    model = MNISTClassifier(lr=0.1)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert result["test_acc"] > 0.80
