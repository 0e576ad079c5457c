"""`within`: the invocation path's timeout, which never swallows a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from fastapi_dapr.sidecar.timeouts import within


async def test_a_cancellation_wins_over_a_result_of_the_same_turn() -> None:
    # asyncio.wait_for of Python 3.10 and 3.11 returns the result here and loses the
    # cancellation (python/cpython#86296): a caller that left would keep its exchange.
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    discarded: list[str] = []

    async def answer() -> str:
        return await ready

    outer = asyncio.ensure_future(within(answer(), 30, discarded.append))
    await asyncio.sleep(0)  # one turn: `within` is waiting
    ready.set_result("an answer holding a connection")
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    await asyncio.sleep(0)  # the inner task's end is handled in the next turn
    assert discarded == ["an answer holding a connection"]  # given back, not lost


async def test_the_deadline_cancels_the_awaitable_and_raises_timeout() -> None:
    stopped = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    with pytest.raises(asyncio.TimeoutError):
        await within(forever(), 0.01)
    assert stopped.is_set()


async def test_without_a_limit_it_is_a_plain_await() -> None:
    async def value() -> int:
        return 7

    assert await within(value(), None) == 7


async def test_a_cancelled_caller_returns_only_once_the_awaitable_has_stopped() -> None:
    # Nothing is left running behind a caller that left: the awaitable's clean-up (which
    # lets a connection go) has ended when the cancellation reaches the caller.
    entered = asyncio.Event()
    cleaned: list[str] = []

    async def exchange() -> None:
        try:
            entered.set()
            await asyncio.Event().wait()
        finally:
            for _ in range(3):  # a clean-up that takes a few turns
                await asyncio.sleep(0)
            cleaned.append("done")

    outer = asyncio.ensure_future(within(exchange(), 30))
    await entered.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert cleaned == ["done"]
