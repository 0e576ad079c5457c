"""The components of one runtime: secret stores, pubsub brokers and HTTP endpoints.

Started from the resources in daprd's order (secret stores first, since the
others may read their metadata from one), and closed together. The runtime
and its publisher share the dictionaries kept here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._exceptions import ResourceError
from ..brokers import Broker, BrokerError, load_broker_class
from ..secretstores import SecretStore, SecretStoreError, load_secret_store_class
from .endpoints import ResolvedEndpoint, resolve_endpoint
from .metadata_names import PUBSUB_NAMES, MetadataNames
from .resources import Component, Resources
from .scopes import TopicScopes

if TYPE_CHECKING:
    from .metrics import Metrics

__all__: list[str] = []

logger = logging.getLogger("fastapi_dapr")

DEFAULT_PUBSUB = Component(
    name="pubsub", type="pubsub.in-memory", version="v1", metadata=(), source="<built-in default>"
)


class Components:
    """The started components of `resources`, by name, for the app `app_id`."""

    def __init__(self, resources: Resources, *, app_id: str, metrics: Metrics | None = None) -> None:
        self.resources = resources
        self.app_id = app_id
        self.metrics = metrics
        self.brokers: dict[str, Broker] = {}
        self.secret_stores: dict[str, SecretStore] = {}
        self.scopes: dict[str, TopicScopes] = {}
        self.http_endpoints: dict[str, ResolvedEndpoint] = {}

    def _pubsub_components(self) -> list[Component]:
        components = [c for c in self.resources.components if c.type.startswith("pubsub.")]
        return components or [DEFAULT_PUBSUB]

    async def _start_component(self, component: Component, make: Callable[[dict[str, str]], Any]) -> Any:
        """Create and start one component; None if it failed and may be skipped."""
        instance = None
        try:
            values = await self.resolve_metadata(component)
            instance = make(values)
            await asyncio.wait_for(instance.start(), component.init_timeout)
        except (
            LookupError,
            ImportError,
            ValueError,
            BrokerError,
            SecretStoreError,
            asyncio.TimeoutError,
        ) as exc:
            problem = str(exc) or type(exc).__name__
            if instance is not None:  # it may hold what it got before it failed
                try:
                    await instance.close()
                except Exception:
                    logger.exception("component %s did not close cleanly", component.name)
            if component.ignore_errors:
                logger.warning(
                    "%s: Component %r not started (ignoreErrors): %s",
                    component.source,
                    component.name,
                    problem,
                )
                return None
            raise ResourceError(f"{component.source}: Component {component.name!r}: spec: {problem}") from exc
        return instance

    async def resolve_metadata(self, component: Component) -> dict[str, str]:
        """The component's metadata, `secretKeyRef` values read from `auth.secretStore`."""
        values = component.values()
        for index, item in enumerate(component.metadata):
            if item.secret_name is None:
                continue
            field = f"spec.metadata[{index}].secretKeyRef"
            values[item.name] = await self.secret_value(
                component.secret_store,
                item.secret_name,
                item.secret_key or item.secret_name,
                where=f"{component.source}: Component {component.name!r}: {field}",
            )
        return values

    async def secret_value(self, store_name: str | None, secret: str, key: str, where: str) -> str:
        """One value of one secret, for a resource; `ResourceError` (naming `where`) if unavailable.

        daprd leaves such a reference empty with a warning, or parks the resource
        until the store appears; a reference that cannot be resolved stops the start here.
        """
        if not store_name:
            raise ResourceError(f"{where}: needs auth.secretStore to name the secret store")
        store = self.secret_stores.get(store_name)
        if store is None:
            raise ResourceError(f"{where}: secret store {store_name!r} is not loaded")
        try:
            data = await store.get_secret(secret)
        except SecretStoreError as exc:
            raise ResourceError(f"{where}: {exc}") from None
        if key not in data:
            raise ResourceError(f"{where}: secret {secret!r} has no key {key!r}")
        return data[key]

    def _secret_store_factory(self, component: Component) -> Callable[[dict[str, str]], SecretStore]:
        def make(values: dict[str, str]) -> SecretStore:
            store_class = load_secret_store_class(component.type)
            names = _names(component, values, store_class.metadata_keys, frozenset())
            try:
                return store_class(component.name, names.values)
            except ValueError as exc:
                raise ValueError(f"{exc}{names.hint()}") from exc

        return make

    def _broker_factory(self, component: Component) -> Callable[[dict[str, str]], Broker]:
        def make(values: dict[str, str]) -> Broker:
            broker_class = load_broker_class(component.type)
            names = _names(component, values, broker_class.metadata_keys, PUBSUB_NAMES)
            try:
                # Scopes that cannot be read refuse the component, as any bad metadata does.
                self.scopes[component.name] = TopicScopes.from_metadata(names.values, self.app_id)
                broker = broker_class(component.name, names.values, app_id=self.app_id)
            except ValueError as exc:
                raise ValueError(f"{exc}{names.hint()}") from exc
            broker.metrics = self.metrics
            return broker

        return make

    async def start(self) -> None:
        # Secret stores first, as daprd does: the other components may need them (reference 7.2).
        for component in self.resources.components:
            if component.type.startswith("secretstores."):
                store = await self._start_component(component, self._secret_store_factory(component))
                if store is not None:
                    self.secret_stores[component.name] = store
        for endpoint in self.resources.http_endpoints:
            self.http_endpoints[endpoint.name] = await resolve_endpoint(endpoint, self.secret_value)
        for component in self._pubsub_components():
            broker = await self._start_component(component, self._broker_factory(component))
            if broker is not None:
                self.brokers[component.name] = broker
            else:
                self.scopes.pop(component.name, None)
        for component in self.resources.components:
            if not component.type.startswith(("pubsub.", "secretstores.")):
                logger.info(
                    "%s: Component %r of type %s is not used by the embedded sidecar",
                    component.source,
                    component.name,
                    component.type,
                )

    async def close(self) -> None:
        components: list[Broker | SecretStore] = [*self.brokers.values(), *self.secret_stores.values()]
        for component in components:
            try:
                await component.close()
            except Exception:
                logger.exception("component %s did not close cleanly", component.name)
        self.brokers.clear()
        self.secret_stores.clear()


def _names(
    component: Component, values: dict[str, str], known: frozenset[str] | None, common: frozenset[str]
) -> MetadataNames:
    """`values` checked against the names the component's type knows (unchecked if it lists none)."""
    where = f"{component.source}: Component {component.name!r}: spec.metadata"
    if known is None:
        known = frozenset(values)
    return MetadataNames(values, known | common, where=where, type_name=component.type)
