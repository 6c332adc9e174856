"""The render pool's scratch folders: locked while their pool lives, swept once it is gone."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from factura.renderer.scratch import LOCK, PREFIX, Scratch, sweep


def test_a_live_pools_folder_is_kept_and_a_dead_ones_is_removed(tmp_path: Path) -> None:
    live = Scratch(tmp_path)
    dead = tmp_path / f"{PREFIX}dead"
    (dead / "0").mkdir(parents=True)
    (dead / LOCK).touch()  # a lock file nobody holds: its process died without closing
    (dead / "0" / "outcome-1").write_bytes(b"left behind")
    try:
        assert sweep(tmp_path) == [dead]
        assert not dead.exists()
        assert live.current.is_dir()
    finally:
        live.close()


def test_a_pool_that_starts_sweeps_the_dead(tmp_path: Path) -> None:
    dead = tmp_path / f"{PREFIX}dead"
    dead.mkdir()
    (dead / LOCK).touch()
    Scratch(tmp_path).close()
    assert list(tmp_path.iterdir()) == []


def test_folders_that_are_not_scratch_folders_are_left_alone(tmp_path: Path) -> None:
    unlocked = tmp_path / f"{PREFIX}no-lock-file"
    unlocked.mkdir()
    other = tmp_path / "factura-typst-abc"
    other.mkdir()
    (other / LOCK).touch()
    assert sweep(tmp_path) == []
    assert unlocked.exists() and other.exists()


def test_a_lock_held_elsewhere_keeps_the_folder(tmp_path: Path) -> None:
    """flock is per open file: another process (or another pool in this one) holding it counts."""
    folder = tmp_path / f"{PREFIX}held"
    folder.mkdir()
    fd = os.open(folder / LOCK, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert sweep(tmp_path) == []
        assert folder.exists()
    finally:
        os.close(fd)
    assert sweep(tmp_path) == [folder]


def test_a_replaced_sets_folder_is_removed_at_the_next_replacement(tmp_path: Path) -> None:
    """Not at once: a job that finished just before its set broke may not have been read yet."""
    scratch = Scratch(tmp_path)
    try:
        first = scratch.current
        (first / "outcome-1").write_bytes(b"finished, not read yet")
        second = scratch.renew()
        assert second == scratch.current != first
        assert list(second.iterdir()) == []
        assert (first / "outcome-1").exists()
        third = scratch.renew()
        assert not first.exists()
        assert second.exists() and third.exists()
    finally:
        scratch.close()
    assert not scratch.path.exists()
    scratch.close()  # twice is harmless (the lock's file descriptor is not closed again)
