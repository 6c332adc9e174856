"""Ingest's application service and its Kafka handlers: decode → normalise → publish, or reject with reasons.

:class:`Intake` is the one place an ERP record is accepted, whatever door it came through (a Kafka
topic, the HTTP API): it validates and normalises a decoded payload, publishes the canonical event
with an id derived from the normalised content, or publishes ``invoice.rejected`` with every reason,
and says which happened (:data:`Outcome`). The doors only decode and answer.

The loop hands ERP topics over as raw bytes; :class:`IngestHandlers` decodes them itself so that
everything wrong with a message, down to bytes that are not JSON, becomes an ``invoice.rejected``
the audit trail shows, and then :class:`InvalidMessage`, on which the loop dead-letters the raw
message at once. A failure to publish is not the message's fault: it propagates, and the loop
retries it. So does a MongoDB outage while looking up a customer's most effective channel or
recording an accepted version: the invoice waits for it (PyMongo's connection errors classify as
transient), it is never rejected for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal, Protocol

from pydantic import BaseModel

from factura.common.delivery.effectiveness import tenant_order
from factura.common.envelope import TENANT_PATTERN, make_event, stable_id
from factura.common.erp import MAX_MESSAGE_BYTES, decode_erp, forbidden_character
from factura.common.errors import InvalidMessage
from factura.common.events import (
    CURRENT_VERSION,
    Channel,
    FieldError,
    InvoiceCreatedV1,
    InvoiceRejectedV2,
    as_datetime,
    line_category,
)
from factura.common.kafka.consumer import Message, Refused
from factura.common.kafka.producer import Publisher
from factura.common.logging import log_context
from factura.common.metrics import counter
from factura.common.tenants import TenantDirectory
from factura.ingest.normalise import (
    DEFAULT_DATES,
    DateWindow,
    cancellation_from_erp,
    invoice_from_erp,
    payment_from_erp,
)
from factura.ingest.versions import Claim, Head

PRODUCER = "ingest"
REJECTED = counter("ingest_rejected_total", "ERP messages refused by ingest.", ("topic",))
IGNORED_HEADERS = counter(
    "ingest_correlation_header_ignored_total", "ERP correlation_id headers ignored as unusable.", ("topic",)
)
INVOICES = counter(
    "invoices_received_total",
    "ERP invoices through the intake, by door (kafka, api, bulk) and outcome (accepted, duplicate, "
    "amended, invalid, conflict). A redelivered message counts again (as a duplicate).",
    ("door", "outcome"),
)
PAYMENTS = counter(
    "payments_received_total",
    "ERP payments through the intake, by door (kafka, api) and outcome (accepted, invalid).",
    ("door", "outcome"),
)
Door = Literal["kafka", "api", "bulk"]
#: The Kafka header ingest's own bulk loader (file uploads, SFTP drops) marks its messages with.
DOOR_HEADER = "factura-door"
#: ``Envelope.correlation_id`` holds at most this many characters.
CORRELATION_MAX = 200
_INVOICE_NUMBER = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$"
#: Per kind of record: the field a rejection quotes as the ERP's reference, and what it must look like.
_REFERENCES: Final = {
    "invoice": ("invoice_number", _INVOICE_NUMBER),
    "payment": ("payment_id", r"^.{1,100}$"),
    "cancellation": ("invoice_number", _INVOICE_NUMBER),
}
#: Messages of one fetched batch in the intake at once (each waits for MongoDB and the broker).
BATCH_CONCURRENCY: Final = 64
log = logging.getLogger(__name__)


class ChannelHistory(Protocol):
    """What ingest asks of :class:`~factura.common.delivery.effectiveness.ChannelEffectiveness`."""

    async def best_channel(
        self, tenant_id: str, customer_id: str, *, before: datetime, order: Sequence[Channel], min_payments: int
    ) -> Channel | None: ...


class Versions(Protocol):
    """Where invoice numbers and their versions are kept (:class:`~factura.ingest.versions.InvoiceVersions`)."""

    async def claim(
        self, tenant_id: str, invoice_number: str, digest: str, event_id: uuid.UUID, *, amendment: bool
    ) -> tuple[Claim, Head]:
        """What this content is to the number: new (now current), current, superseded or a conflict."""
        ...

    async def record(self, tenant_id: str, invoice_number: str, digest: str, event_id: uuid.UUID, source: str) -> bool:
        """Keep one accepted version; ``False`` when it was already kept (a duplicate)."""
        ...


@dataclass(frozen=True)
class Source:
    """Where a record came from, as a rejection names it: ``topic`` (``erp.invoices``, or the API
    route), ``offset`` (topic/partition/offset, or request id/item) and ``digest``, the sha256 of
    the record's bytes, from which the rejection's event id is derived."""

    topic: str
    offset: str
    digest: str
    #: Published to ``erp.invoices`` by ingest's own bulk loader (the :data:`DOOR_HEADER` header).
    bulk: bool = False

    @property
    def door(self) -> Door:
        """The door for metrics: the API names its route as the topic (``http:/v1/...``)."""
        if self.topic.startswith("http:"):
            return "api"
        return "bulk" if self.bulk else "kafka"


@dataclass(frozen=True)
class Accepted:
    """Published: ``event_id`` is the canonical event's; ``duplicate`` when this very content was
    accepted before (same id, so every consumer keeps one)."""

    event_id: uuid.UUID
    duplicate: bool = False


@dataclass(frozen=True)
class Rejected:
    """Refused: ``invoice.rejected`` (``event_id``) was published with ``reasons``; ``conflict`` when
    the number was accepted before with other content (the API answers 409 for it)."""

    event_id: uuid.UUID
    reasons: list[FieldError]
    conflict: bool = False


Outcome = Accepted | Rejected
#: An :class:`Intake` method: a decoded payload in, an outcome out.
Accept = Callable[..., Awaitable[Outcome]]


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


#: Optional fields added to the contract after invoices were first claimed (legal content, issue 12).
#: Left out of the digest while empty, so a message sent before they existed and resent after
#: still digests as it did then: a duplicate, not a conflict.
LATER_FIELDS = frozenset(
    {"address", "registration_id", "seller", "delivery_date", "atcud", "fiscal_qr", "legal_mentions"}
    | {"exemption_reason", "exemption_code"}
)


def _canonical(value: Any) -> Any:
    """``value`` without empty later fields, and without a line's VAT category where the rate alone implies it."""
    if isinstance(value, dict):
        kept = {k: _canonical(v) for k, v in value.items() if not (k in LATER_FIELDS and v in (None, []))}
        if "vat_category" in kept and "tax_rate" in kept and "exemption_reason" not in kept:
            implied = line_category(Decimal(str(kept["tax_rate"])), None)
            if kept["vat_category"] == implied and "exemption_code" not in kept:
                del kept["vat_category"]
        return kept
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _content(model: BaseModel) -> str:
    """The digest of what a message says once validated and normalised: its canonical form.

    Fields the contract gained later are left out while empty (see :data:`LATER_FIELDS`); the
    order of keys is the model's, as it always was.
    """
    return digest(
        json.dumps(_canonical(model.model_dump(mode="json")), separators=(",", ":"), ensure_ascii=False).encode()
    )


