"""``GET /d/{token}``: serve the document behind a signed link, and record that it was opened.

Every refusal of a link gets the same 403 body, so a client cannot tell a forged token from an
expired one. The ``document.downloaded`` event is published after the response is sent: a
broker outage must not delay or break the customer's download (availability beats tracking).
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
import uuid
from urllib.parse import quote

from botocore.exceptions import ClientError
from fastapi import APIRouter, BackgroundTasks, Request, Response
from fastapi.responses import JSONResponse

from factura.common.envelope import make_event, stable_id
from factura.common.events import CURRENT_VERSION, DocumentDownloadedV1
from factura.common.kafka.producer import Publisher
from factura.common.links import InvalidLink, LinkClaims, LinkSigner
from factura.common.logging import log_context
from factura.common.metrics import counter
from factura.common.storage import MISSING_CODES, DocumentStore, error_code

PRODUCER = "renderer"
USER_AGENT_MAX = 300
INVALID_BODY = {"detail": "link invalid or expired"}
UNAVAILABLE_BODY = {"detail": "document not available"}
NO_STORE = {"Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer"}

DOWNLOADS = counter("downloads_total", "Requests for signed download links, by outcome.", ("outcome",))
log = logging.getLogger(__name__)


def _refuse(status: int, body: dict[str, str], outcome: str) -> JSONResponse:
    DOWNLOADS.labels(outcome=outcome).inc()
    return JSONResponse(body, status, headers=NO_STORE)


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact UTF-8 name (RFC 6266), no header injection."""
    cleaned = re.sub(r"[\x00-\x1f\x7f/\\]", "_", filename).strip(" .")[:200] or "document"
    ascii_name = unicodedata.normalize("NFKD", cleaned).encode("ascii", "ignore").decode("ascii")
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", ascii_name).strip(" .") or "document"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(cleaned, safe='')}"


def download_router(signer: LinkSigner, store: DocumentStore, publisher: Publisher) -> APIRouter:
    """The public download endpoint; mounted by the renderer, which already holds the S3 client."""
    router = APIRouter(tags=["downloads"])

    async def record(claims: LinkClaims, size_bytes: int, user_agent: str | None, ip_hash: str | None) -> None:
        """Publish ``document.downloaded``; each download is its own event (a nonce in the id)."""
        with log_context(claims.correlation_id, claims.tenant_id):
            try:
                data = DocumentDownloadedV1(
                    document=claims.document(size_bytes),
                    link_id=claims.link_id,
                    channel=claims.channel,
                    user_agent=user_agent,
                    client_ip_hash=ip_hash,
                )
                nonce = uuid.uuid4().hex
                await publisher.publish(
                    make_event(
                        event_id=stable_id(claims.tenant_id, claims.invoice_id, "downloaded", claims.link_id, nonce),
                        type="document.downloaded",
                        schema_version=CURRENT_VERSION["document.downloaded"],
                        data=data,
                        tenant_id=claims.tenant_id,
                        invoice_id=claims.invoice_id,
                        correlation_id=claims.correlation_id,
                        causation_id=None,
                        producer=PRODUCER,
                    )
                )
            except Exception:  # the document was served; a lost tracking event is logged, not raised
                log.exception("document.downloaded not published for link %s", claims.link_id)

    async def fetch(claims: LinkClaims) -> bytes | JSONResponse:
        """The exact bytes the link was signed for, or the generic refusal to send instead."""
        if claims.bucket != store.bucket:
            log.error("link %s names bucket %s; this service serves %s", claims.link_id, claims.bucket, store.bucket)
            return _refuse(404, UNAVAILABLE_BODY, "missing")
        try:
            body = await store.get(claims.key)
        except ClientError as e:
            if error_code(e) in MISSING_CODES:
                log.warning("link %s: object %s is gone", claims.link_id, claims.key)
                return _refuse(404, UNAVAILABLE_BODY, "missing")
            log.exception("link %s: S3 error reading %s", claims.link_id, claims.key)
            return _refuse(503, UNAVAILABLE_BODY, "error")
        except Exception:  # a storage outage is a logged 503, never a traceback to the client
            log.exception("link %s: S3 unreachable reading %s", claims.link_id, claims.key)
            return _refuse(503, UNAVAILABLE_BODY, "error")
        if hashlib.sha256(body).hexdigest() != claims.sha256:
            # The link promised exactly these bytes; serving others could hand out a different invoice.
            log.error("link %s: stored document %s changed since the link was signed", claims.link_id, claims.key)
            return _refuse(410, UNAVAILABLE_BODY, "changed")
        return body

    @router.get("/d/{token}", response_model=None)
    async def download(token: str, request: Request, background: BackgroundTasks) -> Response:
        try:
            claims = signer.verify(token)
        except InvalidLink as e:
            log.info("download link refused: %s", e)
            return _refuse(403, INVALID_BODY, "invalid")
        with log_context(claims.correlation_id, claims.tenant_id):
            body = await fetch(claims)
        if isinstance(body, JSONResponse):
            return body
        user_agent = request.headers.get("user-agent")
        background.add_task(
            record,
            claims,
            len(body),
            user_agent[:USER_AGENT_MAX] if user_agent else None,
            signer.pseudonym(request.client.host) if request.client else None,
        )
        DOWNLOADS.labels(outcome="served").inc()
        return Response(
            body,
            media_type=claims.content_type,
            headers={
                **NO_STORE,
                "Content-Disposition": content_disposition(claims.filename),
                "X-Content-Type-Options": "nosniff",
            },
        )

    return router
