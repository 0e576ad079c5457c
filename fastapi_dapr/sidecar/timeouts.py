"""A timeout that never swallows a cancellation, nor loses what it cut short.

`asyncio.wait_for` of Python 3.10 and 3.11 returns the inner result, and drops a
cancellation that arrives in the same turn (python/cpython#86296); on 3.12 it raises
the cancellation and drops the result. For the invocation client either loses
something that holds a connection slot: a caller that left keeps its exchange running,
or an answer nobody will close. `within` lets the caller's cancellation win, always,
and hands a result that came too late to `discard`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__: list[str] = []

T = TypeVar("T")


async def within(
    awaitable: Awaitable[T], seconds: float | None, discard: Callable[[T], object] | None = None
) -> T:
    """`await awaitable`, for at most `seconds` (None: no limit); `asyncio.TimeoutError` then.

    Cancelled meanwhile, it cancels the awaitable, waits for it to stop and raises
    `CancelledError`; a result that was ready or comes anyway goes to `discard`."""
    if seconds is None:
        return await awaitable
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait((task,), timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(lambda ended: _discard(ended, discard))
        await asyncio.wait((task,))  # it stops before its caller does: nothing left behind
        raise
    if done:
        return task.result()
    task.cancel()
    try:
        await asyncio.wait((task,))  # until it has stopped: what it held is let go
    finally:
        task.add_done_callback(lambda ended: _discard(ended, discard))
    raise asyncio.TimeoutError


def _discard(task: asyncio.Future[T], discard: Callable[[T], object] | None) -> None:
    if task.cancelled():
        return
    if task.exception() is None and discard is not None:
        discard(task.result())
