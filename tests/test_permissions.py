"""Who can read the queue: every file sqqueue creates is readable and writable by its owner
only (0600), through symlinks too, whatever the umask; a queue file that others can read is
opened all the same, with a warning (once per file and process)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import FakeClock
from sqqueue import SQLiteQueue
from sqqueue.tools import copy_queues, salvage

# Plain files and encrypted ones (the key in the environment): both owner-only.
pytestmark = pytest.mark.usefixtures("sqlite_file")


@pytest.fixture(autouse=True)
def _permissive_umask() -> Iterator[None]:
    """The common default, under which files are created 0644 unless asked otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(db: Path) -> dict[str, int]:
    """The modes of the database and its -wal and -shm files (which must exist)."""
    return {suffix or "db": mode(Path(f"{db}{suffix}")) for suffix in ("", "-wal", "-shm")}


OWNER_ONLY = {"db": 0o600, "-wal": 0o600, "-shm": 0o600}


def test_new_file_through_a_dangling_symlink_is_owner_only(tmp_path: Path) -> None:
    """db_path a symlink to a file that does not exist yet: the file is created where it
    points, 0600, and so are its -wal and -shm; the link stays a link."""
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "jobs.db"
    link = tmp_path / "jobs.db"
    link.symlink_to(real)
    with SQLiteQueue(link, "jobs") as queue:
        queue.enqueue("secret").unwrap()
        assert modes(real) == OWNER_ONLY
    assert link.is_symlink() and real.is_file()


def test_empty_existing_file_becomes_owner_only(tmp_path: Path) -> None:
    """An empty file made beforehand (touch, 0644) becomes the database: 0600, and so are
    its -wal and -shm."""
    db = tmp_path / "jobs.db"
    db.touch()
    assert mode(db) == 0o644
    with SQLiteQueue(db, "jobs") as queue:
        queue.enqueue("secret").unwrap()
        assert modes(db) == OWNER_ONLY


def test_salvage_and_copy_targets_are_owner_only(tmp_path: Path, clock: FakeClock) -> None:
    """The new files of salvage and copy (directly or through a dangling symlink) are 0600."""
    source = tmp_path / "source.db"
    with SQLiteQueue(source, "jobs", clock=clock) as queue:
        queue.enqueue("secret").unwrap()
    (tmp_path / "out").mkdir()
    linked = tmp_path / "linked.db"
    linked.symlink_to(tmp_path / "out" / "linked-target.db")
    targets = [tmp_path / "salvaged.db", linked]
    for target in targets:
        salvage(source, target)
    copied = tmp_path / "copied.db"
    copy_queues(f"sqlite:///{source}", f"sqlite:///{copied}", ["jobs"])
    for made in (tmp_path / "salvaged.db", tmp_path / "out" / "linked-target.db", copied):
        assert mode(made) == 0o600, made
        with SQLiteQueue(made, "jobs", clock=clock) as queue:
            assert queue.dequeue().unwrap().payload == "secret"
            assert modes(made) == OWNER_ONLY, made


def test_a_file_others_can_read_is_opened_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A queue file readable by others (here 0644, made so on purpose) is used as it is,
    with one warning naming it and what to do, however often it is opened; a file that is
    not readable by others gives none."""
    shared, private = tmp_path / "shared.db", tmp_path / "private.db"
    for db in (shared, private):
        SQLiteQueue(db, "jobs").close()
    shared.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="sqqueue")
    for _ in range(3):
        with SQLiteQueue(shared, "jobs") as queue:
            queue.enqueue("x").unwrap()
        SQLiteQueue(shared, "jobs", read_only=True).close()
        SQLiteQueue(private, "jobs").close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(shared) in warnings[0] and "0644" in warnings[0]
    assert f"chmod 600 {shared}" in warnings[0]
    assert mode(shared) == 0o644  # the owner's choice stays
