"""Issue 16.2: with parties as processes only the model owner's process reads the weights (``ckpt_path``) and only
the client's reads the data (a datamodule's ``prepare_data``/``setup``/dataloader, or a loader passed in), although
Lightning runs those steps in every process. An audit hook on ``open``, inherited by every forked role, records
who opened what."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("locality_probe.py")
OWNER, CLIENT = "0", "1"  # alice (rank 0) owns the model, bob (rank 1) is the client; rank 2 the crypto provider


def _opens(tmp_path: Path, mode: str) -> tuple[set, str]:
    run = subprocess.run([sys.executable, str(PROBE), str(tmp_path), mode], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    opens = {tuple(line.split()) for line in (tmp_path / "opens.txt").read_text().splitlines()}
    return opens, run.stdout


def _agreement(out: str) -> float:  # with the plaintext labels of the trained model (near-ties of a random net aside)
    return float(out.split("agreement ")[1].split()[0])


def test_only_the_owner_reads_the_checkpoint_and_only_the_client_the_datamodule(tmp_path: Path) -> None:
    opens, out = _opens(tmp_path, "datamodule")
    assert {who for who, f in opens if f == "model.ckpt"} == {OWNER}, opens
    assert {who for who, f in opens if f in ("data.pt", "prepared.txt")} == {CLIENT}, opens
    assert (CLIENT, "prepared.txt") in opens  # the client's prepare_data ran although it is not local rank 0
    assert _agreement(out) >= 0.9  # the owner's checkpoint weights were used (the untrained instance's: ~0.3)


def test_only_the_client_iterates_a_loader_passed_in(tmp_path: Path) -> None:
    opens, out = _opens(tmp_path, "loader")
    assert {who for who, f in opens if f == "data.pt"} == {CLIENT}, opens
    assert _agreement(out) >= 0.9 and "accuracy-total 24" in out


def test_the_models_own_prepare_data_runs_in_the_clients_process_only(tmp_path: Path) -> None:
    """Review finding: Lightning runs a LightningModule's prepare_data on local rank 0, the model owner's process."""
    opens, out = _opens(tmp_path, "modhooks")
    assert {who for who, f in opens if f == "mod_prepared.txt"} == {CLIENT}, opens
    assert _agreement(out) >= 0.9


def test_each_party_reads_its_own_model_shares_file_only(tmp_path: Path) -> None:
    """Issue 18.2: a run from model share files; the model instance is untrained (its weights never used)."""
    opens, out = _opens(tmp_path, "shares")
    shares = {(who, f) for who, f in opens if f.endswith(".shares")}
    assert shares == {(OWNER, "alice.shares"), (CLIENT, "bob.shares")}, opens
    assert _agreement(out) >= 0.9


def test_with_five_roles_only_the_server_reads_the_checkpoint_and_only_the_client_the_data(tmp_path: Path) -> None:
    """Issue 18.1: the model owner's server (rank 2) and the client (rank 3) outside the compute parties."""
    opens, out = _opens(tmp_path, "five")
    assert {who for who, f in opens if f == "model.ckpt"} == {"2"}, opens
    assert {who for who, f in opens if f in ("data.pt", "prepared.txt")} == {"3"}, opens
    assert _agreement(out) >= 0.9 and "accuracy-total 24" in out
