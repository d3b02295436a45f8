"""What the ``sqqueue`` command says when it refuses: one ``error: ...`` line that names
what happened and the command-line way out, with consistent exit codes, and no change to
any file when it refuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from helpers import message_statuses
from sqqueue import SQLiteQueue, cli, list_queues


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SQQUEUE_* settings or config file from the machine leak into a test."""
    for key in list(os.environ):
        if key.startswith("SQQUEUE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SQQUEUE_CONFIG", "none")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


def run(*args: object, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


def one_error_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def statuses(db: Path, queue: str) -> dict[int, str]:
    with SQLiteQueue(db, table_name=queue) as q:
        return {row["id"]: row["status"] for row in message_statuses(q)}


def make_dead(db: Path, queue: str, count: int) -> None:
    with SQLiteQueue(db, table_name=queue, default_max_attempts=1) as q:
        for n in range(count):
            q.enqueue(f"job {n}").unwrap()
            q.fail_message(q.dequeue().unwrap(), error="boom")  # type: ignore[arg-type]


# -- enqueue: binary input and bad JSON ---------------------------------------------------------


def test_binary_stdin_gets_the_command_line_way(db: Path) -> None:
    """Not UTF-8 on stdin: a usage error pointing at --json and {"$bytes": ...}, not at
    Python's bytes API; the earlier lines' count is given."""
    result = run("enqueue", db, "jobs", "-", input=b"fine\nab\xff\xfecd\n")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "line 2 is not UTF-8 text" in line
    assert '{"$bytes": "<base64>"}' in line and "--json" in line
    assert ".encode(" not in line and "surrogate" not in line and "enqueue_batch" not in line


def test_binary_payload_argument_gets_the_command_line_way(db: Path) -> None:
    """argv bytes that are not UTF-8 arrive as lone surrogates."""
    result = run("enqueue", db, "jobs", "ab\udcff")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "PAYLOAD is not UTF-8 text" in line and '{"$bytes"' in line
    assert not db.exists()


def test_bad_json_exits_2_from_the_argument_and_from_stdin(db: Path) -> None:
    argument = run("enqueue", db, "jobs", "{oops", "--json")
    stdin = run("enqueue", db, "jobs", "-", "--json", input="{oops\n")
    assert argument.exit_code == stdin.exit_code == 2
    assert "not valid JSON" in one_error_line(argument)
    assert "line 1 is not valid JSON" in one_error_line(stdin)


def test_payload_refused_on_stdin_names_its_line(db: Path) -> None:
    """A value the queue refuses (JSON's 1e999 is infinity) is named by its line of stdin,
    not by its index in an internal batch, and without the API's method name."""
    result = run("enqueue", db, "jobs", "-", "--json", input='{"n": 1}\n\n{"n": 1e999}\n')
    assert result.exit_code == 1
    line = one_error_line(result)
    assert line.startswith("error: line 3: payload contains inf")
    assert "enqueue_batch" not in line and "item " not in line
    assert "0 message(s) from earlier lines were enqueued" in line


# -- dlq redrive --to -----------------------------------------------------------------------------


def test_redrive_to_a_missing_queue_is_refused_with_the_queues_there(db: Path) -> None:
    """A typo in --to neither redrives nor creates a queue, as in the Python API."""
    make_dead(db, "emails", 1)
    result = run("dlq", "redrive", db, "emails", "--all", "--to", "emials")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "no queue 'emials'" in line and "queues there: emails" in line
    assert "--create" in line
    assert list_queues(db).unwrap() == ["emails"]
    assert statuses(db, "emails") == {1: "dead"}


def test_redrive_to_a_new_queue_with_create(db: Path) -> None:
    make_dead(db, "emails", 2)
    result = run("dlq", "redrive", db, "emails", "--all", "--to", "emails_retry", "--create")
    assert result.exit_code == 0, result.output
    assert result.stdout == "redrove 2 message(s) to queue 'emails_retry'\n"
    assert list_queues(db).unwrap() == ["emails", "emails_retry"]
    assert set(statuses(db, "emails_retry").values()) == {"pending"}
    assert run("dlq", "redrive", db, "emails", "--all", "--create").exit_code == 2


def fill(path: Path, queue: str, count: int) -> None:
    with SQLiteQueue(path, table_name=queue, default_max_attempts=1) as q:
        q.enqueue_batch([f"{queue} {n}" for n in range(count)]).unwrap()
        q.fail_message(q.dequeue().unwrap(), error="boom")  # type: ignore[arg-type]


# -- a file that is not a database --------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["check", "{f}"], ["salvage", "{f}", "{new}"], ["stats", "{f}"], ["ls", "{f}", "jobs"]],
    ids=["check", "salvage", "stats", "ls"],
)
def test_a_text_file_is_not_an_sqlite_database(tmp_path: Path, args: list[str]) -> None:
    """No advice to salvage what salvage cannot read, and no internal names."""
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database\n" * 10)
    before = text.read_bytes()
    new = tmp_path / "new.db"
    result = run(*(a.format(f=text, new=new) for a in args))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "is not an SQLite database" in line
    assert "salvage " not in line and "damaged" not in line
    assert "list_queues" not in line and "SQLITE_" not in line
    assert text.read_bytes() == before
    assert not new.exists()
