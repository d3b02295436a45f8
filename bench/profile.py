"""Where does sqqueue spend its time? Profile the hot loops with pyinstrument.

    .venv/bin/pip install pyinstrument
    .venv/bin/python bench/profile.py                 # enqueue, dequeue+complete, batches
    .venv/bin/python bench/profile.py --only dequeue --n 50000 --tree
    .venv/bin/python bench/profile.py --postgres          # PostgresQueue, statement by statement
    .venv/bin/python bench/profile.py --postgres --pg-url postgresql://me@db/bench

For each loop it prints the cost per message, the same cost for plain sqlite3 doing the
least work (bench/adapters/plain_sqlite.py, the benchmark's reference: one autocommit
statement per operation, executemany in one transaction for batches), the functions with
the most self time (flat profile) and, with --tree, the call tree.

With --postgres it profiles sqqueue's PostgreSQL backend instead, against plain SQL on the
same server (bench/adapters/plain_pg.py, one autocommit statement per operation): the
cost per message split into client CPU, server CPU and the rest (waiting: round trips,
scheduling), then every statement's calls per message, its round-trip time as the client
sees it and, on the throwaway server (default), its time inside the server (from the
server's log, log_min_duration_statement=0) and the trigger functions' time
(track_functions). synchronous_commit=off as in bench/run.py (--pg-sync).
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
import itertools  # noqa: E402
import re  # noqa: E402
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
        self.texts: dict[str, str] = {}

    def _timed(self, method: str, sql: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return getattr(self._conn, method)(sql, *args)
        finally:
            key = " ".join(sql.split())[:90]
            entry = self._timings.setdefault(key, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - t0
            self.texts.setdefault(key, sql)

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed("execute", sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed("executemany", sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def sql_breakdown(q: Any, loop: Callable[[], Any], n: int) -> None:
    """Run ``loop`` with every statement timed; print the cost per message by statement.

    Reaches into the backend (its pool's ``_checkout`` and ``_checkin``): a profiling aid,
    not an API. Every call of the loop gets the one timed connection.
    """
    timings: dict[str, list[float]] = {}
    try:
        backend = q._backend
        real = backend._checkout()
        timed = TimedConnection(real, timings)
        backend._checkout, backend._checkin = (lambda: timed), (lambda _conn: None)
    except AttributeError as exc:
        print(f"(no SQL breakdown: the backend's internals changed: {exc})")
        return
    try:
        t0 = time.perf_counter()
        loop()
        wall = (time.perf_counter() - t0) / n * 1e6
    finally:
        del backend._checkout, backend._checkin  # the class's own again
        backend._checkin(real)
    in_sql = sum(v[1] for v in timings.values()) / n * 1e6
    print(f"SQL statements per message (this pass {wall:.1f} µs/msg, of which {in_sql:.1f} in "
          f"sqlite3 calls, {wall - in_sql:.1f} in Python):")  # fmt: skip
    print("  (temp: temporary b-trees the statement sets up on every run, from EXPLAIN)")
    print(f"  {'calls/msg':>9}  {'µs/msg':>7}  {'temp':>4}  statement")
    for key, (calls, secs) in sorted(timings.items(), key=lambda kv: -kv[1][1]):
        temp = temp_btrees(real, timed.texts[key])
        print(f"  {calls / n:9.3f}  {secs / n * 1e6:7.1f}  {temp:>4}  {key}")


def temp_btrees(conn: Any, sql: str) -> str:
    """How many temporary b-trees (OpenEphemeral, SorterOpen) a statement's program opens.

    Each is allocated and freed on every execution (and trigger programs are not
    counted): an IN list in a CHECK, UPDATE ... RETURNING, an IN subquery all make one.
    """
    numbered = [int(k) for k in re.findall(r"\?(\d+)", sql)]
    params: Any
    if numbered:
        params = [None] * max(numbered)
    elif ":" in sql:
        params = dict.fromkeys(re.findall(r":(\w+)", sql))
    else:
        params = [None] * sql.count("?")
    try:
        ops = [row[1] for row in conn.execute("EXPLAIN " + sql, params)]
    except Exception:  # a statement EXPLAIN cannot take: say so rather than guess
        return "?"
    return str(sum(op in ("OpenEphemeral", "SorterOpen") for op in ops))


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
    """µs and WAL pages per message for plain sqlite3 (the benchmark's least-work reference)."""
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
        # The connection the loop's calls get: the pool hands the last one back first.
        conn = q._backend._checkout()
        q._backend._checkin(conn)
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


# --------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------


def _sql_key(sql: str) -> str:
    """A statement's text with its placeholders (client %(x)s, server $1) made alike."""
    return " ".join(re.sub(r"%\(\w+\)s|%s|\$\d+", "?", sql).split())[:80]


class PgStatementTimer:
    """Times every ``execute``/``executemany``/``commit`` of psycopg connections (patched
    on the classes while active), by statement text: the round trip as the client sees it."""

    def __init__(self) -> None:
        self.timings: dict[str, list[float]] = {}
        self._saved: list[tuple[Any, str, Any]] = []

    def _add(self, key: str, secs: float) -> None:
        entry = self.timings.setdefault(key, [0, 0.0])
        entry[0] += 1
        entry[1] += secs

    def __enter__(self) -> PgStatementTimer:
        import psycopg

        timer = self

        def wrap(cls: Any, name: str, keyed: bool) -> None:
            real = getattr(cls, name)

            def timed(this: Any, *args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return real(this, *args, **kwargs)
                finally:
                    key = _sql_key(str(args[0])) if keyed and args else name.upper()
                    timer._add(key, time.perf_counter() - t0)

            self._saved.append((cls, name, real))
            setattr(cls, name, timed)

        wrap(psycopg.Connection, "execute", True)
        wrap(psycopg.Connection, "commit", False)
        wrap(psycopg.Cursor, "executemany", True)
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, name, real in reversed(self._saved):
            setattr(cls, name, real)


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.M)
_LOG_DURATION = re.compile(
    r"LOG:\s+duration: ([\d.]+) ms\s+(?:statement|(?:parse|bind|execute) [^:]*): (.*)", re.S
)


def server_statement_times(log_path: str, offset: int) -> dict[str, float]:
    """Seconds spent in the server per statement (parse + bind + execute), from the log
    lines written after ``offset`` with log_min_duration_statement = 0."""
    with open(log_path, errors="replace") as f:
        f.seek(offset)
        text = f.read()
    starts = [m.start() for m in _LOG_RECORD.finditer(text)] + [len(text)]
    out: dict[str, float] = {}
    for a, b in itertools.pairwise(starts):
        m = _LOG_DURATION.search(text[a:b])
        if m:
            key = _sql_key(m.group(2))
            out[key] = out.get(key, 0.0) + float(m.group(1)) / 1000
    return out


def pg_main(args: argparse.Namespace) -> int:
    sys.path.append(HERE)
    try:
        from adapters.pg import PID_ENV, URL_ENV, PgServer, server_cpu_seconds, with_options
        from adapters.plain_pg import Adapter as Plain
    finally:
        sys.path.remove(HERE)
    from sqqueue import PostgresQueue

    server = PgServer.start(args.pg_url, args.pg_sync)
    if server.na:
        print(server.na, file=sys.stderr)
        return 2
    os.environ[URL_ENV] = server.client_url
    if server.pid is not None:
        os.environ[PID_ENV] = str(server.pid)
    log_path = server.log_path()
    print(f"{server.version}, {server.where}; synchronous_commit={args.pg_sync}")
    tmp = tempfile.mkdtemp(prefix="sqqueue-profile-pg-")
    n = args.n

    def measure(fn: Callable[[], Any]) -> tuple[float, float, float | None]:
        """µs per message: wall, client CPU, server CPU (None if the server is elsewhere)."""
        s0, c0, t0 = server_cpu_seconds(), time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        s1 = server_cpu_seconds()
        srv = None if s0 is None or s1 is None else (s1 - s0) / n * 1e6
        return wall / n * 1e6, cpu / n * 1e6, srv

    def split(name: str, costs: tuple[float, float, float | None]) -> str:
        wall, cpu, srv = costs
        if srv is None:
            return f"{name} {wall:.0f} µs/msg (client CPU {cpu:.0f})"
        return (f"{name} {wall:.0f} µs/msg = client CPU {cpu:.0f} + server CPU {srv:.0f} "
                f"+ {max(wall - cpu - srv, 0):.0f} waiting")  # fmt: skip

    def loops(q: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
        """(prepare, loop) for sqqueue-pg."""
        kind = args.kind

        def fill() -> None:
            for _ in range(0, n, 1000):
                q.enqueue_batch([PAYLOAD] * 1000).unwrap()

        if kind == "enqueue":
            return (lambda: None), lambda: [q.enqueue(PAYLOAD).unwrap() for _ in range(n)]
        if kind == "enqueue_batch":
            return (lambda: None), lambda: [
                q.enqueue_batch([PAYLOAD] * 100).unwrap() for _ in range(n // 100)
            ]
        if kind == "dequeue":
            return fill, lambda: [q.complete(q.dequeue().unwrap()).unwrap() for _ in range(n)]

        def batches() -> None:
            for _ in range(n // 100):
                batch = q.dequeue_batch(100).unwrap()
                if hasattr(q, "complete_batch"):
                    q.complete_batch(batch).unwrap()
                else:
                    for m in batch:
                        q.complete(m).unwrap()

        return fill, batches

    def plain_loops(a: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
        kind = args.kind

        def fill() -> None:
            for _ in range(0, n, 1000):
                a.enqueue_batch([PAYLOAD] * 1000)

        if kind == "enqueue":
            return (lambda: None), lambda: [a.enqueue(PAYLOAD) for _ in range(n)]
        if kind == "enqueue_batch":
            return (lambda: None), lambda: [
                a.enqueue_batch([PAYLOAD] * 100) for _ in range(n // 100)
            ]
        if kind == "dequeue":
            return fill, lambda: [a.dequeue_ack() for _ in range(n)]
        return fill, lambda: [a.dequeue_batch_ack(100) for _ in range(n // 100)]

    try:
        for kind in args.only:
            args.kind = kind
            schema = f"profile_{kind}"
            q = PostgresQueue(server.client_url, "bench", schema=schema, vacuum_threshold=1000,
                              default_visibility_timeout=300.0)  # fmt: skip
            prep, loop = loops(q)
            prep()
            ours = measure(loop)
            q.close()
            a = Plain(os.path.join(tmp, kind))
            pprep, ploop = plain_loops(a)
            pprep()
            plain = measure(ploop)
            a.close()
            print("=" * 100)
            print(f"{kind}: {n:,} messages: sqqueue-pg {ours[0]:.0f} µs/msg ({1e6 / ours[0]:,.0f} "
                  f"msg/s); plain-pg {plain[0]:.0f} µs/msg; sqqueue-pg = {plain[0] / ours[0]:.2f}× plain")  # fmt: skip
            print("  " + split("sqqueue-pg", ours))
            print("  " + split("plain-pg  ", plain))
            # Pass 2: every statement timed, on the client and (throwaway server) in the server.
            opts = "-c track_functions=all"
            if log_path:
                opts += " -c log_min_duration_statement=0"
            q = PostgresQueue(with_options(server.client_url, opts), "bench", schema=schema,
                              vacuum_threshold=1000, default_visibility_timeout=300.0)  # fmt: skip
            prep, loop = loops(q)
            prep()
            offset = os.path.getsize(log_path) if log_path else 0
            with PgStatementTimer() as timer:
                t0 = time.perf_counter()
                loop()
                wall = (time.perf_counter() - t0) / n * 1e6
            q.close()
            inside = server_statement_times(log_path, offset) if log_path else {}
            in_calls = sum(v[1] for v in timer.timings.values()) / n * 1e6
            print("-" * 100)
            print(f"statements per message (this pass {wall:.0f} µs/msg, of which {in_calls:.0f} "
                  "waiting on psycopg calls; logging every statement slows the server):")  # fmt: skip
            print(
                f"  {'calls/msg':>9}  {'round trip µs/msg':>17}  {'in server µs/msg':>16}  statement"
            )
            for key, (calls, secs) in sorted(timer.timings.items(), key=lambda kv: -kv[1][1]):
                srv = inside.get(key if key != "COMMIT" else "COMMIT")
                srv_text = f"{srv / n * 1e6:16.1f}" if srv is not None else f"{'–':>16}"
                print(f"  {calls / n:9.3f}  {secs / n * 1e6:17.1f}  {srv_text}  {key}")
            if "BEGIN" in inside:
                print(f"  (BEGIN, sent by psycopg before a transaction's first statement: "
                      f"{inside['BEGIN'] / n * 1e6:.1f} µs/msg in the server, its round trip "
                      "counted in that statement's)")  # fmt: skip
            import psycopg

            with psycopg.connect(server.client_url, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_force_next_flush()")
                rows = conn.execute(
                    "SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions "
                    "WHERE schemaname = %s ORDER BY total_time DESC", (schema,)
                ).fetchall()  # fmt: skip
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            if rows:
                print("  functions and triggers (track_functions; ms → µs per message):")
                for name, calls, total, self_ms in rows:
                    print(f"  {calls / n:9.3f}  total {total * 1000 / n:7.1f}  self "
                          f"{self_ms * 1000 / n:7.1f}  {name}()")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        server.stop()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=None,
                    help="messages per loop (default 20,000; 5,000 with --postgres)")  # fmt: skip
    ap.add_argument("--only", nargs="+", choices=["enqueue", "dequeue", "enqueue_batch", "dequeue_batch"],
                    default=["enqueue", "dequeue", "enqueue_batch", "dequeue_batch"])  # fmt: skip
    ap.add_argument("--top", type=int, default=25, help="lines of the flat profile to print")
    ap.add_argument("--tree", action="store_true", help="also print the call tree")
    ap.add_argument("--interval", type=float, default=0.0001, help="sampling interval, s")
    ap.add_argument("--postgres", action="store_true",
                    help="profile PostgresQueue against plain SQL on the same server")  # fmt: skip
    ap.add_argument("--pg-url", default=None, help="PostgreSQL server (default: a throwaway one)")
    ap.add_argument("--pg-sync", choices=["off", "on", "server"], default="off",
                    help="synchronous_commit of the sessions (as in bench/run.py)")  # fmt: skip
    args = ap.parse_args()
    if args.postgres or args.pg_url:
        args.n = args.n or 5000
        return pg_main(args)
    args.n = args.n or 20_000
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
