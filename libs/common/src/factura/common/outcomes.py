"""Delivery outcome events, built one way by every channel (and counted in one set of metrics).

Each is a child of the event that asked for the delivery, so its id is deterministic: a
redelivered request yields the very same outcome event, and audit keeps one copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Literal

from factura.common.envelope import Envelope, child_of
from factura.common.events import (
    CURRENT_VERSION,
    Attempt,
    Channel,
    DeliveryExhaustedV1,
    DeliveryFailedV2,
    DeliverySucceededV2,
    FailureReason,
    Notice,
)
from factura.common.metrics import counter, tenant_label

DELIVERIES = counter(
    "deliveries_total",
    "Delivery outcomes by tenant (allow-listed, else `other`), channel, purpose family (invoice, reminder, "
    "receipt), outcome and reason.",
    ("tenant", "channel", "purpose", "outcome", "reason"),
)
FALLBACKS = counter("delivery_fallbacks_total", "Messages handed from one channel to another.", ("from_channel", "to"))
EXHAUSTED = counter("deliveries_exhausted_total", "Messages no allowed channel delivered.", ("tenant", "purpose"))
COST = counter(
    "delivery_cost_total", "Cost of accepted messages per the tenant's policy.", ("tenant", "channel", "currency")
)
SMS_SEGMENTS = counter("sms_segments_total", "SMS segments sent, by encoding.", ("tenant", "encoding"))


def family(purpose: str) -> str:
    """``reminder:after-3`` → ``reminder``: a label with bounded cardinality."""
    return purpose.split(":", 1)[0]


def delivered(
    cause: Envelope[Any],
    *,
    channel: Channel,
    recipient: str,
    provider_message_id: str,
    notice: Notice,
    chain: Sequence[Attempt],
    producer: str,
    cost: Decimal,
    currency: str,
    segments: int | None = None,
    encoding: Literal["gsm7", "ucs2"] | None = None,
) -> Envelope[DeliverySucceededV2]:
    tenant = tenant_label(cause.tenant_id)
    DELIVERIES.labels(tenant, channel, family(notice.purpose), "delivered", "").inc()
    COST.labels(tenant, channel, currency).inc(float(cost))
    if segments is not None and encoding is not None:
        SMS_SEGMENTS.labels(tenant, encoding).inc(segments)
    return child_of(
        cause,
        type="delivery.succeeded",
        schema_version=CURRENT_VERSION["delivery.succeeded"],
        data=DeliverySucceededV2(
            channel=channel,
            recipient=recipient,
            provider_message_id=provider_message_id,
            notice=notice,
            chain=list(chain),
            segments=segments,
            encoding=encoding,
            cost=cost,
        ),
        producer=producer,
        discriminator=channel,
    )


def undelivered(
    cause: Envelope[Any],
    *,
    channel: Channel,
    reason: FailureReason,
    detail: str,
    recipient: str | None,
    notice: Notice,
    chain: Sequence[Attempt],
    next_channel: Channel | None,
    producer: str,
    code: int | None = None,
    enhanced_code: str | None = None,
    provider_message_id: str | None = None,
    evidence: str | None = None,
    discriminator: str = "",
) -> Envelope[DeliveryFailedV2]:
    """``delivery.failed`` for ``cause``; ``chain`` is the earlier failures, not this one."""
    tenant = tenant_label(cause.tenant_id)
    DELIVERIES.labels(tenant, channel, family(notice.purpose), "failed", reason).inc()
    if next_channel is not None:
        FALLBACKS.labels(channel, next_channel).inc()
    else:  # counted here, once per failure built, not when a recorded failure is re-published
        EXHAUSTED.labels(tenant, family(notice.purpose)).inc()
    return child_of(
        cause,
        type="delivery.failed",
        schema_version=CURRENT_VERSION["delivery.failed"],
        data=DeliveryFailedV2(
            channel=channel,
            reason=reason,
            detail=detail,
            code=code,
            enhanced_code=enhanced_code,
            recipient=recipient,
            notice=notice,
            chain=list(chain),
            next_channel=next_channel,
            provider_message_id=provider_message_id,
            evidence=evidence[:16_000] if evidence else None,
        ),
        producer=producer,
        discriminator=discriminator or channel,
    )


def attempt_of(failed: DeliveryFailedV2) -> Attempt:
    return Attempt(
        channel=failed.channel, reason=failed.reason, detail=failed.detail[:1000], recipient=failed.recipient
    )


def exhausted(failed: Envelope[DeliveryFailedV2], producer: str) -> Envelope[DeliveryExhaustedV1]:
    """Every channel is used up: the whole chain, this failure last."""
    return child_of(
        failed,
        type="delivery.exhausted",
        schema_version=CURRENT_VERSION["delivery.exhausted"],
        data=DeliveryExhaustedV1(notice=failed.data.notice, chain=[*failed.data.chain, attempt_of(failed.data)]),
        producer=producer,
    )
