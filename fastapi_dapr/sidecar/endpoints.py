"""HTTPEndpoint resources made ready for invocation: headers and TLS resolved (reference 6.4)."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Awaitable, Callable

from .._exceptions import ResourceError
from .._headers import NOT_SETTABLE, field_problem
from .._tls import load_client_certificate
from .resources import HTTPEndpoint, MetadataItem

__all__: list[str] = []

SecretReader = Callable[[str | None, str, str, str], Awaitable[str]]  # store, secret, key, where


@dataclasses.dataclass(frozen=True)
class ResolvedEndpoint:
    """An HTTPEndpoint with every value known: what the proxy needs to call it."""

    name: str
    base_url: str
    headers: tuple[tuple[str, str], ...]
    ssl_context: ssl.SSLContext | None
    source: str

    def __repr__(self) -> str:  # never print resolved header values: they may be secrets
        return f"ResolvedEndpoint(name={self.name!r}, base_url={self.base_url!r})"


def tls_context(
    root_ca: str | None, certificate: str | None, private_key: str | None
) -> ssl.SSLContext | None:
    """The client TLS of an endpoint, or None for the default trust store and no client cert.

    `root_ca` replaces the trust store (daprd builds a pool of that CA only);
    `certificate` and `private_key` together give mutual TLS. Raises `ValueError`.
    """
    if root_ca is None and certificate is None and private_key is None:
        return None
    if (certificate is None) != (private_key is None):
        # daprd silently ignores a certificate without its key: say so instead.
        raise ValueError("certificate and privateKey go together for mutual TLS")
    try:
        context = ssl.create_default_context(cadata=root_ca) if root_ca else ssl.create_default_context()
    except (ssl.SSLError, ValueError) as exc:
        raise ValueError(f"rootCA is not a PEM certificate: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate is not None and private_key is not None:
        load_client_certificate(context, certificate, private_key)
    return context


async def resolve_endpoint(endpoint: HTTPEndpoint, read_secret: SecretReader) -> ResolvedEndpoint:
    """Read every secret an endpoint refers to; `ResourceError` naming the field otherwise."""
    where = f"{endpoint.source}: HTTPEndpoint {endpoint.name!r}"

    async def value(item: MetadataItem | None, field: str) -> str | None:
        if item is None:
            return None
        if item.secret_name is None:
            return item.value or ""
        return await read_secret(
            endpoint.secret_store,
            item.secret_name,
            item.secret_key or item.secret_name,
            f"{where}: {field}.secretKeyRef",
        )

    headers = []
    for index, item in enumerate(endpoint.headers):
        resolved = await value(item, f"spec.headers[{index}]")
        problem = field_problem(item.name, resolved or "")
        if problem is None and item.name.lower() in NOT_SETTABLE:
            problem = f"{item.name!r} is set by the sidecar's HTTP client for each request"
        if problem is not None:  # the value may be a secret: never shown
            raise ResourceError(f"{where}: spec.headers[{index}]: {problem}")
        if resolved:  # daprd ignores empty values
            headers.append((item.name, resolved))
    try:
        context = tls_context(
            await value(endpoint.root_ca, "spec.clientTLS.rootCA"),
            await value(endpoint.certificate, "spec.clientTLS.certificate"),
            await value(endpoint.private_key, "spec.clientTLS.privateKey"),
        )
    except ValueError as exc:
        raise ResourceError(f"{where}: spec.clientTLS: {exc}") from None
    return ResolvedEndpoint(endpoint.name, endpoint.base_url, tuple(headers), context, endpoint.source)
