"""The ``sqqueue`` command: look into, feed, drain and look after queues from a shell.

::

    sqqueue stats jobs.db                       # every queue in the file, as a table
    sqqueue enqueue jobs.db emails '{"to": "ada@example.com"}' --json
    sqqueue dlq list jobs.db emails             # what failed for good, and why
    sqqueue worker tasks:send jobs.db emails --concurrency 4
    sqqueue worker myapp.jobs:tasks --concurrency 4    # every task of a sqqueue.Tasks app

Needs the ``cli`` extra (click and rich): ``pip install 'sqqueue[cli]'``. Exit codes: 0
done, 1 the operation failed (the error is one ``error: ...`` line on stderr), 2 bad usage.
``--json`` output is JSON with datetimes as ISO-8601 strings and bytes as
``{"$bytes": "<base64>"}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from . import __version__, tools
from .config import SETTINGS, find_config_file, resolve
from .exceptions import QueueError
from .message import Item, Message
from .names import validate_queue_name
from .queue import LISTABLE_STATES, PURGEABLE_STATES, Queue, SQLiteQueue
from .result import Err, Result
from .retry import RetryPolicy
from .stats import QueueStats
from .tasks import Tasks
from .worker import Worker, WorkerStats

try:
    import click
    from rich import box
    from rich.console import Console, Group, RenderableType
    from rich.live import Live
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from . import cli_security
except ImportError:  # pragma: no cover - depends on the install
    _HAVE_DEPS = False
else:
    _HAVE_DEPS = True

__all__ = ["main"]

NEEDS = "the sqqueue command needs: pip install 'sqqueue[cli]'"
LIST_STATES = LISTABLE_STATES
PURGE_STATES = PURGEABLE_STATES
LIVE_STATES = ("pending", "delayed", "waiting", "processing")  # what purge takes by default
CHUNK = 1000  # messages per enqueue_batch transaction when reading stdin
BINARY_HINT = (
    'to enqueue binary data, give it as JSON {"$bytes": "<base64>"} with --json '
    '(e.g. base64 -w0 FILE | sed \'s/.*/{"$bytes": "&"}/\')'
)

T = TypeVar("T")


class CliError(Exception):
    """An expected failure: one ``error: ...`` line on stderr and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- small helpers (no click needed) ----------------------------------------------------------


