"""Commands on the database as a whole: ``vacuum``, ``checkpoint``, ``check``,
``salvage``, ``migrate`` and ``copy``."""

from __future__ import annotations

import click

from .. import tools
from ..exceptions import ErrorKind, QueueError
from ..queue import connect
from . import base

NOT_ON_POSTGRES = "{what} is for SQLite files, and {target} is a PostgreSQL database"


def _refuse_postgres(db: base.Database, what: str, instead: str) -> None:
    base.sqlite_only(db, NOT_ON_POSTGRES.format(what=what, target=db.shown), instead)


@click.command()
@base.db_arg
@base.schema_opt
def vacuum(target: str, schema: str | None) -> None:
    """Rebuild TARGET to give free space back to the filesystem.

    This rewrites the whole file (routine upkeep reclaims space in small steps). On
    PostgreSQL it runs VACUUM on the tables of every queue (autovacuum does too).

    \b
    Example:
      sqqueue vacuum jobs.db
      sqqueue vacuum postgresql://app@db.internal/app
    """
    db = base.database(target, schema)
    base.require_db(db)
    names = base.queue_names(db)
    if not names:
        raise base.CliError(f"no sqqueue queues in {db.shown}; nothing to vacuum")
    if db.is_postgres:
        for name in names:
            with base.open_queue(db, name) as q:
                base.unwrap(q.vacuum_database())
        click.echo(f"vacuumed the tables of {len(names)} queue(s) in {db.shown}")
        return
    with base.open_queue(db, names[0]) as q:  # the file is vacuumed through any queue
        before = base.unwrap(q.stats())
        base.unwrap(q.vacuum_database())
        after = base.unwrap(q.stats())
    click.echo(
        f"vacuumed {db.shown}: {base.fmt_size(before.db_bytes)} -> {base.fmt_size(after.db_bytes)}"
    )


@click.command()
@base.db_arg
def checkpoint(target: str) -> None:
    """Copy the write-ahead log (TARGET-wal) into the SQLite file TARGET and truncate it.

    \b
    Example:
      sqqueue checkpoint jobs.db
    """
    db = base.database(target)
    _refuse_postgres(
        db,
        "checkpoint",
        "the server checkpoints its write-ahead log itself (an administrator can run CHECKPOINT)",
    )
    base.require_db(db)
    names = base.queue_names(db)
    if not names:
        raise base.CliError(f"no sqqueue queues in {db.shown}; nothing to checkpoint")
    with base.open_queue(db, names[0]) as q:  # the file is checkpointed through any queue
        before = base.unwrap(q.stats())
        base.unwrap(q.perform_checkpoint())
        after = base.unwrap(q.stats())
    click.echo(
        f"checkpointed {db.shown}: WAL {base.fmt_size(before.wal_bytes)} -> "
        f"{base.fmt_size(after.wal_bytes)}"
    )


@click.command()
@base.db_arg
def check(target: str) -> None:
    """Check the integrity of the SQLite file TARGET (exit 1 when damaged).

    Runs SQLite's integrity check and lists the problems it finds.

    \b
    Example:
      sqqueue check jobs.db || sqqueue salvage jobs.db rescued.db
    """
    db = base.database(target)
    _refuse_postgres(db, "check", "the server checks its own storage (pg_amcheck, data checksums)")
    base.require_db(db)
    try:
        problems = tools.check(db.location)
    except QueueError as exc:
        raise base.CliError(str(exc)) from None
    if problems:
        for problem in problems:
            click.echo(problem)
        raise base.CliError(
            f"{db.shown} is damaged ({len(problems)} problem(s)); "
            f"`sqqueue salvage {db.shown} NEW.db` copies every readable message"
        )
    click.echo(f"ok: {db.shown} passed the integrity check")


