"""The download endpoint against the real S3 (moto), broker (Tansu) and MongoDB-wire server (hit
de-duplication); only HTTP runs in-process."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.envelope import Envelope
from factura.common.kafka.admin import ensure_topics
from factura.common.kafka.producer import Publisher
from factura.common.links import LinkSigner
from factura.common.mongo import Document, create_client, database
from factura.common.storage import DocumentStore, ObjectExists
from factura.common.tenants import TenantDirectory
from factura.devstack.config import StackConfig
from factura.renderer.download import download_router
from factura.renderer.pages import LinkPages
from factura.renderer.settings import TrackingSettings
from factura.renderer.tracking import HitGuard, Tracker
from tests.conftest import kafka_settings, mongo_settings
from tests.kafka_helpers import read_all, read_topic

pytestmark = pytest.mark.integration

SECRET = b"integration-secret-0123456789abcdef"
PSEUDONYM_SECRET = b"integration-pseudonyms-0123456789"
CLIENT_IP = "203.0.113.77"
USER_AGENT = "Mozilla/5.0 (test) " + "x" * 400
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


@pytest.fixture(scope="module")
async def publisher(cfg: StackConfig) -> AsyncIterator[Publisher]:
    settings = kafka_settings(cfg)
    await ensure_topics(settings)
    producer = Publisher(settings, client_id="test-download")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def signer() -> LinkSigner:
    return LinkSigner(SECRET, "https://links.factura.test", ttl_s=3600, pseudonym_secret=PSEUDONYM_SECRET)


@pytest.fixture(scope="module")
async def db(cfg: StackConfig) -> AsyncIterator[AsyncDatabase[Document]]:
    client = create_client(mongo_settings(cfg))
    try:
        yield database(client, mongo_settings(cfg))
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def tracker(db: AsyncDatabase[Document], signer: LinkSigner) -> Tracker:
    guard = HitGuard(db[f"link_hits_{uuid.uuid4().hex[:8]}"], TrackingSettings())
    await guard.ensure_indexes()
    return Tracker(guard, signer.pseudonym, TrackingSettings(), minimal_user_agent=False)


def client_for(
    signer: LinkSigner,
    store: DocumentStore,
    publisher: Publisher,
    tracker: Tracker,
    *,
    client_ip: str = CLIENT_IP,
    accept: str = "application/json",
) -> httpx.AsyncClient:
    """A client of the endpoint; JSON answers unless ``accept`` asks for pages."""
    app = FastAPI()
    app.include_router(
        download_router(signer, store, publisher, tracker=tracker, pages=LinkPages(), tenants=TenantDirectory(None))
    )
    transport = httpx.ASGITransport(app=app, client=(client_ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="https://links.factura.test", headers={"Accept": accept})


async def stored_pdf(store: DocumentStore, body: bytes = PDF) -> tuple[str, str]:
    """A fresh object per test, so tests never see each other's documents."""
    key = f"harinas-sur/2026/11/T-{uuid.uuid4().hex[:8]}.pdf"
    sha = hashlib.sha256(body).hexdigest()
    await store.put(key, body, content_type="application/pdf", sha256=sha, metadata={"tenant-id": "harinas-sur"})
    return key, sha


def path_of(signer: LinkSigner, store: DocumentStore, key: str, sha: str, **extra: Any) -> str:
    url = signer.sign(
        tenant_id="harinas-sur",
        invoice_id=key.rsplit("/", 1)[1].removesuffix(".pdf"),
        bucket=store.bucket,
        key=key,
        sha256=sha,
        channel="sms",
        filename='Factura Pastelería "1".pdf',
        correlation_id="0b9a7c1e-5f0e-5d7a-9a43-1f2e3d4c5b6a",
        **extra,
    )
    return url.removeprefix("https://links.factura.test")


async def downloaded_events(
    cfg: StackConfig, link_id: str, count: int = 1, timeout_s: float = 20.0
) -> list[tuple[bytes, dict[str, Any]]]:
    """Our events on the shared topic, found by link id among whatever other tests published."""
    topic = f"{cfg.topic_prefix}document.downloaded"
    seen = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = await read_topic(cfg.kafka_bootstrap, topic, expect=seen + 1, timeout_s=3)
        ours = [(r.value, json.loads(r.value)) for r in records]
        ours = [(raw, event) for raw, event in ours if event["data"]["link_id"] == link_id]
        if len(ours) >= count:
            return ours
        seen = len(records)
    raise AssertionError(f"fewer than {count} document.downloaded for link {link_id}")


async def our_downloads(cfg: StackConfig, link_id: str) -> list[dict[str, Any]]:
    """Exactly the document.downloaded events of ``link_id`` on the topic now (counted by offsets)."""
    records = await read_all(cfg.kafka_bootstrap, f"{cfg.topic_prefix}document.downloaded")
    return [e for e in (json.loads(r.value) for r in records) if e["data"]["link_id"] == link_id]


