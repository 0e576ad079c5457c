"""Requests built exactly as daprd sends them to an app (reference sections 1.4, 3.1, 3.2, 3.6).

Kept separate from the package on purpose: these are the tests' independent
reading of daprd's wire format, not the code under test.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

ZERO_TRACEPARENT = "00-00000000000000000000000000000000-0000000000000000-00"


def go_json(value: Any) -> bytes:
    """`json.Marshal` of a Go map: sorted keys, compact, `<>&` escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def envelope(
    data: Any,
    *,
    content_type: str = "application/json",
    topic: str = "orders",
    pubsub: str = "pubsub",
    source: str = "checkout",
    traceparent: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """The CloudEvent daprd builds for a publish of `data` (reference 1.4, case B)."""
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "specversion": "1.0",
        "datacontenttype": content_type,
        "source": source,
        "type": "com.dapr.event.sent",
        "topic": topic,
        "pubsubname": pubsub,
        "traceid": traceparent,
        "traceparent": traceparent,
        "tracestate": "",
        "time": "2026-08-21T12:00:00Z",
    }
    if isinstance(data, bytes):
        event["data_base64"] = base64.b64encode(data).decode()
    else:
        event["data"] = data
    event.update(extra)
    return event


def raw_envelope(payload: bytes, *, topic: str = "orders", pubsub: str = "pubsub") -> dict[str, Any]:
    """What daprd posts for a `rawPayload` subscription (reference 3.1, step 4)."""
    return {
        "id": str(uuid.uuid4()),
        "specversion": "1.0",
        "datacontenttype": "application/octet-stream",
        "source": "Dapr",
        "type": "com.dapr.event.sent",
        "topic": topic,
        "pubsubname": pubsub,
        "data_base64": base64.b64encode(payload).decode(),
    }


def delivery_headers(
    *,
    pubsub: str = "pubsub",
    metadata: dict[str, str] | None = None,
    traceparent: str = ZERO_TRACEPARENT,
    token: str | None = None,
) -> dict[str, str]:
    """The headers of a delivery POST (reference 3.2)."""
    headers = {
        "content-type": "application/cloudevents+json",
        "user-agent": "Go-http-client/1.1",
        "accept-encoding": "gzip",
        "pubsubname": pubsub,
        "traceparent": traceparent,
    }
    for key, value in (metadata or {}).items():
        headers[key.lower()] = value
    if token is not None:
        headers["dapr-api-token"] = token
    return headers


def bulk_body(
    events: list[tuple[str, Any]],
    *,
    topic: str = "orders",
    pubsub: str = "pubsub",
    content_type: str = "application/cloudevents+json",
) -> bytes:
    """A bulk delivery (reference 3.6): `events` is a list of (entryId, event)."""
    return go_json(
        {
            "id": str(uuid.uuid4()),
            "type": "com.dapr.event.sent.bulk",
            "topic": topic,
            "pubsubname": pubsub,
            "metadata": {"pubsubName": pubsub},
            "entries": [
                {
                    "entryId": entry_id,
                    "event": event,
                    "metadata": {"pubsubName": pubsub},
                    "contentType": content_type,
                }
                for entry_id, event in events
            ],
        }
    )
