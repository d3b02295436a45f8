"""Consumers that wait: blocking dequeue, wake-ups, retry policies, release/requeue, claim().

Contract tests: each runs on every backend (SQLite, PostgreSQL). Wake-up latencies are
measured in real time with generous bounds for CI; the numbers are printed (``pytest -s``)
so a regression shows before it fails.
"""

from __future__ import annotations

import gc
import os
import random
import sqlite3
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import QueueTarget
from helpers import message_statuses, ok, ready_child
from sqqueue import (
    CompletionError,
    DequeueError,
    Err,
    ErrorKind,
    Message,
    Ok,
    Queue,
    RetryPolicy,
    SQLiteQueue,
)

MakeQueue = Callable[..., Queue]
SRC = Path(__file__).resolve().parents[1] / "src"


def status_of(queue: Queue, message_id: int) -> dict[str, Any]:
    (row,) = [r for r in message_statuses(queue) if r["id"] == message_id]
    return row


class Waiter:
    """Runs one blocking call on a thread and records when it returned."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.returned_at: float | None = None
        self._call = call
        self.started_at = time.perf_counter()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.result = self._call()
        self.returned_at = time.perf_counter()

    def join(self, timeout: float = 5.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the waiter is still blocked"
        return self.result


@pytest.fixture
def realtime(make_queue: MakeQueue) -> Queue:
    """A queue on the real clock (for delays and leases that must pass by themselves)."""
    return make_queue(table_name="jobs", clock=None)


# -- waiting for nothing --------------------------------------------------------------------


def test_dequeue_wait_returns_none_after_about_wait_seconds(queue: Queue) -> None:
    """With nothing to deliver, dequeue(wait=0.3) blocks about 0.3 s, then gives Ok(None)."""
    start = time.monotonic()
    result = queue.dequeue(wait=0.3)
    elapsed = time.monotonic() - start
    assert ok(result) is None
    assert 0.25 <= elapsed < 1.5, elapsed


def test_dequeue_batch_wait_returns_empty_list_after_about_wait_seconds(
    queue: Queue,
) -> None:
    """dequeue_batch(wait=0.3) on an empty queue returns Ok([]) after about 0.3 s."""
    start = time.monotonic()
    result = queue.dequeue_batch(5, wait=0.3)
    elapsed = time.monotonic() - start
    assert ok(result) == []
    assert 0.25 <= elapsed < 1.5, elapsed


def test_dequeue_without_wait_does_not_block(queue: Queue) -> None:
    """wait=0 (the default) answers at once."""
    start = time.monotonic()
    assert ok(queue.dequeue()) is None
    assert ok(queue.dequeue_batch(3)) == []
    assert time.monotonic() - start < 0.2


def test_wait_returns_available_message_at_once(queue: Queue) -> None:
    """A waiting dequeue does not wait when a message is already there."""
    message_id = ok(queue.enqueue("ready"))
    start = time.monotonic()
    message = ok(queue.dequeue(wait=5))
    assert time.monotonic() - start < 0.5
    assert message is not None
    assert message.id == message_id


def test_invalid_wait_is_an_err(queue: Queue) -> None:
    """A negative or non-numeric wait is refused with INVALID_INPUT, not raised."""
    for bad in (-1, float("nan"), "5"):
        result = queue.dequeue(wait=bad)  # type: ignore[arg-type]
        assert isinstance(result, Err)
        assert isinstance(result.error, DequeueError)
        assert result.error.kind is ErrorKind.INVALID_INPUT


# -- wake-ups in this process ---------------------------------------------------------------


def test_enqueue_from_another_thread_wakes_waiter_within_ms(queue: Queue) -> None:
    """An in-process enqueue wakes a blocked dequeue at once (signal, not polling)."""
    latencies = []
    for round_ in range(20):
        waiter = Waiter(lambda: queue.dequeue(wait=5))
        time.sleep(random.uniform(0.025, 0.045))  # let it block
        assert waiter.returned_at is None
        start = time.perf_counter()
        message_id = ok(queue.enqueue({"round": round_}))
        message = ok(waiter.join())
        assert message is not None
        assert message.id == message_id
        assert waiter.returned_at is not None
        latencies.append(waiter.returned_at - start)
        ok(queue.complete(message))
    worst, median = max(latencies), statistics.median(latencies)
    print(f"in-process wake-up: median {median * 1000:.2f} ms, max {worst * 1000:.2f} ms")
    # Woken by the signal: polling would put the median near the watcher's interval or
    # the 1 s re-check. (The slowest wake-up is the benchmark's, not asserted: on a
    # loaded machine one in twenty may wait for a scheduling slice.)
    assert median < 0.010, latencies


def test_in_process_wake_up_does_not_rely_on_polling(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no watcher at all (nothing from other connections can wake it), an in-process
    enqueue still wakes the waiter at once: the signal does it."""
    monkeypatch.setattr(queue._backend, "watch", lambda: None)
    waiter = Waiter(lambda: queue.dequeue(wait=3))
    time.sleep(0.05)
    start = time.perf_counter()
    message_id = ok(queue.enqueue("signalled"))
    message = ok(waiter.join())
    assert message is not None
    assert message.id == message_id
    assert waiter.returned_at is not None
    assert waiter.returned_at - start < 0.05


