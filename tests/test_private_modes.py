"""Issue 19.3: one-side-private modes. ``private="data"``: the model is public to the compute parties (its products
are local); ``private="model"``: the inputs are public. Both runtimes agree with plaintext and with each other, and
the reveal ledger states what was public."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_smpc import SecureAccuracy, SecurePredictStrategy, ShareTensor
from lightning_smpc.mnist import MNISTClassifier

pytestmark = pytest.mark.filterwarnings("ignore")
X = torch.randn(60, 1, 28, 28, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (60,), generator=torch.Generator().manual_seed(1))


def _model() -> MNISTClassifier:
    torch.manual_seed(0)
    return MNISTClassifier().eval()


def _run(private: str, runtime: str = "simulated"):
    kwargs = {} if runtime == "distributed" else dict(seed=0, model_owner="alice", client="bob")
    strategy = SecurePredictStrategy(runtime=runtime, reveal="labels", private=private,
                                     metrics={"accuracy": SecureAccuracy(num_classes=10)}, **kwargs)
    out = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False).predict(
        _model(), DataLoader(TensorDataset(X, Y), batch_size=30))
    return strategy, torch.cat(out)


@pytest.mark.parametrize("private", ["data", "model"])
def test_each_mode_agrees_with_plaintext_in_both_runtimes(private: str) -> None:
    with torch.no_grad():
        plain = _model()(X).argmax(-1)
    sim, sim_labels = _run(private)
    dist, dist_labels = _run(private, "distributed")
    assert (sim_labels == plain).float().mean() >= 0.98 and (dist_labels == plain).float().mean() >= 0.98
    assert sim.revealed_counts == dist.revealed_counts
    names = [r.name for r in sim.reveal_ledger]
    assert names == [r.name for r in dist.reveal_ledger]
    public = [r for r in sim.reveal_ledger if "public to the compute parties" in r.name]
    assert public and all(r.to == ("alice", "bob") for r in public)
    if private == "data":  # once: the weights
        assert len(public) == 1 and public[0].shape == (sum(p.numel() for p in _model().parameters()),)
    else:  # per batch: the inputs
        assert [r.shape for r in public] == [(30, 1, 28, 28)] * 2
    for p in ("alice", "bob"):  # the same protocol in both runtimes: the same traffic
        assert dist.comm_stats()[p]["bytes_sent"] == sim.comm_stats()[p]["bytes_sent"]
        assert dist.comm_stats()[p]["rounds"] == sim.comm_stats()[p]["rounds"]


def test_public_weights_are_not_shared_and_save_rounds_and_dealer_bytes() -> None:
    both, _ = _run("both")
    data, _ = _run("data")
    assert not any(isinstance(v, ShareTensor) for v in data.secure_run.shared_params.values())
    assert all(isinstance(v, ShareTensor) for v in both.secure_run.shared_params.values())
    assert data.comm_stats()["alice"]["rounds"] < both.comm_stats()["alice"]["rounds"]
    assert data.comm_stats(offline=True)["alice"]["bytes_received"] < both.comm_stats(offline=True)["alice"]["bytes_received"]


def test_public_inputs_are_not_shared() -> None:
    model, _ = _run("model")
    both, _ = _run("both")
    assert not any("input_mask" in tag and "30" in tag for tag in model.session.comm.stats_by_tag())
    assert model.comm_stats(offline=True)["alice"]["bytes_received"] < both.comm_stats(offline=True)["alice"]["bytes_received"]


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="'both', 'data' or 'model'"):
        SecurePredictStrategy(private="weights")
