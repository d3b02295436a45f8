"""``grants``: the PostgreSQL privileges of a producer, a consumer and an administrator."""

from __future__ import annotations

import click

from .. import tools
from . import base


@click.command()
@base.db_arg
@click.option(
    "--schema",
    metavar="NAME",
    default="public",
    show_default=True,
    help="The schema the queues live in.",
)
@click.option(
    "--queue",
    "queues",
    metavar="NAME",
    multiple=True,
    help="A queue to grant on (repeatable); default: every queue of the schema.",
)
@click.option("--producer", metavar="ROLE", help="May enqueue, and nothing else.")
@click.option(
    "--consumer", metavar="ROLE", help="May dequeue, extend, complete and fail (dead-letter)."
)
@click.option("--admin", metavar="ROLE", help="May do everything, purge and redrive included.")
def grants(
    target: str,
    schema: str,
    queues: tuple[str, ...],
    producer: str | None,
    consumer: str | None,
    admin: str | None,
) -> None:
    """Print the GRANT statements for PostgreSQL roles on the queues of TARGET.

    A producer role may only enqueue; a consumer role may dequeue, extend, complete and
    fail messages (failures still dead-letter) but not read dead letters, purge or
    redrive; an administrator role may do everything but change the layout, which stays
    with the owner of the schema (who runs these statements). With --queue nothing is
    opened: TARGET only has to be a postgresql:// URL; without it, the queues of the
    schema are listed from TARGET.

    \b
    Example:
      sqqueue grants postgresql://owner@db.internal/app --schema jobs \\
          --producer app_web --consumer app_worker --admin app_ops | psql ...
    """
    if not base.database(target).is_postgres:
        raise base.CliError(
            f"grants are for PostgreSQL roles, and {target} is an SQLite file; protect an "
            "SQLite file with file permissions (see docs/security.md)",
            2,
        )
    db = base.database(target, schema)
    roles = {
        kind: role
        for kind, role in (("producer", producer), ("consumer", consumer), ("admin", admin))
        if role is not None
    }
    if not roles:
        raise click.UsageError("name at least one role: --producer, --consumer or --admin")
    names = list(queues) or base.queue_names(db)
    if not names:
        raise base.CliError(f"no sqqueue queues in {db.shown}; name them with --queue")
    try:
        statements = tools.grant_sql(schema, names, roles)
    except ValueError as exc:
        raise base.CliError(str(exc), 2) from None
    for statement in statements:
        click.echo(statement + ";")
