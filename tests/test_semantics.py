"""Delivery semantics with the fake clock, on every backend: ordering, delays, leases,
fencing, retries, DLQ."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from conftest import FakeClock
from helpers import at, err, leased, message_statuses, ok
from sqqueue import Err, ErrorKind, Message, Ok, Queue, Result, SQLiteQueue
from sqqueue.core import consume as consume_module

MakeQueue = Callable[..., Queue]


def snapshot(queue: Queue) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Everything observable about a queue's state: statuses and dead letters."""
    return message_statuses(queue), ok(queue.get_dead_letters())


def drain(queue: Queue) -> list[Any]:
    payloads = []
    while (message := ok(queue.dequeue())) is not None:
        payloads.append(message.payload)
        ok(queue.complete(message))
    return payloads


Op = Callable[[Queue, Any], Result[Any, Any]]
OPS: dict[str, Op] = {
    "complete": lambda q, ref: q.complete(ref),
    "fail": lambda q, ref: q.fail_message(ref, error="late"),
    "fail_dlq": lambda q, ref: q.fail_message(ref, send_to_dlq=True, error="late"),
    "extend": lambda q, ref: q.extend(ref, 60),
    "requeue": lambda q, ref: q.requeue(ref),
}


# -- ordering --------------------------------------------------------------------------------


def test_priority_then_fifo(queue: Queue, clock: Any) -> None:
    """Higher priority first; within a priority, first in first out."""
    for payload, priority in [("a0", 0), ("b5", 5), ("c0", 0), ("d5", 5), ("e-1", -1), ("f9", 9)]:
        ok(queue.enqueue(payload, priority=priority))
        clock.advance(0.001)
    assert drain(queue) == ["f9", "b5", "d5", "a0", "c0", "e-1"]


def test_fifo_with_equal_timestamps_uses_id(queue: Queue) -> None:
    """Messages enqueued at the same clock instant come out in id order."""
    ids = [ok(queue.enqueue(i)) for i in range(20)]
    assert [m.id for m in ok(queue.dequeue_batch(20))] == ids


def test_order_follows_visibility_time(queue: Queue, clock: Any) -> None:
    """Within a priority, the message that became visible first is delivered first."""
    ok(queue.enqueue("delayed-10", delay=10))
    clock.advance(5)
    ok(queue.enqueue("now-at-5"))
    clock.advance(10)
    ok(queue.enqueue("now-at-15"))
    assert drain(queue) == ["now-at-5", "delayed-10", "now-at-15"]


def test_requeued_message_goes_behind_its_priority(queue: Queue, clock: Any) -> None:
    """requeue makes the message visible now: after the ones already waiting."""
    ok(queue.enqueue_batch(["a", "b", "c"]))
    first = leased(queue)
    clock.advance(1)
    ok(queue.requeue(first))
    assert drain(queue) == ["b", "c", "a"]


# -- delays ------------------------------------------------------------------------------------


def test_delay_invisible_until_due(queue: Queue, clock: Any) -> None:
    """A delayed message is invisible to dequeue and peek until its time, then delivered."""
    msg_id = ok(queue.enqueue("later", delay=60))
    assert ok(queue.dequeue()) is None
    assert ok(queue.peek()) is None
    assert message_statuses(queue)[0]["status"] == "delayed"
    assert ok(queue.is_drained()) is False
    clock.advance(59.9)
    assert ok(queue.dequeue()) is None
    clock.advance(0.1)
    assert ok(queue.peek()).id == msg_id
    message = leased(queue)
    assert (message.id, message.payload, message.attempts) == (msg_id, "later", 1)


def test_delayed_high_priority_does_not_block_ready_messages(queue: Queue) -> None:
    """A delayed message of higher priority does not hold back ready ones."""
    ok(queue.enqueue("vip-later", priority=100, delay=30))
    ok(queue.enqueue("normal"))
    assert leased(queue).payload == "normal"
    assert ok(queue.dequeue()) is None


# -- leases ------------------------------------------------------------------------------------


