"""Delivery benchmark: email sender throughput against bare SMTP, and bounce-to-SMS fallback latency.

Run with ``python -m benchmarks.bench_delivery`` (``make bench-delivery``). On the local stack's
servers (Tansu, nx-27017, moto, the SMTP and SMS capture servers, started for the run), the
senders run **in this process**, each as the service's own ``bootstrap`` wires it (MongoDB ledger,
suppressions and short links; S3 documents; the branded email of ``build_email``; the SMS text
and short links), each with its own publisher and its own :class:`ConsumerLoop`, like
``factura.common.runtime`` runs them (without the HTTP face), logging INFO JSON lines to a file.
``KafkaSettings`` are the defaults, except ``idempotence=False`` (Tansu cannot do InitProducerId).

* **email**: ``BENCH_EMAILS`` (default 1000) ``invoice.rendered`` events, each naming its own
  60 KB PDF in S3, are published first; then one email sender consumes them. The rate runs from
  the first acceptance to the last (``delivery.succeeded``'s ``occurred_at``, stamped the moment
  the relay answered 250 to DATA), so the group join is not counted.
* **bare**: the same emails, built again by ``build_email`` from the same inputs before the clock
  starts, sent by a bare aiosmtplib loop (``send_message``: flattening is counted, as in the
  sender), one connection per message as the mailer does, with as many concurrent loops as the
  email sender had partitions in flight (one partition is handled one message at a time).
* **fallback**: ``BENCH_FALLBACKS`` (default 200) invoices to ``bounce.test`` (550 5.1.1) with a
  phone number, published at ``BENCH_FALLBACK_RATE`` per second (default 20) while an email sender
  and an SMS sender run. Latency: from ``delivery.failed``'s ``occurred_at`` to the SMS sender's
  acceptance (``delivery.succeeded``'s ``occurred_at``, stamped on the provider's 201). The SMS
  capture server's own record (``date_created``) has one-second resolution, so it only checks
  that each SMS was captured within that second.

The last line is ``RESULT emails_per_s=... bare_emails_per_s=... ratio_vs_bare=... fallback_p50_ms=...
fallback_p99_ms=...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import random
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import httpx
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import SecretStr

from factura.common.delivery.links import LinkMaker
from factura.common.delivery.sender import Job, request_of
from factura.common.envelope import Envelope
from factura.common.events import DeliveryFailedV2, DeliverySucceededV2, DocumentRef, InvoiceRenderedV1, parse_event
from factura.common.kafka.admin import ensure_topics
from factura.common.kafka.consumer import ConsumerLoop
from factura.common.kafka.producer import Publisher
from factura.common.links import LinkSigner
from factura.common.logging import configure_logging
from factura.common.mongo import create_client, database
from factura.common.runtime import Bootstrap
from factura.common.schemas import EXAMPLES_DIR
from factura.common.settings import (
    DEVSTACK_ENV,
    KafkaSettings,
    LinkSettings,
    MongoSettings,
    S3Settings,
    ServiceSettings,
)
from factura.common.shortlinks import ShortLinks
from factura.common.storage import DocumentStore
from factura.common.tenants import TenantDirectory
from factura.common.topics import INVOICE_RENDERED, resolve
from factura.devstack.config import HOST, StackConfig
from factura.devstack.stack import Stack
from factura.email_sender.bootstrap import bootstrap as email_bootstrap
from factura.email_sender.handlers import message_id
from factura.email_sender.message import EmailLinks, build_email
from factura.email_sender.settings import Settings as EmailSettings
from factura.email_sender.settings import SmtpSettings
from factura.sms_sender.bootstrap import bootstrap as sms_bootstrap
from factura.sms_sender.settings import ProviderSettings, PushSettings, VoiceSettings
from factura.sms_sender.settings import Settings as SmsSettings

EMAILS = int(os.environ.get("BENCH_EMAILS", "1000"))
FALLBACKS = int(os.environ.get("BENCH_FALLBACKS", "200"))
FALLBACK_RATE = float(os.environ.get("BENCH_FALLBACK_RATE", "20"))
PDF_BYTES = 60 * 1024
TENANT = "harinas-sur"  # devstack tenant: email first, SMS when email fails
TARGETS = {"emails_per_s": 100.0, "ratio_vs_bare": 0.8, "fallback_p99_ms": 1000.0}
S = TypeVar("S", bound=ServiceSettings)


# -- the invoices --------------------------------------------------------------------------------


def pdf(i: int) -> bytes:
    """A 60 KB document that no two invoices share (incompressible, like a PDF with images)."""
    head = f"%PDF-1.7\n% bench invoice {i}\n".encode()
    tail = b"\n%%EOF\n"
    return head + random.Random(i).randbytes(PDF_BYTES - len(head) - len(tail)) + tail


async def store_documents(store: DocumentStore, run: str, count: int) -> list[DocumentRef]:
    gate = asyncio.Semaphore(16)

    async def put(i: int) -> DocumentRef:
        body = pdf(i)
        digest = hashlib.sha256(body).hexdigest()
        key = f"{TENANT}/bench-{run}/{i:05d}.pdf"
        async with gate:
            await store.put(key, body, content_type="application/pdf", sha256=digest, metadata={})
        return DocumentRef(
            bucket=store.bucket, key=key, sha256=digest, size_bytes=len(body), filename=f"B-{run}-{i:05d}.pdf"
        )

    return list(await asyncio.gather(*(put(i) for i in range(count))))


def rendered(document: DocumentRef, number: str, *, email: str, phone: str | None) -> Envelope[Any]:
    """A fresh ``invoice.rendered`` (the schema example, re-addressed) naming ``document``."""
    event = parse_event((EXAMPLES_DIR / "invoice.rendered.v1.json").read_bytes())
    assert isinstance(event.data, InvoiceRenderedV1)
    invoice = event.data.invoice
    customer = invoice.customer.model_copy(update={"email": email, "phone": phone})
    invoice = invoice.model_copy(update={"invoice_number": number, "customer": customer})
    data = event.data.model_copy(update={"document": document, "invoice": invoice, "pdf_sha256": document.sha256})
    return event.model_copy(update={"event_id": uuid.uuid4(), "invoice_id": number, "data": data})


async def publish_all(publisher: Publisher, events: Iterable[Envelope[Any]]) -> None:
    pending = [publisher.publish(e) for e in events]
    for i in range(0, len(pending), 200):
        await asyncio.gather(*pending[i : i + 200])


# -- the senders, as their services run them ------------------------------------------------------


def kafka(cfg: StackConfig, phase: str) -> KafkaSettings:
    """Defaults, on this run's broker and topics of the phase's own."""
    return KafkaSettings(
        bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=f"{cfg.topic_prefix}{phase}.", idempotence=False
    )


def s3_settings(cfg: StackConfig) -> S3Settings:
    return S3Settings(
        endpoint_url=cfg.s3_url,
        bucket=cfg.s3_bucket,
        access_key_id=cfg.s3_access_key_id,
        secret_access_key=SecretStr(cfg.s3_secret_access_key),
    )


def links(cfg: StackConfig) -> LinkSettings:
    return LinkSettings(
        secret=SecretStr(cfg.link_secret),
        pseudonym_secret=SecretStr(cfg.pseudonym_secret),
        base_url=cfg.service_url("renderer"),
    )


def email_settings(cfg: StackConfig, bus: KafkaSettings) -> EmailSettings:
    return EmailSettings(
        kafka=bus,
        smtp=SmtpSettings(host=HOST, port=cfg.smtp_port, security="none"),
        s3=s3_settings(cfg),
        mongo=MongoSettings(url=cfg.mongo_url, database=cfg.mongo_database),
        links=links(cfg),
        tenants_dir=cfg.tenants_dir,
    )


def sms_settings(cfg: StackConfig, bus: KafkaSettings) -> SmsSettings:
    account = {"base_url": cfg.sms_url, "account_sid": cfg.sms_account_sid, "auth_token": cfg.sms_auth_token}
    return SmsSettings(
        kafka=bus,
        provider=ProviderSettings.model_validate(account),
        voice=VoiceSettings.model_validate(account),
        push=PushSettings(
            base_url=cfg.sms_url, project_id=cfg.push_project, access_token=SecretStr(cfg.sms_auth_token)
        ),
        mongo=MongoSettings(url=cfg.mongo_url, database=cfg.mongo_database),
        links=links(cfg),
        tenants_dir=cfg.tenants_dir,
    )


@asynccontextmanager
async def service(name: str, settings: S, bootstrap: Bootstrap[S]) -> AsyncIterator[asyncio.Task[None]]:
    """One sender as ``factura.common.runtime.serve`` runs it: publisher, bootstrap, consumer loop
    (the task running it is yielded)."""
    async with AsyncExitStack() as stack:
        publisher = Publisher(settings.kafka, client_id=name)
        await publisher.start()
        stack.push_async_callback(publisher.stop)
        wiring = await bootstrap(settings, publisher, stack)
        loop = ConsumerLoop(
            settings=settings.kafka, group_id=f"factura-{name}", routes=wiring.routes, publisher=publisher, service=name
        )
        task = asyncio.create_task(loop.run(), name=name)
        try:
            yield task
        finally:
            loop.stop()
            await task


async def unless_stopped(wait: Coroutine[Any, Any, None], loops: Iterable[asyncio.Task[None]]) -> None:
    """``wait``, failing at once if a consumer loop ends first (a bug, or its dead-letter limit)."""
    waiting = asyncio.ensure_future(wait)
    done, _ = await asyncio.wait([waiting, *loops], return_when=asyncio.FIRST_COMPLETED)
    if waiting not in done:
        waiting.cancel()
        for task in done:
            task.result()
        raise RuntimeError("a consumer loop stopped before the run was over")
    waiting.result()


# -- watching the outcomes ------------------------------------------------------------------------


class Tap:
    """Every record of some topics, from their start, kept raw (parsed once the clocks stopped)."""

    def __init__(self, bus: KafkaSettings, logical: Iterable[str]) -> None:
        self._prefix = bus.topic_prefix
        self._logical = list(logical)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bus.bootstrap_servers, group_id=None)
        self.records: dict[str, list[ConsumerRecord[bytes, bytes]]] = {self._prefix + t: [] for t in self._logical}
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tap:
        await self._consumer.start()
        parts = [TopicPartition(self._prefix + t, p) for t in self._logical for p in range(resolve(t).partitions)]
        self._consumer.assign(parts)
        await self._consumer.seek_to_beginning(*parts)
        self._task = asyncio.create_task(self._read(), name="tap")
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                self.records[tp.topic].extend(records)
            if batch:
                self._arrived.set()

    def count(self, logical: str) -> int:
        return len(self.records[f"{self._prefix}{logical}"])

    async def until(self, logical: str, count: int, timeout_s: float, *, forbid: str | None = None) -> None:
        """Wait until ``count`` records reached ``logical``; fails at once if one reaches ``forbid``."""
        deadline = time.monotonic() + timeout_s
        while self.count(logical) < count:
            if forbid is not None and self.count(forbid):
                raise RuntimeError(f"unexpected {forbid}: {self.events(forbid)[0].data}")
            self._arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.count(logical)} of {count} records on {logical} after {timeout_s:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def events(self, logical: str) -> list[Envelope[Any]]:
        return [parse_event(r.value) for r in self.records[f"{self._prefix}{logical}"]]

    def produced_ms(self, logical: str) -> dict[str, int]:
        """event_id → the record's producer timestamp (ms): when it was handed to the broker client."""
        return {str(parse_event(r.value).event_id): r.timestamp for r in self.records[f"{self._prefix}{logical}"]}

    async def filled_partitions(self, logical: str) -> int:
        """How many of the topic's partitions hold records (how many the consumer works on at once)."""
        topic = f"{self._prefix}{logical}"
        parts = [TopicPartition(topic, p) for p in range(resolve(logical).partitions)]
        return sum(1 for end in (await self._consumer.end_offsets(parts)).values() if end > 0)


