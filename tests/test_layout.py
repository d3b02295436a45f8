"""The tables of a queue: their names never collide with another queue's, files of the
previous layout are upgraded in place keeping every row, and the DDL printed for teams that
apply schema changes themselves is exactly what opening a queue expects."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from conftest import LOCAL_FIXTURES, FakeClock, QueueTarget
from helpers import message_statuses
from sqqueue import ErrorKind, PostgresQueue, Queue, QueueError, SQLiteQueue, cli
from sqqueue.backends import postgres_sql, sqlite_sql
from sqqueue.tools import migrate

# Suffixes that made a valid queue name out of another queue's table, index, primary key,
# sequence, trigger or function name.
SUFFIXES = [
    "_done",
    "_body",
    "_dedup",
    "_ready",
    "_leases",
    "_expiry",
    "_group",
    "_done_at",
    "_pkey",
    "_id_seq",
    "_dedup_pkey",
    "_count",
    "_group_next",
    "_highest_id",
]


def use(queue: Queue, payload: str) -> None:
    """Every table of the queue at work: history, dead letters, dedup keys, groups."""
    queue.enqueue(payload, dedup_key=payload, group="g").unwrap()
    queue.complete(queue.dequeue().unwrap()).unwrap()
    queue.enqueue(f"{payload} dies", max_attempts=1).unwrap()
    queue.fail_message(queue.dequeue().unwrap(), error="x").unwrap()
    queue.enqueue(payload).unwrap()


@pytest.mark.parametrize("first", ["base", "suffixed"])
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_queue_names_never_collide(
    make_queue: Callable[..., Queue], suffix: str, first: str
) -> None:
    """Queue ``a`` and queue ``a<suffix>`` live side by side in one database, whichever
    was created first, each with its own messages."""
    names = ["a", f"a{suffix}"] if first == "base" else [f"a{suffix}", "a"]
    queues = [make_queue(table_name=name, retention=3600) for name in names]
    for queue in queues:
        use(queue, queue.name)
    for queue in queues:
        assert [m["payload"] for m in queue.list_messages("all").unwrap()] == [queue.name]
        assert [d["payload"] for d in queue.get_completed().unwrap()] == [queue.name]
        assert queue.stats().unwrap().dead == 1


def test_long_names_never_collide(make_queue: Callable[..., Queue]) -> None:
    """PostgreSQL shortens long names with a hash; a queue named like a shortened name is
    still a queue of its own."""
    long_name = "q" * 63
    digest = __import__("hashlib").sha1(long_name.encode()).hexdigest()[:8]
    lookalike = f"{long_name[:50]}_{digest}"  # what the dead letters' name was shortened to
    for name in (long_name, lookalike):
        use(make_queue(table_name=name), name)
    for name in (long_name, lookalike):
        queue = make_queue(table_name=name)
        assert queue.stats().unwrap().dead == 1


def test_names_that_differ_only_in_case(
    make_queue: Callable[..., Queue], queue_target: QueueTarget
) -> None:
    """SQLite table names ignore case: ``A`` next to ``a`` is refused, naming both. On
    PostgreSQL (names are quoted, so case counts) they are two queues."""
    make_queue(table_name="a").enqueue("lower").unwrap()
    if queue_target.backend == "postgres":
        upper = make_queue(table_name="A")
        upper.enqueue("upper").unwrap()
        assert upper.dequeue().unwrap().payload == "upper"
        return
    for read_only in (False, True):
        with pytest.raises(QueueError) as info:
            make_queue(table_name="A", read_only=read_only)
        assert info.value.kind is ErrorKind.INVALID_INPUT
        assert "'A'" in str(info.value) and "'a'" in str(info.value)
        assert "case" in str(info.value)
    assert make_queue(table_name="a").dequeue().unwrap().payload == "lower"


# -- the previous layout --------------------------------------------------------------------------


def schema_2_file(tmp_path: Path) -> Path:
    db = tmp_path / "schema-2.db"
    db.write_bytes((LOCAL_FIXTURES / "sqqueue-schema-2.db").read_bytes())
    db.chmod(0o600)
    return db


def sqlite_rows(db: Path, names: dict[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(db)
    try:
        found = {
            role: conn.execute(f'SELECT * FROM "{names[role]}" ORDER BY 1').fetchall()
            for role in ("q", "dlq", "done", "dedup", "body")
        }
        found["counters"] = conn.execute("SELECT * FROM sqqueue_counters ORDER BY 1").fetchall()
        return found
    finally:
        conn.close()


def sqlite_objects(db: Path, name: str) -> set[tuple[str, str, str]]:
    """(type, name, SQL without comments nor spacing) of the objects of queue ``name``,
    the queue's name written as Q."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name = ? OR name LIKE ? "
            "OR tbl_name = ? OR tbl_name LIKE ?",
            (name, f"{name}_%", name, f"{name}#%"),
        ).fetchall()
    finally:
        conn.close()
    found = set()
    for kind, n, sql in rows:
        text = " ".join(re.sub(r"--[^\n]*", "", sql or "").split())
        text = re.sub(r" ?([,()]) ?", r"\1", text)  # (ALTER TABLE ADD COLUMN spaces it so)
        text = text.replace(f'"{name}', '"Q').replace(f"'{name}", "'Q")
        found.add((kind, n.replace(name, "Q"), text))
    return found


