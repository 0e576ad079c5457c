"""The AsyncAPI 3.0 document of an app's events: the topics it subscribes to and the
ones it declares it publishes to (docs/asyncapi.md).

Built from what the app already says: the subscriptions (`TopicSubscription`, with
their handlers, routing rules, dead-letter topics, bulk and raw-payload settings), the
publishers (`Publisher`) and the handlers' pydantic types, whose JSON Schemas become
`components/schemas`. Each pub/sub component is a server (protocol `dapr`, its host the
component's name: a Dapr app reaches it by name through its own sidecar), each
pubsub and topic a channel whose address is the topic, each handler a `receive`
operation, each publisher and each dead-letter topic a `send` one. A message is the
CloudEvent daprd puts on the broker, its `data` the type's schema; a raw-payload
topic's message is the data alone. What AsyncAPI has no field for is in `x-dapr-*`
extensions. App side only: nothing here depends on the mode.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import TypeAdapter
from pydantic.errors import PydanticUserError

from ._handler import _split_signature
from ._publisher import Publisher
from ._subscription import RoutedHandler, TopicSubscription

__all__: list[str] = []  # internal: `Dapr.asyncapi()` is the public way in

ASYNCAPI_VERSION = "3.0.0"
CLOUDEVENTS_JSON = "application/cloudevents+json"
_SCHEMAS = "#/components/schemas/"

# The CloudEvent daprd wraps every message in (reference 1.4): the attributes of
# CloudEvents 1.0 and Dapr's additions; `data` is each message's own.
_ENVELOPE: dict[str, Any] = {
    "type": "object",
    "title": "CloudEvent",
    "description": "A CloudEvent 1.0 as Dapr publishes it; `data` is the message's data.",
    "required": ["id", "source", "specversion", "type"],
    "properties": {
        "id": {"type": "string"},
        "source": {"type": "string", "description": "The publishing app's id."},
        "specversion": {"type": "string", "const": "1.0"},
        "type": {"type": "string", "description": "com.dapr.event.sent unless the publisher set it."},
        "datacontenttype": {"type": "string"},
        "dataschema": {"type": "string"},
        "subject": {"type": "string"},
        "time": {"type": "string", "format": "date-time"},
        "data": {},
        "data_base64": {"type": "string", "description": "Binary data, base64-encoded, instead of data."},
        "topic": {"type": "string"},
        "pubsubname": {"type": "string"},
        "traceid": {"type": "string"},
        "traceparent": {"type": "string"},
        "tracestate": {"type": "string"},
        "expiration": {"type": "string", "description": "When the message expires (ttlInSeconds)."},
    },
}

# JSON Schema keywords whose values are schemas: a map of them, one, or a list of them.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_SCHEMA_ONE = frozenset(
    {"items", "additionalProperties", "additionalItems", "not", "contains", "propertyNames", "if", "then"}
    | {"else", "unevaluatedProperties", "unevaluatedItems"}
)
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_UNSAFE_KEY = re.compile(r"[^\w.\-]")


def asyncapi_schema(schema: Any) -> Any:
    """A JSON Schema of pydantic's (draft 2020-12) in AsyncAPI's Schema dialect, a
    superset of draft-07: a tuple's `prefixItems` become `items` (and its `items`
    `additionalItems`), an OpenAPI `discriminator` object its property name."""
    if isinstance(schema, list):
        return [asyncapi_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            result[key] = {name: asyncapi_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_ONE or key in _SCHEMA_LISTS:
            result[key] = asyncapi_schema(value)
        elif key == "discriminator" and isinstance(value, dict):
            if isinstance(value.get("propertyName"), str):
                result[key] = value["propertyName"]
        else:
            result[key] = value
    if "prefixItems" in result:
        rest = result.pop("items", None)
        result["items"] = result.pop("prefixItems")
        if rest is not None:
            result["additionalItems"] = rest
    return result


def _key(text: str) -> str:
    """`text` as a key of a components map (`^[\\w\\d.\\-_]+$`), also safe in a JSON pointer."""
    return _UNSAFE_KEY.sub("_", text) or "_"


def _unique(taken: Iterable[str], base: str) -> str:
    names = set(taken)
    candidate, n = base, 2
    while candidate in names:
        candidate, n = f"{base}_{n}", n + 1
    return candidate


def _label(tp: Any) -> str:
    """A short name for a type: `Order`, `list_Order`, `Order_or_Invoice`, `Any`."""
    if tp is Any or tp is object:
        return "Any"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _label(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return "_or_".join(_label(arg) for arg in args)
    if origin is typing.Literal:
        return "_".join(str(arg) for arg in args)
    if origin is not None:
        name = getattr(origin, "__name__", None) or str(origin)
        return "_".join([name, *(_label(arg) for arg in args)])
    return str(getattr(tp, "__name__", None) or tp)


def _data_type(routed: RoutedHandler) -> Any:
    """The type the handler takes its data as (`CloudEvent[T]`, `T`, `list[BulkEntry[T]]`: T)."""
    event, _ = _split_signature(routed.subscription.handler, routed.subscription.handler_name)
    args = event.model.__pydantic_generic_metadata__["args"]
    return args[0] if args else Any


def data_schemas(data_types: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Each type's JSON Schema, in AsyncAPI's dialect, and the definitions they refer to
    (`#/components/schemas/...`), one set for all of them (pydantic names each once).

    A type pydantic cannot describe gets a schema that says so instead of failing the
    whole document."""
    adapters = [TypeAdapter(tp) for tp in data_types]
    try:
        return _batch(adapters, range(len(adapters)))
    except PydanticUserError:
        describable = [i for i, adapter in enumerate(adapters) if _describable(adapter)]
        schemas, definitions = _batch(adapters, describable)
        for index in set(range(len(adapters))) - set(describable):
            schemas[index] = {"description": f"pydantic has no JSON Schema for {_label(data_types[index])}"}
        return schemas, definitions


