"""Asynchronous delivery reports and the suppression admin API, against the real local servers.

Every report names a message that was really sent: the email :class:`Sender` (wired as the
email-sender's bootstrap wires it) delivers an ``invoice.rendered`` through the SMTP capture
server, with the document from S3 and its claim in MongoDB, so the ledger holds the Message-ID a
bounce then names. The webhooks and the admin API run in an in-process FastAPI app (ASGI
transport); everything behind them is real: MongoDB-wire, the broker (topics of each test's
own), the SMS capture server, and for SMS status callbacks a real HTTP server the capture server
calls. Each test keeps its ledger, suppressions, short links and webhook log in collections of
its own, so it sees exactly its own records.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI
from pydantic import SecretStr
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.delivery.api import AdminSettings, suppression_router
from factura.common.delivery.gsm import prepare
from factura.common.delivery.journal import WebhookLog
from factura.common.delivery.links import LinkMaker
from factura.common.delivery.sender import Job, Sender, Sent, request_of
from factura.common.delivery.suppression import SuppressionStore
from factura.common.envelope import Envelope
from factura.common.events import (
    DeliveryExhaustedV1,
    DeliveryFailedV2,
    DeliverySucceededV2,
    InvoiceRenderedV1,
    parse_event,
)
from factura.common.http import Server
from factura.common.kafka.consumer import Message
from factura.common.ledger import Claim, DeliveryLedger
from factura.common.links import LinkSigner
from factura.common.mongo import Document, create_client, database
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import LinkSettings
from factura.common.shortlinks import ShortLinks
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.common.topics import topic_for_event
from factura.common.webhooks import SIGNATURE_HEADER, WebhookSettings, sign_hmac
from factura.devstack.config import HOST, StackConfig
from factura.devstack.sms_capture import twilio_signature
from factura.devstack.smtp_capture import read_messages
from factura.email_sender.handlers import PRODUCER as EMAIL_PRODUCER
from factura.email_sender.handlers import EmailChannel
from factura.email_sender.settings import SmtpSettings
from factura.email_sender.smtp import SmtpMailer
from factura.email_sender.webhooks import BounceHandler, bounce_router
from factura.sms_sender.handlers import PRODUCER as SMS_PRODUCER
from factura.sms_sender.handlers import SmsChannel
from factura.sms_sender.provider import SmsProvider
from factura.sms_sender.settings import ProviderSettings
from factura.sms_sender.webhooks import StatusHandler, status_router
from tests.conftest import mongo_settings
from tests.kafka_helpers import Bus, isolated
from tests.pii_keys import suppression_store
from tests.waiting import until

pytestmark = pytest.mark.integration

TENANT = "harinas-sur"  # devstack tenant: email then SMS, a payment link template, soft bounces retried once
EXAMPLE = (EXAMPLES_DIR / "invoice.rendered.v1.json").read_bytes()
SAMPLES = Path(__file__).resolve().parents[1] / "unit" / "samples" / "bounces"
PDF = b"%PDF-1.7\n% an invoice for the delivery report tests\n"
WEBHOOK_SECRET = "delivery-reports-webhook-secret"
ADMIN_TOKEN = "delivery-reports-admin-token"
LINK_BASE = "https://fx.test"
SHORT_LINK = re.compile(re.escape(LINK_BASE) + r"/l/([0-9A-Za-z]{8,16})\b")
DSN_TYPE = "multipart/report; report-type=delivery-status"
SNS_TYPE = "text/plain; charset=UTF-8"  # how SNS posts its HTTP(S) notifications
WAIT_S = 20.0


# -- reports, made from the samples for a message we really sent ----------------------------------


def dsn(message_id: str, recipient: str) -> bytes:
    """Postfix's DSN for ``message_id``: one recipient, ``550 5.1.1`` (the sample's 4.2.2 one dropped)."""
    text = (SAMPLES / "postfix_dsn.eml").read_text(encoding="utf-8")
    text = text.replace("<9b2f6f0e-6a44-4c1e-9d0c-2a1f3f6d8e01@factura.example.com>", message_id)
    head, _, rest = text.partition("\nFinal-Recipient: rfc822; cuentas@lleno.example.org")
    text = head + rest[rest.index("\n--4XkQ2T0dLVz9vBT") :]
    return text.replace("nobody@bounce.test", recipient).encode()


def delayed_dsn(message_id: str) -> bytes:
    text = (SAMPLES / "delayed_dsn.eml").read_text(encoding="utf-8")
    return text.replace("<1c0ffee0-1234-4abc-8def-0123456789ab@factura.example.com>", message_id).encode()


def ses(sample: str, message_id: str, recipient: str) -> bytes:
    """An SES notification sample (in its SNS envelope) about ``message_id`` sent to ``recipient``."""
    envelope = json.loads((SAMPLES / sample).read_text(encoding="utf-8"))
    note = json.loads(envelope["Message"])
    mail = note["mail"]
    for header in mail["headers"]:
        header["value"] = {"Message-ID": message_id, "To": recipient}.get(header["name"], header["value"])
    mail["commonHeaders"] |= {"messageId": message_id, "to": [recipient]}
    mail["destination"] = [recipient]
    for key, field in (("bounce", "bouncedRecipients"), ("complaint", "complainedRecipients")):
        for entry in note.get(key, {}).get(field, []):
            entry["emailAddress"] = recipient
    envelope["Message"] = json.dumps(note)
    return json.dumps(envelope).encode()


# -- the rig ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def db(cfg: StackConfig) -> AsyncIterator[AsyncDatabase[Document]]:
    client = create_client(mongo_settings(cfg))
    try:
        yield database(client, mongo_settings(cfg))
    finally:
        await client.close()


@dataclass
class Rig:
    cfg: StackConfig
    bus: Bus
    store: DocumentStore
    http: httpx.AsyncClient
    api: httpx.AsyncClient
    deliveries: AsyncCollection[Document]
    webhook_log: AsyncCollection[Document]
    suppressions: SuppressionStore
    shortlinks: ShortLinks
    links: LinkMaker
    tenants: TenantDirectory
    email: Sender

    def ledger(self, owner: str) -> DeliveryLedger:
        """A ledger on the shared deliveries collection, as one sender process holds it."""
        return DeliveryLedger(self.deliveries, owner=owner)

    def sms_channel(self, status_callback: str | None = None) -> SmsChannel:
        """The SMS adapter on the capture server, as the sms-sender's bootstrap wires it."""
        settings = ProviderSettings(
            base_url=self.cfg.sms_url,
            account_sid=self.cfg.sms_account_sid,
            auth_token=SecretStr(self.cfg.sms_auth_token),
            timeout_s=5,
        )
        return SmsChannel(SmsProvider(settings, self.http), self.links, status_callback)

    def sms_sender(self, status_callback: str | None = None) -> Sender:
        """The SMS sender's delivery path, on the capture server, as its bootstrap wires it."""
        return Sender(
            producer=SMS_PRODUCER,
            adapters=[self.sms_channel(status_callback)],
            ledger=self.ledger("sms-sender"),
            publisher=self.bus.publisher,
            tenants=self.tenants,
            suppressions=self.suppressions,
        )

    def status_handler(self) -> StatusHandler:
        return StatusHandler(
            ledger=self.ledger("sms-sender"),
            publisher=self.bus.publisher,
            tenants=self.tenants,
            suppressions=self.suppressions,
        )

    async def rendered(self, **customer: Any) -> Envelope[InvoiceRenderedV1]:
        """A fresh ``invoice.rendered`` whose document is in S3 under the tenant's prefix."""
        event = parse_event(EXAMPLE)
        assert isinstance(event.data, InvoiceRenderedV1) and event.tenant_id == TENANT
        key = f"{TENANT}/it-reports/{uuid.uuid4().hex}.pdf"
        digest = hashlib.sha256(PDF).hexdigest()
        await self.store.put(key, PDF, content_type="application/pdf", sha256=digest, metadata={})
        document = event.data.document.model_copy(
            update={"bucket": self.store.bucket, "key": key, "sha256": digest, "size_bytes": len(PDF)}
        )
        invoice = event.data.invoice
        fresh = {"email": f"cliente-{uuid.uuid4().hex[:10]}@pasteleria-lucia.es"} | customer
        invoice = invoice.model_copy(update={"customer": invoice.customer.model_copy(update=fresh)})
        data = event.data.model_copy(update={"document": document, "invoice": invoice})
        return event.model_copy(update={"event_id": uuid.uuid4(), "data": data})

    async def handle(self, sender: Sender, event: Envelope[Any]) -> None:
        """What the consumer loop does with ``event`` for this sender."""
        raw = event.model_dump_json().encode()
        topic = topic_for_event(event.type)
        await sender.handle(Message(topic, 0, 0, event.partition_key, {}, raw, event))

    async def published(self, logical: str, cause: Envelope[Any], count: int = 1) -> list[Envelope[Any]]:
        """The events on ``logical`` that ``cause`` led to, once ``count`` of them are on the broker.

        Read with a consumer of its own from the start of the topic (not by end offsets, which
        are stale while a webhook is still publishing).
        """
        consumer = AIOKafkaConsumer(
            self.bus.topic(logical),
            bootstrap_servers=self.bus.settings.bootstrap_servers,
            auto_offset_reset="earliest",
            group_id=None,
            fetch_max_wait_ms=self.bus.settings.fetch_max_wait_ms,
        )
        found: list[Envelope[Any]] = []
        deadline = time.monotonic() + WAIT_S
        await consumer.start()
        try:
            while len(found) < count and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    events = (parse_event(r.value) for r in records)
                    found.extend(e for e in events if e.causation_id == cause.event_id)
        finally:
            await consumer.stop()
        assert len(found) == count, f"{logical} caused by {cause.type} {cause.event_id}: {len(found)} of {count}"
        return found

    async def emailed(self, event: Envelope[Any]) -> Envelope[DeliverySucceededV2]:
        """Deliver ``event`` by email; the outcome, once the relay holds the message."""
        await self.handle(self.email, event)
        [sent] = await self.published("delivery.succeeded", event)
        assert isinstance(sent.data, DeliverySucceededV2) and sent.data.channel == "email"
        [mail] = [m for m in read_messages(self.cfg.maildir) if m["Message-ID"] == sent.data.provider_message_id]
        assert mail["To"].addresses[0].addr_spec == sent.data.recipient
        return sent

    async def failed(self, cause: Envelope[Any], count: int = 1) -> list[Envelope[DeliveryFailedV2]]:
        events = await self.published("delivery.failed", cause, count)
        assert all(isinstance(e.data, DeliveryFailedV2) for e in events)
        return events

    async def report(
        self, body: bytes, content_type: str, *, secret: str | None = WEBHOOK_SECRET, now: float | None = None
    ) -> httpx.Response:
        """POST a bounce report, signed with ``secret`` (``None``: unsigned)."""
        headers = {"Content-Type": content_type}
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign_hmac(body, secret.encode(), now)
        return await self.api.post("/v1/webhooks/bounces", content=body, headers=headers)

    async def hard_bounced(self, **customer: Any) -> Envelope[DeliveryFailedV2]:
        """An invoice emailed, then reported by a DSN as ``5.1.1``: the ``delivery.failed`` it became."""
        sent = await self.emailed(await self.rendered(**customer))
        response = await self.report(dsn(sent.data.provider_message_id, sent.data.recipient), DSN_TYPE)
        assert response.status_code == 200, response.text
        [failed] = await self.failed(sent)
        return failed

    async def texts_to(self, phone: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = (await self.http.get(f"{self.cfg.sms_url}/_capture/messages")).json()
        return [e for e in entries if e["to"] == phone]

    async def captured_sms(self, sid: str) -> dict[str, Any]:
        entries: list[dict[str, Any]] = (await self.http.get(f"{self.cfg.sms_url}/_capture/messages")).json()
        [entry] = [e for e in entries if e["sid"] == sid]
        return entry

    async def refusals(self, webhook: str) -> list[Document]:
        return await self.webhook_log.find({"webhook": webhook}).sort("_id", 1).to_list()


@pytest.fixture
async def rig(cfg: StackConfig, store: DocumentStore, db: AsyncDatabase[Document]) -> AsyncIterator[Rig]:
    own = uuid.uuid4().hex[:8]
    deliveries, webhook_log = db[f"deliveries_{own}"], db[f"webhook_log_{own}"]
    suppressions = suppression_store(db[f"suppressions_{own}"])
    link_settings = LinkSettings(secret=SecretStr("delivery-reports-link-secret"), base_url=LINK_BASE)
    shortlinks = ShortLinks(db[f"short_links_{own}"], link_settings.secret.get_secret_value().encode())
    ledger = DeliveryLedger(deliveries, owner="email-sender")
    for indexed in (ledger, suppressions, shortlinks):
        await indexed.ensure_indexes()
    tenants = TenantDirectory(cfg.tenants_dir)
    links = LinkMaker(
        LinkSigner.from_settings(link_settings), shortlinks, base_url=link_settings.base_url, ttl_s=link_settings.ttl_s
    )
    smtp = SmtpSettings(host=HOST, port=cfg.smtp_port, timeout_s=5, local_hostname="test")
    async with isolated(cfg, client_id="test-delivery-reports") as bus, httpx.AsyncClient() as http:
        email = Sender(
            producer=EMAIL_PRODUCER,
            adapters=[
                EmailChannel(
                    store=store,
                    mailer=SmtpMailer(smtp),
                    links=links,
                    default_sender=(smtp.from_name, smtp.from_address),
                )
            ],
            ledger=ledger,
            publisher=bus.publisher,
            tenants=tenants,
            suppressions=suppressions,
        )
        bounces = BounceHandler(ledger=ledger, publisher=bus.publisher, tenants=tenants, suppressions=suppressions)
        app = FastAPI()
        app.include_router(
            bounce_router(bounces, WebhookSettings(hmac_secrets=[SecretStr(WEBHOOK_SECRET)]), WebhookLog(webhook_log))
        )
        app.include_router(suppression_router(suppressions, AdminSettings(tokens=[SecretStr(ADMIN_TOKEN)])))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://email-sender.test") as api:
            yield Rig(
                cfg=cfg,
                bus=bus,
                store=store,
                http=http,
                api=api,
                deliveries=deliveries,
                webhook_log=webhook_log,
                suppressions=suppressions,
                shortlinks=shortlinks,
                links=links,
                tenants=tenants,
                email=email,
            )


# -- bounces: hand over to the next channel, suppress the address ---------------------------------


async def test_a_dsn_hard_bounce_hands_the_invoice_to_sms_once_and_suppresses_the_address(rig: Rig) -> None:
    sent = await rig.emailed(await rig.rendered())
    message_id, address = sent.data.provider_message_id, sent.data.recipient
    report = dsn(message_id, address)

    response = await rig.report(report, DSN_TYPE)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "items": [{"message_id": message_id, "result": "handed_on", "detail": "next channel: sms"}]
    }
    [failed] = await rig.failed(sent)
    assert (failed.schema_version, failed.tenant_id, failed.producer) == (2, TENANT, "email-sender")
    data = failed.data
    assert (data.channel, data.reason, data.next_channel, data.enhanced_code) == (
        "email",
        "hard_bounce",
        "sms",
        "5.1.1",
    )
    assert (data.provider_message_id, data.recipient) == (message_id, address)
    assert data.evidence == report.decode()
    assert "User unknown" in data.detail and data.detail.startswith("dsn hard:")
    assert data.notice == sent.data.notice
    suppression = await rig.suppressions.find(TENANT, address)
    assert suppression is not None
    assert (suppression.channel, suppression.reason, suppression.source_event_id) == (
        "email",
        "hard_bounce",
        str(sent.event_id),
    )

    again = await rig.report(report, DSN_TYPE)  # the relay sends its report twice

    assert again.status_code == 200, again.text
    twice = await rig.failed(sent, count=2)
    assert [e.event_id for e in twice] == [failed.event_id] * 2  # one id: consumers and audit keep one
    assert await rig.bus.events("delivery.exhausted") == []


