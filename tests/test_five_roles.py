"""Issue 18.1: the seed's five roles as processes. The model owner's server and the client run outside the compute
parties, each in a process of its own that only provides its inputs and receives its release; labels, metrics, the
ledger and the compute parties' traffic equal the simulated runtime with the same roles."""
from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_smpc import SecureAccuracy, SecurePredictStrategy, save_model_shares
from lightning_smpc.mnist import MNISTClassifier
from lightning_smpc.mpc.errors import PartyConfigError

pytestmark = pytest.mark.filterwarnings("ignore")
X = torch.randn(70, 1, 28, 28, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (70,), generator=torch.Generator().manual_seed(1))
FIVE = dict(model_owner_party="server", client_party="client")


def _model() -> MNISTClassifier:
    torch.manual_seed(0)
    return MNISTClassifier().eval()


def _run(runtime: str, model=None, reveal: str = "labels", **kwargs):
    chosen = {k: kwargs.pop(k) for k in FIVE if k in kwargs}
    roles = {**FIVE, **chosen} if runtime == "distributed" else dict(seed=0, model_owner="server", client="client")
    strategy = SecurePredictStrategy(runtime=runtime, reveal=reveal, **roles, **kwargs,
                                     metrics={"accuracy": SecureAccuracy(num_classes=10)})
    out = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False).predict(
        model or _model(), DataLoader(TensorDataset(X, Y), batch_size=30))  # 30, 30, 10: streamed, then a new shape
    return strategy, out


@pytest.fixture(scope="module")
def simulated():
    return _run("simulated")


@pytest.mark.parametrize("preprocess", [True, False], ids=["streamed", "inline"])
def test_five_roles_as_processes_equal_the_simulated_runtime(simulated, preprocess: bool) -> None:
    sim, sim_out = simulated
    dist, out = _run("distributed", preprocess=preprocess)
    labels = torch.cat(out)
    with torch.no_grad():
        plain = _model()(X).argmax(-1)
    assert torch.equal(labels, torch.cat(sim_out)) and (labels == plain).float().mean() >= 0.98
    assert dist.revealed_counts == sim.revealed_counts == {"accuracy": (int((plain == Y).sum()), 70)}
    assert [str(r) for r in dist.reveal_ledger] == [str(r) for r in sim.reveal_ledger]
    assert str(dist.reveal_ledger[-1]) == "accuracy (scalar) to server"
    assert dist.comm_stats() == sim.comm_stats()  # the compute parties' traffic, party by party
    reports = dist.process_reports
    assert [reports[r].role for r in sorted(reports)] == ["alice", "bob", "server", "client", "crypto_provider"]
    server, client = reports[2], reports[3]
    assert [r.name for r in server.learned] == ["accuracy"] and server.predictions is None
    assert {r.name for r in client.learned} == {"predicted labels"} and not client.revealed_metrics
    n_weights = sum(p.numel() for p in _model().parameters())
    assert server.traffic["bytes_sent"] == 2 * 8 * n_weights  # W - B once to each party
    assert client.traffic["bytes_sent"] == 2 * 8 * 70 * (28 * 28 + 10)  # x - A and the one-hot targets
    if preprocess:  # the second batch's material was streamed (the client's mask indices moved on with it)
        assert reports[0].dealer_requests["requests_from_store"] > 0


def test_logits_and_metrics_only(simulated) -> None:
    dist, out = _run("distributed", reveal="logits")
    sim, sim_out = _run("simulated", reveal="logits")
    assert torch.allclose(torch.cat(out), torch.cat(sim_out).float(), atol=1e-4)
    dist, out = _run("distributed", reveal="metrics")
    assert dist.revealed_counts == simulated[0].revealed_counts
    assert all(o is None for o in (out or []))  # predictions stay secret: only the server's metric is revealed


def test_a_server_that_shared_once_need_not_send_anything(tmp_path) -> None:
    """With kept model shares the server's process sends nothing; the labels are those of sharing afresh."""
    save_model_shares(_model(), tmp_path, parties=("alice", "bob"))
    blank = MNISTClassifier()
    with torch.no_grad():
        for p in blank.parameters():
            p.fill_(float("nan"))
    dist, out = _run("distributed", model=blank, model_shares=str(tmp_path))
    with torch.no_grad():
        plain = _model()(X).argmax(-1)
    assert (torch.cat(out) == plain).float().mean() >= 0.98
    assert dist.process_reports[2].traffic["bytes_sent"] == 0
    # the server offline: no process of its own; alice (a compute party) learns the metrics, the client stays outside
    dist, out = _run("distributed", model=blank, model_shares=str(tmp_path), model_owner_party="alice")
    assert [dist.process_reports[r].role for r in sorted(dist.process_reports)] == ["alice", "bob", "client", "crypto_provider"]
    assert (torch.cat(out) == plain).float().mean() >= 0.98
    assert dist.revealed_counts == {"accuracy": (int((plain == Y).sum()), 70)}


def test_the_clients_own_error_keeps_its_type_in_its_process() -> None:
    bad = DataLoader(TensorDataset(X, torch.full((70,), 12)), batch_size=30)
    strategy = SecurePredictStrategy(runtime="distributed", reveal="labels", **FIVE,
                                     metrics={"accuracy": SecureAccuracy(num_classes=10)})
    with pytest.raises(ValueError, match="client.*num_classes=10"):
        Trainer(strategy=strategy, logger=False, enable_progress_bar=False).predict(_model(), bad)


@pytest.mark.parametrize("private", ["data", "model"])
def test_one_side_private_modes_with_five_roles(private: str) -> None:
    """The server sends its weights in clear (``"data"``) or the client its inputs (``"model"``), to the parties only."""
    dist, out = _run("distributed", private=private)
    sim, sim_out = _run("simulated", private=private)
    assert torch.equal(torch.cat(out), torch.cat(sim_out))
    assert dist.revealed_counts == sim.revealed_counts
    assert [str(r) for r in dist.reveal_ledger] == [str(r) for r in sim.reveal_ledger]
    assert dist.comm_stats() == sim.comm_stats()
    server, client = dist.process_reports[2], dist.process_reports[3]
    if private == "data":  # nothing masked from the server: its weights went in clear
        assert server.traffic["bytes_sent"] == 0
    else:  # only the one-hot targets are masked from the client
        assert client.traffic["bytes_sent"] == 2 * 8 * 70 * 10


def test_roles_are_named_and_configurations_checked() -> None:
    s = SecurePredictStrategy(runtime="distributed", **FIVE)
    assert s.num_processes == 5 and [s.role_name(r) for r in range(5)] == ["alice", "bob", "server", "client",
                                                                            "crypto_provider"]
    with pytest.raises(PartyConfigError, match="never the crypto provider"):
        SecurePredictStrategy(model_owner_party="crypto_provider")
