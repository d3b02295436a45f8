"""Per-method tests of the public queue API: values, types and side effects.

Contract tests: ``queue``/``make_queue`` run each test on every backend (SQLite and
PostgreSQL). Tests about SQLite's files use ``sqlite_queue``/``make_sqlite_queue``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
import stat
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import sqqueue
from conftest import QueueTarget
from helpers import at, err, leased, message_statuses, ok
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
MakeSQLiteQueue = Callable[..., SQLiteQueue]


# -- Result ----------------------------------------------------------------------------------


def test_result_types_behave_as_documented() -> None:
    """Ok/Err expose value/error, truthiness, unwrap, unwrap_or, map and equality."""
    good: Result[int, QueueError] = Ok(3)
    assert good.is_ok() and not good.is_err()
    assert good.value == 3 and good.error is None
    assert good.unwrap() == 3 and good.unwrap_or(9) == 3
    assert good.map(lambda v: v * 2) == Ok(6)
    # As true as its value, so `if queue.is_empty():` reads as written; success is is_ok().
    assert bool(good) is True and bool(Ok(None)) is False and Ok(None).is_ok()
    error = QueueError("boom", ErrorKind.NOT_FOUND, 7)
    bad: Result[int, QueueError] = Err(error)
    assert bad.is_err() and not bad.is_ok()
    assert bad.error is error
    with pytest.raises(AttributeError, match=r"Err has no value.*boom"):
        _ = bad.value
    assert bad.unwrap_or(9) == 9
    assert bad.map(lambda v: v * 2) is bad
    assert bool(bad) is False
    assert bad == Err(QueueError("boom"))
    assert bad != Err(QueueError("other"))
    with pytest.raises(QueueError, match="boom"):
        bad.unwrap()
    assert error.message_id == 7


def test_match_case_on_results(queue: Queue) -> None:
    """Results and messages support structural pattern matching."""

    def describe(result: Result[Any, QueueError]) -> str:
        match result:
            case Ok(None):
                return "empty"
            case Ok(Message(id=msg_id, payload=payload)):
                return f"message {msg_id}: {payload}"
            case Ok(value):
                return f"value {value}"
            case Err(QueueError(kind=ErrorKind.NOT_FOUND)):
                return "not found"
            case Err(error):
                return f"error {error.kind.value}"
        return "unreachable"

    assert describe(queue.dequeue()) == "empty"
    assert describe(queue.enqueue("hello")) == "value 1"
    assert describe(queue.dequeue()) == "message 1: hello"
    assert describe(queue.complete(99)) == "not found"
    assert describe(queue.complete("x")) == "error invalid_input"  # type: ignore[arg-type]


# -- enqueue ---------------------------------------------------------------------------------


def test_enqueue_returns_ok_int_ids_in_order(queue: Queue) -> None:
    """enqueue returns Ok(int) with increasing ids, and the message is pending."""
    first = queue.enqueue("a")
    second = queue.enqueue({"b": 1}, priority=3, max_attempts=2)
    assert isinstance(first, Ok) and type(first.value) is int
    assert first.value == 1 and second.value == 2
    assert message_statuses(queue) == [
        {"id": 1, "status": "ready", "priority": 0, "attempts": 0, "max_attempts": 5},
        {"id": 2, "status": "ready", "priority": 3, "attempts": 0, "max_attempts": 2},
    ]


def test_enqueue_uses_queue_defaults(make_queue: MakeQueue) -> None:
    """default_priority and default_max_attempts apply when the call leaves them out."""
    queue = make_queue(table_name="jobs", default_priority=4, default_max_attempts=9)
    msg_id = ok(queue.enqueue("x"))
    assert message_statuses(queue) == [
        {"id": msg_id, "status": "ready", "priority": 4, "attempts": 0, "max_attempts": 9}
    ]


def test_enqueue_accepts_timedelta_delay(queue: Queue, clock: Any) -> None:
    """A timedelta delay works like seconds."""
    ok(queue.enqueue("later", delay=timedelta(minutes=1)))
    assert message_statuses(queue)[0]["status"] == "delayed"
    clock.advance(60)
    assert leased(queue).payload == "later"


# -- enqueue_batch ---------------------------------------------------------------------------


def test_enqueue_batch_plain_and_tuple_items(queue: Queue, clock: Any) -> None:
    """Plain payloads and (payload, priority, delay, max_attempts) tuples, trailing parts optional."""
    ids = ok(
        queue.enqueue_batch(
            [
                "plain",
                ("only-payload",),
                ("urgent", 10),
                ("later", None, 30),
                ("fragile", 1, 0, 1),
                ("defaults", None, None, None),
            ]
        )
    )
    assert ids == [1, 2, 3, 4, 5, 6]
    assert all(type(i) is int for i in ids)
    rows = {row["id"]: row for row in message_statuses(queue)}
    assert rows[1] == {
        "id": 1,
        "status": "ready",
        "priority": 0,
        "attempts": 0,
        "max_attempts": 5,
    }
    assert rows[3]["priority"] == 10
    assert rows[4]["status"] == "delayed"
    assert rows[5] == {
        "id": 5,
        "status": "ready",
        "priority": 1,
        "attempts": 0,
        "max_attempts": 1,
    }
    assert rows[6]["max_attempts"] == 5
    order = [m.payload for m in ok(queue.dequeue_batch(10))]
    assert order == ["urgent", "fragile", "plain", "only-payload", "defaults"]
    clock.advance(30)
    assert leased(queue).payload == "later"


def test_enqueue_batch_empty_list(queue: Queue) -> None:
    """An empty batch is Ok([]) and adds nothing."""
    assert ok(queue.enqueue_batch([])) == []
    assert message_statuses(queue) == []


@pytest.mark.parametrize(
    ("bad_item", "kind", "words"),
    [
        (((1, 2),), ErrorKind.SERIALIZATION, "tuple"),  # a tuple item whose payload is a tuple
        (float("nan"), ErrorKind.SERIALIZATION, "nan"),
        ({1, 2}, ErrorKind.SERIALIZATION, "set"),
        (("x", "high"), ErrorKind.INVALID_INPUT, "priority"),
        (("x", 0, -5), ErrorKind.INVALID_INPUT, "delay"),
        (("x", 0, 0, 0), ErrorKind.INVALID_INPUT, "max_attempts"),
        (("x", 0, 0, 1, "extra"), ErrorKind.INVALID_INPUT, "1 to 4"),
        ((), ErrorKind.INVALID_INPUT, "1 to 4"),
    ],
)
def test_enqueue_batch_is_all_or_nothing(
    queue: Queue, bad_item: Any, kind: ErrorKind, words: str
) -> None:
    """One bad item in the middle: Err naming the item, and nothing at all is enqueued."""
    ok(queue.enqueue("before"))
    before = message_statuses(queue)
    items = ["a", "b", bad_item, "c", "d"]
    error = err(queue.enqueue_batch(items), kind, cls=EnqueueError)
    assert "item 2" in str(error)
    assert words in str(error)
    assert "nothing was enqueued" in str(error)
    assert message_statuses(queue) == before
    # The queue still works after the refused batch, and ids are not skipped.
    assert ok(queue.enqueue_batch(["e"])) == [2]


@pytest.mark.parametrize("not_a_list", ["abc", b"abc", {"a": 1}, None, 5])
def test_enqueue_batch_refuses_non_lists(queue: Queue, not_a_list: Any) -> None:
    """A str, bytes, dict, None or int is not a batch."""
    error = err(queue.enqueue_batch(not_a_list), ErrorKind.INVALID_INPUT, cls=EnqueueError)
    assert "list" in str(error)
    assert message_statuses(queue) == []


# -- dequeue / Message ------------------------------------------------------------------------


def test_dequeue_empty_is_ok_none(queue: Queue) -> None:
    """An empty queue gives Ok(None), not an Err."""
    result = queue.dequeue()
    assert isinstance(result, Ok)
    assert result.value is None


def test_message_unpacks_and_carries_attributes(queue: Queue, clock: Any) -> None:
    """msg_id, payload = message works; attributes match what was enqueued and the lease."""
    enqueued_at = clock()
    msg_id = ok(queue.enqueue({"k": [1, 2]}, priority=7, max_attempts=3))
    clock.advance(5)
    message = leased(queue, visibility_timeout=42)
    got_id, payload = message
    assert (got_id, payload) == (msg_id, {"k": [1, 2]})
    assert len(message) == 2
    assert message[0] == msg_id and message[1] == {"k": [1, 2]}
    assert list(message) == [msg_id, {"k": [1, 2]}]
    assert message.id == msg_id
    assert message.priority == 7
    assert message.attempts == 1
    assert message.max_attempts == 3
    assert message.enqueued_at == at(enqueued_at)
    assert message.enqueued_at.tzinfo is not None
    assert message.lease_expires_at == at(clock() + 42)
    assert message.last_error is None
    assert message.queue == "jobs"
    assert isinstance(message.lease_token, int)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.payload = "changed"  # type: ignore[misc]


def test_dequeue_uses_default_visibility_timeout(make_queue: MakeQueue, clock: Any) -> None:
    """Without visibility_timeout the lease lasts default_visibility_timeout seconds."""
    queue = make_queue(table_name="jobs", default_visibility_timeout=12.5)
    ok(queue.enqueue("x"))
    assert leased(queue).lease_expires_at == at(clock() + 12.5)


def test_attempts_increment_on_each_delivery(queue: Queue) -> None:
    """attempts is 1 on first delivery and grows with every dequeue of the same message."""
    ok(queue.enqueue("x"))
    for expected in (1, 2, 3):
        message = leased(queue)
        assert message.attempts == expected
        ok(queue.requeue(message))


# -- dequeue_batch --------------------------------------------------------------------------


def test_dequeue_batch_is_ordered_and_leases_all(queue: Queue, clock: Any) -> None:
    """dequeue_batch returns up to batch_size messages in delivery order, all leased."""
    ok(queue.enqueue_batch(["p0-a", ("p5-a", 5), "p0-b", ("p5-b", 5), ("p9", 9)]))
    batch = ok(queue.dequeue_batch(4, visibility_timeout=20))
    assert [m.payload for m in batch] == ["p9", "p5-a", "p5-b", "p0-a"]
    assert all(m.attempts == 1 and m.lease_expires_at == at(clock() + 20) for m in batch)
    processing = [row["id"] for row in message_statuses(queue) if row["status"] == "processing"]
    assert sorted(processing) == sorted(m.id for m in batch)
    rest = ok(queue.dequeue_batch(10))
    assert [m.payload for m in rest] == ["p0-b"]
    assert ok(queue.dequeue_batch(10)) == []


def test_dequeue_batch_default_size_is_ten(queue: Queue) -> None:
    """The default batch_size is 10."""
    ok(queue.enqueue_batch([str(i) for i in range(15)]))
    assert len(ok(queue.dequeue_batch())) == 10


def test_dequeue_batch_is_atomic_across_consumers(make_queue: MakeQueue) -> None:
    """Two consumers' batches never share a message."""
    first, second = make_queue(table_name="jobs"), make_queue(table_name="jobs")
    ok(first.enqueue_batch(list(range(7))))
    a = ok(first.dequeue_batch(4))
    b = ok(second.dequeue_batch(4))
    assert len(a) == 4 and len(b) == 3
    assert {m.id for m in a}.isdisjoint({m.id for m in b})


