"""Which channel a customer pays after: delivery history and per-invoice credits in MongoDB.

The rule (docs/delivery.md, "Most effective channel"): an invoice paid in full is *credited* to
the channel of the last ``delivery.succeeded`` for it (invoice or reminder) that happened before
the payment and at most ``window_days`` before it, once per invoice. A customer's most effective
channel is the one with the most credits, ties broken by the tenant's channel order, once there
are ``min_payments`` credits.

The scheduler writes (it sees deliveries and payments); ingest reads when it accepts an invoice.
Two collections, every write an ``insert_one`` with a deterministic ``_id`` (a duplicate key
means already recorded) or a conditional ``update_one``, never an upsert: the local MongoDB-wire
server does not take an upsert's ``_id`` from its filter. Times are epoch milliseconds, which it
keeps as numbers (``$set`` datetimes can come back as strings).

Deliveries and payments arrive on different topics, so either may be handled first. Both sides
store first and look second: a payment stores its credit (channel unknown yet) and then looks for
the delivery; a delivery stores itself and then moves any credit whose window it falls in to
itself when it is later than the one credited. Whatever the order, the credit ends on the last
delivery in the window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from factura.common.delivery.policy import DEFAULT_COST, ChannelPolicy
from factura.common.envelope import Envelope
from factura.common.events import Channel, DeliverySucceededV2
from factura.common.mongo import Document

DELIVERIES: Final = "channel_deliveries"
CREDITS: Final = "channel_credits"
#: ``from_at`` of a credit no delivery has claimed yet: earlier than any delivery.
_UNCLAIMED: Final = -1


def epoch_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def tenant_order(policy: ChannelPolicy) -> list[Channel]:
    """The tenant's own channel order (listed, or cheapest first), before any customer's channel."""
    channels = list(policy.channels)
    if policy.order == "cost":
        channels.sort(key=lambda c: policy.cost.get(c, DEFAULT_COST[c]))
    return channels


@dataclass(frozen=True)
class Delivery:
    event_id: str
    channel: Channel
    at_ms: int


def credited_delivery(deliveries: Iterable[Delivery], paid_at_ms: int, window_ms: int) -> Delivery | None:
    """The delivery a payment is credited to: the last one before it, at most ``window_ms`` before."""
    inside = [d for d in deliveries if paid_at_ms - window_ms <= d.at_ms < paid_at_ms]
    return max(inside, key=lambda d: (d.at_ms, d.event_id), default=None)


def most_credited(credits: Mapping[Channel, int], order: Sequence[Channel], min_payments: int) -> Channel | None:
    """The channel with the most credits among ``order``'s, earlier in ``order`` on a tie.

    ``None`` below ``min_payments`` credits: too little history to trust. Credits for channels the
    tenant no longer uses do not count.
    """
    counted = {c: credits.get(c, 0) for c in order}
    if sum(counted.values()) < min_payments:
        return None
    return max(order, key=lambda c: (counted[c], -order.index(c)))


class ChannelEffectiveness:
    """The store the rule runs on (see the module docstring)."""

    def __init__(self, deliveries: AsyncCollection[Document], credits: AsyncCollection[Document]) -> None:
        self._deliveries = deliveries
        self._credits = credits

    @classmethod
    def in_database(cls, db: AsyncDatabase[Document]) -> ChannelEffectiveness:
        return cls(db[DELIVERIES], db[CREDITS])

    async def ensure_indexes(self) -> None:
        await self._deliveries.create_index([("tenant_id", 1), ("invoice_id", 1), ("at", 1)])
        await self._credits.create_index([("tenant_id", 1), ("customer_id", 1), ("paid_at", 1)])

    async def record_delivery(self, event: Envelope[DeliverySucceededV2]) -> None:
        """Remember a delivery (once per event id) and claim any credit it now deserves; the owner's
        daily summary (purpose ``report``) reaches no customer and earns no channel credit."""
        notice = event.data.notice
        if notice.purpose == "report":
            return
        invoice_id = event.invoice_id or notice.invoice.invoice_number
        delivery = Delivery(str(event.event_id), event.data.channel, epoch_ms(event.occurred_at))
        doc: Document = {
            "_id": delivery.event_id,
            "tenant_id": event.tenant_id,
            "invoice_id": invoice_id,
            "customer_id": notice.invoice.customer.customer_id,
            "channel": delivery.channel,
            "purpose": notice.purpose,
            "at": delivery.at_ms,
        }
        # Redelivered: the claim below may not have run the first time, so it runs again.
        with contextlib.suppress(DuplicateKeyError):
            await self._deliveries.insert_one(doc)
        await self._claim(_key(event.tenant_id, invoice_id), delivery)

    async def credit_payment(
        self, tenant_id: str, invoice_id: str, customer_id: str, paid_at: datetime, window_days: int
    ) -> Channel | None:
        """Credit the invoice, paid in full at ``paid_at``; the channel credited (``None``: no delivery
        in the window, yet). Only the first call per invoice counts: later ones return its answer."""
        key = _key(tenant_id, invoice_id)
        paid_ms = epoch_ms(paid_at)
        with contextlib.suppress(DuplicateKeyError):  # credited before: its own payment time and window stand
            await self._credits.insert_one(
                {
                    "_id": key,
                    "tenant_id": tenant_id,
                    "invoice_id": invoice_id,
                    "customer_id": customer_id,
                    "paid_at": paid_ms,
                    "window_start": paid_ms - int(timedelta(days=window_days).total_seconds() * 1000),
                    "channel": None,
                    "from_at": _UNCLAIMED,
                    "from_event": None,
                }
            )
        credit = await self._credit(key)
        found = [
            Delivery(d["_id"], d["channel"], int(d["at"]))
            async for d in self._deliveries.find(
                {
                    "tenant_id": tenant_id,
                    "invoice_id": invoice_id,
                    "at": {"$gte": int(credit["window_start"]), "$lt": int(credit["paid_at"])},
                }
            )
        ]
        best = credited_delivery(found, int(credit["paid_at"]), int(credit["paid_at"]) - int(credit["window_start"]))
        if best is None:
            return _channel(credit)
        await self._claim(key, best)
        return _channel(await self._credit(key))

    async def best_channel(
        self, tenant_id: str, customer_id: str, *, before: datetime, order: Sequence[Channel], min_payments: int
    ) -> Channel | None:
        """The customer's most effective channel from credits for payments made before ``before``."""
        pipeline: list[Document] = [
            {
                "$match": {
                    "tenant_id": tenant_id,
                    "customer_id": customer_id,
                    "paid_at": {"$lt": epoch_ms(before)},
                    "channel": {"$in": list(order)},
                }
            },
            {"$group": {"_id": "$channel", "n": {"$sum": 1}}},
        ]
        counts = {doc["_id"]: int(doc["n"]) async for doc in await self._credits.aggregate(pipeline)}
        return most_credited(counts, order, min_payments)

    async def _claim(self, key: str, delivery: Delivery) -> None:
        """Move the credit ``key`` to ``delivery`` if it falls in the credit's window and is later
        than the delivery credited so far (ties in the same millisecond: the first one stays)."""
        await self._credits.update_one(
            {
                "_id": key,
                "window_start": {"$lte": delivery.at_ms},
                "paid_at": {"$gt": delivery.at_ms},
                "from_at": {"$lt": delivery.at_ms},
            },
            {"$set": {"channel": delivery.channel, "from_at": delivery.at_ms, "from_event": delivery.event_id}},
        )

    async def _credit(self, key: str) -> Document:
        doc = await self._credits.find_one({"_id": key})
        if doc is None:
            raise RuntimeError(f"channel credit {key} missing right after it was written")
        return doc


def _key(tenant_id: str, invoice_id: str) -> str:
    return f"{tenant_id}/{invoice_id}"


def _channel(doc: Mapping[str, Any]) -> Channel | None:
    channel: Channel | None = doc.get("channel")
    return channel
