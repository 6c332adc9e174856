"""The read side of the audit: what compliance asks of ``audit_records``, as MongoDB queries.

Every query is scoped to one tenant and built here from validated values only: a caller's input is
always an equality *value* (or a bound of a range we write), never a document, so ``{"$ne": …}`` or
``$where`` in a parameter can only ever match a record that literally contains that text.

Within a tenant ``seq`` is the chain order, so it is what pages are cut on (keyset pagination:
``seq > last`` / ``seq < last``), and a page costs the same on page 1 and page 10 000. Cursors are
opaque, HMAC-signed and bound to the tenant and the exact filters of the query that issued them, so
a forged cursor, or one replayed against another tenant or other filters, is refused.

nx-27017 (the local MongoDB-wire server) ignores datetime ranges inside an aggregation ``$match``
and cannot group on a compound ``_id``; so ranges on ``occurred_at`` use ``find`` only, and the
per-day counts group on a ``$concat`` key. Both forms mean the same on a real MongoDB.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Final

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from factura.common.mongo import Document, exact


class Status(StrEnum):
    """What a record says happened; the ``outcome`` field (``status`` in the API)."""

    DELIVERED = "delivered"
    FAILED = "failed"
    EXHAUSTED = "exhausted"
    PENDING = "pending"
    PAID = "paid"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"


class Kind(StrEnum):
    EVENT = "event"
    DEAD_LETTER = "dead_letter"
    ACCESS = "access"
    ERASURE = "erasure"


#: Searches and counts leave out API access records unless asked: every query writes one, so they
#: would otherwise bury the records an officer is looking for. Erasures are in: a customer's
#: history should show that their contact data was erased.
DEFAULT_KINDS: Final = (Kind.EVENT.value, Kind.DEAD_LETTER.value, Kind.ERASURE.value)
#: The purpose of a message that delivers the invoice itself (not a reminder or a receipt).
INVOICE_PURPOSE: Final = "invoice"
#: Rounds of "next invoices with failures, minus those delivered since" one report page may take.
_REPORT_ROUNDS: Final = 8
_SEP: Final = "\x1f"  # unit separator: joins the group key of the per-day counts
_NULL: Final = "\x1e"  # stands for a missing field inside that key
_MAX_CURSOR_CHARS: Final = 1024


# --- cursors ---------------------------------------------------------------------------------


class CursorError(ValueError):
    """A cursor that this query did not issue: forged, damaged, or from another tenant or filter."""


@dataclass(frozen=True)
class Cursors:
    """Opaque page cursors: ``base64url(json) . base64url(hmac-sha256)``.

    The payload names the tenant, the position (a ``seq`` or an invoice id) and a digest of the
    query's filters (``scope``); :meth:`decode` refuses a cursor whose MAC does not verify or whose
    tenant or scope differ from the query it is presented to.
    """

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ValueError("the cursor key must have at least 16 bytes")

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.key, b"factura.audit.cursor\x00" + payload, hashlib.sha256).digest()

    def encode(self, tenant_id: str, scope: str, position: int | str) -> str:
        payload = json.dumps({"t": tenant_id, "f": scope, "p": position}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, token: str, tenant_id: str, scope: str) -> int | str:
        payload = self._verified(token)
        try:
            value = json.loads(payload)
            tenant, issued_for, position = value["t"], value["f"], value["p"]
        except (ValueError, KeyError, TypeError) as e:
            raise CursorError("invalid cursor") from e
        if tenant != tenant_id or issued_for != scope:
            raise CursorError("invalid cursor: it was issued for another tenant or other filters")
        if not isinstance(position, int | str) or isinstance(position, bool):
            raise CursorError("invalid cursor")
        return position

    def _verified(self, token: str) -> bytes:
        if len(token) > _MAX_CURSOR_CHARS or token.count(".") != 1:
            raise CursorError("invalid cursor")
        body, mac = token.split(".")
        try:
            payload, signature = _unb64(body), _unb64(mac)
        except (ValueError, binascii.Error) as e:
            raise CursorError("invalid cursor") from e
        if not hmac.compare_digest(signature, self._mac(payload)):
            raise CursorError("invalid cursor")
        return payload


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def scope_of(name: str, **filters: object) -> str:
    """A short digest of a query's name and filters: what a cursor is bound to."""
    canonical = json.dumps({"q": name, **filters}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


# --- filters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordFilter:
    """A search over one tenant's records; every field is an already validated plain value.

    ``occurred_from`` is inclusive and ``occurred_to`` exclusive, both UTC. ``kind=None`` means
    events and dead letters (:data:`DEFAULT_KINDS`).
    """

    tenant_id: str
    customer_id: str | None = None
    invoice_id: str | None = None
    status: Status | None = None
    channel: str | None = None
    reason: str | None = None
    type: str | None = None
    purpose: str | None = None
    kind: Kind | None = None
    occurred_from: datetime | None = None
    occurred_to: datetime | None = None

    def query(self) -> Document:
        query: Document = {"tenant_id": str(self.tenant_id)}
        equalities = {
            "customer_id": self.customer_id,
            "invoice_id": self.invoice_id,
            "outcome": self.status,
            "channel": self.channel,
            "reason": self.reason,
            "type": self.type,
            "purpose": self.purpose,
        }
        for name, value in equalities.items():
            if value is not None:
                query[name] = str(value)  # str(): a value, whatever a caller managed to pass
        query["kind"] = str(self.kind) if self.kind is not None else {"$in": list(DEFAULT_KINDS)}
        occurred = _range(self.occurred_from, self.occurred_to)
        if occurred:
            query["occurred_at"] = occurred
        return query

    def scope(self, name: str) -> str:
        return scope_of(name, **asdict(self))


def _range(start: datetime | None, end: datetime | None) -> Document:
    bounds: Document = {}
    if start is not None:
        bounds["$gte"] = start.astimezone(UTC)
    if end is not None:
        bounds["$lt"] = end.astimezone(UTC)
    return bounds


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotDelivered:
    """An invoice whose delivery (purpose ``invoice``) failed and that no channel has delivered."""

    invoice_id: str
    customer_id: str | None
    attempts: int
    exhausted: bool
    last_outcome: str
    channels: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    first_failed_at: datetime | None = None
    last_failed_at: datetime | None = None
    last_seq: int = 0


@dataclass(frozen=True)
class DayCount:
    day: str
    channel: str | None
    purpose: str | None
    outcome: str | None
    reason: str | None
    count: int


_SUMMARY: Final[Mapping[str, int]] = {"record": 0}


class AuditQueries:
    """Tenant-scoped reads of ``audit_records``."""

    def __init__(self, records: AsyncCollection[Document]) -> None:
        self._records = records

    async def timeline(self, tenant_id: str, invoice_id: str, after_seq: int, limit: int) -> list[Document]:
        """Up to ``limit`` records of one invoice in chain order, after ``after_seq`` (0: from the start)."""
        query = {"tenant_id": tenant_id, "invoice_id": invoice_id, "seq": {"$gt": after_seq}}
        cursor = self._records.find(exact(query)).sort("seq", ASCENDING).limit(limit)
        return [doc async for doc in cursor]

    async def search(self, where: RecordFilter, before_seq: int | None, limit: int) -> list[Document]:
        """Up to ``limit`` matching records, newest first, older than ``before_seq`` if given."""
        query = where.query()
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        cursor = self._records.find(exact(query), _SUMMARY).sort("seq", DESCENDING).limit(limit)
        return [doc async for doc in cursor]

    async def stream(self, where: RecordFilter, batch_size: int = 500) -> AsyncIterator[Document]:
        """Every matching record in chain order, read ``batch_size`` at a time (keyset pages, so no
        server cursor has to stay open while a slow client downloads an export)."""
        after = 0
        while True:
            query = {**where.query(), "seq": {"$gt": after}}
            cursor = self._records.find(exact(query), _SUMMARY).sort("seq", ASCENDING).limit(batch_size)
            batch = [doc async for doc in cursor]
            for doc in batch:
                yield doc
            if len(batch) < batch_size:
                return
            after = int(batch[-1]["seq"])

    async def last_erasure(self, tenant_id: str, customer_id: str) -> Document | None:
        """The customer's latest erasure record, if any."""
        query = {"tenant_id": tenant_id, "customer_id": customer_id, "kind": Kind.ERASURE.value}
        cursor = self._records.find(exact(query)).sort("seq", DESCENDING).limit(1)
        return next(iter([doc async for doc in cursor]), None)

    async def dead_letters(self, tenant_id: str, invoice_id: str | None, after_seq: int, limit: int) -> list[Document]:
        """Dead-letter records in chain order (oldest first)."""
        query: Document = {"tenant_id": tenant_id, "kind": Kind.DEAD_LETTER.value, "seq": {"$gt": after_seq}}
        if invoice_id is not None:
            query["invoice_id"] = invoice_id
        cursor = self._records.find(exact(query)).sort("seq", ASCENDING).limit(limit)
        return [doc async for doc in cursor]

    async def not_delivered(
        self,
        tenant_id: str,
        occurred_from: datetime | None,
        occurred_to: datetime | None,
        after_invoice: str | None,
        limit: int,
    ) -> tuple[list[NotDelivered], str | None]:
        """Invoices with an invoice-purpose delivery failure in the period and no delivery ever, by
        invoice id; and the invoice id to continue after (``None`` when there is no more).

        The period selects the failures; a delivery at any time (later retries included) takes the
        invoice off the report.
        """
        found: list[NotDelivered] = []
        after = after_invoice
        for _ in range(_REPORT_ROUNDS):
            wanted = limit + 1 - len(found)  # one more than the page: tells whether there is a next one
            failed = await self._failed_invoices(tenant_id, occurred_from, occurred_to, after, wanted)
            delivered = await self._delivered_among(tenant_id, [f.invoice_id for f in failed]) if failed else set()
            for item in failed:
                after = item.invoice_id
                if item.invoice_id not in delivered:
                    found.append(item)
                    if len(found) > limit:
                        return found[:limit], found[limit - 1].invoice_id
            if len(failed) < wanted:
                return found, None
        return found, after  # a short page: the failures examined so far were mostly delivered since

    async def _failed_invoices(
        self, tenant_id: str, start: datetime | None, end: datetime | None, after: str | None, count: int
    ) -> list[NotDelivered]:
        """The next ``count`` invoices (by id) with failures, grouped from a sorted ``find``: the
        datetime range rules out an aggregation on nx-27017, and one invoice's failures are few."""
        query: Document = {
            "tenant_id": tenant_id,
            "purpose": INVOICE_PURPOSE,
            "outcome": {"$in": [Status.FAILED.value, Status.EXHAUSTED.value]},
        }
        if after is not None:
            query["invoice_id"] = {"$gt": after}
        else:
            query["invoice_id"] = {"$ne": None}
        occurred = _range(start, end)
        if occurred:
            query["occurred_at"] = occurred
        projection = {f: 1 for f in ("invoice_id", "customer_id", "seq", "outcome", "channel", "reason", "occurred_at")}
        cursor = self._records.find(exact(query), projection).sort([("invoice_id", ASCENDING), ("seq", ASCENDING)])
        groups: list[list[Document]] = []
        async for doc in cursor:
            if not groups or groups[-1][0]["invoice_id"] != doc["invoice_id"]:
                if len(groups) == count:
                    break
                groups.append([])
            groups[-1].append(doc)
        await cursor.close()
        return [_not_delivered(group) for group in groups]

    async def _delivered_among(self, tenant_id: str, invoice_ids: list[str]) -> set[str]:
        query = {
            "tenant_id": tenant_id,
            "purpose": INVOICE_PURPOSE,
            "outcome": Status.DELIVERED.value,
            "invoice_id": {"$in": invoice_ids},
        }
        return {doc["invoice_id"] async for doc in self._records.find(exact(query), {"invoice_id": 1})}

    async def daily_counts(self, tenant_id: str, from_day: date, to_day: date) -> list[DayCount]:
        """Records per day (of ``occurred_at``, UTC) and channel, purpose, outcome and reason."""
        key = [
            "$day",
            *(part for name in ("channel", "purpose", "outcome", "reason") for part in (_SEP, _or_null(name))),
        ]
        pipeline: list[Document] = [
            {
                "$match": {
                    "tenant_id": tenant_id,
                    "kind": {"$in": list(DEFAULT_KINDS)},
                    "day": {"$gte": from_day.isoformat(), "$lte": to_day.isoformat()},
                }
            },
            {"$group": {"_id": {"$concat": key}, "count": {"$sum": 1}}},
            {"$sort": {"_id": 1}},
        ]
        counts = []
        async for row in await self._records.aggregate(pipeline):
            day, channel, purpose, outcome, reason = str(row["_id"]).split(_SEP, 4)
            counts.append(
                DayCount(day, _unnull(channel), _unnull(purpose), _unnull(outcome), _unnull(reason), int(row["count"]))
            )
        return counts


def _or_null(name: str) -> Document:
    return {"$ifNull": [f"${name}", _NULL]}


def _unnull(value: str) -> str | None:
    return None if value == _NULL else value


def _not_delivered(docs: list[Document]) -> NotDelivered:
    outcomes = [str(d.get("outcome")) for d in docs]
    return NotDelivered(
        invoice_id=str(docs[0]["invoice_id"]),
        customer_id=next((d["customer_id"] for d in docs if d.get("customer_id")), None),
        attempts=len(docs),
        exhausted=Status.EXHAUSTED.value in outcomes,
        last_outcome=outcomes[-1],
        channels=_distinct(d.get("channel") for d in docs),
        reasons=_distinct(d.get("reason") for d in docs),
        first_failed_at=docs[0].get("occurred_at"),
        last_failed_at=docs[-1].get("occurred_at"),
        last_seq=int(docs[-1]["seq"]),
    )


def _distinct(values: Any) -> list[str]:
    """Non-empty values in first-seen order."""
    return list(dict.fromkeys(str(v) for v in values if v))
