"""Prometheus metrics shared by every service.

The consumer loop's and the HTTP layer's metrics are defined once here so that every service
exports the same names and an SRE writes each dashboard panel once. Services add their own
domain counters with :func:`counter`, which prefixes names consistently.

A ``tenant`` label multiplies every series it is on by the number of tenants, so its value goes
through :func:`tenant_label`: only tenants on the allow-list configured at startup
(:func:`configure`, from ``MetricsSettings``) get their own series, every other tenant is
counted under ``other``. The catalogue and each label's bounded values are in
``docs/operations.md`` (Health, metrics, logs).
"""

from __future__ import annotations

from collections.abc import Iterable

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
HTTP_REQUESTS = Counter(
    f"{PREFIX}http_requests_total",
    "HTTP requests answered, by route template (or `unmatched`), method and status code.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    f"{PREFIX}http_request_duration_seconds",
    "Time to answer one HTTP request (until the response has been handed to the server).",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
#: The ``tenant`` label value of every tenant not on the allow-list.
OTHER_TENANT = "other"
#: The allow-list; empty (every tenant is ``other``) until :func:`configure` runs.
_tenant_labels: set[str] = set()


def configure(tenant_labels: Iterable[str]) -> None:
    """Set the tenants that get their own ``tenant`` label value (once, at startup)."""
    _tenant_labels.clear()
    _tenant_labels.update(tenant_labels)


def tenant_label(tenant_id: str) -> str:
    """The ``tenant`` label value for ``tenant_id``: itself if allow-listed, else ``other``."""
    return tenant_id if tenant_id in _tenant_labels else OTHER_TENANT


def counter(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
    """A service-specific counter with the project's prefix."""
    return Counter(f"{PREFIX}{name}", documentation, list(labels))


def exposition() -> tuple[bytes, str]:
    """Body and content type for a ``/metrics`` response."""
    return generate_latest(), CONTENT_TYPE_LATEST
