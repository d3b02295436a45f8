"""The Worker: completion, failures and dead letters, hooks, concurrency, heartbeats,
task timeouts, and shutdown (stop(), SIGTERM, a second signal, SIGKILL) in real processes.

Workers here run on every backend; every wait is bounded. The suite must hold on a busy
machine (two CPU hogs beside it): lease expiry is driven by the fake clock where it decides
the outcome; waits return as soon as their condition holds and have generous deadlines; a
time bound is only asserted against a contrast many times larger (a 30 s wait, a 100 s
heartbeat), never against how fast the machine happens to be.
"""

from __future__ import annotations

import gc
import importlib
import logging
import re
import signal
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeClock, QueueTarget
from helpers import ScriptProcess, message_statuses, ok, run_script, status_rows, wait_until
from sqqueue import (
    Item,
    Message,
    Queue,
    Reject,
    Worker,
    WorkerHooks,
    WorkerStats,
    worker,
)
from sqqueue.worker import MAX_CONCURRENCY

MakeQueue = Callable[..., Queue]


class Running:
    """A Worker running on a background thread (so no signal handlers are installed)."""

    def __init__(self, w: Worker) -> None:
        self.worker = w
        self.stats: WorkerStats | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.stats = self.worker.run()

    def stop(self, timeout: float = 10.0, immediate: bool = False) -> WorkerStats:
        self.worker.stop(immediate=immediate)
        return self.join(timeout)

    def join(self, timeout: float = 10.0) -> WorkerStats:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "Worker.run() did not return"
        assert self.stats is not None
        return self.stats


@pytest.fixture
def rq(make_queue: MakeQueue) -> Queue:
    """A queue on the real clock: leases expire and heartbeats matter in real time."""
    return make_queue(table_name="jobs", clock=None)


@pytest.fixture
def running() -> Iterator[Callable[[Worker], Running]]:
    """Start workers on threads; any still running at teardown is stopped at once."""
    started: list[Running] = []

    def start(w: Worker) -> Running:
        r = Running(w)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.thread.is_alive():
            r.worker.stop(immediate=True)
            r.thread.join(5)


def make_worker(queue: Queue, handler: Callable[[Message], Any], **options: Any) -> Worker:
    options.setdefault("handle_signals", False)
    options.setdefault("poll_wait", 0.5)
    return Worker(queue, handler, **options)


# -- outcomes and hooks ---------------------------------------------------------------------


