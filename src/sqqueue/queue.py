"""Queues bound to a backend: :class:`SQLiteQueue`, :class:`PostgresQueue`, and
:func:`connect` and :func:`list_queues`, which pick the backend from a URL.

The queue logic itself is :class:`~sqqueue.core.queue.Queue` (see :mod:`sqqueue.core`);
this module resolves settings and opens the backend.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from . import catalog
from .backends.base import LATEST_TIME, Backend, Policy
from .backends.sqlite import SQLiteBackend
from .core.admin import LISTABLE_STATES, PURGEABLE_STATES
from .core.checks import bounded_int, config, seconds
from .core.parts import Clock
from .core.queue import MessageRef, Queue
from .encryption import EncryptionKey
from .exceptions import ErrorKind, QueueError
from .metrics import Metrics, StatsdMetrics
from .result import Err, Ok, Result
from .serializers import Serializer
from .settings import UNSET, Settings, check_accept_unsigned_has_key, load
from .signing import SigningKeys, resolve_signing_key
from .targets import parse_target, postgres_url, refuse_keyword_value

__all__ = [
    "LISTABLE_STATES",
    "PURGEABLE_STATES",
    "MessageRef",
    "PostgresQueue",
    "Queue",
    "SQLiteQueue",
    "connect",
    "list_queues",
]

logger = logging.getLogger(__name__)

#: Arguments of PostgreSQL queues that SQLite queues refuse, and why.
_POSTGRES_ONLY = {
    "schema": "an SQLite file has no schemas",
    "pool_size": "SQLite queues open one connection per thread",
}


def _settings(
    explicit: dict[str, Any],
    backend: str,
    clock: Clock | None,
    signer: SigningKeys | None,
    read_only: bool,
) -> Settings:
    """Resolve and check a queue's settings, before anything is opened."""
    _check_clock(clock, "clock")
    resolved = load(explicit, backend)
    check_accept_unsigned_has_key(resolved, signer is not None, read_only)
    return resolved


def _check_clock(clock: Clock | None, what: str) -> None:
    """ValueError unless ``clock`` is None or a callable that tells a plausible time now
    (a clock returning nonsense would make every message look expired, or never due)."""
    if clock is None:
        return
    if not callable(clock):
        raise ValueError(f"{what} must be a callable returning Unix seconds")
    try:
        now = clock()
    except Exception as exc:
        raise ValueError(f"{what}() raised {type(exc).__name__}: {exc}") from exc
    if (
        not isinstance(now, (int, float))
        or isinstance(now, bool)
        or not 0 <= now <= LATEST_TIME  # (NaN fails this too)
    ):
        raise ValueError(
            f"{what}() must return Unix seconds (a number from 0 to {LATEST_TIME:.0f}), got {now!r}"
        )


def _metrics(settings: Settings) -> Metrics | None:
    if settings.statsd_host is None:
        return None
    return StatsdMetrics(
        settings.statsd_host, settings.statsd_port, settings.statsd_prefix, settings.table_name
    )


SigningKey = str | bytes | list[str | bytes] | tuple[str | bytes, ...] | SigningKeys


