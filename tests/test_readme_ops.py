"""The README's table of supported ops is generated from the op declarations and must be current."""
from __future__ import annotations

from pathlib import Path

from lightning_smpc.mpc.ops import ops_table_markdown
from lightning_smpc.mpc.tensor import ARGMAX_SAFE, FAMILIES, OP_FAMILY, OP_TABLE

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_ops_table_is_current() -> None:
    text = README.read_text()
    start = text.index("<!-- ops table:")
    end = text.index("<!-- end of ops table -->")
    assert ops_table_markdown() in text[start:end], (
        "README's ops table is stale: paste lightning_smpc.mpc.ops.ops_table_markdown() between the markers."
    )


def test_every_op_is_declared_once_with_a_family() -> None:
    assert set(OP_FAMILY) == set(OP_TABLE) and set(OP_FAMILY.values()) <= set(FAMILIES)
    assert ARGMAX_SAFE <= set(OP_TABLE)  # the skipped-softmax allow-list comes from the same declarations
