"""Overdue campaigns on the real broker and MongoDB-wire server: the scheduler's handlers record the
invoices, the API (over ASGI) selects and stores a campaign, the runner publishes its reminders.

Every test has its own topics and collections. Time is a :class:`Clock` the test sets: Wednesday
18 March 2026, 10:00 UTC, unless it moves it. Tenant ``harinas-sur`` may be sent to at any time;
``semana`` has the default window (09:00 to 18:00 UTC, Monday to Friday).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo.asynchronous.collection import AsyncCollection

from factura.common.apikeys import COLLECTION, ApiKeyStore, Role, authenticator
from factura.common.delivery.effectiveness import ChannelEffectiveness
from factura.common.envelope import Envelope
from factura.common.events import ReminderDueV2
from factura.common.http import Health, create_app
from factura.common.lease import Lease
from factura.common.mongo import Document, create_client, database
from factura.common.settings import MongoSettings
from factura.common.tenants import TenantDirectory
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack
from factura.scheduler.bootstrap import bootstrap
from factura.scheduler.campaigns.api import router
from factura.scheduler.campaigns.matching import event_id
from factura.scheduler.campaigns.model import MAX_INVOICES
from factura.scheduler.campaigns.runner import LEASE, LEASES, CampaignRunner
from factura.scheduler.campaigns.store import Campaigns
from factura.scheduler.handlers import SchedulerHandlers
from factura.scheduler.schedule import Schedules
from factura.scheduler.settings import Settings
from tests.conftest import mongo_settings
from tests.integration.test_scheduler import Clock, message
from tests.kafka_helpers import Bus, isolated
from tests.pii_keys import pii_cipher
from tests.unit.test_scheduler import (
    TENANT,
    invoice_cancelled,
    invoice_created,
    invoice_rendered,
    payment_received,
)
from tests.waiting import until_async

pytestmark = pytest.mark.integration
WEEKDAYS = "semana"
OTHER = "otra-empresa"
WEDNESDAY = datetime(2026, 3, 18, 10, tzinfo=UTC)
SATURDAY = datetime(2026, 3, 21, 12, tzinfo=UTC)
MONDAY_OPENING = datetime(2026, 3, 23, 9, tzinfo=UTC)
RANGE = {"min": 10, "max": 30}


@dataclass
class Env:
    bus: Bus
    handlers: SchedulerHandlers
    campaigns: Campaigns
    collection_of_campaigns: AsyncCollection[Document]
    runner: CampaignRunner
    client: httpx.AsyncClient
    clock: Clock
    keys: ApiKeyStore
    headers: dict[str, dict[str, str]]

    async def invoice(
        self,
        days_overdue: int,
        *,
        tenant: str = TENANT,
        rendered: bool = True,
        paid: bool = False,
        cancelled: bool = False,
    ) -> str:
        """A new invoice ``days_overdue`` days past due on the clock's date, fed to the scheduler."""
        number = f"F-{days_overdue}-{uuid.uuid4().hex[:6]}"
        due = self.clock.now.date() - timedelta(days=days_overdue)
        created = invoice_created(number, due=due, tenant=tenant)
        await self.handlers.on_invoice_created(message(created))
        if rendered:
            await self.handlers.on_invoice_rendered(message(invoice_rendered(created)))
        if paid:
            await self.pay(number, tenant)
        if cancelled:
            await self.handlers.on_invoice_cancelled(message(invoice_cancelled(number, tenant=tenant)))
        return number

    async def pay(self, number: str, tenant: str = TENANT) -> None:
        await self.handlers.on_payment_received(message(payment_received(number, "100.00", tenant=tenant)))

    async def post(self, body: dict[str, Any], who: str = "ingest", **headers: str) -> httpx.Response:
        return await self.client.post("/v1/campaigns", json=body, headers=self.headers[who] | headers)

    async def get(self, campaign_id: str, tenant: str = TENANT, who: str = "ingest") -> httpx.Response:
        return await self.client.get(f"/v1/campaigns/{campaign_id}?tenant_id={tenant}", headers=self.headers[who])

    async def reminders(self) -> list[Envelope[Any]]:
        """Exactly what is on ``reminder.due`` now (publish waits for the broker's ack)."""
        return await self.bus.events("reminder.due")


def campaign(**more: Any) -> dict[str, Any]:
    return {"tenant_id": TENANT, "overdue_days": RANGE} | more


