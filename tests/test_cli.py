"""The ``sqqueue`` command line: every command through click's CliRunner, and the ones
that run for a while (bulk stdin, worker, metrics server, --watch) as real processes."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pty
import resource
import select
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import (
    CLI_ENV,
    SQQUEUE,
    counts,
    drop_dac_override,
    isolate,
    make_dead,
    message_statuses,
    one_error_line,
    opened,
    read_line_within,
    run_cli,
    wait_until,
    worker_until,
)
from sqqueue import SQLiteQueue, cli
from sqqueue.cli import base as cli_base
from sqqueue.cli import metrics as cli_metrics


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SQQUEUE_* settings or config file from the machine leak into a test; config
    files stay on, for the tests of ``sqqueue config`` that write one in ``tmp_path``."""
    isolate(monkeypatch, tmp_path, config_files=True)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


def seed(db: Path, queue: str = "jobs", payloads: list[Any] | None = None, **kw: Any) -> list[int]:
    with opened(db, queue) as q:
        if not payloads:
            return []
        return [q.enqueue(p, **kw).unwrap() for p in payloads]


def all_commands() -> Iterator[list[str]]:
    group = cli.main
    assert isinstance(group, click.Group)
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield [name]
            for sub in command.commands:
                yield [name, sub]
        else:
            yield [name]


# -- help and usage -----------------------------------------------------------------------------


def test_every_command_has_help_with_an_example() -> None:
    """`--help` works for every command and subcommand, and each shows an example."""
    names = list(all_commands())
    assert len(names) >= 20
    for name in names:
        result = run_cli(*name, "--help")
        assert result.exit_code == 0, (name, result.output)
        assert "Example:" in result.stdout, name
        assert "sqqueue" in result.stdout.split("Example:")[1], name


def test_usage_errors_exit_2() -> None:
    """Click's usage errors (unknown command, missing argument) exit with 2."""
    assert run_cli("nosuchcommand").exit_code == 2
    assert run_cli("ls", "only-db.db").exit_code == 2
    assert run_cli("ls", "x.db", "jobs", "--limit", "0").exit_code == 2


def test_version() -> None:
    result = run_cli("--version")
    assert result.exit_code == 0
    assert "sqqueue" in result.stdout


# -- missing files, bad names, unknown queues ---------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["stats", "{db}"],
        ["stats", "{db}", "jobs"],
        ["ls", "{db}", "jobs"],
        ["peek", "{db}", "jobs"],
        ["dlq", "list", "{db}", "jobs"],
        ["dlq", "show", "{db}", "jobs", "1"],
        ["check", "{db}"],
        ["dequeue", "{db}", "jobs"],
        ["complete", "{db}", "jobs", "1"],
        ["fail", "{db}", "jobs", "1"],
        ["purge", "{db}", "jobs", "--yes"],
        ["dlq", "purge", "{db}", "jobs", "--yes"],
        ["dlq", "redrive", "{db}", "jobs", "--all"],
        ["vacuum", "{db}"],
        ["checkpoint", "{db}"],
        ["migrate", "{db}"],
        ["salvage", "{db}", "{db}.new"],
        ["metrics", "serve", "{db}"],
    ],
)
def test_missing_database_fails_without_creating_it(db: Path, args: list[str]) -> None:
    """Commands that read (or act on existing messages) never create the file."""
    result = run_cli(*(a.format(db=db) for a in args))
    assert result.exit_code == 1
    assert one_error_line(result) == f"error: no database at {db}"
    assert not db.exists()
    assert not Path(f"{db}.new").exists()


def test_bad_queue_name_is_a_one_line_usage_error(db: Path) -> None:
    seed(db)
    for args in (
        ["ls", db, "bad-name"],
        ["stats", db, "sqlite_master"],
        ["enqueue", db, "x_dlq", "hi"],
        ["config", "--queue", "1abc"],
    ):
        result = run_cli(*args)
        assert result.exit_code == 2, args
        assert "invalid queue name" in one_error_line(result)
    assert counts(db)["ready"] == 0


def test_unknown_queue_is_named_with_the_queues_there(db: Path) -> None:
    """A read on a queue that does not exist fails and does not create it."""
    seed(db, "jobs")
    seed(db, "emails")
    result = run_cli("peek", db, "nosuch")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "no queue 'nosuch'" in line
    assert "emails, jobs" in line
    assert SQLiteQueue.list_queues(db).unwrap() == ["emails", "jobs"]


def test_not_a_database_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    result = run_cli("stats", junk)
    assert result.exit_code == 1
    one_error_line(result)


def test_directory_is_not_a_database(tmp_path: Path) -> None:
    result = run_cli("stats", tmp_path)
    assert result.exit_code == 1
    assert "is a directory" in one_error_line(result)


# -- enqueue ------------------------------------------------------------------------------------


def test_enqueue_text_and_json_payloads_with_options(db: Path) -> None:
    """A plain payload is stored as text, --json parses it; options reach the message."""
    first = run_cli("enqueue", db, "jobs", "hello")
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == "1"
    second = run_cli(
        "enqueue", db, "jobs", '{"to": "ada", "n": 1}', "--json", "--priority", "7",
        "--max-attempts", "3",
    )  # fmt: skip
    assert second.stdout.strip() == "2"
    third = run_cli("enqueue", db, "jobs", "42", "--delay", "3600")
    assert third.stdout.strip() == "3"
    with opened(db) as q:
        entries = {e["id"]: e for e in q.list_messages("all").unwrap()}
    assert entries[1]["payload"] == "hello"
    assert entries[2]["payload"] == {"to": "ada", "n": 1}
    assert entries[2]["priority"] == 7
    assert entries[2]["max_attempts"] == 3
    assert entries[3]["payload"] == "42"  # text: no --json
    assert entries[3]["status"] == "delayed"


def test_enqueue_creates_the_database_and_queue(tmp_path: Path) -> None:
    target = tmp_path / "new.db"
    result = run_cli("enqueue", target, "fresh", "x")
    assert result.exit_code == 0
    assert SQLiteQueue.list_queues(target).unwrap() == ["fresh"]


def test_enqueue_invalid_json_argument_is_a_usage_error(db: Path) -> None:
    result = run_cli("enqueue", db, "jobs", "{not json", "--json")
    assert result.exit_code == 2
    assert "not valid JSON" in one_error_line(result)
    assert not db.exists()


def test_enqueue_error_from_the_library_exits_1(tmp_path: Path) -> None:
    """A file in a directory that does not exist: the constructor's ValueError, one line."""
    result = run_cli("enqueue", tmp_path / "nodir" / "x.db", "jobs", "hi")
    assert result.exit_code == 1
    one_error_line(result)


