"""PostgreSQL URLs libpq refuses, and servers that do not answer: clear errors, in time,
never showing the password."""

from __future__ import annotations

import socket
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

import sqqueue
from helpers import one_error_line, run_cli
from sqqueue.exceptions import QueueError
from sqqueue.targets import hide_password, redact

SECRET = "my SECRET pw"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@127.0.0.1:9/app",
        f"postgresql://app@127.0.0.1:9/app?password={SECRET}",
        "postgresql://app:pw@127.0.0.1:9/app?bogus=1",
        "postgresql://app:pw@127.0.0.1:9/app?connect_timeout=abc",
        f"postgresql://app:{SECRET}@ss@127.0.0.1:9/app",  # an '@' not written as %40
        "postgresql://app:my@pw@127.0.0.1:9/app",
    ],
)
def test_a_url_libpq_refuses_is_a_value_error_without_its_password(url: str) -> None:
    with pytest.raises(ValueError, match="invalid PostgreSQL URL") as raised:
        sqqueue.connect(url, "jobs")
    assert SECRET not in str(raised.value) and "my@pw" not in str(raised.value)
    assert "ss@" not in str(raised.value)
    listed = sqqueue.list_queues(url)
    assert listed.is_err()
    assert SECRET not in str(listed.error)


def test_an_at_sign_in_the_query_is_no_password_s() -> None:
    listed = sqqueue.list_queues("postgresql://app:pw@127.0.0.1:9?application_name=ops@eu")
    assert listed.is_err() and "invalid PostgreSQL URL" not in str(listed.error)
    assert "Connection refused" in str(listed.error)


@pytest.mark.parametrize(
    ("schema", "why"), [("my-schema", "ASCII letters"), ("pg_catalog", "are reserved")]
)
def test_a_bad_schema_is_named_as_the_schema(schema: str, why: str) -> None:
    with pytest.raises(ValueError, match=f"invalid schema name '{schema}'.*{why}"):
        sqqueue.connect("postgresql://app@127.0.0.1:9/app", "jobs", schema=schema)
    assert sqqueue.tools.grant_sql("jobs_schema_dlq", ["jobs"], {"producer": "app"})


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server, a black hole)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_listing_the_queues_of_a_server_that_does_not_answer_gives_up(silent_server: int) -> None:
    """Within its lock_timeout (libpq's connect timeout: at least 2 s), not 30 s or never."""
    started = time.monotonic()
    secret = "s3cret-pw"
    listed = sqqueue.list_queues(
        f"postgresql://app:{secret}@127.0.0.1:{silent_server}/app", lock_timeout=1
    )
    assert listed.is_err()
    assert time.monotonic() - started < 15  # (not the hang it was)
    assert "timeout" in str(listed.error), listed.error
    assert secret not in str(listed.error)


# -- secrets in a URL, mistyped URLs, libpq keyword/value strings ------------------------------

PASSPHRASE = "KeyPassphrase123"


def with_param(url: str, param: str) -> str:
    """``url`` with one more query parameter."""
    return f"{url}{'&' if '?' in url else '?'}{param}"


def traceback_of(exc: BaseException) -> str:
    """All a traceback of ``exc`` prints, its chained exceptions included."""
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        (
            f"postgresql://app@/app?host=/tmp&sslpassword={PASSPHRASE}",
            "postgresql://app@/app?host=/tmp&sslpassword=***",
            PASSPHRASE,
        ),
        (
            f"postgresql://app@db/app?SSLPASSWORD={PASSPHRASE}&sslkey=/keys/app.key",
            "postgresql://app@db/app?SSLPASSWORD=***&sslkey=/keys/app.key",  # (a path: shown)
            PASSPHRASE,
        ),
        # libpq decodes a parameter's name too, and takes a password up to its '@' (a '?'
        # or '#' in it included).
        (
            f"postgresql://app@db/app?pass%77ord={PASSPHRASE}",
            "postgresql://app@db/app?pass%77ord=***",
            PASSPHRASE,
        ),
        ("postgresql://app:a#b1@db/app", "postgresql://app:***@db/app", "a#b1"),
        ("postgresql://app:a?b1@db/app?x=1", "postgresql://app:***@db/app?x=1", "a?b1"),
        ("postgresql://app:a%40b1@db/app", "postgresql://app:***@db/app", "a@b1"),
    ],
)
def test_redact_masks_every_secret_of_a_url(url: str, shown: str, secret: str) -> None:
    assert redact(url) == shown
    assert hide_password(f"libpq said {secret}.", url) == "libpq said ***."


def test_the_parts_of_a_password_split_at_an_at_sign_are_masked_too() -> None:
    """libpq ends the user part at the first '@': the rest of such a password is taken
    for the host, and a failure to resolve it quotes that part, masked all the same (the
    real command too); parts of a character or two are left, not to garble the text."""
    url = "postgresql://bob:s3cr@t-Tail@db.example.invalid/app"
    said = "failed to resolve host 't-Tail@db.example.invalid': Name or service not known"
    assert "t-Tail" not in hide_password(said, url)
    assert hide_password("a b c", "postgresql://bob:a@b@db/app") == "a b c"
    result = sqqueue.list_queues(url)
    assert result.is_err() and "t-Tail" not in str(result.error) and "s3cr" not in str(result.error)


