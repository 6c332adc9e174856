"""The email sender on the shared delivery path, against the real SMTP capture server, S3 (moto),
MongoDB-wire, SMS capture server and broker.

The rig wires a :class:`Sender` with an :class:`EmailChannel` the way the service's bootstrap does
(and, where email hands a message on, a second Sender with an :class:`SmsChannel`, as the SMS
sender runs it). Each test publishes on topics under its own prefix, keeps its ledger,
suppressions and short links in collections of its own, and recognises its mail in the shared
Maildir by the deterministic Message-ID (``<event_id.email@factura.example>``). Outages are real:
the SMTP capture server is stopped and started again, or the sender is pointed at a socket that
accepts and never speaks.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from pymongo.asynchronous.collection import AsyncCollection

from factura.common.delivery.links import LinkMaker
from factura.common.delivery.sender import ChannelAdapter, Sender
from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown
from factura.common.events import (
    DeliveryExhaustedV1,
    DeliveryFailedV2,
    DeliverySucceededV2,
    InvoiceRenderedV1,
    parse_event,
)
from factura.common.kafka.consumer import Message
from factura.common.ledger import DeliveryLedger
from factura.common.links import LinkSigner
from factura.common.mongo import Document, create_client
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import LinkSettings
from factura.common.shortlinks import ShortLinks
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.common.topics import REGISTRY
from factura.devstack.config import HOST, StackConfig
from factura.devstack.smtp_capture import read_messages
from factura.devstack.stack import Stack
from factura.email_sender.handlers import PRODUCER, EmailChannel
from factura.email_sender.settings import SmtpSettings
from factura.email_sender.smtp import Mailer, SmtpMailer
from factura.sms_sender.handlers import PRODUCER as SMS_PRODUCER
from factura.sms_sender.handlers import SmsChannel
from factura.sms_sender.provider import SmsProvider
from factura.sms_sender.settings import ProviderSettings
from tests.conftest import mongo_settings
from tests.kafka_helpers import Bus, isolated
from tests.pii_keys import suppression_store

pytestmark = pytest.mark.integration

EXAMPLE = (EXAMPLES_DIR / "invoice.rendered.v1.json").read_bytes()
SENDER = ("Factura", "invoices@factura.example")
PDF = b"%PDF-1.7\n% an invoice\n"
LINKS = LinkSettings(secret=SecretStr("test-link-secret"))


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
async def bus(cfg: StackConfig) -> AsyncIterator[Bus]:
    async with isolated(cfg, client_id="test-email-sender") as topics:
        yield topics


@dataclass(frozen=True)
class Collections:
    """This test's own ledger, suppression list and short links (bootstrap's three collections)."""

    deliveries: AsyncCollection[Document]
    suppressions: AsyncCollection[Document]
    short_links: AsyncCollection[Document]


@pytest.fixture
async def collections(cfg: StackConfig) -> AsyncIterator[Collections]:
    settings = mongo_settings(cfg)
    client = create_client(settings, server_selection_ms=2000)
    db, suffix = client[settings.database], uuid.uuid4().hex[:8]
    try:
        yield Collections(db[f"deliveries_{suffix}"], db[f"suppressions_{suffix}"], db[f"short_links_{suffix}"])
    finally:
        await client.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


class Recording(SmtpMailer):
    """The real mailer, noting the Message-ID of every message it is asked to hand to the relay."""

    def __init__(self, settings: SmtpSettings) -> None:
        super().__init__(settings)
        self.asked: list[str] = []

    async def send(self, message: EmailMessage, on_accepted: Callable[[], Awaitable[None]]) -> None:
        self.asked.append(str(message["Message-ID"]))
        await super().send(message, on_accepted)


@dataclass
class Rig:
    cfg: StackConfig
    bus: Bus
    store: DocumentStore
    db: Collections
    http: httpx.AsyncClient

    def __post_init__(self) -> None:
        self.suppressions = suppression_store(self.db.suppressions)
        self._shortlinks = ShortLinks(self.db.short_links, LINKS.secret.get_secret_value().encode())

    def smtp(self, **update: Any) -> SmtpSettings:
        return SmtpSettings(host=HOST, port=self.cfg.smtp_port, timeout_s=5, local_hostname="test").model_copy(
            update=update
        )

    def links(self) -> LinkMaker:
        return LinkMaker(LinkSigner.from_settings(LINKS), self._shortlinks, base_url=LINKS.base_url, ttl_s=LINKS.ttl_s)

    def _sender(self, producer: str, adapter: ChannelAdapter) -> Sender:
        """One sender process: its own ledger owner over the shared collections."""
        return Sender(
            producer=producer,
            adapters=[adapter],
            ledger=DeliveryLedger(self.db.deliveries),
            publisher=self.bus.publisher,
            tenants=TenantDirectory(None),
            suppressions=self.suppressions,
        )

    def email(self, mailer: Mailer | None = None) -> Sender:
        """The email sender as ``bootstrap`` wires it."""
        channel = EmailChannel(
            store=self.store, mailer=mailer or SmtpMailer(self.smtp()), links=self.links(), default_sender=SENDER
        )
        return self._sender(PRODUCER, channel)

    def sms(self) -> Sender:
        """The SMS sender's SMS channel, on the SMS capture server."""
        cfg = self.cfg
        provider = ProviderSettings(
            base_url=cfg.sms_url, account_sid=cfg.sms_account_sid, auth_token=SecretStr(cfg.sms_auth_token)
        )
        return self._sender(SMS_PRODUCER, SmsChannel(SmsProvider(provider, self.http), self.links(), None))

    async def rendered(
        self, *, body: bytes = PDF, sha256: str | None = None, key: str | None = None, **customer: Any
    ) -> Envelope[Any]:
        """A fresh ``invoice.rendered`` whose document (``body``) is in S3 under ``key`` (default: in
        the event's tenant); ``sha256`` overrides the hash the event names."""
        event = parse_event(EXAMPLE)
        assert isinstance(event.data, InvoiceRenderedV1)
        key = key or f"{event.tenant_id}/it-email/{uuid.uuid4().hex}.pdf"
        digest = hashlib.sha256(body).hexdigest()
        await self.store.put(key, body, content_type="application/pdf", sha256=digest, metadata={})
        document = event.data.document.model_copy(
            update={"bucket": self.store.bucket, "key": key, "sha256": sha256 or digest, "size_bytes": len(body)}
        )
        invoice = event.data.invoice
        invoice = invoice.model_copy(update={"customer": invoice.customer.model_copy(update=customer)})
        data = event.data.model_copy(update={"document": document, "invoice": invoice})
        return event.model_copy(update={"event_id": uuid.uuid4(), "data": data})

    async def handle(self, event: Envelope[Any], sender: Sender | None = None) -> None:
        """Hand ``event`` to ``sender`` (default: a fresh email sender) as the consumer loop would."""
        raw = event.model_dump_json().encode()
        message = Message(
            topic=REGISTRY[event.type], partition=0, offset=1, key=event.partition_key, headers={}, raw=raw, value=event
        )
        await (sender or self.email()).handle(message)

    def mail(self, event: Envelope[Any]) -> list[EmailMessage]:
        """What the capture server accepted for this event."""
        return [m for m in read_messages(self.cfg.maildir) if m["Message-ID"] == message_id(event)]

    async def texts(self, phone: str) -> list[dict[str, Any]]:
        """Every SMS the capture server accepted for ``phone``."""
        captured = (await self.http.get(f"{self.cfg.sms_url}/_capture/messages")).json()
        return [m for m in captured if m["to"] == phone and m["status"] != "failed"]

    async def outcomes(self) -> list[Envelope[Any]]:
        return await self.bus.events("delivery.succeeded") + await self.bus.events("delivery.failed")

    async def outcome_of(self, cause: Envelope[Any]) -> Envelope[Any]:
        """The one outcome published for ``cause``."""
        [outcome] = [e for e in await self.outcomes() if e.causation_id == cause.event_id]
        return outcome

    async def exhausted(self) -> list[DeliveryExhaustedV1]:
        events = await self.bus.events("delivery.exhausted")
        assert all(isinstance(e.data, DeliveryExhaustedV1) for e in events)
        return [e.data for e in events]

    async def claim_state(self, event: Envelope[Any], channel: str = "email") -> str | None:
        doc = await self.db.deliveries.find_one({"_id": f"{event.event_id}:{channel}"})
        return None if doc is None else str(doc["state"])


