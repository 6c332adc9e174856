"""Link tracking without servers: who is a machine, which language a page speaks, short-link ids."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, cast

import pytest
from pymongo.errors import DuplicateKeyError
from starlette.requests import Request

from factura.common.shortlinks import ID_CHARS, ShortLinks, short_url
from factura.common.tenants import Sender, TenantConfig
from factura.renderer.agents import classify
from factura.renderer.download import OCTET_STREAM, served_type
from factura.renderer.pages import Contact, LinkPages, contact_of, negotiate
from factura.renderer.settings import TrackingSettings
from factura.renderer.tracking import PIXEL, HitGuard, Tracker

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126 Mobile Safari/537.36"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
HEADLESS = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/126.0 Safari/537.36"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)


@pytest.mark.parametrize(
    ("user_agent", "ua_class", "automated", "reason"),
    [
        (CHROME, "browser", False, None),
        (IPHONE, "mobile", False, None),
        (ANDROID, "mobile", False, None),
        # email clients and their image proxies
        (GMAIL, "email_client", False, None),
        ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", "email_client", False, None),
        ("Mozilla/5.0", "email_client", True, "apple_mpp_prefetch"),
        ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17726; Pro)", "email_client", False, None),
        ("Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.12.0", "email_client", False, None),
        ("Microsoft Office Existence Discovery", "bot", True, "preview:office-discovery"),
        # mail security gateways
        ("Barracuda Sentinel (EE)", "scanner", True, "scanner:barracuda"),
        ("Mozilla/5.0 (compatible; Mimecast URL Protect)", "scanner", True, "scanner:mimecast"),
        ("Proofpoint URL Defense", "scanner", True, "scanner:proofpoint"),
        ("urldefense-scanner/1.0", "scanner", True, "scanner:proofpoint"),
        ("Microsoft Defender SafeLinks", "scanner", True, "scanner:microsoft-defender"),
        ("Cisco IronPort URL scanner", "scanner", True, "scanner:cisco-ironport"),
        ("Google-Safety", "scanner", True, "scanner:google-safe-browsing"),
        # link previews
        ("bitlybot/3.0 (+http://bit.ly/)", "bot", True, "preview:bitly"),
        ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "bot", True, "preview:slack"),
        ("WhatsApp/2.23.20.0", "bot", True, "preview:whatsapp"),
        ("TelegramBot (like TwitterBot)", "bot", True, "preview:telegram"),
        ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", "bot", True, "preview:facebook"),
        ("Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5", "bot", True, "preview:microsoft"),
        # scripts
        ("curl/8.5.0", "bot", True, "tool:http-library"),
        ("python-requests/2.32.3", "bot", True, "tool:http-library"),
        ("Go-http-client/1.1", "bot", True, "tool:http-library"),
        (HEADLESS, "bot", True, "tool:headless-browser"),
        # generic crawlers come from crawlerdetect
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot", True, "crawler"),
        ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", "bot", True, "crawler"),
        # nothing to go on
        (None, "unknown", True, "no_user_agent"),
        ("   ", "unknown", True, "no_user_agent"),
        ("FacturaPortalApp/2.1", "unknown", False, None),
    ],
)  # fmt: skip
def test_user_agents_are_classified(user_agent: str | None, ua_class: str, automated: bool, reason: str | None) -> None:
    agent = classify(user_agent)
    assert (agent.ua_class, agent.automated, agent.reason) == (ua_class, automated, reason)


@pytest.mark.parametrize(
    ("header", "language"),
    [
        (None, "en"),
        ("", "en"),
        ("es-ES,es;q=0.9,en;q=0.8", "es"),
        ("fr-FR,fr;q=0.9,pt-BR;q=0.8,en;q=0.5", "pt"),
        ("en;q=0.3, ro;q=0.7", "ro"),
        ("de, fr", "en"),
        ("es;q=0, pt", "pt"),
        ("es;q=abc, ro;q=0.1", "ro"),
        ("RO-ro", "ro"),
        ("*", "en"),
    ],
)
def test_accept_language_is_negotiated(header: str | None, language: str) -> None:
    assert negotiate(header) == language


def test_served_type_needs_matching_bytes() -> None:
    pdf, zipped = b"%PDF-1.7 ...", b"PK\x03\x04 ..."
    assert served_type("application/pdf", pdf) == "application/pdf"
    assert served_type("application/zip", zipped) == "application/zip"
    assert served_type("application/zip", pdf) == OCTET_STREAM
    assert served_type("text/html", b"<html><script>") == OCTET_STREAM
    assert served_type("text/html", pdf) == OCTET_STREAM


def test_pixel_is_a_43_byte_gif() -> None:
    assert len(PIXEL) == 43
    assert PIXEL.startswith(b"GIF89a")


def request(method: str = "GET", user_agent: str | None = CHROME, client: str = "203.0.113.7") -> Request:
    headers = [(b"user-agent", user_agent.encode())] if user_agent is not None else []
    return Request(
        {"type": "http", "method": method, "path": "/", "headers": headers, "query_string": b"", "client": (client, 1)}
    )


def tracker(minimal: bool = False) -> Tracker:
    guard = HitGuard(cast(Any, None), TrackingSettings())
    return Tracker(guard, lambda ip: f"p({ip})", TrackingSettings(scanner_window_s=10), minimal_user_agent=minimal)


def test_a_person_clicking_later_is_not_automated() -> None:
    hit = tracker().observe(request(), sent_at_ms=int((time.time() - 3600) * 1000))
    assert (hit.automated, hit.automated_reason, hit.agent.ua_class) == (False, None, "browser")
    assert hit.user_agent == CHROME
    assert hit.client_ip_hash == "p(203.0.113.7)"
    assert hit.client == "p(203.0.113.7):browser"


def test_hits_right_after_sending_and_head_requests_are_automated() -> None:
    now = time.time()
    sent_ms = int(now * 1000)
    assert tracker().observe(request(), sent_at_ms=sent_ms, now=now + 9.5).automated_reason == "scanner_window"
    assert tracker().observe(request(), sent_at_ms=sent_ms, now=now + 10.5).automated is False
    assert tracker().observe(request("HEAD")).automated_reason == "head_request"
    # the user agent's own reason is more telling than the timing
    scan = tracker().observe(request(user_agent="Barracuda Sentinel (EE)"), sent_at_ms=sent_ms, now=now + 1)
    assert scan.automated_reason == "scanner:barracuda"


def test_minimal_user_agent_keeps_only_the_class() -> None:
    hit = tracker(minimal=True).observe(request(user_agent=IPHONE))
    assert hit.user_agent is None
    assert hit.agent.ua_class == "mobile"


class FakeLinks:
    """Just enough of a collection for ShortLinks' insert-or-read-back logic."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    async def insert_one(self, doc: dict[str, Any]) -> None:
        if doc["_id"] in self.docs:
            raise DuplicateKeyError("E11000 duplicate key")
        self.docs[doc["_id"]] = doc

    async def find_one(self, query: dict[str, Any], projection: object = None) -> dict[str, Any] | None:
        return self.docs.get(query["_id"])