def _one_line(text: object) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _unwrap(result: Result[T, Any]) -> T:
    """The value of an ``Ok``; an ``Err`` becomes a one-line error (exit 1)."""
    if isinstance(result, Err):
        raise CliError(str(result.error))
    return result.value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, RetryPolicy):
        return _retry_text(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot represent {type(value).__name__} as JSON")


def _dumps(data: Any, indent: int | None = 2) -> str:
    return json.dumps(data, default=_json_default, indent=indent, ensure_ascii=False)


def _parse_json_payload(text: str) -> Any:
    """A JSON payload; ``{"$bytes": "<base64>"}`` (what ``--json`` output uses) is bytes."""
    value = json.loads(text)
    if isinstance(value, dict) and set(value) == {"$bytes"} and isinstance(value["$bytes"], str):
        return base64.b64decode(value["$bytes"], validate=True)
    return value


def _is_utf8(text: str) -> bool:
    """Whether text from the command line is real text (undecodable bytes in argv come
    through as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _batch_error(text: str, numbers: list[int]) -> str:
    """An enqueue_batch error as the command speaks: its item number becomes the line of
    stdin it came from, and the method's name goes."""
    text = text.removeprefix("enqueue_batch failed: ")
    match = re.match(r"item (\d+): (.*?)(; nothing was enqueued)?$", text)
    if match is None or int(match.group(1)) >= len(numbers):
        return f"enqueue failed: {text}"
    return f"line {numbers[int(match.group(1))]}: {match.group(2)}"


def _stdin_lines() -> Iterator[bytes]:
    """Standard input line by line, as bytes: each line is decoded (and refused if it is
    not UTF-8) by the caller, whatever the locale says."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return iter(buffer)
    return (line.encode("utf-8", "surrogateescape") for line in sys.stdin)


def _retry_text(policy: RetryPolicy) -> str:
    if policy.kind == "immediate":
        return "immediate"
    if policy.kind == "fixed":
        return f"fixed:{policy.base:g}"
    text = f"{policy.kind}:{policy.base:g}:{policy.cap:g}"
    if policy.kind == "exponential" and (policy.factor != 2.0 or not policy.jitter):
        text += f" (factor {policy.factor:g}, jitter {'on' if policy.jitter else 'off'})"
    return text


def _when(value: datetime | str | None) -> str:
    """ISO-8601 in UTC to the second, for tables: ``2026-01-31T09:15:00Z``. (A stored time
    that cannot be read comes as the library's ``<invalid: ...>`` marker, shown as is.)"""
    if value is None:
        return "-"
    if not isinstance(value, datetime):
        return str(value)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


def _payload_text(payload: Any) -> str:
    """A payload for humans: text as it is, anything else as compact JSON."""
    if isinstance(payload, str):
        return payload
    return _dumps(payload, indent=None)


def _clip(text: str | None, width: int) -> str:
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _message_dict(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "queue": message.queue,
        "payload": message.payload,
        "priority": message.priority,
        "attempts": message.attempts,
        "max_attempts": message.max_attempts,
        "prior_attempts": message.prior_attempts,
        "enqueued_at": message.enqueued_at,
        "lease_expires_at": message.lease_expires_at,
        "expires_at": message.expires_at,
        "group": message.group,
        "last_error": message.last_error,
    }


def _stream_is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _stdin_interactive() -> bool:
    """Whether someone can answer a question on stdin (tests replace this)."""
    return _stream_is_tty(sys.stdin)


def _show_progress() -> bool:
    """Progress bars go to stderr, and only when it is a terminal (tests replace this)."""
    return _stream_is_tty(sys.stderr)


def _console() -> Console:
    """stdout for tables: the terminal's width, or wide enough not to wrap in a pipe."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)
    return console


def _pause(seconds: float) -> None:
    """The wait between two ``--watch`` refreshes (tests replace this)."""
    time.sleep(seconds)


@contextlib.contextmanager
def _progress(description: str, known_total: bool) -> Iterator[Callable[[int, int | None], Any]]:
    """Yield ``update(done, total)``: a rich progress bar on a terminal, nothing when piped."""
    if not _show_progress():
        yield lambda _done, _total: None
        return
    columns: list[ProgressColumn | str] = [SpinnerColumn(), TextColumn("{task.description}")]
    if known_total:
        columns += [BarColumn(), MofNCompleteColumn()]
    else:
        columns.append(TextColumn("{task.completed}"))
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        yield update


# -- opening files and queues -----------------------------------------------------------------


def _require_db(db: str) -> None:
    """Read-only commands never create a file: fail when there is none."""
    path = Path(db)
    if path.is_dir():
        raise CliError(f"{db} is a directory, not a database file")
    if not path.is_file():
        raise CliError(f"no database at {db}")


def _check_name(queue: str) -> str:
    try:
        return validate_queue_name(queue)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None


def _queue_names(db: str) -> list[str]:
    return _unwrap(SQLiteQueue.list_queues(db))


def _legacy_names(db: str) -> list[str]:
    try:
        return tools.legacy_queues(db)
    except QueueError as exc:
        raise CliError(str(exc)) from None


def _require_queue(db: str, name: str, hint: str = "") -> None:
    """Fail unless DB holds a queue ``name``, listing the queues it does hold."""
    _require_db(db)
    known = _queue_names(db)
    if name not in known and name not in _legacy_names(db):
        there = ", ".join(known) if known else "none"
        raise CliError(f"no queue {name!r} in {db} (queues there: {there}){hint}")


def _open(db: str, queue: str, *, create: bool = False, read_only: bool = False) -> SQLiteQueue:
    """Open a queue; unless ``create``, the file and the queue must exist already. A
    ``read_only`` queue changes nothing on disk (commands that only look use it)."""
    name = _check_name(queue)
    if not create:
        _require_queue(db, name)
    try:
        return SQLiteQueue(db, table_name=name, read_only=read_only)
    except (ValueError, QueueError) as exc:
        raise CliError(str(exc)) from None


def _any_queue(db: str, action: str) -> SQLiteQueue:
    """Any queue of the file, for file-wide maintenance (the API hangs it on queues)."""
    _require_db(db)
    names = _queue_names(db)
    if not names:
        raise CliError(f"no sqqueue queues in {db}; nothing to {action}")
    return _open(db, names[0])


def _dead_letter(queue: Queue, message_id: int) -> dict[str, Any] | None:
    """The dead letter with this id, or None (one indexed page of the dead-letter queue)."""
    if message_id < 1:
        return None
    page = _unwrap(queue.list_messages("dead", limit=1, after_id=message_id - 1))
    return page[0] if page and page[0]["id"] == message_id else None


# -- rendering ----------------------------------------------------------------------------------


_TOTAL_HEADERS = {
    "dead_lettered": "to DLQ",
    "lease_expirations": "lease exp.",
    "ttl_expired": "TTL exp.",
}


def _stats_view(db: str, rows: list[QueueStats], legacy: list[str]) -> RenderableType:
    now = _when(datetime.now(timezone.utc))
    if not rows:
        text = f"no sqqueue queues in {db}"
        if legacy:
            text += f" (0.1.0 queues: {', '.join(legacy)}; run `sqqueue migrate {db}`)"
        return text
    first = rows[0].to_dict()
    states = [
        key for key in ("pending", "delayed", "waiting", "processing", "dead") if key in first
    ]
    totals = [key for key in first if key.endswith("_total")]
    counts_table = _table(f"{db} at {now}")
    counts_table.add_column("queue")
    for header in (*states, "oldest", "expiring"):
        counts_table.add_column(header, justify="right")
    totals_table = _table("totals since creation")
    totals_table.add_column("queue")
    for key in totals:
        short = key.removesuffix("_total")
        totals_table.add_column(_TOTAL_HEADERS.get(short, short.replace("_", " ")), justify="right")
    for s in rows:
        data = s.to_dict()
        counts_table.add_row(
            s.queue,
            *(str(data[key]) for key in states),
            _age(s.oldest_pending_age),
            str(s.expiring_soon),
        )
        totals_table.add_row(s.queue, *(str(data[key]) for key in totals))
    files = f"file: {_size(rows[0].db_bytes)}, WAL: {_size(rows[0].wal_bytes)}"
    if rows[0].wal_frames_not_checkpointed:
        files += (
            f" ({rows[0].wal_frames_not_checkpointed} of {rows[0].wal_frames} frames not "
            "checkpointed: another connection reads an old snapshot)"
        )
    parts: list[RenderableType] = [counts_table, totals_table, files]
    if legacy:
        parts.append(f"0.1.0 queues not migrated yet: {', '.join(legacy)}")
    return Group(*parts)


def _stats_json(db: str, rows: list[QueueStats], legacy: list[str]) -> dict[str, Any]:
    db_bytes = rows[0].db_bytes if rows else os.path.getsize(db)
    wal = Path(f"{db}-wal")
    wal_bytes = rows[0].wal_bytes if rows else (wal.stat().st_size if wal.is_file() else 0)
    return {
        "db": db,
        "at": datetime.now(timezone.utc),
        "db_bytes": db_bytes,
        "wal_bytes": wal_bytes,
        "queues": {s.queue: s.to_dict() for s in rows},
        "legacy_queues": legacy,
    }


def _messages_table(title: str, entries: list[dict[str, Any]], width: int) -> Table:
    """Messages as rows; narrow terminals leave out the enqueue time (--json has it all)."""
    wide = width >= 110
    table = _table(title)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("pri", justify="right", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    if wide:
        table.add_column("enqueued", no_wrap=True)
    table.add_column("due/lease/dead/done", no_wrap=True)
    table.add_column("last error", max_width=40, min_width=10)
    table.add_column("payload", max_width=80, min_width=10)
    for entry in entries:
        status = entry["status"]
        moment = {
            "delayed": entry.get("visible_at"),
            "processing": entry.get("lease_expires_at"),
            "dead": entry.get("dead_at"),
            "done": entry.get("completed_at"),
        }.get(status)
        attempts = str(entry["attempts"])
        if "max_attempts" in entry:
            attempts += f"/{entry['max_attempts']}"
        cells = [str(entry["id"]), status, str(entry["priority"]), attempts]
        if wide:
            cells.append(_when(entry.get("enqueued_at") or entry.get("created_at")))
        cells += [
            _when(moment),
            _clip(entry.get("last_error"), 80),
            _clip(_payload_text(entry["payload"]), 120),
        ]
        table.add_row(*cells)
    return table


def _table(title: str | None) -> Table:
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )


def _detail(fields: list[tuple[str, object]]) -> str:
    width = max(len(label) for label, _ in fields) + 1
    lines = []
    for label, value in fields:
        if isinstance(value, datetime):
            text = value.isoformat()
        elif value is None:
            text = "-"
        else:
            text = str(value)
        text = text.replace("\n", "\n" + " " * (width + 1))
        lines.append(f"{label + ':':<{width}} {text}")
    return "\n".join(lines)


def _pretty_payload(payload: Any) -> str:
    if isinstance(payload, str):
        return payload
    return _dumps(payload)


# -- the worker's handler ---------------------------------------------------------------------


def _load_handler(target: str) -> Callable[..., Any] | Tasks:
    """Import ``MODULE:FUNC`` (FUNC may be dotted) or ``MODULE:TASKS`` (a Tasks object),
    looking in the working directory too."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(
            f"the handler must be MODULE:FUNC or MODULE:TASKS (e.g. tasks:handle), got {target!r}",
            2,
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(obj, Tasks):
        return obj
    if not callable(obj):
        raise CliError(f"{target} is not callable (it is a {type(obj).__name__})")
    handler: Callable[..., Any] = obj
    return handler


def _start_metrics(
    db: str, port: int, host: str, queues: list[str] | None, with_durations: bool
) -> tuple[Any, Any]:
    """Start the Prometheus endpoint; returns (server, Durations or None)."""
    try:
        from prometheus_client import CollectorRegistry

        from .prometheus import Durations, serve
    except ImportError as exc:
        raise CliError(str(exc)) from None
    registry = CollectorRegistry()
    durations = Durations(registry) if with_durations else None
    try:
        server, _thread = serve(db, port=port, host=host, queues=queues, registry=registry)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return server, durations


def _metrics_url(server: Any, host: str) -> str:
    port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


def _missing_deps(*_args: Any, **_kwargs: Any) -> NoReturn:
    sys.stderr.write(f"{NEEDS}\n")
    raise SystemExit(2)


# -- the commands -------------------------------------------------------------------------------


def _build() -> click.Group:  # noqa: PLR0915 - one place declares the whole command line
    """Declare the command line (click is only needed when the command runs)."""

    class SqqueueGroup(click.Group):
        """Turns a CliError raised by any command into ``error: ...`` and its exit code."""

        def invoke(self, ctx: click.Context) -> Any:
            try:
                return super().invoke(ctx)
            except CliError as exc:
                click.echo(f"error: {_one_line(exc)}", err=True)
                ctx.exit(exc.code)

    as_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    db_arg = click.argument("db", metavar="DB")
    queue_arg = click.argument("queue", metavar="QUEUE")
    id_arg = click.argument("message_id", metavar="ID", type=click.IntRange(min=0))
    yes_opt = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
    older_opt = click.option(
        "--older-than",
        type=click.FloatRange(min=0),
        metavar="SECONDS",
        help="Only messages enqueued more than SECONDS ago (dead letters: that died; kept "
        "completed ones: that were completed).",
    )

    def confirm(question: str, yes: bool) -> None:
        if yes:
            return
        if not _stdin_interactive():
            raise CliError(
                "refusing to delete without confirmation: stdin is not a terminal; "
                "pass --yes to confirm",
                2,
            )
        try:
            answer = click.confirm(question, default=False, err=True)
        except click.Abort:
            answer = False
        if not answer:
            raise CliError("aborted; nothing was deleted")

    @click.group(
        cls=SqqueueGroup,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )
    @click.version_option(__version__, prog_name="sqqueue")
    @cli_security.key_file_option
    def main(key_file: str | None) -> None:
        """Operate sqqueue queues: a persistent message queue in an SQLite file.

        Exit codes: 0 done, 1 the operation failed (one "error: ..." line on stderr),
        2 bad usage. Read-only commands never create a database file.

        \b
        Example:
          sqqueue stats jobs.db
          sqqueue enqueue jobs.db emails '{"to": "ada@example.com"}' --json
          sqqueue worker tasks:send jobs.db emails --concurrency 4
        """
        if key_file is not None:
            try:
                cli_security.use_key_file(key_file)
            except ValueError as exc:
                raise CliError(str(exc), 2) from None

    # -- looking -------------------------------------------------------------------------------

    @main.command()
    @db_arg
    @click.argument("queue", metavar="[QUEUE]", required=False)
    @as_json
    @click.option(
        "--watch",
        type=click.FloatRange(min=0.1),
        is_flag=False,
        flag_value=2.0,
        default=None,
        metavar="[SECONDS]",
        help="Refresh every SECONDS (2 by default) until Ctrl-C. Put it after DB and QUEUE "
        "(or write --watch=5). With --json, prints one JSON document per line.",
    )
    def stats(db: str, queue: str | None, as_json: bool, watch: float | None) -> None:
        """Counts, ages and totals of every queue in DB (or just QUEUE).

        Pending (ready now), delayed, processing (leased) and dead messages, the age of
        the oldest ready message, leases expiring within 60 s, totals since each queue was
        created, and the database and WAL file sizes.

        \b
        Example:
          sqqueue stats jobs.db
          sqqueue stats jobs.db emails --json
          sqqueue stats jobs.db --watch 5
        """
        _require_db(db)
        opened: dict[str, SQLiteQueue] = {}
        if queue is not None:
            opened[queue] = _open(db, queue, read_only=True)

        def snapshot() -> tuple[list[QueueStats], list[str]]:
            names = [queue] if queue is not None else _queue_names(db)
            rows = []
            for name in names:
                if name not in opened:
                    opened[name] = _open(db, name, read_only=True)
                rows.append(_unwrap(opened[name].stats()))
            return rows, [] if queue is not None else _legacy_names(db)

        console = _console()
        try:
            if watch is None:
                rows, legacy = snapshot()
                if as_json:
                    click.echo(_dumps(_stats_json(db, rows, legacy)))
                else:
                    console.print(_stats_view(db, rows, legacy))
                return
            with contextlib.suppress(KeyboardInterrupt):
                if as_json or not console.is_terminal:
                    while True:  # until Ctrl-C
                        rows, legacy = snapshot()
                        if as_json:
                            click.echo(_dumps(_stats_json(db, rows, legacy), indent=None))
                        else:
                            console.print(_stats_view(db, rows, legacy))
                        sys.stdout.flush()
                        _pause(watch)
                else:
                    with Live(console=console, auto_refresh=False) as live:
                        while True:  # until Ctrl-C
                            live.update(_stats_view(db, *snapshot()), refresh=True)
                            _pause(watch)
        finally:
            for opened_queue in opened.values():
                opened_queue.close()

    @main.command("ls")
    @db_arg
    @queue_arg
    @click.option(
        "--state",
        type=click.Choice(LIST_STATES),
        default="all",
        show_default=True,
        help="Which messages to list. all: every message not finished (not dead, not "
        "done); done: completed messages kept by the retention setting.",
    )
    @click.option(
        "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, metavar="N"
    )
    @click.option(
        "--after",
        type=click.IntRange(min=0),
        default=0,
        metavar="ID",
        help="Start after this id (the value printed at the end of the previous page).",
    )
    @as_json
    def ls(db: str, queue: str, state: str, limit: int, after: int, as_json: bool) -> None:
        """List the messages of QUEUE by id, a page at a time.

        \b
        Example:
          sqqueue ls jobs.db emails --state dead --limit 20
          sqqueue ls jobs.db emails --state dead --limit 20 --after 140
        """
        with _open(db, queue, read_only=True) as q:
            entries = _unwrap(q.list_messages(state, limit=limit, after_id=after))
        next_after = entries[-1]["id"] if len(entries) == limit else None
        if as_json:
            click.echo(
                _dumps(
                    {"queue": queue, "state": state, "messages": entries, "next_after": next_after}
                )
            )
            return
        if not entries:
            click.echo(f"no {'' if state == 'all' else state + ' '}messages in queue {queue!r}")
            return
        console = _console()
        console.print(_messages_table(f"{queue}: {state} messages", entries, console.width))
        if next_after is not None:
            click.echo(f"next page: --after {next_after}")

    @main.command()
    @db_arg
    @queue_arg
    @as_json
    def peek(db: str, queue: str, as_json: bool) -> None:
        """Show the next message without taking it.

        The message the next dequeue would get; it stays where it is.

        \b
        Example:
          sqqueue peek jobs.db emails
        """
        with _open(db, queue, read_only=True) as q:
            message = _unwrap(q.peek())
        if as_json:
            click.echo(_dumps(None if message is None else _message_dict(message)))
        elif message is None:
            click.echo(f"queue {queue!r} has no message ready")
        else:
            click.echo(
                _detail(
                    [
                        ("id", message.id),
                        ("priority", message.priority),
                        ("attempts", f"{message.attempts}/{message.max_attempts}"),
                        ("enqueued at", message.enqueued_at),
                        ("last error", message.last_error),
                        ("payload", _pretty_payload(message.payload)),
                    ]
                )
            )

    # -- producing and consuming ---------------------------------------------------------------

    @main.command()
    @db_arg
    @queue_arg
    @click.argument("payload", metavar="PAYLOAD|-")
    @click.option(
        "--json",
        "parse_json",
        is_flag=True,
        help='Parse each payload as JSON ({"$bytes": "<base64>"} becomes bytes).',
    )
    @click.option("--priority", type=int, default=None, help="Higher is delivered first.")
    @click.option(
        "--delay", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS", help="Hold back."
    )
    @click.option(
        "--max-attempts",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="Deliveries before the dead-letter queue.",
    )
    @click.option(
        "--ttl",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="SECONDS",
        help="Never deliver it after SECONDS.",
    )
    @click.option("--group", metavar="KEY", help="Deliver one message of the group at a time.")
    @click.option(
        "--dedup-key",
        metavar="KEY",
        help="Add nothing if a message with KEY was enqueued recently (prints its id).",
    )
    def enqueue(
        db: str,
        queue: str,
        payload: str,
        parse_json: bool,
        priority: int | None,
        delay: float,
        max_attempts: int | None,
        ttl: float | None,
        group: str | None,
        dedup_key: str | None,
    ) -> None:
        """Add a message (or one per line of stdin); prints its id.

        QUEUE (and DB) are created if needed.

        PAYLOAD is stored as text unless --json is given. With "-", every line of stdin is
        a message (blank lines are skipped), added in transactions of 1000; prints the
        count.

        \b
        Example:
          sqqueue enqueue jobs.db emails 'hello'
          sqqueue enqueue jobs.db emails '{"to": "ada@example.com"}' --json --priority 5
          jq -c '.[]' jobs.json | sqqueue enqueue jobs.db emails - --json
        """
        if payload != "-":
            if not _is_utf8(payload):
                raise CliError(f"PAYLOAD is not UTF-8 text; {BINARY_HINT}", 2)
            value: Any = payload
            if parse_json:
                try:
                    value = _parse_json_payload(payload)
                except ValueError as exc:
                    raise CliError(f"PAYLOAD is not valid JSON: {exc}", 2) from None
            with _open(db, queue, create=True) as q:
                new_id = _unwrap(
                    q.enqueue(
                        value,
                        priority,
                        delay,
                        max_attempts,
                        dedup_key=dedup_key,
                        group=group,
                        ttl=ttl,
                    )
                )
            click.echo(str(new_id))
            return
        if dedup_key is not None:
            raise CliError("--dedup-key needs a single PAYLOAD, not -", 2)
        stream = _stdin_lines()
        total = 0
        with (
            _open(db, queue, create=True) as q,
            _progress("enqueueing", known_total=False) as update,
        ):
            batch: list[Item] = []
            numbers: list[int] = []  # the line number of each item of the batch

            def flush() -> None:
                nonlocal total
                if not batch:
                    return
                result = q.enqueue_batch(batch)
                if isinstance(result, Err):
                    raise CliError(
                        f"{_batch_error(str(result.error), numbers)}; "
                        f"{total} message(s) from earlier lines were enqueued"
                    )
                total += len(result.value)
                update(total, None)
                batch.clear()
                numbers.clear()

            for number, raw in enumerate(stream, start=1):
                try:
                    text = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    raise CliError(
                        f"line {number} is not UTF-8 text; {BINARY_HINT}; "
                        f"{total} message(s) from earlier lines were enqueued",
                        2,
                    ) from None
                if not text.strip():
                    continue
                item: Any = text
                if parse_json:
                    try:
                        item = _parse_json_payload(text)
                    except ValueError as exc:
                        raise CliError(
                            f"line {number} is not valid JSON: {exc}; "
                            f"{total} message(s) from earlier lines were enqueued",
                            2,
                        ) from None
                batch.append(Item(item, priority, delay, max_attempts, group=group, ttl=ttl))
                numbers.append(number)
                if len(batch) >= CHUNK:
                    flush()
            flush()
        click.echo(f"enqueued {total} message(s) to queue {queue!r}")

    @main.command()
    @db_arg
    @queue_arg
    @click.option(
        "--wait",
        type=click.FloatRange(0, 86400),
        default=0.0,
        metavar="SECONDS",
        help="Wait up to SECONDS for a message.",
    )
    @click.option(
        "--visibility-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="SECONDS",
        help="Lease length (the queue's default otherwise).",
    )
    @as_json
    def dequeue(
        db: str, queue: str, wait: float, visibility_timeout: float | None, as_json: bool
    ) -> None:
        """Lease the next message; prints "ID<TAB>PAYLOAD".

        Finish it with `sqqueue complete` or `sqqueue fail` before the lease runs out, or
        it is delivered again. Prints nothing (exit 0) when no message is ready; with
        --json, prints the message as an object, or null.

        \b
        Example:
          read -r id payload < <(sqqueue dequeue jobs.db emails --wait 30)
          [ -n "$id" ] && sqqueue complete jobs.db emails "$id"
        """
        with _open(db, queue) as q:
            message = _unwrap(q.dequeue(visibility_timeout=visibility_timeout, wait=wait))
        if as_json:
            click.echo(_dumps(None if message is None else _message_dict(message)))
        elif message is None:
            if _stream_is_tty(sys.stderr):
                click.echo(f"queue {queue!r} has no message ready", err=True)
        else:
            click.echo(f"{message.id}\t{_payload_text(message.payload)}")
            if _stream_is_tty(sys.stderr):
                click.echo(
                    f"leased until {_when(message.lease_expires_at)}; finish it with: "
                    f"sqqueue complete {db} {queue} {message.id}",
                    err=True,
                )

    @main.command()
    @db_arg
    @queue_arg
    @id_arg
    def complete(db: str, queue: str, message_id: int) -> None:
        """Acknowledge a leased message: it is deleted for good.

        \b
        Example:
          sqqueue complete jobs.db emails 42
        """
        with _open(db, queue) as q:
            _unwrap(q.complete(message_id))
        click.echo(f"completed message {message_id}")

    @main.command()
    @db_arg
    @queue_arg
    @id_arg
    @click.option("--error", "error", metavar="TEXT", help="Why it failed (kept as last error).")
    @click.option("--dlq", is_flag=True, help="Send it to the dead-letter queue at once.")
    @click.option(
        "--delay",
        type=click.FloatRange(min=0),
        default=None,
        metavar="SECONDS",
        help="Retry after SECONDS (the queue's retry policy otherwise).",
    )
    def fail(
        db: str, queue: str, message_id: int, error: str | None, dlq: bool, delay: float | None
    ) -> None:
        """Record a failed attempt of a leased message.

        It is retried, or dead-lettered when it has used its attempts (or with --dlq).

        \b
        Example:
          sqqueue fail jobs.db emails 42 --error "smtp timeout"
          sqqueue fail jobs.db emails 42 --error "bad address" --dlq
        """
        with _open(db, queue) as q:
            _unwrap(q.fail_message(message_id, send_to_dlq=dlq, error=error, delay=delay))
            dead = _dead_letter(q, message_id) is not None
        if dead:
            click.echo(f"message {message_id} moved to the dead-letter queue")
        else:
            click.echo(f"message {message_id} failed; it will be retried")

    # -- the dead-letter queue -----------------------------------------------------------------

    @main.group()
    def dlq() -> None:
        """Dead letters: list, show, redrive and purge.

        Dead letters are messages that failed for good: they used all their attempts,
        or were failed with --dlq.

        \b
        Example:
          sqqueue dlq list jobs.db emails
          sqqueue dlq redrive jobs.db emails --all
        """

    @dlq.command("list")
    @db_arg
    @queue_arg
    @click.option(
        "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, metavar="N"
    )
    @click.option("--after", type=click.IntRange(min=0), default=0, metavar="ID")
    @as_json
    def dlq_list(db: str, queue: str, limit: int, after: int, as_json: bool) -> None:
        """List the dead letters of QUEUE, a page at a time.

        \b
        Example:
          sqqueue dlq list jobs.db emails
          sqqueue dlq list jobs.db emails --json | jq '.messages[].last_error'
        """
        with _open(db, queue, read_only=True) as q:
            entries = _unwrap(q.list_messages("dead", limit=limit, after_id=after))
        next_after = entries[-1]["id"] if len(entries) == limit else None
        if as_json:
            click.echo(_dumps({"queue": queue, "messages": entries, "next_after": next_after}))
            return
        if not entries:
            click.echo(f"no dead letters in queue {queue!r}")
            return
        console = _console()
        console.print(_messages_table(f"{queue}: dead letters", entries, console.width))
        if next_after is not None:
            click.echo(f"next page: --after {next_after}")

    @dlq.command("show")
    @db_arg
    @queue_arg
    @id_arg
    @as_json
    def dlq_show(db: str, queue: str, message_id: int, as_json: bool) -> None:
        """Show one dead letter in full: payload, attempts, times and last error.

        \b
        Example:
          sqqueue dlq show jobs.db emails 42
        """
        with _open(db, queue, read_only=True) as q:
            entry = _dead_letter(q, message_id)
        if entry is None:
            raise CliError(f"message {message_id} is not in the dead-letter queue of {queue!r}")
        if as_json:
            click.echo(_dumps(entry))
            return
        fields: list[tuple[str, object]] = [
            ("id", entry["id"]),
            ("priority", entry["priority"]),
            ("attempts", f"{entry['attempts']}/{entry['max_attempts']}"),
            ("enqueued at", entry["created_at"]),
            ("dead at", entry["dead_at"]),
            ("last error", entry["last_error"]),
        ]
        if "payload_error" in entry:
            fields.append(("payload error", entry["payload_error"]))
        fields.append(("payload", _pretty_payload(entry["payload"])))
        click.echo(_detail(fields))

    @dlq.command("redrive")
    @db_arg
    @queue_arg
    @click.argument("ids", metavar="[ID]...", nargs=-1, type=click.IntRange(min=0))
    @click.option("--all", "redrive_all", is_flag=True, help="Every dead letter of QUEUE.")
    @click.option(
        "--to", "to_queue", metavar="QUEUE", help="Into this other queue of DB (new ids)."
    )
    @click.option(
        "--create", is_flag=True, help="With --to: create that queue if DB has none of that name."
    )
    @click.option(
        "--rate",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="N",
        help="At most N messages a second, not to flood consumers.",
    )
    def dlq_redrive(
        db: str,
        queue: str,
        ids: tuple[int, ...],
        redrive_all: bool,
        to_queue: str | None,
        create: bool,
        rate: float | None,
    ) -> None:
        """Put dead letters back to be delivered again.

        They keep their ids (in QUEUE) and last error; their attempts start over. With
        --to they go into another queue of DB, which must exist (or pass --create).

        \b
        Example:
          sqqueue dlq redrive jobs.db emails 42 43
          sqqueue dlq redrive jobs.db emails --all --rate 50
          sqqueue dlq redrive jobs.db emails --all --to emails_retry --create
        """
        if redrive_all == bool(ids):
            raise CliError("give either message ids or --all", 2)
        if create and to_queue is None:
            raise CliError("--create goes with --to QUEUE", 2)
        target = queue if to_queue is None else _check_name(to_queue)
        _require_queue(db, queue)
        if to_queue is not None and create:
            _open(db, target, create=True).close()
        elif to_queue is not None:
            _require_queue(db, target, "; pass --create to create it")
        with _open(db, queue) as q, _progress("redriving", known_total=True) as update:
            moved = _unwrap(
                q.redrive(
                    None if redrive_all else list(ids),
                    to_queue=to_queue,
                    rate=rate,
                    progress=update,
                )
            )
        click.echo(f"redrove {moved} message(s) to queue {target!r}")

    @dlq.command("purge")
    @db_arg
    @queue_arg
    @click.option(
        "--older-than",
        type=click.FloatRange(min=0),
        metavar="SECONDS",
        help="Only dead letters that died more than SECONDS ago.",
    )
    @yes_opt
    def dlq_purge(db: str, queue: str, older_than: float | None, yes: bool) -> None:
        """Delete dead letters of QUEUE for good (asks first unless --yes).

        \b
        Example:
          sqqueue dlq purge jobs.db emails --older-than 604800 --yes
        """
        with _open(db, queue) as q:
            count = _unwrap(q.stats()).dead
            scope = f" dead for more than {older_than:.15g} s" if older_than is not None else ""
            confirm(
                f"Delete the dead letters of queue {queue!r} in {db}{scope} ({count} there now)?",
                yes,
            )
            removed = _unwrap(q.purge("dead", older_than=older_than))
        click.echo(f"deleted {removed} dead letter(s) from queue {queue!r}")

    @main.command()
    @db_arg
    @queue_arg
    @click.option(
        "--state",
        "states",
        multiple=True,
        type=click.Choice([*PURGE_STATES, "all"]),
        help="Which messages (repeatable). Default: pending, delayed, waiting and "
        "processing; all: those, dead letters and kept completed messages.",
    )
    @older_opt
    @yes_opt
    def purge(
        db: str, queue: str, states: tuple[str, ...], older_than: float | None, yes: bool
    ) -> None:
        """Delete messages of QUEUE for good (asks first unless --yes).

        Without --yes and without a terminal to ask on, refuses (exit 2) rather than wait.
        Deleting processing messages makes their consumers' acknowledgements fail.

        \b
        Example:
          sqqueue purge jobs.db emails --yes
          sqqueue purge jobs.db emails --state delayed --older-than 86400 --yes
        """
        if "all" in states:
            chosen = list(PURGE_STATES)
        else:
            chosen = sorted(set(states), key=PURGE_STATES.index)
        effective = chosen or list(LIVE_STATES)
        with _open(db, queue) as q:
            now = _unwrap(q.stats())
            counts = now.to_dict()
            count = sum(counts[state] for state in effective if state in counts)
            scope = f" enqueued more than {older_than:.15g} s ago" if older_than is not None else ""
            confirm(
                f"Delete the {', '.join(effective)} messages of queue {queue!r} in {db}{scope} "
                f"({count} live or dead there now)?",
                yes,
            )
            removed = _unwrap(q.purge(chosen or None, older_than=older_than))
        click.echo(f"deleted {removed} message(s) from queue {queue!r}")

    # -- the file -----------------------------------------------------------------------------

    @main.command()
    @db_arg
    def vacuum(db: str) -> None:
        """Rebuild DB to give free space back to the filesystem.

        This rewrites the whole file (routine upkeep reclaims space in small steps).

        \b
        Example:
          sqqueue vacuum jobs.db
        """
        with _any_queue(db, "vacuum") as q:
            before = _unwrap(q.stats())
            _unwrap(q.vacuum_database())
            after = _unwrap(q.stats())
        click.echo(f"vacuumed {db}: {_size(before.db_bytes)} -> {_size(after.db_bytes)}")

    @main.command()
    @db_arg
    def checkpoint(db: str) -> None:
        """Copy the write-ahead log (DB-wal) into DB and truncate it.

        \b
        Example:
          sqqueue checkpoint jobs.db
        """
        with _any_queue(db, "checkpoint") as q:
            before = _unwrap(q.stats())
            _unwrap(q.perform_checkpoint())
            after = _unwrap(q.stats())
        click.echo(f"checkpointed {db}: WAL {_size(before.wal_bytes)} -> {_size(after.wal_bytes)}")

    @main.command()
    @db_arg
    def check(db: str) -> None:
        """Check the integrity of DB (exit 1 when damaged).

        Runs SQLite's integrity check and lists the problems it finds.

        \b
        Example:
          sqqueue check jobs.db || sqqueue salvage jobs.db rescued.db
        """
        _require_db(db)
        try:
            problems = tools.check(db)
        except QueueError as exc:
            raise CliError(str(exc)) from None
        if problems:
            for problem in problems:
                click.echo(problem)
            raise CliError(
                f"{db} is damaged ({len(problems)} problem(s)); "
                f"`sqqueue salvage {db} NEW.db` copies every readable message"
            )
        click.echo(f"ok: {db} passed the integrity check")

    @main.command()
    @click.argument("source", metavar="SRC")
    @click.argument("target", metavar="DST")
    def salvage(source: str, target: str) -> None:
        """Copy every readable message of SRC into a new file DST.

        SRC is only read. Every column of every readable row is kept (ids, priorities,
        attempts, errors, groups, times to live); dead letters, kept history and dedup
        keys come along; messages that were being processed come back pending.

        \b
        Example:
          sqqueue salvage jobs.db rescued.db && sqqueue check rescued.db
        """
        _require_db(source)
        try:
            report = tools.salvage(source, target)
        except (QueueError, ValueError) as exc:
            raise CliError(str(exc)) from None
        for name in sorted(report.copied):
            click.echo(
                f"{name}: {report.copied[name]} message(s), "
                f"{report.dead_copied.get(name, 0)} dead letter(s)"
            )
        for problem in report.errors:
            click.echo(f"warning: {problem}", err=True)
        click.echo(f"salvaged into {target}; {report.lost_rows} unreadable row(s) skipped")

    @main.command()
    @db_arg
    @click.option("--sql", "print_sql", is_flag=True, help="Print the DDL instead of migrating.")
    @click.option(
        "--queue",
        "queues",
        multiple=True,
        metavar="NAME",
        help="With --sql: the queue(s) to print the DDL of (repeatable).",
    )
    def migrate(db: str, print_sql: bool, queues: tuple[str, ...]) -> None:
        """Migrate the queues of DB to the current layout now, or print the DDL (--sql).

        Without --sql, migrates sqqueue 0.1.0 queues and upgrades queues of an older
        sqqueue, and prints their names: opening a queue for use does that anyway; this
        does them all at once, before a deploy. It is the only command that changes the
        layout of a file (commands that only look change nothing). With --sql, DB is a path
        or a URL (sqlite:///... or postgresql://...) that only picks the dialect: nothing
        is opened, and the statements that create each --queue are printed, for teams
        that apply schema changes themselves.

        \b
        Example:
          sqqueue migrate jobs.db
          sqqueue migrate --sql postgresql://db.internal/app --queue emails > emails.sql
        """
        if print_sql:
            dialect = "postgresql" if db.startswith(("postgresql://", "postgres://")) else "sqlite"
            if not queues:
                raise click.UsageError("--sql needs at least one --queue NAME")
            try:
                for name in queues:
                    for statement in tools.schema_sql(dialect, name):
                        click.echo(statement + ";\n")
            except (QueueError, ValueError) as exc:
                raise CliError(str(exc)) from None
            return
        _require_db(db)
        try:
            done = tools.migrate(db)
        except (QueueError, ValueError) as exc:
            raise CliError(str(exc)) from None
        if not done:
            click.echo(f"nothing to migrate: every queue in {db} has the current layout")
        for name in done:
            click.echo(name)

    @main.command()
    @click.argument("source", metavar="SRC_URL")
    @click.argument("target", metavar="DST_URL")
    @click.argument("queues", metavar="[QUEUE]...", nargs=-1)
    @click.option(
        "--resume",
        is_flag=True,
        help="Finish a copy that stopped part-way: copy what the target queues lack.",
    )
    def copy(source: str, target: str, queues: tuple[str, ...], resume: bool) -> None:
        """Copy queues from SRC_URL to DST_URL (SQLite to PostgreSQL, or back).

        Every column of every message is copied (in-flight ones arrive pending), with the
        dead letters, kept history and dedup keys; SRC is only read. Every queue is
        checked before anything is written: each target queue must be empty, or already
        hold a copy (skipped), or, with --resume, part of one. The counts are checked
        after each queue.

        \b
        Example:
          sqqueue copy sqlite:///jobs.db postgresql://app@db.internal/app emails
          sqqueue copy sqlite:///jobs.db postgresql://app@db.internal/app --resume
        """
        for url in (source, target):
            if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
                raise click.UsageError(
                    f"{url!r} is not a URL: use sqlite:///path.db or postgresql://..."
                )
        if source.startswith("sqlite:///"):
            _require_db(source[len("sqlite:///") :])
        with _progress("copying", known_total=True) as update:
            try:
                report = tools.copy_queues(
                    source,
                    target,
                    queues or None,
                    progress=lambda _name, done, total: update(done, total),
                    resume=resume,
                )
            except (QueueError, ValueError, ImportError) as exc:
                raise CliError(str(exc)) from None
        for name, counts in report.items():
            line = f"{name}: {counts['messages']} message(s), {counts['dead']} dead letter(s)"
            if counts.get("done"):
                line += f", {counts['done']} completed kept"
            if counts.get("dedup"):
                line += f", {counts['dedup']} dedup key(s)"
            if counts["already"] and counts["already"] == counts["messages"] + counts["dead"]:
                line += " (already copied: nothing to do)"
            elif counts["already"]:
                line += f" ({counts['already']} were there already)"
            click.echo(line)

    # -- running things ------------------------------------------------------------------------

    @main.command()
    @click.option(
        "--jobs", type=click.IntRange(1, 100_000), default=200, show_default=True, metavar="N"
    )
    @click.option("--db", "db_path", metavar="PATH", help="Database file (a new temporary one).")
    @click.pass_context
    def demo(ctx: click.Context, jobs: int, db_path: str | None) -> None:
        """Run a producer and two consumer processes on one file.

        It accounts for every job at the end (exit 1 if one is missing).

        \b
        Example:
          sqqueue demo --jobs 50
        """
        from . import demo as demo_module

        argv = ["--jobs", str(jobs)] + (["--db", db_path] if db_path else [])
        code = demo_module.main(argv)
        if code:
            ctx.exit(1)

    @main.command("config")
    @click.option("--queue", "queue", metavar="NAME", help="Include [queues.NAME] settings.")
    @as_json
    def config_cmd(queue: str | None, as_json: bool) -> None:
        """Show each setting's value and where it came from.

        Precedence: argument > environment (SQQUEUE_<SETTING>) > config file > default.
        The file is $SQQUEUE_CONFIG, else ./sqqueue.toml, else [tool.sqqueue] in
        ./pyproject.toml; [queues.NAME] tables override it for one queue.

        \b
        Example:
          sqqueue config --queue emails
          SQQUEUE_DEFAULT_MAX_ATTEMPTS=10 sqqueue config
        """
        explicit: dict[str, Any] = {}
        if queue is not None:
            explicit["table_name"] = _check_name(queue)
        try:
            found = find_config_file()
            resolved = resolve(explicit)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        config_file = str(found[0]) if found else None
        if as_json:
            settings = {
                name: {"value": resolved.values[name], "source": resolved.sources[name]}
                for name in SETTINGS
            }
            click.echo(_dumps({"config_file": config_file, "settings": settings}))
            return
        click.echo(f"config file: {config_file or 'none'}")
        table = _table(None)
        table.add_column("setting", no_wrap=True)
        table.add_column("value", no_wrap=True)
        table.add_column("source", no_wrap=True)
        table.add_column("meaning")
        for name, setting in SETTINGS.items():
            value = resolved.values[name]
            if isinstance(value, RetryPolicy):
                shown = _retry_text(value)
            else:
                shown = "-" if value is None else str(value)
            source = resolved.sources[name]
            if source.startswith("file "):
                source = "file"  # the path is on the first line
            table.add_row(name, shown, source, setting.help)
        _console().print(table)

    @main.command("worker")
    @click.argument("target", metavar="MODULE:FUNC DB QUEUE | MODULE:TASKS")
    @click.argument("db", metavar="", required=False)
    @click.argument("queue", metavar="", required=False)
    @click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True)
    @click.option(
        "--visibility-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="SECONDS",
        help="Lease length; a heartbeat extends it while the handler runs.",
    )
    @click.option(
        "--task-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="SECONDS",
        help="Fail a message whose handler runs longer.",
    )
    @click.option(
        "--grace-period",
        type=click.FloatRange(min=0),
        default=30.0,
        show_default=True,
        metavar="SECONDS",
        help="At shutdown, how long running handlers may finish.",
    )
    @click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        default=None,
        metavar="PORT",
        help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics.",
    )
    @click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
    )
    def worker_cmd(
        target: str,
        db: str | None,
        queue: str | None,
        concurrency: int,
        visibility_timeout: float | None,
        task_timeout: float | None,
        grace_period: float,
        metrics_port: int | None,
        log_level: str,
    ) -> None:
        """Run MODULE:FUNC for every message of QUEUE, or every task of MODULE:TASKS.

        It runs until SIGTERM or Ctrl-C. MODULE:TASKS names a sqqueue.Tasks object: it
        knows its database and queues (serve them all, --concurrency handlers each) and
        its periodic tasks (this worker schedules them too).

        The handler gets a sqqueue.Message: returning completes it, raising fails it (it
        is retried, then dead-lettered). An `async def` handler runs on an asyncio loop.
        The first SIGTERM/SIGINT stops taking messages and lets running ones finish
        within --grace-period; a second one stops at once. MODULE is imported from the
        working directory too.

        \b
        Example:
          sqqueue worker tasks:send_email jobs.db emails --concurrency 4 --metrics-port 9464
          sqqueue worker myapp.jobs:tasks --concurrency 4
        """
        handler = _load_handler(target)
        if isinstance(handler, Tasks):
            if db is not None or queue is not None:
                raise CliError(
                    f"{target} is a Tasks object: it knows its database and queues, so give "
                    "no DB or QUEUE",
                    2,
                )
        elif db is None or queue is None:
            raise CliError(f"{target} is a handler: give the DB and QUEUE it serves", 2)
        if not logging.getLogger().handlers:
            logging.basicConfig(
                level=log_level.upper(),
                stream=sys.stderr,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
        options: dict[str, Any] = {
            "concurrency": concurrency,
            "visibility_timeout": visibility_timeout,
            "task_timeout": task_timeout,
            "grace_period": grace_period,
        }
        if isinstance(handler, Tasks):
            _summary(_run_tasks(handler, options, metrics_port))
            return
        assert db is not None
        name = _check_name(queue or "")
        server = None
        with _open(db, name, create=True) as q:
            try:
                if metrics_port is not None:
                    server, options["durations"] = _start_metrics(
                        db, metrics_port, "127.0.0.1", [name], with_durations=True
                    )
                    click.echo(f"metrics on {_metrics_url(server, '127.0.0.1')}", err=True)
                if inspect.iscoroutinefunction(handler):
                    from .aio import AsyncWorker

                    async_worker = AsyncWorker(q, handler, **options)
                    stats = asyncio.run(async_worker.run())
                else:
                    stats = Worker(q, handler, **options).run()
            except ValueError as exc:
                raise CliError(str(exc)) from None
            finally:
                if server is not None:
                    server.shutdown()
                    server.server_close()
        _summary([stats])

    def _summary(stats: list[WorkerStats]) -> None:
        def total(field: str) -> int:
            return sum(getattr(s, field) for s in stats)

        click.echo(
            f"worker stopped: {total('completed')} completed, {total('failed')} failed "
            f"({total('dead_lettered')} dead-lettered, {total('timed_out')} timed out), "
            f"{total('released')} released, {total('requeued')} requeued at shutdown",
            err=True,
        )

    @main.command("dashboard")
    @click.argument("target", metavar="TARGET")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
    @click.option("--port", type=click.IntRange(0, 65535), default=8844, show_default=True)
    @click.option("--read-only", is_flag=True, help="Hide and refuse every action.")
    @click.option("--token-file", metavar="PATH", help="Read the login token from PATH.")
    @click.option("--schema", metavar="NAME", help="PostgreSQL schema of the queues.")
    def dashboard(target: str, host: str, port: int, read_only: bool,
                  token_file: str | None, schema: str | None) -> None:  # fmt: skip
        """Serve a web dashboard of every queue in TARGET (an SQLite file or a
        postgresql:// URL) until Ctrl-C. Needs: pip install 'sqqueue[dashboard]'.

        The token is $SQQUEUE_DASHBOARD_TOKEN, the --token-file, or one made up and
        printed now; a --host other than loopback needs one of the first two.

        \b
        Example:
          sqqueue dashboard jobs.db --port 8844
        """
        try:
            from .dashboard.server import DashboardError, serve
        except ImportError as exc:
            raise CliError(str(exc), 2) from None
        try:
            serve(target, host=host, port=port, read_only=read_only,
                  token_file=token_file, schema=schema)  # fmt: skip
        except DashboardError as exc:
            raise CliError(str(exc), exc.code) from None

    def _run_tasks(
        tasks: Tasks, options: dict[str, Any], metrics_port: int | None
    ) -> list[WorkerStats]:
        server = None
        try:
            if metrics_port is not None:
                try:
                    from .tasks.prometheus import serve
                except ImportError as exc:
                    raise CliError(str(exc)) from None
                try:
                    server, options["durations"] = serve(tasks, metrics_port)
                except OSError as exc:
                    raise CliError(f"cannot serve metrics on port {metrics_port}: {exc}") from None
                click.echo(f"metrics on {_metrics_url(server, '127.0.0.1')}", err=True)
            return list(tasks.run_worker(**options).values())
        except (ValueError, QueueError) as exc:
            raise CliError(str(exc)) from None
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
            tasks.close()

    @main.group()
    def metrics() -> None:
        """Serve Prometheus metrics for the queues of a file.

        \b
        Example:
          sqqueue metrics serve jobs.db --port 9464
        """

    @metrics.command("serve")
    @db_arg
    @click.option("--port", type=click.IntRange(0, 65535), default=9464, show_default=True)
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
    @click.option(
        "--queue", "queues", multiple=True, metavar="NAME", help="Only this queue (repeatable)."
    )
    def metrics_serve(db: str, port: int, host: str, queues: tuple[str, ...]) -> None:
        """Serve /metrics for the queues of DB until Ctrl-C or SIGTERM.

        It only reads the file; every scrape reads each queue's counters.

        \b
        Example:
          sqqueue metrics serve jobs.db --port 9464 --queue emails
          curl -s http://127.0.0.1:9464/metrics | grep sqqueue_messages
        """
        _require_db(db)
        names = [_check_name(name) for name in queues]
        if names:
            known = set(_queue_names(db)) | set(_legacy_names(db))
            missing = [name for name in names if name not in known]
            if missing:
                raise CliError(f"no queue {missing[0]!r} in {db}")
        server, _ = _start_metrics(db, port, host, names or None, with_durations=False)
        stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda _n, _f: stop.set())
        click.echo(f"serving {_metrics_url(server, host)} for {db} (Ctrl-C to stop)")
        sys.stdout.flush()
        try:
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.shutdown()
            server.server_close()

    cli_security.register(main, CliError)
    return main


if _HAVE_DEPS:
    main: click.Group = _build()
else:  # pragma: no cover - depends on the install
    main = _missing_deps  # type: ignore[assignment]


if __name__ == "__main__":
    main(prog_name="sqqueue")
