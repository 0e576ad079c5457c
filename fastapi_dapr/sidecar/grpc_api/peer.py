"""The caller of a gRPC call, as grpcio names it: what the guard and the invocation read."""

from __future__ import annotations

import urllib.parse

__all__: list[str] = []


def peer_host(peer: str) -> str:
    """The address of a gRPC peer string (`ipv4:127.0.0.1:5000`, `ipv6:%5B::1%5D:5000`: grpc
    escapes an IPv6 peer's brackets as a URI does)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return urllib.parse.unquote(rest.rpartition(":")[0]).strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return ""  # unix sockets and the rest: not a loopback TCP peer
