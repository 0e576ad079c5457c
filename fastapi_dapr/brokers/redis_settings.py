"""`pubsub.redis`: the settings of a component, read from its metadata with daprd's names (reference 5.3).

Integers and durations are read as Go reads them (ASCII digits, no spaces);
durations are Go durations or integer milliseconds. A setting this broker has no
use for is named in a warning, and one it cannot honour (a cluster, Sentinel)
stops the start.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Mapping

from .._go import parse_duration, parse_go_int
from .._tls import load_client_certificate

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

# daprd's settings this component has no use for: named in a warning, not silently dropped.
_UNUSED_SETTINGS = (
    "redisMaxRetries", "redisMinRetryInterval", "redisMaxRetryInterval", "writeTimeout", "poolSize",
    "minIdleConns", "maxConnAge", "poolTimeout", "idleTimeout", "idleCheckFrequency", "useEntraID",
    "useOIDC",
)  # fmt: skip

# Every metadata name daprd's `pubsub.redis` documents (its metadata.yaml, with the
# authentication profiles): a name outside these is named at start-up, with the nearest one.
METADATA_KEYS = frozenset(
    (
        "redisHost", "redisPort", "redisUsername", "redisPassword", "redisDB", "redisType", "enableTLS",
        "insecureSkipTLSVerify", "clientCert", "clientKey", "redeliverInterval", "processingTimeout",
        "queueDepth", "concurrency", "maxDeliveryCount", "dialTimeout", "readTimeout", "failover",
        "sentinelMasterName", "sentinelUsername", "sentinelPassword", "maxLenApprox", "streamTTL",
        "oidcTokenEndpoint", "oidcClientID", "oidcClientAssertionCert", "oidcClientAssertionKey",
        "oidcResource", "oidcAudience", "oidcScopes", "oidcKid", "oidcCACert", *_UNUSED_SETTINGS,
    )
)  # fmt: skip


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on")


def _duration(metadata: Mapping[str, str], key: str, default: float) -> float:
    value = metadata.get(key, "")
    if not value:
        return default
    try:
        return parse_duration(value, integer_unit=1e-3)
    except ValueError:
        raise ValueError(f"{key} is not a duration (Go syntax, or integer milliseconds): {value!r}") from None


def _integer(metadata: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    value = metadata.get(key, "")
    if not value:
        return default
    try:
        number = parse_go_int(value)  # as Go reads it: ASCII digits, no spaces
    except ValueError:
        raise ValueError(f"{key} must be an integer, not {value!r}") from None
    if number < minimum:
        raise ValueError(f"{key} must be at least {minimum}, not {number}")
    return number


@dataclasses.dataclass(frozen=True)
class RedisSettings:
    """What a `pubsub.redis` component's metadata says, checked."""

    host: str
    port: int
    username: str | None
    password: str | None
    db: int
    tls: bool
    processing_timeout: float
    redeliver_interval: float
    queue_depth: int
    max_deliveries: int
    concurrency: int
    max_len_approx: int
    stream_ttl: float
    dial_timeout: float
    read_timeout: float
    block_ms: int

    @classmethod
    def read(cls, name: str, metadata: Mapping[str, str]) -> RedisSettings:
        """The settings of the component `name`; `ValueError` for one that is wrong."""
        host = metadata.get("redisHost", "").strip()
        if not host:
            raise ValueError("redisHost is required (host:port)")
        if host.rsplit(":", 1)[-1].isdigit() and not host.endswith("]"):
            host, _, port_text = host.rpartition(":")
            port = int(port_text)
        else:
            port = _integer(metadata, "redisPort", 6379, minimum=1)
        db = _integer(metadata, "redisDB", 0)  # read in this order: of two wrong settings, the first is named
        processing_timeout = _duration(metadata, "processingTimeout", 60.0)
        redeliver_interval = _duration(metadata, "redeliverInterval", 15.0)
        queue_depth = _integer(metadata, "queueDepth", 100, minimum=1)
        max_deliveries = _integer(metadata, "maxDeliveryCount", 10, minimum=1)
        concurrency = _integer(metadata, "concurrency", 10, minimum=1)
        max_len_approx = _integer(metadata, "maxLenApprox", 0)
        stream_ttl = _duration(metadata, "streamTTL", 0.0)
        # Client timeouts (daprd's names): a command unanswered for readTimeout fails,
        # and the broker reconnects; a blocking read waits at most half of it.
        dial_timeout = _duration(metadata, "dialTimeout", 5.0)
        read_timeout = _duration(metadata, "readTimeout", 5.0) or 5.0
        if max_len_approx and stream_ttl:
            logger.warning("redis pubsub %s: maxLenApprox and streamTTL both set; maxLenApprox wins", name)
        if metadata.get("redisType", "node").strip().lower() not in ("", "node"):
            raise ValueError("redisType cluster is not supported: a single node (redisType node) only")
        if _truthy(metadata.get("failover", "false")):
            raise ValueError("failover (Redis Sentinel) is not supported: give the node in redisHost")
        unused = [key for key in _UNUSED_SETTINGS if metadata.get(key, "").strip()]
        if unused:
            logger.warning("redis pubsub %s: %s not used here; ignored", name, ", ".join(unused))
        return cls(
            host=host.strip("[]"),
            port=port,
            username=metadata.get("redisUsername") or None,
            password=metadata.get("redisPassword") or None,
            db=db,
            tls=_truthy(metadata.get("enableTLS", "false")),
            processing_timeout=processing_timeout,
            redeliver_interval=redeliver_interval,
            queue_depth=queue_depth,
            max_deliveries=max_deliveries,
            concurrency=concurrency,
            max_len_approx=max_len_approx,
            stream_ttl=stream_ttl,
            dial_timeout=dial_timeout,
            read_timeout=read_timeout,
            block_ms=max(10, int(min(1.0, read_timeout / 2) * 1000)),
        )

    @property
    def reclaims(self) -> bool:
        """Whether the stale messages of other consumers are claimed."""
        return self.processing_timeout > 0 and self.redeliver_interval > 0


def tls_context(metadata: Mapping[str, str]) -> ssl.SSLContext:
    """daprd's TLS settings: the system's trust store (`SSL_CERT_FILE` adds a CA, as
    for Go), `insecureSkipTLSVerify`, and a client certificate for mutual TLS."""
    context = ssl.create_default_context()
    if _truthy(metadata.get("insecureSkipTLSVerify", "false")):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    certificate = metadata.get("clientCert", "").strip()
    key = metadata.get("clientKey", "").strip()
    if bool(certificate) != bool(key):
        raise ValueError("clientCert and clientKey go together: give both or neither")
    if certificate:
        load_client_certificate(context, certificate, key, names=("clientCert", "clientKey"))
    return context