def test_an_sslpassword_is_masked_wherever_the_url_is_shown(pg_url: str, pg_schema: str) -> None:
    url = with_param(pg_url, f"sslpassword={PASSPHRASE}")  # (a socket: no TLS, it is unused)
    with sqqueue.PostgresQueue(url, "jobs", schema=pg_schema) as queue:
        assert queue.enqueue("x").is_ok()
        assert PASSPHRASE not in queue.url and "sslpassword=***" in queue.url
        assert PASSPHRASE not in repr(queue)
    nowhere = f"postgresql://app@127.0.0.1:9/app?sslpassword={PASSPHRASE}"
    with pytest.raises(QueueError) as raised:
        sqqueue.connect(nowhere, "jobs", lock_timeout=1)
    assert PASSPHRASE not in traceback_of(raised.value)
    assert "sslpassword=***" in str(raised.value)
    listed = sqqueue.list_queues(nowhere)
    assert listed.is_err() and PASSPHRASE not in str(listed.error)


MISTYPED = [
    "postgresql+psycopg://app:Hunter2Secret@db/app",
    "postgresq://app:Hunter2Secret@db/app",
    "mysql://app:Hunter2Secret@db/app",
]


@pytest.mark.parametrize("url", MISTYPED)
def test_an_unsupported_url_is_named_without_its_password(url: str) -> None:
    for open_it in (
        lambda: sqqueue.connect(url, "jobs"),
        lambda: sqqueue.PostgresQueue(url, "jobs"),
    ):
        with pytest.raises(ValueError, match="unsupported URL") as raised:
            open_it()
        assert "Hunter2Secret" not in traceback_of(raised.value)
        assert "app:***@db/app" in str(raised.value)
        assert "postgresql://" in str(raised.value)  # (what to write instead)
    listed = sqqueue.list_queues(url)
    assert listed.is_err() and "Hunter2Secret" not in str(listed.error)
    line = one_error_line(run_cli("stats", url))
    assert "Hunter2Secret" not in line and "app:***@db/app" in line


def test_a_misspelled_scheme_suggests_the_right_one() -> None:
    with pytest.raises(ValueError, match="did you mean postgresql://"):
        sqqueue.connect("postgresq://app:Hunter2Secret@db/app", "jobs")
    with pytest.raises(ValueError, match=r"write postgresql://, not postgresql\+psycopg://"):
        sqqueue.connect("postgresql+psycopg://app@db/app", "jobs")


def test_an_uppercase_scheme_and_surrounding_spaces_are_accepted(
    pg_url: str, pg_schema: str
) -> None:
    """Schemes are case-insensitive (RFC 3986), though libpq's is not; a space or a newline
    around a URL (from a file or an environment variable) is not part of it."""
    scheme, rest = pg_url.split("://", 1)
    for url in (f"{scheme.upper()}://{rest}", f" {pg_url}\n", f"Postgres://{rest}"):
        with sqqueue.connect(url, "jobs", schema=pg_schema) as queue:
            assert queue.enqueue(url).is_ok()
        with sqqueue.PostgresQueue(url, "jobs", schema=pg_schema) as queue:
            assert queue.dequeue().unwrap() is not None
        assert sqqueue.list_queues(url, schema=pg_schema).unwrap() == ["jobs"]
        stats = run_cli("stats", url, "--schema", pg_schema, "--json")
        assert stats.exit_code == 0, stats.output


@pytest.mark.parametrize("url", ["postgresql://app:Sec%ret11@127.0.0.1:9/db"])
def test_a_malformed_percent_encoding_leaves_no_secret_in_a_traceback(url: str) -> None:
    for open_it in (
        lambda: sqqueue.connect(url, "jobs"),
        lambda: sqqueue.PostgresQueue(url, "jobs"),
    ):
        with pytest.raises(ValueError, match="invalid percent-encoded token") as raised:
            open_it()
        # No chained exception carries the password: not as cause, not as context.
        assert raised.value.__cause__ is None and raised.value.__context__ is None
        assert "ret11" not in traceback_of(raised.value)
    listed = sqqueue.list_queues(url)
    assert listed.is_err() and "ret11" not in traceback_of(listed.error)


DSN = "host=db.internal dbname=app user=app password=Hunter2Secret"


@pytest.mark.parametrize("dsn", [DSN, "dbname=app password='Hunter2Secret x'", " user = app"])
def test_a_libpq_keyword_value_string_is_refused_creating_nothing(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SQQUEUE_CONFIG", "none")
    for open_it in (
        lambda: sqqueue.connect(dsn, "jobs"),
        lambda: sqqueue.PostgresQueue(dsn, "jobs"),
        lambda: sqqueue.SQLiteQueue(dsn, "jobs"),
        lambda: sqqueue.Tasks(dsn),
    ):
        with pytest.raises(ValueError, match="must be a postgresql:// URL") as raised:
            open_it()
        assert "Hunter2Secret" not in traceback_of(raised.value)
    for listed in (sqqueue.list_queues(dsn), sqqueue.SQLiteQueue.list_queues(dsn)):
        assert listed.is_err() and "must be a postgresql:// URL" in str(listed.error)
        assert "Hunter2Secret" not in str(listed.error)
    result = run_cli("stats", dsn)
    assert result.exit_code == 2
    assert "Hunter2Secret" not in one_error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_a_keyword_value_string_is_shown_how_to_write_it_as_a_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # (where an SQLite file named after it was once created)
    with pytest.raises(ValueError) as raised:
        sqqueue.connect(DSN + " sslmode=require", "jobs")
    assert "postgresql://app:***@db.internal/app?sslmode=require" in str(raised.value)


@pytest.mark.parametrize("name", ["a=b.db", "./host=db.internal", "hosts=x.db", "jobs host=x.db"])
def test_sqlite_files_whose_names_hold_an_equals_sign_still_open(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with sqqueue.connect(name, "jobs") as queue:
        assert queue.enqueue("x").is_ok()
    assert sqqueue.list_queues(name).unwrap() == ["jobs"]
