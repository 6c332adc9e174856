"""SMS fallback handler: delivery.failed (email) → SMS with a link → delivery.succeeded | failed.

The ledger records "done" right after the provider's 2xx; a provider outage raises
``DependencyDown("sms", ...)`` (see :mod:`factura.sms_sender.provider`) so the loop retries. An
email failure for ``document_mismatch`` gets no SMS: its link is signed for the hash the event
names, so the download would refuse the stored bytes.
"""

from __future__ import annotations

from typing import Any, Final

from factura.common.envelope import Envelope
from factura.common.events import DeliveryFailedV1, FailureReason
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.ledger import Claim, DeliveryLedger
from factura.common.links import LinkSigner
from factura.common.locales import money
from factura.common.outcomes import delivered, undelivered
from factura.common.tenants import TenantDirectory
from factura.sms_sender.provider import DEPENDENCY, ProviderRefusal, SmsProvider

PRODUCER = "sms-sender"
CHANNEL: Final = "sms"
TEXT = {
    "en": "{seller}: invoice {number}, {total}. Download: {link}",
    "es": "{seller}: factura {number}, {total}. Descárguela: {link}",
    "pt": "{seller}: fatura {number}, {total}. Descarregue: {link}",
    "ro": "{seller}: factura {number}, {total}. Descărcați: {link}",
}


class SmsHandlers:
    def __init__(
        self,
        publisher: Publisher,
        ledger: DeliveryLedger,
        provider: SmsProvider,
        signer: LinkSigner,
        tenants: TenantDirectory,
    ) -> None:
        self._publisher = publisher
        self._ledger = ledger
        self._provider = provider
        self._signer = signer
        self._tenants = tenants

    async def on_delivery_failed(self, message: Message[Envelope[DeliveryFailedV1]]) -> None:
        event = message.value
        if event.data.channel != "email":
            return  # SMS is the email fallback; an SMS failure is final for now
        await self._ledger.deliver_once(
            event, CHANNEL, lambda claim: self._deliver(event, claim), self._publisher.publish, dependency=DEPENDENCY
        )

    async def _deliver(self, event: Envelope[DeliveryFailedV1], claim: Claim) -> Envelope[Any]:
        failed = event.data
        phone = failed.invoice.customer.phone
        if phone is None:
            return self._failed(event, "no_address", "customer has no phone number", None)
        if failed.reason in ("document_mismatch", "document_missing"):
            # The link is signed for the event's sha256: the download would refuse what is stored, or find nothing.
            return self._failed(event, failed.reason, "no link sent: " + failed.detail, None)
        link = self._signer.sign_document(
            failed.document,
            tenant_id=event.tenant_id,
            invoice_id=event.invoice_id or failed.invoice.invoice_number,
            channel=CHANNEL,
            correlation_id=event.correlation_id,
            link_id=event.event_id.hex[:12],  # the same link again if this event is redelivered
            base_url=self._tenants.get(event.tenant_id).links_base_url,
        )
        lang = failed.invoice.customer.locale
        body = TEXT[lang].format(
            seller=failed.invoice.seller_name,
            number=failed.invoice.invoice_number,
            total=money(failed.invoice.total, failed.invoice.currency, failed.invoice.customer),
            link=link,
        )
        try:
            sid = await self._provider.send(phone, body)
        except ProviderRefusal as e:
            return self._failed(event, "provider_error", e.text, e.code)
        outcome = delivered(
            event,
            channel=CHANNEL,
            recipient=phone,
            provider_message_id=sid,
            document=failed.document,
            producer=PRODUCER,
        )
        await claim.record(outcome)
        return outcome

    def _failed(
        self, event: Envelope[DeliveryFailedV1], reason: FailureReason, detail: str, code: int | None
    ) -> Envelope[DeliveryFailedV1]:
        return undelivered(
            event,
            channel=CHANNEL,
            reason=reason,
            detail=detail,
            code=code,
            recipient=event.data.invoice.customer.phone,
            invoice=event.data.invoice,
            document=event.data.document,
            producer=PRODUCER,
        )
