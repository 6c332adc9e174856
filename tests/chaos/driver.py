"""The chaos runs: an ERP load through the whole local stack while something breaks, then the evidence.

One run (:func:`run`) publishes the load (:func:`plan_load`) like an ERP at a steady pace, does its
chaos at the same time (the ``Chaos`` functions below, in the style of faust's ``tests/stress``
killer), brings back whatever is still down as an orchestrator would (devstack's ``up``), waits
until audit shows every invoice settled (a positive signal, with a deadline), reads the evidence
(audit API, Maildir, SMS journal, S3) and hands it to :func:`tests.chaos.checker.judge`.

Sizes come from the environment so CI runs it small and ``make test-chaos`` runs it at the issue's
size (docs/chaos.md): ``FACTURA_CHAOS_INVOICES``, ``FACTURA_CHAOS_OUTAGE_S``,
``FACTURA_CHAOS_BROKER_PAUSE_S``, ``FACTURA_CHAOS_KILLS``, ``FACTURA_CHAOS_SETTLE_S``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from botocore.exceptions import ClientError

from factura.common.kafka.producer import Publisher
from factura.common.settings import KafkaSettings
from factura.common.storage import DocumentStore
from factura.common.topics import ERP_INVOICES
from factura.devstack import procs
from factura.devstack.config import SERVICES, StackConfig
from factura.devstack.flow import invoice_timeline
from factura.devstack.samples import TENANTS, Sample, invoice_payload
from factura.devstack.stack import ConsumerState, Stack
from tests.chaos.checker import Evidence, Outcome, Planned, Report, judge, settled
from tests.conftest import s3_settings


def _env(name: str, default: float) -> float:
    return float(os.environ.get(f"FACTURA_CHAOS_{name}", default))


@dataclass(frozen=True)
class Sizes:
    """How big a run is; the defaults are CI's (``make test``), ``make test-chaos`` sets the issue's."""

    invoices: int = 60
    outage_s: float = 8.0
    broker_pause_s: float = 8.0
    kills: int = 20
    settle_s: float = 240.0
    seed: int = 14

    @classmethod
    def from_env(cls) -> Sizes:
        outage = _env("OUTAGE_S", cls.outage_s)
        return cls(
            invoices=int(_env("INVOICES", cls.invoices)),
            outage_s=outage,
            broker_pause_s=_env("BROKER_PAUSE_S", outage),
            kills=int(_env("KILLS", cls.kills)),
            settle_s=_env("SETTLE_S", cls.settle_s),
            seed=int(_env("SEED", cls.seed)),
        )


# --- the load --------------------------------------------------------------------------------------

#: One mobile number per invoice, in E.164 as the provider sees it, none on a capture-server rule prefix
#: (every one valid for phonenumbers: a US exchange never starts with 0 or 1).
_MOBILE = {"ES": "+346{:08d}", "PT": "+35191{:07d}", "BR": "+55119{:08d}", "RO": "+4072{:07d}"}


def mobile(country: str, n: int) -> str:
    if country == "US":
        return f"+1202{2_000_000 + n % 8_000_000}"
    return _MOBILE[country].format(n % 10**7)


_UNREACHABLE = "+1312555{:04d}"  # the SMS capture's "not a valid phone number" rule (devstack/sms_capture.py)


_EXPECTED: dict[str, Outcome] = {"email": "email", "invalid": "rejected", "unreachable": "exhausted"}


def _shares(n: int) -> list[str]:
    """The load's mix, exact at any size: ~10% bouncing mailbox (+ phone), ~5% no email (SMS only),
    ~2% invalid, ~1% reachable by no channel (exhausted); at least one of each, the rest plain email."""
    kinds = {"bounce": 0.10, "no_email": 0.05, "invalid": 0.02, "unreachable": 0.01}
    mix = [kind for kind, share in kinds.items() for _ in range(max(1, round(n * share)))]
    return mix + ["email"] * (n - len(mix))


def plan_load(run: str, n: int, today: date, seed: int) -> list[tuple[Sample, Planned]]:
    """``n`` invoices across the sample tenants (and so their languages and both render engines),
    each with its own number and recipients, so duplicates are countable per recipient."""
    rng = random.Random(seed)
    kinds = _shares(n)
    rng.shuffle(kinds)
    tenants = list(TENANTS)
    base = rng.randrange(10**6)  # numbers differ between runs on one stack (one SMS journal)
    load = []
    for i, kind in enumerate(kinds):
        tenant = tenants[i % len(tenants)]
        country = TENANTS[tenant]["country"]
        domain = "bounce.test" if kind == "bounce" else "cliente.test"
        email = None if kind in ("no_email", "unreachable") else f"c{i}.{run}@{domain}"
        phone = _UNREACHABLE.format(i % 10**4) if kind == "unreachable" else mobile(country, base + i)
        payload = invoice_payload(tenant, i, today, email=email, phone=phone)
        payload["invoice_number"] = number = f"CH-{run}-{i:04d}"
        expected = _EXPECTED.get(kind, "sms")
        if kind == "invalid":  # breaks the ERP contract twice: a reason per field
            payload["currency"] = "LEI!"
            payload["lines"] = []
        sample = Sample(tenant, number, payload, "failed" if expected == "exhausted" else expected)
        load.append((sample, Planned(tenant, number, expected, email, phone)))
    return load


async def erp(cfg: StackConfig, samples: list[Sample], spread_s: float) -> None:
    """Publish like an ERP: evenly over ``spread_s``, each message resent until the broker acks it
    (at least once, as real ERP connectors do; ingest makes a resend harmless). Sends run
    concurrently, so a frozen broker delays acks, not the pace."""
    publisher = Publisher(
        KafkaSettings(bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=cfg.topic_prefix, idempotence=False),
        client_id="chaos-erp",
    )
    await publisher.start()
    topic = ERP_INVOICES.physical(cfg.topic_prefix)

    async def send(s: Sample) -> None:
        while True:
            try:
                key = f"{s.tenant_id}/{s.invoice_number}".encode()
                await publisher.send(topic, s.message(), key=key, headers=[("tenant_id", s.tenant_id.encode())])
                return
            except Exception:  # noqa: BLE001 - an ERP retries whatever went wrong
                await asyncio.sleep(1)

    try:
        pending = []
        started = time.monotonic()
        for i, s in enumerate(samples):
            await asyncio.sleep(max(0.0, started + i * spread_s / len(samples) - time.monotonic()))
            pending.append(asyncio.create_task(send(s)))
        await asyncio.gather(*pending)
    finally:
        await publisher.stop()


# --- the chaos -------------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a chaos action works on, and what it did (printed under the table)."""

    stack: Stack
    sizes: Sizes
    rng: random.Random
    #: Set once the ERP published everything: open-ended chaos (kills) goes on at least until then.
    published: asyncio.Event = field(default_factory=asyncio.Event)
    log: list[str] = field(default_factory=list)


