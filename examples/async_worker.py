"""The asyncio version of worker.py: python examples/async_worker.py jobs.db"""

import asyncio
import logging
import sys

from sqqueue import AsyncSQLiteQueue, AsyncWorker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
db = sys.argv[1] if len(sys.argv) > 1 else "jobs.db"


async def make_thumbnail(message):
    await asyncio.sleep(0.05)  # e.g. an HTTP call with httpx or aiohttp
    print(f"thumbnail of {message.payload['image']} (attempt {message.attempts})")


async def main():
    async with AsyncSQLiteQueue(db, table_name="thumbnails") as queue:
        await AsyncWorker(queue, make_thumbnail, concurrency=20).run()


asyncio.run(main())
