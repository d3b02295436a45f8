"""Bad input sweep: hostile names, unusable paths, every payload type, out-of-range arguments.

Contract tests run on every backend (``queue``/``make_queue``); the unusable-path and
damaged-file tests are about SQLite files and use SQLiteQueue directly.

Every refused call must come back as ``Err`` with the right kind and a message that names the
problem (or raise ValueError/QueueError at construction); no exception may escape a method.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, assume, given, settings

from conftest import FakeClock, QueueTarget
from helpers import err, leased, message_statuses, ok, without_dac_override
from sqqueue import (
    AsyncQueue,
    CompletionError,
    DequeueError,
    EnqueueError,
    Err,
    ErrorKind,
    Ok,
    Queue,
    QueueError,
    RequeueError,
    Result,
    SQLiteQueue,
)

MakeQueue = Callable[..., Queue]


def without_path(error: BaseException, path: Path) -> str:
    """The error text with ``path`` cut out (pytest's tmp_path contains the test's name)."""
    return str(error).replace(str(path), "<path>")


# -- queue names -------------------------------------------------------------------------------

HOSTILE_NAMES: list[Any] = [
    "x; DROP TABLE y",
    'jobs"; DROP TABLE sqqueue_queues; --',
    '"',
    "'",
    "",
    " ",
    "jobs ",
    "jobs\n",
    "jo-bs",
    "jobs.dlq",
    "1jobs",
    "j\x00obs",
    "jöbs",
    "a" * 64,
    "sqlite_master",
    "SQLITE_jobs",
    "sqqueue_queues",
    "sqqueue_x",
    "Sqqueue_X",
    "pg_jobs",
    "jobs_dlq",
    "JOBS_DLQ",
    None,
    42,
    b"jobs",
    ["jobs"],
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_queue_name_is_value_error_and_creates_nothing(
    make_queue: MakeQueue, queue_target: QueueTarget, name: Any
) -> None:
    """A bad table_name raises ValueError before anything is created (no file, no table)."""
    with pytest.raises(ValueError, match="queue name") as info:
        make_queue(table_name=name)
    assert not isinstance(info.value, QueueError)
    assert queue_target.tables() == set()


def test_hostile_queue_name_creates_no_sqlite_file(tmp_path: Path, clock: Any) -> None:
    """On SQLite, a refused name does not even create the database file."""
    with pytest.raises(ValueError, match="queue name"):
        SQLiteQueue(tmp_path / "q.db", table_name="x; DROP TABLE y", clock=clock)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", HOSTILE_NAMES[:6], ids=repr)
def test_hostile_queue_name_leaves_existing_database_untouched(
    make_queue: MakeQueue, queue_target: QueueTarget, name: Any
) -> None:
    """In an existing database a refused name adds no table and harms no queue."""
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue("kept"))
    before = queue_target.tables()
    assert "jobs" in before
    with pytest.raises(ValueError):
        make_queue(table_name=name)
    assert queue_target.tables() == before
    assert leased(queue).payload == "kept"


@pytest.mark.parametrize("name", ["a" * 63, "_", "_jobs", "Jobs_2", "dlq", "jobs_dlq_old"])
def test_edge_valid_queue_names(make_queue: MakeQueue, name: str) -> None:
    """Names at the edge of the rules are accepted and work."""
    queue = make_queue(table_name=name)
    ok(queue.enqueue("x"))
    assert leased(queue).queue == name


# -- unusable paths ----------------------------------------------------------------------------


def test_directory_path_is_value_error(tmp_path: Path, clock: Any) -> None:
    """A directory is not a database file."""
    with pytest.raises(ValueError) as info:
        SQLiteQueue(tmp_path, table_name="jobs", clock=clock)
    assert str(tmp_path) in str(info.value)
    assert "is a directory" in without_path(info.value, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_parent_directory_is_value_error(tmp_path: Path, clock: Any) -> None:
    """A path whose directory does not exist is refused, and the directory is not created."""
    path = tmp_path / "missing" / "q.db"
    with pytest.raises(ValueError) as info:
        SQLiteQueue(path, table_name="jobs", clock=clock)
    assert str(path) in str(info.value)
    assert "does not exist" in without_path(info.value, path)
    assert not path.parent.exists()


@pytest.mark.parametrize("bad", ["", "q\x00.db"], ids=["empty", "nul"])
def test_empty_or_nul_path_is_value_error(tmp_path: Path, clock: Any, bad: str) -> None:
    """An empty path or one with a NUL character is refused."""
    with pytest.raises(ValueError, match="db_path"):
        SQLiteQueue(bad, table_name="jobs", clock=clock)


def test_device_path_is_value_error(clock: Any) -> None:
    """A device such as /dev/null is not a regular file."""
    with pytest.raises(ValueError, match="/dev/null"):
        SQLiteQueue("/dev/null", table_name="jobs", clock=clock)


@pytest.mark.parametrize(
    "content",
    [b"hello", b"not a database\n" * 100, b"\x00" * 4096, b"SQLite format 3\x00" + b"\xff" * 200],
    ids=["short-text", "long-text", "zeros", "fake-header"],
)
def test_non_sqlite_file_is_queue_error_and_left_alone(
    tmp_path: Path, clock: Any, content: bytes
) -> None:
    """A file that is not SQLite: QueueError (CORRUPT) naming the path; the file is unchanged."""
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(QueueError) as info:
        SQLiteQueue(path, table_name="jobs", clock=clock)
    assert info.value.kind is ErrorKind.CORRUPT
    assert str(path) in str(info.value)
    assert "not an sqlite database" in without_path(info.value, path).lower()
    assert path.read_bytes() == content


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.9])
def test_truncated_database_is_queue_error(tmp_path: Path, clock: Any, fraction: float) -> None:
    """A truncated copy of a real queue database is refused at construction, naming the path."""
    source = tmp_path / "real.db"
    with SQLiteQueue(source, table_name="jobs", clock=clock) as queue:
        ok(queue.enqueue_batch(["p" * 2000 for _ in range(300)]))
    copy = tmp_path / "truncated.db"
    shutil.copyfile(source, copy)
    os.truncate(copy, int(source.stat().st_size * fraction))
    with pytest.raises(QueueError) as info:
        SQLiteQueue(copy, table_name="jobs", clock=clock)
    assert info.value.kind is ErrorKind.CORRUPT
    assert str(copy) in str(info.value)


def test_read_only_file_is_queue_error(tmp_path: Path, clock: Any) -> None:
    """A database file without write permission: QueueError (READ_ONLY) naming the path.

    As root the check only means something without CAP_DAC_OVERRIDE, hence the helper thread.
    """
    path = tmp_path / "ro.db"
    with SQLiteQueue(path, table_name="jobs", clock=clock) as queue:
        ok(queue.enqueue("x"))
    path.chmod(0o400)

    def try_write() -> str:
        with open(path, "r+b"):
            return "writable"

    probe = without_dac_override(try_write)
    assert isinstance(probe, PermissionError), "the thread can still write: the setup failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro.db"]
    result = without_dac_override(lambda: SQLiteQueue(path, table_name="jobs", clock=clock))
    assert isinstance(result, QueueError), f"expected QueueError, got {result!r}"
    assert result.kind is ErrorKind.READ_ONLY
    assert str(path) in str(result)
    assert "read-only" in without_path(result, path)
    # Refused before SQLite opened the file: no -wal or -shm left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro.db"]


def test_new_file_in_read_only_directory_is_value_error(tmp_path: Path, clock: Any) -> None:
    """A database that cannot be created in a read-only directory: ValueError naming it."""
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    path = directory / "q.db"
    try:
        result = without_dac_override(lambda: SQLiteQueue(path, table_name="jobs", clock=clock))
    finally:
        directory.chmod(0o700)
    assert isinstance(result, (ValueError, QueueError)), f"expected an error, got {result!r}"
    assert str(path) in str(result)
    assert not path.exists()


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("vacuum_threshold", -1),
        ("default_max_attempts", 0),
        ("default_max_attempts", True),
        ("default_visibility_timeout", 0),
        ("default_visibility_timeout", float("nan")),
        ("default_visibility_timeout", float("inf")),
        ("default_priority", 1.5),
        ("default_priority", 2**40),
        ("lock_timeout", -1),
        ("clock", 5),
        ("statsd_port", 70000),
    ],
)
def test_bad_settings_are_value_errors(
    make_queue: MakeQueue, clock: Any, setting: str, value: Any
) -> None:
    """Invalid configuration raises ValueError naming the setting."""
    kwargs: dict[str, Any] = {"table_name": "jobs", "clock": clock, setting: value}
    if setting == "statsd_port":
        kwargs["statsd_host"] = "127.0.0.1"
    with pytest.raises(ValueError, match=setting.rsplit("_", maxsplit=1)[-1]):
        make_queue(**kwargs)


def test_bad_synchronous_setting_is_value_error(tmp_path: Path, clock: Any) -> None:
    """synchronous (an SQLite setting) must be "normal" or "full"."""
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteQueue(tmp_path / "q.db", table_name="jobs", clock=clock, synchronous="off")


# -- payloads ----------------------------------------------------------------------------------

ROUND_TRIP: list[Any] = [
    "plain",
    "",
    "nul\x00inside\x00",
    "\x00",
    "non-ASCII: héllo wörld ñ 日本語",
    "emoji 😀🎉👩‍👩‍👧",
    "null",
    "123",
    '{"looks": "like json"}',
    b"",
    b"\x00\x01\x02\xff",
    b"\x00" * 100,
    bytes(range(256)),
    {"nested": {"list": [1, 2.5, None, True, "x"], "empty": {}}, "unicode": "é😀"},
    [],
    [[[]]],
    {},
    0,
    -1,
    2**63,
    -(2**64),
    10**100,
    0.1,
    -0.0,
    1e308,
    5e-324,
    True,
    False,
    None,
]


@pytest.mark.parametrize("payload", ROUND_TRIP, ids=repr)
def test_payload_round_trips_with_type(queue: Queue, payload: Any) -> None:
    """Every supported payload comes back equal and of the same type."""
    ok(queue.enqueue(payload))
    got = leased(queue).payload
    assert type(got) is type(payload)
    assert got == payload
    if isinstance(payload, float):
        assert math.copysign(1, got) == math.copysign(1, payload)


def test_bytearray_and_memoryview_come_back_as_bytes(queue: Queue) -> None:
    """Binary buffers are stored as BLOBs and returned as bytes."""
    ok(queue.enqueue_batch([bytearray(b"\x00ab"), memoryview(b"\x00cd")]))
    assert [m.payload for m in ok(queue.dequeue_batch(2))] == [b"\x00ab", b"\x00cd"]


class Custom:
    pass


REFUSED: list[tuple[Any, str]] = [
    ((1, 2), "tuple"),
    ({1, 2}, "set"),
    (frozenset(), "frozenset"),
    (Custom(), "Custom"),
    (object(), "object"),
    (float("nan"), "nan"),
    (float("inf"), "inf"),
    (-float("inf"), "inf"),
    ({"x": float("nan")}, "nan"),
    ({1: "a"}, "key"),
    ({"ok": {2: "b"}}, "key"),
    ({(1, 2): "a"}, "key"),
    ({None: 1}, "key"),
    ([1, (2, 3)], "tuple"),
    ({"a": {1, 2}}, "set"),
    ("\ud800", "surrogate"),
    ("ok\udfffok", "surrogate"),
    (complex(1, 2), "complex"),
    (range(3), "range"),
    (lambda: 1, "function"),
]


def _stable_id(payload: Any) -> str:
    """A test id that is the same in every process (no memory addresses)."""
    text = repr(payload)
    return type(payload).__name__ if " at 0x" in text else text


@pytest.mark.parametrize(("payload", "words"), REFUSED, ids=[_stable_id(p) for p, _ in REFUSED])
def test_unstorable_payload_is_serialization_err(queue: Queue, payload: Any, words: str) -> None:
    """Payloads that would not round-trip exactly: Err(SERIALIZATION), nothing enqueued."""
    error = err(queue.enqueue(payload), ErrorKind.SERIALIZATION, words)
    assert isinstance(error, EnqueueError)
    assert message_statuses(queue) == []
    # As a batch item the payload is wrapped in a 1-tuple, so a tuple payload stays a payload.
    err(queue.enqueue_batch(["fine", (payload,)]), ErrorKind.SERIALIZATION, "item 1")
    assert message_statuses(queue) == []


@pytest.mark.parametrize("kind", ["bytes", "str"])
def test_twenty_megabyte_payload_round_trip(queue: Queue, kind: str) -> None:
    """A 20 MB payload is stored and returned intact (also from the dead-letter queue)."""
    # 20 MiB of random bytes, or 10 Mi two-byte characters (20 MiB as UTF-8).
    payload: Any = os.urandom(20 * 1024 * 1024) if kind == "bytes" else "ü" * (10 * 1024 * 1024)
    msg_id = ok(queue.enqueue(payload))
    message = leased(queue)
    assert message.id == msg_id
    assert message.payload == payload
    ok(queue.fail_message(message, send_to_dlq=True))
    assert ok(queue.get_dead_letters())[0]["payload"] == payload


# -- numeric arguments -------------------------------------------------------------------------

BAD_PRIORITIES = [True, False, 1.0, 0.5, float("nan"), 2**31, -(2**31) - 1, 10**100, "5", None]


@pytest.mark.parametrize("priority", BAD_PRIORITIES[:-1], ids=repr)
def test_bad_priority_is_err(queue: Queue, priority: Any) -> None:
    """Priorities must be ints within 32 bits; bools and floats are refused."""
    err(queue.enqueue("x", priority=priority), ErrorKind.INVALID_INPUT, "priority")
    err(queue.enqueue_batch(["a", ("x", priority)]), ErrorKind.INVALID_INPUT, "priority", "item 1")
    assert message_statuses(queue) == []


def test_priority_limits_are_accepted(queue: Queue) -> None:
    """The 32-bit limits themselves are fine, and ordering holds at the extremes."""
    ok(queue.enqueue("low", priority=-(2**31)))
    ok(queue.enqueue("high", priority=2**31 - 1))
    assert [m.payload for m in ok(queue.dequeue_batch(2))] == ["high", "low"]


BAD_DELAYS = [-1, -0.001, float("nan"), float("inf"), -float("inf"), 10**12, 1e300, "5", True]


@pytest.mark.parametrize("delay", [*BAD_DELAYS, timedelta(seconds=-1)], ids=repr)
def test_bad_delay_is_err(queue: Queue, delay: Any) -> None:
    """Negative, NaN, infinite, absurdly large or non-numeric delays are refused."""
    err(queue.enqueue("x", delay=delay), ErrorKind.INVALID_INPUT, "delay")
    err(queue.enqueue_batch([("x", None, delay)]), ErrorKind.INVALID_INPUT, "delay")
    assert message_statuses(queue) == []
    ok(queue.enqueue("y"))
    message = leased(queue)
    err(queue.fail_message(message, delay=delay), ErrorKind.INVALID_INPUT, "delay")
    assert message_statuses(queue)[0]["status"] == "processing"


BAD_TIMEOUTS = [0, -1, float("nan"), float("inf"), 10**9, 1e300, "30", True, None]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS[:-1], ids=repr)
def test_bad_visibility_timeout_is_err(queue: Queue, timeout: Any) -> None:
    """Zero, negative, NaN, infinite, huge or non-numeric lease times are refused."""
    ok(queue.enqueue("x"))
    err(queue.dequeue(visibility_timeout=timeout), ErrorKind.INVALID_INPUT, "visibility")
    error = err(
        queue.dequeue_batch(5, visibility_timeout=timeout), ErrorKind.INVALID_INPUT, "visibility"
    )
    assert isinstance(error, DequeueError)
    assert message_statuses(queue)[0]["status"] == "ready"  # nothing was leased
    message = leased(queue)
    error = err(queue.extend(message, timeout), ErrorKind.INVALID_INPUT, "seconds")
    assert isinstance(error, RequeueError)


@pytest.mark.parametrize("size", [0, -1, 10**6, 2**64, True, 2.0, "10", None])
def test_bad_batch_size_is_err(queue: Queue, size: Any) -> None:
    """batch_size must be an int from 1 to a sane maximum."""
    ok(queue.enqueue("x"))
    err(queue.dequeue_batch(size), ErrorKind.INVALID_INPUT, "batch_size")
    assert message_statuses(queue)[0]["status"] == "ready"


@pytest.mark.parametrize("attempts", [0, -1, True, 1.5, 10**12, "3"])
def test_bad_max_attempts_is_err(queue: Queue, attempts: Any) -> None:
    """max_attempts must be a positive int."""
    err(queue.enqueue("x", max_attempts=attempts), ErrorKind.INVALID_INPUT, "max_attempts")
    assert message_statuses(queue) == []


# -- message ids -------------------------------------------------------------------------------

ID_CALLS: dict[str, Callable[[Queue, Any], Result[Any, Any]]] = {
    "complete": lambda q, i: q.complete(i),
    "fail_message": lambda q, i: q.fail_message(i),
    "fail_message_dlq": lambda q, i: q.fail_message(i, send_to_dlq=True),
    "requeue": lambda q, i: q.requeue(i),
    "extend": lambda q, i: q.extend(i, 10),
    "reprocess_dead_letter": lambda q, i: q.reprocess_dead_letter(i),
}
ERROR_CLASS = {
    "complete": CompletionError,
    "fail_message": RequeueError,
    "fail_message_dlq": RequeueError,
    "requeue": RequeueError,
    "extend": RequeueError,
    "reprocess_dead_letter": RequeueError,
}


@pytest.mark.parametrize("call", list(ID_CALLS))
@pytest.mark.parametrize("bad_id", ["1", None, 1.0, True, b"1", [1]], ids=repr)
def test_non_int_id_is_invalid_input(queue: Queue, call: str, bad_id: Any) -> None:
    """Ids must be ints (or Messages): anything else is INVALID_INPUT, nothing changes."""
    ok(queue.enqueue("x"))
    leased(queue)
    before = message_statuses(queue)
    error = err(ID_CALLS[call](queue, bad_id), ErrorKind.INVALID_INPUT)
    assert isinstance(error, ERROR_CLASS[call])
    assert "int" in str(error)
    assert message_statuses(queue) == before


@pytest.mark.parametrize("bad_id", [0, 2, -1, -(2**63), 2**63 - 1, 2**63, 2**64, 10**30], ids=repr)
def test_unknown_or_out_of_range_id(queue: Queue, bad_id: int) -> None:
    """Unknown, negative or out-of-range ids: NOT_FOUND (or INVALID_INPUT), never STORAGE,
    for every call taking an id; nothing changes."""
    ok(queue.enqueue("x"))
    leased(queue)
    before = message_statuses(queue)
    wrong = {}
    for call, fn in ID_CALLS.items():
        result = fn(queue, bad_id)
        good = (
            isinstance(result, Err)
            and isinstance(result.error, ERROR_CLASS[call])
            and result.error.kind in (ErrorKind.NOT_FOUND, ErrorKind.INVALID_INPUT)
            and "unexpected" not in str(result.error)
        )
        if not good:
            wrong[call] = result
    assert wrong == {}, wrong
    assert message_statuses(queue) == before


def test_error_text_must_be_str(queue: Queue) -> None:
    """fail_message(error=...) accepts only str; long text is kept (truncated), not refused."""
    ok(queue.enqueue("x"))
    message = leased(queue)
    err(queue.fail_message(message, error=123), ErrorKind.INVALID_INPUT, "error")  # type: ignore[arg-type]
    err(queue.fail_message(message, error=b"x"), ErrorKind.INVALID_INPUT, "error")  # type: ignore[arg-type]
    ok(queue.fail_message(message, error="é\x00" * 100_000))
    again = leased(queue)
    assert again.last_error is not None
    assert again.last_error.startswith("é\x00é\x00")
    assert len(again.last_error) <= 100_000


def test_double_complete(queue: Queue) -> None:
    """The second complete of the same message is NOT_FOUND, by Message and by id."""
    ok(queue.enqueue("x"))
    message = leased(queue)
    assert queue.complete(message) == Ok(None)
    err(queue.complete(message), ErrorKind.NOT_FOUND, str(message.id))
    err(queue.complete(message.id), ErrorKind.NOT_FOUND, str(message.id))


def test_fail_after_complete(queue: Queue) -> None:
    """Failing, requeueing or extending a completed message is NOT_FOUND; nothing appears."""
    ok(queue.enqueue("x"))
    message = leased(queue)
    ok(queue.complete(message))
    err(queue.fail_message(message), ErrorKind.NOT_FOUND)
    err(queue.fail_message(message, send_to_dlq=True), ErrorKind.NOT_FOUND)
    err(queue.requeue(message), ErrorKind.NOT_FOUND)
    err(queue.extend(message, 10), ErrorKind.NOT_FOUND)
    assert message_statuses(queue) == []
    assert ok(queue.get_dead_letters()) == []


def test_message_from_another_queue_is_not_used_blindly(make_queue: MakeQueue) -> None:
    """A Message leased from queue A, passed to queue B: B's message with that id is untouched."""
    a, b = make_queue(table_name="a"), make_queue(table_name="b")
    ok(a.enqueue("from a"))
    ok(b.enqueue("from b"))
    mine = leased(b)
    other = leased(a)
    assert other.id == mine.id
    result = b.complete(other)
    assert isinstance(result, Err)
    assert message_statuses(b)[0]["status"] == "processing"
    assert ok(b.complete(mine)) is None


