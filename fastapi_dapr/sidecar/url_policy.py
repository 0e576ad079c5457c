"""The URL policy of service invocation: which URLs and addresses the proxy may reach (reference 6.4).

Server-side request forgery is checked where it can't be dodged: URL targets
must match `InvocationSettings.allowed_urls`, a literal IP must be an address
the settings allow, and every address a name resolves to is checked by the
pool that then connects to that very address (`proxy.address_check`: no second
lookup to rebind). A URL target's path must read the same on every server.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import unquote, urljoin, urlsplit

from .addresses import embedded_ipv4, ip_literal

__all__: list[str] = []

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class URL(NamedTuple):
    """An absolute http(s) URL, its path and query kept as escaped as they were written."""

    scheme: str
    host: str | None  # lower case, IPv6 without brackets
    port: int | None
    raw_path: str
    query: str

    @classmethod
    def parse(cls, text: str) -> URL:
        """Raises `ValueError` for a port that is not one."""
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        port = parts.port  # ValueError when out of range or not a number
        return cls(scheme, parts.hostname, port or _DEFAULT_PORTS.get(scheme), parts.path or "/", parts.query)

    @property
    def raw_path_qs(self) -> str:
        return self.raw_path + ("?" + self.query if self.query else "")

    def __str__(self) -> str:
        host = self.host or ""
        netloc = f"[{host}]" if ":" in host else host
        if self.port is not None and self.port != _DEFAULT_PORTS.get(self.scheme):
            netloc += f":{self.port}"
        return f"{self.scheme}://{netloc}{self.raw_path_qs}"

    def join(self, location: str) -> URL:
        return URL.parse(urljoin(str(self), location))


class Forbidden(Exception):
    """The invocation policy refuses this address or URL: 403."""


class BadTarget(Exception):
    """A URL target whose path servers read in different ways (dot segments, `..;`,
    an encoded `/` or `\\`): 400, before anything is sent."""


# -- the address policy ------------------------------------------------------


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why the proxy may not connect to `address`; None if it may."""
    literal = ip_literal(address, zone=True)
    if literal is None:
        return f"{address!r} is not an IP address"
    ip = embedded_ipv4(literal)
    if ip.is_unspecified or ip.is_multicast:
        return f"{ip} is not a unicast address"
    if ip.is_global or allow_private:
        return None
    if ip.is_loopback:
        kind = "loopback"
    elif ip.is_link_local:
        kind = "link-local (cloud metadata services live there)"
    elif ip.is_private:
        kind = "private"
    else:
        kind = "not public"
    hint = "set InvocationSettings(allow_private_addresses=True) to allow such targets"
    return f"{ip} is a {kind} address; {hint}"


@dataclasses.dataclass(frozen=True)
class _Prefix:
    scheme: str
    host: str
    port: int
    path: str


class UrlPolicy:
    """`InvocationSettings.allowed_urls`, and the address rule for literal IPs."""

    def __init__(self, allowed: Sequence[str], allow_private: bool) -> None:
        self.allow_private = allow_private
        self._hosts: set[str] = set()
        self._suffixes: list[str] = []
        self._prefixes: list[_Prefix] = []
        for entry in allowed:
            if "://" in entry:
                url = URL.parse(entry)
                if url.scheme not in ("http", "https") or not url.host or url.port is None:
                    raise ValueError(f"allowed_urls: {entry!r} is not an http:// or https:// URL prefix")
                path = normalised_path(url.raw_path)
                path = path if path.endswith("/") else path + "/"
                self._prefixes.append(_Prefix(url.scheme, url.host.lower(), url.port, path))
            elif entry.startswith("*."):
                self._suffixes.append(entry[1:].lower())
            elif entry and "/" not in entry:
                self._hosts.add(entry.lower().rstrip("."))
            else:
                raise ValueError(f"allowed_urls: {entry!r} is neither a host, a *.domain nor a URL prefix")

    def check(self, url: URL) -> None:
        """Raise `Forbidden` unless `url` is allowed (its name's addresses are checked on
        connect), `BadTarget` for a path servers could read outside an allowed prefix."""
        host = (url.host or "").lower().rstrip(".")
        if url.scheme not in ("http", "https") or not host:
            raise Forbidden(f"{url} is not an http:// or https:// URL")
        path_problem(url.raw_path)
        if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url.raw_path_qs):
            raise BadTarget(f"{url!s}: whitespace and control characters are refused in URL targets")
        if not self._allows(url, host):
            raise Forbidden(
                f"URL targets are refused unless allowed: add {host!r} or a URL prefix to "
                "InvocationSettings(allowed_urls=...), or declare an HTTPEndpoint resource"
            )
        if ip_literal(host, brackets=True, zone=True) is not None:
            problem = address_problem(host, self.allow_private)
            if problem is not None:
                raise Forbidden(problem)

    def _allows(self, url: URL, host: str) -> bool:
        if host in self._hosts or any(host.endswith(suffix) for suffix in self._suffixes):
            return True
        path = normalised_path(url.raw_path)
        path = path if path.endswith("/") else path + "/"
        return any(
            prefix.scheme == url.scheme
            and prefix.host == host
            and prefix.port == url.port
            and path.startswith(prefix.path)
            for prefix in self._prefixes
        )


def path_problem(raw_path: str) -> None:
    """Raise `BadTarget` for a path whose segments servers read in different ways: a dot
    segment however encoded (twice encoded too, or in full-width dots), one followed by `;`
    parameters (`..;`, read as `..` by Tomcat and others), an encoded `/`, `\\` or NUL
    (decoded by some servers, or the end of the path for others), a `\\`."""
    if "\\" in raw_path:
        raise BadTarget(f"{raw_path!r}: a backslash is refused in the path of URL targets")
    for segment in raw_path.split("/"):
        decoded = segment
        for _ in range(3):  # what a server that decodes once, twice, thrice would see
            if unicodedata.normalize("NFKC", decoded).split(";", 1)[0] in (".", ".."):
                raise BadTarget(f"{raw_path!r}: '.' and '..' path segments are refused in URL targets")
            if "%" not in decoded:
                break
            decoded = unquote(decoded)
            if "/" in decoded or "\\" in decoded or "\x00" in decoded:
                raise BadTarget(
                    f"{raw_path!r}: an encoded '/', '\\' or NUL is refused in the path of URL targets"
                )


def normalised_path(raw_path: str) -> str:
    """`raw_path` with RFC 3986's normalisation of escapes: unreserved characters decoded,
    other escapes in upper case (`/%7Eu` and `/~u` are one path)."""
    if "%" not in raw_path:
        return raw_path

    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _ESCAPE.sub(one, raw_path)
