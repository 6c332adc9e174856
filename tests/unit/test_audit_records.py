"""Audit records: which facts of each event become indexed fields, and what the chain hashes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from factura.audit.chain import Head, chained, link
from factura.audit.records import GENESIS, UNIDENTIFIED_TENANT, canonical, from_dead_letter, from_event, to_ms
from factura.common.events import parse_event
from factura.common.kafka.consumer import Message
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantConfigError, TenantDirectory
from factura.common.topics import resolve


def message(name: str) -> Message[Any]:
    raw = (EXAMPLES_DIR / name).read_bytes()
    event = parse_event(raw)
    return Message(resolve(event.type), 0, 7, b"k", {}, raw, event)


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("invoice.created.v1.json", {"outcome": "pending", "purpose": None, "class": "fiscal"}),
        ("invoice.rendered.v1.json", {"outcome": "pending", "purpose": "invoice"}),
        ("delivery.succeeded.v2.json", {"outcome": "delivered", "channel": "sms", "purpose": "reminder:after-3"}),
        ("delivery.failed.v2.json", {"outcome": "failed", "channel": "email", "reason": "hard_bounce"}),
        ("delivery.exhausted.v1.json", {"outcome": "exhausted"}),
        ("payment.received.v1.json", {"outcome": "paid"}),
        ("delivery.opened.v1.json", {"outcome": None, "class": "engagement"}),
        ("invoice.rejected.v1.json", {"outcome": "rejected", "reason": "invalid"}),
    ],
)
def test_indexed_fields_come_from_the_event(example: str, expected: dict[str, Any]) -> None:
    record = from_event(message(example))
    for name, value in expected.items():
        assert record.fields[name] == value, name
    event = json.loads((EXAMPLES_DIR / example).read_bytes())
    assert record.id == event["event_id"] and record.tenant_id == event["tenant_id"]
    assert record.raw.encode() == (EXAMPLES_DIR / example).read_bytes()  # verbatim, not re-serialised
    assert record.fields["source"].endswith("/0/7")
    assert record.fields["day"] == record.fields["occurred_at"].date().isoformat()


def test_customer_is_found_wherever_the_event_carries_it() -> None:
    created = from_event(message("invoice.created.v1.json"))
    failed = from_event(message("delivery.failed.v2.json"))
    assert created.fields["customer_id"] and failed.fields["customer_id"]


def test_a_dead_letter_without_a_readable_tenant_goes_to_the_unidentified_chain() -> None:
    topic = resolve("invoice.created.dlq")
    headers = {"dlq.reason": b"invalid", "dlq.service": b"renderer", "dlq.source": b"invoice.created/1/9"}
    record = from_dead_letter(Message(topic, 0, 3, None, headers, b"\xff\xfe binary", b"\xff\xfe binary"))
    assert record.tenant_id == UNIDENTIFIED_TENANT and record.id == "dlq:renderer:invoice.created/1/9"
    raw = json.loads(record.raw)
    assert raw["body_encoding"] == "hex" and raw["source_topic"] == "invoice.created"
    assert record.fields["reason"] == "invalid" and record.fields["outcome"] == "dead_lettered"


def test_a_dead_letter_of_a_tenant_joins_its_chain() -> None:
    topic = resolve("invoice.created.dlq")
    body = json.dumps({"tenant_id": "acme", "invoice_id": "A/1"}).encode()
    record = from_dead_letter(Message(topic, 0, 3, None, {}, body, body))
    assert (record.tenant_id, record.fields["invoice_id"]) == ("acme", "A/1")
    forged = json.dumps({"tenant_id": "Not A Tenant"}).encode()
    assert from_dead_letter(Message(topic, 0, 4, None, {}, forged, forged)).tenant_id == UNIDENTIFIED_TENANT


def test_the_chain_hash_covers_position_fields_and_raw_bytes() -> None:
    record = from_event(message("delivery.failed.v2.json"))
    first = chained(record, Head(0, GENESIS))
    assert first["seq"] == 1 and first["prev"] == GENESIS
    assert first["hash"] == link(GENESIS, first["record"])
    body = json.loads(first["record"])
    assert body["seq"] == 1 and body["raw"] == record.raw and body["outcome"] == "failed"
    assert chained(record, Head(1, first["hash"]))["hash"] != first["hash"]  # position is hashed too


def test_canonical_json_is_stable_and_datetimes_are_milliseconds_utc() -> None:
    moment = datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=UTC)
    assert canonical({"b": 1, "a": moment}) == '{"a":"2026-03-29T01:30:00.123Z","b":1}'
    assert to_ms(moment).microsecond == 123000


def test_a_dead_letter_naming_an_unencodable_invoice_is_still_recorded() -> None:
    """JSON may carry a lone surrogate; the record must still hash (UTF-8), so that id is dropped."""
    topic = resolve("invoice.created.dlq")
    body = b'{"tenant_id": "acme", "invoice_id": "\\ud800"}'
    record = from_dead_letter(Message(topic, 0, 3, None, {}, body, body))
    assert record.tenant_id == "acme" and record.fields["invoice_id"] is None
    chained(record, Head(0, GENESIS))["record"].encode()  # hashable


def test_no_tenant_may_take_the_unidentified_chain(tmp_path: Path) -> None:
    (tmp_path / UNIDENTIFIED_TENANT).mkdir()
    (tmp_path / UNIDENTIFIED_TENANT / "tenant.toml").write_text("")
    with pytest.raises(TenantConfigError, match="reserved"):
        TenantDirectory(tmp_path)