def test_enqueue_batch_wakes_batch_waiter(queue: Queue) -> None:
    """dequeue_batch(wait=...) wakes on an enqueue_batch and takes the whole batch."""
    waiter = Waiter(lambda: queue.dequeue_batch(10, wait=5))
    time.sleep(0.05)
    assert waiter.returned_at is None
    start = time.perf_counter()
    ids = ok(queue.enqueue_batch(["a", "b", "c"]))
    messages = ok(waiter.join())
    assert [m.id for m in messages] == ids
    assert [m.payload for m in messages] == ["a", "b", "c"]
    assert waiter.returned_at is not None
    assert waiter.returned_at - start < 0.5


def test_one_enqueue_wakes_one_of_many_waiters_and_the_rest_keep_waiting(
    queue: Queue,
) -> None:
    """Three waiters, one message: exactly one gets it, the others time out with None."""
    waiters = [Waiter(lambda: queue.dequeue(wait=0.6)) for _ in range(3)]
    time.sleep(0.05)
    message_id = ok(queue.enqueue("only one"))
    results = [ok(w.join()) for w in waiters]
    got = [m for m in results if m is not None]
    assert [m.id for m in got] == [message_id]
    assert results.count(None) == 2


def test_requeue_and_release_wake_waiters(queue: Queue) -> None:
    """Giving a message back (requeue or release) wakes a consumer waiting for work."""
    ok(queue.enqueue("job"))
    for give_back in (queue.requeue, queue.release):
        message = ok(queue.dequeue())
        assert message is not None
        waiter = Waiter(lambda: queue.dequeue(wait=5))
        time.sleep(0.05)
        start = time.perf_counter()
        ok(give_back(message))
        again = ok(waiter.join())
        assert again is not None
        assert again.id == message.id
        assert waiter.returned_at is not None
        assert waiter.returned_at - start < 0.2
        ok(queue.requeue(again))


def test_delayed_message_wakes_waiter_when_due(realtime: Queue) -> None:
    """A message delayed 0.2 s is delivered to a waiting consumer when due, not before."""
    start = time.monotonic()
    message_id = ok(realtime.enqueue("later", delay=0.2))
    message = ok(realtime.dequeue(wait=3))
    elapsed = time.monotonic() - start
    assert message is not None
    assert message.id == message_id
    assert 0.18 <= elapsed < 0.6, elapsed


def test_delayed_enqueue_while_waiting_wakes_waiter_when_due(realtime: Queue) -> None:
    """A waiter already blocked learns of a delayed message and takes it when it falls due."""
    waiter = Waiter(lambda: realtime.dequeue(wait=3))
    time.sleep(0.05)
    start = time.perf_counter()
    message_id = ok(realtime.enqueue("later", delay=0.2))
    message = ok(waiter.join())
    assert message is not None
    assert message.id == message_id
    assert waiter.returned_at is not None
    assert 0.18 <= waiter.returned_at - start < 0.6


def test_delayed_batch_wakes_batch_waiter_when_due(realtime: Queue) -> None:
    """dequeue_batch(wait=...) also wakes when delayed messages fall due."""
    start = time.monotonic()
    ok(realtime.enqueue_batch([("x", None, 0.2), ("y", None, 0.2)]))
    messages = ok(realtime.dequeue_batch(5, wait=3))
    elapsed = time.monotonic() - start
    assert sorted(m.payload for m in messages) == ["x", "y"]
    assert 0.18 <= elapsed < 0.6, elapsed


def test_expired_lease_wakes_waiter(realtime: Queue, make_queue: MakeQueue) -> None:
    """When another consumer's lease runs out, a waiter gets the message at that time."""
    other = make_queue(table_name="jobs", clock=None)
    message_id = ok(realtime.enqueue("job"))
    held = ok(other.dequeue(visibility_timeout=0.3))
    assert held is not None
    start = time.monotonic()
    message = ok(realtime.dequeue(wait=3))
    elapsed = time.monotonic() - start
    assert message is not None
    assert message.id == message_id
    assert message.attempts == 2
    assert 0.2 <= elapsed < 1.0, elapsed