@pytest.fixture
async def env(cfg: StackConfig, tmp_path: Path) -> AsyncIterator[Env]:
    for tenant, plan in ((TENANT, "[reminders.window]\nalways = true\n"), (WEEKDAYS, "[reminders]\n")):
        (tmp_path / tenant).mkdir()
        (tmp_path / tenant / "tenant.toml").write_text(plan, encoding="utf-8")
    tenants = TenantDirectory(tmp_path)
    settings = mongo_settings(cfg)
    async with isolated(cfg, client_id="test-campaigns") as bus, AsyncExitStack() as stack:
        # A short server selection: while MongoDB is down (the outage test) a call answers 503 after
        # 1 s instead of create_client's 5 s; the local server answers at once when it is up.
        mongo = create_client(settings, server_selection_ms=1000)
        stack.push_async_callback(mongo.close)
        db = database(mongo, settings)
        suffix = uuid.uuid4().hex[:6]
        clock = Clock(WEDNESDAY)
        schedules = Schedules(db[f"schedules_{suffix}"], pii_cipher(db))
        campaigns = Campaigns(db[f"campaigns_{suffix}"])
        # A long cache: a key verified once keeps working while MongoDB is down (the outage test).
        keys = ApiKeyStore(db[f"{COLLECTION}_{suffix}"], cache_ttl_s=600)
        for store in (schedules, campaigns, keys):
            await store.ensure_indexes()
        leases = db[f"leases_{suffix}"]
        handlers = SchedulerHandlers(
            bus.publisher,
            schedules,
            Lease(leases, "reminder-sweep", owner="test", ttl=timedelta(seconds=30), clock=clock),
            effectiveness=ChannelEffectiveness(db[f"deliveries_{suffix}"], db[f"credits_{suffix}"]),
            tenants=tenants,
            clock=clock,
        )
        lease = Lease(db[f"{LEASES}_{suffix}"], LEASE, owner="test", ttl=timedelta(seconds=30), clock=clock)
        runner = CampaignRunner(campaigns, schedules, bus.publisher, tenants, lease, clock=clock, chunk=2)
        headers: dict[str, dict[str, str]] = {"none": {}}
        for who, role, scope in (
            ("ingest", Role.INGEST, [TENANT, WEEKDAYS]),
            ("admin", Role.ADMIN, ["*"]),
            ("reader", Role.COMPLIANCE_READER, [TENANT]),
            ("foreign", Role.INGEST, [OTHER]),
        ):
            plaintext, _ = await keys.create(role, scope, "test key", "test")
            headers[who] = {"Authorization": f"Bearer {plaintext}"}
        api = router(schedules, campaigns, tenants, auth=authenticator(keys), wake=runner.wake, clock=clock, cap=3)
        app = create_app("scheduler", Health(), [api])
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://scheduler")
        )
        yield Env(bus, handlers, campaigns, db[f"campaigns_{suffix}"], runner, client, clock, keys, headers)


# --- keys and requests ------------------------------------------------------------------------------


async def test_every_route_checks_key_role_and_tenant(env: Env) -> None:
    dry = campaign(dry_run=True)
    assert (await env.post(dry, "none")).status_code == 401
    wrong_role = await env.post(dry, "reader")
    assert wrong_role.status_code == 403 and "role 'compliance-reader'" in wrong_role.json()["detail"]
    foreign = await env.post(dry, "foreign")
    assert foreign.status_code == 403 and TENANT in foreign.json()["detail"]
    assert (await env.post(dry, "ingest")).status_code == 200
    assert (await env.post(dry, "admin")).status_code == 200

    created = await env.post(campaign(campaign_id="mine"))
    assert created.status_code == 202, created.text
    assert (await env.get("mine", who="none")).status_code == 401
    assert (await env.get("mine", who="reader")).status_code == 403
    assert (await env.get("mine", who="foreign")).status_code == 403
    assert (await env.get("mine", tenant=OTHER, who="foreign")).status_code == 404  # theirs: none such
    assert (await env.get("mine", who="admin")).json()["campaign_id"] == "mine"


async def test_a_bad_filter_is_a_422_naming_the_field_and_openapi_documents_every_answer(env: Env) -> None:
    backwards = await env.post(campaign(overdue_days={"min": 30, "max": 10}))
    assert backwards.status_code == 422
    [error] = backwards.json()["detail"]
    assert error["loc"] == ["body", "overdue_days"] and "min (30)" in error["msg"]
    zero = await env.post(campaign(overdue_days={"min": 0, "max": 10}))
    assert zero.status_code == 422 and zero.json()["detail"][0]["loc"] == ["body", "overdue_days", "min"]
    paths = (await env.client.get("/openapi.json")).json()["paths"]
    assert {"200", "202", "401", "403", "409", "422", "503"} <= set(paths["/v1/campaigns"]["post"]["responses"])
    assert {"200", "401", "403", "404", "422", "503"} <= set(paths["/v1/campaigns/{campaign_id}"]["get"]["responses"])