def shorten_args(seed: str) -> dict[str, Any]:
    return {
        "seed": seed,
        "tenant_id": "harinas-sur",
        "invoice_id": "F-1",
        "kind": "payment",
        "target": "https://pay.example.com/F-1",
        "channel": "sms",
        "purpose": "invoice",
        "locale": "es",
        "correlation_id": "c-1",
        "expires_at_ms": int((time.time() + 3600) * 1000),
        "track": True,
    }


async def test_ids_are_deterministic_unguessable_and_extended_on_collision() -> None:
    fake = FakeLinks()
    links = ShortLinks(cast(Any, fake), b"short-secret")
    first = await links.shorten(**shorten_args("delivery-1:payment"))
    assert len(first) == ID_CHARS and first.isalnum()
    assert await links.shorten(**shorten_args("delivery-1:payment")) == first  # a retried send
    other_secret = await ShortLinks(cast(Any, FakeLinks()), b"another").shorten(**shorten_args("delivery-1:payment"))
    assert other_secret != first
    # another seed already holds this id: the new link gets a longer one with the same prefix
    fake.docs[first]["seed"] = hmac.new(b"short-secret", b"someone-else", hashlib.sha256).hexdigest()
    longer = await links.shorten(**shorten_args("delivery-1:payment"))
    assert len(longer) == ID_CHARS + 1 and longer.startswith(first)
    assert "delivery-1" not in str(fake.docs[longer])  # only the seed's MAC is stored


async def test_open_links_have_no_target_and_others_need_one() -> None:
    links = ShortLinks(cast(Any, FakeLinks()), b"short-secret")
    with pytest.raises(ValueError, match="target"):
        await links.shorten(**shorten_args("x") | {"kind": "open"})
    with pytest.raises(ValueError, match="target"):
        await links.shorten(**shorten_args("x") | {"target": None})
    assert await links.resolve("not-an-id!") is None


def test_short_urls() -> None:
    assert short_url("https://l.example.com/", "AbC12345", "payment") == "https://l.example.com/l/AbC12345"
    assert short_url("https://l.example.com", "AbC12345", "open") == "https://l.example.com/o/AbC12345.gif"


def test_expired_page_speaks_the_customers_language_and_escapes_the_tenant() -> None:
    tenant = TenantConfig(
        tenant_id="harinas-sur",
        sender=Sender(from_name="Harinas <Sur> & Co", from_address="f@harinas.test", reply_to="cobros@harinas.test"),
    )
    contact = contact_of(tenant)
    assert contact == Contact("Harinas <Sur> & Co", "cobros@harinas.test")
    page = LinkPages().render("expired", "es", contact)
    assert '<html lang="es">' in page
    assert "Este enlace ha caducado" in page
    assert "Harinas &lt;Sur&gt; &amp; Co" in page
    assert "mailto:cobros@harinas.test" in page
    generic = LinkPages().render("invalid", "ro")
    assert "Acest link nu este valid" in generic and "emitentul facturii" in generic
    assert contact_of(TenantConfig.default("acme")) is None
