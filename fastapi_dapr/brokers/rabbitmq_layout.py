"""`pubsub.rabbitmq`: daprd's layout, as pure functions: names, queue arguments, message properties.

What daprd's component declares and writes (components-contrib pubsub/rabbitmq), so that
an app under daprd and an app on fastapi-dapr share one RabbitMQ: RabbitMQ refuses (406
PRECONDITION_FAILED) to declare a queue or an exchange again with other flags or other
arguments, so these must be daprd's exactly.

- The exchange of a topic is the topic itself: kind `exchangeKind`, durable `durable`,
  auto-delete `deletedWhenUnused`, no arguments.
- The queue of a subscription is its `queueName`, else `{consumerID}-{topic}`, bound to
  the exchange once per `routingKey` (comma-separated; one empty key by default); its
  arguments are built by `queue_arguments`.
- With `enableDeadLetter`, the fanout exchange `dlx-{queue}` (always durable) and the
  lazy queue `dlq-{queue}` bound to it receive what is rejected without requeueing.
- A message goes to the topic's exchange with the routing key of its `routingKey`
  metadata; `message_properties` builds its properties.
"""

from __future__ import annotations

import datetime
import decimal
import math
from collections.abc import Mapping
from typing import Any

from .._go import parse_go_int
from .rabbitmq_settings import RabbitSettings, message_ttl, truthy

__all__: list[str] = []

QUEUE_TYPES = ("classic", "quorum")


def queue_name(topic: str, consumer_id: str, subscription: Mapping[str, str]) -> str:
    return subscription.get("queueName", "") or f"{consumer_id}-{topic}"


def dead_letter_names(queue: str) -> tuple[str, str]:
    """The dead-letter exchange and queue of `queue`."""
    return f"dlx-{queue}", f"dlq-{queue}"


def routing_keys(subscription: Mapping[str, str]) -> list[str]:
    """The keys the queue is bound with: daprd splits `routingKey` on commas, as it is."""
    return subscription.get("routingKey", "").split(",")


def _unsigned(subscription: Mapping[str, str], key: str) -> int | None:
    """Go's `strconv.ParseUint(value, 10, 0)` of a subscription's metadata, or None if unset."""
    value = subscription.get(key, "")
    if not value:
        return None
    try:
        number = parse_go_int(value) if not value.startswith(("+", "-")) else -1
    except ValueError:
        number = -1
    if number < 0:
        raise ValueError(f"subscription metadata {key} must be an unsigned integer, not {value!r}")
    return number


def _length_limits(settings: RabbitSettings) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if settings.max_len > 0:
        limits["x-max-length"] = settings.max_len
    if settings.max_len_bytes > 0:
        limits["x-max-length-bytes"] = settings.max_len_bytes
    return limits


def queue_arguments(settings: RabbitSettings, queue: str, subscription: Mapping[str, str]) -> dict[str, Any]:
    """The arguments daprd declares the queue with (`prepareSubscription`), in its order:
    the dead-letter exchange, the component's length limits, then the subscription's
    `maxPriority` (at most 255), `queueType` (classic unless quorum), `singleActiveConsumer`,
    `maxLenBytes` and `maxLen` (over the component's). `ValueError` for a value daprd refuses."""
    arguments: dict[str, Any] = {}
    if settings.enable_dead_letter:
        arguments["x-dead-letter-exchange"] = dead_letter_names(queue)[0]
    arguments.update(_length_limits(settings))
    priority = _unsigned(subscription, "maxPriority")
    if priority is not None:
        arguments["x-max-priority"] = min(priority, 255)
    queue_type = subscription.get("queueType", "") or "classic"
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"invalid queue type {queue_type}. Valid types are classic and quorum")
    arguments["x-queue-type"] = queue_type
    if truthy(subscription.get("singleActiveConsumer", "")):
        arguments["x-single-active-consumer"] = True
    for key, argument in (("maxLenBytes", "x-max-length-bytes"), ("maxLen", "x-max-length")):
        number = _unsigned(subscription, key)
        if number is not None:
            arguments[argument] = number
    return arguments


def dead_letter_queue_arguments(settings: RabbitSettings) -> dict[str, Any]:
    """The dead-letter queue's: the component's length limits, and the lazy mode."""
    return {**_length_limits(settings), "x-queue-mode": "lazy"}


def _property(metadata: Mapping[str, str], key: str) -> str:
    """components-contrib's `TryGetProperty`: the exact name first, then any case."""
    value = metadata.get(key, "")
    if value:
        return value
    folded = key.lower()
    return next((v for k, v in metadata.items() if v and k.lower() == folded), "")


