"""The ``sqqueue`` command on both backends: every command that applies to a queue runs
on an SQLite file (given as an ``sqlite:///`` URL) and on a PostgreSQL URL (``--schema``
the test's own), in-process through click's CliRunner; the commands that run until
stopped (worker, metrics serve, dashboard) as real processes. Commands that only mean
something for an SQLite file refuse a PostgreSQL URL, and no password is ever printed."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import LOCAL_FIXTURES, QueueTarget
from helpers import (
    CLI_ENV,
    SQQUEUE,
    counts,
    isolate,
    make_dead,
    one_error_line,
    opened,
    read_line_within,
    run_cli,
    worker_until,
)
from sqqueue import list_queues
from sqqueue.targets import redact


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SQQUEUE_* settings or config file from the machine leak into a test."""
    isolate(monkeypatch, tmp_path)


def where(target: QueueTarget) -> list[str]:
    """The TARGET arguments of a command: the URL, and --schema on PostgreSQL."""
    if target.backend == "sqlite":
        return [target.url]
    return [target.url, "--schema", str(target.schema)]


def run_ok(*args: object, input: str | None = None) -> str:
    """Run the command, assert it exits 0, and return its stdout."""
    result = run_cli(*args, input=input)
    assert result.exit_code == 0, result.output
    return result.stdout


# -- messages -----------------------------------------------------------------------------------


def test_enqueue_ls_peek_and_stats(queue_target: QueueTarget) -> None:
    args = where(queue_target)
    assert run_ok("enqueue", args[0], "jobs", '{"n": 1}', "--json", *args[1:]) == "1\n"
    bulk = run_ok("enqueue", args[0], "jobs", "-", *args[1:], input="a\nb\n")
    assert bulk == "enqueued 2 message(s) to queue 'jobs'\n"
    run_ok("enqueue", args[0], "jobs", "later", "--delay", "3600", *args[1:])
    listed = json.loads(run_ok("ls", args[0], "jobs", "--json", "--limit", "2", *args[1:]))
    assert [m["payload"] for m in listed["messages"]] == [{"n": 1}, "a"]
    assert listed["next_after"] == 2
    delayed = json.loads(run_ok("ls", args[0], "jobs", "--state", "delayed", "--json", *args[1:]))
    assert [m["payload"] for m in delayed["messages"]] == ["later"]
    peeked = json.loads(run_ok("peek", args[0], "jobs", "--json", *args[1:]))
    assert peeked["payload"] == {"n": 1}
    assert counts(queue_target)["processing"] == 0
    data = json.loads(run_ok("stats", *args, "--json"))
    jobs = data["queues"]["jobs"]
    assert (jobs["ready"], jobs["delayed"], jobs["pending"]) == (3, 1, 4)
    if queue_target.backend == "postgres":
        assert data["db_bytes"] is None and data["wal_bytes"] is None
        assert jobs["db_bytes"] is None and jobs["wal_bytes"] is None  # (no file of ours)
    else:
        assert data["db_bytes"] > 0
    table = run_ok("stats", *args)
    assert "jobs" in table and "totals since creation" in table
    assert ("WAL:" in table) is (queue_target.backend == "sqlite")
    assert json.loads(run_ok("stats", args[0], "jobs", "--json", *args[1:]))["queues"].keys() == {
        "jobs"
    }


def test_dequeue_complete_and_fail(queue_target: QueueTarget) -> None:
    args = where(queue_target)
    with opened(queue_target) as q:
        q.enqueue_batch(["first", "second"]).unwrap()
    assert run_ok("dequeue", args[0], "jobs", *args[1:]) == "1\tfirst\n"
    assert run_ok("complete", args[0], "jobs", "1", *args[1:]) == "completed message 1\n"
    taken = json.loads(run_ok("dequeue", args[0], "jobs", "--json", *args[1:]))
    assert taken["id"] == 2
    dead = run_ok("fail", args[0], "jobs", "2", "--dlq", "--error", "boom", *args[1:])
    assert "dead-letter queue" in dead
    assert counts(queue_target) == {"ready": 0, "delayed": 0, "processing": 0, "dead": 1}
    again = run_cli("complete", args[0], "jobs", "1", *args[1:])
    assert again.exit_code == 1
    assert "not in queue 'jobs'" in one_error_line(again)