@pytest.fixture
def rig(cfg: StackConfig, bus: Bus, store: DocumentStore, collections: Collections, http: httpx.AsyncClient) -> Rig:
    return Rig(cfg, bus, store, collections, http)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose kernel accepts connections that nobody ever answers (a hung relay)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def message_id(event: Envelope[Any]) -> str:
    """The Message-ID of the email for ``event`` (default sender's domain)."""
    return f"<{event.event_id}.email@factura.example>"


def failure(event: Envelope[Any]) -> DeliveryFailedV2:
    assert event.type == "delivery.failed" and isinstance(event.data, DeliveryFailedV2)
    return event.data


def bounce_address() -> str:
    return f"nobody-{uuid.uuid4().hex[:8]}@bounce.test"


def new_phone() -> str:
    return f"+3461{uuid.uuid4().int % 10**7:07d}"


# -- delivered -----------------------------------------------------------------------------------


async def test_delivers_once_and_a_redelivery_only_republishes(rig: Rig) -> None:
    event = await rig.rendered()
    await rig.handle(event)
    await rig.handle(event)  # redelivered after a crash or rebalance (each call: another sender process)

    [mail] = rig.mail(event)
    [attachment] = mail.iter_attachments()
    assert attachment.get_content() == PDF
    outcomes = await rig.outcomes()
    assert len(outcomes) == 2 and outcomes[0].event_id == outcomes[1].event_id
    succeeded = outcomes[0].data
    assert isinstance(succeeded, DeliverySucceededV2)
    assert succeeded.provider_message_id == mail["Message-ID"] == message_id(event)
    assert (succeeded.channel, succeeded.recipient, succeeded.chain) == ("email", "facturas@pasteleria-lucia.es", [])
    assert succeeded.notice.purpose == "invoice" and succeeded.notice.document == event.data.document
    assert await rig.claim_state(event) == "done"


