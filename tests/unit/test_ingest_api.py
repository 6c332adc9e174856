"""The ingest API when Kafka or MongoDB cannot serve: 503 with Retry-After, never a 500, and
nothing kept as an Idempotency-Key's answer, so the client's retry goes through."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pymongo.errors
import pytest
from aiokafka.errors import KafkaTimeoutError
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factura.common.apikeys import Principal, Role, authenticator
from factura.common.envelope import Envelope
from factura.common.http import RETRY_AFTER_S, Health, create_app
from factura.common.schemas import EXAMPLES_DIR
from factura.common.tenants import TenantDirectory
from factura.ingest.api import router
from factura.ingest.handlers import Intake
from factura.ingest.versions import Answer, Claim, Head, IdempotencyStore, InvoiceVersions
from tests.unit.test_ingest_handlers import NoHistory, Recorder

INVOICE = json.loads((EXAMPLES_DIR / "erp.invoice.v1.json").read_text(encoding="utf-8"))
KEY = {"Authorization": "Bearer any", "Idempotency-Key": "retry-me"}


class Keys:
    async def verify(self, presented: str) -> Principal | None:
        return Principal(key_id="k", role=Role.INGEST, tenants=("harinas-sur",), label="test")


class FlakyPublisher(Recorder):
    """Times out while ``down``, like aiokafka when the broker is unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def publish(self, event: Envelope[Any]) -> None:
        if self.down:
            raise KafkaTimeoutError()
        await super().publish(event)


class Memory:
    """Versions and idempotent answers in memory; MongoDB 'down' while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.kept: dict[str, Any] = {}

    def _check(self) -> None:
        if self.down:
            raise pymongo.errors.AutoReconnect("connection refused")

    async def claim(
        self, tenant_id: str, invoice_number: str, digest: str, event_id: uuid.UUID, *, amendment: bool
    ) -> tuple[Claim, Head]:
        """InvoiceVersions.claim's rule (tested on the real store in tests/integration/test_ingest_api.py)."""
        self._check()
        mine = Head(digest, event_id)
        head = self.kept.setdefault(f"head/{tenant_id}/{invoice_number}", mine)
        if head is mine:
            return Claim.NEW, mine
        if head.digest == digest:
            return Claim.CURRENT, head
        if f"{tenant_id}/{invoice_number}/{digest}" in self.kept:
            return Claim.SUPERSEDED, head
        if not amendment:
            return Claim.CONFLICT, head
        self.kept[f"head/{tenant_id}/{invoice_number}"] = mine
        return Claim.NEW, mine

    async def record(self, tenant_id: str, invoice_number: str, digest: str, event_id: uuid.UUID, source: str) -> bool:
        self._check()
        return self.kept.setdefault(f"{tenant_id}/{invoice_number}/{digest}", event_id) is event_id

    async def of_invoice(self, tenant_id: str, invoice_number: str) -> list[Any]:
        self._check()
        return []

    async def find(self, tenant_id: str, key: str) -> Answer | None:
        self._check()
        answer = self.kept.get(f"{tenant_id}/{key}")
        return answer if isinstance(answer, Answer) else None

    async def save(self, tenant_id: str, key: str, answer: Answer) -> None:
        self._check()
        self.kept[f"{tenant_id}/{key}"] = answer


@pytest.fixture
async def setup() -> AsyncIterator[tuple[httpx.AsyncClient, FlakyPublisher, Memory]]:
    publisher, memory = FlakyPublisher(), Memory()
    intake = Intake(publisher, TenantDirectory(None), NoHistory(), versions=memory)
    routes = router(intake, cast(InvoiceVersions, memory), cast(IdempotencyStore, memory), auth=authenticator(Keys()))
    app = create_app("ingest", Health(), [routes])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
        yield client, publisher, memory


async def test_kafka_down_is_503_with_retry_after_and_the_retry_goes_through(
    setup: tuple[httpx.AsyncClient, FlakyPublisher, Memory],
) -> None:
    client, publisher, _ = setup
    down = await client.post("/v1/invoices", json=INVOICE, headers=KEY)
    assert down.status_code == 503
    assert down.headers["Retry-After"] == str(RETRY_AFTER_S)
    batch = await client.post(
        "/v1/invoices", json={"invoices": [INVOICE, INVOICE]}, headers=KEY | {"Idempotency-Key": "b"}
    )
    assert batch.status_code == 503
    publisher.down = False
    retry = await client.post("/v1/invoices", json=INVOICE, headers=KEY)
    assert (retry.status_code, retry.json()["status"]) == (202, "accepted")
    assert [e.type for e in publisher.events] == ["invoice.created"]


async def test_mongo_down_is_503_too(setup: tuple[httpx.AsyncClient, FlakyPublisher, Memory]) -> None:
    client, publisher, memory = setup
    publisher.down, memory.down = False, True
    for answer in (
        await client.post("/v1/invoices", json=INVOICE, headers=KEY),
        await client.get("/v1/invoices/F-1/status?tenant_id=harinas-sur", headers=KEY),
    ):
        assert answer.status_code == 503 and answer.headers["Retry-After"] == str(RETRY_AFTER_S)
    memory.down = False
    assert (await client.post("/v1/invoices", json=INVOICE, headers=KEY)).json()["status"] == "accepted"


# --- whatever the body, a documented 4xx or a per-item answer, never a 500 ------------------------------

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
ADMIN = {"Authorization": "Bearer any"}


class AdminKeys:
    async def verify(self, presented: str) -> Principal | None:
        return Principal(key_id="k", role=Role.ADMIN, tenants=("*",), label="test")


def admin_client() -> TestClient:
    publisher, memory = FlakyPublisher(), Memory()
    publisher.down = False
    intake = Intake(publisher, TenantDirectory(None), NoHistory(), versions=memory)
    routes = router(
        intake, cast(InvoiceVersions, memory), cast(IdempotencyStore, memory), auth=authenticator(AdminKeys())
    )
    return TestClient(create_app("ingest", Health(), [routes]))


CLIENT = admin_client()


@given(
    body=st.binary(max_size=200)
    | _JSON_VALUES.map(lambda v: json.dumps(v).encode())
    | st.lists(_JSON_VALUES, max_size=5).map(lambda items: json.dumps({"invoices": items}).encode())
    | st.lists(st.sampled_from([INVOICE, {**INVOICE, "total": "-1"}, "x"]), min_size=1, max_size=4).map(
        lambda items: json.dumps({"invoices": items}).encode()
    )
)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_body_gets_a_documented_answer(body: bytes) -> None:
    for path in ("/v1/invoices", "/v1/payments", "/v1/invoices/F%2F1/cancel"):
        response = CLIENT.post(path, content=body, headers=ADMIN)
        assert response.status_code in {200, 202, 400, 422}, (path, response.text)
        if response.status_code == 200:
            results = response.json()["results"]
            assert [r["index"] for r in results] == list(range(len(results)))
