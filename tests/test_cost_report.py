"""Issue 19.2: the per-layer cost profile (seconds, rounds, bytes per party per layer and protocol step), in both
runtimes: its rows sum to the run's traffic, and it reaches the trainer's logger (CSVLogger, TensorBoardLogger)."""
from __future__ import annotations

import csv
import struct
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_smpc import SecureAccuracy, SecurePredictStrategy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
pytestmark = pytest.mark.filterwarnings("ignore")
X = torch.randn(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(1))


def _run(runtime: str = "simulated", logger=False, **kwargs):
    from mnist_cnn import LeNet

    strategy = SecurePredictStrategy(runtime=runtime, reveal="labels", metrics={"accuracy": SecureAccuracy(num_classes=10)},
                                     **kwargs)
    Trainer(strategy=strategy, logger=logger, enable_progress_bar=False, enable_model_summary=False).predict(
        LeNet(), DataLoader(TensorDataset(X, Y), batch_size=20))
    return strategy


@pytest.mark.parametrize("runtime", ["simulated", "distributed"])
def test_the_rows_sum_to_the_runs_traffic(runtime: str) -> None:
    strategy = _run(runtime)
    report = strategy.cost_report()
    totals, stats = report.totals(), strategy.comm_stats()
    for party in ("alice", "bob"):
        assert totals[party] == stats[party]  # every round counted under one layer or phase
    layers = {r["layer"] for r in report.by_layer()}
    assert {"conv1", "conv2", "fc1", "fc3", "(forward)", "(share weights)", "(share inputs)", "(metrics)"} <= layers
    steps = {r.step for r in report.rows if r.layer == "(forward)"}
    assert any("relu" in s for s in steps) and "(local)" in steps, steps  # the functional ReLUs and max-pools
    assert report.seconds > 0
    if runtime == "simulated":  # one process: the rows' time is the clocked part of its run
        assert report.seconds <= strategy.timings["in_party_seconds"]
        assert report.seconds >= 0.8 * strategy.timings["in_party_seconds"]
    text = str(report)
    assert "conv1" in text and "MB sent alice" in text


def test_csv_logger_receives_the_profile(tmp_path: Path) -> None:
    _run(logger=CSVLogger(tmp_path, name="run"))
    (path,) = tmp_path.glob("run/version_*/metrics.csv")
    header = next(csv.reader(path.open()))
    assert "cost/conv1/seconds" in header and "cost/fc1/alice/bytes_sent" in header, header


def _event_tags(path: Path) -> set:
    from tensorboardX.proto import event_pb2

    tags, data = set(), path.read_bytes()
    pos = 0
    while pos < len(data):  # TFRecord: length, crc, payload, crc
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[pos + 12:pos + 12 + n])
        tags |= {v.tag for v in event.summary.value}
        pos += 12 + n + 4
    return tags


def test_tensorboard_logger_receives_the_profile(tmp_path: Path) -> None:
    _run(logger=TensorBoardLogger(tmp_path, name="run"))
    (path,) = tmp_path.glob("run/version_*/events.out.tfevents.*")
    tags = _event_tags(path)
    assert "cost/conv1/seconds" in tags and "cost/fc1/bob/rounds" in tags, sorted(tags)[:10]


def test_spawned_roles_log_the_merged_profile_in_your_process(tmp_path: Path) -> None:
    _run("distributed", logger=CSVLogger(tmp_path, name="run"))
    (path,) = tmp_path.glob("run/version_*/metrics.csv")  # one log, written by your process
    header = next(csv.reader(path.open()))
    assert "cost/fc1/alice/bytes_sent" in header and "cost/fc1/bob/bytes_sent" in header, header
    assert "secure_accuracy" in header  # the metric revealed to the model owner, reported back to your process


def test_the_chart_is_saved(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _run().cost_report().save_chart(str(tmp_path / "cost.png"))
    assert (tmp_path / "cost.png").stat().st_size > 1000
