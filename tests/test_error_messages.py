"""What the API says when a call does nothing: the right kind, what happened, what to do,
in one line, with no traceback logged for an expected failure.

Behaviour tests run on every backend (``queue``/``make_queue``).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeClock
from helpers import err, leased, ok, statuses
from sqqueue import (
    ErrorKind,
    PostgresQueue,
    Queue,
    Result,
    SQLiteQueue,
    config,
    connect,
)
from sqqueue import settings as settings_module

DOCS_HOOK = Path(__file__).resolve().parent.parent / "docs" / "hooks" / "reference.py"


# -- payloads that JSON cannot carry -----------------------------------------------------------


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _self_containing() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (10**5000, "integer too long"),
        ({"n": -(10**5000)}, "integer too long"),
        (_nested(5000), "nested more than"),
        ({"tree": _nested(600)}, "nested more than"),
        (_self_containing(), "contains itself"),
    ],
    ids=["huge-int", "huge-int-inside", "deep-list", "deep-dict", "cycle"],
)
def test_unstorable_json_is_a_serialization_error_without_traceback(
    queue: Queue, payload: Any, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Not STORAGE "failed unexpectedly" with an ERROR traceback: SERIALIZATION, saying
    what is wrong and what to do, logged at DEBUG only, and nothing enqueued."""
    with caplog.at_level(logging.DEBUG, logger="sqqueue"):
        error = err(queue.enqueue(payload), ErrorKind.SERIALIZATION)
        batch = err(queue.enqueue_batch(["fine", payload]), ErrorKind.SERIALIZATION)
    text = str(error)
    assert words in text
    assert "unexpectedly" not in text and "\n" not in text
    assert "serializer=" in text or "string" in text
    assert "item 1" in str(batch)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.exc_info]
    assert ok(queue.stats()).enqueued_total == 0


def test_json_nested_within_the_limit_round_trips(queue: Queue) -> None:
    deep = _nested(400)
    ok(queue.enqueue(deep))
    assert leased(queue).payload == deep


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (datetime(2026, 1, 31), "isoformat"),
        ((1, 2), "to a list"),
        ({1, 2}, "sorted"),
    ],
    ids=["datetime", "tuple", "set"],
)
def test_unsupported_value_inside_json_gets_a_hint_for_its_type(
    queue: Queue, value: Any, hint: str
) -> None:
    error = err(queue.enqueue({"when": value}), ErrorKind.SERIALIZATION)
    assert hint in str(error)
    if not isinstance(value, tuple):
        assert "tuple" not in str(error)


# -- a second call on a lease this queue object already ended ---------------------------------


def test_fail_after_failing_says_it_was_already_failed(queue: Queue) -> None:
    """The retries guide's "retry in 30 s, then give up now" on one Message: the second call is
    refused as WRONG_STATE, saying this object already failed it (nothing expired), and
    how to do it by id, which then works."""
    ok(queue.enqueue("job"))
    message = leased(queue, visibility_timeout=60)
    ok(queue.fail_message(message, error="timeout calling API", delay=30))
    error = err(queue.fail_message(message, send_to_dlq=True), ErrorKind.WRONG_STATE)
    text = str(error)
    assert "already failed" in text
    assert "expired" not in text and "extend" not in text
    assert f"fail_message({message.id}, send_to_dlq=True)" in text
    assert statuses(queue)[message.id] == "delayed"  # nothing was changed
    ok(queue.fail_message(message.id, send_to_dlq=True))
    assert statuses(queue)[message.id] == "dead"


@pytest.mark.parametrize(
    ("first", "second", "kind", "words"),
    [
        ("complete", "complete", ErrorKind.NOT_FOUND, "already completed"),
        ("complete", "extend", ErrorKind.NOT_FOUND, "already completed"),
        ("requeue", "complete", ErrorKind.WRONG_STATE, "already requeued"),
        ("release", "extend", ErrorKind.WRONG_STATE, "already released"),
        ("fail", "requeue", ErrorKind.WRONG_STATE, "already failed"),
        ("dead", "complete", ErrorKind.WRONG_STATE, "already dead-lettered"),
    ],
)
def test_second_call_on_an_ended_lease_says_what_this_object_did(
    queue: Queue, first: str, second: str, kind: ErrorKind, words: str
) -> None:
    ok(queue.enqueue("job"))
    message = leased(queue)
    calls: dict[str, Callable[[], Result[Any, Any]]] = {
        "complete": lambda: queue.complete(message),
        "requeue": lambda: queue.requeue(message),
        "release": lambda: queue.release(message),
        "fail": lambda: queue.fail_message(message, error="boom"),
        "dead": lambda: queue.fail_message(message, send_to_dlq=True),
        "extend": lambda: queue.extend(message, 60),
    }
    ok(calls[first]())
    error = err(calls[second](), kind)
    assert words in str(error)
    assert "expired" not in str(error)


