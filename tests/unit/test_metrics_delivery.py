"""Delivery metrics: provider answers that are not an acceptance, and tenant labels kept bounded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from factura.common import metrics
from factura.common.delivery.sender import Accepted, Job, Refused, Sender, Sent
from factura.common.delivery.suppression import SuppressionStore
from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown
from factura.common.events import Channel, Customer, parse_event
from factura.common.kafka.consumer import Message
from factura.common.kafka.producer import Publisher
from factura.common.ledger import DeliveryLedger
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantDirectory
from factura.common.topics import INVOICE_RENDERED

RENDERED = parse_event((EXAMPLES_DIR / "invoice.rendered.v1.json").read_bytes())


class Adapter:
    channel: Channel = "email"
    dependency = "smtp"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def address(self, customer: Customer) -> str | None:
        return "ap@example.com"

    async def send(self, job: Job, accepted: Accepted) -> None:
        raise self.error

    async def accepted_earlier(self, job: Job, since: datetime) -> Sent | None:
        raise AssertionError("a first attempt asks the provider nothing")


class Claim:
    key = "ledger-key"
    retry_since = None
    outcome: Envelope[Any] | None = None


class Ledger:
    """Runs the delivery at once and keeps what it returned."""

    def __init__(self) -> None:
        self.outcomes: list[Envelope[Any]] = []

    async def deliver_once(
        self,
        cause: Envelope[Any],
        channel: str,
        deliver: Callable[[Claim], Awaitable[Envelope[Any]]],
        publish: Callable[[Envelope[Any]], Awaitable[None]],
        *,
        dependency: str,
    ) -> None:
        self.outcomes.append(await deliver(Claim()))


class Suppressions:
    async def find(self, tenant_id: str, address: str) -> None:
        return None

    async def suppress(self, *_: Any, **__: Any) -> None:
        return None


def sender(error: Exception) -> tuple[Sender, Ledger]:
    ledger = Ledger()
    return Sender(
        producer="email-sender",
        adapters=[Adapter(error)],
        ledger=cast(DeliveryLedger, ledger),
        publisher=cast(Publisher, None),
        tenants=TenantDirectory(None),
        suppressions=cast(SuppressionStore, Suppressions()),
    ), ledger


def errors(kind: str) -> float:
    value = REGISTRY.get_sample_value("factura_provider_errors_total", {"channel": "email", "kind": kind})
    assert value is not None, f"{kind} is not exposed"
    return value


def deliveries(tenant: str, outcome: str, reason: str) -> float:
    labels = {"tenant": tenant, "channel": "email", "purpose": "invoice", "outcome": outcome, "reason": reason}
    return REGISTRY.get_sample_value("factura_deliveries_total", labels) or 0.0


@pytest.fixture
def allow_listed() -> Iterator[str]:
    metrics.configure([RENDERED.tenant_id])
    yield RENDERED.tenant_id
    metrics.configure([])


def request() -> Message[Envelope[Any]]:
    return Message(INVOICE_RENDERED, 0, 1, None, {}, b"", RENDERED)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (Refused("rejected_by_server", "550 5.1.1 no such user", code=550), "refused"),
        (DependencyDown("smtp", "451 try later"), "transient"),
        (TimeoutError(), "timeout"),
    ],
)
async def test_each_provider_answer_that_is_not_an_acceptance_is_counted_by_kind(error: Exception, kind: str) -> None:
    if isinstance(error, TimeoutError):
        try:
            raise DependencyDown("smtp", "no answer within 30 s") from error
        except DependencyDown as down:
            error = down
    subject, _ = sender(error)
    before = {k: errors(k) for k in ("refused", "transient", "timeout")}
    try:
        await subject.handle(request())
    except DependencyDown:
        assert kind != "refused"
    assert {k: errors(k) for k in before} == before | {kind: before[kind] + 1}


async def test_a_refusal_before_any_provider_is_no_provider_error() -> None:
    subject, ledger = sender(Refused("message_invalid", "the email could not be built"))
    before = errors("refused")
    await subject.handle(request())
    assert ledger.outcomes[0].data.reason == "message_invalid"
    assert errors("refused") == before


async def test_deliveries_name_an_allow_listed_tenant_and_count_the_rest_as_other(allow_listed: str) -> None:
    subject, _ = sender(Refused("rejected_by_server", "550 5.1.1 no such user", code=550))
    mine, other = (
        deliveries(allow_listed, "failed", "rejected_by_server"),
        deliveries("other", "failed", "rejected_by_server"),
    )
    await subject.handle(request())
    assert deliveries(allow_listed, "failed", "rejected_by_server") == mine + 1
    metrics.configure([])
    await subject.handle(request())
    assert deliveries("other", "failed", "rejected_by_server") == other + 1


def test_delivered_series_exist_per_channel_from_startup() -> None:
    sender(TimeoutError())
    for purpose in ("invoice", "reminder", "receipt"):
        labels = {"tenant": "other", "channel": "email", "purpose": purpose, "outcome": "delivered", "reason": ""}
        assert REGISTRY.get_sample_value("factura_deliveries_total", labels) is not None
