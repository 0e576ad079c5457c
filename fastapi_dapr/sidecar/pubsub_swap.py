"""Pub/sub components swapped for the in-memory broker: `memory_pubsub=` of `fastapi_dapr.testing`.

A test of an app whose resources say `pubsub.redis` (or a type not served here)
runs on the in-memory broker instead: the component keeps its name, its file,
its app scopes, its topic scopes and its `consumerID`, so subscriptions, scopes
and errors are the app's own; only the broker changes. The rest of its metadata
is the other broker's, and is not read at all: no connection is made, and a
secret it names is not looked up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from ..brokers.memory import MemoryBroker
from .metadata_names import PUBSUB_NAMES
from .resources import Component, Resources

__all__: list[str] = []

# What the runtime reads of any pub/sub component's metadata, whatever its broker (scopes.py,
# Broker.consumer_group), in any case, as daprd matches metadata names.
KEPT_METADATA = frozenset(name.casefold() for name in PUBSUB_NAMES)


def in_memory(resources: Resources, names: Collection[str] | None = None) -> Resources:
    """`resources` with the pub/sub components `names` (every one when None) swapped for
    the in-memory broker; `ValueError` for a name that is no pub/sub component of the app."""
    pubsubs = [component.name for component in resources.components if component.type.startswith("pubsub.")]
    if names is not None:
        unknown = sorted(set(names) - set(pubsubs))
        if unknown:
            have = ", ".join(repr(name) for name in pubsubs) or "none, so the default in-memory 'pubsub'"
            raise ValueError(
                f"memory_pubsub names {', '.join(repr(name) for name in unknown)}: the app has no pub/sub "
                f"component of that name (its pub/sub components: {have})"
            )
    swapped = tuple(
        _swapped(component)
        if component.type.startswith("pubsub.") and (names is None or component.name in names)
        else component
        for component in resources.components
    )
    return dataclasses.replace(resources, components=swapped)


def _swapped(component: Component) -> Component:
    if component.type == MemoryBroker.type_name:
        return component  # its own settings (maxQueueLength, publishTimeout) are the in-memory broker's
    kept = tuple(item for item in component.metadata if item.name.casefold() in KEPT_METADATA)
    return dataclasses.replace(component, type=MemoryBroker.type_name, metadata=kept)
