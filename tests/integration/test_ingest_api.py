"""The ingest HTTP API on the real broker and MongoDB-wire server: keys, tenants, per-item results,
duplicates, Idempotency-Key, size caps, and the events really on the topics."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from factura.common.apikeys import COLLECTION, ApiKeyStore, Role, authenticator
from factura.common.erp import MAX_MESSAGE_BYTES
from factura.common.http import Health, create_app
from factura.common.mongo import create_client, database
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantDirectory
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack
from factura.ingest.api import router
from factura.ingest.bootstrap import bootstrap
from factura.ingest.handlers import Intake
from factura.ingest.imports.store import IMPORTS
from factura.ingest.settings import Settings
from factura.ingest.versions import IDEMPOTENCY, INVOICES, IdempotencyStore, InvoiceVersions
from tests.api_keys import grant
from tests.conftest import mongo_settings, s3_settings
from tests.kafka_helpers import Bus, isolated
from tests.unit.test_ingest_handlers import NoHistory
from tests.waiting import until_async

pytestmark = pytest.mark.integration
TENANT = "harinas-sur"
OTHER = "otra-empresa"
INVOICE: dict[str, Any] = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))
PAYMENT: dict[str, Any] = json.loads((EXAMPLES_DIR / "erp.payment.v1.json").read_text(encoding="utf-8"))
CANCELLATION: dict[str, Any] = json.loads((EXAMPLES_DIR / "erp.cancellation.v1.json").read_text(encoding="utf-8"))
MAX_BATCH_BYTES = 1024 * 1024  # small, so the test can pass it cheaply; above one Kafka message

#: Request headers per caller, filled in with real keys by the ``api`` fixture.
INGEST: dict[str, str] = {}
ADMIN: dict[str, str] = {}
READER: dict[str, str] = {}
FOREIGN: dict[str, str] = {}


@dataclass
class Setup:
    client: httpx.AsyncClient
    bus: Bus
    keys: ApiKeyStore


@pytest.fixture(scope="module")
async def api(cfg: StackConfig) -> AsyncIterator[Setup]:
    settings = mongo_settings(cfg)
    async with isolated(cfg, client_id="test-ingest-api") as bus, AsyncExitStack() as stack:
        # A short server selection: while MongoDB is down (the outage test) a call answers 503 after
        # 1 s instead of create_client's 5 s; the local server answers at once when it is up.
        mongo = create_client(settings, server_selection_ms=1000)
        stack.push_async_callback(mongo.close)
        db = database(mongo, settings)
        suffix = uuid.uuid4().hex[:6]
        versions = InvoiceVersions(db[f"ingest_invoices_{suffix}"], db[f"ingest_invoice_heads_{suffix}"])
        idempotency = IdempotencyStore(db[f"ingest_idempotency_{suffix}"])
        keys = ApiKeyStore(db[f"{COLLECTION}_{suffix}"])
        for store in (versions, idempotency, keys):
            await store.ensure_indexes()
        await grant(
            keys,
            (
                (INGEST, Role.INGEST, [TENANT]),
                (ADMIN, Role.ADMIN, ["*"]),
                (READER, Role.COMPLIANCE_READER, [TENANT]),
                (FOREIGN, Role.INGEST, [OTHER]),
            ),
        )
        intake = Intake(bus.publisher, TenantDirectory(None), NoHistory(), versions=versions)
        routes = router(intake, versions, idempotency, auth=authenticator(keys), max_batch_bytes=MAX_BATCH_BYTES)
        app = create_app("ingest", Health(), [routes])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
            yield Setup(client, bus, keys)


def invoice(number: str, **changes: Any) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(INVOICE))
    return copy | {"invoice_number": number} | changes


def number() -> str:
    return f"F-{uuid.uuid4().hex[:10]}"


# --- keys and tenants ---------------------------------------------------------------------------------


def requests(invoice_number: str) -> list[tuple[str, str, dict[str, Any] | None, int]]:
    """Every route: method, path, body, the status of a good call."""
    return [
        ("POST", "/v1/invoices", invoice(invoice_number), 202),
        ("POST", "/v1/invoices", {"invoices": [invoice(invoice_number)]}, 200),
        ("POST", "/v1/payments", PAYMENT | {"invoice_number": invoice_number}, 202),
        ("POST", f"/v1/invoices/{invoice_number}/cancel", CANCELLATION | {"invoice_number": invoice_number}, 202),
        ("GET", f"/v1/invoices/{invoice_number}/status?tenant_id={TENANT}", None, 200),
    ]


@pytest.mark.parametrize("route", range(5))
async def test_every_route_checks_key_role_and_tenant(api: Setup, route: int) -> None:
    first = number()
    await api.client.post("/v1/invoices", json=invoice(first), headers=INGEST)  # so status has an answer
    method, path, body, ok = requests(first)[route]

    async def call(headers: dict[str, str]) -> httpx.Response:
        return await api.client.request(method, path, json=body, headers=headers)

    assert (await call({})).status_code == 401
    wrong_role = await call(READER)
    assert wrong_role.status_code == 403 and "role 'compliance-reader'" in wrong_role.json()["detail"]
    foreign = await call(FOREIGN)
    assert foreign.status_code == 403 and TENANT in foreign.json()["detail"]
    answer = await call(INGEST)
    assert answer.status_code == ok, answer.text
    assert (await call(ADMIN)).status_code == ok


async def test_openapi_documents_every_status(api: Setup) -> None:
    paths = (await api.client.get("/openapi.json")).json()["paths"]
    for path in ("/v1/invoices", "/v1/payments", "/v1/invoices/{invoice_id}/cancel"):
        assert {"202", "400", "401", "403", "413", "422", "503"} <= set(paths[path]["post"]["responses"]), path
    assert "200" in paths["/v1/invoices"]["post"]["responses"]
    assert {"200", "401", "403", "404", "503"} <= set(paths["/v1/invoices/{invoice_id}/status"]["get"]["responses"])


# --- invoices -------------------------------------------------------------------------------------------


async def test_an_invoice_is_published_once_and_reported_duplicate_in_any_key_order(api: Setup) -> None:
    first = invoice(number())
    accepted = await api.client.post("/v1/invoices", json=first, headers=INGEST)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "accepted"
    reordered = json.dumps(dict(reversed(list(first.items()))))
    again = await api.client.post(
        "/v1/invoices", content=reordered, headers=INGEST | {"Content-Type": "application/json"}
    )
    assert again.status_code == 202
    assert again.json() == {"status": "duplicate", "event_id": accepted.json()["event_id"]}

    created = [e for e in await api.bus.events("invoice.created") if e.invoice_id == first["invoice_number"]]
    assert {str(e.event_id) for e in created} == {accepted.json()["event_id"]}
    assert created[0].tenant_id == TENANT and created[0].producer == "ingest"

    status = await api.client.get(f"/v1/invoices/{first['invoice_number']}/status?tenant_id={TENANT}", headers=INGEST)
    assert status.status_code == 200
    [version] = status.json()["versions"]
    assert version["event_id"] == accepted.json()["event_id"] and version["source"] == "http:/v1/invoices"


async def test_an_invalid_invoice_is_422_with_field_errors_and_rejected_on_record(api: Setup) -> None:
    bad = invoice(number(), currency="EURO")
    bad["customer"]["name"] = "Lucía\r\nBcc: x@example.com"
    answer = await api.client.post("/v1/invoices", json=bad, headers=INGEST)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["status"] == "rejected"
    assert {e["field"] for e in body["errors"]} == {"currency", "customer.name"}
    rejected = [e for e in await api.bus.events("invoice.rejected") if str(e.event_id) == body["event_id"]]
    assert [(e.tenant_id, e.invoice_id, e.data.source_topic) for e in rejected] == [
        (TENANT, bad["invoice_number"], "http:/v1/invoices")
    ]
    assert [r.field for r in rejected[0].data.reasons] == [e["field"] for e in body["errors"]]


async def test_a_batch_answers_per_item_and_the_good_ones_go_through(api: Setup) -> None:
    good, twice = number(), number()
    items = [
        invoice(good),
        invoice(number(), currency="EURO"),
        "not an invoice",
        invoice(twice),
        invoice(twice),
        {"tenant_id": TENANT},
    ]
    answer = await api.client.post("/v1/invoices", json={"invoices": items}, headers=INGEST)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 3)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["status"] for r in results] == ["accepted", "rejected", "rejected", "accepted", "duplicate", "rejected"]
    assert [e["field"] for e in results[1]["errors"]] == ["currency"]
    assert results[2]["errors"][0]["field"] == "$"
    assert results[3]["event_id"] == results[4]["event_id"]
    assert "errors" not in results[0]

    created = {str(e.event_id) for e in await api.bus.events("invoice.created")}
    assert {results[0]["event_id"], results[3]["event_id"]} <= created
    rejected = {str(e.event_id) for e in await api.bus.events("invoice.rejected")}
    assert {results[i]["event_id"] for i in (1, 2, 5)} <= rejected


async def test_other_content_under_an_accepted_number_is_a_409_conflict_on_record(api: Setup) -> None:
    name = number()
    first = await api.client.post("/v1/invoices", json=invoice(name), headers=INGEST)
    assert first.status_code == 202, first.text
    other = await api.client.post("/v1/invoices", json=invoice(name, due_date="2026-12-31"), headers=INGEST)
    assert other.status_code == 409, other.text
    body = other.json()
    assert body["status"] == "conflict"
    [error] = body["errors"]
    assert error["field"] == "invoice_number" and first.json()["event_id"] in error["message"]
    assert '"amendment": true' in error["message"]

    [refusal] = [e for e in await api.bus.events("invoice.rejected") if str(e.event_id) == body["event_id"]]
    assert (refusal.schema_version, refusal.data.reason, refusal.invoice_id) == (2, "conflict", name)
    created = [e for e in await api.bus.events("invoice.created") if e.invoice_id == name]
    assert [str(e.event_id) for e in created] == [first.json()["event_id"]]


async def test_an_amendment_replaces_the_version_and_a_late_copy_of_the_old_one_changes_nothing(api: Setup) -> None:
    name = number()
    v1 = await api.client.post("/v1/invoices", json=invoice(name), headers=INGEST)
    v2 = await api.client.post(
        "/v1/invoices", json=invoice(name, due_date="2026-12-31", amendment=True), headers=INGEST
    )
    assert (v1.status_code, v2.status_code) == (202, 202), v2.text
    assert v2.json()["status"] == "accepted" and v2.json()["event_id"] != v1.json()["event_id"]
    late = await api.client.post("/v1/invoices", json=invoice(name), headers=INGEST)
    assert late.json() == {"status": "duplicate", "event_id": v1.json()["event_id"]}
    # The amendment flag is not content: the amended version sent again without it is a duplicate.
    again = await api.client.post("/v1/invoices", json=invoice(name, due_date="2026-12-31"), headers=INGEST)
    assert again.json() == {"status": "duplicate", "event_id": v2.json()["event_id"]}
    third = await api.client.post("/v1/invoices", json=invoice(name, due_date="2027-01-15"), headers=INGEST)
    assert third.status_code == 409  # the number's current version is v2 now; other content is still a conflict

    created = [str(e.event_id) for e in await api.bus.events("invoice.created") if e.invoice_id == name]
    assert set(created) == {v1.json()["event_id"], v2.json()["event_id"]}
    assert created.count(v1.json()["event_id"]) == 1  # the late v1 was not published again after v2


async def test_two_requests_racing_with_different_contents_one_wins_the_number(api: Setup) -> None:
    """The first content claims the number atomically (an insert on its _id), so two doors sending
    different contents at the same moment cannot both be accepted."""
    for _ in range(5):
        name = number()
        answers = await asyncio.gather(
            api.client.post("/v1/invoices", json=invoice(name), headers=INGEST),
            api.client.post("/v1/invoices", json=invoice(name, due_date="2026-12-31"), headers=INGEST),
        )
        assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]


async def test_a_batch_reports_a_conflict_per_item(api: Setup) -> None:
    name = number()
    assert (await api.client.post("/v1/invoices", json=invoice(name), headers=INGEST)).status_code == 202
    items = [invoice(name, due_date="2026-12-31"), invoice(number())]
    body = (await api.client.post("/v1/invoices", json={"invoices": items}, headers=INGEST)).json()
    assert [r["status"] for r in body["results"]] == ["conflict", "accepted"]
    assert (body["accepted"], body["conflicts"], body["rejected"]) == (1, 1, 0)
    assert body["results"][0]["errors"][0]["field"] == "invoice_number"


async def test_a_batch_with_a_foreign_tenant_is_refused_whole(api: Setup) -> None:
    items = [invoice(number()), invoice(number(), tenant_id=OTHER)]
    answer = await api.client.post("/v1/invoices", json={"invoices": items}, headers=INGEST)
    assert answer.status_code == 403 and OTHER in answer.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1]", b'{"invoices": [1], "extra": 2}', b'{"invoices": []}', b"\xff"],
)
async def test_a_body_that_is_no_record_is_400(api: Setup, body: bytes) -> None:
    answer = await api.client.post("/v1/invoices", content=body, headers=INGEST)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"]


async def test_a_batch_of_more_than_1000_is_400(api: Setup) -> None:
    answer = await api.client.post("/v1/invoices", json={"invoices": [{}] * 1001}, headers=INGEST)
    assert answer.status_code == 400 and "1000" in answer.json()["detail"]


# --- size caps ---------------------------------------------------------------------------------------------


async def test_bodies_past_the_caps_are_413(api: Setup) -> None:
    huge_invoice = invoice(number(), padding="x" * MAX_MESSAGE_BYTES)
    single = await api.client.post("/v1/invoices", json=huge_invoice, headers=INGEST)
    assert single.status_code == 413
    payment = await api.client.post("/v1/payments", json=PAYMENT | {"padding": "x" * MAX_MESSAGE_BYTES}, headers=INGEST)
    assert payment.status_code == 413
    batch = {"invoices": [invoice(number(), padding="x" * 400_000) for _ in range(3)]}
    assert (await api.client.post("/v1/invoices", json=batch, headers=INGEST)).status_code == 413


async def test_a_body_without_content_length_is_cut_off_at_the_cap(api: Setup) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"invoices": ["'
        for _ in range(150):
            yield b"x" * 10_000

    answer = await api.client.post("/v1/invoices", content=chunks(), headers=INGEST)
    assert "content-length" not in answer.request.headers
    assert answer.status_code == 413


async def test_an_item_larger_than_a_kafka_message_is_rejected_alone(api: Setup) -> None:
    big = invoice(number(), padding="x" * MAX_MESSAGE_BYTES)
    answer = await api.client.post("/v1/invoices", json={"invoices": [invoice(number()), big]}, headers=INGEST)
    assert answer.status_code == 200  # the batch is within its cap
    good, refused = answer.json()["results"]
    assert (good["status"], refused["status"]) == ("accepted", "rejected")
    assert refused["errors"][0]["field"] == "$" and str(MAX_MESSAGE_BYTES) in refused["errors"][0]["message"]


# --- Idempotency-Key ----------------------------------------------------------------------------------------


async def test_idempotency_key_replays_the_first_answer_and_refuses_another_body(api: Setup) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    bad = invoice(number(), currency="EURO")
    first = await api.client.post("/v1/invoices", json=bad, headers=INGEST | key)
    assert first.status_code == 422
    replay = await api.client.post("/v1/invoices", json=bad, headers=INGEST | key)
    assert (replay.status_code, replay.json()) == (422, first.json())
    assert replay.headers["Idempotent-Replayed"] == "true"

    other = await api.client.post("/v1/invoices", json=invoice(number()), headers=INGEST | key)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]

    batch_key = {"Idempotency-Key": f"b-{uuid.uuid4()}"}
    batch = {"invoices": [invoice(number())]}
    first_batch = await api.client.post("/v1/invoices", json=batch, headers=INGEST | batch_key)
    again = await api.client.post("/v1/invoices", json=batch, headers=INGEST | batch_key)
    assert first_batch.json()["results"][0]["status"] == "accepted"
    assert (again.status_code, again.json()) == (200, first_batch.json())  # not "duplicate": the first answer


async def test_idempotency_keys_are_per_tenant(api: Setup) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    mine = await api.client.post("/v1/invoices", json=invoice(number()), headers=INGEST | key)
    theirs = await api.client.post("/v1/invoices", json=invoice(number(), tenant_id=OTHER), headers=FOREIGN | key)
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["event_id"] != theirs.json()["event_id"]


@pytest.mark.parametrize("key", ["x" * 201, "tab\there", ""])
async def test_an_unusable_idempotency_key_is_400(api: Setup, key: str) -> None:
    answer = await api.client.post("/v1/invoices", json=invoice(number()), headers=INGEST | {"Idempotency-Key": key})
    assert answer.status_code == 400 and "Idempotency-Key" in answer.json()["detail"]


# --- payments, cancellations, status -----------------------------------------------------------------------


async def test_payment_and_cancellation_are_published(api: Setup) -> None:
    slashed = f"F/{uuid.uuid4().hex[:8]}"
    payment = await api.client.post(
        "/v1/payments", json=PAYMENT | {"payment_id": f"P-{slashed}", "invoice_number": slashed}, headers=INGEST
    )
    assert payment.status_code == 202, payment.text
    cancel_body = {k: v for k, v in CANCELLATION.items() if k != "invoice_number"}
    cancelled = await api.client.post(f"/v1/invoices/{slashed}/cancel", json=cancel_body, headers=INGEST)
    assert cancelled.status_code == 202, cancelled.text
    mismatch = await api.client.post(
        f"/v1/invoices/{slashed}/cancel", json=cancel_body | {"invoice_number": "F-other"}, headers=INGEST
    )
    assert mismatch.status_code == 422
    assert [e["field"] for e in mismatch.json()["errors"]] == ["invoice_number"]
    [refusal] = [e for e in await api.bus.events("invoice.rejected") if str(e.event_id) == mismatch.json()["event_id"]]
    assert refusal.data.source_topic == "http:/v1/invoices/{invoice_id:path}/cancel"  # the route, not the path

    [paid] = [e for e in await api.bus.events("payment.received") if e.invoice_id == slashed]
    assert str(paid.event_id) == payment.json()["event_id"]
    [cancel_event] = [e for e in await api.bus.events("invoice.cancelled") if e.invoice_id == slashed]
    assert str(cancel_event.event_id) == cancelled.json()["event_id"] and cancel_event.data.kind == "credit_note"


async def test_status_is_404_alike_for_unknown_and_other_tenants_invoices(api: Setup) -> None:
    theirs = number()
    assert (
        await api.client.post("/v1/invoices", json=invoice(theirs, tenant_id=OTHER), headers=FOREIGN)
    ).status_code == 202
    assert (await api.client.get(f"/v1/invoices/{theirs}/status?tenant_id={OTHER}", headers=FOREIGN)).status_code == 200
    elsewhere = await api.client.get(f"/v1/invoices/{theirs}/status?tenant_id={TENANT}", headers=INGEST)
    nowhere = await api.client.get(f"/v1/invoices/{number()}/status?tenant_id={TENANT}", headers=INGEST)
    assert (elsewhere.status_code, elsewhere.json()) == (nowhere.status_code, nowhere.json())
    assert nowhere.status_code == 404


async def test_status_lists_every_accepted_version_in_order(api: Setup) -> None:
    name = number()
    first = await api.client.post("/v1/invoices", json=invoice(name), headers=INGEST)
    corrected = invoice(name, due_date="2026-12-31", amendment=True)
    second = await api.client.post("/v1/invoices", json=corrected, headers=INGEST)
    assert second.status_code == 202, second.text
    assert first.json()["event_id"] != second.json()["event_id"]
    status = (await api.client.get(f"/v1/invoices/{name}/status?tenant_id={TENANT}", headers=INGEST)).json()
    assert [v["event_id"] for v in status["versions"]] == [first.json()["event_id"], second.json()["event_id"]]


# --- wiring -----------------------------------------------------------------------------------------------


async def test_bootstrap_serves_the_api_and_creates_indexes_in_the_background(cfg: StackConfig) -> None:
    settings = mongo_settings(cfg)
    async with isolated(cfg, client_id="test-ingest-wiring") as bus, AsyncExitStack() as stack:
        service = Settings(kafka=bus.settings, mongo=settings, s3=s3_settings(cfg))
        wiring = await bootstrap(service, bus.publisher, stack)
        paths = {getattr(route, "path", "") for api_router in wiring.routers for route in api_router.routes}
        assert {
            "/v1/invoices",
            "/v1/payments",
            "/v1/invoices/{invoice_id:path}/status",
            "/v1/documents",
            "/v1/imports",
            "/v1/imports/{import_id}",
        } <= paths
        db = database(create_client(settings), settings)
        stack.push_async_callback(db.client.close)

        async def indexed() -> bool:
            names = [set(await db[c].index_information()) for c in (INVOICES, IDEMPOTENCY, COLLECTION, IMPORTS)]
            return all(len(n) > 1 for n in names)

        stopping = asyncio.Event()
        assert len(wiring.tasks) == 2  # the indexes and the import worker; the SFTP drop is off by default
        running = [asyncio.create_task(task(stopping)) for task in wiring.tasks]
        await until_async(indexed)
        assert not any(t.done() for t in running)  # a background task that ended would stop the service
        stopping.set()
        await asyncio.wait_for(asyncio.gather(*running), 10)


async def test_mongodb_down_answers_503_and_the_retried_call_goes_through_once(api: Setup, infra: Stack) -> None:
    """The real MongoDB-wire server stopped: keys cannot be checked and versions not kept, so the
    caller is told to retry (503, Retry-After), never refused; once it is back, the retry is accepted."""
    fresh, _ = await api.keys.create(Role.INGEST, [TENANT], "outage test", "test")  # never verified: not cached
    headers = {"Authorization": f"Bearer {fresh}"}
    body = invoice(number())
    await asyncio.to_thread(infra.stop_server, "mongo")
    try:
        down = await api.client.post("/v1/invoices", json=body, headers=headers)
    finally:
        await asyncio.to_thread(infra.start_server, "mongo")
    assert down.status_code == 503 and int(down.headers["retry-after"]) > 0, down.text
    again = await api.client.post("/v1/invoices", json=body, headers=headers)
    assert again.status_code == 202 and again.json()["status"] == "accepted", again.text
    created = [e for e in await api.bus.events("invoice.created") if e.invoice_id == body["invoice_number"]]
    assert [str(e.event_id) for e in created] == [again.json()["event_id"]]