def test_lease_expiry_redelivers_on_next_dequeue(queue: Queue, clock: Any) -> None:
    """An expired lease is folded back by the next dequeue itself and counts the attempt."""
    msg_id = ok(queue.enqueue("job"))
    first = leased(queue, visibility_timeout=30)
    assert ok(queue.dequeue()) is None  # leased: invisible to others
    clock.advance(29.9)
    assert ok(queue.dequeue()) is None
    clock.advance(0.1)
    # No background thread: until someone dequeues, the row still says processing.
    assert message_statuses(queue)[0]["status"] == "processing"
    second = leased(queue, visibility_timeout=30)
    assert second.id == msg_id == first.id
    assert second.attempts == 2
    assert second.lease_token != first.lease_token
    assert "lease expired" in (second.last_error or "")
    clock.advance(30)
    third = leased(queue)
    assert third.attempts == 3


def test_expiry_on_last_attempt_dead_letters(queue: Queue, clock: Any) -> None:
    """When the lease of the last attempt expires, the message goes to the DLQ."""
    msg_id = ok(queue.enqueue("fragile", max_attempts=2, priority=3))
    leased(queue, visibility_timeout=10)
    clock.advance(10)
    assert leased(queue, visibility_timeout=10).attempts == 2
    clock.advance(10)
    assert ok(queue.dequeue()) is None
    (dead,) = ok(queue.get_dead_letters())
    assert dead["id"] == msg_id
    assert dead["payload"] == "fragile"
    assert dead["attempts"] == 2
    assert dead["priority"] == 3
    assert "lease" in dead["last_error"]
    assert dead["dead_at"] == at(clock())
    assert message_statuses(queue) == [
        {"id": msg_id, "status": "dead", "priority": 3, "attempts": 2, "max_attempts": 2}
    ]


def test_extend_keeps_message_from_redelivery(make_queue: MakeQueue, clock: Any) -> None:
    """A consumer that extends its lease keeps the message past the original expiry."""
    owner, other = make_queue(table_name="jobs"), make_queue(table_name="jobs")
    ok(owner.enqueue("slow"))
    message = leased(owner, visibility_timeout=10)
    clock.advance(8)
    assert ok(owner.extend(message, 30)) == at(clock() + 30)
    clock.advance(20)  # well past the original expiry
    assert ok(other.dequeue()) is None
    assert ok(owner.extend(message.id, 30)) == at(clock() + 30)
    clock.advance(29)
    assert ok(other.dequeue()) is None
    assert owner.complete(message) == Ok(None)
    assert message_statuses(other) == []


# -- fencing -----------------------------------------------------------------------------------


def test_a_late_ack_in_a_batch_is_explained_by_its_own_lease(
    make_queue: MakeQueue, clock: Any
) -> None:
    """The messages of one batch claim share a token: completing one of them does not make
    a late call on another read as "already completed" (its lease expired, or was lost)."""
    owner, other = make_queue(table_name="jobs"), make_queue(table_name="jobs")
    ok(owner.enqueue_batch(["m1", "m2", "m3"]))
    m1, m2, m3 = ok(owner.dequeue_batch(3, visibility_timeout=10))
    ok(owner.complete(m1))
    clock.advance(11)
    taken = ok(other.dequeue(visibility_timeout=30))
    assert taken.id == m2.id
    err(owner.complete(m2), ErrorKind.LEASE_LOST)
    expired = err(owner.complete(m3), ErrorKind.LEASE_EXPIRED)
    assert "already" not in str(expired)
    assert "already completed" in str(err(owner.complete(m1), ErrorKind.NOT_FOUND))


def test_stats_count_a_lease_that_ran_out_where_the_next_claim_puts_it(
    queue: Queue, clock: Any
) -> None:
    """A consumer that died leaves leases nobody holds: stats show them ready (or dead on
    their last attempt) at once, not processing and "expiring" until someone claims."""
    ok(queue.enqueue_batch(["a", "b", "c"]))
    ok(queue.enqueue("last", max_attempts=1))
    held = ok(queue.dequeue_batch(4, visibility_timeout=30))
    assert len(held) == 4
    stats = ok(queue.stats())
    assert (stats.ready, stats.processing, stats.dead, stats.expiring_soon) == (0, 4, 0, 4)
    ok(queue.complete(held[0]))
    clock.advance(31)  # the consumer is gone: its leases ran out
    stats = ok(queue.stats())
    assert (stats.ready, stats.processing, stats.dead, stats.expiring_soon) == (2, 0, 1, 0)
    assert stats.oldest_ready_age == pytest.approx(1, abs=0.01)  # ready since they ran out
    fresh = ok(queue.dequeue(visibility_timeout=600))  # the claim folds them back: the same
    stats = ok(queue.stats())
    assert (stats.ready, stats.processing, stats.dead, stats.expiring_soon) == (1, 1, 1, 0)
    assert fresh.payload in ("b", "c")


