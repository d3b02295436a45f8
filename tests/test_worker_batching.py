"""The Worker amortises storage calls: runners claim for the runners idle beside them
(prefetch), and completions gather and land together in one transaction (grouped acks).

What must hold: a grouped ack is fenced by each message's lease like a single one; a
message whose handler returned but whose ack had not landed when the process died is
delivered again (at-least-once), never lost; what was claimed but not started is given
back at shutdown without counting an attempt. Every wait is bounded; nothing here depends
on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeClock
from helpers import eventually, ok, statuses, wait_until
from sqqueue import (
    AsyncQueue,
    AsyncWorker,
    CompletionError,
    Err,
    ErrorKind,
    Message,
    Queue,
    RetryPolicy,
    SQLiteQueue,
    Worker,
    WorkerHooks,
    WorkerStats,
)

MakeQueue = Callable[..., Queue]
# (``sqqueue.worker`` as an attribute is the decorator of that name)
worker_module = importlib.import_module("sqqueue.worker")
SRC = Path(__file__).resolve().parents[1] / "src"
WAIT = 20.0  # seconds any one wait_until of these tests may take


def run_in_thread(worker: Worker) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(worker.run()), daemon=True)
    thread.start()
    return thread, out


def drain_with_one_runner(
    queue: Queue, handler: Callable[[Message], None], **options: Any
) -> WorkerStats:
    """Run a one-runner worker (3 s leases: a heartbeat every second; else ``options``)
    until the queue is drained, then stop it; its stats."""
    options = {"visibility_timeout": 3, "poll_wait": 1, **options}
    w = Worker(queue, handler, concurrency=1, handle_signals=False, **options)
    thread, out = run_in_thread(w)
    wait_until(lambda: not queue.stats().unwrap().depth, timeout=WAIT, what="the queue drained")
    w.stop()
    thread.join(20)
    stats: WorkerStats = out[0]
    return stats


class HeldAcks:
    """Wraps ``queue.complete_batch`` so that its first call waits for a signal: the
    completions of the handlers that return meanwhile gather behind it."""

    def __init__(self, queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[list[int]] = []
        self.threads: list[str] = []  # the thread of each call
        self.release = threading.Event()
        self.entered = threading.Event()
        real = queue.complete_batch

        def complete_batch(messages: Any) -> Any:
            self.calls.append([m.id for m in messages])
            self.threads.append(threading.current_thread().name)
            if len(self.calls) == 1:
                self.entered.set()
                assert self.release.wait(30), "the test never released the first flush"
            return real(messages)

        monkeypatch.setattr(queue, "complete_batch", complete_batch)

    def release_after(self, seconds: float) -> None:
        """Release the first flush ``seconds`` after it began (from a thread of its own)."""

        def release() -> None:
            self.entered.wait(WAIT)
            time.sleep(seconds)
            self.release.set()

        threading.Thread(target=release, daemon=True).start()


def stop_at_once_while(
    w: Worker, thread: threading.Thread, release: threading.Event, what: str
) -> None:
    """``stop(immediate=True)`` while ``what`` is held: ``run()`` (on ``thread``) must not
    return until ``release`` is set, and must return then."""
    w.stop(immediate=True)
    thread.join(0.5)
    assert thread.is_alive(), f"run() returned while {what}"
    release.set()
    thread.join(WAIT)
    assert not thread.is_alive()


class HeldRetryDelay:
    """A ``retry_delay`` (60 s) that waits, once called (``deciding``), until the test
    lets it answer (``decided``): a message being settled, held there."""

    def __init__(self) -> None:
        self.deciding = threading.Event()
        self.decided = threading.Event()

    def __call__(self, message: Message, exc: BaseException) -> float:
        self.deciding.set()
        assert self.decided.wait(WAIT)
        return 60.0


def acks_on_their_own_thread(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Have the workers made from now on leave every completion to their ack thread, also
    on SQLite (where a runner about to claim commits those gathered so far itself)."""
    monkeypatch.setattr(queue.parts.backend, "one_writer", False)


def test_prefetch_must_be_a_bounded_int(make_queue: MakeQueue) -> None:
    queue = make_queue(table_name="jobs")
    for bad in (0, -1, 101, True, 2.0, "4"):
        with pytest.raises(ValueError, match="prefetch"):
            Worker(queue, print, prefetch=bad)
    assert Worker(queue, print, concurrency=3).prefetch == 100  # how much: by pace
    assert Worker(queue, print, concurrency=500).prefetch == 100
    assert Worker(queue, print, concurrency=3, prefetch=7).prefetch == 7


