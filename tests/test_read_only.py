"""Looking without touching: queues opened with ``read_only=True`` and the commands that
only read (stats, ls, peek, dlq list/show, check, config, metrics) leave every file as they
found it. The database and its -wal and -shm keep their bytes and times, no file appears,
a sqqueue 0.1.0 table is not migrated and an older layout is not upgraded; every call that
would write returns ``Err(kind=READ_ONLY)``."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from conftest import LOCAL_FIXTURES, FakeClock, QueueTarget
from helpers import file_state, message_statuses, without_dac_override
from sqqueue import (
    ErrorKind,
    Item,
    Ok,
    Queue,
    QueueError,
    SQLiteQueue,
    Worker,
    cli,
    connect,
)
from sqqueue.prometheus import QueueCollector


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SQQUEUE_* settings or config file from the machine leak into a test."""
    for key in list(os.environ):
        if key.startswith("SQQUEUE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SQQUEUE_CONFIG", "none")
    monkeypatch.chdir(tmp_path)


def run(*args: object) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def fill(queue: Queue, clock: FakeClock) -> int:
    """A message in every state (kept history and a dedup key too); returns a dead id."""
    queue.enqueue("done", dedup_key="d").unwrap()
    queue.complete(queue.dequeue().unwrap()).unwrap()
    queue.enqueue({"to": "ada"}, priority=5).unwrap()
    queue.enqueue("later", delay=600).unwrap()
    queue.enqueue("head", group="g").unwrap()
    queue.enqueue("next", group="g", ttl=3600).unwrap()
    dead = queue.enqueue("dies", max_attempts=1).unwrap()
    queue.dequeue(visibility_timeout=3600).unwrap()  # ada, leased
    queue.fail_message(dead, send_to_dlq=True, error="poison").unwrap()
    clock.advance(1)
    return dead


def current_file(tmp_path: Path, clock: FakeClock) -> tuple[Path, str, int]:
    db = tmp_path / "current.db"
    with SQLiteQueue(db, "jobs", clock=clock, retention=86400) as queue:
        dead = fill(queue, clock)
    with SQLiteQueue(db, "other", clock=clock) as other:
        other.enqueue("x").unwrap()
    return db, "jobs", dead


def copied_fixture(tmp_path: Path, name: str) -> Path:
    db = tmp_path / name
    db.write_bytes((LOCAL_FIXTURES / name).read_bytes())
    db.chmod(0o600)
    return db


# The commands that only read; {db}, {queue} and {dead} are filled in per file.
READ_ONLY_COMMANDS = [
    ["stats", "{db}"],
    ["stats", "{db}", "--json"],
    ["stats", "{db}", "{queue}"],
    ["ls", "{db}", "{queue}"],
    ["ls", "{db}", "{queue}", "--state", "dead"],
    ["ls", "{db}", "{queue}", "--state", "done"],
    ["peek", "{db}", "{queue}"],
    ["dlq", "list", "{db}", "{queue}"],
    ["dlq", "show", "{db}", "{queue}", "{dead}"],
    ["check", "{db}"],
    ["config"],
    ["config", "--queue", "{queue}"],
    ["migrate", "--sql", "{db}", "--queue", "{queue}"],
]


def needs_migration(layout: str, args: list[str]) -> bool:
    """Whether the command refuses its queue (not in the current layout) and says how to
    bring it up to date: the commands that read a queue's messages. (A 0.1.0 queue is not
    registered, so `stats DB` lists it apart instead.)"""
    if layout == "current" or args[0] not in ("ls", "peek", "dlq", "stats"):
        return False
    return layout == "schema-2" or args[0] != "stats" or args[-1] == "orders"


