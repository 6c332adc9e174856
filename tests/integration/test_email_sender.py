"""The email sender's handler against the real SMTP capture server, S3 (moto), MongoDB-wire and broker.

Each test publishes on topics under its own prefix, keeps its ledger in a collection of its own
and recognises its mail in the shared Maildir by the deterministic Message-ID
(``<event_id@factura.example>``). Outages are real: the SMTP capture server is stopped and started
again, or the sender is pointed at a socket that accepts and never speaks.
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
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

import factura.email_sender.handlers as email_handlers
from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown
from factura.common.events import DeliveryFailedV1, DeliverySucceededV1, InvoiceRenderedV1, parse_event
from factura.common.kafka.consumer import Message
from factura.common.ledger import DeliveryLedger
from factura.common.links import LinkSigner
from factura.common.mongo import Document
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import LinkSettings
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.common.topics import DELIVERY_FAILED, INVOICE_RENDERED
from factura.devstack.config import HOST, StackConfig
from factura.devstack.smtp_capture import read_messages
from factura.devstack.stack import Stack
from factura.email_sender.handlers import EmailHandlers, SmtpMailer
from factura.email_sender.settings import SmtpSettings
from factura.sms_sender.handlers import SmsHandlers
from factura.sms_sender.provider import SmsProvider
from factura.sms_sender.settings import ProviderSettings
from tests.conftest import mongo_settings
from tests.kafka_helpers import Bus, isolated

pytestmark = pytest.mark.integration

EXAMPLE = (EXAMPLES_DIR / "invoice.rendered.v1.json").read_bytes()
SENDER = ("Factura", "invoices@factura.example")
PDF = b"%PDF-1.7\n% an invoice\n"


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
async def bus(cfg: StackConfig) -> AsyncIterator[Bus]:
    async with isolated(cfg, client_id="test-email-sender") as topics:
        yield topics


@pytest.fixture
async def deliveries(cfg: StackConfig) -> AsyncIterator[AsyncCollection[Document]]:
    settings = mongo_settings(cfg)
    client: AsyncMongoClient[Document] = AsyncMongoClient(settings.url, tz_aware=True, serverSelectionTimeoutMS=2000)
    try:
        yield client[settings.database][f"deliveries_{uuid.uuid4().hex[:8]}"]
    finally:
        await client.close()


@dataclass
class Rig:
    cfg: StackConfig
    bus: Bus
    store: DocumentStore
    deliveries: AsyncCollection[Document]

    def smtp(self, **update: Any) -> SmtpSettings:
        return SmtpSettings(host=HOST, port=self.cfg.smtp_port, timeout_s=5, local_hostname="test").model_copy(
            update=update
        )

    def handlers(self, mailer: email_handlers.Mailer | None = None) -> EmailHandlers:
        return EmailHandlers(
            publisher=self.bus.publisher,
            store=self.store,
            ledger=DeliveryLedger(self.deliveries),
            mailer=mailer or SmtpMailer(self.smtp()),
            tenants=TenantDirectory(None),
            default_sender=SENDER,
        )

    async def rendered(self, *, body: bytes = PDF, sha256: str | None = None, **customer: Any) -> Envelope[Any]:
        """A fresh ``invoice.rendered`` whose document (``body``) is in S3; ``sha256`` overrides its hash."""
        event = parse_event(EXAMPLE)
        assert isinstance(event.data, InvoiceRenderedV1)
        key = f"it-email/{uuid.uuid4().hex}.pdf"
        digest = hashlib.sha256(body).hexdigest()
        await self.store.put(key, body, content_type="application/pdf", sha256=digest, metadata={})
        document = event.data.document.model_copy(
            update={"bucket": self.store.bucket, "key": key, "sha256": sha256 or digest, "size_bytes": len(body)}
        )
        invoice = event.data.invoice
        invoice = invoice.model_copy(update={"customer": invoice.customer.model_copy(update=customer)})
        data = event.data.model_copy(update={"document": document, "invoice": invoice})
        return event.model_copy(update={"event_id": uuid.uuid4(), "data": data})

    async def handle(self, event: Envelope[Any], handlers: EmailHandlers | None = None) -> None:
        raw = event.model_dump_json().encode()
        message = Message(
            topic=INVOICE_RENDERED, partition=0, offset=1, key=event.partition_key, headers={}, raw=raw, value=event
        )
        await (handlers or self.handlers()).on_invoice_rendered(message)

    def mail(self, event: Envelope[Any]) -> list[EmailMessage]:
        """What the capture server accepted for this event."""
        message_id = f"<{event.event_id}@factura.example>"
        return [m for m in read_messages(self.cfg.maildir) if m["Message-ID"] == message_id]

    async def outcomes(self) -> list[Envelope[Any]]:
        return await self.bus.events("delivery.succeeded") + await self.bus.events("delivery.failed")

    async def claim_state(self, event: Envelope[Any]) -> str | None:
        doc = await self.deliveries.find_one({"_id": f"{event.event_id}:email"})
        return None if doc is None else str(doc["state"])


@pytest.fixture
def rig(cfg: StackConfig, bus: Bus, store: DocumentStore, deliveries: AsyncCollection[Document]) -> Rig:
    return Rig(cfg, bus, store, deliveries)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose kernel accepts connections that nobody ever answers (a hung relay)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def failure(event: Envelope[Any]) -> DeliveryFailedV1:
    assert event.type == "delivery.failed" and isinstance(event.data, DeliveryFailedV1)
    return event.data


# -- delivered -----------------------------------------------------------------------------------


async def test_delivers_once_and_a_redelivery_only_republishes(rig: Rig) -> None:
    event = await rig.rendered()
    await rig.handle(event)
    await rig.handle(event)  # redelivered after a crash or rebalance

    [mail] = rig.mail(event)
    [attachment] = mail.iter_attachments()
    assert attachment.get_content() == PDF
    outcomes = await rig.outcomes()
    assert len(outcomes) == 2 and outcomes[0].event_id == outcomes[1].event_id
    assert isinstance(outcomes[0].data, DeliverySucceededV1)
    assert outcomes[0].data.provider_message_id == mail["Message-ID"]
    assert await rig.claim_state(event) == "done"


class Accepted(SmtpMailer):
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
        await rig.handle(event, rig.handlers(Accepted(rig.smtp(), relay_dies)))
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


# -- failed for good: delivery.failed, so the SMS fallback takes over ------------------------------


async def test_a_5xx_refusal_is_delivery_failed_with_its_codes(rig: Rig) -> None:
    event = await rig.rendered(email="nobody@bounce.test")
    await rig.handle(event)

    [outcome] = await rig.outcomes()
    failed = failure(outcome)
    assert (failed.reason, failed.code, failed.enhanced_code) == ("rejected_by_server", 550, "5.1.1")
    assert await rig.claim_state(event) == "done"


async def test_an_attachment_that_is_not_the_one_the_event_names_is_not_mailed(rig: Rig) -> None:
    other = hashlib.sha256(b"the invoice the renderer announced").hexdigest()
    event = await rig.rendered(sha256=other)
    await rig.handle(event)

    assert rig.mail(event) == []
    [outcome] = await rig.outcomes()
    failed = failure(outcome)
    assert failed.reason == "document_mismatch" and other in failed.detail
    assert await rig.claim_state(event) == "done"  # a redelivery re-publishes, never retries


async def test_a_document_gone_from_s3_is_delivery_failed_not_a_dead_letter(rig: Rig) -> None:
    event = await rig.rendered()
    gone = event.data.document.model_copy(update={"key": f"it-email/{uuid.uuid4().hex}-never-stored.pdf"})
    event = event.model_copy(update={"data": event.data.model_copy(update={"document": gone})})
    await rig.handle(event)

    assert rig.mail(event) == []
    [outcome] = await rig.outcomes()
    failed = failure(outcome)
    assert failed.reason == "document_missing" and gone.key in failed.detail


async def test_a_message_that_cannot_be_built_fails_for_good(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**_: Any) -> EmailMessage:
        raise ValueError("Header values may not contain linefeed or carriage return characters")

    # Every input the event models allow builds today; this stands for the next way one will not.
    monkeypatch.setattr(email_handlers, "build_invoice_email", broken)
    event = await rig.rendered()
    await rig.handle(event)

    assert rig.mail(event) == []
    [outcome] = await rig.outcomes()
    failed = failure(outcome)
    assert failed.reason == "message_invalid" and "linefeed" in failed.detail


async def sms_fallback(rig: Rig, http: httpx.AsyncClient, failed: Envelope[Any]) -> list[str]:
    """Run the SMS sender on the email sender's ``delivery.failed``; every number the SMS capture server has texted."""
    cfg = rig.cfg
    provider = ProviderSettings(
        base_url=cfg.sms_url, account_sid=cfg.sms_account_sid, auth_token=SecretStr(cfg.sms_auth_token)
    )
    sms = SmsHandlers(
        rig.bus.publisher,
        DeliveryLedger(rig.deliveries),
        SmsProvider(provider, http),
        LinkSigner.from_settings(LinkSettings(secret=SecretStr("test-link-secret"))),
        TenantDirectory(None),
    )
    raw = failed.model_dump_json().encode()
    message = Message(
        topic=DELIVERY_FAILED, partition=0, offset=1, key=failed.partition_key, headers={}, raw=raw, value=failed
    )
    await sms.on_delivery_failed(message)
    return [m["to"] for m in (await http.get(f"{cfg.sms_url}/_capture/messages")).json()]


