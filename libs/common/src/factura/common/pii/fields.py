"""Personal data fields encrypted under a per-customer data key, and erased by destroying that key.

Envelope encryption: each (tenant, customer) has one random AES-256 **data key**, stored in MongoDB
(``customer_keys``, one document per tenant and customer) only as wrapped by the tenant's KEK
(:mod:`factura.common.pii.keystore`). A field becomes a token::

    enc:v1:<key id>:<nonce>:<ciphertext>        (base64url, no padding)

AES-256-GCM, with the tenant, customer, field name and key id as authenticated data: a token moved
to another customer or field, or altered, does not decrypt. **Erasure** (crypto-shredding) deletes
the customer's key document: every token made under it is then noise, wherever it was copied
(records, exports, backups), while whatever is stored beside it in the clear (amounts, dates,
invoice numbers) stays readable. A customer seen again after erasure gets a new key (new id), so
old tokens stay unreadable.

The key document is created on first use by an insert on its unique ``_id``: of two processes
racing, one inserts and the other reads the winner's key. It keeps ``last_used_ms``, refreshed when
a process loads the key to encrypt (so at most once per cache period): what a tenant's contact
retention period (``[audit] contact_days``) erases idle customers by. Unwrapped keys are cached in memory for
``cache_ttl_s`` (30 s): that long after an erasure, *another* process may still decrypt, or
encrypt new data that is then unreadable; the erasing process evicts its own cache at once.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from cachetools import TTLCache
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from factura.common.envelope import utcnow
from factura.common.metrics import counter
from factura.common.mongo import Document, exact
from factura.common.pii.keystore import KEY_BYTES, NONCE_BYTES, KeyStore, KeyStoreError, Wrapped

#: The collection of wrapped data keys.
COLLECTION: Final = "customer_keys"
PREFIX: Final = "enc:v1:"
#: What a reader is shown in place of a field whose key was erased.
ERASED: Final = "[erased]"
#: Fields of a customer object (events' ``Customer``, an ERP ``customer``) that are personal data,
#: encrypted wherever they are stored. Its ``customer_id``, country, locale and tax id stay readable
#: (the tax id is fiscal: the invoice needs it for its legal retention).
CONTACT_FIELDS: Final = frozenset({"name", "email", "phone", "push_token", "address"})
_TOKEN: Final = re.compile(r"^enc:v1:([0-9a-f]{16}):([A-Za-z0-9_-]{16}):([A-Za-z0-9_-]{22,})$")
# The first plaintext byte says what the token holds: text, or a JSON value (e.g. an address object).
_TEXT, _JSON = b"s", b"j"

ERASURES = counter("pii_erasures_total", "Customer data keys destroyed (crypto-shredding).")


class Erased(LookupError):
    """The customer's data key was destroyed: the field is gone for good."""


class Undecryptable(ValueError):
    """Not a token, or one altered, moved to another customer or field, or made under another key."""


@dataclass(frozen=True)
class _DataKey:
    key_id: str
    aead: AESGCM


