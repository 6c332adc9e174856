"""Ingest's handlers: every message wrong in itself becomes ``invoice.rejected`` plus InvalidMessage.

The loop hands ERP topics over as raw bytes (``Message[bytes]``); these tests drive the handlers
the same way, with a publisher that records instead of sending.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factura.common.envelope import Envelope
from factura.common.errors import InvalidMessage
from factura.common.events import Channel, InvoiceCreatedV1, InvoiceRejectedV1, PaymentReceivedV1
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.logging import correlation_id_var, tenant_id_var
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantDirectory
from factura.common.topics import ERP_INVOICES, ERP_PAYMENTS, Topic
from factura.ingest.handlers import IngestHandlers, _content
from factura.ingest.normalise import invoice_from_erp

INVOICE = (EXAMPLES_DIR / "erp.invoice.v1.json").read_bytes()
PAYMENT = (EXAMPLES_DIR / "erp.payment.v1.json").read_bytes()


class Recorder(Publisher):
    """Keeps what would be published; serialises it as the real publisher would, so an event that
    cannot go on the wire fails here too."""

    def __init__(self) -> None:
        self.events: list[Envelope[Any]] = []

    async def publish(self, event: Envelope[Any]) -> None:
        event.model_dump_json().encode()
        self.events.append(event)


class NoHistory:
    """Channel history for tenants that do not learn the most effective channel: never asked."""

    async def best_channel(
        self, tenant_id: str, customer_id: str, *, before: datetime, order: Sequence[Channel], min_payments: int
    ) -> Channel | None:
        raise AssertionError("no tenant here learns the most effective channel")


def ingest_handlers(recorder: Publisher, *, allow_test_email_domains: bool = False) -> IngestHandlers:
    """Handlers with default tenant configs (no tenant learns the most effective channel)."""
    return IngestHandlers(
        recorder, TenantDirectory(None), NoHistory(), allow_test_email_domains=allow_test_email_domains
    )


def erp_message(raw: bytes, topic: Topic = ERP_INVOICES, headers: dict[str, bytes] | None = None) -> Message[bytes]:
    return Message(topic, 0, 7, b"k", headers or {}, raw, raw)


def handle(raw: bytes, topic: Topic = ERP_INVOICES, headers: dict[str, bytes] | None = None) -> Envelope[Any]:
    """Run the handler for ``topic``; the one event it published (``invoice.rejected`` re-raises)."""
    recorder = Recorder()
    handlers = ingest_handlers(recorder, allow_test_email_domains=True)
    handler = handlers.on_erp_invoice if topic is ERP_INVOICES else handlers.on_erp_payment
    try:
        asyncio.run(handler(erp_message(raw, topic, headers)))
    except InvalidMessage:
        assert [e.type for e in recorder.events] == ["invoice.rejected"]
        raise
    assert len(recorder.events) == 1
    return recorder.events[0]


def rejected(raw: bytes, topic: Topic = ERP_INVOICES, headers: dict[str, bytes] | None = None) -> Envelope[Any]:
    recorder = Recorder()
    handlers = ingest_handlers(recorder)
    handler = handlers.on_erp_invoice if topic is ERP_INVOICES else handlers.on_erp_payment
    with pytest.raises(InvalidMessage) as info:
        asyncio.run(handler(erp_message(raw, topic, headers)))
    assert len(recorder.events) == 1
    event = recorder.events[0]
    assert event.type == "invoice.rejected" and isinstance(event.data, InvoiceRejectedV1)
    assert event.data.reasons == info.value.reasons and event.data.stage == "ingest"
    assert event.data.source_offset == f"{topic.name}/0/7"
    return event


def changed(**fields: Any) -> bytes:
    payload = json.loads(INVOICE)
    payload.update(fields)
    return json.dumps(payload).encode()


def fields_of(event: Envelope[Any]) -> set[str]:
    return {r.field for r in event.data.reasons}


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"[" * 100_000, "nested deeper"),
        (b"\xff\xfe not utf8", "UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "an array"),
        (b"42", "a number"),
        (b"", "empty"),
    ],
)
def test_undecodable_invoice_is_rejected_on_the_whole_message(raw: bytes, words: str) -> None:
    event = rejected(raw)
    assert [(r.field, words in r.message) for r in event.data.reasons] == [("$", True)]
    assert event.tenant_id == "unknown" and event.invoice_id is None and event.data.erp_reference is None


def test_undecodable_payment_is_rejected_too() -> None:
    assert fields_of(rejected(b"\xc3\x28", ERP_PAYMENTS)) == {"$"}


def test_contract_accepted_tax_rate_the_domain_cannot_hold_is_rejected_not_retried() -> None:
    payload = json.loads(INVOICE)
    payload["lines"][0]["tax_rate"] = 19.125
    event = rejected(json.dumps(payload).encode())
    assert fields_of(event) == {"lines.0.tax_rate"}
    assert (event.tenant_id, event.invoice_id) == ("harinas-sur", "F-2026-000123")
    assert event.data.erp_reference == "F-2026-000123"


def test_control_characters_in_a_name_are_rejected_at_ingest() -> None:
    payload = json.loads(INVOICE)
    payload["customer"]["name"] = "Lucía\r\nBcc: everyone@example.com"
    assert fields_of(rejected(json.dumps(payload).encode())) == {"customer.name"}


def test_tenant_of_a_rejection_comes_from_the_payload_not_the_header() -> None:
    raw = changed(currency="EURO")
    event = rejected(raw, headers={"tenant_id": b"someone-else"})
    assert event.tenant_id == "harinas-sur"


def test_tenant_with_surrounding_spaces_is_normalised_like_the_contract_does() -> None:
    event = handle(changed(tenant_id="  harinas-sur "))
    assert event.type == "invoice.created" and event.tenant_id == "harinas-sur"


def test_accepted_invoice_and_payment() -> None:
    invoice = handle(INVOICE, headers={"correlation_id": b"sap-4711"})
    assert isinstance(invoice.data, InvoiceCreatedV1)
    assert (invoice.correlation_id, invoice.invoice_id) == ("sap-4711", "F-2026-000123")
    payment = handle(PAYMENT, ERP_PAYMENTS)
    assert isinstance(payment.data, PaymentReceivedV1) and payment.invoice_id == "F-2026-000123"
    assert payment.correlation_id == str(payment.event_id)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (b"x" * 201, "201 characters"),
        (b"\xff\xfe", "UTF-8"),
        (b"abc\r\nX-Injected: 1", "control characters"),
        (b"   ", "blank"),
    ],
)
def test_unusable_correlation_header_is_ignored_and_logged(
    header: bytes, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="factura.ingest.handlers"):
        event = handle(INVOICE, headers={"correlation_id": header})
    assert event.type == "invoice.created"
    assert event.correlation_id == str(event.event_id)
    warnings = [r for r in caplog.records if "correlation_id" in r.getMessage()]
    assert len(warnings) == 1 and problem in str(warnings[0].__dict__["problem"])


def test_longest_usable_correlation_header_is_kept() -> None:
    assert handle(INVOICE, headers={"correlation_id": b"c" * 200}).correlation_id == "c" * 200


class _ContextSeen(logging.Handler):
    """What :func:`~factura.common.logging.log_context` had bound when each line was written."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, str | None, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), tenant_id_var.get(), correlation_id_var.get()))