# -- complete / fail_message / requeue / extend with Message or id --------------------------


@pytest.mark.parametrize("by", ["message", "id"])
def test_complete_removes_message(queue: Queue, by: str) -> None:
    """complete accepts a Message or its id, returns Ok(None) and deletes the message."""
    ok(queue.enqueue("x"))
    message = leased(queue)
    result = queue.complete(message if by == "message" else message.id)
    assert result == Ok(None)
    assert message_statuses(queue) == []
    assert ok(queue.is_drained()) is True


@pytest.mark.parametrize("by", ["message", "id"])
def test_fail_message_returns_to_pending(queue: Queue, by: str) -> None:
    """fail_message accepts a Message or id; the message is pending again with last_error."""
    ok(queue.enqueue("x"))
    message = leased(queue)
    assert queue.fail_message(message if by == "message" else message.id, error="oops") == Ok(None)
    assert message_statuses(queue) == [
        {"id": message.id, "status": "ready", "priority": 0, "attempts": 1, "max_attempts": 5}
    ]
    again = leased(queue)
    assert again.id == message.id and again.last_error == "oops" and again.attempts == 2


@pytest.mark.parametrize("by", ["message", "id"])
def test_requeue_returns_to_pending_at_once(queue: Queue, by: str) -> None:
    """requeue accepts a Message or id; the message is deliverable again immediately."""
    ok(queue.enqueue("x"))
    message = leased(queue, visibility_timeout=100)
    assert queue.requeue(message if by == "message" else message.id) == Ok(None)
    again = leased(queue)
    assert again.id == message.id
    assert again.attempts == 2


