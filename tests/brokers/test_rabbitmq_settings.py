"""`pubsub.rabbitmq`'s settings and layout, read and computed as daprd's component does, without a
server: the connection URL, the checks that stop the start, the queue arguments, a message's
properties, the routing of messages kept for a queue to come."""

from __future__ import annotations

import datetime
import decimal
import logging

import pytest

from fastapi_dapr.brokers.rabbitmq_layout import (
    dead_letter_queue_arguments,
    delivery_metadata,
    go_value,
    message_properties,
    queue_arguments,
    queue_name,
    routing_keys,
)
from fastapi_dapr.brokers.rabbitmq_settings import RabbitSettings


def read(**metadata: str) -> RabbitSettings:
    return RabbitSettings.read("pubsub", {"deletedWhenUnused": "false", **metadata})


def test_the_connection_is_the_connection_string_or_its_parts() -> None:
    assert read(connectionString="amqps://u:p@mq:5671/vh").url == "amqps://u:p@mq:5671/vh"
    assert read(connectionString="amqps://u:p@mq/vh").tls
    assert read(host="amqp://old:5672").url == "amqp://old:5672"  # deprecated, as in daprd
    assert read().url == "amqp://localhost"  # daprd's default
    parts = read(protocol="amqps", hostname="mq:5671", username="me", password="p@ss/word")
    assert parts.url == "amqps://me:p%40ss%2Fword@mq:5671"
    assert parts.display == "amqps://me:***@mq:5671"  # in messages, without the password
    with pytest.raises(ValueError, match="protocol amqp does not match the connectionString's amqps"):
        read(connectionString="amqps://mq", protocol="amqp")
    with pytest.raises(ValueError, match=r"amqp:// or amqps:// URL, not 'redis://u:\*\*\*@mq'"):
        read(connectionString="redis://u:secret@mq")


def test_values_daprd_refuses_stop_the_start_naming_the_field() -> None:
    with pytest.raises(
        ValueError, match=r"deliveryMode must be 0, 1 \(transient\) or 2 \(persistent\), not 3"
    ):
        read(deliveryMode="3")
    with pytest.raises(ValueError, match="prefetchCount must be from 0 to 255, not 256"):
        read(prefetchCount="256")  # a uint8 in daprd
    with pytest.raises(ValueError, match="exchangeKind must be one of fanout, topic, direct, headers"):
        read(exchangeKind="x-delayed")
    with pytest.raises(ValueError, match="concurrencyMode must be single or parallel"):
        read(concurrencyMode="many")
    with pytest.raises(ValueError, match="reconnectWaitSeconds is not a duration"):
        read(reconnectWaitSeconds="soon")
    with pytest.raises(
        ValueError, match="saslExternal can only be true when caCert, clientCert and clientKey"
    ):
        read(saslExternal="true", caCert="x")


def test_booleans_durations_and_defaults_are_read_as_daprd_reads_them() -> None:
    settings = read(durable="No", enableDeadLetter="YES", autoAck="on", requeueInFailure="t")
    assert (settings.durable, settings.enable_dead_letter, settings.auto_ack) == (False, True, True)
    assert settings.requeue_in_failure
    assert read(reconnectWaitSeconds="10").reconnect_wait == 10.0  # integer seconds
    assert read(reconnectWaitSeconds="250ms").reconnect_wait == 0.25
    defaults = RabbitSettings.read("pubsub", {})
    assert (defaults.durable, defaults.delete_when_unused, defaults.exchange_kind) == (True, True, "fanout")
    assert (defaults.heartbeat, defaults.reconnect_wait) == (10.0, 3.0)
    # Where this component's defaults differ from daprd's (docs/rabbitmq.md).
    assert (defaults.publisher_confirm, defaults.delivery_mode, defaults.prefetch_count) == (True, 2, 100)
    assert read(prefetchCount="0").prefetch_count == 0  # daprd's "no limit", when given


