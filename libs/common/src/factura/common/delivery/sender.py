"""The one delivery path: every message, every channel, every sender.

Each sender service runs a :class:`Sender` with the channel adapters it hosts (the email sender:
email; the SMS sender: sms, voice, push). A Sender consumes every event that can ask for a
delivery and acts only when the channel asked for is one of its own:

* ``invoice.rendered``: purpose ``invoice``, the policy's first channel;
* ``reminder.due``: purpose ``reminder:<step>``, the policy's (or the step's) first channel;
* ``receipt.due``: purpose ``receipt``, the policy's first channel;
* ``report.due``: purpose ``report``, email only, to the tenant's process owner (:func:`report_notice`);
* ``delivery.failed``: the channel its ``next_channel`` names (the failing sender decided).

Then, under the shared ledger (send at most once per request and channel): a document key
outside the event's tenant stops the message; a customer without an address for the channel,
or a suppressed address, is a failure recorded without calling any provider; otherwise the
adapter sends and awaits ``accepted`` the moment the provider has the message. Refusals become
``delivery.failed`` with the policy's ``next_channel``; a failure with none left is followed by
``delivery.exhausted``. A provider outage (``DependencyDown``) propagates: the consumer loop
waits for the provider and never falls back for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

from prometheus_client import Histogram

from factura.common.delivery.policy import SUPPRESSING
from factura.common.delivery.suppression import SuppressionStore
from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown
from factura.common.events import (
    Attempt,
    Channel,
    Customer,
    DeliveryFailedV2,
    DeliverySucceededV2,
    FailureReason,
    InvoiceRenderedV1,
    InvoiceSummary,
    Notice,
    ReceiptDueV1,
    ReminderDueV2,
    ReportDueV1,
)
from factura.common.kafka.consumer import Handler, Message
from factura.common.kafka.producer import Publisher
from factura.common.ledger import Claim, DeliveryLedger, customer_of
from factura.common.metrics import OTHER_TENANT, PREFIX, counter
from factura.common.outcomes import DELIVERIES, attempt_of, delivered, exhausted, undelivered
from factura.common.tenants import TenantConfig, TenantDirectory

SEND_SECONDS = Histogram(
    f"{PREFIX}provider_send_seconds",
    "Time for a provider to accept or refuse one message (SMTP transaction, HTTP call).",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_ERRORS = counter(
    "provider_errors_total",
    "Provider answers that were not an acceptance: refused (this message will not go), transient "
    "(not now: the message waits) or timeout (no answer in time: the message waits).",
    ("channel", "kind"),
)
FOUND_EARLIER = counter(
    "delivery_found_accepted_total",
    "Retried deliveries the provider said it had already accepted from an earlier attempt "
    "(one that died before recording it): recorded as delivered, not sent again.",
    ("channel",),
)
ProviderErrorKind = Literal["refused", "transient", "timeout"]
#: Refusals raised before any provider was asked (the stored document, the message itself).
_NOT_PROVIDER: frozenset[FailureReason] = frozenset(
    {"document_missing", "document_mismatch", "message_invalid", "no_address", "suppressed"}
)
#: Purpose families (``outcomes.family``) whose delivered series exist from startup.
_FAMILIES = ("invoice", "reminder", "receipt")
#: Topics that may ask a sender to deliver something.
REQUEST_TOPICS = ("invoice.rendered", "reminder.due", "receipt.due", "report.due", "delivery.failed")
#: The addressee id of a daily summary (the owner is no customer of the tenant's).
PROCESS_OWNER = "process-owner"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One message on one channel, and the failures that led here."""

    channel: Channel
    notice: Notice
    chain: tuple[Attempt, ...]


def request_of(event: Envelope[Any], tenant: TenantConfig) -> Request | None:
    """What ``event`` asks to deliver, and on which channel; ``None`` when it asks nothing."""
    data = event.data
    policy = tenant.delivery
    if isinstance(data, DeliveryFailedV2):
        if data.next_channel is None:
            return None
        return Request(data.next_channel, data.notice, (*data.chain, attempt_of(data)))
    if isinstance(data, InvoiceRenderedV1):
        notice = Notice(purpose="invoice", invoice=data.invoice, document=data.document)
    elif isinstance(data, ReminderDueV2):
        notice = Notice(
            purpose=f"reminder:{data.step}",
            invoice=data.invoice,
            document=data.document,
            days_from_due=data.days_from_due,
            channels=data.channels,
            outstanding=data.outstanding,
        )
    elif isinstance(data, ReceiptDueV1):
        notice = Notice(purpose="receipt", invoice=data.invoice, document=data.document)
    elif isinstance(data, ReportDueV1):
        notice = report_notice(data, tenant)
    else:
        return None
    return Request(policy.first(notice), notice, ())


