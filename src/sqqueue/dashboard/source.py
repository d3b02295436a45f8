"""Where the dashboard's numbers come from: the queues of one database, read through the
public API of sqqueue, plus what the app itself samples over time.

Everything here is synchronous (sqlite3 and psycopg calls); the web layer runs it in
worker threads. Queue objects are opened once per name, by :meth:`Source.open_queue`
alone, and only for names that :func:`sqqueue.list_queues` reports, so looking never
creates a queue; a read-only source opens them with ``read_only=True``, so that it
changes nothing at all in the database. One whose calls say it is of no use any more
(its file was replaced by a restore, say) is dropped, and opened afresh by the next
request.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .. import list_queues, tools
from ..exceptions import ErrorKind, QueueError
from ..queue import Queue, SQLiteQueue, connect
from ..result import Err, Result
from ..stats import QueueStats
from ..targets import parse_target
from . import states

__all__ = [
    "FOREGROUND_REDRIVE",
    "MAX_ID",
    "Health",
    "RedriveJob",
    "Sampler",
    "Source",
    "is_postgres",
    "takes_long",
    "value_of",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=Exception)

#: chart buckets: one minute each, the last hour
BUCKET = 60.0
BUCKETS = 60
#: the totals the charts show, as (label, QueueStats field)
SERIES = (
    ("enqueued", "enqueued_total"),
    ("completed", "completed_total"),
    ("failed", "failed_total"),
)
_NAMES_TTL = 2.0  # seconds the list of queues is reused before it is read again
_WAL_MAGIC = (0x377F0682, 0x377F0683)
#: what a queue name can be (sqqueue's rule); anything else is no queue of ours
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: the largest message id (SQLite's largest integer): a larger one names no message
MAX_ID = 2**63 - 1
#: seconds a redrive of selected ids may take inside a request; one paced to take longer
#: runs in the background, as "redrive all" does, so a tiny rate holds no request (and no
#: worker thread) open for hours
FOREGROUND_REDRIVE = 5.0
#: what a call answers when the queue object itself is of no use any more: STORAGE (its
#: file was deleted or replaced, say by a restore) or CLOSED
_BROKEN = (ErrorKind.STORAGE, ErrorKind.CLOSED)


def value_of(result: Result[T, QueueError]) -> T:
    """The value of an ``Ok``; an ``Err``'s error raised (caught and shown by the callers)."""
    if isinstance(result, Err):
        raise result.error
    return result.value


