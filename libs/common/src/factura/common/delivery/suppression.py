"""Suppression list: addresses and numbers a tenant must not use again.

An address that hard-bounced or whose owner complained (marked the message as spam, texted
STOP) is suppressed for that tenant, so the next message goes straight to the next channel
instead of bouncing again and hurting the tenant's sender reputation. Entries are kept, not
deleted, when an admin lifts them (who, when and why stay on record); a later bounce suppresses
the address again.

One document per tenant and address, ``_id = "<tenant>:<address>"`` with the address
case-folded (mailbox providers treat local parts case-insensitively in practice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Gauge
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from factura.common.envelope import utcnow
from factura.common.events import Channel, FailureReason
from factura.common.metrics import PREFIX, counter, tenant_label
from factura.common.mongo import Document

log = logging.getLogger(__name__)
CHANGES = counter("suppressions_changed_total", "Suppression list changes.", ("tenant", "channel", "change"))
ACTIVE = Gauge(
    f"{PREFIX}suppressions_active",
    "Addresses suppressed now, per tenant (allow-listed, else `other`; refreshed periodically).",
    ["tenant"],
)


def _labelled(gauge: Gauge) -> list[tuple[str, ...]]:
    """Label values the gauge has been set for."""
    return [tuple(sample.labels.values()) for metric in gauge.collect() for sample in metric.samples]


def normalise(address: str) -> str:
    return address.strip().casefold()


def _when(value: Any) -> datetime:
    """A stored time: nx-27017 returns datetimes written by ``$set`` as ISO strings."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class Suppression:
    tenant_id: str
    address: str
    channel: Channel
    reason: FailureReason
    detail: str
    since: datetime
    source_event_id: str | None
    active: bool
    lifted_by: str | None = None
    lifted_at: datetime | None = None

    @classmethod
    def from_doc(cls, doc: Document) -> Suppression:
        return cls(
            tenant_id=doc["tenant_id"],
            address=doc["address"],
            channel=doc["channel"],
            reason=doc["reason"],
            detail=doc.get("detail", ""),
            since=_when(doc["since"]),
            source_event_id=doc.get("source_event_id"),
            active=bool(doc.get("active")),
            lifted_by=doc.get("lifted_by"),
            lifted_at=_when(doc["lifted_at"]) if doc.get("lifted_at") else None,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "address": self.address,
            "channel": self.channel,
            "reason": self.reason,
            "detail": self.detail,
            "since": self.since.isoformat(),
            "source_event_id": self.source_event_id,
            "active": self.active,
            "lifted_by": self.lifted_by,
            "lifted_at": self.lifted_at.isoformat() if self.lifted_at else None,
        }


class SuppressionStore:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._c = collection

    async def ensure_indexes(self) -> None:
        await self._c.create_index([("tenant_id", 1), ("active", 1)])

    async def suppress(
        self,
        tenant_id: str,
        address: str,
        *,
        channel: Channel,
        reason: FailureReason,
        detail: str,
        source_event_id: str | None,
    ) -> None:
        """Suppress ``address`` (idempotent: a redelivered bounce rewrites the same entry)."""
        key = normalise(address)
        doc_id = f"{tenant_id}:{key}"
        await self._c.replace_one(
            {"_id": doc_id},
            {
                "_id": doc_id,  # nx-27017 does not take an upsert's _id from the filter
                "tenant_id": tenant_id,
                "address": key,
                "channel": channel,
                "reason": reason,
                "detail": detail[:500],
                "since": utcnow(),
                "source_event_id": source_event_id,
                "active": True,
            },
            upsert=True,
        )
        CHANGES.labels(tenant=tenant_label(tenant_id), channel=channel, change="suppressed").inc()

    async def find(self, tenant_id: str, address: str) -> Suppression | None:
        """The active suppression of ``address`` for this tenant, if any."""
        doc = await self._c.find_one({"_id": f"{tenant_id}:{normalise(address)}"})
        if doc is None or not doc.get("active"):
            return None
        return Suppression.from_doc(doc)

    async def list(self, tenant_id: str, *, include_lifted: bool = False, limit: int = 500) -> list[Suppression]:
        query: Document = {"tenant_id": tenant_id} if include_lifted else {"tenant_id": tenant_id, "active": True}
        return [Suppression.from_doc(d) async for d in self._c.find(query).sort("address", 1).limit(limit)]

    async def count(self, tenant_id: str) -> int:
        return await self._c.count_documents({"tenant_id": tenant_id, "active": True})

    async def refresh_gauge(self) -> None:
        """Set ``factura_suppressions_active`` from the store (one aggregation over active entries)."""
        pipeline: list[Document] = [{"$match": {"active": True}}, {"$group": {"_id": "$tenant_id", "n": {"$sum": 1}}}]
        sizes: dict[str, int] = {}
        async for doc in await self._c.aggregate(pipeline):  # tenants off the allow-list add up as `other`
            label = tenant_label(str(doc["_id"]))
            sizes[label] = sizes.get(label, 0) + int(doc["n"])
        for tenant, n in sizes.items():
            ACTIVE.labels(tenant).set(n)
        for (tenant,) in [key for key in _labelled(ACTIVE) if key[0] not in sizes]:
            ACTIVE.labels(tenant).set(0)

    async def run_gauge(self, stopping: asyncio.Event, every_s: float = 60.0) -> None:
        """Background task: refresh the gauge until the service stops (an outage only skips a round)."""
        while not stopping.is_set():
            try:
                await self.refresh_gauge()
            except PyMongoError as e:
                log.info("suppression gauge not refreshed: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=every_s)

    async def lift(self, tenant_id: str, address: str, *, by: str, note: str = "") -> bool:
        """Allow ``address`` again. False when it was not suppressed."""
        key = normalise(address)
        result = await self._c.update_one(
            {"_id": f"{tenant_id}:{key}", "active": True},
            {"$set": {"active": False, "lifted_by": by[:200], "lifted_note": note[:500], "lifted_at": utcnow()}},
        )
        if result.modified_count:
            doc = await self._c.find_one({"_id": f"{tenant_id}:{key}"})
            CHANGES.labels(
                tenant=tenant_label(tenant_id), channel=(doc or {}).get("channel", "email"), change="lifted"
            ).inc()
        return bool(result.modified_count)
