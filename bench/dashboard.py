"""How long the dashboard's pages take at 1,000 and 1,000,000 messages, on SQLite and
PostgreSQL (``make bench`` runs it through bench/run.py and reports the rows).

    .venv/bin/python bench/dashboard.py                       # both backends, 1k and 1M
    .venv/bin/python bench/dashboard.py --depths 1000 20000   # smaller
    .venv/bin/python bench/dashboard.py --no-postgres --json  # JSON, for bench/run.py

Each page is requested through the ASGI app in this process (no network), logged in, after
one warm-up request; the median and the slowest of the timed requests are reported. The
queue holds ``depth`` ready messages plus a few delayed, leased and dead ones, so every
tab has something to show. Pages read counters and indexes: their time should not grow
with the depth.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE] + [HERE]

TOKEN = "bench-dashboard-token-0123456789"  # noqa: S105 - a throwaway token for the run
PAGES = (
    ("overview", "/"),
    ("queue, first page", "/queues/jobs"),
    ("queue, a page in the middle", "/queues/jobs?state=ready&after={middle}"),
    ("queue, leased tab", "/queues/jobs?state=processing"),
    ("queue, dead tab", "/queues/jobs?state=dead"),
    ("message", "/queues/jobs/messages/{middle}"),
    ("JSON overview (live refresh)", "/api/overview"),
)


def fill(queue: Any, depth: int) -> int:
    """``depth`` ready messages, and 5 delayed, 5 leased, 5 dead; returns a middle id."""
    chunk = 10_000
    middle = 0
    done = 0
    while done < depth:
        n = min(chunk, depth - done)
        ids = queue.enqueue_batch(
            [{"n": done + i, "to": "user@example.com"} for i in range(n)]
        ).unwrap()
        if done <= depth // 2 < done + n:
            middle = ids[depth // 2 - done]
        done += n
    for _ in range(5):
        queue.enqueue("later", delay=3600).unwrap()
    for _ in range(5):
        message = queue.dequeue(visibility_timeout=3600).unwrap()
        assert message is not None
    for _ in range(5):
        message = queue.dequeue().unwrap()
        assert message is not None
        queue.fail_message(message, send_to_dlq=True, error="bench").unwrap()
    return middle


def measure(target: str, schema: str | None, depth: int, repeats: int) -> list[dict[str, Any]]:
    import sqqueue
    from sqqueue.dashboard import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    settings = {"schema": schema} if schema else {}
    queue = sqqueue.connect(target, "jobs", **settings)
    started = time.monotonic()
    try:
        middle = fill(queue, depth)
    finally:
        queue.close()
    fill_s = time.monotonic() - started
    app = create_app(target, token=TOKEN, schema=schema)
    rows = []
    with TestClient(app) as client:
        page = client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        client.post("/login", data={"token": TOKEN, "csrf": csrf.group(1), "next": "/"})
        for label, path in PAGES:
            url = path.format(middle=middle)
            answer = client.get(url)  # warm-up (and a check that the page works)
            assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                client.get(url)
                times.append((time.perf_counter() - t0) * 1000)
            rows.append({"page": label, "depth": depth, "median_ms": statistics.median(times),
                         "max_ms": max(times), "fill_s": round(fill_s, 1)})  # fmt: skip
    app.state.dashboard.source.close()
    return rows


def run(depths: list[int], repeats: int, postgres: bool, pg_url: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {"depths": depths, "repeats": repeats, "sqlite": [], "postgresql": []}
    for depth in depths:
        workdir = tempfile.mkdtemp(prefix="sqqueue-bench-dashboard-")
        try:
            results["sqlite"] += measure(os.path.join(workdir, "jobs.db"), None, depth, repeats)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if not postgres:
        results["postgresql_na"] = "not run (--no-postgres)"
        return results
    from adapters.pg import PgServer, drop_schema

    server = PgServer.start(pg_url, "off")
    if server.na:
        results["postgresql_na"] = server.na
        return results
    try:
        for depth in depths:
            schema = f"bench_dashboard_{depth}_{os.getpid()}"
            try:
                results["postgresql"] += measure(server.client_url, schema, depth, repeats)
            finally:
                drop_schema(server.client_url, schema)
    finally:
        server.stop()
    return results


def table(results: dict[str, Any]) -> list[str]:
    """The report's markdown rows: one line per page, one column per backend and depth."""
    depths = results["depths"]
    columns = [(b, d) for b in ("sqlite", "postgresql") for d in depths if results.get(b)]
    head = (
        "| page | "
        + " | ".join(
            f"{'SQLite' if b == 'sqlite' else 'PostgreSQL'}, {d:,} msgs" for b, d in columns
        )
        + " |"
    )
    lines = [head, "|---|" + "---:|" * len(columns)]
    for label, _path in PAGES:
        cells = []
        for backend, depth in columns:
            row = next(
                (r for r in results[backend] if r["page"] == label and r["depth"] == depth), None
            )
            cells.append(
                "n/a" if row is None else f"{row['median_ms']:.1f} ms (max {row['max_ms']:.0f})"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--depths", type=int, nargs="+", default=[1000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--pg-url", default=None, help="a PostgreSQL server (default: a throwaway one)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON line")
    args = ap.parse_args()
    results = run(args.depths, args.repeats, not args.no_postgres, args.pg_url)
    if args.json:
        print(json.dumps(results))
    else:
        print("\n".join(table(results)))
        if results.get("postgresql_na"):
            print(f"PostgreSQL: {results['postgresql_na']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
