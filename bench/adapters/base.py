"""The interface every benchmark subject implements, with loop-based fallbacks.

Payloads are ~100-character strings that start with a sequence number
(``seq:000000042:xxxx...``), so consumers can report which messages they saw and the
driver can count duplicates and losses. Adapters convert to whatever the library stores
(bytes for huey) and back.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any, ClassVar

PAYLOAD_SIZE = 100
_FILL = "x" * PAYLOAD_SIZE


def make_payload(seq: int) -> str:
    """A 100-character payload carrying ``seq``."""
    head = f"seq:{seq:09d}:"
    return head + _FILL[: PAYLOAD_SIZE - len(head)]


def seq_of(payload: str) -> int:
    return int(payload[4:13])


# The start of a worker script run with ``_drain_with(..., barrier=True)``: it says it is
# ready (a file named after its pid), then waits for the file "go".
BARRIER = """
import os as _os, time as _time
open(f"ready-{_os.getpid()}", "w").close()
while not _os.path.exists("go"):
    _time.sleep(0.001)
"""


def _release(workdir: str, procs: list[Any], timeout: float = 120.0) -> None:
    """Wait until every process has written its ready file, then tell them all to start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = [f for f in os.listdir(workdir) if f.startswith("ready-")]
        if len(ready) >= len(procs) or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.005)
    with open(os.path.join(workdir, "go"), "w"):
        pass


class Unsupported(Exception):
    """The subject has no way to do this workload; the text says why."""


