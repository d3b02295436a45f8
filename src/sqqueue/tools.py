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
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .backends import sqlite_sql
from .backends.sqlite import SQLiteBackend
from .backends.sqlite_files import classify, driver_errors, not_a_database
from .catalog import list_queues, list_queues_at, read, read_only, registered
from .core.checks import config, seconds
from .exceptions import ErrorKind, QueueError
from .names import validate_queue_name, validate_schema_name
from .queue import connect
from .settings import load
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
    "schema_exists",
    "schema_sql",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The tables of a queue that copy and salvage move, in order, and each one's key.
_TABLES = tuple((table, key) for table, (_, key) in sqlite_sql.COPY_TABLES.items())


def legacy_queues(path: str | os.PathLike[str]) -> list[str]:
    """Queues in the file still in sqqueue 0.1.0's layout (not migrated yet)."""

    def look(conn: sqlite3.Connection) -> list[str]:
        names = {r[0] for r in conn.execute(sqlite_sql.TABLES)}
        registered: set[str] = set()
        if "sqqueue_queues" in names:
            registered = {r[0] for r in conn.execute(sqlite_sql.REGISTERED_NAMES)}
        found = []
        for name in sorted(names - registered):
            columns = {r[1] for r in conn.execute(sqlite_sql.TABLE_COLUMNS, (name,))}
            if columns >= sqlite_sql.LEGACY_COLUMNS:
                found.append(name)
        return found

    return read(path, look)


def migrate(path: str | os.PathLike[str]) -> list[str]:
    """Bring every queue of the file to the current layout now, each in one transaction:
    queues of an older sqqueue schema are upgraded, then sqqueue 0.1.0 queues migrated.

    Opening a queue for use does the same for that queue; this does all of them at once,
    e.g. before a deploy. Returns the names of the queues changed.
    """
    legacy = [_legacy_name(path, name) for name in legacy_queues(path)]
    done = []
    for name, version in read(path, registered):
        if version < sqlite_sql.SCHEMA_VERSION:
            SQLiteBackend(path, validate_queue_name(name)).close()
            done.append(name)
    for name in legacy:
        SQLiteBackend(path, name).close()
        done.append(name)
    return done


def _legacy_name(path: str | os.PathLike[str], name: str) -> str:
    """The name of a 0.1.0 queue, checked before anything is migrated: 0.1.0 took any
    name SQLite takes, and one sqqueue refuses must be renamed first."""
    try:
        return validate_queue_name(name)
    except ValueError as exc:
        raise ValueError(
            f"{exc}; sqqueue 0.1.0 made this queue in {os.fspath(path)!r} under a name "
            "sqqueue no longer takes: rename its tables, then migrate, e.g. "
            f'sqlite3 {os.fspath(path)} \'ALTER TABLE "{name}" RENAME TO new_name; '
            f'ALTER TABLE "{name}_dlq" RENAME TO new_name_dlq\' (nothing was migrated)'
        ) from None


def check(path: str | os.PathLike[str]) -> list[str]:
    """Run SQLite's integrity check on the file; return the problems (empty when healthy).

    Damage is a problem in the list; a file that is not an SQLite database, and anything
    else that keeps the check from running (permissions, a lock), raises ``QueueError``
    saying what it is.
    """

    def integrity(conn: sqlite3.Connection) -> list[str]:
        try:
            return _problems(conn.execute(sqlite_sql.INTEGRITY_CHECK).fetchall())
        except driver_errors() as exc:  # (SQLCipher's errors too)
            error = classify(exc, str(path))
            if error.kind is not ErrorKind.CORRUPT or not_a_database(exc):
                raise error from exc  # not damage: nothing to check, nor to salvage
            # SQLite stopped at damage it could not step over: check table by table,
            # for what it finds in each and where it stopped.
            return _table_by_table(conn, exc)

    try:
        problems = read(path, integrity)
    except QueueError as exc:
        if exc.kind is ErrorKind.CORRUPT:
            raise  # not an SQLite database: said as such
        raise QueueError(f"cannot check {str(path)!r}: {exc}", exc.kind) from exc
    return [] if problems == ["ok"] else problems


def _problems(rows: list[Any]) -> list[str]:
    """The problems in the rows of an integrity check: one a line (SQLite may put several
    in one row); ``["ok"]`` for none."""
    return [line for r in rows for line in str(r[0]).splitlines() if line.strip()]


