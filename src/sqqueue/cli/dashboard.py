"""``sqqueue dashboard``: the web dashboard (needs the ``dashboard`` extra)."""

from __future__ import annotations

import click

from . import base


@click.command("dashboard")
@click.argument("target", metavar="TARGET")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8844, show_default=True)
@click.option(
    "--read-only",
    is_flag=True,
    help="Hide and refuse every action, and open the queues read-only: change nothing.",
)
@click.option("--token-file", metavar="PATH", help="Read the login token from PATH.")
@click.option("--schema", metavar="NAME", help="PostgreSQL schema of the queues.")
@click.option(
    "--allow-host",
    "allow_hosts",
    metavar="HOST",
    multiple=True,
    help="Also answer this Host header (NAME or NAME:PORT, as a proxy in front sends it).",
)
@click.option(
    "--secure-cookies",
    is_flag=True,
    help="Always mark the session cookie Secure (HTTPS only), as behind a proxy that ends "
    "TLS. [default: Secure when the request came by https]",
)
def dashboard(target: str, host: str, port: int, read_only: bool,
              token_file: str | None, schema: str | None,
              allow_hosts: tuple[str, ...], secure_cookies: bool) -> None:  # fmt: skip
    """Serve a web dashboard of every queue in TARGET (an SQLite file or a
    postgresql:// URL) until Ctrl-C. Needs: pip install 'sqqueue[dashboard]'.

    The token is $SQQUEUE_DASHBOARD_TOKEN, the --token-file, or one made up and
    printed now; a --host other than loopback needs one of the first two.

    \b
    Example:
      sqqueue dashboard jobs.db --port 8844
    """
    db = base.database(target, schema)  # a bad TARGET or --schema: a usage error, first
    try:
        from ..dashboard.server import DashboardError, serve
    except ImportError as exc:
        raise base.CliError(str(exc), 2) from None
    base.refuse_if_not_a_database(db)  # (a --schema that does not exist, too)
    try:
        serve(target, host=host, port=port, read_only=read_only,
              token_file=token_file, schema=schema, allow_hosts=allow_hosts,
              secure_cookies=True if secure_cookies else None)  # fmt: skip
    except DashboardError as exc:
        raise base.CliError(str(exc), exc.code) from None
