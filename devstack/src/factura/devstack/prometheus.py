"""Debian's Prometheus scraping the local stack, and a small client for its HTTP API.

Production scrapes the pods (``job`` = service name); here one ``prometheus`` process per stack does
the same against the services' ``/metrics`` on loopback, with a short interval so the demo and the
scrape test see data within seconds, and with the alert rules from ``deploy/prometheus/rules`` so a
broken rule fails here first. It is spawned and stopped like every other process of the stack
(:mod:`factura.devstack.procs`: pid file, marker, whole-group stop), keeps its TSDB in the stack's
data dir, and is optional: :func:`available` says whether the binary is installed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import httpx

from factura.devstack import health, procs
from factura.devstack.config import HOST, SERVICES, StackConfig

NAME = "prometheus"
#: Alert rules written next to the Kubernetes manifests; loaded when the folder exists.
RULES_DIR = Path(__file__).resolve().parents[4] / "deploy" / "prometheus" / "rules"
SCRAPE_INTERVAL = "2s"


def binary() -> str | None:
    """The ``prometheus`` executable (Debian's package puts it in /usr/bin), or None."""
    return shutil.which(NAME) or (str(p) if (p := Path("/usr/bin/prometheus")).exists() else None)


def available() -> bool:
    return binary() is not None


def url(cfg: StackConfig) -> str:
    return f"http://{HOST}:{cfg.prometheus_port}"


def storage_dir(cfg: StackConfig) -> Path:
    return cfg.data_dir / NAME


def scrape_config(cfg: StackConfig, services: Iterable[str] = SERVICES, rules_dir: Path = RULES_DIR) -> dict[str, Any]:
    """prometheus.yml as data: one job per service, named like the service (as in Kubernetes)."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": [f"{HOST}:{cfg.port(name)}"]}]} for name in services
        ],
    }
    if rules_dir.is_dir():
        config["rule_files"] = [str(rules_dir / "*.yml")]
    return config


def write_config(cfg: StackConfig, services: Iterable[str] = SERVICES, rules_dir: Path = RULES_DIR) -> Path:
    """Write ``<data dir>/prometheus/prometheus.yml`` (JSON, which is YAML) and return its path."""
    path = storage_dir(cfg) / "prometheus.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scrape_config(cfg, services, rules_dir), indent=2) + "\n")
    return path


def running(cfg: StackConfig) -> bool:
    pid = procs.read_pid(cfg.run_dir, NAME)
    return pid is not None and procs.is_ours(pid, cfg.data_dir)


def start(
    cfg: StackConfig, services: Iterable[str] = SERVICES, rules_dir: Path = RULES_DIR, timeout_s: float = 30.0
) -> str:
    """Start Prometheus for ``cfg`` (unless it runs already) and return its URL once it is ready.

    Raises RuntimeError, with its log tail, if it is not installed, exits or is not ready in time.
    """
    exe = binary()
    if exe is None:
        raise RuntimeError("prometheus is not installed (Debian package 'prometheus'; scripts/system-deps.sh)")
    if running(cfg):
        return url(cfg)
    config = write_config(cfg, services, rules_dir)
    argv = [
        exe,
        f"--config.file={config}",
        f"--storage.tsdb.path={storage_dir(cfg) / 'data'}",
        "--storage.tsdb.retention.time=2d",
        f"--web.listen-address={HOST}:{cfg.prometheus_port}",
    ]
    proc = procs.spawn(NAME, argv, dict(os.environ), data_dir=cfg.data_dir, logs_dir=cfg.logs_dir, run_dir=cfg.run_dir)
    log = cfg.logs_dir / f"{NAME}.log"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with code {proc.returncode}; {log}:\n{procs.tail(log)}")
        try:
            health.http_200(url(cfg) + "/-/ready")
        except Exception:  # noqa: BLE001 - not listening yet
            return False
        return True

    if not procs.wait_until(ready, timeout_s, interval=0.1):
        stop(cfg)
        raise RuntimeError(f"prometheus not ready after {timeout_s:.0f} s; {log}:\n{procs.tail(log)}")
    return url(cfg)


def stop(cfg: StackConfig) -> None:
    """Stop it (and its group) if it runs; the TSDB stays in the data dir."""
    pid = procs.read_pid(cfg.run_dir, NAME)
    if pid is not None and not procs.stop_group(pid, cfg.data_dir):
        raise RuntimeError(f"prometheus: process group {pid} still alive after SIGKILL")
    (cfg.run_dir / f"{NAME}.pid").unlink(missing_ok=True)


class PrometheusError(RuntimeError):
    """The API answered with ``status: error`` (e.g. a query that does not parse)."""


class Client:
    """The few read endpoints of the Prometheus HTTP API that the tests, demo and renderer need."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: Sequence[tuple[str, str | float]] = ()) -> Any:
        body = self._http.get(path, params=list(params)).json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def targets(self) -> list[dict[str, Any]]:
        """The active targets, each with ``labels.job``, ``health`` (up/down/unknown) and ``lastError``."""
        data: list[dict[str, Any]] = self._get("/api/v1/targets", [("state", "active")])["activeTargets"]
        return data

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (``metric`` labels and ``value`` [time, "number"])."""
        data = self._get("/api/v1/query", [("query", promql)])
        result: list[dict[str, Any]] = data["result"] if data["resultType"] in ("vector", "matrix") else []
        return result

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query (unix seconds); each series has ``metric`` and ``values`` [[time, "number"], ...]."""
        data = self._get("/api/v1/query_range", [("query", promql), ("start", start), ("end", end), ("step", step)])
        result: list[dict[str, Any]] = data["result"]
        return result

    def series(self, *match: str) -> list[dict[str, str]]:
        """The label sets of the series matching any of the selectors (e.g. ``'{job="audit"}'``)."""
        data: list[dict[str, str]] = self._get("/api/v1/series", [("match[]", m) for m in match])
        return data

    def metric_names(self) -> list[str]:
        """Every metric name Prometheus holds series for."""
        names: list[str] = self._get("/api/v1/label/__name__/values")
        return names

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._get("/api/v1/rules")["groups"]
        return groups
