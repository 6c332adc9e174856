"""The process owner's daily summary: computed from the audit trail, served by the API, emailed once.

**What the figures mean** (one tenant, one local day ``[start, end)`` in ``[reminders] timezone``,
by each record's ``occurred_at``; the summary's own email, purpose ``report``, is never counted):

* ``delivered`` / ``failed``: ``delivery.succeeded`` / ``delivery.failed`` records, i.e. attempts:
  a message that failed by email and then reached the customer by SMS is one of each; a bounce
  reported after the relay accepted the message is one of each too. ``sent`` is their sum;
  ``by_channel`` and ``failed_by_reason`` split them; ``exhausted`` counts messages no channel
  delivered; ``by_purpose`` splits deliveries into invoice / reminder / receipt.
* ``reminders_due``: ``reminder.due`` records (steps the scheduler issued); ``reminders_delivered``:
  deliveries of purpose ``reminder:*``.
* ``payments`` / ``paid``: ``payment.received`` records and the sum of their amounts per currency.
* ``unpaid`` / ``unpaid_amount``, **as of** ``end``: every invoice with an ``invoice.created`` record
  in ``[end - unpaid_window_days, end)`` (its latest version's total), not cancelled
  (``invoice.cancelled``) by ``end``, minus its ``payment.received`` amounts in the invoice's
  currency recorded by ``end`` (a payment in another currency is not counted, as the scheduler
  refuses it), when more than zero is left. An invoice issued before the window is not counted.

**Cost.** The day's figures read the day's records through the ``(tenant_id, occurred_at)`` index,
only the four small fields they group by (and the raw bytes of payments). This is a ``find``
and a count in Python, not an aggregation: on nx-27017 an aggregation's ``$match`` compares
dates wrongly (``$lt`` on ``occurred_at`` matches nothing, ``$gte`` everything; ``find`` is
right), and a projected ``find`` streamed 28 800 records in 1.2 s where the same
``$match``/``$group`` on the ``day`` string took 2.9 s. The unpaid figures need each invoice's
amounts, which only the raw envelopes hold: a scan of one year of that tenant's invoice, payment
and cancellation records, bounded by ``max_scan`` records (``unpaid_complete`` is false when the
bound cut it short). On a tenant with a million such records a year that is too slow for an
interactive call; keeping running balances per invoice (a projection the consumer updates) would
make it constant, and is the next step if tenants that large appear.

**Once per tenant and day.** :class:`DailyReports` runs in every audit replica. At
``[audit] daily_report_hour`` local time (and any later check that day) it publishes
``report.due`` for the previous local day of each tenant with an ``owner_email``. The event id is
``stable_id(tenant, "daily-report", day)``; a publication is claimed first in MongoDB (insert on
that id: of two replicas, one wins), then marked published. A claim whose holder died before
publishing is taken over after ``stale_s``. Should a crash fall between publishing and marking,
the event goes out again with the same id: audit stores it once, and the email sender's ledger
(send once per request id and channel) re-publishes its recorded outcome instead of mailing again.
A day on which no replica ran at all from the report hour to midnight is not caught up.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError

from factura.common.apikeys import AUTH_RESPONSES, Authenticate, Principal, Role, require_tenant, with_role
from factura.common.apikeys.http import ErrorBody
from factura.common.envelope import TENANT_PATTERN, Envelope, make_event, stable_id, utcnow
from factura.common.events import (
    CURRENT_VERSION,
    Amount,
    ChannelFigures,
    DailyReport,
    Locale,
    ReportDueV1,
)
from factura.common.kafka.producer import Publisher
from factura.common.metrics import counter, tenant_label
from factura.common.mongo import Document, exact, process_owner
from factura.common.outcomes import family
from factura.common.tenants import TenantConfig, TenantDirectory

PRODUCER: Final = "audit"
UNPAID_WINDOW_DAYS: Final = 365
MAX_UNPAID_SCAN: Final = 200_000
READ_ROLES: Final = (Role.COMPLIANCE_READER, Role.ADMIN)
#: Days the API answers for: none before this, none after tomorrow anywhere on earth.
FIRST_DAY: Final = date(2000, 1, 1)
_DAY_TYPES: Final = ("delivery.succeeded", "delivery.failed", "delivery.exhausted", "reminder.due", "payment.received")
_BALANCE_TYPES: Final = ("invoice.created", "payment.received", "invoice.cancelled")
#: The owner reads the summary in the seller's language when the product speaks it, else English.
_LANGUAGES: Final[dict[str, Locale]] = {
    **dict.fromkeys(("ES", "MX", "AR", "CO", "CL", "PE", "UY", "EC", "VE", "BO", "PY", "CR", "PA", "DO"), "es"),
    **dict.fromkeys(("GT", "HN", "SV", "NI"), "es"),
    **dict.fromkeys(("PT", "BR", "AO", "MZ"), "pt"),
    **dict.fromkeys(("RO", "MD"), "ro"),
}

PUBLISHED = counter("daily_reports_published_total", "Daily summaries published (report.due).", ("tenant",))
log = logging.getLogger(__name__)


# --- computing ----------------------------------------------------------------------------------


def local_day(timezone: str, day: date) -> tuple[datetime, datetime]:
    """``day`` in ``timezone`` as a UTC interval ``[start, end)`` (23 or 25 hours across DST)."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(day, clock_time.min, tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), clock_time.min, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def _data(doc: Document) -> dict[str, Any]:
    """The event's ``data`` from the raw envelope inside the hashed record (``{}`` if unreadable)."""
    try:
        data = json.loads(json.loads(doc["record"])["raw"])["data"]
    except (KeyError, TypeError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _money(value: object) -> Decimal | None:
    try:
        return Decimal(str(value)) if isinstance(value, str | int | float) else None
    except InvalidOperation:
        return None


def _amounts(sums: dict[str, Decimal]) -> list[Amount]:
    return [Amount(currency=c, amount=v) for c, v in sorted(sums.items()) if v != 0]


@dataclass
class _Day:
    """Counts of one day's records, folded one record at a time."""

    delivered: Counter[str] = field(default_factory=Counter)  # by channel
    failed: Counter[str] = field(default_factory=Counter)  # by channel
    reasons: Counter[str] = field(default_factory=Counter)
    purposes: Counter[str] = field(default_factory=Counter)
    exhausted: int = 0
    reminders_due: int = 0
    payments: int = 0

    def add(self, doc: Document) -> None:
        kind, purpose = doc.get("type"), doc.get("purpose")
        if kind == "reminder.due":
            self.reminders_due += 1
            return
        if kind == "payment.received":
            self.payments += 1
            return
        if purpose == "report":
            return
        channel = str(doc.get("channel") or "unknown")
        if kind == "delivery.succeeded":
            self.delivered[channel] += 1
            self.purposes[family(str(purpose or "invoice"))] += 1
        elif kind == "delivery.failed":
            self.failed[channel] += 1
            self.reasons[str(doc.get("reason") or "unknown")] += 1
        elif kind == "delivery.exhausted":
            self.exhausted += 1


@dataclass
class _Balances:
    """Per invoice: its latest total and currency, payments, whether it was cancelled."""

    totals: dict[str, tuple[datetime, str, Decimal]] = field(default_factory=dict)
    paid: defaultdict[str, list[tuple[str, Decimal]]] = field(default_factory=lambda: defaultdict(list))
    cancelled: set[str] = field(default_factory=set)

    def add(self, doc: Document) -> None:
        invoice, kind = doc.get("invoice_id"), doc.get("type")
        if not isinstance(invoice, str):
            return
        if kind == "invoice.cancelled":
            self.cancelled.add(invoice)
            return
        data = _data(doc)
        if kind == "invoice.created":
            total, currency = _money(data.get("total")), data.get("currency")
            at = doc.get("occurred_at")
            if total is None or not isinstance(currency, str) or not isinstance(at, datetime):
                return
            if invoice not in self.totals or self.totals[invoice][0] <= at:  # a corrected version wins
                self.totals[invoice] = (at, currency, total)
        elif kind == "payment.received":
            amount, currency = _money(data.get("amount")), data.get("currency")
            if amount is not None and isinstance(currency, str):
                self.paid[invoice].append((currency, amount))

    def unpaid(self) -> tuple[int, dict[str, Decimal]]:
        count, owed = 0, defaultdict[str, Decimal](Decimal)
        for invoice, (_, currency, total) in self.totals.items():
            if invoice in self.cancelled:
                continue
            left = total - sum((a for c, a in self.paid.get(invoice, ()) if c == currency), Decimal(0))
            if left > 0:
                count += 1
                owed[currency] += left
        return count, owed


async def daily_report(
    records: AsyncCollection[Document],
    tenant: TenantConfig,
    day: date,
    *,
    window_days: int = UNPAID_WINDOW_DAYS,
    max_scan: int = MAX_UNPAID_SCAN,
) -> DailyReport:
    """The summary of ``tenant``'s local ``day`` from ``audit_records`` (see the module docstring)."""
    timezone = tenant.reminders.timezone
    start, end = local_day(timezone, day)
    tenant_id = tenant.tenant_id
    period = {"$gte": start, "$lt": end}
    counts = _Day()
    fields = {"_id": 0, "type": 1, "channel": 1, "purpose": 1, "reason": 1}
    async for doc in records.find(
        exact({"tenant_id": tenant_id, "occurred_at": period, "type": {"$in": _DAY_TYPES}}), fields
    ):
        counts.add(doc)
    paid = defaultdict[str, Decimal](Decimal)
    if counts.payments:
        where = {"tenant_id": tenant_id, "occurred_at": period, "type": "payment.received"}
        async for doc in records.find(exact(where), {"_id": 0, "record": 1}):
            data = _data(doc)
            amount, currency = _money(data.get("amount")), data.get("currency")
            if amount is not None and isinstance(currency, str):
                paid[currency] += amount
    balances, scanned = _Balances(), 0
    where = {
        "tenant_id": tenant_id,
        "occurred_at": {"$gte": end - timedelta(days=window_days), "$lt": end},
        "type": {"$in": _BALANCE_TYPES},
    }
    projection = {"_id": 0, "type": 1, "invoice_id": 1, "occurred_at": 1, "record": 1}
    async for doc in records.find(exact(where), projection).limit(max_scan + 1):
        scanned += 1
        if scanned > max_scan:
            break
        balances.add(doc)
    unpaid, owed = balances.unpaid()
    delivered, failed = sum(counts.delivered.values()), sum(counts.failed.values())
    return DailyReport(
        tenant_id=tenant_id,
        day=day,
        timezone=timezone,
        start=start,
        end=end,
        sent=delivered + failed,
        delivered=delivered,
        failed=failed,
        exhausted=counts.exhausted,
        failed_by_reason=dict(sorted(counts.reasons.items())),
        by_channel={
            c: ChannelFigures(delivered=counts.delivered[c], failed=counts.failed[c])
            for c in sorted(counts.delivered.keys() | counts.failed.keys())
        },
        by_purpose=dict(sorted(counts.purposes.items())),
        reminders_due=counts.reminders_due,
        reminders_delivered=counts.purposes["reminder"],
        payments=counts.payments,
        paid=_amounts(paid),
        unpaid=unpaid,
        unpaid_amount=_amounts(owed),
        unpaid_window_days=window_days,
        unpaid_complete=scanned <= max_scan,
    )


# --- publishing ---------------------------------------------------------------------------------


def report_event_id(tenant_id: str, day: date) -> str:
    return str(stable_id(tenant_id, "daily-report", day.isoformat()))


def report_event(tenant: TenantConfig, report: DailyReport) -> Envelope[ReportDueV1] | None:
    """``report.due`` for the tenant's owner (``None`` without ``[audit] owner_email``)."""
    owner = tenant.audit.owner_email
    if owner is None:
        return None
    country = tenant.seller.country if tenant.seller else "US"
    event_id = stable_id(tenant.tenant_id, "daily-report", report.day.isoformat())
    return make_event(
        event_id=event_id,
        type="report.due",
        schema_version=CURRENT_VERSION["report.due"],
        data=ReportDueV1(owner_email=owner, locale=_LANGUAGES.get(country, "en"), country=country, report=report),
        tenant_id=tenant.tenant_id,
        invoice_id=None,
        correlation_id=str(event_id),
        causation_id=None,
        producer=PRODUCER,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


class DailyReports:
    """The background task: each tenant's previous day, published once after its report hour.

    ``runs`` holds one document per publication (``_id`` = the event id): who claimed it and
    when (epoch ms: nx-27017 turns datetimes written by ``$set`` into strings), and whether it went out.
    """

    def __init__(
        self,
        records: AsyncCollection[Document],
        runs: AsyncCollection[Document],
        tenants: TenantDirectory,
        publisher: Publisher,
        *,
        interval_s: float = 60.0,
        stale_s: float = 600.0,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._records = records
        self._runs = runs
        self._tenants = tenants
        self._publisher = publisher
        self._interval_s = interval_s
        self._stale_ms = int(stale_s * 1000)
        self._now = now
        self.owner = process_owner()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.publish_due()
            except PyMongoError as e:  # MongoDB down: the next turn tries again
                log.warning("daily reports not published; retrying", extra={"error": repr(e)[:300]})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._interval_s)

    def due(self) -> list[tuple[TenantConfig, date]]:
        """(tenant, day) pairs whose report hour has come: the previous local day of each owner's tenant."""
        now = self._now()
        out = []
        for tenant in self._tenants:
            if tenant.audit.owner_email is None:
                continue
            local = now.astimezone(ZoneInfo(tenant.reminders.timezone))
            if local.hour >= tenant.audit.daily_report_hour:
                out.append((tenant, local.date() - timedelta(days=1)))
        return out

    async def publish_due(self) -> int:
        """One pass: publish what is due and not yet published; returns how many this call published."""
        published = 0
        for tenant, day in self.due():
            published += await self.publish_once(tenant, day)
        return published

    async def publish_once(self, tenant: TenantConfig, day: date) -> bool:
        """Publish ``tenant``'s report of ``day`` unless it was (or is being) published; True if this call did."""
        event_id = report_event_id(tenant.tenant_id, day)
        if not await self._claim(event_id, tenant.tenant_id, day):
            return False
        try:
            event = report_event(tenant, await daily_report(self._records, tenant, day))
            if event is not None:
                await self._publisher.publish(event)
        except Exception:
            # Let the next pass (here or in another replica) try again at once; a cancelled pass
            # leaves its claim to be taken over once stale.
            await self._runs.update_one({"_id": event_id, "owner": self.owner}, {"$set": {"claimed_ms": 0}})
            raise
        await self._runs.update_one({"_id": event_id}, {"$set": {"state": "published", "published_ms": _now_ms()}})
        PUBLISHED.labels(tenant_label(tenant.tenant_id)).inc()
        return event is not None

    async def _claim(self, event_id: str, tenant_id: str, day: date) -> bool:
        now = _now_ms()
        doc = {"_id": event_id, "tenant_id": tenant_id, "day": day.isoformat(), "state": "claimed"}
        try:
            await self._runs.insert_one(doc | {"claimed_ms": now, "owner": self.owner})
            return True
        except DuplicateKeyError:
            pass
        found = await self._runs.find_one({"_id": event_id})
        if found is None or found.get("state") != "claimed" or now - int(found.get("claimed_ms", 0)) < self._stale_ms:
            return False
        taken = await self._runs.find_one_and_update(
            {"_id": event_id, "state": "claimed", "claimed_ms": found.get("claimed_ms", 0)},
            {"$set": {"claimed_ms": now, "owner": self.owner}},
        )
        return taken is not None


# --- the API ------------------------------------------------------------------------------------

_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    400: {"model": ErrorBody, "description": "A query parameter given twice or unknown"},
    **AUTH_RESPONSES,
}


def _invalid(param: str, message: str) -> RequestValidationError:
    """A 422 shaped like FastAPI's own, so the documented schema holds for it too."""
    return RequestValidationError([{"loc": ("query", param), "msg": message, "type": "value_error"}])


def parse_day(value: str) -> date:
    """``YYYY-MM-DD`` from 2000-01-01 to tomorrow (UTC): the one form the route takes."""
    try:
        day = date.fromisoformat(value)
    except ValueError as e:
        raise _invalid("date", "not a date: use YYYY-MM-DD") from e
    if not FIRST_DAY <= day <= utcnow().date() + timedelta(days=1):
        raise _invalid("date", f"must be from {FIRST_DAY.isoformat()} to tomorrow")
    return day


def daily_router(
    records: AsyncCollection[Document],
    tenants: TenantDirectory,
    *,
    auth: Authenticate,
    route_class: type[APIRoute] = APIRoute,
    dependencies: Sequence[params.Depends] = (),
) -> APIRouter:
    """``GET /v1/reports/daily``; ``route_class`` and ``dependencies`` let the audit API record the
    call and refuse repeated or unknown query parameters as its other routes do."""

    reader = with_role(auth, *READ_ROLES)

    api = APIRouter(prefix="/v1", tags=["audit"], route_class=route_class, dependencies=list(dependencies))

    @api.get("/reports/daily", response_model=DailyReport, responses=_RESPONSES)
    async def daily(
        principal: Annotated[Principal, Depends(reader)],
        tenant_id: Annotated[str, Query(pattern=TENANT_PATTERN, description="The tenant asked about")],
        day: Annotated[
            str, Query(alias="date", pattern=r"^\d{4}-\d{2}-\d{2}$", description="The tenant's local day, YYYY-MM-DD")
        ],
    ) -> DailyReport:
        """The process owner's summary of one day in the tenant's time zone: sent, delivered, failed
        by reason and channel, reminders, payments, and what is still unpaid at the day's end."""
        require_tenant(principal, tenant_id)
        return await daily_report(records, tenants.get(tenant_id), parse_day(day))

    return api
