"""Optional statsd metrics (``pip install 'sqqueue[statsd]'``)."""

from __future__ import annotations

import logging
from typing import Any

from .exceptions import ErrorKind, QueueError

__all__ = ["Metrics", "NullMetrics", "StatsdMetrics"]

logger = logging.getLogger(__name__)


class Metrics:
    """Where the queue reports counters and gauges. The default does nothing."""

    def incr(self, name: str, count: int = 1) -> None:
        """Add ``count`` to counter ``name``."""

    def gauge(self, name: str, value: float) -> None:
        """Set gauge ``name``."""

    def timing(self, name: str, seconds: float) -> None:
        """Record a duration."""

    def wants_gauges(self, now: float) -> bool:
        """Whether the (costly to compute) gauges should be sent now."""
        return False

    # Callers that would work something out only to report it ask these first: with the
    # default, which does nothing, they skip the work (bench/profile-notes.md).
    @property
    def sends_gauges(self) -> bool:
        """Whether ``wants_gauges`` can ever say yes (a subclass defines it)."""
        return type(self).wants_gauges is not Metrics.wants_gauges

    @property
    def records_timings(self) -> bool:
        """Whether ``timing`` does anything (a subclass defines it)."""
        return type(self).timing is not Metrics.timing


class NullMetrics(Metrics):
    pass


class StatsdMetrics(Metrics):
    """Counters ``<prefix>.<queue>.enqueue`` etc. and a ``<prefix>.<queue>.size`` gauge."""

    def __init__(
        self, host: str, port: int, prefix: str, queue: str, gauge_interval: float = 1.0
    ) -> None:
        try:
            import statsd  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError as exc:
            raise QueueError(
                "statsd_host is set but the statsd package is not installed: "
                "pip install 'sqqueue[statsd]'",
                ErrorKind.INVALID_INPUT,
            ) from exc
        try:
            self._client: Any = statsd.StatsClient(host, port, prefix=f"{prefix}.{queue}")
        except OSError as exc:  # (the host is looked up once, here)
            raise ValueError(f"statsd_host {host!r} cannot be used: {exc}") from None
        self._interval = gauge_interval
        self._last_gauge = 0.0

    @property
    def client(self) -> Any:
        """The ``statsd.StatsClient`` the metrics go through."""
        return self._client

    def incr(self, name: str, count: int = 1) -> None:
        try:
            self._client.incr(name, count)
        except Exception:  # metrics must never break the queue
            logger.debug("statsd incr failed", exc_info=True)

    def gauge(self, name: str, value: float) -> None:
        try:
            self._client.gauge(name, value)
        except Exception:
            logger.debug("statsd gauge failed", exc_info=True)

    def timing(self, name: str, seconds: float) -> None:
        try:
            self._client.timing(name, seconds * 1000.0)
        except Exception:
            logger.debug("statsd timing failed", exc_info=True)

    def wants_gauges(self, now: float) -> bool:
        if now - self._last_gauge < self._interval:
            return False
        self._last_gauge = now
        return True
