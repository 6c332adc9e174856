"""Invoice schedules in MongoDB: the invoice, its payments, render rejections, reminders announced.

One document per tenant/invoice, whichever event arrives first creates it. Every write is an
idempotent upsert (payments and rejections are sets), so redelivered events, a payment before
its invoice and a rejection before its invoice are all fine. Each write is followed by a read of
the whole document: of two events for one invoice handled at the same time, the one written
second reads both, so a decision that needs both (a payment's currency against the invoice's) is
always taken by at least one of them.

Only ``update_one`` upserts and plain finds are used: the local MongoDB-wire server applies
``$setOnInsert``/``$addToSet`` on ``update_one`` upserts but not on ``find_one_and_update`` ones.
It also ignores ``$addToSet`` on a field the document lacks, so whichever event creates the
document creates both arrays (``payments``, ``rejections``) empty.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime

from pymongo.asynchronous.collection import AsyncCollection

from factura.common.envelope import Envelope
from factura.common.events import (
    DocumentRef,
    InvoiceCreatedV1,
    InvoiceRejectedV1,
    InvoiceRenderedV1,
    InvoiceSummary,
    PaymentReceivedV1,
    as_datetime,
    summary_of,
)
from factura.common.mongo import Document
from factura.scheduler.decisions import InvoiceInfo, ScheduleState, payment_from_document


def _id(tenant_id: str, invoice_id: str) -> str:
    return f"{tenant_id}/{invoice_id}"


def state_from_document(doc: Document) -> ScheduleState:
    invoice = None
    if "summary" in doc:
        invoice = InvoiceInfo(
            summary=InvoiceSummary.model_validate(doc["summary"]),
            correlation_id=doc["correlation_id"],
            cause_event_id=doc["cause_event_id"],
        )
    return ScheduleState(
        tenant_id=doc["tenant_id"],
        invoice_id=doc["invoice_id"],
        invoice=invoice,
        payments=tuple(payment_from_document(p) for p in doc.get("payments", [])),
        rejected_causes=frozenset(r.get("cause") for r in doc.get("rejections", [])),
        reminded=bool(doc.get("reminded", False)),
        document=DocumentRef.model_validate(doc["document"]) if doc.get("document") else None,
    )


class Schedules:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._c = collection

    async def ensure_indexes(self) -> None:
        await self._c.create_index([("reminded", 1), ("due_date", 1)])

    async def _upsert(self, tenant_id: str, invoice_id: str, update: Document) -> ScheduleState:
        key = _id(tenant_id, invoice_id)
        update.setdefault("$setOnInsert", {}).update({"tenant_id": tenant_id, "invoice_id": invoice_id})
        await self._c.update_one({"_id": key}, update, upsert=True)
        doc = await self._c.find_one({"_id": key})
        if doc is None:
            raise RuntimeError(f"schedule {key} missing right after its upsert")
        return state_from_document(doc)

    async def record_invoice(self, event: Envelope[InvoiceCreatedV1]) -> ScheduleState:
        invoice = event.data
        return await self._upsert(
            event.tenant_id,
            invoice.invoice_number,
            {
                "$set": {
                    "due_date": as_datetime(invoice.due_date),
                    "summary": summary_of(invoice).model_dump(mode="json"),
                    "correlation_id": event.correlation_id,
                    "cause_event_id": str(event.event_id),
                },
                "$setOnInsert": {"reminded": False, "payments": [], "rejections": []},
            },
        )

    async def record_document(self, event: Envelope[InvoiceRenderedV1], invoice_id: str) -> ScheduleState:
        """The document the customer got, so reminders can link to it (the last rendering wins)."""
        return await self._upsert(
            event.tenant_id,
            invoice_id,
            {
                "$set": {"document": event.data.document.model_dump(mode="json")},
                "$setOnInsert": {"reminded": False, "payments": [], "rejections": []},
            },
        )

    async def record_payment(self, event: Envelope[PaymentReceivedV1], invoice_id: str) -> ScheduleState:
        payment = event.data
        entry = {
            "payment_id": payment.payment_id,
            "amount": str(payment.amount),
            "event_id": str(event.event_id),
            "correlation_id": event.correlation_id,
            "data": payment.model_dump(mode="json"),
        }
        return await self._upsert(
            event.tenant_id,
            invoice_id,
            {"$addToSet": {"payments": entry}, "$setOnInsert": {"reminded": False, "rejections": []}},
        )

    async def record_rejection(self, event: Envelope[InvoiceRejectedV1], invoice_id: str) -> ScheduleState:
        entry = {
            "event_id": str(event.event_id),
            "cause": str(event.causation_id) if event.causation_id else None,
            "stage": event.data.stage,
        }
        return await self._upsert(
            event.tenant_id,
            invoice_id,
            {"$addToSet": {"rejections": entry}, "$setOnInsert": {"reminded": False, "payments": []}},
        )

    async def candidates(self, today: date) -> AsyncIterator[ScheduleState]:
        """Invoices due before ``today`` not yet reminded; :func:`decide` has the last word."""
        cursor = self._c.find({"reminded": False, "due_date": {"$lt": as_datetime(today)}})
        async for doc in cursor:
            yield state_from_document(doc)

    async def state(self, tenant_id: str, invoice_id: str) -> ScheduleState | None:
        doc = await self._c.find_one({"_id": _id(tenant_id, invoice_id)})
        return None if doc is None else state_from_document(doc)

    async def mark_reminded(self, tenant_id: str, invoice_id: str, at: datetime) -> None:
        await self._c.update_one({"_id": _id(tenant_id, invoice_id)}, {"$set": {"reminded": True, "reminded_at": at}})
