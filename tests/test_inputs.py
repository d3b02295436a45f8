"""Bad input sweep: hostile names, unusable paths, every payload type, out-of-range arguments.

Contract tests run on every backend (``queue``/``make_queue``); the unusable-path and
damaged-file tests are about SQLite files and use SQLiteQueue directly.

Every refused call must come back as ``Err`` with the right kind and a message that names the
problem (or raise ValueError/QueueError at construction); no exception may escape a method.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import QueueTarget
from helpers import message_statuses
from sqqueue import (
    CompletionError,
    DequeueError,
    EnqueueError,
    Err,
    ErrorKind,
    Message,
    Ok,
    Queue,
    QueueError,
    RequeueError,
    Result,
    SQLiteQueue,
)

MakeQueue = Callable[..., Queue]


def expect_err(result: Result[Any, Any], kind: ErrorKind, *words: str) -> QueueError:
    """Assert an Err of ``kind`` whose message contains every one of ``words``."""
    assert isinstance(result, Err), f"expected Err({kind}), got {result!r}"
    assert isinstance(result.error, QueueError)
    assert result.error.kind is kind, f"expected kind {kind}, got {result.error!r}"
    text = str(result.error).lower()
    for word in words:
        assert word.lower() in text, f"{word!r} not in error message {str(result.error)!r}"
    return result.error


def ok(result: Result[Any, Any]) -> Any:
    assert isinstance(result, Ok), f"expected Ok, got {result!r}"
    return result.value


def leased(queue: Queue, **kwargs: Any) -> Message:
    message = ok(queue.dequeue(**kwargs))
    assert isinstance(message, Message)
    return message


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


def _without_dac_override(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH.

    The tests run as root, where chmod does not stop writes (root bypasses file permissions
    through those capabilities). Linux capabilities are per thread, so dropping them from the
    effective set of one short-lived thread makes file modes apply to it, like to any other
    user, without touching the rest of the test process. Returns (value or exception).
    """
    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    outcome: dict[str, Any] = {}

    def run() -> None:
        header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
        data = (Data * 2)()
        if libc.capget(ctypes.byref(header), data) != 0:
            outcome["setup"] = OSError(ctypes.get_errno(), "capget failed")
            return
        data[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.capset(ctypes.byref(header), data) != 0:
            outcome["setup"] = OSError(ctypes.get_errno(), "capset failed")
            return
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if "setup" in outcome:
        raise outcome["setup"]
    return outcome.get("error", outcome.get("value"))


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

    probe = _without_dac_override(try_write)
    assert isinstance(probe, PermissionError), "the thread can still write: the setup failed"
    result = _without_dac_override(lambda: SQLiteQueue(path, table_name="jobs", clock=clock))
    assert isinstance(result, QueueError), f"expected QueueError, got {result!r}"
    assert result.kind is ErrorKind.READ_ONLY
    assert str(path) in str(result)
    assert "read-only" in without_path(result, path)


def test_new_file_in_read_only_directory_is_value_error(tmp_path: Path, clock: Any) -> None:
    """A database that cannot be created in a read-only directory: ValueError naming it."""
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    path = directory / "q.db"
    try:
        result = _without_dac_override(lambda: SQLiteQueue(path, table_name="jobs", clock=clock))
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


@pytest.mark.parametrize(("payload", "words"), REFUSED, ids=[repr(p) for p, _ in REFUSED])
def test_unstorable_payload_is_serialization_err(queue: Queue, payload: Any, words: str) -> None:
    """Payloads that would not round-trip exactly: Err(SERIALIZATION), nothing enqueued."""
    error = expect_err(queue.enqueue(payload), ErrorKind.SERIALIZATION, words)
    assert isinstance(error, EnqueueError)
    assert message_statuses(queue) == []
    # As a batch item the payload is wrapped in a 1-tuple, so a tuple payload stays a payload.
    expect_err(queue.enqueue_batch(["fine", (payload,)]), ErrorKind.SERIALIZATION, "item 1")
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
    expect_err(queue.enqueue("x", priority=priority), ErrorKind.INVALID_INPUT, "priority")
    expect_err(
        queue.enqueue_batch(["a", ("x", priority)]), ErrorKind.INVALID_INPUT, "priority", "item 1"
    )
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
    expect_err(queue.enqueue("x", delay=delay), ErrorKind.INVALID_INPUT, "delay")
    expect_err(queue.enqueue_batch([("x", None, delay)]), ErrorKind.INVALID_INPUT, "delay")
    assert message_statuses(queue) == []
    ok(queue.enqueue("y"))
    message = leased(queue)
    expect_err(queue.fail_message(message, delay=delay), ErrorKind.INVALID_INPUT, "delay")
    assert message_statuses(queue)[0]["status"] == "processing"


BAD_TIMEOUTS = [0, -1, float("nan"), float("inf"), 10**9, 1e300, "30", True, None]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS[:-1], ids=repr)
def test_bad_visibility_timeout_is_err(queue: Queue, timeout: Any) -> None:
    """Zero, negative, NaN, infinite, huge or non-numeric lease times are refused."""
    ok(queue.enqueue("x"))
    expect_err(queue.dequeue(visibility_timeout=timeout), ErrorKind.INVALID_INPUT, "visibility")
    error = expect_err(
        queue.dequeue_batch(5, visibility_timeout=timeout), ErrorKind.INVALID_INPUT, "visibility"
    )
    assert isinstance(error, DequeueError)
    assert message_statuses(queue)[0]["status"] == "pending"  # nothing was leased
    message = leased(queue)
    error = expect_err(queue.extend(message, timeout), ErrorKind.INVALID_INPUT, "seconds")
    assert isinstance(error, RequeueError)


