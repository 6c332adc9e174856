"""``POST /v1/webhooks/bounces``: bounces and complaints that arrive after the relay said 250.

A DSN (RFC 3464), an Amazon SES notification (SNS envelope) or the documented generic JSON is
authenticated (HMAC signature or bearer token, :mod:`factura.common.webhooks`), parsed
(:mod:`factura.email_sender.bounces`) and matched to the message it reports by Message-ID,
through the delivery ledger. A hard bounce or a complaint suppresses the address; each bounce
becomes ``delivery.failed`` for the delivered message and the policy's next channel takes over,
exactly like a 550 during the SMTP conversation. Its id derives from the delivery, so a report
sent twice hands the message on once.

Every refused or unmatched body is answered with a 4xx naming the reason and recorded in the
``webhook_log`` collection, so "why did this bounce not count?" has an answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from factura.common.delivery.journal import WEBHOOK_CALLS, WebhookLog
from factura.common.delivery.reports import LateReports
from factura.common.delivery.suppression import SuppressionStore
from factura.common.events import FailureReason
from factura.common.kafka.producer import Publisher
from factura.common.ledger import DeliveryLedger
from factura.common.tenants import TenantDirectory
from factura.common.webhooks import WebhookAuthError, WebhookSettings, authenticate
from factura.email_sender.bounces import BadReport, Bounce, parse_report
from factura.email_sender.handlers import PRODUCER

REASONS: Final[dict[str, FailureReason]] = {"hard": "hard_bounce", "soft": "soft_bounce", "complaint": "complaint"}
Result = Literal["handed_on", "ignored", "unmatched", "not_email"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Handled:
    message_id: str
    result: Result
    detail: str


class BounceHandler:
    def __init__(
        self,
        *,
        ledger: DeliveryLedger,
        publisher: Publisher,
        tenants: TenantDirectory,
        suppressions: SuppressionStore,
    ) -> None:
        self._reports = LateReports(
            producer=PRODUCER, ledger=ledger, publisher=publisher, tenants=tenants, suppressions=suppressions
        )

    async def handle(self, bounce: Bounce) -> Handled:
        if bounce.kind == "delayed":
            return Handled(bounce.message_id, "ignored", "a delay notice: the relay keeps trying")
        delivery = await self._reports.delivery(bounce.message_id)
        if delivery is None:
            return Handled(bounce.message_id, "unmatched", "no delivered message has this Message-ID")
        if delivery.data.channel != "email":
            return Handled(bounce.message_id, "not_email", "the message it names was not sent by email")
        detail = f"{bounce.source} {bounce.kind}: {bounce.diagnostic}"
        failed = await self._reports.failed(
            delivery, REASONS[bounce.kind], detail, enhanced_code=bounce.status, evidence=bounce.evidence
        )
        return Handled(bounce.message_id, "handed_on", f"next channel: {failed.data.next_channel or 'none'}")


def bounce_router(handler: BounceHandler, settings: WebhookSettings, journal: WebhookLog) -> APIRouter:
    router = APIRouter(tags=["webhooks"])

    async def refuse(status: int, result: str, reason: str, body: bytes, public: str | None = None) -> JSONResponse:
        return await journal.refuse("bounces", status, result, reason, body, public=public)

    @router.post("/v1/webhooks/bounces", response_model=None)
    async def bounces(request: Request) -> Any:
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            return await refuse(413, "too_large", f"body over {settings.max_body_bytes} bytes", body[:0])
        try:
            authenticate(request.headers, body, settings)
        except WebhookAuthError as e:
            return await refuse(401, "unauthorised", f"authentication failed: {e}", b"", "authentication failed")
        try:
            reports = parse_report(request.headers.get("content-type", ""), body)
        except BadReport as e:
            return await refuse(400, "bad_report", f"unreadable report: {e}", body)
        handled = [await handler.handle(b) for b in reports]
        items = [{"message_id": h.message_id, "result": h.result, "detail": h.detail} for h in handled]
        if handled and all(h.result in ("unmatched", "not_email") for h in handled):
            reason = "; ".join(f"{h.message_id}: {h.detail}" for h in handled)
            await journal.refuse("bounces", 404, "unmatched", reason, body)
            return JSONResponse({"detail": "no reported message matches a delivery", "items": items}, 404)
        WEBHOOK_CALLS.labels("bounces", "ok").inc()
        return {"items": items}

    return router