async def test_the_sms_sender_takes_over_in_one_gsm7_segment_with_two_short_links(rig: Rig) -> None:
    failed = await rig.hard_bounced()

    await rig.handle(rig.sms_sender(), failed)

    [succeeded] = await rig.published("delivery.succeeded", failed)
    data = succeeded.data
    assert isinstance(data, DeliverySucceededV2)
    assert (data.channel, data.recipient) == ("sms", failed.data.notice.invoice.customer.phone)
    assert (data.segments, data.encoding) == (1, "gsm7")
    assert [(a.channel, a.reason) for a in data.chain] == [("email", "hard_bounce")]
    sms = await rig.captured_sms(data.provider_message_id)
    assert sms["to"] == data.recipient and sms["status"] == "queued"
    body = prepare(sms["body"], transliterate=False)
    assert (body.text, body.encoding, body.segments) == (sms["body"], "gsm7", 1)
    ids = SHORT_LINK.findall(sms["body"])
    assert len(ids) == len(set(ids)) == 2, sms["body"]
    resolved = [await rig.shortlinks.resolve(i) for i in ids]
    assert sorted(link.kind for link in resolved if link is not None) == ["download", "payment"]
    assert "Harinas del Sur" in sms["body"] and "F-2026-000123" in sms["body"]