def per_s(times: list[datetime]) -> float:
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0]).total_seconds()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q``% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# -- the three measurements -----------------------------------------------------------------------


def mail_events(documents: list[DocumentRef], run: str) -> list[Envelope[Any]]:
    return [
        rendered(d, f"B-{run}-{i:05d}", email=f"b{i}.{run}@cliente.test", phone=None) for i, d in enumerate(documents)
    ]


async def email_throughput(cfg: StackConfig, events: list[Envelope[Any]]) -> tuple[float, int]:
    """Emails per second through one email sender, and the partitions it had in flight."""
    bus = kafka(cfg, "mail")
    await ensure_topics(bus)
    publisher = Publisher(bus, client_id="bench-erp")
    await publisher.start()
    try:
        await publish_all(publisher, events)
    finally:
        await publisher.stop()
    async with Tap(bus, ["delivery.succeeded", "delivery.failed"]) as tap:
        partitions = await tap.filled_partitions(INVOICE_RENDERED.name)
        started = time.monotonic()
        async with service("email-sender", email_settings(cfg, bus), email_bootstrap) as sender:
            await unless_stopped(tap.until("delivery.succeeded", len(events), 600, forbid="delivery.failed"), [sender])
        wall = time.monotonic() - started
        accepted = [e.occurred_at for e in tap.events("delivery.succeeded") if isinstance(e.data, DeliverySucceededV2)]
    rate = per_s(accepted)
    print(f"email sender: {len(accepted)} emails in {wall:.1f} s with the group join, {rate:.1f}/s first to last")
    return rate, partitions


