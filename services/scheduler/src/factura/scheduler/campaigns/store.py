"""Campaigns in MongoDB (``campaigns``): written whole before any reminder goes out, then moved
forward one chunk at a time, so a crash anywhere leaves a campaign the runner resumes.

One document per tenant and campaign id (``_id`` = ``tenant/campaign``): the filter as asked, the
invoice ids it matched (frozen at creation: the count the caller was told), the state
(``scheduled`` → ``sending`` → ``done``), ``position`` (invoices handled so far), ``sent`` and
``skipped`` (paid or cancelled meanwhile), and ``due_ms``: when the runner should look at it next
(indexed; :data:`NEVER` once done). Instants are epoch milliseconds: the local MongoDB-wire server
returns a ``$set`` datetime as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from factura.common.mongo import Document, exact
from factura.scheduler.campaigns.model import CampaignFilter
from factura.scheduler.schedule import NEVER

COLLECTION = "campaigns"
State = Literal["scheduled", "sending", "done"]


@dataclass(frozen=True)
class Campaign:
    tenant_id: str
    campaign_id: str
    filter: CampaignFilter
    #: :meth:`~factura.scheduler.campaigns.model.CampaignRequest.digest` of the request that made it.
    digest: str
    invoices: tuple[str, ...]
    created_ms: int
    #: When sending was to start: at creation inside the send window, else the next window start.
    scheduled_ms: int
    state: State = "scheduled"
    due_ms: int = NEVER
    name: str | None = None
    created_by: str | None = None
    position: int = 0
    sent: int = 0
    skipped: int = 0
    finished_ms: int | None = None

    @property
    def key(self) -> str:
        return f"{self.tenant_id}/{self.campaign_id}"

    def document(self) -> Document:
        return {
            "_id": self.key,
            "tenant_id": self.tenant_id,
            "campaign_id": self.campaign_id,
            "name": self.name,
            "filter": self.filter.model_dump(mode="json"),
            "digest": self.digest,
            "invoices": list(self.invoices),
            "matched": len(self.invoices),
            "created_ms": self.created_ms,
            "created_by": self.created_by,
            "scheduled_ms": self.scheduled_ms,
            "state": self.state,
            "due_ms": self.due_ms,
            "position": self.position,
            "sent": self.sent,
            "skipped": self.skipped,
            "finished_ms": self.finished_ms,
        }

    @classmethod
    def from_document(cls, doc: Document) -> Campaign:
        return cls(
            tenant_id=doc["tenant_id"],
            campaign_id=doc["campaign_id"],
            name=doc.get("name"),
            filter=CampaignFilter.model_validate(doc["filter"]),
            digest=doc["digest"],
            invoices=tuple(doc["invoices"]),
            created_ms=int(doc["created_ms"]),
            created_by=doc.get("created_by"),
            scheduled_ms=int(doc["scheduled_ms"]),
            state=doc["state"],
            due_ms=int(doc["due_ms"]),
            position=int(doc["position"]),
            sent=int(doc["sent"]),
            skipped=int(doc["skipped"]),
            finished_ms=int(doc["finished_ms"]) if doc.get("finished_ms") is not None else None,
        )


class Campaigns:
    def __init__(self, collection: AsyncCollection[Document]) -> None:
        self._c = collection

    async def ensure_indexes(self) -> None:
        await self._c.create_index("due_ms")

    async def create(self, campaign: Campaign) -> tuple[Campaign, bool]:
        """Store ``campaign``; if its id is taken (a retried request, or a race with one), the
        stored campaign and ``False`` instead."""
        try:
            await self._c.insert_one(campaign.document())
        except DuplicateKeyError:
            existing = await self.get(campaign.tenant_id, campaign.campaign_id)
            if existing is None:
                raise
            return existing, False
        return campaign, True

    async def get(self, tenant_id: str, campaign_id: str) -> Campaign | None:
        doc = await self._c.find_one(exact({"_id": f"{tenant_id}/{campaign_id}"}))
        return None if doc is None else Campaign.from_document(doc)

    async def due(self, now_ms: int, limit: int = 100) -> list[Campaign]:
        """Campaigns to send (or resume) by ``now_ms``, earliest first."""
        cursor = self._c.find({"due_ms": {"$lte": now_ms}}).sort("due_ms", 1).limit(limit)
        return [Campaign.from_document(doc) async for doc in cursor]

    async def advance(self, campaign: Campaign, *, position: int, sent: int, skipped: int) -> bool:
        """Record a chunk handled, if nobody moved the campaign since ``campaign`` was read."""
        return await self._move(campaign, {"state": "sending", "position": position, "sent": sent, "skipped": skipped})

    async def postpone(self, campaign: Campaign, until_ms: int) -> bool:
        """The send window is closed: look again at ``until_ms`` (its next start)."""
        return await self._move(campaign, {"state": "scheduled", "due_ms": until_ms})

    async def finish(self, campaign: Campaign, now_ms: int) -> bool:
        return await self._move(campaign, {"state": "done", "due_ms": NEVER, "finished_ms": now_ms})

    async def _move(self, campaign: Campaign, changes: Document) -> bool:
        seen = exact({"_id": campaign.key, "position": campaign.position})
        result = await self._c.update_one(seen, {"$set": changes})
        return bool(result.matched_count)