def test_purge(queue_target: QueueTarget) -> None:
    args = where(queue_target)
    with opened(queue_target) as q:
        q.enqueue_batch(["a", "b"]).unwrap()
        q.enqueue("later", delay=3600).unwrap()
    refused = run_cli("purge", args[0], "jobs", *args[1:])
    assert refused.exit_code == 2
    delayed = run_ok("purge", args[0], "jobs", "--state", "delayed", "--yes", *args[1:])
    assert delayed == "deleted 1 message(s) from queue 'jobs'\n"
    assert counts(queue_target)["ready"] == 2
    assert (
        run_ok("purge", args[0], "jobs", "-y", *args[1:])
        == "deleted 2 message(s) from queue 'jobs'\n"
    )


def test_unknown_queue_is_named_with_the_queues_there(queue_target: QueueTarget) -> None:
    args = where(queue_target)
    for name in ("jobs", "emails"):
        opened(queue_target, name).close()
    result = run_cli("peek", args[0], "nosuch", *args[1:])
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "no queue 'nosuch'" in line and "(queues there: emails, jobs)" in line
    assert list_queues(queue_target.url, schema=queue_target.schema).unwrap() == ["emails", "jobs"]


def schema_there(url: str, schema: str) -> bool:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        return found.fetchone() is not None


def said_no_schema(line: str, url: str, schema: str) -> None:
    """``line`` is the error of a missing ``--schema``, saying how one is made."""
    assert line.startswith(f"error: no schema '{schema}' in {redact(url)}: check --schema;"), line
    assert f"--schema {schema})" in line and f"CREATE SCHEMA {schema}" in line, line


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "{url}"],
        ["stats", "{url}", "jobs"],
        ["ls", "{url}", "jobs"],
        ["peek", "{url}", "jobs"],
        ["dequeue", "{url}", "jobs"],
        ["complete", "{url}", "jobs", "1"],
        ["fail", "{url}", "jobs", "1"],
        ["purge", "{url}", "jobs", "--yes"],
        ["dlq", "list", "{url}", "jobs"],
        ["dlq", "show", "{url}", "jobs", "1"],
        ["dlq", "redrive", "{url}", "jobs", "--all", "--to", "retry", "--create"],
        ["dlq", "purge", "{url}", "jobs", "--yes"],
        ["vacuum", "{url}"],
        ["migrate", "{url}"],
        ["grants", "{url}", "--producer", "app_web"],
        ["copy", "{url}", "{file}"],
        ["metrics", "serve", "{url}", "--queue", "jobs"],
    ],
)
def test_a_schema_that_is_not_there_is_an_error_and_not_created(
    pg_url: str, pg_schema: str, tmp_path: Path, args: list[str]
) -> None:
    """A --schema that does not exist (a typo) is said to be missing, exit 1 as for a
    missing file, with how a schema is made; nothing is created, the schema least of
    all. (An empty schema that exists is no error: it has no queues.)"""
    file = tmp_path / "copy.db"
    result = run_cli(*(a.format(url=pg_url, file=file) for a in args), "--schema", pg_schema)
    assert result.exit_code == 1, result.output
    said_no_schema(one_error_line(result), pg_url, pg_schema)
    assert result.stdout == ""
    assert not schema_there(pg_url, pg_schema)
    assert not file.exists()


