"""Pub/sub topic scopes from a component's metadata (reference 4.1, 4.2).

The values are read as daprd reads them:

- the four names (`publishingScopes`, `subscriptionScopes`, `allowedTopics`,
  `protectedTopics`) are matched case-insensitively;
- a value that is empty as written is no setting at all;
- otherwise spaces are removed (here tabs and line breaks too: see
  docs/differences.md), then `;` separates apps, `=` an app from its topics
  (what follows a second `=` is ignored) and `,` the topics. An app given twice
  gets both lists; `app1=` gives app1 the single topic `""`, so no topic at all;
  an entry without `=` is ignored.

Where daprd picks one of two names that differ only in case at random, this
refuses the component (docs/differences.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__: list[str] = []

PUBLISHING_SCOPES = "publishingScopes"
SUBSCRIPTION_SCOPES = "subscriptionScopes"
ALLOWED_TOPICS = "allowedTopics"
PROTECTED_TOPICS = "protectedTopics"

# daprd removes the space only; a value written as a YAML block (`|`) also has line
# breaks, which would silently lose the app or topic that follows them.
_NO_WHITESPACE = str.maketrans("", "", " \t\r\n")


def _value(metadata: Mapping[str, str], name: str) -> str | None:
    """The value of `name` with its whitespace removed; None when it is absent or empty."""
    found = [key for key in metadata if key.lower() == name.lower()]
    if len(found) > 1:
        spelled = " and ".join(repr(key) for key in sorted(found))
        raise ValueError(
            f"{name} is given more than once ({spelled}): metadata names are matched case-insensitively"
        )
    if not found or metadata[found[0]] == "":
        # Empty as written: no setting. A value of only spaces is not empty (daprd
        # checks before it removes them): `allowedTopics: " "` allows no topic.
        return None
    return metadata[found[0]].translate(_NO_WHITESPACE)


def _topics(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(text.split(",")))


def _app_topics(text: str, app_id: str) -> tuple[str, ...]:
    """`app_id`'s topics in `app1=t1,t2;app2=t3`; empty when it is not listed."""
    topics: list[str] = []
    for entry in text.split(";"):
        parts = entry.split("=")
        if len(parts) >= 2 and parts[0] == app_id:  # app ids are matched exactly
            topics.extend(parts[1].split(","))
    return tuple(dict.fromkeys(topics))


@dataclasses.dataclass(frozen=True)
class TopicScopes:
    """What one app may publish and subscribe to on one component."""

    publishing: tuple[str, ...] = ()  # this app's list; empty when the app is not listed
    subscribing: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()  # empty: every topic
    protected: tuple[str, ...] = ()

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], app_id: str) -> TopicScopes:
        """The scopes of `app_id`; `ValueError` when a name is given twice in two cases."""
        publishing = _value(metadata, PUBLISHING_SCOPES)
        subscribing = _value(metadata, SUBSCRIPTION_SCOPES)
        allowed = _value(metadata, ALLOWED_TOPICS)
        protected = _value(metadata, PROTECTED_TOPICS)
        return cls(
            publishing=() if publishing is None else _app_topics(publishing, app_id),
            subscribing=() if subscribing is None else _app_topics(subscribing, app_id),
            allowed=() if allowed is None else _topics(allowed),
            protected=() if protected is None else _topics(protected),
        )

    def _allows(self, topic: str, scoped: tuple[str, ...]) -> bool:
        # daprd's IsOperationAllowed (reference 4.2); topics are matched exactly.
        if self.allowed and topic not in self.allowed:
            return False  # allowedTopics binds every app, even one that lists the topic
        if topic not in self.protected and not scoped:
            return True  # an app not listed may use any topic that is not protected
        return topic in scoped  # a listed app only its topics; a protected one needs a grant

    def may_publish(self, topic: str) -> bool:
        return self._allows(topic, self.publishing)

    def may_subscribe(self, topic: str) -> bool:
        return self._allows(topic, self.subscribing)