def test_completions_gather_into_one_transaction(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one flush is under way, the completions of handlers that return meanwhile
    wait behind it and land together in the next one."""
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch([f"job-{i}" for i in range(5)]))
    acks_on_their_own_thread(queue, monkeypatch)
    held = HeldAcks(queue, monkeypatch)
    handled: list[int] = []

    def handler(m: Message) -> None:
        if handled:  # after the first: only once its completion is being written
            assert held.entered.wait(20)
        handled.append(m.id)

    w = Worker(queue, handler, concurrency=1, handle_signals=False)
    thread, out = run_in_thread(w)
    assert held.entered.wait(20), "the first completion never reached complete_batch"
    wait_until(lambda: len(handled) == 5, timeout=WAIT, what="the other four handlers to return")
    held.release.set()
    wait_until(
        lambda: not queue.stats().unwrap().depth, timeout=WAIT, what="every message completed"
    )
    w.stop()
    thread.join(20)
    assert not thread.is_alive()
    first, *rest = held.calls
    assert len(first) == 1 and sorted(first + [i for call in rest for i in call]) == ids
    assert rest == [sorted(set(ids) - set(first))]  # the four others, in one transaction
    assert set(held.threads) == {f"{w.name}-acks"}
    assert out[0].completed == 5


def test_a_runner_about_to_claim_commits_the_gathered_completions_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite (one write lock), the runner about to claim commits the completions
    gathered so far itself, just before its claim: the ack thread would only wait for
    the claim's lock. (The ack thread is kept waiting here, so that only the runner
    can take them.)"""
    monkeypatch.setattr(worker_module, "ACK_DELAY", 60.0)
    queue = SQLiteQueue(tmp_path / "q.db", table_name="jobs")
    ids = ok(queue.enqueue_batch(["a", "b"]))
    held = HeldAcks(queue, monkeypatch)
    w = Worker(queue, lambda m: None, concurrency=1, handle_signals=False)
    thread, out = run_in_thread(w)
    try:
        assert held.entered.wait(20)
        # The first claim was of one message (no pace yet): its completion is committed
        # by the runner before it claims the next.
        assert held.calls[0] == [ids[0]] and held.threads[0] == f"{w.name}-1"
        assert statuses(queue) == {ids[0]: "processing", ids[1]: "ready"}
        held.release.set()
        wait_until(lambda: not queue.stats().unwrap().depth, timeout=WAIT, what="the drain")
    finally:
        held.release.set()
        w.stop()
        thread.join(20)
        queue.close()
    assert not thread.is_alive()
    assert out[0].completed == 2
    assert sorted(i for call in held.calls for i in call) == ids


def test_a_slow_on_success_hook_never_holds_up_claims(make_queue: MakeQueue) -> None:
    """on_success hooks run on a thread of their own, also for completions a runner
    committed before its claim (SQLite): an on_success hook that waits for the next
    message to be handled sees it handled, by runners that went on claiming."""
    queue = make_queue(table_name="jobs", clock=None)
    ok(queue.enqueue("a"))
    b_handled = threading.Event()
    hooked: list[tuple[str, bool]] = []

    def on_success(message: Message, _value: Any) -> None:
        if message.payload == "a":
            ok(queue.enqueue("b"))
            hooked.append((threading.current_thread().name, b_handled.wait(WAIT)))

    def handler(message: Message) -> None:
        if message.payload == "b":
            b_handled.set()

    w = Worker(
        queue,
        handler,
        concurrency=2,
        handle_signals=False,
        hooks=WorkerHooks(on_success=on_success),
    )
    thread, out = run_in_thread(w)
    try:
        wait_until(lambda: len(hooked) == 1, timeout=WAIT + 5, what="the hook of a to return")
    finally:
        b_handled.set()
        w.stop()
        thread.join(20)
    assert hooked == [(f"{w.name}-hooks", True)]
    assert out[0].completed == 2


def test_a_slow_on_success_hook_holds_back_no_commit(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an on_success hook blocks, the completions of the messages handled after it
    are still committed (their hooks wait their turn): a process that died meanwhile
    would not have them delivered again."""
    queue = make_queue(table_name="jobs", clock=None)
    acks_on_their_own_thread(queue, monkeypatch)  # (not committed by a runner's claim)
    ok(queue.enqueue("a"))
    in_hook, release = threading.Event(), threading.Event()
    hooked: list[Any] = []

    def on_success(message: Message, _value: Any) -> None:
        if message.payload == "a":
            in_hook.set()
            release.wait(WAIT)
        hooked.append(message.payload)

    w = Worker(
        queue, lambda m: None, handle_signals=False, hooks=WorkerHooks(on_success=on_success)
    )
    thread, out = run_in_thread(w)
    try:
        assert in_hook.wait(WAIT)
        ok(queue.enqueue_batch(["b", "c", "d"]))
        wait_until(
            lambda: ok(queue.stats()).completed_total == 4,
            timeout=WAIT,
            what="b, c and d committed while the hook of a blocks",
        )
        assert hooked == []
    finally:
        release.set()
        w.stop()
        thread.join(20)
    assert not thread.is_alive()
    assert hooked == ["a", "b", "c", "d"]
    assert out[0].completed == 4


def test_an_immediate_stop_waits_for_a_runners_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop(immediate=True) while a runner commits the completions gathered before its
    claim (SQLite): run() returns once that commit is done, with it counted and hooked,
    and the runner claims nothing more."""
    monkeypatch.setattr(worker_module, "ACK_DELAY", 60.0)  # (only the runner commits)
    queue = SQLiteQueue(tmp_path / "q.db", table_name="jobs")
    ids = ok(queue.enqueue_batch(["a", "b"]))
    held = HeldAcks(queue, monkeypatch)
    hooked: list[int] = []
    w = Worker(
        queue,
        lambda m: None,
        concurrency=1,
        handle_signals=False,
        hooks=WorkerHooks(on_success=lambda m, _v: hooked.append(m.id)),
    )
    thread, out = run_in_thread(w)
    try:
        assert held.entered.wait(WAIT)
        assert held.threads == [f"{w.name}-1"]
        stop_at_once_while(w, thread, held.release, "a runner was still committing")
        assert (out[0].completed, hooked) == (1, [ids[0]])
        assert statuses(queue) == {ids[1]: "ready"}
    finally:
        held.release.set()
        w.stop()
        thread.join(20)
        queue.close()


@pytest.mark.parametrize("committer", ["ack thread", "runner"])
def test_a_group_the_database_fails_is_not_tried_again_one_by_one(
    make_queue: MakeQueue,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    committer: str,
) -> None:
    """A failure of the database's (locked past lock_timeout, say) is the same for every
    message of a group: logged once per group, not waited out again once per message;
    the messages come back when their leases run out. (Only a refusal, a lease lost,
    sends a group's messages one by one.)"""
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch(["a", "b", "c"]))
    if committer == "ack thread":
        acks_on_their_own_thread(queue, monkeypatch)
    locked = CompletionError("complete_batch failed: database is locked", ErrorKind.LOCKED)
    groups: list[int] = []
    singles: list[int] = []

    def complete_batch(messages: Any) -> Any:
        groups.append(len(messages))
        return Err(locked)

    def complete(message: Any, **kwargs: Any) -> Any:
        singles.append(message.id)
        return Err(locked)

    monkeypatch.setattr(queue, "complete_batch", complete_batch)
    monkeypatch.setattr(queue, "complete", complete)
    w = Worker(queue, lambda m: None, concurrency=1, handle_signals=False)
    with caplog.at_level(logging.WARNING, logger="sqqueue.worker"):
        thread, out = run_in_thread(w)
        try:
            wait_until(lambda: sum(groups) == 3, timeout=WAIT, what="three completions tried")
        finally:
            w.stop()
            thread.join(20)
    assert not thread.is_alive()
    assert singles == []
    assert out[0].completed == 0
    failed = [r for r in caplog.records if "could not complete" in r.getMessage()]
    assert len(failed) == len(groups)
    assert all("leases expire" in r.getMessage() for r in failed)
    assert statuses(queue) == dict.fromkeys(ids, "processing")


def test_a_group_whose_commit_outcome_is_unknown_is_completed_one_by_one(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost at the commit (UNKNOWN_OUTCOME) is not the database's for good:
    the group's messages are completed one by one, each fenced by its lease, so each
    outcome is known and none is delivered again."""
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch(["a", "b", "c"]))
    real = queue.complete_batch
    lost = CompletionError("complete_batch failed: connection lost", ErrorKind.UNKNOWN_OUTCOME)
    groups: list[int] = []

    def complete_batch(messages: Any) -> Any:
        groups.append(len(messages))
        return Err(lost) if len(groups) == 1 else real(messages)

    monkeypatch.setattr(queue, "complete_batch", complete_batch)
    handled: list[int] = []
    stats = drain_with_one_runner(queue, lambda m: handled.append(m.id))
    assert sorted(handled) == ids  # each once
    assert stats.completed == 3
    assert statuses(queue) == {}


def test_grouped_acks_are_fenced_one_by_one_when_a_lease_was_lost(
    make_queue: MakeQueue, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group holding one message whose lease ran out and went to another consumer:
    that one is refused (its new holder keeps it), the others are completed. (The
    heartbeat extends the leases of acks that wait; here its next round, 25 s away, comes
    too late, as for a process stalled for longer than a lease.)"""
    queue = make_queue(table_name="jobs")
    other = make_queue(table_name="jobs")
    ids = ok(queue.enqueue_batch(["a", "b", "c"]))
    acks_on_their_own_thread(queue, monkeypatch)
    held = HeldAcks(queue, monkeypatch)
    handled: list[int] = []
    w = Worker(
        queue,
        lambda m: handled.append(m.id),
        concurrency=1,
        visibility_timeout=30,
        heartbeat=25,
        handle_signals=False,
    )
    thread, out = run_in_thread(w)
    assert held.entered.wait(20)
    wait_until(lambda: len(handled) == 3, timeout=WAIT, what="three handlers to return")
    # The worker stops claiming first (its acks still wait): else its own runner could
    # take the expired lease before the other consumer does.
    w.stop()
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name == f"{w.name}-1"],
        timeout=WAIT,
        what="the worker's runner to end",
    )
    # The lease of one message whose ack waits runs out, and another consumer takes it;
    # the other two keep theirs.
    for message_id in ids[1:]:
        ok(queue.extend(message_id, 600))
    clock.advance(31)
    taken = ok(other.dequeue(visibility_timeout=600))
    assert taken is not None
    lost = taken.id
    held.release.set()
    wait_until(
        lambda: set(statuses(queue, "status", "attempts")) == {lost},
        timeout=WAIT,
        what="every message but the re-leased one completed",
    )
    w.stop()
    thread.join(20)
    assert not thread.is_alive()
    assert statuses(queue, "status", "attempts") == {lost: ("processing", 2)}
    assert ok(other.complete(taken)) is None  # its new holder's lease is intact
    assert out[0].completed == 2
    assert set(ids) - {lost} <= set(handled)