def test_defaults_changed_after_opening_apply_and_are_checked(
    make_queue: Callable[..., Queue],
) -> None:
    """The default_* attributes may be changed on an open queue: later enqueues use the
    new values, and an invalid one is an Err naming it (nothing is enqueued)."""
    queue = make_queue(table_name="defaults")
    first = ok(queue.enqueue("before"))
    queue.default_priority = 7
    queue.default_max_attempts = 2
    queue.default_ttl = 3600
    ok(queue.enqueue_batch(["after-1", "after-2"]))
    message = ok(queue.dequeue())
    assert (message.payload, message.priority, message.max_attempts) == ("after-1", 7, 2)
    assert message.expires_at is not None
    queue.default_priority = 2**40
    err(queue.enqueue("too high"), ErrorKind.INVALID_INPUT, "priority")
    err(queue.enqueue_batch(["a", "b"]), ErrorKind.INVALID_INPUT, "priority")
    queue.default_priority = 0
    queue.default_max_attempts = True  # type: ignore[assignment]
    err(queue.enqueue("bool"), ErrorKind.INVALID_INPUT, "max_attempts")
    statuses = message_statuses(queue)
    assert [s["id"] for s in statuses][:1] == [first]
    assert len(statuses) == 3


@pytest.mark.parametrize("lease", [-60, 0, 1e300, math.nan, "60", None], ids=repr)
def test_a_default_visibility_timeout_set_to_nonsense_is_refused_by_claims(
    make_queue: MakeQueue, lease: Any
) -> None:
    """default_visibility_timeout may be set at any time: a claim that would use a value
    that is no lease length is an Err naming it, and no message is leased (a negative
    lease delivered one message twice; an endless one dead-lettered it)."""
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue("job"))
    queue.default_visibility_timeout = lease
    err(queue.dequeue(), ErrorKind.INVALID_INPUT, "default_visibility_timeout")
    err(queue.dequeue_batch(5), ErrorKind.INVALID_INPUT, "default_visibility_timeout")
    aqueue = AsyncQueue(queue)
    err(asyncio.run(aqueue.dequeue()), ErrorKind.INVALID_INPUT, "default_visibility_timeout")
    assert [(m["status"], m["attempts"]) for m in message_statuses(queue)] == [("ready", 0)]
    queue.default_visibility_timeout = 30
    assert ok(queue.dequeue_batch(5, visibility_timeout=10))[0].attempts == 1