STATES = ("ready", "delayed", "waiting", "processing", "dead")


def _by_state(queue: Queue) -> tuple[tuple[int, ...], dict[str, int], float | None]:
    """Counts by state from stats, get_all_statuses, and the oldest ready age."""
    stats = ok(queue.stats())
    counts = tuple(getattr(stats, state) for state in STATES)
    return counts, ok(queue.get_all_statuses()), stats.oldest_ready_age


@pytest.mark.parametrize("on_expire", ["dead", "drop"])
def test_counts_put_a_message_past_its_time_to_live_where_the_next_claim_puts_it(
    make_queue: MakeQueue, clock: Any, on_expire: str
) -> None:
    """Past its time to live, a message leaves at the next claim (dead-lettered or
    dropped), whether its lease ran out, on its last attempt or not, or it was ready,
    delayed or waiting: stats and get_all_statuses count it there already. A live
    lease keeps its message."""
    queue = make_queue(table_name="jobs", on_expire=on_expire)
    ok(queue.enqueue("lapsed", ttl=60))
    ok(queue.enqueue("lapsed-last", max_attempts=1, ttl=60))
    ok(queue.enqueue("held", ttl=60))
    assert len(ok(queue.dequeue_batch(2, visibility_timeout=30))) == 2  # their consumer dies
    live = ok(queue.dequeue(visibility_timeout=600))
    assert live is not None and live.payload == "held"
    ok(queue.enqueue("ready", ttl=60))
    ok(queue.enqueue("delayed", delay=120, ttl=60))
    ok(queue.enqueue("head", group="g", ttl=60))
    ok(queue.enqueue("behind", group="g", ttl=60))
    clock.advance(30)
    ok(queue.enqueue("kept"))
    clock.advance(31)  # the leases of two ran out, and every time to live but "kept"'s
    gone = 6 if on_expire == "dead" else 0
    expected = (
        (1, 0, 0, 1, gone),
        {"pending": 1, "processing": 1, "waiting": 0, "dead": gone},
        31.0,
    )
    assert _by_state(queue) == expected
    assert ok(queue.recover_processing_messages()) == 6  # what a claim does first
    assert _by_state(queue) == expected
    assert [d["payload"] for d in ok(queue.get_dead_letters())] == (
        ["lapsed", "lapsed-last", "ready", "delayed", "head", "behind"] if gone else []
    )
    kept = ok(queue.dequeue())
    assert kept is not None and kept.payload == "kept"


def test_get_all_statuses_counts_a_lease_that_ran_out_as_stats_do(queue: Queue, clock: Any) -> None:
    """A lease that ran out is nobody's: get_all_statuses counts its message pending (dead
    on its last attempt), as stats do and as the next claim leaves it, not processing."""
    ok(queue.enqueue_batch(["a", "b"]))
    ok(queue.enqueue("last", max_attempts=1))
    assert len(ok(queue.dequeue_batch(3, visibility_timeout=30))) == 3
    assert ok(queue.get_all_statuses()) == {
        "pending": 0, "processing": 3, "waiting": 0, "dead": 0,
    }  # fmt: skip
    clock.advance(31)  # the consumer is gone: its leases ran out
    expected = {"pending": 2, "processing": 0, "waiting": 0, "dead": 1}
    assert ok(queue.get_all_statuses()) == expected
    stats = ok(queue.stats())
    assert (stats.pending, stats.processing, stats.waiting, stats.dead) == (2, 0, 0, 1)
    assert ok(queue.recover_processing_messages()) == 3
    assert ok(queue.get_all_statuses()) == expected


def _lose_lease(make_queue: MakeQueue, clock: Any) -> tuple[Queue, Queue, Message]:
    """A leases a message, the lease expires, B gets it: returns (A, B, A's message)."""
    a, b = make_queue(table_name="jobs"), make_queue(table_name="jobs")
    ok(a.enqueue("contested"))
    stale = leased(a, visibility_timeout=10)
    clock.advance(11)
    fresh = leased(b, visibility_timeout=100)
    assert fresh.id == stale.id and fresh.attempts == 2
    return a, b, stale


