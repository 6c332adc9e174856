"""Keyed lookups (tenant lookup keys wrapped by the tenant KEK) and the masking of contact data in
text that belongs to no known customer."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, cast

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from factura.common.mongo import Document
from factura.common.pii import KeyStoreError, NoKeyStore, SecretKeyStore, Wrapped
from factura.common.pii.lookup import LookupKeys
from factura.common.pii.masking import HIDDEN, PHONE, mask_address, mask_contacts


class Keys:
    """Just enough of a collection for :class:`LookupKeys`: documents by ``_id``."""

    def __init__(self) -> None:
        self.docs: dict[str, Document] = {}

    async def find_one(self, query: Mapping[str, Any]) -> Document | None:
        return self.docs.get(query["_id"]["$eq"])

    async def insert_one(self, doc: Document) -> None:
        if doc["_id"] in self.docs:
            raise DuplicateKeyError("duplicate _id")
        self.docs[doc["_id"]] = dict(doc)


class Counting(SecretKeyStore):
    def __init__(self) -> None:
        super().__init__(b"t" * 32)
        self.unwraps = 0

    async def unwrap(self, tenant_id: str, wrapped: Wrapped, context: Mapping[str, str]) -> bytes:
        self.unwraps += 1
        return await super().unwrap(tenant_id, wrapped, context)


def lookup_keys(keys: Keys, store: Any) -> LookupKeys:
    return LookupKeys(cast(AsyncCollection[Document], keys), store)


async def test_a_lookup_is_an_hmac_under_a_random_tenant_key_kept_only_wrapped() -> None:
    keys, store = Keys(), Counting()
    lookup = lookup_keys(keys, store)

    first = await lookup.digest("acme", "suppression.address", "bob@example.com")
    again = await lookup.digest("acme", "suppression.address", "bob@example.com")
    other_purpose = await lookup.digest("acme", "other", "bob@example.com")
    other_tenant = await lookup.digest("globex", "suppression.address", "bob@example.com")

    assert first == again and len(first) == 64
    assert len({first, other_purpose, other_tenant}) == 3
    assert store.unwraps == 2  # once per tenant and process: a KMS is not called per message
    stored = keys.docs["acme"]
    assert set(stored) == {"_id", "key_id", "kek_id", "wrapped", "created_at"}
    wrapped = Wrapped(stored["kek_id"], base64.b64decode(stored["wrapped"]))
    key = await SecretKeyStore(b"t" * 32).unwrap("acme", wrapped, {"purpose": "lookup", "key_id": stored["key_id"]})
    expected = hmac.new(key, b"suppression.address\x00bob@example.com", hashlib.sha256).hexdigest()
    assert first == expected
    assert first != hashlib.sha256(b"bob@example.com").hexdigest()


async def test_another_process_uses_the_same_key_and_a_missing_kek_is_an_outage() -> None:
    keys = Keys()
    mine = await lookup_keys(keys, SecretKeyStore(b"t" * 32)).digest("acme", "p", "+34600111222")
    theirs = await lookup_keys(keys, SecretKeyStore(b"t" * 32)).digest("acme", "p", "+34600111222")
    assert mine == theirs

    with pytest.raises(KeyStoreError):
        await lookup_keys(keys, NoKeyStore()).digest("acme", "p", "+34600111222")
    with pytest.raises(KeyStoreError):  # another tenant's KEK does not unwrap it
        await lookup_keys(keys, SecretKeyStore(b"x" * 32)).digest("acme", "p", "+34600111222")
    with pytest.raises(KeyStoreError):  # and nothing is created without one
        await lookup_keys(keys, NoKeyStore()).digest("globex", "p", "+34600111222")
    assert set(keys.docs) == {"acme"}


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("550 5.1.1 <Juan.Perez+f@Example.COM>: user unknown", "550 5.1.1 <***@Example.COM>: user unknown"),
        ("Final-Recipient: rfc822; ana@correo.es\r\n", "Final-Recipient: rfc822; ***@correo.es\r\n"),
        ("To=%2B34612345678&From=%2B15005550006&ErrorCode=30003", f"To={PHONE}&From={PHONE}&ErrorCode=30003"),
        (
            '{"to": "+34 612 34 56 78", "email": "bob%40example.com"}',
            f'{{"to": "{PHONE}", "email": "***%40example.com"}}',
        ),
        (
            "To: Juan Pérez <juan@example.com>,\r\n Ana <ana@example.com>\r\nSubject: F-1",
            f"To: {HIDDEN}\r\nSubject: F-1",
        ),
        ("cc: Ana <ana@example.com>", f"cc: {HIDDEN}"),
    ],
)
def test_contact_data_is_masked(text: str, masked: str) -> None:
    assert mask_contacts(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "Message-ID: <0b9f6a3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b.email@harinas-sur.test>",
        "2026-03-01T10:00:00+02:00 status=5.1.1 code 30003 sid SM0123456789abcdef0123456789abcdef",
        "total +100.00 EUR, <a@b>, version 1.2.3.4",
    ],
)
def test_what_names_no_one_is_kept(text: str) -> None:
    """Factura's own Message-IDs (what an operator needs), dates, codes and amounts."""
    assert mask_contacts(text) == text


def test_an_address_nobody_can_decrypt_shows_at_most_its_domain() -> None:
    assert mask_address("bob@example.com") == "***@example.com"
    assert mask_address("+34612345678") == PHONE
    assert mask_address("fcm-token:abc") == HIDDEN
