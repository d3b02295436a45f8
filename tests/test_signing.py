"""Signed messages: a queue with a signing key signs what it enqueues and delivers only
what verifies; anything else is dead-lettered as "signature invalid" and the next valid
message is delivered in the same call."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import LOCAL_FIXTURES, FakeClock, QueueTarget
from sqqueue import Item, PostgresQueue, Queue, SQLiteQueue, connect
from sqqueue.aio import AsyncQueue, AsyncSQLiteQueue, connect_async
from sqqueue.signing import SigningKeys, canonical, resolve_signing_key
from sqqueue.tools import copy_queues, salvage

KEY = "correct horse battery staple"
OTHER = b"\x01" * 32


def dead_errors(queue: Queue) -> dict[int, str]:
    return {d["id"]: d["last_error"] for d in queue.list_messages("dead").unwrap()}


def alter(target: QueueTarget, message_id: int, field: str) -> None:
    """Change one covered field of a stored message by hand, as a writer of the database
    without the key would."""
    payload = "body_text" if target.backend == "postgres" else "payload"
    change = {
        "payload": f"""{payload} = '"evil"'""",
        "priority": "priority = priority + 1",
        "group": "group_key = 'other'",
        "max_attempts": "max_attempts = max_attempts + 10",
        "encoding": "encoding = 'bytes'",
    }[field]
    target.run_sql([f"UPDATE jobs SET {change} WHERE id = {message_id}"])


def test_signed_round_trip_and_a_keyless_reader(make_queue: Callable[..., Queue]) -> None:
    signing = make_queue(table_name="jobs", signing_key=KEY)
    ids = [signing.enqueue({"n": 1}).unwrap(), *signing.enqueue_batch(["a", b"\x00b"]).unwrap()]
    ids += signing.enqueue_batch([Item("grouped", group="g", priority=3, max_attempts=2)]).unwrap()
    delivered = signing.dequeue_batch(10).unwrap()
    assert sorted(m.id for m in delivered) == sorted(ids)
    assert dead_errors(signing) == {}
    assert signing.stats().unwrap().signature_invalid == 0


@pytest.mark.parametrize("field", ["payload", "priority", "group", "max_attempts", "encoding"])
def test_an_altered_row_is_dead_lettered_and_the_next_is_delivered(
    make_queue: Callable[..., Queue],
    queue_target: QueueTarget,
    field: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = make_queue(table_name="jobs", signing_key=KEY)
    forged = queue.enqueue('"real"', priority=5, group="g", max_attempts=3).unwrap()
    good = queue.enqueue("next").unwrap()
    alter(queue_target, forged, field)
    caplog.set_level(logging.DEBUG, logger="sqqueue")
    message = queue.dequeue().unwrap()
    assert message is not None and message.id == good
    assert dead_errors(queue) == {forged: "signature invalid"}
    assert queue.stats().unwrap().signature_invalid == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(forged) in r.getMessage() and "'jobs'" in r.getMessage() for r in warnings)
    assert not any("evil" in r.getMessage() or KEY in r.getMessage() for r in caplog.records)


@pytest.fixture
def statsd_socket() -> Iterator[socket.socket]:
    """A UDP socket on 127.0.0.1 standing in for a statsd server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def statsd_lines(sock: socket.socket, wanted: set[str], seconds: float = 5) -> set[str]:
    """statsd lines received until every one of ``wanted`` came (or the time is up)."""
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while not wanted <= seen and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            seen.update(sock.recv(65536).decode().splitlines())
        except TimeoutError:
            break
    return seen


def test_a_refusal_is_counted_in_statsd(
    make_queue: Callable[..., Queue], queue_target: QueueTarget, statsd_socket: socket.socket
) -> None:
    port = statsd_socket.getsockname()[1]
    queue = make_queue(
        table_name="jobs", signing_key=KEY, statsd_host="127.0.0.1", statsd_port=port
    )
    forged = queue.enqueue("real").unwrap()
    alter(queue_target, forged, "payload")
    assert queue.dequeue().unwrap() is None
    assert dead_errors(queue) == {forged: "signature invalid"}
    wanted = {"sqqueue.jobs.signature_invalid:1|c", "sqqueue.jobs.dead_letter:1|c"}
    seen = statsd_lines(statsd_socket, wanted)
    assert wanted <= seen, f"missing {wanted - seen}; got {seen}"
    assert not any(KEY in line or "evil" in line for line in seen)


