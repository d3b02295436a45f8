"""litequeue's LiteQueue (peer, bench/.venv-peers).

litequeue >= 0.11 needs Python 3.12; on the 3.11 used here pip installs 0.9.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import Adapter as Base


class Adapter(Base):
    name = "litequeue"
    package = "litequeue"
    at_least_once = "partial"
    semantics = (
        "atomic pop (UPDATE ... RETURNING in BEGIN IMMEDIATE) and done(), but no lease "
        "expiry: a crashed consumer's message stays locked until someone calls "
        "list_locked() + retry(); done rows stay in the table until prune()"
    )
    how: ClassVar[dict[str, str]] = {
        "enqueue_batch": "emulated: loop of put() inside its transaction() context (one transaction)",
        "dequeue_batch": "emulated: loop of pop()+done()",
        "claim_batch": "n/a: no batch pop",
        "wait": "none (pop() returns None; consumers poll every 1 ms)",
        "fill": "put() loop inside transaction(), 1,000 per transaction",
        "stats": "qsize() (SELECT COUNT)",
    }

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        from litequeue import LiteQueue

        self.path = os.path.join(workdir, "litequeue.db")
        # It sets WAL and synchronous=NORMAL itself; 30 s busy timeout like the others.
        self.q = LiteQueue(self.path, queue_name="bench", timeout=30.0)

    def enqueue(self, payload: str) -> bool:
        try:
            self.q.put(payload)
            return True
        except Exception as exc:
            self._error(exc)
            return False

    def enqueue_batch(self, payloads: Sequence[str]) -> bool:
        try:
            with self.q.transaction(mode="IMMEDIATE"):
                for p in payloads:
                    self.q.put(p)
            return True
        except Exception as exc:
            self._error(exc)
            return False

    def dequeue_ack(self) -> str | None:
        try:
            m = self.q.pop()
        except Exception as exc:
            self._error(exc)
            return None
        if m is None:
            return None
        try:
            self.q.done(m.message_id)
        except Exception as exc:
            self._error(exc)
        return m.data

    def stats(self) -> Any:
        return self.q.qsize()

    def files(self) -> list[str]:
        return [self.path]

    def close(self) -> None:
        self.q.close()
