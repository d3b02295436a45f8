"""Helpers shared by the test modules (import with ``from helpers import ...``)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import os
import queue as stdlib_queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import pytest
from click.testing import CliRunner
from click.testing import Result as CliResult

from sqqueue import Err, ErrorKind, Message, Ok, Queue, QueueError, Result, SQLiteQueue, Tasks, cli
from sqqueue.tasks import TaskWorker

if TYPE_CHECKING:
    from conftest import QueueTarget


# -- results --------------------------------------------------------------------------------------


def ok(result: Result[Any, Any]) -> Any:
    """Assert ``result`` is Ok and return its value."""
    assert isinstance(result, Ok), f"expected Ok, got {result!r}"
    return result.value


def err(
    result: Result[Any, Any], kind: ErrorKind, *words: str, cls: type[QueueError] = QueueError
) -> QueueError:
    """Assert ``result`` is an Err of ``kind``, a ``cls``, saying all ``words``; the error."""
    assert isinstance(result, Err), f"expected Err({kind}), got {result!r}"
    error = result.error
    assert isinstance(error, cls), f"expected {cls.__name__}, got {error!r}"
    assert error.kind is kind, f"expected {kind}, got {error!r}"
    text = str(error).lower()
    for word in words:
        assert word.lower() in text, f"{word!r} not in error message {str(error)!r}"
    return error


def err_text(result: Result[Any, Any], kind: ErrorKind) -> str:
    """Assert ``result`` is an Err of ``kind`` and return what it says."""
    return str(err(result, kind))


def leased(queue: Queue, **kwargs: Any) -> Message:
    """Dequeue a message, asserting there was one."""
    message = ok(queue.dequeue(**kwargs))
    assert isinstance(message, Message), "expected a message, the queue had none ready"
    return message


def at(timestamp: float) -> datetime:
    """The UTC datetime of a Unix ``timestamp`` (as the queue reports its times)."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


# -- what a queue holds ---------------------------------------------------------------------------

STATUS_KEYS = ("id", "status", "priority", "attempts", "max_attempts")


def message_statuses(queue: Queue) -> list[dict[str, Any]]:
    """Every message of ``queue``, dead letters included, by id: its ``id``, ``status``
    (pending, delayed, waiting, processing or dead), ``priority``, ``attempts`` and
    ``max_attempts``, read page by page with ``list_messages``."""
    rows: list[dict[str, Any]] = []
    for state in ("all", "dead"):
        after = 0
        while True:
            page = queue.list_messages(state, limit=1000, after_id=after).unwrap()
            if not page:
                break
            rows.extend(page)
            after = page[-1]["id"]
    return sorted(({key: row[key] for key in STATUS_KEYS} for row in rows), key=lambda r: r["id"])


def statuses(queue: Queue, *keys: str) -> dict[int, Any]:
    """By id, the status of every message of ``queue`` (dead letters included); with
    ``keys``, the tuple of those fields instead (``statuses(q, "status", "attempts")``)."""
    rows = message_statuses(queue)
    if not keys:
        return {row["id"]: row["status"] for row in rows}
    return {row["id"]: tuple(row[key] for key in keys) for row in rows}


def status_rows(queue: Queue) -> list[tuple[int, str, int]]:
    """``(id, status, attempts)`` of every message of ``queue``, dead letters included, in
    id order: a list, so that a test can compare it with ``[]`` or one literal row."""
    return [(row["id"], row["status"], row["attempts"]) for row in message_statuses(queue)]


