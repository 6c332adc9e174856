"""Asking the relay before a retried email goes out again: the SMTP capture's Mailpit-compatible
search, and the email sender's Sender taking over a delivery whose holder died after the relay's 250.

Mail is handed to the real capture server over SMTP and looked up over its HTTP API; outages and
restarts stop and start the real process. The end-to-end tests run the email sender's Sender (real
EmailChannel, SMTP, MongoDB-wire ledger and broker) after a "dead" sender (a ledger of another
owner) claimed the delivery and never recorded it.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.delivery.links import LinkMaker
from factura.common.delivery.sender import Job, Sender, Sent
from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown
from factura.common.events import DeliverySucceededV2, InvoiceRenderedV1, Notice, parse_event
from factura.common.kafka.consumer import Message
from factura.common.ledger import Claim, DeliveryLedger, LedgerSettings
from factura.common.links import LinkSigner
from factura.common.mongo import Document, create_client
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import LinkSettings
from factura.common.shortlinks import ShortLinks
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.common.topics import REGISTRY as TOPICS
from factura.devstack.config import HOST, StackConfig
from factura.devstack.smtp_capture import read_messages
from factura.devstack.stack import Stack
from factura.email_sender.handlers import PRODUCER, EmailChannel
from factura.email_sender.relay_lookup import RelayLookup
from factura.email_sender.settings import SmtpSettings
from factura.email_sender.smtp import SmtpMailer
from tests.conftest import mongo_settings
from tests.kafka_helpers import Bus, isolated
from tests.pii_keys import suppression_store

pytestmark = pytest.mark.integration

EXAMPLE = (EXAMPLES_DIR / "invoice.rendered.v1.json").read_bytes()
SENDER = ("Factura", "invoices@factura.example")
PDF = b"%PDF-1.7\n% an invoice\n"
LINKS = LinkSettings(secret=SecretStr("test-link-secret"))
#: A claim another owner may take over 1 s after its last renewal (as in test_ledger.py).
RENEWED = LedgerSettings(lease_s=10.0, expiry_s=1.0, clock_margin_s=0.4)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def relay(cfg: StackConfig, http: httpx.AsyncClient) -> RelayLookup:
    return RelayLookup(cfg.smtp_api_url, http, timeout_s=5)


def new_id() -> str:
    return f"<{uuid.uuid4()}.email@factura.example>"


async def send(cfg: StackConfig, message_id: str) -> None:
    """Hand one message with ``message_id`` to the capture server over SMTP (it answers 250)."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = SENDER[1], "facturas@cliente.test", "relay lookup"
    message["Message-ID"] = message_id
    message.set_content("hello")
    await aiosmtplib.send(message, hostname=HOST, port=cfg.smtp_port, timeout=5)


def copies(cfg: StackConfig, message_id: str) -> int:
    return sum(1 for m in read_messages(cfg.maildir) if m["Message-ID"] == message_id)


# -- the capture's search API ----------------------------------------------------------------------


async def test_a_message_the_relay_accepted_is_found_by_its_message_id(cfg: StackConfig, relay: RelayLookup) -> None:
    mid, since = new_id(), datetime.now(UTC)
    await send(cfg, mid)

    found = await relay.accepted(mid, since)

    assert found is not None and found.MessageID == mid.strip("<>") and found.Created >= since
    assert (cfg.maildir / "new" / found.ID).is_file()  # the Maildir key


async def test_an_unknown_message_id_is_not_found(cfg: StackConfig, relay: RelayLookup) -> None:
    known = new_id()
    await send(cfg, known)
    assert await relay.accepted(known, datetime.now(UTC) - timedelta(minutes=1)) is not None
    assert await relay.accepted(new_id(), datetime.now(UTC) - timedelta(minutes=1)) is None


async def test_a_message_captured_before_since_does_not_count(cfg: StackConfig, relay: RelayLookup) -> None:
    mid = new_id()
    await send(cfg, mid)
    [earlier] = [m for m in await _search(cfg, mid)]
    captured = datetime.fromisoformat(earlier["Created"])

    assert await relay.accepted(mid, captured) is not None
    assert await relay.accepted(mid, captured + timedelta(microseconds=1)) is None