def test_changes_outside_the_signature_keep_it_valid(
    make_queue: Callable[..., Queue], queue_target: QueueTarget, clock: FakeClock
) -> None:
    """Retries change attempts, visibility and the last error; none of them is covered."""
    queue = make_queue(table_name="jobs", signing_key=KEY)
    first = queue.enqueue("work", max_attempts=3).unwrap()
    queue.fail_message(queue.dequeue().unwrap(), error="boom", delay=5).unwrap()
    clock.advance(6)
    queue_target.run_sql([f"UPDATE jobs SET last_error = 'edited' WHERE id = {first}"])
    again = queue.dequeue().unwrap()
    assert again is not None and again.id == first and again.attempts == 2


def test_unsigned_rows_are_refused_or_accepted_when_asked(
    make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    keyless = make_queue(table_name="jobs")
    unsigned = keyless.enqueue("from before").unwrap()
    strict = make_queue(table_name="jobs", signing_key=KEY)
    assert strict.dequeue().unwrap() is None
    assert dead_errors(strict) == {unsigned: "signature invalid"}

    later = keyless.enqueue("also unsigned").unwrap()
    lenient = make_queue(table_name="jobs", signing_key=KEY, accept_unsigned=True)
    caplog.set_level(logging.INFO, logger="sqqueue")
    message = lenient.dequeue().unwrap()
    assert message is not None and message.id == later
    assert lenient.stats().unwrap().unsigned_accepted == 1
    assert any("accept_unsigned" in r.getMessage() for r in caplog.records)
    # A signature that does not match is refused even then.
    lenient.enqueue("signed").unwrap()
    forged = make_queue(table_name="jobs", signing_key=OTHER).enqueue("forged").unwrap()
    lenient.dequeue_batch(10).unwrap()
    assert dead_errors(lenient)[forged] == "signature invalid"


def test_rotation_old_keys_verify_the_first_signs(make_queue: Callable[..., Queue]) -> None:
    old = make_queue(table_name="jobs", signing_key="old key")
    by_old = old.enqueue("signed with the old key").unwrap()
    rotating = make_queue(table_name="jobs", signing_key=["new key", "old key"])
    message = rotating.dequeue().unwrap()
    assert message is not None and message.id == by_old
    rotating.complete(message).unwrap()
    by_new = rotating.enqueue("signed with the new key").unwrap()
    new = make_queue(table_name="jobs", signing_key="new key")
    message = new.dequeue().unwrap()
    assert message is not None and message.id == by_new
    new.release(message).unwrap()
    assert old.dequeue().unwrap() is None  # the old key alone does not verify the new one
    assert dead_errors(old) == {by_new: "signature invalid"}


def test_a_batch_returns_the_valid_messages(
    make_queue: Callable[..., Queue], queue_target: QueueTarget
) -> None:
    queue = make_queue(table_name="jobs", signing_key=KEY)
    ids = queue.enqueue_batch([f"m{i}" for i in range(5)]).unwrap()
    make_queue(table_name="jobs").enqueue("unsigned").unwrap()
    alter(queue_target, ids[1], "priority")
    alter(queue_target, ids[3], "payload")
    got = queue.dequeue_batch(10).unwrap()
    assert [m.id for m in got] == [ids[0], ids[2], ids[4]]
    assert len(dead_errors(queue)) == 3
    assert queue.stats().unwrap().signature_invalid == 3


def test_only_invalid_rows_still_end_the_call(make_queue: Callable[..., Queue]) -> None:
    """With nothing valid left, a dequeue returns None after setting every row aside."""
    make_queue(table_name="jobs").enqueue_batch(["x", "y"]).unwrap()
    queue = make_queue(table_name="jobs", signing_key=KEY)
    assert queue.dequeue().unwrap() is None
    assert sorted(dead_errors(queue).values()) == ["signature invalid"] * 2


def test_peek_sets_an_invalid_row_aside(make_queue: Callable[..., Queue]) -> None:
    bad = make_queue(table_name="jobs").enqueue("unsigned", priority=9).unwrap()
    queue = make_queue(table_name="jobs", signing_key=KEY)
    good = queue.enqueue("signed").unwrap()
    peeked = queue.peek().unwrap()
    assert peeked is not None and peeked.id == good
    assert dead_errors(queue) == {bad: "signature invalid"}


def test_redrive_keeps_the_signature_and_never_launders(
    make_queue: Callable[..., Queue],
) -> None:
    queue = make_queue(table_name="jobs", signing_key=KEY)
    failed = queue.enqueue("work", max_attempts=1).unwrap()
    queue.fail_message(queue.dequeue().unwrap(), error="boom").unwrap()
    forged = make_queue(table_name="jobs").enqueue("injected").unwrap()
    assert queue.dequeue().unwrap() is None
    assert dead_errors(queue) == {failed: "boom", forged: "signature invalid"}
    queue.redrive().unwrap()
    message = queue.dequeue().unwrap()
    assert message is not None and message.id == failed
    assert queue.dequeue().unwrap() is None  # the forged one is refused again
    assert dead_errors(queue) == {forged: "signature invalid"}


def test_redrive_into_another_queue_that_shares_the_key(make_queue: Callable[..., Queue]) -> None:
    make_queue(table_name="retry", signing_key=KEY)
    queue = make_queue(table_name="jobs", signing_key=KEY)
    queue.enqueue("work", max_attempts=1, priority=4).unwrap()
    queue.fail_message(queue.dequeue().unwrap(), error="boom").unwrap()
    queue.redrive(to_queue="retry").unwrap()
    other = make_queue(table_name="retry", signing_key=KEY)
    message = other.dequeue().unwrap()
    assert message is not None and message.payload == "work" and message.priority == 4


def test_the_outbox_signs(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "jobs.db"
    with SQLiteQueue(path, "jobs", clock=clock, signing_key=KEY) as queue:
        conn = sqlite3.connect(path)
        queue.enqueue_in(conn, "in my transaction").unwrap()
        queue.enqueue_in(conn, "grouped", group="g").unwrap()
        conn.commit()
        conn.close()
        assert [m.payload for m in queue.dequeue_batch(5).unwrap()] == [
            "in my transaction",
            "grouped",
        ]


def test_large_bodies_are_signed_over_their_body(
    make_queue: Callable[..., Queue], queue_target: QueueTarget
) -> None:
    queue = make_queue(table_name="jobs", signing_key=KEY)
    body = b"x" * (200 * 1024)
    big = queue.enqueue(body).unwrap()
    message = queue.dequeue().unwrap()
    assert message is not None and message.id == big and message.payload == body
    queue.release(message).unwrap()
    if queue_target.backend == "sqlite":
        queue_target.run_sql([f"UPDATE \"jobs#body\" SET payload = x'00' WHERE id = {big}"])
    else:
        queue_target.run_sql([f"UPDATE jobs SET body_bytes = '\\x00' WHERE id = {big}"])
    assert queue.dequeue().unwrap() is None
    assert dead_errors(queue) == {big: "signature invalid"}


def test_copy_and_salvage_keep_signatures(tmp_path: Path, clock: FakeClock) -> None:
    """copy and salvage carry the signature column: what they write still verifies."""
    url = str(tmp_path / "source.db")
    with SQLiteQueue(url, "jobs", clock=clock, signing_key=KEY) as source:
        source.enqueue("copied").unwrap()
        source.enqueue("grouped", group="g", priority=2).unwrap()
    copied = tmp_path / "copy.db"
    copy_queues(f"sqlite:///{url}", f"sqlite:///{copied}")
    rescued = tmp_path / "rescued.db"
    salvage(url, rescued)
    for path in (copied, rescued):
        with SQLiteQueue(path, "jobs", clock=clock, signing_key=KEY) as queue:
            got = queue.dequeue_batch(5).unwrap()
            assert sorted(m.payload for m in got) == ["copied", "grouped"]
            assert dead_errors(queue) == {}


def test_the_outbox_signs_on_postgresql(pg_url: str, pg_schema: str) -> None:
    """enqueue_in on the caller's psycopg connection signs as enqueue does: the rows
    carry a signature, verify, and one altered after its commit is refused."""
    import psycopg

    with (
        PostgresQueue(pg_url, "jobs", schema=pg_schema, signing_key=KEY) as queue,
        psycopg.connect(pg_url, options=f"-csearch_path={pg_schema}") as conn,
    ):
        with conn.transaction():
            kept = [
                queue.enqueue_in(conn, "in my transaction").unwrap(),
                queue.enqueue_in(conn, b"\x00bytes").unwrap(),
                queue.enqueue_in(conn, {"order": 42}, priority=2, group="g").unwrap(),
            ]
            forged = queue.enqueue_in(conn, "real", max_attempts=3).unwrap()
        with conn.transaction():
            stored = conn.execute("SELECT signature FROM jobs ORDER BY id").fetchall()
            conn.execute("UPDATE jobs SET body_text = 'altered' WHERE id = %s", (forged,))
        assert len(stored) == 4 and all(row[0].startswith("v1:") for row in stored)
        got = sorted(queue.dequeue_batch(10).unwrap(), key=lambda m: m.id)
        assert [m.id for m in got] == kept
        assert [m.payload for m in got] == ["in my transaction", b"\x00bytes", {"order": 42}]
        assert dead_errors(queue) == {forged: "signature invalid"}


COPIED: list[Any] = ["text", b"\x00bytes", {"json": [1, 2]}, "NUL \x00 in text"]


def _fill_signed(queue: Queue) -> tuple[list[int], int]:
    """Signed messages of every kind, one grouped and one large; and the id of one more,
    to be altered by hand."""
    ids = [queue.enqueue(payload).unwrap() for payload in COPIED]
    ids.append(queue.enqueue("grouped", priority=2, max_attempts=3, group="g").unwrap())
    ids.append(queue.enqueue(b"x" * (200 * 1024)).unwrap())  # a body kept apart
    return ids, queue.enqueue("real").unwrap()


@pytest.mark.parametrize("direction", ["sqlite-to-postgresql", "postgresql-to-sqlite"])
def test_copy_between_backends_keeps_signatures_and_launders_nothing(
    tmp_path: Path, pg_url: str, pg_schema: str, direction: str
) -> None:
    """The target queue, with the same key, delivers every copied message (text, bytes,
    JSON, grouped, a large body); one altered in the source before the copy is refused
    there as it would have been in the source."""
    import psycopg

    sqlite_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    source, target = (
        (sqlite_url, pg_url) if direction == "sqlite-to-postgresql" else (pg_url, sqlite_url)
    )

    def schema_of(url: str) -> str | None:
        return pg_schema if url == pg_url else None

    def opened(url: str) -> Queue:
        at = {"schema": pg_schema} if url == pg_url else {}
        return connect(url, "jobs", signing_key=KEY, **at)

    with opened(source) as queue:
        ids, forged = _fill_signed(queue)
    if source == sqlite_url:
        with sqlite3.connect(tmp_path / "jobs.db") as conn:
            conn.execute("UPDATE jobs SET payload = 'altered' WHERE id = ?", (forged,))
        conn.close()
    else:
        with psycopg.connect(pg_url, options=f"-csearch_path={pg_schema}") as pg:
            pg.execute("UPDATE jobs SET body_text = 'altered' WHERE id = %s", (forged,))
    copy_queues(
        source, target, ["jobs"], source_schema=schema_of(source), target_schema=schema_of(target)
    )
    with opened(target) as copied:
        got = sorted(copied.dequeue_batch(10).unwrap(), key=lambda m: m.id)
        assert [m.id for m in got] == ids
        assert [m.payload for m in got[: len(COPIED)]] == COPIED
        grouped, large = got[len(COPIED) :]
        assert (grouped.payload, grouped.priority, grouped.max_attempts) == ("grouped", 2, 3)
        assert large.payload == b"x" * (200 * 1024)
        assert dead_errors(copied) == {forged: "signature invalid"}
        assert copied.stats().unwrap().signature_invalid == 1


def test_worker_and_async_paths_verify(make_queue: Callable[..., Queue]) -> None:
    from sqqueue import Worker

    make_queue(table_name="jobs").enqueue("unsigned").unwrap()
    queue = make_queue(table_name="jobs", signing_key=KEY)
    queue.enqueue("for the worker").unwrap()
    seen: list[Any] = []

    def handle(message: Any) -> None:
        seen.append(message.payload)
        worker.stop()

    worker = Worker(queue, handle, concurrency=2, poll_wait=0.05)
    worker.run()
    assert seen == ["for the worker"]
    assert list(dead_errors(queue).values()) == ["signature invalid"]

    make_queue(table_name="jobs").enqueue("unsigned again").unwrap()
    queue.enqueue("for asyncio").unwrap()

    async def consume() -> Any:
        return (await AsyncQueue(queue).dequeue()).unwrap()

    message = asyncio.run(consume())
    assert message is not None and message.payload == "for asyncio"
    assert list(dead_errors(queue).values()) == ["signature invalid"] * 2


# -- keys: arguments, environment, files, secrecy ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("", "empty"),
        (b"", "empty"),
        ([], "empty list"),
        (42, "int"),
        (["ok", 7], "signing_key[1]"),
        ([""], "signing_key[0] is empty"),
    ],
)
def test_invalid_keys_raise_at_construction(tmp_path: Path, value: Any, said: str) -> None:
    with pytest.raises(ValueError, match=said.replace("[", r"\[").replace("]", r"\]")):
        SQLiteQueue(tmp_path / "jobs.db", "jobs", signing_key=value)
    with pytest.raises(ValueError, match="accept_unsigned"):
        SQLiteQueue(tmp_path / "jobs.db", "jobs", signing_key=KEY, accept_unsigned="yes")


