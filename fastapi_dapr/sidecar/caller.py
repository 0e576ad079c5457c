"""The caller of an ASGI request: its body, read whole, streamed or handed to the app, counted
against a limit, and its leaving, noticed while its answer is awaited or sent.

One reader of each kind for the whole sidecar (`read_body`, `RequestBody`, `LimitedReceive`),
so that "the caller went away" (`ClientGone`) and "the body is too large" (`BodyTooLarge`,
`too_large_message`) mean one thing everywhere: a cut body is never taken for a whole one.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Mapping

from starlette.types import Message, Receive

__all__: list[str] = []


class ClientGone(Exception):
    """The caller went away before its body was whole (ASGI `http.disconnect`)."""


class BodyTooLarge(Exception):
    """The caller's body is larger than the limit."""


def too_large_message(limit: int) -> str:
    """The words of every 413 for a body over `limit`."""
    return f"the request body is larger than the limit of {limit} bytes"


def declared_size(headers: Mapping[str, str]) -> int | None:
    """The body's `Content-Length`, None when none is given or it is not a number. Only
    ASCII digits are one: `str.isdigit` also takes `²`, which `int` refuses."""
    declared = headers.get("content-length", "").strip(" \t")
    if declared.isascii() and declared.isdigit():
        return int(declared)
    return None


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The whole body; a declared length over `limit` is refused before reading."""
    declared = declared_size(headers)
    if declared is not None and declared > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone  # an incomplete body is never passed on
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class RequestBody:
    """The caller's body, passed on chunk by chunk and counted against the limit (None: none).

    `prefix` is what was received of it already; `on_end` runs once the last of it
    arrived (from then on `receive` is free for a `CallerWatch`)."""

    def __init__(
        self,
        receive: Receive,
        limit: int | None,
        *,
        prefix: bytes = b"",
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self._receive = receive
        self._limit = limit
        self._prefix = prefix
        self._on_end = on_end
        self.too_large = False
        self.gone = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = len(self._prefix)
        if self._prefix:
            yield self._prefix
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ClientGone  # the upstream must not take a cut body for a whole one
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if self._limit is not None and received > self._limit:
                self.too_large = True
                raise BodyTooLarge
            more = message.get("more_body", False)
            if not more and self._on_end is not None:
                self._on_end()
            if chunk:
                yield chunk
            if not more:
                return


class LimitedReceive:
    """The caller's `receive` for an app that reads the body itself, counted against `limit`
    while it streams: past the limit the app sees the caller go away (`http.disconnect`),
    and `too_large` says why, for the 413 the caller gets instead of the app's answer."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._received = 0
        self.too_large = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                self.too_large = True
                return {"type": "http.disconnect"}
        return message


class CallerWatch:
    """Cancels the task serving a request when its caller goes away.

    Used as `with CallerWatch(receive) as watch:` around serving the request:
    `start()` once the caller's body is read (before that, its reader sees the
    caller leave); the end of the block stops the watch, and ends the watch's
    own cancellation without an error (taking it back, so that the task goes on
    normally). `ours()` tells, in an `except asyncio.CancelledError`, whether
    the cancellation was the watch's.

    The watching task starts `GRACE` seconds after `start()`: most answers are
    whole by then, and cost a timer instead of a task (`bench/invoke_proxy.py`
    measured the task at some 5 % of the proxy's CPU). A caller gone is noticed
    within that time, and then at once.
    """

    GRACE = 0.02

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Future[None] | None = None
        self._stopped = False
        self._on_gone: list[Callable[[], object]] = []
        self.gone = False

    def on_gone(self, callback: Callable[[], object]) -> None:
        """Call `callback` too when the caller leaves: what the cancellation may not reach
        (an answer being streamed when the cancellation was lost in a race)."""
        self._on_gone.append(callback)

    def start(self) -> None:
        if self._timer is None and not self._stopped and self._task is not None:
            self._timer = asyncio.get_running_loop().call_later(self.GRACE, self._begin)

    def _begin(self) -> None:
        if not self._stopped:
            self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        ended = False
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
            if ended:
                return  # a `receive` that never waits (a test's): there is nothing to watch
            # What is left of a body nobody reads (an early answer stopped the upload).
            ended = not message.get("more_body", False)
        if not self._stopped and self._task is not None:
            self.gone = True
            self._task.cancel()
            for callback in self._on_gone:
                callback()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()

    def ours(self) -> bool:
        if not self.gone:
            return False
        if sys.version_info >= (3, 11) and self._task is not None:
            self._task.uncancel()
        return True

    def __enter__(self) -> CallerWatch:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        """Stops watching; the watch's own cancellation ends the block without an error."""
        self.stop()
        return kind is not None and issubclass(kind, asyncio.CancelledError) and self.ours()
