"""The standalone sidecar's parts, in process: reading an app's `GET /dapr/subscribe` answer
(reference 2.1) and the name-resolution file."""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message

from fastapi_dapr import BulkSubscribe, SubscriptionError
from fastapi_dapr._subscription import parse_subscribe_answer
from fastapi_dapr.sidecar.app_channel import AppChannel
from fastapi_dapr.sidecar.delivery import message_headers
from fastapi_dapr.sidecar.name_resolution import NameResolutionError, NameResolutionFile, Registration
from fastapi_dapr.sidecar.standalone import SidecarOptions, StandaloneSidecar


def parse(value: object) -> tuple[list[tuple[object, ...]], list[str]]:
    found, warnings = parse_subscribe_answer(json.dumps(value).encode())
    return [
        (s.pubsub, s.topic, s.rules, s.default, s.dead_letter_topic, dict(s.metadata), s.bulk) for s in found
    ], warnings


def test_v1_and_v2_items_are_read_as_daprd_reads_them() -> None:
    found, warnings = parse(
        [
            {"pubsubname": "p", "topic": "a", "route": "/a"},
            {
                "PubSubName": "p",  # Go matches names case-insensitively
                "Topic": "b",
                "route": "/ignored",  # routes.default wins over route
                "routes": {"rules": [{"match": "event.type == 'x'", "path": "/x"}], "default": "/b"},
                "deadLetterTopic": "dead",
                "metadata": {"rawPayload": "true"},
                "bulkSubscribe": {"enabled": True, "maxMessagesCount": 5},
            },
            {"pubsubname": "p", "topic": "c", "routes": {"rules": [{"match": "", "path": "/c"}]}},
        ]
    )
    assert warnings == []
    assert found == [
        ("p", "a", (), "/a", None, {}, None),
        (
            "p",
            "b",
            (("event.type == 'x'", "/x"),),
            "/b",
            "dead",
            {"rawPayload": "true"},
            BulkSubscribe(5, 1000),
        ),
        ("p", "c", (("", "/c"),), None, None, {}, None),
    ]


def test_items_daprd_leaves_out_are_left_out_with_a_warning() -> None:
    found, warnings = parse(
        [
            {"pubsubname": "p", "topic": "a"},  # no route at all
            {"pubsubname": "p", "topic": "b", "route": "/b", "bulkSubscribe": {"enabled": False}},
            {"pubsubname": "p", "topic": "d", "route": "/d"},
            {"pubsubname": "p", "topic": "b", "route": "/again"},
            {"topic": "c", "route": "/c"},
            {"pubsubname": "p", "topic": "b", "route": "/last"},
        ]
    )
    # A repeated pubsub and topic: daprd keeps the last one, in the first one's place.
    assert [item[:4] for item in found] == [("p", "b", (), "/last"), ("p", "d", (), "/d")]
    assert warnings == [
        "item 0: no route and no routing rule: left out",
        "item 3: a second subscription to pubsub 'p' topic 'b': replaces item 1",
        "item 4: pubsubname and topic are required: left out",
        "item 5: a second subscription to pubsub 'p' topic 'b': replaces item 3",
    ]


@pytest.mark.parametrize("body", [b"", b"  ", b"null", b"\nnull trailing"])
def test_an_empty_answer_is_no_subscriptions(body: bytes) -> None:
    assert parse_subscribe_answer(body) == ([], [])


def test_what_follows_the_first_json_value_is_not_read() -> None:
    # Go's json.Decoder reads one value: trailing data (a second value, a newline) is ignored.
    found, _ = parse_subscribe_answer(b' [{"pubsubname": "p", "topic": "t", "route": "/t"}]\n{"x": 1} junk')
    assert [(s.pubsub, s.topic, s.default) for s in found] == [("p", "t", "/t")]


