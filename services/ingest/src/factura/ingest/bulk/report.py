"""The per-row report written back to the uploader: one CSV line per problem.

The uploader opens it in a spreadsheet, so every cell we write is neutralised: a value from
their own file such as ``=HYPERLINK(...)`` or ``@SUM(...)`` would otherwise run as a formula
(CSV injection, OWASP). A leading ``'`` makes spreadsheets show it as text.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import TextIO

HEADER = ("row", "column", "value", "reason")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Long enough to recognise the value, short enough that a 10 MB cell does not become a 10 MB report.
MAX_VALUE_CHARS = 200


@dataclass(frozen=True)
class ReportRow:
    row: int
    column: str
    value: str
    reason: str


def neutralise(cell: str) -> str:
    """``cell`` as inert text for a spreadsheet (leading ``'`` before a formula-starting character)."""
    return f"'{cell}" if cell.startswith(_FORMULA_START) else cell


class ReportWriter:
    """Streams report rows to ``out`` (open it with ``newline=""``; ``utf-8-sig`` lets Excel read accents)."""

    def __init__(self, out: TextIO) -> None:
        self._writer = csv.writer(out)
        self._writer.writerow(HEADER)
        self.rows = 0

    def write(self, row: ReportRow) -> None:
        value = row.value if len(row.value) <= MAX_VALUE_CHARS else f"{row.value[:MAX_VALUE_CHARS]}…"
        self._writer.writerow([str(row.row), *(neutralise(c) for c in (row.column, value, row.reason))])
        self.rows += 1
