"""The asyncio API: AsyncQueue mirrors Queue (names, parameters, Results), waits without
blocking the event loop, async claim(), AsyncWorker, and a Starlette app using the queue.

Contract tests: ``AsyncQueue(make_queue(...))`` runs each on every backend.

The suite must hold on a busy machine (two CPU hogs beside it). A wake-up is shown to
come from the wake-up itself (polling off, a wait far longer than the test's deadline),
not from how fast it came; lease expiry is driven by the fake clock where it decides the
outcome; a time bound is only asserted against a contrast many times larger.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeClock, QueueTarget
from helpers import SRC, ScriptProcess, eventually, ok, run_script, status_rows
from sqqueue import (
    AsyncQueue,
    AsyncSQLiteQueue,
    AsyncWorker,
    Err,
    ErrorKind,
    Item,
    Message,
    Ok,
    Queue,
    QueueError,
    RetryPolicy,
    SQLiteQueue,
    WorkerHooks,
    WorkerStats,
    bridge,
)
from sqqueue.backends.base import Backend
from sqqueue.threads import run_in_own_thread

MakeQueue = Callable[..., Queue]
# Pure calls that do no I/O stay plain methods on the async queue.
NOT_COROUTINES = {"get_operation_count", "wake_waiters", "claim", "ddl"}


def no_polling(aq: AsyncQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    """No watcher of other connections' commits and no fallback re-check, so that a waiter
    can only be woken by the in-process wake-up (or its own deadline)."""
    backend = aq.sync._backend
    monkeypatch.setattr(backend, "watch", lambda: None)
    monkeypatch.setattr(backend, "poll_fallback", None, raising=False)


@pytest.fixture
def aq(make_queue: MakeQueue) -> AsyncQueue:
    """An AsyncQueue over a fake-clock queue (table "jobs") on the test's backend."""
    return AsyncQueue(make_queue(table_name="jobs"))


@pytest.fixture
def raq(make_queue: MakeQueue) -> AsyncQueue:
    """An AsyncQueue on the real clock, for leases and heartbeats."""
    return AsyncQueue(make_queue(table_name="jobs", clock=None))


# -- the same API ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_dequeues_fail_as_the_sync_ones_do(
    aq: AsyncQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """Same Err, same cause underneath, same log record as the sync call's."""
    aq.sync.close()
    with caplog.at_level(logging.DEBUG, logger="sqqueue"):
        for call, action in ((aq.dequeue(), "dequeue"), (aq.dequeue_batch(5), "dequeue_batch")):
            caplog.clear()
            result = await call
            assert isinstance(result, Err) and result.error.kind is ErrorKind.CLOSED
            assert isinstance(result.error.__cause__, QueueError)
            assert str(result.error) == str(aq.sync.dequeue().error).replace("dequeue", action, 1)
            assert any(f"{action} failed" in r.getMessage() for r in caplog.records)


def _public_methods(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}