@pytest.fixture
def context_seen() -> Iterator[_ContextSeen]:
    handler = _ContextSeen()
    logger = logging.getLogger("factura.ingest.handlers")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def test_log_lines_carry_the_payloads_tenant(context_seen: _ContextSeen) -> None:
    event = rejected(changed(currency="EURO"), headers={"tenant_id": b"someone-else", "correlation_id": b"\xff"})
    assert [tenant for _, tenant, _ in context_seen.seen] == ["harinas-sur", "harinas-sur"]
    message, _, correlation = context_seen.seen[-1]
    assert message == "rejected ERP message" and correlation == event.correlation_id == str(event.event_id)


def test_log_lines_of_an_undecodable_message_name_no_tenant(context_seen: _ContextSeen) -> None:
    rejected(b"[[[", headers={"tenant_id": b"someone-else"})
    assert [tenant for _, tenant, _ in context_seen.seen] == [None]


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.binary(max_size=300))
def test_any_correlation_header_is_used_or_ignored_never_a_failure(header: bytes) -> None:
    event = handle(INVOICE, headers={"correlation_id": header})
    assert event.type == "invoice.created"
    assert 1 <= len(event.correlation_id) <= 200


def test_the_same_invoice_reserialised_is_the_same_event_and_a_corrected_one_is_not() -> None:
    """Key order, spacing and number spelling do not make a second invoice (it was emailed twice)."""
    payload = json.loads(INVOICE)
    original = handle(json.dumps(payload).encode())
    reordered = dict(reversed(list(payload.items())))
    again = handle(json.dumps(reordered, indent=3, ensure_ascii=True).encode())
    assert again.event_id == original.event_id
    corrected = handle(changed(due_date="2026-12-15"))
    assert corrected.event_id != original.event_id