# The files of older layouts are the plain fixture files; a current file is also encrypted.
@pytest.mark.parametrize(
    ("layout", "sqlite_file"),
    [
        pytest.param("current", "sqlite", id="current"),
        pytest.param("current", "sqlite-encrypted", id="current-sqlite-encrypted"),
        pytest.param("schema-2", "sqlite", id="schema-2"),
        pytest.param("0.1.0", "sqlite", id="0.1.0"),
    ],
    indirect=["sqlite_file"],
)
def test_read_only_commands_change_no_file(
    layout: str, sqlite_file: str, tmp_path: Path, clock: FakeClock
) -> None:
    """Every read-only command, on a current file (plain and encrypted), a file of the
    previous layout and a sqqueue 0.1.0 file: the files keep their bytes, times and modes,
    and no file appears (a queue not in the current layout is refused, saying how to
    migrate it). A 0.1.0 application can still write to its table afterwards."""
    if layout == "current":
        db, queue, dead = current_file(tmp_path, clock)
    elif layout == "schema-2":
        db, queue, dead = copied_fixture(tmp_path, "sqqueue-schema-2.db"), "jobs", 7
    else:
        db, queue, dead = copied_fixture(tmp_path, "sqqueue-0.1.0.db"), "orders", 1
    before = file_state(db)
    for command in READ_ONLY_COMMANDS:
        args = [a.format(db=db, queue=queue, dead=dead) for a in command]
        result = run(*args)
        assert "Traceback" not in result.output, (args, result.output)
        if needs_migration(layout, args):
            assert result.exit_code == 1, (args, result.output)
            assert f"sqqueue migrate {db}" in result.stderr, (args, result.stderr)
        else:
            assert result.exit_code == 0, (args, result.output)
        assert file_state(db) == before, args
    collector = QueueCollector(db)  # what `sqqueue metrics serve` scrapes with
    families = list(collector.collect())
    collector.close()
    assert families
    assert file_state(db) == before, "metrics"
    if layout == "0.1.0":
        conn = sqlite3.connect(db)
        with conn:  # the 0.1.0 application, still running, enqueues as it always did
            conn.execute("INSERT INTO orders (payload) VALUES ('from 0.1.0')")
        conn.close()


def test_read_only_commands_after_migrate(tmp_path: Path) -> None:
    """Once `sqqueue migrate` brought a file of the previous layout up to date, the
    commands that read show its messages and dead letters."""
    db = copied_fixture(tmp_path, "sqqueue-schema-2.db")
    assert run("migrate", db).exit_code == 0
    listed = run("ls", db, "jobs", "--json")
    assert listed.exit_code == 0, listed.output
    assert '"ada"' in listed.stdout and '"group next"' in listed.stdout
    shown = run("dlq", "show", db, "jobs", "7")
    assert shown.exit_code == 0 and "poison again" in shown.stdout


@pytest.mark.usefixtures("sqlite_file")
def test_read_only_commands_beside_a_running_application(tmp_path: Path, clock: FakeClock) -> None:
    """With the application's queue open (its -wal and -shm exist), the commands see its
    latest messages and leave the database and its -wal as they are."""
    db, queue, dead = current_file(tmp_path, clock)
    with SQLiteQueue(db, "jobs", clock=clock) as app:
        app.enqueue("written just now").unwrap()
        assert Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists()
        before = file_state(db)
        for command in READ_ONLY_COMMANDS:
            args = [a.format(db=db, queue=queue, dead=dead) for a in command]
            result = run(*args)
            assert result.exit_code == 0, (args, result.output)
            after = file_state(db)
            for name in (db.name, f"{db.name}-wal", "directory"):
                assert after[name] == before[name], (args, name)
        listed = run("ls", db, "jobs", "--json")
        assert "written just now" in listed.stdout


# -- the API --------------------------------------------------------------------------------


def counts(queue: Queue) -> dict[str, Any]:
    """The queue's stats but the file sizes (which the queue's own upkeep changes)."""
    found = queue.stats().unwrap().to_dict()
    return {k: v for k, v in found.items() if not k.startswith(("wal_", "db_"))}


def open_read_only(target: QueueTarget, name: str = "jobs", **settings: Any) -> Queue:
    return target.open(name, read_only=True, **settings)


