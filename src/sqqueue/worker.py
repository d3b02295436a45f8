"""A worker that runs a handler for every message, with heartbeats and graceful shutdown.

Example::

    from sqqueue import SQLiteQueue, Worker

    queue = SQLiteQueue("jobs.db", table_name="emails")

    def send(message):
        deliver(message.payload)          # return: completed; raise: failed and retried

    Worker(queue, send, concurrency=4).run()   # until SIGTERM/SIGINT or .stop()

or as a decorator::

    @worker(queue, concurrency=4)
    def send(message): ...

    send.run()
"""

from __future__ import annotations

import inspect
import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from .core.checks import MAX_VISIBILITY_TIMEOUT, MAX_WAIT, error_text
from .core.queue import Queue
from .exceptions import DATABASE_FAILURES, ErrorKind, LeasesNotExtended, QueueError, Reject
from .message import Message
from .result import Err, Ok, Result

__all__ = ["MAX_CONCURRENCY", "Worker", "WorkerHooks", "WorkerStats", "worker"]

logger = logging.getLogger(__name__)

Handler = Callable[[Message], Any]
# A handler's return, to complete: its message, the value it returned, how long it ran.
Acked = tuple[Message, Any, float]
# A commit of such completions: what it completed, and the result of each one when they
# had to be completed one by one (None: all together). Nothing when it failed outright.
Committed = tuple[list[Acked], list[Result[None, Any]] | None]

#: At most this many handlers at once (threads for a Worker, tasks for an AsyncWorker):
#: far beyond what one process serves well, and a bound on a typo's cost.
MAX_CONCURRENCY = 10_000
# At most this many messages claimed in one go: enough to amortise a claim over a batch,
# few enough that one worker does not hold messages other workers could be serving.
MAX_PREFETCH = 100
#: the shortest heartbeat a worker takes
MIN_HEARTBEAT = 0.01
#: the shortest lease a worker takes: by default its heartbeat comes every third of the
#: lease, and no heartbeat is shorter than MIN_HEARTBEAT
MIN_LEASE = 3 * MIN_HEARTBEAT
# A worker claims ahead (beyond its idle runners) what it expects to start within this
# many seconds at the pace of its recent handlers: quick handlers get large claims, slow
# ones none beyond the idle runners, so no message waits long for a runner.
AHEAD_SECONDS = 0.05
# Grouped acknowledgements wait this long for company before their commit: completions
# that come meanwhile, or a runner about to claim, which takes them along. It bounds how
# long a handler's return waits for its commit (beyond the commit itself).
ACK_DELAY = 0.002
# At the end of shutdown, run() waits at most this long for runners still settling a
# message whose handler had ended (failing it, keeping its result: database calls, hooks),
# also after an immediate stop, which waits for no handler: the stats it returns are then
# final, and the queue may be closed right after it.
SETTLE_WAIT = 5.0
# How often run()'s thread acts on the signals received (SIGTERM, SIGINT) while it waits.
SIGNAL_CHECK = 0.05
# After a heartbeat round failed, the next one comes within this many seconds (after a
# heartbeat, if that is shorter: leases are still extended in time).
HEARTBEAT_RETRY = 1.0

# What complete(message, result=value) says of a value it cannot keep.
_UNKEEPABLE = frozenset({ErrorKind.SERIALIZATION, ErrorKind.INVALID_INPUT})

#: How many of the latest handler durations ``WorkerStats.processing_seconds`` keeps (a
#: worker runs for months: keeping every one would grow without end).
DURATIONS_KEPT = 1_000


def _recent_durations() -> deque[float]:
    return deque(maxlen=DURATIONS_KEPT)


@dataclass
class WorkerStats:
    """What a worker did, for logs and tests."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    timed_out: int = 0
    #: taken but not started (at shutdown, or held past a heartbeat): given back, attempt
    #: not counted
    released: int = 0
    requeued: int = 0  #: still running when the grace period ended: given back at once
    #: how long the latest handlers ran (seconds), the last ``DURATIONS_KEPT`` of them
    processing_seconds: deque[float] = field(default_factory=_recent_durations, repr=False)


@dataclass
class WorkerHooks:
    """Callbacks around each message; an exception in a hook is logged, never fatal."""

    on_start: Callable[[Message], Any] | None = None
    on_success: Callable[[Message, Any], Any] | None = None
    on_failure: Callable[[Message, BaseException], Any] | None = None
    on_dead_letter: Callable[[Message, BaseException], Any] | None = None

    def __post_init__(self) -> None:
        # Hooks are called as plain functions (from a worker's threads, AsyncWorker's
        # too): an async def hook would only make a coroutine nothing awaits, its work
        # silently not done. Refused here rather than found missing in production.
        for f in fields(self):
            hook = getattr(self, f.name)
            if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
                getattr(hook, "__call__", None)  # noqa: B004 (the method, not callability)
            ):
                raise ValueError(
                    f"hook {f.name} is a coroutine function, which would never be awaited: "
                    "worker hooks are called as plain functions; make it a plain def (for "
                    "async work, schedule it from there, e.g. asyncio.run_coroutine_threadsafe)"
                )

    def call(self, name: str, *args: Any) -> None:
        hook = getattr(self, name)
        if hook is None:
            return
        try:
            hook(*args)
        except BaseException:  # SystemExit and the like too: a hook must not stop a runner
            logger.exception("worker hook %s failed", name)


class _Reporter:
    """Reports of committed completions (``report(committed)``: counts, ``on_success``
    hooks, logs), run in order on a thread of their own until closed and done."""

    def __init__(self, report: Callable[[Committed], None], name: str) -> None:
        self._report = report
        self._ready = threading.Condition(threading.Lock())
        self._pending: deque[Committed] = deque()
        self._open = True
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def add(self, committed: Committed) -> None:
        with self._ready:
            self._pending.append(committed)
            self._ready.notify()

    def close(self) -> None:
        """Report what was added, then end."""
        with self._ready:
            self._open = False
            self._ready.notify()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._pending and self._open:
                    self._ready.wait()
                if not self._pending:
                    return
                committed = self._pending.popleft()
            self._report(committed)  # (never raises)


class DurationObserver(Protocol):
    """Receives ``time_in_queue`` and ``processing`` durations (e.g. prometheus.Durations).

    Called as a handler starts and ends: on the worker's threads, and for an AsyncWorker
    on the event loop, so it must return at once (record, never wait on I/O)."""

    def observe(self, queue: str, kind: str, seconds: float) -> None: ...


#: a claimed message and when its lease was taken (``time.monotonic()``)
Claimed = tuple[Message, float]


class RunningTask:
    """One message being handled: the heartbeat extends its lease until it is done."""

    def __init__(self, message: Message, started: float, leased_at: float) -> None:
        self.message = message
        self.started = started
        self.abandoned = False  # timed out or cut off at shutdown: its outcome is ignored
        # The handler returned or raised, and its runner is settling the message: no
        # timeout or cut-off any more, but the heartbeat keeps the lease until it is done.
        self.ended = False
        self.last_beat = leased_at  # the lease is extended on its own schedule


def _check_count(name: str, value: object, most: int) -> int:
    """``value``, if it is an int from 1 to ``most``; else ValueError."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise ValueError(f"{name} must be an int from 1 to {most}, got {value!r}")
    return value


