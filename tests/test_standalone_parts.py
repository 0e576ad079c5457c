"""The standalone sidecar's parts, in process: reading an app's `GET /dapr/subscribe` answer
(reference 2.1) and the name-resolution file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastapi_dapr import BulkSubscribe, SubscriptionError
from fastapi_dapr._name_resolution import NameResolutionError, NameResolutionFile, Registration
from fastapi_dapr._subscription import parse_subscribe_answer


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
            {"pubsubname": "p", "topic": "b", "route": "/again"},
            {"topic": "c", "route": "/c"},
        ]
    )
    assert [item[:4] for item in found] == [("p", "b", (), "/b")]
    assert len(warnings) == 3
    assert "no route" in warnings[0]
    assert "a second subscription" in warnings[1]
    assert "pubsubname and topic are required" in warnings[2]


@pytest.mark.parametrize("body", [b"", b"  ", b"null"])
def test_an_empty_answer_is_no_subscriptions(body: bytes) -> None:
    assert parse_subscribe_answer(body) == ([], [])


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
    ],
)
def test_an_answer_daprd_refuses_whole_is_an_error(body: bytes, problem: str) -> None:
    with pytest.raises(SubscriptionError, match=problem.replace("(", r"\(")):
        parse_subscribe_answer(body)


# -- the name-resolution file ----------------------------------------------------------------


def registration(app_id: str, port: int, pid: int | None = None, token: str = "t") -> Registration:
    return Registration(app_id, "127.0.0.1", port, pid if pid is not None else os.getpid(), token)


def dead_pid() -> int:
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return int(process.stdout)


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
    names = NameResolutionFile(tmp_path / "names.json")
    names.register(registration("a", 3501, pid=1))  # pid 1 runs: the id is taken
    with pytest.raises(
        NameResolutionError, match="already registered by the sidecar of process 1 on port 3501"
    ):
        names.register(registration("a", 3599))
    gone = dead_pid()
    names.register(registration("b", 3502, pid=gone))
    assert names.lookup("b") is None  # its process has died: not reachable
    names.register(registration("b", 3503))  # and its id may be taken again
    assert names.lookup("b") == registration("b", 3503)


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
