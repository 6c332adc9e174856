"""A dependency down (SMTP, MongoDB, the SMS provider) or hanging (S3) mid-flow: work pauses,
readiness says so, nothing is dead-lettered, and everything is delivered (once) and audited after
the dependency comes back.

Each outage lasts ``FACTURA_TEST_OUTAGE_S``: 15 s in ``make test``, more than twice the devstack's
Kafka session timeout (6 s) and seven times its retry backoff cap (2 s), so every retry path
reaches its cap and a consumer that stopped polling would lose its partitions; MongoDB's server
selection (5 s) times out three times. S3 hangs for at least 25 s, past the S3 client's read
timeout (20 s), so that timeout fires too. ``make test-outages`` runs them all for a full minute.

The real local servers are stopped and started again on the same port, or frozen with SIGSTOP
(devstack's ``stop_server``/``start_server``, ``pause_server``/``resume_server``); the services
are not told.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from factura.common.topics import REGISTRY
from factura.devstack.config import StackConfig
from factura.devstack.flow import publish, timeline, wait_for_outcomes
from factura.devstack.samples import Sample
from factura.devstack.stack import Stack
from tests.e2e.test_flow import mails_to, sample, sms_to

pytestmark = pytest.mark.e2e
OUTAGE_S = float(os.environ.get("FACTURA_TEST_OUTAGE_S", "15"))
#: A hang must outlast the S3 client's read timeout (20 s) for its timeout path to run.
S3_HANG_S = max(OUTAGE_S, 25.0)


async def dead_lettered(cfg: StackConfig) -> int:
    """Messages on every internal DLQ topic (ERP ones hold the rejections other tests make)."""
    tps = [
        TopicPartition(t.dlq(cfg.topic_prefix), p)
        for t in REGISTRY.values()
        if t.enveloped
        for p in range(t.partitions)
    ]
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def readiness(cfg: StackConfig, service: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{cfg.service_url(service)}/readyz")
    return response.status_code, response.json()


async def wait_readiness(cfg: StackConfig, service: str, *, ready: bool, dependency: str | None = None) -> None:
    deadline = time.monotonic() + 60
    last: tuple[int, dict[str, Any]] | None = None
    while time.monotonic() < deadline:
        last = await readiness(cfg, service)
        status, body = last
        if ready and status == 200:
            return
        if not ready and status == 503 and (dependency is None or body["checks"].get(dependency) != "ok"):
            assert "Error" not in str(body), "readiness leaks exception text"
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{service} readiness never became {'ready' if ready else 'not ready'}: {last}")


async def audited(client: httpx.AsyncClient, cfg: StackConfig, s: Sample, *, expected_events: int) -> list[str]:
    """The invoice's audited event types once ``expected_events`` are recorded (or 60 s passed).

    Audit catches up topic by topic after an outage (each partition resumes on its own backoff),
    so the outcome can be recorded before the event that led to it.
    """
    deadline = time.monotonic() + 60
    while True:
        types = [e["type"] for e in await timeline(client, cfg, s)]
        if len(types) >= expected_events or time.monotonic() > deadline:
            return types
        await asyncio.sleep(0.2)


async def delivered_once_and_audited(cfg: StackConfig, batch: Iterable[Sample]) -> None:
    batch = list(batch)
    seen = await wait_for_outcomes(cfg, batch, timeout_s=180)
    async with httpx.AsyncClient() as client:
        for s in batch:
            assert seen[s.invoice_number].outcome == s.expected, (s.invoice_number, seen[s.invoice_number])
            types = await audited(client, cfg, s, expected_events=3 if s.expected == "email" else 4)
            if s.expected == "email":
                assert len(mails_to(cfg, s.payload["customer"]["email"])) == 1, s.invoice_number
                # in the order audit stored them, which after an outage is per topic, not per invoice
                expected = ["delivery.succeeded", "invoice.created", "invoice.rendered"]
                assert sorted(types) == expected, (s.invoice_number, types)
            else:  # email bounced for good, then one SMS
                assert len(await sms_to(cfg, s.payload["customer"]["phone"].replace(" ", ""))) == 1, s.invoice_number
                assert types.count("delivery.succeeded") == 1 and types.count("delivery.failed") == 1, types


async def outage(services: Stack, server: str, *, pause: bool = False) -> None:
    """Take ``server`` away (stopped, or frozen so it accepts connections and never answers).

    In a thread: the launcher is synchronous and probes the broker with an event loop of its own.
    """
    stop = services.pause_server if pause else services.stop_server
    await asyncio.to_thread(stop, server)


async def recovery(services: Stack, server: str, *, pause: bool = False) -> None:
    start = services.resume_server if pause else services.start_server
    await asyncio.to_thread(start, server)


async def test_smtp_refusing_pauses_delivery_then_sends_everything(services: Stack) -> None:
    cfg = services.cfg
    dead_before = await dead_lettered(cfg)
    batch = [
        sample("email", email=f"smtp{i}.{uuid.uuid4().hex[:6]}@cliente.test", phone="+34 699 000 111") for i in range(6)
    ]
    await outage(services, "smtp")
    try:
        started = time.monotonic()
        await publish(cfg, batch)
        await wait_readiness(cfg, "email-sender", ready=False, dependency="smtp")
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
        assert all(mails_to(cfg, s.payload["customer"]["email"]) == [] for s in batch)
    finally:
        await recovery(services, "smtp")
    await delivered_once_and_audited(cfg, batch)  # by email: no SMS fallback for an outage
    await wait_readiness(cfg, "email-sender", ready=True)
    assert await dead_lettered(cfg) == dead_before


async def test_mongodb_down_pauses_its_users_then_everything_is_delivered_and_audited(
    services: Stack,
) -> None:
    cfg = services.cfg
    dead_before = await dead_lettered(cfg)
    batch = [sample("email", email=f"mongo{i}.{uuid.uuid4().hex[:6]}@cliente.test") for i in range(6)]
    await outage(services, "mongo")
    try:
        started = time.monotonic()
        await publish(cfg, batch)
        for service in ("audit", "email-sender", "scheduler"):
            await wait_readiness(cfg, service, ready=False, dependency="mongo")
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
    finally:
        await recovery(services, "mongo")
    await delivered_once_and_audited(cfg, batch)
    for service in ("audit", "email-sender", "scheduler", "sms-sender"):
        await wait_readiness(cfg, service, ready=True)
    assert await dead_lettered(cfg) == dead_before


async def test_sms_provider_down_pauses_the_fallback_then_texts_everyone_once(services: Stack) -> None:
    cfg = services.cfg
    dead_before = await dead_lettered(cfg)
    batch = [
        sample(
            "sms", email=f"sms{i}.{uuid.uuid4().hex[:6]}@bounce.test", phone=f"+34 699 {uuid.uuid4().int % 10**6:06d}"
        )
        for i in range(4)
    ]
    await outage(services, "sms")
    try:
        started = time.monotonic()
        await publish(cfg, batch)
        await wait_readiness(cfg, "sms-sender", ready=False, dependency="sms")
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
    finally:
        await recovery(services, "sms")
    await delivered_once_and_audited(cfg, batch)
    await wait_readiness(cfg, "sms-sender", ready=True)
    assert await dead_lettered(cfg) == dead_before


async def test_s3_hanging_pauses_rendering_and_mailing_then_delivers_everything(services: Stack) -> None:
    """S3 frozen (connections accepted, nothing answered: the slow case, not the refused one)."""
    cfg = services.cfg
    dead_before = await dead_lettered(cfg)
    batch = [sample("email", email=f"s3-{i}.{uuid.uuid4().hex[:6]}@cliente.test") for i in range(4)]
    await outage(services, "s3", pause=True)
    try:
        started = time.monotonic()
        await publish(cfg, batch)
        await wait_readiness(cfg, "renderer", ready=False, dependency="s3")
        await asyncio.sleep(max(0.0, S3_HANG_S - (time.monotonic() - started)))
        assert all(mails_to(cfg, s.payload["customer"]["email"]) == [] for s in batch)
    finally:
        await recovery(services, "s3", pause=True)
    await delivered_once_and_audited(cfg, batch)
    await wait_readiness(cfg, "renderer", ready=True)
    assert await dead_lettered(cfg) == dead_before


async def test_paused_dependencies_make_readiness_answer_within_its_deadline_and_work_resumes(
    services: Stack,
) -> None:
    """A dependency that accepts connections but never answers (SIGSTOP): readiness must not hang
    (it did for 19 s on MongoDB) nor say ok (it did for 45 s on the broker); liveness stays up."""
    cfg = services.cfg
    for server, service in (("mongo", "audit"), ("kafka", "renderer")):
        await outage(services, server, pause=True)
        try:
            started = time.monotonic()
            status, body = await readiness(cfg, service)
            assert time.monotonic() - started < 5, f"readiness hung while {server} was paused"
            assert status == 503 and body["checks"][server] == "timeout", body
            async with httpx.AsyncClient(timeout=10) as client:
                assert (await client.get(f"{cfg.service_url(service)}/livez")).status_code == 200
        finally:
            await recovery(services, server, pause=True)
        await wait_readiness(cfg, service, ready=True)
    s = sample("email", email=f"after-pause.{uuid.uuid4().hex[:6]}@cliente.test")
    await publish(cfg, [s])
    await delivered_once_and_audited(cfg, [s])
