"""The tasks API (sqqueue.Tasks): calls become JSON messages, workers run them, results
come back, periodic tasks tick once per tick. Contract tests: every test runs on SQLite
and on PostgreSQL. Workers run on threads here; tests/test_tasks_processes.py runs them
as real processes."""

from __future__ import annotations

import _thread
import asyncio
import enum
import functools
import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conftest import FakeClock, QueueTarget
from helpers import (
    err,
    err_text,
    leased,
    ok,
    one_error_line,
    run_cli,
    run_script,
    serving,
    wait_until,
)
from sqqueue import (
    ErrorKind,
    Message,
    Queue,
    QueueError,
    RetryPolicy,
    Tasks,
    WorkerHooks,
    WorkerStats,
)
from sqqueue.tasks import (
    ResultUnavailable,
    Schedule,
    Task,
    TaskContext,
    TaskFailed,
    current_task,
)
from sqqueue.tasks.runner import TaskMetrics, TaskWorker

MakeTasks = Callable[..., Tasks]


def settings_for(target: QueueTarget) -> tuple[str, dict[str, Any]]:
    """(target, settings) for Tasks on the test's database."""
    if target.backend == "sqlite":
        return target.url, {}
    return target.url, {"schema": target.schema}


@pytest.fixture
def make_tasks(queue_target: QueueTarget) -> Iterator[MakeTasks]:
    """Tasks apps on the test's database (real clock unless one is given); closed after."""
    made: list[Tasks] = []

    def make(**kwargs: Any) -> Tasks:
        url, settings = settings_for(queue_target)
        if queue_target.backend == "postgres" and isinstance(kwargs.get("clock"), FakeClock):
            # The server's clock decides there: pin it to the fake one (see make_queue).
            settings["server_clock"] = kwargs["clock"]
        app = Tasks(url, **{**settings, **kwargs})
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


# -- calling --------------------------------------------------------------------------------------


def test_delay_runs_the_task_on_a_worker_and_returns_its_result(make_tasks: MakeTasks) -> None:
    """delay() enqueues a JSON call; a worker runs it; handle.result() gives the value
    (a task stays a plain function when called directly)."""
    app = make_tasks()
    seen: list[tuple[Any, ...]] = []

    @app.task(store_result=True)
    def add(a: int, b: int = 1, *, scale: int = 1) -> dict[str, int]:
        seen.append((a, b, scale))
        return {"sum": (a + b) * scale}

    assert add(1, 2) == {"sum": 3}  # a plain call, here and now
    handle = ok(add.delay(2, b=5, scale=10))
    assert ok(handle.status()) == "pending"
    payload = ok(app.queue().get_message(handle.id))["payload"]
    assert payload == {
        "sqqueue_task": 1,
        "name": f"{__name__}.test_delay_runs_the_task_on_a_worker_and_returns_its_result.<locals>.add",
        "args": [2],
        "kwargs": {"b": 5, "scale": 10},
    }
    with serving(app):
        assert handle.result(timeout=15) == {"sum": 70}
    assert ok(handle.status()) == "done"
    assert add.handle(handle.id).result(timeout=1) == {"sum": 70}
    assert seen == [(1, 2, 1), (2, 5, 10)]


class _Level(enum.IntEnum):
    HIGH = 2


class _Color(str, enum.Enum):
    RED = "red"


def test_arguments_that_are_not_json_are_refused_by_name(make_tasks: MakeTasks) -> None:
    """delay() checks arguments against the signature and JSON before enqueueing: an Err
    names the argument (and where inside it), and nothing is enqueued."""
    app = make_tasks()

    @app.task
    def job(when: Any, items: Any = None, *rest: Any, **extra: Any) -> None: ...

    cases = [
        ((datetime.now(timezone.utc),), "argument 'when' is a datetime"),
        (("x", [1, {"at": {1, 2}}]), "argument 'items'[1]['at'] is a set"),
        (("x", None, 1, (2, 3)), "argument *rest[1] is a tuple; it would come back as a list"),
        (("x", float("nan")), "argument 'items' is nan"),
        ((_Level.HIGH,), "argument 'when' is the Enum member _Level.HIGH; it would come back"),
        (("x", {"level": _Color.RED}), "argument 'items'['level'] is the Enum member _Color.RED"),
        (("x", {_Color.RED: 1}), "argument 'items' has the key <_Color.RED: 'red'>"),
    ]
    for args, expected in cases:
        assert expected in err_text(job.delay(*args), ErrorKind.SERIALIZATION)
    assert "argument 'flag' is a bytes" in err_text(
        job.delay("x", flag=b"1"), ErrorKind.SERIALIZATION
    )
    assert "{1: 2}" not in err_text(job.delay({1: 2}), ErrorKind.SERIALIZATION)
    assert "missing a required argument: 'when'" in err_text(job.delay(), ErrorKind.INVALID_INPUT)
    assert ok(app.queue().is_drained())


def test_schedule_options(make_tasks: MakeTasks, clock: FakeClock) -> None:
    """schedule(): delay or eta (timezone-aware), priority, dedup_key, group, ttl."""
    app = make_tasks(clock=clock)

    @app.task(priority=3)
    def job(n: int) -> None: ...

    later = ok(job.schedule((1,), delay=60))
    eta = datetime.fromtimestamp(clock() + 3600, tz=timezone.utc)
    at = ok(job.schedule([2], eta=eta.astimezone(timezone(timedelta(hours=5)))))
    urgent = ok(job.schedule((3,), priority=9, group="g", ttl=30))
    found = {h.id: ok(app.queue().get_message(h.id)) for h in (later, at, urgent)}
    assert found[later.id]["visible_at"].timestamp() == clock() + 60
    assert found[at.id]["visible_at"] == eta
    assert (found[later.id]["priority"], found[urgent.id]["priority"]) == (3, 9)
    assert found[urgent.id]["group"] == "g"
    assert found[urgent.id]["expires_at"].timestamp() == clock() + 30
    assert "timezone-aware" in err_text(
        job.schedule((4,), eta=datetime(2030, 1, 1)), ErrorKind.INVALID_INPUT
    )
    assert "not both" in err_text(job.schedule((4,), eta=eta, delay=5), ErrorKind.INVALID_INPUT)
    first = ok(job.schedule((5,), dedup_key="k"))
    assert ok(job.schedule((6,), dedup_key="k")).id == first.id


def test_dedup_and_group_from_the_arguments(make_tasks: MakeTasks) -> None:
    """dedup=True: one message per task and arguments (defaults included); dedup and
    group may also be functions of the arguments."""
    app = make_tasks()

    @app.task(dedup=True)
    def refresh(user: int, full: bool = False) -> None: ...

    @app.task(dedup=lambda order, **_: f"order-{order}", group=lambda order, **_: f"o{order % 2}")
    def ship(order: int, note: str = "") -> None: ...

    a = ok(refresh.delay(7))
    assert ok(refresh.delay(7, full=False)).id == a.id
    assert ok(refresh.delay(user=7)).id == a.id
    assert ok(refresh.delay(7, True)).id != a.id
    s = ok(ship.delay(4, note="x"))
    assert ok(ship.delay(4, note="y")).id == s.id
    assert ok(app.queue().get_message(s.id))["group"] == "o0"


