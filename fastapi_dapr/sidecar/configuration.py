"""A Dapr `Configuration` resource (`daprd --config FILE`), as far as the standalone sidecar reads it.

Its document is checked as `resource_models.ConfigurationDocument`.

daprd reads one YAML document of kind `Configuration`. The standalone sidecar
applies none of its sections yet (tracing, metrics, middleware pipelines,
access control, features, API allow lists, secret scopes, name resolution...):
each one present is named in a warning, so nothing is ignored in silence.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pydantic import ValidationError

from .._exceptions import ResourceError
from .resource_fields import YAML, resource_error
from .resource_models import ConfigurationDocument
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
    raw = next(iter(read_documents(Path(path))), None)
    if not isinstance(raw, dict) or raw.get("kind") != "Configuration":
        raise ResourceError(f"{source}: is not a Dapr Configuration resource (kind: Configuration)")
    try:
        document = ConfigurationDocument.model_validate(raw, context=YAML)
    except ValidationError as exc:
        meta = raw.get("metadata")
        raise resource_error(
            exc, source, "Configuration", meta.get("name") if isinstance(meta, dict) else None, None
        ) from None
    return Configuration(
        name=document.metadata.name or "", source=source, not_applied=tuple(document.spec or ())
    )
