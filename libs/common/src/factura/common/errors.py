"""The one error taxonomy every handler and the consumer loop share.

Three kinds, each with its own treatment in :class:`factura.common.kafka.consumer.ConsumerLoop`:

* **invalid** (:class:`InvalidMessage`): the message is wrong in itself. Retrying cannot help:
  reject it with field reasons and dead-letter it at once.
* **transient** (:class:`DependencyDown`, or an exception :func:`classify` recognises as a
  network or server outage): a dependency is down, slow or overloaded. The message is fine. The
  loop pauses the partition and retries with capped backoff for as long as it takes; nothing is
  dead-lettered, and readiness names the dependency.
* **bug** (anything else): an unexpected exception. Retried a few times (it may be a race), then
  dead-lettered with its traceback so one bad message does not stop the partition for ever.

Handlers raise :class:`DependencyDown` when they know which dependency failed; :func:`classify`
covers the client libraries' own connection errors so a forgotten wrapper still pauses rather
than dead-letters.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Final

import aiokafka.errors
import pymongo.errors
from pydantic import ValidationError

from factura.common.events import FieldError


class ErrorKind(StrEnum):
    INVALID = "invalid"
    TRANSIENT = "transient"
    BUG = "bug"


class InvalidMessage(Exception):
    """The message itself is wrong: reject or dead-letter it, never retry it."""

    def __init__(self, reasons: list[FieldError]) -> None:
        super().__init__("; ".join(f"{r.field}: {r.message}" for r in reasons))
        self.reasons = reasons


class DependencyDown(Exception):
    """A dependency (``smtp``, ``mongo``, ``s3``, ``kafka``, ``sms``, ``render-pool``) cannot serve now.

    ``retry_after_s`` is the dependency's own hint (e.g. an HTTP ``Retry-After``), when it gave one.
    """

    def __init__(self, dependency: str, detail: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{dependency}: {detail}")
        self.dependency = dependency
        self.detail = detail
        self.retry_after_s = retry_after_s


def field_errors(error: ValidationError, prefix: str = "") -> list[FieldError]:
    """pydantic errors as ``FieldError(field="customer.email", message=...)``, one per problem."""
    out = []
    for e in error.errors(include_url=False):
        path = ".".join(str(p) for p in e["loc"]) or "$"
        out.append(FieldError(field=f"{prefix}{path}", message=e["msg"]))
    return out


#: Client-library exceptions that mean "the other side is unreachable or overloaded", for the
#: clients handlers use directly. Adapters that own a dependency translate its errors themselves:
#: the document store (S3), the senders' SMTP and SMS clients, the render pool.
_TRANSIENT: Final[dict[type[BaseException], str]] = {
    pymongo.errors.AutoReconnect: "mongo",  # includes NetworkTimeout
    pymongo.errors.ServerSelectionTimeoutError: "mongo",
    pymongo.errors.ConnectionFailure: "mongo",
    pymongo.errors.ExecutionTimeout: "mongo",
    aiokafka.errors.KafkaConnectionError: "kafka",
    aiokafka.errors.KafkaTimeoutError: "kafka",
    aiokafka.errors.NodeNotReadyError: "kafka",
    aiokafka.errors.RequestTimedOutError: "kafka",
    aiokafka.errors.NotLeaderForPartitionError: "kafka",
    aiokafka.errors.LeaderNotAvailableError: "kafka",
}


def classify(error: BaseException) -> tuple[ErrorKind, str | None]:
    """Kind of ``error`` and, for a transient one, the dependency it names (``None`` if unknown)."""
    if isinstance(error, InvalidMessage):
        return ErrorKind.INVALID, None
    if isinstance(error, DependencyDown):
        return ErrorKind.TRANSIENT, error.dependency
    for kind, dependency in _TRANSIENT.items():
        if isinstance(error, kind):
            return ErrorKind.TRANSIENT, dependency
    if isinstance(error, (ConnectionError, TimeoutError, asyncio.TimeoutError, socket.gaierror)):
        return ErrorKind.TRANSIENT, None
    return ErrorKind.BUG, None


#: The longest a provider's ``Retry-After`` may hold a partition back.
MAX_RETRY_AFTER_S = 300.0


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header (delay-seconds or an HTTP date) in seconds, within 0..300; ``None``
    when absent or unreadable. For ``DependencyDown(retry_after_s=...)`` after a 429 or 503."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() - (
            now or datetime.now(UTC)
        ).timestamp()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