@pytest.mark.slow
def test_fake_clock_advance_releases_delayed_message_to_waiter(queue: Queue, clock: Any) -> None:
    """With an injected clock, a waiter sees a delayed message once the clock passes its time."""
    message_id = ok(queue.enqueue("later", delay=60))
    waiter = Waiter(lambda: queue.dequeue(wait=3))
    time.sleep(0.1)
    assert waiter.returned_at is None
    clock.advance(61)
    message = ok(waiter.join())
    assert message is not None
    assert message.id == message_id


# -- cancel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [False, True])
def test_cancel_event_and_wake_waiters_end_a_wait_early(queue: Queue, batch: bool) -> None:
    """Setting `cancel` then calling wake_waiters() ends a long wait at once, with nothing."""
    cancel = threading.Event()
    if batch:
        waiter = Waiter(lambda: queue.dequeue_batch(5, wait=10, cancel=cancel))
    else:
        waiter = Waiter(lambda: queue.dequeue(wait=10, cancel=cancel))
    time.sleep(0.05)
    assert waiter.returned_at is None
    start = time.perf_counter()
    cancel.set()
    queue.wake_waiters()
    result = ok(waiter.join(2))
    assert result == ([] if batch else None)
    assert waiter.returned_at is not None
    assert waiter.returned_at - start < 0.1
    assert ok(queue.is_drained()) is True


def test_cancelled_wait_leaves_later_messages_alone(queue: Queue) -> None:
    """A cancelled waiter takes nothing: a message enqueued afterwards is still pending."""
    cancel = threading.Event()
    waiter = Waiter(lambda: queue.dequeue(wait=10, cancel=cancel))
    time.sleep(0.05)
    cancel.set()
    queue.wake_waiters()
    assert ok(waiter.join(2)) is None
    message_id = ok(queue.enqueue("after"))
    assert status_of(queue, message_id)["status"] == "ready"


def test_wake_waiters_without_cancel_keeps_waiting(queue: Queue) -> None:
    """wake_waiters() alone is only a nudge: an uncancelled waiter looks again and waits on."""
    waiter = Waiter(lambda: queue.dequeue(wait=0.5))
    time.sleep(0.05)
    queue.wake_waiters()
    time.sleep(0.1)
    assert waiter.returned_at is None
    assert ok(waiter.join()) is None
    assert waiter.returned_at - waiter.started_at >= 0.45  # type: ignore[operator]


# -- cost of idle waiting -------------------------------------------------------------------


