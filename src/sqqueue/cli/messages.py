"""Looking at, feeding and draining the messages of a queue: ``stats``, ``ls``, ``peek``,
``enqueue``, ``dequeue``, ``complete``, ``fail`` and ``purge``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from rich.console import Group, RenderableType
from rich.live import Live

from ..message import Item
from ..queue import Queue
from ..result import Err
from ..stats import QueueStats
from . import base

CHUNK = 1000  # messages per enqueue_batch transaction when reading stdin
LATENCY = 1.0  # seconds a line read from stdin waits at most for its batch's commit

# The options of each command whose values the library checks, by its parameter names: a
# value it refuses is bad usage, said with the option's name (see base.usage_error).
ENQUEUE_OPTIONS = {
    "priority": "--priority",
    "delay": "--delay",
    "max_attempts": "--max-attempts",
    "ttl": "--ttl",
    "group": "--group",
    "dedup_key": "--dedup-key",
}
DEQUEUE_OPTIONS = {"visibility_timeout": "--visibility-timeout", "wait": "--wait"}
FAIL_OPTIONS = {"delay": "--delay", "error": "--error"}
PURGE_OPTIONS = {"older_than": "--older-than"}


_TOTAL_HEADERS = {
    "dead_lettered": "to DLQ",
    "lease_expirations": "lease exp.",
    "ttl_expired": "TTL exp.",
}


def _stats_view(db: base.Database, rows: list[QueueStats], legacy: list[str]) -> RenderableType:
    now = base.fmt_when(datetime.now(timezone.utc))
    if not rows:
        text = f"no sqqueue queues in {db.shown}"
        if legacy:
            text += f" (0.1.0 queues: {', '.join(legacy)}; run `sqqueue migrate {db.shown}`)"
        return text
    first = rows[0].to_dict()
    states = [key for key in ("ready", "delayed", "waiting", "processing", "dead") if key in first]
    totals = [key for key in first if key.endswith("_total")]
    counts_table = base.new_table(f"{db.shown} at {now}")
    counts_table.add_column("queue")
    for header in (*states, "oldest", "expiring"):
        counts_table.add_column(header, justify="right")
    totals_table = base.new_table("totals since creation")
    totals_table.add_column("queue")
    for key in totals:
        short = key.removesuffix("_total")
        totals_table.add_column(_TOTAL_HEADERS.get(short, short.replace("_", " ")), justify="right")
    for s in rows:
        data = s.to_dict()
        counts_table.add_row(
            s.queue,
            *(str(data[key]) for key in states),
            base.fmt_age(s.oldest_ready_age),
            str(s.expiring_soon),
        )
        totals_table.add_row(s.queue, *(str(data[key]) for key in totals))
    parts: list[RenderableType] = [counts_table, totals_table]
    if not db.is_postgres:  # a server's files are its own business
        files = f"file: {base.fmt_size(rows[0].db_bytes)}, WAL: {base.fmt_size(rows[0].wal_bytes)}"
        if rows[0].wal_frames_not_checkpointed:
            files += (
                f" ({rows[0].wal_frames_not_checkpointed} of {rows[0].wal_frames} frames not "
                "copied back yet: the next checkpoint does it, unless a connection still "
                "reads an old snapshot)"
            )
        parts.append(files)
    if legacy:
        parts.append(f"0.1.0 queues not migrated yet: {', '.join(legacy)}")
    return Group(*parts)


def _stats_json(db: base.Database, rows: list[QueueStats], legacy: list[str]) -> dict[str, Any]:
    """The stats document; on PostgreSQL the file sizes are null (no file of ours)."""
    db_bytes: int | None = None
    wal_bytes: int | None = None
    if not db.is_postgres:
        wal = Path(f"{db.location}-wal")
        db_bytes = rows[0].db_bytes if rows else os.path.getsize(db.location)
        wal_bytes = rows[0].wal_bytes if rows else (wal.stat().st_size if wal.is_file() else 0)
    queues = {s.queue: s.to_dict() for s in rows}
    if db.is_postgres:
        for counts in queues.values():
            counts.update(db_bytes=None, wal_bytes=None)
    return {
        "db": db.shown,
        "at": datetime.now(timezone.utc),
        "db_bytes": db_bytes,
        "wal_bytes": wal_bytes,
        "queues": queues,
        "legacy_queues": legacy,
    }


# -- looking -------------------------------------------------------------------------------


@click.command()
@base.db_arg
@base.schema_opt
@click.argument("queue", metavar="[QUEUE]", required=False)
@base.as_json
@click.option(
    "--watch",
    type=base.FiniteRange(min=0.1, max=86400),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh every SECONDS (2 by default) until Ctrl-C. Put it after TARGET and QUEUE "
    "(or write --watch=5). With --json, prints one JSON document per line.",
)
def stats(
    target: str, queue: str | None, as_json: bool, watch: float | None, schema: str | None
) -> None:
    """Counts, ages and totals of every queue in TARGET (or just QUEUE).

    Ready (can be dequeued now), delayed, waiting (behind an earlier message of their
    group), processing (leased) and dead messages, the age of the oldest ready message,
    leases expiring within 60 s, totals since each queue was created, and, for an SQLite
    file, the database and WAL file sizes (null in --json on PostgreSQL).

    \b
    Example:
      sqqueue stats jobs.db
      sqqueue stats jobs.db emails --json
      sqqueue stats jobs.db --watch 5
      sqqueue stats postgresql://app@db.internal/app --schema jobs
    """
    db = base.database(target, schema)
    base.require_db(db)
    opened: dict[str, Queue] = {}
    if queue is not None:
        opened[queue] = base.open_queue(db, queue, read_only=True)

    def snapshot() -> tuple[list[QueueStats], list[str]]:
        names = [queue] if queue is not None else base.queue_names(db)
        rows = []
        for name in names:
            if name not in opened:
                opened[name] = base.open_queue(db, name, read_only=True)
            rows.append(base.unwrap(opened[name].stats()))
        return rows, [] if queue is not None else base.legacy_names(db)

    console = base.make_console()
    try:
        if watch is None:
            rows, legacy = snapshot()
            if as_json:
                click.echo(base.dumps(_stats_json(db, rows, legacy)))
            else:
                console.print(_stats_view(db, rows, legacy))
            return
        with contextlib.suppress(KeyboardInterrupt):
            if as_json or not console.is_terminal:
                while True:  # until Ctrl-C
                    rows, legacy = snapshot()
                    if as_json:
                        click.echo(base.dumps(_stats_json(db, rows, legacy), indent=None))
                    else:
                        console.print(_stats_view(db, rows, legacy))
                    sys.stdout.flush()
                    base.pause(watch)
            else:
                with Live(console=console, auto_refresh=False) as live:
                    while True:  # until Ctrl-C
                        live.update(_stats_view(db, *snapshot()), refresh=True)
                        base.pause(watch)
    finally:
        for opened_queue in opened.values():
            opened_queue.close()


@click.command("ls")
@base.db_arg
@base.schema_opt
@base.queue_arg
@click.option(
    "--state",
    type=click.Choice(base.LIST_STATES),
    default="all",
    show_default=True,
    help="Which messages to list. all: every message not finished (not dead, not "
    "done); done: completed messages kept by the retention setting.",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, metavar="N")
@click.option(
    "--after",
    type=click.IntRange(0, base.MAX_ID),
    default=0,
    metavar="ID",
    help="Start after this id (the value printed at the end of the previous page).",
)
@base.as_json
def ls(
    target: str, queue: str, state: str, limit: int, after: int, as_json: bool, schema: str | None
) -> None:
    """List the messages of QUEUE by id, a page at a time.

    \b
    Example:
      sqqueue ls jobs.db emails --state dead --limit 20
      sqqueue ls jobs.db emails --state dead --limit 20 --after 140
    """
    db = base.database(target, schema)
    with base.open_queue(db, queue, read_only=True) as q:
        entries = base.unwrap(q.list_messages(state, limit=limit, after_id=after), "ls")
    next_after = entries[-1]["id"] if len(entries) == limit else None
    if as_json:
        click.echo(
            base.dumps(
                {"queue": queue, "state": state, "messages": entries, "next_after": next_after}
            )
        )
        return
    nothing = f"no {'' if state == 'all' else state + ' '}messages in queue {queue!r}"
    base.print_page(f"{queue}: {state} messages", entries, limit, nothing)


@click.command()
@base.db_arg
@base.schema_opt
@base.queue_arg
@base.as_json
def peek(target: str, queue: str, as_json: bool, schema: str | None) -> None:
    """Show the next message without taking it.

    The message the next dequeue would get; it stays where it is.

    \b
    Example:
      sqqueue peek jobs.db emails
    """
    db = base.database(target, schema)
    with base.open_queue(db, queue, read_only=True) as q:
        message = base.unwrap(q.peek())
    if as_json:
        click.echo(base.dumps(None if message is None else base.message_dict(message)))
    elif message is None:
        click.echo(f"queue {queue!r} has no message ready")
    else:
        click.echo(
            base.detail_text(
                [
                    ("id", message.id),
                    ("priority", message.priority),
                    ("attempts", f"{message.attempts}/{message.max_attempts}"),
                    ("enqueued at", message.enqueued_at),
                    ("last error", message.last_error),
                    ("payload", base.pretty_payload(message.payload)),
                ]
            )
        )


# -- producing and consuming ---------------------------------------------------------------


@click.command()
@base.db_arg
@base.schema_opt
@base.queue_arg
@click.argument("payload", metavar="PAYLOAD|-")
@click.option(
    "--json",
    "parse_json",
    is_flag=True,
    help='Parse each payload as JSON ({"$bytes": "<base64>"} becomes bytes).',
)
@click.option(
    "--priority",
    # The queue's range (a 32-bit integer): outside it, a usage error like any other.
    type=click.IntRange(-(2**31), 2**31 - 1),
    default=None,
    metavar="N",
    help="Higher is delivered first (-2147483648 to 2147483647).",
)
@click.option(
    "--delay", type=base.FiniteRange(min=0), default=0.0, metavar="SECONDS", help="Hold back."
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
    type=base.FiniteRange(min=0, min_open=True),
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
    target: str,
    queue: str,
    payload: str,
    parse_json: bool,
    priority: int | None,
    delay: float,
    max_attempts: int | None,
    ttl: float | None,
    group: str | None,
    dedup_key: str | None,
    schema: str | None,
) -> None:
    """Add a message (or one per line of stdin); prints its id.

    QUEUE (and an SQLite file) are created if needed.

    PAYLOAD is stored as text unless --json is given. With "-", every line of stdin is
    a message (blank lines are skipped), committed in transactions of 1000, at the end
    of input, and once a line has waited a second (slow input, as from tail -f, is
    committed as it comes); prints the count. Ctrl-C stops it (exit 130), saying how
    many messages were committed: the lines after those were not.

    \b
    Example:
      sqqueue enqueue jobs.db emails 'hello'
      sqqueue enqueue jobs.db emails '{"to": "ada@example.com"}' --json --priority 5
      jq -c '.[]' jobs.json | sqqueue enqueue jobs.db emails - --json
    """
    db = base.database(target, schema)
    if payload != "-":
        if not base.is_utf8(payload):
            raise base.CliError(f"PAYLOAD is not UTF-8 text; {base.BINARY_HINT}", 2)
        value: Any = payload
        if parse_json:
            try:
                value = base.parse_json_payload(payload)
            except ValueError as exc:
                raise base.CliError(f"PAYLOAD is not valid JSON: {exc}", 2) from None
        with base.open_queue(db, queue, create=True) as q:
            new_id = base.unwrap(
                q.enqueue(
                    value,
                    priority,
                    delay,
                    max_attempts,
                    dedup_key=dedup_key,
                    group=group,
                    ttl=ttl,
                ),
                options=ENQUEUE_OPTIONS,
            )
        click.echo(str(new_id))
        return
    if dedup_key is not None:
        raise base.CliError("--dedup-key needs a single PAYLOAD, not -", 2)
    with base.open_queue(db, queue, create=True) as q:
        total = _enqueue_stdin(
            q,
            queue,
            parse_json,
            lambda item: Item(item, priority, delay, max_attempts, group=group, ttl=ttl),
        )
    click.echo(f"enqueued {total} message(s) to queue {queue!r}")


_BLANK = object()  # a blank line of stdin, which is skipped


def _line_payload(raw: bytes, number: int, parse_json: bool, earlier: Callable[[], str]) -> Any:
    """The payload of line ``number`` of stdin, or ``_BLANK``. A line that is not UTF-8
    text, or not JSON with ``parse_json``, is bad usage: the error names the line, and
    ``earlier()`` says what earlier lines enqueued."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise base.CliError(
            f"line {number} is not UTF-8 text; {base.BINARY_HINT}; {earlier()}", 2
        ) from None
    if not text.strip():
        return _BLANK
    if not parse_json:
        return text
    try:
        return base.parse_json_payload(text)
    except ValueError as exc:
        raise base.CliError(f"line {number} is not valid JSON: {exc}; {earlier()}", 2) from None