def test_enqueue_bytes_round_trip_through_json(db: Path) -> None:
    """{"$bytes": base64} in means bytes stored, and the same marker comes back out."""
    raw = bytes(range(256))
    marker = json.dumps({"$bytes": base64.b64encode(raw).decode()})
    assert run_cli("enqueue", db, "jobs", marker, "--json").exit_code == 0
    with opened(db) as q:
        assert q.peek().unwrap().payload == raw  # type: ignore[union-attr]
    shown = json.loads(run_cli("peek", db, "jobs", "--json").stdout)
    assert base64.b64decode(shown["payload"]["$bytes"]) == raw


def test_enqueue_bulk_from_stdin_in_chunks(db: Path) -> None:
    """'-' reads one message per line (blank lines skipped) across several transactions."""
    lines = [f"line {n}" for n in range(2500)]
    text = "\n".join(lines[:10]) + "\n\n   \n" + "\n".join(lines[10:]) + "\n"
    result = run_cli("enqueue", db, "jobs", "-", "--priority", "2", input=text)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "enqueued 2500 message(s) to queue 'jobs'"
    assert result.stderr == ""  # no progress bar: stderr is not a terminal
    with opened(db) as q:
        page = q.list_messages("pending", limit=10_000).unwrap()
    assert [e["payload"] for e in page] == lines
    assert {e["priority"] for e in page} == {2}


def test_enqueue_bulk_json_bad_line_reports_the_line(db: Path) -> None:
    """Chunks before the bad line are committed; the error names the line and says so.
    Bad JSON is a usage error (exit 2) on stdin as in the PAYLOAD argument."""
    good = [json.dumps({"n": n}) for n in range(1000)]
    text = "\n".join([*good, '{"n": 1000}', "{oops"]) + "\n"
    result = run_cli("enqueue", db, "jobs", "-", "--json", input=text)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "line 1002" in line
    assert "1000 message(s)" in line
    assert counts(db)["ready"] == 1000


def test_enqueue_bulk_shows_progress_on_a_terminal(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_base, "show_progress", lambda: True)
    result = run_cli("enqueue", db, "jobs", "-", input="a\nb\nc\n")
    assert result.exit_code == 0
    assert "enqueueing" in result.stderr
    assert counts(db)["ready"] == 3


def test_enqueue_group_ttl_and_dedup_key(db: Path) -> None:
    first = run_cli("enqueue", db, "jobs", "a", "--dedup-key", "k1", "--group", "g", "--ttl", "60")
    again = run_cli("enqueue", db, "jobs", "b", "--dedup-key", "k1")
    assert first.stdout == again.stdout == "1\n"  # the duplicate returns the original id
    shown = json.loads(run_cli("peek", db, "jobs", "--json").stdout)
    assert shown["group"] == "g"
    assert shown["expires_at"] is not None
    bulk = run_cli("enqueue", db, "jobs", "-", "--dedup-key", "k", input="x\n")
    assert bulk.exit_code == 2


# -- stats --------------------------------------------------------------------------------------


def test_stats_table_and_json(db: Path) -> None:
    seed(db, "jobs", ["a", "b", "c"])
    seed(db, "jobs", ["later"], delay=3600)
    seed(db, "emails", ["e"])
    with opened(db) as q:
        taken = q.dequeue().unwrap()
        assert taken is not None
        q.fail_message(q.dequeue().unwrap(), send_to_dlq=True, error="boom").unwrap()  # type: ignore[arg-type]
    table = run_cli("stats", db)
    assert table.exit_code == 0, table.output
    assert "jobs" in table.stdout and "emails" in table.stdout
    assert "totals since creation" in table.stdout
    data = json.loads(run_cli("stats", db, "--json").stdout)
    jobs = data["queues"]["jobs"]
    assert (jobs["ready"], jobs["delayed"], jobs["processing"], jobs["dead"]) == (1, 1, 1, 1)
    assert jobs["enqueued_total"] == 4
    assert jobs["expiring_soon"] == 0
    assert data["queues"]["emails"]["pending"] == 1
    assert data["db_bytes"] > 0
    assert data["at"].endswith("+00:00")
    one = json.loads(run_cli("stats", db, "emails", "--json").stdout)
    assert list(one["queues"]) == ["emails"]


def test_stats_of_a_file_without_queues(tmp_path: Path) -> None:
    import sqlite3

    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.close()
    result = run_cli("stats", empty)
    assert result.exit_code == 0
    assert "no sqqueue queues" in result.stdout
    assert json.loads(run_cli("stats", empty, "--json").stdout)["queues"] == {}