def identifier(payload: Mapping[str, Any], name: str, pattern: str) -> str | None:
    """A field of a possibly invalid message, if it is usable as an identifier (stripped, as the contract does)."""
    value = payload.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if re.fullmatch(pattern, value) and forbidden_character(value) is None else None


def tenant_of(payload: Mapping[str, Any]) -> str | None:
    """The tenant a possibly invalid payload names, if it is a valid tenant id (what its events carry)."""
    return identifier(payload, "tenant_id", TENANT_PATTERN)


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


class Intake:
    """Accept one decoded ERP record (an invoice, a payment, a cancellation) or reject it on record.

    With ``versions``, every accepted invoice version is kept, which is how a duplicate is told
    from a first delivery (and what ``GET /v1/invoices/{id}/status`` answers from).
    """

    def __init__(
        self,
        publisher: Publisher,
        tenants: TenantDirectory,
        history: ChannelHistory,
        *,
        allow_test_email_domains: bool = False,
        versions: Versions | None = None,
        dates: DateWindow = DEFAULT_DATES,
    ) -> None:
        self._publisher = publisher
        self._tenants = tenants
        self._history = history
        self._allow_test_domains = allow_test_email_domains
        self._versions = versions
        self._dates = dates
        # Every series an alert or a panel divides by exists from startup (a rate of 0, not "no data").
        for door in ("kafka", "api", "bulk"):
            for outcome in ("accepted", "duplicate", "amended", "invalid", "conflict"):
                INVOICES.labels(door, outcome)
        for door in ("kafka", "api"):
            for outcome in ("accepted", "invalid"):
                PAYMENTS.labels(door, outcome)

    async def invoice(self, payload: dict[str, Any], *, correlation: str | None, source: Source) -> Outcome:
        try:
            erp, invoice = invoice_from_erp(payload, allow_test_domains=self._allow_test_domains, dates=self._dates)
        except InvalidMessage as e:
            return await self.reject(e, payload, kind="invoice", correlation=correlation, source=source)
        # The content is part of the id, compared canonically (the normalised invoice, not the
        # bytes): the same invoice again, whatever its key order, spacing or number spelling, is
        # a duplicate; other content under the number is a conflict unless it is an amendment.
        content = _content(invoice)
        event_id = stable_id(erp.tenant_id, "invoice.created", invoice.invoice_number, content)
        if self._versions is not None:
            claim, head = await self._versions.claim(
                erp.tenant_id, invoice.invoice_number, content, event_id, amendment=erp.amendment
            )
            if claim is Claim.SUPERSEDED:
                INVOICES.labels(source.door, "duplicate").inc()
                return Accepted(event_id, duplicate=True)
            if claim is Claim.CONFLICT:
                return await self._conflict(payload, head, invoice.invoice_number, correlation, source)
        invoice = await self._with_effective_channel(erp.tenant_id, invoice)
        await self._publish(
            "invoice.created",
            invoice,
            event_id=event_id,
            tenant_id=erp.tenant_id,
            invoice_id=invoice.invoice_number,
            correlation=correlation,
        )
        # Recorded after publishing: a version on record was published, and a publish that failed
        # leaves nothing that would call the retry a duplicate.
        new = self._versions is None or await self._versions.record(
            erp.tenant_id, invoice.invoice_number, content, event_id, source.topic
        )
        INVOICES.labels(source.door, ("amended" if erp.amendment else "accepted") if new else "duplicate").inc()
        return Accepted(event_id, duplicate=not new)

    async def _conflict(
        self, payload: Mapping[str, Any], head: Head, number: str, correlation: str | None, source: Source
    ) -> Rejected:
        reason = FieldError(
            field="invoice_number",
            message=f"conflict: {number} was accepted before with other content (event {head.event_id}); "
            'send the corrected invoice with "amendment": true to replace it',
        )
        return await self.reject(
            InvalidMessage([reason]), payload, kind="invoice", correlation=correlation, source=source, conflict=True
        )

    async def payment(self, payload: dict[str, Any], *, correlation: str | None, source: Source) -> Outcome:
        try:
            erp, payment = payment_from_erp(payload)
        except InvalidMessage as e:
            return await self.reject(e, payload, kind="payment", correlation=correlation, source=source)
        event_id = stable_id(erp.tenant_id, "payment.received", erp.payment_id)
        await self._publish(
            "payment.received",
            payment,
            event_id=event_id,
            tenant_id=erp.tenant_id,
            invoice_id=erp.invoice_number,
            correlation=correlation,
        )
        PAYMENTS.labels(source.door, "accepted").inc()
        return Accepted(event_id)

    async def cancellation(self, payload: dict[str, Any], *, correlation: str | None, source: Source) -> Outcome:
        """``invoice.cancelled``, keyed ``tenant/invoice`` like every event of the invoice: a consumer keeping
        per-invoice state (the scheduler) reads it from the partition holding that invoice's other events.
        Ingest knows no invoices, so it does not check that the invoice exists; its consumers do."""
        try:
            erp, cancelled = cancellation_from_erp(payload)
        except InvalidMessage as e:
            return await self.reject(e, payload, kind="cancellation", correlation=correlation, source=source)
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
        return Accepted(event_id)

    async def reject(
        self,
        error: InvalidMessage,
        payload: Mapping[str, Any],
        *,
        kind: str,
        correlation: str | None,
        source: Source,
        conflict: bool = False,
    ) -> Rejected:
        """Record the refusal as an event (what compliance sees), naming the tenant, invoice and
        reference the payload gives where they are readable."""
        REJECTED.labels(topic=source.topic).inc()
        tenant = tenant_of(payload)
        tenant_id = tenant or "unknown"
        reference, pattern = _REFERENCES[kind]
        data = InvoiceRejectedV2(
            source_topic=source.topic,
            source_offset=source.offset,
            stage="ingest",
            reasons=error.reasons,
            erp_reference=identifier(payload, reference, pattern),
            reason="conflict" if conflict else "invalid",
        )
        event_id = stable_id(tenant_id, "invoice.rejected", source.digest)
        await self._publish(
            "invoice.rejected",
            data,
            event_id=event_id,
            tenant_id=tenant_id,
            invoice_id=identifier(payload, "invoice_number", _INVOICE_NUMBER),
            correlation=correlation,
        )
        with log_context(correlation or str(event_id), tenant):
            log.warning("rejected ERP message", extra={"source": source.offset, "reasons": str(error)[:2000]})
        if kind == "invoice":
            INVOICES.labels(source.door, "conflict" if conflict else "invalid").inc()
        elif kind == "payment":
            PAYMENTS.labels(source.door, "invalid").inc()
        return Rejected(event_id, error.reasons, conflict)

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
        """Publish an event that starts a flow: the ERP's ``correlation_id``, else its own id."""
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


