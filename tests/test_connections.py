"""Connections under threads, on every backend: close() while other threads are inside
calls, and connections that follow the calls in flight, not the threads that made them.

Crashes show as exit codes: the hard cases run in a child process, bounded in time."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import sqqueue
from conftest import QueueTarget
from sqqueue import Err, ErrorKind, SQLiteQueue

TABLE = "jobs"
SRC = Path(sqqueue.__file__).resolve().parents[1]  # children import the sqqueue under test
CHILD_TIMEOUT = 180.0

# The child processes: "close" (close() under threads, sync and asyncio, many rounds) and
# "churn" (thousands of short-lived threads, one enqueue each, few file descriptors).
CHILD = r"""
import asyncio, json, os, resource, sys, threading, time
from sqqueue import AsyncQueue, Err, ErrorKind, PostgresQueue, connect

role, url, schema = sys.argv[1], sys.argv[2], sys.argv[3]
args = sys.argv[4:]


def open_queue(table, **settings):
    if url.startswith("sqlite:"):
        return connect(url, table, **settings)
    return PostgresQueue(url, table, schema=schema, **settings)


def unexpected(result):
    # What a call may return around close(): Ok, or Err(CLOSED). Anything else is a bug.
    return isinstance(result, Err) and result.error.kind is not ErrorKind.CLOSED


if role == "close":
    rounds, threads = int(args[0]), int(args[1])
    bad, calls, late = [], 0, 0
    for r in range(rounds):
        q = open_queue(f"close_{r}")
        stop, closed = threading.Event(), threading.Event()

        def call(fn, *a):
            # In flight at close(): Ok or Err(CLOSED); started after it: Err(CLOSED).
            global calls, late
            after = closed.is_set()
            result = fn(*a)
            calls += 1
            late += after
            if unexpected(result) or (after and not isinstance(result, Err)):
                bad.append(f"{fn.__name__}: {result!r}")
            return result

        def loop():
            while not stop.is_set():
                got = call(q.dequeue)
                call(q.enqueue, "x")
                if got.is_ok() and got.value is not None:
                    call(q.complete, got.value)

        workers = [threading.Thread(target=loop) for _ in range(threads)]
        for t in workers:
            t.start()
        time.sleep(0.1)
        closed.set()
        q.close()
        time.sleep(0.02)  # the threads go on calling the closed queue
        stop.set()
        for t in workers:
            t.join(30)

    async def leave_while_calls_run(r):
        # Leave "async with" while cancelled tasks' storage calls still run in threads.
        async with AsyncQueue(open_queue(f"aclose_{r}")) as aq:
            async def loop():
                while True:
                    for result in (await aq.enqueue("x"), await aq.dequeue()):
                        if unexpected(result):
                            bad.append(repr(result))
            tasks = [asyncio.create_task(loop()) for _ in range(threads * 2)]
            await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def main():
        for r in range(rounds):
            await leave_while_calls_run(r)

    asyncio.run(main())
    print(json.dumps({"calls": calls, "after_close": late, "bad": bad[:5], "bad_count": len(bad)}))

elif role == "churn":
    total, width, limit = int(args[0]), int(args[1]), int(args[2])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"

    def fds():
        return len(os.listdir(fd_dir))

    q = open_queue("churn")
    base = fds()
    gate = threading.Semaphore(width)
    lock = threading.Lock()
    oks, errors, peak = 0, [], base

    def one(i):
        global oks
        try:
            result = q.enqueue(i)
            with lock:
                if result.is_ok():
                    oks += 1
                else:
                    errors.append(str(result.error))
        finally:
            gate.release()

    for i in range(total):
        gate.acquire()
        threading.Thread(target=one, args=(i,)).start()
        if i % 50 == 0:
            peak = max(peak, fds())
    for _ in range(width):
        gate.acquire()
    depth = q.stats().unwrap().depth
    q.close()
    print(json.dumps({"oks": oks, "errors": errors[:3], "error_count": len(errors),
                      "base": base, "peak": peak, "end": fds(), "depth": depth}))
