"""Run ONE measurement of one subject and print its result as JSON (last line of stdout).

    <venv>/bin/python bench/driver.py '{"workload": "enqueue_one", "subject": "sqqueue",
                                        "dir": "/tmp/x", "n": 5000, "cap": 8}'

bench/run.py starts this in the subject's own virtualenv, in a fresh temporary directory,
so sqqueue and sqqueue 0.1.0 (same import name) never share an interpreter and every
measurement starts from an empty database. Multi-process workloads start their producers
and consumers here with the "spawn" start method; each opens its own queue object.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

# This directory holds a profile.py, which must not shadow the standard library's.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE] + [HERE]

from adapters import PG_SUBJECTS, load  # noqa: E402
from adapters.base import Unsupported, make_payload, seq_of  # noqa: E402

Spec = dict[str, Any]
now = time.perf_counter
BATCH = 100


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _open(spec: Spec, workdir: str | None = None) -> Any:
    return load(spec["subject"])(workdir or spec["dir"])


def _fill(adapter: Any, count: int, start: int = 0) -> float:
    """Prefill ``count`` messages in chunks (payloads made lazily: RSS stays flat)."""
    t0 = now()
    for lo in range(start, start + count, 1000):
        hi = min(start + count, lo + 1000)
        adapter.fill([make_payload(i) for i in range(lo, hi)])
    return now() - t0


def _result(adapter: Any, **fields: Any) -> dict[str, Any]:
    out = {"peak_rss_mb": round(_peak_rss_mb(), 1), **fields}
    if adapter is not None:
        out["errors"] = adapter.errors
    return out


# --------------------------------------------------------------------------------------
# Single-process throughput
# --------------------------------------------------------------------------------------


def w_info(spec: Spec) -> dict[str, Any]:
    import platform
    import sqlite3

    cls = load(spec["subject"])
    return {
        "version": cls.version(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def w_smoke(spec: Spec) -> dict[str, Any]:
    """A few messages through and back: is the subject's code working at all?"""
    a = _open(spec)
    try:
        a.smoke()
    finally:
        a.close()
    return {"ok": True, "errors": a.errors}


def _timed_loop(step: Callable[[int], int], n: int, cap: float) -> tuple[int, float]:
    """Call ``step(i)`` (returns items done) until ``n`` items or ``cap`` seconds."""
    done = 0
    i = 0
    t0 = now()
    while done < n:
        got = step(i)
        i += 1
        if got == 0:
            break
        done += got
        if now() - t0 > cap:
            break
    return done, now() - t0


def w_enqueue_one(spec: Spec) -> dict[str, Any]:
    a = _open(spec)
    n, cap = spec["n"], spec["cap"]
    payloads = [make_payload(i) for i in range(n)]
    done, secs = _timed_loop(lambda i: int(a.enqueue(payloads[i])), n, cap)
    a.close()
    return _result(a, value=done / secs, unit="msg/s", done=done, seconds=secs)


def w_dequeue_one(spec: Spec) -> dict[str, Any]:
    a = _open(spec)
    n, cap = spec["n"], spec["cap"]
    _fill(a, n)
    done, secs = _timed_loop(lambda i: int(a.dequeue_ack() is not None), n, cap)
    a.close()
    return _result(a, value=done / secs, unit="msg/s", done=done, seconds=secs)


def w_enqueue_batch(spec: Spec) -> dict[str, Any]:
    a = _open(spec)
    n, cap = spec["n"], spec["cap"]
    batches = [[make_payload(i) for i in range(b, b + BATCH)] for b in range(0, n, BATCH)]
    done, secs = _timed_loop(lambda i: BATCH * int(a.enqueue_batch(batches[i])), n, cap)
    a.close()
    return _result(a, value=done / secs, unit="msg/s", done=done, seconds=secs)


def w_dequeue_batch(spec: Spec) -> dict[str, Any]:
    a = _open(spec)
    n, cap = spec["n"], spec["cap"]
    _fill(a, n)
    done, secs = _timed_loop(lambda i: len(a.dequeue_batch_ack(BATCH)), n, cap)
    a.close()
    return _result(a, value=done / secs, unit="msg/s", done=done, seconds=secs)


