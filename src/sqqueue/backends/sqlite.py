"""SQLite storage, in WAL mode. The tables and every statement are in ``sqlite_sql.py``.

Times are Unix seconds (REAL); ``datetime(visible_at, 'unixepoch')`` shows them in the
``sqlite3`` shell. Every write is one ``BEGIN IMMEDIATE`` transaction, so a writer never
has to upgrade a read lock (which is what makes ``database is locked`` escape busy
handlers), and every error path rolls back before returning.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from .. import encryption
from ..encryption import EncryptionKey
from ..exceptions import ErrorKind
from ..names import validate_queue_name
from ..wakeup import Watcher, signal_for
from . import sqlite_files as files
from . import sqlite_sql as sql
from .base import (
    LATEST_TIME,
    NewMessage,
    Policy,
    StorageError,
    StoredDeadLetter,
    StoredDone,
    StoredMessage,
)
from .common import Refused, SQLBackend

__all__ = ["SCHEMA_VERSION", "SQLiteBackend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", StoredMessage, StoredDeadLetter, StoredDone)

#: payloads from this size on are stored apart from their message row
LARGE_PAYLOAD = 128 * 1024

SCHEMA_VERSION = sql.SCHEMA_VERSION  # defined with the schema, in sqlite_sql
# A clock that reads more than this much earlier than it did has been stepped back.
_STEP_BACK = 1.0
_LONGEST_LEASE = 7 * 86400.0  # the queue's longest visibility timeout
# Batches acknowledged in one statement, at most this many: one parameter per message,
# within the 999 parameters that SQLite builds before 3.32 allowed (some still do).
_MAX_SET = 500
_MAX_EXTEND_SET = 400  # likewise for extend_batch, at two parameters per message
# Maintenance leaves up to this many free pages (or 1/16 of the file) for reuse.
_KEEP_FREE_PAGES = 32
# Idle connections a queue object keeps for its next calls; more are closed as they are
# given back. Busy ones are one per call in flight.
_MAX_IDLE = 16
# How often calls look whether the path still names the file the queue opened: a stat a
# second, not one per call (about 3% of an enqueue).
_FILE_CHECK_INTERVAL = 1.0
# A WAL that cannot be checkpointed is warned about at most this often (seconds).
_WAL_WARN_EVERY = 300.0


def legacy_time(text: object) -> float | None:
    """The Unix time of a time sqqueue 0.1.0 stored ('YYYY-MM-DD HH:MM:SS[.ffffff]', UTC;
    an offset or a Z is read as written), to the microsecond; None for anything else."""
    if not isinstance(text, str):
        return None
    value = text.strip()
    if value[-1:] in ("Z", "z"):  # (fromisoformat reads a Z only from Python 3.11 on)
        value = value[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


class SQLiteBackend(SQLBackend):
    """One queue in one SQLite file. Safe to share between threads; survives ``fork``."""

    one_writer = True

    # The file opened (device, inode; None until opened, and for a private queue), and when
    # calls look next whether the path still names it (``time.monotonic()``); and whether
    # sqlite_files.use_driver counted this object (until close()).
    _file_id: tuple[int, int] | None
    _next_file_check: float
    _driver_used: bool

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        name: str,
        *,
        journal_size_limit: int = 64 * 1024 * 1024,
        clock: Callable[[], float] | None = None,
        policy: Policy | None = None,
        read_only: bool = False,
        older_layout: bool = False,
        encryption_key: str | bytes | EncryptionKey | None = None,
    ) -> None:
        """``encryption_key``: the file is encrypted with SQLCipher (see
        :mod:`sqqueue.encryption`; else the key in the environment, if any).
        ``read_only``: create, migrate and write nothing (see ``open_read_only``).
        ``older_layout`` (with ``read_only``): open a queue of an older sqqueue's layout too,
        by the names of its version, for ``export_rows`` only (the other reads expect the
        current columns); salvage reads damaged files of any version this way."""
        files.check_sqlite_version()
        self.name = validate_queue_name(name)
        self.read_only = bool(read_only)
        self._older_layout = bool(older_layout)
        self._key = files.resolve_key(encryption_key)
        self.path, memory = files.prepare_path(db_path, create=not self.read_only)
        # A private ':memory:' queue lives in SQLite's memdb, under a name of its own.
        self._uri = f"file:/sqqueue-{uuid.uuid4().hex}?vfs=memdb" if memory else None
        self._check_key()
        self.wakeup_key = f"sqlite:{self._uri or os.path.realpath(self.path)}:{self.name}"
        self.policy = policy or Policy()
        if self.policy.synchronous not in ("normal", "full"):
            raise ValueError(
                f"synchronous must be 'normal' or 'full', got {self.policy.synchronous!r}"
            )
        self._lock_timeout = self.policy.lock_timeout
        self._journal_size_limit = journal_size_limit
        self._clock = clock or time.time
        # Connections are pooled, not tied to threads: a call takes one, gives it back when
        # it ends. So connections follow the calls in flight, whatever the thread churn,
        # and close() never closes a connection another thread is using.
        self._idle: list[sqlite3.Connection] = []  # last in, first out: the warmest on top
        self._conns: set[sqlite3.Connection] = set()  # every trusted one, idle or busy
        self._pool_lock = threading.Lock()
        # The process that opened these connections, by its count of forks: a child process
        # after fork must not use them (os.getpid() is a system call, on every call).
        self._forks = files.forks
        # The latest time read from the clock, to notice it being stepped back; and whether
        # the next fold should look for leases taken before such a step (every new queue
        # object looks once: the step may have happened while no process was running).
        self._latest = -math.inf
        self._look_for_future_leases = True
        self._closed = False
        # (Every attribute set here, in one order, and at most 29 of them: calls read them
        # on the hot path, where attributes first set later, or a 30th, would slow every
        # read on the object: CPython then keeps them in a dict of their own.)
        self._file_id, self._next_file_check, self._driver_used = None, 0.0, False
        self._q = sql.render(self.name)
        self._sql = self._q.sql
        self._anchor: sqlite3.Connection | None = None
        self._watcher: Watcher | None = None
        self._watch_token = object()  # this object's registration with its watcher
        # Read-only connections opened as immutable, and the file state they depend on.
        self._snapshots: dict[sqlite3.Connection, files.FileState] = {}
        self._wal_warned_at = -math.inf
        self._column_cache: dict[str, list[str]] = {}
        try:
            self._use_driver()
            if self._memory:
                # A memdb database lives while one connection is open.
                self._anchor = self._open()
            self._init_schema(self.policy.default_max_attempts)
            # The file opened: should the path name another one later (deleted, moved
            # away, replaced), calls say so instead of going on with a file nobody sees.
            self._file_id = None if self._memory else files.file_identity(self.path)
        except files.driver_errors() as exc:
            self.close()
            err = self._open_error(exc)
            raise StorageError(f"cannot open queue {self.name!r}: {err}", err.kind) from exc
        except StorageError as exc:
            self.close()
            raise StorageError(f"cannot open queue {self.name!r}: {exc}", exc.kind) from exc
        except BaseException:
            self.close()
            raise

    @property
    def _memory(self) -> bool:
        """Whether this is a private ':memory:' queue rather than a file."""
        return self._uri is not None

    def _check_key(self) -> None:
        """Refuse a private queue opened read-only or with a key, and a key for a file
        that is plain."""
        if self._memory and self.read_only:
            raise ValueError("a private ':memory:' queue cannot be opened read-only")
        if self._key is None:
            return
        if self._memory:
            raise ValueError("a private ':memory:' queue has no file to encrypt: drop the key")
        try:
            files.refuse_mismatch(self.path, self._key)
        except StorageError as exc:
            raise StorageError(f"cannot open queue {self.name!r}: {exc}", exc.kind) from None

    def _use_driver(self) -> None:
        """Refuse a writable open with the other driver than this process has the file
        open with (see ``sqlite_files.use_driver``); counted until ``close``."""
        if self._memory or self.read_only:
            return
        files.use_driver(self.path, self._key is not None)
        self._driver_used = True

    def _open_error(self, exc: sqlite3.Error) -> StorageError:
        """What went wrong opening the queue: with a key, "not a database" is a wrong key."""
        if self._key is not None and files.not_a_database(exc):
            return StorageError(encryption.wrong_key(self.path), ErrorKind.INVALID_INPUT)
        return files.classify(exc, self.path)

    # -- connections -------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            conn, snapshot = files.open_read_only(self.path, self._lock_timeout, self._key)
            if snapshot is not None:
                self._snapshots[conn] = snapshot
            return conn
        conn = files.connect(
            self._key,
            self._uri or self.path,
            timeout=self._lock_timeout,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # calls on any thread share the pool
            uri=self._uri is not None,
            cached_statements=128,
        )
        try:
            conn.execute(sql.BUSY_TIMEOUT.format(ms=int(self._lock_timeout * 1000)))
            conn.execute(sql.SYNCHRONOUS.format(mode=self.policy.synchronous.upper()))
            conn.execute(sql.JOURNAL_SIZE_LIMIT.format(size=int(self._journal_size_limit)))
        except BaseException:
            conn.close()
            raise
        return conn

    def _closed_error(self) -> StorageError:
        return StorageError(
            f"queue {self.name!r} is closed; create a new queue object", ErrorKind.CLOSED
        )

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    # The pool's hot path takes no lock: list.pop and list.append are atomic, so an idle
    # connection goes to exactly one call, and a connection is either in _idle (nobody's)
    # or held by that one call. close() only closes what it pops from _idle; a call that
    # finds the queue closed after taking or giving back a connection closes it itself.

    def _checkout(self) -> sqlite3.Connection:
        """A connection for one call, all to itself until ``_checkin``."""
        if self._closed or self._forks != files.forks:
            return self._checkout_new()  # raises CLOSED, or sets a parent's aside first
        try:
            conn = self._idle.pop()
        except IndexError:
            return self._checkout_new()
        if self._closed:  # closed meanwhile, and close() could not see this one
            self._checkin(conn)
            raise self._closed_error()
        return conn

    def _checkout_new(self) -> sqlite3.Connection:
        with self._pool_lock:
            if self._closed:
                raise self._closed_error()
            if self._forks != files.forks:
                self._leave_inherited()
        conn = self._open()
        with self._pool_lock:
            if not self._closed:
                self._conns.add(conn)
                return conn
        conn.close()
        raise self._closed_error()

    def _checkin(self, conn: sqlite3.Connection) -> None:
        """Give a connection back: kept for the next call, or closed if the queue was closed
        meanwhile (or enough are idle already)."""
        if conn.in_transaction:
            # Left open by an interrupt (KeyboardInterrupt) between a statement and the
            # rollback meant for it: pooled so, the next call's writes would never commit
            # and its Ok would lie, and the write lock would stay held.
            self._rollback(conn)
        if not self._closed and len(self._idle) < _MAX_IDLE and conn in self._conns:
            self._idle.append(conn)
            if self._closed:  # closed meanwhile: close() may have emptied _idle before
                self._close_idle()
            return
        with self._pool_lock:
            if conn not in self._conns and any(conn is p for p in files.parked_after_fork):
                return  # inherited through fork (used across it): not ours to close
            self._conns.discard(conn)
        self._snapshots.pop(conn, None)
        with contextlib.suppress(*files.driver_errors()):
            conn.close()

    def _close_idle(self) -> None:
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return
            with self._pool_lock:
                self._conns.discard(conn)
            with contextlib.suppress(*files.driver_errors()):
                conn.close()

    def _leave_inherited(self) -> None:
        """In a child process after fork (pool lock held): set the parent's connections
        aside, untouched, and start afresh."""
        files.parked_after_fork.extend(self._conns)
        if self._anchor is not None:
            files.parked_after_fork.append(self._anchor)
        self._conns, self._idle, self._anchor = set(), [], None
        self._watcher = None  # the parent's watcher thread did not come along
        self._forks = files.forks

    @contextlib.contextmanager
    def _borrowed(self) -> Iterator[sqlite3.Connection]:
        conn = self._checkout()
        try:
            yield conn
        finally:
            self._checkin(conn)

    def _discard(self, conn: sqlite3.Connection) -> None:
        """Stop trusting a connection in use: it is closed when its call gives it back."""
        with self._pool_lock:
            self._conns.discard(conn)

    def close(self) -> None:
        """Close idle connections now, busy ones when their calls end; later calls get
        ``Err(CLOSED)``. Idempotent, and safe while other threads are inside calls."""
        with self._pool_lock:
            self._closed = True
            if self._forks != files.forks:
                self._leave_inherited()
            anchor, self._anchor = self._anchor, None
            watcher, self._watcher = self._watcher, None
            used, self._driver_used = self._driver_used, False
        if used:
            files.release_driver(self.path, self._key is not None)
        self._close_idle()
        self._snapshots.clear()
        if watcher is not None:
            watcher.unregister(self._watch_token)
        if anchor is not None:
            with contextlib.suppress(*files.driver_errors()):
                anchor.close()

    # -- transactions --------------------------------------------------------------------

    def _backoff(self, attempt: int, deadline: float) -> bool:
        """Sleep before a retry; False when the deadline has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        # (2 ** attempt as a float would overflow after a thousand tries: capped first.)
        time.sleep(min(remaining, random.uniform(0, min(0.001 * 2 ** min(attempt, 7), 0.1))))
        return True

    def _wait_at_most(self, conn: sqlite3.Connection, seconds: float) -> None:
        """Set how long ``conn``'s statements wait for a lock (SQLite's busy timeout)."""
        with contextlib.suppress(*files.driver_errors()):  # (closed: nothing to set)
            conn.execute(sql.BUSY_TIMEOUT.format(ms=max(int(seconds * 1000), 0)))

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            return
        try:
            conn.execute(sql.ROLLBACK)
        except files.driver_errors():
            # A connection that cannot roll back is not trusted again.
            logger.warning("rollback failed on %s; discarding the connection", self.path)
            self._discard(conn)

    def _locked_error(self, waited: float) -> StorageError:
        return StorageError(
            f"database {self.path!r} stayed locked for {waited:.1f} s (another connection "
            f"held a write transaction); retry later or raise lock_timeout "
            f"(now {self._lock_timeout:g} s)",
            ErrorKind.LOCKED,
        )

    def _run(
        self,
        fn: Callable[[sqlite3.Connection], T],
        write: bool,
    ) -> T:
        """Run ``fn(conn)`` in one transaction, retrying on lock contention until the
        deadline."""
        return self._run_since(None, fn, write)

    def _run_since(
        self,
        started: float | None,
        fn: Callable[[sqlite3.Connection], T],
        write: bool,
    ) -> T:
        """``_run`` for a call that began at ``started`` (``time.monotonic()``; None: now):
        the lock timeout counts from then, the waits of every attempt together."""
        start = time.monotonic() if started is None else started
        if start >= self._next_file_check and not self._closed:  # (closed: CLOSED says it)
            self._check_file(start)
        if self.read_only:
            return self._run_read_only(fn, write)
        deadline = start + self._lock_timeout
        attempt = 0
        lenient = False
        while True:
            conn = self._checkout()
            if lenient:
                conn.text_factory = files.lenient_text
            if attempt:  # a retry waits for the lock only as long as the call has left
                self._wait_at_most(conn, deadline - time.monotonic())
            try:
                try:
                    # (BEGIN inside: an interrupt landing as it returns rolls back too.)
                    if write:
                        conn.execute(sql.BEGIN_IMMEDIATE)
                    result = fn(conn)
                    if write:
                        conn.execute(sql.COMMIT)
                    return result
                except BaseException:
                    self._rollback(conn)
                    raise
            except files.driver_errors() as exc:
                if files.undecodable_text(exc) and not lenient:
                    # A text column holds bytes that are not UTF-8 (a row edited by hand):
                    # run the call again reading such text leniently, so the row can be
                    # listed or dead-lettered instead of failing every call that reads it.
                    lenient = True
                    continue
                err = files.classify(exc, self.path)
                if err.kind is not ErrorKind.LOCKED:
                    raise err from exc
                attempt += 1
                if not self._backoff(attempt, deadline):
                    raise self._locked_error(time.monotonic() - start) from exc
            finally:
                if lenient:
                    conn.text_factory = str
                if attempt:
                    self._wait_at_most(conn, self._lock_timeout)
                self._checkin(conn)

    def _check_file(self, now: float) -> None:
        """Raise STORAGE if the path no longer names the file this queue opened: what it
        wrote there would be lost with that file, and what others write to the new one
        it would never see. Looked at once a second; at every call once it happened."""
        if self._file_id is None:
            return
        try:
            current = files.file_identity(self.path)
        except OSError:
            current = self._file_id  # (cannot look, a directory's permissions: the call tells)
        if current == self._file_id:
            self._next_file_check = now + _FILE_CHECK_INTERVAL
            return
        self._next_file_check = 0.0
        what = "deleted or moved away" if current is None else "replaced by another file"
        raise StorageError(
            f"database file {self.path!r} was {what} while queue {self.name!r} had it open; "
            "open the queue again (a new queue object) to use the file there now",
            ErrorKind.STORAGE,
        )

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._run(fn, write=True)

    def _refuse_writes(self) -> None:
        """Raise READ_ONLY if this queue object was opened read-only."""
        if self.read_only:
            raise StorageError(
                f"queue {self.name!r} in {self.path!r} was opened read-only (read_only=True), "
                "so it changes nothing; open it without read_only to change it",
                ErrorKind.READ_ONLY,
            )

    def _run_read_only(
        self,
        fn: Callable[[sqlite3.Connection], T],
        write: bool,
    ) -> T:
        """``_run`` for a read-only queue: writes are refused; a read through an immutable
        connection (see :func:`open_read_only`) counts only if the files did not change
        meanwhile, else it runs again on a connection that goes through the -shm."""
        if write:
            self._refuse_writes()
        for _ in range(100):
            conn = self._checkout()
            try:
                snapshot = self._snapshots.get(conn)
                if snapshot is not None and files.file_state(self.path) != snapshot:
                    self._forget(conn)  # a writer came: read through its -shm from now on
                    continue
                try:
                    result = fn(conn)
                except BaseException:
                    self._rollback(conn)
                    raise
                if snapshot is None or files.file_state(self.path) == snapshot:
                    return result
                self._forget(conn)
            except files.driver_errors() as exc:
                raise files.classify(exc, self.path) from exc
            except OSError as exc:
                raise StorageError(
                    f"cannot read {self.path!r}: {exc.strerror}", ErrorKind.STORAGE
                ) from exc
            finally:
                self._checkin(conn)
        raise StorageError(
            f"could not read {self.path!r}: it kept changing while it was read; retry",
            ErrorKind.LOCKED,
        )

    def _forget(self, conn: sqlite3.Connection) -> None:
        """Drop an immutable connection whose file changed (closed when checked in)."""
        self._snapshots.pop(conn, None)
        self._discard(conn)

    def _read_tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read of several statements, from one snapshot."""

        def run(conn: sqlite3.Connection) -> T:
            conn.execute(sql.BEGIN)
            try:
                return fn(conn)
            finally:
                conn.execute(sql.COMMIT)

        return self._read(run)

    def _with_bodies(self, conn: sqlite3.Connection, rows: list[R]) -> list[R]:
        """Fill in the payloads kept in the body table (large ones)."""
        if all(row.data is not None for row in rows):
            return rows
        out = []
        for row in rows:
            filled = row
            if row.data is None:
                found = conn.execute(self._sql["body_get"], {"id": row.id}).fetchone()
                if found is not None:
                    filled = row._replace(data=_payload(found[0], found[1]))
            out.append(filled)
        return out

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._run(fn, write=False)

    # -- schema ----------------------------------------------------------------------------

    def _init_schema(self, default_max_attempts: int) -> None:
        if self.read_only:
            self._look_up_schema()
            return
        if not files.writable(self.path):
            # Said now, not at the first write: open it read_only=True to read it. Said
            # before SQLite opens the file, which would leave a -wal and a -shm beside it.
            problem = files.access_problem(self.path) or "check the file's permissions"
            raise StorageError(
                f"cannot write to {self.path!r}: it is read-only for this process; "
                f"{problem} (or open it with read_only=True to read it)",
                ErrorKind.READ_ONLY,
            )
        if not self._memory:
            # auto_vacuum only takes effect before the first table exists: new files get
            # incremental vacuum, so maintenance can return free pages in small steps.
            # It is a setting of the connection that creates the tables: setup below
            # gets this same connection back (the pool is last in, first out, and no
            # other thread has this object yet). Setting it takes the write lock, so it
            # is set on a file without tables only.
            with self._borrowed() as conn:
                if conn.execute(sql.READ_SCHEMA).fetchone()[0] == 0:
                    conn.execute(sql.AUTO_VACUUM_INCREMENTAL)
                mode = conn.execute(sql.JOURNAL_MODE_WAL).fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("%s: journal_mode is %s, not WAL", self.path, mode)
        if self._read(self._is_current):
            return  # the usual case: opened without the write lock, nobody kept waiting

        def setup(conn: sqlite3.Connection) -> None:
            for ddl in sql.REGISTRY_DDL:
                conn.execute(ddl)
            row = conn.execute(sql.SCHEMA_VERSION_OF, (self.name,)).fetchone()
            version = self._known(row, SCHEMA_VERSION)
            if version is not None:
                self._upgrade(conn, version)
                return
            self._refuse_conflicts(conn)
            now = float(self._clock())
            columns = self._table_columns(conn, self.name)
            # Registered first so the count triggers find the row; counted once at the end
            # because migrated rows were inserted before the triggers existed.
            conn.execute(
                sql.REGISTER_QUEUE,
                (self.name, SCHEMA_VERSION, now),
            )
            conn.execute(self._sql["make_counters"])
            if not columns:
                for ddl in self._q.ddl:
                    conn.execute(ddl)
            elif _is_legacy(columns):
                self._migrate_legacy(conn, now, default_max_attempts)
            else:
                raise StorageError(
                    f"table {self.name!r} in {self.path!r} exists but is not a sqqueue queue; "
                    "choose another table_name",
                    ErrorKind.INVALID_INPUT,
                )
            conn.execute(self._sql["recount"])
            conn.execute(self._sql["seed_totals"])

        self._write(setup)

    def _is_current(self, conn: sqlite3.Connection) -> bool:
        """Whether the queue exists in this version's layout: nothing to create or
        upgrade (a newer sqqueue's layout is refused, as by the setup)."""
        if conn.execute(sql.HAS_REGISTRY).fetchone() is None:
            return False
        row = conn.execute(sql.SCHEMA_VERSION_OF, (self.name,)).fetchone()
        return self._known(row, SCHEMA_VERSION) == SCHEMA_VERSION

    def _upgrade(self, conn: sqlite3.Connection, version: int) -> None:
        """Bring a queue of an older schema version up to date, step by step, in the
        caller's transaction. A step whose work DDL applied by hand may have done already
        (that DDL registered version 1) runs only if it is missing."""
        if version == SCHEMA_VERSION:
            return
        steps: list[str] = []
        if version < 2:
            steps += self._q.upgrades[1]
        done = sql.object_names(self.name, version)["done"]
        if version < 3 and "result" not in self._table_columns(conn, done):
            steps += self._q.upgrades[2]
        if version < 4:
            steps += self._q.upgrades[3]
        if version < 5:
            steps += self._q.upgrades[4]
        if version < 6:
            steps += self._q.upgrades[5]
        if version < 7:
            steps += self._q.upgrades[6]
        self._apply_upgrade(conn, steps, sql.SET_SCHEMA_VERSION, version, SCHEMA_VERSION)

    def _look_up_schema(self) -> None:
        """For a read-only queue: find the queue, change nothing. A queue of an older
        layout (an older sqqueue's, or 0.1.0's) is refused, as bringing it up to date
        writes (unless ``older_layout``: then it is read by the names of its version)."""

        def look(conn: sqlite3.Connection) -> int:
            registry = conn.execute(sql.HAS_REGISTRY).fetchone()
            row = None
            if registry is not None:
                row = conn.execute(sql.SCHEMA_VERSION_OF, (self.name,)).fetchone()
            version = self._known(row, SCHEMA_VERSION)
            if version == SCHEMA_VERSION or (version is not None and self._older_layout):
                return version
            if version is not None:
                raise self._not_migrated(f"has the layout of an older sqqueue (schema {version})")
            if registry is not None:
                self._refuse_case_conflict(conn)
            if _is_legacy(self._table_columns(conn, self.name)):
                raise self._not_migrated("is still in sqqueue 0.1.0's layout")
            raise StorageError(
                f"no queue {self.name!r} in {self.path!r}; a read-only queue object does not "
                "create one",
                ErrorKind.NOT_FOUND,
            )

        version = self._read(look)
        if version != SCHEMA_VERSION:
            self._q = sql.render(self.name, version)
            self._sql = self._q.sql

    def _not_migrated(self, what: str) -> StorageError:
        return StorageError(
            f"queue {self.name!r} in {self.path!r} {what}; bring it up to date with 'sqqueue "
            f"migrate {self.path}' (or by opening it once for use), then read it: opened "
            "read-only, it is not changed (a file you may not write: copy it, with its -wal "
            "file if there is one, and migrate the copy)",
            ErrorKind.READ_ONLY,
        )

    def _refuse_conflicts(self, conn: sqlite3.Connection) -> None:
        """Refuse a new queue whose tables another queue's would be: a queue whose name
        differs only in case (SQLite table names ignore case), or a table or index of a
        queue still using the names of an older sqqueue."""
        self._refuse_case_conflict(conn)
        wanted = {name.lower() for name in self._q.tables.values()}
        for other, version in conn.execute(sql.REGISTERED_VERSIONS):
            if version >= sql.SEPARATED_NAMES:
                continue
            for role, taken in sql.object_names(other, version).items():
                if taken.lower() in wanted and role not in ("legacy", "legacy_dlq"):
                    raise StorageError(
                        f"cannot create queue {self.name!r} in {self.path!r}: {taken!r} is "
                        f"a table or index of queue {other!r}, which still uses the names of "
                        f"an older sqqueue; open queue {other!r} once (or run 'sqqueue migrate "
                        f"{self.path}') to rename them, then create {self.name!r}",
                        ErrorKind.INVALID_INPUT,
                    )
        found = conn.execute(
            sql.CLASHING_OBJECTS,
            (self.name, self.name),
        ).fetchone()
        if found is not None:
            raise StorageError(
                f"{found[0]} {found[1]!r} in {self.path!r} differs only in case from queue "
                f"name {self.name!r}, and SQLite names ignore case; choose another table_name",
                ErrorKind.INVALID_INPUT,
            )

    def _refuse_case_conflict(self, conn: sqlite3.Connection) -> None:
        """Refuse a queue name that differs only in case from a queue of the file."""
        same = conn.execute(
            sql.CLASHING_QUEUES,
            (self.name, self.name),
        ).fetchone()
        if same is not None:
            raise StorageError(
                f"queue name {self.name!r} differs only in case from queue {same[0]!r} in "
                f"{self.path!r}, and SQLite table names ignore case, so they would share "
                f"tables; use {same[0]!r} to open that queue, or a name that differs in more "
                "than case",
                ErrorKind.INVALID_INPUT,
            )

    @staticmethod
    def _table_columns(conn: sqlite3.Connection, table: str) -> set[str]:
        return {row[1] for row in conn.execute(sql.TABLE_COLUMNS, (table,))}

    def ddl(self) -> list[str]:
        """The statements that create this queue (for teams that run migrations themselves)."""
        return sql.schema_script(self._q)

    def _migrate_legacy(self, conn: sqlite3.Connection, now: float, max_attempts: int) -> None:
        """Convert a sqqueue 0.1.0 table (and its _dlq) in place, inside the caller's txn."""
        try:
            self._migrate_legacy_tables(conn, now, max_attempts)
        except files.driver_errors() as exc:
            err = files.classify(exc, self.path)
            raise StorageError(
                f"migrating queue {self.name!r} from sqqueue 0.1.0 failed, so nothing was "
                f"changed (the whole migration is one transaction): {err}",
                err.kind,
            ) from exc
        logger.info("migrated queue %r in %s from sqqueue 0.1.0", self.name, self.path)

    def _migrate_legacy_tables(
        self, conn: sqlite3.Connection, now: float, max_attempts: int
    ) -> None:
        params = {"now": now, "max_attempts": max_attempts}
        tables = self._q.tables
        has_legacy_dlq = bool(self._table_columns(conn, tables["dlq"]))
        if has_legacy_dlq:
            conn.execute(sql.RENAME_TABLE.format(old=tables["dlq"], new=tables["legacy_dlq"]))
        seq_row = conn.execute(sql.LEGACY_SEQUENCE, (self.name,)).fetchone()
        conn.create_function(sql.LEGACY_TIME, 1, legacy_time)
        for statement in self._q.migration:
            conn.execute(statement, params)
        # 0.1.0 created an index named idx_status_id on its first queue; it went with the
        # renamed table. Ids must never be reused, so the old sequence carries over.
        if seq_row is not None:
            self.reserve_ids(conn, int(seq_row[0]))
        if has_legacy_dlq:
            self._migrate_legacy_dlq(conn, now, max_attempts)

    def _migrate_legacy_dlq(self, conn: sqlite3.Connection, now: float, max_attempts: int) -> None:
        tables = self._q.tables
        q, dlq, old = (f'"{tables[k]}"' for k in ("q", "dlq", "legacy_dlq"))
        rows = conn.execute(sql.LEGACY_ROWS.format(table=old)).fetchall()
        for old_id, payload, priority, created, updated in rows:
            # 0.1.0 numbered dead letters separately, so a dead letter's id may belong to a
            # live message too. Such a dead letter gets a fresh id from the queue's sequence.
            taken = conn.execute(
                sql.ID_TAKEN.format(q=q, dlq=dlq),
                (old_id, old_id),
            ).fetchone()
            new_id = old_id
            note = "moved to the dead-letter queue by sqqueue 0.1.0"
            if taken is not None:
                new_id = self._next_id(conn)
                note += f" (its dead-letter id there was {old_id})"
            conn.execute(
                self._q.legacy_dead_insert,
                {
                    "id": new_id,
                    # (0.1.0 kept bytes as a BLOB, and gave them back as bytes)
                    "payload": payload if isinstance(payload, bytes) else str(payload),
                    "encoding": "bytes" if isinstance(payload, bytes) else "text",
                    "priority": priority or 0,
                    "max_attempts": max_attempts,
                    "note": note,
                    "created": created,
                    "updated": updated,
                    "now": now,
                },
            )
        conn.execute(sql.DROP_TABLE.format(table=old))

    def _next_id(self, conn: sqlite3.Connection) -> int:
        """Reserve the next id, for a row that goes elsewhere than the queue table."""
        new_id = int(conn.execute(self._sql["next_id"]).fetchone()[0])
        self.reserve_ids(conn, new_id)
        return new_id

    def reserve_ids(self, conn: sqlite3.Connection, high: int) -> None:
        """Inside the caller's transaction: ids up to ``high`` are taken (for rows that
        arrive with their ids); count those rows with :meth:`count_arrivals`."""
        conn.execute(self._sql["reserve_base"], {"high": high})
        conn.execute(self._sql["reserve_high"], {"high": high})

    def count_arrivals(self, conn: sqlite3.Connection, messages: int) -> None:
        """Inside the caller's transaction: count ``messages`` rows inserted into the queue
        table with ids of their own (not the next ones), in the depth and as enqueues."""
        self._bump(conn, depth=messages, enqueued=messages)

    # -- operations --------------------------------------------------------------------

    # -- inserts: the plan is SQLBackend's; these run its statements -----------------

    large_payload = LARGE_PAYLOAD

    def _run_insert(
        self,
        started: float | None,
        insert: Callable[[sqlite3.Connection, Sequence[NewMessage]], list[int]],
        messages: Sequence[NewMessage],
        alone: bool,
    ) -> list[int]:
        # Alone, the INSERT takes the write lock at its start, as BEGIN IMMEDIATE would,
        # and its next-id sub-selects read under that lock.
        return self._run_since(started, lambda conn: insert(conn, messages), not alone)

    # Unsigned messages are most of them: the plain inserts leave the signature column
    # out (binding it, even NULL, costs about 3.5% of an enqueue: see "insert_plain").
    plain_signatures = False

    def _insert_plain(self, conn: sqlite3.Connection, messages: Sequence[NewMessage]) -> list[int]:
        now = self._now()  # read as late as it can be (see "Clocks" in the docs)
        if len(messages) == 1:
            m = messages[0]
            row = (*m[:6], now, m.ttl)  # data ... max_attempts, as in NewMessage
            return [int(conn.execute(self._sql["insert_plain"], row).lastrowid or 0)]
        # Inside one write transaction nobody else takes ids: the rows are numbered here.
        first = int(conn.execute(self._sql["next_id"]).fetchone()[0])
        rows = [(*m[:6], now, m.ttl, first + i) for i, m in enumerate(messages)]
        conn.executemany(self._sql["insert_plain_at"], rows)
        return list(range(first, first + len(messages)))

    def _take_key(
        self, conn: sqlite3.Connection, key: str, now: float | None
    ) -> tuple[int | None, int | None]:
        # The write lock is held: the key is recorded with the new message's id after its
        # insert (dedup_put), as no other producer can take it meanwhile.
        row = conn.execute(self._sql["dedup_get"], {"key": key}).fetchone()
        if row is None:
            return None, None
        message_id, expires_at = int(row[0]), row[1]
        fresh = expires_at is not None and now is not None and expires_at > now
        alive = self._key_alive(conn, message_id, expires_at is not None, fresh)
        return (message_id if alive else None), None

    def _insert_row(
        self,
        conn: sqlite3.Connection,
        message: NewMessage,
        reserved: int | None,
        now: float | None,
    ) -> int:
        statement = "insert" if message.group_key is None else "insert_grouped"
        params = _insert_params(message, now)
        large = len(message.data) >= LARGE_PAYLOAD
        if large:
            params["data"] = None
        new_id = int(conn.execute(self._sql[statement], params).lastrowid or 0)
        if large:
            conn.execute(self._sql["body_put"], {"id": new_id, "data": message.data})
        if message.dedup_key is not None:
            window = self.policy.dedup_window
            expires_at = None if window is None or now is None else now + window
            conn.execute(
                self._sql["dedup_put"],
                {"key": message.dedup_key, "id": new_id, "expires_at": expires_at},
            )
        return new_id

    def enqueue_in(self, conn: Any, messages: Sequence[NewMessage]) -> list[int]:
        """Insert inside the caller's own transaction on its own connection (outbox)."""
        if not files.is_connection(conn):
            raise StorageError(
                "conn must be your sqlite3.Connection on the queue's file (or a SQLAlchemy "
                f"Session or Connection on it), got {type(conn).__name__}",
                ErrorKind.INVALID_INPUT,
            )
        self._check_open()
        self._refuse_writes()
        try:
            self._check_same_file(conn)
            if not conn.in_transaction:
                self._join(conn)
            return self._insert(conn, messages)
        except files.driver_errors() as exc:
            raise files.classify(exc, self.path) from exc

    def _check_same_file(self, conn: sqlite3.Connection) -> None:
        """Refuse a caller's ``conn`` unless it is open on the queue's file: on another
        database, enqueue_in would write there and vacuum or checkpoint act there, each
        returning Ok with the queue's file untouched."""
        opened = [row[2] for row in conn.execute(sql.DATABASE_LIST) if row[1] == "main"]
        if self._memory or not opened or os.path.realpath(opened[0]) != os.path.realpath(self.path):
            raise StorageError(
                f"conn is open on {opened[0] if opened else 'another database'!r}, not on the "
                f"queue's file {self.path!r}",
                ErrorKind.INVALID_INPUT,
            )

    @staticmethod
    def _join(conn: sqlite3.Connection) -> None:
        """Open the transaction of a caller's connection that has none yet.

        Under sqlite3's default (legacy) transaction control, the caller's transaction
        begins at its first write, so one that has not written yet is not open: begin it
        now, as sqlite3 would before our INSERT, but taking the write lock at once (our
        reads and writes then see one snapshot). The caller's commit or rollback ends it.
        In autocommit mode there is no transaction to join.
        """
        autocommit = getattr(conn, "autocommit", None)  # Python 3.12+: True, False or legacy
        if conn.isolation_level is None or autocommit is True:
            raise StorageError(
                "conn is in autocommit mode and has no open transaction: execute 'BEGIN' "
                "first, so the message commits together with your rows",
                ErrorKind.INVALID_INPUT,
            )
        exclusive = conn.isolation_level.upper() == "EXCLUSIVE"
        conn.execute(sql.BEGIN_EXCLUSIVE if exclusive else sql.BEGIN_IMMEDIATE)

    def _now(self) -> float:
        clock = self._clock  # (a callable attribute: loaded, then called)
        now = float(clock())
        if not 0.0 <= now <= LATEST_TIME:  # (NaN too) checked when the queue was built: a
            # clock that goes wrong later would expire every lease, or never let one end.
            raise StorageError(
                f"the queue's clock says {now!r}, not Unix seconds (0 to {LATEST_TIME:.0f}); "
                "nothing was changed: fix the clock passed as clock=",
                ErrorKind.STORAGE,
            )
        latest = self._latest
        if now > latest:
            self._latest = now
        elif now < latest - _STEP_BACK:
            # The clock was stepped back: leases taken before the step end that much later
            # than they should; the next fold restarts them (see "reanchor_leases").
            self._latest = now
            self._look_for_future_leases = True
        return now

    def _before_fold(self, conn: sqlite3.Connection, params: dict[str, Any]) -> None:
        """Restart the leases taken before the clock was set back (see ``_now``)."""
        if not self._look_for_future_leases:
            return
        self._look_for_future_leases = False
        moved = conn.execute(
            self._sql["reanchor_leases"], {**params, "longest": _LONGEST_LEASE}
        ).rowcount
        if moved:
            logger.warning(
                "queue %r: the clock was set back; %d lease(s) taken before that start "
                "again from now",
                self.name,
                moved,
            )

    def watch(self) -> None:
        self._check_open()
        self._refuse_writes()  # only consumers and producers wait for changes
        if self._memory:
            return  # a private in-memory queue has no other writers: its signal says it all
        watcher = self._watcher
        if watcher is not None and watcher.pid == os.getpid():
            return
        watcher = files.watcher_for(os.path.realpath(self.path), self._key)
        with self._pool_lock:
            if self._closed:
                raise self._closed_error()
            self._watcher = watcher
            watcher.register(self._watch_token, signal_for(self.wakeup_key))
        # A queue object dropped without close() stops being watched when it is collected.
        weakref.finalize(self, watcher.unregister, self._watch_token)

    # -- inspection --------------------------------------------------------------------

    # -- maintenance -------------------------------------------------------------------

    def maintain(self, rounds: int = 1) -> None:
        self._refuse_writes()
        # Each step is bounded: a few hundred rows or pages per round (at most 16 MiB of
        # pages at once), and a checkpoint that never waits for readers or writers.
        self._prune()

        def free_pages(conn: sqlite3.Connection) -> tuple[int, int]:
            free = conn.execute(sql.FREELIST_COUNT).fetchone()[0]
            return int(free), int(conn.execute(sql.PAGE_COUNT).fetchone()[0])

        free, total = self._read(free_pages)
        if not self._memory:
            # SQLite's automatic checkpoint keeps the WAL short, unless a reader holds it
            # back: a WAL past its size limit is checked (and warned about) here.
            with contextlib.suppress(OSError):
                wal_bytes = os.path.getsize(self.path + "-wal")
                if wal_bytes > self._journal_size_limit:
                    self._passive_checkpoint(wal_bytes)
        # A busy queue frees and reuses pages all the time: give space back only when
        # there is some to give (a drained queue), not on every round. The checkpoint is
        # what makes the file shorter.
        if free < max(_KEEP_FREE_PAGES, total // 16):
            return
        pages = min(256 * max(rounds, 1), 4096)
        # executescript steps the pragma to completion; execute() would free one page only.
        self._read(lambda conn: conn.executescript(sql.INCREMENTAL_VACUUM.format(pages=pages)))
        self._read(lambda conn: conn.execute(sql.CHECKPOINT_PASSIVE).fetchall())

    # -- hooks of SQLBackend ---------------------------------------------------------------

    def _bump(self, conn: sqlite3.Connection, **counts: int) -> None:
        # Only the counters that change: usually one small UPDATE.
        for counter, n in counts.items():
            if n:
                conn.execute(self._sql["bump"], {"n": n, "counter": f"{self.name}#{counter}"})

    _claims_in_order = True  # the ORDER BY of claim_pick and of claimed

    def _claim_batch(
        self, limit: int, lease: float, token: int
    ) -> tuple[list[StoredMessage], int] | None:
        if limit == 1:
            return None
        # A batch is leased in the write transaction and read after its commit: the write
        # lock is held for the lease alone, not while the rows are stepped through (each
        # step lets this process's other threads run while other processes wait for the
        # lock). Measured: 4 worker processes on one file drain about 40% faster, one
        # process as fast as before (bench/profile-notes.md). Should the read fail, the
        # messages come back when their leases expire, as after a lost connection.

        def lease_them(conn: sqlite3.Connection) -> tuple[float, int, int]:
            now = self._now()
            folded = self._fold_expired(conn, now)
            params = {"now": now, "lease": lease, "token": token, "limit": limit}
            return now, folded, conn.execute(self._sql["claim_many"], params).rowcount

        def read(conn: sqlite3.Connection) -> list[StoredMessage]:
            held = {"now": now, "lease": lease, "token": token}
            rows = conn.execute(self._sql["claimed"], held).fetchall()
            if len(rows) < leased:  # (an expiry re-anchored since, or a lease taken over)
                rows = conn.execute(self._sql["claimed_by_token"], held).fetchall()
            return self._with_bodies(conn, [self._message(row) for row in rows])

        now, folded, leased = self._write(lease_them)
        return (self._read_tx(read) if leased else []), folded

    def _claim_rows(self, conn: sqlite3.Connection, params: dict[str, Any]) -> list[Any]:
        # One message (batches: _claim_batch above). Two statements instead of UPDATE ...
        # RETURNING: see "claim_pick" in sqlite_sql.
        rows = conn.execute(self._sql["claim_pick"], params).fetchall()
        if rows:
            conn.execute(self._sql["claim_one"], {**params, "id": rows[0][0]})
        return rows

    def _extend_rows(
        self,
        conn: sqlite3.Connection,
        refs: Sequence[tuple[int, int | None]],
        seconds: float,
    ) -> list[Any]:
        # One statement per _MAX_EXTEND_SET messages: a heartbeat's batch (one message
        # per running handler) fits in one.
        now = self._now()
        rows: list[Any] = []
        for start in range(0, len(refs), _MAX_EXTEND_SET):
            chunk = refs[start : start + _MAX_EXTEND_SET]
            params: dict[str, Any] = {"now": now, "lease": seconds}
            for i, (message_id, token) in enumerate(chunk):
                params[f"id{i}"] = message_id
                params[f"token{i}"] = token
            rows += conn.execute(self._q.extend_set(len(chunk)), params).fetchall()
        return rows

    def _complete_all(self, refs: Sequence[tuple[int, int | None]]) -> bool:
        # Messages claimed together share a lease token: each claim's messages go in one
        # DELETE (a worker's grouped acknowledgements span a few claims), all in one
        # transaction.
        if len(refs) < 2 or any(token is None for _, token in refs):
            return False
        claims: dict[int | None, list[int]] = {}
        for message_id, token in refs:
            claims.setdefault(token, []).append(message_id)
        sets = [
            (token, ids[start : start + _MAX_SET])
            for token, ids in claims.items()
            for start in range(0, len(ids), _MAX_SET)
        ]

        def run(conn: sqlite3.Connection) -> bool:
            now = self._now()
            for token, ids in sets:
                statement = self._q.complete_set(len(ids))
                if conn.execute(statement, (*ids, now, token)).rowcount != len(ids):
                    raise Refused([])  # rolls back what was deleted
            self._bump(conn, completed=len(refs))
            return True

        try:
            return self._write(run)
        except Refused:
            return False

    def _message(self, row: Sequence[Any]) -> StoredMessage:
        # The claim's columns are StoredMessage's fields, in order.
        return StoredMessage(row[0], _payload(row[1], row[2]), *row[3:])

    def _dead(self, row: Sequence[Any]) -> StoredDeadLetter:
        return _dead(row)

    def _done(self, row: Sequence[Any]) -> StoredDone:
        return _done(row)

    def _copy_columns(self, table: str) -> list[str]:
        columns = self._column_cache.get(table)
        if columns is None:
            statement = sql.columns_sql(self._q, table)
            found = self._read(lambda conn: conn.execute(statement).description)
            columns = self._column_cache[table] = [d[0] for d in found]
        return columns

    def _export(
        self, conn: sqlite3.Connection, table: str, after: Any, limit: int, exact: bool = False
    ) -> list[dict[str, Any]]:
        columns = self._copy_columns(table)
        statement = sql.export_sql(self._q, table, columns, exact)
        rows = []
        for raw in conn.execute(statement, {"after": after, "limit": limit}):
            values = iter(raw)
            row = {}
            for column in columns:
                # The payload comes as two values: its bytes, and whether it was text.
                value = next(values)
                row[column] = _payload(value, next(values)) if column == "payload" else value
            if table != "dedup" and row.get("payload", "") is None:
                body = conn.execute(self._sql["body_get"], {"id": row["id"]}).fetchone()
                row["payload"] = None if body is None else _payload(body[0], body[1])
            rows.append(row)
        return rows

    def _import_one(self, conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
        data = row.get("payload")
        if table != "dedup" and data is not None and len(data) >= LARGE_PAYLOAD:
            conn.execute(self._sql["body_put"], {"id": row["id"], "data": data})
            row = {**row, "payload": None}
        conn.execute(sql.import_sql(self._q, table, tuple(row)), row)

    def _reserve_ids(self, conn: sqlite3.Connection, high: int) -> None:
        self.reserve_ids(conn, high)

    def _count_revived(self, conn: sqlite3.Connection) -> None:
        self._bump(conn, depth=1)

    def _count_imported(self, conn: sqlite3.Connection, messages: int, dead: int) -> None:
        self.count_arrivals(conn, messages)
        self._bump(conn, enqueued=dead)

    def _other(self, target: str) -> Any:
        return sql.render(validate_queue_name(target))

    def _redrive_into(self, other: Any) -> str:
        return sql.redrive_into(other, self._q)

    def _file_sizes(self) -> dict[str, int]:
        sizes = {"wal_frames": 0, "wal_frames_not_checkpointed": 0}  # (in memory: no WAL)
        for key, suffix in (("db_bytes", ""), ("wal_bytes", "-wal")):
            try:
                sizes[key] = 0 if self._memory else os.path.getsize(self.path + suffix)
            except OSError:
                sizes[key] = 0
        if not self._memory:
            frames, behind = self._wal_progress(sizes["wal_bytes"])
            sizes.update(wal_frames=frames, wal_frames_not_checkpointed=behind)
        return sizes

    def _wal_progress(self, wal_bytes: int) -> tuple[int, int]:
        """(frames in the WAL, frames not checkpointed): by a passive checkpoint, or, when
        the database cannot be written (opened read-only, a full disk: a checkpoint
        writes to it), from the WAL index, so that stats keep working then."""
        if not self.read_only:
            try:
                return self._passive_checkpoint(wal_bytes)
            except StorageError as exc:
                if exc.kind not in (ErrorKind.DISK_FULL, ErrorKind.READ_ONLY):
                    raise
        return files.wal_progress(self.path, wal_bytes)

    def _passive_checkpoint(self, wal_bytes: int) -> tuple[int, int]:
        """Copy what can be copied from the WAL into the database without waiting for
        anyone; (frames in the WAL, frames that could not be copied).

        Frames stay behind when another connection reads from an older snapshot: a read
        transaction left open keeps every later frame in the WAL, so the WAL grows with
        every write until that reader lets go. Past journal_size_limit, that is warned
        about (at most every few minutes).
        """
        if not wal_bytes:
            return 0, 0
        row = self._read(lambda c: c.execute(sql.CHECKPOINT_PASSIVE).fetchall()[0])
        frames, done = max(int(row[1]), 0), max(int(row[2]), 0)
        behind = frames - done
        now = time.monotonic()
        if (
            behind
            and wal_bytes > self._journal_size_limit
            and now - self._wal_warned_at >= _WAL_WARN_EVERY
        ):
            self._wal_warned_at = now
            logger.warning(
                "%s: the WAL is %.0f MiB and %d of its %d frames cannot be checkpointed: "
                "another connection holds a read transaction open (a long-running read, "
                "a cursor not read to the end, a transaction never committed). The WAL "
                "grows with every write until that reader ends; journal_size_limit only "
                "applies after a complete checkpoint",
                self.path,
                wal_bytes / 2**20,
                behind,
                frames,
            )
        return frames, behind

    def _with_conn(self, conn: Any, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run maintenance ``fn`` (vacuum, checkpoint) on ``conn`` or on our own."""
        self._refuse_writes()
        if conn is None:
            return self._read(fn)
        self._check_open()
        if not files.is_connection(conn):
            raise StorageError(
                f"conn must be a sqlite3.Connection, got {type(conn).__name__}",
                ErrorKind.INVALID_INPUT,
            )
        try:
            self._check_same_file(conn)
            return fn(conn)
        except files.driver_errors() as exc:
            raise files.classify(exc, self.path) from exc

    def vacuum(self, conn: Any = None) -> None:
        if self._memory:
            return

        def run(c: sqlite3.Connection) -> None:
            if c.in_transaction:
                raise StorageError(
                    "cannot VACUUM inside an open transaction; commit it first",
                    ErrorKind.INVALID_INPUT,
                )
            c.execute(sql.AUTO_VACUUM_INCREMENTAL)
            c.execute(sql.VACUUM)

        self._with_conn(conn, run)

    def checkpoint(self, conn: Any = None) -> None:
        if self._memory:
            return

        def run(c: sqlite3.Connection) -> None:
            busy, _log, _done = c.execute(sql.CHECKPOINT_TRUNCATE).fetchone()
            if busy:
                raise StorageError(
                    f"checkpoint of {self.path!r} could not finish: other connections are "
                    "reading or writing; retry when the queue is quieter",
                    ErrorKind.LOCKED,
                )

        self._with_conn(conn, run)

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check`` messages (``['ok']`` for a healthy file)."""
        rows = self._read(lambda c: c.execute(sql.INTEGRITY_CHECK).fetchall())
        return [str(r[0]) for r in rows]

    @contextlib.contextmanager
    def raw_connection(self) -> Iterator[sqlite3.Connection]:
        """A connection of the queue's pool for the ``with`` block, for callers that need SQL
        the interface does not offer."""
        with self._borrowed() as conn:
            yield conn


def _is_legacy(columns: set[str]) -> bool:
    """Whether a table with these columns is a queue in sqqueue 0.1.0's layout."""
    return columns >= sql.LEGACY_COLUMNS


def _payload(raw: bytes | None, is_text: int | None) -> str | bytes | None:
    """A payload read as bytes back to what was stored; invalid UTF-8 stays bytes, for the
    codec to reject (and dead-letter) rather than sqlite3 to raise on."""
    if raw is None or not is_text:
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _dead(row: Sequence[Any]) -> StoredDeadLetter:
    return StoredDeadLetter(row[0], _payload(row[1], row[2]), *row[3:])


def _done(row: Sequence[Any]) -> StoredDone:
    return StoredDone(row[0], _payload(row[1], row[2]), *row[3:])


def _insert_params(message: NewMessage, now: float | None) -> dict[str, Any]:
    return {
        "data": message.data,
        "encoding": message.encoding,
        "checksum": message.checksum,
        "priority": message.priority,
        "delay": message.delay,
        "max_attempts": message.max_attempts,
        "now": now,
        "ttl": message.ttl,
        "group_key": message.group_key,
        "signature": message.signature,
    }
