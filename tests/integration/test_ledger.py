"""The delivery ledger's lease on the real MongoDB-wire server, and the SMS sender's provider errors.

Two :class:`DeliveryLedger` instances with different owners and their own MongoDB clients stand
for two sender processes (a zombie and the partition's new owner). Each test uses a collection of
its own. A claim expires ``expiry_s`` after it was taken or last renewed, and its holder renews it while
the delivery runs (up to ``lease_s``). The SMS tests talk to the devstack's Twilio-shaped capture
server.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown, ErrorKind, classify
from factura.common.events import InvoiceRenderedV1, Notice, parse_event
from factura.common.ledger import Claim, DeliveryLedger, LedgerSettings
from factura.common.mongo import Document, create_client
from factura.common.outcomes import delivered
from factura.common.schemas import EXAMPLES_DIR
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack
from factura.sms_sender.provider import ProviderRefusal, SmsProvider
from factura.sms_sender.settings import ProviderSettings
from tests.conftest import mongo_settings

pytestmark = pytest.mark.integration

EXAMPLE = (EXAMPLES_DIR / "invoice.rendered.v1.json").read_bytes()
LONG = LedgerSettings(lease_s=60, clock_margin_s=5)
#: A lease short enough to watch expire: a delivery gets 0.6 s, another owner may take over after 1 s.
SHORT = LedgerSettings(lease_s=1.0, clock_margin_s=0.4)
#: A claim another owner may take over 1 s after its last renewal; a delivery may run up to 10 s.
RENEWED = LedgerSettings(lease_s=10.0, expiry_s=1.0, clock_margin_s=0.4)


def cause() -> Envelope[InvoiceRenderedV1]:
    """A fresh ``invoice.rendered`` (new event id, so a new delivery key)."""
    event = parse_event(EXAMPLE)
    return event.model_copy(update={"event_id": uuid.uuid4()})


def accepted(event: Envelope[Any]) -> Envelope[Any]:
    return delivered(
        event,
        channel="email",
        recipient="facturas@pasteleria-lucia.es",
        provider_message_id=f"<{event.event_id}@test>",
        notice=Notice(purpose="invoice", invoice=event.data.invoice, document=event.data.document),
        chain=(),
        producer="email-sender",
        cost=Decimal("0.001"),
        currency="EUR",
    )


@dataclass
class Sender:
    """One sender process: its ledger, what it handed to the provider and what it published."""

    ledger: DeliveryLedger
    #: Its own MongoDB client, when a test needs to cut this one sender off.
    client: AsyncMongoClient[Document] | None = None
    sent: list[str] = field(default_factory=list)
    published: list[Envelope[Any]] = field(default_factory=list)

    async def publish(self, event: Envelope[Any]) -> None:
        self.published.append(event)

    async def deliver(self, event: Envelope[Any], hold: Callable[[], Awaitable[None]] | None = None) -> None:
        """``deliver_once`` with a provider that accepts (after ``hold``, if given)."""

        async def send(claim: Claim) -> Envelope[Any]:
            if hold is not None:
                await hold()
            self.sent.append(str(event.event_id))
            outcome = accepted(event)
            await claim.record(outcome)
            return outcome

        await self.ledger.deliver_once(event, "email", send, self.publish, dependency="smtp")


@dataclass
class Ledgers:
    collection: str
    make: Callable[[str, LedgerSettings], Sender]
    deliveries: AsyncCollection[Document]


@pytest.fixture
async def ledgers(cfg: StackConfig) -> AsyncIterator[Ledgers]:
    """A factory of senders sharing one fresh collection, each on its own MongoDB client."""
    settings = mongo_settings(cfg)
    name = f"deliveries_{uuid.uuid4().hex[:8]}"
    clients: list[AsyncMongoClient[Document]] = []

    def client() -> AsyncMongoClient[Document]:
        c = create_client(settings, server_selection_ms=1000)
        clients.append(c)
        return c

    def make(owner: str, lease: LedgerSettings) -> Sender:
        c = client()
        return Sender(DeliveryLedger(c[settings.database][name], lease, owner=owner), c)

    try:
        yield Ledgers(name, make, client()[settings.database][name])
    finally:
        for c in clients:
            await c.close()


async def within(seconds: float, awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, seconds)


class HeldProvider:
    """A provider call that stays in flight until the test releases it (a slow send)."""

    def __init__(self) -> None:
        self.holding, self.release = asyncio.Event(), asyncio.Event()

    async def __call__(self) -> None:
        self.holding.set()
        await self.release.wait()


# -- the lease -----------------------------------------------------------------------------------


async def test_a_live_claim_of_another_owner_is_not_sent_again(ledgers: Ledgers) -> None:
    a, b = ledgers.make("A", LONG), ledgers.make("B", LONG)
    event = cause()
    provider = HeldProvider()
    first = asyncio.create_task(a.deliver(event, provider))
    await within(10, provider.holding.wait())

    with pytest.raises(DependencyDown) as held:
        await b.deliver(event)
    assert held.value.dependency == "ledger" and "claim held by A" in held.value.detail
    assert classify(held.value) == (ErrorKind.TRANSIENT, "ledger")

    provider.release.set()
    await within(10, first)
    await b.deliver(event)  # the loop's retry: done by now, so B re-publishes A's outcome

    assert a.sent == [str(event.event_id)] and b.sent == []
    assert [e.event_id for e in b.published] == [e.event_id for e in a.published] == [accepted(event).event_id]
    doc = await ledgers.deliveries.find_one({"_id": f"{event.event_id}:email"})
    assert doc is not None and doc["state"] == "done" and doc["owner"] == "A"


async def test_racing_owners_get_exactly_one_claim_each_time(ledgers: Ledgers) -> None:
    a, b = ledgers.make("A", LONG), ledgers.make("B", LONG)
    events = [cause() for _ in range(20)]

    async def claim(sender: Sender, event: Envelope[Any]) -> bool:
        try:
            begun = await sender.ledger.begin(f"{event.event_id}:email", event, "email")
        except DependencyDown:
            return False
        assert isinstance(begun, Claim)
        return True

    fresh = await asyncio.gather(*(claim(s, e) for e in events for s in (a, b)))
    assert [fresh[i] + fresh[i + 1] for i in range(0, len(fresh), 2)] == [1] * len(events)

    # Now every claim is held by a third owner whose lease ran out: A and B race to take it over.
    await ledgers.deliveries.update_many({}, {"$set": {"owner": "C", "lease_expires_ms": 0}})
    taken = await asyncio.gather(*(claim(s, e) for e in events for s in (a, b)))
    assert [taken[i] + taken[i + 1] for i in range(0, len(taken), 2)] == [1] * len(events)


async def test_an_expired_claim_is_taken_over_after_its_holder_was_stopped(ledgers: Ledgers) -> None:
    zombie, heir = ledgers.make("zombie", SHORT), ledgers.make("heir", SHORT)
    event = cause()
    started, stopped = asyncio.Event(), asyncio.Event()

    async def hang() -> None:  # a provider that never answers
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    stuck = asyncio.create_task(zombie.deliver(event, hang))
    await within(10, started.wait())
    with pytest.raises(DependencyDown, match="claim held by zombie"):
        await heir.deliver(event)

    async def heir_checks() -> None:
        assert stopped.is_set(), "the zombie must be stopped before anyone else may send"

    # The consumer loop's retries: the heir keeps being told to wait until the lease expired.
    deadline = time.monotonic() + 10
    while not heir.sent:
        try:
            await heir.deliver(event, heir_checks)
        except DependencyDown as e:
            assert e.dependency == "ledger" and time.monotonic() < deadline
            await asyncio.sleep(0.05)

    with pytest.raises(DependencyDown) as timed_out:
        await within(10, stuck)
    assert timed_out.value.dependency == "smtp" and "within its lease" in timed_out.value.detail
    assert zombie.sent == [] and heir.sent == [str(event.event_id)]

    await zombie.deliver(event)  # the zombie's redelivery finds the heir's record
    assert zombie.sent == [] and [e.event_id for e in zombie.published] == [accepted(event).event_id]


async def test_a_retry_knows_since_when_a_provider_may_already_hold_the_message(ledgers: Ledgers) -> None:
    """What the sender asks the provider before it sends again (``ChannelAdapter.accepted_earlier``)."""
    first, heir = ledgers.make("first", LONG), ledgers.make("heir", LONG)
    event = cause()
    key = f"{event.event_id}:email"
    asked = datetime.now(UTC)
    claimed = await first.ledger.begin(key, event, "email")
    assert isinstance(claimed, Claim) and claimed.retry_since is None  # a first attempt asks nobody
    await ledgers.deliveries.update_one({"_id": key}, {"$set": {"lease_expires_ms": 0}})  # it died; its lease ran out

    taken = await heir.ledger.begin(key, event, "email")
    again = await heir.ledger.begin(f"{key}-never-claimed", event, "email")

    assert isinstance(taken, Claim) and taken.retry_since is not None
    margin = timedelta(seconds=LONG.clock_margin_s)
    assert asked - margin - timedelta(seconds=1) <= taken.retry_since <= asked - margin + timedelta(seconds=1)
    assert isinstance(again, Claim) and again.retry_since is None


async def test_a_claim_from_before_leases_is_taken_over(ledgers: Ledgers) -> None:
    event = cause()
    await ledgers.deliveries.insert_one({"_id": f"{event.event_id}:email", "state": "sending"})
    a = ledgers.make("A", LONG)
    await a.deliver(event)
    assert a.sent == [str(event.event_id)]


async def test_the_same_owner_retries_its_own_failed_attempt(ledgers: Ledgers) -> None:
    a = ledgers.make("A", LONG)
    event = cause()

    async def outage() -> None:
        raise DependencyDown("smtp", "connection refused")

    with pytest.raises(DependencyDown, match="connection refused"):
        await a.deliver(event, outage)
    await a.deliver(event)  # not "held by A": its own earlier attempt ended
    assert a.sent == [str(event.event_id)]


async def test_a_failed_attempt_gives_its_lease_back_to_any_owner(ledgers: Ledgers) -> None:
    a, b = ledgers.make("A", LONG), ledgers.make("B", LONG)
    event = cause()

    async def outage() -> None:
        raise DependencyDown("smtp", "connection refused")

    with pytest.raises(DependencyDown, match="connection refused"):
        await a.deliver(event, outage)
    await b.deliver(event)  # e.g. after a rebalance: no waiting for A's lease to run out
    assert a.sent == [] and b.sent == [str(event.event_id)]


async def test_when_the_done_write_fails_the_retry_records_without_sending(
    ledgers: Ledgers, cfg: StackConfig, infra: Stack
) -> None:
    a = ledgers.make("A", LONG)
    event = cause()

    async def mongo_goes_down() -> None:  # the provider has accepted; now MongoDB is gone
        await asyncio.to_thread(infra.stop_service, "mongo")

    try:
        with pytest.raises(Exception) as failed:  # whatever pymongo raises, it must be transient
            await a.deliver(event, mongo_goes_down)
        assert classify(failed.value) == (ErrorKind.TRANSIENT, "mongo")
    finally:
        await asyncio.to_thread(infra.start_service, "mongo")

    deadline = time.monotonic() + 20
    while not a.published:  # the consumer loop's retries, until MongoDB answers again
        try:
            await a.deliver(event)
        except Exception as e:  # noqa: BLE001 - checked: it must be transient
            assert classify(e)[0] is ErrorKind.TRANSIENT and time.monotonic() < deadline
            await asyncio.sleep(0.1)
    assert a.sent == [str(event.event_id)]  # handed to the provider once, before the outage
    doc = await ledgers.deliveries.find_one({"_id": f"{event.event_id}:email"})
    assert doc is not None and doc["state"] == "done"


# -- the SMS provider ----------------------------------------------------------------------------


def nothing_listening() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def provider(cfg: StackConfig, http: httpx.AsyncClient, **update: Any) -> SmsProvider:
    settings = ProviderSettings(
        base_url=cfg.sms_url, account_sid=cfg.sms_account_sid, auth_token=cfg.sms_auth_token, timeout_s=2
    )
    return SmsProvider(settings.model_copy(update=update), http)


async def test_sms_provider_accepts_and_refuses_a_bad_number(cfg: StackConfig, http: httpx.AsyncClient) -> None:
    sms = provider(cfg, http)
    await sms.probe()
    assert (await sms.send("+34612345678", "hola")).startswith("SM")
    with pytest.raises(ProviderRefusal) as refused:
        await sms.send("+13125550000", "hola")  # the capture server's "not a valid phone number" prefix
    assert (refused.value.status, refused.value.code) == (400, 21211)


async def test_sms_provider_outage_and_bad_credentials_are_transient(cfg: StackConfig, http: httpx.AsyncClient) -> None:
    down = provider(cfg, http, base_url=f"http://127.0.0.1:{nothing_listening()}")
    for attempt in (down.send("+34612345678", "hola"), down.probe()):
        with pytest.raises(DependencyDown) as e:
            await attempt
        assert e.value.dependency == "sms"

    # Credentials are configuration: every SMS waits for the fix rather than failing for good.
    wrong = provider(cfg, http, auth_token=SecretStr("not-the-token"))
    with pytest.raises(DependencyDown, match="HTTP 401"):
        await wrong.send("+34612345678", "hola")


# -- renewal: a crashed holder's claim is taken over after expiry_s, a live one keeps it up to lease_s --


async def retry_until_sent(sender: Sender, event: Envelope[Any], timeout_s: float = 10) -> list[str]:
    """The consumer loop's retries: deliver until it went through; the reasons it was told to wait."""
    waits: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not sender.sent:
        try:
            await sender.deliver(event)
        except DependencyDown as e:
            assert e.dependency == "ledger" and time.monotonic() < deadline, e
            waits.append(e.detail)
            await asyncio.sleep(0.05)
    return waits