# --- batches ---------------------------------------------------------------------------------------


class Gated(Recorder):
    """Holds every publish until ``open``: shows which messages are in the intake at once."""

    def __init__(self, expect: int) -> None:
        super().__init__()
        self.waiting = 0
        self.expect = expect
        self.all_waiting = asyncio.Event()
        self.open = asyncio.Event()

    async def publish(self, event: Envelope[Any]) -> None:
        self.waiting += 1
        if self.waiting == self.expect:
            self.all_waiting.set()
        await self.open.wait()
        await super().publish(event)


def keyed(raw: bytes, key: bytes, offset: int) -> Message[bytes]:
    return Message(ERP_INVOICES, 0, offset, key, {}, raw, raw)


def test_a_batch_runs_invoices_of_different_keys_at_once_and_one_keys_in_order() -> None:
    async def scenario() -> tuple[Gated, Sequence[tuple[Message[Any], InvalidMessage]]]:
        recorder = Gated(expect=3)
        handlers = ingest_handlers(recorder, allow_test_email_domains=True)
        first, second = changed(invoice_number="F-1"), changed(invoice_number="F-1", due_date="2026-12-30")
        batch = [
            keyed(first, b"t/F-1", 0),
            keyed(changed(invoice_number="F-2"), b"t/F-2", 1),
            keyed(b"not json", b"t/F-3", 2),
            keyed(second, b"t/F-1", 3),
        ]
        running = asyncio.create_task(handlers.on_erp_invoices(batch))
        # F-1 (first of its key), F-2 and the rejection of F-3 wait at once; F-1's second waits its turn.
        await asyncio.wait_for(recorder.all_waiting.wait(), 5)
        recorder.open.set()
        return recorder, await running

    recorder, refused = asyncio.run(scenario())
    assert [(m.offset, e.reasons[0].field) for m, e in refused] == [(2, "$")]
    created = [e.data.invoice_number for e in recorder.events if e.type == "invoice.created"]
    assert sorted(created) == ["F-1", "F-1", "F-2"]
    due_dates = [str(e.data.due_date) for e in recorder.events if e.type == "invoice.created" and e.invoice_id == "F-1"]
    assert due_dates[1] == "2026-12-30"  # the later message of a key is handled after the earlier one


def test_an_outage_in_a_batch_stops_it_and_is_raised_for_the_loop_to_retry() -> None:
    class Down(Recorder):
        async def publish(self, event: Envelope[Any]) -> None:
            raise ConnectionError("broker unreachable")

    batch = [keyed(changed(invoice_number=f"F-{n}"), f"t/F-{n}".encode(), n) for n in range(5)]
    with pytest.raises(ConnectionError):
        asyncio.run(ingest_handlers(Down(), allow_test_email_domains=True).on_erp_invoices(batch))


#: An invoice of the contract as it was before the legal-content fields (issue 12) existed.
BEFORE_LEGAL_FIELDS = {
    "tenant_id": "lisboa-tech",
    "erp_source": "primavera",
    "invoice_number": "LIS-20261120-00001",
    "issue_date": "2026-11-20",
    "due_date": "2026-12-20",
    "currency": "EUR",
    "seller_name": "Lisboa Tech, Lda.",
    "customer": {
        "id": "C-0001",
        "name": "Cliente 1 PT",
        "country": "PT",
        "email": "billing1@lisboa-tech.test",
        "phone": "912 345 678",
    },
    "lines": [
        {"description": "Consultoria técnica (horas)", "quantity": "6", "unit_price": "75.00", "tax_rate": "23"},
        {"description": "Servicio de entrega / delivery", "quantity": "1", "unit_price": "15.00", "tax_rate": "0"},
    ],
}


def test_a_message_of_the_older_contract_digests_as_it_did_so_a_resend_stays_a_duplicate() -> None:
    """The digest the version store kept for this message before the contract grew (pinned)."""
    _, invoice = invoice_from_erp(BEFORE_LEGAL_FIELDS, allow_test_domains=True, today=date(2026, 11, 20))
    assert _content(invoice) == "ef2d1bc6312fa04764daae536c2a82bce673476ec7dba732082e7e2120d5d9e8"
    richer = BEFORE_LEGAL_FIELDS | {"atcud": "CSDF7T5H-1"}
    _, amended = invoice_from_erp(richer, allow_test_domains=True, today=date(2026, 11, 20))
    assert _content(amended) != _content(invoice)  # a field the ERP now sends is content
