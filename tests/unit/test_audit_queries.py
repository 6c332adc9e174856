"""Audit queries without a server: cursors refuse what they did not issue, filters only ever hold
values, exports neutralise spreadsheet formulas."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from factura.audit.exports import COLUMNS, csv_chunks, ndjson_chunks, neutralise
from factura.audit.queries import CursorError, Cursors, Kind, RecordFilter, Status, scope_of
from factura.common.mongo import Document

KEY = b"k" * 32


def test_cursor_round_trip_and_binding() -> None:
    cursors = Cursors(KEY)
    scope = scope_of("records", status="failed")
    token = cursors.encode("acme-a", scope, 42)
    assert cursors.decode(token, "acme-a", scope) == 42
    assert cursors.decode(cursors.encode("acme-a", scope, "INV/1"), "acme-a", scope) == "INV/1"
    with pytest.raises(CursorError, match="another tenant"):
        cursors.decode(token, "other-b", scope)
    with pytest.raises(CursorError, match="other filters"):
        cursors.decode(token, "acme-a", scope_of("records", status="paid"))
    with pytest.raises(CursorError, match="invalid cursor"):
        Cursors(b"x" * 32).decode(token, "acme-a", scope)  # another key: a foreign cursor


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b", "a.b.c", "ü.ü", "." * 3, "x" * 5000, "e30.AAAA", "!!!.???"],
)
def test_malformed_cursors_are_refused(token: str) -> None:
    with pytest.raises(CursorError):
        Cursors(KEY).decode(token, "acme-a", "s")


def test_a_forged_payload_fails_the_mac() -> None:
    cursors = Cursors(KEY)
    body, mac = cursors.encode("acme-a", "s", 10).split(".")
    forged = base64.urlsafe_b64encode(b'{"t":"acme-a","f":"s","p":999999}').rstrip(b"=").decode()
    with pytest.raises(CursorError):
        cursors.decode(f"{forged}.{mac}", "acme-a", "s")
    assert cursors.decode(f"{body}.{mac}", "acme-a", "s") == 10


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Cursors(b"short")


def test_filter_query_holds_only_values() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    where = RecordFilter(
        tenant_id="acme-a",
        customer_id='{"$ne": null}',
        reason="$where",
        status=Status.FAILED,
        occurred_from=start,
    )
    assert where.query() == {
        "tenant_id": "acme-a",
        "customer_id": '{"$ne": null}',
        "reason": "$where",
        "outcome": "failed",
        "kind": {"$in": ["event", "dead_letter", "erasure"]},
        "occurred_at": {"$gte": start},
    }
    assert RecordFilter(tenant_id="acme-a", kind=Kind.ACCESS).query()["kind"] == "access"


def test_filter_scope_changes_with_any_filter() -> None:
    base = RecordFilter(tenant_id="acme-a")
    assert base.scope("records") == RecordFilter(tenant_id="acme-a").scope("records")
    assert base.scope("records") != RecordFilter(tenant_id="acme-a", channel="sms").scope("records")
    assert base.scope("records") != base.scope("exports")


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+SUM(A1)", "'+SUM(A1)"),
        ("-2", "'-2"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("INV-1", "INV-1"),
        ("", ""),
        (None, ""),
    ],
)
def test_neutralise(cell: str | None, expected: str) -> None:
    assert neutralise(cell) == expected


async def _docs(n: int) -> AsyncIterator[Document]:
    for i in range(1, n + 1):
        yield {
            "_id": f"e{i}",
            "seq": i,
            "hash": "h" * 64,
            "kind": "event",
            "customer_id": '=HYPERLINK("http://x")' if i == 1 else f"C{i}",
            "occurred_at": datetime(2025, 1, 1, tzinfo=UTC),
        }


async def test_csv_is_chunked_and_neutralised() -> None:
    chunks = [c async for c in csv_chunks(_docs(3000))]
    assert len(chunks) > 1
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert rows[0] == list(COLUMNS)
    assert len(rows) == 3001
    first = dict(zip(COLUMNS, rows[1], strict=True))
    assert first["customer_id"] == '\'=HYPERLINK("http://x")'
    assert first["seq"] == "1"
    assert first["occurred_at"] == "2025-01-01T00:00:00.000Z"


async def test_ndjson_lines_carry_seq_and_hash() -> None:
    lines = b"".join([c async for c in ndjson_chunks(_docs(5))]).decode().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert all(json.loads(line)["hash"] == "h" * 64 for line in lines)
    assert [c async for c in ndjson_chunks(_docs(0))] == []
