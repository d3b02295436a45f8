"""``python manage.py runtasks``: the worker of the shop's tasks, inside Django (settings,
models and all are set up before any task runs). Stops gracefully on SIGTERM or Ctrl-C."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from shop.jobs import tasks


class Command(BaseCommand):
    help = "Run the sqqueue worker for the shop's tasks (every queue, and periodic tasks)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, default=2, help="handlers per queue")
        parser.add_argument(
            "--grace-period", type=float, default=30.0, help="seconds to finish at shutdown"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stats = tasks.run_worker(
            concurrency=options["concurrency"], grace_period=options["grace_period"]
        )
        completed = sum(s.completed for s in stats.values())
        failed = sum(s.failed for s in stats.values())
        self.stdout.write(f"worker stopped: {completed} completed, {failed} failed")
