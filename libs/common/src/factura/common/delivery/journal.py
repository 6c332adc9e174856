"""A durable record of webhook calls that were refused or matched nothing (the "why did this
report not count?" answer), shared by every webhook of the product."""

from __future__ import annotations

import logging

from pymongo.asynchronous.collection import AsyncCollection

from factura.common.envelope import utcnow
from factura.common.metrics import counter
from factura.common.mongo import Document

WEBHOOK_CALLS = counter("webhook_calls_total", "Webhook requests by webhook and result.", ("webhook", "result"))

log = logging.getLogger(__name__)


class WebhookLog:
    """Durable record of webhook calls that were refused or did not match a message."""

    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._c = collection

    async def record(self, webhook: str, status: int, reason: str, body: bytes) -> None:
        try:
            await self._c.insert_one(
                {
                    "webhook": webhook,
                    "status": status,
                    "reason": reason[:1000],
                    "body": body[:4096].decode("utf-8", "replace"),
                    "at": utcnow(),
                }
            )
        except Exception:  # the answer to the caller matters more than our own log
            log.exception("webhook refusal not recorded")