# --- selecting ----------------------------------------------------------------------------------------


async def test_a_dry_run_lists_exactly_the_open_invoices_in_the_range_and_stores_nothing(env: Env) -> None:
    await env.invoice(5)
    twenty = await env.invoice(20)
    await env.invoice(40)
    await env.invoice(20, paid=True)
    await env.invoice(20, cancelled=True)
    await env.invoice(20, rendered=False)
    await env.invoice(20, tenant=WEEKDAYS)  # another tenant's

    answer = await env.post(campaign(dry_run=True))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "dry_run": True,
        "tenant_id": TENANT,
        "as_of": "2026-03-18",
        "matched": 1,
        "invoices": [
            {
                "invoice_id": twenty,
                "customer_id": "C-1042",
                "due_date": "2026-02-26",
                "days_overdue": 20,
                "outstanding": "100.00",
                "currency": "EUR",
            }
        ],
        "truncated": False,
        "excluded": {"paid": 1, "cancelled": 1, "not_rendered": 1},
    }
    assert await env.collection_of_campaigns.count_documents({}) == 0

    narrow = await env.post(campaign(dry_run=True, overdue_days={"min": 1, "max": 60}, limit=2))
    assert narrow.json()["matched"] == 3 and narrow.json()["truncated"] is True
    assert [i["days_overdue"] for i in narrow.json()["invoices"]] == [40, 20]  # by due date
    assert (await env.post(campaign(dry_run=True, customer_id="C-other"))).json()["matched"] == 0


async def test_more_matches_than_the_cap_is_refused_and_nothing_stored(env: Env) -> None:
    for _ in range(4):  # the env's cap is 3
        await env.invoice(15)
    for body in (campaign(dry_run=True), campaign(campaign_id="too-big")):
        refused = await env.post(body)
        assert refused.status_code == 422 and "more than 3 invoices" in refused.json()["detail"], refused.text
    assert await env.collection_of_campaigns.count_documents({}) == 0
    assert MAX_INVOICES == Settings().campaign_max_invoices == 10_000


# --- sending --------------------------------------------------------------------------------------------


async def test_a_campaign_sends_one_reminder_per_match_once_however_often_it_is_requested(env: Env) -> None:
    await env.invoice(5)
    twenty = await env.invoice(20)
    await env.invoice(40)
    await env.invoice(20, paid=True)
    await env.invoice(20, cancelled=True)
    stopping = asyncio.Event()
    running = asyncio.create_task(env.runner.run(stopping, every_s=3600))  # only a wake makes it look again
    try:
        first = await env.post(campaign(campaign_id="march", name="March collections"))
        assert first.status_code == 202, first.text
        body = first.json()
        assert (body["campaign_id"], body["matched"], body["state"]) == ("march", 1, "scheduled")
        assert body["scheduled_for"] == "2026-03-18T10:00:00Z"  # the window is open: now
        await until_done(env, "march")

        again = await env.post(campaign(campaign_id="march", name="March collections"))
        assert again.status_code == 202 and again.json()["state"] == "done" and again.json()["sent"] == 1
        other = await env.post(campaign(campaign_id="march", overdue_days={"min": 1, "max": 60}))
        assert other.status_code == 409 and "campaign_id" in other.json()["detail"]

        keyed = [await env.post(campaign(), **{"Idempotency-Key": "collections-2026-03-18"}) for _ in range(2)]
        assert [r.status_code for r in keyed] == [202, 202]
        keyed_id = keyed[0].json()["campaign_id"]
        assert keyed[1].json()["campaign_id"] == keyed_id != "march"
        await until_done(env, keyed_id)
    finally:
        stopping.set()
        await asyncio.wait_for(running, 5)

    status = (await env.get("march")).json()
    assert (status["state"], status["matched"], status["sent"], status["skipped"]) == ("done", 1, 1, 0)
    assert status["finished_at"] is not None and status["name"] == "March collections"
    reminders = await env.reminders()
    assert sorted(str(e.event_id) for e in reminders) == sorted(
        str(event_id(TENANT, twenty, c)) for c in ("march", keyed_id)
    )
    data = reminders[0].data
    assert isinstance(data, ReminderDueV2) and data.step == "campaign" and data.days_from_due == 20


async def until_done(env: Env, campaign_id: str) -> None:
    async def done() -> bool:
        return bool((await env.get(campaign_id)).json()["state"] == "done")

    await until_async(done, timeout_s=10)


