"""The argument checks of :class:`~lightning_smpc.strategy.SecurePredictStrategy`'s constructor.

Plain functions, called from ``SecurePredictStrategy.__init__`` in the order its arguments were always checked (so
the first wrong argument is the one named): ``check_choices`` (``reveal``, ``runtime``, the party names),
``input_config`` (input and target keys against ``public_inputs``), then, once the roles' topology is known,
``check_run_settings`` (timeouts, keys, start method, the crypto provider's bound, ``private`` and
``model_shares``). They raise ``ValueError`` or :class:`~lightning_smpc.mpc.errors.PartyConfigError`; they set nothing.
"""
from __future__ import annotations

from typing import Any, Optional

from .batches import several_inputs
from .mpc import Session
from .mpc.distributed import check_start_method
from .mpc.errors import PartyConfigError
from .topology import Topology

__all__ = ["check_choices", "check_run_settings", "input_config"]


def check_choices(reveal: str, runtime: str, parties: Any, crypto_provider: str) -> None:
    """``reveal`` and ``runtime`` name known choices; the party names make a valid session."""
    if reveal not in ("metrics", "labels", "logits"):
        raise ValueError(f"Expected `reveal` to be one of 'metrics', 'labels', 'logits', but got {reveal!r}.")
    if runtime not in ("simulated", "distributed"):
        raise ValueError(f"Expected `runtime` to be 'simulated' or 'distributed', but got {runtime!r}.")
    Session(tuple(parties), crypto_provider)  # validates the party names now


def input_config(input_key, target_key, public_inputs) -> tuple:
    """``(input_key, target_key)`` after checking the public inputs against them (several keys become a tuple)."""
    keys = several_inputs(input_key)
    public = tuple(public_inputs)
    if public and keys is None:
        raise ValueError(f"`public_inputs={public!r}` needs several inputs: pass `input_key` as a tuple of keys.")
    if keys is not None:
        unknown = [k for k in public if k not in keys]
        if unknown:
            raise ValueError(f"`public_inputs` names {unknown}, which are not among the inputs {keys}.")
        if all(k in public for k in keys):
            raise ValueError("Every input is public: at least one input must stay secret (or use a plain strategy).")
        if target_key is not None and target_key in keys:
            raise ValueError(f"`target_key={target_key!r}` is also an input key.")
        return keys, target_key
    return input_key, target_key


def check_run_settings(topology: Topology, *, private: str, timeout: float, start_timeout: float,
                       roster: Optional[str], identity: Optional[str], start_method: Optional[str],
                       max_material_bytes: int, preflight: Any, model_shares: Any) -> None:
    """The settings checked once the roles' ``topology`` is known, in the constructor's order."""
    if timeout <= 0:
        raise ValueError(f"Expected a positive `timeout` in seconds, but got {timeout}.")
    if start_timeout <= 0:
        raise ValueError(f"Expected a positive `start_timeout` in seconds, but got {start_timeout}.")
    if (roster is None) != (identity is None):
        raise PartyConfigError("Pass both `roster` (every role's public key) and `identity` (this process's "
                               "private key), or neither (one machine: fresh keys per run).")
    check_start_method(start_method)
    if max_material_bytes <= 0:
        raise ValueError(f"Expected a positive `max_material_bytes`, but got {max_material_bytes}.")
    if private not in ("both", "data", "model"):
        raise ValueError(f"Expected `private` to be 'both', 'data' or 'model', but got {private!r}.")
    if model_shares is not None and private == "data":
        raise ValueError("`model_shares` keeps the weights secret, but private='data' makes them public to the "
                         "compute parties: use private='both' (or 'model'), or share the weights in clear.")
    if model_shares is not None and preflight is not None:
        raise PartyConfigError("The pre-flight needs the plaintext model, which a run from `model_shares` never "
                               "reads: run lightning_smpc.preflight(model, data) where the model is, before "
                               "saving its shares.")