def test_arguments_nested_too_deep_are_the_same_err_with_or_without_dedup(
    make_tasks: MakeTasks,
) -> None:
    """An argument nested past MAX_JSON_DEPTH, or an int too long to write as text, is an
    Err from every way of enqueueing, and the same whether the task has dedup=True (whose
    key digests the arguments: it used to raise RecursionError, or give another kind of
    Err) or not; nothing is enqueued."""
    app = make_tasks()

    @app.task(name="keyed", dedup=True)
    def keyed(x: Any) -> None: ...

    @app.task(name="plain")
    def plain(x: Any) -> None: ...

    deep: list[Any] = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    values: list[object] = [deep]
    if getattr(sys, "get_int_max_str_digits", lambda: 0)():  # (Python 3.10.7 and later)
        values.append(10**5000)
    for value in values:
        said = {
            err_text(result, ErrorKind.SERIALIZATION).split(": ", 1)[1]
            for result in (
                keyed.delay(value),
                keyed.schedule((value,), delay=5),
                keyed.schedule((), {"x": value}),
                asyncio.run(keyed.delay_async(value)),
                plain.delay(value),
            )
        }
        assert len(said) == 1, said  # one Err, whichever way and whichever task
    assert "nested more than 500" in err_text(keyed.delay(deep), ErrorKind.SERIALIZATION)
    assert ok(app.queue().is_drained())


@pytest.mark.timeout(20)
def test_an_argument_that_contains_itself_is_an_err(make_tasks: MakeTasks) -> None:
    """A list or dict that contains itself is refused (delay() used to loop forever
    checking it, and so did a worker checking such a return value)."""
    app = make_tasks()

    @app.task(dedup=True)
    def job(x: Any) -> None: ...

    looped: dict[str, Any] = {}
    looped["self"] = [looped]
    assert "contains itself" in err_text(job.delay(looped), ErrorKind.SERIALIZATION)
    assert ok(app.queue().is_drained())


def test_schedule_refuses_args_and_kwargs_of_the_wrong_type(make_tasks: MakeTasks) -> None:
    """schedule()'s args and kwargs are values: a str is not split into characters, and
    a kwargs that is not a mapping is an Err, not a TypeError."""
    app = make_tasks()

    @app.task
    def job(*letters: Any, **named: Any) -> None: ...

    assert "args must be a tuple or list" in err_text(
        job.schedule("abc"),  # type: ignore[arg-type]
        ErrorKind.INVALID_INPUT,
    )
    assert "kwargs must be a dict" in err_text(
        job.schedule((1,), [("a", 1)]),  # type: ignore[arg-type]
        ErrorKind.INVALID_INPUT,
    )
    assert ok(app.queue().is_drained())
    assert ok(job.schedule(["a"], {"b": 2}))


# -- failures ----------------------------------------------------------------------------------------


def test_a_raising_task_is_retried_per_its_policy_then_dead_lettered(
    make_tasks: MakeTasks,
) -> None:
    """A task raising is retried (its own RetryPolicy spaces the attempts) and, after its
    retries, dead-lettered with the traceback's last line; result() raises TaskFailed."""
    app = make_tasks()
    attempts: list[int] = []

    @app.task(retries=2, retry=RetryPolicy.fixed(0.05), store_result=True)
    def flaky(n: int) -> None:
        run = current_task()
        assert run is not None
        attempts.append(run.attempt)
        raise ValueError(f"bad input {n}")

    handle = ok(flaky.delay(7))
    with serving(app), pytest.raises(TaskFailed) as failed:
        handle.result(timeout=15)
    assert attempts == [1, 2, 3]
    assert failed.value.error == "ValueError: bad input 7"
    assert "ValueError: bad input 7" in str(failed.value)
    (letter,) = ok(app.queue().get_dead_letters())
    assert (letter["id"], letter["attempts"], letter["last_error"]) == (
        handle.id,
        3,
        "ValueError: bad input 7",
    )
    assert ok(handle.status()) == "dead"
    stats = app.stats()[flaky.name]
    assert (stats.started, stats.failed, stats.dead_lettered, stats.succeeded) == (3, 3, 1, 0)


def test_retry_policy_of_a_task_delays_its_next_attempt(make_tasks: MakeTasks) -> None:
    """After a failed attempt the call waits as its task's policy says (status
    "failed": it will be retried)."""
    app = make_tasks()
    ran = threading.Event()

    @app.task(retries=3, retry=RetryPolicy.fixed(3600))
    def slow_retry() -> None:
        ran.set()
        raise RuntimeError("try later")

    handle = ok(slow_retry.delay())
    with serving(app):
        assert ran.wait(15)
        wait_until(lambda: ok(handle.status()) == "failed", what="the failed status")
    found = ok(app.queue().get_message(handle.id))
    assert found["visible_at"].timestamp() > time.time() + 3500
    assert found["last_error"] == "RuntimeError: try later"


def test_messages_a_worker_cannot_run_are_dead_lettered_with_the_reason(
    make_tasks: MakeTasks,
) -> None:
    """A call of an unknown task, a payload that is no task call and a newer format are
    dead-lettered on their first attempt, saying why (never retried)."""
    app = make_tasks()

    @app.task
    def known() -> None: ...

    queue = app.queue()
    unknown = ok(queue.enqueue({"sqqueue_task": 1, "name": "gone.task", "args": [], "kwargs": {}}))
    plain = ok(queue.enqueue("just a string"))
    newer = ok(queue.enqueue({"sqqueue_task": 2, "name": known.name}))
    card = "4111-1111-1111-1111"
    malformed = ok(queue.enqueue({"sqqueue_task": 1, "name": known.name, "args": [card]}))
    with serving(app):
        wait_until(lambda: len(ok(queue.get_dead_letters())) == 4, what="four dead letters")
    errors = {d["id"]: (d["attempts"], d["last_error"]) for d in ok(queue.get_dead_letters())}
    assert errors[unknown][0] == errors[plain][0] == errors[newer][0] == 1
    assert errors[unknown][1].startswith("UnknownTask: no task named 'gone.task' is registered")
    assert errors[plain][1].startswith("InvalidTaskMessage: not a task call (a str")
    assert "format 2, but this worker reads format 1" in errors[newer][1]
    # The fields' types, never the arguments (data, perhaps secret) in logs or errors.
    assert errors[malformed][1] == (
        "InvalidTaskMessage: malformed task message: expected a str 'name', a list 'args', "
        "a dict 'kwargs' and an optional number 'tick', got name str, args list, kwargs "
        "missing, tick missing"
    )
    assert card not in errors[malformed][1]


def test_a_result_that_is_not_json_dead_letters_the_call(make_tasks: MakeTasks) -> None:
    app = make_tasks()

    @app.task(store_result=True)
    def when() -> Any:
        return datetime.now(timezone.utc)

    handle = ok(when.delay())
    with serving(app), pytest.raises(TaskFailed) as failed:
        handle.result(timeout=15)
    assert failed.value.error is not None
    assert failed.value.error.startswith(
        f"ResultNotJSON: the return value of {when.name} is a datetime"
    )


def test_task_timeout_fails_the_run(make_tasks: MakeTasks) -> None:
    """timeout: a run past it fails with TimeoutError (a plain function's thread is left
    to finish; a coroutine is cancelled) and is retried, then dead-lettered."""
    app = make_tasks()
    release = threading.Event()
    cancelled: list[bool] = []

    @app.task(timeout=0.2, retries=0, store_result=True)
    def stuck() -> None:
        release.wait(10)

    handle = ok(stuck.delay())
    with serving(app), pytest.raises(TaskFailed) as failed:
        handle.result(timeout=15)
    release.set()
    assert failed.value.error == (
        f"TimeoutError: task {stuck.name} ran longer than its timeout of 0.2 s (its thread is "
        "left to finish; what it returns is ignored)"
    )

    other = make_tasks(queue="async_jobs")

    @other.task(timeout=0.2, retries=0, store_result=True)
    async def sleepy() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    handle = ok(sleepy.delay())
    with serving(other), pytest.raises(TaskFailed) as failed:
        handle.result(timeout=15)
    assert failed.value.error is not None and "(cancelled)" in failed.value.error
    assert cancelled == [True]