def _check_times(
    lease: float, grace_period: float, poll_wait: float, task_timeout: float | None
) -> None:
    """Raise ValueError, saying which, for a duration a worker cannot use: also one the
    queue would refuse at every claim (a lease past a week, a wait past a day), or too
    long to wait for at all (a grace period of 1e10 s)."""
    for label, value, most in (
        ("visibility_timeout", lease, MAX_VISIBILITY_TIMEOUT),
        ("grace_period", grace_period, MAX_WAIT),
        ("poll_wait", poll_wait, MAX_WAIT),
    ):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
        if value > most:
            raise ValueError(f"{label} must be at most {most:g} seconds, got {value!r}")
    if poll_wait == 0:  # an idle runner would claim again and again, a core's worth
        raise ValueError("poll_wait must be > 0 seconds (how long an idle runner waits)")
    if lease < MIN_LEASE:
        raise ValueError(
            f"visibility_timeout must be at least {MIN_LEASE:g} seconds for a worker (the "
            "lease of each message, extended by a heartbeat every third of it, and a "
            f"heartbeat is at least {MIN_HEARTBEAT:g} s), got {lease!r}"
        )
    if task_timeout is not None and not (
        isinstance(task_timeout, (int, float)) and task_timeout > 0
    ):
        raise ValueError(f"task_timeout must be > 0 seconds, got {task_timeout!r}")


class _CutOff(Exception):
    """What ``on_dead_letter`` is given for a message still running when shutdown ended
    on its last attempt: no exception of the handler's ended it."""


def _heartbeat(value: object) -> float:
    """``value`` as a heartbeat, if it is a number of seconds a heartbeat can keep (each
    round extends leases: one every few milliseconds would spin a core); else ValueError."""
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < MIN_HEARTBEAT
    ):
        raise ValueError(
            f"heartbeat must be a number of seconds, at least {MIN_HEARTBEAT:g} and shorter "
            f"than the lease (visibility_timeout), got {value!r}"
        )
    return float(value)