def test_the_traps_and_the_settings_that_do_nothing_are_named(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"):
        RabbitSettings.read("pubsub", {"concurrency": "single", "queueName": "q", "routingKey": "k"})
    text = caplog.text
    assert (
        "deletedWhenUnused is true (daprd's default): a queue, with the messages it holds, is deleted" in text
    )
    assert "concurrency does nothing (daprd reads concurrencyMode)" in text
    assert "queueName, routingKey belong to a subscription's metadata" in text


def test_queue_names_and_arguments_are_daprds() -> None:
    assert queue_name("orders", "checkout", {}) == "checkout-orders"
    assert queue_name("orders", "checkout", {"queueName": "q"}) == "q"
    assert routing_keys({}) == [""]  # one binding, with the empty key
    assert routing_keys({"routingKey": "a,b.*"}) == ["a", "b.*"]
    plain = read()
    assert queue_arguments(plain, "q", {}) == {"x-queue-type": "classic"}  # always declared
    full = read(enableDeadLetter="true", maxLen="10", maxLenBytes="2048")
    subscription = {"maxPriority": "300", "queueType": "quorum", "singleActiveConsumer": "1", "maxLen": "5"}
    assert queue_arguments(full, "q", subscription) == {
        "x-dead-letter-exchange": "dlx-q",
        "x-max-length": 5,  # the subscription's, over the component's
        "x-max-length-bytes": 2048,
        "x-max-priority": 255,  # at most 255
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
    }
    assert dead_letter_queue_arguments(full) == {
        "x-max-length": 10, "x-max-length-bytes": 2048, "x-queue-mode": "lazy"
    }  # fmt: skip
    with pytest.raises(ValueError, match="invalid queue type stream"):
        queue_arguments(plain, "q", {"queueType": "stream"})
    with pytest.raises(ValueError, match="maxPriority must be an unsigned integer, not '-1'"):
        queue_arguments(plain, "q", {"maxPriority": "-1"})


def test_message_properties_are_daprds() -> None:
    settings = read(ttlInSeconds="30")
    assert message_properties(settings, {}, "id-1") == {
        "content_type": "text/plain", "message_id": "id-1", "delivery_mode": 2, "expiration": "30000"
    }  # fmt: skip
    metadata = {
        "ttl": "1m", "priority": "-4", "MessageId": "m", "correlationid": "c", "TYPE": "t",
        "contentType": "a/b",
    }  # fmt: skip
    properties = message_properties(read(deliveryMode="0"), metadata, "id-2")
    # Priority 0 and delivery mode 0 are not sent, as amqp091-go omits them.
    assert properties == {
        "content_type": "a/b", "message_id": "m", "expiration": "60000", "correlation_id": "c",
        "message_type": "t", "headers": metadata,
    }  # fmt: skip
    unreadable = message_properties(settings, {"ttlInSeconds": "soon", "priority": "high"}, "id-3")
    assert unreadable["expiration"] == "30000"  # daprd ignores what does not parse
    assert "priority" not in unreadable


def test_delivery_metadata_is_the_headers_and_daprds_entries_when_asked() -> None:
    class Properties:
        message_id, correlation_id, message_type, content_type = "m", "", "t", "text/plain"

    headers = {"n": "1", "raw": b"bytes", "flag": True, "count": 3, "none": None}
    assert delivery_metadata(headers, Properties, daprd_properties=False) == {
        "n": "1", "raw": "bytes", "flag": "true", "count": "3"
    }  # fmt: skip
    assert delivery_metadata({"n": "1"}, Properties, daprd_properties=True) == {
        "n": "1", "metadata.n": "1", "metadata.messageid": "m", "metadata.type": "t",
        "metadata.contenttype": "text/plain",
    }  # fmt: skip


def test_messages_kept_for_a_queue_to_come_are_routed_as_its_bindings_would() -> None:
    pytest.importorskip("aio_pika", reason="the rabbitmq extra is not installed")
    from fastapi_dapr.brokers.rabbitmq import _routes

    assert _routes("fanout", "anything", [""])
    assert _routes("direct", "eu", ["us", "eu"])
    assert not _routes("direct", "asia", ["us", "eu"])
    assert _routes("topic", "eu.fr.paris", ["eu.#"])
    assert _routes("topic", "eu", ["eu.#"])  # `#` is zero words too
    assert _routes("topic", "eu.fr", ["*.fr"])
    assert not _routes("topic", "eu.fr.paris", ["eu.*"])
    assert not _routes("topic", "us.fr", ["eu.*", "#.de"])


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (1.5, "1.5"),
        (2.0, "2"),
        (-0.0, "-0"),
        (100000.0, "100000"),
        (123456.7, "123456.7"),
        (1e6, "1e+06"),  # strconv's shortest 'g': an exponent from 6 on, where Python's is 16
        (1234567.0, "1.234567e+06"),
        (-2.5e20, "-2.5e+20"),
        (0.0001, "0.0001"),
        (0.00012, "0.00012"),
        (1.5e-7, "1.5e-07"),
        (5e-324, "5e-324"),
        (float("nan"), "NaN"),
        (float("-inf"), "-Inf"),
        (decimal.Decimal("-0.05"), "{2 -5}"),
        ([bytearray(b"ab"), None, True], "[[97 98] <nil> true]"),
        ({"s": b"\xffok"}, "map[s:\ufffdok]"),  # a long string that is not UTF-8: text
        ({"z": {}, "a": []}, "map[a:[] z:map[]]"),
        (
            datetime.datetime(2026, 1, 2, 4, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
            "2026-01-02 03:04:05 +0000 UTC",
        ),
    ],
)
def test_header_values_are_written_as_gos_v_writes_them(value: object, written: str) -> None:
    assert go_value(value) == written


def test_a_header_nested_deeper_than_python_recurses_is_written_without_failing() -> None:
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    headers = {"deep": deep, "table": {"a": deep}}
    metadata = delivery_metadata(headers, object(), daprd_properties=False)
    assert metadata["deep"].startswith("[[[")
    assert "..." in metadata["deep"]
    assert metadata["table"].startswith("map[a:[[")
