"""The one consumer loop every service runs.

Semantics (modelled on Sentry's arroyo, kept small):

* **At-least-once.** Offsets are committed manually, only for messages whose handler finished
  (or that went to the DLQ). Handlers are idempotent, so a redelivery is harmless.
* **Poison never stalls a partition.** An undecodable or schema-invalid message, or one whose
  handler raises :class:`InvalidMessage`, goes to ``<topic>.dlq`` with headers naming the error,
  and the loop moves on.
* **Transient errors retry in place** with capped exponential backoff and jitter, so order within
  a partition is kept. After ``retry_max_attempts`` the message is dead-lettered (still not lost:
  the DLQ can be replayed) rather than blocking the partition forever.
* **Backpressure** comes from the poll itself: at most ``max_poll_records`` per poll, partitions
  of one poll handled concurrently, messages within a partition in order.
* **SIGTERM drains:** :meth:`ConsumerLoop.stop` lets the message in hand finish, commits, leaves
  the group. A message still in backoff is left uncommitted and redelivered after restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError
from pydantic import ValidationError

from factura.common.envelope import Envelope
from factura.common.errors import InvalidMessage, field_errors
from factura.common.events import FieldError, UnknownEventType, parse_event
from factura.common.kafka.producer import Headers, Publisher
from factura.common.logging import log_context
from factura.common.metrics import CONSUMER_LAG, HANDLER_SECONDS, MESSAGES_CONSUMED, MESSAGES_DLQ, MESSAGES_FAILED
from factura.common.settings import KafkaSettings
from factura.common.topics import REGISTRY, Topic

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Message(Generic[T]):
    """A decoded message plus where it came from."""

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


def decode(topic: Topic, raw: bytes) -> Envelope[Any] | dict[str, Any]:
    """Envelope topics parse into typed events; ERP topics into a JSON object for ingest to check."""
    try:
        if topic.enveloped:
            return parse_event(raw)
        value = json.loads(raw)
    except ValidationError as e:
        raise InvalidMessage(field_errors(e)) from e
    except (UnknownEventType, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidMessage([FieldError(field="$", message=f"not decodable: {e}")]) from e
    if not isinstance(value, dict):
        raise InvalidMessage([FieldError(field="$", message="expected a JSON object")])
    return value


@dataclass
class _Progress:
    """Offsets handled but not yet committed, per partition."""

    pending: dict[TopicPartition, int] = field(default_factory=dict)


class ConsumerLoop:
    def __init__(
        self,
        *,
        settings: KafkaSettings,
        group_id: str,
        routes: Mapping[str, Handler],
        publisher: Publisher,
        service: str,
    ) -> None:
        self._settings = settings
        self._service = service
        self._publisher = publisher
        prefix = settings.topic_prefix
        self._routes: dict[str, tuple[Topic, Handler]] = {
            REGISTRY[name].physical(prefix): (REGISTRY[name], handler) for name, handler in routes.items()
        }
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=f"{prefix}{group_id}",
            client_id=f"{service}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.max_poll_records,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            rebalance_timeout_ms=settings.rebalance_timeout_ms,
        )
        self._stopping = asyncio.Event()
        self._batch_lock = asyncio.Lock()
        self._progress = _Progress()
        self.last_poll: float = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()

    @property
    def healthy(self) -> bool:
        """Polled recently (a wedged loop fails its liveness probe)."""
        return time.monotonic() - self.last_poll < max(30.0, self._settings.session_timeout_ms / 1000)

    async def run(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe(list(self._routes), listener=_CommitOnRevoke(self))
        log.info("consumer started", extra={"topics": list(self._routes)})
        try:
            while not self._stopping.is_set():
                batch = await self._consumer.getmany(
                    timeout_ms=self._settings.poll_timeout_ms, max_records=self._settings.max_poll_records
                )
                self.last_poll = time.monotonic()
                if not batch:
                    continue
                async with self._batch_lock:
                    await asyncio.gather(*(self._process_partition(tp, records) for tp, records in batch.items()))
                    await self._commit()
        finally:
            async with self._batch_lock:
                await self._commit()
            await self._consumer.stop()
            log.info("consumer stopped")

    # -- processing ------------------------------------------------------------------------
    async def _process_partition(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        topic, handler = self._routes[tp.topic]
        for record in records:
            if self._stopping.is_set():
                return  # drain: what is not handled yet is redelivered after restart
            MESSAGES_CONSUMED.labels(topic=topic.name).inc()
            started = time.perf_counter()
            done = await self._process(topic, handler, record)
            HANDLER_SECONDS.labels(topic=topic.name).observe(time.perf_counter() - started)
            if not done:
                return
            self._progress.pending[tp] = record.offset + 1
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                CONSUMER_LAG.labels(topic=topic.name, partition=str(tp.partition)).set(highwater - record.offset - 1)

    async def _process(self, topic: Topic, handler: Handler, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Handle one record. True when it may be committed (handled or dead-lettered)."""
        raw = record.value or b""
        headers = {k: v for k, v in record.headers}
        try:
            value = decode(topic, raw)
        except InvalidMessage as e:
            return await self._dead_letter(topic, record, "invalid", str(e), attempts=0)
        message = Message(topic, record.partition, record.offset, record.key, headers, raw, value)
        correlation = value.correlation_id if isinstance(value, Envelope) else _header(headers, "correlation_id")
        tenant = value.tenant_id if isinstance(value, Envelope) else _header(headers, "tenant_id")
        with log_context(correlation, tenant):
            attempt = 0
            while True:
                attempt += 1
                try:
                    await handler(message)
                    return True
                except InvalidMessage as e:
                    MESSAGES_FAILED.labels(topic=topic.name, error="InvalidMessage").inc()
                    log.warning("invalid message", extra={"source": message.source, "error": str(e)})
                    return await self._dead_letter(topic, record, "invalid", str(e), attempts=attempt)
                except Exception as e:
                    MESSAGES_FAILED.labels(topic=topic.name, error=type(e).__name__).inc()
                    if attempt >= self._settings.retry_max_attempts:
                        log.error("retries exhausted", exc_info=True, extra={"source": message.source})
                        return await self._dead_letter(topic, record, "retries_exhausted", repr(e), attempts=attempt)
                    delay = self._backoff(attempt)
                    log.warning(
                        "transient handler error, retrying",
                        extra={"source": message.source, "attempt": attempt, "delay_s": delay, "error": repr(e)},
                    )
                    if await self._sleep_unless_stopping(delay):
                        return False

    def _backoff(self, attempt: int) -> float:
        base = min(self._settings.retry_max_s, self._settings.retry_initial_s * 2.0 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)

    async def _sleep_unless_stopping(self, delay: float) -> bool:
        """Sleep; True if asked to stop meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    async def _dead_letter(
        self, topic: Topic, record: ConsumerRecord[bytes, bytes], reason: str, error: str, attempts: int
    ) -> bool:
        headers: Headers = [(k, v) for k, v in record.headers if not k.startswith("dlq.")]
        headers += [
            ("dlq.reason", reason.encode()),
            ("dlq.error", error[:4000].encode()),
            ("dlq.source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            ("dlq.service", self._service.encode()),
            ("dlq.attempts", str(attempts).encode()),
        ]
        dlq = topic.dlq(self._settings.topic_prefix)
        attempt = 0
        while True:  # the DLQ is the last resort: keep trying until it takes the message or we stop
            attempt += 1
            try:
                await self._publisher.send(dlq, record.value or b"", key=record.key, headers=headers)
                break
            except Exception:
                log.exception("DLQ publish failed", extra={"dlq": dlq})
                if await self._sleep_unless_stopping(self._backoff(attempt)):
                    return False
        MESSAGES_DLQ.labels(topic=topic.name, reason=reason).inc()
        log.warning("dead-lettered", extra={"dlq": dlq, "reason": reason, "error": error[:500]})
        return True

    async def _commit(self) -> None:
        if not self._progress.pending:
            return
        offsets, self._progress.pending = self._progress.pending, {}
        assigned = self._consumer.assignment()
        offsets = {tp: off for tp, off in offsets.items() if tp in assigned}
        if offsets:
            try:
                await self._consumer.commit(offsets)
            except CommitFailedError:
                # The group rebalanced under us; the new owner re-reads these (idempotent) messages.
                log.warning("commit failed after rebalance", extra={"offsets": len(offsets)})


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another member, finish the batch in hand and commit it."""

    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if self._loop._batch_lock.locked():
            # run() holds the lock while processing; wait for it, then commit what it did.
            async with self._loop._batch_lock:
                pass
        await self._loop._commit()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}/{tp.partition}" for tp in assigned]})


def _header(headers: Mapping[str, bytes], name: str) -> str | None:
    value = headers.get(name)
    return value.decode(errors="replace") if value is not None else None