def _parameters(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    params = inspect.signature(fn).parameters.values()
    return [(p.name, p.kind, p.default) for p in params if p.name != "self"]


def test_async_queue_has_every_public_method_of_queue() -> None:
    """Every public method of Queue exists on AsyncQueue, and every public method of
    SQLiteQueue on AsyncSQLiteQueue."""
    assert {"enqueue", "dequeue", "claim", "release", "wake_waiters"} <= _public_methods(Queue)
    for sync_cls, async_cls in ((Queue, AsyncQueue), (SQLiteQueue, AsyncSQLiteQueue)):
        missing = _public_methods(sync_cls) - _public_methods(async_cls)
        assert not missing, f"{async_cls.__name__} lacks {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(_public_methods(SQLiteQueue)))
def test_async_method_parameters_match_sync(name: str) -> None:
    """Each async method takes the same parameters (names, kinds, defaults) as the sync
    one, and is a coroutine function unless it is one of the documented sync exceptions."""
    sync_fn = getattr(SQLiteQueue, name)
    async_fn = getattr(AsyncSQLiteQueue, name, None)
    assert async_fn is not None, f"AsyncSQLiteQueue.{name} is missing"
    assert _parameters(async_fn) == _parameters(sync_fn)
    if name in NOT_COROUTINES:
        assert not inspect.iscoroutinefunction(async_fn)
    else:
        assert inspect.iscoroutinefunction(async_fn), f"AsyncQueue.{name} is not async"


def test_async_sqlite_queue_takes_sqlite_queue_arguments(tmp_path: Path) -> None:
    """AsyncSQLiteQueue accepts SQLiteQueue's positional and keyword arguments."""
    params = _parameters(SQLiteQueue.__init__)
    assert [p[0] for p in params][:3] == ["db_path", "table_name", "vacuum_threshold"]
    aq = AsyncSQLiteQueue(  # 0.1.0's positional order
        tmp_path / "a.db",
        "emails",
        500,
        False,
        None,
        None,
        "sqqueue",
        2,
        60.0,
        7,
        synchronous="full",
        lock_timeout=5.0,
        retry=RetryPolicy.fixed(3),
    )
    try:
        assert isinstance(aq.sync, SQLiteQueue)
        assert (aq.name, aq.table_name, aq.db_path) == ("emails", "emails", aq.sync.db_path)
        assert (aq.sync.default_max_attempts, aq.sync.default_priority) == (7, 2)
        assert aq.sync.retry == RetryPolicy.fixed(3)
    finally:
        aq.sync.close()
    with pytest.raises(ValueError):
        AsyncSQLiteQueue(tmp_path / "b.db", table_name="bad name")


def _describe(value: Any) -> Any:
    """A comparable picture of a result: Ok/Err, types, error class and kind, values."""
    if isinstance(value, Ok):
        return ("Ok", _describe(value.value))
    if isinstance(value, Err):
        error = value.error
        return ("Err", type(error).__name__, error.kind, error.message_id)
    if isinstance(value, Message):
        return (
            "Message",
            value.id,
            value.payload,
            value.priority,
            value.attempts,
            value.max_attempts,
            value.last_error,
            value.queue,
            type(value.lease_expires_at).__name__,
        )
    if isinstance(value, list):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return ("datetime", value.timestamp(), value.tzinfo is not None)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.asdict(value)
        for size in ("db_bytes", "wal_bytes"):  # file sizes differ from file to file
            if size in fields:
                fields[size] = type(fields[size]).__name__
        return (type(value).__name__, _describe(fields))
    return (type(value).__name__, value)


Call = Callable[..., Awaitable[Any]]


async def _scenario(call: Call, advance: Callable[[float], None]) -> list[tuple[str, Any]]:
    """Exercise every method, good and bad cases; return what each call gave."""
    log: list[tuple[str, Any]] = []

    async def step(name: str, *args: Any) -> Any:
        result = await call(name, *args)
        log.append((name, _describe(result)))
        return result

    await step("enqueue", "a")
    await step("enqueue", {"k": [1, 2]}, 5, 0, 3)
    await step("enqueue", b"\x00raw", None, 60)
    await step("enqueue", {1, 2})  # SERIALIZATION
    await step("enqueue", "x", "high")  # INVALID_INPUT
    await step("enqueue_batch", ["b", ("c", 1)])
    await step("enqueue_batch", "not a list")
    await step("peek")
    first = (await step("dequeue")).value
    await step("extend", first, 30)
    await step("extend", first, -1)
    await step("complete", first)
    await step("complete", first)  # NOT_FOUND
    await step("complete", "nope")
    batch = (await step("dequeue_batch", 2)).value
    await step("dequeue_batch", 0)
    await step("fail_message", batch[0], False, "boom")
    await step("requeue", batch[1])
    await step("requeue", batch[1])  # WRONG_STATE
    second = (await step("dequeue")).value
    await step("release", second)
    third = (await step("dequeue", 10)).value
    advance(11)
    await step("complete", third)  # LEASE_EXPIRED
    await step("fail_message", third, False, "late")
    await step("recover_processing_messages")
    fourth = (await step("dequeue")).value
    await step("fail_message", fourth, True, "to the dlq")
    await step("get_dead_letters")
    await step("reprocess_dead_letter", fourth.id)
    await step("reprocess_dead_letter", 9999)
    await step("dequeue", None, -1)
    await step("get_all_statuses")
    await step("is_empty")
    await step("dequeue_batch", 100, None, 0.05)
    await step("dequeue", None, 0.05)
    await step("is_empty")
    await step("vacuum_database")
    await step("perform_checkpoint")
    await step("vacuum_database", "not a connection")
    await step("get_operation_count")
    await step("close")
    await step("enqueue", "after close")
    await step("dequeue")
    await step("dequeue", None, 1)
    await step("peek")
    return log


async def _newer_scenario(call: Call, advance: Callable[[float], None]) -> list[tuple[str, Any]]:
    """The inspection and housekeeping methods (stats, list_messages, purge, list_queues)."""
    log: list[tuple[str, Any]] = []

    async def step(name: str, *args: Any) -> Any:
        result = await call(name, *args)
        log.append((name, _describe(result)))
        return result

    await step("enqueue_batch", ["a", "b", ("later", None, 60), "dead"])
    held = (await step("dequeue", 30)).value
    advance(5)
    doomed = (await step("dequeue")).value
    await step("fail_message", doomed, True, "doomed")
    await step("stats")
    await step("stats", 40)
    await step("stats", -1)
    await step("list_messages")
    await step("list_messages", "all")
    await step("list_messages", "processing")
    await step("list_messages", "dead")
    await step("list_messages", "all", 2, held.id)
    await step("list_messages", "bogus")
    await step("list_messages", "all", 0)
    await step("delete_dead_letters", [doomed.id, 999])
    await step("delete_dead_letters", "bogus")
    await step("purge", "bogus")
    await step("purge", "dead")
    await step("purge", ["pending", "delayed"], 1)
    await step("purge")
    await step("stats")
    await step("close")
    await step("stats")
    await step("purge")
    return log


async def _compare_sync_and_async(
    scenario: Callable[[Call, Callable[[float], None]], Awaitable[list[tuple[str, Any]]]],
    make_queue_target: Callable[[], QueueTarget],
    clock: Any,
) -> list[tuple[str, Any]]:
    """Run ``scenario`` on a queue and on an AsyncQueue over another queue of the same
    backend (same clock readings, separate databases); assert every call gave the same
    picture; return the sync log."""
    sync_clock, async_clock = clock, type(clock)()
    sync_q = make_queue_target().open("jobs", clock=sync_clock)
    async_q = AsyncQueue(make_queue_target().open("jobs", clock=async_clock))

    async def call_sync(name: str, *args: Any) -> Any:
        return getattr(sync_q, name)(*args)

    async def call_async(name: str, *args: Any) -> Any:
        method = getattr(async_q, name, None)
        assert method is not None, f"AsyncQueue has no {name}()"
        result = method(*args)
        if name in NOT_COROUTINES:
            assert not inspect.isawaitable(result)
            return result
        assert inspect.isawaitable(result), f"AsyncQueue.{name} returned {result!r}"
        return await result

    try:
        expected = await scenario(call_sync, sync_clock.advance)
        got = await scenario(call_async, async_clock.advance)
    finally:
        sync_q.close()
        async_q.sync.close()
    assert [name for name, _ in got] == [name for name, _ in expected]
    for index, ((name, want), (_, have)) in enumerate(zip(expected, got, strict=True)):
        assert have == want, f"step {index} {name}: async {have} != sync {want}"
    return expected


@pytest.mark.asyncio
async def test_async_methods_return_same_results_as_sync(
    make_queue_target: Callable[[], QueueTarget], clock: Any
) -> None:
    """The same scenario on a sync queue and an AsyncQueue gives identical Results
    (Ok/Err, value types and values, error classes and kinds)."""
    log = await _compare_sync_and_async(_scenario, make_queue_target, clock)
    kinds = [d[2] for _, d in log if isinstance(d, tuple) and d[0] == "Err"]
    assert ErrorKind.CLOSED in kinds
    assert ErrorKind.LEASE_EXPIRED in kinds
    assert ErrorKind.SERIALIZATION in kinds


@pytest.mark.asyncio
async def test_async_inspection_methods_return_same_results_as_sync(
    make_queue_target: Callable[[], QueueTarget], clock: Any
) -> None:
    """stats(), list_messages() and purge() give the same Results in both APIs (the sync
    side also checks that they run at all)."""
    log = await _compare_sync_and_async(_newer_scenario, make_queue_target, clock)
    results = dict(log)
    assert results["close"] == ("NoneType", None)
    assert results["purge"][0] == "Err"  # the last purge, after close


@pytest.mark.asyncio
async def test_async_sqlite_list_queues_matches_sync(tmp_path: Path) -> None:
    """AsyncSQLiteQueue.list_queues (an SQLite file tool) gives SQLiteQueue.list_queues'
    Results, for a queue file and for a missing file."""
    path = tmp_path / "listed.db"
    SQLiteQueue(path, table_name="jobs").close()
    assert await AsyncSQLiteQueue.list_queues(path) == SQLiteQueue.list_queues(path) == Ok(["jobs"])
    missing = tmp_path / "missing.db"
    got, want = await AsyncSQLiteQueue.list_queues(missing), SQLiteQueue.list_queues(missing)
    assert _describe(got) == _describe(want)
    assert isinstance(got, Err)


@pytest.mark.asyncio
async def test_async_context_manager_closes(make_queue: MakeQueue) -> None:
    """`async with` closes the queue on exit."""
    async with AsyncQueue(make_queue(table_name="jobs")) as aq:
        assert ok(await aq.enqueue("x")) == 1
    result = await aq.enqueue("y")
    assert isinstance(result, Err)
    assert result.error.kind is ErrorKind.CLOSED


# -- waiting without blocking the loop ------------------------------------------------------


def calls_on_the_loop(queue: Queue, names: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy on the storage calls ``names`` of ``queue``: the list filled with the name of
    each one made on this thread (the event loop's), other than in a bridged call whose
    I/O is awaited, i.e. each call that blocks the loop."""
    loop_thread = threading.current_thread()
    backend = queue.parts.backend
    on_loop: list[str] = []
    for name in names:
        real = getattr(backend, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            if threading.current_thread() is loop_thread and not bridge.active():
                on_loop.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(backend, name, spy)
    return on_loop


@pytest.mark.asyncio
async def test_waiting_dequeue_does_not_block_event_loop(
    aq: AsyncQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While `await dequeue(wait=...)` waits, other tasks keep running (they hand a token
    back and forth 50 times before its 30 s wait is over), and none of its storage calls
    blocks the event loop's thread: they run in threads, or (natively, on PostgreSQL) in a
    bridged call whose I/O is awaited."""
    on_loop = calls_on_the_loop(aq.sync, ["claim", "watch", "next_due"], monkeypatch)
    waiter = asyncio.create_task(aq.dequeue(wait=30))
    ping, pong = asyncio.Event(), asyncio.Event()

    async def partner() -> None:
        for _ in range(50):
            await ping.wait()
            ping.clear()
            pong.set()

    other = asyncio.create_task(partner())
    for _ in range(50):
        ping.set()
        await asyncio.wait_for(pong.wait(), 15)
        pong.clear()
    await asyncio.wait_for(other, 15)
    assert not waiter.done(), "the waiting dequeue returned (or ran) before the others"
    message_id = ok(await aq.enqueue("end the wait"))
    assert ok(await asyncio.wait_for(waiter, 15)).id == message_id
    assert on_loop == [], f"storage calls blocking the event loop: {sorted(set(on_loop))}"


@pytest.mark.asyncio
async def test_waiting_dequeue_wakes_on_enqueue_from_another_task(aq: AsyncQueue) -> None:
    """A waiting consumer task gets another task's enqueue, long before its wait is over."""
    waiter = asyncio.create_task(aq.dequeue(wait=30))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    message_id = ok(await aq.enqueue({"hello": "world"}))
    message = ok(await asyncio.wait_for(waiter, 15))
    assert message is not None
    assert (message.id, message.payload) == (message_id, {"hello": "world"})


@pytest.mark.asyncio
async def test_async_wake_up_does_not_rely_on_polling(
    aq: AsyncQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no watcher at all and no fallback re-check (nothing from other connections can
    wake it), an in-process enqueue still wakes an async waiter: nothing else could end
    its 30 s wait in time."""
    no_polling(aq, monkeypatch)
    waiter = asyncio.create_task(aq.dequeue(wait=30))
    await asyncio.sleep(0.05)
    message_id = ok(await aq.enqueue("signalled"))
    message = ok(await asyncio.wait_for(waiter, 15))
    assert message is not None
    assert message.id == message_id


@pytest.mark.asyncio
async def test_waiting_dequeue_wakes_on_enqueue_from_a_thread(
    aq: AsyncQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync enqueue on another thread wakes an asyncio waiter (polling off: only the
    wake-up can end its 30 s wait in time)."""
    no_polling(aq, monkeypatch)
    timer = threading.Timer(0.1, lambda: aq.sync.enqueue("from a thread"))
    timer.start()
    message = ok(await asyncio.wait_for(aq.dequeue(wait=30), 15))
    timer.join(15)
    assert message is not None
    assert message.payload == "from a thread"


@pytest.mark.asyncio
async def test_waiting_dequeue_batch_wakes_on_enqueue_batch(aq: AsyncQueue) -> None:
    """`await dequeue_batch(wait=...)` returns the batch enqueued while it waited."""
    waiter = asyncio.create_task(aq.dequeue_batch(10, wait=30))
    await asyncio.sleep(0.05)
    ids = ok(await aq.enqueue_batch(["a", "b"]))
    messages = ok(await asyncio.wait_for(waiter, 15))
    assert [m.id for m in messages] == ids


@pytest.mark.asyncio
async def test_many_waiters_hold_no_threads(aq: AsyncQueue) -> None:
    """20 waiting consumers do not tie up the thread pool (a few threads): a plain call
    still runs while they wait 30 s each, one batch of 20 messages feeds all of them, and
    20 short waits all end."""
    waiters = [asyncio.create_task(aq.dequeue(wait=30)) for _ in range(20)]
    await asyncio.sleep(0.2)
    # Were the waits holding the pool's threads, this would wait for their 30 s.
    assert ok(await asyncio.wait_for(aq.is_drained(), 15)) is True
    ids = ok(await aq.enqueue_batch([f"m{i}" for i in range(20)]))
    results = await asyncio.wait_for(asyncio.gather(*waiters), 15)
    got = sorted(ok(r).id for r in results)
    assert got == sorted(ids)
    idle = [asyncio.create_task(aq.dequeue(wait=0.4)) for _ in range(20)]
    assert all(ok(r) is None for r in await asyncio.wait_for(asyncio.gather(*idle), 15))


@pytest.mark.asyncio
async def test_cancel_event_ends_async_wait(aq: AsyncQueue) -> None:
    """cancel + wake_waiters() ends an async wait early (of its 30 s) with nothing."""
    cancel = threading.Event()
    waiter = asyncio.create_task(aq.dequeue(wait=30, cancel=cancel))
    await asyncio.sleep(0.05)
    cancel.set()
    aq.wake_waiters()
    assert ok(await asyncio.wait_for(waiter, 15)) is None


@pytest.mark.asyncio
async def test_cancelling_the_waiting_task_leaves_message_for_others(aq: AsyncQueue) -> None:
    """Cancelling a task blocked in dequeue(wait=...) does not lose a later message."""
    waiter = asyncio.create_task(aq.dequeue(wait=10))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    message_id = ok(await aq.enqueue("after"))
    message = ok(await aq.dequeue(wait=1))
    assert message is not None
    assert message.id == message_id


def _slow_claims(
    aq: AsyncQueue, monkeypatch: pytest.MonkeyPatch, seconds: float
) -> tuple[threading.Event, threading.Event, Any]:
    """Make the queue's claims take ``seconds`` (the task is cancelled meanwhile; natively,
    the loop runs on): (claim entered, claim ended, the real claim to put back)."""
    backend = aq.sync._backend
    real_claim = backend.claim
    entered, claimed = threading.Event(), threading.Event()

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        bridge.sleep(seconds)
        try:
            return real_claim(*args, **kwargs)
        finally:
            claimed.set()

    monkeypatch.setattr(backend, "claim", slow_claim)
    return entered, claimed, real_claim


@pytest.mark.asyncio
async def test_cancelled_dequeue_does_not_strand_a_leased_message(
    aq: AsyncQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dequeue cancelled while its claim runs (asyncio.wait_for, a client disconnecting)
    must not leave the message leased to nobody until its lease (300 s) runs out."""
    message_id = ok(await aq.enqueue("job"))
    entered, claimed, real_claim = _slow_claims(aq, monkeypatch, 0.3)
    task = asyncio.create_task(aq.dequeue(wait=5))
    assert await asyncio.to_thread(entered.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The claim (its thread, or its bridged call) finishes by itself, then gives the
    # message back.
    assert await asyncio.to_thread(claimed.wait, 5)
    await eventually(
        lambda: _statuses_are_like(aq, [(message_id, "ready")]), what="the message back"
    )
    monkeypatch.setattr(aq.sync._backend, "claim", real_claim)
    message = ok(await aq.dequeue())
    assert message is not None
    assert message.id == message_id


# Opens the test's queue in a child process: sqlite:/// URL, or PostgreSQL URL and schema.
OPEN_QUEUE = """
import sys
from sqqueue import PostgresQueue, connect


def open_queue(url, schema, table="jobs"):
    if url.startswith("sqlite:"):
        return connect(url, table)
    return PostgresQueue(url, table, schema=schema)
"""

PRODUCER = (
    OPEN_QUEUE
    + """
import time

time.sleep(0.3)
with open_queue(sys.argv[1], sys.argv[2]) as queue:
    queue.enqueue({"t": time.monotonic()}).unwrap()
"""
)


@pytest.mark.asyncio
async def test_enqueue_from_another_process_wakes_async_waiter(
    make_queue: MakeQueue,
    queue_target: QueueTarget,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An asyncio waiter notices another process's enqueue, through the backend's change
    counter (PostgreSQL: NOTIFY; its once-a-second fallback re-check is turned off, so
    only a notification can end the 30 s wait)."""
    aq = AsyncQueue(make_queue(table_name="jobs", clock=None))
    monkeypatch.setattr(aq.sync._backend, "poll_fallback", None, raising=False)
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), queue_target.url, str(queue_target.schema), env=env
    )
    try:
        message = ok(await aq.dequeue(wait=30))
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert message is not None, "another process's enqueue was not noticed within 30 s"


# -- async claim ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_claim_completes_on_success(aq: AsyncQueue) -> None:
    """`async with aq.claim()` completes the message when the block succeeds."""
    message_id = ok(await aq.enqueue("job"))
    async with aq.claim(wait=1) as message:
        assert message is not None
        assert message.id == message_id
    assert status_rows(aq.sync) == []


@pytest.mark.asyncio
async def test_async_claim_fails_and_reraises(aq: AsyncQueue) -> None:
    """An exception in the block fails the message ("ValueError: text") and propagates."""
    message_id = ok(await aq.enqueue("job"))

    async def fail_in_block() -> None:
        async with aq.claim() as message:
            assert message is not None
            raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        await fail_in_block()
    assert status_rows(aq.sync) == [(message_id, "ready", 1)]
    again = ok(await aq.dequeue())
    assert again.last_error == "ValueError: nope"


@pytest.mark.asyncio
async def test_async_claim_yields_none_on_timeout(aq: AsyncQueue) -> None:
    """With nothing to claim, the block gets None after about `wait` seconds."""
    start = time.monotonic()
    async with aq.claim(wait=0.3) as message:
        assert message is None
    assert 0.25 <= time.monotonic() - start < 15


@pytest.mark.asyncio
async def test_async_claim_waits_for_another_task(aq: AsyncQueue) -> None:
    """claim(wait=...) suspends until another task enqueues."""

    async def produce() -> None:
        await asyncio.sleep(0.1)
        await aq.enqueue("late")

    producer = asyncio.create_task(produce())
    async with aq.claim(wait=3) as message:
        assert message is not None
        assert message.payload == "late"
    await producer
    assert ok(await aq.is_drained()) is True


# -- AsyncWorker ----------------------------------------------------------------------------


def _async_worker(aq: AsyncQueue, handler: Any, **options: Any) -> AsyncWorker:
    options.setdefault("handle_signals", False)
    options.setdefault("poll_wait", 0.5)
    return AsyncWorker(aq, handler, **options)


async def _stop(w: AsyncWorker, task: asyncio.Task[WorkerStats], **kw: Any) -> WorkerStats:
    w.stop(**kw)
    return await asyncio.wait_for(task, 30)


@pytest.mark.asyncio
async def test_async_worker_keeps_storage_calls_off_the_event_loop(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AsyncWorker runs its own steps around a handler on the loop, but none of its
    storage calls blocks the loop's thread: a claim, a failure, a result kept and the
    grouped completions run in threads, or (natively, on PostgreSQL) in a bridged call
    whose I/O is awaited."""
    queue = make_queue(table_name="jobs", clock=None, retention=3600)
    aq = AsyncQueue(queue)
    on_loop = calls_on_the_loop(queue, sorted(Backend.__abstractmethods__), monkeypatch)

    async def handle(message: Message) -> int:
        if message.payload % 2:
            raise ValueError("odd")
        return int(message.payload)

    for results in (False, True):
        ok(await aq.enqueue_batch([Item(i, max_attempts=1) for i in range(4)]))
        w = _async_worker(aq, handle, results=results)
        task = asyncio.create_task(w.run())
        await eventually(lambda s=w.stats: s.completed + s.failed == 4, what="four handled")
        stats = await _stop(w, task)
        assert (stats.completed, stats.failed) == (2, 2)
    assert on_loop == [], f"storage calls blocking the event loop: {sorted(set(on_loop))}"
    assert ok(await aq.stats()).dead == 4


@pytest.mark.asyncio
async def test_async_worker_calls_retry_delay_off_the_event_loop(aq: AsyncQueue) -> None:
    """retry_delay is code of yours, which may block: an AsyncWorker calls it in a
    thread, also where its own steps run on the loop (no hooks; natively on PostgreSQL)."""
    loop_thread = threading.current_thread()
    called_on_loop: list[bool] = []

    def retry_delay(message: Message, exc: BaseException) -> float:
        called_on_loop.append(threading.current_thread() is loop_thread)
        return 60.0

    async def handle(message: Message) -> None:
        raise ValueError("not yet")

    ok(await aq.enqueue("x"))
    w = _async_worker(aq, handle, retry_delay=retry_delay)
    task = asyncio.create_task(w.run())
    await eventually(lambda: w.stats.failed == 1, what="the failure")
    await _stop(w, task)
    assert called_on_loop == [False]


@pytest.mark.asyncio
async def test_async_worker_runs_once_and_stops_when_its_queue_is_closed(aq: AsyncQueue) -> None:
    """Closing the queue ends run() (a closed queue stays closed); a second run() raises."""

    async def handle(message: Message) -> None: ...

    w = _async_worker(aq, handle, poll_wait=30)
    task = asyncio.create_task(w.run())
    await asyncio.sleep(0.05)
    await aq.close()
    await asyncio.wait_for(task, 30)
    with pytest.raises(RuntimeError, match="runs once"):
        await w.run()


@pytest.mark.asyncio
async def test_async_worker_runs_the_coroutine_a_plain_callable_makes(aq: AsyncQueue) -> None:
    """``lambda m: handle(m, db)`` around an async handle: the coroutine it returns is the
    work, run and awaited (not taken for a return value); a generator function is refused."""
    ids = ok(await aq.enqueue_batch(["a", "b"]))
    ran: list[Any] = []

    async def handle(message: Message, suffix: str) -> str:
        await asyncio.sleep(0)
        ran.append(message.payload + suffix)
        return "done"

    w = _async_worker(aq, lambda m: handle(m, "!"))
    task = asyncio.create_task(w.run())
    await eventually(lambda: len(ran) == 2, what="both handled")
    stats = await _stop(w, task)
    assert sorted(ran) == ["a!", "b!"]
    assert (stats.completed, stats.failed) == (2, 0)
    assert ok(await aq.get_message(ids[0])) is None

    def generator(message: Message) -> Any:
        yield message

    with pytest.raises(ValueError, match="generator function"):
        _async_worker(aq, generator)


@pytest.mark.asyncio
async def test_async_worker_completes_fails_and_dead_letters(aq: AsyncQueue) -> None:
    """Return: completed. Raise: failed (error kept) and retried. Last attempt: DLQ. Hooks
    get the right arguments."""
    ok_id = ok(await aq.enqueue("ok"))
    flaky_id = ok(await aq.enqueue("flaky"))
    bad_id = ok(await aq.enqueue("bad", max_attempts=2))
    seen: list[tuple[Any, int, str | None]] = []
    successes: list[tuple[int, Any]] = []
    failures: list[tuple[int, int, str]] = []
    dead: list[tuple[int, BaseException]] = []

    async def handler(message: Message) -> Any:
        seen.append((message.payload, message.attempts, message.last_error))
        await asyncio.sleep(0)
        if message.payload == "bad" or (message.payload == "flaky" and message.attempts == 1):
            raise ValueError(f"{message.payload} {message.attempts}")
        return message.payload.upper()

    hooks = WorkerHooks(
        on_success=lambda m, v: successes.append((m.id, v)),
        on_failure=lambda m, e: failures.append((m.id, m.attempts, str(e))),
        on_dead_letter=lambda m, e: dead.append((m.id, e)),
    )
    w = _async_worker(aq, handler, hooks=hooks)
    task = asyncio.create_task(w.run())
    await eventually(lambda: len(dead) == 1 and len(successes) == 2, what="outcomes")
    stats = await _stop(w, task)
    assert sorted(successes) == [(ok_id, "OK"), (flaky_id, "FLAKY")]
    assert sorted(failures) == [
        (flaky_id, 1, "flaky 1"),
        (bad_id, 1, "bad 1"),
        (bad_id, 2, "bad 2"),
    ]
    assert dead[0][0] == bad_id
    assert isinstance(dead[0][1], ValueError)
    assert ("flaky", 2, "ValueError: flaky 1") in seen
    (letter,) = ok(await aq.get_dead_letters())
    assert (letter["id"], letter["attempts"], letter["last_error"]) == (
        bad_id,
        2,
        "ValueError: bad 2",
    )
    assert (stats.completed, stats.failed, stats.dead_lettered) == (2, 3, 1)
    assert status_rows(aq.sync) == [(bad_id, "dead", 2)]


@pytest.mark.asyncio
async def test_async_worker_concurrency(aq: AsyncQueue) -> None:
    """concurrency=4 runs four coroutines at once."""
    active, peak = [0], [0]
    gate = asyncio.Event()

    async def handler(message: Message) -> None:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        if active[0] == 4:
            gate.set()
        await asyncio.wait_for(gate.wait(), 30)
        active[0] -= 1

    ok(await aq.enqueue_batch(list(range(4))))
    w = _async_worker(aq, handler, concurrency=4)
    task = asyncio.create_task(w.run())
    await eventually(lambda: w.stats.completed == 4, what="four completions")
    stats = await _stop(w, task)
    assert peak[0] == 4
    assert (stats.completed, stats.failed) == (4, 0)


async def _lease_expiry(aq: AsyncQueue, message_id: int) -> datetime:
    """When the lease on a message being processed runs out, as stored."""
    entries = ok(await aq.list_messages("processing"))
    (entry,) = [e for e in entries if e["id"] == message_id]
    expiry = entry["lease_expires_at"]
    assert isinstance(expiry, datetime)
    return expiry


@pytest.mark.asyncio
async def test_async_worker_heartbeat_keeps_slow_coroutines_lease(
    aq: AsyncQueue, make_queue: MakeQueue, clock: FakeClock
) -> None:
    """While a coroutine runs, its lease is extended again and again, so no other consumer
    gets the message: on the queue's (fake) clock it outlives its 30 s lease more than
    three times over, and each time the heartbeat has moved the lease on."""
    message_id = ok(await aq.enqueue("slow"))
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(message: Message) -> None:
        started.set()
        await asyncio.wait_for(release.wait(), 60)

    spy = make_queue(table_name="jobs")
    w = _async_worker(aq, handler, visibility_timeout=30, heartbeat=0.05)
    task = asyncio.create_task(w.run())
    try:
        await asyncio.wait_for(started.wait(), 15)
        for _ in range(5):
            before = await _lease_expiry(aq, message_id)
            clock.advance(20)  # most of the lease: a missed heartbeat would lose it next time

            async def extended(b: datetime = before) -> bool:
                return await _lease_expiry(aq, message_id) >= b + timedelta(seconds=20)

            await eventually(extended, what="the heartbeat to extend the lease")
            assert ok(spy.dequeue()) is None, "another consumer got the message"
    finally:
        release.set()
    await eventually(lambda: w.stats.completed == 1, what="completion")
    stats = await _stop(w, task)
    assert (stats.completed, stats.failed) == (1, 0)
    assert status_rows(aq.sync) == []


def _leases(queue: Queue) -> dict[int, datetime]:
    """When the leases of the messages being processed run out, as stored (a sync call:
    the loop's pool may be full)."""
    return {e["id"]: e["lease_expires_at"] for e in ok(queue.list_messages("processing"))}


async def _leases_kept(queue: Queue, clock: FakeClock, ids: list[int], rounds: int = 2) -> None:
    """The messages ``ids`` stay leased, round after round: the (fake) clock moves on most
    of a 30 s lease, and each time every lease is extended again; meanwhile another
    consumer gets nothing."""
    for _ in range(rounds):
        before = _leases(queue)
        assert sorted(before) == sorted(ids), before
        clock.advance(20)  # most of the lease: a missed heartbeat would lose it next time

        def extended(b: dict[int, datetime] = before) -> bool:
            now = _leases(queue)
            return all(now.get(i, b[i]) >= b[i] + timedelta(seconds=20) for i in ids)

        await eventually(extended, what="the heartbeat to extend every lease")
        assert ok(queue.dequeue()) is None, "another consumer got a message"


@pytest.fixture
def small_pool() -> Iterator[Callable[[int], None]]:
    """Give the running loop a default thread pool (asyncio.to_thread's) of that size."""
    pools: list[ThreadPoolExecutor] = []

    def use(size: int) -> None:
        pools.append(ThreadPoolExecutor(size, thread_name_prefix="small-pool"))
        asyncio.get_running_loop().set_default_executor(pools[-1])

    yield use
    for pool in pools:
        pool.shutdown(wait=False)


@pytest.mark.asyncio
async def test_async_worker_heartbeat_does_not_wait_for_the_loops_pool(
    aq: AsyncQueue, make_queue: MakeQueue, clock: FakeClock, small_pool: Callable[[int], None]
) -> None:
    """Handlers that await asyncio.to_thread (a blocking client library, say) fill the
    loop's default pool, more of them than it has threads: the heartbeat, on a thread of
    its own, still extends their leases, so no other consumer gets their messages."""
    size, count = 2, 4
    small_pool(size)
    ids = ok(await aq.enqueue_batch([f"job-{n}" for n in range(count)]))
    everyone_running = asyncio.Event()
    release = threading.Event()
    running: list[int] = []
    in_pool = threading.Semaphore(0)

    def blocking_call() -> None:
        in_pool.release()
        release.wait(60)

    async def handler(message: Message) -> None:
        running.append(message.id)
        if len(running) == count:
            everyone_running.set()
        await asyncio.wait_for(everyone_running.wait(), 30)
        await asyncio.to_thread(blocking_call)

    spy = make_queue(table_name="jobs")
    w = _async_worker(aq, handler, concurrency=count, visibility_timeout=30, heartbeat=1)
    task = asyncio.create_task(w.run())
    try:
        for _ in range(size):  # every thread of the pool blocked, the other calls queued
            assert await run_in_own_thread(in_pool.acquire, True, 30)
        await _leases_kept(spy, clock, ids)
    finally:
        release.set()
    await eventually(lambda: w.stats.completed == count, what="completions")
    stats = await _stop(w, task)
    assert (stats.completed, stats.failed) == (count, 0)


@pytest.mark.asyncio
async def test_an_async_worker_heartbeat_round_that_fails_is_said_and_goes_on(
    aq: AsyncQueue, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat round that raises is logged at ERROR with its cause, and the heartbeat
    goes on with its next rounds (it used to end silently, leases no longer extended)."""
    ok(await aq.enqueue("slow"))
    release = asyncio.Event()
    handled: list[int] = []

    async def handler(message: Message) -> None:
        await asyncio.wait_for(release.wait(), 30)
        handled.append(message.id)

    w = _async_worker(aq, handler, visibility_timeout=3, heartbeat=0.05)
    real_beat = w._beat
    rounds: list[int] = []

    def beat() -> list[Any]:
        rounds.append(len(rounds) + 1)
        if len(rounds) == 2:
            raise RuntimeError("can't start new thread")
        return real_beat()

    monkeypatch.setattr(w, "_beat", beat)
    task = asyncio.create_task(w.run())
    await eventually(lambda: len(rounds) >= 4, what="heartbeat rounds after the failed one")
    release.set()
    await eventually(lambda: w.stats.completed == 1, what="the message completed")
    stats = await _stop(w, task)
    assert (stats.completed, stats.failed) == (1, 0)
    said = [rec for rec in caplog.records if "heartbeat round failed" in rec.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    assert "can't start new thread" in said[0].getMessage()


@pytest.mark.asyncio
@pytest.mark.parametrize("slow", ["on_start", "retry_delay"])
async def test_async_worker_keeps_leases_while_slow_hooks_fill_the_loops_pool(
    aq: AsyncQueue,
    make_queue: MakeQueue,
    clock: FakeClock,
    small_pool: Callable[[int], None],
    slow: str,
) -> None:
    """Hooks and retry_delay (plain functions, which may take their time) run on the
    loop's default pool. While slow ones fill it, the messages whose steps wait for one of
    its threads keep their leases: those waiting for on_start to start them count as
    running for the heartbeat, which has a thread of its own."""
    size, count = 2, 4
    small_pool(size)
    ids = ok(await aq.enqueue_batch([f"job-{n}" for n in range(count)]))
    release = threading.Event()
    in_pool = threading.Semaphore(0)

    def slow_call(*_: Any) -> float:
        in_pool.release()
        release.wait(60)
        return 60.0

    async def handler(message: Message) -> None:
        if slow == "retry_delay":
            raise RuntimeError("fails, and waits for its retry_delay")

    options: dict[str, Any] = {"retry_delay": slow_call}
    if slow == "on_start":
        options = {"hooks": WorkerHooks(on_start=slow_call)}
    spy = make_queue(table_name="jobs")
    w = _async_worker(aq, handler, concurrency=count, visibility_timeout=30, heartbeat=1, **options)
    task = asyncio.create_task(w.run())
    try:
        for _ in range(size):  # every thread of the pool blocked, the other steps queued
            assert await run_in_own_thread(in_pool.acquire, True, 30)
        await eventually(lambda: len(_leases(spy)) == count, what="every message taken")
        await _leases_kept(spy, clock, ids)
    finally:
        release.set()
    settled = "completed" if slow == "on_start" else "failed"
    await eventually(lambda: getattr(w.stats, settled) == count, what=f"{settled} all")
    stats = await _stop(w, task)
    assert (stats.started, getattr(stats, settled)) == (count, count)


@pytest.mark.asyncio
@pytest.mark.slow
async def test_async_worker_task_timeout_cancels_hung_coroutine(aq: AsyncQueue) -> None:
    """task_timeout cancels the hung coroutine, fails its message with a TimeoutError text,
    and the worker goes on with other messages."""
    cancelled = asyncio.Event()
    log: list[tuple[Any, int, str | None]] = []

    async def handler(message: Message) -> None:
        log.append((message.payload, message.attempts, message.last_error))
        if message.payload == "hang" and message.attempts == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    hang_id = ok(await aq.enqueue("hang"))
    ok(await aq.enqueue("other"))
    # task_timeout tells a hung coroutine from a quick one: the quick ones must stay below
    # it even when the loop waits for a busy CPU, so it is not tiny.
    w = _async_worker(aq, handler, task_timeout=2, heartbeat=0.05, visibility_timeout=30)
    task = asyncio.create_task(w.run())
    await eventually(lambda: len(log) == 3 and w.stats.completed == 2, what="timeout and others")
    stats = await _stop(w, task)
    assert cancelled.is_set(), "the hung coroutine was not cancelled"
    assert sorted((p, a) for p, a, _ in log) == [("hang", 1), ("hang", 2), ("other", 1)]
    retry_error = next(e for p, a, e in log if (p, a) == ("hang", 2))
    assert retry_error is not None
    assert retry_error.startswith("TimeoutError"), retry_error
    assert (stats.timed_out, stats.failed, stats.completed) == (1, 1, 2)
    assert status_rows(aq.sync) == []
    assert hang_id not in [r["id"] for r in ok(await aq.get_dead_letters())]


@pytest.mark.asyncio
async def test_async_worker_task_timeout_with_default_heartbeat(aq: AsyncQueue) -> None:
    """task_timeout=0.5 with the default 300 s lease fires soon after 0.5 s, not at the
    next lease heartbeat, 100 s away (the bound below is far from both)."""
    started = asyncio.Event()

    async def handler(message: Message) -> None:
        started.set()
        await asyncio.sleep(30)

    ok(await aq.enqueue("hang", max_attempts=1))
    w = _async_worker(aq, handler, task_timeout=0.5, grace_period=0.5)
    task = asyncio.create_task(w.run())
    await asyncio.wait_for(started.wait(), 15)
    start = time.monotonic()
    while w.stats.timed_out == 0 and time.monotonic() - start < 30:
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - start
    await _stop(w, task, immediate=True)
    assert w.stats.timed_out == 1, f"task_timeout=0.5 not enforced after {elapsed:.1f} s"


class Unprintable(Exception):
    """An exception whose message cannot be read."""

    def __str__(self) -> str:
        raise RuntimeError("no message for you")


class NotAnException(BaseException):
    """A BaseException of the application's own (not an Exception)."""


ASYNC_HANDLER_ESCAPES: list[tuple[str, BaseException]] = [
    ("coroutine", asyncio.CancelledError()),
    ("coroutine", SystemExit(3)),
    ("coroutine", KeyboardInterrupt()),
    ("coroutine", NotAnException("custom")),
    ("coroutine", Unprintable()),
    ("function", SystemExit(3)),
    ("function", KeyboardInterrupt()),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "raised"),
    ASYNC_HANDLER_ESCAPES,
    ids=[f"{k}-{type(e).__name__}" for k, e in ASYNC_HANDLER_ESCAPES],
)
async def test_async_worker_counts_whatever_a_handler_raises_as_its_failure(
    aq: AsyncQueue, caplog: pytest.LogCaptureFixture, kind: str, raised: BaseException
) -> None:
    """A CancelledError the handler lets escape, SystemExit, KeyboardInterrupt, any
    BaseException, an exception whose str() raises, from a coroutine or a plain function:
    the message is failed (retried, then dead-lettered), an ERROR says so, the event loop
    is not stopped, and the same single runner goes on."""
    caplog.set_level(logging.INFO, logger="sqqueue")
    boom = ok(await aq.enqueue("boom", max_attempts=2))
    after = ok(await aq.enqueue("after"))
    seen: list[tuple[Any, int]] = []

    def handle(message: Message) -> None:
        seen.append((message.payload, message.attempts))
        if message.payload == "boom":
            raise raised

    async def coroutine(message: Message) -> None:
        await asyncio.sleep(0)
        handle(message)

    w = _async_worker(aq, coroutine if kind == "coroutine" else handle)
    task = asyncio.create_task(w.run())
    dead = [(boom, "dead", 2)]
    await eventually(lambda: _statuses_are(aq, dead), timeout=15, what="both tries, then the DLQ")
    stats = await _stop(w, task)
    assert sorted(seen) == [("after", 1), ("boom", 1), ("boom", 2)]
    (letter,) = ok(await aq.get_dead_letters())
    assert letter["last_error"].startswith(type(raised).__name__), letter["last_error"]
    assert (stats.started, stats.completed, stats.failed, stats.dead_lettered) == (3, 1, 2, 1)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert sum(f"message {boom}" in e and type(raised).__name__ in e for e in errors) == 2, errors
    assert after not in [s[0] for s in status_rows(aq.sync)]


@pytest.mark.asyncio
async def test_a_plain_handler_raising_stop_iteration_fails_only_its_message(
    aq: AsyncQueue,
) -> None:
    """A plain function's StopIteration (``next()`` on an empty iterator) cannot cross an
    asyncio future: it still fails its message, as any exception does, and the single
    runner goes on (it used to hold its slot and extend that lease for ever)."""
    empty = ok(await aq.enqueue([], max_attempts=1))
    after = ok(await aq.enqueue(["x"]))

    def first(message: Message) -> Any:
        return next(iter(message.payload))

    w = _async_worker(aq, first, concurrency=1)
    task = asyncio.create_task(w.run())
    await eventually(
        lambda: _statuses_are(aq, [(empty, "dead", 1)]), timeout=15, what="failed, then dead"
    )
    stats = await _stop(w, task)
    (letter,) = ok(await aq.get_dead_letters())
    assert letter["last_error"].startswith("StopIteration"), letter["last_error"]
    assert (stats.completed, stats.failed) == (1, 1)
    assert after not in [s[0] for s in status_rows(aq.sync)]


@pytest.mark.asyncio
async def test_a_function_run_in_its_own_thread_can_raise_stop_iteration() -> None:
    """What the function raises reaches the awaiting coroutine; a StopIteration, which a
    future refuses, as a coroutine passes it on: a RuntimeError caused by it."""
    with pytest.raises(RuntimeError, match="raised StopIteration") as raised:
        await asyncio.wait_for(run_in_own_thread(next, iter([])), 10)
    assert isinstance(raised.value.__cause__, StopIteration)
    with pytest.raises(KeyError):
        await asyncio.wait_for(run_in_own_thread({}.__getitem__, "k"), 10)


@pytest.mark.asyncio
async def test_a_timed_out_handler_that_ignores_its_cancellation_gives_up_its_slot(
    aq: AsyncQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """task_timeout: a coroutine that swallows the cancellation runs on, but its message
    is failed and the worker's only slot takes the next messages (it used to wait for
    that handler for ever, as a Worker's thread is replaced)."""
    stuck = ok(await aq.enqueue("stuck", max_attempts=1))
    rest = [ok(await aq.enqueue(name)) for name in ("a", "b")]
    release = asyncio.Event()  # lets the stubborn handler end, for the test to finish
    done: list[str] = []

    async def handler(message: Message) -> None:
        if message.payload == "stuck":
            while not release.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.05)
        done.append(message.payload)

    w = _async_worker(aq, handler, concurrency=1, task_timeout=1, visibility_timeout=5)
    task = asyncio.create_task(w.run())
    try:
        await eventually(lambda: _done(done, ["a", "b"]), timeout=20, what="the others handled")
        # (their grouped acks land a moment after their handlers return)
        await eventually(
            lambda: _statuses_are_like(aq, [(stuck, "dead")]), timeout=20, what="a, b completed"
        )
    finally:
        release.set()
        stats = await _stop(w, task)
    assert (stats.timed_out, stats.completed) == (1, 2), stats
    assert rest == [stuck + 1, stuck + 2]
    assert any("ignores cancellation" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_giving_up_on_a_timed_out_handler_never_touches_the_next_one(
    aq: AsyncQueue,
) -> None:
    """The heartbeat (a thread) times a handler out as it returns, and its runner has
    gone on to its next message by the time the loop acts: that next handler is neither
    cancelled nor let go (it was, and its message stayed leased with nobody on it)."""
    from sqqueue.worker import RunningTask

    ok(await aq.enqueue("x"))
    message = ok(await aq.dequeue())
    w = _async_worker(aq, lambda m: None, task_timeout=1)
    key = ("task", 0)
    timed_out = RunningTask(message, 0.0, 0.0)
    timed_out.abandoned = True
    next_one = RunningTask(message, 0.0, 0.0)
    handler = asyncio.ensure_future(asyncio.sleep(30))
    given_up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    w._tasks[key], w._running[key], w._given_up[key] = next_one, handler, given_up
    try:
        w._give_up(key, timed_out)
        await asyncio.sleep(0)
        assert not handler.cancelled() and not given_up.done()
        w._tasks[key] = timed_out  # still on the timed-out one: given up on
        w._give_up(key, timed_out)
        await asyncio.sleep(0)
        assert handler.cancelled() and given_up.done()
    finally:
        handler.cancel()
        ok(await aq.complete(message))


async def _done(done: list[str], expected: list[str]) -> bool:
    return sorted(done) == expected


async def _statuses_are(aq: AsyncQueue, expected: list[tuple[int, str, int]]) -> bool:
    return status_rows(aq.sync) == expected


async def _statuses_are_like(aq: AsyncQueue, expected: list[tuple[int, str]]) -> bool:
    return [s[:2] for s in status_rows(aq.sync)] == expected


@pytest.mark.asyncio
async def test_async_handler_escape_is_recorded_as_what_happened_not_as_a_timeout(
    aq: AsyncQueue,
) -> None:
    """With task_timeout, a coroutine that lets a CancelledError of its own escape has
    that recorded, not a timeout."""
    boom = ok(await aq.enqueue("boom", max_attempts=1))

    async def handler(message: Message) -> None:
        inner = asyncio.ensure_future(asyncio.sleep(30))
        inner.cancel()
        await inner  # raises CancelledError: the handler does not catch it

    w = _async_worker(aq, handler, task_timeout=3, heartbeat=0.05)
    task = asyncio.create_task(w.run())
    await eventually(lambda: _has_dead_letters(aq), timeout=15, what="dead letter")
    stats = await _stop(w, task)
    (letter,) = ok(await aq.get_dead_letters())
    assert (letter["id"], letter["last_error"]) == (boom, "CancelledError")
    assert (stats.timed_out, stats.failed, stats.dead_lettered) == (0, 1, 1)


async def _has_dead_letters(aq: AsyncQueue) -> bool:
    return bool(ok(await aq.get_dead_letters()))


@pytest.mark.asyncio
async def test_cancelling_async_worker_run_stops_its_runners_and_heartbeat(
    aq: AsyncQueue,
) -> None:
    """Cancelling the task running AsyncWorker.run() (an application shutting down) stops
    everything: running messages go back to the queue, no handler or heartbeat goes on."""
    held = ok(await aq.enqueue("held"))
    started = asyncio.Event()

    async def handler(message: Message) -> None:
        started.set()
        await asyncio.sleep(30)

    w = _async_worker(aq, handler, grace_period=30)
    task = asyncio.create_task(w.run())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert status_rows(aq.sync) == [(held, "ready", 1)]
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert [t for t in others if not t.done()] == [], others


@pytest.mark.asyncio
async def test_cancelling_run_while_it_waits_for_handlers_to_finish_still_shuts_down(
    aq: AsyncQueue,
) -> None:
    """stop() (SIGTERM), then the application cancels the task running run() while it
    waits out the grace period: every step of shutdown still runs (handlers cancelled,
    their messages given back, nothing left running) and run() ends cancelled."""
    held = ok(await aq.enqueue("held"))
    started = asyncio.Event()
    cancelled: list[int] = []

    async def handler(message: Message) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(message.id)
            raise

    w = _async_worker(aq, handler, grace_period=30)
    task = asyncio.create_task(w.run())
    await asyncio.wait_for(started.wait(), 10)
    w.stop()
    await eventually(lambda: w.stopping, what="the worker stopping")
    await asyncio.sleep(0.1)  # (into the grace period's wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert cancelled == [held]
    assert status_rows(aq.sync) == [(held, "ready", 1)]
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert [t for t in others if not t.done()] == [], others


@pytest.mark.asyncio
async def test_a_message_timed_out_while_on_start_runs_is_not_handled(
    raq: AsyncQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """A message whose on_start hook outlasts task_timeout is failed as timed out; when
    the hook returns, the handler is not called for that attempt (the message may be
    running elsewhere by then), only for the next one."""
    message_id = ok(await raq.enqueue("x"))
    in_hook, go_on = threading.Event(), threading.Event()
    handled: list[int] = []

    def on_start(message: Message) -> None:
        if message.attempts == 1:
            in_hook.set()
            go_on.wait(30)

    async def handler(message: Message) -> None:
        handled.append(message.attempts)

    caplog.set_level(logging.INFO, logger="sqqueue.worker")
    w = _async_worker(
        raq,
        handler,
        task_timeout=0.5,
        heartbeat=0.05,
        visibility_timeout=30,
        hooks=WorkerHooks(on_start=on_start),
    )
    task = asyncio.create_task(w.run())
    try:
        await eventually(in_hook.is_set, what="the on_start hook")
        await eventually(lambda: w.stats.timed_out == 1, what="the timeout")
    finally:
        go_on.set()
    ended = f"abandoned message {message_id} ended"
    await eventually(lambda: ended in caplog.text, what="the first attempt past its hook")
    await eventually(lambda: handled == [2], what="the second attempt handled")
    w.stop()
    await asyncio.wait_for(task, 10)
    assert handled == [2]


@pytest.mark.asyncio
async def test_async_worker_stops_gracefully(aq: AsyncQueue) -> None:
    """stop() from another thread: the running coroutine finishes and is completed, nothing
    new is taken, and run() returns."""
    slow_id = ok(await aq.enqueue("slow"))
    next_id = ok(await aq.enqueue("next"))
    started, finished = asyncio.Event(), asyncio.Event()

    async def handler(message: Message) -> None:
        started.set()
        await asyncio.sleep(0.5)
        finished.set()

    w = _async_worker(aq, handler, grace_period=30)
    task = asyncio.create_task(w.run())
    await asyncio.wait_for(started.wait(), 15)
    begin = time.monotonic()
    await asyncio.to_thread(w.stop)
    stats = await asyncio.wait_for(task, 30)
    assert time.monotonic() - begin < 15, "stop() waited for the whole grace period"
    assert finished.is_set()
    assert (stats.started, stats.completed) == (1, 1)
    assert status_rows(aq.sync) == [(next_id, "ready", 0)]
    assert slow_id not in [s[0] for s in status_rows(aq.sync)]


@pytest.mark.asyncio
async def test_async_worker_stop_gives_back_prefetched_messages_at_once(aq: AsyncQueue) -> None:
    """A graceful stop gives back the messages taken but not started as it begins, not
    once the running handlers have ended: other consumers can serve them meanwhile."""
    started, release = asyncio.Event(), asyncio.Event()

    async def handler(message: Message) -> None:
        if message.payload == "slow":
            started.set()
            await release.wait()

    ids = ok(await aq.enqueue_batch(["quick"] * 5 + ["slow"] + ["quick"] * 20))
    w = _async_worker(aq, handler, grace_period=30)  # (the fake clock: nothing goes stale)
    task = asyncio.create_task(w.run())
    try:
        await asyncio.wait_for(started.wait(), 15)
        await eventually(lambda: w.stats.completed == 5, what="the quick ones before it")
        held = len(w._prefetched)  # (the one runner is busy: nothing else takes them)
        assert held > 0, "nothing prefetched behind the slow message"
        w.stop()
        await eventually(lambda: w.stats.released == held, what="the prefetched given back")
        assert not task.done()  # still waiting for the slow handler
        rows = await asyncio.to_thread(status_rows, aq.sync)
        assert rows == [(ids[5], "processing", 1)] + [(i, "ready", 0) for i in ids[6:]]
    finally:
        release.set()
    stats = await asyncio.wait_for(task, 30)
    assert (stats.completed, stats.released) == (6, held)


@pytest.mark.asyncio
async def test_async_worker_whose_queue_is_closed_starts_none_of_the_messages_it_holds(
    aq: AsyncQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """Closed while messages wait prefetched (here by a handler), the queue can acknowledge
    none of them: the worker stops without starting any, and says why, once, at ERROR."""
    closed = False
    after_close: list[int] = []

    async def handler(message: Message) -> None:
        nonlocal closed
        if closed:
            after_close.append(message.id)
        elif message.payload == 5:
            await aq.close()
            closed = True

    ok(await aq.enqueue_batch(list(range(40))))
    await asyncio.wait_for(_async_worker(aq, handler).run(), 30)
    assert closed
    assert after_close == []
    said = [rec for rec in caplog.records if "the worker stops" in rec.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    assert "closed" in said[0].getMessage()


@pytest.mark.asyncio
async def test_async_worker_requeues_coroutine_running_after_grace(aq: AsyncQueue) -> None:
    """After grace_period the still-running coroutine is cancelled and its message is
    pending again at once (attempt counted)."""
    message_id = ok(await aq.enqueue("stuck"))
    started = asyncio.Event()

    async def handler(message: Message) -> None:
        started.set()
        await asyncio.sleep(30)

    w = _async_worker(aq, handler, grace_period=0.3)
    task = asyncio.create_task(w.run())
    await asyncio.wait_for(started.wait(), 15)
    begin = time.monotonic()
    stats = await _stop(w, task)
    assert time.monotonic() - begin < 15, "stop() waited for the coroutine"
    assert stats.completed == 0
    assert status_rows(aq.sync) == [(message_id, "ready", 1)]


@pytest.mark.asyncio
async def test_async_worker_idle_stop_is_prompt(aq: AsyncQueue) -> None:
    """An idle AsyncWorker waiting with poll_wait=30 stops at once."""
    w = _async_worker(aq, lambda m: asyncio.sleep(0), poll_wait=30, concurrency=3)
    task = asyncio.create_task(w.run())
    await asyncio.sleep(0.2)
    begin = time.monotonic()
    stats = await _stop(w, task)
    assert time.monotonic() - begin < 10, "stop() waited for the 30 s poll"
    assert stats.started == 0


@pytest.mark.asyncio
async def test_async_worker_accepts_sync_queue(make_queue: MakeQueue) -> None:
    """AsyncWorker also takes a plain (sync) queue."""
    queue = make_queue(table_name="jobs")
    ok(queue.enqueue("x"))
    done: list[Any] = []

    async def handler(message: Message) -> None:
        done.append(message.payload)

    w = AsyncWorker(queue, handler, handle_signals=False, poll_wait=0.5)
    task = asyncio.create_task(w.run())
    await eventually(lambda: w.stats.completed == 1, what="completion")
    await _stop(w, task)
    assert done == ["x"]
    assert ok(queue.is_drained()) is True


ASYNC_WORKER_SCRIPT = (
    OPEN_QUEUE
    + """
import asyncio
import contextlib
from sqqueue import AsyncQueue, AsyncWorker


async def handle(message):
    print(f"started {message.id}", flush=True)
    await asyncio.sleep(message.payload["sleep"])
    print(f"finished {message.id}", flush=True)


async def main():
    async with AsyncQueue(open_queue(sys.argv[1], sys.argv[2])) as queue:
        stats = await AsyncWorker(queue, handle, grace_period=60, poll_wait=0.5).run()
    print(f"stopped completed={stats.completed}", flush=True)


asyncio.run(main())
"""
)


@pytest.mark.slow
def test_async_worker_process_stops_gracefully_on_sigterm(
    make_queue: MakeQueue, queue_target: QueueTarget, tmp_path: Path
) -> None:
    """SIGTERM to a process running AsyncWorker.run() on its main thread: the in-flight
    coroutine finishes and is completed, the process exits 0, nothing is left processing."""
    queue = make_queue(table_name="jobs", clock=None)
    slow_id = ok(queue.enqueue({"sleep": 1.0}))
    next_id = ok(queue.enqueue({"sleep": 0}))
    script = tmp_path / "async_worker.py"
    script.write_text(ASYNC_WORKER_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), queue_target.url, str(queue_target.schema)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()  # bounded: the script prints it within ~1 s
        assert first == f"started {slow_id}", first
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=45)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out
    assert elapsed < 30, f"{elapsed:.1f} s: the worker waited for its grace period"
    assert f"finished {slow_id}" in out
    assert "stopped completed=1" in out
    assert status_rows(queue) == [(next_id, "ready", 0)]


TWO_ASYNC_WORKERS_SCRIPT = """
import asyncio, logging, sys
from sqqueue import AsyncSQLiteQueue, AsyncWorker

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(message)s")


async def work(name):
    async def handle(message):
        print(f"started {name} {message.id}", flush=True)
        await asyncio.sleep(message.payload)
        print(f"finished {name} {message.id}", flush=True)

    async with AsyncSQLiteQueue(sys.argv[1], table_name=name) as queue:
        worker = AsyncWorker(queue, handle, name=name, grace_period=60, poll_wait=0.5)
        stats = await worker.run()
    print(f"stopped {name} completed={stats.completed} requeued={stats.requeued}", flush=True)


async def main():
    await asyncio.gather(work("long"), work("short"))


asyncio.run(main())
print("exited normally", flush=True)
"""


def test_a_signal_stops_every_async_worker_of_the_loop(tmp_path: Path) -> None:
    """Two AsyncWorkers run together on one loop: a SIGTERM stops both gracefully; once
    one has ended, a second SIGTERM still reaches the other, which stops at once, gives
    its running message back, and the program ends normally."""
    db = tmp_path / "q.db"
    long_queue = SQLiteQueue(db, table_name="long")
    short_queue = SQLiteQueue(db, table_name="short")
    long_id = ok(long_queue.enqueue(60))
    short_id = ok(short_queue.enqueue(0.5))
    script = tmp_path / "two_workers.py"
    script.write_text(TWO_ASYNC_WORKERS_SCRIPT)
    with ScriptProcess(script, str(db)) as child:
        child.expect(f"started long {long_id}", f"started short {short_id}")
        child.proc.send_signal(signal.SIGTERM)
        graceful = "SIGTERM received, shutting down gracefully"
        child.expect(f"worker long: {graceful}", f"worker short: {graceful}")
        child.expect("stopped short completed=1")
        assert child.proc.poll() is None, "the first signal must not stop the other at once"
        child.proc.send_signal(signal.SIGTERM)
        child.expect(
            "worker long: second SIGTERM, stopping immediately",
            "stopped long completed=0 requeued=1",
            "exited normally",
        )
        assert child.proc.wait(15) == 0, child.lines
    assert f"finished long {long_id}" not in child.lines
    with long_queue, short_queue:
        assert status_rows(long_queue) == [(long_id, "ready", 1)]
        assert status_rows(short_queue) == []


RESTORED_HANDLERS_SCRIPT = """
import asyncio, os, signal, sys
from sqqueue import AsyncSQLiteQueue, AsyncWorker

received = []


def own(signum, frame):
    received.append(signal.Signals(signum).name)


signal.signal(signal.SIGTERM, own)
signal.signal(signal.SIGINT, own)


def handlers():
    return [signal.getsignal(s) is own for s in (signal.SIGTERM, signal.SIGINT)]


async def handle(message):
    pass


async def main():
    async with AsyncSQLiteQueue(sys.argv[1], table_name="jobs") as queue:
        first, second = (AsyncWorker(queue, handle, name=n, poll_wait=0.5) for n in "ab")
        runs = [asyncio.create_task(w.run()) for w in (first, second)]
        await asyncio.sleep(0)  # both running (they take the signals as they start)
        print("while both run, the program's own:", handlers(), flush=True)
        first.stop()
        await runs[0]
        print("while one runs, the program's own:", handlers(), flush=True)
        second.stop()
        await runs[1]
        print("after both, the program's own:", handlers(), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # (up to 10 s)
            if len(received) == 2:
                break
            await asyncio.sleep(0.01)
        print("received on the loop:", sorted(received), flush=True)


asyncio.run(main())
print("after asyncio.run, the program's own:", handlers(), flush=True)
"""


def test_async_worker_puts_the_programs_signal_handlers_back(tmp_path: Path) -> None:
    """AsyncWorkers take SIGTERM and SIGINT while they run; once the last of them has
    ended, the handlers the program had installed are back, on the loop still running
    and after it."""
    script = tmp_path / "restored.py"
    script.write_text(RESTORED_HANDLERS_SCRIPT)
    done = run_script(script, str(tmp_path / "q.db"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "while both run, the program's own: [False, False]",
        "while one runs, the program's own: [False, False]",
        "after both, the program's own: [True, True]",
        "received on the loop: ['SIGINT', 'SIGTERM']",
        "after asyncio.run, the program's own: [True, True]",
    ], done.stdout + done.stderr


# -- a web app ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_starlette_app_round_trips_messages(make_queue: MakeQueue) -> None:
    """A Starlette app enqueues and dequeues through AsyncQueue; messages round-trip,
    errors map to HTTP errors, and a waiting request is woken by another request."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from starlette.testclient import TestClient

    aq = AsyncQueue(make_queue(table_name="web"))

    async def post_message(request: Request) -> Response:
        body = await request.json()
        result = await aq.enqueue(body["payload"], priority=body.get("priority"))
        if isinstance(result, Err):
            return JSONResponse({"error": result.error.kind.name}, status_code=422)
        return JSONResponse({"id": result.value}, status_code=201)

    async def take_message(request: Request) -> Response:
        wait = float(request.query_params.get("wait", 0))
        message = (await aq.dequeue(wait=wait)).unwrap()
        if message is None:
            return Response(status_code=204)
        ok(await aq.complete(message))
        return JSONResponse(
            {"id": message.id, "payload": message.payload, "attempts": message.attempts}
        )

    app = Starlette(
        routes=[
            Route("/messages", post_message, methods=["POST"]),
            Route("/messages/next", take_message, methods=["POST"]),
        ]
    )
    payloads = [{"to": "ada"}, "plain text", [1, 2, 3], 42]
    with TestClient(app) as client:
        ids = []
        for payload in payloads:
            response = client.post("/messages", json={"payload": payload})
            assert response.status_code == 201
            ids.append(response.json()["id"])
        urgent = client.post("/messages", json={"payload": "urgent", "priority": 9}).json()["id"]
        bad = client.post("/messages", json={"payload": "x", "priority": "high"})
        assert (bad.status_code, bad.json()) == (422, {"error": "INVALID_INPUT"})
        taken = [client.post("/messages/next").json() for _ in range(len(payloads) + 1)]
        assert [t["id"] for t in taken] == [urgent, *ids]
        assert [t["payload"] for t in taken] == ["urgent", *payloads]
        assert all(t["attempts"] == 1 for t in taken)
        assert client.post("/messages/next").status_code == 204

        waiting: dict[str, Any] = {}

        def wait_for_one() -> None:
            waiting["response"] = client.post("/messages/next?wait=30")

        waiter = threading.Thread(target=wait_for_one, daemon=True)
        waiter.start()
        time.sleep(0.2)
        assert "response" not in waiting
        late_id = client.post("/messages", json={"payload": "late"}).json()["id"]
        waiter.join(15)  # well before its 30 s wait is over
        assert not waiter.is_alive()
        assert waiting["response"].json() == {"id": late_id, "payload": "late", "attempts": 1}
    assert ok(aq.sync.is_drained()) is True


# -- plain handlers on threads of their own -------------------------------------------------


@pytest.mark.asyncio
async def test_async_worker_runs_more_plain_handlers_at_once_than_the_loops_pool(
    raq: AsyncQueue,
) -> None:
    """Plain handlers run on threads of their own, not the loop's default pool (which the
    worker's own steps use): more of them than that pool holds run at the same time, and
    their leases are still extended."""
    pool = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size
    concurrency = pool + 2
    ok(await raq.enqueue_batch([f"m{i}" for i in range(concurrency)]))
    together = threading.Barrier(concurrency, timeout=20)

    def handle(message: Message) -> None:
        together.wait()  # breaks (and fails the message) unless all run at once

    w = _async_worker(raq, handle, concurrency=concurrency)
    task = asyncio.create_task(w.run())
    await eventually(lambda: w.stats.completed + w.stats.failed >= concurrency, timeout=30)
    stats = await _stop(w, task)
    assert (stats.completed, stats.failed) == (concurrency, 0)


def test_async_worker_run_returns_though_a_plain_handler_hangs(tmp_path: Path) -> None:
    """A plain handler that never returns is abandoned at task_timeout; after stop(),
    run() returns and so does asyncio.run() (no pool thread it would wait for)."""
    release = threading.Event()
    box: dict[str, Any] = {}

    def handle(message: Message) -> None:
        if message.payload == "hang":
            release.wait(60)

    async def main() -> None:
        queue = AsyncSQLiteQueue(tmp_path / "q.db", "jobs")
        ok(await queue.enqueue_batch([Item("hang", max_attempts=1), "fine"]))
        w = _async_worker(queue, handle, concurrency=2, task_timeout=0.2, grace_period=30)
        task = asyncio.create_task(w.run())
        await eventually(lambda: w.stats.timed_out == 1 and w.stats.completed == 1)
        box["stats"] = await _stop(w, task)
        await queue.close()

    runner = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    runner.start()
    runner.join(20)
    try:
        assert not runner.is_alive(), "asyncio.run() waited for the hung handler's thread"
        assert box["stats"].timed_out == 1
    finally:
        release.set()


@pytest.mark.asyncio
async def test_a_handler_timing_out_while_the_worker_stops_is_not_waited_for(
    aq: AsyncQueue,
) -> None:
    """stop() comes before the heartbeat times a hung plain handler out (or between its
    timing out and its giving up, as a busy machine may have it): the handler is still
    given up on, and run() returns once it timed out, not after grace_period."""
    release = threading.Event()
    entered = threading.Event()

    def handle(message: Message) -> None:
        entered.set()
        release.wait(60)

    ok(await aq.enqueue("hang", max_attempts=1))
    w = _async_worker(aq, handle, task_timeout=0.5, grace_period=30)
    task = asyncio.create_task(w.run())
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        w.stop()  # graceful: the handler runs on until it times out
        stats = await asyncio.wait_for(asyncio.shield(task), 10)
    finally:
        release.set()
        await _stop(w, task, immediate=True)
    assert (stats.timed_out, stats.dead_lettered) == (1, 1), stats


@pytest.mark.asyncio
async def test_a_handler_timed_out_as_its_runner_starts_it_is_given_up_on(
    aq: AsyncQueue,
) -> None:
    """The heartbeat's round (a thread) times a task out after its runner found it not
    abandoned, but before it noted the handler's task as running: the handler is still
    cancelled and its runner stops waiting for it."""
    release = threading.Event()

    def handle(message: Message) -> None:
        release.wait(60)

    ok(await aq.enqueue("hang", max_attempts=1))
    w = _async_worker(aq, handle, task_timeout=30, grace_period=30)
    real_invoke = w._invoke

    def invoke(message: Message) -> Any:
        # Just before the runner notes the handler's task: the task overran, and a
        # heartbeat round sees it (run here, on the loop's thread, to be sure of when).
        for running in w._tasks.values():
            running.started -= 60
        w._beat()
        return real_invoke(message)

    w._invoke = invoke  # type: ignore[method-assign]
    task = asyncio.create_task(w.run())
    try:
        # (Its task may be cancelled before it starts: then the handler never runs.)
        await eventually(
            lambda: w.stats.timed_out == 1 and not w._running and not w._tasks,
            10,
            "the handler given up on",
        )
        stats = await _stop(w, task)
    finally:
        release.set()
        await _stop(w, task, immediate=True)
    assert (stats.timed_out, stats.dead_lettered) == (1, 1), stats


@pytest.mark.asyncio
async def test_a_dequeue_cancelled_twice_still_gives_its_message_back(
    raq: AsyncQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled, then cancelled again while it gives back what its claim leased (a
    TaskGroup, then the loop's shutdown): the message still goes back at once."""
    message_id = ok(await raq.enqueue("job"))
    entered, claimed, real_claim = _slow_claims(raq, monkeypatch, 0.4)
    task = asyncio.create_task(raq.dequeue(wait=5, visibility_timeout=300))
    assert await asyncio.to_thread(entered.wait, 5)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(claimed.wait, 5)  # the claim ended: the message leased
    await eventually(  # (long before its lease of 300 s would run out)
        lambda: _statuses_are_like(raq, [(message_id, "ready")]), 10, "the message back"
    )
    monkeypatch.setattr(raq.sync._backend, "claim", real_claim)
    message = ok(await raq.dequeue())
    assert message is not None and message.id == message_id
