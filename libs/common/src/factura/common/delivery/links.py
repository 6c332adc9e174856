"""The links a message carries: download, payment, open pixel, unsubscribe.

The download link is a signed token (:mod:`factura.common.links`), the payment link the tenant's
template. Both become short links (``/l/<id>``, :mod:`factura.common.shortlinks`) when the
channel counts characters (SMS) or the tenant tracks clicks, so a hit can be recorded before the
redirect. Every id derives from the delivery's ledger key: a retried send mints the same links.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from factura.common.delivery.sender import Job
from factura.common.links import LinkSigner
from factura.common.shortlinks import LinkKind, ShortLinks, short_url


@dataclass(frozen=True)
class MessageLinks:
    download: str | None = None
    payment: str | None = None
    pixel: str | None = None
    unsubscribe: str | None = None


class LinkMaker:
    def __init__(self, signer: LinkSigner, shortlinks: ShortLinks, *, base_url: str, ttl_s: int) -> None:
        self._signer = signer
        self.shortlinks = shortlinks
        self._base_url = base_url.rstrip("/")
        self._ttl_s = ttl_s

    async def for_job(self, job: Job, *, short: bool) -> MessageLinks:
        """Links for ``job``; ``short`` forces short links (SMS: one segment). The owner's daily
        summary (purpose ``report``) is about no invoice: no payment, download or tracking links."""
        tenant, notice = job.tenant, job.notice
        if notice.purpose == "report":
            return MessageLinks(download=None, payment=None, pixel=None, unsubscribe=None)
        tracking = tenant.delivery.tracking
        base = tenant.links_base_url or self._base_url
        invoice_id = job.cause.invoice_id or notice.invoice.invoice_number
        expires_ms = int((time.time() + self._ttl_s) * 1000)

        async def shorten(kind: LinkKind, target: str | None) -> str:
            link_id = await self.shortlinks.shorten(
                seed=f"{job.key}:{kind}",
                tenant_id=job.cause.tenant_id,
                invoice_id=invoice_id,
                kind=kind,
                target=target,
                channel=job.channel,
                purpose=notice.purpose,
                locale=notice.invoice.customer.locale,
                correlation_id=job.cause.correlation_id,
                expires_at_ms=expires_ms,
                track=tracking.clicks or kind == "open",
            )
            return short_url(base, link_id, kind)

        download = payment = pixel = None
        if notice.document is not None:
            download = self._signer.sign_document(
                notice.document,
                tenant_id=job.cause.tenant_id,
                invoice_id=invoice_id,
                channel=job.channel,
                correlation_id=job.cause.correlation_id,
                link_id=hashlib.sha256(job.key.encode()).hexdigest()[:12],
                base_url=tenant.links_base_url,
                locale=notice.invoice.customer.locale,  # an expired link's page speaks it
            )
        payment = tenant.payment_url(notice.invoice) if notice.purpose != "receipt" else None
        if short or tracking.clicks:
            download = await shorten("download", download) if download else None
            payment = await shorten("payment", payment) if payment else None
        if tracking.opens and job.channel == "email":
            pixel = await shorten("open", None)
        unsubscribe = tenant.delivery.list_unsubscribe if notice.purpose.startswith("reminder:") else None
        return MessageLinks(download=download, payment=payment, pixel=pixel, unsubscribe=unsubscribe)
