"""The email channel: one adapter for the shared delivery path (:mod:`factura.common.delivery.sender`).

It fetches the document when the message carries it as an attachment, checks it is the one the
event names, builds the branded email and hands it to the SMTP relay. What the relay or the
message decides is a :class:`Refused` (the delivery path publishes ``delivery.failed`` and the
next channel takes over): a 5xx reply (5.1.x, a mailbox that does not exist, is a hard bounce
and suppresses the address), a message that cannot be built, a missing or altered document.
Anything that says "not now" raises ``DependencyDown("smtp", ...)`` and the message waits.

The ledger records "done" from inside the SMTP conversation: after the relay's 250 to DATA and
before QUIT (see :meth:`SmtpMailer.send`), so QUIT's round trip is outside the duplicate window.
Before a retried attempt sends, the relay is asked whether it already holds the message (by its
deterministic Message-ID, :mod:`factura.email_sender.relay_lookup`) when ``smtp.lookup_url`` says
where; a relay that cannot be asked is not, and the retry sends.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Final

from botocore.exceptions import ClientError

from factura.common.delivery.links import LinkMaker
from factura.common.delivery.sender import Accepted, Job, Refused, Sent
from factura.common.events import Channel, Customer, DocumentRef, FailureReason
from factura.common.storage import MISSING_CODES, DocumentStore, error_code
from factura.email_sender.message import EmailLinks, build_email
from factura.email_sender.relay_lookup import RelayLookup
from factura.email_sender.smtp import DEPENDENCY, Mailer, Undeliverable

PRODUCER: Final = "email-sender"

log = logging.getLogger(__name__)


def refusal_reason(error: Undeliverable) -> FailureReason:
    """A 5.1.x reply (bad mailbox, bad domain) is a hard bounce; other refusals keep their reason."""
    enhanced = error.enhanced_code
    if error.reason == "rejected_by_server" and enhanced is not None and enhanced.startswith("5.1."):
        return "hard_bounce"
    return error.reason


def message_id(job: Job, sender_address: str) -> str:
    """Deterministic per delivery (request event and channel): a retried send keeps its id, and a
    later bounce report names it."""
    domain = sender_address.rpartition("@")[2] or "factura.local"
    return f"<{job.cause.event_id}.{job.channel}@{domain}>"


class EmailChannel:
    channel: Channel = "email"
    dependency = DEPENDENCY

    def __init__(
        self,
        *,
        store: DocumentStore,
        mailer: Mailer,
        links: LinkMaker,
        default_sender: tuple[str, str],
        lookup: RelayLookup | None = None,
    ) -> None:
        """``lookup``: the relay's message search, asked before a retry sends; None: the relay has none."""
        self._store = store
        self._mailer = mailer
        self._links = links
        self._default_sender = default_sender
        self._lookup = lookup

    def address(self, customer: Customer) -> str | None:
        return customer.email

    async def _attachment(self, document: DocumentRef) -> bytes:
        try:
            body = await self._store.get(document.key, bucket=document.bucket)
        except ClientError as e:
            if error_code(e) not in MISSING_CODES:
                raise
            # Gone for good (its retention ended, or it was deleted): no channel may send it.
            log.error("stored document %s/%s is missing", document.bucket, document.key)
            raise Refused("document_missing", f"stored document {document.bucket}/{document.key} is gone") from e
        digest = hashlib.sha256(body).hexdigest()
        if digest != document.sha256:
            # Mailing it could send another invoice's PDF (e.g. an older one with the same number).
            log.error("stored document %s/%s does not match the event's sha256", document.bucket, document.key)
            raise Refused(
                "document_mismatch",
                f"stored document {document.bucket}/{document.key} has sha256 {digest}, "
                f"the event names {document.sha256}",
            )
        return body

    async def send(self, job: Job, accepted: Accepted) -> None:
        notice, policy = job.notice, job.tenant.delivery
        document = notice.document
        attach = (
            document is not None
            and (notice.purpose == "invoice" or policy.attach_to_reminders)
            and document.size_bytes <= policy.attachment_max_bytes
        )
        attachment = (await self._attachment(document), document) if attach and document is not None else None
        links = await self._links.for_job(job, short=False)
        mid = self._message_id(job)
        try:
            mail = build_email(
                notice=notice,
                tenant=job.tenant,
                recipient=job.recipient,
                attachment=attachment,
                links=EmailLinks(
                    download=links.download, payment=links.payment, pixel=links.pixel, unsubscribe=links.unsubscribe
                ),
                message_id=mid,
                default_sender=self._default_sender,
            )
        except Exception as e:  # built from the event alone: the same input fails every time
            log.exception("email could not be built")
            raise Refused("message_invalid", f"the email could not be built: {type(e).__name__}: {e}") from e

        async def on_accepted() -> None:
            await accepted(Sent(provider_message_id=mid))

        try:
            await self._mailer.send(mail, on_accepted)
        except Undeliverable as e:
            raise Refused(refusal_reason(e), e.text, code=e.code, enhanced_code=e.enhanced_code) from e

    def _message_id(self, job: Job) -> str:
        sender = job.tenant.sender
        return message_id(job, sender.from_address if sender else self._default_sender[1])

    async def accepted_earlier(self, job: Job, since: datetime) -> Sent | None:
        """The message, if the relay's search finds its Message-ID captured since ``since``; None
        without a search (``smtp.lookup_url`` unset: a plain relay keeps no list of what it took,
        and the retry sends again). ``DependencyDown("smtp")`` when the search cannot tell."""
        if self._lookup is None:
            return None
        mid = self._message_id(job)
        if await self._lookup.accepted(mid, since) is None:
            return None
        return Sent(provider_message_id=mid)