@pytest.mark.parametrize("by", ["message", "id"])
@pytest.mark.parametrize("op", list(OPS))
def test_late_call_after_redelivery_is_lease_lost(
    make_queue: MakeQueue, clock: Any, op: str, by: str
) -> None:
    """A consumer whose lease expired and went to another consumer gets LEASE_LOST."""
    a, b, stale = _lose_lease(make_queue, clock)
    before = snapshot(b)
    error = err(OPS[op](a, stale if by == "message" else stale.id), ErrorKind.LEASE_LOST)
    assert error.message_id == stale.id
    assert "another consumer" in str(error)
    assert snapshot(b) == before
    assert ok(b.complete(stale.id)) is None  # B still owns it


def test_late_calls_in_sequence_by_id_stay_fenced(make_queue: MakeQueue, clock: Any) -> None:
    """Repeated late calls by id from the same queue object never touch B's lease.

    The queue object remembers the lease token of its own dequeue; a refused call must not
    make it forget that token and act as an id-only caller on the next call.
    """
    a, b, stale = _lose_lease(make_queue, clock)
    before = snapshot(b)
    results = {name: OPS[name](a, stale.id) for name in ("complete", "fail", "extend", "requeue")}
    results["complete_again"] = a.complete(stale.id)
    kinds = {name: getattr(r.error, "kind", r) for name, r in results.items()}
    assert all(kind is ErrorKind.LEASE_LOST for kind in kinds.values()), kinds
    assert snapshot(b) == before


@pytest.mark.parametrize("by", ["message", "id"])
@pytest.mark.parametrize("op", list(OPS))
def test_late_call_without_redelivery_is_lease_expired(
    queue: Queue, clock: Any, op: str, by: str
) -> None:
    """After the lease expired (nobody else has it yet): LEASE_EXPIRED and nothing changes."""
    ok(queue.enqueue("slow"))
    message = leased(queue, visibility_timeout=10)
    clock.advance(10)
    before = snapshot(queue)
    error = err(OPS[op](queue, message if by == "message" else message.id), ErrorKind.LEASE_EXPIRED)
    assert error.message_id == message.id
    assert "expired" in str(error)
    assert snapshot(queue) == before
    again = leased(queue)
    assert (again.id, again.attempts) == (message.id, 2)


@pytest.mark.parametrize("op", list(OPS))
def test_late_id_call_after_expiry_then_redelivery_is_lease_lost(
    make_queue: MakeQueue, clock: Any, op: str
) -> None:
    """A retries a late ack by id: first LEASE_EXPIRED, then (after B took it) LEASE_LOST."""
    a, b = make_queue(table_name="jobs"), make_queue(table_name="jobs")
    ok(a.enqueue("contested"))
    stale = leased(a, visibility_timeout=10)
    clock.advance(10)
    err(a.complete(stale.id), ErrorKind.LEASE_EXPIRED)
    fresh = leased(b, visibility_timeout=100)
    assert fresh.id == stale.id
    before = snapshot(b)
    err(OPS[op](a, stale.id), ErrorKind.LEASE_LOST)
    assert snapshot(b) == before


@pytest.mark.parametrize("op", list(OPS))
def test_bare_id_fencing_holds_after_the_lease_memory_overflows(
    make_queue: MakeQueue,
    clock: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    op: str,
) -> None:
    """A queue object that holds more leases than it remembers (here 5) forgets the
    oldest, says so once at WARNING, and still refuses a late call by bare id on a message
    another consumer holds now (LEASE_LOST, nothing changed); its own forgotten leases
    still work by id, and the remembered ones exactly."""
    monkeypatch.setattr(consume_module, "LEASE_MEMORY", 5)
    caplog.set_level(logging.WARNING, logger="sqqueue")
    a, b = make_queue(table_name="jobs"), make_queue(table_name="jobs")
    ok(a.enqueue("contested", priority=1))
    ok(a.enqueue_batch(list(range(10))))
    stale = leased(a, visibility_timeout=10)
    others = ok(a.dequeue_batch(10, visibility_timeout=3600))  # A now forgets 6 leases
    warnings = [r for r in caplog.records if "forgets the oldest" in r.getMessage()]
    assert len(warnings) == 1
    clock.advance(11)
    fresh = leased(b, visibility_timeout=100)
    assert fresh.id == stale.id
    before = snapshot(b)
    error = err(OPS[op](a, stale.id), ErrorKind.LEASE_LOST)
    assert "Pass the Message" in str(error)
    assert snapshot(b) == before
    assert ok(a.complete(others[0].id)) is None  # forgotten, but issued by A: still A's
    assert ok(a.complete(others[-1].id)) is None  # remembered
    assert ok(b.complete(fresh)) is None