@pytest.mark.parametrize("threshold", ["1000", -1, 1.5, None, 2**40], ids=repr)
def test_vacuum_threshold_set_to_nonsense_raises_at_once(
    make_queue: MakeQueue, threshold: Any
) -> None:
    """vacuum_threshold is configuration: a bad value raises ValueError when set, and the
    queue keeps the one it had (it used to turn the next enqueue, already committed, into
    an Err)."""
    queue = make_queue(table_name="jobs")
    with pytest.raises(ValueError, match="vacuum_threshold"):
        queue.vacuum_threshold = threshold
    assert queue.vacuum_threshold == 1000
    ok(queue.enqueue("job"))
    queue.vacuum_threshold = 0
    assert queue.vacuum_threshold == 0


@pytest.mark.parametrize("cancel", [True, "stop", 1], ids=repr)
def test_a_cancel_that_is_not_an_event_is_invalid_input(make_queue: MakeQueue, cancel: Any) -> None:
    """cancel= takes a threading.Event: anything else is an Err saying so, before any
    wait, from the synchronous and the asyncio calls alike."""
    queue = make_queue(table_name="jobs")
    aqueue = AsyncQueue(queue)
    calls = [
        queue.dequeue(wait=0.1, cancel=cancel),
        queue.dequeue_batch(5, wait=0.1, cancel=cancel),
        asyncio.run(aqueue.dequeue(wait=0.1, cancel=cancel)),
        asyncio.run(aqueue.dequeue_batch(5, wait=0.1, cancel=cancel)),
    ]
    for result in calls:
        err(result, ErrorKind.INVALID_INPUT, "cancel", "threading.Event")


