"""SecureAccuracy / secure_accuracy against torchmetrics' MulticlassAccuracy, on secret-shared logits."""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from lightning_smpc import SecureAccuracy, secure_accuracy
from lightning_smpc.mpc import COSTS, Session
from lightning_smpc.mpc.division import divide_cost

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


def exact_macro(logits: torch.Tensor, targets: torch.Tensor, c: int, f: int = 16) -> tuple[Fraction, bool]:
    """torchmetrics' macro accuracy in exact arithmetic: the mean of the recalls ``tp / tc`` (0 when ``tc = 0``)
    over the classes with ``tp + fp + fn > 0`` (a class that is predicted but never a target counts, with 0).
    Also: whether every recall is a multiple of ``2^-f`` (then the secure value is exactly ``floor(M 2^f) / 2^f``)."""
    preds = logits.argmax(1)  # ties: the first index, as torchmetrics
    recalls, included, representable = Fraction(0), 0, True
    for k in range(c):
        tc, pc = int((targets == k).sum()), int((preds == k).sum())
        tp = int(((preds == k) & (targets == k)).sum())
        included += (tp + (pc - tp) + (tc - tp)) > 0
        if tc:
            recalls += Fraction(tp, tc)
            representable &= (tp << f) % tc == 0
    return recalls / included, representable


def assert_within_bound(value: torch.Tensor, exact: tuple[Fraction, bool], reference: torch.Tensor,
                        f: int = 16) -> None:
    """The documented error: ``value = floor(M 2^f) / 2^f`` or one step ``2^-f`` below (exactly the former when
    every recall is a multiple of ``2^-f``); so also within ``2^(1-f)`` of torchmetrics' float32 value (plus its
    own float32 rounding)."""
    m, representable = exact
    assert value.dtype == torch.float32 and value.shape == ()
    steps = Fraction(value.item()) * 2**f
    assert steps.denominator == 1, value
    top = (m * 2**f).__floor__()
    assert (top if representable else top - 1) <= steps <= top, (value.item(), float(m))
    assert abs(value.item() - reference.item()) < 2 ** (1 - f) + 1e-6


@pytest.mark.parametrize(
    ("average", "reveal_per_class"), [("micro", False), ("macro", True)], ids=["micro", "macro-per-class"]
)
@settings(max_examples=15, deadline=None)
@given(case=accuracy_cases())
def test_matches_torchmetrics_over_several_updates(average: str, reveal_per_class: bool, case) -> None:
    """Where counts are revealed (micro: the correct count; macro opted in: per-class counts) the value is
    torchmetrics' own float32 reduction of them: bit-identical."""
    c, chunks = case
    session = make_session(2, seed=0)
    secure = SecureAccuracy(num_classes=c, average=average, reveal_per_class=reveal_per_class)
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
    functional = secure_accuracy(*_share(session, logits, targets, c), num_classes=c, average=average,
                                 reveal_per_class=reveal_per_class)
    assert torch.equal(functional, multiclass_accuracy(logits, targets, num_classes=c, average=average))


@pytest.mark.parametrize("n_parties", [2, 3], ids=["2pc", "3pc"])
@settings(max_examples=15, deadline=None)
@given(case=accuracy_cases())
def test_macro_on_shares_matches_torchmetrics_within_the_bound(n_parties: int, case) -> None:
    """Default macro: computed on shares, only the scalar revealed; within the documented error of the exact
    value and of torchmetrics (missing classes, predicted-only classes and ties included)."""
    c, chunks = case
    session = make_session(n_parties, seed=c)
    secure = SecureAccuracy(num_classes=c, average="macro")
    reference = MulticlassAccuracy(num_classes=c, average="macro")
    for logits, targets in chunks:
        secure.update(*_share(session, logits, targets, c))
        reference.update(logits, targets)
    logits = torch.cat([lg for lg, _ in chunks])
    targets = torch.cat([t for _, t in chunks])
    assert_within_bound(secure.compute(), exact_macro(logits, targets, c), reference.compute())
    assert [(r.shapes, r.to) for r in _reveals(session)] == [(((),), ("model owner",))]
    assert not hasattr(secure, "correct")  # the correct count is not revealed on this path
    functional = secure_accuracy(*_share(session, logits, targets, c), num_classes=c, average="macro")
    reference_once = multiclass_accuracy(logits, targets, num_classes=c, average="macro")
    assert_within_bound(functional, exact_macro(logits, targets, c), reference_once)


@pytest.mark.parametrize(("c", "labels", "expected"), [(3, [0, 1, 1], 0.5), (4, [0, 1, 1], 0.5), (3, [0, 1, 2], 1.0)])
def test_macro_class_weights_follow_torchmetrics(c: int, labels: list, expected: float) -> None:
    """Predictions 0, 1, 2. Labels 0, 1, 1: recalls 1, 1/2 and 0 for class 2 (predicted, never a target: it
    counts); with c = 4, class 3 (neither predicted nor a target) is left out. Labels 0, 1, 2: all correct, the
    top of the quotient's range. Exactly representable, so exact."""
    logits = torch.eye(c)[[0, 1, 2]] * 2.0
    targets = torch.tensor(labels)
    session = make_session(2, seed=2)
    value = secure_accuracy(*_share(session, logits, targets, c), num_classes=c, average="macro")
    assert value.item() == expected == multiclass_accuracy(logits, targets, num_classes=c, average="macro").item()


