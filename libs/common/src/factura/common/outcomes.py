"""Delivery outcome events, built one way by every channel (and counted in one metric).

Both are children of the event that asked for the delivery, so their ids are deterministic: a
redelivered request yields the very same outcome event.
"""

from __future__ import annotations

from typing import Any

from factura.common.envelope import Envelope, child_of
from factura.common.events import (
    CURRENT_VERSION,
    Channel,
    DeliveryFailedV1,
    DeliverySucceededV1,
    DocumentRef,
    FailureReason,
    InvoiceSummary,
)
from factura.common.metrics import counter

DELIVERIES = counter("deliveries_total", "Delivery outcomes by channel.", ("channel", "outcome"))


def delivered(
    cause: Envelope[Any],
    *,
    channel: Channel,
    recipient: str,
    provider_message_id: str,
    document: DocumentRef,
    producer: str,
) -> Envelope[DeliverySucceededV1]:
    DELIVERIES.labels(channel=channel, outcome="delivered").inc()
    return child_of(
        cause,
        type="delivery.succeeded",
        schema_version=CURRENT_VERSION["delivery.succeeded"],
        data=DeliverySucceededV1(
            channel=channel, recipient=recipient, provider_message_id=provider_message_id, document=document
        ),
        producer=producer,
    )


def undelivered(
    cause: Envelope[Any],
    *,
    channel: Channel,
    reason: FailureReason,
    detail: str,
    recipient: str | None,
    invoice: InvoiceSummary,
    document: DocumentRef,
    producer: str,
    code: int | None = None,
    enhanced_code: str | None = None,
) -> Envelope[DeliveryFailedV1]:
    DELIVERIES.labels(channel=channel, outcome=reason).inc()
    return child_of(
        cause,
        type="delivery.failed",
        schema_version=CURRENT_VERSION["delivery.failed"],
        data=DeliveryFailedV1(
            channel=channel,
            reason=reason,
            detail=detail,
            code=code,
            enhanced_code=enhanced_code,
            recipient=recipient,
            invoice=invoice,
            document=document,
        ),
        producer=producer,
    )
