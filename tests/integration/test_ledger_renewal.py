"""The delivery claim's renewal on the real MongoDB-wire server.

A claim expires ``expiry_s`` after it was taken or last renewed, and its holder renews it while the
delivery runs (up to ``lease_s``): a crashed sender's deliveries are taken over after ``expiry_s``,
while a live one may take up to ``lease_s``. Two :class:`DeliveryLedger` instances on their own
MongoDB clients stand for two sender processes; each test has a collection of its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown
from factura.common.ledger import Claim, DeliveryLedger, LedgerSettings
from factura.common.mongo import Document
from factura.devstack.config import StackConfig
from tests.conftest import mongo_settings
from tests.integration.test_ledger import Sender as LedgerSender
from tests.integration.test_ledger import cause

pytestmark = pytest.mark.integration

#: A claim another owner may take over 1 s after its last renewal; a delivery may run up to 10 s.
RENEWED = LedgerSettings(lease_s=10.0, expiry_s=1.0, clock_margin_s=0.4)


@dataclass
class Sender(LedgerSender):
    """A sender process with a MongoDB client of its own, so a test can cut it off alone."""

    client: AsyncMongoClient[Document] | None = None


Make = Callable[[str, LedgerSettings], Sender]


@dataclass
class Rig:
    make: Make
    deliveries: AsyncCollection[Document]


@pytest.fixture
async def rig(cfg: StackConfig) -> AsyncIterator[Rig]:
    settings = mongo_settings(cfg)
    name = f"deliveries_{uuid.uuid4().hex[:8]}"
    clients: list[AsyncMongoClient[Document]] = []

    def client() -> AsyncMongoClient[Document]:
        c: AsyncMongoClient[Document] = AsyncMongoClient(settings.url, tz_aware=True, serverSelectionTimeoutMS=1000)
        clients.append(c)
        return c

    def make(owner: str, settings_: LedgerSettings) -> Sender:
        c = client()
        return Sender(DeliveryLedger(c[settings.database][name], settings_, owner=owner), client=c)

    try:
        yield Rig(make, client()[settings.database][name])
    finally:
        for c in clients:
            await c.close()


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


async def test_a_crashed_holders_claim_is_taken_over_after_expiry_not_after_the_whole_lease(rig: Rig) -> None:
    crashed, heir = rig.make("crashed", RENEWED), rig.make("heir", RENEWED)
    event = cause()
    claimed = await crashed.ledger.begin(f"{event.event_id}:email", event, "email")  # then the process dies
    assert isinstance(claimed, Claim)
    taken = time.monotonic()

    waits = await retry_until_sent(heir, event)

    assert waits and all("claim held by crashed" in w for w in waits)
    assert RENEWED.expiry_s - 0.1 <= time.monotonic() - taken < RENEWED.lease_s / 2
    assert heir.sent == [str(event.event_id)]


async def test_a_live_holder_keeps_its_claim_past_expiry_by_renewing_it(rig: Rig) -> None:
    holder, other = rig.make("holder", RENEWED), rig.make("other", RENEWED)
    event = cause()
    holding, release = asyncio.Event(), asyncio.Event()

    async def slow_provider() -> None:
        holding.set()
        await release.wait()

    first = asyncio.create_task(holder.deliver(event, slow_provider))
    await asyncio.wait_for(holding.wait(), 10)
    # Other owners keep being told to wait for three expiries' time: the holder renews.
    refused = 0
    until = time.monotonic() + 3 * RENEWED.expiry_s
    while time.monotonic() < until:
        with pytest.raises(DependencyDown, match="claim held by holder"):
            await other.deliver(event)
        refused += 1
        await asyncio.sleep(0.1)
    release.set()
    await asyncio.wait_for(first, 10)
    await other.deliver(event)  # done by now: re-publishes the holder's outcome

    assert refused > 10 and holder.sent == [str(event.event_id)] and other.sent == []
    assert [e.event_id for e in other.published] == [e.event_id for e in holder.published]


async def test_a_holder_that_cannot_renew_stops_before_another_owner_may_send(rig: Rig) -> None:
    holder, heir = rig.make("holder", RENEWED), rig.make("heir", RENEWED)
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


async def test_renewals_never_hold_a_claim_past_the_whole_lease(rig: Rig) -> None:
    capped = LedgerSettings(lease_s=2.0, expiry_s=1.0, clock_margin_s=0.4)
    holder, heir = rig.make("holder", capped), rig.make("heir", capped)
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
    doc = await rig.deliveries.find_one({"_id": f"{event.event_id}:email"})
    assert doc is not None and doc["lease_expires_ms"] == 0  # a failed attempt gives its claim back
    await heir.deliver(event)
    assert heir.sent == [str(event.event_id)]


def test_the_clock_margin_must_leave_time_to_deliver() -> None:
    with pytest.raises(ValidationError, match="clock_margin_s"):
        LedgerSettings(lease_s=60, expiry_s=5, clock_margin_s=5)