def test_ended_lease_taken_by_another_consumer_is_lease_lost(queue: Queue) -> None:
    ok(queue.enqueue("job"))
    message = leased(queue)
    ok(queue.requeue(message))
    again = leased(queue)  # the next delivery, under a new lease
    error = err(queue.complete(message), ErrorKind.LEASE_LOST)
    assert "already requeued" in str(error) and "another consumer" in str(error)
    ok(queue.complete(again))


def test_expired_lease_is_still_reported_as_expired(queue: Queue, clock: FakeClock) -> None:
    """Only leases this object ended itself are explained differently."""
    ok(queue.enqueue("job"))
    message = leased(queue, visibility_timeout=10)
    clock.advance(11)
    error = err(queue.complete(message), ErrorKind.LEASE_EXPIRED)
    assert "has expired" in str(error)


def test_claim_block_that_ends_the_lease_itself_does_not_raise(queue: Queue) -> None:
    """claim() completes the message after the block, unless the block completed, failed or
    gave it back itself: failing it there used to raise a lease error out of the block."""
    first = ok(queue.enqueue("fail me"))
    second = ok(queue.enqueue("release me"))
    with queue.claim() as message:
        assert message is not None and message.id == first
        ok(queue.fail_message(message, error="bad", delay=3600))
    with queue.claim() as message:
        assert message is not None and message.id == second
        ok(queue.release(message))
    assert statuses(queue)[first] == "delayed"
    assert statuses(queue)[second] == "ready"


# -- full queues ------------------------------------------------------------------------------


def test_queue_full_advice_depends_on_whether_it_waited(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(table_name="jobs", max_depth=1)
    ok(queue.enqueue("a"))
    at_once = str(err(queue.enqueue("b"), ErrorKind.QUEUE_FULL))
    assert "pass wait=" in at_once
    waited = str(err(queue.enqueue("b", wait=0.05), ErrorKind.QUEUE_FULL))
    assert "pass wait=" not in waited
    assert "after waiting 0.05 s" in waited and "max_depth" in waited


# -- purge of dead letters by age -------------------------------------------------------------


def test_purge_dead_counts_age_from_death(queue: Queue, clock: FakeClock) -> None:
    """older_than on dead letters means dead for that long, not enqueued that long ago."""
    week = 7 * 86400
    old_id = ok(queue.enqueue("enqueued long ago"))
    clock.advance(30 * 86400)
    ok(queue.fail_message(old_id, send_to_dlq=True))  # died just now
    assert ok(queue.purge("dead", older_than=week)) == 0
    assert statuses(queue)[old_id] == "dead"
    clock.advance(week + 1)
    assert ok(queue.purge("dead", older_than=week)) == 1
    assert ok(queue.stats()).dead == 0


# -- limits and settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "limit"),
    [
        (lambda q: q.enqueue("x", delay=1e12), "<= 316224000 seconds (3660 days)"),
        (lambda q: q.dequeue(visibility_timeout=1e9), "<= 604800 seconds (7 days)"),
        (lambda q: q.purge(older_than=1e13), "<= 1000000000000 seconds"),
        (lambda q: q.redrive(rate=1e10), "<= 1000000000"),
    ],
    ids=["delay", "lease", "older_than", "rate"],
)
def test_limits_are_written_out(queue: Queue, call: Callable[[Queue], Any], limit: str) -> None:
    error = err(call(queue), ErrorKind.INVALID_INPUT)
    assert limit in str(error)
    assert not re.search(r"\de[+-]\d", str(error).split("got")[0]), error


