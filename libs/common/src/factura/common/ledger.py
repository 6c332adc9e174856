"""Delivery ledger: how a sender makes "send once" survive redelivery and restarts.

A sender claims ``<source event_id>:<channel>`` before sending. When the send finished, it
stores the outcome event *before* publishing it. A redelivered message then finds the claim
done and re-publishes the stored outcome (same event_id, so audit keeps one copy) instead of
sending again. Only a crash between the provider accepting the message and ``finish`` can
repeat a send: the unavoidable at-least-once window, kept to one network round trip.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from factura.common.envelope import Envelope, utcnow
from factura.common.events import parse_event
from factura.common.mongo import Document

log = logging.getLogger(__name__)


class DeliveryLedger:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._deliveries = collection

    async def ensure_indexes(self) -> None:
        await self._deliveries.create_index([("tenant_id", 1), ("invoice_id", 1)])

    async def deliver_once(
        self,
        cause: Envelope[Any],
        channel: str,
        deliver: Callable[[], Awaitable[Envelope[Any]]],
        publish: Callable[[Envelope[Any]], Awaitable[None]],
    ) -> None:
        """Run ``deliver`` at most once per (cause, channel); always publish its outcome event."""
        key = f"{cause.event_id}:{channel}"
        outcome = await self.begin(key, cause, channel)
        if outcome is None:
            outcome = await deliver()
            await self.finish(key, outcome)
            log.info("delivery finished", extra={"key": key, "outcome": outcome.type})
        else:
            log.info("already delivered; re-publishing the recorded outcome", extra={"key": key})
        await publish(outcome)

    async def begin(self, key: str, cause: Envelope[Any], channel: str) -> Envelope[Any] | None:
        """Claim ``key``; return the stored outcome event if this delivery already happened."""
        doc = await self._deliveries.find_one({"_id": key})
        if doc is None:
            try:
                await self._deliveries.insert_one(
                    {
                        "_id": key,
                        "tenant_id": cause.tenant_id,
                        "invoice_id": cause.invoice_id,
                        "channel": channel,
                        "state": "sending",
                        "claimed_at": utcnow(),
                    }
                )
            except DuplicateKeyError:
                doc = await self._deliveries.find_one({"_id": key})
        if doc is not None and doc.get("state") == "done":
            return parse_event(doc["outcome"])
        return None

    async def finish(self, key: str, outcome: Envelope[Any]) -> None:
        await self._deliveries.update_one(
            {"_id": key}, {"$set": {"state": "done", "outcome": outcome.model_dump_json(), "done_at": utcnow()}}
        )