Chaos = Callable[[Ctx], Coroutine[Any, Any, None]]


async def _thread(fn: Callable[..., object], *args: object) -> None:
    """The launcher is synchronous (and probes the broker with a loop of its own): run it in a thread."""
    await asyncio.to_thread(fn, *args)


async def sigkill_bursts(ctx: Ctx) -> None:
    """SIGKILL a random running service every 0.5-3 s and restart it at once, as an orchestrator
    would (devstack's ``up`` of that one service), until ``kills`` were done, every service was
    killed at least once and the load was published."""
    kills: Counter[str] = Counter()
    restarting: dict[str, asyncio.Task[None]] = {}

    async def restart(name: str) -> None:
        await _thread(ctx.stack.up, [name])
        del restarting[name]

    while sum(kills.values()) < ctx.sizes.kills or not ctx.published.is_set() or len(kills) < len(SERVICES):
        await asyncio.sleep(ctx.rng.uniform(0.5, 3.0))
        up = [s for s in SERVICES if s not in restarting]
        if sum(kills.values()) >= ctx.sizes.kills and (never := [s for s in up if not kills[s]]):
            up = never  # the count is reached: the services not killed yet go next
        if not up:
            continue
        name = ctx.rng.choice(up)
        await _thread(ctx.stack.stop_service, name, signal.SIGKILL)
        kills[name] += 1
        restarting[name] = asyncio.create_task(restart(name))
    await asyncio.gather(*restarting.values())
    ctx.log.append(f"{sum(kills.values())} SIGKILLs: " + ", ".join(f"{s} {kills[s]}" for s in SERVICES))


