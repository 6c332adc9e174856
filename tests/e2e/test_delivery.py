"""End to end, delivery: reminders, later bounces, suppression, one-segment SMS, tracking.

The six services run as processes over the real broker, MongoDB-wire, S3, SMTP and SMS capture
servers; each test publishes its own invoices like an ERP would and judges the outcome from the
audit API, the Maildir, the SMS capture server and the services' own HTTP APIs.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from factura.common.delivery.gsm import prepare
from factura.common.webhooks import sign_hmac
from factura.devstack.config import SCANNER_WINDOW_S, StackConfig
from factura.devstack.flow import publish, timeline
from factura.devstack.samples import Outcome, Sample, invoice_payload
from factura.devstack.smtp_capture import read_messages
from factura.devstack.stack import Stack

pytestmark = pytest.mark.e2e

SHORT_LINK = "/l/"
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36"
SCANNER = "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))"


def sample(
    tenant: str, *, email: str | None, phone: str | None, due_in: int = 30, expected: Outcome = "email"
) -> Sample:
    n = uuid.uuid4().int % 10**5
    payload = invoice_payload(tenant, n, datetime.now(UTC).date(), email=email, phone=phone, due_in=due_in)
    payload["invoice_number"] = f"DLV-{uuid.uuid4().hex[:10]}"
    return Sample(tenant, payload["invoice_number"], payload, expected)


def address(name: str) -> str:
    return f"{name}.{uuid.uuid4().hex[:8]}@cliente.test"


def phone() -> str:
    return f"+3469{uuid.uuid4().int % 10**7:07d}"


async def events_until(
    cfg: StackConfig, s: Sample, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 60
) -> list[dict[str, Any]]:
    """The invoice's audit timeline once ``done`` says it holds what the test waits for."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            events = await timeline(client, cfg, s)
            if done(events):
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; timeline: {[(e['type'], e['data'].get('reason')) for e in events]}")
            await asyncio.sleep(0.3)


def of(events: list[dict[str, Any]], type_: str, purpose: str | None = None, **data: Any) -> list[dict[str, Any]]:
    """Events of one type (and purpose, and data fields) from a timeline."""
    return [
        e
        for e in events
        if e["type"] == type_
        and (purpose is None or e["data"].get("notice", {}).get("purpose") == purpose)
        and all(e["data"].get(k) == v for k, v in data.items())
    ]


async def sms_to(cfg: StackConfig, number: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        messages: list[dict[str, Any]] = (await client.get(f"{cfg.sms_url}/_capture/messages")).json()
    return [m for m in messages if m.get("to") == number]


async def post_bounce(cfg: StackConfig, body: bytes, content_type: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{cfg.service_url('email-sender')}/v1/webhooks/bounces",
            content=body,
            headers={
                "Content-Type": content_type,
                "X-Factura-Signature": sign_hmac(body, cfg.webhook_secret.encode()),
            },
        )


def dsn(message_id: str, recipient: str) -> tuple[bytes, str]:
    """An RFC 3464 report as a remote MTA sends it, days after the relay said 250."""
    boundary = "dsn-boundary-42"
    body = (
        f"From: MAILER-DAEMON@mx.cliente.test\r\nTo: bounces@factura.test\r\nSubject: Undelivered Mail\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; "
        f'boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.cliente.test\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {message_id}\r\nTo: {recipient}\r\nSubject: Factura\r\n\r\n"
        f"--{boundary}--\r\n"
    )
    return body.encode(), f'multipart/report; report-type=delivery-status; boundary="{boundary}"'


def ses_bounce(message_id: str, recipient: str) -> tuple[bytes, str]:
    """An Amazon SES permanent bounce inside its SNS envelope."""
    notification = {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": recipient, "status": "5.1.1", "action": "failed"}],
            "timestamp": "2026-11-23T10:00:00.000Z",
        },
        "mail": {
            "messageId": "0100018f-ses-id",
            "destination": [recipient],
            "commonHeaders": {"messageId": message_id},
            "headers": [{"name": "Message-ID", "value": message_id}],
        },
    }
    envelope = {"Type": "Notification", "MessageId": str(uuid.uuid4()), "Message": json.dumps(notification)}
    return json.dumps(envelope).encode(), "application/json"


