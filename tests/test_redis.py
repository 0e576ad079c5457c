"""`pubsub.redis` against a real redis-server started by the tests (reference 5)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_dapr import RETRY, CloudEvent, Dapr
from fastapi_dapr.brokers import Broker, BrokerError
from fastapi_dapr.brokers.memory import MemoryBroker
from fastapi_dapr.testing import DaprTest

from .redis_server import RedisServer, redis_server

redis = pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path) as started:
        yield started


async def make_broker(kind: str, server: RedisServer | None, **metadata: str) -> Broker:
    if kind == "memory":
        broker: Broker = MemoryBroker("pubsub", metadata, app_id="app")
    else:
        assert server is not None
        from fastapi_dapr.brokers.redis import RedisBroker

        broker = RedisBroker("pubsub", {"redisHost": server.url, **metadata}, app_id="app")
    await broker.start()
    return broker


@pytest.fixture(params=["memory", "redis"])
async def broker_kind(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    if request.param == "memory":
        yield "memory", None
        return
    async with redis_server(tmp_path) as started:
        yield "redis", started


# -- the broker contract, for every broker ------------------------------------------------------


async def test_contract_publish_receive_ack(broker_kind: tuple[str, Any]) -> None:
    broker = await make_broker(*broker_kind)
    try:
        consumer = await broker.subscribe("orders")
        ids = [await broker.publish("orders", f"m{n}".encode(), {"n": str(n)}) for n in range(5)]
        received = []
        while len(received) < 5:
            received += await asyncio.wait_for(consumer.receive(5 - len(received)), 10)
        assert [d.message.data for d in received] == [f"m{n}".encode() for n in range(5)]
        assert [d.message.id for d in received] == ids
        assert received[2].message.metadata == {"n": "2"}
        assert {d.message.topic for d in received} == {"orders"}
        for delivery in received:
            await delivery.ack()
    finally:
        await broker.close()


async def test_contract_competing_consumers_share_fan_out_across_groups(broker_kind: tuple[str, Any]) -> None:
    kind, server = broker_kind
    first = await make_broker(kind, server)
    # The same consumer group in another broker instance (another replica) for Redis;
    # in memory, replicas of one process are the one broker.
    second = await make_broker(kind, server) if kind == "redis" else first
    other_group = await make_broker(kind, server, consumerID="audit") if kind == "redis" else None
    try:
        a = await first.subscribe("t")
        b = await second.subscribe("t")
        audit = await other_group.subscribe("t") if other_group else None
        for n in range(20):
            await first.publish("t", str(n).encode(), {})
        seen: list[bytes] = []
        while len(seen) < 20:
            for consumer in (a, b) if b is not a else (a,):
                try:
                    batch = await asyncio.wait_for(consumer.receive(3), 0.5 if b is not a else 10)
                except asyncio.TimeoutError:
                    continue
                for delivery in batch:
                    seen.append(delivery.message.data)
                    await delivery.ack()
        assert sorted(seen, key=int) == [str(n).encode() for n in range(20)]  # each once
        if audit is not None:
            got = []
            while len(got) < 20:
                got += await asyncio.wait_for(audit.receive(20), 10)
            assert len(got) == 20  # another group sees every message too
    finally:
        for broker in {id(b): b for b in (first, second, other_group) if b}.values():
            await broker.close()


async def test_contract_returned_messages_come_again(broker_kind: tuple[str, Any]) -> None:
    broker = await make_broker(*broker_kind)
    try:
        consumer = await broker.subscribe("t")
        await broker.publish("t", b"once", {})
        (delivery,) = await asyncio.wait_for(consumer.receive(1), 10)
        await delivery.nack(redeliver=True)
        (again,) = await asyncio.wait_for(consumer.receive(1), 10)
        assert again.message.id == delivery.message.id
        await again.ack()
    finally:
        await broker.close()


# -- Redis: daprd's layout ---------------------------------------------------------------------


async def test_entries_have_daprds_fields(server: RedisServer) -> None:
    broker = await make_broker("redis", server, maxLenApprox="1000")
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        entry_id = await broker.publish("orders", b'{"id":"1"}', {"ttlInSeconds": "60"})
        ((read_id, fields),) = await client.xrange("orders")
        assert read_id.decode() == entry_id
        # As Go's json.Marshal writes the metadata map: compact, keys sorted.
        assert fields == {b"data": b'{"id":"1"}', b"metadata": b'{"ttlInSeconds":"60"}'}
        groups = await client.xinfo_groups("orders")
        assert groups == []  # a publisher creates no group: subscribers do, from 0
    finally:
        await client.aclose()
        await broker.close()


async def test_an_entry_written_as_daprd_writes_it_is_delivered(server: RedisServer) -> None:
    app = FastAPI()
    (Path(server.folder) / "resources").mkdir()
    (Path(server.folder) / "resources" / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        f"  type: pubsub.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: {server.url}\n"
    )
    dapr = Dapr(app, app_id="checkout", resources_path=Path(server.folder) / "resources")
    got: list[CloudEvent[dict[str, Any]]] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, Any]]) -> None:
        got.append(event)

    # As daprd's XADD: the envelope daprd built, and its metadata map.
    envelope = {
        "specversion": "1.0", "id": "e-1", "source": "shop", "type": "com.dapr.event.sent",
        "datacontenttype": "application/json", "data": {"order": 7}, "topic": "orders",
        "pubsubname": "pubsub", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=server.port)
    async with DaprTest(app) as test:
        await client.xadd("orders", {"data": json.dumps(envelope), "metadata": "{}"})
        report = await test.wait_for_delivery(topic="orders", timeout=10)
    groups = await client.xinfo_groups("orders")  # the app stopped: every ack went out
    await client.aclose()
    assert report.outcome == "delivered"
    assert got[0].id == "e-1"
    assert got[0].data == {"order": 7}
    assert groups[0]["name"] == b"checkout"  # the group is the consumerID (the app id)
    assert groups[0]["pending"] == 0  # acknowledged


async def test_publish_through_the_app_and_deliver(server: RedisServer, tmp_path: Path) -> None:
    app, dapr, seen = redis_app(tmp_path, server)

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, int]]) -> None:
        seen.append(event.data["n"])

    async with DaprTest(app) as test:
        for n in range(10):
            await test.publish_and_wait("pubsub", "orders", {"n": n}, timeout=10)
    assert sorted(seen) == list(range(10))


def redis_app(tmp_path: Path, server: RedisServer, extra: str = "") -> tuple[FastAPI, Dapr, list[Any]]:
    folder = tmp_path / "resources"
    folder.mkdir(exist_ok=True)
    (folder / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        f"  type: pubsub.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: {server.url}\n"
        + extra
    )
    app = FastAPI()
    return app, Dapr(app, app_id="checkout", resources_path=folder), []


async def test_failed_messages_are_retried_until_processed(server: RedisServer, tmp_path: Path) -> None:
    """A handler failing the first two attempts and every 5th message: all end up processed."""
    from fastapi_dapr import RetryPolicy
    from fastapi_dapr.testing import FakeClock

    app, dapr, processed = redis_app(tmp_path, server)
    attempts: dict[int, int] = {}

    @dapr.subscribe("pubsub", "jobs")
    async def on_job(event: CloudEvent[dict[str, int]]) -> Any:
        n = event.data["n"]
        attempts[n] = attempts.get(n, 0) + 1
        if n < 2 and attempts[n] <= 2:
            return RETRY
        if n % 5 == 4 and attempts[n] == 1:
            raise RuntimeError("every 5th fails once")
        processed.append(n)
        return None

    dapr.retry = RetryPolicy(policy="constant", duration=1.0, max_retries=3)
    async with DaprTest(app, clock=FakeClock()) as test:
        for n in range(10):
            await test.publish_and_wait("pubsub", "jobs", {"n": n}, timeout=10)
    assert sorted(processed) == list(range(10))
    assert attempts == {n: 3 if n < 2 else 2 if n % 5 == 4 else 1 for n in range(10)}


async def test_publishing_while_redis_is_down_is_a_500(server: RedisServer, tmp_path: Path) -> None:
    import httpx

    app, _, _ = redis_app(tmp_path, server)
    transport = httpx.ASGITransport(app=app)
    async with DaprTest(app), httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        assert (await client.post("/v1.0/publish/pubsub/t", json={"a": 1})).status_code == 204
        await server.stop()
        answer = await client.post("/v1.0/publish/pubsub/t", json={"a": 1})
    assert answer.status_code == 500
    assert answer.json()["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"


async def test_bad_metadata_stops_the_start(tmp_path: Path) -> None:
    from fastapi_dapr.brokers.redis import RedisBroker

    with pytest.raises(ValueError, match="redisHost is required"):
        RedisBroker("p", {}, app_id="a")
    with pytest.raises(ValueError, match="processingTimeout is not a duration"):
        RedisBroker("p", {"redisHost": "x:1", "processingTimeout": "soon"}, app_id="a")
    durations = RedisBroker(
        "p", {"redisHost": "x:1", "redeliverInterval": "30s", "processingTimeout": "1500"}, app_id="a"
    )
    assert (durations.redeliver_interval, durations.processing_timeout) == (30.0, 1.5)
    unreachable = RedisBroker("p", {"redisHost": "127.0.0.1:1"}, app_id="a")
    with pytest.raises(BrokerError, match=r"cannot reach Redis at 127\.0\.0\.1:1"):
        await unreachable.start()


def cloudevent(event_id: str, data: Any) -> bytes:
    envelope = {
        "specversion": "1.0", "id": event_id, "source": "test", "type": "com.dapr.event.sent",
        "datacontenttype": "application/json", "data": data,
    }  # fmt: skip
    return json.dumps(envelope).encode()


REPLICA = """
import asyncio, sys
from pathlib import Path
from fastapi import FastAPI
from fastapi_dapr import CloudEvent, Dapr
from fastapi_dapr.testing import DaprTest

