"""Whole-file tools: list queues, check integrity, and salvage a damaged database.

These work on the file, not on one queue, and are what ``sqqueue check`` and
``sqqueue salvage`` run::

    from sqqueue.tools import check, salvage

    problems = check("jobs.db")              # [] when the file is healthy
    report = salvage("jobs.db", "rescued.db")
    print(report.copied, report.lost_rows)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .backends import sqlite_sql
from .backends.sqlite import SQLiteBackend, classify, file_state, not_a_database, open_read_only
from .exceptions import ErrorKind, QueueError
from .names import validate_queue_name
from .targets import parse_target

__all__ = [
    "SalvageReport",
    "check",
    "copy_queues",
    "legacy_queues",
    "list_queues",
    "list_queues_at",
    "migrate",
    "salvage",
    "schema_sql",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MESSAGE_COLUMNS = (
    "id",
    "payload",
    "encoding",
    "checksum",
    "status",
    "priority",
    "visible_at",
    "attempts",
    "max_attempts",
    "last_error",
    "created_at",
    "updated_at",
)
_DEAD_COLUMNS = (
    "id",
    "payload",
    "encoding",
    "checksum",
    "priority",
    "attempts",
    "max_attempts",
    "last_error",
    "created_at",
    "updated_at",
    "dead_at",
)


class _Changed(QueueError):
    """The file changed while an immutable connection read it (a writer started)."""


@contextlib.contextmanager
def _read_only(path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
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


def _read(path: str | os.PathLike[str], fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn`` on a read-only connection to the file (again if the file changed meanwhile:
    the next connection goes through the -shm of the process that opened it)."""
    for _ in range(100):
        with contextlib.suppress(_Changed), _read_only(path) as conn:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise classify(exc, str(path)) from exc
    raise QueueError(f"{str(path)!r} kept changing while it was read; retry", ErrorKind.LOCKED)


