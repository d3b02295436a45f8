"""Misused calls that must come back as a clear ``Err`` (or be done right):
text the database cannot hold, Messages that hold no lease or come from another queue,
arguments of the wrong shape. Each was a wrong action, or a STORAGE error logged at ERROR,
before.

Contract tests: they run on every backend (``queue``/``make_queue``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import err, leased, message_statuses, ok, wait_until
from sqqueue import (
    AsyncQueue,
    ErrorKind,
    Item,
    Message,
    Queue,
    Reject,
    RetryPolicy,
    SQLiteQueue,
    Worker,
)

MakeQueue = Callable[..., Queue]

# What os.fsdecode() makes of a file name that is not UTF-8: a lone surrogate per bad byte.
NOT_UTF8_NAME = os.fsdecode(b"report-\xff.csv")  # 'report-\udcff.csv'


def _status(queue: Queue, message_id: int) -> str:
    found = ok(queue.get_message(message_id))
    return "gone" if found is None else str(found["status"])


def _no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing was logged at ERROR: a refused argument is not an unexpected failure."""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- text the database cannot store ---------------------------------------------------------------


def test_an_error_text_with_a_lone_surrogate_is_recorded_escaped(queue: Queue) -> None:
    """fail_message(error=...) naming a file that is not UTF-8 records the failure, the
    surrogate written as its escape (it was Err(STORAGE), and nothing was recorded)."""
    ok(queue.enqueue_batch(["retried", "dead"]))
    retried, doomed = leased(queue), leased(queue)
    ok(queue.fail_message(retried, error=f"cannot parse {NOT_UTF8_NAME}"))
    ok(queue.fail_message(doomed, send_to_dlq=True, error=f"cannot parse {NOT_UTF8_NAME}"))
    assert ok(queue.get_message(retried.id))["last_error"] == "cannot parse report-\\udcff.csv"
    (letter,) = ok(queue.get_dead_letters())
    assert (letter["id"], letter["last_error"]) == (doomed.id, "cannot parse report-\\udcff.csv")


def test_a_worker_rejecting_with_a_lone_surrogate_dead_letters_the_message(
    make_queue: MakeQueue,
) -> None:
    """A handler raising Reject with such a text dead-letters its message (the failure
    could not be recorded, so it was delivered again and again)."""
    queue = make_queue(table_name="files", clock=None)
    message_id = ok(queue.enqueue({"file": "report.csv"}))
    deliveries: list[int] = []

    def handler(message: Message) -> None:
        deliveries.append(message.attempts)
        raise Reject(f"cannot parse {NOT_UTF8_NAME}")

    worker = Worker(queue, handler, handle_signals=False, poll_wait=0.1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: _status(queue, message_id) == "dead", what="the dead letter")
    finally:
        worker.stop()
        thread.join(10)
    assert deliveries == [1]
    (letter,) = ok(queue.get_dead_letters())
    assert "cannot parse report-\\udcff.csv" in letter["last_error"]


def test_claim_records_a_block_error_with_a_lone_surrogate(queue: Queue) -> None:
    """queue.claim() fails the message of a block raising such an error: it is back in
    the queue with the error recorded, not left leased."""
    message_id = ok(queue.enqueue("job"))

    def fail_in_block() -> None:
        with queue.claim() as message:
            assert message is not None
            raise ValueError(f"bad file {NOT_UTF8_NAME}")

    with pytest.raises(ValueError, match="bad file"):
        fail_in_block()
    found = ok(queue.get_message(message_id))
    assert found["status"] in ("ready", "delayed")
    assert found["last_error"] == "ValueError: bad file report-\\udcff.csv"


