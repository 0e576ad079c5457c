"""`pubsub.redis`: acknowledgements that go out with a stream's next read (redis_stream.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fastapi_dapr.brokers import Delivery

from ..redis_server import RedisServer, redis_server

redis = pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")

pytestmark = pytest.mark.redis


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path) as started:
        yield started


async def pending_count(client: Any, topic: str) -> int:
    count: int = (await client.xpending(topic, "app"))["pending"]
    return count


async def until_nothing_pending(client: Any, topic: str) -> None:
    for _ in range(500):  # Redis's pending list cannot be awaited: it is polled, 10 s at most
        if not await pending_count(client, topic):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still pending on {topic}: {await pending_count(client, topic)}")


async def test_acks_sent_with_a_read_that_fails_are_sent_again(server: RedisServer) -> None:
    """The acks a read took with it are not lost when that read fails before Redis
    answered them: they go again, and the messages stop being pending."""
    from fastapi_dapr.brokers.redis import RedisBroker
    from fastapi_dapr.brokers.redis_stream import StreamConsumer

    broker = RedisBroker("pubsub", {"redisHost": server.url, "readTimeout": "1s"}, app_id="app")
    await broker.start()
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        consumer = await broker.subscribe("work")
        assert isinstance(consumer, StreamConsumer)
        consumer._want_ack = lambda _: None  # only the reads send acks
        reads = consumer._reads
        execute = reads.execute
        failed: list[int] = []

        async def failing_once(packed: Sequence[bytes], **options: Any) -> list[Any]:
            if b"XACK" in packed[0][:20] and not failed:
                failed.append(len(packed))
                raise OSError("connection reset")  # before anything was sent
            return await execute(packed, **options)

        reads.execute = failing_once  # type: ignore[method-assign]
        await broker.publish("work", b"one", {})
        await broker.publish("work", b"two", {})
        deliveries: list[Delivery] = []
        while len(deliveries) < 2:
            deliveries += await asyncio.wait_for(consumer.receive(2), 10)
        for delivery in deliveries:
            await delivery.ack()
        await until_nothing_pending(client, "work")
        assert failed == [2]  # an XACK rode with a read, which failed; the next read sent it again
        await broker.publish("work", b"three", {})  # the reader goes on after the failure
        (third,) = await asyncio.wait_for(consumer.receive(1), 10)
        assert third.message.data == b"three"
        await third.ack()
        await until_nothing_pending(client, "work")
    finally:
        await client.aclose()
        await broker.close()


async def test_acks_go_out_without_any_publish(server: RedisServer) -> None:
    """Messages handled and acknowledged stop being pending at once, with nothing
    published after them (the reader's next read takes the acks)."""
    from fastapi_dapr.brokers.redis import RedisBroker

    broker = RedisBroker("pubsub", {"redisHost": server.url}, app_id="app")
    await broker.start()
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        consumer = await broker.subscribe("work")
        for n in range(20):
            await broker.publish("work", b"%d" % n, {})
        seen = 0
        while seen < 20:
            for delivery in await asyncio.wait_for(consumer.receive(20), 10):
                await delivery.ack()
                seen += 1
        await until_nothing_pending(client, "work")
    finally:
        await client.aclose()
        await broker.close()
