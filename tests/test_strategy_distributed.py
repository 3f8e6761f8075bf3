"""``SecurePredictStrategy(runtime="distributed")``: one process per compute party plus the crypto provider.

The same ``Trainer.predict`` call as the simulated runtime gives the same revealed labels, metrics, ledger and
per-party online traffic; a party that dies mid-run ends the run with an error naming it, and no process is left.
"""
from __future__ import annotations

import multiprocessing
import os
import time

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_smpc import SecureAccuracy, SecurePredictStrategy
from lightning_smpc.launcher import resolve_start_method
from lightning_smpc.mpc.distributed import PartyProcessError
from lightning_smpc.reports import DealerReport, PartyReport

pytestmark = pytest.mark.filterwarnings("ignore")
PARTIES = {2: ("alice", "bob"), 3: ("alice", "bob", "carol")}


class Tiny(LightningModule):
    def __init__(self, die_on_rank: int = -1, hang: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)
        self.die_on_rank, self.hang = die_on_rank, hang
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2 and os.environ.get("LOCAL_RANK") == str(self.die_on_rank):
            if self.hang:
                time.sleep(3600)  # a party's process hangs in the second batch
            os._exit(3)  # a party's process dies in the middle of the second batch
        return self.fc2(F.relu(self.fc1(x)))


X = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(2))


def _run(runtime: str, n: int, reveal: str = "labels", model=None, **kwargs):
    kwargs.setdefault("preprocess", False)
    strategy = SecurePredictStrategy(parties=PARTIES[n], runtime=runtime, reveal=reveal,
                                     metrics={"accuracy": SecureAccuracy(num_classes=4)}, **kwargs)
    trainer = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.predict(model or Tiny(), DataLoader(TensorDataset(X, Y), batch_size=16))
    return strategy, out


@pytest.mark.parametrize("n, start_method", [(2, None), (3, None), (2, "spawn")], ids=["2pc", "3pc", "2pc-spawn"])
def test_same_results_and_traffic_as_the_simulated_runtime(n: int, start_method) -> None:
    dist_strategy, dist_out = _run("distributed", n, start_method=start_method)
    # the same roles: the model owner is the first party, the client the last (as the distributed defaults)
    sim_strategy, sim_out = _run("simulated", n, seed=0, model_owner=PARTIES[n][0], client=PARTIES[n][-1])
    assert torch.equal(torch.cat(dist_out), torch.cat(sim_out))  # revealed labels, in the user's process
    with torch.no_grad():
        assert (torch.cat(dist_out) == Tiny()(X).argmax(-1)).float().mean() >= 0.95
    assert torch.equal(dist_strategy.revealed_metrics["accuracy"], sim_strategy.revealed_metrics["accuracy"])
    assert dist_strategy.revealed_counts == sim_strategy.revealed_counts
    client, owner = PARTIES[n][-1], PARTIES[n][0]
    assert [(r.name, r.shape, r.to) for r in dist_strategy.reveal_ledger] == \
        [(r.name, r.shape, r.to) for r in sim_strategy.reveal_ledger]
    assert {r.to for r in dist_strategy.reveal_ledger} == {(client,), (owner,)}
    dist_comm, sim_comm = dist_strategy.comm_stats(), sim_strategy.comm_stats()
    for p in PARTIES[n]:  # each process counted its own party's traffic: the same protocol, the same bytes
        assert dist_comm[p]["bytes_sent"] == sim_comm[p]["bytes_sent"] > 0
        assert dist_comm[p]["rounds"] == sim_comm[p]["rounds"]
    assert multiprocessing.active_children() == []


def test_metrics_mode_returns_nothing_that_holds_shares() -> None:
    strategy, out = _run("distributed", 2, reveal="metrics")
    assert out == [None, None, None]
    assert strategy.revealed_counts["accuracy"][1] == 40
    assert [r.name for r in strategy.reveal_ledger] == ["accuracy"]


