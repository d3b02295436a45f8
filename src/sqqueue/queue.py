"""The queue: delivery semantics on top of a storage backend.

:class:`Queue` holds everything that does not depend on the database (argument checks,
payload encoding, leases and fencing, Results, metrics, maintenance cadence);
:class:`SQLiteQueue` is that logic bound to the SQLite backend.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar

from . import config, tools
from .backends.base import (
    Backend,
    NewMessage,
    Outcome,
    Policy,
    StoredDeadLetter,
    StoredDone,
    StoredMessage,
)
from .backends.sqlite import SQLiteBackend, Synchronous
from .config import UNSET
from .encryption import EncryptionKey
from .exceptions import (
    CompletionError,
    DequeueError,
    EnqueueError,
    ErrorKind,
    QueueError,
    QueueFull,
    RequeueError,
)
from .message import Item, Message, to_datetime
from .metrics import Metrics, NullMetrics, StatsdMetrics
from .names import validate_queue_name
from .result import Err, Ok, Result
from .retry import RetryPolicy
from .serializers import Codec, Encoded, Serializer, json_text
from .stats import QueueStats
from .targets import parse_target
from .wakeup import signal_for

__all__ = [
    "LISTABLE_STATES",
    "PURGEABLE_STATES",
    "PostgresQueue",
    "Queue",
    "SQLiteQueue",
    "connect",
    "list_queues",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
QE = TypeVar("QE", bound=QueueError)

Clock = Callable[[], float]
MessageRef = Message | int
_tuple_new = tuple.__new__  # builds a named tuple without its __new__, a Python function

#: Settings of SQLite queues that PostgreSQL queues refuse as arguments, and why. (From
#: the environment or a config file, which may serve both backends, they are ignored.)
_SQLITE_ONLY = {
    "db_path": "the database is the url",
    "synchronous": "durability is the server's synchronous_commit setting",
    "vacuum_on_start": "PostgreSQL's autovacuum looks after the tables",
    "encryption_key": "encryption at rest is for SQLite files; on PostgreSQL use the "
    "server's disk encryption and TLS (sslmode=verify-full in the URL)",
}
#: Arguments of PostgreSQL queues that SQLite queues refuse, and why.
_POSTGRES_ONLY = {
    "schema": "an SQLite file has no schemas",
    "pool_size": "SQLite queues open one connection per thread",
}

# Limits that catch mistakes (a delay in milliseconds, a negative timeout) early.
MIN_PRIORITY, MAX_PRIORITY = -(2**31), 2**31 - 1
MAX_DELAY = 10 * 366 * 86400.0  # ten years
MAX_VISIBILITY_TIMEOUT = 7 * 86400.0  # a week; longer work extends its lease
MAX_ATTEMPTS = 1_000_000
MAX_BATCH_SIZE = 10_000
MAX_ID = 2**63 - 1  # SQLite's largest integer
#: states ``list_messages`` and ``purge`` accept
# The states of the glossary; "pending" is ready and delayed together (0.1.0's word).
LISTABLE_STATES = (
    "ready", "delayed", "waiting", "processing", "dead", "done", "pending", "all"
)  # fmt: skip
PURGEABLE_STATES = ("ready", "delayed", "waiting", "processing", "dead", "done", "pending")
MAX_ERROR_TEXT = 8_192
# Leases a queue object remembers for calls by bare id (about 10 MB at most). Past that it
# forgets the oldest, and from then on fences bare ids by the lease's issuer (see _ref).
_LEASE_MEMORY = 100_000
# A lease token is this queue object's issuer number (a random 30 bits, new in each process)
# and a count of its claims (32 bits): a token says which object issued it.
_ISSUER_SHIFT = 32
# Leases a queue object ended itself (completed, failed, gave back), remembered so that a
# second call on the same Message says what happened instead of "expired".
_ENDED_MEMORY = 10_000
MAX_WAIT = 86400.0
_NO_RESULT: Any = object()  # complete() without a result (None is a result: JSON null)
# Producers waiting for room (max_depth) poll from every 2 ms up to every 50 ms; in-process
# completions wake them at once.
_ROOM_POLL_MIN, _ROOM_POLL_MAX = 0.002, 0.05
# A waiting consumer sleeps until it is woken (an enqueue in this process, or the watcher
# seeing another connection's commit: see wakeup.py) or something falls due, re-reading
# the clock at least this often while something is due (with nothing due, a clock jump
# changes nothing, and an idle consumer sleeps until woken or its wait ends).
_RECHECK = 1.0

# A wait is a small plan of steps that a driver carries out: ("call", fn) runs a storage
# call, ("sleep", seconds, seq, changes) waits for a wake-up (the signal's seq or changes
# moving past these). The sync queue runs the steps inline; the asyncio queue runs calls
# in a thread and sleeps on the event loop: one logic, two drivers.
Step: TypeAlias = (
    tuple[Literal["call"], Callable[[], Any]] | tuple[Literal["sleep"], float, int, int]
)

_LOG_LEVEL_BY_KIND = {
    ErrorKind.LOCKED: logging.WARNING,
    ErrorKind.DISK_FULL: logging.ERROR,
    ErrorKind.READ_ONLY: logging.ERROR,
    ErrorKind.CORRUPT: logging.ERROR,
    ErrorKind.STORAGE: logging.ERROR,
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(value: object, what: str, *, minimum: float, maximum: float, strict: bool) -> float:
    """Validate a duration in seconds (number or timedelta); raise QueueError if invalid."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise QueueError(
            f"{what} must be a number of seconds, got {type(value).__name__}",
            ErrorKind.INVALID_INPUT,
        )
    seconds = float(value)
    too_small = seconds <= minimum if strict else seconds < minimum
    if not math.isfinite(seconds) or too_small or seconds > maximum:
        low = f"> {_plain(minimum)}" if strict else f">= {_plain(minimum)}"
        raise QueueError(
            f"{what} must be {low} and <= {_plain(maximum)} seconds{_in_days(maximum)}, "
            f"got {value!r}",
            ErrorKind.INVALID_INPUT,
        )
    return seconds


def _plain(number: float) -> str:
    """A number as people write it: 316224000, not 3.16224e+08."""
    return str(int(number)) if float(number).is_integer() else f"{number:.15g}"


def _in_days(seconds: float) -> str:
    """`` (N days)`` for a limit of a day or more, which is easier to read in days."""
    days = seconds / 86400
    return f" ({int(days)} days)" if days >= 1 and days.is_integer() else ""


def _bounded_int(value: object, what: str, low: int, high: int) -> int:
    if not _is_int(value):
        raise QueueError(
            f"{what} must be an int, got {type(value).__name__}", ErrorKind.INVALID_INPUT
        )
    assert isinstance(value, int)
    if not low <= value <= high:
        raise QueueError(
            f"{what} must be between {low} and {high}, got {value}", ErrorKind.INVALID_INPUT
        )
    return value


def _full_advice(waited: float, conn: object) -> str:
    """What to do about a full queue, after waiting ``waited`` seconds (or not at all)."""
    if conn is not None:
        return "; retry later (enqueue_in cannot wait: your transaction holds the lock)"
    if waited:
        return (
            f" after waiting {_plain(waited)} s for room; consumers are not keeping up: "
            "add consumers, raise max_depth, or wait longer"
        )
    return ". Retry later, or pass wait= to block until there is room"


def _no_delay(_attempts: int) -> float:
    return 0.0


def _driver_connection(conn: Any) -> Any:
    """The database driver's connection behind ``conn``, for ``enqueue_in``: ``conn``
    itself, or what a SQLAlchemy ``Session``, ``Connection`` or pooled connection wraps.

    Duck-typed, so the core never imports SQLAlchemy. A SQLAlchemy ``Connection`` must be
    in a transaction: its ``commit()`` does nothing otherwise, and the message would be
    rolled back when the connection goes back to the pool.
    """
    module = type(conn).__module__ or ""
    if not module.startswith("sqlalchemy."):
        return conn
    if module.startswith("sqlalchemy.ext.asyncio"):
        raise QueueError(
            "enqueue_in takes a synchronous connection; for SQLAlchemy's asyncio API, "
            "enqueue from a synchronous Session or Connection on the same database",
            ErrorKind.INVALID_INPUT,
        )
    if callable(getattr(conn, "get_bind", None)):
        conn = conn.connection()  # a Session: the connection of its transaction (begun now)
    if callable(getattr(conn, "in_transaction", None)) and hasattr(conn, "connection"):
        if not conn.in_transaction():
            raise QueueError(
                "the SQLAlchemy connection has no transaction yet: open one first (with "
                "engine.begin() as conn:, or conn.begin()) so the message commits with "
                "your rows",
                ErrorKind.INVALID_INPUT,
            )
        conn = conn.connection  # the pool's proxy of the driver connection
    driver = getattr(conn, "driver_connection", None) or getattr(conn, "dbapi_connection", None)
    if driver is None:
        raise QueueError(
            f"cannot find the database connection inside SQLAlchemy's {type(conn).__name__}; "
            "pass a Session, a Connection, or the driver's connection "
            "(conn.connection.driver_connection)",
            ErrorKind.INVALID_INPUT,
        )
    return driver


def _error_text(exc: BaseException) -> str:
    """The last line of a traceback: ``ValueError: bad input``. Never raises, even for an
    exception whose ``__str__`` does."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception as broken:
        return f"{name} (its message could not be read: str() raised {type(broken).__name__})"
    return f"{name}: {text}" if text else name


# The stored fields of a row by the type a reader gets for each. A row edited by hand or
# damaged can hold anything (SQLite columns take any value); such a field is reported by
# name instead of failing the call that reads it.
_TIME_FIELDS = frozenset(
    {"created_at", "visible_at", "lease_expires_at", "expires_at", "updated_at", "dead_at",
     "completed_at"}
)  # fmt: skip
_INT_FIELDS = frozenset(
    {"priority", "attempts", "max_attempts", "prior_attempts", "lease_token", "checksum"}
)
_TEXT_FIELDS = frozenset({"encoding", "last_error", "group_key", "status"})


def _shown(value: object) -> str:
    """A short repr of a stored value, for error texts and markers."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_problem(name: str, value: object) -> str | None:
    """Why a stored field cannot be read as its type; None when it can (NULL included)."""
    if value is None:
        return None
    if name in _TIME_FIELDS:
        try:
            to_datetime(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError, OSError):
            return f"{name} is {_shown(value)}, not a time"
    elif name in _INT_FIELDS and type(value) is not int:
        return f"{name} is {_shown(value)}, not an integer"
    elif name in _TEXT_FIELDS and type(value) is not str:
        return f"{name} is {_shown(value)}, not text"
    return None