def test_read_only_queue_reads_and_refuses_every_write(
    make_queue: Callable[..., Queue], queue_target: QueueTarget, clock: FakeClock
) -> None:
    """Reads work; every call that would write returns Err(READ_ONLY) saying the queue was
    opened read-only, and nothing changes."""
    writer = make_queue(table_name="jobs", retention=86400)
    dead = fill(writer, clock)
    leased = writer.list_messages("processing").unwrap()[0]["id"]
    before = message_statuses(writer), counts(writer)
    reader = open_read_only(queue_target, clock=clock)
    try:
        assert reader.read_only and not writer.read_only
        assert reader.stats().unwrap().dead == 1
        assert len(reader.list_messages("done").unwrap()) == 1
        assert reader.get_dead_letters().unwrap()[0]["id"] == dead
        assert reader.get_completed().unwrap()
        assert reader.get_all_statuses().unwrap()["processing"] == 1
        assert reader.is_drained().unwrap() is False
        assert reader.is_empty().unwrap() is False
        peeked = reader.peek().unwrap()
        assert peeked is not None and peeked.payload == "head"
        writes: dict[str, Callable[[], Any]] = {
            "enqueue": lambda: reader.enqueue("x"),
            "enqueue_batch": lambda: reader.enqueue_batch(["x", Item("y", group="g")]),
            "dequeue": reader.dequeue,
            "dequeue(wait)": lambda: reader.dequeue(wait=0.5),
            "dequeue_batch": lambda: reader.dequeue_batch(5),
            "complete": lambda: reader.complete(leased),
            "complete_batch": lambda: reader.complete_batch([leased]),
            "fail_message": lambda: reader.fail_message(leased, error="x"),
            "requeue": lambda: reader.requeue(leased),
            "release": lambda: reader.release(leased),
            "extend": lambda: reader.extend(leased, 60),
            "recover": reader.recover_processing_messages,
            "reprocess_dead_letter": lambda: reader.reprocess_dead_letter(dead),
            "redrive": reader.redrive,
            "purge": reader.purge,
            "vacuum_database": reader.vacuum_database,
            "perform_checkpoint": reader.perform_checkpoint,
        }
        for call, write in writes.items():
            result = write()
            assert not isinstance(result, Ok), call
            assert result.error.kind is ErrorKind.READ_ONLY, (call, result.error)
            assert "read-only" in str(result.error), (call, result.error)
        with pytest.raises(QueueError) as info, reader.claim():
            pass
        assert info.value.kind is ErrorKind.READ_ONLY
        with pytest.raises(ValueError, match="read-only"):
            Worker(reader, lambda message: None)
    finally:
        reader.close()
    assert (message_statuses(writer), counts(writer)) == before


def test_read_only_outbox_enqueue_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    """enqueue_in on a read-only queue is refused too, before touching the caller's
    transaction."""
    db = tmp_path / "app.db"
    SQLiteQueue(db, "jobs", clock=clock).close()
    reader = SQLiteQueue(db, "jobs", clock=clock, read_only=True)
    conn = sqlite3.connect(db)
    try:
        conn.execute("CREATE TABLE orders (id INTEGER)")
        conn.execute("INSERT INTO orders VALUES (1)")
        result = reader.enqueue_in(conn, "x")
        assert not isinstance(result, Ok)
        assert result.error.kind is ErrorKind.READ_ONLY
        conn.commit()
    finally:
        conn.close()
        reader.close()
    with SQLiteQueue(db, "jobs", clock=clock) as queue:
        assert queue.stats().unwrap().depth == 0


def test_read_only_creates_nothing(
    queue_target: QueueTarget, make_queue: Callable[..., Queue]
) -> None:
    """A queue that does not exist is a QueueError (NOT_FOUND) at opening, and nothing is
    created: no table, no registry."""
    make_queue(table_name="present").close()
    tables = queue_target.tables()
    with pytest.raises(QueueError) as info:
        open_read_only(queue_target, "missing")
    assert info.value.kind is ErrorKind.NOT_FOUND
    assert "'missing'" in str(info.value)
    assert queue_target.tables() == tables


