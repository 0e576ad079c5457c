"""The building blocks daprd serves and this sidecar does not: state, bindings, actors,
configuration, locks, workflows, jobs, crypto and conversation.

Each of daprd's routes for them (pkg/api/http: the same paths, versions and methods)
answers the error daprd gives when no component of that kind is loaded (pkg/api/errors,
pkg/messages), so that every client fails loudly. Without these routes the paths fell
through to service invocation's 404, which some SDKs read as "nothing there" (the official
JavaScript SDK's `state.save` returns it instead of raising). A path or method daprd does
not route still falls through to invocation, as in daprd.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from .._error_codes import kit_error
from .._exceptions import DaprAPIError

__all__: list[str] = []

# (path parameters, already unescaped; app id; namespace) -> daprd's error
Answer = Callable[[Mapping[str, str], str, str], DaprAPIError]

V1 = "v1.0"
ALPHA1 = "v1.0-alpha1"
ALPHA2 = "v1.0-alpha2"
BETA1 = "v1.0-beta1"
VERSIONS = (V1, ALPHA1, ALPHA2, BETA1)  # every version daprd's HTTP API has


class _Route(NamedTuple):
    methods: frozenset[str]
    segments: tuple[str, ...]  # "{name}" is a parameter: one segment, as chi matches it
    answer: Answer


def _state(params: Mapping[str, str], app_id: str, _: str) -> DaprAPIError:
    # StateStore(name).NotConfigured(appID): a kit error with no ResourceInfo.
    store = params["storeName"]
    return kit_error(
        500,
        "ERR_STATE_STORE_NOT_CONFIGURED",
        "DAPR_STATE_NOT_CONFIGURED",
        f"state store {store} is not configured",
        {"appID": app_id},
        None,
    )


def _state_query(params: Mapping[str, str], app_id: str, namespace: str) -> DaprAPIError:
    error = _state(params, app_id, namespace)
    error.details[-1]["metadata"] = None  # the query API passes no app id: Go writes a nil map
    return error


def _api_error(status_code: int, error_code: str, message: str) -> Answer:
    """daprd's older-style `messages.APIError`: no details."""

    def answer(params: Mapping[str, str], app_id: str, namespace: str) -> DaprAPIError:
        return DaprAPIError(status_code, error_code, message.format_map(params))

    return answer


def _scheduler(reason: str, doing: str) -> Answer:
    """The jobs API with no scheduler: the scheduler client's error, wrapped (pkg/api/errors/scheduler.go)."""

    def answer(params: Mapping[str, str], app_id: str, namespace: str) -> DaprAPIError:
        return kit_error(
            500,
            reason,  # no legacy tag: the errorCode is the reason
            reason,
            f"failed to {doing} job due to: scheduler clients are disabled",
            {"appID": app_id, "namespace": namespace},
            None,
        )

    return answer


# Actors and workflows both need the placement service first (ActorRouter, ActorState...).
_NO_PLACEMENT = _api_error(400, "ERR_ACTOR_NO_PLACEMENT", "placement service is not configured")


