"""Invoice schedules in MongoDB: due date, payments, reminders already announced.

One document per tenant/invoice. Writes are idempotent upserts (payments are a set keyed by
payment id), so redelivered events and a payment arriving before its invoice are both fine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from pymongo.asynchronous.collection import AsyncCollection

from factura.common.envelope import Envelope
from factura.common.events import InvoiceCreatedV1, InvoiceSummary, PaymentReceivedV1, as_datetime, summary_of
from factura.common.mongo import Document


@dataclass(frozen=True)
class Overdue:
    tenant_id: str
    invoice_id: str
    correlation_id: str
    cause_event_id: str
    summary: InvoiceSummary
    paid: Decimal


def _id(tenant_id: str, invoice_id: str) -> str:
    return f"{tenant_id}/{invoice_id}"


class Schedules:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._c = collection

    async def ensure_indexes(self) -> None:
        await self._c.create_index([("reminded", 1), ("due_date", 1)])

    async def record_invoice(self, event: Envelope[InvoiceCreatedV1]) -> None:
        invoice = event.data
        await self._c.update_one(
            {"_id": _id(event.tenant_id, invoice.invoice_number)},
            {
                "$set": {
                    "tenant_id": event.tenant_id,
                    "invoice_id": invoice.invoice_number,
                    "due_date": as_datetime(invoice.due_date),
                    "summary": summary_of(invoice).model_dump(mode="json"),
                    "correlation_id": event.correlation_id,
                    "cause_event_id": str(event.event_id),
                },
                "$setOnInsert": {"reminded": False, "payments": []},
            },
            upsert=True,
        )

    async def record_payment(self, event: Envelope[PaymentReceivedV1]) -> None:
        payment = event.data
        invoice_id = event.invoice_id or ""
        await self._c.update_one(
            {"_id": _id(event.tenant_id, invoice_id)},
            {
                "$addToSet": {"payments": {"payment_id": payment.payment_id, "amount": str(payment.amount)}},
                "$setOnInsert": {"tenant_id": event.tenant_id, "invoice_id": invoice_id, "reminded": False},
            },
            upsert=True,
        )

    async def overdue(self, today: date) -> AsyncIterator[Overdue]:
        """Invoices due before ``today``, not fully paid, not yet reminded."""
        cursor = self._c.find({"reminded": False, "due_date": {"$lt": as_datetime(today)}})
        async for doc in cursor:
            if "summary" not in doc:
                continue  # a payment whose invoice we have not seen yet
            summary = InvoiceSummary.model_validate(doc["summary"])
            paid = sum((Decimal(p["amount"]) for p in doc.get("payments", [])), Decimal("0"))
            if paid >= summary.total:
                continue
            yield Overdue(
                doc["tenant_id"], doc["invoice_id"], doc["correlation_id"], doc["cause_event_id"], summary, paid
            )

    async def mark_reminded(self, tenant_id: str, invoice_id: str, at: datetime) -> None:
        await self._c.update_one({"_id": _id(tenant_id, invoice_id)}, {"$set": {"reminded": True, "reminded_at": at}})
