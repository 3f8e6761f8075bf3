"""The preprocessing store is sized from the batches the predict loop runs, and never fails a run (issue 8.7).

Before: the store was sized from ``len(loader.dataset)``, so a sampler or ``limit_predict_batches`` that yields
fewer items left material in the store that the next (short or missing) batch did not match: DealerStoreError.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Sampler, SubsetRandomSampler, TensorDataset

from lightning_smpc import SecurePredictStrategy

pytestmark = pytest.mark.filterwarnings("ignore:SeededTestPRG:UserWarning")


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


X = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))


def _predict(loader, **trainer_kwargs):
    model = Tiny()
    strategy = SecurePredictStrategy(reveal="logits", seed=0)
    trainer = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs)
    out = torch.cat(trainer.predict(model, loader))
    return model, strategy, out


def _check(model, strategy, out, inputs, discards: int) -> None:
    with torch.no_grad():
        plain = model(inputs)
    assert out.shape == plain.shape and torch.allclose(out, plain, atol=1e-3)
    dealer = strategy.session.stats()["dealer"]
    assert dealer["requests_from_store"] > 0  # preprocessing did serve batches
    assert dealer["store_discards"] == discards
    assert strategy.session.dealer.store_size == 0  # nothing generated that no batch used


def test_sampler_with_fewer_items_than_the_dataset() -> None:
    indices = list(range(40))  # 2 full batches of 16 and a short one of 8, from a 64-item dataset
    loader = DataLoader(TensorDataset(X), batch_size=16, sampler=SubsetRandomSampler(indices, torch.Generator().manual_seed(0)))
    order = list(iter(SubsetRandomSampler(indices, torch.Generator().manual_seed(0))))
    model, strategy, out = _predict(loader)
    _check(model, strategy, out, X[order], discards=0)


def test_limit_predict_batches() -> None:
    loader = DataLoader(TensorDataset(X), batch_size=16)  # 4 batches, the loop runs 2
    model, strategy, out = _predict(loader, limit_predict_batches=2)
    _check(model, strategy, out, X[:32], discards=0)


def test_an_unforeseen_short_batch_falls_back_to_inline_dealer_work() -> None:
    """Batch sizes the strategy cannot know ahead (a custom batch sampler): the mismatching batch drops the
    store and gets its material inline instead of failing; results stay exact."""
    class FixedBatches(Sampler):
        batches = [list(range(0, 16)), list(range(16, 32)), list(range(32, 40)), list(range(40, 56))]

        def __iter__(self):
            return iter(self.batches)

        def __len__(self) -> int:
            return len(self.batches)

    loader = DataLoader(TensorDataset(X), batch_sampler=FixedBatches())
    model, strategy, out = _predict(loader)
    _check(model, strategy, out, X[:56], discards=1)  # batches 3 and 4 had been preprocessed at size 16


def test_four_bit_comparison_digits_reach_the_session_with_the_same_results() -> None:
    """compare_digit_bits=4: 16-entry tables (fewer dealer bytes), one more carry level (more rounds), same labels."""
    runs = {}
    for digits in (8, 4):
        model = Tiny()
        strategy = SecurePredictStrategy(reveal="labels", seed=0, compare_digit_bits=digits)
        trainer = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False)
        labels = torch.cat(trainer.predict(model, DataLoader(TensorDataset(X), batch_size=16)))
        runs[digits] = (labels, strategy.comm_stats()["alice"]["rounds"], strategy.comm_stats(offline=True)["alice"]["bytes_received"])
    assert torch.equal(runs[8][0], runs[4][0])
    with torch.no_grad():
        assert torch.equal(runs[4][0], Tiny()(X).argmax(-1))
    assert runs[4][1] > runs[8][1] and runs[4][2] < runs[8][2]