# -- waiting --------------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool], timeout: float = 15.0, what: str = "", interval: float = 0.01
) -> None:
    """Poll ``predicate`` every ``interval`` s until true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


async def eventually(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``predicate`` (sync, or returning an awaitable) until true, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


@contextmanager
def serving(app: Tasks, **options: Any) -> Iterator[TaskWorker]:
    """A worker for ``app`` on a thread (no signal handlers, 0.2 s polls by default) for a block."""
    options.setdefault("handle_signals", False)
    options.setdefault("poll_wait", 0.2)
    worker = app.worker(**options)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(15)
        assert not thread.is_alive(), "the tasks worker did not stop"


def without_dac_override(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH.

    The tests run as root, where chmod does not stop writes (root bypasses file permissions
    through those capabilities). Linux capabilities are per thread, so dropping them from the
    effective set of one short-lived thread makes file modes apply to it, like to any other
    user, without touching the rest of the test process. Returns (value or exception).
    """
    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    outcome: dict[str, Any] = {}

    def run() -> None:
        header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
        data = (Data * 2)()
        if libc.capget(ctypes.byref(header), data) != 0:
            outcome["setup"] = OSError(ctypes.get_errno(), "capget failed")
            return
        data[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.capset(ctypes.byref(header), data) != 0:
            outcome["setup"] = OSError(ctypes.get_errno(), "capset failed")
            return
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if "setup" in outcome:
        raise outcome["setup"]
    return outcome.get("error", outcome.get("value"))


def drop_dac_override() -> None:
    """For ``preexec_fn``: a child process that file modes apply to, even as root.

    Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set before the exec:
    a root process gets its capabilities from that set at exec, so the command runs
    without them (see ``without_dac_override`` for a thread of this process). Nothing to
    do for another user, whom the modes bind anyway.
    """
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def file_state(path: Path) -> dict[str, tuple[bytes, int, int]]:
    """The bytes, modification time and mode of the database ``path`` and of its -wal and
    -shm files where they exist, and the names in its directory: what a read must leave
    as it found it."""
    state: dict[str, tuple[bytes, int, int]] = {}
    for suffix in ("", "-wal", "-shm"):
        name = Path(f"{path}{suffix}")
        if name.exists():
            info = name.stat()
            state[name.name] = (name.read_bytes(), info.st_mtime_ns, info.st_mode)
    state["directory"] = (" ".join(sorted(os.listdir(path.parent))).encode(), 0, 0)
    return state


@contextmanager
def ready_child(script: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``script`` with ``args`` (sqqueue from this checkout importable), its stdin and
    stdout piped, once it has printed "ready"; killed at the end if still running."""
    src = Path(__file__).resolve().parents[1] / "src"
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


# -- the command line -----------------------------------------------------------------------------

# The environment of a child ``sqqueue`` process: no SQQUEUE_* setting and no config file.
CLI_ENV = {k: v for k, v in os.environ.items() if not k.startswith("SQQUEUE_")}
CLI_ENV["SQQUEUE_CONFIG"] = "none"
SQQUEUE = [sys.executable, "-m", "sqqueue.cli"]


def isolate(
    monkeypatch: pytest.MonkeyPatch, directory: Path | None = None, *, config_files: bool = False
) -> None:
    """Unset every SQQUEUE_* variable and, unless ``config_files``, turn config files off
    (SQQUEUE_CONFIG=none); with ``directory``, work there. The tests of ``sqqueue config``
    keep config files on, to find the sqqueue.toml they write in ``directory``."""
    for key in list(os.environ):
        if key.startswith("SQQUEUE_"):
            monkeypatch.delenv(key)
    if not config_files:
        monkeypatch.setenv("SQQUEUE_CONFIG", "none")
    if directory is not None:
        monkeypatch.chdir(directory)


def cli_process(
    *args: object, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``sqqueue ARGS`` as a process of its own (text pipes; ``CLI_ENV`` unless ``env``)."""
    return subprocess.Popen(
        [*SQQUEUE, *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV if env is None else env,
    )


def worker_until(
    args: list[object], cwd: Path, done: Callable[[], bool], seconds: float = 15
) -> tuple[int, str]:
    """Run ``sqqueue worker ARGS`` in ``cwd`` until ``done()`` (at most ``seconds``), stop
    it with SIGTERM; its exit code and stderr."""
    proc = cli_process("worker", *args, cwd=cwd)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not done():
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    return proc.returncode, err


def run_cli(*args: object, input: str | bytes | None = None) -> CliResult:
    """Run the ``sqqueue`` command with ``args`` in-process (click's CliRunner)."""
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


def one_error_line(result: CliResult) -> str:
    """Assert the command wrote one ``error: ...`` line to stderr and no traceback; the line."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def read_line_within(proc: subprocess.Popen[str], seconds: float) -> str:
    """The first stdout line of ``proc``, or fail after ``seconds``."""
    box: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(seconds)
    assert box and box[0], "no output in time"
    return box[0]


@overload
def opened(where: Path, name: str = "jobs") -> SQLiteQueue: ...
@overload
def opened(where: QueueTarget, name: str = "jobs") -> Queue: ...
def opened(where: Path | QueueTarget, name: str = "jobs") -> Queue:
    """A new queue ``name`` in the SQLite file or on the test target ``where`` (to be closed)."""
    if isinstance(where, Path):
        return SQLiteQueue(where, table_name=name)
    return where.open(name)


def counts(where: Path | QueueTarget, name: str = "jobs") -> dict[str, int]:
    """The ready, delayed, processing and dead counts of the queue ``name`` (see ``opened``)."""
    with opened(where, name) as q:
        s = q.stats().unwrap()
    return {"ready": s.ready, "delayed": s.delayed, "processing": s.processing, "dead": s.dead}


def make_dead(where: Path | QueueTarget, count: int, name: str = "jobs") -> list[int]:
    """Enqueue ``count`` messages ("bad <n>"), dead-letter each at once ("error <id>"): ids."""
    with opened(where, name) as q:
        ids = [q.enqueue(f"bad {n}").unwrap() for n in range(count)]
        for ident in ids:
            q.fail_message(ident, send_to_dlq=True, error=f"error {ident}").unwrap()
    return ids


# -- scripts in child processes -------------------------------------------------------------------

#: this checkout's sources, for child processes
SRC = Path(__file__).resolve().parents[1] / "src"


def run_script(script: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with this checkout's sqqueue to its end; its output captured."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )


class ScriptProcess:
    """A script in a child process (this checkout's sqqueue), its output lines read on a
    thread; killed at the end of a ``with`` block if still running."""

    def __init__(self, script: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
        self.lines: list[str] = []
        self._queue: stdlib_queue.Queue[str | None] = stdlib_queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, *texts: str, timeout: float = 15.0) -> None:
        """Wait until it has printed, in any order, a line containing each of ``texts``."""
        deadline = time.monotonic() + timeout
        while not all(any(text in line for line in self.lines) for text in texts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no lines with {texts} in {timeout} s; output: {self.lines}")
            try:
                line = self._queue.get(timeout=remaining)
            except stdlib_queue.Empty:
                continue
            if line is None:
                pytest.fail(f"exited ({self.proc.wait()}) before {texts}; output: {self.lines}")
            self.lines.append(line)

    def drain(self) -> list[str]:
        """All output lines (call after the process has exited)."""
        with contextlib.suppress(stdlib_queue.Empty):
            while (line := self._queue.get(timeout=2)) is not None:
                self.lines.append(line)
        return self.lines

    def __enter__(self) -> ScriptProcess:
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