def _describable(adapter: TypeAdapter[Any]) -> bool:
    try:
        adapter.json_schema()
    except PydanticUserError:
        return False
    return True


def _batch(adapters: Sequence[TypeAdapter[Any]], indexes: Iterable[int]) -> tuple[list[Any], dict[str, Any]]:
    mode: Literal["validation"] = "validation"  # what a handler accepts: the topic's contract
    chosen = [(index, mode, adapters[index]) for index in indexes]
    schemas: list[Any] = [{} for _ in adapters]
    if not chosen:
        return schemas, {}
    by_key, top = TypeAdapter.json_schemas(chosen, ref_template=_SCHEMAS + "{model}")
    for (index, _mode), schema in by_key.items():
        schemas[index] = asyncapi_schema(schema)
    definitions = {name: asyncapi_schema(schema) for name, schema in top.get("$defs", {}).items()}
    return schemas, definitions


def _doc_parts(handler: Any) -> tuple[str | None, str | None]:
    """A handler's docstring: its first paragraph (the summary) and the rest."""
    doc = inspect.getdoc(handler)
    if not doc:
        return None, None
    first, _, rest = doc.partition("\n\n")
    return first.replace("\n", " "), rest.strip() or None


class _Document:
    """The document under construction: its maps, filled in the app's order."""

    def __init__(self, data_types: Sequence[Any], schemas: list[Any], definitions: dict[str, Any]) -> None:
        self.data_types = data_types
        self.schemas = schemas
        self.definitions = definitions
        self.envelope = _unique(definitions, "CloudEvent")
        self.servers: dict[str, Any] = {}
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self._channel_keys: dict[tuple[str, str], str] = {}
        self._server_keys: dict[str, str] = {}
        self._message_keys: dict[str, str] = {}  # the message's JSON -> its key

    def server(self, pubsub: str) -> str:
        key = self._server_keys.get(pubsub)
        if key is None:
            key = self._server_keys[pubsub] = _unique(self.servers, _key(pubsub))
            self.servers[key] = {
                "host": pubsub,
                "protocol": "dapr",
                "title": pubsub,
                "description": (
                    f"The Dapr pub/sub component `{pubsub}`. A Dapr app reaches it by this name through "
                    f"its own sidecar: `POST /v1.0/publish/{pubsub}/{{topic}}` publishes to it."
                ),
                "x-dapr-pubsub": pubsub,
            }
        return key

    def channel(self, pubsub: str, topic: str) -> str:
        key = self._channel_keys.get((pubsub, topic))
        if key is None:
            key = self._channel_keys[(pubsub, topic)] = _unique(self.channels, _key(f"{pubsub}.{topic}"))
            self.channels[key] = {
                "address": topic,
                "title": f"{topic} on {pubsub}",
                "servers": [{"$ref": f"#/servers/{self.server(pubsub)}"}],
                "messages": {},
                "x-dapr-pubsub": pubsub,
            }
        return key

    def message(self, index: int, raw: bool) -> str:
        """The key in components/messages of the message of data type `index`."""
        tp, data = self.data_types[index], self.schemas[index]
        ref = data.get("$ref") if isinstance(data, dict) and len(data) == 1 else None
        label = ref.rsplit("/", 1)[1] if isinstance(ref, str) else _key(_label(tp))
        payload: Any
        if raw:
            if tp is bytes:
                content_type = "application/octet-stream"
            elif tp is str:
                content_type = "text/plain"
            else:
                content_type = "application/json"
            name, payload = f"{label}.raw", data
        else:
            content_type = CLOUDEVENTS_JSON
            envelope = {"$ref": _SCHEMAS + self.envelope}
            name = "CloudEvent" if label == "Any" else label
            if data == {}:
                payload = envelope
            else:
                payload = {"allOf": [envelope, {"type": "object", "properties": {"data": data}}]}
        message = {"name": name, "title": name, "contentType": content_type, "payload": payload}
        if raw:
            message["description"] = "The data alone, not wrapped in a CloudEvent (rawPayload)."
        identity = json.dumps(message, sort_keys=True)
        key = self._message_keys.get(identity)
        if key is None:
            key = self._message_keys[identity] = _unique(self.messages, _key(name))
            self.messages[key] = message
        return key

    def on_channel(self, channel: str, message: str) -> dict[str, str]:
        """The channel's reference to a message, added to its map when new."""
        self.channels[channel]["messages"][message] = {"$ref": f"#/components/messages/{message}"}
        return {"$ref": f"#/channels/{channel}/messages/{message}"}

    def operation(self, base: str, operation: dict[str, Any]) -> None:
        self.operations[_unique(self.operations, _key(base))] = operation