def _table() -> dict[tuple[str, str], list[_Route]]:
    """daprd's routes, keyed by version and first segment."""
    table: dict[tuple[str, str], list[_Route]] = {}

    def add(versions: Iterable[str], methods: str, route: str, answer: Answer) -> None:
        segments = tuple(route.split("/"))
        for version in versions:
            table.setdefault((version, segments[0]), []).append(
                _Route(frozenset(methods.split()), segments, answer)
            )

    v1, alpha1, workflow = (V1,), (ALPHA1,), (ALPHA1, BETA1, V1)
    add(v1, "GET DELETE", "state/{storeName}/{key}", _state)
    add(v1, "POST PUT", "state/{storeName}", _state)
    add(v1, "POST PUT", "state/{storeName}/bulk", _state)
    add(v1, "POST PUT", "state/{storeName}/transaction", _state)
    add(alpha1, "POST PUT", "state/{storeName}/query", _state_query)
    binding = "error invoking output binding {name}: couldn't find output binding {name}"
    add(v1, "POST PUT", "bindings/{name}", _api_error(500, "ERR_INVOKE_OUTPUT_BINDING", binding))
    configuration = _api_error(
        500, "ERR_CONFIGURATION_STORE_NOT_CONFIGURED", "configuration stores not configured"
    )
    for route in (
        "{storeName}",
        "{storeName}/subscribe",
        "{storeName}/{configurationSubscribeID}/unsubscribe",
    ):
        add((ALPHA1, V1), "GET", f"configuration/{route}", configuration)
    for route, methods in (
        ("state", "POST PUT"),
        ("method/{method}", "GET POST DELETE PUT"),
        ("state/{key}", "GET"),
        ("reminders/{name}", "GET POST PUT DELETE"),
        ("timers/{name}", "POST PUT DELETE"),
    ):
        add(v1, methods, f"actors/{{actorType}}/{{actorId}}/{route}", _NO_PLACEMENT)
    add(workflow, "GET", "workflows/{workflowComponent}/{instanceID}", _NO_PLACEMENT)
    add(workflow, "POST", "workflows/{workflowComponent}/{workflowName}/start", _NO_PLACEMENT)
    add(workflow, "POST", "workflows/{workflowComponent}/{instanceID}/raiseEvent/{eventName}", _NO_PLACEMENT)
    for action in ("pause", "resume", "terminate", "purge"):
        add(workflow, "POST", f"workflows/{{workflowComponent}}/{{instanceID}}/{action}", _NO_PLACEMENT)
    add((ALPHA1, V1), "POST", "jobs/{name}", _scheduler("DAPR_SCHEDULER_SCHEDULE_JOB", "schedule"))
    add((ALPHA1, V1), "GET", "jobs/{name}", _scheduler("DAPR_SCHEDULER_GET_JOB", "get"))
    add((ALPHA1, V1), "DELETE", "jobs/{name}", _scheduler("DAPR_SCHEDULER_DELETE_JOB", "delete"))
    lock = _api_error(500, "ERR_LOCK_STORE_NOT_CONFIGURED", "lock store is not configured")
    add(alpha1, "POST", "lock/{storeName}", lock)
    add(alpha1, "POST", "unlock/{storeName}", lock)
    crypto = _api_error(500, "ERR_CRYPTO_PROVIDERS_NOT_CONFIGURED", "crypto providers not configured")
    add(alpha1, "PUT", "crypto/{name}/encrypt", crypto)
    add(alpha1, "PUT", "crypto/{name}/decrypt", crypto)
    # daprd's default build has no subtle crypto at all, component or not.
    subtle = _api_error(501, "ERR_API_UNIMPLEMENTED", "this API is currently not implemented")
    for operation in ("getkey", "encrypt", "decrypt", "wrapkey", "unwrapkey", "sign", "verify"):
        add(alpha1, "POST", f"subtlecrypto/{{name}}/{operation}", subtle)
    conversation = _api_error(
        400, "ERR_CONVERSATION_NOT_FOUND", "failed finding conversation component {name}"
    )
    add((ALPHA1, ALPHA2), "POST", "conversation/{name}/converse", conversation)
    return table


_ROUTES = _table()


def find_unserved(path: str, method: str) -> tuple[Answer, dict[str, str]] | None:
    """The answer for `path` (escaped and cleaned, as daprd routes it) and its raw
    parameters, when it is a route of a block not served here; None otherwise."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0]:
        return None
    rest = parts[2:]
    for route in _ROUTES.get((parts[1], rest[0]), ()):
        if len(route.segments) != len(rest) or method not in route.methods:
            continue
        params: dict[str, str] = {}
        for expected, given in zip(route.segments, rest, strict=True):
            if expected.startswith("{"):
                params[expected[1:-1]] = given
            elif expected != given:
                break
        else:
            return route.answer, params
    return None
