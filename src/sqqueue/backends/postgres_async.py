"""psycopg's asyncio connection behind the synchronous face the PostgreSQL backend uses.

The asyncio API runs the queue core on the event loop (see :mod:`sqqueue.bridge`);
there, the backend gets these connections instead of psycopg's synchronous ones, and
each statement is awaited on the loop instead of blocking a thread. Only what the
backend's operations use is here: ``execute`` and the cursor's fetches, the status
attributes its pool checks, and ``close``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg

from ..bridge import active, wait_for

__all__ = ["AsyncFace"]


class _Cursor:
    """The synchronous face of an ``AsyncCursor``."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: psycopg.AsyncCursor[Any]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def description(self) -> Any:
        return self._cursor.description

    def fetchone(self) -> Any:
        return wait_for(self._cursor.fetchone())

    def fetchall(self) -> list[Any]:
        return wait_for(self._cursor.fetchall())

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class AsyncFace:
    """The synchronous face of a ``psycopg.AsyncConnection``, for bridged calls."""

    __slots__ = ("__weakref__", "_conn")

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @classmethod
    def connect(cls, url: str, **options: Any) -> AsyncFace:
        """``psycopg.connect``, awaited on the loop."""
        return cls(wait_for(psycopg.AsyncConnection.connect(url, **options)))

    def execute(self, query: Any, params: Any = None) -> _Cursor:
        return _Cursor(wait_for(self._conn.execute(query, params)))

    @property
    def closed(self) -> bool:
        return self._conn.closed

    @property
    def broken(self) -> bool:
        return self._conn.broken

    @property
    def info(self) -> psycopg.ConnectionInfo:
        return self._conn.info

    def fileno(self) -> int:
        return self._conn.fileno()

    def close(self) -> None:
        if active():
            wait_for(self._conn.close())
        else:
            # Closed from a thread (the queue closed by a synchronous call): the
            # connection is idle, so nothing of the loop's waits on it, and closing the
            # libpq connection is all AsyncConnection.close() does.
            self._conn.pgconn.finish()