async def dead_sms_attempt(rig: Rig, failed: Envelope[DeliveryFailedV2], *, reached_provider: bool) -> list[str]:
    """A sender process that claimed ``failed``'s SMS and died: before the provider got it, or
    between the provider's 2xx and its "done" write. Its lease has run out. The sids it got."""
    key = f"{failed.event_id}:sms"
    assert isinstance(await rig.ledger("dead-sms-sender").begin(key, failed, "sms"), Claim)
    sids: list[str] = []
    if reached_provider:
        tenant = rig.tenants.get(failed.tenant_id)
        request = request_of(failed, tenant)
        assert request is not None and request.channel == "sms"
        phone = request.notice.invoice.customer.phone
        assert phone is not None
        job = Job(failed, "sms", request.notice, request.chain, tenant, phone, key)

        async def dies_before_recording(sent: Sent) -> None:
            sids.append(sent.provider_message_id)

        await rig.sms_channel().send(job, dies_before_recording)
    await rig.deliveries.update_one({"_id": key}, {"$set": {"lease_expires_ms": 0}})
    return sids


@pytest.mark.parametrize("reached_provider", [True, False])
async def test_a_retry_asks_the_provider_and_sends_what_a_dead_sender_did_not(rig: Rig, reached_provider: bool) -> None:
    phone = f"+346{uuid.uuid4().int % 10**8:08d}"
    failed = await rig.hard_bounced(phone=phone)
    earlier = await dead_sms_attempt(rig, failed, reached_provider=reached_provider)

    await rig.handle(rig.sms_sender(), failed)

    [succeeded] = await rig.published("delivery.succeeded", failed)
    assert isinstance(succeeded.data, DeliverySucceededV2) and succeeded.data.channel == "sms"
    texts = await rig.texts_to(phone)
    assert [t["sid"] for t in texts] == [succeeded.data.provider_message_id]  # one text, whoever sent it
    assert [t["sid"] for t in texts if t["sid"] in earlier] == earlier
    assert (succeeded.data.segments, succeeded.data.encoding) == (1, "gsm7")


