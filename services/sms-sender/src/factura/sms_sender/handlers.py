"""The HTTP-API channels (SMS, voice, push) as adapters of the shared delivery path.

Each adapter builds the text for the message's purpose and locale (:mod:`factura.sms_sender.texts`),
naming the tenant as its configuration says (never the ERP's ``seller_name``), and hands it to its
provider. SMS links are short links so a message with the payment and the download link fits one
GSM-7 segment; segments and encoding are recorded for the cost. A provider refusal of the message
is a :class:`Refused` (the next channel takes over); an outage raises ``DependencyDown`` and the
message waits for the provider.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final, TypedDict

from factura.common.delivery.gsm import SmsBody, prepare
from factura.common.delivery.links import LinkMaker, MessageLinks
from factura.common.delivery.sender import Accepted, Job, Refused, Sent
from factura.common.events import Channel, Customer, Locale
from factura.common.locales import day, money
from factura.sms_sender.provider import ProviderRefusal, SmsProvider
from factura.sms_sender.push import PushProvider
from factura.sms_sender.texts import push_text, sms_text, voice_text
from factura.sms_sender.voice import VoiceProvider, say_language

PRODUCER: Final = "sms-sender"


class Wording(TypedDict):
    """The values every text template takes, formatted for the customer."""

    locale: Locale
    purpose: str
    sender_name: str
    invoice_number: str
    amount: str
    due_date: str
    days_from_due: int | None
    pay_url: str | None
    download_url: str | None


def wording(job: Job, links: MessageLinks | None = None) -> Wording:
    invoice = job.notice.invoice
    return Wording(
        locale=invoice.customer.locale,
        purpose=job.notice.purpose,
        # The tenant's configured name, never the ERP's seller_name.
        sender_name=job.tenant.display_name or job.tenant.tenant_id,
        invoice_number=invoice.invoice_number,
        amount=money(  # what is still owed after partial payments; a receipt names the invoice total
            job.notice.outstanding
            if job.notice.outstanding is not None and job.notice.purpose != "receipt"
            else invoice.total,
            invoice.currency,
            invoice.customer,
        ),
        due_date=day(invoice.due_date, invoice.customer, "short"),
        days_from_due=job.notice.days_from_due,
        pay_url=links.payment if links else None,
        download_url=links.download if links else None,
    )


def refused(e: ProviderRefusal, *, dead_address: bool = False) -> Refused:
    """``dead_address``: a refusal that means the address itself is gone (a dead push token)."""
    suppress = e.reason == "complaint" or (dead_address and e.reason == "rejected_by_server")
    return Refused(e.reason, e.text, code=e.code, suppress=suppress)


class SmsChannel:
    channel: Channel = "sms"
    dependency = "sms"

    def __init__(self, provider: SmsProvider, links: LinkMaker, status_callback: str | None) -> None:
        self._provider = provider
        self._links = links
        self._status_callback = status_callback

    def address(self, customer: Customer) -> str | None:
        return customer.phone

    async def _body(self, job: Job) -> SmsBody:
        links = await self._links.for_job(job, short=True)
        return prepare(sms_text(**wording(job, links)), transliterate=job.tenant.delivery.sms_transliterate)

    async def send(self, job: Job, accepted: Accepted) -> None:
        body = await self._body(job)
        try:
            sid = await self._provider.send(job.recipient, body.text, status_callback=self._status_callback)
        except ProviderRefusal as e:
            raise refused(e) from e
        await accepted(Sent(sid, units=body.segments, segments=body.segments, encoding=body.encoding))

    async def accepted_earlier(self, job: Job, since: datetime) -> Sent | None:
        """The provider's message to this number with this very text since ``since``, if any.

        The text is the same on every attempt (its short links are derived from the delivery's
        ledger key), so a match is this delivery, not another message to the same phone.
        """
        body = await self._body(job)
        sid = await self._provider.find(job.recipient, body.text, since)
        if sid is None:
            return None
        return Sent(sid, units=body.segments, segments=body.segments, encoding=body.encoding)


class VoiceChannel:
    channel: Channel = "voice"
    dependency = "voice"

    def __init__(self, provider: VoiceProvider, status_callback: str | None) -> None:
        self._provider = provider
        self._status_callback = status_callback

    def address(self, customer: Customer) -> str | None:
        return customer.phone

    async def send(self, job: Job, accepted: Accepted) -> None:
        customer = job.notice.invoice.customer
        text = voice_text(**wording(job))
        try:
            sid = await self._provider.send(
                job.recipient,
                text,
                language=say_language(customer.locale, customer.country),
                status_callback=self._status_callback,
            )
        except ProviderRefusal as e:
            raise refused(e) from e
        await accepted(Sent(sid))

    async def accepted_earlier(self, job: Job, since: datetime) -> Sent | None:
        """Not asked (Twilio's call list is not searched yet): a retry after a crash may ring twice."""
        return None


class PushChannel:
    channel: Channel = "push"
    dependency = "push"

    def __init__(self, provider: PushProvider, links: LinkMaker) -> None:
        self._provider = provider
        self._links = links

    def address(self, customer: Customer) -> str | None:
        return customer.push_token

    async def send(self, job: Job, accepted: Accepted) -> None:
        links = await self._links.for_job(job, short=False)
        title, body = push_text(**wording(job, links))
        try:
            name = await self._provider.send(
                job.recipient, title=title, body=body, link=links.payment or links.download
            )
        except ProviderRefusal as e:
            raise refused(e, dead_address=True) from e
        await accepted(Sent(name))

    async def accepted_earlier(self, job: Job, since: datetime) -> Sent | None:
        """Not asked: FCM keeps no list of the messages it took."""
        return None


class UnconfiguredChannel:
    """A channel this deployment has no provider for: its turn is a recorded refusal and the
    message moves on at once, rather than waiting for a sender that will never come."""

    dependency = "none"

    def __init__(self, channel: Channel, address: Callable[[Customer], str | None]) -> None:
        self.channel = channel
        self._address = address

    def address(self, customer: Customer) -> str | None:
        return self._address(customer)

    async def send(self, job: Job, accepted: Accepted) -> None:
        raise Refused("provider_error", f"no {self.channel} provider is configured on this deployment")

    async def accepted_earlier(self, job: Job, since: datetime) -> Sent | None:
        """Nothing was ever sent: there is no provider."""
        return None