@click.command()
@click.argument("source", metavar="SRC")
@click.argument("target", metavar="DST")
def salvage(source: str, target: str) -> None:
    """Copy every readable message of the SQLite file SRC into a new file DST.

    SRC is only read. Every column of every readable row is kept (ids, priorities,
    attempts, errors, groups, times to live); dead letters, kept history and dedup
    keys come along; messages that were being processed come back pending. Queues
    still in sqqueue 0.1.0's layout are not read: the error names them (exit 1); run
    `sqqueue migrate` on a copy of SRC first.

    The last line says whether the copy is complete ("every row of SRC was read") or
    "NOT complete", with what could be counted of what is missing: rows SQLite could
    not read, and messages and dead letters the queues' counters count that are not in
    the copy (damage can hide rows without any read failing); warnings say where. The
    exit status is 0 either way: DST holds what could be read.

    \b
    Example:
      sqqueue salvage jobs.db rescued.db && sqqueue check rescued.db
    """
    src = base.database(source)
    dst = base.database(target)
    _refuse_postgres(src, "salvage", "to copy its queues, use `sqqueue copy`")
    _refuse_postgres(
        dst, "salvage", "salvage into a new file, then `sqqueue copy` it to PostgreSQL"
    )
    base.require_db(src)
    try:
        legacy = tools.legacy_queues(src.location)
    except QueueError:
        legacy = []  # (a damaged list of tables: salvage says what it cannot read)
    try:
        report = tools.salvage(src.location, dst.location)
    except (QueueError, ValueError) as exc:
        raise base.CliError(str(exc)) from None
    if not report.copied and not report.errors:  # (then nothing was written)
        if legacy:
            raise base.CliError(_only_legacy(src, legacy, "salvage"))
        raise base.CliError(f"no sqqueue queue in {src.shown}; nothing to salvage")
    for name in sorted(report.copied):
        click.echo(
            f"{name}: {report.copied[name]} message(s), "
            f"{report.dead_copied.get(name, 0)} dead letter(s)"
        )
    for problem in report.errors:
        click.echo(f"warning: {problem}", err=True)
    for name in sorted(report.missing):
        if report.missing[name]:
            click.echo(
                f"warning: {name}: {report.missing[name]} of the messages and dead letters "
                "its counters count are not in the copy",
                err=True,
            )
    for name in report.uncounted:
        click.echo(f"warning: {name}: its counters cannot be read to count what it lost", err=True)
    if report.damage:
        click.echo(
            f"warning: {src.shown} is damaged (`sqqueue check {src.shown}` lists what SQLite "
            "finds): rows on pages SQLite cannot reach are lost, and may be more than counted "
            "here",
            err=True,
        )
    click.echo(_salvage_summary(src, dst, report))
    if legacy:
        raise base.CliError(
            f"the sqqueue 0.1.0 queues of {src.shown} ({', '.join(legacy)}) were not "
            f"salvaged: salvage reads the current layout only; run `sqqueue migrate` on a "
            f"copy of {src.shown} (with its -wal file if there is one), then salvage the copy"
        )


def _salvage_summary(src: base.Database, dst: base.Database, report: tools.SalvageReport) -> str:
    """The last line of a salvage: a complete copy only when every row was read."""
    if report.complete:
        return f"salvaged into {dst.shown}; every row of {src.shown} was read"
    said = []
    if report.lost_rows:
        said.append(f"{report.lost_rows} unreadable row(s) skipped")
    missing = sum(report.missing.values())
    if missing:
        said.append(f"at least {missing} message(s) and dead letter(s) missing")
    if not said:
        said.append("rows may be missing")
    return f"salvaged into {dst.shown}, NOT complete: {'; '.join(said)} (see the warnings)"


def _migrate_first(src: base.Database) -> str:
    """How to bring the 0.1.0 queues of the file ``src`` to a layout copy and salvage read."""
    return (
        f"run `sqqueue migrate {src.typed}` first (if the file must stay untouched: on a "
        "copy of it, with its -wal file if there is one)"
    )


def _only_legacy(src: base.Database, legacy: list[str], what: str) -> str:
    """The error of copy or salvage (``what``) given only sqqueue 0.1.0 queues."""
    return (
        f"{src.shown} holds only sqqueue 0.1.0 queues ({', '.join(legacy)}), which {what} "
        f"does not read: {_migrate_first(src)}; nothing was written"
    )


@click.command()
@base.db_arg
@base.schema_opt
@click.option("--sql", "print_sql", is_flag=True, help="Print the DDL instead of migrating.")
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="NAME",
    help="With --sql: the queue(s) to print the DDL of (repeatable).",
)
def migrate(target: str, schema: str | None, print_sql: bool, queues: tuple[str, ...]) -> None:
    """Migrate the queues of TARGET to the current layout now, or print the DDL (--sql).

    Without --sql, migrates sqqueue 0.1.0 queues and upgrades queues of an older
    sqqueue, and prints their names: opening a queue for use does that anyway; this
    does them all at once, before a deploy. It is the only command that changes the
    layout of a database (commands that only look change nothing). With --sql, TARGET
    is a path or a URL (sqlite:///... or postgresql://...) that only picks the dialect:
    nothing is opened, and the statements that create each --queue are printed, for
    teams that apply schema changes themselves.

    \b
    Example:
      sqqueue migrate jobs.db
      sqqueue migrate postgresql://app@db.internal/app --schema jobs
      sqqueue migrate --sql postgresql://db.internal/app --queue emails > emails.sql
    """
    db = base.database(target, schema)
    if print_sql:
        if not queues:
            raise click.UsageError("--sql needs at least one --queue NAME")
        if schema is not None:
            raise base.CliError(
                "--sql prints statements without a schema: run them with the search path "
                "set to the schema, and leave out --schema",
                2,
            )
        for name in queues:
            base.check_name(name)  # a bad name is bad usage (exit 2), before anything prints
        try:
            for name in queues:
                for statement in tools.schema_sql(db.kind, name):
                    click.echo(statement + ";\n")
        except (QueueError, ValueError) as exc:
            raise base.CliError(str(exc)) from None
        return
    base.require_db(db)
    if db.is_postgres:
        done = _migrate_postgres(db)
    else:
        try:
            done = tools.migrate(db.location)
        except (QueueError, ValueError) as exc:
            raise base.CliError(str(exc)) from None
    if not done:
        click.echo(f"nothing to migrate: every queue in {db.shown} has the current layout")
    for name in done:
        click.echo(name)