NEEDS_KEY = "accept_unsigned=True needs a signing key"


def test_accept_unsigned_without_a_key_is_refused(tmp_path: Path) -> None:
    """Without a key nothing is verified: accept_unsigned would be ignored without a word.
    Every way to open a queue refuses it before anything is opened."""
    path = tmp_path / "jobs.db"
    with pytest.raises(ValueError, match=NEEDS_KEY) as refused:
        SQLiteQueue(path, "jobs", accept_unsigned=True)
    assert "SQQUEUE_SIGNING_KEY" in str(refused.value)
    with pytest.raises(ValueError, match=NEEDS_KEY):
        connect(f"sqlite:///{path}", "jobs", accept_unsigned=True)
    with pytest.raises(ValueError, match=NEEDS_KEY):
        AsyncSQLiteQueue(path, "jobs", accept_unsigned=True)
    with pytest.raises(ValueError, match=NEEDS_KEY):
        asyncio.run(connect_async(str(path), "jobs", accept_unsigned=True))
    assert not path.exists()


def test_accept_unsigned_without_a_key_on_each_backend(make_queue: Callable[..., Queue]) -> None:
    with pytest.raises(ValueError, match=NEEDS_KEY):
        make_queue(table_name="jobs", accept_unsigned=True)
    assert make_queue(table_name="jobs", accept_unsigned=False).enqueue("x").is_ok()


