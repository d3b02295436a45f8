"""sqqueue.bridge: synchronous code run on the event loop, awaiting where it would block."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from sqqueue import bridge


async def answer(value: int) -> int:
    await asyncio.sleep(0)
    return value


async def refuse() -> None:
    await asyncio.sleep(0)
    raise KeyError("refused")


def test_a_bridged_call_awaits_on_the_loop_and_returns_its_value() -> None:
    def sync_code(a: int) -> tuple[int, bool]:
        return a + bridge.wait_for(answer(41)), bridge.active()

    assert asyncio.run(bridge.run(sync_code, 1)) == (42, True)
    assert not bridge.active()


def test_an_awaited_exception_is_raised_inside_the_call_which_may_handle_it() -> None:
    def handles() -> str:
        try:
            bridge.wait_for(refuse())
        except KeyError as exc:
            return f"handled {exc}"
        return "not raised"

    def lets_it_go() -> None:
        bridge.wait_for(refuse())

    assert asyncio.run(bridge.run(handles)) == "handled 'refused'"
    with pytest.raises(KeyError, match="refused"):
        asyncio.run(bridge.run(lets_it_go))


def test_other_tasks_run_while_a_bridged_call_waits() -> None:
    order: list[str] = []

    def slow() -> None:
        order.append("call starts")
        bridge.sleep(0.05)
        order.append("call ends")

    async def other() -> None:
        order.append("other task")

    async def main() -> None:
        await asyncio.gather(bridge.run(slow), other())

    asyncio.run(main())
    assert order == ["call starts", "other task", "call ends"]


def test_wait_for_outside_a_bridged_call_is_an_error() -> None:
    coroutine = answer(1)
    with pytest.raises(RuntimeError, match=r"bridge\.run"):
        bridge.wait_for(coroutine)
    coroutine.close()


def test_sleep_outside_the_bridge_is_time_sleep() -> None:
    start = time.monotonic()
    bridge.sleep(0.01)
    assert time.monotonic() - start >= 0.01


def test_a_wake_is_given_across_threads_and_tasks_without_blocking_the_loop() -> None:
    """A task waiting on a Wake leaves its loop free; a thread gives it; and a bridged
    call gives a Wake a thread waits on."""
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    async def main() -> None:
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        made: list[bridge.Wake] = []

        def wait_in_call() -> str:
            wake = bridge.Wake()
            made.append(wake)
            wake.wait()
            return "woken"

        call = asyncio.ensure_future(bridge.run(wait_in_call))
        while not made:
            await asyncio.sleep(0.005)
        giver = threading.Timer(0.1, made[0].give)
        giver.start()
        assert await asyncio.wait_for(call, 10) == "woken"
        stop.set()
        await tick
        assert ticks >= 5, "the loop was blocked while the task waited"

        thread_wake: list[bridge.Wake] = []
        woken = threading.Event()

        def thread_waits() -> None:
            wake = bridge.Wake()  # made in a thread: a lock
            thread_wake.append(wake)
            wake.wait()
            woken.set()

        waiter = threading.Thread(target=thread_waits)
        waiter.start()
        while not thread_wake:
            await asyncio.sleep(0.005)
        await bridge.run(thread_wake[0].give)
        assert await asyncio.to_thread(woken.wait, 10)
        waiter.join(10)

    asyncio.run(main())


def test_a_call_that_never_waits_ends_at_start() -> None:
    def boom() -> None:
        raise ValueError("at once")

    async def main() -> None:
        started = bridge.start(lambda: 5)
        assert started.done and started.value() == 5
        with pytest.raises(ValueError, match="at once"):
            bridge.start(boom)
        waits = bridge.start(lambda: bridge.wait_for(answer(7)))
        assert not waits.done
        assert await waits.finish() == 7

    asyncio.run(main())
