"""Reports that arrive after a provider accepted a message: a bounce (DSN, SES), an SMS or call
status callback. Shared by every webhook that turns such a report into a fallback.

The report names the provider's id for the message (an SMTP Message-ID, an SMS or call sid); the
ledger finds the delivery it recorded as accepted. A failure then suppresses the address when
its reason says so and becomes ``delivery.failed`` for that delivery, with the policy's next
channel, exactly like a refusal on the spot (:func:`~factura.common.delivery.sender.later_failure`).
"""

from __future__ import annotations

from typing import Any

from factura.common.delivery.policy import SUPPRESSING
from factura.common.delivery.sender import later_failure, publish_outcome
from factura.common.delivery.suppression import SuppressionStore
from factura.common.envelope import Envelope
from factura.common.events import DeliveryFailedV2, DeliverySucceededV2, FailureReason
from factura.common.kafka.producer import Publisher
from factura.common.ledger import DeliveryLedger, customer_of
from factura.common.tenants import TenantDirectory


class LateReports:
    def __init__(
        self,
        *,
        producer: str,
        ledger: DeliveryLedger,
        publisher: Publisher,
        tenants: TenantDirectory,
        suppressions: SuppressionStore,
    ) -> None:
        self._producer = producer
        self._ledger = ledger
        self._publisher = publisher
        self._tenants = tenants
        self._suppressions = suppressions

    async def delivery(self, provider_message_id: str) -> Envelope[DeliverySucceededV2] | None:
        """The accepted delivery the provider knows by this id, if any."""
        found = await self._ledger.accepted_message(provider_message_id)
        if found is None or not isinstance(found.data, DeliverySucceededV2):
            return None
        return found

    async def failed(
        self, delivery: Envelope[DeliverySucceededV2], reason: FailureReason, detail: str, **extra: Any
    ) -> Envelope[DeliveryFailedV2]:
        """Record that ``delivery`` did not arrive after all, and hand the message on (once: the
        first report recorded for a delivery is the one every later report re-publishes)."""
        data = delivery.data
        if reason in SUPPRESSING:
            await self._suppressions.suppress(
                delivery.tenant_id,
                data.recipient,
                channel=data.channel,
                reason=reason,
                detail=detail,
                source_event_id=str(delivery.event_id),
                customer_id=customer_of(delivery),
            )
        failed = later_failure(delivery, self._tenants.get(delivery.tenant_id), self._producer, reason, detail, **extra)
        recorded = await self._ledger.report_once(delivery, failed)
        await publish_outcome(self._publisher, recorded, self._producer)
        return recorded