def test_a_dying_party_ends_the_run_with_its_name_and_no_orphans() -> None:
    t0 = time.monotonic()
    with pytest.raises(PartyProcessError, match=r"bob \(rank 1\)"):
        _run("distributed", 2, model=Tiny(die_on_rank=1), timeout=20)
    assert time.monotonic() - t0 < 60
    assert multiprocessing.active_children() == []


def test_a_hanging_party_ends_the_run_within_the_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(PartyProcessError, match=r"alice \(rank 0\) stopped answering"):
        _run("distributed", 2, model=Tiny(die_on_rank=0, hang=True), timeout=8)
    assert time.monotonic() - t0 < 8 + 30  # the timeout, the settling time and the process start
    assert multiprocessing.active_children() == []


def test_start_method_forks_only_where_each_role_gets_one_core(monkeypatch) -> None:
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert resolve_start_method(None, 3) == "fork"
    monkeypatch.setattr(os, "cpu_count", lambda: 16)  # roles could use 5 threads each: forked ones could not
    assert resolve_start_method(None, 3) == "spawn"
    assert resolve_start_method("fork", 3) == "fork"
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr("sys.platform", "darwin")
    assert resolve_start_method(None, 3) == "spawn"
    with pytest.raises(ValueError, match="start_method"):
        resolve_start_method("thread", 3)
    with pytest.raises(ValueError, match="start_method"):
        SecurePredictStrategy(runtime="distributed", start_method="thread")


def test_no_fork_once_cuda_is_initialized(monkeypatch) -> None:
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert resolve_start_method(None, 3) == "spawn"
    with pytest.raises(RuntimeError, match="start_method='spawn'"):
        resolve_start_method("fork", 3)


class Uneven(Tiny):
    """Its second batch runs one more ReLU than the others: the streamed plan no longer fits."""

    def forward(self, x):
        self.calls += 1
        h = F.relu(self.fc1(x))
        if self.calls == 2:
            h = F.relu(h - 0.1)
        return self.fc2(h)


def _dealer_requests(strategy) -> dict:
    return strategy.process_reports[0].dealer_requests


def _labels_in_both_runtimes(make_model, make_loader, **distributed) -> dict:
    """The first party's dealer requests of a distributed run (``distributed``: its extra strategy arguments),
    after checking that its revealed labels equal the simulated runtime's."""
    outs, strategies = [], []
    for runtime, extra in (("distributed", distributed), ("simulated", {"seed": 0, "model_owner": "alice", "client": "bob"})):
        strategy = SecurePredictStrategy(runtime=runtime, reveal="labels", metrics={"accuracy": SecureAccuracy(num_classes=4)}, **extra)
        trainer = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False)
        outs.append(torch.cat(trainer.predict(make_model(), make_loader())))
        strategies.append(strategy)
    assert torch.equal(outs[0], outs[1])
    return _dealer_requests(strategies[0])