async def test_a_crashed_holders_claim_is_taken_over_after_expiry_not_after_the_whole_lease(ledgers: Ledgers) -> None:
    crashed, heir = ledgers.make("crashed", RENEWED), ledgers.make("heir", RENEWED)
    event = cause()
    claimed = await crashed.ledger.begin(f"{event.event_id}:email", event, "email")  # then the process dies
    assert isinstance(claimed, Claim)
    taken = time.monotonic()

    waits = await retry_until_sent(heir, event)

    assert waits and all("claim held by crashed" in w for w in waits)
    assert RENEWED.expiry_s - 0.1 <= time.monotonic() - taken < RENEWED.lease_s / 2
    assert heir.sent == [str(event.event_id)]


async def test_a_live_holder_keeps_its_claim_past_expiry_by_renewing_it(ledgers: Ledgers) -> None:
    holder, other = ledgers.make("holder", RENEWED), ledgers.make("other", RENEWED)
    event = cause()
    provider = HeldProvider()
    first = asyncio.create_task(holder.deliver(event, provider))
    await within(10, provider.holding.wait())
    # Other owners keep being told to wait for three expiries' time: the holder renews.
    refused = 0
    until = time.monotonic() + 3 * RENEWED.expiry_s
    while time.monotonic() < until:
        with pytest.raises(DependencyDown, match="claim held by holder"):
            await other.deliver(event)
        refused += 1
        await asyncio.sleep(0.1)
    provider.release.set()
    await within(10, first)
    await other.deliver(event)  # done by now: re-publishes the holder's outcome

    assert refused > 10 and holder.sent == [str(event.event_id)] and other.sent == []
    assert [e.event_id for e in other.published] == [e.event_id for e in holder.published]