app = FastAPI()
dapr = Dapr(app, app_id="checkout", resources_path=Path(sys.argv[1]))

@dapr.subscribe("pubsub", "jobs")
async def on_job(event: CloudEvent[dict[str, int]]) -> None:
    print("got", event.data["n"], flush=True)
    await asyncio.Event().wait()  # still working on it when the process is killed

async def main() -> None:
    async with DaprTest(app):
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_replicas_messages_are_processed_by_another(
    server: RedisServer, tmp_path: Path
) -> None:
    import signal
    import sys

    timing = (
        "  - name: processingTimeout\n    value: 1s\n  - name: redeliverInterval\n    value: '200'\n"
        "  - name: queueDepth\n    value: '5'\n"
    )
    app, dapr, _ = redis_app(tmp_path, server, timing)
    replica = await asyncio.create_subprocess_exec(
        sys.executable, "-c", REPLICA, str(tmp_path / "resources"), stdout=asyncio.subprocess.PIPE
    )
    assert replica.stdout is not None
    try:
        assert await asyncio.wait_for(replica.stdout.readline(), 30) == b"ready\n"
        publisher = await make_broker("redis", server)
        for n in range(20):
            await publisher.publish("jobs", cloudevent(str(n), {"n": n}), {})
        await publisher.close()
        # The replica holds some messages (being handled, and buffered): kill it then.
        assert (await asyncio.wait_for(replica.stdout.readline(), 30)).startswith(b"got ")
    finally:
        replica.send_signal(signal.SIGKILL)
        await replica.wait()

    everything = asyncio.Event()
    counts: dict[int, int] = {}

    @dapr.subscribe("pubsub", "jobs")
    async def on_job(event: CloudEvent[dict[str, int]]) -> None:
        counts[event.data["n"]] = counts.get(event.data["n"], 0) + 1
        if len(counts) == 20:
            everything.set()

    async with DaprTest(app):
        await asyncio.wait_for(everything.wait(), 30)
    assert sorted(counts) == list(range(20))  # every message, the dead replica's included
    assert all(count == 1 for count in counts.values()), counts  # none twice here