def report_notice(data: ReportDueV1, tenant: TenantConfig) -> Notice:
    """The daily summary as a message of the one delivery path (ledger, outcomes, audit).

    Every channel addresses ``notice.invoice.customer``, so the owner stands there; the summary
    has no invoice, and the rest of ``invoice`` names the report (``report-YYYY-MM-DD``, total 0).
    Email only, whatever the tenant's channel order: the figures do not fit an SMS.
    """
    owner = Customer(
        customer_id=PROCESS_OWNER,
        name=tenant.display_name or tenant.tenant_id,
        country=data.country,
        email=data.owner_email,
        locale=data.locale,
    )
    summary = InvoiceSummary(
        invoice_number=f"report-{data.report.day.isoformat()}",
        seller_name=tenant.display_name or tenant.tenant_id,
        customer=owner,
        currency=tenant.delivery.currency,
        total=Decimal(0),
        due_date=data.report.day,
    )
    return Notice(purpose="report", invoice=summary, channels=["email"], report=data.report)


@dataclass(frozen=True)
class Job:
    """What an adapter needs to send one message."""

    cause: Envelope[Any]
    channel: Channel
    notice: Notice
    chain: tuple[Attempt, ...]
    tenant: TenantConfig
    recipient: str
    #: Ledger key of this delivery: seed for deterministic ids (Message-ID, short links).
    key: str


@dataclass(frozen=True)
class Sent:
    """The provider accepted the message."""

    provider_message_id: str
    units: int = 1  # what the cost is multiplied by (SMS segments)
    segments: int | None = None
    encoding: Literal["gsm7", "ucs2"] | None = None