class _Undecidable:
    """A value whose truth cannot be told (as numpy arrays): bool() raises."""

    def __bool__(self) -> bool:
        raise ValueError("the truth value is ambiguous")


def test_async_enqueue_with_an_undecidable_wait_is_an_err(make_queue: MakeQueue) -> None:
    """AsyncQueue.enqueue(wait=...) with a value bool() refuses: an Err, as from the
    synchronous call, not an exception."""
    queue = make_queue(table_name="jobs")
    aqueue = AsyncQueue(queue)
    err(queue.enqueue("x", wait=_Undecidable()), ErrorKind.INVALID_INPUT, "wait")
    err(asyncio.run(aqueue.enqueue("x", wait=_Undecidable())), ErrorKind.INVALID_INPUT, "wait")
    err(
        asyncio.run(aqueue.enqueue_batch(["x"], wait=_Undecidable())),
        ErrorKind.INVALID_INPUT,
        "wait",
    )
    assert ok(queue.stats()).depth == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 2**70),
        ("id", "1"),
        ("id", None),
        ("lease_token", 2**80),
        ("lease_token", "7"),
        ("lease_token", -1),
    ],
)
def test_a_message_with_its_fields_changed_is_invalid_input(
    make_queue: MakeQueue, field: str, value: Any
) -> None:
    """A Message whose id or lease token was set to something no queue gives: every call
    taking it refuses it as INVALID_INPUT (not a storage error logged at ERROR, nor
    "not found" for id "1"), and the message stays leased."""
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue("job"))
    message = leased(queue)
    changed = dataclasses.replace(message, **{field: value})
    calls = {
        "complete": lambda: queue.complete(changed),
        "complete_batch": lambda: queue.complete_batch([changed]),
        "extend": lambda: queue.extend(changed, 10),
        "extend_batch": lambda: queue.extend_batch([changed], 10),
        "release_batch": lambda: queue.release_batch([changed]),
        "fail_message": lambda: queue.fail_message(changed),
    }
    for name, call in calls.items():
        error = err(call(), ErrorKind.INVALID_INPUT, "lease token")
        assert "is not one a queue gives" in str(error), name
    assert [m["status"] for m in message_statuses(queue)] == ["processing"]
    ok(queue.complete(message))


