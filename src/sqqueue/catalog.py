"""Which queues a database holds, read without changing anything (the queue and the
whole-file tools both ask)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from .backends import sqlite_sql
from .backends.sqlite_files import classify, driver_errors, file_state, open_read_only
from .exceptions import ErrorKind, QueueError
from .targets import parse_target

T = TypeVar("T")


class _Changed(QueueError):
    """The file changed while an immutable connection read it (a writer started)."""


@contextlib.contextmanager
def read_only(path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """A connection that reads the file and changes nothing on disk (see
    ``open_read_only``); raises ``_Changed`` if the file changed under an immutable read."""
    target = Path(path)
    if not target.is_file():
        raise QueueError(f"no database file at {str(target)!r}", ErrorKind.NOT_FOUND)
    conn, snapshot = open_read_only(str(target))
    try:
        yield conn
    finally:
        conn.close()
    if snapshot is not None and file_state(str(target)) != snapshot:
        raise _Changed(
            f"{str(target)!r} changed while it was read (a process opened it); read it again",
            ErrorKind.LOCKED,
        )


def read(path: str | os.PathLike[str], fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn`` on a read-only connection to the file (again if the file changed meanwhile:
    the next connection goes through the -shm of the process that opened it)."""
    for _ in range(100):
        with contextlib.suppress(_Changed), read_only(path) as conn:
            try:
                return fn(conn)
            except driver_errors() as exc:  # (SQLCipher's errors too)
                raise classify(exc, str(path)) from exc
    raise QueueError(f"{str(path)!r} kept changing while it was read; retry", ErrorKind.LOCKED)


def registered(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    """(name, schema version) of the queues registered in the file, by name."""
    tables = {t[0] for t in conn.execute(sqlite_sql.TABLES)}
    if "sqqueue_queues" not in tables:
        return []
    rows = conn.execute(sqlite_sql.REGISTERED_BY_NAME)
    return [(str(r[0]), int(r[1])) for r in rows if r[0] in tables]


def list_queues(path: str | os.PathLike[str]) -> list[str]:
    """Names of the sqqueue queues in a database file, sorted."""
    return [name for name, _version in read(path, registered)]


def list_queues_at(
    target: str | os.PathLike[str], schema: str | None = None, timeout: float = 30.0
) -> list[str]:
    """Names of the queues in a database: a file path, ``sqlite:///`` or ``postgresql://``
    (in ``schema``, if given; a server gets ``timeout`` seconds to answer)."""
    kind, location = parse_target(target)
    if kind == "postgresql":
        from .backends.postgres import list_postgres_queues

        return list_postgres_queues(location, schema, timeout)
    if schema is not None:
        raise QueueError("schema applies to PostgreSQL only", ErrorKind.INVALID_INPUT)
    return list_queues(location)
