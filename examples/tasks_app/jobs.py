"""A sqqueue Tasks app: the background jobs of a web application.

Run the workers from this directory (as many as you like, on one machine or, with a
PostgreSQL URL in JOBS_DB, on many)::

    sqqueue worker jobs:tasks --concurrency 4

and enqueue from the web app (fastapi_app.py, flask_app.py) or a shell::

    python -c "import jobs; print(jobs.send_email.delay('ada@example.com', 'hi'))"
"""

from __future__ import annotations

import asyncio
import os

from sqqueue import RetryPolicy, Tasks
from sqqueue.tasks import current_task

# A file path, sqlite:///path or postgresql://... URL.
tasks = Tasks(os.environ.get("JOBS_DB", "jobs.db"), store_result=True, result_ttl=3600)

SENT: list[str] = []  # what this process "sent" (a stand-in for a mail server)


@tasks.task(retries=5, retry=RetryPolicy.exponential(base=2, cap=300), timeout=60)
def send_email(to: str, subject: str) -> dict[str, str]:
    """Send one email; retried with backoff if the (pretend) mail server fails."""
    run = current_task()
    # The message id is the same on every retry: an idempotency key for the mail server.
    key = f"email-{run.message_id}" if run is not None else "direct-call"
    SENT.append(f"{to}: {subject}")
    return {"to": to, "status": "sent", "idempotency_key": key}


@tasks.task(dedup=True)
async def refresh_profile(user_id: int) -> dict[str, int]:
    """An asyncio task; dedup=True: one unfinished refresh per user, however often asked."""
    await asyncio.sleep(0.01)  # e.g. an HTTP call with httpx.AsyncClient
    return {"user_id": user_id}


@tasks.periodic(cron="0 3 * * *", tz="Europe/Paris")
def nightly_cleanup() -> None:
    """03:00 Paris time, once per night, however many workers run."""
    tasks.queue().purge("dead", older_than=30 * 86400)
