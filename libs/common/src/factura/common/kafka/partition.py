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
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
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
    def __init__(self, tp: TopicPartition, topic: Topic, handler: Handler, shared: Collaborators) -> None:
        self.tp = tp
        self._topic = topic
        self._handler = handler
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
        limit = self._s.settings.max_buffered_records
        while not self._halt.is_set():
            if not self._batches:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch = self._batches.popleft()
            self._consumed.inc(len(batch))
            for record in batch:
                if self._halt.is_set() or not await self._process(record):
                    return
                self.done_offset = record.offset + 1
                self.buffered -= 1
                if self.buffered == limit // 2:
                    self._s.flow(self)  # half empty: resume fetching if it was paused for being full

    async def _process(self, record: Record) -> bool:
        """Handle one record. True when it may be committed (handled or dead-lettered)."""
        raw = record.value or b""
        try:
            value = decode(self._topic, raw)
        except InvalidMessage as e:
            return await self._dead_letter(record, ErrorKind.INVALID, str(e), attempts=0)
        message = Message(self._topic, record.partition, record.offset, record.key, dict(record.headers), raw, value)
        if isinstance(value, Envelope):
            with log_context(value.correlation_id, value.tenant_id):
                return await self._attempts(message, record)
        return await self._attempts(message, record)  # ingest binds the identifiers it parses

    async def _attempts(self, message: Message[Any], record: Record) -> bool:
        bugs = 0
        attempt = 0
        while True:
            attempt += 1
            if self._interrupted:  # a handler swallowed the watchdog's cancel: take it back now
                self._timed_out()
            # The handler call is inlined (no helper coroutine): this is the per-record hot path.
            self._call_started = started = time.monotonic()
            try:
                await self._handler(message)
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
                    self._recovered(message, attempt)
                self._s.dlq_limit.handled()
                return True
            self._call_started = None
            kind, dependency = classify(error)  # HandlerTimeout is a bug: it is no known outage
            MESSAGES_FAILED.labels(topic=self._topic.name, error=type(error).__name__).inc()
            if kind is ErrorKind.INVALID:
                log.warning("invalid message", extra={"source": message.source, "error": str(error)})
                return await self._dead_letter(record, kind, str(error), attempts=attempt)
            if kind is ErrorKind.BUG:
                bugs += 1
                if bugs >= self._s.settings.retry_max_attempts:
                    log.error("handler keeps failing; dead-lettered", exc_info=error, extra={"source": message.source})
                    return await self._dead_letter(record, kind, _traceback(error), attempts=attempt)
                log.warning("handler failed, retrying", exc_info=error, extra={"source": message.source})
            else:
                self._s.outages.down(dependency or type(error).__name__, self.tp)
                log.warning(
                    "dependency unavailable; partition paused, retrying",
                    extra={"source": message.source, "dependency": dependency, "error": repr(error)[:500]},
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

    def _recovered(self, message: Message[Any], attempts: int) -> None:
        self._s.outages.cleared(self.tp)
        self.in_retry = False
        self._s.flow(self)
        log.info("handled after retries", extra={"source": message.source, "attempts": attempts})

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