@pytest.mark.parametrize("by", ["message", "id"])
def test_extend_moves_lease_expiry(queue: Queue, clock: Any, by: str) -> None:
    """extend accepts a Message or id and returns Ok(new expiry) = now + seconds."""
    ok(queue.enqueue("x"))
    message = leased(queue, visibility_timeout=10)
    clock.advance(5)
    result = queue.extend(message if by == "message" else message.id, 60)
    assert isinstance(result, Ok)
    assert isinstance(result.value, datetime)
    assert result.value == at(clock() + 60)
    result = queue.extend(message, timedelta(seconds=90))
    assert ok(result) == at(clock() + 90)


def test_method_error_classes(queue: Queue) -> None:
    """Each method reports errors with its documented error class."""
    err(queue.enqueue(object()), ErrorKind.SERIALIZATION, cls=EnqueueError)
    err(queue.enqueue_batch([object()]), ErrorKind.SERIALIZATION, cls=EnqueueError)
    err(queue.dequeue(visibility_timeout=-1), ErrorKind.INVALID_INPUT, cls=DequeueError)
    err(queue.dequeue_batch(0), ErrorKind.INVALID_INPUT, cls=DequeueError)
    err(queue.complete(5), ErrorKind.NOT_FOUND, cls=CompletionError)
    err(queue.fail_message(5), ErrorKind.NOT_FOUND, cls=RequeueError)
    err(queue.requeue(5), ErrorKind.NOT_FOUND, cls=RequeueError)
    err(queue.extend(5, 10), ErrorKind.NOT_FOUND, cls=RequeueError)
    err(queue.reprocess_dead_letter(5), ErrorKind.NOT_FOUND, cls=RequeueError)
    error = err(queue.complete(5), ErrorKind.NOT_FOUND)
    assert error.message_id == 5


# -- peek / is_empty --------------------------------------------------------------------------


def test_peek_does_not_lease(queue: Queue) -> None:
    """peek shows the next message without leasing it or counting an attempt."""
    assert ok(queue.peek()) is None
    ok(queue.enqueue("low"))
    ok(queue.enqueue("high", priority=2))
    peeked = ok(queue.peek())
    assert isinstance(peeked, Message)
    assert peeked.payload == "high"
    assert peeked.attempts == 0
    assert peeked.lease_expires_at is None
    assert ok(queue.peek()).id == peeked.id  # still there
    assert all(row["status"] == "ready" and row["attempts"] == 0 for row in message_statuses(queue))
    message = leased(queue)
    assert message.id == peeked.id and message.attempts == 1
    assert ok(queue.peek()).payload == "low"


def test_peek_skips_delayed_and_leased(queue: Queue) -> None:
    """peek only shows what dequeue could take now."""
    ok(queue.enqueue("delayed", delay=10))
    ok(queue.enqueue("taken"))
    leased(queue)
    assert ok(queue.peek()) is None


