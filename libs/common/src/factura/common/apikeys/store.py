"""API keys in MongoDB (collection ``api_keys``), and their verification with a short cache.

One document per key, ``_id`` = key id, so verifying a presented key is one read by ``_id``.
Revocation is the one update a key document ever gets (``revoked_at``, ``revoked_by``): a revoked
key stays listed, so an auditor can still see who held which key and when it was withdrawn.

Verified lookups are cached in-process for ``cache_ttl_s`` (default 5 s), bounded to
``cache_size`` keys, so a busy API does not read MongoDB per request. The price: **a revoked key
keeps working for up to ``cache_ttl_s`` in every process that used it just before the revocation**
(at once in the process that revoked it). The cache holds hashes, never a plaintext key.
"""

from __future__ import annotations

import builtins
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cachetools import TTLCache
from pydantic import ValidationError
from pymongo.asynchronous.collection import AsyncCollection

from factura.common.apikeys.keys import (
    ALL_TENANTS,
    KeyRecord,
    KeySpec,
    Principal,
    Role,
    check_actor,
    key_hash,
    key_hint,
    new_key,
    parse_key,
)
from factura.common.envelope import utcnow
from factura.common.mongo import Document

COLLECTION = "api_keys"
DEFAULT_CACHE_TTL_S = 5.0
DEFAULT_CACHE_SIZE = 10_000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    """A cached lookup: the stored hash and, for a usable key, who it stands for."""

    digest: str
    principal: Principal | None  # None: revoked, or its record no longer validates


class ApiKeyStore:
    def __init__(
        self,
        collection: AsyncCollection[Document],
        *,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._keys = collection
        self._now = now
        # key id -> lookup (None: no such key, cached too so a client retrying a deleted key is cheap)
        self._cache: TTLCache[str, _Entry | None, float] = TTLCache(cache_size, cache_ttl_s, timer=clock)

    async def ensure_indexes(self) -> None:
        await self._keys.create_index("tenants")

    async def create(
        self, role: Role | str, tenants: Sequence[str], label: str, created_by: str
    ) -> tuple[str, KeyRecord]:
        """A new key and its record. The plaintext is returned here once and never stored.

        Raises :class:`pydantic.ValidationError` (a ``ValueError``) naming the field at fault.
        """
        if isinstance(tenants, str):
            raise TypeError("tenants: a list of tenant ids, not one string")
        spec = KeySpec.model_validate(
            {"role": role, "tenants": tuple(tenants), "label": label, "created_by": created_by}
        )
        key_id, plaintext = new_key()
        record = KeyRecord(
            key_id=key_id,
            role=spec.role,
            tenants=spec.tenants,
            label=spec.label,
            hint=key_hint(plaintext),
            created_at=self._now(),
            created_by=spec.created_by,
        )
        doc = record.model_dump(exclude={"key_id"}) | {"_id": key_id, "hash": key_hash(plaintext)}
        doc.update(role=record.role.value, tenants=list(record.tenants))
        await self._keys.insert_one(doc)
        log.info(
            "api key created",
            extra={"key_id": key_id, "role": record.role.value, "tenants": doc["tenants"], "by": record.created_by},
        )
        return plaintext, record

    async def revoke(self, key_id: str, by: str) -> bool:
        """Revoke ``key_id``; ``False`` when there is no such key or it was already revoked.

        Raises ``ValueError`` when ``by`` is empty or unprintable."""
        by = check_actor(by)
        result = await self._keys.update_one(
            {"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": self._now(), "revoked_by": by}}
        )
        self._cache.pop(key_id, None)
        if result.modified_count:
            log.info("api key revoked", extra={"key_id": key_id, "by": by})
        return bool(result.modified_count)

    async def list(self, tenant: str | None = None) -> builtins.list[KeyRecord]:
        """Every key, oldest first, revoked ones included; with ``tenant``, the keys that reach it
        (all-tenant admin keys included)."""
        query: Document = {} if tenant is None else {"tenants": {"$in": [tenant, ALL_TENANTS]}}
        cursor = self._keys.find(query, projection={"hash": False}).sort([("created_at", 1), ("_id", 1)])
        return [KeyRecord.from_document(doc) async for doc in cursor]

    async def verify(self, presented: str) -> Principal | None:
        """Who ``presented`` stands for; ``None`` when it is malformed, unknown, wrong or revoked."""
        key_id = parse_key(presented)
        if key_id is None:
            return None
        if key_id in self._cache:
            entry = self._cache[key_id]
        else:
            entry = await self._lookup(key_id)
            self._cache[key_id] = entry
        # Constant-time, so response times tell nothing about how much of a guessed secret was right.
        if entry is None or not hmac.compare_digest(entry.digest, key_hash(presented)):
            return None
        return entry.principal

    async def _lookup(self, key_id: str) -> _Entry | None:
        doc = await self._keys.find_one({"_id": key_id})
        if doc is None:
            return None
        try:
            record = KeyRecord.from_document(doc)
        except ValidationError:
            # e.g. a role this version no longer knows: refuse the key rather than guess.
            log.warning("api key record does not validate; refusing it", extra={"key_id": key_id})
            return _Entry(doc["hash"], None)
        return _Entry(doc["hash"], None if record.revoked else record.principal())