class RelayLostAfterData(SmtpMailer):
    """The real mailer, with ``then`` run right after the ledger recorded the acceptance."""

    def __init__(self, settings: SmtpSettings, then: Callable[[], Awaitable[None]]) -> None:
        super().__init__(settings)
        self._then = then

    async def send(self, message: EmailMessage, on_accepted: Callable[[], Awaitable[None]]) -> None:
        async def accepted() -> None:
            await on_accepted()
            await self._then()

        await super().send(message, accepted)


async def test_done_is_recorded_before_quit_so_a_relay_lost_after_data_changes_nothing(rig: Rig, infra: Stack) -> None:
    event = await rig.rendered()
    states: list[str | None] = []

    async def relay_dies() -> None:
        states.append(await rig.claim_state(event))
        await asyncio.to_thread(infra.stop_service, "smtp")  # QUIT will find nobody

    try:
        await rig.handle(event, rig.email(RelayLostAfterData(rig.smtp(), relay_dies)))
    finally:
        await asyncio.to_thread(infra.start_service, "smtp")

    assert states == ["done"]  # recorded while the SMTP session was still open
    assert len(rig.mail(event)) == 1
    [outcome] = await rig.outcomes()
    assert outcome.type == "delivery.succeeded"


async def test_a_name_with_crlf_is_folded_into_one_header_line(rig: Rig) -> None:
    event = await rig.rendered(name="Lucía\r\nBcc: spy@evil.test")
    await rig.handle(event)

    [mail] = rig.mail(event)
    [to] = mail["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Lucía Bcc: spy@evil.test", "facturas@pasteleria-lucia.es")
    assert mail["Bcc"] is None and mail["X-Original-To"] == "facturas@pasteleria-lucia.es"
    [outcome] = await rig.outcomes()
    assert outcome.type == "delivery.succeeded"


# -- failed for good: delivery.failed, and the policy's next channel takes over --------------------


async def test_a_550_5_1_1_is_a_hard_bounce_that_suppresses_the_address_and_hands_on_to_sms(rig: Rig) -> None:
    address = bounce_address()
    event = await rig.rendered(email=address)
    await rig.handle(event)

    [outcome] = await rig.outcomes()
    failed = failure(outcome)
    assert (failed.channel, failed.reason, failed.code, failed.enhanced_code) == ("email", "hard_bounce", 550, "5.1.1")
    assert failed.recipient == address and failed.next_channel == "sms" and failed.chain == []
    assert await rig.claim_state(event) == "done"
    suppressed = await rig.suppressions.find(event.tenant_id, address)
    assert suppressed is not None
    assert (suppressed.channel, suppressed.reason, suppressed.source_event_id) == (
        "email",
        "hard_bounce",
        str(event.event_id),
    )
    assert await rig.suppressions.find("another-tenant", address) is None  # one tenant's list only