class WorkerCore:
    """What every worker shares, whatever runs its handlers (threads or asyncio tasks):
    settings, stats, hooks, and the decisions taken when a handler ends, beats or overruns.
    Drivers call the storage through the synchronous queue (asyncio drivers in a thread).
    """

    # Every attribute is a slot: they are read on every message, and a slot is read faster
    # than an instance dict, which CPython uses for objects of more than 29 attributes
    # (bench/profile-notes.md). A __dict__ stays for anything else set on a worker.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_acks",
        "_acks_open",
        "_acks_ready",
        "_acks_with_claims",
        "_committing",
        "_drained",
        "_failing",
        "_fetching",
        "_idle",
        "_immediate",
        "_lock",
        "_pace",
        "_prefetch_limit",
        "_prefetched",
        "_ran",
        "_reporter",
        "_reports",
        "_stopping",
        "_tasks",
        "_timed",
        "_unacked",
        "concurrency",
        "durations",
        "grace_period",
        "handle_signals",
        "handler",
        "heartbeat",
        "hooks",
        "lease",
        "name",
        "poll_wait",
        "prefetch",
        "queue",
        "results",
        "retry_delay",
        "stats",
        "task_timeout",
    )

    #: whether this driver runs what a handler's call makes when that is a coroutine
    _runs_coroutines = False
    # What reports committed completions on a thread of its own (see _start_acks).
    _reporter: _Reporter | None

    def __init__(
        self,
        queue: Queue,
        handler: Callable[[Message], Any],
        *,
        concurrency: int = 1,
        visibility_timeout: float | None = None,
        heartbeat: float | None = None,
        task_timeout: float | None = None,
        grace_period: float = 30.0,
        poll_wait: float = 30.0,
        handle_signals: bool = True,
        hooks: WorkerHooks | None = None,
        name: str | None = None,
        durations: DurationObserver | None = None,
        results: bool = False,
        retry_delay: Callable[[Message, BaseException], float | None] | None = None,
        prefetch: int | None = None,
    ) -> None:
        _check_handler(handler, self._runs_coroutines)
        if queue.read_only:
            raise ValueError(f"queue {queue.name!r} was opened read-only; a worker needs to write")
        if results and not queue.keeps_history:
            raise ValueError(
                f"results=True keeps handlers' return values with the completed messages, "
                f"but queue {queue.name!r} does not keep them: open it with retention=SECONDS "
                "(or retention_max=N)"
            )
        if retry_delay is not None and not callable(retry_delay):
            raise ValueError("retry_delay must be a callable (message, exception) -> seconds")
        _check_count("concurrency", concurrency, MAX_CONCURRENCY)
        prefetch = _check_count(
            "prefetch", MAX_PREFETCH if prefetch is None else prefetch, MAX_PREFETCH
        )
        if hooks is not None and not isinstance(hooks, WorkerHooks):
            raise ValueError(
                f"hooks must be a WorkerHooks (hooks=WorkerHooks(on_success=...)), got a "
                f"{type(hooks).__name__}"
            )
        lease = (
            queue.default_visibility_timeout if visibility_timeout is None else visibility_timeout
        )
        _check_times(lease, grace_period, poll_wait, task_timeout)
        self.queue = queue
        self.handler = handler
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.lease = float(lease)
        # (max: lease / 3 may round below MIN_HEARTBEAT when lease is MIN_LEASE)
        self.heartbeat = (
            max(self.lease / 3, MIN_HEARTBEAT) if heartbeat is None else _heartbeat(heartbeat)
        )
        if self.heartbeat >= self.lease:
            raise ValueError("heartbeat must be shorter than the lease (visibility_timeout)")
        self.task_timeout = task_timeout
        self.grace_period = float(grace_period)
        self.poll_wait = float(poll_wait)
        self.handle_signals = handle_signals
        self.hooks = hooks or WorkerHooks()
        self.durations = durations
        # Whether anyone records durations: if not, none is worked out.
        self._timed = durations is not None or queue.parts.metrics.records_timings
        self.results = results
        self.retry_delay = retry_delay
        self.name = name or f"sqqueue-worker-{queue.name}"
        self.stats = WorkerStats()
        self._stopping = threading.Event()
        self._immediate = threading.Event()
        self._ran = False
        self._tasks: dict[object, RunningTask] = {}  # driver's key (thread or task) -> running task
        self._lock = threading.Lock()
        self._drained = threading.Event()  # shutdown finished: the heartbeat may end
        # Prefetch: one runner at a time claims for itself, the runners idle beside it and
        # what the worker will start within AHEAD_SECONDS; what it claimed beyond its own
        # message waits here for the next free runner. The drivers guard these with their
        # own handoff lock (threads or the event loop) and take the decisions below under it.
        self._prefetched: deque[Claimed] = deque()
        self._fetching = False
        self._idle = 0
        self._pace: float | None = None  # recent seconds per handler call (moving average)
        # Grouped acknowledgements: while the ack thread runs, handlers' completions are
        # left here and their runners go on; the thread completes whatever has gathered
        # in one transaction.
        self._acks_ready = threading.Condition(threading.Lock())
        self._acks: list[Acked] = []
        # On one write lock (SQLite), runners about to claim commit what has gathered
        # (see _commit_gathered): how many are committing now, and what they committed,
        # for the ack thread to report.
        self._acks_with_claims = queue.parts.backend.one_writer
        self._acks_open, self._committing, self._reporter = False, 0, None
        self._reports: list[Committed] = []
        # Their tasks, by message id, until the commit that completes them (or, timed out,
        # until their failure is stored): the heartbeat keeps extending their leases
        # meanwhile (a slow commit, a hook that blocks the ack thread, retry_delay), so a
        # message whose handler returned is never delivered again while this process is
        # alive.
        self._unacked: dict[int, RunningTask] = {}
        # Threads failing timed-out messages (see _time_out), waited for at shutdown.
        self._failing: list[threading.Thread] = []
        # How long a prefetched message may wait (see _stale). Started later, the next
        # heartbeat round (up to a tick away) could come after the lease ran out, when
        # heartbeat > lease / 2: such a message goes back sooner.
        self._prefetch_limit = min(
            self.heartbeat, self.lease - self.tick - (self.lease - self.heartbeat) / 2
        )

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _start_once(self) -> None:
        """Raise RuntimeError if this worker ran before: it stays stopped (stop() is for
        good), so a second run() would return at once, serving nothing."""
        with self._lock:
            if self._ran:
                raise RuntimeError(
                    f"worker {self.name} has run already; a worker runs once: make a new one"
                )
            self._ran = True

    def _dequeue_failed(self, error: QueueError) -> None:
        """A claim failed: a closed queue stops the worker (it stays closed; a worker
        that went on would only fail every second, serving nothing); anything else is
        logged, and the driver backs off before claiming again."""
        if error.kind is ErrorKind.CLOSED:
            if not self._stopping.is_set():
                logger.error("worker %s: %s; the worker stops", self.name, error)
            self.stop(immediate=True)
            return
        logger.warning("worker %s: dequeue failed: %s", self.name, error)

    def _stop_closed(self) -> None:
        """Under the handoff lock: the queue was closed while messages wait prefetched.
        None of them is started: its handler's work could never be acknowledged. The
        worker stops, as when a claim finds the queue closed (the runners waiting for a
        fetch see the stop when the fetch ends, or at once: none waits while messages are
        prefetched)."""
        if not self._stopping.is_set():
            logger.error(
                "worker %s: queue %r is closed; the worker stops (messages taken but not "
                "started are not handled)",
                self.name,
                self.queue.name,
            )
        WorkerCore.stop(self, immediate=True)  # (not the driver's: it takes the handoff lock)

    def __call__(self, message: Message) -> Any:
        """A worker made with ``@worker`` can still be called like its handler."""
        return self.handler(message)

    def stop(self, immediate: bool = False) -> None:
        """Ask the worker to stop (from any thread). ``immediate`` skips the grace period."""
        if immediate:
            self._immediate.set()
        self._stopping.set()
        self.queue.wake_waiters()

    def _heed_signals(self) -> None:
        """Act on the signals a driver's handler noted (none by default)."""

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping.is_set():
            logger.warning("worker %s: second %s, stopping immediately", self.name, name)
            self.stop(immediate=True)
        else:
            logger.info("worker %s: %s received, shutting down gracefully", self.name, name)
            self.stop()

    # -- steps shared by the drivers (all synchronous, all storage calls) -------------------

    def _count(self, **increments: int) -> None:
        """Add to the stats; runners and the heartbeat count from their own threads."""
        with self._lock:
            for name, n in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)

    def _register(self, key: object, message: Message, leased_at: float) -> RunningTask | None:
        """Under the lock: ``message`` runs from now on, unless the worker is stopping."""
        if self._stopping.is_set():
            return None
        task = self._tasks[key] = RunningTask(message, time.monotonic(), leased_at)
        self.stats.started += 1
        return task

    def _announce(self, task: RunningTask) -> None:
        """A registered task starts: its time in queue, ``on_start``, a DEBUG record."""
        message = task.message
        if self._timed:
            waited = self.queue.parts.now() - message.enqueued_at.timestamp()
            self._observe("time_in_queue", waited)
        self.hooks.call("on_start", message)
        if logger.isEnabledFor(logging.DEBUG):  # (its record's extra is built only then)
            logger.debug(
                "worker %s: handling message %d",
                self.name,
                message.id,
                extra={"message_id": message.id, "attempt": message.attempts},
            )

    def _end(self, key: object, task: RunningTask, value: Any, exc: BaseException | None) -> None:
        """Complete or fail the message, unless the task was abandoned meanwhile. The task
        stays among the running ones (its lease extended) until its message is settled or
        handed to the ack thread: retry_delay, a slow commit, may take longer than a lease."""
        elapsed = time.monotonic() - task.started
        with self._lock:
            # Under the lock with _time_out's check: a handler that ends as it times out
            # is either completed here or failed there, never both.
            task.ended = True
            pace = self._pace
            self._pace = elapsed if pace is None else 0.8 * pace + 0.2 * elapsed
        try:
            self._settle(task, value, exc, elapsed)
        finally:
            with self._lock:
                if self._tasks.get(key) is task:
                    del self._tasks[key]

    def _settle(
        self, task: RunningTask, value: Any, exc: BaseException | None, elapsed: float
    ) -> None:
        message = task.message
        if task.abandoned:  # (no longer changes: the task has ended)
            logger.info(
                "worker %s: abandoned message %d ended after %.1f s (result ignored)",
                self.name,
                message.id,
                elapsed,
                extra={"message_id": message.id, "attempt": message.attempts},
            )
            return
        if self._timed:
            self._observe("processing", elapsed)
        if exc is None and not self._runs_coroutines and _made_coroutine(value):
            exc = TypeError(
                "the handler returned a coroutine, which a Worker does not run (an async "
                "function called without await?): use AsyncWorker for coroutines"
            )
        if exc is not None:
            self._record_failure(message, exc, elapsed)
            return
        if self.results and value is not None:
            try:
                result = self.queue.complete(message, result=value)
            except BaseException as raised:  # the value's own code raised (its __repr__?)
                self._record_failure(message, raised, elapsed)
                return
            if isinstance(result, Err) and result.error.kind in _UNKEEPABLE:
                # The handler ran, but what it returned cannot be kept: a failure.
                self._record_failure(message, TypeError(str(result.error)), elapsed)
                return
            self._completed(message, value, elapsed, result)
        else:
            self._acknowledge(task, value, elapsed)

    def _acknowledge(self, task: RunningTask, value: Any, elapsed: float) -> None:
        """Complete a message whose handler returned: through the ack thread while it runs
        (grouped with others), else at once."""
        message = task.message
        with self._acks_ready:
            if self._acks_open:
                self._acks.append((message, value, elapsed))
                self._unacked[message.id] = task
                if len(self._acks) == 1:  # (only then can the ack thread be waiting)
                    self._acks_ready.notify()
                return
        self._completed(message, value, elapsed, self.queue.complete(message))

    # -- grouped acknowledgements --------------------------------------------------------------

    # -- prefetch: the decisions, taken under the driver's handoff lock ----------------------

    def _must_wait(self) -> bool:
        """Whether a runner waits: another runner is fetching and nothing is left over."""
        return not self._prefetched and self._fetching and not self._stopping.is_set()

    def _next_or_fetch(self) -> tuple[Claimed | int | None, list[Message]]:
        """After waiting: None when stopping (what is prefetched is given back at the end),
        a message fetched earlier, or the size of the fetch this runner now makes; and the
        messages fetched earlier that waited too long (see _stale), to give back unstarted
        (their leases are spent: another worker may serve them sooner)."""
        if self._stopping.is_set():
            return None, []
        stale = self._stale()
        if self._prefetched:
            if self.queue.closed:  # (a claim finds it closed by itself, see _dequeue_failed)
                self._stop_closed()
                return None, stale
            return self._prefetched.popleft(), stale
        self._fetching = True
        return min(self.prefetch, self._idle + 1 + self._ahead()), stale

    def _stale(self) -> list[Message]:
        """Take out the prefetched messages that have waited past a heartbeat, to give
        back: started now, they would run on a lease mostly spent, and held on while every
        runner is busy, they would keep from other workers what those could serve. Called
        when a runner takes a message, and by the heartbeat."""
        oldest = time.monotonic() - self._prefetch_limit
        stale: list[Message] = []
        while self._prefetched and self._prefetched[0][1] < oldest:  # oldest first
            stale.append(self._prefetched.popleft()[0])
        return stale

    def _ahead(self) -> int:
        """How many messages beyond the idle runners the worker expects to start within
        AHEAD_SECONDS, at the pace of its recent handlers (none before any has ended)."""
        pace = self._pace
        if pace is None:
            return 0
        return int(min(self.concurrency * AHEAD_SECONDS / max(pace, 1e-6), MAX_PREFETCH))

    def _fetched(self, batch: list[Message]) -> tuple[Claimed | None, list[Message]]:
        """After a fetch: this runner's message, and what to give back unstarted (all of
        it when the worker is stopping); the rest waits for the next free runners."""
        self._fetching = False
        if self._stopping.is_set():
            return None, batch
        leased_at = time.monotonic()
        self._prefetched.extend((message, leased_at) for message in batch[1:])
        return ((batch[0], leased_at) if batch else None), []

    def _unstarted(self) -> list[Message]:
        """At shutdown: what was prefetched and never started, to give back."""
        left, self._prefetched = [m for m, _ in self._prefetched], deque()
        return left

    def _give_back(self, messages: list[Message]) -> None:
        """Release messages taken but not started, without counting their attempt: in one
        transaction, or one by one if a lease among them was lost meanwhile (the others
        still go back; the lost one is someone else's now)."""
        if not messages:
            return
        result = self.queue.release_batch(messages)
        if isinstance(result, Ok):
            released = result.value
        elif isinstance(result, Err) and result.error.kind is ErrorKind.CLOSED:
            return  # (and would be for each one: they come back when their leases expire)
        else:
            released = sum(self.queue.release(message).is_ok() for message in messages)
        self._count(released=released)

    def _start_acks(self) -> threading.Thread:
        """Start the thread that completes messages in groups (ended by ``_close_acks``),
        and with an ``on_success`` hook, the one that reports what it completed."""
        with self._acks_ready:
            self._acks_open = True
        if self.hooks.on_success is not None:
            self._reporter = _Reporter(self._report, f"{self.name}-hooks")
        thread = threading.Thread(target=self._ack_loop, name=f"{self.name}-acks", daemon=True)
        thread.start()
        return thread

    def _ack_loop(self) -> None:
        """Complete what the runners finished, each round in one transaction, and report
        what was completed (counts, ``on_success`` hooks, logs), also what runners about
        to claim committed themselves; until closed and nothing is left. With an
        ``on_success`` hook, the reports run on a thread of their own: a hook of yours
        that takes its time must not hold back the commits of the completions behind it
        (each one a message delivered again should the process die before its commit)."""
        report = self._report if self._reporter is None else self._reporter.add
        try:
            while True:
                with self._acks_ready:
                    while not (self._acks or self._reports) and (
                        self._acks_open or self._committing
                    ):
                        self._acks_ready.wait()
                    if self._acks and self._acks_open:
                        self._acks_ready.wait(ACK_DELAY)  # (closing wakes it at once)
                    batch, self._acks = self._acks, []
                    reports, self._reports = self._reports, []
                    if not (batch or reports or self._acks_open or self._committing):
                        return  # closed, and nothing left (no runner still committing)
                for committed in reports:
                    report(committed)
                if batch:
                    report(self._commit(batch))
        finally:
            if self._reporter is not None:
                self._reporter.close()

    def _commit_gathered(self) -> None:
        """Commit the completions gathered so far, from a runner about to claim on a
        database with one write lock (SQLite), just before its claim: the ack thread
        would only wait for the claim's lock (in SQLite's busy handler, a millisecond or
        more a time). Measured: +19% no-op jobs a second through one SQLite Worker; -9%
        on PostgreSQL, where the two run side by side, so not there. The ack thread
        reports them (see _ack_loop), so a slow ``on_success`` hook never holds up a
        claim, and waits for this commit before it ends."""
        with self._acks_ready:
            batch, self._acks = self._acks, []
            if not batch:
                return
            self._committing += 1
        committed: Committed | None = None
        try:
            committed = self._commit(batch)
        finally:
            with self._acks_ready:
                self._committing -= 1
                if committed is not None:
                    self._reports.append(committed)
                self._acks_ready.notify()

    def _commit(self, batch: list[Acked]) -> Committed:
        """Complete ``batch`` in one transaction, or one by one if one of them was refused
        (its lease lost, say: then none was completed), each fenced by its own lease as
        always. Never raises: after a failure of the database itself (logged once, not
        met again once per message) or an unexpected one, nothing is reported and the
        messages come again when their leases expire."""
        try:
            result = self.queue.complete_batch([message for message, _, _ in batch])
            results = None
            if isinstance(result, Err):
                if result.error.kind in DATABASE_FAILURES:
                    logger.warning(
                        "worker %s: could not complete %d message(s): %s; they will be "
                        "delivered again when their leases expire",
                        self.name,
                        len(batch),
                        result.error,
                    )
                    return [], []
                # Anything else (one message refused, a connection lost at the commit):
                # one by one, each fenced by its lease, so the outcome of each is known.
                results = [self.queue.complete(message) for message, _, _ in batch]
        except BaseException as exc:  # never lose the thread: log, and the leases run out
            logger.error(
                "worker %s: completing %d message(s) failed unexpectedly (%s); they will "
                "be delivered again when their leases expire",
                self.name,
                len(batch),
                error_text(exc),
                exc_info=exc,
            )
            return [], []
        finally:
            self._settled(batch)
        return batch, results

    def _report(self, committed: Committed) -> None:
        """Count, hook and log what a commit of gathered completions did. Never raises:
        the ack thread must outlive anything (hooks are guarded on their own)."""
        batch, results = committed
        try:
            if results is None:
                self._done(batch)
                return
            for (message, value, elapsed), completed in zip(batch, results, strict=True):
                self._completed(message, value, elapsed, completed)
        except BaseException:
            logger.exception("worker %s: reporting %d completion(s) failed", self.name, len(batch))

    def _settled(self, batch: list[Acked]) -> None:
        """The messages of ``batch`` are completed (or refused): no lease to keep."""
        with self._acks_ready:
            for message, _, _ in batch:
                self._unacked.pop(message.id, None)

    def _close_acks(self, acker: threading.Thread) -> None:
        """Let the ack thread complete what is left (and the reporting thread report it),
        then end it. After an immediate stop, wait at most SETTLE_WAIT (an ``on_success``
        hook of yours may block them): what is not committed comes again when its leases
        expire."""
        with self._acks_ready:
            self._acks_open = False
            self._acks_ready.notify()
        threads = [acker] if self._reporter is None else [acker, self._reporter.thread]
        immediate_since = None
        while alive := [thread for thread in threads if thread.is_alive()]:
            self._heed_signals()
            if self._immediate.is_set():
                immediate_since = immediate_since or time.monotonic()
                if time.monotonic() - immediate_since >= SETTLE_WAIT:
                    logger.warning(
                        "worker %s: stopped without waiting further for the threads that "
                        "complete messages and run their on_success hooks (a hook of yours "
                        "blocks them?)",
                        self.name,
                    )
                    return
            alive[0].join(SIGNAL_CHECK)

    def _completed(
        self, message: Message, value: Any, elapsed: float, result: Result[Any, Any]
    ) -> None:
        """Count, hook and log the outcome of completing ``message``."""
        if isinstance(result, Err):
            logger.warning(
                "worker %s: could not complete message %d: %s",
                self.name,
                message.id,
                result.error,
                extra={"message_id": message.id, "attempt": message.attempts},
            )
            return
        self._done([(message, value, elapsed)])

    def _done(self, completed: list[tuple[Message, Any, float]]) -> None:
        """Count, hook and log completed messages; a group is counted in one step, so the
        ack thread does not take the runners' lock once per message."""
        with self._lock:
            self.stats.completed += len(completed)
        self.stats.processing_seconds.extend(elapsed for _, _, elapsed in completed)
        if self.hooks.on_success is None and not logger.isEnabledFor(logging.DEBUG):
            return  # nothing to do per message
        for message, value, _ in completed:
            self.hooks.call("on_success", message, value)
            logger.debug(
                "worker %s: completed message %d",
                self.name,
                message.id,
                extra={"message_id": message.id, "attempt": message.attempts},
            )

    def _observe(self, kind: str, seconds: float) -> None:
        self.queue.parts.metrics.timing(f"{kind}_seconds", seconds)
        if self.durations is not None:
            try:
                self.durations.observe(self.queue.name, kind, seconds)
            except BaseException:  # as for hooks: never in the way of settling the message
                logger.exception("worker %s: recording a duration failed", self.name)

    def _retry_delay(self, message: Message, exc: BaseException) -> float | None:
        """Seconds before the next attempt: ``retry_delay``'s answer, or None for the
        queue's retry policy (also when ``retry_delay`` itself fails)."""
        if self.retry_delay is None:
            return None
        try:
            return self.retry_delay(message, exc)
        except BaseException:  # (SystemExit too: the message must still be failed)
            logger.exception("worker %s: retry_delay failed; using the queue's policy", self.name)
            return None

    def _record_failure(
        self, message: Message, exc: BaseException, elapsed: float, held: RunningTask | None = None
    ) -> None:
        """Fail ``message`` (retry_delay decides when it comes again), count and hook it;
        ``held``: its task, whose lease the heartbeat keeps until the failure is stored."""
        log_extra = {"message_id": message.id, "attempt": message.attempts}
        error = error_text(exc)
        unusual = _unusual(exc)
        if unusual is not None:
            # Not an ordinary failure: say so loudly, the message is failed all the same.
            logger.error(
                "worker %s: the handler of message %d %s; counted as a failure of the message: %s",
                self.name,
                message.id,
                unusual,
                error,
                extra=log_extra,
            )
        rejected = isinstance(exc, Reject)
        delay = None if rejected else self._retry_delay(message, exc)
        result = self.queue.fail_message(message, send_to_dlq=rejected, error=error, delay=delay)
        if (
            delay is not None
            and isinstance(result, Err)
            and result.error.kind is ErrorKind.INVALID_INPUT
        ):
            # retry_delay answered something that is not a delay (negative, NaN, a str):
            # the queue's policy decides instead, as when retry_delay raises.
            logger.warning(
                "worker %s: retry_delay returned %r for message %d, which is not a delay "
                "(%s); using the queue's policy",
                self.name,
                delay,
                message.id,
                result.error,
                extra=log_extra,
            )
            result = self.queue.fail_message(message, send_to_dlq=rejected, error=error)
        if held is not None:
            self._unhold(held)
        self.stats.processing_seconds.append(elapsed)
        self.hooks.call("on_failure", message, exc)
        if result.is_err():
            logger.warning(
                "worker %s: could not record failure of message %d: %s",
                self.name,
                message.id,
                result.error,
                extra=log_extra,
            )
            return
        self._count(failed=1)  # (a stored failure, as ``completed`` counts stored completions)
        if rejected or message.attempts >= message.max_attempts:
            self._count(dead_lettered=1)
            self.hooks.call("on_dead_letter", message, exc)
            logger.warning(
                "worker %s: message %d dead-lettered after %d attempts: %s",
                self.name,
                message.id,
                message.attempts,
                error,
                extra=log_extra,
            )
        else:
            logger.info(
                "worker %s: message %d failed (attempt %d of %d): %s",
                self.name,
                message.id,
                message.attempts,
                message.max_attempts,
                error,
                extra=log_extra,
            )

    def _runner_failed(self, key: object, exc: BaseException) -> None:
        """A runner's own steps (not its handler) raised: log it, and fail the message it
        held (if any, and not already settled) so that no heartbeat keeps its lease."""
        with self._lock:
            task = self._tasks.pop(key, None)
            # (An ended task's message was being settled: not failed a second time.)
            held = task is not None and not (task.abandoned or task.ended)
            if task is not None:
                task.abandoned = True
        logger.error(
            "worker %s: a runner failed unexpectedly (%s); another takes its place",
            self.name,
            error_text(exc),
            exc_info=exc,
        )
        if task is not None and held:
            error = RuntimeError(f"the worker failed while handling it: {error_text(exc)}")
            error.__cause__ = exc
            self._record_failure(task.message, error, time.monotonic() - task.started)

    def _heartbeat_failed(self, exc: BaseException, since: float | None) -> float:
        """A heartbeat round raised (a thread it could not start, say): log it at ERROR
        (with the traceback at the first of a run of failed rounds), and when the rounds
        have failed for as long as a lease, stop the worker: leases are no longer kept,
        nor timeouts enforced. Returns when the failed rounds began (the heartbeat goes
        on, after a pause, until the worker has stopped)."""
        now = time.monotonic()
        began = now if since is None else since
        logger.error(
            "worker %s: a heartbeat round failed (%s); trying again",
            self.name,
            error_text(exc),
            exc_info=exc if since is None else None,
        )
        if now - began >= self.lease and not self._stopping.is_set():
            logger.error(
                "worker %s: every heartbeat round for %.1f s has failed (leases may not be "
                "extended, nor task_timeout enforced); the worker stops",
                self.name,
                now - began,
            )
            self.stop()
        return began

    @property
    def tick(self) -> float:
        """How often the heartbeat loop wakes: often enough for leases and timeouts."""
        if self.task_timeout is None:
            return self.heartbeat
        return max(min(self.heartbeat, self.task_timeout / 4), 0.01)

    def _beat(self) -> list[RunningTask]:
        """One heartbeat round: time out overrunning tasks, extend leases that are due.

        Returns the tasks whose leases it keeps: running, or waiting for their ack (the
        heartbeat goes on while there are any, also when the worker is stopping).
        """
        with self._lock:
            tasks = [t for t in self._tasks.values() if not t.abandoned]
        with self._acks_ready:
            # (A task handed to the ack thread is among the running ones for a moment:
            # the same object, so extended once below.)
            unacked = list(self._unacked.values())
        now = time.monotonic()
        # A lease is extended at the last round before its heartbeat falls due, not at the
        # first one after: the rounds are a tick apart, and waiting for the one after let
        # up to two heartbeats pass, more than the lease when heartbeat > lease / 2.
        due_before = now + self.tick - self.heartbeat
        running = []
        due = []
        for task in tasks:
            timeout = self.task_timeout
            if timeout is not None and not task.ended and now - task.started > timeout:
                self._time_out(task)
                continue
            running.append(task)
        for task in running + unacked:
            if task.last_beat <= due_before:
                task.last_beat = now
                due.append(task.message)
        if due:
            self._extend(due)
        return running + unacked

    def _extend(self, messages: list[Message]) -> None:
        """Extend the leases of ``messages`` in one call; warn of each one refused."""
        result = self.queue.extend_batch(messages, self.lease)
        if not isinstance(result, Err):
            return
        error = result.error
        if isinstance(error, LeasesNotExtended):  # some lost or expired, the others extended
            failed = [(m, error.refused[m.id]) for m in messages if m.id in error.refused]
        else:  # the call failed (the database, say): none was extended
            failed = [(m, error) for m in messages]
        with self._lock:
            running = {task.message.id for task in self._tasks.values() if not task.abandoned}
        for message, why in failed:
            # A handler that ended since this round began settles its message itself.
            logger.log(
                logging.WARNING if message.id in running else logging.DEBUG,
                "worker %s: could not extend the lease of message %d: %s",
                self.name,
                message.id,
                why,
            )

    def _time_out(self, task: RunningTask) -> None:
        error = TimeoutError(f"handler ran longer than task_timeout={self.task_timeout:g} s")
        elapsed = time.monotonic() - task.started
        failing = threading.Thread(
            target=self._fail_timed_out,
            args=(task, error, elapsed),
            name=f"{self.name}-timeout",
            daemon=True,
        )
        unstarted: RuntimeError | None = None
        with self._lock:
            if task.abandoned or task.ended:
                return  # ended meanwhile (or already abandoned): its runner settles it
            task.abandoned = True
            self.stats.timed_out += 1
            # Failed on a thread of its own, its lease kept meanwhile as an ack's:
            # retry_delay and the hooks are your code, and the heartbeat must not wait
            # for them to extend the other leases. Started with the abandonment, under
            # one lock: shutdown cuts off what still runs, then waits for these threads,
            # and finds every one.
            with self._acks_ready:
                self._unacked[task.message.id] = task
            self._failing = [thread for thread in self._failing if thread.is_alive()]
            try:
                failing.start()
            except RuntimeError as exc:  # (can't start new thread: the process has too many)
                unstarted = exc
            else:
                self._failing.append(failing)
        # Also while stopping: an AsyncWorker's runner waits for its handler until then,
        # and shutdown for that runner (a sync Worker starts no runner then).
        self._replace_abandoned()
        if unstarted is not None:
            logger.error(
                "worker %s: could not start a thread to fail timed-out message %d (%s); "
                "failing it on the heartbeat's thread",
                self.name,
                task.message.id,
                error_text(unstarted),
            )
            self._fail_timed_out(task, error, elapsed)

    def _fail_timed_out(self, task: RunningTask, error: TimeoutError, elapsed: float) -> None:
        try:
            self._record_failure(task.message, error, elapsed, held=task)
        except BaseException:  # (a thread of its own: log what would otherwise vanish)
            logger.exception("worker %s: failing timed-out message %d", self.name, task.message.id)
        finally:
            self._unhold(task)

    def _unhold(self, task: RunningTask) -> None:
        """The heartbeat no longer keeps the lease of ``task`` (its failure is stored)."""
        with self._acks_ready:
            # (The message may be held again by now, on a new lease of its own.)
            if self._unacked.get(task.message.id) is task:
                del self._unacked[task.message.id]

    def _wait_for_timeouts(self) -> None:
        """At shutdown: wait up to SETTLE_WAIT for timed-out messages being failed, so the
        stats returned are final."""
        with self._lock:
            failing = list(self._failing)
        self._join_until(failing, time.monotonic() + SETTLE_WAIT)

    def _join_until(self, threads: list[Any], until: float) -> None:
        """Wait for ``threads`` to end, up to the monotonic time ``until``, heeding
        signals meanwhile."""
        for thread in threads:
            while isinstance(thread, threading.Thread) and thread.is_alive():
                if time.monotonic() >= until:
                    return
                thread.join(min(until - time.monotonic(), SIGNAL_CHECK))
                self._heed_signals()

    def _replace_abandoned(self) -> None:
        """Have a new runner take the place of one stuck in an abandoned handler (called
        by the heartbeat's round, on its thread, also while the worker stops)."""

    def _settling(self) -> list[object]:
        """The keys of the runners settling a message whose handler ended (after
        ``_cut_off``, no other handler counts as running)."""
        with self._lock:
            return [key for key, task in self._tasks.items() if task.ended and not task.abandoned]

    def _cut_off(self) -> None:
        """At the end of shutdown: requeue what is still running, so it comes back now
        rather than after its lease; the handler's own late ack will be refused."""
        with self._lock:
            # (A task that ended is being settled by its runner, not cut off.)
            leftovers = [t for t in self._tasks.values() if not (t.abandoned or t.ended)]
            for task in leftovers:
                task.abandoned = True
        for task in leftovers:
            message = task.message
            result = self.queue.requeue(message)
            # A requeue on the message's last attempt dead-letters it (as a crash would).
            died = result.is_ok() and message.attempts >= message.max_attempts
            if died:
                self._count(dead_lettered=1)
                self.hooks.call("on_dead_letter", message, _CutOff("cut off at shutdown"))
            elif result.is_ok():
                self.stats.requeued += 1
            if isinstance(result, Err):
                outcome = f"could not be returned: {result.error}"
            elif died:
                outcome = "dead-lettered: that was its last attempt"
            else:
                outcome = "returned to the queue"
            logger.warning(
                "worker %s: message %d still running at shutdown, %s",
                self.name,
                message.id,
                outcome,
                extra={"message_id": message.id, "attempt": message.attempts},
            )


