"""What the ``sqqueue`` command says when it refuses: one ``error: ...`` line that names
what happened and the command-line way out, with consistent exit codes, and no change to
any file when it refuses."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from helpers import isolate, one_error_line, opened, run_cli, statuses
from sqqueue import SQLiteQueue, list_queues, tools
from sqqueue.backends.common import SQLBackend


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SQQUEUE_* settings or config file from the machine leak into a test."""
    isolate(monkeypatch, tmp_path)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


def statuses_in(db: Path, queue: str) -> dict[int, str]:
    """``helpers.statuses`` of the queue ``queue`` in the SQLite file ``db``."""
    with opened(db, queue) as q:
        return statuses(q)


def dead_after_one_attempt(db: Path, queue: str, count: int) -> None:
    """Enqueue ``count`` messages ("job 0", ...) with one attempt each and fail each once:
    dead letters the way a failing handler makes them (one attempt counted, error "boom"),
    where ``helpers.make_dead`` sends fresh messages straight to the dead letters."""
    with SQLiteQueue(db, table_name=queue, default_max_attempts=1) as q:
        for n in range(count):
            q.enqueue(f"job {n}").unwrap()
            q.fail_message(q.dequeue().unwrap(), error="boom")  # type: ignore[arg-type]


# -- enqueue: binary input and bad JSON ---------------------------------------------------------


def test_binary_stdin_gets_the_command_line_way(db: Path) -> None:
    """Not UTF-8 on stdin: a usage error pointing at --json and {"$bytes": ...}, not at
    Python's bytes API; the earlier lines' count is given."""
    result = run_cli("enqueue", db, "jobs", "-", input=b"fine\nab\xff\xfecd\n")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "line 2 is not UTF-8 text" in line
    assert '{"$bytes": "<base64>"}' in line and "--json" in line
    assert ".encode(" not in line and "surrogate" not in line and "enqueue_batch" not in line


def test_binary_payload_argument_gets_the_command_line_way(db: Path) -> None:
    """argv bytes that are not UTF-8 arrive as lone surrogates."""
    result = run_cli("enqueue", db, "jobs", "ab\udcff")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "PAYLOAD is not UTF-8 text" in line and '{"$bytes"' in line
    assert not db.exists()


def test_bad_json_exits_2_from_the_argument_and_from_stdin(db: Path) -> None:
    argument = run_cli("enqueue", db, "jobs", "{oops", "--json")
    stdin = run_cli("enqueue", db, "jobs", "-", "--json", input="{oops\n")
    assert argument.exit_code == stdin.exit_code == 2
    assert "not valid JSON" in one_error_line(argument)
    assert "line 1 is not valid JSON" in one_error_line(stdin)


@pytest.mark.parametrize("priority", ["2147483648", "-2147483649", "99999999999"])
def test_priority_out_of_range_is_a_usage_error(db: Path, priority: str) -> None:
    """Outside the queue's 32-bit range: exit 2 naming the range, and no file made."""
    result = run_cli("enqueue", db, "jobs", "x", "--priority", priority)
    assert result.exit_code == 2, result.output
    assert "-2147483648<=x<=2147483647" in result.stderr
    assert not db.exists()
    at_edge = run_cli("enqueue", db, "jobs", "x", "--priority", "2147483647")
    assert at_edge.exit_code == 0, at_edge.output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["enqueue", "{db}", "jobs", "x", "--max-attempts", "99999999"], "--max-attempts must be"),
        (["enqueue", "{db}", "jobs", "x", "--delay", "1e308"], "--delay must be"),
        (["enqueue", "{db}", "jobs", "x", "--ttl", "1e308"], "--ttl must be"),
        (["enqueue", "{db}", "jobs", "x", "--group", ""], "--group must be"),
        (["enqueue", "{db}", "jobs", "x", "--dedup-key", ""], "--dedup-key must be"),
        (["enqueue", "{db}", "jobs", "-", "--max-attempts", "99999999"], "--max-attempts must"),
        (["dequeue", "{db}", "jobs", "--visibility-timeout", "1e308"], "--visibility-timeout must"),
        (["fail", "{db}", "jobs", "1", "--delay", "1e308"], "--delay must be"),
        (["purge", "{db}", "jobs", "--older-than", "1e308", "--yes"], "--older-than must be"),
        (["dlq", "purge", "{db}", "jobs", "--older-than", "1e308", "--yes"], "--older-than must"),
        (["dlq", "redrive", "{db}", "jobs", "--all", "--rate", "1e308"], "--rate must be"),
        (["ls", "{db}", "jobs", "--after", "99999999999999999999999"], "'--after'"),
        (["dlq", "list", "{db}", "jobs", "--after", "99999999999999999999999"], "'--after'"),
    ],
    ids=[
        "max-attempts",
        "delay",
        "ttl",
        "group",
        "dedup-key",
        "stdin-max-attempts",
        "visibility-timeout",
        "fail-delay",
        "older-than",
        "dlq-older-than",
        "rate",
        "after",
        "dlq-after",
    ],
)
def test_a_value_out_of_range_is_a_usage_error_naming_the_option(
    db: Path, args: list[str], said: str
) -> None:
    """Limits the library checks are said with the option's name, as bad usage (exit 2),
    not as a failed operation with a Python parameter's name."""
    with SQLiteQueue(db, table_name="jobs") as q:
        q.enqueue("x").unwrap()
        q.dequeue().unwrap()
    result = run_cli(*(a.format(db=db) for a in args), input="line\n")
    assert result.exit_code == 2, result.output
    assert said in result.stderr
    for python_name in ("max_attempts", "visibility_timeout", "older_than", "dedup_key", "failed:"):
        assert python_name not in result.stderr
    assert statuses_in(db, "jobs") == {1: "processing"}  # nothing changed