async def sigterm_each(ctx: Ctx) -> None:
    """SIGTERM each service in turn (it drains and exits), start it again, then the next one."""
    took = []
    for name in SERVICES:
        await asyncio.sleep(1.0)
        started = time.monotonic()
        await _thread(ctx.stack.stop_service, name, signal.SIGTERM)
        stopped = time.monotonic() - started
        await _thread(ctx.stack.start_service, name)
        took.append(f"{name} {stopped:.1f}+{time.monotonic() - started - stopped:.1f}s")
    ctx.log.append("SIGTERM, restart (stop+start): " + ", ".join(took))


async def broker_paused(ctx: Ctx) -> None:
    """SIGSTOP the broker, SIGCONT it ``broker_pause_s`` later. Not a stop: the local broker (Tansu,
    ``memory://``) would come back without topics, offsets or groups, which no real cluster does."""
    await asyncio.sleep(1.0)
    await _thread(ctx.stack.pause_server, "kafka")
    await asyncio.sleep(ctx.sizes.broker_pause_s)
    await _thread(ctx.stack.resume_server, "kafka")
    ctx.log.append(f"broker paused {ctx.sizes.broker_pause_s:.0f} s")


def _outage(server: str) -> Chaos:
    async def outage(ctx: Ctx) -> None:
        await asyncio.sleep(1.0)
        await _thread(ctx.stack.stop_server, server)
        await asyncio.sleep(ctx.sizes.outage_s)
        await _thread(ctx.stack.start_server, server)
        ctx.log.append(f"{server} stopped {ctx.sizes.outage_s:.0f} s, started again")

    outage.__doc__ = f"Stop the {server} server (its port refuses), start it again ``outage_s`` later."
    return outage


mongo_down = _outage("mongo")
smtp_refusing = _outage("smtp")


