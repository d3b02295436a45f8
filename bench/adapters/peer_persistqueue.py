"""persist-queue's SQLiteAckQueue (peer, bench/.venv-peers)."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from .base import Adapter as Base


class Adapter(Base):
    name = "persist-queue"
    package = "persist-queue"
    at_least_once = "partial"
    semantics = (
        "ack/nack, but no lease expiry: unacked items return only when a queue object is "
        "created (auto_resume resets ALL unacked rows, also those other live processes hold); "
        "get() is a SELECT then a separate UPDATE, so concurrent processes can take the "
        "same row; acked rows stay in the table until clear_acked_data()"
    )
    how: ClassVar[dict[str, str]] = {
        "enqueue_batch": "emulated: loop of put() (no batch API)",
        "dequeue_batch": "emulated: loop of get()+ack()",
        "claim_batch": "n/a: no batch get",
        "wait": "get(block=True, timeout): threading.Event set by put() in the same process only",
        "fill": "loop of put() (one transaction each)",
        "stats": "ready_count() (SELECT COUNT)",
    }
    cross_process_wait = "get(block=True, timeout=1) (in-process Event; polls once at timeout)"
    skip_large = (
        "no batch enqueue: a 1,000,000-message fill is 1,000,000 transactions "
        "(and the drain 2,000,000), minutes per run"
    )

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        from persistqueue import SQLiteAckQueue

        self._empty: Any
        from persistqueue.exceptions import Empty

        self._empty = Empty
        self.dir = os.path.join(workdir, "persistqueue")
        self.q = SQLiteAckQueue(self.dir, timeout=30.0)
        # Same journal and sync settings as the others (its default is synchronous=FULL).
        for conn in {
            id(self.q._putter): self.q._putter,
            id(self.q._getter): self.q._getter,
        }.values():
            conn.execute("PRAGMA synchronous = NORMAL")

    def enqueue(self, payload: str) -> bool:
        try:
            self.q.put(payload)
            return True
        except Exception as exc:
            self._error(exc)
            return False

    def _take(self, block: bool, timeout: float | None) -> str | None:
        try:
            item = self.q.get(block=block, timeout=timeout, raw=True)
        except self._empty:
            return None
        except Exception as exc:
            self._error(exc)
            return None
        try:
            self.q.ack(id=item["pqid"])
        except Exception as exc:
            self._error(exc)
        return item["data"]  # type: ignore[no-any-return]

    def dequeue_ack(self) -> str | None:
        return self._take(False, None)

    def wait_dequeue_ack(self, timeout: float) -> str | None:
        return self._take(True, timeout)

    def consumer_wait(self, timeout: float) -> str | None:
        # Its blocking get() only wakes for put() in the same process: poll instead.
        return Base.wait_dequeue_ack(self, timeout)

    def stats(self) -> Any:
        return self.q.ready_count()

    def files(self) -> list[str]:
        return [os.path.join(self.dir, "data.db")]

    def close(self) -> None:
        self.q.close()
