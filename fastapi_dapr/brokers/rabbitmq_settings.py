"""`pubsub.rabbitmq`: the settings of a component, read from its metadata with daprd's names.

Read as daprd's component reads them (components-contrib pubsub/rabbitmq, decoded by
dapr/kit): booleans are truthy words (`true`, `1`, `yes`, `on`, `y`, `t`, any case), and
anything else is false; durations are Go durations or integer seconds; the connection is
`connectionString` (or the deprecated `host`), else `protocol`, `hostname`, `username`
and `password`. A value daprd refuses stops the start, naming the field.

Where the defaults differ from daprd's, on purpose (docs/rabbitmq.md): publishes wait for
RabbitMQ's confirm (`publisherConfirm`, daprd false) and are persistent (`deliveryMode`,
daprd 0), and the prefetch is bounded (`prefetchCount`, daprd 0: unlimited), so that a
publish that answered is on disk and a backlog does not flood the process. The layout
(names, flags and queue arguments) keeps daprd's defaults: it must match to be shared.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import urllib.parse
from collections.abc import Mapping

from .._go import parse_duration, parse_go_int
from .._tls import load_client_certificate

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

EXCHANGE_KINDS = ("fanout", "topic", "direct", "headers")
DEFAULT_PREFETCH = 100  # when prefetchCount is not set: daprd's 0 would take the whole queue

# Subscription metadata in daprd's component: on the component they do nothing there.
SUBSCRIPTION_ONLY = ("queueName", "routingKey", "queueType", "singleActiveConsumer", "maxPriority")

# Every metadata name daprd's `pubsub.rabbitmq` reads (metadata.go, metadata.yaml, pubsub.TLS,
# pubsub.Concurrency): a name outside these is named at start-up, with the nearest one.
METADATA_KEYS = frozenset(
    (
        "connectionString", "host", "protocol", "hostname", "username", "password", "durable",
        "enableDeadLetter", "deletedWhenUnused", "autoAck", "requeueInFailure", "deliveryMode",
        "prefetchCount", "reconnectWaitSeconds", "maxLen", "maxLenBytes", "exchangeKind", "clientName",
        "heartBeat", "publisherConfirm", "saslExternal", "concurrency", "concurrencyMode", "ttlInSeconds",
        "ttl", "publishMessagePropertiesToMetadata", "caCert", "clientCert", "clientKey",
        *SUBSCRIPTION_ONLY,
    )
)  # fmt: skip


def truthy(value: str) -> bool:
    """dapr/kit's `IsTruthy`: how daprd reads every boolean of a component."""
    return value.strip().lower() in ("y", "yes", "true", "t", "on", "1")


def _integer(metadata: Mapping[str, str], key: str, default: int, *, low: int, high: int) -> int:
    value = metadata.get(key, "")
    if not value:
        return default
    try:
        number = parse_go_int(value)
    except ValueError:
        raise ValueError(f"{key} must be an integer, not {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{key} must be from {low} to {high}, not {number}")
    return number


def duration(metadata: Mapping[str, str], key: str, default: float) -> float:
    """A Go duration or integer seconds (dapr/kit's reading of a `time.Duration`)."""
    value = metadata.get(key, "")
    if not value:
        return default
    try:
        return parse_duration(value, integer_unit=1.0)
    except ValueError:
        raise ValueError(f"{key} is not a duration (Go syntax, or integer seconds): {value!r}") from None


def message_ttl(metadata: Mapping[str, str]) -> float | None:
    """components-contrib's `TryGetTTL`: `ttl` or `ttlInSeconds` (any case), a Go duration
    or integer seconds; None when absent. `ValueError` for one daprd refuses."""
    value = next((v for k, v in metadata.items() if k.lower() in ("ttl", "ttlinseconds") and v), "")
    if not value:
        return None
    try:
        return max(0.0, parse_duration(value, integer_unit=1.0))
    except ValueError:
        raise ValueError(f"ttl value must be a valid integer: actual is '{value}'") from None


def _connection(metadata: Mapping[str, str]) -> tuple[str, str]:
    """The AMQP URL and its protocol, as daprd makes them (`connectionURI`)."""
    connection = metadata.get("connectionString", "") or metadata.get("host", "")
    protocol = metadata.get("protocol", "")
    if connection:
        scheme = urllib.parse.urlsplit(connection).scheme
        if scheme not in ("amqp", "amqps"):
            raise ValueError(
                f"connectionString must be an amqp:// or amqps:// URL, not {_without_password(connection)!r}"
            )
        if protocol and protocol != scheme:
            raise ValueError(f"protocol {protocol} does not match the connectionString's {scheme}")
        return connection, scheme
    protocol = protocol or "amqp"
    if protocol not in ("amqp", "amqps"):
        raise ValueError(f"protocol must be amqp or amqps, not {protocol!r}")
    hostname = metadata.get("hostname", "") or "localhost"
    username, password = metadata.get("username", ""), metadata.get("password", "")
    user = ""
    if username:
        user = urllib.parse.quote(username, safe="")
        if password:
            user += ":" + urllib.parse.quote(password, safe="")
        user += "@"
    return f"{protocol}://{user}{hostname}", protocol


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