@pytest.mark.parametrize(
    ("sample", "reason", "enhanced_code"),
    [("ses_bounce_permanent.json", "hard_bounce", "5.1.1"), ("ses_complaint.json", "complaint", None)],
)
async def test_an_ses_bounce_or_complaint_hands_over_and_suppresses(
    rig: Rig, sample: str, reason: str, enhanced_code: str | None
) -> None:
    sent = await rig.emailed(await rig.rendered())
    message_id, address = sent.data.provider_message_id, sent.data.recipient

    response = await rig.report(ses(sample, message_id, address), SNS_TYPE)

    assert response.status_code == 200, response.text
    [failed] = await rig.failed(sent)
    data = failed.data
    assert (data.channel, data.reason, data.next_channel, data.enhanced_code) == (
        "email",
        reason,
        "sms",
        enhanced_code,
    )
    assert data.provider_message_id == message_id and data.detail.startswith("ses ")
    suppression = await rig.suppressions.find(TENANT, address)
    assert suppression is not None and (suppression.reason, suppression.channel) == (reason, "email")

    await rig.handle(rig.sms_sender(), failed)

    [succeeded] = await rig.published("delivery.succeeded", failed)
    assert isinstance(succeeded.data, DeliverySucceededV2) and succeeded.data.channel == "sms"
    assert [a.reason for a in succeeded.data.chain] == [reason]