def w_claim_batch(spec: Spec) -> dict[str, Any]:
    a = _open(spec)
    n, cap = spec["n"], spec["cap"]
    try:
        a.claim_batch(1)  # on the empty queue: finds out whether there is a batch claim
    except Unsupported as exc:
        a.close()
        return {"na": str(exc)}
    _fill(a, n)
    done, secs = _timed_loop(lambda i: a.claim_batch(BATCH), n, cap)
    a.close()
    return _result(a, value=done / secs, unit="msg/s", done=done, seconds=secs)


# --------------------------------------------------------------------------------------
# Several processes
# --------------------------------------------------------------------------------------


def _child_open(spec: Spec, ready: Any) -> Any:
    a = _open(spec)
    ready.wait(60)  # a barrier: everyone has a queue open, then the clock starts
    return a


def _producer(spec: Spec, ready: Any, done: Any, out: str) -> None:
    a = _child_open(spec, ready)
    t0 = now()
    sent = 0
    for i in range(spec["n"]):
        sent += int(a.enqueue(make_payload(i)))
        if now() - t0 > spec["cap"]:
            break
    t1 = time.monotonic()
    done.set()
    with open(out, "w") as f:
        json.dump({"sent": sent, "end": t1, "errors": a.errors}, f)
    a.close()


def _consumer(spec: Spec, ready: Any, done: Any | None, out: str) -> None:
    """Take and ack messages until the queue stays empty (and the producer, if any, is done)."""
    a = _child_open(spec, ready)
    seqs: list[int] = []
    last = None
    start = time.monotonic()
    cpu0 = time.process_time()
    cpu = 0.0
    empties = 0
    while True:
        p = a.dequeue_ack() if done is None else a.consumer_wait(0.2)
        if p is not None:
            seqs.append(seq_of(p))
            last = time.monotonic()
            cpu = time.process_time() - cpu0
            empties = 0
        else:
            if done is None or done.is_set():
                empties += 1
                if empties >= 3:
                    break
            time.sleep(0.002)
        if time.monotonic() - start > spec["cap"]:
            break
    with open(out, "w") as f:
        json.dump({"seqs": seqs, "end": last, "cpu": cpu, "errors": a.errors}, f)
    a.close()


def _machine_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - fields[3] - fields[4], total


class _CpuSampler:
    """Samples the machine's CPU ticks and the PostgreSQL server's CPU seconds (when it
    runs here) every ``interval`` s, to tell how busy the cores were over a time window."""

    def __init__(self, server: bool, interval: float = 0.05) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[tuple[float, tuple[int, int] | None, float | None]] = []
        self.next = 0.0

    def sample(self) -> None:
        server = None
        if self.server:
            from adapters.pg import server_cpu_seconds

            server = server_cpu_seconds()
        self.samples.append((time.monotonic(), _machine_ticks(), server))
        self.next = time.monotonic() + self.interval

    def due(self) -> bool:
        return time.monotonic() >= self.next

    def window(self, t0: float, t1: float) -> dict[str, float]:
        """Cores busy between the samples that bracket [t0, t1]: machine, server."""
        if len(self.samples) < 2:
            return {}
        a = max((s for s in self.samples if s[0] <= t0 + 0.01), key=lambda s: s[0],
                default=self.samples[0])  # fmt: skip
        # The last sample before the end: the consumers' server processes exit right
        # after it, and their CPU time leaves the server's total with them.
        inside = [s for s in self.samples if a[0] < s[0] <= t1]
        b = max(inside, key=lambda s: s[0]) if inside else self.samples[-1]
        out: dict[str, float] = {"cpu_window_s": round(b[0] - a[0], 3)}
        if b[0] <= a[0]:
            return out
        if a[1] and b[1] and b[1][1] > a[1][1]:
            cores = os.cpu_count() or 1
            out["machine_cores"] = round((b[1][0] - a[1][0]) / (b[1][1] - a[1][1]) * cores, 2)
        if a[2] is not None and b[2] is not None:
            out["server_cores"] = round((b[2] - a[2]) / (b[0] - a[0]), 2)
        return out