async def test_a_suppressed_address_is_not_mailed_again_and_the_invoice_goes_by_sms(rig: Rig) -> None:
    address, phone = bounce_address(), new_phone()
    mailer = Recording(rig.smtp())
    email = rig.email(mailer)
    bounced = await rig.rendered(email=address)
    await rig.handle(bounced, email)
    assert mailer.asked == [message_id(bounced)]  # the first one reached the relay, and bounced

    second = await rig.rendered(email=address, phone=phone)
    await rig.handle(second, email)

    assert mailer.asked == [message_id(bounced)] and rig.mail(second) == []  # SMTP never asked
    failed_event = await rig.outcome_of(second)
    failed = failure(failed_event)
    assert (failed.reason, failed.recipient, failed.next_channel) == ("suppressed", address, "sms")
    assert failed.code is None and "hard_bounce" in failed.detail
    assert await rig.claim_state(second) == "done"

    await rig.handle(failed_event, rig.sms())
    [text] = await rig.texts(phone)
    sms = (await rig.outcome_of(failed_event)).data
    assert isinstance(sms, DeliverySucceededV2)
    assert (sms.channel, sms.recipient, sms.provider_message_id) == ("sms", phone, text["sid"])
    assert [(a.channel, a.reason) for a in sms.chain] == [("email", "suppressed")]


async def test_no_phone_after_an_email_bounce_exhausts_the_message_naming_both_channels(rig: Rig) -> None:
    event = await rig.rendered(email=bounce_address(), phone=None)
    await rig.handle(event)
    bounced = await rig.outcome_of(event)
    assert failure(bounced).next_channel == "sms"

    await rig.handle(bounced, rig.sms())

    no_phone = failure(await rig.outcome_of(bounced))
    assert (no_phone.channel, no_phone.reason, no_phone.next_channel) == ("sms", "no_address", None)
    [exhausted] = await rig.exhausted()
    assert [(a.channel, a.reason) for a in exhausted.chain] == [("email", "hard_bounce"), ("sms", "no_address")]
    assert exhausted.notice == failure(bounced).notice


async def test_an_attachment_that_is_not_the_one_the_event_names_is_not_mailed(rig: Rig) -> None:
    other = hashlib.sha256(b"the invoice the renderer announced").hexdigest()
    event = await rig.rendered(sha256=other)
    await rig.handle(event)

    assert rig.mail(event) == []
    [outcome] = await rig.outcomes()
    failed = failure(outcome)
    assert failed.reason == "document_mismatch" and other in failed.detail
    assert failed.next_channel is None  # no channel may hand out the wrong bytes
    [exhausted] = await rig.exhausted()
    assert [(a.channel, a.reason) for a in exhausted.chain] == [("email", "document_mismatch")]
    assert await rig.claim_state(event) == "done"  # a redelivery re-publishes, never retries


async def test_a_document_outside_the_events_tenant_is_refused_and_nothing_is_sent(rig: Rig) -> None:
    # The bytes match the hash and the address is deliverable: only the key's tenant is wrong.
    event = await rig.rendered(key=f"another-tenant/it-email/{uuid.uuid4().hex}.pdf")
    mailer = Recording(rig.smtp())
    await rig.handle(event, rig.email(mailer))

    assert mailer.asked == [] and rig.mail(event) == []
    [outcome] = await rig.outcomes()
    failed = failure(outcome)
    assert (failed.reason, failed.recipient, failed.next_channel) == ("document_mismatch", None, None)
    assert event.data.document.key in failed.detail and event.tenant_id in failed.detail
    [exhausted] = await rig.exhausted()
    assert [(a.channel, a.reason) for a in exhausted.chain] == [("email", "document_mismatch")]


async def test_a_document_gone_from_s3_is_delivery_failed_not_a_dead_letter(rig: Rig) -> None:
    event = await rig.rendered()
    gone = event.data.document.model_copy(
        update={"key": f"{event.tenant_id}/it-email/{uuid.uuid4().hex}-never-stored.pdf"}
    )
    event = event.model_copy(update={"data": event.data.model_copy(update={"document": gone})})
    await rig.handle(event)

    assert rig.mail(event) == []
    [outcome] = await rig.outcomes()
    failed = failure(outcome)
    assert failed.reason == "document_missing" and gone.key in failed.detail
    assert failed.next_channel is None


