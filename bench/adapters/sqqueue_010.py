"""sqqueue 0.1.0 from PyPI (bench/.venv-sqqueue010: same import name as this repo's).

0.1.0 logs every operation at DEBUG to stderr by default; the adapter raises its logger to
WARNING so formatting log lines is not what gets measured (a conservative choice: it makes
0.1.0 faster than as shipped). Warnings and errors still go to the run's log, and those
that mention a locked database are counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import Adapter as Base


class _LockCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.locked = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "locked" in record.getMessage().lower():
            self.locked += 1


class Adapter(Base):
    name = "sqqueue-0.1.0"
    package = "sqqueue"
    at_least_once = "partial"
    semantics = (
        "visibility timeout, but expired messages return only through a manual "
        "recover_processing_messages() call; a new connection per operation; full VACUUM "
        "every 1,000 operations"
    )
    how: ClassVar[dict[str, str]] = {
        "enqueue_batch": "native enqueue_batch()",
        "dequeue_batch": "native dequeue_batch(100), then complete() per message",
        "claim_batch": "native dequeue_batch(100)",
        "wait": "none (dequeue() returns None; consumers poll every 1 ms)",
        "fill": "enqueue_batch() of 1,000",
        "stats": "n/a: no stats or size call",
    }
    skip_large = (
        "its dequeue sorts every pending row (ORDER BY priority, id with an index on "
        "(status, id) only) and VACUUMs the whole file every 1,000 operations: filling and "
        "draining 1,000,000 would take hours"
    )

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        import sqqueue
        from sqqueue import SQLiteQueue

        if "site-packages" not in (sqqueue.__file__ or ""):
            raise RuntimeError(f"expected sqqueue 0.1.0 from PyPI, imported {sqqueue.__file__}")
        self.path = os.path.join(workdir, "sqqueue010.db")
        # Its setup_logging() adds a stderr handler only if the logger has none, and sets
        # DEBUG: give it our handlers first, then raise the level.
        log = logging.getLogger("sqqueue")
        self._locks = _LockCounter()
        log.addHandler(self._locks)
        stderr = logging.StreamHandler()
        stderr.setLevel(logging.WARNING)
        log.addHandler(stderr)
        self.q = SQLiteQueue(self.path, table_name="bench")
        log.setLevel(logging.WARNING)

    @property
    def errors(self) -> dict[str, Any]:  # type: ignore[override]
        self._errors["locked_warnings"] = self._locks.locked if hasattr(self, "_locks") else 0
        return self._errors

    @errors.setter
    def errors(self, value: dict[str, Any]) -> None:
        self._errors = value

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            r = fn(*args)
        except Exception as exc:  # 0.1.0 can raise through its Result API (see adapter doc)
            self._error(f"{type(exc).__name__}: {exc}")
            return None
        if r.is_err():
            self._error(r.error)
            return None
        return r

    def enqueue(self, payload: str) -> bool:
        return self._call(self.q.enqueue, payload) is not None

    def enqueue_batch(self, payloads: Sequence[str]) -> bool:
        items = [(p, None, 0, None) for p in payloads]
        return self._call(self.q.enqueue_batch, items) is not None

    def dequeue_ack(self) -> str | None:
        r = self._call(self.q.dequeue)
        if r is None or r.value is None:
            return None
        ident, payload = r.value
        self._call(self.q.complete, ident)
        return payload  # type: ignore[no-any-return]

    def dequeue_batch_ack(self, n: int) -> list[str]:
        r = self._call(self.q.dequeue_batch, n)
        if r is None:
            return []
        out = []
        for ident, payload in r.value:
            self._call(self.q.complete, ident)
            out.append(payload)
        return out

    def claim_batch(self, n: int) -> int:
        r = self._call(self.q.dequeue_batch, n)
        return 0 if r is None else len(r.value)

    def files(self) -> list[str]:
        return [self.path]
