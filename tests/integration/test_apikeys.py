"""API keys on the real MongoDB-wire server: the store, the CLI, and a FastAPI app guarded by them.

No ``from __future__ import annotations`` here: FastAPI resolves a route's annotations in the
module's globals, and the routes below depend on a local ``auth``.
"""

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from pymongo.asynchronous.collection import AsyncCollection

from factura.common.apikeys import (
    AUTH_RESPONSES,
    COLLECTION,
    ApiKeyStore,
    Principal,
    Role,
    authenticator,
    require_role,
    require_tenant,
)
from factura.common.apikeys.cli import run
from factura.common.mongo import Document, create_client, database
from factura.common.settings import MongoSettings
from factura.devstack.config import StackConfig
from tests.conftest import mongo_settings

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tenant() -> str:
    """A tenant no other test uses, so listings by tenant see only this test's keys."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def keys(cfg: StackConfig) -> AsyncIterator[AsyncCollection[Document]]:
    settings = mongo_settings(cfg)
    client = create_client(settings)
    try:
        yield database(client, settings)[f"api_keys_{uuid.uuid4().hex[:6]}"]
    finally:
        await client.close()


async def test_create_verify_and_a_revocation_seen_after_the_ttl(keys: AsyncCollection[Document]) -> None:
    clock = Clock()
    api = ApiKeyStore(keys, cache_ttl_s=5.0, clock=clock)  # a service answering requests
    operator = ApiKeyStore(keys)  # the CLI, another process
    await operator.ensure_indexes()
    plaintext, record = await operator.create(Role.COMPLIANCE_READER, ["acme", "beta"], "compliance laptop", "ana")
    principal = await api.verify(plaintext)
    assert principal == Principal(record.key_id, Role.COMPLIANCE_READER, ("acme", "beta"), "compliance laptop")
    assert await api.verify(plaintext[:-1] + ("x" if plaintext[-1] != "x" else "y")) is None

    assert await operator.revoke(record.key_id, "bob") is True
    assert await operator.revoke(record.key_id, "bob") is False
    assert await api.verify(plaintext) == principal  # cached: revocations take up to the TTL
    clock.now += 5.1
    assert await api.verify(plaintext) is None
    assert await operator.verify(plaintext) is None

    [listed] = await operator.list()
    assert listed.revoked and listed.revoked_by == "bob"
    assert listed.revoked_at is not None and listed.revoked_at >= listed.created_at


async def test_only_a_hash_is_stored_and_listings_never_show_it(keys: AsyncCollection[Document]) -> None:
    store = ApiKeyStore(keys)
    await store.ensure_indexes()
    plaintext, record = await store.create("admin", ["*"], "ops", "ana")
    secret = plaintext.rsplit("_", 1)[1]
    stored = await keys.find_one({"_id": record.key_id})
    assert stored is not None
    assert stored["hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert secret not in repr(stored) and secret[:8] not in repr(stored)
    assert stored["hint"].endswith(secret[-4:])
    assert stored["tenants"] == ["*"] and stored["revoked_at"] is None

    listed = await store.list()
    assert [r.key_id for r in listed] == [record.key_id]
    assert "hash" not in listed[0].model_dump() and stored["hash"] not in listed[0].model_dump_json()


async def test_listing_by_tenant_shows_the_keys_that_reach_it(keys: AsyncCollection[Document]) -> None:
    store = ApiKeyStore(keys)
    await store.ensure_indexes()
    _, acme = await store.create("compliance-reader", ["acme"], "acme reader", "ana")
    _, both = await store.create("ingest", ["beta", "acme"], "erp", "ana")
    _, beta = await store.create("compliance-reader", ["beta"], "beta reader", "ana")
    _, admin = await store.create("admin", ["*"], "ops", "ana")
    # keys created in the same millisecond may list in either order: compare which keys, not their order
    assert {r.key_id for r in await store.list("acme")} == {acme.key_id, both.key_id, admin.key_id}
    assert {r.key_id for r in await store.list("beta")} == {both.key_id, beta.key_id, admin.key_id}
    assert [r.key_id for r in await store.list("gamma")] == [admin.key_id]
    assert len(await store.list()) == 4


async def cli(settings: MongoSettings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # run() drives its own event loop, as it does under `python -m`: give it a thread.
    status = await asyncio.to_thread(run, list(argv), settings)
    out, err = capsys.readouterr()
    return status, out, err


async def test_the_cli_creates_lists_and_revokes(cfg: StackConfig, capsys: pytest.CaptureFixture[str]) -> None:
    settings = mongo_settings(cfg)
    acme = tenant()
    status, out, err = await cli(
        settings, capsys, "create", "--role", "compliance-reader", "--tenant", acme, "--label", "laptop", "--by", "ana"
    )
    assert status == 0, err
    plaintext = out.strip()
    assert "cannot be shown again" in err and plaintext not in err

    client = create_client(settings)
    try:
        clock = Clock()
        store = ApiKeyStore(database(client, settings)[COLLECTION], clock=clock)
        principal = await store.verify(plaintext)
        assert principal is not None and principal.tenants == (acme,) and principal.role is Role.COMPLIANCE_READER

        status, out, _ = await cli(settings, capsys, "list", "--tenant", acme, "--json")
        assert status == 0
        [listed] = [r for r in json.loads(out) if r["role"] != "admin"]
        assert listed["key_id"] == principal.key_id and listed["revoked_at"] is None
        assert "hash" not in listed and plaintext.rsplit("_", 1)[1] not in out

        status, out, _ = await cli(settings, capsys, "list", "--tenant", acme)
        assert status == 0
        header, *rows = out.splitlines()
        assert header.split() == ["KEY_ID", "ROLE", "TENANTS", "HINT", "CREATED", "BY", "STATUS", "LABEL"]
        assert any(principal.key_id in row and "active" in row and row.endswith("laptop") for row in rows)

        status, _, err = await cli(settings, capsys, "revoke", principal.key_id, "--by", "bob")
        assert (status, err.strip()) == (0, f"revoked {principal.key_id}")
        clock.now += 60
        assert await store.verify(plaintext) is None
        status, _, err = await cli(settings, capsys, "revoke", principal.key_id, "--by", "bob")
        assert status == 1 and "already revoked" in err
        status, out, _ = await cli(settings, capsys, "list", "--tenant", acme)
        assert any(principal.key_id in row and "revoked" in row and "by bob" in row for row in out.splitlines())
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["create", "--role", "root", "--tenant", "acme", "--label", "l", "--by", "ana"], "invalid choice"),
        (["create", "--role", "admin", "--tenant", "Acme!", "--label", "l", "--by", "ana"], "tenants: "),
        (["create", "--role", "ingest", "--all-tenants", "--label", "l", "--by", "ana"], "only an admin key"),
        (["create", "--role", "admin", "--tenant", "a1", "--all-tenants", "--label", "l", "--by", "a"], "not allowed"),
        (["create", "--role", "admin", "--tenant", "acme", "--label", "x" * 201, "--by", "ana"], "label: "),
        (["revoke", "0123456789abcdef", "--by", " "], "by: "),
        (["list", "--everything"], "unrecognized arguments"),
    ],
)
async def test_the_cli_refuses_bad_arguments_with_status_2(
    cfg: StackConfig, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    status, out, err = await cli(mongo_settings(cfg), capsys, *argv)
    assert (status, out) == (2, "")
    assert words in err


def guarded_app(store: ApiKeyStore) -> FastAPI:
    auth = authenticator(store)
    app = FastAPI()

    @app.get("/v1/tenants/{tenant_id}/records", responses=AUTH_RESPONSES)
    async def records(tenant_id: str, principal: Annotated[Principal, Depends(auth)]) -> dict[str, str]:
        require_role(principal, Role.COMPLIANCE_READER, Role.ADMIN)
        require_tenant(principal, tenant_id)
        return {"tenant_id": tenant_id, "key_id": principal.key_id}

    return app


async def test_a_guarded_app_answers_401_403_and_200(keys: AsyncCollection[Document]) -> None:
    store = ApiKeyStore(keys)
    await store.ensure_indexes()
    acme, beta = tenant(), tenant()
    reader, reader_record = await store.create("compliance-reader", [acme], "reader", "ana")
    ingest, _ = await store.create("ingest", [acme], "erp", "ana")
    admin, admin_record = await store.create("admin", ["*"], "ops", "ana")
    revoked, revoked_record = await store.create("compliance-reader", [acme], "old laptop", "ana")
    assert await store.revoke(revoked_record.key_id, "bob")
    forged = reader[:-4] + "AAAA" if not reader.endswith("AAAA") else reader[:-4] + "BBBB"

    transport = httpx.ASGITransport(app=guarded_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://audit") as client:

        async def get(tenant_id: str, key: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return await client.get(f"/v1/tenants/{tenant_id}/records", headers=headers)

        for key in (None, "fct_nonsense", forged, revoked):
            response = await get(acme, key)
            assert response.status_code == 401, key
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert key is None or key not in response.text
        assert (await get(acme, ingest)).status_code == 403
        response = await get(beta, reader)
        assert response.status_code == 403 and "outside this API key's scope" in response.json()["detail"]

        response = await get(acme, reader)
        assert response.status_code == 200
        assert response.json() == {"tenant_id": acme, "key_id": reader_record.key_id}
        response = await client.get(f"/v1/tenants/{beta}/records", headers={"X-API-Key": admin})
        assert (response.status_code, response.json()["key_id"]) == (200, admin_record.key_id)