async def test_valid_link_serves_the_document_and_records_the_download(
    cfg: StackConfig, store: DocumentStore, publisher: Publisher, signer: LinkSigner, tracker: Tracker
) -> None:
    key, sha = await stored_pdf(store)
    link_id = f"it-{uuid.uuid4().hex[:8]}"
    async with client_for(signer, store, publisher, tracker) as client:
        response = await client.get(
            path_of(signer, store, key, sha, link_id=link_id), headers={"User-Agent": USER_AGENT}
        )
    assert response.status_code == 200
    assert response.content == PDF
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["cache-control"] == "private, no-store"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="Factura Pasteleria _1_.pdf"')
    assert "filename*=UTF-8''Factura%20Pasteler%C3%ADa%20%221%22.pdf" in disposition

    [(raw, event)] = await downloaded_events(cfg, link_id)
    Envelope[dict[str, Any]].model_validate(event)
    assert event["type"] == "document.downloaded"
    assert (event["tenant_id"], event["invoice_id"]) == ("harinas-sur", key.rsplit("/", 1)[1].removesuffix(".pdf"))
    assert event["correlation_id"] == "0b9a7c1e-5f0e-5d7a-9a43-1f2e3d4c5b6a"
    assert event["producer"] == "renderer"
    data = event["data"]
    assert data["channel"] == "sms"
    assert data["document"] == {
        "bucket": store.bucket,
        "key": key,
        "sha256": sha,
        "size_bytes": len(PDF),
        "content_type": "application/pdf",
        "filename": 'Factura Pastelería "1".pdf',
        "timestamp_key": None,  # not a signing tenant
    }
    assert data["user_agent"] == USER_AGENT[:300]
    assert data["client_ip_hash"] == signer.pseudonym(CLIENT_IP)
    assert data["client_ip_hash"] != hashlib.sha256(CLIENT_IP.encode()).hexdigest()  # keyed, not brute-forceable
    assert CLIENT_IP.encode() not in raw


async def test_each_client_gets_one_event_per_window_however_often_it_downloads(
    cfg: StackConfig, store: DocumentStore, publisher: Publisher, signer: LinkSigner, tracker: Tracker
) -> None:
    key, sha = await stored_pdf(store)
    link_id = f"it-{uuid.uuid4().hex[:8]}"
    path = path_of(signer, store, key, sha, link_id=link_id)
    async with (
        client_for(signer, store, publisher, tracker) as first,
        client_for(signer, store, publisher, tracker, client_ip="198.51.100.9") as second,
    ):
        for _ in range(5):
            response = await first.get(path)
            assert response.status_code == 200  # the document is always served
            assert response.content == PDF
        assert (await second.get(path)).status_code == 200
    await downloaded_events(cfg, link_id, count=2)  # both clients' events arrived...
    events = await our_downloads(cfg, link_id)  # ...and nothing else: the other four were duplicates
    assert sorted(e["data"]["client_ip_hash"] for e in events) == sorted(
        [signer.pseudonym(CLIENT_IP), signer.pseudonym("198.51.100.9")]
    )
    assert len({e["event_id"] for e in events}) == 2


async def test_downloads_of_one_link_are_recorded_at_most_20_times_an_hour(
    cfg: StackConfig, store: DocumentStore, publisher: Publisher, signer: LinkSigner, tracker: Tracker
) -> None:
    key, sha = await stored_pdf(store)
    link_id = f"it-{uuid.uuid4().hex[:8]}"
    path = path_of(signer, store, key, sha, link_id=link_id)
    for i in range(25):
        async with client_for(signer, store, publisher, tracker, client_ip=f"198.51.100.{i + 1}") as client:
            assert (await client.get(path)).status_code == 200
    await downloaded_events(cfg, link_id, count=20)
    assert len(await our_downloads(cfg, link_id)) == 20


async def test_forged_and_malformed_links_get_the_same_generic_403(
    store: DocumentStore, publisher: Publisher, signer: LinkSigner, tracker: Tracker
) -> None:
    key, sha = await stored_pdf(store)
    good = path_of(signer, store, key, sha)
    body, sig = good.removeprefix("/d/").split(".")
    tampered = f"/d/{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}.{sig}"
    other_secret = path_of(LinkSigner(b"not-our-secret", "https://x.test", 3600), store, key, sha)
    paths = (tampered, other_secret, "/d/garbage", "/d/a.b")
    async with client_for(signer, store, publisher, tracker) as client:
        responses = [await client.get(p) for p in paths]
    async with client_for(signer, store, publisher, tracker, accept="text/html") as browser:
        pages = [await browser.get(p, headers={"Accept-Language": "es-ES,es;q=0.9"}) for p in paths]
    for response in responses:
        assert response.status_code == 403
        assert response.json() == {"detail": "link invalid or expired"}
        assert response.headers["cache-control"] == "private, no-store"
    assert len({r.content for r in responses}) == 1
    for page in pages:
        assert page.status_code == 403
        assert page.headers["content-type"].startswith("text/html")
        assert "Este enlace no es válido" in page.text
        assert "harinas" not in page.text.lower()  # nothing from the (unverified) token
    assert len({p.content for p in pages}) == 1


