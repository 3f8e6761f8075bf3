"""SecureAccuracy / secure_accuracy against torchmetrics' MulticlassAccuracy, on secret-shared logits."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from lightning_smpc import SecureAccuracy, secure_accuracy
from lightning_smpc.mpc import Session

pytestmark = pytest.mark.filterwarnings("ignore:SeededTestPRG:UserWarning")
PARTIES = {2: ("alice", "bob"), 3: ("alice", "bob", "carol")}


def make_session(n_parties: int = 2, seed: int = 0) -> Session:
    """A seeded (deterministic, insecure) session with the crypto provider "crypto_provider"."""
    return Session(parties=PARTIES[n_parties], crypto_provider="crypto_provider", seed=seed)


@st.composite
def accuracy_cases(draw):
    """(num_classes, [(logits, targets) per update() call]).

    Logits are small multiples of a step, so rows often hold tied maxima; the targets come from a random
    subset of the classes, so some classes are often missing from the targets.
    """
    c = draw(st.integers(2, 6))
    sizes = draw(st.lists(st.integers(1, 10), min_size=1, max_size=3))
    present = draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=c, unique=True))
    step = draw(st.sampled_from([0.25, 1.0, 3.5]))
    chunks = []
    for n in sizes:
        logits = draw(st.lists(st.integers(-4, 4), min_size=n * c, max_size=n * c))
        targets = draw(st.lists(st.sampled_from(present), min_size=n, max_size=n))
        chunks.append((torch.tensor(logits, dtype=torch.float32).reshape(n, c) * step, torch.tensor(targets)))
    return c, chunks


def _share(session, logits: torch.Tensor, targets: torch.Tensor, c: int):
    onehot = torch.nn.functional.one_hot(targets, c).to(torch.float32)
    return session.share(logits), session.share(onehot, frac_bits=0)


def _reveals(session) -> list:
    return [r for r in session.comm.records if r.kind == "reveal"]


@pytest.mark.parametrize("average", ["micro", "macro"])
@settings(max_examples=15, deadline=None)
@given(case=accuracy_cases())
def test_matches_torchmetrics_over_several_updates(average: str, case) -> None:
    c, chunks = case
    session = make_session(2, seed=0)
    secure = SecureAccuracy(num_classes=c, average=average)
    reference = MulticlassAccuracy(num_classes=c, average=average)
    for logits, targets in chunks:
        secure.update(*_share(session, logits, targets, c))
        reference.update(logits, targets)
    assert _reveals(session) == []  # update() reveals nothing
    value = secure.compute()
    expected = reference.compute()
    assert torch.equal(value, expected), (value, expected)
    assert secure.total == sum(len(t) for _, t in chunks)
    # the functional form on everything at once
    logits = torch.cat([lg for lg, _ in chunks])
    targets = torch.cat([t for _, t in chunks])
    functional = secure_accuracy(*_share(session, logits, targets, c), num_classes=c, average=average)
    assert torch.equal(functional, multiclass_accuracy(logits, targets, num_classes=c, average=average))


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_ties_resolve_to_the_first_index(average: str) -> None:
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 3.0, 3.0], [0.5, 0.5, 0.5]])
    targets = torch.tensor([0, 1, 0, 2])  # first three hit only if ties go to the lowest index
    session = make_session(3, seed=1)
    value = secure_accuracy(*_share(session, logits, targets, 3), num_classes=3, average=average)
    assert torch.equal(value, multiclass_accuracy(logits, targets, num_classes=3, average=average))
    if average == "micro":
        assert value.item() == 0.75


def test_forward_returns_none_and_reveals_nothing() -> None:
    session = make_session(2, seed=0)
    logits, targets = torch.randn(6, 4), torch.randint(0, 4, (6,))
    metric = SecureAccuracy(num_classes=4)
    assert metric(*_share(session, logits, targets, 4)) is None
    assert metric.forward(*_share(session, logits, targets, 4)) is None
    assert _reveals(session) == [] and session.ledger == []
    assert metric.update_count == 2 and int(metric.total) == 12
    expected = MulticlassAccuracy(num_classes=4, average="micro")(torch.cat([logits, logits]), torch.cat([targets, targets]))
    assert torch.equal(metric.compute(), expected)
    assert len(_reveals(session)) == 1  # compute() reveals the number of correct predictions, once
    assert [str(r) for r in session.ledger] == ["accuracy (scalar) to model owner"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 1}, "Expected argument `num_classes` to be an integer larger than 1, but got 1"),
        ({"num_classes": 3, "average": "weighted"}, "Expected argument `average` to be one of ('micro', 'macro'), but got 'weighted'"),
        ({"num_classes": 3, "average": "none"}, "Expected argument `average` to be one of"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        SecureAccuracy(**kwargs)
    assert message in str(info.value)
    if "average" not in kwargs:  # the same wording as torchmetrics
        with pytest.raises(ValueError) as tm:
            MulticlassAccuracy(**kwargs)
        assert str(tm.value) in str(info.value)


def test_plaintext_inputs_are_refused() -> None:
    session = make_session(2, seed=0)
    logits, targets = torch.randn(5, 3), torch.randint(0, 3, (5,))
    shared_logits, shared_targets = _share(session, logits, targets, 3)
    metric = SecureAccuracy(num_classes=3)
    for preds, target in [(logits, targets), (logits, shared_targets), (shared_logits, targets)]:
        with pytest.raises(TypeError, match="ShareTensor"):
            metric.update(preds, target)
    with pytest.raises(TypeError):
        secure_accuracy(logits, torch.nn.functional.one_hot(targets, 3).float(), num_classes=3)
    with pytest.raises(ValueError, match="one-hot"):  # integer labels must be one-hot encoded before sharing
        metric.update(shared_logits, session.share(targets.float(), frac_bits=0))
