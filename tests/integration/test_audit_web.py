"""The compliance page in a real browser: Debian's Chromium driven by Playwright, against the audit app
served by uvicorn, records in the real MongoDB-wire server written by the chain writer, real API keys.

Each browser test fails on any console error or uncaught page error, which is where a Content
Security Policy violation (an inline script or style, an ``eval``) shows up.
"""

from __future__ import annotations

import asyncio
import csv
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from factura.audit import api, web
from factura.audit.bootstrap import access_recorder
from factura.audit.chain import ChainWriter
from factura.audit.checkpoints import Checkpointer, Signer
from factura.audit.records import FIELDS, NewRecord
from factura.audit.store import AuditDb
from factura.audit.verify import Verification, export_chain, verify_chain
from factura.audit.web.session import COOKIE
from factura.common.apikeys import COLLECTION, ApiKeyStore, Role, authenticator
from factura.common.http import Health, create_app, server
from factura.common.mongo import create_client, database
from factura.devstack.config import StackConfig
from tests.conftest import mongo_settings
from tests.waiting import until

pytestmark = pytest.mark.integration

TENANT = "acme-ui"
TAMPERED = "tamper-ui"
OTHER = "other-ui"
SLASHED = "INV/2025/007"
HOSTILE = '<img src=x onerror="alert(1)">'
BOB_INVOICES = 12
LONG = "INV/LONG/1"
LONG_ENTRIES = 7
PAGE_SIZE = 5
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
CHROMIUM = "/usr/bin/chromium"


def event(
    tenant: str,
    invoice: str,
    type: str,
    minutes: int,
    *,
    customer: str,
    outcome: str | None = None,
    channel: str | None = None,
    reason: str | None = None,
) -> NewRecord:
    event_id = str(uuid.uuid4())
    occurred = T0 + timedelta(minutes=minutes)
    envelope = {"event_id": event_id, "type": type, "tenant_id": tenant, "invoice_id": invoice, "data": {}}
    fields: dict[str, Any] = {name: None for name in FIELDS} | {
        "kind": "event",
        "type": type,
        "schema_version": 1,
        "invoice_id": invoice,
        "customer_id": customer,
        "channel": channel,
        "purpose": "invoice",
        "outcome": outcome,
        "reason": reason,
        "occurred_at": occurred,
        "recorded_at": occurred + timedelta(seconds=1),
        "day": occurred.date().isoformat(),
        "class": "fiscal",
        "source": f"t/0/{minutes}",
    }
    return NewRecord(id=event_id, tenant_id=tenant, fields=fields, raw=json.dumps(envelope))


def history() -> list[NewRecord]:
    alice = "C-ALICE"
    records = [
        event(TENANT, SLASHED, "invoice.created", 0, customer=alice, outcome="pending"),
        event(TENANT, SLASHED, "invoice.rendered", 1, customer=alice, outcome="pending"),
        event(
            TENANT,
            SLASHED,
            "delivery.failed",
            2,
            customer=alice,
            outcome="failed",
            channel="email",
            reason="hard_bounce",
        ),
        event(TENANT, SLASHED, "delivery.succeeded", 3, customer=alice, outcome="delivered", channel="sms"),
    ]
    records += [
        event(TENANT, f"INV-B{i:02d}", "invoice.created", 10 + i, customer="C-BOB", outcome="pending")
        for i in range(BOB_INVOICES)
    ]
    records.append(event(TENANT, HOSTILE, "invoice.created", 40, customer="C-EVIL", outcome="pending"))
    records += [event(TENANT, LONG, "document.downloaded", 50 + i, customer="C-LONG") for i in range(LONG_ENTRIES)]
    records.append(event(OTHER, "INV-OTHER", "invoice.created", 0, customer="C-BOB", outcome="pending"))
    records += [event(TAMPERED, f"INV-T{i}", "invoice.created", i, customer="C-T", outcome="pending") for i in range(6)]
    return records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Ui:
    base: str
    db: AuditDb
    keys: ApiKeyStore
    browser: Browser
    plaintext: dict[str, str] = field(default_factory=dict)  # who -> key

    async def new_key(self, role: Role, tenants: list[str]) -> tuple[str, str]:
        plaintext, record = await self.keys.create(role, tenants, "web test", "test")
        return plaintext, record.key_id