def _receive_description(sub: TopicSubscription, routed: RoutedHandler) -> str:
    handler = routed.subscription
    where = f"`{sub.topic}` on pub/sub `{sub.pubsub}`"
    if handler.match is not None:
        text = f"Receives the messages of {where} whose CloudEvent matches `{handler.match}`"
        if handler.priority is not None:
            text += f" (priority {handler.priority})"
    elif sub.rules:
        text = f"Receives the messages of {where} that no routing rule matches"
    else:
        text = f"Receives the messages of {where}"
    parts = [f"{text}, posted to `{routed.path}`."]
    if sub.bulk is not None:
        parts.append(
            f"Delivered in bulk: up to {sub.bulk.max_messages_count} messages or "
            f"{sub.bulk.max_await_duration_ms} ms a batch."
        )
    if sub.raw_payload:
        parts.append("Raw payload: the messages on the topic are the data alone, not CloudEvents.")
    if sub.dead_letter_topic is not None:
        parts.append(
            f"A message that is dropped or still fails when its retries are over goes to the "
            f"dead-letter topic `{sub.dead_letter_topic}`."
        )
    return " ".join(parts)


def _subscribe(doc: _Document, sub: TopicSubscription, indexes: Sequence[int]) -> None:
    channel = doc.channel(sub.pubsub, sub.topic)
    doc.channels[channel]["x-dapr-subscription"] = sub.to_wire()
    keys: list[str] = []
    for routed, index in zip(sub.handlers, indexes, strict=True):
        message = doc.message(index, sub.raw_payload)
        keys.append(message)
        handler = routed.subscription
        summary, docstring = _doc_parts(handler.handler)
        description = _receive_description(sub, routed)
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [doc.on_channel(channel, message)],
            "title": getattr(handler.handler, "__name__", handler.handler_name),
        }
        if summary is not None:
            operation["summary"] = summary
        operation["description"] = f"{docstring}\n\n{description}" if docstring else description
        operation["x-dapr-handler"] = handler.handler_name
        operation["x-dapr-route"] = routed.path
        if handler.match is not None:
            operation["x-dapr-match"] = handler.match
        if handler.priority is not None:
            operation["x-dapr-priority"] = handler.priority
        if sub.dead_letter_topic is not None:
            operation["x-dapr-dead-letter-topic"] = sub.dead_letter_topic
        doc.operation(getattr(handler.handler, "__name__", "receive"), operation)
    if sub.dead_letter_topic is not None:
        _dead_letters(doc, sub, channel, keys)


