"""Ingest's message handlers: decode → normalise → publish, or reject with reasons."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from typing import Any

from pydantic import BaseModel

from factura.common.envelope import TENANT_PATTERN, make_event, stable_id
from factura.common.errors import InvalidMessage
from factura.common.events import CURRENT_VERSION, InvoiceRejectedV1
from factura.common.kafka.consumer import Message
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
        # The content hash is part of the id: the same message again is a duplicate, a corrected one is not.
        event_id = stable_id(tenant, "invoice.created", invoice.invoice_number, _digest(message.raw))
        await self._publish(
            message, "invoice.created", invoice, event_id=event_id, tenant_id=tenant, invoice_id=invoice.invoice_number
        )

    async def on_erp_payment(self, message: Message[dict[str, Any]]) -> None:
        try:
            erp, payment = payment_from_erp(message.value)
        except InvalidMessage as e:
            await self._reject(message, e, reference=_text(message.value.get("payment_id")))
            raise
        event_id = stable_id(erp.tenant_id, "payment.received", erp.payment_id)
        await self._publish(
            message,
            "payment.received",
            payment,
            event_id=event_id,
            tenant_id=erp.tenant_id,
            invoice_id=erp.invoice_number,
        )

    async def _reject(self, message: Message[dict[str, Any]], error: InvalidMessage, reference: str | None) -> None:
        """Record the refusal as an event (what compliance sees); the loop then dead-letters the raw message."""
        REJECTED.labels(topic=message.topic.name).inc()
        tenant = _text(message.value.get("tenant_id"), TENANT_PATTERN) or "unknown"
        data = InvoiceRejectedV1(
            source_topic=message.topic.name,
            source_offset=message.source,
            stage="ingest",
            reasons=error.reasons,
            erp_reference=reference,
        )
        await self._publish(
            message,
            "invoice.rejected",
            data,
            event_id=stable_id(tenant, "invoice.rejected", _digest(message.raw)),
            tenant_id=tenant,
            invoice_id=_text(message.value.get("invoice_number")),
        )
        log.warning("rejected ERP message", extra={"source": message.source, "reasons": str(error)})

    async def _publish(
        self,
        message: Message[dict[str, Any]],
        event_type: str,
        data: BaseModel,
        *,
        event_id: uuid.UUID,
        tenant_id: str,
        invoice_id: str | None,
    ) -> None:
        """Publish an event that starts a flow: the ERP's ``correlation_id`` header, else its own id."""
        header = message.headers.get("correlation_id")
        await self._publisher.publish(
            make_event(
                event_id=event_id,
                type=event_type,
                schema_version=CURRENT_VERSION[event_type],
                data=data,
                tenant_id=tenant_id,
                invoice_id=invoice_id,
                correlation_id=header.decode() if header else str(event_id),
                causation_id=None,
                producer=PRODUCER,
            )
        )