def _run_processes(spec: Spec, producer: bool, consumers: int) -> dict[str, Any]:  # noqa: PLR0915
    ctx = mp.get_context("spawn")
    parties = consumers + (1 if producer else 0) + 1
    ready = ctx.Barrier(parties)
    done = ctx.Event() if producer else None
    procs = []
    outs = []
    if producer:
        out = os.path.join(spec["dir"], "producer.json")
        procs.append(ctx.Process(target=_producer, args=(spec, ready, done, out)))
    for i in range(consumers):
        out = os.path.join(spec["dir"], f"consumer{i}.json")
        outs.append(out)
        procs.append(ctx.Process(target=_consumer, args=(spec, ready, done, out)))
    for p in procs:
        p.start()
    sampler = _CpuSampler(server=spec["subject"] in PG_SUBJECTS)
    ready.wait(120)
    t0 = time.monotonic()
    sampler.sample()
    deadline = time.monotonic() + spec["cap"] + 90
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        if sampler.due():
            sampler.sample()
        time.sleep(0.01)
    sampler.sample()
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join(5)
    results = []
    for out in outs:
        try:
            with open(out) as f:
                results.append(json.load(f))
        except OSError:
            results.append(
                {"seqs": [], "end": None, "errors": {"other": 1, "samples": ["crashed"]}}
            )
    sent = spec["n"]
    errors: dict[str, Any] = {"locked": 0, "other": 0, "samples": []}
    if producer:
        with open(os.path.join(spec["dir"], "producer.json")) as f:
            prod = json.load(f)
        sent = prod["sent"]
        results_for_errors = [*results, prod]
    else:
        results_for_errors = results
    for r in results_for_errors:
        for k, v in r["errors"].items():
            if k == "samples":
                errors["samples"].extend(v[: 5 - len(errors["samples"])])
            else:
                errors[k] = errors.get(k, 0) + v
    seen = [s for r in results for s in r["seqs"]]
    unique = len(set(seen))
    ends = [r["end"] for r in results if r["end"] is not None]
    secs = (max(ends) - t0) if ends else float("nan")
    cpu: dict[str, float] = {}
    if ends:
        cpu = sampler.window(t0, max(ends))
        cpu["client_cores"] = round(sum(r.get("cpu", 0.0) for r in results) / secs, 2)
    return {
        "value": unique / secs if ends else 0.0,
        "unit": "msg/s",
        "done": unique,
        "sent": sent,
        "seconds": secs,
        "duplicates": len(seen) - unique,
        "lost": sent - unique,
        "per_consumer": [len(r["seqs"]) for r in results],
        "hung": len(hung),
        "errors": errors,
        **cpu,
    }


def w_e2e(spec: Spec) -> dict[str, Any]:
    _open(spec).close()  # create the schema once, before the processes race to
    return _run_processes(spec, producer=True, consumers=2)


def w_consumers(spec: Spec) -> dict[str, Any]:
    """A prefilled queue drained by ``spec["consumers"]`` processes (4 if not given)."""
    a = _open(spec)
    _fill(a, spec["n"])
    a.close()
    return _run_processes(spec, producer=False, consumers=int(spec.get("consumers", 4)))


# --------------------------------------------------------------------------------------
# Queue depth, stats, file size, memory
# --------------------------------------------------------------------------------------


def _median_us(samples: list[float]) -> float | None:
    return statistics.median(samples) * 1e6 if samples else None


class _Depth:
    """A queue held at a depth: rounds of timed dequeue+ack, one op at a time, each round
    refilled afterwards so the depth stays where it was."""

    def __init__(self, adapter: Any, depth: int) -> None:
        self.a = adapter
        self.next_seq = depth
        self.per_op: list[float] = []

    def round(self, k: int, deadline: float) -> None:
        taken = 0
        for _ in range(k):
            t0 = now()
            p = self.a.dequeue_ack()
            self.per_op.append(now() - t0)
            if p is None:
                break
            taken += 1
            if now() > deadline:
                break
        _fill(self.a, taken, self.next_seq)
        self.next_seq += taken


