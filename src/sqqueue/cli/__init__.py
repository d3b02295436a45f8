"""The ``sqqueue`` command: look into, feed, drain and look after queues from a shell.

::

    sqqueue stats jobs.db                       # every queue in the file, as a table
    sqqueue stats postgresql://app@db.internal/app --schema jobs
    sqqueue enqueue jobs.db emails '{"to": "ada@example.com"}' --json
    sqqueue dlq list jobs.db emails             # what failed for good, and why
    sqqueue worker tasks:send jobs.db emails --concurrency 4
    sqqueue worker myapp.jobs:tasks --concurrency 4    # every task of a sqqueue.Tasks app

Needs the ``cli`` extra (click and rich): ``pip install 'sqqueue[cli]'``. Exit codes: 0
done, 1 the operation failed (the error is one ``error: ...`` line on stderr), 2 bad usage,
130 interrupted (Ctrl-C).
``--json`` output is JSON with datetimes as ISO-8601 strings and bytes as
``{"$bytes": "<base64>"}``.

This package holds the click group ``main`` (the console script ``sqqueue``); each
module beside it declares one group of commands at module level, and ``base`` what
they share.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, NoReturn

from .. import __version__

try:
    import click
    import rich  # noqa: F401 - the tables and progress bars need it
except ImportError:  # pragma: no cover - depends on the install
    _HAVE_DEPS = False
else:
    _HAVE_DEPS = True

__all__ = ["main"]

NEEDS = "the sqqueue command needs: pip install 'sqqueue[cli]'"


def _missing_deps(*_args: Any, **_kwargs: Any) -> NoReturn:
    sys.stderr.write(f"{NEEDS}\n")
    raise SystemExit(2)


# Commands that run until stopped and log as they go (each sets up its own logging).
_LONG_RUNNING = frozenset({"worker", "dashboard"})


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Warnings on stderr in the command's own style (``warning: ...``), leaving out the
    library's line about a failed call: the command gets that failure as an ``Err`` and
    prints it as its ``error: ...`` line."""

    def __init__(self) -> None:
        super().__init__()  # (stderr)
        self.setLevel(logging.WARNING)

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "returned_as_err", False)

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def _reported_once() -> None:
    """Say each failure once. With no logging set up, Python's last-resort handler would
    print the library's warning about a failed call, then the command the same error."""
    root = logging.getLogger()
    if not root.handlers:  # (else the embedding program set logging up: its choice)
        root.addHandler(_Stderr())


def _build() -> click.Group:
    """The ``sqqueue`` group with every command registered on it."""
    from . import (
        base,
        config,
        dashboard,
        demo,
        dlq,
        file,
        messages,
        metrics,
        roles,
        security,
        worker,
    )

    @click.group(
        cls=base.SqqueueGroup,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )
    @click.version_option(__version__, prog_name="sqqueue")
    @security.key_file_option
    @click.pass_context
    def main(ctx: click.Context, key_file: str | None) -> None:
        """Operate sqqueue queues: a persistent message queue in an SQLite file or a
        PostgreSQL database.

        TARGET is an SQLite file (jobs.db, sqlite:///jobs.db, sqlite:////abs/jobs.db) or a
        PostgreSQL URL (postgresql://user@host/db; --schema NAME for queues in a schema).
        Passwords are never printed. Commands that only mean something for an SQLite
        file (checkpoint, check, salvage) refuse a PostgreSQL URL with exit code 2.

        Exit codes: 0 done, 1 the operation failed (one "error: ..." line on stderr),
        2 bad usage, 130 interrupted (Ctrl-C). Read-only commands never create a
        database file.

        \b
        Example:
          sqqueue stats jobs.db
          sqqueue enqueue jobs.db emails '{"to": "ada@example.com"}' --json
          sqqueue worker tasks:send jobs.db emails --concurrency 4
          sqqueue stats postgresql://app@db.internal/app
        """
        base.escape_output_errors()
        if ctx.invoked_subcommand not in _LONG_RUNNING:
            _reported_once()
        if key_file is not None:
            try:
                security.use_key_file(key_file)
            except ValueError as exc:
                raise base.CliError(str(exc), 2) from None

    for command in (
        messages.stats,
        messages.ls,
        messages.peek,
        messages.enqueue,
        messages.dequeue,
        messages.complete,
        messages.fail,
        messages.purge,
        dlq.dlq,
        file.vacuum,
        file.checkpoint,
        file.check,
        file.salvage,
        file.migrate,
        file.copy,
        roles.grants,
        demo.demo,
        config.config_cmd,
        worker.worker_cmd,
        dashboard.dashboard,
        metrics.metrics,
        security.encrypt_command,
        security.decrypt_command,
        security.rekey_command,
    ):
        main.add_command(command)
    return main


if _HAVE_DEPS:
    main: click.Group = _build()
else:  # pragma: no cover - depends on the install
    main = _missing_deps  # type: ignore[assignment]