@pytest.mark.parametrize("state", ["empty", "delayed", "leased elsewhere"])
@pytest.mark.slow
def test_idle_waiter_does_not_busy_poll(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    """An idle 1 s wait queries the queue a few times at most: it sleeps until woken."""
    queue = make_queue(table_name="jobs")
    if state == "delayed":
        ok(queue.enqueue("later", delay=3600))
    elif state == "leased elsewhere":
        other = make_queue(table_name="jobs")
        ok(other.enqueue("held"))
        assert ok(other.dequeue(visibility_timeout=3600)) is not None
    backend = queue._backend
    calls: Counter[str] = Counter()
    for name in ("claim", "next_due", "watch"):
        real = getattr(backend, name)

        def counting(*args: Any, _name: str = name, _real: Any = real, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(backend, name, counting)
    start = time.monotonic()
    assert ok(queue.dequeue(wait=1.0)) is None
    elapsed = time.monotonic() - start
    print(f"idle 1 s wait ({state}): {dict(calls)}")
    assert 0.95 <= elapsed < 2.0
    assert 1 <= calls["claim"] <= 3, calls
    assert calls["watch"] <= 3, calls
    # Once when the wait starts, and once more if the watcher starts up meanwhile.
    assert calls["next_due"] <= 3, calls


@pytest.mark.slow
def test_waiting_costs_do_not_grow_with_the_number_of_waiters(
    make_sqlite_queue: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 consumers waiting idle check the database no more often than one does: one
    watcher per process and database polls for all of them (about 100 cheap checks a
    second), and a waiting consumer runs no query of its own while nothing happens."""
    lock = threading.Lock()
    statements: Counter[str] = Counter()
    real_connect = sqlite3.connect

    def trace(sql: str) -> None:
        with lock:
            statements["data_version" if "data_version" in sql else "other"] += 1

    def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(trace)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    queue = make_sqlite_queue(table_name="jobs", clock=None)
    seen = {}
    for waiters in (1, 20):
        with lock:
            statements.clear()
        threads = [Waiter(lambda: queue.dequeue(wait=1.0)) for _ in range(waiters)]
        assert [w.join(10) for w in threads] == [Ok(None)] * waiters
        with lock:
            seen[waiters] = dict(statements)
    print(f"statements while waiting 1 s, by number of waiters: {seen}")
    # Polling every 2 to 10 ms: at most ~100 checks in the second, for 1 or 20 waiters.
    assert seen[20].get("data_version", 0) <= 150, seen
    # Each waiter: a claim when it starts (BEGIN, a look for expired leases, the pick,
    # COMMIT), and a look at what falls due when it starts and when the watcher starts.
    assert seen[20].get("other", 0) <= 20 * 12, seen


def test_idle_waiter_ignores_busy_neighbour_table(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes to another queue in the same database do not make a waiter claim again and
    again."""
    queue = make_queue(table_name="jobs")
    neighbour = make_queue(table_name="other")
    calls: Counter[str] = Counter()
    real_claim = queue._backend.claim

    def counting_claim(*args: Any, **kwargs: Any) -> Any:
        calls["claim"] += 1
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(queue._backend, "claim", counting_claim)
    stop = threading.Event()

    def write() -> None:
        while not stop.wait(0.02):
            ok(neighbour.enqueue("noise"))

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        assert ok(queue.dequeue(wait=0.8)) is None
    finally:
        stop.set()
        writer.join(5)
    assert len(message_statuses(neighbour)) >= 10
    assert calls["claim"] <= 3, calls


def test_closing_the_queue_ends_a_wait_with_closed(make_queue: MakeQueue) -> None:
    """close() while a consumer waits: the wait ends promptly with Err(CLOSED)."""
    queue = make_queue(table_name="jobs")
    waiter = Waiter(lambda: queue.dequeue(wait=5))
    time.sleep(0.05)
    start = time.perf_counter()
    queue.close()
    result = waiter.join(5)
    assert waiter.returned_at is not None
    assert waiter.returned_at - start < 0.5
    assert isinstance(result, Err)
    assert isinstance(result.error, DequeueError)
    assert result.error.kind is ErrorKind.CLOSED


# -- wake-ups from another process ----------------------------------------------------------

PRODUCER = """
import sys, time
from sqqueue import PostgresQueue, connect

url, schema, table = sys.argv[1:4]
if url.startswith("sqlite:"):
    queue = connect(url, table)
else:
    queue = PostgresQueue(url, table, schema=schema)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    pause, delay = (float(x) for x in line.split())
    time.sleep(pause)
    queue.enqueue({"t": time.monotonic()}, delay=delay).unwrap()
queue.close()
"""


@pytest.fixture
def producer(tmp_path: Path, queue_target: QueueTarget) -> Iterator[subprocess.Popen[str]]:
    """A producer process on the test's database: for each line "pause delay" written to
    it, it sleeps ``pause`` then enqueues {"t": its monotonic time} with ``delay``; "quit"
    ends it."""
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    with ready_child(script, queue_target.url, str(queue_target.schema), "jobs") as proc:
        yield proc


@pytest.mark.slow
def test_enqueue_from_another_process_wakes_waiter(
    make_queue: MakeQueue, producer: subprocess.Popen[str]
) -> None:
    """A waiter sees another process's enqueue through the watcher, not the 1 s re-check:
    over 30 wake-ups the median is well under 100 ms. (The 50 ms p99 target is measured
    by the benchmark; on a loaded machine one wake-up may wait for a scheduling slice.)
    """
    queue = make_queue(table_name="jobs", clock=None)
    assert producer.stdin is not None
    latencies = []
    for _ in range(30):
        producer.stdin.write(f"{random.uniform(0.02, 0.06):.3f} 0\n")
        producer.stdin.flush()
        message = ok(queue.dequeue(wait=5))
        received = time.monotonic()
        assert message is not None, "no message from the producer within 5 s"
        latencies.append(received - message.payload["t"])
        ok(queue.complete(message))
    producer.stdin.write("quit\n")
    producer.stdin.flush()
    assert producer.wait(10) == 0
    ordered = sorted(latencies)
    p50, p99 = statistics.median(ordered), ordered[-1]
    print(f"cross-process wake-up over 30: median {p50 * 1000:.1f} ms, p99/max {p99 * 1000:.1f} ms")
    assert p50 < 0.100, ordered
    assert ok(queue.is_drained()) is True


def test_delayed_enqueue_from_another_process_wakes_waiter_when_due(
    make_queue: MakeQueue, producer: subprocess.Popen[str]
) -> None:
    """A waiter learns of another process's delayed message and takes it when due."""
    queue = make_queue(table_name="jobs", clock=None)
    assert producer.stdin is not None
    producer.stdin.write("0.05 0.3\nquit\n")
    producer.stdin.flush()
    message = ok(queue.dequeue(wait=5))
    received = time.monotonic()
    assert message is not None
    since_enqueue = received - message.payload["t"]
    assert 0.28 <= since_enqueue < 0.45, since_enqueue
    assert producer.wait(10) == 0


# -- retry policies -------------------------------------------------------------------------


def test_retry_policy_immediate_and_fixed() -> None:
    """immediate() is always 0 s; fixed(d) is d for every attempt."""
    assert [RetryPolicy.immediate().delay(n) for n in (1, 2, 50)] == [0.0, 0.0, 0.0]
    fixed = RetryPolicy.fixed(30)
    assert [fixed.delay(n) for n in (1, 2, 3, 100, 5000)] == [30, 30, 30, 30, 30]


def test_retry_policy_linear_grows_by_step_up_to_cap() -> None:
    """linear(step, cap): step * attempts, never above cap."""
    linear = RetryPolicy.linear(10, cap=35)
    assert [linear.delay(n) for n in (1, 2, 3, 4, 5)] == [10, 20, 30, 35, 35]
    assert linear.delay(5000) == 35


def test_retry_policy_exponential_without_jitter() -> None:
    """exponential(base, factor, cap): base * factor**(attempts - 1), capped."""
    policy = RetryPolicy.exponential(1, factor=2, cap=600, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 10)] == [1, 2, 4, 8, 512]
    assert policy.delay(11) == 600
    tripled = RetryPolicy.exponential(2, factor=3, cap=10_000, jitter=False)
    assert [tripled.delay(n) for n in (1, 2, 3)] == [2, 6, 18]


def test_retry_policy_exponential_jitter_stays_in_half_to_full_delay() -> None:
    """With jitter a delay d becomes a random value in [d/2, d], and values do vary."""
    policy = RetryPolicy.exponential(4, factor=2, cap=100, jitter=True)
    for attempts, full in ((1, 4), (2, 8), (3, 16), (6, 100), (20, 100)):
        samples = [policy.delay(attempts) for _ in range(200)]
        assert all(full / 2 <= s <= full for s in samples), (attempts, min(samples), max(samples))
        assert len(set(samples)) > 1


@pytest.mark.parametrize("jitter", [False, True])
@pytest.mark.parametrize("factor", [2, 1.5, 10])
def test_retry_policy_exponential_does_not_overflow(jitter: bool, factor: float) -> None:
    """Attempt 5000 of an exponential policy gives the cap, not an OverflowError or inf."""
    policy = RetryPolicy.exponential(1, factor=factor, cap=600, jitter=jitter)
    for attempts in (1000, 5000, 1_000_000):
        value = policy.delay(attempts)
        assert (300 <= value <= 600) if jitter else value == 600


def test_linear_with_jitter_is_bounded() -> None:
    """linear(..., jitter=True) also stays within [d/2, d]."""
    policy = RetryPolicy.linear(10, cap=100, jitter=True)
    samples = [policy.delay(3) for _ in range(100)]
    assert all(15 <= s <= 30 for s in samples)


@pytest.mark.parametrize(
    "build",
    [
        lambda: RetryPolicy.fixed(-1),
        lambda: RetryPolicy.linear(float("nan")),
        lambda: RetryPolicy.exponential(1, cap=float("inf")),
        lambda: RetryPolicy.exponential(1, factor=-2),
    ],
)
def test_retry_policy_rejects_bad_numbers(build: Callable[[], RetryPolicy]) -> None:
    """Negative, NaN or infinite settings raise ValueError when the policy is built."""
    with pytest.raises(ValueError, match="RetryPolicy"):
        build()


def test_queue_rejects_non_policy_retry(make_queue: MakeQueue) -> None:
    """retry= must be a RetryPolicy."""
    with pytest.raises(ValueError, match="RetryPolicy"):
        make_queue(table_name="jobs", retry=30)


def _fail_once(queue: Queue, **kwargs: Any) -> Message:
    message = ok(queue.dequeue())
    assert message is not None
    ok(queue.fail_message(message, error="boom", **kwargs))
    return message


def test_fail_without_delay_uses_queue_retry_policy(make_queue: MakeQueue, clock: Any) -> None:
    """fail_message(msg) waits what the queue's policy says before redelivery."""
    queue = make_queue(table_name="jobs", retry=RetryPolicy.fixed(30))
    message_id = ok(queue.enqueue("job"))
    _fail_once(queue)
    assert status_of(queue, message_id)["status"] == "delayed"
    assert ok(queue.dequeue()) is None
    clock.advance(29.9)
    assert ok(queue.dequeue()) is None
    clock.advance(0.2)
    again = ok(queue.dequeue())
    assert again is not None
    assert again.id == message_id
    assert again.attempts == 2
    assert again.last_error == "boom"


def test_fail_delay_follows_attempt_count(make_queue: MakeQueue, clock: Any) -> None:
    """An exponential policy waits 10 s after attempt 1 and 20 s after attempt 2."""
    policy = RetryPolicy.exponential(10, factor=2, cap=1000, jitter=False)
    queue = make_queue(table_name="jobs", retry=policy)
    ok(queue.enqueue("job"))
    for expected in (10, 20, 40):
        failed = _fail_once(queue)
        assert policy.delay(failed.attempts) == expected
        clock.advance(expected - 0.5)
        assert ok(queue.dequeue()) is None, f"visible before its {expected} s delay"
        assert ok(queue.peek()) is None
        clock.advance(0.5)
        assert ok(queue.peek()) is not None, f"not visible after its {expected} s delay"


def test_fail_by_id_uses_policy_for_actual_attempt_count(make_queue: MakeQueue, clock: Any) -> None:
    """fail_message(<id>) uses the delay for the message's real attempt count (3rd: 30 s)."""
    queue = make_queue(table_name="jobs", retry=RetryPolicy.linear(10, cap=1000))
    message_id = ok(queue.enqueue("job"))
    _fail_once(queue)
    clock.advance(10)
    _fail_once(queue)
    clock.advance(20)
    third = ok(queue.dequeue())
    assert third is not None
    assert third.attempts == 3
    ok(queue.fail_message(message_id, error="by id"))
    clock.advance(29)
    assert ok(queue.peek()) is None, "a bare-id failure used the delay of attempt 1"
    clock.advance(1.5)
    assert ok(queue.peek()) is not None


def test_explicit_delay_overrides_policy(make_queue: MakeQueue, clock: Any) -> None:
    """fail_message(delay=...) wins over the policy, including delay=0."""
    queue = make_queue(table_name="jobs", retry=RetryPolicy.fixed(300))
    message_id = ok(queue.enqueue("job"))
    _fail_once(queue, delay=0)
    assert status_of(queue, message_id)["status"] == "ready"
    _fail_once(queue, delay=5)
    clock.advance(4.9)
    assert ok(queue.dequeue()) is None
    clock.advance(0.2)
    again = ok(queue.dequeue())
    assert again is not None
    assert again.attempts == 3


def test_default_policy_is_immediate(queue: Queue) -> None:
    """Without retry=, a failed message is visible again at once (the 0.1.0 behaviour)."""
    message_id = ok(queue.enqueue("job"))
    _fail_once(queue)
    again = ok(queue.dequeue())
    assert again is not None
    assert again.id == message_id


def test_dead_letter_ignores_retry_delay(make_queue: MakeQueue) -> None:
    """The last failed attempt goes to the dead-letter queue, whatever the policy."""
    queue = make_queue(table_name="jobs", retry=RetryPolicy.fixed(300))
    message_id = ok(queue.enqueue("job", max_attempts=1))
    _fail_once(queue)
    (dead,) = ok(queue.get_dead_letters())
    assert dead["id"] == message_id
    assert dead["last_error"] == "boom"


def test_failed_message_goes_to_back_of_its_priority(queue: Queue, clock: Any) -> None:
    """A failed message is redelivered after the others of its priority, before lower ones."""
    a = ok(queue.enqueue("a", priority=5))
    b = ok(queue.enqueue("b", priority=5))
    c = ok(queue.enqueue("c", priority=0))
    clock.advance(1)
    failed = _fail_once(queue)
    assert failed.id == a
    order = []
    while (message := ok(queue.dequeue())) is not None:
        order.append(message.id)
    assert order == [b, a, c]


def test_requeued_and_released_messages_go_to_back_of_their_priority(
    queue: Queue, clock: Any
) -> None:
    """requeue() and release() also put the message behind the others of its priority."""
    for give_back in ("requeue", "release"):
        first = ok(queue.enqueue(f"{give_back}-1"))
        second = ok(queue.enqueue(f"{give_back}-2"))
        clock.advance(1)
        message = ok(queue.dequeue())
        assert message.id == first
        ok(getattr(queue, give_back)(message))
        assert [ok(queue.dequeue()).id, ok(queue.dequeue()).id] == [second, first]
        ok(queue.complete(second))
        ok(queue.complete(first))


# -- release and requeue --------------------------------------------------------------------


def test_release_does_not_count_the_attempt(queue: Queue) -> None:
    """release(): back to pending at once, and the attempt is given back."""
    message_id = ok(queue.enqueue("job", max_attempts=1))
    for _ in range(3):
        message = ok(queue.dequeue())
        assert message is not None
        assert message.attempts == 1
        ok(queue.release(message))
        row = status_of(queue, message_id)
        assert (row["status"], row["attempts"]) == ("ready", 0)
    last = ok(queue.dequeue())
    ok(queue.fail_message(last, error="real failure"))
    (dead,) = ok(queue.get_dead_letters())
    assert (dead["id"], dead["attempts"]) == (message_id, 1)


def test_requeue_counts_the_attempt(queue: Queue) -> None:
    """requeue(): back to pending at once, and the attempt stays counted."""
    message_id = ok(queue.enqueue("job"))
    for attempt in (1, 2, 3):
        message = ok(queue.dequeue())
        assert message is not None
        assert message.attempts == attempt
        ok(queue.requeue(message))
        row = status_of(queue, message_id)
        assert (row["status"], row["attempts"]) == ("ready", attempt)
    assert ok(queue.dequeue()).attempts == 4


@pytest.mark.parametrize("by", ["message", "id"])
def test_requeue_on_the_last_attempt_dead_letters(queue: Queue, by: str) -> None:
    """A message requeued with no attempt left is dead-lettered, as sqqueue 0.1.0's next
    dequeue did: a message that always fails is not delivered forever."""
    message_id = ok(queue.enqueue("poison", max_attempts=2))
    for _ in range(2):
        message = ok(queue.dequeue())
        assert message is not None
        ok(queue.requeue(message if by == "message" else message.id))
    assert ok(queue.dequeue()) is None
    (dead,) = ok(queue.get_dead_letters())
    assert (dead["id"], dead["attempts"]) == (message_id, 2)
    assert dead["last_error"] == "requeued with no attempt left (2 of 2 used)"
    stats = ok(queue.stats())
    assert (stats.dead, stats.dead_lettered_total, stats.failed_total) == (1, 1, 0)
    ok(queue.redrive())  # back with a fresh set of attempts
    assert ok(queue.dequeue()).attempts == 1


def test_release_on_the_last_attempt_gives_it_back(queue: Queue) -> None:
    """release refunds the attempt: a message given back unstarted on its last attempt
    stays in the queue."""
    ok(queue.enqueue("job", max_attempts=1))
    ok(queue.release(ok(queue.dequeue())))
    again = ok(queue.dequeue())
    assert (again.payload, again.attempts) == ("job", 1)


def test_release_and_requeue_keep_last_error(queue: Queue) -> None:
    """Giving a message back does not erase the error of an earlier failed attempt."""
    ok(queue.enqueue("job"))
    _fail_once(queue)
    for give_back in (queue.release, queue.requeue):
        message = ok(queue.dequeue())
        ok(give_back(message))
    assert ok(queue.dequeue()).last_error == "boom"


@pytest.mark.parametrize("action", ["release", "requeue"])
def test_release_and_requeue_need_a_live_lease(queue: Queue, clock: Any, action: str) -> None:
    """release/requeue of a pending message or after the lease expired are refused."""
    message_id = ok(queue.enqueue("job"))
    result = getattr(queue, action)(message_id)
    assert isinstance(result, Err)
    assert result.error.kind is ErrorKind.WRONG_STATE
    message = ok(queue.dequeue(visibility_timeout=10))
    clock.advance(11)
    result = getattr(queue, action)(message)
    assert isinstance(result, Err)
    assert result.error.kind is ErrorKind.LEASE_EXPIRED
    assert ok(queue.dequeue()).attempts == 2


# -- the claim context manager --------------------------------------------------------------


def _raise_in_claim(queue: Queue, exc: BaseException) -> None:
    with queue.claim() as message:
        assert message is not None
        raise exc


def test_claim_completes_on_success(queue: Queue) -> None:
    """A `with queue.claim()` block that ends normally completes the message."""
    message_id = ok(queue.enqueue({"job": 1}))
    with queue.claim(wait=1) as message:
        assert message is not None
        assert message.id == message_id
        assert status_of(queue, message_id)["status"] == "processing"
    assert message_statuses(queue) == []
    assert ok(queue.is_drained()) is True


def test_claim_fails_and_reraises_on_exception(queue: Queue) -> None:
    """An exception in the block fails the message with "ExcType: text" and propagates."""
    message_id = ok(queue.enqueue("job"))
    with pytest.raises(ValueError, match="bad input"):
        _raise_in_claim(queue, ValueError("bad input"))
    row = status_of(queue, message_id)
    assert (row["status"], row["attempts"]) == ("ready", 1)
    again = ok(queue.dequeue())
    assert again.last_error == "ValueError: bad input"


def test_claim_exception_on_last_attempt_dead_letters(queue: Queue) -> None:
    """On the last attempt a failing block sends the message to the dead-letter queue."""
    message_id = ok(queue.enqueue("job", max_attempts=1))
    with pytest.raises(KeyError):
        _raise_in_claim(queue, KeyError("missing"))
    (dead,) = ok(queue.get_dead_letters())
    assert dead["id"] == message_id
    assert dead["last_error"] == "KeyError: 'missing'"


def test_claim_exception_without_text_records_type_name(queue: Queue) -> None:
    """An exception with no message is recorded as its type name alone."""
    ok(queue.enqueue("job"))
    with pytest.raises(RuntimeError):
        _raise_in_claim(queue, RuntimeError())
    assert ok(queue.dequeue()).last_error == "RuntimeError"


def test_claim_yields_none_on_timeout(queue: Queue) -> None:
    """With nothing to claim, the block runs with None after about `wait` seconds."""
    start = time.monotonic()
    with queue.claim(wait=0.3) as message:
        assert message is None
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 1.5


def test_claim_waits_for_a_message(queue: Queue) -> None:
    """claim(wait=...) blocks until another thread enqueues."""
    threading.Timer(0.1, lambda: queue.enqueue("late")).start()
    with queue.claim(wait=3) as message:
        assert message is not None
        assert message.payload == "late"
    assert ok(queue.is_drained()) is True


def test_claim_uses_visibility_timeout(queue: Queue, clock: Any) -> None:
    """claim(visibility_timeout=...) sets the lease length of the claimed message."""
    ok(queue.enqueue("job"))
    with queue.claim(visibility_timeout=42) as message:
        assert message is not None
        assert message.lease_expires_at is not None
        assert message.lease_expires_at.timestamp() == pytest.approx(clock() + 42)


def test_claim_block_may_settle_the_message_itself(queue: Queue) -> None:
    """If the block completes the message itself, leaving the block is not an error."""
    ok(queue.enqueue("job"))
    with queue.claim() as message:
        assert message is not None
        ok(queue.complete(message))
    assert ok(queue.is_drained()) is True


def test_claim_raises_when_lease_expired_during_block(queue: Queue, clock: Any) -> None:
    """A block that outlives its lease is told so: completing it is refused and raised."""
    message_id = ok(queue.enqueue("job"))

    def outlive_lease() -> None:
        with queue.claim(visibility_timeout=10) as message:
            assert message is not None
            clock.advance(11)

    with pytest.raises(CompletionError) as info:
        outlive_lease()
    assert info.value.kind is ErrorKind.LEASE_EXPIRED
    assert ok(queue.dequeue()).id == message_id


def test_claim_on_closed_queue_raises_dequeue_error(make_queue: MakeQueue) -> None:
    """If leasing fails, claim() raises the DequeueError."""
    queue = make_queue(table_name="jobs")
    queue.close()
    with pytest.raises(DequeueError) as info, queue.claim() as _message:
        pytest.fail("the block must not run")
    assert info.value.kind is ErrorKind.CLOSED


def test_closed_queues_leave_no_watcher_or_signal_behind(tmp_path: Path) -> None:
    """A process that opens and closes queues on many files over its life keeps nothing
    for a file once its queue objects are gone (no watcher, no wake-up signal)."""
    from sqqueue import wakeup
    from sqqueue.backends import sqlite_files

    folder = os.path.realpath(tmp_path)
    for i in range(20):
        queue = SQLiteQueue(str(tmp_path / f"q{i}.db"), "jobs")
        assert ok(queue.dequeue(wait=0.01)) is None  # a wait starts the file's watcher
        queue.close()
    del queue

    def left() -> list[str]:
        gc.collect()
        return [key for key in [*wakeup._signals, *sqlite_files._watchers] if folder in key]

    deadline = time.monotonic() + 15  # a watcher's thread ends soon after its last queue
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left() == []


def test_a_watcher_unregistering_on_its_own_thread_under_its_lock_does_not_deadlock() -> None:
    """The collector may run a queue object's finalizer (which unregisters it from its
    file's watcher) on the watcher's own thread while that thread holds the watcher's
    lock: the unregistering must go through, not wait for itself for ever. Here a
    registrant's __hash__, which the watcher calls under its lock, unregisters another."""
    from sqqueue.wakeup import Signal, Watcher

    watcher = Watcher("test", open_probe=lambda: None)  # type: ignore[arg-type,return-value]
    first = object()
    watcher.register(first, Signal())

    class Collected:
        def __hash__(self) -> int:
            watcher.unregister(first)  # as a finalizer run by the collector would
            return 1

    done = threading.Event()

    def register() -> None:
        watcher.register(Collected(), Signal())
        done.set()

    thread = threading.Thread(target=register, daemon=True)
    thread.start()
    assert done.wait(10), "the watcher waited for its own lock"