def is_postgres(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def takes_long(count: int, rate: float | None) -> bool:
    """Whether redriving ``count`` dead letters at ``rate`` per second would take longer
    than :data:`FOREGROUND_REDRIVE` seconds (then it runs in the background)."""
    return rate is not None and count / rate > FOREGROUND_REDRIVE


class Sampler:
    """The event totals of each queue over time, in memory, for the charts.

    ``stats()`` gives totals since the queue was created; the rate per minute is the
    difference between samples. Only what this process saw is known: the charts start
    when the dashboard did, and keep at most an hour.
    """

    def __init__(self, window: float = BUCKET * BUCKETS) -> None:
        self.window = window
        self._samples: dict[str, deque[tuple[float, tuple[int, ...]]]] = {}
        self._lock = threading.Lock()

    def record(self, name: str, stats: QueueStats, now: float) -> None:
        values = tuple(int(getattr(stats, attr)) for _label, attr in SERIES)
        with self._lock:
            samples = self._samples.setdefault(name, deque())
            samples.append((now, values))
            # Keep one sample older than the window: the first bucket needs a start.
            while len(samples) > 2 and samples[1][0] < now - self.window - BUCKET:
                samples.popleft()

    def forget(self, keep: set[str]) -> None:
        """Drop the samples of queues that are gone."""
        with self._lock:
            for name in set(self._samples) - keep:
                del self._samples[name]

    def buckets(self, name: str, now: float) -> list[dict[str, Any]]:
        """One entry per minute of the last hour, oldest first: its start (Unix seconds)
        and, per series, the events counted in it (``None`` before sampling began)."""
        last_start = (now // BUCKET) * BUCKET
        first_start = last_start - (BUCKETS - 1) * BUCKET
        with self._lock:
            samples = list(self._samples.get(name, ()))
        rows: list[dict[str, Any]] = []
        for i in range(BUCKETS):
            start = first_start + i * BUCKET
            row: dict[str, Any] = {"start": start}
            row.update(dict.fromkeys((label for label, _attr in SERIES), None))
            rows.append(row)
        if not samples:
            return rows
        # A bucket has data from the one holding the first sample on.
        seen_from = (samples[0][0] // BUCKET) * BUCKET
        for row in rows:
            if row["start"] >= seen_from:
                for label, _attr in SERIES:
                    row[label] = 0
        for (_t0, before), (t1, after) in itertools.pairwise(samples):
            index = int((t1 - first_start) // BUCKET)
            if not 0 <= index < BUCKETS:
                continue
            for position, (label, _attr) in enumerate(SERIES):
                # A counter that went down means the queue was made anew: count from 0.
                delta = after[position] - before[position]
                rows[index][label] += delta if delta >= 0 else after[position]
        return rows


@dataclass
class Health:
    """How the database looks: file sizes (SQLite) or query round trip (PostgreSQL)."""

    backend: str
    ok: bool = True
    error: str | None = None
    db_bytes: int | None = None
    wal_bytes: int | None = None
    #: when the app last saw the WAL restart after a checkpoint (Unix seconds), if ever
    last_checkpoint: float | None = None
    #: seconds a trivial query took (PostgreSQL)
    query_seconds: float | None = None
    checked_at: float = 0.0


@dataclass
class RedriveJob:
    """A redrive running in the background: every dead letter of a queue, or selected ones
    whose pacing takes too long for a request."""

    queue: str
    rate: float | None
    started_at: float
    #: how many dead letters were selected; None: every one
    selected: int | None = None
    total: int = 0
    done: int = 0
    finished_at: float | None = None
    error: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)
    #: the job's own queue object while it runs (closed to stop it, on shutdown)
    handle: Queue | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.finished_at is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "rate": self.rate,
            "selected": self.selected,
            "started_at": self.started_at,
            "total": self.total,
            "done": self.done,
            "finished_at": self.finished_at,
            "error": self.error,
            "running": self.running,
        }


class Source:
    """The queues of one database (an SQLite file or a PostgreSQL URL, in ``schema``);
    ``read_only``: opened to look only, changing nothing in the database."""

    def __init__(
        self,
        target: str,
        *,
        schema: str | None = None,
        read_only: bool = False,
        sample_every: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(target, str) or not target:
            raise ValueError(
                "target must be an SQLite file path, a sqlite:/// URL or a postgresql:// URL"
            )
        found = parse_target(target)  # (ValueError for a mistyped URL, password masked)
        if found.kind == "postgresql":
            target = found.location  # as libpq takes it: POSTGRESQL:// lowercased, say
        if schema is not None and not is_postgres(target):
            raise ValueError("schema applies to a PostgreSQL target only")
        self.target = target
        self.schema = schema
        self.backend = "postgresql" if is_postgres(target) else "sqlite"
        #: the SQLite file's path (what ``sqqueue migrate`` takes); None on PostgreSQL
        self.path = None if self.backend == "postgresql" else found.location
        self.read_only = read_only
        self.sample_every = sample_every
        self.clock = clock
        self.sampler = Sampler()
        self._queues: dict[str, Queue] = {}
        self._names: tuple[float, list[str]] | None = None
        self._legacy: tuple[float, list[str]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._jobs: dict[str, RedriveJob] = {}
        self._wal_mark: tuple[int, int, int] | None = None  # (checkpoint seq, salt, size)
        self._last_checkpoint: float | None = None

    def __repr__(self) -> str:
        # A PostgreSQL URL may hold a password: never shown.
        shown = "postgresql://..." if self.backend == "postgresql" else self.target
        return f"<Source {shown!r}>"

    # -- queues --------------------------------------------------------------------------

    def open_queue(self, name: str) -> Queue:
        """Open queue ``name`` of the target: the one place the dashboard opens queues.

        Read-only, nothing is created, upgraded or written (not even the journal mode, or
        the -wal and -shm files), and a file the process may only read is read all the
        same; a queue in an older layout is refused then (``QueueError`` saying to run
        ``sqqueue migrate``), as bringing it up to date writes. Otherwise the queue is
        opened for use, as an application opens it (an older layout is upgraded)."""
        if self.backend == "postgresql":
            return connect(
                self.target, name, schema=self.schema, pool_size=2, read_only=self.read_only
            )
        if self.read_only:
            return connect(self.target, name, read_only=True)
        try:
            # Opening must never rewrite the file, whatever the environment asks of writers.
            return connect(self.target, name, vacuum_on_start=False)
        except QueueError as exc:
            if exc.kind is not ErrorKind.READ_ONLY:
                raise
            # A file this user may only read: a dashboard that only looks reads it.
            raise QueueError(
                f"{exc}; or, to look only, serve the dashboard read-only (sqqueue dashboard "
                "--read-only, create_app(..., read_only=True))",
                exc.kind,
            ) from exc

    def names(self, fresh: bool = False) -> list[str]:
        """The queues in the database, sorted (read again every few seconds).

        Raises ``QueueError`` when the database cannot be read."""
        now = time.monotonic()
        with self._lock:
            cached = self._names
        if cached is not None and not fresh and now - cached[0] < _NAMES_TTL:
            return cached[1]
        found = value_of(list_queues(self.target, schema=self.schema))
        with self._lock:
            self._names = (now, found)
        return found

    def legacy_names(self) -> list[str]:
        """The queues of the SQLite file still in sqqueue 0.1.0's layout, which listing
        does not show until they are migrated (read again every few seconds; always
        empty on PostgreSQL, which 0.1.0 did not support).

        Raises ``QueueError`` when the file cannot be read."""
        if self.path is None:
            return []
        now = time.monotonic()
        with self._lock:
            cached = self._legacy
        if cached is not None and now - cached[0] < _NAMES_TTL:
            return cached[1]
        found = tools.legacy_queues(self.path)
        with self._lock:
            self._legacy = (now, found)
        return found

    def has(self, name: str) -> bool:
        """Whether the database has a queue ``name`` (opening nothing).

        Raises ``QueueError`` when the database cannot be read."""
        if not NAME.fullmatch(name):
            return False
        with self._lock:
            if name in self._queues:
                return True
        return name in self.names() or name in self.names(fresh=True)

    def queue(self, name: str) -> Queue | None:
        """The open queue ``name``, or None when the database has no such queue."""
        if not NAME.fullmatch(name):
            return None
        with self._lock:
            opened = self._queues.get(name)
        if opened is not None:
            return opened
        if not self.has(name):
            return None
        created = self.open_queue(name)
        with self._lock:
            opened = self._queues.setdefault(name, created)
        if opened is not created:
            created.close()
        return opened

    def checked(self, name: str, queue: Queue, result: Result[T, E]) -> Result[T, E]:
        """``result`` of a call on ``queue``, the cached queue ``name``, as it is; when it
        says the queue object is of no use any more (STORAGE: its file was deleted or
        replaced, say by a restore; or CLOSED), that object is dropped and closed first,
        so the next request opens the queue afresh instead of failing until a restart."""
        if isinstance(result, Err) and getattr(result.error, "kind", None) in _BROKEN:
            self.drop(name, queue)
        return result

    def run(
        self, name: str, queue: Queue, call: Callable[..., Result[T, E]], *args: Any
    ) -> Result[T, E]:
        """``call(*args)``, a method of ``queue`` (the cached queue ``name``), its result
        :meth:`checked` (in the caller's worker thread: dropping closes connections)."""
        return self.checked(name, queue, call(*args))

    def drop(self, name: str, queue: Queue) -> None:
        """Forget and close the cached ``queue`` of ``name`` (if it is still the cached one)."""
        with self._lock:
            if self._queues.get(name) is not queue:
                return  # dropped already by another request, maybe opened again since
            del self._queues[name]
            self._names = None  # read the list again: the queue may be gone with the file
        logger.info("dashboard: queue %r is of no use any more; it is opened again", name)
        queue.close()

    def message(self, name: str, message_id: int) -> tuple[bool, dict[str, Any] | None]:
        """Whether queue ``name`` exists, and its message ``message_id`` (None: not there)."""
        queue = self.queue(name)
        if queue is None:
            return False, None
        if not 0 <= message_id <= MAX_ID:
            return True, None  # no such id can exist: not found, like any unknown id
        return True, value_of(self.checked(name, queue, queue.get_message(message_id)))

    def close(self) -> None:
        """Stop sampling and background redrives, and close every queue (a clean shutdown)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        with self._lock:
            queues = list(self._queues.values())
            self._queues.clear()
            # Closing a job's queue ends its paced wait at once (Err CLOSED, reported).
            queues += [job.handle for job in self._jobs.values() if job.handle is not None]
        for queue in queues:
            queue.close()

    # -- numbers ---------------------------------------------------------------------------

    def stats(self, name: str) -> QueueStats | None:
        """A queue's stats; None if there is no such queue. Raises ``QueueError``."""
        queue = self.queue(name)
        if queue is None:
            return None
        found: QueueStats = value_of(self.checked(name, queue, queue.stats()))
        return found

    def overview(self) -> dict[str, Any]:
        """Every queue's counts by state, oldest age, leases expiring soon, totals, and the
        database's health, as the overview and ``/api/overview`` show them; and the
        queues of the file still in sqqueue 0.1.0's layout, with what to do about them
        (else a file holding only those would look empty and healthy)."""
        now = self.clock()
        rows: list[dict[str, Any]] = []
        error = None
        legacy: list[str] = []
        try:
            names = self.names()
        except Exception as exc:  # the database cannot be read: say so, show nothing
            names, error = [], str(exc)
        else:
            try:
                legacy = self.legacy_names()
            except QueueError as exc:  # (read just now: a passing lock, say) the rest shows
                logger.debug("dashboard: cannot look for sqqueue 0.1.0 queues: %s", exc)
        for name in names:
            rows.append(self.queue_summary(name, now))
        legacy_error = self.legacy_error(legacy)
        return {
            "at": now,
            "queues": rows,
            "error": error,
            "legacy_queues": legacy,
            "legacy_error": legacy_error,
            "health": self.health(rows, error or legacy_error),
        }

    def legacy_error(self, legacy: list[str]) -> str | None:
        """What the dashboard says of the file's queues in sqqueue 0.1.0's layout, if any."""
        if not legacy:
            return None
        return (
            f"{self.path} holds queues in sqqueue 0.1.0's layout ({', '.join(legacy)}), not "
            f"shown until they are migrated: run 'sqqueue migrate {self.path}'"
        )

    def queue_summary(self, name: str, now: float) -> dict[str, Any]:
        row: dict[str, Any] = {"name": name, "error": None}
        try:
            stats = self.stats(name)
        except Exception as exc:
            row["error"] = str(exc)
            return row
        if stats is None:
            row["error"] = f"queue {name!r} is gone"
            return row
        self.sampler.record(name, stats, now)
        row.update(summary(stats))
        row["chart"] = self.sampler.buckets(name, now)
        return row

    def health(self, rows: list[dict[str, Any]] | None = None, error: str | None = None) -> Health:
        """The database's health; for SQLite from the stats rows already read. ``error``:
        what keeps the database from being read in full (it cannot be listed, say), a
        failure of its health too."""
        now = self.clock()
        if self.backend == "sqlite":
            return self._file_health(rows or [], now, error)
        health = self._connection_health(now)
        if error is not None and health.ok:
            health.ok, health.error = False, error
        return health

    def _file_health(
        self, rows: list[dict[str, Any]], now: float, error: str | None = None
    ) -> Health:
        health = Health("sqlite", checked_at=now)
        sized = [row for row in rows if row.get("db_bytes") is not None]
        if sized:
            health.db_bytes = sized[0]["db_bytes"]
            health.wal_bytes = sized[0]["wal_bytes"]
        errors = [row["error"] for row in rows if row.get("error")]
        if error is not None:
            errors.insert(0, error)
        if errors:
            health.ok, health.error = False, errors[0]
        self._watch_wal(health.wal_bytes, now)
        health.last_checkpoint = self._last_checkpoint
        return health

    def _watch_wal(self, wal_bytes: int | None, now: float) -> None:
        """Notice checkpoints: SQLite starts the WAL over (a new checkpoint sequence number
        and salt in its header) once a checkpoint has copied all of it back, and a
        truncating checkpoint shrinks the file. Both are only seen when they happen
        between two looks, so this is "the last checkpoint the dashboard saw"."""
        path = self._sqlite_path()
        if path is None:
            return
        header = b""
        try:
            with open(path + "-wal", "rb") as f:
                header = f.read(32)
        except OSError:
            pass
        seq = salt = 0
        if len(header) == 32:
            magic, _version, _page, seq, salt = struct.unpack(">IIIII", header[:20])
            if magic not in _WAL_MAGIC:
                seq = salt = 0
        mark = (seq, salt, wal_bytes or 0)
        with self._lock:
            previous, self._wal_mark = self._wal_mark, mark
            if previous is not None and (mark[:2] != previous[:2] or mark[2] < previous[2]):
                self._last_checkpoint = now

    def _sqlite_path(self) -> str | None:
        with self._lock:
            queues = list(self._queues.values())
        for queue in queues:
            if isinstance(queue, SQLiteQueue):
                return os.fspath(queue.db_path)
        return None

    def _connection_health(self, now: float) -> Health:
        health = Health("postgresql", checked_at=now)
        started = time.perf_counter()
        try:
            names = self.names()
            queue = self.queue(names[0]) if names else None
            if queue is None:
                value_of(list_queues(self.target, schema=self.schema))
            else:
                value_of(self.checked(names[0], queue, queue.is_drained()))
        except Exception as exc:
            health.ok, health.error = False, str(exc)
        health.query_seconds = time.perf_counter() - started
        return health

    # -- sampling ------------------------------------------------------------------------

    def start(self) -> None:
        """Start sampling every queue's totals in the background (once; idempotent)."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._sample_loop, name="sqqueue-dashboard-sampler", daemon=True
            )
        self._thread.start()

    def sample(self) -> None:
        """Read every queue's totals once (what the background thread does)."""
        now = self.clock()
        try:
            names = self.names()
        except Exception as exc:
            logger.debug("dashboard: cannot list the queues: %s", exc)
            return
        rows = [self.queue_summary(name, now) for name in names]
        self.sampler.forget(set(names))
        if self.backend == "sqlite":
            self._file_health(rows, now)

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # never let the sampler die: the charts would stop quietly
                logger.exception("dashboard: sampling the queues failed")
            self._stop.wait(self.sample_every)

    # -- redriving in the background ------------------------------------------------------

    def redrive_job(self, name: str) -> RedriveJob | None:
        with self._lock:
            return self._jobs.get(name)

    def start_redrive(
        self, name: str, rate: float | None, ids: list[int] | None = None
    ) -> tuple[RedriveJob, bool]:
        """Redrive the dead letters ``ids`` of ``name`` (None: every one) in a background
        thread, at ``rate`` per second; returns the job and whether this call started it.

        One job per queue at a time: while one runs, it is returned (started False), so
        a flood of slow redrives holds one thread, not one per request. The job has its
        own queue object, which :meth:`close` closes to end it."""
        if self.queue(name) is None:
            raise LookupError(f"no queue {name!r}")
        with self._lock:
            current = self._jobs.get(name)
            if current is not None and current.running:
                return current, False
            selected = None if ids is None else len(ids)
            job = RedriveJob(name, rate, started_at=self.clock(), selected=selected)
            job.total = selected or 0
            self._jobs[name] = job

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        def run() -> None:
            queue = None
            try:
                queue = self.open_queue(name)
                with self._lock:
                    stopping = self._stop.is_set()
                    if not stopping:
                        job.handle = queue
                if stopping:
                    job.error = "the dashboard stopped before the redrive began"
                    return
                result = queue.redrive(ids, None, rate, progress)
                if result.is_ok():
                    job.done = result.value
                    job.total = max(job.total, job.done)
                    logger.info("dashboard: redrove %d dead letter(s) of %r", job.done, name)
                else:
                    job.error = str(result.error)
            except Exception as exc:  # reported on the page, never lost
                job.error = f"redrive failed: {exc!r}"
            finally:
                with self._lock:
                    job.handle = None
                if queue is not None:
                    queue.close()
                job.finished_at = self.clock()

        job.thread = threading.Thread(target=run, name=f"sqqueue-dashboard-redrive-{name}")
        job.thread.daemon = True
        job.thread.start()
        return job, True


def summary(stats: QueueStats) -> dict[str, Any]:
    """A queue's stats as the dashboard shows them (its state labels)."""
    return {
        "counts": states.counts(stats),
        "depth": stats.depth,
        "oldest_ready_age": stats.oldest_ready_age,
        "expiring_soon": stats.expiring_soon,
        "totals": {
            "enqueued": stats.enqueued_total,
            "completed": stats.completed_total,
            "failed": stats.failed_total,
            "dead_lettered": stats.dead_lettered_total,
            "lease_expirations": stats.lease_expirations_total,
            "ttl_expired": stats.ttl_expired_total,
        },
        "db_bytes": stats.db_bytes,
        "wal_bytes": stats.wal_bytes,
    }
