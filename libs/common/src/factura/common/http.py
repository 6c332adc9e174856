"""Every service's HTTP face: ``/healthz`` and ``/metrics``, plus any routers it adds."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Generator, Sequence

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse

from factura.common.metrics import exposition

HealthCheck = Callable[[], Awaitable[None]]


def create_app(service: str, checks: dict[str, HealthCheck], routers: Sequence[APIRouter] = ()) -> FastAPI:
    app = FastAPI(title=f"Factura {service}", version="1")

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await check()
                results[name] = "ok"
            except Exception as e:  # noqa: BLE001 - a health check reports, never raises
                results[name] = f"failing: {type(e).__name__}: {e}"
        ok = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"service": service, "status": "ok" if ok else "failing", "checks": results}, 200 if ok else 503
        )

    @app.get("/metrics", tags=["ops"])
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
