"""A durable record of webhook calls that were refused or matched nothing (the "why did this
report not count?" answer), shared by every webhook of the product."""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse
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

    async def refuse(
        self, webhook: str, status: int, result: str, reason: str, body: bytes, *, public: str | None = None
    ) -> JSONResponse:
        """Answer a refused or unmatched call: count it, record it, log it. ``public`` replaces
        the reason in the answer where the reason would help an attacker (authentication)."""
        WEBHOOK_CALLS.labels(webhook, result).inc()
        await self.record(webhook, status, reason, body)
        log.warning("%s webhook refused: %s", webhook, reason)
        return JSONResponse({"detail": public or reason}, status)
