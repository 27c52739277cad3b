"""How every command prints: one table layout and one JSON layout."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from sidecar.logs import printable

__all__ = ["format_table", "print_json"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing spaces.  Cells
    come from outside (a Graph app name, a quarantined change's field): a character that
    does not print (a newline, a terminal escape) is shown escaped, so no cell can forge
    a line or drive the terminal."""
    cells = [[printable(str(c)) for c in row] for row in (header, *rows)]
    widths = [max(len(c) for c in col) for col in zip(*cells)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in cells)


def print_json(value: Any, *, sort_keys: bool = False) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=sort_keys) + "\n")
