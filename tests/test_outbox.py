"""enqueue_in with what applications hold: a driver connection whose transaction has not
written yet, and SQLAlchemy's Connection and Session (on SQLite and PostgreSQL).

SQLAlchemy is a test dependency only; the core never imports it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from conftest import QueueTarget
from helpers import err_text, message_statuses, ok
from sqqueue import ErrorKind, PostgresQueue, Queue


@pytest.fixture
def engine(queue_target: QueueTarget) -> Iterator[sa.Engine]:
    """The application's SQLAlchemy engine on the queue's database, with an orders table
    (on PostgreSQL in the test's schema, where the queue is)."""
    if queue_target.backend == "sqlite" and queue_target.key is not None:
        # An encrypted file: SQLCipher connections, keyed (the file's pool, as for a file).
        made = sa.create_engine(
            "sqlite://", creator=queue_target.sqlite_connection, poolclass=sa.pool.QueuePool
        )
    elif queue_target.backend == "sqlite":
        made = sa.create_engine(queue_target.url)
    else:
        url = queue_target.url.replace("postgresql://", "postgresql+psycopg://", 1)
        options = {"options": f"-csearch_path={queue_target.schema}"}
        made = sa.create_engine(url, connect_args=options)
    queue_target.run_sql(["CREATE TABLE orders (id INTEGER PRIMARY KEY)"])
    yield made
    made.dispose()


@pytest.fixture
def outbox(make_queue: Callable[..., Queue], engine: sa.Engine) -> Queue:
    return make_queue(table_name="jobs")


def orders(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.text("SELECT id FROM orders ORDER BY id"))]


def payloads(queue: Queue) -> list[Any]:
    return [row["payload"] for row in ok(queue.list_messages("all"))]


def insert_order(conn: sa.Connection | Session, order: int) -> None:
    conn.execute(sa.text("INSERT INTO orders (id) VALUES (:id)"), {"id": order})


def test_sqlalchemy_connection_commits_and_rolls_back_with_the_rows(
    outbox: Queue, engine: sa.Engine
) -> None:
    with engine.begin() as conn:
        insert_order(conn, 1)
        ok(outbox.enqueue_in(conn, {"order": 1}))
        assert payloads(outbox) == []  # not committed yet
    with engine.connect() as conn:
        conn.begin()
        insert_order(conn, 2)
        ok(outbox.enqueue_in(conn, {"order": 2}))
        conn.rollback()  # the request failed
    assert orders(engine) == [1]
    assert payloads(outbox) == [{"order": 1}]


def test_sqlalchemy_transaction_that_has_not_written_yet_is_joined(
    outbox: Queue, engine: sa.Engine
) -> None:
    """The message first, the row after: the driver has not begun a transaction yet
    (pysqlite and psycopg begin lazily); the message must still commit with the row."""
    with engine.begin() as conn:
        ok(outbox.enqueue_in(conn, {"order": 3}))
        insert_order(conn, 3)
    with engine.connect() as conn:
        conn.begin()
        ok(outbox.enqueue_in(conn, {"order": 4}))
        conn.rollback()  # changed my mind
    assert orders(engine) == [3]
    assert payloads(outbox) == [{"order": 3}]


def test_sqlalchemy_session_and_pooled_connection(outbox: Queue, engine: sa.Engine) -> None:
    with Session(engine) as session, session.begin():
        ok(outbox.enqueue_in(session, {"order": 5}))
        insert_order(session, 5)
    with engine.begin() as conn:
        insert_order(conn, 6)
        ok(outbox.enqueue_in(conn.connection, {"order": 6}))  # what conn.connection gives
    assert orders(engine) == [5, 6]
    assert payloads(outbox) == [{"order": 5}, {"order": 6}]


def test_sqlalchemy_connection_without_a_transaction_is_refused(
    outbox: Queue, engine: sa.Engine
) -> None:
    """Its commit() would be a no-op and the message rolled back in the pool: refused,
    saying how to open one."""
    with engine.connect() as conn:
        text = err_text(outbox.enqueue_in(conn, "x"), ErrorKind.INVALID_INPUT)
    assert "engine.begin()" in text and "conn.begin()" in text
    assert "_ConnectionFairy" not in text
    assert payloads(outbox) == []