@pytest.mark.slow
def test_bare_id_fencing_past_a_hundred_thousand_leases(
    make_sqlite_queue: Callable[..., Queue], clock: Any
) -> None:
    """The real limit: a queue object that leased M, then 110,000 more messages without
    finishing any, cannot complete M by id once M's lease expired and another consumer took
    it; that consumer keeps its message."""
    a, b = make_sqlite_queue(table_name="jobs"), make_sqlite_queue(table_name="jobs")
    m_id = ok(a.enqueue("M", priority=1))
    for _ in range(11):
        ok(a.enqueue_batch(["x"] * 10_000))
    assert leased(a, visibility_timeout=10).id == m_id
    for _ in range(11):
        assert len(ok(a.dequeue_batch(10_000, visibility_timeout=3600))) == 10_000
    clock.advance(11)
    taken = leased(b)
    assert taken.id == m_id
    err(a.complete(m_id), ErrorKind.LEASE_LOST)
    assert ok(b.complete(taken)) is None


def _fold_back(make_queue: MakeQueue, clock: Any) -> tuple[Queue, Queue, Message]:
    """A's lease expires; B's dequeue folds it back to pending while taking a more urgent
    message. Returns (A, B, A's stale message)."""
    a, b = make_queue(table_name="jobs"), make_queue(table_name="jobs")
    ok(a.enqueue("contested"))
    stale = leased(a, visibility_timeout=10)
    ok(a.enqueue("urgent", priority=10))
    clock.advance(10)
    assert leased(b).payload == "urgent"  # this dequeue folded A's lease back
    contested = next(row for row in message_statuses(b) if row["id"] == stale.id)
    assert contested["status"] == "ready"
    return a, b, stale


@pytest.mark.parametrize("by", ["message", "id"])
@pytest.mark.parametrize("op", list(OPS))
def test_late_call_after_lease_folded_back_changes_nothing(
    make_queue: MakeQueue, clock: Any, op: str, by: str
) -> None:
    """A late call from A after its expired lease was folded back is refused; nothing changes
    (in particular send_to_dlq must not bury a message A no longer holds)."""
    a, b, stale = _fold_back(make_queue, clock)
    before = snapshot(b)
    result = OPS[op](a, stale if by == "message" else stale.id)
    assert isinstance(result, Err), f"late {op} after the lease expired succeeded: {result!r}"
    assert snapshot(b) == before


@pytest.mark.parametrize("op", list(OPS))
def test_late_call_after_lease_folded_back_is_lease_expired(
    make_queue: MakeQueue, clock: Any, op: str
) -> None:
    """The refusal says LEASE_EXPIRED (the caller's lease ran out), not "pending: dequeue it
    first": the caller holds a Message whose lease token proves it had dequeued it."""
    a, _b, stale = _fold_back(make_queue, clock)
    err(OPS[op](a, stale), ErrorKind.LEASE_EXPIRED)


def test_id_only_caller_on_other_object_acts_on_live_lease(
    make_queue: MakeQueue, clock: Any
) -> None:
    """A queue object that never leased the message acts on whoever holds a live lease."""
    worker, admin = make_queue(table_name="jobs"), make_queue(table_name="jobs")
    ok(worker.enqueue("x"))
    message = leased(worker, visibility_timeout=10)
    assert ok(admin.extend(message.id, 50)) == at(clock() + 50)
    clock.advance(20)
    assert worker.complete(message) == Ok(None)
    assert message_statuses(admin) == []


# -- failures and retries ----------------------------------------------------------------------