async def publish_until_taken(dapr: Dapr, n: int, refusals: list[tuple[int, str]]) -> None:
    """Publish message `n`; while Redis is away the publish fails, and the caller tries again."""
    from fastapi_dapr import DaprAPIError

    while True:
        try:
            await dapr.publish("pubsub", "load", {"n": n})
            return
        except DaprAPIError as exc:
            refusals.append((exc.status_code, exc.error_code))
            await asyncio.sleep(0.05)  # the publisher's own back-off


async def run_fault(dapr: Dapr, app: FastAPI, fault: Any) -> dict[int, int]:
    """Publish and deliver numbered messages before, during and after `fault`; every one of
    them must be delivered at least once. Duplicates are counted and reported."""
    counts: dict[int, int] = {}
    arrived = asyncio.Condition()

    @dapr.subscribe("pubsub", "load")
    async def on_load(event: CloudEvent[dict[str, int]]) -> None:
        counts[event.data["n"]] = counts.get(event.data["n"], 0) + 1
        async with arrived:
            arrived.notify_all()

    refusals: list[tuple[int, str]] = []
    async with DaprTest(app):
        n = 0
        for n in range(50):
            await publish_until_taken(dapr, n, refusals)
        faulting = asyncio.create_task(fault())  # while publishing and delivering go on
        while not faulting.done():
            n += 1
            await publish_until_taken(dapr, n, refusals)
        await faulting
        last = n + 50
        while n < last:
            n += 1
            await publish_until_taken(dapr, n, refusals)
        total = n + 1
        async with arrived:
            await asyncio.wait_for(arrived.wait_for(lambda: len(counts) == total), 60)
    assert sorted(counts) == list(range(total))
    assert set(refusals) <= {(500, "ERR_PUBSUB_PUBLISH_MESSAGE")}
    duplicates = sum(count - 1 for count in counts.values())
    print(f"{total} messages, {len(refusals)} publishes refused during the fault, {duplicates} duplicates")
    return counts