def test_is_drained_semantics(queue: Queue, clock: Any) -> None:
    """is_drained is True only when nothing is ready, delayed, waiting or processing."""
    assert queue.is_drained() == Ok(True)
    ok(queue.enqueue("later", delay=60))
    assert queue.is_drained() == Ok(False)  # delayed counts
    clock.advance(60)
    message = leased(queue)
    assert queue.is_drained() == Ok(False)  # processing counts
    ok(queue.fail_message(message, send_to_dlq=True))
    assert len(ok(queue.get_dead_letters())) == 1
    assert queue.is_drained() == Ok(True)  # dead letters do not


def test_is_empty_means_nothing_to_dequeue_now(queue: Queue, clock: Any) -> None:
    """0.1.0's meaning: True when a dequeue now would return nothing; leased, delayed and
    waiting messages do not count, an expired lease (which dequeue hands out again) does."""
    assert queue.is_empty() == Ok(True)
    ok(queue.enqueue("later", delay=60))
    assert queue.is_empty() == Ok(True)  # delayed: nothing to dequeue yet
    assert queue.is_drained() == Ok(False)
    clock.advance(60)
    assert queue.is_empty() == Ok(False)  # due now
    message = leased(queue, visibility_timeout=30)
    assert queue.is_empty() == Ok(True)  # leased by someone: not dequeueable
    assert queue.is_drained() == Ok(False)
    clock.advance(31)
    assert queue.is_empty() == Ok(False)  # the lease expired: dequeue would deliver it
    again = leased(queue)
    assert again.id == message.id
    ok(queue.enqueue("head", group="g"))
    ok(queue.enqueue("second", group="g"))
    head = leased(queue)
    assert queue.is_empty() == Ok(True)  # "second" waits for its group's head
    ok(queue.complete(head))
    assert queue.is_empty() == Ok(False)
    assert leased(queue).payload == "second"


def test_is_empty_loop_does_not_spin_on_a_leased_message(queue: Queue) -> None:
    """``while not queue.is_empty().value: queue.dequeue()`` ends although another
    consumer holds a message."""
    ok(queue.enqueue_batch(["a", "b", "c"]))
    held = leased(queue)
    taken = []
    rounds = 0
    while not queue.is_empty().value:
        rounds += 1
        assert rounds < 10, "is_empty() stayed False with nothing left to dequeue"
        message = ok(queue.dequeue())
        assert message is not None
        taken.append(message.payload)
    assert taken == ["b", "c"]
    ok(queue.complete(held))


# -- dead letters ------------------------------------------------------------------------------


def test_get_dead_letters_keys_and_values(queue: Queue, clock: Any) -> None:
    """Dead letters are dicts with the documented keys, UTC datetimes and the original id."""
    created = clock()
    msg_id = ok(queue.enqueue(b"\x00bin", priority=3, max_attempts=4))
    clock.advance(10)
    message = leased(queue)
    clock.advance(1)
    ok(queue.fail_message(message, send_to_dlq=True, error="broken"))
    (entry,) = ok(queue.get_dead_letters())
    assert set(entry) >= {
        "id",
        "payload",
        "status",
        "priority",
        "attempts",
        "max_attempts",
        "last_error",
        "created_at",
        "updated_at",
        "dead_at",
    }
    assert entry["id"] == msg_id
    assert entry["payload"] == b"\x00bin"
    assert entry["status"] == "dead"
    assert entry["priority"] == 3
    assert entry["attempts"] == 1
    assert entry["max_attempts"] == 4
    assert entry["last_error"] == "broken"
    assert entry["created_at"] == at(created)
    assert entry["dead_at"] == at(clock())
    assert entry["updated_at"] == at(clock())
    for key in ("created_at", "updated_at", "dead_at"):
        assert entry[key].utcoffset() == timedelta(0)


def test_get_dead_letters_empty(queue: Queue) -> None:
    """No dead letters: Ok([])."""
    assert queue.get_dead_letters() == Ok([])


def test_reprocess_dead_letter_keeps_id_and_resets_attempts(queue: Queue) -> None:
    """A reprocessed dead letter is pending again under the same id with attempts 0."""
    ok(queue.enqueue("done"))
    ok(queue.complete(leased(queue)))
    msg_id = ok(queue.enqueue("poison", max_attempts=2, priority=4))
    assert msg_id == 2
    for _ in range(2):
        message = leased(queue)
        assert message.id == msg_id
        ok(queue.fail_message(message, error="bad"))
    assert [d["id"] for d in ok(queue.get_dead_letters())] == [msg_id]
    assert queue.reprocess_dead_letter(msg_id) == Ok(None)
    assert ok(queue.get_dead_letters()) == []
    assert message_statuses(queue) == [
        {"id": msg_id, "status": "ready", "priority": 4, "attempts": 0, "max_attempts": 2}
    ]
    again = leased(queue)
    assert (again.id, again.payload, again.attempts) == (msg_id, "poison", 1)
    # A second reprocess of the same id is an error: it is no longer dead.
    err(queue.reprocess_dead_letter(msg_id), ErrorKind.NOT_FOUND, cls=RequeueError)


# -- get_all_statuses --------------------------------------------------------------------------


