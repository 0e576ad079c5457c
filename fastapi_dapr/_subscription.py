"""Subscriptions: what one decorator registers, and what `/dapr/subscribe` advertises.

One `Subscription` is one handler. Handlers of the same pubsub and topic are
merged into one `TopicSubscription`, whose `to_wire()` is daprd's JSON
(reference 2.1); camelCase appears only there.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ._exceptions import SubscriptionError
from ._match import check_match

__all__ = ["BulkSubscribe", "TopicSubscription"]


@dataclasses.dataclass(frozen=True)
class BulkSubscribe:
    """Bulk delivery settings (daprd's `bulkSubscribe`), with daprd's defaults."""

    max_messages_count: int = 100
    """The most messages in one batch."""
    max_await_duration_ms: int = 1000
    """How long a batch waits to fill up, in milliseconds."""

    def __post_init__(self) -> None:
        if self.max_messages_count < 1 or self.max_await_duration_ms < 1:
            raise ValueError("bulk max_messages_count and max_await_duration_ms must be positive")


def _handler_name(handler: Callable[..., Any]) -> str:
    module = getattr(handler, "__module__", None) or "?"
    qualname = getattr(handler, "__qualname__", None) or repr(handler)
    return f"{module}.{qualname}"


def _wire_metadata(
    handler: Callable[..., Any], metadata: Mapping[str, Any] | None, raw_payload: bool
) -> Mapping[str, str]:
    # daprd decodes `metadata` as map[string]string: one non-string value and
    # the whole /dapr/subscribe answer is rejected (reference 2.1).
    result: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if isinstance(value, bool):
            result[key] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            result[key] = str(value)
        else:
            raise SubscriptionError(
                f"{_handler_name(handler)}: metadata {key!r} must be a string, "
                f"a number or a bool, not {type(value).__name__}"
            )
    if raw_payload:
        if result.get("rawPayload", "true").lower() != "true":
            raise SubscriptionError(
                f"{_handler_name(handler)}: raw_payload=True contradicts metadata rawPayload="
                f"{result['rawPayload']!r}"
            )
        result["rawPayload"] = "true"
    return MappingProxyType(result)


@dataclasses.dataclass(frozen=True)
class Subscription:
    """One handler's registration, as given to `subscribe()`."""

    pubsub: str
    topic: str
    route: str
    handler: Callable[..., Any]
    match: str | None = None
    priority: int | None = None
    dead_letter_topic: str | None = None
    metadata: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    raw_payload: bool = False
    bulk: BulkSubscribe | None = None

    @classmethod
    def create(
        cls,
        handler: Callable[..., Any],
        pubsub: str,
        topic: str,
        *,
        route: str | None,
        match: str | None,
        priority: int | None,
        dead_letter_topic: str | None,
        metadata: Mapping[str, Any] | None,
        raw_payload: bool,
        bulk: BulkSubscribe | bool | None,
    ) -> Subscription:
        name = _handler_name(handler)
        if not pubsub or not topic:
            raise SubscriptionError(f"{name}: pubsub and topic must be non-empty strings")
        if match is not None:
            check_match(match, f"{name} (pubsub {pubsub!r}, topic {topic!r})")
        elif priority is not None:
            raise SubscriptionError(f"{name}: priority only orders handlers that have a match")
        if dead_letter_topic is not None and not dead_letter_topic:
            raise SubscriptionError(f"{name}: dead_letter_topic must not be empty")
        if bulk is True:
            bulk = BulkSubscribe()
        elif bulk is False:
            bulk = None
        if route is None:
            route = default_route(pubsub, topic)
        elif not route.startswith("/"):
            route = "/" + route
        return cls(
            pubsub=pubsub,
            topic=topic,
            route=route,
            handler=handler,
            match=match,
            priority=priority,
            dead_letter_topic=dead_letter_topic,
            metadata=_wire_metadata(handler, metadata, raw_payload),
            raw_payload=raw_payload,
            bulk=bulk,
        )

    @property
    def handler_name(self) -> str:
        return _handler_name(self.handler)

    @property
    def key(self) -> tuple[str, str, str | None]:
        """Two handlers with the same key could never both be reached."""
        return (self.pubsub, self.topic, self.match)

    def describe(self) -> str:
        where = f"pubsub={self.pubsub!r} topic={self.topic!r}"
        if self.match is not None:
            where += f" match={self.match!r}"
        return where


def is_raw(metadata: Mapping[str, str]) -> bool:
    """A subscription's `rawPayload`, read with Go's `ParseBool` (reference 3.1 step 3)."""
    return metadata.get("rawPayload", "") in ("1", "t", "T", "TRUE", "true", "True")


_UNSAFE_PATH_CHARS = re.compile(r"[^A-Za-z0-9._~!$&'()*+,;=:@/-]")


def default_route(pubsub: str, topic: str) -> str:
    """`/events/{pubsub}/{topic}`, as dapr-ext-fastapi users have it today.

    Characters that a route path cannot hold literally (`{`, `}`, `%`, `?`,
    `#`, spaces) become `_`, so the path matches itself when daprd posts to it.
    """
    return "/events/" + _UNSAFE_PATH_CHARS.sub("_", f"{pubsub}/{topic}")


@dataclasses.dataclass(frozen=True)
class RoutedHandler:
    """A registered handler and the path it is served at, prefixes applied."""

    subscription: Subscription
    path: str


@dataclasses.dataclass(frozen=True)
class TopicSubscription:
    """Every handler of one pubsub and topic, merged into daprd's one subscription."""

    pubsub: str
    """The pub/sub component's name."""
    topic: str
    """The topic."""
    rules: tuple[tuple[str, str], ...]  # (match, path), in evaluation order
    """The `(match, path)` routing rules, in the order they are tried."""
    default: str | None
    """The path of the messages no rule matches; None: such messages are dropped."""
    dead_letter_topic: str | None
    """Where dropped and exhausted messages go."""
    metadata: Mapping[str, str]
    """The subscription's metadata, as daprd gets it."""
    bulk: BulkSubscribe | None
    """The bulk delivery settings; None: one message per delivery."""
    handlers: tuple[RoutedHandler, ...]
    """The handlers merged into it."""

    @property
    def raw_payload(self) -> bool:
        """Whether the messages arrive as raw payloads (`rawPayload` in the metadata)."""
        return is_raw(self.metadata)

    def to_wire(self) -> dict[str, Any]:
        """This subscription as an item of daprd's `GET /dapr/subscribe` answer."""
        item: dict[str, Any] = {"pubsubname": self.pubsub, "topic": self.topic}
        if self.rules:
            routes: dict[str, Any] = {"rules": [{"match": match, "path": path} for match, path in self.rules]}
            if self.default is not None:
                routes["default"] = self.default
            item["routes"] = routes
        elif self.default is not None:
            item["route"] = self.default
        if self.dead_letter_topic is not None:
            item["deadLetterTopic"] = self.dead_letter_topic
        if self.metadata:
            item["metadata"] = dict(self.metadata)
        if self.bulk is not None:
            item["bulkSubscribe"] = {
                "enabled": True,
                "maxMessagesCount": self.bulk.max_messages_count,
                "maxAwaitDurationMs": self.bulk.max_await_duration_ms,
            }
        return item


def _agree(handlers: Sequence[RoutedHandler], field: str, default: Any) -> Any:
    """The one value of an option that all handlers of a topic must share."""
    chosen: RoutedHandler | None = None
    for routed in handlers:
        value = getattr(routed.subscription, field)
        if value == default:
            continue
        if chosen is None:
            chosen = routed
        elif getattr(chosen.subscription, field) != value:
            first = chosen.subscription
            raise SubscriptionError(
                f"{first.handler_name} and {routed.subscription.handler_name} subscribe to "
                f"pubsub={first.pubsub!r} topic={first.topic!r} with different {field} "
                f"({getattr(first, field)!r} and {value!r}); daprd keeps one per topic"
            )
    return default if chosen is None else getattr(chosen.subscription, field)


def merge_subscriptions(handlers: Iterable[RoutedHandler]) -> list[TopicSubscription]:
    """Group handlers by pubsub and topic, in registration order.

    Raises `SubscriptionError` naming both handlers when two share pubsub,
    topic and match, share one path, or disagree on a per-topic option.
    """
    groups: dict[tuple[str, str], list[RoutedHandler]] = {}
    seen: dict[tuple[str, str, str | None], RoutedHandler] = {}
    paths: dict[str, RoutedHandler] = {}
    for routed in handlers:
        sub = routed.subscription
        other = seen.get(sub.key)
        if other is not None:
            raise SubscriptionError(
                f"duplicate subscription ({sub.describe()}): {other.subscription.handler_name} "
                f"at {other.path} and {sub.handler_name} at {routed.path}; "
                "only one of them could ever be reached"
            )
        seen[sub.key] = routed
        owner = paths.get(routed.path)
        if owner is not None and owner.subscription.handler is not sub.handler:
            raise SubscriptionError(
                f"{owner.subscription.handler_name} ({owner.subscription.describe()}) and "
                f"{sub.handler_name} ({sub.describe()}) are both served at {routed.path}; "
                "only the first could ever be reached: give one of them another route"
            )
        paths[routed.path] = routed
        groups.setdefault((sub.pubsub, sub.topic), []).append(routed)

    result = []
    for (pubsub, topic), members in groups.items():
        matched = [(index, r) for index, r in enumerate(members) if r.subscription.match is not None]
        # Lower priority first; without a priority, after those, in registration order.
        matched.sort(
            key=lambda pair: (
                pair[1].subscription.priority is None,
                pair[1].subscription.priority or 0,
                pair[0],
            )
        )
        defaults = [r.path for r in members if r.subscription.match is None]
        result.append(
            TopicSubscription(
                pubsub=pubsub,
                topic=topic,
                rules=tuple((r.subscription.match or "", r.path) for _, r in matched),
                default=defaults[0] if defaults else None,
                dead_letter_topic=_agree(members, "dead_letter_topic", None),
                metadata=_agree(members, "metadata", MappingProxyType({})),
                bulk=_agree(members, "bulk", None),
                handlers=tuple(members),
            )
        )
    return result


# -- reading an app's `GET /dapr/subscribe` answer (the standalone sidecar's side) --


def _lower_keys(item: Mapping[str, Any]) -> dict[str, Any]:
    # Go's encoding/json matches field names case-insensitively (reference 2.1).
    return {str(key).lower(): value for key, value in item.items()}


def _wire_string(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SubscriptionError(f"{where}.{key}: must be a string, not {type(value).__name__}")
    return value


def _wire_int(item: Mapping[str, Any], key: str, where: str) -> int:
    # Go decodes an int32: a JSON integer in its range (100.0 and 1e2 are refused), null is 0.
    value = item.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise SubscriptionError(f"{where}.{key}: must be an integer (int32), not {value!r}")
    return value


def _wire_bulk(raw: Any, where: str) -> BulkSubscribe | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SubscriptionError(f"{where}: must be an object")
    bulk = _lower_keys(raw)
    enabled = bulk.get("enabled", False)
    if not isinstance(enabled, bool):
        raise SubscriptionError(f"{where}.enabled: must be true or false, not {enabled!r}")
    if not enabled:
        return None
    # daprd's bulk subscriber takes 0 or less as its default (GetIntValOrDefault).
    count = _wire_int(bulk, "maxmessagescount", where)
    wait = _wire_int(bulk, "maxawaitdurationms", where)
    count = count if count > 0 else 100
    wait = wait if wait > 0 else 1000
    try:
        return BulkSubscribe(max_messages_count=count, max_await_duration_ms=wait)
    except ValueError as exc:
        raise SubscriptionError(f"{where}: {exc}") from None


def _wire_item(raw: Any, index: int) -> TopicSubscription | None:
    where = f"item {index}"
    if not isinstance(raw, dict):
        raise SubscriptionError(f"{where}: must be an object, not {type(raw).__name__}")
    item = _lower_keys(raw)
    metadata = item.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise SubscriptionError(f"{where}.metadata: must be an object of strings")
    for key, value in metadata.items():
        if not isinstance(value, str):
            # daprd decodes map[string]string: one such value fails the whole list.
            raise SubscriptionError(f"{where}.metadata.{key}: must be a string, not {value!r}")
    routes = item.get("routes") or {}
    if not isinstance(routes, dict):
        raise SubscriptionError(f"{where}.routes: must be an object with rules and default")
    routes = _lower_keys(routes)
    raw_rules = routes.get("rules") or []
    if not isinstance(raw_rules, list):
        raise SubscriptionError(f"{where}.routes.rules: must be a list")
    pubsub = _wire_string(item, "pubsubname", where)
    topic = _wire_string(item, "topic", where)
    rules: list[tuple[str, str]] = []
    for number, raw_rule in enumerate(raw_rules):
        field = f"{where}.routes.rules[{number}]"
        if not isinstance(raw_rule, dict):
            raise SubscriptionError(f"{field}: must be an object with match and path")
        rule = _lower_keys(raw_rule)
        match = _wire_string(rule, "match", field)
        # A rule that cannot work fails the whole list, as one that does not compile does in daprd.
        check_match(match, f"{field} (pubsub {pubsub!r}, topic {topic!r})")
        rules.append((match, _wire_string(rule, "path", field)))
    # One default: routes.default, else route (reference 2.1).
    default = _wire_string(routes, "default", f"{where}.routes") or _wire_string(item, "route", where) or None
    dead_letter = _wire_string(item, "deadlettertopic", where) or None
    bulk = _wire_bulk(item.get("bulksubscribe"), f"{where}.bulkSubscribe")
    if not rules and default is None:
        return None  # daprd removes it with a warning
    return TopicSubscription(
        pubsub=pubsub,
        topic=topic,
        rules=tuple(rules),
        default=default,
        dead_letter_topic=dead_letter,
        metadata=MappingProxyType(dict(metadata)),
        bulk=bulk,
        handlers=(),
    )


def parse_subscribe_answer(body: bytes) -> tuple[list[TopicSubscription], list[str]]:
    """The subscriptions of an app's `GET /dapr/subscribe` body (status 200), read as
    daprd reads them (reference 2.1), and the warnings about items left out.

    Raises `SubscriptionError` when daprd would refuse the whole list: not JSON,
    not a list, a non-string metadata value, a routing rule that does not compile.
    """
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        return [], []  # an empty body: no subscriptions
    try:
        # As Go's json.Decoder: the first JSON value; what follows it is not read.
        data, _ = json.JSONDecoder().raw_decode(text)
    except ValueError as exc:
        raise SubscriptionError(f"the answer is not JSON: {exc}") from None
    if data is None:
        return [], []
    if not isinstance(data, list):
        raise SubscriptionError(f"the answer must be a JSON list of subscriptions, not {type(data).__name__}")
    result: list[TopicSubscription] = []
    warnings: list[str] = []
    seen: dict[tuple[str, str], tuple[int, int]] = {}  # -> (its item, its place in `result`)
    for index, raw in enumerate(data):
        subscription = _wire_item(raw, index)
        if subscription is None:
            warnings.append(f"item {index}: no route and no routing rule: left out")
            continue
        if not subscription.pubsub or not subscription.topic:
            warnings.append(f"item {index}: pubsubname and topic are required: left out")
            continue
        key = (subscription.pubsub, subscription.topic)
        if key in seen:
            # daprd keeps the last one (compstore's ListSubscriptionsAppByPubSub), in the first's place.
            first, place = seen[key]
            warnings.append(
                f"item {index}: a second subscription to pubsub {key[0]!r} topic {key[1]!r}: "
                f"replaces item {first}"
            )
            result[place] = subscription
            seen[key] = (index, place)
            continue
        seen[key] = (index, len(result))
        result.append(subscription)
    return result, warnings
