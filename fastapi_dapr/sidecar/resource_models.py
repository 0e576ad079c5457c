"""Dapr's resource documents as frozen pydantic models: Component, Subscription, HTTPEndpoint, Configuration.

They say what a YAML document may hold and check each field; `resources.py`
reads the folders and makes the loaded resources from them, and
`resiliency_resource.py` has the Resiliency kind. Where the field lists no
`extra="forbid"`, unknown fields are ignored, as daprd ignores them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from .._match import match_problem
from .._subscription import BulkSubscribe
from .resource_fields import (
    AppId,
    Duration,
    DynamicValue,
    Expression,
    Names,
    ResourceModel,
    ScalarText,
    Section,
    Version,
    problem,
    shown,
)

__all__: list[str] = []

_DENIED_ENV = ("APP_API_TOKEN",)


def _name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "%" in name:
        raise problem("must be a name without '/' or '%' (not '.' or '..')")
    return name


class ObjectMeta(ResourceModel):
    name: Annotated[str, AfterValidator(_name)]
    namespace: str | None = None


class Header(ResourceModel):
    """What every resource document starts with, read before the rest: its name and namespace."""

    metadata: Section[ObjectMeta] = Field(None, validate_default=True)


class Document(Header):
    scopes: list[AppId] | None = Field(None, description="the app ids that load it; none: every app")


class SecretKeyRef(ResourceModel):
    name: str
    key: str | None = Field(None, description="the key within the secret; by default its name")


def _env_name(variable: str) -> str:
    if variable.startswith("DAPR_") or variable in _DENIED_ENV or " " in variable:
        raise problem(
            f"envRef {shown(variable)} is not allowed "
            "(DAPR_* and APP_API_TOKEN are the sidecar's own secrets)"
        )
    return variable


class MetadataEntry(ResourceModel):
    """One `spec.metadata` (or `spec.headers`) entry: a value, a secret reference or an env variable."""

    shape = "a mapping with name and value"
    name: str
    value: DynamicValue | None = None
    secret_key_ref: SecretKeyRef | None = Field(None, alias="secretKeyRef")
    env_ref: Annotated[str, AfterValidator(_env_name)] | None = Field(None, alias="envRef")


def _unique(entries: list[MetadataEntry]) -> list[MetadataEntry]:
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if entry.name in seen:
            raise problem(f"{shown(entry.name)} is given twice", at=f"[{index}].name")
        seen.add(entry.name)
    return entries


Entries = Annotated[list[MetadataEntry], AfterValidator(_unique)]


class Auth(ResourceModel):
    secret_store: str | None = Field(None, alias="secretStore")


class ComponentSpec(ResourceModel):
    type: str = Field(description="the component's type, such as pubsub.redis")
    version: Version | None = None
    init_timeout: Duration | None = Field(None, alias="initTimeout")
    ignore_errors: bool | None = Field(None, alias="ignoreErrors")
    metadata: Entries | None = None


class ComponentDocument(Document):
    api_version: Literal["dapr.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["Component"]
    spec: Section[ComponentSpec] = Field(None, validate_default=True)
    auth: Section[Auth] = Field(None, validate_default=True)


class BulkSubscribeSpec(ResourceModel):
    enabled: bool | None = None
    max_messages_count: int | None = Field(None, alias="maxMessagesCount")
    max_await_duration_ms: int | None = Field(None, alias="maxAwaitDurationMs")

    @model_validator(mode="after")
    def _bounds(self) -> BulkSubscribeSpec:
        try:
            self.settings()
        except ValueError as exc:
            raise problem(str(exc)) from None
        return self

    def settings(self) -> BulkSubscribe | None:
        if not self.enabled:
            return None
        return BulkSubscribe(
            max_messages_count=self.max_messages_count or 100,
            max_await_duration_ms=self.max_await_duration_ms or 1000,
        )


class SubscriptionSpec(ResourceModel):
    pubsubname: str
    topic: str
    metadata: Names[ScalarText] = Field(None, validate_default=True)
    dead_letter_topic: str | None = Field(None, alias="deadLetterTopic")
    bulk_subscribe: Section[BulkSubscribeSpec] = Field(None, alias="bulkSubscribe", validate_default=True)


class SubscriptionV1Spec(SubscriptionSpec):
    route: str | None = None


def _match(match: str) -> str:
    found = match_problem(match)
    if found is not None:
        raise problem(f"{shown(match)} {found}")
    return match


class Rule(ResourceModel):
    shape = "a mapping with match and path"
    path: str
    match: Annotated[Expression, AfterValidator(_match)] | None = Field(None, description="a CEL expression")


class Routes(ResourceModel):
    rules: list[Rule] | None = None
    default: str | None = None


class SubscriptionV2Spec(SubscriptionSpec):
    routes: Section[Routes] = Field(None, validate_default=True)


class SubscriptionV1Document(Document):
    api_version: Literal["dapr.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["Subscription"]
    spec: Section[SubscriptionV1Spec] = Field(None, validate_default=True)


class SubscriptionV2Document(Document):
    api_version: Literal["dapr.io/v2alpha1"] = Field(alias="apiVersion")
    kind: Literal["Subscription"]
    spec: Section[SubscriptionV2Spec] = Field(None, validate_default=True)


class TLSItem(ResourceModel):
    value: str | None = None
    secret_key_ref: SecretKeyRef | None = Field(None, alias="secretKeyRef")

    @model_validator(mode="after")
    def _given(self) -> TLSItem:
        if self.secret_key_ref is None and not self.value:
            raise problem("needs a value or a secretKeyRef")
        return self


class ClientTLS(ResourceModel):
    root_ca: TLSItem | None = Field(None, alias="rootCA")
    certificate: TLSItem | None = None
    private_key: TLSItem | None = Field(None, alias="privateKey")


def _base_url(base_url: str) -> str:
    """`spec.baseUrl`, refused at start-up when no call could ever use it."""
    if any(char <= " " or char == "\x7f" for char in base_url):
        raise problem(f"{shown(base_url)} has a space or a control character")
    try:
        parsed = urlsplit(base_url)
        port = parsed.port  # checked only when asked for: `:99999` and `:http` raise here
    except ValueError as exc:
        raise problem(f"{shown(base_url)} is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise problem(f"{shown(base_url)} is not an http:// or https:// URL with a host")
    if port == 0:
        raise problem(f"{shown(base_url)}: port 0 cannot be called")
    return base_url


class HTTPEndpointSpec(ResourceModel):
    base_url: Annotated[str, AfterValidator(_base_url)] = Field(alias="baseUrl")
    headers: Entries | None = None
    client_tls: Section[ClientTLS] = Field(None, alias="clientTLS", validate_default=True)


class HTTPEndpointDocument(Document):
    api_version: Literal["dapr.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["HTTPEndpoint"]
    spec: Section[HTTPEndpointSpec] = Field(None, validate_default=True)
    auth: Section[Auth] = Field(None, validate_default=True)


CONFIGURATION_SECTIONS = (  # daprd's, for the schema: none is applied by the standalone sidecar yet
    "accessControl",
    "api",
    "appHttpPipeline",
    "components",
    "features",
    "httpPipeline",
    "logging",
    "metric",
    "metrics",
    "mtls",
    "nameResolution",
    "secrets",
    "tracing",
    "wasm",
    "workflow",
)


class ConfigurationMeta(ResourceModel):
    name: str | None = None


def _sections(spec: Any) -> Any:
    if not spec:  # an empty value of any type is no section
        return {}
    return {str(key): value for key, value in spec.items()} if isinstance(spec, dict) else spec


def _only(kind: type) -> Any:
    """What is not of `kind` is taken as not written: fields the sidecar has never checked."""
    return BeforeValidator(lambda value: value if isinstance(value, kind) else None)


class ConfigurationDocument(ResourceModel):
    """The file of `daprd --config`: its sections are named in warnings, not applied."""

    api_version: Annotated[str | None, _only(str)] = Field(None, alias="apiVersion")
    kind: Literal["Configuration"]
    metadata: Annotated[Section[ConfigurationMeta], _only(dict)] = Field(None, validate_default=True)
    spec: Annotated[dict[str, Any], BeforeValidator(_sections)] = Field(
        None,
        validate_default=True,
        json_schema_extra={"properties": {section: {} for section in CONFIGURATION_SECTIONS}},
    )
