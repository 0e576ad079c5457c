"""`pubsub.redis` against a real redis-server started by the tests (reference 5)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_dapr import RETRY, CloudEvent, Dapr, ResourceError
from fastapi_dapr.brokers import Broker, BrokerError
from fastapi_dapr.brokers.memory import MemoryBroker
from fastapi_dapr.testing import DaprTest

from ..redis_server import RedisServer, redis_server
from .faults import Replica, Tally, paused, replicas, run_fault

redis = pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")

pytestmark = pytest.mark.redis


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
    # Read as Go reads them: ASCII digits, no spaces around.
    with pytest.raises(ValueError, match="processingTimeout is not a duration"):
        RedisBroker("p", {"redisHost": "x:1", "processingTimeout": " 10s"}, app_id="a")
    with pytest.raises(ValueError, match="must be an integer"):
        RedisBroker("p", {"redisHost": "x:1", "concurrency": "\u0661\u0660"}, app_id="a")
    with pytest.raises(ValueError, match="must be an integer"):
        RedisBroker("p", {"redisHost": "x:1", "concurrency": " 10"}, app_id="a")
    unreachable = RedisBroker("p", {"redisHost": "127.0.0.1:1"}, app_id="a")
    with pytest.raises(BrokerError, match=r"cannot reach Redis at 127\.0\.0\.1:1"):
        await unreachable.start()


def cloudevent(event_id: str, data: Any) -> bytes:
    envelope = {
        "specversion": "1.0", "id": event_id, "source": "test", "type": "com.dapr.event.sent",
        "datacontenttype": "application/json", "data": data,
    }  # fmt: skip
    return json.dumps(envelope).encode()


FAST = (
    "  - name: processingTimeout\n    value: 2s\n  - name: redeliverInterval\n    value: 500ms\n"
    "  - name: readTimeout\n    value: 1s\n  - name: dialTimeout\n    value: 1s\n"
)


async def test_nothing_is_lost_when_redis_restarts_under_load(tmp_path: Path, fault_report: Any) -> None:
    async with redis_server(tmp_path, persistent=True) as server:
        app, dapr, _ = redis_app(tmp_path, server, FAST)
        await run_fault(app, dapr, server.restart, fault_report)


async def test_nothing_is_lost_when_redis_is_paused_longer_than_the_timeouts(
    server: RedisServer, tmp_path: Path, fault_report: Any
) -> None:
    app, dapr, _ = redis_app(tmp_path, server, FAST)

    # Paused longer than readTimeout (1s).
    await run_fault(app, dapr, paused(server, 2.5), fault_report)


async def test_a_message_being_handled_is_not_claimed_by_another_replica(server: RedisServer) -> None:
    timing = {"processingTimeout": "600ms", "redeliverInterval": "100ms"}
    slow = await make_broker("redis", server, **timing)
    other = await make_broker("redis", server, **timing)
    try:
        slow_consumer = await slow.subscribe("work")
        await slow.publish("work", b"long job", {})
        (held,) = await asyncio.wait_for(slow_consumer.receive(1), 10)
        other_consumer = await other.subscribe("work")  # a replica of the same group, started since
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


# -- replicas in processes of their own, killed with SIGKILL -------------------------------------

ROOT = Path(__file__).resolve().parents[2]
CLAIMING = (
    "  - name: processingTimeout\n    value: 1s\n  - name: redeliverInterval\n    value: 200ms\n"
    "  - name: queueDepth\n    value: '20'\n"
)


def new_replica(server: RedisServer, resources: Path) -> Replica:
    return Replica("redis", "FASTAPI_DAPR_TEST_REDIS", server.url, resources, work=0.02)


class HandledLog(Tally):
    """The `handled` stream the replicas write: how often each message was handled, by whom."""

    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client
        self._last = "0-0"

    def _count(self, answer: Any) -> int:
        read = 0
        for _, entries in answer:
            for entry_id, fields in entries:
                self._last = entry_id
                self.count({"n": int(fields[b"n"]), "pid": int(fields[b"pid"])})
                read += 1
        return read

    async def until(self, done: Any, timeout: float = 60) -> None:
        async def follow() -> None:
            while not done():
                self._count(await self.client.xread({"handled": self._last}, count=1000, block=1000))

        await asyncio.wait_for(follow(), timeout)

    async def catch_up(self) -> None:
        """Read all that is in the stream now (what a killed replica wrote before it died)."""
        while self._count(await self.client.xread({"handled": self._last}, count=1000)):
            pass


def resources_for(tmp_path: Path, server: RedisServer, extra: str) -> Path:
    redis_app(tmp_path, server, extra)  # writes the component file
    return tmp_path / "resources"


async def publish_numbered(server: RedisServer, total: int) -> None:
    publisher = await make_broker("redis", server)
    try:
        for n in range(total):
            await publisher.publish("jobs", cloudevent(str(n), {"n": n}), {})
    finally:
        await publisher.close()


@pytest.mark.process
async def test_a_replica_killed_with_messages_in_flight_then_restarted_loses_nothing(
    server: RedisServer, tmp_path: Path, fault_report: Any
) -> None:
    total = 300
    client = redis.Redis(host="127.0.0.1", port=server.port)
    log = HandledLog(client)
    resources = resources_for(tmp_path, server, CLAIMING)
    async with replicas(1, lambda: new_replica(server, resources)) as (replica,):
        first = await replica.start()
        await publish_numbered(server, total)
        await log.until(lambda: log.by_pid[first] >= 30)
        await replica.stop(signal.SIGKILL)
        in_flight = (await client.xpending("jobs", "checkout"))["pending"]
        assert in_flight > 0  # killed while holding messages (handled, or being handled)
        second = await replica.start()  # a new process: a new consumer in the same group
        await log.until(lambda: len(log.counts) == total)
        assert sorted(log.counts) == list(range(total))  # every message, at least once
        # Only what was unacknowledged at the kill can have been handled twice.
        assert log.duplicates <= in_flight
        assert log.by_pid[second] > 0
        await replica.stop()  # graceful: the last acks go out
    pending = (await client.xpending("jobs", "checkout"))["pending"]
    await client.aclose()
    assert pending == 0
    fault_report(f"{total} messages; {in_flight} unacknowledged at the kill; {log.duplicates} handled twice")


@pytest.mark.process
async def test_two_replicas_share_a_topic_and_one_killed_loses_nothing(
    server: RedisServer, tmp_path: Path, fault_report: Any
) -> None:
    total = 400
    client = redis.Redis(host="127.0.0.1", port=server.port)
    log = HandledLog(client)
    resources = resources_for(tmp_path, server, CLAIMING)
    async with replicas(2, lambda: new_replica(server, resources)) as (victim, survivor):
        doomed, lasting = await victim.start(), await survivor.start()
        await publish_numbered(server, total)
        await log.until(lambda: log.by_pid[doomed] >= 20 and log.by_pid[lasting] >= 20)  # shared
        await victim.stop(signal.SIGKILL)
        consumers = {
            c["name"].decode(): c["pending"] for c in await client.xinfo_consumers("jobs", "checkout")
        }
        held = sum(pending for name, pending in consumers.items() if f"-{doomed}-" in name)
        assert held > 0  # the dead replica held messages
        await log.catch_up()  # what it recorded before it died, read
        handled_before = log.by_pid[doomed]
        await log.until(lambda: len(log.counts) == total)
        assert sorted(log.counts) == list(range(total))
        assert log.by_pid[doomed] == handled_before  # nothing more from the dead one
        assert log.duplicates <= held
        await survivor.stop()
    pending = (await client.xpending("jobs", "checkout"))["pending"]
    await client.aclose()
    assert pending == 0
    fault_report(f"{total} messages; the killed replica held {held}; {log.duplicates} handled twice")


# -- graceful shutdown ---------------------------------------------------------------------------


async def test_a_graceful_stop_finishes_what_is_in_flight_and_returns_what_waits(
    server: RedisServer, tmp_path: Path
) -> None:
    from fastapi_dapr import RetryPolicy

    app, dapr, finished = redis_app(tmp_path, server, CLAIMING)
    dapr.retry = RetryPolicy(policy="constant", duration=3600, max_retries=-1)
    entered, release, refused = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @dapr.subscribe("pubsub", "slow")
    async def slow(event: CloudEvent[Any]) -> None:
        entered.set()
        await release.wait()
        finished.append("slow")

    @dapr.subscribe("pubsub", "failing")
    async def failing(event: CloudEvent[Any]) -> str:
        refused.set()
        return "RETRY"

    test = DaprTest(app)
    await test.__aenter__()
    failed_once = asyncio.ensure_future(test.wait_for_delivery(topic="failing"))
    await dapr.publish("pubsub", "failing", 1)
    await dapr.publish("pubsub", "slow", 1)
    await entered.wait()
    await refused.wait()  # its retry is an hour away
    stopping = asyncio.ensure_future(test.__aexit__(None, None, None))
    await dapr.backend.running()._stopping.wait()
    release.set()  # the stop has begun: the slow handler finishes, and is acknowledged
    await stopping
    assert finished == ["slow"]
    assert (await failed_once).outcome == "returned"  # waiting an hour for its retry: handed back
    client = redis.Redis(host="127.0.0.1", port=server.port)
    slow_pending = (await client.xpending("slow", "checkout"))["pending"]
    failing_pending = (await client.xpending("failing", "checkout"))["pending"]
    await client.aclose()
    assert (slow_pending, failing_pending) == (0, 1)  # the returned one stays pending, not lost

    # The next start of the app gets it again, once processingTimeout has passed.
    again, dapr_again, _ = redis_app(tmp_path, server, CLAIMING)
    retried: list[Any] = []

    @dapr_again.subscribe("pubsub", "failing")
    async def failing_again(event: CloudEvent[Any]) -> None:
        retried.append(event.data)

    async with DaprTest(again) as second:
        report = await second.wait_for_delivery(topic="failing", timeout=30)
    assert report.outcome == "delivered"
    assert retried == [1]


# -- TLS, with certificates made by the tests ----------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    from ..certs import CertificateAuthority

    ca = CertificateAuthority()
    server_pair = ca.issue("localhost", server=True)
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server.key"}
    files["ca"].write_text(ca.pem)
    files["cert"].write_text(server_pair.certificate)
    files["key"].write_text(server_pair.private_key)
    return {"ca": ca, "files": files, "client": ca.issue("checkout", server=False)}


def tls_metadata(**values: str) -> str:
    """Component metadata lines; multi-line values (PEM) as YAML block scalars."""
    lines = []
    for name, value in values.items():
        if "\n" in value:
            body = "".join(f"      {line}\n" for line in value.strip().splitlines())
            lines.append(f"  - name: {name}\n    value: |\n{body}")
        else:
            lines.append(f"  - name: {name}\n    value: '{value}'\n")
    return "".join(lines)


async def deliver_one_over(server: RedisServer, tmp_path: Path, metadata: str) -> Any:
    app, dapr, seen = redis_app(tmp_path, server, metadata)

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, int]]) -> None:
        seen.append(event.data)

    async with DaprTest(app) as test:
        report = await test.publish_and_wait("pubsub", "orders", {"n": 1}, timeout=10)
    assert seen == [{"n": 1}]
    return report


async def test_mutual_tls_with_the_ca_in_the_trust_store(
    pki: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = pki["files"]
    monkeypatch.setenv("SSL_CERT_FILE", str(files["ca"]))  # as for daprd: the system's trust store
    tls = (files["cert"], files["key"], files["ca"])
    async with redis_server(tmp_path, tls=tls, client_certificates=True) as server:
        client = pki["client"]
        metadata = tls_metadata(enableTLS="true", clientCert=client.certificate, clientKey=client.private_key)
        report = await deliver_one_over(server, tmp_path, metadata)
        assert report.outcome == "delivered"

        # Without its certificate the client is refused: the app does not start.
        app, _, _ = redis_app(tmp_path, server, tls_metadata(enableTLS="true"))
        with pytest.raises(ResourceError, match="cannot reach Redis"):
            async with DaprTest(app):
                pass


async def test_an_untrusted_server_is_refused_unless_verification_is_skipped(
    pki: dict[str, Any], tmp_path: Path
) -> None:
    files = pki["files"]  # the CA is not in the trust store this time
    async with redis_server(tmp_path, tls=(files["cert"], files["key"], files["ca"])) as server:
        app, _, _ = redis_app(tmp_path, server, tls_metadata(enableTLS="true"))
        with pytest.raises(ResourceError, match="certificate verify failed"):
            async with DaprTest(app):
                pass
        skipping = tls_metadata(enableTLS="true", insecureSkipTLSVerify="true")
        assert (await deliver_one_over(server, tmp_path, skipping)).outcome == "delivered"


def test_a_client_certificate_needs_its_key() -> None:
    from fastapi_dapr.brokers.redis import RedisBroker

    broker = RedisBroker("p", {"redisHost": "x:1", "enableTLS": "true", "clientCert": "PEM"}, app_id="a")
    with pytest.raises(ValueError, match="clientCert and clientKey go together"):
        asyncio.run(broker.start())


# -- concurrency ----------------------------------------------------------------------------------


async def test_concurrency_bounds_the_messages_handled_at_once_across_the_components_topics(
    server: RedisServer, tmp_path: Path
) -> None:
    app, dapr, _ = redis_app(tmp_path, server, "  - name: concurrency\n    value: '2'\n")
    active, most = 0, 0
    two_in, release = asyncio.Event(), asyncio.Event()

    async def handle() -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        if active == 2:
            two_in.set()
        await release.wait()
        active -= 1

    dapr.subscribe("pubsub", "a")(handle)
    dapr.subscribe("pubsub", "b")(handle)
    publisher = await make_broker("redis", server)
    for topic in ("a", "b", "a", "b", "a", "b"):
        await publisher.publish(topic, cloudevent(topic, {}), {})
    await publisher.close()
    client = redis.Redis(host="127.0.0.1", port=server.port)
    async with DaprTest(app) as test:
        await two_in.wait()
        while sum([(await client.xpending(t, "checkout"))["pending"] for t in ("a", "b")]) < 6:
            await client.xinfo_stream("a")  # each round trip lets the readers go on
        for _ in range(100):  # every message is in the process: nothing else waits but the limit
            await asyncio.sleep(0)
        assert (active, most) == (2, 2)
        release.set()
        for _ in range(6):
            await test.wait_for_delivery(timeout=10)
    await client.aclose()
    assert most == 2


async def test_consumers_gone_for_good_are_forgotten_once_nothing_is_pending_for_them(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi_dapr.brokers import redis_stream as redis_broker

    client = redis.Redis(host="127.0.0.1", port=server.port)
    await client.xgroup_create("work", "app", id="0", mkstream=True)
    await client.xreadgroup("app", "departed", {"work": ">"})  # read nothing: holds nothing
    await client.xadd("work", {"data": b"x"})
    await client.xreadgroup("app", "holding", {"work": ">"})  # holds one message
    broker = await make_broker("redis", server, processingTimeout="60s")
    monkeypatch.setattr(redis_broker, "_DEPARTED_AFTER", 0.0)  # any silence counts
    try:
        consumer = await broker.subscribe("work")
        await broker.publish("work", b"y", {})
        (delivery,) = await asyncio.wait_for(consumer.receive(1), 10)  # this replica: known, idle
        await delivery.ack()
        await consumer._forget_departed()  # type: ignore[attr-defined]
        names = {c["name"] for c in await client.xinfo_consumers("work", "app")}
    finally:
        await broker.close()
        await client.aclose()
    assert b"departed" not in names
    assert b"holding" in names  # its message must stay claimable
    assert broker.consumer_name.encode() in names


def test_redis_settings_that_are_not_supported_are_refused_or_named() -> None:
    from fastapi_dapr.brokers.redis import RedisBroker

    with pytest.raises(ValueError, match="redisType cluster is not supported"):
        RedisBroker("p", {"redisHost": "x:1", "redisType": "cluster"}, app_id="a")
    with pytest.raises(ValueError, match="Sentinel"):
        RedisBroker("p", {"redisHost": "x:1", "failover": "true"}, app_id="a")


# -- trimming and reconnection ----------------------------------------------------------------


async def test_streams_are_trimmed_by_length_or_by_age_as_daprd_trims_them(server: RedisServer) -> None:
    client = redis.Redis(host="127.0.0.1", port=server.port)
    by_length = await make_broker("redis", server, maxLenApprox="10")
    by_age = await make_broker("redis", server, streamTTL="1h")
    try:
        for n in range(500):
            await by_length.publish("short", str(n).encode(), {})
        # Entries from long ago (ids are milliseconds): a publish drops them, whole nodes at a time.
        for n in range(1, 301):
            await client.xadd("recent", {"data": b"old"}, id=f"{n}-0")
        await by_age.publish("recent", b"new", {})
        short, recent = await client.xlen("short"), await client.xlen("recent")
    finally:
        await by_length.close()
        await by_age.close()
        await client.aclose()
    # `~`: Redis trims whole nodes (100 entries by default), never below what was asked.
    assert 10 <= short <= 110
    assert 1 <= recent <= 101


async def test_readers_back_off_while_redis_is_down(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await make_broker("redis", server, readTimeout="500ms", dialTimeout="200ms")
    try:
        consumer = await broker.subscribe("t")
        with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
            await server.stop()
            await asyncio.sleep(2.0)  # the fault's length: two seconds without Redis
            await server.start()
            await broker.publish("t", b"after", {})
            (delivery,) = await asyncio.wait_for(consumer.receive(1), 10)
        await delivery.ack()
    finally:
        await broker.close()
    failures = [r for r in caplog.records if "reading t failed" in r.getMessage()]
    # Retried with a doubling delay (0.1, 0.2, 0.4, 0.8 s ...), not in a busy loop.
    assert 1 <= len(failures) <= 6, [r.getMessage() for r in failures]
    assert delivery.message.data == b"after"


# -- found in review: a paused Redis at the first publish, a close while publishing, errors
# -- that are not about the connection, a buffer filled by messages handed back -----------------


async def test_the_first_publish_to_a_paused_redis_fails_within_the_read_timeout(server: RedisServer) -> None:
    broker = await make_broker("redis", server, readTimeout="500ms", dialTimeout="500ms")
    server.pause()  # before the writer's first connection: its handshake would never be answered
    try:
        with pytest.raises(BrokerError, match="no reply from Redis within"):
            await asyncio.wait_for(broker.publish("t", b"x", {}), 10)
    finally:
        server.resume()
        await broker.close()


async def test_publishing_while_the_broker_closes_is_refused_or_stored_never_both(
    server: RedisServer,
) -> None:
    broker = await make_broker("redis", server)
    taken, refused = 0, 0
    running = asyncio.Event()

    async def publisher() -> None:
        nonlocal taken, refused
        while True:
            try:
                await broker.publish("t", b"x", {})
            except BrokerError:
                refused += 1
                return
            taken += 1
            running.set()

    publishers = [asyncio.ensure_future(publisher()) for _ in range(20)]
    await running.wait()
    await broker.close()
    await asyncio.gather(*publishers)
    client = redis.Redis(host="127.0.0.1", port=server.port)
    stored = await client.xlen("t")
    await client.aclose()
    assert refused == 20  # every publisher was told, none left waiting
    assert stored == taken  # each answered publish is in the stream, and nothing else


async def test_a_reader_outlives_error_replies_such_as_readonly_during_a_failover(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await make_broker("redis", server)
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        consumer = await broker.subscribe("t")
        failed = asyncio.Event()

        class Watch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "reading t failed" in record.getMessage():
                    failed.set()

        watch = Watch()
        logging.getLogger("fastapi_dapr").addHandler(watch)
        try:
            with socket.socket() as unused:  # a port nobody listens on: the master never answers
                unused.bind(("127.0.0.1", 0))
                await client.execute_command("REPLICAOF", "127.0.0.1", str(unused.getsockname()[1]))
                await asyncio.wait_for(failed.wait(), 10)  # demoted to a read-only replica: refused
                await client.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            logging.getLogger("fastapi_dapr").removeHandler(watch)
        await broker.publish("t", b"after the failover", {})
        (delivery,) = await asyncio.wait_for(consumer.receive(1), 10)
        await delivery.ack()
    finally:
        await client.aclose()
        await broker.close()
    assert delivery.message.data == b"after the failover"


async def test_messages_handed_back_never_make_the_reader_fetch_without_a_limit(server: RedisServer) -> None:
    broker = await make_broker("redis", server, queueDepth="5")
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        consumer = await broker.subscribe("t")
        for n in range(200):
            await broker.publish("t", str(n).encode(), {})
        while len(consumer._buffer) < 5:  # type: ignore[attr-defined]  # the buffer is full
            await client.ping()
        # Room for one more, taken again in the same turn by the one handed back:
        (first,) = await consumer.receive(1)  # the buffer is not empty: no waiting
        await first.nack(redeliver=True)
        for _ in range(20):  # round trips, while the reader would read again if it could
            await client.ping()
        pending = (await client.xpending("t", "app"))["pending"]
    finally:
        await client.aclose()
        await broker.close()
    assert pending <= 6  # queueDepth, and the one in hand; COUNT 0 would have taken all 200


def test_an_encrypted_client_key_is_refused_without_a_prompt(pki: dict[str, Any]) -> None:
    from cryptography.hazmat.primitives import serialization

    from fastapi_dapr.brokers.redis_settings import tls_context as _tls_context

    key = serialization.load_pem_private_key(pki["client"].private_key.encode(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    metadata = {"clientCert": pki["client"].certificate, "clientKey": encrypted}
    with pytest.raises(ValueError, match="clientKey is encrypted"):
        _tls_context(metadata)


# -- a bound on the deliveries of one message: parked, then replayed ------------------------------


def replay_script() -> str:
    """The replay script docs/redis.md gives operators."""
    import re

    (script,) = re.findall(r"```lua\n(.*?)```", (ROOT / "docs" / "redis.md").read_text(), re.S)
    return script


def parked_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "fastapi_dapr.delivery" and r.outcome == "parked"]


async def test_a_message_that_always_fails_is_parked_after_max_delivery_count(
    server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi_dapr import RetryPolicy
    from fastapi_dapr.testing import FakeClock

    caplog.set_level(logging.INFO, logger="fastapi_dapr")
    folder = tmp_path / "resources"
    folder.mkdir()
    (folder / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        "  type: pubsub.redis\n  version: v1\n  metadata:\n"
        f"  - {{name: redisHost, value: '{server.url}'}}\n"
        "  - {name: processingTimeout, value: 200ms}\n  - {name: redeliverInterval, value: 50ms}\n"
        "  - {name: maxDeliveryCount, value: '3'}\n"
    )
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", resources_path=folder, metrics=True)
    dapr.retry = RetryPolicy(policy="constant", duration=1.0, max_retries=1)
    calls: list[int] = []

    @dapr.subscribe("pubsub", "jobs")  # no dead-letter topic
    async def on_job(event: CloudEvent[dict[str, int]]) -> Any:
        calls.append(event.data["n"])
        return RETRY

    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        async with DaprTest(app, clock=FakeClock()) as test:
            first = await test.publish_and_wait("pubsub", "jobs", {"n": 7}, timeout=20)
            later = [await test.wait_for_delivery(topic="jobs", timeout=20) for _ in range(2)]
            scrape = (await test.client.get("/metrics")).text
            assert parked_lines(caplog), "parked by the third delivery's give-up"
        ((entry_id, original),) = await client.xrange("jobs")
        parked = await client.xrange("jobs:parked:checkout")
        pending = await client.xpending("jobs", "checkout")
    finally:
        await client.aclose()
    assert [r.outcome for r in (first, *later)] == ["failed"] * 3
    assert {r.message_id for r in later} == {first.message_id} == {entry_id.decode()}
    assert calls == [7] * 6  # three deliveries of two attempts each, and no fourth
    assert pending["pending"] == 0  # acknowledged in the group: never claimed again
    ((_, fields),) = parked
    assert fields[b"data"] == original[b"data"]
    assert fields[b"metadata"] == original[b"metadata"]
    assert (fields[b"parkedTopic"], fields[b"parkedId"], fields[b"parkedGroup"]) == (
        b"jobs",
        entry_id,
        b"checkout",
    )
    assert fields[b"parkedDeliveries"] == b"3"
    (line,) = parked_lines(caplog)
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (
        f"redis pubsub pubsub: message {first.message_id} of jobs delivered 3 times (maxDeliveryCount 3), "
        "every delivery failed; parked in stream jobs:parked:checkout, to be replayed from there"
    )
    metric = 'fastapi_dapr_pubsub_parked_total{app_id="checkout",component="pubsub",namespace="default",'
    assert f'{metric}topic="jobs"}} 1' in scrape


async def test_a_message_whose_deliveries_never_settle_is_parked_unseen_then_replayed(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Claimed once more than allowed (every process that took it died): parked at the claim,
    not delivered; the documented replay puts it back on the topic."""
    caplog.set_level(logging.INFO, logger="fastapi_dapr")
    client = redis.Redis(host="127.0.0.1", port=server.port)
    broker = None
    try:
        await client.xgroup_create("work", "app", id="0", mkstream=True)
        poison = (await client.xadd("work", {"data": b"kills its consumer", "metadata": b"{}"})).decode()
        await client.xreadgroup("app", "crashed-1", {"work": ">"}, count=1)
        # Two deliveries so far, and idle for an hour: its consumers are gone.
        await client.xclaim("work", "app", "crashed-2", 0, [poison], idle=3_600_000, retrycount=2)
        assert (await client.xpending_range("work", "app", "-", "+", 1))[0]["times_delivered"] == 2
        broker = await make_broker(
            "redis", server, processingTimeout="100ms", redeliverInterval="50ms", maxDeliveryCount="2"
        )
        consumer = await broker.subscribe("work")  # claims the stale entry at once, before reading
        fresh = await broker.publish("work", b"fresh", {})
        (taken,) = await asyncio.wait_for(consumer.receive(1), 10)
        assert taken.message.id == fresh  # the poison was not delivered
        await taken.ack()
        ((_, fields),) = await client.xrange("work:parked:app")
        assert (fields[b"data"], fields[b"parkedId"], fields[b"parkedDeliveries"]) == (
            b"kills its consumer",
            poison.encode(),
            b"3",
        )
        (line,) = parked_lines(caplog)
        assert (
            "delivered 3 times (maxDeliveryCount 2), none of its deliveries was settled" in line.getMessage()
        )

        replayed = await client.eval(replay_script(), 2, "work:parked:app", "work", 100)
        assert replayed == 1
        (again,) = await asyncio.wait_for(consumer.receive(1), 10)
        assert again.message.data == b"kills its consumer"
        assert again.message.id != poison  # a new entry of the topic, delivered afresh
        await again.ack()
        assert await client.xlen("work:parked:app") == 0
        await broker.close()  # sends the acks gathered so far
        assert (await client.xpending("work", "app"))["pending"] == 0
    finally:
        await client.aclose()
        if broker is not None:
            await broker.close()


def test_max_delivery_count_is_a_positive_integer() -> None:
    from fastapi_dapr.brokers.redis import RedisBroker

    assert RedisBroker("p", {"redisHost": "x:1"}, app_id="a").max_deliveries == 10
    assert RedisBroker("p", {"redisHost": "x:1", "maxDeliveryCount": "4"}, app_id="a").max_deliveries == 4
    with pytest.raises(ValueError, match="maxDeliveryCount must be at least 1, not 0"):
        RedisBroker("p", {"redisHost": "x:1", "maxDeliveryCount": "0"}, app_id="a")
    with pytest.raises(ValueError, match="maxDeliveryCount must be an integer, not 'ten'"):
        RedisBroker("p", {"redisHost": "x:1", "maxDeliveryCount": "ten"}, app_id="a")