def test_previous_layout_is_upgraded_keeping_every_row(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening a queue of the previous layout renames its tables, indexes and triggers
    in one transaction: every row and counter stays as it was, the objects are those of a
    queue created now, and the queue works on. Other queues of the file wait for their
    own opening."""
    db = schema_2_file(tmp_path)
    before = sqlite_rows(db, sqlite_sql.object_names("jobs", 2))
    caplog.set_level(logging.INFO, logger="sqqueue")
    with SQLiteQueue(db, "jobs", clock=clock) as queue:
        assert any("upgraded queue 'jobs'" in r.getMessage() for r in caplog.records)
        after = sqlite_rows(db, sqlite_sql.object_names("jobs"))
        # (the history gained its result column on the way, and every message table its
        # signature column: NULL for rows kept before; jobs' counter of the messages in its
        # table is named for the depth it counts)
        signed = {table: [(*row, None) for row in before[table]] for table in ("q", "dlq")}
        done = [(*row, None, None) for row in before["done"]]
        counters = sorted(
            (name.replace("jobs#queued", "jobs#depth"), n) for name, n in before["counters"]
        )
        assert ("jobs#queued", -2) in before["counters"]  # (less what the fresh ids add)
        assert after == {**before, **signed, "done": done, "counters": counters}
        assert [m["id"] for m in message_statuses(queue)] == [2, 3, 4, 5, 6, 7]
        fresh = tmp_path / "fresh.db"
        SQLiteQueue(fresh, "jobs").close()
        assert sqlite_objects(db, "jobs") == sqlite_objects(fresh, "jobs")
        new = queue.enqueue("after the upgrade", dedup_key="ada").unwrap()
        assert new == 2  # the dedup key still holds: message 2 is ada's
    conn = sqlite3.connect(db)
    versions = dict(conn.execute("SELECT name, schema_version FROM sqqueue_queues"))
    conn.close()
    assert versions == {"jobs": sqlite_sql.SCHEMA_VERSION, "a": 2}


def test_a_name_taken_by_a_queue_of_the_previous_layout(tmp_path: Path, clock: FakeClock) -> None:
    """Before queue ``a`` is upgraded, its tables still have names a new queue could take:
    creating ``a_done`` says so and what to do; once ``a`` is opened, it works."""
    db = schema_2_file(tmp_path)
    with pytest.raises(QueueError) as info:
        SQLiteQueue(db, "a_done")
    message = str(info.value)
    assert info.value.kind is ErrorKind.INVALID_INPUT
    assert "'a_done'" in message and "queue 'a'" in message and "sqqueue migrate" in message
    SQLiteQueue(db, "a").close()
    with SQLiteQueue(db, "a_done") as queue:
        queue.enqueue("works").unwrap()
    with SQLiteQueue(db, "a", clock=clock) as queue:
        clock.advance(10)
        assert queue.dequeue().unwrap().payload == "in queue a"


def test_schema_5_depth_counter_is_renamed(tmp_path: Path, clock: FakeClock) -> None:
    """Schema 5 named the counter of the messages in a queue's table "queued"; opening
    the queue names it "depth", and the trigger that counts deletes counts that one."""
    db = tmp_path / "v5.db"
    with SQLiteQueue(db, "jobs", clock=clock) as queue:
        for n in range(3):
            queue.enqueue(f"m{n}").unwrap()
        queue.dequeue().unwrap()
    names = sqlite_sql.object_names("jobs")
    conn = sqlite3.connect(db)
    with conn:  # the layout schema 5 wrote
        conn.execute("UPDATE sqqueue_counters SET name = 'jobs#queued' WHERE name = 'jobs#depth'")
        conn.execute(f'DROP TRIGGER "{names["tr_delete"]}"')
        conn.execute(
            f'CREATE TRIGGER "{names["tr_delete"]}" AFTER DELETE ON "{names["q"]}" BEGIN '
            "UPDATE sqqueue_counters SET n = n - 1 WHERE name = 'jobs#queued'; END"
        )
        for table in ("q", "dlq", "done"):  # (schema 7's, added after)
            conn.execute(f'ALTER TABLE "{names[table]}" DROP COLUMN signature')
        conn.execute("UPDATE sqqueue_queues SET schema_version = 5")
    conn.close()
    with SQLiteQueue(db, "jobs", clock=clock) as queue:
        taken = queue.dequeue().unwrap()
        assert taken is not None and queue.stats().unwrap().depth == 3
        queue.complete(taken).unwrap()
        stats = queue.stats().unwrap()
        assert (stats.depth, stats.ready, stats.processing) == (2, 1, 1)
    conn = sqlite3.connect(db)
    counters = dict(conn.execute("SELECT name, n FROM sqqueue_counters WHERE name LIKE 'jobs#%'"))
    conn.close()
    assert "jobs#queued" not in counters and "jobs#depth" in counters
    fresh = tmp_path / "fresh.db"
    SQLiteQueue(fresh, "jobs").close()
    assert sqlite_objects(db, "jobs") == sqlite_objects(fresh, "jobs")


def test_migrate_upgrades_every_queue(tmp_path: Path) -> None:
    db = schema_2_file(tmp_path)
    assert sorted(migrate(db)) == ["a", "jobs"]
    assert migrate(db) == []
    result = CliRunner().invoke(cli.main, ["migrate", str(db)])
    assert result.exit_code == 0 and "nothing to migrate" in result.stdout


# PostgreSQL: the DDL of the previous layout, as that sqqueue printed it.
POSTGRES_SCHEMA_1: dict[str, list[str]] = json.loads(
    (LOCAL_FIXTURES / "postgres-schema-1.json").read_text(encoding="utf-8")
)


def postgres_objects(url: str, schema: str, name: str) -> set[tuple[str, str]]:
    """(kind, name) of every relation, key, trigger and function of the schema that
    belongs to queue ``name``, the queue's name written as Q. (CHECK and NOT NULL
    constraints are left out: their names are per table, PostgreSQL makes them up.)"""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT 'relation ' || c.relkind::text, c.relname FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s
            UNION ALL
            SELECT 'constraint ' || k.contype::text, k.conname FROM pg_constraint k
              JOIN pg_namespace n ON n.oid = k.connamespace
             WHERE n.nspname = %(s)s AND k.contype NOT IN ('c', 'n')  -- named per table
            UNION ALL
            SELECT 'trigger', t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = %(s)s AND NOT t.tgisinternal
            UNION ALL
            SELECT 'function', p.proname FROM pg_proc p
              JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %(s)s""",
            {"s": schema},
        ).fetchall()
    prefix = name[:40]
    return {(kind, n.replace(name, "Q")) for kind, n in rows if n.startswith(prefix)}


