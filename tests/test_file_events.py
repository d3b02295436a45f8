"""File events: how an idle SQLite watcher learns of other processes' commits without
polling (inotify), and the polling it falls back to where events are not available."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import ok, ready_child
from sqqueue import SQLiteQueue, wakeup
from sqqueue.backends import file_events, sqlite_files

SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="inotify is Linux's (elsewhere: polling)"
)


def test_writes_to_a_watched_file_are_reported_once(tmp_path: Path) -> None:
    watched, other = tmp_path / "queue.db", tmp_path / "queue.db-wal"
    watched.write_bytes(b"")
    other.write_bytes(b"")
    events = file_events.watch([str(watched)])
    assert events is not None
    try:
        assert events.touched() is False
        other.write_bytes(b"not watched")
        started = time.monotonic()
        events.wait(0.3)
        assert time.monotonic() - started >= 0.25  # nothing watched was written
        assert events.touched() is False
        with watched.open("ab") as f:
            f.write(b"written")
        started = time.monotonic()
        events.wait(30)
        assert time.monotonic() - started < 10  # returned for the write, not the timeout
        assert events.touched() is True
        assert events.touched() is False  # consumed
        assert events.working
    finally:
        events.close()


def test_a_write_from_another_process_ends_a_wait(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    path.write_bytes(b"")
    events = file_events.watch([str(path)])
    assert events is not None
    try:
        writer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import time; time.sleep(0.3); open({str(path)!r}, 'ab').write(b'x')",
            ]
        )
        started = time.monotonic()
        events.wait(30)
        assert time.monotonic() - started < 10
        assert events.touched() is True
        assert writer.wait(10) == 0
    finally:
        events.close()


def test_files_that_do_not_exist_are_not_watched(tmp_path: Path) -> None:
    assert file_events.watch([str(tmp_path / "missing.db")]) is None
    present = tmp_path / "queue.db"
    present.write_bytes(b"")
    events = file_events.watch([str(present), str(tmp_path / "queue.db-wal")])
    assert events is not None
    events.close()


def test_a_deleted_file_turns_events_off(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    path.write_bytes(b"")
    events = file_events.watch([str(path)])
    assert events is not None
    try:
        path.unlink()
        events.wait(10)
        assert events.touched() is True
        assert events.working is False  # the probe polls from now on
    finally:
        events.close()


# -- the watcher -----------------------------------------------------------------------------

PRODUCER = """
import sys, time
from sqqueue import SQLiteQueue

queue = SQLiteQueue(sys.argv[1], "jobs")
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    time.sleep(float(line))
    queue.enqueue({"t": time.monotonic()}).unwrap()
queue.close()
"""


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When the watcher's probe read the database (times), in every watcher of the test."""
    seen: list[float] = []
    real = sqlite_files._DataVersion.read

    def read(self: Any) -> int:
        seen.append(time.monotonic())
        return real(self)

    monkeypatch.setattr(sqlite_files._DataVersion, "read", read)
    return seen


@pytest.fixture
def quick_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher turns quiet after 50 ms without a change, and with file events waits up
    to a minute between reads: only a file event can wake it within a test."""
    monkeypatch.setattr(wakeup, "QUIET", 0.05)
    monkeypatch.setattr(sqlite_files, "_QUIET_BACKUP", 60.0)


@pytest.fixture
def producer(db_path: Path, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    with ready_child(script, str(db_path)) as proc:
        yield proc


def _events_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_events, "watch", lambda paths: None)


@pytest.mark.usefixtures("quick_quiet")
def test_a_quiet_watcher_does_not_poll(
    make_sqlite_queue: Callable[..., SQLiteQueue], reads: list[float]
) -> None:
    """With file events, a waiter's watcher reads the database a few times after it starts
    and then not at all while nothing is written (it used to read 20 times a second)."""
    queue = make_sqlite_queue(table_name="jobs", clock=None)
    assert ok(queue.dequeue(wait=2.0)) is None
    # The first read, then 2 to 10 ms apart for the 50 ms before it is quiet.
    assert 1 <= len(reads) <= 20, len(reads)


@pytest.mark.usefixtures("quick_quiet")
def test_without_file_events_a_quiet_watcher_polls(
    make_sqlite_queue: Callable[..., SQLiteQueue],
    reads: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _events_off(monkeypatch)
    queue = make_sqlite_queue(table_name="jobs", clock=None)
    assert ok(queue.dequeue(wait=2.0)) is None
    assert len(reads) > 20, len(reads)  # every POLL_IDLE (50 ms): about 40 in 2 s


@pytest.mark.parametrize("events", ["file events", "polling"])
@pytest.mark.usefixtures("quick_quiet")
def test_a_commit_after_a_lull_wakes_the_waiter(
    make_sqlite_queue: Callable[..., SQLiteQueue],
    producer: subprocess.Popen[str],
    monkeypatch: pytest.MonkeyPatch,
    events: str,
) -> None:
    """Another process enqueues after the watcher has gone quiet: the waiter takes the
    message within moments, with file events (the watcher's back-up read is a minute
    away) or by polling where there are none."""
    if events == "polling":
        _events_off(monkeypatch)
    queue = make_sqlite_queue(table_name="jobs", clock=None)
    assert producer.stdin is not None
    for pause in ("1.0", "0.5"):
        producer.stdin.write(f"{pause}\n")
        producer.stdin.flush()
        message = ok(queue.dequeue(wait=20))
        received = time.monotonic()
        assert message is not None, "the waiter was not woken within its 20 s wait"
        assert received - message.payload["t"] < 5.0  # a wake-up, not the end of the wait
        ok(queue.complete(message))
    producer.stdin.write("quit\n")
    producer.stdin.flush()
    assert producer.wait(10) == 0


@pytest.mark.usefixtures("quick_quiet")
def test_many_waiters_share_one_quiet_watcher(
    make_sqlite_queue: Callable[..., SQLiteQueue],
    producer: subprocess.Popen[str],
    reads: list[float],
) -> None:
    """Twenty waiting threads, one quiet watcher: one commit elsewhere wakes one of them,
    and the watcher's reads stay few."""
    queue = make_sqlite_queue(table_name="jobs", clock=None)
    results: list[Any] = []
    lock = threading.Lock()

    def wait() -> None:
        got = queue.dequeue(wait=6.0)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=wait) for _ in range(20)]
    for thread in threads:
        thread.start()
    assert producer.stdin is not None
    producer.stdin.write("1.0\nquit\n")
    producer.stdin.flush()
    for thread in threads:
        thread.join(30)
    got = [ok(r) for r in results]
    assert len(got) == 20
    assert sum(m is not None for m in got) == 1
    assert producer.wait(10) == 0
    # A few reads at the start, a second of close watching after the commit (2 to 10 ms
    # apart), nothing while quiet: far below the 6 s x 20 of polling ones.
    assert len(reads) <= 250, len(reads)