@pytest.mark.parametrize("n, overlap", [(2, None), (3, None), (2, True)], ids=["2pc", "3pc", "2pc-overlap"])
def test_streamed_dealer_material_gives_the_same_results_as_the_simulated_runtime(n: int, overlap) -> None:
    """preprocess=True: the dealer process streams the next batch's material (batches 16, 16, 8: the second is
    streamed, the short third is served inline), between batches or (overlap) during the first; same labels,
    metrics and online traffic as the simulated store."""
    dist_strategy, dist_out = _run("distributed", n, preprocess=True, dealer_overlap=overlap)
    sim_strategy, sim_out = _run("simulated", n, seed=0, preprocess=True, model_owner=PARTIES[n][0], client=PARTIES[n][-1])
    assert torch.equal(torch.cat(dist_out), torch.cat(sim_out))
    assert torch.equal(dist_strategy.revealed_metrics["accuracy"], sim_strategy.revealed_metrics["accuracy"])
    assert dist_strategy.comm_stats() == sim_strategy.comm_stats()
    requests = _dealer_requests(dist_strategy)
    assert requests["requests_from_store"] > 0 and requests["store_discards"] == 0, requests
    assert requests["requests_inline"] > requests["requests_from_store"]  # batches 1 and 3 inline, 2 streamed
    # batch 2's material was taken between batches, with [a] @ (W - B) of both layers folded in (offline)
    assert requests["taken_ahead"] == requests["requests_from_store"] and requests["folded_ahead"] == 2, requests
    for rank in range(n):  # each party's online seconds per batch
        assert len(dist_strategy.process_reports[rank].batch_seconds) == 3
    reports = dist_strategy.process_reports  # typed, by rank; the crypto provider's last
    assert [type(reports[r]) for r in range(n + 1)] == [PartyReport] * n + [DealerReport]
    assert [reports[r].role for r in range(n + 1)] == list(PARTIES[n]) + ["crypto_provider"]
    assert reports[0]["dealer_requests"] == reports[0].to_dict()["dealer_requests"] == requests  # the dicts they were
    assert "predictions" in reports[n - 1] and "predictions" not in reports[0]  # the client's only
    assert reports[n]["dealer"]["masks_held"] == reports[n].masks_held > 0
    assert reports[n].links["aead_seconds"] > 0  # the crypto provider's link costs (it reported {} before)


def test_a_batch_that_leaves_the_plan_drops_the_stream_and_goes_inline() -> None:
    dist_strategy, dist_out = _run("distributed", 2, preprocess=True, model=Uneven())
    sim_strategy, sim_out = _run("simulated", 2, seed=0, preprocess=True, model=Uneven(), model_owner="alice", client="bob")
    assert torch.equal(torch.cat(dist_out), torch.cat(sim_out))
    assert _dealer_requests(dist_strategy)["store_discards"] == 1
    assert dist_strategy.comm_stats() == sim_strategy.comm_stats()


def test_material_streamed_for_a_batch_that_never_comes_is_drained_at_the_end() -> None:
    """limit_predict_batches=2 of three equal batches: the client announced a third one like the second, so its
    material was streamed; the run still ends cleanly (the parties take and discard it before finishing)."""
    strategy = SecurePredictStrategy(runtime="distributed", reveal="labels", metrics={"accuracy": SecureAccuracy(num_classes=4)})
    trainer = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_predict_batches=2)
    out = trainer.predict(Tiny(), DataLoader(TensorDataset(torch.cat([X, X])[:48], torch.cat([Y, Y])[:48]), batch_size=16))
    assert len(out) == 2 and strategy.revealed_counts["accuracy"][1] == 32
    assert _dealer_requests(strategy)["requests_from_store"] > 0
    assert multiprocessing.active_children() == []


class _Batches(torch.utils.data.IterableDataset):
    """Pre-made batches of the given sizes, without a length (Lightning then fetches one batch ahead)."""

    def __init__(self, sizes) -> None:
        self.sizes = sizes

    def __iter__(self):
        start = 0
        for k in self.sizes:
            yield X[start:start + k], Y[start:start + k]
            start += k


@pytest.mark.parametrize("sizes", [(8, 8, 4, 8, 8), (4, 8, 8, 8)], ids=["iterable-mixed", "odd-first-batch"])
def test_runs_of_same_shaped_batches_are_streamed_wherever_they_start(sizes) -> None:
    """Each party takes ``next_same`` of the batch it is processing (not of one Lightning already prefetched),
    and a run of same-shaped batches after an odd one records its own plan: same labels as the simulated
    runtime, streamed material, nothing discarded."""
    requests = _labels_in_both_runtimes(Tiny, lambda: DataLoader(_Batches(sizes), batch_size=None))
    assert requests["requests_from_store"] > 0 and requests["store_discards"] == 0, requests


