"""Helpdesk tickets against the devstack's capture helpdesk, a real MongoDB ledger and the broker.

The capture server (``POST /_helpdesk/tickets``) checks the signature with the devstack's auth
token and answers by invoice number: ``REJECT-`` 422, ``FLAKY-`` 503 once per idempotency key, else
201 ``{"id": "T-<n>"}``. It does not deduplicate, so what it recorded is what was sent. The outage
test runs a capture server of its own in process, to stop it and bring it back on the same port.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from pymongo.asynchronous.collection import AsyncCollection

from factura.common.envelope import Envelope
from factura.common.errors import DependencyDown
from factura.common.kafka.consumer import ConsumerLoop, Message
from factura.common.ledger import DeliveryLedger
from factura.common.mongo import Document, create_client
from factura.common.topics import TICKET_DUE
from factura.common.webhooks import SIGNATURE_HEADER, sign_hmac
from factura.devstack.config import StackConfig
from factura.devstack.sms_capture import ProviderConfig, create_app
from factura.scheduler.tickets import HelpdeskClient, HelpdeskDown, HelpdeskSettings, TicketHandlers
from tests.conftest import mongo_settings
from tests.kafka_helpers import Bus, isolated, read_topic
from tests.unit.test_tickets import TENANT, ticket_due
from tests.waiting import until

pytestmark = pytest.mark.integration


def message(event: Envelope[Any]) -> Message[Envelope[Any]]:
    return Message(TICKET_DUE, 0, 0, event.partition_key, {}, event.model_dump_json().encode(), event)


def number(prefix: str = "F-") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@dataclass
class Env:
    cfg: StackConfig
    bus: Bus
    deliveries: AsyncCollection[Document]
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"{self.cfg.sms_url}/_helpdesk/tickets"

    def handlers(self, url: str | None = None, *, owner: str = "scheduler-a", **settings: Any) -> TicketHandlers:
        """A scheduler process's ticket handler; the tenant's helpdesk is ``url`` (the capture's by default)."""
        target = url or self.url
        client = HelpdeskClient(HelpdeskSettings(secret=SecretStr(self.cfg.sms_auth_token), **settings), self.http)
        ledger = DeliveryLedger(self.deliveries, owner=owner)
        return TicketHandlers(client, ledger, self.bus.publisher.publish, lambda t: target if t == TENANT else None)

    async def sent(self, event: Envelope[Any], base_url: str | None = None) -> list[dict[str, Any]]:
        """What the helpdesk recorded for ``event``, oldest first."""
        response = await self.http.get(f"{base_url or self.cfg.sms_url}/_capture/tickets")
        response.raise_for_status()
        return [t for t in response.json() if t["idempotency_key"] == str(event.event_id)]

    async def outcomes(self, event: Envelope[Any]) -> list[Envelope[Any]]:
        """Every ticket.opened and ticket.failed caused by ``event``, exactly as on the broker now."""
        found = await self.bus.events("ticket.opened") + await self.bus.events("ticket.failed")
        return [e for e in found if e.causation_id == event.event_id]


@pytest.fixture
async def env(cfg: StackConfig) -> AsyncIterator[Env]:
    """Topics of this test's own and a ledger collection of its own."""
    settings = mongo_settings(cfg)
    mongo = create_client(settings, server_selection_ms=2000)
    deliveries = mongo[settings.database][f"ticket_deliveries_{uuid.uuid4().hex[:8]}"]
    async with isolated(cfg, client_id="test-tickets") as bus, httpx.AsyncClient() as http:
        try:
            yield Env(cfg, bus, deliveries, http)
        finally:
            await mongo.close()


async def test_a_redelivered_ticket_due_opens_one_ticket_and_republishes_the_outcome(env: Env) -> None:
    event = ticket_due(number())
    await env.handlers().on_ticket_due(message(event))
    await env.handlers().on_ticket_due(message(event))  # redelivered to the same process
    await env.handlers(owner="scheduler-b").on_ticket_due(message(event))  # ... and to another one

    [sent] = await env.sent(event)
    assert sent["status"] == 201
    assert sent["ticket"]["invoice_number"] == event.invoice_id
    assert sent["ticket"]["idempotency_key"] == str(event.event_id)
    outcomes = await env.outcomes(event)
    assert len(outcomes) == 3
    assert {o.event_id for o in outcomes} == {outcomes[0].event_id}  # the same event: audit keeps one
    opened = outcomes[0]
    assert opened.type == "ticket.opened"
    assert (opened.data.status, opened.data.ticket_ref, opened.data.attempts) == (201, sent["id"], 1)
    assert (opened.tenant_id, opened.invoice_id) == (TENANT, event.invoice_id)
    assert opened.correlation_id == event.correlation_id


async def test_a_refused_ticket_is_published_as_failed_once(env: Env) -> None:
    event = ticket_due(number("REJECT-"))
    await env.handlers().on_ticket_due(message(event))
    await env.handlers().on_ticket_due(message(event))

    [sent] = await env.sent(event)
    assert sent["status"] == 422
    outcomes = await env.outcomes(event)
    assert [o.type for o in outcomes] == ["ticket.failed", "ticket.failed"]
    assert outcomes[0].event_id == outcomes[1].event_id
    failed = outcomes[0].data
    assert (failed.status, failed.attempts) == (422, 1)
    assert '"error":"unprocessable"' in failed.detail
    assert event.invoice_id in failed.detail


async def test_a_503_is_retried_and_the_retry_opens_the_ticket(env: Env) -> None:
    event = ticket_due(number("FLAKY-"))
    handlers = env.handlers()
    with pytest.raises(DependencyDown) as caught:
        await handlers.on_ticket_due(message(event))
    assert caught.value.dependency == "helpdesk"
    assert await env.outcomes(event) == []  # exact: publishing waits for the broker's ack

    await handlers.on_ticket_due(message(event))
    assert [s["status"] for s in await env.sent(event)] == [503, 201]
    [opened] = await env.outcomes(event)
    assert (opened.type, opened.data.status, opened.data.attempts) == ("ticket.opened", 201, 2)


async def test_the_consumer_loop_retries_a_503_until_the_ticket_opens(env: Env) -> None:
    event = ticket_due(number("FLAKY-"))
    handlers = env.handlers()
    loop = ConsumerLoop(
        settings=env.bus.settings,
        group_id="scheduler-tickets",
        routes={"ticket.due": handlers.on_ticket_due},
        publisher=env.bus.publisher,
        service="scheduler",
    )
    task = asyncio.create_task(loop.run())
    try:
        await env.bus.publisher.publish(event)
        await read_topic(env.cfg.kafka_bootstrap, env.bus.topic("ticket.opened"), expect=1)
    finally:
        loop.stop()
        await asyncio.wait_for(task, 30)
    assert [s["status"] for s in await env.sent(event)] == [503, 201]
    [opened] = await env.outcomes(event)
    assert opened.data.attempts == 2


async def test_a_helpdesk_failing_past_max_attempts_fails_the_ticket(env: Env) -> None:
    event = ticket_due(number("FLAKY-"))
    await env.handlers(max_attempts=1).on_ticket_due(message(event))

    [failed] = await env.outcomes(event)
    assert failed.type == "ticket.failed"
    assert (failed.data.status, failed.data.attempts) == (503, 1)
    assert failed.data.detail.startswith("gave up after 1 attempts: helpdesk answered HTTP 503")


async def test_a_tenant_without_a_helpdesk_gets_no_ticket(env: Env) -> None:
    event = ticket_due(number(), tenant="otra-empresa")
    await env.handlers().on_ticket_due(message(event))
    assert await env.sent(event) == []
    assert await env.outcomes(event) == []  # exact: the handler returned, so anything it published is there


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def helpdesk_serving(data_dir: Path, secret: str, port: int) -> AsyncIterator[None]:
    """The capture helpdesk in this process on ``port``, until the block ends (then the port refuses)."""
    app = create_app(ProviderConfig(data_dir, account_sid="AC" + "0" * 32, auth_token=secret))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started or task.done(), timeout_s=10)
    assert not task.done(), "the capture helpdesk did not start"
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_a_stopped_helpdesk_is_a_dependency_down_and_the_ticket_opens_once_it_is_back(
    env: Env, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    handlers = env.handlers(f"{base}/_helpdesk/tickets", timeout_s=2)
    secret = env.cfg.sms_auth_token
    async with helpdesk_serving(tmp_path, secret, port):
        first = ticket_due(number())
        await handlers.on_ticket_due(message(first))
        assert [s["status"] for s in await env.sent(first, base)] == [201]

    event = ticket_due(number())
    with pytest.raises(HelpdeskDown) as caught:
        await handlers.on_ticket_due(message(event))
    assert caught.value.status is None
    assert "ConnectError" in caught.value.detail
    assert await env.outcomes(event) == []

    async with helpdesk_serving(tmp_path, secret, port):
        await handlers.on_ticket_due(message(event))  # the claim was released: no lease to wait out
        [sent] = await env.sent(event, base)
        [opened] = await env.outcomes(event)
    assert (opened.type, opened.data.ticket_ref, opened.data.attempts) == ("ticket.opened", sent["id"], 2)


async def test_the_capture_helpdesk_refuses_unsigned_or_missigned_tickets(env: Env) -> None:
    event = ticket_due(number())
    body = b'{"invoice_number": "F-1"}'
    key = {"Idempotency-Key": str(event.event_id)}
    unsigned = await env.http.post(env.url, content=body, headers=key)
    forged = sign_hmac(body, b"not-the-devstack-secret")
    missigned = await env.http.post(env.url, content=body, headers=key | {SIGNATURE_HEADER: forged})
    assert (unsigned.status_code, missigned.status_code) == (401, 401)
    assert missigned.json()["detail"] == "signature does not match"
    assert await env.sent(event) == []
