"""Wake-ups for consumers waiting on a queue.

Producers in this process notify the queue's signal after every commit that may make a
message available; consumers blocked in ``dequeue(wait=...)`` (threads or asyncio tasks) wake
at once. Commits by other processes are noticed by one :class:`Watcher` per process and
database, which reads the database's change counter (closely while it changes, then
waiting for the files to be written) and nudges the signals of its queues: however many
consumers wait, the process watches once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

__all__ = ["POLL_IDLE", "POLL_MAX", "POLL_MIN", "Probe", "Signal", "Watcher", "signal_for"]

logger = logging.getLogger(__name__)

# The watcher polls every 2 ms after a change, backing off to every 10 ms: while other
# processes are at work, their commits are seen within ~10 ms. After QUIET seconds without
# a change it waits on the probe: on Linux until the database's files are written (file
# events), elsewhere for POLL_IDLE seconds (a first commit after a lull may wait up to
# 50 ms). Measured on a small virtual machine, a check after a sleep costs 0.2 to 0.7 ms
# of CPU (caches gone cold, far more than the 3 us of a check in a loop): polling 20 times
# a second put an idle Worker at 0.7 to 1.05% of a core beside other work; with file
# events it checks every few seconds (the probe's back-up interval), 0.2 to 0.4%.
POLL_MIN, POLL_MAX, POLL_IDLE, QUIET = 0.002, 0.01, 0.05, 1.0
# After a failed check (the file is gone, the disk fails) the watcher backs off further.
_POLL_FAILED = 1.0


class _Kickable(Protocol):
    def kick(self) -> None: ...


class Signal:
    """Two counters that waiters can block on, from threads or event loops.

    ``seq`` counts events that may have made a message available (an enqueue in this
    process, a message given back): a waiter woken by it claims at once. ``changes``
    counts nudges: the database changed somewhere (another process committed, the queue
    was closed), so a waiter looks again at what is due before deciding to claim.
    """

    def __init__(self) -> None:
        # notify() takes the plain lock (entered in C); wait() blocks on the condition.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._seq = 0
        self._changes = 0
        self._blocked = 0  # threads in wait(): with none, notify() only counts
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        #: kicked whenever a waiter starts to wait, so that it watches for other processes
        self.watcher: _Kickable | None = None

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def changes(self) -> int:
        return self._changes

    @property
    def waiting(self) -> bool:
        """Whether a thread or task is blocked on this signal now."""
        return bool(self._blocked or self._async_waiters)

    def notify(self) -> None:
        """A message may be available: waiters claim."""
        with self._lock:
            self._seq += 1
            if not self._blocked and not self._async_waiters:
                return  # the usual case for a producer: nobody to wake in this process
        self._wake()

    def nudge(self) -> None:
        """Something changed: waiters look again (no message implied)."""
        with self._lock:
            self._changes += 1
            if not self._blocked and not self._async_waiters:
                return
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        for loop, wakeup in waiters:
            # A closed loop raises RuntimeError: its waiter is gone, nothing to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wakeup.set)

    def _idle(self, seq: int, changes: int | None) -> bool:
        return self._seq == seq and (changes is None or self._changes == changes)

    def _kick_watcher(self) -> None:
        watcher = self.watcher
        if watcher is not None:
            watcher.kick()

    def wait(self, seq: int, timeout: float, changes: int | None = None) -> bool:
        """Block until notified after ``seq`` (or nudged after ``changes``, if given) or
        ``timeout`` passes; True if notified."""
        with self._cond:
            if self._idle(seq, changes):
                self._blocked += 1
                try:
                    self._kick_watcher()  # after counting this waiter: see Watcher._needed
                    self._cond.wait(timeout)
                finally:
                    self._blocked -= 1
            return self._seq != seq

    async def wait_async(self, seq: int, timeout: float, changes: int | None = None) -> bool:
        """``wait`` for asyncio: suspends the task, never the event loop."""
        wakeup = asyncio.Event()
        key = (asyncio.get_running_loop(), wakeup)
        with self._cond:
            if not self._idle(seq, changes):
                return self._seq != seq
            self._async_waiters.add(key)
            self._kick_watcher()
        try:
            await asyncio.wait_for(wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._cond:
                self._async_waiters.discard(key)
        return self._seq != seq


# Weak: a signal lives while a queue object holds it, so a process that opens and closes
# queues on many files over its life does not keep one for each.
_signals: weakref.WeakValueDictionary[str, Signal] = weakref.WeakValueDictionary()
_signals_lock = threading.Lock()


def signal_for(key: str) -> Signal:
    """The process-wide signal of one queue (``key`` names its database and table), shared
    by this process's queue objects on it while any of them is alive."""
    with _signals_lock:
        signal = _signals.get(key)
        if signal is None:
            signal = _signals[key] = Signal()
        return signal