class Adapter:
    """One queue library driven through the same small interface.

    Class attributes describe the subject for the report; they must not need the library
    to be importable (the orchestrator reads them from the project's own virtualenv).
    """

    name: ClassVar[str] = "?"
    package: ClassVar[str] = "?"  # distribution name on PyPI, or "stdlib"
    #: "yes": ack + automatic redelivery of unacknowledged messages across processes;
    #: "partial": ack, but redelivery needs a manual call / restart; "no": at-most-once;
    #: "baseline": the plain-sqlite3 reference, not a queue library.
    at_least_once: ClassVar[str] = "?"
    semantics: ClassVar[str] = ""
    #: How each operation is done: "native", or how it is emulated. Shown in the report.
    how: ClassVar[dict[str, str]] = {}
    #: A blocking dequeue that notices another process's enqueue (for the wake-up test).
    cross_process_wait: ClassVar[str | None] = None
    #: None, or why the subject is left out of the 1,000,000-message workloads.
    skip_large: ClassVar[str | None] = None

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.errors: dict[str, Any] = {"locked": 0, "other": 0, "samples": []}

    # -- errors ----------------------------------------------------------------------------

    def _error(self, what: object) -> None:
        text = str(what)
        if "locked" in text.lower() or "busy" in text.lower():
            self.errors["locked"] += 1
        else:
            self.errors["other"] += 1
        if len(self.errors["samples"]) < 5:
            self.errors["samples"].append(text[:300])

    # -- the interface -----------------------------------------------------------------------

    @classmethod
    def version(cls) -> str:
        from importlib.metadata import version

        return version(cls.package)

    def enqueue(self, payload: str) -> bool:
        raise NotImplementedError

    def enqueue_wake(self, payload: str) -> bool:
        """Enqueue so that a consumer blocked in another process wakes (the wake-up test's
        producer); a queue library's own enqueue does that already."""
        return self.enqueue(payload)

    def enqueue_batch(self, payloads: Sequence[str]) -> bool:
        """Enqueue all of ``payloads``; the fallback is a loop of single enqueues."""
        ok = True
        for p in payloads:
            ok = self.enqueue(p) and ok
        return ok

    def dequeue_ack(self) -> str | None:
        """Take one message and acknowledge it; its payload, or None if none was ready."""
        raise NotImplementedError

    def dequeue_batch_ack(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            p = self.dequeue_ack()
            if p is None:
                break
            out.append(p)
        return out

    def claim_batch(self, n: int) -> int:
        """Lease up to ``n`` messages without acknowledging them; how many were leased."""
        raise Unsupported("no batch dequeue")

    def wait_dequeue_ack(self, timeout: float) -> str | None:
        """Block up to ``timeout`` s for a message (fallback: poll every 1 ms), then ack it."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.dequeue_ack()
            if p is not None or time.monotonic() >= deadline:
                return p
            time.sleep(0.001)

    def consumer_wait(self, timeout: float) -> str | None:
        """What the end-to-end consumers call: the blocking dequeue, unless it cannot see
        other processes' enqueues (then the 1 ms poll)."""
        return self.wait_dequeue_ack(timeout)

    def fill(self, payloads: Sequence[str]) -> None:
        """Untimed prefill by the fastest means available."""
        for i in range(0, len(payloads), 1000):
            self.enqueue_batch(payloads[i : i + 1000])

    def stats(self) -> Any:
        """The library's own 'how many are waiting' call."""
        raise Unsupported("no stats or size call")

    def run_tasks(self, n: int, cap: float) -> dict[str, Any]:
        """Enqueue ``n`` calls of a no-op task (untimed), then drain them with the library's
        own worker process; the rate at which that process ran them."""
        raise Unsupported("no task API with a worker process")

    def prefill(self, n: int) -> None:
        """Put ``n`` messages in the queue by the fastest means (untimed)."""
        for lo in range(0, n, 1000):
            self.fill([make_payload(i) for i in range(lo, min(n, lo + 1000))])

    def run_worker(self, n: int, cap: float, processes: int, concurrency: int) -> dict[str, Any]:
        """Put ``n`` messages in the queue (untimed), then drain them with ``processes``
        worker processes as the library's users run them (``concurrency`` handlers each
        where the library has that setting), a no-op handler; the rate from the first
        message done to the last."""
        raise Unsupported("no worker")

    #: Can several threads call enqueue() on one adapter (one queue object, as web threads
    #: share one)? If not, each producer thread opens its own (its own connection).
    shared_across_threads: ClassVar[bool] = True

    def smoke(self) -> None:
        """A few messages through and back; raises if the subject does not work."""
        sent = [make_payload(i) for i in range(20)]
        for p in sent[:10]:
            if not self.enqueue(p):
                raise RuntimeError(f"enqueue failed: {self.errors}")
        if not self.enqueue_batch(sent[10:]):
            raise RuntimeError(f"enqueue_batch failed: {self.errors}")
        got = [self.dequeue_ack() for _ in range(10)] + self.dequeue_batch_ack(10)
        extra = self.dequeue_ack()
        if got != sent or extra is not None:
            raise RuntimeError(
                f"expected the 20 payloads back in order, got {got!r} then {extra!r}"
            )

    def _script(self, name: str, text: str) -> str:
        """Write a worker script (or app module) into the work directory; its path."""
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def _drain_with(
        self,
        argv: list[str],
        remaining: Any,
        n: int,
        cap: float,
        env: dict[str, str] | None = None,
        processes: int = 1,
        barrier: bool = False,
        interval: float = 0.005,
    ) -> dict[str, Any]:
        """Start ``processes`` worker processes (``argv``, in the work directory) on ``n``
        waiting messages and time them from the first message gone to the last
        (``remaining()`` polled every ``interval`` s), so start-up is not counted; then
        stop them with SIGTERM, as a user would.

        With ``barrier``, the processes are scripts that run :data:`BARRIER` once their
        queue is open: each says it is ready, then waits for the word to start, so several
        processes start together (one alone would otherwise drain part of the queue while
        the others are still importing).
        """
        import signal
        import subprocess

        errlog = os.path.join(self.workdir, "worker-stderr.log")
        with open(errlog, "wb") as err:
            procs = [
                subprocess.Popen(  # noqa: S603  (the subject's own worker command)
                    argv,
                    cwd=self.workdir,
                    env={**os.environ, **(env or {})},
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
                for _ in range(processes)
            ]
        try:
            if barrier:
                _release(self.workdir, procs)
            first_left, t_first = n, 0.0
            deadline = time.monotonic() + cap + 60  # start-up, then the cap
            while time.monotonic() < deadline:
                left = remaining()
                if left < n and t_first == 0.0:
                    first_left, t_first = left, time.perf_counter()
                    deadline = time.monotonic() + cap
                if left == 0:
                    break
                time.sleep(interval)
            t_end = time.perf_counter()
            left = remaining()
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        if t_first == 0.0:
            with open(errlog, errors="replace") as f:
                tail = f.read()[-600:].strip()
            return {"failed": f"no message was taken; the worker's stderr ends: {tail!r}"}
        done = first_left - left
        return {"value": done / (t_end - t_first), "unit": "msg/s", "done": n - left,
                "seconds": t_end - t_first, "processes": processes}  # fmt: skip

    def files(self) -> list[str]:
        """Database files whose size (with their -wal) is reported."""
        raise NotImplementedError

    def size_parts(self) -> tuple[int, int]:
        """(database bytes, WAL bytes)."""
        sizes = [0, 0]
        for f in self.files():
            for i, suffix in enumerate(("", "-wal")):
                with contextlib.suppress(OSError):
                    sizes[i] += os.path.getsize(f + suffix)
        return sizes[0], sizes[1]

    def size_bytes(self) -> int:
        return sum(self.size_parts())

    def close(self) -> None:
        pass
