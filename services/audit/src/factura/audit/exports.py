"""Streamed exports of audit records: CSV for spreadsheets, NDJSON for scripts.

Rows are produced from an async iterator over keyset pages (:meth:`AuditQueries.stream`) and sent
in chunks of about :data:`CHUNK_BYTES`, so memory stays flat whatever the export's size. Every row
carries ``seq`` and ``hash``: an auditor matches them against the chain export to show that what the
spreadsheet says is what the tamper-evident chain says.

CSV cells that a spreadsheet would read as a formula (starting with ``= + - @``, tab or carriage
return, OWASP's list) are prefixed with ``'``: invoice ids, reasons and customer ids come from ERPs
and providers, and an export must never run code on an officer's machine.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

from factura.common.mongo import Document

COLUMNS: Final = (
    "seq",
    "hash",
    "prev",
    "id",
    "kind",
    "type",
    "tenant_id",
    "invoice_id",
    "customer_id",
    "channel",
    "purpose",
    "outcome",
    "reason",
    "occurred_at",
    "recorded_at",
    "source",
)
CHUNK_BYTES: Final = 64 * 1024
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def row(doc: Document) -> dict[str, Any]:
    """One record as an export row: the indexed fields, datetimes as ISO 8601 UTC."""
    out: dict[str, Any] = {}
    for column in COLUMNS:
        value = doc.get("_id" if column == "id" else column)
        out[column] = _iso(value) if isinstance(value, datetime) else value
    return out


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def neutralise(cell: object) -> str:
    """A CSV cell a spreadsheet shows as text, never evaluates."""
    text = "" if cell is None else str(cell)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


async def csv_chunks(docs: AsyncIterable[Document]) -> AsyncIterator[bytes]:
    """A header line, then one line per record (RFC 4180 quoting, CRLF), in ~64 KiB chunks."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    async for doc in docs:
        values = row(doc)
        writer.writerow([values["seq"], *(neutralise(values[c]) for c in COLUMNS[1:])])
        if buffer.tell() >= CHUNK_BYTES:
            yield _drain(buffer)
    yield _drain(buffer)


async def ndjson_chunks(docs: AsyncIterable[Document]) -> AsyncIterator[bytes]:
    """One JSON object per line (``application/x-ndjson``), in ~64 KiB chunks."""
    buffer = io.StringIO()
    async for doc in docs:
        buffer.write(json.dumps(row(doc), ensure_ascii=False, separators=(",", ":"), default=str))
        buffer.write("\n")
        if buffer.tell() >= CHUNK_BYTES:
            yield _drain(buffer)
    tail = _drain(buffer)
    if tail:
        yield tail


def _drain(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode("utf-8")
    buffer.seek(0)
    buffer.truncate()
    return data
