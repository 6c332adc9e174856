"""Helpdesk tickets for invoices long overdue: ``ticket.due`` → the tenant's helpdesk webhook.

The scheduler publishes ``ticket.due`` when an invoice reaches its plan's ticket step; this module
POSTs the ticket as JSON to the URL the tenant configured and publishes what became of it.

Once only. The POST runs inside :meth:`DeliveryLedger.deliver_once` on channel ``"helpdesk"``, so a
redelivered ``ticket.due`` re-publishes the recorded outcome instead of opening a second ticket.
The ``ticket.due`` event id also travels as ``Idempotency-Key`` (header and body): the ledger
cannot tell a lost answer from a refusal in transit, and a helpdesk that deduplicates on that key
closes the window.

Authenticated. The raw body is signed as every Factura webhook is (``X-Factura-Signature``,
:func:`factura.common.webhooks.sign_hmac`), so the receiver checks it with
:func:`~factura.common.webhooks.verify_hmac` and the same secret.

Answers are sorted as the SMS provider's are:

* 2xx: ``ticket.opened``, with the helpdesk's ``id`` (or ``ticket_id``) as ``ticket_ref``;
* 408, 429, 5xx, and no answer at all (connection refused, timeouts): "not now",
  :class:`DependencyDown` ``("helpdesk", ...)``, retried by the consumer loop, carrying a 429's
  ``Retry-After``;
* any other answer (4xx, a redirect): the helpdesk refused this ticket and waiting will not change
  that: ``ticket.failed`` with the status and the start of the body, for a person to act on.

A tenant's helpdesk is the tenant's own, yet while it is down it holds up a partition that other
tenants' tickets share. :attr:`HelpdeskSettings.max_attempts` bounds that: the attempt that uses up
the last one publishes ``ticket.failed`` rather than waiting again. Attempts are counted by this
process (a restart or a rebalance starts the count again), so the bound is per process.
``status`` 0 in ``ticket.failed`` means no HTTP answer (an outage outlasting the attempts, or a
URL that cannot be fetched).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx
from prometheus_client import Histogram
from pydantic import BaseModel, Field, SecretStr

from factura.common.envelope import Envelope, child_of
from factura.common.errors import DependencyDown, retry_after
from factura.common.events import CURRENT_VERSION, TicketDueV1, TicketFailedV1, TicketOpenedV1
from factura.common.kafka.consumer import Message
from factura.common.ledger import Claim, DeliveryLedger
from factura.common.metrics import PREFIX, counter
from factura.common.tls import TlsSettings
from factura.common.webhooks import SIGNATURE_HEADER, sign_hmac

DEPENDENCY: Final = "helpdesk"
#: The ledger's channel: one ticket per ``ticket.due`` event.
CHANNEL: Final = "helpdesk"
PRODUCER: Final = "scheduler"
#: The longest wait a helpdesk's ``Retry-After`` may impose on a partition.
DETAIL_CHARS: Final = 500
_RETRYABLE: Final = frozenset({408, 429})
#: ``ticket_ref`` is at most this long in ``ticket.opened``; a longer id is not one we can keep.
_MAX_REF_CHARS: Final = 200

TICKETS = counter(
    "helpdesk_tickets_total",
    "Helpdesk ticket attempts by outcome: opened, failed (refused or given up), retry (helpdesk down), no_url.",
    ("outcome",),
)
REQUEST_SECONDS = Histogram(
    f"{PREFIX}helpdesk_request_seconds",
    "Time from sending a ticket to the helpdesk's answer (or to the network error).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

log = logging.getLogger(__name__)

UrlFor = Callable[[str], str | None]
Publish = Callable[[Envelope[Any]], Awaitable[None]]


class HelpdeskSettings(BaseModel):
    """How the scheduler talks to tenants' helpdesk webhooks (the URL is per tenant)."""

    secret: SecretStr = Field(min_length=1, description="HMAC key of the X-Factura-Signature header.")
    timeout_s: float = Field(default=10.0, gt=0, description="Deadline of one POST, connect to last byte.")
    max_attempts: int = Field(
        default=30,
        ge=1,
        description="POSTs of one ticket that may fail for now (down, 5xx, 429) before it fails for good.",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings, description="How the helpdesks' certificates are checked")


