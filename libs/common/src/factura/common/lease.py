"""A named lease in MongoDB: at most one live owner, taken over when its holder stops renewing.

One document per lease: ``{_id: name, owner, expires_at, renewed_at}``. Acquiring and renewing
are the same compare-and-set, a ``find_one_and_update`` upsert on
``{_id: name, $or: [{expires_at <= now}, {owner: me}]}``:

* the lease is free (no document yet, or expired) or already mine → the update matches (or
  inserts) and I hold it until ``now + ttl``;
* someone else holds a live lease → the filter matches nothing, the upsert tries to insert a
  second document with the same ``_id`` and MongoDB answers ``DuplicateKeyError``: not mine.
  (The local MongoDB-wire server answers ``None`` instead; both mean the same.)

:meth:`Lease.release` expires the lease at once on a clean stop so another replica takes over
on its next tick; a holder that dies simply stops renewing and its lease is taken after ``ttl``.

Expiry compares the acquirer's clock with the one of the replica that wrote ``expires_at``, so
clocks must agree to well within ``ttl`` (NTP gives milliseconds; ``ttl`` is minutes by default).
A holder paused for longer than the rest of its term can still finish the step in hand after
another replica took over: :meth:`Lease.keep` before every step narrows that to one step, and
each step is idempotent downstream (deterministic event ids), so the worst case is a duplicate
event that consumers already ignore, never a second email.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import Gauge
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from factura.common.envelope import utcnow
from factura.common.metrics import PREFIX
from factura.common.mongo import Document

log = logging.getLogger(__name__)
LEASE_HELD = Gauge(f"{PREFIX}lease_held", "1 while this replica holds the named lease.", ["lease"])
#: What a released lease expires at: in the past for every clock.
RELEASED = datetime(1970, 1, 1, tzinfo=UTC)


class Lease:
    def __init__(
        self,
        collection: AsyncCollection[Document],
        name: str,
        *,
        owner: str,
        ttl: timedelta,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if ttl <= timedelta(0):
            raise ValueError("lease ttl must be positive")
        self._c = collection
        self.name = name
        self.owner = owner
        self.ttl = ttl
        self._clock = clock
        #: Until when this replica holds the lease, by its own clock; None when it does not.
        self._until: datetime | None = None

    def held(self) -> bool:
        """Held by this replica right now, as far as it knows (no round trip)."""
        return self._until is not None and self._clock() < self._until

    async def acquire(self) -> bool:
        """Take the lease if it is free or expired, renew it if it is mine. True when held after."""
        now = self._clock()
        until = now + self.ttl
        try:
            doc = await self._c.find_one_and_update(
                {"_id": self.name, "$or": [{"expires_at": {"$lte": now}}, {"owner": self.owner}]},
                {"$set": {"owner": self.owner, "expires_at": until, "renewed_at": now}},
                projection={"owner": True},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            doc = None
        # nx-27017 (the local MongoDB-wire server) may apply an ``$or`` filter to another document
        # that matches the ``$or`` alone; accept the answer only if it is about this lease.
        mine = doc is not None and doc.get("_id") == self.name and doc.get("owner") == self.owner
        self._set(until if mine else None)
        return mine

    async def keep(self) -> bool:
        """Before each step of the work: still mine? Renews once less than half the term is left."""
        if self._until is None:
            return False
        if self._until - self._clock() < self.ttl / 2:
            return await self.acquire()
        return True

    async def release(self) -> None:
        """Expire the lease now if it is mine (clean stop), so another replica need not wait."""
        await self._c.update_one({"_id": self.name, "owner": self.owner}, {"$set": {"expires_at": RELEASED}})
        self._set(None)

    async def holder(self) -> str | None:
        """The owner named in the lease document, live or not (for operators and tests)."""
        doc = await self._c.find_one({"_id": self.name}, projection={"owner": True})
        return None if doc is None else str(doc["owner"])

    def _set(self, until: datetime | None) -> None:
        was = self._until is not None
        self._until = until
        if was != (until is not None):
            log.info("lease %s", "acquired" if until is not None else "released or lost", extra={"lease": self.name})
        LEASE_HELD.labels(lease=self.name).set(1 if until is not None else 0)
