"""`pubsub.jetstream`: publishes and their acknowledgements, many in flight on one connection.

A JetStream publish is a NATS request: the message goes out with a reply subject, and the
stream answers there once it stored it (`{"stream": ..., "seq": ...}`, or an error); nobody
answers when no stream takes the subject (the server's 503 status). Here every reply
subject is under one inbox of the broker's own (`<inbox>.<n>`), read by one subscription,
and each publish waits on a future that one sweeper fails when it is overdue: what nats-py's
`request` does per call (a token, a subscription lookup, a `wait_for`), done once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Mapping
from typing import Any

import nats.aio.client
import nats.aio.msg
import nats.errors

from . import BrokerError

__all__: list[str] = []


class Publisher:
    """The publishes of one connection, each answered by the stream (or refused)."""

    def __init__(self, client: nats.aio.client.Client, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._inbox = client.new_inbox() + "."
        self._numbers = itertools.count()
        self._waiting: dict[str, tuple[asyncio.Future[nats.aio.msg.Msg], float]] = {}
        self._subscription: Any = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subscription = await self._client.subscribe(self._inbox + "*", cb=self._answered)
        self._sweeper = asyncio.create_task(self._sweep(), name="jetstream publish deadlines")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for future, _ in self._waiting.values():
            if not future.done():
                future.set_exception(BrokerError("publishing stopped before the stream answered"))
        self._waiting.clear()
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    async def _answered(self, msg: nats.aio.msg.Msg) -> None:
        waiting = self._waiting.pop(msg.subject[len(self._inbox) :], None)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)

    async def _sweep(self) -> None:
        """Fail the publishes the stream has not answered in time (checked five times a
        timeout: one may wait up to a fifth longer)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._timeout / 5)
            now = loop.time()
            overdue = [token for token, (_, deadline) in self._waiting.items() if deadline <= now]
            for token in overdue:
                future, _ = self._waiting.pop(token)
                if not future.done():
                    future.set_exception(BrokerError(f"the stream did not answer within {self._timeout:g}s"))

    async def publish(self, subject: str, data: bytes, headers: Mapping[str, str]) -> tuple[str, int]:
        """Store one message; its stream and sequence. `BrokerError` when it is not taken."""
        token = str(next(self._numbers))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[nats.aio.msg.Msg] = loop.create_future()
        self._waiting[token] = (future, loop.time() + self._timeout)
        try:
            await self._client.publish(subject, data, reply=self._inbox + token, headers=dict(headers))
            answer = await future
        except nats.errors.Error as exc:
            raise BrokerError(f"publishing to {subject} failed: {exc or type(exc).__name__}") from None
        finally:
            self._waiting.pop(token, None)
        if answer.headers and answer.headers.get("Status") == "503":
            raise BrokerError(f"no JetStream stream takes the subject {subject}: create one that does")
        try:
            acknowledged = json.loads(answer.data)
        except ValueError:
            raise BrokerError(f"publishing to {subject}: not a JetStream answer") from None
        error = acknowledged.get("error") if isinstance(acknowledged, dict) else None
        if error or not isinstance(acknowledged, dict):
            described = error.get("description", error) if isinstance(error, dict) else error
            raise BrokerError(f"the stream did not take the message: {described}")
        return str(acknowledged.get("stream", "")), int(acknowledged.get("seq", 0))
