"""Issue 19.1: the pre-flight fidelity report (``lightning_smpc.preflight`` and ``SecurePredictStrategy(preflight=...)``).

The "loud" MLP's hidden activations reach ~1e5: at the defaults its ReLU inputs leave the comparison range and the
secure labels silently agree with plaintext on ~85 % of inputs. The pre-flight names the layer and suggests
settings with which they agree on all.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_smpc import PreflightError, SecurePredictStrategy, preflight
from lightning_smpc.mnist import MNISTClassifier
from lightning_smpc.mpc.limits import LIMITS
from lightning_smpc.mpc.tensor import OP_FAMILY, OP_LIMIT

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
pytestmark = pytest.mark.filterwarnings("ignore")


class Loud(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(20, 64), nn.Linear(64, 10)
        with torch.no_grad():  # hidden activations of ~1e5 (weights still inside the encoding range)
            self.fc1.weight.mul_(40000)
            self.fc1.bias.mul_(40000)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


X = torch.randn(500, 20, generator=torch.Generator().manual_seed(1))


def _secure_labels(model, x, **settings) -> torch.Tensor:
    strategy = SecurePredictStrategy(reveal="labels", **settings)
    trainer = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False)
    return torch.cat(trainer.predict(model, DataLoader(TensorDataset(x), batch_size=250)))


def test_the_loud_mlp_is_flagged_with_its_layer_and_settings_that_work() -> None:
    model = Loud()
    report = preflight(model, X[:64])
    assert not report.ok
    bad = [r for r in report.rows if not r.ok]
    assert [(r.op, r.limit, r.source) for r in bad] == [("F.relu", "compare", "fc1")]
    assert bad[0].max_abs > 2**16 and bad[0].headroom_bits < 0
    assert "fc1" in report.message() and "compare_bits=36" in report.message()
    assert (report.suggested_precision_bits, report.suggested_compare_bits) == (16, 36)
    with torch.no_grad():
        plain = model(X).argmax(-1)
    silently_wrong = (_secure_labels(model, X) == plain).float().mean()
    fixed = (_secure_labels(model, X, precision_bits=16, compare_bits=36) == plain).float().mean()
    assert silently_wrong < 0.98 and fixed == 1.0


def test_the_seed_mlp_and_the_example_models_are_ok() -> None:
    from mnist_cnn import LeNet
    from mnist_vit import ViT

    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for model in (MNISTClassifier(), LeNet(), ViT()):
        report = preflight(model, x)
        assert report.ok, str(report)
        assert (report.suggested_precision_bits, report.suggested_compare_bits) == (16, 32)
        assert report.output_error < 1e-2 and report.label_agreement >= 0.95
    limits = {r.limit for r in report.rows}  # the ViT: its smooth functions and softmax are checked too
    assert {"compare", "pairwise", "product", "variance", "encoding"} <= limits, limits


def test_the_report_prints_a_table_and_converts_to_a_dict() -> None:
    report = preflight(Loud(), (X[:32], torch.zeros(32, dtype=torch.long)))
    text = str(report)
    assert "OUT OF RANGE" in text and "F.relu" in text and "headroom" in text
    d = report.to_dict()
    assert d["ok"] is False and d["suggested_compare_bits"] == 36 and len(d["rows"]) == len(report.rows)


def test_the_strategy_refuses_before_anything_is_shared() -> None:
    strategy = SecurePredictStrategy(reveal="labels", preflight=(X[:64],))
    with pytest.raises(PreflightError, match="(?s)fc1.*compare_bits=36"):
        Trainer(strategy=strategy, logger=False, enable_progress_bar=False).predict(
            Loud(), DataLoader(TensorDataset(X), batch_size=250))
    assert strategy.session is None  # refused in setup: no session, nothing shared
    assert not strategy.preflight_report.ok


def test_preflight_true_checks_the_first_predict_batch() -> None:
    strategy = SecurePredictStrategy(reveal="labels", preflight=True, precision_bits=16, compare_bits=36)
    Trainer(strategy=strategy, logger=False, enable_progress_bar=False).predict(
        Loud(), DataLoader(TensorDataset(X), batch_size=250))
    assert strategy.preflight_report.ok and strategy.preflight_report.batches == 1


def test_parties_as_processes_refuse_in_your_process_before_any_role_starts(monkeypatch) -> None:
    import lightning_smpc.launcher as launcher

    started = []
    monkeypatch.setattr(launcher.mp, "get_context", lambda *a: started.append(1))  # no role process may start
    strategy = SecurePredictStrategy(runtime="distributed", reveal="labels", preflight=True)
    with pytest.raises(PreflightError, match="fc1"):
        Trainer(strategy=strategy, logger=False, enable_progress_bar=False).predict(
            Loud(), DataLoader(TensorDataset(X), batch_size=250))
    assert started == []


def test_every_op_that_compares_or_multiplies_declares_its_limit() -> None:
    """A new comparison, product or approximated function must say which range it needs (or preflight misses it)."""
    needs = {"nonlinear", "smooth", "bilinear"}
    exempt = {"masked_fill", "multi_head_attention_forward"}  # a public mask; MHA's parts are checked one by one
    missing = [f for f, fam in OP_FAMILY.items()
               if fam in needs and f not in OP_LIMIT and not any(e in getattr(f, "__name__", "") for e in exempt)]
    assert missing == [], missing
    assert set(OP_LIMIT.values()) <= set(LIMITS)


def test_with_ckpt_path_the_check_sees_the_checkpoints_weights(tmp_path) -> None:
    """predict spawning the roles: the check runs in your process before the roles restore ``ckpt_path``, on a copy
    of the model with the checkpoint's weights (here the loud ones; the instance passed is all zeros)."""
    import lightning

    torch.save({"state_dict": Loud().state_dict(), "pytorch-lightning_version": lightning.__version__},
               tmp_path / "loud.ckpt")
    quiet = Loud()
    with torch.no_grad():
        for p in quiet.parameters():
            p.zero_()
    strategy = SecurePredictStrategy(runtime="distributed", reveal="labels", preflight=True)
    with pytest.raises(PreflightError, match="fc1"):
        Trainer(strategy=strategy, logger=False, enable_progress_bar=False).predict(
            quiet, DataLoader(TensorDataset(X), batch_size=250), ckpt_path=str(tmp_path / "loud.ckpt"))
    assert all(float(p.abs().sum()) == 0 for p in quiet.parameters())  # your instance is untouched
