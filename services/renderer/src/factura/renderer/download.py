"""``GET /d/{token}``: serve the document behind a signed link, and record that it was opened.

A forged, malformed or cross-tenant token gets one generic 403 that reveals nothing. An authentic
token past its expiry gets a 410 page in the customer's language naming the seller to ask for a
new link (the signature is checked first, so only our own claims are ever shown). JSON clients
(``Accept: application/json``) get JSON bodies instead of pages.

The ``document.downloaded`` event is published after the response is sent: a broker outage must
not delay or break the customer's download (availability beats tracking). It is de-duplicated and
rate-limited like link clicks (:class:`~factura.renderer.tracking.Tracker`): the document itself
is always served.

Content type: the bytes must match the type the link names (``%PDF-`` for a PDF, a zip local
header for a zip) and that type must be one we store; otherwise the document goes out as
``application/octet-stream``, so a token can never make a browser treat a document as HTML.
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

from factura.common.envelope import make_event, stable_id
from factura.common.events import CURRENT_VERSION, DocumentDownloadedV1
from factura.common.kafka.producer import Publisher
from factura.common.links import ExpiredLink, InvalidLink, LinkClaims, LinkSigner
from factura.common.logging import log_context
from factura.common.metrics import counter
from factura.common.storage import MISSING_CODES, DocumentStore, error_code
from factura.common.tenants import TenantDirectory
from factura.renderer.pages import LinkPages, PageKind, contact_of
from factura.renderer.tracking import LINK_HITS, Hit, Tracker

PRODUCER = "renderer"
INVALID_BODY = {"detail": "link invalid or expired"}
EXPIRED_BODY = {"detail": "link expired"}
UNAVAILABLE_BODY = {"detail": "document not available"}
NO_STORE = {"Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer"}
OCTET_STREAM = "application/octet-stream"
#: The types documents are stored with, and how their bytes begin.
MAGIC: dict[str, tuple[bytes, ...]] = {
    "application/pdf": (b"%PDF-",),
    "application/zip": (b"PK\x03\x04", b"PK\x05\x06"),
}

DOWNLOADS = counter("downloads_total", "Requests for signed download links, by outcome.", ("outcome",))
log = logging.getLogger(__name__)


class Refusal(Exception):
    """Why a download is not served: the page to show instead."""

    def __init__(self, kind: PageKind, status: int, outcome: str) -> None:
        super().__init__(outcome)
        self.kind, self.status, self.outcome = kind, status, outcome


def served_type(claimed: str, body: bytes) -> str:
    """``claimed`` when it is a stored type and the bytes agree with it, else ``application/octet-stream``."""
    return claimed if claimed in MAGIC and body.startswith(MAGIC[claimed]) else OCTET_STREAM


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact UTF-8 name (RFC 6266), no header injection."""
    cleaned = re.sub(r"[\x00-\x1f\x7f/\\]", "_", filename).strip(" .")[:200] or "document"
    ascii_name = unicodedata.normalize("NFKD", cleaned).encode("ascii", "ignore").decode("ascii")
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", ascii_name).strip(" .") or "document"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(cleaned, safe='')}"


async def fetch(store: DocumentStore, claims: LinkClaims) -> bytes:
    """The exact bytes the link was signed for; :class:`Refusal` says what to answer instead."""
    if not claims.key.startswith(f"{claims.tenant_id}/"):
        # Only a leaked secret or a signing bug mints this: never serve another tenant's document.
        log.error("link %s of tenant %s names key %s outside its tenant", claims.link_id, claims.tenant_id, claims.key)
        raise Refusal("invalid", 403, "foreign_key")
    if claims.bucket != store.bucket:
        log.error("link %s names bucket %s; this service serves %s", claims.link_id, claims.bucket, store.bucket)
        raise Refusal("unavailable", 404, "missing")
    try:
        body = await store.get(claims.key)
    except ClientError as e:
        if error_code(e) in MISSING_CODES:
            log.warning("link %s: object %s is gone", claims.link_id, claims.key)
            raise Refusal("unavailable", 404, "missing") from e
        log.exception("link %s: S3 error reading %s", claims.link_id, claims.key)
        raise Refusal("unavailable", 503, "error") from e
    except Exception as e:  # a storage outage is a logged 503, never a traceback to the client
        log.exception("link %s: S3 unreachable reading %s", claims.link_id, claims.key)
        raise Refusal("unavailable", 503, "error") from e
    if hashlib.sha256(body).hexdigest() != claims.sha256:
        # The link promised exactly these bytes; serving others could hand out a different invoice.
        log.error("link %s: stored document %s changed since the link was signed", claims.link_id, claims.key)
        raise Refusal("unavailable", 410, "changed")
    return body


def download_router(
    signer: LinkSigner,
    store: DocumentStore,
    publisher: Publisher,
    *,
    tracker: Tracker,
    pages: LinkPages,
    tenants: TenantDirectory,
) -> APIRouter:
    """The public download endpoint; mounted by the renderer, which already holds the S3 client."""
    router = APIRouter(tags=["downloads"])

    async def record(claims: LinkClaims, size_bytes: int, hit: Hit) -> None:
        """Publish ``document.downloaded`` for a new download (each its own event: a nonce in the id)."""
        with log_context(claims.correlation_id, claims.tenant_id):
            if not await tracker.admit("document", f"d:{claims.tenant_id}:{claims.link_id}", hit):
                return
            try:
                data = DocumentDownloadedV1(
                    document=claims.document(size_bytes),
                    link_id=claims.link_id,
                    channel=claims.channel,
                    user_agent=hit.user_agent,
                    client_ip_hash=hit.client_ip_hash,
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

    def refuse(request: Request, refusal: Refusal) -> Response:
        DOWNLOADS.labels(outcome=refusal.outcome).inc()
        body = INVALID_BODY if refusal.kind == "invalid" else UNAVAILABLE_BODY
        return pages.respond(request, refusal.kind, refusal.status, body)

    @router.get("/d/{token}", response_model=None)
    async def download(token: str, request: Request, background: BackgroundTasks) -> Response:
        try:
            claims = signer.verify(token)
        except ExpiredLink as e:
            log.info("download link %s expired at %s", e.claims.link_id, e.claims.expires_at)
            DOWNLOADS.labels(outcome="expired").inc()
            LINK_HITS.labels(kind="document", outcome="expired").inc()
            contact = contact_of(tenants.get(e.claims.tenant_id))
            return pages.respond(request, "expired", 410, EXPIRED_BODY, locale=e.claims.locale, contact=contact)
        except InvalidLink as e:
            log.info("download link refused: %s", e)
            return refuse(request, Refusal("invalid", 403, "invalid"))
        with log_context(claims.correlation_id, claims.tenant_id):
            try:
                body = await fetch(store, claims)
            except Refusal as refusal:
                return refuse(request, refusal)
            media_type = served_type(claims.content_type, body)
            if media_type != claims.content_type:
                log.warning("link %s: bytes of %s are not %s", claims.link_id, claims.key, claims.content_type)
        background.add_task(
            record,
            claims,
            len(body),
            tracker.observe(request, minimal=tenants.get(claims.tenant_id).delivery.tracking.minimal_user_agent),
        )
        DOWNLOADS.labels(outcome="served").inc()
        return Response(
            body,
            media_type=media_type,
            headers={
                **NO_STORE,
                "Content-Disposition": content_disposition(claims.filename),
                "X-Content-Type-Options": "nosniff",
            },
        )

    return router