def _start(
    queue: Queue,
    backend: Backend,
    settings: Settings,
    serializer: Serializer | None,
    clock: Clock | None,
    signer: SigningKeys | None,
) -> None:
    """Finish construction of a queue over its opened backend (closed again on failure)."""
    try:
        Queue.__init__(
            queue,
            backend,
            settings,
            serializer=serializer,
            clock=clock,
            metrics=_metrics(settings),
            signer=signer,
        )
    except BaseException:
        backend.close()
        raise


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

    ``signing_key`` (a key, or a list of keys: the first signs, any verifies; else
    ``SQQUEUE_SIGNING_KEY`` or ``SQQUEUE_SIGNING_KEY_FILE``) signs every message enqueued
    and delivers only messages whose signature verifies (see docs/security.md).

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
        # The rest of 0.1.0's positional order, which code written for it may rely on.
        statsd_host: str | None = UNSET,
        statsd_port: int | None = UNSET,
        statsd_prefix: str = UNSET,
        default_priority: int = UNSET,
        default_visibility_timeout: float = UNSET,
        default_max_attempts: int = UNSET,
        *,
        serializer: Serializer | None = None,
        clock: Clock | None = None,
        read_only: bool = False,
        encryption_key: str | bytes | EncryptionKey | None = None,
        signing_key: SigningKey | None = None,
        **settings: Any,
    ) -> None:
        signer = resolve_signing_key(signing_key)
        resolved = _settings(
            {
                "db_path": db_path,
                "table_name": table_name,
                "vacuum_threshold": vacuum_threshold,
                "vacuum_on_start": vacuum_on_start,
                "default_max_attempts": default_max_attempts,
                "default_visibility_timeout": default_visibility_timeout,
                "default_priority": default_priority,
                "statsd_host": statsd_host,
                # None was 0.1.0's default for "not given": the standard port then.
                "statsd_port": UNSET if statsd_port is None else statsd_port,
                "statsd_prefix": statsd_prefix,
                **settings,
            },
            "sqlite",
            clock,
            signer,
            read_only,
        )
        if resolved.db_path is None:
            raise ValueError(
                "db_path is None: pass a file path (or leave it out for queue.db, in the "
                "current directory)"
            )
        # A libpq "host=... password=..." string is a mistake, not a file to create.
        refuse_keyword_value(resolved.db_path)
        backend = SQLiteBackend(
            resolved.db_path,
            resolved.table_name,
            clock=clock,
            policy=Policy.of(resolved),
            read_only=read_only,
            encryption_key=encryption_key,
        )
        _start(self, backend, resolved, serializer, clock, signer)
        self.db_path: str = os.fspath(resolved.db_path)  # as given (0.1.0's attribute)
        if resolved.vacuum_on_start and not self.read_only:
            result = self.vacuum_database()
            if result.is_err():
                logger.warning("queue %r: vacuum on start skipped: %s", self.name, result.error)

    @staticmethod
    def list_queues(db_path: str | os.PathLike[str]) -> Result[list[str], QueueError]:
        """Names of the queues in a database file: ``Ok(["emails", "thumbnails"])``
        (those of sqqueue 0.1.0 once migrated: see :func:`list_queues`)."""
        try:
            refuse_keyword_value(db_path)
        except ValueError as exc:
            return Err(QueueError(str(exc), ErrorKind.INVALID_INPUT))
        try:
            return Ok(catalog.list_queues(db_path))
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
    transactions too). ``signing_key``: as for :class:`SQLiteQueue`.
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
        signing_key: SigningKey | None = None,
        **settings: Any,
    ) -> None:
        from .backends.postgres import PostgresBackend  # psycopg is an optional extra

        # (ValueError naming it without its password; an uppercase scheme is lowercased)
        url = postgres_url(url)
        if "encryption_key" in settings:
            raise ValueError(
                "encryption_key does not apply to PostgreSQL queues: encryption at rest is for "
                "SQLite files; on PostgreSQL use the server's disk encryption and TLS "
                "(sslmode=verify-full in the URL)"
            )
        signer = resolve_signing_key(signing_key)
        resolved = _settings(
            {"table_name": table_name, **settings}, "postgresql", clock, signer, read_only
        )
        _check_clock(server_clock, "server_clock")
        backend = PostgresBackend(
            url,
            resolved.table_name,
            policy=Policy.of(resolved),
            schema=schema,
            pool_size=config(lambda: bounded_int(pool_size, "pool_size", 1, 1000)),
            server_clock=server_clock,
            read_only=read_only,
        )
        _start(self, backend, resolved, serializer, clock, signer)
        self.url = backend.path


def connect(url: str | os.PathLike[str], table_name: str = UNSET, **settings: Any) -> Queue:
    """Open a queue by URL or file path; the scheme picks the backend::

        sqqueue.connect("jobs.db", "emails")                      # an SQLite file
        sqqueue.connect("sqlite:///jobs.db", "emails")            # the same, as a URL
        sqqueue.connect("sqlite:////var/lib/app/jobs.db", "emails")  # an absolute path
        sqqueue.connect("postgresql://app@db.internal/app", "emails")

    Other keyword arguments are the queue's settings, ``signing_key=`` to sign and verify
    messages, and ``read_only=True`` to look at an existing queue without changing
    anything (see :class:`SQLiteQueue`).
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
    target: str | os.PathLike[str],
    *,
    schema: str | None = None,
    lock_timeout: float | None = None,
) -> Result[list[str], QueueError]:
    """Names of the queues in a database, sorted: ``Ok(["emails", "thumbnails"])``.

    ``target`` is an SQLite file (a path or ``sqlite:///`` URL) or a ``postgresql://``
    URL (``schema``: the PostgreSQL schema the queues live in). Reads only: nothing is
    created or migrated, so queues still in sqqueue 0.1.0's layout are not listed until
    they are migrated (``sqqueue migrate FILE``, or opening each one for use);
    ``sqqueue stats FILE`` names them. On PostgreSQL, as for a queue's calls (default: the
    ``lock_timeout`` setting): a wait for a lock ends after ``lock_timeout`` seconds and a
    server that stops answering is given up after twice that (``Err(kind=LOCKED)``); a
    connection that cannot be made is given up after ``lock_timeout`` (at least 2 s,
    libpq's least), ``Err(kind=STORAGE)``.
    """
    try:
        if lock_timeout is None:
            # The setting (environment, config file) is read only where it is used: an
            # exporter lists an SQLite file's queues at every scrape.
            postgres = parse_target(target).kind == "postgresql"
            lock_timeout = load({}, "postgresql").lock_timeout if postgres else 30.0
        timeout = config(
            lambda: seconds(lock_timeout, "lock_timeout", minimum=0, maximum=86400, strict=True)
        )
        return Ok(catalog.list_queues_at(target, schema=schema, timeout=timeout))
    except ValueError as exc:
        return Err(QueueError(str(exc), ErrorKind.INVALID_INPUT))
    except QueueError as exc:
        return Err(QueueError(f"cannot list the queues: {exc}", exc.kind))
    except Exception as exc:
        logger.error("listing the queues of a database failed unexpectedly", exc_info=exc)
        return Err(QueueError(f"cannot list the queues: {exc!r}", ErrorKind.STORAGE))
