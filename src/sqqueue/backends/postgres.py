"""PostgreSQL storage (``pip install 'sqqueue[postgres]'``): the same queue for many machines.

Every operation is one transaction on a pooled connection; the hot ones (enqueue, claim,
complete) are a single statement run in autocommit, so they cost one round trip. Consumers
claim with ``FOR UPDATE SKIP LOCKED``; producers ``NOTIFY`` on commit and a listener
connection per queue object wakes waiting consumers at once (with polling as the fallback
if notifications are lost). A connection lost before commit is retried on a fresh one; a
connection lost *during* commit (or during a single statement) is reported as
``Err(kind=UNKNOWN_OUTCOME)``, never as success. The SQL is in ``postgres_sql.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import re
import select
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "the PostgreSQL backend needs psycopg 3: pip install 'sqqueue[postgres]'"
    ) from exc

from .. import bridge
from ..exceptions import ErrorKind
from ..names import validate_queue_name, validate_schema_name
from ..serializers import JSON, TEXT
from ..targets import hide_password, redact  # the URL without its password
from ..wakeup import signal_for
from . import postgres_sql as sql
from .base import (
    NewMessage,
    Policy,
    StorageError,
    StoredDeadLetter,
    StoredDone,
    StoredMessage,
)
from .common import SQLBackend
from .pg_watchdog import watchdog
from .postgres_async import AsyncFace

__all__ = ["SCHEMA_VERSION", "PostgresBackend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")
SCHEMA_VERSION = sql.SCHEMA_VERSION  # defined with the schema, in postgres_sql
# Errors after which the whole transaction can simply run again.
_RETRY = (
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    pg_errors.LockNotAvailable,
    pg_errors.UniqueViolation,  # a concurrent identical insert won; the retry sees it
)


# A new connection refused with one of these is worth trying again until the deadline:
# the server is there, but starting up or out of connection slots. Any other failure to
# connect (refused, unknown host, bad password) is reported at once.
_TRANSIENT_CONNECT = (
    "the database system is starting up",
    "too many clients",
    "remaining connection slots",
)
# What to do about a missing privilege (the owner of the schema grants them).
GRANTS_HINT = (
    "the owner of the schema grants each role what it needs: 'sqqueue grants URL "
    "--producer ROLE --consumer ROLE --admin ROLE' prints the statements"
)
# The listener's longest pause between attempts to reconnect.
_LISTEN_BACKOFF = 0.5
# Pools of queue objects inherited through fork: never used nor closed in the child (the
# sockets are the parent's), and kept referenced so that no finalizer closes them either.
_parked_after_fork: list[_Pool] = []


class _CommitLost(Exception):
    """The connection failed while COMMIT was in flight."""


class _ConnectFailed(Exception):
    """A new connection could not be opened; ``transient``: the server answered that it is
    starting up or full, so trying again soon may work."""

    def __init__(self, cause: psycopg.Error, transient: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.transient = transient


class _PoolBusy(Exception):
    """Every connection of the pool stayed in use until the call's deadline."""


class _Unanswered(Exception):
    """The server did not answer a statement by the call's answer deadline, and the
    watchdog cut the connection; ``maybe_done``: it was a commit (or a statement that was
    its own), which may have taken effect."""

    def __init__(self, maybe_done: bool) -> None:
        super().__init__("the server did not answer")
        self.maybe_done = maybe_done


class _Slots:
    """At most ``size`` holders at once; a thread waits for its turn."""

    def __init__(self, size: int) -> None:
        self._semaphore = threading.BoundedSemaphore(size)

    def take(self, deadline: float) -> bool:
        """One slot, waiting until ``deadline`` (``time.monotonic()``); False if none."""
        return self._semaphore.acquire(timeout=max(deadline - time.monotonic(), 0.0))

    def give(self) -> None:
        self._semaphore.release()


class _LoopSlots:
    """:class:`_Slots` for bridged calls on one event loop: the waiting task is suspended."""

    def __init__(self, size: int) -> None:  # (made in a bridged call, on its loop)
        self._loop_semaphore = asyncio.Semaphore(size)

    def take(self, deadline: float) -> bool:
        return bridge.wait_for(self._take(deadline))

    async def _take(self, deadline: float) -> bool:
        # Looked at on the loop, in the step that takes it: a slot seen free when the call
        # started may be gone by the time the loop runs this.
        semaphore = self._loop_semaphore
        if not semaphore.locked():
            await semaphore.acquire()  # free: at once
            return True
        remaining = max(deadline - time.monotonic(), 0.0)
        try:
            return await asyncio.wait_for(semaphore.acquire(), remaining)
        except asyncio.TimeoutError:
            return False

    def give(self) -> None:
        self._loop_semaphore.release()


class _Pool:
    """At most ``size`` connections, each opened when a call needs one, in that call's thread
    (or, for the asyncio API's bridged calls, on that call's event loop: one pool per loop).

    Not psycopg_pool's pool: that one connects from background threads, which retry for
    minutes and log every failure at WARNING while calls wait on them. Here a call that
    finds no idle connection opens one itself: a refused or unknown server is an error at
    once, a server back from a restart is used by the very next call, and nothing is
    logged on the side.
    """

    def __init__(
        self, connect: Callable[[float], psycopg.Connection[Any]], slots: _Slots | _LoopSlots
    ) -> None:
        self._connect = connect
        self._idle: list[psycopg.Connection[Any]] = []
        self._slots = slots
        self._lock = threading.Lock()
        self._closed = False
        # Figures for the reliability suite, named as psycopg_pool's get_stats() names them.
        self._stats = dict.fromkeys(
            ("connections_num", "connections_errors", "connections_lost", "returns_bad"), 0
        )

    def get(self, deadline: float) -> psycopg.Connection[Any]:
        """An idle connection, or a new one; waits for a free slot until ``deadline``
        (``time.monotonic()``)."""
        if not self._slots.take(deadline):
            raise _PoolBusy()
        try:
            with self._lock:
                if self._idle:
                    return self._idle.pop()
            try:
                conn = self._connect(deadline)
            except _ConnectFailed:
                self._stats["connections_errors"] += 1
                raise
            self._stats["connections_num"] += 1
            return conn
        except BaseException:
            self._slots.give()
            raise

    def put(self, conn: psycopg.Connection[Any]) -> None:
        """Give back a connection from :meth:`get`: kept if it is healthy and idle (not in a
        transaction), closed otherwise."""
        try:
            healthy = (
                not conn.closed
                and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            )
            with self._lock:
                if healthy and not self._closed:
                    self._idle.append(conn)
                    return
            if not healthy:
                self._stats["returns_bad"] += 1
            with contextlib.suppress(Exception):
                conn.close()
        finally:
            self._slots.give()

    def discard(self, conn: psycopg.Connection[Any]) -> None:
        """Close a connection from :meth:`get` that the server has closed."""
        self._stats["connections_lost"] += 1
        with contextlib.suppress(Exception):
            conn.close()
        self._slots.give()

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def get_stats(self) -> dict[str, int]:
        return dict(self._stats)


