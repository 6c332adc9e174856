"""Every service's HTTP face: ``/livez``, ``/readyz`` and ``/metrics``, plus any routers it adds.

Liveness and readiness are separate on purpose. ``/livez`` says only "this process still turns"
(the consumer's poll loop ran recently): an orchestrator restarts a pod that fails it, which
would not help during a dependency outage. ``/readyz`` says "this process can do its work now":
every dependency check answers within ``deadline_s``, and no dependency is failing the consumer's
handlers. Both answer with dependency names and states (``ok``, ``down``, ``timeout``), never an
exception's text, which is logged instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from factura.common.errors import ErrorKind, classify
from factura.common.metrics import DEPENDENCY_UP, HTTP_REQUESTS, HTTP_SECONDS, exposition

HealthCheck = Callable[[], Awaitable[None]]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    """What a service's probes look at."""

    checks: Mapping[str, HealthCheck] = field(default_factory=dict)
    #: Liveness: False when the process is wedged and a restart would help.
    alive: Callable[[], bool] = lambda: True
    #: Dependencies failing the consumer's handlers right now (name → seconds since).
    outages: Callable[[], Mapping[str, float]] = dict
    deadline_s: float = 2.0


class Liveness(BaseModel):
    service: str
    status: str = Field(description="`alive`, or `stalled` (with status 503)")


class Readiness(BaseModel):
    service: str
    status: str = Field(description="`ready`, or `not_ready` (with status 503)")
    checks: dict[str, str] = Field(description="Dependency name → `ok`, `down` or `timeout`")


async def _state(name: str, check: HealthCheck, deadline_s: float) -> str:
    try:
        await asyncio.wait_for(check(), deadline_s)
    except TimeoutError:
        log.warning("readiness check timed out", extra={"check": name, "deadline_s": deadline_s})
        return "timeout"
    except Exception:  # a health check reports, never raises
        log.warning("readiness check failed", exc_info=True, extra={"check": name})
        return "down"
    return "ok"


async def readiness(health: Health) -> dict[str, str]:
    """Every check run concurrently under the deadline, merged with the consumer's outages."""
    names = list(health.checks)
    states = await asyncio.gather(*(_state(n, health.checks[n], health.deadline_s) for n in names))
    results = dict(zip(names, states, strict=True))
    for dependency in health.outages():
        results[dependency] = "down"
    for name, state in results.items():
        DEPENDENCY_UP.labels(dependency=name).set(1 if state == "ok" else 0)
    return results


#: The ``route`` label of a request no route matched (a scan, a typo): never the raw path, whose
#: values are unbounded.
UNMATCHED = "unmatched"
#: Methods counted under their own name; anything else a client invents is ``other``.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RedMetrics:
    """Pure ASGI middleware counting every request (rate, errors, duration) by route template.

    The router stores the matched route in the request's scope, which is the dict this middleware
    passed down, so the template (``/v1/invoices/{invoice_id}``) is read once the app answered.
    A request that raised counts as 500, which is what the server then answers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            route = getattr(scope.get("route"), "path_format", None) or UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "other"
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            HTTP_SECONDS.labels(route, method).observe(time.perf_counter() - started)


def create_app(service: str, health: Health, routers: Sequence[APIRouter] = ()) -> FastAPI:
    app = FastAPI(title=f"Factura {service}", version="1")
    app.add_middleware(RedMetrics)

    # The models and ``responses`` only document the answers (OpenAPI clients and schemathesis read
    # them); the handlers build their JSONResponse themselves, so behaviour is unchanged.
    @app.get(
        "/livez",
        tags=["ops"],
        response_model=Liveness,
        responses={503: {"model": Liveness, "description": "The process is stalled: restart it"}},
    )
    async def livez() -> JSONResponse:
        alive = health.alive()
        return JSONResponse({"service": service, "status": "alive" if alive else "stalled"}, 200 if alive else 503)

    @app.get(
        "/readyz",
        tags=["ops"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "A dependency is down or slow: take no traffic"}},
    )
    async def readyz() -> JSONResponse:
        results = await readiness(health)
        ok = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"service": service, "status": "ready" if ok else "not_ready", "checks": results}, 200 if ok else 503
        )

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus text exposition format"}},
    )
    async def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    for router in routers:
        app.include_router(router)
    return app


class Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service runtime owns SIGTERM and drains first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def server(app: FastAPI, host: str, port: int) -> Server:
    return Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off"))


#: How long an API's caller is asked to wait while a dependency cannot serve.
RETRY_AFTER_S = 5
T = TypeVar("T")


async def available(work: Awaitable[T]) -> T:
    """``work``'s result; 503 with Retry-After when a dependency (Kafka, MongoDB, S3) cannot serve now."""
    try:
        return await work
    except Exception as e:
        if classify(e)[0] is ErrorKind.TRANSIENT:
            raise unavailable() from e
        raise


def unavailable(detail: str = "a dependency is unavailable; retry later") -> HTTPException:
    """The 503 an API answers while a dependency cannot serve: retry, nothing was kept."""
    return HTTPException(503, detail=detail, headers={"Retry-After": str(RETRY_AFTER_S)})
