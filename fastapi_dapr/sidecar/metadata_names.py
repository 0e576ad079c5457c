"""The metadata names of a component, checked against the names its type knows.

daprd decodes a component's metadata into the component's settings by name,
matching names without regard to case, and ignores a name that matches nothing:
`redisHots: localhost:6379` is silently dropped, and the component then fails on
the missing `redisHost` or, worse, runs on a default. Here a name that differs
from a known one only in case is read as that one (as daprd reads it), and any
other unknown name is named in a warning at start-up, with the nearest known
name; when the component then refuses its metadata, the refusal says it too.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping

__all__ = ["MetadataNames"]

logger = logging.getLogger("fastapi_dapr")

# What daprd's runtime itself reads of every pub/sub component's metadata.
PUBSUB_NAMES = frozenset(
    ("consumerID", "publishingScopes", "subscriptionScopes", "allowedTopics", "protectedTopics")
)


class MetadataNames:
    """One component's metadata names: `values` with known names in their documented
    spelling, and a hint for the errors its type raises. `ValueError` for a known name
    given twice in two cases."""

    def __init__(
        self, values: Mapping[str, str], known: frozenset[str], *, where: str, type_name: str
    ) -> None:
        by_folded = {name.casefold(): name for name in known}
        self.values: dict[str, str] = {}
        self.unknown: dict[str, str | None] = {}  # name: the nearest known one, if any is near
        given: dict[str, list[str]] = {}
        for name in values:
            given.setdefault(by_folded.get(name.casefold(), name), []).append(name)
        for spelt, names in given.items():
            if len(names) > 1 and spelt in known:  # daprd would take one of them at random
                spelled = " and ".join(repr(name) for name in sorted(names))
                problem = f"{spelt} is given more than once ({spelled})"
                raise ValueError(f"{problem}: metadata names are matched case-insensitively")
        for name, value in values.items():
            known_as = by_folded.get(name.casefold())
            if known_as is None:
                self.unknown[name] = nearest(name, by_folded)
            self.values[known_as or name] = value
        for name, match in self.unknown.items():
            guess = f" (did you mean {match}?)" if match else ""
            logger.warning("%s: %s is not a metadata name of %s%s; ignored", where, name, type_name, guess)

    def hint(self) -> str:
        """`; the metadata has redisHots: did you mean redisHost?` for the unknown names
        near a known one; empty when there are none."""
        near = [f"{name}: did you mean {match}?" for name, match in self.unknown.items() if match]
        return f"; the metadata has {', '.join(near)}" if near else ""


def nearest(name: str, by_folded: Mapping[str, str]) -> str | None:
    """The known name nearest to `name`, if one is near enough to be a typo of it."""
    matches = difflib.get_close_matches(name.casefold(), list(by_folded), n=1, cutoff=0.75)
    return by_folded[matches[0]] if matches else None
