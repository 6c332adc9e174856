"""The compliance API on the real MongoDB-wire server, records written by the chain writer.

Every endpoint is called without a key, with a role that may not read, for a tenant out of the
key's scope, and as it should be; bad input of every kind gets a 4xx naming the problem.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Request

from factura.audit.api import router
from factura.audit.chain import ChainWriter
from factura.audit.queries import Cursors
from factura.audit.records import FIELDS, NewRecord, canonical
from factura.audit.store import AuditDb
from factura.audit.verify import export_chain, verify_chain
from factura.common.apikeys import ALL_TENANTS, COLLECTION, ApiKeyStore, Role, authenticator
from factura.common.http import Health, create_app
from factura.common.mongo import create_client, database
from factura.devstack.config import StackConfig
from tests.conftest import mongo_settings

pytestmark = pytest.mark.integration

TENANT = "acme-a"
OTHER = "other-b"
CURSOR_KEY = b"cursor-key-for-tests-only-000000"
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
SLASHED = "INV/2025/001"
PERCENT = "INV%2F003"  # a literal "%2F" in the id
PAGED = "INV-PAGE"
EXPORT_ROWS = 1_100


# --- records ------------------------------------------------------------------------------------


def event(
    tenant: str,
    invoice: str | None,
    type: str,
    *,
    minutes: int,
    outcome: str | None = None,
    channel: str | None = None,
    purpose: str | None = None,
    reason: str | None = None,
    customer: str | None = "C1",
) -> NewRecord:
    event_id = str(uuid.uuid4())
    occurred = T0 + timedelta(minutes=minutes)
    envelope = {
        "event_id": event_id,
        "type": type,
        "schema_version": 1,
        "occurred_at": occurred.isoformat(),
        "tenant_id": tenant,
        "invoice_id": invoice,
        "correlation_id": f"corr-{invoice}",
        "causation_id": None,
        "producer": "test",
        "data": {"channel": channel, "reason": reason},
    }
    fields: dict[str, Any] = {
        "kind": "event",
        "type": type,
        "schema_version": 1,
        "invoice_id": invoice,
        "customer_id": customer,
        "channel": channel,
        "purpose": purpose,
        "outcome": outcome,
        "reason": reason,
        "occurred_at": occurred,
        "recorded_at": occurred + timedelta(seconds=1),
        "day": occurred.date().isoformat(),
        "class": "fiscal",
        "source": f"t/0/{minutes}",
    }
    assert set(fields) == set(FIELDS)
    return NewRecord(id=event_id, tenant_id=tenant, fields=fields, raw=json.dumps(envelope))


def dead_letter(tenant: str, invoice: str, *, minutes: int) -> NewRecord:
    occurred = T0 + timedelta(minutes=minutes)
    error = 'Traceback (most recent call last):\n  File "/srv/renderer/pipeline.py", line 9\nValueError: boom\n'
    raw = {"service": "renderer", "source_topic": "invoice.created", "error": error, "attempts": 3, "body": "{}"}
    fields = {name: None for name in FIELDS} | {
        "kind": "dead_letter",
        "type": "dead_letter",
        "invoice_id": invoice,
        "outcome": "dead_lettered",
        "reason": "bug",
        "occurred_at": occurred,
        "recorded_at": occurred,
        "day": occurred.date().isoformat(),
        "class": "fiscal",
        "source": "invoice.created/0/7",
    }
    return NewRecord(id=f"dlq:renderer:{minutes}", tenant_id=tenant, fields=fields, raw=canonical(raw))


def attempt(tenant: str, invoice: str, type: str, minutes: int, outcome: str, **fields: Any) -> NewRecord:
    """A delivery outcome of the invoice itself (purpose ``invoice``, unless ``fields`` says otherwise)."""
    return event(tenant, invoice, type, minutes=minutes, outcome=outcome, **({"purpose": "invoice"} | fields))


REMINDER = "reminder:after-3"


def history() -> list[NewRecord]:
    failed, done = "delivery.failed", "delivery.succeeded"
    records = [
        event(TENANT, SLASHED, "invoice.created", minutes=0, outcome="pending"),
        event(TENANT, SLASHED, "invoice.rendered", minutes=1, outcome="pending", purpose="invoice"),
        attempt(TENANT, SLASHED, failed, 2, "failed", channel="email", reason="hard_bounce"),
        attempt(TENANT, SLASHED, failed, 3, "failed", channel="sms", reason="not_mobile"),
        attempt(TENANT, SLASHED, "delivery.exhausted", 4, "exhausted"),
        attempt(TENANT, "INV-002", failed, 5, "failed", channel="email", reason="soft_bounce", customer="C2"),
        attempt(TENANT, "INV-002", done, 60 * 30, "delivered", channel="sms", customer="C2"),
        event(TENANT, PERCENT, "invoice.created", minutes=6, outcome="pending"),
        attempt(TENANT, "INV-004", failed, 7, "failed", channel="email", reason="hard_bounce", purpose=REMINDER),
        event(TENANT, "=1+1", "invoice.created", minutes=8, outcome="pending", customer="@evil"),
        dead_letter(TENANT, "INV-005", minutes=9),
        event(OTHER, "INV-ELSEWHERE", "invoice.created", minutes=0, outcome="pending"),
        attempt(OTHER, "INV-002", failed, 1, "failed", channel="email", reason="hard_bounce"),
    ]
    records += [event(TENANT, PAGED, "document.downloaded", minutes=10 + i, channel="email") for i in range(7)]
    return records


# --- the app --------------------------------------------------------------------------------------


@dataclass
class Accesses:
    calls: list[tuple[str | None, str, str, int]] = field(default_factory=list)

    async def __call__(self, principal: Any, request: Request, status: int) -> None:
        key = principal.key_id if principal is not None else None
        self.calls.append((key, request.url.path, request.url.query, status))


@dataclass
class Setup:
    client: httpx.AsyncClient
    accesses: Accesses
    db: AuditDb
    key_ids: dict[str, str]  # who -> key id


#: Request headers per caller, filled in with real keys by the ``api`` fixture.
READER: dict[str, str] = {}
ADMIN: dict[str, str] = {}
WRONG_ROLE: dict[str, str] = {}


@pytest.fixture(scope="module")
async def api(cfg: StackConfig) -> AsyncIterator[Setup]:
    settings = mongo_settings(cfg)
    mongo = create_client(settings)
    db = AuditDb.of(database(mongo, settings), prefix=f"a{uuid.uuid4().hex[:6]}_")
    await db.ensure_indexes()
    writer = ChainWriter(db.records, db.tombstones)
    await writer.append(history())
    export_events = [
        event("bulk-c", f"INV-{i:05d}", "invoice.created", minutes=i, outcome="pending", customer="=cmd")
        for i in range(EXPORT_ROWS)
    ]
    for start in range(0, EXPORT_ROWS, 500):
        await writer.append(export_events[start : start + 500])
    keys = ApiKeyStore(database(mongo, settings)[f"{COLLECTION}_{uuid.uuid4().hex[:6]}"])
    key_ids = {}
    for who, headers, role, tenants in (
        ("reader", READER, Role.COMPLIANCE_READER, [TENANT]),
        ("admin", ADMIN, Role.ADMIN, [ALL_TENANTS]),
        ("ingest", WRONG_ROLE, Role.INGEST, [TENANT]),
    ):
        plaintext, record = await keys.create(role, tenants, f"{who} key", "test")
        headers["Authorization"] = f"Bearer {plaintext}"
        key_ids[who] = record.key_id
    public = Ed25519PrivateKey.generate().public_key()
    accesses = Accesses()
    routes = router(
        db,
        auth=authenticator(keys),
        cursor_key=CURSOR_KEY,
        on_access=accesses,
        verify=lambda tenant: verify_chain(db, tenant, public),
        export_chain=lambda tenant, first, last: export_chain(db, tenant, public, first, last),
    )
    app = create_app("audit", Health(), [routes])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://audit") as client:
        yield Setup(client, accesses, db, key_ids)
    await mongo.close()


# --- every endpoint x every kind of caller -----------------------------------------------------------

ENDPOINTS = [
    f"/v1/invoices/{SLASHED}/timeline",
    "/v1/records",
    "/v1/exports/records.csv",
    "/v1/exports/records.ndjson",
    "/v1/reports/not-delivered",
    "/v1/reports/counts?from_day=2025-03-01&to_day=2025-03-02",
    "/v1/dead-letters",
    "/v1/verify",
    "/v1/chain/export",
]


def with_tenant(path: str, tenant: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}tenant_id={tenant}"


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_every_endpoint_checks_key_role_and_scope(api: Setup, path: str) -> None:
    client = api.client
    unauthenticated = await client.get(with_tenant(path, TENANT))
    assert unauthenticated.status_code == 401, unauthenticated.text
    wrong_role = await client.get(with_tenant(path, TENANT), headers=WRONG_ROLE)
    assert wrong_role.status_code == 403
    assert "role 'ingest'" in wrong_role.json()["detail"]
    foreign = await client.get(with_tenant(path, OTHER), headers=READER)
    assert foreign.status_code == 403
    assert OTHER in foreign.json()["detail"]
    ok = await client.get(with_tenant(path, TENANT), headers=READER)
    assert ok.status_code == 200, ok.text
    admin = await client.get(with_tenant(path, OTHER), headers=ADMIN)
    assert admin.status_code in (200, 404)  # an admin reads every tenant (OTHER has no such invoice)
    route = path.split("?", maxsplit=1)[0]
    calls = [(key, status) for key, p, _, status in api.accesses.calls if p == route]
    ids = api.key_ids
    assert calls[-5:] == [
        (None, 401),
        (ids["ingest"], 403),
        (ids["reader"], 403),
        (ids["reader"], 200),
        (ids["admin"], admin.status_code),
    ]


async def test_openapi_documents_every_status_a_route_returns(api: Setup) -> None:
    schema = (await api.client.get("/openapi.json")).json()
    for path, operations in schema["paths"].items():
        responses = operations["get"]["responses"]
        if path.startswith("/v1/"):
            assert {"200", "400", "401", "403", "422"} <= set(responses), path
    assert set(schema["paths"]["/v1/invoices/{invoice_id}/timeline"]["get"]["responses"]) >= {"404"}
    assert list(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert "503" in schema["paths"]["/readyz"]["get"]["responses"]
    assert "503" in schema["paths"]["/livez"]["get"]["responses"]
    assert list(schema["paths"]["/v1/exports/records.csv"]["get"]["responses"]["200"]["content"]) == ["text/csv"]
    assert list(schema["paths"]["/v1/exports/records.csv"]["get"]["responses"]["403"]["content"]) == [
        "application/json"
    ]


# --- timeline -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", [SLASHED, SLASHED.replace("/", "%2F"), "INV/2025%2F001"])
async def test_timeline_of_an_invoice_id_with_slashes(api: Setup, spelling: str) -> None:
    response = await api.client.get(f"/v1/invoices/{spelling}/timeline?tenant_id={TENANT}", headers=READER)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["invoice_id"] == SLASHED
    entries = body["entries"]
    assert [e["type"] for e in entries] == [
        "invoice.created",
        "invoice.rendered",
        "delivery.failed",
        "delivery.failed",
        "delivery.exhausted",
    ]
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs)
    failed = entries[2]
    assert (failed["channel"], failed["reason"], failed["outcome"], failed["purpose"]) == (
        "email",
        "hard_bounce",
        "failed",
        "invoice",
    )
    assert failed["producer"] == "test"
    assert failed["correlation_id"] == f"corr-{SLASHED}"
    assert failed["data"] == {"channel": "email", "reason": "hard_bounce"}
    assert len(failed["hash"]) == 64
    assert entries[1]["prev"] == entries[0]["hash"]


async def test_timeline_of_an_id_holding_a_literal_percent_2f(api: Setup) -> None:
    response = await api.client.get(f"/v1/invoices/INV%252F003/timeline?tenant_id={TENANT}", headers=READER)
    assert response.status_code == 200, response.text
    assert response.json()["invoice_id"] == PERCENT
    assert [e["type"] for e in response.json()["entries"]] == ["invoice.created"]
    # "%2F" decoded is "/", which is another invoice
    other = await api.client.get(f"/v1/invoices/INV%2F003/timeline?tenant_id={TENANT}", headers=READER)
    assert other.status_code == 404


async def test_timeline_404_does_not_tell_elsewhere_from_nowhere(api: Setup) -> None:
    elsewhere = await api.client.get(f"/v1/invoices/INV-ELSEWHERE/timeline?tenant_id={TENANT}", headers=ADMIN)
    nowhere = await api.client.get(f"/v1/invoices/INV-NOWHERE/timeline?tenant_id={TENANT}", headers=ADMIN)
    unknown_tenant = await api.client.get("/v1/invoices/INV-ELSEWHERE/timeline?tenant_id=no-such-tenant", headers=ADMIN)
    assert elsewhere.status_code == nowhere.status_code == unknown_tenant.status_code == 404
    assert elsewhere.json() == nowhere.json() == unknown_tenant.json()
    shown = await api.client.get(f"/v1/invoices/INV-ELSEWHERE/timeline?tenant_id={OTHER}", headers=ADMIN)
    assert shown.status_code == 200


async def test_timeline_pages_in_chain_order(api: Setup) -> None:
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        query = f"tenant_id={TENANT}&limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = (await api.client.get(f"/v1/invoices/{PAGED}/timeline?{query}", headers=READER)).json()
        seen += [e["seq"] for e in body["entries"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == 7
    assert seen == sorted(seen)
    assert len(set(seen)) == 7


# --- search ----------------------------------------------------------------------------------------


async def search(api: Setup, query: str, headers: dict[str, str] = READER) -> httpx.Response:
    return await api.client.get(f"/v1/records?tenant_id={TENANT}&{query}", headers=headers)


async def test_search_filters_newest_first(api: Setup) -> None:
    failed = (await search(api, "status=failed")).json()["records"]
    assert [(r["invoice_id"], r["reason"]) for r in failed] == [
        ("INV-004", "hard_bounce"),
        ("INV-002", "soft_bounce"),
        (SLASHED, "not_mobile"),
        (SLASHED, "hard_bounce"),
    ]
    assert [r["seq"] for r in failed] == sorted((r["seq"] for r in failed), reverse=True)
    by_customer = (await search(api, "customer_id=C2")).json()["records"]
    assert {r["invoice_id"] for r in by_customer} == {"INV-002"}
    sms = (await search(api, "channel=sms&status=delivered")).json()["records"]
    assert [r["invoice_id"] for r in sms] == ["INV-002"]
    reminders = (await search(api, "purpose=reminder:after-3")).json()["records"]
    assert [r["invoice_id"] for r in reminders] == ["INV-004"]
    typed = (await search(api, f"type=delivery.exhausted&invoice_id={SLASHED}")).json()["records"]
    assert [r["type"] for r in typed] == ["delivery.exhausted"]
    letters = (await search(api, "status=dead_lettered")).json()["records"]
    assert [r["kind"] for r in letters] == ["dead_letter"]
    window = (await search(api, "from=2025-03-01T09:02:00Z&to=2025-03-01T09:04:00%2B00:00")).json()["records"]
    assert [r["type"] for r in window] == ["delivery.failed", "delivery.failed"]
    naive = (await search(api, "from=2025-03-01T09:02:00&to=2025-03-01T09:04:00")).json()["records"]
    assert naive == window


async def test_search_pages_with_a_cursor_bound_to_its_filters(api: Setup) -> None:
    first = (await search(api, "status=failed&limit=3")).json()
    assert len(first["records"]) == 3
    cursor = first["next_cursor"]
    second = (await search(api, f"status=failed&limit=3&cursor={cursor}")).json()
    assert len(second["records"]) == 1
    assert second["next_cursor"] is None
    assert second["records"][0]["seq"] < first["records"][-1]["seq"]
    other_filter = await search(api, f"status=paid&limit=3&cursor={cursor}")
    assert other_filter.status_code == 400
    assert "invalid cursor" in other_filter.json()["detail"]
    other_tenant = await api.client.get(f"/v1/records?tenant_id={OTHER}&status=failed&cursor={cursor}", headers=ADMIN)
    assert other_tenant.status_code == 400
    timeline_cursor = await api.client.get(
        f"/v1/invoices/{SLASHED}/timeline?tenant_id={TENANT}&cursor={cursor}", headers=READER
    )
    assert timeline_cursor.status_code == 400


async def test_an_unknown_tenant_has_empty_answers(api: Setup) -> None:
    for path in ("/v1/records", "/v1/reports/not-delivered", "/v1/dead-letters"):
        response = await api.client.get(f"{path}?tenant_id=no-such-tenant", headers=ADMIN)
        assert response.status_code == 200
        assert all(v == [] for v in response.json().values() if isinstance(v, list))


async def test_access_records_only_when_asked(api: Setup) -> None:
    records = (await search(api, "limit=1000")).json()["records"]
    assert all(r["kind"] != "access" for r in records)
    assert (await search(api, "kind=access")).status_code == 200


# --- bad input ----------------------------------------------------------------------------------


def forged_cursor() -> str:
    payload = base64.urlsafe_b64encode(b'{"t":"acme-a","f":"x","p":1}').rstrip(b"=").decode()
    return f"{payload}.{'A' * 43}"


@pytest.mark.parametrize(
    ("query", "status", "names"),
    [
        ("limit=0", 422, "limit"),
        ("limit=1001", 422, "limit"),
        (f"limit={10**9}", 422, "limit"),
        (f"limit={10**40}", 422, "limit"),
        ("limit=abc", 422, "limit"),
        ("from=yesterday", 422, "from"),
        ("from=2025-13-45T00:00:00Z", 422, "from"),
        ("from=9999-12-31T23:59:59-05:00", 422, "from"),
        ("from=2025-03-02T00:00:00Z&to=2025-03-01T00:00:00Z", 422, "to"),
        ("status=lost", 422, "status"),
        ("status=%7B%22%24ne%22%3A%22x%22%7D", 422, "status"),
        ("channel=%7B%22%24ne%22%3Anull%7D", 422, "channel"),
        ("customer_id=" + "x" * 201, 422, "customer_id"),
        ("customer_id=a%00b", 422, "customer_id"),
        ("cursor=garbage", 400, "invalid cursor"),
        (f"cursor={forged_cursor()}", 400, "invalid cursor"),
        ("cursor=" + "A" * 2000, 422, "cursor"),
        ("cursor=%C3%BC.%C3%BC", 400, "invalid cursor"),
        ("tenant_id%5B%24ne%5D=x", 400, "tenant_id[$ne]"),
        ("customer_id%5B%24where%5D=1", 400, "customer_id[$where]"),
        ("customer_id=C1&customer_id=C2", 400, "customer_id"),
        ("statuss=failed", 400, "statuss"),
    ],
)
async def test_bad_search_input_is_a_clear_4xx(api: Setup, query: str, status: int, names: str) -> None:
    response = await search(api, query)
    assert response.status_code == status, response.text
    assert names in json.dumps(response.json())


async def test_repeated_tenant_is_refused_naming_it(api: Setup) -> None:
    response = await api.client.get(f"/v1/records?tenant_id={TENANT}&tenant_id={OTHER}", headers=ADMIN)
    assert response.status_code == 400
    assert response.json()["detail"] == "query parameter 'tenant_id' given 2 times; give it once"


@pytest.mark.parametrize("tenant", ["", "A", "x" * 80, "acme_a", "ácme", "acme-a%00", '{"$ne":null}'])
async def test_invalid_tenants_are_422(api: Setup, tenant: str) -> None:
    response = await api.client.get("/v1/records", params={"tenant_id": tenant}, headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "tenant_id"]


async def test_smuggled_operators_match_only_literal_text(api: Setup) -> None:
    for value in ('{"$ne": null}', "$where", '{"$gt": ""}', "this.seq > 0"):
        response = await api.client.get(
            "/v1/records", params={"tenant_id": TENANT, "customer_id": value}, headers=READER
        )
        assert response.status_code == 200
        assert response.json()["records"] == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/invoices//timeline",
        "/v1/invoices/" + "x" * 201 + "/timeline",
        "/v1/invoices/a%00b/timeline",
    ],
)
async def test_bad_invoice_ids_are_422(api: Setup, path: str) -> None:
    response = await api.client.get(f"{path}?tenant_id={TENANT}", headers=READER)
    assert response.status_code == 422


async def test_unicode_invoice_id_is_just_absent(api: Setup) -> None:
    response = await api.client.get(f"/v1/invoices/FACTURĂ-ü/1/timeline?tenant_id={TENANT}", headers=READER)
    assert response.status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        "from_day=2025-03-02&to_day=2025-03-01",
        "from_day=2024-01-01&to_day=2025-03-01",
        "from_day=March&to_day=2025-03-01",
        "to_day=2025-03-01",
    ],
)
async def test_bad_count_ranges_are_422(api: Setup, query: str) -> None:
    response = await api.client.get(f"/v1/reports/counts?tenant_id={TENANT}&{query}", headers=READER)
    assert response.status_code == 422


# --- reports ----------------------------------------------------------------------------------------


async def test_not_delivered_report(api: Setup) -> None:
    body = (await api.client.get(f"/v1/reports/not-delivered?tenant_id={TENANT}", headers=READER)).json()
    invoices = body["invoices"]
    assert [i["invoice_id"] for i in invoices] == [SLASHED]  # INV-002 was delivered later; INV-004 is a reminder
    only = invoices[0]
    assert only["channels"] == ["email", "sms"]
    assert only["reasons"] == ["hard_bounce", "not_mobile"]
    assert only["exhausted"] is True
    assert only["attempts"] == 3
    assert only["last_outcome"] == "exhausted"
    assert body["next_cursor"] is None
    later = (
        await api.client.get(f"/v1/reports/not-delivered?tenant_id={TENANT}&from=2025-03-01T09:05:00Z", headers=READER)
    ).json()
    assert later["invoices"] == []


async def test_not_delivered_pages_by_invoice(api: Setup) -> None:
    writer = ChainWriter(api.db.records, api.db.tombstones)
    tenant = f"nd-{uuid.uuid4().hex[:6]}"
    failures = [
        event(tenant, f"N-{i}", "delivery.failed", minutes=i, outcome="failed", channel="email", purpose="invoice")
        for i in range(5)
    ]
    delivered = [event(tenant, "N-1", "delivery.succeeded", minutes=9, outcome="delivered", purpose="invoice")]
    await writer.append(failures + delivered)
    ids: list[str] = []
    cursor = None
    while True:
        query = f"tenant_id={tenant}&limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = (await api.client.get(f"/v1/reports/not-delivered?{query}", headers=ADMIN)).json()
        ids += [i["invoice_id"] for i in body["invoices"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert ids == ["N-0", "N-2", "N-3", "N-4"]


async def test_counts_per_day(api: Setup) -> None:
    body = (
        await api.client.get(
            f"/v1/reports/counts?tenant_id={TENANT}&from_day=2025-03-01&to_day=2025-03-01", headers=READER
        )
    ).json()
    counts = {(c["day"], c["channel"], c["purpose"], c["outcome"], c["reason"]): c["count"] for c in body["counts"]}
    assert counts[("2025-03-01", "email", "invoice", "failed", "hard_bounce")] == 1
    assert counts[("2025-03-01", None, None, "pending", None)] == 3
    assert counts[("2025-03-01", "email", None, None, None)] == 7  # the downloads
    assert counts[("2025-03-01", None, None, "dead_lettered", "bug")] == 1
    assert not any(day == "2025-03-02" for day, *_ in counts)  # the delivery 30 h later is another day
    assert sum(counts.values()) == 17
    next_day = (
        await api.client.get(
            f"/v1/reports/counts?tenant_id={TENANT}&from_day=2025-03-02&to_day=2025-03-02", headers=READER
        )
    ).json()
    assert [(c["day"], c["outcome"], c["count"]) for c in next_day["counts"]] == [("2025-03-02", "delivered", 1)]


# --- dead letters ---------------------------------------------------------------------------------


async def test_dead_letters_from_the_chain(api: Setup) -> None:
    body = (await api.client.get(f"/v1/dead-letters?tenant_id={TENANT}", headers=READER)).json()
    assert [(d["invoice_id"], d["reason"], d["service"], d["attempts"]) for d in body["dead_letters"]] == [
        ("INV-005", "bug", "renderer", 3)
    ]
    assert body["dead_letters"][0]["error"] == "ValueError: boom"  # a reader sees no internals
    admin = (await api.client.get(f"/v1/dead-letters?tenant_id={TENANT}", headers=ADMIN)).json()
    assert (
        admin["dead_letters"][0]["error"].startswith("Traceback")
        and "/srv/renderer" in admin["dead_letters"][0]["error"]
    )
    filtered = (await api.client.get(f"/v1/dead-letters?tenant_id={TENANT}&invoice_id=INV-X", headers=READER)).json()
    assert filtered["dead_letters"] == []


# --- exports --------------------------------------------------------------------------------------


async def test_csv_export_streams_every_row_in_chain_order(api: Setup) -> None:
    chunks: list[bytes] = []
    async with api.client.stream("GET", "/v1/exports/records.csv?tenant_id=bulk-c", headers=ADMIN) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        chunks = [chunk async for chunk in response.aiter_raw()]  # ASGITransport hands the body over whole
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert len(rows) == EXPORT_ROWS
    assert [int(r["seq"]) for r in rows] == list(range(1, EXPORT_ROWS + 1))
    assert all(len(r["hash"]) == 64 for r in rows)
    assert {r["customer_id"] for r in rows} == {"'=cmd"}


async def test_csv_export_neutralises_formulas_and_filters(api: Setup) -> None:
    response = await api.client.get(f"/v1/exports/records.csv?tenant_id={TENANT}&status=pending", headers=READER)
    rows = list(csv.DictReader(io.StringIO(response.text)))
    by_invoice = {r["invoice_id"]: r for r in rows}
    assert set(by_invoice) == {SLASHED, PERCENT, "'=1+1"}
    assert by_invoice["'=1+1"]["customer_id"] == "'@evil"


async def test_ndjson_export_matches_search(api: Setup) -> None:
    response = await api.client.get(f"/v1/exports/records.ndjson?tenant_id={TENANT}&status=failed", headers=READER)
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    found = (await search(api, "status=failed")).json()["records"]
    assert [(r["seq"], r["hash"]) for r in lines] == [(r["seq"], r["hash"]) for r in reversed(found)]


async def test_export_refuses_bad_filters_before_streaming(api: Setup) -> None:
    response = await api.client.get(f"/v1/exports/records.csv?tenant_id={TENANT}&limit=5", headers=READER)
    assert response.status_code == 400  # exports take no page size
    assert response.headers["content-type"] == "application/json"


# --- verification ------------------------------------------------------------------------------------


async def test_verify_and_chain_export(api: Setup) -> None:
    verified = (await api.client.get(f"/v1/verify?tenant_id={TENANT}", headers=READER)).json()
    assert verified["ok"] is True
    assert verified["records"] == verified["head_seq"] == len([r for r in history() if r.tenant_id == TENANT])
    response = await api.client.get(f"/v1/chain/export?tenant_id={TENANT}&from_seq=2&to_seq=4", headers=READER)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[0]["tenant_id"] == TENANT
    assert [line["seq"] for line in lines[1:]] == [2, 3, 4]
    backwards = await api.client.get(f"/v1/chain/export?tenant_id={TENANT}&from_seq=4&to_seq=2", headers=READER)
    assert backwards.status_code == 422


async def test_every_call_is_handed_to_the_access_hook(api: Setup) -> None:
    before = len(api.accesses.calls)
    await api.client.get(f"/v1/records?tenant_id={TENANT}&status=paid", headers=READER)
    await api.client.get(f"/v1/records?tenant_id={TENANT}&limit=0", headers=READER)
    await api.client.get(f"/v1/records?tenant_id={TENANT}&tenant_id={TENANT}", headers=READER)
    reader = api.key_ids["reader"]
    assert api.accesses.calls[before:] == [
        (reader, "/v1/records", f"tenant_id={TENANT}&status=paid", 200),
        (reader, "/v1/records", f"tenant_id={TENANT}&limit=0", 422),
        (reader, "/v1/records", f"tenant_id={TENANT}&tenant_id={TENANT}", 400),
    ]


async def test_cursor_key_of_another_deployment_is_refused(api: Setup) -> None:
    foreign = Cursors(b"another-deployment-key-000000000").encode(TENANT, "x", 1)
    response = await search(api, f"cursor={foreign}")
    assert response.status_code == 400