async def test_a_bounce_falls_back_to_sms_and_a_mismatched_document_does_not(rig: Rig) -> None:
    phone = f"+3461{uuid.uuid4().int % 10**7:07d}"
    bounced = await rig.rendered(email="nobody@bounce.test", phone=phone)
    mismatched = await rig.rendered(sha256=hashlib.sha256(b"another PDF").hexdigest(), phone=phone)
    await rig.handle(bounced)
    await rig.handle(mismatched)
    by_cause = {e.causation_id: e for e in await rig.bus.events("delivery.failed")}

    async with httpx.AsyncClient() as http:
        after_bounce = await sms_fallback(rig, http, by_cause[bounced.event_id])
        after_mismatch = await sms_fallback(rig, http, by_cause[mismatched.event_id])

    assert after_bounce.count(phone) == 1 and after_mismatch.count(phone) == 1  # one SMS, for the bounce
    sms_outcomes = {e.causation_id: e for e in await rig.outcomes() if e.producer == "sms-sender"}
    assert sms_outcomes[by_cause[bounced.event_id].event_id].type == "delivery.succeeded"
    no_link = failure(sms_outcomes[by_cause[mismatched.event_id].event_id])
    assert (no_link.channel, no_link.reason) == ("sms", "document_mismatch")


# -- not now: DependencyDown("smtp"), the loop pauses and retries --------------------------------