async def _answer_500(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One HTTP exchange answered like a provider in trouble: 500 with a Twilio-shaped error body."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length:
            await reader.readexactly(int(length.group(1)))
        body = json.dumps({"code": 20500, "message": "Internal Server Error", "status": 500}).encode()
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def sms_provider_500(ctx: Ctx) -> None:
    """The SMS provider answers every request with 500 for ``outage_s``: the capture server steps
    aside and a stand-in on its port answers 500 (its journal, ``sms.jsonl``, survives the swap)."""
    cfg = ctx.stack.cfg
    await asyncio.sleep(1.0)
    await _thread(ctx.stack.stop_server, "sms")
    server = await asyncio.start_server(_answer_500, "127.0.0.1", cfg.sms_port, reuse_address=True)
    try:
        await asyncio.sleep(ctx.sizes.outage_s)
    finally:
        server.close()
        await server.wait_closed()
    await _thread(ctx.stack.start_server, "sms")
    ctx.log.append(f"SMS provider answered 500 for {ctx.sizes.outage_s:.0f} s")


def _parent(pid: int) -> int:
    """A process's parent pid (``/proc/<pid>/stat``, after the command name in parentheses)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def render_workers(stack: Stack) -> set[int]:
    """The renderer's render processes: the children of its pool's forkserver (they carry its command line)."""
    leader = procs.read_pid(stack.cfg.run_dir, "renderer")
    mine = [m.pid for m in procs.members(stack.cfg.data_dir) if m.name == "renderer" and m.pid != leader]
    try:
        parents = {pid: _parent(pid) for pid in mine}
    except (FileNotFoundError, ProcessLookupError):
        return set()  # one just exited: ask again
    servers = {pid for pid, parent in parents.items() if parent == leader}
    return {pid for pid, parent in parents.items() if parent in servers}


async def render_worker_kills(ctx: Ctx) -> None:
    """SIGKILL one render process of the running renderer (the service stays up and replaces its
    pool) every 3-5 s once the replaced pool is up, at least 3 times and until the load is published.

    Not faster: the pool cannot tell which job killed a worker, so an invoice in flight at
    ``max_worker_crashes`` (3) consecutive deaths is rejected as a poison invoice, by design."""
    kills, dead = 0, set[int]()
    while not ctx.published.is_set() or kills < 3:
        await asyncio.sleep(ctx.rng.uniform(3.0, 5.0))
        deadline = time.monotonic() + 60
        while not (workers := render_workers(ctx.stack) - dead):
            if time.monotonic() > deadline:
                raise RuntimeError("the renderer has no render process 60 s after the last one was killed")
            await asyncio.sleep(0.2)
        dead |= workers
        os.kill(ctx.rng.choice(sorted(workers)), signal.SIGKILL)
        kills += 1
    ctx.log.append(f"{kills} render processes SIGKILLed")


#: How long a kill waits for its victim to take records from Kafka before it kills it idle (said so in the log).
BUSY_WAIT_S = 15.0
#: Deadline for the partitions of a group to settle after a join or a kill (a kill: the session
#: timeout, 6 s, a rebalance and a lag tick, 5 s; about 13 s here).
TAKEOVER_S = 60.0
Partitions = frozenset[tuple[str, str]]


async def _state(stack: Stack, name: str, index: int) -> ConsumerState | None:
    """What one process of a service says of its consumer (None while it cannot answer: ask again)."""
    try:
        return await asyncio.to_thread(stack.consumer_state, name, index)
    except httpx.HTTPError:
        return None


async def _held(stack: Stack, name: str, index: int) -> Partitions:
    """The partitions one process of a service holds (none while it cannot answer)."""
    state = await _state(stack, name, index)
    return state.held if state is not None else frozenset()


async def _two_shares(stack: Stack, name: str) -> tuple[Partitions, Partitions]:
    """The partitions held by the service's two processes, once each holds some and none is held twice."""
    deadline = time.monotonic() + TAKEOVER_S
    while True:
        first, second = await asyncio.gather(_held(stack, name, 0), _held(stack, name, 1))
        if first and second and not first & second:
            return first, second
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: its two processes do not share the group's partitions: {first}, {second}")
        await asyncio.sleep(0.5)


async def _busy(stack: Stack, name: str, index: int) -> str:
    """Return as soon as the process took records from Kafka since the previous look (0.1 s apart):
    it has records in hand and, committing every 0.5 s, their offsets not committed yet. How it went."""
    started = time.monotonic()
    before = await _state(stack, name, index)
    while time.monotonic() - started < BUSY_WAIT_S:
        await asyncio.sleep(0.1)
        now = await _state(stack, name, index)
        if now is not None and before is not None and now.taken > before.taken:
            return f"busy ({now.taken - before.taken:.0f} records just taken)"
        before = now
    return f"idle (nothing taken in {BUSY_WAIT_S:.0f} s)"


async def _takeover(stack: Stack, name: str, index: int, wanted: Partitions) -> float:
    """Seconds until process ``index`` of the service holds every partition in ``wanted``."""
    started = time.monotonic()
    while not await _held(stack, name, index) >= wanted:
        if time.monotonic() - started > TAKEOVER_S:
            raise RuntimeError(f"{name}.{index} does not hold its group's partitions {TAKEOVER_S:.0f} s after a kill")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def _kill_one_of_two(ctx: Ctx, name: str) -> tuple[str, Callable[[], object]]:
    """SIGKILL one of the service's two processes while it is busy, wait until the other holds every
    partition; what happened, and how to start the killed one again."""
    stack = ctx.stack
    everything = frozenset().union(*await _two_shares(stack, name))
    victim = ctx.rng.choice((0, 1))
    how = await _busy(stack, name, victim)
    if victim:
        await _thread(stack.stop_replica, name, victim, signal.SIGKILL)
    else:
        await _thread(stack.stop_service, name, signal.SIGKILL)
    took = await _takeover(stack, name, 1 - victim, everything)
    line = f"{name}.{victim} killed {how}, {name}.{1 - victim} held all {len(everything)} partitions {took:.0f} s later"
    return line, partial(stack.start_replica, name, victim) if victim else partial(stack.up, [name])


async def replicas_killed(ctx: Ctx) -> None:
    """Run a second replica of every service; then, service by service in pipeline order, SIGKILL
    one of its two processes (chosen at random) while it is busy, wait until the other holds every
    partition of the group (the rebalance), and start the killed one again in the background, as an
    orchestrator would. At the end the second replicas stop gracefully (SIGTERM): the stack is as before.

    Busy is the victim's ``factura_messages_consumed_total`` rising between two looks 0.1 s apart:
    it has just taken records for its handlers and commits only every 0.5 s, so the survivor reads
    them again (the rebalance mid-batch). The log says if a victim had to be killed idle."""
    stack = ctx.stack
    restarts: list[asyncio.Task[None]] = []
    kills = []
    try:
        await asyncio.gather(*(_thread(stack.start_replica, name) for name in SERVICES))
        for name in SERVICES:
            line, restart = await _kill_one_of_two(ctx, name)
            kills.append(line)
            restarts.append(asyncio.create_task(_thread(restart)))
        await asyncio.gather(*restarts)
    finally:
        await asyncio.gather(*restarts, return_exceptions=True)
        await asyncio.gather(*(_thread(stack.stop_replica, name) for name in SERVICES), return_exceptions=True)
    ctx.log.append("SIGKILL one of two processes: " + "; ".join(kills))


#: Invoices per second the ERP publishes at most while kills go on: about what the pipeline sustains
#: here with half the tenants on WeasyPrint, so the kills keep hitting a busy pipeline, not a backlog.
PACE = 8.0


@dataclass(frozen=True)
class Scenario:
    name: str
    chaos: Chaos
    #: Duplicate messages allowed per 10 000 deliveries: 0 after graceful stops and outages.
    max_duplicates_per_10k: float
    #: Seconds the ERP takes to publish the load, so it overlaps the chaos: from the sizes.
    spread: Callable[[Sizes], float]


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("sigkill-bursts", sigkill_bursts, 1.0, lambda z: max(z.kills * 1.75, z.invoices / PACE)),
        Scenario("sigterm-each", sigterm_each, 0.0, lambda z: 20.0),
        Scenario("broker-paused", broker_paused, 0.0, lambda z: z.broker_pause_s + 4),
        Scenario("mongo-down", mongo_down, 0.0, lambda z: z.outage_s + 4),
        Scenario("smtp-refusing", smtp_refusing, 0.0, lambda z: z.outage_s + 4),
        Scenario("sms-provider-500", sms_provider_500, 0.0, lambda z: z.outage_s + 4),
        Scenario("render-worker-kills", render_worker_kills, 0.0, lambda z: max(12.0, z.invoices / PACE)),
        # The load outlasts the replicas' start (~20 s) and six takeovers (~15 s each): the last victim is busy too.
        Scenario("replicas-killed", replicas_killed, 1.0, lambda z: max(120.0, z.invoices / PACE)),
    )
}