def test_fail_message_retry_with_delay(queue: Queue, clock: Any) -> None:
    """fail_message with delay: pending but invisible until now+delay, last_error kept."""
    msg_id = ok(queue.enqueue("retry-me"))
    message = leased(queue)
    clock.advance(3)
    ok(queue.fail_message(message, error="timeout talking to API", delay=60))
    assert message_statuses(queue) == [
        {"id": msg_id, "status": "delayed", "priority": 0, "attempts": 1, "max_attempts": 5}
    ]
    assert ok(queue.is_drained()) is False
    clock.advance(59)
    assert ok(queue.dequeue()) is None
    clock.advance(1)
    again = leased(queue)
    assert (again.id, again.attempts, again.last_error) == (msg_id, 2, "timeout talking to API")
    # A failure without a new error text keeps the previous one.
    ok(queue.fail_message(again))
    assert leased(queue).last_error == "timeout talking to API"


def test_fail_message_without_delay_is_visible_at_once(queue: Queue) -> None:
    """delay defaults to 0: the message can be taken again immediately."""
    ok(queue.enqueue("x"))
    ok(queue.fail_message(leased(queue), error="e"))
    assert leased(queue).attempts == 2


def test_max_attempts_goes_to_dlq_with_history(queue: Queue, clock: Any) -> None:
    """After max_attempts failures the message is dead with id, payload, priority, attempts,
    last_error, created_at and dead_at preserved."""
    created = clock()
    msg_id = ok(queue.enqueue({"order": 7}, priority=2, max_attempts=3))
    for attempt in range(1, 4):
        clock.advance(1)
        message = leased(queue)
        assert message.attempts == attempt
        ok(queue.fail_message(message, error=f"error {attempt}"))
    assert ok(queue.dequeue()) is None
    (dead,) = ok(queue.get_dead_letters())
    assert dead["id"] == msg_id
    assert dead["payload"] == {"order": 7}
    assert dead["priority"] == 2
    assert dead["attempts"] == 3
    assert dead["max_attempts"] == 3
    assert dead["last_error"] == "error 3"
    assert dead["created_at"] == at(created)
    assert dead["dead_at"] == at(clock())
    assert ok(queue.is_drained()) is True
    ok(queue.reprocess_dead_letter(msg_id))
    revived = leased(queue)
    assert (revived.id, revived.payload, revived.attempts) == (msg_id, {"order": 7}, 1)


def test_send_to_dlq_on_pending_message(queue: Queue, clock: Any) -> None:
    """fail_message(send_to_dlq=True) dead-letters a pending (even delayed) message."""
    first = ok(queue.enqueue("never-delivered", priority=1))
    second = ok(queue.enqueue("delayed", delay=100))
    ok(queue.fail_message(first, send_to_dlq=True, error="cancelled"))
    ok(queue.fail_message(second, send_to_dlq=True))
    dead = {d["id"]: d for d in ok(queue.get_dead_letters())}
    assert set(dead) == {first, second}
    assert dead[first]["attempts"] == 0
    assert dead[first]["last_error"] == "cancelled"
    assert dead[first]["priority"] == 1
    assert ok(queue.is_drained()) is True


def test_send_to_dlq_on_leased_message_before_last_attempt(queue: Queue) -> None:
    """send_to_dlq buries a leased message even with attempts left."""
    msg_id = ok(queue.enqueue("x", max_attempts=10))
    ok(queue.fail_message(leased(queue), send_to_dlq=True, error="fatal"))
    (dead,) = ok(queue.get_dead_letters())
    assert (dead["id"], dead["attempts"], dead["last_error"]) == (msg_id, 1, "fatal")


# -- state checks ------------------------------------------------------------------------------

STATE_OPS: dict[str, Op] = {
    "complete": lambda q, ref: q.complete(ref),
    "requeue": lambda q, ref: q.requeue(ref),
    "extend": lambda q, ref: q.extend(ref, 30),
    "fail": lambda q, ref: q.fail_message(ref, error="x"),
}