def test_an_immediate_stop_waits_for_a_message_being_settled(make_queue: MakeQueue) -> None:
    """stop(immediate=True) while a runner settles a message whose handler had ended (its
    failure, retry_delay still deciding): run() returns once it is settled, its count
    final, so the queue can be closed right after."""
    queue = make_queue(table_name="jobs", clock=None)
    message_id = ok(queue.enqueue("x"))
    retry_delay = HeldRetryDelay()

    def handler(message: Message) -> None:
        raise ValueError("not yet")

    w = Worker(queue, handler, concurrency=1, handle_signals=False, retry_delay=retry_delay)
    thread, out = run_in_thread(w)
    try:
        assert retry_delay.deciding.wait(WAIT)
        stop_at_once_while(w, thread, retry_delay.decided, "a message was being settled")
        assert out[0].failed == 1
        queue.close()
    finally:
        retry_delay.decided.set()
        w.stop()
        thread.join(20)
    other = make_queue(table_name="jobs", clock=None)
    assert statuses(other) == {message_id: "delayed"}


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_an_async_worker_stopped_at_once_waits_for_a_message_being_settled(
    make_queue: MakeQueue, how: str
) -> None:
    """The same for an AsyncWorker stopped at once or cancelled: its failing step goes on
    in its thread, and run() ends once it is done."""
    queue = make_queue(table_name="jobs", clock=None)
    message_id = ok(queue.enqueue("x"))
    retry_delay = HeldRetryDelay()

    async def handler(message: Message) -> None:
        raise ValueError("not yet")

    w = AsyncWorker(
        AsyncQueue(queue), handler, handle_signals=False, poll_wait=0.5, retry_delay=retry_delay
    )
    task = asyncio.ensure_future(w.run())
    try:
        assert await asyncio.to_thread(retry_delay.deciding.wait, WAIT)
        if how == "stop":
            w.stop(immediate=True)
        else:
            task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.5)
        assert not done, "run() ended while a message was being settled"
        retry_delay.decided.set()
        await asyncio.wait({task}, timeout=WAIT)
        assert task.done()
        assert w.stats.failed == 1
    finally:
        retry_delay.decided.set()
        w.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, WAIT)
    assert statuses(queue) == {message_id: "delayed"}


