"""Child processes that outlive the launcher: spawn with a log and a pid file, find, pause, stop.

``make up`` returns while the stack keeps running, so a later ``down`` only has pid files and
``/proc`` to go on. Each child is the leader of its own session and process group (the pid in its
pid file is also its process group id), so everything it starts (a render pool, its forkserver,
resource tracker) is in that group. Every process carries two environment variables, inherited by
whatever it starts: :data:`MARKER` naming the stack's data dir and :data:`NAME` naming the process
of the stack it belongs to. Nothing is ever signalled unless a live process carrying our marker is
in the target group, so a stale pid file never makes us signal somebody else's process, and
``down`` can find leftovers even when a leader was SIGKILLed and its pid file is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MARKER = "FACTURA_DEVSTACK_HOME"
NAME = "FACTURA_DEVSTACK_PROCESS"
STOP_TIMEOUT_S = 10.0
#: How long what is left of a group gets between SIGTERM and SIGKILL once its leader is gone.
ORPHAN_GRACE_S = 2.0
_PROC = Path("/proc")


@dataclass(frozen=True)
class Member:
    """A live process started for a stack (or by one of its processes)."""

    pid: int
    pgid: int
    name: str  # the stack process it belongs to ("" if the marker came without a name)
    state: str  # /proc state letter: R, S, D, T (stopped), ...


def spawn(
    name: str, argv: Sequence[str], env: Mapping[str, str], *, data_dir: Path, logs_dir: Path, run_dir: Path
) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached, output appended to ``<logs_dir>/<name>.log``, pid in ``<run_dir>``."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    with (logs_dir / f"{name}.log").open("ab") as log:
        log.write(f"=== {datetime.now(UTC).isoformat()} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, MARKER: str(data_dir), NAME: name, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # pid == pgid == sid: the pid file names the whole group
        )
    (run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


def read_pid(run_dir: Path, name: str) -> int | None:
    """The pid (and process group id) recorded when ``name`` was spawned."""
    try:
        return int((run_dir / f"{name}.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def has_procfs() -> bool:
    return (_PROC / "self").is_dir()


def _member(pid: int, marker: bytes) -> Member | None:
    """``pid`` as a :class:`Member` if it is alive (not a zombie) and carries ``marker``."""
    proc = _PROC / str(pid)
    try:
        stat = (proc / "stat").read_text().rpartition(")")[2].split()
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or somebody else's process
        return None
    state, pgid = stat[0], int(stat[2])
    if state in ("Z", "X") or marker not in environ:
        return None
    prefix = f"{NAME}=".encode()
    name = next((e[len(prefix) :].decode(errors="replace") for e in environ if e.startswith(prefix)), "")
    return Member(pid, pgid, name, state)


def _marker(data_dir: Path) -> bytes:
    return f"{MARKER}={data_dir}".encode()


def members(data_dir: Path) -> list[Member]:
    """Every live process that carries the marker of ``data_dir`` (never this process)."""
    if not has_procfs():
        return []
    marker, me = _marker(data_dir), os.getpid()
    found = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) != me and (m := _member(int(entry.name), marker)):
            found.append(m)
    return found


def group(pgid: int, data_dir: Path) -> list[Member]:
    """The live processes of process group ``pgid`` that are ours (leader or not)."""
    return [m for m in members(data_dir) if m.pgid == pgid]


def is_ours(pid: int, data_dir: Path) -> bool:
    """Alive (not a zombie) and started for this data dir."""
    if not has_procfs():  # macOS: trust the pid file if the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return _member(pid, _marker(data_dir)) is not None


def group_alive(pgid: int, data_dir: Path) -> bool:
    """Some process of group ``pgid`` that is ours is still alive (the leader need not be)."""
    if not has_procfs():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return bool(group(pgid, data_dir))


def _signal(pid: int, sig: signal.Signals, *, whole_group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if whole_group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def wait_until(done: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``done`` until it is true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def stop_group(
    pgid: int,
    data_dir: Path,
    sig: signal.Signals = signal.SIGTERM,
    *,
    timeout: float = STOP_TIMEOUT_S,
    reap: Callable[[], object] = lambda: None,
) -> bool:
    """Stop a spawned process and everything in its process group; True once none of it is left.

    ``sig`` goes to the leader alone, so it can drain and shut down its own children (a render pool
    first finishes or cancels its work); whatever of the group outlives the leader gets SIGTERM and,
    :data:`ORPHAN_GRACE_S` later, SIGKILL, as does a leader that ignores ``sig`` for ``timeout``.
    ``SIGKILL`` (a simulated crash) hits the whole group at once. A leader that is already dead
    (SIGKILLed from outside) is no obstacle: its group is found by ``pgid`` and killed.
    ``reap`` lets the caller collect the leader if it is its child, so it does not linger as a zombie.
    """

    def leader_gone() -> bool:
        reap()
        return not is_ours(pgid, data_dir)

    def group_gone() -> bool:
        reap()
        return not group_alive(pgid, data_dir)

    if group_gone():
        return True
    leader_alive = not leader_gone()
    _signal(pgid, sig, whole_group=sig == signal.SIGKILL or not leader_alive)
    _signal(pgid, signal.SIGCONT, whole_group=True)  # a paused (SIGSTOPped) process must see it too
    if not wait_until(leader_gone, timeout):
        _signal(pgid, signal.SIGKILL, whole_group=True)
    if not group_gone():  # children the leader left behind: SIGTERM, a grace period, SIGKILL
        _signal(pgid, signal.SIGTERM, whole_group=True)
        _signal(pgid, signal.SIGCONT, whole_group=True)
        if not wait_until(group_gone, ORPHAN_GRACE_S):
            _signal(pgid, signal.SIGKILL, whole_group=True)
    return wait_until(group_gone, timeout)


def kill_all(victims: Iterable[Member], data_dir: Path, timeout: float = STOP_TIMEOUT_S) -> list[Member]:
    """SIGTERM, then after :data:`ORPHAN_GRACE_S` SIGKILL, each of ``victims`` still ours; the survivors."""
    pids = {m.pid for m in victims}

    def alive() -> list[Member]:
        return [m for m in members(data_dir) if m.pid in pids]

    for m in alive():
        _signal(m.pid, signal.SIGTERM, whole_group=False)
        _signal(m.pid, signal.SIGCONT, whole_group=False)
    if not wait_until(lambda: not alive(), ORPHAN_GRACE_S):
        for m in alive():
            _signal(m.pid, signal.SIGKILL, whole_group=False)
        wait_until(lambda: not alive(), timeout)
    return alive()


def pause_group(pgid: int, data_dir: Path, timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGSTOP the whole group; True once every member of it is stopped."""
    if not group_alive(pgid, data_dir):
        return False
    _signal(pgid, signal.SIGSTOP, whole_group=True)
    if not has_procfs():
        return True
    return wait_until(lambda: all(m.state == "T" for m in group(pgid, data_dir)), timeout)


def resume_group(pgid: int, data_dir: Path) -> None:
    """SIGCONT the whole group (harmless if it was not paused)."""
    if group_alive(pgid, data_dir):
        _signal(pgid, signal.SIGCONT, whole_group=True)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