"""


def run_child(target: QueueTarget, role: str, *args: object) -> dict[str, Any]:
    """Run a child to its end (bounded); it must exit 0, quietly, and print its figures."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, role, target.url, str(target.schema), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, f"child exited with {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stderr == "", proc.stderr[-2000:]
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


# -- close() while other threads are inside calls --------------------------------------------


@pytest.mark.slow
def test_close_under_threads_never_crashes(queue_target: QueueTarget) -> None:
    """30 rounds of 4 threads looping enqueue/dequeue/complete, close() after 0.1 s; then 30
    rounds of leaving ``async with`` while cancelled tasks' calls still run: the process
    never crashes; a call in flight at close() returns Ok or Err(CLOSED), a call started
    after it Err(CLOSED)."""
    figures = run_child(queue_target, "close", 30, 4)
    print(f"close under threads: {figures}")
    assert figures["bad_count"] == 0, figures
    assert figures["calls"] > 100, figures  # the threads were really calling
    assert figures["after_close"] > 0, figures  # ... also after close()


def test_close_never_closes_a_connection_another_thread_uses(
    sqlite_queue: SQLiteQueue,
) -> None:
    """A connection in use when close() runs stays open until its user is done with it,
    then it is closed; the queue's later calls return Err(CLOSED) meanwhile."""
    backend: Any = sqlite_queue._backend
    inside, release = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def hold() -> None:
        with backend.raw_connection() as conn:
            inside.set()
            release.wait(10)
            try:
                seen["during"] = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            except Exception as exc:
                seen["during"] = repr(exc)
        try:
            conn.execute("SELECT 1")
            seen["after"] = "still open"
        except Exception as exc:
            seen["after"] = type(exc).__name__

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    sqlite_queue.close()
    closed = sqlite_queue.enqueue("x")
    assert isinstance(closed, Err) and closed.error.kind is ErrorKind.CLOSED
    release.set()
    holder.join(10)
    assert isinstance(seen["during"], int) and seen["during"] > 0, seen
    assert seen["after"] == "ProgrammingError", seen  # closed once given back


# -- connections follow calls, not threads ---------------------------------------------------


@pytest.mark.slow
def test_short_lived_threads_do_not_leak_connections(queue_target: QueueTarget) -> None:
    """5,000 threads, each doing one enqueue and ending, 32 at a time, with at most 256
    file descriptors: every enqueue succeeds and the descriptors stay bounded (a
    connection per thread, never released, used two descriptors per finished thread)."""
    total, width, limit = 5000, 32, 256
    figures = run_child(queue_target, "churn", total, width, limit)
    print(f"thread churn: {figures}")
    assert figures["error_count"] == 0, figures
    assert (figures["oks"], figures["depth"]) == (total, total), figures
    # At most a connection (two descriptors) per call in flight, plus a few kept idle.
    assert figures["peak"] - figures["base"] <= 2 * width + 8, figures
    assert figures["end"] - figures["base"] <= 2 * 16 + 4, figures


@pytest.mark.parametrize("threads", [1, 8])
def test_a_busy_thread_pool_reuses_its_connections(sqlite_queue: SQLiteQueue, threads: int) -> None:
    """Sequential calls from ever new threads reuse the same few connections."""
    backend: Any = sqlite_queue._backend
    opened: list[object] = []
    real_open = backend._open

    def counting_open() -> Any:
        conn = real_open()
        opened.append(conn)
        return conn

    backend._open = counting_open
    for round_ in range(50):
        workers = [
            threading.Thread(target=sqlite_queue.enqueue, args=(round_,)) for _ in range(threads)
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join(10)
    assert sqlite_queue.stats().unwrap().depth == 50 * threads
    assert len(opened) <= threads + 1, len(opened)


def test_the_pause_between_retries_stays_bounded_after_a_thousand_tries(
    sqlite_queue: SQLiteQueue,
) -> None:
    """The pause before the thousandth retry of a call kept waiting for a lock is as short
    as the tenth's (it once overflowed: 2 ** attempt as a float)."""
    backend: Any = sqlite_queue._backend
    deadline = time.monotonic() + 0.5
    for attempt in (10, 1_100, 100_000):
        start = time.monotonic()
        assert backend._backoff(attempt, deadline) is True
        assert time.monotonic() - start < 0.45
    assert backend._backoff(1_100, time.monotonic() - 1) is False  # past the deadline
