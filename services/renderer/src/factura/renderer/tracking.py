"""Short links and the open pixel: ``GET /l/{id}`` redirects, ``GET /o/{id}.gif`` answers a GIF.

Both record the hit (``link.clicked`` / ``delivery.opened``) for links minted with ``track``, after
the response, so a broker or MongoDB outage never breaks the customer's click or the email client.

A hit becomes an event only when it is new: per link and client (address pseudonym plus
user-agent class) one event per ``dedupe_window_s``, decided across replicas by a MongoDB insert
whose id names the window (a duplicate key means "already counted"); and at most
``max_events_per_link_per_hour`` per link, counted apart for people and machines so a gateway
that hammers a link cannot use up the budget of the customer's real click. Automated hits
(scanners, previews, HEAD requests, hits within ``scanner_window_s`` of sending) are still
published, flagged ``automated`` with the reason: they prove delivery to the mailbox, not reading.
The same guard covers ``document.downloaded`` (:mod:`factura.renderer.download`).
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, BackgroundTasks, Request, Response
from pydantic import BaseModel
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from factura.common.envelope import make_event, stable_id
from factura.common.events import CURRENT_VERSION, DeliveryOpenedV1, LinkClickedV1
from factura.common.kafka.producer import Publisher
from factura.common.logging import log_context
from factura.common.metrics import counter
from factura.common.mongo import Document
from factura.common.shortlinks import ShortLink, ShortLinks
from factura.common.tenants import TenantDirectory
from factura.renderer.agents import Agent, classify
from factura.renderer.pages import LinkPages, contact_of
from factura.renderer.settings import TrackingSettings

PRODUCER = "renderer"
USER_AGENT_MAX = 300
#: 1×1 transparent GIF (43 bytes).
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
PIXEL_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
REDIRECT_HEADERS = {"Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer"}
GONE_BODY = {"detail": "link expired"}
UNKNOWN_BODY = {"detail": "link not found"}
UNAVAILABLE_BODY = {"detail": "temporarily unavailable"}

LINK_HITS = counter(
    "link_hits_total",
    "Hits on public links, by kind (download, payment, open, document, link) and what became of them "
    "(counted, automated, duplicate, rate_limited, expired, unknown, untracked, error).",
    ("kind", "outcome"),
)
Admission = Literal["counted", "duplicate", "rate_limited"]
log = logging.getLogger(__name__)


class HitGuard:
    """De-duplication and rate limit of tracking events, shared by every replica through MongoDB."""

    def __init__(self, collection: AsyncCollection[Document], settings: TrackingSettings) -> None:
        self._hits = collection
        self._settings = settings

    async def ensure_indexes(self) -> None:
        await self._hits.create_index("expire_at", expireAfterSeconds=0)

    async def admit(self, scope: str, client: str, *, automated: bool, now: float | None = None) -> Admission:
        """Whether a hit of ``client`` on the link ``scope`` should become an event."""
        at = time.time() if now is None else now
        window = self._settings.dedupe_window_s
        bucket = int(at // window)
        try:
            await self._hits.insert_one({"_id": f"{scope}:{client}:{bucket}", "expire_at": _at((bucket + 2) * window)})
        except DuplicateKeyError:
            return "duplicate"
        hour = int(at // 3600)
        budget = f"{scope}:{'machine' if automated else 'person'}:h{hour}"
        count = await self._spend(budget, _at((hour + 2) * 3600))
        return "counted" if count <= self._settings.max_events_per_link_per_hour else "rate_limited"

    async def _spend(self, budget: str, expire_at: datetime) -> int:
        for _ in range(2):  # two first hits may race on the upsert: the loser finds the document next time
            try:
                doc = await self._hits.find_one_and_update(
                    {"_id": budget},
                    {"$inc": {"count": 1}, "$setOnInsert": {"expire_at": expire_at}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                continue
            if doc is not None:
                count: int = doc["count"]
                return count
        raise RuntimeError(f"budget {budget} could not be counted")


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


@dataclass(frozen=True)
class Hit:
    """One request on a public link, as tracking events describe it (no personal data in the clear)."""

    agent: Agent
    user_agent: str | None
    client_ip_hash: str | None
    automated: bool
    automated_reason: str | None

    @property
    def client(self) -> str:
        """Who, for de-duplication: the address pseudonym and the kind of software."""
        return f"{self.client_ip_hash or '-'}:{self.agent.ua_class}"

    def fields(self) -> dict[str, Any]:
        """The :class:`~factura.common.events.TrackingHit` fields this hit fills."""
        return {
            "user_agent": self.user_agent,
            "user_agent_class": self.agent.ua_class,
            "client_ip_hash": self.client_ip_hash,
            "automated": self.automated,
            "automated_reason": self.automated_reason,
        }


class Tracker:
    """Turns requests into :class:`Hit` and decides which hits become events."""

    def __init__(
        self,
        guard: HitGuard,
        pseudonym: Callable[[str], str],
        settings: TrackingSettings,
        *,
        minimal_user_agent: bool,
    ) -> None:
        self._guard = guard
        self._pseudonym = pseudonym
        self._settings = settings
        self._minimal = minimal_user_agent

    def observe(
        self, request: Request, *, sent_at_ms: int | None = None, now: float | None = None, minimal: bool = False
    ) -> Hit:
        """Classify ``request``; ``sent_at_ms`` (when the link was minted) enables the scanner window;
        ``minimal`` (the tenant asks for minimal data) keeps only the user-agent class."""
        raw = request.headers.get("user-agent")
        agent = classify(raw)
        reason = agent.reason or ("head_request" if request.method == "HEAD" else None)
        if reason is None and sent_at_ms is not None:
            elapsed_s = (time.time() if now is None else now) - sent_at_ms / 1000
            if elapsed_s < self._settings.scanner_window_s:
                reason = "scanner_window"
        return Hit(
            agent=agent,
            user_agent=None if self._minimal or minimal or not raw else raw[:USER_AGENT_MAX],
            client_ip_hash=self._pseudonym(request.client.host) if request.client else None,
            automated=reason is not None,
            automated_reason=reason,
        )

    async def admit(self, kind: str, scope: str, hit: Hit) -> bool:
        """True when ``hit`` should be published; counts the outcome. Never raises (runs after the response)."""
        try:
            admission = await self._guard.admit(scope, hit.client, automated=hit.automated)
        except Exception:  # MongoDB down: no event rather than a flood of unchecked ones
            log.exception("hit on %s not recorded: the de-duplication store failed", scope)
            LINK_HITS.labels(kind=kind, outcome="error").inc()
            return False
        outcome = "automated" if admission == "counted" and hit.automated else admission
        LINK_HITS.labels(kind=kind, outcome=outcome).inc()
        return admission == "counted"


def _expired(link: ShortLink) -> bool:
    return time.time() * 1000 >= link.expires_at_ms


def _redirectable(target: str | None) -> bool:
    """Only absolute http(s) URLs without control characters become a Location header."""
    return (
        target is not None
        and target.startswith(("https://", "http://"))
        and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)
    )


async def record(tracker: Tracker, publisher: Publisher, link: ShortLink, hit: Hit) -> None:
    """Publish ``link.clicked`` / ``delivery.opened`` if the guard admits the hit."""
    with log_context(link.correlation_id, link.tenant_id):
        if not await tracker.admit(link.kind, f"s:{link.id}", hit):
            return
        base = {"channel": link.channel, "purpose": link.purpose, "link_id": link.id, **hit.fields()}
        data: BaseModel
        if link.kind == "open":
            event_type, verb, data = "delivery.opened", "opened", DeliveryOpenedV1.model_validate(base)
        else:
            event_type, verb = "link.clicked", "clicked"
            data = LinkClickedV1.model_validate(base | {"target": link.kind})
        try:
            await publisher.publish(
                make_event(
                    event_id=stable_id(link.tenant_id, link.invoice_id, verb, link.id, uuid.uuid4().hex),
                    type=event_type,
                    schema_version=CURRENT_VERSION[event_type],
                    data=data,
                    tenant_id=link.tenant_id,
                    invoice_id=link.invoice_id,
                    correlation_id=link.correlation_id,
                    causation_id=None,
                    producer=PRODUCER,
                )
            )
        except Exception:  # the customer was served; a lost tracking event is logged, not raised
            log.exception("%s not published for link %s", event_type, link.id)


def tracking_router(
    *,
    links: ShortLinks,
    tracker: Tracker,
    publisher: Publisher,
    pages: LinkPages,
    tenants: TenantDirectory,
) -> APIRouter:
    """``/l/{id}`` and ``/o/{id}.gif`` on the public link host."""
    router = APIRouter(tags=["links"])

    @router.api_route("/l/{link_id}", methods=["GET", "HEAD"], response_model=None)
    async def follow(link_id: str, request: Request, background: BackgroundTasks) -> Response:
        try:
            link = await links.resolve(link_id)
        except Exception:  # MongoDB down: an apology page, never a traceback
            log.exception("short link %s not resolved", link_id)
            LINK_HITS.labels(kind="link", outcome="error").inc()
            return pages.respond(request, "unavailable", 503, UNAVAILABLE_BODY)
        if link is None or link.kind == "open" or not _redirectable(link.target):
            if link is not None:
                log.error("short link %s (%s) has no usable target", link_id, link.kind)
            LINK_HITS.labels(kind="link", outcome="unknown").inc()
            return pages.respond(request, "invalid", 404, UNKNOWN_BODY)
        if _expired(link):
            LINK_HITS.labels(kind=link.kind, outcome="expired").inc()
            contact = contact_of(tenants.get(link.tenant_id))
            return pages.respond(request, "expired", 410, GONE_BODY, locale=link.locale, contact=contact)
        if link.track:
            background.add_task(
                record,
                tracker,
                publisher,
                link,
                tracker.observe(
                    request,
                    sent_at_ms=link.created_at_ms,
                    minimal=tenants.get(link.tenant_id).delivery.tracking.minimal_user_agent,
                ),
            )
        else:
            LINK_HITS.labels(kind=link.kind, outcome="untracked").inc()
        return Response(status_code=302, headers={**REDIRECT_HEADERS, "Location": str(link.target)})

    @router.api_route("/o/{link_id}.gif", methods=["GET", "HEAD"], response_model=None)
    async def pixel(link_id: str, request: Request, background: BackgroundTasks) -> Response:
        """Always the GIF: an email client must never show a broken image because of us."""
        try:
            link = await links.resolve(link_id)
        except Exception:
            log.exception("open pixel %s not resolved", link_id)
            LINK_HITS.labels(kind="open", outcome="error").inc()
            link = None
        else:
            if link is None or link.kind != "open":
                LINK_HITS.labels(kind="open", outcome="unknown").inc()
                link = None
            elif _expired(link):
                LINK_HITS.labels(kind="open", outcome="expired").inc()
                link = None
            elif not link.track:
                LINK_HITS.labels(kind="open", outcome="untracked").inc()
                link = None
        if link is not None:
            background.add_task(
                record,
                tracker,
                publisher,
                link,
                tracker.observe(
                    request,
                    sent_at_ms=link.created_at_ms,
                    minimal=tenants.get(link.tenant_id).delivery.tracking.minimal_user_agent,
                ),
            )
        return Response(PIXEL, media_type="image/gif", headers=PIXEL_HEADERS)

    return router