# PostgreSQL text cannot hold NUL: text holding it is stored as its UTF-8 bytes (see
# _body), and comes back as text where the encoding says the payload is text.
_TEXT_ENCODINGS = frozenset({TEXT, JSON})


def _data(text: str | None, raw: bytes | memoryview | None, encoding: str) -> str | bytes:
    if text is not None:
        return text
    data = bytes(raw or b"")
    if encoding in _TEXT_ENCODINGS:
        with contextlib.suppress(UnicodeDecodeError):  # else damaged: the checksum says so
            return data.decode("utf-8")
    return data


# PostgreSQL text cannot hold NUL. Error texts (which may quote binary input) store it as
# U+FFFE, a Unicode noncharacter that real text never carries, and get it back on reading.
_NUL_STANDIN = "\ufffe"


def _restore_nul(text: str | None) -> str | None:
    return text.replace(_NUL_STANDIN, "\x00") if text and _NUL_STANDIN in text else text


def _message(row: Sequence[Any]) -> StoredMessage:
    message = StoredMessage(row[0], _data(row[1], row[2], row[3]), *row[3:])
    if message.last_error and _NUL_STANDIN in message.last_error:
        message = message._replace(last_error=_restore_nul(message.last_error))
    return message


def _dead(row: Sequence[Any]) -> StoredDeadLetter:
    letter = StoredDeadLetter(row[0], _data(row[1], row[2], row[3]), *row[3:])
    if letter.last_error and _NUL_STANDIN in letter.last_error:
        letter = letter._replace(last_error=_restore_nul(letter.last_error))
    return letter


def _done(row: Sequence[Any]) -> StoredDone:
    return StoredDone(row[0], _data(row[1], row[2], row[3]), *row[3:])


def _body(data: str | bytes) -> tuple[str | None, bytes | None]:
    # PostgreSQL text cannot hold NUL: such text is stored as its UTF-8 bytes.
    if isinstance(data, str) and "\x00" not in data:
        return data, None
    return None, data.encode("utf-8") if isinstance(data, str) else data


def _values(message: NewMessage) -> dict[str, Any]:
    """The column values of a new message, by parameter name."""
    text, raw = _body(message.data)
    return {
        "text": text,
        "bytes": raw,
        "encoding": message.encoding,
        "checksum": message.checksum,
        "priority": message.priority,
        "delay": message.delay,
        "max_attempts": message.max_attempts,
        "ttl": message.ttl,
        "signature": message.signature,
    }


def url_settings(url: str) -> dict[str, Any]:
    """The connection settings of a PostgreSQL URL; ValueError, saying why without its
    password, for one libpq refuses (a space in a password, an unknown parameter).

    The ValueError is raised outside the ``except`` block: libpq's own error may quote the
    password (``invalid percent-encoded token: "..."``), and raised inside it would ride
    along as ``__context__``, for error trackers (and ``from None`` only hides it from
    tracebacks).
    """
    authority = re.split(r"[/?#]", url.partition("://")[2], maxsplit=1)[0]
    if authority.count("@") > 1:
        # libpq would end the user part at the first '@' and take the rest of the
        # password for the host, which its errors then quote.
        raise ValueError(
            f"invalid PostgreSQL URL {redact(url)!r}: its user or password holds an '@'; "
            "write it as %40"
        )
    try:
        info = conninfo_to_dict(url)
        timeout = info.get("connect_timeout")
        if timeout is not None:
            float(timeout)
    except (psycopg.Error, ValueError) as exc:
        refused = hide_password(str(exc).strip(), url)
    else:
        return info
    raise ValueError(f"invalid PostgreSQL URL {redact(url)!r}: {refused}")


def list_postgres_queues(url: str, schema: str | None = None, timeout: float = 30.0) -> list[str]:
    """Names of the sqqueue queues in a PostgreSQL database (schema), sorted; within
    ``timeout`` seconds (a queue's ``lock_timeout``), whatever the server does: a table
    locked by another session, a server that takes the connection and never answers."""
    return _ask(
        url,
        timeout,
        "list queues",
        lambda conn, settings: _queue_names(conn, url, settings, schema),
    )


def postgres_schema_exists(url: str, schema: str, timeout: float = 30.0) -> bool:
    """Whether the PostgreSQL database has a schema ``schema`` (within ``timeout`` seconds,
    as ``list_postgres_queues``)."""
    schema = validate_schema_name(schema)
    return _ask(
        url,
        timeout,
        "look up schemas",
        lambda conn, _settings: conn.execute(sql.SCHEMA_USAGE, (schema,)).fetchone() is not None,
    )


def _ask(
    url: str,
    timeout: float,
    what: str,
    fn: Callable[[psycopg.Connection[Any], dict[str, str]], T],
) -> T:
    """``fn(connection, URL settings)`` on a connection of its own, autocommit, within
    ``timeout`` seconds whatever the server does; ``what`` it does, for the errors
    ("cannot list queues at ...")."""
    deadline = time.monotonic() + timeout
    options: dict[str, Any] = {}
    settings = url_settings(url)
    if "connect_timeout" not in settings:
        options["connect_timeout"] = max(math.ceil(timeout), 2)  # (libpq's least is 2 s)
    try:
        with psycopg.connect(url, autocommit=True, **options) as conn:
            # Waits for locks end at the deadline, reported by the server (LOCKED); a
            # server that stops answering is cut off a lock_timeout later, as a queue's
            # calls are (see pg_watchdog).
            remaining = max(deadline - time.monotonic(), 0.001)
            watch = watchdog.watch(conn, deadline + timeout)
            try:
                conn.execute(sql.SET_LOCK_TIMEOUT.format(ms=int(remaining * 1000)))
                answer = fn(conn, settings)
            except psycopg.Error as exc:
                if watchdog.end(watch):
                    raise StorageError(
                        f"cannot {what} at {redact(url)!r}: the server did not answer "
                        f"within {2 * timeout:g} s (twice lock_timeout); retry, or raise "
                        "lock_timeout",
                        ErrorKind.LOCKED,
                    ) from exc
                raise
            finally:
                watchdog.end(watch)
    except psycopg.Error as exc:
        raise StorageError(
            f"cannot {what} at {redact(url)!r}: {hide_password(str(exc), url)}",
            ErrorKind.LOCKED if isinstance(exc, pg_errors.LockNotAvailable) else ErrorKind.STORAGE,
        ) from exc
    return answer