# --- the evidence ----------------------------------------------------------------------------------


class Audit:
    """The audit API as a compliance officer uses it (admin key, every tenant)."""

    def __init__(self, client: httpx.AsyncClient, cfg: StackConfig) -> None:
        self._client = client
        self._cfg = cfg
        self._url = cfg.service_url("audit") + "/v1"
        self._headers = {"Authorization": f"Bearer {cfg.audit_api_key()}"}

    async def records(self, tenant: str, since: datetime) -> list[dict[str, Any]]:
        """Every record of the tenant that occurred since ``since`` (NDJSON export, chain order)."""
        params = {"tenant_id": tenant, "from": since.isoformat()}
        response = await self._client.get(f"{self._url}/exports/records.ndjson", params=params, headers=self._headers)
        response.raise_for_status()
        return [json.loads(line) for line in response.text.splitlines() if line]

    async def timeline(self, tenant: str, invoice: str) -> list[dict[str, Any]]:
        return await invoice_timeline(self._client, self._cfg, tenant, invoice)

    async def chain_ok(self, tenant: str) -> bool:
        response = await self._client.get(f"{self._url}/verify", params={"tenant_id": tenant}, headers=self._headers)
        response.raise_for_status()
        return bool(response.json()["ok"])


async def run_records(audit: Audit, plan: list[Planned], since: datetime) -> list[dict[str, Any]]:
    numbers = {p.invoice_number for p in plan}
    tenants = sorted({p.tenant_id for p in plan})
    pages = await asyncio.gather(*(audit.records(t, since) for t in tenants))
    return [r for page in pages for r in page if r.get("invoice_id") in numbers]


