"""Personal data encryption: key stores, field tokens, erasure, and what audit encrypts in a record.

The data keys live in a dict standing in for ``customer_keys`` (the real collection is exercised by
tests/integration/test_erasure.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from pymongo.errors import DuplicateKeyError

from factura.audit.records import from_dead_letter, from_event, protect, reveal
from factura.common.events import parse_event
from factura.common.kafka.consumer import Message
from factura.common.pii import (
    ERASED,
    Erased,
    FieldCipher,
    FileKeyStore,
    KeyStoreError,
    KmsKeyStore,
    SecretKeyStore,
    Undecryptable,
    Wrapped,
    is_token,
    new_kek_line,
)
from factura.common.schemas import EXAMPLES_DIR
from factura.common.topics import resolve

EMAIL = "facturas@pasteleria-lucia.es"


class _Deleted:
    def __init__(self, n: int) -> None:
        self.deleted_count = n


class FakeKeys:
    """``customer_keys`` as a dict: the few calls FieldCipher makes, with ``$eq`` filters."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.finds = 0

    @staticmethod
    def _matches(doc: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
        return all(doc.get(k) == (v["$eq"] if isinstance(v, dict) else v) for k, v in query.items())

    async def find_one(self, query: Mapping[str, Any], projection: Any = None) -> dict[str, Any] | None:
        self.finds += 1
        return next((dict(d) for d in self.docs.values() if self._matches(d, query)), None)

    async def insert_one(self, doc: dict[str, Any]) -> None:
        if doc["_id"] in self.docs:
            raise DuplicateKeyError("E11000")
        self.docs[doc["_id"]] = dict(doc)

    async def update_one(self, query: Mapping[str, Any], update: Mapping[str, Any]) -> None:
        for doc in self.docs.values():
            if self._matches(doc, query):
                doc.update(update["$set"])

    async def delete_one(self, query: Mapping[str, Any]) -> _Deleted:
        for key, doc in list(self.docs.items()):
            if self._matches(doc, query):
                del self.docs[key]
                return _Deleted(1)
        return _Deleted(0)


def cipher(keys: FakeKeys | None = None, secret: bytes = b"s" * 32) -> FieldCipher:
    return FieldCipher(cast(Any, keys or FakeKeys()), SecretKeyStore(secret))


def message(name: str) -> Message[Any]:
    raw = (EXAMPLES_DIR / name).read_bytes()
    event = parse_event(raw)
    return Message(resolve(event.type), 0, 7, b"k", {}, raw, event)


# --- key stores -------------------------------------------------------------------------------------


async def test_file_keystore_wraps_with_the_last_kek_and_unwraps_with_any(tmp_path: Path) -> None:
    (tmp_path / "acme.kek").write_text(f"# acme\n{new_kek_line('k1')}\n")
    old = await FileKeyStore(tmp_path).wrap("acme", b"d" * 32, {"customer_id": "C1"})
    with (tmp_path / "acme.kek").open("a") as f:
        f.write(new_kek_line("k2") + "\n")
    store = FileKeyStore(tmp_path)
    new = await store.wrap("acme", b"d" * 32, {"customer_id": "C1"})
    assert (old.kek_id, new.kek_id) == ("k1", "k2")
    assert await store.unwrap("acme", old, {"customer_id": "C1"}) == b"d" * 32
    with pytest.raises(KeyStoreError, match="does not unwrap"):  # the context is bound
        await store.unwrap("acme", new, {"customer_id": "C2"})
    with pytest.raises(KeyStoreError, match="no KEK file for tenant 'beta'"):
        await store.wrap("beta", b"d" * 32, {})
    with pytest.raises(KeyStoreError, match="no KEK 'k9'"):
        await store.unwrap("acme", Wrapped("k9", new.blob), {"customer_id": "C1"})


@pytest.mark.parametrize("line", ["k1 not-base64!", "k1 " + base64.b64encode(b"short").decode(), "bad/id " + "A" * 44])
def test_a_malformed_kek_file_is_refused_naming_the_line(tmp_path: Path, line: str) -> None:
    (tmp_path / "acme.kek").write_text(f"\n{line}\n")
    with pytest.raises(KeyStoreError, match=r"acme\.kek line 2"):
        FileKeyStore(tmp_path)._load("acme")


async def test_derived_keks_differ_per_tenant_and_secret() -> None:
    store = SecretKeyStore(b"x" * 32)
    wrapped = await store.wrap("acme", b"d" * 32, {})
    with pytest.raises(KeyStoreError):
        await store.unwrap("beta", wrapped, {})
    with pytest.raises(KeyStoreError):
        await SecretKeyStore(b"y" * 32).unwrap("acme", wrapped, {})
    with pytest.raises(ValueError, match="32 bytes"):
        SecretKeyStore(b"short")


async def test_a_kms_sees_the_tenant_and_context_and_never_the_kek() -> None:
    calls: list[tuple[str, str, dict[str, str]]] = []

    class Kms:
        async def encrypt(self, key: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
            calls.append(("encrypt", key, dict(context)))
            return plaintext[::-1]

        async def decrypt(self, key: str, ciphertext: bytes, context: Mapping[str, str]) -> bytes:
            calls.append(("decrypt", key, dict(context)))
            return ciphertext[::-1]

    store = KmsKeyStore(Kms(), lambda tenant: f"arn:kms:{tenant}")
    wrapped = await store.wrap("acme", b"data-key", {"customer_id": "C1"})
    assert await store.unwrap("acme", wrapped, {"customer_id": "C1"}) == b"data-key"
    assert calls[0] == ("encrypt", "arn:kms:acme", {"tenant_id": "acme", "customer_id": "C1"})
    assert calls[1][1] == "arn:kms:acme"


# --- fields -----------------------------------------------------------------------------------------


async def test_a_field_round_trips_and_is_bound_to_its_customer_and_field() -> None:
    keys = FakeKeys()
    fields = cipher(keys)
    token = await fields.encrypt_field("acme", "C1", "email", EMAIL)
    assert token.startswith("enc:v1:") and EMAIL not in token and token.count(":") == 4
    assert await fields.decrypt_field("acme", "C1", "email", token) == EMAIL
    assert token != await fields.encrypt_field("acme", "C1", "email", EMAIL)  # a fresh nonce each time
    with pytest.raises(Undecryptable):
        await fields.decrypt_field("acme", "C1", "phone", token)  # moved to another field
    await fields.encrypt_field("acme", "C2", "email", "x@y.test")
    with pytest.raises(Erased):  # another customer's key id: as if erased (a moved token)
        await fields.decrypt_field("acme", "C2", "email", token)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(Undecryptable):
        await fields.decrypt_field("acme", "C1", "email", tampered)
    assert set(keys.docs) == {"acme/C1", "acme/C2"}
    assert "wrapped" in keys.docs["acme/C1"] and keys.docs["acme/C1"]["kek_id"] == "derived-1"


async def test_json_values_round_trip() -> None:
    fields = cipher()
    address = {"street": "Calle Mayor 1", "city": "Sevilla", "lines": ["2º B"]}
    token = await fields.encrypt_value("acme", "C1", "address", address)
    assert await fields.decrypt_value("acme", "C1", "address", token) == address
    with pytest.raises(Undecryptable, match="JSON value"):
        await fields.decrypt_field("acme", "C1", "address", token)


async def test_erasure_makes_every_token_unreadable_and_a_new_key_does_not_bring_them_back() -> None:
    keys = FakeKeys()
    fields = cipher(keys)
    token = await fields.encrypt_field("acme", "C1", "email", EMAIL)
    key_id = await fields.key_id("acme", "C1")
    assert await fields.erase("acme", "C1", key_id=key_id) is True
    assert await fields.erase("acme", "C1") is False
    with pytest.raises(Erased):
        await fields.decrypt_field("acme", "C1", "email", token)
    assert await fields.reveal("acme", "C1", "email", token) == ERASED
    again = await fields.encrypt_field("acme", "C1", "email", "new@y.test")  # seen again: a new key
    assert await fields.key_id("acme", "C1") not in (None, key_id)
    assert await fields.reveal("acme", "C1", "email", token) == ERASED
    assert await fields.reveal("acme", "C1", "email", again) == "new@y.test"
    assert await fields.reveal("acme", "C1", "email", "plain") == "plain"


async def test_keys_are_cached_and_an_erasure_evicts_the_cache() -> None:
    keys = FakeKeys()
    fields = cipher(keys)
    token = await fields.encrypt_field("acme", "C1", "email", EMAIL)
    finds = keys.finds
    for _ in range(5):
        await fields.decrypt_field("acme", "C1", "email", token)
    assert keys.finds == finds
    await fields.erase("acme", "C1")
    with pytest.raises(Erased):
        await fields.decrypt_field("acme", "C1", "email", token)


async def test_two_processes_creating_one_customers_key_agree() -> None:
    keys = FakeKeys()
    first, second = cipher(keys), cipher(keys)
    a = await first.encrypt_field("acme", "C1", "email", EMAIL)
    # second's lookup missed before first's insert: its insert loses and it reads first's key
    original = keys.find_one
    misses = iter([True])

    async def racing(query: Mapping[str, Any], projection: Any = None) -> dict[str, Any] | None:
        return None if next(misses, False) else await original(query, projection)

    keys.find_one = racing  # type: ignore[method-assign]
    b = await second.encrypt_field("acme", "C1", "email", EMAIL)
    assert len(keys.docs) == 1
    assert await second.decrypt_field("acme", "C1", "email", a) == EMAIL
    assert await first.decrypt_field("acme", "C1", "email", b) == EMAIL


async def test_a_customer_object_is_sealed_field_by_field_and_opens_as_erased_after_erasure() -> None:
    fields = cipher()
    customer = {"customer_id": "C1", "name": "Ana", "email": "ana@x.es", "phone": None, "country": "ES"}
    sealed = await fields.seal_contact("acme", customer)
    assert is_token(sealed["name"]) and is_token(sealed["email"]) and sealed["phone"] is None
    assert (sealed["customer_id"], sealed["country"]) == ("C1", "ES")  # not contact data: readable
    assert await fields.seal_contact("acme", sealed) == sealed  # tokens are not sealed twice
    assert await fields.open_contact("acme", sealed) == (customer, None)
    assert await fields.open_contact("acme", customer) == (customer, None)  # stored before encryption

    await fields.erase("acme", "C1")
    opened, lost = await fields.open_contact("acme", sealed)
    assert lost == "customer_erased"
    assert opened == {"customer_id": "C1", "name": ERASED, "email": None, "phone": None, "country": "ES"}
    moved = await fields.seal_contact("acme", customer | {"customer_id": "C2"})
    swapped = moved | {"email": moved["name"]}  # a token moved to another field does not decrypt
    assert (await fields.open_contact("acme", swapped))[1] == "contact_undecryptable"


# --- audit records -------------------------------------------------------------------------------------


async def test_an_event_record_keeps_fiscal_fields_and_encrypts_contact_data() -> None:
    fields = cipher()
    record = await protect(from_event(message("invoice.created.v1.json")), fields)
    assert EMAIL not in record.raw and "+34612345678" not in record.raw and "Pasteler" not in record.raw
    data = json.loads(record.raw)["data"]
    assert (data["invoice_number"], data["total"], data["due_date"]) == ("F-2026-000123", "286.55", "2026-12-02")
    assert data["customer"]["customer_id"] == "C-1042" and data["customer"]["tax_id"] == "B12345678"
    assert is_token(data["customer"]["email"]) and is_token(data["customer"]["name"])
    doc = {"tenant_id": record.tenant_id, "customer_id": record.fields["customer_id"], "kind": "event"}
    shown = await reveal(doc, json.loads(record.raw), fields)
    assert shown["data"]["customer"]["email"] == EMAIL


async def test_a_delivery_failure_encrypts_the_recipient_and_the_provider_text() -> None:
    fields = cipher()
    record = await protect(from_event(message("delivery.failed.v2.json")), fields)
    assert "pasteleria-lucia" not in record.raw
    data = json.loads(record.raw)["data"]
    assert all(is_token(data[k]) for k in ("recipient", "detail", "evidence"))
    assert data["reason"] == "hard_bounce" and data["notice"]["invoice"]["total"] == "286.55"
    customer = str(record.fields["customer_id"])
    doc = {"tenant_id": record.tenant_id, "customer_id": customer, "kind": "event"}
    await fields.erase(record.tenant_id, customer)
    shown = await reveal(doc, json.loads(record.raw), fields)
    assert shown["data"]["recipient"] == ERASED and shown["data"]["notice"]["invoice"]["customer"]["email"] == ERASED
    assert shown["data"]["notice"]["invoice"]["invoice_number"] == "F-2026-000123"


async def test_records_without_contact_data_are_left_as_they_are() -> None:
    fields = cipher()
    for name in ("payment.received.v1.json", "delivery.opened.v1.json"):
        record = from_event(message(name))
        assert await protect(record, fields) is record


async def test_a_dead_lettered_erp_invoice_has_its_customer_encrypted_in_the_body() -> None:
    fields = cipher()
    body = {"tenant_id": "acme", "invoice_number": "F-1", "customer": {"id": "C9", "name": "Ana", "email": EMAIL}}
    raw = json.dumps(body).encode()
    headers = {"dlq.reason": b"invalid", "dlq.service": b"ingest", "dlq.source": b"erp.invoices/0/1"}
    record = await protect(
        from_dead_letter(Message(resolve("erp.invoices.dlq"), 0, 3, None, headers, raw, raw)), fields
    )
    assert EMAIL not in record.raw and "Ana" not in record.raw
    assert record.fields["customer_id"] == "C9"
    shown = await reveal(
        {"tenant_id": "acme", "customer_id": "C9", "kind": "dead_letter"}, json.loads(record.raw), fields
    )
    assert json.loads(shown["body"])["customer"] == {"id": "C9", "name": "Ana", "email": EMAIL}
