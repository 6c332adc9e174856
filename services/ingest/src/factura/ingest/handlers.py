"""Ingest's message handlers: decode → normalise → publish, or reject with reasons."""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

from factura.common.envelope import TENANT_PATTERN, Envelope, make_event, stable_id
from factura.common.events import CURRENT_VERSION, InvoiceRejectedV1
from factura.common.kafka.consumer import InvalidMessage, Message
from factura.common.kafka.producer import Publisher
from factura.common.metrics import counter
from factura.ingest.normalise import invoice_from_erp, payment_from_erp

PRODUCER = "ingest"
REJECTED = counter("ingest_rejected_total", "ERP messages refused by ingest.", ("topic",))
log = logging.getLogger(__name__)


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _text(value: Any, pattern: str = r"^.{1,200}$") -> str | None:
    """A field of a rejected message, if it is usable as an identifier."""
    return value if isinstance(value, str) and re.fullmatch(pattern, value) else None


class IngestHandlers:
    def __init__(self, publisher: Publisher, *, allow_test_email_domains: bool = False) -> None:
        self._publisher = publisher
        self._allow_test_domains = allow_test_email_domains

    async def on_erp_invoice(self, message: Message[dict[str, Any]]) -> None:
        try:
            invoice = invoice_from_erp(message.value, allow_test_domains=self._allow_test_domains)
        except InvalidMessage as e:
            await self._reject(message, e, reference=_text(message.value.get("invoice_number")))
            raise
        tenant = str(message.value["tenant_id"])
        event_id = stable_id(tenant, "invoice.created", invoice.invoice_number, _digest(message.raw))
        header = message.headers.get("correlation_id")
        await self._publisher.publish(
            make_event(
                event_id=event_id,
                type="invoice.created",
                schema_version=CURRENT_VERSION["invoice.created"],
                data=invoice,
                tenant_id=tenant,
                invoice_id=invoice.invoice_number,
                correlation_id=header.decode() if header else str(event_id),
                causation_id=None,
                producer=PRODUCER,
            )
        )

    async def on_erp_payment(self, message: Message[dict[str, Any]]) -> None:
        try:
            erp, payment = payment_from_erp(message.value)
        except InvalidMessage as e:
            await self._reject(message, e, reference=_text(message.value.get("payment_id")))
            raise
        event_id = stable_id(erp.tenant_id, "payment.received", erp.payment_id)
        header = message.headers.get("correlation_id")
        await self._publisher.publish(
            make_event(
                event_id=event_id,
                type="payment.received",
                schema_version=CURRENT_VERSION["payment.received"],
                data=payment,
                tenant_id=erp.tenant_id,
                invoice_id=erp.invoice_number,
                correlation_id=header.decode() if header else str(event_id),
                causation_id=None,
                producer=PRODUCER,
            )
        )

    async def _reject(self, message: Message[dict[str, Any]], error: InvalidMessage, reference: str | None) -> None:
        """Record the refusal as an event (what compliance sees); the loop then dead-letters the raw message."""
        REJECTED.labels(topic=message.topic.name).inc()
        tenant = _text(message.value.get("tenant_id"), TENANT_PATTERN) or "unknown"
        rejected: Envelope[InvoiceRejectedV1] = make_event(
            event_id=stable_id(tenant, "invoice.rejected", _digest(message.raw)),
            type="invoice.rejected",
            schema_version=CURRENT_VERSION["invoice.rejected"],
            data=InvoiceRejectedV1(
                source_topic=message.topic.name,
                source_offset=message.source,
                stage="ingest",
                reasons=error.reasons,
                erp_reference=reference,
            ),
            tenant_id=tenant,
            invoice_id=_text(message.value.get("invoice_number")),
            correlation_id=str(stable_id(tenant, "erp", _digest(message.raw))),
            causation_id=None,
            producer=PRODUCER,
        )
        await self._publisher.publish(rejected)
        log.warning("rejected ERP message", extra={"source": message.source, "reasons": str(error)})
