"""What runs on shares, generated from the op declarations: supported_ops() and the README's op table."""
from __future__ import annotations

from ..tensor import FAMILIES, OP_FAMILY, OP_NOTE, _name, op_names


def supported_ops() -> list[str]:
    """Names of the torch callables that run on shares."""
    return op_names()


def ops_table_markdown() -> str:
    """The README's table of supported ops, generated from the op declarations (a test keeps it current): one row
    per family and note, in declaration order, the callables sorted by name."""
    rows = ["| family | torch callables | cost or restriction on shares |", "|---|---|---|"]
    for fam in FAMILIES:
        by_note: dict[str, list[str]] = {}
        for f, f_fam in OP_FAMILY.items():
            if f_fam == fam:
                by_note.setdefault(OP_NOTE[f], []).append(_name(f).replace("torch.nn.functional.", "F."))
        for i, (note, names) in enumerate(by_note.items()):
            calls = ", ".join(f"`{n}`" for n in sorted(set(names)))
            rows.append(f"| {fam if i == 0 else ''} | {calls} | {note.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)