def w_depth(spec: Spec) -> dict[str, Any]:  # noqa: PLR0915
    a = _open(spec)
    depth, rounds, k, cap = spec["depth"], spec["rounds"], spec["k"], spec["cap"]
    fill_s = _fill(a, depth)
    rss_filled = _rss_mb()
    # With ref_depth, a second queue of the same subject, at that depth, is measured in the
    # same process, its rounds alternating with this one's: the machine's drift then hits
    # both alike, and their ratio is the cost of depth alone.
    ref: _Depth | None = None
    if spec.get("ref_depth"):
        ref_dir = os.path.join(spec["dir"], "ref")
        os.makedirs(ref_dir)
        ref = _Depth(_open(spec, ref_dir), spec["ref_depth"])
        _fill(ref.a, spec["ref_depth"])
    main = _Depth(a, depth)
    deadline = now() + cap
    for _ in range(rounds):
        if ref is not None:
            ref.round(k, deadline)
        main.round(k, deadline)
        if now() > deadline:
            break
    per_op = main.per_op
    stats_us: float | None = None
    ref_stats_us: float | None = None
    stats_na = None
    try:
        samples: list[float] = []
        ref_samples: list[float] = []
        t_stats = now()
        for _ in range(spec["stats_calls"]):
            if ref is not None:  # alternating, as the dequeue rounds
                t0 = now()
                ref.a.stats()
                ref_samples.append(now() - t0)
            t0 = now()
            a.stats()
            samples.append(now() - t0)
            if now() - t_stats > spec["stats_cap"]:
                break
        stats_us = _median_us(samples)
        ref_stats_us = _median_us(ref_samples)
    except Unsupported as exc:
        stats_na = str(exc)
    out: dict[str, Any] = {
        "value": _median_us(per_op),
        "unit": "us/op",
        "ops": len(per_op),
        "fill_s": round(fill_s, 2),
        "stats_us": stats_us,
        "stats_na": stats_na,
        "rss_after_fill_mb": round(rss_filled, 1),
    }
    if ref is not None:
        out["ref_depth"] = spec["ref_depth"]
        out["ref_value"] = _median_us(ref.per_op)
        out["ref_ops"] = len(ref.per_op)
        out["ref_stats_us"] = ref_stats_us
        ref.a.close()
    if spec.get("drain"):
        out["bytes_full"] = a.size_bytes()
        out["db_bytes_full"], out["wal_bytes_full"] = a.size_parts()
        t0 = now()
        drained = 0
        while True:
            got = len(a.dequeue_batch_ack(BATCH))
            drained += got
            if got == 0 or now() - t0 > spec["drain_cap"]:
                break
        out["drain_s"] = round(now() - t0, 2)
        out["drained"] = drained
        out["expected_drain"] = depth
        out["bytes_drained_open"] = a.size_bytes()
        out["db_bytes_drained_open"], out["wal_bytes_drained_open"] = a.size_parts()
    out["rss_end_mb"] = round(_rss_mb(), 1)
    a.close()
    if spec.get("drain"):
        out["bytes_drained_closed"] = a.size_bytes()
    return _result(a, **out)


# --------------------------------------------------------------------------------------
# Wake-up latency of a blocked consumer in another process
# --------------------------------------------------------------------------------------

_STOP = 999_999_999


def _waiter(spec: Spec, ready: Any, conn: Any) -> None:
    a = _child_open(spec, ready)
    while True:
        p = a.wait_dequeue_ack(spec["wait"])
        if p is None:
            continue
        seq = seq_of(p)
        conn.send((seq, time.monotonic()))
        if seq == _STOP:
            break
    a.close()


def w_wakeup(spec: Spec) -> dict[str, Any]:
    cls = load(spec["subject"])
    if cls.cross_process_wait is None:
        return {"na": "no blocking dequeue"}
    a = _open(spec)
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(2)
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=_waiter, args=(spec, ready, child_end))
    proc.start()
    ready.wait(120)
    time.sleep(0.3)  # let the consumer block
    rng = random.Random(7)
    lat: list[float] = []
    t_begin = time.monotonic()
    for i in range(spec["samples"]):
        time.sleep(rng.uniform(0.005, 0.03))  # the consumer is blocked again by now
        t_send = time.monotonic()
        a.enqueue_wake(make_payload(i))
        if not parent_end.poll(spec["wait"] * 3 + 5):
            break
        _seq, t_recv = parent_end.recv()
        lat.append(t_recv - t_send)
        if time.monotonic() - t_begin > spec["cap"]:
            break
    a.enqueue_wake(make_payload(_STOP))
    proc.join(spec["wait"] * 3 + 10)
    if proc.is_alive():
        proc.kill()
    a.close()
    lat.sort()
    if not lat:
        return _result(a, value=None, unit="ms", samples=0)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, round(q * (len(lat) - 1)))] * 1000

    return _result(
        a,
        value=pct(0.99),
        unit="ms",
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        max_ms=lat[-1] * 1000,
        samples=len(lat),
    )


