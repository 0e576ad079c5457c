"""`pubsub.jetstream`: the settings of a component, read from its metadata with daprd's names.

Read as daprd's component reads them (components-contrib pubsub/jetstream, decoded by
dapr/kit): booleans are truthy words (`true`, `1`, `yes`, `on`, `y`, `t`, any case),
durations Go durations or integer seconds, numbers Go integers; `deliverPolicy` one of
all, last, new, sequence, time; `concurrencyMode` (or `concurrency`) single or parallel,
single by default. A value daprd refuses stops the start, naming the field.

`consumer_config` is the consumer daprd's `Subscribe` creates for a topic, field by
field as nats.go sends it, so that a consumer made here is the one daprd would make.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import ssl
from collections.abc import Mapping
from typing import Any

from .._go import parse_duration, parse_go_int
from .._tls import load_client_certificate
from .jetstream_layout import check_subject

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

DELIVER_POLICIES = {
    "": "all", "all": "all", "last": "last", "new": "new", "sequence": "by_start_sequence",
    "time": "by_start_time",
}  # fmt: skip
ACK_POLICIES = ("explicit", "all", "none")
DEFAULT_NAME = "dapr.io - pubsub.jetstream"  # daprd's connection name

# Every metadata name daprd's `pubsub.jetstream` reads (metadata.go, metadata.yaml and
# pubsub.Concurrency's `concurrencyMode`): a name outside these is named at start-up.
METADATA_KEYS = frozenset(
    (
        "natsURL", "jwt", "seedKey", "token", "tls_client_cert", "tls_client_key", "name", "streamName",
        "durableName", "queueGroupName", "startSequence", "startTime", "flowControl", "ackWait",
        "maxDeliver", "backOff", "maxAckPending", "replicas", "memoryStorage", "rateLimit", "heartbeat",
        "deliverPolicy", "ackPolicy", "domain", "apiPrefix", "concurrency", "concurrencyMode",
    )
)  # fmt: skip


def truthy(value: str) -> bool:
    """dapr/kit's `IsTruthy`: how daprd reads every boolean of a component."""
    return value.strip().lower() in ("y", "yes", "true", "t", "on", "1")


def _integer(metadata: Mapping[str, str], key: str, *, low: int, high: int = 2**63 - 1) -> int:
    value = metadata.get(key, "")
    if not value:
        return 0
    try:
        number = parse_go_int(value)
    except ValueError:
        raise ValueError(f"{key} must be an integer, not {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{key} must be from {low} to {high}, not {number}")
    return number


def _duration(key: str, value: str) -> float:
    try:
        return parse_duration(value, integer_unit=1.0)
    except ValueError:
        raise ValueError(f"{key} is not a duration (Go syntax, or integer seconds): {value!r}") from None


def _durations(metadata: Mapping[str, str], key: str) -> tuple[float, ...]:
    value = metadata.get(key, "")
    return tuple(_duration(key, part.strip()) for part in value.split(",")) if value.strip() else ()


def _nanoseconds(seconds: float) -> int:
    return round(seconds * 1e9)


