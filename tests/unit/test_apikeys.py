"""API keys without servers: the format, the validation, the scope, the cache and the HTTP checks.

No ``from __future__ import annotations`` here: FastAPI resolves a route's annotations in the
module's globals, and the routes below depend on a local ``auth``.
"""

import copy
import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Annotated, Any, cast

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import ValidationError

from factura.common.apikeys import (
    AUTH_RESPONSES,
    ApiKeyStore,
    KeyRecord,
    Principal,
    Role,
    authenticator,
    require_role,
    require_tenant,
)
from factura.common.apikeys.keys import KeySpec, key_hash, key_hint, new_key, parse_key

Doc = dict[str, Any]


class FakeKeys:
    """The few collection calls the store makes, counting reads by ``_id``."""

    def __init__(self) -> None:
        self.docs: dict[str, Doc] = {}
        self.reads = 0

    async def insert_one(self, doc: Doc) -> None:
        self.docs[doc["_id"]] = copy.deepcopy(doc)

    async def find_one(self, query: Doc) -> Doc | None:
        self.reads += 1
        doc = self.docs.get(query["_id"])
        return copy.deepcopy(doc) if doc else None

    async def update_one(self, query: Doc, update: Doc) -> SimpleNamespace:
        doc = self.docs.get(query["_id"])
        if doc is None or doc["revoked_at"] is not None:
            return SimpleNamespace(modified_count=0)
        doc.update(update["$set"])
        return SimpleNamespace(modified_count=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_store(keys: FakeKeys, clock: Callable[[], float], **kwargs: Any) -> ApiKeyStore:
    return ApiKeyStore(cast(Any, keys), clock=clock, **kwargs)


# --- format -----------------------------------------------------------------------------------


def test_new_keys_have_the_documented_shape_and_parse_back() -> None:
    seen = set()
    for _ in range(200):
        key_id, plaintext = new_key()
        prefix, kid, secret = plaintext.split("_")
        assert (prefix, kid) == ("fct", key_id)
        assert len(key_id) == 16 and int(key_id, 16) >= 0
        assert len(secret) == 43 and secret.isalnum() and secret.isascii()
        assert parse_key(plaintext) == key_id
        seen.add(plaintext)
    assert len(seen) == 200


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: k.replace("fct_", "fck_"),
        lambda k: k.upper(),
        lambda k: k[:-1],
        lambda k: k + "x",
        lambda k: k + "\n",
        lambda k: " " + k,
        lambda k: k[:-1] + "é",
        lambda k: k[:-1] + "_",
        lambda k: "Bearer " + k,
        lambda k: "",
    ],
)
def test_malformed_keys_do_not_parse(mangle: Callable[[str], str]) -> None:
    _, plaintext = new_key()
    assert parse_key(mangle(plaintext)) is None


def test_hash_is_sha256_of_the_whole_key_and_the_hint_keeps_only_four_characters() -> None:
    key_id, plaintext = new_key()
    assert key_hash(plaintext) == hashlib.sha256(plaintext.encode()).hexdigest()
    secret = plaintext.rsplit("_", 1)[1]
    hint = key_hint(plaintext)
    assert hint == f"fct_{key_id}_…{secret[-4:]}"
    assert secret[:-4] not in hint


# --- what a key may be created for ------------------------------------------------------------


