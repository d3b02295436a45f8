"""``Tasks``: an app's registry of tasks, the queues they go through, and its workers."""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta, tzinfo
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar, overload

from ..aio import AsyncQueue
from ..core.checks import MAX_ATTEMPTS, MAX_DELAY
from ..exceptions import EnqueueError
from ..names import validate_queue_name
from ..queue import Queue, connect
from ..result import Result
from ..retry import RetryPolicy
from ..targets import parse_target
from ..worker import WorkerStats
from .payload import encode
from .periodic import Missed, Periodic, Schedule, Scheduler, periodic_group, tick_key
from .runner import TaskMetrics, TaskStats, TaskWorker
from .task import KeyOption, Task

__all__ = ["Tasks"]

P = ParamSpec("P")
R = TypeVar("R")

#: the margin a tick's deduplication key outlives its task's longest interval by
_TICK_KEY_MARGIN = 300.0

#: the keywords of Tasks.task (its typed overload lists them with their types)
_TASK_OPTIONS = frozenset(
    (
        "name",
        "queue",
        "priority",
        "retries",
        "retry",
        "timeout",
        "dedup",
        "group",
        "ttl",
        "store_result",
    )
)


class Tasks:
    """A set of tasks and the database they go through::

        tasks = Tasks("jobs.db")               # a path, sqlite:///..., postgresql://...

        @tasks.task(retries=5)
        def send_email(to: str, subject: str) -> None: ...

        send_email.delay("ada@example.com", subject="hi")     # Ok(TaskHandle)

    and ``sqqueue worker myapp.jobs:tasks`` (or ``tasks.run_worker()``) runs them.

    - ``target``: where the queues live (``sqqueue.connect`` opens them, one per queue
      name, when first needed), or an open queue (``Tasks(queue)``: every task then goes
      through that one queue).
    - ``queue``: the queue of tasks that do not name one (default ``"tasks"``).
    - ``store_result``: keep every task's return value (each task can also ask for it);
      results are kept ``result_ttl`` seconds (default a day) from the call's end, by
      ``clock``: past it a handle reads them as expired, pruned yet or not.
    - ``clock``: a function returning Unix seconds (tests), used by the queues too.
    - other keyword arguments are settings of the queues it opens
      (``default_visibility_timeout=60``, ``retry=RetryPolicy.exponential()``, ...).
      It opens them with ``dedup_window="exists"``: a task call's deduplication key
      holds while the call is unfinished (see :meth:`task`); ``dedup_window=SECONDS``
      makes keys hold that long from the enqueue instead.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | Queue | AsyncQueue,
        *,
        queue: str | None = None,
        store_result: bool = False,
        result_ttl: float | timedelta = 86400.0,
        clock: Callable[[], float] | None = None,
        **settings: Any,
    ) -> None:
        if isinstance(target, AsyncQueue):
            target = target.sync
        self._given: Queue | None = None
        self.target: str | None = None
        if isinstance(target, Queue):
            if settings:
                raise ValueError(
                    "queue settings go to the queue you pass, not to Tasks(queue): "
                    f"got {', '.join(sorted(settings))}"
                )
            self._given = target
            if queue is not None and queue != target.name:
                raise ValueError(
                    f"Tasks(queue) uses that queue ({target.name!r}); queue={queue!r} differs"
                )
            queue = target.name
            if store_result and not target.keeps_history:
                raise ValueError(_no_history(target.name))
        else:
            parse_target(target)  # ValueError saying what a target looks like
            self.target = os.fspath(target)
        self.default_queue = validate_queue_name(queue or "tasks")
        if isinstance(result_ttl, timedelta):
            result_ttl = result_ttl.total_seconds()
        if not (isinstance(result_ttl, (int, float)) and 0 < result_ttl <= MAX_DELAY):
            raise ValueError(f"result_ttl must be seconds > 0, got {result_ttl!r}")
        if clock is not None and not callable(clock):
            raise ValueError("clock must be a callable returning Unix seconds")
        self.store_result = bool(store_result)
        self.result_ttl = float(result_ttl)
        self._clock = clock or time.time
        self._settings = dict(settings)
        if clock is not None:
            self._settings["clock"] = clock
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._queues: dict[str, Queue] = {}
        self._tick_queues: dict[str, Queue] = {}
        self._scheduler: Scheduler | None = None
        self._lock = threading.RLock()
        #: counts and durations per task, recorded by this process's workers
        self.metrics = TaskMetrics()

    def __repr__(self) -> str:
        where = self.target if self._given is None else f"queue {self._given.name!r}"
        return f"<Tasks {where}: {len(self._tasks)} task(s)>"

    # -- registering ---------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        dedup: bool | Callable[..., str] | None = None,
        group: KeyOption = None,
        ttl: float | timedelta | None = None,
        store_result: bool | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self, fn: Callable[P, R] | None = None, /, **options: Any
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function as a task (``@tasks.task`` or ``@tasks.task(...)``).

        - ``name``: how messages name it (default ``module.qualname``); keep it stable.
          A name is one function's: registering another function under a name taken
          (two made by one factory, two lambdas: their default names are the same)
          raises ``ValueError``; the same function again replaces its registration. A
          ``functools.partial`` or a callable object needs a ``name``.
        - ``queue``: the queue its calls go through (default the app's).
        - ``priority``, ``ttl``: as for ``enqueue``.
        - ``retries``: attempts after the first (default: the queue's max attempts);
          ``retry``: a ``RetryPolicy`` spacing them (default: the queue's).
        - ``timeout``: seconds a run may take; past it the run fails with TimeoutError
          (and is retried). A coroutine is cancelled; a plain function's thread cannot be
          stopped by Python, so it is left to finish and its result ignored.
        - ``dedup``: ``True`` for a deduplication key from the task and its arguments (the
          JSON ones: a default that is not JSON is left out), or a function of the
          arguments returning the key. While a call with that key is unfinished (waiting,
          running, to be retried) or dead-lettered, another returns its handle and adds
          nothing; once it is done, a new call runs. ``group``: a message group, fixed
          or a function of the arguments (calls of one group run one at a time, in order).
        - ``store_result``: keep the return value (JSON) for ``handle.result()``.
        """

        unknown = sorted(set(options) - _TASK_OPTIONS)
        if unknown:
            raise TypeError(f"task() got an unexpected keyword argument {unknown[0]!r}")

        def register(function: Callable[P, R]) -> Task[P, R]:
            return self._register(function, options, periodic=None)

        return register if fn is None else register(fn)

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: float | None = None,
        tz: str | tzinfo = "UTC",
        missed: Missed = "skip",
        grace: float | None = None,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        retries: int | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        ttl: float | timedelta | None = None,
        store_result: bool | None = None,
    ) -> Callable[[Callable[[], R]], Task[[], R]]:
        """Register a function of no arguments to run on a schedule, by the workers::

            @tasks.periodic(cron="0 3 * * *", tz="Europe/Paris")   # 03:00 Paris time
            def nightly_cleanup() -> None: ...

            @tasks.periodic(every=30)                               # every 30 s
            def refresh() -> None: ...

        Each tick runs once, however many workers run. ``missed``: what happens to ticks
        that passed while no worker was running: ``"skip"`` them (default; a tick noticed
        more than ``grace`` seconds late is skipped) or ``"run_once"`` (the latest of them
        runs once). It is a task too: ``nightly_cleanup.delay()`` runs it now, or once
        the run in progress has finished: every call of it is in one message group, so
        no two of its runs overlap.
        """
        if self._given is not None:
            raise ValueError(
                "periodic tasks need Tasks(target) with a path or URL, not a queue object: "
                "the scheduler opens a queue object of its own, whose deduplication window "
                "covers a whole interval between ticks"
            )
        schedule = Schedule(cron=cron, every=every, tz=tz)
        spec = Periodic(schedule, missed, grace)

        options = {
            "name": name,
            "queue": queue,
            "priority": priority,
            "retries": retries,
            "retry": retry,
            "timeout": timeout,
            "ttl": ttl,
            "store_result": store_result,
        }

        def register(function: Callable[[], R]) -> Task[[], R]:
            return self._register(function, options, periodic=spec)

        return register

    def _register(
        self, fn: Callable[P, R], options: Mapping[str, Any], periodic: Periodic | None
    ) -> Task[P, R]:
        """Check and record a task; ``options`` are the keywords of :meth:`task`."""
        options = dict(options)
        name, queue = options.pop("name", None), options.pop("queue", None)
        retries, store_result = options.pop("retries", None), options.pop("store_result", None)
        if isinstance(fn, Task):
            raise ValueError(f"{fn.name} is a task already")
        if not callable(fn):
            raise ValueError(f"a task must be a function, got {type(fn).__name__}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            # Calling it only makes a generator: its body would never run.
            raise ValueError(
                f"{getattr(fn, '__qualname__', fn)} is a generator function (it has a yield): "
                "a task must return, not yield (return a list)"
            )
        task_name = name if name is not None else _qualified(fn)
        if task_name is None:
            # A functools.partial, a callable object: nothing to name it by.
            raise ValueError(
                f"a {type(fn).__name__} has no module and qualified name to name a task "
                "by: pass name=... (@tasks.task(name='myapp.jobs.export'))"
            )
        if not isinstance(task_name, str) or not 0 < len(task_name) <= 200:
            raise ValueError(f"a task name must be a str of 1 to 200 characters, got {task_name!r}")
        queue_name = validate_queue_name(queue) if queue is not None else self.default_queue
        if self._given is not None and queue_name != self._given.name:
            raise ValueError(
                f"task {task_name}: Tasks(queue) has the one queue {self._given.name!r}; "
                "pass a path or URL to Tasks to use several queues"
            )
        max_attempts = None
        if retries is not None:
            if (
                not isinstance(retries, int)
                or isinstance(retries, bool)
                or not 0 <= retries < MAX_ATTEMPTS
            ):
                raise ValueError(f"retries must be an int >= 0, got {retries!r}")
            max_attempts = retries + 1
        stores = self.store_result if store_result is None else bool(store_result)
        if periodic is not None:
            try:
                inspect.signature(fn).bind()
            except TypeError:
                raise ValueError(
                    f"periodic task {task_name} must be callable with no arguments"
                ) from None
        task: Task[P, R] = Task(
            self,
            fn,
            name=task_name,
            queue=queue_name,
            max_attempts=max_attempts,
            store_result=stores,
            periodic=periodic,
            **options,
        )
        with self._lock:
            existing = self._tasks.get(task_name)
            # Another function under a name taken is refused: messages name the task, so
            # the second would silently run in place of the first. The same function again
            # (registered twice, or with other options) replaces it, and so does a new
            # version of it, its module reloaded (the same module and qualified name);
            # functions of one factory or lambdas share such names without being one.
            if existing is not None and not _same_function(existing.fn, fn):
                raise ValueError(
                    f"a task named {task_name!r} is registered already, for another function "
                    f"({_describe(existing.fn)}); give each its own name: "
                    "@tasks.task(name=...)"
                )
            if stores and self._given is not None and not self._given.keeps_history:
                raise ValueError(_no_history(self._given.name))
            opened = self._queues.get(queue_name)
            if stores and opened is not None and not opened.keeps_history:
                raise ValueError(
                    f"task {task_name} stores results, but queue {queue_name!r} is open "
                    "already without keeping them: register such tasks before the first "
                    "delay() or worker start, or pass store_result=True to Tasks"
                )
            if periodic is not None and self._scheduler is not None:
                raise ValueError(
                    f"periodic task {task_name}: register periodic tasks before the scheduler "
                    "starts (before the worker, or the first schedule_due())"
                )
            self._tasks[task_name] = task
        return task

    # -- what is registered ----------------------------------------------------------------------

    @property
    def tasks(self) -> Mapping[str, Task[Any, Any]]:
        """The registered tasks by name (read-only)."""
        return MappingProxyType(self._tasks)

    @property
    def schema(self) -> str | None:
        """The PostgreSQL schema of the queues (the ``schema=`` setting), if any."""
        value = self._settings.get("schema")
        return value if isinstance(value, str) else None

    def queue_names(self) -> list[str]:
        """The queues the registered tasks use (the default one first)."""
        names = [self.default_queue]
        with self._lock:  # (a running worker reads them while tasks may be registered)
            for task in self._tasks.values():
                if task.queue not in names:
                    names.append(task.queue)
        return names

    def stores_results(self, queue: str) -> bool:
        """Whether calls through ``queue`` keep results (app-wide, or one of its tasks)."""
        with self._lock:
            return self.store_result or any(
                t.store_result for t in self._tasks.values() if t.queue == queue
            )

    def has_periodic(self) -> bool:
        return any(t.periodic is not None for t in self._tasks.values())

    def now(self) -> float:
        """The app's clock (Unix seconds)."""
        return float(self._clock())

    def stats(self) -> dict[str, TaskStats]:
        """Per task: runs started, succeeded, failed, dead-lettered and time spent, by
        this process's workers."""
        return self.metrics.snapshot()

    # -- queues ----------------------------------------------------------------------------------

    def queue(self, name: str | None = None) -> Queue:
        """The queue object for ``name`` (default: the app's queue), opened when first
        needed; it keeps history (``retention=result_ttl``) when its tasks store results.
        Raises ``ValueError``/``QueueError`` if it cannot be opened."""
        name = name or self.default_queue
        with self._lock:
            opened = self._queues.get(name)
            if opened is not None:
                return opened
            if self._given is not None:
                if name != self._given.name:
                    raise ValueError(f"Tasks(queue) has the one queue {self._given.name!r}")
                opened = self._given
            else:
                # A task call's deduplication key (dedup=True, a key function, a
                # dedup_key) holds while the call is in the queue (waiting, running,
                # retrying) or its dead letter is: one unfinished call per key, and a call
                # made once it is done runs. A time window would let a call scheduled past
                # it be doubled, and swallow one made just after an identical call ended.
                settings = {"dedup_window": "exists", **self._settings}
                if self.stores_results(name) and not (
                    "retention" in settings or "retention_max" in settings
                ):
                    settings["retention"] = self.result_ttl
                assert self.target is not None
                opened = connect(self.target, name, **settings)
            self._queues[name] = opened
            return opened

    def _tick_queue(self, name: str) -> Queue:
        """The scheduler's own object on queue ``name``: its deduplication window covers
        twice the longest interval of the periodic tasks there (plus a margin for clock
        differences between machines), so no worker can enqueue a tick twice."""
        with self._lock:
            opened = self._tick_queues.get(name)
            if opened is None:
                now = self.now()
                gaps = [
                    t.periodic.schedule.longest_gap(now)
                    for t in self._tasks.values()
                    if t.periodic is not None and t.queue == name
                ]
                window = min(2 * max(gaps, default=1.0) + _TICK_KEY_MARGIN, MAX_DELAY)
                assert self.target is not None
                settings = {**self._settings, "dedup_window": window}
                opened = self._tick_queues[name] = connect(self.target, name, **settings)
            return opened

    def _enqueue_tick(self, task: Task[Any, Any], tick: float) -> Result[int, EnqueueError]:
        queue = self._tick_queue(task.queue)
        return queue.enqueue(
            encode(task.name, [], {}, tick=tick),
            task.priority,
            0,
            task.max_attempts,
            dedup_key=tick_key(task.name, tick),
            group=periodic_group(task.name),
            ttl=task.ttl,
        )

    def scheduler(self) -> Scheduler:
        """This process's periodic scheduler (workers run it; tests call its
        ``run_pending()``)."""
        with self._lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(
                    list(self._tasks.values()), self._enqueue_tick, self.now
                )
            return self._scheduler

    def schedule_due(self) -> list[tuple[str, float, int]]:
        """Enqueue the periodic runs due now (what the workers' scheduler does on its own):
        (task, tick, message id) for each."""
        return self.scheduler().run_pending()

    # -- workers -------------------------------------------------------------------------------

    def worker(self, **options: Any) -> TaskWorker:
        """A worker for every queue of the app and its periodic tasks; options are those of
        :class:`~sqqueue.Worker` (``concurrency`` per queue, ``task_timeout``,
        ``grace_period``, ``hooks``...) plus ``queues=[...]`` (only these) and
        ``periodic=False`` (do not run the scheduler). Without ``queues``, it also serves
        the queues of tasks registered while it runs."""
        return TaskWorker(self, **options)

    def run_worker(self, **options: Any) -> dict[str, WorkerStats]:
        """Run :meth:`worker` until SIGTERM/SIGINT; returns each queue's stats."""
        return self.worker(**options).run()

    # -- closing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the queues this object opened (not a queue passed to it)."""
        with self._lock:
            opened = [*self._queues.values(), *self._tick_queues.values()]
            self._queues.clear()
            self._tick_queues.clear()
        for queue in opened:
            if queue is not self._given:
                queue.close()

    def __enter__(self) -> Tasks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _qualified(fn: Callable[..., Any]) -> str | None:
    """``module.qualname`` of a function; None for what has none (a partial, an object)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}.{qualname}"
    return None


def _describe(fn: Callable[..., Any]) -> str:
    """A function's module and qualified name, or its type (a partial, an object)."""
    return _qualified(fn) or f"a {type(fn).__name__}"


def _same_function(old: Callable[..., Any], new: Callable[..., Any]) -> bool:
    """Whether ``new`` is ``old`` or a new version of it (its module reloaded): the same
    module and qualified name, one that names a single function (not a factory's local
    function, nor a lambda)."""
    if old is new:
        return True
    qualname = getattr(new, "__qualname__", None)
    return (
        isinstance(qualname, str)
        and "<" not in qualname  # <locals>, <lambda>: not one function's name
        and qualname == getattr(old, "__qualname__", None)
        and getattr(new, "__module__", None) == getattr(old, "__module__", None)
    )


def _no_history(name: str) -> str:
    return (
        f"results are kept with completed messages, but queue {name!r} does not keep them: "
        "open it with retention=SECONDS (or retention_max=N)"
    )
