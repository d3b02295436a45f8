"""Process thumbnail jobs until Ctrl-C or SIGTERM: python examples/worker.py jobs.db

Run several of these at once, on the same file: each job is handled by exactly one of them.
Stop one with Ctrl-C: it finishes what it is doing, gives back what it has not started,
and exits. A second Ctrl-C stops it at once (the interrupted job goes back to the queue).
"""

import logging
import sys
import time

from sqqueue import RetryPolicy, SQLiteQueue, Worker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
db = sys.argv[1] if len(sys.argv) > 1 else "jobs.db"

queue = SQLiteQueue(
    db,
    table_name="thumbnails",
    default_visibility_timeout=30,
    retry=RetryPolicy.exponential(base=1, cap=60),
)


def make_thumbnail(message):
    job = message.payload
    time.sleep(0.05)  # the real work would go here
    print(f"thumbnail of {job['image']} at {job['size']}px (attempt {message.attempts})")


Worker(queue, make_thumbnail, concurrency=4, task_timeout=120).run()