def test_get_all_statuses_counts_by_status(queue: Queue, clock: Any) -> None:
    """Counts by status, 0.1.0's keys with 0.1.0's meaning plus sqqueue's own states,
    every key present; the per-message listing is list_messages()."""
    assert queue.get_all_statuses() == Ok({"pending": 0, "processing": 0, "waiting": 0, "dead": 0})
    ok(queue.enqueue("dead", priority=9))
    ok(queue.enqueue("processing", priority=8))
    ok(queue.enqueue("pending", priority=1))
    ok(queue.enqueue("delayed", delay=100, max_attempts=7))
    ok(queue.enqueue("group head", group="g", priority=-1))
    ok(queue.enqueue("group second", group="g", priority=-1))
    ok(queue.fail_message(1, send_to_dlq=True))
    assert leased(queue).id == 2
    assert queue.get_all_statuses() == Ok(
        # pending: ready (3, 5) and delayed (4); waiting: 6, behind its group's head
        {"pending": 3, "processing": 1, "waiting": 1, "dead": 1}
    )
    assert message_statuses(queue) == [
        {"id": 1, "status": "dead", "priority": 9, "attempts": 0, "max_attempts": 5},
        {"id": 2, "status": "processing", "priority": 8, "attempts": 1, "max_attempts": 5},
        {"id": 3, "status": "ready", "priority": 1, "attempts": 0, "max_attempts": 5},
        {"id": 4, "status": "delayed", "priority": 0, "attempts": 0, "max_attempts": 7},
        {"id": 5, "status": "ready", "priority": -1, "attempts": 0, "max_attempts": 5},
        {"id": 6, "status": "waiting", "priority": -1, "attempts": 0, "max_attempts": 5},
    ]
    counts = ok(queue.get_all_statuses())
    assert sum(counts.values()) == len(message_statuses(queue))


# -- maintenance ---------------------------------------------------------------------------


def _fill_and_drain(queue: Queue, count: int = 200, size: int = 10_000) -> None:
    ok(queue.enqueue_batch(["x" * size for _ in range(count)]))
    for message in ok(queue.dequeue_batch(count)):
        ok(queue.complete(message))


def test_maintenance_calls_are_ok_and_keep_messages(make_queue: MakeQueue) -> None:
    """vacuum_database and perform_checkpoint return Ok(None) on every backend, and every
    message, lease and dead letter is still there afterwards."""
    queue = make_queue(table_name="jobs", vacuum_threshold=0)
    _fill_and_drain(queue, count=50, size=1000)
    ok(queue.enqueue_batch(["kept", "leased", "dead"]))
    taken = leased(queue)
    ok(queue.fail_message(taken.id + 2, send_to_dlq=True))
    before = message_statuses(queue)
    assert queue.vacuum_database() == Ok(None)
    assert queue.perform_checkpoint() == Ok(None)
    assert message_statuses(queue) == before
    assert ok(queue.complete(taken)) is None
    assert leased(queue).payload == "leased"
    assert [d["payload"] for d in ok(queue.get_dead_letters())] == ["dead"]


def test_vacuum_database_shrinks_file(make_sqlite_queue: MakeSQLiteQueue, db_path: Path) -> None:
    """vacuum_database returns Ok(None) and, after a checkpoint, the file is smaller."""
    queue = make_sqlite_queue(table_name="jobs", vacuum_threshold=0)
    _fill_and_drain(queue)
    assert queue.perform_checkpoint() == Ok(None)
    before = db_path.stat().st_size
    assert before > 1_000_000
    assert queue.vacuum_database() == Ok(None)
    assert queue.perform_checkpoint() == Ok(None)
    assert db_path.stat().st_size < before // 4
    # The queue still works afterwards.
    assert ok(queue.enqueue("after")) > 0


@pytest.mark.plain_file("passes its own stdlib sqlite3 connection, which has no key")
def test_vacuum_and_checkpoint_with_explicit_connection(
    make_sqlite_queue: MakeSQLiteQueue, db_path: Path
) -> None:
    """An explicit sqlite3.Connection can be passed as conn to both maintenance calls."""
    queue = make_sqlite_queue(table_name="jobs", vacuum_threshold=0)
    _fill_and_drain(queue)
    ok(queue.enqueue("kept"))
    conn = sqlite3.connect(db_path)
    try:
        assert queue.perform_checkpoint(conn) == Ok(None)
        before = db_path.stat().st_size
        assert queue.vacuum_database(conn) == Ok(None)
        assert queue.perform_checkpoint(conn) == Ok(None)
        assert db_path.stat().st_size < before
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    finally:
        conn.close()
    assert leased(queue).payload == "kept"


@pytest.mark.plain_file("passes its own stdlib sqlite3 connection, which has no key")
def test_maintenance_rejects_bad_connections(sqlite_queue: SQLiteQueue, db_path: Path) -> None:
    """conn must be a sqlite3.Connection; VACUUM inside an open transaction is refused."""
    queue = sqlite_queue
    error = err(queue.vacuum_database("not a conn"), ErrorKind.INVALID_INPUT)
    assert "sqlite3.Connection" in str(error)
    err(queue.perform_checkpoint(42), ErrorKind.INVALID_INPUT)
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM jobs").fetchone()
        error = err(queue.vacuum_database(conn), ErrorKind.INVALID_INPUT)
        assert "transaction" in str(error)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_perform_checkpoint_truncates_wal(sqlite_queue: SQLiteQueue, db_path: Path) -> None:
    """After writes the WAL has content; perform_checkpoint truncates it to zero."""
    queue = sqlite_queue
    ok(queue.enqueue_batch(["y" * 1000 for _ in range(50)]))
    wal = Path(f"{db_path}-wal")
    assert wal.exists() and wal.stat().st_size > 0
    assert queue.perform_checkpoint() == Ok(None)
    assert wal.stat().st_size == 0
    assert len(message_statuses(queue)) == 50