def message_properties(
    settings: RabbitSettings, metadata: Mapping[str, str], message_id: str
) -> dict[str, Any]:
    """The properties of a message published with `metadata`, as daprd's `publishSync` sets
    them: `content_type` text/plain unless `contentType`; `delivery_mode`; `expiration` from
    `ttlInSeconds` (else the component's) in milliseconds; `priority` (0 to 255);
    `message_id`, `correlation_id` and `type`. The metadata itself goes in the headers
    (daprd writes none, and reads them only with publishMessagePropertiesToMetadata)."""
    properties: dict[str, Any] = {
        "content_type": _property(metadata, "contentType") or "text/plain",
        "message_id": _property(metadata, "messageID") or message_id,
    }
    if settings.delivery_mode:  # 0: no delivery mode, as amqp091-go sends it (transient)
        properties["delivery_mode"] = settings.delivery_mode
    try:
        ttl = message_ttl(metadata)
    except ValueError:
        ttl = None  # daprd logs it and publishes without
    if ttl is None:
        ttl = settings.default_ttl
    if ttl is not None:
        properties["expiration"] = str(int(ttl * 1000))
    priority = metadata.get("priority", "")
    if priority:
        try:
            number = min(max(parse_go_int(priority), 0), 255)
        except ValueError:
            number = 0  # daprd logs it and publishes without
        if number:  # 0: none, as amqp091-go sends it
            properties["priority"] = number
    correlation = _property(metadata, "correlationID")
    if correlation:
        properties["correlation_id"] = correlation
    kind = _property(metadata, "type")
    if kind:
        properties["message_type"] = kind
    if metadata:
        properties["headers"] = dict(metadata)
    return properties


def delivery_metadata(
    headers: Mapping[str, Any] | None, properties: Any, *, daprd_properties: bool
) -> dict[str, str]:
    """The metadata of a message delivered: its headers (what this component wrote as the
    publish's metadata), and with `daprd_properties` (publishMessagePropertiesToMetadata)
    daprd's `metadata.*` entries too: message id, correlation id, type, content type, headers."""
    metadata: dict[str, str] = {}
    for key, value in (headers or {}).items():
        text = _text(value)
        if text is not None:
            metadata[key] = text
    if daprd_properties:
        for key, value in (
            ("metadata.messageid", properties.message_id),
            ("metadata.correlationid", properties.correlation_id),
            ("metadata.type", properties.message_type),
            ("metadata.contenttype", properties.content_type),
        ):
            if value:
                metadata[key] = value
        for key, value in (headers or {}).items():
            if value is not None:  # daprd leaves out a header without a value
                metadata[f"metadata.{key}"] = _text(value) or ""
    return metadata


def _text(value: Any) -> str | None:
    """A header's value as daprd's component makes it a metadata value: a string as it is,
    bytes as text (not UTF-8: replaced), anything else as Go's `fmt.Sprintf("%v")` writes
    what its AMQP library decoded; None for no value."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if value is None:
        return None
    return go_value(value)


GO_VALUE_DEPTH = 32  # tables and arrays written deeper than this are written `...`


def go_value(value: Any, depth: int = 0) -> str:
    """Go's `%v` of an AMQP field value as amqp091-go decodes it: `map[a:1 b:[x y]]` (keys
    sorted), `<nil>`, `true`, a decimal as its struct `{scale value}`, a timestamp in UTC as
    `time.Time` prints, a byte array inside a table or an array as its numbers (a string that
    is not UTF-8, which pamqp gives as bytes, as text). Below `GO_VALUE_DEPTH` levels of
    tables and arrays, `...`: a header nested hundreds deep must not break the delivery."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, bytearray):  # pamqp's byte array ('x')
        return "[" + " ".join(str(byte) for byte in value) + "]"
    if isinstance(value, bytes):  # pamqp's long string ('S') that is not UTF-8
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (Mapping, list, tuple)) and depth >= GO_VALUE_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        items = (f"{key}:{go_value(value[key], depth + 1)}" for key in sorted(value))
        return "map[" + " ".join(items) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_value(item, depth + 1) for item in value) + "]"
    if isinstance(value, decimal.Decimal) and value.is_finite():
        exponent = int(value.as_tuple().exponent)
        scale = max(0, -exponent)
        return f"{{{scale} {int(value.scaleb(scale))}}}"
    if isinstance(value, datetime.datetime):
        moment = value.astimezone(datetime.timezone.utc) if value.tzinfo else value
        return moment.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
    if isinstance(value, float):
        return _go_float(value)
    return str(value)


def _go_float(value: float) -> str:
    """`%v` of a float64 (strconv's `'g'`, shortest): the shortest digits that read back as
    the value, in exponent form when the exponent is below -4 or 6 and more (`1e+06`)."""
    if value != value or value in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(value)]
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    negative, numerals, exponent = decimal.Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, numerals))
    point = len(digits) + int(exponent)  # where the decimal point goes among the digits
    sign = "-" if negative else ""
    power = point - 1
    if power < -4 or power >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"
