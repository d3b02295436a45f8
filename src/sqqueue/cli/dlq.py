"""The dead-letter queue: ``dlq list``, ``dlq show``, ``dlq redrive`` and ``dlq purge``."""

from __future__ import annotations

import click

from . import base

# -- the dead-letter queue -----------------------------------------------------------------


@click.group()
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
@base.db_arg
@base.schema_opt
@base.queue_arg
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, metavar="N")
@click.option("--after", type=click.IntRange(0, base.MAX_ID), default=0, metavar="ID")
@base.as_json
def dlq_list(
    target: str, queue: str, limit: int, after: int, as_json: bool, schema: str | None
) -> None:
    """List the dead letters of QUEUE, a page at a time.

    \b
    Example:
      sqqueue dlq list jobs.db emails
      sqqueue dlq list jobs.db emails --json | jq '.messages[].last_error'
    """
    db = base.database(target, schema)
    with base.open_queue(db, queue, read_only=True) as q:
        entries = base.unwrap(q.list_messages("dead", limit=limit, after_id=after), "dlq list")
    next_after = entries[-1]["id"] if len(entries) == limit else None
    if as_json:
        click.echo(base.dumps({"queue": queue, "messages": entries, "next_after": next_after}))
        return
    base.print_page(f"{queue}: dead letters", entries, limit, f"no dead letters in queue {queue!r}")


@dlq.command("show")
@base.db_arg
@base.schema_opt
@base.queue_arg
@base.id_arg
@base.as_json
def dlq_show(target: str, queue: str, message_id: int, as_json: bool, schema: str | None) -> None:
    """Show one dead letter in full: payload, attempts, times and last error.

    \b
    Example:
      sqqueue dlq show jobs.db emails 42
    """
    db = base.database(target, schema)
    with base.open_queue(db, queue, read_only=True) as q:
        entry = base.dead_letter(q, message_id)
    if entry is None:
        raise base.CliError(f"message {message_id} is not in the dead-letter queue of {queue!r}")
    if as_json:
        click.echo(base.dumps(entry))
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
    fields.append(("payload", base.pretty_payload(entry["payload"])))
    click.echo(base.detail_text(fields))


@dlq.command("redrive")
@base.db_arg
@base.schema_opt
@base.queue_arg
@click.argument("ids", metavar="[ID]...", nargs=-1, type=click.IntRange(min=0))
@click.option("--all", "redrive_all", is_flag=True, help="Every dead letter of QUEUE.")
@click.option(
    "--to", "to_queue", metavar="QUEUE", help="Into this other queue of TARGET (new ids)."
)
@click.option(
    "--create", is_flag=True, help="With --to: create that queue if TARGET has none of that name."
)
@click.option(
    "--rate",
    type=base.FiniteRange(min=0, min_open=True),
    default=None,
    metavar="N",
    help="At most N messages a second, not to flood consumers.",
)
def dlq_redrive(
    target: str,
    queue: str,
    ids: tuple[int, ...],
    redrive_all: bool,
    to_queue: str | None,
    create: bool,
    rate: float | None,
    schema: str | None,
) -> None:
    """Put dead letters back to be delivered again.

    They keep their ids (in QUEUE) and last error; their attempts start over. With
    --to they go into another queue of TARGET, which must exist (or pass --create).

    \b
    Example:
      sqqueue dlq redrive jobs.db emails 42 43
      sqqueue dlq redrive jobs.db emails --all --rate 50
      sqqueue dlq redrive jobs.db emails --all --to emails_retry --create
    """
    db = base.database(target, schema)
    if redrive_all == bool(ids):
        raise base.CliError("give either message ids or --all", 2)
    if create and to_queue is None:
        raise base.CliError("--create goes with --to QUEUE", 2)
    dest = queue if to_queue is None else base.check_name(to_queue)
    base.require_queue(db, queue)
    if to_queue is not None and create:
        base.open_queue(db, dest, create=True).close()
    elif to_queue is not None:
        base.require_queue(db, dest, "; pass --create to create it")
    with (
        base.open_queue(db, queue) as q,
        base.progress_bar("redriving", known_total=True) as update,
    ):
        moved = base.unwrap(
            q.redrive(
                None if redrive_all else list(ids),
                to_queue=to_queue,
                rate=rate,
                progress=update,
            ),
            options={"rate": "--rate"},
        )
    click.echo(f"redrove {moved} message(s) to queue {dest!r}")


@dlq.command("purge")
@base.db_arg
@base.schema_opt
@base.queue_arg
@click.option(
    "--older-than",
    type=base.FiniteRange(min=0),
    metavar="SECONDS",
    help="Only dead letters that died more than SECONDS ago.",
)
@base.yes_opt
def dlq_purge(
    target: str, queue: str, older_than: float | None, yes: bool, schema: str | None
) -> None:
    """Delete dead letters of QUEUE for good (asks first unless --yes).

    \b
    Example:
      sqqueue dlq purge jobs.db emails --older-than 604800 --yes
    """
    db = base.database(target, schema)
    with base.open_queue(db, queue) as q:
        count = base.unwrap(q.stats()).dead
        scope = f" dead for more than {older_than:.15g} s" if older_than is not None else ""
        base.confirm(
            f"Delete the dead letters of queue {queue!r} in {db.shown}{scope} ({count} there "
            "now, and any that die before you answer)?",
            yes,
        )
        removed = base.unwrap(
            q.purge("dead", older_than=older_than), options={"older_than": "--older-than"}
        )
    click.echo(f"deleted {removed} dead letter(s) from queue {queue!r}")
