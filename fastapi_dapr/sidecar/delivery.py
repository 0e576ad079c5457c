"""What the delivery engine speaks of: a subscription as it runs, one POST and one message's end.

`Route` is a subscription as the engine runs it; `Attempt` is one POST to the
app, `DeliveryReport` what became of one message (both public in
`fastapi_dapr.testing`); `clean_path` and `message_headers` are the path and
the headers daprd posts a message with (reference 3.2). engine.py tells how
the modules of the engine fit together.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from typing import Literal

from .._go import path_clean
from .._headers import BAD_VALUE_RE, NAMES_RE, TOKEN_RE, not_passed_on
from .._status import Status
from .._subscription import BulkSubscribe, is_raw
from .cel import Rules

__all__: list[str] = []  # Attempt and DeliveryReport are public in fastapi_dapr.testing

logger = logging.getLogger("fastapi_dapr")

ZERO_TRACEPARENT = "00-00000000000000000000000000000000-0000000000000000-00"

Outcome = Literal[
    "delivered", "dropped", "dead-lettered", "expired", "unmatched", "invalid", "failed", "returned"
]


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One POST to the app: the status it meant, and why."""

    status: Status | None  # None: an error daprd retries like RETRY
    """The status the answer meant; None: an error (retried as RETRY is)."""
    http_status: int | None = None
    """The answer's HTTP status; None when there was no answer."""
    detail: str = ""
    """Why, in words: the exception, the status's meaning."""


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """What became of one message on one subscription."""

    pubsub: str
    """The pub/sub component."""
    topic: str
    """The subscription's topic."""
    message_id: str
    """The broker's id of the message."""
    event_id: str | None
    """The CloudEvent's `id`; None when the message was not one."""
    path: str | None
    """The app's path it was posted to; None when it was posted nowhere."""
    outcome: Outcome
    """What became of it: `delivered` (SUCCESS), `dropped` (DROP, no dead-letter
    topic), `dead-lettered`, `expired` (its TTL passed), `unmatched` (no rule and no
    default route), `invalid` (not a message the subscription can read), `failed`
    (retries exhausted, or the dead-letter publish failed), `returned` (given back to
    the broker: the app stopped first)."""
    attempts: tuple[Attempt, ...] = ()
    """Every POST to the app, in order."""
    reason: str = ""
    """Why it ended so, in words."""
    detail: str = ""  # more on the reason: the validation errors of data that failed validation
    """More on the reason: the validation errors of data that failed validation."""

    @property
    def status(self) -> Status | None:
        """The status of the last attempt, if the app was called."""
        return self.attempts[-1].status if self.attempts else None


@dataclasses.dataclass(frozen=True)
class Route:
    """A subscription as the engine runs it."""

    pubsub: str
    topic: str
    rules: Rules
    dead_letter_topic: str | None
    bulk: BulkSubscribe | None
    kind: Literal["PROGRAMMATIC", "DECLARATIVE", "STREAMING"]
    metadata: Mapping[str, str]

    @functools.cached_property
    def raw_payload(self) -> bool:
        """From the subscription's metadata, as daprd reads it (reference 3.1 step 3)."""
        return is_raw(self.metadata)

    def describe(self) -> str:
        return f"pubsub={self.pubsub!r} topic={self.topic!r}"


@functools.lru_cache(maxsize=1024)
def clean_path(path: str) -> str:
    """daprd posts to `path.Clean(path)` with a leading `/` (reference 3.2)."""
    return path_clean("/" + path)


# Names a delivery's POST sets itself: the body's framing, the trace (re-derived), and the
# request's own target (Go's HTTP client takes no `Host` header from daprd's metadata either).
_NOT_FROM_METADATA = frozenset(
    {"content-type", "content-length", "traceparent", "tracestate", "host", "expect"}
)
_WARNED_LIMIT = 256  # metadata names warned about once each, at most this many
_warned: set[str] = set()


def message_headers(metadata: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Message metadata as delivery headers (reference 3.2).

    An entry that cannot be an HTTP header (its name not a token, its value with CR, LF, NUL
    or another control character but HTAB) is left out, with a warning the first time its
    name is seen: a publish through the API refuses such metadata, but another client may
    write it to the broker. daprd's HTTP client refuses the whole request, so such a message
    fails every attempt."""
    headers = []
    dropped = not_passed_on(())  # metadata names no connection: only the hop-by-hop names
    # One match over all the names and one search over all the values, as the client's
    # `request_head` checks them; entry by entry only when one of them fails.
    names = "\n".join(metadata)
    suspect = not (NAMES_RE.fullmatch(names) and names.count("\n") == len(metadata) - 1)
    suspect = suspect or BAD_VALUE_RE.search("\t".join(metadata.values())) is not None
    for key, value in metadata.items():
        name = key.lower()
        if name in _NOT_FROM_METADATA or name.endswith("-bin") or name in dropped:
            continue
        if suspect and (not TOKEN_RE.fullmatch(name) or BAD_VALUE_RE.search(value)):
            if key not in _warned and len(_warned) < _WARNED_LIMIT:
                _warned.add(key)
                logger.warning(
                    "the message metadata %r cannot be an HTTP header: left out of the delivery's headers",
                    key[:80],
                )
            continue
        if name.startswith("grpc-"):
            name = "dapr-" + name
        headers.append((name.encode(), value.encode()))
    return headers