@pytest.fixture(scope="module")
async def ui(cfg: StackConfig) -> AsyncIterator[Ui]:
    settings = mongo_settings(cfg)
    mongo = create_client(settings)
    db = AuditDb.of(database(mongo, settings), prefix=f"w{uuid.uuid4().hex[:6]}_")
    await db.ensure_indexes()
    writer = ChainWriter(db.records, db.tombstones)
    await writer.append(history())
    signer = Signer(Ed25519PrivateKey.generate())
    await Checkpointer(db, writer, signer).sign_heads()
    keys = ApiKeyStore(database(mongo, settings)[f"{COLLECTION}_{uuid.uuid4().hex[:6]}"])
    cursor_key = signer.derived_secret("cursor")
    on_access = access_recorder(writer)

    async def verify(tenant: str) -> Verification:
        return await verify_chain(db, tenant, signer.public)

    routers = [
        api.router(
            db,
            auth=authenticator(keys),
            cursor_key=cursor_key,
            on_access=on_access,
            verify=verify,
            export_chain=lambda tenant, first, last: export_chain(db, tenant, signer.public, first, last),
        ),
        web.router(db, keys=keys, cursor_key=cursor_key, on_access=on_access, verify=verify, page_size=PAGE_SIZE),
    ]
    port = free_port()
    uvicorn = server(create_app("audit", Health(), routers), "127.0.0.1", port)
    task = asyncio.create_task(uvicorn.serve())
    await until(lambda: uvicorn.started or task.done(), timeout_s=10)
    assert not task.done(), "the audit app did not start"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        setup = Ui(f"http://127.0.0.1:{port}", db, keys, browser)
        setup.plaintext["reader"], _ = await setup.new_key(Role.COMPLIANCE_READER, [TENANT])
        yield setup
        await browser.close()
    uvicorn.should_exit = True
    await asyncio.wait_for(task, 10)
    await mongo.close()