@dataclasses.dataclass(frozen=True)
class RabbitSettings:
    """What a `pubsub.rabbitmq` component's metadata says, checked."""

    url: str
    tls: bool
    sasl_external: bool
    client_name: str
    heartbeat: float
    reconnect_wait: float
    durable: bool
    delete_when_unused: bool
    enable_dead_letter: bool
    auto_ack: bool
    requeue_in_failure: bool
    delivery_mode: int
    prefetch_count: int
    publisher_confirm: bool
    max_len: int
    max_len_bytes: int
    exchange_kind: str
    single: bool
    default_ttl: float | None
    properties_to_metadata: bool

    @classmethod
    def read(cls, name: str, metadata: Mapping[str, str]) -> RabbitSettings:
        """The settings of the component `name`; `ValueError` for one that is wrong."""
        if metadata.get("host") and not metadata.get("connectionString"):
            logger.warning("rabbitmq pubsub %s: host is deprecated (as in daprd): use connectionString", name)
        url, protocol = _connection(metadata)
        delivery_mode = _integer(metadata, "deliveryMode", 2, low=0, high=255)
        if delivery_mode > 2:
            raise ValueError(f"deliveryMode must be 0, 1 (transient) or 2 (persistent), not {delivery_mode}")
        exchange_kind = metadata.get("exchangeKind", "") or "fanout"
        if exchange_kind not in EXCHANGE_KINDS:
            raise ValueError(
                f"exchangeKind must be one of {', '.join(EXCHANGE_KINDS)}, not {exchange_kind!r}"
            )
        mode = metadata.get("concurrencyMode", "") or "parallel"
        if mode not in ("single", "parallel"):
            raise ValueError(f"concurrencyMode must be single or parallel, not {mode!r}")
        if metadata.get("concurrency", ""):
            logger.warning(
                "rabbitmq pubsub %s: concurrency does nothing (daprd reads concurrencyMode); ignored", name
            )
        try:
            default_ttl = message_ttl({k: v for k, v in metadata.items() if k in ("ttl", "ttlInSeconds")})
        except ValueError as exc:
            raise ValueError(f"ttlInSeconds: {exc}") from None
        sasl_external = truthy(metadata.get("saslExternal", ""))
        if sasl_external and not all(metadata.get(k) for k in ("caCert", "clientCert", "clientKey")):
            raise ValueError(
                "saslExternal can only be true when caCert, clientCert and clientKey are all set"
            )
        ignored = [key for key in SUBSCRIPTION_ONLY if metadata.get(key)]
        if ignored:
            logger.warning(
                "rabbitmq pubsub %s: %s belong to a subscription's metadata, not the component's; ignored",
                name,
                ", ".join(ignored),
            )
        settings = cls(
            url=url,
            tls=protocol == "amqps",
            sasl_external=sasl_external and protocol == "amqps",
            client_name=metadata.get("clientName", ""),
            heartbeat=duration(metadata, "heartBeat", 10.0),
            reconnect_wait=duration(metadata, "reconnectWaitSeconds", 3.0),
            durable=truthy(metadata.get("durable", "true")),
            delete_when_unused=truthy(metadata.get("deletedWhenUnused", "true")),
            enable_dead_letter=truthy(metadata.get("enableDeadLetter", "")),
            auto_ack=truthy(metadata.get("autoAck", "")),
            requeue_in_failure=truthy(metadata.get("requeueInFailure", "")),
            delivery_mode=delivery_mode,
            prefetch_count=_integer(metadata, "prefetchCount", DEFAULT_PREFETCH, low=0, high=255),
            publisher_confirm=truthy(metadata.get("publisherConfirm", "true")),
            max_len=_integer(metadata, "maxLen", 0, low=-(2**63), high=2**63 - 1),
            max_len_bytes=_integer(metadata, "maxLenBytes", 0, low=-(2**63), high=2**63 - 1),
            exchange_kind=exchange_kind,
            single=mode == "single",
            default_ttl=default_ttl,
            properties_to_metadata=truthy(metadata.get("publishMessagePropertiesToMetadata", "")),
        )
        if settings.delete_when_unused and not metadata.get("deletedWhenUnused"):
            logger.warning(
                "rabbitmq pubsub %s: deletedWhenUnused is true (daprd's default): a queue, with the messages "
                "it holds, is deleted when its last consumer goes; set it to false to keep them",
                name,
            )
        return settings

    @property
    def display(self) -> str:
        """The URL without its password, for messages."""
        return _without_password(self.url)


def tls_context(metadata: Mapping[str, str]) -> ssl.SSLContext:
    """daprd's TLS for `amqps`: `caCert` as the only trusted CA when given (else the system's
    trust store), and `clientCert` with `clientKey` for mutual TLS (and EXTERNAL)."""
    ca = metadata.get("caCert", "").strip()
    try:
        context = ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()
    except ssl.SSLError as exc:
        raise ValueError(f"caCert is not a PEM certificate: {exc}") from None
    certificate = metadata.get("clientCert", "").strip()
    key = metadata.get("clientKey", "").strip()
    if bool(certificate) != bool(key):
        raise ValueError("clientCert and clientKey go together: give both or neither")
    if certificate:
        load_client_certificate(context, certificate, key, names=("clientCert", "clientKey"))
    return context
