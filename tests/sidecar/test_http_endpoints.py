"""HTTPEndpoint resources: loaded, headers and TLS resolved from values, env and secret stores."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from fastapi import FastAPI

from fastapi_dapr import Dapr, ResourceError
from fastapi_dapr.sidecar.resources import load_resources
from fastapi_dapr.testing import DaprTestClient

from ..certs import CertificateAuthority


def endpoint(name: str, spec: str, extra: str = "") -> str:
    header = f"apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata: {{name: {name}}}\n"
    return f"{header}spec:\n{spec}\n{extra}"


def write(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "endpoints.yaml"
    path.write_text(text)
    return path


def test_endpoint_is_loaded_and_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = CertificateAuthority()
    client_pair = ca.issue("fastapi-dapr client", server=False)
    (tmp_path / "secrets.json").write_text(
        json.dumps(
            {
                "api-token": "Bearer s3cret",
                "ca": ca.pem,
                "client-cert": client_pair.certificate,
                "client-key": client_pair.private_key,
            }
        )
    )
    monkeypatch.setenv("TENANT", "acme")
    store = (
        f"apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: files}}\n"
        f"spec:\n  type: secretstores.local.file\n  version: v1\n  metadata:\n"
        f"  - {{name: secretsFile, value: '{tmp_path / 'secrets.json'}'}}\n"
    )
    spec = """  baseUrl: https://127.0.0.1:8443/api
  headers:
  - {name: Accept-Language, value: en-US}
  - {name: Authorization, secretKeyRef: {name: api-token}}
  - {name: X-Tenant, envRef: TENANT}
  - {name: X-Empty, value: ""}
  clientTLS:
    rootCA: {secretKeyRef: {name: ca}}
    certificate: {secretKeyRef: {name: client-cert}}
    privateKey: {secretKeyRef: {name: client-key}}"""
    folder = tmp_path / "resources"
    write(folder, store + "---\n" + endpoint("billing.v2", spec, "auth: {secretStore: files}"))
    app = FastAPI()
    Dapr(app, app_id="me", resources_path=folder)
    with DaprTestClient(app) as client:
        resolved = client.dapr.backend.running().http_endpoints["billing.v2"]
        assert client.get("/v1.0/metadata").json()["httpEndpoints"] == [{"name": "billing.v2"}]
    assert resolved.base_url == "https://127.0.0.1:8443/api"
    assert resolved.headers == (
        ("Accept-Language", "en-US"),
        ("Authorization", "Bearer s3cret"),
        ("X-Tenant", "acme"),
    )
    assert "s3cret" not in repr(resolved)
    assert resolved.ssl_context is not None
    assert resolved.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    # The resource's CA replaces the trust store: it is the only one.
    (only_ca,) = resolved.ssl_context.get_ca_certs()
    assert dict(x[0] for x in only_ca["subject"])["commonName"] == "fastapi-dapr test CA"


def test_scoped_endpoints(tmp_path: Path) -> None:
    write(
        tmp_path,
        endpoint("mine", "  baseUrl: http://a", "scopes: [me]")
        + "\n---\n"
        + endpoint("theirs", "  baseUrl: http://b", "scopes: [other]"),
    )
    assert [e.name for e in load_resources([tmp_path], app_id="me").http_endpoints] == ["mine"]


@pytest.mark.parametrize(
    ("spec", "field", "problem"),
    [
        ("  headers: []", "spec.baseUrl", "is required"),
        ("  baseUrl: ftp://files", "spec.baseUrl", "is not an http:// or https:// URL"),
        ("  baseUrl: http://", "spec.baseUrl", "with a host"),
        ("  baseUrl: http://a\n  headers: [{value: x}]", "spec.headers[0].name", "is required"),
        (
            "  baseUrl: http://a\n  clientTLS: {rootCA: {}}",
            "spec.clientTLS.rootCA",
            "needs a value or a secretKeyRef",
        ),
    ],
)
def test_broken_endpoints(tmp_path: Path, spec: str, field: str, problem: str) -> None:
    path = write(tmp_path, endpoint("e", spec))
    with pytest.raises(ResourceError) as info:
        load_resources([tmp_path], app_id="me")
    assert str(info.value).startswith(f"{path}: HTTPEndpoint 'e': {field}: ")
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ("rootCA: {value: not a certificate}", "rootCA is not a PEM certificate"),
        ("certificate: {value: x}", "certificate and privateKey go together"),
    ],
)
def test_bad_tls_stops_the_start(tmp_path: Path, tls: str, problem: str) -> None:
    path = write(tmp_path, endpoint("e", f"  baseUrl: https://a\n  clientTLS: {{{tls}}}"))
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with pytest.raises(ResourceError) as info, DaprTestClient(app):
        pass
    assert str(info.value).startswith(f"{path}: HTTPEndpoint 'e': spec.clientTLS: ")
    assert problem in str(info.value)


def test_mismatched_key_pair_stops_the_start(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    one, two = ca.issue("one", server=False), ca.issue("two", server=False)
    cert = json.dumps(one.certificate)
    key = json.dumps(two.private_key)
    write(
        tmp_path,
        endpoint(
            "e",
            f"  baseUrl: https://a\n  clientTLS:\n    certificate: {{value: {cert}}}\n"
            f"    privateKey: {{value: {key}}}",
        ),
    )
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with pytest.raises(ResourceError, match="not a PEM key pair"), DaprTestClient(app):
        pass


def test_encrypted_private_key_is_refused_not_prompted_for(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    ca = CertificateAuthority()
    pair = ca.issue("client", server=False)
    key = serialization.load_pem_private_key(pair.private_key.encode(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()
    write(
        tmp_path,
        endpoint(
            "e",
            f"  baseUrl: https://a\n  clientTLS:\n"
            f"    certificate: {{value: {json.dumps(pair.certificate)}}}\n"
            f"    privateKey: {{value: {json.dumps(encrypted)}}}",
        ),
    )
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with (
        pytest.raises(ResourceError, match=r"HTTPEndpoint 'e': spec\.clientTLS: privateKey is encrypted"),
        DaprTestClient(app),
    ):
        pass


def test_resource_values_are_not_in_reprs(tmp_path: Path) -> None:
    write(
        tmp_path,
        endpoint("e", "  baseUrl: http://a\n  headers: [{name: Authorization, value: Bearer s3cret}]"),
    )
    (loaded,) = load_resources([tmp_path], app_id="me").http_endpoints
    assert "s3cret" not in repr(loaded)


def test_header_secret_without_store(tmp_path: Path) -> None:
    write(tmp_path, endpoint("e", "  baseUrl: http://a\n  headers: [{name: A, secretKeyRef: {name: s}}]"))
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with (
        pytest.raises(ResourceError, match=r"HTTPEndpoint 'e': spec.headers\[0\].secretKeyRef: needs auth"),
        DaprTestClient(app),
    ):
        pass


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ('{name: "X A", value: v}', "is not an HTTP token"),
        ('{name: "X:A", value: v}', "is not an HTTP token"),
        ('{name: X-A, value: "line\\r\\nx-injected: 1"}', "control character"),
        ('{name: X-A, value: "nul\\0"}', "control character"),
        ("{name: Host, value: elsewhere}", "set by the sidecar's HTTP client"),
        ("{name: Content-Length, value: '5'}", "set by the sidecar's HTTP client"),
        ("{name: Transfer-Encoding, value: chunked}", "set by the sidecar's HTTP client"),
        ("{name: Connection, value: close}", "set by the sidecar's HTTP client"),
    ],
)
def test_a_header_that_cannot_be_sent_stops_the_start(tmp_path: Path, header: str, problem: str) -> None:
    path = write(tmp_path, endpoint("e", f"  baseUrl: http://a\n  headers: [{header}]"))
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with pytest.raises(ResourceError) as info, DaprTestClient(app):
        pass
    assert str(info.value).startswith(f"{path}: HTTPEndpoint 'e': spec.headers[0]: ")
    assert problem in str(info.value)
    assert "injected" not in str(info.value)  # a value may be a secret: never shown