async def bare_smtp(cfg: StackConfig, messages: list[EmailMessage], concurrency: int) -> float:
    """The same messages through aiosmtplib alone: ``concurrency`` loops, one connection per message."""
    hostname = await asyncio.to_thread(socket.getfqdn)  # as SmtpMailer does, once
    queue = iter(messages)
    accepted: list[float] = []

    async def worker() -> None:
        for message in queue:
            smtp = aiosmtplib.SMTP(hostname=HOST, port=cfg.smtp_port, local_hostname=hostname, timeout=30)
            await smtp.connect()
            await smtp.send_message(message)
            accepted.append(time.perf_counter())
            await smtp.quit()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    accepted.sort()
    return (len(accepted) - 1) / (accepted[-1] - accepted[0])


async def rebuilt(cfg: StackConfig, events: list[Envelope[Any]]) -> list[EmailMessage]:
    """The emails the sender built, built again from the same inputs, as ``EmailChannel.send`` builds
    them: the request's notice, the tenant, the PDF, the links of the same ledger key, the Message-ID."""
    settings = email_settings(cfg, kafka(cfg, "mail"))
    tenants = TenantDirectory(settings.tenants_dir)
    mongo = create_client(settings.mongo)
    secret = settings.links.secret.get_secret_value().encode()
    maker = LinkMaker(
        LinkSigner.from_settings(settings.links),
        ShortLinks(database(mongo, settings.mongo)["short_links"], secret),
        base_url=settings.links.base_url,
        ttl_s=settings.links.ttl_s,
    )
    default_sender = (settings.smtp.from_name, settings.smtp.from_address)
    messages = []
    try:
        for i, event in enumerate(events):
            tenant = tenants.get(event.tenant_id)
            request = request_of(event, tenant)
            assert request is not None and request.notice.document is not None
            recipient = request.notice.invoice.customer.email or ""
            job = Job(event, "email", request.notice, (), tenant, recipient, key=f"{event.event_id}:email")
            links = await maker.for_job(job, short=False)
            sender = tenant.sender.from_address if tenant.sender else default_sender[1]
            messages.append(
                build_email(
                    notice=request.notice,
                    tenant=tenant,
                    recipient=recipient,
                    attachment=(pdf(i), request.notice.document),
                    links=EmailLinks(
                        download=links.download, payment=links.payment, pixel=links.pixel, unsubscribe=links.unsubscribe
                    ),
                    message_id=message_id(job, sender),
                    default_sender=default_sender,
                )
            )
    finally:
        await mongo.close()
    return messages