def run_postgres(url: str, schema: str, statements: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        conn.execute(f'SET search_path TO "{schema}"')
        for statement in statements:
            conn.execute(statement)


@pytest.mark.parametrize("name", ["jobs", "a" * 63])
def test_postgres_previous_layout_is_upgraded(
    pg_url: str, pg_schema: str, name: str, clock: FakeClock
) -> None:
    """A PostgreSQL queue of the previous layout is renamed in place when opened: its rows
    stay, its objects are those of a queue created now, ids continue."""
    run_postgres(pg_url, pg_schema, POSTGRES_SCHEMA_1[name])
    with pytest.raises(QueueError) as info:  # read-only: not upgraded, so refused
        PostgresQueue(pg_url, name, schema=pg_schema, clock=clock, read_only=True)
    assert info.value.kind is ErrorKind.READ_ONLY
    run_postgres(
        pg_url,
        pg_schema,
        [
            f"""INSERT INTO "{name}" (body_text, encoding, checksum, visible_at, max_attempts,
                                      created_at, updated_at)
                VALUES ('old', 'text', {__import__("zlib").crc32(b"old")}, 0, 5, 0, 0)"""
        ],
    )
    with PostgresQueue(pg_url, name, schema=pg_schema, clock=clock) as queue:
        message = queue.dequeue().unwrap()
        assert (message.id, message.payload) == (1, "old")
        queue.fail_message(message, send_to_dlq=True).unwrap()
        assert queue.enqueue("new").unwrap() == 2
        assert queue.stats().unwrap().dead == 1
    fresh = f"{pg_schema}_fresh"
    try:
        PostgresQueue(pg_url, name, schema=fresh).close()
        assert postgres_objects(pg_url, pg_schema, name) == postgres_objects(pg_url, fresh, name)
    finally:
        run_postgres(pg_url, fresh, [f'DROP SCHEMA "{fresh}" CASCADE'])


def test_postgres_schema_3_counters_renamed_keeping_grants(pg_url: str, pg_schema: str) -> None:
    """Schema 3 named the unleased count pending_count (and sqqueue_count's parameter
    pending): opening a queue renames both for every queue of the schema, and the
    function's privileges stay as they were (a role keeps its grant, PUBLIC gets none)."""
    role = f"{pg_schema}_worker"
    with PostgresQueue(pg_url, "jobs", schema=pg_schema) as queue:
        for n in range(3):
            queue.enqueue(f"m{n}").unwrap()
        queue.dequeue().unwrap()
    args = postgres_sql.COUNT_FN_ARGS
    old_function = postgres_sql.COUNT_FUNCTION.replace("unleased", "pending")
    run_postgres(
        pg_url,
        pg_schema,
        [
            f'DROP ROLE IF EXISTS "{role}"',
            f'CREATE ROLE "{role}"',
            "ALTER TABLE sqqueue_counters RENAME COLUMN unleased_count TO pending_count",
            f"DROP FUNCTION sqqueue_count({args})",
            old_function,
            f"REVOKE ALL ON FUNCTION sqqueue_count({args}) FROM PUBLIC",
            f'GRANT EXECUTE ON FUNCTION sqqueue_count({args}) TO "{role}"',
            "UPDATE sqqueue_queues SET schema_version = 3",
        ],
    )
    try:
        with PostgresQueue(pg_url, "jobs", schema=pg_schema) as queue:
            stats = queue.stats().unwrap()
            assert (stats.ready, stats.processing) == (2, 1)
            queue.enqueue("after").unwrap()
            assert queue.stats().unwrap().ready == 3
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{pg_schema}"')
            columns = {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = 'sqqueue_counters'",
                    (pg_schema,),
                )
            }
            assert "unleased_count" in columns and "pending_count" not in columns
            granted = conn.execute(
                "SELECT has_function_privilege(%s, %s, 'EXECUTE')",
                (role, f"{pg_schema}.sqqueue_count({args})"),
            ).fetchone()
            assert granted == (True,)
            public = conn.execute(  # revoked from PUBLIC before, and still
                "SELECT count(*) FROM pg_proc, "
                "aclexplode(coalesce(proacl, acldefault('f', proowner))) AS a "
                "WHERE pg_proc.oid = to_regprocedure(%s) AND a.grantee = 0",
                (f"{pg_schema}.sqqueue_count({args})",),
            ).fetchone()
            assert public == (0,)
            names = conn.execute(
                "SELECT proargnames FROM pg_proc WHERE proname = 'sqqueue_count' "
                "AND pronamespace = %s::regnamespace",
                (pg_schema,),
            ).fetchone()
            assert names is not None and names[0][1] == "unleased"
    finally:
        run_postgres(
            pg_url, pg_schema, [f"DROP FUNCTION sqqueue_count({args})", f'DROP ROLE "{role}"']
        )


