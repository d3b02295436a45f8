"""Opening a database written by sqqueue 0.1.0: every message keeps its state, once, atomically."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import LOCAL_FIXTURES
from helpers import message_statuses, ok
from sqqueue import Err, Message, Ok, QueueError, SQLiteQueue, tools
from sqqueue.backends import sqlite as sqlite_backend

MakeQueue = Callable[..., SQLiteQueue]

EXPECTED: dict[str, list[dict[str, Any]]] = json.loads(
    (Path(__file__).resolve().parent / "data" / "sqqueue-0.1.0.json").read_text(encoding="utf-8")
)
LEGACY_TABLES = ("orders", "orders_dlq", "emails", "emails_dlq")

pytestmark = pytest.mark.plain_file("migrates the sqqueue 0.1.0 fixture file, which is plain")


def legacy_time(text: str) -> float:
    """0.1.0 stored UTC times as 'YYYY-MM-DD HH:MM:SS[.ffffff]'."""
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


# Shortly after the 0.1.0 file was written: messages 1 and 11 are still leased (until
# 20:19:43), message 2's lease has run out, message 12 is due only the next day.
LEGACY_NOW = legacy_time("2026-11-27 20:15:00")


def rows(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def table_dicts(path: Path, table: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY id')]
    finally:
        conn.close()


def legacy_ddl(name: str) -> str:
    """The CREATE TABLE of a queue named ``name`` as sqqueue 0.1.0 made it (its fixture's)."""
    [(ddl,)] = rows(
        LOCAL_FIXTURES / "sqqueue-0.1.0.db", "SELECT sql FROM sqlite_master WHERE name = 'orders'"
    )
    return str(ddl).replace("orders", f'"{name}"', 1)


def schema_names(path: Path) -> set[str]:
    return {r[0] for r in rows(path, "SELECT name FROM sqlite_master")}


@pytest.fixture
def legacy_clock(clock: Any) -> Any:
    clock.advance(LEGACY_NOW - clock())
    return clock


@pytest.fixture
def open_legacy(
    make_sqlite_queue: MakeQueue, legacy_db: Path, legacy_clock: Any
) -> Callable[[str], SQLiteQueue]:
    def open_queue(name: str) -> SQLiteQueue:
        return make_sqlite_queue(db_path=legacy_db, table_name=name, default_max_attempts=5)

    return open_queue


def expected_status(row: dict[str, Any], now: float) -> str:
    if row["status"] == "pending":  # stored by 0.1.0; the glossary splits it by time
        return "delayed" if legacy_time(row["visible_at"]) > now else "ready"
    return str(row["status"])


def test_fixture_matches_its_description(legacy_db: Path) -> None:
    """Sanity: the 0.1.0 file holds exactly the rows described in the JSON file."""
    for table in LEGACY_TABLES:
        assert table_dicts(legacy_db, table) == EXPECTED[table], table


# -- states, ids, payloads --------------------------------------------------------------------


def test_every_message_keeps_its_state(open_legacy: Callable[[str], SQLiteQueue]) -> None:
    """pending stays pending (or 'delayed' if due later), processing stays processing,
    with id, priority, attempts and max_attempts kept; the dead letter is dead."""
    orders = open_legacy("orders")
    by_id = {row["id"]: row for row in message_statuses(orders)}
    for row in EXPECTED["orders"]:
        assert by_id.pop(row["id"]) == {
            "id": row["id"],
            "status": expected_status(row, LEGACY_NOW),
            "priority": row["priority"],
            "attempts": row["attempts"],
            "max_attempts": row["max_attempts"],
        }
    # What is left is the migrated dead letter.
    (dead,) = by_id.values()
    assert dead["status"] == "dead"
    # Spelled out, so the expectation does not only come from the helper above.
    statuses = {row["id"]: row["status"] for row in message_statuses(orders)}
    assert [statuses[i] for i in (1, 2, 5, 11, 12)] == [
        "processing",
        "processing",
        "ready",
        "processing",
        "delayed",
    ]


def test_ids_are_preserved(open_legacy: Callable[[str], SQLiteQueue]) -> None:
    """Messages of the main table keep the ids they had in 0.1.0."""
    orders, emails = open_legacy("orders"), open_legacy("emails")
    live = [r["id"] for r in message_statuses(orders) if r["status"] != "dead"]
    assert live == [row["id"] for row in EXPECTED["orders"]]
    assert [r["id"] for r in message_statuses(emails)] == [1]


def test_processing_keeps_lease_until_old_processing_at(
    open_legacy: Callable[[str], SQLiteQueue], legacy_db: Path, legacy_clock: Any
) -> None:
    """A 0.1.0 'processing' row keeps its lease, expiring at its old processing_at."""
    orders = open_legacy("orders")
    stored = dict(
        rows(legacy_db, "SELECT id, lease_expires_at FROM orders WHERE status = 'processing'")
    )
    expected = {
        row["id"]: legacy_time(row["processing_at"])
        for row in EXPECTED["orders"]
        if row["status"] == "processing"
    }
    assert set(stored) == set(expected) == {1, 2, 11}
    for msg_id, expiry in expected.items():
        assert stored[msg_id] == pytest.approx(expiry, abs=0.002), msg_id
    # Message 2's lease ran out at 20:14:43.47: it comes back behind the pending ones.
    # Messages 1 and 11 stay leased until 20:19:43; 12 is not due.
    order = [m.id for m in ok(orders.dequeue_batch(20))]
    assert order == [5, 6, 7, 8, 9, 10, 2]
    legacy_clock.advance(legacy_time("2026-11-27 20:19:44") - legacy_clock())
    again = ok(orders.dequeue_batch(20))
    assert [(m.id, m.priority, m.attempts) for m in again] == [(11, 5, 2), (1, 0, 2)]


def test_dead_letter_is_migrated_with_its_payload(
    open_legacy: Callable[[str], SQLiteQueue],
) -> None:
    """0.1.0's dead letter is in get_dead_letters(), with its payload, under a fresh id."""
    orders = open_legacy("orders")
    (dead,) = ok(orders.get_dead_letters())
    (legacy,) = EXPECTED["orders_dlq"]
    assert dead["payload"] == legacy["payload"] == "order-3"
    assert dead["status"] == "dead"
    assert dead["priority"] == legacy["priority"]
    assert dead["created_at"].timestamp() == legacy_time(legacy["created_at"])
    # It died when 0.1.0 moved it (its last update), not when the file was migrated.
    assert dead["dead_at"].timestamp() == legacy_time(legacy["updated_at"])
    assert "0.1.0" in dead["last_error"]
    # Its 0.1.0 id (1) belongs to a live message, so it was given a fresh one.
    assert dead["id"] != legacy["id"]
    assert dead["id"] > max(row["id"] for row in EXPECTED["orders"])
    assert ok(open_legacy("emails").get_dead_letters()) == []


def test_emails_payload_comes_back_as_exact_str(
    open_legacy: Callable[[str], SQLiteQueue],
) -> None:
    """The JSON-looking text of 0.1.0 comes back as the very same str, not parsed."""
    emails = open_legacy("emails")
    message = ok(emails.dequeue())
    assert isinstance(message, Message)
    assert type(message.payload) is str
    assert message.payload == EXPECTED["emails"][0]["payload"]
    assert "hi éè 😀" in message.payload
    assert (message.id, message.attempts, message.max_attempts) == (1, 1, 5)


def test_every_time_is_kept_to_the_microsecond(
    open_legacy: Callable[[str], SQLiteQueue], legacy_db: Path
) -> None:
    """0.1.0's times ('YYYY-MM-DD HH:MM:SS.ffffff') come through exact: no rounding to
    milliseconds, no drift from reading them as day numbers."""
    open_legacy("orders")
    stored = {
        row[0]: row[1:]
        for row in rows(
            legacy_db, "SELECT id, created_at, visible_at, lease_expires_at FROM orders"
        )
    }
    for legacy in EXPECTED["orders"]:
        created, visible, lease = stored[legacy["id"]]
        assert created == legacy_time(legacy["created_at"]), legacy["id"]
        if legacy["status"] == "processing":
            assert lease == legacy_time(legacy["processing_at"]), legacy["id"]
        else:
            assert visible == legacy_time(legacy["visible_at"]), legacy["id"]


def test_bytes_payloads_of_0_1_0_come_back_as_bytes(tmp_path: Path) -> None:
    """0.1.0 kept a bytes payload as a BLOB (in its TEXT column) and gave it back as
    bytes: after the migration it still does, ready or dead, binary or ASCII."""
    db_path = tmp_path / "blobs.db"
    conn = sqlite3.connect(db_path)
    with conn:
        for table in ("blobs", "blobs_dlq"):
            [(ddl,)] = rows(
                LOCAL_FIXTURES / "sqqueue-0.1.0.db",
                "SELECT sql FROM sqlite_master WHERE name = ?",
                table.replace("blobs", "orders"),
            )
            conn.execute(ddl.replace("orders", "blobs", 1))
        binary, ascii_bytes = b"\x89PNG\r\n\x1a\n\x00\xff", b"plain ascii bytes"
        for payload in (binary, ascii_bytes, "text"):
            conn.execute("INSERT INTO blobs (payload) VALUES (?)", (payload,))
        conn.execute("INSERT INTO blobs_dlq (payload) VALUES (?)", (b"\x00dead\xff",))
    conn.close()
    with SQLiteQueue(db_path, table_name="blobs") as queue:
        got = [m.payload for m in ok(queue.dequeue_batch(10))]
        assert got == [binary, ascii_bytes, "text"]
        assert [d["payload"] for d in ok(queue.get_dead_letters())] == [b"\x00dead\xff"]


def test_migrated_messages_can_be_completed(open_legacy: Callable[[str], SQLiteQueue]) -> None:
    """Migrated messages go through the normal lifecycle."""
    orders = open_legacy("orders")
    for message in ok(orders.dequeue_batch(20)):
        assert message.payload == f"order-{message.id}"
        ok(orders.complete(message))
    remaining = {r["id"]: r["status"] for r in message_statuses(orders)}
    assert {k: v for k, v in remaining.items() if v != "dead"} == {
        1: "processing",
        11: "processing",
        12: "delayed",
    }


# -- once, ids, integrity --------------------------------------------------------------------


def test_migration_happens_once(
    make_sqlite_queue: MakeQueue,
    legacy_db: Path,
    legacy_clock: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The registry records the current schema version; reopening does not migrate again."""
    caplog.set_level(logging.INFO, logger="sqqueue")
    orders = make_sqlite_queue(db_path=legacy_db, table_name="orders")
    emails = make_sqlite_queue(db_path=legacy_db, table_name="emails")
    migrated = [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()]
    assert len(migrated) == 2
    registry = rows(legacy_db, "SELECT name, schema_version, created_at FROM sqqueue_queues")
    current = sqlite_backend.SCHEMA_VERSION
    assert {(name, version) for name, version, _ in registry} == {
        ("orders", current),
        ("emails", current),
    }
    names = schema_names(legacy_db)
    assert not {n for n in names if "__sqqueue_v0" in n}
    assert "idx_status_id" not in names
    ok(orders.enqueue("new"))
    before = message_statuses(orders), ok(orders.get_dead_letters())
    orders.close()
    emails.close()
    caplog.clear()
    reopened = make_sqlite_queue(db_path=legacy_db, table_name="orders")
    make_sqlite_queue(db_path=legacy_db, table_name="emails")
    assert not [r for r in caplog.records if "migrated" in r.getMessage()]
    assert (message_statuses(reopened), ok(reopened.get_dead_letters())) == before
    assert rows(legacy_db, "SELECT name, schema_version, created_at FROM sqqueue_queues") == (
        registry
    )


def test_ids_are_never_reused(open_legacy: Callable[[str], SQLiteQueue]) -> None:
    """New messages get ids above every id 0.1.0 handed out (and the migrated dead letter)."""
    orders, emails = open_legacy("orders"), open_legacy("emails")
    taken = {r["id"] for r in message_statuses(orders)}
    new_ids = ok(orders.enqueue_batch(["n1", "n2"]))
    assert min(new_ids) > 12
    assert min(new_ids) > max(taken)
    assert ok(emails.enqueue("e2")) == 2


def test_dead_lettering_id_1_later_works(open_legacy: Callable[[str], SQLiteQueue]) -> None:
    """0.1.0's DLQ had its own id 1; the live message 1 can still be dead-lettered."""
    orders = open_legacy("orders")
    assert orders.fail_message(1, send_to_dlq=True, error="gave up") == Ok(None)
    dead = {d["id"]: d for d in ok(orders.get_dead_letters())}
    assert dead[1]["payload"] == "order-1"
    assert dead[1]["last_error"] == "gave up"
    assert sorted(d["payload"] for d in dead.values()) == ["order-1", "order-3"]
    assert orders.reprocess_dead_letter(1) == Ok(None)
    row = next(r for r in message_statuses(orders) if r["id"] == 1)
    assert (row["status"], row["attempts"]) == ("ready", 0)


def test_integrity_check_ok(open_legacy: Callable[[str], SQLiteQueue], legacy_db: Path) -> None:
    """The migrated file passes PRAGMA integrity_check, also after some traffic."""
    orders, emails = open_legacy("orders"), open_legacy("emails")
    for message in ok(orders.dequeue_batch(3)):
        ok(orders.fail_message(message, send_to_dlq=True))
    ok(emails.enqueue({"x": 1}))
    assert rows(legacy_db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(legacy_db, "PRAGMA foreign_key_check") == []


def test_migrating_one_queue_leaves_the_other_legacy(
    open_legacy: Callable[[str], SQLiteQueue], legacy_db: Path
) -> None:
    """Opening 'orders' migrates only 'orders'; 'emails' stays as 0.1.0 wrote it."""
    open_legacy("orders")
    assert table_dicts(legacy_db, "emails") == EXPECTED["emails"]
    assert table_dicts(legacy_db, "emails_dlq") == EXPECTED["emails_dlq"]
    assert rows(legacy_db, "SELECT name FROM sqqueue_queues") == [("orders",)]


# -- atomicity -------------------------------------------------------------------------------


def assert_legacy_intact(path: Path, sequence: list[tuple[Any, ...]]) -> None:
    for table in LEGACY_TABLES:
        assert table_dicts(path, table) == EXPECTED[table], table
    assert rows(path, "SELECT name, seq FROM sqlite_sequence ORDER BY name") == sequence
    names = schema_names(path)
    assert "idx_status_id" in names
    if "sqqueue_queues" in names:
        assert rows(path, "SELECT name FROM sqqueue_queues") == []
    assert rows(path, "PRAGMA integrity_check") == [("ok",)]


CONFLICTS = {
    # fails at once: the dead-letter table cannot be renamed out of the way
    "dlq-rename": ('CREATE TABLE "orders#dlq_v0" (x)', "orders#dlq_v0"),
    # fails after the dead-letter table was renamed
    "queue-rename": ('CREATE TABLE "orders#v0" (x)', "orders#v0"),
    # fails after both renames and the new table were done
    "ready-index": ('CREATE VIEW "orders#ready" AS SELECT 1', "orders#ready"),
    "leases-index": ('CREATE INDEX "orders#leases" ON emails (id)', "orders#leases"),
}


@pytest.mark.parametrize("conflict", list(CONFLICTS))
def test_failed_migration_changes_nothing(
    make_sqlite_queue: MakeQueue, legacy_db: Path, legacy_clock: Any, conflict: str
) -> None:
    """A migration that fails midway rolls back entirely, with an error naming the file and
    the cause; once the cause is gone, the migration succeeds."""
    ddl, culprit = CONFLICTS[conflict]
    conn = sqlite3.connect(legacy_db)
    conn.execute(ddl)
    conn.commit()
    conn.close()
    sequence = rows(legacy_db, "SELECT name, seq FROM sqlite_sequence ORDER BY name")
    with pytest.raises(QueueError) as info:
        make_sqlite_queue(db_path=legacy_db, table_name="orders")
    message = str(info.value)
    assert str(legacy_db) in message
    assert culprit in message
    assert_legacy_intact(legacy_db, sequence)
    drop = "VIEW" if ddl.startswith("CREATE VIEW") else "INDEX" if "INDEX" in ddl else "TABLE"
    conn = sqlite3.connect(legacy_db)
    conn.execute(f'DROP {drop} "{culprit}"')
    conn.commit()
    conn.close()
    orders = make_sqlite_queue(db_path=legacy_db, table_name="orders")
    assert len(message_statuses(orders)) == len(EXPECTED["orders"]) + 1
    assert [d["payload"] for d in ok(orders.get_dead_letters())] == ["order-3"]


def test_failed_migration_error_says_it_was_migrating(
    make_sqlite_queue: MakeQueue, legacy_db: Path, legacy_clock: Any
) -> None:
    """The error of a failed migration says a 0.1.0 migration failed and nothing changed."""
    conn = sqlite3.connect(legacy_db)
    conn.execute('CREATE TABLE "orders#v0" (x)')
    conn.commit()
    conn.close()
    with pytest.raises(QueueError) as info:
        make_sqlite_queue(db_path=legacy_db, table_name="orders")
    # (the path is cut out first: pytest's tmp_path contains this test's name)
    text = str(info.value).replace(str(legacy_db), "<path>")
    assert "migrat" in text.lower(), text


def test_failure_at_the_last_step_rolls_back(
    make_sqlite_queue: MakeQueue,
    legacy_db: Path,
    legacy_clock: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even a failure after every row was copied (just before commit) leaves 0.1.0 intact."""
    original = sqlite_backend.SQLiteBackend._migrate_legacy_dlq

    def copy_then_fail(self: Any, conn: sqlite3.Connection, *args: Any) -> None:
        original(self, conn, *args)
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 10
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    monkeypatch.setattr(sqlite_backend.SQLiteBackend, "_migrate_legacy_dlq", copy_then_fail)
    sequence = rows(legacy_db, "SELECT name, seq FROM sqlite_sequence ORDER BY name")
    with pytest.raises(QueueError) as info:
        make_sqlite_queue(db_path=legacy_db, table_name="orders")
    assert "simulated" in str(info.value)
    assert_legacy_intact(legacy_db, sequence)
    monkeypatch.undo()
    orders = make_sqlite_queue(db_path=legacy_db, table_name="orders")
    assert [d["payload"] for d in ok(orders.get_dead_letters())] == ["order-3"]


def test_error_results_never_raise_on_migrated_queue(
    open_legacy: Callable[[str], SQLiteQueue],
) -> None:
    """Wrong calls on migrated messages are Err values (here: 12 is pending, 99 unknown)."""
    orders = open_legacy("orders")
    assert isinstance(orders.complete(12), Err)
    assert isinstance(orders.complete(99), Err)
    assert isinstance(orders.reprocess_dead_letter(1), Err)


_SCHEMA_1_INSERT_TRIGGER = """
CREATE TRIGGER "jobs_count_insert" AFTER INSERT ON "jobs"
WHEN NEW.id <= (SELECT n FROM sqqueue_counters WHERE name = 'jobs#high')
  OR EXISTS (SELECT 1 FROM "jobs" WHERE id > NEW.id) BEGIN
    UPDATE sqqueue_counters SET n = n + 1 WHERE name = 'jobs#enqueued';
    UPDATE sqqueue_counters SET n = n + 1 WHERE name = 'jobs#queued';
END"""


def test_a_schema_1_queue_is_upgraded_and_its_counts_stay_exact(tmp_path: Path) -> None:
    """Schema 1 counted inserts with a trigger; later schemas count them in code. Opening a
    schema 1 file drops the trigger, so a revived message is not counted twice."""
    db_path = tmp_path / "schema-1.db"
    db_path.write_bytes((LOCAL_FIXTURES / "sqqueue-schema-2.db").read_bytes())
    conn = sqlite3.connect(db_path)
    with conn:  # as sqqueue with schema 1 left the file
        conn.execute(_SCHEMA_1_INSERT_TRIGGER)
        conn.execute("UPDATE sqqueue_queues SET schema_version = 1 WHERE name = 'jobs'")
    conn.close()

    queue = SQLiteQueue(db_path, table_name="jobs")
    assert "jobs_count_insert" not in schema_names(db_path)
    assert rows(db_path, "SELECT schema_version FROM sqqueue_queues WHERE name = 'jobs'") == [
        (sqlite_backend.SCHEMA_VERSION,)
    ]
    before = queue.stats().unwrap()
    [dead] = ok(queue.get_dead_letters())
    queue.reprocess_dead_letter(dead["id"]).unwrap()
    stats = queue.stats().unwrap()
    assert (stats.dead, stats.depth) == (before.dead - 1, before.depth + 1)
    assert stats.enqueued_total == before.enqueued_total
    assert stats.depth == len(message_statuses(queue)) - stats.dead
    queue.close()


def test_a_schema_2_queue_gets_the_result_column(tmp_path: Path, clock: Any) -> None:
    """Schema 2 kept completed messages without a result; opening such a file adds the
    column (old history reads as result None) and completes with results from then on."""
    db_path = tmp_path / "schema-2.db"
    db_path.write_bytes((LOCAL_FIXTURES / "sqqueue-schema-2.db").read_bytes())
    assert "result" not in {r[1] for r in rows(db_path, "PRAGMA table_info(jobs_done)")}
    [(old,)] = rows(db_path, "SELECT id FROM jobs_done")

    clock.advance(1000)  # past the fixture's times
    queue = SQLiteQueue(db_path, table_name="jobs", retention=3600, clock=clock)
    assert rows(db_path, "SELECT schema_version FROM sqqueue_queues WHERE name = 'jobs'") == [
        (sqlite_backend.SCHEMA_VERSION,)
    ]
    assert queue.get_message(old).unwrap()["result"] is None
    new = queue.dequeue().unwrap()
    queue.complete(new, result={"n": 2}).unwrap()
    assert queue.get_message(new.id).unwrap()["result"] == {"n": 2}
    queue.close()


def test_a_schema_3_queue_is_upgraded_and_its_messages_stay_as_they_were(
    tmp_path: Path, clock: Any
) -> None:
    """Schema 4 keeps updated_at in the ready index (it tells a message without a delay from
    a delayed one). Opening a schema 3 file rebuilds the index in place: every message stays
    as it was (ready, delayed, leased, waiting, dead), and the queue works on."""
    db_path = tmp_path / "schema-3.db"
    db_path.write_bytes((LOCAL_FIXTURES / "sqqueue-schema-2.db").read_bytes())
    conn = sqlite3.connect(db_path)
    with conn:  # as sqqueue with schema 3 left the file: schema 2, and results kept
        conn.execute('ALTER TABLE "jobs_done" ADD COLUMN result TEXT')
        conn.execute("UPDATE sqqueue_queues SET schema_version = 3 WHERE name = 'jobs'")
    conn.close()

    clock.advance(10)  # the fixture's leases (60 s) still run; message 3 is due again
    queue = SQLiteQueue(db_path, table_name="jobs", clock=clock)
    (index,) = rows(db_path, "SELECT sql FROM sqlite_master WHERE name = 'jobs#ready'")
    assert "updated_at" in index[0]
    assert rows(db_path, "SELECT schema_version FROM sqqueue_queues WHERE name = 'jobs'") == [
        (sqlite_backend.SCHEMA_VERSION,)
    ]
    stats = queue.stats().unwrap()
    assert (stats.ready, stats.delayed, stats.processing, stats.waiting, stats.dead) == (
        1,
        1,
        2,
        1,
        1,
    )
    first = queue.dequeue().unwrap()
    assert first is not None and first.id == 3
    assert rows(db_path, "PRAGMA integrity_check") == [("ok",)]
    queue.close()


def test_odd_0_1_0_times_are_read_exactly_or_not_at_all(tmp_path: Path, clock: Any) -> None:
    """A fraction just under a second stays in its second (strftime rounds it into the
    next), a Z or an offset is read as written, and text that is no time falls back to
    the migration's own clock, as a missing time does."""
    db_path = tmp_path / "odd.db"
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(legacy_ddl("orders"))
        conn.execute(
            "INSERT INTO orders (payload, visible_at, created_at, updated_at) VALUES (?, ?, ?, ?)",
            ("late", "2026-11-27 20:14:43.999600", "2026-11-27T20:14:43+02:00", "not a time"),
        )
    conn.close()
    with SQLiteQueue(db_path, table_name="orders", clock=clock):
        pass
    [(visible, created, updated)] = rows(
        db_path, "SELECT visible_at, created_at, updated_at FROM orders"
    )
    assert visible == legacy_time("2026-11-27 20:14:43.999600")
    assert created == datetime.fromisoformat("2026-11-27T20:14:43+02:00").timestamp()
    assert updated == pytest.approx(clock(), abs=5)


def test_a_0_1_0_message_with_no_attempt_left_is_migrated_dead(tmp_path: Path, clock: Any) -> None:
    """0.1.0 left a message that failed its last attempt pending, and its next dequeue
    dead-lettered it: migrated, it is a dead letter that says why, never run again."""
    db_path = tmp_path / "spent.db"
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(legacy_ddl("orders"))
        conn.executemany(
            "INSERT INTO orders (payload, status, attempts, max_attempts) VALUES (?, ?, ?, ?)",
            [("spent", "pending", 3, 3), ("one left", "pending", 2, 3)],
        )
    conn.close()
    with SQLiteQueue(db_path, table_name="orders", clock=clock) as queue:
        (dead,) = ok(queue.get_dead_letters())
        assert (dead["id"], dead["payload"], dead["attempts"]) == (1, "spent", 3)
        assert (
            dead["last_error"] == "migrated from sqqueue 0.1.0 with no attempt left (3 of 3 used)"
        )
        message = ok(queue.dequeue())
        assert (message.id, message.attempts) == (2, 3)


def test_migrate_refuses_a_0_1_0_name_it_no_longer_takes_before_changing_anything(
    tmp_path: Path,
) -> None:
    """0.1.0 took any name SQLite takes: migrating a file with one sqqueue refuses says
    how to rename its tables, and migrates nothing until then."""
    db_path = tmp_path / "names.db"
    conn = sqlite3.connect(db_path)
    with conn:
        for name in ("café_jobs", "plain"):
            conn.execute(legacy_ddl(name))
            conn.execute(f'INSERT INTO "{name}" (payload) VALUES (?)', (name,))
    conn.close()
    with pytest.raises(ValueError, match="rename its tables, then migrate") as raised:
        tools.migrate(db_path)
    assert 'ALTER TABLE "café_jobs" RENAME TO new_name' in str(raised.value)
    assert tools.legacy_queues(db_path) == ["café_jobs", "plain"]
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute('ALTER TABLE "café_jobs" RENAME TO cafe_jobs')
    conn.close()
    assert sorted(tools.migrate(db_path)) == ["cafe_jobs", "plain"]
    with SQLiteQueue(db_path, table_name="cafe_jobs") as queue:
        assert ok(queue.dequeue()).payload == "café_jobs"
