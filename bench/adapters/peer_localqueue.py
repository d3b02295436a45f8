"""localqueue's SimpleQueue (peer, bench/.venv-peers): SQLite driven from a Rust extension."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import Adapter as Base


class Adapter(Base):
    name = "localqueue"
    package = "localqueue"
    at_least_once = "yes"
    semantics = (
        "leases with automatic reclaim on expiry, ack/nack with fenced receipts, "
        "atomic claims across processes; acked rows kept until purge()"
    )
    how: ClassVar[dict[str, str]] = {
        "enqueue_batch": "native put_many()",
        "dequeue_batch": "emulated: loop of get()+ack() (no batch get)",
        "claim_batch": "n/a: no batch get",
        "wait": "get(timeout=...): sleeps 10 ms growing to 250 ms between tries",
        "fill": "put_many() of 1,000",
        "stats": "stats()",
    }
    cross_process_wait = "get(timeout=...) (polls, 10-250 ms backoff)"

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        from localqueue import DeliveryPolicy, Empty, SimpleQueue

        self._empty = Empty
        self.dir = os.path.join(workdir, "localqueue")
        # RELAXED durability (its default) is synchronous=NORMAL, like the others.
        self.q = SimpleQueue(
            self.dir, "bench", delivery=DeliveryPolicy(lease_seconds=300, max_retries=4)
        )

    def enqueue(self, payload: str) -> bool:
        try:
            self.q.put(payload)
            return True
        except Exception as exc:
            self._error(exc)
            return False

    def enqueue_batch(self, payloads: Sequence[str]) -> bool:
        try:
            self.q.put_many(list(payloads))
            return True
        except Exception as exc:
            self._error(exc)
            return False

    def _take(self, timeout: float) -> str | None:
        try:
            # get(timeout=0) waits for the write lock (get_nowait() reports a busy
            # database as Empty), then returns at once if nothing is ready.
            job = self.q.get(timeout=timeout)
        except self._empty:
            return None
        except Exception as exc:
            self._error(exc)
            return None
        try:
            self.q.ack(job)
        except Exception as exc:
            self._error(exc)
        return job.data  # type: ignore[no-any-return]

    def dequeue_ack(self) -> str | None:
        return self._take(0)

    def wait_dequeue_ack(self, timeout: float) -> str | None:
        return self._take(timeout)

    def stats(self) -> Any:
        return self.q.stats()

    def files(self) -> list[str]:
        return [os.path.join(self.dir, "localqueue.db")]

    def close(self) -> None:
        self.q.close()