def test_stats_watch_refreshes_until_interrupted(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--watch prints a snapshot per interval (NDJSON with --json) and Ctrl-C exits 0."""
    seed(db, "jobs", ["a"])
    calls: list[float] = []

    def pause(seconds: float) -> None:
        calls.append(seconds)
        seed(db, "jobs", ["more"])
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_base, "pause", pause)
    result = run_cli("stats", db, "jobs", "--json", "--watch=0.5")
    assert result.exit_code == 0, result.output
    snapshots = [json.loads(line) for line in result.stdout.splitlines()]
    assert [s["queues"]["jobs"]["pending"] for s in snapshots] == [1, 2, 3]
    assert calls == [0.5, 0.5, 0.5]
    calls.clear()
    table = run_cli("stats", db, "--watch")
    assert table.exit_code == 0
    assert table.stdout.count("totals since creation") == 3
    assert calls == [2.0, 2.0, 2.0]


# -- ls and peek --------------------------------------------------------------------------------


def test_text_that_looks_like_markup_is_shown_as_it_is(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Brackets in a payload, an error, a path are text: never styling that hides them,
    nor markup that fails to parse (a traceback)."""
    monkeypatch.setenv("COLUMNS", "250")  # (one line per message, whatever the terminal)
    seed(db, "jobs", ["see [/etc/hosts] for details", "[bold red]hidden[/bold red] text"])
    shown = run_cli("ls", db, "jobs")
    assert shown.exit_code == 0, shown.output
    assert "see [/etc/hosts] for details" in shown.stdout
    assert "[bold red]hidden[/bold red] text" in shown.stdout
    assert run_cli("fail", db, "jobs", 1, "--dlq", "--error", "SMTP [/] refused").exit_code == 0
    dead = run_cli("dlq", "list", db, "jobs")
    assert dead.exit_code == 0, dead.output
    assert "SMTP [/] refused" in dead.stdout
    monkeypatch.setenv("SQQUEUE_DB_PATH", "/data/[/]jobs.db")
    config = run_cli("config")
    assert config.exit_code == 0, config.output
    assert "/data/[/]jobs.db" in config.stdout


#: every command that prints stored payloads and errors, text and JSON
READERS = [
    ["peek", "{db}", "jobs"],
    ["ls", "{db}", "jobs"],
    ["dlq", "list", "{db}", "jobs"],
    ["dlq", "show", "{db}", "jobs", "1"],
    ["dequeue", "{db}", "jobs"],
]


def stored_as_dead_then_live(db: Path, payload: Any, error: str) -> None:
    """Message 1 of queue jobs dead with ``error``, message 2 ready, both ``payload``."""
    with opened(db) as q:
        q.enqueue(payload).unwrap()
        q.fail_message(q.dequeue().unwrap(), send_to_dlq=True, error=error)  # type: ignore[arg-type]
        q.enqueue(payload).unwrap()


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("args", READERS, ids=lambda a: "-".join(w for w in a[:2] if "{" not in w))
def test_a_lone_surrogate_in_a_payload_is_printed_escaped(
    db: Path, args: list[str], as_json: bool
) -> None:
    """A payload a Python producer stored with a lone surrogate in it: printed as \\ud800
    (JSON's own escape in --json), never a traceback; dequeue prints what it leased."""
    stored_as_dead_then_live(db, {"a": ["\ud800"]}, "boom")
    result = run_cli(*(a.format(db=db) for a in args), *(["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    assert "\\ud800" in result.stdout
    if as_json:
        data = json.loads(result.stdout)
        if "messages" in data:
            data = data["messages"][0]
        assert data["payload"] == {"a": ["\ud800"]}
    if args[0] == "dequeue" and not as_json:
        assert result.stdout.startswith("2\t")


@pytest.mark.parametrize("args", READERS, ids=lambda a: "-".join(w for w in a[:2] if "{" not in w))
def test_control_characters_are_shown_escaped(db: Path, args: list[str]) -> None:
    """A payload or last error cannot retitle the terminal, clear it or colour it: control
    characters show escaped in text output, and --json keeps the exact text (so does
    dequeue's line when piped into a program)."""
    payload = "x\x1b]0;pwned\x07\x1b[31mRED\u009b\x7f"
    stored_as_dead_then_live(db, payload, "e\x1b[2J")
    given = [a.format(db=db) for a in args]
    result = run_cli(*given)
    assert result.exit_code == 0, result.output
    if args[0] == "dequeue":  # piped: the payload as it is, for the program reading it
        assert result.stdout == f"2\t{payload}\n"
        return
    for raw in ("\x1b", "\x07", "\u009b", "\x7f"):
        assert raw not in result.stdout
    shown = "x\\x1b]0;pwned\\x07\\x1b[31mRED\\x9b\\x7f"
    if args[0] in ("ls", "dlq") and args[1] != "show":
        shown = shown[:16]  # (a table cell: cut to the width the other columns leave)
    assert shown in result.stdout
    if args[0] == "dlq":
        assert "e\\x1b[2J" in result.stdout
    exact = json.loads(run_cli(*given, "--json").stdout) if args[0] != "dequeue" else None
    if exact is not None:
        entry = exact["messages"][0] if "messages" in exact else exact
        assert entry["payload"] == payload


def test_an_error_line_shows_control_characters_escaped(tmp_path: Path) -> None:
    result = run_cli("ls", tmp_path / "a\x1b[2Jb.db", "jobs")
    assert result.exit_code == 1
    assert "a\\x1b[2Jb.db" in one_error_line(result)
    assert "\x1b" not in result.stderr


def test_ls_pages_and_states(db: Path) -> None:
    seed(db, "jobs", [f"m{n}" for n in range(5)])
    seed(db, "jobs", ["later"], delay=3600)
    first = run_cli("ls", db, "jobs", "--limit", "2")
    assert first.exit_code == 0
    assert "m0" in first.stdout and "m1" in first.stdout and "m2" not in first.stdout
    assert "next page: --after 2" in first.stdout
    page = json.loads(run_cli("ls", db, "jobs", "--limit", "2", "--after", "2", "--json").stdout)
    assert [m["id"] for m in page["messages"]] == [3, 4]
    assert page["next_after"] == 4
    last = json.loads(run_cli("ls", db, "jobs", "--limit", "2", "--after", "4", "--json").stdout)
    assert [m["id"] for m in last["messages"]] == [5, 6] and last["next_after"] == 6
    end = json.loads(run_cli("ls", db, "jobs", "--limit", "2", "--after", "6", "--json").stdout)
    assert end["messages"] == [] and end["next_after"] is None
    delayed = json.loads(run_cli("ls", db, "jobs", "--state", "delayed", "--json").stdout)
    assert [m["payload"] for m in delayed["messages"]] == ["later"]
    assert delayed["messages"][0]["visible_at"].endswith("+00:00")
    none = run_cli("ls", db, "jobs", "--state", "dead")
    assert none.exit_code == 0 and "no dead messages" in none.stdout
    assert run_cli("ls", db, "jobs", "--state", "bogus").exit_code == 2


def test_peek_does_not_lease(db: Path) -> None:
    seed(db, "jobs", [{"k": "v"}])
    result = run_cli("peek", db, "jobs")
    assert result.exit_code == 0
    assert "id:" in result.stdout and '"k": "v"' in result.stdout
    assert counts(db)["processing"] == 0
    data = json.loads(run_cli("peek", db, "jobs", "--json").stdout)
    assert data["payload"] == {"k": "v"} and data["attempts"] == 0
    seed(db, "empty")
    assert "no message ready" in run_cli("peek", db, "empty").stdout
    assert run_cli("peek", db, "empty", "--json").stdout.strip() == "null"


# -- dequeue, complete, fail --------------------------------------------------------------------


def test_dequeue_leaves_the_message_leased_then_complete(db: Path) -> None:
    seed(db, "jobs", ["first", {"n": 2}])
    out = run_cli("dequeue", db, "jobs")
    assert out.exit_code == 0
    assert out.stdout == "1\tfirst\n"
    assert counts(db)["processing"] == 1
    data = json.loads(run_cli("dequeue", db, "jobs", "--json", "--visibility-timeout", "30").stdout)
    assert data["id"] == 2 and data["payload"] == {"n": 2} and data["attempts"] == 1
    assert data["lease_expires_at"].endswith("+00:00")
    done = run_cli("complete", db, "jobs", "1")
    assert done.exit_code == 0 and done.stdout == "completed message 1\n"
    again = run_cli("complete", db, "jobs", "1")
    assert again.exit_code == 1
    assert "not in queue 'jobs'" in one_error_line(again)
    assert counts(db) == {"ready": 0, "delayed": 0, "processing": 1, "dead": 0}


def test_dequeue_on_an_empty_queue_prints_nothing(db: Path) -> None:
    seed(db, "jobs")
    plain = run_cli("dequeue", db, "jobs")
    assert plain.exit_code == 0 and plain.stdout == ""
    assert run_cli("dequeue", db, "jobs", "--json").stdout.strip() == "null"
    waited = run_cli("dequeue", db, "jobs", "--wait", "0.2")
    assert waited.exit_code == 0 and waited.stdout == ""


def test_complete_a_pending_message_is_refused(db: Path) -> None:
    seed(db, "jobs", ["x"])
    result = run_cli("complete", db, "jobs", "1")
    assert result.exit_code == 1
    assert "pending" in one_error_line(result)
    assert counts(db)["ready"] == 1


def test_fail_retries_or_dead_letters(db: Path) -> None:
    seed(db, "jobs", ["a", "b"], max_attempts=3)
    run_cli("dequeue", db, "jobs")
    retried = run_cli("fail", db, "jobs", "1", "--error", "smtp timeout")
    assert retried.exit_code == 0
    assert "will be retried" in retried.stdout
    run_cli("dequeue", db, "jobs")  # id 2 (1 went to the back)
    dead = run_cli("fail", db, "jobs", "2", "--dlq", "--error", "bad address")
    assert "dead-letter queue" in dead.stdout
    with opened(db) as q:
        entries = {e["id"]: e for e in q.list_messages("all").unwrap()}
        letters = q.get_dead_letters().unwrap()
    assert entries[1]["last_error"] == "smtp timeout"
    assert [(d["id"], d["last_error"]) for d in letters] == [(2, "bad address")]
    unknown = run_cli("fail", db, "jobs", "99")
    assert unknown.exit_code == 1
    assert "99" in one_error_line(unknown)


# -- the dead-letter queue ----------------------------------------------------------------------


def test_dlq_list_and_show(db: Path) -> None:
    make_dead(db, 3)
    listed = run_cli("dlq", "list", db, "jobs")
    assert listed.exit_code == 0
    assert "error 2" in listed.stdout and "bad 1" in listed.stdout
    data = json.loads(run_cli("dlq", "list", db, "jobs", "--json", "--limit", "2").stdout)
    assert [m["id"] for m in data["messages"]] == [1, 2] and data["next_after"] == 2
    assert data["messages"][0]["dead_at"].endswith("+00:00")
    shown = run_cli("dlq", "show", db, "jobs", "2")
    assert shown.exit_code == 0
    assert "last error:  error 2" in shown.stdout and "bad 1" in shown.stdout
    assert json.loads(run_cli("dlq", "show", db, "jobs", "3", "--json").stdout)["id"] == 3
    missing = run_cli("dlq", "show", db, "jobs", "9")
    assert missing.exit_code == 1
    assert "not in the dead-letter queue" in one_error_line(missing)
    seed(db, "clean")
    assert "no dead letters" in run_cli("dlq", "list", db, "clean").stdout


def test_dlq_redrive_ids_all_and_errors(db: Path) -> None:
    make_dead(db, 4)
    some = run_cli("dlq", "redrive", db, "jobs", "1", "3")
    assert some.exit_code == 0, some.output
    assert some.stdout == "redrove 2 message(s) to queue 'jobs'\n"
    assert counts(db)["ready"] == 2 and counts(db)["dead"] == 2
    unknown = run_cli("dlq", "redrive", db, "jobs", "1")
    assert unknown.exit_code == 1
    one_error_line(unknown)
    assert run_cli("dlq", "redrive", db, "jobs").exit_code == 2
    assert run_cli("dlq", "redrive", db, "jobs", "2", "--all").exit_code == 2
    everything = run_cli("dlq", "redrive", db, "jobs", "--all")
    assert everything.exit_code == 0
    assert counts(db) == {"ready": 4, "delayed": 0, "processing": 0, "dead": 0}
    with opened(db) as q:
        assert {e["id"] for e in q.list_messages("pending").unwrap()} == {1, 2, 3, 4}


def test_dlq_redrive_to_another_queue_with_progress(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_base, "show_progress", lambda: True)
    make_dead(db, 3)
    result = run_cli("dlq", "redrive", db, "jobs", "--all", "--to", "retry_jobs", "--create")
    assert result.exit_code == 0, result.output
    assert "redriving" in result.stderr
    assert counts(db, "retry_jobs")["ready"] == 3
    assert counts(db)["dead"] == 0


def test_dlq_purge_needs_confirmation(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dead(db, 2)
    refused = run_cli("dlq", "purge", db, "jobs")
    assert refused.exit_code == 2
    assert "--yes" in one_error_line(refused)
    monkeypatch.setattr(cli_base, "stdin_interactive", lambda: True)
    declined = run_cli("dlq", "purge", db, "jobs", input="n\n")
    assert declined.exit_code == 1
    assert "aborted" in declined.stderr
    assert counts(db)["dead"] == 2
    recent = run_cli("dlq", "purge", db, "jobs", "--older-than", "3600", "--yes")
    assert recent.stdout == "deleted 0 dead letter(s) from queue 'jobs'\n"
    accepted = run_cli("dlq", "purge", db, "jobs", input="y\n")
    assert accepted.exit_code == 0
    assert "deleted 2 dead letter(s)" in accepted.stdout
    assert counts(db)["dead"] == 0


def test_purge_states_and_confirmation(db: Path) -> None:
    seed(db, "jobs", ["a", "b"])
    seed(db, "jobs", ["later"], delay=3600)
    make_dead(db, 1)
    refused = run_cli("purge", db, "jobs")
    assert refused.exit_code == 2
    assert "not a terminal" in one_error_line(refused)
    assert counts(db)["ready"] == 2
    delayed = run_cli("purge", db, "jobs", "--state", "delayed", "--yes")
    assert delayed.stdout == "deleted 1 message(s) from queue 'jobs'\n"
    default = run_cli("purge", db, "jobs", "--yes")
    assert default.stdout == "deleted 2 message(s) from queue 'jobs'\n"
    assert counts(db)["dead"] == 1  # the default keeps dead letters
    everything = run_cli("purge", db, "jobs", "--state", "all", "-y")
    assert everything.stdout == "deleted 1 message(s) from queue 'jobs'\n"
    assert counts(db) == {"ready": 0, "delayed": 0, "processing": 0, "dead": 0}


# -- the file -----------------------------------------------------------------------------------


def test_vacuum_and_checkpoint(db: Path) -> None:
    seed(db, "jobs", ["x" * 500] * 200)
    with opened(db) as q:
        q.purge().unwrap()
    vacuumed = run_cli("vacuum", db)
    assert vacuumed.exit_code == 0
    assert vacuumed.stdout.startswith(f"vacuumed {db}: ")
    checkpointed = run_cli("checkpoint", db)
    assert checkpointed.exit_code == 0
    assert checkpointed.stdout.rstrip().endswith("-> 0 B")


def test_vacuum_needs_a_queue(tmp_path: Path) -> None:
    import sqlite3

    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).execute("CREATE TABLE t (x)").connection.close()
    result = run_cli("vacuum", plain)
    assert result.exit_code == 1
    assert "no sqqueue queues" in one_error_line(result)


def damage(path: Path) -> None:
    with path.open("r+b") as handle:
        size = path.stat().st_size
        for page in range(2, size // 4096):
            handle.seek(page * 4096 + 8)
            handle.write(b"\x07" * 64)


def test_check_healthy_and_damaged(db: Path, tmp_path: Path) -> None:
    seed(db, "jobs", ["x" * 200] * 300)
    healthy = run_cli("check", db)
    assert healthy.exit_code == 0
    assert healthy.stdout.startswith("ok:")
    damage(db)
    broken = run_cli("check", db)
    assert broken.exit_code == 1
    assert "damaged" in one_error_line(broken)
    assert broken.stdout.strip()  # the problems themselves
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"x" * 5000)
    assert run_cli("check", junk).exit_code == 1


def test_check_of_damage_sqlite_cannot_step_over_names_the_table(db: Path) -> None:
    """When SQLite's check of the whole file stops at the damage, the problems are those of
    each table, in SQLite's words, and the next step is salvage, not check again."""
    seed(db, "jobs", ["x" * 200] * 300)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs'").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with db.open("r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\x00")  # (no b-tree page type)
    result = run_cli("check", db)
    assert result.exit_code == 1
    assert result.stdout == (
        "table 'jobs': database disk image is malformed (SQLite cannot check it to the end)\n"
    )
    assert f"`sqqueue salvage {db} NEW.db`" in one_error_line(result)
    assert "sqqueue check" not in result.output


def test_salvage_copies_and_refuses_an_existing_target(db: Path, tmp_path: Path) -> None:
    seed(db, "jobs", ["a", "b"])
    make_dead(db, 1, "emails")
    target = tmp_path / "rescued.db"
    result = run_cli("salvage", db, target)
    assert result.exit_code == 0, result.output
    assert "jobs: 2 message(s), 0 dead letter(s)" in result.stdout
    assert "emails: 0 message(s), 1 dead letter(s)" in result.stdout
    assert result.stdout.endswith(f"salvaged into {target}; every row of {db} was read\n")
    assert counts(target)["ready"] == 2
    again = run_cli("salvage", db, target)
    assert again.exit_code == 1
    assert "already exists" in one_error_line(again)


def interior_page_over_another(db: Path, victim: int, donor: int) -> int:
    """Fill ``db`` with 8000 messages, then overwrite the ``victim``-th interior page
    below the root of the messages' b-tree with the ``donor``-th (a sound page, so no read
    fails: the rows under the victim are out of SQLite's reach). Returns how many rows
    the victim held, as SQLite's dbstat table counts them (skips without it)."""
    seed(db, "jobs", [f"{n:05d}" + "x" * 200 for n in range(8000)])
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        try:
            interior = conn.execute(
                "SELECT pageno, path FROM dbstat WHERE name = 'jobs' AND pagetype = 'internal' "
                "AND path != '/' ORDER BY path"
            ).fetchall()
        except sqlite3.OperationalError:
            pytest.skip("this SQLite has no dbstat table to find the b-tree's pages")
        assert len(interior) >= 2, interior  # (a root over two interior pages at least)
        (hidden,) = conn.execute(
            "SELECT sum(ncell) FROM dbstat WHERE name = 'jobs' AND pagetype = 'leaf' "
            "AND path LIKE ?",
            (interior[victim][1] + "%",),
        ).fetchone()
    conn.close()
    with db.open("r+b") as handle:
        handle.seek((interior[donor][0] - 1) * page_size)
        copy = handle.read(page_size)
        handle.seek((interior[victim][0] - 1) * page_size)
        handle.write(copy)
    assert 0 < hidden < 8000
    return int(hidden)


def test_salvage_says_what_a_damaged_interior_page_hid(db: Path, tmp_path: Path) -> None:
    """Rows under a damaged interior page are missed without any read failing: salvage
    copies the others and says the copy is NOT complete, counting the messages missing
    by the queue's counters (exactly the rows under the page); it never says every row
    was read."""
    hidden = interior_page_over_another(db, victim=0, donor=1)
    target = tmp_path / "rescued.db"
    result = run_cli("salvage", db, target)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"jobs: {8000 - hidden} message(s), 0 dead letter(s)\n"
        f"salvaged into {target}, NOT complete: at least {hidden} message(s) and dead "
        "letter(s) missing (see the warnings)\n"
    )
    assert (
        f"warning: jobs: {hidden} of the messages and dead letters its counters count are "
        "not in the copy\n"
    ) in result.stderr
    assert f"warning: {db} is damaged (`sqqueue check {db}` lists" in result.stderr
    assert counts(target)["ready"] == 8000 - hidden


def test_process_salvage_of_a_scan_that_goes_back_ends(db: Path, tmp_path: Path) -> None:
    """The last interior page overwritten with the first: a scan in id order comes back
    to ids it read, for ever. Salvage sees the ids go back, reads the table by id
    instead, and ends, counting what it could not reach. (Its memory is bounded, so that
    a salvage that does not end fails rather than fill the machine's.)"""
    hidden = interior_page_over_another(db, victim=1, donor=0)
    target = tmp_path / "rescued.db"

    def bounded() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run(
        [*SQQUEUE, "salvage", str(db), str(target)],
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=120,
        check=False,
        preexec_fn=bounded,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.endswith(
        f"NOT complete: at least {hidden} message(s) and dead letter(s) missing (see the "
        "warnings)\n"
    ), done.stdout
    assert "jobs: the messages table is damaged; read it by id, up to id 8000" in done.stderr
    assert counts(target)["ready"] == 8000 - hidden


def test_migrate_legacy_queues(legacy_db: Path) -> None:
    result = run_cli("migrate", legacy_db)
    assert result.exit_code == 0, result.output
    names = result.stdout.split()
    assert names
    assert set(names) <= set(SQLiteQueue.list_queues(legacy_db).unwrap())
    again = run_cli("migrate", legacy_db)
    assert "nothing to migrate" in again.stdout


# -- config -------------------------------------------------------------------------------------


def test_config_shows_value_and_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sqqueue.toml").write_text(
        "default_visibility_timeout = 60\n\n[queues.emails]\ndefault_max_attempts = 10\n"
    )
    monkeypatch.setenv("SQQUEUE_LOCK_TIMEOUT", "5")
    data = json.loads(run_cli("config", "--queue", "emails", "--json").stdout)
    settings = data["settings"]
    assert data["config_file"].endswith("sqqueue.toml")
    assert settings["lock_timeout"] == {"value": 5.0, "source": "env SQQUEUE_LOCK_TIMEOUT"}
    assert settings["default_visibility_timeout"]["value"] == 60.0
    assert settings["default_visibility_timeout"]["source"].startswith("file ")
    assert settings["default_max_attempts"]["value"] == 10
    assert settings["table_name"] == {"value": "emails", "source": "argument"}
    assert settings["default_priority"] == {"value": 0, "source": "default"}
    assert settings["retry"]["value"] == "immediate"
    other = json.loads(run_cli("config", "--json").stdout)["settings"]
    assert other["default_max_attempts"] == {"value": 5, "source": "default"}
    table = run_cli("config")
    assert table.exit_code == 0
    assert "config file:" in table.stdout and "env SQQUEUE_LOCK_TIMEOUT" in table.stdout


def test_config_bad_value_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQQUEUE_LOCK_TIMEOUT", "soon")
    result = run_cli("config")
    assert result.exit_code == 1
    assert "lock_timeout" in one_error_line(result)


@pytest.mark.parametrize("value", ["-5", "0", "86401"])
def test_config_refuses_what_every_command_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SQQUEUE_LOCK_TIMEOUT", value)
    result = run_cli("config")
    assert result.exit_code == 1
    assert "lock_timeout must be > 0" in one_error_line(result)
    assert run_cli("enqueue", tmp_path / "q.db", "jobs", "x").exit_code == 1


def test_config_warns_of_accept_unsigned_without_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """accept_unsigned from the environment without a signing key makes every queue opened
    for use refuse to open: config says so (and stays quiet once a key is set)."""
    monkeypatch.delenv("SQQUEUE_SIGNING_KEY", raising=False)
    monkeypatch.delenv("SQQUEUE_SIGNING_KEY_FILE", raising=False)
    monkeypatch.setenv("SQQUEUE_ACCEPT_UNSIGNED", "1")
    table = run_cli("config")
    assert table.exit_code == 0, table.output
    assert table.stderr.startswith("warning: accept_unsigned is on and no signing key"), (
        table.stderr
    )
    data = json.loads(run_cli("config", "--json").stdout)
    assert len(data["warnings"]) == 1 and "SQQUEUE_SIGNING_KEY" in data["warnings"][0]
    with pytest.raises(ValueError, match="needs a signing key"):
        SQLiteQueue(tmp_path / "q.db", "jobs")  # what the warning is about
    monkeypatch.setenv("SQQUEUE_SIGNING_KEY", "k" * 32)
    assert run_cli("config").stderr == ""
    assert json.loads(run_cli("config", "--json").stdout)["warnings"] == []


def test_config_never_shows_a_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQQUEUE_DB_PATH", "postgresql://app:s3cret@db.internal/app")
    for args in (("config",), ("config", "--json")):
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
        assert "s3cret" not in result.output
        assert "app:***@db.internal" in result.output


# -- worker and metrics: argument errors (the running parts are process tests below) -------------


def test_worker_handler_errors(db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad MODULE:FUNC targets fail with one line and never open the database."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the command adds the working dir
    for name in ("handlers", "failing", "broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "handlers.py").write_text("VALUE = 3\ndef handle(message):\n    return None\n")
    (tmp_path / "failing.py").write_text("raise RuntimeError('import-time failure')\n")
    (tmp_path / "broken.py").write_text("def handle(:\n")
    cases = {
        "handlers": 2,  # no colon
        "no_such_module:handle": 1,
        "handlers:missing": 1,
        "handlers:VALUE": 1,  # not callable
        "failing:handle": 1,  # the module's own code raises
        "broken:handle": 1,  # a SyntaxError
    }
    for target, code in cases.items():
        result = run_cli("worker", target, db, "jobs")
        assert result.exit_code == code, (target, result.output)
        line = one_error_line(result)
        if target.startswith(("failing", "broken")):
            assert "RuntimeError: import-time failure" in line or "SyntaxError" in line, line
    assert not db.exists()
    for concurrency in ("0", "10001", "99999999999999999999"):
        refused = run_cli("worker", "handlers:handle", db, "jobs", "--concurrency", concurrency)
        assert refused.exit_code == 2, (concurrency, refused.output)


def test_worker_tasks_target_errors(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MODULE:TASKS (a sqqueue.Tasks object) takes no TARGET and QUEUE; MODULE:FUNC needs both."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("taskapp", "handlers2"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    (tmp_path / "taskapp.py").write_text(f"from sqqueue import Tasks\ntasks = Tasks({str(db)!r})\n")
    (tmp_path / "handlers2.py").write_text("def handle(message):\n    return None\n")
    result = run_cli("worker", "taskapp:tasks", db, "jobs")
    assert result.exit_code == 2
    assert "give no TARGET, QUEUE or --schema" in one_error_line(result)
    result = run_cli("worker", "handlers2:handle")
    assert result.exit_code == 2
    assert "give the TARGET and QUEUE" in one_error_line(result)
    assert not db.exists()


def test_metrics_serve_unknown_queue(db: Path) -> None:
    seed(db, "jobs")
    result = run_cli("metrics", "serve", db, "--queue", "nope")
    assert result.exit_code == 1
    assert "no queue 'nope'" in one_error_line(result)


def test_metrics_serve_refuses_a_file_that_is_not_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused at start, as the dashboard refuses it, not served as sqqueue_up 0."""
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, this is not a database\n")

    def served(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("started serving")

    monkeypatch.setattr(cli_metrics, "start_metrics", served)
    result = run_cli("metrics", "serve", notes, "--port", "0")
    assert result.exit_code == 1
    assert f"'{notes}' is not an SQLite database" in one_error_line(result)


@pytest.mark.slow
def test_demo_accounts_for_every_job(tmp_path: Path) -> None:
    result = run_cli("demo", "--jobs", "20", "--db", tmp_path / "demo.db")
    assert result.exit_code == 0, result.output
    assert "every job accounted for" in result.stdout


# -- real processes -----------------------------------------------------------------------------


def sqqueue(*args: object, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SQQUEUE, *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=30,
        **kw,
    )


def test_process_without_click_says_what_to_install() -> None:
    code = "import sys; sys.modules['click'] = None; from sqqueue.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "the sqqueue command needs: pip install 'sqqueue[cli]'"


def test_process_bulk_enqueue_from_a_pipe_then_stats_json(db: Path) -> None:
    """The installed entry point reads a pipe quietly and stats --json parses."""
    script = Path(sys.executable).with_name("sqqueue")
    command = [str(script)] if script.exists() else SQQUEUE
    lines = "".join(json.dumps({"n": n}) + "\n" for n in range(3000))
    done = subprocess.run(
        [*command, "enqueue", str(db), "jobs", "-", "--json"],
        input=lines,
        check=False,
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "enqueued 3000 message(s) to queue 'jobs'\n"
    assert done.stderr == ""
    stats = sqqueue("stats", db, "--json")
    assert stats.returncode == 0
    assert json.loads(stats.stdout)["queues"]["jobs"]["pending"] == 3000
    missing = sqqueue("stats", db.with_name("missing.db"))
    assert missing.returncode == 1
    assert missing.stderr == f"error: no database at {db.with_name('missing.db')}\n"


def test_process_says_a_failure_once(db: Path) -> None:
    """A failed call is one ``error:`` line, not also the library's warning about it
    (which Python prints when the program set no logging up)."""
    seed(db, "jobs", ["hello"])
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE jobs SET payload = 'tampered'")
    conn.close()
    done = sqqueue("peek", db, "jobs")
    assert done.returncode == 1
    assert done.stderr.count("checksum mismatch") == 1, done.stderr
    assert done.stderr.startswith("error: peek failed: message 1"), done.stderr


def test_process_stats_watch_stops_on_ctrl_c(db: Path) -> None:
    seed(db, "jobs", ["a"])
    proc = subprocess.Popen(
        [*SQQUEUE, "stats", str(db), "--json", "--watch", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until the first snapshot
        assert json.loads(first)["queues"]["jobs"]["pending"] == 1
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_process_bulk_enqueue_commits_slow_input_and_says_what_ctrl_c_left(db: Path) -> None:
    """Lines from a slow pipe are committed within about a second, not held for a full
    batch; Ctrl-C exits 130 saying how many messages were committed, and that count is
    what the queue holds."""
    proc = subprocess.Popen(
        [*SQQUEUE, "enqueue", str(db), "jobs", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write("".join(f"line {n}\n" for n in range(1500)))
        proc.stdin.flush()
        wait_until(lambda: db.exists() and counts(db)["ready"] == 1500, what="1500 committed")
        proc.stdin.write("one more\nand another\n")
        proc.stdin.flush()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    said = counts(db)["ready"]
    assert said in (1500, 1502)  # (the last two lines may have had their second)
    assert err == (
        f"error: interrupted: {said} message(s) enqueued to queue 'jobs' (input lines 1 to "
        f"{said}); the lines after those were not enqueued\n"
    )


def test_ctrl_c_during_a_commit_is_raised_after_it() -> None:
    """What the commit did is counted before the interrupt stops the command."""
    done = []

    def commit() -> None:
        with cli_base.interrupts_after():
            signal.raise_signal(signal.SIGINT)
            done.append("committed")

    with pytest.raises(KeyboardInterrupt):
        commit()
    assert done == ["committed"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_is_one_error_line_and_exit_130(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(db, "jobs", ["a"])

    def interrupted(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_base, "open_queue", interrupted)
    result = run_cli("dequeue", db, "jobs", "--wait", "30")
    assert result.exit_code == 130
    assert one_error_line(result) == "error: interrupted"


def read_available(fd: int, seconds: float) -> bytes:
    """What can be read from ``fd`` within ``seconds`` (b"" once the other side closed)."""
    got = b""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(OSError):  # (EIO: the other side of a terminal closed)
        while select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            got += chunk
    return got


@pytest.mark.parametrize("command", [["purge"], ["dlq", "purge"]])
def test_process_ctrl_c_at_the_question_is_an_interrupt(db: Path, command: list[str]) -> None:
    """Ctrl-C at the confirmation question (asked on a terminal) stops the command like
    any other interrupt, exit 130 and one short line, not as an answer; nothing is
    deleted."""
    seed(db, "jobs", ["a", "b"])
    make_dead(db, 1)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*SQQUEUE, *command, str(db), "jobs"],
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=follower,
        env=CLI_ENV,
    )
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 15
        while b"[y/N]: " not in seen and time.monotonic() < deadline:
            seen += read_available(leader, 0.2)
        assert b"[y/N]: " in seen, seen
        for _ in range(10):
            proc.send_signal(signal.SIGINT)
            seen += read_available(leader, 1)
            if proc.poll() is not None or not seen.endswith(b"[y/N]: "):
                break
            # (Still at the question: a signal that came just before the read of the
            # answer began is only handled once the read ends. Another one ends it.)
        proc.wait(15)
        seen += read_available(leader, 1)
    finally:
        proc.kill()
        os.close(leader)
    said = seen.decode().split("[y/N]: ", 1)[1]
    assert proc.returncode == 130, said
    assert said.split() == ["error:", "interrupted;", "nothing", "was", "deleted"], said
    assert counts(db) == {"ready": 2, "delayed": 0, "processing": 0, "dead": 1}


@pytest.mark.parametrize(
    "args",
    [
        ["enqueue", "{db}", "jobs", "more"],
        ["dequeue", "{db}", "jobs"],
        ["purge", "{db}", "jobs", "--yes"],
        ["vacuum", "{db}"],
    ],
)
def test_process_a_write_refused_by_the_file_mode_leaves_nothing_behind(
    db: Path, args: list[str]
) -> None:
    """A command that would write a database file the user may not write fails, saying
    so, and leaves the directory as it was: no -wal nor -shm file beside the database
    (SQLite makes them when it opens the file, and they would outlive the command)."""
    seed(db, "jobs", ["a"])
    db.chmod(0o400)
    probe = subprocess.run(
        [sys.executable, "-c", f"open({str(db)!r}, 'r+b')"],
        capture_output=True,
        check=False,
        preexec_fn=drop_dac_override,
    )
    if probe.returncode == 0:
        pytest.skip("cannot run a process that file modes apply to (root keeps its rights)")
    before = sorted(p.name for p in db.parent.iterdir())
    assert before == ["jobs.db"]
    content = db.read_bytes()
    done = subprocess.run(
        [*SQQUEUE, *(a.format(db=db) for a in args)],
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=30,
        check=False,
        preexec_fn=drop_dac_override,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "read-only" in done.stderr and "may not write" in done.stderr, done.stderr
    assert sorted(p.name for p in db.parent.iterdir()) == before
    assert db.read_bytes() == content


def test_process_worker_runs_handler_and_stops_on_sigterm(db: Path, tmp_path: Path) -> None:
    """`sqqueue worker MODULE:FUNC` processes messages, dead-letters failures, and exits 0
    on SIGTERM with nothing left leased."""
    (tmp_path / "tasks.py").write_text(
        "import pathlib\n"
        "def handle(message):\n"
        "    if message.payload == 'bad':\n"
        "        raise ValueError('bad payload')\n"
        "    with open('handled.txt', 'a') as out:\n"
        "        out.write(message.payload + '\\n')\n"
    )
    seed(db, "jobs", ["one", "two", "three", "four"])
    seed(db, "jobs", ["bad"], max_attempts=1)
    code, err = worker_until(
        ["tasks:handle", db, "jobs", "--concurrency", "2"],
        tmp_path,
        lambda: counts(db) == {"ready": 0, "delayed": 0, "processing": 0, "dead": 1},
    )
    assert code == 0, err
    handled = (tmp_path / "handled.txt").read_text().split()
    assert sorted(handled) == ["four", "one", "three", "two"]
    assert "worker stopped: 4 completed, 1 failed (1 dead-lettered" in err
    with opened(db) as q:
        assert q.get_dead_letters().unwrap()[0]["last_error"] == "ValueError: bad payload"


def test_process_worker_runs_an_object_with_an_async_call(db: Path, tmp_path: Path) -> None:
    """A handler object whose ``__call__`` is ``async def`` runs on an AsyncWorker, as an
    ``async def`` function does: its messages are handled, not refused nor skipped."""
    (tmp_path / "async_obj.py").write_text(
        "class Handler:\n"
        "    async def __call__(self, message):\n"
        "        with open('handled.txt', 'a') as out:\n"
        "            out.write(message.payload + '\\n')\n"
        "handler = Handler()\n"
    )
    seed(db, "jobs", ["one", "two"])
    code, err = worker_until(
        ["async_obj:handler", db, "jobs"],
        tmp_path,
        lambda: counts(db)["ready"] + counts(db)["processing"] == 0,
    )
    assert code == 0, err
    assert sorted((tmp_path / "handled.txt").read_text().split()) == ["one", "two"]


def scrape_served(target: str) -> tuple[str, str, int, str]:
    """Start ``sqqueue metrics serve TARGET --port 0``, scrape it once, stop it with
    SIGTERM: (its URL, the scrape, its exit status, its stderr)."""
    proc = subprocess.Popen(
        [*SQQUEUE, "metrics", "serve", target, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
    )
    try:
        url = read_line_within(proc, 15).split()[1]
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    return url, text, proc.returncode, err


def test_process_metrics_serve_starts_while_its_database_is_unreachable() -> None:
    """An exporter may start before its database: it serves sqqueue_up 0 until it can
    read the queues (only a file that is no database at all is refused at start)."""
    _, text, returncode, err = scrape_served("postgresql://monitor@127.0.0.1:9/app")
    assert returncode == 0, err
    up = next(f for f in text_string_to_metric_families(text) if f.name == "sqqueue_up")
    assert [sample.value for sample in up.samples] == [0.0]


def test_process_metrics_serve_answers_on_loopback(db: Path) -> None:
    seed(db, "jobs", ["a", "b"])
    seed(db, "emails", ["c"])
    url, text, returncode, err = scrape_served(str(db))
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    assert returncode == 0, err
    families = {f.name: f for f in text_string_to_metric_families(text)}
    pending = {
        s.labels["queue"]: s.value
        for s in families["sqqueue_messages"].samples
        if s.labels["state"] == "ready"
    }
    assert pending == {"jobs": 2.0, "emails": 1.0}
    assert "sqqueue_enqueued" in families
    assert "sqqueue_oldest_ready_age_seconds" in families
    behind = {
        s.labels["queue"]: s.value for s in families["sqqueue_wal_frames_not_checkpointed"].samples
    }
    assert behind == {"jobs": 0.0, "emails": 0.0}


# -- copy and migrate --sql ------------------------------------------------------------------


def test_copy_between_files_keeps_ids_and_counts(tmp_path: Path) -> None:
    source, target = tmp_path / "src.db", tmp_path / "dst.db"
    with SQLiteQueue(source, table_name="emails", default_max_attempts=1) as queue:
        ids = queue.enqueue_batch(["a", "b", "c"]).unwrap()
        queue.fail_message(queue.dequeue().unwrap(), error="boom")  # type: ignore[arg-type]
    result = run_cli("copy", f"sqlite:///{source}", f"sqlite:///{target}")
    assert result.exit_code == 0, result.output
    assert "emails: 2 message(s), 1 dead letter(s)" in result.output
    with SQLiteQueue(target, table_name="emails") as copied:
        statuses = {s["id"]: s["status"] for s in message_statuses(copied)}
    assert statuses == {ids[0]: "dead", ids[1]: "ready", ids[2]: "ready"}
    again = run_cli("copy", f"sqlite:///{source}", f"sqlite:///{target}")
    assert again.exit_code == 0, again.output
    assert "emails: 2 message(s), 1 dead letter(s) (already copied: nothing to do)" in again.output
    with SQLiteQueue(target, table_name="emails") as copied:
        assert {s["id"]: s["status"] for s in message_statuses(copied)} == statuses


def test_copy_takes_file_paths_like_every_command(tmp_path: Path) -> None:
    source, target = tmp_path / "a.db", tmp_path / "b.db"
    with SQLiteQueue(source, table_name="emails") as queue:
        queue.enqueue_batch(["a", "b"]).unwrap()
    result = run_cli("copy", str(source), str(target))
    assert result.exit_code == 0, result.output
    assert "emails: 2 message(s), 0 dead letter(s)" in result.output
    with SQLiteQueue(target, table_name="emails") as copied:
        assert [m.payload for m in copied.dequeue_batch(10).unwrap()] == ["a", "b"]


def test_copy_refuses_what_is_no_database(tmp_path: Path) -> None:
    result = run_cli("copy", "mysql://db/app", str(tmp_path / "b.db"))
    assert result.exit_code == 2
    assert "unsupported URL 'mysql://db/app'" in result.output


@pytest.mark.parametrize(
    ("url", "marker"),
    [("postgresql://db.internal/app", "DOUBLE PRECISION"), ("jobs.db", "REAL NOT NULL")],
)
def test_migrate_sql_prints_ddl_without_connecting(url: str, marker: str) -> None:
    result = run_cli("migrate", "--sql", url, "--queue", "emails")
    assert result.exit_code == 0, result.output
    assert 'CREATE TABLE "emails"' in result.output
    assert marker in result.output
    assert run_cli("migrate", "--sql", url).exit_code == 2  # no --queue


@pytest.mark.parametrize("where", ["missing-dir/x.db", "notes.txt", "."])
def test_demo_on_a_file_that_cannot_hold_a_queue_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    result = run_cli("demo", "--jobs", "5", "--db", where)
    assert result.exit_code == 1
    assert "cannot run the demo" in one_error_line(result)


@pytest.mark.parametrize("value", ["nan", "inf", "NaN"])
def test_seconds_options_refuse_what_is_not_a_finite_number(db: Path, value: str) -> None:
    seed(db, payloads=["x"])
    for args in (
        ("stats", db, "--watch", value),
        ("enqueue", db, "jobs", "y", "--delay", value),
        ("dequeue", db, "jobs", "--wait", value),
    ):
        result = run_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "not a finite number" in result.output or "Invalid value" in result.output
        assert "Traceback" not in result.output


def test_dashboard_schema_on_an_sqlite_file_is_a_usage_error(db: Path) -> None:
    seed(db, payloads=["x"])
    result = run_cli("dashboard", db, "--schema", "jobs")
    assert result.exit_code == 2
    assert "--schema applies to a postgresql:// URL only" in one_error_line(result)