def test_postgres_name_taken_by_a_queue_of_the_previous_layout(pg_url: str, pg_schema: str) -> None:
    run_postgres(pg_url, pg_schema, POSTGRES_SCHEMA_1["a"])
    with pytest.raises(QueueError) as info:
        PostgresQueue(pg_url, "a_done", schema=pg_schema)
    assert "queue 'a'" in str(info.value)
    PostgresQueue(pg_url, "a", schema=pg_schema).close()
    with PostgresQueue(pg_url, "a_done", schema=pg_schema) as queue:
        queue.enqueue("works").unwrap()


# -- migrate --sql ------------------------------------------------------------------------------


def sqlite_snapshot(connect: Callable[[], sqlite3.Connection]) -> list[Any]:
    conn = connect()
    try:
        return [
            conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY 2"
            ).fetchall(),
            conn.execute("SELECT * FROM sqqueue_queues").fetchall(),
            conn.execute("SELECT * FROM sqqueue_counters ORDER BY 1").fetchall(),
        ]
    finally:
        conn.close()


def postgres_snapshot(url: str, schema: str) -> list[Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        return [
            sorted(postgres_objects(url, schema, "jobs")),
            conn.execute("SELECT * FROM sqqueue_queues").fetchall(),
            conn.execute("SELECT * FROM sqqueue_counters ORDER BY 1, 2").fetchall(),
        ]


def test_printed_ddl_then_opening_changes_nothing(
    queue_target: QueueTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """`sqqueue migrate --sql` prints the current layout with the current schema version:
    applying it by hand, then opening the queue, changes nothing, and the queue works."""
    url = queue_target.url if queue_target.backend == "postgres" else "sqlite:///x.db"
    printed = CliRunner().invoke(cli.main, ["migrate", "--sql", url, "--queue", "jobs"])
    assert printed.exit_code == 0, printed.output
    version = (
        postgres_sql.SCHEMA_VERSION
        if queue_target.backend == "postgres"
        else sqlite_sql.SCHEMA_VERSION
    )
    assert f"'jobs', {version}," in printed.stdout
    if queue_target.backend == "sqlite":
        conn = queue_target.sqlite_connection()
        conn.executescript(printed.stdout)
        conn.close()
        snapshot: Callable[[], list[Any]] = lambda: sqlite_snapshot(  # noqa: E731
            queue_target.sqlite_connection
        )
    else:
        with psycopg.connect(queue_target.url, autocommit=True) as pg:
            pg.execute(f'CREATE SCHEMA "{queue_target.schema}"')
            pg.execute(f'SET search_path TO "{queue_target.schema}"')
            pg.execute(printed.stdout.encode())
        snapshot = lambda: postgres_snapshot(queue_target.url, str(queue_target.schema))  # noqa: E731
    before = snapshot()
    caplog.set_level(logging.INFO, logger="sqqueue")
    with queue_target.open("jobs") as queue:
        assert snapshot() == before
        queue.enqueue("works").unwrap()
        assert queue.dequeue().unwrap().payload == "works"
    assert not [r for r in caplog.records if "upgraded" in r.getMessage()]