@dataclasses.dataclass(frozen=True)
class JetStreamSettings:
    """What a `pubsub.jetstream` component's metadata says, checked."""

    url: str
    name: str
    jwt: str
    seed_key: str
    token: str
    tls_client_cert: str
    tls_client_key: str
    stream_name: str
    durable_name: str
    queue_group_name: str
    start_sequence: int
    start_time: int | None
    flow_control: bool
    ack_wait: float
    max_deliver: int
    backoff: tuple[float, ...]
    max_ack_pending: int
    replicas: int
    memory_storage: bool
    rate_limit: int
    heartbeat: float
    deliver_policy: str
    ack_policy: str
    api_prefix: str
    single: bool

    @classmethod
    def read(cls, name: str, metadata: Mapping[str, str]) -> JetStreamSettings:
        """The settings of the component `name`; `ValueError` for one that is wrong."""
        url = metadata.get("natsURL", "").strip()
        if not url:
            raise ValueError("natsURL is required (nats://host:4222)")
        jwt, seed = metadata.get("jwt", ""), metadata.get("seedKey", "")
        if bool(jwt) != bool(seed):
            raise ValueError("jwt and seedKey go together: give both or neither")
        cert, key = metadata.get("tls_client_cert", ""), metadata.get("tls_client_key", "")
        if bool(cert) != bool(key):
            raise ValueError("tls_client_cert and tls_client_key go together: give both or neither")
        start_time: int | None = None
        if metadata.get("startTime", ""):
            start_time = _integer(metadata, "startTime", low=0)
        policy = metadata.get("deliverPolicy", "")
        if policy not in DELIVER_POLICIES:
            raise ValueError(f"deliverPolicy {policy} is not one of: all, last, new, sequence, time")
        ack_policy = metadata.get("ackPolicy", "") or "explicit"
        if ack_policy not in ACK_POLICIES:
            logger.warning(
                "jetstream pubsub %s: ackPolicy %r is not explicit, all or none: explicit, as daprd",
                name,
                ack_policy,
            )
            ack_policy = "explicit"
        mode = metadata.get("concurrencyMode", "") or metadata.get("concurrency", "") or "single"
        if mode not in ("single", "parallel"):
            raise ValueError(f"concurrencyMode must be single or parallel, not {mode!r}")
        domain = metadata.get("domain", "")
        prefix = metadata.get("apiPrefix", "") or (f"$JS.{domain}.API" if domain else "$JS.API")
        for field in ("streamName", "durableName", "queueGroupName", "apiPrefix", "domain"):
            if metadata.get(field, ""):
                check_subject(metadata[field], field)
        ack_wait = metadata.get("ackWait", "")
        heartbeat = metadata.get("heartbeat", "")
        return cls(
            url=url,
            name=metadata.get("name", "") or DEFAULT_NAME,
            jwt=jwt,
            seed_key=seed,
            token=metadata.get("token", ""),
            tls_client_cert=cert,
            tls_client_key=key,
            stream_name=metadata.get("streamName", ""),
            durable_name=metadata.get("durableName", ""),
            queue_group_name=metadata.get("queueGroupName", ""),
            start_sequence=_integer(metadata, "startSequence", low=0),
            start_time=start_time,
            flow_control=truthy(metadata.get("flowControl", "")),
            ack_wait=_duration("ackWait", ack_wait) if ack_wait else 0.0,
            max_deliver=_integer(metadata, "maxDeliver", low=-(2**63)),
            backoff=_durations(metadata, "backOff"),
            max_ack_pending=_integer(metadata, "maxAckPending", low=-(2**63)),
            replicas=_integer(metadata, "replicas", low=0),
            memory_storage=truthy(metadata.get("memoryStorage", "")),
            rate_limit=_integer(metadata, "rateLimit", low=0),
            heartbeat=_duration("heartbeat", heartbeat) if heartbeat else 0.0,
            deliver_policy=DELIVER_POLICIES[policy],
            ack_policy=ack_policy,
            api_prefix=prefix.rstrip("."),
            single=mode == "single",
        )

    @property
    def acks(self) -> bool:
        """Whether messages are acknowledged (and so delivered again when they are not)."""
        return self.ack_policy != "none"

    def consumer_config(self, topic: str, durable: str, group: str, deliver_subject: str) -> dict[str, Any]:
        """The consumer daprd's `Subscribe` adds for `topic`, as nats.go encodes it (its
        `omitempty` fields left out when zero); `durable`, `group` and `deliver_subject` are
        given (jetstream_layout.py says where they come from)."""
        config: dict[str, Any] = {"deliver_policy": self.deliver_policy}
        if durable:
            config["durable_name"] = durable
        if self.start_sequence > 0:
            config["opt_start_seq"] = self.start_sequence
        if self.start_time is not None:
            moment = datetime.datetime.fromtimestamp(self.start_time, datetime.timezone.utc)
            config["opt_start_time"] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        config["ack_policy"] = self.ack_policy
        if self.ack_wait:
            config["ack_wait"] = _nanoseconds(self.ack_wait)
        if self.max_deliver:
            config["max_deliver"] = self.max_deliver
        if self.backoff:
            config["backoff"] = [_nanoseconds(delay) for delay in self.backoff]
        config["filter_subject"] = topic
        config["replay_policy"] = "instant"
        if self.rate_limit:
            config["rate_limit_bps"] = self.rate_limit
        if self.max_ack_pending:
            config["max_ack_pending"] = self.max_ack_pending
        if self.flow_control:
            config["flow_control"] = True
        if self.heartbeat:
            config["idle_heartbeat"] = _nanoseconds(self.heartbeat)
        config["deliver_subject"] = deliver_subject
        if group:
            config["deliver_group"] = group
        config["num_replicas"] = self.replicas
        if self.memory_storage:
            config["mem_storage"] = True
        return config


def _pem_or_file(value: str, name: str) -> str:
    """daprd hands `tls_client_cert` and `tls_client_key` to nats.go as file paths; its
    documentation shows PEM values. Either is taken: a PEM value as it is, else a file."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        with open(os.path.expanduser(value.strip()), encoding="ascii") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name} is neither a PEM value nor a readable PEM file: {exc}") from None


def tls_context(settings: JetStreamSettings) -> ssl.SSLContext | None:
    """TLS as nats.go makes it for daprd: the system's trust store (`SSL_CERT_FILE` adds a CA,
    as for Go), with the client certificate when given; None when neither the URL
    (`tls://`) nor a client certificate asks for TLS (a server that requires it still gets
    it: the client upgrades)."""
    wants = settings.url.startswith("tls://") or bool(settings.tls_client_cert)
    if not wants:
        return None
    context = ssl.create_default_context()
    if settings.tls_client_cert:
        certificate = _pem_or_file(settings.tls_client_cert, "tls_client_cert")
        key = _pem_or_file(settings.tls_client_key, "tls_client_key")
        load_client_certificate(context, certificate, key, names=("tls_client_cert", "tls_client_key"))
    return context
