"""The delivery ledger keeps its outcomes encrypted under the customer's data key, against the real
MongoDB: no contact data in the clear, redeliveries re-publish the same event, and after an erasure
a redelivery publishes nothing (and fails nothing); outcomes stored in the clear before still work.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from factura.common.delivery.sender import later_failure
from factura.common.envelope import Envelope
from factura.common.ledger import DeliveryLedger, OutcomeErased
from factura.common.mongo import Document, create_client
from factura.common.pii import FieldCipher, SecretKeyStore, is_token
from factura.common.tenants import TenantDirectory
from factura.devstack.config import StackConfig
from tests.conftest import mongo_settings
from tests.integration.test_ledger import Sender, cause

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    db: AsyncDatabase[Document]
    deliveries: str
    cipher: FieldCipher

    def sender(self, owner: str, *, encrypted: bool = True) -> Sender:
        """A sender process of its own (nothing shared in memory with the others)."""
        cipher = self.cipher if encrypted else None
        return Sender(DeliveryLedger(self.db[self.deliveries], owner=owner, cipher=cipher))

    async def stored(self, event: Envelope[Any]) -> Document:
        doc = await self.db[self.deliveries].find_one({"_id": f"{event.event_id}:email"})
        assert doc is not None
        return doc


@pytest.fixture
async def rig(cfg: StackConfig) -> AsyncIterator[Rig]:
    settings = mongo_settings(cfg)
    client = create_client(settings, server_selection_ms=1000)
    db = client[settings.database]
    suffix = uuid.uuid4().hex[:8]
    try:
        yield Rig(db, f"deliveries_{suffix}", FieldCipher(db[f"keys_{suffix}"], SecretKeyStore(b"k" * 32)))
    finally:
        await client.close()


def contact_data(event: Envelope[Any]) -> list[str]:
    customer = event.data.invoice.customer
    return [customer.email, customer.phone, customer.name[:8]]


async def test_the_outcome_is_stored_encrypted_and_a_redelivery_republishes_it(rig: Rig) -> None:
    event = cause()
    first = rig.sender("A")
    await first.deliver(event)
    doc = await rig.stored(event)
    assert doc["state"] == "done" and is_token(doc["outcome"]) and doc["customer_id"] == "C-1042"
    assert [text for text in contact_data(event) if text in str(doc)] == []

    again = rig.sender("B")
    await again.deliver(event)
    assert again.sent == [] and again.published == first.published
    assert again.published[0].data.recipient == "facturas@pasteleria-lucia.es"


async def test_after_erasure_a_redelivery_publishes_nothing_and_raises_nothing(rig: Rig) -> None:
    event = cause()
    first = rig.sender("A")
    await first.deliver(event)
    provider_id = first.published[0].data.provider_message_id
    assert await first.ledger.accepted_message(provider_id) == first.published[0]

    assert await rig.cipher.erase(event.tenant_id, "C-1042")
    again = rig.sender("B")
    await again.deliver(event)
    assert (again.sent, again.published) == ([], [])
    assert await again.ledger.accepted_message(provider_id) is None  # a later bounce finds nothing


async def test_a_late_report_is_stored_encrypted_and_republished(rig: Rig) -> None:
    event = cause()
    sender = rig.sender("A")
    await sender.deliver(event)
    delivered = sender.published[0]
    tenant = TenantDirectory(None).get(event.tenant_id)
    failed = later_failure(delivered, tenant, "email-sender", "hard_bounce", "550 5.1.1 facturas@pasteleria-lucia.es")
    assert await sender.ledger.report_once(delivered, failed) == failed
    doc = await rig.stored(event)
    assert is_token(doc["late_outcome"]) and "pasteleria-lucia" not in doc["late_outcome"]

    other = later_failure(delivered, tenant, "email-sender", "soft_bounce", "452 mailbox full")
    assert await rig.sender("B").ledger.report_once(delivered, other) == failed
    await rig.cipher.erase(event.tenant_id, "C-1042")
    with pytest.raises(OutcomeErased):
        await rig.sender("C").ledger.report_once(delivered, other)


async def test_an_outcome_stored_in_the_clear_before_is_still_republished(rig: Rig) -> None:
    event = cause()
    before = rig.sender("A", encrypted=False)  # the ledger as it was before encryption
    await before.deliver(event)
    assert (await rig.stored(event))["outcome"].startswith("{")

    now = rig.sender("B")
    await now.deliver(event)
    assert now.sent == [] and now.published == before.published
    assert await now.ledger.accepted_message(before.published[0].data.provider_message_id) == before.published[0]


async def test_the_customers_key_is_loaded_before_the_provider_is_called(rig: Rig) -> None:
    event = cause()
    assert await rig.cipher.key_id(event.tenant_id, "C-1042") is None

    async def keyed() -> None:
        assert await rig.cipher.key_id(event.tenant_id, "C-1042") is not None

    sender = rig.sender("A")
    await sender.deliver(event, hold=keyed)
    assert sender.sent == [str(event.event_id)]
