"""Proofs of the tasks API with real worker processes (`sqqueue worker app:tasks`), on
SQLite and PostgreSQL: delayed calls run exactly once across two workers, none is lost
when workers are SIGKILLed, a periodic task ticks once per tick under two workers,
results come back across processes, and a raising task is retried, then dead-lettered
with its traceback's last line. Every wait is bounded."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import QueueTarget
from sqqueue import Ok, Tasks

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src"

APP = """
import json, os
from sqqueue import RetryPolicy, Tasks
from sqqueue.tasks import current_task

tasks = Tasks(
    os.environ["TASKS_TARGET"],
    retry=RetryPolicy.immediate(),
    default_visibility_timeout=float(os.environ.get("TASKS_LEASE", "30")),
    **json.loads(os.environ["TASKS_SETTINGS"]),
)


def record(*fields):
    # One short append per line: lines from several processes never interleave.
    with open(os.environ["TASKS_LOG"], "a") as log:
        log.write(" ".join(map(str, fields)) + "\\n")


@tasks.task(retries=100)
def call(n: int, pause: float = 0.0) -> None:
    if pause:
        import time
        time.sleep(pause)
    record("call", n, os.getpid())


@tasks.task(store_result=True)
def square(n: int) -> dict:
    return {"n": n, "square": n * n, "pid": os.getpid()}


@tasks.task(retries=2, store_result=True)
def broken(n: int) -> None:
    raise ValueError(f"bad input {n}")


if os.environ.get("TASKS_PERIODIC"):

    @tasks.periodic(every=1)
    def beat() -> None:
        record("beat", current_task().tick.timestamp(), os.getpid())