def test_claim_logs_a_failure_it_could_not_record(
    make_queue: MakeQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """When claim() cannot fail the message of a block that raised (here another object
    completed it meanwhile), it says so at WARNING instead of dropping the Err; the
    block's own exception is what the caller gets."""
    queue, other = make_queue(table_name="jobs"), make_queue(table_name="jobs")
    message_id = ok(queue.enqueue("job"))

    def fail_in_block() -> None:
        with queue.claim() as message:
            assert message is not None
            ok(other.complete(message.id))  # by bare id: unfenced, as documented
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_in_block()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("claim()" in w and f"message {message_id}" in w for w in warnings), warnings


@pytest.mark.parametrize("field", ["dedup_key", "group"])
def test_a_key_or_group_with_a_lone_surrogate_is_invalid_input(queue: Queue, field: str) -> None:
    """dedup_key= and group= must be UTF-8 text: a lone surrogate is refused as
    INVALID_INPUT naming the option (it was Err(STORAGE) logged at ERROR); nothing is
    enqueued."""
    bad = {field: NOT_UTF8_NAME}
    err(queue.enqueue("x", **bad), ErrorKind.INVALID_INPUT, field, "UTF-8")
    err(queue.enqueue_batch(["ok", Item("x", **bad)]), ErrorKind.INVALID_INPUT, field, "UTF-8")
    aqueue = AsyncQueue(queue)
    err(asyncio.run(aqueue.enqueue("x", **bad)), ErrorKind.INVALID_INPUT, field, "UTF-8")
    assert message_statuses(queue) == []
    ok(queue.enqueue("x", **{field: "report-\u00e9.csv"}))  # any real text is fine


@pytest.mark.parametrize("field", ["dedup_key", "group"])
def test_a_key_or_group_with_a_nul_is_invalid_input_on_every_backend(
    queue: Queue, field: str
) -> None:
    """PostgreSQL text cannot hold NUL: refused as INVALID_INPUT naming the option on
    every backend alike (it was Err(STORAGE) on PostgreSQL only), nothing enqueued."""
    bad = {field: "order\x007"}
    err(queue.enqueue("x", **bad), ErrorKind.INVALID_INPUT, field, "NUL")
    err(queue.enqueue_batch(["ok", Item("x", **bad)]), ErrorKind.INVALID_INPUT, field, "NUL")
    assert message_statuses(queue) == []


# -- Messages that hold no lease, or come from another queue -------------------------------------


def _lease_calls(queue: Queue, message: Message) -> dict[str, Callable[[], Any]]:
    """Every call that acts on a message's lease, given ``message``."""
    return {
        "complete": lambda: queue.complete(message),
        "complete_batch": lambda: queue.complete_batch([message]),
        "fail_message": lambda: queue.fail_message(message),
        "fail_message_dlq": lambda: queue.fail_message(message, send_to_dlq=True),
        "requeue": lambda: queue.requeue(message),
        "release": lambda: queue.release(message),
        "release_batch": lambda: queue.release_batch([message]),
        "extend": lambda: queue.extend(message, 10),
        "extend_batch": lambda: queue.extend_batch([message], 10),
        "async complete": lambda: asyncio.run(AsyncQueue(queue).complete(message)),
    }


def test_a_message_without_a_lease_cannot_end_another_consumers_lease(
    make_queue: MakeQueue,
) -> None:
    """A Message from peek() (or built by hand) holds no lease token: every lease call
    refuses it as INVALID_INPUT, and the lease another consumer holds is untouched (it
    was completed, released or dead-lettered unfenced)."""
    a, b = make_queue(table_name="jobs"), make_queue(table_name="jobs")
    ok(a.enqueue("job"))
    peeked = ok(a.peek())
    held = leased(b, visibility_timeout=300)
    built = dataclasses.replace(held, lease_token=None)
    for message in (peeked, built):
        for name, call in _lease_calls(a, message).items():
            error = err(call(), ErrorKind.INVALID_INPUT, "not leased", "dequeue", "id")
            assert f"id {held.id}" in str(error), name
    assert _status(a, held.id) == "processing"
    ok(b.complete(held))


def test_a_bare_id_still_acts_without_fencing(make_queue: MakeQueue) -> None:
    """A bare id stays unfenced, as in 0.1.0 and as documented."""
    a, b = make_queue(table_name="jobs"), make_queue(table_name="jobs")
    ok(a.enqueue("job"))
    held = leased(b)
    ok(a.complete(held.id))
    assert _status(a, held.id) == "gone"


def test_a_message_from_another_queue_is_invalid_input_naming_both(make_queue: MakeQueue) -> None:
    """A Message queue "x" delivered, passed to queue "t": refused as INVALID_INPUT naming
    both queues (it was taken for an expired or lost lease), whether or not "t" has a
    message with that id; "t"'s own message is untouched. A Message with no queue name
    (built by hand) is not refused for it."""
    x, t = make_queue(table_name="x"), make_queue(table_name="t")
    ok(x.enqueue("from x"))
    ok(t.enqueue("from t"))
    from_x = leased(x)
    for name, call in _lease_calls(t, from_x).items():
        err(call(), ErrorKind.INVALID_INPUT, "from queue 'x', not 't'")
        assert _status(x, from_x.id) == "processing", name
    mine = leased(t)
    assert mine.id == from_x.id
    err(t.complete(from_x), ErrorKind.INVALID_INPUT, "'x'", "'t'")
    assert _status(t, mine.id) == "processing"
    ok(t.complete(dataclasses.replace(mine, queue="")))
    ok(x.complete(from_x))


# -- arguments of the wrong shape -----------------------------------------------------------------


@pytest.mark.parametrize("flag", [30, -1, 2, 2**70])
def test_fail_message_refuses_an_int_send_to_dlq_other_than_0_or_1(queue: Queue, flag: int) -> None:
    """fail_message(message, 30) reads as a delay, but the second parameter is
    send_to_dlq: refused (it dead-lettered the message), the message still leased."""
    ok(queue.enqueue("job"))
    message = leased(queue)
    error = err(queue.fail_message(message, flag), ErrorKind.INVALID_INPUT, "send_to_dlq")
    assert f"got {flag}" in str(error)
    assert ("delay=30" in str(error)) is (flag == 30)
    assert _status(queue, message.id) == "processing"


def test_fail_message_takes_0_and_1_as_flags(queue: Queue) -> None:
    """0 and 1 stay accepted for send_to_dlq: 0.1.0 code may pass them."""
    ok(queue.enqueue_batch(["retried", "dead"]))
    retried, doomed = leased(queue), leased(queue)
    ok(queue.fail_message(retried, 0))  # type: ignore[arg-type]
    ok(queue.fail_message(doomed, 1))  # type: ignore[arg-type]
    assert _status(queue, retried.id) in ("ready", "delayed")
    assert _status(queue, doomed.id) == "dead"


def _dead(queue: Queue, count: int) -> list[int]:
    """Dead-letter ``count`` new messages; their ids."""
    ids = ok(queue.enqueue_batch([f"job-{n}" for n in range(count)]))
    for _ in ids:
        ok(queue.fail_message(leased(queue), send_to_dlq=True))
    return list(ids)


@pytest.mark.parametrize("ids", [b"\x02", bytearray(b"\x02"), "2"], ids=repr)
def test_redrive_refuses_bytes_or_a_str_for_ids(queue: Queue, ids: Any) -> None:
    """redrive(b"\\x02") redrove dead letter 2: bytes and str are not lists of ids."""
    dead = _dead(queue, 2)
    err(queue.redrive(ids), ErrorKind.INVALID_INPUT, "ids must be a list of message ids")
    assert [_status(queue, i) for i in dead] == ["dead", "dead"]


def test_purge_refuses_bytes_for_state(queue: Queue) -> None:
    """purge(state=b"dead") said "got 100"; it names the type now."""
    _dead(queue, 1)
    err(queue.purge(state=b"dead"), ErrorKind.INVALID_INPUT, "state must be", "got bytes")  # type: ignore[arg-type]
    assert ok(queue.stats()).dead == 1


ADMIN_MISUSES: dict[str, Callable[[Queue], Any]] = {
    "redrive(5)": lambda q: q.redrive(5),  # type: ignore[arg-type]
    "redrive(to_queue='')": lambda q: q.redrive(to_queue=""),
    "redrive(to_queue=7)": lambda q: q.redrive(to_queue=7),  # type: ignore[arg-type]
    "purge(state=1)": lambda q: q.purge(state=1),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("call", list(ADMIN_MISUSES))
def test_admin_arguments_of_the_wrong_kind_are_invalid_input(
    queue: Queue, call: str, caplog: pytest.LogCaptureFixture
) -> None:
    """These were Err(STORAGE, "failed unexpectedly: TypeError") with an ERROR traceback
    in the log; they are INVALID_INPUT saying what to pass, and change nothing."""
    _dead(queue, 1)
    words = {"redrive(5)": "ids", "purge(state=1)": "state"}.get(call, "to_queue")
    err(ADMIN_MISUSES[call](queue), ErrorKind.INVALID_INPUT, words)
    _no_error_logged(caplog)
    assert ok(queue.stats()).dead == 1


@pytest.mark.parametrize("policy", [None, 30, "fixed:30"], ids=repr)
def test_a_retry_policy_set_to_nonsense_raises_at_once(queue: Queue, policy: Any) -> None:
    """queue.retry, like vacuum_threshold, is checked when set: ValueError, and the queue
    keeps its policy (it made the next fail_message an Err(STORAGE) logged at ERROR)."""
    before = queue.retry
    with pytest.raises(ValueError, match=r"retry must be a sqqueue\.RetryPolicy"):
        queue.retry = policy
    assert queue.retry is before
    ok(queue.enqueue("job"))
    ok(queue.fail_message(leased(queue)))
    queue.retry = RetryPolicy.fixed(30)
    ok(queue.fail_message(leased(queue)))
    assert [m["status"] for m in message_statuses(queue)] == ["delayed"]


def test_redrive_takes_each_id_once(queue: Queue) -> None:
    """redrive([id, id]) redrove the dead letter, then said Err(NOT_FOUND) for the second
    mention; each id counts once, as for delete_dead_letters."""
    first, second = _dead(queue, 2)
    assert ok(queue.redrive([first, first])) == 1
    assert (_status(queue, first), _status(queue, second)) == ("ready", "dead")
    assert ok(queue.redrive([second, second, second])) == 1
    assert _status(queue, second) == "ready"


def test_dequeue_checks_cancel_without_a_wait(queue: Queue) -> None:
    """dequeue(cancel=True) was Ok with no wait and INVALID_INPUT with one: the check runs
    on every path, and nothing is leased."""
    ok(queue.enqueue("job"))
    err(queue.dequeue(cancel=True), ErrorKind.INVALID_INPUT, "cancel", "threading.Event")  # type: ignore[arg-type]
    aqueue = AsyncQueue(queue)
    err(asyncio.run(aqueue.dequeue(cancel=True)), ErrorKind.INVALID_INPUT, "cancel")  # type: ignore[arg-type]
    assert [m["status"] for m in message_statuses(queue)] == ["ready"]
    assert ok(queue.dequeue(cancel=threading.Event())) is not None


@pytest.mark.plain_file("opens the file with stdlib sqlite3, which has no key")
def test_vacuum_and_checkpoint_refuse_a_connection_to_another_database(
    make_sqlite_queue: Callable[..., SQLiteQueue], db_path: Path, tmp_path: Path
) -> None:
    """vacuum_database(conn) and perform_checkpoint(conn) with a connection to another
    database acted on that database and returned Ok; refused now, as enqueue_in refuses
    it. A connection on the queue's own file is still taken."""
    queue = make_sqlite_queue(table_name="jobs")
    for other in (sqlite3.connect(tmp_path / "other.db"), sqlite3.connect(":memory:")):
        try:
            for call in (queue.vacuum_database, queue.perform_checkpoint):
                err(call(other), ErrorKind.INVALID_INPUT, "not on the queue's file")
        finally:
            other.close()
    own = sqlite3.connect(db_path)
    try:
        ok(queue.vacuum_database(own))
        ok(queue.perform_checkpoint(own))
    finally:
        own.close()
