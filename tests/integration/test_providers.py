"""The SMS, voice and push clients against the devstack's capture server, over TCP.

The capture server runs as the stack starts it (its default rules); status callbacks come back to
a small receiver in this process, and each test checks their ``X-Twilio-Signature``.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import SecretStr

from factura.common.errors import DependencyDown
from factura.common.http import Server
from factura.devstack.config import StackConfig
from factura.devstack.sms_capture import twilio_signature
from factura.devstack.stack import Stack
from factura.sms_sender import provider as provider_module
from factura.sms_sender.provider import ProviderRefusal, SmsProvider
from factura.sms_sender.push import PushProvider
from factura.sms_sender.settings import ProviderSettings, PushSettings, VoiceSettings
from factura.sms_sender.voice import VoiceProvider
from tests.waiting import until

pytestmark = pytest.mark.integration


@dataclass
class Callbacks:
    """Status callbacks received, as (path, form, signature header)."""

    base_url: str
    received: list[tuple[str, dict[str, str], str]] = field(default_factory=list)

    def url(self) -> str:
        return f"{self.base_url}/cb/{uuid.uuid4().hex}"

    async def one(self, url: str) -> dict[str, str]:
        path = url.removeprefix(self.base_url)
        await until(lambda: any(p == path for p, _, _ in self.received), timeout_s=10)
        [(form, signature)] = [(f, s) for p, f, s in self.received if p == path]
        return form | {"X-Twilio-Signature": signature}


@pytest.fixture(scope="module")
async def callbacks() -> AsyncIterator[Callbacks]:
    app = FastAPI()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    receiver = Callbacks(f"http://127.0.0.1:{sock.getsockname()[1]}")

    @app.post("/cb/{name}")
    async def receive(name: str, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        receiver.received.append((f"/cb/{name}", form, request.headers.get("x-twilio-signature", "")))
        return Response(status_code=204)

    server = Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await until(lambda: server.started)
    yield receiver
    server.should_exit = True
    await task
    sock.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def twilio(cfg: StackConfig) -> dict[str, Any]:
    return {"base_url": cfg.sms_url, "account_sid": cfg.sms_account_sid, "auth_token": cfg.sms_auth_token}


def sms(cfg: StackConfig, http: httpx.AsyncClient) -> SmsProvider:
    return SmsProvider(ProviderSettings(**twilio(cfg), timeout_s=2), http)


def voice(cfg: StackConfig, http: httpx.AsyncClient) -> VoiceProvider:
    return VoiceProvider(VoiceSettings(**twilio(cfg), timeout_s=2), http)


def push(cfg: StackConfig, http: httpx.AsyncClient, token: str | None = None) -> PushProvider:
    settings = PushSettings(
        base_url=cfg.sms_url, project_id="factura-dev", access_token=SecretStr(token or cfg.sms_auth_token), timeout_s=2
    )
    return PushProvider(settings, http)


def number(prefix: str) -> str:
    """A fresh number under ``prefix``, so each test finds its own records."""
    return prefix + str(uuid.uuid4().int % 10**5).zfill(5)


async def captured(cfg: StackConfig, http: httpx.AsyncClient, kind: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = (await http.get(f"{cfg.sms_url}/_capture/{kind}")).json()
    return entries


def signed(form: dict[str, str], url: str, cfg: StackConfig) -> bool:
    params = {k: v for k, v in form.items() if k != "X-Twilio-Signature"}
    return form["X-Twilio-Signature"] == twilio_signature(cfg.sms_auth_token, url, params)


# -- SMS -----------------------------------------------------------------------------------------


async def test_sms_refusals_say_why(cfg: StackConfig, http: httpx.AsyncClient) -> None:
    provider = sms(cfg, http)
    for prefix, code, reason in [
        ("+349100", 21614, "not_mobile"),  # a Madrid landline
        ("+1555610", 21610, "complaint"),  # replied STOP
        ("+1312555", 21211, "rejected_by_server"),
    ]:
        with pytest.raises(ProviderRefusal) as refused:
            await provider.send(number(prefix), "hola")
        assert (refused.value.status, refused.value.code, refused.value.reason) == (400, code, reason), prefix


async def test_sms_throttled_waits_for_the_retry_after(cfg: StackConfig, http: httpx.AsyncClient) -> None:
    to = number("+1555429")
    with pytest.raises(DependencyDown) as down:
        await sms(cfg, http).send(to, "hola")
    assert (down.value.dependency, down.value.retry_after_s) == ("sms", 2.0)
    assert to not in {m["to"] for m in await captured(cfg, http, "messages")}  # a 429 creates nothing


async def test_sms_status_callbacks_say_delivered_or_undelivered(
    cfg: StackConfig, http: httpx.AsyncClient, callbacks: Callbacks
) -> None:
    provider = sms(cfg, http)
    ok_url, lost_url = callbacks.url(), callbacks.url()
    ok_to, lost_to = number("+3461"), number("+1555000")
    ok_sid = await provider.send(ok_to, "hola", status_callback=ok_url)
    lost_sid = await provider.send(lost_to, "hola", status_callback=lost_url)

    ok, lost = await callbacks.one(ok_url), await callbacks.one(lost_url)
    assert (ok["MessageSid"], ok["MessageStatus"], ok["To"]) == (ok_sid, "delivered", ok_to)
    assert "ErrorCode" not in ok
    assert (lost["MessageSid"], lost["MessageStatus"], lost["ErrorCode"], lost["To"]) == (
        lost_sid,
        "undelivered",
        "30003",
        lost_to,
    )
    assert signed(ok, ok_url, cfg) and signed(lost, lost_url, cfg)


# -- SMS: asking the provider what an earlier attempt sent ---------------------------------------


async def test_the_sms_list_finds_a_message_by_number_text_and_time(cfg: StackConfig, http: httpx.AsyncClient) -> None:
    provider, to = sms(cfg, http), number("+3461")
    before = datetime.now(UTC) - timedelta(seconds=1)
    sid = await provider.send(to, "Factura F-1 pagada")
    await provider.send(to, "Factura F-2 pagada")
    with pytest.raises(ProviderRefusal):
        await provider.send(number("+1312555"), "Factura F-1 pagada")

    assert await provider.find(to, "Factura F-1 pagada", before) == sid
    assert await provider.find(to, "Factura F-3 pagada", before) is None  # another text
    assert await provider.find(number("+3461"), "Factura F-1 pagada", before) is None  # another number
    assert await provider.find(to, "Factura F-1 pagada", datetime.now(UTC) + timedelta(seconds=2)) is None
    listed = await http.get(
        f"{cfg.sms_url}/2010-04-01/Accounts/{cfg.sms_account_sid}/Messages.json",
        params={"To": to},
        auth=(cfg.sms_account_sid, cfg.sms_auth_token),
    )
    assert [m["body"] for m in listed.json()["messages"]] == ["Factura F-2 pagada", "Factura F-1 pagada"]


async def test_the_sms_list_is_read_page_by_page(
    cfg: StackConfig, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provider_module, "_PAGE_SIZE", 2)
    provider, to = sms(cfg, http), number("+3461")
    before = datetime.now(UTC) - timedelta(seconds=1)
    first = await provider.send(to, "primero")
    for n in range(4):
        await provider.send(to, f"siguiente {n}")

    assert await provider.find(to, "primero", before) == first  # on the third page, newest first


async def test_the_sms_list_survives_a_restart_of_the_provider(
    cfg: StackConfig, infra: Stack, http: httpx.AsyncClient
) -> None:
    provider, to = sms(cfg, http), number("+3461")
    before = datetime.now(UTC) - timedelta(seconds=1)
    sid = await provider.send(to, "antes del reinicio")
    await asyncio.to_thread(infra.stop_server, "sms")
    try:
        with pytest.raises(DependencyDown) as down:  # while it is away: not "no", but "not now"
            await provider.find(to, "antes del reinicio", before)
        assert down.value.dependency == "sms"
    finally:
        await asyncio.to_thread(infra.start_server, "sms")

    assert await provider.find(to, "antes del reinicio", before) == sid


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, b"<html>maintenance</html>"), (200, b'{"message": "no list here"}'), (503, b"{}"), (404, b"{}")],
)
async def test_an_sms_list_that_cannot_be_read_is_not_taken_for_no(
    http: httpx.AsyncClient, status: int, body: bytes
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = ProviderSettings(base_url=f"http://127.0.0.1:{port}", account_sid="AC1", auth_token="t", timeout_s=2)
    async with server:
        with pytest.raises(DependencyDown) as down:
            await SmsProvider(settings, http).find("+34611111111", "hola", datetime.now(UTC))
    assert down.value.dependency == "sms"


# -- voice ---------------------------------------------------------------------------------------


async def test_voice_calls_a_landline_and_says_the_text_as_written(
    cfg: StackConfig, http: httpx.AsyncClient, callbacks: Callbacks
) -> None:
    provider = voice(cfg, http)
    await provider.probe()
    to, url = number("+349100"), callbacks.url()  # not mobile: no SMS, but it rings
    text = "Hola, le llamamos de Smith & Sons <Ltd>. Su factura F-7 vence hoy."
    sid = await provider.send(to, text, language="es-ES", status_callback=url)
    assert sid.startswith("CA")

    [call] = [c for c in await captured(cfg, http, "calls") if c["sid"] == sid]
    assert (call["to"], call["say"], call["language"], call["status"]) == (to, text, "es-ES", "queued")
    done = await callbacks.one(url)
    assert (done["CallSid"], done["CallStatus"]) == (sid, "completed")
    assert signed(done, url, cfg)


async def test_voice_unanswered_refused_and_throttled(
    cfg: StackConfig, http: httpx.AsyncClient, callbacks: Callbacks
) -> None:
    provider = voice(cfg, http)
    url = callbacks.url()
    sid = await provider.send(number("+1555000"), "hello", language="en-US", status_callback=url)
    assert (await callbacks.one(url))["CallStatus"] == "no-answer"
    assert sid

    with pytest.raises(ProviderRefusal) as refused:
        await provider.send(number("+1312555"), "hello", language="en-US")
    assert (refused.value.code, refused.value.reason) == (21211, "rejected_by_server")

    with pytest.raises(DependencyDown) as down:
        await provider.send(number("+1555429"), "hello", language="en-US")
    assert (down.value.dependency, down.value.retry_after_s) == ("voice", 2.0)


# -- push ----------------------------------------------------------------------------------------


async def test_push_is_recorded_with_its_notification_and_link(cfg: StackConfig, http: httpx.AsyncClient) -> None:
    provider = push(cfg, http)
    await provider.probe()
    token = "device-" + uuid.uuid4().hex
    name = await provider.send(token, title="Factura F-7", body="Vence hoy", link="https://l.test/d/abc")
    assert name.startswith("projects/factura-dev/messages/")

    [entry] = [p for p in await captured(cfg, http, "pushes") if p["token"] == token]
    assert entry["name"] == name
    assert entry["notification"] == {"title": "Factura F-7", "body": "Vence hoy"}
    assert entry["data"] == {"link": "https://l.test/d/abc"}


async def test_push_dead_token_throttling_and_bad_credentials(cfg: StackConfig, http: httpx.AsyncClient) -> None:
    provider = push(cfg, http)
    with pytest.raises(ProviderRefusal) as refused:
        await provider.send("bad-" + uuid.uuid4().hex, title="a", body="b", link="c")
    assert (refused.value.status, refused.value.reason) == (404, "rejected_by_server")
    assert "UNREGISTERED" in refused.value.text

    with pytest.raises(DependencyDown) as down:
        await provider.send("busy-" + uuid.uuid4().hex, title="a", body="b", link="c")
    assert (down.value.dependency, down.value.retry_after_s) == ("push", 2.0)

    wrong = push(cfg, http, token="expired")
    for attempt in (wrong.probe(), wrong.send("device-1", title="a", body="b", link="c")):
        with pytest.raises(DependencyDown, match="HTTP 401"):
            await attempt