def _raising_clock() -> float:
    raise OSError("no time")


@pytest.mark.parametrize(
    "clock",
    [_raising_clock, lambda: "abc", lambda: None, lambda: math.nan, lambda: math.inf,
     lambda: 1e300, lambda: 2**80, lambda: -1.0, lambda: True],
    ids=["raises", "str", "None", "nan", "inf", "1e300", "2**80", "negative", "bool"],
)  # fmt: skip
def test_a_clock_telling_nonsense_is_refused_at_construction(
    queue_target: QueueTarget, clock: Callable[[], Any]
) -> None:
    """A clock that raises or tells no plausible time raises ValueError naming it when the
    queue is built (it made messages enqueued with Ok dead-lettered at once, or a NOT NULL
    error); on PostgreSQL, server_clock alike."""
    what = "server_clock" if queue_target.backend == "postgresql" else "clock"
    with pytest.raises(ValueError, match=f"{what}"):
        queue_target.open("jobs", **{what: clock})


# -- rows edited by hand -----------------------------------------------------------------------
# SQLite columns take any value, so a row edited with the sqlite3 shell (or damaged) can hold
# text where a time belongs, a blob where a count belongs. Such a row must cost only itself:
# it is dead-lettered with the reason, its neighbours are delivered, and every listing shows
# the bad field with a marker instead of failing.

