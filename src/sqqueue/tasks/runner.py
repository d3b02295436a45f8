"""Running tasks: the handler a worker calls for each message, per-task metrics, and the
worker that serves every queue of a :class:`~sqqueue.tasks.Tasks` app."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..aio import AsyncWorker
from ..exceptions import QueueError, Reject
from ..loop_signals import receive_signals, stop_receiving
from ..message import Message
from ..threads import run_in_own_thread
from ..worker import Worker, WorkerCore, WorkerHooks, WorkerStats
from .context import RUNNING, TaskContext
from .payload import MARK, InvalidTaskMessage, TaskCall, UnknownTask, check_json, decode

if TYPE_CHECKING:
    from .app import Tasks
    from .task import Task

__all__ = [
    "Dispatcher",
    "ResultNotJSON",
    "TaskMetrics",
    "TaskStats",
    "TaskWorker",
    "check_hooks",
]

logger = logging.getLogger(__name__)

#: How many started tasks ``TaskMetrics`` remembers the start of, awaiting their end.
STARTS_KEPT = 10_000


class ResultNotJSON(Reject):
    """A task that stores its result returned something that is not JSON. It ran, so it is
    dead-lettered rather than run again (fix the task, then redrive if need be)."""


class Dispatcher:
    """The handler of one queue's messages: finds the task a message names and runs it.

    Call it (threads) or ``await run_async(message)`` (asyncio: coroutine tasks on the
    loop, plain ones in a thread). Its ``retry_delay`` gives each task's retry policy to
    the worker.
    """

    def __init__(self, tasks: Mapping[str, Task[Any, Any]], queue: str) -> None:
        self.tasks = tasks
        self.queue = queue

    def lookup(self, message: Message) -> tuple[Task[Any, Any], TaskCall]:
        """The task a message calls and the call; raises a ``Reject`` (dead-lettered at
        once) for a call that can never run here."""
        call = decode(message.payload)
        task = self.tasks.get(call.name)
        if task is None:
            raise UnknownTask(
                f"no task named {call.name!r} is registered in this worker; deploy the code "
                "that defines it to the workers, then redrive this dead letter"
            )
        try:
            task.signature.bind(*call.args, **call.kwargs)
        except TypeError:
            # Every attempt would fail the same way: not retried. Python's own message
            # would name the call's keywords (data): this one names the task's parameters.
            raise InvalidTaskMessage(
                f"the call's arguments ({len(call.args)} positional, {len(call.kwargs)} by "
                f"keyword) do not fit task {task.name}{task.signature}; fix the call or the "
                "task, then redrive this dead letter"
            ) from None
        return task, call

    def _context(self, message: Message, task: Task[Any, Any], call: TaskCall) -> TaskContext:
        tick = None if call.tick is None else datetime.fromtimestamp(call.tick, tz=timezone.utc)
        return TaskContext(
            task.name, message.id, message.attempts, message.max_attempts, self.queue, tick
        )

    def __call__(self, message: Message) -> Any:
        task, call = self.lookup(message)
        context = contextvars.copy_context()
        context.run(RUNNING.set, self._context(message, task, call))
        if task.is_async:
            value = context.run(asyncio.run, _run_coroutine(task, call))
        elif task.timeout is None:
            value = context.run(task.fn, *call.args, **call.kwargs)
        else:
            value = _run_with_timeout(task, call, context)
        return self._result(task, value, message)

    async def run_async(self, message: Message) -> Any:
        task, call = self.lookup(message)
        token = RUNNING.set(self._context(message, task, call))
        try:
            if task.is_async:
                value = await _run_coroutine(task, call)
            else:
                context = contextvars.copy_context()
                # On a thread of its own, not the loop's pool (see sqqueue.threads).
                if task.timeout is None:
                    value = await run_in_own_thread(context.run, task.fn, *call.args, **call.kwargs)
                else:
                    value = await run_in_own_thread(_run_with_timeout, task, call, context)
        finally:
            RUNNING.reset(token)
        return self._result(task, value, message)

    def _result(self, task: Task[Any, Any], value: Any, message: Message) -> Any:
        """What the worker keeps as the message's result: the return value of a task that
        stores results (checked to be JSON), else nothing."""
        if not task.store_result:
            return None
        where = f"the return value of {task.name}"
        try:
            # The error is logged and kept as last_error: it shows no dict key (data).
            check_json(value, where, keys=False)
        except QueueError as exc:
            if logger.isEnabledFor(logging.DEBUG):  # where exactly, keys shown
                try:
                    check_json(value, where)
                except QueueError as shown:
                    logger.debug("message %d: %s", message.id, shown)
            raise ResultNotJSON(str(exc)) from None
        return value

    def retry_delay(self, message: Message, exc: BaseException) -> float | None:
        """The task's own retry policy, if it has one (else the queue's)."""
        try:
            task, _ = self.lookup(message)
        except Reject:
            return None
        return None if task.retry is None else task.retry.delay(message.attempts)


async def _run_coroutine(task: Task[Any, Any], call: TaskCall) -> Any:
    coroutine = task.fn(*call.args, **call.kwargs)
    if task.timeout is None:
        return await coroutine

    async def outcome() -> tuple[bool, Any]:
        # wait_for runs this in a task of its own, which would hand a SystemExit or
        # KeyboardInterrupt to the event loop (ending the whole worker), and whose
        # TimeoutError would pass for the timeout's: whatever the task raises is caught
        # here and raised again below, where it fails only its message, as it is.
        try:
            return True, await coroutine
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return False, exc

    try:
        finished, value = await asyncio.wait_for(outcome(), task.timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(
            f"task {task.name} ran longer than its timeout of {task.timeout:g} s (cancelled)"
        ) from None
    if not finished:
        raise value
    return value


def _run_with_timeout(task: Task[Any, Any], call: TaskCall, context: contextvars.Context) -> Any:
    """Run a plain function with a time limit. Python cannot stop a thread: past the limit
    the call is failed and its thread left to finish, its outcome ignored."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = context.run(task.fn, *call.args, **call.kwargs)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"sqqueue-task-{task.name}", daemon=True)
    thread.start()
    thread.join(task.timeout)
    if thread.is_alive():
        raise TimeoutError(
            f"task {task.name} ran longer than its timeout of {task.timeout:g} s (its thread "
            "is left to finish; what it returns is ignored)"
        )
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- per-task metrics --------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskStats:
    """What the workers of this process did with one task."""

    task: str
    started: int = 0
    succeeded: int = 0
    failed: int = 0  #: failed attempts (each retry counts)
    dead_lettered: int = 0
    seconds_total: float = 0.0  #: time spent running it, over every attempt that ended
    seconds_max: float = 0.0


