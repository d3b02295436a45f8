"""Enqueue thumbnail jobs: python examples/producer.py jobs.db 100"""

import sys

from sqqueue import SQLiteQueue

db = sys.argv[1] if len(sys.argv) > 1 else "jobs.db"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 100

with SQLiteQueue(db, table_name="thumbnails") as queue:
    ids = queue.enqueue_batch([{"image": f"photo-{n}.jpg", "size": 256} for n in range(count)])
    print(f"enqueued {len(ids.unwrap())} jobs into {db}")
