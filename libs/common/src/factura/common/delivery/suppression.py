"""Suppression list: addresses and numbers a tenant must not use again.

An address that hard-bounced or whose owner complained (marked the message as spam, texted
STOP) is suppressed for that tenant, so the next message goes straight to the next channel
instead of bouncing again and hurting the tenant's sender reputation. Entries are kept, not
deleted, when an admin lifts them (who, when and why stay on record); a later bounce suppresses
the address again.

Personal data: no address is stored readable. One document per tenant and address, ``_id =
"<tenant>:hmac:<HMAC-SHA256 of the case-folded address>"`` under the tenant's lookup key
(:mod:`factura.common.pii.lookup`), so a sender finds an entry by the address it is about to use
and an admin lifts one by the address they type, without the list holding it. The address itself
is kept only encrypted under the customer's data key when the caller names the customer, else as
a mask (``***@domain``); the provider's words (``detail``) and the admin's note are masked too.

Erasing the customer makes the listed address ``[erased]``, and the entry **keeps blocking** that
address. That is right: a suppression protects the tenant's sender reputation and the person
(who bounced or asked not to be contacted, and is not mailed again because someone re-imported
them); after the erasure it holds nothing readable about them, only a keyed hash that matches the
address when someone already holding it tries to use it.

Entries written before (``_id = "<tenant>:<address>"``, the address in the clear) are rewritten
by :meth:`SuppressionStore.migrate` at startup; until then they are still honoured, since
lookups read both ids (one round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from prometheus_client import Gauge
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from factura.common.envelope import utcnow
from factura.common.events import Channel, FailureReason
from factura.common.metrics import PREFIX, counter, tenant_label
from factura.common.mongo import Document
from factura.common.pii.fields import FieldCipher
from factura.common.pii.keystore import KeyStoreError
from factura.common.pii.lookup import LookupKeys
from factura.common.pii.masking import mask_address, mask_contacts

log = logging.getLogger(__name__)
CHANGES = counter("suppressions_changed_total", "Suppression list changes.", ("tenant", "channel", "change"))
ACTIVE = Gauge(
    f"{PREFIX}suppressions_active",
    "Addresses suppressed now, per tenant (allow-listed, else `other`; refreshed periodically).",
    ["tenant"],
)
#: The lookup-key purpose of suppression hashes, and the field name the address is encrypted as.
PURPOSE: Final = "suppression.address"


def _labelled(gauge: Gauge) -> list[tuple[str, ...]]:
    """Label values the gauge has been set for."""
    return [tuple(sample.labels.values()) for metric in gauge.collect() for sample in metric.samples]


def normalise(address: str) -> str:
    """Case-folded: mailbox providers treat local parts case-insensitively in practice."""
    return address.strip().casefold()


def _keyed_id(tenant_id: str, digest: str) -> str:
    return f"{tenant_id}:hmac:{digest}"


def _when(value: Any) -> datetime:
    """A stored time: nx-27017 returns datetimes written by ``$set`` as ISO strings."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class Suppression:
    tenant_id: str
    address: str
    channel: Channel
    reason: FailureReason
    detail: str
    since: datetime
    source_event_id: str | None
    active: bool
    lifted_by: str | None = None
    lifted_at: datetime | None = None

    @classmethod
    def from_doc(cls, doc: Document) -> Suppression:
        return cls(
            tenant_id=doc["tenant_id"],
            address=doc["address"],
            channel=doc["channel"],
            reason=doc["reason"],
            detail=doc.get("detail", ""),
            since=_when(doc["since"]),
            source_event_id=doc.get("source_event_id"),
            active=bool(doc.get("active")),
            lifted_by=doc.get("lifted_by"),
            lifted_at=_when(doc["lifted_at"]) if doc.get("lifted_at") else None,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "address": self.address,
            "channel": self.channel,
            "reason": self.reason,
            "detail": self.detail,
            "since": self.since.isoformat(),
            "source_event_id": self.source_event_id,
            "active": self.active,
            "lifted_by": self.lifted_by,
            "lifted_at": self.lifted_at.isoformat() if self.lifted_at else None,
        }