def test_a_failure_of_fail_is_said_as_the_command(db: Path) -> None:
    with SQLiteQueue(db, table_name="jobs") as q:
        q.enqueue("x").unwrap()
    result = run_cli("fail", db, "jobs", "55")
    assert result.exit_code == 1
    assert one_error_line(result).startswith("error: fail failed: message 55 is not in queue")


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        ("NaN", "NaN is not JSON"),
        ("[Infinity]", "Infinity is not JSON"),
        ("1e400", "1e400 is too large for a number"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ],
    ids=["nan", "infinity", "1e400", "deep"],
)
def test_json_that_is_not_json_is_a_usage_error(db: Path, payload: str, said: str) -> None:
    """What Python's json module reads but JSON is not (or cannot be read at all): exit 2
    saying why, from the argument and from stdin alike, never a traceback."""
    argument = run_cli("enqueue", db, "jobs", payload, "--json")
    stdin = run_cli("enqueue", db, "jobs", "-", "--json", input=payload + "\n")
    assert argument.exit_code == stdin.exit_code == 2
    assert said in one_error_line(argument)
    assert said in one_error_line(stdin)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--visibility-timeout", "700000"), ("--grace-period", "1e10")],
)
def test_worker_durations_it_could_not_use_are_usage_errors(
    db: Path, tmp_path: Path, option: str, value: str
) -> None:
    """A lease past a week (refused by every claim, so nothing was ever handled) or a grace
    period past a day (an OverflowError at shutdown): refused before the worker starts."""
    (tmp_path / "noop_handlers.py").write_text("def handle(message):\n    pass\n")
    result = run_cli("worker", "noop_handlers:handle", db, "jobs", option, value)
    assert result.exit_code == 2, result.output
    assert "is not in the range" in result.stderr
    assert run_cli("stats", db, "--watch=1e10").exit_code == 2


def test_copy_and_migrate_refuse_a_bad_queue_name_as_usage(db: Path, tmp_path: Path) -> None:
    with opened(db):
        pass
    copied = run_cli("copy", db, tmp_path / "copy.db", "bad-name")
    printed = run_cli("migrate", "--sql", db, "--queue", "bad-name")
    assert copied.exit_code == printed.exit_code == 2
    assert "invalid queue name 'bad-name'" in one_error_line(copied)
    assert "invalid queue name 'bad-name'" in one_error_line(printed)
    assert not (tmp_path / "copy.db").exists()


def test_an_id_past_any_database_is_not_a_dead_letter(db: Path) -> None:
    with opened(db):
        pass
    result = run_cli("dlq", "show", db, "jobs", "99999999999999999999999")
    assert result.exit_code == 1
    assert one_error_line(result) == (
        "error: message 99999999999999999999999 is not in the dead-letter queue of 'jobs'"
    )