@pytest.mark.parametrize("size", [0, -1, 10**6, 2**64, True, 2.0, "10", None])
def test_bad_batch_size_is_err(queue: Queue, size: Any) -> None:
    """batch_size must be an int from 1 to a sane maximum."""
    ok(queue.enqueue("x"))
    expect_err(queue.dequeue_batch(size), ErrorKind.INVALID_INPUT, "batch_size")
    assert message_statuses(queue)[0]["status"] == "pending"


@pytest.mark.parametrize("attempts", [0, -1, True, 1.5, 10**12, "3"])
def test_bad_max_attempts_is_err(queue: Queue, attempts: Any) -> None:
    """max_attempts must be a positive int."""
    expect_err(queue.enqueue("x", max_attempts=attempts), ErrorKind.INVALID_INPUT, "max_attempts")
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
    error = expect_err(ID_CALLS[call](queue, bad_id), ErrorKind.INVALID_INPUT)
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
    expect_err(queue.fail_message(message, error=123), ErrorKind.INVALID_INPUT, "error")  # type: ignore[arg-type]
    expect_err(queue.fail_message(message, error=b"x"), ErrorKind.INVALID_INPUT, "error")  # type: ignore[arg-type]
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
    expect_err(queue.complete(message), ErrorKind.NOT_FOUND, str(message.id))
    expect_err(queue.complete(message.id), ErrorKind.NOT_FOUND, str(message.id))


def test_fail_after_complete(queue: Queue) -> None:
    """Failing, requeueing or extending a completed message is NOT_FOUND; nothing appears."""
    ok(queue.enqueue("x"))
    message = leased(queue)
    ok(queue.complete(message))
    expect_err(queue.fail_message(message), ErrorKind.NOT_FOUND)
    expect_err(queue.fail_message(message, send_to_dlq=True), ErrorKind.NOT_FOUND)
    expect_err(queue.requeue(message), ErrorKind.NOT_FOUND)
    expect_err(queue.extend(message, 10), ErrorKind.NOT_FOUND)
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
    expect_err(queue.enqueue("too high"), ErrorKind.INVALID_INPUT, "priority")
    expect_err(queue.enqueue_batch(["a", "b"]), ErrorKind.INVALID_INPUT, "priority")
    queue.default_priority = 0
    queue.default_max_attempts = True  # type: ignore[assignment]
    expect_err(queue.enqueue("bool"), ErrorKind.INVALID_INPUT, "max_attempts")
    statuses = message_statuses(queue)
    assert [s["id"] for s in statuses][:1] == [first]
    assert len(statuses) == 3