@pytest.mark.asyncio
async def test_an_async_worker_cancelled_again_while_waiting_still_shuts_down(
    make_queue: MakeQueue,
) -> None:
    """Cancelled a second time while it waits for a message being settled: it stops
    waiting, but still gives back what it prefetched and ends its ack thread, then ends
    with the cancellation."""
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch(["fails", *["waits"] * 5]))
    retry_delay = HeldRetryDelay()

    async def handler(message: Message) -> None:
        if message.payload == "fails":
            raise ValueError("not yet")
        await asyncio.sleep(3600)

    w = AsyncWorker(
        AsyncQueue(queue),
        handler,
        concurrency=1,
        prefetch=6,
        handle_signals=False,
        poll_wait=0.5,
        retry_delay=retry_delay,
    )
    task = asyncio.ensure_future(w.run())
    try:
        assert await asyncio.to_thread(retry_delay.deciding.wait, WAIT)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.3)
        assert not done, "run() ended while a message was being settled"
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=WAIT)
        assert done and task.cancelled()
        assert not [t for t in threading.enumerate() if t.name == f"{w.name}-acks"]
    finally:
        retry_delay.decided.set()
        w.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, WAIT)
    await eventually(lambda: statuses(queue)[ids[0]] == "delayed", WAIT, "the retry set")
    assert {statuses(queue)[i] for i in ids[1:]} == {"ready"}


def test_claimed_but_not_started_is_given_back_at_shutdown(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch that returns as the worker stops: every message in it is released at once,
    its attempt not counted, and no handler runs."""
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch(["a", "b", "c", "d"]))
    handled: list[Message] = []
    w = Worker(queue, handled.append, concurrency=4, handle_signals=False, poll_wait=1)
    real = queue.dequeue_batch
    sizes: list[int] = []

    def dequeue_batch_then_stop(size: int, *args: Any, **kwargs: Any) -> Any:
        sizes.append(size)
        result = real(4, *args, **kwargs)  # as if every runner had been idle
        w.stop()
        return result

    monkeypatch.setattr(queue, "dequeue_batch", dequeue_batch_then_stop)
    thread, out = run_in_thread(w)
    thread.join(20)
    assert not thread.is_alive()
    assert handled == []
    assert (out[0].released, out[0].started) == (4, 0)
    assert statuses(queue, "status", "attempts") == dict.fromkeys(ids, ("ready", 0))
    assert all(1 <= size <= 4 for size in sizes)


def test_claims_never_exceed_the_prefetch_bound(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many runners are idle, one claim asks for at most ``prefetch`` messages,
    and every message is handled exactly once."""
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch([f"m{i}" for i in range(60)]))
    sizes = _recording_claims(queue, monkeypatch)
    seen: list[int] = []
    lock = threading.Lock()

    def handler(m: Message) -> None:
        with lock:
            seen.append(m.id)

    w = Worker(queue, handler, concurrency=6, prefetch=3, handle_signals=False, poll_wait=1)
    thread, out = run_in_thread(w)
    wait_until(lambda: not queue.stats().unwrap().depth, timeout=WAIT, what="the queue drained")
    w.stop()
    thread.join(20)
    assert sorted(seen) == ids
    assert max(sizes) <= 3
    assert out[0].completed == 60


