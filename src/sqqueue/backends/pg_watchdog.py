"""A bound on how long a PostgreSQL call waits for the server to answer.

``lock_timeout`` bounds the waits the server reports (for locks, for a connection, for a
server starting up), but a statement sent to a server that then stops answering (its
process stopped or swapping, a paused VM, a network that drops packets without a word)
would wait in libpq for as long as that lasts. While a call runs a statement, its
connection is watched; past its deadline, one thread of this process shuts the
connection's socket down, which ends libpq's wait at once with a broken connection, and
the call reports why. The connection is never used again (a broken one is closed, not
pooled).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from typing import Protocol

__all__ = ["Watch", "Watchdog", "watchdog"]

logger = logging.getLogger(__name__)


class _Connection(Protocol):
    def fileno(self) -> int: ...


class Watch:
    """One connection watched until ``deadline`` (``time.monotonic()``)."""

    __slots__ = ("conn", "cut", "deadline")

    def __init__(self, conn: _Connection, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.cut = False  # the watchdog shut the connection down: the server never answered


class Watchdog:
    """Cuts the connections whose calls outlive their deadlines: one thread per process,
    started when first needed, asleep until the earliest deadline of the calls running
    (and for good while none runs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # The calls running now: a few (one per connection in use), so looking through
        # them all for the earliest deadline costs less than keeping them in order.
        self._active: set[Watch] = set()
        self._wake_at = math.inf  # when the thread looks next (inf: when told)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def watch(self, conn: _Connection, deadline: float) -> Watch:
        """Watch ``conn`` until ``end`` is called with what this returns."""
        watch = Watch(conn, deadline)
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the thread did not come along
                self._pid, self._thread, self._active = os.getpid(), None, set()
                self._wake_at = math.inf
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sqqueue-pg-watchdog", daemon=True
                )
                self._thread.start()
            self._active.add(watch)
            if deadline < self._wake_at:
                self._wake_at = deadline
                self._changed.notify()
        return watch

    def end(self, watch: Watch) -> bool:
        """The call is over (its connection may be pooled or closed now, never cut after
        this returns); whether it was cut."""
        with self._lock:
            self._active.discard(watch)
            return watch.cut

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for watch in [w for w in self._active if w.deadline <= now]:
                    self._active.discard(watch)
                    self._cut(watch)
                self._wake_at = min((w.deadline for w in self._active), default=math.inf)
                self._changed.wait(None if self._wake_at == math.inf else self._wake_at - now)

    @staticmethod
    def _cut(watch: Watch) -> None:
        """Shut the connection's socket down (under the lock: its call cannot end, nor
        its connection be closed and its descriptor reused, meanwhile)."""
        watch.cut = True
        try:
            sock = socket.socket(fileno=os.dup(watch.conn.fileno()))
        except Exception as exc:  # closed meanwhile (psycopg says so its own way)
            logger.debug("could not cut a PostgreSQL connection: %s", exc)
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            logger.debug("could not cut a PostgreSQL connection: %s", exc)
        finally:
            sock.close()


#: The process's watchdog (its thread starts with the first call watched).
watchdog = Watchdog()
