"""Prometheus metrics (``pip install 'sqqueue[prometheus]'``).

Three pieces:

* :class:`QueueCollector` reads every queue's stats from a database (an SQLite file or a
  PostgreSQL URL) when Prometheus scrapes: depth by state, oldest ready age, leases about
  to expire, event totals, and an SQLite file's sizes. Any process can serve it
  (``sqqueue metrics serve jobs.db``, or a ``postgresql://`` URL); it only reads.
* :class:`Durations` records histograms of time-in-queue and processing time for a
  :class:`~sqqueue.Worker`: ``Worker(queue, handler, durations=Durations())``.
* :class:`SignatureCollector` exports the signature counts of the consumers' own queue
  objects (messages refused as "signature invalid", unsigned ones delivered): each queue
  object counts those in memory, so they are served by the process that consumes.

Example::

    from prometheus_client import REGISTRY, start_http_server
    from sqqueue.prometheus import QueueCollector

    REGISTRY.register(QueueCollector("jobs.db"))
    # or: QueueCollector("postgresql://app@db.internal/app", schema="jobs")
    start_http_server(9464, addr="127.0.0.1")
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Histogram, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "sqqueue.prometheus needs prometheus-client: pip install 'sqqueue[prometheus]'"
    ) from exc

from . import tools
from .aio import AsyncQueue
from .exceptions import ErrorKind, QueueError
from .queue import Queue, connect, list_queues
from .result import Err
from .targets import parse_target, redact

__all__ = ["Durations", "QueueCollector", "SignatureCollector", "serve"]

logger = logging.getLogger(__name__)

_STATES = ("ready", "delayed", "waiting", "processing", "dead")
_TOTALS = (
    ("enqueued", "enqueued_total", "Messages enqueued since the queue was created."),
    ("completed", "completed_total", "Messages completed."),
    ("failed", "failed_total", "Failed attempts (fail_message calls)."),
    ("dead_lettered", "dead_lettered_total", "Messages moved to the dead-letter queue."),
    ("lease_expirations", "lease_expirations_total", "Leases that expired unacknowledged."),
    ("ttl_expired", "ttl_expired_total", "Messages whose time to live ran out undelivered."),
)
#: the signature counts of QueueStats, and their help texts
_SIGNATURES = {
    "signature_invalid": "Messages these queue objects dead-lettered as 'signature invalid'.",
    "unsigned_accepted": "Unsigned messages these queue objects delivered (accept_unsigned).",
}


class QueueCollector(Collector):
    """Exports the stats of the queues in one database (all of them by default).

    ``db_path`` is an SQLite file (a path or ``sqlite:///`` URL) or a ``postgresql://``
    URL; ``schema`` is the PostgreSQL schema the queues live in. Queues are opened
    read-only, once, on the first scrape that needs them. The file-size gauges are for
    SQLite only (a PostgreSQL server's storage is its own). The signature counts are not
    in the database, only in the queue objects that consume: see
    :class:`SignatureCollector`.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        queues: Iterable[str] | None = None,
        *,
        schema: str | None = None,
    ):
        self.db_path = os.fspath(db_path)
        self._kind = parse_target(self.db_path).kind  # a bad target raises ValueError now
        if schema is not None and self._kind != "postgresql":
            raise ValueError("schema applies to a postgresql:// URL only")
        self.schema = schema
        self.queues = list(queues) if queues is not None else None
        self._open: dict[str, Queue] = {}
        self._lock = threading.Lock()

    def _queue(self, name: str) -> Queue:
        with self._lock:
            queue = self._open.get(name)
            if queue is None:
                settings: dict[str, Any] = {"read_only": True}
                if self._kind == "postgresql":
                    settings.update(schema=self.schema, pool_size=1)
                queue = self._open[name] = connect(self.db_path, name, **settings)
            return queue

    def close(self) -> None:
        self._forget_all_but(())

    def _forget(self, name: str) -> None:
        """Close and forget the queue object of ``name``, if one is open."""
        with self._lock:
            queue = self._open.pop(name, None)
        if queue is not None:
            queue.close()

    def _forget_all_but(self, names: Iterable[str]) -> None:
        """Close the queue objects of queues no longer listed (gone with their file, or
        dropped): a long-running exporter keeps none it will not read again."""
        keep = set(names)
        for name in [n for n in list(self._open) if n not in keep]:
            self._forget(name)

    def _unmigrated(self) -> int:
        """1, logged, when an SQLite file holds only queues in sqqueue 0.1.0's layout
        (which listing does not show): else the file would look healthy and empty."""
        if self._kind != "sqlite":
            return 0
        try:
            legacy = tools.legacy_queues(parse_target(self.db_path).location)
        except QueueError:
            return 0  # (no file, say: listing said so already)
        if not legacy:
            return 0
        logger.warning(
            "%s holds queues in sqqueue 0.1.0's layout (%s), not exported until migrated: "
            "run 'sqqueue migrate %s'",
            redact(self.db_path),
            ", ".join(legacy),
            redact(self.db_path),
        )
        return 1

    def collect(self) -> Iterator[Any]:
        # 0 when this scrape could not read something (the exporter's log says what):
        # without it, a database gone would look like one with no queues.
        up = GaugeMetricFamily(
            "sqqueue_up", "1 if every queue could be read at this scrape, else 0."
        )
        names = self.queues
        if names is None:
            listed = list_queues(self.db_path, schema=self.schema)
            if listed.is_err():
                logger.warning("cannot list queues of %s: %s", redact(self.db_path), listed.error)
                up.add_metric([], 0)
                yield up
                return
            names = listed.unwrap()
            self._forget_all_but(names)
        failures = self._unmigrated() if not names else 0
        depth = GaugeMetricFamily(
            "sqqueue_messages", "Messages in the queue by state.", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "sqqueue_oldest_ready_age_seconds",
            "How long the oldest ready message has waited.",
            labels=["queue"],
        )
        expiring = GaugeMetricFamily(
            "sqqueue_leases_expiring",
            "Leases that run out within the next 60 seconds.",
            labels=["queue"],
        )
        sizes = GaugeMetricFamily(
            "sqqueue_file_bytes", "Database and WAL file sizes.", labels=["queue", "file"]
        )
        behind = GaugeMetricFamily(
            "sqqueue_wal_frames_not_checkpointed",
            "WAL frames a checkpoint could not copy back: a reader holds an old snapshot.",
            labels=["queue"],
        )
        totals = {
            key: CounterMetricFamily(f"sqqueue_{metric}", help_text, labels=["queue"])
            for key, metric, help_text in _TOTALS
        }
        for name in names:
            try:
                result = self._queue(name).stats()
            except (QueueError, ValueError) as exc:  # cannot be opened read-only (0.1.0, gone)
                logger.warning("queue %r of %s skipped: %s", name, redact(self.db_path), exc)
                failures += 1
                continue
            if isinstance(result, Err):
                logger.warning("stats of queue %r failed: %s", name, result.error)
                failures += 1
                if result.error.kind in (ErrorKind.STORAGE, ErrorKind.CLOSED):
                    self._forget(name)  # (its file replaced, say: opened afresh next time)
                continue
            stats = result.value
            for state in _STATES:
                depth.add_metric([name, state], getattr(stats, state))
            oldest.add_metric([name], stats.oldest_ready_age or 0.0)
            expiring.add_metric([name], stats.expiring_soon)
            if self._kind == "sqlite":
                sizes.add_metric([name, "db"], stats.db_bytes)
                sizes.add_metric([name, "wal"], stats.wal_bytes)
                behind.add_metric([name], stats.wal_frames_not_checkpointed)
            for key, metric, _ in _TOTALS:
                field = "lease_expirations_total" if key == "lease_expirations" else metric
                totals[key].add_metric([name], getattr(stats, field))
        up.add_metric([], 0 if failures else 1)
        yield up
        yield depth
        yield oldest
        yield expiring
        yield sizes
        yield behind
        yield from totals.values()


class SignatureCollector(Collector):
    """Exports ``sqqueue_signature_invalid_total`` and ``sqqueue_unsigned_accepted_total``
    of this process's queue objects, by queue.

    A queue object with a signing key counts the messages it refused and the unsigned
    ones it delivered in memory, since it was opened (``stats().signature_invalid`` and
    ``stats().unsigned_accepted``); the database keeps no such total, so a
    :class:`QueueCollector`, which opens queues of its own, cannot see them. Register this
    collector in the consumers' process, with the queue objects they use (synchronous or
    asyncio)::

        REGISTRY.register(SignatureCollector([queue]))

    Several objects on one queue add up to one series. A closed object keeps the counts
    last read from it, so that a series never goes down while the process runs (a drop
    would read to Prometheus as a restart, and the next scrape as new refusals).
    """

    def __init__(self, queues: Iterable[Queue | AsyncQueue]) -> None:
        self.queues = [q.sync if isinstance(q, AsyncQueue) else q for q in queues]
        self._last = [dict.fromkeys(_SIGNATURES, 0) for _ in self.queues]
        self._lock = threading.Lock()  # scrapes may come on several server threads

    def collect(self) -> Iterator[Any]:
        families = {
            field: CounterMetricFamily(f"sqqueue_{field}_total", help_text, labels=["queue"])
            for field, help_text in _SIGNATURES.items()
        }
        totals: dict[tuple[str, str], int] = {}
        with self._lock:
            for queue, last in zip(self.queues, self._last, strict=True):
                # stats() is the public way to these counts; it reads the database too, and
                # returns Err for a closed object (or a database it cannot read).
                result = queue.stats()
                if result.is_ok():
                    stats = result.unwrap()
                    for field in _SIGNATURES:
                        last[field] = getattr(stats, field)
                for field, count in last.items():
                    totals[field, queue.name] = totals.get((field, queue.name), 0) + count
        for (field, name), count in sorted(totals.items()):
            families[field].add_metric([name], count)
        yield from families.values()


class Durations:
    """Histograms of how long messages waited and how long handlers ran, per queue."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        buckets = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
        self.time_in_queue = Histogram(
            "sqqueue_time_in_queue_seconds",
            "From enqueue to the start of handling.",
            ["queue"],
            buckets=buckets,
            registry=registry,
        )
        self.processing = Histogram(
            "sqqueue_processing_seconds",
            "How long the handler ran.",
            ["queue"],
            buckets=buckets,
            registry=registry,
        )

    def observe(self, queue: str, kind: str, seconds: float) -> None:
        histogram = self.time_in_queue if kind == "time_in_queue" else self.processing
        histogram.labels(queue=queue).observe(max(seconds, 0.0))


def serve(
    db_path: str | os.PathLike[str],
    port: int = 9464,
    host: str = "127.0.0.1",
    queues: Iterable[str] | None = None,
    registry: CollectorRegistry | None = None,
    *,
    schema: str | None = None,
) -> tuple[Any, Any]:
    """Serve ``/metrics`` for the queues of ``db_path`` (an SQLite file or a PostgreSQL
    URL, in ``schema``) on ``host:port`` in a thread.

    Binds to the loopback interface unless told otherwise. Returns the server and its
    thread (``server.shutdown()`` stops it).
    """
    target = registry if registry is not None else CollectorRegistry()
    target.register(QueueCollector(db_path, queues, schema=schema))
    server, thread = start_http_server(port, addr=host, registry=target)
    return server, thread