def _queue_names(
    conn: psycopg.Connection[Any], url: str, settings: dict[str, str], schema: str | None
) -> list[str]:
    if schema is not None:
        schema = validate_schema_name(schema)
        # Without USAGE the schema's tables are out of sight, as if there were none: say
        # so, rather than list nothing.
        usage = conn.execute(sql.SCHEMA_USAGE, (schema,)).fetchone()
        if usage is not None and not usage[0]:
            user = settings.get("user")
            who = f"role {user!r}" if user else "the role of this URL"
            raise StorageError(
                f"{who} may not use schema {schema!r} at {redact(url)!r} (it lacks USAGE on "
                f"the schema), so it cannot see its queues; {GRANTS_HINT}",
                ErrorKind.READ_ONLY,
            )
        conn.execute(sql.SET_SEARCH_PATH.format(schema=schema))
    if conn.execute(sql.HAS_REGISTRY).fetchone() == (None,):
        return []
    return [r[0] for r in conn.execute(sql.QUEUE_NAMES).fetchall()]


def classify(exc: BaseException, path: str, role: str | None = None) -> StorageError:
    """Turn a psycopg exception into a StorageError that says what to do (``role``: the
    role the URL logs in as, named when it lacks a privilege)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, pg_errors.DiskFull):
        return StorageError(
            f"the PostgreSQL server of {path!r} is out of disk space ({text})",
            ErrorKind.DISK_FULL,
        )
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        who = f"role {role!r}" if role else "the role of this URL"
        return StorageError(
            f"{who} lacks a privilege on {path!r}: {text}; {GRANTS_HINT}",
            ErrorKind.READ_ONLY,
        )
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return StorageError(
            f"cannot write to {path!r}: {text}; check the role's privileges",
            ErrorKind.READ_ONLY,
        )
    if isinstance(exc, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled)):
        return StorageError(f"{path!r} stayed locked ({text})", ErrorKind.LOCKED)
    if isinstance(exc, psycopg.OperationalError):
        return StorageError(
            f"lost the connection to the PostgreSQL server at {path!r} ({text}); "
            "it was retried until lock_timeout, check the server and the network",
            ErrorKind.STORAGE,
        )
    return StorageError(f"database error on {path!r}: {text}", ErrorKind.STORAGE)


class PostgresBackend(SQLBackend):
    """One queue in a PostgreSQL database; safe for threads, processes and machines."""

    shares_commits = True
    # Its driver has an asyncio face: the asyncio API runs its calls on the event loop.
    native_asyncio = True

    #: waiting consumers also re-check at least this often, in case a NOTIFY was lost
    poll_fallback = 1.0

    def __init__(
        self,
        url: str,
        name: str,
        *,
        policy: Policy | None = None,
        schema: str | None = None,
        pool_size: int = 4,
        server_clock: Callable[[], float] | None = None,
        read_only: bool = False,
    ) -> None:
        self.name = validate_queue_name(name)
        self.read_only = bool(read_only)
        if schema is not None:
            validate_schema_name(schema)
        self.url = url
        self.path = redact(url)
        self.schema = schema
        self._home: str | None = None  # see _home_schema
        self.policy = policy or Policy()
        self.wakeup_key = f"postgres:{self.path}:{schema or ''}:{self.name}"
        self._lock_timeout = self.policy.lock_timeout
        # The server's clock decides every time; a test may pin it (see postgres_sql).
        self._server_clock = server_clock
        self._pool_size = pool_size
        self._q = sql.render(self.name, pinned=server_clock is not None)
        self._sql = self._q.sql
        self._closed = False
        self._pid = os.getpid()
        self._pool: _Pool | None = None
        # The pools of the event loops whose bridged calls used this queue object.
        self._loop_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = (
            weakref.WeakKeyDictionary()
        )
        self._pool_lock = threading.Lock()
        # The lock_timeout each connection was last given (see _bound_lock_wait).
        self._lock_ms: weakref.WeakKeyDictionary[psycopg.Connection[Any], int] = (
            weakref.WeakKeyDictionary()
        )
        # A connect_timeout in the URL still applies; ours is the call's deadline.
        info = url_settings(url)
        timeout = info.get("connect_timeout")
        self._url_connect_timeout = float(timeout) if timeout and float(timeout) > 0 else None
        self._listener: threading.Thread | None = None
        self._listening = False
        self._listener_pid: int | None = None  # the server process of the listener, for tests
        self._column_cache: dict[str, list[str]] = {}
        user = info.get("user")
        self._role = None if user is None else str(user)
        try:
            self._init_schema(self.policy.default_max_attempts)
        except StorageError as exc:
            self.close()
            raise StorageError(f"cannot open queue {self.name!r}: {exc}", exc.kind) from exc
        except BaseException:
            self.close()
            raise

    # -- connections -------------------------------------------------------------------

    def _connect_timeout(self, deadline: float) -> int:
        """libpq's connect_timeout for a connection needed by ``deadline``: whole seconds,
        at least 2 (libpq's minimum), at most the URL's own connect_timeout."""
        seconds = max(deadline - time.monotonic(), 2.0)
        if self._url_connect_timeout is not None:
            seconds = min(seconds, self._url_connect_timeout)
        return max(math.ceil(seconds), 2)

    def _open(self, deadline: float) -> psycopg.Connection[Any]:
        """A new connection, configured for the queue."""
        try:
            # Transactions are explicit (BEGIN ... COMMIT), so that single statements can
            # run as their own transaction.
            # In a bridged call (the asyncio API), the connection is psycopg's asyncio
            # one behind a synchronous face: its statements are awaited on the loop.
            # (The face has the methods of psycopg.Connection that the backend uses.)
            connect: Any = AsyncFace.connect if bridge.active() else psycopg.connect
            conn: psycopg.Connection[Any] = connect(
                self.url, autocommit=True, connect_timeout=self._connect_timeout(deadline)
            )
        except psycopg.Error as exc:
            text = str(exc)
            raise _ConnectFailed(exc, any(t in text for t in _TRANSIENT_CONNECT)) from exc
        try:
            if self.schema is not None:
                conn.execute(
                    sql.SET_SEARCH_PATH.format(schema=self.schema)
                )  # created by _init_schema
            # A statement waiting on a row or table lock gives up at lock_timeout, like
            # SQLite's busy timeout; the retry loop then reports LOCKED.
            ms = max(int(self._lock_timeout * 1000), 1)
            conn.execute(sql.SET_LOCK_TIMEOUT.format(ms=ms))
            self._lock_ms[conn] = ms
            if self.read_only:
                # Whatever a read-only queue object runs, the server refuses to write it.
                conn.execute(sql.READ_ONLY_TRANSACTIONS)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        return conn

    def _get_pool(self) -> _Pool:
        if self._closed:
            raise StorageError(
                f"queue {self.name!r} is closed; create a new queue object", ErrorKind.CLOSED
            )
        with self._pool_lock:
            if self._pid != os.getpid():
                # Inherited through fork: the parent's sockets are not ours to use or close.
                _parked_after_fork.extend([self._pool] if self._pool else [])
                _parked_after_fork.extend(self._loop_pools.values())
                self._pool = None
                self._loop_pools = weakref.WeakKeyDictionary()
                self._listener = None
                self._pid = os.getpid()
            if bridge.active():
                loop = asyncio.get_running_loop()
                pool = self._loop_pools.get(loop)
                if pool is None:
                    pool = _Pool(self._open, _LoopSlots(self._pool_size))
                    self._loop_pools[loop] = pool
                return pool
            if self._pool is None:
                self._pool = _Pool(self._open, _Slots(self._pool_size))
            return self._pool

    def close(self) -> None:
        self._closed = True
        with self._pool_lock:
            pools = [self._pool, *self._loop_pools.values()]
            self._pool = None
            self._loop_pools = weakref.WeakKeyDictionary()
        # The listener's connection is closed by the listener itself, within a second: a
        # psycopg connection closed by one thread while another runs a statement on it
        # can crash the process.
        if self._pid == os.getpid():
            for pool in pools:
                if pool is not None:
                    pool.close()

    # -- transactions ----------------------------------------------------------------------

    def _role_shown(self) -> str:
        """The role the URL logs in as, for messages (never the password)."""
        return f"role {self._role!r}" if self._role else "the role of this URL"

    def _unreachable(self, failed: _ConnectFailed) -> StorageError:
        text = str(failed.cause).strip().splitlines()[0] if str(failed.cause).strip() else ""
        return StorageError(
            f"cannot connect to the PostgreSQL server at {self.path!r}: {text}; check that "
            "it is running and that the URL's host, port, database and credentials are right",
            ErrorKind.STORAGE,
        )

    def _unanswered(self, maybe_done: bool) -> StorageError:
        waited = 2 * self._lock_timeout
        if maybe_done:
            outcome = "it is unknown whether the operation took effect: check before retrying"
            kind = ErrorKind.UNKNOWN_OUTCOME
        else:
            outcome = "the operation did not take effect; retry once the server answers"
            kind = ErrorKind.STORAGE
        return StorageError(
            f"the PostgreSQL server at {self.path!r} did not answer within {waited:g} s of "
            "the call (twice lock_timeout): stopped, overloaded, or the network is down, so "
            f"the connection was closed; {outcome}",
            kind,
        )

    def _run(
        self,
        fn: Callable[Concatenate[psycopg.Connection[Any], P], T],
        write: bool,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one transaction; retry on lost connections
        and lock conflicts until the deadline. A lost COMMIT is reported as an unknown
        outcome. (The signature of every backend's ``_run``.)"""
        if args or kwargs:
            return self._transact(lambda conn: fn(conn, *args, **kwargs), write, False)
        return self._transact(fn, write, False)

    def _run_alone(self, fn: Callable[[psycopg.Connection[Any]], T], write: bool) -> T:
        """``_run`` for an ``fn`` that runs exactly one statement, which is then its own
        transaction (autocommit): one round trip instead of three (BEGIN, statement,
        COMMIT)."""
        return self._transact(fn, write, True)

    def _transact(
        self,
        fn: Callable[[psycopg.Connection[Any]], T],
        write: bool,
        single: bool,
        started: float | None = None,
    ) -> T:
        """The retry loop of ``_run`` and ``_run_alone``; the lock timeout counts from
        ``started`` (``time.monotonic()``) if given, else from now."""
        if write:
            self._refuse_writes()
        start = time.monotonic() if started is None else started
        deadline = start + self._lock_timeout
        if time.monotonic() >= deadline:
            # Its whole lock_timeout spent in line behind other calls' commits (which
            # failed): an attempt now would only add its own wait to that.
            raise StorageError(
                f"waited {time.monotonic() - start:.1f} s for earlier calls on {self.path!r} "
                f"to commit, past lock_timeout ({self._lock_timeout:g} s); nothing was done: "
                "retry later or raise lock_timeout",
                ErrorKind.LOCKED,
            )
        attempt = 0
        while True:
            try:
                return self._attempt(fn, single, deadline)
            except _ConnectFailed as failed:
                # Refused, unknown host, bad credentials: said at once. A server starting
                # up (or full) is given until the deadline.
                attempt += 1
                remaining = deadline - time.monotonic()
                if not failed.transient or remaining <= 0:
                    raise self._unreachable(failed) from failed.cause
                logger.debug("queue %r: retrying after %s", self.name, failed)
                bridge.sleep(min(remaining, random.uniform(0, min(0.01 * 2**attempt, 0.25))))
            except _Unanswered as unanswered:
                raise self._unanswered(write and unanswered.maybe_done) from None
            except _PoolBusy:
                raise StorageError(
                    f"all {self._pool_size} connections of this queue object to {self.path!r} "
                    f"stayed in use for {time.monotonic() - start:.1f} s; raise pool_size, or "
                    f"lock_timeout (now {self._lock_timeout:g} s)",
                    ErrorKind.LOCKED,
                ) from None
            except _CommitLost as lost:
                if not write:
                    # Nothing a read does can have taken effect: just run it again.
                    exc_lost = psycopg.OperationalError("connection lost while committing a read")
                    attempt += 1
                    if time.monotonic() >= deadline:
                        raise classify(exc_lost, self.path, self._role) from lost.__cause__
                    bridge.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.5)))
                    continue
                raise StorageError(
                    f"the connection to {self.path!r} was lost while committing, so it is "
                    "unknown whether the operation took effect; check before retrying it",
                    ErrorKind.UNKNOWN_OUTCOME,
                ) from lost.__cause__
            except (psycopg.OperationalError, *_RETRY) as exc:
                attempt += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    err = classify(exc, self.path, self._role)
                    if isinstance(exc, _RETRY) and not isinstance(exc, pg_errors.UniqueViolation):
                        raise StorageError(
                            f"{self.path!r} stayed locked for {time.monotonic() - start:.1f} s "
                            f"({err}); retry later or raise lock_timeout",
                            ErrorKind.LOCKED,
                        ) from exc
                    raise err from exc
                logger.debug("queue %r: retrying after %s", self.name, exc)
                bridge.sleep(min(remaining, random.uniform(0, min(0.002 * 2**attempt, 0.5))))
            except psycopg.Error as exc:
                raise classify(exc, self.path, self._role) from exc
            except StorageError:
                raise

    def _checkout(self, pool: _Pool, deadline: float) -> psycopg.Connection[Any]:
        """A pooled connection that was not closed by the server while it sat idle.

        An idle connection has nothing to read; if its socket is readable, the server has
        ended it (restart, ``pg_terminate_backend``, idle timeout) and it is replaced. This
        costs no round trip, and it keeps a dead connection from turning a write into an
        unknown outcome.
        """
        for _ in range(self._pool_size + 1):
            conn = pool.get(deadline)
            try:
                readable = bool(select.select([conn.fileno()], [], [], 0)[0])
            except (OSError, ValueError, psycopg.Error):
                readable = True
            if not readable:
                return conn
            logger.debug("queue %r: replacing a connection the server closed", self.name)
            pool.discard(conn)
        raise psycopg.OperationalError("every pooled connection was closed by the server")

    def _bound_lock_wait(self, conn: psycopg.Connection[Any], deadline: float) -> None:
        """Keep the statements' wait for locks within what is left until the call's
        deadline, so that a call that already waited (for a connection, or in an earlier
        attempt) does not then wait a whole lock_timeout more. Costs a round trip only
        when the setting has to change."""
        full = self._lock_timeout
        remaining = deadline - time.monotonic()
        wanted = full if remaining >= 0.9 * full else max(remaining, 0.001)
        ms = max(int(wanted * 1000), 1)
        if self._lock_ms.get(conn) != ms:
            conn.execute(sql.SET_LOCK_TIMEOUT.format(ms=ms))
            self._lock_ms[conn] = ms

    def _attempt(
        self, fn: Callable[[psycopg.Connection[Any]], T], single: bool, deadline: float
    ) -> T:
        pool = self._get_pool()
        conn = self._checkout(pool, deadline)
        # The server has until a lock_timeout past the call's deadline to answer (waits
        # for locks end at the deadline; the time beyond is for the statements' work):
        # past it, the connection is cut (see pg_watchdog).
        watch = watchdog.watch(conn, deadline + self._lock_timeout)
        try:
            return self._statements(conn, fn, single, deadline)
        except (psycopg.Error, _CommitLost) as exc:
            if watchdog.end(watch):
                raise _Unanswered(isinstance(exc, _CommitLost)) from exc
            raise
        finally:
            watchdog.end(watch)
            pool.put(conn)  # a broken connection is closed, not kept

    def _statements(
        self,
        conn: psycopg.Connection[Any],
        fn: Callable[[psycopg.Connection[Any]], T],
        single: bool,
        deadline: float,
    ) -> T:
        """Run ``fn`` on ``conn``: as its own transaction when ``single``, else between
        BEGIN and COMMIT; a connection lost during a commit raises _CommitLost."""
        self._bound_lock_wait(conn, deadline)
        if single:
            try:
                return fn(conn)
            except psycopg.OperationalError as exc:
                if conn.broken:
                    # The statement was its own commit: it may have taken effect.
                    raise _CommitLost() from exc
                raise
        conn.execute(sql.BEGIN)
        try:
            result = fn(conn)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute(sql.ROLLBACK)
            raise
        try:
            conn.execute(sql.COMMIT)
        except psycopg.OperationalError as exc:
            raise _CommitLost() from exc
        return result

    def _write(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        return self._run(fn, write=True)

    def _refuse_writes(self) -> None:
        """Raise READ_ONLY if this queue object was opened read-only."""
        if self.read_only:
            raise StorageError(
                f"queue {self.name!r} in {self.path!r} was opened read-only (read_only=True), "
                "so it changes nothing; open it without read_only to change it",
                ErrorKind.READ_ONLY,
            )

    def _read(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        return self._run(fn, write=False)

    # -- schema --------------------------------------------------------------------------

    def _registered(self) -> int | None:
        """The queue's schema version if it exists already (then opening it needs no DDL,
        nor DDL rights, unless it is older), else None."""

        def look(conn: psycopg.Connection[Any]) -> int | None:
            if self.schema is not None:
                usage = conn.execute(sql.SCHEMA_USAGE, (self.schema,)).fetchone()
                if usage is not None and not usage[0]:
                    raise StorageError(
                        f"{self._role_shown()} may not use schema {self.schema!r} in "
                        f"{self.path!r} (it lacks USAGE on the schema); {GRANTS_HINT}",
                        ErrorKind.READ_ONLY,
                    )
            if conn.execute(sql.HAS_REGISTRY).fetchone() == (None,):
                return None
            row = conn.execute(sql.SCHEMA_VERSION_OF, (self.name,)).fetchone()
            return self._known(row, SCHEMA_VERSION)

        return self._read(look)

    def _init_schema(self, default_max_attempts: int) -> None:
        version = self._registered()
        if self.read_only:
            if version is None:
                raise StorageError(
                    f"no queue {self.name!r} in {self.path!r}; a read-only queue object does "
                    "not create one",
                    ErrorKind.NOT_FOUND,
                )
            if version != SCHEMA_VERSION:
                raise StorageError(
                    f"queue {self.name!r} in {self.path!r} has the layout of an older sqqueue "
                    f"(schema {version}); open it once for use to bring it up to date, then "
                    "read it: opened read-only, it is not changed",
                    ErrorKind.READ_ONLY,
                )
            return
        if version == SCHEMA_VERSION:
            return

        def setup(conn: psycopg.Connection[Any]) -> None:
            # One schema change at a time across every process and machine.
            conn.execute(sql.SCHEMA_LOCK)
            if self.schema is not None:
                conn.execute(sql.CREATE_SCHEMA.format(schema=self.schema))
            for ddl in sql.REGISTRY_DDL:
                conn.execute(ddl)
            row = conn.execute(sql.SCHEMA_VERSION_OF, (self.name,)).fetchone()
            version = self._known(row, SCHEMA_VERSION)
            if version is not None:
                self._upgrade(conn, version)
                return
            self._refuse_taken_names(conn)
            conn.execute(
                sql.REGISTER_QUEUE,
                (self.name, SCHEMA_VERSION, self._now()),
            )
            for ddl in self._q.ddl:
                conn.execute(ddl)

        try:
            self._write(setup)
        except StorageError as exc:
            if exc.kind is not ErrorKind.READ_ONLY:
                raise
            # Only the owner of the schema creates and upgrades queues.
            state = "does not exist yet" if version is None else "has an older layout"
            raise StorageError(
                f"queue {self.name!r} {state}, and {self._role_shown()} may not change the "
                f"layout ({exc}); open it once as the owner of the schema (or run 'sqqueue "
                "migrate' as the owner), then grant this role its privileges",
                ErrorKind.READ_ONLY,
            ) from exc

    def _upgrade(self, conn: psycopg.Connection[Any], version: int) -> None:
        """Bring a queue of an older schema version up to date, step by step, in the
        caller's transaction. The first step does nothing where DDL applied by hand (which
        registered version 1) made the result column already."""
        if version == SCHEMA_VERSION:
            return
        steps: list[str] = []
        if version < 2:
            steps += self._q.upgrade_from_1
        if version < 3:
            old = sql.object_names(self.name, version)
            keys = {
                role: self._found(conn, sql.PRIMARY_KEY, old[table], f"primary key of {table}")
                for role, table in sql.PRIMARY_KEYS
            }
            sequence = self._found(conn, self._sql["sequence"], None, "id sequence")
            steps += sql.upgrade_from_2(self._q, keys, sequence)
        if version < 5:
            steps += self._q.upgrade_from_4
        self._apply_upgrade(conn, steps, sql.SET_SCHEMA_VERSION, version, SCHEMA_VERSION)

    def _found(
        self, conn: psycopg.Connection[Any], statement: str, table: str | None, what: str
    ) -> str:
        """The one value ``statement`` finds (about ``table``, if given), for an upgrade."""
        row = conn.execute(statement, () if table is None else (sql.quote(table),)).fetchone()
        if row is None or row[0] is None:
            raise StorageError(
                f"cannot upgrade queue {self.name!r} in {self.path!r}: its {what} is missing",
                ErrorKind.STORAGE,
            )
        return str(row[0])

    def _refuse_taken_names(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse a new queue whose table another queue's object has: a queue still using
        the names of an older sqqueue, or any other table."""
        exists = conn.execute(sql.TABLE_EXISTS, (sql.quote(self.name),)).fetchone()
        if not (exists and exists[0]):
            return
        for other, version in conn.execute(sql.REGISTERED_VERSIONS):
            if self.name in sql.object_names(other, version).values() and other != self.name:
                raise StorageError(
                    f"cannot create queue {self.name!r} in {self.path!r}: {self.name!r} is a "
                    f"table or index of queue {other!r}, which still uses the names of an "
                    f"older sqqueue; open queue {other!r} once to rename them, then create "
                    f"{self.name!r}",
                    ErrorKind.INVALID_INPUT,
                )
        raise StorageError(
            f"table {self.name!r} exists in {self.path!r} but is not a sqqueue queue; "
            "choose another table_name",
            ErrorKind.INVALID_INPUT,
        )

    def ddl(self) -> list[str]:
        """The statements that create this queue, for teams that run migrations themselves."""
        return sql.schema_script(self._q)

    # -- operations ----------------------------------------------------------------------

    def _notify(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(self._sql["notify"])  # delivered at commit, to every listener

    def _now(self) -> float | None:
        return None if self._server_clock is None else float(self._server_clock())

    # -- inserts: the plan is SQLBackend's; these run its statements -----------------

    plain_batch_alone = True  # insert_many: the whole batch in one statement

    def _run_insert(
        self,
        started: float | None,
        insert: Callable[[psycopg.Connection[Any], Sequence[NewMessage]], list[int]],
        messages: Sequence[NewMessage],
        alone: bool,
    ) -> list[int]:
        return self._transact(lambda conn: insert(conn, messages), True, alone, started)

    def _insert_plain(
        self, conn: psycopg.Connection[Any], messages: Sequence[NewMessage]
    ) -> list[int]:
        # Each statement also wakes the listeners (at commit). Arrays cost more to send
        # than a single message's values, so one message goes alone.
        rows = [_values(m) for m in messages]
        if len(rows) == 1:
            return [int(self._one(conn, "insert_one", {**rows[0], "now": self._now()})[0])]
        many: dict[str, Any] = {key: [row[key] for row in rows] for key in rows[0]}
        return [int(i) for i in self._one(conn, "insert_many", {**many, "now": self._now()})[0]]

    def _lock_insert(self, conn: psycopg.Connection[Any], messages: Sequence[NewMessage]) -> None:
        if self.policy.max_depth is not None:
            conn.execute(sql.ADVISORY_LOCK, (f"{self.name}/depth",))
        # Locks in a fixed order, so two producers can never deadlock on them.
        for group in sorted({m.group_key for m in messages if m.group_key is not None}):
            conn.execute(self._sql["group_lock"], {"group_key": group})

    def _take_key(
        self, conn: psycopg.Connection[Any], key: str, now: float | None
    ) -> tuple[int | None, int | None]:
        # Taken at once for the new message's id (ON CONFLICT DO NOTHING), so that racing
        # producers see one winner without a serialisation failure.
        new_id = int(self._one(conn, "next_id")[0])
        dedup = {"key": key, "id": new_id, "window": self.policy.dedup_window, "now": now}
        if self._one(conn, "dedup_claim", dedup) is None:
            # The key is taken (this waited for a concurrent producer to commit).
            holder, expires, fresh = self._one(conn, "dedup_get", dedup)
            if self._key_alive(conn, holder, bool(expires), bool(fresh)):
                return int(holder), None
            conn.execute(self._sql["dedup_set"], dedup)
        return None, new_id

    def _early_id(self, conn: psycopg.Connection[Any]) -> int | None:
        return int(self._one(conn, "next_id")[0])  # (_take_key takes its ids so)

    def _insert_row(
        self,
        conn: psycopg.Connection[Any],
        message: NewMessage,
        reserved: int | None,
        now: float | None,
    ) -> int:
        params = {**_values(message), "id": reserved, "now": now, "group_key": message.group_key}
        row = conn.execute(self._sql["insert"], params).fetchone()
        assert row is not None
        return int(row[0])

    def _claim_alone(self, limit: int, lease: float, token: int) -> list[StoredMessage] | None:
        params = {"lease": lease, "token": token, "limit": limit}
        rows = self._run_alone(
            lambda conn: conn.execute(
                self._sql["claim_probe"], {**params, "now": self._now()}
            ).fetchall(),
            write=True,
        )
        if rows[0][-1]:
            return None  # something to fold first (rare): fold and claim in one transaction
        return [self._message(row[:-1]) for row in rows if row[0] is not None]

    def _complete_alone(self, message_id: int, token: int | None) -> bool:
        params = {"id": message_id, "token": token}
        row = self._run_alone(
            lambda conn: self._one(conn, "complete_counted", {**params, "now": self._now()}),
            write=True,
        )
        return row is not None and bool(row[0])

    def _complete_all(self, refs: Sequence[tuple[int, int | None]]) -> bool:
        params = {
            "ids": [message_id for message_id, _ in refs],
            "tokens": [token for _, token in refs],
            "n": len(refs),
        }
        row = self._run_alone(
            lambda conn: self._one(conn, "complete_all", {**params, "now": self._now()}),
            write=True,
        )
        return row is not None and row[0] == len(refs)

    def _home_schema(self) -> str:
        """The schema of the queue's tables: ``schema``, else where its own connections
        find them (looked up once)."""
        if self.schema is not None:
            return self.schema
        if self._home is None:
            row = self._read(lambda conn: conn.execute(sql.CURRENT_SCHEMA).fetchone())
            if row is None or row[0] is None:
                raise StorageError(
                    f"no schema on the search path of {self.path!r} holds queue {self.name!r}",
                    ErrorKind.STORAGE,
                )
            self._home = str(row[0])
        return self._home

    def enqueue_in(self, conn: Any, messages: Sequence[NewMessage]) -> list[int]:
        if not isinstance(conn, psycopg.Connection):
            raise StorageError(
                "conn must be your psycopg.Connection (or a SQLAlchemy Session or Connection "
                f"on psycopg), got {type(conn).__name__}",
                ErrorKind.INVALID_INPUT,
            )
        self._refuse_writes()
        status = conn.info.transaction_status
        # Outside autocommit, psycopg begins the transaction at the first statement, so
        # one that has not run anything yet is joined by ours.
        idle_in_own = status == psycopg.pq.TransactionStatus.IDLE and not conn.autocommit
        if status != psycopg.pq.TransactionStatus.INTRANS and not idle_in_own:
            raise StorageError(
                "conn has no open transaction it can share: use 'with conn.transaction():' "
                "(or turn autocommit off), and roll back a failed transaction first, so the "
                "message commits with your rows",
                ErrorKind.INVALID_INPUT,
            )
        home = self._home_schema()
        try:
            # The caller's connection looks for tables on its own search path: the queue's
            # schema stands in for it while our statements run, then the caller's path
            # is given back (for the rest of the caller's transaction, as SET LOCAL does).
            shown = conn.execute(sql.SHOW_SEARCH_PATH).fetchone()
            conn.execute(sql.LOCAL_SEARCH_PATH, ('"' + home.replace('"', '""') + '"',))
            try:
                return self._insert(conn, messages)
            finally:
                # (Not in a failed transaction: the caller rolls it back, and our path.)
                if conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
                    conn.execute(sql.LOCAL_SEARCH_PATH, (shown[0] if shown else "",))
        except psycopg.Error as exc:
            raise classify(exc, self.path, self._role) from exc

    def purge(self, states: Sequence[str], older_than: float | None) -> int:
        # A consumer may delete the queue's rows (that is how it completes messages), and
        # PostgreSQL cannot tell that from a purge: purging is refused unless the role
        # administers the queue.
        self._refuse_writes()
        if not self._read(lambda conn: self._one(conn, "may_administer")[0]):
            raise StorageError(
                f"{self._role_shown()} may not purge queue {self.name!r} in {self.path!r}: "
                "purging is for the queue's administrator (a role with DELETE on its dead "
                f"letters); {GRANTS_HINT}",
                ErrorKind.READ_ONLY,
            )
        return super().purge(states, older_than)

    def _lock_expired(self, conn: psycopg.Connection[Any], params: dict[str, Any]) -> bool:
        """Lock the expired rows (their ids into ``params``), skipping those another
        fold holds right now."""
        params["ids"] = [r[0] for r in conn.execute(self._sql["lock_expired"], params)]
        return bool(params["ids"])

    # -- notifications -----------------------------------------------------------------

    def watch(self) -> None:
        """Start the listener that wakes this queue's waiters (one per queue object)."""
        self._get_pool()  # raises CLOSED once closed; re-creates after fork
        with self._pool_lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=_listen,
                    args=(weakref.ref(self),),
                    name=f"sqqueue-listen-{self.name}",
                    daemon=True,
                )
                self._listener.start()

    def listen_target(self) -> tuple[str, str | None, str, Any, float] | None:
        """For the listener thread (see _listen): the URL, schema and queue name to listen
        for, the wake-up signal and a connect timeout; None once closed."""
        if self._closed:
            return None
        timeout = self._connect_timeout(time.monotonic() + 5)
        return self.url, self.schema, self.name, signal_for(self.wakeup_key), timeout

    def mark_listening(self, listening: bool, pid: int = 0) -> None:
        """Record whether the listener listens now (and its server process, for tests)."""
        self._listening = listening
        if pid:
            self._listener_pid = pid

    # -- inspection and maintenance ----------------------------------------------------------

    def maintain(self, rounds: int = 1) -> None:
        self._prune()  # autovacuum returns the space on PostgreSQL

    # -- hooks of SQLBackend ---------------------------------------------------------------

    def _message(self, row: Sequence[Any]) -> StoredMessage:
        return _message(row)

    def _dead(self, row: Sequence[Any]) -> StoredDeadLetter:
        return _dead(row)

    def _done(self, row: Sequence[Any]) -> StoredDone:
        return _done(row)

    def _store_text(self, text: str | None) -> str | None:
        return text.replace("\x00", _NUL_STANDIN) if text and "\x00" in text else text

    def _copy_columns(self, table: str) -> list[str]:
        columns = self._column_cache.get(table)
        if columns is None:
            statement = sql.columns_sql(self._q, table)
            found = self._read(lambda conn: conn.execute(statement).description)
            names = [d.name for d in found or ()]
            # The payload's two columns are one "payload" to a copy, where body_text was.
            columns = [
                "payload" if c == sql.PAYLOAD_COLUMNS[0] else c
                for c in names
                if c != sql.PAYLOAD_COLUMNS[1]
            ]
            self._column_cache[table] = columns
        return columns

    def _stored_columns(self, table: str) -> list[str]:
        """The copy columns as the table has them (the payload as its two columns)."""
        stored: list[str] = []
        for column in self._copy_columns(table):
            stored.extend(sql.PAYLOAD_COLUMNS if column == "payload" else (column,))
        return stored

    def _export(
        self, conn: psycopg.Connection[Any], table: str, after: Any, limit: int, exact: bool = False
    ) -> list[dict[str, Any]]:
        stored = self._stored_columns(table)
        statement = sql.export_sql(self._q, table, stored, exact)
        rows = []
        for raw in conn.execute(statement, {"after": after, "limit": limit}):
            row = dict(zip(stored, raw, strict=True))
            if "body_text" in row:
                text, body = row.pop("body_text"), row.pop("body_bytes")
                row["payload"] = _data(text, body, row.get("encoding", ""))
            if row.get("last_error"):
                row["last_error"] = _restore_nul(row["last_error"])
            rows.append(row)
        return rows

    def _import_one(self, conn: psycopg.Connection[Any], table: str, row: dict[str, Any]) -> None:
        values = dict(row)
        if "payload" in values:
            values["body_text"], values["body_bytes"] = _body(values.pop("payload"))
        if values.get("last_error"):
            values["last_error"] = self._store_text(values["last_error"])
        conn.execute(sql.import_sql(self._q, table, list(values)), values)

    def _reserve_ids(self, conn: psycopg.Connection[Any], high: int) -> None:
        conn.execute(self._sql["raise_sequence"], {"high": high})

    # The count trigger counts every row inserted as pending (and as an enqueue).
    def _count_revived(self, conn: psycopg.Connection[Any]) -> None:
        self._bump(conn, enqueued=-1)  # a revival is not a new enqueue

    def _count_imported(self, conn: psycopg.Connection[Any], messages: int, dead: int) -> None:
        self._bump(conn, enqueued=dead)

    def _lock_group(self, conn: psycopg.Connection[Any], group: str | None) -> None:
        if group is not None:
            conn.execute(self._sql["group_lock"], {"group_key": group})

    def _other(self, target: str) -> Any:
        return sql.render(validate_queue_name(target), pinned=self._server_clock is not None)

    def _redrive_into(self, other: Any) -> str:
        return sql.redrive_into(other, self._q)

    def vacuum(self, conn: Any = None) -> None:
        """``VACUUM`` the queue's tables (PostgreSQL reclaims space with autovacuum too)."""

        def run(c: psycopg.Connection[Any]) -> None:
            for table in ("q", "dlq", "done", "dedup"):
                c.execute(sql.VACUUM_TABLE.format(table=self._q.subst[table]))

        self._refuse_writes()
        if conn is not None:
            raise StorageError(
                "vacuum_database(conn) takes no connection on PostgreSQL", ErrorKind.INVALID_INPUT
            )
        # VACUUM cannot run inside a transaction: each statement is its own.
        self._run_alone(run, write=False)

    def checkpoint(self, conn: Any = None) -> None:
        """Nothing to do: PostgreSQL checkpoints its WAL by itself."""
        self._get_pool()
        self._refuse_writes()


def _open_for(ref: weakref.ReferenceType[PostgresBackend]) -> Any:
    """What the listener needs of its queue object, or None once it is closed or gone
    (the listener holds it weakly: see _listen)."""
    backend = ref()
    return None if backend is None else backend.listen_target()


def _mark(ref: weakref.ReferenceType[PostgresBackend], listening: bool, pid: int = 0) -> None:
    backend = ref()
    if backend is not None:
        backend.mark_listening(listening, pid)


def _listen(ref: weakref.ReferenceType[PostgresBackend]) -> None:
    """The thread that wakes a queue object's waiters on its notifications, until the
    object is closed or gone. It holds the object weakly: one nobody closed is still
    collected, with its connections, once nothing else refers to it."""
    backoff = 0.05
    pid = os.getpid()
    while pid == os.getpid():
        found = _open_for(ref)
        if found is None:
            return
        url, schema, name, signal, connect_timeout = found
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout)
        except psycopg.Error:
            # The server is down: try again soon, so that waiting consumers are woken
            # by notifications again within about half a second of its return.
            _mark(ref, listening=False)
            # No notifications meanwhile: waiters look for themselves at each retry.
            signal.nudge()
            time.sleep(backoff)
            backoff = min(backoff * 2, _LISTEN_BACKOFF)
            continue
        try:
            conn.execute(sql.LISTEN)
            if schema is not None:
                conn.execute(sql.SET_SEARCH_PATH.format(schema=schema))
            # Producers notify "<schema>.<queue>": same-named queues in other schemas
            # do not wake this one.
            # Whatever was committed before LISTEN took effect was not notified to us:
            # wake the waiters once so they look.
            signal.notify()
            current = conn.execute(sql.CURRENT_SCHEMA).fetchone()
            expected = f"{current[0] if current else 'public'}.{name}"
            _mark(ref, listening=True, pid=conn.info.backend_pid)
            backoff = 0.05
            while _open_for(ref) is not None:
                for note in conn.notifies(timeout=1.0):
                    if note.payload == expected:
                        signal.notify()
        except Exception:
            logger.debug("queue %r: listener lost its connection", name, exc_info=True)
        finally:
            _mark(ref, listening=False)
            with contextlib.suppress(Exception):
                conn.close()