def test_postgres_queue_refuses_sqlite_only_settings() -> None:
    """Refused before any connection is made, with why."""
    for name, value in (("synchronous", "full"), ("vacuum_on_start", True)):
        with pytest.raises(ValueError, match=f"{name} does not apply to PostgreSQL"):
            PostgresQueue("postgresql://nowhere.invalid/db", "jobs", **{name: value})


def test_sqlite_queue_refuses_postgres_only_settings(tmp_path: Path) -> None:
    for name, value in (("pool_size", 2), ("schema", "app")):
        with pytest.raises(ValueError, match=f"{name} does not apply to SQLite"):
            connect(tmp_path / "jobs.db", "jobs", **{name: value})
    assert not (tmp_path / "jobs.db").exists()


def test_unknown_environment_variable_is_warned_about_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(settings_module, "_warned", set())
    environ = {"SQQUEUE_LOCK_TIMOUT": "5", "SQQUEUE_CONFIG": "none", "SQQUEUE_ZZZ": "1"}
    with caplog.at_level(logging.WARNING, logger="sqqueue"):
        for _ in range(3):
            resolved = config.resolve({}, environ=environ)
    assert resolved.values["lock_timeout"] == 30.0  # the misspelt one is not read
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2, warned
    typo = next(m for m in warned if "SQQUEUE_LOCK_TIMOUT" in m)
    assert "did you mean SQQUEUE_LOCK_TIMEOUT?" in typo
    unknown = next(m for m in warned if "SQQUEUE_ZZZ" in m)
    assert "SQQUEUE_DEFAULT_MAX_ATTEMPTS" in unknown  # no close one: the known ones


def test_known_variables_are_not_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(settings_module, "_warned", set())
    environ = {"SQQUEUE_LOCK_TIMEOUT": "5", "SQQUEUE_CONFIG": "none", "OTHER": "x"}
    with caplog.at_level(logging.WARNING, logger="sqqueue"):
        config.resolve({}, environ=environ)
    assert not caplog.records


def test_directory_path_advice_quotes_a_whole_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory") as info:
        SQLiteQueue(tmp_path, "jobs")
    assert repr(str(tmp_path / "queue.db")) in str(info.value)


def test_error_kind_reference_lists_every_kind() -> None:
    """The documentation's error-kind table, generated from ErrorKind, has every kind with
    advice."""
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS_HOOK)
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    table = hook.on_page_markdown("<!-- generated: error-kinds -->")
    for kind in ErrorKind:
        assert f"| `{kind.name}` | `{kind.value}` |" in table, kind


def test_a_database_failure_is_logged_with_its_traceback_and_chained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Trouble with the database (a table dropped underneath): the Err's error chains the
    driver's own exception, and the ERROR log line carries the traceback."""
    import sqlite3

    from sqqueue import ErrorKind, SQLiteQueue

    db = tmp_path / "jobs.db"
    with SQLiteQueue(db, table_name="jobs") as queue:
        conn = sqlite3.connect(db)
        conn.execute('DROP TABLE "jobs"')
        conn.commit()
        conn.close()
        caplog.set_level(logging.DEBUG, logger="sqqueue")
        result = queue.enqueue("x")
    assert result.is_err() and result.error.kind is ErrorKind.STORAGE
    chain, cause = [], result.error.__cause__
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    assert any(isinstance(c, sqlite3.Error) for c in chain), chain
    [record] = [r for r in caplog.records if "enqueue failed" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[1] is not None


def test_a_value_too_large_for_sqlite_is_an_input_error(tmp_path: Path) -> None:
    """SQLite refuses a value past its length limit (1,000,000,000 bytes by default): the
    caller's input, not a storage failure, with what to do instead."""
    import sqlite3

    from sqqueue.backends.sqlite_files import classify

    conn = sqlite3.connect(tmp_path / "big.db")
    conn.execute("CREATE TABLE t (x)")
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)  # the same refusal, without a gigabyte
    with pytest.raises(sqlite3.DataError) as refused:
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 1001,))
    conn.close()
    error = classify(refused.value, "big.db")
    assert error.kind is ErrorKind.INVALID_INPUT
    assert "enqueue a reference" in str(error) and "nothing was written" in str(error)
