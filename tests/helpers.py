"""Helpers shared by the test modules (import with ``from helpers import ...``)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqqueue import Err, ErrorKind, Message, Ok, Queue, QueueError, Result


def ok(result: Result[Any, Any]) -> Any:
    """Assert ``result`` is Ok and return its value."""
    assert isinstance(result, Ok), f"expected Ok, got {result!r}"
    return result.value


def err(result: Result[Any, Any], kind: ErrorKind) -> QueueError:
    """Assert ``result`` is an Err of ``kind`` and return the error."""
    assert isinstance(result, Err), f"expected Err({kind}), got {result!r}"
    assert result.error.kind is kind, f"expected {kind}, got {result.error!r}"
    return result.error


def err_text(result: Result[Any, Any], kind: ErrorKind) -> str:
    """Assert ``result`` is an Err of ``kind`` and return what it says."""
    return str(err(result, kind))


def leased(queue: Queue, **kwargs: Any) -> Message:
    """Dequeue a message, asserting there was one."""
    message = ok(queue.dequeue(**kwargs))
    assert isinstance(message, Message), "expected a message, the queue had none ready"
    return message


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