@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt])
def test_a_coroutine_task_with_a_timeout_that_raises_base_exceptions_fails_its_run(
    make_tasks: MakeTasks, raised: type[BaseException]
) -> None:
    """SystemExit or KeyboardInterrupt from a coroutine under ``timeout``: that run fails
    (dead-lettered here) and the worker goes on with the next call, as without timeout."""
    app = make_tasks()

    @app.task(timeout=5, retries=0, store_result=True)
    async def boom() -> None:
        raise raised("from the task")

    @app.task(store_result=True)
    async def fine() -> str:
        return "fine"

    failing, after = ok(boom.delay()), ok(fine.delay())
    with serving(app):
        assert after.result(timeout=15) == "fine"
        with pytest.raises(TaskFailed) as failed:
            failing.result(timeout=15)
    assert failed.value.error == f"{raised.__name__}: from the task"
    assert ok(failing.status()) == "dead"


def test_a_coroutine_tasks_own_timeout_error_is_not_taken_for_its_timeout(
    make_tasks: MakeTasks,
) -> None:
    """A TimeoutError the task raises itself (a gateway that did not answer) is recorded
    as it is, not as the task running past its ``timeout``."""
    app = make_tasks()

    @app.task(timeout=600, retries=0, store_result=True)
    async def fetch() -> None:
        raise TimeoutError("the gateway did not answer within 2 s")

    handle = ok(fetch.delay())
    with serving(app), pytest.raises(TaskFailed) as failed:
        handle.result(timeout=15)
    assert failed.value.error == "TimeoutError: the gateway did not answer within 2 s"


# -- results and status --------------------------------------------------------------------------


def test_status_through_a_calls_life(make_tasks: MakeTasks) -> None:
    """pending -> running -> done; a task that stores no result is "unknown" once run
    (its message is not kept), and result() says it stores none."""
    app = make_tasks()
    started, finish = threading.Event(), threading.Event()

    @app.task(store_result=True)
    def slow() -> str:
        started.set()
        finish.wait(10)
        return "finished"

    @app.task(queue="fire_and_forget")
    def quick() -> str:
        return "ignored"

    handle = ok(slow.delay())
    other = ok(quick.delay())
    assert ok(handle.status()) == "pending"
    with serving(app):
        assert started.wait(15)
        assert ok(handle.status()) == "running"
        finish.set()
        assert handle.result(timeout=15) == "finished"
        wait_until(lambda: ok(other.status()) == "unknown", what="quick to run")
    assert ok(handle.status()) == "done"
    with pytest.raises(ValueError, match="does not store results"):
        other.result(timeout=1)
    with pytest.raises(ResultUnavailable):
        slow.handle(999_999).result(timeout=1)
    with pytest.raises(TimeoutError):
        ok(slow.delay()).result(timeout=0.05)


def test_results_are_kept_for_result_ttl(make_tasks: MakeTasks, clock: FakeClock) -> None:
    """The queue of a task that stores results keeps completed calls for result_ttl
    seconds; maintenance prunes them afterwards."""
    app = make_tasks(clock=clock, result_ttl=60, vacuum_threshold=1)

    @app.task(store_result=True)
    def echo(x: int) -> int:
        return x

    queue = app.queue()
    assert queue.keeps_history
    handle = ok(echo.delay(5))
    message = ok(queue.dequeue())
    ok(queue.complete(message, result=5))
    assert handle.result(timeout=0) == 5
    clock.advance(61)
    ok(queue.enqueue("x"))  # a write: maintenance prunes the expired history
    with pytest.raises(ResultUnavailable):
        handle.result(timeout=0)


@pytest.mark.asyncio
async def test_a_result_past_its_ttl_is_gone_before_maintenance_prunes_it(
    make_tasks: MakeTasks, clock: FakeClock
) -> None:
    """Past result_ttl a call's result and status read as expired (ResultUnavailable,
    "unknown"), as once pruned, while its completed message is still stored."""
    app = make_tasks(clock=clock, result_ttl=60)

    @app.task(store_result=True)
    def echo(x: int) -> int:
        return x

    queue = app.queue()
    handle = ok(echo.delay(5))
    ok(queue.complete(ok(queue.dequeue()), result=5))
    clock.advance(60)  # result_ttl to the second: still kept
    assert handle.result(timeout=0) == 5
    assert ok(handle.status()) == "done"
    clock.advance(1)
    assert ok(queue.get_message(handle.id))["status"] == "done"  # not pruned yet
    with pytest.raises(ResultUnavailable, match="expired"):
        handle.result(timeout=0)
    with pytest.raises(ResultUnavailable, match="expired"):
        await handle.result_async(timeout=0)
    assert ok(handle.status()) == "unknown"
    assert ok(await handle.status_async()) == "unknown"


# -- asyncio ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_tasks_and_delay_async(make_tasks: MakeTasks) -> None:
    """await delay_async(); async def tasks run on the worker's event loop (plain ones
    beside them in threads); await result_async()."""
    app = make_tasks(store_result=True)
    loops: list[bool] = []

    @app.task
    async def fetch(url: str) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        run = current_task()
        assert run is not None
        loops.append(True)
        return {"url": url, "id": run.message_id}

    @app.task
    def shout(text: str) -> str:
        return text.upper()

    first = ok(await fetch.delay_async("https://example.com"))
    second = ok(await shout.delay_async("hi"))
    third = ok(await fetch.schedule_async(("b",), delay=0.1))
    worker = app.worker(handle_signals=False, poll_wait=0.2)
    assert worker.is_async
    runner = asyncio.create_task(worker.run_async())
    try:
        assert await first.result_async(timeout=15) == {
            "url": "https://example.com",
            "id": first.id,
        }
        assert await second.result_async(timeout=15) == "HI"
        assert (await third.result_async(timeout=15))["url"] == "b"
        assert ok(await first.status_async()) == "done"
    finally:
        worker.stop()
        stats = await asyncio.wait_for(runner, 15)
    assert stats["tasks"].completed == 3
    assert loops == [True, True]


# -- the outbox -----------------------------------------------------------------------------------


def test_delay_in_commits_with_the_callers_transaction(
    make_tasks: MakeTasks, queue_target: QueueTarget
) -> None:
    """delay_in(conn, ...) enqueues inside the caller's transaction: a rollback leaves no
    call behind, a commit enqueues it."""
    app = make_tasks()

    @app.task
    def notify(order: int) -> None: ...

    queue = app.queue()
    if queue_target.backend == "sqlite":
        conn: Any = queue_target.sqlite_connection()
        conn.execute("CREATE TABLE orders (id INTEGER)")
        conn.commit()
        conn.execute("INSERT INTO orders VALUES (1)")
        kept = ok(notify.delay_in(conn, 1))
        conn.rollback()
        conn.execute("INSERT INTO orders VALUES (2)")
        sent = ok(notify.delay_in(conn=conn, order=2))  # (conn by keyword too)
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(queue_target.url) as conn:
            conn.execute(f'SET search_path TO "{queue_target.schema}"')
            conn.execute("CREATE TABLE orders (id INTEGER)")
            conn.commit()
            conn.execute("INSERT INTO orders VALUES (1)")
            kept = ok(notify.delay_in(conn, 1))
            conn.rollback()
            conn.execute("INSERT INTO orders VALUES (2)")
            sent = ok(notify.delay_in(conn=conn, order=2))  # (conn by keyword too)
            conn.commit()
    assert ok(queue.get_message(kept.id)) is None or kept.id == sent.id
    found = ok(queue.get_message(sent.id))
    assert found["payload"]["kwargs"] == {"order": 2}
    assert ok(queue.stats()).pending == 1


