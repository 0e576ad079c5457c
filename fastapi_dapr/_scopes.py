"""Pub/sub topic scopes from a component's metadata (reference 4.1, 4.2)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__: list[str] = []


def _topics(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


def _per_app(text: str) -> dict[str, tuple[str, ...]]:
    """`app1=t1,t2;app2=t3`: `app1=` alone gives the list `[""]`, so no topic at all."""
    scopes: dict[str, tuple[str, ...]] = {}
    for part in text.split(";"):
        app, equals, topics = part.partition("=")
        if equals:
            scopes[app] = _topics(topics)
    return scopes


@dataclasses.dataclass(frozen=True)
class TopicScopes:
    """What one app may publish and subscribe to on one component."""

    publishing: tuple[str, ...] = ()  # this app's list; empty when the app is not listed
    subscribing: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], app_id: str) -> TopicScopes:
        # Names are matched case-insensitively and spaces removed from values, as daprd does.
        values = {key.lower(): "".join(value.split()) for key, value in metadata.items()}
        return cls(
            publishing=_per_app(values.get("publishingscopes", "")).get(app_id, ()),
            subscribing=_per_app(values.get("subscriptionscopes", "")).get(app_id, ()),
            allowed=_topics(values["allowedtopics"]) if values.get("allowedtopics") else (),
            protected=_topics(values["protectedtopics"]) if values.get("protectedtopics") else (),
        )

    def _allows(self, topic: str, scoped: tuple[str, ...]) -> bool:
        # daprd's IsOperationAllowed (reference 4.2).
        if self.allowed and topic not in self.allowed:
            return False
        if topic not in self.protected and not scoped:
            return True
        return topic in scoped

    def may_publish(self, topic: str) -> bool:
        return self._allows(topic, self.publishing)

    def may_subscribe(self, topic: str) -> bool:
        return self._allows(topic, self.subscribing)