# column, SQL value, the word the dead letter's error must contain (None: the row is still
# readable and is delivered). Not here: attempts, which a claim's "attempts + 1" turns back
# into a number (the property test below covers it).
CORRUPTIONS: list[tuple[str, str, str | None]] = [
    ("created_at", "1e20", "created_at"),
    ("created_at", "-1e20", "created_at"),
    ("created_at", "'yesterday'", "created_at"),
    ("created_at", "9e999", "created_at"),
    ("expires_at", "'never'", "expires_at"),
    ("expires_at", "1e20", "expires_at"),
    ("priority", "'high'", "priority"),
    ("priority", "1.5", "priority"),
    ("max_attempts", "'x'", "max_attempts"),
    ("prior_attempts", "x'00'", "prior_attempts"),
    ("last_error", "x'ff'", "last_error"),
    ("group_key", "x'ff'", "group_key"),
    ("checksum", "'abc'", "checksum"),
    ("encoding", "x'6a736f6e'", "encoding"),
    ("payload", "NULL", "payload"),
    ("payload", "12345", "checksum"),
    ("encoding", "CAST(x'74657874ff' AS TEXT)", "encoding"),  # 'text' and a byte not UTF-8
    ("last_error", "CAST(x'6f6f7073ff' AS TEXT)", None),  # read with U+FFFD for the byte
    ("updated_at", "'x'", None),  # not part of a message
    ("lease_expires_at", "'x'", None),  # a pending row's lease is set by the claim
]