def _readable(name: str, value: Any) -> Any:
    """A stored field for a listing: as its type (times as datetimes), or, when it cannot
    be read as one, the marker ``"<invalid: VALUE>"``."""
    if _field_problem(name, value) is not None:
        return f"<invalid: {_shown(value)}>"
    return to_datetime(value) if name in _TIME_FIELDS else value


def _unreadable(row: StoredMessage, exc: Exception) -> QueueError:
    """The error for a row that cannot become a Message, naming its bad fields."""
    problems = [
        problem
        for name, value in zip(row._fields, row, strict=True)
        if (problem := _field_problem(name, value)) is not None
    ]
    reason = "; ".join(problems) if problems else _error_text(exc)
    return QueueError(f"stored row cannot be read: {reason}", ErrorKind.CORRUPT, row.id)


class _Prepared(NamedTuple):
    settings: dict[str, Any]
    sources: dict[str, str]
    metrics: Metrics | None
    policy: Policy
    lock_timeout: float
    max_attempts: int


def _prepare(explicit: dict[str, Any], clock: Clock | None) -> _Prepared:
    """Resolve settings (argument > env > file > default) and check them; raises
    ValueError with what to fix."""
    resolved = config.resolve(explicit)
    settings = resolved.values
    timeout = _config(
        lambda: _seconds(
            settings["lock_timeout"], "lock_timeout", minimum=0, maximum=86400, strict=True
        )
    )
    max_attempts = _config(
        lambda: _bounded_int(
            settings["default_max_attempts"], "default_max_attempts", 1, MAX_ATTEMPTS
        )
    )
    metrics: Metrics | None = None
    if settings["statsd_host"] is not None:
        port = settings["statsd_port"]
        _config(lambda: _bounded_int(port, "statsd_port", 1, 65535))
        metrics = StatsdMetrics(
            settings["statsd_host"], port, settings["statsd_prefix"], settings["table_name"]
        )
    if clock is not None and not callable(clock):
        raise ValueError("clock must be a callable returning Unix seconds")
    policy = _config(lambda: _policy(settings))
    return _Prepared(settings, resolved.sources, metrics, policy, timeout, max_attempts)


def _policy(settings: dict[str, Any]) -> Policy:
    """The storage policy from resolved settings; raises QueueError for bad values."""
    window = settings["dedup_window"]
    if window == "exists":
        window = None
    elif window is not None:
        window = _seconds(window, "dedup_window", minimum=0, maximum=MAX_DELAY, strict=True)
    on_expire = settings["on_expire"]
    if on_expire not in ("dead", "drop"):
        raise QueueError(
            f"on_expire must be 'dead' or 'drop', got {on_expire!r}", ErrorKind.INVALID_INPUT
        )
    retention = settings["retention"]
    if retention is not None:
        retention = _seconds(retention, "retention", minimum=0, maximum=1e12, strict=True)
    keep = settings["retention_max"]
    if keep is not None:
        keep = _bounded_int(keep, "retention_max", 1, 2**62)
    depth = settings["max_depth"]
    if depth is not None:
        depth = _bounded_int(depth, "max_depth", 1, 2**62)
    return Policy(
        dedup_window=window,
        expired_to_dlq=on_expire == "dead",
        retention=retention,
        retention_max=keep,
        max_depth=depth,
    )


def _config(check: Callable[[], T]) -> T:
    """Run a validator at construction time, where bad settings raise ValueError."""
    try:
        return check()
    except QueueError as exc:
        raise ValueError(str(exc)) from None