def test_something_else_names_what_to_pass(outbox: Queue) -> None:
    text = err_text(outbox.enqueue_in(object(), "x"), ErrorKind.INVALID_INPUT)
    assert "SQLAlchemy Session or Connection" in text


# -- driver connections -----------------------------------------------------------------------


@pytest.mark.plain_file("joins a stdlib sqlite3 transaction, which has no key")
def test_sqlite3_transaction_not_written_yet_is_joined(sqlite_queue: Queue) -> None:
    """sqlite3 (legacy transaction control) opens a transaction at the first write: a
    message enqueued before any write commits or rolls back with the caller."""
    path = sqlite_queue.db_path  # type: ignore[attr-defined]
    conn = sqlite3.connect(path)
    try:
        assert not conn.in_transaction
        ok(sqlite_queue.enqueue_in(conn, "rolled back"))
        assert conn.in_transaction
        conn.rollback()
        ok(sqlite_queue.enqueue_in(conn, "committed"))
        conn.commit()
    finally:
        conn.close()
    assert [row["payload"] for row in ok(sqlite_queue.list_messages("all"))] == ["committed"]
    assert len(message_statuses(sqlite_queue)) == 1


def test_psycopg_connection_on_its_own_search_path_writes_to_the_queues_schema(
    pg_url: str, pg_schema: str
) -> None:
    """A plain connection (its search path the server's default) joined by a queue in a
    schema: the message goes to that queue, whatever queue of the same name the default
    path holds, and the caller's own statements still see their own tables after it."""
    import psycopg

    with (
        PostgresQueue(pg_url, "jobs", schema=pg_schema) as queue,
        PostgresQueue(pg_url, "jobs", schema=f"{pg_schema}_other") as decoy,
    ):
        with psycopg.connect(pg_url, options=f"-csearch_path={pg_schema}_other") as conn:
            ok(queue.enqueue_in(conn, "outbox"))
            path = conn.execute("SELECT current_setting('search_path')").fetchone()
            assert path == (f"{pg_schema}_other",)
            conn.commit()
        assert payloads(queue) == ["outbox"]
        assert payloads(decoy) == []
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{pg_schema}_other" CASCADE')


def test_a_queue_found_on_its_own_search_path_gets_the_outbox_message(
    pg_url: str, pg_schema: str
) -> None:
    """No schema=: the queue's tables are where its own connections find them (here the
    URL's search path), and enqueue_in writes there, whatever the caller's path says."""
    import urllib.parse

    import psycopg

    other = f"{pg_schema}_caller"
    sep = "&" if "?" in pg_url else "?"
    options = urllib.parse.quote(f"-csearch_path={pg_schema}")
    url = f"{pg_url}{sep}options={options}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA IF NOT EXISTS "{pg_schema}"')
    try:
        with (
            PostgresQueue(url, "jobs") as queue,
            PostgresQueue(pg_url, "jobs", schema=other) as decoy,
        ):
            with psycopg.connect(pg_url, options=f"-csearch_path={other}") as conn:
                ok(queue.enqueue_in(conn, "outbox"))
                conn.commit()
            assert payloads(queue) == ["outbox"]
            assert payloads(decoy) == []
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{other}" CASCADE')


def test_psycopg_transaction_not_started_yet_is_joined(pg_url: str, pg_schema: str) -> None:
    """psycopg (outside autocommit) begins at the first statement: joined likewise. In
    autocommit mode there is no transaction to join: refused, saying how to open one."""
    import psycopg

    options = f"-csearch_path={pg_schema}"
    with PostgresQueue(pg_url, "jobs", schema=pg_schema) as queue:
        with psycopg.connect(pg_url, options=options) as conn:
            ok(queue.enqueue_in(conn, "rolled back"))
            conn.rollback()
            ok(queue.enqueue_in(conn, "committed"))
            conn.commit()
        with psycopg.connect(pg_url, options=options, autocommit=True) as auto:
            text = err_text(queue.enqueue_in(auto, "x"), ErrorKind.INVALID_INPUT)
            assert "conn.transaction()" in text
        assert payloads(queue) == ["committed"]