def _edit_row(
    db: Path, table: str, column: str, value: str, message_id: int, *params: object
) -> None:
    """Set one column of one row by hand, as the sqlite3 shell would: ``value`` is an SQL
    expression (its ``?`` take ``params``)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute(f"UPDATE {table} SET {column} = {value} WHERE id = ?", (*params, message_id))
        conn.commit()
    finally:
        conn.close()


def _entry(entries: list[dict[str, Any]], message_id: int) -> dict[str, Any]:
    (found,) = [e for e in entries if e["id"] == message_id]
    return found


def _listings_work(queue: Queue) -> None:
    """No listing or inspection call fails (whatever rows the queue holds)."""
    for state in ("all", "pending", "delayed", "processing", "dead", "done"):
        ok(queue.list_messages(state))
    ok(queue.get_dead_letters())
    ok(queue.get_completed())
    ok(queue.get_all_statuses())
    ok(queue.stats())
    ok(queue.is_empty())


@pytest.mark.parametrize("method", ["dequeue", "dequeue_batch", "peek"])
@pytest.mark.parametrize(
    ("column", "value", "reason"), CORRUPTIONS, ids=[f"{c}={v}" for c, v, _ in CORRUPTIONS]
)
@pytest.mark.plain_file("edits rows by hand with stdlib sqlite3, which has no key")
def test_unreadable_field_costs_only_its_row(
    make_sqlite_queue: Callable[..., SQLiteQueue],
    db_path: Path,
    column: str,
    value: str,
    reason: str | None,
    method: str,
) -> None:
    """One hand-edited row, first in line: dequeue, dequeue_batch and peek get past it to
    the next message; it is dead-lettered with a reason naming the field (or delivered,
    when it can still be read); listings never fail and mark the bad field."""
    queue = make_sqlite_queue(table_name="jobs")
    bad, first, second = ok(queue.enqueue_batch(["bad", "first", "second"]))
    _edit_row(db_path, "jobs", column, value, bad)
    listed = _entry(ok(queue.list_messages("all")), bad)
    if column in ("created_at", "expires_at", "priority", "max_attempts", "prior_attempts"):
        shown = "enqueued_at" if column == "created_at" else column
        assert str(listed[shown]).startswith("<invalid: "), listed
    _listings_work(queue)
    if method == "dequeue":
        got = [ok(queue.dequeue()).id]
    elif method == "dequeue_batch":
        got = [m.id for m in ok(queue.dequeue_batch(10))]
    else:
        got = [ok(queue.peek()).id]
    dead = ok(queue.get_dead_letters())
    if reason is None:
        assert dead == []
        expected = {"dequeue": [bad], "dequeue_batch": [bad, first, second], "peek": [bad]}
        assert got == expected[method]
    else:
        expected = {"dequeue": [first], "dequeue_batch": [first, second], "peek": [first]}
        assert got == expected[method]
        assert [d["id"] for d in dead] == [bad]
        assert dead[0]["last_error"].startswith("undeliverable: ")
        assert reason in dead[0]["last_error"], dead[0]["last_error"]
        assert _entry(ok(queue.list_messages("dead")), bad)["last_error"] == dead[0]["last_error"]
    _listings_work(queue)
    # The queue goes on: every other message is delivered, once.
    rest = [m.id for m in ok(queue.dequeue_batch(10))]
    taken = rest if method == "peek" else got + rest
    assert sorted(taken) == sorted([first, second] + ([bad] if reason is None else []))


@pytest.mark.plain_file("edits rows by hand with stdlib sqlite3, which has no key")
def test_completed_row_with_unreadable_time_is_listed_with_a_marker(
    make_sqlite_queue: Callable[..., SQLiteQueue], db_path: Path
) -> None:
    """get_completed (retention) marks a completion time edited into text."""
    queue = make_sqlite_queue(table_name="jobs", retention=3600)
    ok(queue.enqueue_batch(["a", "b"]))
    for message in ok(queue.dequeue_batch(2)):
        ok(queue.complete(message))
    first = ok(queue.get_completed())[0]["id"]
    _edit_row(db_path, '"jobs#done"', "completed_at", "'soon'", first)
    done = ok(queue.get_completed())
    assert [d["completed_at"] for d in done if d["id"] == first] == ["<invalid: 'soon'>"]
    assert all(isinstance(d["completed_at"], datetime) for d in done if d["id"] != first)


@pytest.mark.plain_file("edits rows by hand with stdlib sqlite3, which has no key")
def test_dead_letter_with_unreadable_fields_is_listed_with_markers(
    make_sqlite_queue: Callable[..., SQLiteQueue], db_path: Path
) -> None:
    """A dead letter edited by hand (its times, its counts) is listed with markers; the
    others are listed as usual, and it can still be redriven and dead-lettered again."""
    queue = make_sqlite_queue(table_name="jobs")
    ids = ok(queue.enqueue_batch(["a", "b"]))
    for message_id in ids:
        ok(queue.fail_message(message_id, send_to_dlq=True))
    _edit_row(db_path, "jobs_dlq", "dead_at", "'then'", ids[0])
    _edit_row(db_path, "jobs_dlq", "created_at", "1e300", ids[0])
    _edit_row(db_path, "jobs_dlq", "attempts", "'many'", ids[0])
    letters = ok(queue.get_dead_letters())
    marked = _entry(letters, ids[0])
    assert (marked["dead_at"], marked["created_at"], marked["attempts"]) == (
        "<invalid: 'then'>",
        "<invalid: 1e+300>",
        "<invalid: 'many'>",
    )
    assert isinstance(_entry(letters, ids[1])["dead_at"], datetime)
    assert ok(queue.redrive()) == 2
    assert [m.payload for m in ok(queue.dequeue_batch(10))] == ["b"]
    assert [d["id"] for d in ok(queue.get_dead_letters())] == [ids[0]]
    _listings_work(queue)


IMPOSSIBLE_LEASES = ["NULL", "'soon'", "x'00'", "9e999", "1e20"]


@pytest.mark.parametrize("value", IMPOSSIBLE_LEASES)
@pytest.mark.plain_file("edits rows by hand with stdlib sqlite3, which has no key")
def test_impossible_lease_on_a_processing_row_is_recovered(
    make_sqlite_queue: Callable[..., SQLiteQueue], db_path: Path, value: str
) -> None:
    """A processing row whose lease expiry is NULL, text, a blob, infinite or centuries
    away would never expire: the next claim folds it back, and it is delivered again (or
    dead-lettered, on its last attempt)."""
    queue = make_sqlite_queue(table_name="jobs")
    retried = ok(queue.enqueue("retried"))
    last = ok(queue.enqueue("last", max_attempts=1))
    for message in ok(queue.dequeue_batch(2)):  # the consumer "crashes" holding both
        _edit_row(db_path, "jobs", "lease_expires_at", value, message.id)
    _listings_work(queue)
    again = ok(queue.dequeue())
    assert again is not None
    assert (again.id, again.attempts) == (retried, 2)
    assert "lease expired" in (again.last_error or "")
    (letter,) = ok(queue.get_dead_letters())
    assert letter["id"] == last
    assert "lease expired on the last attempt" in letter["last_error"]
    assert ok(queue.stats()).lease_expirations_total == 2


@pytest.mark.plain_file("edits rows by hand with stdlib sqlite3, which has no key")
@pytest.mark.parametrize("value", ["'later'", "'2026-01-01'", "x'00'", "9e999", "1e20"])
def test_invisible_row_edited_by_hand_is_made_visible_by_the_next_claim(
    make_sqlite_queue: Callable[..., SQLiteQueue], db_path: Path, value: str
) -> None:
    """A pending row whose visibility time is text, a blob, infinite or centuries away
    would never be ready: it is listed as delayed (text with a marker) until a claim that
    finds nothing else to take makes it visible now and delivers it; every call works
    meanwhile."""
    queue = make_sqlite_queue(table_name="jobs")
    hidden, after = ok(queue.enqueue_batch(["hidden", "after"]))
    _edit_row(db_path, "jobs", "visible_at", value, hidden)
    entry = _entry(ok(queue.list_messages("all")), hidden)
    assert entry["status"] == "delayed"
    if value.startswith("'"):
        assert entry["visible_at"] == f"<invalid: {value}>"
    _listings_work(queue)
    assert [m.id for m in ok(queue.dequeue_batch(10))] == [after]  # (served first)
    assert [m.id for m in ok(queue.dequeue_batch(10))] == [hidden]
    _listings_work(queue)


@pytest.mark.parametrize("lease", ["1e20", "'NaN'", "'Infinity'"])
def test_unreadable_rows_on_every_backend(
    queue: Queue, queue_target: QueueTarget, lease: str
) -> None:
    """The same isolation on PostgreSQL, whose typed columns still take an impossible time:
    a creation time of 1e20 dead-letters only its row; a NULL, NaN, infinite or
    centuries-away lease on a processing row is recovered."""
    ids = ok(queue.enqueue_batch(["a", "bad", "c", "crashed-1", "crashed-2"]))
    crashed = ok(queue.dequeue_batch(2, visibility_timeout=60))
    assert [m.id for m in crashed] == ids[:2]  # "a" and "bad": leased, then lost
    queue_target.run_sql(
        [
            f"UPDATE jobs SET created_at = 1e20 WHERE id = {ids[1]}",
            f"UPDATE jobs SET lease_expires_at = NULL WHERE id = {ids[0]}",
            f"UPDATE jobs SET lease_expires_at = {lease} WHERE id = {ids[1]}",
        ]
    )
    _listings_work(queue)
    got = ok(queue.dequeue_batch(10))
    assert sorted(m.id for m in got) == [ids[0], *ids[2:]]
    (letter,) = ok(queue.get_dead_letters())
    assert letter["id"] == ids[1]
    assert "created_at" in letter["last_error"]
    assert letter["created_at"] == "<invalid: 1e+20>"
    for message in got:
        ok(queue.complete(message))
    assert ok(queue.is_empty()) is True
    _listings_work(queue)


def test_rows_edited_by_hand_that_no_claim_would_take_are_put_right(
    queue: Queue, queue_target: QueueTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """A waiting row without a group, the first waiting row of a group with no message
    ahead of it, and a pending row whose visibility time is impossible would never be
    delivered: the queue serves what it can, then a claim that finds nothing else to take
    makes them pending and visible (and says so in the log) and takes them, and the group
    goes on one message at a time."""
    orphan, hidden, _ = ok(queue.enqueue_batch(["orphan", "hidden", "plain"]))
    head = ok(queue.enqueue("head", group="g"))
    ok(queue.enqueue("behind", group="g"))
    queue_target.run_sql(
        [
            f"UPDATE jobs SET status = 'waiting' WHERE id = {orphan}",
            f"UPDATE jobs SET visible_at = 'Infinity' WHERE id = {hidden}",
            f"UPDATE jobs SET status = 'waiting' WHERE id = {head}",
        ]
    )
    with caplog.at_level(logging.WARNING, logger="sqqueue"):
        served = ok(queue.dequeue_batch(10))
        assert [m.payload for m in served] == ["plain"]
        assert "edited by hand" not in caplog.text  # (not looked for while serving)
        got = ok(queue.dequeue_batch(10))
    assert [m.payload for m in got] == ["orphan", "hidden", "head"]
    assert "2 waiting message(s)" in caplog.text
    assert "1 message(s) with an impossible visibility time" in caplog.text
    stats = ok(queue.stats())
    assert (stats.ready, stats.waiting, stats.processing) == (0, 1, 4)
    for message in served + got:
        ok(queue.complete(message))
    behind = ok(queue.dequeue())
    assert behind is not None and behind.payload == "behind"
    ok(queue.complete(behind))
    assert ok(queue.is_empty()) is True


# Every column a hand edit could spoil, except id (the key), status (a CHECK constraint
# guards it) and visible_at (a queue object looks for impossible visibility times at most
# once a minute, so not within this test; see
# test_invisible_row_edited_by_hand_is_made_visible_by_the_next_claim).
EDITABLE_COLUMNS = [
    "payload", "encoding", "checksum", "priority", "lease_token", "lease_expires_at",
    "attempts", "max_attempts", "last_error", "created_at", "updated_at", "group_key",
    "expires_at", "prior_attempts",
]  # fmt: skip


# Values as (SQL expression, parameter): anything sqlite3 binds, and text that is not
# UTF-8 (only SQL can store that).
SQL_VALUES = st.one_of(
    st.sampled_from([None, "yesterday", "", b"", 0, -1, 2.5, 1e20, -1e20]).map(lambda v: ("?", v)),
    st.text(max_size=12).map(lambda v: ("?", v)),
    st.binary(max_size=12).map(lambda v: ("?", v)),
    st.floats(allow_nan=False).map(lambda v: ("?", v)),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda v: ("?", v)),
    st.binary(min_size=1, max_size=12).map(lambda v: ("CAST(? AS TEXT)", v)),
)


# A hang must end the run with a stack dump: the default (signal) timeout would be taken
# for a failure and shrunk, by running the hanging example again.
@pytest.mark.timeout(120, method="thread")
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    column=st.sampled_from(EDITABLE_COLUMNS),
    value=SQL_VALUES,
    victim=st.integers(min_value=0, max_value=5),
)
@pytest.mark.slow
def test_one_spoiled_field_costs_at_most_its_own_message(
    tmp_path: Path, column: str, value: tuple[str, object], victim: int
) -> None:
    """Property: whatever one field of one row (pending or leased by a consumer that
    crashed) is edited into, no call fails, every other message is completed exactly
    once, and the edited one is either completed or dead-lettered with a reason."""
    clock = FakeClock()
    with tempfile.TemporaryDirectory(dir=tmp_path) as here:
        db = Path(here) / "spoiled.db"
        queue = SQLiteQueue(db, "jobs", clock=clock, default_visibility_timeout=30)
        try:
            ids = ok(queue.enqueue_batch([("a", 1), "b", {"c": 3}, b"d", ("e", 5), "f"]))
            ok(queue.dequeue_batch(2))  # leased by a consumer that then crashed
            try:
                _edit_row(db, "jobs", column, value[0], ids[victim], value[1])
            except sqlite3.IntegrityError:
                assume(False)  # a NOT NULL or CHECK constraint refused the edit
            completed: list[int] = []
            for step in range(6):
                _listings_work(queue)
                ok(queue.peek())
                for message in ok(queue.dequeue_batch(10)):
                    ok(queue.complete(message))
                    completed.append(message.id)
                # Past every lease; then past a month, for a lease edited to days ahead.
                clock.advance(31 * 86400 if step == 3 else 31)
            assert ok(queue.is_empty()) is True
            dead = {d["id"]: d["last_error"] for d in ok(queue.get_dead_letters())}
            assert set(dead) <= {ids[victim]}, dead
            assert all(dead.values()), dead
            assert sorted(completed + list(dead)) == ids
            _listings_work(queue)
        finally:
            queue.close()


@pytest.mark.parametrize("flag", ["smtp timeout", 1.5, [True]])
def test_fail_message_refuses_a_send_to_dlq_that_is_not_a_flag(
    make_queue: MakeQueue, flag: Any
) -> None:
    """fail_message(message, "smtp timeout") reads as an error text, but the second
    argument is send_to_dlq: refused, rather than dead-lettering with the text lost."""
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue("x"))
    message = leased(queue)
    result = queue.fail_message(message, flag)
    assert result.is_err()
    assert result.error.kind is ErrorKind.INVALID_INPUT  # type: ignore[union-attr]
    assert "error=" in str(result.error)
    assert [s["status"] for s in message_statuses(queue)] == ["processing"]
    assert queue.fail_message(message, error="smtp timeout").is_ok()


def test_a_private_memory_queue_has_stats(clock: Any) -> None:
    queue = SQLiteQueue(":memory:", "jobs", clock=clock)
    ok(queue.enqueue("x"))
    stats = ok(queue.stats())
    assert (stats.ready, stats.db_bytes, stats.wal_frames) == (1, 0, 0)
    queue.close()


def test_a_schema_version_edited_into_text_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    SQLiteQueue(path, "jobs").close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE sqqueue_queues SET schema_version = 'seven'")
    conn.close()
    with pytest.raises(QueueError, match="'seven' in the sqqueue_queues table") as raised:
        SQLiteQueue(path, "jobs")
    assert raised.value.kind is ErrorKind.CORRUPT
