"""The JSON Schemas of the resource kinds: docs/schemas/ holds what the models give."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fastapi_dapr.sidecar.schemas import main, schemas, text

FOLDER = Path(__file__).parents[2] / "docs" / "schemas"


def test_the_committed_schemas_are_the_generated_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(path.name for path in FOLDER.glob("*.json")) == sorted(schemas())
    assert main([str(FOLDER), "--check"]) == 0, capsys.readouterr().out


def test_a_stale_or_missing_schema_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "schemas"
    shutil.copytree(FOLDER, folder)
    stale = json.loads((folder / "component.json").read_text())
    del stale["properties"]["scopes"]
    (folder / "component.json").write_text(text(stale))
    (folder / "resiliency.json").unlink()
    assert main([str(folder), "--check"]) == 1
    assert capsys.readouterr().out == f"{folder}: component.json, resiliency.json differ from the models\n"
    assert main([str(folder)]) == 0  # written again
    assert main([str(folder), "--check"]) == 0


def test_the_schema_of_a_folder_picks_each_kind() -> None:
    cases = schemas()["resource.json"]["allOf"]
    picked = {json.dumps(case["if"]["properties"], sort_keys=True): case["then"]["$ref"] for case in cases}
    assert picked[json.dumps({"kind": {"const": "Component"}})] == "component.json"
    key = json.dumps({"apiVersion": {"const": "dapr.io/v2alpha1"}, "kind": {"const": "Subscription"}})
    assert picked[key] == "subscription-v2alpha1.json"
    assert all(path.exists() for path in (FOLDER / ref for ref in picked.values()))


def test_fields_daprd_refuses_or_ignores() -> None:
    resiliency = schemas()["resiliency.json"]["$defs"]
    assert resiliency["RetryPolicyModel"]["additionalProperties"] is False  # unknown fields refused
    component = schemas()["component.json"]
    assert "additionalProperties" not in component["$defs"]["ComponentSpec"]  # ignored, as daprd
    assert component["properties"]["apiVersion"]["const"] == "dapr.io/v1alpha1"
    assert sorted(component["required"]) == ["apiVersion", "kind", "metadata"]