def _dead_letters(doc: _Document, sub: TopicSubscription, source: str, messages: Sequence[str]) -> None:
    assert sub.dead_letter_topic is not None
    channel = doc.channel(sub.pubsub, sub.dead_letter_topic)
    refs = [doc.on_channel(channel, message) for message in dict.fromkeys(messages)]
    doc.operation(
        f"{source}.deadLetter",
        {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": refs,
            "title": f"Dead letters of {sub.topic}",
            "description": (
                f"The app's Dapr sidecar publishes here, as they were, the messages of `{sub.topic}` "
                "that were dropped or still failed when their retries were over."
            ),
            "x-dapr-dead-letter-of": sub.topic,
        },
    )


def _publish(doc: _Document, publisher: Publisher[Any], index: int) -> None:
    channel = doc.channel(publisher.pubsub, publisher.topic)
    message = doc.message(index, publisher.raw_payload)
    operation: dict[str, Any] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [doc.on_channel(channel, message)],
        "title": f"Publishes {_label(publisher.schema)} to {publisher.topic}",
    }
    if publisher.description:
        operation["description"] = publisher.description
    if publisher.raw_payload:
        operation["x-dapr-raw-payload"] = True
    doc.operation(f"{channel}.publish", operation)


def check_asyncapi_url(url: str) -> str:
    """`url` if the app may serve the AsyncAPI document or page there: a path outside
    what daprd and the embedded sidecar answer (`/v1.0/...`, `/dapr/...`, `/metrics`)."""
    if not isinstance(url, str) or not url.startswith("/"):
        raise ValueError(f"asyncapi_url and asyncapi_docs_url must be paths starting with '/', not {url!r}")
    first = url[1:].split("/", 1)[0]
    if first.startswith("v1.") or first == "dapr" or url.rstrip("/") == "/metrics":
        raise ValueError(f"{url!r} is a path of Dapr's own API: serve the AsyncAPI document elsewhere")
    return url


def build_document(
    *,
    title: str,
    version: str,
    description: str | None,
    app_id: str,
    subscriptions: Sequence[TopicSubscription],
    publishers: Sequence[Publisher[Any]],
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of these subscriptions and publishers."""
    data_types: list[Any] = []
    handler_indexes: list[list[int]] = []
    for sub in subscriptions:
        handler_indexes.append([len(data_types) + n for n in range(len(sub.handlers))])
        data_types.extend(_data_type(routed) for routed in sub.handlers)
    publisher_indexes = [len(data_types) + n for n in range(len(publishers))]
    data_types.extend(publisher.schema for publisher in publishers)

    schemas, definitions = data_schemas(data_types)
    doc = _Document(data_types, schemas, definitions)
    for sub, indexes in zip(subscriptions, handler_indexes, strict=True):
        _subscribe(doc, sub, indexes)
    for publisher, index in zip(publishers, publisher_indexes, strict=True):
        _publish(doc, publisher, index)

    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "defaultContentType": CLOUDEVENTS_JSON,
        "servers": doc.servers,
        "channels": doc.channels,
        "operations": doc.operations,
        "components": {
            "schemas": {**definitions, doc.envelope: _ENVELOPE},
            "messages": doc.messages,
        },
        "x-dapr-app-id": app_id,
    }
