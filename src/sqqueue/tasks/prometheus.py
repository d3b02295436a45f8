"""Per-task Prometheus metrics for a worker (``pip install 'sqqueue[prometheus]'``).

``sqqueue worker myapp.jobs:tasks --metrics-port 9464`` serves these beside the queue
metrics; in your own process::

    from sqqueue.tasks.prometheus import TaskCollector
    REGISTRY.register(TaskCollector(tasks))
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, SummaryMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "sqqueue.tasks.prometheus needs prometheus-client: pip install 'sqqueue[prometheus]'"
    ) from exc

from ..prometheus import Durations, QueueCollector, SignatureCollector
from ..targets import parse_target
from .app import Tasks

__all__ = ["TaskCollector", "serve"]

_COUNTS = (
    ("started", "Task runs started."),
    ("succeeded", "Task runs that returned."),
    ("failed", "Task runs that raised or timed out (each attempt counts)."),
    ("dead_lettered", "Task calls dead-lettered."),
)


class TaskCollector(Collector):
    """Counts and time spent per task name, from this process's workers (``tasks.stats()``)."""

    def __init__(self, tasks: Tasks) -> None:
        self.tasks = tasks

    def collect(self) -> Iterator[Any]:
        stats = self.tasks.stats()
        for field, help_text in _COUNTS:
            family = CounterMetricFamily(f"sqqueue_task_{field}", help_text, labels=["task"])
            for name, entry in sorted(stats.items()):
                family.add_metric([name], getattr(entry, field))
            yield family
        seconds = SummaryMetricFamily(
            "sqqueue_task_seconds", "Time task runs took.", labels=["task"]
        )
        for name, entry in sorted(stats.items()):
            seconds.add_metric([name], entry.succeeded + entry.failed, entry.seconds_total)
        yield seconds


def serve(tasks: Tasks, port: int, host: str = "127.0.0.1") -> tuple[Any, Durations]:
    """Serve ``/metrics`` for a tasks worker: per-task metrics, the queues' own (in an
    SQLite file or a PostgreSQL database), the signatures its queue objects refused or let
    through, and the durations the workers record. Returns the server and
    the :class:`~sqqueue.prometheus.Durations` to give the workers."""
    registry = CollectorRegistry()
    durations = Durations(registry)
    registry.register(TaskCollector(tasks))
    if tasks.target is not None and parse_target(tasks.target).location != ":memory:":
        registry.register(QueueCollector(tasks.target, tasks.queue_names(), schema=tasks.schema))
    # The signature counts live in the worker's own queue objects (see SignatureCollector).
    registry.register(SignatureCollector([tasks.queue(name) for name in tasks.queue_names()]))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, durations
