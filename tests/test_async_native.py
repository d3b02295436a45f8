"""The asyncio API on PostgreSQL runs the hot operations natively on the event loop:
psycopg's asyncio connections, no thread per call (see sqqueue.bridge).

Proved here: no worker thread is used and every storage call of those operations runs
on the loop's thread inside a bridged call; hundreds of concurrent tasks share commits
and drain exactly once, also beside threads; a pool of one connection serves many tasks
and a wait for it ends within lock_timeout, with the loop running meanwhile; a call
whose task is cancelled still ends (its effect kept, a claim given back); closing the
queue ends the tasks awaiting it; killed connections and a restarted server are
recovered from; one queue object serves one event loop after another.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import psycopg
import pytest

from helpers import err, ok
from sqqueue import (
    AsyncQueue,
    AsyncWorker,
    ErrorKind,
    Message,
    Ok,
    PostgresQueue,
    SQLiteQueue,
    WorkerHooks,
    bridge,
)
from test_pg_outages import OwnServer, own_server  # noqa: F401 (a fixture)
from test_postgres import terminate, with_params

T = TypeVar("T")
TABLE = "jobs"
HOT = (
    "enqueue",
    "claim",
    "complete",
    "complete_many",
    "fail",
    "release",
    "release_many",
    "extend",
    "extend_many",
)


@pytest.fixture
def queue(pg_url: str, pg_schema: str) -> Iterator[PostgresQueue]:
    made = PostgresQueue(pg_url, TABLE, schema=pg_schema, lock_timeout=10)
    yield made
    made.close()


def bounded(scenario: Coroutine[Any, Any, T], seconds: float = 60) -> T:
    """Run ``scenario`` on an event loop of its own in another thread, and fail if it has
    not ended within ``seconds``: a loop blocked by a call (a deadlock) fails the test
    instead of hanging it."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("value", asyncio.run(scenario)))
        except BaseException as exc:  # reported in the test's thread
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        pytest.fail(f"the event loop did not finish within {seconds} s (blocked?)")
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