async def test_a_soft_bounce_retries_email_once_then_falls_back_to_sms(rig: Rig) -> None:
    sent = await rig.emailed(await rig.rendered())
    address = sent.data.recipient

    first = await rig.report(ses("ses_bounce_transient.json", sent.data.provider_message_id, address), SNS_TYPE)

    assert first.status_code == 200, first.text
    [soft] = await rig.failed(sent)
    assert (soft.data.reason, soft.data.enhanced_code, soft.data.next_channel) == ("soft_bounce", "4.2.2", "email")
    assert await rig.suppressions.find(TENANT, address) is None  # a full mailbox is not a dead one

    retried = await rig.emailed(soft)  # the email sender takes its own retry
    assert retried.data.provider_message_id != sent.data.provider_message_id
    assert [(a.channel, a.reason) for a in retried.data.chain] == [("email", "soft_bounce")]
    second = await rig.report(ses("ses_bounce_transient.json", retried.data.provider_message_id, address), SNS_TYPE)

    assert second.status_code == 200, second.text
    [again] = await rig.failed(retried)
    assert (again.data.reason, again.data.next_channel) == ("soft_bounce", "sms")
    assert [a.reason for a in again.data.chain] == ["soft_bounce"]


async def test_two_reports_for_one_message_hand_it_on_once(rig: Rig) -> None:
    """A soft bounce, then a hard one for the same message: the first report is the hand-over
    (one event id, one content); the hard one still suppresses the address."""
    sent = await rig.emailed(await rig.rendered())
    message_id, address = sent.data.provider_message_id, sent.data.recipient

    soft = await rig.report(ses("ses_bounce_transient.json", message_id, address), SNS_TYPE)
    hard = await rig.report(dsn(message_id, address), DSN_TYPE)

    assert soft.status_code == 200 and hard.status_code == 200, (soft.text, hard.text)
    both = await rig.failed(sent, count=2)
    assert len({e.event_id for e in both}) == 1 and both[0].data == both[1].data
    assert (both[0].data.reason, both[0].data.next_channel) == ("soft_bounce", "email")
    suppression = await rig.suppressions.find(TENANT, address)
    assert suppression is not None and suppression.reason == "hard_bounce"


