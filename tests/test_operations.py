"""Logging discipline (on every backend), and SQLite's own operations: the version gate,
durability settings, WAL growth and space reclaimed."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sqqueue import Queue, SQLiteQueue
from sqqueue.backends.sqlite_files import check_sqlite_version
from sqqueue.logs import JSONFormatter


def test_library_adds_no_log_handlers_and_sets_no_level(
    make_queue: Callable[..., Queue],
) -> None:
    root_before = list(logging.getLogger().handlers)
    queue = make_queue(table_name="jobs")
    queue.enqueue("x")
    queue.complete(999)
    backends = ("sqqueue.backends.sqlite", "sqqueue.backends.postgres")
    for name in ("sqqueue", "sqqueue.queue", *backends):
        logger = logging.getLogger(name)
        assert logger.handlers == []
        assert logger.level == logging.NOTSET
    assert logging.getLogger().handlers == root_before


def test_payloads_are_not_logged_above_debug(
    make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(table_name="jobs", default_max_attempts=1)
    secret = "s3cr3t-payload"
    with caplog.at_level(logging.DEBUG, logger="sqqueue"):
        queue.enqueue(secret)
        message = queue.dequeue().unwrap()
        queue.fail_message(message, error="failed")
        queue.get_dead_letters()
    assert caplog.records, "operations should log"
    for record in caplog.records:
        if record.levelno > logging.DEBUG:
            assert secret not in record.getMessage()


def test_every_change_of_a_message_leaves_a_debug_record(
    make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    """Each operation that moves a message says so at DEBUG, by id (never the payload)."""
    queue = make_queue(table_name="jobs", default_max_attempts=1)
    message_id = queue.enqueue("s3cr3t-payload", max_attempts=5).unwrap()
    steps = {
        "failed message": lambda m: queue.fail_message(m, error="boom", delay=0),
        "requeued": queue.requeue,
        "released message(s)": lambda m: queue.release_batch([m]),
        "released": queue.release,
        "completed message": queue.complete,
    }
    for words, step in steps.items():
        message = queue.dequeue().unwrap()
        with caplog.at_level(logging.DEBUG, logger="sqqueue"):
            caplog.clear()
            assert step(message).is_ok()
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
        assert any(words in text and str(message_id) in text for text in said), (words, said)
        assert not any("s3cr3t" in text for text in said)


def test_expected_failures_do_not_log_warnings(
    make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(table_name="jobs")
    with caplog.at_level(logging.DEBUG, logger="sqqueue"):
        assert queue.complete(12345).is_err()
        assert queue.enqueue(object()).is_err()
    assert all(r.levelno <= logging.DEBUG for r in caplog.records)


def test_json_formatter_emits_one_json_object() -> None:
    record = logging.LogRecord("sqqueue.queue", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    record.message_id = 42
    line = JSONFormatter().format(record)
    data = json.loads(line)
    assert data["message"] == "hello x"
    assert data["level"] == "INFO"
    assert data["logger"] == "sqqueue.queue"
    assert data["message_id"] == 42


def test_sqlite_version_gate_names_the_version_found() -> None:
    with pytest.raises(RuntimeError, match=r"3\.35.*3\.31\.1"):
        check_sqlite_version((3, 31, 1))
    check_sqlite_version((3, 35, 0))


@pytest.mark.parametrize("mode", ["normal", "full"])
def test_synchronous_setting_is_applied(
    make_sqlite_queue: Callable[..., SQLiteQueue], db_path: Path, mode: str
) -> None:
    queue = make_sqlite_queue(table_name="jobs", synchronous=mode)
    queue.enqueue("x")
    from sqqueue.backends.sqlite import SQLiteBackend

    backend = queue._backend
    assert isinstance(backend, SQLiteBackend)
    with backend.raw_connection() as conn:
        level = conn.execute("PRAGMA synchronous").fetchone()[0]
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert level == {"normal": 1, "full": 2}[mode]
    assert journal == "wal"


@pytest.mark.parametrize(
    "statement", ["insert", "insert_plain", "claim_pick", "claim_one", "complete", "release"]
)
def test_hot_statements_build_no_temporary_tables(
    make_sqlite_queue: Callable[..., SQLiteQueue], statement: str
) -> None:
    # A temporary b-tree (a CHECK ... IN list, UPDATE ... RETURNING, an IN subquery) is
    # set up and freed on every execution; on a large queue the allocator can hand that
    # memory back to the system each time, doubling the cost of a claim.
    from sqqueue.backends.sqlite import SQLiteBackend

    queue = make_sqlite_queue(table_name="jobs")
    queue.enqueue("x").unwrap()
    backend = queue._backend
    assert isinstance(backend, SQLiteBackend)
    sql = backend._sql[statement]
    with backend.raw_connection() as conn:
        opcodes = [row[1] for row in conn.execute("EXPLAIN " + sql, _params(sql))]
    assert "Insert" in opcodes or "Delete" in opcodes or "ResultRow" in opcodes
    assert "OpenEphemeral" not in opcodes, statement


def _params(sql: str) -> Any:
    """Placeholder values for a statement's named (:x) or numbered (?N) parameters."""
    import re

    numbered = [int(n) for n in re.findall(r"\?(\d+)", sql)]
    if numbered:
        return [1] * max(numbered)
    return dict.fromkeys(re.findall(r":(\w+)", sql), 1)


