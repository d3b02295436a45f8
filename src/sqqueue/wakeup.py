"""In-process wake-ups for consumers waiting on a queue.

Producers in this process notify the queue's signal after every commit that may make a
message available; consumers blocked in ``dequeue(wait=...)`` (threads or asyncio tasks) wake
at once. Other processes are noticed by the backend's change counter, which waiting
consumers poll with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["Signal", "signal_for"]


class Signal:
    """A sequence number that waiters can block on, from threads or event loops."""

    def __init__(self) -> None:
        # notify() takes the plain lock (entered in C); wait() blocks on the condition.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._seq = 0
        self._blocked = 0  # threads in wait(): with none, notify() only counts
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def seq(self) -> int:
        return self._seq

    def notify(self) -> None:
        with self._lock:
            self._seq += 1
            if not self._blocked and not self._async_waiters:
                return  # the usual case for a producer: nobody to wake in this process
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        for loop, event in waiters:
            # A closed loop raises RuntimeError: its waiter is gone, nothing to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def wait(self, seq: int, timeout: float) -> bool:
        """Block until notified after ``seq`` or ``timeout`` passes; True if notified."""
        with self._cond:
            if self._seq == seq:
                self._blocked += 1
                try:
                    self._cond.wait(timeout)
                finally:
                    self._blocked -= 1
            return self._seq != seq

    async def wait_async(self, seq: int, timeout: float) -> bool:
        """``wait`` for asyncio: suspends the task, never the event loop."""
        event = asyncio.Event()
        key = (asyncio.get_running_loop(), event)
        with self._cond:
            if self._seq != seq:
                return True
            self._async_waiters.add(key)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._cond:
                self._async_waiters.discard(key)
        return self._seq != seq


_signals: dict[str, Signal] = {}
_signals_lock = threading.Lock()


def signal_for(key: str) -> Signal:
    """The process-wide signal of one queue (``key`` names its database and table)."""
    with _signals_lock:
        signal = _signals.get(key)
        if signal is None:
            signal = _signals[key] = Signal()
        return signal