class TaskMetrics:
    """Counts and durations per task name, fed by the worker hooks
    (:meth:`hooks` chains them with yours); read with :meth:`snapshot`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, TaskStats] = {}
        self._started: dict[tuple[str, int], float] = {}

    @staticmethod
    def _name(message: Message) -> str:
        payload = message.payload
        if (
            isinstance(payload, Mapping)
            and MARK in payload
            and isinstance(payload.get("name"), str)
        ):
            return str(payload["name"])
        return "(not a task)"

    def _update(self, name: str, **changes: Any) -> None:
        current = self._stats.get(name) or TaskStats(name)
        self._stats[name] = replace(current, **changes)

    def on_start(self, message: Message) -> None:
        name = self._name(message)
        with self._lock:
            self._started[(message.queue, message.id)] = time.monotonic()
            # A message that never ends here (its handler abandoned at its timeout, its
            # completion refused) leaves its start behind: keep only the latest ones.
            while len(self._started) > STARTS_KEPT:
                del self._started[next(iter(self._started))]
            current = self._stats.get(name) or TaskStats(name)
            self._update(name, started=current.started + 1)

    def _ended(self, message: Message, outcome: str) -> None:
        name = self._name(message)
        with self._lock:
            began = self._started.pop((message.queue, message.id), None)
            current = self._stats.get(name) or TaskStats(name)
            elapsed = 0.0 if began is None else time.monotonic() - began
            self._update(
                name,
                **{outcome: getattr(current, outcome) + 1},
                seconds_total=current.seconds_total + elapsed,
                seconds_max=max(current.seconds_max, elapsed),
            )

    def on_success(self, message: Message, _value: Any) -> None:
        self._ended(message, "succeeded")

    def on_failure(self, message: Message, _exc: BaseException) -> None:
        self._ended(message, "failed")

    def on_dead_letter(self, message: Message, _exc: BaseException) -> None:
        name = self._name(message)
        with self._lock:
            current = self._stats.get(name) or TaskStats(name)
            self._update(name, dead_lettered=current.dead_lettered + 1)

    def snapshot(self) -> dict[str, TaskStats]:
        with self._lock:
            return dict(self._stats)

    def hooks(self, theirs: WorkerHooks | None = None) -> WorkerHooks:
        """Worker hooks that record these metrics, then call ``theirs``; ValueError if
        one of theirs is a coroutine function (see :func:`check_hooks`)."""
        theirs = check_hooks(theirs)

        def chain(mine: Callable[..., Any], other: Callable[..., Any] | None) -> Callable[..., Any]:
            def both(*args: Any) -> None:
                try:
                    mine(*args)
                except Exception:
                    logger.exception("recording task metrics failed")
                if other is not None:
                    other(*args)

            return both

        return WorkerHooks(
            on_start=chain(self.on_start, theirs.on_start),
            on_success=chain(self.on_success, theirs.on_success),
            on_failure=chain(self.on_failure, theirs.on_failure),
            on_dead_letter=chain(self.on_dead_letter, theirs.on_dead_letter),
        )


_HOOK_NAMES = ("on_start", "on_success", "on_failure", "on_dead_letter")


def check_hooks(hooks: WorkerHooks | None) -> WorkerHooks:
    """``hooks`` (or none), checked again as the worker is made: hooks set to a
    coroutine function after WorkerHooks(...) checked them would never run (see
    ``WorkerHooks``)."""
    if hooks is None:
        return WorkerHooks()
    if not isinstance(hooks, WorkerHooks):
        raise ValueError(f"hooks must be a sqqueue.WorkerHooks, got {type(hooks).__name__}")
    return WorkerHooks(**{name: getattr(hooks, name) for name in _HOOK_NAMES})


# -- the worker of an app ------------------------------------------------------------------------


class TaskWorker:
    """Runs every task of an app: one :class:`~sqqueue.Worker` per queue (threads), or
    one :class:`~sqqueue.AsyncWorker` per queue on one event loop when any task is a
    coroutine; and the periodic scheduler. SIGTERM/SIGINT stop it gracefully (a second
    signal at once), as they stop a Worker.

    A task registered on a queue of its own while the worker runs is served too: the
    running worker looks at the app's queues every 0.2 s and starts a worker for each
    new one (not when made with ``queues=[...]``: it serves those only).

    Options are those of :class:`~sqqueue.Worker` (``concurrency`` is per queue), but
    ``results`` and ``retry_delay``, which the tasks decide.
    """

    # How long an interrupted run() waits for its workers to give their messages back.
    _IMMEDIATE_STOP = 10.0
    #: how often a running worker looks for queues of tasks registered since it started
    _ADOPT_EVERY = 0.2
    #: how long it waits before opening again a new queue it could not open
    _REOPEN_AFTER = 10.0

    def __init__(
        self,
        app: Tasks,
        *,
        queues: list[str] | None = None,
        periodic: bool = True,
        handle_signals: bool = True,
        hooks: WorkerHooks | None = None,
        **options: Any,
    ) -> None:
        if not app.tasks:
            # Else it would serve the default queue and dead-letter every call on it as
            # unknown: most likely the module defining the tasks was not imported.
            raise ValueError(
                "no task is registered in this Tasks app: import the module that defines "
                "its tasks (@tasks.task) before starting the worker, or name that module "
                "(sqqueue worker myapp.jobs:tasks)"
            )
        names = list(queues) if queues is not None else app.queue_names()
        if not names:
            raise ValueError("no queue to serve: name at least one in queues=[...]")
        unknown = [n for n in names if n not in app.queue_names()]
        if unknown:
            raise ValueError(f"no task of this app uses queue {unknown[0]!r}")
        for key, instead in (
            ("results", "@tasks.task(store_result=True), or Tasks(..., store_result=True)"),
            ("retry_delay", "@tasks.task(retry=RetryPolicy...), or the queue's retry policy"),
        ):
            if key in options:  # set per queue below, from the tasks
                raise ValueError(f"a tasks worker takes no {key}=: its tasks decide ({instead})")
        self.app = app
        self.handle_signals = handle_signals
        self.is_async = any(t.is_async for t in app.tasks.values())
        self.workers: dict[str, WorkerCore] = {}
        self._options = options
        self._hooks = app.metrics.hooks(hooks)
        # Given queues=[...], it serves those only; else every queue of the app, those of
        # tasks registered after it started too.
        self._adopts = queues is None
        self._reopen_at: dict[str, float] = {}  # new queues it could not open: when to retry
        self._lock = threading.Lock()  # guards workers (added to while running) and stopping
        for name in names:
            self.workers[name] = self._make_worker(name)
        self.scheduler = app.scheduler() if periodic and app.has_periodic() else None
        self._stop_scheduler = threading.Event()
        self._stopping = False
        self._ran = False
        # Signals received, noted by the handler and acted on by run()'s loop: a handler
        # runs between any two steps of that thread, which may hold a lock stop() takes.
        self._signals: list[int] = []

    def _make_worker(self, name: str) -> WorkerCore:
        """The worker of queue ``name`` (opened if need be: ``QueueError``, ``ValueError``)."""
        queue = self.app.queue(name)
        dispatcher = Dispatcher(self.app.tasks, name)
        settings = {
            "handle_signals": False,
            "hooks": self._hooks,
            # Whatever the queue can keep: the dispatcher gives the values of the tasks that
            # store results, None for the others, so that a task registered later, storing
            # results on a queue whose tasks stored none so far, has them kept too.
            "results": queue.keeps_history,
            "retry_delay": dispatcher.retry_delay,
            "name": f"sqqueue-tasks-{name}",
            **self._options,
        }
        if self.is_async:
            return AsyncWorker(queue, dispatcher.run_async, **settings)
        return Worker(queue, dispatcher, **settings)

    def _adopt_new_queues(self) -> list[tuple[str, WorkerCore]]:
        """Workers for the queues of tasks registered since this worker was made, added to
        :attr:`workers`, for the caller to run; none once stopping. A queue that cannot be
        opened is logged and tried again ``_REOPEN_AFTER`` seconds later."""
        if not self._adopts or self._stopping:
            return []
        now = time.monotonic()
        with self._lock:
            missing = [
                name
                for name in self.app.queue_names()
                if name not in self.workers and self._reopen_at.get(name, 0.0) <= now
            ]
        made: list[tuple[str, WorkerCore]] = []
        for name in missing:
            try:
                made.append((name, self._make_worker(name)))
            except Exception as exc:
                if name not in self._reopen_at:  # (logged once, not at every retry)
                    logger.error(
                        "tasks worker: cannot serve queue %r, of a task registered after the "
                        "worker started: %s; trying again every %g s",
                        name,
                        exc,
                        self._REOPEN_AFTER,
                    )
                self._reopen_at[name] = now + self._REOPEN_AFTER
        added: list[tuple[str, WorkerCore]] = []
        with self._lock:
            if self._stopping:  # (stop() stopped the workers it found: not these)
                return []
            for name, worker in made:
                self._reopen_at.pop(name, None)
                self.workers[name] = worker
                added.append((name, worker))
        for name, _worker in added:
            logger.info(
                "tasks worker: serving queue %r too (a task registered on it after the worker "
                "started)",
                name,
            )
        return added

    def stop(self, immediate: bool = False) -> None:
        """Stop every queue's worker (gracefully, unless ``immediate``) and the scheduler."""
        with self._lock:
            self._stopping = True
            workers = list(self.workers.values())
        self._stop_scheduler.set()
        for worker in workers:
            worker.stop(immediate=immediate)

    def _heed_signals(self) -> None:
        while self._signals:
            self._on_signal(self._signals.pop(0))

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            logger.warning("tasks worker: second %s, stopping immediately", name)
            self.stop(immediate=True)
        else:
            logger.info("tasks worker: %s received, shutting down gracefully", name)
            self.stop()

    def _start_scheduler(self) -> threading.Thread | None:
        if self.scheduler is None:
            return None
        thread = threading.Thread(
            target=self.scheduler.run,
            args=(self._stop_scheduler,),
            name="sqqueue-tasks-scheduler",
            daemon=True,
        )
        thread.start()
        return thread

    def _start_once(self) -> None:
        """Raise RuntimeError if this worker ran before (see ``Worker.run``)."""
        if self._ran:
            raise RuntimeError("this tasks worker has run already; make a new one: tasks.worker()")
        self._ran = True

    def run(self) -> dict[str, WorkerStats]:
        """Serve until stopped; returns each queue's stats. Blocks the calling thread.
        Interrupted (KeyboardInterrupt without signal handlers), it stops at once, running
        messages given back, then lets the exception through, as a Worker does."""
        if self.is_async:
            return asyncio.run(self.run_async())
        self._start_once()
        previous: dict[int, Any] = {}
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, lambda n, _f: self._signals.append(n))
        stats: dict[str, WorkerStats] = {}
        scheduler = self._start_scheduler()
        # Each worker's end is an Event, not its thread's join(): a join interrupted by
        # KeyboardInterrupt takes the thread for ended (Python 3.11), and no later join
        # would wait for it.
        ended: list[threading.Event] = []

        def start(name: str, worker: WorkerCore) -> None:
            assert isinstance(worker, Worker)
            done = threading.Event()

            def serve() -> None:
                try:
                    stats[name] = worker.run()
                finally:
                    done.set()

            # Counted before it starts: an interrupt may arrive while start() waits for
            # the thread, which may by then be running a handler whose message the
            # interrupted run() must wait to see given back.
            ended.append(done)
            threading.Thread(target=serve, name=f"sqqueue-tasks-{name}", daemon=True).start()

        try:
            with self._lock:
                first = list(self.workers.items())
            for name, worker in first:
                start(name, worker)
            while True:
                self._heed_signals()
                waiting = next((done for done in ended if not done.is_set()), None)
                if waiting is None:
                    break
                # Short waits: the main thread stays responsive, and sees new queues.
                waiting.wait(self._ADOPT_EVERY)
                self._heed_signals()
                for name, worker in self._adopt_new_queues():
                    start(name, worker)
        except BaseException:
            self.stop(immediate=True)
            for done in ended:
                done.wait(self._IMMEDIATE_STOP)
            raise
        finally:
            self._stop_scheduler.set()
            if scheduler is not None:
                scheduler.join(5)
            for number, handler in previous.items():
                signal.signal(number, handler)
        return stats

    async def run_async(self) -> dict[str, WorkerStats]:
        """:meth:`run` on the running event loop (every queue's AsyncWorker, or each
        Worker in a thread)."""
        self._start_once()
        receiving = (
            self.handle_signals
            and threading.current_thread() is threading.main_thread()
            and receive_signals(self._on_signal)
        )
        scheduler = self._start_scheduler()
        runs: dict[str, asyncio.Future[WorkerStats]] = {}

        def start(name: str, worker: WorkerCore) -> None:
            if isinstance(worker, AsyncWorker):
                runs[name] = asyncio.ensure_future(worker.run())
            else:
                assert isinstance(worker, Worker)
                runs[name] = asyncio.ensure_future(asyncio.to_thread(worker.run))

        try:
            with self._lock:
                first = list(self.workers.items())
            for name, worker in first:
                start(name, worker)
            await self._serve_async(runs, start)
        finally:
            self._stop_scheduler.set()
            if receiving:
                stop_receiving(self._on_signal)
            if scheduler is not None:
                await asyncio.to_thread(scheduler.join, 5)
        return {name: run.result() for name, run in runs.items()}

    async def _serve_async(
        self,
        runs: dict[str, asyncio.Future[WorkerStats]],
        start: Callable[[str, WorkerCore], None],
    ) -> None:
        """Wait for every queue's worker to end, starting those of queues registered
        meanwhile. A worker that raises, or a cancellation, stops the others at once (their
        running calls given back) before it gets through."""
        try:
            while True:
                for run in runs.values():
                    if run.done():
                        run.result()  # (raises what the worker raised)
                pending = [run for run in runs.values() if not run.done()]
                if not pending:
                    return
                await asyncio.wait(pending, timeout=self._ADOPT_EVERY)
                for name, worker in await asyncio.to_thread(self._adopt_new_queues):
                    start(name, worker)
        except BaseException:
            self.stop(immediate=True)
            for name, run in runs.items():
                if isinstance(self.workers.get(name), AsyncWorker):
                    run.cancel()  # (a Worker's thread is not: it ends once stopped)
            await asyncio.wait(list(runs.values()), timeout=self._IMMEDIATE_STOP)
            raise
