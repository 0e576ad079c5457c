"""SubscribeTopicEventsAlpha1: streaming subscriptions, delivered by the delivery engine.

The client's first message is its `initial_request` (pubsub, topic, metadata,
dead-letter topic); the subscription then starts (runtime's `Dynamic`, checked
as daprd checks it) and the stream answers `initial_response`. Each message of
the topic goes to the client as an `event_message` (stream_event.py), and the
client answers each with `event_processed` (its id and SUCCESS, RETRY or DROP),
in any order, many in flight at once.

A streaming subscription is one more subscription of the engine: its worker posts
each message to the stream's ASGI app (`Stream`), which writes it on the stream
and answers the engine with the client's status, so retries, the retry policy,
resiliency and dead letters are those of every subscription. When the stream
ends (the client cancels or ends its requests, or the server stops), the
subscription stops at once: what is in flight is handed back to the broker
(never acked, never lost), the consumer is closed and the subscription leaves
the metadata. Errors are daprd's: its plain errors are UNKNOWN with its text.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import grpc
from dapr.proto.runtime.v1 import pubsub_pb2
from starlette.types import Receive, Scope, Send

from ..._exceptions import DaprAPIError
from ..._json import loads
from ..delivery import Route
from ..dynamic import STREAM_PATH, NotAllowed, SubscriberClosed, stream_route
from . import errors
from .stream_event import EventError, topic_event

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

CLOSE_WAIT = 5.0  # how long `Streams.closed` waits for cancelled streams to stop

_REQUEST_KIND = "subscribe_topic_events_request_type"
_ANSWERS = {0: b'{"status":"SUCCESS"}', 1: b'{"status":"RETRY"}', 2: b'{"status":"DROP"}'}
_JSON = [(b"content-type", b"application/json")]


class _Failure(NamedTuple):
    """The stream ends with daprd's error (UNKNOWN, its plain errors' code, and `message`)."""

    message: str
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


_END = object()  # the stream ends without an error
# daprd's errors when the subscriptions stop (the runtime stops) and when the server stops:
# UNKNOWN, on which the SDKs wait for the sidecar and subscribe again.
_STOPPED = "stream closed"
_SERVER_CLOSED = "api server closed"


class Stream:
    """One open stream: the ASGI app its subscription's engine posts to, and its outbox."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()  # answers to send, then _END or a _Failure
        self.pending: dict[str, collections.deque[asyncio.Future[int]]] = {}
        self.closed = False  # nothing more is written: what comes is left to the engine's stop
        self.ended = False
        self.done = asyncio.Event()  # the subscription has stopped

    def end(self, failure: str | None = None, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        """End the stream (once): with daprd's error `failure`, else cleanly. Nothing more is
        written: what was not written yet is dropped from the outbox, so that the end is next,
        and what awaits an answer is handed back (`close`)."""
        if not self.ended:
            self.ended = True
            self.close()
            while not self.outbox.empty():
                self.outbox.get_nowait()
            self.outbox.put_nowait(_END if failure is None else _Failure(failure, code))

    # -- the engine's side: one delivery -------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        status, answer = await self.deliver(body)
        await send({"type": "http.response.start", "status": status, "headers": _JSON})
        await send({"type": "http.response.body", "body": answer})

    async def deliver(self, body: bytes) -> tuple[int, bytes]:
        """Write the event `body` carries on the stream; the client's status, as the engine
        reads an app's answer (a 500, which the engine retries, where daprd errs)."""
        try:
            event = loads(body)
            if not isinstance(event, dict):
                raise EventError("the message is not a CloudEvent")
            envelope = topic_event(event, self.route, STREAM_PATH)
        except (ValueError, EventError) as exc:
            return 500, f"error returned from app while processing pub/sub event: {exc}".encode()
        if self.closed:  # nobody will answer: the worker hands it back (its stop follows)
            raise asyncio.CancelledError
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiting = self.pending.setdefault(envelope.id, collections.deque())
        waiting.append(future)
        try:
            self.outbox.put_nowait(pubsub_pb2.SubscribeTopicEventsResponseAlpha1(event_message=envelope))
            status = await future
        finally:
            if future in waiting:
                waiting.remove(future)
            if not waiting and self.pending.get(envelope.id) is waiting:
                del self.pending[envelope.id]
        return 200, _ANSWERS.get(status, b'{"status":"UNKNOWN"}')  # unknown: retried, as daprd

    def close(self) -> None:
        """Nothing more is written on the stream; what awaits an answer is handed back."""
        self.closed = True
        for waiting in self.pending.values():
            for future in waiting:
                future.cancel()

    # -- the client's side: its answers ----------------------------------------

    def processed(self, answer: Any) -> None:
        """The client's `event_processed`: the oldest delivery of that id waiting gets it."""
        waiting = self.pending.get(answer.id)
        future = next((future for future in waiting or () if not future.done()), None)
        if future is None:
            logger.error(
                "streaming subscription to %s: no message %r awaits an answer",
                self.route.describe(),
                answer.id,
            )
            return
        future.set_result(answer.status.status)

    async def read(self, requests: AsyncIterator[Any]) -> None:
        """The client's messages after its initial request, until the stream ends."""
        try:
            async for request in requests:
                if request.WhichOneof(_REQUEST_KIND) != "event_processed":
                    self.end("duplicate initial request received")
                    return
                self.processed(request.event_processed)
        except asyncio.CancelledError:
            raise
        except errors.Undecodable as exc:
            self.end(str(exc), grpc.StatusCode.INTERNAL)
        except Exception as exc:  # the call is gone (cancelled, reset)
            logger.debug("streaming subscription to %s: %s", self.route.describe(), exc)
        self.end()


class Streams:
    """The open streaming subscriptions of one gRPC server."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.open: set[Stream] = set()
        self.starting: set[asyncio.Future[Any]] = set()  # the calls awaiting their first message
        self.closing = False

    async def first_request(self, reader: Any, context: Any) -> Any:
        """The call's first message; daprd's error when there is none, or the server closes first."""
        if self.closing:
            await errors.abort(context, grpc.StatusCode.UNKNOWN, _SERVER_CLOSED)
        first = asyncio.ensure_future(reader.__anext__())
        self.starting.add(first)
        try:
            return await asyncio.shield(first)
        except StopAsyncIteration:
            await errors.abort(context, grpc.StatusCode.UNKNOWN, "EOF")
        except asyncio.CancelledError:
            if not first.cancelled() or not self.closing:
                first.cancel()
                raise
            await errors.abort(context, grpc.StatusCode.UNKNOWN, _SERVER_CLOSED)
        finally:
            self.starting.discard(first)

    async def subscribe(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        """One SubscribeTopicEventsAlpha1 call."""
        runtime = await self.service.running(context)
        reader = requests.__aiter__()
        first = await self.first_request(reader, context)
        initial = first.initial_request
        if first.WhichOneof(_REQUEST_KIND) != "initial_request":
            await errors.abort(context, grpc.StatusCode.UNKNOWN, "initial request is required")
        if not initial.pubsub_name:
            await errors.abort(context, grpc.StatusCode.UNKNOWN, "pubsubName is required")
        if not initial.topic:
            await errors.abort(context, grpc.StatusCode.UNKNOWN, "topic is required")
        route = stream_route(initial.pubsub_name, initial.topic, initial.metadata, initial.dead_letter_topic)
        stream = Stream(route)
        try:
            subscription = await runtime.dynamic.start(route, stream, lambda: stream.end(_STOPPED))
        except DaprAPIError as exc:
            await errors.abort_api_error(context, exc)
        except (NotAllowed, SubscriberClosed) as exc:
            await errors.abort(context, grpc.StatusCode.UNKNOWN, str(exc))
        self.open.add(stream)
        if self.closing:  # the server began its stop while this one started
            stream.end(_SERVER_CLOSED)
        reading = asyncio.create_task(stream.read(reader), name=f"fastapi-dapr stream {route.describe()}")

        async def unsubscribe() -> None:
            stream.close()
            reading.cancel()
            try:
                await runtime.dynamic.stop(subscription)
            finally:
                self.open.discard(stream)
                stream.done.set()

        try:
            yield pubsub_pb2.SubscribeTopicEventsResponseAlpha1(
                initial_response=pubsub_pb2.SubscribeTopicEventsResponseInitialAlpha1()
            )
            while True:
                item = await stream.outbox.get()
                if item is _END:
                    break
                if isinstance(item, _Failure):
                    await errors.abort(context, item.code, item.message)
                yield item
        finally:
            # Shielded: a second cancellation must not leave the subscription half stopped.
            await asyncio.shield(asyncio.ensure_future(unsubscribe()))

    async def close(self, grace: float) -> None:
        """The server stops: every stream ends, what it has in flight handed back; `grace`
        seconds at most for their calls to end (a client that reads nothing holds its call,
        which the server's stop then cancels)."""
        self.closing = True
        for first in list(self.starting):
            first.cancel()  # its call answers daprd's "api server closed"
        streams = list(self.open)
        for stream in streams:
            stream.end(_SERVER_CLOSED)
        await self._wait(streams, grace)

    async def closed(self) -> None:
        """Once the server cancelled the calls: their subscriptions have stopped."""
        await self._wait(list(self.open), CLOSE_WAIT)

    @staticmethod
    async def _wait(streams: list[Stream], timeout: float) -> None:
        if streams:
            waits = [asyncio.ensure_future(stream.done.wait()) for stream in streams]
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for wait in pending:
                wait.cancel()