FAST = (
    "  - name: processingTimeout\n    value: 2s\n  - name: redeliverInterval\n    value: 500ms\n"
    "  - name: readTimeout\n    value: 1s\n  - name: dialTimeout\n    value: 1s\n"
)


async def test_nothing_is_lost_when_redis_restarts_under_load(tmp_path: Path) -> None:
    async with redis_server(tmp_path, persistent=True) as server:
        app, dapr, _ = redis_app(tmp_path, server, FAST)
        await run_fault(dapr, app, server.restart)


async def test_nothing_is_lost_when_redis_is_paused_longer_than_the_timeouts(
    server: RedisServer, tmp_path: Path
) -> None:
    app, dapr, _ = redis_app(tmp_path, server, FAST)

    async def pause() -> None:
        server.pause()
        try:
            await asyncio.sleep(2.5)  # the fault's length: longer than readTimeout (1s)
        finally:
            server.resume()

    await run_fault(dapr, app, pause)


async def test_a_message_being_handled_is_not_claimed_by_another_replica(server: RedisServer) -> None:
    timing = {"processingTimeout": "600ms", "redeliverInterval": "100ms"}
    slow = await make_broker("redis", server, **timing)
    other = await make_broker("redis", server, **timing)
    try:
        slow_consumer = await slow.subscribe("work")
        other_consumer = await other.subscribe("work")
        await slow.publish("work", b"long job", {})
        (held,) = await asyncio.wait_for(slow_consumer.receive(1), 10)
        # Held for four times processingTimeout: the other replica's claims must not take it.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(other_consumer.receive(1), 2.4)
        await held.ack()
    finally:
        await slow.close()
        await other.close()


async def test_a_message_given_up_stays_pending_and_comes_back(server: RedisServer) -> None:
    timing = {"processingTimeout": "300ms", "redeliverInterval": "100ms"}
    broker = await make_broker("redis", server, **timing)
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        consumer = await broker.subscribe("work")
        await broker.publish("work", b"unlucky", {})
        (first,) = await asyncio.wait_for(consumer.receive(1), 10)
        await first.nack(redeliver=False)  # retries exhausted, no dead-letter topic
        (again,) = await asyncio.wait_for(consumer.receive(1), 10)  # claimed back once stale
        assert again.message.id == first.message.id
        await again.ack()
        await broker.close()  # sends the acks gathered so far
        pending = await client.xpending("work", "app")
        assert pending["pending"] == 0
    finally:
        await client.aclose()
        await broker.close()