async def test_a_holder_that_cannot_renew_stops_before_another_owner_may_send(ledgers: Ledgers) -> None:
    holder, heir = ledgers.make("holder", RENEWED), ledgers.make("heir", RENEWED)
    event = cause()
    started, stopped = asyncio.Event(), asyncio.Event()

    async def hang() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    stuck = asyncio.create_task(holder.deliver(event, hang))
    await asyncio.wait_for(started.wait(), 10)
    assert holder.client is not None
    await holder.client.close()  # the holder's MongoDB is gone: no renewal can be confirmed

    with pytest.raises(DependencyDown) as cut:
        await asyncio.wait_for(stuck, 10)
    assert cut.value.dependency == "ledger" and "could not be renewed" in cut.value.detail
    assert stopped.is_set()
    await retry_until_sent(heir, event)
    assert holder.sent == [] and heir.sent == [str(event.event_id)]


async def test_renewals_never_hold_a_claim_past_the_whole_lease(ledgers: Ledgers) -> None:
    capped = LedgerSettings(lease_s=2.0, expiry_s=1.0, clock_margin_s=0.4)
    holder, heir = ledgers.make("holder", capped), ledgers.make("heir", capped)
    event = cause()
    started = asyncio.Event()

    async def hang() -> None:  # a provider that never answers, on a holder that renews fine
        started.set()
        await asyncio.Event().wait()

    begun = time.monotonic()
    stuck = asyncio.create_task(holder.deliver(event, hang))
    await asyncio.wait_for(started.wait(), 10)
    with pytest.raises(DependencyDown) as cut:
        await asyncio.wait_for(stuck, 10)
    assert cut.value.dependency == "smtp" and "within its lease" in cut.value.detail
    assert time.monotonic() - begun >= capped.lease_s - capped.clock_margin_s - 0.1  # renewed past expiry_s
    doc = await ledgers.deliveries.find_one({"_id": f"{event.event_id}:email"})
    assert doc is not None and doc["lease_expires_ms"] == 0  # a failed attempt gives its claim back
    await heir.deliver(event)
    assert heir.sent == [str(event.event_id)]


def test_the_clock_margin_must_leave_time_to_deliver() -> None:
    with pytest.raises(ValidationError, match="clock_margin_s"):
        LedgerSettings(lease_s=60, expiry_s=5, clock_margin_s=5)