def test_an_empty_schema_is_there_with_no_queues(pg_url: str, pg_schema: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
    assert run_ok("stats", pg_url, "--schema", pg_schema).startswith("no sqqueue queues in ")
    absent = run_cli("ls", pg_url, "jobs", "--schema", pg_schema)
    assert "no queue 'jobs'" in one_error_line(absent)


@pytest.mark.parametrize("command", [["metrics", "serve"], ["dashboard"]])
def test_process_serving_a_schema_that_is_not_there_is_refused(
    pg_url: str, pg_schema: str, command: list[str]
) -> None:
    """metrics serve and dashboard refuse a --schema that does not exist at start (as a
    file that does not exist), rather than serve nothing for ever."""
    done = subprocess.run(
        [*SQQUEUE, *command, pg_url, "--schema", pg_schema, "--port", "0"],
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    said_no_schema(lines[0], pg_url, pg_schema)
    assert not schema_there(pg_url, pg_schema)


# -- the dead-letter queue ----------------------------------------------------------------------


def test_dlq_list_show_redrive_and_purge(queue_target: QueueTarget) -> None:
    args = where(queue_target)
    make_dead(queue_target, 3)
    listed = json.loads(run_ok("dlq", "list", args[0], "jobs", "--json", *args[1:]))
    assert [m["id"] for m in listed["messages"]] == [1, 2, 3]
    shown = run_ok("dlq", "show", args[0], "jobs", "2", *args[1:])
    assert "last error:  error 2" in shown and "bad 1" in shown
    moved = run_ok("dlq", "redrive", args[0], "jobs", "1", "--to", "retry", "--create", *args[1:])
    assert moved == "redrove 1 message(s) to queue 'retry'\n"
    assert counts(queue_target, "retry")["ready"] == 1
    assert run_ok("dlq", "redrive", args[0], "jobs", "2", *args[1:]) == (
        "redrove 1 message(s) to queue 'jobs'\n"
    )
    purged = run_ok("dlq", "purge", args[0], "jobs", "--yes", *args[1:])
    assert purged == "deleted 1 dead letter(s) from queue 'jobs'\n"
    assert counts(queue_target) == {"ready": 1, "delayed": 0, "processing": 0, "dead": 0}


# -- the database -------------------------------------------------------------------------------


def test_vacuum(queue_target: QueueTarget) -> None:
    args = where(queue_target)
    with opened(queue_target) as q:
        q.enqueue_batch(["x" * 500] * 50).unwrap()
        q.purge().unwrap()
    opened(queue_target, "emails").close()
    out = run_ok("vacuum", *args)
    if queue_target.backend == "postgres":
        assert (
            out == f"vacuumed the tables of 2 queue(s) in {redact(queue_target.url)} "
            f"(schema {queue_target.schema})\n"
        )
    else:
        assert out.startswith(f"vacuumed {queue_target.url}: ")


def test_migrate_with_nothing_to_migrate(queue_target: QueueTarget) -> None:
    args = where(queue_target)
    opened(queue_target).close()
    assert "nothing to migrate" in run_ok("migrate", *args)


def test_migrate_upgrades_postgres_queues_of_the_previous_layout(
    pg_url: str, pg_schema: str
) -> None:
    """A queue of the previous PostgreSQL layout is refused read-only until `sqqueue
    migrate` upgrades it; a current one is left alone and not named."""
    import psycopg

    layouts = json.loads((LOCAL_FIXTURES / "postgres-schema-1.json").read_text("utf-8"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
        conn.execute(f'SET search_path TO "{pg_schema}"')
        for statement in layouts["jobs"]:
            conn.execute(statement)
    QueueTarget("postgres", pg_url, pg_schema).open("current").close()
    refused = run_cli("stats", pg_url, "jobs", "--schema", pg_schema)
    assert refused.exit_code == 1
    assert "older sqqueue" in one_error_line(refused)
    assert run_ok("migrate", pg_url, "--schema", pg_schema) == "jobs\n"
    data = json.loads(run_ok("stats", pg_url, "--schema", pg_schema, "--json"))
    assert set(data["queues"]) == {"current", "jobs"}
    assert "nothing to migrate" in run_ok("migrate", pg_url, "--schema", pg_schema)


def test_copy_from_a_file_into_postgresql(tmp_path: Path, pg_url: str, pg_schema: str) -> None:
    """The PostgreSQL side of a copy is a URL; its search path picks the schema."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{pg_schema}"')
    source = QueueTarget("sqlite", f"sqlite:///{tmp_path / 'src.db'}")
    make_dead(source, 1)
    with opened(source) as q:
        q.enqueue_batch(["a", "b"]).unwrap()
    separator = "&" if "?" in pg_url else "?"
    url = f"{pg_url}{separator}options=-csearch_path%3D{pg_schema}"
    out = run_ok("copy", source.url, url)
    assert out == "jobs: 2 message(s), 1 dead letter(s)\n"
    copied = QueueTarget("postgres", pg_url, pg_schema)
    assert counts(copied) == {"ready": 2, "delayed": 0, "processing": 0, "dead": 1}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["checkpoint", "{pg}"], "the server checkpoints its write-ahead log itself"),
        (["check", "{pg}"], "pg_amcheck"),
        (["salvage", "{pg}", "new.db"], "sqqueue copy"),
        (["salvage", "old.db", "{pg}"], "salvage into a new file"),
    ],
    ids=["checkpoint", "check", "salvage-from", "salvage-into"],
)
def test_sqlite_file_commands_refuse_a_postgres_url(
    args: list[str], says: str, tmp_path: Path
) -> None:
    """Exit 2, saying why and what to use instead, with the password masked; nothing is
    created (no server is even asked)."""
    pg = "postgresql://app:s3cret@db.invalid/app"
    result = run_cli(*(a.format(pg=pg) for a in args))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "is for SQLite files" in line and says in line
    assert "s3cret" not in result.output and "app:***@db.invalid" in line
    assert list(tmp_path.iterdir()) == []


def test_schema_is_for_postgres_only(tmp_path: Path) -> None:
    result = run_cli("stats", tmp_path / "jobs.db", "--schema", "jobs")
    assert result.exit_code == 2
    assert "--schema applies to a postgresql:// URL only" in one_error_line(result)
    bad = run_cli("stats", "postgresql://db.invalid/app", "--schema", "no-dashes")
    assert bad.exit_code == 2
    assert "--schema" in one_error_line(bad)
    url = run_cli("stats", "mysql://db/app")
    assert url.exit_code == 2
    assert "unsupported URL" in one_error_line(url)


def test_a_password_is_never_printed() -> None:
    """A server that cannot be reached: the error names the URL with its password
    masked, in the user part and as a parameter."""
    for url in (
        "postgresql://app:s3cret@127.0.0.1:1/app?connect_timeout=5",
        "postgresql://app@127.0.0.1:1/app?password=s3cret&connect_timeout=5",
    ):
        result = run_cli("stats", url)
        assert result.exit_code == 1, result.output
        one_error_line(result)
        assert "s3cret" not in result.output


# -- metrics ------------------------------------------------------------------------------------


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then the stderr of a clean exit."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def test_process_metrics_serve_on_postgres(pg_url: str, pg_schema: str) -> None:
    target = QueueTarget("postgres", pg_url, pg_schema)
    with opened(target) as q:
        q.enqueue_batch(["a", "b", "c"]).unwrap()
    proc = subprocess.Popen(
        [*SQQUEUE, "metrics", "serve", pg_url, "--schema", pg_schema, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
    )
    try:
        line = read_line_within(proc, 30)
        assert f"for {redact(pg_url)} (schema {pg_schema})" in line
        with urllib.request.urlopen(line.split()[1], timeout=20) as response:
            text = response.read().decode()
        stop(proc)
    finally:
        proc.kill()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ready = {
        s.labels["queue"]: s.value
        for s in families["sqqueue_messages"].samples
        if s.labels["state"] == "ready"
    }
    assert ready == {"jobs": 3.0}


def test_process_worker_on_postgres(pg_url: str, pg_schema: str, tmp_path: Path) -> None:
    """`sqqueue worker MODULE:FUNC URL QUEUE --schema S` handles the messages there."""
    (tmp_path / "handlers.py").write_text(
        "def handle(message):\n"
        "    if message.payload == 'bad':\n"
        "        raise ValueError('bad payload')\n"
    )
    target = QueueTarget("postgres", pg_url, pg_schema)
    with opened(target) as q:
        q.enqueue_batch(["one", "two"]).unwrap()
        q.enqueue("bad", max_attempts=1).unwrap()
    code, err = worker_until(
        ["handlers:handle", pg_url, "jobs", "--schema", pg_schema],
        tmp_path,
        lambda: counts(target) == {"ready": 0, "delayed": 0, "processing": 0, "dead": 1},
        seconds=30,
    )
    assert code == 0, err
    assert "worker stopped: 2 completed, 1 failed (1 dead-lettered" in err


def test_process_dashboard_on_postgres(pg_url: str, pg_schema: str) -> None:
    target = QueueTarget("postgres", pg_url, pg_schema)
    opened(target).close()
    proc = subprocess.Popen(
        [*SQQUEUE, "dashboard", pg_url, "--schema", pg_schema, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
    )
    try:
        line = read_line_within(proc, 30)
        assert line.startswith("sqqueue dashboard of postgresql://")
        url = line.split(" at ")[1].strip()
        with urllib.request.urlopen(url + "login", timeout=20) as response:
            assert response.status == 200
        stop(proc)
    finally:
        proc.kill()
