"""One logging setup: JSON lines on stderr, each carrying the service and ``correlation_id``.

The correlation id lives in a :class:`contextvars.ContextVar` that the consumer loop sets per
message, so every log line written while handling an event names the flow it belongs to.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)
tenant_id_var: ContextVar[str | None] = ContextVar("tenant_id", default=None)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.correlation_id = correlation_id_var.get()
        record.tenant_id = tenant_id_var.get()
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route all logging (ours, aiokafka's, uvicorn's) through one JSON handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service))
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(correlation_id)s %(tenant_id)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "botocore", "aiobotocore", "fontTools", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


@contextmanager
def log_context(correlation_id: str | None, tenant_id: str | None) -> Iterator[None]:
    """Bind the flow's identifiers to every log line written inside the block."""
    c_token = correlation_id_var.set(correlation_id)
    t_token = tenant_id_var.set(tenant_id)
    try:
        yield
    finally:
        correlation_id_var.reset(c_token)
        tenant_id_var.reset(t_token)
