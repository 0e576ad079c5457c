"""The JSON Schemas of the resource kinds, generated from their models (published in docs/schemas/).

`python -m fastapi_dapr.sidecar.schemas DIR` writes them; `--check` says which
files of DIR differ from what the models give (the docs' test runs it). An
editor with a YAML language server checks a resources folder against
`resource.json`, which picks the schema of each document by its kind.

The files carry no `$id`: the documentation has no fixed address, so a `$ref`
between them resolves against wherever the files are (the published site, the
repository, or a copy written into the user's project).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .resiliency_resource import ResiliencyDocument
from .resource_fields import ResourceModel
from .resource_models import (
    ComponentDocument,
    ConfigurationDocument,
    HTTPEndpointDocument,
    SubscriptionV1Document,
    SubscriptionV2Document,
)

__all__: list[str] = []

DIALECT = "https://json-schema.org/draft/2020-12/schema"
KINDS: dict[str, tuple[str, str | None, type[ResourceModel]]] = {  # file: kind, apiVersion, model
    "component.json": ("Component", "dapr.io/v1alpha1", ComponentDocument),
    "subscription-v1alpha1.json": ("Subscription", "dapr.io/v1alpha1", SubscriptionV1Document),
    "subscription-v2alpha1.json": ("Subscription", "dapr.io/v2alpha1", SubscriptionV2Document),
    "resiliency.json": ("Resiliency", None, ResiliencyDocument),
    "httpendpoint.json": ("HTTPEndpoint", "dapr.io/v1alpha1", HTTPEndpointDocument),
    "configuration.json": ("Configuration", None, ConfigurationDocument),
}


def _tidy(node: Any) -> Any:
    """pydantic's schema, the same from pydantic 2.7 to today, without what says nothing.

    Generated titles (`Secretstore`), `null` as an alternative and as a default
    (an absent field), `allOf` around a single `$ref`, `enum` beside `const`
    and `additionalProperties: true` go.
    """
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _tidy(value) for key, value in node.items() if key != "title"}
    alternatives = [item for item in node.get("anyOf", ()) if item != {"type": "null"}]
    if "anyOf" in node and len(alternatives) == 1:
        del node["anyOf"]
        node = {**alternatives[0], **node}
    if len(node.get("allOf", ())) == 1 and "$ref" in node["allOf"][0]:
        node = {**node.pop("allOf")[0], **node}
    if "const" in node:
        node.pop("enum", None)
    if node.get("additionalProperties") is True:
        del node["additionalProperties"]
    if "default" in node and node["default"] is None:
        del node["default"]
    return node


def _schema(name: str, kind: str, api_version: str | None, model: type[ResourceModel]) -> dict[str, Any]:
    schema = _tidy(model.model_json_schema(by_alias=True, mode="validation"))
    version = f" ({api_version})" if api_version else ""
    if kind != "Configuration":  # null and absent are read as an empty mapping, which has no name
        schema["required"] = sorted({*schema.get("required", ()), "metadata"})
    return {"$schema": DIALECT, **schema, "title": f"Dapr {kind}{version}"}


def _any_resource() -> dict[str, Any]:
    """One schema for a folder: each document is checked against the schema of its kind and version."""
    cases = []
    for name, (kind, api_version, _model) in KINDS.items():
        case: dict[str, Any] = {"kind": {"const": kind}}
        if kind == "Subscription":
            case["apiVersion"] = {"const": api_version}
        cases.append({"if": {"properties": case, "required": list(case)}, "then": {"$ref": name}})
    return {
        "$schema": DIALECT,
        "title": "A Dapr resource read by fastapi-dapr",
        "description": "Documents of other kinds are not checked (daprd skips them).",
        "allOf": cases,
    }


def schemas() -> dict[str, dict[str, Any]]:
    """Each file of docs/schemas/ and its schema."""
    result = {name: _schema(name, *entry) for name, entry in KINDS.items()}
    result["resource.json"] = _any_resource()
    return result


def text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastapi_dapr.sidecar.schemas", description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    options = parser.parse_args(argv)
    stale = []
    for name, schema in schemas().items():
        path = options.folder / name
        if path.exists() and path.read_text(encoding="utf-8") == text(schema):
            continue
        stale.append(name)
        if not options.check:
            options.folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text(schema), encoding="utf-8")
    verb = "differ from the models" if options.check else "written"
    print(f"{options.folder}: {', '.join(stale) or 'none'} {verb}")
    return 1 if options.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
