"""Keyed hashes of personal data ("blind indexes"): find a record by a value that is never stored.

A suppression must be found by the address a message is about to go to, yet the address must not
be kept readable. So the record is keyed by HMAC-SHA256 of the address under a secret **lookup key**
of the tenant: whoever reads the database (or a backup) cannot test guesses against it, as they
could against a plain hash (an address or phone number is easy to guess). Each tenant has one
random 256-bit lookup key, created on first use and stored in ``tenant_lookup_keys`` (``_id`` =
tenant) only as wrapped by the tenant's KEK, like customers' data keys
(:mod:`factura.common.pii.keystore`: a file store, a derived secret or a KMS all work, since only
``wrap``/``unwrap`` are used). A missing KEK is an outage (:class:`KeyStoreError`), as for data keys.

The lookup key is the tenant's, not a customer's: erasing a customer leaves it, so hashes keep
matching (a suppression keeps protecting the address) while saying nothing readable. It is never
rotated or deleted (every hash made with it would stop matching); a KEK rotation only rewraps it.
``purpose`` separates the uses of one key: equal values hashed for two purposes do not compare.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Final

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from factura.common.envelope import utcnow
from factura.common.mongo import Document, exact
from factura.common.pii.keystore import KEY_BYTES, KeyStore, Wrapped

#: The collection of wrapped tenant lookup keys.
COLLECTION: Final = "tenant_lookup_keys"


class LookupKeys:
    """Every tenant's lookup key, unwrapped once per process (it never changes)."""

    def __init__(
        self, collection: AsyncCollection[Document], keystore: KeyStore, *, now: Callable[[], datetime] = utcnow
    ) -> None:
        self._keys = collection
        self._store = keystore
        self._now = now
        self._cache: dict[str, bytes] = {}

    async def digest(self, tenant_id: str, purpose: str, value: str) -> str:
        """HMAC-SHA256 of ``value`` for ``purpose`` under the tenant's lookup key, in hex."""
        key = self._cache.get(tenant_id) or await self._load(tenant_id)
        return hmac.new(key, f"{purpose}\x00{value}".encode(), hashlib.sha256).hexdigest()

    async def _load(self, tenant_id: str) -> bytes:
        doc = await self._keys.find_one(exact({"_id": tenant_id}))
        if doc is None:
            doc = await self._create(tenant_id)
        wrapped = Wrapped(str(doc["kek_id"]), base64.b64decode(doc["wrapped"]))
        key = await self._store.unwrap(tenant_id, wrapped, _context(str(doc["key_id"])))
        self._cache[tenant_id] = key
        return key

    async def _create(self, tenant_id: str) -> Document:
        """Insert a new wrapped key; if another process inserted first, use theirs."""
        key_id = uuid.uuid4().hex[:16]
        wrapped = await self._store.wrap(tenant_id, os.urandom(KEY_BYTES), _context(key_id))
        doc: Document = {
            "_id": tenant_id,
            "key_id": key_id,
            "kek_id": wrapped.kek_id,
            "wrapped": base64.b64encode(wrapped.blob).decode("ascii"),
            "created_at": self._now(),
        }
        try:
            await self._keys.insert_one(doc)
        except DuplicateKeyError:
            winner = await self._keys.find_one(exact({"_id": tenant_id}))
            if winner is None:  # never deleted, so only a collection dropped under our feet
                raise
            return winner
        return doc


def _context(key_id: str) -> dict[str, str]:
    """What the wrap binds the key to: a wrapped lookup key cannot pass for a customer's data key
    (whose context names a ``customer_id``), nor the other way round."""
    return {"purpose": "lookup", "key_id": key_id}
