"""schemathesis against the running audit service: generated requests (valid and not) never get a
server error, and every answer is one the published OpenAPI schema documents.

The schema is built from the same router the service mounts (schemathesis parametrizes tests at
collection time, before the devstack's ports exist), and a first test checks that the running
service publishes exactly that schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pymongo import AsyncMongoClient
from schemathesis import Case
from schemathesis.checks import positive_data_acceptance

from factura.audit.bootstrap import http_routers
from factura.audit.store import AuditDb
from factura.audit.verify import Verification
from factura.common.apikeys import ApiKeyStore
from factura.common.http import Health, create_app
from factura.common.tenants import TenantDirectory
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack

pytestmark = pytest.mark.e2e


def published_schema() -> dict[str, Any]:
    """The audit app's OpenAPI document (no server is contacted: the client never connects)."""
    db = AsyncMongoClient[dict[str, Any]]("mongodb://127.0.0.1:1", connect=False)["schema"]

    async def nothing(*_: Any) -> None:
        return None

    async def verify(tenant: str) -> Verification:
        return Verification(tenant_id=tenant)

    async def export(*_: Any) -> AsyncIterator[bytes]:
        yield b""

    tenants = TenantDirectory(StackConfig(data_dir=Path("unused")).tenants_dir)
    keys = ApiKeyStore(db["api_keys"])
    routes = http_routers(
        AuditDb.of(db), keys, tenants, cursor_key=b"k" * 32, on_access=nothing, verify=verify, export=export
    )
    return create_app("audit", Health(), routes).openapi()


schema = schemathesis.openapi.from_dict(published_schema())


async def test_the_running_service_publishes_this_schema(services: Stack) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(services.cfg.service_url("audit") + "/openapi.json")
    assert response.json() == published_schema()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_audit_api_answers_as_documented(case: Case[Any], services: Stack) -> None:
    # positive_data_acceptance is left out: a random `cursor` fails its HMAC (400) and a reversed
    # date range is refused (422), rules a schema cannot express.
    case.call_and_validate(
        base_url=services.cfg.service_url("audit"),
        headers={"Authorization": f"Bearer {services.cfg.audit_api_key()}"},
        excluded_checks=[positive_data_acceptance],
    )


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_audit_api_without_a_key_is_refused_as_documented(case: Case[Any], services: Stack) -> None:
    response = case.call_and_validate(
        base_url=services.cfg.service_url("audit"), excluded_checks=[positive_data_acceptance]
    )
    if case.path.startswith("/v1/"):  # nothing is served without a key (a malformed request may get another 4xx first)
        assert 400 <= response.status_code < 500, (response.status_code, response.text)
