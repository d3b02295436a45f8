"""Prometheus metrics (``pip install 'sqqueue[prometheus]'``).

Two pieces:

* :class:`QueueCollector` reads every queue's stats from a database file when Prometheus
  scrapes: depth by state, oldest pending age, leases about to expire, event totals, file
  sizes. Any process can serve it (``sqqueue metrics serve jobs.db``); it only reads.
* :class:`Durations` records histograms of time-in-queue and processing time for a
  :class:`~sqqueue.Worker`: ``Worker(queue, handler, durations=Durations())``.

Example::

    from prometheus_client import REGISTRY, start_http_server
    from sqqueue.prometheus import QueueCollector

    REGISTRY.register(QueueCollector("jobs.db"))
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

from .exceptions import QueueError
from .queue import SQLiteQueue

__all__ = ["Durations", "QueueCollector", "serve"]

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


class QueueCollector(Collector):
    """Exports the stats of the queues in one SQLite file (all of them by default)."""

    def __init__(self, db_path: str | os.PathLike[str], queues: Iterable[str] | None = None):
        self.db_path = os.fspath(db_path)
        self.queues = list(queues) if queues is not None else None
        self._open: dict[str, SQLiteQueue] = {}
        self._lock = threading.Lock()

    def _queue(self, name: str) -> SQLiteQueue:
        with self._lock:
            queue = self._open.get(name)
            if queue is None:
                queue = self._open[name] = SQLiteQueue(
                    self.db_path, table_name=name, read_only=True
                )
            return queue

    def close(self) -> None:
        with self._lock:
            for queue in self._open.values():
                queue.close()
            self._open.clear()

    def collect(self) -> Iterator[Any]:
        names = self.queues
        if names is None:
            listed = SQLiteQueue.list_queues(self.db_path)
            if listed.is_err():
                logger.warning("cannot list queues of %s: %s", self.db_path, listed.error)
                return
            names = listed.unwrap()
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
                logger.warning("queue %r of %s skipped: %s", name, self.db_path, exc)
                continue
            if result.is_err():
                logger.warning("stats of queue %r failed: %s", name, result.error)
                continue
            stats = result.unwrap()
            for state in _STATES:
                depth.add_metric([name, state], getattr(stats, state))
            oldest.add_metric([name], stats.oldest_ready_age or 0.0)
            expiring.add_metric([name], stats.expiring_soon)
            sizes.add_metric([name, "db"], stats.db_bytes)
            sizes.add_metric([name, "wal"], stats.wal_bytes)
            behind.add_metric([name], stats.wal_frames_not_checkpointed)
            for key, metric, _ in _TOTALS:
                field = "lease_expirations_total" if key == "lease_expirations" else metric
                totals[key].add_metric([name], getattr(stats, field))
        yield depth
        yield oldest
        yield expiring
        yield sizes
        yield behind
        yield from totals.values()


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
) -> tuple[Any, Any]:
    """Serve ``/metrics`` for the queues of ``db_path`` on ``host:port`` in a thread.

    Binds to the loopback interface unless told otherwise. Returns the server and its
    thread (``server.shutdown()`` stops it).
    """
    target = registry if registry is not None else CollectorRegistry()
    target.register(QueueCollector(db_path, queues))
    server, thread = start_http_server(port, addr=host, registry=target)
    return server, thread