@pytest.fixture
def claim_far_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Claims take up to ``prefetch`` whatever the handlers' measured pace: on a loaded
    machine a no-op handler can measure slow enough to shrink the claims a test needs."""
    monkeypatch.setattr(importlib.import_module("sqqueue.worker"), "AHEAD_SECONDS", 3600.0)


def _recording_claims(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size each claim of ``queue``'s worker asks for, in order."""
    real = queue.dequeue_batch
    sizes: list[int] = []

    def recording(size: int, *args: Any, **kwargs: Any) -> Any:
        sizes.append(size)
        return real(size, *args, **kwargs)

    monkeypatch.setattr(queue, "dequeue_batch", recording)
    return sizes


def test_quick_handlers_get_large_claims(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once handlers are seen to be quick, a claim takes what the worker will start within
    moments, not only one message per idle runner: one runner, 150 no-op messages, a few
    claims of up to ``prefetch`` each, every message handled once."""
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch([f"m{i}" for i in range(150)]))
    sizes = _recording_claims(queue, monkeypatch)
    seen: list[int] = []
    w = Worker(queue, lambda m: seen.append(m.id), concurrency=1, handle_signals=False)
    thread, out = run_in_thread(w)
    wait_until(lambda: not queue.stats().unwrap().depth, timeout=WAIT, what="the queue drained")
    w.stop()
    thread.join(20)
    assert sorted(seen) == ids and out[0].completed == 150
    assert sizes[0] == 1  # nothing known of the handlers yet: only the idle runner's
    # A 50 ms budget holds a hundred no-ops (the prefetch bound) on a quiet machine; on a
    # loaded one, at least ten.
    assert 10 <= max(sizes) <= 100, sizes


def test_prefetch_1_claims_only_the_message_a_runner_starts(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``prefetch=1`` quick handlers get no claim ahead: each claim takes the one
    message its runner starts, so a process that dies holds no message unstarted (whose
    attempt its claim counted)."""
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch([f"m{i}" for i in range(150)]))
    sizes = _recording_claims(queue, monkeypatch)
    seen: list[int] = []
    w = Worker(queue, lambda m: seen.append(m.id), concurrency=2, handle_signals=False, prefetch=1)
    thread, out = run_in_thread(w)
    wait_until(lambda: not queue.stats().unwrap().depth, timeout=WAIT, what="the queue drained")
    w.stop()
    thread.join(20)
    assert sorted(seen) == ids and out[0].completed == 150
    assert set(sizes) == {1}, sizes


