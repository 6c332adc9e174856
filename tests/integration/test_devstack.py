"""The local stack as an operator drives it: crash, ``up`` again, ``down``; and the outage helpers.

Each test runs its own small stack on free ports (only the servers it needs), so stopping, pausing
or crashing a server never disturbs the session's ``infra``.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest

from factura.devstack import health, procs
from factura.devstack.config import HOST, INFRA, StackConfig
from factura.devstack.smtp_capture import read_messages
from factura.devstack.stack import Stack, StackError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not procs.has_procfs(), reason="finds processes through /proc"),
]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(StackConfig.free_ports(tmp_path / "stack", topic_prefix="dv."))
    try:
        yield s
    finally:
        s.stop()
        assert procs.members(s.cfg.data_dir) == []


def pids(stack: Stack) -> dict[str, int | None]:
    return {s.name: s.pid for s in stack.status() if s.alive}


def crash(stack: Stack, name: str) -> int:
    """SIGKILL the leader of ``name`` alone (``kill -9 <pid>``); returns once it is gone."""
    pid = procs.read_pid(stack.cfg.run_dir, name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert procs.wait_until(lambda: name not in stack.running(), 10)
    return pid


def refused(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def cli(cfg: StackConfig, *args: str) -> subprocess.CompletedProcess[str]:
    ports = [a for n in INFRA for a in (f"--{n}-port", str(cfg.port(n)))]
    argv = [sys.executable, "-m", "factura.devstack", *args, "--data-dir", str(cfg.data_dir), *ports]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_make_up_after_a_crash_restarts_only_what_is_down(tmp_path: Path) -> None:
    """`up` twice through the CLI, as `make up` does: the second one restarts the crashed server only."""
    cfg = StackConfig.free_ports(tmp_path / "stack", topic_prefix="dv.")
    stack = Stack(cfg)
    try:
        first = cli(cfg, "up", "--services")
        assert first.returncode == 0, first.stderr
        before = pids(stack)
        assert set(before) == set(INFRA)
        crash(stack, "smtp")

        again = cli(cfg, "up", "--services")
        assert again.returncode == 0, again.stderr
        after = pids(stack)
        assert set(after) == set(INFRA)
        assert after["smtp"] != before["smtp"]
        assert {n: p for n, p in after.items() if n != "smtp"} == {n: p for n, p in before.items() if n != "smtp"}
        health.smtp(HOST, cfg.smtp_port)
        assert "(was running)" in again.stdout

        down = cli(cfg, "down")
        assert down.returncode == 0, down.stderr
        assert procs.members(cfg.data_dir) == []
    finally:
        stack.stop()


def test_a_crashed_renderer_leaves_no_pool_worker_behind(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool worker stuck in a render (here: SIGSTOPped) outlives its SIGKILLed leader until `up`/`down`."""
    monkeypatch.setenv("FACTURA_RENDERER_WORKERS", "1")  # one is enough, and warms up faster
    names = ["kafka", "mongo", "s3", "renderer"]  # the renderer keeps short links and link hits in MongoDB
    assert stack.up(names) == names
    leader = procs.read_pid(stack.cfg.run_dir, "renderer")
    assert leader is not None
    workers = [m.pid for m in procs.group(leader, stack.cfg.data_dir) if m.pid != leader]
    assert workers, "the renderer warms its pool up before it is healthy"
    stuck = workers[-1]
    os.kill(stuck, signal.SIGSTOP)
    before = pids(stack)

    crash(stack, "renderer")
    assert stuck in [m.pid for m in procs.group(leader, stack.cfg.data_dir)]  # the orphan `down` used to miss
    assert [s.strays for s in stack.status() if s.name == "renderer"] != [()]

    assert stack.up(names) == ["renderer"]  # the broker (and its topics), MongoDB and S3 are left alone
    after = pids(stack)
    assert after["kafka"] == before["kafka"] and after["s3"] == before["s3"] and after["mongo"] == before["mongo"]
    assert after["renderer"] != leader
    assert procs.group(leader, stack.cfg.data_dir) == []
    health.http_200(stack.cfg.service_url("renderer") + "/readyz")

    stack.stop()
    assert procs.members(stack.cfg.data_dir) == []


def test_a_failed_up_stops_only_what_it_started(stack: Stack) -> None:
    assert stack.up(["smtp"]) == ["smtp"]
    smtp = procs.read_pid(stack.cfg.run_dir, "smtp")
    stack.timeout_s = 0.01  # nothing becomes healthy that fast
    with pytest.raises(StackError, match="s3"):
        stack.up(["smtp", "s3"])
    assert stack.running() == ["smtp"]
    assert procs.read_pid(stack.cfg.run_dir, "smtp") == smtp