async def test_outside_the_send_window_it_waits_for_the_opening_and_skips_what_was_paid_meanwhile(
    env: Env,
) -> None:
    env.clock.now = SATURDAY
    kept = await env.invoice(12, tenant=WEEKDAYS)
    paid = await env.invoice(25, tenant=WEEKDAYS)
    answer = await env.post(campaign(tenant_id=WEEKDAYS, campaign_id="weekend"))
    assert answer.status_code == 202, answer.text
    assert (answer.json()["state"], answer.json()["matched"]) == ("scheduled", 2)
    assert answer.json()["scheduled_for"] == "2026-03-23T09:00:00Z"
    assert await env.runner.tick() == []  # not due before Monday's opening

    await env.pay(paid, WEEKDAYS)
    env.clock.now = MONDAY_OPENING
    assert await env.runner.tick() == [f"{WEEKDAYS}/weekend"]
    status = (await env.get("weekend", tenant=WEEKDAYS)).json()
    assert (status["state"], status["sent"], status["skipped"]) == ("done", 1, 1)
    [reminder] = await env.reminders()
    assert reminder.event_id == event_id(WEEKDAYS, kept, "weekend")
    assert isinstance(reminder.data, ReminderDueV2) and reminder.data.days_from_due == 14  # as of Monday


async def test_a_campaign_interrupted_mid_way_resumes_where_it_stopped_and_sends_each_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    numbers = [await env.invoice(days) for days in (11, 12, 13)]
    assert (await env.post(campaign(campaign_id="crash"))).json()["matched"] == 3
    real = env.bus.publisher.publish
    calls = 0

    async def broker_lost_after_the_first_chunk(event: Envelope[Any]) -> None:
        nonlocal calls
        calls += 1
        if calls > 2:  # chunks of 2: the second chunk fails
            raise ConnectionError("broker gone")
        await real(event)

    monkeypatch.setattr(env.bus.publisher, "publish", broker_lost_after_the_first_chunk)
    with pytest.raises(ConnectionError):
        await env.runner.tick()
    status = (await env.get("crash")).json()
    assert (status["state"], status["sent"]) == ("sending", 2)

    monkeypatch.setattr(env.bus.publisher, "publish", real)
    assert await env.runner.tick() == [f"{TENANT}/crash"]
    assert (await env.get("crash")).json()["sent"] == 3
    reminders = await env.reminders()
    assert sorted(str(e.event_id) for e in reminders) == sorted(str(event_id(TENANT, n, "crash")) for n in numbers)


# --- wiring and outages ---------------------------------------------------------------------------------


async def test_bootstrap_serves_the_campaigns_api_and_runs_the_runner(cfg: StackConfig, tmp_path: Path) -> None:
    mongo = MongoSettings(url=cfg.mongo_url, database=f"{cfg.mongo_database}_{uuid.uuid4().hex[:6]}")
    async with isolated(cfg, client_id="test-campaigns-bootstrap") as bus, AsyncExitStack() as stack:
        wiring = await bootstrap(Settings(mongo=mongo, tenants_dir=None), bus.publisher, stack)
        paths = {getattr(route, "path", "") for r in wiring.routers for route in r.routes}
        assert {"/v1/campaigns", "/v1/campaigns/{campaign_id}"} <= paths
        assert len(wiring.tasks) == 2  # the sweep and the campaign runner
        stopping = asyncio.Event()
        tasks = [asyncio.create_task(task(stopping)) for task in wiring.tasks]
        client = create_client(mongo)
        try:
            leases = database(client, mongo)[LEASES]

            async def runner_holds_its_lease() -> bool:
                return await leases.find_one({"_id": LEASE}) is not None

            await until_async(runner_holds_its_lease, timeout_s=10)
        finally:
            stopping.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            await client.close()


async def test_mongodb_down_answers_503_with_retry_after_and_the_retry_goes_through(env: Env, infra: Stack) -> None:
    await env.invoice(20)
    assert (await env.post(campaign(dry_run=True))).status_code == 200  # the ingest key is now cached
    fresh, _ = await env.keys.create(Role.INGEST, [TENANT], "outage test", "test")  # never verified
    await asyncio.to_thread(infra.stop_server, "mongo")
    try:
        cached_key = await env.post(campaign(campaign_id="outage"))
        unverified = await env.client.post(
            "/v1/campaigns", json=campaign(campaign_id="outage"), headers={"Authorization": f"Bearer {fresh}"}
        )
    finally:
        await asyncio.to_thread(infra.start_server, "mongo")
    for down in (cached_key, unverified):
        assert down.status_code == 503 and int(down.headers["retry-after"]) > 0, down.text
    again = await env.post(campaign(campaign_id="outage"))
    assert again.status_code == 202 and again.json()["matched"] == 1, again.text