async def test_expired_link_gets_a_410_page_in_the_customers_language(
    store: DocumentStore, publisher: Publisher, signer: LinkSigner, tracker: Tracker
) -> None:
    key, sha = await stored_pdf(store)
    long_ago = time.time() - 7200
    portuguese = path_of(signer, store, key, sha, now=long_ago, locale="pt")
    unknown_language = path_of(signer, store, key, sha, now=long_ago)
    async with client_for(signer, store, publisher, tracker, accept="text/html") as browser:
        by_token = await browser.get(portuguese, headers={"Accept-Language": "ro-RO,ro;q=0.9"})
        by_browser = await browser.get(unknown_language, headers={"Accept-Language": "ro-RO,ro;q=0.9"})
    async with client_for(signer, store, publisher, tracker) as api:
        as_json = await api.get(portuguese)
    assert by_token.status_code == by_browser.status_code == as_json.status_code == 410
    assert '<html lang="pt">' in by_token.text and "Este link expirou" in by_token.text
    assert '<html lang="ro">' in by_browser.text and "Acest link a expirat" in by_browser.text
    assert by_token.headers["cache-control"] == "private, no-store"
    assert as_json.json() == {"detail": "link expired"}


async def test_a_link_never_serves_another_tenants_document(
    store: DocumentStore, publisher: Publisher, signer: LinkSigner, tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    key, sha = await stored_pdf(store)  # stored under harinas-sur/
    url = signer.sign(
        tenant_id="panaderia-norte", invoice_id="F-9", bucket=store.bucket, key=key, sha256=sha, channel="email"
    )
    async with client_for(signer, store, publisher, tracker) as client:
        with caplog.at_level(logging.ERROR, logger="factura.renderer.download"):
            response = await client.get(url.removeprefix("https://links.factura.test"))
    assert response.status_code == 403
    assert response.json() == {"detail": "link invalid or expired"}
    assert PDF not in response.content
    assert f"of tenant panaderia-norte names key {key}" in caplog.text


async def test_content_type_follows_the_bytes_not_the_token(
    store: DocumentStore, publisher: Publisher, signer: LinkSigner, tracker: Tracker
) -> None:
    key, sha = await stored_pdf(store)
    async with client_for(signer, store, publisher, tracker) as client:
        as_zip = await client.get(path_of(signer, store, key, sha, content_type="application/zip"))
        as_html = await client.get(path_of(signer, store, key, sha, content_type="text/html"))
    for response in (as_zip, as_html):
        assert response.status_code == 200
        assert response.content == PDF
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["x-content-type-options"] == "nosniff"


async def test_replaced_or_missing_object_is_not_served(
    store: DocumentStore,
    publisher: Publisher,
    signer: LinkSigner,
    tracker: Tracker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key, sha = await stored_pdf(store)
    path = path_of(signer, store, key, sha)
    forged = PDF.replace(b"1 0 obj", b"2 0 obj")
    # only a deliberate replace (an operator, another tool) can change a stored document
    await store.put(
        key,
        forged,
        content_type="application/pdf",
        sha256=hashlib.sha256(forged).hexdigest(),
        metadata={},
        replace=True,
    )
    missing = path_of(signer, store, f"harinas-sur/2026/11/gone-{uuid.uuid4().hex[:6]}.pdf", sha)
    async with client_for(signer, store, publisher, tracker) as client:
        with caplog.at_level(logging.ERROR, logger="factura.renderer.download"):
            changed = await client.get(path)
        gone = await client.get(missing)
    assert changed.status_code == 410
    assert forged not in changed.content
    assert "changed since the link was signed" in caplog.text
    assert gone.status_code == 404
    assert changed.json() == gone.json() == {"detail": "document not available"}


async def test_a_stored_document_is_never_overwritten_so_its_link_keeps_serving_it(
    store: DocumentStore, publisher: Publisher, signer: LinkSigner, tracker: Tracker
) -> None:
    key, sha = await stored_pdf(store)
    other = PDF.replace(b"1 0 obj", b"3 0 obj")
    with pytest.raises(ObjectExists):
        await store.put(
            key, other, content_type="application/pdf", sha256=hashlib.sha256(other).hexdigest(), metadata={}
        )
    assert await store.stored_sha256(key) == sha
    async with client_for(signer, store, publisher, tracker) as client:
        response = await client.get(path_of(signer, store, key, sha))
    assert response.status_code == 200
    assert response.content == PDF


class BrokenPublisher(Publisher):
    """A broker that refuses everything: the download must still succeed."""

    async def publish(self, event: Envelope[Any]) -> None:
        raise ConnectionError("broker down")


async def test_document_is_served_when_publishing_fails(
    cfg: StackConfig, store: DocumentStore, signer: LinkSigner, tracker: Tracker, caplog: pytest.LogCaptureFixture
) -> None:
    key, sha = await stored_pdf(store)
    broken = BrokenPublisher(kafka_settings(cfg), client_id="never-started")
    async with client_for(signer, store, broken, tracker) as client:
        with caplog.at_level(logging.ERROR, logger="factura.renderer.download"):
            response = await client.get(path_of(signer, store, key, sha))
    assert response.status_code == 200
    assert response.content == PDF
    assert "document.downloaded not published" in caplog.text