@dataclass
class Console:
    """Console errors and uncaught exceptions of a page: CSP violations are reported as the former.

    Chromium also reports every 4xx answer as a console error; a test names those it caused on purpose.
    """

    errors: list[str] = field(default_factory=list)

    def expected(self, status: str) -> None:
        self.errors.remove(f"Failed to load resource: the server responded with a status of {status}")

    def message(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def exception(self, error: Exception) -> None:
        self.errors.append(f"uncaught: {error}")


@pytest.fixture
async def browsing(ui: Ui) -> AsyncIterator[tuple[Page, Console]]:
    context = await ui.browser.new_context(base_url=ui.base, accept_downloads=True)
    page = await context.new_page()
    console = Console()
    page.on("console", console.message)
    page.on("pageerror", console.exception)
    page.on("dialog", lambda dialog: console.errors.append(f"dialog opened: {dialog.message}"))
    yield page, console
    await context.close()
    assert console.errors == []


async def sign_in(page: Page, key: str) -> None:
    await page.goto("/ui/")
    await expect(page).to_have_url(f"{page.url.split('/ui/')[0]}/ui/sign-in")
    await page.fill("#key", key)
    await page.click("button[type=submit]")


async def search(page: Page, **fields: str) -> None:
    for name, value in fields.items():
        await page.fill(f"#f-{name}", value)
    await page.click("#search button[type=submit]")


async def search_for(page: Page, customer: str) -> None:
    await page.goto(f"/ui/search?tenant_id={TENANT}")
    await search(page, customer_id=customer)


def cells(rows: list[list[str]], column: int) -> list[str]:
    return [row[column] for row in rows]


async def table(page: Page, selector: str) -> list[list[str]]:
    rows: list[list[str]] = await page.eval_on_selector_all(
        selector, "rows => rows.map(r => Array.from(r.cells, c => c.textContent.trim()))"
    )
    return rows


async def test_sign_in_search_open_a_timeline_load_more_and_export(
    ui: Ui, browsing: tuple[Page, Console], tmp_path: Path
) -> None:
    page, console = browsing
    await sign_in(page, "fct_not-a-key")
    await expect(page.locator("#sign-in-error")).to_contain_text("not valid")
    console.expected("401 (Unauthorized)")

    await page.fill("#key", ui.plaintext["reader"])
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{ui.base}/ui/search?tenant_id={TENANT}")
    await expect(page.locator("#chain-state")).to_contain_text("Verified")  # loaded by htmx after the page

    await search(page, customer_id="C-ALICE")
    await expect(page.locator("#results tr.record")).to_have_count(4)
    rows = await table(page, "#results tr.record")
    assert cells(rows, 4) == ["delivery.succeeded", "delivery.failed", "invoice.rendered", "invoice.created"]

    await page.locator("#results a", has_text=SLASHED).first.click()
    await expect(page.locator("#invoice-id")).to_have_text(SLASHED)
    entries = await table(page, "#timeline tr.entry")
    assert cells(entries, 2) == ["invoice.created", "invoice.rendered", "delivery.failed", "delivery.succeeded"]
    assert cells(entries, 3) == ["pending", "pending", "failed", "delivered"]
    assert cells(entries, 4) == ["", "", "email", "sms"]
    assert cells(entries, 6) == ["", "", "hard_bounce", ""]
    assert [int(s) for s in cells(entries, 0)] == sorted(int(s) for s in cells(entries, 0))
    assert all(len(h) == 64 for h in cells(entries, 7))

    await search_for(page, "C-LONG")
    await page.locator("#results a", has_text=LONG).first.click()
    await expect(page.locator("#timeline tr.entry")).to_have_count(PAGE_SIZE)
    await page.click("#more-entries button")
    await expect(page.locator("#timeline tr.entry")).to_have_count(LONG_ENTRIES)
    assert len(set(cells(await table(page, "#timeline tr.entry"), 0))) == LONG_ENTRIES

    await search_for(page, "C-BOB")
    await expect(page.locator("#results tr.record")).to_have_count(PAGE_SIZE)
    for shown in (2 * PAGE_SIZE, BOB_INVOICES):
        await page.click("#more-records button")
        await expect(page.locator("#results tr.record")).to_have_count(shown)
    await expect(page.locator("#more-records")).to_have_count(0)
    newest_first = [f"INV-B{i:02d}" for i in reversed(range(BOB_INVOICES))]
    assert cells(await table(page, "#results tr.record"), 2) == newest_first

    async with page.expect_download() as started:
        await page.click("#export-csv")
    download = await started.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    exported = list(csv.DictReader(saved.open(newline="")))
    assert download.suggested_filename == f"audit-records-{TENANT}.csv"
    assert [r["invoice_id"] for r in exported] == list(reversed(newest_first))  # chain order
    assert {r["customer_id"] for r in exported} == {"C-BOB"}

    await search_for(page, "C-EVIL")
    await expect(page.locator("#results a", has_text=HOSTILE)).to_have_count(1)  # shown as text, never run

    paths = await accessed_paths(ui.db, TENANT)
    assert {"/ui/search", "/ui/timeline", "/ui/chain", "/ui/export/records.csv"} <= paths
    assert not any(p.startswith("/ui/static/") for p in paths)  # files are not page views


async def accessed_paths(db: AuditDb, tenant: str) -> set[str]:
    """The paths of the access records in ``tenant``'s chain."""
    paths = set()
    async for doc in db.records.find({"tenant_id": tenant, "kind": "access"}):
        paths.add(json.loads(json.loads(doc["record"])["raw"])["path"])
    return paths


async def test_chain_status_shows_the_broken_position_after_tampering(ui: Ui, browsing: tuple[Page, Console]) -> None:
    page, _ = browsing
    key, _ = await ui.new_key(Role.COMPLIANCE_READER, [TAMPERED])
    await sign_in(page, key)
    await expect(page.locator("#chain-state")).to_contain_text("Verified")
    await expect(page.locator("#chain-checkpoint")).to_contain_text("position 6")

    third = await ui.db.records.find_one({"tenant_id": TAMPERED, "seq": 3})
    assert third is not None
    await ui.db.records.update_one({"_id": third["_id"]}, {"$set": {"customer_id": "C-FORGED"}})
    await page.reload()
    state = page.locator("#chain-state")
    await expect(state).to_contain_text("Broken at position 3")
    await expect(state).to_contain_text("customer_id")


async def test_a_revoked_key_is_sent_back_to_sign_in(ui: Ui, browsing: tuple[Page, Console]) -> None:
    page, _ = browsing
    key, key_id = await ui.new_key(Role.COMPLIANCE_READER, [TENANT])
    await sign_in(page, key)
    await expect(page.locator("#chain-state")).to_contain_text("Verified")
    assert await ui.keys.revoke(key_id, "test")
    await page.reload()
    await expect(page).to_have_url(f"{ui.base}/ui/sign-in?ended=1")
    await expect(page.locator("#sign-in-error")).to_contain_text("no longer valid")
    assert [c["name"] for c in await page.context.cookies()] == []


# --- without a browser: headers, cookies, filters and refusals ------------------------------------------


@pytest.fixture
async def client(ui: Ui) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ui.base) as http:
        yield http