class SuppressionStore:
    """``lookup`` and ``cipher`` keep addresses out of the store (see the module docstring)."""

    def __init__(self, collection: AsyncCollection[Document], *, lookup: LookupKeys, cipher: FieldCipher) -> None:
        self._c = collection
        self._lookup = lookup
        self._cipher = cipher

    async def ensure_indexes(self) -> None:
        await self._c.create_index([("tenant_id", 1), ("active", 1)])

    async def _entry(self, tenant_id: str, key: str) -> Document | None:
        """The entry of an address, keyed or written before :meth:`migrate` (one round trip); the
        keyed one when both exist (it is the newer)."""
        ids = [_keyed_id(tenant_id, await self._lookup.digest(tenant_id, PURPOSE, key)), f"{tenant_id}:{key}"]
        docs = {d["_id"]: d async for d in self._c.find({"_id": {"$in": ids}})}
        return next((docs[i] for i in ids if i in docs), None)

    async def suppress(
        self,
        tenant_id: str,
        address: str,
        *,
        channel: Channel,
        reason: FailureReason,
        detail: str,
        source_event_id: str | None,
        customer_id: str | None = None,
    ) -> None:
        """Suppress ``address`` (idempotent: a redelivered bounce rewrites the same entry).
        ``customer_id``: whose address it is, so the listed address is erased with them."""
        key = normalise(address)
        digest = await self._lookup.digest(tenant_id, PURPOSE, key)
        doc_id = _keyed_id(tenant_id, digest)
        if customer_id is not None:
            shown = await self._cipher.encrypt_field(tenant_id, customer_id, PURPOSE, key)
        else:
            shown = mask_address(key)
        doc: Document = {
            "_id": doc_id,  # nx-27017 does not take an upsert's _id from the filter
            "tenant_id": tenant_id,
            "address": shown,
            "channel": channel,
            "reason": reason,
            "detail": mask_contacts(detail)[:500],
            "since": utcnow(),
            "source_event_id": source_event_id,
            "active": True,
            "lookup": digest,
            "customer_id": customer_id,
        }
        await self._c.replace_one({"_id": doc_id}, doc, upsert=True)
        CHANGES.labels(tenant=tenant_label(tenant_id), channel=channel, change="suppressed").inc()

    async def find(self, tenant_id: str, address: str) -> Suppression | None:
        """The active suppression of ``address`` for this tenant, if any (its ``address`` is the
        one asked about: nothing is decrypted on the way to a send)."""
        key = normalise(address)
        doc = await self._entry(tenant_id, key)
        if doc is None or not doc.get("active"):
            return None
        return Suppression.from_doc(doc | {"address": key})

    async def list(self, tenant_id: str, *, include_lifted: bool = False, limit: int = 500) -> list[Suppression]:
        """The tenant's entries, newest first, each address decrypted (``[erased]`` after its
        customer's erasure, a mask where no customer was named)."""
        query: Document = {"tenant_id": tenant_id} if include_lifted else {"tenant_id": tenant_id, "active": True}
        docs = await self._c.find(query).sort("since", -1).limit(limit).to_list()
        return [await self._shown(doc) for doc in docs]

    async def _shown(self, doc: Document) -> Suppression:
        entry = Suppression.from_doc(doc)
        customer = doc.get("customer_id")
        if customer is None:
            return entry
        address = await self._cipher.reveal(entry.tenant_id, str(customer), PURPOSE, entry.address)
        return dataclasses.replace(entry, address=str(address))

    async def count(self, tenant_id: str) -> int:
        return await self._c.count_documents({"tenant_id": tenant_id, "active": True})

    async def refresh_gauge(self) -> None:
        """Set ``factura_suppressions_active`` from the store (one aggregation over active entries)."""
        pipeline: list[Document] = [{"$match": {"active": True}}, {"$group": {"_id": "$tenant_id", "n": {"$sum": 1}}}]
        sizes: dict[str, int] = {}
        async for doc in await self._c.aggregate(pipeline):  # tenants off the allow-list add up as `other`
            label = tenant_label(str(doc["_id"]))
            sizes[label] = sizes.get(label, 0) + int(doc["n"])
        for tenant, n in sizes.items():
            ACTIVE.labels(tenant).set(n)
        for (tenant,) in [key for key in _labelled(ACTIVE) if key[0] not in sizes]:
            ACTIVE.labels(tenant).set(0)

    async def run_gauge(self, stopping: asyncio.Event, every_s: float = 60.0) -> None:
        """Background task: refresh the gauge until the service stops (an outage only skips a round)."""
        while not stopping.is_set():
            try:
                await self.refresh_gauge()
            except PyMongoError as e:
                log.info("suppression gauge not refreshed: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=every_s)

    async def lift(self, tenant_id: str, address: str, *, by: str, note: str = "") -> bool:
        """Allow ``address`` again. False when it was not suppressed."""
        doc = await self._entry(tenant_id, normalise(address))
        if doc is None:
            return False
        result = await self._c.update_one(
            {"_id": doc["_id"], "active": True},
            {
                "$set": {
                    "active": False,
                    "lifted_by": by[:200],
                    "lifted_note": mask_contacts(note)[:500],
                    "lifted_at": utcnow(),
                }
            },
        )
        if result.modified_count:
            CHANGES.labels(tenant=tenant_label(tenant_id), channel=doc.get("channel", "email"), change="lifted").inc()
        return bool(result.modified_count)

    async def migrate(self) -> int:
        """Rewrite the entries stored before keyed lookups (``_id`` and ``address`` in the clear)
        into the keyed form, and delete them; returns how many. Their customer is unknown, so the
        address becomes a mask. A tenant whose KEK is missing is left for a later start (logged;
        lookups still honour its old entries); a keyed entry of the same address is newer and wins.
        """
        old = await self._c.find({"lookup": {"$exists": False}}).to_list()
        moved, skipped = 0, set[str]()
        for doc in old:
            tenant = str(doc["tenant_id"])
            if tenant in skipped:
                continue
            try:
                digest = await self._lookup.digest(tenant, PURPOSE, normalise(str(doc["address"])))
            except KeyStoreError as e:
                log.warning("suppressions of tenant %s not migrated yet: %s", tenant, e)
                skipped.add(tenant)
                continue
            keyed = doc | {
                "_id": _keyed_id(tenant, digest),
                "lookup": digest,
                "customer_id": None,
                "address": mask_address(str(doc["address"])),
                "detail": mask_contacts(str(doc.get("detail", ""))),
                "lifted_note": mask_contacts(str(doc.get("lifted_note", ""))),
            }
            with contextlib.suppress(DuplicateKeyError):
                await self._c.insert_one(keyed)
            await self._c.delete_one({"_id": doc["_id"]})
            moved += 1
        if moved:
            log.info("suppressions: %d entries rewritten with keyed lookups", moved)
        return moved
