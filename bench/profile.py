"""Where does sqqueue spend its time? Profile the hot loops with pyinstrument.

    .venv/bin/pip install pyinstrument
    .venv/bin/python bench/profile.py                 # enqueue, dequeue+complete, batches
    .venv/bin/python bench/profile.py --only dequeue --n 50000 --tree

For each loop it prints the cost per message, the same cost for plain sqlite3 doing the
minimal equivalent work (bench/adapters/plain_sqlite.py), the functions with the most
self time (flat profile) and, with --tree, the call tree.
"""

# ruff: noqa: RUF001, B023, PLR0915
# (the multiplication and micro signs are meant; each loop closure runs within its own iteration)

from __future__ import annotations

import os
import sys

# This file is named profile.py: drop its directory from the path before importing
# anything, so the standard library's profile module (used by cProfile) is the one found.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

PAYLOAD = "x" * 100


class TimedConnection:
    """Wraps the backend's sqlite3 connection and times each statement (by its text)."""

    def __init__(self, conn: Any, timings: dict[str, list[float]]) -> None:
        self._conn = conn
        self._timings = timings

    def _timed(self, method: str, sql: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return getattr(self._conn, method)(sql, *args)
        finally:
            key = " ".join(sql.split())[:90]
            entry = self._timings.setdefault(key, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - t0

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed("execute", sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed("executemany", sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def sql_breakdown(q: Any, loop: Callable[[], Any], n: int) -> None:
    """Run ``loop`` with every statement timed; print the cost per message by statement.

    Reaches into the backend (``_connection``, ``_local``): a profiling aid, not an API.
    """
    timings: dict[str, list[float]] = {}
    try:
        backend = q._backend
        real = backend._connection()
        backend._local.conn = TimedConnection(real, timings)
    except AttributeError as exc:
        print(f"(no SQL breakdown: the backend's internals changed: {exc})")
        return
    try:
        t0 = time.perf_counter()
        loop()
        wall = (time.perf_counter() - t0) / n * 1e6
    finally:
        backend._local.conn = real
    in_sql = sum(v[1] for v in timings.values()) / n * 1e6
    print(f"SQL statements per message (this pass {wall:.1f} µs/msg, of which {in_sql:.1f} in "
          f"sqlite3 calls, {wall - in_sql:.1f} in Python):")  # fmt: skip
    print(f"  {'calls/msg':>9}  {'µs/msg':>7}  statement")
    for key, (calls, secs) in sorted(timings.items(), key=lambda kv: -kv[1][1]):
        print(f"  {calls / n:9.3f}  {secs / n * 1e6:7.1f}  {key}")


def wal_pages(path: str, conn: Any, fn: Callable[[], Any], messages: int) -> float:
    """WAL pages written per message by ``fn`` (which handles ``messages`` messages).

    Truncates the WAL and turns off automatic checkpoints on ``conn`` first, so the WAL
    file only grows while ``fn`` runs: its growth is what the commits wrote.
    """
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    fn()
    frames = (os.path.getsize(path + "-wal") - 32) / (4096 + 24)
    conn.execute("PRAGMA wal_autocheckpoint = 1000")
    return frames / messages


def plain_cost(kind: str, n: int, tmp: str) -> tuple[float, float]:
    """µs and WAL pages per message for plain sqlite3 (the benchmark's reference adapter)."""
    sys.path.append(HERE)
    try:
        from adapters.plain_sqlite import Adapter
    finally:
        sys.path.remove(HERE)
    d = tempfile.mkdtemp(dir=tmp)
    a = Adapter(d)
    if kind == "dequeue":
        a.enqueue_batch([PAYLOAD] * n)
        t0 = time.perf_counter()
        for _ in range(n):
            a.dequeue_ack()
    elif kind == "enqueue":
        t0 = time.perf_counter()
        for _ in range(n):
            a.enqueue(PAYLOAD)
    elif kind == "enqueue_batch":
        t0 = time.perf_counter()
        for _ in range(n // 100):
            a.enqueue_batch([PAYLOAD] * 100)
    else:  # dequeue_batch
        a.enqueue_batch([PAYLOAD] * n)
        t0 = time.perf_counter()
        for _ in range(n // 100):
            a.dequeue_batch_ack(100)
    secs = time.perf_counter() - t0
    m = 300 if kind in ("enqueue", "dequeue") else 3000
    if kind == "enqueue":
        pages = wal_pages(a.path, a.conn, lambda: [a.enqueue(PAYLOAD) for _ in range(m)], m)
    elif kind == "enqueue_batch":
        pages = wal_pages(
            a.path, a.conn, lambda: [a.enqueue_batch([PAYLOAD] * 100) for _ in range(m // 100)], m
        )
    else:
        a.enqueue_batch([PAYLOAD] * m)
        if kind == "dequeue":
            pages = wal_pages(a.path, a.conn, lambda: [a.dequeue_ack() for _ in range(m)], m)
        else:
            pages = wal_pages(
                a.path, a.conn, lambda: [a.dequeue_batch_ack(100) for _ in range(m // 100)], m
            )
    a.close()
    return secs / n * 1e6, pages


def our_wal_pages(q: Any, kind: str) -> float | None:
    """WAL pages per message for sqqueue (reaches into the backend: a profiling aid)."""
    try:
        conn = q._backend._connection()
        path = q._backend.path
    except AttributeError:
        return None
    threshold, q.vacuum_threshold = q.vacuum_threshold, 0  # no checkpoint mid-measure
    m = 300 if kind in ("enqueue", "dequeue") else 3000
    try:
        if kind == "enqueue":
            return wal_pages(path, conn, lambda: [q.enqueue(PAYLOAD) for _ in range(m)], m)
        if kind == "enqueue_batch":
            return wal_pages(
                path, conn, lambda: [q.enqueue_batch([PAYLOAD] * 100) for _ in range(m // 100)], m
            )
        q.enqueue_batch([PAYLOAD] * m)
        if kind == "dequeue":
            return wal_pages(
                path, conn, lambda: [q.complete(q.dequeue().unwrap()) for _ in range(m)], m
            )

        def batches() -> None:
            for _ in range(m // 100):
                for msg in q.dequeue_batch(100).unwrap():
                    q.complete(msg)

        return wal_pages(path, conn, batches, m)
    finally:
        q.vacuum_threshold = threshold


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=20_000, help="messages per loop (default 20,000)")
    ap.add_argument("--only", nargs="+", choices=["enqueue", "dequeue", "enqueue_batch", "dequeue_batch"],
                    default=["enqueue", "dequeue", "enqueue_batch", "dequeue_batch"])  # fmt: skip
    ap.add_argument("--top", type=int, default=25, help="lines of the flat profile to print")
    ap.add_argument("--tree", action="store_true", help="also print the call tree")
    ap.add_argument("--interval", type=float, default=0.0001, help="sampling interval, s")
    args = ap.parse_args()
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed: .venv/bin/pip install pyinstrument", file=sys.stderr)
        return 2
    from sqqueue import SQLiteQueue

    tmp = tempfile.mkdtemp(prefix="sqqueue-profile-")
    try:
        for kind in args.only:
            q = SQLiteQueue(os.path.join(tmp, f"{kind}.db"), table_name="bench",
                            vacuum_threshold=1000, synchronous="normal")  # fmt: skip
            n = args.n
            loop: Callable[[], Any]
            if kind == "enqueue":

                def loop() -> None:
                    for _ in range(n):
                        q.enqueue(PAYLOAD)

            elif kind == "dequeue":
                for _ in range(0, n, 1000):
                    q.enqueue_batch([PAYLOAD] * 1000)

                def loop() -> None:
                    for _ in range(n):
                        q.complete(q.dequeue().unwrap())

            elif kind == "enqueue_batch":

                def loop() -> None:
                    for _ in range(n // 100):
                        q.enqueue_batch([PAYLOAD] * 100)

            else:
                for _ in range(0, n, 1000):
                    q.enqueue_batch([PAYLOAD] * 1000)

                def loop() -> None:
                    for _ in range(n // 100):
                        for m in q.dequeue_batch(100).unwrap():
                            q.complete(m)

            consuming = kind in ("dequeue", "dequeue_batch")

            def refill() -> None:
                if consuming:
                    for _ in range(0, n, 1000):
                        q.enqueue_batch([PAYLOAD] * 1000)

            t0 = time.perf_counter()
            loop()  # pass 1, unprofiled: the cost per message
            secs = time.perf_counter() - t0
            refill()
            profiler = Profiler(interval=args.interval)
            profiler.start()
            loop()  # pass 2, sampled by pyinstrument
            profiler.stop()
            refill()
            plain, plain_pages = plain_cost(kind, n, tmp)
            ours = secs / n * 1e6
            print("=" * 100)
            print(f"{kind}: {n:,} messages: sqqueue {ours:.1f} µs/msg ({n / secs:,.0f} msg/s); "
                  f"plain sqlite3 {plain:.1f} µs/msg; sqqueue = {plain / ours:.2f}× plain")  # fmt: skip
            print("-" * 100)
            sql_breakdown(q, loop, n)  # pass 3, every statement timed
            pages = our_wal_pages(q, kind)
            q.close()
            if pages is not None:
                print(f"WAL pages written per message: sqqueue {pages:.2f}, plain sqlite3 "
                      f"{plain_pages:.2f} (each commit writes every page it changed)")  # fmt: skip
            print("-" * 100)
            flat = profiler.output_text(flat=True, time="percent_of_total", show_all=False)
            body = [ln for ln in flat.splitlines() if "%" in ln]
            print(f"pyinstrument, top {args.top} by self time:")
            print("\n".join(body[: args.top]))
            if args.tree:
                print("-" * 100)
                print(profiler.output_text(time="percent_of_total",
                                           processor_options={"filter_threshold": 0.02}))  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
