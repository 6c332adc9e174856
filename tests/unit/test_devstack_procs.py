"""The devstack's process handling with small stand-in processes (no servers): groups, strays, ``up``.

Each stand-in is spawned exactly as the stack spawns its servers (own session, marker, pid file),
so what holds for these holds for a renderer and its pool workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from factura.devstack import __main__ as cli
from factura.devstack import procs
from factura.devstack.config import StackConfig
from factura.devstack.stack import Stack

pytestmark = pytest.mark.skipif(not procs.has_procfs(), reason="finds processes through /proc")

#: A leader that starts a child (in its group, or in a session of its own), reports both pids, sleeps.
_PARENT = """
import json, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=sys.argv[2] == "1")
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"leader": __import__("os").getpid(), "child": child.pid}, f)
__import__("os").replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(StackConfig.free_ports(tmp_path / "stack"))
    try:
        yield s
    finally:
        s.stop()


def spawn_parent(stack: Stack, name: str, *, child_leaves_group: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """Spawn a stand-in for ``name`` the way the stack does; returns the leader and its child's pid."""
    cfg, report = stack.cfg, stack.cfg.data_dir / f"{name}.json"
    argv = [sys.executable, "-c", _PARENT, str(report), "1" if child_leaves_group else "0"]
    proc = procs.spawn(name, argv, dict(os.environ), data_dir=cfg.data_dir, logs_dir=cfg.logs_dir, run_dir=cfg.run_dir)
    assert procs.wait_until(report.exists, 10), procs.tail(cfg.logs_dir / f"{name}.log")
    pids = json.loads(report.read_text())
    assert pids["leader"] == proc.pid
    return proc, int(pids["child"])


def alive(pid: int, data_dir: Path) -> bool:
    return any(m.pid == pid for m in procs.members(data_dir))


def crash(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the leader alone, as the OOM killer or ``kill -9 <pid>`` would."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_the_child_of_a_spawned_process_is_in_its_group_and_carries_the_marker(stack: Stack) -> None:
    proc, child = spawn_parent(stack, "renderer")
    members = {m.pid: m for m in procs.group(proc.pid, stack.cfg.data_dir)}
    assert set(members) == {proc.pid, child}
    assert members[child].pgid == proc.pid
    assert members[child].name == "renderer"


def test_stopping_a_process_stops_its_child(stack: Stack) -> None:
    proc, child = spawn_parent(stack, "renderer")
    stack.stop_service("renderer")
    assert proc.poll() is not None
    assert not alive(child, stack.cfg.data_dir)
    assert not (stack.cfg.run_dir / "renderer.pid").exists()


def test_a_crash_kills_the_whole_group(stack: Stack) -> None:
    proc, child = spawn_parent(stack, "renderer")
    stack.stop_service("renderer", signal.SIGKILL)
    assert proc.poll() == -signal.SIGKILL
    assert not alive(child, stack.cfg.data_dir)


def test_stop_finds_the_children_of_a_leader_killed_from_outside(stack: Stack) -> None:
    proc, child = spawn_parent(stack, "renderer")
    crash(proc)
    assert alive(child, stack.cfg.data_dir)  # the orphan the old `down` never saw
    assert [s.strays for s in stack.status() if s.name == "renderer"] == [(child,)]  # status names it
    stack.stop_service("renderer")  # found by the pgid in the pid file
    assert not alive(child, stack.cfg.data_dir)


def test_down_leaves_no_marked_process_behind(stack: Stack) -> None:
    """Not even a child that left its group after its leader's pid file is gone."""
    proc, escaped = spawn_parent(stack, "renderer", child_leaves_group=True)
    _, orphan = spawn_parent(stack, "audit")
    crash(proc)
    (stack.cfg.run_dir / "renderer.pid").unlink()
    assert alive(escaped, stack.cfg.data_dir)
    assert cli.main(["down", "--data-dir", str(stack.cfg.data_dir)]) == 0
    assert procs.members(stack.cfg.data_dir) == []
    assert not alive(orphan, stack.cfg.data_dir)


def test_pause_and_resume_the_whole_group(stack: Stack) -> None:
    proc, child = spawn_parent(stack, "sms")
    assert procs.pause_group(proc.pid, stack.cfg.data_dir)
    assert {m.state for m in procs.group(proc.pid, stack.cfg.data_dir)} == {"T"}
    assert [s.paused for s in stack.status() if s.name == "sms"] == [True]
    procs.resume_group(proc.pid, stack.cfg.data_dir)
    assert procs.wait_until(lambda: "T" not in {m.state for m in procs.group(proc.pid, stack.cfg.data_dir)}, 10)
    assert alive(child, stack.cfg.data_dir)


def test_a_paused_process_still_stops(stack: Stack) -> None:
    proc, child = spawn_parent(stack, "kafka")
    assert procs.pause_group(proc.pid, stack.cfg.data_dir)
    stack.stop_service("kafka")
    assert proc.poll() is not None
    assert not alive(child, stack.cfg.data_dir)


def test_a_stale_pid_file_signals_nobody(stack: Stack) -> None:
    """A pid file naming a live process without our marker (here: this test's own process)."""
    stack.cfg.run_dir.mkdir(parents=True)
    (stack.cfg.run_dir / "smtp.pid").write_text(f"{os.getpid()}\n")
    assert stack.running() == []
    stack.stop_service("smtp")  # would kill pytest if it signalled blindly
    assert not (stack.cfg.run_dir / "smtp.pid").exists()


def test_up_refuses_other_settings_while_a_stack_runs(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    stack.cfg.save()
    spawn_parent(stack, "smtp")  # stands in for a running server of the saved stack
    args = ["up", "--data-dir", str(stack.cfg.data_dir), "--services", "--smtp-port", str(stack.cfg.smtp_port + 1)]
    assert cli.main(args) == 2
    assert "other settings" in capsys.readouterr().err
    assert stack.running() == ["smtp"]
