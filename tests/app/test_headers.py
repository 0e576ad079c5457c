"""The one rule for the headers that cross a hop (`fastapi_dapr._headers`)."""

from __future__ import annotations

from fastapi_dapr._headers import declared_length, forwardable, invocation_headers, response_headers
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
