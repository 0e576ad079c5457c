"""Go's readings: durations, integers and booleans in resources and flags (issue 14), `path.Clean`."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI

from fastapi_dapr import Dapr, ResourceError
from fastapi_dapr._go import parse_duration, parse_go_duration, parse_go_int, path_clean
from fastapi_dapr.sidecar.cli import parser
from fastapi_dapr.sidecar.resources import load_resources
from fastapi_dapr.testing import DaprTestClient

ARABIC_TEN = "\u0661\u0660"  # "10" in Arabic-Indic digits: Python's int() and \d read it as 10


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h2m3.5s", 3723.5),
        ("-250ms", -0.25),
        ("+5s", 5.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("5.s", 5.0),
        (".5s", 0.5),
        ("1µs", 1e-6),  # U+00B5
        ("1μs", 1e-6),  # U+03BC
        ("300ns", 3e-7),
        ("2562047h47m16.854775807s", 9223372036.854775807),  # the largest time.Duration
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        f"{ARABIC_TEN}s",
        " 5s",
        "5s ",
        "5s\n",
        "1_0s",
        "",
        "5",
        "00",
        ".s",
        "5sec",
        "1h2",
        "+",
        "2562047h47m16.854775808s",  # one nanosecond over
        "9" * 30 + "h",
    ],
)
def test_what_go_refuses_as_a_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("text", "number"), [("5", 5), ("+5", 5), ("-5", -5), ("007", 7), ("0" * 30 + "1", 1)]
)
def test_go_integers(text: str, number: int) -> None:
    assert parse_go_int(text) == number
    assert parse_duration(text, integer_unit=1e-3) == pytest.approx(number / 1000)


@pytest.mark.parametrize(
    "text", [ARABIC_TEN, " 5", "5 ", "1_0", "0x10", "", "-", "9223372036854775808", "\u0663", "1e3"]
)
def test_what_go_refuses_as_an_integer_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="integer"):
        parse_go_int(text)


def resiliency(tmp_path: Path, timeout: str) -> Path:
    path = tmp_path / "resiliency.yaml"
    path.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata: {name: r}\n"
        f"spec: {{policies: {{timeouts: {{general: {timeout!r}}}}}}}\n"
    )
    return path


@pytest.mark.parametrize("timeout", [f"{ARABIC_TEN}s", " 5s", "5s ", ARABIC_TEN, " 500"])
def test_a_resource_duration_go_refuses_stops_the_start(tmp_path: Path, timeout: str) -> None:
    path = resiliency(tmp_path, timeout)
    with pytest.raises(ResourceError) as info:
        load_resources([tmp_path], app_id="app")
    assert str(info.value) == (
        f"{path}: Resiliency 'r': spec.policies.timeouts.general: {timeout!r} is not a duration"
    )


def test_a_resource_duration_go_reads(tmp_path: Path) -> None:
    resiliency(tmp_path, "1m30s")
    (policy,) = load_resources([tmp_path], app_id="app").resiliencies
    assert policy.timeouts == {"general": 90.0}


@pytest.mark.parametrize("length", [ARABIC_TEN, " 10", "1_0"])
def test_a_component_integer_go_refuses_stops_the_start(tmp_path: Path, length: str) -> None:
    path = tmp_path / "pubsub.yaml"
    path.write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: events}\n"
        f"spec: {{type: pubsub.in-memory, metadata: [{{name: maxQueueLength, value: {length!r}}}]}}\n"
    )
    app = FastAPI()
    Dapr(app, resources_path=tmp_path)
    with pytest.raises(ResourceError, match="maxQueueLength must be a positive integer"), DaprTestClient(app):
        pass


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--dapr-http-port", "\u0663\u0665\u0660\u0660"),
        ("--dapr-http-port", " 3500"),
        ("--dapr-http-max-request-size", "1_0"),
        ("--dapr-graceful-shutdown-seconds", "nan"),
        ("--dapr-graceful-shutdown-seconds", "inf"),
        ("--dapr-graceful-shutdown-seconds", ARABIC_TEN),
        ("--enable-metrics", "TrUe"),
        ("--enable-metrics", " true"),
        ("--log-as-json", "yes"),
    ],
)
def test_a_flag_go_refuses_is_refused(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(["sidecar", "--app-id", "a", f"{flag}={value}"])
    assert info.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err


def test_flags_go_reads() -> None:
    arguments = parser().parse_args(
        [
            "sidecar",
            "--app-id=a",
            "--dapr-http-port=+3501",
            "--dapr-graceful-shutdown-seconds=.5",
            "--enable-metrics=T",
            "--log-as-json=False",
        ]
    )
    assert (arguments.dapr_http_port, arguments.dapr_graceful_shutdown_seconds) == (3501, 0.5)
    assert (arguments.enable_metrics, arguments.log_as_json) == (True, False)


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        # The examples of Go's `path.Clean` documentation.
        ("a/c", "a/c"),
        ("a//c", "a/c"),
        ("a/c/.", "a/c"),
        ("a/c/b/..", "a/c"),
        ("/../a/c", "/a/c"),
        ("/../a/b/../././/c", "/a/c"),
        ("", "."),
        # Its rules one by one: nothing left is ".", a rooted ".." is "/", a relative one stays.
        (".", "."),
        ("./", "."),
        ("a/..", "."),
        ("/", "/"),
        ("/..", "/"),
        ("/../..", "/"),
        ("..", ".."),
        ("../..", "../.."),
        ("a/../..", ".."),
        ("../a/../b", "../b"),
        ("a/b/", "a/b"),
        ("abc/def/../../..", ".."),
        # Leading slashes collapse however many: POSIX's normpath keeps exactly two.
        ("//", "/"),
        ("//a", "/a"),
        ("///a//b", "/a/b"),
        ("//../a", "/a"),
        # Hostile: nothing but `/` is special (no `\\`, no `%2F`, no `..;`, no NUL).
        ("a\\..\\b", "a\\..\\b"),
        ("a/%2e%2e/b", "a/%2e%2e/b"),
        ("a/..;/b", "a/..;/b"),
        ("a/\x00/../b", "a/b"),
        ("...", "..."),
        ("/a/.../b", "/a/.../b"),
    ],
)
def test_path_clean_gives_go_s_documented_results(path: str, cleaned: str) -> None:
    assert path_clean(path) == cleaned
    assert path_clean(cleaned) == cleaned  # Clean is idempotent