@pytest.mark.parametrize("n_parties", [2, 3], ids=["2pc", "3pc"])
def test_macro_reveals_one_scalar_unless_per_class_is_opted_in(n_parties: int) -> None:
    logits, targets = torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 1, 3] * 3)
    expected = multiclass_accuracy(logits, targets, num_classes=4, average="macro")

    session = make_session(n_parties, seed=0)
    metric = SecureAccuracy(num_classes=4, average="macro")
    metric.update(*_share(session, logits, targets, 4))
    assert_within_bound(metric.compute(), exact_macro(logits, targets, 4), expected)
    assert [str(r) for r in session.ledger] == ["accuracy (scalar) to model owner"]
    assert [r.shapes for r in _reveals(session)] == [((),)]
    assert not hasattr(metric, "correct")

    session = make_session(n_parties, seed=0)
    metric = SecureAccuracy(num_classes=4, average="macro", reveal_per_class=True)
    metric.update(*_share(session, logits, targets, 4))
    assert torch.equal(metric.compute(), expected)
    assert [str(r) for r in session.ledger] == [
        "accuracy.true_positives (shape 4) to model owner",
        "accuracy.predicted_per_class (shape 4) to model owner",
        "accuracy.targets_per_class (shape 4) to model owner",
    ]
    assert [r.shapes for r in _reveals(session)] == [((4,),)] * 3
    assert metric.correct == int((logits.argmax(1) == targets).sum())


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_ties_resolve_to_the_first_index(average: str) -> None:
    logits = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 3.0, 3.0], [0.5, 0.5, 0.5]])
    targets = torch.tensor([0, 1, 0, 2])  # first three hit only if ties go to the lowest index
    session = make_session(3, seed=1)
    value = secure_accuracy(*_share(session, logits, targets, 3), num_classes=3, average=average)
    expected = multiclass_accuracy(logits, targets, num_classes=3, average=average)
    if average == "micro":
        assert torch.equal(value, expected) and value.item() == 0.75
    else:
        assert_within_bound(value, exact_macro(logits, targets, 3), expected)


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
        ({"num_classes": 3, "reveal_per_class": True}, "applies to average='macro' only"),
        ({"num_classes": 3, "average": "macro", "reveal_per_class": 1}, "to be a bool"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        SecureAccuracy(**kwargs)
    assert message in str(info.value)
    if set(kwargs) == {"num_classes"}:  # the same wording as torchmetrics
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


def test_macro_on_shares_refuses_classes_beyond_the_comparison_range() -> None:
    """The mean's division compares values up to ``C * 2**precision_bits``: it must stay below ``2**compare_bits``."""
    session = Session(parties=PARTIES[2], crypto_provider="crypto_provider", precision_bits=28, compare_bits=32, seed=0)
    logits, targets = torch.randn(5, 16).clamp(-3, 3), torch.randint(0, 16, (5,))
    metric = SecureAccuracy(num_classes=16, average="macro")
    metric.update(*_share(session, logits, targets, 16))
    with pytest.raises(ValueError, match="num_classes \\* 2\\*\\*precision_bits < 2\\*\\*compare_bits"):
        metric.compute()
    assert session.ledger == []


@pytest.mark.parametrize(("n_parties", "bytes_sent"), [(2, 3876), (3, 7752)], ids=["2pc", "3pc"])
def test_macro_cost_for_ten_classes(n_parties: int, bytes_sent: int) -> None:
    """The cost the docstring states: one comparison of 2C flags, a 17-bit division of C elements and one of a
    single element (207 rounds with the default 4-bit comparison digits), then the one reveal (each party sends its 8-byte share to the receiver)."""
    session = make_session(n_parties, seed=0)
    logits, targets = torch.randn(50, 10, generator=torch.Generator().manual_seed(1)), torch.arange(50) % 7
    metric = SecureAccuracy(num_classes=10, average="macro")
    metric.update(*_share(session, logits, targets, 10))
    rounds, sent = session.comm.rounds, {p: v["bytes_sent"] for p, v in session.comm.stats().items()}
    metric.compute()
    declared = [COSTS["compare_bit"].bytes_sent(n_parties, numel=20), divide_cost(n_parties, 10, 17)["bytes_sent"],
                divide_cost(n_parties, 1, 17)["bytes_sent"]]
    assert sum(declared) == bytes_sent
    assert session.comm.rounds - rounds == 5 + 101 + 101 + 1
    for p in session.parties:
        assert session.comm.stats()[p]["bytes_sent"] - sent[p] == bytes_sent + 8
