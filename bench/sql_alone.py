"""How close to plain SQL can sqqueue get? Its statements alone, timed against plain SQL.

    .venv/bin/python bench/sql_alone.py                      # the four loops, 9 rounds
    .venv/bin/python bench/sql_alone.py --only dequeue_batch --rounds 15

For each loop, three subjects run interleaved in one process, round after round, so drift
on a shared machine hits them alike:

- ``plain``: plain sqlite3 doing the least work (bench/adapters/plain_sqlite.py, the
  benchmark's reference: one autocommit statement per operation, ``executemany`` in one
  transaction for batches);
- ``sql``: sqqueue's own statements, replayed directly on its connection with no Python
  around them: the same transactions, the same SQL, the same parameters. This is the
  ceiling a Python layer on this schema can reach;
- ``api``: the public calls (``enqueue``, ``dequeue`` + ``complete``, the batch calls).

It prints the median µs per message and each subject's ratio to plain (plain ÷ subject).
The replayed transactions reach into the backend (its connection and SQL): a measuring
aid, kept in step with src/sqqueue/backends/sqlite.py by the check it makes on each run
(the replay must leave the queue as the API would: empty after each dequeue loop).
"""

# ruff: noqa: RUF001
# (the micro sign is meant)

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
sys.path.insert(0, HERE)

from adapters.plain_sqlite import Adapter as Plain  # noqa: E402
from adapters.sqqueue_current import Adapter as Ours  # noqa: E402

PAYLOAD = "x" * 100
CRC = zlib.crc32(PAYLOAD.encode())  # the checksum sqqueue stores with it
BATCH = 100
LOOPS = {"enqueue": 2000, "dequeue": 1000, "enqueue_batch": 3000, "dequeue_batch": 3000}


Step = Callable[[], Any]  # one message (one-by-one loops) or one batch of BATCH


def replay(ours: Any) -> dict[str, Step]:
    """sqqueue's transactions for each loop, as its SQLite backend runs them."""
    backend = ours.q._backend
    conn = backend._checkout()  # this replay's own, out of the queue's pool
    sql = backend._sql
    lease = 300.0

    def claim(limit: int) -> tuple[list[Any], int]:
        now = time.time()
        token = random.getrandbits(62)
        params = {"now": now, "lease": lease, "token": token, "limit": limit}
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql["any_expired"], {"now": now}).fetchone()
        rows = conn.execute(sql["claim_pick"], params).fetchall()
        if len(rows) == 1:
            conn.execute(sql["claim_one"], {**params, "id": rows[0][0]})
        elif rows:
            conn.execute(sql["claim_many"], params)
        conn.execute("COMMIT")
        return rows, token

    def complete(ids: list[int], token: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        if len(ids) == 1:
            params = {"id": ids[0], "token": token, "now": time.time()}
            done = conn.execute(sql["complete"], params).rowcount
        else:
            statement = backend._q.complete_set(len(ids))
            done = conn.execute(statement, (*ids, time.time(), token)).rowcount
        if done != len(ids):
            raise RuntimeError("the replayed completion missed messages: the replay is stale")
        conn.execute(sql["bump"], {"n": len(ids), "counter": f"{backend.name}#completed"})
        conn.execute("COMMIT")

    def enqueue() -> None:
        now = time.time()
        # One statement in autocommit mode: a transaction of its own, as enqueue() runs it.
        # (payload, encoding, checksum, priority, delay, max_attempts, now, ttl)
        conn.execute(sql["insert_plain"], (PAYLOAD, "text", CRC, 0, 0.0, 5, now, None))

    def enqueue_batch() -> None:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        first = conn.execute(sql["next_id"]).fetchone()[0]
        rows = [(PAYLOAD, "text", CRC, 0, 0.0, 5, now, None, first + i) for i in range(BATCH)]
        conn.executemany(sql["insert_plain_at"], rows)
        conn.execute("COMMIT")

    def dequeue(limit: int) -> None:
        rows, token = claim(limit)
        complete([row[0] for row in rows], token)

    return {
        "enqueue": enqueue,
        "enqueue_batch": enqueue_batch,
        "dequeue": lambda: dequeue(1),
        "dequeue_batch": lambda: dequeue(BATCH),
    }


def api(ours: Any) -> dict[str, Step]:
    q = ours.q
    return {
        "enqueue": lambda: q.enqueue(PAYLOAD).unwrap(),
        "enqueue_batch": lambda: q.enqueue_batch([PAYLOAD] * BATCH).unwrap(),
        "dequeue": lambda: q.complete(q.dequeue().unwrap()).unwrap(),
        "dequeue_batch": lambda: q.complete_batch(q.dequeue_batch(BATCH).unwrap()).unwrap(),
    }


def plain(adapter: Any) -> dict[str, Step]:
    return {
        "enqueue": lambda: adapter.enqueue(PAYLOAD),
        "enqueue_batch": lambda: adapter.enqueue_batch([PAYLOAD] * BATCH),
        "dequeue": adapter.dequeue_ack,
        "dequeue_batch": lambda: adapter.dequeue_batch_ack(BATCH),
    }


def measure(loop: str, rounds: int, workdir: str) -> dict[str, float]:
    n = LOOPS[loop]
    ref = Plain(os.path.join(workdir, "plain"))
    ours = Ours(os.path.join(workdir, "ours"))
    steps = n if loop in ("enqueue", "dequeue") else n // BATCH
    subjects = {"plain": plain(ref)[loop], "sql": replay(ours)[loop], "api": api(ours)[loop]}
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(rounds):
        for name, step in subjects.items():
            if loop.startswith("dequeue"):  # a fresh supply, outside the timing
                if name == "plain":
                    ref.enqueue_batch([PAYLOAD] * n)
                else:
                    ours.q.enqueue_batch([PAYLOAD] * n).unwrap()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            samples[name].append((time.perf_counter() - t0) / n * 1e6)
            if loop.startswith("dequeue") and name != "plain" and not ours.q.is_drained().unwrap():
                raise RuntimeError(f"{name} left messages behind: the replay is stale")
    ref.close()
    ours.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=list(LOOPS), default=list(LOOPS))
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds (median taken)")
    args = ap.parse_args()
    print(f"{'loop':15s} {'plain':>9s} {'sql':>9s} {'api':>9s}   sql/plain  api/plain")
    for loop in args.only:
        workdir = tempfile.mkdtemp(prefix="sqqueue-sql-alone-")
        try:
            os.makedirs(os.path.join(workdir, "plain"))
            os.makedirs(os.path.join(workdir, "ours"))
            us = measure(loop, args.rounds, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(
            f"{loop:15s} {us['plain']:8.2f}µ {us['sql']:8.2f}µ {us['api']:8.2f}µ"
            f"   {us['plain'] / us['sql']:8.2f}×  {us['plain'] / us['api']:8.2f}×"
        )
    print("µs per message, medians; ratios are plain ÷ subject (1× = as fast as plain)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
