"""Secret stores: the family of interchangeable parts behind a `secretstores.*` Component.

As with brokers, each `spec.type` names its class by import string, imported
only when a resource asks for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

__all__ = ["SECRET_STORE_TYPES", "SecretStore", "SecretStoreError", "load_secret_store_class"]

SECRET_STORE_TYPES: dict[str, str] = {
    "secretstores.local.env": "fastapi_dapr.secretstores.local:LocalEnvSecretStore",
    "secretstores.local.file": "fastapi_dapr.secretstores.local:LocalFileSecretStore",
}


class SecretStoreError(Exception):
    """The store cannot answer: a secret it does not have, a file it cannot read..."""


class SecretStore:
    """A secret store component instance."""

    type_name: str = ""
    metadata_keys: frozenset[str] | None = None
    """The metadata names this type knows; the runtime names any other one at start-up.
    None: not checked."""

    def __init__(self, name: str, metadata: Mapping[str, str]) -> None:
        self.name = name
        self.metadata = dict(metadata)

    async def start(self) -> None:
        """Load or connect; raise `SecretStoreError` (or `ValueError` for bad metadata)."""

    async def close(self) -> None:
        """Release what `start` took."""

    async def get_secret(self, name: str) -> dict[str, str]:
        """The values of secret `name`; `SecretStoreError` when there is no such secret."""
        raise NotImplementedError

    async def bulk_get(self) -> dict[str, dict[str, str]]:
        """Every secret, by name."""
        raise NotImplementedError


def load_secret_store_class(type_name: str) -> type[SecretStore]:
    """The class for a Component `spec.type`; `LookupError` if there is none."""
    try:
        target = SECRET_STORE_TYPES[type_name]
    except KeyError:
        raise LookupError(
            f"unsupported secret store type {type_name!r}; supported: {', '.join(sorted(SECRET_STORE_TYPES))}"
        ) from None
    module_name, _, attribute = target.partition(":")
    store_class: type[SecretStore] = getattr(importlib.import_module(module_name), attribute)
    return store_class
