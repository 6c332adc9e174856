"""Email sender handler: invoice.rendered → SMTP → delivery.succeeded | delivery.failed.

Permanent refusals (5xx on the recipient or the message) and a missing address are outcomes,
published as ``delivery.failed`` so the SMS fallback takes over. Temporary ones (4xx, a dropped
connection) are raised so the consumer loop retries with backoff.
"""

from __future__ import annotations

import re
from email.message import EmailMessage
from typing import Any, Final, Protocol

import aiosmtplib

from factura.common.envelope import Envelope
from factura.common.events import (
    DeliveryFailedV1,
    FailureReason,
    InvoiceRenderedV1,
)
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.ledger import DeliveryLedger
from factura.common.outcomes import delivered, undelivered
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.email_sender.message import build_invoice_email
from factura.email_sender.settings import SmtpSettings

PRODUCER = "email-sender"
CHANNEL: Final = "email"
ENHANCED_CODE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> str: ...


class SmtpMailer:
    """aiosmtplib over one connection per message (simple, and what relays rate-limit anyway)."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._s = settings

    async def send(self, message: EmailMessage) -> str:
        await aiosmtplib.send(
            message,
            hostname=self._s.host,
            port=self._s.port,
            username=self._s.username,
            password=self._s.password.get_secret_value() if self._s.password else None,
            start_tls=self._s.start_tls,
            timeout=self._s.timeout_s,
        )
        return str(message["Message-ID"])


class PermanentFailure(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


def classify(error: aiosmtplib.SMTPException) -> PermanentFailure | None:
    """A 5xx reply is permanent; everything else (4xx, connection trouble) is worth a retry."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused) and error.recipients:
        first = error.recipients[0]
        return PermanentFailure(first.code, first.message) if first.code >= 500 else None
    if isinstance(error, aiosmtplib.SMTPResponseException) and error.code >= 500:
        return PermanentFailure(error.code, error.message)
    return None


class EmailHandlers:
    def __init__(
        self,
        *,
        publisher: Publisher,
        store: DocumentStore,
        ledger: DeliveryLedger,
        mailer: Mailer,
        tenants: TenantDirectory,
        default_sender: tuple[str, str],
    ) -> None:
        self._publisher = publisher
        self._store = store
        self._ledger = ledger
        self._mailer = mailer
        self._tenants = tenants
        self._default_sender = default_sender

    async def on_invoice_rendered(self, message: Message[Envelope[InvoiceRenderedV1]]) -> None:
        event = message.value
        await self._ledger.deliver_once(event, CHANNEL, lambda: self._deliver(event), self._publisher.publish)

    async def _deliver(self, event: Envelope[InvoiceRenderedV1]) -> Envelope[Any]:
        rendered = event.data
        email = rendered.invoice.customer.email
        if email is None:
            return self._failed(event, "no_address", "customer has no email address")
        attachment = await self._store.get(rendered.document.key, bucket=rendered.document.bucket)
        identity = self._tenants.get(event.tenant_id).sender
        mail = build_invoice_email(
            invoice=rendered.invoice,
            sender=(identity.from_name, identity.from_address) if identity else self._default_sender,
            reply_to=identity.reply_to if identity else None,
            attachment=attachment,
            document=rendered.document,
            message_id_seed=str(event.event_id),
        )
        try:
            message_id = await self._mailer.send(mail)
        except aiosmtplib.SMTPException as e:
            permanent = classify(e)
            if permanent is None:
                raise
            match = ENHANCED_CODE.search(permanent.text)
            return self._failed(
                event, "rejected_by_server", permanent.text, permanent.code, match.group(1) if match else None
            )
        return delivered(
            event,
            channel=CHANNEL,
            recipient=email,
            provider_message_id=message_id,
            document=rendered.document,
            producer=PRODUCER,
        )

    def _failed(
        self,
        event: Envelope[InvoiceRenderedV1],
        reason: FailureReason,
        detail: str,
        code: int | None = None,
        enhanced: str | None = None,
    ) -> Envelope[DeliveryFailedV1]:
        return undelivered(
            event,
            channel=CHANNEL,
            reason=reason,
            detail=detail,
            code=code,
            enhanced_code=enhanced,
            recipient=event.data.invoice.customer.email,
            invoice=event.data.invoice,
            document=event.data.document,
            producer=PRODUCER,
        )