# -- periodic tasks ---------------------------------------------------------------------------------


def test_each_tick_is_enqueued_once_by_any_number_of_workers(
    make_tasks: MakeTasks, clock: FakeClock
) -> None:
    """Three apps (three workers' schedulers) on one database, a task every second, ten
    seconds: ten messages, one per tick, whoever saw each tick first."""
    apps = [make_tasks(clock=clock) for _ in range(3)]
    for app in apps:

        @app.periodic(every=1, name="tick")
        def tick() -> None: ...

    clock.advance(0.5 - clock() % 1)  # between two ticks
    enqueued: list[tuple[str, float, int]] = []
    for step in range(10):
        clock.advance(1)
        for app in apps[step % 3 :] + apps[: step % 3]:
            enqueued.extend(app.schedule_due())
        for app in apps:
            assert app.schedule_due() == []  # the tick is handled: no second enqueue
    ids = {message_id for _, _, message_id in enqueued}
    ticks = sorted({tick for _, tick, _ in enqueued})
    assert len(ids) == 10 and len(ticks) == 10
    assert ticks == [ticks[0] + i for i in range(10)]
    stats = ok(apps[0].queue().stats())
    assert (stats.pending + stats.waiting, stats.enqueued_total) == (10, 10)
    messages = [ok(apps[0].queue().get_message(i)) for i in sorted(ids)]
    assert [m["payload"]["tick"] for m in messages] == ticks
    assert {m["group"] for m in messages} == {"sqqueue.periodic:tick"}  # never overlapping


def test_missed_ticks_are_skipped_or_run_once(make_tasks: MakeTasks, clock: FakeClock) -> None:
    """A worker starting after ticks passed unseen: missed="skip" runs none of them (the
    next tick runs as usual); missed="run_once" runs the latest of them, once, however
    many workers start."""
    clock.advance(3600 - clock() % 3600 + 100)  # 100 s past the hour: past the grace (60 s)
    clock.advance(5 * 3600)  # five hourly ticks went by unseen
    first = make_tasks(clock=clock)
    second = make_tasks(clock=clock)
    for app in (first, second):

        @app.periodic(every=3600, name="skipper")
        def skipper() -> None: ...

        @app.periodic(every=3600, missed="run_once", name="catcher")
        def catcher() -> None: ...

    due = first.schedule_due()
    assert [(name, clock() - tick) for name, tick, _ in due] == [("catcher", 100)]
    assert second.schedule_due() == [("catcher", due[0][1], due[0][2])]  # the same message
    clock.advance(3600 - 100)  # on the next hour: both tasks run it
    names = sorted(name for name, _, _ in first.schedule_due() + second.schedule_due())
    assert names == ["catcher", "catcher", "skipper", "skipper"]
    assert ok(first.queue().stats()).enqueued_total == 3


@pytest.mark.parametrize("schedule", [{"every": 60}, {"cron": "* * * * *"}], ids=["every", "cron"])
def test_periodic_ticks_resume_when_the_clock_goes_back(
    make_tasks: MakeTasks,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    schedule: dict[str, Any],
) -> None:
    """A clock stepped a day ahead, then corrected: the ticks resume at once by the
    corrected clock, with a warning (they used to stop, silently, until the clock caught
    up with the tick handled a day ahead). The tick enqueued ahead is not enqueued twice
    when it comes round again: its deduplication key still holds, for this scheduler and
    for a restarted one alike. A step back between two ticks changes nothing."""
    if "cron" in schedule:
        pytest.importorskip("croniter")
    clock.advance(-(clock() % 60))  # on a tick
    start = clock()
    app = make_tasks(clock=clock)

    @app.periodic(**schedule, name="minutely")
    def minutely() -> None: ...

    scheduler = app.scheduler()
    caplog.set_level(logging.INFO, logger="sqqueue.tasks.periodic")
    assert [t for _, t, _ in scheduler.run_pending()] == [start]
    clock.advance(30)
    clock.advance(-20)  # back, but still past the tick handled: nothing to say
    assert scheduler.run_pending() == []
    clock.advance(86400 - 10)
    ahead = scheduler.run_pending()
    assert [t for _, t, _ in ahead] == [start + 86400]
    clock.advance(-(86400 - 60))  # corrected, on the next minute
    resumed = []
    for _ in range(3):
        resumed += scheduler.run_pending()
        clock.advance(60)
    assert [t - start for _, t, _ in resumed] == [60, 120, 180]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "clock went back" in warnings[0], warnings
    assert "minutely" in warnings[0]

    clock.advance(start + 86400 - clock())  # the tick enqueued ahead comes round again
    assert scheduler.run_pending() == ahead
    restarted = make_tasks(clock=clock)
    restarted.periodic(**schedule, name="minutely")(minutely.fn)
    assert restarted.schedule_due() == ahead
    assert ok(app.queue().stats()).enqueued_total == 5


@pytest.mark.slow
def test_periodic_runs_know_their_tick(make_tasks: MakeTasks) -> None:
    """A worker's scheduler enqueues the ticks by itself; current_task().tick says which."""
    app = make_tasks()
    runs: list[TaskContext] = []

    @app.periodic(every=1)
    def beat() -> None:
        run = current_task()
        assert run is not None
        runs.append(run)

    with serving(app):
        wait_until(lambda: len(runs) >= 2, what="two ticks")
    ticks = [r.tick for r in runs]
    assert all(t is not None and t.microsecond == 0 and t.tzinfo is timezone.utc for t in ticks)
    assert ticks == sorted(set(ticks))


def test_cron_schedules_in_their_time_zone() -> None:
    """cron ticks follow the given IANA zone through daylight saving changes."""
    pytest.importorskip("croniter")
    paris = Schedule(cron="0 3 * * *", tz="Europe/Paris")
    before_dst = datetime(2026, 3, 28, 12, tzinfo=timezone.utc).timestamp()
    ticks = [paris.following(before_dst)]
    ticks.append(paris.following(ticks[0]))
    utc = [datetime.fromtimestamp(t, tz=timezone.utc).hour for t in ticks]
    assert utc == [1, 1]  # 03:00 in Paris is 02:00 UTC in winter, 01:00 UTC in summer
    assert utc == [1, 1] and ticks[1] - ticks[0] == 86400
    assert paris.latest(ticks[1]) == ticks[1]
    assert paris.latest(ticks[1] - 1) == ticks[0]
    assert Schedule(every=60).latest(125.0) == 120.0
    for bad in (
        {"cron": "61 * * * *"},
        {"cron": "0 3 * * *", "tz": "Mars/Olympus"},
        {"every": 0},
        {},
    ):
        with pytest.raises(ValueError):
            Schedule(**bad)


