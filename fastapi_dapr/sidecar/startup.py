"""What the embedded sidecar says and checks as the app starts.

- `startup_line`: one INFO line with what runs (the mode and why, the app id, the
  components and their types, the HTTPEndpoints, the subscriptions, the gRPC port).
- `server_workers`: whether this process is one of several workers of a server
  (uvicorn's `--workers`, gunicorn's), each of which has in-memory brokers of its own.
- `shadowed_routes`: the app's routes that the sidecar API, served in front of the
  app on its port, would answer instead (`/v1.0/...`), refused at start-up.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from starlette.routing import Mount, Route

from .._routing import route_entries
from .api import API_PREFIXES, METRICS_PATH, is_api_path

if TYPE_CHECKING:
    from .delivery import Route as Subscription
    from .runtime import Runtime

__all__: list[str] = []


def startup_line(
    runtime: Runtime, *, chosen_by: str, serve_api: bool, metrics: bool, grpc_port: int | None
) -> str:
    """The embedded sidecar's start-up line, once its subscriptions have started."""
    stores = [f"{name} ({store.type_name})" for name, store in runtime.secret_stores.items()]
    brokers = [f"{name} ({broker.type_name})" for name, broker in runtime.brokers.items()]
    endpoints = [f"{name} ({_shown(endpoint.base_url)})" for name, endpoint in runtime.http_endpoints.items()]
    subscriptions = [_subscription(worker.route) for worker in runtime.workers]
    parts = [
        f"embedded mode ({chosen_by}): app id {runtime.app_id!r}",
        f"components: {_listed(stores + brokers)}",
        f"HTTPEndpoints: {_listed(endpoints)}",
        f"subscriptions: {_listed(subscriptions)}",
        "Dapr HTTP API on the app's port" if serve_api else "Dapr HTTP API not served (serve_api=False)",
    ]
    if grpc_port is not None:
        parts.append(f"gRPC API on 127.0.0.1:{grpc_port}")
    if metrics:
        parts.append(f"metrics at {METRICS_PATH}" if serve_api else f"metrics at the API's {METRICS_PATH}")
    return "; ".join(parts)


def _shown(url: str) -> str:
    """A URL without the user and password it may hold."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _listed(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def _subscription(route: Subscription) -> str:
    text = f"{route.pubsub}/{route.topic} -> {route.rules.default or '(no default route)'}"
    rules = len(route.rules.rules())
    notes = [f"{rules} routing rule{'s' if rules > 1 else ''}"] if rules else []
    if route.bulk is not None:
        notes.append("bulk")
    if route.kind == "DECLARATIVE":
        notes.append("declarative")
    if route.dead_letter_topic:
        notes.append(f"dead letters to {route.dead_letter_topic}")
    return f"{text} ({', '.join(notes)})" if notes else text


# -- several workers -------------------------------------------------------------------------------


def server_workers() -> tuple[int, str] | None:
    """How many workers the server runs, when this process is one of several, and which server.

    Read from the server's own objects on the call stack of the app's start-up: uvicorn's
    `Config` (its `workers`, unless `--reload` makes it one), given to each worker it spawns
    (`--workers N`, `uvicorn.run(..., workers=N)`, `WEB_CONCURRENCY`), or gunicorn's arbiter,
    which forks each worker. None when neither is there, or there is one worker.
    """
    frame: Any = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__")
        name = frame.f_code.co_name
        if module == "uvicorn._subprocess" and name == "subprocess_started":
            config = frame.f_locals.get("config")
            workers = getattr(config, "workers", None)
            if isinstance(workers, int) and workers > 1 and not getattr(config, "should_reload", False):
                return workers, f"uvicorn --workers {workers}"
            return None
        if module == "gunicorn.arbiter" and name == "spawn_worker":
            workers = getattr(frame.f_locals.get("self"), "num_workers", None)
            if isinstance(workers, int) and workers > 1:
                return workers, f"gunicorn --workers {workers}"
            return None
        frame = frame.f_back
    return None


def several_workers_warning(runtime: Runtime) -> str | None:
    """The warning for in-memory pub/sub components in one of several workers, if it applies."""
    memory = [name for name, broker in runtime.brokers.items() if broker.type_name == "pubsub.in-memory"]
    if not memory:
        return None
    found = server_workers()
    if found is None:
        return None
    count, server = found
    names = ", ".join(repr(name) for name in memory)
    return (
        f"this process is one of {count} workers ({server}), and each worker has in-memory pub/sub "
        f"components of its own ({names}): a message published in one worker is delivered only to "
        "that worker's subscriptions, never to the others'. To share messages between workers, use "
        "a pubsub.redis component (docs/redis.md), or run one worker"
    )


# -- routes the sidecar API would answer ------------------------------------------------------------


def shadowed_routes(routes: Iterable[Any], *, metrics: bool, prefix: str = "") -> list[str]:
    """The app's HTTP routes (and mounts) the sidecar API, in front of the app, answers instead,
    each as `METHODS path (endpoint name), shadowed by ...`. A route with a path parameter is
    counted only when all it matches is under an API path (`/v1.0/{name}`, not `/{path:path}`)."""
    found = []
    for entry in route_entries(list(routes)):
        original = getattr(entry, "original_route", entry)
        path = prefix + (getattr(entry, "path", None) or "")
        if isinstance(original, Mount):
            if (path + "/").startswith(API_PREFIXES):
                name = _name(original.app, original.name)
                found.append(f"mount {path} ({name}), shadowed by {_shadow(path + '/')}")
            else:
                found += shadowed_routes(getattr(entry, "routes", None) or [], metrics=metrics, prefix=path)
        elif isinstance(original, Route):  # HTTP only: the sidecar leaves WebSockets to the app
            fixed, _, rest = path.partition("{")
            if fixed.startswith(API_PREFIXES) if rest else is_api_path(path, metrics):
                methods = sorted(getattr(entry, "methods", None) or ()) or ["any method"]
                if len(methods) > 1 and "HEAD" in methods and "GET" in methods:
                    methods.remove("HEAD")  # Starlette's own, with every GET
                name = _name(getattr(entry, "endpoint", None), getattr(entry, "name", None))
                found.append(f"{', '.join(methods)} {path} (endpoint {name}), shadowed by {_shadow(path)}")
    return found


def _name(endpoint: Any, fallback: str | None) -> str:
    module = getattr(endpoint, "__module__", None)
    qualname = getattr(endpoint, "__qualname__", None)
    if module and qualname:
        return f"{module}.{qualname}"
    return fallback or type(endpoint).__name__


def _shadow(path: str) -> str:
    if path == METRICS_PATH:
        return "the sidecar's metrics (Dapr(app, metrics=True))"
    prefix = next((prefix for prefix in API_PREFIXES if path.startswith(prefix)), path + "/")
    return f"Dapr's HTTP API under {prefix}"


def refusal(found: list[str]) -> str:
    """The start-up error for the routes `shadowed_routes` found."""
    listed = "; ".join(found)
    return (
        "the embedded sidecar serves Dapr's HTTP API on the app's port, in front of the app, and "
        f"would answer these routes of the app instead: {listed}. Move them to other paths, or "
        "serve the API apart with Dapr(app, serve_api=False) and mount dapr.sidecar elsewhere"
    )
