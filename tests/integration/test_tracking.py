"""Short links and the open pixel against the real MongoDB-wire server and broker; HTTP in-process.

Each test publishes to topics of its own (``isolated``), so "exactly these events" is read from
the broker by offsets once the requests returned (the in-process transport waits for the
background task that publishes).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.envelope import Envelope
from factura.common.kafka.producer import Publisher
from factura.common.links import LinkSigner
from factura.common.mongo import Document, create_client, database
from factura.common.shortlinks import LinkKind, ShortLinks
from factura.common.tenants import TenantDirectory
from factura.devstack.config import StackConfig
from factura.renderer.pages import LinkPages
from factura.renderer.settings import TrackingSettings
from factura.renderer.tracking import PIXEL, HitGuard, Tracker, tracking_router
from tests.conftest import kafka_settings, mongo_settings
from tests.kafka_helpers import Bus, isolated

pytestmark = pytest.mark.integration

SIGNER = LinkSigner(b"tracking-link-secret-0123456789", "https://l.test", 3600, pseudonym_secret=b"tracking-pseudo")
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
PAY_URL = "https://pay.harinas.test/F-7?amount=12.10"
#: No scanner window: hits right after minting are a person's (the window has its own test).
PEOPLE = TrackingSettings(scanner_window_s=0)


@pytest.fixture(scope="module")
async def db(cfg: StackConfig) -> AsyncIterator[AsyncDatabase[Document]]:
    client = create_client(mongo_settings(cfg))
    try:
        yield database(client, mongo_settings(cfg))
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def shortlinks(db: AsyncDatabase[Document]) -> ShortLinks:
    links = ShortLinks(db[f"short_links_{uuid.uuid4().hex[:8]}"], b"short-link-secret")
    await links.ensure_indexes()
    return links


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> TenantDirectory:
    root: Path = tmp_path_factory.mktemp("tenants")
    (root / "harinas-sur").mkdir()
    (root / "harinas-sur" / "tenant.toml").write_text(
        '[sender]\nfrom_name = "Harinas del Sur"\nfrom_address = "facturas@harinas.test"\n'
        'reply_to = "cobros@harinas.test"\n',
        encoding="utf-8",
    )
    return TenantDirectory(root)


@pytest.fixture
async def bus(cfg: StackConfig) -> AsyncIterator[Bus]:
    async with isolated(cfg, client_id="test-tracking") as own:
        yield own


async def new_tracker(db: AsyncDatabase[Document], settings: TrackingSettings, *, minimal: bool = False) -> Tracker:
    guard = HitGuard(db[f"link_hits_{uuid.uuid4().hex[:8]}"], settings)
    await guard.ensure_indexes()
    return Tracker(guard, SIGNER.pseudonym, settings, minimal_user_agent=minimal)


def app_for(shortlinks: ShortLinks, tracker: Tracker, publisher: Publisher, tenants: TenantDirectory) -> FastAPI:
    app = FastAPI()
    app.include_router(
        tracking_router(links=shortlinks, tracker=tracker, publisher=publisher, pages=LinkPages(), tenants=tenants)
    )
    return app


def client(app: FastAPI, ip: str = "203.0.113.7", **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="https://l.test", headers=headers)


async def mint(
    links: ShortLinks, kind: LinkKind, target: str | None, *, expires_in_s: float = 3600, track: bool = True
) -> str:
    return await links.shorten(
        seed=f"{uuid.uuid4()}:{kind}",
        tenant_id="harinas-sur",
        invoice_id="F-7",
        kind=kind,
        target=target,
        channel="sms" if kind != "open" else "email",
        purpose="reminder:after-3",
        locale="es",
        correlation_id="corr-tracking-1",
        expires_at_ms=int((time.time() + expires_in_s) * 1000),
        track=track,
    )


def data_of(events: list[Envelope[Any]], link_id: str) -> list[dict[str, Any]]:
    return [e.data.model_dump() for e in events if e.data.link_id == link_id]


async def test_shorten_is_idempotent_and_resolves(shortlinks: ShortLinks) -> None:
    seed = f"ledger-key-{uuid.uuid4()}:payment"
    args: dict[str, Any] = {
        "tenant_id": "harinas-sur",
        "invoice_id": "F-7",
        "kind": "payment",
        "target": PAY_URL,
        "channel": "sms",
        "purpose": "invoice",
        "locale": "pt",
        "correlation_id": "corr-1",
        "expires_at_ms": 4_000_000_000_000,
        "track": False,
    }
    link_id = await shortlinks.shorten(seed=seed, **args)
    assert await shortlinks.shorten(seed=seed, **args) == link_id  # a retried send: same id, no error
    assert await shortlinks.shorten(seed=seed + "x", **args) != link_id
    link = await shortlinks.resolve(link_id)
    assert link is not None
    assert (link.id, link.kind, link.target, link.locale, link.track) == (link_id, "payment", PAY_URL, "pt", False)
    assert abs(link.created_at_ms - time.time() * 1000) < 60_000
    assert await shortlinks.resolve("ZZZZZZZZ") is None
    assert await shortlinks.resolve("../../etc") is None


async def test_click_redirects_and_publishes_link_clicked(
    db: AsyncDatabase[Document], shortlinks: ShortLinks, bus: Bus, tenants: TenantDirectory
) -> None:
    target = "https://l.test/d/signed.token"
    link_id = await mint(shortlinks, "download", target)
    app = app_for(shortlinks, await new_tracker(db, PEOPLE), bus.publisher, tenants)
    async with client(app, **{"User-Agent": CHROME}) as browser:
        response = await browser.get(f"/l/{link_id}")
    assert response.status_code == 302
    assert response.headers["location"] == target
    assert response.headers["cache-control"] == "private, no-store"
    [event] = await bus.events("link.clicked")
    assert (event.type, event.producer, event.tenant_id, event.invoice_id) == (
        "link.clicked",
        "renderer",
        "harinas-sur",
        "F-7",
    )
    assert event.correlation_id == "corr-tracking-1"
    assert data_of([event], link_id) == [
        {
            "channel": "sms",
            "purpose": "reminder:after-3",
            "link_id": link_id,
            "user_agent": CHROME,
            "user_agent_class": "browser",
            "client_ip_hash": SIGNER.pseudonym("203.0.113.7"),
            "automated": False,
            "automated_reason": None,
            "target": "download",
        }
    ]
    assert b"203.0.113.7" not in b"".join(await bus.raw("link.clicked"))


async def test_head_and_scanners_right_after_sending_are_flagged_automated(
    db: AsyncDatabase[Document], shortlinks: ShortLinks, bus: Bus, tenants: TenantDirectory
) -> None:
    link_id = await mint(shortlinks, "payment", PAY_URL)
    app = app_for(shortlinks, await new_tracker(db, TrackingSettings(scanner_window_s=30)), bus.publisher, tenants)
    async with client(app, "192.0.2.1", **{"User-Agent": CHROME}) as gateway:
        head = await gateway.head(f"/l/{link_id}")
    async with client(app, "192.0.2.2", **{"User-Agent": CHROME}) as disguised:
        early = await disguised.get(f"/l/{link_id}")
    async with client(app, "192.0.2.3", **{"User-Agent": "Mozilla/5.0 (compatible; Mimecast URL Protect)"}) as named:
        scanner = await named.get(f"/l/{link_id}")
    assert head.status_code == early.status_code == scanner.status_code == 302
    assert head.headers["location"] == PAY_URL
    hits = data_of(await bus.events("link.clicked"), link_id)
    assert sorted((h["client_ip_hash"], h["automated"], h["automated_reason"], h["target"]) for h in hits) == sorted(
        [
            (SIGNER.pseudonym("192.0.2.1"), True, "head_request", "payment"),
            (SIGNER.pseudonym("192.0.2.2"), True, "scanner_window", "payment"),
            (SIGNER.pseudonym("192.0.2.3"), True, "scanner:mimecast", "payment"),
        ]
    )


async def test_300_hits_of_one_client_are_one_event_and_a_link_has_at_most_20_an_hour(
    db: AsyncDatabase[Document], shortlinks: ShortLinks, bus: Bus, tenants: TenantDirectory
) -> None:
    link_id = await mint(shortlinks, "payment", PAY_URL)
    app = app_for(shortlinks, await new_tracker(db, PEOPLE), bus.publisher, tenants)
    async with client(app, **{"User-Agent": CHROME}) as browser:
        for _ in range(300):
            assert (await browser.get(f"/l/{link_id}")).status_code == 302  # every click is redirected
    assert len(data_of(await bus.events("link.clicked"), link_id)) == 1
    for i in range(30):
        async with client(app, f"198.51.100.{i + 1}", **{"User-Agent": CHROME}) as other:
            assert (await other.get(f"/l/{link_id}")).status_code == 302
    assert len(data_of(await bus.events("link.clicked"), link_id)) == 20


async def test_open_pixel_is_always_a_gif_and_records_opens(
    db: AsyncDatabase[Document], shortlinks: ShortLinks, bus: Bus, tenants: TenantDirectory
) -> None:
    link_id = await mint(shortlinks, "open", None)
    expired_id = await mint(shortlinks, "open", None, expires_in_s=-60)
    payment_id = await mint(shortlinks, "payment", PAY_URL)
    app = app_for(shortlinks, await new_tracker(db, PEOPLE, minimal=True), bus.publisher, tenants)
    async with client(app, "192.0.2.10", **{"User-Agent": GMAIL}) as gmail:
        responses = [await gmail.get(f"/o/{i}.gif") for i in ("unknownX", "bad!", expired_id, payment_id, link_id)]
    async with client(app, "192.0.2.11", **{"User-Agent": "Mozilla/5.0"}) as apple:
        responses.append(await apple.get(f"/o/{link_id}.gif"))
    for response in responses:
        assert response.status_code == 200
        assert response.content == PIXEL
        assert response.headers["content-type"] == "image/gif"
        assert response.headers["cache-control"] == "no-store"
    events = await bus.events("delivery.opened")
    assert all(e.data.link_id == link_id for e in events)
    opens = data_of(events, link_id)
    assert sorted((o["user_agent_class"], o["automated"], o["automated_reason"], o["user_agent"]) for o in opens) == [
        ("email_client", False, None, None),  # Gmail's proxy fetches when the customer opens: a person
        ("email_client", True, "apple_mpp_prefetch", None),  # Apple preloads on arrival: not a read
    ]
    assert {o["channel"] for o in opens} == {"email"}


async def test_expired_and_unknown_links_get_pages(
    db: AsyncDatabase[Document], shortlinks: ShortLinks, bus: Bus, tenants: TenantDirectory
) -> None:
    expired_id = await mint(shortlinks, "payment", PAY_URL, expires_in_s=-60)
    app = app_for(shortlinks, await new_tracker(db, PEOPLE), bus.publisher, tenants)
    async with client(app, **{"Accept": "text/html", "Accept-Language": "en-GB,en"}) as browser:
        expired = await browser.get(f"/l/{expired_id}")
        unknown = await browser.get("/l/NoSuchId9")
    async with client(app, Accept="application/json") as api:
        expired_json = await api.get(f"/l/{expired_id}")
    assert expired.status_code == 410
    assert '<html lang="es">' in expired.text  # the customer's language, not the browser's
    assert "Este enlace ha caducado" in expired.text
    assert "Harinas del Sur" in expired.text and "cobros@harinas.test" in expired.text
    assert unknown.status_code == 404
    assert "This link is not valid" in unknown.text and "Harinas" not in unknown.text
    assert expired_json.status_code == 410
    assert expired_json.json() == {"detail": "link expired"}


async def test_untracked_links_redirect_and_a_broken_broker_never_breaks_a_click(
    cfg: StackConfig, db: AsyncDatabase[Document], shortlinks: ShortLinks, tenants: TenantDirectory
) -> None:
    class BrokenPublisher(Publisher):
        async def publish(self, event: Envelope[Any]) -> None:
            raise ConnectionError("broker down")

    broken = BrokenPublisher(kafka_settings(cfg), client_id="never-started")
    untracked = await mint(shortlinks, "payment", PAY_URL, track=False)
    tracked = await mint(shortlinks, "payment", PAY_URL)
    app = app_for(shortlinks, await new_tracker(db, PEOPLE), broken, tenants)
    async with client(app, **{"User-Agent": CHROME}) as browser:
        for link_id in (untracked, tracked):
            response = await browser.get(f"/l/{link_id}")
            assert response.status_code == 302
            assert response.headers["location"] == PAY_URL