def test_a_cron_job_at_a_fixed_hour_runs_once_in_the_repeated_autumn_hour() -> None:
    """On the night daylight saving time ends, 02:00-03:00 happens twice in Paris: a job
    at 02:30 runs once (as cron runs it), while a job every hour runs in both hours."""
    pytest.importorskip("croniter")
    paris = ZoneInfo("Europe/Paris")

    def ticks(cron: str, count: int) -> list[str]:
        schedule = Schedule(cron=cron, tz="Europe/Paris")
        when = datetime(2026, 10, 25, 0, 30, tzinfo=paris).timestamp()
        found = []
        for _ in range(count):
            when = schedule.following(when)
            found.append(datetime.fromtimestamp(when, tz=paris).isoformat())
        return found

    assert ticks("30 2 * * *", 2) == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    assert ticks("@daily", 1) == ["2026-10-26T00:00:00+01:00"]
    for every_hour in ("0 0-23 * * *", "@hourly"):
        assert ticks(every_hour, 3)[1:] == [
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T02:00:00+01:00",
        ]
    assert ticks("0 * * * *", 3) == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
    ]
    nightly = Schedule(cron="30 2 * * *", tz="Europe/Paris")
    second_0245 = datetime(2026, 10, 25, 2, 45, tzinfo=paris, fold=1).timestamp()
    first_0230 = datetime(2026, 10, 25, 2, 30, tzinfo=paris).timestamp()
    assert nightly.latest(second_0245) == first_0230  # not run again at the second 02:30


def test_first_cron_tick_after_winter_time() -> None:
    pytest.importorskip("croniter")
    paris = Schedule(cron="0 3 * * *", tz="Europe/Paris")
    winter = datetime(2026, 1, 10, 12, tzinfo=timezone.utc).timestamp()
    assert datetime.fromtimestamp(paris.following(winter), tz=timezone.utc).hour == 2


# -- the app ---------------------------------------------------------------------------------------


def test_task_options_are_checked_by_name(tmp_path: Path) -> None:
    """A misspelt or internal keyword is refused at registration, as a signature would."""
    app = Tasks(str(tmp_path / "jobs.db"))
    for bad in ({"retires": 3}, {"max_attempts": 2}, {"periodic": None}):
        with pytest.raises(TypeError, match=repr(next(iter(bad)))):
            app.task(**bad)
    registered = app.task(name="named", retries=2, priority=3)(lambda: None)
    assert (registered.name, registered.max_attempts, registered.priority) == ("named", 3, 3)


def test_tasks_on_several_queues_and_per_task_metrics(make_tasks: MakeTasks) -> None:
    """A task names its queue; the worker serves every queue of the app; metrics count
    per task."""
    app = make_tasks(store_result=True)

    @app.task
    def a(x: int) -> int:
        return x + 1

    @app.task(queue="emails")
    def b(x: int) -> int:
        return x * 2

    assert app.queue_names() == ["tasks", "emails"]
    handles = [ok(a.delay(1)), ok(b.delay(2)), ok(a.delay(3))]
    assert ok(app.queue("emails").get_message(handles[1].id))["payload"]["name"] == b.name
    with serving(app, concurrency=2):
        assert [h.result(timeout=15) for h in handles] == [2, 4, 4]
    stats = app.stats()
    assert (stats[a.name].succeeded, stats[b.name].succeeded) == (2, 1)
    assert stats[a.name].seconds_max >= 0


@pytest.mark.parametrize("driver", ["threads", "asyncio"])
def test_a_running_worker_serves_a_queue_registered_after_it_started(
    make_tasks: MakeTasks, driver: str
) -> None:
    """A task registered on a new queue while the app's worker runs is served by it (a
    coroutine task in a worker on threads, a plain one in a worker on asyncio); that
    queue's stats are returned with the others'."""
    app = make_tasks(store_result=True)

    async def coroutine(x: int) -> int:
        return x * 3

    def plain(x: int) -> int:
        return x * 3

    first = app.task(name="first")(plain if driver == "threads" else coroutine)
    returned: dict[str, WorkerStats] = {}
    worker = app.worker(handle_signals=False, poll_wait=0.2)
    assert worker.is_async is (driver == "asyncio")
    thread = threading.Thread(target=lambda: returned.update(worker.run()), daemon=True)
    thread.start()
    try:
        assert ok(first.delay(1)).result(timeout=15) == 3  # running
        added = app.task(name="added", queue="added_queue")(
            coroutine if driver == "threads" else plain
        )
        assert ok(added.delay(7)).result(timeout=15) == 21
    finally:
        worker.stop()
        thread.join(15)
    assert not thread.is_alive()
    assert sorted(returned) == ["added_queue", "tasks"]
    assert returned["added_queue"].completed == 1


def test_a_task_storing_results_registered_after_the_worker_started_keeps_them(
    make_tasks: MakeTasks,
) -> None:
    """On a queue that keeps history (retention= given) but whose tasks stored no result
    when the worker started, a task registered later with store_result=True gets its
    results kept (they used to be dropped: result() gave None)."""
    app = make_tasks(retention=600)

    @app.task
    def first() -> None:
        return None

    with serving(app):
        first_call = ok(first.delay())
        wait_until(lambda: ok(first_call.status()) == "done", what="the first call to run")
        later = app.task(name="later", store_result=True)(lambda: {"kept": True})
        assert ok(later.delay()).result(timeout=15) == {"kept": True}
    assert ok(app.queue().get_message(first_call.id))["result"] is None