class HelpdeskDown(DependencyDown):
    """The helpdesk cannot take tickets now; ``status`` is its HTTP answer, ``None`` if it gave none."""

    def __init__(self, detail: str, *, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(DEPENDENCY, detail, retry_after_s=retry_after_s)
        self.status = status


@dataclass(frozen=True)
class Opened:
    status: int
    ticket_ref: str | None


@dataclass(frozen=True)
class Refused:
    """The helpdesk answered that this ticket will never be taken as sent (0: no HTTP answer)."""

    status: int
    detail: str


def _ticket_ref(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    for field in ("id", "ticket_id"):
        value = body.get(field)
        if isinstance(value, str | int) and not isinstance(value, bool) and 0 < len(str(value)) <= _MAX_REF_CHARS:
            return str(value)
    return None


def ticket_payload(event: Envelope[TicketDueV1]) -> dict[str, Any]:
    """The JSON a helpdesk receives: who owes what since when, and the key to deduplicate on."""
    due = event.data
    invoice = due.invoice
    customer = invoice.customer
    return {
        "tenant_id": event.tenant_id,
        "invoice_number": invoice.invoice_number,
        "customer": {
            "id": customer.customer_id,
            "name": customer.name,
            "email": customer.email,
            "phone": customer.phone,
        },
        "amount_outstanding": str(due.outstanding),  # a string: JSON numbers lose cents in many parsers
        "currency": invoice.currency,
        "due_date": invoice.due_date.isoformat(),
        "days_overdue": due.days_from_due,
        "step": due.step,
        "idempotency_key": str(event.event_id),
    }


class HelpdeskClient:
    """POSTs one signed ticket and sorts the answer (see the module docstring)."""

    def __init__(self, settings: HelpdeskSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self._http = http

    async def open_ticket(self, url: str, ticket: dict[str, Any], idempotency_key: str) -> Opened | Refused:
        """Send ``ticket``; :class:`Opened` or :class:`Refused`, or raise :class:`HelpdeskDown` (a
        :class:`DependencyDown`, so a forgotten handler still pauses rather than dead-letters)."""
        body = json.dumps(ticket, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            SIGNATURE_HEADER: sign_hmac(body, self.settings.secret.get_secret_value().encode()),
        }
        started = time.perf_counter()
        try:
            response = await self._http.post(url, content=body, headers=headers, timeout=self.settings.timeout_s)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as e:  # the tenant's URL, not an outage
            return Refused(0, f"helpdesk URL cannot be used: {e}"[:DETAIL_CHARS])
        except httpx.TransportError as e:  # connect/read/write errors, timeouts, broken HTTP
            raise HelpdeskDown(f"{type(e).__name__}: {e}") from e
        finally:
            REQUEST_SECONDS.observe(time.perf_counter() - started)
        status = response.status_code
        if 200 <= status < 300:
            return Opened(status, _ticket_ref(response))
        if status in _RETRYABLE or status >= 500:
            raise HelpdeskDown(
                f"helpdesk answered HTTP {status}",
                status=status,
                retry_after_s=retry_after(response.headers.get("retry-after")),
            )
        return Refused(status, response.text[:DETAIL_CHARS] or f"HTTP {status} with an empty body")


class TicketHandlers:
    """The ``ticket.due`` consumer: one ticket per event, outcome published as an event."""

    def __init__(self, client: HelpdeskClient, ledger: DeliveryLedger, publish: Publish, url_for: UrlFor) -> None:
        self._client = client
        self._ledger = ledger
        self._publish = publish
        self._url_for = url_for
        #: POSTs per ``ticket.due`` event id that have not reached an outcome yet (this process).
        self._attempts: dict[str, int] = {}

    async def on_ticket_due(self, message: Message[Envelope[TicketDueV1]]) -> None:
        event = message.value
        url = self._url_for(event.tenant_id)
        if not url:
            TICKETS.labels(outcome="no_url").inc()
            log.warning(
                "tenant has no helpdesk URL; no ticket opened",
                extra={"tenant_id": event.tenant_id, "invoice_id": event.invoice_id, "source": message.source},
            )
            return

        async def deliver(claim: Claim) -> Envelope[Any]:
            return await self._attempt(event, url, claim)

        await self._ledger.deliver_once(event, CHANNEL, deliver, self._publish, dependency=DEPENDENCY)

    async def _attempt(self, event: Envelope[TicketDueV1], url: str, claim: Claim) -> Envelope[Any]:
        key = str(event.event_id)
        attempts = self._attempts[key] = self._attempts.get(key, 0) + 1
        try:
            answer = await self._client.open_ticket(url, ticket_payload(event), key)
        except HelpdeskDown as e:
            if attempts < self._client.settings.max_attempts:
                TICKETS.labels(outcome="retry").inc()
                raise
            answer = Refused(e.status or 0, f"gave up after {attempts} attempts: {e.detail}"[:DETAIL_CHARS])
        del self._attempts[key]
        if isinstance(answer, Opened):
            TICKETS.labels(outcome="opened").inc()
            data = TicketOpenedV1(status=answer.status, ticket_ref=answer.ticket_ref, attempts=attempts)
            opened = self._outcome(event, "ticket.opened", data)
            await claim.record(opened)  # at once: whatever fails from here on must not open it again
            log.info("helpdesk ticket opened", extra={"ticket_ref": answer.ticket_ref, "attempts": attempts})
            return opened
        TICKETS.labels(outcome="failed").inc()
        log.warning(
            "helpdesk refused the ticket",
            extra={"invoice_id": event.invoice_id, "status": answer.status, "detail": answer.detail},
        )
        failed = TicketFailedV1(status=answer.status, detail=answer.detail, attempts=attempts)
        return self._outcome(event, "ticket.failed", failed)

    @staticmethod
    def _outcome(cause: Envelope[TicketDueV1], type: str, data: TicketOpenedV1 | TicketFailedV1) -> Envelope[Any]:
        return child_of(
            cause, type=type, schema_version=CURRENT_VERSION[type], data=data, producer=PRODUCER, discriminator=CHANNEL
        )
