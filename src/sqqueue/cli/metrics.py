"""``sqqueue metrics serve``: Prometheus metrics of the queues of a database."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from . import base


def start_metrics(
    db: base.Database,
    port: int,
    host: str,
    queues: list[str] | None,
    with_durations: bool,
    served: list[Any] | None = None,
) -> tuple[Any, Any]:
    """Start the Prometheus endpoint; returns (server, Durations or None). ``served``:
    the queue objects a worker uses, whose signature counts are exported too."""
    try:
        from prometheus_client import CollectorRegistry

        from ..prometheus import Durations, SignatureCollector, serve
    except ImportError as exc:
        raise base.CliError(str(exc)) from None
    registry = CollectorRegistry()
    durations = Durations(registry) if with_durations else None
    if served:
        # (The counts live in the worker's own queue objects: see SignatureCollector.)
        registry.register(SignatureCollector(served))
    try:
        server, _thread = serve(
            db.given, port=port, host=host, queues=queues, registry=registry, schema=db.schema
        )
    except OSError as exc:
        raise base.CliError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    return server, durations


def metrics_url(server: Any, host: str) -> str:
    port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


@click.group()
def metrics() -> None:
    """Serve Prometheus metrics for the queues of a database.

    \b
    Example:
      sqqueue metrics serve jobs.db --port 9464
    """


@metrics.command("serve")
@base.db_arg
@base.schema_opt
@click.option("--port", type=click.IntRange(0, 65535), default=9464, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--queue", "queues", multiple=True, metavar="NAME", help="Only this queue (repeatable)."
)
def metrics_serve(
    target: str, schema: str | None, port: int, host: str, queues: tuple[str, ...]
) -> None:
    """Serve /metrics for the queues of TARGET until Ctrl-C or SIGTERM.

    It only reads (an SQLite file or a PostgreSQL database); every scrape reads each
    queue's counters.

    \b
    Example:
      sqqueue metrics serve jobs.db --port 9464 --queue emails
      sqqueue metrics serve postgresql://monitor@db.internal/app --schema jobs
      curl -s http://127.0.0.1:9464/metrics | grep sqqueue_messages
    """
    db = base.database(target, schema)
    base.require_db(db)
    names = [base.check_name(name) for name in queues]
    if names:
        known = set(base.queue_names(db)) | set(base.legacy_names(db))
        missing = [name for name in names if name not in known]
        if missing:
            raise base.CliError(f"no queue {missing[0]!r} in {db.shown}")
    else:
        # A file that is not an SQLite database is refused at start; a database gone or
        # unreachable is served as sqqueue_up 0, and recovers when it is back.
        base.refuse_if_not_a_database(db)
    server, _ = start_metrics(db, port, host, names or None, with_durations=False)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda _n, _f: stop.set())
    click.echo(f"serving {metrics_url(server, host)} for {db.shown} (Ctrl-C to stop)")
    sys.stdout.flush()
    try:
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.shutdown()
