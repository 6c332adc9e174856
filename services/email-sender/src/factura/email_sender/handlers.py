"""Email sender handler: invoice.rendered → SMTP → delivery.succeeded | delivery.failed.

What the relay or the message itself decides is an *outcome*, published as ``delivery.failed`` so
the SMS fallback takes over: a 5xx reply, a customer without an address, a message that cannot be
built (:class:`Undeliverable`), a stored document whose sha256 is not the one the event names.
Everything that says "not now" (connection refused or dropped, a timeout, a 4xx reply, a relay
that refuses our EHLO or login) raises :class:`DependencyDown` ``("smtp", ...)``: the consumer
loop pauses the partition and retries until the relay is back, and never dead-letters the invoice
for it.

The ledger records "done" from inside the SMTP conversation: after the relay's 250 to DATA and
before QUIT (see :meth:`SmtpMailer.send`), so QUIT's round trip is outside the duplicate window.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from email.errors import MessageError
from email.message import EmailMessage
from typing import Any, Final, Protocol

import aiosmtplib
from botocore.exceptions import ClientError

from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown
from factura.common.events import DeliveryFailedV1, FailureReason, InvoiceRenderedV1
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.ledger import Claim, DeliveryLedger
from factura.common.outcomes import delivered, undelivered
from factura.common.storage import MISSING_CODES, DocumentStore, error_code
from factura.common.tenants import TenantDirectory
from factura.email_sender.message import build_invoice_email
from factura.email_sender.settings import SmtpSettings

PRODUCER = "email-sender"
CHANNEL: Final = "email"
DEPENDENCY: Final = "smtp"
ENHANCED_CODE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")

log = logging.getLogger(__name__)


class Undeliverable(Exception):
    """This message will never be accepted: a 5xx reply, or a message the client cannot send."""

    def __init__(self, reason: FailureReason, text: str, code: int | None = None) -> None:
        super().__init__(f"{code} {text}" if code is not None else text)
        self.reason: FailureReason = reason
        self.text = text
        self.code = code

    @property
    def enhanced_code(self) -> str | None:
        match = ENHANCED_CODE.search(self.text)
        return match.group(1) if match else None


def smtp_failure(error: aiosmtplib.SMTPException) -> Undeliverable | DependencyDown:
    """What an SMTP error during the transaction means: a permanent refusal, or "try again later".

    5xx replies to MAIL, RCPT or DATA refuse this message for good. A 4xx reply, a dropped
    connection, a timeout or a refused greeting/EHLO say nothing about the message.
    """
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused) and error.recipients:
        first = error.recipients[0]
        if first.code >= 500:
            return Undeliverable("rejected_by_server", first.message, first.code)
        return DependencyDown(DEPENDENCY, f"recipient deferred: {first.code} {first.message}")
    if isinstance(error, aiosmtplib.SMTPNotSupported):  # e.g. a UTF-8 address and no SMTPUTF8
        return Undeliverable("rejected_by_server", str(error))
    if (
        isinstance(error, aiosmtplib.SMTPResponseException)
        and not isinstance(error, aiosmtplib.SMTPHeloError)
        and error.code >= 500
    ):
        return Undeliverable("rejected_by_server", error.message, error.code)
    return DependencyDown(DEPENDENCY, f"{type(error).__name__}: {error}")


class Mailer(Protocol):
    async def send(self, message: EmailMessage, on_accepted: Callable[[], Awaitable[None]]) -> None:
        """Hand ``message`` to the relay and await ``on_accepted`` once the relay has taken it.

        Raises :class:`Undeliverable` for a permanent refusal and :class:`DependencyDown` for
        anything worth retrying; an exception from ``on_accepted`` propagates as is.
        """
        ...


class SmtpMailer:
    """One SMTP connection per message: connect, MAIL/RCPT/DATA, ``on_accepted``, then QUIT."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._s = settings
        self._local_hostname = settings.local_hostname

    async def _client(self) -> aiosmtplib.SMTP:
        if self._local_hostname is None:
            # aiosmtplib would call getfqdn() (DNS, possibly slow) on every connection; once is enough.
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        return aiosmtplib.SMTP(
            hostname=self._s.host,
            port=self._s.port,
            username=self._s.username,
            password=self._s.password.get_secret_value() if self._s.password else None,
            start_tls=self._s.start_tls,
            timeout=self._s.timeout_s,
            local_hostname=self._local_hostname,
        )

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = await self._client()
        try:
            await smtp.connect()
        except (aiosmtplib.SMTPException, OSError) as e:  # OSError covers refused, unreachable, TimeoutError
            where = f"{self._s.host}:{self._s.port}"
            raise DependencyDown(DEPENDENCY, f"connect to {where}: {type(e).__name__}: {e}") from e
        return smtp

    async def send(self, message: EmailMessage, on_accepted: Callable[[], Awaitable[None]]) -> None:
        smtp = await self._connect()
        try:
            try:
                await smtp.send_message(message)
            except aiosmtplib.SMTPException as e:
                raise smtp_failure(e) from e
            except OSError as e:
                raise DependencyDown(DEPENDENCY, f"{type(e).__name__}: {e}") from e
            except (ValueError, UnicodeError, MessageError) as e:  # the message cannot be serialised
                raise Undeliverable("message_invalid", f"{type(e).__name__}: {e}") from e
            await on_accepted()
        except BaseException:
            smtp.close()
            raise
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError) as e:
            # The relay has the message and the ledger says so; a failed goodbye changes nothing.
            log.info("SMTP QUIT failed after the message was accepted: %s", e)
            smtp.close()

    async def probe(self) -> None:
        """Readiness: the relay greets, answers NOOP and QUIT within the SMTP timeout."""
        smtp: aiosmtplib.SMTP | None = None
        try:
            async with asyncio.timeout(self._s.timeout_s):
                smtp = await self._connect()
                await smtp.noop()
                await smtp.quit()
        except TimeoutError as e:
            raise DependencyDown(DEPENDENCY, f"no answer within {self._s.timeout_s:g} s") from e
        except (aiosmtplib.SMTPException, OSError) as e:
            raise DependencyDown(DEPENDENCY, f"{type(e).__name__}: {e}") from e
        finally:
            if smtp is not None and smtp.is_connected:
                smtp.close()


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
        await self._ledger.deliver_once(
            event,
            CHANNEL,
            lambda claim: self._deliver(event, claim),
            self._publisher.publish,
            dependency=DEPENDENCY,
        )

    async def _deliver(self, event: Envelope[InvoiceRenderedV1], claim: Claim) -> Envelope[Any]:
        rendered = event.data
        email = rendered.invoice.customer.email
        if email is None:
            return self._failed(event, "no_address", "customer has no email address")
        document = rendered.document
        try:
            attachment = await self._store.get(document.key, bucket=document.bucket)
        except ClientError as e:
            if error_code(e) not in MISSING_CODES:
                raise
            # Gone for good (its retention ended, or it was deleted): say so, and let SMS say it too.
            log.error("stored document %s/%s is missing", document.bucket, document.key)
            return self._failed(event, "document_missing", f"stored document {document.bucket}/{document.key} is gone")
        digest = hashlib.sha256(attachment).hexdigest()
        if digest != document.sha256:
            # Mailing it could send another invoice's PDF (e.g. an older one with the same number).
            log.error("stored document %s/%s does not match the event's sha256", document.bucket, document.key)
            return self._failed(
                event,
                "document_mismatch",
                f"stored document {document.bucket}/{document.key} has sha256 {digest}, "
                f"the event names {document.sha256}",
            )
        identity = self._tenants.get(event.tenant_id).sender
        try:
            mail = build_invoice_email(
                invoice=rendered.invoice,
                sender=(identity.from_name, identity.from_address) if identity else self._default_sender,
                reply_to=identity.reply_to if identity else None,
                attachment=attachment,
                document=document,
                message_id_seed=str(event.event_id),
            )
        except Exception as e:  # built from the event alone: the same input fails every time
            log.exception("invoice email could not be built")
            return self._failed(event, "message_invalid", f"the email could not be built: {type(e).__name__}: {e}")

        async def accepted() -> None:
            await claim.record(
                delivered(
                    event,
                    channel=CHANNEL,
                    recipient=email,
                    provider_message_id=str(mail["Message-ID"]),
                    document=document,
                    producer=PRODUCER,
                )
            )

        try:
            await self._mailer.send(mail, accepted)
        except Undeliverable as e:
            return self._failed(event, e.reason, e.text, e.code, e.enhanced_code)
        if claim.outcome is None:
            raise RuntimeError("the mailer returned without reporting the message accepted")
        return claim.outcome

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