def delivered_by_email(purpose: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: bool(of(events, "delivery.succeeded", purpose, channel="email"))


async def test_a_reminder_goes_by_email_and_after_a_dsn_by_sms(services: Stack) -> None:
    cfg = services.cfg
    customer, number = address("recordatorio"), phone()
    s = sample("harinas-sur", email=customer, phone=number, due_in=-5)
    await publish(cfg, [s])
    events = await events_until(cfg, s, delivered_by_email("reminder:after-3"))
    [reminder] = of(events, "delivery.succeeded", "reminder:after-3")
    [mail] = [m for m in read_messages(cfg.maildir) if m["Message-ID"] == reminder["data"]["provider_message_id"]]
    assert s.invoice_number in str(mail["Subject"]) and "vencida" in str(mail["Subject"]).lower()
    assert not list(mail.iter_attachments())  # reminders link to the document

    body, content_type = dsn(reminder["data"]["provider_message_id"], customer)
    answer = await post_bounce(cfg, body, content_type)
    assert answer.status_code == 200 and answer.json()["items"][0]["result"] == "handed_on", answer.text
    events = await events_until(
        cfg, s, lambda ev: bool(of(ev, "delivery.succeeded", "reminder:after-3", channel="sms"))
    )
    [bounced] = of(events, "delivery.failed", "reminder:after-3", reason="hard_bounce")
    assert bounced["data"]["next_channel"] == "sms" and "5.1.1" in bounced["data"]["detail"]
    [sms] = await sms_to(cfg, number)  # only the reminder went by SMS: the invoice was emailed
    assert s.invoice_number in sms["body"] and SHORT_LINK in sms["body"]


async def test_an_ses_bounce_after_250_falls_back_and_the_address_is_skipped_next_time(services: Stack) -> None:
    cfg = services.cfg
    customer = address("ses")
    first = sample("harinas-sur", email=customer, phone=phone())
    await publish(cfg, [first])
    events = await events_until(cfg, first, delivered_by_email("invoice"))
    [sent] = of(events, "delivery.succeeded", "invoice")
    body, content_type = ses_bounce(sent["data"]["provider_message_id"], customer)
    assert (await post_bounce(cfg, body, content_type)).status_code == 200
    await events_until(cfg, first, lambda ev: bool(of(ev, "delivery.succeeded", "invoice", channel="sms")))

    async with httpx.AsyncClient() as client:
        listed = await client.get(
            f"{cfg.service_url('email-sender')}/v1/suppressions",
            params={"tenant_id": "harinas-sur"},
            headers={"Authorization": f"Bearer {cfg.admin_token}"},
        )
    assert listed.status_code == 200
    assert any(item["address"] == customer and item["reason"] == "hard_bounce" for item in listed.json()["items"])

    second = sample("harinas-sur", email=customer, phone=phone(), expected="sms")
    await publish(cfg, [second])
    events = await events_until(cfg, second, lambda ev: bool(of(ev, "delivery.succeeded", "invoice", channel="sms")))
    [skipped] = of(events, "delivery.failed", "invoice", channel="email")
    assert skipped["data"]["reason"] == "suppressed" and skipped["data"]["next_channel"] == "sms"
    mails = [m for m in read_messages(cfg.maildir) if customer in str(m["To"])]
    assert [m["Message-ID"] for m in mails] == [sent["data"]["provider_message_id"]]  # only the first one


async def test_an_sms_with_both_links_fits_one_gsm7_segment(services: Stack) -> None:
    cfg = services.cfg
    number = phone()
    s = sample("harinas-sur", email=None, phone=number, expected="sms")
    await publish(cfg, [s])
    events = await events_until(cfg, s, lambda ev: bool(of(ev, "delivery.succeeded", "invoice", channel="sms")))
    [sms] = await sms_to(cfg, number)
    text = sms["body"]
    assert text.count(SHORT_LINK) == 2 and "Pagar:" in text and "PDF:" in text
    body = prepare(text, transliterate=False)
    assert (body.encoding, body.segments) == ("gsm7", 1), (len(text), text)
    [succeeded] = of(events, "delivery.succeeded", "invoice", channel="sms")
    assert succeeded["data"]["segments"] == 1 and succeeded["data"]["encoding"] == "gsm7"
    pay, pdf = (line.split(" ", 1)[1] for line in text.splitlines()[-2:])
    async with httpx.AsyncClient() as client:
        document = await client.get(pdf, follow_redirects=True)
        payment = await client.get(pay)
    assert document.status_code == 200 and document.content.startswith(b"%PDF-")
    assert payment.status_code in (302, 307) and payment.headers["location"].startswith(
        "https://pagos.harinas-sur.test/"
    )


async def test_a_scanner_hit_is_not_counted_as_an_open(services: Stack) -> None:
    cfg = services.cfg
    s = sample("lisboa-tech", email=address("leitura"), phone=None)  # lisboa-tech tracks opens and clicks
    await publish(cfg, [s])
    events = await events_until(cfg, s, delivered_by_email("invoice"))
    sent_at = time.monotonic()
    [sent] = of(events, "delivery.succeeded", "invoice")
    [mail] = [m for m in read_messages(cfg.maildir) if m["Message-ID"] == sent["data"]["provider_message_id"]]
    html = mail.get_body(("html",))
    assert html is not None
    pixel = next(part.split('"', 1)[0] for part in html.get_content().split('src="')[1:] if "/o/" in part)
    async with httpx.AsyncClient(headers={"Accept": "image/*"}) as client:
        scanned = await client.get(pixel, headers={"User-Agent": SCANNER})
        assert scanned.status_code == 200 and scanned.headers["content-type"] == "image/gif"
        events = await events_until(cfg, s, lambda ev: bool(of(ev, "delivery.opened")))
        [scan] = of(events, "delivery.opened")
        assert scan["data"]["automated"] is True and scan["data"]["automated_reason"]
        # A person opens it later, outside the window in which gateways scan every new message.
        await asyncio.sleep(max(0.0, SCANNER_WINDOW_S + 1 - (time.monotonic() - sent_at)))
        assert (await client.get(pixel, headers={"User-Agent": BROWSER})).status_code == 200
    events = await events_until(cfg, s, lambda ev: len(of(ev, "delivery.opened")) == 2)
    human = [e for e in of(events, "delivery.opened") if not e["data"]["automated"]]
    assert len(human) == 1 and human[0]["data"]["user_agent_class"] == "browser"
