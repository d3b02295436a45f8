"""``sqqueue worker``: run a handler (or every task of a Tasks app) until stopped."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ..exceptions import QueueError
from ..tasks import Tasks
from ..worker import MAX_CONCURRENCY, Worker, WorkerStats
from . import base
from .metrics import metrics_url, start_metrics


def _load_handler(target: str) -> Callable[..., Any] | Tasks:
    """Import ``MODULE:FUNC`` (FUNC may be dotted) or ``MODULE:TASKS`` (a Tasks object),
    looking in the working directory too."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise base.CliError(
            f"the handler must be MODULE:FUNC or MODULE:TASKS (e.g. tasks:handle), got {target!r}",
            2,
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # not found, or the module's own code failed (SyntaxError too)
        raise base.CliError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise base.CliError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(obj, Tasks):
        return obj
    if not callable(obj):
        raise base.CliError(f"{target} is not callable (it is a {type(obj).__name__})")
    handler: Callable[..., Any] = obj
    return handler


@click.command("worker")
@click.argument("target", metavar="MODULE:FUNC TARGET QUEUE | MODULE:TASKS")
@click.argument("db", metavar="", required=False)
@click.argument("queue", metavar="", required=False)
@base.schema_opt
@click.option(
    "--concurrency", type=click.IntRange(min=1, max=MAX_CONCURRENCY), default=1, show_default=True
)
@click.option(
    "--visibility-timeout",
    type=base.FiniteRange(min=0, min_open=True, max=7 * 86400),  # (a queue's longest lease)
    default=None,
    metavar="SECONDS",
    help="Lease length; a heartbeat extends it while the handler runs.",
)
@click.option(
    "--task-timeout",
    type=base.FiniteRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Fail a message whose handler runs longer.",
)
@click.option(
    "--grace-period",
    type=base.FiniteRange(min=0, max=86400),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="At shutdown, how long running handlers may finish.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="PORT",
    help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def worker_cmd(
    target: str,
    db: str | None,
    queue: str | None,
    schema: str | None,
    concurrency: int,
    visibility_timeout: float | None,
    task_timeout: float | None,
    grace_period: float,
    metrics_port: int | None,
    log_level: str,
) -> None:
    """Run MODULE:FUNC for every message of QUEUE in TARGET, or every task of MODULE:TASKS.

    It runs until SIGTERM or Ctrl-C. MODULE:TASKS names a sqqueue.Tasks object: it
    knows its database and queues (serve them all, --concurrency handlers each) and
    its periodic tasks (this worker schedules them too).

    The handler gets a sqqueue.Message: returning completes it, raising fails it (it
    is retried, then dead-lettered). An `async def` handler runs on an asyncio loop.
    The first SIGTERM/SIGINT stops taking messages and lets running ones finish
    within --grace-period; a second one stops at once. MODULE is imported from the
    working directory too.

    \b
    Example:
      sqqueue worker tasks:send_email jobs.db emails --concurrency 4 --metrics-port 9464
      sqqueue worker tasks:send_email postgresql://app@db.internal/app emails
      sqqueue worker myapp.jobs:tasks --concurrency 4
    """
    handler = _load_handler(target)
    if isinstance(handler, Tasks):
        if db is not None or queue is not None or schema is not None:
            raise base.CliError(
                f"{target} is a Tasks object: it knows its database and queues, so give "
                "no TARGET, QUEUE or --schema",
                2,
            )
    elif db is None or queue is None:
        raise base.CliError(f"{target} is a handler: give the TARGET and QUEUE it serves", 2)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=log_level.upper(),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    options: dict[str, Any] = {
        "concurrency": concurrency,
        "visibility_timeout": visibility_timeout,
        "task_timeout": task_timeout,
        "grace_period": grace_period,
    }
    if isinstance(handler, Tasks):
        _summary(_run_tasks(handler, options, metrics_port))
        return
    assert db is not None
    where = base.database(db, schema)
    name = base.check_name(queue or "")
    server = None
    with base.open_queue(where, name, create=True) as q:
        try:
            if metrics_port is not None:
                server, options["durations"] = start_metrics(
                    where, metrics_port, "127.0.0.1", [name], with_durations=True, served=[q]
                )
                click.echo(f"metrics on {metrics_url(server, '127.0.0.1')}", err=True)
            # (An object whose __call__ is async is a coroutine handler too.)
            if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
                getattr(handler, "__call__", None)  # noqa: B004 (the method, not callability)
            ):
                from ..aio import AsyncWorker

                async_worker = AsyncWorker(q, handler, **options)
                stats = asyncio.run(async_worker.run())
            else:
                stats = Worker(q, handler, **options).run()
        except ValueError as exc:
            raise base.CliError(str(exc)) from None
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
    _summary([stats])


def _summary(stats: list[WorkerStats]) -> None:
    def total(field: str) -> int:
        return sum(getattr(s, field) for s in stats)

    click.echo(
        f"worker stopped: {total('completed')} completed, {total('failed')} failed "
        f"({total('dead_lettered')} dead-lettered, {total('timed_out')} timed out), "
        f"{total('released')} released, {total('requeued')} requeued at shutdown",
        err=True,
    )


def _run_tasks(
    tasks: Tasks, options: dict[str, Any], metrics_port: int | None
) -> list[WorkerStats]:
    server = None
    try:
        if metrics_port is not None:
            try:
                from ..tasks.prometheus import serve
            except ImportError as exc:
                raise base.CliError(str(exc)) from None
            try:
                server, options["durations"] = serve(tasks, metrics_port)
            except OSError as exc:
                raise base.CliError(f"cannot serve metrics on port {metrics_port}: {exc}") from None
            click.echo(f"metrics on {metrics_url(server, '127.0.0.1')}", err=True)
        return list(tasks.run_worker(**options).values())
    except (ValueError, QueueError) as exc:
        raise base.CliError(str(exc)) from None
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        tasks.close()
