"""Random and mutated answers fed to the client's connection, split at random places.

Whatever arrives, the connection ends in one of two ways: a well-formed answer (its
status, headers and body, the same as h11, an independent parser, reads when h11
accepts the bytes), or an `UpstreamError` (`MalformedAnswer`, or closed early).
Never another exception, never a hang on the event loop (hypothesis' deadline), and
never a connection kept for reuse after an error or after bytes it did not expect.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastapi_dapr.sidecar.http1 import Limits, UpstreamError, _Connection

pytestmark = pytest.mark.fuzz  # thousands of generated inputs: the full suite runs them, the fast loop not

VALID = [
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello",
    b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nx-t: 1\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nx-a: b\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nabc",
    b"HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\ncontent-length: 4\r\n\r\noops",
    b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
]


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.paused = False

    def write(self, data: Any) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_write_buffer_size(self) -> int:
        return 0


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "insert":
            data[at:at] = draw(
                st.binary(min_size=1, max_size=8) | st.sampled_from([b"\r\n", b" ", b"\x00", b";", b":"])
            )
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 4))]
        elif kind == "replace" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "duplicate":
            end = data.find(b"\r\n", at)
            if end > 0:
                line = data[data.rfind(b"\n", 0, at) + 1 : end + 2]
                data[end + 2 : end + 2] = line
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


answers = (
    mutated() | st.builds(lambda tail: b"HTTP/1.1 " + tail, st.binary(max_size=200)) | st.sampled_from(VALID)
)


def h11_reading(data: bytes) -> tuple[int, bytes] | None:
    """What h11 makes of `data` as the answer to a GET: (status, body), or None if it refuses."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    client.receive_data(b"")
    status, body = 0, b""
    try:
        while True:
            event = client.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return status, body
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return None
    except h11.RemoteProtocolError:
        return None


async def feed(data: bytes, splits: list[int], head_only: bool) -> tuple[Any, bool, bool]:
    """Feed `data` in pieces, then let the server close. The outcome ((status, headers, body)
    or the exception), whether the connection would have been reused (judged before the
    close), and whether an error found while feeding closed the connection."""
    connection = _Connection(Limits(line=1024, head=4096), "test")
    transport = FakeTransport()
    connection.connection_made(transport)
    answer = connection.start(head_only=head_only)
    points = sorted({point % (len(data) + 1) for point in splits} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        if transport.closing:
            break
        connection.data_received(data[start:end])  # must never raise
    failed_early = (answer.done() and answer.exception() is not None) or connection._error is not None
    closed_on_error = not failed_early or transport.closing
    reusable: bool | None = None
    if not answer.done():
        reusable = False
        connection.connection_lost(None)
        return answer.exception(), reusable, closed_on_error
    if answer.exception() is not None:
        return answer.exception(), connection.reusable and not transport.closing, closed_on_error
    status, headers = answer.result()
    body = b""
    try:
        while True:
            if not connection._body and not connection._body_done and connection._error is None:
                reusable = False  # nothing more will come: the server closes
                connection.connection_lost(None)
            chunk, last = await connection.read()
            body += chunk
            if last:
                break
    except UpstreamError as exc:
        return exc, False, closed_on_error
    if reusable is None:
        reusable = connection.reusable and not transport.closing
    return (status, headers, body), reusable, closed_on_error


@settings(max_examples=600, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(data=answers, splits=st.lists(st.integers(0, 10_000), max_size=6), head_only=st.booleans())
def test_every_answer_ends_well_formed_or_as_an_upstream_error(
    data: bytes, splits: list[int], head_only: bool
) -> None:
    outcome, reusable, closed_on_error = asyncio.run(feed(data, splits, head_only))
    assert closed_on_error  # a connection that broke a rule is closed at once
    if isinstance(outcome, BaseException):
        event(type(outcome).__name__)
        assert isinstance(outcome, UpstreamError), repr(outcome)
        assert not reusable
        return
    event("an answer, kept" if reusable else "an answer, connection closed")
    status, headers, body = outcome
    assert 200 <= status <= 999
    assert all(name == name.lower() and name for name, _ in headers)
    if head_only:
        assert body == b""
        return
    if reusable:
        # Kept only after an answer that ended where the bytes ended, read as h11 reads it.
        assert h11_reading(data) in (None, (status, body))


@settings(max_examples=200, deadline=1000)
@given(data=st.sampled_from(VALID), splits=st.lists(st.integers(0, 10_000), max_size=8))
def test_valid_answers_are_read_whole_whatever_the_splits(data: bytes, splits: list[int]) -> None:
    outcome, _, _ = asyncio.run(feed(data, splits, False))
    assert not isinstance(outcome, BaseException), outcome
    assert (outcome[0], outcome[2]) == h11_reading(data)