def test_read_only_missing_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    with pytest.raises(QueueError) as info:
        SQLiteQueue(path, "jobs", read_only=True)
    assert info.value.kind is ErrorKind.NOT_FOUND
    assert str(path) in str(info.value)
    assert os.listdir(tmp_path) == []


def test_read_only_refuses_a_0_1_0_table_and_leaves_it(tmp_path: Path) -> None:
    """A table still in 0.1.0's layout is not migrated by a read-only queue: the error
    says to run sqqueue migrate; the file is unchanged."""
    db = copied_fixture(tmp_path, "sqqueue-0.1.0.db")
    before = file_state(db)
    with pytest.raises(QueueError) as info:
        connect(db, "orders", read_only=True)
    assert info.value.kind is ErrorKind.READ_ONLY
    assert f"sqqueue migrate {db}" in str(info.value)
    assert file_state(db) == before


def test_read_only_refuses_the_previous_layout_and_leaves_it(tmp_path: Path) -> None:
    """A queue of an older sqqueue's layout is not upgraded by a read-only queue: the error
    says to run sqqueue migrate; the file is unchanged."""
    db = copied_fixture(tmp_path, "sqqueue-schema-2.db")
    before = file_state(db)
    with pytest.raises(QueueError) as info:
        SQLiteQueue(db, "jobs", read_only=True)
    assert info.value.kind is ErrorKind.READ_ONLY
    assert f"sqqueue migrate {db}" in str(info.value)
    assert file_state(db) == before


@pytest.mark.usefixtures("sqlite_file")
def test_read_only_sees_a_writer_that_starts_later(tmp_path: Path, clock: FakeClock) -> None:
    """Opened on an idle file (no -wal, no -shm), a read-only queue still sees what a
    writer that starts afterwards commits, and what it leaves in the file when it stops."""
    db = tmp_path / "q.db"
    with SQLiteQueue(db, "jobs", clock=clock) as queue:
        queue.enqueue("first").unwrap()
    assert not Path(f"{db}-shm").exists()
    with SQLiteQueue(db, "jobs", clock=clock, read_only=True) as reader:
        assert reader.stats().unwrap().pending == 1
        with SQLiteQueue(db, "jobs", clock=clock) as writer:
            writer.enqueue("second").unwrap()
            assert reader.stats().unwrap().pending == 2
            writer.enqueue("third").unwrap()
            assert reader.stats().unwrap().pending == 3
        with SQLiteQueue(db, "jobs", clock=clock) as writer:
            writer.enqueue("fourth").unwrap()
        assert reader.stats().unwrap().pending == 4


@pytest.mark.usefixtures("sqlite_file")
def test_read_only_reader_in_another_thread_while_writing(tmp_path: Path, clock: FakeClock) -> None:
    """Reads that overlap writes always see a consistent count (never fewer than what was
    committed before the read began)."""
    db = tmp_path / "q.db"
    SQLiteQueue(db, "jobs", clock=clock).close()
    stop = threading.Event()
    committed = [0]

    def write() -> None:
        with SQLiteQueue(db, "jobs", clock=clock) as writer:
            for _ in range(200):
                writer.enqueue("x").unwrap()
                committed[0] += 1
        stop.set()

    with SQLiteQueue(db, "jobs", clock=clock, read_only=True) as reader:
        thread = threading.Thread(target=write)
        thread.start()
        seen = 0
        while not stop.is_set():
            floor = committed[0]
            seen = reader.stats().unwrap().pending
            assert seen >= floor
        thread.join(timeout=60)
        assert reader.stats().unwrap().pending == 200


def test_read_only_peek_reports_an_undeliverable_message(tmp_path: Path, clock: FakeClock) -> None:
    """A message that cannot be decoded is not set aside by a read-only peek (that would
    write): the Err says what is wrong with it, and the file is unchanged."""
    db = tmp_path / "q.db"
    with SQLiteQueue(db, "jobs", clock=clock) as queue:
        bad = queue.enqueue("will be damaged").unwrap()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE jobs SET checksum = ? WHERE id = ?", (zlib.crc32(b"?"), bad))
    conn.close()
    before = file_state(db)
    with SQLiteQueue(db, "jobs", clock=clock, read_only=True) as reader:
        result = reader.peek()
        assert not isinstance(result, Ok)
        assert result.error.message_id == bad
        assert f"message {bad}" in str(result.error)
    assert file_state(db) == before


