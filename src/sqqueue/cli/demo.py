"""``sqqueue demo``: a producer and two consumer processes on one file."""

from __future__ import annotations

import click

from ..exceptions import QueueError
from . import base


@click.command()
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
    from .. import demo as demo_module

    argv = ["--jobs", str(jobs)] + (["--db", db_path] if db_path else [])
    try:
        code = demo_module.main(argv)
    except (QueueError, ValueError) as exc:  # a --db that cannot hold a queue
        raise base.CliError(f"cannot run the demo on {db_path!r}: {exc}") from None
    if code:
        ctx.exit(1)
