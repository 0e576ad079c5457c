"""IP addresses as the sidecar reads them: literals in hosts and URLs, and loopback.

One reading for every caller; each says how lenient it is, as it was before: whether an
IPv6 address may be written in URL brackets (`[::1]`) and whether a zone (`%eth0`) is
cut off first. Python's `ipaddress` reads the rest strictly (no `127.1`, no leading
zeros, ASCII digits only).
"""

from __future__ import annotations

import functools
import ipaddress
from urllib.parse import urlsplit

__all__: list[str] = []

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def ip_literal(host: str, *, brackets: bool = False, zone: bool = False) -> IPAddress | None:
    """The IP address `host` writes; None when it writes none (a name, or anything else).

    `brackets`: brackets around it are dropped (`str.strip`'s reading: `[::1]`, also `[[::1`);
    `zone`: what follows a `%` is cut off first (an IPv4 address then takes one too)."""
    if brackets:
        host = host.strip("[]")
    if zone:
        host = host.split("%", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo's client, NAT64), which
    is where a connection to it ends up; `ip` itself when it carries none."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return embedded
    return ip


def is_loopback(host: str, *, brackets: bool = False) -> bool:
    """Whether `host` is a loopback IP address (a name is not, `localhost` neither)."""
    ip = ip_literal(host, brackets=brackets)
    return ip is not None and ip.is_loopback


@functools.lru_cache(maxsize=1024)
def names_this_machine(host: str) -> bool:
    """Whether a client's address or a `Host` names this machine: `localhost`, or a
    loopback address (a zone cut off, an IPv4-mapped one read as its IPv4 address)."""
    if host == "localhost":
        return True
    ip = ip_literal(host, zone=True)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is not None and ip.is_loopback


@functools.lru_cache(maxsize=1024)
def url_names_this_machine(url: str) -> bool:
    """Whether an Origin (`http://localhost:8000`) or `//Host` names this machine; one that
    cannot be read (`[`, an unclosed or invalid IPv6 address) does not."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return names_this_machine(host or "")