def spy_calls(aq: AsyncQueue, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool, bool]]:
    """Record each hot backend call as (name, on the loop's thread, in a bridged call)."""
    loop_thread = threading.current_thread()
    backend = aq.sync.parts.backend
    seen: list[tuple[str, bool, bool]] = []
    for name in HOT:
        real = getattr(backend, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            seen.append((_name, threading.current_thread() is loop_thread, bridge.active()))
            return _real(*args, **kwargs)

        monkeypatch.setattr(backend, name, spy)
    return seen


def no_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every asyncio.to_thread call by the name of what it runs."""
    calls: list[str] = []
    real = asyncio.to_thread

    async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    return calls


@pytest.mark.asyncio
async def test_hot_operations_run_on_the_loop_without_threads(
    queue: PostgresQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    aq = AsyncQueue(queue)
    assert aq.native
    seen = spy_calls(aq, monkeypatch)
    threads = no_threads(monkeypatch)
    before = threading.active_count()

    first = ok(await aq.enqueue("one"))
    ok(await aq.enqueue_batch(["two", "three", "four", "five", "six"]))
    message = ok(await aq.dequeue(visibility_timeout=60))
    assert message is not None and message.id == first
    assert isinstance(ok(await aq.extend(message, 120)), object)
    ok(await aq.complete(message))
    batch = ok(await aq.dequeue_batch(5, visibility_timeout=60))
    assert len(batch) == 5
    assert ok(await aq.extend_batch(batch, 90)) == 5
    ok(await aq.fail_message(batch[0], error="boom"))
    ok(await aq.release(batch[1]))
    ok(await aq.requeue(batch[2]))
    assert ok(await aq.release_batch([batch[3]])) == 1
    assert ok(await aq.complete_batch([batch[4]])) == 1

    assert threads == [], f"calls in worker threads: {threads}"
    assert threading.active_count() <= before + 1  # (at most the LISTEN thread of waits)
    assert {name for name, _, _ in seen} == set(HOT)
    blocking = [name for name, on_loop, bridged in seen if not (on_loop and bridged)]
    assert blocking == [], f"not run natively on the loop: {blocking}"


@pytest.mark.asyncio
async def test_native_false_and_sqlite_run_in_threads(
    queue: PostgresQueue, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    threaded = AsyncQueue(queue, native=False)
    assert not threaded.native
    with monkeypatch.context() as patched:
        # Windows' default event loop cannot run psycopg's asyncio connections.
        patched.setattr(sys, "platform", "win32")
        assert not AsyncQueue(queue).native
        assert AsyncQueue(queue, native=True).native
    threads = no_threads(monkeypatch)
    ok(await threaded.enqueue("in a thread"))
    assert threads, "native=False ran the enqueue without a thread"
    sqlite = SQLiteQueue(str(tmp_path / "q.db"), TABLE)
    try:
        assert not AsyncQueue(sqlite).native
        with pytest.raises(ValueError, match="native=True needs a backend"):
            AsyncQueue(sqlite, native=True)
    finally:
        sqlite.close()


def test_hundreds_of_tasks_share_commits_and_drain_exactly_once(
    queue: PostgresQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    aq = AsyncQueue(queue)
    bounded(hundreds_of_tasks(aq, spy_calls(aq, monkeypatch)))


async def hundreds_of_tasks(aq: AsyncQueue, seen: list[tuple[str, bool, bool]]) -> None:
    results = await asyncio.wait_for(
        asyncio.gather(*(aq.enqueue(f"job-{n}") for n in range(300))), 60
    )
    ids = [ok(r) for r in results]
    assert len(set(ids)) == 300
    # Tasks waiting behind a commit joined the next one (without blocking the loop).
    assert [name for name, _, _ in seen].count("enqueue") < 300

    done: list[int] = []

    async def consume() -> None:
        while True:
            batch = ok(await aq.dequeue_batch(7, visibility_timeout=60))
            if not batch:
                return
            assert ok(await aq.complete_batch(batch)) == len(batch)
            done.extend(m.id for m in batch)

    await asyncio.wait_for(asyncio.gather(*(consume() for _ in range(20))), 60)
    assert sorted(done) == sorted(ids)
    assert ok(await aq.is_drained())


def test_tasks_and_threads_share_commits(queue: PostgresQueue) -> None:
    """Threads calling the sync API and tasks calling the asyncio API on one queue object
    wait in the same line for commits: each is woken its own way, nothing is lost."""
    bounded(tasks_and_threads(queue))


async def tasks_and_threads(queue: PostgresQueue) -> None:
    aq = AsyncQueue(queue)
    from_threads: list[int] = []
    lock = threading.Lock()

    def produce(n: int) -> None:
        for i in range(100):
            value = ok(queue.enqueue(f"thread-{n}-{i}"))
            with lock:
                from_threads.append(value)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    from_tasks = [
        ok(r)
        for r in await asyncio.wait_for(
            asyncio.gather(*(aq.enqueue(f"task-{n}") for n in range(200))), 60
        )
    ]
    await asyncio.to_thread(lambda: [t.join(60) for t in threads])
    assert not any(t.is_alive() for t in threads)
    every = from_threads + from_tasks
    assert len(every) == len(set(every)) == 600
    stats = ok(await aq.stats())
    assert stats.pending == 600


def test_a_pool_of_one_serves_many_tasks(pg_url: str, pg_schema: str) -> None:
    queue = PostgresQueue(pg_url, TABLE, schema=pg_schema, pool_size=1, group_commit_max=1)
    try:
        aq = AsyncQueue(queue)

        async def many() -> list[Any]:
            return list(await asyncio.gather(*(aq.enqueue(n) for n in range(100))))

        assert len({ok(r) for r in bounded(many())}) == 100
    finally:
        queue.close()


def test_waiting_for_a_connection_ends_within_lock_timeout(pg_url: str, pg_schema: str) -> None:
    """One connection; the table is locked by another client, so the task holding the
    connection waits for the lock, and a second task waits for the connection: it gets
    Err(LOCKED) within about lock_timeout, and the loop runs other tasks meanwhile."""
    bounded(waiting_for_a_connection(pg_url, pg_schema))


async def waiting_for_a_connection(pg_url: str, pg_schema: str) -> None:
    # (group_commit_max=1: the second enqueue must wait for the connection, not join the
    # first one's commit.)
    queue = PostgresQueue(
        pg_url, TABLE, schema=pg_schema, pool_size=1, lock_timeout=1, group_commit_max=1
    )
    aq = AsyncQueue(queue)
    ok(await aq.enqueue("the table exists"))
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    locker = await psycopg.AsyncConnection.connect(pg_url)
    try:
        await locker.execute(f'SET search_path TO "{pg_schema}"')
        await locker.execute(f'LOCK TABLE "{TABLE}" IN EXCLUSIVE MODE')
        tick = asyncio.create_task(ticker())
        start = time.monotonic()
        holder = asyncio.create_task(aq.enqueue("holds the connection"))
        await asyncio.sleep(0)  # the holder takes the connection first
        second = await asyncio.wait_for(aq.enqueue("waits for it"), 30)
        took = time.monotonic() - start
        err(second, ErrorKind.LOCKED)
        err(await asyncio.wait_for(holder, 30), ErrorKind.LOCKED)
        assert took < 1 + 2.0, f"waited {took:.2f} s with lock_timeout 1 s"
        assert ticks >= 5, "the event loop was blocked while the calls waited"
        stop.set()
        await tick
    finally:
        await locker.close()
        queue.close()


@pytest.mark.asyncio
async def test_a_cancelled_call_still_ends(queue: PostgresQueue) -> None:
    """Cancelling the task that awaits a completion does not cut the call short: the
    message is completed (as with a call in a thread), never left half done."""
    aq = AsyncQueue(queue)
    ok(await aq.enqueue("job"))
    message = ok(await aq.dequeue(visibility_timeout=60))
    task = asyncio.create_task(aq.complete(message))
    await asyncio.sleep(0)  # the call has started: it awaits the server
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 15
    while not ok(await aq.is_drained()):
        assert time.monotonic() < deadline, "the cancelled completion never ended"
        await asyncio.sleep(0.01)
    assert ok(await aq.stats()).completed_total == 1


@pytest.mark.asyncio
async def test_closing_ends_the_tasks_awaiting_the_queue(queue: PostgresQueue) -> None:
    aq = AsyncQueue(queue)
    tasks = [asyncio.create_task(aq.enqueue(n)) for n in range(200)]
    await asyncio.sleep(0)
    await aq.close()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    refused = [r for r in results if not isinstance(r, Ok)]
    for result in refused:
        err(result, ErrorKind.CLOSED)
    err(await aq.enqueue("after close"), ErrorKind.CLOSED)


@pytest.mark.asyncio
async def test_killed_connections_are_replaced(pg_url: str, pg_schema: str) -> None:
    name = f"native_{pg_schema}"
    queue = PostgresQueue(
        with_params(pg_url, application_name=name), TABLE, schema=pg_schema, lock_timeout=10
    )
    try:
        aq = AsyncQueue(queue)
        first = ok(await aq.enqueue("before"))
        assert await asyncio.to_thread(terminate, pg_url, name) >= 1
        second = ok(await aq.enqueue("after the kill"))
        assert await asyncio.to_thread(terminate, pg_url, name) >= 1
        batch = ok(await aq.dequeue_batch(5, visibility_timeout=60))
        assert [m.id for m in batch] == [first, second]
        assert await asyncio.to_thread(terminate, pg_url, name) >= 1
        assert ok(await aq.complete_batch(batch)) == 2
        assert ok(await aq.is_drained())
    finally:
        queue.close()


@pytest.mark.asyncio
@pytest.mark.slow
async def test_a_restarted_server_gives_err_then_work_resumes(
    own_server: OwnServer,  # noqa: F811 (the imported fixture)
) -> None:
    queue = PostgresQueue(own_server.url, TABLE, lock_timeout=2)
    try:
        aq = AsyncQueue(queue)
        ok(await aq.enqueue("before"))
        await asyncio.to_thread(own_server.stop)
        start = time.monotonic()
        down = await asyncio.wait_for(aq.enqueue("while down"), 30)
        assert not isinstance(down, Ok)
        assert down.error.kind in (ErrorKind.STORAGE, ErrorKind.UNKNOWN_OUTCOME), down
        assert time.monotonic() - start < 2 + 3.0
        await asyncio.to_thread(own_server.start)
        ok(await aq.enqueue("after"))
        message = ok(await aq.dequeue())
        assert message is not None and message.payload == "before"
    finally:
        queue.close()


def test_one_queue_object_serves_one_event_loop_after_another(queue: PostgresQueue) -> None:
    aq = AsyncQueue(queue)

    async def round_trip(payload: str) -> str:
        ok(await aq.enqueue(payload))
        message = ok(await aq.dequeue())
        ok(await aq.complete(message))
        return str(message.payload)

    assert asyncio.run(round_trip("first loop")) == "first loop"
    assert asyncio.run(round_trip("second loop")) == "second loop"


@pytest.mark.asyncio
@pytest.mark.parametrize("hooked", [False, True], ids=["no hooks", "hooks"])
async def test_async_worker_runs_its_steps_on_the_loop_unless_hooks_may_block(
    queue: PostgresQueue, monkeypatch: pytest.MonkeyPatch, hooked: bool
) -> None:
    """AsyncWorker's own steps around each handler (start, end: acknowledgement, failure,
    retry) run natively on the loop; with hooks set (user code, which may block) they
    run in a thread, where a hook cannot stall the loop."""
    aq = AsyncQueue(queue)
    ok(await aq.enqueue_batch([f"job-{n}" for n in range(20)]))
    started: list[int] = []
    hooks = WorkerHooks(on_start=lambda m: started.append(m.id)) if hooked else WorkerHooks()
    threads = no_threads(monkeypatch)

    async def handle(message: Message) -> None:
        if message.payload == "job-3":
            raise RuntimeError("always fails")

    worker = AsyncWorker(aq, handle, concurrency=4, handle_signals=False, hooks=hooks)
    running = asyncio.create_task(worker.run())
    deadline = time.monotonic() + 30
    while worker.stats.completed < 19 or worker.stats.failed < 1:
        assert time.monotonic() < deadline, worker.stats
        await asyncio.sleep(0.01)
    worker.stop()
    stats = await asyncio.wait_for(running, 30)
    assert stats.completed == 19 and stats.failed >= 1
    steps = {name for name in threads if name in ("_announce", "_end")}
    assert steps == ({"_announce", "_end"} if hooked else set()), threads
    assert len(set(started)) == (20 if hooked else 0)