# -- what the bounce webhook refuses ---------------------------------------------------------------


async def test_unsigned_or_forged_reports_are_refused_and_recorded(rig: Rig) -> None:
    sent = await rig.emailed(await rig.rendered())
    report = dsn(sent.data.provider_message_id, sent.data.recipient)

    unsigned = await rig.report(report, DSN_TYPE, secret=None)
    forged = await rig.report(report, DSN_TYPE, secret="someone-elses-webhook-secret")
    replayed = await rig.report(report, DSN_TYPE, now=time.time() - 3600)

    assert [r.status_code for r in (unsigned, forged, replayed)] == [401, 401, 401]
    reasons = [doc["reason"] for doc in await rig.refusals("bounces")]
    assert reasons == [
        f"authentication failed: missing {SIGNATURE_HEADER}",
        "authentication failed: hmac: signature does not match",
        "authentication failed: hmac: signature timestamp outside tolerance",
    ]
    assert all(doc["status"] == 401 and doc["body"] == "" for doc in await rig.refusals("bounces"))
    assert await rig.suppressions.find(TENANT, sent.data.recipient) is None
    assert await rig.bus.events("delivery.failed") == []  # the requests were answered: nothing was published


@pytest.mark.parametrize(
    ("content_type", "body", "why"),
    [
        ("application/json", b'{"message_id": "<a@b>", "type": ', "report is not JSON: JSONDecodeError"),
        ("application/json", b'{"message_id": "<a@b>"}', "field 'type' missing"),
        ("application/json", b'{"message_id": "<a@b>", "type": "hard", "sttus": "5.1.1"}', "field 'sttus'"),
        (SNS_TYPE, b'{"Type": "Notification", "Message": "{\\"notificationType\\": \\"Bounce\\"}"}', "'mail' missing"),
        (DSN_TYPE, b"Subject: hello\r\n\r\nnot a report", "no multipart/report"),
        ("application/xml", b"<bounce/>", "'application/xml' is not multipart/report"),
    ],
)
async def test_an_unreadable_report_is_refused_naming_why(rig: Rig, content_type: str, body: bytes, why: str) -> None:
    response = await rig.report(body, content_type)

    assert response.status_code == 400, response.text
    assert why in response.json()["detail"]
    [logged] = await rig.refusals("bounces")
    assert logged["status"] == 400 and why in logged["reason"] and logged["body"] == body.decode()