def test_accept_unsigned_from_the_environment_without_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message says where the setting came from. A read-only queue delivers nothing,
    so a keyless tool that only looks (dashboard, metrics) may share the consumers'
    environment; a read-only queue given the argument itself is still refused."""
    monkeypatch.setenv("SQQUEUE_CONFIG", "none")
    path = tmp_path / "jobs.db"
    SQLiteQueue(path, "jobs").close()
    monkeypatch.setenv("SQQUEUE_ACCEPT_UNSIGNED", "true")
    with pytest.raises(
        ValueError, match=r"accept_unsigned \(from env SQQUEUE_ACCEPT_UNSIGNED\) needs a"
    ):
        SQLiteQueue(path, "jobs")
    with SQLiteQueue(path, "jobs", read_only=True) as looking:
        assert looking.settings.accept_unsigned is True
    with pytest.raises(ValueError, match=NEEDS_KEY):
        SQLiteQueue(path, "jobs", read_only=True, accept_unsigned=True)
    monkeypatch.setenv("SQQUEUE_SIGNING_KEY", KEY)
    with SQLiteQueue(path, "jobs") as queue:
        assert queue.settings.accept_unsigned is True
    monkeypatch.delenv("SQQUEUE_SIGNING_KEY")
    with SQLiteQueue(path, "jobs", accept_unsigned=False) as queue:  # the argument wins
        assert queue.settings.accept_unsigned is False
    monkeypatch.delenv("SQQUEUE_ACCEPT_UNSIGNED")
    config = tmp_path / "sqqueue.toml"
    config.write_text("accept_unsigned = true\n")
    monkeypatch.setenv("SQQUEUE_CONFIG", str(config))
    with pytest.raises(ValueError, match=r"accept_unsigned \(from file .*sqqueue.toml\)"):
        connect(path, "jobs")


def test_keys_from_the_environment_and_a_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    path = tmp_path / "jobs.db"
    monkeypatch.setenv("SQQUEUE_SIGNING_KEY", KEY)
    with SQLiteQueue(path, "jobs", clock=clock) as queue:
        assert queue.parts.signer is not None
        queue.enqueue("signed from the environment").unwrap()
    monkeypatch.delenv("SQQUEUE_SIGNING_KEY")
    key_file = tmp_path / "signing.key"
    key_file.write_text(f"new key\n{KEY}\n")
    key_file.chmod(0o644)
    monkeypatch.setenv("SQQUEUE_SIGNING_KEY_FILE", str(key_file))
    with pytest.raises(ValueError, match=r"SQQUEUE_SIGNING_KEY_FILE.*chmod 600") as refused:
        SQLiteQueue(path, "jobs", clock=clock)
    assert KEY not in str(refused.value)
    key_file.chmod(0o600)
    with SQLiteQueue(path, "jobs", clock=clock) as queue:
        message = queue.dequeue().unwrap()  # the second line verifies it
        assert message is not None and message.payload == "signed from the environment"
        queue.complete(message).unwrap()
        queue.enqueue("signed with the first line").unwrap()
    monkeypatch.delenv("SQQUEUE_SIGNING_KEY_FILE")
    with SQLiteQueue(path, "jobs", clock=clock, signing_key="new key") as queue:
        assert queue.dequeue().unwrap() is not None


def test_the_config_file_refuses_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "sqqueue.toml"
    config.write_text(f'signing_key = "{KEY}"\n')
    monkeypatch.setenv("SQQUEUE_CONFIG", str(config))
    with pytest.raises(ValueError, match="signing_key is not read from the config file") as exc:
        SQLiteQueue(tmp_path / "jobs.db", "jobs")
    assert KEY not in str(exc.value)


def test_the_key_never_shows(
    make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sqqueue")
    queue = make_queue(table_name="jobs", signing_key=[KEY, OTHER])
    queue.enqueue("x").unwrap()
    make_queue(table_name="jobs").enqueue("unsigned").unwrap()
    queue.dequeue_batch(5).unwrap()
    shown = [
        repr(queue),
        repr(queue.parts.signer),
        str(queue.parts.signer),
        repr(queue.settings),
        str(queue.stats().unwrap().to_dict()),
        *(r.getMessage() for r in caplog.records),
    ]
    for text in shown:
        assert KEY not in text and OTHER.hex() not in text and repr(OTHER) not in text
    assert "hidden" in repr(queue.parts.signer)


def test_resolving_keys() -> None:
    assert resolve_signing_key(None, {}) is None
    assert len(resolve_signing_key(["a", b"b"], {}) or []) == 2
    assert resolve_signing_key(None, {"SQQUEUE_SIGNING_KEY": "k"}) is not None


# -- the migration: earlier layouts open, keep every row, and read as unsigned ------------------


def _drop_signatures(target: QueueTarget, version: int) -> None:
    if target.backend == "postgres":
        tables = ("jobs", "jobs_dlq", '"jobs#done"')
    else:
        tables = ("jobs", "jobs_dlq", '"jobs#done"')
    target.run_sql(
        [f"ALTER TABLE {t} DROP COLUMN signature" for t in tables]
        + [f"UPDATE sqqueue_queues SET schema_version = {version} WHERE name = 'jobs'"]
    )


def test_a_queue_of_the_previous_layout_is_upgraded(
    make_queue: Callable[..., Queue], queue_target: QueueTarget
) -> None:
    queue = make_queue(table_name="jobs")
    kept = queue.enqueue_batch(["one", "two"]).unwrap()
    queue.close()
    _drop_signatures(queue_target, 4 if queue_target.backend == "postgres" else 6)
    upgraded = make_queue(table_name="jobs", signing_key=KEY, accept_unsigned=True)
    assert [m.id for m in upgraded.dequeue_batch(5).unwrap()] == kept
    signed = upgraded.enqueue("signed now").unwrap()
    got = make_queue(table_name="jobs", signing_key=KEY).dequeue().unwrap()
    assert got is not None and got.id == signed


def test_the_0_1_0_file_opens_with_a_key(tmp_path: Path, clock: FakeClock) -> None:
    fixture = LOCAL_FIXTURES / "sqqueue-0.1.0.db"
    path = tmp_path / "old.db"
    path.write_bytes(fixture.read_bytes())
    conn = sqlite3.connect(path)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    conn.close()
    name = next(t for t in tables if not t.endswith("_dlq") and not t.startswith("sqlite"))
    with SQLiteQueue(path, name, clock=clock, signing_key=KEY) as strict:
        before = strict.stats().unwrap()
        assert before.ready + before.delayed + before.processing > 0
    with SQLiteQueue(path, name, clock=clock, signing_key=KEY, accept_unsigned=True) as queue:
        assert queue.dequeue().unwrap() is not None
        assert queue.stats().unwrap().unsigned_accepted == 1


# -- the canonical encoding ---------------------------------------------------------------------

_fields = st.tuples(
    st.one_of(st.text(max_size=30), st.binary(max_size=30)),
    st.sampled_from(["json", "text", "bytes", "pickle"]),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(1, 1_000_000),
    st.one_of(st.none(), st.text(min_size=1, max_size=10)),
)


@settings(max_examples=200, deadline=None)
@given(original=_fields, changed=_fields)
def test_any_change_to_a_covered_field_invalidates(original: Any, changed: Any) -> None:
    keys = SigningKeys(KEY)
    signature = keys.sign(*original)
    assert keys.verify(signature, *original)
    same = canonical(*original) == canonical(*changed)
    assert keys.verify(signature, *changed) == same
    as_bytes = [*original]
    if isinstance(as_bytes[0], str):  # text and its UTF-8 bytes are the same payload
        as_bytes[0] = as_bytes[0].encode()
    assert keys.verify(signature, *as_bytes)
    assert not SigningKeys(OTHER).verify(signature, *original)


def test_a_signature_is_versioned_text() -> None:
    signature = SigningKeys(KEY).sign("x", "text", 0, 5, None)
    assert signature.startswith("v1:") and len(signature) == 3 + 64
    assert not SigningKeys(KEY).verify("v2:" + signature[3:], "x", "text", 0, 5, None)
    assert not SigningKeys(KEY).verify(None, "x", "text", 0, 5, None)
    assert not SigningKeys(KEY).verify(signature, None, "text", 0, 5, None)
    assert os.environ.get("SQQUEUE_SIGNING_KEY") is None


def test_the_command_line_signs_and_verifies_with_the_environment_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    from click.testing import CliRunner

    from sqqueue import cli

    for name in list(os.environ):
        if name.startswith("SQQUEUE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SQQUEUE_CONFIG", "none")
    db = tmp_path / "jobs.db"
    SQLiteQueue(db, "jobs", clock=clock).close()
    SQLiteQueue(db, "jobs").enqueue("unsigned").unwrap()
    monkeypatch.setenv("SQQUEUE_SIGNING_KEY", KEY)

    def run(*args: object) -> Any:
        return CliRunner().invoke(cli.main, [str(a) for a in args])

    assert run("enqueue", db, "jobs", "from the command line").exit_code == 0
    result = run("dequeue", db, "jobs")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("from the command line")
    with SQLiteQueue(db, "jobs", signing_key=KEY) as queue:
        assert list(dead_errors(queue).values()) == ["signature invalid"]


def test_tasks_pass_the_key_to_their_queues(tmp_path: Path) -> None:
    from sqqueue import Tasks

    db = tmp_path / "tasks.db"
    tasks = Tasks(db, signing_key=KEY)

    @tasks.task
    def add(a: int, b: int) -> int:
        return a + b

    add.delay(1, 2)
    queue = tasks.queue()
    SQLiteQueue(db, queue.name).enqueue({"sqqueue_task": 1, "name": "forged"}).unwrap()
    got = queue.dequeue_batch(5).unwrap()
    assert [m.payload["args"] for m in got] == [[1, 2]]
    assert list(dead_errors(queue).values()) == ["signature invalid"]
    tasks.close()
