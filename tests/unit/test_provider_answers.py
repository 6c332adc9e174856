"""How the SMS, voice and push clients sort their providers' answers, on canned HTTP responses.

Over TCP against the capture server, see tests/integration/test_providers.py; here every answer
the capture server does not produce (HTTP dates, FCM's several dead-token shapes, 403s).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from xml.etree import ElementTree as ET

import httpx
import pytest
from pydantic import SecretStr

from factura.common.errors import DependencyDown, retry_after
from factura.sms_sender.provider import ProviderRefusal, SmsProvider
from factura.sms_sender.push import PushProvider
from factura.sms_sender.settings import ProviderSettings, PushSettings, VoiceSettings
from factura.sms_sender.voice import VoiceProvider, say_language, twiml_say

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def answer(status: int, body: Any = None, **headers: str) -> Handler:
    def handle(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handle


def sms(handler: Handler) -> SmsProvider:
    return SmsProvider(ProviderSettings(base_url="http://twilio.test", auth_token=SecretStr("t")), client(handler))


def voice(handler: Handler) -> VoiceProvider:
    return VoiceProvider(VoiceSettings(base_url="http://twilio.test", auth_token=SecretStr("t")), client(handler))


def push(handler: Handler, **settings: Any) -> PushProvider:
    defaults: dict[str, Any] = {"base_url": "http://fcm.test", "project_id": "factura-dev", "access_token": "tok"}
    return PushProvider(PushSettings(**defaults | settings), client(handler))


# -- Retry-After ---------------------------------------------------------------------------------


def with_retry_after(value: str) -> httpx.Response:
    return httpx.Response(429, headers={"Retry-After": value})


@pytest.mark.parametrize(("value", "seconds"), [("2", 2.0), ("0", 0.0), ("86400", 300.0), ("-5", 0.0)])
def test_retry_after_in_seconds_is_capped_at_five_minutes(value: str, seconds: float) -> None:
    assert retry_after(with_retry_after(value).headers.get("retry-after")) == seconds


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after(with_retry_after(soon).headers.get("retry-after")) or 0) <= 30
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert retry_after(with_retry_after(past).headers.get("retry-after")) == 0
    assert retry_after(with_retry_after("Wed, 21 Oct 2999 07:28:00 GMT").headers.get("retry-after")) == 300


@pytest.mark.parametrize("value", ["", "soon", "Wed, 99 Foo"])
def test_missing_or_unreadable_retry_after_is_no_hint(value: str) -> None:
    assert retry_after(with_retry_after(value).headers.get("retry-after")) is None


# -- SMS -----------------------------------------------------------------------------------------


async def test_sms_sends_the_status_callback_only_when_asked() -> None:
    forms: list[dict[str, str]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        forms.append(dict(parse_qsl(request.content.decode())))
        return httpx.Response(201, json={"sid": "SM1"})

    provider = sms(handle)
    assert await provider.send("+34612345678", "hola", status_callback="https://cb.test/sms") == "SM1"
    assert await provider.send("+34612345678", "hola") == "SM1"
    assert forms[0]["StatusCallback"] == "https://cb.test/sms"
    assert "StatusCallback" not in forms[1]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (21614, "not_mobile"),
        (21610, "complaint"),
        (21211, "rejected_by_server"),
        (21408, "rejected_by_server"),
        (21606, "provider_error"),  # our From number cannot send: refused, but not the recipient's fault
    ],
)
async def test_sms_refusals_carry_the_reason_their_code_means(code: int, reason: str) -> None:
    with pytest.raises(ProviderRefusal) as refused:
        await sms(answer(400, {"code": code, "message": "no", "status": 400})).send("+34910000000", "hola")
    assert (refused.value.status, refused.value.code, refused.value.reason) == (400, code, reason)


async def test_sms_refusal_without_a_twilio_body_is_a_provider_error() -> None:
    def handle(_: httpx.Request) -> httpx.Response:
        return httpx.Response(400, text="bad request")

    with pytest.raises(ProviderRefusal) as refused:
        await sms(handle).send("+34612345678", "hola")
    assert (refused.value.code, refused.value.text, refused.value.reason) == (None, "bad request", "provider_error")


async def test_sms_429_waits_as_long_as_the_provider_asks() -> None:
    with pytest.raises(DependencyDown) as down:
        await sms(answer(429, {"code": 20429}, **{"Retry-After": "7"})).send("+34612345678", "hola")
    assert (down.value.dependency, down.value.retry_after_s) == ("sms", 7.0)


@pytest.mark.parametrize("status", [401, 403, 404, 500, 503])
async def test_sms_credentials_and_outages_are_not_now(status: int) -> None:
    with pytest.raises(DependencyDown) as down:
        await sms(answer(status, {"code": 20003})).send("+34612345678", "hola")
    assert (down.value.dependency, down.value.retry_after_s) == ("sms", None)


# -- voice ---------------------------------------------------------------------------------------


def test_twiml_keeps_untrusted_text_as_text() -> None:
    text = 'Smith & Sons <Ltd> "quoted" </Say><Play>http://evil.test/a.mp3</Play>\x00\x1b end'
    twiml = twiml_say(text, "es-ES")
    root = ET.fromstring(twiml)
    [say] = list(root)
    assert (root.tag, say.tag, say.get("language")) == ("Response", "Say", "es-ES")
    assert say.text == text.replace("\x00", "").replace("\x1b", "")
    assert "<Play>" not in twiml


@pytest.mark.parametrize("language", ["es", 'es-ES" voice="man', "", "ES-es"])
def test_twiml_refuses_a_language_that_is_not_a_bcp47_region_tag(language: str) -> None:
    with pytest.raises(ValueError, match="BCP 47"):
        twiml_say("hola", language)


@pytest.mark.parametrize(
    ("locale", "country", "tag"),
    [("es", "ES", "es-ES"), ("pt", "BR", "pt-BR"), ("pt", "PT", "pt-PT"), ("en", "IE", "en-US"), ("ro", "RO", "ro-RO")],
)
def test_say_language_per_locale(locale: Any, country: str, tag: str) -> None:
    assert say_language(locale, country) == tag


async def test_voice_posts_a_call_with_inline_twiml() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"sid": "CA1"})

    sid = await voice(handle).send("+34910000000", "Factura 7", language="es-ES", status_callback="https://cb.test/v")
    assert sid == "CA1"
    assert seen[0].url.path.endswith("/Calls.json")
    form = dict(parse_qsl(seen[0].content.decode()))
    assert form["Twiml"] == '<Response><Say language="es-ES">Factura 7</Say></Response>'
    assert (form["To"], form["StatusCallback"]) == ("+34910000000", "https://cb.test/v")


async def test_voice_sorts_answers_like_sms_under_its_own_dependency() -> None:
    with pytest.raises(ProviderRefusal) as refused:
        await voice(answer(400, {"code": 21211, "message": "Invalid 'To'"})).send("+1", "x", language="en-US")
    assert refused.value.reason == "rejected_by_server"
    with pytest.raises(DependencyDown) as down:
        await voice(answer(503, None, **{"Retry-After": "3"})).send("+1", "x", language="en-US")
    assert (down.value.dependency, down.value.retry_after_s) == ("voice", 3.0)


# -- push ----------------------------------------------------------------------------------------


def fcm_error(status: int, rpc: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": rpc, "details": list(details)}}


def fcm_code(code: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}


def violation(field: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": field}]}


async def test_push_sends_the_v1_message_with_the_bearer_token() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"name": "projects/factura-dev/messages/0:1"})

    name = await push(handle).send("device-1", title="Factura 7", body="Vence hoy", link="https://l.test/d/abc")
    assert name == "projects/factura-dev/messages/0:1"
    assert str(seen[0].url) == "http://fcm.test/v1/projects/factura-dev/messages:send"
    assert seen[0].headers["authorization"] == "Bearer tok"
    assert json.loads(seen[0].content) == {
        "message": {
            "token": "device-1",
            "notification": {"title": "Factura 7", "body": "Vence hoy"},
            "data": {"link": "https://l.test/d/abc"},
        }
    }
    await push(handle).send("device-1", title="Recibo", body="Gracias")
    assert "data" not in json.loads(seen[1].content)["message"]


@pytest.mark.parametrize(
    "body",
    [
        fcm_error(404, "NOT_FOUND", "Requested entity was not found.", fcm_code("UNREGISTERED")),
        fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"),
        fcm_error(400, "INVALID_ARGUMENT", "Invalid value", violation("message.token")),
        fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", fcm_code("SENDER_ID_MISMATCH")),
    ],
)
async def test_push_to_a_dead_token_is_refused_as_rejected(body: dict[str, Any]) -> None:
    with pytest.raises(ProviderRefusal) as refused:
        await push(answer(body["error"]["code"], body)).send("t", title="a", body="b", link="c")
    assert refused.value.reason == "rejected_by_server"


async def test_push_of_a_malformed_message_is_refused_as_invalid_not_as_a_dead_token() -> None:
    body = fcm_error(400, "INVALID_ARGUMENT", "Unknown name \"key\" at 'message'", violation("message"))
    with pytest.raises(ProviderRefusal) as refused:
        await push(answer(400, body)).send("t", title="a", body="b", link="c")
    assert refused.value.reason == "message_invalid"
    assert "INVALID_ARGUMENT" in refused.value.text


@pytest.mark.parametrize(
    ("status", "body", "retry"),
    [
        (429, fcm_error(429, "RESOURCE_EXHAUSTED", "quota", fcm_code("QUOTA_EXCEEDED")), 9.0),
        (503, fcm_error(503, "UNAVAILABLE", "later", fcm_code("UNAVAILABLE")), 9.0),
        (401, fcm_error(401, "UNAUTHENTICATED", "expired token"), None),
        (403, fcm_error(403, "PERMISSION_DENIED", "API disabled", fcm_code("THIRD_PARTY_AUTH_ERROR")), None),
        (404, fcm_error(404, "NOT_FOUND", "no such project"), None),
    ],
)
async def test_push_quota_outages_and_credentials_are_not_now(
    status: int, body: dict[str, Any], retry: float | None
) -> None:
    headers = {"Retry-After": "9"} if retry else {}
    with pytest.raises(DependencyDown) as down:
        await push(answer(status, body, **headers)).send("t", title="a", body="b", link="c")
    assert (down.value.dependency, down.value.retry_after_s) == ("push", retry)


async def test_push_token_file_is_reread_when_the_sidecar_refreshes_it(tmp_path: Path) -> None:
    tokens: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        tokens.append(request.headers["authorization"])
        return httpx.Response(200, json={"name": "n"})

    path = tmp_path / "token"
    path.write_text("first\n")
    provider = push(handle, access_token_file=path)
    await provider.send("t", title="a", body="b", link="c")
    path.write_text("second\n")
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000))  # a new mtime even on coarse clocks
    await provider.send("t", title="a", body="b", link="c")
    assert tokens == ["Bearer first", "Bearer second"]
    path.unlink()
    with pytest.raises(DependencyDown, match="access token file"):
        await provider.send("t", title="a", body="b", link="c")


async def test_push_probe_validates_without_delivering() -> None:
    seen: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"name": "projects/p/messages/fake_message_id"})

    await push(handle).probe()
    assert seen[0]["validate_only"] is True
    assert "token" not in seen[0]["message"]
    with pytest.raises(DependencyDown):
        await push(answer(401, fcm_error(401, "UNAUTHENTICATED", "no"))).probe()