def is_token(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def _aad(tenant_id: str, customer_id: str, field: str, key_id: str) -> bytes:
    return "\x00".join(("factura.pii.v1", tenant_id, customer_id, field, key_id)).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _ms(moment: datetime) -> int:
    """Epoch milliseconds: a number the local MongoDB-wire server compares (a ``$set`` datetime
    comes back as text there)."""
    return int(moment.timestamp() * 1000)


def key_doc_id(tenant_id: str, customer_id: str) -> str:
    return f"{tenant_id}/{customer_id}"


class FieldCipher:
    """Encrypts, decrypts and erases customers' personal data fields, every tenant's, one key per customer."""

    def __init__(
        self,
        collection: AsyncCollection[Document],
        keystore: KeyStore,
        *,
        cache_ttl_s: float = 30.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._keys = collection
        self._store = keystore
        self._now = now
        self._cache: TTLCache[tuple[str, str], _DataKey, float] = TTLCache(cache_size, cache_ttl_s, timer=clock)

    async def ensure_indexes(self) -> None:
        await self._keys.create_index([("tenant_id", ASCENDING), ("customer_id", ASCENDING)], unique=True)
        await self._keys.create_index([("tenant_id", ASCENDING), ("last_used_ms", ASCENDING)])

    # --- fields ---------------------------------------------------------------------------------

    async def encrypt_field(self, tenant_id: str, customer_id: str, field: str, plaintext: str) -> str:
        """``plaintext`` as a token under the customer's data key (created on first use)."""
        return await self._seal(tenant_id, customer_id, field, _TEXT + plaintext.encode())

    async def encrypt_value(self, tenant_id: str, customer_id: str, field: str, value: Any) -> str:
        """Any JSON value (an address object, a list) as a token; :meth:`decrypt_value` gives it back."""
        if isinstance(value, str):
            return await self.encrypt_field(tenant_id, customer_id, field, value)
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return await self._seal(tenant_id, customer_id, field, _JSON + text.encode())

    async def decrypt_field(self, tenant_id: str, customer_id: str, field: str, token: str) -> str:
        """The text of a token; :class:`Erased` after erasure, :class:`Undecryptable` if it is not
        a sound token of this customer and field."""
        value = await self.decrypt_value(tenant_id, customer_id, field, token)
        if not isinstance(value, str):
            raise Undecryptable(f"the token of {field!r} holds a JSON value, not text")
        return value

    async def decrypt_value(self, tenant_id: str, customer_id: str, field: str, token: str) -> Any:
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise Undecryptable(f"{field!r} is not an {PREFIX} token")
        key_id, nonce, sealed = match.groups()
        key = await self._key(tenant_id, customer_id, create=False)
        if key is None or key.key_id != key_id:
            raise Erased(f"the data key of customer {customer_id!r} was erased")
        try:
            plain = key.aead.decrypt(_unb64(nonce), _unb64(sealed), _aad(tenant_id, customer_id, field, key_id))
        except (InvalidTag, binascii.Error, ValueError) as e:
            raise Undecryptable(f"{field!r} does not decrypt for this customer and field") from e
        kind, body = plain[:1], plain[1:].decode()
        return json.loads(body) if kind == _JSON else body

    async def reveal(self, tenant_id: str, customer_id: str | None, field: str, value: Any) -> Any:
        """What a reader is shown: a token decrypted, :data:`ERASED` after erasure, ``[undecryptable]``
        for a damaged one; anything that is not a token as it is."""
        if not is_token(value):
            return value
        if customer_id is None:
            return "[undecryptable]"
        try:
            return await self.decrypt_value(tenant_id, customer_id, field, value)
        except Erased:
            return ERASED
        except Undecryptable:
            return "[undecryptable]"

    async def seal_contact(self, tenant_id: str, customer: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a customer object (with ``customer_id``) whose :data:`CONTACT_FIELDS` that hold
        a value are tokens; what is already a token stays as it is."""
        who = str(customer["customer_id"])
        sealed = dict(customer)
        for name in CONTACT_FIELDS & sealed.keys():
            value = sealed[name]
            if value is not None and not is_token(value):
                sealed[name] = await self.encrypt_value(tenant_id, who, name, value)
        return sealed

    async def open_contact(self, tenant_id: str, customer: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        """A :meth:`seal_contact` copy decrypted, and ``None``; or, when its key was erased (or a
        token is damaged), the object with every contact field ``None`` but a required ``name`` of
        :data:`ERASED`, and the reason: ``"customer_erased"`` or ``"contact_undecryptable"``."""
        who = str(customer["customer_id"])
        opened = dict(customer)
        try:
            for name in CONTACT_FIELDS & opened.keys():
                if is_token(opened[name]):
                    opened[name] = await self.decrypt_value(tenant_id, who, name, opened[name])
        except (Erased, Undecryptable) as e:
            lost = {name: None for name in CONTACT_FIELDS & opened.keys()}
            reason = "customer_erased" if isinstance(e, Erased) else "contact_undecryptable"
            return opened | lost | {"name": ERASED}, reason
        return opened, None

    # --- keys -----------------------------------------------------------------------------------

    async def prepare(self, tenant_id: str, customer_id: str) -> None:
        """Load (or create) the customer's data key now: an :meth:`encrypt_field` within the cache
        period then needs no round trip, and a missing KEK shows before an irreversible act (a
        message sent) whose record must be encrypted right after it."""
        if await self._key(tenant_id, customer_id, create=True) is None:
            raise KeyStoreError(f"no data key could be kept for customer {customer_id!r} (erased while created)")

    async def key_id(self, tenant_id: str, customer_id: str) -> str | None:
        """The id of the customer's data key; ``None`` if it has none (never seen, or erased)."""
        doc = await self._keys.find_one(exact({"_id": key_doc_id(tenant_id, customer_id)}), {"key_id": 1})
        return None if doc is None else str(doc["key_id"])

    async def idle_keys(self, tenant_id: str, before: datetime, limit: int) -> list[tuple[str, str]]:
        """(customer id, key id) of up to ``limit`` keys last used to encrypt before ``before``."""
        query = {"tenant_id": tenant_id, "last_used_ms": {"$lt": _ms(before)}}
        cursor = self._keys.find(exact(query), {"customer_id": 1, "key_id": 1}).limit(limit)
        return [(str(doc["customer_id"]), str(doc["key_id"])) async for doc in cursor]

    async def count_idle(self, tenant_id: str, before: datetime) -> int:
        return await self._keys.count_documents(exact({"tenant_id": tenant_id, "last_used_ms": {"$lt": _ms(before)}}))

    async def erase(
        self, tenant_id: str, customer_id: str, *, key_id: str | None = None, idle_before: datetime | None = None
    ) -> bool:
        """Destroy the customer's data key and this process's cached copy; True if a key was
        destroyed. ``key_id``: only that key, not a newer one made since; ``idle_before``: only if
        it was not used to encrypt since then (a retention erasure never races a new record)."""
        query: Document = {"_id": key_doc_id(tenant_id, customer_id)}
        if key_id is not None:
            query["key_id"] = key_id
        if idle_before is not None:
            query["last_used_ms"] = {"$lt": _ms(idle_before)}
        self._cache.pop((tenant_id, customer_id), None)
        result = await self._keys.delete_one(exact(query))
        self._cache.pop((tenant_id, customer_id), None)  # a lookup racing the delete may have cached it
        if result.deleted_count:
            ERASURES.inc()
        return bool(result.deleted_count)

    async def _seal(self, tenant_id: str, customer_id: str, field: str, plain: bytes) -> str:
        key = await self._key(tenant_id, customer_id, create=True)
        if key is None:
            raise KeyStoreError(f"no data key could be kept for customer {customer_id!r} (erased while created)")
        nonce = os.urandom(NONCE_BYTES)
        sealed = key.aead.encrypt(nonce, plain, _aad(tenant_id, customer_id, field, key.key_id))
        return f"{PREFIX}{key.key_id}:{_b64(nonce)}:{_b64(sealed)}"

    async def _key(self, tenant_id: str, customer_id: str, *, create: bool) -> _DataKey | None:
        cached = self._cache.get((tenant_id, customer_id))
        if cached is not None:
            return cached
        doc_id = key_doc_id(tenant_id, customer_id)
        doc = await self._keys.find_one(exact({"_id": doc_id}))
        for _ in range(3 if create else 0):  # insert-or-read; again if erased between the two
            if doc is not None:
                break
            doc = await self._create(tenant_id, customer_id)
        if doc is None:
            return None
        if create and doc.get("last_used_ms") != (now_ms := _ms(self._now())):
            await self._keys.update_one(exact({"_id": doc_id}), {"$set": {"last_used_ms": now_ms}})
        context = {"customer_id": customer_id, "key_id": str(doc["key_id"])}
        wrapped = Wrapped(str(doc["kek_id"]), base64.b64decode(doc["wrapped"]))
        key = _DataKey(str(doc["key_id"]), AESGCM(await self._store.unwrap(tenant_id, wrapped, context)))
        self._cache[(tenant_id, customer_id)] = key
        return key

    async def _create(self, tenant_id: str, customer_id: str) -> Document | None:
        """Insert a new wrapped key; if another process inserted first, read theirs."""
        key_id = uuid.uuid4().hex[:16]
        context = {"customer_id": customer_id, "key_id": key_id}
        wrapped = await self._store.wrap(tenant_id, AESGCM.generate_key(KEY_BYTES * 8), context)
        doc: Document = {
            "_id": key_doc_id(tenant_id, customer_id),
            "tenant_id": tenant_id,
            "customer_id": customer_id,
            "key_id": key_id,
            "kek_id": wrapped.kek_id,
            "wrapped": base64.b64encode(wrapped.blob).decode("ascii"),
            "created_at": self._now(),
            "last_used_ms": _ms(self._now()),
        }
        try:
            await self._keys.insert_one(doc)
        except DuplicateKeyError:
            return await self._keys.find_one(exact({"_id": doc["_id"]}))  # None: erased meanwhile
        return doc
