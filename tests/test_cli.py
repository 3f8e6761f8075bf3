"""The ``lightning-smpc`` LightningCLI: plaintext fit/predict in-process, and the secure report."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lightning_smpc
from lightning_smpc.cli import SmpcCLI, build_cli, format_secure_report, main
from lightning_smpc.mnist import MNIST_FILES, MNISTClassifier, MNISTDataModule

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "mnist_mlp.yaml")
SECURE_CONFIG = REPO / "configs" / "secure_predict.yaml"
DATA_DIR = os.environ.get("SMPC_DATA_DIR", str(REPO.parent / "shared" / "data"))
HAVE_DATA = all((Path(DATA_DIR) / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES)
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"MNIST IDX files not found under {DATA_DIR}/MNIST/raw")


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--config", CONFIG,
        *extra,
        "--data.data_dir", DATA_DIR, "--data.download", "false",
        "--data.train_subset", "256", "--data.test_subset", "200", "--data.test_batch_size", "100",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
    ]


@needs_data
def test_fit_from_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fit", *_args(tmp_path), "--trainer.max_epochs", "1", "--trainer.max_steps", "5", "--model.lr", "0.05"]
    assert main(args) is None  # returns normally, no sys.exit
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert (run_dir / "config.yaml").is_file()
    (ckpt,) = (run_dir / "checkpoints").glob("*.ckpt")
    assert f"trained model saved to {ckpt}" in capsys.readouterr().out  # issue 16.11: fit says where it saved
    model = MNISTClassifier.load_from_checkpoint(ckpt)
    assert model.hparams.lr == 0.05 and model.hparams.hidden == 500
    # with logger=False, config.yaml lands in default_root_dir both times: the second save must not abort
    main([*args, "--trainer.logger", "false"])
    main([*args, "--trainer.logger", "false"])
    assert (tmp_path / "config.yaml").is_file()


@needs_data
def test_config_defaults_and_plain_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = build_cli(["predict", *_args(tmp_path), "--trainer.logger", "false"])
    assert isinstance(cli.model, MNISTClassifier) and cli.model.hparams.lr == 0.01
    assert isinstance(cli.datamodule, MNISTDataModule) and cli.datamodule.test_subset == 200
    assert cli.trainer.max_epochs == 10
    preds = cli.trainer.predict_loop.predictions
    assert [p.shape for p in preds] == [torch.Size([100, 10])] * 2
    assert "revealed" not in capsys.readouterr().out  # plain strategy: no secure report


def test_format_secure_report_and_after_predict(capsys: pytest.CaptureFixture[str]) -> None:
    strategy = SimpleNamespace(
        reveal_ledger=["accuracy (scalar) to model owner"],
        revealed_metrics={"accuracy": torch.tensor(0.9781)},
        revealed_counts={"accuracy": (9781, 10000)},
        comm_stats=lambda: {
            "alice": {"rounds": 7, "messages": 14, "bytes_sent": 3 * 2**20, "bytes_received": 512},
            "bob": {"rounds": 7, "messages": 14, "bytes_sent": 512, "bytes_received": 3 * 2**20},
        },
    )
    report = format_secure_report(strategy)
    assert report.splitlines() == [
        "revealed:",
        "  accuracy (scalar) to model owner",
        "accuracy: 0.9781 (9781/10000 correct)",
        "communication:",
        "  alice: 7 rounds, 14 messages, 3.00 MiB sent, 512 B received",
        "  bob: 7 rounds, 14 messages, 512 B sent, 3.00 MiB received",
    ]
    SmpcCLI.after_predict(SimpleNamespace(trainer=SimpleNamespace(strategy=strategy)))  # type: ignore[arg-type]
    assert capsys.readouterr().out == report + "\n"
    assert format_secure_report(SimpleNamespace(revealed_metrics={})) == "revealed: nothing"


@needs_data
@pytest.mark.skipif(
    not (hasattr(lightning_smpc, "SecurePredictStrategy") and SECURE_CONFIG.is_file()),
    reason="SecurePredictStrategy / configs/secure_predict.yaml not available yet",
)
def test_secure_predict_prints_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["fit", *_args(tmp_path), "--trainer.max_epochs", "1", "--model.lr", "0.1"])
    (ckpt,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    capsys.readouterr()
    main(["predict", *_args(tmp_path, "--config", str(SECURE_CONFIG)), "--ckpt_path", str(ckpt)])
    out = capsys.readouterr().out
    assert "revealed:" in out and "rounds" in out
    assert "cost by layer (top 8):" in out and "fc1" in out  # issue 19.2: the costliest layers