class Worker(WorkerCore):
    """Runs ``handler(message)`` for each message of ``queue`` on ``concurrency`` threads.

    - Returns normally: the message is completed. Raises: it is failed with the exception's
      last traceback line as its error, retried per the queue's retry policy (or after
      ``retry_delay(message, exc)`` seconds when given), and dead-lettered after its last
      attempt. Raises :class:`~sqqueue.Reject`: dead-lettered at once, not retried.
      Whatever it raises counts (SystemExit, KeyboardInterrupt, any BaseException): the
      message fails and the worker goes on; the unusual ones are logged at ERROR.
    - ``results=True``: the handler's return value, unless None, is kept as the message's
      result (``complete(message, result=value)``; the queue must keep history). A value
      that is not JSON fails the message.
    - Durations: ``durations=sqqueue.prometheus.Durations()`` records histograms of
      time-in-queue and processing time (statsd timers too when the queue uses statsd).
      An observer of your own must return at once: an AsyncWorker calls it on the loop.
    - Heartbeat: every ``heartbeat`` seconds (default a third of the lease) the leases of
      the running messages are extended, all in one call (``extend_batch``), so slow but
      alive handlers keep their messages.
    - Prefetch: a runner that finds nothing to do claims, in one transaction, for itself,
      the runners idle beside it and what the worker will start within 50 ms at the pace
      of its recent handlers (at most ``prefetch`` messages, default and most 100). Quick
      handlers get large claims; handlers slower than that get one message per idle
      runner, so a worker holds little that another could be serving. A message held
      unstarted for longer than a heartbeat (less when heartbeat > lease / 2) is given
      back (attempt not counted).
    - Grouped acknowledgements: a handler's runner goes on as soon as the handler returns;
      what gathers within 2 ms is completed in one transaction (by a thread of its own,
      or on SQLite by the runner about to claim, just before its claim; their
      ``on_success`` hooks run on another thread of its own, so a slow hook holds back no
      commit), each message still fenced by
      its own lease (if one was lost, the others are completed one by one), and the
      heartbeat extends that lease until the commit. A process killed between a
      handler's return and that commit (a few milliseconds) has its message delivered
      again once the lease runs out: at-least-once, never lost.
    - ``poll_wait``: how long an idle runner waits before it claims again on its own. A
      message enqueued anywhere wakes it at once (see "Waiting" in the README); the timed
      claim only backs up a lost wake-up, so the default is long (30 s) and idle is cheap.
    - ``task_timeout``: a handler running longer is abandoned: its message is failed with a
      timeout error (and retried), and a fresh thread takes its place. Python cannot kill
      the thread; if it finishes later, its result is ignored. With more than
      ``concurrency`` abandoned handlers still running, a timed-out thread is not replaced
      until one of them returns (logged at ERROR, once): threads never pile up.
    - The heartbeat never ends silently: a round that fails is logged at ERROR and tried
      again; when every round has failed for as long as a lease, the worker stops.
    - Shutdown (``stop()``, SIGTERM or SIGINT): no new messages are taken, messages taken
      but not started are released at once (attempt not counted), running handlers get
      ``grace_period`` seconds to finish, and those still running after it are requeued,
      so nothing waits for a lease to expire. A second signal stops at once (handlers
      are not waited for; a runner settling a message, up to ``SETTLE_WAIT`` seconds).
    """

    __slots__ = (
        "_capped_said",
        "_handoff",
        "_in_hand",
        "_owed",
        "_signals",
        "_spawned",
        "_threads",
    )

    def __init__(self, queue: Queue, handler: Handler, **options: Any) -> None:
        super().__init__(queue, handler, **options)
        self._threads: list[threading.Thread] = []
        self._spawned = 0
        self._handoff = threading.Condition(self._lock)  # guards the prefetch state
        # Signals received, noted by the handler and acted on by run()'s thread: a handler
        # runs between any two steps of that thread, which may hold a lock stop() takes.
        self._signals: list[int] = []
        # Runners claiming, or holding a message not yet registered as running (or given
        # back): at shutdown they are waited for as runners settling a message are (up to
        # SETTLE_WAIT), so that no claim lands and no handler starts after run() returned,
        # when the queue may be closed.
        self._in_hand: set[threading.Thread] = set()
        # Runners owed: replacements of runners stuck in an abandoned handler (or failed),
        # started by the heartbeat unless too many abandoned handlers still run (see
        # _fill_slots); and whether that was said.
        self._owed = 0
        self._capped_said = False

    def stop(self, immediate: bool = False) -> None:
        super().stop(immediate)
        with self._handoff:
            self._handoff.notify_all()  # runners waiting for a fetch see the stop

    def run(self) -> WorkerStats:
        """Process messages until stopped; returns the stats. Blocks the calling thread."""
        self._start_once()
        previous: dict[int, Any] = {}
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, lambda n, _f: self._signals.append(n))
        logger.info("worker %s: started with %d thread(s)", self.name, self.concurrency)
        heart = threading.Thread(
            target=self._heartbeat_loop, name=f"{self.name}-heartbeat", daemon=True
        )
        acker = self._start_acks()
        try:
            for _ in range(self.concurrency):
                if self._stopping.is_set():  # (a signal while starting many threads)
                    break
                self._spawn()
            heart.start()
            # A timed wait keeps the main thread responsive to signals everywhere (on
            # Windows a lock wait is not interrupted by Ctrl-C), and heeds them.
            while not self._stopping.wait(SIGNAL_CHECK):
                self._heed_signals()
        except BaseException:
            # Interrupted (KeyboardInterrupt without signal handlers): stop at once, giving
            # running messages back, then let the exception through.
            self.stop(immediate=True)
            raise
        finally:
            try:
                # What waits prefetched goes back at once, not after the running handlers
                # (a runner whose claim ends from now on gives back all of it: _fetched).
                self._release_prefetched()
                self._drain()
                self._close_acks(acker)
                self._wait_for_timeouts()
                self._drained.set()
                if heart.is_alive():
                    heart.join(self.grace_period + 60)  # (bounded: its calls have timeouts)
            finally:
                for number, old_handler in previous.items():
                    signal.signal(number, old_handler)
        logger.info("worker %s: stopped (%s)", self.name, self.stats)
        return self.stats

    def _heed_signals(self) -> None:
        while self._signals:
            self._on_signal(self._signals.pop(0))

    def _spawn(self) -> None:
        with self._lock:
            self._spawned += 1
            thread = threading.Thread(
                target=self._runner, name=f"{self.name}-{self._spawned}", daemon=True
            )
            # Runners that ended (replaced after a failure or a timeout) are forgotten.
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _replace_abandoned(self) -> None:
        with self._lock:
            if not self._stopping.is_set():  # (no runner is started once it stops)
                self._owed += 1  # started at the end of the heartbeat's round (_fill_slots)

    def _fill_slots(self) -> None:
        """Start the runners owed, while at most ``concurrency`` abandoned handlers still
        run: a handler that ignores task_timeout keeps its thread (Python cannot kill a
        thread), and replacing each one would pile up threads without end. Past that, a
        slot waits until one of them returns. Raises when a thread cannot be started: the
        slot stays owed, and the heartbeat tries again."""
        while self._owed:
            with self._lock:
                if not self._owed or self._stopping.is_set():
                    return
                stuck = sum(1 for task in self._tasks.values() if task.abandoned)
                capped = stuck > self.concurrency
                if not capped:
                    self._owed -= 1
            if capped:
                self._say_capped(stuck)
                return
            try:
                self._spawn()
            except BaseException:
                with self._lock:
                    self._owed += 1
                raise

    def _say_capped(self, stuck: int) -> None:
        """Log at ERROR, once, that timed-out runners are no longer replaced."""
        if self._capped_said:
            return
        self._capped_said = True
        logger.error(
            "worker %s: %d handlers still run though they timed out (task_timeout=%g s): a "
            "handler that ignores task_timeout keeps its thread, which Python cannot kill. "
            "With more than %d (concurrency) of them, a timed-out runner is not replaced "
            "until one of them returns, so fewer messages are served meanwhile (give the "
            "handler's own calls timeouts)",
            self.name,
            stuck,
            self.task_timeout,
            self.concurrency,
        )

    def _drain(self) -> None:
        deadline = time.monotonic() + self.grace_period
        for thread in list(self._threads):
            # A runner stuck in an abandoned handler (timed out, its message settled, also
            # while this waits) is not waited for: it holds nothing, and may never return.
            while thread.is_alive() and not (self._immediate.is_set() or self._stuck(thread)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                thread.join(min(remaining, SIGNAL_CHECK))
                self._heed_signals()
        self._cut_off()
        until = time.monotonic() + SETTLE_WAIT
        with self._handoff:
            in_hand = list(self._in_hand)
        try:
            self._join_until([*self._settling(), *in_hand], until)
        except BaseException:  # (Ctrl-C again) stop waiting; the rest of shutdown still runs
            logger.warning("worker %s: interrupted while messages were being settled", self.name)

    def _stuck(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` runs a handler given up on (timed out)."""
        with self._lock:
            task = self._tasks.get(thread)
            return task is not None and task.abandoned

    def _runner(self) -> None:
        """One handler thread. Should its own steps ever raise, the failure is logged,
        its message failed, and a fresh thread takes the slot."""
        try:
            self._consume_loop()
        except BaseException as exc:
            try:
                self._runner_failed(threading.current_thread(), exc)
            finally:
                if not self._stopping.wait(0.1):  # (a short pause: never a tight spawn loop)
                    with self._lock:
                        self._owed += 1
                    try:
                        self._fill_slots()
                    except BaseException as unstarted:
                        logger.error(
                            "worker %s: could not start a runner in place of the failed "
                            "one (%s); the heartbeat tries again",
                            self.name,
                            error_text(unstarted),
                        )

    def _consume_loop(self) -> None:
        key = threading.current_thread()
        while not self._stopping.is_set():
            task = self._take(key)
            if task is None:
                continue
            self._announce(task)
            value: Any = None
            error: BaseException | None = None
            # (Timed out or cut off while on_start ran: settled already, not to be handled.)
            if not task.abandoned:
                try:
                    value = self.handler(task.message)
                except BaseException as exc:  # whatever the handler raises fails its message
                    error = exc
            self._end(key, task, value, error)
            if task.abandoned:
                return  # a replacement thread took this slot

    # -- prefetch ---------------------------------------------------------------------------

    def _take(self, key: threading.Thread) -> RunningTask | None:
        """The next message, registered as running under ``key``: one fetched earlier, or
        a fetch of our own for us, the runners idle beside us and those about to be; None
        when stopping or nothing came. A message is registered in the step that hands it
        over (the handoff lock is the worker's lock): a runner holds no message shutdown
        does not know of, except while it claims or gives back (see _in_hand)."""
        task = None
        with self._handoff:
            while self._must_wait():
                self._idle += 1
                try:
                    self._handoff.wait()
                finally:
                    self._idle -= 1
            step, stale = self._next_or_fetch()
            if isinstance(step, tuple):
                task = self._register(key, *step)
                if task is None:  # stopping since: not started
                    stale.append(step[0])
            if stale or isinstance(step, int):
                self._in_hand.add(key)
        if stale:
            try:
                self._give_back(stale)
            finally:
                if not isinstance(step, int):
                    self._out_of_hand(key)
        if not isinstance(step, int):
            return task
        batch: list[Message] = []
        back: list[Message] = []
        try:
            if self._acks_with_claims:
                self._commit_gathered()
            batch = self._claim(step)
        finally:
            with self._handoff:
                self._in_hand.discard(key)
                mine, back = self._fetched(batch)
                if mine is not None:
                    task = self._register(key, *mine)
                    if task is None:
                        back.append(mine[0])
                if back:
                    self._in_hand.add(key)
                self._handoff.notify_all()
            if back:
                try:
                    self._give_back(back)
                finally:
                    self._out_of_hand(key)
        return task

    def _out_of_hand(self, key: threading.Thread) -> None:
        """This runner holds no message it has not registered (or given back)."""
        with self._handoff:
            self._in_hand.discard(key)

    def _claim(self, size: int) -> list[Message]:
        if self._stopping.is_set():  # (since _take looked: while committing, say)
            return []
        result = self.queue.dequeue_batch(
            size, visibility_timeout=self.lease, wait=self.poll_wait, cancel=self._stopping
        )
        if isinstance(result, Err):
            self._dequeue_failed(result.error)
            self._stopping.wait(min(self.poll_wait, 1.0))  # the database is in trouble: back off
            return []
        return result.value

    def _release_prefetched(self) -> None:
        """At shutdown: give back what was claimed but never started."""
        with self._handoff:
            left = self._unstarted()
        self._give_back(left)

    def _heartbeat_loop(self) -> None:
        failing_since: float | None = None  # when the rounds began to fail, if they do
        while not self._drained.is_set():
            try:
                running = self._heartbeat_round()
            except BaseException as exc:  # never a silent end: said, and tried again
                failing_since = self._heartbeat_failed(exc, failing_since)
                self._drained.wait(min(self.heartbeat, HEARTBEAT_RETRY))
                continue
            failing_since = None
            if self._stopping.is_set() and not running:
                return
            self._drained.wait(self.tick)

    def _heartbeat_round(self) -> bool:
        """Give back what waited prefetched too long, extend leases and enforce timeouts,
        then start the runners owed; whether any lease is still kept."""
        with self._handoff:
            stale = self._stale()
        if stale:
            self._give_back(stale)
        running = self._beat()
        self._fill_slots()
        return bool(running)


def _check_handler(handler: object, coroutines_run: bool) -> None:
    """Raise ValueError for a handler that is not callable, or whose body calling it
    would not run: a generator function's runs only when iterated, and a coroutine's only
    when awaited, which only an AsyncWorker (``coroutines_run``) does. Callable objects
    are looked into."""
    if not callable(handler):
        raise ValueError("handler must be callable")
    for fn in (handler, getattr(handler, "__call__", None)):  # noqa: B004 (the method)
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise ValueError(
                "handler is a generator function (it has a yield): calling it would not "
                "run it; make it a function that returns"
            )
        if inspect.iscoroutinefunction(fn) and not coroutines_run:
            raise ValueError(
                "handler is an async function, which a Worker would only call to get a "
                "coroutine it never runs: use AsyncWorker (await AsyncWorker(queue, "
                "handler).run()), or make it a plain def"
            )


def _made_coroutine(value: object) -> bool:
    """Whether a handler returned a coroutine, work a Worker never does (closed here, so
    Python does not warn of it later)."""
    if inspect.iscoroutine(value):
        value.close()
        return True
    return False


def _unusual(exc: BaseException) -> str | None:
    """What makes a handler's exception more than an ordinary failure, if anything."""
    if not isinstance(exc, Exception):
        return f"raised {type(exc).__name__}, which is not an Exception"
    try:
        str(exc)
    except BaseException as broken:  # (even KeyboardInterrupt from a __str__: it is input)
        return (
            f"raised {type(exc).__name__}, whose message cannot be read "
            f"(str() raised {type(broken).__name__})"
        )
    return None


def worker(queue: Queue, **options: Any) -> Callable[[Handler], Worker]:
    """Decorator form of :class:`Worker`::

    @worker(queue, concurrency=4)
    def handle(message): ...

    handle.run()
    """

    def wrap(handler: Handler) -> Worker:
        return Worker(queue, handler, **options)

    return wrap
