"""Commands on the database as a whole: ``vacuum``, ``checkpoint``, ``check``,
``salvage``, ``migrate`` and ``copy``."""

from __future__ import annotations

import click

from .. import tools
from ..exceptions import QueueError
from . import base

# -- the file -----------------------------------------------------------------------------


@click.command()
@base.db_arg
def vacuum(db: str) -> None:
    """Rebuild DB to give free space back to the filesystem.

    This rewrites the whole file (routine upkeep reclaims space in small steps).

    \b
    Example:
      sqqueue vacuum jobs.db
    """
    with base.any_queue(db, "vacuum") as q:
        before = base.unwrap(q.stats())
        base.unwrap(q.vacuum_database())
        after = base.unwrap(q.stats())
    click.echo(
        f"vacuumed {db}: {base.fmt_size(before.db_bytes)} -> {base.fmt_size(after.db_bytes)}"
    )


@click.command()
@base.db_arg
def checkpoint(db: str) -> None:
    """Copy the write-ahead log (DB-wal) into DB and truncate it.

    \b
    Example:
      sqqueue checkpoint jobs.db
    """
    with base.any_queue(db, "checkpoint") as q:
        before = base.unwrap(q.stats())
        base.unwrap(q.perform_checkpoint())
        after = base.unwrap(q.stats())
    click.echo(
        f"checkpointed {db}: WAL {base.fmt_size(before.wal_bytes)} -> {base.fmt_size(after.wal_bytes)}"
    )


@click.command()
@base.db_arg
def check(db: str) -> None:
    """Check the integrity of DB (exit 1 when damaged).

    Runs SQLite's integrity check and lists the problems it finds.

    \b
    Example:
      sqqueue check jobs.db || sqqueue salvage jobs.db rescued.db
    """
    base.require_db(db)
    try:
        problems = tools.check(db)
    except QueueError as exc:
        raise base.CliError(str(exc)) from None
    if problems:
        for problem in problems:
            click.echo(problem)
        raise base.CliError(
            f"{db} is damaged ({len(problems)} problem(s)); "
            f"`sqqueue salvage {db} NEW.db` copies every readable message"
        )
    click.echo(f"ok: {db} passed the integrity check")


@click.command()
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
    base.require_db(source)
    try:
        report = tools.salvage(source, target)
    except (QueueError, ValueError) as exc:
        raise base.CliError(str(exc)) from None
    for name in sorted(report.copied):
        click.echo(
            f"{name}: {report.copied[name]} message(s), "
            f"{report.dead_copied.get(name, 0)} dead letter(s)"
        )
    for problem in report.errors:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"salvaged into {target}; {report.lost_rows} unreadable row(s) skipped")


@click.command()
@base.db_arg
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
            raise base.CliError(str(exc)) from None
        return
    base.require_db(db)
    try:
        done = tools.migrate(db)
    except (QueueError, ValueError) as exc:
        raise base.CliError(str(exc)) from None
    if not done:
        click.echo(f"nothing to migrate: every queue in {db} has the current layout")
    for name in done:
        click.echo(name)


@click.command()
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
        base.require_db(source[len("sqlite:///") :])
    with base.progress_bar("copying", known_total=True) as update:
        try:
            report = tools.copy_queues(
                source,
                target,
                queues or None,
                progress=lambda _name, done, total: update(done, total),
                resume=resume,
            )
        except (QueueError, ValueError, ImportError) as exc:
            raise base.CliError(str(exc)) from None
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
