"""Dapr's YAML resources, read from the same folders daprd reads (reference 7).

Each loaded resource is a frozen dataclass; camelCase stays in this module
and in `_resiliency_resource.py`, which reads Resiliency resources; every field
is taken through `_document.Document`.
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
from typing import Any
from urllib.parse import urlsplit

from .._exceptions import ResourceError
from .._go import parse_duration
from .._match import match_problem
from .._subscription import BulkSubscribe
from .document import Document, check_length, dynamic_value, shown, type_name
from .resiliency import ResiliencyResource
from .resiliency_resource import read_resiliency
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
_DENIED_ENV = ("APP_API_TOKEN",)


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


@dataclasses.dataclass(frozen=True)
class Resources:
    components: tuple[Component, ...] = ()
    subscriptions: tuple[DeclarativeSubscription, ...] = ()
    http_endpoints: tuple[HTTPEndpoint, ...] = ()
    resiliencies: tuple[ResiliencyResource, ...] = ()


def _valid_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "%" not in name


def _read_env(doc: Document, field: str, variable: str) -> str:
    if variable.startswith("DAPR_") or variable in _DENIED_ENV or " " in variable:
        raise doc.error(
            field,
            f"envRef {shown(variable)} is not allowed "
            "(DAPR_* and APP_API_TOKEN are the sidecar's own secrets)",
        )
    return os.environ.get(variable, "")


def _metadata_items(
    doc: Document, spec: Mapping[str, Any], key: str = "metadata"
) -> tuple[MetadataItem, ...]:
    items = doc.get(spec, key, f"spec.{key}", list, default=[])
    result = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        field = f"spec.{key}[{index}]"
        if not isinstance(item, dict):
            raise doc.error(field, "must be a mapping with name and value")
        name = doc.get(item, "name", f"{field}.name", str, required=True)
        if name in seen:
            raise doc.error(f"{field}.name", f"{shown(name)} is given twice")
        seen.add(name)
        if "secretKeyRef" in item and item["secretKeyRef"] is not None:
            ref = doc.get(item, "secretKeyRef", f"{field}.secretKeyRef", dict)
            secret = doc.get(ref, "name", f"{field}.secretKeyRef.name", str, required=True)
            key = doc.get(ref, "key", f"{field}.secretKeyRef.key", str) or secret
            result.append(MetadataItem(name, secret_name=secret, secret_key=key))
        elif "value" in item:
            result.append(MetadataItem(name, value=dynamic_value(item["value"])))
        elif item.get("envRef") is not None:
            variable = doc.get(item, "envRef", f"{field}.envRef", str)
            result.append(
                MetadataItem(name, value=_read_env(doc, f"{field}.envRef", variable), env_ref=variable)
            )
        else:
            result.append(MetadataItem(name, value=""))
    return tuple(result)


def _component(doc: Document) -> Component:
    spec = doc.mapping(doc.raw, "spec", "spec")
    type_name = doc.get(spec, "type", "spec.type", str, required=True)
    init_timeout = 5.0
    timeout_text = doc.get(spec, "initTimeout", "spec.initTimeout", (str, int))
    if timeout_text is not None:
        try:
            init_timeout = parse_duration(str(timeout_text), integer_unit=1e-3)
        except ValueError:
            raise doc.error("spec.initTimeout", f"{shown(timeout_text)} is not a duration") from None
    auth = doc.mapping(doc.raw, "auth", "auth")
    return Component(
        name=doc.name,
        type=type_name,
        version=str(doc.get(spec, "version", "spec.version", (str, int), default="v1")),
        metadata=_metadata_items(doc, spec),
        source=doc.source,
        ignore_errors=doc.get(spec, "ignoreErrors", "spec.ignoreErrors", bool, default=False),
        init_timeout=init_timeout,
        secret_store=doc.get(auth, "secretStore", "auth.secretStore", str),
        scopes=doc.scopes(),
    )


def _tls_item(doc: Document, tls: Mapping[str, Any], key: str) -> MetadataItem | None:
    field = f"spec.clientTLS.{key}"
    raw = doc.get(tls, key, field, dict)
    if raw is None:
        return None
    if raw.get("secretKeyRef") is not None:
        ref = doc.get(raw, "secretKeyRef", f"{field}.secretKeyRef", dict)
        secret = doc.get(ref, "name", f"{field}.secretKeyRef.name", str, required=True)
        return MetadataItem(
            key,
            secret_name=secret,
            secret_key=doc.get(ref, "key", f"{field}.secretKeyRef.key", str) or secret,
        )
    value = doc.get(raw, "value", f"{field}.value", str)
    if not value:
        raise doc.error(field, "needs a value or a secretKeyRef")
    return MetadataItem(key, value=value)


def _base_url(doc: Document, spec: Mapping[str, Any]) -> str:
    """`spec.baseUrl`, refused at start-up when no call could ever use it."""
    base_url: str = doc.get(spec, "baseUrl", "spec.baseUrl", str, required=True)
    if any(char <= " " or char == "\x7f" for char in base_url):
        raise doc.error("spec.baseUrl", f"{shown(base_url)} has a space or a control character")
    try:
        parsed = urlsplit(base_url)
        port = parsed.port  # checked only when asked for: `:99999` and `:http` raise here
    except ValueError as exc:
        raise doc.error("spec.baseUrl", f"{shown(base_url)} is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise doc.error("spec.baseUrl", f"{shown(base_url)} is not an http:// or https:// URL with a host")
    if port == 0:
        raise doc.error("spec.baseUrl", f"{shown(base_url)}: port 0 cannot be called")
    return base_url


def _http_endpoint(doc: Document) -> HTTPEndpoint:
    spec = doc.mapping(doc.raw, "spec", "spec")
    base_url = _base_url(doc, spec)
    tls = doc.mapping(spec, "clientTLS", "spec.clientTLS")
    auth = doc.mapping(doc.raw, "auth", "auth")
    return HTTPEndpoint(
        name=doc.name,
        base_url=base_url,
        headers=_metadata_items(doc, spec, "headers"),
        source=doc.source,
        root_ca=_tls_item(doc, tls, "rootCA"),
        certificate=_tls_item(doc, tls, "certificate"),
        private_key=_tls_item(doc, tls, "privateKey"),
        secret_store=doc.get(auth, "secretStore", "auth.secretStore", str),
        scopes=doc.scopes(),
    )


def _bulk(doc: Document, spec: Mapping[str, Any]) -> BulkSubscribe | None:
    raw = doc.mapping(spec, "bulkSubscribe", "spec.bulkSubscribe")
    if not raw or not doc.get(raw, "enabled", "spec.bulkSubscribe.enabled", bool, default=False):
        return None
    count = doc.get(raw, "maxMessagesCount", "spec.bulkSubscribe.maxMessagesCount", int) or 100
    wait = doc.get(raw, "maxAwaitDurationMs", "spec.bulkSubscribe.maxAwaitDurationMs", int) or 1000
    try:
        return BulkSubscribe(max_messages_count=count, max_await_duration_ms=wait)
    except ValueError as exc:
        raise doc.error("spec.bulkSubscribe", str(exc)) from None


def _subscription(doc: Document, api_version: str) -> DeclarativeSubscription:
    spec = doc.mapping(doc.raw, "spec", "spec")
    rules: list[tuple[str, str]] = []
    default: str | None
    if api_version == "dapr.io/v1alpha1":
        default = doc.get(spec, "route", "spec.route", str) or None
    else:
        routes = doc.mapping(spec, "routes", "spec.routes")
        for index, rule in enumerate(doc.get(routes, "rules", "spec.routes.rules", list, default=[])):
            field = f"spec.routes.rules[{index}]"
            if not isinstance(rule, dict):
                raise doc.error(field, "must be a mapping with match and path")
            match = doc.get(rule, "match", f"{field}.match", str, default="")
            path = doc.get(rule, "path", f"{field}.path", str, required=True)
            check_length(doc, match, f"{field}.match")
            problem = match_problem(match)
            if problem is not None:
                raise doc.error(f"{field}.match", f"{shown(match)} {problem}")
            rules.append((match, path))
        default = doc.get(routes, "default", "spec.routes.default", str) or None
    return DeclarativeSubscription(
        name=doc.name,
        pubsub=doc.get(spec, "pubsubname", "spec.pubsubname", str, required=True),
        topic=doc.get(spec, "topic", "spec.topic", str, required=True),
        rules=tuple(rules),
        default=default,
        metadata=MappingProxyType(doc.string_map(spec, "metadata", "spec.metadata")),
        dead_letter_topic=doc.get(spec, "deadLetterTopic", "spec.deadLetterTopic", str) or None,
        bulk=_bulk(doc, spec),
        source=doc.source,
        scopes=doc.scopes(),
    )


def _files(paths: Sequence[str | os.PathLike[str]]) -> Iterable[Path]:
    for entry in paths:
        folder = Path(entry)
        if not folder.is_dir():
            raise ResourceError(f"{folder}: the resources path is not a folder")
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


def _document(path: Path, number: int, kind: str, raw: Mapping[str, Any]) -> Document:
    meta = raw.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise ResourceError(
            f"{path}: {kind} in document {number}: metadata: must be a mapping, not {type_name(meta)}"
        )
    name = meta.get("name") if meta else None
    if not isinstance(name, str):
        problem = "is required" if name is None else f"must be a string, not {type_name(name)}"
        raise ResourceError(f"{path}: {kind} in document {number}: metadata.name: {problem}")
    doc = Document(str(path), kind, name, raw)
    if not _valid_name(name):
        raise doc.error("metadata.name", "must be a name without '/' or '%' (not '.' or '..')")
    doc.get(meta or {}, "namespace", "metadata.namespace", str)
    return doc


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
            doc = _document(path, number, kind, raw)
            name = doc.name
            doc_namespace = raw["metadata"].get("namespace")
            if namespace and doc_namespace and doc_namespace != namespace:
                continue
            resource: Component | DeclarativeSubscription | HTTPEndpoint | ResiliencyResource
            if kind == "Component":
                resource = _component(doc)
            elif kind == "HTTPEndpoint":
                resource = _http_endpoint(doc)
            elif kind == "Resiliency":
                resource = read_resiliency(doc)
            else:
                resource = _subscription(doc, api_version)
            if resource.scopes and app_id not in resource.scopes:
                logger.debug("%s: %s %r is scoped to other apps", path, kind, name)
                continue
            if (kind, name) in names:
                first = names[(kind, name)]
                raise doc.error("metadata.name", f"a {kind} of this name is also in {first}")
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
