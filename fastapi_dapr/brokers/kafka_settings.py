"""`pubsub.kafka`: the settings of a component, read from its metadata with daprd's names,
and the record layout daprd's component (components-contrib common/component/kafka) uses.

Read as daprd reads them: `brokers` (comma-separated, required), `authType` (required:
`none`, `password`, `mtls`, `certificate`; the OIDC and AWS ones are refused here),
`consumerGroup` (else `consumerID`, else the app id), `initialOffset` (`newest`, the
default, or `oldest`), TLS on unless `disableTls` or `authType: none`, with `caCert`,
`skipVerify`, `clientCert`/`clientKey` (PEM text), SASL with `saslUsername`,
`saslPassword`, `saslMechanism` (`SHA-256`, `SHA-512`, else PLAIN).

The layout: the record value is the message (the CloudEvent), every publish metadata
entry is a header, the key is `partitionKey` or `__key`, the partition `partitionNumber`
or else Sarama's hash partitioner's choice (`partition_for`), and a delivery's metadata is
the headers with `__key`, `__offset`, `__topic`, `__timestamp` and `__partition`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import ssl
from collections.abc import Mapping, Sequence

from .._go import parse_duration, parse_go_int
from .._tls import load_client_certificate

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

KEY_NAMES = ("partitionKey", "__key")
PARTITION_NAME = "partitionNumber"
AUTH_TYPES = ("none", "password", "mtls", "certificate")
_REFUSED_AUTH = ("oidc", "oidc_private_key_jwt", "awsiam")

# daprd's settings this component reads but has no use for here: named in a warning.
_UNUSED_SETTINGS = (
    "version", "channelBufferSize", "consumerFetchMin", "consumerFetchDefault",
    "clientConnectionTopicMetadataRefreshInterval", "clientConnectionKeepAliveInterval", "readTimeout",
    "writeTimeout", "metadataTimeout", "producerRetryMax", "schemaRegistryURL", "schemaRegistryAPIKey",
    "schemaRegistryAPISecret", "schemaCachingEnabled", "schemaLatestVersionCacheTTL", "useAvroJSON",
    "consumeRetryInterval",
)  # fmt: skip

# Every metadata name daprd's `pubsub.kafka` documents (its metadata.yaml, with the
# authentication profiles): a name outside these is named at start-up, with the nearest one.
METADATA_KEYS = frozenset(
    (
        "brokers", "consumerGroup", "clientID", "authType", "saslUsername", "saslPassword",
        "saslMechanism", "initialOffset", "maxMessageBytes", "consumeRetryEnabled", "heartbeatInterval",
        "sessionTimeout", "skipVerify", "disableTls", "caCert", "clientCert", "clientKey", "dialTimeout",
        "producerRequiredAcks", "escapeHeaders", "compression", "consumerGroupRebalanceStrategy",
        "oidcTokenEndpoint", "oidcClientID", "oidcClientSecret", "oidcScopes", "oidcExtensions",
        "oidcClientAssertionCert", "oidcClientAssertionKey", "oidcResource", "oidcAudience", "oidcKid",
        "awsAccessKey", "awsSecretKey", "awsSessionToken", "awsIamRoleArn", "awsStsSessionName", "awsRegion",
        "excludeHeaderMetaRegex", *_UNUSED_SETTINGS,
    )
)  # fmt: skip

_ACKS: dict[str, int | str] = {"all": "all", "": "all", "local": 1, "none": 0}
_COMPRESSION = {"none": None, "": None, "gzip": "gzip", "snappy": "snappy", "lz4": "lz4", "zstd": "zstd"}
_ASSIGNORS = ("range", "roundrobin", "sticky")


def truthy(value: str) -> bool:
    """dapr/kit's `IsTruthy`, as daprd reads the booleans of a component."""
    return value.strip().lower() in ("y", "yes", "true", "t", "on", "1")


def _duration(metadata: Mapping[str, str], key: str, default: float) -> float:
    value = metadata.get(key, "").strip()
    if not value:
        return default
    try:
        return parse_duration(value, integer_unit=1e-3)
    except ValueError:
        raise ValueError(f"{key} is not a duration (Go syntax, or integer milliseconds): {value!r}") from None