def mongo(cfg: StackConfig) -> pymongo.MongoClient[dict[str, Any]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(cfg.mongo_url, serverSelectionTimeoutMS=3000)
    return client


def test_mongo_stopped_and_started_keeps_its_data(stack: Stack) -> None:
    stack.up(["mongo"])
    doc = {"_id": uuid.uuid4().hex, "n": 1}
    with mongo(stack.cfg) as client:
        client["dv"]["things"].insert_one(doc)

    stack.stop_server("mongo")
    assert refused(stack.cfg.mongo_port)
    assert "mongo" not in stack.running()

    stack.start_server("mongo")  # same port, same --data-dir; returns once it answers
    with mongo(stack.cfg) as client:
        assert client["dv"]["things"].find_one({"_id": doc["_id"]}) == doc


def test_mongo_crashed_and_started_keeps_its_data(stack: Stack) -> None:
    stack.up(["mongo"])
    with mongo(stack.cfg) as client:
        client["dv"]["things"].insert_one({"_id": "kept"})
    stack.stop_server("mongo", signal.SIGKILL)
    stack.start_server("mongo")
    with mongo(stack.cfg) as client:
        assert client["dv"]["things"].find_one({"_id": "kept"}) == {"_id": "kept"}


def send_mail(port: int, to: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "billing@factura.test", to, "devstack"
    msg.set_content("hello")
    with smtplib.SMTP(HOST, port, timeout=5) as smtp:
        smtp.send_message(msg)


def test_smtp_stopped_and_started_keeps_its_maildir(stack: Stack) -> None:
    stack.up(["smtp"])
    send_mail(stack.cfg.smtp_port, "before@cliente.test")

    stack.stop_server("smtp")
    assert refused(stack.cfg.smtp_port)
    with pytest.raises(OSError):
        send_mail(stack.cfg.smtp_port, "during@cliente.test")

    stack.start_server("smtp")
    send_mail(stack.cfg.smtp_port, "after@cliente.test")
    assert [m["To"] for m in read_messages(stack.cfg.maildir)] == ["before@cliente.test", "after@cliente.test"]


def test_sms_stopped_and_started_keeps_its_journal(stack: Stack) -> None:
    cfg = stack.cfg
    stack.up(["sms"])
    url = f"{cfg.sms_url}/2010-04-01/Accounts/{cfg.sms_account_sid}/Messages.json"
    form = {"To": "+34600000001", "From": "Factura", "Body": "before"}
    auth = (cfg.sms_account_sid, cfg.sms_auth_token)
    assert httpx.post(url, data=form, auth=auth, timeout=5).status_code == 201

    stack.stop_server("sms")
    assert refused(cfg.sms_port)
    stack.start_server("sms")
    assert httpx.post(url, data=form | {"Body": "after"}, auth=auth, timeout=5).status_code == 201
    journal = (cfg.sms_dir / "sms.jsonl").read_text().splitlines()
    assert [json.loads(line)["body"] for line in journal] == ["before", "after"]


def test_stop_server_is_for_infra_servers(stack: Stack) -> None:
    with pytest.raises(StackError, match="not an infra server"):
        stack.stop_server("renderer")


def test_a_paused_broker_keeps_its_topics(stack: Stack) -> None:
    stack.up(["kafka"])
    topics = set(_topics(stack))
    assert topics, "up creates the topics"

    stack.pause_server("kafka")
    assert [s.paused for s in stack.status() if s.name == "kafka"] == [True]
    with pytest.raises(TimeoutError):  # the kernel accepts the connection, the broker never answers
        health.kafka(stack.cfg.kafka_bootstrap)

    stack.resume_server("kafka")  # returns once it answers again
    assert set(_topics(stack)) == topics
    assert stack.running() == ["kafka"]


def _topics(stack: Stack) -> list[str]:
    return [t for t in health.topics(stack.cfg.kafka_bootstrap) if t.startswith("dv.")]


def test_a_replica_shares_the_group_and_takes_over_when_the_other_dies(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second scheduler process joins the service's consumer group (both hold partitions, none
    twice); SIGKILLed, its partitions go to the service's own process; `stop` ends a replica too."""
    monkeypatch.setenv("FACTURA_SCHEDULER_KAFKA__LAG_INTERVAL_S", "1")  # the held partitions show up sooner
    stack.up(["kafka", "mongo", "scheduler"])
    stack.start_replica("scheduler")  # returns once it answers /readyz
    urls = {stack.replica_url("scheduler", i) for i in (0, 1)}
    assert len(urls) == 2
    for url in urls:
        health.http_200(url + "/readyz")
    replica = procs.read_pid(stack.cfg.run_dir, "scheduler.1")
    assert replica is not None and replica != procs.read_pid(stack.cfg.run_dir, "scheduler")
    assert (stack.cfg.logs_dir / "scheduler.1.log").exists()

    states: list[frozenset[tuple[str, str]]] = []

    def shared() -> bool:
        states[:] = [stack.consumer_state("scheduler", i).held for i in (0, 1)]
        return all(states) and not states[0] & states[1]

    assert procs.wait_until(shared, 60, interval=0.5), states
    everything = states[0] | states[1]

    stack.stop_replica("scheduler", 1, signal.SIGKILL)  # a crash: no leave-group, the session expires
    assert "scheduler" in stack.running() and procs.group(replica, stack.cfg.data_dir) == []
    assert procs.wait_until(lambda: stack.consumer_state("scheduler", 0).held >= everything, 60, interval=0.5)

    stack.start_replica("scheduler")  # again, and left to `stop` (the fixture checks nothing is left)
    with pytest.raises(StackError, match="already running"):
        stack.start_replica("scheduler")
    stack.stop()
    assert list(stack.cfg.run_dir.glob("scheduler*")) == []


def test_only_services_have_replicas(stack: Stack) -> None:
    with pytest.raises(StackError, match="only services"):
        stack.start_replica("kafka")
    with pytest.raises(StackError, match="replica index"):
        stack.replica_url("renderer", -1)
