"""The runtime seam (``lightning_smpc.mpc.runtime``): both runtimes implement every member with the declared
signature, and the protocols and ops use nothing of ``sess.comm`` / ``sess.dealer`` beyond the seam."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from lightning_smpc.mpc import Session
from lightning_smpc.mpc.comm import Communicator
from lightning_smpc.mpc.dealer import TrustedDealer
from lightning_smpc.mpc.distributed import DistributedCommunicator, RemoteDealer, _Runtime
from lightning_smpc.mpc.runtime import DealerHandle, Runtime, SimulatedRuntime, Transport

MPC = Path(__file__).resolve().parents[2] / "lightning_smpc" / "mpc"


def _members(protocol) -> dict:
    return {name: value for name, value in vars(protocol).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))}


def _params(fn) -> list[str]:
    fn = fn.fget if isinstance(fn, property) else fn
    return list(inspect.signature(fn).parameters)


@pytest.mark.parametrize(("protocol", "implementations"), [
    (Transport, [Communicator, DistributedCommunicator]),
    (DealerHandle, [TrustedDealer, RemoteDealer]),
    (Runtime, [SimulatedRuntime, _Runtime]),
], ids=["transport", "dealer", "runtime"])
def test_both_runtimes_implement_every_member_with_its_signature(protocol, implementations) -> None:
    for cls in implementations:
        for name, declared in _members(protocol).items():
            assert hasattr(cls, name), f"{cls.__name__} lacks {protocol.__name__}.{name}"
            got = inspect.getattr_static(cls, name)
            if isinstance(declared, property):
                assert isinstance(got, property) or not callable(got), f"{cls.__name__}.{name} should be a property"
                continue
            assert _params(got)[: len(_params(declared))] == _params(declared), \
                f"{cls.__name__}.{name}{_params(got)} differs from {protocol.__name__}.{name}{_params(declared)}"


def test_a_session_is_built_on_the_seam() -> None:
    s = Session(seed=0)
    assert isinstance(s.runtime, Runtime) and isinstance(s.comm, Transport) and isinstance(s.dealer, DealerHandle)
    for attr in ("times", "fallback_inline"):  # instance attributes of the dealer handle
        assert hasattr(s.dealer, attr)


def test_protocols_and_ops_use_only_the_seam() -> None:
    """What protocols call on ``sess.comm`` / ``sess.dealer`` must be a seam member: a protocol that reached into
    one runtime's internals (say ``sess.dealer._masks``) would not run on the other."""
    allowed = {"comm": set(_members(Transport)) | {"rounds"},
               "dealer": set(_members(DealerHandle)) | {"times", "fallback_inline"}}
    files = [*MPC.glob("protocols/*.py"), *MPC.glob("ops/*.py"), MPC / "division.py", MPC / "tensor.py"]
    used = {(m.group(1), m.group(2), f.name) for f in files for m in re.finditer(r"\bsess\.(comm|dealer)\.(\w+)", f.read_text())}
    assert used, "the scan found no use at all: the pattern is wrong"
    outside = sorted(u for u in used if u[1] not in allowed[u[0]])
    assert not outside, f"protocol code uses runtime internals: {outside}"