async def test_smtp_down_pauses_and_the_retry_delivers_once_when_it_is_back(rig: Rig, infra: Stack) -> None:
    event = await rig.rendered()
    mailer = SmtpMailer(rig.smtp())
    handlers = rig.handlers(mailer)  # one process: its retry may take its own claim again
    await mailer.probe()
    await asyncio.to_thread(infra.stop_service, "smtp")
    try:
        with pytest.raises(DependencyDown) as down:
            await rig.handle(event, handlers)
        assert down.value.dependency == "smtp" and "connect" in down.value.detail
        with pytest.raises(DependencyDown):
            await mailer.probe()
        assert await rig.outcomes() == []
        assert await rig.claim_state(event) == "sending"
    finally:
        await asyncio.to_thread(infra.start_service, "smtp")

    await mailer.probe()
    await rig.handle(event, handlers)  # the loop's retry, once the relay answers again
    assert len(rig.mail(event)) == 1
    [outcome] = await rig.outcomes()
    assert outcome.type == "delivery.succeeded"


async def test_a_relay_that_never_answers_times_out_as_down(rig: Rig, silent_port: int) -> None:
    settings = rig.smtp(port=silent_port, timeout_s=0.3)
    event = await rig.rendered()
    with pytest.raises(DependencyDown) as down:
        await rig.handle(event, rig.handlers(SmtpMailer(settings)))
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
