"""Periodic tasks: schedules, and the scheduler every worker runs.

There is no scheduler process. Every worker runs a :class:`Scheduler`, which enqueues a
periodic task's run when one of its ticks comes due, with a deduplication key naming the
task and the tick: however many workers (on however many machines) see the tick, the
queue adds one message. Each process remembers the last tick it handled, so it asks the
database once per tick.

Ticks missed while no worker ran (or while every worker was stalled) follow the task's
``missed`` policy:

* ``"skip"`` (default): a tick noticed more than ``grace`` seconds late (default: half the
  interval, at most 60 s) is not run; the schedule goes on with the next tick.
* ``"run_once"``: the latest missed tick is run once, however late; older ones are not.

Runs of one periodic task never overlap: they share a message group (with the calls
made by hand, ``task.delay()``), so a run starts once the previous one has finished (or
was dead-lettered).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..exceptions import EnqueueError
from ..result import Ok, Result

if TYPE_CHECKING:
    from .task import Task

__all__ = ["MISSED_POLICIES", "Periodic", "Schedule", "Scheduler", "periodic_group", "tick_key"]

logger = logging.getLogger(__name__)

MISSED_POLICIES = ("skip", "run_once")
Missed = Literal["skip", "run_once"]
_HORIZON = 10 * 366 * 86400.0  # how far ahead a cron schedule's longest gap is looked for


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str) or not tz:
        raise ValueError(f"tz must be an IANA time zone name (e.g. 'Europe/Paris'), got {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {tz!r}: use an IANA name such as 'Europe/Paris'"
        ) from exc


class Schedule:
    """When a periodic task runs: ``every`` N seconds, or a ``cron`` expression in ``tz``.

    ``every`` ticks fall on multiples of N seconds since the Unix epoch (``every=3600``: on
    the hour, UTC), so every worker computes the same ticks. ``cron`` is a standard 5-field
    expression (``"0 3 * * *"``: 03:00 every day) read by the croniter package, in the time
    zone ``tz`` (an IANA name; default UTC, never the machine's local zone).
    """

    def __init__(
        self, *, cron: str | None = None, every: float | None = None, tz: str | tzinfo = "UTC"
    ) -> None:
        if (cron is None) == (every is None):
            raise ValueError("give a periodic task either cron='...' or every=SECONDS")
        self.cron = cron
        self.every: float | None = None
        self.tz = _zone(tz)
        if every is not None:
            if (
                not isinstance(every, (int, float))
                or isinstance(every, bool)
                or not math.isfinite(every)
                or every < 1
            ):
                raise ValueError(f"every must be a number of seconds >= 1, got {every!r}")
            self.every = float(every)
            return
        if not isinstance(cron, str) or not cron.strip():
            raise ValueError(f"cron must be a cron expression such as '0 3 * * *', got {cron!r}")
        try:
            from croniter import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
                croniter,
            )
        except ImportError:
            raise ValueError(
                "cron schedules need the croniter package: pip install 'sqqueue[tasks]'"
            ) from None
        self._croniter: Any = croniter
        if not croniter.is_valid(cron):
            raise ValueError(f"invalid cron expression {cron!r} (e.g. '0 3 * * *': 03:00 daily)")
        # At fixed hours ("30 2 * * *", "@daily"), not every hour ("0 * * * *", "0 0-23 * * *",
        # "@hourly"); an hour field starting with "*" ("*/2") counts as every hour, as in cron.
        fields = cron.split()
        self._fixed_hours = croniter(cron).expanded[1] != ["*"] and not (
            len(fields) >= 5 and fields[1].startswith("*")
        )
        try:
            self.following(0.0)
        except Exception as exc:  # croniter's "no such date" errors
            raise ValueError(f"cron expression {cron!r} never fires: {exc}") from None

    def __repr__(self) -> str:
        if self.every is not None:
            return f"Schedule(every={self.every:g})"
        return f"Schedule(cron={self.cron!r}, tz={str(self.tz)!r})"

    def _at(self, when: float) -> datetime:
        return datetime.fromtimestamp(when, tz=self.tz)

    def _repeated(self, tick: float) -> bool:
        """Whether a cron tick is the second of a time of day that the autumn change of
        daylight saving time repeats, for a schedule at fixed hours. Cron runs such a job
        once that night (a nightly job must not run twice); a job every hour runs in each
        hour that passes, the repeated one too."""
        return self._fixed_hours and self._at(tick).fold == 1

    def following(self, when: float) -> float:
        """The first tick strictly after ``when`` (Unix seconds)."""
        if self.every is not None:
            return (math.floor(when / self.every) + 1) * self.every
        ticks = self._croniter(self.cron, self._at(when))
        tick = float(ticks.get_next(float))
        while self._repeated(tick):
            tick = float(ticks.get_next(float))
        return tick

    def latest(self, now: float) -> float:
        """The last tick at or before ``now``."""
        if self.every is not None:
            return math.floor(now / self.every) * self.every
        ticks = self._croniter(self.cron, self._at(self.following(now)))
        tick = float(ticks.get_prev(float))
        while self._repeated(tick):
            tick = float(ticks.get_prev(float))
        return tick

    def longest_gap(self, now: float) -> float:
        """The longest time between two ticks (cron: looked for over the next 1,000 ticks
        or ten years)."""
        if self.every is not None:
            return self.every
        it = self._croniter(self.cron, self._at(now))
        previous = float(it.get_next(float))
        gap = 0.0
        for _ in range(1000):
            try:
                tick = float(it.get_next(float))
            except Exception:  # no further date within croniter's range
                break
            gap = max(gap, tick - previous)
            previous = tick
            if tick - now > _HORIZON:
                break
        return max(gap, 1.0)


@dataclass(frozen=True)
class Periodic:
    """A periodic task's schedule and its policy for missed ticks."""

    schedule: Schedule
    missed: Missed = "skip"
    grace: float | None = None  #: "skip": how late a tick may still run (seconds)

    def __post_init__(self) -> None:
        if self.missed not in MISSED_POLICIES:
            raise ValueError(f"missed must be 'skip' or 'run_once', got {self.missed!r}")
        if self.grace is not None and not (
            isinstance(self.grace, (int, float)) and math.isfinite(self.grace) and self.grace >= 0
        ):
            raise ValueError(f"grace must be a number of seconds >= 0, got {self.grace!r}")

    def grace_at(self, now: float) -> float:
        if self.missed == "run_once":
            return math.inf
        if self.grace is not None:
            return float(self.grace)
        return min(60.0, self.schedule.longest_gap(now) / 2)


def tick_key(task_name: str, tick: float) -> str:
    """The deduplication key of one tick of one task: the same in every process."""
    return f"sqqueue.tick:{task_name}@{tick:.3f}"


def periodic_group(task_name: str) -> str:
    """The message group of every call of a periodic task (its ticks', and ``delay()``'s):
    one group, so its runs never overlap."""
    return f"sqqueue.periodic:{task_name}"


Enqueue = Callable[["Task[Any, Any]", float], Result[int, EnqueueError]]


class Scheduler:
    """Enqueues the runs of periodic tasks as their ticks come due (one per process).

    ``run_pending()`` does one round; ``run(stop)`` loops until ``stop`` is set, waking at
    the next tick (at least once a second, so a changed clock is noticed).
    """

    def __init__(
        self, tasks: Sequence[Task[Any, Any]], enqueue: Enqueue, clock: Callable[[], float]
    ) -> None:
        self.tasks = [t for t in tasks if t.periodic is not None]
        self._enqueue = enqueue
        self._clock = clock
        self._handled: dict[str, float] = {}
        self._grace: dict[str, float] = {}
        self._lock = threading.Lock()

    def run_pending(self) -> list[tuple[str, float, int]]:
        """Enqueue every tick due now that this process has not handled yet; returns
        (task, tick, message id) for each (the id of the existing message when another
        worker enqueued that tick first)."""
        enqueued: list[tuple[str, float, int]] = []
        with self._lock:
            self._notice_clock_back(float(self._clock()))
            for task in self.tasks:
                done = self._run_task(task)
                if done is not None:
                    enqueued.append(done)
        return enqueued

    def _notice_clock_back(self, now: float) -> None:
        """Forget the ticks handled that are still to come by the clock as it reads now.

        The clock went back (a step forward later corrected, a VM restored): remembered,
        such a tick would hold its task back until the clock caught up with it again,
        silently, maybe for days. Forgotten, this process does what a restarted one does:
        it enqueues the ticks due by the clock as it now reads, and a tick enqueued
        already (by this process before the step, or by another worker) is found by its
        deduplication key, whose stored expiry the step back only lengthens, so it is not
        enqueued twice while the key lives.
        """
        ahead = {name: tick for name, tick in self._handled.items() if tick > now}
        if not ahead:
            return
        for name in ahead:
            del self._handled[name]
        latest = max(ahead.values())
        logger.warning(
            "periodic scheduler: the clock went back: it reads %s, %.1f s before tick %s, "
            "which was handled already; the ticks of %s resume by the clock as it reads now",
            _iso(now),
            latest - now,
            _iso(latest),
            ", ".join(sorted(ahead)),
        )

    def _run_task(self, task: Task[Any, Any]) -> tuple[str, float, int] | None:
        """Handle one task's latest tick if this process has not: enqueue it, or skip it
        when late (``missed="skip"``); (task, tick, message id) when enqueued."""
        periodic = task.periodic
        assert periodic is not None
        now = float(self._clock())
        tick = periodic.schedule.latest(now)
        if tick <= self._handled.get(task.name, -math.inf):
            return None
        grace = self._grace.get(task.name)
        if grace is None:
            grace = self._grace[task.name] = periodic.grace_at(now)
        if now - tick > grace:
            self._handled[task.name] = tick
            logger.info(
                "periodic task %s: tick %s noticed %.1f s late, skipped (missed='skip')",
                task.name,
                _iso(tick),
                now - tick,
            )
            return None
        result = self._enqueue(task, tick)
        if not isinstance(result, Ok):
            logger.warning(
                "periodic task %s: could not enqueue tick %s (will retry): %s",
                task.name,
                _iso(tick),
                result.error,
            )
            return None
        self._handled[task.name] = tick
        logger.debug("periodic task %s: tick %s is message %d", task.name, _iso(tick), result.value)
        return task.name, tick, result.value

    def seconds_to_next(self) -> float:
        """How long to sleep before the next round: until the next tick, at most 1 s."""
        now = float(self._clock())
        nearest = min(
            (t.periodic.schedule.following(now) for t in self.tasks if t.periodic is not None),
            default=now + 1.0,
        )
        return min(max(nearest - now + 0.002, 0.002), 1.0)

    def run(self, stop: threading.Event) -> None:
        """Run rounds until ``stop`` is set (a worker's scheduler thread)."""
        while not stop.is_set():
            try:
                self.run_pending()
            except Exception:
                logger.exception("periodic scheduler round failed; retrying in a second")
                stop.wait(1.0)
                continue
            stop.wait(self.seconds_to_next())


def _iso(tick: float) -> str:
    return datetime.fromtimestamp(tick, tz=timezone.utc).isoformat()
