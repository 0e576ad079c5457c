"""`Publisher`: a topic the app publishes to, declared with its data's type.

Subscriptions are known from their handlers; what an app publishes is not, since
`Dapr.publish` takes any topic and any data. `Dapr.publisher(pubsub, topic, Model)`
says it once: the AsyncAPI document lists it (`_asyncapi.py`), and the publisher's
`publish()` takes only that type, as far as a type checker sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import TypeAdapter
from pydantic.errors import PydanticSchemaGenerationError

if TYPE_CHECKING:
    from ._dapr import Dapr
    from ._publishing import BulkPublishEntry, FailedEntry

__all__ = ["Publisher"]

T = TypeVar("T")


def check_schema(pubsub: str, topic: str, schema: Any) -> None:
    """Refuse, when it is declared, a publisher whose type pydantic cannot describe."""
    if not pubsub or not topic:
        raise ValueError("a publisher's pubsub and topic must be non-empty strings")
    try:
        TypeAdapter(schema)
    except PydanticSchemaGenerationError as exc:
        raise TypeError(
            f"publisher of pubsub={pubsub!r} topic={topic!r}: pydantic has no schema for {schema!r}: "
            "give a pydantic model or another type pydantic validates"
        ) from exc


@dataclasses.dataclass(frozen=True, eq=False)
class Publisher(Generic[T]):
    """A topic the app publishes to, made by `Dapr.publisher(pubsub, topic, schema)`.

    `publish(data)` publishes as `Dapr.publish(pubsub, topic, data)` does. The
    AsyncAPI document (`Dapr.asyncapi()`) lists each publisher as a send operation
    whose message is a CloudEvent with `schema`'s JSON Schema as its data; with
    `raw_payload=True` the message is the data alone, published with daprd's
    `rawPayload` metadata.
    """

    pubsub: str
    """The pub/sub component's name."""
    topic: str
    """The topic published to."""
    schema: Any  # type[T], or any type pydantic describes
    """The data's type: a pydantic model, or any type pydantic describes."""
    description: str | None = None
    """The send operation's description in the AsyncAPI document."""
    raw_payload: bool = False
    """Publish the data without a CloudEvent around it (daprd's `rawPayload`)."""
    dapr: Dapr | None = dataclasses.field(default=None, repr=False)
    """The `Dapr` instance that publishes."""

    def _metadata(self, metadata: Mapping[str, str] | None) -> Mapping[str, str] | None:
        if not self.raw_payload:
            return metadata
        given = dict(metadata or {})
        if given.get("rawPayload", "true").lower() != "true":
            raise ValueError(
                f"the publisher of {self.topic!r} is raw_payload=True: metadata rawPayload="
                f"{given['rawPayload']!r} contradicts it"
            )
        return {**given, "rawPayload": "true"}

    def _owner(self) -> Dapr:
        if self.dapr is None:
            raise RuntimeError("this Publisher belongs to no Dapr instance: make it with dapr.publisher()")
        return self.dapr

    async def publish(
        self,
        data: T,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Publish `data` to the publisher's topic, as `Dapr.publish` does."""
        await self._owner().publish(
            self.pubsub, self.topic, data, content_type=content_type, metadata=self._metadata(metadata)
        )

    async def publish_bulk(
        self,
        entries: Iterable[T | BulkPublishEntry],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> list[FailedEntry]:
        """Publish many messages to the publisher's topic, as `Dapr.publish_bulk` does."""
        return await self._owner().publish_bulk(
            self.pubsub, self.topic, entries, metadata=self._metadata(metadata)
        )