class Refused(Exception):
    """The provider or the message itself says this channel will not carry it."""

    def __init__(
        self,
        reason: FailureReason,
        detail: str,
        *,
        code: int | None = None,
        enhanced_code: str | None = None,
        evidence: str | None = None,
        suppress: bool = False,
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: FailureReason = reason
        self.detail = detail
        self.code = code
        self.enhanced_code = enhanced_code
        self.evidence = evidence
        #: Suppress the address (besides the reasons that always do, e.g. an SMS "STOP").
        self.suppress = suppress


Accepted = Callable[[Sent], Awaitable[None]]


class ChannelAdapter(Protocol):
    channel: Channel
    #: Name of the provider in readiness and outage reports ("smtp", "sms", ...).
    dependency: str

    def address(self, customer: Customer) -> str | None:
        """The customer's address on this channel, if any."""
        ...

    async def send(self, job: Job, accepted: Accepted) -> None:
        """Hand the message to the provider and await ``accepted`` once it has taken it.

        Raises :class:`Refused` for a refusal and ``DependencyDown`` for "not now".
        """
        ...

    async def accepted_earlier(self, job: Job, since: datetime) -> Sent | None:
        """Asked before a retry sends: the message, if the provider accepted it since ``since``
        (from an earlier attempt that died or lost the provider's answer before "done" was
        written). None when the provider has no such message, or cannot be asked.

        Raises ``DependencyDown`` when the provider cannot answer now.
        """
        ...


async def publish_outcome(publisher: Publisher, outcome: Envelope[Any], producer: str) -> None:
    """Publish an outcome, and ``delivery.exhausted`` after a failure that leaves no channel."""
    await publisher.publish(outcome)
    if isinstance(outcome.data, DeliveryFailedV2) and outcome.data.next_channel is None:
        await publisher.publish(exhausted(outcome, producer))


class Sender:
    def __init__(
        self,
        *,
        producer: str,
        adapters: Sequence[ChannelAdapter],
        ledger: DeliveryLedger,
        publisher: Publisher,
        tenants: TenantDirectory,
        suppressions: SuppressionStore,
    ) -> None:
        self._producer = producer
        self._adapters = {a.channel: a for a in adapters}
        self._ledger = ledger
        self._publisher = publisher
        self._tenants = tenants
        self._suppressions = suppressions
        for channel in self._adapters:  # so that rates and ratios read 0 from startup, not "no data"
            SEND_SECONDS.labels(channel)
            FOUND_EARLIER.labels(channel)
            for kind in ("refused", "transient", "timeout"):
                PROVIDER_ERRORS.labels(channel, kind)
            for purpose in _FAMILIES:
                DELIVERIES.labels(OTHER_TENANT, channel, purpose, "delivered", "")

    @property
    def routes(self) -> Mapping[str, Handler]:
        return dict.fromkeys(REQUEST_TOPICS, self.handle)

    async def handle(self, message: Message[Envelope[Any]]) -> None:
        event = message.value
        tenant = self._tenants.get(event.tenant_id)
        request = request_of(event, tenant)
        if request is None or (adapter := self._adapters.get(request.channel)) is None:
            return

        async def publish(outcome: Envelope[Any]) -> None:
            await publish_outcome(self._publisher, outcome, self._producer)

        await self._ledger.deliver_once(
            event,
            request.channel,
            lambda claim: self._deliver(event, request, tenant, adapter, claim),
            publish,
            dependency=adapter.dependency,
        )

    async def _deliver(
        self, event: Envelope[Any], request: Request, tenant: TenantConfig, adapter: ChannelAdapter, claim: Claim
    ) -> Envelope[Any]:
        notice, channel = request.notice, request.channel

        def failed(
            reason: FailureReason, detail: str, recipient: str | None, **extra: Any
        ) -> Envelope[DeliveryFailedV2]:
            return failure(
                event,
                request,
                tenant=tenant,
                producer=self._producer,
                reason=reason,
                detail=detail,
                recipient=recipient,
                **extra,
            )

        document = notice.document
        if document is not None and not document.key.startswith(f"{event.tenant_id}/"):
            return failed("document_mismatch", f"document {document.key} is not under tenant {event.tenant_id}", None)
        recipient = adapter.address(notice.invoice.customer)
        if recipient is None:
            return failed("no_address", f"customer has no address for {channel}", None)
        job = Job(event, channel, notice, request.chain, tenant, recipient, claim.key)

        async def accepted(sent: Sent) -> None:
            await claim.record(
                delivered(
                    event,
                    channel=channel,
                    recipient=recipient,
                    provider_message_id=sent.provider_message_id,
                    notice=notice,
                    chain=request.chain,
                    producer=self._producer,
                    cost=tenant.delivery.cost_of(channel, sent.units),
                    currency=tenant.delivery.currency,
                    segments=sent.segments,
                    encoding=sent.encoding,
                )
            )

        if claim.retry_since is not None and (earlier := await adapter.accepted_earlier(job, claim.retry_since)):
            FOUND_EARLIER.labels(channel).inc()
            log.warning(
                "the provider already accepted this message from an earlier attempt; recorded, not sent again",
                extra={"key": claim.key, "provider_message_id": earlier.provider_message_id},
            )
            await accepted(earlier)
            return _accepted_outcome(claim, adapter)
        suppressed = await self._suppressions.find(event.tenant_id, recipient)
        if suppressed is not None:
            since = f"{suppressed.since:%Y-%m-%d}"
            return failed("suppressed", f"{recipient} is suppressed since {since} ({suppressed.reason})", recipient)
        started = time.perf_counter()
        try:
            await adapter.send(job, accepted)
        except DependencyDown as e:
            if e.dependency == adapter.dependency:
                PROVIDER_ERRORS.labels(channel, _down_kind(e)).inc()
            raise
        except Refused as e:
            SEND_SECONDS.labels(channel).observe(time.perf_counter() - started)
            if e.reason not in _NOT_PROVIDER:
                PROVIDER_ERRORS.labels(channel, "refused").inc()
            if e.suppress or e.reason in SUPPRESSING:
                await self._suppressions.suppress(
                    event.tenant_id,
                    recipient,
                    channel=channel,
                    reason=e.reason,
                    detail=e.detail,
                    source_event_id=str(event.event_id),
                    customer_id=customer_of(event),
                )
            return failed(
                e.reason, e.detail, recipient, code=e.code, enhanced_code=e.enhanced_code, evidence=e.evidence
            )
        SEND_SECONDS.labels(channel).observe(time.perf_counter() - started)
        return _accepted_outcome(claim, adapter)


def _accepted_outcome(claim: Claim, adapter: ChannelAdapter) -> Envelope[Any]:
    if claim.outcome is None:
        raise RuntimeError(f"the {adapter.channel} adapter returned without reporting the message accepted")
    return claim.outcome


def _down_kind(error: DependencyDown) -> ProviderErrorKind:
    """``timeout`` when the provider did not answer in time, else ``transient`` (it said "not now",
    or could not be reached). Adapters raise ``DependencyDown`` from their client's error, whose
    class says it: ``TimeoutError``, ``httpx.ReadTimeout``, ``aiosmtplib.SMTPTimeoutError``."""
    cause: BaseException | None = error
    while cause is not None:
        if any("Timeout" in kind.__name__ for kind in type(cause).__mro__):
            return "timeout"
        cause = cause.__cause__
    return "transient"


def failure(
    cause: Envelope[Any],
    request: Request,
    *,
    tenant: TenantConfig,
    producer: str,
    reason: FailureReason,
    detail: str,
    recipient: str | None,
    **extra: Any,
) -> Envelope[DeliveryFailedV2]:
    """``delivery.failed`` for ``request``, handing the message to the policy's next channel."""
    this = Attempt(channel=request.channel, reason=reason, detail=detail[:1000], recipient=recipient)
    return undelivered(
        cause,
        channel=request.channel,
        reason=reason,
        detail=detail,
        recipient=recipient,
        notice=request.notice,
        chain=request.chain,
        next_channel=tenant.delivery.after(request.notice, (*request.chain, this)),
        producer=producer,
        **extra,
    )


def later_failure(
    delivery: Envelope[DeliverySucceededV2],
    tenant: TenantConfig,
    producer: str,
    reason: FailureReason,
    detail: str,
    **extra: Any,
) -> Envelope[DeliveryFailedV2]:
    """A message the provider accepted did not arrive after all (a DSN, an SES bounce, an SMS
    status callback): the same fallback as a refusal on the spot. One per accepted message
    (deterministic id), so a report sent twice hands the message on once."""
    data = delivery.data
    request = Request(data.channel, data.notice, tuple(data.chain))
    return failure(
        delivery,
        request,
        tenant=tenant,
        producer=producer,
        reason=reason,
        detail=detail,
        recipient=data.recipient,
        provider_message_id=data.provider_message_id,
        discriminator="later",
        **extra,
    )