# A writer in rollback mode that dies in the middle of a transaction, after its changes
# reached the database file (a cache of two pages spills them): its -journal is hot.
_DIES_MID_TRANSACTION = """
import os, sys
from sqqueue import encryption
conn = encryption.connect(sys.argv[1], encryption.resolve_key(), isolation_level=None)
conn.execute("PRAGMA journal_mode = DELETE")
conn.execute("PRAGMA cache_size = 2")
conn.execute("BEGIN")
conn.execute("CREATE TABLE scratch (x)")
for _ in range(100):
    conn.execute("INSERT INTO scratch VALUES (zeroblob(4000))")
os._exit(0)
"""


@pytest.mark.usefixtures("sqlite_file")
def test_read_only_refuses_a_file_with_a_hot_journal(tmp_path: Path, clock: FakeClock) -> None:
    """A file whose -journal holds a dead writer's unfinished transaction is not read as
    it is on disk (half written): the error says to open it for use first, and nothing
    changes. Opened for use, it is rolled back, and reads again."""
    db = tmp_path / "q.db"
    with SQLiteQueue(db, "jobs", clock=clock) as queue:
        queue.enqueue("kept").unwrap()
    subprocess.run([sys.executable, "-c", _DIES_MID_TRANSACTION, str(db)], check=True)
    assert Path(f"{db}-journal").stat().st_size > 0
    before = file_state(db)
    with pytest.raises(QueueError) as info:
        SQLiteQueue(db, "jobs", clock=clock, read_only=True)
    assert info.value.kind is ErrorKind.READ_ONLY
    assert "-journal holds a transaction a writer left unfinished" in str(info.value)
    assert file_state(db) == before
    with SQLiteQueue(db, "jobs", clock=clock) as queue:
        assert queue.stats().unwrap().pending == 1
    assert not Path(f"{db}-journal").exists()
    with SQLiteQueue(db, "jobs", clock=clock, read_only=True) as reader:
        assert reader.stats().unwrap().pending == 1


# Whether a process holds the database open, as SQLite tells: its shared lock on the -shm
# file's "dead man switch" byte (128), which an exclusive lock is refused while held.
_NOBODY_HAS_IT_OPEN = """
import fcntl, os, sys
fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)
except OSError:
    sys.exit(1)
"""