def spec(**changes: Any) -> KeySpec:
    fields: Doc = {"role": "compliance-reader", "tenants": ("acme",), "label": "laptop", "created_by": "ana"}
    return KeySpec.model_validate(fields | changes)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"role": "superuser"}, "role", "compliance-reader"),
        ({"tenants": ("Acme",)}, "tenants", "not a tenant id"),
        ({"tenants": ()}, "tenants", "at least 1"),
        ({"tenants": ("*",)}, "", "only an admin key"),
        ({"role": "admin", "tenants": ("*", "acme")}, "tenants", "cannot be combined"),
        ({"label": "x" * 201}, "label", "at most 200"),
        ({"label": "  "}, "label", "at least 1"),
        ({"label": "ok\x1b[2J"}, "label", "control characters"),
        ({"created_by": ""}, "created_by", "at least 1"),
    ],
)
def test_invalid_specs_name_the_field(changes: Doc, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        spec(**changes)
    error = caught.value.errors()[0]
    assert ".".join(str(p) for p in error["loc"]) == field
    assert words in error["msg"]


def test_valid_specs_are_normalised() -> None:
    assert spec(tenants=("acme", "beta", "acme"), label=" laptop ").tenants == ("acme", "beta")
    assert spec(label=" laptop ").label == "laptop"
    assert spec(role="admin", tenants=("*",)).role is Role.ADMIN
    assert {r.value for r in Role} == {"compliance-reader", "admin", "ingest"}


def test_scope_and_roles() -> None:
    reader = Principal(key_id="k", role=Role.COMPLIANCE_READER, tenants=("acme", "beta"), label="l")
    assert reader.may_read("acme") and reader.may_read("beta") and not reader.may_read("gamma")
    assert not reader.may_read("*")
    assert not reader.all_tenants
    assert reader.has_role(Role.COMPLIANCE_READER, Role.ADMIN) and not reader.has_role(Role.ADMIN)
    admin = Principal(key_id="k", role=Role.ADMIN, tenants=("*",), label="l")
    assert admin.all_tenants and admin.may_read("anyone")
    assert not admin.has_role(Role.INGEST)  # roles are not ranked
    assert admin.has_role("admin")
    with pytest.raises(ValueError, match="admn"):
        admin.has_role("admn")


def test_a_revocation_read_back_without_a_time_zone_is_utc() -> None:
    doc: Doc = {
        "_id": "0123456789abcdef",
        "hash": "h",
        "role": "admin",
        "tenants": ["*"],
        "label": "l",
        "hint": "fct_0123456789abcdef_…abcd",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "created_by": "ana",
        "revoked_at": "2026-01-02 03:04:05.678000",
        "revoked_by": "bob",
    }
    record = KeyRecord.from_document(doc)
    assert record.revoked_at == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert "hash" not in record.model_dump()


# --- verification and its cache ---------------------------------------------------------------


async def test_verify_reads_once_per_ttl_and_sees_a_foreign_revocation_after_it() -> None:
    keys, clock = FakeKeys(), Clock()
    api = make_store(keys, clock, cache_ttl_s=5.0)
    admin = make_store(keys, clock)
    plaintext, record = await admin.create("compliance-reader", ["acme"], "laptop", "ana")
    first = await api.verify(plaintext)
    assert first == Principal(key_id=record.key_id, role=Role.COMPLIANCE_READER, tenants=("acme",), label="laptop")
    assert await api.verify(plaintext) == first
    assert keys.reads == 1
    assert await admin.revoke(record.key_id, "bob") is True
    clock.now += 4.9
    assert await api.verify(plaintext) == first  # the documented window: revoked elsewhere, cached here
    clock.now += 0.2
    assert await api.verify(plaintext) is None
    assert keys.reads == 2


async def test_revoking_evicts_the_revokers_own_cache_at_once() -> None:
    keys, clock = FakeKeys(), Clock()
    store = make_store(keys, clock)
    plaintext, record = await store.create("ingest", ["acme"], "erp", "ana")
    assert await store.verify(plaintext) is not None
    assert await store.revoke(record.key_id, "bob") is True
    assert await store.verify(plaintext) is None
    assert await store.revoke(record.key_id, "bob") is False
    assert await store.revoke("0000000000000000", "bob") is False
    with pytest.raises(ValueError, match="by:"):
        await store.revoke(record.key_id, " ")


async def test_malformed_keys_never_reach_mongodb_and_unknown_ids_are_cached() -> None:
    keys, clock = FakeKeys(), Clock()
    store = make_store(keys, clock)
    assert await store.verify("not-a-key") is None
    assert await store.verify("x" * 10_000) is None
    assert keys.reads == 0
    _, unknown = new_key()
    assert await store.verify(unknown) is None
    assert await store.verify(unknown) is None
    assert keys.reads == 1


async def test_a_wrong_secret_for_a_real_key_id_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    keys, clock = FakeKeys(), Clock()
    store = make_store(keys, clock)
    plaintext, _ = await store.create("admin", ["*"], "ops", "ana")
    forged = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert await store.verify(forged) is None
    assert await store.verify(plaintext) is not None
    assert compared == [(key_hash(plaintext), key_hash(forged)), (key_hash(plaintext), key_hash(plaintext))]


async def test_the_cache_is_bounded() -> None:
    keys, clock = FakeKeys(), Clock()
    store = make_store(keys, clock, cache_size=1)
    first, _ = await store.create("admin", ["*"], "one", "ana")
    second, _ = await store.create("admin", ["*"], "two", "ana")
    for plaintext in (first, second, first):
        assert await store.verify(plaintext) is not None
    assert keys.reads == 3


async def test_a_stored_role_this_version_does_not_know_is_refused() -> None:
    keys, clock = FakeKeys(), Clock()
    store = make_store(keys, clock)
    plaintext, record = await store.create("admin", ["*"], "ops", "ana")
    keys.docs[record.key_id]["role"] = "retired-role"
    assert await store.verify(plaintext) is None


async def test_create_refuses_a_bare_string_of_tenants() -> None:
    store = make_store(FakeKeys(), Clock())
    with pytest.raises(TypeError, match="tenants"):
        await store.create("admin", "acme", "ops", "ana")


# --- HTTP -------------------------------------------------------------------------------------


class FakeVerifier:
    def __init__(self, keys: dict[str, Principal]) -> None:
        self.keys = keys

    async def verify(self, presented: str) -> Principal | None:
        return self.keys.get(presented)


READER = Principal(key_id="r", role=Role.COMPLIANCE_READER, tenants=("acme",), label="reader")
INGEST = Principal(key_id="i", role=Role.INGEST, tenants=("acme",), label="erp")


def app() -> FastAPI:
    auth = authenticator(FakeVerifier({"reader-key": READER, "ingest-key": INGEST}))
    api = FastAPI()

    @api.get("/t/{tenant_id}", responses=AUTH_RESPONSES)
    async def read(tenant_id: str, principal: Annotated[Principal, Depends(auth)]) -> dict[str, str]:
        require_role(principal, Role.COMPLIANCE_READER, Role.ADMIN)
        require_tenant(principal, tenant_id)
        return {"key_id": principal.key_id}

    return api


async def call(headers: dict[str, str], path: str = "/t/acme") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://t") as client:
        return await client.get(path, headers=headers)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer reader-key"},
        {"Authorization": "bearer reader-key"},
        {"X-API-Key": "reader-key"},
        {"Authorization": "Bearer reader-key", "X-API-Key": "reader-key"},
    ],
)
async def test_either_header_carries_the_key(headers: dict[str, str]) -> None:
    response = await call(headers)
    assert (response.status_code, response.json()) == (200, {"key_id": "r"})


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "an API key is required"),
        ({"Authorization": "Basic cmVhZGVyLWtleQ=="}, "an API key is required"),
        ({"Authorization": "Bearer "}, "an API key is required"),
        ({"Authorization": "Bearer wrong-key"}, "invalid or revoked API key"),
        ({"Authorization": "Bearer reader-key", "X-API-Key": "ingest-key"}, "two different API keys"),
    ],
)
async def test_no_usable_key_is_401_with_a_bearer_challenge(headers: dict[str, str], detail: str) -> None:
    response = await call(headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert list(response.json()) == ["detail"] and detail in response.json()["detail"]
    assert "reader-key" not in response.text and "wrong-key" not in response.text


async def test_role_and_tenant_refusals_are_403() -> None:
    response = await call({"X-API-Key": "ingest-key"})
    assert response.status_code == 403
    detail = "an API key with role 'ingest' may not do this (needs: compliance-reader, admin)"
    assert response.json() == {"detail": detail}
    response = await call({"X-API-Key": "reader-key"}, "/t/beta")
    assert response.status_code == 403
    assert response.json() == {"detail": "tenant 'beta' is outside this API key's scope"}


def test_the_schema_documents_both_schemes_and_the_refusals() -> None:
    schema = app().openapi()
    assert set(schema["components"]["securitySchemes"]) == {"ApiKeyBearer", "ApiKeyHeader"}
    assert schema["components"]["securitySchemes"]["ApiKeyHeader"]["name"] == "X-API-Key"
    operation = schema["paths"]["/t/{tenant_id}"]["get"]
    assert {"ApiKeyBearer": []} in operation["security"] and {"ApiKeyHeader": []} in operation["security"]
    assert {"401", "403"} <= set(operation["responses"])
    assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