def _enqueue_stdin(q: Queue, queue: str, parse_json: bool, make: Callable[[Any], Item]) -> int:
    """Enqueue a message per line of stdin into ``q``, the queue named ``queue`` (``make``
    turns a payload into its Item), in batches of ``CHUNK``; a batch is also committed
    once its first line has waited ``LATENCY`` seconds, so that a slow producer's lines
    (``tail -f``) do not wait for a full batch. Returns the count. Ctrl-C stops it: the
    error says how many messages, from which lines, were committed; the rest were not."""
    lines = base.StdinReader()
    total = 0  # messages committed
    through = 0  # the last line they come from
    number = 0
    batch: list[Item] = []
    numbers: list[int] = []  # the line number of each item of the batch
    first_read = 0.0  # when the batch's first line was read

    def earlier() -> str:
        return f"{total} message(s) from earlier lines were enqueued"

    with base.progress_bar("enqueueing", known_total=False) as update:

        def flush() -> None:
            nonlocal total, through
            if not batch:
                return
            with base.interrupts_after():  # (so that the count said is what was committed)
                result = q.enqueue_batch(batch)
                if isinstance(result, Err):
                    # (The options are the same for every line: a value refused is bad usage.)
                    usage = base.usage_error(result.error, ENQUEUE_OPTIONS)
                    if usage is not None:
                        raise base.CliError(f"{usage}; {earlier()}", usage.code)
                    raise base.CliError(
                        f"{base.batch_error(str(result.error), numbers)}; {earlier()}"
                    )
                total += len(result.value)
                through = numbers[-1]
            update(total, None)
            batch.clear()
            numbers.clear()

        try:
            while True:
                wait = max(0.0, first_read + LATENCY - time.monotonic()) if batch else None
                raw = lines.read(wait)
                if raw is None:  # the batch's first line has waited long enough
                    flush()
                    continue
                if not raw:
                    break
                number += 1
                item = _line_payload(raw, number, parse_json, earlier)
                if item is _BLANK:
                    continue
                if not batch:
                    first_read = time.monotonic()
                batch.append(make(item))
                numbers.append(number)
                if len(batch) >= CHUNK or time.monotonic() - first_read >= LATENCY:
                    flush()
            flush()
        except KeyboardInterrupt:
            done = f" (input lines 1 to {through})" if through else ""
            raise base.CliError(
                f"interrupted: {total} message(s) enqueued to queue {queue!r}{done}; "
                "the lines after those were not enqueued",
                base.INTERRUPTED,
            ) from None
    return total


