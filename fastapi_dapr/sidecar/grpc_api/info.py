"""GetSecret, GetBulkSecret, GetMetadata, SetMetadata and Shutdown: the HTTP API's facts and
errors, in daprd's gRPC messages (pkg/api/universal).

Each reads what the HTTP route reads: the secrets through `secrets_routes.read_secrets`
(the same stores and errors; daprd's gRPC codes come from `errors.abort_api_error`), the
metadata from `Runtime.metadata()` (the standalone's override included), the extended
metadata kept by `Runtime.set_extended_metadata` under the HTTP PUT's limit, and the stop
from `Runtime.shutdown()`, run once the answer is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dapr.proto.runtime.v1 import metadata_pb2, secret_pb2
from google.protobuf import empty_pb2

from ..._exceptions import DaprAPIError
from ..secrets_routes import read_bulk, read_secret
from . import errors

__all__: list[str] = []


async def get_secret(service: Any, request: Any, context: Any) -> Any:
    """daprd's GetSecret: the secret `key` of the store, a map of its values."""
    runtime = await service.running(context)
    try:
        found = await read_secret(runtime, request.store_name, request.key)
    except DaprAPIError as exc:
        await errors.abort_api_error(context, exc)
    return secret_pb2.GetSecretResponse(data=found)


async def get_bulk_secret(service: Any, request: Any, context: Any) -> Any:
    """daprd's GetBulkSecret: every secret of the store, each a map of its values."""
    runtime = await service.running(context)
    try:
        found = await read_bulk(runtime, request.store_name)
    except DaprAPIError as exc:
        await errors.abort_api_error(context, exc)
    data = {name: secret_pb2.SecretResponse(secrets=values) for name, values in found.items()}
    return secret_pb2.GetBulkSecretResponse(data=data)


async def get_metadata(service: Any, request: Any, context: Any) -> Any:
    """daprd's GetMetadata: what `GET /v1.0/metadata` answers."""
    runtime = await service.running(context)
    return metadata_response(runtime.metadata())


async def set_metadata(service: Any, request: Any, context: Any) -> Any:
    """daprd's SetMetadata: `value` kept as `key` of the extended metadata (an empty key is
    nothing, as in daprd), within the limit `PUT /v1.0/metadata/{key}` holds it to."""
    runtime = await service.running(context)
    if request.key:
        limit = service.api.max_body_size
        if not runtime.set_extended_metadata(request.key, request.value.encode(), limit):
            await errors.abort_api_error(
                context,
                DaprAPIError(
                    413,
                    "ERR_METADATA_TOO_LARGE",
                    f"the extended metadata (keys and values together) may hold at most {limit} bytes",
                ),
            )
    return empty_pb2.Empty()


async def shutdown(service: Any, request: Any, context: Any) -> Any:
    """daprd's Shutdown: Empty, then the stop, once the answer is sent."""
    runtime = await service.running(context)
    try:
        stop = runtime.shutdown()
    except DaprAPIError as exc:
        await errors.abort_api_error(context, exc)
    context.add_done_callback(lambda _: stop())
    return empty_pb2.Empty()


def metadata_response(body: Mapping[str, Any]) -> Any:
    """The `GET /v1.0/metadata` body (`Runtime.metadata()`) as daprd's GetMetadataResponse."""
    connection = body.get("appConnectionProperties") or {}
    health = connection.get("health")
    actors = body.get("actorRuntime") or {}
    m = metadata_pb2
    return m.GetMetadataResponse(
        id=body.get("id", ""),
        runtime_version=body.get("runtimeVersion", ""),
        enabled_features=body.get("enabledFeatures") or [],
        registered_components=[
            m.RegisteredComponents(
                name=c.get("name", ""),
                type=c.get("type", ""),
                version=c.get("version", ""),
                capabilities=c.get("capabilities") or [],
            )
            for c in body.get("components") or []
        ],
        extended_metadata={str(k): str(v) for k, v in (body.get("extended") or {}).items()},
        subscriptions=[_subscription(s) for s in body.get("subscriptions") or []],
        http_endpoints=[m.MetadataHTTPEndpoint(name=e["name"]) for e in body.get("httpEndpoints") or []],
        app_connection_properties=m.AppConnectionProperties(
            port=int(connection.get("port") or 0),
            protocol=connection.get("protocol", ""),
            channel_address=connection.get("channelAddress", ""),
            max_concurrency=int(connection.get("maxConcurrency") or 0),
            health=_health(health) if health else None,
        ),
        actor_runtime=m.ActorRuntime(
            runtime_status=_enum(m.ActorRuntime.ActorRuntimeStatus, actors.get("runtimeStatus")),
            active_actors=[
                m.ActiveActorsCount(type=a.get("type", ""), count=int(a.get("count", 0)))
                for a in actors.get("activeActors") or []
            ],
            host_ready=bool(actors.get("hostReady", False)),
            placement=actors.get("placement", ""),
        ),
    )


def _subscription(subscription: Mapping[str, Any]) -> Any:
    m = metadata_pb2
    rules = subscription.get("rules") or []
    return m.PubsubSubscription(
        pubsub_name=subscription.get("pubsubname", ""),
        topic=subscription.get("topic", ""),
        metadata={str(k): str(v) for k, v in (subscription.get("metadata") or {}).items()},
        rules=m.PubsubSubscriptionRules(
            rules=[m.PubsubSubscriptionRule(match=r.get("match", ""), path=r.get("path", "")) for r in rules]
        ),
        dead_letter_topic=subscription.get("deadLetterTopic", ""),
        type=_enum(m.PubsubSubscriptionType, subscription.get("type")),
    )


def _health(health: Mapping[str, Any]) -> Any:
    return metadata_pb2.AppConnectionHealthProperties(
        health_check_path=health.get("healthCheckPath", ""),
        health_probe_interval=health.get("healthProbeInterval", ""),
        health_probe_timeout=health.get("healthProbeTimeout", ""),
        health_threshold=int(health.get("healthThreshold") or 0),
    )


def _enum(kind: Any, name: Any) -> Any:
    """The number of the enum value `name`; 0 (UNKNOWN, INITIALIZING) for a name it lacks."""
    try:
        return kind.Value(str(name))
    except ValueError:
        return 0