def _message_in_state(queue: Queue, state: str) -> int:
    """Return the id of a message in ``state`` (another message keeps the queue non-trivial)."""
    ok(queue.enqueue("bystander"))
    if state == "unknown":
        return 999
    msg_id = ok(queue.enqueue("subject", priority=5))
    if state == "completed":
        ok(queue.complete(leased(queue)))
    elif state == "dead":
        ok(queue.fail_message(msg_id, send_to_dlq=True))
    return msg_id


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        ("unknown", ErrorKind.NOT_FOUND),
        ("pending", ErrorKind.WRONG_STATE),
        ("completed", ErrorKind.NOT_FOUND),
        ("dead", ErrorKind.WRONG_STATE),
    ],
)
@pytest.mark.parametrize("op", list(STATE_OPS))
def test_state_checks(queue: Queue, op: str, state: str, kind: ErrorKind) -> None:
    """Calls on a message that is not leased are refused with the right kind; nothing changes."""
    msg_id = _message_in_state(queue, state)
    before = snapshot(queue)
    error = err(STATE_OPS[op](queue, msg_id), kind)
    assert error.message_id == msg_id
    assert str(msg_id) in str(error)
    if state == "dead":
        assert "reprocess_dead_letter" in str(error)
    assert snapshot(queue) == before


def test_send_to_dlq_on_completed_or_dead_is_refused(queue: Queue) -> None:
    """send_to_dlq only buries pending or leased messages."""
    done = ok(queue.enqueue("done"))
    ok(queue.complete(leased(queue)))
    dead = ok(queue.enqueue("dead"))
    ok(queue.fail_message(dead, send_to_dlq=True))
    before = snapshot(queue)
    err(queue.fail_message(done, send_to_dlq=True), ErrorKind.NOT_FOUND)
    err(queue.fail_message(dead, send_to_dlq=True), ErrorKind.WRONG_STATE)
    assert snapshot(queue) == before


def test_reprocess_of_non_dead_message_is_not_found(queue: Queue) -> None:
    """reprocess_dead_letter only accepts ids that are in the dead-letter queue."""
    pending = ok(queue.enqueue("p"))
    before = snapshot(queue)
    err(queue.reprocess_dead_letter(pending), ErrorKind.NOT_FOUND)
    err(queue.reprocess_dead_letter(12345), ErrorKind.NOT_FOUND)
    assert snapshot(queue) == before


# -- recovery ----------------------------------------------------------------------------------


def test_recover_processing_messages_count(queue: Queue, clock: Any) -> None:
    """recover folds back exactly the expired leases (last attempts to the DLQ) and counts them."""
    ok(queue.enqueue_batch(["a", "b", ("last", None, None, 1), "long"]))
    short = ok(queue.dequeue_batch(3, visibility_timeout=10))
    assert [m.payload for m in short] == ["a", "b", "last"]
    long = leased(queue, visibility_timeout=100)
    assert queue.recover_processing_messages() == Ok(0)
    clock.advance(10)
    assert queue.recover_processing_messages() == Ok(3)
    statuses = {row["id"]: row["status"] for row in message_statuses(queue)}
    assert statuses == {
        short[0].id: "ready",
        short[1].id: "ready",
        short[2].id: "dead",
        long.id: "processing",
    }
    assert queue.recover_processing_messages() == Ok(0)
    (dead,) = ok(queue.get_dead_letters())
    assert "lease" in dead["last_error"]
    assert ok(queue.complete(long)) is None


# -- ids and counts ----------------------------------------------------------------------------


def _counts(queue: Queue) -> tuple[int, int, int, int]:
    stats = ok(queue.stats())
    return stats.pending, stats.processing, stats.dead, stats.enqueued_total


def test_ids_are_never_reused_even_when_the_newest_message_leaves(
    make_queue: MakeQueue,
) -> None:
    """The newest message completed, dead-lettered and purged, the queue empty and opened
    again: every new message still gets an id above every id handed out before."""
    queue = make_queue(table_name="ids")
    a, b, c = ok(queue.enqueue_batch(["a", "b", "c"]))
    newest = leased(queue, visibility_timeout=60)
    ok(queue.complete(newest))  # "a"; then the newest of all:
    ok(queue.fail_message(c, send_to_dlq=True, error="gave up"))
    d = ok(queue.enqueue("d"))
    assert d > c
    ok(queue.purge("dead"))
    assert drain(queue) == ["b", "d"]
    e = ok(queue.enqueue("e"))
    assert e > d
    ok(queue.purge())
    queue.close()
    again = make_queue(table_name="ids")
    f = ok(again.enqueue("f"))
    assert f > e
    assert (a, b, c) == (a, a + 1, a + 2)
    assert _counts(again) == (1, 0, 0, 6)


