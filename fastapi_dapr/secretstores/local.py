"""`secretstores.local.env` and `secretstores.local.file` (reference 7.4)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import SecretStore, SecretStoreError

__all__ = ["LocalEnvSecretStore", "LocalFileSecretStore"]

logger = logging.getLogger("fastapi_dapr")


def _denied(variable: str) -> bool:
    # The sidecar's own secrets are not handed out, as in daprd.
    return variable.startswith("DAPR_") or variable == "APP_API_TOKEN"


class LocalEnvSecretStore(SecretStore):
    """Secrets from environment variables, optionally under a `prefix`.

    As daprd's, a missing variable is the empty string, not an error.
    """

    type_name = "secretstores.local.env"
    metadata_keys = frozenset(("prefix",))

    def __init__(self, name: str, metadata: Mapping[str, str]) -> None:
        super().__init__(name, metadata)
        self.prefix = self.metadata.get("prefix", "")

    async def get_secret(self, name: str) -> dict[str, str]:
        variable = self.prefix + name
        if _denied(variable):
            logger.warning("secret store %s: %s is not handed out", self.name, variable)
            return {name: ""}
        return {name: os.environ.get(variable, "")}

    async def bulk_get(self) -> dict[str, dict[str, str]]:
        secrets = {}
        for variable, value in os.environ.items():
            if variable.startswith(self.prefix) and not _denied(variable):
                name = variable[len(self.prefix) :]
                secrets[name] = {name: value}
        return secrets


def _text(value: Any) -> str:
    # daprd formats non-string leaves with %s ("%!s(float64=42)"); JSON text here.
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value)


def _flatten(value: Any, separator: str, prefix: str = "") -> dict[str, str]:
    """Nested objects and arrays as `a:b:0` keys, as daprd flattens them."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(index), item) for index, item in enumerate(value))  # type: ignore[assignment]
    else:
        return {prefix: _text(value)}
    flat: dict[str, str] = {}
    for key, item in items:
        flat.update(_flatten(item, separator, f"{prefix}{separator}{key}" if prefix else str(key)))
    return flat


class LocalFileSecretStore(SecretStore):
    """Secrets from a JSON file (`secretsFile`, relative to the working directory).

    `nestedSeparator` (default `:`) joins the keys of nested objects;
    with `multiValued: true` each top-level key is one secret holding several values.
    """

    type_name = "secretstores.local.file"
    metadata_keys = frozenset(("secretsFile", "nestedSeparator", "multiValued"))

    def __init__(self, name: str, metadata: Mapping[str, str]) -> None:
        super().__init__(name, metadata)
        path = self.metadata.get("secretsFile", "")
        if not path:
            raise ValueError("secretsFile is required")
        self.path = Path(path)
        self.separator = self.metadata.get("nestedSeparator") or ":"
        multi = self.metadata.get("multiValued", "false").strip().lower()
        if multi not in ("true", "false", "1", "0"):
            raise ValueError(f"multiValued must be true or false, not {multi!r}")
        self.multi_valued = multi in ("true", "1")
        self._secrets: dict[str, dict[str, str]] = {}

    async def start(self) -> None:
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SecretStoreError(f"cannot read secrets file {self.path}: {exc}") from None
        if not isinstance(document, dict):
            raise SecretStoreError(f"secrets file {self.path} must hold a JSON object")
        if self.multi_valued:
            for key, value in document.items():
                if isinstance(value, str):
                    self._secrets[key] = {key: value}
                elif isinstance(value, dict):
                    self._secrets[key] = _flatten(value, self.separator)
        else:
            self._secrets = {key: {key: value} for key, value in _flatten(document, self.separator).items()}

    async def get_secret(self, name: str) -> dict[str, str]:
        try:
            return dict(self._secrets[name])
        except KeyError:
            raise SecretStoreError(f"secret {name} not found") from None

    async def bulk_get(self) -> dict[str, dict[str, str]]:
        return {name: dict(values) for name, values in self._secrets.items()}