class IngestHandlers:
    """The Kafka door: ``erp.invoices``, ``erp.payments`` and ``erp.cancellations`` into :attr:`intake`."""

    def __init__(
        self,
        publisher: Publisher,
        tenants: TenantDirectory,
        history: ChannelHistory,
        *,
        allow_test_email_domains: bool = False,
        versions: Versions | None = None,
        dates: DateWindow = DEFAULT_DATES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.intake = Intake(
            publisher,
            tenants,
            history,
            allow_test_email_domains=allow_test_email_domains,
            versions=versions,
            dates=dates,
        )
        self._max_bytes = max_message_bytes

    async def on_erp_invoice(self, message: Message[bytes]) -> None:
        await self._ingest(message, self.intake.invoice, kind="invoice")

    async def on_erp_payment(self, message: Message[bytes]) -> None:
        await self._ingest(message, self.intake.payment, kind="payment")

    async def on_erp_cancellation(self, message: Message[bytes]) -> None:
        await self._ingest(message, self.intake.cancellation, kind="cancellation")

    async def on_erp_invoices(self, messages: Sequence[Message[bytes]]) -> Refused:
        return await self._batch(messages, self.on_erp_invoice)

    async def on_erp_payments(self, messages: Sequence[Message[bytes]]) -> Refused:
        return await self._batch(messages, self.on_erp_payment)

    async def on_erp_cancellations(self, messages: Sequence[Message[bytes]]) -> Refused:
        return await self._batch(messages, self.on_erp_cancellation)

    async def _batch(
        self, messages: Sequence[Message[bytes]], one: Callable[[Message[bytes]], Awaitable[None]]
    ) -> Refused:
        """A fetched run of one partition, as the loop's :class:`~factura.common.kafka.consumer.Batched`
        route hands it over: messages of one key (one invoice) in order, different keys at once.

        Each message waits for MongoDB twice and for the broker's ack once; one by one, a partition
        moved at the pace of those round trips, not of the CPU. The refused messages (already
        rejected on record) are returned for the loop to dead-letter; an outage or a bug ends its
        own run and is raised once all runs ended, and the loop retries the batch (every step is
        idempotent).
        """
        refused: list[tuple[Message[Any], InvalidMessage]] = []
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def in_order(run: list[Message[bytes]]) -> None:
            for message in run:
                async with gate:
                    try:
                        await one(message)
                    except InvalidMessage as e:
                        refused.append((message, e))

        runs: dict[object, list[Message[bytes]]] = {}
        for message in messages:
            runs.setdefault(message.key if message.key is not None else id(message), []).append(message)
        # Every run ends on its own (an outage ends each soon enough): cancelling runs in the middle
        # of a PyMongo call can leave the client's topology lock broken, and later calls hang.
        ended = await asyncio.gather(*(in_order(run) for run in runs.values()), return_exceptions=True)
        failures = [e for e in ended if isinstance(e, BaseException)]
        if failures:
            raise failures[0]
        return refused

    async def _ingest(self, message: Message[bytes], accept: Accept, *, kind: str) -> None:
        """Decode, then ``accept``; anything wrong with the message is rejected, then raised for the DLQ.

        Logs carry the tenant the payload names (when it is a valid tenant id), never a header's.
        """
        correlation, header_problem = correlation_header(message.headers)
        bulk = message.headers.get(DOOR_HEADER) == b"bulk"
        source = Source(message.topic.name, message.source, digest(message.raw), bulk=bulk)
        payload: dict[str, Any] = {}
        error: InvalidMessage | None = None
        try:
            payload = decode_erp(message.value, max_bytes=self._max_bytes)
        except InvalidMessage as e:
            error = e
        with log_context(correlation, tenant_of(payload)):
            if header_problem is not None:
                IGNORED_HEADERS.labels(topic=message.topic.name).inc()
                log.warning(
                    "ignored the correlation_id header; the event's own id correlates the flow",
                    extra={"source": message.source, "problem": header_problem},
                )
            if error is not None:
                await self.intake.reject(error, payload, kind=kind, correlation=correlation, source=source)
                raise error
            outcome = await accept(payload, correlation=correlation, source=source)
            if isinstance(outcome, Rejected):
                raise InvalidMessage(outcome.reasons)
