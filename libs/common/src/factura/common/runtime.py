"""The one way a service process starts, runs and stops.

``main(name, Settings, bootstrap)`` loads settings, sets up logging and the metrics' tenant
allow-list (:func:`factura.common.metrics.configure`), builds clients through the
service's ``bootstrap`` (the only place that knows concrete adapters), then runs the consumer
loop, the HTTP server and any background tasks until SIGTERM/SIGINT, and drains in that order:
stop consuming (commit what was handled), stop background tasks, stop HTTP, close clients.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import APIRouter

from factura.common import metrics
from factura.common.http import Health, HealthCheck, create_app, server
from factura.common.kafka.consumer import ConsumerLoop, Route
from factura.common.kafka.producer import Publisher
from factura.common.logging import configure_logging
from factura.common.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)
#: A background task gets an event that is set when the service must stop.
BackgroundTask = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass
class Wiring:
    """What a service's bootstrap hands the runtime."""

    routes: Mapping[str, Route]
    checks: dict[str, HealthCheck] = field(default_factory=dict)
    routers: Sequence[APIRouter] = ()
    tasks: Sequence[BackgroundTask] = ()


Bootstrap = Callable[[S, Publisher, AsyncExitStack], Awaitable[Wiring]]


async def serve(name: str, settings: S, bootstrap: Bootstrap[S]) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    metrics.configure(settings.metrics.tenant_labels)
    async with AsyncExitStack() as stack:
        publisher = Publisher(settings.kafka, client_id=name)
        await publisher.start()
        stack.push_async_callback(publisher.stop)
        wiring = await bootstrap(settings, publisher, stack)

        consumer = ConsumerLoop(
            settings=settings.kafka, group_id=f"factura-{name}", routes=wiring.routes, publisher=publisher, service=name
        )

        health = (
            Health(
                checks={"kafka": consumer.broker_reachable, **wiring.checks},
                alive=consumer.alive,
                outages=consumer.outages.current,
                deadline_s=settings.http.health_deadline_s,
            )
            if wiring.routes
            else Health(checks=wiring.checks, deadline_s=settings.http.health_deadline_s)
        )
        http = server(create_app(name, health, wiring.routers), settings.http.host, settings.http.port)
        consuming = asyncio.create_task(consumer.run(), name="consumer") if wiring.routes else None
        background = [asyncio.create_task(task(stopping), name=f"task-{i}") for i, task in enumerate(wiring.tasks)]
        serving = asyncio.create_task(http.serve(), name="http")

        watched = [t for t in (consuming, serving) if t is not None]
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait([stop_wait, *watched, *background], return_when=asyncio.FIRST_COMPLETED)
        stopping.set()  # if a component died, stop the rest and let the orchestrator restart us

        consumer.stop()
        workers = [consuming, *background] if consuming is not None else background
        results = await asyncio.gather(*workers, return_exceptions=True)
        http.should_exit = True
        results.append(*await asyncio.gather(serving, return_exceptions=True))
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]


def main(name: str, settings_type: type[S], bootstrap: Bootstrap[S]) -> None:
    settings = settings_type()
    configure_logging(name, settings.log_level)
    asyncio.run(serve(name, settings, bootstrap))