def test_a_config_file_that_is_not_utf8_is_named(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with opened(db):
        pass
    config = tmp_path / "bin.toml"
    config.write_bytes(b'a = "\xff"\n')
    monkeypatch.setenv("SQQUEUE_CONFIG", str(config))
    result = run_cli("stats", db)
    assert result.exit_code == 1
    assert f"cannot read config file {config}" in one_error_line(result)


def test_payload_refused_on_stdin_names_its_line(db: Path) -> None:
    """A value the queue refuses (JSON nested deeper than it keeps) is named by its line of
    stdin, not by its index in an internal batch, and without the API's method name."""
    deep = "[" * 600 + "]" * 600
    result = run_cli("enqueue", db, "jobs", "-", "--json", input=f'{{"n": 1}}\n\n{{"n": {deep}}}\n')
    assert result.exit_code == 1
    line = one_error_line(result)
    assert line.startswith("error: line 3: payload is nested more than 500")
    assert "enqueue_batch" not in line and "item " not in line
    assert "0 message(s) from earlier lines were enqueued" in line


# -- dlq redrive --to -----------------------------------------------------------------------------


def test_redrive_to_a_missing_queue_is_refused_with_the_queues_there(db: Path) -> None:
    """A typo in --to neither redrives nor creates a queue, as in the Python API."""
    dead_after_one_attempt(db, "emails", 1)
    result = run_cli("dlq", "redrive", db, "emails", "--all", "--to", "emials")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "no queue 'emials'" in line and "queues there: emails" in line
    assert "--create" in line
    assert list_queues(db).unwrap() == ["emails"]
    assert statuses_in(db, "emails") == {1: "dead"}


def test_redrive_to_a_new_queue_with_create(db: Path) -> None:
    dead_after_one_attempt(db, "emails", 2)
    result = run_cli("dlq", "redrive", db, "emails", "--all", "--to", "emails_retry", "--create")
    assert result.exit_code == 0, result.output
    assert result.stdout == "redrove 2 message(s) to queue 'emails_retry'\n"
    assert list_queues(db).unwrap() == ["emails", "emails_retry"]
    assert set(statuses_in(db, "emails_retry").values()) == {"ready"}
    assert run_cli("dlq", "redrive", db, "emails", "--all", "--create").exit_code == 2


# -- copy: checks first, reruns -------------------------------------------------------------------


def fill(path: Path, queue: str, count: int) -> None:
    with SQLiteQueue(path, table_name=queue, default_max_attempts=1) as q:
        q.enqueue_batch([f"{queue} {n}" for n in range(count)]).unwrap()
        q.fail_message(q.dequeue().unwrap(), error="boom")  # type: ignore[arg-type]


def test_copy_checks_every_queue_before_writing(tmp_path: Path) -> None:
    """The second target queue is not empty: refused before the first is copied."""
    source, target = tmp_path / "src.db", tmp_path / "dst.db"
    fill(source, "a", 3)
    fill(source, "b", 3)
    with SQLiteQueue(target, table_name="b") as q:
        q.enqueue("someone else's").unwrap()
    result = run_cli("copy", f"sqlite:///{source}", f"sqlite:///{target}")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "target queue 'b' is not empty" in line and "Nothing was copied" in line
    assert list_queues(target).unwrap() == ["b"]  # 'a' was not even created
    missing = run_cli("copy", f"sqlite:///{source}", f"sqlite:///{target}", "a", "nope")
    assert missing.exit_code == 1
    assert "no queue 'nope' in sqlite:///" in one_error_line(missing)
    assert "(queues there: a, b); nothing was copied" in one_error_line(missing)
    assert list_queues(target).unwrap() == ["b"]


def test_copy_stopped_part_way_says_what_to_do_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy interrupted in its second queue: the rerun skips the first (already copied),
    refuses the second naming --resume, and --resume finishes it with every id."""
    source, target = tmp_path / "src.db", tmp_path / "dst.db"
    fill(source, "a", 5)
    fill(source, "b", 5)
    real_import = SQLBackend.import_rows
    calls = {"n": 0}

    def interrupted(self: SQLBackend, *args: Any) -> None:
        calls["n"] += 1
        if self.name == "b" and calls["n"] > 4:
            raise KeyboardInterrupt  # the operator pressed Ctrl-C
        real_import(self, *args)

    monkeypatch.setattr(SQLBackend, "import_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tools.copy_queues(f"sqlite:///{source}", f"sqlite:///{target}", batch=2)
    monkeypatch.setattr(SQLBackend, "import_rows", real_import)
    partial = statuses_in(target, "b")
    assert 0 < len(partial) < 5

    rerun = run_cli("copy", f"sqlite:///{source}", f"sqlite:///{target}")
    assert rerun.exit_code == 1
    line = one_error_line(rerun)
    assert f"holds {len(partial)} of the 5 messages" in line and "--resume" in line
    assert statuses_in(target, "b") == partial  # nothing written

    resumed = run_cli("copy", f"sqlite:///{source}", f"sqlite:///{target}", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "a: 4 message(s), 1 dead letter(s) (already copied: nothing to do)" in resumed.stdout
    assert f"b: 4 message(s), 1 dead letter(s) ({len(partial)} were there already)" in (
        resumed.stdout
    )
    for name in ("a", "b"):
        assert statuses_in(target, name) == {
            i: "ready" if s == "processing" else s for i, s in statuses_in(source, name).items()
        }


# -- sqqueue 0.1.0 queues and files without queues ----------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["salvage", "{f}", "{new}"], ["copy", "{f}", "{new}"], ["copy", "{f}", "{new}", "orders"]],
    ids=["salvage", "copy", "copy-a-queue"],
)
def test_copy_and_salvage_refuse_a_file_of_0_1_0_queues(
    legacy_db: Path, tmp_path: Path, args: list[str]
) -> None:
    """Not a success that wrote nothing: the 0.1.0 queues are named, with the way to
    migrate them; the file is left as it was and no target is made."""
    before = legacy_db.read_bytes()
    new = tmp_path / "new.db"
    result = run_cli(*(a.format(f=legacy_db, new=new) for a in args))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"holds only sqqueue 0.1.0 queues ({', '.join(tools.legacy_queues(legacy_db))})" in line
    assert f"`sqqueue migrate {legacy_db}` first" in line and "on a copy" in line
    assert legacy_db.read_bytes() == before
    assert not new.exists()


@pytest.mark.parametrize("command", ["salvage", "copy"])
def test_copy_and_salvage_refuse_a_file_without_queues(tmp_path: Path, command: str) -> None:
    plain = tmp_path / "plain.db"
    with sqlite3.connect(plain) as conn:
        conn.execute("CREATE TABLE notes (text)")
    new = tmp_path / "new.db"
    result = run_cli(command, plain, new)
    assert result.exit_code == 1
    assert f"no sqqueue queue in {plain}; nothing to {command}" in one_error_line(result)
    assert not new.exists()


def test_copy_and_salvage_of_current_and_0_1_0_queues(legacy_db: Path, tmp_path: Path) -> None:
    """copy of every queue refuses (naming the 0.1.0 ones), and copies the current queue
    named; salvage copies the current queue and fails saying which were left out."""
    with SQLiteQueue(legacy_db, table_name="jobs") as q:
        q.enqueue("current").unwrap()
    legacy = ", ".join(tools.legacy_queues(legacy_db))
    refused = run_cli("copy", legacy_db, tmp_path / "all.db")
    assert refused.exit_code == 1
    line = one_error_line(refused)
    assert f"holds sqqueue 0.1.0 queues ({legacy})" in line and "or name the queues" in line
    assert not (tmp_path / "all.db").exists()
    named = run_cli("copy", legacy_db, tmp_path / "jobs.db", "jobs")
    assert named.exit_code == 0, named.output
    assert list_queues(tmp_path / "jobs.db").unwrap() == ["jobs"]
    salvaged = run_cli("salvage", legacy_db, tmp_path / "rescued.db")
    assert salvaged.exit_code == 1
    assert "jobs: 1 message(s)" in salvaged.stdout
    assert f"0.1.0 queues of {legacy_db} ({legacy}) were not salvaged" in one_error_line(salvaged)
    assert list_queues(tmp_path / "rescued.db").unwrap() == ["jobs"]


def test_an_unknown_queue_of_a_0_1_0_file_names_the_0_1_0_queues(legacy_db: Path) -> None:
    result = run_cli("ls", legacy_db, "nosuch")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "(queues there: none; sqqueue 0.1.0 queues: " in line
    assert ", ".join(tools.legacy_queues(legacy_db)) in line
    assert f"`sqqueue migrate {legacy_db}`" in line


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
    result = run_cli(*(a.format(f=text, new=new) for a in args))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "is not an SQLite database" in line
    assert "salvage " not in line and "damaged" not in line
    assert "list_queues" not in line and "SQLITE_" not in line
    assert text.read_bytes() == before
    assert not new.exists()


# -- demo ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_reruns_on_the_same_file(tmp_path: Path) -> None:
    """A second run on one file uses a queue of its own and accounts for its own jobs."""
    db = tmp_path / "demo.db"
    for _ in range(2):
        result = run_cli("demo", "--jobs", "12", "--db", db)
        assert result.exit_code == 0, result.output
        assert "every job accounted for" in result.output
    assert list_queues(db).unwrap() == ["demo_jobs", "demo_jobs_2"]