def w_worker(spec: Spec) -> dict[str, Any]:
    """A prefilled queue (untimed) drained by the library's own worker, run the way its
    users run it, in ``processes`` processes of its own; timed from the first message done
    to the last."""
    a = _open(spec)
    try:
        out = a.run_worker(spec["n"], spec["cap"], spec.get("processes", 1), spec["concurrency"])
    finally:
        a.close()
    return _result(a, **out)


def w_producers(spec: Spec) -> dict[str, Any]:
    """``threads`` threads of one process each calling enqueue(), one message per call
    (``n`` in all), started together; messages enqueued ÷ time until the last returned.
    The threads share one queue object, or open one each where the subject's objects
    belong to one thread (plain sqlite3's connections)."""
    import threading

    threads, n, cap = spec["threads"], spec["n"], spec["cap"]
    # Opened here first in any case, so that the threads opening their own find the
    # database made (eight connections setting up one new file at once can fail).
    first = _open(spec)
    shared = first if load(spec["subject"]).shared_across_threads else None
    start = threading.Barrier(threads + 1)
    done = [0] * threads
    errors: dict[str, Any] = {"locked": 0, "other": 0, "samples": []}
    errors_lock = threading.Lock()
    share = n // threads

    def produce(k: int) -> None:
        try:
            a = shared or _open(spec)
        except BaseException:
            start.abort()  # the run fails instead of waiting for this thread forever
            raise
        payloads = [make_payload(k * share + i) for i in range(share)]
        start.wait()
        t0 = now()
        for i, p in enumerate(payloads):
            done[k] += int(a.enqueue(p))
            if i % 100 == 0 and now() - t0 > cap:
                break
        if shared is None:
            a.close()
            with errors_lock:
                _add_errors(errors, a.errors)

    workers = [threading.Thread(target=produce, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    start.wait()
    t0 = now()
    for t in workers:
        t.join()
    secs = now() - t0
    first.close()
    if shared is not None:
        _add_errors(errors, shared.errors)
    out = _result(None, value=sum(done) / secs, unit="msg/s", done=sum(done), seconds=secs)
    out["errors"] = errors
    return out


def w_async_producers(spec: Spec) -> dict[str, Any]:
    """``tasks`` asyncio tasks of one process each calling enqueue() (``n`` in all),
    started together; messages enqueued ÷ time until the last call returned."""
    a = _open(spec)
    try:
        out = a.run_async_producers(spec["n"], spec["tasks"], spec["cap"])
    finally:
        a.close()
    return _result(a, **out)


def _add_errors(total: dict[str, Any], errors: dict[str, Any]) -> None:
    for key in ("locked", "other"):
        total[key] += errors[key]
    total["samples"] += errors["samples"][: 5 - len(total["samples"])]


def w_tasks(spec: Spec) -> dict[str, Any]:
    """No-op tasks drained by the library's own worker process (prefilled, untimed)."""
    a = _open(spec)
    try:
        out = a.run_tasks(spec["n"], spec["cap"])
    finally:
        a.close()
    return _result(a, **out)


WORKLOADS: dict[str, Callable[[Spec], dict[str, Any]]] = {
    "info": w_info,
    "smoke": w_smoke,
    "enqueue_one": w_enqueue_one,
    "dequeue_one": w_dequeue_one,
    "enqueue_batch": w_enqueue_batch,
    "dequeue_batch": w_dequeue_batch,
    "claim_batch": w_claim_batch,
    "e2e": w_e2e,
    "consumers4": w_consumers,
    "consumers": w_consumers,
    "depth": w_depth,
    "wakeup": w_wakeup,
    "tasks": w_tasks,
    "worker": w_worker,
    "producers": w_producers,
    "async_producers": w_async_producers,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        result = WORKLOADS[spec["workload"]](spec)
    except Unsupported as exc:
        result = {"na": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        result = {"failed": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