class Probe(Protocol):
    """A change counter of one database, read on a connection of the watcher's own, and
    the wait between reads while the database is quiet."""

    def read(self) -> int:
        """A number that differs from the last one read whenever another connection
        has committed to the database since."""

    def wait(self) -> None:
        """Sleep while the database is quiet: until its files are written, where the
        probe can tell (then up to a back-up interval), else for ``POLL_IDLE`` seconds."""

    def touched(self) -> bool:
        """Whether the database's files were written since the last call: a commit in
        progress that ``read`` may not show yet (always False where the probe cannot
        tell)."""

    def close(self) -> None: ...


class Watcher:
    """Watches one database for this process: one thread polls its change counter and
    nudges the signals of the queues registered on it.

    The thread runs only while some registered signal has a waiter: with nobody waiting
    it parks (no CPU at all), and a waiter that starts to wait kicks it. It ends, and
    closes its probe, when the last registrant is gone. Its cost is the same whatever the
    number of waiters.
    """

    def __init__(self, name: str, open_probe: Callable[[], Probe]) -> None:
        self.name = name
        self.pid = os.getpid()  # a watcher belongs to the process that made it
        self._open_probe = open_probe
        # Re-entrant: a queue object collected while this thread holds the lock (the
        # collector runs wherever memory is allocated) unregisters itself through a
        # finalizer on this same thread, which would otherwise wait for itself for ever.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._registrants: dict[object, Signal] = {}
        self._signals: tuple[Signal, ...] = ()  # theirs, each once (replaced, never changed)
        self._thread: threading.Thread | None = None
        self._parked = False
        #: the probe in use (referenced here too, so that after a fork the child keeps the
        #: parent's connection alive and untouched)
        self.probes: set[Probe] = set()

    def register(self, registrant: object, signal: Signal) -> None:
        """Nudge ``signal`` on every change, until ``unregister(registrant)``."""
        if self.pid != os.getpid():
            return  # a parent's watcher: its thread did not come along
        with self._lock:
            self._registrants[registrant] = signal
            self._signals = tuple(dict.fromkeys(self._registrants.values()))
            signal.watcher = self
        self.kick()

    def unregister(self, registrant: object) -> None:
        if self.pid != os.getpid():
            return
        with self._lock:
            signal = self._registrants.pop(registrant, None)
            self._signals = tuple(dict.fromkeys(self._registrants.values()))
            if signal is not None and signal not in self._signals:
                signal.watcher = None
            self._cond.notify_all()  # a parked thread re-checks whether it is still needed

    def kick(self) -> None:
        """A waiter is about to wait: make sure the thread runs."""
        if self.pid != os.getpid():
            return
        with self._lock:
            if not self._registrants:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"sqqueue-watch-{self.name}", daemon=True
                )
                self._thread.start()
            elif self._parked:
                self._cond.notify_all()

    def _nudge_all(self) -> None:
        for signal in self._signals:
            signal.nudge()

    def _needed(self) -> bool:
        """Whether to go on polling: parks while nobody waits; False when the watcher is no
        longer needed at all."""
        for signal in self._signals:  # the usual case, without taking the lock
            if signal.waiting:
                return True
        # A waiter is counted by its signal before it kicks, and both the check here and
        # the kick hold this lock: a waiter is never left with a parked watcher.
        with self._lock:
            while self._registrants and not any(s.waiting for s in self._signals):
                self._parked = True
                self._cond.wait()
                self._parked = False
            if self._registrants:
                return True
            self._thread = None
            return False

    def _run(self) -> None:
        probe: Probe | None = None
        version: int | None = None
        interval = POLL_MIN
        changed_at = time.monotonic()
        quiet = False
        try:
            while self._needed():
                if probe is None:
                    try:
                        probe = self._open_probe()
                    except Exception:
                        logger.debug("watcher %s: cannot open its probe", self.name, exc_info=True)
                        self._nudge_all()  # the waiters find out what is wrong themselves
                        time.sleep(_POLL_FAILED)
                        continue
                    self.probes.add(probe)
                    with contextlib.suppress(Exception):
                        version = probe.read()
                    # What was committed before the first read does not show as a change:
                    # the waiters look once, so that nothing committed meanwhile is missed.
                    self._nudge_all()
                    continue
                if quiet:
                    probe.wait()
                else:
                    time.sleep(interval)
                try:
                    # touched() before read(): a write after it wakes the next wait().
                    touched = probe.touched()
                    latest: int | None = probe.read()
                except Exception:
                    logger.debug("watcher %s: check failed", self.name, exc_info=True)
                    touched, latest, interval = False, None, _POLL_FAILED
                if latest is None or latest != version:
                    # Changed, or unknown (a failed check): the waiters look for themselves.
                    if latest is not None:
                        interval, changed_at = POLL_MIN, time.monotonic()
                    version = latest
                    quiet = False
                    self._nudge_all()
                elif touched:
                    # Written, but the commit may not show yet: watch closely for a while.
                    interval = POLL_MIN if quiet else min(interval * 2, POLL_MAX)
                    changed_at, quiet = time.monotonic(), False
                else:
                    quiet = time.monotonic() - changed_at > QUIET
                    interval = min(interval * 2, POLL_MAX)
        finally:
            if probe is not None and self.pid == os.getpid():
                self.probes.discard(probe)
                with contextlib.suppress(Exception):
                    probe.close()
