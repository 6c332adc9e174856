"""Child processes that outlive the launcher: spawn with a log and a pid file, find, stop.

``make up`` returns while the stack keeps running, so a later ``down`` only has pid files to go
on. Each child runs in its own session (signals reach its whole process group) and carries a
marker naming its data dir, so a stale pid file never makes us signal somebody else's process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

MARKER = "FACTURA_DEVSTACK_HOME"
STOP_TIMEOUT_S = 10.0


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
            env={**env, MARKER: str(data_dir), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    (run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc


def read_pid(run_dir: Path, name: str) -> int | None:
    try:
        return int((run_dir / f"{name}.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_ours(pid: int, data_dir: Path) -> bool:
    """Alive (not a zombie) and started for this data dir."""
    proc = Path("/proc") / str(pid)
    if not proc.is_dir():  # no procfs (macOS): trust the pid file if the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return state != "Z" and f"{MARKER}={data_dir}".encode() in environ


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _wait(gone: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not gone():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: int, gone: Callable[[], bool], sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal the process group, wait up to 10 s for the leader to exit, then SIGKILL the group."""
    _killpg(pid, sig)
    if not _wait(gone, STOP_TIMEOUT_S):
        _killpg(pid, signal.SIGKILL)
        _wait(gone, STOP_TIMEOUT_S)
    _killpg(pid, signal.SIGKILL)  # stragglers the leader left behind in its group


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
