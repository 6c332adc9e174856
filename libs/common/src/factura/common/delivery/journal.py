"""A durable record of webhook calls that were refused or matched nothing (the "why did this
report not count?" answer), shared by every webhook of the product.

Such a body (a DSN, an SMS status callback) is about a recipient, but one the product could not
tie to a known customer, so nothing can be encrypted under a customer's data key and an erasure
could not reach it. So the log keeps only what serves its purpose: the body with email addresses,
phone numbers and recipient headers masked (:func:`~factura.common.pii.masking.mask_contacts`),
its length, and, given a key, an HMAC-SHA256 of the full body (``body_hmac``), which tells whether
a body a provider still has is the one refused. Keyed, because a plain SHA-256 beside the masked
body would give the masked phone number away to a few billion guesses. Records expire after
``ttl_days`` (a TTL index on ``at``); :meth:`WebhookLog.recent` also filters on age, since a
MongoDB-wire server of a development stack may not expire documents.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from fastapi.responses import JSONResponse
from pymongo import DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from factura.common.envelope import utcnow
from factura.common.metrics import counter
from factura.common.mongo import Document, exact
from factura.common.pii.masking import mask_contacts

WEBHOOK_CALLS = counter("webhook_calls_total", "Webhook requests by webhook and result.", ("webhook", "result"))
#: How much of a masked body is kept. Masking reads a little more, so that an address cut by the
#: end of what is kept was still seen whole (an address has at most 320 characters).
MAX_BODY_CHARS = 4096
_MASKED_CHARS = MAX_BODY_CHARS + 512

log = logging.getLogger(__name__)


class WebhookLog:
    """Durable record of webhook calls that were refused or did not match a message."""

    def __init__(
        self,
        collection: AsyncCollection[Document],
        *,
        digest_key: bytes | None = None,
        ttl_days: int = 30,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._c = collection
        self._key = digest_key
        self._ttl = timedelta(days=ttl_days)
        self._now = now

    async def ensure_indexes(self) -> None:
        await self._c.create_index("at", expireAfterSeconds=int(self._ttl.total_seconds()))

    async def record(self, webhook: str, status: int, reason: str, body: bytes) -> None:
        doc: Document = {
            "webhook": webhook,
            "status": status,
            "reason": mask_contacts(reason)[:1000],
            "body": mask_contacts(body.decode("utf-8", "replace")[:_MASKED_CHARS])[:MAX_BODY_CHARS],
            "body_bytes": len(body),
            "at": self._now(),
        }
        if self._key is not None:
            doc["body_hmac"] = hmac.new(self._key, body, hashlib.sha256).hexdigest()
        try:
            await self._c.insert_one(doc)
        except Exception:  # the answer to the caller matters more than our own log
            log.exception("webhook refusal not recorded")

    async def recent(self, webhook: str, limit: int = 100) -> list[Document]:
        """The webhook's records younger than ``ttl_days``, newest first."""
        query = exact({"webhook": webhook, "at": {"$gt": self._now() - self._ttl}})
        return await self._c.find(query, {"_id": 0}).sort("at", DESCENDING).limit(limit).to_list()

    async def refuse(
        self, webhook: str, status: int, result: str, reason: str, body: bytes, *, public: str | None = None
    ) -> JSONResponse:
        """Answer a refused or unmatched call: count it, record it, log it. ``public`` replaces
        the reason in the answer where the reason would help an attacker (authentication)."""
        WEBHOOK_CALLS.labels(webhook, result).inc()
        await self.record(webhook, status, reason, body)
        log.warning("%s webhook refused: %s", webhook, mask_contacts(reason))
        return JSONResponse({"detail": public or reason}, status)