def _table_by_table(conn: sqlite3.Connection, stopped: Exception) -> list[str]:
    """The integrity check of each table of the file, for a file whose whole check
    ``stopped`` at damage: the problems SQLite finds in each table, and the tables whose
    check stops too, with SQLite's reason."""
    found: list[str] = []
    with contextlib.suppress(*driver_errors()):  # (the list of tables may be damaged too)
        for (table,) in conn.execute(sqlite_sql.TABLES).fetchall():
            quoted = table.replace('"', '""')
            try:
                rows = conn.execute(sqlite_sql.TABLE_INTEGRITY_CHECK.format(table=quoted))
                problems = _problems(rows.fetchall())
            except driver_errors() as exc:
                problems = [f"{exc} (SQLite cannot check it to the end)"]
            found += [f"table {table!r}: {line}" for line in problems if line != "ok"]
    return found or [f"{stopped} (SQLite cannot run the integrity check to the end)"]


@dataclass
class SalvageReport:
    """What ``salvage`` copied, per queue, and what it could not read.

    Rows SQLite reports unreadable are counted in ``lost_rows``. Rows under a damaged
    interior page of a b-tree may be out of its reach without any error: ``missing``
    compares what each queue's counters count (its messages and dead letters) with
    what was copied, and ``damage`` is what SQLite's quick check finds wrong in the
    source. Only a ``complete`` report says every row was read.
    """

    copied: dict[str, int] = field(default_factory=dict)
    dead_copied: dict[str, int] = field(default_factory=dict)
    #: rows found but unreadable (and ids whose look-up failed), skipped
    lost_rows: int = 0
    #: a line for each problem met: unreadable rows, tables or queues
    errors: list[str] = field(default_factory=list)
    #: per queue: how many of the messages and dead letters its counters count are not in
    #: the copy (lost rows among them); at least that many are lost, as the counters of a
    #: damaged file may be short too
    missing: dict[str, int] = field(default_factory=dict)
    #: the queues whose counters could not be read: what they lost is not known
    uncounted: list[str] = field(default_factory=list)
    #: what SQLite's quick check finds wrong in the source file ([] when nothing)
    damage: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every row was read: nothing unreadable, nothing missing by the counters,
        the counters of every queue read, and a source SQLite finds sound."""
        return not (
            self.lost_rows
            or self.errors
            or any(self.missing.values())
            or self.uncounted
            or self.damage
        )


def _highest_id(conn: sqlite3.Connection, name: str, version: int) -> int:
    """The largest id a queue of a damaged file has handed out, as far as it can be read:
    from its tables, their indexes (which may be sound where a table is not), its
    counters and the sequence sqqueue 0.1.0 kept."""
    names = sqlite_sql.object_names(name, version)
    high = 0
    for query, params in (
        *((sqlite_sql.MAX_ID_OF.format(table=names[t]), ()) for t in ("q", "dlq", "done")),
        *((query, ()) for query in sqlite_sql.indexed_max_ids(name, version)),
        (sqlite_sql.COUNTER_VALUE, (f"{name}#high",)),
        (sqlite_sql.LEGACY_SEQUENCE, (name,)),
    ):
        with contextlib.suppress(*driver_errors()):
            row = conn.execute(query, params).fetchone()
            if row is not None and row[0] is not None:
                high = max(high, int(row[0]))
    return high


def _counters(conn: sqlite3.Connection, name: str) -> tuple[int, int, int, int] | None:
    """The counters a queue's message and dead-letter counts follow from: (#depth, #dead,
    #high, #base); None when one of them cannot be read. (Before schema 6, #depth was
    named #queued.)"""
    values: list[int] = []
    for counters in (("depth", "queued"), ("dead",), ("high",), ("base",)):
        value = None
        for counter in counters:
            try:
                row = conn.execute(sqlite_sql.COUNTER_VALUE, (f"{name}#{counter}",)).fetchone()
            except driver_errors():
                return None
            if row is not None:
                value = row[0]
                break
        if not isinstance(value, int):
            return None
        values.append(value)
    depth, dead, high, base = values
    return depth, dead, high, base


def _quick_check(conn: sqlite3.Connection) -> list[str]:
    """What SQLite's quick check finds wrong in the file ([] when nothing): where pages
    are out of a b-tree's reach, rows on them are missing without any read failing."""
    try:
        problems = _problems(conn.execute(sqlite_sql.QUICK_CHECK).fetchall())
    except driver_errors() as exc:
        return [f"{exc} (SQLite cannot check it to the end)"]
    return [] if problems == ["ok"] else problems


