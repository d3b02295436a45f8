"""``salvage`` and ``copy`` keep every column of every row: messages (a leased one comes
back pending, without its lease), dead letters, kept history and deduplication keys.

The checks read the tables with plain SQL, every column, so a column added to the schema
is compared without being listed here."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings

from conftest import FakeClock, drop_schema
from helpers import ok
from sqqueue import Item, SQLiteQueue, connect
from sqqueue.backends import sqlite_sql
from sqqueue.tools import copy_queues, salvage

Rows = dict[str, list[dict[str, Any]]]


def stored(path: Path, name: str = "jobs") -> Rows:
    """Every row of every table of queue ``name``, every column (and the SQL type of
    payloads), by table role."""
    names = sqlite_sql.object_names(name)
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        tables: Rows = {}
        for role, key in (("q", "id"), ("dlq", "id"), ("done", "id"), ("body", "id")):
            tables[role] = [
                dict(r)
                for r in conn.execute(
                    f'SELECT *, typeof(payload) AS payload_type FROM "{names[role]}" ORDER BY {key}'
                )
            ]
        tables["dedup"] = [
            dict(r) for r in conn.execute(f'SELECT * FROM "{names["dedup"]}" ORDER BY key')
        ]
        return tables
    finally:
        conn.close()


def released(tables: Rows) -> Rows:
    """What a copy of ``tables`` holds: leased messages come back pending, lease-less."""
    out = dict(tables)
    out["q"] = [
        {**r, "status": "pending", "lease_token": None, "lease_expires_at": None}
        if r["status"] == "processing"
        else r
        for r in tables["q"]
    ]
    return out


def read_only_counts(path: Path, clock: FakeClock) -> tuple[int, ...]:
    """(pending + processing, delayed, waiting, dead, depth) of the queue "jobs" in the file
    ``path``, opened read-only: what a copy must agree on, which ``helpers.counts`` (ready,
    delayed, processing, dead, through a writable queue) does not cover."""
    with SQLiteQueue(path, "jobs", clock=clock, read_only=True) as queue:
        s = queue.stats().unwrap()
    return (s.pending + s.processing, s.delayed, s.waiting, s.dead, s.depth)


def with_search_path(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


# -- the regression: what salvage used to drop ---------------------------------------------------


def test_salvage_keeps_groups_expiry_and_prior_attempts(tmp_path: Path, clock: FakeClock) -> None:
    """After salvage a group still delivers its second message once the first is done, a
    time to live still holds, and prior attempts are still counted."""
    source, rescued = tmp_path / "damaged.db", tmp_path / "rescued.db"
    with SQLiteQueue(source, "jobs", clock=clock) as queue:
        again = queue.enqueue("again", max_attempts=1, priority=-1).unwrap()
        queue.fail_message(queue.dequeue().unwrap(), error="boom").unwrap()  # dead
        queue.reprocess_dead_letter(again).unwrap()
        first = queue.enqueue("first", group="customer-7").unwrap()
        second = queue.enqueue("second", group="customer-7").unwrap()
        queue.enqueue("expiring", ttl=60).unwrap()
        before = stored(source)
    assert salvage(source, rescued).complete
    assert stored(rescued) == before
    with SQLiteQueue(rescued, "jobs", clock=clock) as queue:
        statuses = {m["id"]: m for m in queue.list_messages("all").unwrap()}
        assert statuses[second]["status"] == "waiting" and statuses[second]["group"] == "customer-7"
        assert statuses[again]["prior_attempts"] == 1
        assert queue.stats().unwrap().waiting == 1
        head = queue.dequeue().unwrap()
        assert head.id == first
        queue.complete(head).unwrap()
        clock.advance(61)
        delivered = [m.payload for m in queue.dequeue_batch(10).unwrap()]
        assert delivered == ["second", "again"]
        assert any(
            "time to live" in (d["last_error"] or "") for d in queue.get_dead_letters().unwrap()
        )


# -- every column, for random queues ----------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_keys = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=8
)
_payload = st.one_of(
    _text,
    st.binary(max_size=20),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.just("large " * 23_000),  # stored apart from its row (over 128 KiB)
)
_enqueue = st.tuples(
    st.just("enqueue"),
    st.builds(
        Item,
        _payload,
        priority=st.integers(-3, 3),
        delay=st.sampled_from([None, 0, 30, 600]),
        max_attempts=st.integers(1, 3),
        ttl=st.sampled_from([None, 20, 3600]),
        group=st.one_of(st.none(), st.sampled_from(["g1", "g2"])),
        dedup_key=st.one_of(st.none(), _keys),
    ),
)
_operation = st.one_of(
    _enqueue,
    st.tuples(st.just("dequeue"), st.integers(1, 3)),
    st.tuples(st.just("complete"), st.just(None)),
    st.tuples(st.just("fail"), _text),
    st.tuples(st.just("bury"), st.just(None)),
    st.tuples(st.just("revive"), st.just(None)),
    st.tuples(st.just("advance"), st.sampled_from([5, 40, 700])),
)


def play(queue: SQLiteQueue, clock: FakeClock, operations: list[tuple[str, Any]]) -> None:
    """Run the operations; ones that do not apply (nothing leased, say) are skipped."""
    leased: list[Any] = []
    for op, arg in operations:
        if op == "enqueue":
            queue.enqueue_batch([arg]).unwrap()
        elif op == "dequeue":
            leased.extend(queue.dequeue_batch(arg, visibility_timeout=60).unwrap())
        elif op in ("complete", "fail", "bury") and leased:
            message = leased.pop(0)
            if op == "complete":
                queue.complete(message)
            else:
                queue.fail_message(message, error=arg, delay=10, send_to_dlq=op == "bury")
        elif op == "revive":
            dead = queue.get_dead_letters().unwrap()
            if dead:
                queue.reprocess_dead_letter(dead[0]["id"])
        elif op == "advance":
            clock.advance(arg)
            queue.recover_processing_messages()


@pytest.fixture
def schemas(pg_url: str) -> Iterator[Callable[[], str]]:
    """Fresh PostgreSQL schemas (created empty), dropped at the end."""
    made: list[str] = []
    counter = itertools.count()

    def make() -> str:
        name = f"copy_{id(made)}_{next(counter)}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        made.append(name)
        return name

    yield make
    for name in made:
        drop_schema(pg_url, name)


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=st.lists(_operation, max_size=25))
# A message leased past its time to live: a copy releases it to be dead-lettered.
@example(operations=[("enqueue", Item("x", ttl=20)), ("dequeue", 1), ("advance", 40)])
@pytest.mark.slow
def test_salvage_and_copy_keep_every_field(
    operations: list[tuple[str, Any]],
    tmp_path: Path,
    pg_url: str,
    schemas: Callable[[], str],
) -> None:
    """Random queues (groups, times to live, delays, retries, dead letters, history, dedup
    keys, leases, large payloads) come out of salvage, and of a copy to PostgreSQL and back,
    with every column of every row as it was (leased messages as pending)."""
    run = tmp_path / f"run-{next(_runs)}"
    run.mkdir()
    clock = FakeClock()
    source = run / "source.db"
    with SQLiteQueue(source, "jobs", clock=clock, retention=86400, dedup_window=300) as queue:
        play(queue, clock, operations)
    original = stored(source)
    expected = released(original)
    # A message past its time to live under a live lease stays with its consumer; once a
    # copy releases it, the next claim dead-letters it, and the copy's counts say so.
    n = sum(
        1
        for r in original["q"]
        if r["status"] == "processing" and r["expires_at"] is not None
        and r["expires_at"] <= clock()
    )  # fmt: skip
    held, delayed, waiting, dead, depth = read_only_counts(source, clock)
    counts = (held - n, delayed, waiting, dead + n, depth - n)

    report = salvage(source, run / "salvaged.db")
    assert report.complete, report  # (a sound file: every row read, none missing)
    assert stored(run / "salvaged.db") == expected
    assert read_only_counts(run / "salvaged.db", clock) == counts

    postgres = with_search_path(pg_url, schemas())
    copy_queues(f"sqlite:///{source}", postgres, ["jobs"])
    copy_queues(postgres, f"sqlite:///{run / 'back.db'}", ["jobs"])
    assert stored(run / "back.db") == expected
    assert read_only_counts(run / "back.db", clock) == counts
    assert stored(source) == original  # the source is only read


_runs = itertools.count()


def test_copy_keeps_history_and_dedup_keys(
    tmp_path: Path, pg_url: str, schemas: Callable[[], str], clock: FakeClock
) -> None:
    """A copy carries completed messages kept by retention and the deduplication keys:
    a duplicate enqueued into the copy is still recognised."""
    source = tmp_path / "source.db"
    with SQLiteQueue(source, "jobs", clock=clock, retention=86400) as queue:
        queue.enqueue("done").unwrap()
        queue.complete(queue.dequeue().unwrap()).unwrap()
        kept = queue.enqueue("once", dedup_key="order-42").unwrap()
    postgres = with_search_path(pg_url, schemas())
    report = copy_queues(f"sqlite:///{source}", postgres, ["jobs"])
    assert report == {"jobs": {"messages": 1, "dead": 0, "done": 1, "dedup": 1, "already": 0}}
    with connect(postgres, "jobs", clock=clock, retention=86400) as copied:
        assert copied.enqueue("twice", dedup_key="order-42").unwrap() == kept
        assert [d["payload"] for d in copied.get_completed().unwrap()] == ["done"]


def test_text_with_nul_characters_stays_text_through_postgresql(
    tmp_path: Path, pg_url: str, schemas: Callable[[], str], clock: FakeClock
) -> None:
    """PostgreSQL text cannot hold NUL, so such text is stored there as bytes: it still
    comes back as text, from the queue and from a copy back to SQLite (as a message, a
    dead letter and a completed message alike)."""
    source = tmp_path / "source.db"
    with SQLiteQueue(source, "jobs", clock=clock, retention=86400) as queue:
        ok(queue.enqueue("\x00"))
        ok(queue.enqueue("dead\x00letter", max_attempts=1))
        ok(queue.enqueue("done\x00"))
        ok(queue.enqueue(b"raw\x00bytes"))
        first, dying, done = ok(queue.dequeue_batch(3, visibility_timeout=60))
        ok(queue.fail_message(dying))
        ok(queue.complete(done))
        ok(queue.release(first))
    postgres = with_search_path(pg_url, schemas())
    copy_queues(f"sqlite:///{source}", postgres, ["jobs"])
    with connect(postgres, "jobs", clock=clock, retention=86400) as copied:
        assert [m["payload"] for m in ok(copied.list_messages())] == ["\x00", b"raw\x00bytes"]
        assert [d["payload"] for d in ok(copied.get_dead_letters())] == ["dead\x00letter"]
        assert [d["payload"] for d in ok(copied.get_completed())] == ["done\x00"]
    copy_queues(postgres, f"sqlite:///{tmp_path / 'back.db'}", ["jobs"])
    back = stored(tmp_path / "back.db")
    original = stored(source)
    for table in ("q", "dlq", "done"):
        assert [(r["payload"], r["payload_type"]) for r in back[table]] == [
            (r["payload"], r["payload_type"]) for r in original[table]
        ]


def test_copy_command_takes_the_schema_of_each_end(
    tmp_path: Path, pg_url: str, schemas: Callable[[], str], clock: FakeClock
) -> None:
    """--schema names the schema of the PostgreSQL ends (as for every command),
    --target-schema the target's when it differs: SQLite -> schema "a" -> schema "b"."""
    from click.testing import CliRunner

    from sqqueue import cli

    first, second = schemas(), schemas()
    source = tmp_path / "source.db"
    with SQLiteQueue(source, "jobs", clock=clock) as queue:
        ids = queue.enqueue_batch(["x", "y"]).unwrap()

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli.main, ["copy", *args])

    done = run(f"sqlite:///{source}", pg_url, "jobs", "--schema", first)
    assert done.exit_code == 0, done.output
    moved = run(pg_url, pg_url, "jobs", "--schema", first, "--target-schema", second)
    assert moved.exit_code == 0, moved.output
    again = run(pg_url, pg_url, "jobs", "--schema", first, "--target-schema", second)
    assert again.exit_code == 0 and "already copied" in again.output, again.output
    with connect(pg_url, "jobs", schema=second, read_only=True) as copied:
        assert [m["id"] for m in copied.list_messages("all").unwrap()] == ids
    refused = run(f"sqlite:///{source}", f"sqlite:///{tmp_path / 'b.db'}", "--schema", first)
    assert refused.exit_code == 2
    assert "apply to postgresql:// URLs only" in refused.output
