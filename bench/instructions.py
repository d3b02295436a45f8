"""CPU instructions per message, counted by valgrind: a measure that does not drift.

    .venv/bin/python bench/instructions.py                    # sqqueue and plain sqlite3
                                                              # (the least-work reference)
    .venv/bin/python bench/instructions.py --src /tmp/old/src # another checkout's sqqueue
    .venv/bin/python bench/instructions.py --only enqueue dequeue

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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PAYLOAD = "x" * 100
PREFILL = 4000
LOOPS = {  # loop -> (small, large) message counts
    "enqueue": (200, 1200),
    "dequeue": (200, 1200),
    "enqueue_batch": (1000, 3000),
    "dequeue_batch": (1000, 3000),
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
        if loop.startswith("dequeue"):
            for _ in range(0, PREFILL, 1000):
                a.enqueue_batch([PAYLOAD] * 1000)
        if loop == "enqueue":
            for _ in range(n):
                a.enqueue(PAYLOAD)
        elif loop == "enqueue_batch":
            for _ in range(n // 100):
                a.enqueue_batch([PAYLOAD] * 100)
        elif loop == "dequeue":
            for _ in range(n):
                a.dequeue_ack()
        else:
            for _ in range(n // 100):
                a.dequeue_batch_ack(100)
        a.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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