def _released(row: dict[str, Any]) -> dict[str, Any]:
    """A copied message as it arrives: one being processed comes back pending, without its
    lease (its consumer belongs to the old database); everything else as it was."""
    if row.get("status") != "processing":
        return row
    return {**row, "status": "pending", "lease_token": None, "lease_expires_at": None}


def salvage(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> SalvageReport:
    """Copy every readable message of every queue in ``source`` into a new file ``target``.

    Every column is kept (ids, priorities, attempts, errors, groups, expiry times, prior
    attempts), and so are dead letters, kept history and deduplication keys; messages
    that were being processed come back pending (their consumers are gone with the
    damaged file). The source is opened read-only and never changed.
    """
    target_path = Path(target)
    if target_path.exists():
        raise QueueError(
            f"salvage target {str(target_path)!r} already exists; give a new file name",
            ErrorKind.INVALID_INPUT,
        )
    report = SalvageReport()
    with read_only(source) as src:
        try:
            queues = registered(src)
        except driver_errors() as exc:
            if not_a_database(exc):
                raise QueueError(
                    f"{classify(exc, str(source))}; nothing to salvage", ErrorKind.CORRUPT
                ) from exc
            raise QueueError(
                f"cannot read the queue list of {str(source)!r}: {exc}; nothing to salvage",
                ErrorKind.CORRUPT,
            ) from exc
        highest = {name: _highest_id(src, name, version) for name, version in queues}
        counters = {name: _counters(src, name) for name, _version in queues}
        report.damage = _quick_check(src)
    for name, _version in queues:
        try:
            reader = SQLiteBackend(
                source, validate_queue_name(name), read_only=True, older_layout=True
            )
        except QueueError as exc:
            report.errors.append(f"{name}: cannot be read, skipped ({exc})")
            continue
        writer = SQLiteBackend(target_path, name)
        try:
            with writer.raw_connection() as dst:
                # Ids stay taken in the new file, so none is ever handed out again.
                dst.execute(sqlite_sql.BEGIN_IMMEDIATE)
                writer.reserve_ids(dst, highest[name])
                dst.execute(sqlite_sql.COMMIT)
            counts = {
                table: _salvage_table(reader, writer, table, key, highest[name], report)
                for table, key in _TABLES
            }
        finally:
            reader.close()
            writer.close()
        report.copied[name] = counts["messages"][0]
        report.dead_copied[name] = counts["dead"][0]
        counted = counters[name]
        if counted is None:
            report.uncounted.append(name)
            continue
        depth, dead, high, base = counted
        # As the queue counts them (see sqlite_sql.COUNTERS), from the largest id there.
        messages = depth + max(counts["messages"][1], highest[name], high) - base
        report.missing[name] = max(messages - report.copied[name], 0) + max(
            dead - report.dead_copied[name], 0
        )
    return report


def _salvage_table(
    reader: SQLiteBackend,
    writer: SQLiteBackend,
    table: str,
    key: str,
    high: int,
    report: SalvageReport,
) -> tuple[int, int]:
    """Copy one table of one queue; on damage, read it row by row and skip what cannot be
    read (the rows skipped are counted and reported). Returns the rows copied and the
    largest id read (0 for the dedup keys)."""
    rows: list[dict[str, Any]] = []
    try:
        _all_rows(reader, table, key, rows, in_order=True)
    except QueueError:
        if table == "dedup":
            report.errors.append(f"{reader.name}: deduplication keys unreadable, skipped")
            return 0, 0
        logger.warning("salvage: %s of %r is damaged; reading it row by row", table, reader.name)
        # (Up to the largest id the scan read too: the file's own may be short of it.)
        high = max([high, *(int(row[key]) for row in rows)])
        report.errors.append(
            f"{reader.name}: the {table} table is damaged; read it by id, up to id {high}"
        )
        rows = []
        unreadable = 0
        for ident in range(1, high + 1):
            try:
                found = reader.export_row(table, ident)
            except QueueError:
                unreadable += 1
                continue
            if found is not None:
                rows.append(found)
        _lost(report, reader.name, table, unreadable)
    top = 0 if table == "dedup" else max((int(row[key]) for row in rows), default=0)
    readable = [r for r in rows if table == "dedup" or r.get("payload") is not None]
    _lost(report, reader.name, table, len(rows) - len(readable))  # bodies that are gone
    if table == "messages":
        readable = [_released(r) for r in readable]
    try:
        writer.import_rows(table, readable)
        return len(readable), top
    except QueueError:
        copied = 0
        refused = 0
        for row in readable:  # find the rows the target refuses, one by one
            try:
                writer.import_rows(table, [row])
                copied += 1
            except QueueError:
                refused += 1
        _lost(report, writer.name, table, refused)
        return copied, top


def _all_rows(
    reader: SQLiteBackend,
    table: str,
    key: str,
    rows: list[dict[str, Any]] | None = None,
    *,
    in_order: bool = False,
) -> list[dict[str, Any]]:
    """Every row of one table, in the order of its key (added to ``rows``, if given);
    QueueError at damage, with the rows read until then in ``rows``. ``in_order`` (an
    SQLite file, whose keys sort as Python sorts them): keys that go back are damage
    too, as a damaged b-tree can lead a scan back to rows it read, for ever."""
    rows = [] if rows is None else rows
    after: Any = "" if key == "key" else 0
    while page := reader.export_rows(table, after, 1000):
        for row in page:
            if in_order and (type(row[key]) is not type(after) or not row[key] > after):
                raise QueueError(
                    f"the {table} of queue {reader.name!r} come out of order ({row[key]!r} "
                    f"after {after!r}): the file is damaged",
                    ErrorKind.CORRUPT,
                )
            rows.append(row)
            after = row[key]
    return rows


def _lost(report: SalvageReport, name: str, table: str, count: int) -> None:
    if count:
        report.lost_rows += count
        report.errors.append(f"{name}: {count} unreadable row(s) of {table} skipped")


def copy_queues(
    source: str,
    target: str,
    queues: Iterable[str] | None = None,
    progress: Callable[[str, int, int], Any] | None = None,
    batch: int = 1000,
    *,
    resume: bool = False,
    source_schema: str | None = None,
    target_schema: str | None = None,
) -> dict[str, dict[str, int]]:
    """Copy queues between databases, by URL (SQLite to PostgreSQL and back).

    Every row of every table of the queue is copied with every column: messages (one
    being processed comes back pending, its consumer belongs to the source), dead
    letters, kept history and deduplication keys. The source is opened read-only and
    left as it is. Every queue is checked before anything is written: it must exist in
    the source, and its target queue must be empty, or already hold exactly the source's
    messages (a queue copied before, skipped), or, with ``resume``, part of them (a copy
    that stopped part-way: the rest is copied). Returns, per queue, the messages, dead
    letters, kept completed messages and dedup keys the target holds from the source, and
    how many of its messages and dead letters were ``already`` there; raises
    ``QueueError`` if the target's counts do not match what was read. ``source_schema``
    and ``target_schema``: the PostgreSQL schema the queues live in at either end::

        copy_queues("sqlite:///jobs.db", "postgresql://app@db/app", ["emails"])
    """
    src_at, dst_at = _in_schema(source_schema), _in_schema(target_schema)
    available = list_queues_at(source, schema=source_schema)
    names = [validate_queue_name(n) for n in queues] if queues is not None else available
    missing = [n for n in names if n not in available]
    if missing:
        there = ", ".join(available) or "none"
        raise QueueError(
            f"no queue {missing[0]!r} in the source (queues there: {there}); nothing was copied",
            ErrorKind.NOT_FOUND,
        )
    present = set(_queues_or_none(target, target_schema))
    skip: dict[str, set[int]] = {}
    for name in names:  # every check first: nothing is written unless all pass
        skip[name] = set()
        if name in present:
            with (
                connect(target, name, **dst_at) as dst,
                connect(source, name, read_only=True, **src_at) as src,
            ):
                skip[name] = _already_there(src, dst, resume)
    report: dict[str, dict[str, int]] = {}
    for name in names:
        src = connect(source, name, read_only=True, **src_at)
        try:
            dst = connect(target, name, **dst_at)
        except BaseException:
            src.close()
            raise
        try:
            report[name] = _copy_one(src, dst, progress, batch, skip[name])
        finally:
            src.close()
            dst.close()
    return report


def schema_exists(url: str, schema: str, *, lock_timeout: float | None = None) -> bool:
    """Whether the PostgreSQL database at ``url`` has a schema named ``schema``.

    ``list_queues`` lists no queue in a schema that does not exist, as in an empty one;
    this tells the two apart (the ``sqqueue`` commands that only look refuse a schema
    that is not there rather than create it). Reads only; ``lock_timeout`` as for
    ``list_queues`` (default: the setting). Raises ``QueueError`` when the server cannot
    be asked, ``ValueError`` for a target that is not a ``postgresql://`` URL or a name
    that is no schema name.
    """
    kind, location = parse_target(url)
    if kind != "postgresql":
        raise ValueError(
            f"schema_exists takes a postgresql:// URL, not {url!r}: a file has no schemas"
        )
    validate_schema_name(schema)
    if lock_timeout is None:
        lock_timeout = load({}, "postgresql").lock_timeout
    timeout = config(
        lambda: seconds(lock_timeout, "lock_timeout", minimum=0, maximum=86400, strict=True)
    )
    from .backends.postgres import postgres_schema_exists

    return postgres_schema_exists(location, schema, timeout)


def _in_schema(schema: str | None) -> dict[str, str]:
    """The settings that put a PostgreSQL queue in ``schema`` (none: the default one)."""
    return {"schema": schema} if schema is not None else {}


def _queues_or_none(target: str, schema: str | None) -> list[str]:
    """The queues at ``target``; none when it is an SQLite file that does not exist yet."""
    try:
        return list_queues_at(target, schema=schema)
    except QueueError as exc:
        if exc.kind is ErrorKind.NOT_FOUND:
            return []
        raise


def _identities(queue: Any) -> dict[int, Any]:
    """Every message, dead letter and kept completed message of ``queue``: its id and
    enqueue time, which a copy keeps (a message enqueued in the target on its own has
    another time)."""
    found: dict[int, Any] = {}
    for state in ("all", "dead", "done"):
        after = 0
        while page := queue.list_messages(state, limit=1000, after_id=after).unwrap():
            for entry in page:
                found[entry["id"]] = entry.get("enqueued_at") or entry.get("created_at")
            after = page[-1]["id"]
    return found


def _already_there(src: Any, dst: Any, resume: bool) -> set[int]:
    """The ids a non-empty target queue already holds from the source queue, when
    copying into it is safe: all of them (copied before) or, with ``resume``, some of
    them. Raises ``QueueError`` saying what to do otherwise."""
    name = dst.name
    held = _identities(dst).items()
    if not held:
        return set()
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
    """Copy one queue's rows, every column, but those already in the target: messages,
    dead letters and kept history with ids in ``skip``, dedup keys the target has."""
    name = src.name
    # Rows as stored (stats count a message past its time to live as dead or gone).
    total = src.parts.backend.status_counts()
    expected = sum(total.values())
    keys = {row["key"] for row in _all_rows(dst.parts.backend, "dedup", "key")} if skip else set()
    copied = dict.fromkeys(("messages", "dead", "done", "dedup", "already"), 0)
    for table, key in _TABLES:
        after: Any = "" if key == "key" else 0
        while rows := src.parts.backend.export_rows(table, after, batch):
            after = rows[-1][key]
            taken = keys if table == "dedup" else skip
            fresh = [row for row in rows if row[key] not in taken]
            if table == "messages":
                fresh = [_released(row) for row in fresh]
            dst.parts.backend.import_rows(table, fresh)
            copied[table] += len(rows)
            if table in ("messages", "dead"):
                copied["already"] += len(rows) - len(fresh)
                if progress is not None:
                    progress(name, copied["messages"] + copied["dead"], expected)
    after_copy = dst.parts.backend.status_counts()
    held = after_copy["pending"] + after_copy["processing"] + after_copy["waiting"]
    if held != copied["messages"] or after_copy["dead"] != copied["dead"]:
        raise QueueError(
            f"copy of queue {name!r} does not add up: read {copied['messages']} messages and "
            f"{copied['dead']} dead letters, the target holds {held} and {after_copy['dead']}",
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


def grant_sql(schema: str, queues: Sequence[str], roles: dict[str, str]) -> list[str]:
    """The PostgreSQL GRANT statements for ``roles`` (``{"producer": ROLE, "consumer":
    ROLE, "admin": ROLE}``, any of them) on ``queues`` in ``schema``, without connecting
    anywhere; ``ValueError`` for a bad name."""
    from .backends import postgres_sql

    names = [validate_queue_name(q) for q in queues]
    return postgres_sql.grant_statements(validate_schema_name(schema), names, roles)
