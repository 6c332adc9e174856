"""Prometheus metrics shared by every service.

The consumer loop's metrics are defined once here so that every service exports the same
names and an SRE writes each dashboard panel once. Services add their own domain counters
with :func:`counter`, which prefixes names consistently.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

PREFIX = "factura_"

MESSAGES_CONSUMED = Counter(
    f"{PREFIX}messages_consumed_total", "Messages taken from Kafka by the consumer loop.", ["topic"]
)
MESSAGES_FAILED = Counter(
    f"{PREFIX}handler_failures_total", "Handler attempts that raised (each retry counts).", ["topic", "error"]
)
MESSAGES_DLQ = Counter(f"{PREFIX}messages_dead_lettered_total", "Messages sent to a DLQ.", ["topic", "reason"])
CONSUMER_LAG = Gauge(
    f"{PREFIX}consumer_lag_messages",
    "End offset minus committed offset, per assigned partition, measured periodically.",
    ["topic", "partition"],
)
PARTITIONS_PAUSED = Gauge(
    f"{PREFIX}partitions_paused", "Partitions paused: a dependency is down or the worker is behind."
)
HANDLER_SECONDS = Histogram(
    f"{PREFIX}handler_duration_seconds",
    "Time to handle one message, retries included.",
    ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEPENDENCY_UP = Gauge(
    f"{PREFIX}dependency_up", "1 when the dependency answered the last readiness probe, else 0.", ["dependency"]
)
EVENTS_PUBLISHED = Counter(f"{PREFIX}events_published_total", "Events published.", ["topic"])


def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
    """A service-specific counter with the project's prefix."""
    return Counter(f"{PREFIX}{name}", documentation, list(labels))


def exposition() -> tuple[bytes, str]:
    """Body and content type for a ``/metrics`` response."""
    return generate_latest(), CONTENT_TYPE_LATEST