def test_counts_stay_exact_through_every_way_in_and_out(make_queue: MakeQueue) -> None:
    """stats() agrees with the rows after enqueues, claims, completes, dead letters,
    revivals, redrives into another queue and purges."""
    queue = make_queue(table_name="counted")
    other = make_queue(table_name="counted_other")
    ok(queue.enqueue_batch([f"m{i}" for i in range(10)]))
    ok(queue.enqueue("late", delay=3600))
    assert _counts(queue) == (11, 0, 0, 11)
    batch = ok(queue.dequeue_batch(4, visibility_timeout=60))
    assert _counts(queue) == (7, 4, 0, 11)
    ok(queue.complete(batch[0]))
    ok(queue.fail_message(batch[1], send_to_dlq=True, error="x"))
    ok(queue.fail_message(batch[2], send_to_dlq=True, error="y"))
    assert _counts(queue) == (7, 1, 2, 11)
    ok(queue.reprocess_dead_letter(batch[1].id))  # back with its id: not a new enqueue
    assert _counts(queue) == (8, 1, 1, 11)
    assert ok(queue.redrive(to_queue="counted_other")) == 1
    assert _counts(queue) == (8, 1, 0, 11)
    assert _counts(other) == (1, 0, 0, 1)
    assert ok(queue.purge("ready")) == 7
    assert _counts(queue) == (1, 1, 0, 11)
    ok(queue.enqueue("after"))
    assert _counts(queue) == (2, 1, 0, 12)
    statuses = message_statuses(queue)
    assert len(statuses) == 3


def _batch_claim_around(
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    lease: float,
    between: Callable[[FakeClock, SQLiteQueue], None],
) -> tuple[list[Message], SQLiteQueue, SQLiteQueue]:
    """Two consumers of one SQLite file on one fake clock, "a", "b" and "c" enqueued: the
    first claims all three (a ``lease``-second lease), ``between(clock, other)`` running
    after its claim commits and before it reads the rows. Its messages, and the two."""
    clock = FakeClock()
    path = str(tmp_path / "q.db")
    first, other = SQLiteQueue(path, clock=clock), SQLiteQueue(path, clock=clock)
    ok(first.enqueue_batch(["a", "b", "c"]))
    backend = first.parts.backend
    read_after_commit = backend._read_tx

    def read(fn: Callable[..., Any]) -> Any:
        between(clock, other)
        return read_after_commit(fn)

    monkeypatch.setattr(backend, "_read_tx", read)
    mine = ok(first.dequeue_batch(3, visibility_timeout=lease))
    monkeypatch.undo()
    return mine, first, other


def test_a_batch_read_after_its_claim_commits_leaves_out_rows_claimed_again_since(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite leases a batch in its write transaction and reads the rows after the commit
    (outside the write lock). Should a lease run out and another consumer claim the
    message in between, the first claim does not deliver it too: only the rows still
    held under its own lease are read."""
    taken: list[Message] = []

    def lease_runs_out(clock: FakeClock, other: SQLiteQueue) -> None:
        clock.advance(2)  # past the 1 s lease
        taken.extend(ok(other.dequeue_batch(2, visibility_timeout=60)))

    mine, _, other = _batch_claim_around(tmp_path, monkeypatch, 1, lease_runs_out)
    # The other consumer's claim found all three leases run out: it took two, and the
    # third is back in the queue (for the next claim), not delivered by the first claim.
    assert sorted(m.payload for m in taken) == ["a", "b"]
    assert mine == []
    assert [m.payload for m in ok(other.dequeue_batch(3))] == ["c"]


def test_a_batch_read_after_its_claim_finds_rows_whose_expiry_was_reanchored_since(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a batch claim's commit and its read, another claim on a clock stepped back
    re-anchors the leases (their expiry changes): the batch is still read, by its token,
    not left leased to nobody."""

    def clock_steps_back(clock: FakeClock, other: SQLiteQueue) -> None:
        clock.advance(-600)
        assert ok(other.dequeue_batch(3)) == []  # (its fold re-anchors the leases)

    mine, first, _ = _batch_claim_around(tmp_path, monkeypatch, 60, clock_steps_back)
    assert [m.payload for m in mine] == ["a", "b", "c"]
    assert ok(first.complete_batch(mine)) == 3
