"""Dapr's YAML resources, read from the same folders daprd reads (reference 7).

Each document is checked as a frozen pydantic model (`resource_models.py`,
`resiliency_resource.py`), whose camelCase stays in those modules; each loaded
resource is a frozen dataclass made from it, what the runtime uses.
Unlike daprd, which logs a warning and goes on, a file that cannot be used
stops the start-up with one `ResourceError` naming the file, the kind, the
resource's name and the field; so does a `dapr.io` document of a kind or
version that is not read here (a typo would leave the app on defaults).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import ValidationError

from .._exceptions import ResourceError
from .._subscription import BulkSubscribe
from .resiliency import ResiliencyResource
from .resiliency_resource import ResiliencyDocument, read_resiliency
from .resource_fields import YAML, ResourceModel, resource_error, shown, type_name
from .resource_models import (
    ComponentDocument,
    Document,
    Header,
    HTTPEndpointDocument,
    MetadataEntry,
    SubscriptionV1Document,
    SubscriptionV1Spec,
    SubscriptionV2Document,
    TLSItem,
)
from .yaml_loader import read_documents

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

_READ = {  # kind -> the apiVersions read (reference 7.2); a Resiliency of any apiVersion, as in daprd
    "Component": ("dapr.io/v1alpha1",),
    "HTTPEndpoint": ("dapr.io/v1alpha1",),
    "Resiliency": ("dapr.io/v1alpha1",),
    "Subscription": ("dapr.io/v1alpha1", "dapr.io/v2alpha1"),
}
_NOT_READ = {  # Dapr kinds that may sit in a resources folder, and why they are skipped
    "Configuration": "a Configuration is read from --config, not from the resources folder",
    "MCPServer": "MCP servers are not served here",
    "WorkflowAccessPolicy": "workflows are not served here",
}
M = TypeVar("M", bound=ResourceModel)


@dataclasses.dataclass(frozen=True)
class MetadataItem:
    """One `spec.metadata` entry: a value, a secret reference or an environment variable."""

    name: str
    value: str | None = dataclasses.field(default=None, repr=False)  # may be a secret
    secret_name: str | None = None
    secret_key: str | None = None
    env_ref: str | None = None


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    type: str
    version: str
    metadata: tuple[MetadataItem, ...]
    source: str
    ignore_errors: bool = False
    init_timeout: float = 5.0
    secret_store: str | None = None
    scopes: tuple[str, ...] = ()

    def values(self) -> dict[str, str]:
        """The metadata that is known without a secret store."""
        return {item.name: item.value for item in self.metadata if item.value is not None}


@dataclasses.dataclass(frozen=True)
class DeclarativeSubscription:
    """A `Subscription` resource, v1alpha1 converted to v2alpha1 (reference 2.2)."""

    name: str
    pubsub: str
    topic: str
    rules: tuple[tuple[str, str], ...]
    default: str | None
    metadata: Mapping[str, str]
    dead_letter_topic: str | None
    bulk: BulkSubscribe | None
    source: str
    scopes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class HTTPEndpoint:
    """A non-Dapr HTTP service that `/v1.0/invoke/{name}/method/...` reaches (reference 6.4).

    `headers` are `spec.headers` (values, `secretKeyRef` or `envRef`); the TLS
    items are `spec.clientTLS.rootCA`, `.certificate` and `.privateKey`, each a
    value or a `secretKeyRef`, resolved when the sidecar starts.
    """

    name: str
    base_url: str
    headers: tuple[MetadataItem, ...]
    source: str
    root_ca: MetadataItem | None = None
    certificate: MetadataItem | None = None
    private_key: MetadataItem | None = None
    secret_store: str | None = None
    scopes: tuple[str, ...] = ()


Resource = Component | DeclarativeSubscription | HTTPEndpoint | ResiliencyResource


@dataclasses.dataclass(frozen=True)
class Resources:
    components: tuple[Component, ...] = ()
    subscriptions: tuple[DeclarativeSubscription, ...] = ()
    http_endpoints: tuple[HTTPEndpoint, ...] = ()
    resiliencies: tuple[ResiliencyResource, ...] = ()


_MODELS: dict[tuple[str, str], type[Document]] = {
    ("Component", "dapr.io/v1alpha1"): ComponentDocument,
    ("HTTPEndpoint", "dapr.io/v1alpha1"): HTTPEndpointDocument,
    ("Subscription", "dapr.io/v1alpha1"): SubscriptionV1Document,
    ("Subscription", "dapr.io/v2alpha1"): SubscriptionV2Document,
}


def _item(entry: MetadataEntry | TLSItem, name: str) -> MetadataItem:
    """An entry as daprd takes it: a secret reference first, then a value, then an environment variable."""
    ref = entry.secret_key_ref
    if ref is not None:
        return MetadataItem(name, secret_name=ref.name, secret_key=ref.key or ref.name)
    if isinstance(entry, TLSItem) or "value" in entry.model_fields_set:  # `value: null` is a value: ""
        return MetadataItem(name, value=entry.value or "")
    if entry.env_ref is not None:
        return MetadataItem(name, value=os.environ.get(entry.env_ref, ""), env_ref=entry.env_ref)
    return MetadataItem(name, value="")


def _items(entries: Sequence[MetadataEntry] | None) -> tuple[MetadataItem, ...]:
    return tuple(_item(entry, entry.name) for entry in entries or ())


def _component(document: ComponentDocument, source: str) -> Component:
    spec = document.spec
    return Component(
        name=document.metadata.name,
        type=spec.type,
        version="v1" if spec.version is None else spec.version,  # "" is kept, as written
        metadata=_items(spec.metadata),
        source=source,
        ignore_errors=bool(spec.ignore_errors),
        init_timeout=5.0 if spec.init_timeout is None else spec.init_timeout,
        secret_store=document.auth.secret_store,
        scopes=tuple(document.scopes or ()),
    )


def _tls_item(item: TLSItem | None, key: str) -> MetadataItem | None:
    return None if item is None else _item(item, key)


def _http_endpoint(document: HTTPEndpointDocument, source: str) -> HTTPEndpoint:
    spec, tls = document.spec, document.spec.client_tls
    return HTTPEndpoint(
        name=document.metadata.name,
        base_url=spec.base_url,
        headers=_items(spec.headers),
        source=source,
        root_ca=_tls_item(tls.root_ca, "rootCA"),
        certificate=_tls_item(tls.certificate, "certificate"),
        private_key=_tls_item(tls.private_key, "privateKey"),
        secret_store=document.auth.secret_store,
        scopes=tuple(document.scopes or ()),
    )


def _subscription(
    document: SubscriptionV1Document | SubscriptionV2Document, source: str
) -> DeclarativeSubscription:
    spec = document.spec
    rules: tuple[tuple[str, str], ...] = ()
    if isinstance(spec, SubscriptionV1Spec):
        default = spec.route or None
    else:
        rules = tuple((rule.match or "", rule.path) for rule in spec.routes.rules or ())
        default = spec.routes.default or None
    return DeclarativeSubscription(
        name=document.metadata.name,
        pubsub=spec.pubsubname,
        topic=spec.topic,
        rules=rules,
        default=default,
        metadata=MappingProxyType(dict(spec.metadata)),
        dead_letter_topic=spec.dead_letter_topic or None,
        bulk=spec.bulk_subscribe.settings(),
        source=source,
        scopes=tuple(document.scopes or ()),
    )


def _files(paths: Sequence[str | os.PathLike[str]]) -> Iterable[Path]:
    for entry in paths:
        folder = Path(entry)
        if not folder.is_dir():
            where = "" if folder.is_absolute() else f", from the working directory {Path.cwd()}"
            what = "is not a folder" if folder.exists() else "does not exist"
            raise ResourceError(f"{folder}: the resources path {what}{where}")
        # daprd: the top level only, in name order, *.yaml and *.yml (reference 7.2).
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if path.is_file() and path.suffix in (".yaml", ".yml"):
                yield path
            elif path.is_file():
                logger.debug("%s: not a .yaml or .yml file, ignored", path)


def _where(path: Path, number: int, raw: Mapping[str, Any]) -> str:
    """The file and document, for a document whose kind is not known yet."""
    meta = raw.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"{path}: document {number}" + (f" ({shown(name)})" if isinstance(name, str) else "")


def _nearest(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"


def _read_as(path: Path, number: int, raw: Mapping[str, Any], skipped: list[str]) -> tuple[str, str] | None:
    """The kind and apiVersion of a document read here, or None for one that is skipped.

    daprd skips any document whose kind and apiVersion it does not read, typos
    included; here a `dapr.io` one stops the start-up, and others are listed in
    one warning for the file.
    """
    api_version, kind = raw.get("apiVersion"), raw.get("kind")
    for field, value in (("apiVersion", api_version), ("kind", kind)):
        if value is not None and not isinstance(value, str):
            raise ResourceError(
                f"{_where(path, number, raw)}: {field}: must be a string, not {type_name(value)}"
            )
    if kind == "Resiliency":  # daprd reads a Resiliency of any apiVersion (reference 7.3)
        return kind, api_version or ""
    if (api_version or "").partition("/")[0].lower() != "dapr.io":
        hint = f": a Dapr {kind} has apiVersion {_READ[kind][0]}" if kind in _READ else ""
        skipped.append(f"document {number} ({shown(api_version)} {shown(kind)}{hint})")
        return None
    assert api_version is not None
    if kind in _READ:
        if api_version in _READ[kind]:
            return kind, api_version
        problem = f"{shown(api_version)} is not a version of {kind} read here"
        raise ResourceError(
            f"{_where(path, number, raw)}: apiVersion: {problem}; {_nearest(api_version, _READ[kind])}"
        )
    if kind in _NOT_READ:
        logger.info("%s: document %d: %s; skipped", path, number, _NOT_READ[kind])
        return None
    known = sorted({*_READ, *_NOT_READ})
    if kind is None:
        raise ResourceError(f"{_where(path, number, raw)}: kind: is required ({', '.join(known)})")
    problem = f"{shown(kind)} is not a kind of Dapr resource read here"
    raise ResourceError(f"{_where(path, number, raw)}: kind: {problem}; {_nearest(kind, known)}")


def _validated(model: type[M], raw: Mapping[str, Any], path: Path, number: int, kind: str) -> M:
    try:
        return model.model_validate(raw, context=YAML)
    except ValidationError as exc:
        meta = raw.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        raise resource_error(exc, str(path), kind, name, number) from None


def _read(path: Path, kind: str, api_version: str, raw: Mapping[str, Any], number: int) -> Resource:
    source = str(path)
    if kind == "Resiliency":
        return read_resiliency(_validated(ResiliencyDocument, raw, path, number, kind), source)
    document = _validated(_MODELS[(kind, api_version)], raw, path, number, kind)
    if isinstance(document, ComponentDocument):
        return _component(document, source)
    if isinstance(document, HTTPEndpointDocument):
        return _http_endpoint(document, source)
    assert isinstance(document, (SubscriptionV1Document, SubscriptionV2Document))
    return _subscription(document, source)


def load_resources(
    paths: Sequence[str | os.PathLike[str]], *, app_id: str, namespace: str | None = None
) -> Resources:
    """Read every resource under `paths` that applies to `app_id`."""
    if namespace is None:
        namespace = os.environ.get("NAMESPACE") or None
    components: list[Component] = []
    subscriptions: list[DeclarativeSubscription] = []
    endpoints: list[HTTPEndpoint] = []
    resiliencies: list[ResiliencyResource] = []
    names: dict[tuple[str, str], str] = {}
    for path in _files(paths):
        skipped: list[str] = []
        for number, raw in enumerate(read_documents(path), start=1):
            if raw is None:
                continue
            if not isinstance(raw, dict):
                raise ResourceError(f"{path}: document {number} is not a mapping")
            read_as = _read_as(path, number, raw, skipped)
            if read_as is None:
                continue
            kind, api_version = read_as
            # The name and namespace first: a resource of another namespace is not read further.
            meta = _validated(Header, raw, path, number, kind).metadata
            if namespace and meta.namespace and meta.namespace != namespace:
                continue
            resource = _read(path, kind, api_version, raw, number)
            name = meta.name
            if resource.scopes and app_id not in resource.scopes:
                logger.debug("%s: %s %r is scoped to other apps", path, kind, name)
                continue
            if (kind, name) in names:
                first = names[(kind, name)]
                raise ResourceError(
                    f"{path}: {kind} {name!r}: metadata.name: a {kind} of this name is also in {first}"
                )
            names[(kind, name)] = str(path)
            if isinstance(resource, Component):
                components.append(resource)
            elif isinstance(resource, HTTPEndpoint):
                endpoints.append(resource)
            elif isinstance(resource, ResiliencyResource):
                resiliencies.append(resource)
            else:
                subscriptions.append(resource)
        if skipped:
            more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            logger.warning("%s: not Dapr resources, skipped: %s%s", path, "; ".join(skipped[:5]), more)
    return Resources(
        components=tuple(components),
        subscriptions=tuple(subscriptions),
        http_endpoints=tuple(endpoints),
        resiliencies=tuple(resiliencies),
    )