@pytest.mark.parametrize("overlap", [False, True], ids=["between-batches", "overlap"])
def test_every_batch_after_the_first_is_streamed_with_or_without_overlap(overlap: bool) -> None:
    """Four equal batches: the dealer process streams batches 2-4, generated while the previous batch runs
    (overlap) or after it (between batches); the parties take each between batches and fold both layers'
    [a] @ (W - B) then. Same labels as the simulated runtime."""
    requests = _labels_in_both_runtimes(Tiny, lambda: DataLoader(TensorDataset(X[:32], Y[:32]), batch_size=8),
                                        dealer_overlap=overlap)
    assert requests["store_discards"] == 0 and requests["taken_ahead"] == requests["requests_from_store"], requests
    assert requests["folded_ahead"] == 3 * 2, requests  # batches 2, 3, 4; two linear layers each


@pytest.mark.parametrize("overlap", [False, True], ids=["between-batches", "overlap"])
def test_the_dealer_process_forgets_the_masks_of_finished_batches(overlap: bool) -> None:
    """The first party tells the dealer process which masks it dropped (their last handle is gone): after 8
    equal batches the dealer holds as many masks as after 4 (the weights' stay), not twice as many more."""
    held = []
    for n_batches in (4, 8):
        strategy = SecurePredictStrategy(runtime="distributed", dealer_overlap=overlap)
        trainer = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.predict(Tiny(), DataLoader(TensorDataset(X[:4 * n_batches]), batch_size=4))
        held.append(strategy.process_reports[2].masks_held)
    assert held[0] == held[1] > 0, held


class ReusesAMask(Tiny):
    """Its third batch leaves the plan with a product that reuses a mask made earlier in the same batch (the
    hidden activation's, from streamed material): the dealer process must still hold it."""

    def forward(self, x):
        self.calls += 1
        h = F.relu(self.fc1(x))
        out = self.fc2(h)
        return out + self.fc2(h) if self.calls == 3 else out


def test_a_batch_that_leaves_the_plan_can_reuse_the_masks_of_its_streamed_material() -> None:
    _labels_in_both_runtimes(ReusesAMask, lambda: DataLoader(TensorDataset(X[:32]), batch_size=8), dealer_overlap=True)


class ChangesForGood(Tiny):
    """From its third batch on, every batch runs one more ReLU (same batch shape): the plan changes for good."""

    def forward(self, x):
        self.calls += 1
        h = F.relu(self.fc1(x))
        if self.calls >= 3:
            h = F.relu(h - 0.1)
        return self.fc2(h)


@pytest.mark.parametrize("overlap", [False, True], ids=["between-batches", "overlap"])
def test_a_plan_that_changes_for_good_is_recorded_anew_not_streamed_again(overlap: bool) -> None:
    """The batch that leaves the plan drops its stream once; the next batch records the new plan, which is
    streamed from then on (the stale plan is not generated, taken and dropped batch after batch)."""
    requests = _labels_in_both_runtimes(ChangesForGood, lambda: DataLoader(TensorDataset(X[:40]), batch_size=4),
                                        dealer_overlap=overlap)
    # taken ahead and folded: batches 2, 3 (dropped when it left the plan) and 5-10 (batch 4 records the new plan)
    assert requests["store_discards"] == 1 and requests["folded_ahead"] == 2 * 8, requests


class KeepsAnActivation(Tiny):
    """Keeps the hidden activation of batch 3 (its mask came from streamed material) and multiplies by it in
    batches 4-6, then drops it: the dealer must keep that mask while a plan that uses it is streamed."""

    keep = None

    def forward(self, x):
        self.calls += 1
        h = F.relu(self.fc1(x))
        out = self.fc2(h)
        if self.keep is not None:
            out = out + self.fc2(self.keep)
        if self.calls == 3:
            self.keep = h
        if self.calls == 6:
            self.keep = None
        return out


@pytest.mark.parametrize("overlap", [False, True], ids=["between-batches", "overlap"])
def test_masks_a_model_keeps_across_batches_outlive_the_batch_that_made_them(overlap: bool) -> None:
    _labels_in_both_runtimes(KeepsAnActivation, lambda: DataLoader(TensorDataset(X[:40]), batch_size=4),
                             dealer_overlap=overlap)