def test_a_new_queue_the_running_worker_cannot_open_is_logged_and_tried_again(
    make_tasks: MakeTasks, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A queue registered while the worker runs that cannot be opened (the database is
    down) is logged once, the other queues are served meanwhile, and it is served once it
    opens."""
    monkeypatch.setattr(TaskWorker, "_REOPEN_AFTER", 0.0)  # at every look
    app = make_tasks(store_result=True)
    opening = app.queue
    down = threading.Event()
    down.set()
    tries: list[str] = []

    def queue(name: str | None = None) -> Queue:
        if name == "added_queue" and down.is_set():
            tries.append(name)
            raise QueueError("the database is down", ErrorKind.STORAGE)
        return opening(name)

    monkeypatch.setattr(app, "queue", queue)

    @app.task
    def first() -> int:
        return 1

    with serving(app), caplog.at_level(logging.ERROR, "sqqueue.tasks.runner"):
        assert ok(first.delay()).result(timeout=15) == 1
        added = app.task(name="added", queue="added_queue")(lambda: 2)
        wait_until(lambda: len(tries) >= 3, what="the worker to try the new queue again")
        assert ok(first.delay()).result(timeout=15) == 1  # served meanwhile
        down.clear()
        assert ok(added.delay()).result(timeout=15) == 2
    errors = [r.getMessage() for r in caplog.records if r.name == "sqqueue.tasks.runner"]
    assert errors == [
        "tasks worker: cannot serve queue 'added_queue', of a task registered after the "
        "worker started: the database is down; trying again every 0 s"
    ]


def test_task_metrics_remember_a_bounded_number_of_starts(
    make_queue: Callable[..., Queue], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start whose end the metrics never hear of (a handler abandoned at its timeout, a
    completion refused) is not kept for the life of the worker: only the latest
    ``STARTS_KEPT`` starts wait for their ends."""
    monkeypatch.setattr(importlib.import_module("sqqueue.tasks.runner"), "STARTS_KEPT", 2)
    queue = make_queue(table_name="metered")
    ok(queue.enqueue_batch(["a", "b", "c", "d"]))
    messages = ok(queue.dequeue_batch(4))
    metrics = TaskMetrics()
    for message in messages:
        metrics.on_start(message)
    assert len(metrics._started) == 2  # the two latest, waiting for their ends
    for message in messages:
        metrics.on_success(message, None)
    assert not metrics._started
    assert metrics.snapshot()["(not a task)"].succeeded == 4


def test_per_task_prometheus_metrics(make_tasks: MakeTasks) -> None:
    """The per-task collector exports what the workers counted, by task name."""
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from sqqueue.tasks.prometheus import TaskCollector

    app = make_tasks(store_result=True)

    @app.task(name="ok_task")
    def fine() -> int:
        return 1

    @app.task(name="bad_task", retries=0)
    def bad() -> None:
        raise RuntimeError("no")

    handles = [ok(fine.delay()), ok(fine.delay()), ok(bad.delay())]
    with serving(app):
        assert handles[0].result(timeout=15) == handles[1].result(timeout=15) == 1
        with pytest.raises(TaskFailed):
            handles[2].result(timeout=15)
    registry = CollectorRegistry()
    registry.register(TaskCollector(app))
    text = generate_latest(registry).decode()
    assert 'sqqueue_task_succeeded_total{task="ok_task"} 2.0' in text
    assert 'sqqueue_task_failed_total{task="bad_task"} 1.0' in text
    assert 'sqqueue_task_dead_lettered_total{task="bad_task"} 1.0' in text
    assert 'sqqueue_task_seconds_count{task="ok_task"} 2.0' in text


def test_tasks_on_a_given_queue(make_queue: Callable[..., Queue]) -> None:
    """Tasks(queue) sends every task through that queue; results need it to keep history,
    and periodic tasks need a path or URL."""
    plain = make_queue(table_name="jobs", clock=None)
    with pytest.raises(ValueError, match="retention"):
        Tasks(plain, store_result=True)
    app = Tasks(plain)

    @app.task
    def job() -> None: ...

    assert ok(job.delay()).id > 0 and app.queue() is plain
    with pytest.raises(ValueError, match="one queue"):
        app.task(queue="other")(lambda: None)
    with pytest.raises(ValueError, match="retention"):
        app.task(store_result=True)(lambda: None)
    with pytest.raises(ValueError, match="path or URL"):
        app.periodic(every=60)
    kept = Tasks(make_queue(table_name="kept", clock=None, retention=60), store_result=True)

    @kept.task
    def double(x: int) -> int:
        return 2 * x

    handle = ok(double.delay(4))
    with serving(kept):
        assert handle.result(timeout=15) == 8
    app.close()
    assert ok(plain.stats()).pending == 1  # the given queue is still open


def test_an_interrupted_tasks_worker_gives_running_calls_back_and_stops(
    make_tasks: MakeTasks,
) -> None:
    """KeyboardInterrupt in run() (no signal handlers): every queue's worker stops at once,
    a running call goes back to the queue, nothing runs afterwards, and the exception
    gets through, as for a Worker. A run() after that raises: a worker runs once."""
    app = make_tasks()
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    @app.task
    def slow(n: int) -> None:
        ran.append(n)
        started.set()
        release.wait(30)

    first = ok(slow.delay(1))
    worker = app.worker(handle_signals=False, poll_wait=0.2)
    threading.Thread(
        target=lambda: started.wait(15) and _thread.interrupt_main(), daemon=True
    ).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            worker.run()
        # Given back before run() let the interrupt through:
        assert ok(app.queue().get_message(first.id))["status"] == "ready"
        ok(slow.delay(2))
        time.sleep(0.5)  # (a worker still serving would take call 2 within its 0.2 s poll)
        assert ran == [1]
    finally:
        release.set()
    with pytest.raises(RuntimeError, match="has run already"):
        worker.run()


def test_an_interrupt_while_a_queue_worker_starts_still_gives_its_calls_back(
    make_tasks: MakeTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KeyboardInterrupt in run() while it starts a queue's worker thread (a loaded
    machine may run that worker up to a handler before start() returns): run() still
    waits for that worker to give its running call back before letting it through."""
    app = make_tasks()
    started, release = threading.Event(), threading.Event()

    @app.task
    def slow(n: int) -> None:
        started.set()
        release.wait(30)

    first = ok(slow.delay(1))
    serving = f"sqqueue-tasks-{app.queue().name}"  # the thread that runs the queue's worker
    original_start = threading.Thread.start

    def start_then_interrupt(thread: threading.Thread) -> None:
        original_start(thread)
        if thread.name == serving:
            assert started.wait(15)
            raise KeyboardInterrupt  # as if it came while start() waited

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    worker = app.worker(handle_signals=False, poll_wait=0.2)
    try:
        with pytest.raises(KeyboardInterrupt):
            worker.run()
        assert ok(app.queue().get_message(first.id))["status"] == "ready"
    finally:
        release.set()


def test_a_tasks_worker_refuses_the_options_its_tasks_decide(make_tasks: MakeTasks) -> None:
    """results= and retry_delay= would be overridden by the tasks' own settings: refused,
    saying where each is set, rather than silently ignored."""
    app = make_tasks()

    @app.task
    def job() -> None: ...

    with pytest.raises(ValueError, match=r"no retry_delay=.*@tasks.task\(retry="):
        app.worker(retry_delay=lambda m, e: 5)
    with pytest.raises(ValueError, match=r"no results=.*store_result=True"):
        app.worker(results=True)


def test_bad_registrations_raise() -> None:
    app = Tasks("sqlite:///unused.db")
    with pytest.raises(ValueError, match="timeout"):
        app.task(timeout=-1)(lambda: None)
    with pytest.raises(ValueError, match="retries"):
        app.task(retries=-1)(lambda: None)
    with pytest.raises(ValueError, match="no arguments"):
        app.periodic(every=10)(lambda x: None)
    with pytest.raises(ValueError, match="either cron"):
        app.periodic()

    def export(n: int) -> Iterator[int]:
        yield from range(n)

    async def stream() -> Any:
        yield 1

    for generator in (export, stream):  # calling one would not run its body
        with pytest.raises(ValueError, match=r"generator function.*must return, not yield"):
            app.task(generator)

    @app.task(name="same")
    def one() -> None: ...

    with pytest.raises(ValueError, match="registered already"):

        @app.task(name="same")
        def two() -> None: ...

    app.schedule_due()  # the scheduler starts with the periodic tasks registered so far
    with pytest.raises(ValueError, match="before the scheduler starts"):
        app.periodic(every=10)(lambda: None)

    with pytest.raises(ValueError, match="unsupported URL"):
        Tasks("redis://localhost")
    assert not Path("unused.db").exists()


def test_coroutine_hooks_are_refused_when_the_worker_is_made(tmp_path: Path) -> None:
    """Worker hooks are called as plain functions: an async one would make a coroutine
    that nothing awaits, its work silently not done. The tasks worker refuses it."""
    app = Tasks(str(tmp_path / "jobs.db"))

    @app.task
    def job() -> None: ...

    async def on_start(message: Message) -> None: ...

    class OnFailure:
        async def __call__(self, message: Message, exc: BaseException) -> None: ...

    try:
        for name, hook in (("on_start", on_start), ("on_failure", OnFailure())):
            with pytest.raises(ValueError, match=f"{name} is a coroutine function"):
                WorkerHooks(**{name: hook})
            hooks = WorkerHooks()
            setattr(hooks, name, hook)  # set after WorkerHooks checked them
            with pytest.raises(ValueError, match=f"{name} is a coroutine function"):
                app.worker(hooks=hooks)
        assert app.worker(hooks=WorkerHooks(on_start=lambda message: None)).workers
    finally:
        app.close()


def test_tasks_worker_metrics_include_the_queues(make_tasks: MakeTasks) -> None:
    """``sqqueue.tasks.prometheus.serve`` exports the queues' own metrics beside the
    per-task ones, from a file or from PostgreSQL (in the app's schema)."""
    pytest.importorskip("prometheus_client")
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from sqqueue.tasks.prometheus import serve

    app = make_tasks()

    @app.task(name="ping")
    def ping() -> None:
        return None

    ping.delay().unwrap()
    server, _durations = serve(app, 0)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=20) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ready = {
        s.labels["queue"]: s.value
        for s in families["sqqueue_messages"].samples
        if s.labels["state"] == "ready"
    }
    assert ready == {app.default_queue: 1.0}
    # The worker's own queue objects count signatures (none refused here).
    refused = {
        s.labels["queue"]: s.value
        for s in families["sqqueue_signature_invalid"].samples
        if s.name == "sqqueue_signature_invalid_total"
    }
    assert refused == {app.default_queue: 0.0}


def test_a_handle_never_gives_another_tasks_result(make_tasks: MakeTasks) -> None:
    """Ids come back from web requests: task.handle(id) for an id of another task's
    call is unknown to it, never that call's result."""
    app = make_tasks()

    @app.task(store_result=True)
    def secret() -> dict[str, str]:
        return {"token": "s3cr3t"}

    @app.task(store_result=True)
    def public() -> int:
        return 1

    handle = ok(secret.delay())
    with serving(app):
        assert handle.result(timeout=15) == {"token": "s3cr3t"}
    other = public.handle(handle.id)
    assert ok(other.status()) == "unknown"
    with pytest.raises(ResultUnavailable, match="not a call of this task"):
        other.result(timeout=0)
    assert ok(app.queue().enqueue("not a task call")) > handle.id
    assert ok(public.handle(handle.id + 1).status()) == "unknown"


# -- registering: one function per name ------------------------------------------------------------


def test_another_function_under_a_taken_name_is_refused(tmp_path: Path) -> None:
    """Two tasks made by one factory, or two lambdas, have the same default name: the
    second is refused at registration (it used to replace the first silently, so the
    first's calls ran the second's code). The same function again replaces its
    registration; a partial or a callable object needs a name=."""
    app = Tasks(str(tmp_path / "jobs.db"))

    def make_exporter(fmt: str) -> Task[[str], str]:
        @app.task
        def export(path: str) -> str:
            return f"{fmt}:{path}"

        return export

    to_csv = make_exporter("csv")
    with pytest.raises(ValueError, match=r"registered already, for another function.*name="):
        make_exporter("pdf")
    assert app.tasks[to_csv.name] is to_csv
    app.task(lambda: 1)
    with pytest.raises(ValueError, match="registered already"):
        app.task(lambda: 2)

    def job() -> None: ...

    app.task(job)
    again = app.task(retries=2)(job)
    assert app.tasks[again.name] is again and again.max_attempts == 3

    def add(a: int, b: int) -> int:
        return a + b

    class Job:
        def __call__(self, x: int) -> int:
            return x

    for nameless in (functools.partial(add, 1), Job()):
        with pytest.raises(ValueError, match=r"no module and qualified name.*pass name="):
            app.task(nameless)
    app.task(name="add-one")(functools.partial(add, 1))
    with pytest.raises(ValueError, match=r"registered already, for another function \(a partial"):
        app.task(name="add-one")(functools.partial(add, 2))


def test_a_reloaded_module_registers_its_tasks_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """importlib.reload of a module of tasks (a development server, IPython's autoreload)
    defines each task's function anew, on the app another module holds: the new version
    replaces the old one, with or without name=."""
    (tmp_path / "reload_app.py").write_text(
        f"from sqqueue import Tasks\ntasks = Tasks({str(tmp_path / 'jobs.db')!r})\n"
    )
    (tmp_path / "reloaded_jobs.py").write_text(
        "from reload_app import tasks\n"
        "@tasks.task\n"
        "def send(to: str) -> str:\n"
        "    return 'v1:' + to\n"
        "@tasks.task(name='named')\n"
        "def named() -> int:\n"
        "    return 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("reloaded_jobs")
    app = importlib.import_module("reload_app").tasks
    first = app.tasks["reloaded_jobs.send"]
    importlib.reload(module)
    again = app.tasks["reloaded_jobs.send"]
    assert again is not first and again is module.send
    assert app.tasks["named"] is module.named
    assert sorted(app.tasks) == ["named", "reloaded_jobs.send"]


# -- enqueueing: the outbox, own parameters, periodic groups, deduplication ------------------------


def test_delay_in_without_a_connection_is_an_err(make_tasks: MakeTasks) -> None:
    """delay_in(None, ...) is the queue's Err, nothing enqueued: it used to enqueue at
    once, outside the transaction it is for."""
    app = make_tasks()

    @app.task(name="send")
    def send(to: str) -> None: ...

    err(send.delay_in(None, "ada@example.com"), ErrorKind.INVALID_INPUT, "got None")
    assert ok(app.queue().is_drained())


def test_task_parameters_may_be_named_self_or_conn(make_tasks: MakeTasks) -> None:
    """The methods taking a task's arguments take their own positional-only: a task
    parameter named self (or conn, for delay_in) is the task's (it used to be a
    TypeError, where a Result is due)."""
    app = make_tasks()

    @app.task(name="notify")
    def notify(user: str, self: bool = False, conn: str = "email") -> str:
        return f"{user} {self} {conn}"

    assert notify("ada", self=True, conn="sms") == "ada True sms"
    queue = app.queue()
    handle = ok(notify.delay("ada", self=True))
    assert ok(queue.get_message(handle.id))["payload"]["kwargs"] == {"self": True}
    handle = ok(asyncio.run(notify.delay_async("ada", self=True, conn="sms")))
    assert ok(queue.get_message(handle.id))["payload"]["kwargs"] == {"self": True, "conn": "sms"}
    err(notify.delay_in(None, "ada", conn="sms"), ErrorKind.INVALID_INPUT, "got None")


def test_a_periodic_task_called_by_hand_joins_its_group(
    make_tasks: MakeTasks, clock: FakeClock
) -> None:
    """delay() of a periodic task is in the group of its ticks, so it never overlaps a
    scheduled run (it used to run beside it); another group is refused."""
    app = make_tasks(clock=clock)

    @app.periodic(every=3600, missed="run_once", name="cleanup")
    def cleanup() -> None: ...

    ((_, _, tick_id),) = app.schedule_due()
    by_hand = ok(cleanup.delay())
    queue = app.queue()
    groups = {ok(queue.get_message(i))["group"] for i in (tick_id, by_hand.id)}
    assert groups == {"sqqueue.periodic:cleanup"}
    assert ok(queue.stats()).waiting == 1  # the call by hand waits for the tick's run
    assert "never overlap" in err_text(cleanup.schedule(group="mine"), ErrorKind.INVALID_INPUT)
    # One not due yet would hold back every tick behind it in the group: refused.
    for later in ({"delay": 600}, {"eta": datetime.fromtimestamp(clock() + 3600, timezone.utc)}):
        assert "runs now" in err_text(cleanup.schedule(**later), ErrorKind.INVALID_INPUT)


def test_dedup_holds_while_the_call_is_unfinished(make_tasks: MakeTasks, clock: FakeClock) -> None:
    """dedup=True: one unfinished call per set of arguments, however long it waits (a
    call scheduled an hour ahead used to be doubled after 300 s), and a call made once
    it is done runs (one made within 300 s used to get the done call's handle). A dead
    letter holds its key while it is kept."""
    app = make_tasks(clock=clock)

    @app.task(name="rebuild", dedup=True)
    def rebuild(report: int) -> None: ...

    queue = app.queue()
    later = ok(rebuild.schedule((7,), delay=3600))
    clock.advance(301)
    assert ok(rebuild.delay(7)) == later  # still waiting: the same call
    clock.advance(3600)
    running = leased(queue)
    assert running.id == later.id
    assert ok(rebuild.delay(7)) == later  # running: the same call
    ok(queue.complete(running))
    clock.advance(10)
    again = ok(rebuild.delay(7))
    assert again != later and ok(again.status()) == "pending"
    ok(queue.fail_message(leased(queue), send_to_dlq=True, error="gave up"))
    assert ok(rebuild.delay(7)) == again and ok(again.status()) == "dead"
    ok(queue.delete_dead_letters([again.id]))
    assert ok(rebuild.delay(7)).id not in (later.id, again.id)


def test_dedup_keys_leave_out_defaults_that_are_not_json(make_tasks: MakeTasks) -> None:
    """Two producers (two processes) make the same key for the same call, also when a
    default is an object() sentinel: its repr (a memory address) used to be in the key."""
    handles = []
    for app in (make_tasks(), make_tasks()):
        unset = object()  # another object, at another address, in each producer

        @app.task(name="reindex", dedup=True)
        def reindex(doc_id: int, since: Any = unset) -> None: ...

        handles += [ok(reindex.delay(42)), ok(reindex.delay(doc_id=42))]
    assert len({h.id for h in handles}) == 1
    assert ok(reindex.delay(42, since="2030-01-01")).id != handles[0].id


# -- workers: no task, and what they log --------------------------------------------------------------


def test_a_worker_of_an_app_with_no_task_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app with no task registered (its tasks' module not imported): the worker is
    refused, from Python and from the command line, and no call is dead-lettered (it
    used to serve the default queue and dead-letter every call as unknown)."""
    db = tmp_path / "jobs.db"
    producer = Tasks(str(db))

    @producer.task(name="send")
    def send(to: str) -> None: ...

    ok(send.delay("ada@example.com"))
    empty = Tasks(str(db))
    with pytest.raises(ValueError, match=r"no task is registered.*import the module"):
        empty.worker()
    (tmp_path / "emptyjobs.py").write_text(
        f"from sqqueue import Tasks\ntasks = Tasks({str(db)!r})\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "emptyjobs", raising=False)
    result = run_cli("worker", "emptyjobs:tasks")
    assert result.exit_code == 1
    assert "no task is registered" in one_error_line(result)
    stats = ok(producer.queue().stats())
    assert (stats.pending, stats.dead) == (1, 0)
    producer.close()
    empty.close()


def test_worker_errors_show_no_argument_or_result_data(
    make_tasks: MakeTasks, caplog: pytest.LogCaptureFixture
) -> None:
    """What a worker logs above DEBUG and keeps as last_error says what was wrong by types,
    positions and the task's parameters: never a result's dict keys, a bad format field,
    or the keywords of a call. A call whose arguments do not fit the task's parameters is
    dead-lettered at once (it used to be retried until its attempts ran out)."""
    app = make_tasks()
    secrets = ("alice@example.com", "bob@example.com", "tok_live_4242", "carol@example.com")

    @app.task(name="balances", store_result=True)
    def balances() -> dict[str, Any]:
        return {"alice@example.com": 10, "bob@example.com": {20}}

    @app.task(name="notify")
    def notify(user: str) -> None: ...

    queue = app.queue()
    result_id = ok(balances.delay()).id
    token_id = ok(queue.enqueue({"sqqueue_task": "tok_live_4242", "name": "notify"}))
    call = {"sqqueue_task": 1, "name": "notify", "args": [], "kwargs": {"carol@example.com": 1}}
    misfit_id = ok(queue.enqueue(call))
    caplog.set_level(logging.DEBUG, logger="sqqueue")
    with serving(app):
        wait_until(lambda: len(ok(queue.get_dead_letters())) == 3, what="three dead letters")
    dead = {d["id"]: d for d in ok(queue.get_dead_letters())}
    assert dead[result_id]["last_error"].startswith(
        "ResultNotJSON: the return value of balances[...] is a set;"
    )
    assert dead[token_id]["last_error"] == (
        "InvalidTaskMessage: malformed task message: its 'sqqueue_task' field is a str, not "
        "a format number (a small positive int)"
    )
    assert dead[misfit_id]["attempts"] == 1
    assert dead[misfit_id]["last_error"] == (
        "InvalidTaskMessage: the call's arguments (0 positional, 1 by keyword) do not fit "
        "task notify(user: 'str') -> 'None'; fix the call or the task, then redrive this "
        "dead letter"
    )
    for letter in dead.values():
        assert not any(s in letter["last_error"] for s in secrets), letter["last_error"]
    shown = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert shown and not [line for line in shown if any(s in line for s in secrets)]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("balances['bob@example.com'] is a set" in line for line in debug)


def test_a_call_given_back_at_shutdown_reads_pending(make_tasks: MakeTasks) -> None:
    """A run given back by a worker shutting down (requeue: its attempt counts) did not
    fail: status() says "pending" (it said "failed"); a failed attempt says "failed"."""
    app = make_tasks()

    @app.task(name="job")
    def job() -> None: ...

    handle = ok(job.delay())
    queue = app.queue()
    ok(queue.requeue(leased(queue)))
    assert ok(queue.get_message(handle.id))["attempts"] == 1
    assert ok(handle.status()) == "pending"
    ok(queue.fail_message(leased(queue), error="RuntimeError: boom"))
    assert ok(handle.status()) == "failed"


_TASK_WORKER_HANDLERS_SCRIPT = """
import asyncio, os, signal, sys
from sqqueue import Tasks

tasks = Tasks(sys.argv[1])


@tasks.task
async def noop() -> None:
    pass


def own(signum, frame):
    pass


signal.signal(signal.SIGTERM, own)
signal.signal(signal.SIGINT, own)


def handlers():
    return [signal.getsignal(s) is own for s in (signal.SIGTERM, signal.SIGINT)]


async def main():
    worker = tasks.worker(poll_wait=0.2, periodic=False)
    run = asyncio.create_task(worker.run_async())
    for _ in range(1000):  # (up to 10 s: until it has taken the signals)
        if not any(handlers()):
            break
        await asyncio.sleep(0.01)
    print("while it runs, the program's own:", handlers(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # stops it
    await asyncio.wait_for(run, 30)
    print("after it, the program's own:", handlers(), flush=True)


asyncio.run(main())
tasks.close()
"""


def test_an_async_task_worker_stops_on_a_signal_and_puts_the_programs_handlers_back(
    tmp_path: Path,
) -> None:
    """A task worker running on the event loop takes SIGTERM and SIGINT while it runs (a
    signal stops it) and, once stopped, gives back the handlers the program had (they
    were left at the default: a later SIGTERM killed the program)."""
    script = tmp_path / "handlers.py"
    script.write_text(_TASK_WORKER_HANDLERS_SCRIPT)
    done = run_script(script, str(tmp_path / "q.db"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "while it runs, the program's own: [False, False]",
        "after it, the program's own: [True, True]",
    ], done.stdout + done.stderr
