"""CPU instructions per message, counted by valgrind: a measure that does not drift.

    .venv/bin/python bench/instructions.py                    # sqqueue and plain sqlite3
                                                              # (the least-work reference)
    .venv/bin/python bench/instructions.py --src /tmp/old/src # another checkout's sqqueue
    .venv/bin/python bench/instructions.py --only enqueue dequeue
    .venv/bin/python bench/instructions.py --only worker      # Worker(concurrency=4)

Wall-clock timings on a shared machine drift by ±20% from one minute to the next; the
instructions a loop executes (``valgrind --tool=callgrind``) are the same from run to run,
so they compare two versions of the code reliably. Each loop runs twice under valgrind,
for a small and a larger number of messages; the difference divided by the difference in
messages leaves out start-up, imports and prefill. Only user-space instructions count:
the kernel's share (WAL writes, locks, fsync) is not in these figures, so they complement
bench/profile.py and the benchmark, they do not replace them. Needs valgrind (Debian:
``apt install valgrind``); about 2 minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PAYLOAD = "x" * 100
PREFILL = 4000
LOOPS = {  # loop -> (small, large) message counts
    "enqueue": (200, 1200),
    "dequeue": (200, 1200),
    "enqueue_batch": (1000, 3000),
    "dequeue_batch": (1000, 3000),
    # Worker(concurrency=4) draining the prefilled queue (plain sqlite3: the one-by-one
    # claim + DELETE loop, as its worker runs it). Its threads take turns differently
    # from run to run: counts vary by about ±300.
    "worker": (1000, 4000),
}


def child(subject: str, loop: str, n: int) -> None:
    """Run one loop of ``n`` messages (the process valgrind counts)."""
    workdir = tempfile.mkdtemp(prefix="sqqueue-instr-")
    try:
        sys.path.insert(0, HERE)
        if subject == "sqqueue":
            from adapters.sqqueue_current import Adapter
        else:
            from adapters.plain_sqlite import Adapter  # type: ignore[assignment]
        a = Adapter(workdir)
        if loop.startswith("dequeue") or loop == "worker":
            for _ in range(0, PREFILL, 1000):
                a.enqueue_batch([PAYLOAD] * 1000)
        if loop == "worker" and subject == "sqqueue":
            drain_with_worker(a.q, n)
        elif loop == "enqueue":
            for _ in range(n):
                a.enqueue(PAYLOAD)
        elif loop == "enqueue_batch":
            for _ in range(n // 100):
                a.enqueue_batch([PAYLOAD] * 100)
        elif loop in ("dequeue", "worker"):
            for _ in range(n):
                a.dequeue_ack()
        else:
            for _ in range(n // 100):
                a.dequeue_batch_ack(100)
        a.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def drain_with_worker(queue: Any, n: int) -> None:
    """Run a Worker(concurrency=4) with a no-op handler until it has handled ``n``
    messages, then stop it."""
    from sqqueue import Worker

    lock, handled, done = threading.Lock(), [0], threading.Event()

    def handle(message: Any) -> None:
        with lock:
            handled[0] += 1
            if handled[0] == n:
                done.set()

    worker = Worker(queue, handle, concurrency=4)
    thread = threading.Thread(target=worker.run)
    thread.start()
    done.wait()
    worker.stop()
    thread.join()


def count(valgrind: str, subject: str, loop: str, n: int, src: str) -> int:
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run(  # noqa: S603 (this script, with arguments it chose)
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--child", subject, loop, str(n)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--src",
        default=os.path.join(ROOT, "src"),
        help="directory holding the sqqueue package to measure (default: ./src)",
    )
    ap.add_argument("--only", nargs="+", choices=list(LOOPS), default=list(LOOPS))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()  # fmt: skip
    if args.child:
        subject, loop, n = args.child
        child(subject, loop, int(n))
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (Debian: apt install valgrind)", file=sys.stderr)
        return 2
    src = os.path.abspath(args.src)
    print(f"user-space instructions per message (sqqueue from {src})")
    print(f"{'loop':<15} {'sqqueue':>10} {'plain':>10}  sqqueue / plain")
    for loop in args.only:
        small, large = LOOPS[loop]
        per = {}
        for subject in ("sqqueue", "plain"):
            a = count(valgrind, subject, loop, small, src)
            b = count(valgrind, subject, loop, large, src)
            per[subject] = (b - a) / (large - small)
        print(f"{loop:<15} {per['sqqueue']:>10,.0f} {per['plain']:>10,.0f}  "
              f"{per['sqqueue'] / per['plain']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
