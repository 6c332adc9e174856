"""Send stored campaigns: one ``reminder.due`` per invoice still open, inside the tenant's send window.

A background task of the scheduler, under a lease of its own (``campaigns``: one replica sends at
a time). Each tick it takes the campaigns whose ``due_ms`` has come, newly created, waiting for
the window, or left half sent by a crash, and sends each in chunks: read the chunk's schedules
(one query), publish the events of the invoices still eligible and wait for the broker's acks,
then record the chunk in the campaign. A crash between publishing and recording republishes the
same event ids (the senders' ledger drops them); nothing is ever skipped.

Each invoice is judged again when its chunk goes out, by the rules that selected it: one paid or
cancelled since the campaign was created is skipped (counted), never reminded. The overdue days
are not judged again: the campaign is the set the caller was told about.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime

from factura.common.envelope import utcnow
from factura.common.kafka.producer import Publisher
from factura.common.lease import Lease
from factura.common.metrics import counter
from factura.common.reminders import local_date, next_window_start, window_open
from factura.common.tenants import TenantDirectory
from factura.scheduler.campaigns.matching import campaign_event, exclusion
from factura.scheduler.campaigns.store import Campaign, Campaigns
from factura.scheduler.schedule import Schedules

LEASE = "campaigns"
#: The lease's own collection, not the sweep's ``leases``: on the local MongoDB-wire server a
#: lease's ``$or`` filter can match another lease's document of the same owner, so two leases of
#: one replica in one collection would take each other's document.
LEASES = "campaign_leases"
#: Invoices per chunk: one MongoDB query, then this many publishes awaited together.
CHUNK = 200
PUBLISHED = counter("campaign_reminders_published_total", "Campaign reminders published.", ())
SKIPPED = counter("campaign_reminders_skipped_total", "Campaign invoices paid or closed before their turn.", ())
log = logging.getLogger(__name__)


class CampaignRunner:
    def __init__(
        self,
        campaigns: Campaigns,
        schedules: Schedules,
        publisher: Publisher,
        tenants: TenantDirectory,
        lease: Lease,
        *,
        clock: Callable[[], datetime] = utcnow,
        chunk: int = CHUNK,
    ) -> None:
        self._campaigns = campaigns
        self._schedules = schedules
        self._publisher = publisher
        self._tenants = tenants
        self._lease = lease
        self._clock = clock
        self._chunk = chunk
        self._wake = asyncio.Event()

    def _now_ms(self) -> int:
        return int(self._clock().timestamp() * 1000)

    def wake(self) -> None:
        """A campaign was stored: look now rather than at the next tick (this replica only)."""
        self._wake.set()

    async def tick(self) -> list[str] | None:
        """Send every campaign that is due; the keys of those finished. ``None``: another replica
        holds the lease."""
        if not await self._lease.acquire():
            return None
        finished = []
        for campaign in await self._campaigns.due(self._now_ms()):
            if await self.send(campaign):
                finished.append(campaign.key)
        return finished

    async def send(self, campaign: Campaign) -> bool:
        """Send what is left of ``campaign``; True once it is done. Stops early (False) when the
        window closes (postponed to its next start), the lease is lost, or another runner moved
        the campaign."""
        plan = self._tenants.get(campaign.tenant_id).reminders
        while True:
            if not await self._lease.keep():
                return False
            now_ms = self._now_ms()
            if campaign.position >= len(campaign.invoices):
                return await self._campaigns.finish(campaign, now_ms)
            if not window_open(plan, now_ms):
                await self._campaigns.postpone(campaign, next_window_start(plan, now_ms))
                return False
            ids = campaign.invoices[campaign.position : campaign.position + self._chunk]
            states = await self._schedules.states(campaign.tenant_id, ids)
            today = local_date(plan, now_ms)
            events = [
                campaign_event(state, campaign.campaign_id, today)
                for invoice_id in ids
                if (state := states.get(invoice_id)) is not None
                and state.invoice is not None
                and exclusion(state) is None
            ]
            await asyncio.gather(*(self._publisher.publish(e) for e in events))
            PUBLISHED.inc(len(events))
            SKIPPED.inc(len(ids) - len(events))
            moved = dataclasses.replace(
                campaign,
                state="sending",
                position=campaign.position + len(ids),
                sent=campaign.sent + len(events),
                skipped=campaign.skipped + len(ids) - len(events),
            )
            if not await self._campaigns.advance(
                campaign, position=moved.position, sent=moved.sent, skipped=moved.skipped
            ):
                log.warning("campaign moved by another runner; leaving it", extra={"campaign": campaign.key})
                return False
            campaign = moved

    async def run(self, stopping: asyncio.Event, every_s: float) -> None:
        """Tick until ``stopping``, at once when woken; then release the lease."""
        while not stopping.is_set():
            self._wake.clear()
            try:
                await self.tick()
            except Exception:
                log.exception("campaign run failed; retried next tick")
            waits = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waits, timeout=every_s, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
        try:
            await self._lease.release()
        except Exception:
            log.exception("could not release the campaigns lease; it expires by itself")