async def test_a_report_for_an_unknown_message_is_404_and_recorded(rig: Rig) -> None:
    unknown = f"<{uuid.uuid4()}.email@harinas-sur.test>"
    body = json.dumps({"message_id": unknown, "type": "hard", "status": "5.1.1"}).encode()

    response = await rig.report(body, "application/json")

    assert response.status_code == 404, response.text
    assert response.json()["items"] == [
        {"message_id": unknown, "result": "unmatched", "detail": "no delivered message has this Message-ID"}
    ]
    [logged] = await rig.refusals("bounces")
    assert logged["status"] == 404 and unknown in logged["reason"] and logged["body"] == body.decode()


async def test_a_delay_notice_for_a_delivered_message_changes_nothing(rig: Rig) -> None:
    sent = await rig.emailed(await rig.rendered())

    response = await rig.report(delayed_dsn(sent.data.provider_message_id), DSN_TYPE)

    assert response.status_code == 200, response.text
    [item] = response.json()["items"]
    assert (item["message_id"], item["result"]) == (sent.data.provider_message_id, "ignored")
    # The handler publishes before it answers, so after the answer the topics are final.
    assert await rig.bus.events("delivery.failed") == []
    assert await rig.suppressions.find(TENANT, sent.data.recipient) is None
    assert await rig.refusals("bounces") == []


# -- SMS status callbacks --------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusWebhook:
    url: str