@click.command()
@base.db_arg
@base.schema_opt
@base.queue_arg
@click.option(
    "--wait",
    type=base.FiniteRange(0, 86400),
    default=0.0,
    metavar="SECONDS",
    help="Wait up to SECONDS for a message.",
)
@click.option(
    "--visibility-timeout",
    type=base.FiniteRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Lease length (the queue's default otherwise).",
)
@base.as_json
def dequeue(
    target: str,
    queue: str,
    wait: float,
    visibility_timeout: float | None,
    as_json: bool,
    schema: str | None,
) -> None:
    """Lease the next message; prints "ID<TAB>PAYLOAD".

    Finish it with `sqqueue complete` or `sqqueue fail` before the lease runs out, or
    it is delivered again. Prints nothing (exit 0) when no message is ready; with
    --json, prints the message as an object, or null. Control characters of PAYLOAD
    (but newline and tab) print escaped (\\x1b); --json has the exact payload.

    \b
    Example:
      read -r id payload < <(sqqueue dequeue jobs.db emails --wait 30)
      [ -n "$id" ] && sqqueue complete jobs.db emails "$id"
    """
    db = base.database(target, schema)
    with base.open_queue(db, queue) as q:
        message = base.unwrap(
            q.dequeue(visibility_timeout=visibility_timeout, wait=wait), options=DEQUEUE_OPTIONS
        )
    if as_json:
        click.echo(base.dumps(None if message is None else base.message_dict(message)))
    elif message is None:
        if base.stream_is_tty(sys.stderr):
            click.echo(f"queue {queue!r} has no message ready", err=True)
    else:
        # The payload as it is for the program it is piped into; on a terminal, control
        # characters escaped, as in every text output (--json always has the exact text).
        text = base.payload_text(message.payload)
        if base.stream_is_tty(sys.stdout):
            text = base.printable(text, keep="\n\t")
        click.echo(f"{message.id}\t{text}", color=True)  # (color: click keeps the text whole)
        if base.stream_is_tty(sys.stderr):
            click.echo(
                f"leased until {base.fmt_when(message.lease_expires_at)}; finish it with: "
                f"sqqueue complete {db.typed} {queue} {message.id}",
                err=True,
            )


@click.command()
@base.db_arg
@base.schema_opt
@base.queue_arg
@base.id_arg
def complete(target: str, queue: str, message_id: int, schema: str | None) -> None:
    """Acknowledge a leased message: it is deleted for good.

    \b
    Example:
      sqqueue complete jobs.db emails 42
    """
    db = base.database(target, schema)
    with base.open_queue(db, queue) as q:
        base.unwrap(q.complete(message_id))
    click.echo(f"completed message {message_id}")


@click.command()
@base.db_arg
@base.schema_opt
@base.queue_arg
@base.id_arg
@click.option("--error", "error", metavar="TEXT", help="Why it failed (kept as last error).")
@click.option("--dlq", is_flag=True, help="Send it to the dead-letter queue at once.")
@click.option(
    "--delay",
    type=base.FiniteRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Retry after SECONDS (the queue's retry policy otherwise).",
)
def fail(
    target: str,
    queue: str,
    message_id: int,
    error: str | None,
    dlq: bool,
    delay: float | None,
    schema: str | None,
) -> None:
    """Record a failed attempt of a leased message.

    It is retried, or dead-lettered when it has used its attempts (or with --dlq).

    \b
    Example:
      sqqueue fail jobs.db emails 42 --error "smtp timeout"
      sqqueue fail jobs.db emails 42 --error "bad address" --dlq
    """
    db = base.database(target, schema)
    with base.open_queue(db, queue) as q:
        base.unwrap(
            q.fail_message(message_id, send_to_dlq=dlq, error=error, delay=delay),
            "fail",
            FAIL_OPTIONS,
        )
        dead = base.dead_letter(q, message_id) is not None
    if dead:
        click.echo(f"message {message_id} moved to the dead-letter queue")
    else:
        click.echo(f"message {message_id} failed; it will be retried")


@click.command()
@base.db_arg
@base.schema_opt
@base.queue_arg
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([*base.PURGE_STATES, "all"]),
    help="Which messages (repeatable). Default: ready, delayed, waiting and "
    "processing; pending: ready and delayed; all: those, dead letters and kept "
    "completed messages.",
)
@base.older_opt
@base.yes_opt
def purge(
    target: str,
    queue: str,
    states: tuple[str, ...],
    older_than: float | None,
    yes: bool,
    schema: str | None,
) -> None:
    """Delete messages of QUEUE for good (asks first unless --yes).

    Without --yes and without a terminal to ask on, refuses (exit 2) rather than wait.
    Deleting processing messages makes their consumers' acknowledgements fail.

    \b
    Example:
      sqqueue purge jobs.db emails --yes
      sqqueue purge jobs.db emails --state delayed --older-than 86400 --yes
    """
    db = base.database(target, schema)
    if "all" in states:
        states = tuple(base.PURGE_STATES)
    if "pending" in states:  # ready and delayed, 0.1.0's word
        states = (*states, "ready", "delayed")
    chosen = sorted(set(states) - {"pending"}, key=base.PURGE_STATES.index)
    effective = chosen or list(base.LIVE_STATES)
    with base.open_queue(db, queue) as q:
        now = base.unwrap(q.stats())
        counts = now.to_dict()
        count = sum(counts[state] for state in effective if state in counts)
        scope = f" enqueued more than {older_than:.15g} s ago" if older_than is not None else ""
        base.confirm(
            f"Delete the {', '.join(effective)} messages of queue {queue!r} in {db.shown}{scope} "
            f"({count} there now, and any that arrive before you answer)?",
            yes,
        )
        removed = base.unwrap(q.purge(chosen or None, older_than=older_than), options=PURGE_OPTIONS)
    click.echo(f"deleted {removed} message(s) from queue {queue!r}")
