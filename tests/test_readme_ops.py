"""The README's table of supported ops is generated from the op declarations and must be current."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lightning_smpc.mpc import Session, UnsupportedOpError
from lightning_smpc.mpc.ops import ops_table_markdown
from lightning_smpc.mpc.tensor import ARGMAX_SAFE, FAMILIES, OP_FAMILY, OP_NOTE, OP_TABLE, _name

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


def test_every_op_declares_a_note() -> None:
    """Each declaration says, in one short sentence, what the op costs or refuses (the README table shows it)."""
    missing = sorted(_name(f) for f in OP_TABLE if not OP_NOTE.get(f, "").strip())
    assert not missing, f"implements(..., note=...) is missing for: {', '.join(missing)}"
    too_long = sorted(_name(f) for f, note in OP_NOTE.items() if len(note) > 200 or "\n" in note)
    assert not too_long, f"notes should be one short sentence: {', '.join(too_long)}"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11")
def test_a_refused_call_of_a_supported_op_carries_its_note() -> None:
    s = Session(seed=0)
    x = s.share(torch.ones(3))
    with pytest.raises(UnsupportedOpError) as info:
        torch.div(x, x, rounding_mode="floor")
    (note,) = info.value.__notes__  # the innermost op's only, once
    assert note.endswith(f"on shares: {OP_NOTE[torch.Tensor.__truediv__]}")
