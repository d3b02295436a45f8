"""What every command shares: errors and exit codes, the shared options, opening a
database and its queues, and rendering (tables, JSON, times and sizes).

Everything here is plain functions; the commands (one module per group of them) call
them through this module, so that tests can replace the few hooks that look at the
terminal (``stdin_interactive``, ``show_progress``, ``pause``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import re
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
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

from .. import tools
from ..exceptions import ErrorKind, QueueError
from ..message import Message
from ..names import validate_queue_name, validate_schema_name
from ..queue import LISTABLE_STATES, PURGEABLE_STATES, Queue, connect, list_queues
from ..result import Err, Result
from ..retry import RetryPolicy
from ..targets import parse_target, redact

LIST_STATES = LISTABLE_STATES
PURGE_STATES = PURGEABLE_STATES
LIVE_STATES = ("ready", "delayed", "waiting", "processing")  # what purge takes by default
BINARY_HINT = (
    'to enqueue binary data, give it as JSON {"$bytes": "<base64>"} with --json '
    '(e.g. base64 -w0 FILE | sed \'s/.*/{"$bytes": "&"}/\')'
)

T = TypeVar("T")


class FiniteRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf``, which it lets through
    (``--watch nan`` would reach ``time.sleep``)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return number


#: the largest id a database holds (SQLite's largest integer, PostgreSQL's bigint)
MAX_ID = 2**63 - 1
#: the exit status of a command stopped by Ctrl-C (SIGINT), as shells report it (128 + 2)
INTERRUPTED = 130


class CliError(Exception):
    """An expected failure: one ``error: ...`` line on stderr and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- small helpers (no click needed) ----------------------------------------------------------


#: a password in a PostgreSQL URL or connection string quoted in an error, whoever wrote it
_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@")
_PARAM_PASSWORD = re.compile(r"(?i)\b((?:ssl)?password=)[^&\s'\"]*")


def one_line(text: object) -> str:
    """An error as one line, with any password it quotes masked."""
    flat = " ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return _PARAM_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", flat))


#: what the library says before a call's error: ``fail_message failed: ...``, and for
#: one item of a batch, ``item 3: ...``
_FAILED = re.compile(r"^(?:[a-z_]+ failed: )?(?:item \d+: )?(?P<detail>.*)$", re.DOTALL)
_CALL_FAILED = re.compile(r"^[a-z_]+ failed: ")


def usage_error(error: object, options: Mapping[str, str]) -> CliError | None:
    """Bad usage (exit 2) naming the option, when ``error`` is the library refusing the
    value of one of ``options`` (its parameter names, to the options that give them:
    ``{"max_attempts": "--max-attempts"}``); else None. The library checks its limits
    itself: the command passes them on rather than keep a copy of each."""
    if not isinstance(error, QueueError) or error.kind is not ErrorKind.INVALID_INPUT:
        return None
    match = _FAILED.match(str(error))
    name, _, rest = (match["detail"] if match else "").partition(" ")
    if name not in options or not rest.startswith("must "):
        return None
    return CliError(f"{options[name]} {rest.removesuffix('; nothing was enqueued')}", 2)


