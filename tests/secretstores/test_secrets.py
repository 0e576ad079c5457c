"""Secret stores: secretstores.local.file and .local.env, the secrets API, and secretKeyRef
in components (reference 7.4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_dapr import Dapr, ResourceError
from fastapi_dapr.testing import DaprTestClient

SECRETS = {
    "db": {"user": "admin", "hosts": ["a", "b"], "port": 5432, "tls": True, "none": None},
    "token": "t0ken",
}


def resources(tmp_path: Path, *documents: str, secrets: object = SECRETS) -> Path:
    (tmp_path / "secrets.json").write_text(json.dumps(secrets))
    folder = tmp_path / "resources"
    folder.mkdir()
    (folder / "all.yaml").write_text("\n---\n".join(documents))
    return folder


def file_store(tmp_path: Path, name: str = "files", extra: str = "") -> str:
    return f"""apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: {name}}}
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - {{name: secretsFile, value: "{tmp_path / "secrets.json"}"}}
{extra}"""


def client_for(folder: Path) -> DaprTestClient:
    app = FastAPI()
    Dapr(app, resources_path=folder)
    return DaprTestClient(app)


def test_file_store_flattens_nested_values(tmp_path: Path) -> None:
    with client_for(resources(tmp_path, file_store(tmp_path))) as client:
        assert client.get("/v1.0/secrets/files/token").json() == {"token": "t0ken"}
        assert client.get("/v1.0/secrets/files/db:user").json() == {"db:user": "admin"}
        assert client.get("/v1.0/secrets/files/db:hosts:1").json() == {"db:hosts:1": "b"}
        # JSON text for numbers and booleans, where daprd writes "%!s(float64=5432)".
        assert client.get("/v1.0/secrets/files/db:port").json() == {"db:port": "5432"}
        assert client.get("/v1.0/secrets/files/db:tls").json() == {"db:tls": "true"}
        assert client.get("/v1.0/secrets/files/db:none").json() == {"db:none": ""}
        bulk = client.get("/v1.0/secrets/files/bulk").json()
        assert bulk["token"] == {"token": "t0ken"}
        assert bulk["db:hosts:0"] == {"db:hosts:0": "a"}


def test_file_store_separator_and_multi_valued(tmp_path: Path) -> None:
    docs = [
        file_store(tmp_path, "dotted", "  - {name: nestedSeparator, value: .}"),
        file_store(tmp_path, "multi", "  - {name: multiValued, value: 'true'}"),
    ]
    with client_for(resources(tmp_path, *docs)) as client:
        assert client.get("/v1.0/secrets/dotted/db.user").json() == {"db.user": "admin"}
        assert client.get("/v1.0/secrets/multi/db").json() == {
            "user": "admin",
            "hosts:0": "a",
            "hosts:1": "b",
            "port": "5432",
            "tls": "true",
            "none": "",
        }
        assert client.get("/v1.0/secrets/multi/token").json() == {"token": "t0ken"}


def test_env_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_SECRET_one", "1")
    monkeypatch.setenv("DAPR_API_TOKEN_x", "never")
    env = (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: env}\n"
        "spec:\n  type: secretstores.local.env\n  version: v1\n  metadata:\n"
        "  - {name: prefix, value: APP_SECRET_}\n"
    )
    plain = (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: plain}\n"
        "spec: {type: secretstores.local.env, version: v1}\n"
    )
    with client_for(resources(tmp_path, env, plain)) as client:
        assert client.get("/v1.0/secrets/env/one").json() == {"one": "1"}
        assert client.get("/v1.0/secrets/env/missing").json() == {"missing": ""}  # as daprd
        assert client.get("/v1.0/secrets/env/bulk").json() == {"one": {"one": "1"}}
        # The sidecar's own secrets are never handed out.
        assert client.get("/v1.0/secrets/plain/DAPR_API_TOKEN_x").json() == {"DAPR_API_TOKEN_x": ""}
        assert "DAPR_API_TOKEN_x" not in client.get("/v1.0/secrets/plain/bulk").json()


def test_secrets_api_errors(tmp_path: Path) -> None:
    app = FastAPI()
    Dapr(app)
    with DaprTestClient(app) as client:
        answer = client.get("/v1.0/secrets/files/token")
        assert answer.status_code == 500
        assert answer.json() == {
            "errorCode": "ERR_SECRET_STORES_NOT_CONFIGURED",
            "message": "secret store is not configured",
        }
    with client_for(resources(tmp_path, file_store(tmp_path))) as client:
        answer = client.get("/v1.0/secrets/nope/token")
        assert answer.status_code == 401
        assert answer.json() == {
            "errorCode": "ERR_SECRET_STORE_NOT_FOUND",
            "message": "failed finding secret store with key nope",
        }
        answer = client.get("/v1.0/secrets/files/absent")
        assert answer.status_code == 500
        assert answer.json() == {
            "errorCode": "ERR_SECRET_GET",
            "message": "failed getting secret with key absent from secret store files: "
            "secret absent not found",
        }
        assert client.get("/v1.0/secrets/files/a/b").status_code == 404


def test_secrets_api_refuses_remote_clients(tmp_path: Path) -> None:
    app = FastAPI()
    Dapr(app, resources_path=resources(tmp_path, file_store(tmp_path)), api_token="")
    with TestClient(app, client=("192.0.2.1", 1000)) as remote:
        assert remote.get("/v1.0/secrets/files/token").status_code == 403


PUBSUB_WITH_SECRET = """apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec:
  type: pubsub.in-memory
  version: v1
  metadata:
  - name: maxQueueLength
    secretKeyRef: {name: queue, key: length}
"""


def test_component_secret_key_ref(tmp_path: Path) -> None:
    multi_valued = file_store(tmp_path, extra="  - {name: multiValued, value: 'true'}")
    folder = resources(
        tmp_path,
        multi_valued,
        PUBSUB_WITH_SECRET + "auth: {secretStore: files}\n",
        secrets={"queue": {"length": "7"}},
    )
    with client_for(folder) as client:
        runtime = client.dapr.backend.running()
        assert runtime.brokers["pubsub"].capacity == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        ("", "needs auth.secretStore"),
        ("auth: {secretStore: elsewhere}\n", "secret store 'elsewhere' is not loaded"),
        ("auth: {secretStore: files}\n", "has no key 'length'"),
    ],
)
def test_component_secret_that_cannot_be_resolved(tmp_path: Path, auth: str, problem: str) -> None:
    folder = resources(tmp_path, file_store(tmp_path), PUBSUB_WITH_SECRET + auth, secrets={"queue": "7"})
    app = FastAPI()
    Dapr(app, resources_path=folder)
    with pytest.raises(ResourceError) as info, DaprTestClient(app):
        pass
    message = str(info.value)
    assert "Component 'pubsub': spec.metadata[0].secretKeyRef" in message
    assert problem in message


def test_unreadable_secrets_file_stops_the_start(tmp_path: Path) -> None:
    folder = resources(tmp_path, file_store(tmp_path))
    (tmp_path / "secrets.json").write_text("[1, 2]")
    app = FastAPI()
    Dapr(app, resources_path=folder)
    with (
        pytest.raises(
            ResourceError, match=r"Component 'files': spec: secrets file .* must hold a JSON object"
        ),
        DaprTestClient(app),
    ):
        pass
