"""Issue 16.9: parties as processes from a notebook, stdin and a script without a main guard, on any core count.

A spawned role re-imports the caller's ``__main__``: impossible from stdin or a notebook (``FileNotFoundError
'<stdin>'``; Lightning refused the strategy in Jupyter), and a script without a main guard re-ran its top level in
every role, then failed with an unexplained ``PartyProcessError``. Now the roles are forked where ``__main__`` is not
a file (as Lightning's ``ddp_notebook``), and a spawned run says exactly what to add.
"""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from lightning_smpc import SecurePredictStrategy
from lightning_smpc.launcher import PartyLauncher, resolve_start_method

pytestmark = pytest.mark.filterwarnings("ignore")

SCRIPT = '''
import os
os.cpu_count = lambda: 64  # a machine where each role would get several cores: spawn, before this fix
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset
from lightning_smpc import SecurePredictStrategy

class Net(LightningModule):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)

strategy = SecurePredictStrategy(runtime="distributed", reveal="labels", preprocess=False{extra})
trainer = Trainer(strategy=strategy, logger=False, enable_progress_bar=False, enable_model_summary=False)
out = trainer.predict(Net(), DataLoader(TensorDataset(torch.randn(6, 4)), batch_size=3))
print("labels", torch.cat(out).tolist())
'''


def test_stdin_scripts_fork_the_roles_on_any_core_count() -> None:
    run = subprocess.run([sys.executable, "-"], input=SCRIPT.format(extra=""), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "labels [" in run.stdout


def test_a_spawned_script_without_a_main_guard_is_told_what_to_add(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(SCRIPT.format(extra=', start_method="spawn", timeout=20'))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode != 0
    assert 'if __name__ == "__main__":' in run.stderr and "start_method='fork'" in run.stderr, run.stderr[-3000:]


def test_no_main_file_means_fork_and_a_notebook_may_launch(monkeypatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # as in Jupyter: no __file__
    assert resolve_start_method(None, 3) == "fork"
    assert PartyLauncher(SecurePredictStrategy(runtime="distributed")).is_interactive_compatible
    assert not PartyLauncher(SecurePredictStrategy(runtime="distributed", start_method="spawn")).is_interactive_compatible