async def test_a_message_that_cannot_be_built_fails_for_good(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**_: Any) -> EmailMessage:
        raise ValueError("Header values may not contain linefeed or carriage return characters")

    # Every input the event models allow builds today; this stands for the next way one will not.
    monkeypatch.setattr("factura.email_sender.handlers.build_email", broken)
    event = await rig.rendered()
    await rig.handle(event)

    assert rig.mail(event) == []
    [outcome] = await rig.outcomes()
    failed = failure(outcome)
    assert failed.reason == "message_invalid" and "linefeed" in failed.detail
    assert failed.next_channel == "sms"  # another channel may carry what email cannot build
    assert await rig.suppressions.find(event.tenant_id, "facturas@pasteleria-lucia.es") is None


async def test_a_bounce_falls_back_to_sms_and_a_mismatched_document_does_not(rig: Rig) -> None:
    phone = new_phone()
    bounced = await rig.rendered(email=bounce_address(), phone=phone)
    mismatched = await rig.rendered(sha256=hashlib.sha256(b"another PDF").hexdigest(), phone=phone)
    await rig.handle(bounced)
    await rig.handle(mismatched)
    after_bounce, after_mismatch = await rig.outcome_of(bounced), await rig.outcome_of(mismatched)

    sms = rig.sms()
    await rig.handle(after_bounce, sms)
    [text] = await rig.texts(phone)
    await rig.handle(after_mismatch, sms)  # names no next channel: the SMS sender leaves it alone

    assert await rig.texts(phone) == [text]  # one SMS, for the bounce
    assert "/l/" in text["body"]  # the download link travels as a short link
    delivered = (await rig.outcome_of(after_bounce)).data
    assert isinstance(delivered, DeliverySucceededV2) and delivered.channel == "sms"
    assert [(a.channel, a.reason) for a in delivered.chain] == [("email", "hard_bounce")]
    assert [e for e in await rig.outcomes() if e.causation_id == after_mismatch.event_id] == []
    assert await rig.claim_state(after_mismatch, "sms") is None


# -- not now: DependencyDown("smtp"), the loop pauses and retries --------------------------------


async def test_smtp_down_pauses_and_the_retry_delivers_once_when_it_is_back(rig: Rig, infra: Stack) -> None:
    event = await rig.rendered()
    mailer = SmtpMailer(rig.smtp())
    sender = rig.email(mailer)  # one process: its retry may take its own claim again
    await mailer.probe()
    await asyncio.to_thread(infra.stop_service, "smtp")
    try:
        with pytest.raises(DependencyDown) as down:
            await rig.handle(event, sender)
        assert down.value.dependency == "smtp" and "connect" in down.value.detail
        with pytest.raises(DependencyDown):
            await mailer.probe()
        assert await rig.outcomes() == []
        assert await rig.claim_state(event) == "sending"
    finally:
        await asyncio.to_thread(infra.start_service, "smtp")

    await mailer.probe()
    await rig.handle(event, sender)  # the loop's retry, once the relay answers again
    assert len(rig.mail(event)) == 1
    [outcome] = await rig.outcomes()
    assert outcome.type == "delivery.succeeded"


async def test_a_relay_that_never_answers_times_out_as_down(rig: Rig, silent_port: int) -> None:
    settings = rig.smtp(port=silent_port, timeout_s=0.3)
    event = await rig.rendered()
    with pytest.raises(DependencyDown) as down:
        await rig.handle(event, rig.email(SmtpMailer(settings)))
    assert down.value.dependency == "smtp"
    with pytest.raises(DependencyDown, match="smtp"):
        await SmtpMailer(settings).probe()
    assert await rig.outcomes() == []


async def test_a_4xx_reply_is_retried_not_failed(rig: Rig) -> None:
    event = await rig.rendered(email="someone@tempfail.test")
    with pytest.raises(DependencyDown) as down:
        await rig.handle(event)
    assert down.value.dependency == "smtp" and "451" in down.value.detail
    assert await rig.outcomes() == []
    assert await rig.claim_state(event) == "sending"
    assert await rig.suppressions.find(event.tenant_id, "someone@tempfail.test") is None
