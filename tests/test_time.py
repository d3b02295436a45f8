"""Time: a lease (or delay) is measured from the moment the call holds its locks, on one
clock per backend: the queue's clock on SQLite, the server's on PostgreSQL.

* A call that waited for another connection's lock still gets its whole lease, delay or
  extension (both backends, real clocks).
* PostgreSQL: clients whose clocks run 60 s fast or slow see the same leases, delays and
  enqueues as a client with a correct clock.
* SQLite: a clock stepped back an hour hides no message that was ready, and a crashed
  consumer's lease still comes back after one lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
import pytest

from conftest import FakeClock, QueueTarget
from helpers import leased, ok
from sqqueue import Message, PostgresQueue, Queue, Result

MakeQueue = Callable[..., Queue]
HOLD = 1.5  # seconds another connection keeps the queue locked; longer than the leases below


def stamp(value: datetime) -> float:
    return value.timestamp()


class Lock:
    """Another connection holding the queue's table locked; ``released_at`` is the time, on
    the queue's clock (the file's machine, or the server), just before it let go."""

    released_at = 0.0


@contextmanager
def holding_lock(target: QueueTarget, table: str = "jobs") -> Iterator[Lock]:
    """Lock the queue against writers (SQLite: BEGIN IMMEDIATE; PostgreSQL: LOCK TABLE in
    EXCLUSIVE mode, which readers pass) until the block ends."""
    lock = Lock()
    if target.backend == "sqlite":
        conn = target.sqlite_connection(isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield lock
            lock.released_at = time.time()
            conn.execute("COMMIT")
        finally:
            conn.close()
        return
    with psycopg.connect(target.url) as pg:
        pg.execute(f'SET search_path TO "{target.schema}"')
        pg.execute(f'LOCK TABLE "{table}" IN EXCLUSIVE MODE')
        yield lock
        row = pg.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        assert row is not None
        lock.released_at = float(row[0])
        pg.commit()


def call_while_locked(
    target: QueueTarget, call: Callable[[], Result[Any, Any]]
) -> tuple[Result[Any, Any], float]:
    """Run ``call`` on a thread while another connection holds the lock for ``HOLD``
    seconds; return its result and when the lock was let go."""
    results: list[Result[Any, Any]] = []
    with holding_lock(target) as lock:
        thread = threading.Thread(target=lambda: results.append(call()), daemon=True)
        thread.start()
        time.sleep(HOLD)  # the call waits for the lock meanwhile (no assertion on timing)
        assert not results, f"the call did not wait for the lock: {results}"
    thread.join(timeout=60)
    assert results, "the call did not return within 60 s of the lock being released"
    return results[0], lock.released_at


# -- a call that waited for a lock gets its whole time ---------------------------------------


@pytest.mark.slow
def test_a_dequeue_that_waited_for_the_lock_gets_its_whole_lease(
    make_queue: MakeQueue, queue_target: QueueTarget
) -> None:
    """Another connection holds the lock longer than the lease: the message handed out
    afterwards is leased for its whole visibility timeout from the moment the claim got
    the lock, not from when dequeue was called (which would be over already)."""
    queue = make_queue(table_name="jobs", clock=time.time)
    ok(queue.enqueue("waited"))
    result, released_at = call_while_locked(
        queue_target, lambda: queue.dequeue(visibility_timeout=1)
    )
    message = ok(result)
    assert isinstance(message, Message)
    lease_end = stamp(message.lease_expires_at)
    assert lease_end >= released_at + 1 - 1e-3, (
        f"lease ends {released_at + 1 - lease_end:.2f} s before a whole lease after the wait"
    )


@pytest.mark.slow
def test_a_batch_that_waited_for_the_lock_gets_its_whole_lease(
    make_queue: MakeQueue, queue_target: QueueTarget
) -> None:
    """The same for dequeue_batch: every message of the batch has its whole lease."""
    queue = make_queue(table_name="jobs", clock=time.time)
    ok(queue.enqueue_batch(["a", "b", "c"]))
    result, released_at = call_while_locked(
        queue_target, lambda: queue.dequeue_batch(3, visibility_timeout=1)
    )
    batch = ok(result)
    assert len(batch) == 3
    assert min(stamp(m.lease_expires_at) for m in batch) >= released_at + 1 - 1e-3


@pytest.mark.slow
def test_an_extend_that_waited_for_the_lock_gets_its_whole_extension(
    make_queue: MakeQueue, queue_target: QueueTarget
) -> None:
    """extend(message, 1) that waited for the lock: the lease ends 1 s after the extension
    took effect, and the expiry it returns says so."""
    queue = make_queue(table_name="jobs", clock=time.time)
    ok(queue.enqueue("slow work"))
    message = leased(queue, visibility_timeout=60)
    result, released_at = call_while_locked(queue_target, lambda: queue.extend(message, 1))
    expiry = stamp(ok(result))
    assert expiry >= released_at + 1 - 1e-3
    (entry,) = ok(queue.list_messages("processing"))
    assert stamp(entry["lease_expires_at"]) == pytest.approx(expiry, abs=1e-3)


@pytest.mark.slow
def test_a_fail_with_delay_that_waited_for_the_lock_keeps_its_whole_delay(
    make_queue: MakeQueue, queue_target: QueueTarget
) -> None:
    """fail_message(message, delay=1) that waited for the lock: the retry is due 1 s after
    the failure was recorded."""
    queue = make_queue(table_name="jobs", clock=time.time)
    ok(queue.enqueue("flaky"))
    message = leased(queue, visibility_timeout=60)
    result, released_at = call_while_locked(
        queue_target, lambda: queue.fail_message(message, error="503", delay=1)
    )
    ok(result)
    (entry,) = ok(queue.list_messages("all"))
    assert stamp(entry["visible_at"]) >= released_at + 1 - 1e-3


@pytest.mark.slow
def test_a_release_that_waited_for_the_lock_is_visible_from_when_it_happened(
    make_queue: MakeQueue, queue_target: QueueTarget
) -> None:
    """release(message) that waited for the lock: the message is visible again from the
    release (its place in line), not from before the wait."""
    queue = make_queue(table_name="jobs", clock=time.time)
    ok(queue.enqueue("prefetched"))
    message = leased(queue, visibility_timeout=60)
    result, released_at = call_while_locked(queue_target, lambda: queue.release(message))
    ok(result)
    (entry,) = ok(queue.list_messages("pending"))
    assert stamp(entry["visible_at"]) >= released_at - 1e-3


# -- PostgreSQL: one clock, the server's -------------------------------------------------------


@pytest.fixture
def skewed(pg_url: str, pg_schema: str) -> Iterator[Callable[[float], PostgresQueue]]:
    """Factory: a queue on the test's schema whose client clock is off by ``skew`` seconds
    (the server's clock is not pinned)."""
    made: list[PostgresQueue] = []

    def make(skew: float) -> PostgresQueue:
        queue = PostgresQueue(pg_url, "jobs", schema=pg_schema, clock=lambda: time.time() + skew)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


def server_time(queue_url: str) -> float:
    with psycopg.connect(queue_url) as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


def test_clients_with_skewed_clocks_share_the_servers_clock(
    skewed: Callable[[float], PostgresQueue], pg_url: str
) -> None:
    """Three clients on one server, clocks 60 s slow, right and 60 s fast:

    * a message one of them leased for 30 s is delivered to none of the others (no double
      delivery within a lease), whichever way the clocks are off;
    * what the fast client enqueues is ready for the others at once;
    * what the slow client enqueues with a 30 s delay is not delivered early;
    * every lease reads 30 s from the server's now, whoever took it.
    """
    slow, right, fast = skewed(-60), skewed(0), skewed(60)
    clients = {"slow": slow, "right": right, "fast": fast}
    for name, holder in clients.items():
        ok(right.enqueue(f"leased by {name}"))
        message = leased(holder, visibility_timeout=30)
        assert message.payload == f"leased by {name}"
        # The lease is 30 s of the server's clock, whatever the client's says.
        assert stamp(message.lease_expires_at) == pytest.approx(server_time(pg_url) + 30, abs=10)
        for other_name, other in clients.items():
            if other is not holder:
                got = ok(other.dequeue())
                assert got is None, f"{other_name} got {got!r} while {name} held it"
        ok(holder.complete(message))

    ok(fast.enqueue("from the fast client"))
    got = ok(right.dequeue())
    assert got is not None and got.payload == "from the fast client"
    ok(right.complete(got))
    ok(slow.enqueue("from the slow client"))
    got = ok(fast.dequeue())
    assert got is not None and got.payload == "from the slow client"
    ok(fast.complete(got))

    ok(slow.enqueue("in 30 s", delay=30))
    for name, client in clients.items():
        assert ok(client.dequeue()) is None, f"{name} got a message delayed by 30 s"
    assert ok(fast.stats()).delayed == 1


# -- SQLite: a clock stepped back --------------------------------------------------------------


@pytest.mark.parametrize("after_the_step", ["same object", "new object"])
def test_a_clock_stepped_back_hides_no_ready_message_and_leases_still_end(
    make_sqlite_queue: Callable[..., Any], clock: FakeClock, after_the_step: str
) -> None:
    """The clock steps back an hour while a consumer holds a 30 s lease (and then crashes):

    * messages that were ready stay ready (a new one, one back from an expired lease);
    * the crashed consumer's message comes back one lease (30 s) after the step, not an
      hour and 30 s later; seen by the object that was running during the step and by one
      opened after it (a restarted process);
    * a message with a delay still depends on the clock (its delay ends an hour later).
    """
    crashed = make_sqlite_queue(table_name="jobs")
    ok(crashed.enqueue("held, then lost"))
    lost = leased(crashed, visibility_timeout=30)
    ok(crashed.enqueue("back from an expired lease"))
    gone = leased(crashed, visibility_timeout=1)
    assert gone.payload == "back from an expired lease"
    ok(crashed.enqueue("ready before the step"))
    ok(crashed.enqueue("due in 10 s", delay=10))
    clock.advance(2)
    assert ok(crashed.recover_processing_messages()) == 1  # visible since its lease ran out

    clock.advance(-3600)  # an hour back
    consumer = crashed if after_the_step == "same object" else make_sqlite_queue(table_name="jobs")
    ready = ok(consumer.dequeue_batch(10))
    assert sorted(m.payload for m in ready) == [
        "back from an expired lease",
        "ready before the step",
    ]
    assert ok(consumer.complete_batch(ready)) == 2
    assert ok(consumer.dequeue()) is None  # the lost lease is still held, the delay not over
    assert ok(consumer.stats()).delayed == 1
    clock.advance(31)  # one lease after the step
    back = leased(consumer)
    assert back.id == lost.id
    ok(consumer.complete(back))
    assert ok(consumer.dequeue()) is None  # the delayed one waits for its time on the clock
    clock.advance(3600)
    assert leased(consumer).payload == "due in 10 s"


@pytest.mark.parametrize("wrong", [time.time_ns, lambda: time.time() * 1000, lambda: -1.0])
def test_a_clock_that_goes_wrong_after_construction_changes_nothing(
    tmp_path: Any, wrong: Callable[[], float]
) -> None:
    """The clock is checked when the queue is built, and again as each call reads it: a
    clock that later says nanoseconds (or nonsense) would expire every lease, or make
    every message look long dead, in one call."""
    from sqqueue import ErrorKind, SQLiteQueue

    clocks: list[Callable[[], float]] = [time.time]
    queue = SQLiteQueue(tmp_path / "q.db", table_name="jobs", clock=lambda: clocks[0]())  # noqa: PLW0108 (read late)
    ok(queue.enqueue_batch(list(range(5))))
    held = ok(queue.dequeue(visibility_timeout=60))
    clocks[0] = wrong
    for result in (queue.dequeue(), queue.enqueue("x"), queue.complete(held)):
        assert result.is_err() and result.error.kind is ErrorKind.STORAGE, result
        assert "the queue's clock says" in str(result.error)
    clocks[0] = time.time
    stats = ok(queue.stats())
    assert (stats.ready, stats.processing, stats.dead) == (4, 1, 0)
    ok(queue.complete(held))
    queue.close()