def test_bad_synchronous_value_raises(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteQueue(db_path, synchronous="sometimes")  # type: ignore[arg-type]


def test_wal_stays_bounded_under_steady_load(db_path: Path) -> None:
    queue = SQLiteQueue(db_path, table_name="jobs", vacuum_threshold=500)
    payload = "x" * 500
    wal = Path(f"{db_path}-wal")
    sizes = []
    for round_ in range(10):
        queue.enqueue_batch([payload] * 300).unwrap()
        for _ in range(300):
            message = queue.dequeue().unwrap()
            assert message is not None
            queue.complete(message).unwrap()
        sizes.append(wal.stat().st_size if wal.exists() else 0)
        assert round_ >= 0
    queue.close()
    # 6,000 enqueue+complete cycles: the WAL is checkpointed and reset, never piling up.
    assert max(sizes) < 8 * 1024 * 1024, sizes


@pytest.mark.plain_file("holds a reader open with stdlib sqlite3, which has no key")
def test_a_reader_that_never_lets_go_shows_in_stats_and_the_log(
    make_sqlite_queue: Callable[..., SQLiteQueue],
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another connection holding a read transaction stops every checkpoint past its
    snapshot, so the WAL grows with each write. stats() shows the frames that cannot be
    checkpointed, and a WARNING (at most one every few minutes) names the cause; once the
    reader lets go, the WAL is checkpointed again."""
    queue = make_sqlite_queue(table_name="jobs", vacuum_threshold=100)
    backend: Any = queue._backend
    backend._journal_size_limit = 512 * 1024  # the default 64 MiB takes long to fill
    ok_stats = queue.stats().unwrap()
    assert ok_stats.wal_frames_not_checkpointed == 0
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM jobs").fetchone()  # a snapshot, held
    caplog.set_level(logging.WARNING, logger="sqqueue")
    try:
        behind = []
        for _ in range(3):
            queue.enqueue_batch(["x" * 2000] * 300).unwrap()
            behind.append(queue.stats().unwrap().wal_frames_not_checkpointed)
        stats = queue.stats().unwrap()
        assert stats.wal_bytes > 512 * 1024
        assert behind[0] > 0 and behind == sorted(behind) and behind[-1] > behind[0], behind
        assert stats.wal_frames >= stats.wal_frames_not_checkpointed > 0
        warnings = [r for r in caplog.records if "cannot be checkpointed" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]  # rate-limited
        assert "read transaction" in warnings[0].getMessage()
        assert warnings[0].levelno == logging.WARNING
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert queue.stats().unwrap().wal_frames_not_checkpointed == 0
    assert queue.perform_checkpoint().is_ok()
    assert os.path.getsize(f"{db_path}-wal") == 0


@pytest.mark.plain_file("holds a reader open with stdlib sqlite3, which has no key")
def test_upkeep_warns_about_a_wal_that_cannot_be_checkpointed(
    make_sqlite_queue: Callable[..., SQLiteQueue],
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nobody needs to call stats(): the queue's routine upkeep notices it too."""
    queue = make_sqlite_queue(table_name="jobs", vacuum_threshold=100)
    backend: Any = queue._backend
    backend._journal_size_limit = 512 * 1024
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM jobs").fetchone()
    caplog.set_level(logging.WARNING, logger="sqqueue")
    try:
        for _ in range(4):
            queue.enqueue_batch(["x" * 2000] * 300).unwrap()
    finally:
        reader.execute("COMMIT")
        reader.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cannot be checkpointed" in w and "read transaction" in w for w in warnings), (
        warnings
    )


def test_checkpoint_truncates_the_wal(
    make_sqlite_queue: Callable[..., SQLiteQueue], db_path: Path
) -> None:
    queue = make_sqlite_queue(table_name="jobs", vacuum_threshold=0)
    queue.enqueue_batch(["x" * 1000] * 200).unwrap()
    assert os.path.getsize(f"{db_path}-wal") > 0
    assert queue.perform_checkpoint().is_ok()
    assert os.path.getsize(f"{db_path}-wal") == 0


@pytest.mark.plain_file("checks the file with stdlib sqlite3, which has no key")
def test_vacuum_gives_space_back(
    make_sqlite_queue: Callable[..., SQLiteQueue], db_path: Path
) -> None:
    queue = make_sqlite_queue(table_name="jobs", vacuum_threshold=0)
    queue.enqueue_batch([b"x" * 4000] * 500).unwrap()
    while (m := queue.dequeue().unwrap()) is not None:
        queue.complete(m).unwrap()
    queue.perform_checkpoint().unwrap()
    full = os.path.getsize(db_path)
    assert queue.vacuum_database().is_ok()
    queue.perform_checkpoint().unwrap()
    assert os.path.getsize(db_path) < full / 4
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_maintenance_reclaims_free_pages_in_small_steps(db_path: Path) -> None:
    queue = SQLiteQueue(db_path, table_name="jobs", vacuum_threshold=50)
    queue.enqueue_batch([b"x" * 4000] * 400).unwrap()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    for _ in range(400):
        queue.complete(queue.dequeue().unwrap()).unwrap()  # type: ignore[arg-type]
    # 800 operations: 16 maintenance rounds of up to 256 pages each reclaimed the space.
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] < 300
    conn.close()
    queue.close()


def test_a_queue_drained_in_batches_gives_its_space_back_too(db_path: Path) -> None:
    """Upkeep follows messages written, not calls: batches reclaim space as singles do."""
    queue = SQLiteQueue(db_path, table_name="jobs", vacuum_threshold=100)
    for _ in range(10):
        queue.enqueue_batch([b"x" * 4000] * 100).unwrap()
    conn = sqlite3.connect(db_path)
    pages_full = conn.execute("PRAGMA page_count").fetchone()[0]
    while batch := queue.dequeue_batch(100).unwrap():
        queue.complete_batch(batch).unwrap()
    queue.perform_checkpoint().unwrap()
    # 1,000 messages written three times (enqueue, lease, ack) in only 30 calls: still 30
    # rounds of upkeep, enough to return the ~1,000 freed pages.
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] < pages_full / 10
    assert conn.execute("PRAGMA page_count").fetchone()[0] < pages_full / 4
    conn.close()
    queue.close()
