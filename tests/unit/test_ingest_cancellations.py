"""Cancellations and full credit notes: ``erp.cancellations`` → ``invoice.cancelled``, or a rejection.

A partial credit note must never pass for a cancellation (its reminders would stop while money is
still owed), so every key that carries an amount is refused by name, and the exported JSON Schema
refuses what the model refuses.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import pytest

from factura.common.envelope import Envelope
from factura.common.erp import ErpCancellationV1
from factura.common.errors import InvalidMessage
from factura.common.events import InvoiceCancelledV1, InvoiceRejectedV1
from factura.common.schemas import EXAMPLES_DIR, schemas
from factura.common.topics import ERP_CANCELLATIONS
from tests.unit.test_ingest_handlers import Recorder, erp_message, ingest_handlers

CREDIT_NOTE = (EXAMPLES_DIR / "erp.cancellation.v1.json").read_bytes()
SCHEMA = jsonschema.Draft202012Validator(schemas()["erp.cancellation.v1"], format_checker=jsonschema.FormatChecker())


def changed(**fields: Any) -> dict[str, Any]:
    """The example credit note with ``fields`` replaced (``None`` removes a field)."""
    payload: dict[str, Any] = json.loads(CREDIT_NOTE) | fields
    return {k: v for k, v in payload.items() if v is not None}


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def run(raw: bytes, headers: dict[str, bytes] | None = None) -> tuple[Recorder, InvalidMessage | None]:
    recorder = Recorder()
    handler = ingest_handlers(recorder).on_erp_cancellation
    try:
        asyncio.run(handler(erp_message(raw, ERP_CANCELLATIONS, headers)))
    except InvalidMessage as e:
        return recorder, e
    return recorder, None


def cancelled(raw: bytes, headers: dict[str, bytes] | None = None) -> Envelope[Any]:
    recorder, error = run(raw, headers)
    assert error is None, str(error)
    [event] = recorder.events
    assert event.type == "invoice.cancelled" and isinstance(event.data, InvoiceCancelledV1)
    return event


def rejected(raw: bytes) -> Envelope[Any]:
    recorder, error = run(raw)
    assert error is not None, "accepted"
    [event] = recorder.events
    assert event.type == "invoice.rejected" and isinstance(event.data, InvoiceRejectedV1)
    assert event.data.reasons == error.reasons and event.data.stage == "ingest"
    assert event.data.source_topic == "erp.cancellations"
    assert event.data.source_offset == "erp.cancellations/0/7"
    return event


def test_full_credit_note_becomes_invoice_cancelled_on_the_invoices_key() -> None:
    event = cancelled(CREDIT_NOTE, headers={"correlation_id": b"sap-RV-4711"})
    assert (event.tenant_id, event.invoice_id, event.producer) == ("harinas-sur", "F-2026-000123", "ingest")
    assert event.partition_key == b"harinas-sur/F-2026-000123"
    assert event.correlation_id == "sap-RV-4711" and event.causation_id is None
    data = event.data
    assert (data.kind, data.credit_note_number, data.erp_source) == ("credit_note", "R-2026-000017", "sap-s4")
    assert data.reason == "Pedido duplicado: factura abonada en su totalidad"
    assert data.cancelled_at.isoformat() == "2026-11-05T10:12:00+01:00"


def test_cancellation_needs_no_credit_note_number_and_a_blank_reason_is_none() -> None:
    event = cancelled(encode(changed(kind="cancellation", credit_note_number=None, reason="   ")))
    assert (event.data.kind, event.data.credit_note_number, event.data.reason) == ("cancellation", None, None)


def test_redelivery_gives_the_same_event_id_and_a_corrected_message_a_new_one() -> None:
    first = cancelled(CREDIT_NOTE)
    again = cancelled(CREDIT_NOTE, headers={"correlation_id": b"other"})
    corrected = cancelled(encode(changed(reason="Devolución completa del pedido")))
    assert first.event_id == again.event_id
    assert corrected.event_id != first.event_id
    assert first.correlation_id == str(first.event_id)


def test_other_invoice_or_tenant_gives_another_event_id() -> None:
    ids = {
        cancelled(CREDIT_NOTE).event_id,
        cancelled(encode(changed(invoice_number="F-2026-000124"))).event_id,
        cancelled(encode(changed(tenant_id="molinos-norte"))).event_id,
    }
    assert len(ids) == 3


REFUSED: list[tuple[dict[str, Any], set[str]]] = [
    (changed(credit_note_number=None), {"credit_note_number"}),
    (changed(kind="cancellation"), {"credit_note_number"}),
    (changed(kind="void"), {"kind"}),
    (changed(cancelled_at="2026-11-05T10:12:00"), {"cancelled_at"}),
    (changed(cancelled_at="yesterday"), {"cancelled_at"}),
    (changed(reason="Abono\r\nBcc: everyone@example.com"), {"reason"}),
    (changed(reason="x" * 501), {"reason"}),
    (changed(invoice_number="F 2026 000123"), {"invoice_number"}),
    (changed(tenant_id="Harinas Sur"), {"tenant_id"}),
    (changed(amount="100.00"), {"amount"}),
    (changed(credited_amount=100), {"credited_amount"}),
    (changed(total="286.55"), {"total"}),
    (changed(lines=[{"description": "Harina", "quantity": 1, "unit_price": 100}]), {"lines"}),
    (changed(amount=0), {"amount"}),
]


@pytest.mark.parametrize(("payload", "fields"), REFUSED)
def test_refused_with_the_field_named(payload: dict[str, Any], fields: set[str]) -> None:
    event = rejected(encode(payload))
    assert {r.field for r in event.data.reasons} == fields


@pytest.mark.parametrize(("payload", "fields"), REFUSED)
def test_the_json_schema_refuses_it_too(payload: dict[str, Any], fields: set[str]) -> None:
    assert not SCHEMA.is_valid(payload), f"schema accepts what ingest refuses ({fields})"


def test_a_partial_credit_note_is_refused_as_such_with_every_other_problem() -> None:
    event = rejected(encode(changed(credited_amount="50.00", cancelled_at="2026-11-05T10:12:00")))
    reasons = {r.field: r.message for r in event.data.reasons}
    assert set(reasons) == {"credited_amount", "cancelled_at"}
    assert "partial credit note is not a cancellation" in reasons["credited_amount"]
    assert "timezone" in reasons["cancelled_at"]


def test_rejection_names_tenant_and_invoice() -> None:
    event = rejected(encode(changed(kind="void")))
    assert (event.tenant_id, event.invoice_id, event.data.erp_reference) == (
        "harinas-sur",
        "F-2026-000123",
        "F-2026-000123",
    )


def test_undecodable_cancellation_is_rejected_on_the_whole_message() -> None:
    event = rejected(b"{not json")
    assert [r.field for r in event.data.reasons] == ["$"]
    assert (event.tenant_id, event.invoice_id) == ("unknown", None)


def test_unrelated_unknown_fields_are_still_ignored() -> None:
    extra = changed(document_type="R1", sap_document_id="0090001234")
    assert cancelled(encode(extra)).data.kind == "credit_note"
    assert SCHEMA.is_valid(extra)


def test_the_contract_refuses_amounts_outside_ingest_too() -> None:
    with pytest.raises(ValueError, match="partial credit note"):
        ErpCancellationV1.model_validate(changed(amount="1.00"))