def test_ddl_applied_by_hand_gives_a_working_queue(
    make_queue: MakeQueue, make_queue_target: Callable[[], QueueTarget]
) -> None:
    """ddl() is for teams that apply schema changes themselves: its statements, run by hand
    on an empty database, give a queue that opens and works there."""
    statements = make_queue(table_name="jobs").ddl()
    assert statements and all(isinstance(s, str) for s in statements)
    target = make_queue_target()
    target.run_sql(statements)
    assert "jobs" in target.tables()
    with target.open("jobs") as queue:
        message_id = ok(queue.enqueue("after manual DDL"))
        message = leased(queue)
        assert (message.id, message.payload) == (message_id, "after manual DDL")
        assert ok(queue.complete(message)) is None


def test_get_operation_count_counts_since_the_last_upkeep(make_queue: MakeQueue) -> None:
    """As in 0.1.0: each write operation adds one; the count goes back to 0 when routine
    maintenance runs (every vacuum_threshold messages written)."""
    queue = make_queue(table_name="jobs", vacuum_threshold=5)
    counts = [queue.get_operation_count()]
    ok(queue.enqueue("a"))
    counts.append(queue.get_operation_count())
    ok(queue.enqueue_batch(["b", "c"]))
    counts.append(queue.get_operation_count())
    message = leased(queue)
    counts.append(queue.get_operation_count())
    assert counts == [0, 1, 2, 3]
    ok(queue.complete(message))  # the fifth message written: upkeep runs
    assert queue.get_operation_count() == 0
    ok(queue.enqueue("d"))
    assert queue.get_operation_count() == 1


def test_get_operation_count_grows_without_upkeep(make_queue: MakeQueue) -> None:
    queue = make_queue(table_name="jobs", vacuum_threshold=0)
    for expected in range(1, 8):
        ok(queue.enqueue(expected))
        assert queue.get_operation_count() == expected


# -- lifecycle -------------------------------------------------------------------------------


def test_context_manager_closes(make_queue: MakeQueue) -> None:
    """with queue as q yields the queue and closes it on exit; the messages stay stored."""
    opened = make_queue(table_name="jobs")
    with opened as queue:
        assert queue is opened
        assert ok(queue.enqueue("x")) == 1
    err(queue.enqueue("y"), ErrorKind.CLOSED, cls=EnqueueError)
    with make_queue(table_name="jobs") as reopened:
        assert [row["id"] for row in message_statuses(reopened)] == [1]


def test_every_method_after_close_is_err_closed(queue: Queue) -> None:
    """After close() every Result method returns Err(kind=CLOSED) and nothing raises."""
    ok(queue.enqueue("x"))
    message = leased(queue)
    queue.close()
    queue.close()  # idempotent
    calls: dict[str, Callable[[], Result[Any, Any]]] = {
        "enqueue": lambda: queue.enqueue("y"),
        "enqueue_batch": lambda: queue.enqueue_batch(["y"]),
        "dequeue": queue.dequeue,
        "dequeue_batch": queue.dequeue_batch,
        "complete": lambda: queue.complete(message),
        "complete_id": lambda: queue.complete(message.id),
        "fail_message": lambda: queue.fail_message(message),
        "requeue": lambda: queue.requeue(message),
        "extend": lambda: queue.extend(message, 10),
        "extend_batch": lambda: queue.extend_batch([message], 10),
        "peek": queue.peek,
        "is_empty": queue.is_empty,
        "recover": queue.recover_processing_messages,
        "get_dead_letters": queue.get_dead_letters,
        "reprocess": lambda: queue.reprocess_dead_letter(1),
        "get_all_statuses": queue.get_all_statuses,
        "vacuum": queue.vacuum_database,
        "checkpoint": queue.perform_checkpoint,
    }
    wrong = {}
    for name, call in calls.items():
        result = call()
        if not (isinstance(result, Err) and result.error.kind is ErrorKind.CLOSED):
            wrong[name] = result
    assert wrong == {}, f"not Err(CLOSED) after close: {wrong}"
    assert "closed" in str(queue.dequeue().error)
    assert isinstance(queue.get_operation_count(), int)


def test_maintenance_with_conn_after_close_is_err_closed(
    sqlite_queue: SQLiteQueue, db_path: Path
) -> None:
    """A closed queue refuses maintenance even when handed a connection (every method: CLOSED)."""
    queue = sqlite_queue
    queue.close()
    conn = sqlite3.connect(db_path)
    try:
        err(queue.vacuum_database(conn), ErrorKind.CLOSED)
        err(queue.perform_checkpoint(conn), ErrorKind.CLOSED)
    finally:
        conn.close()


def test_many_queues_in_one_database_are_isolated(make_queue: MakeQueue) -> None:
    """Queues sharing a database have their own messages, ids, dead letters and lifecycle."""
    orders, emails = make_queue(table_name="orders"), make_queue(table_name="emails")
    assert ok(orders.enqueue("o1")) == 1
    assert ok(orders.enqueue("o2")) == 2
    assert ok(emails.is_drained()) is True
    assert ok(emails.dequeue()) is None
    assert ok(emails.enqueue("e1")) == 1
    message = leased(orders)
    assert message.payload == "o1" and message.queue == "orders"
    # Same id, other queue: emails' message 1 is pending there, orders' is processing.
    err(emails.complete(1), ErrorKind.WRONG_STATE)
    ok(orders.fail_message(message, send_to_dlq=True))
    assert ok(emails.get_dead_letters()) == []
    assert [d["id"] for d in ok(orders.get_dead_letters())] == [1]
    assert [r["status"] for r in message_statuses(emails)] == ["ready"]
    orders.close()
    assert leased(emails).payload == "e1"