"""


class Deployment:
    """The app module in a directory, and the worker processes started on it."""

    def __init__(self, tmp_path: Path, target: QueueTarget) -> None:
        self.dir = tmp_path
        self.log = tmp_path / "runs.log"
        (tmp_path / "app.py").write_text(APP)
        settings: dict[str, Any] = {} if target.backend == "sqlite" else {"schema": target.schema}
        if target.key is not None:
            settings["encryption_key"] = target.key
        self.target_url = target.url
        self.settings = settings
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SQQUEUE_")}
        self.env.update(
            SQQUEUE_CONFIG="none",
            PYTHONPATH=f"{SRC}{os.pathsep}{tmp_path}",
            TASKS_TARGET=target.url,
            TASKS_SETTINGS=json.dumps(settings),
            TASKS_LOG=str(self.log),
        )
        self.procs: list[subprocess.Popen[str]] = []
        self.errs: dict[int, Path] = {}
        self.apps: list[Tasks] = []

    def producer(self) -> Any:
        """The app module imported here, as a producer."""
        sys.path.insert(0, str(self.dir))
        os.environ.update({k: self.env[k] for k in ("TASKS_TARGET", "TASKS_SETTINGS", "TASKS_LOG")})
        sys.modules.pop("app", None)
        import app  # the module written above

        self.apps.append(app.tasks)
        return app

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        """Start a worker; its stderr goes to a file of its own (see ``stop``)."""
        err = (self.dir / f"worker-{len(self.procs)}.err").open("w")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sqqueue.cli",
                "worker",
                "app:tasks",
                "--grace-period",
                "5",
                *args,
            ],
            cwd=self.dir,
            env={**self.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
        err.close()
        self.procs.append(proc)
        self.errs[proc.pid] = Path(err.name)
        return proc

    def started(self, proc: subprocess.Popen[str]) -> None:
        """Wait until the worker has started (its signal handlers are in place)."""
        errors = self.errs[proc.pid]
        wait_for(lambda: "started with" in errors.read_text(), 30, "the worker to start")

    def stop(self, proc: subprocess.Popen[str]) -> str:
        """Wait until the worker has started, SIGTERM it; it must exit 0 within 20 s.
        Returns its stderr."""
        errors = self.errs[proc.pid]
        self.started(proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        text = errors.read_text()
        assert proc.returncode == 0, text
        return text

    def lines(self, kind: str) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [
            line.split()[1:]
            for line in self.log.read_text().splitlines()
            if line.startswith(kind + " ")
        ]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for app in self.apps:
            app.close()
        sys.modules.pop("app", None)
        if str(self.dir) in sys.path:
            sys.path.remove(str(self.dir))
        for key in ("TASKS_TARGET", "TASKS_SETTINGS", "TASKS_LOG"):
            os.environ.pop(key, None)


@pytest.fixture
def deployment(tmp_path: Path, queue_target: QueueTarget) -> Iterator[Deployment]:
    d = Deployment(tmp_path, queue_target)
    yield d
    d.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_a_thousand_delayed_calls_run_exactly_once_across_two_workers(
    deployment: Deployment,
) -> None:
    app = deployment.producer()
    workers = [deployment.start("--concurrency", "2") for _ in range(2)]
    for proc in workers:  # (on a loaded machine, one could start after the last call ran)
        deployment.started(proc)
    rng = random.Random(7)
    for n in range(1000):
        assert isinstance(app.call.schedule((n,), delay=rng.uniform(0, 2)), Ok)
    wait_for(lambda: len(deployment.lines("call")) >= 1000, 120, "1,000 runs")
    time.sleep(0.5)  # a duplicate, if there were one, would show now
    for proc in workers:
        deployment.stop(proc)
    runs = deployment.lines("call")
    counts = Counter(int(n) for n, _pid in runs)
    assert sorted(counts) == list(range(1000))
    assert set(counts.values()) == {1}, [n for n, c in counts.items() if c > 1][:10]
    assert len({pid for _n, pid in runs}) == 2  # both workers took part
    stats = app.tasks.queue().stats().unwrap()
    assert (stats.completed_total, stats.dead, stats.depth) == (1000, 0, 0)


def test_no_call_is_lost_when_workers_are_killed(deployment: Deployment) -> None:
    """Workers SIGKILLed at random moments and restarted: every call runs at least once
    (a killed worker's calls come back when its 1 s leases expire)."""
    app = deployment.producer()
    # Work enough for several kills at 0.3-0.8 s apart to land mid-work (about 3 s of
    # handler time on four runners), however fast the machine.
    total = 600
    for n in range(total):
        assert isinstance(app.call.delay(n, pause=0.02), Ok)
    lease = {"TASKS_LEASE": "1"}
    workers = [deployment.start("--concurrency", "2", **lease) for _ in range(2)]
    rng = random.Random(11)
    kills = 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and len({n for n, _ in deployment.lines("call")}) < total:
        time.sleep(rng.uniform(0.3, 0.8))
        victim = rng.randrange(2)
        workers[victim].kill()
        workers[victim].wait(10)
        kills += 1
        workers[victim] = deployment.start("--concurrency", "2", **lease)
    wait_for(lambda: len({n for n, _ in deployment.lines("call")}) == total, 120, "every call")
    # A call that ran in a killed worker, which died before its completion was committed,
    # is in the queue until its lease runs out and a live worker runs it again.
    queue = app.tasks.queue()
    wait_for(lambda: queue.is_drained().unwrap(), 120, "the calls of killed workers run again")
    for proc in workers:
        deployment.stop(proc)
    seen = Counter(int(n) for n, _pid in deployment.lines("call"))
    assert sorted(seen) == list(range(total))
    assert kills >= 3
    assert queue.get_dead_letters().unwrap() == []
    assert queue.is_drained().unwrap()


def test_a_periodic_task_ticks_once_per_tick_under_two_workers(deployment: Deployment) -> None:
    """Two workers, each scheduling a task every second, for about ten seconds: about
    ten runs, one per tick (not twenty), with no tick run twice."""
    workers = [deployment.start(TASKS_PERIODIC="1") for _ in range(2)]
    wait_for(lambda: len(deployment.lines("beat")) >= 1, 30, "the first tick")
    first = time.monotonic()
    time.sleep(10 - (time.monotonic() - first))
    logs = "".join(deployment.stop(proc) for proc in workers)
    ticks = [float(tick) for tick, _pid in deployment.lines("beat")]
    counts = Counter(ticks)
    assert set(counts.values()) == {1}, counts.most_common(3)
    # Consecutive seconds, but for ticks both workers noticed late (a machine too busy to
    # wake them within half a second skips those, as missed="skip" says, and logs it).
    skipped = {
        datetime.fromisoformat(iso).timestamp()
        for iso in re.findall(r"tick (\S+) noticed [\d.]+ s late, skipped", logs)
    }
    missing = set(range(int(min(ticks)), int(max(ticks)) + 1)) - {int(t) for t in ticks}
    assert missing <= skipped, (sorted(ticks), sorted(skipped))
    assert 8 <= len(ticks) + len(missing) <= 13, sorted(ticks)


def test_results_and_dead_letters_across_processes(deployment: Deployment) -> None:
    """A worker process computes results the producer reads back; a raising task is
    retried, then dead-lettered with its traceback's last line."""
    app = deployment.producer()
    worker = deployment.start()
    handles = [app.square.delay(n).unwrap() for n in range(5)]
    failing = app.broken.delay(7).unwrap()
    results = [h.result(timeout=60) for h in handles]
    assert [r["square"] for r in results] == [0, 1, 4, 9, 16]
    assert {r["pid"] for r in results} == {worker.pid}
    with pytest.raises(Exception) as failed:
        failing.result(timeout=60)
    assert type(failed.value).__name__ == "TaskFailed"
    assert failed.value.error == "ValueError: bad input 7"  # type: ignore[attr-defined]
    err = deployment.stop(worker)
    assert "worker stopped: 5 completed, 3 failed (1 dead-lettered" in err
    (letter,) = app.tasks.queue().get_dead_letters().unwrap()
    assert (letter["id"], letter["attempts"], letter["last_error"]) == (
        failing.id,
        3,
        "ValueError: bad input 7",
    )
