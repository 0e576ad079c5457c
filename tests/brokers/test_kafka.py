"""`pubsub.kafka`: daprd's layout (partitioner, key, headers, delivery metadata, group and
assignor), its settings, and the engine's retries, against a Kafka-protocol broker the tests
start (tests/kafka_server.py); the layout is checked with aiokafka itself, as daprd's
component would write and read it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from fastapi_dapr import RETRY, CloudEvent, Dapr
from fastapi_dapr.brokers import BrokerError, load_broker_class
from fastapi_dapr.testing import DaprTest

from ..kafka_server import KafkaServer, kafka_server

aiokafka = pytest.importorskip("aiokafka", reason="the kafka extra is not installed")

from aiokafka.coordinator.assignors.range import RangePartitionAssignor  # noqa: E402

from fastapi_dapr.brokers.kafka import KafkaBroker  # noqa: E402
from fastapi_dapr.brokers.kafka_settings import (  # noqa: E402
    KafkaSettings,
    fnv1a_32,
    hash_partition,
    partition_for,
    record_layout,
)

FAST = {"heartbeatInterval": "100ms", "sessionTimeout": "6s"}
ENVELOPE = {
    "specversion": "1.0", "id": "e-1", "source": "shop", "type": "com.dapr.event.sent",
    "datacontenttype": "application/json", "data": {"order": 7}, "topic": "orders",
    "pubsubname": "pubsub", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}  # fmt: skip


# -- the partitioner: Sarama's, not aiokafka's -------------------------------------------------

# FNV-1a 32-bit test vectors (the FNV reference's), and the partitions Sarama's hash
# partitioner gives, worked out from its definition: int32(hash) % n (Go's remainder has
# the dividend's sign), made positive.
FNV_VECTORS = {b"": 0x811C9DC5, b"a": 0xE40C292C, b"foobar": 0xBF9CF968}
SARAMA_PARTITIONS = {  # key: partitions for 1, 3, 4, 7 and 12 partitions
    b"": [0, 0, 3, 2, 3],
    b"a": [0, 0, 0, 6, 0],
    b"foobar": [0, 0, 0, 4, 0],
    b"order-7": [0, 1, 3, 6, 7],
    b"key-1": [0, 1, 2, 1, 10],
    b"customer-42": [0, 0, 2, 4, 6],
}


def test_the_hash_is_fnv1a_32() -> None:
    assert {key: fnv1a_32(key) for key in FNV_VECTORS} == FNV_VECTORS


def test_keys_go_to_the_partitions_saramas_hash_partitioner_picks() -> None:
    for key, expected in SARAMA_PARTITIONS.items():
        assert [hash_partition(key, n) for n in (1, 3, 4, 7, 12)] == expected, key
        assert [partition_for(key, list(range(n)), []) for n in (1, 3, 4, 7, 12)] == expected
    # Not aiokafka's default (murmur2): with it, these keys would land elsewhere.
    from aiokafka.partitioner import DefaultPartitioner

    murmur = [DefaultPartitioner()(key, [0, 1, 2, 3], [0, 1, 2, 3]) for key in SARAMA_PARTITIONS]
    assert murmur != [expected[2] for expected in SARAMA_PARTITIONS.values()]


def test_a_record_without_a_key_goes_to_any_partition_even_an_unavailable_one() -> None:
    seen = {partition_for(None, [0, 1, 2], [0]) for _ in range(200)}
    assert seen == {0, 1, 2}  # Sarama's random partitioner ignores availability


def test_every_metadata_entry_is_a_header_and_the_key_and_partition_are_read() -> None:
    key, partition, headers = record_layout({"partitionKey": "k1", "traceparent": "t", "rawPayload": "true"})
    assert (key, partition) == (b"k1", None)
    assert headers == [("partitionKey", b"k1"), ("traceparent", b"t"), ("rawPayload", b"true")]
    assert record_layout({"__key": "k2", "partitionNumber": "2"})[:2] == (b"k2", 2)
    for bad in ("-1", "x", " 1", "2147483648"):
        with pytest.raises(ValueError, match="partitionNumber"):
            record_layout({"partitionNumber": bad})


# -- settings -----------------------------------------------------------------------------------


def settings(**metadata: str) -> KafkaSettings:
    return KafkaSettings.read("pubsub", {"brokers": "k:9092", "authType": "none", **metadata}, group="app")


def test_settings_read_as_daprd_reads_them() -> None:
    plain = settings()
    assert (plain.brokers, plain.group, plain.client_id, plain.oldest) == (
        ("k:9092",),
        "app",
        "sarama",
        False,
    )
    assert (plain.tls, plain.assignor, plain.acks, plain.retry_given_up) == (False, "range", "all", True)
    assert settings(brokers="a:1, b:2").brokers == ("a:1", "b:2")
    assert settings(consumerGroup="g", initialOffset="Oldest").group == "g"
    assert settings(initialOffset="oldest").oldest
    password = settings(authType="password", saslUsername="u", saslPassword="p", saslMechanism="SHA-512")
    assert password.tls  # TLS is on unless disableTls, or authType none
    assert password.sasl() == ("SCRAM-SHA-512", "SASL_SSL")
    assert settings(authType="password", saslUsername="u", saslPassword="p", disableTls="true").sasl() == (
        "PLAIN",
        "SASL_PLAINTEXT",
    )
    assert settings(consumerGroupRebalanceStrategy="roundrobin").assignor == "roundrobin"
    assert settings(producerRequiredAcks="local").acks == 1
    assert settings().excluded_headers is None
    excluded = settings(excludeHeaderMetaRegex="^valueSchemaType|rawPayload$").excluded_headers
    assert excluded is not None
    assert [bool(excluded.search(name)) for name in ("valueSchemaType", "x-rawPayload", "tenant")] == [
        True, True, False
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"brokers": ""}, "brokers is required"),
        ({"authType": ""}, "authType is required"),
        ({"authType": "oidc"}, "authType oidc is not supported"),
        ({"authType": "kerberos"}, "authType must be one of"),
        ({"authType": "password", "saslUsername": "u"}, "saslUsername and saslPassword"),
        ({"initialOffset": "latest"}, "initialOffset must be newest or oldest"),
        ({"clientCert": "-----BEGIN CERTIFICATE-----"}, "clientCert and clientKey go together"),
        ({"caCert": "not pem"}, "caCert is not PEM"),
        ({"authType": "mtls", "disableTls": "true"}, "mtls cannot be used with disableTls"),
        ({"sessionTimeout": "ten"}, "sessionTimeout is not a duration"),
        ({"producerRequiredAcks": "some"}, "producerRequiredAcks"),
        ({"excludeHeaderMetaRegex": "(unclosed"}, "excludeHeaderMetaRegex is not a regular expression"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(metadata: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        settings(**metadata)


def test_the_type_loads_and_knows_daprds_metadata_names() -> None:
    assert load_broker_class("pubsub.kafka") is KafkaBroker
    assert KafkaBroker.metadata_keys is not None
    assert {"brokers", "consumerGroup", "clientID", "authType", "initialOffset", "maxMessageBytes"} <= set(
        KafkaBroker.metadata_keys
    )


# -- against the broker -------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[KafkaServer]:
    async with kafka_server() as started:
        yield started


async def committed(server: KafkaServer, group: str, topic: str, partition: int) -> int | None:
    """The offset `group` committed for a partition, as the broker holds it."""
    reader = aiokafka.AIOKafkaConsumer(bootstrap_servers=server.url, group_id=group)
    await reader.start()
    try:
        offset: int | None = await reader.committed(aiokafka.TopicPartition(topic, partition))
        return offset
    finally:
        await reader.stop()


async def receive_all(consumer: Any, count: int) -> list[Any]:
    received: list[Any] = []
    while len(received) < count:
        received += await asyncio.wait_for(consumer.receive(count - len(received)), 10)
    return received


async def open_broker(server: KafkaServer, **metadata: str) -> KafkaBroker:
    broker = KafkaBroker(
        "pubsub", {"brokers": server.url, "authType": "none", **FAST, **metadata}, app_id="app"
    )
    await broker.start()
    return broker


async def written_and_delivered(
    server: KafkaServer, topic: str, value: bytes, component: dict[str, str] | None = None, **record: Any
) -> tuple[Any, Any]:
    """A record another client wrote (aiokafka's `send_and_wait(topic, value, **record)`), and
    its delivery by the component (with the metadata `component` besides), acknowledged."""
    broker = await open_broker(server, initialOffset="oldest", **(component or {}))
    writer = aiokafka.AIOKafkaProducer(bootstrap_servers=server.url)
    await writer.start()
    try:
        sent = await writer.send_and_wait(topic, value, **record)
        consumer = await broker.subscribe(topic)
        (delivery,) = await asyncio.wait_for(consumer.receive(10), 10)
        await delivery.ack()
    finally:
        await writer.stop()
        await broker.close()
    return sent, delivery


@pytest.mark.kafka
@pytest.mark.process
async def test_what_we_write_is_what_daprds_component_writes(server: KafkaServer) -> None:
    await server.create_topics(["orders"], partitions=4)
    broker = await open_broker(server)
    reader = aiokafka.AIOKafkaConsumer("orders", bootstrap_servers=server.url, auto_offset_reset="earliest")
    try:
        data = json.dumps(ENVELOPE).encode()
        metadata = {"partitionKey": "order-7", "traceparent": ENVELOPE["traceparent"]}
        keyed = await broker.publish("orders", data, metadata)
        pinned = await broker.publish("orders", b"raw", {"partitionNumber": "2"})
        await reader.start()
        records: list[Any] = []
        while len(records) < 2:
            for batch in (await reader.getmany(timeout_ms=5000)).values():
                records += batch
    finally:
        await reader.stop()
        await broker.close()
    by_value = {record.value: record for record in records}
    record = by_value[data]
    assert record.key == b"order-7"
    assert record.partition == SARAMA_PARTITIONS[b"order-7"][2] == 3  # Sarama's hash, 4 partitions
    assert keyed == f"3-{record.offset}"
    assert dict(record.headers) == {
        "partitionKey": b"order-7",
        "traceparent": ENVELOPE["traceparent"].encode(),
    }
    assert (by_value[b"raw"].partition, by_value[b"raw"].key) == (2, None)
    assert dict(by_value[b"raw"].headers) == {"partitionNumber": b"2"}
    assert pinned == f"2-{by_value[b'raw'].offset}"


@pytest.mark.kafka
@pytest.mark.process
async def test_a_partition_that_does_not_exist_is_refused(server: KafkaServer) -> None:
    await server.create_topics(["orders"], partitions=2)
    broker = await open_broker(server)
    try:
        with pytest.raises(BrokerError):
            await broker.publish("orders", b"x", {"partitionNumber": "5"})
        with pytest.raises(BrokerError, match="partitionNumber"):
            await broker.publish("orders", b"x", {"partitionNumber": "two"})
    finally:
        await broker.close()


def resources_for(folder: Path, server: KafkaServer, extra: dict[str, str] | None = None) -> Path:
    resources = folder / "resources"
    resources.mkdir(exist_ok=True)
    metadata = {"brokers": server.url, "authType": "none", **FAST, **(extra or {})}
    lines = "".join(f"  - name: {name}\n    value: '{value}'\n" for name, value in metadata.items())
    (resources / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        "  type: pubsub.kafka\n  version: v1\n  metadata:\n" + lines
    )
    return resources


@pytest.mark.kafka
@pytest.mark.process
async def test_a_record_written_as_daprd_writes_it_is_delivered_with_daprds_metadata(
    server: KafkaServer, tmp_path: Path
) -> None:
    await server.create_topics(["orders"], partitions=4)
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", resources_path=resources_for(tmp_path, server))
    got: list[tuple[CloudEvent[dict[str, Any]], dict[str, str]]] = []

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent[dict[str, Any]]) -> None:
        got.append((event, {}))

    writer = aiokafka.AIOKafkaProducer(bootstrap_servers=server.url, acks="all")
    await writer.start()
    try:
        async with DaprTest(app) as test:
            # As daprd's producer: the CloudEvent as the value, the key, every metadata entry
            # a header, the partition by Sarama's hash of the key.
            sent = await writer.send_and_wait(
                "orders",
                json.dumps(ENVELOPE).encode(),
                key=b"order-7",
                partition=hash_partition(b"order-7", 4),
                headers=[("partitionKey", b"order-7"), ("tenant", b"acme")],
            )
            report = await test.wait_for_delivery(topic="orders", timeout=20)
    finally:
        await writer.stop()
    assert report.outcome == "delivered"
    assert got[0][0].id == "e-1"
    assert got[0][0].data == {"order": 7}
    # The group is the app id (consumerID's default), and the offset after the record committed.
    assert await committed(server, "checkout", "orders", sent.partition) == sent.offset + 1


@pytest.mark.kafka
@pytest.mark.process
async def test_a_delivery_carries_daprds_metadata(server: KafkaServer) -> None:
    await server.create_topics(["orders"], partitions=4)
    sent, delivery = await written_and_delivered(
        server, "orders", b"{}", key=b"k 1", partition=1, headers=[("tenant", b"acme & co")]
    )
    assert delivery.message.data == b"{}"
    assert delivery.message.id == f"1-{sent.offset}"
    assert dict(delivery.message.metadata) == {
        "__key": "k 1",
        "__offset": str(sent.offset),
        "__topic": "orders",
        "__timestamp": str(sent.timestamp),
        "__partition": "1",
        "tenant": "acme & co",
    }


@pytest.mark.kafka
@pytest.mark.process
async def test_headers_exclude_header_meta_regex_finds_are_left_out_of_the_metadata(
    server: KafkaServer,
) -> None:
    await server.create_topics(["orders"])
    headers = [("valueSchemaType", b"avro"), ("x-rawPayload", b"true"), ("tenant", b"acme")]
    _, delivery = await written_and_delivered(
        server, "orders", b"{}", {"excludeHeaderMetaRegex": "^valueSchemaType|rawPayload$"}, headers=headers
    )
    assert delivery.message.metadata["tenant"] == "acme"
    assert not {"valueSchemaType", "x-rawPayload"} & set(delivery.message.metadata)
    assert "__offset" in delivery.message.metadata  # daprd's own entries are never left out


@pytest.mark.kafka
@pytest.mark.process
async def test_hostile_keys_and_headers_are_read_and_never_become_http_headers_as_they_are(
    server: KafkaServer,
) -> None:
    # Written by another client: bytes that are not UTF-8, a header without a value, CR and LF,
    # a header named like the delivery metadata daprd adds (daprd's order: the header wins),
    # and many headers.
    from fastapi_dapr.sidecar.delivery import message_headers

    await server.create_topics(["orders"], partitions=1)
    many = [(f"x-{n}", b"v") for n in range(500)]
    headers = [("x-bytes", b"\xff\xfe ok"), ("x-none", None), ("x-crlf", b"a\r\nx-evil: 1")]
    headers += [("__partition", b"forged"), ("bad name", b"v"), *many]
    _, delivery = await written_and_delivered(
        server, "orders", b"{}", key=b"\xc3\x28", partition=0, headers=headers
    )
    metadata = delivery.message.metadata
    assert metadata["__key"] == "\ufffd("
    assert (metadata["x-bytes"], metadata["x-none"]) == ("\ufffd\ufffd ok", "")
    assert metadata["x-crlf"] == "a\r\nx-evil: 1"  # kept as metadata, as daprd keeps it
    assert metadata["__partition"] == "forged"
    assert len(metadata) == 5 + 4 + 500  # the forged __partition replaced ours
    sent = dict(message_headers(metadata))
    assert b"x-crlf" not in sent
    assert b"bad name" not in sent
    assert sent[b"x-bytes"] == "\ufffd\ufffd ok".encode()
    assert sent[b"x-499"] == b"v"


@pytest.mark.kafka
@pytest.mark.process
async def test_escape_headers_escapes_the_key_and_headers_as_go_query_escape(server: KafkaServer) -> None:
    broker = await open_broker(server, initialOffset="oldest", escapeHeaders="true")
    try:
        await broker.publish("t", b"x", {"__key": "a b&c", "tenant": "é/1"})
        consumer = await broker.subscribe("t")
        (delivery,) = await asyncio.wait_for(consumer.receive(1), 10)
    finally:
        await broker.close()
    assert delivery.message.metadata["__key"] == "a+b%26c"
    assert delivery.message.metadata["tenant"] == "%C3%A9%2F1"


@pytest.mark.kafka
@pytest.mark.process
async def test_the_group_starts_at_the_newest_record_by_default(server: KafkaServer) -> None:
    broker = await open_broker(server)
    try:
        await broker.publish("t", b"before the group", {})
        consumer = await broker.subscribe("t")  # returns once its partitions are assigned
        await broker.publish("t", b"after", {})
        (delivery,) = await asyncio.wait_for(consumer.receive(10), 10)
        assert delivery.message.data == b"after"
    finally:
        await broker.close()


@pytest.mark.kafka
@pytest.mark.process
async def test_a_group_mixed_with_a_member_of_saramas_range_strategy_forms_and_splits_by_range(
    server: KafkaServer,
) -> None:
    # daprd's members offer Sarama's range strategy only (its default): a group with them forms
    # only if every member offers range (aiokafka's own default is roundrobin).
    await server.create_topics(["orders"], partitions=4)
    broker = await open_broker(server)
    other = aiokafka.AIOKafkaConsumer(
        bootstrap_servers=server.url,
        group_id="app",
        partition_assignment_strategy=(RangePartitionAssignor,),
        heartbeat_interval_ms=100,
        session_timeout_ms=6000,
    )
    try:
        consumer = await broker.subscribe("orders")
        consumer._joined.clear()  # type: ignore[attr-defined] # set again at its next assignment
        other.subscribe(["orders"])
        await other.start()
        while len(other.assignment()) != 2:  # the range split of 4 partitions between 2 members
            await other.getmany(timeout_ms=200)
        await asyncio.wait_for(consumer._joined.wait(), 20)  # type: ignore[attr-defined]
        mine = {partition.partition for partition in consumer._client.assignment()}  # type: ignore[attr-defined]
        assert mine | {tp.partition for tp in other.assignment()} == {0, 1, 2, 3}
        assert mine in ({0, 1}, {2, 3})  # range: contiguous halves
    finally:
        await other.stop()
        await broker.close()


@pytest.mark.kafka
@pytest.mark.process
async def test_failed_messages_are_retried_until_processed_keeping_the_partitions_order(
    server: KafkaServer, tmp_path: Path
) -> None:
    """A handler failing the first two attempts and every 5th message: all end up processed."""
    from fastapi_dapr import RetryPolicy
    from fastapi_dapr.testing import FakeClock

    await server.create_topics(["jobs"])
    app = FastAPI()
    dapr = Dapr(app, app_id="checkout", resources_path=resources_for(tmp_path, server))
    attempts: dict[int, int] = {}
    processed: list[int] = []

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
            await test.publish_and_wait("pubsub", "jobs", {"n": n}, timeout=20)
    assert sorted(processed) == list(range(10))
    assert attempts == {n: 3 if n < 2 else 2 if n % 5 == 4 else 1 for n in range(10)}
    assert await committed(server, "checkout", "jobs", 0) == 10  # all committed at the stop


@pytest.mark.kafka
@pytest.mark.process
async def test_an_offset_is_committed_only_once_every_message_before_it_is_done(
    server: KafkaServer,
) -> None:
    broker = await open_broker(server, initialOffset="oldest")
    await server.create_topics(["jobs"])
    try:
        for n in range(3):
            await broker.publish("jobs", str(n).encode(), {})
        consumer = await broker.subscribe("jobs")
        first, _second, third = await asyncio.wait_for(consumer.receive(3), 10)
        await third.ack()  # done before the second: its offset waits for the second's
        await first.ack()
        await consumer.commit()  # type: ignore[attr-defined]
        await consumer.close()  # the second was never settled: its offset is the one committed
        again = await broker.subscribe("jobs")
        redelivered = await receive_all(again, 2)
        assert [d.message.data for d in redelivered] == [b"1", b"2"]  # from the second on
    finally:
        await broker.close()


@pytest.mark.kafka
@pytest.mark.process
async def test_a_message_given_up_is_passed_over_only_with_consume_retry_disabled(
    server: KafkaServer,
) -> None:
    await server.create_topics(["jobs"])
    broker = await open_broker(server, initialOffset="oldest", consumeRetryEnabled="false")
    try:
        await broker.publish("jobs", b"poison", {})
        consumer = await broker.subscribe("jobs")
        (poison,) = await asyncio.wait_for(consumer.receive(1), 10)
        await poison.nack(redeliver=False)  # daprd's behaviour: logged, and committed past
        await consumer.close()
        again = await broker.subscribe("jobs")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(again.receive(1), 1.0)
    finally:
        await broker.close()


@pytest.mark.kafka
@pytest.mark.process
async def test_a_message_given_up_comes_back_after_a_pause(
    server: KafkaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi_dapr.brokers import kafka_consumer

    monkeypatch.setattr(kafka_consumer, "_GIVE_UP_DELAY", 0.2)
    await server.create_topics(["jobs"])
    broker = await open_broker(server, initialOffset="oldest")
    try:
        await broker.publish("jobs", b"poison", {})
        consumer = await broker.subscribe("jobs")
        (poison,) = await asyncio.wait_for(consumer.receive(1), 10)
        await poison.nack(redeliver=False)
        (again,) = await asyncio.wait_for(consumer.receive(1), 10)
        assert again.message.id == poison.message.id
        await again.ack()
    finally:
        await broker.close()


async def test_a_broker_that_cannot_be_reached_fails_the_start() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    broker = KafkaBroker("pubsub", {"brokers": f"127.0.0.1:{port}", "authType": "none"}, app_id="app")
    with pytest.raises(BrokerError, match="cannot reach Kafka"):
        await broker.start()
    with pytest.raises(BrokerError):
        await broker.publish("t", b"x", {})


async def test_bad_metadata_stops_the_start_naming_the_file_and_the_field(tmp_path: Path) -> None:
    from fastapi_dapr import ResourceError

    folder = tmp_path / "resources"
    folder.mkdir()
    (folder / "pubsub.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n"
        "  type: pubsub.kafka\n  version: v1\n  metadata:\n  - name: brokers\n    value: 'k:9092'\n"
    )
    app = FastAPI()
    Dapr(app, app_id="checkout", resources_path=folder)
    with pytest.raises(ResourceError, match=r"pubsub\.yaml.*authType is required"):
        async with DaprTest(app):
            pass