@pytest.mark.usefixtures("sqlite_file")
def test_stats_of_a_read_only_queue_keep_the_locks_of_this_process(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A read-only queue's stats read the -shm without closing it: closing a file drops
    every lock this process holds on it, the application's own connections' too, and
    other processes would then rebuild the WAL index under them."""
    db = tmp_path / "q.db"

    def nobody_has_it_open() -> bool:
        probe = [sys.executable, "-c", _NOBODY_HAS_IT_OPEN, str(db)]
        return subprocess.run(probe, check=False).returncode == 0

    with SQLiteQueue(db, "jobs", clock=clock) as app:
        app.enqueue("x").unwrap()
        assert not nobody_has_it_open()
        with SQLiteQueue(db, "jobs", clock=clock, read_only=True) as reader:
            for _ in range(2):
                assert reader.stats().unwrap().wal_frames > 0
                assert not nobody_has_it_open()
        app.enqueue("y").unwrap()
        assert not nobody_has_it_open()
    assert not Path(f"{db}-shm").exists()


# -- permissions ------------------------------------------------------------------------------


@pytest.mark.usefixtures("sqlite_file")
def test_read_only_in_a_directory_the_user_cannot_write(tmp_path: Path, clock: FakeClock) -> None:
    """An idle file in a directory the user may not write (SQLite could not create the
    -shm there): read-only queues and commands read it all the same, creating nothing.

    As root, permissions only apply without CAP_DAC_OVERRIDE, hence the helper thread."""
    directory = tmp_path / "locked"
    directory.mkdir()
    db, _queue, _dead = current_file(directory, clock)
    with SQLiteQueue(db, "jobs", clock=clock) as queue:
        expected = queue.stats().unwrap().depth
    before = file_state(db)
    directory.chmod(0o555)
    try:

        def look() -> tuple[int, Result, Result]:
            with SQLiteQueue(db, "jobs", clock=clock, read_only=True) as reader:
                depth = reader.stats().unwrap().depth
            return depth, run("check", db), run("stats", db, "jobs", "--json")

        outcome = without_dac_override(look)
    finally:
        directory.chmod(0o755)
    assert not isinstance(outcome, BaseException), outcome
    depth, checked, stats = outcome
    assert depth == expected == 4
    assert checked.exit_code == 0, checked.output
    assert "passed the integrity check" in checked.stdout
    assert stats.exit_code == 0, stats.output
    assert file_state(db) == before


@pytest.mark.usefixtures("sqlite_file")
def test_read_only_connections_beyond_the_pool_are_forgotten(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A burst of concurrent reads opens more connections than the pool keeps; those closed
    when the burst ends leave nothing behind (a long-running reader of a file it cannot
    write does not grow with every burst)."""
    directory = tmp_path / "locked"
    directory.mkdir()
    db, _queue, _dead = current_file(directory, clock)
    directory.chmod(0o555)
    try:

        def bursts() -> int:
            with SQLiteQueue(db, "jobs", clock=clock, read_only=True) as reader:
                backend: Any = reader.parts.backend
                for _ in range(5):
                    burst = [backend._checkout() for _ in range(40)]
                    for conn in burst:
                        backend._checkin(conn)
                assert reader.stats().unwrap().depth == 4
                return len(backend._snapshots)

        kept = without_dac_override(bursts)
    finally:
        directory.chmod(0o755)
    assert not isinstance(kept, BaseException), kept
    assert 0 < kept <= 16  # the pool's idle connections, no more


@pytest.mark.usefixtures("sqlite_file")
def test_check_names_a_permission_problem_not_damage(tmp_path: Path, clock: FakeClock) -> None:
    """`sqqueue check` on a healthy file the user may not read: the error names the
    permissions and what to do; it does not call the file damaged nor advise salvage."""
    db, _queue, _dead = current_file(tmp_path, clock)
    db.chmod(0o200)
    try:
        result = without_dac_override(lambda: run("check", db))
    finally:
        db.chmod(0o600)
    assert not isinstance(result, BaseException), result
    assert result.exit_code == 1, result.output
    error = result.stderr.strip()
    assert error.startswith("error: ") and "\n" not in error
    assert "may not read" in error and str(db) in error
    assert "owner" in error
    assert "damaged" not in error and "salvage" not in error


@pytest.mark.usefixtures("sqlite_file")
def test_check_with_a_shm_the_user_cannot_read(tmp_path: Path, clock: FakeClock) -> None:
    """With the application running in another process (its -shm exists) but the -shm not
    readable by this user: the error names that file and the permissions."""
    db, _queue, _dead = current_file(tmp_path, clock)
    app = subprocess.Popen(
        [sys.executable, "-c", _APPLICATION, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "open"
        shm = Path(f"{db}-shm")
        shm.chmod(0o200)
        try:
            result = without_dac_override(lambda: run("check", db))
        finally:
            shm.chmod(0o600)
    finally:
        app.communicate(timeout=60)  # closes its stdin: it closes the queue and exits
    assert not isinstance(result, BaseException), result
    assert result.exit_code == 1, result.output
    assert f"{db}-shm" in result.stderr and "may not read" in result.stderr
    assert "damaged" not in result.stderr and "salvage" not in result.stderr


# A process holding a queue open until its stdin closes.
_APPLICATION = """
import sys
from sqqueue import SQLiteQueue
with SQLiteQueue(sys.argv[1], "jobs") as queue:
    queue.enqueue("x").unwrap()
    print("open", flush=True)
    sys.stdin.read()
"""
