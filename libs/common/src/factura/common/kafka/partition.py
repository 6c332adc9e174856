"""One worker per assigned partition: messages in order, failures handled by kind.

Each partition has its own task and queue, so a retry, a slow handler or an outage in one
partition never delays another. For every record the worker decodes it, calls the handler under
a timeout, and by the error's kind (:mod:`factura.common.errors`):

* invalid → dead-letter at once, go on;
* transient → pause fetching for this partition and retry the same record with capped backoff
  for as long as the dependency is down (the outage is visible in readiness); resume after;
* bug → retry ``retry_max_attempts`` times (it may be a race), then dead-letter with the
  traceback, go on.

A record is marked done (its offset committable) only after the handler returned or the DLQ
took it. A stopping or revoked worker leaves the record in hand uncommitted: it is redelivered.

A route may instead be :class:`Batched`: the worker then hands its handler up to ``max_records``
consecutive messages at once (what was fetched, never waiting for more), for stores that write
in bulk. Invalid records are dead-lettered before the call; a transient error retries the whole
batch (handlers are idempotent); a batch that keeps failing as a bug, or is refused as invalid,
is split and retried one message at a time, so only the poison message reaches the DLQ. A
handler that judges messages one by one (ingest) returns the ones it refused, with why: those are
dead-lettered as invalid and the rest of the batch is done, with no retry of the good ones.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, NamedTuple, TypeAlias, TypeVar

from aiokafka import ConsumerRecord, TopicPartition
from pydantic import ValidationError

from factura.common.envelope import Envelope
from factura.common.errors import ErrorKind, InvalidMessage, classify, field_errors
from factura.common.events import FieldError, UnknownEventType, parse_event
from factura.common.kafka.deadletter import DeadLetters, DlqLimit
from factura.common.logging import log_context
from factura.common.metrics import HANDLER_SECONDS, MESSAGES_CONSUMED, MESSAGES_FAILED
from factura.common.settings import KafkaSettings
from factura.common.topics import Topic

log = logging.getLogger(__name__)
T = TypeVar("T")
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


class Message(NamedTuple, Generic[T]):
    """A decoded message plus where it came from (a tuple: built once per record, cheaply)."""

    topic: Topic
    partition: int
    offset: int
    key: bytes | None
    headers: Mapping[str, bytes]
    raw: bytes
    value: T

    @property
    def source(self) -> str:
        return f"{self.topic.name}/{self.partition}/{self.offset}"


Handler = Callable[[Message[Any]], Awaitable[None]]
#: What a batch handler refused of the batch it was given: each message and why.
Refused = Sequence[tuple[Message[Any], InvalidMessage]]
BatchHandler = Callable[[Sequence[Message[Any]]], Awaitable[Refused | None]]


@dataclass(frozen=True)
class Batched:
    """A route whose handler takes consecutive messages of one partition at once."""

    handler: BatchHandler
    max_records: int = 500


Route = Handler | Batched
#: Takes a message that cannot succeed (kind, error text, attempts); True once the DLQ has it.
GiveUp = Callable[[ErrorKind, str, int], Awaitable[bool]]


def decode(topic: Topic, raw: bytes) -> Envelope[Any] | bytes:
    """Envelope topics parse into typed events. Inbound ERP topics stay bytes: ingest owns the ERP
    contract, so it decodes them itself and turns what it cannot read into ``invoice.rejected``."""
    if not topic.enveloped:
        return raw
    try:
        return parse_event(raw)
    except ValidationError as e:
        raise InvalidMessage(field_errors(e)) from e
    except (UnknownEventType, ValueError, RecursionError) as e:  # JSON, UTF-8 and nesting errors
        raise InvalidMessage([FieldError(field="$", message=f"not decodable: {str(e)[:200]}")]) from e


class HandlerTimeout(Exception):
    """The loop's own deadline for one handler call passed: a hang, counted as a bug.

    Distinct from ``TimeoutError``, which a dependency's client raises and which means an outage.
    """


class Outages:
    """Dependencies that failed a handler and have not succeeded since: what readiness reports."""

    def __init__(self) -> None:
        self._down: dict[str, dict[TopicPartition, float]] = {}

    def down(self, dependency: str, tp: TopicPartition) -> None:
        self._down.setdefault(dependency, {}).setdefault(tp, time.monotonic())

    def cleared(self, tp: TopicPartition) -> None:
        for dependency in list(self._down):
            self._down[dependency].pop(tp, None)
            if not self._down[dependency]:
                del self._down[dependency]

    def current(self) -> dict[str, float]:
        """Dependency → seconds since a partition first found it down."""
        now = time.monotonic()
        return {dep: now - min(since.values()) for dep, since in self._down.items()}


@dataclass
class Collaborators:
    """What every partition worker of one consumer shares."""

    settings: KafkaSettings
    dead_letters: DeadLetters
    dlq_limit: DlqLimit
    outages: Outages
    #: Pauses or resumes fetching for a worker's partition from its ``in_retry`` and ``buffered``.
    flow: Callable[[PartitionWorker], None]


class PartitionWorker:
    def __init__(self, tp: TopicPartition, topic: Topic, route: Route, shared: Collaborators) -> None:
        self.tp = tp
        self._topic = topic
        self._route = route
        self._s = shared
        self._batches: deque[list[Record]] = deque()
        self._arrived = asyncio.Event()
        self._halt = asyncio.Event()
        self.buffered = 0
        #: Offset after the last record handled or dead-lettered: what may be committed.
        self.done_offset: int | None = None
        self.in_retry = False
        self._call_started: float | None = None
        self._interrupted = False
        self._consumed = MESSAGES_CONSUMED.labels(topic=topic.name)
        self._duration = HANDLER_SECONDS.labels(topic=topic.name)
        self.task = asyncio.create_task(self._run(), name=f"partition-{tp.topic}-{tp.partition}")

    # -- fed by the poll loop --------------------------------------------------------------
    def feed(self, records: list[Record]) -> None:
        self._batches.append(records)
        self.buffered += len(records)
        self._arrived.set()

    @property
    def halted(self) -> bool:
        return self._halt.is_set()

    def halt(self) -> None:
        """Stop after the record in hand (revoke, shutdown); what is buffered is re-read later."""
        self._halt.set()
        self._arrived.set()

    def overdue(self, now: float) -> bool:
        """The handler call in progress has run past ``handler_timeout_s`` (the watchdog asks)."""
        started = self._call_started
        return started is not None and now - started > self._s.settings.handler_timeout_s

    def interrupt(self) -> None:
        """Cancel the overdue handler call; :meth:`_attempts` turns it into a :class:`HandlerTimeout`.

        One watchdog per consumer instead of an ``asyncio.timeout`` per call: the deadline then
        costs one clock read per record, not a timer scheduled and cancelled on the event loop.
        """
        self._interrupted = True
        self.task.cancel()

    # -- the worker ------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._halt.is_set():
            if not self._batches:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if isinstance(self._route, Batched):
                if not await self._run_batch(self._route):
                    return
                continue
            batch = self._batches.popleft()
            self._consumed.inc(len(batch))
            for record in batch:
                if self._halt.is_set() or not await self._process(record, self._route):
                    return
                self._done(record, 1)

    def _done(self, last: Record, count: int) -> None:
        self.done_offset = last.offset + 1
        before = self.buffered
        self.buffered -= count
        half = self._s.settings.max_buffered_records // 2
        if before > half >= self.buffered:
            self._s.flow(self)  # half empty: resume fetching if it was paused for being full

    def _take(self, max_records: int) -> list[Record]:
        """Up to ``max_records`` buffered records, in order, splitting a fetched batch if needed."""
        taken: list[Record] = []
        while self._batches and len(taken) < max_records:
            batch = self._batches[0]
            room = max_records - len(taken)
            if len(batch) <= room:
                taken.extend(self._batches.popleft())
            else:
                taken.extend(batch[:room])
                self._batches[0] = batch[room:]
        return taken

    async def _run_batch(self, route: Batched) -> bool:
        records = self._take(route.max_records)
        self._consumed.inc(len(records))
        pairs: list[tuple[Message[Any], Record]] = []
        for record in records:
            raw = record.value or b""
            try:
                value = decode(self._topic, raw)
            except InvalidMessage as e:
                if not await self._dead_letter(record, ErrorKind.INVALID, str(e), attempts=0):
                    return False
                continue
            pairs.append((self._message(record, raw, value), record))
        if pairs:
            messages = [m for m, _ in pairs]
            refused: list[tuple[Message[Any], InvalidMessage]] = []

            async def call() -> None:
                refused[:] = await route.handler(messages) or ()

            def split(kind: ErrorKind, error: str, attempts: int) -> Awaitable[bool]:
                return self._one_by_one(route, pairs)

            if not await self._attempts(call, messages[0].source, split):
                return False
            records_of = {id(m): r for m, r in pairs}
            for message, error in refused:
                MESSAGES_FAILED.labels(topic=self._topic.name, error=type(error).__name__).inc()
                log.warning("invalid message", extra={"source": message.source, "error": str(error)})
                if not await self._dead_letter(records_of[id(message)], ErrorKind.INVALID, str(error), attempts=1):
                    return False
        self._done(records[-1], len(records))
        return True

    async def _one_by_one(self, route: Batched, pairs: list[tuple[Message[Any], Record]]) -> bool:
        """A batch that fails as a whole: one message at a time, so only the culprit is dead-lettered."""
        log.warning("batch keeps failing; retrying its messages one by one", extra={"size": len(pairs)})
        for message, record in pairs:
            if self._halt.is_set() or not await self._attempts(
                partial(self._alone, route, message), message.source, partial(self._give_up, record)
            ):
                return False
        return True

    @staticmethod
    async def _alone(route: Batched, message: Message[Any]) -> None:
        """``message`` as a batch of one; refused, it raises, so the retry rules dead-letter it."""
        for _, error in await route.handler([message]) or ():
            raise error

    def _message(self, record: Record, raw: bytes, value: Any) -> Message[Any]:
        return Message(self._topic, record.partition, record.offset, record.key, dict(record.headers), raw, value)

    def _give_up(self, record: Record, kind: ErrorKind, error: str, attempts: int) -> Awaitable[bool]:
        return self._dead_letter(record, kind, error, attempts=attempts)

    async def _process(self, record: Record, handler: Handler) -> bool:
        """Handle one record. True when it may be committed (handled or dead-lettered)."""
        raw = record.value or b""
        try:
            value = decode(self._topic, raw)
        except InvalidMessage as e:
            return await self._dead_letter(record, ErrorKind.INVALID, str(e), attempts=0)
        message = self._message(record, raw, value)

        give_up = partial(self._give_up, record)
        if isinstance(value, Envelope):
            with log_context(value.correlation_id, value.tenant_id):
                return await self._attempts(lambda: handler(message), message.source, give_up)
        return await self._attempts(lambda: handler(message), message.source, give_up)  # ingest binds its own ids

    async def _attempts(self, call: Callable[[], Awaitable[None]], source: str, give_up: GiveUp) -> bool:
        """Call until it succeeds, retrying by the error's kind; ``give_up`` takes what cannot succeed."""
        bugs = 0
        attempt = 0
        while True:
            attempt += 1
            if self._interrupted:  # a handler swallowed the watchdog's cancel: take it back now
                self._timed_out()
            self._call_started = started = time.monotonic()
            try:
                await call()
            except asyncio.CancelledError:
                if not self._interrupted:
                    raise
                error: Exception = self._timed_out()
            except Exception as e:  # noqa: BLE001 - every failure is classified below, none escapes
                error = e
            else:
                self._call_started = None
                self._duration.observe(time.monotonic() - started)
                if attempt > 1:
                    self._recovered(source, attempt)
                self._s.dlq_limit.handled()
                return True
            self._call_started = None
            kind, dependency = classify(error)  # HandlerTimeout is a bug: it is no known outage
            MESSAGES_FAILED.labels(topic=self._topic.name, error=type(error).__name__).inc()
            if kind is ErrorKind.INVALID:
                log.warning("invalid message", extra={"source": source, "error": str(error)})
                return await give_up(kind, str(error), attempt)
            if kind is ErrorKind.BUG:
                bugs += 1
                if bugs >= self._s.settings.retry_max_attempts:
                    log.error("handler keeps failing; giving up", exc_info=error, extra={"source": source})
                    return await give_up(kind, _traceback(error), attempt)
                log.warning("handler failed, retrying", exc_info=error, extra={"source": source})
            else:
                self._s.outages.down(dependency or type(error).__name__, self.tp)
                log.warning(
                    "dependency unavailable; partition paused, retrying",
                    extra={"source": source, "dependency": dependency, "error": repr(error)[:500]},
                )
            self.in_retry = True
            self._s.flow(self)
            # A provider that says when to come back (429 Retry-After) is not asked sooner.
            if await self._backoff(attempt, at_least_s=getattr(error, "retry_after_s", None) or 0.0):
                return False

    def _timed_out(self) -> HandlerTimeout:
        """The watchdog cancelled the call: take the cancellation back and report a timeout."""
        self._interrupted = False
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        return HandlerTimeout(f"handler ran past its deadline of {self._s.settings.handler_timeout_s} s")

    def _recovered(self, source: str, attempts: int) -> None:
        self._s.outages.cleared(self.tp)
        self.in_retry = False
        self._s.flow(self)
        log.info("handled after retries", extra={"source": source, "attempts": attempts})

    async def _dead_letter(self, record: Record, kind: ErrorKind, error: str, *, attempts: int) -> bool:
        sent = await self._s.dead_letters.send(self._topic, record, kind, error, attempts=attempts, sleep=self._backoff)
        if self.in_retry:
            self.in_retry = False
            self._s.outages.cleared(self.tp)
            self._s.flow(self)
        return sent

    async def _backoff(self, attempt: int, at_least_s: float = 0.0) -> bool:
        """Sleep with capped exponential backoff and jitter; True if halted meanwhile."""
        s = self._s.settings
        delay = min(s.retry_max_s, s.retry_initial_s * 2.0 ** min(attempt - 1, 30)) * random.uniform(0.5, 1.0)
        delay = max(delay, at_least_s)
        try:
            await asyncio.wait_for(self._halt.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True


def _traceback(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))[-4000:]