@pytest.mark.parametrize(
    ("count", "wait", "expected"), [(-5, -1, (100, 1000)), (0, 0, (100, 1000)), (7, 9, (7, 9))]
)
def test_bulk_counts_of_zero_or_less_are_daprds_defaults(
    count: int, wait: int, expected: tuple[int, int]
) -> None:
    # Go's int32 takes a negative number; daprd's bulk subscriber then uses its default.
    bulk = {"enabled": True, "maxMessagesCount": count, "maxAwaitDurationMs": wait}
    found, _ = parse([{"pubsubname": "p", "topic": "t", "route": "/t", "bulkSubscribe": bulk}])
    assert found[0][6] == BulkSubscribe(*expected)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not JSON"),
        (b'{"pubsubname": "p"}', "must be a JSON list"),
        (b'["x"]', "item 0: must be an object"),
        (
            b'[{"pubsubname": "p", "topic": "t", "route": "/t", "metadata": {"rawPayload": true}}]',
            "must be a string",
        ),
        (b'[{"pubsubname": "p", "topic": "t", "route": 7}]', "item 0.route: must be a string"),
        (
            b'[{"pubsubname": "p", "topic": "t", "routes": {"rules": [{"match": "(((", "path": "/x"}]}}]',
            "CEL",
        ),
        (
            b'[{"pubsubname": "p", "topic": "t", "route": "/t", "bulkSubscribe": {"enabled": "yes"}}]',
            "enabled",
        ),
        (
            b'[{"pubsubname": "p", "topic": "t", "route": "/t", "bulkSubscribe": {"enabled": true, '
            b'"maxMessagesCount": 1.5}}]',
            "must be an integer",
        ),
        (
            b'[{"pubsubname": "p", "topic": "t", "route": "/t", "bulkSubscribe": {"enabled": true, '
            b'"maxMessagesCount": 100.0}}]',
            "must be an integer",  # Go's int32 refuses 100.0 too
        ),
        (
            b'[{"pubsubname": "p", "topic": "t", "route": "/t", "bulkSubscribe": {"enabled": true, '
            b'"maxAwaitDurationMs": 2147483648}}]',
            "must be an integer",  # past int32
        ),
    ],
)
def test_an_answer_daprd_refuses_whole_is_an_error(body: bytes, problem: str) -> None:
    with pytest.raises(SubscriptionError, match=problem.replace("(", r"\(")):
        parse_subscribe_answer(body)


# -- the name-resolution file ----------------------------------------------------------------


def registration(app_id: str, port: int, pid: int | None = None, token: str = "t") -> Registration:
    return Registration(app_id, "127.0.0.1", port, pid if pid is not None else os.getpid(), token)


def test_register_look_up_and_deregister(tmp_path: Path) -> None:
    names = NameResolutionFile(tmp_path / "names.json")
    assert names.lookup("a") is None  # no file yet
    a, b = registration("a", 3501, token="ta"), registration("b", 3502, token="tb")
    names.register(a)
    NameResolutionFile(names.path).register(b)  # another sidecar, the same file
    assert names.lookup("b") == b  # re-read: the file changed
    assert names.lookup("a") == a
    assert (tmp_path / "names.json").stat().st_mode & 0o777 == 0o600
    names.deregister(registration("b", 3502, token="someone else's"))  # not its entry: kept
    assert names.lookup("b") == b
    names.deregister(b)
    assert names.lookup("b") is None
    assert set(json.loads((tmp_path / "names.json").read_text())["apps"]) == {"a"}


def test_a_running_sidecar_keeps_its_id_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "names.json"
    running = NameResolutionFile(path)  # another sidecar: it holds the app's lock while it runs
    running.register(registration("a", 3501, pid=4242))
    with pytest.raises(
        NameResolutionError, match="already registered by the sidecar of process 4242 on port 3501"
    ):
        NameResolutionFile(path).register(registration("a", 3599))
    assert NameResolutionFile(path).lookup("a") == registration("a", 3501, pid=4242)
    running.deregister(registration("a", 3501, pid=4242))
    assert NameResolutionFile(path).lookup("a") is None
    names = NameResolutionFile(path)
    names.register(registration("a", 3599))  # and its id may be taken again
    assert names.lookup("a") == registration("a", 3599)


@pytest.mark.parametrize("pid", [1, 0, -1, "mine"])
def test_an_entry_left_by_a_dead_sidecar_is_replaced_whatever_its_pid(tmp_path: Path, pid: object) -> None:
    # A sidecar killed with SIGKILL leaves its entry; its process id may since have been
    # given to another process (1 and this test's own run), or be no process's (0, -1:
    # os.kill would signal a group). The kernel released its lock: it is gone.
    path = tmp_path / "names.json"
    left = registration("b", 3502, pid=os.getpid() if pid == "mine" else int(str(pid)), token="old")
    path.write_text(json.dumps({"version": 1, "apps": {"b": left.to_json()}}))
    path.chmod(0o600)
    names = NameResolutionFile(path)
    assert names.lookup("b") is None
    names.register(registration("b", 3503))
    assert NameResolutionFile(path).lookup("b") == registration("b", 3503)


