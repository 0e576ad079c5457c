"""The one rule for the headers that cross a hop (`fastapi_dapr._headers`)."""

from __future__ import annotations

from fastapi_dapr._headers import (
    HOP_BY_HOP,
    declared_length,
    forwardable,
    invocation_headers,
    not_passed_on,
    response_headers,
)
from fastapi_dapr.sidecar.delivery import message_headers
from fastapi_dapr.sidecar.proxy import Target


def test_hop_by_hop_framing_and_connection_named_headers_are_dropped() -> None:
    raw = [
        (b"Host", b"app:3500"),
        (b"Content-Length", b"3"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"hop"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"Expect", b"100-continue"),
        (b"X-Kept", b"yes"),
    ]
    assert forwardable(raw) == [("x-kept", "yes")]
    assert forwardable([("X-Kept", "str pairs too")]) == [("x-kept", "str pairs too")]


def test_kept_names_stay_even_when_connection_names_them() -> None:
    raw = [(b"connection", b"content-length, host"), (b"content-length", b"3"), (b"host", b"h")]
    assert forwardable(raw, keep=frozenset({"content-length", "host"})) == [
        ("content-length", "3"),
        ("host", "h"),
    ]


def test_a_declared_length_is_one_valid_length() -> None:
    assert declared_length([(b"content-length", b" 12 ")]) == 12
    assert declared_length([("Content-Length", "12"), ("content-length", "12")]) == 12
    assert declared_length([(b"content-length", b"12"), (b"content-length", b"13")]) is None
    assert declared_length([(b"content-length", b"+12")]) is None
    assert declared_length([(b"content-length", "١٢".encode())]) is None  # digits, but not ASCII
    assert declared_length([]) is None


def test_dapr_headers_for_another_app() -> None:
    raw = [
        (b"dapr-api-token", b"secret"),
        (b"dapr-caller-app-id", b"spoofed"),
        (b"traceparent", b"unreadable"),
        (b"grpc-timeout", b"1S"),
        (b"x-trace-bin", b"..."),
        (b"x-tenant", b"from-caller"),
    ]
    target = Target("app", "billing", "http://127.0.0.1:1", headers=(("X-Tenant", "from-resource"),))
    assert invocation_headers(raw, target=target, identity=("orders", "default"), trace=None) == [
        ("dapr-grpc-timeout", "1S"),
        ("dapr-caller-app-id", "orders"),
        ("dapr-callee-app-id", "billing"),
        ("dapr-caller-namespace", "default"),
        ("x-tenant", "from-resource"),
    ]


def test_an_answer_without_a_body_loses_its_length() -> None:
    raw = [(b"content-length", b"10"), (b"etag", b"x"), (b"connection", b"close")]
    assert response_headers(raw, 304) == [(b"etag", b"x")]
    assert response_headers(raw, 200) == [(b"content-length", b"10"), (b"etag", b"x")]


def test_not_passed_on_is_the_one_hop_rule() -> None:
    assert not_passed_on(()) == HOP_BY_HOP  # the names themselves: test_every_user_drops_...
    dropped = not_passed_on(
        ["x-a ,X-B,, \tkeep-alive"], also=frozenset({"x-c"}), keep=frozenset({"x-a", "te"})
    )
    assert dropped - not_passed_on(()) == {"x-b", "x-c", ""}
    assert "x-a" not in dropped
    assert "te" not in dropped


def test_not_passed_on_takes_hostile_connection_headers() -> None:
    # Empty, repeated, huge and non-ASCII lists: nothing raises, only listed names go.
    huge = ",".join(f"x-{index}" for index in range(10_000))
    dropped = not_passed_on(["", ",", huge, "\xc9t\xc9", "A" * 100_000])
    assert {"", "x-0", "x-9999", "\xe9t\xe9", "a" * 100_000} <= dropped
    assert "x-10000" not in dropped
    assert forwardable([("Connection", huge), ("X-9999", "gone"), ("X-Kept", "kept")]) == [("x-kept", "kept")]


def test_every_user_drops_the_same_hop_by_hop_names() -> None:
    names = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"]
    names += ["http2-settings", "trailer", "proxy-authorization", "proxy-authenticate"]
    raw = [(name.encode(), b"v") for name in names] + [(b"x-kept", b"v")]
    assert forwardable(raw) == [("x-kept", "v")]
    assert response_headers(raw) == [(b"x-kept", b"v")]
    assert message_headers(dict.fromkeys([*(name.upper() for name in names), "X-Kept"], "v")) == [
        (b"x-kept", b"v")
    ]


def test_an_answer_s_header_bytes_pass_unchanged() -> None:
    raw = [
        (b"X-Latin", b"caf\xe9 \xff"),
        (b"Connection", b"X-\xc9"),
        (b"x-\xc9", b"kept: bytes lower-case ASCII only"),
    ]
    assert response_headers(raw) == [
        (b"x-latin", b"caf\xe9 \xff"),
        (b"x-\xc9", b"kept: bytes lower-case ASCII only"),
    ]
