"""`pubsub.jetstream`: the layout shared with daprd, as pure functions: names, headers, ids.

What daprd's component writes and reads (components-contrib pubsub/jetstream), so that an
app under daprd and an app on fastapi-dapr share one NATS server:

- A message goes to the subject named by its topic, its body the CloudEvent (or the raw
  payload), with the CloudEvent's `id` as `Nats-Msg-Id`, the server's deduplication key.
- A subscription is a push consumer of the stream that holds the topic (`streamName`, else
  the one stream whose subjects take it), filtered on the topic, acknowledged explicitly;
  durable when named (`durableName`), shared by the replicas of a queue group
  (`queueGroupName`, its deliver group).
- daprd delivers a message with the metadata `{"Topic": subject}`.

Added here (daprd writes none of it and ignores it): the publish's metadata goes with the
message in one header, `Dapr-Metadata` (a JSON object), and is delivered with it; a message
without that header (written by daprd, or by any NATS client) is delivered with daprd's
`{"Topic": subject}`. Without `durableName` the consumer is durable all the same, named
after the consumer group and the topic, and shared by the group's replicas (daprd's is
ephemeral: each replica gets every message, and a restart loses its place).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .._json import loads

__all__: list[str] = []

MSG_ID = "Nats-Msg-Id"
METADATA = "Dapr-Metadata"
ACK_PREFIX = "$JS.ACK."
# What a consumer's name may not hold (nats-server's rules), replaced in the names made here.
_NOT_IN_NAMES = re.compile(r"[.*>/\\\s\x00-\x1f]")


_NOT_IN_SUBJECTS = re.compile(r"[\s\x00-\x1f]")


def check_subject(subject: str, what: str) -> None:
    """`ValueError` for a subject (or a name that goes in one) that NATS cannot carry: empty,
    or with a space or a control character (which would break the protocol's line)."""
    if not subject or _NOT_IN_SUBJECTS.search(subject):
        raise ValueError(f"{what} {subject!r} cannot be in a NATS subject: no spaces or control characters")


def consumer_names(topic: str, group: str, durable_name: str, queue_group: str) -> tuple[str, str]:
    """The durable name and the deliver group of the consumer of `topic`.

    daprd's `durableName` and `queueGroupName` when set. Without `durableName`: the durable
    `{consumerID}-{topic}` (characters a consumer name cannot hold made `_`), which the
    group's replicas share as its deliver group unless `queueGroupName` names another.
    With `durableName` alone, no deliver group, as daprd: one subscriber at a time.
    """
    if durable_name:
        return durable_name, queue_group
    durable = _NOT_IN_NAMES.sub("_", f"{group}-{topic}")
    return durable, queue_group or durable


def deliver_subject(stream: str, durable: str) -> str:
    """Where the server pushes a consumer made here: the same for every replica, so that two
    replicas creating the consumer at once create the same one (nats-server 2.9 lets the
    second one move an idle consumer to a subject of its own, which the first would miss).
    daprd's is a new inbox per subscription; a consumer daprd made keeps its own."""
    return f"_INBOX.dapr.{stream}.{durable}"


def message_id(data: bytes, decoded: Mapping[str, Any] | None) -> str:
    """The `Nats-Msg-Id` of a message: its CloudEvent's `id` when it is a non-empty string
    (daprd reads the body as JSON; so a raw payload that is such an object has one too)."""
    event: Any = decoded
    if event is None:
        if data.lstrip()[:1] != b"{":
            return ""
        try:
            event = json.loads(data)
        except ValueError:
            return ""
    if not isinstance(event, Mapping):
        return ""
    identifier = event.get("id")
    return identifier if isinstance(identifier, str) else ""


def publish_headers(
    data: bytes, metadata: Mapping[str, str], decoded: Mapping[str, Any] | None
) -> dict[str, str]:
    """The headers of a message published with `metadata`."""
    headers = {METADATA: json.dumps(dict(metadata), separators=(",", ":")) if metadata else "{}"}
    identifier = message_id(data, decoded)
    if identifier:
        if "\r" in identifier or "\n" in identifier:
            raise ValueError("the CloudEvent id holds a line break, which a NATS header cannot")
        headers[MSG_ID] = identifier
    return headers


def delivery_metadata(headers: Mapping[str, str] | None, subject: str) -> dict[str, str]:
    """The metadata a message is delivered with: what it was published with, by this
    component; daprd's `{"Topic": subject}` for a message without it."""
    raw = headers.get(METADATA) if headers else None
    if raw is None:
        return {"Topic": subject}
    if raw == "{}":
        return {}
    try:
        parsed = loads(raw)  # bounded in depth: the header is whatever the broker holds
    except ValueError:  # TooDeep included
        return {"Topic": subject}
    if not isinstance(parsed, dict):
        return {"Topic": subject}
    return {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in parsed.items()}


def stream_sequence(reply: str) -> tuple[str, int] | None:
    """The stream and the stream sequence of a message pushed by a consumer, from its reply
    subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
    or the newer form with a domain and an account hash first); None for anything else."""
    if not reply.startswith(ACK_PREFIX):
        return None
    tokens = reply.split(".")
    if len(tokens) == 9:
        stream, sequence = tokens[2], tokens[5]
    elif len(tokens) >= 11:
        stream, sequence = tokens[4], tokens[7]
    else:
        return None
    try:
        return stream, int(sequence)
    except ValueError:
        return None