@pytest.mark.plain_file("reads the registry with stdlib sqlite3, which has no key")
def test_queues_of_one_file_are_registered(
    make_sqlite_queue: MakeSQLiteQueue, db_path: Path
) -> None:
    """The SQLite layout: each queue has its table and "<name>_dlq", listed in sqqueue_queues."""
    make_sqlite_queue(table_name="orders")
    make_sqlite_queue(table_name="emails")
    assert SQLiteQueue.list_queues(db_path) == Ok(["emails", "orders"])
    with sqlite3.connect(db_path) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqqueue_queues")}
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert names == {"orders", "emails"}
    assert {"orders", "orders_dlq", "emails", "emails_dlq", "sqqueue_queues"} <= tables


def test_file_is_created_owner_only(sqlite_queue: SQLiteQueue, db_path: Path) -> None:
    """The database file (and its WAL/shm companions) are created with mode 0o600."""
    queue = sqlite_queue
    ok(queue.enqueue("secret"))
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    for suffix in ("-wal", "-shm"):
        companion = Path(f"{db_path}{suffix}")
        assert companion.exists()
        assert stat.S_IMODE(companion.stat().st_mode) == 0o600, suffix


def test_file_is_owner_only_even_with_permissive_umask(tmp_path: Path, clock: Any) -> None:
    """Mode 0o600 does not depend on the process umask."""
    path = tmp_path / "open.db"
    old = os.umask(0)
    try:
        with SQLiteQueue(path, table_name="jobs", clock=clock) as queue:
            ok(queue.enqueue("x"))
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


# -- serializer --------------------------------------------------------------------------------


class PointSerializer:
    """A custom serializer for a type the built-in encodings refuse."""

    name = "point-json"

    def dumps(self, obj: Any) -> str:
        return json.dumps({"point": list(obj)})

    def loads(self, data: str | bytes) -> Any:
        return tuple(json.loads(data)["point"])


def test_custom_serializer_round_trip(make_queue: MakeQueue) -> None:
    """A serializer object with name/dumps/loads is used both ways, and its name is stored:
    a queue object without that serializer gets the stored text and an error naming it."""
    queue = make_queue(table_name="jobs", serializer=PointSerializer())
    msg_id = ok(queue.enqueue((1, 2, 3)))
    message = leased(queue)
    assert message.payload == (1, 2, 3)
    assert type(message.payload) is tuple
    ok(queue.fail_message(message, send_to_dlq=True))
    assert ok(queue.get_dead_letters())[0]["payload"] == (1, 2, 3)
    plain = make_queue(table_name="jobs")
    (entry,) = ok(plain.get_dead_letters())
    assert entry["id"] == msg_id
    assert "point-json" in entry["payload_error"]
    assert json.loads(entry["payload"]) == {"point": [1, 2, 3]}


def test_custom_serializer_failure_is_serialization_err(make_queue: MakeQueue) -> None:
    """If dumps raises, enqueue returns Err(SERIALIZATION) naming the serializer."""
    queue = make_queue(table_name="jobs", serializer=PointSerializer())
    error = err(queue.enqueue(5), ErrorKind.SERIALIZATION, cls=EnqueueError)
    assert "point-json" in str(error)
    assert message_statuses(queue) == []


@pytest.mark.parametrize("bad", [object(), "not-a-serializer"])
def test_invalid_serializer_is_value_error(make_queue: MakeQueue, bad: Any) -> None:
    """A serializer without name/dumps/loads is a configuration error."""
    with pytest.raises(ValueError, match="serializer"):
        make_queue(table_name="jobs", serializer=bad)


# -- statsd ------------------------------------------------------------------------------------