def test_worker_completes_on_return_and_calls_hooks(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """Returning completes the message; on_start and on_success get the message (and value)."""
    ids = ok(rq.enqueue_batch(["a", "b", "c"]))
    starts: list[Message] = []
    successes: list[tuple[int, Any]] = []
    hooks = WorkerHooks(
        on_start=starts.append,
        on_success=lambda m, value: successes.append((m.id, value)),
        on_failure=lambda m, exc: pytest.fail(f"unexpected failure {exc!r}"),
        on_dead_letter=lambda m, exc: pytest.fail("unexpected dead letter"),
    )
    r = running(make_worker(rq, lambda m: m.payload.upper(), hooks=hooks))
    wait_until(lambda: len(successes) == 3, what="three successes")
    stats = r.stop()
    assert [m.id for m in starts] == ids
    assert all(isinstance(m, Message) and m.attempts == 1 for m in starts)
    assert successes == [(ids[0], "A"), (ids[1], "B"), (ids[2], "C")]
    assert (stats.started, stats.completed, stats.failed, stats.dead_lettered) == (3, 3, 0, 0)
    assert len(stats.processing_seconds) == 3
    assert status_rows(rq) == []
    assert ok(rq.get_dead_letters()) == []


@pytest.mark.parametrize(
    "exc", [ValueError("bad payload"), KeyError("user_id"), RuntimeError()], ids=repr
)
def test_worker_fails_with_last_traceback_line(
    rq: Queue, running: Callable[[Worker], Running], exc: Exception
) -> None:
    """A raising handler fails the message; last_error is the traceback's last line."""
    expected_error = traceback.format_exception_only(type(exc), exc)[-1].strip()
    message_id = ok(rq.enqueue("job", max_attempts=3))
    seen: list[tuple[int, str | None]] = []
    failures: list[tuple[Message, BaseException]] = []

    def handler(message: Message) -> None:
        seen.append((message.attempts, message.last_error))
        if message.attempts == 1:
            raise exc

    hooks = WorkerHooks(on_failure=lambda m, e: failures.append((m, e)))
    r = running(make_worker(rq, handler, hooks=hooks))
    wait_until(lambda: len(seen) == 2 and not status_rows(rq), what="retry and completion")
    stats = r.stop()
    assert seen == [(1, None), (2, expected_error)]
    assert len(failures) == 1
    assert failures[0][0].id == message_id
    assert failures[0][0].attempts == 1
    assert failures[0][1] is exc
    assert (stats.failed, stats.completed, stats.dead_lettered) == (1, 1, 0)


def test_a_failure_the_queue_refuses_is_not_counted(
    rq: Queue, running: Callable[[Worker], Running], caplog: pytest.LogCaptureFixture
) -> None:
    """``failed`` counts the failures stored, as ``completed`` counts the completions: a
    handler that raises once its message's lease has ended (it completed it itself, here)
    leaves no failure on record, and none is counted."""

    def handler(message: Message) -> None:
        ok(rq.complete(message))
        raise ValueError("after all")

    ok(rq.enqueue("x"))
    w = make_worker(rq, handler)
    r = running(w)
    wait_until(
        lambda: any("could not record failure" in rec.getMessage() for rec in caplog.records),
        what="the refused failure",
    )
    stats = r.stop()
    assert (stats.started, stats.failed, stats.completed) == (1, 0, 0)


def test_worker_dead_letters_after_max_attempts(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """After max_attempts failures the message is dead-lettered, and on_dead_letter called."""
    message_id = ok(rq.enqueue({"n": 1}, max_attempts=3))
    failures: list[tuple[int, str]] = []
    dead: list[tuple[Message, BaseException]] = []

    def handler(message: Message) -> None:
        raise ValueError(f"attempt {message.attempts} failed")

    hooks = WorkerHooks(
        on_failure=lambda m, e: failures.append((m.attempts, str(e))),
        on_dead_letter=lambda m, e: dead.append((m, e)),
        on_success=lambda m, v: pytest.fail("unexpected success"),
    )
    r = running(make_worker(rq, handler, hooks=hooks))
    wait_until(lambda: len(dead) == 1, what="dead letter hook")
    stats = r.stop()
    assert failures == [(1, "attempt 1 failed"), (2, "attempt 2 failed"), (3, "attempt 3 failed")]
    message, exc = dead[0]
    assert (message.id, message.attempts, message.max_attempts) == (message_id, 3, 3)
    assert isinstance(exc, ValueError)
    (letter,) = ok(rq.get_dead_letters())
    assert letter["id"] == message_id
    assert letter["payload"] == {"n": 1}
    assert letter["attempts"] == 3
    assert letter["last_error"] == "ValueError: attempt 3 failed"
    assert (stats.started, stats.failed, stats.dead_lettered, stats.completed) == (3, 3, 1, 0)
    assert status_rows(rq) == [(message_id, "dead", 3)]


def test_reject_dead_letters_at_once(rq: Queue, running: Callable[[Worker], Running]) -> None:
    """A handler raising Reject sends its message to the dead-letter queue on the first
    attempt, with the exception's line as last_error; on_dead_letter is called."""
    message_id = ok(rq.enqueue({"to": None}, max_attempts=5))
    dead: list[tuple[Message, BaseException]] = []

    def handler(message: Message) -> None:
        raise Reject("no recipient")

    r = running(
        make_worker(rq, handler, hooks=WorkerHooks(on_dead_letter=lambda m, e: dead.append((m, e))))
    )
    wait_until(lambda: len(dead) == 1, what="dead letter hook")
    stats = r.stop()
    (letter,) = ok(rq.get_dead_letters())
    assert (letter["id"], letter["attempts"], letter["last_error"]) == (
        message_id,
        1,
        "Reject: no recipient",
    )
    assert (stats.failed, stats.dead_lettered) == (1, 1)
    assert isinstance(dead[0][1], Reject)


def test_retry_delay_decides_when_the_next_attempt_comes(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """retry_delay(message, exc) gives the seconds before the next attempt; a retry_delay
    that raises falls back to the queue's policy (immediate here)."""
    slow_id, fast_id = ok(rq.enqueue_batch(["slow", "fast"]))
    asked: list[tuple[int, str]] = []

    def retry_delay(message: Message, exc: BaseException) -> float:
        asked.append((message.id, str(exc)))
        if message.payload == "fast":
            raise RuntimeError("bug in retry_delay")
        return 3600.0

    attempts: dict[str, int] = {}

    def handler(message: Message) -> None:
        attempts[message.payload] = message.attempts
        if message.payload == "slow" or message.attempts == 1:
            raise ValueError(message.payload)

    r = running(make_worker(rq, handler, retry_delay=retry_delay))
    wait_until(lambda: attempts.get("fast") == 2, what="the fast retry")
    r.stop()
    assert attempts == {"slow": 1, "fast": 2}
    slow = ok(rq.get_message(slow_id))
    assert slow["status"] == "delayed"
    assert slow["visible_at"].timestamp() > time.time() + 3500
    assert (slow_id, "slow") in asked and (fast_id, "fast") in asked
    assert ok(rq.get_message(fast_id)) is None  # completed on its second attempt


def test_results_keeps_return_values(
    make_queue: MakeQueue, running: Callable[[Worker], Running]
) -> None:
    """results=True keeps each handler's return value with its completed message (None
    is not stored); a value that is not JSON fails the message, which is retried."""
    queue = make_queue(table_name="jobs", clock=None, retention=3600)
    ids = ok(queue.enqueue_batch(["upper", "none", "tuple"]))
    calls: list[tuple[str, int]] = []

    def handler(message: Message) -> Any:
        calls.append((message.payload, message.attempts))
        if message.payload == "upper":
            return {"value": "UPPER"}
        if message.payload == "tuple" and message.attempts == 1:
            return (1, 2)
        return None

    r = running(make_worker(queue, handler, results=True))
    wait_until(lambda: not status_rows(queue), what="all three completed")
    stats = r.stop()
    results = {d["id"]: d["result"] for d in ok(queue.get_completed())}
    assert results == {ids[0]: {"value": "UPPER"}, ids[1]: None, ids[2]: None}
    assert ("tuple", 2) in calls
    assert (stats.completed, stats.failed) == (3, 1)


class _AsyncCall:
    async def __call__(self, message: Message) -> None: ...


async def _async_handler(message: Message) -> None: ...


def _generator_handler(message: Message) -> Iterator[int]:
    yield 1


def test_handlers_whose_body_would_never_run_are_refused(rq: Queue) -> None:
    """An async function (or object) given to Worker, a generator function given to any
    worker: calling them would not run them, so every message would be "completed"
    without its work. Refused when the worker is made, saying what to do."""
    for handler in (_async_handler, _AsyncCall()):
        with pytest.raises(ValueError, match=r"async function.*use AsyncWorker"):
            make_worker(rq, handler)
    with pytest.raises(ValueError, match="generator function"):
        make_worker(rq, _generator_handler)


def test_a_handler_that_returns_a_coroutine_fails_its_message(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """``lambda m: handle(m)`` around an async handle: the coroutine is never run by a
    Worker, so the message fails (and is not completed unseen); the coroutine is closed,
    so Python does not warn of it never being awaited."""
    ran: list[int] = []

    async def handle(message: Message) -> None:
        ran.append(message.id)

    message_id = ok(rq.enqueue("job", max_attempts=1))
    failures: list[BaseException] = []
    hooks = WorkerHooks(on_failure=lambda m, exc: failures.append(exc))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a coroutine left unawaited would warn
        r = running(make_worker(rq, lambda m: handle(m), hooks=hooks))  # noqa: PLW0108
        wait_until(lambda: ok(rq.get_dead_letters()), what="the message dead-lettered")
        stats = r.stop()
        gc.collect()
    assert ran == []
    assert (stats.completed, stats.failed, stats.dead_lettered) == (0, 1, 1)
    assert "returned a coroutine" in str(failures[0])
    dead = ok(rq.get_dead_letters())
    assert [d["id"] for d in dead] == [message_id]
    assert "use AsyncWorker" in dead[0]["last_error"]


def test_results_need_a_queue_that_keeps_history(rq: Queue) -> None:
    with pytest.raises(ValueError, match="retention"):
        make_worker(rq, lambda m: None, results=True)
    with pytest.raises(ValueError, match="retry_delay"):
        make_worker(rq, lambda m: None, retry_delay=5)


def test_failing_hook_is_not_fatal(rq: Queue, running: Callable[[Worker], Running]) -> None:
    """An exception in a hook is logged; the message is still completed."""

    def broken(*_args: Any) -> None:
        raise RuntimeError("hook bug")

    done = threading.Event()
    hooks = WorkerHooks(on_start=broken, on_success=lambda m, v: (done.set(), broken())[1])
    ok(rq.enqueue("job"))
    r = running(make_worker(rq, lambda m: None, hooks=hooks))
    assert done.wait(5)
    stats = r.stop()
    assert stats.completed == 1
    assert status_rows(rq) == []


# -- whatever a handler raises -------------------------------------------------------------


class Unprintable(Exception):
    """An exception whose message cannot be read."""

    def __str__(self) -> str:
        raise RuntimeError("no message for you")


class NotAnException(BaseException):
    """A BaseException of the application's own (not an Exception)."""


HANDLER_ESCAPES: list[BaseException] = [
    SystemExit(3),
    KeyboardInterrupt(),
    NotAnException("custom"),
    GeneratorExit(),
    Unprintable(),
]


@pytest.mark.parametrize("raised", HANDLER_ESCAPES, ids=lambda e: type(e).__name__)
def test_whatever_a_handler_raises_fails_its_message_and_the_worker_goes_on(
    rq: Queue,
    running: Callable[[Worker], Running],
    caplog: pytest.LogCaptureFixture,
    raised: BaseException,
) -> None:
    """SystemExit, KeyboardInterrupt, any BaseException, or an exception whose str()
    raises: the message is failed (retried, then dead-lettered), an ERROR says so, and the
    same single runner goes on with the next messages."""
    caplog.set_level(logging.INFO, logger="sqqueue")
    boom = ok(rq.enqueue("boom", max_attempts=2))
    after = ok(rq.enqueue("after"))
    seen: list[tuple[Any, int]] = []

    def handler(message: Message) -> None:
        seen.append((message.payload, message.attempts))
        if message.payload == "boom":
            raise raised

    r = running(make_worker(rq, handler))
    wait_until(
        lambda: status_rows(rq) == [(boom, "dead", 2)], timeout=15, what="both tries, then DLQ"
    )
    stats = r.stop()
    assert seen == [("boom", 1), ("after", 1), ("boom", 2)]
    (letter,) = ok(rq.get_dead_letters())
    assert letter["last_error"].startswith(type(raised).__name__), letter["last_error"]
    assert (stats.started, stats.completed, stats.failed, stats.dead_lettered) == (3, 1, 2, 1)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert sum(f"message {boom}" in e and type(raised).__name__ in e for e in errors) == 2, errors
    assert after not in [s[0] for s in status_rows(rq)]


def test_handler_escape_is_recorded_as_what_happened_not_as_a_timeout(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """With task_timeout, a handler that raises SystemExit at once has that recorded (the
    timeout never fires for work that already ended)."""
    boom = ok(rq.enqueue("boom", max_attempts=1))

    def handler(message: Message) -> None:
        raise SystemExit("handler gave up")

    r = running(make_worker(rq, handler, task_timeout=3, heartbeat=0.05))
    wait_until(lambda: bool(ok(rq.get_dead_letters())), timeout=15, what="dead letter")
    stats = r.stop()
    (letter,) = ok(rq.get_dead_letters())
    assert (letter["id"], letter["last_error"]) == (boom, "SystemExit: handler gave up")
    assert (stats.timed_out, stats.failed, stats.dead_lettered) == (0, 1, 1)


class BrokenHooks(WorkerHooks):
    """Hooks whose dispatcher itself raises SystemExit on its first call (a bug in the
    worker's own steps, outside the handler: a hook's own failure is caught inside)."""

    def __init__(self) -> None:
        super().__init__(on_start=lambda message: None)  # (a hook, so that call is called)
        self.calls = 0

    def call(self, name: str, *args: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise SystemExit("worker bug")


def test_runner_that_fails_outside_the_handler_is_replaced(
    rq: Queue, running: Callable[[Worker], Running], caplog: pytest.LogCaptureFixture
) -> None:
    """A runner whose own steps raise: an ERROR with the traceback, its message failed
    (not left to a heartbeat that extends it forever), and a new runner takes the slot."""
    caplog.set_level(logging.ERROR, logger="sqqueue")
    first = ok(rq.enqueue("first"))
    second = ok(rq.enqueue("second"))
    handled: list[tuple[int, int]] = []
    w = make_worker(rq, lambda m: handled.append((m.id, m.attempts)), hooks=BrokenHooks())
    r = running(w)
    wait_until(lambda: not status_rows(rq), timeout=15, what="both completed")
    stats = r.stop()
    assert sorted(handled) == [(first, 2), (second, 1)]
    assert (stats.failed, stats.completed) == (1, 2)
    failed = [r for r in caplog.records if "runner failed unexpectedly" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None


# -- concurrency ----------------------------------------------------------------------------


def test_concurrency_runs_n_handlers_at_once(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """concurrency=3: three handlers meet at a barrier, which needs all three running."""
    barrier = threading.Barrier(3, timeout=30)
    lock = threading.Lock()
    active, peak, threads = [0], [0], set()

    def handler(message: Message) -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            threads.add(threading.current_thread().name)
        barrier.wait()  # BrokenBarrierError (a failure) unless 3 handlers run together
        with lock:
            active[0] -= 1

    ok(rq.enqueue_batch(["a", "b", "c"]))
    r = running(make_worker(rq, handler, concurrency=3))
    wait_until(lambda: not status_rows(rq), what="all three completed")
    stats = r.stop()
    assert (stats.completed, stats.failed) == (3, 0)
    assert peak[0] == 3
    assert len(threads) == 3


def test_concurrency_one_runs_one_handler_at_a_time(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """concurrency=1 (the default) never overlaps handlers, and keeps FIFO order."""
    lock = threading.Lock()
    active, peak, order = [0], [0], []

    def handler(message: Message) -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        order.append(message.payload)
        time.sleep(0.02)
        with lock:
            active[0] -= 1

    ok(rq.enqueue_batch(list(range(5))))
    r = running(make_worker(rq, handler))
    wait_until(lambda: not status_rows(rq), what="all five completed")
    stats = r.stop()
    assert stats.completed == 5
    assert peak[0] == 1
    assert order == [0, 1, 2, 3, 4]


# -- heartbeat ------------------------------------------------------------------------------


def lease_expiry(queue: Queue, message_id: int) -> datetime:
    """When the lease on a message being processed runs out, as stored."""
    (entry,) = [e for e in ok(queue.list_messages("processing")) if e["id"] == message_id]
    expiry = entry["lease_expires_at"]
    assert isinstance(expiry, datetime)
    return expiry


def test_heartbeat_keeps_slow_handlers_message(
    make_queue: MakeQueue, clock: FakeClock, running: Callable[[Worker], Running]
) -> None:
    """While its handler runs, the message's lease is extended again and again, so no other
    consumer gets it: on the queue's (fake) clock the handler outlives its 30 s lease more
    than three times over, and each time the heartbeat has moved the lease on."""
    queue = make_queue(table_name="jobs")
    spy = make_queue(table_name="jobs")
    message_id = ok(queue.enqueue("slow"))
    started, release = threading.Event(), threading.Event()

    def handler(message: Message) -> None:
        started.set()
        release.wait(60)

    r = running(make_worker(queue, handler, visibility_timeout=30, heartbeat=0.05))
    try:
        assert started.wait(15)
        for _ in range(5):
            before = lease_expiry(queue, message_id)
            clock.advance(20)  # most of the lease: a missed heartbeat would lose it next time
            wait_until(
                lambda b=before: lease_expiry(queue, message_id) >= b + timedelta(seconds=20),
                what="the heartbeat to extend the lease",
            )
            assert ok(spy.dequeue()) is None, "another consumer got the message"
    finally:
        release.set()
    wait_until(lambda: not status_rows(queue), what="completion")
    stats = r.stop()
    assert (stats.completed, stats.failed) == (1, 0)
    assert ok(queue.get_dead_letters()) == []


def test_heartbeat_extends_the_running_leases_in_one_call(
    make_queue: MakeQueue,
    clock: FakeClock,
    running: Callable[[Worker], Running],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A heartbeat round extends the leases of all the handlers due in one extend_batch
    call, never one extend per message; the leases move on."""
    queue = make_queue(table_name="jobs")
    ids = ok(queue.enqueue_batch(["a", "b", "c"]))
    calls: list[list[int]] = []
    extend_batch = queue.extend_batch

    def spy(messages: list[Message], visibility_timeout: float | None = None) -> Any:
        calls.append([m.id for m in messages])
        return extend_batch(messages, visibility_timeout)

    monkeypatch.setattr(queue, "extend_batch", spy)
    monkeypatch.setattr(queue, "extend", lambda *a: pytest.fail("extend called per message"))
    started, release = threading.Semaphore(0), threading.Event()

    def handler(message: Message) -> None:
        started.release()
        release.wait(60)

    r = running(make_worker(queue, handler, concurrency=3, visibility_timeout=30, heartbeat=0.05))
    try:
        for _ in ids:
            assert started.acquire(timeout=15)
        before = {i: lease_expiry(queue, i) for i in ids}
        clock.advance(20)
        # Rounds soon fall in step: each extends every running lease at once.
        wait_until(lambda: ids in map(sorted, calls), what="a round extending all three")
        wait_until(
            lambda: all(lease_expiry(queue, i) >= before[i] + timedelta(seconds=20) for i in ids),
            what="the heartbeat to extend the leases",
        )
    finally:
        release.set()
    wait_until(lambda: not status_rows(queue), what="completion")
    stats = r.stop()
    assert (stats.completed, stats.failed) == (3, 0)
    assert all(len(set(call)) == len(call) for call in calls)


def test_heartbeat_warns_of_each_lost_lease_and_extends_the_others(
    make_queue: MakeQueue,
    clock: FakeClock,
    running: Callable[[Worker], Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lease lost to another consumer is logged at WARNING, message by message, while the
    running handlers' other leases are still extended by the same heartbeat."""
    queue = make_queue(table_name="jobs")
    other = make_queue(table_name="jobs")
    keep, lose = ok(queue.enqueue_batch(["keep", "lose"]))
    started, release = threading.Semaphore(0), threading.Event()
    taken: list[Message] = []

    def handler(message: Message) -> None:
        if message.payload == "lose":  # handed back, and another consumer takes it
            ok(queue.requeue(message))
            taken.append(ok(other.dequeue(visibility_timeout=300)))
        started.release()
        release.wait(60)

    caplog.set_level(logging.WARNING, logger="sqqueue.worker")
    r = running(make_worker(queue, handler, concurrency=2, visibility_timeout=30, heartbeat=0.05))
    try:
        for _ in range(2):
            assert started.acquire(timeout=15)
        assert [m.id for m in taken] == [lose]
        before = lease_expiry(queue, keep)
        clock.advance(20)
        wait_until(
            lambda: lease_expiry(queue, keep) >= before + timedelta(seconds=20),
            what="the heartbeat to extend the live lease",
        )
        wait_until(
            lambda: any(f"lease of message {lose}" in r.getMessage() for r in caplog.records),
            what="a warning about the lost lease",
        )
    finally:
        release.set()
    warned = {rec.getMessage() for rec in caplog.records if "could not extend" in rec.getMessage()}
    assert warned and all(f"message {lose}:" in text for text in warned)
    assert lease_expiry(other, lose) == taken[0].lease_expires_at  # left to its holder
    r.stop()


def test_heartbeat_default_is_a_third_of_the_lease(rq: Queue) -> None:
    """Without heartbeat=, leases are extended every lease/3, short ones too; a lease too
    short for that (a heartbeat is at least 0.01 s) is refused as such, and a heartbeat
    >= lease is refused."""
    assert make_worker(rq, print, visibility_timeout=3).heartbeat == pytest.approx(1.0)
    assert make_worker(rq, print, visibility_timeout=0.06).heartbeat == pytest.approx(0.02)
    assert make_worker(rq, print, visibility_timeout=0.05).heartbeat == pytest.approx(0.05 / 3)
    assert make_worker(rq, print, visibility_timeout=0.03).heartbeat == pytest.approx(0.01)
    with pytest.raises(ValueError, match=re.escape("visibility_timeout must be at least 0.03")):
        make_worker(rq, print, visibility_timeout=0.029)
    with pytest.raises(ValueError, match="heartbeat"):
        make_worker(rq, print, visibility_timeout=1, heartbeat=2)


# -- task timeout ---------------------------------------------------------------------------


def _hang_first_attempt(
    release: threading.Event, log: list[tuple[Any, int, str | None]]
) -> Callable[[Message], None]:
    def handler(message: Message) -> None:
        log.append((message.payload, message.attempts, message.last_error))
        if message.payload == "hang" and message.attempts == 1:
            release.wait(20)

    return handler


# -- a long life: what a worker keeps does not grow ---------------------------------------


def test_worker_keeps_only_the_latest_durations(
    rq: Queue, running: Callable[[Worker], Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``processing_seconds`` holds the latest ``DURATIONS_KEPT`` durations, not one per
    message for the life of the worker."""
    monkeypatch.setattr(importlib.import_module("sqqueue.worker"), "DURATIONS_KEPT", 3)
    ok(rq.enqueue_batch(list(range(8))))
    r = running(make_worker(rq, lambda m: None))
    wait_until(lambda: r.worker.stats.completed == 8, what="eight completions")
    stats = r.stop()
    assert len(stats.processing_seconds) == 3
    assert all(0 <= s < 60 for s in stats.processing_seconds)


def test_runners_replaced_after_timeouts_are_let_go_once_they_end(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """Each handler that times out gets a replacement runner (while at most concurrency of
    them still run); once the abandoned ones end, the worker holds no reference to them,
    so timeouts now and then pile up nothing."""
    first, later = threading.Event(), threading.Event()
    abandoned: list[weakref.ref[threading.Thread]] = []

    def handler(message: Message) -> None:
        if message.payload == "hang":
            abandoned.append(weakref.ref(threading.current_thread()))
        (first if message.payload == "hang" else later).wait(20)

    ok(rq.enqueue_batch([Item("hang", max_attempts=1)] * 3))
    w = make_worker(rq, handler, concurrency=3, task_timeout=0.2, heartbeat=0.05, grace_period=1)
    r = running(w)
    try:
        wait_until(lambda: w.stats.timed_out == 3, what="three timeouts")
        assert len(abandoned) == 3
        first.set()
        wait_until(lambda: not any((t := ref()) and t.is_alive() for ref in abandoned))
        ok(rq.enqueue("hang later", max_attempts=1))
        wait_until(lambda: w.stats.timed_out == 4, what="a fourth timeout")

        def all_let_go() -> bool:
            gc.collect()
            return [ref() for ref in abandoned] == [None, None, None]

        # (The timeout is counted before its replacement runner starts: wait for both.)
        wait_until(all_let_go, what="the ended runners to be let go once a new one starts")
    finally:
        first.set()
        later.set()
    r.stop()


@pytest.mark.slow
def test_failing_a_timed_out_message_does_not_hold_up_the_heartbeat(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """A timed-out message is failed apart from the heartbeat: while its retry_delay
    (your code) takes its time, the leases of the other running messages are still
    extended, so none of them goes to another consumer."""
    release, in_delay, b_running = threading.Event(), threading.Event(), threading.Event()

    def handler(message: Message) -> None:
        if message.payload == "b":
            b_running.set()
        release.wait(30)

    def retry_delay(message: Message, exc: BaseException) -> float | None:
        in_delay.set()
        release.wait(30)
        return None

    ok(rq.enqueue("hang"))
    w = make_worker(
        rq,
        handler,
        concurrency=2,
        task_timeout=1,
        heartbeat=0.05,
        visibility_timeout=30,
        retry_delay=retry_delay,
    )
    r = running(w)
    try:
        wait_until(in_delay.is_set, what="the timed-out message being failed")
        b = ok(rq.enqueue("b"))
        wait_until(b_running.is_set, what="b's handler")

        def lease_of_b() -> Any:
            return ok(rq.get_message(b))["lease_expires_at"]

        first = lease_of_b()
        wait_until(lambda: lease_of_b() > first, what="b's lease extended meanwhile")
    finally:
        release.set()
    stats = r.stop()
    assert (stats.timed_out, stats.failed) == (1, 1)


def _spawn_refused(
    w: Worker, monkeypatch: pytest.MonkeyPatch, refuse: Callable[[int], bool]
) -> list[int]:
    """Make the worker's ``n``-th runner thread fail to start (``RuntimeError: can't start
    new thread``, as in a process that has too many) when ``refuse(n)``; the calls made."""
    real_spawn = w._spawn
    calls: list[int] = []

    def spawn() -> None:
        calls.append(len(calls) + 1)
        if refuse(len(calls)):
            raise RuntimeError("can't start new thread")
        real_spawn()

    monkeypatch.setattr(w, "_spawn", spawn)
    return calls


def test_a_heartbeat_round_that_fails_is_said_and_the_heartbeat_goes_on(
    rq: Queue,
    running: Callable[[Worker], Running],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A heartbeat round that raises (the replacement of a timed-out runner could not be
    started) is logged at ERROR with its cause, and the heartbeat tries again: the
    replacement starts on a later round, and serves."""
    release = threading.Event()

    def handler(message: Message) -> None:
        if message.payload == "hang":
            release.wait(30)

    ok(rq.enqueue("hang", max_attempts=1))
    w = make_worker(rq, handler, task_timeout=0.2, heartbeat=0.05)
    calls = _spawn_refused(w, monkeypatch, lambda n: n == 2)  # (1: the first runner)
    r = running(w)
    try:
        wait_until(lambda: len(calls) >= 3, what="the replacement started on a later round")
        ok(rq.enqueue("after"))
        wait_until(lambda: w.stats.completed == 1, what="the replacement serving")
    finally:
        release.set()
    stats = r.stop()
    assert (stats.timed_out, stats.failed, stats.completed) == (1, 1, 1)
    said = [rec for rec in caplog.records if "heartbeat round failed" in rec.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    assert "can't start new thread" in said[0].getMessage()


def test_a_heartbeat_that_keeps_failing_stops_the_worker(
    rq: Queue,
    running: Callable[[Worker], Running],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the heartbeat's rounds have failed for as long as a lease, leases may no
    longer be kept: the worker stops, and says why at ERROR."""
    release = threading.Event()
    ok(rq.enqueue("hang", max_attempts=1))
    w = make_worker(
        rq,
        lambda m: release.wait(30),
        task_timeout=0.2,
        heartbeat=0.05,
        visibility_timeout=1,
        grace_period=30,
    )
    _spawn_refused(w, monkeypatch, lambda n: n > 1)
    r = running(w)
    try:
        r.join(timeout=30)
    finally:
        release.set()
    said = [rec for rec in caplog.records if "the worker stops" in rec.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    assert "heartbeat" in said[0].getMessage()


def test_a_timed_out_message_is_failed_though_no_thread_can_be_started_for_it(
    rq: Queue,
    running: Callable[[Worker], Running],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timed-out message is failed on a thread of its own; when none can be started,
    the heartbeat fails it itself (said at ERROR), and goes on."""
    release = threading.Event()
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name.endswith("-timeout"):
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)

    def handler(message: Message) -> None:
        if message.payload == "hang":
            release.wait(30)

    ok(rq.enqueue("hang", max_attempts=1))
    w = make_worker(rq, handler, task_timeout=0.2, heartbeat=0.05)
    r = running(w)
    try:
        wait_until(lambda: w.stats.failed == 1, what="the timed-out message failed")
        ok(rq.enqueue("after"))
        wait_until(lambda: w.stats.completed == 1, what="its replacement serving")
    finally:
        release.set()
    stats = r.stop()
    assert (stats.timed_out, stats.dead_lettered) == (1, 1)
    said = [r for r in caplog.records if "could not start a thread to fail" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR


def test_handlers_that_ignore_task_timeout_do_not_pile_up_threads(
    rq: Queue, running: Callable[[Worker], Running], caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that never returns keeps its thread (Python cannot kill one). With more
    than ``concurrency`` of them still running, a timed-out runner is not replaced (said
    once, at ERROR) until one of them returns: threads do not pile up without end."""
    release = threading.Event()

    def handler(message: Message) -> None:
        release.wait(30)

    ok(rq.enqueue_batch([Item("hang", max_attempts=1)] * 8))
    w = make_worker(rq, handler, concurrency=2, task_timeout=0.2, heartbeat=0.05, grace_period=1)
    r = running(w)

    def capped() -> bool:
        return any("ignores task_timeout" in rec.getMessage() for rec in caplog.records)

    def runners() -> int:
        prefix = f"{w.name}-"
        return sum(
            t.name.startswith(prefix) and t.name[len(prefix) :].isdigit()
            for t in threading.enumerate()
        )

    try:
        wait_until(lambda: w.stats.timed_out == 4 and capped(), what="the cap reached")
        # Two runners replaced, then those two stuck as well: nothing more is started.
        assert (w.stats.started, runners()) == (4, 4)
    finally:
        release.set()
    # Once they return, the slots are filled again and the other messages served.
    wait_until(lambda: w.stats.completed == 4, what="the rest served")
    stats = r.stop()
    assert (stats.started, stats.timed_out) == (8, 4)
    said = [rec for rec in caplog.records if "ignores task_timeout" in rec.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR


def test_a_message_cut_off_while_on_start_runs_is_not_handled(
    rq: Queue, running: Callable[[Worker], Running], caplog: pytest.LogCaptureFixture
) -> None:
    """An immediate stop while the on_start hook of a message runs gives the message
    back; when the hook returns, its handler is not called (another consumer may hold
    the message by then)."""
    message_id = ok(rq.enqueue("x"))
    in_hook, go_on = threading.Event(), threading.Event()
    handled: list[Message] = []

    def on_start(message: Message) -> None:
        in_hook.set()
        go_on.wait(30)

    w = make_worker(rq, handled.append, hooks=WorkerHooks(on_start=on_start))
    r = running(w)
    caplog.set_level(logging.INFO, logger="sqqueue.worker")
    try:
        wait_until(in_hook.is_set, what="the on_start hook")
        stats = r.stop(immediate=True)
        assert stats.requeued == 1
    finally:
        go_on.set()
    ended = f"abandoned message {message_id} ended"
    wait_until(lambda: ended in caplog.text, what="the runner past the hook")
    assert handled == []


def test_an_immediate_stop_waits_for_a_blocked_on_success_hook_only_so_long(
    rq: Queue, running: Callable[[Worker], Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hooks of grouped completions run on the thread that commits them: after an
    immediate stop (a second SIGTERM), run() waits for it at most SETTLE_WAIT, not for
    as long as a hook of yours blocks."""
    monkeypatch.setattr(importlib.import_module("sqqueue.worker"), "SETTLE_WAIT", 0.2)
    hooked, release = threading.Event(), threading.Event()

    def on_success(message: Message, value: Any) -> None:
        hooked.set()
        release.wait(60)

    ok(rq.enqueue("x"))
    r = running(make_worker(rq, lambda m: None, hooks=WorkerHooks(on_success=on_success)))
    try:
        wait_until(hooked.is_set, what="the on_success hook")
        r.worker.stop()
        r.stop(immediate=True)  # returns (within 10 s) while the hook still blocks
        assert not release.is_set()
    finally:
        release.set()


def test_with_a_heartbeat_over_half_the_lease_prefetched_messages_go_back_sooner(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """With heartbeat > lease / 2, a prefetched message started a heartbeat after its
    claim would get its first extension after its lease ran out (another consumer could
    take it while it runs): it is given back long before (attempt not counted)."""
    done: list[str] = []

    def handler(message: Message) -> None:
        if message.payload == "first":
            time.sleep(0.5)  # (long past the 0.05 s a prefetched message may wait here)
        done.append(message.payload)

    ok(rq.enqueue("warm-up"))  # (sets the pace: the next claim takes both messages)
    r = running(make_worker(rq, handler, visibility_timeout=1.0, heartbeat=0.9))
    wait_until(lambda: done == ["warm-up"], what="the warm-up")
    ok(rq.enqueue_batch(["first", "second"]))
    wait_until(lambda: len(done) == 3, what="both messages")
    stats = r.stop()
    assert stats.released >= 1
    assert sorted(done) == ["first", "second", "warm-up"]


def test_task_timeout_fails_hung_handler_and_worker_goes_on(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """A handler over task_timeout has its message failed (TimeoutError) and retried, and
    a replacement thread keeps processing other messages while the hung one is stuck."""
    release = threading.Event()
    log: list[tuple[Any, int, str | None]] = []
    failures: list[BaseException] = []
    hang_id = ok(rq.enqueue("hang"))
    ok(rq.enqueue("after"))
    # task_timeout is what tells a hung handler from a quick one: the quick ones here
    # must stay below it even when their thread waits for a busy CPU, so it is not tiny.
    w = make_worker(
        rq,
        _hang_first_attempt(release, log),
        task_timeout=2,
        heartbeat=0.05,
        visibility_timeout=30,
        hooks=WorkerHooks(on_failure=lambda m, e: failures.append(e)),
    )
    r = running(w)
    try:
        wait_until(lambda: len(log) == 3 and not status_rows(rq), what="timeout, retry and other")
        assert not release.is_set()
        payloads = [(p, a) for p, a, _ in log]
        assert payloads[0] == ("hang", 1)
        assert sorted(payloads[1:]) == [("after", 1), ("hang", 2)]
        retry_error = next(e for p, a, e in log if p == "hang" and a == 2)
        assert retry_error is not None
        assert retry_error.startswith("TimeoutError"), retry_error
        assert len(failures) == 1
        assert isinstance(failures[0], TimeoutError)
    finally:
        release.set()
    # The abandoned handler returns now: its outcome must be ignored (stop() waits for its
    # thread, so whatever it would do is done before the stats are read).
    stats = r.stop()
    assert (stats.timed_out, stats.failed, stats.completed) == (1, 1, 2)
    assert status_rows(rq) == []
    assert ok(rq.get_dead_letters()) == []
    assert hang_id not in [r["id"] for r in message_statuses(rq)]


def test_task_timeout_dead_letters_on_last_attempt(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """A timed-out handler on its last attempt sends the message to the dead-letter queue."""
    release = threading.Event()
    log: list[tuple[Any, int, str | None]] = []
    hang_id = ok(rq.enqueue("hang", max_attempts=1))
    r = running(
        make_worker(
            rq, _hang_first_attempt(release, log), task_timeout=0.2, heartbeat=0.05, grace_period=1
        )
    )
    try:
        wait_until(lambda: bool(ok(rq.get_dead_letters())), what="dead letter")
    finally:
        release.set()
    stats = r.stop()
    (letter,) = ok(rq.get_dead_letters())
    assert letter["id"] == hang_id
    assert letter["last_error"].startswith("TimeoutError")
    assert (stats.timed_out, stats.dead_lettered) == (1, 1)


def test_task_timeout_is_enforced_with_default_heartbeat(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """task_timeout=0.5 with the default 300 s lease fires soon after 0.5 s, not at the
    next lease heartbeat, 100 s away (the bound below is far from both)."""
    release = threading.Event()
    log: list[tuple[Any, int, str | None]] = []
    ok(rq.enqueue("hang"))
    w = make_worker(rq, _hang_first_attempt(release, log), task_timeout=0.5, grace_period=0.5)
    r = running(w)
    try:
        wait_until(lambda: bool(log), what="handler start")
        wait_until(lambda: w.stats.timed_out == 1, timeout=30, what="the task timeout")
    finally:
        release.set()
    r.stop()


def test_stats_are_final_when_run_returns(rq: Queue, running: Callable[[Worker], Running]) -> None:
    """A timeout is handled on the heartbeat's thread: run() waits for it, so the stats it
    returns count the dead letter even when the failure hook is slow."""
    release = threading.Event()
    in_hook = threading.Event()
    log: list[tuple[Any, int, str | None]] = []

    def slow_hook(message: Message, exc: BaseException) -> None:
        in_hook.set()
        time.sleep(0.5)  # the dead letter is counted after this hook

    ok(rq.enqueue("hang", max_attempts=1))
    hooks = WorkerHooks(on_failure=slow_hook)
    w = make_worker(
        rq, _hang_first_attempt(release, log), task_timeout=0.2, heartbeat=0.05, hooks=hooks
    )
    r = running(w)
    try:
        assert in_hook.wait(15)
    finally:
        release.set()
    stats = r.stop()
    assert (stats.timed_out, stats.failed, stats.dead_lettered) == (1, 1, 1)


# -- decorator ------------------------------------------------------------------------------


def test_worker_decorator(rq: Queue, running: Callable[[Worker], Running]) -> None:
    """@worker(queue, ...) makes a Worker that can still be called like its handler."""
    handled: list[Any] = []

    @worker(rq, concurrency=2, handle_signals=False, poll_wait=0.5)
    def handle(message: Message) -> Any:
        handled.append(message.payload)
        return message.payload * 2

    assert isinstance(handle, Worker)
    assert handle.concurrency == 2
    ok(rq.enqueue(21))
    peeked = ok(rq.peek())
    assert handle(peeked) == 42  # a direct call runs the handler, nothing else
    assert status_rows(rq)[0][1] == "ready"
    handled.clear()
    ok(rq.enqueue(5))
    r = running(handle)
    wait_until(lambda: not status_rows(rq), what="both completed")
    stats = r.stop()
    assert sorted(handled) == [5, 21]
    assert stats.completed == 2


def test_worker_rejects_bad_settings(rq: Queue) -> None:
    """Bad options raise ValueError when the worker is built."""
    for options in (
        {"concurrency": 0},
        {"concurrency": MAX_CONCURRENCY + 1},  # a typo's thousands of threads: refused
        {"task_timeout": -1},
        {"grace_period": float("nan")},
    ):
        with pytest.raises(ValueError):
            make_worker(rq, print, **options)
    with pytest.raises(ValueError):
        Worker(rq, "not callable")  # type: ignore[arg-type]


# -- stop() ---------------------------------------------------------------------------------


def test_stop_is_graceful(rq: Queue, running: Callable[[Worker], Running]) -> None:
    """stop() lets the running handler finish, takes nothing new, returns within grace."""
    slow_id = ok(rq.enqueue("slow"))
    next_id = ok(rq.enqueue("next"))
    started, finished = threading.Event(), threading.Event()

    def handler(message: Message) -> None:
        started.set()
        time.sleep(0.5)
        finished.set()

    r = running(make_worker(rq, handler, grace_period=30))
    assert started.wait(15)
    begin = time.monotonic()
    stats = r.stop(timeout=30)
    elapsed = time.monotonic() - begin
    assert finished.is_set()
    assert elapsed < 15, f"stop() waited {elapsed:.1f} s, as if for the whole grace period"
    assert (stats.completed, stats.started) == (1, 1)
    assert status_rows(rq) == [(next_id, "ready", 0)]
    assert slow_id not in [s[0] for s in status_rows(rq)]


def test_stop_gives_back_prefetched_messages_at_once(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """A graceful stop gives back the messages taken but not started as it begins, not
    once the running handlers have ended: other consumers can serve them meanwhile."""
    started, release = threading.Event(), threading.Event()

    def handler(message: Message) -> None:
        if message.payload == "slow":
            started.set()
            release.wait(30)

    ids = ok(rq.enqueue_batch(["quick"] * 5 + ["slow"] + ["quick"] * 20))
    w = make_worker(rq, handler, visibility_timeout=60, grace_period=30)  # (no stale ones)
    r = running(w)
    try:
        assert started.wait(15)
        wait_until(lambda: w.stats.completed == 5, what="the quick ones before it completed")
        held = len(w._prefetched)  # (the one runner is busy: nothing else takes them)
        assert held > 0, "nothing prefetched behind the slow message"
        w.stop()
        wait_until(lambda: w.stats.released == held, what="the prefetched messages given back")
        assert r.thread.is_alive()  # still waiting for the slow handler
        # Those behind it are ready, their attempts not counted; only it is leased.
        assert status_rows(rq) == [(ids[5], "processing", 1)] + [(i, "ready", 0) for i in ids[6:]]
    finally:
        release.set()
    stats = r.join(timeout=30)
    assert (stats.completed, stats.released) == (6, held)


def test_message_taken_while_stopping_is_released_uncounted(
    rq: Queue, running: Callable[[Worker], Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message leased just as the worker stops is given back unstarted: the handler never
    runs, the message is pending at once and its attempt is not counted."""
    message_id = ok(rq.enqueue("job"))
    handled: list[Message] = []
    w = make_worker(rq, handled.append)
    real_dequeue_batch = rq.dequeue_batch

    def dequeue_then_stop(*args: Any, **kwargs: Any) -> Any:
        result = real_dequeue_batch(*args, **kwargs)
        if result.is_ok() and result.value:
            w.stop()  # the stop request lands between the lease and the handler
        return result

    monkeypatch.setattr(rq, "dequeue_batch", dequeue_then_stop)
    stats = running(w).join(timeout=10)
    assert handled == []
    assert (stats.released, stats.started, stats.completed) == (1, 0, 0)
    assert status_rows(rq) == [(message_id, "ready", 0)]


def test_stop_of_idle_worker_returns_promptly(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """An idle worker waiting for messages (poll_wait=30) stops at once."""
    r = running(make_worker(rq, print, poll_wait=30, concurrency=3))
    time.sleep(0.2)
    begin = time.monotonic()
    stats = r.stop(timeout=30)
    assert time.monotonic() - begin < 10, "stop() waited for the 30 s poll"
    assert stats.started == 0


def test_stop_requeues_handler_still_running_after_grace(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """After grace_period a still-running handler's message goes back to pending at once;
    its late completion is refused."""
    message_id = ok(rq.enqueue("stuck"))
    started, release = threading.Event(), threading.Event()
    handlers: list[threading.Thread] = []

    def handler(message: Message) -> None:
        handlers.append(threading.current_thread())
        started.set()
        release.wait(60)

    r = running(make_worker(rq, handler, grace_period=0.3))
    assert started.wait(15)
    begin = time.monotonic()
    stats = r.stop(timeout=30)
    assert time.monotonic() - begin < 15, "stop() waited for the handler"
    assert status_rows(rq) == [(message_id, "ready", 1)]
    release.set()
    handlers[0].join(15)  # its thread has dealt with the late outcome once it ends
    assert not handlers[0].is_alive()
    assert status_rows(rq) == [(message_id, "ready", 1)]
    assert (stats.started, stats.completed, stats.requeued) == (1, 0, 1)  # counted


def test_a_cut_off_message_that_cannot_be_requeued_is_not_said_returned(
    rq: Queue, running: Callable[[Worker], Running], caplog: pytest.LogCaptureFixture
) -> None:
    """When the requeue of a message cut off at shutdown is refused (its lease ended under
    the handler), the log says it could not be returned, and why."""
    started, release = threading.Event(), threading.Event()

    def handler(message: Message) -> None:
        started.set()
        release.wait(30)

    message_id = ok(rq.enqueue("x"))
    r = running(make_worker(rq, handler, visibility_timeout=30))
    try:
        assert started.wait(15)
        ok(rq.release(message_id))  # its lease ends: the requeue at shutdown is refused
        stats = r.stop(immediate=True)
    finally:
        release.set()
    said = [rec.getMessage() for rec in caplog.records if "at shutdown" in rec.getMessage()]
    assert len(said) == 1
    assert "could not be returned: requeue failed" in said[0]
    assert "returned to the queue" not in said[0]
    assert stats.requeued == 0


def test_a_handler_cut_off_at_shutdown_on_its_last_attempt_is_a_dead_letter(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """Cut off on its last attempt, the message is dead-lettered (as a crash would leave
    it): counted, logged and hooked as such, not as "returned to the queue"."""
    message_id = ok(rq.enqueue("stuck", max_attempts=1))
    started, release = threading.Event(), threading.Event()
    buried: list[tuple[int, str]] = []

    def handler(message: Message) -> None:
        started.set()
        release.wait(60)

    hooks = WorkerHooks(on_dead_letter=lambda m, exc: buried.append((m.id, str(exc))))
    r = running(make_worker(rq, handler, grace_period=0.3, hooks=hooks))
    try:
        assert started.wait(15)
        stats = r.stop(timeout=30)
    finally:
        release.set()
    assert (stats.requeued, stats.dead_lettered) == (0, 1)
    assert buried == [(message_id, "cut off at shutdown")]
    (dead,) = ok(rq.get_dead_letters())
    assert dead["id"] == message_id and "no attempt left" in dead["last_error"]


def test_a_worker_runs_once(rq: Queue, running: Callable[[Worker], Running]) -> None:
    """A second run() would return at once, serving nothing (stop() is for good): it
    raises instead, saying to make a new worker."""
    w = make_worker(rq, print)
    running(w).stop()
    with pytest.raises(RuntimeError, match="has run already; a worker runs once"):
        w.run()


def test_a_worker_whose_queue_is_closed_stops(
    rq: Queue, running: Callable[[Worker], Running], caplog: pytest.LogCaptureFixture
) -> None:
    """Closing the queue under a running worker (another thread, a handler) ends run():
    a closed queue stays closed, and a worker that went on would only log a failure a
    second, forever. It says why, once, at ERROR."""
    r = running(make_worker(rq, print, poll_wait=30, concurrency=2))
    wait_until(lambda: r.worker.stats is not None and r.thread.is_alive(), what="running")
    rq.close()
    r.join(timeout=30)
    said = [rec for rec in caplog.records if "the worker stops" in rec.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    assert "closed" in said[0].getMessage()


def test_a_worker_whose_queue_is_closed_starts_none_of_the_messages_it_holds(
    rq: Queue, running: Callable[[Worker], Running], caplog: pytest.LogCaptureFixture
) -> None:
    """Closed while messages wait prefetched (here by a handler), the queue can acknowledge
    none of them: the worker stops without starting any, and says why, once, at ERROR."""
    closed = threading.Event()
    after_close: list[int] = []

    def handler(message: Message) -> None:
        if closed.is_set():
            after_close.append(message.id)
        elif message.payload == 5:
            rq.close()
            closed.set()

    ok(rq.enqueue_batch(list(range(40))))
    assert not rq.closed
    r = running(make_worker(rq, handler))
    r.join(timeout=30)
    assert closed.is_set() and rq.closed
    assert after_close == []
    said = [rec for rec in caplog.records if "the worker stops" in rec.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    assert "closed" in said[0].getMessage()


def test_stop_immediate_skips_grace(rq: Queue, running: Callable[[Worker], Running]) -> None:
    """stop(immediate=True) does not wait for the handler; its message is pending at once."""
    message_id = ok(rq.enqueue("stuck"))
    started, release = threading.Event(), threading.Event()

    def handler(message: Message) -> None:
        started.set()
        release.wait(60)

    r = running(make_worker(rq, handler, grace_period=30))
    assert started.wait(15)
    begin = time.monotonic()
    try:
        r.stop(timeout=30, immediate=True)
        assert time.monotonic() - begin < 15, "stop(immediate=True) waited for the grace"
        assert status_rows(rq) == [(message_id, "ready", 1)]
    finally:
        release.set()


# -- real worker processes and signals ------------------------------------------------------

WORKER_SCRIPT = """
import logging, sys, time
from sqqueue import PostgresQueue, Worker, connect

url, schema, grace, lease = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(message)s")
if url.startswith("sqlite:"):
    queue = connect(url, "jobs")
else:
    queue = PostgresQueue(url, "jobs", schema=schema)


def handle(message):
    print(f"started {message.id}", flush=True)
    time.sleep(message.payload["sleep"])
    print(f"finished {message.id}", flush=True)


stats = Worker(queue, handle, grace_period=grace, visibility_timeout=lease, poll_wait=0.5).run()
print(f"stopped completed={stats.completed} released={stats.released}", flush=True)
queue.close()
"""


class WorkerProcess(ScriptProcess):
    """A worker in a child process; its output lines are read on a thread."""

    def __init__(self, script: Path, target: QueueTarget, grace: float, lease: float) -> None:
        super().__init__(script, target.url, str(target.schema), str(grace), str(lease))


@pytest.fixture
def spawn_worker(
    tmp_path: Path, queue_target: QueueTarget
) -> Iterator[Callable[..., WorkerProcess]]:
    script = tmp_path / "worker_script.py"
    script.write_text(WORKER_SCRIPT)
    procs: list[WorkerProcess] = []

    def spawn(grace: float = 10.0, lease: float = 300.0) -> WorkerProcess:
        wp = WorkerProcess(script, queue_target, grace, lease)
        procs.append(wp)
        return wp

    yield spawn
    for wp in procs:
        if wp.proc.poll() is None:
            wp.proc.kill()
        wp.proc.wait(10)


@pytest.mark.slow
def test_sigterm_shuts_worker_process_down_gracefully(
    rq: Queue, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """SIGTERM: the in-flight message is finished and completed, the process exits 0 within
    the grace period, and nothing is left 'processing'."""
    slow_id = ok(rq.enqueue({"sleep": 1.0}))
    next_id = ok(rq.enqueue({"sleep": 0}))
    wp = spawn_worker(grace=60.0)
    wp.expect(f"started {slow_id}")
    sent = time.monotonic()
    wp.proc.send_signal(signal.SIGTERM)
    code = wp.proc.wait(45)
    elapsed = time.monotonic() - sent
    lines = wp.drain()
    assert code == 0, lines
    assert elapsed < 30.0, f"{elapsed:.1f} s: the worker waited for its grace period"
    assert f"finished {slow_id}" in lines
    assert "stopped completed=1 released=0" in lines
    assert status_rows(rq) == [(next_id, "ready", 0)]
    assert all(row["status"] != "processing" for row in message_statuses(rq))


def test_an_immediate_stop_waits_for_a_claim_in_flight(tmp_path: Path) -> None:
    """A runner claiming while the worker stops at once (its claim waiting for SQLite's
    write lock, held by another writer for a moment) is waited for, up to SETTLE_WAIT:
    what it claimed is given back before run() returns, not after, when the queue may
    be closed (its messages would then wait for their leases to run out)."""
    import sqlite3

    from sqqueue import SQLiteQueue

    path = str(tmp_path / "q.db")
    queue = SQLiteQueue(path, table_name="jobs", default_visibility_timeout=300)
    ok(queue.enqueue_batch(["a", "b", "c"]))
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")  # another writer, for a moment
    w = make_worker(queue, lambda m: None)
    released: list[int] = []  # as run() returned
    run = threading.Thread(target=lambda: released.append(w.run().released))
    run.start()
    wait_until(lambda: bool(w._in_hand), what="a runner claiming")
    time.sleep(0.2)  # (into its claim, waiting for the lock)
    w.stop(immediate=True)
    done_writing = threading.Timer(0.5, lambda: writer.execute("COMMIT"))
    done_writing.start()
    run.join(30)
    assert not run.is_alive()
    queue.close()  # as soon as run() returned
    done_writing.join()
    writer.close()
    assert released == [1]  # (a first claim, one runner idle: one message)
    other = SQLiteQueue(path, table_name="jobs")
    try:
        assert (ok(other.stats()).ready, ok(other.stats()).processing) == (3, 0)
    finally:
        other.close()


def test_a_message_handed_to_a_runner_is_running_at_once_for_an_immediate_stop(
    rq: Queue,
) -> None:
    """A runner registers the message it takes in the same step (no moment when it holds
    one shutdown does not know of): stopped at once while ``on_start`` runs, the message
    is returned to the queue before run() returns, as any message still running, and its
    handler never runs."""
    ok(rq.enqueue("x"))
    took, go_on = threading.Event(), threading.Event()
    handled: list[Message] = []

    def on_start(message: Message) -> None:
        took.set()
        go_on.wait(30)  # (the runner paused between taking its message and handling it)

    w = make_worker(rq, handled.append, poll_wait=0.5, hooks=WorkerHooks(on_start=on_start))
    stats: list[WorkerStats] = []
    run = threading.Thread(target=lambda: stats.append(w.run()))
    run.start()
    try:
        wait_until(took.is_set, what="the message taken")
        w.stop(immediate=True)
        run.join(30)
        assert not run.is_alive()
        assert status_rows(rq) == [(1, "ready", 1)]  # (back before run() returned)
    finally:
        go_on.set()
    assert (stats[0].started, stats[0].requeued, stats[0].released) == (1, 1, 0)
    wait_until(lambda: not any(t.is_alive() for t in w._threads), what="the runner ended")
    assert handled == []


_SIGNAL_WHILE_LOCKED = """
import os, signal, sys
from sqqueue import SQLiteQueue, Worker

queue = SQLiteQueue(sys.argv[1], table_name="jobs")
worker = Worker(queue, lambda m: None, concurrency=2, poll_wait=1)
real = worker._lock
sent = []


class SignalInside:
    # The worker's lock, sending SIGTERM to this process (whose handler then runs on this
    # thread) the first time run()'s thread holds it to start a runner.
    def __enter__(self):
        real.acquire()
        if not sent and sys._getframe(1).f_code.co_name == "_spawn":  # (run()'s thread)
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return self

    def __exit__(self, *exc):
        real.release()

    def __getattr__(self, name):
        return getattr(real, name)


worker._lock = SignalInside()
stats = worker.run()
print("returned", bool(sent), flush=True)
"""


def test_a_signal_while_run_holds_the_workers_lock_still_stops_it(tmp_path: Path) -> None:
    """The signal handler runs on run()'s thread between any two of its steps, also while
    that thread holds the worker's lock: it only notes the signal (stopping there would
    wait for that lock forever), and run() acts on it and returns."""
    script = tmp_path / "signal_while_locked.py"
    script.write_text(_SIGNAL_WHILE_LOCKED)
    done = run_script(script, str(tmp_path / "q.db"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "returned True", done.stdout + done.stderr


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_second_signal_stops_at_once_and_requeues(
    rq: Queue, spawn_worker: Callable[..., WorkerProcess], second: signal.Signals
) -> None:
    """A second signal during the grace period stops the worker at once; the in-flight
    message is back 'pending' immediately (its 300 s lease is not waited for)."""
    message_id = ok(rq.enqueue({"sleep": 30}))
    wp = spawn_worker(grace=30.0, lease=300.0)
    wp.expect(f"started {message_id}")
    wp.proc.send_signal(signal.SIGTERM)
    wp.expect("shutting down gracefully", timeout=15)
    time.sleep(0.2)
    assert wp.proc.poll() is None, "the first signal must not stop the worker at once"
    assert status_rows(rq) == [(message_id, "processing", 1)]
    sent = time.monotonic()
    wp.proc.send_signal(second)
    code = wp.proc.wait(20)
    elapsed = time.monotonic() - sent
    lines = wp.drain()
    assert code == 0, lines
    assert elapsed < 15.0, f"{elapsed:.1f} s: the second signal waited for the handler"
    assert f"finished {message_id}" not in lines
    assert status_rows(rq) == [(message_id, "ready", 1)]
    message = ok(rq.dequeue())
    assert message is not None
    assert (message.id, message.attempts) == (message_id, 2)


INTERRUPTED_SCRIPT = """
import signal, sys, time
from sqqueue import PostgresQueue, Worker, connect

# Ctrl-C raises KeyboardInterrupt even when the tests run as a background job (which
# starts its children with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
url, schema = sys.argv[1], sys.argv[2]
if url.startswith("sqlite:"):
    queue = connect(url, "jobs")
else:
    queue = PostgresQueue(url, "jobs", schema=schema)


def handle(message):
    print(f"started {message.id}", flush=True)
    time.sleep(60)


Worker(queue, handle, handle_signals=False, grace_period=30, poll_wait=0.5).run()
"""


def test_keyboard_interrupt_in_run_gives_the_running_message_back(
    rq: Queue, tmp_path: Path, queue_target: QueueTarget
) -> None:
    """Without its own signal handlers, Ctrl-C raises KeyboardInterrupt in run(): the
    worker stops at once and its running message is pending again (not left leased by a
    process that is gone), and the exception goes on."""
    message_id = ok(rq.enqueue("x"))
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_SCRIPT)
    wp = WorkerProcess(script, queue_target, 0, 0)
    wp.expect(f"started {message_id}")
    wp.proc.send_signal(signal.SIGINT)
    code = wp.proc.wait(15)
    lines = wp.drain()
    assert code != 0, lines
    assert any("KeyboardInterrupt" in line for line in lines), lines
    assert status_rows(rq) == [(message_id, "ready", 1)]


@pytest.mark.slow
def test_sigkilled_workers_message_returns_after_lease(
    rq: Queue, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """A worker killed with SIGKILL cannot clean up: its message comes back to another
    consumer once the (short, heartbeat-extended) lease runs out, as an expired lease."""
    message_id = ok(rq.enqueue({"sleep": 60}))
    wp = spawn_worker(grace=10.0, lease=1.0)
    wp.expect(f"started {message_id}")
    time.sleep(0.5)  # a few heartbeats
    assert status_rows(rq) == [(message_id, "processing", 1)]
    wp.proc.send_signal(signal.SIGKILL)
    assert wp.proc.wait(15) == -signal.SIGKILL
    message = ok(rq.dequeue(wait=30))  # the lease is 1 s: it comes back long before
    assert message is not None, "the message did not come back within 30 s"
    assert (message.id, message.attempts) == (message_id, 2)
    assert message.payload == {"sleep": 60}
    assert "lease expired" in (message.last_error or "")
    ok(rq.complete(message))
    assert status_rows(rq) == []


# -- careless handlers and settings ---------------------------------------------------------


def test_a_handler_timing_out_while_the_worker_stops_is_not_waited_for(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """stop() comes before the heartbeat times a hung handler out: once it has timed out,
    shutdown waits for it no longer (it holds nothing), and run() returns then, not after
    grace_period."""
    release = threading.Event()
    entered = threading.Event()

    def handle(message: Message) -> None:
        entered.set()
        release.wait(60)

    ok(rq.enqueue("hang", max_attempts=1))
    w = make_worker(rq, handle, task_timeout=0.5, grace_period=30)
    r = running(w)
    try:
        assert entered.wait(10)
        w.stop()  # graceful: the handler runs on until it times out
        r.thread.join(10)
        assert not r.thread.is_alive(), "run() waited for a handler that had timed out"
    finally:
        release.set()
    stats = r.stop()
    assert (stats.timed_out, stats.dead_lettered) == (1, 1), stats


def test_a_handler_ending_as_it_times_out_is_completed_or_failed_never_both(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """Handlers that end right about task_timeout race the heartbeat: each message is
    either completed (on_success) or timed out (on_failure), and the stats add up."""
    ids = ok(rq.enqueue_batch([Item(f"m{i}", max_attempts=1) for i in range(48)]))
    outcomes: dict[int, list[str]] = {i: [] for i in ids}
    lock = threading.Lock()

    def note(kind: str) -> Callable[..., None]:
        def hook(message: Message, _: Any) -> None:
            with lock:
                outcomes[message.id].append(kind)

        return hook

    def handle(message: Message) -> None:
        time.sleep(0.08 + (message.id % 5) * 0.01)  # 0.08 to 0.12 s around the timeout

    w = make_worker(
        rq,
        handle,
        concurrency=16,
        task_timeout=0.1,
        hooks=WorkerHooks(on_success=note("completed"), on_failure=note("failed")),
    )
    r = running(w)
    wait_until(lambda: w.stats.completed + w.stats.failed >= len(ids), what="every outcome")
    stats = r.stop(timeout=30)
    assert all(len(kinds) == 1 for kinds in outcomes.values()), outcomes
    assert stats.started == len(ids)
    assert stats.completed + stats.failed == len(ids)
    assert stats.failed == stats.timed_out == stats.dead_lettered
    assert ok(rq.is_drained()) is True
    assert len(ok(rq.get_dead_letters())) == stats.failed


@pytest.mark.parametrize("answer", [-5, float("nan"), float("inf"), "10", 1e300])
def test_a_retry_delay_that_is_not_a_delay_falls_back_to_the_queues_policy(
    rq: Queue, running: Callable[[Worker], Running], answer: Any
) -> None:
    (message_id,) = ok(rq.enqueue_batch(["x"]))

    def handle(message: Message) -> None:
        raise ValueError("boom")

    w = make_worker(rq, handle, retry_delay=lambda m, e: answer)
    r = running(w)
    wait_until(lambda: w.stats.failed >= 1, what="the failure")
    r.stop()
    (row,) = [s for s in message_statuses(rq) if s["id"] == message_id]
    assert row["status"] != "processing"  # failed and waiting for its retry, not stuck
    assert row["attempts"] >= 1
    assert ok(rq.get_message(message_id))["last_error"] == "ValueError: boom"


def test_stop_does_not_wait_for_a_hung_handler_already_timed_out(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    """A handler that never returns is abandoned at task_timeout (its message failed);
    stopping afterwards does not wait the grace period for its thread."""
    ok(rq.enqueue_batch([Item("hang", max_attempts=1), "fine"]))  # (not retried)
    release = threading.Event()

    def handle(message: Message) -> None:
        if message.payload == "hang":
            release.wait(60)

    w = make_worker(rq, handle, concurrency=2, task_timeout=0.2, grace_period=30)
    r = running(w)
    try:
        wait_until(lambda: w.stats.timed_out == 1 and w.stats.completed == 1, what="both")
        started = time.monotonic()
        r.stop(timeout=20)
        assert time.monotonic() - started < 10  # not the grace period's 30 s
    finally:
        release.set()


def test_poll_wait_zero_is_refused(rq: Queue) -> None:
    with pytest.raises(ValueError, match="poll_wait must be > 0"):
        Worker(rq, lambda m: None, poll_wait=0)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"visibility_timeout": 0}, "visibility_timeout must be at least 0.03 seconds"),
        ({"visibility_timeout": 0.02}, "visibility_timeout must be at least 0.03 seconds"),
        ({"heartbeat": 0}, "heartbeat must be a number of seconds, at least 0.01"),
        ({"heartbeat": -1}, "at least 0.01"),
        ({"heartbeat": 1e-9}, "at least 0.01"),
        ({"heartbeat": float("nan")}, "at least 0.01"),
        ({"heartbeat": "5"}, "heartbeat must be a number"),
        ({"heartbeat": True}, "heartbeat must be a number"),
        ({"hooks": {"on_success": print}}, "hooks must be a WorkerHooks"),
        ({"hooks": "x"}, "hooks must be a WorkerHooks"),
    ],
)
def test_worker_settings_it_cannot_use_are_refused(
    rq: Queue, settings: dict[str, Any], says: str
) -> None:
    """Said at construction, not replaced by a default or found out at every message."""
    with pytest.raises(ValueError, match=re.escape(says)):
        Worker(rq, lambda m: None, **settings)


class _UnreadableError(Exception):
    def __str__(self) -> str:
        raise KeyboardInterrupt("from __str__")


class _BadRepr:
    def __init__(self, raises: BaseException) -> None:
        self.raises = raises

    def __repr__(self) -> str:
        raise self.raises


def test_an_exception_whose_message_cannot_be_read_still_fails_its_message(
    rq: Queue, running: Callable[[Worker], Running]
) -> None:
    (message_id,) = ok(rq.enqueue_batch([Item("x", max_attempts=1)]))

    def handle(message: Message) -> None:
        raise _UnreadableError

    w = make_worker(rq, handle)
    r = running(w)
    wait_until(lambda: w.stats.dead_lettered == 1, what="the dead letter")
    r.stop()
    (dead,) = ok(rq.get_dead_letters())
    assert dead["id"] == message_id
    assert "could not be read" in dead["last_error"]


@pytest.mark.parametrize("raises", [RuntimeError("repr"), SystemExit("repr")])
def test_a_result_whose_own_code_raises_fails_its_message(
    make_queue: MakeQueue, running: Callable[[Worker], Running], raises: BaseException
) -> None:
    queue = make_queue(table_name="jobs", clock=None, retention=3600)
    (message_id,) = ok(queue.enqueue_batch([Item("x", max_attempts=1)]))
    w = make_worker(queue, lambda m: {_BadRepr(raises): 1}, results=True)
    r = running(w)
    wait_until(lambda: w.stats.dead_lettered == 1, what="the dead letter")
    r.stop()
    assert [d["id"] for d in ok(queue.get_dead_letters())] == [message_id]
    assert ok(queue.is_drained()) is True