def unwrap(
    result: Result[T, Any], command: str | None = None, options: Mapping[str, str] | None = None
) -> T:
    """The value of an ``Ok``; an ``Err`` becomes a one-line error (exit 1), said as
    ``COMMAND failed: ...`` rather than by the library's method name when ``command``
    is given; or bad usage (exit 2), when it refuses the value of one of ``options``
    (see ``usage_error``)."""
    if not isinstance(result, Err):
        return result.value
    usage = usage_error(result.error, options or {})
    if usage is not None:
        raise usage
    text = str(result.error)
    if command is not None:
        text = _CALL_FAILED.sub(lambda _m: f"{command} failed: ", text, count=1)
    raise CliError(text)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, RetryPolicy):
        return retry_text(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot represent {type(value).__name__} as JSON")


def dumps(data: Any, indent: int | None = 2) -> str:
    """JSON text, non-ASCII characters as they are; all ASCII (``\\uXXXX`` escapes, which
    every JSON reader takes back) when stdout could not write it as it is: a lone
    surrogate stored by a Python producer, or a character stdout's encoding lacks."""
    text = json.dumps(data, default=_json_default, indent=indent, ensure_ascii=False)
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = json.dumps(data, default=_json_default, indent=indent, ensure_ascii=True)
    return text


def escape_output_errors() -> None:
    """Let stdout and stderr escape what their encoding cannot write (``\\ud800``), so
    that no stored text makes a command fail half-way, e.g. after a dequeue leased the
    message it could not print."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):  # (closed, or not reconfigurable)
                reconfigure(errors="backslashreplace")


#: what a terminal would act on rather than show: C0 controls, DEL, C1 controls (and
#: lone surrogates, which no terminal can show)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str, keep: str = "") -> str:
    """Text as a terminal shows it safely: control characters but those in ``keep``
    escaped as Python writes them (``\\x1b``, ``\\r``), so that a payload or an error
    cannot move the cursor, clear the screen or retitle the window. (``--json`` output
    keeps the exact text, in JSON's own escapes.)"""
    return _CONTROL.sub(lambda m: m.group() if m.group() in keep else repr(m.group())[1:-1], text)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON (Python's json module reads it; nothing else does)")


def _finite(number: str) -> float:
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(f"{number} is too large for a number (it would be infinity)")
    return value


def parse_json_payload(text: str) -> Any:
    """A JSON payload; ``{"$bytes": "<base64>"}`` (what ``--json`` output uses) is bytes.
    Raises ValueError for text that is not JSON: also ``NaN`` and ``Infinity``, a number
    too large for a float (``1e400``), and nesting too deep to read."""
    try:
        value = json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None
    if isinstance(value, dict) and set(value) == {"$bytes"} and isinstance(value["$bytes"], str):
        return base64.b64decode(value["$bytes"], validate=True)
    return value


def is_utf8(text: str) -> bool:
    """Whether text from the command line is real text (undecodable bytes in argv come
    through as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def batch_error(text: str, numbers: list[int]) -> str:
    """An enqueue_batch error as the command speaks: its item number becomes the line of
    stdin it came from, and the method's name goes."""
    text = text.removeprefix("enqueue_batch failed: ")
    match = re.match(r"item (\d+): (.*?)(; nothing was enqueued)?$", text)
    if match is None or int(match.group(1)) >= len(numbers):
        return f"enqueue failed: {text}"
    return f"line {numbers[int(match.group(1))]}: {match.group(2)}"


def stdin_lines() -> Iterator[bytes]:
    """Standard input line by line, as bytes: each line is decoded (and refused if it is
    not UTF-8) by the caller, whatever the locale says."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return iter(buffer)
    return (line.encode("utf-8", "surrogateescape") for line in sys.stdin)


def _waitable_stdin() -> int | None:
    """The descriptor of stdin, when a read of it can be waited for with a timeout: a
    pipe, a file or a terminal on POSIX (Windows' select takes sockets only)."""
    if os.name == "nt":  # pragma: no cover - depends on the platform
        return None
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # (replaced by a stream without one)
        return None


class StdinReader:
    """Standard input line by line, as bytes (see ``stdin_lines``), with a timeout: so
    that a slow producer (``tail -f``) can have what it sent committed without waiting
    for a full batch. Where stdin cannot be waited on, a read waits as long as it takes."""

    def __init__(self) -> None:
        self._fd = _waitable_stdin()
        self._blocking = stdin_lines() if self._fd is None else iter(())
        self._lines: deque[bytes] = deque()
        self._partial = bytearray()  # a line not ended yet
        self._ended = False

    def read(self, timeout: float | None) -> bytes | None:
        """The next line, with its newline; ``b""`` at the end of input; None when no
        whole line came within ``timeout`` seconds (None: no limit)."""
        fd = self._fd
        if fd is None:
            return next(self._blocking, b"")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._lines:
            if self._ended:
                last = bytes(self._partial)  # (the last line, without a newline)
                self._partial.clear()
                return last
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self._ended = True
                continue
            *whole, rest = chunk.split(b"\n")
            if whole:
                whole[0] = bytes(self._partial) + whole[0]
                self._partial = bytearray(rest)
                self._lines.extend(line + b"\n" for line in whole)
            else:
                self._partial += rest
        return self._lines.popleft()


@contextlib.contextmanager
def interrupts_after() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block is done, then raise it: a commit is made
    and counted, or not made, never made and left uncounted. (Only where SIGINT raises
    KeyboardInterrupt: in the main thread, unless it is ignored or handled otherwise.)"""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def retry_text(policy: RetryPolicy) -> str:
    if policy.kind == "immediate":
        return "immediate"
    if policy.kind == "fixed":
        return f"fixed:{policy.base:g}"
    text = f"{policy.kind}:{policy.base:g}:{policy.cap:g}"
    if policy.kind == "exponential" and (policy.factor != 2.0 or not policy.jitter):
        text += f" (factor {policy.factor:g}, jitter {'on' if policy.jitter else 'off'})"
    return text


def fmt_when(value: datetime | str | None) -> str:
    """ISO-8601 in UTC to the second, for tables: ``2026-01-31T09:15:00Z``. (A stored time
    that cannot be read comes as the library's ``<invalid: ...>`` marker, shown as is.)"""
    if value is None:
        return "-"
    if not isinstance(value, datetime):
        return str(value)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fmt_age(seconds: float | None) -> str:
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


def fmt_size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


def payload_text(payload: Any) -> str:
    """A payload for humans: text as it is, anything else as compact JSON."""
    if isinstance(payload, str):
        return payload
    return dumps(payload, indent=None)


def clip(text: str | None, width: int) -> str:
    """Text for a table cell: on one line, control characters escaped, cut to ``width``."""
    if not text:
        return "-"
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def message_dict(message: Message) -> dict[str, Any]:
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


def stream_is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def stdin_interactive() -> bool:
    """Whether someone can answer a question on stdin (tests replace this)."""
    return stream_is_tty(sys.stdin)


def show_progress() -> bool:
    """Progress bars go to stderr, and only when it is a terminal (tests replace this)."""
    return stream_is_tty(sys.stderr)


def make_console() -> Console:
    """stdout for tables: the terminal's width, or wide enough not to wrap in a pipe.
    Text is shown as it is: rich would read ``[...]`` in a payload, an error or a path as
    its markup, hiding it or failing on it."""
    console = Console(markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160, markup=False)
    return console


def pause(seconds: float) -> None:
    """The wait between two ``--watch`` refreshes (tests replace this)."""
    time.sleep(seconds)


@contextlib.contextmanager
def progress_bar(description: str, known_total: bool) -> Iterator[Callable[[int, int | None], Any]]:
    """Yield ``update(done, total)``: a rich progress bar on a terminal, nothing when piped."""
    if not show_progress():
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


# -- opening databases and queues --------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """A TARGET argument: an SQLite file (a path or ``sqlite:///`` URL) or a PostgreSQL
    URL, with the ``--schema`` its queues live in (PostgreSQL only)."""

    given: str  #: as typed: what the library is given
    kind: str  #: "sqlite" or "postgresql"
    location: str  #: the file path, or the URL
    schema: str | None = None

    @property
    def is_postgres(self) -> bool:
        return self.kind == "postgresql"

    @property
    def shown(self) -> str:
        """How messages name it: the path, or the URL without its password."""
        if not self.is_postgres:
            return self.given
        text = redact(self.location)
        return f"{text} (schema {self.schema})" if self.schema else text

    @property
    def typed(self) -> str:
        """The TARGET (and --schema) as typed again in a command this one suggests,
        without the password."""
        if not self.is_postgres:
            return self.given
        text = redact(self.location)
        return f"{text} --schema {self.schema}" if self.schema else text


def database(target: str, schema: str | None = None) -> Database:
    """Parse a TARGET argument (and ``--schema``); a bad one is a usage error."""
    try:
        kind, location = parse_target(target)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    if schema is not None:
        if kind != "postgresql":
            raise CliError(
                "--schema applies to a postgresql:// URL only: an SQLite file has no schemas",
                2,
            )
        try:
            validate_schema_name(schema)
        except ValueError as exc:
            raise CliError(f"--schema: {exc}", 2) from None
    return Database(target, kind, location, schema)


def sqlite_only(db: Database, what: str, instead: str) -> None:
    """Refuse (exit 2) a command that only means something for an SQLite file."""
    if db.is_postgres:
        raise CliError(f"{what}; {instead}", 2)


def require_db(db: Database) -> None:
    """Read-only commands never create a file: fail when there is none. (A PostgreSQL
    database is there or not when it is first asked.)"""
    if db.is_postgres:
        return
    path = Path(db.location)
    if path.is_dir():
        raise CliError(f"{db.shown} is a directory, not a database file")
    if not path.is_file():
        raise CliError(f"no database at {db.shown}")


def check_name(queue: str) -> str:
    try:
        return validate_queue_name(queue)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None


def queue_names(db: Database) -> list[str]:
    """The queues of the database; a ``--schema`` that does not exist is an error (it
    holds no queue, as an empty one would: said as missing, and never created)."""
    names = unwrap(list_queues(db.given, schema=db.schema))
    if not names:
        require_schema(db)
    return names


def require_schema(db: Database) -> None:
    """Fail (exit 1, as for a missing file) when the ``--schema`` of a PostgreSQL target
    does not exist: commands that look never create one."""
    if not db.is_postgres or db.schema is None:
        return
    try:
        there = tools.schema_exists(db.given, db.schema)
    except (QueueError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if not there:
        raise _no_schema(db)


def _no_schema(db: Database) -> CliError:
    """The error for a ``--schema`` that does not exist, with how one is made."""
    url = redact(db.location)
    return CliError(
        f"no schema {db.schema!r} in {url}: check --schema; a schema is created with its "
        f"first queue (sqqueue enqueue {url} QUEUE PAYLOAD --schema {db.schema}), or by a "
        f"role that may create schemas (CREATE SCHEMA {db.schema})"
    )


def refuse_if_not_a_database(db: Database) -> None:
    """CliError for a target that is a file but no SQLite database (or a damaged one), or
    a PostgreSQL ``--schema`` that does not exist: no later try can read it. Any other
    failure to list its queues may pass."""
    listed = list_queues(db.given, schema=db.schema)
    if isinstance(listed, Err):
        if listed.error.kind is ErrorKind.CORRUPT:
            raise CliError(str(listed.error))
        return
    if listed.value or not db.is_postgres or db.schema is None:
        return
    try:
        there = tools.schema_exists(db.given, db.schema)
    except (QueueError, ValueError):
        return  # (a server that stopped answering meanwhile: it may come back)
    if not there:
        raise _no_schema(db)


def legacy_names(db: Database) -> list[str]:
    """Queues still in sqqueue 0.1.0's layout (an SQLite file's only: 0.1.0 had no
    PostgreSQL)."""
    if db.is_postgres:
        return []
    try:
        return tools.legacy_queues(db.location)
    except QueueError as exc:
        raise CliError(str(exc)) from None


def legacy_hint(db: Database, legacy: list[str]) -> str:
    """What to say of the 0.1.0 queues of a database, when it has any."""
    if not legacy:
        return ""
    return (
        f"; sqqueue 0.1.0 queues: {', '.join(legacy)}, to migrate with `sqqueue migrate {db.typed}`"
    )


def require_queue(db: Database, name: str, hint: str = "") -> None:
    """Fail unless the database holds a queue ``name``, listing the queues it does hold
    (0.1.0 queues too: a name among them is there, to be migrated)."""
    require_db(db)
    known = queue_names(db)
    legacy = legacy_names(db)
    if name not in known and name not in legacy:
        there = ", ".join(known) if known else "none"
        raise CliError(
            f"no queue {name!r} in {db.shown} (queues there: {there}"
            f"{legacy_hint(db, legacy)}){hint}"
        )


def open_queue(db: Database, queue: str, *, create: bool = False, read_only: bool = False) -> Queue:
    """Open a queue; unless ``create``, the database and the queue must exist already. A
    ``read_only`` queue changes nothing (commands that only look use it)."""
    name = check_name(queue)
    if not create:
        require_queue(db, name)
    settings: dict[str, Any] = {"read_only": read_only}
    if db.is_postgres:
        settings["schema"] = db.schema
    try:
        return connect(db.given, name, **settings)
    except (ValueError, QueueError) as exc:
        raise CliError(str(exc)) from None


def dead_letter(queue: Queue, message_id: int) -> dict[str, Any] | None:
    """The dead letter with this id, or None (one indexed page of the dead-letter queue)."""
    if not 1 <= message_id <= MAX_ID:
        return None
    page = unwrap(queue.list_messages("dead", limit=1, after_id=message_id - 1))
    return page[0] if page and page[0]["id"] == message_id else None


# -- rendering ----------------------------------------------------------------------------------


def messages_table(title: str, entries: list[dict[str, Any]], width: int) -> Table:
    """Messages as rows; narrow terminals leave out the enqueue time (--json has it all)."""
    wide = width >= 110
    table = new_table(title)
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
            cells.append(fmt_when(entry.get("enqueued_at") or entry.get("created_at")))
        cells += [
            fmt_when(moment),
            clip(entry.get("last_error"), 80),
            clip(payload_text(entry["payload"]), 120),
        ]
        table.add_row(*cells)
    return table


def print_page(title: str, entries: list[dict[str, Any]], limit: int, nothing: str) -> None:
    """One page of messages as a table (``nothing`` when empty), then how to ask for the
    next page when this one is full."""
    if not entries:
        click.echo(nothing)
        return
    console = make_console()
    console.print(messages_table(title, entries, console.width))
    if len(entries) == limit:
        click.echo(f"next page: --after {entries[-1]['id']}")


def new_table(title: str | None) -> Table:
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )


def detail_text(fields: list[tuple[str, object]]) -> str:
    """``label: value`` lines (peek, dlq show): a value of several lines is indented under
    its first, and control characters but newlines and tabs are escaped."""
    width = max(len(label) for label, _ in fields) + 1
    lines = []
    for label, value in fields:
        if isinstance(value, datetime):
            text = value.isoformat()
        elif value is None:
            text = "-"
        else:
            text = str(value)
        text = printable(text, keep="\n\t").replace("\n", "\n" + " " * (width + 1))
        lines.append(f"{label + ':':<{width}} {text}")
    return "\n".join(lines)


def pretty_payload(payload: Any) -> str:
    if isinstance(payload, str):
        return payload
    return dumps(payload)


# -- the group and the shared options ----------------------------------------------------------


class SqqueueGroup(click.Group):
    """Turns a CliError raised by any command into ``error: ...`` and its exit code, and
    Ctrl-C into ``error: interrupted`` and exit code 130 (not click's ``Aborted!``, 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            click.echo(f"error: {printable(one_line(exc))}", err=True)
            ctx.exit(exc.code)
        except KeyboardInterrupt:
            # (Commands that run until Ctrl-C stop on it themselves, with status 0.)
            click.echo("error: interrupted", err=True)
            ctx.exit(INTERRUPTED)


as_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
db_arg = click.argument("target", metavar="TARGET")
schema_opt = click.option(
    "--schema",
    metavar="NAME",
    help="PostgreSQL: the schema the queues live in (else the server's search path).",
)
queue_arg = click.argument("queue", metavar="QUEUE")
id_arg = click.argument("message_id", metavar="ID", type=click.IntRange(min=0))
yes_opt = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
older_opt = click.option(
    "--older-than",
    type=FiniteRange(min=0),
    metavar="SECONDS",
    help="Only messages enqueued more than SECONDS ago (dead letters: that died; kept "
    "completed ones: that were completed).",
)


def confirm(question: str, yes: bool) -> None:
    """Ask before deleting, unless ``yes``; refuse (exit 2) when nobody can answer. Ctrl-C
    at the question is an interrupt like any other (exit 130), not an answer; end of
    input (Ctrl-D) is a no (exit 1)."""
    if yes:
        return
    if not stdin_interactive():
        raise CliError(
            "refusing to delete without confirmation: stdin is not a terminal; "
            "pass --yes to confirm",
            2,
        )
    try:
        answer = click.confirm(question, default=False, err=True)
    except click.Abort as exc:
        # (click turns both Ctrl-C and end of input into Abort; the one it caught is the
        # exception's context.)
        click.echo(err=True)  # (the question is still on its line)
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise CliError("interrupted; nothing was deleted", INTERRUPTED) from None
        answer = False
    if not answer:
        raise CliError("aborted; nothing was deleted")
