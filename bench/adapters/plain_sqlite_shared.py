"""Plain sqlite3 whose concurrent ``enqueue()`` calls share commits (group commit).

What the producer target asks sqqueue to do, done with nothing around it, to show what
sharing commits buys on SQLite in one CPython process: the same table and ``INSERT`` as
plain_sqlite.py (the reference), one connection shared by the threads, and the first
caller commits, in one ``executemany`` transaction, every row that arrived while the
commit before it ran; each call returns once the commit that holds its row is done.
Measured on the 8-thread producer row only.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import ClassVar

from . import plain_sqlite as least
from .plain_sqlite import Adapter as Least


class Adapter(Least):
    name = "sqlite3-shared-commits"
    semantics = (
        "the least-work shape, with concurrent enqueue() calls sharing one transaction "
        "(the first caller commits for those waiting behind it)"
    )
    how: ClassVar[dict[str, str]] = {
        **Least.how,
        "producers": "one connection shared by the threads; the calls waiting while a "
        "commit runs go together in the next: executemany INSERT in one transaction",
    }
    shared_across_threads = True

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.conn.close()
        self.conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self._turn = threading.Condition()
        self._waiting: list[tuple[str]] = []
        self._committing = False
        self._committed = 0  # commits done so far; a caller waits for the one holding its row
        self._failed: set[int] = set()

    def enqueue(self, payload: str) -> bool:
        with self._turn:
            self._waiting.append((payload,))
            # Rows that arrive while a commit runs go in the one after it.
            mine = self._committed + (2 if self._committing else 1)
            while self._committing and self._committed < mine:
                self._turn.wait()
            if self._committed >= mine:
                return mine not in self._failed
            self._committing = True
            rows, self._waiting = self._waiting, []
        ok = self._many(least.INSERT, rows)
        with self._turn:
            self._committed += 1
            if not ok:
                self._failed.add(self._committed)
            self._committing = False
            self._turn.notify_all()
        return ok
