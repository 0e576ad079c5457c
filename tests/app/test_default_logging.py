"""The package's lines when the app's logging is not configured (uvicorn's defaults configure only
uvicorn's loggers): a handler of the package's own writes them with their level and logger, INFO
included, and steps aside for the user's configuration, so that no line is written twice. And
under daprd, a handler's traceback once per message, not once per retry."""

from __future__ import annotations

import contextlib
import io
import logging
import logging.config
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastapi_dapr import CloudEvent, Dapr
from fastapi_dapr._logs import DefaultHandler, install_default_handler

PACKAGE = logging.getLogger("fastapi_dapr")


@contextlib.contextmanager
def unconfigured() -> Iterator[None]:
    """Logging as a process that configured none has it: the test runner's handlers, which it adds
    to the root for each phase of a test, set aside (so: inside the test)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, PACKAGE.handlers[:], PACKAGE.level
    root.handlers.clear()
    root.setLevel(logging.WARNING)
    PACKAGE.handlers.clear()
    PACKAGE.setLevel(logging.NOTSET)
    try:
        yield
    finally:
        root.handlers[:], PACKAGE.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        PACKAGE.setLevel(saved[3])


def start(app_id: str = "orders") -> None:
    app = FastAPI()
    Dapr(app, app_id=app_id, mode="embedded")
    with TestClient(app):
        pass


def test_lines_show_their_level_and_logger_and_info_appears(capsys: pytest.CaptureFixture[str]) -> None:
    with unconfigured():
        start()
        PACKAGE.getChild("delivery").warning("a warning")
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("INFO:     fastapi_dapr: embedded mode (mode='embedded'): app id 'orders'; ")
        assert err[1:] == ["WARNING:  fastapi_dapr.delivery: a warning"]
        assert PACKAGE.level == logging.INFO
        (handler,) = PACKAGE.handlers
        assert isinstance(handler, DefaultHandler)
        start()  # a second app in the process adds no second handler
        assert len(PACKAGE.handlers) == 1
        assert len(capsys.readouterr().err.splitlines()) == 1


def test_a_traceback_follows_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    with unconfigured():
        install_default_handler()
        try:
            raise ValueError("boom")
        except ValueError:
            PACKAGE.exception("it failed")
        err = capsys.readouterr().err
        assert err.startswith("ERROR:    fastapi_dapr: it failed\nTraceback (most recent call last):\n")
        assert err.endswith("ValueError: boom\n")


def test_logging_configured_later_takes_over_without_a_line_twice(capsys: pytest.CaptureFixture[str]) -> None:
    with unconfigured():
        start()
        capsys.readouterr()
        configured = io.StringIO()
        logging.basicConfig(
            level=logging.WARNING, stream=configured, format="%(levelname)s %(name)s %(message)s"
        )
        PACKAGE.info("an info line")  # the user's levels now: the root's WARNING
        PACKAGE.warning("a warning")
        PACKAGE.info("another info line")
        assert capsys.readouterr().err == ""
        # Written once each; the first line after the change is still let through by the level
        # set before it, the next ones by the user's levels.
        assert configured.getvalue().splitlines() == [
            "INFO fastapi_dapr an info line",
            "WARNING fastapi_dapr a warning",
        ]
        assert PACKAGE.level == logging.NOTSET


def test_logging_configured_before_is_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    with unconfigured():
        configured = io.StringIO()
        logging.basicConfig(
            level=logging.INFO, stream=configured, format="%(levelname)s %(name)s %(message)s"
        )
        start()
        assert PACKAGE.handlers == []
        assert capsys.readouterr().err == ""
        (line,) = configured.getvalue().splitlines()
        assert line.startswith("INFO fastapi_dapr embedded mode")


def test_a_level_the_user_set_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    with unconfigured():
        PACKAGE.setLevel(logging.WARNING)
        start()
        PACKAGE.warning("shown")
        assert capsys.readouterr().err == "WARNING:  fastapi_dapr: shown\n"
        assert PACKAGE.level == logging.WARNING


def test_uvicorns_level_is_followed(capsys: pytest.CaptureFixture[str]) -> None:
    uvicorn_config = pytest.importorskip("uvicorn.config")
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    with unconfigured():
        try:
            logging.config.dictConfig(uvicorn_config.LOGGING_CONFIG)  # as uvicorn does, then
            logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # --log-level warning
            start()
        finally:
            for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
                logger.handlers[:], logger.propagate = handlers, propagate
                logger.setLevel(level)
        assert "embedded mode" not in capsys.readouterr().err
        assert PACKAGE.level == logging.WARNING


def test_under_daprd_a_handlers_traceback_is_logged_once_per_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    dapr = Dapr(app, app_id="orders", mode="remote")

    @dapr.subscribe("pubsub", "orders")
    async def on_order(event: CloudEvent) -> None:
        raise ValueError("database down")

    event = {"specversion": "1.0", "id": "e-1", "source": "s", "type": "t", "data": {}}
    headers = {"content-type": "application/cloudevents+json"}
    client = TestClient(app)  # as daprd: a POST per attempt
    with caplog.at_level(logging.ERROR, logger="fastapi_dapr"):
        for _ in range(3):
            assert client.post("/events/pubsub/orders", json=event, headers=headers).status_code == 500
        other = client.post("/events/pubsub/orders", json={**event, "id": "e-2"}, headers=headers)
    assert other.status_code == 500
    first, second, third, fourth = caplog.records
    assert [r.exc_info is not None for r in (first, second, third, fourth)] == [True, False, False, True]
    assert second.getMessage().endswith(
        "raised ValueError: database down again (traceback above, at its first attempt)"
    )
    assert "RETRY event e-1 on pubsub='pubsub' topic='orders': handler " in second.getMessage()


def test_the_docs_levels_hide_the_info_and_attempt_lines(caplog: pytest.LogCaptureFixture) -> None:
    import docs.examples.observability as observability

    delivery = PACKAGE.getChild("delivery")
    saved = PACKAGE.level, delivery.level
    try:
        observability.quieter_logs()
        with caplog.at_level(logging.DEBUG):  # the root's: the package's own levels decide
            PACKAGE.info("start-up")
            delivery.warning("attempt 1 failed")
            delivery.error("given up")
    finally:
        PACKAGE.setLevel(saved[0])
        delivery.setLevel(saved[1])
    assert [r.getMessage() for r in caplog.records] == ["given up"]