def test_a_held_lock_is_a_clear_error_after_a_bounded_wait(tmp_path: Path) -> None:
    path = tmp_path / "names.json"
    descriptor = os.open(tmp_path / "names.json.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # a stopped (Ctrl-Z) sidecar, or another user's process
        names = NameResolutionFile(path, lock_wait=0.05)  # still five tries, POLL apart
        started = time.monotonic()
        with pytest.raises(NameResolutionError, match="could not be locked: another process has held it"):
            names.register(registration("a", 3501))
        with pytest.raises(NameResolutionError, match="could not be locked"):
            names.deregister(registration("a", 3501))  # a stop does not wait for ever either
        assert time.monotonic() - started < 5
        stopping = NameResolutionFile(path)  # the default wait, cut short by a stop request
        with pytest.raises(NameResolutionError, match="the sidecar is stopping"):
            stopping.register(registration("a", 3501), stop=lambda: True)
    finally:
        os.close(descriptor)
    NameResolutionFile(path).register(registration("a", 3501))


def test_symbolic_links_and_files_others_may_write_are_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    folder = tmp_path / "links"
    folder.mkdir()
    (folder / "names.json.lock").symlink_to(elsewhere)  # planted to make the sidecar write there
    with pytest.raises(NameResolutionError, match=r"names.json.lock: is a symbolic link; refused"):
        NameResolutionFile(folder / "names.json").register(registration("a", 3501))
    (folder / "names.json.lock").unlink()
    (folder / "names.json").symlink_to(elsewhere)
    with pytest.raises(NameResolutionError, match=r"names.json: is a symbolic link; refused"):
        NameResolutionFile(folder / "names.json").lookup("a")

    open_lock = tmp_path / "open" / "names.json.lock"
    open_lock.parent.mkdir()
    open_lock.write_text("")
    open_lock.chmod(0o666)
    with pytest.raises(NameResolutionError, match=r"names.json.lock: is writable by other users"):
        NameResolutionFile(open_lock.parent / "names.json").register(registration("a", 3501))


def test_a_folder_others_may_write_to_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could swap the files
    with pytest.raises(NameResolutionError, match="other users may write to it and it is not sticky"):
        NameResolutionFile(shared / "names.json").register(registration("a", 3501))
    shared.chmod(0o1777)  # as /tmp: sticky, so the user's files are the user's; they are checked
    names = NameResolutionFile(shared / "names.json")
    names.register(registration("a", 3501))
    assert names.lookup("a") == registration("a", 3501)


def test_a_bad_folder_is_a_name_resolution_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(NameResolutionError, match=r"file/sub: cannot be created: Not a directory"):
        NameResolutionFile(tmp_path / "file" / "sub" / "names.json").register(registration("a", 3501))
    with pytest.raises(NameResolutionError, match=r"file: is not a folder"):
        NameResolutionFile(tmp_path / "file" / "names.json").register(registration("a", 3501))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{", "is not JSON"),
        ('{"apps": {}}', "is not a name-resolution file"),
        ('{"version": 1, "apps": {"a": {"host": "127.0.0.1"}}}', "needs host, port, pid and token"),
        (
            '{"version": 1, "apps": {"a": {"host": "10.0.0.1", "port": 1, "pid": 1, "token": "x"}}}',
            "10.0.0.1 is not a loopback address",
        ),
    ],
)
def test_a_bad_file_is_refused(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "names.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(NameResolutionError, match=problem):
        NameResolutionFile(path).lookup("a")


def test_a_file_others_may_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "names.json"
    NameResolutionFile(path).register(registration("a", 3501))
    path.chmod(0o666)
    with pytest.raises(NameResolutionError, match="writable by other users"):
        NameResolutionFile(path).lookup("a")


# -- the app channel -------------------------------------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def through_the_app_channel(handle: Handler, scope: dict[str, Any], body: bytes = b"") -> list[Message]:
    """What the app channel sends back of one request (`scope` and `body`) to an app that is
    `handle`, a raw HTTP/1.1 server on loopback."""
    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    channel = AppChannel("127.0.0.1", listener.sockets[0].getsockname()[1])
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "query_string": b"", "raw_path": scope["path"].encode(), **scope}
    try:
        async with listener:
            await channel(scope, receive, send)
    finally:
        await channel.close()
    return sent


