"""A Dapr `Configuration` resource (`daprd --config FILE`), as far as the standalone sidecar reads it.

daprd reads one YAML document of kind `Configuration`. The standalone sidecar
applies none of its sections yet (tracing, metrics, middleware pipelines,
access control, features, API allow lists, secret scopes, name resolution...):
each one present is named in a warning, so nothing is ignored in silence.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .._exceptions import ResourceError
from .yaml_loader import read_documents

__all__: list[str] = []


@dataclasses.dataclass(frozen=True)
class Configuration:
    name: str
    source: str
    not_applied: tuple[str, ...]  # the `spec` sections the sidecar does not apply

    def warnings(self) -> list[str]:
        return [
            f"{self.source}: Configuration {self.name!r}: spec.{section} is not applied by the "
            "standalone sidecar"
            for section in self.not_applied
        ]


def load_configuration(path: str | os.PathLike[str]) -> Configuration:
    """Read a Configuration file; `ResourceError` naming the file when it is not one."""
    source = str(path)
    # daprd unmarshals the file once: the first document only.
    document = next(iter(read_documents(Path(path))), None)
    if not isinstance(document, dict) or document.get("kind") != "Configuration":
        raise ResourceError(f"{source}: is not a Dapr Configuration resource (kind: Configuration)")
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if name is not None and not isinstance(name, str):
        raise ResourceError(f"{source}: Configuration: metadata.name: must be a string")
    spec = document.get("spec") or {}
    if not isinstance(spec, dict):
        raise ResourceError(f"{source}: Configuration {name!r}: spec: must be a mapping")
    return Configuration(name=name or "", source=source, not_applied=tuple(str(key) for key in spec))
