"""The command line as a user meets it: its version, whole flag names only, examples in --help."""

from __future__ import annotations

import pytest

import fastapi_dapr
from fastapi_dapr.sidecar.cli import parser


def test_version_names_the_package_and_its_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        parser().parse_args(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastapi-dapr {fastapi_dapr.__version__}"


@pytest.mark.parametrize("flag", ["--app-prot", "--app-i", "--dapr-grpc"])
def test_an_abbreviated_flag_is_refused_not_guessed(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    # `--app-prot 9201` was read as `--app-protocol 9201`: a typo became another setting.
    with pytest.raises(SystemExit) as stopped:
        parser().parse_args(["sidecar", "--app-id", "x", flag, "9201"])
    assert stopped.value.code == 2
    assert f"unrecognized arguments: {flag} 9201" in capsys.readouterr().err


def test_whole_flags_still_work_with_and_without_an_equals_sign() -> None:
    arguments = parser().parse_args(["sidecar", "--app-id=x", "--app-protocol", "grpc", "--dapr-grpc-port=0"])
    assert (arguments.app_id, arguments.app_protocol, arguments.dapr_grpc_port) == ("x", "grpc", 0)


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["sidecar", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text
    assert "fastapi-dapr sidecar --app-id orders --app-port 50051 --app-protocol grpc" in text
