"""A component's metadata names: a typo is named with the nearest known name, a name in
another case is read as daprd reads it, and daprd's own names are not flagged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi import FastAPI

from fastapi_dapr import Dapr, ResourceError
from fastapi_dapr.testing import DaprTestClient

from .test_resources import COMPONENT


def app_of(folder: Path, type_name: str, metadata: str, name: str = "pubsub") -> tuple[FastAPI, Path]:
    path = folder / "c.yaml"
    path.write_text(COMPONENT.format(name=name, type=type_name, metadata=metadata))
    app = FastAPI()
    Dapr(app, app_id="app", resources_path=folder)
    return app, path


def test_a_misspelt_required_name_is_named_in_the_refusal(tmp_path: Path) -> None:
    app, path = app_of(tmp_path, "pubsub.redis", "[{name: redisHots, value: '127.0.0.1:1'}]")
    message = (
        f"{path}: Component 'pubsub': spec: redisHost is required (host:port); "
        "the metadata has redisHots: did you mean redisHost?"
    )
    with pytest.raises(ResourceError) as info, DaprTestClient(app):
        pass
    assert str(info.value) == message


def test_an_unknown_name_is_warned_with_the_nearest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app, path = app_of(
        tmp_path, "pubsub.in-memory", "[{name: maxQueueLenght, value: '5'}, {name: colour, value: x}]"
    )
    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"), DaprTestClient(app):
        pass
    where = f"{path}: Component 'pubsub': spec.metadata"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    typo = "maxQueueLenght is not a metadata name of pubsub.in-memory (did you mean maxQueueLength?)"
    assert f"{where}: {typo}; ignored" in warnings
    assert f"{where}: colour is not a metadata name of pubsub.in-memory; ignored" in warnings


def test_a_name_in_another_case_is_read_as_daprd_reads_it(tmp_path: Path) -> None:
    app, path = app_of(tmp_path, "pubsub.in-memory", "[{name: MAXQUEUELENGTH, value: '0'}]")
    refused = f"^{path}: Component 'pubsub': spec: maxQueueLength must be"
    with pytest.raises(ResourceError, match=refused), DaprTestClient(app):
        pass


def test_daprd_runtime_names_are_known(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metadata = (
        "[{name: consumerID, value: g}, {name: publishingScopes, value: 'app=t'},"
        " {name: subscriptionScopes, value: 'app=t'}, {name: allowedTopics, value: t},"
        " {name: protectedTopics, value: ''}]"
    )
    app, _ = app_of(tmp_path, "pubsub.in-memory", metadata)
    with caplog.at_level(logging.WARNING, logger="fastapi_dapr"), DaprTestClient(app):
        pass
    assert [r.getMessage() for r in caplog.records if "metadata name" in r.getMessage()] == []


def test_a_secret_store_typo_is_named(tmp_path: Path) -> None:
    app, path = app_of(tmp_path, "secretstores.local.file", "[{name: secretFile, value: s.json}]", name="s")
    with pytest.raises(ResourceError) as info, DaprTestClient(app):
        pass
    assert str(info.value).startswith(f"{path}: Component 's': spec: ")
    assert str(info.value).endswith("; the metadata has secretFile: did you mean secretsFile?")
