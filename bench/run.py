"""sqqueue benchmark suite: sqqueue, plain sqlite3 and peer libraries side by side.

    make bench                                   # the full run (~15 min on 2 cores)
    .venv/bin/python bench/run.py --quick        # smoke run, < 2 min, smaller sizes
    .venv/bin/python bench/run.py --only enqueue_one dequeue_one --repeats 5

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

from adapters import SUBJECTS, load  # noqa: E402

PYTHONS = {
    "main": os.path.join(ROOT, ".venv", "bin", "python"),
    "peers": os.path.join(HERE, ".venv-peers", "bin", "python"),
    "sqqueue010": os.path.join(HERE, ".venv-sqqueue010", "bin", "python"),
}
DRIVER = os.path.join(HERE, "driver.py")
OURS, PLAIN, OLD = "sqqueue", "sqlite3", "sqqueue-0.1.0"
PEERS = ["persist-queue", "litequeue", "localqueue", "huey", OLD]

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
}
REPEATED = ["enqueue_one", "dequeue_one", "enqueue_batch", "dequeue_batch", "claim_batch",
            "e2e", "consumers4", "depth_small"]  # fmt: skip
ONCE = ["depth_large", "wakeup"]

FULL: dict[str, dict[str, Any]] = {
    "enqueue_one": {"n": 5000, "cap": 3},
    "dequeue_one": {"n": 5000, "cap": 3},
    "enqueue_batch": {"n": 30_000, "cap": 3},
    "dequeue_batch": {"n": 10_000, "cap": 3},
    "claim_batch": {"n": 20_000, "cap": 3},
    "e2e": {"n": 4000, "cap": 15},
    "consumers4": {"n": 4000, "cap": 15},
    "depth_small": {"depth": 1000, "rounds": 10, "k": 200, "cap": 5,
                    "stats_calls": 200, "stats_cap": 3},
    "depth_large": {"depth": 1_000_000, "rounds": 10, "k": 200, "cap": 10,
                    "stats_calls": 100, "stats_cap": 5, "drain_cap": 300},
    "wakeup": {"samples": 300, "wait": 1.0, "cap": 20},
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
    "depth_large": {"depth": 20_000, "rounds": 3, "k": 100, "cap": 3,
                    "stats_calls": 50, "stats_cap": 1, "drain_cap": 20},
    "wakeup": {"samples": 40, "wait": 1.0, "cap": 4},
}  # fmt: skip
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


def run_one(subject: str, workload: str, params: dict[str, Any], logdir: str) -> dict[str, Any]:
    python = python_for(subject)
    if python is None:
        return {"na": "virtualenv missing: run bench/setup_venvs.py"}
    workdir = tempfile.mkdtemp(prefix=f"sqqueue-bench-{workload}-")
    spec = {"workload": WORKLOADS[workload][0] if workload in WORKLOADS else workload,
            "subject": subject, "dir": workdir, **params}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQQUEUE_")}
    env.pop("PYTHONPATH", None)
    if SUBJECTS[subject][1] == "main" and SNAPSHOT:
        env["PYTHONPATH"] = SNAPSHOT  # ahead of the editable install's src/ path
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
                        "wal_bytes_full"):  # fmt: skip
                m = median_of(ok, key)
                if m is not None:
                    s[key] = m
            na_stats = next((r.get("stats_na") for r in ok if r.get("stats_na")), None)
            if na_stats:
                s["stats_na"] = na_stats
            out[workload][subject] = s
    return out


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


def _x(r: float | None) -> str:
    if r is None:
        return "–"
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def _mb(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def build_report(
    ctx: dict[str, Any], summary: dict[str, dict[str, Any]]
) -> tuple[str, list[dict[str, Any]]]:
    subjects: list[str] = ctx["subjects"]
    peers = [s for s in subjects if s not in (OURS, PLAIN)]
    info = ctx["info"]
    L: list[str] = []
    add = L.append
    large = ctx["params"]["depth_large"]["depth"]
    add("# sqqueue benchmarks")
    add("")
    add("sqqueue side by side with plain `sqlite3` doing the minimal equivalent work and with "
        "peer libraries from PyPI, measured in one run. Generated by `bench/run.py`; do not "
        "edit by hand.")  # fmt: skip
    add("")
    add("```")
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
    add(f"- Load average (1 min) before the run: {load_before:.2f}, after: {load_after:.2f}")
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
    add("![chart](" + os.path.basename(ctx["chart"]) + ")" if ctx.get("chart_ok") else
        "_Chart not drawn (matplotlib missing: `.venv/bin/pip install matplotlib`)._")  # fmt: skip
    add("")

    # Subjects
    add("## Subjects")
    add("")
    add("| subject | version | at-least-once across processes | delivery semantics |")
    add("|---|---|---|---|")
    for s in subjects:
        cls = load(s)
        ver = info.get(s, {}).get("version", "not installed")
        add(f"| {s} | {ver} | {cls.at_least_once} | {cls.semantics} |")
    add("")
    add('"yes" = acknowledgements plus automatic redelivery of unacknowledged messages '
        '(lease expiry), with atomic claims across processes. "partial" = acks, but lost work '
        'comes back only by a manual call or a restart, or concurrent claims can duplicate. '
        'Only "yes" peers with 0 measured duplicates count for the "2× the fastest '
        'at-least-once peer" target.')  # fmt: skip
    add("")

    # Main table
    add("## Results")
    add("")
    add("Median per workload; under each figure, its ratio to plain sqlite3 of the same shape "
        "(for throughput, subject ÷ plain; for costs, plain ÷ subject: above 1× means faster "
        "than plain).")  # fmt: skip
    add("")
    add("| workload | unit | " + " | ".join(subjects) + " |")
    add("|---|---|" + "---|" * len(subjects))
    rows = [w for w in WORKLOADS if w in summary]
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
            a = summary["depth_small"].get(s, {}).get("value")
            b = summary["depth_large"].get(s, {}).get("value")
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
    add("## sqqueue compared with each peer")
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
    add("## Multi-process runs: duplicates, losses, lock errors")
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
    add("## Targets")
    add("")
    add("| target | measured | status |")
    add("|---|---|---|")
    for t in targets:
        add(f"| {t['target']} | {t['measured']} | {t['status']} |")
    add("")

    # How each subject did each operation
    add("## How each subject does each operation")
    add("")
    keys = ["enqueue_batch", "dequeue_batch", "claim_batch", "wait", "fill", "stats"]
    add("| subject | " + " | ".join(keys) + " |")
    add("|---|" + "---|" * len(keys))
    for s in subjects:
        how = load(s).how
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
        "each subject's fastest method.")  # fmt: skip
    add("- Stats / size call: sqqueue `stats()`; plain `SELECT count(*)` of pending rows; "
        "peers: the call named in the table above.")  # fmt: skip
    add("- Wake-up latency: a consumer process blocked in its dequeue-with-wait; the producer "
        "process enqueues 5-30 ms after the consumer's previous receipt; latency = time from "
        "just before the enqueue to the consumer holding (and having acked) the message.")  # fmt: skip
    excluded = [(s, load(s).skip_large) for s in subjects if load(s).skip_large]
    for s, why in excluded:
        add(f"- {s} is left out of the {large:,}-message workloads: {why}.")
    undrained = [s for s in subjects if s not in DRAIN_LARGE and not load(s).skip_large]
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
    return "\n".join(L) + "\n", targets


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def evaluate_targets(
    ctx: dict[str, Any], summary: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    T: list[dict[str, Any]] = []

    def val(w: str, s: str, key: str = "value") -> float | None:
        return summary.get(w, {}).get(s, {}).get(key)

    for w, need, what in (
        ("enqueue_one", 0.75, "plain INSERT per transaction"),
        ("dequeue_one", 0.6, "plain claim + delete cycle"),
        ("enqueue_batch", 0.5, "plain executemany"),
        ("dequeue_batch", 0.5, "plain claim + executemany delete"),
    ):
        r = ratio(val(w, OURS), val(w, PLAIN), "higher")
        T.append({"target": f"{WORKLOADS[w][1]}: ≥ {need}× {what}",
                  "measured": _x(r), "status": _status(None if r is None else r >= need)})  # fmt: skip

    # 2x the fastest at-least-once peer on every workload
    qualifying = [s for s in ctx["subjects"] if s not in (OURS, PLAIN)
                  and load(s).at_least_once == "yes"]  # fmt: skip
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
    a, b = val("depth_small", OURS), val("depth_large", OURS)
    T.append({"target": f"Dequeue at {large:,} pending ≤ 1.5× the cost at 1,000",
              "measured": f"{fmt_value(b, 'µs')} vs {fmt_value(a, 'µs')} µs = {_x(b / a) if a and b else '–'}",
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
    sa, sb = val("depth_small", OURS, "stats_us"), val("depth_large", OURS, "stats_us")
    T.append({"target": f"stats() on a {large:,}-message queue: depth-independent (≤ 1.5× the cost at 1,000; derived from 'cheap: counts kept up to date')",
              "measured": f"{fmt_value(sb, 'µs')} vs {fmt_value(sa, 'µs')} µs" if sa and sb else "–",
              "status": _status(None if not (sa and sb) else sb <= 1.5 * sa)})  # fmt: skip
    p99, p50 = val("wakeup", OURS, "p99_ms"), val("wakeup", OURS, "p50_ms")
    n = val("wakeup", OURS, "samples")
    T.append({"target": "Wake-up of a blocked dequeue(wait=...) across processes: p99 < 50 ms",
              "measured": f"p50 {fmt_value(p50, 'ms')} ms, p99 {fmt_value(p99, 'ms')} ms ({n and int(n)} samples)",
              "status": _status(None if p99 is None else p99 < 50)})  # fmt: skip
    return T


# --------------------------------------------------------------------------------------
# Chart
# --------------------------------------------------------------------------------------


def draw_chart(path: str, ctx: dict[str, Any], summary: dict[str, dict[str, Any]]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no chart (.venv/bin/pip install matplotlib)")
        return False
    subjects = ctx["subjects"]
    through = [w for w in ("enqueue_one", "dequeue_one", "enqueue_batch", "dequeue_batch",
                           "e2e", "consumers4") if w in summary]  # fmt: skip
    costs = [w for w in ("depth_small", "depth_large") if w in summary]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 1.3]})
    colors = plt.get_cmap("tab10")
    width = 0.8 / max(1, len(subjects))
    short = {"enqueue_one": "enqueue\n1/txn", "dequeue_one": "dequeue+ack\n1 by 1",
             "enqueue_batch": "enqueue\nbatch 100", "dequeue_batch": "dequeue+ack\nbatch 100",
             "e2e": "1 producer +\n2 consumers", "consumers4": "4 consumers\nprefilled",
             "depth_small": "depth\n1,000", "depth_large": f"depth\n{ctx['params']['depth_large']['depth']:,}"}  # fmt: skip
    for ax, group, ylabel in ((axes[0], through, "messages / s (log)"),
                              (axes[1], costs, "µs per dequeue+ack (log, lower is better)")):  # fmt: skip
        for i, s in enumerate(subjects):
            xs, ys = [], []
            for j, w in enumerate(group):
                v = summary[w].get(s, {}).get("value")
                if v:
                    xs.append(j + (i - (len(subjects) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width, label=s, color=colors(i),
                   edgecolor="black" if s == OURS else None, linewidth=1.2 if s == OURS else 0)  # fmt: skip
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels([short[w] for w in group], fontsize=9)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=4, loc="upper left")
    axes[0].set_title("Throughput (higher is better)")
    axes[1].set_title("Dequeue cost vs queue depth")
    note = " — loaded machine, noisy" if ctx["loaded"] else ""
    fig.suptitle(f"sqqueue benchmarks, {ctx['date'][:10]}{note}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="short smoke run: small sizes, 1 repeat (< 2 min)"
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="repeats per workload (default 3; 1 with --quick)"
    )
    ap.add_argument(
        "--out", default=os.path.join(ROOT, "docs", "benchmarks.md"), help="markdown report"
    )
    ap.add_argument("--only", nargs="+", choices=list(WORKLOADS), metavar="WORKLOAD",
                    help=f"run only these workloads: {', '.join(WORKLOADS)}")  # fmt: skip
    ap.add_argument("--subjects", nargs="+", choices=list(SUBJECTS), metavar="SUBJECT",
                    help=f"run only these subjects: {', '.join(SUBJECTS)}")  # fmt: skip
    ap.add_argument("--note", action="append", default=[], help="a line to add to the report")
    args = ap.parse_args()

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    subjects = [s for s in SUBJECTS if not args.subjects or s in args.subjects]
    out = os.path.abspath(args.out)
    resdir = os.path.join(HERE, "results")
    logdir = os.path.join(resdir, "logs")
    shutil.rmtree(logdir, ignore_errors=True)
    os.makedirs(logdir, exist_ok=True)

    global SNAPSHOT
    SNAPSHOT, src_hash = snapshot_src()
    info: dict[str, Any] = {}
    try:
        for s in subjects:
            r = run_one(s, "info", {}, logdir)
            if "version" in r:
                smoke = run_one(s, "smoke", {}, logdir)
                if not smoke.get("ok"):
                    r = {"failed": f"smoke test failed: {smoke.get('failed') or smoke}"}
            info[s] = r
            log(f"{s}: {r.get('version') or r.get('na') or r.get('failed')}")
        if OURS in subjects and "version" not in info[OURS]:
            log(f"sqqueue does not work from src/ right now: {info[OURS]}; see bench/results/logs/")
            return 1
        return _run(args, subjects, info, logdir, resdir, out, started, load_before, src_hash)
    finally:
        shutil.rmtree(SNAPSHOT, ignore_errors=True)


def _run(
    args: argparse.Namespace,
    subjects: list[str],
    info: dict[str, Any],
    logdir: str,
    resdir: str,
    out: str,
    started: float,
    load_before: float,
    src_hash: str,
) -> int:
    params = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 3)
    workloads = [w for w in WORKLOADS if not args.only or w in args.only]
    available = [s for s in subjects if "version" in info[s]]

    tasks: list[tuple[str, str, dict[str, Any]]] = []
    for rep in range(repeats):
        for w in [w for w in REPEATED if w in workloads]:
            order = available[rep % len(available) :] + available[: rep % len(available)]
            for s in order:
                tasks.append((w, s, params[w]))
    for w in [w for w in ONCE if w in workloads]:
        for s in available:
            p = dict(params[w])
            if w == "depth_large":
                if load(s).skip_large:
                    tasks.append((w, s, {"_skip": load(s).skip_large}))
                    continue
                p["drain"] = s in DRAIN_LARGE
            tasks.append((w, s, p))

    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for i, (w, s, p) in enumerate(tasks, 1):
        if "_skip" in p:
            result: dict[str, Any] = {"na": f"excluded: {p['_skip']}"}
        else:
            result = run_one(s, w, p, logdir)
        raw.setdefault(w, {}).setdefault(s, []).append(result)
        shown = (result.get("na") or result.get("failed")
                 or f"{fmt_value(result.get('value'), WORKLOADS[w][3])} {WORKLOADS[w][3]}")  # fmt: skip
        extra = ""
        if "duplicates" in result:
            extra = f" dup={result['duplicates']} lost={result['lost']}"
        log(f"[{i}/{len(tasks)}] {w:14s} {s:14s} {shown}{extra} ({result.get('wall_s', 0)} s)")

    summary = summarize(raw)
    load_after = os.getloadavg()[0]
    # Another job's load shows in the load average taken before we start (ours is ~1).
    loaded = load_before > 0.5 or load_after > 1.6
    rel_out = os.path.relpath(out, ROOT)
    if os.environ.get("MAKELEVEL"):
        command = f"make bench    # runs: .venv/bin/python bench/run.py --out {rel_out}"
    else:
        command = "python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    ctx = {
        "command": command.strip(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_min": (time.monotonic() - started) / 60,
        "quick": args.quick,
        "repeats": repeats,
        "subjects": available,
        "info": info,
        "params": params,
        "machine": machine_info(),
        "load_before": load_before,
        "load_after": load_after,
        "loaded": loaded,
        "notes": args.note,
        "git": f"{git_state()} (snapshot of src/sqqueue taken at the start, content hash {src_hash})",
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    stem = os.path.splitext(out)[0]
    ctx["chart"] = f"{stem}-chart.png"
    ctx["chart_ok"] = draw_chart(ctx["chart"], ctx, summary)
    report, targets = build_report(ctx, summary)
    with open(out, "w") as f:
        f.write(report)
    os.makedirs(resdir, exist_ok=True)
    with open(os.path.join(resdir, "latest.json"), "w") as f:
        json.dump({"context": ctx, "summary": summary, "raw": raw,
                   "targets": targets}, f, indent=1, default=str)  # fmt: skip
    log(f"\nwrote {out}" + (f" and {ctx['chart']}" if ctx["chart_ok"] else ""))
    for t in targets:
        log(f"  {t['status']:>10s}  {t['target']}: {t['measured']}")
    log(f"total {ctx['duration_min']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
