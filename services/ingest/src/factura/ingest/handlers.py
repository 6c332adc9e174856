"""Ingest's message handlers: decode → normalise → publish, or reject with reasons.

The loop hands ERP topics over as raw bytes; ingest decodes them itself so that everything wrong
with a message, down to bytes that are not JSON, becomes an ``invoice.rejected`` the audit trail
shows, and then :class:`InvalidMessage`, on which the loop dead-letters the raw message at once.
A failure to publish is not the message's fault: it propagates, and the loop retries it. So does
a MongoDB outage while looking up a customer's most effective channel: the invoice waits for it
(PyMongo's connection errors classify as transient), it is never rejected for it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel

from factura.common.delivery.effectiveness import tenant_order
from factura.common.envelope import TENANT_PATTERN, make_event, stable_id
from factura.common.erp import decode_erp, forbidden_character
from factura.common.errors import InvalidMessage
from factura.common.events import (
    CURRENT_VERSION,
    Channel,
    InvoiceCreatedV1,
    InvoiceRejectedV1,
    as_datetime,
)
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.logging import log_context
from factura.common.metrics import counter
from factura.common.tenants import TenantDirectory
from factura.ingest.normalise import cancellation_from_erp, invoice_from_erp, payment_from_erp

PRODUCER = "ingest"
REJECTED = counter("ingest_rejected_total", "ERP messages refused by ingest.", ("topic",))
IGNORED_HEADERS = counter(
    "ingest_correlation_header_ignored_total", "ERP correlation_id headers ignored as unusable.", ("topic",)
)
#: ``Envelope.correlation_id`` holds at most this many characters.
CORRELATION_MAX = 200
_INVOICE_NUMBER = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$"
log = logging.getLogger(__name__)

Accept = Callable[[dict[str, Any], str | None], Awaitable[None]]


class ChannelHistory(Protocol):
    """What ingest asks of :class:`~factura.common.delivery.effectiveness.ChannelEffectiveness`."""

    async def best_channel(
        self, tenant_id: str, customer_id: str, *, before: datetime, order: Sequence[Channel], min_payments: int
    ) -> Channel | None: ...


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _content(model: BaseModel) -> str:
    """The digest of what a message says once validated and normalised: its canonical form."""
    return _digest(model.model_dump_json().encode())


def _field(payload: Mapping[str, Any], name: str, pattern: str) -> str | None:
    """A field of a possibly invalid message, if it is usable as an identifier (stripped, as the contract does)."""
    value = payload.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if re.fullmatch(pattern, value) and forbidden_character(value) is None else None


def correlation_header(headers: Mapping[str, bytes | None]) -> tuple[str | None, str | None]:
    """The ERP's ``correlation_id`` header if it can be one, else why it cannot (``None`` when absent).

    An unusable header is ignored rather than the invoice refused: it is tracing metadata, and an
    ERP team would not expect a good invoice to be rejected for it. The flow then correlates on the
    event's own id, as when the header is absent.
    """
    raw = headers.get("correlation_id")
    if not raw:
        return None, None
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not valid UTF-8"
    if len(value) > CORRELATION_MAX:
        return None, f"{len(value)} characters, more than {CORRELATION_MAX}"
    if forbidden_character(value) is not None:
        return None, "contains control characters"
    if not value.strip():
        return None, "blank"
    return value, None


class IngestHandlers:
    def __init__(
        self,
        publisher: Publisher,
        tenants: TenantDirectory,
        history: ChannelHistory,
        *,
        allow_test_email_domains: bool = False,
    ) -> None:
        self._publisher = publisher
        self._tenants = tenants
        self._history = history
        self._allow_test_domains = allow_test_email_domains

    async def on_erp_invoice(self, message: Message[bytes]) -> None:
        async def accept(payload: dict[str, Any], correlation: str | None) -> None:
            erp, invoice = invoice_from_erp(payload, allow_test_domains=self._allow_test_domains)
            # The content is part of the id, compared canonically (the normalised invoice, not the
            # bytes): the same invoice again, whatever its key order, spacing or number spelling, is
            # a duplicate; a corrected one is not.
            event_id = stable_id(erp.tenant_id, "invoice.created", invoice.invoice_number, _content(invoice))
            invoice = await self._with_effective_channel(erp.tenant_id, invoice)
            await self._publish(
                "invoice.created",
                invoice,
                event_id=event_id,
                tenant_id=erp.tenant_id,
                invoice_id=invoice.invoice_number,
                correlation=correlation,
            )

        await self._ingest(message, accept, reference="invoice_number", reference_pattern=_INVOICE_NUMBER)

    async def _with_effective_channel(self, tenant_id: str, invoice: InvoiceCreatedV1) -> InvoiceCreatedV1:
        """The invoice with the customer's most effective channel, where the tenant asks for it and
        the customer stated no preference. Learnt from payments made before the issue date only, so
        a redelivered ERP message gets the same answer; recorded in the event so every sender routes
        the invoice the same way."""
        policy = self._tenants.get(tenant_id).delivery
        mode = policy.most_effective
        customer = invoice.customer
        if mode is None or customer.preferred_channel is not None:
            return invoice
        channel = await self._history.best_channel(
            tenant_id,
            customer.customer_id,
            before=as_datetime(invoice.issue_date),
            order=tenant_order(policy),
            min_payments=mode.min_payments,
        )
        if channel is None:
            return invoice
        return invoice.model_copy(update={"customer": customer.model_copy(update={"effective_channel": channel})})

    async def on_erp_payment(self, message: Message[bytes]) -> None:
        async def accept(payload: dict[str, Any], correlation: str | None) -> None:
            erp, payment = payment_from_erp(payload)
            await self._publish(
                "payment.received",
                payment,
                event_id=stable_id(erp.tenant_id, "payment.received", erp.payment_id),
                tenant_id=erp.tenant_id,
                invoice_id=erp.invoice_number,
                correlation=correlation,
            )

        await self._ingest(message, accept, reference="payment_id", reference_pattern=r"^.{1,100}$")

    async def on_erp_cancellation(self, message: Message[bytes]) -> None:
        """``invoice.cancelled``, keyed ``tenant/invoice`` like every event of the invoice: a consumer keeping
        per-invoice state (the scheduler) reads it from the partition holding that invoice's other events.
        Ingest knows no invoices, so it does not check that the invoice exists; its consumers do."""

        async def accept(payload: dict[str, Any], correlation: str | None) -> None:
            erp, cancelled = cancellation_from_erp(payload)
            # As for invoices: the same content again is a duplicate, a corrected one is a new event.
            event_id = stable_id(erp.tenant_id, "invoice.cancelled", erp.invoice_number, erp.kind, _content(cancelled))
            await self._publish(
                "invoice.cancelled",
                cancelled,
                event_id=event_id,
                tenant_id=erp.tenant_id,
                invoice_id=erp.invoice_number,
                correlation=correlation,
            )

        await self._ingest(message, accept, reference="invoice_number", reference_pattern=_INVOICE_NUMBER)

    async def _ingest(self, message: Message[bytes], accept: Accept, *, reference: str, reference_pattern: str) -> None:
        """Decode, then ``accept``; anything wrong with the message is rejected, then re-raised for the DLQ.

        Logs carry the tenant the payload names (when it is a valid tenant id), never a header's.
        """
        correlation, header_problem = correlation_header(message.headers)
        payload: dict[str, Any] = {}
        error: InvalidMessage | None = None
        try:
            payload = decode_erp(message.value)
        except InvalidMessage as e:
            error = e
        tenant = _field(payload, "tenant_id", TENANT_PATTERN)
        with log_context(correlation, tenant):
            if header_problem is not None:
                IGNORED_HEADERS.labels(topic=message.topic.name).inc()
                log.warning(
                    "ignored the correlation_id header; the event's own id correlates the flow",
                    extra={"source": message.source, "problem": header_problem},
                )
            try:
                if error is not None:
                    raise error
                await accept(payload, correlation)
            except InvalidMessage as e:
                await self._reject(
                    message,
                    e,
                    tenant=tenant,
                    correlation=correlation,
                    reference=_field(payload, reference, reference_pattern),
                    invoice_id=_field(payload, "invoice_number", _INVOICE_NUMBER),
                )
                raise

    async def _reject(
        self,
        message: Message[bytes],
        error: InvalidMessage,
        *,
        tenant: str | None,
        correlation: str | None,
        reference: str | None,
        invoice_id: str | None,
    ) -> None:
        """Record the refusal as an event (what compliance sees); the loop then dead-letters the raw message."""
        REJECTED.labels(topic=message.topic.name).inc()
        tenant_id = tenant or "unknown"
        data = InvoiceRejectedV1(
            source_topic=message.topic.name,
            source_offset=message.source,
            stage="ingest",
            reasons=error.reasons,
            erp_reference=reference,
        )
        event_id = stable_id(tenant_id, "invoice.rejected", _digest(message.raw))
        await self._publish(
            "invoice.rejected",
            data,
            event_id=event_id,
            tenant_id=tenant_id,
            invoice_id=invoice_id,
            correlation=correlation,
        )
        with log_context(correlation or str(event_id), tenant):
            log.warning("rejected ERP message", extra={"source": message.source, "reasons": str(error)[:2000]})

    async def _publish(
        self,
        event_type: str,
        data: BaseModel,
        *,
        event_id: uuid.UUID,
        tenant_id: str,
        invoice_id: str | None,
        correlation: str | None,
    ) -> None:
        """Publish an event that starts a flow: the ERP's ``correlation_id`` header, else its own id."""
        await self._publisher.publish(
            make_event(
                event_id=event_id,
                type=event_type,
                schema_version=CURRENT_VERSION[event_type],
                data=data,
                tenant_id=tenant_id,
                invoice_id=invoice_id,
                correlation_id=correlation or str(event_id),
                causation_id=None,
                producer=PRODUCER,
            )
        )