def captured_kb(cfg: StackConfig) -> float:
    """Mean size of what the capture server stored (each file starts with two envelope lines)."""
    files = list((cfg.maildir / "new").iterdir())
    return sum(f.stat().st_size for f in files) / len(files) / 1024


async def fallback_latency(cfg: StackConfig, documents: list[DocumentRef], run: str) -> list[float]:
    """Per invoice: ms from ``delivery.failed`` (email bounced) to the SMS provider's acceptance."""
    bus = kafka(cfg, "fall")
    await ensure_topics(bus)

    def invoice(i: int) -> Envelope[Any]:
        return rendered(
            documents[i % len(documents)],
            f"S-{run}-{i:05d}",
            email=f"s{i}.{run}@{cfg.bounce_domain}",
            phone=f"+346{i:08d}",
        )

    warmup, *events = [invoice(i) for i in range(FALLBACKS + 1)]
    publisher = Publisher(bus, client_id="bench-erp")
    await publisher.start()
    try:
        async with (
            Tap(bus, ["delivery.succeeded", "delivery.failed"]) as tap,
            service("email-sender", email_settings(cfg, bus), email_bootstrap) as mailer,
            service("sms-sender", sms_settings(cfg, bus), sms_bootstrap) as texter,
        ):
            await publisher.publish(warmup)  # both groups have joined once its SMS is out
            await unless_stopped(tap.until("delivery.succeeded", 1, 120), [mailer, texter])
            started = time.monotonic()
            for i, event in enumerate(events):
                await publisher.publish(event)
                await asyncio.sleep(max(0.0, started + (i + 1) / FALLBACK_RATE - time.monotonic()))
            await unless_stopped(tap.until("delivery.succeeded", len(events) + 1, 120), [mailer, texter])
            failures = {str(e.event_id): e for e in tap.events("delivery.failed")}
            produced = tap.produced_ms("delivery.failed")
            texts = [e for e in tap.events("delivery.succeeded") if isinstance(e.data, DeliverySucceededV2)]
    finally:
        await publisher.stop()
    wanted = {str(e.event_id) for e in events}
    latencies: list[float] = []
    to_broker: list[float] = []
    accepted_at: dict[str, datetime] = {}
    for text in texts:
        failed = failures[str(text.causation_id)]
        assert isinstance(failed.data, DeliveryFailedV2) and failed.data.reason == "hard_bounce", failed.data
        if str(failed.causation_id) not in wanted:
            continue  # the warm-up
        latencies.append((text.occurred_at - failed.occurred_at).total_seconds() * 1000)
        to_broker.append(produced[str(failed.event_id)] - failed.occurred_at.timestamp() * 1000)
        assert isinstance(text.data, DeliverySucceededV2)
        accepted_at[text.data.recipient] = text.occurred_at
    async with httpx.AsyncClient() as client:
        log = (await client.get(f"{cfg.sms_url}/_capture/messages")).json()
    agree = sum(
        1
        for m in log
        if m["to"] in accepted_at
        and 0 <= (accepted_at[m["to"]] - parsedate_to_datetime(m["date_created"])).total_seconds() < 1.05
    )
    print(
        f"fallback: {len(latencies)} invoices at {FALLBACK_RATE:g}/s; delivery.failed built → handed to the"
        f" broker client p50 {percentile(to_broker, 50):.0f} ms;"
        f" capture server's 1-s timestamps agree for {agree}/{len(latencies)}"
    )
    return latencies


