"""Shared fixtures: a fake clock and queues on real SQLite files in a temporary directory."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sqqueue import SQLiteQueue

LOCAL_FIXTURES = Path(__file__).resolve().parent / "data"


class FakeClock:
    """A settable clock (Unix seconds) to inject into queues: no sleeping in tests."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture
def make_queue(db_path: Path, clock: FakeClock) -> Iterator[Callable[..., SQLiteQueue]]:
    """Factory for queues on ``db_path`` using the fake clock; all closed at teardown."""
    made: list[SQLiteQueue] = []

    def make(**kwargs: Any) -> SQLiteQueue:
        kwargs.setdefault("db_path", db_path)
        kwargs.setdefault("clock", clock)
        queue = SQLiteQueue(**kwargs)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


@pytest.fixture
def queue(make_queue: Callable[..., SQLiteQueue]) -> SQLiteQueue:
    return make_queue(table_name="jobs")


@pytest.fixture
def legacy_db(tmp_path: Path) -> Path:
    """A writable copy of the database written by sqqueue 0.1.0."""
    source = LOCAL_FIXTURES / "sqqueue-0.1.0.db"
    target = tmp_path / "legacy.db"
    target.write_bytes(source.read_bytes())
    target.chmod(0o600)
    return target