def _migrate_postgres(db: base.Database) -> list[str]:
    """Upgrade the queues of a PostgreSQL database that have an older layout; their
    names. (A queue opened read-only refuses an older layout: that is the test. Opening
    it for use upgrades it.)"""
    done = []
    for name in base.queue_names(db):
        try:
            connect(db.given, name, schema=db.schema, read_only=True).close()
        except QueueError as exc:
            if exc.kind is not ErrorKind.READ_ONLY:
                raise base.CliError(str(exc)) from None
            base.open_queue(db, name).close()
            done.append(name)
        except ValueError as exc:
            raise base.CliError(str(exc)) from None
    return done


@click.command()
@click.argument("source", metavar="SRC")
@click.argument("target", metavar="DST")
@click.argument("queues", metavar="[QUEUE]...", nargs=-1)
@click.option(
    "--resume",
    is_flag=True,
    help="Finish a copy that stopped part-way: copy what the target queues lack.",
)
@click.option(
    "--schema",
    metavar="NAME",
    help="The PostgreSQL schema of the queues, at each end that is PostgreSQL.",
)
@click.option(
    "--target-schema",
    metavar="NAME",
    help="The target's PostgreSQL schema, when it is not --schema.",
)
def copy(
    source: str,
    target: str,
    queues: tuple[str, ...],
    resume: bool,
    schema: str | None,
    target_schema: str | None,
) -> None:
    """Copy queues from SRC to DST (each an SQLite file or a PostgreSQL URL).

    Every column of every message is copied (in-flight ones arrive pending), with the
    dead letters, kept history and dedup keys; SRC is only read. Every queue is
    checked before anything is written: each target queue must be empty, or already
    hold a copy (skipped), or, with --resume, part of one. The counts are checked
    after each queue. A SRC with no queue, or with sqqueue 0.1.0 queues among those to
    copy, is refused: run `sqqueue migrate` on SRC (or on a copy of it) first.

    \b
    Example:
      sqqueue copy sqlite:///jobs.db postgresql://app@db.internal/app emails
      sqqueue copy sqlite:///jobs.db postgresql://app@db.internal/app --resume
      sqqueue copy postgresql://app@db/app postgresql://app@db/app --schema old \\
        --target-schema new
    """
    # Either end is an SQLite file (a path or sqlite:/// URL) or a postgresql:// URL.
    postgres = [base.database(end).kind == "postgresql" for end in (source, target)]
    if (schema is not None and not any(postgres)) or (
        target_schema is not None and not postgres[1]
    ):
        raise click.UsageError(
            "--schema and --target-schema apply to postgresql:// URLs only: an SQLite "
            "file has no schemas"
        )
    source_schema = schema if postgres[0] else None
    target_schema = (target_schema or schema) if postgres[1] else None
    for name in queues:
        base.check_name(name)
    _check_copy_source(base.database(source, source_schema), queues)
    with base.progress_bar("copying", known_total=True) as update:
        try:
            report = tools.copy_queues(
                source,
                target,
                queues or None,
                progress=lambda _name, done, total: update(done, total),
                resume=resume,
                source_schema=source_schema,
                target_schema=target_schema,
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


def _check_copy_source(src: base.Database, queues: tuple[str, ...]) -> None:
    """Refuse a copy that would leave queues out unsaid: sqqueue 0.1.0 queues (which copy
    does not read) among those asked for, or in the source when every queue is asked
    for; and a source with no queue at all."""
    base.require_db(src)
    current = base.queue_names(src)
    legacy = base.legacy_names(src)
    for name in queues:
        base.require_queue(src, name, "; nothing was copied")  # (0.1.0 ones: refused below)
    left_out = [name for name in queues if name in legacy] if queues else legacy
    if left_out and not current:
        raise base.CliError(_only_legacy(src, legacy, "copy"))
    if left_out:
        raise base.CliError(
            f"{src.shown} holds sqqueue 0.1.0 queues ({', '.join(left_out)}), which copy does "
            f"not read: {_migrate_first(src)}"
            + ("" if queues else ", or name the queues to copy")
            + "; nothing was written"
        )
    if not current:
        raise base.CliError(f"no sqqueue queue in {src.shown}; nothing to copy")
