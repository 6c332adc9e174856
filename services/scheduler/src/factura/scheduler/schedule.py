"""Invoice schedules in MongoDB: the invoice, its payments, render rejections, cancellation, and
its timer: the next occurrence of the tenant's reminder plan (``next_key``) and when it is due
(``next_due_ms``, indexed), after the last one handled (``cursor``).

One document per tenant/invoice, whichever event arrives first creates it. Every write is an
idempotent upsert (payments and rejections are sets), so redelivered events, a payment before
its invoice and a rejection before its invoice are all fine. Each write is followed by a read of
the whole document: of two events for one invoice handled at the same time, the one written
second reads both, so a decision that needs both (a payment's currency against the invoice's) is
always taken by at least one of them.

Each write also keeps what the invoice still owes, for the overdue gauges: ``open_amount`` (a
number, 0 once paid, cancelled or refused at render), ``open_currency`` and ``open_due`` (the due
date as ``YYYY-MM-DD``: the local server's aggregation does not compare datetimes, strings it
does). They are derived from the document as read back, and written only when they change, by
compare-and-set on ``rev`` (bumped by every write), so of two events racing the later one's view
stands. One aggregation then sums them (:meth:`Schedules.overdue`).

The customer's contact data in ``summary.customer`` (name, email, phone, push token, address) is
stored as tokens under the customer's data key (:mod:`factura.common.pii`) and decrypted on every
read. After an erasure it reads as gone: :attr:`InvoiceInfo.contact_lost` says so and the handlers
stop the invoice's reminders (``stopped: customer_erased``), while amounts and dates stay. A schedule
written before encryption still reads (a value that is not a token is taken as it is) and is sealed
by the next version of its invoice.

Only ``update_one`` upserts and plain finds are used: the local MongoDB-wire server applies
``$setOnInsert``/``$addToSet`` on ``update_one`` upserts but not on ``find_one_and_update`` ones.
It also ignores ``$addToSet`` on a field the document lacks, so whichever event creates the
document creates both arrays (``payments``, ``rejections``) empty.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from factura.common.envelope import Envelope
from factura.common.events import (
    DocumentRef,
    InvoiceCancelledV1,
    InvoiceCreatedV1,
    InvoiceRejectedV2,
    InvoiceRenderedV1,
    InvoiceSummary,
    PaymentReceivedV1,
    as_datetime,
    summary_of,
)
from factura.common.mongo import Document, exact
from factura.common.pii import FieldCipher
from factura.common.reminders import Cursor
from factura.scheduler.decisions import InvoiceInfo, ScheduleState, is_open, outstanding, payment_from_document

#: ``next_due_ms`` of a schedule with nothing pending: never due, and never null (a null would need
#: care in range queries on every MongoDB-wire server).
NEVER = 2**62


@dataclass(frozen=True)
class Overdue:
    """Open invoices of one currency past their due date."""

    invoices: int
    amount: float


def _id(tenant_id: str, invoice_id: str) -> str:
    return f"{tenant_id}/{invoice_id}"


def state_from_document(doc: Document, contact_lost: str | None = None) -> ScheduleState:
    """The state of a schedule document whose customer contact data is already in the clear."""
    invoice = None
    if "summary" in doc:
        invoice = InvoiceInfo(
            summary=InvoiceSummary.model_validate(doc["summary"]),
            correlation_id=doc["correlation_id"],
            cause_event_id=doc["cause_event_id"],
            contact_lost=contact_lost,
        )
    return ScheduleState(
        tenant_id=doc["tenant_id"],
        invoice_id=doc["invoice_id"],
        invoice=invoice,
        payments=tuple(payment_from_document(p) for p in doc.get("payments", [])),
        rejected_causes=frozenset(r.get("cause") for r in doc.get("rejections", [])),
        document=DocumentRef.model_validate(doc["document"]) if doc.get("document") else None,
        cancelled=bool(doc.get("cancelled")),
        cursor=(int(doc["cursor"][0]), str(doc["cursor"][1])) if doc.get("cursor") else None,
        next_key=doc.get("next_key"),
        next_due_ms=doc.get("next_due_ms"),
        anchor=date.fromisoformat(doc["anchor"]) if doc.get("anchor") else None,
    )


class Schedules:
    def __init__(self, collection: AsyncCollection[Document], cipher: FieldCipher) -> None:
        self._c = collection
        self._cipher = cipher

    async def _state(self, doc: Document) -> ScheduleState:
        """The state of a stored schedule, with the customer's contact data decrypted (or, after
        an erasure, gone: :attr:`InvoiceInfo.contact_lost` says why)."""
        if "summary" not in doc:
            return state_from_document(doc)
        customer, lost = await self._cipher.open_contact(doc["tenant_id"], doc["summary"]["customer"])
        return state_from_document(doc | {"summary": doc["summary"] | {"customer": customer}}, contact_lost=lost)

    async def ensure_indexes(self) -> None:
        # The timer: a tick asks only for what is due, so an idle tick costs one index lookup
        # however many invoices are open.
        await self._c.create_index("next_due_ms")
        # Campaigns: a tenant's invoices by due date (how many days overdue they are).
        await self._c.create_index([("tenant_id", 1), ("due_date", 1)])
        # The overdue gauges: open invoices by due date.
        await self._c.create_index([("open_amount", 1), ("open_due", 1)])

    async def _upsert(self, tenant_id: str, invoice_id: str, update: Document) -> ScheduleState:
        return (await self._upsert_owed(tenant_id, invoice_id, update))[0]

    async def _upsert_owed(self, tenant_id: str, invoice_id: str, update: Document) -> tuple[ScheduleState, bool]:
        """The write, then the document read back; and whether what the invoice owes went down."""
        key = _id(tenant_id, invoice_id)
        update.setdefault("$setOnInsert", {}).update({"tenant_id": tenant_id, "invoice_id": invoice_id})
        update["$inc"] = {"rev": 1}
        await self._c.update_one({"_id": key}, update, upsert=True)
        doc = await self._c.find_one({"_id": key})
        if doc is None:
            raise RuntimeError(f"schedule {key} missing right after its upsert")
        state = await self._state(doc)
        owed = _owed(state)
        if all(doc.get(field) == value for field, value in owed.items()):
            return state, False
        moved = await self._c.update_one({"_id": key, "rev": doc["rev"]}, {"$set": owed})
        # Not yet priced (no invoice until now, or written before amounts were kept): it owed the total.
        before = doc.get("open_amount") if doc.get("open_currency") is not None else None
        if before is None and state.invoice is not None:
            before = float(state.invoice.summary.total)
        return state, bool(moved.matched_count) and before is not None and owed["open_amount"] < before

    async def record_invoice(self, event: Envelope[InvoiceCreatedV1]) -> ScheduleState:
        return (await self.record_invoice_owed(event))[0]

    async def record_invoice_owed(self, event: Envelope[InvoiceCreatedV1]) -> tuple[ScheduleState, bool]:
        """Record the invoice; also whether payments recorded before it now lower what it owes."""
        invoice = event.data
        summary = summary_of(invoice).model_dump(mode="json")
        summary["customer"] = await self._cipher.seal_contact(event.tenant_id, summary["customer"])
        return await self._upsert_owed(
            event.tenant_id,
            invoice.invoice_number,
            {
                "$set": {
                    "due_date": as_datetime(invoice.due_date),
                    "summary": summary,
                    "correlation_id": event.correlation_id,
                    "cause_event_id": str(event.event_id),
                },
                "$setOnInsert": {"payments": [], "rejections": []},
            },
        )

    async def record_document(self, event: Envelope[InvoiceRenderedV1], invoice_id: str) -> ScheduleState:
        """The document the customer got, so reminders can link to it (the last rendering wins)."""
        return await self._upsert(
            event.tenant_id,
            invoice_id,
            {
                "$set": {"document": event.data.document.model_dump(mode="json")},
                "$setOnInsert": {"payments": [], "rejections": []},
            },
        )

    async def record_cancellation(self, event: Envelope[InvoiceCancelledV1], invoice_id: str) -> ScheduleState:
        return await self._upsert(
            event.tenant_id,
            invoice_id,
            {
                "$set": {"cancelled": True, "cancellation": event.data.model_dump(mode="json")},
                "$setOnInsert": {"payments": [], "rejections": []},
            },
        )

    async def set_anchor(self, tenant_id: str, invoice_id: str, anchor: date) -> None:
        await self._c.update_one({"_id": _id(tenant_id, invoice_id)}, {"$set": {"anchor": anchor.isoformat()}})

    async def plan(
        self, state: ScheduleState, *, cursor: Cursor | None, key: str, due_ms: int, fresh: bool = False
    ) -> bool:
        """Move the timer: the next occurrence ``key`` at ``due_ms`` after ``cursor`` (``key`` "" and
        :data:`NEVER`: nothing pending). A compare-and-set on the key the caller saw (or on there being
        none, ``fresh``), so a sweep never revives a schedule a payment just closed. False when the
        timer had moved meanwhile (the other writer's state stands)."""
        expected: Document = {"next_key": {"$exists": False}} if fresh else {"next_key": state.next_key}
        result = await self._c.update_one(
            {"_id": _id(state.tenant_id, state.invoice_id), **expected},
            {"$set": {"cursor": list(cursor) if cursor else None, "next_key": key, "next_due_ms": due_ms}},
        )
        return bool(result.matched_count)

    async def close(self, tenant_id: str, invoice_id: str, *, stopped: str | None = None) -> None:
        """Nothing more is due for this invoice (paid, cancelled, refused at render): at once,
        whatever the timer was waiting for. ``stopped``: why reminders stop while the invoice is
        still open (``customer_erased``), kept on the schedule as ``stopped``."""
        update: Document = {"next_key": "", "next_due_ms": NEVER}
        if stopped is not None:
            update["stopped"] = stopped
        await self._c.update_one({"_id": _id(tenant_id, invoice_id)}, {"$set": update})

    async def record_payment(self, event: Envelope[PaymentReceivedV1], invoice_id: str) -> ScheduleState:
        return (await self.apply_payment(event, invoice_id))[0]

    async def apply_payment(self, event: Envelope[PaymentReceivedV1], invoice_id: str) -> tuple[ScheduleState, bool]:
        """Record the payment; also whether it lowered what the invoice owes (not for a redelivery,
        a payment in another currency, one of a cancelled invoice or one before its invoice)."""
        payment = event.data
        entry = {
            "payment_id": payment.payment_id,
            "amount": str(payment.amount),
            "event_id": str(event.event_id),
            "correlation_id": event.correlation_id,
            "data": payment.model_dump(mode="json"),
        }
        return await self._upsert_owed(
            event.tenant_id,
            invoice_id,
            {"$addToSet": {"payments": entry}, "$setOnInsert": {"rejections": []}},
        )

    async def record_rejection(self, event: Envelope[InvoiceRejectedV2], invoice_id: str) -> ScheduleState:
        entry = {
            "event_id": str(event.event_id),
            "cause": str(event.causation_id) if event.causation_id else None,
            "stage": event.data.stage,
        }
        return await self._upsert(
            event.tenant_id,
            invoice_id,
            {"$addToSet": {"rejections": entry}, "$setOnInsert": {"payments": []}},
        )

    async def due(self, now_ms: int, limit: int) -> list[ScheduleState]:
        """The schedules whose timer fired by ``now_ms``, earliest first (at most ``limit``)."""
        cursor = self._c.find({"next_due_ms": {"$lte": now_ms}}).sort("next_due_ms", 1).limit(limit)
        return [await self._state(doc) async for doc in cursor]

    async def due_between(self, tenant_id: str, first: date, last: date) -> AsyncIterator[ScheduleState]:
        """The tenant's invoices due from ``first`` to ``last`` (both included), in no set order."""
        query = exact({"tenant_id": tenant_id}) | {"due_date": {"$gte": as_datetime(first), "$lte": as_datetime(last)}}
        async for doc in self._c.find(query):
            yield await self._state(doc)

    async def states(self, tenant_id: str, invoice_ids: Sequence[str]) -> dict[str, ScheduleState]:
        """The schedules of these invoices of one tenant that exist, by invoice id (one query)."""
        cursor = self._c.find({"_id": {"$in": [_id(tenant_id, i) for i in invoice_ids]}})
        return {doc["invoice_id"]: await self._state(doc) async for doc in cursor}

    async def overdue(self, today: date) -> dict[str, Overdue]:
        """Open invoices due before ``today``, per currency: one aggregation over every schedule.

        Measured on the local MongoDB-wire server: 0.15-0.2 s for 100 000 schedules (30 % open),
        index or not; on MongoDB the ``(open_amount, open_due)`` index serves the ``$match``.
        """
        pipeline: list[Document] = [
            {"$match": {"open_amount": {"$gt": 0}, "open_due": {"$lt": today.isoformat()}}},
            {"$group": {"_id": "$open_currency", "invoices": {"$sum": 1}, "amount": {"$sum": "$open_amount"}}},
        ]
        return {
            str(doc["_id"]): Overdue(int(doc["invoices"]), float(doc["amount"]))
            async for doc in await self._c.aggregate(pipeline)
        }

    async def state(self, tenant_id: str, invoice_id: str) -> ScheduleState | None:
        doc = await self._c.find_one({"_id": _id(tenant_id, invoice_id)})
        return None if doc is None else await self._state(doc)


def _owed(state: ScheduleState) -> dict[str, Any]:
    """The fields the overdue gauges sum: what the invoice still owes, in which currency, from when."""
    if state.invoice is None:
        return {"open_amount": 0.0}
    summary = state.invoice.summary
    return {
        "open_amount": float(outstanding(state)) if is_open(state) else 0.0,
        "open_currency": summary.currency,
        "open_due": summary.due_date.isoformat(),
    }