class Queue:
    """A persistent queue with leases, retries and a dead-letter queue.

    Use :class:`SQLiteQueue` (or, later, other backends); this class holds the logic they
    share. Every method that returns a :class:`~sqqueue.Result` returns ``Err`` for
    expected failures and never raises.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        vacuum_threshold: int = 1000,
        default_max_attempts: int = 5,
        default_visibility_timeout: float = 300.0,
        default_priority: int = 0,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        retry: RetryPolicy | None = None,
        default_ttl: float | timedelta | None = None,
    ) -> None:
        self._backend = backend
        self.name = backend.name
        #: opened with read_only=True: reads work, every call that would write returns
        #: Err(kind=READ_ONLY), and nothing on disk changes
        self.read_only = backend.read_only
        self.vacuum_threshold = _config(
            lambda: _bounded_int(vacuum_threshold, "vacuum_threshold", 0, 2**31)
        )
        self.default_max_attempts = _config(
            lambda: _bounded_int(default_max_attempts, "default_max_attempts", 1, MAX_ATTEMPTS)
        )
        self.default_visibility_timeout = _config(
            lambda: _seconds(
                default_visibility_timeout,
                "default_visibility_timeout",
                minimum=0,
                maximum=MAX_VISIBILITY_TIMEOUT,
                strict=True,
            )
        )
        self.default_priority = _config(
            lambda: _bounded_int(default_priority, "default_priority", MIN_PRIORITY, MAX_PRIORITY)
        )
        if clock is not None and not callable(clock):
            raise ValueError("clock must be a callable returning Unix seconds")
        self._codec = Codec(serializer)
        self._clock: Clock = clock or time.time
        self._metrics: Metrics = metrics or NullMetrics()
        # Whether metrics go anywhere: hot paths skip the calls to NullMetrics.
        self._measured = not isinstance(self._metrics, NullMetrics)
        self._op_count = 0  # write operations since the last upkeep round (0.1.0's count)
        self._cached_defaults: tuple[Any, Any, Any, tuple[int, int, float | None]] | None = None
        self._work = 0  # messages written, for the maintenance cadence
        self._upkeep_owed = 0  # upkeep rounds put off by writes in the caller's transaction
        self._leases: dict[int, int] = {}
        self._ended: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._leases_lock = threading.Lock()
        self._forgot_leases = False  # set once _LEASE_MEMORY overflowed: see _ref
        self._issuer = random.getrandbits(30) or 1
        self._issuer_pid = os.getpid()  # the issuer number is drawn again in a forked child
        self._claim_count = itertools.count(1)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValueError("retry must be a sqqueue.RetryPolicy")
        self.retry = retry or RetryPolicy.immediate()
        self.default_ttl = (
            None
            if default_ttl is None
            else _config(
                lambda: _seconds(default_ttl, "ttl", minimum=0, maximum=MAX_DELAY, strict=True)
            )
        )
        self._signal = signal_for(backend.wakeup_key)
        # Producers blocked on a full queue wait on their own signal, so completions do
        # not wake idle consumers.
        self._room = signal_for(backend.wakeup_key + ":room")

    def _adopt(
        self,
        backend: Backend,
        prepared: _Prepared,
        serializer: Serializer | None,
        clock: Clock | None,
    ) -> None:
        """Finish construction from resolved settings (for backend-specific subclasses)."""
        settings = prepared.settings
        try:
            Queue.__init__(
                self,
                backend,
                vacuum_threshold=settings["vacuum_threshold"],
                default_max_attempts=settings["default_max_attempts"],
                default_visibility_timeout=settings["default_visibility_timeout"],
                default_priority=settings["default_priority"],
                serializer=serializer,
                clock=clock,
                metrics=prepared.metrics,
                retry=settings["retry"],
                default_ttl=settings["default_ttl"],
            )
        except BaseException:
            backend.close()
            raise
        self.settings = settings
        self.setting_sources = prepared.sources
        self.table_name = settings["table_name"]

    # -- context management --------------------------------------------------------------

    def close(self) -> None:
        """Close the queue's database connections. Further calls return ``Err(CLOSED)``.

        Safe while other threads are inside calls: those finish (or return
        ``Err(CLOSED)``), and a connection in use is closed when its call ends.
        """
        self._backend.close()
        self._signal.nudge()  # consumers waiting on this object look again, and stop

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- plumbing -------------------------------------------------------------------------

    def _guard(
        self, error_cls: type[QE], action: str, fn: Callable[[], Result[T, QE]]
    ) -> Result[T, QE]:
        """Run ``fn``; turn any QueueError into ``Err(error_cls)``. Never raises Exception."""
        try:
            return fn()
        except Exception as exc:
            return self._failed(error_cls, action, exc)

    def _failed(self, error_cls: type[QE], action: str, exc: Exception) -> Err[Any, QE]:
        """The ``Err`` for an exception raised by ``action`` (see ``_guard``); the hottest
        calls inline ``_guard`` as ``try: ... except Exception: return self._failed(...)``."""
        if isinstance(exc, QueueError):
            # The caller gets the Err; the log only speaks up for trouble with the database
            # (a write refused by a queue opened read-only is the caller's own choice).
            level = _LOG_LEVEL_BY_KIND.get(exc.kind, logging.DEBUG)
            if self.read_only and exc.kind is ErrorKind.READ_ONLY:
                level = logging.DEBUG
            logger.log(level, "queue %r: %s failed: %s", self.name, action, exc)
            if isinstance(exc, error_cls) and type(exc) is not error_cls:
                return Err(exc)  # a more specific error (QueueFull) reaches the caller as is
            return Err(error_cls(f"{action} failed: {exc}", exc.kind, exc.message_id))
        # The Result promise: report, do not raise.
        logger.error("queue %r: %s failed unexpectedly", self.name, action, exc_info=exc)
        return Err(error_cls(f"{action} failed unexpectedly: {exc!r}", ErrorKind.STORAGE))

    def _count_operation(self, messages: int = 1, upkeep: bool = True) -> None:
        """Count a write; every ``vacuum_threshold`` messages written, run bounded upkeep.

        Upkeep follows messages, not calls, so a queue drained in batches gives its space
        back as fast as one drained message by message. ``upkeep=False`` (a write inside
        the caller's own transaction) only counts: the upkeep it would have run needs the
        write lock that transaction holds, so it is left to this object's next call.
        """
        self._op_count += 1  # racy under threads, like the cadence: only counts can drift
        if not self.vacuum_threshold:
            return
        before = self._work
        self._work = before + messages
        rounds = self._work // self.vacuum_threshold - before // self.vacuum_threshold
        if not upkeep:
            self._upkeep_owed += rounds
            return
        if rounds or self._upkeep_owed:
            rounds, self._upkeep_owed = rounds + self._upkeep_owed, 0
            self._op_count = 0
            try:
                self._backend.maintain(rounds)
            except QueueError as exc:
                # Closed by another thread meanwhile: nothing to maintain any more.
                level = logging.DEBUG if exc.kind is ErrorKind.CLOSED else logging.WARNING
                logger.log(level, "queue %r: maintenance skipped: %s", self.name, exc)
        if self._measured and self._metrics.wants_gauges(time.monotonic()):
            try:
                self._metrics.gauge("size", self._backend.count_pending())
            except QueueError:
                logger.debug("queue %r: size gauge skipped", self.name, exc_info=True)

    def _now(self) -> float:
        return float(self._clock())

    def _ref(self, message: object) -> tuple[int, int | None]:
        """(id, lease token) of a Message or an id this object may have leased."""
        if isinstance(message, Message):
            return message.id, message.lease_token
        if _is_int(message):
            assert isinstance(message, int)
            if not 0 <= message <= MAX_ID:
                raise QueueError(
                    f"message id {message} is out of range (0 to {MAX_ID})",
                    ErrorKind.INVALID_INPUT,
                    None,
                )
            with self._leases_lock:
                token = self._leases.get(message)
                if token is not None or not self._forgot_leases:
                    return message, token
            return message, self._own_lease(message)
        raise QueueError(
            f"expected a Message or a message id (int), got {type(message).__name__}",
            ErrorKind.INVALID_INPUT,
        )

    def _own_lease(self, message_id: int) -> int | None:
        """The token to act on ``message_id`` by bare id once this object has forgotten
        leases: that of a lease this object issued; none (the backend then reports what it
        finds) when nobody holds the message. A lease issued by another consumer is refused:
        this object may have held the message before and forgotten it, and acting on the
        other's lease would undo that consumer's work."""
        found = self._backend.lease_of(message_id)
        if found is None or found[0] != "processing":
            return None
        token = found[1]
        if token is not None and token >> _ISSUER_SHIFT == self._issuer:
            return token
        raise QueueError(
            f"message {message_id} is held by another consumer's lease, and this queue "
            f"object no longer remembers whether it held the message before (it had more "
            f"than {_LEASE_MEMORY:,} leases not yet finished, and forgot the oldest); nothing "
            "was changed. Pass the Message returned by dequeue to act on a lease exactly",
            ErrorKind.LEASE_LOST,
            message_id,
        )

    def _new_token(self) -> int:
        """A lease token: this object's issuer number, then the claim count."""
        if self._issuer_pid != os.getpid():  # a forked child's first claim
            self._issuer = random.getrandbits(30) or 1
            self._issuer_pid = os.getpid()
        return self._issuer << _ISSUER_SHIFT | (next(self._claim_count) & 0xFFFF_FFFF)

    def _remember(self, messages: Sequence[Message]) -> None:
        with self._leases_lock:
            for m in messages:
                if m.lease_token is not None:
                    self._leases.pop(m.id, None)
                    self._leases[m.id] = m.lease_token
            if len(self._leases) <= _LEASE_MEMORY:
                return
            while len(self._leases) > _LEASE_MEMORY:
                del self._leases[next(iter(self._leases))]
            if self._forgot_leases:
                return
            self._forgot_leases = True
        logger.warning(
            "queue %r: this queue object holds more than %d leases not yet finished and "
            "forgets the oldest; from now on a call by bare id acts only on a lease this "
            "object issued (pass the Message for exact fencing, or finish messages sooner)",
            self.name,
            _LEASE_MEMORY,
        )

    def _forget(self, refs: Sequence[tuple[int, int | None]], what: str) -> None:
        """Forget leases this object just ended, remembering ``what`` it did with each
        (a past-tense verb: "completed", "failed", ...) for :meth:`_outcome_error`."""
        with self._leases_lock:
            ended = self._ended
            for message_id, token in refs:
                self._leases.pop(message_id, None)
                if token is not None:
                    ended[token] = what
            while len(ended) > _ENDED_MEMORY:
                ended.popitem(last=False)

    def _ended_here(self, token: int | None) -> str | None:
        """What this object did with the lease ``token``, if it ended it itself."""
        if token is None:
            return None
        with self._leases_lock:
            return self._ended.get(token)

    def _outcome_error(
        self,
        outcome: Outcome,
        message_id: int,
        action: str,
        token: int | None = None,
        by_id: str = "",
    ) -> QueueError:
        """Explain why a call on one message did nothing. ``by_id`` is the call that does
        it by id, for a message back in the queue (see :meth:`_ended_error`)."""
        q = self.name
        done = self._ended_here(token)
        if done is not None:
            return self._ended_error(outcome, message_id, action, done, by_id)
        if outcome is Outcome.NOT_FOUND:
            return QueueError(
                f"message {message_id} is not in queue {q!r}: it was completed, or never existed",
                ErrorKind.NOT_FOUND,
                message_id,
            )
        if outcome is Outcome.DEAD:
            return QueueError(
                f"message {message_id} is in the dead-letter queue of {q!r}; "
                f"use reprocess_dead_letter({message_id}) to retry it",
                ErrorKind.WRONG_STATE,
                message_id,
            )
        if outcome is Outcome.PENDING:
            return QueueError(
                f"message {message_id} is pending, not being processed, so it cannot be "
                f"{action}; dequeue it first",
                ErrorKind.WRONG_STATE,
                message_id,
            )
        if outcome is Outcome.LEASE_LOST:
            return QueueError(
                f"message {message_id} was delivered to another consumer after this lease "
                "expired; nothing was changed. Extend leases for slow work",
                ErrorKind.LEASE_LOST,
                message_id,
            )
        return QueueError(
            f"the lease on message {message_id} has expired, so it cannot be {action}; "
            "it will be delivered again. Extend leases (extend()) for slow work",
            ErrorKind.LEASE_EXPIRED,
            message_id,
        )

    def _ended_error(
        self, outcome: Outcome, message_id: int, action: str, done: str, by_id: str
    ) -> QueueError:
        """Why a call on a lease this object already ended did nothing: say what it did,
        and where the message is now (nothing expired)."""
        said = f"this queue object already {done} message {message_id}, which ended its lease"
        if outcome is Outcome.NOT_FOUND:
            return QueueError(
                f"{said}; it is no longer in queue {self.name!r} (completed); nothing was changed",
                ErrorKind.NOT_FOUND,
                message_id,
            )
        if outcome is Outcome.DEAD:
            return QueueError(
                f"{said}; it is in the dead-letter queue now, so it cannot be {action}; use "
                f"reprocess_dead_letter({message_id}) to retry it",
                ErrorKind.WRONG_STATE,
                message_id,
            )
        if outcome is Outcome.LEASE_LOST:
            return QueueError(
                f"{said}; another consumer holds it now, so it cannot be {action} by this "
                "lease; nothing was changed",
                ErrorKind.LEASE_LOST,
                message_id,
            )
        then = f"; to do it now, pass its id: {by_id}" if by_id else ""
        return QueueError(
            f"{said}; it is back in the queue, not leased, so it cannot be {action} again "
            f"with that lease; nothing was changed{then}",
            ErrorKind.WRONG_STATE,
            message_id,
        )

    def _to_message(
        self, row: StoredMessage, when: Callable[[float | None], datetime | None] = to_datetime
    ) -> Message:
        """The Message of a stored row; raises QueueError (CORRUPT) for a row that cannot
        be read as one (a payload, time, number or text field that is not what it must be)."""
        try:
            # The counts and texts a Message promises, checked: a database edited by hand
            # can hold anything there (times are checked by converting them).
            if not (
                type(row.priority) is int
                and type(row.attempts) is int
                and type(row.max_attempts) is int
                and type(row.prior_attempts) is int
                and (row.last_error is None or type(row.last_error) is str)
                and (row.group_key is None or type(row.group_key) is str)
            ):
                raise TypeError("a stored field is not of its type")
            # Positional, in the order of Message's fields: keywords cost a third more, and
            # this runs for every message delivered.
            return Message(
                row.id,
                self._codec.decode(row.data, row.encoding, row.checksum),
                row.priority,
                row.attempts,
                row.max_attempts,
                when(row.created_at) or datetime.fromtimestamp(0),  # enqueued_at
                when(row.lease_expires_at),
                row.last_error,
                self.name,  # queue
                row.lease_token,
                row.group_key,  # group
                when(row.expires_at),
                row.prior_attempts,
            )
        except QueueError:
            raise  # the payload's own error (checksum, encoding) says it best
        except Exception as exc:
            raise _unreadable(row, exc) from exc

    def _isolate_poison(self, row: StoredMessage, reason: QueueError) -> bool:
        """Dead-letter a row that cannot be delivered, so it never blocks the queue.

        Returns whether it was moved. Never raises: a failure here is logged, and the row
        stays where it is (a leased one comes back when its lease runs out).
        """
        error = f"undeliverable: {reason}"
        try:
            outcome, _ = self._backend.fail(row.id, row.lease_token, error, _no_delay, True)
            if outcome is not Outcome.DONE and row.lease_token is None:
                # Seen by peek in an expired lease: fold the lease back, then bury it.
                self._backend.recover()
                outcome, _ = self._backend.fail(row.id, None, error, _no_delay, True)
        except Exception:
            logger.exception(
                "queue %r: message %d is undeliverable (%s) and could not be dead-lettered",
                self.name,
                row.id,
                reason,
            )
            return False
        if outcome is not Outcome.DONE:
            logger.error(
                "queue %r: message %d is undeliverable (%s) and was not dead-lettered (%s)",
                self.name,
                row.id,
                reason,
                outcome.value,
            )
            return outcome is Outcome.DEAD
        logger.error(
            "queue %r: message %d dead-lettered as undeliverable: %s", self.name, row.id, reason
        )
        self._metrics.incr("poison")
        self._metrics.incr("dead_letter")
        return True

    def _decoded(self, rows: Sequence[StoredMessage]) -> list[Message]:
        when = to_datetime
        if len(rows) > 1:
            # A batch shares its lease expiry, and often its enqueue time: convert each
            # timestamp once (datetime.fromtimestamp is a third of a Message's cost).
            when = functools.lru_cache(maxsize=8)(to_datetime)
        messages = []
        for row in rows:
            try:
                messages.append(self._to_message(row, when))
            except QueueError as exc:
                self._isolate_poison(row, exc)
        return messages

    # -- producing -----------------------------------------------------------------------

    def _defaults(self) -> tuple[int, int, float | None]:
        """The queue's default priority, max attempts and time to live (seconds),
        validated again only when one of them is set to another object."""
        priority, attempts, ttl = self.default_priority, self.default_max_attempts, self.default_ttl
        cached = self._cached_defaults
        if cached is None or (
            cached[0] is not priority or cached[1] is not attempts or cached[2] is not ttl
        ):
            probe = self._with_options(Item(None), Encoded("", "text", 0))
            valid = (probe.priority, probe.max_attempts, probe.ttl)
            cached = self._cached_defaults = (priority, attempts, ttl, valid)
        return cached[3]

    def _new_message(self, item: object, defaults: tuple[int, int, float | None]) -> NewMessage:
        """Validate and encode one item: an :class:`Item` with its options, or a bare
        payload (``enqueue`` and ``enqueue_batch`` pass those when there are no options),
        which takes the queue's ``defaults`` (from ``_defaults``, once per call)."""
        if isinstance(item, Item):
            return self._with_options(item, self._codec.encode(item.payload))
        data, encoding, checksum = self._codec.encode(item)
        priority, max_attempts, ttl = defaults
        # tuple.__new__: NewMessage(...) would run the named tuple's __new__ in Python.
        return _tuple_new(
            NewMessage, (data, encoding, checksum, priority, 0.0, max_attempts, None, None, ttl)
        )

    def _with_options(self, item: Item, encoded: Encoded) -> NewMessage:
        prio = self.default_priority if item.priority is None else item.priority
        prio = _bounded_int(prio, "priority", MIN_PRIORITY, MAX_PRIORITY)
        delay = 0 if item.delay is None else item.delay
        seconds = _seconds(delay, "delay", minimum=0, maximum=MAX_DELAY, strict=False)
        attempts = self.default_max_attempts if item.max_attempts is None else item.max_attempts
        attempts = _bounded_int(attempts, "max_attempts", 1, MAX_ATTEMPTS)
        ttl = self.default_ttl if item.ttl is None else item.ttl
        if ttl is not None:
            ttl = _seconds(ttl, "ttl", minimum=0, maximum=MAX_DELAY, strict=True)
        for label, value in (("dedup_key", item.dedup_key), ("group", item.group)):
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 512):
                raise QueueError(
                    f"{label} must be a non-empty str of at most 512 characters, got {value!r}",
                    ErrorKind.INVALID_INPUT,
                )
        return NewMessage(
            data=encoded.data,
            encoding=encoded.encoding,
            checksum=encoded.checksum,
            priority=prio,
            delay=seconds,
            max_attempts=attempts,
            dedup_key=item.dedup_key,
            group_key=item.group,
            ttl=ttl,
        )

    def _new_messages(self, items: Sequence[object]) -> list[NewMessage]:
        """Validate and encode ``items``, all or none; an error names its item. (A single
        item goes through ``_new_message`` alone: its error needs no number.)"""
        batch: list[NewMessage] = []
        defaults = self._defaults()
        for index, item in enumerate(items):
            try:
                batch.append(self._new_message(item, defaults))
            except QueueError as exc:
                raise QueueError(f"item {index}: {exc}; nothing was enqueued", exc.kind) from exc
        return batch

    def _items(self, payloads: object) -> list[object]:
        """``enqueue_batch``'s entries as Items, or as bare payloads when they have no
        options (cheaper: most batches are plain payloads)."""
        if isinstance(payloads, (str, bytes, bytearray, dict)) or not isinstance(
            payloads, Sequence
        ):
            raise QueueError(
                f"enqueue_batch expects a list of payloads, got {type(payloads).__name__}",
                ErrorKind.INVALID_INPUT,
            )
        items: list[object] = []
        for index, entry in enumerate(payloads):
            if isinstance(entry, tuple):
                if not 1 <= len(entry) <= 4:
                    raise QueueError(
                        f"item {index}: a tuple item must be (payload, priority, delay, "
                        f"max_attempts) with 1 to 4 elements, got {len(entry)}; nothing was "
                        "enqueued",
                        ErrorKind.INVALID_INPUT,
                    )
                payload, priority, delay, attempts = (*entry, None, None, None)[:4]
                items.append(Item(payload, priority, delay, attempts))
            else:
                items.append(entry)  # an Item, or a bare payload
        return items

    def _store(self, items: Sequence[object], wait: object, conn: Any = None) -> list[int]:
        """Encode and insert ``items`` in one transaction; wait for room if asked."""
        patience = 0.0
        if wait:
            patience = _seconds(wait, "wait", minimum=0, maximum=MAX_WAIT, strict=False)
        deadline = time.monotonic() + patience if patience else 0.0
        nap = _ROOM_POLL_MIN
        while True:
            if len(items) == 1:
                batch = [self._new_message(items[0], self._defaults())]  # enqueue()
            else:
                batch = self._new_messages(items)
                if not batch:
                    return []
            try:
                if conn is not None:
                    ids = self._backend.enqueue_in(conn, batch)
                else:
                    ids = self._backend.enqueue(batch)
                break
            except QueueError as exc:
                remaining = deadline - time.monotonic()
                if exc.kind is not ErrorKind.QUEUE_FULL or remaining <= 0 or conn is not None:
                    if exc.kind is ErrorKind.QUEUE_FULL:
                        raise QueueFull(
                            f"enqueue failed: {exc}{_full_advice(patience, conn)}"
                        ) from exc
                    raise
                # Completions in this process notify at once; others are polled.
                self._room.wait(self._room.seq, min(nap, remaining))
                nap = min(nap * 2, _ROOM_POLL_MAX)
        self._signal.notify()
        if self._measured:
            self._metrics.incr("enqueue", len(ids))
        # Inside the caller's transaction (the outbox), no upkeep: it would wait for the
        # write lock that transaction holds.
        self._count_operation(len(ids), conn is None)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("queue %r: enqueued message(s) %s", self.name, ids[:20])
        return ids

    def enqueue(
        self,
        payload: Any,
        priority: int | None = None,
        delay: float | timedelta = 0,
        max_attempts: int | None = None,
        *,
        dedup_key: str | None = None,
        group: str | None = None,
        ttl: float | timedelta | None = None,
        wait: float = 0,
    ) -> Result[int, EnqueueError]:
        """Add a message; ``Ok(id)``.

        Higher ``priority`` is delivered first; ``delay`` (seconds) keeps it invisible
        until due; ``max_attempts`` bounds deliveries before the dead-letter queue.

        - ``dedup_key``: a second enqueue with the same key within the queue's
          ``dedup_window`` adds nothing and returns ``Ok(original_id)``.
        - ``group``: messages of one group are delivered one at a time, in order.
        - ``ttl``: seconds after which the message is never delivered.
        - ``wait``: when the queue is at ``max_depth``, wait up to this long for room
          (else ``Err(QueueFull)`` at once).

        Example::

            queue.enqueue({"order": 42}, dedup_key="order-42", group="customer-7")
        """
        item: object
        if (
            priority is None
            and max_attempts is None
            and dedup_key is None
            and group is None
            and ttl is None
            and type(delay) is int
            and delay == 0
            and not isinstance(payload, Item)
        ):
            item = payload  # a bare payload takes the defaults (no Item to build and check)
        else:
            item = Item(payload, priority, delay, max_attempts, dedup_key, group, ttl)
        try:  # _guard, inline: every Python call costs on the hottest path
            return Ok(self._store([item], wait)[0])
        except Exception as exc:
            return self._failed(EnqueueError, "enqueue", exc)

    def enqueue_batch(
        self, payloads: Sequence[Any], *, wait: float = 0
    ) -> Result[list[int], EnqueueError]:
        """Add many messages in one transaction: all of them, or none; ``Ok([ids])``.

        Items are payloads, ``(payload, priority, delay, max_attempts)`` tuples (trailing
        items may be left out; ``None`` means the queue's default) or :class:`Item`
        objects for the other options::

            queue.enqueue_batch(["a", "b", ("urgent", 10), Item("c", dedup_key="c-1")])
        """

        def run() -> Result[list[int], EnqueueError]:
            return Ok(self._store(self._items(payloads), wait))

        return self._guard(EnqueueError, "enqueue_batch", run)

    def enqueue_in(
        self,
        conn: Any,
        payload: Any,
        priority: int | None = None,
        delay: float | timedelta = 0,
        max_attempts: int | None = None,
        *,
        dedup_key: str | None = None,
        group: str | None = None,
        ttl: float | timedelta | None = None,
    ) -> Result[int, EnqueueError]:
        """Enqueue inside *your* transaction on ``conn``: the message commits or rolls back
        with your own rows (the outbox pattern)::

            with sqlite3.connect("app.db") as conn:          # commits on success
                conn.execute("INSERT INTO orders (id) VALUES (?)", (42,))
                queue.enqueue_in(conn, {"order": 42}).unwrap()

        ``conn`` is a ``sqlite3.Connection`` on the queue's file (a ``psycopg``
        connection on PostgreSQL), or a SQLAlchemy ``Session`` or ``Connection`` in a
        transaction on it. A transaction that has not written yet is joined too.
        """
        item = Item(payload, priority, delay, max_attempts, dedup_key, group, ttl)

        def run() -> Result[int, EnqueueError]:
            if conn is None:
                raise QueueError(
                    "enqueue_in needs your open database connection, got None",
                    ErrorKind.INVALID_INPUT,
                )
            return Ok(self._store([item], 0, conn=_driver_connection(conn))[0])

        return self._guard(EnqueueError, "enqueue_in", run)

    # -- consuming -----------------------------------------------------------------------

    def _lease_seconds(self, visibility_timeout: object) -> float:
        if visibility_timeout is None:
            return self.default_visibility_timeout
        return _seconds(
            visibility_timeout,
            "visibility_timeout",
            minimum=0,
            maximum=MAX_VISIBILITY_TIMEOUT,
            strict=True,
        )

    def _claim(self, limit: int, timeout: float) -> list[Message]:
        messages: list[Message] = []
        # Poisoned rows are dead-lettered and skipped; claim again to fill the batch.
        while len(messages) < limit:
            token = self._new_token()
            # The backend starts the lease when the claim holds its locks, not before.
            rows, folded = self._backend.claim(limit - len(messages), timeout, token)
            if folded:
                self._metrics.incr("recovered", folded)
            good = self._decoded(rows)
            messages.extend(good)
            # Claim again only when every row was poisoned: messages already leased are
            # not kept waiting for another transaction.
            if good or not rows:
                break
        self._remember(messages)
        if messages:
            if self._measured:
                self._metrics.incr("dequeue", len(messages))
            self._count_operation(len(messages))
        if messages and logger.isEnabledFor(logging.DEBUG):
            for m in messages:
                logger.debug(
                    "queue %r: leased message %d (attempt %d of %d)",
                    self.name,
                    m.id,
                    m.attempts,
                    m.max_attempts,
                    extra={"message_id": m.id, "attempt": m.attempts},
                )
        return messages

    def _claim_plan(
        self,
        limit: int,
        visibility_timeout: object,
        wait: object,
        cancelled: Callable[[], bool] | None = None,
    ) -> Generator[Step, Any, list[Message]]:
        """Claim up to ``limit`` messages, waiting up to ``wait`` seconds for some.

        ``cancelled`` is checked at every wake-up: a worker shutting down uses it (and
        ``wake_waiters``) to stop waiting at once.
        """
        timeout = self._lease_seconds(visibility_timeout)
        patience = _seconds(wait, "wait", minimum=0, maximum=MAX_WAIT, strict=False)
        deadline = time.monotonic() + patience
        backend, signal = self._backend, self._signal
        while True:
            # Read before claiming, so that a wake-up in between is not missed.
            seq, seen = signal.seq, signal.changes
            messages: list[Message] = yield ("call", lambda: self._claim(limit, timeout))
            if messages or time.monotonic() >= deadline:
                return messages
            # Commits by other connections nudge the signal from now on (one watcher per
            # process and database does the polling, however many consumers wait).
            yield ("call", backend.watch)
            due = yield ("call", self._due_at)
            # A backend whose wake-ups can be lost (NOTIFY over a dropped connection) is
            # also re-checked every poll_fallback seconds.
            fallback = getattr(backend, "poll_fallback", None)
            recheck_at = time.monotonic() + fallback if fallback else math.inf
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (cancelled is not None and cancelled()):
                    return []
                if time.monotonic() >= recheck_at:
                    break
                until_due = due - self._now()
                if until_due <= 0:
                    break  # a delayed message fell due or a lease expired: claim it
                # While something is due, the clock is read again at least every _RECHECK
                # seconds, so a wait follows a clock that jumps (a stepped wall clock, a
                # test's fake one).
                recheck = _RECHECK if until_due < math.inf else math.inf
                nap = min(remaining, until_due, recheck, max(recheck_at - time.monotonic(), 0))
                woken = yield ("sleep", nap, seq, seen)
                if cancelled is not None and cancelled():
                    return []
                if woken:
                    break  # an enqueue in this process
                if signal.changes != seen:  # another connection committed: look again
                    seen = signal.changes
                    due = yield ("call", self._due_at)

    def _due_at(self) -> float:
        """When, on the queue's clock, a claim could next succeed; inf if the queue is empty.

        The backend says how long from now (on its own clock), so only the time that passes
        on the queue's clock counts: a client clock that is off by a constant (PostgreSQL)
        does not matter, and an injected clock (tests) moves the wait forward."""
        due = self._backend.next_due()
        return math.inf if due is None else self._now() + due

    def wake_waiters(self) -> None:
        """Wake every consumer of this queue blocked in ``dequeue(wait=...)`` in this process."""
        self._signal.notify()

    def _drive(self, plan: Generator[Step, Any, T]) -> T:
        """Carry out a plan synchronously: calls inline, sleeps on the in-process signal."""
        try:
            step = next(plan)
            while True:
                if step[0] == "call":
                    step = plan.send(step[1]())
                else:
                    step = plan.send(self._signal.wait(step[2], step[1], step[3]))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def dequeue(
        self,
        visibility_timeout: float | None = None,
        wait: float = 0,
        *,
        cancel: threading.Event | None = None,
    ) -> Result[Message | None, DequeueError]:
        """Lease the next message: ``Ok(message)``, or ``Ok(None)`` when none is ready.

        The message stays invisible to other consumers for ``visibility_timeout`` seconds
        (the queue default otherwise); complete it before then, or it is delivered again.
        With ``wait`` (seconds), block until a message is available or the time is up::

            message = queue.dequeue(wait=30).unwrap()   # None after 30 s with no work

        Setting the ``cancel`` event (then calling ``wake_waiters()``) ends the wait early.
        """
        try:  # _guard, inline (a hot path)
            if wait == 0:  # no waiting: skip the wait plan's machinery
                messages = self._claim(1, self._lease_seconds(visibility_timeout))
            else:
                cancelled = cancel.is_set if cancel is not None else None
                messages = self._drive(self._claim_plan(1, visibility_timeout, wait, cancelled))
            return Ok(messages[0] if messages else None)
        except Exception as exc:
            return self._failed(DequeueError, "dequeue", exc)

    def dequeue_batch(
        self,
        batch_size: int = 10,
        visibility_timeout: float | None = None,
        wait: float = 0,
        *,
        cancel: threading.Event | None = None,
    ) -> Result[list[Message], DequeueError]:
        """Lease up to ``batch_size`` messages in one transaction; ``Ok([])`` when none.

        With ``wait``, block until at least one message is available or the time is up.
        """
        cancelled = cancel.is_set if cancel is not None else None

        def run() -> Result[list[Message], DequeueError]:
            size = _bounded_int(batch_size, "batch_size", 1, MAX_BATCH_SIZE)
            return Ok(self._drive(self._claim_plan(size, visibility_timeout, wait, cancelled)))

        return self._guard(DequeueError, "dequeue_batch", run)

    @contextlib.contextmanager
    def claim(
        self, wait: float = 0, visibility_timeout: float | None = None
    ) -> Iterator[Message | None]:
        """Lease one message for a ``with`` block: completed if the block succeeds, failed
        (with the exception as its error) if it raises. Yields ``None`` when no message
        came within ``wait`` seconds. Raises the ``DequeueError`` if leasing fails::

            with queue.claim(wait=5) as message:
                if message is not None:
                    process(message.payload)
        """
        message = self.dequeue(visibility_timeout=visibility_timeout, wait=wait).unwrap()
        if message is None:
            yield None
            return
        try:
            yield message
        except Exception as exc:
            if self._ended_here(message.lease_token) is None:
                self.fail_message(message, error=_error_text(exc))
            raise
        except BaseException:
            # Interrupted (Ctrl-C, exit), not failed: give it back, attempt not counted.
            if self._ended_here(message.lease_token) is None:
                self.release(message)
            raise
        if self._ended_here(message.lease_token) is not None:
            return  # the block completed, failed or gave back the message itself
        result = self.complete(message)
        if isinstance(result, Err) and result.error.kind is not ErrorKind.NOT_FOUND:
            # NOT_FOUND: completed by another object meanwhile. Anything else means the
            # work may be done twice (e.g. the lease expired): say so loudly.
            raise result.error

    def complete(
        self, message: MessageRef, *, result: Any = _NO_RESULT
    ) -> Result[None, CompletionError]:
        """Acknowledge a leased message: it is removed for good (or kept as history, when
        the queue has ``retention``).

        Refused (``Err``, nothing changes) if the lease expired or the message went to
        another consumer, so a slow consumer can never delete work someone else now holds.

        ``result``: a JSON value kept with the completed message, read back with
        ``get_message(id)["result"]`` until the history is pruned. Needs a queue that
        keeps history (``retention`` or ``retention_max``)::

            queue.complete(message, result={"sent": True})
        """

        try:  # _guard, inline (a hot path)
            message_id, token = self._ref(message)
            text = None if result is _NO_RESULT else self._result_text(result)
            outcome = self._backend.complete(message_id, token, text)
            if outcome is not Outcome.DONE:
                # A refused call keeps the remembered token: later calls by id stay fenced.
                raise self._outcome_error(outcome, message_id, "completed", token)
            self._forget(((message_id, token),), "completed")
            if self._backend.policy.max_depth is not None:
                self._room.notify()
            if self._measured:
                self._metrics.incr("complete")
            self._count_operation()
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("queue %r: completed message %d", self.name, message_id)
            return Ok(None)
        except Exception as exc:
            return self._failed(CompletionError, "complete", exc)

    def _result_text(self, result: object) -> str:
        """A result as the JSON text kept with a completed message; raises QueueError."""
        if not self._backend.policy.keeps_history:
            raise QueueError(
                f"queue {self.name!r} does not keep completed messages, so a result has nowhere "
                "to go; open it with retention=SECONDS (or retention_max=N). Nothing was changed",
                ErrorKind.INVALID_INPUT,
            )
        try:
            return json_text(result, "the result")
        except QueueError as exc:
            raise QueueError(f"{exc}; nothing was changed", exc.kind) from exc

    @property
    def keeps_history(self) -> bool:
        """Whether completed messages are kept (the ``retention``/``retention_max``
        settings), and with them the results given to :meth:`complete`."""
        return self._backend.policy.keeps_history

    def complete_batch(self, messages: Sequence[MessageRef]) -> Result[int, CompletionError]:
        """Acknowledge several leased messages in one transaction: all of them or, if any
        is refused (expired or lost lease, unknown id), none; ``Ok(count)``::

            batch = queue.dequeue_batch(100).unwrap()
            ...  # process them
            queue.complete_batch(batch)
        """

        def run() -> Result[int, CompletionError]:
            if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
                raise QueueError(
                    "complete_batch expects a list of messages or ids", ErrorKind.INVALID_INPUT
                )
            # A Message is the usual reference: read it here, without a call per message.
            refs = [(m.id, m.lease_token) if type(m) is Message else self._ref(m) for m in messages]
            if not refs:
                return Ok(0)
            outcomes = self._backend.complete_many(refs)
            refused = [
                (mid, token, o)
                for (mid, token), o in zip(refs, outcomes, strict=True)
                if o is not Outcome.DONE
            ]
            if refused:
                first_id, first_token, first = refused[0]
                reason = self._outcome_error(first, first_id, "completed", first_token)
                raise QueueError(
                    f"{len(refused)} of {len(refs)} message(s) could not be completed "
                    f"(ids {', '.join(str(i) for i, _, _ in refused[:10])}), so none was; "
                    f"message {first_id}: {reason}",
                    reason.kind,
                    first_id,
                )
            self._forget(refs, "completed")
            if self._backend.policy.max_depth is not None:
                self._room.notify()
            if self._measured:
                self._metrics.incr("complete", len(refs))
            self._count_operation(len(refs))
            return Ok(len(refs))

        return self._guard(CompletionError, "complete_batch", run)

    def fail_message(
        self,
        message: MessageRef,
        send_to_dlq: bool = False,
        error: str | None = None,
        delay: float | timedelta | None = None,
    ) -> Result[None, RequeueError]:
        """Record a failed attempt.

        The message is retried after ``delay`` seconds (by default, what the queue's
        ``retry`` policy says for its attempt count), or goes to the dead-letter queue
        when it has used its attempts or ``send_to_dlq`` is true (which also works on a
        pending message). ``error`` is kept with the message (``last_error``).
        """

        def run() -> Result[None, RequeueError]:
            message_id, token = self._ref(message)
            if error is not None and not isinstance(error, str):
                raise QueueError(
                    f"error must be a str, got {type(error).__name__}", ErrorKind.INVALID_INPUT
                )
            text = error[:MAX_ERROR_TEXT] if error is not None else None
            if delay is None:
                # The storage knows the attempt count, also when only the id was passed.
                retry_after: Callable[[int], float] = self.retry.delay
            else:
                seconds = _seconds(delay, "delay", minimum=0, maximum=MAX_DELAY, strict=False)
                retry_after = lambda _attempts: seconds  # noqa: E731
            outcome, died = self._backend.fail(
                message_id, token, text, retry_after, bool(send_to_dlq)
            )
            if outcome is not Outcome.DONE:
                # A refused call keeps the remembered token: later calls by id stay fenced.
                # Back in the queue after this object gave it back: the id alone may
                # still dead-letter it (as for any message nobody holds).
                hint = f"fail_message({message_id}, send_to_dlq=True)" if send_to_dlq else ""
                raise self._outcome_error(outcome, message_id, "failed", token, hint)
            self._forget(((message_id, token),), "dead-lettered" if died else "failed")
            self._metrics.incr("fail")
            if not died:
                self._signal.notify()
            if died:
                self._metrics.incr("dead_letter")
                logger.info(
                    "queue %r: message %d moved to the dead-letter queue", self.name, message_id
                )
            self._count_operation()
            return Ok(None)

        return self._guard(RequeueError, "fail_message", run)

    def _give_back(
        self, message: MessageRef, refund: bool, action: str
    ) -> Result[None, RequeueError]:
        """Return a leased message to the queue, visible at once (requeue and release)."""

        def run() -> Result[None, RequeueError]:
            message_id, token = self._ref(message)
            outcome = self._backend.release(message_id, token, 0.0, None, refund)
            if outcome is not Outcome.DONE:
                raise self._outcome_error(outcome, message_id, f"{action}d", token)
            self._forget(((message_id, token),), f"{action}d")
            self._signal.notify()
            self._count_operation()
            return Ok(None)

        return self._guard(RequeueError, action, run)

    def requeue(self, message: MessageRef) -> Result[None, RequeueError]:
        """Give a leased message back: it is visible again at once, at the back of its
        priority. The attempt it used still counts; it is not recorded as a failure."""
        return self._give_back(message, refund=False, action="requeue")

    def release(self, message: MessageRef) -> Result[None, RequeueError]:
        """Give back a leased message that was not worked on: it is visible again at once
        and the attempt is not counted. For consumers shutting down with prefetched work."""
        return self._give_back(message, refund=True, action="release")

    def extend(
        self, message: MessageRef, seconds: float | timedelta
    ) -> Result[datetime, RequeueError]:
        """Extend a live lease to ``seconds`` from now, for slow work; ``Ok(new_expiry)``."""

        def run() -> Result[datetime, RequeueError]:
            message_id, token = self._ref(message)
            duration = _seconds(
                seconds, "seconds", minimum=0, maximum=MAX_VISIBILITY_TIMEOUT, strict=True
            )
            # The backend measures the lease from when it holds the message's lock.
            outcome, until = self._backend.extend(message_id, token, duration)
            if outcome is not Outcome.DONE:
                raise self._outcome_error(outcome, message_id, "extended", token)
            expiry = to_datetime(until)
            assert expiry is not None
            return Ok(expiry)

        return self._guard(RequeueError, "extend", run)

    # -- inspection ----------------------------------------------------------------------

    def peek(self) -> Result[Message | None, QueueError]:
        """The message ``dequeue`` would return next, without leasing it; ``Ok(None)`` if none."""

        def run() -> Result[Message | None, QueueError]:
            stuck: set[int] = set()
            while True:
                row = self._backend.peek()
                if row is None:
                    return Ok(None)
                try:
                    return Ok(self._to_message(row))
                except QueueError as exc:
                    if self.read_only:  # cannot set it aside: say what is wrong with it
                        raise QueueError(
                            f"message {row.id}, next in line, cannot be delivered: {exc}",
                            exc.kind,
                            row.id,
                        ) from exc
                    if row.id in stuck:  # could not be moved out of the way: do not spin
                        raise
                    if not self._isolate_poison(row, exc):
                        stuck.add(row.id)

        return self._guard(QueueError, "peek", run)

    def is_empty(self) -> Result[bool, QueueError]:
        """``Ok(True)`` when there is no message to dequeue now (0.1.0's meaning).

        Messages leased by consumers, delayed ones not yet due and group members waiting
        for their turn do not count, so ``while not queue.is_empty().value:
        queue.dequeue()`` never spins on a message someone else holds. To ask whether the
        queue holds anything at all, use :meth:`is_drained`.
        """
        return self._guard(QueueError, "is_empty", lambda: Ok(self._backend.peek() is None))

    def is_drained(self) -> Result[bool, QueueError]:
        """``Ok(True)`` when the queue holds no message at all: none ready, delayed,
        waiting or leased (dead letters and kept history aside). A producer waiting for
        all its work to be finished asks this."""
        return self._guard(QueueError, "is_drained", lambda: Ok(self._backend.is_drained()))

    def recover_processing_messages(self) -> Result[int, QueueError]:
        """Return every message whose lease expired to the queue now; ``Ok(count)``.

        Dequeue does this by itself, so calling it is only needed to see the count. A
        message on its last attempt goes to the dead-letter queue instead.
        """

        def run() -> Result[int, QueueError]:
            count = self._backend.recover()
            if count:
                self._metrics.incr("recovered", count)
                logger.info("queue %r: recovered %d expired lease(s)", self.name, count)
            return Ok(count)

        return self._guard(QueueError, "recover_processing_messages", run)

    def _payload_entry(self, row: StoredMessage | StoredDeadLetter | StoredDone) -> dict[str, Any]:
        """``{"id", "payload"}`` of a stored row; an undecodable payload comes raw, with why."""
        entry: dict[str, Any] = {"id": row.id}
        try:
            entry["payload"] = self._codec.decode(row.data, row.encoding, row.checksum)
        except Exception as exc:
            entry["payload"] = row.data
            entry["payload_error"] = str(exc) if isinstance(exc, QueueError) else _error_text(exc)
        return entry

    def _dead_letter_dict(self, row: StoredDeadLetter) -> dict[str, Any]:
        entry = self._payload_entry(row)
        entry.update(
            status="dead",
            priority=_readable("priority", row.priority),
            attempts=_readable("attempts", row.attempts),
            max_attempts=_readable("max_attempts", row.max_attempts),
            last_error=_readable("last_error", row.last_error),
            enqueued_at=_readable("created_at", row.created_at),
            created_at=_readable("created_at", row.created_at),  # 0.1.0's key
            updated_at=_readable("updated_at", row.updated_at),
            dead_at=_readable("dead_at", row.dead_at),
            group=_readable("group_key", row.group_key),
            prior_attempts=_readable("prior_attempts", row.prior_attempts),
        )
        return entry

    def get_dead_letters(self) -> Result[list[dict[str, Any]], QueueError]:
        """Dead letters as dicts: ``id`` (the original), ``payload``, ``priority``,
        ``attempts``, ``max_attempts``, ``last_error``, ``enqueued_at`` (also under 0.1.0's
        key ``created_at``), ``updated_at``, ``dead_at``."""

        def run() -> Result[list[dict[str, Any]], QueueError]:
            return Ok([self._dead_letter_dict(row) for row in self._backend.dead_letters()])

        return self._guard(QueueError, "get_dead_letters", run)

    def reprocess_dead_letter(self, message_id: int) -> Result[None, RequeueError]:
        """Put a dead letter back in the queue with the same id and a fresh attempt count."""

        def run() -> Result[None, RequeueError]:
            ident = _bounded_int(message_id, "message_id", 0, MAX_ID)
            if not self._backend.revive(ident):
                raise QueueError(
                    f"message {ident} is not in the dead-letter queue of {self.name!r}; "
                    "see get_dead_letters() for the ids there",
                    ErrorKind.NOT_FOUND,
                    ident,
                )
            self._signal.notify()
            self._count_operation()
            logger.info("queue %r: dead letter %d returned to the queue", self.name, ident)
            return Ok(None)

        return self._guard(RequeueError, "reprocess_dead_letter", run)

    def get_all_statuses(self) -> Result[dict[str, int], QueueError]:
        """Message counts by status, as in 0.1.0: ``Ok({"pending": 2, "processing": 1,
        ...})``.

        ``pending`` counts ready and delayed messages and ``processing`` the leased ones
        (0.1.0's meanings); ``waiting`` counts group members waiting for their turn and
        ``dead`` the dead letters. Every key is present. Read from the counters the
        database keeps, so it costs the same at any depth; :meth:`stats` has the finer
        breakdown and :meth:`list_messages` the messages themselves.
        """

        return self._guard(
            QueueError, "get_all_statuses", lambda: Ok(self._backend.status_counts())
        )

    def stats(self, expiring_within: float = 60.0) -> Result[QueueStats, QueueError]:
        """Counts by state, the oldest ready message's age, leases about to expire, totals
        since creation and file sizes. Cheap: counts are kept up to date in the database."""

        def run() -> Result[QueueStats, QueueError]:
            horizon = _seconds(
                expiring_within, "expiring_within", minimum=0, maximum=MAX_DELAY, strict=False
            )
            raw = self._backend.stats(horizon)
            oldest = raw["oldest_ready_age"]
            return Ok(
                QueueStats(
                    queue=self.name,
                    ready=raw["ready"],
                    delayed=raw["delayed"],
                    waiting=raw["waiting"],
                    processing=raw["processing"],
                    dead=raw["dead"],
                    oldest_ready_age=None if oldest is None else max(0.0, oldest),
                    expiring_soon=raw["expiring"],
                    enqueued_total=raw["enqueued_total"],
                    completed_total=raw["completed_total"],
                    failed_total=raw["failed_total"],
                    dead_lettered_total=raw["dead_lettered_total"],
                    lease_expirations_total=raw["expired_total"],
                    ttl_expired_total=raw["ttl_expired_total"],
                    db_bytes=raw["db_bytes"],
                    wal_bytes=raw["wal_bytes"],
                    wal_frames=raw["wal_frames"],
                    wal_frames_not_checkpointed=raw["wal_frames_not_checkpointed"],
                )
            )

        return self._guard(QueueError, "stats", run)

    def list_messages(
        self, state: str = "pending", limit: int = 100, after_id: int = 0
    ) -> Result[list[dict[str, Any]], QueueError]:
        """A page of messages in ``state`` ("ready", "delayed", "waiting", "processing",
        "dead", "done", "pending" for ready and delayed together, or "all"), by id, as
        dicts; pass the last id seen as ``after_id`` for the next page::

            page = queue.list_messages("dead", limit=50).unwrap()
            more = queue.list_messages("dead", limit=50, after_id=page[-1]["id"]).unwrap()
        """

        def run() -> Result[list[dict[str, Any]], QueueError]:
            if state not in LISTABLE_STATES:
                raise QueueError(
                    f"state must be one of {', '.join(LISTABLE_STATES)}, got {state!r}",
                    ErrorKind.INVALID_INPUT,
                )
            size = _bounded_int(limit, "limit", 1, MAX_BATCH_SIZE)
            after = _bounded_int(after_id, "after_id", 0, MAX_ID)
            rows = self._backend.list_messages(state, size, after)
            return Ok([self._row_dict(row, state) for row in rows])

        return self._guard(QueueError, "list_messages", run)

    def get_message(self, message_id: int) -> Result[dict[str, Any] | None, QueueError]:
        """One message by id, whatever its state, as a dict like :meth:`list_messages`
        gives (``status`` says where it is: ready, delayed, waiting, processing, dead or
        done); ``Ok(None)`` when the queue has no such message (completed without
        ``retention``, or never existed)::

            found = queue.get_message(42).unwrap()
            if found is not None:
                print(found["status"], found["attempts"], found["last_error"])
        """

        def run() -> Result[dict[str, Any] | None, QueueError]:
            ident = _bounded_int(message_id, "message_id", 0, MAX_ID)
            row = self._backend.find(ident)
            if row is None:
                return Ok(None)
            return Ok(self._row_dict(row, "all"))

        return self._guard(QueueError, "get_message", run)

    def _row_dict(
        self, row: StoredMessage | StoredDeadLetter | StoredDone, state: str
    ) -> dict[str, Any]:
        if isinstance(row, StoredDeadLetter):
            return self._dead_letter_dict(row)
        if isinstance(row, StoredDone):
            return self._done_dict(row)
        return self._message_dict(row, state)

    def _message_dict(self, row: StoredMessage, status: str) -> dict[str, Any]:
        entry = self._payload_entry(row)
        if status in ("all", "pending"):
            status = row.status  # the row says: ready or delayed, waiting, processing
        entry.update(
            status=status,
            priority=_readable("priority", row.priority),
            attempts=_readable("attempts", row.attempts),
            max_attempts=_readable("max_attempts", row.max_attempts),
            last_error=_readable("last_error", row.last_error),
            enqueued_at=_readable("created_at", row.created_at),
            visible_at=_readable("visible_at", row.visible_at),
            lease_expires_at=_readable("lease_expires_at", row.lease_expires_at),
            group=_readable("group_key", row.group_key),
            expires_at=_readable("expires_at", row.expires_at),
            prior_attempts=_readable("prior_attempts", row.prior_attempts),
        )
        return entry

    def _done_dict(self, row: StoredDone) -> dict[str, Any]:
        entry = self._payload_entry(row)
        entry.update(
            status="done",
            priority=_readable("priority", row.priority),
            attempts=_readable("attempts", row.attempts),
            enqueued_at=_readable("created_at", row.created_at),
            completed_at=_readable("completed_at", row.completed_at),
            group=_readable("group_key", row.group_key),
            result=None,
        )
        if row.result is not None:
            try:
                entry["result"] = json.loads(row.result)
            except Exception as exc:  # not JSON, not even text: shown as stored, with why
                entry["result"] = row.result
                entry["result_error"] = f"stored result is not valid JSON: {exc}"
        return entry

    def get_completed(
        self, limit: int = 100, after_id: int = 0
    ) -> Result[list[dict[str, Any]], QueueError]:
        """Completed messages kept by the queue's ``retention`` setting, by id, as dicts
        (``id``, ``payload``, ``priority``, ``attempts``, ``enqueued_at``, ``completed_at``,
        ``result``: what :meth:`complete` was given, else None)."""
        return self.list_messages("done", limit=limit, after_id=after_id)

    def redrive(
        self,
        ids: Sequence[int] | None = None,
        to_queue: str | None = None,
        rate: float | None = None,
        progress: Callable[[int, int], Any] | None = None,
    ) -> Result[int, RequeueError]:
        """Move dead letters back to be delivered again; ``Ok(count moved)``.

        ``ids`` picks which (default: all). ``to_queue`` sends them to another queue of the
        same file (default: this one, keeping their ids). ``rate`` caps messages per second,
        so a large redrive does not flood consumers. ``progress(done, total)`` is called
        as it goes. Each message keeps its last error; its attempts start over and the
        ones it used are added to ``prior_attempts``::

            queue.redrive(rate=50, progress=lambda done, total: print(done, "/", total))
        """

        def run() -> Result[int, RequeueError]:
            if to_queue is not None:
                _config(lambda: validate_queue_name(to_queue))
            if rate is not None and not (
                isinstance(rate, (int, float))
                and not isinstance(rate, bool)
                and 0 < rate <= 1e9  # NaN fails this too
            ):
                raise QueueError(
                    f"rate must be a number of messages a second, > 0 and <= 1000000000, "
                    f"got {rate!r}",
                    ErrorKind.INVALID_INPUT,
                )
            wanted = None
            if ids is not None:
                wanted = [_bounded_int(i, "id", 0, MAX_ID) for i in ids]
                total = len(wanted)
            else:
                total = self._backend.stats(0)["dead"]
            chunk = 500 if rate is None else max(1, min(500, int(rate // 10) or 1))
            moved = 0
            after = 0
            started = time.monotonic()
            while True:
                batch_ids = None if wanted is None else wanted[:chunk]
                if wanted is not None:
                    wanted = wanted[chunk:]
                    if not batch_ids:
                        break
                done, missing = self._backend.redrive(batch_ids, to_queue, chunk, after)
                if missing:
                    raise QueueError(
                        f"no dead letter with id {', '.join(map(str, missing))} in queue "
                        f"{self.name!r}; {moved + len(done)} other(s) were redriven",
                        ErrorKind.NOT_FOUND,
                    )
                if not done and wanted is None:
                    break
                moved += len(done)
                after = max(done, default=after)
                self._signal.notify()
                if to_queue is not None:
                    signal_for(self._backend.wakeup_key.rsplit(":", 1)[0] + f":{to_queue}").notify()
                if progress is not None:
                    progress(moved, max(total, moved))
                if rate is not None:
                    # Sleep until this many messages are due at the given rate.
                    ahead = moved / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            self._count_operation(max(moved, 1))
            logger.info("queue %r: redrove %d dead letter(s)", self.name, moved)
            return Ok(moved)

        return self._guard(RequeueError, "redrive", run)

    def delete_dead_letters(self, ids: Sequence[int]) -> Result[int, QueueError]:
        """Delete the dead letters with these ids, in one transaction; ``Ok(count deleted)``.

        Ids that are not among the queue's dead letters (redriven or deleted already, or
        never dead) are skipped, so the count says how many went::

            queue.delete_dead_letters([12, 15])
        """

        def run() -> Result[int, QueueError]:
            if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
                raise QueueError(
                    f"ids must be a list of message ids, got {type(ids).__name__}",
                    ErrorKind.INVALID_INPUT,
                )
            if len(ids) > MAX_BATCH_SIZE:
                raise QueueError(
                    f"at most {MAX_BATCH_SIZE} ids at a time, got {len(ids)}",
                    ErrorKind.INVALID_INPUT,
                )
            wanted = sorted({_bounded_int(i, "id", 0, MAX_ID) for i in ids})
            removed = self._backend.delete_dead(wanted) if wanted else 0
            self._count_operation(max(removed, 1))
            logger.info("queue %r: deleted %d dead letter(s)", self.name, removed)
            return Ok(removed)

        return self._guard(QueueError, "delete_dead_letters", run)

    def purge(
        self, state: str | Sequence[str] | None = None, older_than: float | timedelta | None = None
    ) -> Result[int, QueueError]:
        """Delete messages, in one transaction; ``Ok(count)``.

        ``state`` is "ready", "delayed", "waiting", "processing", "dead", "done", "pending"
        (ready and delayed) or a list of them; by default every message that is not dead or
        done. ``older_than``
        (seconds) keeps the more recent ones: live messages by when they were enqueued,
        dead letters by when they died, kept completed ones by when they were completed::

            queue.purge()                                   # empty the queue
            queue.purge("dead", older_than=7 * 86400)       # dead for more than a week
        """

        def run() -> Result[int, QueueError]:
            if state is None:
                states: list[str] = ["ready", "delayed", "waiting", "processing"]
            elif isinstance(state, str):
                states = [state]
            else:
                states = list(state)
            for item in states:
                if item not in PURGEABLE_STATES:
                    raise QueueError(
                        f"state must be one of {', '.join(PURGEABLE_STATES)}, got {item!r}",
                        ErrorKind.INVALID_INPUT,
                    )
            age = None
            if older_than is not None:
                age = _seconds(older_than, "older_than", minimum=0, maximum=1e12, strict=False)
            if "pending" in states:
                states = [s for s in states if s != "pending"] + ["ready", "delayed"]
            removed = self._backend.purge(sorted(set(states)), age)
            if self._backend.policy.max_depth is not None:
                self._room.notify()
            self._count_operation(max(removed, 1))
            logger.info(
                "queue %r: purged %d message(s) (%s)", self.name, removed, ", ".join(states)
            )
            return Ok(removed)

        return self._guard(QueueError, "purge", run)

    # -- maintenance ---------------------------------------------------------------------

    def vacuum_database(self, conn: Any = None) -> Result[None, QueueError]:
        """Rebuild the database file to give free space back to the filesystem.

        This rewrites the whole file; routine upkeep (every ``vacuum_threshold``
        operations) reclaims space in small steps instead.
        """

        def run() -> Result[None, QueueError]:
            self._backend.vacuum(conn)
            return Ok(None)

        return self._guard(QueueError, "vacuum_database", run)

    def perform_checkpoint(self, conn: Any = None) -> Result[None, QueueError]:
        """Copy the write-ahead log into the database file and truncate the log."""

        def run() -> Result[None, QueueError]:
            self._backend.checkpoint(conn)
            return Ok(None)

        return self._guard(QueueError, "perform_checkpoint", run)

    def ddl(self) -> list[str]:
        """The statements that create this queue's tables, for teams that apply schema
        changes themselves (``sqqueue migrate --sql``)."""
        return self._backend.ddl()

    def get_operation_count(self) -> int:
        """Write operations made through this object since its last upkeep round (as in
        0.1.0: back to 0 each time routine maintenance runs, every ``vacuum_threshold``
        messages written; it only grows when ``vacuum_threshold`` is 0)."""
        return self._op_count


class SQLiteQueue(Queue):
    """A queue stored in an SQLite file, shared safely by threads and processes.

    Example::

        from sqqueue import SQLiteQueue

        with SQLiteQueue("jobs.db", table_name="emails") as queue:
            queue.enqueue({"to": "ada@example.com"})
            message = queue.dequeue().value
            if message is not None:
                send(message.payload)
                queue.complete(message)

    Settings beyond the 0.1.0 ones: ``synchronous`` ("normal": a committed message survives
    a process crash; "full": also an OS crash or power loss), ``lock_timeout`` (how long a
    call waits for a locked database before returning ``Err``), ``serializer``, ``retry``
    and ``clock`` (a function returning Unix seconds, for tests).

    A setting not passed as an argument comes from the ``SQQUEUE_<SETTING>`` environment
    variable, then the config file (see :mod:`sqqueue.config`), then the default shown in
    the README; ``self.settings`` and ``self.setting_sources`` tell what was used.

    ``encryption_key`` (a passphrase, or 32 raw bytes; else ``SQQUEUE_ENCRYPTION_KEY`` or
    ``SQQUEUE_ENCRYPTION_KEY_FILE``) keeps the file encrypted with SQLCipher
    (``pip install 'sqqueue[encryption]'``; see docs/security.md).

    ``read_only=True`` opens an existing queue to look at it (a dashboard, a report): it
    creates, migrates and upgrades nothing, does not even create the -wal and -shm files,
    and every call that would write returns ``Err(kind=READ_ONLY)``. A queue in an older
    layout (sqqueue 0.1.0's or an older sqqueue's) is refused: ``sqqueue migrate``
    brings it up to date.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] = UNSET,
        table_name: str = UNSET,
        vacuum_threshold: int = UNSET,
        vacuum_on_start: bool = UNSET,
        default_max_attempts: int = UNSET,
        default_visibility_timeout: float = UNSET,
        default_priority: int = UNSET,
        statsd_host: str | None = UNSET,
        statsd_port: int = UNSET,
        statsd_prefix: str = UNSET,
        *,
        synchronous: Synchronous = UNSET,
        lock_timeout: float = UNSET,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = UNSET,
        dedup_window: float | str = UNSET,
        default_ttl: float | None = UNSET,
        on_expire: str = UNSET,
        retention: float | None = UNSET,
        retention_max: int | None = UNSET,
        max_depth: int | None = UNSET,
        read_only: bool = False,
        encryption_key: str | bytes | EncryptionKey | None = None,
    ) -> None:
        prepared = _prepare(
            {
                "db_path": db_path,
                "table_name": table_name,
                "vacuum_threshold": vacuum_threshold,
                "vacuum_on_start": vacuum_on_start,
                "default_max_attempts": default_max_attempts,
                "default_visibility_timeout": default_visibility_timeout,
                "default_priority": default_priority,
                "statsd_host": statsd_host,
                "statsd_port": statsd_port,
                "statsd_prefix": statsd_prefix,
                "synchronous": synchronous,
                "lock_timeout": lock_timeout,
                "retry": retry,
                "dedup_window": dedup_window,
                "default_ttl": default_ttl,
                "on_expire": on_expire,
                "retention": retention,
                "retention_max": retention_max,
                "max_depth": max_depth,
            },
            clock,
        )
        settings = prepared.settings
        if settings["db_path"] is None:
            raise ValueError(
                "db_path is required: pass it, or set SQQUEUE_DB_PATH or db_path in sqqueue.toml"
            )
        backend = SQLiteBackend(
            settings["db_path"],
            settings["table_name"],
            synchronous=settings["synchronous"],
            lock_timeout=prepared.lock_timeout,
            default_max_attempts=prepared.max_attempts,
            clock=clock,
            policy=prepared.policy,
            read_only=read_only,
            encryption_key=encryption_key,
        )
        self._adopt(backend, prepared, serializer, clock)
        self.db_path = backend.path
        if settings["vacuum_on_start"] and not self.read_only:
            result = self.vacuum_database()
            if result.is_err():
                logger.warning("queue %r: vacuum on start skipped: %s", self.name, result.error)

    @staticmethod
    def list_queues(db_path: str | os.PathLike[str]) -> Result[list[str], QueueError]:
        """Names of the queues in a database file: ``Ok(["emails", "thumbnails"])``."""
        try:
            return Ok(tools.list_queues(db_path))
        except QueueError as exc:
            return Err(QueueError(f"cannot list the queues: {exc}", exc.kind))
        except Exception as exc:
            logger.error("listing the queues of a database failed unexpectedly", exc_info=exc)
            return Err(QueueError(f"cannot list the queues: {exc!r}", ErrorKind.STORAGE))


class PostgresQueue(Queue):
    """A queue in a PostgreSQL database (``pip install 'sqqueue[postgres]'``): the same API
    and semantics as :class:`SQLiteQueue`, for producers and consumers on many machines.

    ``url`` is a libpq URL (``postgresql://user:pass@host:5432/db``); ``schema`` puts the
    queue's tables in that schema; ``pool_size`` bounds this object's connections. Other
    settings are those of SQLiteQueue (``synchronous``, ``vacuum_on_start`` do not apply).

    Every lease, delay and time to live is measured on the server's clock, so clients
    whose clocks disagree still agree on them; ``clock`` decides nothing here. For tests,
    ``server_clock`` (a function returning Unix seconds) pins the time this object's
    statements use instead of the server's clock. ``read_only=True``: no DDL, and every
    call that would write returns ``Err(kind=READ_ONLY)`` (the connections are read-only
    transactions too).
    """

    def __init__(
        self,
        url: str,
        table_name: str = UNSET,
        *,
        schema: str | None = None,
        pool_size: int = 4,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        server_clock: Clock | None = None,
        read_only: bool = False,
        **settings: Any,
    ) -> None:
        from .backends.postgres import PostgresBackend  # psycopg is an optional extra

        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"url must be a postgresql:// URL, got {url!r}")
        misplaced = sorted(set(settings) & set(_SQLITE_ONLY))
        if misplaced:
            name = misplaced[0]
            raise ValueError(
                f"{name} does not apply to PostgreSQL: {_SQLITE_ONLY[name]}; "
                f"remove it from the arguments of PostgresQueue"
            )
        prepared = _prepare({"table_name": table_name, **settings}, clock)
        if server_clock is not None and not callable(server_clock):
            raise ValueError("server_clock must be a callable returning Unix seconds")
        backend = PostgresBackend(
            url,
            prepared.settings["table_name"],
            lock_timeout=prepared.lock_timeout,
            default_max_attempts=prepared.max_attempts,
            policy=prepared.policy,
            schema=schema,
            pool_size=_config(lambda: _bounded_int(pool_size, "pool_size", 1, 1000)),
            server_clock=server_clock,
            read_only=read_only,
        )
        self._adopt(backend, prepared, serializer, clock)
        self.url = backend.path


def connect(url: str | os.PathLike[str], table_name: str = UNSET, **settings: Any) -> Queue:
    """Open a queue by URL or file path; the scheme picks the backend::

        sqqueue.connect("jobs.db", "emails")                      # an SQLite file
        sqqueue.connect("sqlite:///jobs.db", "emails")            # the same, as a URL
        sqqueue.connect("sqlite:////var/lib/app/jobs.db", "emails")  # an absolute path
        sqqueue.connect("postgresql://app@db.internal/app", "emails")

    Other keyword arguments are the queue's settings, and ``read_only=True`` to look at
    an existing queue without changing anything (see :class:`SQLiteQueue`).
    """
    if not isinstance(url, (str, os.PathLike)):
        raise ValueError(f"url must be a str, got {type(url).__name__}")
    target = parse_target(url)
    if target.kind == "postgresql":
        return PostgresQueue(target.location, table_name, **settings)
    misplaced = sorted(set(settings) & set(_POSTGRES_ONLY))
    if misplaced:
        name = misplaced[0]
        raise ValueError(
            f"{name} does not apply to SQLite: {_POSTGRES_ONLY[name]}; remove it, "
            "or connect to a postgresql:// URL"
        )
    return SQLiteQueue(target.location, table_name, **settings)


def list_queues(
    target: str | os.PathLike[str], *, schema: str | None = None
) -> Result[list[str], QueueError]:
    """Names of the queues in a database, sorted: ``Ok(["emails", "thumbnails"])``.

    ``target`` is an SQLite file (a path or ``sqlite:///`` URL) or a ``postgresql://``
    URL (``schema``: the PostgreSQL schema the queues live in). Reads only: nothing is
    created or migrated.
    """
    try:
        return Ok(tools.list_queues_at(target, schema=schema))
    except ValueError as exc:
        return Err(QueueError(str(exc), ErrorKind.INVALID_INPUT))
    except QueueError as exc:
        return Err(QueueError(f"cannot list the queues: {exc}", exc.kind))
    except Exception as exc:
        logger.error("listing the queues of a database failed unexpectedly", exc_info=exc)
        return Err(QueueError(f"cannot list the queues: {exc!r}", ErrorKind.STORAGE))
