"""The maintenance cadence: bounded upkeep every ``vacuum_threshold`` messages written,
and the size gauge for metrics."""

from __future__ import annotations

import logging
import time

from ..backends.base import Backend
from ..exceptions import ErrorKind, QueueError
from ..metrics import Metrics

logger = logging.getLogger(__name__)


class Upkeep:
    """Counts writes and runs the backend's upkeep rounds when they fall due."""

    def __init__(self, backend: Backend, name: str, metrics: Metrics) -> None:
        self.backend = backend
        self.name = name
        self.metrics = metrics
        # Metrics that never want gauges (the default's) are not asked after every write,
        # nor the clock read for them: about 2% of an enqueue (bench/profile-notes.md).
        self.gauges = metrics.sends_gauges
        #: messages written between upkeep rounds (0: never)
        self.threshold = 1000
        #: write operations since the last upkeep round (0.1.0's get_operation_count)
        self.operations = 0
        self.work = 0  # messages written since the last upkeep round
        self.owed = 0  # upkeep rounds put off by writes in the caller's transaction

    def count(self, messages: int = 1, upkeep: bool = True) -> None:
        """Count a write; every ``threshold`` messages written, run bounded upkeep.

        Upkeep follows messages, not calls, so a queue drained in batches gives its space
        back as fast as one drained message by message. ``upkeep=False`` (a write inside
        the caller's own transaction) only counts: the upkeep it would have run needs the
        write lock that transaction holds, so it is left to this object's next call.
        """
        self.operations += 1  # racy under threads, like the cadence: only counts can drift
        threshold = self.threshold  # (read once: another thread may set it meanwhile)
        if threshold:
            self.work += messages
            if self.work >= threshold or self.owed:
                self._round_due(threshold, upkeep)
        if self.gauges and self.metrics.wants_gauges(time.monotonic()):
            try:
                self.metrics.gauge("size", self.backend.count_unleased())
            except QueueError:
                logger.debug("queue %r: size gauge skipped", self.name, exc_info=True)

    def _round_due(self, threshold: int, upkeep: bool) -> None:
        """Run the upkeep rounds due, with those put off before (or put them off too,
        inside the caller's transaction)."""
        rounds, self.work = divmod(self.work, threshold)
        if not upkeep:
            self.owed += rounds
            return
        rounds, self.owed = rounds + self.owed, 0
        if not rounds:
            return
        self.operations = 0
        try:
            self.backend.maintain(rounds)
        except QueueError as exc:
            # Closed by another thread meanwhile: nothing to maintain any more.
            level = logging.DEBUG if exc.kind is ErrorKind.CLOSED else logging.WARNING
            logger.log(level, "queue %r: maintenance skipped: %s", self.name, exc)