def _receive(sock: socket.socket, wanted: set[str], timeout: float = 5.0) -> set[str]:
    """Collect statsd lines until all ``wanted`` have been seen or the timeout passes."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while not wanted <= seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            break
        seen.update(data.decode().splitlines())
    return seen


@pytest.fixture
def statsd_socket() -> Any:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_statsd_counters_are_sent(make_queue: MakeQueue, statsd_socket: socket.socket) -> None:
    """With statsd_host set, counters reach a real UDP listener as <prefix>.<queue>.<name>."""
    port = statsd_socket.getsockname()[1]
    queue = make_queue(table_name="jobs", statsd_host="127.0.0.1", statsd_port=port)
    ok(queue.enqueue("a"))
    ok(queue.enqueue_batch(["b", "c", "d"]))
    first = leased(queue)
    ok(queue.complete(first))
    second = leased(queue)
    ok(queue.fail_message(second, send_to_dlq=True))
    wanted = {
        "sqqueue.jobs.enqueue:1|c",
        "sqqueue.jobs.enqueue:3|c",
        "sqqueue.jobs.dequeue:1|c",
        "sqqueue.jobs.complete:1|c",
        "sqqueue.jobs.fail:1|c",
        "sqqueue.jobs.dead_letter:1|c",
        "sqqueue.jobs.size:1|g",
    }
    seen = _receive(statsd_socket, wanted)
    assert wanted <= seen, f"missing {wanted - seen}; got {seen}"


def test_statsd_custom_prefix(make_queue: MakeQueue, statsd_socket: socket.socket) -> None:
    """statsd_prefix replaces 'sqqueue' in metric names."""
    port = statsd_socket.getsockname()[1]
    queue = make_queue(
        table_name="emails", statsd_host="127.0.0.1", statsd_port=port, statsd_prefix="myapp"
    )
    ok(queue.enqueue("a"))
    seen = _receive(statsd_socket, {"myapp.emails.enqueue:1|c"})
    assert "myapp.emails.enqueue:1|c" in seen


def test_worker_durations_reach_statsd_and_the_observer(
    make_queue: MakeQueue, statsd_socket: socket.socket
) -> None:
    """A worker reports how long each message waited and how long its handler ran: as
    statsd timers when the queue uses statsd, and to its ``durations`` observer."""
    from prometheus_client import CollectorRegistry

    from sqqueue import Worker
    from sqqueue.prometheus import Durations

    port = statsd_socket.getsockname()[1]
    queue = make_queue(table_name="jobs", statsd_host="127.0.0.1", statsd_port=port, clock=None)
    ok(queue.enqueue_batch(["a", "b", "c"]))
    registry = CollectorRegistry()
    handled: list[str] = []

    def handler(message: Message) -> None:
        handled.append(message.payload)
        if len(handled) == 3:
            worker.stop()

    worker = Worker(queue, handler, durations=Durations(registry), handle_signals=False)
    assert worker.run().completed == 3
    for kind in ("time_in_queue", "processing"):
        count = registry.get_sample_value(f"sqqueue_{kind}_seconds_count", {"queue": "jobs"})
        assert count == 3, (kind, count)
    lines = _receive(statsd_socket, {"sqqueue.jobs.complete:3|c"})
    timers = {line.split(":")[0] for line in lines if line.endswith("|ms")}
    assert timers == {"sqqueue.jobs.time_in_queue_seconds", "sqqueue.jobs.processing_seconds"}


def test_statsd_unreachable_never_breaks_queue(make_queue: MakeQueue) -> None:
    """Metrics to a port nobody listens on do not affect results."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    queue = make_queue(table_name="jobs", statsd_host="127.0.0.1", statsd_port=port)
    for i in range(5):
        ok(queue.enqueue(i))
    assert [m.payload for m in ok(queue.dequeue_batch(5))] == [0, 1, 2, 3, 4]


# -- targets ---------------------------------------------------------------------------------


def test_connect_and_list_queues_take_a_path_or_url(queue_target: Any) -> None:
    """connect() and list_queues() take a file path, sqlite:/// or postgresql:// URL."""
    schema = {} if queue_target.backend == "sqlite" else {"schema": queue_target.schema}
    target = queue_target.url
    if queue_target.backend == "sqlite":
        target = target[len("sqlite:///") :]  # a plain path
    before = sqqueue.list_queues(target, **schema)
    if queue_target.backend == "sqlite":  # nothing is created by listing
        assert isinstance(before, Err) and before.error.kind is ErrorKind.NOT_FOUND
        assert "no database file" in str(before.error)
    else:
        assert before == Ok([])
    with sqqueue.connect(target, "emails", **schema) as emails:
        ok(emails.enqueue("x"))
    with sqqueue.connect(queue_target.url, "alerts", **schema) as alerts:
        ok(alerts.enqueue("y"))
    assert sqqueue.list_queues(queue_target.url, **schema) == Ok(["alerts", "emails"])
    assert sqqueue.list_queues(target, **schema) == Ok(["alerts", "emails"])


def test_list_queues_refuses_what_is_not_a_database(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all\n" * 100)
    result = sqqueue.list_queues(text)
    assert isinstance(result, Err)
    assert "not an SQLite database" in str(result.error) or "damaged" in str(result.error)
    bad = sqqueue.list_queues("mysql://db/app")
    assert isinstance(bad, Err) and bad.error.kind is ErrorKind.INVALID_INPUT
    assert "unsupported URL" in str(bad.error)
    with pytest.raises(ValueError, match="unsupported URL"):
        sqqueue.connect("redis://localhost/0", "jobs")


def test_get_message_finds_a_message_in_any_state(make_queue: MakeQueue, clock: Any) -> None:
    """get_message(id) returns the message wherever it is, with its status; None if absent."""
    queue = make_queue(table_name="jobs", retention=3600)
    ready, later, held, dead, done = (
        ok(queue.enqueue("ready")),
        ok(queue.enqueue("later", delay=60)),
        ok(queue.enqueue("held", priority=5)),
        ok(queue.enqueue("dead", priority=4)),
        ok(queue.enqueue("done", priority=3)),
    )
    assert leased(queue).id == held
    ok(queue.fail_message(leased(queue), error="boom", send_to_dlq=True))
    ok(queue.complete(leased(queue)))
    found = {i: ok(queue.get_message(i)) for i in (ready, later, held, dead, done)}
    assert {i: f["status"] for i, f in found.items() if f is not None} == {
        ready: "ready",
        later: "delayed",
        held: "processing",
        dead: "dead",
        done: "done",
    }
    assert found[dead] is not None and found[dead]["last_error"] == "boom"
    assert found[done] is not None and found[done]["payload"] == "done"
    assert found[held] is not None and found[held]["lease_expires_at"] is not None
    assert ok(queue.get_message(999)) is None
    bad = queue.get_message(-1)
    assert isinstance(bad, Err) and bad.error.kind is ErrorKind.INVALID_INPUT
