"""Shared fixtures: MPC sessions for 2 and 3 compute parties with the deterministic (seeded) test PRG."""
from __future__ import annotations

import pytest

PARTY_NAMES = {2: ("alice", "bob"), 3: ("alice", "bob", "carol")}
DEALER = "crypto_provider"

# The seeded PRG warns on purpose (it is not secure); the tests use it for reproducibility.
SEEDED_PRG_WARNING = "ignore:SeededTestPRG:UserWarning"


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", SEEDED_PRG_WARNING)


def new_session(n_parties: int = 2, seed: int | None = 0, **kwargs):
    """A ``Session`` with ``n_parties`` compute parties (alice, bob[, carol]) and the crypto provider."""
    from lightning_smpc.mpc import Session

    return Session(parties=PARTY_NAMES[n_parties], crypto_provider=DEALER, seed=seed, **kwargs)


@pytest.fixture(params=[2, 3], ids=["2pc", "3pc"])
def n_parties(request) -> int:
    return request.param


@pytest.fixture
def session(n_parties):
    """A seeded ``Session`` with 2 or 3 compute parties (the test runs once for each)."""
    return new_session(n_parties, seed=1234)


@pytest.fixture(scope="session")
def make_session():
    """Factory ``make_session(n_parties=2, seed=0, **session_kwargs)``; session-scoped, so hypothesis tests can
    use it (it holds no state)."""
    return new_session


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run a module's tests with one intra-op torch thread (restored afterwards).

    The MPC tests run thousands of tiny tensor ops; intra-op threads only add overhead there, and when the CPU is
    shared (other jobs on the 2 cores) OpenMP barriers can turn a 7 ms secure conv2d into 1-2 s.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