@pytest.fixture
async def status_webhook(rig: Rig) -> AsyncIterator[StatusWebhook]:
    """The sms-sender's status webhook served over TCP, where the capture server can call it."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    url = f"http://{HOST}:{sock.getsockname()[1]}/v1/webhooks/sms-status"
    app = FastAPI()
    app.include_router(
        status_router(
            rig.status_handler(),
            public_url=url,
            auth_token=rig.cfg.sms_auth_token,
            journal=WebhookLog(rig.webhook_log),
        )
    )
    server = Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started)
        yield StatusWebhook(url)
    finally:
        server.should_exit = True
        await task
        sock.close()


def undeliverable_number() -> str:
    """A fresh number the capture server accepts, then reports ``undelivered`` (30003)."""
    return "+1555000" + str(uuid.uuid4().int % 10**4).zfill(4)


async def test_an_undelivered_sms_status_exhausts_the_invoice(rig: Rig, status_webhook: StatusWebhook) -> None:
    phone = undeliverable_number()
    failed = await rig.hard_bounced(phone=phone)

    await rig.handle(rig.sms_sender(status_webhook.url), failed)

    [succeeded] = await rig.published("delivery.succeeded", failed)
    assert isinstance(succeeded.data, DeliverySucceededV2) and succeeded.data.recipient == phone
    sid = succeeded.data.provider_message_id
    # The capture server now calls the webhook, signed, with "undelivered" and error 30003.
    [lost] = await rig.failed(succeeded)
    data = lost.data
    assert (data.channel, data.reason, data.code, data.next_channel) == ("sms", "provider_error", 30003, None)
    assert (data.provider_message_id, data.recipient, lost.producer) == (sid, phone, "sms-sender")
    assert [(a.channel, a.reason) for a in data.chain] == [("email", "hard_bounce")]
    [exhausted] = await rig.published("delivery.exhausted", lost)
    assert isinstance(exhausted.data, DeliveryExhaustedV1)
    assert [(a.channel, a.reason) for a in exhausted.data.chain] == [
        ("email", "hard_bounce"),
        ("sms", "provider_error"),
    ]
    assert await rig.suppressions.find(TENANT, phone) is None  # 30003 says the handset was unreachable, not gone
    assert await rig.refusals("sms-status") == []


async def test_a_status_callback_with_a_bad_signature_is_refused(rig: Rig, status_webhook: StatusWebhook) -> None:
    form = {"MessageSid": "SM" + uuid.uuid4().hex, "MessageStatus": "undelivered", "ErrorCode": "30003"}
    forged = twilio_signature("not-the-auth-token", status_webhook.url, form)
    other_url = twilio_signature(rig.cfg.sms_auth_token, status_webhook.url + "?x=1", form)

    answers = [
        await rig.http.post(status_webhook.url, data=form, headers=headers)
        for headers in ({}, {"X-Twilio-Signature": forged}, {"X-Twilio-Signature": other_url})
    ]

    assert [a.status_code for a in answers] == [401, 401, 401]
    assert [doc["reason"] for doc in await rig.refusals("sms-status")] == [
        "authentication failed: missing X-Twilio-Signature",
        "authentication failed: Twilio signature does not match",
        "authentication failed: Twilio signature does not match",
    ]
    assert await rig.bus.events("delivery.failed") == []


# -- the suppression admin API ---------------------------------------------------------------------


async def test_an_operator_lists_and_lifts_a_suppression(rig: Rig) -> None:
    failed = await rig.hard_bounced()
    address = failed.data.recipient
    assert address is not None
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    query = {"tenant_id": TENANT}

    anonymous = await rig.api.get("/v1/suppressions", params=query)
    wrong = await rig.api.get("/v1/suppressions", params=query, headers={"Authorization": "Bearer guessed-token"})
    listed = await rig.api.get("/v1/suppressions", params=query, headers=bearer)

    assert (anonymous.status_code, wrong.status_code) == (401, 401)
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert listed.status_code == 200, listed.text
    assert listed.json()["count"] == 1
    [entry] = listed.json()["items"]
    assert (entry["address"], entry["channel"], entry["reason"], entry["active"]) == (
        address,
        "email",
        "hard_bounce",
        True,
    )
    assert entry["source_event_id"] == str(failed.causation_id)

    lift = {"tenant_id": TENANT, "address": address.upper(), "by": "ops@harinas-sur.test", "note": "new mailbox"}
    assert (await rig.api.post("/v1/suppressions/lift", json=lift)).status_code == 401
    lifted = await rig.api.post("/v1/suppressions/lift", json=lift, headers=bearer)

    assert lifted.status_code == 200, lifted.text
    assert await rig.suppressions.find(TENANT, address) is None
    active = await rig.api.get("/v1/suppressions", params=query, headers=bearer)
    assert active.json()["items"] == []
    history = await rig.api.get("/v1/suppressions", params=query | {"include_lifted": "true"}, headers=bearer)
    [record] = history.json()["items"]
    assert (record["address"], record["active"], record["lifted_by"]) == (address, False, "ops@harinas-sur.test")
    assert record["lifted_at"] is not None

    again = await rig.api.post("/v1/suppressions/lift", json=lift, headers=bearer)
    assert again.status_code == 404, again.text
    assert address.upper() in again.json()["detail"]