def _integer(metadata: Mapping[str, str], key: str, default: int) -> int:
    value = metadata.get(key, "").strip()
    if not value:
        return default
    try:
        return parse_go_int(value)
    except ValueError:
        raise ValueError(f"{key} must be an integer, not {value!r}") from None


def _pem(metadata: Mapping[str, str], key: str) -> str:
    value = metadata.get(key, "").strip()
    if value and "-----BEGIN" not in value:
        raise ValueError(f"{key} is not PEM text")
    return value


@dataclasses.dataclass(frozen=True)
class KafkaSettings:
    """What a `pubsub.kafka` component's metadata says, checked."""

    brokers: tuple[str, ...]
    group: str
    client_id: str
    auth_type: str
    oldest: bool
    tls: bool
    skip_verify: bool
    ca_cert: str
    client_cert: str
    client_key: str
    sasl_username: str
    sasl_password: str
    sasl_mechanism: str
    max_message_bytes: int
    retry_given_up: bool
    heartbeat_interval: float
    session_timeout: float
    dial_timeout: float
    acks: int | str
    compression: str | None
    assignor: str
    escape_headers: bool
    excluded_headers: re.Pattern[str] | None  # excludeHeaderMetaRegex: headers left out of the metadata

    @classmethod
    def read(cls, name: str, metadata: Mapping[str, str], *, group: str) -> KafkaSettings:
        """The settings of the component `name`; `group` is the consumer group when
        `consumerGroup` is not set. `ValueError` for one that is wrong."""
        brokers = tuple(part.strip() for part in metadata.get("brokers", "").split(",") if part.strip())
        if not brokers:
            raise ValueError("brokers is required (host:port, comma-separated)")
        auth_type = metadata.get("authType", "").strip().lower()
        if not auth_type:
            raise ValueError("authType is required (none, password, mtls or certificate)")
        if auth_type in _REFUSED_AUTH:
            raise ValueError(
                f"authType {auth_type} is not supported here: none, password, mtls or certificate"
            )
        if auth_type not in AUTH_TYPES:
            raise ValueError(f"authType must be one of none, password, mtls, certificate; not {auth_type!r}")
        offset = metadata.get("initialOffset", "").strip().lower()
        if offset not in ("", "newest", "oldest"):
            raise ValueError(f"initialOffset must be newest or oldest, not {offset!r}")
        ca_cert, client_cert, client_key = (
            _pem(metadata, key) for key in ("caCert", "clientCert", "clientKey")
        )
        username = metadata.get("saslUsername", "")
        password = metadata.get("saslPassword", "")
        if auth_type == "password" and not (username and password):
            raise ValueError("authType password needs saslUsername and saslPassword")
        if bool(client_cert) != bool(client_key):
            raise ValueError("clientCert and clientKey go together: give both or neither")
        if auth_type == "certificate" and not ca_cert:
            raise ValueError("authType certificate needs caCert")
        disable_tls = truthy(metadata.get("disableTls", ""))
        if auth_type == "mtls" and disable_tls:
            raise ValueError("authType mtls cannot be used with disableTls true")
        acks_text = metadata.get("producerRequiredAcks", "").strip().lower()
        if acks_text not in _ACKS:
            raise ValueError(f"producerRequiredAcks must be all, local or none, not {acks_text!r}")
        compression_text = metadata.get("compression", "").strip().lower()
        if compression_text not in _COMPRESSION:
            raise ValueError(
                f"compression must be one of {', '.join(_COMPRESSION)}, not {compression_text!r}"
            )
        assignor = metadata.get("consumerGroupRebalanceStrategy", "").strip().lower() or "range"
        if assignor not in _ASSIGNORS:
            logger.warning("kafka pubsub %s: rebalance strategy %r unknown; range is used", name, assignor)
            assignor = "range"
        unused = [key for key in _UNUSED_SETTINGS if metadata.get(key, "").strip()]
        if unused:
            logger.warning("kafka pubsub %s: %s not used here; ignored", name, ", ".join(unused))
        retry = metadata.get("consumeRetryEnabled", "").strip()
        excluded = metadata.get("excludeHeaderMetaRegex", "")
        try:
            # Go's regexp (RE2) finds the pattern anywhere in the name, as `search` does here;
            # daprd panics on a pattern it cannot compile.
            excluded_headers = re.compile(excluded) if excluded else None
        except re.error as exc:
            raise ValueError(f"excludeHeaderMetaRegex is not a regular expression: {exc}") from None
        return cls(
            brokers=brokers,
            group=metadata.get("consumerGroup", "").strip() or group,
            client_id=metadata.get("clientID", "").strip() or "sarama",  # Sarama's default, as daprd's
            auth_type=auth_type,
            oldest=offset == "oldest",
            tls=not (disable_tls or auth_type == "none"),
            skip_verify=truthy(metadata.get("skipVerify", "")),
            ca_cert=ca_cert,
            client_cert=client_cert,
            client_key=client_key,
            sasl_username=username,
            sasl_password=password,
            sasl_mechanism=metadata.get("saslMechanism", "").strip(),
            max_message_bytes=_integer(metadata, "maxMessageBytes", 0) or 1_000_000,  # 0: Sarama's default
            retry_given_up=truthy(retry) if retry else True,  # daprd's pubsub.kafka: on by default
            heartbeat_interval=_duration(metadata, "heartbeatInterval", 3.0),
            session_timeout=_duration(metadata, "sessionTimeout", 10.0),
            dial_timeout=_duration(metadata, "dialTimeout", 30.0),
            acks=_ACKS[acks_text],
            compression=_COMPRESSION[compression_text],
            assignor=assignor,
            escape_headers=truthy(metadata.get("escapeHeaders", "")),
            excluded_headers=excluded_headers,
        )

    def sasl(self) -> tuple[str | None, str]:
        """aiokafka's `sasl_mechanism` (None: no SASL) and `security_protocol`."""
        protocol = "SSL" if self.tls else "PLAINTEXT"
        if self.auth_type != "password":
            return None, protocol
        mechanism = {"SHA-256": "SCRAM-SHA-256", "SHA-512": "SCRAM-SHA-512"}.get(self.sasl_mechanism, "PLAIN")
        return mechanism, f"SASL_{protocol}"

    def tls_context(self) -> ssl.SSLContext | None:
        """daprd's TLS: the system's trust store, or `caCert`; `skipVerify`; a client
        certificate (`clientCert`, `clientKey`) for mutual TLS. None without TLS."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cadata=self.ca_cert or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert:
            load_client_certificate(
                context, self.client_cert, self.client_key, names=("clientCert", "clientKey")
            )
        return context


# -- the layout ---------------------------------------------------------------------------------


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bits (Go's hash/fnv New32a, which Sarama's hash partitioner uses)."""
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def hash_partition(key: bytes, partitions: int) -> int:
    """Sarama's default hash partitioner (NewHashPartitioner): the FNV-1a hash taken as a
    signed 32-bit integer, Go's remainder (the sign of the dividend), made positive."""
    signed = fnv1a_32(key)
    if signed >= 1 << 31:
        signed -= 1 << 32
    return abs(signed) % partitions  # Go: -(|s| % n) for s < 0, then negated


def partition_for(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
    """aiokafka's partitioner hook, as daprd's producer picks: Sarama's hash of the key over
    every partition of the topic, or a random partition for a record without a key."""
    partitions = sorted(all_partitions)
    if key is None:
        return random.choice(partitions)  # Sarama's random partitioner
    return partitions[hash_partition(key, len(partitions))]


def record_layout(metadata: Mapping[str, str]) -> tuple[bytes | None, int | None, list[tuple[str, bytes]]]:
    """A publish's metadata as daprd's producer writes it: the key, the partition asked
    for (`partitionNumber`), and every entry as a header. `ValueError` for a bad partition."""
    key: bytes | None = None
    partition: int | None = None
    headers: list[tuple[str, bytes]] = []
    for name, value in metadata.items():
        if name in KEY_NAMES:
            key = value.encode()
        elif name == PARTITION_NAME:
            try:
                partition = parse_go_int(value)
            except ValueError:
                raise ValueError(f"invalid partitionNumber metadata value {value!r}") from None
            if partition < 0 or partition >= 1 << 31:
                raise ValueError(f"partitionNumber must be a non-negative 32-bit integer, got {value}")
        headers.append((name, value.encode()))
    return key, partition, headers