@asynccontextmanager
async def holder(ui: Ui, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in with ``key`` (its cookie set as the sign-in sets it)."""
    async with httpx.AsyncClient(base_url=ui.base, cookies={COOKIE: key}) as http:
        yield http


def cookie_attributes(response: httpx.Response) -> Iterator[str]:
    for header in response.headers.get_list("set-cookie"):
        yield from (part.strip().lower() for part in header.split(";"))


async def test_the_key_cookie_and_the_security_headers(ui: Ui, client: httpx.AsyncClient) -> None:
    page = await client.get("/ui/sign-in")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"

    key = ui.plaintext["reader"]
    signed = await client.post("/ui/sign-in", data={"key": key})
    assert signed.status_code == 303
    assert signed.headers["location"] == f"/ui/search?tenant_id={TENANT}"
    attributes = set(cookie_attributes(signed))
    assert {"httponly", "samesite=strict", "path=/ui", "max-age=1800"} <= attributes
    assert "secure" not in attributes  # plain http on loopback (the devstack) only
    proxied = await client.post("/ui/sign-in", data={"key": key}, headers={"Host": "audit.example.com"})
    assert "secure" in set(cookie_attributes(proxied))  # behind a TLS-terminating ingress: Secure
    assert key not in signed.headers["location"]

    async with holder(ui, key) as http:
        out = await http.post("/ui/sign-out")
    assert out.status_code == 303
    assert "max-age=0" in set(cookie_attributes(out))

    htmx = await client.get("/ui/static/htmx.min.js")
    assert htmx.headers["content-type"].startswith("text/javascript")
    assert "immutable" in htmx.headers["cache-control"]
    assert htmx.text.startswith("/*! htmx 2.0.4")

    schema = (await client.get("/openapi.json")).json()
    assert [p for p in schema["paths"] if p.startswith("/ui")] == []
    assert "/v1/records" in schema["paths"]


async def test_search_filters_are_validated_values(ui: Ui) -> None:
    async with holder(ui, ui.plaintext["reader"]) as http:

        async def found(**params: str) -> int:
            response = await http.get("/ui/search", params={"tenant_id": TENANT, **params})
            assert response.status_code == 200, response.text
            return response.text.count('<tr class="record">')

        assert await found(customer_id="C-ALICE", **{"from": "2025-03-01", "to": "2025-03-01"}) == 4
        assert await found(customer_id="C-ALICE", **{"from": "2025-03-02"}) == 0
        assert await found(customer_id="C-ALICE", status="failed") == 1
        assert await found(customer_id="C-ALICE", channel="", reason="") == 4  # empty fields: any
        assert await found(customer_id='{"$ne": null}') == 0  # a value, never an operator
        ndjson = await http.get("/ui/export/records.ndjson", params={"tenant_id": TENANT, "customer_id": "C-ALICE"})
        assert ndjson.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in ndjson.text.splitlines()]
        assert [line["invoice_id"] for line in lines] == [SLASHED] * 4
        for params, named in (
            ({"status": "bogus"}, "status"),
            ({"customer_id[$ne]": "x"}, "customer_id[$ne]"),
            ({"from": "2025-03-02", "to": "2025-03-01"}, "must not be before"),
            ({"cursor": "forged.cursor"}, "not valid"),
        ):
            refused = await http.get("/ui/search", params={"tenant_id": TENANT, **params})
            assert refused.status_code == 400, params
            assert named in refused.text


async def test_an_admin_key_for_every_tenant_names_the_tenant(ui: Ui) -> None:
    admin, _ = await ui.new_key(Role.ADMIN, ["*"])
    async with holder(ui, admin) as http:
        start = await http.get("/ui/", follow_redirects=True)
        assert start.status_code == 200
        assert 'id="f-tenant_id" name="tenant_id" value=""' in start.text
        assert 'class="record"' not in start.text
        other = await http.get("/ui/search", params={"tenant_id": OTHER})
        assert other.text.count('<tr class="record">') == 1


async def test_keys_that_may_not_read_and_foreign_origins_are_refused(ui: Ui, client: httpx.AsyncClient) -> None:
    ingest, _ = await ui.new_key(Role.INGEST, [TENANT])
    refused = await client.post("/ui/sign-in", data={"key": ingest})
    assert refused.status_code == 403
    assert "role “ingest”" in refused.text
    assert "set-cookie" not in refused.headers

    elsewhere, _ = await ui.new_key(Role.COMPLIANCE_READER, [OTHER])
    async with holder(ui, elsewhere) as http:
        foreign = await http.get(f"/ui/search?tenant_id={TENANT}")
        assert foreign.status_code == 403
        assert TENANT in foreign.text
        twice = await http.get(f"/ui/search?tenant_id={OTHER}&tenant_id={TENANT}")
        assert twice.status_code == 400
        timeline = await http.get("/ui/timeline", params={"tenant_id": TENANT, "invoice_id": SLASHED})
        assert timeline.status_code == 403
        export = await http.get(f"/ui/export/records.csv?tenant_id={TENANT}")
        assert export.status_code == 403
        missing = await http.get("/ui/timeline", params={"tenant_id": OTHER, "invoice_id": SLASHED})
        assert missing.status_code == 404  # another tenant's invoice is as absent as a missing one

    cross_site = await client.post(
        "/ui/sign-in", data={"key": ui.plaintext["reader"]}, headers={"Origin": "http://evil.example"}
    )
    assert cross_site.status_code == 403
    assert "set-cookie" not in cross_site.headers

    anonymous = await client.get(f"/ui/search?tenant_id={TENANT}")
    assert (anonymous.status_code, anonymous.headers["location"]) == (303, "/ui/sign-in")
    fragment = await client.get(f"/ui/chain?tenant_id={TENANT}", headers={"HX-Request": "true"})
    assert (fragment.status_code, fragment.headers["hx-redirect"]) == (401, "/ui/sign-in")