async def settle(audit: Audit, plan: list[Planned], since: datetime, timeout_s: float) -> list[dict[str, Any]]:
    """Poll audit until every invoice settled (or the deadline); the run's records at that point."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = await run_records(audit, plan, since)
        except httpx.HTTPError:  # audit just restarted, or catching up
            records = []
        by_invoice: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_invoice.setdefault(r["invoice_id"], []).append(r)
        if all(settled(p, by_invoice.get(p.invoice_number, [])) for p in plan) or time.monotonic() > deadline:
            return records
        await asyncio.sleep(2.0)


_RECIPIENTS = re.compile(rb"(?m)^X-Original-To: ([^\r\n]*)")


def mails_per_recipient(maildir: Path, addresses: Iterable[str]) -> Counter[str]:
    """Messages per envelope recipient (the capture's ``X-Original-To``), for ``addresses`` only."""
    wanted = {a.lower() for a in addresses}
    counts: Counter[str] = Counter()
    for sub in ("new", "cur"):
        for path in (maildir / sub).glob("*") if (maildir / sub).is_dir() else []:
            with path.open("rb") as f:
                head = f.read(4096)
            if match := _RECIPIENTS.search(head):
                for rcpt in match.group(1).decode().split(","):
                    if (rcpt := rcpt.strip().lower()) in wanted:
                        counts[rcpt] += 1
    return counts


def texts_per_recipient(sms_dir: Path, run: str) -> Counter[str]:
    """Texts the provider accepted per number, for messages naming one of the run's invoices."""
    counts: Counter[str] = Counter()
    journal = sms_dir / "sms.jsonl"
    if journal.exists():
        for line in journal.read_text().splitlines():
            message = json.loads(line)
            if message.get("status") != "failed" and f"CH-{run}-" in message.get("body", ""):
                counts[message["to"]] += 1
    return counts


async def stored_documents(cfg: StackConfig, timelines: dict[str, list[dict[str, Any]]]) -> frozenset[str]:
    """Invoices whose rendered document is in S3 with the size its ``invoice.rendered`` names."""
    async with AsyncExitStack() as stack:
        store = await DocumentStore.connect(s3_settings(cfg), stack)
        gate = asyncio.Semaphore(16)

        async def present(invoice: str, entries: list[dict[str, Any]]) -> str | None:
            rendered = [e for e in entries if e["type"] == "invoice.rendered"]
            if not rendered:
                return None
            document = (rendered[0].get("data") or {}).get("document") or {}
            async with gate:
                try:
                    size = await store.size(document["key"])
                except (ClientError, KeyError):
                    return None
            return invoice if size == document.get("size_bytes") else None

        found = await asyncio.gather(*(present(i, e) for i, e in timelines.items()))
    return frozenset(i for i in found if i is not None)


async def evidence(cfg: StackConfig, audit: Audit, run: str, plan: list[Planned], since: datetime) -> Evidence:
    records = await run_records(audit, plan, since)
    gate = asyncio.Semaphore(16)

    async def timeline(p: Planned) -> list[dict[str, Any]]:
        async with gate:
            return await audit.timeline(p.tenant_id, p.invoice_number)

    timelines = dict(zip([p.invoice_number for p in plan], await asyncio.gather(*map(timeline, plan)), strict=True))
    tenants = sorted({p.tenant_id for p in plan})
    chains = dict(zip(tenants, await asyncio.gather(*map(audit.chain_ok, tenants)), strict=True))
    return Evidence(
        records=records,
        timelines=timelines,
        mails=mails_per_recipient(cfg.maildir, [p.email for p in plan if p.email]),
        texts=texts_per_recipient(cfg.sms_dir, run),
        stored=await stored_documents(cfg, timelines),
        chains=chains,
    )


async def run(stack: Stack, scenario: Scenario, sizes: Sizes) -> Report:
    """One scenario on a running stack: load and chaos together, recovery, settling, judgement."""
    cfg = stack.cfg
    run_id = uuid.uuid4().hex[:6]
    load = plan_load(run_id, sizes.invoices, datetime.now(UTC).date(), sizes.seed)
    samples, plan = [s for s, _ in load], [p for _, p in load]
    since = datetime.now(UTC) - timedelta(seconds=5)
    started = time.monotonic()
    ctx = Ctx(stack, sizes, random.Random(sizes.seed))
    chaos = asyncio.create_task(scenario.chaos(ctx))
    try:
        await erp(cfg, samples, scenario.spread(sizes))
        ctx.published.set()
        await chaos
    finally:
        if not chaos.done():
            chaos.cancel()
        await _thread(stack.up)  # whatever the chaos left down (a failed restart) comes back
    async with httpx.AsyncClient(timeout=60) as client:
        audit = Audit(client, cfg)
        await settle(audit, plan, since, sizes.settle_s)
        seconds = time.monotonic() - started
        report = judge(scenario.name, plan, await evidence(cfg, audit, run_id, plan, since), seconds)
    report.chaos = "; ".join(ctx.log)
    return report
