"""The one consumer loop every service runs.

Semantics (modelled on Sentry's arroyo, kept small):

* **At-least-once.** Offsets are committed manually (every ``commit_interval_s``, on revoke and
  on stop), only up to records whose handler finished or that the DLQ took. Handlers are
  idempotent, so a redelivery is harmless.
* **Per-partition progress.** The poll loop only fetches and hands records to one
  :class:`~factura.common.kafka.partition.PartitionWorker` per partition; a retry, a slow handler
  or an outage in one partition never delays the others.
* **Outages pause, never dead-letter.** A transient error (a dependency down) pauses fetching
  for that partition and retries the record until the dependency is back; readiness names it.
  Only messages that are wrong in themselves (invalid) or that keep hitting a bug are
  dead-lettered, and :class:`~factura.common.kafka.deadletter.DlqLimit` stops the consumer when
  dead-letters pile up with nothing handled in between.
* **Backpressure.** A partition with ``max_buffered_records`` waiting is paused until its worker
  catches up; every handler call has a deadline (``handler_timeout_s``).
* **Bounded rebalances and shutdown.** On revoke and on stop, workers finish the record in hand
  for at most ``drain_timeout_s`` (then they are cancelled and the record is redelivered), and
  what is done is committed: :meth:`ConsumerLoop.run` always returns after :meth:`stop`.
* **Truthful lag.** Every ``lag_interval_s`` the lag of each assigned partition is computed from
  the broker's end offset and the committed offset, so it keeps rising while a partition stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError

from factura.common.kafka.connection import consumer_kwargs
from factura.common.kafka.deadletter import DeadLetters, DlqLimit
from factura.common.kafka.partition import (
    Batched,
    BatchHandler,
    Collaborators,
    Handler,
    Message,
    Outages,
    PartitionWorker,
    Refused,
    Route,
    decode,
)
from factura.common.kafka.producer import Publisher
from factura.common.metrics import CONSUMER_LAG, PARTITIONS_PAUSED
from factura.common.settings import KafkaSettings
from factura.common.topics import Topic, resolve

#: Services import what a handler needs from here: the loop, its handler type and message.
__all__ = ["BatchHandler", "Batched", "ConsumerLoop", "Handler", "Message", "Refused", "Route", "decode"]
log = logging.getLogger(__name__)


class ConsumerLoop:
    def __init__(
        self,
        *,
        settings: KafkaSettings,
        group_id: str,
        routes: Mapping[str, Route],
        publisher: Publisher,
        service: str,
    ) -> None:
        self._settings = settings
        prefix = settings.topic_prefix
        self._routes: dict[str, tuple[Topic, Route]] = {
            resolve(name).physical(prefix): (resolve(name), handler) for name, handler in routes.items()
        }
        self._consumer = AIOKafkaConsumer(
            **consumer_kwargs(settings),
            group_id=f"{prefix}{group_id}",
            client_id=service,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.max_poll_records,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            rebalance_timeout_ms=settings.rebalance_timeout_ms,
        )
        self._stopping = asyncio.Event()
        self._limit = DlqLimit(settings.dlq_limit_consecutive)
        self.outages = Outages()
        self._shared = Collaborators(
            settings=settings,
            dead_letters=DeadLetters(publisher, prefix=prefix, service=service, limit=self._limit),
            dlq_limit=self._limit,
            outages=self.outages,
            flow=self._flow,
        )
        self._workers: dict[TopicPartition, PartitionWorker] = {}
        self._paused: set[TopicPartition] = set()
        self._committed: dict[TopicPartition, int] = {}
        self._releasing = asyncio.Lock()
        self.last_poll = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        self._stopping.set()

    def alive(self) -> bool:
        """The poll loop turned recently (liveness: a wedged loop gets the process restarted)."""
        return time.monotonic() - self.last_poll < self._settings.liveness_s

    @property
    def partitions(self) -> frozenset[TopicPartition]:
        """The partitions this member holds now (one worker each)."""
        return frozenset(self._workers)

    async def broker_reachable(self) -> None:
        """Readiness: the broker answers a metadata request (the caller applies the deadline)."""
        await self._consumer.topics()

    async def run(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe(list(self._routes), listener=_Rebalance(self))
        log.info("consumer started", extra={"topics": list(self._routes)})
        lag = asyncio.create_task(self._report_lag(), name="consumer-lag")
        try:
            await self._poll()
        finally:
            lag.cancel()
            await self._release(list(self._workers))
            if not self._settings.leave_group_on_stop:
                _stay_in_group(self._consumer)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._consumer.stop(), self._settings.drain_timeout_s)
            log.info("consumer stopped")

    async def _poll(self) -> None:
        """Fetch, hand records to partition workers, commit periodically, watch the workers."""
        settings = self._settings
        next_commit = time.monotonic() + settings.commit_interval_s
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                fetch = asyncio.ensure_future(
                    self._consumer.getmany(timeout_ms=settings.poll_timeout_ms, max_records=settings.max_poll_records)
                )
                # getmany waits without limit while a rebalance is in progress: stop must not.
                await asyncio.wait((fetch, stopping), return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    await asyncio.gather(fetch, return_exceptions=True)
                    return
                self._hand_over(fetch.result())
                self._check_workers()
                if self.last_poll >= next_commit:
                    await self._commit(list(self._workers.values()))
                    next_commit = self.last_poll + settings.commit_interval_s
        finally:
            stopping.cancel()

    def _hand_over(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        self.last_poll = time.monotonic()
        for tp, records in batch.items():
            worker = self._workers.get(tp)
            if worker is None:  # assigned between the listener and this poll
                worker = self._start_worker(tp)
            worker.feed(records)
            if worker.buffered >= self._settings.max_buffered_records:
                self._flow(worker)

    def _check_workers(self) -> None:
        """Surface a worker's fatal error (DlqLimitExceeded, a loop bug); interrupt overdue handlers."""
        for worker in list(self._workers.values()):
            if worker.task.done() and not worker.halted:
                if not worker.task.cancelled():
                    worker.task.result()  # raises what ended it
                raise RuntimeError(f"the worker of {worker.tp} ended unexpectedly (cancelled by its handler)")
            if worker.overdue(self.last_poll):
                log.error("handler past its deadline; interrupting", extra={"partition": str(worker.tp)})
                worker.interrupt()

    # -- partitions ------------------------------------------------------------------------
    def _start_worker(self, tp: TopicPartition) -> PartitionWorker:
        topic, handler = self._routes[tp.topic]
        worker = PartitionWorker(tp, topic, handler, self._shared)
        self._workers[tp] = worker
        return worker

    def _flow(self, worker: PartitionWorker) -> None:
        """Pause a partition while its worker retries or is full; resume once it is half empty.

        The gap between the two marks keeps a busy partition from flapping: aiokafka drops a
        paused partition's prefetched records and fetches them again after the resume.
        """
        tp = worker.tp
        limit = self._settings.max_buffered_records
        if tp in self._paused:
            wanted = worker.in_retry or worker.buffered > limit // 2
        else:
            wanted = worker.in_retry or worker.buffered >= limit
        if wanted and tp not in self._paused:
            self._consumer.pause(tp)
            self._paused.add(tp)
            PARTITIONS_PAUSED.inc()
        elif not wanted and tp in self._paused:
            self._consumer.resume(tp)
            self._paused.discard(tp)
            PARTITIONS_PAUSED.dec()

    async def _release(self, partitions: list[TopicPartition]) -> None:
        """Halt these partitions' workers, commit what they finished, forget them: all within one
        deadline below the rebalance timeout, so the group does not drop this member meanwhile.

        Serialised: the revoke listener and ``run()``'s shutdown may both release at once.
        """
        async with self._releasing:
            workers = [w for tp in partitions if (w := self._workers.pop(tp, None)) is not None]
            if not workers:
                return
            deadline = time.monotonic() + min(
                self._settings.drain_timeout_s, self._settings.rebalance_timeout_ms / 1000 * 0.8
            )
            for worker in workers:
                worker.halt()
            _, pending = await asyncio.wait([w.task for w in workers], timeout=max(0.0, deadline - time.monotonic()))
            for task in pending:
                log.warning(
                    "handler did not finish in time; cancelled, redelivered later", extra={"task": task.get_name()}
                )
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
            await self._commit(workers, within_s=max(0.5, deadline - time.monotonic()))
            for worker in workers:
                self.outages.cleared(worker.tp)
                if worker.tp in self._paused:
                    self._paused.discard(worker.tp)
                    PARTITIONS_PAUSED.dec()
                self._committed.pop(worker.tp, None)
                with contextlib.suppress(KeyError):
                    CONSUMER_LAG.remove(self._routes[worker.tp.topic][0].name, str(worker.tp.partition))
            for worker in workers:  # e.g. DlqLimitExceeded that landed just before the revoke
                error = worker.task.exception() if worker.task.done() and not worker.task.cancelled() else None
                if error is not None:
                    raise error

    async def _commit(self, workers: list[PartitionWorker], within_s: float | None = None) -> None:
        offsets = {
            w.tp: w.done_offset
            for w in workers
            if w.done_offset is not None and self._committed.get(w.tp) != w.done_offset
        }
        assigned = self._consumer.assignment()
        offsets = {tp: off for tp, off in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            # Bounded: a broker that accepts connections but does not answer must not freeze the
            # poll loop (liveness) or a rebalance; the offsets stay pending and go with the next commit.
            await asyncio.wait_for(self._consumer.commit(offsets), within_s or self._settings.drain_timeout_s)
        except CommitFailedError:
            # The group rebalanced under us; the new owner re-reads these (idempotent) messages.
            log.warning("commit failed after rebalance", extra={"offsets": len(offsets)})
        except (KafkaError, TimeoutError) as e:
            log.warning("commit failed; will retry", extra={"error": repr(e)})  # offsets stay pending
        else:
            # Only for partitions still ours: a revoked one must not keep a stale committed offset.
            self._committed.update({tp: off for tp, off in offsets.items() if tp in self._workers})

    async def _report_lag(self) -> None:
        while True:
            await asyncio.sleep(self._settings.lag_interval_s)
            try:
                await asyncio.wait_for(self._measure_lag(), self._settings.lag_interval_s)
            except (KafkaError, TimeoutError) as e:
                log.warning("lag not measured: broker did not answer", extra={"error": repr(e)})

    async def _measure_lag(self) -> None:
        assigned = list(self._workers)
        if not assigned:
            return
        ends = await self._consumer.end_offsets(assigned)
        for tp, end in ends.items():
            if tp not in self._workers:
                continue
            committed = self._committed.get(tp)
            if committed is None:
                committed = await self._consumer.committed(tp) or 0
                if tp not in self._workers:  # revoked meanwhile: its gauge is gone, keep it so
                    continue
                self._committed[tp] = committed
            CONSUMER_LAG.labels(topic=self._routes[tp.topic][0].name, partition=str(tp.partition)).set(
                max(0, end - committed)
            )


def _stay_in_group(consumer: AIOKafkaConsumer) -> None:
    """Make ``consumer.stop()`` close without a LeaveGroup: the member expires after its session
    timeout, as a crashed one does, and the group rebalances then.

    For Tansu 0.6 (``leave_group_on_stop`` off). When a LeaveGroup arrives while another member is
    joining, Tansu removes the member but keeps it as the group's leader (its coordinator's leave
    path clears the leader only in a stable group). The leader never syncs, so no member ever gets
    an assignment again, a restarted one included; the group is wedged for good. A member that goes
    silent is expired and replaced as leader correctly.

    aiokafka has no switch for this. Its static membership skips the leave, but Tansu then does not
    hand a dead member's partitions over, so the coordinator's leave step is replaced for this one
    consumer (aiokafka's version is pinned in the lock file).
    """
    coordinator = consumer._coordinator
    if coordinator is None:  # never started
        return

    async def forget_membership() -> None:
        coordinator.reset_generation()

    coordinator._maybe_leave_group = forget_membership


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions move to another member, finish (boundedly) and commit what they did."""

    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._loop._release(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self._loop._workers:
                self._loop._start_worker(tp)
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}/{tp.partition}" for tp in assigned]})
