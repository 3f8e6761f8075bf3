"""Layering: the MPC core (lightning_smpc.mpc) is pure torch; it never imports Lightning or torchmetrics."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "lightning_smpc"
MPC = PKG / "mpc"
FORBIDDEN = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics")


def _loaded_after(code: str) -> list[str]:
    """Top-level packages from FORBIDDEN in sys.modules after running ``code`` in a fresh interpreter."""
    probe = code + (
        "\nimport sys, json\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=PKG.parent)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_mpc_layer_alone_imports_no_lightning():
    """Import the core with the parent package stubbed (so lightning_smpc/__init__.py does not run): the core's own
    import graph holds no Lightning / torchmetrics module."""
    stub = (
        "import sys, types\n"
        "pkg = types.ModuleType('lightning_smpc')\n"
        f"pkg.__path__ = [{str(PKG)!r}]\n"
        "sys.modules['lightning_smpc'] = pkg\n"
        "import lightning_smpc.mpc\n"
        "from lightning_smpc.mpc import Session\n"
        "import torch\n"
        "s = Session(seed=None)\n"
        "(s.share(torch.ones(2, 3)) @ s.share(torch.ones(3, 2))).relu().argmax(1).reveal()\n"
    )
    assert _loaded_after(stub) == []


def test_mpc_sources_import_only_torch_side_packages():
    """Static check of every module under lightning_smpc/mpc: no Lightning/torchmetrics import, and no relative
    import that reaches above the mpc package (e.g. ``from ..strategy import ...``)."""
    offenders = []
    for path in sorted(MPC.rglob("*.py")):
        depth = len(path.relative_to(MPC).parts)  # 1 for mpc/x.py, 2 for mpc/protocols/x.py
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level and node.level > depth:
                    offenders.append(f"{path.relative_to(PKG)}: from {'.' * node.level}{node.module or ''}")
                names = [node.module or ""] if not node.level else []
            else:
                continue
            offenders += [f"{path.relative_to(PKG)}: import {n}" for n in names if n.split(".")[0] in FORBIDDEN]
            offenders += [f"{path.relative_to(PKG)}: import {n}" for n in names
                          if n.startswith("lightning_smpc.") and not n.startswith("lightning_smpc.mpc")]
    assert offenders == []


def test_package_import_registers_strategy_by_design():
    """Design decision: `import lightning_smpc` must register 'secure_predict' (Lightning has no entry point
    for strategies), so the *package* imports Lightning; the *core* (`lightning_smpc/mpc`) does not, as the
    two tests above check with the parent package stubbed out and by scanning the sources."""
    assert "lightning" in _loaded_after("import lightning_smpc")
