"""Registering subscription handlers on routers, and finding them again in an app."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import fastapi.routing
from fastapi import APIRouter
from starlette.routing import BaseRoute, Mount

from ._exceptions import SubscriptionError
from ._handler import SUBSCRIPTION_ATTR, build_endpoint
from ._subscription import BulkSubscribe, RoutedHandler, Subscription

__all__ = ["DaprRouter"]

F = TypeVar("F", bound=Callable[..., Any])


def _subscription_of(endpoint: Any) -> Subscription | None:
    sub = getattr(endpoint, SUBSCRIPTION_ATTR, None)
    return sub if isinstance(sub, Subscription) else None


def _unique_route(router: APIRouter, subscription: Subscription, explicit: bool) -> str:
    # Compared without the router's prefix, which FastAPI adds to route.path.
    taken = {
        sub.route
        for sub in (_subscription_of(getattr(r, "endpoint", None)) for r in router.routes)
        if sub is not None
    }
    route = subscription.route
    if explicit or route not in taken:
        return route
    base = f"{route}/{getattr(subscription.handler, '__name__', 'handler')}"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def subscribe_on(router: APIRouter, pubsub: str, topic: str, **options: Any) -> Callable[[F], F]:
    """The decorator behind `Dapr.subscribe` and `DaprRouter.subscribe`.

    `options` are `subscribe()`'s keyword arguments, checked by `Subscription.create`.
    """

    def decorator(func: F) -> F:
        subscription = Subscription.create(func, pubsub, topic, **options)
        for existing in router.routes:
            other = _subscription_of(getattr(existing, "endpoint", None))
            if other is not None and other.key == subscription.key:
                raise SubscriptionError(
                    f"duplicate subscription ({subscription.describe()}): "
                    f"{other.handler_name} and {subscription.handler_name}; "
                    "only one of them could ever be reached"
                )
        path = _unique_route(router, subscription, explicit=options["route"] is not None)
        if path != subscription.route:
            subscription = dataclasses.replace(subscription, route=path)
        router.add_api_route(
            path,
            build_endpoint(subscription),
            methods=["POST"],
            include_in_schema=False,
            name=f"dapr:{pubsub}/{topic}:{getattr(func, '__name__', 'handler')}",
        )
        return func

    return decorator


class DaprRouter(APIRouter):
    """An `APIRouter` whose handlers can subscribe to topics.

    It takes `APIRouter`'s arguments (`prefix`, `tags`, `dependencies`...). Include it
    with `app.include_router()` as any router: the prefix applies to the routes daprd
    posts to and to what `/dapr/subscribe` advertises.
    """

    def subscribe(
        self,
        pubsub: str,
        topic: str,
        *,
        route: str | None = None,
        match: str | None = None,
        priority: int | None = None,
        dead_letter_topic: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        raw_payload: bool = False,
        bulk: BulkSubscribe | bool | None = None,
    ) -> Callable[[F], F]:
        """Deliver the messages of `topic` on `pubsub` to the decorated handler.

        Returns the handler unchanged, so it can still be called and tested directly.

        Args:
            pubsub: The pub/sub component's name.
            topic: The topic.
            route: The path daprd posts to (under the router's prefix); default
                `/events/{pubsub}/{topic}`.
            match: A CEL expression over `event`: this handler gets the events it
                matches, the topic's handler without one the rest.
            priority: Orders the rules of a topic, lower first; only for a handler
                with a `match`.
            dead_letter_topic: Where dropped and exhausted messages go.
            metadata: The subscription's metadata; numbers and bools are sent as
                strings.
            raw_payload: The messages are not CloudEvents: each arrives wrapped in
                one, with the bytes in `data_base64`.
            bulk: Deliver messages in batches: True for daprd's defaults, or a
                `BulkSubscribe`.
        """
        return subscribe_on(
            self,
            pubsub,
            topic,
            route=route,
            match=match,
            priority=priority,
            dead_letter_topic=dead_letter_topic,
            metadata=metadata,
            raw_payload=raw_payload,
            bulk=bulk,
        )


def route_entries(routes: Sequence[BaseRoute]) -> Iterator[Any]:
    # FastAPI >= 0.13x keeps included routers as lazy wrappers and resolves their
    # prefixed paths through iter_route_contexts; older versions copied every
    # route into the parent, with its prefix, at include time.
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_contexts is None:
        yield from routes
    else:
        yield from iter_contexts(routes)


def collect_handlers(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[RoutedHandler]:
    """Every subscription handler served by these routes, with its full path."""
    for entry in route_entries(routes):
        original = getattr(entry, "original_route", entry)
        path = getattr(entry, "path", None)
        if isinstance(original, Mount) and path is not None:
            yield from collect_handlers(getattr(entry, "routes", []) or [], prefix + path)
            continue
        subscription = _subscription_of(getattr(entry, "endpoint", None))
        if subscription is not None and path is not None:
            yield RoutedHandler(subscription, prefix + path)