def test_slow_handlers_claim_only_for_idle_runners(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handlers that take longer than the claim-ahead budget: no message is claimed
    beyond the runners that can start it now, so other workers can serve the rest."""
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch([f"m{i}" for i in range(6)]))
    sizes = _recording_claims(queue, monkeypatch)
    seen: list[int] = []
    lock = threading.Lock()

    def handler(m: Message) -> None:
        time.sleep(0.15)  # three times the 50 ms budget: nothing to claim ahead
        with lock:
            seen.append(m.id)

    w = Worker(queue, handler, concurrency=2, handle_signals=False, poll_wait=1)
    thread, out = run_in_thread(w)
    wait_until(lambda: not queue.stats().unwrap().depth, timeout=WAIT, what="the queue drained")
    w.stop()
    thread.join(20)
    assert sorted(seen) == ids and out[0].completed == 6
    assert max(sizes) <= 2, sizes


@pytest.mark.usefixtures("claim_far_ahead")
def test_claimed_messages_that_wait_past_a_heartbeat_are_given_back(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quick handlers led the worker to claim ahead, then one handler took long: the
    messages it held unstarted for longer than a heartbeat are released (attempt not
    counted) rather than started on a lease half spent, and are handled once each later."""
    queue = make_queue(table_name="jobs")  # a fake clock: no lease runs out in this test
    ids = ok(queue.enqueue_batch([f"m{i}" for i in range(20)]))
    sizes = _recording_claims(queue, monkeypatch)
    handled: list[tuple[int, int]] = []

    def handler(m: Message) -> None:
        handled.append((m.id, m.attempts))
        if len(handled) == 2:
            time.sleep(1.3)  # longer than the heartbeat (1 s): the 18 held are stale

    stats = drain_with_one_runner(queue, handler)
    assert sorted(i for i, _ in handled) == ids  # each once
    assert all(attempts == 1 for _, attempts in handled), handled
    assert sizes[:2] == [1, 100], sizes  # the second claim took the other 19
    assert stats.released == 18 and stats.completed == 20


@pytest.mark.usefixtures("claim_far_ahead")
def test_the_heartbeat_gives_back_what_waits_while_every_runner_is_busy(
    make_queue: MakeQueue,
) -> None:
    """Claimed ahead, then the only runner is stuck in a long handler: the heartbeat gives
    the held messages back while it runs, so other consumers can serve them meanwhile."""
    queue = make_queue(table_name="jobs")  # a fake clock: no lease runs out in this test
    other = make_queue(table_name="jobs")
    ids = ok(queue.enqueue_batch([f"m{i}" for i in range(20)]))
    served_elsewhere: list[int] = []
    handled: list[int] = []

    def handler(m: Message) -> None:
        handled.append(m.id)
        if len(handled) == 2:  # the 18 others are held unstarted by now
            wait_until(
                lambda: queue.stats().unwrap().ready == 18,
                timeout=WAIT,
                what="the heartbeat to give the held messages back",
            )
            while (taken := ok(other.dequeue())) is not None:
                served_elsewhere.append(taken.id)
                ok(other.complete(taken))

    stats = drain_with_one_runner(queue, handler)
    assert len(served_elsewhere) == 18
    assert sorted(handled + served_elsewhere) == ids
    assert stats.released == 18 and stats.completed == 2


@pytest.mark.usefixtures("claim_far_ahead")
def test_the_async_heartbeat_gives_back_what_waits_while_every_runner_is_busy(
    make_queue: MakeQueue,
) -> None:
    """The asyncio worker's heartbeat does the same: held messages go back while the only
    runner is busy, and nothing is handled twice."""
    queue = make_queue(table_name="jobs")  # a fake clock: no lease runs out in this test
    ids = ok(queue.enqueue_batch([f"m{i}" for i in range(20)]))
    aqueue = AsyncQueue(queue)
    handled: list[int] = []
    given_back: list[int] = []

    async def handler(m: Message) -> None:
        handled.append(m.id)
        if len(handled) == 2:
            deadline = time.monotonic() + 20
            while queue.stats().unwrap().ready != 18:
                assert time.monotonic() < deadline, "the held messages were never given back"
                await asyncio.sleep(0.02)
            given_back.append(queue.stats().unwrap().ready)

    w = AsyncWorker(
        aqueue, handler, concurrency=1, visibility_timeout=3, handle_signals=False, poll_wait=1
    )
    stats = _run_until(w, lambda: not queue.stats().unwrap().depth)
    assert given_back == [18]
    assert sorted(handled) == ids  # the 18 came back and were handled then, once each
    assert stats.released == 18 and stats.completed == 20


CHILD = textwrap.dedent(
    """
    import sys, threading
    sys.path.insert(0, sys.argv[1])
    from sqqueue import SQLiteQueue, Worker

    queue = SQLiteQueue(sys.argv[2], "jobs")
    never = threading.Event()
    # Acks never land: the handler has returned, its completion waits in the worker.
    queue.complete_batch = lambda messages: never.wait()
    queue.complete = lambda *a, **k: never.wait()

    def handler(message):
        print("handled", message.id, flush=True)

    Worker(queue, handler, concurrency=1, visibility_timeout=1, heartbeat=0.5).run()
    """
)


@pytest.mark.slow
def test_a_handled_message_whose_ack_had_not_landed_is_delivered_again(tmp_path: Path) -> None:
    """SIGKILL after the handler returned but before its grouped ack was written: the
    message is not lost; once its lease runs out it is delivered again."""
    db = tmp_path / "jobs.db"
    queue = SQLiteQueue(str(db), "jobs")
    try:
        message_id = ok(queue.enqueue("precious"))
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(SRC), str(db)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.split() == ["handled", str(message_id)]
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        again = ok(queue.dequeue(wait=30))
        assert again is not None and again.id == message_id and again.attempts == 2
        assert again.payload == "precious"
        ok(queue.complete(again))
    finally:
        queue.close()


def _recording_async_claims(aqueue: AsyncQueue, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size each claim of ``aqueue``'s worker asks for, in order."""
    real = aqueue.dequeue_batch
    sizes: list[int] = []

    async def claim(size: int, *args: Any, **kwargs: Any) -> Any:
        sizes.append(size)
        return await real(size, *args, **kwargs)

    monkeypatch.setattr(aqueue, "dequeue_batch", claim)
    return sizes


def _run_until(w: AsyncWorker, done: Callable[[], bool]) -> Any:
    """Run ``w`` in an event loop until ``done()`` (at most a minute), stop it, return
    its stats."""

    async def main() -> Any:
        task = asyncio.create_task(w.run())
        deadline = time.monotonic() + 60
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        w.stop()
        return await asyncio.wait_for(task, 30)

    return asyncio.run(main())


def test_async_worker_prefetches_and_groups_acks(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio worker takes the same paths: every message handled once, completed
    through complete_batch, claims no larger than prefetch, and larger than one message
    per idle runner once its handlers are seen to be quick."""
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch([f"m{i}" for i in range(40)]))
    completed: list[int] = []
    real_complete = queue.complete_batch

    def spy(messages: Any) -> Any:
        completed.extend(m.id for m in messages)
        return real_complete(messages)

    monkeypatch.setattr(queue, "complete_batch", spy)
    aqueue = AsyncQueue(queue)
    sizes = _recording_async_claims(aqueue, monkeypatch)
    handled: list[int] = []

    async def handler(m: Message) -> None:
        handled.append(m.id)

    w = AsyncWorker(aqueue, handler, concurrency=4, prefetch=3, handle_signals=False)
    stats = _run_until(w, lambda: sorted(completed) == ids)
    assert sorted(handled) == ids and sorted(completed) == ids
    assert stats.completed == 40
    assert max(sizes) <= 3, sizes


def test_async_worker_claims_ahead_for_quick_handlers(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One asyncio runner with a quick coroutine handler: claims grow past the one idle
    runner's message, up to ``prefetch``."""
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch([f"m{i}" for i in range(150)]))
    aqueue = AsyncQueue(queue)
    sizes = _recording_async_claims(aqueue, monkeypatch)
    handled: list[int] = []

    async def handler(m: Message) -> None:
        handled.append(m.id)

    w = AsyncWorker(aqueue, handler, concurrency=1, handle_signals=False)
    stats = _run_until(w, lambda: not queue.stats().unwrap().depth)
    assert sorted(handled) == ids and stats.completed == 150
    assert sizes[0] == 1 and 10 <= max(sizes) <= 100, sizes


def test_async_worker_gives_back_what_it_claimed_but_did_not_start(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = make_queue(table_name="jobs", clock=None)
    ids = ok(queue.enqueue_batch(["a", "b", "c"]))
    aqueue = AsyncQueue(queue)
    real_claim = aqueue.dequeue_batch
    handled: list[int] = []

    async def handler(m: Message) -> None:
        handled.append(m.id)

    w = AsyncWorker(aqueue, handler, concurrency=3, handle_signals=False, poll_wait=1)

    async def claim_then_stop(size: int, *args: Any, **kwargs: Any) -> Any:
        result = await real_claim(3, *args, **kwargs)
        w.stop()
        return result

    monkeypatch.setattr(aqueue, "dequeue_batch", claim_then_stop)
    stats = asyncio.run(asyncio.wait_for(w.run(), 30))
    assert handled == []
    assert (stats.released, stats.started) == (3, 0)
    assert statuses(queue, "status", "attempts") == dict.fromkeys(ids, ("ready", 0))


# -- leases kept while a message is handled and until its ack lands -----------------------------


class _Counting(Worker):
    """A Worker that counts how often each message id reaches its handler."""

    def __init__(self, queue: Queue, handler: Callable[[Message], Any], **options: Any) -> None:
        self.handled: dict[int, int] = {}
        lock = threading.Lock()

        def counted(m: Message) -> Any:
            with lock:
                self.handled[m.id] = self.handled.get(m.id, 0) + 1
            return handler(m)

        super().__init__(queue, counted, handle_signals=False, poll_wait=0.1, **options)


def _handled_once_each(
    queue: Queue, worker: _Counting, n: int, feed: Callable[[], None] = lambda: None
) -> tuple[dict[int, int], Any]:
    """Run ``worker``, then ``feed()``, until ``n`` messages are completed; stop it. (How
    often each message id was handled, the queue's stats.)"""
    thread, out = run_in_thread(worker)
    feed()
    wait_until(
        lambda: queue.stats().unwrap().completed_total >= n, timeout=WAIT, what="all completed"
    )
    worker.stop()
    thread.join(WAIT)
    assert not thread.is_alive() and out, "the worker did not stop"
    return dict(worker.handled), queue.stats().unwrap()


def test_a_heartbeat_over_half_the_lease_keeps_the_lease(tmp_path: Path) -> None:
    """heartbeat=0.7 x the lease (allowed: it is shorter than the lease), and messages
    leased at every moment between two heartbeat rounds: handlers that run for longer than
    a lease keep their messages, each handled once. (A lease taken just after a round was
    first extended two rounds later, 2.8 s on, past the 2 s lease, and a spare runner took
    the message again.)"""
    queue = SQLiteQueue(tmp_path / "q.db", "jobs")  # the real clock: leases run out
    worker = _Counting(
        queue, lambda m: time.sleep(3.5), concurrency=10, visibility_timeout=2.0, heartbeat=1.4
    )

    def feed() -> None:
        for i in range(7):  # one every 0.2 s: over a whole heartbeat
            queue.enqueue(i).unwrap()
            time.sleep(0.2)

    handled, stats = _handled_once_each(queue, worker, 7, feed)
    assert handled == dict.fromkeys(range(1, 8), 1), handled
    assert stats.lease_expirations_total == 0 and stats.completed_total == 7
    queue.close()


@pytest.mark.parametrize("slow", ["on_success hook", "commit"])
def test_messages_waiting_for_their_ack_keep_their_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: str
) -> None:
    """The ack thread is held up for more than two leases (an on_success hook that blocks,
    a commit that waits): the messages whose handlers returned meanwhile keep their
    leases until their ack lands, and none is handled twice."""
    queue = SQLiteQueue(tmp_path / "q.db", "jobs")  # the real clock: leases run out
    queue.enqueue_batch(list(range(10))).unwrap()
    hooks = WorkerHooks()
    if slow == "commit":
        HeldAcks(queue, monkeypatch).release_after(2.5)
    else:
        blocked = threading.Event()

        def on_success(message: Message, value: Any) -> None:
            if not blocked.is_set():
                blocked.set()
                time.sleep(2.5)

        hooks = WorkerHooks(on_success=on_success)
    worker = _Counting(
        queue, lambda m: time.sleep(0.01), concurrency=2, visibility_timeout=1.0, hooks=hooks
    )
    handled, stats = _handled_once_each(queue, worker, 10)
    assert handled == dict.fromkeys(range(1, 11), 1), handled
    assert stats.lease_expirations_total == 0 and stats.completed_total == 10
    queue.close()


def test_retry_delay_raising_a_base_exception_still_fails_the_message(
    make_queue: MakeQueue,
) -> None:
    """retry_delay raises SystemExit: the queue's retry policy decides, as when it raises
    an Exception; the message was failed (not left leased), then retried and completed."""
    queue = make_queue(table_name="jobs", retry=RetryPolicy.immediate())
    queue.enqueue("x").unwrap()
    attempts: list[int] = []

    def handler(m: Message) -> None:
        attempts.append(m.attempts)
        if m.attempts == 1:
            raise ValueError("the first attempt fails")

    def retry_delay(m: Message, exc: BaseException) -> float:
        raise SystemExit("retry_delay broke")

    stats = drain_with_one_runner(queue, handler, retry_delay=retry_delay)
    assert attempts == [1, 2]
    assert (stats.failed, stats.completed) == (1, 1)
    assert queue.stats().unwrap().processing == 0


def test_a_durations_observer_raising_a_base_exception_still_completes_the_message(
    make_queue: MakeQueue,
) -> None:
    """The durations observer raises KeyboardInterrupt when told a processing time: it is
    logged like a failing hook, and the message is completed all the same."""
    queue = make_queue(table_name="jobs")
    queue.enqueue("x").unwrap()

    class Broken:
        def observe(self, queue: str, kind: str, seconds: float) -> None:
            if kind == "processing":
                raise KeyboardInterrupt("observer")

    stats = drain_with_one_runner(queue, lambda m: None, durations=Broken())
    assert stats.completed == 1
    assert queue.stats().unwrap().completed_total == 1


def test_async_worker_messages_waiting_for_their_ack_keep_their_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio worker shares the ack thread and the heartbeat: a commit held up for
    more than two leases loses no lease, and no message is handled twice."""
    queue = SQLiteQueue(tmp_path / "q.db", "jobs")  # the real clock: leases run out
    queue.enqueue_batch(list(range(10))).unwrap()
    HeldAcks(queue, monkeypatch).release_after(2.5)
    handled: list[int] = []

    async def handler(m: Message) -> None:
        handled.append(m.id)
        await asyncio.sleep(0.01)

    w = AsyncWorker(
        AsyncQueue(queue), handler, concurrency=2, visibility_timeout=1.0, handle_signals=False
    )
    stats = _run_until(w, lambda: queue.stats().unwrap().completed_total >= 10)
    assert sorted(handled) == list(range(1, 11)), handled
    assert stats.completed == 10
    assert queue.stats().unwrap().lease_expirations_total == 0
    queue.close()


@pytest.mark.parametrize("slow", ["retry_delay", "completion with a result"])
def test_a_message_settled_by_its_runner_keeps_its_lease_until_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: str
) -> None:
    """The runner settles the message itself (a failure, or a completion that keeps the
    handler's result) and that takes more than two leases (retry_delay asks a slow
    service; the commit waits): the heartbeat keeps the lease meanwhile, so the spare
    runner never takes the message, and every attempt is the one the handler counted."""
    queue = SQLiteQueue(tmp_path / "q.db", "jobs", retention=3600)  # the real clock
    queue.enqueue_batch(["a", "b"]).unwrap()
    options: dict[str, Any] = {}
    if slow == "retry_delay":

        def handler(m: Message) -> str:
            if m.attempts == 1:
                raise ValueError("the first attempt fails")
            return "done"

        def retry_delay(m: Message, exc: BaseException) -> float:
            time.sleep(2.5)
            return 0

        options["retry_delay"] = retry_delay
        expected = 2  # attempts each
    else:
        real = queue.complete

        def complete(message: Message, *args: Any, **kwargs: Any) -> Any:
            time.sleep(2.5)
            return real(message, *args, **kwargs)

        monkeypatch.setattr(queue, "complete", complete)

        def handler(m: Message) -> str:
            return f"result of {m.payload}"

        options["results"] = True
        expected = 1
    worker = _Counting(queue, handler, concurrency=3, visibility_timeout=1.0, **options)
    handled, stats = _handled_once_each(queue, worker, 2)
    assert handled == {1: expected, 2: expected}, handled
    assert stats.lease_expirations_total == 0 and stats.completed_total == 2
    if slow != "retry_delay":
        results = {d["id"]: d["result"] for d in queue.get_completed().unwrap()}
        assert results == {1: "result of a", 2: "result of b"}
    queue.close()
