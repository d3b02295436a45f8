"""``sqqueue config``: each setting's value and where it came from. (The one module of
the command line that reads the settings machinery.)"""

from __future__ import annotations

import os
from typing import Any

import click

from .. import signing
from ..config import SETTINGS, find_config_file, load, resolve
from ..retry import RetryPolicy
from ..targets import parse_target, redact
from . import base


def _backend(db_path: Any) -> str:
    """The backend the settings are for: PostgreSQL when db_path is its URL."""
    try:
        return parse_target(db_path).kind
    except ValueError:
        return "sqlite"


def _warnings(values: dict[str, Any]) -> list[str]:
    """What these settings will do that their user may not expect."""
    found = []
    if values["accept_unsigned"] and not (
        os.environ.get(signing.ENV_KEY) or os.environ.get(signing.ENV_KEY_FILE)
    ):
        found.append(
            "accept_unsigned is on and no signing key is set "
            f"({signing.ENV_KEY} or {signing.ENV_KEY_FILE}): a queue opened without "
            "signing_key= refuses to open (unless it is read-only)"
        )
    return found


def _shown(value: Any) -> Any:
    """A setting's value as it may be shown: a PostgreSQL URL without its password."""
    return redact(value) if isinstance(value, str) else value


@click.command("config")
@click.option("--queue", "queue", metavar="NAME", help="Include [queues.NAME] settings.")
@base.as_json
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
        explicit["table_name"] = base.check_name(queue)
    try:
        found = find_config_file()
        resolved = resolve(explicit)
        # Checked as a queue checks them, so a value every command refuses is refused here.
        load(explicit, _backend(resolved.values["db_path"]))
    except ValueError as exc:
        raise base.CliError(redact(str(exc))) from None
    config_file = str(found[0]) if found else None
    warnings = _warnings(resolved.values)
    if as_json:
        settings = {
            name: {"value": _shown(resolved.values[name]), "source": resolved.sources[name]}
            for name in SETTINGS
        }
        report = {"config_file": config_file, "settings": settings, "warnings": warnings}
        click.echo(base.dumps(report))
        return
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"config file: {config_file or 'none'}")
    table = base.new_table(None)
    table.add_column("setting", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("meaning")
    for name, setting in SETTINGS.items():
        value = _shown(resolved.values[name])
        if isinstance(value, RetryPolicy):
            shown = base.retry_text(value)
        else:
            shown = "-" if value is None else str(value)
        source = resolved.sources[name]
        if source.startswith("file "):
            source = "file"  # the path is on the first line
        table.add_row(name, shown, source, setting.help)
    base.make_console().print(table)
