"""The one reading of IP addresses (`sidecar.addresses`), hostile hosts included."""

from __future__ import annotations

import ipaddress

import pytest

from fastapi_dapr.sidecar.addresses import (
    embedded_ipv4,
    ip_literal,
    is_loopback,
    names_this_machine,
    url_names_this_machine,
)

HOSTILE = [
    "",
    "[",
    "]",
    "[]",
    "%",
    "127.1",  # inet_aton would take it
    "0x7f.0.0.1",
    "0177.0.0.1",
    "127.000.0.1",
    " 127.0.0.1",
    "127.0.0.1 ",
    "127.0.0.1\x00",
    "\u0661\u0662\u0667.0.0.1",  # Arabic-Indic digits
    "127.0.0.1.",
    "localhost.",
    "LOCALHOST",
    "::1::",
    "1" * 10_000,
    "[" * 1000 + "x",
]


@pytest.mark.parametrize("host", HOSTILE)
def test_what_is_no_address_is_none_and_not_loopback(host: str) -> None:
    assert ip_literal(host, brackets=True, zone=True) is None
    assert not is_loopback(host, brackets=True)
    assert not names_this_machine(host)


@pytest.mark.parametrize(
    ("host", "plain", "bracketed", "zoned"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("[::1]", None, "::1", None),
        ("[[::1", None, "::1", None),  # str.strip's reading, as before
        ("fe80::1%eth0", "fe80::1%eth0", "fe80::1%eth0", "fe80::1"),  # ipaddress keeps a zone
        ("127.0.0.1%x", None, None, "127.0.0.1"),
        ("::1%", None, None, "::1"),  # an empty zone, cut off too  # only a zone cut off makes it one
        ("example.com", None, None, None),
    ],
)
def test_brackets_and_zones_are_each_caller_s_choice(
    host: str, plain: str | None, bracketed: str | None, zoned: str | None
) -> None:
    def shown(ip: object) -> str | None:
        return None if ip is None else str(ip)

    assert shown(ip_literal(host)) == plain
    assert shown(ip_literal(host, brackets=True)) == bracketed
    assert shown(ip_literal(host, zone=True)) == zoned


def test_loopback_is_an_address_not_a_name() -> None:
    assert is_loopback("127.0.0.2")
    assert is_loopback("::1")
    assert is_loopback("[::1]", brackets=True)
    assert not is_loopback("[::1]")
    assert not is_loopback("localhost")
    assert not is_loopback("::ffff:127.0.0.1")  # mapped: not loopback to the name registry
    assert not is_loopback("10.0.0.1")


def test_a_client_on_this_machine() -> None:
    assert names_this_machine("localhost")
    assert names_this_machine("127.0.0.1")
    assert names_this_machine("::1")
    assert names_this_machine("::1%lo")
    assert names_this_machine("::ffff:127.0.0.1")
    assert not names_this_machine("[::1]")  # a client address has no brackets
    assert not names_this_machine("192.168.1.1")
    assert url_names_this_machine("http://localhost:8000")
    assert url_names_this_machine("//[::1]:3500")
    assert url_names_this_machine("//LOCALHOST")  # urlsplit lower-cases the host
    assert not url_names_this_machine("http://[::1")
    assert not url_names_this_machine("http://evil.example")
    assert not url_names_this_machine("//127.0.0.1.nip.io")
    assert not url_names_this_machine("null")


@pytest.mark.parametrize(
    ("address", "carried"),
    [
        ("::ffff:10.0.0.1", "10.0.0.1"),  # mapped
        ("2002:a00:1::", "10.0.0.1"),  # 6to4
        ("64:ff9b::a00:1", "10.0.0.1"),  # NAT64
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1"),  # Teredo's client (obfuscated)
        ("2001:db8::1", "2001:db8::1"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_the_ipv4_address_an_ipv6_one_carries(address: str, carried: str) -> None:
    assert embedded_ipv4(ipaddress.ip_address(address)) == ipaddress.ip_address(carried)