async def test_the_app_channel_drops_the_headers_the_apps_connection_header_names() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-hop\r\nx-hop: for the next hop only\r\n"
            b"keep-alive: timeout=5\r\nx-kept: yes\r\ncontent-length: 2\r\n\r\nok"
        )
        await writer.drain()
        writer.close()

    sent = await through_the_app_channel(handle, {"method": "GET", "path": "/x", "headers": []})
    start, body = sent[0], sent[-1]
    assert (start["status"], body["body"]) == (200, b"ok")
    names = [name for name, _ in start["headers"]]
    assert b"x-kept" in names
    assert not {b"x-hop", b"connection", b"keep-alive"} & set(names)


async def test_metadata_that_cannot_be_a_header_does_not_stop_a_delivery_to_an_app_over_http() -> None:
    # Written to the broker by another client (tests/sidecar/test_delivery_headers.py).
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    metadata = {"x-injected": "a\r\nx-evil: 1", "bad name": "v", "x-kept": "yes", "x-tab": "a\tb"}
    headers = [(b"content-type", b"application/cloudevents+json"), *message_headers(metadata)]
    scope = {"method": "POST", "path": "/orders", "headers": headers}
    sent = await through_the_app_channel(handle, scope, b"{}")
    assert sent[0]["status"] == 200
    (head,) = heads
    assert b"x-kept: yes\r\n" in head
    assert b"x-tab: a\tb\r\n" in head
    assert b"x-evil" not in head
    assert b"bad name" not in head


# -- without the event loop's signal handlers (Windows) ---------------------------------------


async def test_a_signal_stops_the_sidecar_where_the_loop_has_no_signal_handlers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()

    def unsupported(*args: object) -> None:
        raise NotImplementedError  # as Windows' event loops answer

    monkeypatch.setattr(loop, "add_signal_handler", unsupported)
    monkeypatch.setattr(loop, "remove_signal_handler", unsupported)
    caplog.set_level(logging.INFO, logger="fastapi_dapr")
    listening = asyncio.Event()

    class Listening(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Dapr API listening" in record.getMessage():
                listening.set()

    watcher = Listening()
    logging.getLogger("fastapi_dapr").addHandler(watcher)
    before = signal.getsignal(signal.SIGINT)
    sidecar = StandaloneSidecar(SidecarOptions(app_id="orders", dapr_http_port=0))
    running = asyncio.create_task(sidecar.run())
    waiting = asyncio.ensure_future(listening.wait())
    try:
        await asyncio.wait({running, waiting}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert not running.done(), running.exception()  # it started, and listens
        signal.raise_signal(signal.SIGINT)
        assert await asyncio.wait_for(running, 30) == 0
    finally:
        waiting.cancel()
        logging.getLogger("fastapi_dapr").removeHandler(watcher)
    assert "SIGINT received: stopping" in caplog.text
    assert signal.getsignal(signal.SIGINT) is before  # put back


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_the_api_socket_sends_without_waiting_for_acks(host: str) -> None:
    """The sockets the sidecar listens on are TCP sockets by name, so that asyncio sets
    TCP_NODELAY on each connection: with Nagle's algorithm on, an answer written in two
    parts (head, then body) waits for the client's delayed ACK, about 40 ms a request."""
    import socket

    sidecar = StandaloneSidecar(SidecarOptions(app_id="orders", dapr_http_port=0, listen_host=host))
    listening = sidecar._listen(0, "--dapr-http-port")
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(
            writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        )
        writer.close()

    server = await asyncio.start_server(connected, sock=listening)
    try:
        port = listening.getsockname()[1]
        _, client = await asyncio.open_connection(host, port)
        assert await asyncio.wait_for(accepted, 10) != 0  # TCP_NODELAY on the served connection
        client.close()
        await client.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
