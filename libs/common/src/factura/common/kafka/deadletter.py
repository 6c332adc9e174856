"""Dead-lettering: where messages that are wrong in themselves go, and when to stop sending them there.

A dead-lettered message keeps its key, value and headers, plus ``dlq.*`` headers naming why
(``invalid`` or ``bug``), the error, the source ``topic/partition/offset``, the service and the
attempts. ``python -m factura.common.dlq`` lists and replays them; audit records every arrival.

:class:`DlqLimit` follows arroyo's ``DlqLimit``: a run of dead-letters with nothing handled in
between means something other than the messages is wrong (a bad deploy, a schema mismatch), so
the consumer stops and the orchestrator's restart loop makes it visible, instead of quietly
parking every message. Invalid messages on inbound ERP topics do not count: there a bad
message is the ERP's mistake, already answered with ``invoice.rejected``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiokafka import ConsumerRecord
from aiokafka.errors import MessageSizeTooLargeError

from factura.common.errors import ErrorKind
from factura.common.kafka.producer import Headers, Publisher
from factura.common.metrics import MESSAGES_DLQ
from factura.common.topics import Topic

log = logging.getLogger(__name__)
#: What is kept of a message too large for the DLQ (below the producer's 1 MiB request limit).
TRUNCATED_BYTES = 512 * 1024
#: Sleeps between attempts; returns True when the consumer is stopping (give up, stay uncommitted).
Sleeper = Callable[[int], Awaitable[bool]]


class DlqLimitExceeded(RuntimeError):
    """Too many consecutive dead-letters: stop consuming and let the operator look."""


class DlqLimit:
    def __init__(self, max_consecutive: int | None) -> None:
        self._max = max_consecutive
        self._run = 0

    def handled(self) -> None:
        self._run = 0

    def dead_lettered(self, topic: Topic, kind: ErrorKind) -> None:
        if self._max is None or (kind is ErrorKind.INVALID and not topic.enveloped):
            return
        self._run += 1
        if self._run >= self._max:
            raise DlqLimitExceeded(
                f"{self._run} consecutive messages dead-lettered (limit {self._max}); last from {topic.name}"
            )


def dlq_headers(
    record: ConsumerRecord[bytes, bytes], kind: ErrorKind, error: str, *, service: str, attempts: int
) -> Headers:
    headers: Headers = [(k, v) for k, v in record.headers if not k.startswith("dlq.")]
    return [
        *headers,
        ("dlq.reason", kind.value.encode()),
        ("dlq.error", error[:4000].encode(errors="replace")),
        ("dlq.source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ("dlq.service", service.encode()),
        ("dlq.attempts", str(attempts).encode()),
    ]


class DeadLetters:
    def __init__(self, publisher: Publisher, *, prefix: str, service: str, limit: DlqLimit) -> None:
        self._publisher = publisher
        self._prefix = prefix
        self._service = service
        self._limit = limit

    async def send(
        self,
        topic: Topic,
        record: ConsumerRecord[bytes, bytes],
        kind: ErrorKind,
        error: str,
        *,
        attempts: int,
        sleep: Sleeper,
    ) -> bool:
        """Publish to ``<topic>.dlq`` until the broker takes it. False if stopped before that.

        A message of a DLQ topic itself is not dead-lettered again (nobody reads ``x.dlq.dlq``): it
        stays where it is, on the DLQ topic, and the failure is logged and counted.
        """
        if topic.dead_letters_of is not None:
            MESSAGES_DLQ.labels(topic=topic.name, reason=f"{kind.value}_not_requeued").inc()
            log.error("could not handle a dead letter; it stays on its DLQ topic", extra={"error": error[:500]})
            self._limit.dead_lettered(topic, kind)
            return True
        dlq = topic.dlq(self._prefix)
        headers = dlq_headers(record, kind, error, service=self._service, attempts=attempts)
        value = record.value or b""
        attempt = 0
        while True:  # the DLQ is the last resort: keep trying until it takes the message or we stop
            attempt += 1
            try:
                await self._publisher.send(dlq, value, key=record.key, headers=headers)
                break
            except MessageSizeTooLargeError:
                # Retrying cannot help: keep the head of the message, say how long it was.
                log.error("message too large for the DLQ; truncated", extra={"dlq": dlq, "size": len(value)})
                headers = [*headers, ("dlq.truncated_from_bytes", str(len(value)).encode())]
                value = value[:TRUNCATED_BYTES] if len(value) > TRUNCATED_BYTES else b""
            except Exception:  # a broker error here only delays: logged and retried
                log.warning("DLQ publish failed; retrying", exc_info=True, extra={"dlq": dlq})
                if await sleep(attempt):
                    return False
        MESSAGES_DLQ.labels(topic=topic.name, reason=kind.value).inc()
        log.warning("dead-lettered", extra={"dlq": dlq, "reason": kind.value, "error": error[:500]})
        self._limit.dead_lettered(topic, kind)
        return True
