"""How every command prints: one table layout and one JSON layout."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["format_table", "print_json"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing spaces."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
                     for row in (header, *rows))


def print_json(value: Any, *, sort_keys: bool = False) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=sort_keys) + "\n")
