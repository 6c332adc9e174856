"""Ingest counts every ERP record the intake decides on, by door and outcome."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from factura.common.errors import InvalidMessage
from factura.common.kafka.consumer import Message
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantDirectory
from factura.common.topics import ERP_INVOICES, ERP_PAYMENTS, Topic
from factura.ingest.handlers import DOOR_HEADER, IngestHandlers, Source, digest
from factura.ingest.versions import Claim, Head
from tests.unit.test_ingest_handlers import NoHistory, Recorder

INVOICE = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_bytes())
PAYMENT = (EXAMPLES_DIR / "erp.payment.v1.json").read_bytes()


class Versions:
    """In memory, the rule of :class:`~factura.ingest.versions.InvoiceVersions`."""

    def __init__(self) -> None:
        self.heads: dict[tuple[str, str], Head] = {}
        self.kept: set[tuple[str, str, str]] = set()

    async def claim(
        self, tenant_id: str, invoice_number: str, digest: str, event_id: uuid.UUID, *, amendment: bool
    ) -> tuple[Claim, Head]:
        mine, head = Head(digest, event_id), self.heads.get((tenant_id, invoice_number))
        if head is None:
            self.heads[tenant_id, invoice_number] = mine
            return Claim.NEW, mine
        if head.digest == digest:
            return Claim.CURRENT, head
        if (tenant_id, invoice_number, digest) in self.kept:
            return Claim.SUPERSEDED, head
        if not amendment:
            return Claim.CONFLICT, head
        self.heads[tenant_id, invoice_number] = mine
        return Claim.NEW, mine

    async def record(self, tenant_id: str, invoice_number: str, digest: str, event_id: uuid.UUID, source: str) -> bool:
        new = (tenant_id, invoice_number, digest) not in self.kept
        self.kept.add((tenant_id, invoice_number, digest))
        return new


def received(kind: str, door: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(f"factura_{kind}_received_total", {"door": door, "outcome": outcome})
    assert value is not None, f"{kind} {door} {outcome} is not exposed"
    return value


def raw(**changes: Any) -> bytes:
    return json.dumps(INVOICE | {"invoice_number": f"M-{uuid.uuid4().hex[:8]}"} | changes).encode()


def message(body: bytes, topic: Topic = ERP_INVOICES, headers: dict[str, bytes] | None = None) -> Message[bytes]:
    return Message(topic, 0, 7, b"k", headers or {}, body, body)


@pytest.fixture
def handlers() -> IngestHandlers:
    return IngestHandlers(
        Recorder(), TenantDirectory(None), NoHistory(), allow_test_email_domains=True, versions=Versions()
    )


def test_every_door_and_outcome_is_exposed_from_startup(handlers: IngestHandlers) -> None:
    for door in ("kafka", "api", "bulk"):
        for outcome in ("accepted", "duplicate", "amended", "invalid", "conflict"):
            received("invoices", door, outcome)
    for door in ("kafka", "api"):
        for outcome in ("accepted", "invalid"):
            received("payments", door, outcome)


async def test_kafka_door_counts_accepted_duplicate_conflict_amended_and_invalid(handlers: IngestHandlers) -> None:
    first = raw()
    number = json.loads(first)["invoice_number"]
    other = json.dumps(json.loads(first) | {"seller_name": "Other S.A."}).encode()
    amended = json.dumps(json.loads(first) | {"seller_name": "Corrected S.A.", "amendment": True}).encode()
    steps: list[tuple[bytes, str]] = [
        (first, "accepted"),
        (first, "duplicate"),
        (other, "conflict"),
        (amended, "amended"),
        (b"{not json", "invalid"),
    ]
    for body, outcome in steps:
        before = received("invoices", "kafka", outcome)
        try:
            await handlers.on_erp_invoice(message(body))
        except InvalidMessage:
            assert outcome in ("conflict", "invalid"), number
        assert received("invoices", "kafka", outcome) == before + 1, outcome


async def test_bulk_loader_messages_count_under_bulk(handlers: IngestHandlers) -> None:
    before, kafka = received("invoices", "bulk", "accepted"), received("invoices", "kafka", "accepted")
    await handlers.on_erp_invoice(message(raw(), headers={DOOR_HEADER: b"bulk", "tenant_id": b"harinas-sur"}))
    assert received("invoices", "bulk", "accepted") == before + 1
    assert received("invoices", "kafka", "accepted") == kafka


async def test_api_door_is_told_by_its_route(handlers: IngestHandlers) -> None:
    body = raw()
    source = Source("http:/v1/invoices", f"http/{uuid.uuid4()}", digest(body))
    before = received("invoices", "api", "accepted")
    await handlers.intake.invoice(json.loads(body), correlation=None, source=source)
    assert received("invoices", "api", "accepted") == before + 1
    invalid = received("invoices", "api", "invalid")
    await handlers.intake.invoice({"tenant_id": "harinas-sur"}, correlation=None, source=source)
    assert received("invoices", "api", "invalid") == invalid + 1


async def test_payments_count_accepted_and_invalid(handlers: IngestHandlers) -> None:
    accepted, invalid = received("payments", "kafka", "accepted"), received("payments", "kafka", "invalid")
    await handlers.on_erp_payment(message(PAYMENT, ERP_PAYMENTS))
    with pytest.raises(InvalidMessage):
        await handlers.on_erp_payment(message(b'{"tenant_id": "harinas-sur"}', ERP_PAYMENTS))
    assert received("payments", "kafka", "accepted") == accepted + 1
    assert received("payments", "kafka", "invalid") == invalid + 1