def _registered(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    """(name, schema version) of the queues registered in the file, by name."""
    tables = {t[0] for t in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "sqqueue_queues" not in tables:
        return []
    rows = conn.execute("SELECT name, schema_version FROM sqqueue_queues ORDER BY name")
    return [(str(r[0]), int(r[1])) for r in rows if r[0] in tables]


def list_queues(path: str | os.PathLike[str]) -> list[str]:
    """Names of the sqqueue queues in a database file, sorted."""
    return [name for name, _version in _read(path, _registered)]


def legacy_queues(path: str | os.PathLike[str]) -> list[str]:
    """Queues in the file still in sqqueue 0.1.0's layout (not migrated yet)."""

    def look(conn: sqlite3.Connection) -> list[str]:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        registered: set[str] = set()
        if "sqqueue_queues" in names:
            registered = {r[0] for r in conn.execute("SELECT name FROM sqqueue_queues")}
        found = []
        for name in sorted(names - registered):
            columns = {r[1] for r in conn.execute("SELECT * FROM pragma_table_info(?)", (name,))}
            if {"processing_at", "dlq", "visible_at", "status"} <= columns:
                found.append(name)
        return found

    return _read(path, look)


def migrate(path: str | os.PathLike[str]) -> list[str]:
    """Bring every queue of the file to the current layout now, each in one transaction:
    queues of an older sqqueue schema are upgraded, then sqqueue 0.1.0 queues migrated.

    Opening a queue for use does the same for that queue; this does all of them at once,
    e.g. before a deploy. Returns the names of the queues changed.
    """
    done = []
    for name, version in _read(path, _registered):
        if version < sqlite_sql.SCHEMA_VERSION:
            SQLiteBackend(path, validate_queue_name(name)).close()
            done.append(name)
    for name in legacy_queues(path):
        SQLiteBackend(path, validate_queue_name(name)).close()
        done.append(name)
    return done


def check(path: str | os.PathLike[str]) -> list[str]:
    """Run SQLite's integrity check on the file; return the problems (empty when healthy).

    Damage is a problem in the list; a file that is not an SQLite database, and anything
    else that keeps the check from running (permissions, a lock), raises ``QueueError``
    saying what it is.
    """

    def integrity(conn: sqlite3.Connection) -> list[str]:
        try:
            return [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
        except sqlite3.Error as exc:
            error = classify(exc, str(path))
            if error.kind is not ErrorKind.CORRUPT or not_a_database(exc):
                raise error from exc  # not damage: nothing to check, nor to salvage
            return [str(error)]

    try:
        problems = _read(path, integrity)
    except QueueError as exc:
        if exc.kind is ErrorKind.CORRUPT:
            raise  # not an SQLite database: said as such
        raise QueueError(f"cannot check {str(path)!r}: {exc}", exc.kind) from exc
    return [] if problems == ["ok"] else problems


@dataclass
class SalvageReport:
    """What ``salvage`` copied, per queue, and what it could not read."""

    copied: dict[str, int] = field(default_factory=dict)
    dead_copied: dict[str, int] = field(default_factory=dict)
    lost_rows: int = 0
    errors: list[str] = field(default_factory=list)


def _rows(
    conn: sqlite3.Connection, table: str, columns: tuple[str, ...], highest: int
) -> Iterator[tuple[object, ...]]:
    """Every readable row; on damage, fall back to reading id by id (up to ``highest``,
    the queue's largest id) and skip bad ones."""
    cols = ", ".join(columns)
    quoted = f'"{table}"'
    try:
        yield from conn.execute(f"SELECT {cols} FROM {quoted} ORDER BY id").fetchall()
        return
    except sqlite3.DatabaseError:
        logger.warning("salvage: %s is damaged; reading it row by row", table)
    try:
        high = conn.execute(f"SELECT max(id) FROM {quoted}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        high = 0
    high = max(high, highest)
    for ident in range(1, int(high) + 1):
        try:
            row = conn.execute(f"SELECT {cols} FROM {quoted} WHERE id = ?", (ident,)).fetchone()
        except sqlite3.DatabaseError:
            yield (ident, None)  # a marker: this id could not be read
            continue
        if row is not None:
            yield row


def _highest_id(conn: sqlite3.Connection, name: str, version: int) -> int:
    """The largest id a queue of a damaged file has handed out, as far as it can be read:
    from its tables, its counters and the sequence sqqueue 0.1.0 kept."""
    names = sqlite_sql.object_names(name, version)
    high = 0
    for query, params in (
        *((f'SELECT max(id) FROM "{names[t]}"', ()) for t in ("q", "dlq", "done")),
        ("SELECT n FROM sqqueue_counters WHERE name = ?", (f"{name}#high",)),
        ("SELECT seq FROM sqlite_sequence WHERE name = ?", (name,)),
    ):
        with contextlib.suppress(sqlite3.DatabaseError):
            row = conn.execute(query, params).fetchone()
            if row is not None and row[0] is not None:
                high = max(high, int(row[0]))
    return high


def salvage(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> SalvageReport:
    """Copy every readable message of every queue in ``source`` into a new file ``target``.

    Ids, priorities, attempts and errors are kept; messages that were being processed come
    back pending (their consumers are gone with the damaged file); dead letters stay dead.
    The source is opened read-only and never changed.
    """
    target_path = Path(target)
    if target_path.exists():
        raise QueueError(
            f"salvage target {str(target_path)!r} already exists; give a new file name",
            ErrorKind.INVALID_INPUT,
        )
    report = SalvageReport()
    with _read_only(source) as src:
        try:
            queues = [
                (validate_queue_name(r[0]), int(r[1]))
                for r in src.execute(
                    "SELECT name, schema_version FROM sqqueue_queues ORDER BY name"
                )
            ]
        except sqlite3.DatabaseError as exc:
            if not_a_database(exc):
                raise QueueError(
                    f"{classify(exc, str(source))}; nothing to salvage", ErrorKind.CORRUPT
                ) from exc
            raise QueueError(
                f"cannot read the queue list of {str(source)!r}: {exc}; nothing to salvage",
                ErrorKind.CORRUPT,
            ) from exc
        for name, version in queues:
            tables = sqlite_sql.object_names(name, version)
            backend = SQLiteBackend(target_path, name)
            try:
                with backend.raw_connection() as dst:
                    # Ids stay taken in the new file, so none is ever handed out again.
                    dst.execute("BEGIN IMMEDIATE")
                    highest = _highest_id(src, name, version)
                    backend.reserve_ids(dst, highest)
                    dst.execute("COMMIT")
                    count = functools.partial(backend.count_arrivals, dst)
                    copied, lost = _copy_table(
                        src, dst, tables, "q", _MESSAGE_COLUMNS, highest, count=count
                    )
                    dead, dead_lost = _copy_table(src, dst, tables, "dlq", _DEAD_COLUMNS, highest)
            finally:
                backend.close()
            report.copied[name] = copied
            report.dead_copied[name] = dead
            report.lost_rows += lost + dead_lost
            if lost or dead_lost:
                report.errors.append(f"{name}: {lost + dead_lost} unreadable row(s) skipped")
    return report


def _body_of(src: sqlite3.Connection, body: str, ident: object) -> object:
    try:
        row = src.execute(f'SELECT payload FROM "{body}" WHERE id = ?', (ident,)).fetchone()
    except sqlite3.DatabaseError:
        return None
    return None if row is None else row[0]


def _copy_table(
    src: sqlite3.Connection,
    dst: sqlite3.Connection,
    tables: dict[str, str],
    role: str,
    columns: tuple[str, ...],
    highest: int,
    count: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Copy the queue's ``role`` table (``tables``: its tables' names in the source) row by
    row in one transaction; (copied, unreadable). ``count`` is told how many were copied,
    before the commit (dead letters count themselves)."""
    table = tables[role]
    copied = lost = 0
    placeholders = ", ".join("?" for _ in columns)
    insert = f'INSERT INTO "{tables[role]}" ({", ".join(columns)}) VALUES ({placeholders})'
    dst.execute("BEGIN IMMEDIATE")
    try:
        for row in _rows(src, table, columns, highest):
            if len(row) == 2 and row[1] is None:
                lost += 1
                continue
            values = list(row)
            if values[1] is None:  # a large payload, kept in the queue's body table
                body = _body_of(src, tables["body"], values[0])
                if body is None:
                    lost += 1
                    continue
                values[1] = body
            status = columns.index("status") if "status" in columns else -1
            if status >= 0 and values[status] == "processing":
                values[status] = "pending"  # leases died with the source
            try:
                dst.execute(insert, values)
                copied += 1
            except sqlite3.Error:
                lost += 1
        if count is not None:
            count(copied)
        dst.execute("COMMIT")
    except BaseException:
        dst.execute("ROLLBACK")
        raise
    return copied, lost


def list_queues_at(target: str | os.PathLike[str], schema: str | None = None) -> list[str]:
    """Names of the queues in a database: a file path, ``sqlite:///`` or ``postgresql://``
    (in ``schema``, if given)."""
    kind, location = parse_target(target)
    if kind == "postgresql":
        from .backends.postgres import list_postgres_queues

        return list_postgres_queues(location, schema)
    if schema is not None:
        raise QueueError("schema applies to PostgreSQL only", ErrorKind.INVALID_INPUT)
    return list_queues(location)


# The status a copied message gets, by its status in the source: a leased message comes
# back pending (its consumer belongs to the old database), a delayed one stays delayed (its
# time is kept), a waiting group member keeps waiting.
_COPY_STATUS = {
    "pending": "pending",
    "delayed": "pending",
    "waiting": "waiting",
    "processing": "pending",
}


def copy_queues(
    source: str,
    target: str,
    queues: Iterable[str] | None = None,
    progress: Callable[[str, int, int], Any] | None = None,
    batch: int = 1000,
    *,
    resume: bool = False,
) -> dict[str, dict[str, int]]:
    """Copy queues between databases, by URL (SQLite to PostgreSQL and back).

    Pending, delayed and waiting messages, in-flight ones (as pending) and dead letters are
    copied with their ids, attempts and errors; the source is left as it is. Every queue is
    checked before anything is written: it must exist in the source, and its target queue
    must be empty, or already hold exactly the source's messages (a queue copied before,
    skipped), or, with ``resume``, part of them (a copy that stopped part-way: the rest is
    copied). Returns, per queue, the messages and dead letters the target holds from the
    source and how many of them were ``already`` there; raises ``QueueError`` if the
    target's counts do not match what was read::

        copy_queues("sqlite:///jobs.db", "postgresql://app@db/app", ["emails"])
    """
    from .queue import connect

    available = list_queues_at(source)
    names = [validate_queue_name(n) for n in queues] if queues is not None else available
    missing = [n for n in names if n not in available]
    if missing:
        there = ", ".join(available) or "none"
        raise QueueError(
            f"no queue {missing[0]!r} in the source (queues there: {there}); nothing was copied",
            ErrorKind.NOT_FOUND,
        )
    present = set(_queues_or_none(target))
    skip: dict[str, set[int]] = {}
    for name in names:  # every check first: nothing is written unless all pass
        skip[name] = _already_there(source, target, name, resume) if name in present else set()
    report: dict[str, dict[str, int]] = {}
    for name in names:
        src = connect(source, name)
        dst = connect(target, name)
        try:
            report[name] = _copy_one(src, dst, progress, batch, skip[name])
        finally:
            src.close()
            dst.close()
    return report


def _queues_or_none(target: str) -> list[str]:
    """The queues at ``target``; none when it is an SQLite file that does not exist yet."""
    try:
        return list_queues_at(target)
    except QueueError as exc:
        if exc.kind is ErrorKind.NOT_FOUND:
            return []
        raise


def _identities(queue: Any) -> dict[int, Any]:
    """Every message and dead letter of ``queue``: its id and enqueue time, which a copy
    keeps (a message enqueued in the target on its own has another time)."""
    found: dict[int, Any] = {}
    for state in ("all", "dead"):
        after = 0
        while page := queue.list_messages(state, limit=1000, after_id=after).unwrap():
            for entry in page:
                found[entry["id"]] = entry.get("enqueued_at") or entry.get("created_at")
            after = page[-1]["id"]
    return found


def _already_there(source: str, target: str, name: str, resume: bool) -> set[int]:
    """The ids a non-empty target queue already holds from the source, when copying
    into it is safe: all of them (copied before) or, with ``resume``, some of them.
    Raises ``QueueError`` saying what to do otherwise."""
    from .queue import connect

    with connect(target, name) as dst:
        held = _identities(dst).items()
    if not held:
        return set()
    with connect(source, name) as src:
        wanted = _identities(src).items()
    if held == wanted or (resume and held < wanted):
        return {message_id for message_id, _ in held}
    if held < wanted:
        raise QueueError(
            f"target queue {name!r} holds {len(held)} of the {len(wanted)} messages of the "
            "source: an earlier copy stopped part-way. Nothing was copied; copy again with "
            "resume (sqqueue copy --resume) to copy the rest",
            ErrorKind.INVALID_INPUT,
        )
    raise QueueError(
        f"target queue {name!r} is not empty: it holds {len(held - wanted)} message(s) that "
        "are not in the source. Nothing was copied; copy into an empty queue, or purge it "
        "first",
        ErrorKind.INVALID_INPUT,
    )


def _copy_one(
    src: Any,
    dst: Any,
    progress: Callable[[str, int, int], Any] | None,
    batch: int,
    skip: set[int],
) -> dict[str, int]:
    """Copy one queue's rows whose ids are not in ``skip`` (already in the target)."""
    name = src.name
    total = src.stats().unwrap()
    expected = total.depth + total.dead
    copied = {"messages": 0, "dead": 0, "already": 0}
    after = 0
    # One pass over every message, by id, each with its status (on the source's clock).
    while rows := src._backend.list_messages("all", batch, after):
        fresh = [(row, _COPY_STATUS[row.status]) for row in rows if row.id not in skip]
        if fresh:
            dst._backend.import_rows(fresh, [])
        copied["messages"] += len(rows)
        copied["already"] += len(rows) - len(fresh)
        after = rows[-1].id
        if progress is not None:
            progress(name, copied["messages"] + copied["dead"], expected)
    after = 0
    while letters := src._backend.list_messages("dead", batch, after):
        fresh_letters = [letter for letter in letters if letter.id not in skip]
        if fresh_letters:
            dst._backend.import_rows([], fresh_letters)
        copied["dead"] += len(letters)
        copied["already"] += len(letters) - len(fresh_letters)
        after = letters[-1].id
        if progress is not None:
            progress(name, copied["messages"] + copied["dead"], expected)
    after_copy = dst.stats().unwrap()
    if after_copy.depth != copied["messages"] or after_copy.dead != copied["dead"]:
        raise QueueError(
            f"copy of queue {name!r} does not add up: read {copied['messages']} messages and "
            f"{copied['dead']} dead letters, the target holds {after_copy.depth} and "
            f"{after_copy.dead}",
            ErrorKind.STORAGE,
        )
    dst.wake_waiters()
    return copied


def schema_sql(backend: str, queue: str) -> list[str]:
    """The DDL that creates ``queue`` on ``backend`` ("sqlite" or "postgresql"), without
    connecting anywhere: for teams that apply schema changes themselves."""
    name = validate_queue_name(queue)
    if backend == "sqlite":
        from .backends import sqlite_sql

        return sqlite_sql.schema_script(sqlite_sql.render(name))
    if backend in ("postgresql", "postgres"):
        from .backends import postgres_sql

        return postgres_sql.schema_script(postgres_sql.render(name))
    raise QueueError(
        f"unknown backend {backend!r}: use 'sqlite' or 'postgresql'", ErrorKind.INVALID_INPUT
    )
