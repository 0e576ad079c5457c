"""The one body reader of each kind and its one pair of exceptions (`sidecar.caller`)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from starlette.types import Message, Receive

from fastapi_dapr.sidecar.caller import (
    BodyTooLarge,
    ClientGone,
    LimitedReceive,
    RequestBody,
    declared_size,
    read_body,
    too_large_message,
)


def messages(*items: Message) -> Receive:
    queue = list(items)

    async def receive() -> Message:
        return queue.pop(0)

    return receive


def chunks(*parts: bytes) -> Iterable[Message]:
    for index, part in enumerate(parts):
        yield {"type": "http.request", "body": part, "more_body": index < len(parts) - 1}


GONE: Message = {"type": "http.disconnect"}


@pytest.mark.parametrize(
    ("given", "size"),
    [
        ("12", 12),
        (" 12\t", 12),
        ("0", 0),
        ("", None),
        ("+12", None),
        ("-1", None),
        ("1_0", None),
        ("1 2", None),
        ("\u00b2", None),  # str.isdigit takes it, int() does not
        ("\u0661\u0662", None),  # Arabic-Indic digits
        ("12\n", None),  # only space and tab are HTTP's whitespace
        ("9" * 400, int("9" * 400)),  # large, and refused by the limit, not by a crash
    ],
)
def test_a_declared_size_is_ascii_digits(given: str, size: int | None) -> None:
    assert declared_size({"content-length": given}) == size


async def test_read_body_reads_the_whole_body() -> None:
    assert await read_body(messages(*chunks(b"ab", b"", b"cd")), {}, 4) == b"abcd"
    assert await read_body(messages({"type": "http.request"}), {}, 0) == b""


async def test_read_body_refuses_a_declared_length_over_the_limit_before_reading() -> None:
    with pytest.raises(BodyTooLarge):
        await read_body(messages(), {"content-length": "5"}, 4)  # nothing to read: not read


async def test_read_body_counts_what_arrives_whatever_was_declared() -> None:
    with pytest.raises(BodyTooLarge):
        await read_body(messages(*chunks(b"abc", b"de")), {"content-length": "1"}, 4)


async def test_read_body_never_takes_a_cut_body_for_a_whole_one() -> None:
    with pytest.raises(ClientGone):
        await read_body(messages({"type": "http.request", "body": b"ab", "more_body": True}, GONE), {}, 10)


async def test_a_streamed_body_is_counted_and_its_end_told() -> None:
    ended: list[bool] = []
    receive = messages(*chunks(b"cd", b"", b"e"))
    body = RequestBody(receive, 5, prefix=b"ab", on_end=lambda: ended.append(True))
    assert [chunk async for chunk in body] == [b"ab", b"cd", b"e"]
    assert ended == [True]
    assert not body.gone
    assert not body.too_large


async def test_a_streamed_body_over_the_limit_or_cut_raises_and_says_so() -> None:
    over = RequestBody(messages(*chunks(b"abc", b"de")), 4)
    with pytest.raises(BodyTooLarge):
        _ = [chunk async for chunk in over]
    assert over.too_large
    assert not over.gone
    cut = RequestBody(messages({"type": "http.request", "body": b"a", "more_body": True}, GONE), None)
    with pytest.raises(ClientGone):
        _ = [chunk async for chunk in cut]
    assert cut.gone
    assert not cut.too_large


async def test_an_app_reading_past_the_limit_sees_its_caller_go() -> None:
    limited = LimitedReceive(messages(*chunks(b"abc", b"de", b"f")), 4)
    assert (await limited())["body"] == b"abc"
    assert await limited() == GONE
    assert limited.too_large


async def test_an_app_reading_within_the_limit_gets_every_message() -> None:
    limited = LimitedReceive(messages(*chunks(b"ab", b"cd"), GONE), 4)
    kinds = [(await limited())["type"] for _ in range(3)]
    assert kinds == ["http.request", "http.request", "http.disconnect"]
    assert not limited.too_large  # a real disconnect is not a body too large


def test_every_413_says_the_same() -> None:
    assert too_large_message(4) == "the request body is larger than the limit of 4 bytes"