def row(what: str, value: float, unit: str, target: str) -> None:
    print(f"  {what:<44} {value:>9.1f} {unit:<8} {target}")


@contextlib.contextmanager
def logs_to(path: Path) -> Iterator[None]:
    """The services' INFO JSON log lines (their cost is part of the figures), into a file, not the report."""
    configure_logging("bench-delivery", "INFO")
    [handler] = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    with path.open("w") as file:
        handler.setStream(file)
        try:
            yield
        finally:
            handler.setStream(sys.stderr)
            logging.getLogger().setLevel(logging.WARNING)


async def main() -> None:
    os.environ[DEVSTACK_ENV] = "1"  # the senders run in-process on the devstack, with its secrets
    run = uuid.uuid4().hex[:6]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, logs_to(Path(tmp) / "senders.log"):
        cfg = StackConfig.free_ports(Path(tmp), topic_prefix=f"deliv{run}.", mongo_database=f"deliv{run}")
        stack = Stack(cfg)
        try:
            stack.start_infra()
            async with AsyncExitStack() as clients:
                store = await DocumentStore.connect(s3_settings(cfg), clients)
                started = time.monotonic()
                documents = await store_documents(store, run, EMAILS)
                print(f"{EMAILS} PDFs of {PDF_BYTES // 1024} KB stored in S3 in {time.monotonic() - started:.1f} s")
            events = mail_events(documents, run)
            rate, partitions = await email_throughput(cfg, events)
            stored_kb = captured_kb(cfg)
            messages = await rebuilt(cfg, events)
            bare = await bare_smtp(cfg, messages, partitions)
            size = sum(len(m.as_bytes(policy=SMTP)) for m in messages) / len(messages) / 1024
            print(
                f"bare aiosmtplib: {len(messages)} emails rebuilt by build_email ({size:.1f} KB; the capture"
                f" server stored {stored_kb:.1f} KB each), {partitions} loops, {bare:.1f}/s"
            )
            latencies = await fallback_latency(cfg, documents, run)
        finally:
            stack.stop()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print()
    print(
        f"machine: {os.cpu_count()} cores, load average {load:.1f} before the run; senders in this process,"
        " default KafkaSettings (idempotence off for Tansu), INFO logs to a file"
    )
    print(f"email: {EMAILS} invoice.rendered, 60 KB PDF each from S3, one email sender, {partitions} partitions")
    print(f"fallback: {len(latencies)} invoices to bounce.test (550 5.1.1) with a phone, {FALLBACK_RATE:g}/s")
    print(f"  {'':<44} {'measured':>9} {'':<8} target")
    row("email sender (ConsumerLoop+Sender+SMTP)", rate, "emails/s", f">= {TARGETS['emails_per_s']:g}")
    row(f"bare aiosmtplib, {partitions} loops", bare, "emails/s", "")
    print(f"  {'ratio sender / bare':<44} {rate / bare:>9.2f} {'':<8} >= {TARGETS['ratio_vs_bare']:g}")
    row("fallback delivery.failed → SMS accepted p50", p50, "ms", "")
    row("fallback delivery.failed → SMS accepted p99", p99, "ms", f"<= {TARGETS['fallback_p99_ms']:g}")
    print(
        f"RESULT emails_per_s={rate:.1f} bare_emails_per_s={bare:.1f} ratio_vs_bare={rate / bare:.2f}"
        f" fallback_p50_ms={p50:.0f} fallback_p99_ms={p99:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