async def test_the_api_down_is_smtp_down(cfg: StackConfig, infra: Stack, relay: RelayLookup) -> None:
    await asyncio.to_thread(infra.stop_service, "smtp")
    try:
        with pytest.raises(DependencyDown) as down:
            await relay.accepted(new_id(), datetime.now(UTC))
    finally:
        await asyncio.to_thread(infra.start_service, "smtp")
    assert down.value.dependency == "smtp" and "ConnectError" in down.value.detail
    assert await relay.accepted(new_id(), datetime.now(UTC)) is None  # answering again


async def test_a_restarted_capture_still_finds_what_it_accepted_before(
    cfg: StackConfig, infra: Stack, relay: RelayLookup
) -> None:
    mid, since = new_id(), datetime.now(UTC) - timedelta(seconds=5)
    await send(cfg, mid)
    before = await relay.accepted(mid, since)

    await asyncio.to_thread(infra.restart_service, "smtp")
    after = await relay.accepted(mid, since)

    assert before is not None and after is not None and after.ID == before.ID


async def _search(cfg: StackConfig, message_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{cfg.smtp_api_url}/api/v1/search", params={"query": f"message-id:{message_id}"})
    response.raise_for_status()
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


# -- the email sender taking over a delivery whose holder died after the relay's 250 --------------


@pytest.fixture
async def bus(cfg: StackConfig) -> AsyncIterator[Bus]:
    async with isolated(cfg, client_id="test-relay-lookup") as topics:
        yield topics


@pytest.fixture
async def db(cfg: StackConfig) -> AsyncIterator[AsyncDatabase[Document]]:
    settings = mongo_settings(cfg)
    client = create_client(settings, server_selection_ms=2000)
    try:
        yield client[settings.database]
    finally:
        await client.close()


class Senders:
    """Email sender processes over one test's own ledger, suppressions and short links."""

    def __init__(
        self, cfg: StackConfig, db: AsyncDatabase[Document], store: DocumentStore, bus: Bus, relay: RelayLookup
    ) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.cfg, self.store, self.bus, self.relay = cfg, store, bus, relay
        self.deliveries: AsyncCollection[Document] = db[f"deliveries_{suffix}"]
        self.suppressions = suppression_store(db[f"suppressions_{suffix}"])
        shortlinks = ShortLinks(db[f"short_links_{suffix}"], LINKS.secret.get_secret_value().encode())
        self.links = LinkMaker(LinkSigner.from_settings(LINKS), shortlinks, base_url=LINKS.base_url, ttl_s=LINKS.ttl_s)

    def channel(self, lookup: RelayLookup | None) -> EmailChannel:
        smtp = SmtpSettings(host=HOST, port=self.cfg.smtp_port, timeout_s=5, local_hostname="test")
        return EmailChannel(
            store=self.store, mailer=SmtpMailer(smtp), links=self.links, default_sender=SENDER, lookup=lookup
        )

    def ledger(self, owner: str) -> DeliveryLedger:
        return DeliveryLedger(self.deliveries, RENEWED, owner=owner)

    def sender(self, owner: str) -> Sender:
        """The email sender as bootstrap wires it with ``smtp.lookup_url`` set."""
        return Sender(
            producer=PRODUCER,
            adapters=[self.channel(self.relay)],
            ledger=self.ledger(owner),
            publisher=self.bus.publisher,
            tenants=TenantDirectory(None),
            suppressions=self.suppressions,
        )

    async def rendered(self) -> Envelope[InvoiceRenderedV1]:
        """A fresh ``invoice.rendered`` whose PDF is in S3."""
        event = parse_event(EXAMPLE)
        assert isinstance(event.data, InvoiceRenderedV1)
        key = f"{event.tenant_id}/it-relay-lookup/{uuid.uuid4().hex}.pdf"
        digest = hashlib.sha256(PDF).hexdigest()
        await self.store.put(key, PDF, content_type="application/pdf", sha256=digest, metadata={})
        document = event.data.document.model_copy(
            update={"bucket": self.store.bucket, "key": key, "sha256": digest, "size_bytes": len(PDF)}
        )
        data = event.data.model_copy(update={"document": document})
        return event.model_copy(update={"event_id": uuid.uuid4(), "data": data})

    async def die_after_the_relay_accepted(self, event: Envelope[InvoiceRenderedV1], *, sent: bool) -> None:
        """What a sender SIGKILLed inside the duplicate window leaves: its claim, live until it
        expires, no "done", and (``sent``) the email in the relay."""
        key = f"{event.event_id}:email"
        claim = await self.ledger("dead").begin(key, event, "email")
        assert isinstance(claim, Claim)
        if not sent:
            return
        data = event.data
        notice = Notice(purpose="invoice", invoice=data.invoice, document=data.document)
        tenant = TenantDirectory(None).get(event.tenant_id)
        job = Job(event, "email", notice, (), tenant, str(data.invoice.customer.email), key)
        accepted: list[Sent] = []

        async def killed_before_done(sent: Sent) -> None:
            accepted.append(sent)

        await self.channel(None).send(job, killed_before_done)
        assert len(accepted) == 1

    async def take_over(self, sender: Sender, event: Envelope[Any]) -> list[str]:
        """Hand ``event`` to ``sender`` as the consumer loop does, retrying while the dead claim
        is live; the ledger's reasons for waiting."""
        raw = event.model_dump_json().encode()
        message = Message(
            topic=TOPICS[event.type], partition=0, offset=1, key=event.partition_key, headers={}, raw=raw, value=event
        )
        waits: list[str] = []
        async with asyncio.timeout(10):
            while True:
                try:
                    await sender.handle(message)
                    return waits
                except DependencyDown as e:
                    if e.dependency != "ledger":
                        raise
                    waits.append(e.detail)
                    await asyncio.sleep(0.05)

    async def record(self, event: Envelope[Any]) -> Document | None:
        return await self.deliveries.find_one({"_id": f"{event.event_id}:email"})


@pytest.fixture
def senders(
    cfg: StackConfig, db: AsyncDatabase[Document], store: DocumentStore, bus: Bus, relay: RelayLookup
) -> Senders:
    return Senders(cfg, db, store, bus, relay)


def found_earlier() -> float:
    return REGISTRY.get_sample_value("factura_delivery_found_accepted_total", {"channel": "email"}) or 0.0


async def test_a_taken_over_delivery_the_relay_already_accepted_is_recorded_not_sent_again(
    cfg: StackConfig, senders: Senders
) -> None:
    event = await senders.rendered()
    mid = f"<{event.event_id}.email@factura.example>"
    await senders.die_after_the_relay_accepted(event, sent=True)
    assert copies(cfg, mid) == 1
    counted = found_earlier()

    waits = await senders.take_over(senders.sender("heir"), event)

    assert all("claim held by dead" in w for w in waits)  # told to wait, if at all, only until the claim expired
    record = await senders.record(event)
    assert record is not None and (record["state"], record["owner"]) == ("done", "heir")
    assert record["provider_message_id"] == mid
    [outcome] = await senders.bus.events("delivery.succeeded")
    assert isinstance(outcome.data, DeliverySucceededV2) and outcome.causation_id == event.event_id
    assert outcome.data.provider_message_id == mid
    assert found_earlier() == counted + 1
    assert copies(cfg, mid) == 1


async def test_a_taken_over_delivery_the_relay_never_got_is_sent_once(cfg: StackConfig, senders: Senders) -> None:
    event = await senders.rendered()
    mid = f"<{event.event_id}.email@factura.example>"
    await senders.die_after_the_relay_accepted(event, sent=False)  # died before DATA
    counted = found_earlier()

    waits = await senders.take_over(senders.sender("heir"), event)

    assert all("claim held by dead" in w for w in waits)  # told to wait, if at all, only until the claim expired
    record = await senders.record(event)
    assert record is not None and (record["state"], record["provider_message_id"]) == ("done", mid)
    [outcome] = await senders.bus.events("delivery.succeeded")
    assert isinstance(outcome.data, DeliverySucceededV2) and outcome.data.provider_message_id == mid
    assert found_earlier() == counted
    assert copies(cfg, mid) == 1
