"""``POST /v1/webhooks/sms-status``: what the provider learnt after it accepted a message or call.

Twilio (and the local capture server) POST a status callback, signed with ``X-Twilio-Signature``
over the public callback URL and the form fields. ``delivered`` / ``completed`` confirm what the
ledger already records; ``undelivered`` / ``failed`` (with an ``ErrorCode``), and ``busy`` /
``no-answer`` for calls, become ``delivery.failed`` for the accepted message, and the policy
hands it on exactly as after a refusal on the spot. Unsigned, unreadable or unmatched callbacks
get a 4xx and are recorded in ``webhook_log``.
"""

from __future__ import annotations

import logging
from typing import Any, Final
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from factura.common.delivery.journal import WEBHOOK_CALLS, WebhookLog
from factura.common.delivery.reports import LateReports
from factura.common.delivery.suppression import SuppressionStore
from factura.common.events import FailureReason
from factura.common.kafka.producer import Publisher
from factura.common.ledger import DeliveryLedger
from factura.common.metrics import counter
from factura.common.tenants import TenantDirectory
from factura.common.webhooks import WebhookAuthError, verify_twilio
from factura.sms_sender.handlers import PRODUCER

STATUS_CALLBACKS = counter("sms_status_callbacks_total", "Provider status callbacks by status.", ("status",))
#: Twilio error codes with a meaning of their own; any other failure is a provider error.
ERROR_REASONS: Final[dict[str, FailureReason]] = {
    "30005": "hard_bounce",  # unknown destination handset: the number does not exist
    "30006": "not_mobile",  # landline or unreachable carrier
    "21610": "complaint",  # the recipient replied STOP
    "21614": "not_mobile",
}
FAILED: Final = frozenset({"undelivered", "failed", "busy", "no-answer", "canceled"})
CONFIRMED: Final = frozenset({"delivered", "completed", "sent", "queued", "sending", "ringing", "in-progress"})
MAX_BODY: Final = 64 * 1024

log = logging.getLogger(__name__)


def failure_reason(status: str, error_code: str) -> FailureReason:
    if status in ("busy", "no-answer"):
        return "soft_bounce"
    return ERROR_REASONS.get(error_code, "provider_error")


class StatusHandler:
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

    async def handle(self, sid: str, status: str, error_code: str) -> tuple[int, str]:
        """HTTP status and what happened."""
        if status in CONFIRMED:
            return 200, f"{status}: nothing to do"
        if status not in FAILED:
            return 400, f"unknown status {status!r}"
        delivery = await self._reports.delivery(sid)
        if delivery is None:
            return 404, f"no delivered message or call has sid {sid!r}"
        failed = await self._reports.failed(
            delivery,
            failure_reason(status, error_code),
            f"provider reported {status}" + (f" (error {error_code})" if error_code else ""),
            code=int(error_code) if error_code.isdigit() else None,
        )
        return 200, f"handed on to {failed.data.next_channel or 'nobody: exhausted'}"


def status_router(handler: StatusHandler, *, public_url: str | None, auth_token: str, journal: WebhookLog) -> APIRouter:
    """``public_url``: the callback URL as the provider calls it (what it signs); ``None`` uses
    the request's own URL, which is right only without a proxy in between."""
    router = APIRouter(tags=["webhooks"])

    async def answer(status: int, result: str, detail: str, body: bytes, public: str | None = None) -> JSONResponse:
        if status >= 400:
            return await journal.refuse("sms-status", status, result, detail, body, public=public)
        WEBHOOK_CALLS.labels("sms-status", result).inc()
        return JSONResponse({"detail": detail}, status)

    @router.post("/v1/webhooks/sms-status", response_model=None)
    async def sms_status(request: Request) -> Any:
        body = await request.body()
        if len(body) > MAX_BODY:
            return await answer(413, "too_large", f"body over {MAX_BODY} bytes", b"")
        # Form-encoded, as Twilio posts it (parsed here: no multipart parser needed).
        params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        try:
            verify_twilio(public_url or str(request.url), params, request.headers.get("x-twilio-signature"), auth_token)
        except WebhookAuthError as e:
            return await answer(401, "unauthorised", f"authentication failed: {e}", b"", "authentication failed")
        sid = params.get("MessageSid") or params.get("CallSid")
        status = (params.get("MessageStatus") or params.get("CallStatus") or "").lower()
        if not sid or not status:
            return await answer(400, "bad_report", "MessageSid/CallSid and MessageStatus/CallStatus are required", body)
        STATUS_CALLBACKS.labels(status if status in FAILED | CONFIRMED else "other").inc()
        code, detail = await handler.handle(sid, status, params.get("ErrorCode", ""))
        return await answer(code, "ok" if code < 400 else "unmatched", detail, body)

    return router
