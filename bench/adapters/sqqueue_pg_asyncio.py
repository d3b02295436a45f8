"""sqqueue's asyncio API on PostgreSQL (``AsyncQueue``, ``AsyncWorker``), on the rows users
see: natively on the event loop (subject sqqueue-pg-asyncio, what users get), or with
every call in a worker thread (``native=False``: sqqueue-pg-asyncio-threads, the way the
asyncio API ran on PostgreSQL before), measured in the same run."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from .base import BARRIER, make_payload
from .pg import pg_url
from .sqqueue_pg import Adapter as Current

# A worker process: the asyncio queue with its default settings, a no-op coroutine, until
# SIGTERM (AsyncWorker stops on it when it runs on the main thread's loop).
_WORKER_APP = """
import asyncio

from sqqueue import AsyncQueue, AsyncWorker, PostgresQueue

queue = AsyncQueue(PostgresQueue({url!r}, "bench", schema={schema!r}), native={native})


async def handle(message):
    pass

{barrier}
asyncio.run(AsyncWorker(queue, handle, concurrency={concurrency}).run())
"""


class Adapter(Current):
    name = "sqqueue-pg-asyncio"
    #: the asyncio API's hot operations on the event loop (False: each call in a thread)
    native = True
    semantics = "sqqueue-pg's, through the asyncio API (the same queue logic)"
    how: ClassVar[dict[str, str]] = {
        **Current.how,
        "worker": "AsyncWorker(queue, no-op coroutine, concurrency=4).run() in asyncio.run, "
        "in a process of its own, default settings",
        "producers": "asyncio tasks of one event loop sharing one AsyncQueue, "
        "await enqueue() per message",
    }

    def worker_app(self, concurrency: int) -> str:
        return _WORKER_APP.format(
            url=pg_url(),
            schema=self.schema,
            native=self.native,
            barrier=BARRIER,
            concurrency=concurrency,
        )

    def run_async_producers(self, n: int, tasks: int, cap: float) -> dict[str, Any]:
        """``tasks`` asyncio tasks each calling enqueue() (``n`` messages in all), started
        together; messages enqueued ÷ time until the last call returned."""
        import asyncio

        from sqqueue import AsyncQueue

        aq = AsyncQueue(self.q, native=self.native)
        share = n // tasks
        done = [0] * tasks

        async def produce(k: int) -> None:
            payloads = [make_payload(k * share + i) for i in range(share)]
            t0 = time.perf_counter()
            for i, payload in enumerate(payloads):
                result = await aq.enqueue(payload)
                if result.is_err():
                    self._error(result.error)
                else:
                    done[k] += 1
                if i % 100 == 0 and time.perf_counter() - t0 > cap:
                    break

        async def run() -> float:
            t0 = time.perf_counter()
            await asyncio.gather(*(produce(k) for k in range(tasks)))
            return time.perf_counter() - t0

        seconds = asyncio.run(run())
        return {"value": sum(done) / seconds, "unit": "msg/s", "done": sum(done),
                "seconds": seconds}  # fmt: skip


class ThreadsAdapter(Adapter):
    """The same with ``native=False``."""

    name = "sqqueue-pg-asyncio-threads"
    native = False
    semantics = "sqqueue-pg's, through the asyncio API with native=False (a thread per call)"
